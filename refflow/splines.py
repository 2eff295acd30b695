r"""The rational-quadratic spline as a function, to check other implementations against.

:func:`rational_quadratic_spline` is the elementwise monotone rational-quadratic spline of
Durkan et al. (2019) with exactly their parameterization (nflows'
``unconstrained_rational_quadratic_spline`` with ``tails="linear"``, ``tail_bound = bound``),
and :func:`rational_quadratic_spline_vjp` adds its hand-derived pullback for the input and all
three parameter arrays.

Parameterization ("durkan" map, :mod:`refflow.bijectors.spline_maps`), with ``K`` bins on
``[-B, B]`` and minima ``m_w, m_h, m_d``::

    w = m_w + (1 - K m_w) softmax(u_w)     x_0 = -B,  x_j = 2B (w_0 + ... + w_{j-1}) - B,  x_K = B
    h = m_h + (1 - K m_h) softmax(u_h)     y_0 = -B,  y_j = 2B (h_0 + ... + h_{j-1}) - B,  y_K = B
    d_0 = d_K = 1,   d_j = m_d + softplus(u_d[j-1])   (j = 1, ..., K - 1)

Spline (Gregory & Delbourgo 1982; Durkan et al. 2019, eqs. 4 and 5). In the bin
``x_k <= x < x_{k+1}``, with ``s_k = (y_{k+1} - y_k) / (x_{k+1} - x_k)``,
``xi = (x - x_k) / (x_{k+1} - x_k)``::

    y = y_k + (y_{k+1} - y_k) (s_k xi^2 + d_k xi (1 - xi)) / D,
    D = s_k + (d_{k+1} + d_k - 2 s_k) xi (1 - xi)
    log dy/dx = log(s_k^2 (d_{k+1} xi^2 + 2 s_k xi (1 - xi) + d_k (1 - xi)^2)) - 2 log D

Outside ``[-B, B]`` the map is the identity and the log-det is 0. The inverse (``inverse=True``)
solves ``a xi^2 + b xi + c = 0`` in the bin ``y_k <= y < y_{k+1}`` with the stable root
``xi = 2c / (-b - sqrt(b^2 - 4ac))`` (Durkan et al. 2019, appendix A.3) and returns
``log dx/dy = -log dy/dx`` at the solution.

Pullbacks (derived in :mod:`refflow.kernels.splines`): the outputs' cotangents go to the bin's
quantities ``(xi, y_k, h, s, d_k, d_{k+1})`` by the partial derivatives of the two formulas
above (for the inverse, through the implicit-function theorem ``dxi/dtheta = -F_theta / F_xi``),
then to ``x`` and the two end knots of the bin, then through the map: softmax transposed
``u_bar = p (g - sum p g)``, cumulative sums transposed (reversed cumulative sums),
``softplus' = sigmoid``.

Differences from nflows, all at the level of rounding except the first: nflows' ``softplus``
is torch's, which returns ``u`` itself for ``u > 20`` (an error of ``log1p(e^{-u})``, 2.1e-9 at
``u = 20``); here it is exact. The boundary derivatives are exactly 1 (nflows':
``m_d + softplus(ln(e^{1 - m_d} - 1))``, within an ulp of 1). nflows adds 1e-6 to the last knot
in its bin search (only ``x = B`` itself is affected, and the spline is continuous there).

Implementation: :func:`refflow.bijectors.spline_core.rqs`, the dispatcher every spline layer
uses: by default the fused numba kernels, which compute each element's knots inside the loop
(no ``(N, K + 1)`` knot arrays), in blocks of rows with vectorised ``exp`` / ``softplus``;
batches of at least ``2 * 2^15`` elements are split over threads (the kernels release the GIL):
as many as there are CPUs, or ``REFFLOW_NUM_THREADS``; the results do not depend on the number
of threads. Inside ``refflow.kernels.fast_paths(False)`` (and by default with
``REFFLOW_DISABLE_NUMBA=1``) the reference path runs instead: the NumPy map
(:mod:`refflow.bijectors.spline_maps`) and the NumPy twins of the knot kernels; it agrees to
rounding.

References
----------
Durkan, Bekasov, Murray, Papamakarios, "Neural Spline Flows", NeurIPS 2019, arXiv:1906.04032.
Gregory, Delbourgo, "Piecewise rational quadratic interpolation to monotonic data",
IMA Journal of Numerical Analysis 2(2):123-130, 1982.
"""

import numpy as np

from ._validation import as_float_array, check_finite
from .bijectors.spline_core import rqs
from .bijectors.spline_maps import get_spline_map

__all__ = ["rational_quadratic_spline", "rational_quadratic_spline_vjp"]


