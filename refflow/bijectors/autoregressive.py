r"""Masked autoregressive flows: ``MaskedAffineAutoregressive`` (MAF; IAF as its ``Inverse``).

A MADE network (Germain et al. 2015) gives, for every coordinate ``i``, a shift ``mu_i`` and an
unconstrained scale ``u_i`` that depend only on the coordinates before ``i`` in the layer's
autoregressive order; ``log_scale_i = l(u_i)`` by a named scale map (:mod:`.scale_maps`).

    forward (sampling)   x_i = z_i * exp(log_scale_i(x_<i)) + mu_i(x_<i)
    inverse (density)    z_i = (x_i - mu_i(x_<i)) * exp(-log_scale_i(x_<i))

The Jacobian is triangular in the order, so ``log|det dx/dz| = sum_i log_scale_i`` (evaluated at
``x``) and the inverse log-det is its negative. With ``scale_side="density"`` the scale
multiplies in the density direction instead, as in zuko and nflows:
``z_i = x_i * exp(log_scale_i(x_<i)) + mu_i(x_<i)``, ``log|det dz/dx| = sum_i log_scale_i``. The
density direction is one MADE pass. The sampling direction fixes the coordinates in degree order
(step ``k`` the coordinate of degree ``k + 1``) by a degree-ordered incremental evaluation of the
MADE (:mod:`refflow.nn._incremental`): a hidden unit of degree ``k`` depends only on the inputs of
degree ``<= k``, so each is computed exactly once, as soon as those are known -- about the cost
of one MADE pass instead of ``dim``. The reference, ``dim`` sequential full passes, is kept as
``_sample_passes_reference``; the two agree to round-off (summation order).
"""

import numpy as np

from .._validation import check_dim
from ..nn import MADE
from ..nn._incremental import made_sample
from ..params import prefixed
from .base import Bijector
from .scale_maps import get_scale_map

__all__ = ["MaskedAffineAutoregressive"]

_SCALE_SIDES = ("sampling", "density")


def fixed_point_adjoint(x_bar, step, max_steps):
    """Solve ``lambda = x_bar + r(lambda)`` for the sampling-direction pullback.

    ``step(lam) -> (aux, made_result)`` runs the head cotangents of ``lam`` through the
    elementwise map's and MADE's pullbacks; ``r(lam) = made_result[0]`` (MADE's input cotangent)
    is affine in ``lam`` with a strictly triangular (nilpotent) linear part, so iterating from
    ``lam = x_bar`` is exact after at most ``max_steps = dim`` steps. The loop stops as soon as
    ``lam`` repeats bit for bit (later steps could not change it). Returns ``(lam, aux,
    made_result)`` at the solution.
    """
    lam = x_bar
    aux, made_result = step(lam)
    for _ in range(max_steps):
        lam_next = x_bar + made_result[0]
        if np.array_equal(lam_next, lam):
            break
        lam = lam_next
        aux, made_result = step(lam)
    return lam, aux, made_result


