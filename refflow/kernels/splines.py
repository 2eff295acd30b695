r"""Monotone rational-quadratic spline kernels, with hand-derived pullbacks: the one spline core.

The spline of Gregory & Delbourgo (1982) as used in Neural Spline Flows (Durkan et al. 2019,
eqs. 4-6 and appendix A), evaluated elementwise: element ``n`` of a flattened batch has its own
knots. This file is one numba cache unit: the per-bin formulas (value, stable root, partial
derivatives: ``_rq_*``) are written once and serve two families of kernels,

- the *knot kernels* ``rqs_*``, which take the constrained knots (as TFP does); how a library
  maps unnormalized network outputs to knots (softmax, minimum bin sizes, softplus derivatives)
  is a separate, separately tested map of parameters (:mod:`refflow.bijectors.spline_maps`);
- the *durkan kernels* ``rqs_durkan_*``, which compute each element's knots from its
  unconstrained parameters with Durkan et al.'s map inside the loop (section "The durkan
  kernels" below), so no ``(N, K + 1)`` knot array is ever written.

Their NumPy twins (``rqs_*_numpy`` at the end, written independently) composed with the NumPy
parameter maps are the *reference path* that every fast path here is compared against
(:mod:`refflow.bijectors.spline_core` dispatches between the two).

Knots
-----
Per element ``n``: positions ``xk[n, 0..K]`` and heights ``yk[n, 0..K]``, both strictly increasing,
and derivatives ``dk[n, 0..K] > 0`` (the two boundary ones included). With ``xk[n, 0] = -B``,
``xk[n, K] = B``, ``yk`` the same and ``dk[n, 0] = dk[n, K] = 1`` this is the NSF spline with
identity ("linear") tails of nflows and zuko; other end knots and slopes give distrax's linear
tails.

Forward ``x -> y``
------------------
Bin ``k`` holds ``xk[k] <= x < xk[k+1]`` (an ``x`` exactly at an interior knot goes to the bin on
its right; the last bin includes ``xk[K]``). With ``x0, x1, y0, y1, d0, d1`` the bin's two knots
and derivatives::

    w = x1 - x0,   h = y1 - y0,   s = h / w,   xi = (x - x0) / w  in [0, 1],   u = 1 - xi
    t = xi u,      D = d0 + d1 - 2 s
    Q = s + D t                                  (> 0: Q = s (1 - 2t) + (d0 + d1) t, 1 - 2t >= 1/2)
    M = d1 xi^2 + 2 s t + d0 u^2                 (> 0)
    y = y0 + h R,     R = xi (s xi + d0 u) / Q,     1 - R = u (s u + d1 xi) / Q        (eq. 4)
    g = dy/dx = s^2 M / Q^2 = (s/Q)^2 M                                                (eq. 5)
    log_det = L = log g

``u`` is computed as ``(x1 - x) / w``, not ``1 - xi``, so it keeps its relative accuracy near
``x1``; ``y`` is evaluated as ``y0 + h R`` for ``xi <= 1/2`` and as ``y1 - h (1 - R)`` above, so
that both ends of a bin are hit exactly and the value keeps full accuracy near either knot.
``(s/Q)^2 M`` is used for ``g`` because ``s/Q <= 2`` cannot overflow.

Tails (linear with the boundary slopes through the end knots)::

    x < xk[0]:  y = yk[0] + dk[0] (x - xk[0]),   log_det = log dk[0]
    x > xk[K]:  y = yk[K] + dk[K] (x - xk[K]),   log_det = log dk[K]

The value and the derivative are continuous at every knot and at both ends (``g = d0`` at
``xi = 0``, ``g = d1`` at ``xi = 1``); ``d log g / dx`` jumps there.

Inverse ``y -> x``
------------------
Bin search on ``yk`` (same conventions). In the bin, with ``dy = y - y0`` clipped into ``[0, h]``,
``xi`` solves ``a xi^2 + b xi + c = 0`` (appendix A, eqs. 6 and 29-32)::

    a = h (s - d0) + dy D,     b = h d0 - dy D,     c = -s dy,     a + b = h s > 0,   c <= 0

whose root in ``[0, 1]`` is the paper's stable form ``xi = 2c / (-b - sqrt(b^2 - 4ac))``. With the
relative height ``z = dy / h``, its complement ``zc = 1 - z`` taken as ``(y1 - y) / h`` (both
clipped into ``[0, 1]``) and ``e = d0 zc - d1 z`` the terms are exactly::

    b / h = e + 2 s z,     c / h = -s z,     (b^2 - 4ac) / h^2 = e^2 + 4 s^2 z zc  >= 0

so the kernel evaluates ``r = sqrt(e^2 + 4 s^2 z zc)`` (``>= |e|``) and::

    e >= 0:  xi = 2sz / (2sz + (e + r)),              1 - xi = (e + r) / (2sz + (e + r))
    e <  0:  xi = (r - e) / ((r - e) + 2 s zc),       1 - xi = 2 s zc / ((r - e) + 2 s zc)

(for ``e < 0``, ``e + r = 4 s^2 z zc / (r - e)`` and the fraction is multiplied through by
``r - e``). Every sum has non-negative terms and no denominator can vanish (``d0, d1 > 0``), so:
the discriminant cannot round negative (computed as ``b^2 - 4ac`` it does, e.g. at or just below
a bin's top knot when ``d1 << s``: its exact value there is ``h^2 d1^2``; ``max(., 0)`` would only
hide the lost digits), there is no cancellation (``-b - sqrt(b^2 - 4ac)`` cancels when ``b < 0``
and ``4ac << b^2``, i.e. for steep knot derivatives), ``xi`` and ``1 - xi`` each keep their
relative accuracy, and inputs exactly at knots, at the ends, or a rounding error away from them
give ``xi`` exactly 0 or 1, never NaN. The inverse is backward stable: ``forward(inverse(y))``
reproduces ``y`` to a few ulps even for extreme knots. Then ``x = x0 + xi w`` (``x1 - (1 - xi) w``
for ``xi > 1/2``) and the inverse log-det is ``-log g`` at that ``(xi, 1 - xi)``. The tails
invert the linear maps: ``x = xk[0] + (y - yk[0]) / dk[0]`` with log-det ``-log dk[0]`` (and
likewise at ``K``).

Partial derivatives (the pullbacks' building blocks)
----------------------------------------------------
With ``xi = (x - x0)/(x1 - x0)``, ``s = (y1 - y0)/(x1 - x0)``::

    d xi/dx = 1/w,   d xi/dx0 = -u/w,   d xi/dx1 = -xi/w
    ds/dx0 = s/w,    ds/dx1 = -s/w,     ds/dy0 = -1/w,     ds/dy1 = 1/w,    dh/dy0 = -1, dh/dy1 = 1

Partials of ``R`` (``y = y0 + h R``) at fixed ``(xi, s, d0, d1)``; with ``N = xi (s xi + d0 u)``
the numerators simplify, ``Q - N = u (s u + d1 xi)`` and
``xi^2 Q - N (1 - 2t) = t (d1 xi^2 - d0 u^2)``::

    R_xi = s M / Q^2 = g / s
    R_s  = t (d1 xi^2 - d0 u^2) / Q^2
    R_d0 = t u (s u + d1 xi) / Q^2
    R_d1 = -t xi (s xi + d0 u) / Q^2

hence the partials of ``y``::

    dy/dx  = g
    dy/dx0 = -u g + s^2 R_s             dy/dx1 = -xi g - s^2 R_s
    dy/dy0 = (1 - R) - s R_s            dy/dy1 = R + s R_s
    dy/dd0 = h R_d0                     dy/dd1 = h R_d1

(checks: ``dy/dx + dy/dx0 + dy/dx1 = 0``, translation; ``dy/dy0 + dy/dy1 = 1``).
Partials of ``L = log g = 2 log s + log M - 2 log Q``::

    L_xi = (2 d1 xi + 2 s (1 - 2 xi) - 2 d0 u) / M - 2 D (1 - 2 xi) / Q
    L_s  = 2/s + 2t/M - 2 (1 - 2t)/Q = 2t ((d0 + d1) / (s Q) + 1/M)        (no cancellation)
    L_d0 = u^2 / M - 2t / Q
    L_d1 = xi^2 / M - 2t / Q

hence, at fixed ``x``::

    dL/dx  = L_xi / w
    dL/dx0 = (s L_s - u L_xi) / w       dL/dx1 = -(s L_s + xi L_xi) / w
    dL/dy0 = -L_s / w                   dL/dy1 = L_s / w
    dL/dd0 = L_d0                       dL/dd1 = L_d1

(checks: ``dL/dx + dL/dx0 + dL/dx1 = 0``; ``s L_s + d0 L_d0 + d1 L_d1 = 1``, as ``g`` is
homogeneous of degree 1 in ``(s, d0, d1)``). In the left tail ``dy/dx = dk[0]``,
``dy/dxk[0] = -dk[0]``, ``dy/dyk[0] = 1``, ``dy/ddk[0] = x - xk[0]``, ``dL/ddk[0] = 1/dk[0]``, every
other partial zero (and likewise at ``K`` in the right tail).

Pullbacks
---------
Forward, for the scalar ``sum_n y_bar[n] y[n] + ld_bar[n] log_det[n]``, with ``theta`` any knot
quantity the element touches (its bin's two knots of each kind, or the end knot and slope)::

    x_bar     = y_bar g + ld_bar dL/dx
    theta_bar = y_bar dy/dtheta + ld_bar dL/dtheta

Inverse, for ``sum_n x_bar[n] x(y[n]) + ld_bar[n] log_det_inv[n]``: by the implicit function
theorem on ``y = F(x, theta)``, ``dx/dy = 1/g`` and ``dx/dtheta = -(dy/dtheta)/g``; the inverse
log-det is ``-L(x(y, theta), theta)``, so ``d(-L)/dy = -dL/dx / g`` and
``d(-L)/dtheta = (dL/dx)(dy/dtheta)/g - dL/dtheta`` (``dL/dx``, ``dL/dtheta`` at fixed ``x`` as
above). Collecting terms with ``c = (x_bar - ld_bar dL/dx) / g``::

    y_bar     = c
    theta_bar = -c dy/dtheta - ld_bar dL/dtheta

i.e. the forward pullback at ``x(y)`` with cotangents ``(-c, -ld_bar)``, for the knots. For the
x-knots the kernel uses the simplified totals, in which the ``u L_xi / w`` terms (``O(1/w)``, and
cancelling exactly) never appear; with ``rho = s^2 R_s / g = t (d1 xi^2 - d0 u^2) / M``::

    dx/dx0 = u - rho,     dx/dx1 = xi + rho,     d(-L)/dx0 = -d(-L)/dx1 = (L_xi rho - s L_s) / w

(forming ``-c dy/dx0 - ld_bar dL/dx0`` instead subtracts terms of size ``|ld_bar L_x| ~ 1/w`` to
get an ``O(1)`` result: over 2e4 elements with 1e-6-wide bins, the worst relative error of that
cotangent, against a long-double evaluation, was 0.17 that way and 1.2e-7 this way). The
NumPy twin derives the same quantities along another path: ``xi = Xi(z, s, d0, d1)`` with
``R(Xi) = z``, ``Xi_z = 1/R_xi``, ``Xi_v = -R_v/R_xi``, chained through ``x = x0 + w Xi``.

Kernels
-------
Each is compiled through :func:`refflow.kernels.njit`; arguments are arrays and scalars; the
caller allocates the outputs, which must not alias the inputs. All arrays must share one float
dtype (float32 or float64), and the arithmetic is done in it (constants are made from the arrays'
dtype, so float32 is not promoted). The knots are not validated here (strictly increasing
``xk``, ``yk``; positive ``dk``): that is the caller's job. No temporary of size ``(N, K)`` is
made; the bin is found by a binary search over the ``K + 1`` knots of the row.

=====================  ==========================================================================
``rqs_forward``        ``(x, xk, yk, dk, y, log_det)``
``rqs_inverse``        ``(y, xk, yk, dk, x, log_det)``
``rqs_forward_vjp``    ``(x, xk, yk, dk, y_bar, ld_bar, x_bar, xk_bar, yk_bar, dk_bar)``
``rqs_inverse_vjp``    ``(y, xk, yk, dk, x_bar, ld_bar, y_bar, xk_bar, yk_bar, dk_bar)``
=====================  ==========================================================================

``<kernel>_numpy`` are the NumPy twins: the same signatures, vectorised (a batched
``searchsorted(side="right")`` by counting knots, gathers, ``np.where``), written separately as the
readable reference. They allocate ``(N, K)`` temporaries.

The durkan kernels
------------------
Per element, with ``K`` bins on ``[-B, B]`` and the unconstrained ``u_w, u_h`` (``K`` each) and
``u_d`` (``K - 1``)::

    p = softmax(u_w),  w_i = m_w + (1 - K m_w) p_i,  x_j = 2B (w_0 + ... + w_{j-1}) - B,
    x_0 = -B,  x_K = B         (heights y_j alike with u_h, m_h)
    d_0 = d_K = 1,  d_j = m_d + softplus(u_d[j-1])   (j = 1..K-1)

and in the bin ``k`` with ``x_k <= x < x_{k+1}`` (the last bin includes ``B``), the spline above
(``y``, ``log_det = log dy/dx``; the inverse by the stable root, ``log_det = -log dy/dx`` at the
root). Outside ``[-B, B]`` the map is exactly the identity with log-det 0 (the knots are not
even computed there). The knots agree with the NumPy map's to an ulp or so (NumPy's SIMD
``exp`` and pairwise sums), which the spline amplifies by its conditioning.

Pullbacks (cotangents ``y_bar``, ``ld_bar``): the bin partials give the cotangents of ``x`` and
of the bin's knots ``x_k, x_{k+1}, y_k, y_{k+1}, d_k, d_{k+1}`` as in the knot kernels. Only
those knots have non-zero cotangents, so the map's pullback costs ``O(K)``:
``g_i = c_w sum_{j=i+1}^{K-1} x_bar_j`` (``c_w = 2B (1 - K m_w)``; the end knots are
constants) and ``u_w_bar = p (g - sum_i p_i g_i)``; heights alike;
``u_d_bar[j-1] = d_bar_j sigmoid(u_d[j-1])`` for the inner derivatives, nothing for the
boundary ones. The settings are passed as float64 and rounded to the arrays' dtype exactly as
the NumPy map rounds them.

=================================  ===============================================================
``rqs_durkan_forward``             ``(x, uw, uh, ud, B, m_w, m_h, m_d, y, log_det)``
``rqs_durkan_inverse``             ``(y, uw, uh, ud, B, m_w, m_h, m_d, x, log_det)``
``rqs_durkan_forward_vjp``         ``(x, uw, uh, ud, B, m_w, m_h, m_d, y_bar, ld_bar, x_bar,
                                   uw_bar, uh_bar, ud_bar)``
``rqs_durkan_inverse_vjp``         ``(y, ..., x_bar, ld_bar, y_bar, uw_bar, uh_bar, ud_bar)``
=================================  ===============================================================

Two implementations of each: ``rqs_durkan_*`` work through the batch in blocks of rows with
vectorised ``exp`` / ``softplus`` (see the comment above ``_BLOCK``; 2-3x faster), and
``rqs_durkan_*_scalar`` are per-element loops with libm's functions. Same signatures, same
formulas in the same order; they differ by the ulps of ``exp`` / ``log1p`` moved through the
spline's conditioning (tests/test_spline_speed_paths.py). The scalar loops are kept as that
test's oracle; the layers and :func:`refflow.rational_quadratic_spline` run the block kernels.

References
----------
J. A. Gregory and R. Delbourgo, "Piecewise rational quadratic interpolation to monotonic data",
IMA Journal of Numerical Analysis 2(2), 123-130, 1982.

C. Durkan, A. Bekasov, I. Murray and G. Papamakarios, "Neural Spline Flows", NeurIPS 2019,
arXiv:1906.04032.

Examples
--------
Identity tails on ``[-3, 3]`` with one interior knot at ``(0, 1)`` of slope 2:

>>> import numpy as np
>>> from refflow.kernels.splines import rqs_forward, rqs_inverse
>>> xk = np.array([[-3.0, 0.0, 3.0]]).repeat(3, axis=0)
>>> yk = np.array([[-3.0, 1.0, 3.0]]).repeat(3, axis=0)
>>> dk = np.array([[1.0, 2.0, 1.0]]).repeat(3, axis=0)
>>> x = np.array([-5.0, 0.0, 1.5])
>>> y, log_det = np.empty(3), np.empty(3)
>>> rqs_forward(x, xk, yk, dk, y, log_det)
>>> y[:2], log_det[:2]                       # identity tail; the knot (0, 1) with slope 2
(array([-5.,  1.]), array([0.        , 0.69314718]))
>>> x_back, log_det_inv = np.empty(3), np.empty(3)
>>> rqs_inverse(y, xk, yk, dk, x_back, log_det_inv)
>>> bool(np.allclose(x_back, x, rtol=0, atol=1e-15)), bool(np.allclose(log_det_inv, -log_det))
(True, True)
"""