def _prepare(where, x, uw, uh, ud, bound, min_bin_width, min_bin_height, min_derivative, own):
    x_in, uw_in, uh_in, ud_in = x, uw, uh, ud
    names = ("x", "unnormalized_widths", "unnormalized_heights", "unnormalized_derivatives")
    arrs = [as_float_array(a, where, n) for a, n in zip((x, uw, uh, ud), names)]
    dtype = np.result_type(*arrs)
    x, uw, uh, ud = arrs
    if uw.ndim < 1:
        raise ValueError(f"{where}: unnormalized_widths must have shape x.shape + (K,) = "
                         f"{x.shape} + (K,), got a scalar")
    K = uw.shape[-1]
    if K < 2:
        raise ValueError(f"{where}: the number of bins K = unnormalized_widths.shape[-1] must be "
                         f"at least 2, got {K}")
    for a, n, size in ((uw, names[1], K), (uh, names[2], K), (ud, names[3], K - 1)):
        if a.shape != x.shape + (size,):
            raise ValueError(f"{where}: {n} must have shape {x.shape + (size,)} (x.shape + "
                             f"({'K' if size == K else 'K - 1'},) with K = {K}), got {a.shape}")
    for a, n in zip((x, uw, uh, ud), names):
        check_finite(a, where, n)
    try:
        smap = get_spline_map("durkan", n_bins=K, bound=bound, min_bin_width=min_bin_width,
                              min_bin_height=min_bin_height, min_derivative=min_derivative)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None
    flat = [np.ascontiguousarray(x.reshape(-1), dtype=dtype)]
    flat += [np.ascontiguousarray(a.reshape(-1, a.shape[-1]), dtype=dtype) for a in (uw, uh, ud)]
    if own:  # the pullback must not see later changes to the caller's arrays
        flat = [f.copy() if np.may_share_memory(f, o) else f
                for f, o in zip(flat, (x_in, uw_in, uh_in, ud_in))]
    return x.shape, flat, smap


def _degenerate(where):
    return ValueError(
        f"{where}: a bin of zero width or height, or a zero derivative, after rounding (possible "
        f"only with a zero min_bin_width, min_bin_height or min_derivative and extreme "
        f"parameters); use positive minima")


def _run(where, *args, **kwargs):
    try:
        return _run_unchecked(where, *args, **kwargs)
    except ZeroDivisionError:  # numba raises where IEEE arithmetic would give inf or NaN
        raise _degenerate(where) from None


def _run_unchecked(where, x, uw, uh, ud, inverse, bound, min_bin_width, min_bin_height,
                   min_derivative, with_vjp):
    shape, (v, uw, uh, ud), smap = _prepare(where, x, uw, uh, ud, bound, min_bin_width,
                                            min_bin_height, min_derivative, own=with_vjp)
    out, log_det, inner = rqs("inverse" if inverse else "spline", v, uw, uh, ud, smap, with_vjp)
    if not (np.isfinite(out).all() and np.isfinite(log_det).all()):
        raise _degenerate(where)  # finite inputs and positive minima never get here
    if not with_vjp:
        return out.reshape(shape), log_det.reshape(shape)

    def pullback(y_bar=None, log_det_bar=None):
        bars = []
        for bar, name in ((y_bar, "y_bar"), (log_det_bar, "log_det_bar")):
            if bar is None:
                bars.append(np.zeros_like(v))
                continue
            bar = as_float_array(bar, f"{where} pullback", name)
            if bar.shape != shape:
                raise ValueError(f"{where} pullback: {name} must have shape {shape}, "
                                 f"got {bar.shape}")
            bars.append(np.ascontiguousarray(bar.reshape(-1), dtype=v.dtype))
        v_bar, (uw_bar, uh_bar, ud_bar) = inner(*bars)
        K = uw.shape[-1]
        return (v_bar.reshape(shape), uw_bar.reshape(shape + (K,)),
                uh_bar.reshape(shape + (K,)), ud_bar.reshape(shape + (K - 1,)))

    return out.reshape(shape), log_det.reshape(shape), pullback


