r"""Rational-quadratic spline layers (neural spline flows): ``RationalQuadraticSpline``,
``SplineCoupling`` and ``MaskedSplineAutoregressive``.

Each coordinate goes through a monotone rational-quadratic spline ``RQS`` (Gregory & Delbourgo
1982; Durkan et al. 2019) on ``[-B, B]`` with linear tails, whose knots come from unconstrained
parameters through a named parameter map (:mod:`refflow.bijectors.spline_maps`: ``"durkan"``,
``"zuko"``, ``"distrax"``, ``"pyro"``, ``"flowjax"``). Per element the unconstrained parameters
are laid out as ``[widths (K) | heights (K) | derivatives (K - 1, or K + 1 for "distrax" and
"flowjax")]`` (nflows' order).

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

import math

import numpy as np

from .._validation import check_bool, check_dim
from ..io.spec import constructor_arguments, declaration
from ..nn.mlp import MLP
from .autoregressive import MaskedAutoregressiveBase
from .base import Bijector
from .coupling import CouplingBase, conditioner_input
from .linear_rational import lrs, lrs_input_knots, lrs_n_params
from .spline_core import (identity_parameters, input_knots, layer_spline_map, map_config, rqs,
                          split_parameters)

__all__ = ["RationalQuadraticSpline", "CircularSpline", "SplineCoupling",
           "MaskedSplineAutoregressive"]


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


_SPLINES = ("rational-quadratic", "linear-rational")


def _spline_kind(layer, where, spline, parameterization):
    """Set ``layer.spline`` and its elementwise functions; return the knot map's name (None:
    "durkan" for rational-quadratic splines, "pyro" for linear-rational ones, which only
    Pyro's map serves)."""
    spline = "rational-quadratic" if spline is None else spline
    if not (isinstance(spline, str) and spline in _SPLINES):
        raise ValueError(f"{where}: spline must be one of {list(_SPLINES)}, got {spline!r}")
    layer.spline = spline
    if spline == "linear-rational":
        if parameterization not in (None, "pyro"):
            raise ValueError(f"{where}: spline='linear-rational' uses Pyro's knot map; "
                             f"parameterization must be None or 'pyro', got "
                             f"{parameterization!r}")
        layer._elementwise, layer._knot_fn = lrs, lrs_input_knots
        return "pyro"
    layer._elementwise, layer._knot_fn = _spline, _knots
    return "durkan" if parameterization is None else parameterization


def _spline_config(layer, config):
    config = dict(config, **map_config(layer._map, layer.parameterization))
    if layer.spline != "rational-quadratic":  # absent otherwise: earlier files keep their form
        config["spline"] = layer.spline
    return config


# --------------------------------------------------------------- circular coordinates
def _circular_mask(circular, dim, where):
    """``circular`` (None, True, a boolean mask of shape ``(dim,)`` or a list of indices) as an
    owned boolean array of shape ``(dim,)``, or None when no coordinate is circular."""
    if circular is None or circular is False:
        return None
    if circular is True:
        return np.ones(dim, dtype=bool)
    if isinstance(circular, str):
        raise ValueError(f"{where}: circular must be None, True, a boolean mask or a list of "
                         f"indices, got {circular!r}")
    try:
        arr = np.asarray(circular)
    except Exception as exc:  # ragged lists and the like
        raise ValueError(f"{where}: circular could not be converted to an array ({exc})") from None
    if arr.dtype == bool:
        if arr.shape != (dim,):
            raise ValueError(f"{where}: a circular mask must have shape ({dim},), got {arr.shape}")
        mask = arr.copy()
    elif arr.ndim == 1 and (arr.size == 0 or arr.dtype.kind in "iu"):
        idx = arr.astype(np.int64)
        if ((idx < 0) | (idx >= dim)).any() or np.unique(idx).size != idx.size:
            raise ValueError(f"{where}: circular indices must be distinct integers in "
                             f"0..{dim - 1}, got {arr.tolist()}")
        mask = np.zeros(dim, dtype=bool)
        mask[idx] = True
    else:
        raise ValueError(f"{where}: circular must be None, True, a boolean mask of shape "
                         f"({dim},) or a list of indices, got {circular!r}")
    return mask if mask.any() else None


def _circular_spline_map(where, parameterization, n_bins, min_bin_width, min_bin_height,
                         min_derivative):
    """The spline map of the circular coordinates: bound pi and ``d_K = d_0``.

    ``"durkan"``: ``end_slopes="circular"``, ``d_0 = d_K = m_d + softplus(u_0)`` (normflows'
    ``tails="circular"``, normflows/utils/splines.py lines 42-44, 55-56); ``"zuko"``: zuko's
    own unit end slopes (``d_0 = d_K = 1``, zuko 1.6 flows/spline.py lines 65-71,
    ``CircularRQSTransform``); ``"distrax"``: ``boundary_slopes="circular"``."""
    if parameterization == "durkan":
        boundary, ends = None, "circular"
    elif parameterization == "zuko":
        boundary, ends = None, None
    elif parameterization == "distrax":
        boundary, ends = "circular", None
    else:
        raise ValueError(f"{where}: circular coordinates need a map whose end slopes can be "
                         f"equal ('durkan', 'zuko' or 'distrax'), got {parameterization!r}")
    return layer_spline_map(where, parameterization, n_bins, math.pi, min_bin_width,
                            min_bin_height, min_derivative, boundary, ends)