import math

import numpy as np

from . import NUMBA_DISABLED, njit

__all__ = [
    "rqs_forward", "rqs_inverse", "rqs_forward_vjp", "rqs_inverse_vjp",
    "rqs_durkan_forward", "rqs_durkan_inverse", "rqs_durkan_forward_vjp", "rqs_durkan_inverse_vjp",
    "rqs_durkan_forward_scalar", "rqs_durkan_inverse_scalar", "rqs_durkan_forward_vjp_scalar",
    "rqs_durkan_inverse_vjp_scalar",
    "rqs_forward_numpy", "rqs_inverse_numpy", "rqs_forward_vjp_numpy", "rqs_inverse_vjp_numpy",
]


# ---------------------------------------------------------------------------------------------
# numba kernels
#
# Every constant is built from the arrays' dtype (``one = xk.dtype.type(1)``, ``two = one + one``)
# and passed down: a float literal such as ``2.0`` is float64 in numba and would silently promote
# the float32 kernels to float64 arithmetic.
# ---------------------------------------------------------------------------------------------


@njit
def _bin_index(knots, n, v, K):
    """Bin ``k`` in ``0..K-1`` with ``knots[n, k] <= v < knots[n, k+1]``; ``K-1`` for ``v`` equal
    to the last knot. Binary search; assumes ``knots[n, 0] <= v <= knots[n, K]``."""
    lo = 0
    hi = K
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if v >= knots[n, mid]:
            lo = mid
        else:
            hi = mid
    return lo


@njit
def _rq_value(xi, u, y0, y1, h, s, d0, d1, two, half):
    """``(y, g)`` inside a bin: ``y = y0 + h R`` (or ``y1 - h (1 - R)`` past the middle)."""
    t = xi * u
    q = s + (d0 + d1 - two * s) * t
    if xi <= half:
        y = y0 + h * (xi * (s * xi + d0 * u)) / q
    else:
        y = y1 - h * (u * (s * u + d1 * xi)) / q
    r = s / q
    g = r * r * (d1 * xi * xi + two * s * t + d0 * u * u)
    return y, g


@njit
def _rq_slope(xi, u, s, d0, d1, two):
    """``g = dy/dx = (s/Q)^2 M`` inside a bin."""
    t = xi * u
    q = s + (d0 + d1 - two * s) * t
    r = s / q
    return r * r * (d1 * xi * xi + two * s * t + d0 * u * u)


@njit
def _rq_root(dy, dy_up, h, s, d0, d1, zero):
    """``(xi, 1 - xi)`` with ``y0 + h R(xi) = y``, from ``dy = y - y0`` and ``dy_up = y1 - y``:
    the stable root as sums of non-negative terms (module docstring, "Inverse")."""
    if dy < zero:
        dy = zero
    elif dy > h:
        dy = h
    if dy_up < zero:
        dy_up = zero
    elif dy_up > h:
        dy_up = h
    z = dy / h
    zc = dy_up / h
    e = d0 * zc - d1 * z
    two_s = s + s
    r = np.sqrt(e * e + two_s * two_s * (z * zc))
    if e >= zero:
        p = two_s * z               # -2c/h
        q = e + r                   # b/h + sqrt(disc)/h - 2sz, no cancellation for e >= 0
    else:
        p = r - e                   # (e + r)(r - e) = 4 s^2 z (1-z): divided through by e + r
        q = two_s * zc
    den = p + q
    return p / den, q / den


@njit
def _rq_partials(xi, u, w, h, s, d0, d1, one, two):
    """Partials of ``y`` and ``L = log g`` inside a bin (module docstring, "Partial derivatives").

    Returns ``(g, L_x, y_x0, y_x1, y_y0, y_y1, y_d0, y_d1, L_x0, L_x1, L_y0, L_y1, L_d0, L_d1)``.
    """
    t = xi * u
    dd = d0 + d1 - two * s
    q = s + dd * t
    iq = one / q
    m = d1 * xi * xi + two * s * t + d0 * u * u
    im = one / m
    r = s * iq
    g = r * r * m
    a_up = s * u + d1 * xi             # 1 - R = u a_up / Q
    b_lo = s * xi + d0 * u             # R = xi b_lo / Q
    e = t * (d1 * xi * xi - d0 * u * u)
    s_rs = s * e * iq * iq             # s R_s
    ss_rs = r * r * e                  # s^2 R_s
    y_x0 = ss_rs - u * g
    y_x1 = -ss_rs - xi * g
    y_y0 = u * a_up * iq - s_rs
    y_y1 = xi * b_lo * iq + s_rs
    y_d0 = h * t * u * a_up * iq * iq
    y_d1 = -h * t * xi * b_lo * iq * iq
    one_m2xi = u - xi
    l_xi = two * ((d1 * xi + s * one_m2xi - d0 * u) / m - dd * one_m2xi / q)   # divisions: 1 rounding
    s_ls = two * t * ((d0 + d1) * iq + s * im)       # s L_s
    iw = one / w
    l_x = l_xi * iw
    l_x0 = (s_ls - u * l_xi) * iw
    l_x1 = -(s_ls + xi * l_xi) * iw
    l_y1 = s_ls / h                    # L_s / w
    l_y0 = -l_y1
    l_d0 = u * u * im - two * t * iq
    l_d1 = xi * xi * im - two * t * iq
    return g, l_x, y_x0, y_x1, y_y0, y_y1, y_d0, y_d1, l_x0, l_x1, l_y0, l_y1, l_d0, l_d1


