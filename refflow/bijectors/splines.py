r"""Rational-quadratic spline layers (neural spline flows): ``RationalQuadraticSpline``,
``SplineCoupling`` and ``MaskedSplineAutoregressive``.

Each coordinate goes through a monotone rational-quadratic spline ``RQS`` (Gregory & Delbourgo
1982; Durkan et al. 2019) on ``[-B, B]`` with linear tails, whose knots come from unconstrained
parameters through a named parameter map (:mod:`refflow.bijectors.spline_maps`: ``"durkan"``,
``"zuko"``, ``"distrax"``). Per element the unconstrained parameters are laid out as
``[widths (K) | heights (K) | derivatives (K - 1, or K + 1 for "distrax")]`` (nflows' order).

Directions
----------
- ``RationalQuadraticSpline`` is an elementwise bijector: ``forward`` is the spline,
  ``x = RQS(z)``, with trainable parameters of its own.
- ``SplineCoupling`` and ``MaskedSplineAutoregressive`` follow nflows and zuko, whose layers
  apply the spline in the *density* direction: ``inverse`` (x -> z) computes
  ``z_i = RQS(x_i; theta_i)`` in one conditioner pass, and ``forward`` (sampling) inverts the
  spline, ``x_i = RQS^{-1}(z_i; theta_i)``. So the weights of an nflows or zuko model give the
  same map here without reversing anything.

The spline values, log-dets and their partial derivatives come from numba kernels. With the
``"durkan"`` map (the default) every pass runs the fused kernels of
:mod:`refflow.kernels.durkan`, which take the conditioner's unconstrained outputs directly (as
strided views of its ``(rows, P)`` output, no copies) and compute each element's knots inside the
loop; their pullbacks return the unconstrained parameters' cotangents. The other maps (and
``"durkan"`` when numba is disabled, or with ``_FUSED = False``) take the reference path: the
map (:mod:`refflow.bijectors.spline_maps`) builds the ``(rows, K + 1)`` knot arrays, the generic
kernels of :mod:`refflow.kernels.splines` evaluate the spline, and the map's pullback carries the
knot cotangents back. Both paths agree to rounding (knots a few ulps apart, amplified by the
spline's conditioning); ``tests/parity/test_spline_layers.py`` compares them. The conditioner's
pullback then carries the parameter cotangents to its weights.

References
----------
Durkan, Bekasov, Murray, Papamakarios, "Neural Spline Flows", 2019, arXiv:1906.04032.
Gregory, Delbourgo, "Piecewise rational quadratic interpolation to monotonic data", IMA J.
Numer. Anal., 1982.
"""

import math

import numpy as np

from .._validation import check_dim
from ..kernels import NUMBA_DISABLED
from ..kernels.durkan import (rqs_durkan_forward, rqs_durkan_forward_vjp, rqs_durkan_inverse,
                             rqs_durkan_inverse_vjp)
from ..kernels.splines import rqs_forward, rqs_forward_vjp, rqs_inverse, rqs_inverse_vjp
from ..splines import _launch, _settings as _durkan_settings
from .autoregressive import _MaskedAutoregressive, fixed_point_adjoint
from .base import Bijector
from .coupling import _Coupling, _assemble, _conditioner_input, _split_h_bar
from .spline_maps import get_spline_map

__all__ = ["RationalQuadraticSpline", "SplineCoupling", "MaskedSplineAutoregressive"]


# ---------------------------------------------------------------------------- pure passes
def _make_map(where, parameterization, n_bins, bound, min_bin_width, min_bin_height,
              min_derivative, boundary_slopes):
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 2:
        raise ValueError(f"{where}: n_bins must be an integer >= 2, got {n_bins!r}")
    if bound is None and parameterization == "distrax":
        bound = 3.0  # distrax itself requires a range; the NSF paper's B = 3
    options = {k: v for k, v in dict(bound=bound, min_bin_width=min_bin_width,
                                     min_bin_height=min_bin_height, min_derivative=min_derivative,
                                     boundary_slopes=boundary_slopes).items() if v is not None}
    try:
        return get_spline_map(parameterization, n_bins=int(n_bins), **options)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None