def rational_quadratic_spline(x, unnormalized_widths, unnormalized_heights,
                              unnormalized_derivatives, *, inverse=False, bound=3.0,
                              min_bin_width=1e-3, min_bin_height=1e-3, min_derivative=1e-3):
    r"""Elementwise rational-quadratic spline with Durkan et al.'s parameterization.

    Parameters
    ----------
    x : array_like of shape (...)
        Inputs (``y`` when ``inverse=True``). Any real value: outside ``[-B, B]`` the map is the
        identity.
    unnormalized_widths, unnormalized_heights : array_like of shape (..., K)
        Per element, ``K >= 2``; ``(...)`` is ``x``'s shape.
    unnormalized_derivatives : array_like of shape (..., K - 1)
        The inner knots' derivatives; the boundary derivatives are 1.
    inverse : bool, default False
        Compute ``RQS^{-1}`` and ``log dx/dy`` instead.
    bound : float, default 3.0
        ``B`` (nflows' ``tail_bound``; its own default is 1.0, the NSF paper uses 3).
    min_bin_width, min_bin_height : float, default 1e-3
        Minimum bin sizes as fractions of ``2B``; ``K m < 1``. Zero is allowed (as in nflows),
        but then extreme parameters can round a bin to zero size (a ``ValueError``).
    min_derivative : float, default 1e-3
        Zero is allowed; extreme parameters can then round a derivative to zero, and an
        element at that knot has no finite log-det (a ``ValueError``).

    Returns
    -------
    y : ndarray of shape (...)
        ``RQS(x)`` (or ``RQS^{-1}(x)``), in the inputs' dtype (float32 stays float32).
    log_det : ndarray of shape (...)
        Elementwise ``log dy/dx`` (or ``log dx/dy``); 0 in the tails.

    Raises
    ------
    ValueError
        ``K < 2``, shapes that do not match ``x``, non-positive or non-finite ``bound``, bad
        minima, NaN or infinite inputs or parameters, non-numeric dtypes; a bin or derivative
        rounded to zero (only possible with zero minima).

    See Also
    --------
    rational_quadratic_spline_vjp : the same, with the pullback.
    refflow.bijectors.spline_maps.get_spline_map : the parameter maps (also zuko's, distrax's).

    Notes
    -----
    The formulas are in the module docstring. Zero parameters do not give the identity: they
    give uniform knots with inner derivatives ``softplus(0) + 1e-3 = 0.6941``.

    References
    ----------
    Durkan, Bekasov, Murray, Papamakarios, "Neural Spline Flows", 2019, arXiv:1906.04032.
    Gregory, Delbourgo, "Piecewise rational quadratic interpolation to monotonic data", 1982.

    Examples
    --------
    >>> import numpy as np
    >>> from refflow.splines import rational_quadratic_spline
    >>> rng = np.random.default_rng(0)
    >>> x = np.array([-4.0, -1.0, 0.5, 2.0])
    >>> uw, uh, ud = rng.normal(size=(4, 8)), rng.normal(size=(4, 8)), rng.normal(size=(4, 7))
    >>> y, log_det = rational_quadratic_spline(x, uw, uh, ud)
    >>> np.round(y, 6)                  # the first point is in the (identity) tail
    array([-4.      , -0.841749,  1.787983, -0.256946])
    >>> np.round(log_det, 6)
    array([ 0.      , -1.079507, -0.789981, -1.649347])
    >>> x_back, ld_inv = rational_quadratic_spline(y, uw, uh, ud, inverse=True)
    >>> bool(np.allclose(x_back, x, atol=1e-12, rtol=0)), bool(np.allclose(ld_inv, -log_det))
    (True, True)
    """
    return _run("rational_quadratic_spline", x, unnormalized_widths, unnormalized_heights,
                unnormalized_derivatives, inverse, bound, min_bin_width, min_bin_height,
                min_derivative, with_vjp=False)


def rational_quadratic_spline_vjp(x, unnormalized_widths, unnormalized_heights,
                                  unnormalized_derivatives, *, inverse=False, bound=3.0,
                                  min_bin_width=1e-3, min_bin_height=1e-3, min_derivative=1e-3):
    r""":func:`rational_quadratic_spline` and its pullback.

    Parameters
    ----------
    As :func:`rational_quadratic_spline`.

    Returns
    -------
    y, log_det : ndarray of shape (...)
        As :func:`rational_quadratic_spline`.
    pullback : callable
        ``pullback(y_bar=None, log_det_bar=None) -> (x_bar, widths_bar, heights_bar,
        derivatives_bar)``: the gradient of ``sum(y_bar * y + log_det_bar * log_det)`` with
        respect to the input and the three unnormalized parameter arrays, of the same shapes
        (not summed over elements). ``None`` means zeros. The pullback closes over copies of the
        inputs, so it is safe to call after the caller changes its arrays, and it may be called
        more than once.

    Notes
    -----
    Forward: ``x_bar = y_bar dy/dx + log_det_bar d(log dy/dx)/dx`` and the same for the knot
    parameters, chained through the map (module docstring). In the tails ``x_bar = y_bar`` and
    the parameter cotangents are 0. Inverse: the implicit-function theorem on
    ``F(xi; theta) = y`` (see :mod:`refflow.kernels.splines`).

    Examples
    --------
    >>> import numpy as np
    >>> from refflow.splines import rational_quadratic_spline_vjp
    >>> rng = np.random.default_rng(0)
    >>> x = np.array([-1.0, 0.5])
    >>> uw, uh, ud = rng.normal(size=(2, 4)), rng.normal(size=(2, 4)), rng.normal(size=(2, 3))
    >>> y, log_det, pullback = rational_quadratic_spline_vjp(x, uw, uh, ud)
    >>> x_bar, uw_bar, uh_bar, ud_bar = pullback(np.ones(2))      # d(sum y)
    >>> bool(np.allclose(x_bar, np.exp(log_det)))                 # dy/dx
    True
    >>> uw_bar.shape, ud_bar.shape
    ((2, 4), (2, 3))
    """
    return _run("rational_quadratic_spline_vjp", x, unnormalized_widths, unnormalized_heights,
                unnormalized_derivatives, inverse, bound, min_bin_width, min_bin_height,
                min_derivative, with_vjp=True)