@njit
def _rq_inverse_partials(xi, u, w, h, s, d0, d1, one, two):
    """Partials of ``x(y, theta)`` and of ``-L(x(y, theta), theta)`` inside a bin (module
    docstring, "Pullbacks"), with the x-knot ones simplified so that the ``u L_xi / w`` terms,
    which cancel exactly, are never formed (they are ``O(1/w)`` in narrow bins).

    Returns ``(x_y, l_y, x_x0, x_x1, x_y0, x_y1, x_d0, x_d1, l_x0, l_x1, l_y0, l_y1, l_d0, l_d1)``
    with ``l_*`` the partials of the inverse log-det.
    """
    (g, l_x, y_x0, y_x1, y_y0, y_y1, y_d0, y_d1,
     l_x0, l_x1, l_y0, l_y1, l_d0, l_d1) = _rq_partials(xi, u, w, h, s, d0, d1, one, two)
    ig = one / g
    t = xi * u
    m = d1 * xi * xi + two * s * t + d0 * u * u
    q = s + (d0 + d1 - two * s) * t
    rho = t * (d1 * xi * xi - d0 * u * u) / m                  # s^2 R_s / g
    l_xi = l_x * w
    s_ls = two * t * ((d0 + d1) / q + s / m)                   # s L_s
    il_x0 = (l_xi * rho - s_ls) / w
    x_y0 = -y_y0 * ig
    x_y1 = -y_y1 * ig
    x_d0 = -y_d0 * ig
    x_d1 = -y_d1 * ig
    return (ig, -l_x * ig, u - rho, xi + rho, x_y0, x_y1, x_d0, x_d1,
            il_x0, -il_x0, -(l_x * x_y0 + l_y0), -(l_x * x_y1 + l_y1),
            -(l_x * x_d0 + l_d0), -(l_x * x_d1 + l_d1))


@njit
def rqs_forward(x, xk, yk, dk, y, log_det):
    r"""Rational-quadratic spline ``y = f(x)`` and ``log_det = log f'(x)``, elementwise.

    Parameters
    ----------
    x : ndarray of shape (N,)
    xk, yk : ndarray of shape (N, K+1)
        Knot positions and heights per element, strictly increasing along axis 1.
    dk : ndarray of shape (N, K+1)
        Knot derivatives, positive (boundary ones included: they are the tail slopes).
    y, log_det : ndarray of shape (N,)
        Outputs, overwritten.

    Notes
    -----
    In bin ``k`` (``xk[k] <= x < xk[k+1]``, last bin closed)::

        y = y0 + h (s xi^2 + d0 xi (1-xi)) / (s + (d1 + d0 - 2s) xi (1-xi))
        log_det = log[ s^2 (d1 xi^2 + 2 s xi (1-xi) + d0 (1-xi)^2) / (s + (d1+d0-2s) xi(1-xi))^2 ]

    and linear tails ``y = yk[0] + dk[0] (x - xk[0])`` (``log dk[0]``) below ``xk[0]``,
    ``y = yk[K] + dk[K] (x - xk[K])`` (``log dk[K]``) above ``xk[K]``. See the module docstring.
    """
    n_rows = x.shape[0]
    K = xk.shape[1] - 1
    one = xk.dtype.type(1)
    two = one + one
    half = one / two
    for n in range(n_rows):
        v = x[n]
        if v < xk[n, 0]:
            y[n] = yk[n, 0] + dk[n, 0] * (v - xk[n, 0])
            log_det[n] = np.log(dk[n, 0])
        elif v > xk[n, K]:
            y[n] = yk[n, K] + dk[n, K] * (v - xk[n, K])
            log_det[n] = np.log(dk[n, K])
        else:
            k = _bin_index(xk, n, v, K)
            x0 = xk[n, k]
            x1 = xk[n, k + 1]
            w = x1 - x0
            y0 = yk[n, k]
            y1 = yk[n, k + 1]
            h = y1 - y0
            # x0 <= v <= x1 and rounding is monotone, so xi and u land in [0, 1] without a clip;
            # u from x1 - v (not 1 - xi) keeps its relative accuracy near the upper knot
            yv, g = _rq_value((v - x0) / w, (x1 - v) / w, y0, y1, h, h / w,
                              dk[n, k], dk[n, k + 1], two, half)
            y[n] = yv
            log_det[n] = np.log(g)


@njit
def rqs_inverse(y, xk, yk, dk, x, log_det):
    r"""Inverse spline ``x = f^{-1}(y)`` and ``log_det = log (f^{-1})'(y) = -log f'(x)``.

    Parameters
    ----------
    y : ndarray of shape (N,)
    xk, yk, dk : ndarray of shape (N, K+1)
        As in :func:`rqs_forward`.
    x, log_det : ndarray of shape (N,)
        Outputs, overwritten.

    Notes
    -----
    Bin search on ``yk``; in the bin ``xi`` is the root ``2c / (-b - sqrt(b^2 - 4ac))`` of
    ``a xi^2 + b xi + c = 0`` with ``a = h (s - d0) + dy D``, ``b = h d0 - dy D``, ``c = -s dy``
    (``D = d0 + d1 - 2s``, ``dy = clip(y - y0, 0, h)``), evaluated without cancellation through
    ``z = dy/h``, ``e = d0 (1-z) - d1 z``, ``r = sqrt(e^2 + 4 s^2 z (1-z))`` (the discriminant
    over ``h^2``): ``xi = 2sz / (2sz + e + r)`` for ``e >= 0``, ``(r - e) / (r - e + 2s(1-z))``
    otherwise; ``x = x0 + xi w``. Tails: ``x = xk[0] + (y - yk[0]) / dk[0]``, log-det
    ``-log dk[0]`` (likewise at ``K``). See the module docstring.
    """
    n_rows = y.shape[0]
    K = xk.shape[1] - 1
    one = xk.dtype.type(1)
    zero = one - one
    two = one + one
    half = one / two
    for n in range(n_rows):
        v = y[n]
        if v < yk[n, 0]:
            x[n] = xk[n, 0] + (v - yk[n, 0]) / dk[n, 0]
            log_det[n] = -np.log(dk[n, 0])
        elif v > yk[n, K]:
            x[n] = xk[n, K] + (v - yk[n, K]) / dk[n, K]
            log_det[n] = -np.log(dk[n, K])
        else:
            k = _bin_index(yk, n, v, K)
            x0 = xk[n, k]
            x1 = xk[n, k + 1]
            w = x1 - x0
            y0 = yk[n, k]
            y1 = yk[n, k + 1]
            h = y1 - y0
            s = h / w
            d0 = dk[n, k]
            d1 = dk[n, k + 1]
            xi, u = _rq_root(v - y0, y1 - v, h, s, d0, d1, zero)
            if xi <= half:
                x[n] = x0 + xi * w
            else:
                x[n] = x1 - u * w
            log_det[n] = -np.log(_rq_slope(xi, u, s, d0, d1, two))


@njit
def rqs_forward_vjp(x, xk, yk, dk, y_bar, ld_bar, x_bar, xk_bar, yk_bar, dk_bar):
    r"""Pullback of :func:`rqs_forward`: cotangents of ``sum_n y_bar y + ld_bar log_det``.

    Parameters
    ----------
    x : ndarray of shape (N,)
    xk, yk, dk : ndarray of shape (N, K+1)
        As in :func:`rqs_forward`.
    y_bar, ld_bar : ndarray of shape (N,)
        Cotangents of ``y`` and of ``log_det``.
    x_bar : ndarray of shape (N,)
        Output: ``y_bar dy/dx + ld_bar dL/dx``, overwritten.
    xk_bar, yk_bar, dk_bar : ndarray of shape (N, K+1)
        Output: the knot cotangents, overwritten (not accumulated); zero at every knot the
        element does not touch.

    Notes
    -----
    The pass is recomputed (no residuals). ``theta_bar = y_bar dy/dtheta + ld_bar dL/dtheta``
    for the bin's knots ``x0 = xk[k], x1 = xk[k+1], y0, y1, d0, d1``, with (``u = 1 - xi``,
    ``t = xi u``, ``R_s = t (d1 xi^2 - d0 u^2) / Q^2``)::

        dy/dx  = g                          dL/dx  = L_xi / w
        dy/dx0 = -u g + s^2 R_s             dL/dx0 = (s L_s - u L_xi) / w
        dy/dx1 = -xi g - s^2 R_s            dL/dx1 = -(s L_s + xi L_xi) / w
        dy/dy0 = u (s u + d1 xi)/Q - s R_s  dL/dy0 = -L_s / w
        dy/dy1 = xi (s xi + d0 u)/Q + s R_s dL/dy1 = L_s / w
        dy/dd0 = h t u (s u + d1 xi) / Q^2  dL/dd0 = u^2/M - 2t/Q
        dy/dd1 = -h t xi (s xi + d0 u)/Q^2  dL/dd1 = xi^2/M - 2t/Q

    ``L_xi = (2 d1 xi + 2 s (1 - 2xi) - 2 d0 u)/M - 2 D (1 - 2xi)/Q``,
    ``L_s = 2t ((d0 + d1)/(s Q) + 1/M)``. Left tail: ``x_bar = y_bar dk[0]``,
    ``xk_bar[0] = -y_bar dk[0]``, ``yk_bar[0] = y_bar``,
    ``dk_bar[0] = y_bar (x - xk[0]) + ld_bar / dk[0]`` (right tail likewise at ``K``).
    """
    n_rows = x.shape[0]
    K = xk.shape[1] - 1
    one = xk.dtype.type(1)
    zero = one - one
    two = one + one
    for n in range(n_rows):
        v = x[n]
        yb = y_bar[n]
        lb = ld_bar[n]
        if v < xk[n, 0] or v > xk[n, K]:
            j = 0 if v < xk[n, 0] else K
            d = dk[n, j]
            xj = xk[n, j]
            for i in range(K + 1):
                xk_bar[n, i] = zero
                yk_bar[n, i] = zero
                dk_bar[n, i] = zero
            x_bar[n] = yb * d
            xk_bar[n, j] = -yb * d
            yk_bar[n, j] = yb
            dk_bar[n, j] = yb * (v - xj) + lb / d
        else:
            k = _bin_index(xk, n, v, K)
            x0 = xk[n, k]
            x1 = xk[n, k + 1]
            w = x1 - x0
            h = yk[n, k + 1] - yk[n, k]
            (g, l_x, y_x0, y_x1, y_y0, y_y1, y_d0, y_d1,
             l_x0, l_x1, l_y0, l_y1, l_d0, l_d1) = _rq_partials(
                (v - x0) / w, (x1 - v) / w, w, h, h / w, dk[n, k], dk[n, k + 1], one, two)
            for i in range(K + 1):
                xk_bar[n, i] = zero
                yk_bar[n, i] = zero
                dk_bar[n, i] = zero
            x_bar[n] = yb * g + lb * l_x
            xk_bar[n, k] = yb * y_x0 + lb * l_x0
            xk_bar[n, k + 1] = yb * y_x1 + lb * l_x1
            yk_bar[n, k] = yb * y_y0 + lb * l_y0
            yk_bar[n, k + 1] = yb * y_y1 + lb * l_y1
            dk_bar[n, k] = yb * y_d0 + lb * l_d0
            dk_bar[n, k + 1] = yb * y_d1 + lb * l_d1