def _map_config(smap, parameterization):
    """The spline map's constructor arguments, every setting explicit (for ``_config``)."""
    return {"n_bins": smap.n_bins, "parameterization": parameterization, "bound": smap.bound,
            **smap._settings()}


def _split(theta, n_bins):
    """``(widths, heights, derivatives)`` views of parameters laid out ``[K | K | rest]``."""
    return theta[..., :n_bins], theta[..., n_bins:2 * n_bins], theta[..., 2 * n_bins:]


#: Run the "durkan" map through the fused kernels (:mod:`refflow.kernels.durkan`). When False,
#: or when numba is disabled (the kernels would then be slow Python loops), every map takes the
#: reference path :func:`_spline_reference`; the tests switch this flag to compare the two.
_FUSED = not NUMBA_DISABLED


def _spline(apply, v, theta, smap, n_bins, with_vjp):
    """``RQS`` (``apply="spline"``) or ``RQS^{-1}`` (``"inverse"``) of ``v`` (N,) elementwise.

    ``theta`` (N, P) holds each element's unconstrained parameters (any strides). Returns
    ``(out, log_det)`` (elementwise, (N,)) or ``(out, log_det, pullback)`` with
    ``pullback(out_bar, log_det_bar) -> (v_bar, theta_bar)``, ``theta_bar`` (N, P) C-contiguous.
    """
    if _FUSED and smap.name == "durkan":
        return _spline_fused(apply, v, theta, smap, n_bins, with_vjp)
    return _spline_reference(apply, v, theta, smap, n_bins, with_vjp)


def _spline_fused(apply, v, theta, smap, n_bins, with_vjp):
    """:func:`_spline` for the "durkan" map on the fused kernels: the widths, heights and
    derivatives go in as strided column views of ``theta`` (no knot arrays, no copies), and the
    pullback writes their cotangents straight into the column blocks of one ``theta_bar``."""
    theta = theta.astype(v.dtype, copy=False)
    params = (v,) + _split(theta, n_bins)
    settings = _durkan_settings(smap)
    out, log_det = np.empty_like(v), np.empty_like(v)
    _launch(rqs_durkan_forward if apply == "spline" else rqs_durkan_inverse, params, settings,
            (out, log_det))
    if not with_vjp:
        return out, log_det
    vjp_kernel = rqs_durkan_forward_vjp if apply == "spline" else rqs_durkan_inverse_vjp

    def pullback(out_bar, log_det_bar):
        v_bar = np.empty_like(v)
        theta_bar = np.empty(theta.shape, dtype=v.dtype)  # every entry written by the kernel
        _launch(vjp_kernel, params, settings,
                (np.ascontiguousarray(out_bar, dtype=v.dtype),
                 np.ascontiguousarray(log_det_bar, dtype=v.dtype), v_bar,
                 *_split(theta_bar, n_bins)))
        return v_bar, theta_bar

    return out, log_det, pullback


def _spline_reference(apply, v, theta, smap, n_bins, with_vjp):
    """:func:`_spline` by the composed reference path: the map's knot arrays, the generic
    kernels of :mod:`refflow.kernels.splines`, the map's pullback."""
    uw, uh, ud = _split(theta, n_bins)
    if with_vjp:
        knots, map_pullback = smap.vjp(uw, uh, ud)
    else:
        knots = smap(uw, uh, ud)
    knots = tuple(np.ascontiguousarray(k, dtype=v.dtype) for k in knots)
    out, log_det = np.empty_like(v), np.empty_like(v)
    (rqs_forward if apply == "spline" else rqs_inverse)(v, *knots, out, log_det)
    if not with_vjp:
        return out, log_det
    vjp_kernel = rqs_forward_vjp if apply == "spline" else rqs_inverse_vjp

    def pullback(out_bar, log_det_bar):
        v_bar = np.empty_like(v)
        knot_bars = [np.empty_like(k) for k in knots]
        vjp_kernel(v, *knots, np.ascontiguousarray(out_bar), np.ascontiguousarray(log_det_bar),
                   v_bar, *knot_bars)
        return v_bar, np.concatenate(map_pullback(*knot_bars), axis=-1)

    return out, log_det, pullback