def _spline_groups(n_bins, smap, cmap, circ):
    """``(groups, P)`` for the transformed coordinates, ``circ`` their circular flags (or
    None): each group ``(indices, map, offset, n_derivatives, circular)`` reads the columns
    ``[0, 2K)`` and ``[2K + offset, 2K + offset + n_derivatives)`` of the ``P`` parameters of
    its coordinates. When the two groups need different numbers of derivatives (the durkan
    map: ``K - 1`` linear, ``K`` circular) the block has ``K + 1``, the linear coordinates read
    entries ``1 .. K - 1`` and the circular ones ``0 .. K - 1``: normflows' layout for a list
    of tails (normflows/utils/splines.py lines 48-57, ``3K + 1`` outputs per coordinate)."""
    k2 = 2 * n_bins
    if circ is None or not circ.any():
        return None, k2 + smap.n_derivatives
    lin, cir = np.flatnonzero(~circ), np.flatnonzero(circ)
    if lin.size == 0:
        return [(cir, cmap, 0, cmap.n_derivatives, True)], k2 + cmap.n_derivatives
    n_l, n_c = smap.n_derivatives, cmap.n_derivatives
    if n_l == n_c:
        block, off_l = n_l, 0
    else:
        block, off_l = max(n_l, n_c) + 1, 1
    return [(lin, smap, off_l, n_l, False), (cir, cmap, 0, n_c, True)], k2 + block


def _circle_shift(v):
    """zuko's ``CircularShiftTransform(bound=pi)``: ``(v mod 2 pi) - pi`` (its own inverse on
    the circle, derivative 1)."""
    pi = v.dtype.type(math.pi)
    return np.remainder(v, 2 * pi) - pi


def _groups_for(layer, m):
    """The layer's groups for ``m`` coordinates (a single group covers whatever it is given:
    the autoregressive sampler passes one coordinate at a time)."""
    if len(layer._groups) == 1:
        _, smap, off, nd, circ = layer._groups[0]
        return [(np.arange(m), smap, off, nd, circ)]
    return layer._groups


def _grouped_spline(layer, apply, v, theta, vjp):
    """The spline of every transformed coordinate by groups (:func:`_spline_groups`): ``v``
    ``(n, m)``, ``theta`` ``(n, m, P)``. The circular group is shifted first (``apply=
    "spline"``, the density direction) or last (``"inverse"``) when ``layer.shift``.
    Returns ``(y, log_det, pullback)``, ``pullback(y_bar, log_det_bar) -> (v_bar,
    theta_bar)``; the shift has derivative 1, so the cotangents pass through it unchanged."""
    n, m = v.shape
    k2 = 2 * layer.n_bins
    y, log_det = np.empty_like(v), np.zeros(n, dtype=v.dtype)
    pullbacks = []
    groups = _groups_for(layer, m)
    for sel, smap, off, nd, circ in groups:
        th = np.concatenate([theta[:, sel, :k2], theta[:, sel, k2 + off:k2 + off + nd]],
                            axis=-1).reshape(-1, k2 + nd)
        vg = np.ascontiguousarray(v[:, sel]).reshape(-1)
        shift = circ and layer.shift
        if shift and apply == "spline":
            vg = _circle_shift(vg)
        out, ld, pb = layer._elementwise(apply, vg, th, smap, vjp)
        if shift and apply == "inverse":
            out = _circle_shift(out)
        y[:, sel] = out.reshape(n, sel.size)
        log_det += ld.reshape(n, sel.size).sum(axis=1)
        pullbacks.append(pb)
    if not vjp:
        return y, log_det, None

    def pullback(y_bar, log_det_bar):
        v_bar = np.empty_like(v)
        theta_bar = np.zeros(theta.shape, dtype=v.dtype)
        for (sel, _, off, nd, _), pb in zip(groups, pullbacks):
            vb, tb = pb(np.ascontiguousarray(y_bar[:, sel]).reshape(-1),
                        np.repeat(log_det_bar, sel.size))
            v_bar[:, sel] = vb.reshape(n, sel.size)
            tb = tb.reshape(n, sel.size, k2 + nd)
            theta_bar[:, sel, :k2] = tb[..., :k2]
            theta_bar[:, sel, k2 + off:k2 + off + nd] = tb[..., k2:]
        return v_bar, theta_bar

    return y, log_det, pullback


def _grouped_knots(layer, apply, theta):
    """``(n, m, K + 2)`` knots of the grouped splines in the input space of ``apply`` (the last
    column: the shift's jump, ``x = 0`` density side, ``z = RQS(0)`` sampling side; inf where
    there is none)."""
    n, m = theta.shape[:2]
    k2 = 2 * layer.n_bins
    knots = np.full((n, m, layer.n_bins + 2), np.inf)
    for sel, smap, off, nd, circ in _groups_for(layer, m):
        th = np.concatenate([theta[:, sel, :k2], theta[:, sel, k2 + off:k2 + off + nd]], axis=-1)
        kn = np.asarray(layer._knot_fn(apply, th, smap), dtype=np.float64)
        if circ and layer.shift:
            if apply == "spline":
                kn = _circle_shift(kn)
                knots[:, sel, -1] = 0.0
            else:
                flat = th.reshape(-1, k2 + nd)
                jump = layer._elementwise("spline", np.zeros(flat.shape[0], dtype=flat.dtype),
                                          flat, smap, False)[0]
                knots[:, sel, -1] = jump.reshape(n, sel.size)
        knots[:, sel, :-1] = kn
    return knots