@njit
def rqs_inverse_vjp(y, xk, yk, dk, x_bar, ld_bar, y_bar, xk_bar, yk_bar, dk_bar):
    r"""Pullback of :func:`rqs_inverse`: cotangents of ``sum_n x_bar x(y) + ld_bar log_det_inv``.

    Parameters
    ----------
    y : ndarray of shape (N,)
    xk, yk, dk : ndarray of shape (N, K+1)
        As in :func:`rqs_forward`.
    x_bar, ld_bar : ndarray of shape (N,)
        Cotangents of ``x = f^{-1}(y)`` and of the inverse log-det ``-log f'(x)``.
    y_bar : ndarray of shape (N,)
        Output, overwritten.
    xk_bar, yk_bar, dk_bar : ndarray of shape (N, K+1)
        Output: the knot cotangents, overwritten (not accumulated); zero at every knot the
        element does not touch.

    Notes
    -----
    Implicit function theorem on ``y = F(x, theta)`` at the recomputed ``x = F^{-1}(y)``:
    ``dx/dy = 1/g``, ``dx/dtheta = -(dy/dtheta)/g``; the inverse log-det is
    ``-L(x(y, theta), theta)``. With ``c = (x_bar - ld_bar dL/dx) / g``::

        y_bar     = c
        theta_bar = -c dy/dtheta - ld_bar dL/dtheta

    using the forward partials of :func:`rqs_forward_vjp` at fixed ``x``. Left tail
    (``x = xk[0] + (y - yk[0]) / dk[0]``): ``y_bar = x_bar / dk[0]``, ``xk_bar[0] = x_bar``,
    ``yk_bar[0] = -x_bar / dk[0]``,
    ``dk_bar[0] = -x_bar (y - yk[0]) / dk[0]^2 - ld_bar / dk[0]`` (right tail likewise at ``K``).
    """
    n_rows = y.shape[0]
    K = xk.shape[1] - 1
    one = xk.dtype.type(1)
    zero = one - one
    two = one + one
    for n in range(n_rows):
        v = y[n]
        xb = x_bar[n]
        lb = ld_bar[n]
        if v < yk[n, 0] or v > yk[n, K]:
            j = 0 if v < yk[n, 0] else K
            d = dk[n, j]
            cb = xb / d
            dx = (v - yk[n, j]) / d                      # x - xk[j]
            for i in range(K + 1):
                xk_bar[n, i] = zero
                yk_bar[n, i] = zero
                dk_bar[n, i] = zero
            y_bar[n] = cb
            xk_bar[n, j] = cb * d                        # -c dy/dx0, dy/dx0 = -d
            yk_bar[n, j] = -cb                           # -c dy/dy0, dy/dy0 = 1
            dk_bar[n, j] = -cb * dx - lb / d             # -c (x - xk) - ld_bar / d
        else:
            k = _bin_index(yk, n, v, K)
            x0 = xk[n, k]
            w = xk[n, k + 1] - x0
            y0 = yk[n, k]
            y1 = yk[n, k + 1]
            h = y1 - y0
            s = h / w
            d0 = dk[n, k]
            d1 = dk[n, k + 1]
            xi, u = _rq_root(v - y0, y1 - v, h, s, d0, d1, zero)
            (x_y, l_y, x_x0, x_x1, x_y0, x_y1, x_d0, x_d1,
             l_x0, l_x1, l_y0, l_y1, l_d0, l_d1) = _rq_inverse_partials(
                xi, u, w, h, s, d0, d1, one, two)
            for i in range(K + 1):
                xk_bar[n, i] = zero
                yk_bar[n, i] = zero
                dk_bar[n, i] = zero
            y_bar[n] = xb * x_y + lb * l_y
            xk_bar[n, k] = xb * x_x0 + lb * l_x0
            xk_bar[n, k + 1] = xb * x_x1 + lb * l_x1
            yk_bar[n, k] = xb * x_y0 + lb * l_y0
            yk_bar[n, k + 1] = xb * x_y1 + lb * l_y1
            dk_bar[n, k] = xb * x_d0 + lb * l_d0
            dk_bar[n, k + 1] = xb * x_d1 + lb * l_d1


# ---------------------------------------------------------------------------------------------
# Fused kernels for the "durkan" parameter map (module docstring, "The durkan kernels"): each
# element's knots are computed from its unconstrained parameters inside the loop, then the bin
# helpers above (the same functions as the knot kernels', so the two agree to the rounding of
# the knots).
# ---------------------------------------------------------------------------------------------


@njit
def _positions(u, K, B, two_b, min_bin, c, zero, one, p, k):
    """Softmax ``p`` of ``u`` and the knots ``k[0..K]``: ``two_b * cumsum(min + c p) + (-B)``
    (nflows' order), ends set to ``-B`` and ``B``."""
    m = u[0]
    for i in range(1, K):
        if u[i] > m:
            m = u[i]
    s = zero
    for i in range(K):
        e = math.exp(u[i] - m)
        p[i] = e
        s += e
    r = one / s  # torch's softmax multiplies by the reciprocal of the sum, too
    for i in range(K):
        p[i] = p[i] * r
    cum = zero
    k[0] = -B
    for i in range(K - 1):
        cum += min_bin + c * p[i]
        k[i + 1] = two_b * cum + (-B)
    k[K] = B


@njit
def _softplus_scalar(u, zero):
    """``log(1 + e^u)`` as numpy's ``logaddexp(0, u)`` evaluates it."""
    if u > zero:
        return u + math.log1p(math.exp(-u))
    return math.log1p(math.exp(u))


@njit
def _sigmoid(u, zero, one):
    if u >= zero:
        return one / (one + math.exp(-u))
    e = math.exp(u)
    return e / (one + e)


@njit
def _derivative(ud, j, K, min_d, zero, one):
    if j == 0 or j == K:
        return one
    return min_d + _softplus_scalar(ud[j - 1], zero)


@njit
def _find_bin(v, knots, K):
    """Largest ``k`` in ``[0, K-1]`` with ``knots[k] <= v`` (the generic kernels' convention)."""
    k = 0
    while k < K - 1 and v >= knots[k + 1]:
        k += 1
    return k


@njit
def _map_pullback(p, K, c, k, kb0, kb1, zero, u_bar):
    """``u_bar = p (g - sum p g)`` for knot cotangents ``kb0`` at knot ``k``, ``kb1`` at ``k+1``.

    ``g_i = c sum_{j=i+1}^{K-1} x_bar_j``, so ``g_i = c (kb0 [k >= 1] + kb1 [k + 1 <= K - 1])``
    for ``i < k``, ``c kb1 [k + 1 <= K - 1]`` for ``i == k`` and 0 beyond.
    """
    g1 = c * kb1 if k + 1 <= K - 1 else zero
    g0 = (c * kb0 if k >= 1 else zero) + g1
    sg = zero
    for i in range(k):
        sg += p[i] * g0
    sg += p[k] * g1
    for i in range(K):
        if i < k:
            u_bar[i] = p[i] * (g0 - sg)
        elif i == k:
            u_bar[i] = p[i] * (g1 - sg)
        else:
            u_bar[i] = p[i] * (zero - sg)


@njit
def _chain_to_params(i, k, K, cw, ch, ud, pw, ph, xk0_bar, xk1_bar, yk0_bar, yk1_bar,
                     d0_bar, d1_bar, zero, one, uw_bar, uh_bar, ud_bar):
    """Knot cotangents of bin ``k`` -> ``uw_bar[i]``, ``uh_bar[i]``, ``ud_bar[i]``."""
    _map_pullback(pw, K, cw, k, xk0_bar, xk1_bar, zero, uw_bar[i])
    _map_pullback(ph, K, ch, k, yk0_bar, yk1_bar, zero, uh_bar[i])
    for j in range(K - 1):
        ud_bar[i, j] = zero
    if k >= 1:
        ud_bar[i, k - 1] = d0_bar * _sigmoid(ud[i, k - 1], zero, one)
    if k + 1 <= K - 1:
        ud_bar[i, k] = d1_bar * _sigmoid(ud[i, k], zero, one)


@njit
def _zero_row(i, K, zero, uw_bar, uh_bar, ud_bar):
    for j in range(K):
        uw_bar[i, j] = zero
        uh_bar[i, j] = zero
    for j in range(K - 1):
        ud_bar[i, j] = zero


@njit
def _setup(uw, bound, min_bin_width, min_bin_height, min_derivative):
    """Constants of the "durkan" map in the arrays' dtype, and per-call scratch (shared by the
    four kernels; the same file, so numba's cache stays consistent).

    Returns ``(one, zero, two, half, B, 2B, m_w, m_h, m_d, 1 - K m_w, 1 - K m_h,
    2B (1 - K m_w), 2B (1 - K m_h), pw, ph, xk, yk)``; ``pw``, ``ph`` (K,) hold a row's bin
    fractions and ``xk``, ``yk`` (K + 1,) its knots.
    """
    K = uw.shape[1]
    dt = uw.dtype.type
    one = dt(1)
    zero = one - one
    two = one + one
    half = one / two
    B = dt(bound)
    two_b = dt(bound - (-bound))
    mw, mh, md = dt(min_bin_width), dt(min_bin_height), dt(min_derivative)
    cw, ch = dt(1.0 - min_bin_width * K), dt(1.0 - min_bin_height * K)
    gw = dt(2.0 * bound * (1.0 - min_bin_width * K))
    gh = dt(2.0 * bound * (1.0 - min_bin_height * K))
    pw = np.empty(K, dtype=uw.dtype)
    ph = np.empty(K, dtype=uw.dtype)
    xk = np.empty(K + 1, dtype=uw.dtype)
    yk = np.empty(K + 1, dtype=uw.dtype)
    return one, zero, two, half, B, two_b, mw, mh, md, cw, ch, gw, gh, pw, ph, xk, yk


@njit
def rqs_durkan_forward_scalar(x, uw, uh, ud, bound, min_bin_width, min_bin_height,
                                 min_derivative, y, log_det):
    """Forward spline with the "durkan" map: ``y = RQS(x)``, ``log_det = log dy/dx``.

    Parameters
    ----------
    x : ndarray of shape (N,)
    uw, uh : ndarray of shape (N, K)
        Unnormalized widths and heights.
    ud : ndarray of shape (N, K - 1)
        Unnormalized inner derivatives.
    bound, min_bin_width, min_bin_height, min_derivative : float
        ``B``, ``m_w``, ``m_h``, ``m_d`` (Python floats; rounded to the arrays' dtype here).
    y, log_det : ndarray of shape (N,)
        Outputs, overwritten. All arrays share one dtype, float32 or float64.
    """
    n, K = uw.shape
    (one, zero, two, half, B, two_b, mw, mh, md, cw, ch, gw, gh,
     pw, ph, xk, yk) = _setup(uw, bound, min_bin_width, min_bin_height, min_derivative)
    for i in range(n):
        v = x[i]
        if v < -B or v > B:
            y[i] = v
            log_det[i] = zero
            continue
        _positions(uw[i], K, B, two_b, mw, cw, zero, one, pw, xk)
        _positions(uh[i], K, B, two_b, mh, ch, zero, one, ph, yk)
        k = _find_bin(v, xk, K)
        x0 = xk[k]
        x1 = xk[k + 1]
        w = x1 - x0
        h = yk[k + 1] - yk[k]
        yv, g = _rq_value((v - x0) / w, (x1 - v) / w, yk[k], yk[k + 1], h, h / w,
                          _derivative(ud[i], k, K, md, zero, one),
                          _derivative(ud[i], k + 1, K, md, zero, one), two, half)
        y[i] = yv
        log_det[i] = np.log(g)