def _knots_in(apply, theta, smap, n_bins):
    """Knot positions in the input space of ``apply``: ``xk`` for RQS, ``yk`` for RQS^{-1}."""
    xk, yk, _ = smap(*_split(theta, n_bins))
    return xk if apply == "spline" else yk


def _identity_parameters(smap, n_bins):
    """One element's unconstrained parameters that give the identity spline."""
    theta = np.zeros(2 * n_bins + smap.n_derivatives)
    if smap.name == "durkan":  # min_d + softplus(u) = 1 at u = log(expm1(1 - min_d))
        theta[2 * n_bins:] = math.log(math.expm1(1.0 - smap.min_derivative))
    return theta


# ----------------------------------------------------------------------- elementwise layer
class RationalQuadraticSpline(Bijector):
    r"""Elementwise monotone rational-quadratic spline with its own parameters, ``x = RQS(z)``.

    Parameters
    ----------
    dim : int
    n_bins : int, default 8
        ``K``, the number of bins.
    parameterization : {"durkan", "zuko", "distrax"}, default "durkan"
        How unconstrained parameters become knots (:mod:`refflow.bijectors.spline_maps`).
    bound : float, optional
        ``B``; the spline lives on ``[-B, B]`` (default: the map's, 3 for "durkan", 5 for
        "zuko"; 3 for "distrax", which has no default of its own).
    min_bin_width, min_bin_height, min_derivative, boundary_slopes : optional
        Passed to the map (defaults: the map's).

    Notes
    -----
    ``params``: ``"unnormalized_widths"`` ``(dim, K)``, ``"unnormalized_heights"`` ``(dim, K)``,
    ``"unnormalized_derivatives"`` ``(dim, K-1)`` (``(dim, K+1)`` for "distrax"), initialised so
    that the spline is the identity (uniform bins, unit derivatives). Coordinate ``j`` uses row
    ``j``. ``forward`` is ``RQS``, ``inverse`` is ``RQS^{-1}`` (the stable root of the kernel),
    and log-dets are ``sum_j log RQS'(z_j)`` and its negative. Pullbacks: the kernels' partial
    derivatives (value and log-derivative w.r.t. the input and the knots), then the map's
    pullback to the unconstrained parameters, summed over the batch.

    Examples
    --------
    >>> import numpy as np
    >>> from refflow import RationalQuadraticSpline
    >>> layer = RationalQuadraticSpline(2, n_bins=4)
    >>> z = np.array([[0.5, -4.0]])
    >>> x, log_det = layer.forward(z)          # identity at initialisation
    >>> bool(np.allclose(x, z, rtol=1e-12, atol=1e-12)), bool(np.allclose(log_det, 0, atol=1e-12))
    (True, True)
    """

    def __init__(self, dim, *, n_bins=8, parameterization="durkan", bound=None,
                 min_bin_width=None, min_bin_height=None, min_derivative=None,
                 boundary_slopes=None):
        dim = check_dim(dim, "RationalQuadraticSpline")
        smap = _make_map("RationalQuadraticSpline", parameterization, n_bins, bound,
                         min_bin_width, min_bin_height, min_derivative, boundary_slopes)
        theta = np.tile(_identity_parameters(smap, int(n_bins)), (dim, 1))
        uw, uh, ud = _split(theta, int(n_bins))
        super().__init__(dim, params={"unnormalized_widths": uw, "unnormalized_heights": uh,
                                      "unnormalized_derivatives": ud})
        self.n_bins, self.parameterization, self._map = int(n_bins), parameterization, smap

    def __repr__(self):
        return (f"RationalQuadraticSpline(dim={self.dim}, n_bins={self.n_bins}, "
                f"parameterization={self.parameterization!r})")

    def _config(self):
        return {"dim": self.dim, **_map_config(self._map, self.parameterization)}

    def _pass(self, apply, v, with_vjp):
        p = self._p(v.dtype)
        n, d, k = v.shape[0], self.dim, self.n_bins
        theta = np.concatenate([p["unnormalized_widths"], p["unnormalized_heights"],
                                p["unnormalized_derivatives"]], axis=1)
        n_params = theta.shape[1]
        # one fresh writable row per element (for n = 1 a reshaped broadcast would be a read-only
        # view, which numba compiles separately)
        theta_rows = np.tile(theta, (n, 1))
        result = _spline(apply, v.reshape(-1), theta_rows, self._map, k, with_vjp)
        # the kernels' log-dets are those of the map applied (RQS or RQS^{-1}), elementwise
        out, log_det = result[0].reshape(n, d), result[1].reshape(n, d).sum(axis=1)
        if not with_vjp:
            return out, log_det

        def pullback(out_bar, log_det_bar):
            v_bar, theta_bar = result[2](out_bar.reshape(-1), np.repeat(log_det_bar, d))
            theta_bar = theta_bar.reshape(n, d, n_params).sum(axis=0)
            uw_bar, uh_bar, ud_bar = _split(theta_bar, k)
            return v_bar.reshape(n, d), {"unnormalized_widths": uw_bar,
                                         "unnormalized_heights": uh_bar,
                                         "unnormalized_derivatives": ud_bar}

        return out, log_det, pullback

    def _input_knots(self, direction, v, context=None):
        """``(n, dim, K+1)`` knots in the input space of ``direction`` at the points ``v``
        (where the derivative of the log-det jumps; the tests keep finite differences away)."""
        theta = np.concatenate([self.params["unnormalized_widths"], self.params["unnormalized_heights"],
                                self.params["unnormalized_derivatives"]], axis=1)
        knots = _knots_in("spline" if direction == "forward" else "inverse", theta, self._map,
                          self.n_bins)
        return np.broadcast_to(knots, (v.shape[0],) + knots.shape)

    def _forward(self, z):
        return self._pass("spline", z, False)

    def _inverse(self, x):
        return self._pass("inverse", x, False)

    def _forward_vjp(self, z):
        return self._pass("spline", z, True)

    def _inverse_vjp(self, x):
        return self._pass("inverse", x, True)