class _MaskedAutoregressive(Bijector):
    """Shared by the masked autoregressive layers: the MADE, context, parameters and the
    sequential sampling (incremental, and the reference passes). Subclasses give
    ``_sample_coordinate(z_i, out_i) -> x_i`` (the elementwise map of coordinate ``i`` in the
    sampling direction, from its conditioner outputs)."""

    def __init__(self, dim, n_params, hidden, order, hidden_degrees, activation, context_dim,
                 zero_last, rng):
        name = type(self).__name__
        dim = check_dim(dim, name)
        if context_dim is not None:
            context_dim = check_dim(context_dim, name, "context_dim")
        self.made = MADE(dim, hidden, n_params=n_params, order=order,
                         hidden_degrees=hidden_degrees, activation=activation,
                         context_features=context_dim or 0, zero_last=zero_last, rng=rng)
        super().__init__(dim)
        self.context_dim = context_dim
        # Coordinate fixed by sampling pass k: the input of degree k + 1.
        self._sampling_order = np.argsort(self.made.input_degrees, kind="stable")

    @property
    def params(self):
        return prefixed([("made", self.made.params)])

    def _config(self):
        """The MADE's structure, with its order and (unless deterministic) hidden degrees
        written out, so that a random-order, random-degree layer is rebuilt identically."""
        made = self.made
        degrees = made.hidden_degrees
        if degrees not in ("cyclic", "equal"):
            degrees = [d.tolist() for d in made.hidden_degree_list]
        return {"dim": self.dim, "hidden": list(made.hidden), "order": made.order.tolist(),
                "hidden_degrees": degrees, "activation": made.activation,
                "context_dim": self.context_dim}

    def _finish(self, in_bar, made_result, context):
        grads = {f"made.{k}": g for k, g in made_result[1].items()}
        return (in_bar, grads) if context is None else (in_bar, grads, made_result[2])

    def _sample_incremental(self, z, context):
        """``(x, out)``: every coordinate of ``x`` and MADE's (final) outputs at ``x``, by the
        degree-ordered incremental evaluation of :mod:`refflow.nn._incremental` (each hidden unit
        computed once, about the cost of one MADE pass). A conditioner other than a plain
        ``MADE`` (the nflows importer's subclass) runs the reference passes instead."""
        if type(self.made) is not MADE:
            return self._sample_reference(z, context)
        return made_sample(self.made, z, context, self._sample_coordinate, self._sampling_order)

    def _sample_passes(self, z, context):
        """``x`` with every coordinate that feeds an output fixed (here: every coordinate), so
        that ``made._forward(x, context)`` gives the final outputs."""
        return self._sample_incremental(z, context)[0]

    def _sample_reference(self, z, context):
        """``(x, out)`` as ``_sample_incremental`` returns them, by the reference passes: the
        ``dim - 1`` sequential passes, one more for the final outputs, then every coordinate
        (the last one too) from them."""
        x = self._sample_passes_reference(z, context)
        out = self.made._forward(x, context)
        for i in range(self.dim):
            x[:, i] = self._sample_coordinate(np.ascontiguousarray(z[:, i]),
                                              np.ascontiguousarray(out[:, i]))
        return x, out

    def _sample_passes_reference(self, z, context):
        """The reference: the first ``dim - 1`` sequential full MADE passes, every coordinate
        but the last in the order (which feeds no output and is left 0).

        The last pass (done by the caller) sees every coordinate any output depends on, since
        the last coordinate in the order feeds no output: its MADE outputs are all final, and
        its residuals serve the pullback. Kept to test the incremental evaluation against.
        """
        x = np.zeros_like(z)
        weights = self.made._weights(z.dtype)  # masked and cast once, not once per pass
        for i in self._sampling_order[:-1]:
            out = self.made._forward(x, context, weights)
            x[:, i] = self._sample_coordinate(np.ascontiguousarray(z[:, i]),
                                              np.ascontiguousarray(out[:, i]))
        return x