@njit
def rqs_durkan_inverse_scalar(y, uw, uh, ud, bound, min_bin_width, min_bin_height,
                                 min_derivative, x, log_det):
    """Inverse spline with the "durkan" map: ``x = RQS^{-1}(y)``, ``log_det = log dx/dy``.

    Arguments as :func:`rqs_durkan_forward_scalar`, with ``y`` the input and ``x`` written.
    """
    n, K = uw.shape
    (one, zero, two, half, B, two_b, mw, mh, md, cw, ch, gw, gh,
     pw, ph, xk, yk) = _setup(uw, bound, min_bin_width, min_bin_height, min_derivative)
    for i in range(n):
        v = y[i]
        if v < -B or v > B:
            x[i] = v
            log_det[i] = zero
            continue
        _positions(uw[i], K, B, two_b, mw, cw, zero, one, pw, xk)
        _positions(uh[i], K, B, two_b, mh, ch, zero, one, ph, yk)
        k = _find_bin(v, yk, K)
        x0 = xk[k]
        x1 = xk[k + 1]
        w = x1 - x0
        y0 = yk[k]
        y1 = yk[k + 1]
        h = y1 - y0
        s = h / w
        d0 = _derivative(ud[i], k, K, md, zero, one)
        d1 = _derivative(ud[i], k + 1, K, md, zero, one)
        xi, u = _rq_root(v - y0, y1 - v, h, s, d0, d1, zero)
        if xi <= half:
            x[i] = x0 + xi * w
        else:
            x[i] = x1 - u * w
        _, g = _rq_value(xi, u, y0, y1, h, s, d0, d1, two, half)
        log_det[i] = -np.log(g)


@njit
def rqs_durkan_forward_vjp_scalar(x, uw, uh, ud, bound, min_bin_width, min_bin_height,
                                     min_derivative, y_bar, ld_bar, x_bar, uw_bar, uh_bar,
                                     ud_bar):
    """Cotangents of ``sum(y_bar * y + ld_bar * log_det)`` for
    :func:`rqs_durkan_forward_scalar`.

    Writes ``x_bar`` (N,), ``uw_bar``, ``uh_bar`` (N, K) and ``ud_bar`` (N, K - 1), overwritten.
    ``x_bar = y_bar dy/dx + ld_bar dL/dx`` and, for the bin's knots,
    ``theta_bar = y_bar dy/dtheta + ld_bar dL/dtheta`` (:func:`_rq_partials`, as
    :func:`refflow.kernels.splines.rqs_forward_vjp`), then the map's pullback (module
    docstring). In the tails ``x_bar = y_bar`` and the parameter cotangents are 0.
    """
    n, K = uw.shape
    (one, zero, two, half, B, two_b, mw, mh, md, cw, ch, gw, gh,
     pw, ph, xk, yk) = _setup(uw, bound, min_bin_width, min_bin_height, min_derivative)
    for i in range(n):
        v = x[i]
        if v < -B or v > B:
            x_bar[i] = y_bar[i]
            _zero_row(i, K, zero, uw_bar, uh_bar, ud_bar)
            continue
        _positions(uw[i], K, B, two_b, mw, cw, zero, one, pw, xk)
        _positions(uh[i], K, B, two_b, mh, ch, zero, one, ph, yk)
        k = _find_bin(v, xk, K)
        x0 = xk[k]
        x1 = xk[k + 1]
        w = x1 - x0
        h = yk[k + 1] - yk[k]
        (g, l_x, y_x0, y_x1, y_y0, y_y1, y_d0, y_d1,
         l_x0, l_x1, l_y0, l_y1, l_d0, l_d1) = _rq_partials(
            (v - x0) / w, (x1 - v) / w, w, h, h / w,
            _derivative(ud[i], k, K, md, zero, one),
            _derivative(ud[i], k + 1, K, md, zero, one), one, two)
        yb = y_bar[i]
        lb = ld_bar[i]
        x_bar[i] = yb * g + lb * l_x
        _chain_to_params(i, k, K, gw, gh, ud, pw, ph,
                         yb * y_x0 + lb * l_x0, yb * y_x1 + lb * l_x1,
                         yb * y_y0 + lb * l_y0, yb * y_y1 + lb * l_y1,
                         yb * y_d0 + lb * l_d0, yb * y_d1 + lb * l_d1,
                         zero, one, uw_bar, uh_bar, ud_bar)


@njit
def rqs_durkan_inverse_vjp_scalar(y, uw, uh, ud, bound, min_bin_width, min_bin_height,
                                     min_derivative, x_bar, ld_bar, y_bar, uw_bar, uh_bar,
                                     ud_bar):
    """Cotangents of ``sum(x_bar * x + ld_bar * log_det)`` for
    :func:`rqs_durkan_inverse_scalar`.

    Writes ``y_bar`` (N,) and the parameter cotangents, overwritten. At the recomputed root,
    with the partials of ``x(y, theta)`` and of the inverse log-det ``-L(x(y, theta), theta)``
    (implicit-function theorem: ``dx/dy = 1/g``, ``dx/dtheta = -(dy/dtheta)/g``;
    :func:`_rq_inverse_partials`, as :func:`refflow.kernels.splines.rqs_inverse_vjp`),
    ``y_bar = x_bar dx/dy + ld_bar d(-L)/dy`` and ``theta_bar = x_bar dx/dtheta + ld_bar
    d(-L)/dtheta`` for the bin's knots, then the map's pullback. In the tails
    ``y_bar = x_bar`` and the parameter cotangents are 0.
    """
    n, K = uw.shape
    (one, zero, two, half, B, two_b, mw, mh, md, cw, ch, gw, gh,
     pw, ph, xk, yk) = _setup(uw, bound, min_bin_width, min_bin_height, min_derivative)
    for i in range(n):
        v = y[i]
        if v < -B or v > B:
            y_bar[i] = x_bar[i]
            _zero_row(i, K, zero, uw_bar, uh_bar, ud_bar)
            continue
        _positions(uw[i], K, B, two_b, mw, cw, zero, one, pw, xk)
        _positions(uh[i], K, B, two_b, mh, ch, zero, one, ph, yk)
        k = _find_bin(v, yk, K)
        x0 = xk[k]
        w = xk[k + 1] - x0
        y0 = yk[k]
        y1 = yk[k + 1]
        h = y1 - y0
        s = h / w
        d0 = _derivative(ud[i], k, K, md, zero, one)
        d1 = _derivative(ud[i], k + 1, K, md, zero, one)
        xi, u = _rq_root(v - y0, y1 - v, h, s, d0, d1, zero)
        (x_y, l_y, x_x0, x_x1, x_y0, x_y1, x_d0, x_d1,
         l_x0, l_x1, l_y0, l_y1, l_d0, l_d1) = _rq_inverse_partials(xi, u, w, h, s, d0, d1,
                                                                    one, two)
        xb = x_bar[i]
        lb = ld_bar[i]
        y_bar[i] = xb * x_y + lb * l_y
        _chain_to_params(i, k, K, gw, gh, ud, pw, ph,
                         xb * x_x0 + lb * l_x0, xb * x_x1 + lb * l_x1,
                         xb * x_y0 + lb * l_y0, xb * x_y1 + lb * l_y1,
                         xb * x_d0 + lb * l_d0, xb * x_d1 + lb * l_d1,
                         zero, one, uw_bar, uh_bar, ud_bar)


# ---------------------------------------------------------------------------------------------
# The block kernels. The same formulas and the same order of operations as the scalar
# kernels above, except for what bounded them: per element 2K calls of libm's scalar
# ``exp`` and two ``softplus`` (``exp`` + ``log1p``), ~7-10 ns each, about 80% of the time.
# Rows go in blocks of _BLOCK, in phases: (1) ``exp(u - max u)`` of every width and height
# (:func:`_exp_rows`), (2) per row the bin and its four knots (:func:`_search`, :func:`_pair`,
# the scalar kernels' arithmetic, computed only up to the bin), (3) the bin's two derivatives
# ``m_d + softplus`` (and, for the pullbacks, ``sigmoid``) for the whole block
# (:func:`_derivatives`), (4) per row the bin's value / root / partials (the scalar kernels'
# helpers). Phases 1 and 3 are branch-free loops that LLVM vectorises, with their own ``exp``
# (:func:`_exp_le0`) and ``log1p`` (:func:`_log1p_01`), each within 2 ulps of libm's
# (test_spline_speed_paths); everything else is bit-for-bit the scalar kernels' arithmetic, so the
# two differ by round-off amplified by the spline's conditioning only. Fast-math stays off.
# ---------------------------------------------------------------------------------------------

#: Rows per block: the block's scratch (4 K + 10 values per row) stays in the L1 cache.
_BLOCK = 64

if NUMBA_DISABLED:
    def _pow2(n, like):
        """``2**n`` in ``like``'s dtype (plain-Python twin of the intrinsic below)."""
        return type(like)(2.0 ** int(n))

    def _div(a, b):
        """``a / b`` (plain-Python twin of the intrinsic below)."""
        return a / b
else:
    from numba import types as _types
    from numba.extending import intrinsic as _intrinsic

    @_intrinsic
    def _pow2(typingctx, n, like):
        """``2**n`` (``n`` an integer in the dtype's normal exponent range) in ``like``'s float
        type, built from its bits: ``(n + bias) << mantissa_bits`` reinterpreted as a float.
        Exact; an integer add, shift and bitcast, so loops using it vectorise."""
        from llvmlite import ir
        if not isinstance(n, _types.Integer):
            return None
        if like == _types.float64:
            width, bias, shift = 64, 1023, 52
        elif like == _types.float32:
            width, bias, shift = 32, 127, 23
        else:
            return None

        def codegen(context, builder, signature, args):
            ity = ir.IntType(width)
            bits = args[0]
            if bits.type.width > width:
                bits = builder.trunc(bits, ity)
            elif bits.type.width < width:
                bits = builder.sext(bits, ity)
            bits = builder.shl(builder.add(bits, ir.Constant(ity, bias)), ir.Constant(ity, shift))
            return builder.bitcast(bits, context.get_value_type(signature.return_type))

        return like(n, like), codegen

    @_intrinsic
    def _div(typingctx, a, b):
        """IEEE ``a / b`` of two floats of one type, without numba's zero-divisor check (whose
        branch stops LLVM from vectorising a loop). Only for divisors that cannot be zero."""
        if not (isinstance(a, _types.Float) and a == b):
            return None

        def codegen(context, builder, signature, args):
            return builder.fdiv(args[0], args[1])

        return a(a, b), codegen


@njit
def _exp_consts(one):
    """Constants of :func:`_exp_le0` in ``one``'s dtype."""
    dt = type(one)
    is32 = one + dt(1e-10) == one
    lim = dt(-150.0) if is32 else dt(-1000.0)
    return (lim, one / (one + one), dt(1.4426950408889634), dt(0.693145751953125),
            dt(1.4286068203094172e-06), dt(1.0 / 2), dt(1.0 / 6), dt(1.0 / 24), dt(1.0 / 120),
            dt(1.0 / 720), dt(1.0 / 5040), dt(1.0 / 40320), dt(1.0 / 362880),
            dt(1.0 / 3628800), dt(1.0 / 39916800), dt(1.0 / 479001600), dt(1.0 / 6227020800))