# -------------------------------------------------------------------------- coupling layer
class SplineCoupling(_Coupling):
    r"""Rational-quadratic spline coupling (NSF, Durkan et al. 2019, section 3.1).

    The identity part ``a`` (``mask`` False) passes through; the transformed part ``b`` goes
    through splines whose unconstrained parameters an MLP computes from ``h = [v_a, context]``.
    Density direction (``inverse``, as in nflows' ``PiecewiseRationalQuadraticCouplingTransform``):
    ``z_b = RQS(x_b; theta(h))``; sampling (``forward``): ``x_b = RQS^{-1}(z_b; theta(h))``.

    Parameters
    ----------
    dim : int
        At least 2.
    mask : array_like of bool, optional
        True marks the transformed coordinates (default: the second half).
    hidden, activation : conditioner MLP, default ``(64, 64)``, ``"relu"``
    n_bins : int, default 8
    parameterization : {"durkan", "zuko", "distrax"}, default "durkan"
    bound : float, optional
        ``B`` (default: the map's, 3 for "durkan").
    context_dim : int, optional
    zero_last : bool, default False
        Zero the conditioner's last layer (the identity for "zuko" and "distrax"; for "durkan"
        uniform bins with inner derivatives ``softplus(0) + 1e-3``, as nflows).
    rng : None, int or numpy.random.Generator

    Notes
    -----
    The conditioner outputs ``n_b * P`` values, viewed as ``(batch, n_b, P)`` with
    ``P = 2K + n_derivatives`` laid out ``[widths | heights | derivatives]`` per coordinate.
    Log-dets: ``inverse`` ``sum_b log RQS'(x_b)``, ``forward`` its negative at the matching
    point. Pullbacks: the spline kernels' cotangents for ``v_b`` and the knots, the map's
    pullback to ``theta``, the MLP's pullback to ``h = [v_a, context]``; ``h_a``'s cotangent is
    added to the identity part's.

    Examples
    --------
    >>> import numpy as np
    >>> from refflow import SplineCoupling
    >>> layer = SplineCoupling(4, hidden=(16,), n_bins=5, rng=0)
    >>> x = np.random.default_rng(1).normal(size=(3, 4))
    >>> z, log_det = layer.inverse(x)
    >>> x_back, _ = layer.forward(z)
    >>> bool(np.allclose(x_back, x, rtol=1e-12, atol=1e-12))
    True
    """

    def __init__(self, dim, *, mask=None, hidden=(64, 64), activation="relu", n_bins=8,
                 parameterization="durkan", bound=None, min_bin_width=None, min_bin_height=None,
                 min_derivative=None, boundary_slopes=None, context_dim=None, zero_last=False,
                 rng=None):
        smap = _make_map("SplineCoupling", parameterization, n_bins, bound, min_bin_width,
                         min_bin_height, min_derivative, boundary_slopes)
        self.n_bins, self.parameterization, self._map = int(n_bins), parameterization, smap
        self._n_params = 2 * self.n_bins + smap.n_derivatives
        super().__init__(dim, mask, hidden, activation, context_dim, zero_last, rng,
                         out_per_feature=self._n_params)

    def __repr__(self):
        return (f"SplineCoupling(dim={self.dim}, n_bins={self.n_bins}, "
                f"parameterization={self.parameterization!r}, context_dim={self.context_dim})")

    def _config(self):
        return dict(super()._config(), **_map_config(self._map, self.parameterization))

    def _input_knots(self, direction, v, context=None):
        """``(n, dim, K+1)`` knots in the input space of ``direction`` (inf for the identity part)."""
        a, b = self._indices(direction)
        theta = self.conditioner._forward(_conditioner_input(v, a, context))
        knots = np.full((v.shape[0], self.dim, self.n_bins + 1), np.inf)
        knots[:, b] = _knots_in("spline" if direction == "inverse" else "inverse",
                                theta.reshape(v.shape[0], b.shape[0], -1), self._map, self.n_bins)
        return knots

    def _pass(self, direction, v, context, with_vjp):
        a, b = self._indices(direction)
        n, n_a, n_b = v.shape[0], a.shape[0], b.shape[0]
        h = _conditioner_input(v, a, context)
        out, net_pullback = self.conditioner._vjp(h) if with_vjp else (self.conditioner._forward(h), None)
        theta = out.reshape(n * n_b, self._n_params)
        apply = "spline" if direction == "inverse" else "inverse"  # density direction = RQS
        result = _spline(apply, v.take(b, axis=1).reshape(-1), theta,  # take: a fresh C array
                         self._map, self.n_bins, with_vjp)
        out_b = result[0].reshape(n, n_b)
        log_det = result[1].reshape(n, n_b).sum(axis=1)
        result_v = _assemble(v, a, b, h[:, :n_a], out_b)
        if not with_vjp:
            return result_v, log_det

        def pullback(out_bar, log_det_bar):
            v_b_bar, theta_bar = result[2](out_bar.take(b, axis=1).reshape(-1),
                                           np.repeat(log_det_bar, n_b))
            h_bar, grads = net_pullback(theta_bar.reshape(n, n_b * self._n_params))
            h_a_bar, context_bar = _split_h_bar(h_bar, n_a, context is not None)
            in_bar = _assemble(out_bar, a, b, out_bar.take(a, axis=1) + h_a_bar,
                               v_b_bar.reshape(n, n_b))
            grads = {f"conditioner.{k}": g for k, g in grads.items()}
            return (in_bar, grads) if context is None else (in_bar, grads, context_bar)

        return result_v, log_det, pullback


