r"""The rational-quadratic spline, elementwise, for any parameter map: the one dispatcher.

:func:`rqs` evaluates ``RQS`` (or ``RQS^{-1}``) of ``N`` elements, each with its own
unconstrained parameters, and its pullback to the input and the parameters. Every spline layer
and :func:`refflow.rational_quadratic_spline` call it; it picks the path by
:func:`refflow.kernels.use_fast_paths`, read at call time:

==============  ===========================================  ==================================
path            ``"durkan"`` map                             other maps (``"zuko"``,
                                                             ``"distrax"``)
==============  ===========================================  ==================================
fast            the fused durkan kernels (knots computed     the map's knot arrays (NumPy),
                per element inside the loop; no copies)      then the numba knot kernels
reference       the map's knot arrays (NumPy), then the      the same
                NumPy twins of the knot kernels, then the
                map's pullback
==============  ===========================================  ==================================

All kernels are in :mod:`refflow.kernels.splines` (one numba cache unit); big batches are split
over threads by :func:`refflow.kernels.launch` (bitwise the same for any number of threads).
The *reference path* is the composed NumPy path (parameter map, then the twins): it shares no
code with the numba kernels, and the parity tests compare every fast path against it. The two
agree to rounding: the knots differ by a few ulps (the fused kernels' own ``exp`` and
sequential sums against NumPy's SIMD ``exp`` and pairwise sums), which the spline's
conditioning amplifies.
"""

import math

import numpy as np

from ..kernels import launch, use_fast_paths
from ..kernels.splines import (
    rqs_durkan_forward, rqs_durkan_forward_vjp, rqs_durkan_inverse, rqs_durkan_inverse_vjp,
    rqs_forward, rqs_forward_numpy, rqs_forward_vjp, rqs_forward_vjp_numpy, rqs_inverse,
    rqs_inverse_numpy, rqs_inverse_vjp, rqs_inverse_vjp_numpy,
)
from .spline_maps import get_spline_map

__all__ = ["rqs", "split_parameters", "input_knots", "layer_spline_map", "map_config",
           "identity_parameters"]

def split_parameters(theta, n_bins):
    """``(widths, heights, derivatives)`` views of parameters laid out ``[K | K | rest]``."""
    return theta[..., :n_bins], theta[..., n_bins:2 * n_bins], theta[..., 2 * n_bins:]


def _call(kernel, arrays, settings, outputs):
    """:func:`refflow.kernels.launch`'s signature, one call (the vectorised NumPy twins)."""
    kernel(*arrays, *settings, *outputs)