def _check_circular_domain(layer, direction, v):
    circ = layer._circular
    if circ is None:
        return
    a = v[:, circ]
    bad = ~(np.abs(a) <= a.dtype.type(math.pi))
    if bad.any():
        row, col = (int(j) for j in np.argwhere(bad)[0])
        j = int(np.flatnonzero(circ)[col])
        raise layer._domain_error(direction, f"circular coordinates must lie in [-pi, pi]; got "
                                  f"{a[row, col]!r} at row {row}, coordinate {j}")


def _circular_setup(layer, where, dim, transformed, circular, shift, smap, n_bins,
                    parameterization, min_bin_width, min_bin_height, min_derivative):
    """Set ``layer._circular`` (flags over all coordinates or None), ``layer.shift``,
    ``layer._groups`` and return ``P``."""
    circ = _circular_mask(circular, dim, where)
    layer.shift = check_bool(shift, where, "shift")
    if layer.shift and circ is None:
        raise ValueError(f"{where}: shift=True applies to circular coordinates; give circular=")
    layer._circular = circ
    if circ is None:
        layer._groups = None
        return 2 * int(n_bins) + smap.n_derivatives
    if layer.spline != "rational-quadratic":
        raise ValueError(f"{where}: circular coordinates use rational-quadratic splines; "
                         f"spline={layer.spline!r} has no circular form")
    cmap = _circular_spline_map(where, parameterization, n_bins, min_bin_width, min_bin_height,
                                min_derivative)
    layer._cmap = cmap
    layer._groups, n_params = _spline_groups(int(n_bins), smap, cmap, circ[transformed])
    if layer._groups is None:
        layer._groups = [(np.arange(transformed.size), smap, 0, smap.n_derivatives, False)]
    return n_params


def _circular_features(v_a, circ_a):
    """Conditioner features of the identity part: each coordinate in order, a circular one as
    the two columns ``(sin v, cos v)``. Returns ``(h, pullback)``, ``pullback(h_bar) -> v_bar``
    with ``d sin v = cos v dv`` and ``d cos v = -sin v dv``::

        v_bar_j = h_bar_j                                     (not circular)
        v_bar_j = h_bar_sin_j cos v_j - h_bar_cos_j sin v_j   (circular)
    """
    n, m = v_a.shape
    width = m + int(circ_a.sum())
    col = np.cumsum(1 + circ_a) - (1 + circ_a)       # first column of each coordinate
    lin, cir = np.flatnonzero(~circ_a), np.flatnonzero(circ_a)
    sin, cos = np.sin(v_a[:, cir]), np.cos(v_a[:, cir])
    h = np.empty((n, width), dtype=v_a.dtype)
    h[:, col[lin]] = v_a[:, lin]
    h[:, col[cir]] = sin
    h[:, col[cir] + 1] = cos

    def pullback(h_bar):
        v_bar = np.empty((n, m), dtype=h_bar.dtype)
        v_bar[:, lin] = h_bar[:, col[lin]]
        v_bar[:, cir] = h_bar[:, col[cir]] * cos - h_bar[:, col[cir] + 1] * sin
        return v_bar

    return h, pullback


def _provisional_mask(mask, dim):
    """The transformed coordinates of a coupling layer's ``mask`` (the default when it cannot
    be read: the base class's check then raises its own error)."""
    default = np.arange(dim) >= dim // 2
    if mask is None:
        return default
    try:
        arr = np.asarray(mask).astype(bool)
    except Exception:
        return default
    return arr if arr.shape == (dim,) else default


def _circular_config(layer, config):
    if layer._circular is not None:  # absent otherwise: earlier files keep their form
        config["circular"] = layer._circular.tolist()
        config["shift"] = layer.shift
    return config


def _check_all_or_none(circular, dim, where):
    """The autoregressive layer's circular coordinates: all or none. (Its sampler fixes one
    coordinate at a time through one elementwise map, which does not know the coordinate's
    index; a mask of some coordinates would need two maps there.)"""
    circ = _circular_mask(circular, dim, where)
    if circ is not None and not circ.all():
        raise ValueError(f"{where}: circular must be None or True (every coordinate an angle); "
                         f"a mask of some coordinates is supported by SplineCoupling only, got "
                         f"{circ.astype(int).tolist()}")


# ----------------------------------------------------------------------- elementwise layer