@njit
def _exp_le0(x, one, ec):
    """``exp(x)`` for ``x <= 0``, branch-free (so that loops calling it vectorise).

    ``exp(x) = 2^n p(r)``: ``n = floor(x log2(e) + 1/2)``, ``r = (x - n ln2_hi) - n ln2_lo``
    (Cody-Waite: ``ln2_hi`` has 16 significant bits, so ``n ln2_hi`` and the subtraction are
    exact), ``|r| <= ln(2)/2``; ``p`` the Taylor polynomial of degree 13 (truncation 4e-18
    relative), by Estrin's scheme; ``2^n = 2^a 2^(n-a)`` with ``a = n >> 1``, both factors
    normal (``x`` is clamped to -1000, or -150 in float32, where exp has long underflowed to 0),
    so the first product is exact and the second rounds once, gradually into the subnormals.
    Within 1 ulp of libm's exp (test_spline_speed_paths).
    """
    (lim, half, log2e, ln2_hi, ln2_lo, c2, c3, c4, c5, c6, c7, c8, c9, c10, c11, c12,
     c13) = ec
    x = x if x > lim else lim
    nf = np.floor(x * log2e + half)  # (math.floor would return an int64: float64 arithmetic)
    r = (x - nf * ln2_hi) - nf * ln2_lo
    r2 = r * r
    r4 = r2 * r2
    q_hi = ((c6 + r * c7) + r2 * (c8 + r * c9)) + r4 * ((c10 + r * c11) + r2 * (c12 + r * c13))
    q_lo = (c2 + r * c3) + r2 * (c4 + r * c5)
    p = one + (r + r2 * (q_lo + r4 * q_hi))
    n = np.int64(nf)
    a = n >> 1
    return (p * _pow2(a, p)) * _pow2(n - a, p)


@njit
def _log1p_consts(one):
    """Constants of :func:`_log1p_01` in ``one``'s dtype."""
    dt = type(one)
    return (dt(1.4142135623730951), dt(0.693145751953125), dt(1.4286068203094172e-06),
            one / (one + one), dt(1.0 / 3),
            dt(1.0 / 5), dt(1.0 / 7), dt(1.0 / 9), dt(1.0 / 11), dt(1.0 / 13), dt(1.0 / 15),
            dt(1.0 / 17), dt(1.0 / 19), dt(1.0 / 21))


@njit
def _log1p_01(t, zero, one, lc):
    """``log(1 + t)`` for ``0 <= t <= 1``, branch-free.

    ``w = 1 + t`` rounded and its exact rounding error ``c = t - (w - 1)`` (``|t| <= 1``);
    ``w = 2^j m`` with ``j = [w > sqrt 2]`` (halving is exact), ``m`` in ``[1/sqrt 2, sqrt 2]``;
    ``log m = 2 atanh(f) = s + s f^2 (1/3 + f^2/5 + ... + f^18/21)``, ``f = (m - 1)/(m + 1)``
    (``m - 1`` exact), ``s = 2f``, ``f^2 <= 0.0295`` (truncation 2.4e-17 relative); then
    ``log1p(t) = j ln2_hi + (log m + (c/w + j ln2_lo))`` (``c/w``: the first-order correction
    for the rounding of ``w``; ``ln2`` split as in :func:`_exp_le0`, so that its rounding does
    not add an ulp to results near 0.35). Within 2 ulps of the exact value
    (test_spline_speed_paths).
    """
    (sqrt2, ln2_hi, ln2_lo, half, c3, c5, c7, c9, c11, c13, c15, c17, c19, c21) = lc
    w = one + t
    c = t - (w - one)
    m = w * half if w > sqrt2 else w
    j_hi = ln2_hi if w > sqrt2 else zero  # (no bool variable: numba's i1 <-> i8 stops vectorising)
    j_lo = ln2_lo if w > sqrt2 else zero
    f = _div(m - one, m + one)
    s = f + f
    f2 = f * f
    f4 = f2 * f2
    f8 = f4 * f4
    q = (((c3 + f2 * c5) + f4 * (c7 + f2 * c9)) + f8 * ((c11 + f2 * c13) + f4 * (c15 + f2 * c17))
         + (f8 * f8) * (c19 + f2 * c21))
    lm = s + s * (f2 * q)
    return j_hi + (lm + (_div(c, w) + j_lo))


@njit
def _derivatives(ua, ub, nb, md, zero, one, ec, lc, da, db, sa, sb, with_sigmoid):
    """``da = md + softplus(ua)``, ``db = md + softplus(ub)`` for the first ``nb`` entries (and
    ``sa = sigmoid(ua)``, ``sb = sigmoid(ub)`` when ``with_sigmoid``).

    ``softplus(u) = max(u, 0) + log1p(e^-|u|)`` (the scalar kernels' ``u + log1p(e^-u)`` for
    ``u > 0``, ``log1p(e^u)`` otherwise), ``sigmoid(u) = 1/(1 + e^-u)`` for ``u >= 0``, else
    ``e^u/(1 + e^u)`` (the scalar kernels' two branches), with ``e^-|u|`` by :func:`_exp_le0` and
    ``log1p`` by :func:`_log1p_01`.
    """
    for b in range(nb):
        u = ua[b]
        t = _exp_le0(-abs(u), one, ec)
        lp = _log1p_01(t, zero, one, lc)
        da[b] = md + ((u + lp) if u > zero else lp)
        u = ub[b]
        t = _exp_le0(-abs(u), one, ec)
        lp = _log1p_01(t, zero, one, lc)
        db[b] = md + ((u + lp) if u > zero else lp)
    if with_sigmoid:
        for b in range(nb):
            u = ua[b]
            t = _exp_le0(-abs(u), one, ec)
            sa[b] = _div(one if u >= zero else t, one + t)
            u = ub[b]
            t = _exp_le0(-abs(u), one, ec)
            sb[b] = _div(one if u >= zero else t, one + t)


@njit
def _block_scratch(uw):
    """Per-call scratch of the fast kernels, for one block of rows (~23 KB at K = 8, float64:
    it stays in the L1 cache). Per-row quantities are stored across the block (``[j, b]``) so
    that the loops over ``b`` vectorise: ``pw``, ``ph`` ``(K, _BLOCK)`` the bin fractions
    (softmax), ``kw``, ``kh`` ``(K + 1, _BLOCK)`` the knots, ``rows`` ``(8, _BLOCK)`` row
    maxima, reciprocal sums, derivative inputs and outputs, sigmoids; ``kk`` the bins."""
    K = uw.shape[1]
    dt = uw.dtype
    return (np.empty((K, _BLOCK), dtype=dt), np.empty((K, _BLOCK), dtype=dt),
            np.empty((K + 1, _BLOCK), dtype=dt), np.empty((K + 1, _BLOCK), dtype=dt),
            np.empty((8, _BLOCK), dtype=dt), np.empty(_BLOCK, dtype=np.int64))


@njit
def _knots_block(u, i0, nb, B, two_b, min_bin, c, zero, one, ec, m, r, pt, kt):
    """Phase 1 for one parameter array: rows ``i0 .. i0 + nb - 1`` -> fractions
    ``pt[j, b] = softmax(u[i0 + b])_j`` and knots ``kt[0..K, b]``, with the scalar kernels'
    operations in its order (:func:`_positions`: ``e = exp(u - max u)``, ``p = e * (1 / sum
    e)``, ``cum += min + c p``, ``knot = two_b * cum + (-B)``, ends ``-B``, ``B``); only the
    ``exp`` is :func:`_exp_le0`'s. ``m``, ``r`` are scratch rows."""
    K = u.shape[1]
    for b in range(nb):
        mm = u[i0 + b, 0]
        for j in range(1, K):
            v = u[i0 + b, j]
            mm = v if v > mm else mm
        for j in range(K):
            pt[j, b] = u[i0 + b, j] - mm
    for j in range(K):
        for b in range(nb):  # contiguous in b: vectorised
            pt[j, b] = _exp_le0(pt[j, b], one, ec)
    for b in range(nb):
        r[b] = zero
    for j in range(K):
        for b in range(nb):
            r[b] += pt[j, b]
    for b in range(nb):
        r[b] = _div(one, r[b])  # the sum is >= 1: the largest entry's exp is exactly 1
    for j in range(K):
        for b in range(nb):
            pt[j, b] = pt[j, b] * r[b]
    for b in range(nb):
        kt[0, b] = -B
        m[b] = zero
    for j in range(K - 1):
        for b in range(nb):
            m[b] += min_bin + c * pt[j, b]
            kt[j + 1, b] = two_b * m[b] + (-B)
    for b in range(nb):
        kt[K, b] = B


@njit
def _fast_block(v_in, uw, uh, ud, i0, nb, inverse, with_sigmoid, B, two_b, mw, mh, md, cw, ch,
                zero, one, ec, lc, pw, ph, kw, kh, rows, kk):
    """Phases 1-3 for rows ``i0 .. i0 + nb - 1``: the fractions and knots of both arrays
    (:func:`_knots_block`), the bins ``kk[b]`` (-1 in the tails), the bin's derivatives
    ``d_k, d_{k+1}`` in ``rows[4], rows[5]`` (their sigmoids in ``rows[6], rows[7]``).

    The bin is the number of inner knots ``<= v``: the knots are non-decreasing (rounding is
    monotone), so this is :func:`_find_bin`'s scan (largest ``k <= K - 1`` with
    ``knot_k <= v``), without its unpredictable branches.
    """
    K = uw.shape[1]
    _knots_block(uw, i0, nb, B, two_b, mw, cw, zero, one, ec, rows[0], rows[1], pw, kw)
    _knots_block(uh, i0, nb, B, two_b, mh, ch, zero, one, ec, rows[0], rows[1], ph, kh)
    kt = kh if inverse else kw
    for b in range(nb):
        kk[b] = 0
    for j in range(1, K):
        for b in range(nb):
            kk[b] += 1 if v_in[i0 + b] >= kt[j, b] else 0
    for b in range(nb):
        v = v_in[i0 + b]
        k = kk[b]
        if v < -B or v > B:
            kk[b] = -1
            k = 0
        rows[2, b] = ud[i0 + b, k - 1] if k >= 1 else zero
        rows[3, b] = ud[i0 + b, k] if k + 1 <= K - 1 else zero
    _derivatives(rows[2], rows[3], nb, md, zero, one, ec, lc, rows[4], rows[5], rows[6],
                 rows[7], with_sigmoid)
    for b in range(nb):
        if kk[b] == 0:
            rows[4, b] = one
        if kk[b] == K - 1:
            rows[5, b] = one


@njit
def _chain_fast(i, k, K, cw, ch, pw, ph, sa, sb, xk0_bar, xk1_bar, yk0_bar, yk1_bar,
                d0_bar, d1_bar, zero, uw_bar, uh_bar, ud_bar):
    """:func:`_chain_to_params` with the sigmoids of the bin's derivatives precomputed."""
    _map_pullback(pw, K, cw, k, xk0_bar, xk1_bar, zero, uw_bar[i])
    _map_pullback(ph, K, ch, k, yk0_bar, yk1_bar, zero, uh_bar[i])
    for j in range(K - 1):
        ud_bar[i, j] = zero
    if k >= 1:
        ud_bar[i, k - 1] = d0_bar * sa
    if k + 1 <= K - 1:
        ud_bar[i, k] = d1_bar * sb