def rqs(apply, v, uw, uh, ud, smap, vjp):
    """``RQS`` (``apply="spline"``) or ``RQS^{-1}`` (``"inverse"``) of ``v`` elementwise.

    Parameters
    ----------
    apply : {"spline", "inverse"}
    v : ndarray of shape (N,)
        C-contiguous, float32 or float64 (the compute dtype).
    uw, uh, ud : ndarray of shape (N, K), (N, K), (N, smap.n_derivatives)
        Each element's unconstrained parameters, any strides (column views of one array are
        read in place by the fused kernels); cast to ``v.dtype``.
    smap : refflow.bijectors.spline_maps.SplineMap
    vjp : bool

    Returns
    -------
    out, log_det : ndarray of shape (N,)
        Elementwise; ``log_det`` is that of the map applied (``log RQS'`` or its negative at
        the root).
    pullback : callable or None
        ``pullback(out_bar, log_det_bar, param_bars=None) -> (v_bar, (uw_bar, uh_bar,
        ud_bar))``, the cotangents of ``sum(out_bar out + log_det_bar log_det)``, not summed
        over elements. ``param_bars``, if given, are three writable ``(N, .)`` arrays (views
        allowed) that receive the parameter cotangents; otherwise new C-contiguous arrays.
    """
    dtype = v.dtype
    # Cast only when needed: this runs once per spline call (dim times per autoregressive
    # sample), and the generator of three conversions is a dozen Python calls even when every
    # array already has the dtype (the usual case).
    if not (type(uw) is np.ndarray and type(uh) is np.ndarray and type(ud) is np.ndarray
            and uw.dtype == dtype and uh.dtype == dtype and ud.dtype == dtype):
        uw, uh, ud = (np.asarray(a).astype(dtype, copy=False) for a in (uw, uh, ud))
    out, log_det = np.empty_like(v), np.empty_like(v)
    spline = apply == "spline"
    fast = use_fast_paths("splines")
    # (kernels looked up by name at call time, so that a test may substitute one)
    if fast and smap.name == "durkan" and smap.end_slopes == "fixed":  # fused: unit end slopes
        kernel, vjp_kernel = ((rqs_durkan_forward, rqs_durkan_forward_vjp) if spline
                              else (rqs_durkan_inverse, rqs_durkan_inverse_vjp))
        settings = (float(smap.bound), float(smap.min_bin_width), float(smap.min_bin_height),
                    float(smap.min_derivative))
        launch(kernel, (v, uw, uh, ud), settings, (out, log_det))
        if not vjp:
            return out, log_det, None

        def pullback(out_bar, log_det_bar, param_bars=None):
            v_bar = np.empty_like(v)
            if param_bars is None:
                param_bars = tuple(np.empty(a.shape, dtype=dtype) for a in (uw, uh, ud))
            launch(vjp_kernel, (v, uw, uh, ud), settings,
                   (np.ascontiguousarray(out_bar, dtype=dtype),
                    np.ascontiguousarray(log_det_bar, dtype=dtype), v_bar, *param_bars))
            return v_bar, tuple(param_bars)

        return out, log_det, pullback

    # The composed path: the map's knot arrays, the knot kernels (numba, fast) or their NumPy
    # twins (reference), the map's pullback. A map with identity tails whose boundary slopes
    # are not 1 ("pyro", "flowjax": the slope jumps at +-B) has the kernels' linear tails
    # replaced by the identity outside [-B, B] (in x and in y alike): out = v, log_det = 0,
    # v_bar = out_bar and no cotangent for the knots there.
    outside = None
    if smap.identity_tails:
        outside = np.abs(v) > v.dtype.type(smap.bound)
    if vjp:
        knots, map_pullback = smap.vjp(uw, uh, ud)
    else:
        knots = smap(uw, uh, ud)
    knots = tuple(np.ascontiguousarray(k, dtype=dtype) for k in knots)
    if fast:
        run = launch
        kernel, vjp_kernel = ((rqs_forward, rqs_forward_vjp) if spline
                              else (rqs_inverse, rqs_inverse_vjp))
    else:
        run = _call
        kernel, vjp_kernel = ((rqs_forward_numpy, rqs_forward_vjp_numpy) if spline
                              else (rqs_inverse_numpy, rqs_inverse_vjp_numpy))
    run(kernel, (v, *knots), (), (out, log_det))
    if outside is not None:
        out[outside] = v[outside]
        log_det[outside] = 0.0
    if not vjp:
        return out, log_det, None

    def pullback(out_bar, log_det_bar, param_bars=None):
        v_bar = np.empty_like(v)
        knot_bars = tuple(np.empty_like(k) for k in knots)
        args = (np.ascontiguousarray(out_bar, dtype=dtype),
                np.ascontiguousarray(log_det_bar, dtype=dtype), v_bar, *knot_bars)
        run(vjp_kernel, (v, *knots), (), args)
        if outside is not None:
            v_bar[outside] = args[0][outside]
            for k_bar in knot_bars:
                k_bar[outside] = 0.0
        bars = map_pullback(*knot_bars)
        if param_bars is None:
            return v_bar, tuple(bars)
        for target, bar in zip(param_bars, bars):
            target[...] = bar
        return v_bar, tuple(param_bars)

    return out, log_det, pullback


def input_knots(apply, uw, uh, ud, smap):
    """Knot positions in the input space of ``apply``: ``x_k`` for RQS, ``y_k`` for RQS^{-1}
    (``(..., K + 1)``; where the derivative of the log-det jumps)."""
    xk, yk, _ = smap(uw, uh, ud)
    return xk if apply == "spline" else yk


def layer_spline_map(where, parameterization, n_bins, bound=None, min_bin_width=None,
                     min_bin_height=None, min_derivative=None, boundary_slopes=None,
                     end_slopes=None):
    """The spline map of a layer, with errors naming ``where`` (distrax's and flowjax's bound
    defaults to 3, the NSF paper's ``B``, since those libraries themselves require one)."""
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 2:
        raise ValueError(f"{where}: n_bins must be an integer >= 2, got {n_bins!r}")
    if bound is None and parameterization in ("distrax", "flowjax"):
        bound = 3.0
    options = {k: v for k, v in dict(bound=bound, min_bin_width=min_bin_width,
                                     min_bin_height=min_bin_height, min_derivative=min_derivative,
                                     boundary_slopes=boundary_slopes,
                                     end_slopes=end_slopes).items() if v is not None}
    try:
        return get_spline_map(parameterization, n_bins=int(n_bins), **options)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None


def map_config(smap, parameterization):
    """The spline map's constructor arguments, every setting explicit (for ``_config``)."""
    return {"n_bins": smap.n_bins, "parameterization": parameterization, "bound": smap.bound,
            **smap.settings()}


def identity_parameters(smap):
    """One element's unconstrained parameters (``[K | K | n_derivatives]``) that give the
    identity spline: equal x and y knots and unit derivatives ("pyro": inner derivatives 1,
    its fixed boundary derivatives ``1 - min_derivative``, so only nearly the identity)."""
    n_bins = smap.n_bins
    theta = np.zeros(2 * n_bins + smap.n_derivatives)
    if smap.name in ("durkan", "pyro"):  # min_d + softplus(u) = 1 at u = log(expm1(1 - min_d))
        theta[2 * n_bins:] = math.log(math.expm1(1.0 - smap.min_derivative))
    return theta