class MaskedAffineAutoregressive(_MaskedAutoregressive):
    r"""Masked autoregressive affine layer (MAF), ``x_i = z_i exp(l(u_i)) + mu_i``.

    Parameters
    ----------
    dim : int
    hidden : tuple of int, default (64, 64)
        MADE hidden widths.
    order : {"natural", "reverse", "random"} or array of int, default "natural"
        Autoregressive order of the inputs (see :class:`refflow.nn.MADE`); alternate "natural"
        and "reverse" between stacked layers, as zuko's MAF does.
    hidden_degrees : {"cyclic", "equal", "random"}, default "cyclic"
        MADE's rule for hidden degrees (nflows' cyclic rule, TFP's "equal", Germain's random).
    activation : str, default "relu"
    scale : str, default "exp"
        Scale map (``"exp"`` is the MAF paper's raw log-scale; see :mod:`.scale_maps`).
    scale_side : {"sampling", "density"}, default "sampling"
        The direction in which the scale multiplies. ``"sampling"`` (the MAF paper, TFP):
        ``x = z * exp(l(u)) + mu``. ``"density"`` (zuko's ``MonotonicAffineTransform``,
        nflows' ``MaskedAffineAutoregressiveTransform``): ``z = x * exp(l(u)) + mu``, so
        ``log|dz/dx| = sum_i l(u_i)`` and sampling is ``x = (z - mu) * exp(-l(u))``. In both,
        ``mu, u`` are MADE outputs at ``x`` (the data side). zuko's MAF is ``scale="softclip",
        scale_side="density"``; nflows' is ``scale="softplus", scale_side="density"``.
    context_dim : int, optional
        Makes the layer conditional: the context is an input of every MADE hidden unit of the
        first layer.
    zero_last : bool, default False
        Zero MADE's output layer, so that ``mu = 0`` and ``u = 0`` (the identity for ``"exp"``).
    rng : None, int or numpy.random.Generator
        Initialisation (and the order / degrees when "random").

    Notes
    -----
    MADE outputs ``(batch, dim, 2)``: ``[..., 0]`` is the shift ``mu``, ``[..., 1]`` the
    unconstrained scale ``u`` (TFP's and zuko's order). With ``s = exp(l(u))``, ``l' = dl/du``:

    **Density direction** (one pass): ``z = (x - mu) / s``, ``log_det = -sum_i l(u_i)``.
    Pullback for ``(z_bar, log_det_bar = g)``::

        mu_bar = -z_bar / s,     l_bar = -z_bar z - g,     u_bar = l_bar l'(u)
        x_bar  = z_bar / s + MADE-pullback_x(mu_bar, u_bar),  grads = MADE-pullback_theta(...)

    **Sampling direction**: step ``k = 0..dim-1`` sets the coordinate of degree ``k + 1`` from
    its ``mu, u``, which depend only on the coordinates already fixed. The MADE is evaluated
    incrementally in degree order (:mod:`refflow.nn._incremental`): the hidden units of degree
    ``k`` are computed once, at step ``k``, from the units of degree ``<= k`` below (every
    weight matrix sorted by degree, blocked GEMMs over row chunks), so sampling costs about one
    MADE pass plus ``dim`` small steps, not ``dim`` passes; it agrees with the reference
    (``dim`` sequential full passes, ``_sample_passes_reference``) to round-off. ``x`` is the
    sampler's; ``log_det = sum_i l(u_i)`` comes from one full MADE pass at ``x``, the very
    computation of ``inverse(x)``, so the two log-dets are exact negatives bit for bit; that
    pass's residuals serve the pullback.

    Its pullback is exact (implicit-function theorem): ``x`` is the fixed point of
    ``G(x) = z s(x) + mu(x)``, whose Jacobian ``A = dG/dx`` is strictly triangular in the order,
    hence nilpotent. For cotangents ``(x_bar, g)`` the adjoint ``lambda`` solves::

        lambda = x_bar + A^T lambda + (d log_det / dx)^T g

    and both terms on the right are one MADE pullback with head cotangents
    ``mu_bar = lambda``, ``l_bar = lambda z s + g`` (since ``dx/dl = z s``). Iterating from
    ``lambda = x_bar`` reaches the exact solution in at most ``dim`` steps (each step fixes the
    next degree; the loop stops as soon as ``lambda`` no longer changes). Then
    ``z_bar = lambda s`` and the parameter (and context) cotangents are the MADE pullback at the
    final ``lambda``. No finite differences anywhere.

    **scale_side="density"** (``e = exp(l(u))``): inverse ``z = x e + mu``,
    ``log_det = +sum_i l(u_i)``, pullback::

        mu_bar = z_bar,   l_bar = z_bar x e + g,   u_bar = l_bar l'(u),
        x_bar  = z_bar e + MADE-pullback_x(mu_bar, u_bar)

    forward ``x = (z - mu) / e`` (``dim`` passes), ``log_det = -sum_i l(u_i)``; the adjoint of
    the fixed point ``x = G(x) = (z - mu(x)) / e(x)`` uses head cotangents
    ``mu_bar = -lambda / e``, ``l_bar = -lambda x - g`` (since ``dx/dmu = -1/e``,
    ``dx/dl = -x``), then ``z_bar = lambda / e``.

    IAF (Kingma et al. 2016) is this layer run the other way, ``Inverse(MaskedAffineAutoregressive(...))``:
    its sampling direction is the one-pass density direction here.

    References
    ----------
    Papamakarios, Pavlakou, Murray, "Masked Autoregressive Flow for Density Estimation", 2017,
    arXiv:1705.07057.
    Kingma, Salimans, Jozefowicz, Chen, Sutskever, Welling, "Improving Variational Inference with
    Inverse Autoregressive Flow", 2016, arXiv:1606.04934.
    Germain, Gregor, Murray, Larochelle, "MADE: Masked Autoencoder for Distribution Estimation",
    2015, arXiv:1502.03509.

    Examples
    --------
    >>> import numpy as np
    >>> from refflow import MaskedAffineAutoregressive
    >>> layer = MaskedAffineAutoregressive(3, hidden=(8, 8), rng=0)
    >>> z = np.random.default_rng(1).normal(size=(2, 3))
    >>> x, log_det = layer.forward(z)          # 3 sequential steps, ~2 MADE passes
    >>> z_back, inv_log_det = layer.inverse(x)  # one pass
    >>> bool(np.allclose(z_back, z, rtol=1e-12, atol=1e-12)), bool(np.allclose(log_det, -inv_log_det))
    (True, True)
    """

    def __init__(self, dim, *, hidden=(64, 64), order="natural", hidden_degrees="cyclic",
                 activation="relu", scale="exp", scale_side="sampling", context_dim=None,
                 zero_last=False, rng=None):
        self._scale_map = get_scale_map(scale, "MaskedAffineAutoregressive")
        if not isinstance(scale_side, str) or scale_side not in _SCALE_SIDES:
            raise ValueError(f"MaskedAffineAutoregressive: scale_side must be one of "
                             f"{list(_SCALE_SIDES)}, got {scale_side!r}")
        self.scale = scale
        self.scale_side = scale_side
        self._density = scale_side == "density"
        super().__init__(dim, 2, hidden, order, hidden_degrees, activation, context_dim,
                         zero_last, rng)

    def __repr__(self):
        extra = "" if self.context_dim is None else f", context_dim={self.context_dim}"
        if self._density:
            extra = f", scale_side='density'{extra}"
        return (f"MaskedAffineAutoregressive(dim={self.dim}, hidden={tuple(self.made.hidden)}, "
                f"scale={self.scale!r}{extra})")

    def _config(self):
        return dict(super()._config(), scale=self.scale, scale_side=self.scale_side)

    # ----------------------------------------------------------------- density direction
    def _inverse_vjp(self, x, context=None):
        if self._density:
            return self._density_inverse_vjp(x, context)
        out, made_pullback = self.made._vjp(x, context)
        mu, u = out[..., 0], out[..., 1]
        log_scale, dlog_scale = self._scale_map(u)
        inv_scale = np.exp(-log_scale)
        z = (x - mu) * inv_scale
        log_det = -log_scale.sum(axis=1)

        def pullback(z_bar, log_det_bar):
            direct = z_bar * inv_scale
            head = np.empty(out.shape, dtype=x.dtype)
            head[..., 0] = -direct
            head[..., 1] = (-z_bar * z - log_det_bar[:, None]) * dlog_scale
            made_result = made_pullback(head)
            return self._finish(direct + made_result[0], made_result, context)

        return z, log_det, pullback

    def _inverse(self, x, context=None):
        out = self.made._forward(x, context)
        log_scale, _ = self._scale_map(out[..., 1])
        if self._density:
            return x * np.exp(log_scale) + out[..., 0], log_scale.sum(axis=1)
        return (x - out[..., 0]) * np.exp(-log_scale), -log_scale.sum(axis=1)

    # ----------------------------------------------------------------- sampling direction
    def _density_inverse_vjp(self, x, context):
        """``scale_side="density"``: ``z = x e + mu``, ``log_det = sum l`` (class Notes)."""
        out, made_pullback = self.made._vjp(x, context)
        log_scale, dlog_scale = self._scale_map(out[..., 1])
        scale = np.exp(log_scale)
        z = x * scale + out[..., 0]
        log_det = log_scale.sum(axis=1)
        xs = x * scale  # dz/dl

        def pullback(z_bar, log_det_bar):
            head = np.empty(out.shape, dtype=x.dtype)
            head[..., 0] = z_bar
            head[..., 1] = (z_bar * xs + log_det_bar[:, None]) * dlog_scale
            made_result = made_pullback(head)
            return self._finish(z_bar * scale + made_result[0], made_result, context)

        return z, log_det, pullback

    def _sample_coordinate(self, z_i, out_i):
        log_scale, _ = self._scale_map(out_i[:, 1])
        if self._density:
            return (z_i - out_i[:, 0]) * np.exp(-log_scale)
        return z_i * np.exp(log_scale) + out_i[:, 0]

    def _forward(self, z, context=None):
        # x is the incremental sampler's (each coordinate from its own final outputs); the
        # log-det comes from one full MADE pass at x, the very computation of inverse(x), so
        # the two log-dets are exact negatives bit for bit (DESIGN.md). The sampler's outputs
        # agree with that pass only to round-off (another summation order). One density pass.
        x, _ = self._sample_incremental(z, context)
        return x, self._log_det_at(x, context)

    def _log_det_at(self, x, context):
        log_scale, _ = self._scale_map(self.made._forward(x, context)[..., 1])
        return -log_scale.sum(axis=1) if self._density else log_scale.sum(axis=1)

    def _forward_reference(self, z, context=None):
        """The reference sampling pass: ``dim - 1`` sequential MADE passes plus the last one."""
        x = self._sample_passes_reference(z, context)
        out = self.made._forward(x, context)  # the last pass: every mu, u is final
        log_scale, _ = self._scale_map(out[..., 1])
        if self._density:
            return (z - out[..., 0]) * np.exp(-log_scale), -log_scale.sum(axis=1)
        return z * np.exp(log_scale) + out[..., 0], log_scale.sum(axis=1)

    def _forward_vjp(self, z, context=None):
        if self._density:
            return self._density_forward_vjp(z, context)
        x_s = self._sample_passes(z, context)
        out, made_pullback = self.made._vjp(x_s, context)  # x_s is its residual: not returned
        log_scale, dlog_scale = self._scale_map(out[..., 1])
        scale = np.exp(log_scale)
        x = x_s.copy()  # the sampler's x, as _forward returns
        log_det = log_scale.sum(axis=1)
        zs = z * scale  # dx/dl, the sensitivity of x to its own log-scale
        max_steps = self.dim

        def pullback(x_bar, log_det_bar):
            def head(lam):
                h = np.empty(out.shape, dtype=z.dtype)
                h[..., 0] = lam
                h[..., 1] = (lam * zs + log_det_bar[:, None]) * dlog_scale
                return h

            # lambda = x_bar + A^T lambda + (d log_det/dx)^T g, A nilpotent: exact in <= dim steps
            lam, _, made_result = fixed_point_adjoint(
                x_bar, lambda lam: (None, made_pullback(head(lam))), max_steps)
            return self._finish(lam * scale, made_result, context)

        return x, log_det, pullback

    def _density_forward_vjp(self, z, context):
        """``scale_side="density"`` sampling: ``x = (z - mu) / e``, ``log_det = -sum l``; the
        fixed-point adjoint with heads ``mu_bar = -lambda / e``, ``l_bar = -lambda x - g``."""
        x_s = self._sample_passes(z, context)
        out, made_pullback = self.made._vjp(x_s, context)  # x_s is its residual: not returned
        log_scale, dlog_scale = self._scale_map(out[..., 1])
        inv_scale = np.exp(-log_scale)
        x = x_s.copy()  # the sampler's x, as _forward returns
        log_det = -log_scale.sum(axis=1)
        max_steps = self.dim

        def pullback(x_bar, log_det_bar):
            def head(lam):
                h = np.empty(out.shape, dtype=z.dtype)
                h[..., 0] = -lam * inv_scale
                h[..., 1] = (-lam * x - log_det_bar[:, None]) * dlog_scale
                return h

            lam, _, made_result = fixed_point_adjoint(
                x_bar, lambda lam: (None, made_pullback(head(lam))), max_steps)
            return self._finish(lam * inv_scale, made_result, context)

        return x, log_det, pullback