@njit
def rqs_durkan_forward(x, uw, uh, ud, bound, min_bin_width, min_bin_height, min_derivative,
                       y, log_det):
    """Forward spline with the "durkan" map: ``y = RQS(x)``, ``log_det = log dy/dx``.

    Parameters
    ----------
    x : ndarray of shape (N,)
    uw, uh : ndarray of shape (N, K)
        Unnormalized widths and heights.
    ud : ndarray of shape (N, K - 1)
        Unnormalized inner derivatives.
    bound, min_bin_width, min_bin_height, min_derivative : float
        ``B``, ``m_w``, ``m_h``, ``m_d`` (Python floats; rounded to the arrays' dtype here).
    y, log_det : ndarray of shape (N,)
        Outputs, overwritten. All arrays share one dtype, float32 or float64.

    Notes
    -----
    :func:`rqs_durkan_forward_scalar` computed block-wise with vectorised ``exp`` and
    ``softplus`` (see the comment above :data:`_BLOCK`); agrees with it to round-off.
    """
    n, K = uw.shape
    (one, zero, two, half, B, two_b, mw, mh, md, cw, ch, gw, gh,
     _, _, _, _) = _setup(uw, bound, min_bin_width, min_bin_height, min_derivative)
    pw, ph, kw, kh, rows, kk = _block_scratch(uw)
    ec = _exp_consts(one)
    lc = _log1p_consts(one)
    for i0 in range(0, n, _BLOCK):
        nb = min(_BLOCK, n - i0)
        _fast_block(x, uw, uh, ud, i0, nb, False, False, B, two_b, mw, mh, md, cw, ch,
                    zero, one, ec, lc, pw, ph, kw, kh, rows, kk)
        for b in range(nb):
            i = i0 + b
            k = kk[b]
            if k < 0:
                y[i] = x[i]
                log_det[i] = zero
                continue
            v = x[i]
            x0 = kw[k, b]
            x1 = kw[k + 1, b]
            y0 = kh[k, b]
            y1 = kh[k + 1, b]
            w = x1 - x0
            h = y1 - y0
            yv, g = _rq_value((v - x0) / w, (x1 - v) / w, y0, y1, h, h / w,
                              rows[4, b], rows[5, b], two, half)
            y[i] = yv
            log_det[i] = np.log(g)


@njit
def rqs_durkan_inverse(y, uw, uh, ud, bound, min_bin_width, min_bin_height, min_derivative,
                       x, log_det):
    """Inverse spline with the "durkan" map: ``x = RQS^{-1}(y)``, ``log_det = log dx/dy``.

    Arguments as :func:`rqs_durkan_forward`, with ``y`` the input and ``x`` written;
    :func:`rqs_durkan_inverse_scalar` computed block-wise (see :func:`rqs_durkan_forward`).
    """
    n, K = uw.shape
    (one, zero, two, half, B, two_b, mw, mh, md, cw, ch, gw, gh,
     _, _, _, _) = _setup(uw, bound, min_bin_width, min_bin_height, min_derivative)
    pw, ph, kw, kh, rows, kk = _block_scratch(uw)
    ec = _exp_consts(one)
    lc = _log1p_consts(one)
    for i0 in range(0, n, _BLOCK):
        nb = min(_BLOCK, n - i0)
        _fast_block(y, uw, uh, ud, i0, nb, True, False, B, two_b, mw, mh, md, cw, ch,
                    zero, one, ec, lc, pw, ph, kw, kh, rows, kk)
        for b in range(nb):
            i = i0 + b
            k = kk[b]
            if k < 0:
                x[i] = y[i]
                log_det[i] = zero
                continue
            v = y[i]
            x0 = kw[k, b]
            x1 = kw[k + 1, b]
            y0 = kh[k, b]
            y1 = kh[k + 1, b]
            w = x1 - x0
            h = y1 - y0
            s = h / w
            d0 = rows[4, b]
            d1 = rows[5, b]
            xi, u = _rq_root(v - y0, y1 - v, h, s, d0, d1, zero)
            if xi <= half:
                x[i] = x0 + xi * w
            else:
                x[i] = x1 - u * w
            _, g = _rq_value(xi, u, y0, y1, h, s, d0, d1, two, half)
            log_det[i] = -np.log(g)


@njit
def rqs_durkan_forward_vjp(x, uw, uh, ud, bound, min_bin_width, min_bin_height, min_derivative,
                           y_bar, ld_bar, x_bar, uw_bar, uh_bar, ud_bar):
    """Cotangents of ``sum(y_bar * y + ld_bar * log_det)`` for :func:`rqs_durkan_forward`.

    Writes ``x_bar`` (N,), ``uw_bar``, ``uh_bar`` (N, K) and ``ud_bar`` (N, K - 1), overwritten.
    :func:`rqs_durkan_forward_vjp_scalar` (formulas there) computed block-wise (see
    :func:`rqs_durkan_forward`). In the tails ``x_bar = y_bar`` and the parameter cotangents
    are 0.
    """
    n, K = uw.shape
    (one, zero, two, half, B, two_b, mw, mh, md, cw, ch, gw, gh,
     prw, prh, _, _) = _setup(uw, bound, min_bin_width, min_bin_height, min_derivative)
    pw, ph, kw, kh, rows, kk = _block_scratch(uw)
    ec = _exp_consts(one)
    lc = _log1p_consts(one)
    for i0 in range(0, n, _BLOCK):
        nb = min(_BLOCK, n - i0)
        _fast_block(x, uw, uh, ud, i0, nb, False, True, B, two_b, mw, mh, md, cw, ch,
                    zero, one, ec, lc, pw, ph, kw, kh, rows, kk)
        for b in range(nb):
            i = i0 + b
            k = kk[b]
            if k < 0:
                x_bar[i] = y_bar[i]
                _zero_row(i, K, zero, uw_bar, uh_bar, ud_bar)
                continue
            v = x[i]
            for j in range(K):
                prw[j] = pw[j, b]
                prh[j] = ph[j, b]
            x0 = kw[k, b]
            x1 = kw[k + 1, b]
            w = x1 - x0
            h = kh[k + 1, b] - kh[k, b]
            (g, l_x, y_x0, y_x1, y_y0, y_y1, y_d0, y_d1,
             l_x0, l_x1, l_y0, l_y1, l_d0, l_d1) = _rq_partials(
                (v - x0) / w, (x1 - v) / w, w, h, h / w, rows[4, b], rows[5, b], one, two)
            yb = y_bar[i]
            lb = ld_bar[i]
            x_bar[i] = yb * g + lb * l_x
            _chain_fast(i, k, K, gw, gh, prw, prh, rows[6, b], rows[7, b],
                        yb * y_x0 + lb * l_x0, yb * y_x1 + lb * l_x1,
                        yb * y_y0 + lb * l_y0, yb * y_y1 + lb * l_y1,
                        yb * y_d0 + lb * l_d0, yb * y_d1 + lb * l_d1,
                        zero, uw_bar, uh_bar, ud_bar)


@njit
def rqs_durkan_inverse_vjp(y, uw, uh, ud, bound, min_bin_width, min_bin_height, min_derivative,
                           x_bar, ld_bar, y_bar, uw_bar, uh_bar, ud_bar):
    """Cotangents of ``sum(x_bar * x + ld_bar * log_det)`` for :func:`rqs_durkan_inverse`.

    Writes ``y_bar`` (N,) and the parameter cotangents, overwritten.
    :func:`rqs_durkan_inverse_vjp_scalar` (formulas there) computed block-wise (see
    :func:`rqs_durkan_forward`). In the tails ``y_bar = x_bar`` and the parameter cotangents
    are 0.
    """
    n, K = uw.shape
    (one, zero, two, half, B, two_b, mw, mh, md, cw, ch, gw, gh,
     prw, prh, _, _) = _setup(uw, bound, min_bin_width, min_bin_height, min_derivative)
    pw, ph, kw, kh, rows, kk = _block_scratch(uw)
    ec = _exp_consts(one)
    lc = _log1p_consts(one)
    for i0 in range(0, n, _BLOCK):
        nb = min(_BLOCK, n - i0)
        _fast_block(y, uw, uh, ud, i0, nb, True, True, B, two_b, mw, mh, md, cw, ch,
                    zero, one, ec, lc, pw, ph, kw, kh, rows, kk)
        for b in range(nb):
            i = i0 + b
            k = kk[b]
            if k < 0:
                y_bar[i] = x_bar[i]
                _zero_row(i, K, zero, uw_bar, uh_bar, ud_bar)
                continue
            v = y[i]
            for j in range(K):
                prw[j] = pw[j, b]
                prh[j] = ph[j, b]
            x0 = kw[k, b]
            y0 = kh[k, b]
            y1 = kh[k + 1, b]
            w = kw[k + 1, b] - x0
            h = y1 - y0
            s = h / w
            d0 = rows[4, b]
            d1 = rows[5, b]
            xi, u = _rq_root(v - y0, y1 - v, h, s, d0, d1, zero)
            (x_y, l_y, x_x0, x_x1, x_y0, x_y1, x_d0, x_d1,
             l_x0, l_x1, l_y0, l_y1, l_d0, l_d1) = _rq_inverse_partials(xi, u, w, h, s, d0, d1,
                                                                        one, two)
            xb = x_bar[i]
            lb = ld_bar[i]
            y_bar[i] = xb * x_y + lb * l_y
            _chain_fast(i, k, K, gw, gh, prw, prh, rows[6, b], rows[7, b],
                        xb * x_x0 + lb * l_x0, xb * x_x1 + lb * l_x1,
                        xb * x_y0 + lb * l_y0, xb * x_y1 + lb * l_y1,
                        xb * x_d0 + lb * l_d0, xb * x_d1 + lb * l_d1,
                        zero, uw_bar, uh_bar, ud_bar)


# ---------------------------------------------------------------------------------------------
# NumPy twins: vectorised, written from the formulas, independent of the kernels above.
# Bin quantities are computed for every element (tail elements with a clipped, harmless xi) and
# the tails are then selected with np.where, so nothing here divides by zero or takes the log
# of a non-positive number even in the unused branch.
# ---------------------------------------------------------------------------------------------


def _twin_locate(knots, v):
    """Batched ``searchsorted(knots[n], v[n], side="right") - 1`` restricted to ``0..K-1``, and
    the masks of the left and right tails."""
    K = knots.shape[1] - 1
    k = np.count_nonzero(knots[:, 1:K] <= v[:, None], axis=1)
    return k, v < knots[:, 0], v > knots[:, K]


def _twin_gather(xk, yk, dk, k):
    rows = np.arange(k.shape[0])
    return (xk[rows, k], xk[rows, k + 1], yk[rows, k], yk[rows, k + 1],
            dk[rows, k], dk[rows, k + 1])


def _twin_elementary(xi, u, s, d0, d1):
    """``Q, M, R, 1 - R, g`` and the partials of ``R`` and ``L = log g`` w.r.t.
    ``(xi, s, d0, d1)`` at fixed others (module docstring); ``u = 1 - xi``."""
    t = xi * u
    D = d0 + d1 - 2 * s
    Q = s + D * t
    M = d1 * xi**2 + 2 * s * t + d0 * u**2
    return dict(
        Q=Q, M=M,
        R=xi * (s * xi + d0 * u) / Q,
        one_minus_R=u * (s * u + d1 * xi) / Q,
        g=(s / Q) ** 2 * M,
        R_xi=s * M / Q**2,
        R_s=t * (d1 * xi**2 - d0 * u**2) / Q**2,
        R_d0=t * u * (s * u + d1 * xi) / Q**2,
        R_d1=-t * xi * (s * xi + d0 * u) / Q**2,
        L_xi=(2 * d1 * xi + 2 * s * (u - xi) - 2 * d0 * u) / M - 2 * D * (u - xi) / Q,
        L_s=2 * t * ((d0 + d1) / (s * Q) + 1 / M),
        L_d0=u**2 / M - 2 * t / Q,
        L_d1=xi**2 / M - 2 * t / Q,
    )