def _spline_map(cls, args):
    """The spline map the constructor arguments ``args`` of layer ``cls`` select (declarations),
    and the number of unconstrained parameters per transformed coordinate."""
    parameterization = args["parameterization"]
    if "spline" in args:  # the coupling and autoregressive layers: the spline kind picks the map
        from types import SimpleNamespace
        parameterization = _spline_kind(SimpleNamespace(), cls.__name__, args["spline"],
                                        parameterization)
    smap = layer_spline_map(cls.__name__, parameterization, args["n_bins"],
                            args["bound"], args["min_bin_width"], args["min_bin_height"],
                            args["min_derivative"], args["boundary_slopes"],
                            args.get("end_slopes"))
    if args.get("spline") == "linear-rational":
        return smap, lrs_n_params(smap.n_bins)
    return smap, 2 * smap.n_bins + smap.n_derivatives


class RationalQuadraticSpline(Bijector):
    r"""Elementwise monotone rational-quadratic spline with its own parameters, ``x = RQS(z)``.

    Parameters
    ----------
    dim : int
    n_bins : int, default 8
        ``K``, the number of bins.
    parameterization : {"durkan", "zuko", "distrax", "pyro", "flowjax"}, default "durkan"
        How unconstrained parameters become knots (:mod:`refflow.bijectors.spline_maps`);
        "pyro" (Pyro's ``order="quadratic"``) and "flowjax" have identity tails with boundary
        slopes other than 1.
    bound : float, optional
        ``B``; the spline lives on ``[-B, B]`` (default: the map's, 3 for "durkan", 5 for
        "zuko"; 3 for "distrax", which has no default of its own).
    min_bin_width, min_bin_height, min_derivative, boundary_slopes, end_slopes : optional
        Passed to the map (defaults: the map's); ``end_slopes="learned"`` (durkan, zuko)
        learns the boundary derivatives too, with identity tails.

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
                 boundary_slopes=None, end_slopes=None):
        dim = check_dim(dim, "RationalQuadraticSpline")
        smap = layer_spline_map("RationalQuadraticSpline", parameterization, n_bins, bound,
                                min_bin_width, min_bin_height, min_derivative, boundary_slopes,
                                end_slopes)
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

    @classmethod
    def _declare(cls, config):
        args = constructor_arguments(cls, config)
        dim = check_dim(args["dim"], "RationalQuadraticSpline")
        smap, _ = _spline_map(cls, args)
        return declaration({"unnormalized_widths": (dim, smap.n_bins),
                            "unnormalized_heights": (dim, smap.n_bins),
                            "unnormalized_derivatives": (dim, smap.n_derivatives)})

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


class CircularSpline(RationalQuadraticSpline):
    r"""Elementwise circular rational-quadratic spline on the angles ``[-pi, pi]`` (Rezende et
    al. 2020), optionally after zuko's circular shift.

    Parameters
    ----------
    dim : int
    n_bins : int, default 8
    parameterization : {"distrax", "zuko"}, default "distrax"
        ``"distrax"``: all slopes learned with ``boundary_slopes="circular"`` (``d_K = d_0``,
        Rezende et al.'s condition, also distrax's ``'circular'`` mode); ``"zuko"``: zuko's map,
        ``d_0 = d_K = 1`` (zuko's ``CircularRQSTransform`` in ``NCSF``).
    shift : bool, default False
        Apply zuko's ``CircularShiftTransform(bound=pi)``, ``s(v) = (v mod 2 pi) - pi`` (a
        rotation of the circle by ``pi``), before the spline: ``x = RQS(s(z))``, as
        ``zuko.flows.spline.CircularRQSTransform`` composes them.
    min_bin_width, min_bin_height, min_derivative : optional
        Passed to the map (defaults: the map's).

    Notes
    -----
    The spline lives on ``[-B, B]`` with ``B = pi``: ``RQS(-pi) = -pi``, ``RQS(pi) = pi`` and
    ``RQS'(-pi) = d_0 = d_K = RQS'(pi)``, so it is a diffeomorphism of the circle (value and
    slope continuous across the identification ``-pi ~ pi``). Inputs of both directions must lie
    in ``[-pi, pi]`` (``ValueError`` otherwise; ``pi`` and ``-pi`` are the same angle and both
    are accepted). With the shift, ``s(v) = v + pi`` for ``v < 0`` and ``v - pi`` otherwise
    (jumping by ``2 pi`` at ``v = 0``, continuous on the circle), ``s`` is its own inverse on
    the circle and its log-det is 0::

        forward   x = RQS(s(z)),       log_det =  sum_j log RQS'(s(z_j))
        inverse   z = s(RQS^-1(x)),    log_det = -sum_j log RQS'(RQS^-1(x_j))

    Pullbacks: those of :class:`RationalQuadraticSpline` (the spline kernels, then the map),
    with ``ds/dv = 1`` passing the input cotangent through. Without the shift it is
    ``RationalQuadraticSpline`` restricted to ``[-pi, pi]``.

    References
    ----------
    Rezende, Papamakarios, Racaniere, Albergo, Kanwar, Shanahan, Cranmer, "Normalizing Flows on
    Tori and Spheres", 2020, arXiv:2002.02428 (section 3.2, circular splines).

    Examples
    --------
    >>> import numpy as np
    >>> from refflow import CircularSpline
    >>> layer = CircularSpline(1, n_bins=4, shift=True)
    >>> layer.forward(np.array([[-3.0], [0.5]]))[0]        # the identity spline after the shift
    array([[ 0.14159265],
           [-2.64159265]])
    >>> bool(np.allclose(layer.inverse(layer.forward(np.array([[1.0]]))[0])[0], 1.0))
    True
    """

    def __init__(self, dim, *, n_bins=8, parameterization="distrax", shift=False,
                 min_bin_width=None, min_bin_height=None, min_derivative=None):
        where = "CircularSpline"
        if parameterization not in ("distrax", "zuko"):
            raise ValueError(f"{where}: parameterization must be 'distrax' or 'zuko' (maps whose "
                             f"end slopes can be equal), got {parameterization!r}")
        self.shift = check_bool(shift, where, "shift")
        super().__init__(dim, n_bins=n_bins, parameterization=parameterization, bound=math.pi,
                         min_bin_width=min_bin_width, min_bin_height=min_bin_height,
                         min_derivative=min_derivative,
                         boundary_slopes="circular" if parameterization == "distrax" else None)

    def __repr__(self):
        return (f"CircularSpline(dim={self.dim}, n_bins={self.n_bins}, "
                f"parameterization={self.parameterization!r}, shift={self.shift})")

    def _config(self):
        config = map_config(self._map, self.parameterization)
        config.pop("bound")
        config.pop("boundary_slopes", None)
        return {"dim": self.dim, **config, "shift": self.shift}

    @classmethod
    def _declare(cls, config):
        args = constructor_arguments(cls, config)
        parameterization = args["parameterization"]
        if parameterization not in ("distrax", "zuko"):
            raise ValueError(f"CircularSpline: parameterization must be 'distrax' or 'zuko', got "
                             f"{parameterization!r}")
        dim = check_dim(args["dim"], "CircularSpline")
        smap = layer_spline_map("CircularSpline", parameterization, args["n_bins"], math.pi,
                                args["min_bin_width"], args["min_bin_height"],
                                args["min_derivative"],
                                "circular" if parameterization == "distrax" else None)
        return declaration({"unnormalized_widths": (dim, smap.n_bins),
                            "unnormalized_heights": (dim, smap.n_bins),
                            "unnormalized_derivatives": (dim, smap.n_derivatives)})

    @staticmethod
    def _shift(v):
        pi = v.dtype.type(math.pi)
        return np.remainder(v, 2 * pi) - pi

    def _check_angles(self, direction, v):
        pi = v.dtype.type(math.pi)
        bad = np.abs(v) > pi
        if bad.any():
            i = tuple(int(j) for j in np.argwhere(bad)[0])
            raise self._domain_error(direction, f"angles must lie in [-pi, pi]; got {v[i]!r} "
                                     f"at index {i}")

    def _check_forward_domain(self, z):
        self._check_angles("forward", z)

    def _check_inverse_domain(self, x):
        self._check_angles("inverse", x)

    def _forward_pass(self, z, context, vjp):
        return self._spline_pass("spline", self._shift(z) if self.shift else z, vjp)

    def _inverse_pass(self, x, context, vjp):
        u, log_det, pullback = self._spline_pass("inverse", x, vjp)
        return (self._shift(u) if self.shift else u), log_det, pullback

    def _input_knots(self, direction, v, context=None):
        """The spline's knots in the input space of ``direction``; with the shift also the
        shift's jump (``z = 0`` forward, ``x = RQS(0)`` inverse), where finite differences
        must not reach."""
        knots = super()._input_knots(direction, v)
        if not self.shift:
            return knots
        if direction == "forward":
            knots = self._shift(np.asarray(knots, dtype=np.float64))
            extra = np.zeros(knots.shape[:-1] + (1,))
        else:
            jump = self._spline_pass("spline", np.zeros((1, self.dim)), False)[0]
            extra = np.broadcast_to(jump[0][:, None], knots.shape[:-1] + (1,))
        return np.concatenate([knots, extra], axis=-1)


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
    parameterization : {"durkan", "zuko", "distrax", "pyro", "flowjax"}, optional
        The knot map; None means "durkan" ("pyro", the only choice, with
        ``spline="linear-rational"``).
    spline : {"rational-quadratic", "linear-rational"}, optional
        None means ``"rational-quadratic"``. ``"linear-rational"`` is Pyro's default
        (``SplineCoupling`` / ``SplineAutoregressive`` with ``order="linear"``): the
        :class:`refflow.bijectors.LinearRationalSpline` of each coordinate, with ``P = 4K - 1``
        conditioner outputs per coordinate laid out ``[widths | heights | derivatives |
        lambdas]`` (``K, K, K - 1, K``).
    bound : float, optional
        ``B`` (default: the map's, 3 for "durkan").
    circular : None, True, array_like of bool or list of int, optional
        The coordinates that are angles on ``[-pi, pi]`` (True: all; a boolean mask of shape
        ``(dim,)``; or indices). Their splines have bound ``pi`` and the circular boundary
        condition ``d_K = d_0`` (a diffeomorphism of the circle, Rezende et al. 2020), by the
        map: ``"durkan"`` ``d_0 = d_K = m_d + softplus(u_0)``, ``K`` raw derivatives
        (normflows 1.7.3 ``tails="circular"``, normflows/utils/splines.py lines 42-44 and,
        for a layer that mixes circular and linear coordinates, the list of tails of lines
        48-57: ``3K + 1`` outputs per coordinate, the linear ones reading derivatives
        ``1 .. K-1``, the circular ones ``0 .. K-1``); ``"zuko"`` its unit end slopes (zuko
        1.6 ``CircularRQSTransform``, zuko/flows/spline.py lines 65-71); ``"distrax"``
        ``boundary_slopes="circular"``. Other maps and ``spline="linear-rational"`` raise
        ``ValueError``. The other coordinates keep the layer's map, bound and tails. Inputs
        of circular coordinates outside ``[-pi, pi]`` raise ``ValueError`` (both directions).
        Conditioner input: every circular *identity* coordinate ``v_j`` is fed as the two
        columns ``(sin v_j, cos v_j)`` in its place (normflows' coupling feeds
        ``w_1 sin v_j + w_2 cos v_j`` with trainable ``w``, ``PeriodicFeaturesElementwise``,
        normflows/utils/nn.py lines 120-130, used by ``CircularCoupledRationalQuadraticSpline``,
        normflows/flows/neural_spline/wrapper.py lines 128-155; its first linear layer ``W``
        is this layer's with columns ``W_j w_1`` and ``W_j w_2``, so every normflows model is
        one of these, and zero ``w`` aside, not the other way round).
    shift : bool, default False
        With ``circular``: zuko's ``CircularShiftTransform(bound=pi)``,
        ``s(v) = (v mod 2 pi) - pi``, before the spline in the density direction
        (``z = RQS(s(x))``) and after the inverse in the sampling direction
        (``x = s(RQS^{-1}(z))``), as zuko's ``CircularRQSTransform`` composes them.
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
    added to the identity part's. With circular identity coordinates ``h`` holds
    ``(sin v_j, cos v_j)`` for them, and since ``d sin v = cos v dv``, ``d cos v = -sin v dv``
    their cotangent is ``v_bar_j = h_bar_sin_j cos v_j - h_bar_cos_j sin v_j`` (added to the
    identity part's as above); the shift has derivative 1 and passes cotangents unchanged.

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
                 parameterization=None, bound=None, min_bin_width=None, min_bin_height=None,
                 min_derivative=None, boundary_slopes=None, end_slopes=None, spline=None,
                 circular=None, shift=False, context_dim=None, zero_last=False, rng=None):
        where = "SplineCoupling"
        parameterization = _spline_kind(self, where, spline, parameterization)
        smap = layer_spline_map(where, parameterization, n_bins, bound, min_bin_width,
                                min_bin_height, min_derivative, boundary_slopes, end_slopes)
        self.n_bins, self.parameterization, self._map = int(n_bins), parameterization, smap
        dim_ = check_dim(dim, where)
        transformed = _provisional_mask(mask, dim_)
        self._n_params = _circular_setup(self, where, dim_, transformed, circular, shift, smap,
                                         n_bins, parameterization, min_bin_width,
                                         min_bin_height, min_derivative)
        if self.spline == "linear-rational":
            self._n_params = lrs_n_params(self.n_bins)
        circ = self._circular
        n_sincos = 0 if circ is None else int(circ[~transformed].sum())
        super().__init__(dim, mask, hidden, activation, context_dim, zero_last, rng,
                         out_per_feature=self._n_params)
        if n_sincos:
            # every circular identity coordinate feeds (sin, cos): n_sincos more inputs
            n_in = self.dim - self._n_b + n_sincos + (context_dim or 0)
            self.conditioner = MLP(n_in, self._n_params * self._n_b, hidden, activation,
                                   zero_last=zero_last, rng=rng)

    def __repr__(self):
        kind = "" if self.spline == "rational-quadratic" else f", spline={self.spline!r}"
        circ = "" if self._circular is None else f", circular={self._circular.tolist()}"
        return (f"SplineCoupling(dim={self.dim}, n_bins={self.n_bins}, "
                f"parameterization={self.parameterization!r}{kind}{circ}, "
                f"context_dim={self.context_dim})")

    def _config(self):
        return _circular_config(self, _spline_config(self, super()._config()))

    @classmethod
    def _declare(cls, config):
        args = constructor_arguments(cls, config)
        n_params = _spline_map(cls, args)[1]
        if args["circular"] is not None:
            from types import SimpleNamespace
            dim = check_dim(args["dim"], cls.__name__)
            transformed = _provisional_mask(args["mask"], dim)
            probe = SimpleNamespace(spline="rational-quadratic" if args["spline"] is None
                                    else args["spline"])
            smap, _ = _spline_map(cls, args)
            n_params = _circular_setup(probe, cls.__name__, dim, transformed, args["circular"],
                                       args["shift"], smap, args["n_bins"],
                                       smap.name, args["min_bin_width"],
                                       args["min_bin_height"], args["min_derivative"])
            if probe._circular is not None:
                # the sin/cos columns widen the conditioner's input as context columns would
                n_sincos = int(probe._circular[~transformed].sum())
                args = dict(args, context_dim=(args["context_dim"] or 0) + n_sincos or None)
        return cls._coupling_declaration(args, n_params)

    def _check_forward_domain(self, z):
        _check_circular_domain(self, "forward", z)

    def _check_inverse_domain(self, x):
        _check_circular_domain(self, "inverse", x)

    def _conditioner_input(self, v, a, context):
        """``(h, pullback)``: ``h = [features(v_a), context]`` (:func:`_circular_features`
        when an identity coordinate is circular, else ``v_a``); ``pullback(h_bar) ->
        (v_a_bar, context_bar)``."""
        circ = self._circular
        if circ is None or not circ[a].any():
            h = conditioner_input(v, a, context)
            width = a.shape[0]

            def pullback(h_bar):
                return h_bar[:, :width], None if context is None else np.ascontiguousarray(
                    h_bar[:, width:])
            return h, pullback
        feat, feat_pullback = _circular_features(v.take(a, axis=1), circ[a])
        width = feat.shape[1]
        h = feat if context is None else np.concatenate([feat, context], axis=1)

        def pullback(h_bar):
            c_bar = None if context is None else np.ascontiguousarray(h_bar[:, width:])
            return feat_pullback(h_bar[:, :width]), c_bar
        return h, pullback

    def _pass(self, direction, v, context, vjp):
        if self._circular is None:
            return super()._pass(direction, v, context, vjp)
        a, b = self._indices(direction)
        h, h_pullback = self._conditioner_input(v, a, context)
        net = self.conditioner
        out, net_pullback = net._vjp(h) if vjp else (net._forward(h), None)
        y_b, log_det, transform_pullback = self._transform(direction, v.take(b, axis=1), out, vjp)
        y = np.empty(v.shape, dtype=v.dtype)
        y[:, a] = v[:, a]
        y[:, b] = y_b
        if not vjp:
            return y, log_det, None

        def pullback(y_bar, log_det_bar):
            v_b_bar, out_bar = transform_pullback(y_bar.take(b, axis=1), log_det_bar)
            h_bar, grads = net_pullback(out_bar)
            v_a_bar, context_bar = h_pullback(h_bar)
            v_bar = np.empty(y_bar.shape, dtype=y_bar.dtype)
            v_bar[:, a] = y_bar.take(a, axis=1) + v_a_bar
            v_bar[:, b] = v_b_bar
            return v_bar, {f"conditioner.{k}": g for k, g in grads.items()}, context_bar

        return y, log_det, pullback

    def _input_knots(self, direction, v, context=None):
        """``(n, dim, .)`` knots in the input space of ``direction`` (inf for the identity part)."""
        a, b = self._indices(direction)
        theta = self.conditioner._forward(self._conditioner_input(v, a, context)[0])
        apply = "spline" if direction == "inverse" else "inverse"
        theta = theta.reshape(v.shape[0], b.shape[0], -1)
        if self._groups is not None:
            inner = _grouped_knots(self, apply, theta)
        else:
            inner = self._knot_fn(apply, theta, self._map)
        knots = np.full((v.shape[0], self.dim, inner.shape[-1]), np.inf)
        knots[:, b] = inner
        return knots

    def _transform(self, direction, v_b, out, vjp):
        n, n_b = v_b.shape
        apply = "spline" if direction == "inverse" else "inverse"  # density direction = RQS
        if self._groups is not None:
            y_b, log_det, pb = _grouped_spline(self, apply, v_b,
                                               out.reshape(n, n_b, self._n_params), vjp)
            if not vjp:
                return y_b, log_det, None
            return y_b, log_det, lambda y_bar, ld_bar: (
                lambda r: (r[0], r[1].reshape(n, n_b * self._n_params)))(pb(y_bar, ld_bar))
        y_b, log_det, spline_pullback = self._elementwise(apply, v_b.reshape(-1),
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
    parameterization : {"durkan", "zuko", "distrax", "pyro", "flowjax"}, optional
        The knot map; None means "durkan" ("pyro", the only choice, with
        ``spline="linear-rational"``).
    spline : {"rational-quadratic", "linear-rational"}, optional
        None means ``"rational-quadratic"``. ``"linear-rational"`` is Pyro's default
        (``SplineCoupling`` / ``SplineAutoregressive`` with ``order="linear"``): the
        :class:`refflow.bijectors.LinearRationalSpline` of each coordinate, with ``P = 4K - 1``
        conditioner outputs per coordinate laid out ``[widths | heights | derivatives |
        lambdas]`` (``K, K, K - 1, K``).
    bound : float, optional
    circular : None or True, optional
        True: every coordinate is an angle on ``[-pi, pi]`` with the circular spline of
        :class:`SplineCoupling`'s ``circular`` (bound ``pi``, ``d_K = d_0`` by the map;
        normflows 1.7.3 ``CircularAutoregressiveRationalQuadraticSpline``,
        normflows/flows/neural_spline/wrapper.py lines 247-303, ``tails="circular"``, and
        ``_output_dim_multiplier`` 3K, normflows/flows/neural_spline/autoregressive.py lines
        86-92). The MADE sees the raw angles, as zuko's ``NCSF`` (not sin/cos: normflows' MADE
        preprocessing ``w_1 sin + w_2 cos``, autoregressive.py lines 44-55, is not
        reproduced). A mask of some coordinates raises ``ValueError``.
    shift : bool, default False
        With ``circular=True``: zuko's circular shift (see :class:`SplineCoupling`); with
        ``parameterization="zuko"`` this is zuko 1.6's ``NCSF`` layer (zuko/flows/spline.py
        lines 65-110).
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

    def __init__(self, dim, *, hidden=(64, 64), n_bins=8, parameterization=None, bound=None,
                 min_bin_width=None, min_bin_height=None, min_derivative=None,
                 boundary_slopes=None, end_slopes=None, spline=None, circular=None,
                 shift=False, order="natural", hidden_degrees="cyclic", activation="relu",
                 context_dim=None, zero_last=False, rng=None):
        where = "MaskedSplineAutoregressive"
        parameterization = _spline_kind(self, where, spline, parameterization)
        smap = layer_spline_map(where, parameterization, n_bins, bound,
                                min_bin_width, min_bin_height, min_derivative, boundary_slopes,
                                end_slopes)
        self.n_bins, self.parameterization, self._map = int(n_bins), parameterization, smap
        dim_ = check_dim(dim, where)
        _check_all_or_none(circular, dim_, where)
        self._n_params = _circular_setup(self, where, dim_, np.ones(dim_, dtype=bool), circular,
                                         shift, smap, n_bins, parameterization, min_bin_width,
                                         min_bin_height, min_derivative)
        if self.spline == "linear-rational":
            self._n_params = lrs_n_params(self.n_bins)
        super().__init__(dim, self._n_params, hidden, order, hidden_degrees, activation,
                         context_dim, zero_last, rng)

    def __repr__(self):
        kind = "" if self.spline == "rational-quadratic" else f", spline={self.spline!r}"
        return (f"MaskedSplineAutoregressive(dim={self.dim}, hidden={tuple(self.made.hidden)}, "
                f"n_bins={self.n_bins}, parameterization={self.parameterization!r}{kind}, "
                f"context_dim={self.context_dim})")

    def _config(self):
        return _circular_config(self, _spline_config(self, super()._config()))

    @classmethod
    def _declare(cls, config):
        args = constructor_arguments(cls, config)
        n_params = _spline_map(cls, args)[1]
        if args["circular"] is not None:
            from types import SimpleNamespace
            dim = check_dim(args["dim"], cls.__name__)
            _check_all_or_none(args["circular"], dim, cls.__name__)
            probe = SimpleNamespace(spline="rational-quadratic" if args["spline"] is None
                                    else args["spline"])
            smap, _ = _spline_map(cls, args)
            n_params = _circular_setup(probe, cls.__name__, dim, np.ones(dim, dtype=bool),
                                       args["circular"], args["shift"], smap, args["n_bins"],
                                       smap.name, args["min_bin_width"],
                                       args["min_bin_height"], args["min_derivative"])
        return cls._made_declaration(args, n_params)

    def _check_forward_domain(self, z):
        _check_circular_domain(self, "forward", z)

    def _check_inverse_domain(self, x):
        _check_circular_domain(self, "inverse", x)

    def _input_knots(self, direction, v, context=None):
        """``(n, dim, K+1)`` knots in the input space of ``direction`` at the points ``v``."""
        x = v if direction == "inverse" else self._forward_pass(v, context, False)[0]
        theta = self.made._forward(x, context)
        apply = "spline" if direction == "inverse" else "inverse"
        if self._groups is not None:
            return _grouped_knots(self, apply, theta)
        return self._knot_fn(apply, theta, self._map)

    def _sample_coordinate(self, z_i, out_i):
        if self._groups is not None:
            return self._transform("forward", z_i, out_i, False)[0]
        return self._elementwise("inverse", z_i, out_i, self._map, False)[0]

    def _transform(self, direction, v, out, vjp, sampled=None):
        # density direction (inverse) = RQS; sampling = RQS^{-1} at the final outputs
        apply = "spline" if direction == "inverse" else "inverse"
        if self._groups is not None:
            # one group of every coordinate (circular=True); one coordinate (m,) while sampling
            one = v.ndim == 1
            v2 = v[:, None] if one else v
            theta = out.reshape(v2.shape[0], v2.shape[1], self._n_params)
            y, log_det, pb = _grouped_spline(self, apply, np.ascontiguousarray(v2), theta, vjp)
            if one:
                y = y[:, 0]
            if not vjp:
                return y, log_det, None

            def grouped_pullback(y_bar, log_det_bar):
                v_bar, theta_bar = pb(y_bar.reshape(v2.shape), log_det_bar)
                return v_bar.reshape(v.shape), theta_bar.reshape(out.shape)

            return y, log_det, grouped_pullback
        y, log_det, spline_pullback = self._elementwise(apply, v.reshape(-1),
                                                        out.reshape(-1, self._n_params),
                                                        self._map, vjp)
        y, log_det = y.reshape(v.shape), log_det.reshape(v.shape).sum(axis=-1)
        if not vjp:
            return y, log_det, None

        def pullback(y_bar, log_det_bar):
            v_bar, theta_bar = spline_pullback(y_bar.reshape(-1), np.repeat(log_det_bar, self.dim))
            return v_bar.reshape(v.shape), theta_bar.reshape(out.shape)

        return y, log_det, pullback
