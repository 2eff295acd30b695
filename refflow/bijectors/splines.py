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

The spline values, log-dets and their partial derivatives come from one dispatcher,
:func:`refflow.bijectors.spline_core.rqs`: with the ``"durkan"`` map (the default) the fused
kernels, which take the conditioner's unconstrained outputs directly (as strided views of its
``(rows, P)`` output, no copies) and compute each element's knots inside the loop; with the
other maps the map's knot arrays and the numba knot kernels; inside
``refflow.kernels.fast_paths(False)`` the reference path (the NumPy map and the NumPy twins of
the kernels). They agree to rounding (knots a few ulps apart, amplified by the spline's
conditioning). The conditioner's pullback then carries the parameter cotangents to its weights.

References
----------
Durkan, Bekasov, Murray, Papamakarios, "Neural Spline Flows", 2019, arXiv:1906.04032.
Gregory, Delbourgo, "Piecewise rational quadratic interpolation to monotonic data", IMA J.
Numer. Anal., 1982.
"""

import numpy as np

from .._validation import check_dim
from .autoregressive import MaskedAutoregressiveBase
from .base import Bijector
from .coupling import CouplingBase, conditioner_input
from .spline_core import (identity_parameters, input_knots, layer_spline_map, map_config, rqs,
                          split_parameters)

__all__ = ["RationalQuadraticSpline", "SplineCoupling", "MaskedSplineAutoregressive"]


def _spline(apply, v, theta, smap, vjp):
    """``RQS`` (``apply="spline"``) or ``RQS^{-1}`` (``"inverse"``) of ``v`` (N,) elementwise,
    element ``i`` with the parameters ``theta[i]`` (``(N, P)``, any strides): ``(out, log_det,
    pullback)``, ``pullback(out_bar, log_det_bar) -> (v_bar, theta_bar)`` with ``theta_bar``
    ``(N, P)`` C-contiguous (its column blocks written in place) when ``vjp``, else None."""
    n_bins = smap.n_bins
    out, log_det, inner = rqs(apply, v, *split_parameters(theta, n_bins), smap, vjp)
    if not vjp:
        return out, log_det, None

    def pullback(out_bar, log_det_bar):
        theta_bar = np.empty(theta.shape, dtype=v.dtype)
        v_bar, _ = inner(out_bar, log_det_bar, split_parameters(theta_bar, n_bins))
        return v_bar, theta_bar

    return out, log_det, pullback


def _knots(apply, theta, smap):
    return input_knots(apply, *split_parameters(theta, smap.n_bins), smap)


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
        smap = layer_spline_map("RationalQuadraticSpline", parameterization, n_bins, bound,
                                min_bin_width, min_bin_height, min_derivative, boundary_slopes)
        theta = np.tile(identity_parameters(smap), (dim, 1))
        uw, uh, ud = split_parameters(theta, int(n_bins))
        super().__init__(dim, params={"unnormalized_widths": uw, "unnormalized_heights": uh,
                                      "unnormalized_derivatives": ud})
        self.n_bins, self.parameterization, self._map = int(n_bins), parameterization, smap

    def __repr__(self):
        return (f"RationalQuadraticSpline(dim={self.dim}, n_bins={self.n_bins}, "
                f"parameterization={self.parameterization!r})")

    def _config(self):
        return {"dim": self.dim, **map_config(self._map, self.parameterization)}

    def _spline_pass(self, apply, v, vjp):
        p = self._p(v.dtype)
        n, d, k = v.shape[0], self.dim, self.n_bins
        theta = np.concatenate([p["unnormalized_widths"], p["unnormalized_heights"],
                                p["unnormalized_derivatives"]], axis=1)
        n_params = theta.shape[1]
        # one fresh writable row per element (for n = 1 a reshaped broadcast would be a read-only
        # view, which numba compiles separately)
        theta_rows = np.tile(theta, (n, 1))
        out, log_det, spline_pullback = _spline(apply, v.reshape(-1), theta_rows, self._map, vjp)
        # the kernels' log-dets are those of the map applied (RQS or RQS^{-1}), elementwise
        out, log_det = out.reshape(n, d), log_det.reshape(n, d).sum(axis=1)
        if not vjp:
            return out, log_det, None

        def pullback(out_bar, log_det_bar):
            v_bar, theta_bar = spline_pullback(out_bar.reshape(-1), np.repeat(log_det_bar, d))
            theta_bar = theta_bar.reshape(n, d, n_params).sum(axis=0)
            uw_bar, uh_bar, ud_bar = split_parameters(theta_bar, k)
            return v_bar.reshape(n, d), {"unnormalized_widths": uw_bar,
                                         "unnormalized_heights": uh_bar,
                                         "unnormalized_derivatives": ud_bar}, None

        return out, log_det, pullback

    def _forward_pass(self, z, context, vjp):
        return self._spline_pass("spline", z, vjp)

    def _inverse_pass(self, x, context, vjp):
        return self._spline_pass("inverse", x, vjp)

    def _input_knots(self, direction, v, context=None):
        """``(n, dim, K+1)`` knots in the input space of ``direction`` at the points ``v``
        (where the derivative of the log-det jumps; the tests keep finite differences away)."""
        theta = np.concatenate([self.params["unnormalized_widths"], self.params["unnormalized_heights"],
                                self.params["unnormalized_derivatives"]], axis=1)
        knots = _knots("spline" if direction == "forward" else "inverse", theta, self._map)
        return np.broadcast_to(knots, (v.shape[0],) + knots.shape)


# -------------------------------------------------------------------------- coupling layer
class SplineCoupling(CouplingBase):
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
        smap = layer_spline_map("SplineCoupling", parameterization, n_bins, bound, min_bin_width,
                                min_bin_height, min_derivative, boundary_slopes)
        self.n_bins, self.parameterization, self._map = int(n_bins), parameterization, smap
        self._n_params = 2 * self.n_bins + smap.n_derivatives
        super().__init__(dim, mask, hidden, activation, context_dim, zero_last, rng,
                         out_per_feature=self._n_params)

    def __repr__(self):
        return (f"SplineCoupling(dim={self.dim}, n_bins={self.n_bins}, "
                f"parameterization={self.parameterization!r}, context_dim={self.context_dim})")

    def _config(self):
        return dict(super()._config(), **map_config(self._map, self.parameterization))

    def _input_knots(self, direction, v, context=None):
        """``(n, dim, K+1)`` knots in the input space of ``direction`` (inf for the identity part)."""
        a, b = self._indices(direction)
        theta = self.conditioner._forward(conditioner_input(v, a, context))
        knots = np.full((v.shape[0], self.dim, self.n_bins + 1), np.inf)
        knots[:, b] = _knots("spline" if direction == "inverse" else "inverse",
                             theta.reshape(v.shape[0], b.shape[0], -1), self._map)
        return knots

    def _transform(self, direction, v_b, out, vjp):
        n, n_b = v_b.shape
        apply = "spline" if direction == "inverse" else "inverse"  # density direction = RQS
        y_b, log_det, spline_pullback = _spline(apply, v_b.reshape(-1),
                                                out.reshape(n * n_b, self._n_params),
                                                self._map, vjp)
        y_b, log_det = y_b.reshape(n, n_b), log_det.reshape(n, n_b).sum(axis=1)
        if not vjp:
            return y_b, log_det, None

        def pullback(y_b_bar, log_det_bar):
            v_b_bar, theta_bar = spline_pullback(y_b_bar.reshape(-1), np.repeat(log_det_bar, n_b))
            return v_b_bar.reshape(n, n_b), theta_bar.reshape(n, n_b * self._n_params)

        return y_b, log_det, pullback


# -------------------------------------------------------------------- autoregressive layer
class MaskedSplineAutoregressive(MaskedAutoregressiveBase):
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
        smap = layer_spline_map("MaskedSplineAutoregressive", parameterization, n_bins, bound,
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
        return dict(super()._config(), **map_config(self._map, self.parameterization))

    def _input_knots(self, direction, v, context=None):
        """``(n, dim, K+1)`` knots in the input space of ``direction`` at the points ``v``."""
        x = v if direction == "inverse" else self._forward_pass(v, context, False)[0]
        theta = self.made._forward(x, context)
        return _knots("spline" if direction == "inverse" else "inverse", theta, self._map)

    def _sample_coordinate(self, z_i, out_i):
        return _spline("inverse", z_i, out_i, self._map, False)[0]

    def _transform(self, direction, v, out, vjp, sampled=None):
        # density direction (inverse) = RQS; sampling = RQS^{-1} at the final outputs
        apply = "spline" if direction == "inverse" else "inverse"
        y, log_det, spline_pullback = _spline(apply, v.reshape(-1),
                                              out.reshape(-1, self._n_params), self._map, vjp)
        y, log_det = y.reshape(v.shape), log_det.reshape(v.shape).sum(axis=-1)
        if not vjp:
            return y, log_det, None

        def pullback(y_bar, log_det_bar):
            v_bar, theta_bar = spline_pullback(y_bar.reshape(-1), np.repeat(log_det_bar, self.dim))
            return v_bar.reshape(v.shape), theta_bar.reshape(out.shape)

        return y, log_det, pullback
