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
(step ``k`` the coordinate of degree ``k + 1``) through the conditioner's ``_sample``: for a
``MADE`` a degree-ordered incremental evaluation (:mod:`refflow.nn._incremental`): a hidden unit
of degree ``k`` depends only on the inputs of degree ``<= k``, so each is computed exactly once,
as soon as those are known -- about the cost of one MADE pass instead of ``dim``. The reference,
``dim`` sequential full passes, runs inside ``refflow.kernels.fast_paths(False)``; the two agree
to round-off (summation order).

:class:`MaskedAutoregressiveBase` holds the passes of every masked autoregressive layer; a
subclass gives the elementwise map of the coordinates, ``_transform`` (the spline layer of
:mod:`refflow.bijectors.splines` is one).
"""

import numpy as np

from .._validation import check_bool, check_dim
from ..io.spec import constructor_arguments, declaration
from ..nn import MADE
from ..nn.mlp import mlp_shapes
from ..params import prefixed
from .base import Bijector
from .scale_maps import affine_map, affine_value, get_scale_map

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



def made_declaration(name, args, n_params):
    """``{"made.<key>": shape}`` of a MADE conditioner that constructor arguments ``args``
    imply: ``dim + context_dim`` inputs, the hidden widths, ``dim * n_params`` outputs."""
    dim = check_dim(args["dim"], name)
    context_dim = args["context_dim"]
    n_context = 0 if context_dim is None else check_dim(context_dim, name, "context_dim")
    shapes = mlp_shapes(dim + n_context, dim * n_params, args["hidden"], f"{name}: MADE")
    return {f"made.{k}": s for k, s in shapes.items()}

class MaskedAutoregressiveBase(Bijector):
    """A masked autoregressive layer: the MADE, the context and the two passes.

    A subclass gives the elementwise map of the coordinates, :meth:`_transform`, from the
    MADE's ``n_params`` outputs per coordinate; the passes here do the rest:

    - density direction (``inverse``): one MADE pass at ``x``, the map, and in the pullback
      the map's cotangents through the MADE (added to the map's own ``x_bar``);
    - sampling direction (``forward``): the conditioner's ``_sample`` fixes ``x`` coordinate
      by coordinate, one full MADE pass at that ``x`` gives the final outputs, the map (with
      ``sampled=x``) gives the result and the log-det; the pullback solves the adjoint of the
      fixed point ``x = G(x) = map(z; MADE(x))`` (:func:`fixed_point_adjoint`).
    """

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

    @property
    def params(self):
        return prefixed([("made", self.made.params)])

    @property
    def _sampling_order(self):
        """Coordinate fixed by sampling step ``k``: the input of degree ``k + 1``."""
        return self.made._sampling_order()

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

    @classmethod
    def _made_declaration(cls, args, n_params):
        """The MADE's arrays that ``args`` imply (see :func:`made_declaration`)."""
        return declaration(made_declaration(cls.__name__, args, n_params))

    def _transform(self, direction, v, out, vjp, sampled=None):
        """The elementwise map of every coordinate in ``direction`` from the MADE's outputs.

        ``v`` is ``(n, dim)`` (or one coordinate's ``(m,)``), ``out`` the MADE's outputs for it,
        ``(n, dim, n_params)`` (or ``(m, n_params)``). ``sampled`` (forward only) is the
        sampler's ``x``, which the map may return as its result. Returns ``(y, log_det,
        pullback)``, ``log_det`` summed over the last axis, and when ``vjp``
        ``pullback(y_bar, log_det_bar) -> (v_bar, out_bar)`` (``out_bar`` shaped as ``out``).
        """
        raise NotImplementedError(f"{type(self).__name__} does not implement _transform")

    def _sample_coordinate(self, z_i, out_i):
        """``x_i`` from ``z_i`` ``(m,)`` and its MADE outputs ``out_i`` ``(m, n_params)``: the
        sampling direction's map of one coordinate (called ``dim`` times per sampling pass;
        a subclass may give a cheaper value-only form)."""
        return self._transform("forward", z_i, out_i, False)[0]

    def _finish(self, in_bar, made_result):
        return in_bar, {f"made.{k}": g for k, g in made_result[1].items()}, made_result[2]

    def _inverse_pass(self, x, context, vjp):
        if not vjp:
            out = self.made._forward(x, context)
            z, log_det, _ = self._transform("inverse", x, out, False)
            return z, log_det, None
        out, made_pullback = self.made._vjp(x, context)
        z, log_det, transform_pullback = self._transform("inverse", x, out, True)

        def pullback(z_bar, log_det_bar):
            x_bar, out_bar = transform_pullback(z_bar, log_det_bar)
            made_result = made_pullback(out_bar)
            return self._finish(x_bar + made_result[0], made_result)

        return z, log_det, pullback

    def _forward_pass(self, z, context, vjp):
        x_s = self.made._sample(z, context, self._sample_coordinate)[0]
        if not vjp:
            out = self.made._forward(x_s, context)
            x, log_det, _ = self._transform("forward", z, out, False, sampled=x_s)
            return x, log_det, None
        out, made_pullback = self.made._vjp(x_s, context)  # x_s is its residual: not returned
        x, log_det, transform_pullback = self._transform("forward", z, out, True, sampled=x_s)
        max_steps = self.dim

        def pullback(x_bar, log_det_bar):
            def step(lam):
                z_bar, out_bar = transform_pullback(lam, log_det_bar)
                return z_bar, made_pullback(out_bar)

            # lambda = x_bar + (dG/dx)^T lambda + (d log_det/dx)^T g: exact in <= dim steps
            _, z_bar, made_result = fixed_point_adjoint(x_bar, step, max_steps)
            return self._finish(z_bar, made_result)

        return x, log_det, pullback