def _twin_chain(xi, u, w, h, s, e):
    """Partials of ``y`` and ``L`` w.r.t. ``x, x0, x1, y0, y1, d0, d1`` by the chain rule
    through ``xi = (x - x0)/w``, ``w = x1 - x0``, ``s = h/w``, ``h = y1 - y0``."""
    dxi = {"x": 1 / w, "x0": -u / w, "x1": -xi / w}
    ds = {"x0": s / w, "x1": -s / w, "y0": -1 / w, "y1": 1 / w}
    p = {}
    # y = y0 + h R
    p["y_x"] = h * e["R_xi"] * dxi["x"]
    p["y_x0"] = h * (e["R_xi"] * dxi["x0"] + e["R_s"] * ds["x0"])
    p["y_x1"] = h * (e["R_xi"] * dxi["x1"] + e["R_s"] * ds["x1"])
    p["y_y0"] = e["one_minus_R"] + h * e["R_s"] * ds["y0"]      # 1 - R + h R_s ds/dy0
    p["y_y1"] = e["R"] + h * e["R_s"] * ds["y1"]
    p["y_d0"] = h * e["R_d0"]
    p["y_d1"] = h * e["R_d1"]
    p["L_x"] = e["L_xi"] * dxi["x"]
    p["L_x0"] = e["L_xi"] * dxi["x0"] + e["L_s"] * ds["x0"]
    p["L_x1"] = e["L_xi"] * dxi["x1"] + e["L_s"] * ds["x1"]
    p["L_y0"] = e["L_s"] * ds["y0"]
    p["L_y1"] = e["L_s"] * ds["y1"]
    p["L_d0"] = e["L_d0"]
    p["L_d1"] = e["L_d1"]
    return p


def _twin_root(y, y0, y1, s, d0, d1):
    """``(xi, 1 - xi)``: the stable root ``xi = 2c / (-b - sqrt(b^2 - 4ac))`` with
    ``z = (y - y0)/h``, ``b/h = e + 2 s z``, ``c/h = -s z``, ``e = d0 (1-z) - d1 z``,
    ``(b^2 - 4ac)/h^2 = e^2 + 4 s^2 z (1-z)``; for ``e < 0`` multiplied through by ``r - e``."""
    h = y1 - y0
    z = np.clip(y - y0, 0, h) / h
    zc = np.clip(y1 - y, 0, h) / h
    e = d0 * zc - d1 * z
    r = np.sqrt(e**2 + (2 * s) ** 2 * (z * zc))
    neg = e < 0
    p = np.where(neg, r - e, 2 * s * z)
    q = np.where(neg, 2 * s * zc, e + r)
    return p / (p + q), q / (p + q)


def _twin_tail_partials(v, xk, yk, dk, left, right, p):
    """Overwrite the bin partials of the tail elements: the tail touches only the end knot,
    stored in the ``0`` slot (left tail, bin 0) or the ``1`` slot (right tail, bin K-1)."""
    K = xk.shape[1] - 1
    for mask, j, side, other in ((left, 0, "0", "1"), (right, K, "1", "0")):
        d = dk[:, j]
        p["y_x"] = np.where(mask, d, p["y_x"])
        p["L_x"] = np.where(mask, 0, p["L_x"])
        p["y_x" + side] = np.where(mask, -d, p["y_x" + side])
        p["y_y" + side] = np.where(mask, 1, p["y_y" + side])
        p["y_d" + side] = np.where(mask, v - xk[:, j], p["y_d" + side])
        p["L_d" + side] = np.where(mask, 1 / d, p["L_d" + side])
        for name in ("L_x", "L_y"):
            p[name + side] = np.where(mask, 0, p[name + side])
        for name in ("y_x", "y_y", "y_d", "L_x", "L_y", "L_d"):
            p[name + other] = np.where(mask, 0, p[name + other])
    return p


def _twin_scatter(k, lo, hi, out):
    rows = np.arange(k.shape[0])
    out[...] = 0
    out[rows, k] = lo
    out[rows, k + 1] = hi


def _twin_bin(x, xk, yk, dk, k):
    """Gathered bin quantities and ``(xi, 1 - xi)`` for a forward input ``x`` (clipped into the
    bin, so tail elements give finite, unused values)."""
    x0, x1, y0, y1, d0, d1 = _twin_gather(xk, yk, dk, k)
    w, h = x1 - x0, y1 - y0
    xi = np.clip((x - x0) / w, 0, 1)
    u = np.clip((x1 - x) / w, 0, 1)
    return x0, x1, y0, y1, d0, d1, w, h, h / w, xi, u


def rqs_forward_numpy(x, xk, yk, dk, y, log_det):
    """NumPy twin of :func:`rqs_forward` (same signature; writes ``y`` and ``log_det``)."""
    K = xk.shape[1] - 1
    k, left, right = _twin_locate(xk, x)
    x0, x1, y0, y1, d0, d1, w, h, s, xi, u = _twin_bin(x, xk, yk, dk, k)
    e = _twin_elementary(xi, u, s, d0, d1)
    inside = np.where(xi <= 0.5, y0 + h * e["R"], y1 - h * e["one_minus_R"])
    y[...] = np.where(left, yk[:, 0] + dk[:, 0] * (x - xk[:, 0]),
                      np.where(right, yk[:, K] + dk[:, K] * (x - xk[:, K]), inside))
    log_det[...] = np.log(np.where(left, dk[:, 0], np.where(right, dk[:, K], e["g"])))


def rqs_inverse_numpy(y, xk, yk, dk, x, log_det):
    """NumPy twin of :func:`rqs_inverse` (same signature; writes ``x`` and ``log_det``)."""
    K = xk.shape[1] - 1
    k, left, right = _twin_locate(yk, y)
    x0, x1, y0, y1, d0, d1 = _twin_gather(xk, yk, dk, k)
    w = x1 - x0
    s = (y1 - y0) / w
    xi, u = _twin_root(y, y0, y1, s, d0, d1)
    inside = np.where(xi <= 0.5, x0 + xi * w, x1 - u * w)
    x[...] = np.where(left, xk[:, 0] + (y - yk[:, 0]) / dk[:, 0],
                      np.where(right, xk[:, K] + (y - yk[:, K]) / dk[:, K], inside))
    g = _twin_elementary(xi, u, s, d0, d1)["g"]
    log_det[...] = -np.log(np.where(left, dk[:, 0], np.where(right, dk[:, K], g)))


def rqs_forward_vjp_numpy(x, xk, yk, dk, y_bar, ld_bar, x_bar, xk_bar, yk_bar, dk_bar):
    """NumPy twin of :func:`rqs_forward_vjp` (same signature; writes the cotangents)."""
    k, left, right = _twin_locate(xk, x)
    x0, x1, y0, y1, d0, d1, w, h, s, xi, u = _twin_bin(x, xk, yk, dk, k)
    p = _twin_chain(xi, u, w, h, s, _twin_elementary(xi, u, s, d0, d1))
    p = _twin_tail_partials(x, xk, yk, dk, left, right, p)
    x_bar[...] = y_bar * p["y_x"] + ld_bar * p["L_x"]
    for name, out in (("x", xk_bar), ("y", yk_bar), ("d", dk_bar)):
        lo = y_bar * p[f"y_{name}0"] + ld_bar * p[f"L_{name}0"]
        hi = y_bar * p[f"y_{name}1"] + ld_bar * p[f"L_{name}1"]
        _twin_scatter(k, lo, hi, out)


def rqs_inverse_vjp_numpy(y, xk, yk, dk, x_bar, ld_bar, y_bar, xk_bar, yk_bar, dk_bar):
    """NumPy twin of :func:`rqs_inverse_vjp` (same signature; writes the cotangents).

    Derived along a different path from the kernel's: implicit differentiation in the bin's own
    coordinates. ``xi = Xi(z, s, d0, d1)`` solves ``R(xi, s, d0, d1) = z`` with
    ``z = (y - y0)/h``, so ``Xi_z = 1/R_xi`` and ``Xi_v = -R_v/R_xi`` (``v = s, d0, d1``); then
    ``x = x0 + w Xi`` and the inverse log-det ``-L(Xi, s, d0, d1)`` are chained through
    ``z``, ``s = h/w``, ``w = x1 - x0``, ``h = y1 - y0``.
    """
    K = xk.shape[1] - 1
    k, left, right = _twin_locate(yk, y)
    x0, x1, y0, y1, d0, d1 = _twin_gather(xk, yk, dk, k)
    w, h = x1 - x0, y1 - y0
    s = h / w
    xi, u = _twin_root(y, y0, y1, s, d0, d1)
    z, zc = np.clip(y - y0, 0, h) / h, np.clip(y1 - y, 0, h) / h
    e = _twin_elementary(xi, u, s, d0, d1)
    Xi = {"z": 1 / e["R_xi"]}
    for v in ("s", "d0", "d1"):
        Xi[v] = -e["R_" + v] / e["R_xi"]
    # total partials of the inverse log-det -L(Xi(z, s, d0, d1), s, d0, d1)
    ldi = {"z": -e["L_xi"] * Xi["z"]}
    for v in ("s", "d0", "d1"):
        ldi[v] = -(e["L_xi"] * Xi[v] + e["L_" + v])
    dz = {"y": 1 / h, "y0": -zc / h, "y1": -z / h}
    ds = {"x0": s / w, "x1": -s / w, "y0": -1 / w, "y1": 1 / w}
    dx = {  # x = x0 + w Xi
        "y": w * Xi["z"] * dz["y"],
        "x0": u + w * Xi["s"] * ds["x0"],
        "x1": xi + w * Xi["s"] * ds["x1"],
        "y0": w * (Xi["z"] * dz["y0"] + Xi["s"] * ds["y0"]),
        "y1": w * (Xi["z"] * dz["y1"] + Xi["s"] * ds["y1"]),
        "d0": w * Xi["d0"],
        "d1": w * Xi["d1"],
    }
    dl = {
        "y": ldi["z"] * dz["y"],
        "x0": ldi["s"] * ds["x0"],
        "x1": ldi["s"] * ds["x1"],
        "y0": ldi["z"] * dz["y0"] + ldi["s"] * ds["y0"],
        "y1": ldi["z"] * dz["y1"] + ldi["s"] * ds["y1"],
        "d0": ldi["d0"],
        "d1": ldi["d1"],
    }
    # tails: x = xk[j] + (y - yk[j]) / dk[j], inverse log-det -log dk[j]; slot "0" for the left
    # tail (bin 0), slot "1" for the right one (bin K-1)
    for mask, j, side, other in ((left, 0, "0", "1"), (right, K, "1", "0")):
        d = dk[:, j]
        tail_dx = {"y": 1 / d, "x" + side: 1, "y" + side: -1 / d,
                   "d" + side: -(y - yk[:, j]) / d**2}
        tail_dl = {"d" + side: -1 / d}
        for key in dx:
            dx[key] = np.where(mask, tail_dx.get(key, 0), dx[key])
            dl[key] = np.where(mask, tail_dl.get(key, 0), dl[key])
    y_bar[...] = x_bar * dx["y"] + ld_bar * dl["y"]
    for name, out in (("x", xk_bar), ("y", yk_bar), ("d", dk_bar)):
        lo = x_bar * dx[name + "0"] + ld_bar * dl[name + "0"]
        hi = x_bar * dx[name + "1"] + ld_bar * dl[name + "1"]
        _twin_scatter(k, lo, hi, out)