# -------------------------------------------------------------------- autoregressive layer
class MaskedSplineAutoregressive(_MaskedAutoregressive):
    r"""Masked autoregressive rational-quadratic spline layer (NSF, Durkan et al. 2019, 3.2).

    A MADE gives every coordinate ``i`` its spline parameters ``theta_i(x_<i)``. Density
    direction (``inverse``, one MADE pass, as nflows'
    ``MaskedPiecewiseRationalQuadraticAutoregressiveTransform`` and zuko's NSF):
    ``z_i = RQS(x_i; theta_i(x_<i))``; sampling (``forward``, ``dim`` sequential passes):
    ``x_i = RQS^{-1}(z_i; theta_i(x_<i))``.

    Parameters
    ----------
    dim : int
    hidden : tuple of int, default (64, 64)
    n_bins : int, default 8
    parameterization : {"durkan", "zuko", "distrax"}, default "durkan"
    bound : float, optional
    order, hidden_degrees, activation : MADE options (see :class:`refflow.nn.MADE`)
    context_dim : int, optional
    zero_last : bool, default False
    rng : None, int or numpy.random.Generator

    Notes
    -----
    MADE outputs ``(batch, dim, P)``, ``P = 2K + n_derivatives``, ``[widths | heights |
    derivatives]`` per coordinate. Log-dets: ``inverse`` ``sum_i log RQS'(x_i)``; ``forward``
    ``sum_i log (RQS^{-1})'(z_i)`` (its negative at the matching point).

    Density-direction pullback: kernel cotangents for ``x`` (direct) and the knots, the map's
    pullback to ``theta``, MADE's pullback to ``x`` (added) and the weights.

    Sampling-direction pullback (exact, implicit-function theorem, as for
    :class:`MaskedAffineAutoregressive`): ``x`` is the fixed point of
    ``G(x) = RQS^{-1}(z; theta(x))`` with ``dG/dx`` strictly triangular in the order, so the
    adjoint ``lambda = x_bar + (dG/dx)^T lambda + (d log_det/dx)^T g`` is reached in at most
    ``dim`` steps, each one inverse-spline kernel pullback (cotangents ``lambda`` for ``x`` and
    ``g`` for the log-det) followed by one MADE pullback. Then ``z_bar`` is the kernel's input
    cotangent at the final ``lambda`` and the weights' cotangents the final MADE pullback.

    Examples
    --------
    >>> import numpy as np
    >>> from refflow import MaskedSplineAutoregressive
    >>> layer = MaskedSplineAutoregressive(3, hidden=(8, 8), n_bins=4, rng=0)
    >>> x = np.random.default_rng(1).normal(size=(2, 3))
    >>> z, log_det = layer.inverse(x)          # one MADE pass
    >>> x_back, forward_log_det = layer.forward(z)  # 3 sequential passes
    >>> bool(np.allclose(x_back, x, rtol=1e-12, atol=1e-12)), bool(np.allclose(forward_log_det, -log_det))
    (True, True)
    """

    def __init__(self, dim, *, hidden=(64, 64), n_bins=8, parameterization="durkan", bound=None,
                 min_bin_width=None, min_bin_height=None, min_derivative=None,
                 boundary_slopes=None, order="natural", hidden_degrees="cyclic",
                 activation="relu", context_dim=None, zero_last=False, rng=None):
        smap = _make_map("MaskedSplineAutoregressive", parameterization, n_bins, bound,
                         min_bin_width, min_bin_height, min_derivative, boundary_slopes)
        self.n_bins, self.parameterization, self._map = int(n_bins), parameterization, smap
        self._n_params = 2 * self.n_bins + smap.n_derivatives
        super().__init__(dim, self._n_params, hidden, order, hidden_degrees, activation,
                         context_dim, zero_last, rng)

    def __repr__(self):
        return (f"MaskedSplineAutoregressive(dim={self.dim}, hidden={tuple(self.made.hidden)}, "
                f"n_bins={self.n_bins}, parameterization={self.parameterization!r}, "
                f"context_dim={self.context_dim})")

    def _config(self):
        return dict(super()._config(), **_map_config(self._map, self.parameterization))

    def _rows(self, out):
        return out.reshape(-1, self._n_params)

    def _input_knots(self, direction, v, context=None):
        """``(n, dim, K+1)`` knots in the input space of ``direction`` at the points ``v``."""
        x = v if direction == "inverse" else self._forward(v, context)[0]
        theta = self.made._forward(x, context)
        return _knots_in("spline" if direction == "inverse" else "inverse", theta, self._map,
                         self.n_bins)

    # ----------------------------------------------------------------- density direction
    def _inverse(self, x, context=None):
        out = self.made._forward(x, context)
        z, log_det = _spline("spline", x.reshape(-1), self._rows(out), self._map, self.n_bins, False)
        return z.reshape(x.shape), log_det.reshape(x.shape).sum(axis=1)

    def _inverse_vjp(self, x, context=None):
        out, made_pullback = self.made._vjp(x, context)
        z, log_det, spline_pullback = _spline("spline", x.reshape(-1), self._rows(out), self._map,
                                              self.n_bins, True)

        def pullback(z_bar, log_det_bar):
            x_bar, theta_bar = spline_pullback(z_bar.reshape(-1), np.repeat(log_det_bar, self.dim))
            made_result = made_pullback(theta_bar.reshape(out.shape))
            return self._finish(x_bar.reshape(x.shape) + made_result[0], made_result, context)

        return z.reshape(x.shape), log_det.reshape(x.shape).sum(axis=1), pullback

    # ----------------------------------------------------------------- sampling direction
    def _sample_coordinate(self, z_i, out_i):
        return _spline("inverse", z_i, out_i, self._map, self.n_bins, False)[0]

    def _forward(self, z, context=None):
        x_partial = self._sample_passes(z, context)
        out = self.made._forward(x_partial, context)  # the last pass: every theta is final
        x, log_det = _spline("inverse", z.reshape(-1), self._rows(out), self._map, self.n_bins, False)
        return x.reshape(z.shape), log_det.reshape(z.shape).sum(axis=1)

    def _forward_vjp(self, z, context=None):
        x_partial = self._sample_passes(z, context)
        out, made_pullback = self.made._vjp(x_partial, context)
        x, log_det, spline_pullback = _spline("inverse", z.reshape(-1), self._rows(out), self._map,
                                              self.n_bins, True)
        shape, max_steps = z.shape, self.dim

        def pullback(x_bar, log_det_bar):
            ld_rows = np.repeat(log_det_bar, self.dim)

            def step(lam):
                z_bar, theta_bar = spline_pullback(lam.reshape(-1), ld_rows)
                return z_bar, made_pullback(theta_bar.reshape(out.shape))

            # lambda = x_bar + (dG/dx)^T lambda + (d log_det/dx)^T g: exact in <= dim steps
            _, z_bar, made_result = fixed_point_adjoint(x_bar, step, max_steps)
            return self._finish(z_bar.reshape(shape), made_result, context)

        return x.reshape(shape), log_det.reshape(shape).sum(axis=1), pullback