class MaskedAffineAutoregressive(MaskedAutoregressiveBase):
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
    stable : bool, default False
        The stable form of IAF (Kingma et al. 2016, eq. 14; Pyro's ``stable=True``): ``mu``
        is the fixed point of the map instead of a shift added after scaling, i.e. the
        scaling multiplication becomes ``y = mu + (v - mu) exp(l(u))`` and its inverse
        ``v = mu + (y - mu) exp(-l(u))`` (formulas and pullbacks in :mod:`.scale_maps`). Pyro's
        ``AffineAutoregressive(stable=True)`` is ``Inverse`` of this layer with
        ``scale="sigmoid-nofloor", scale_side="density", stable=True``.
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
    (``dim`` sequential full passes, ``MADE._sample_passes``) to round-off. ``x`` is the
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

    **stable=True**: every formula above with ``x - mu`` (resp. ``z - mu``) in place of the
    scaled variable and ``mu`` added back, e.g. density direction (``scale_side="sampling"``)
    ``z = mu + (x - mu) / s``, ``log_det = -sum_i l(u_i)``, and the head cotangents of the
    pullbacks ``mu_bar = -z_bar expm1(-l)``, ``l_bar = -z_bar (z - mu) - g`` (the
    :func:`.scale_maps.affine_divide` pullback); the fixed-point adjoint of the sampling
    direction is unchanged in form (it calls the same elementwise pullbacks).

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
                 activation="relu", scale="exp", scale_side="sampling", stable=False,
                 context_dim=None, zero_last=False, rng=None):
        self._scale_map = get_scale_map(scale, "MaskedAffineAutoregressive")
        if not isinstance(scale_side, str) or scale_side not in _SCALE_SIDES:
            raise ValueError(f"MaskedAffineAutoregressive: scale_side must be one of "
                             f"{list(_SCALE_SIDES)}, got {scale_side!r}")
        self.stable = check_bool(stable, "MaskedAffineAutoregressive", "stable")
        self.scale = scale
        self.scale_side = scale_side
        super().__init__(dim, 2, hidden, order, hidden_degrees, activation, context_dim,
                         zero_last, rng)

    def __repr__(self):
        extra = "" if self.context_dim is None else f", context_dim={self.context_dim}"
        if self.stable:
            extra = f", stable=True{extra}"
        if self.scale_side == "density":
            extra = f", scale_side='density'{extra}"
        return (f"MaskedAffineAutoregressive(dim={self.dim}, hidden={tuple(self.made.hidden)}, "
                f"scale={self.scale!r}{extra})")

    def _config(self):
        config = dict(super()._config(), scale=self.scale, scale_side=self.scale_side)
        if self.stable:  # absent when False: model files written before the option still load
            config["stable"] = True
        return config

    @classmethod
    def _declare(cls, config):
        return cls._made_declaration(constructor_arguments(cls, config), 2)

    def _sample_coordinate(self, z_i, out_i):
        return affine_value("forward", self.scale_side, z_i, out_i[:, 0],
                            self._scale_map(out_i[:, 1])[0], stable=self.stable)

    def _transform(self, direction, v, out, vjp, sampled=None):
        # The side picks the formula of each direction (refflow.bijectors.scale_maps). In the
        # sampling direction x is the sampler's, as the pass returns it (class Notes).
        log_scale, dlog_scale = self._scale_map(out[..., 1])
        if sampled is not None and vjp:
            sampled = sampled.copy()  # the MADE pass's residual: the caller gets its own copy
        y, log_det, affine_pullback = affine_map(direction, self.scale_side)(
            v, out[..., 0], log_scale, dlog_scale, vjp, out=sampled, stable=self.stable)
        if not vjp:
            return y, log_det, None

        def pullback(y_bar, log_det_bar):
            out_bar = np.empty(out.shape, dtype=v.dtype)
            v_bar, out_bar[..., 0], out_bar[..., 1] = affine_pullback(y_bar, log_det_bar)
            return v_bar, out_bar

        return y, log_det, pullback
