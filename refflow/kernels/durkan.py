r"""Fused kernels for the rational-quadratic spline with the "durkan" parameter map.

These compute, per element, the knots from the unconstrained parameters (Durkan et al. 2019;
nflows' ``unconstrained_rational_quadratic_spline`` with ``tails="linear"``) and the spline in
the same loop, with ``K``-sized scratch arrays allocated once per call, so the ``(N, K + 1)``
knot arrays of the generic path (``refflow.bijectors.spline_maps`` "durkan" followed by
:mod:`refflow.kernels.splines`) are never written. Inside a bin they use the generic kernels'
formulas (value, stable root, partial derivatives), so the two paths differ only by rounding:
NumPy's SIMD ``exp`` and pairwise sums make the map's knots differ from these by an ulp or so,
which the spline amplifies by its conditioning.

Per element, with ``K`` bins on ``[-B, B]``::

    p = softmax(u_w),  w_i = m_w + (1 - K m_w) p_i,  x_j = 2B (w_0 + ... + w_{j-1}) - B,
    x_0 = -B,  x_K = B         (heights y_j alike with u_h, m_h)
    d_0 = d_K = 1,  d_j = m_d + softplus(u_d[j-1])   (j = 1..K-1)

and in the bin ``k`` with ``x_k <= x < x_{k+1}`` (the last bin includes ``B``), the spline of
:mod:`refflow.kernels.splines` (``y``, ``log_det = log dy/dx``; the inverse by the stable root,
``log_det = -log dy/dx`` at the root). Outside ``[-B, B]`` the map is exactly the identity with
log-det 0 (the knots are not even computed there).

Pullbacks (cotangents ``y_bar``, ``ld_bar``): the partials of :func:`_bin_partials` give the
cotangents of ``x`` and of the bin's knots ``x_k, x_{k+1}, y_k, y_{k+1}, d_k, d_{k+1}``
(forward: ``theta_bar = y_bar dy/dtheta + ld_bar dL/dtheta``; inverse, by the
implicit-function theorem on ``y = F(x, theta)``: ``dx/dy = 1/g``,
``dx/dtheta = -(dy/dtheta)/g``, and the inverse log-det ``-L(x(y, theta), theta)``). Only those
knots have non-zero cotangents, so the map's pullback costs ``O(K)``:
``g_i = c_w sum_{j=i+1}^{K-1} x_bar_j`` (``c_w = 2B (1 - K m_w)``; the end knots are
constants) and ``u_w_bar = p (g - sum_i p_i g_i)``; heights alike;
``u_d_bar[j-1] = d_bar_j sigmoid(u_d[j-1])`` for the inner derivatives, nothing for the
boundary ones.

Arithmetic is in the arrays' dtype (float32 stays float32); the settings are passed as float64
and rounded to the dtype exactly as the NumPy map rounds them.

Two implementations (issue 7): ``rqs_durkan_*`` work through the batch in blocks of rows with
vectorised ``exp`` / ``softplus`` (see the comment above ``_BLOCK``; 2-3x faster), and
``rqs_durkan_*_reference`` are the original per-element loops with libm's functions. Same
signatures, same formulas in the same order; they differ by the ulps of ``exp`` / ``log1p``
moved through the spline's conditioning (tests/parity/test_spline_kernels_fast.py).
"""

import math

import numpy as np

from . import NUMBA_DISABLED, njit

__all__ = ["rqs_durkan_forward", "rqs_durkan_inverse", "rqs_durkan_forward_vjp",
           "rqs_durkan_inverse_vjp", "rqs_durkan_forward_reference", "rqs_durkan_inverse_reference",
           "rqs_durkan_forward_vjp_reference", "rqs_durkan_inverse_vjp_reference"]


# ---------------------------------------------------------------------------------------------
# one bin. The same formulas as the generic kernels of refflow.kernels.splines (see its module
# docstring), written out here rather than imported: numba's cache is keyed on the file that
# defines a kernel, so a kernel inlining another file's helpers would keep running a stale copy
# of them after that file changes.
# ---------------------------------------------------------------------------------------------


@njit
def _bin_value(xi, u, y0, y1, h, s, d0, d1, two, half):
    """``(y, g)``: ``y = y0 + h xi (s xi + d0 u) / Q`` (``y1 - h u (s u + d1 xi) / Q`` past the
    middle, exact at both knots), ``g = dy/dx = (s/Q)^2 M``."""
    t = xi * u
    q = s + (d0 + d1 - two * s) * t
    if xi <= half:
        y = y0 + h * (xi * (s * xi + d0 * u)) / q
    else:
        y = y1 - h * (u * (s * u + d1 * xi)) / q
    r = s / q
    return y, r * r * (d1 * xi * xi + two * s * t + d0 * u * u)


@njit
def _bin_root(dy, dy_up, h, s, d0, d1, zero):
    """``(xi, 1 - xi)`` solving ``y0 + h R(xi) = y`` from ``dy = y - y0``, ``dy_up = y1 - y``.

    With ``z = dy/h``, ``z' = dy_up/h`` (clipped to ``[0, 1]``), ``e = d0 z' - d1 z`` and
    ``r = sqrt(e^2 + 4 s^2 z z')`` (the discriminant over ``h^2``), the paper's stable root
    ``2c / (-b - sqrt(disc))`` is ``2sz / (2sz + e + r)``; for ``e < 0``, where ``e + r``
    cancels, it is rewritten with ``(e + r)(r - e) = 4 s^2 z z'`` as ``(r - e) / (r - e + 2s z')``.
    """
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
        p = two_s * z
        q = e + r
    else:
        p = r - e
        q = two_s * zc
    return p / (p + q), q / (p + q)


@njit
def _bin_partials(xi, u, w, h, s, d0, d1, one, two):
    """Partials of ``y`` and ``L = log g`` at fixed ``x`` in a bin, w.r.t. ``x`` and the knots.

    With ``t = xi u``, ``D = d0 + d1 - 2s``, ``Q = s + D t``, ``M = d1 xi^2 + 2st + d0 u^2``,
    ``g = (s/Q)^2 M``, ``R = xi (s xi + d0 u) / Q``, ``R_s = t (d1 xi^2 - d0 u^2) / Q^2``::

        dy/dx = g,  dy/dx0 = s^2 R_s - u g,  dy/dx1 = -s^2 R_s - xi g,
        dy/dy0 = u (s u + d1 xi)/Q - s R_s,  dy/dy1 = xi (s xi + d0 u)/Q + s R_s,
        dy/dd0 = h t u (s u + d1 xi)/Q^2,    dy/dd1 = -h t xi (s xi + d0 u)/Q^2,
        L_xi = 2 ((d1 xi + s (u - xi) - d0 u)/M - D (u - xi)/Q),  s L_s = 2t ((d0 + d1)/Q + s/M),
        dL/dx = L_xi/w,  dL/dx0 = (s L_s - u L_xi)/w,  dL/dx1 = -(s L_s + xi L_xi)/w,
        dL/dy1 = -dL/dy0 = s L_s / h,  dL/dd0 = u^2/M - 2t/Q,  dL/dd1 = xi^2/M - 2t/Q.

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
    a_up = s * u + d1 * xi
    b_lo = s * xi + d0 * u
    e = t * (d1 * xi * xi - d0 * u * u)
    s_rs = s * e * iq * iq
    ss_rs = r * r * e
    l_xi = two * ((d1 * xi + s * (u - xi) - d0 * u) / m - dd * (u - xi) / q)
    s_ls = two * t * ((d0 + d1) * iq + s * im)
    iw = one / w
    l_y1 = s_ls / h
    return (g, l_xi * iw, ss_rs - u * g, -ss_rs - xi * g,
            u * a_up * iq - s_rs, xi * b_lo * iq + s_rs,
            h * t * u * a_up * iq * iq, -h * t * xi * b_lo * iq * iq,
            (s_ls - u * l_xi) * iw, -(s_ls + xi * l_xi) * iw, -l_y1, l_y1,
            u * u * im - two * t * iq, xi * xi * im - two * t * iq)


@njit
def _bin_inverse_partials(xi, u, w, h, s, d0, d1, one, two):
    """Partials of ``x(y, theta)`` and of the inverse log-det ``-L(x(y, theta), theta)``.

    Implicit-function theorem on ``y = y0 + h R(xi)``: ``dx/dy = 1/g``,
    ``dx/dtheta = -(dy/dtheta)/g`` except for the x-knots, written without the cancelling
    ``u L_xi / w`` terms (``rho = s^2 R_s / g = t (d1 xi^2 - d0 u^2) / M``)::

        dx/dx0 = u - rho,  dx/dx1 = xi + rho,
        d(-L)/dy = -L_x / g,  d(-L)/dtheta = -(L_x dx/dtheta + dL/dtheta),
        d(-L)/dx0 = -d(-L)/dx1 = (L_xi rho - s L_s) / w.

    Returns ``(x_y, l_y, x_x0, x_x1, x_y0, x_y1, x_d0, x_d1, l_x0, l_x1, l_y0, l_y1, l_d0, l_d1)``.
    """
    (g, l_x, y_x0, y_x1, y_y0, y_y1, y_d0, y_d1,
     l_x0, l_x1, l_y0, l_y1, l_d0, l_d1) = _bin_partials(xi, u, w, h, s, d0, d1, one, two)
    ig = one / g
    t = xi * u
    m = d1 * xi * xi + two * s * t + d0 * u * u
    q = s + (d0 + d1 - two * s) * t
    rho = t * (d1 * xi * xi - d0 * u * u) / m
    s_ls = two * t * ((d0 + d1) / q + s / m)
    il_x0 = (l_x * w * rho - s_ls) / w
    x_y0 = -y_y0 * ig
    x_y1 = -y_y1 * ig
    x_d0 = -y_d0 * ig
    x_d1 = -y_d1 * ig
    return (ig, -l_x * ig, u - rho, xi + rho, x_y0, x_y1, x_d0, x_d1,
            il_x0, -il_x0, -(l_x * x_y0 + l_y0), -(l_x * x_y1 + l_y1),
            -(l_x * x_d0 + l_d0), -(l_x * x_d1 + l_d1))


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
def _softplus(u, zero):
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
    return min_d + _softplus(ud[j - 1], zero)


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
def rqs_durkan_forward_reference(x, uw, uh, ud, bound, min_bin_width, min_bin_height,
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
        yv, g = _bin_value((v - x0) / w, (x1 - v) / w, yk[k], yk[k + 1], h, h / w,
                          _derivative(ud[i], k, K, md, zero, one),
                          _derivative(ud[i], k + 1, K, md, zero, one), two, half)
        y[i] = yv
        log_det[i] = np.log(g)


@njit
def rqs_durkan_inverse_reference(y, uw, uh, ud, bound, min_bin_width, min_bin_height,
                                 min_derivative, x, log_det):
    """Inverse spline with the "durkan" map: ``x = RQS^{-1}(y)``, ``log_det = log dx/dy``.

    Arguments as :func:`rqs_durkan_forward_reference`, with ``y`` the input and ``x`` written.
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
        xi, u = _bin_root(v - y0, y1 - v, h, s, d0, d1, zero)
        if xi <= half:
            x[i] = x0 + xi * w
        else:
            x[i] = x1 - u * w
        _, g = _bin_value(xi, u, y0, y1, h, s, d0, d1, two, half)
        log_det[i] = -np.log(g)


@njit
def rqs_durkan_forward_vjp_reference(x, uw, uh, ud, bound, min_bin_width, min_bin_height,
                                     min_derivative, y_bar, ld_bar, x_bar, uw_bar, uh_bar,
                                     ud_bar):
    """Cotangents of ``sum(y_bar * y + ld_bar * log_det)`` for
    :func:`rqs_durkan_forward_reference`.

    Writes ``x_bar`` (N,), ``uw_bar``, ``uh_bar`` (N, K) and ``ud_bar`` (N, K - 1), overwritten.
    ``x_bar = y_bar dy/dx + ld_bar dL/dx`` and, for the bin's knots,
    ``theta_bar = y_bar dy/dtheta + ld_bar dL/dtheta`` (:func:`_bin_partials`, as
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
         l_x0, l_x1, l_y0, l_y1, l_d0, l_d1) = _bin_partials(
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
def rqs_durkan_inverse_vjp_reference(y, uw, uh, ud, bound, min_bin_width, min_bin_height,
                                     min_derivative, x_bar, ld_bar, y_bar, uw_bar, uh_bar,
                                     ud_bar):
    """Cotangents of ``sum(x_bar * x + ld_bar * log_det)`` for
    :func:`rqs_durkan_inverse_reference`.

    Writes ``y_bar`` (N,) and the parameter cotangents, overwritten. At the recomputed root,
    with the partials of ``x(y, theta)`` and of the inverse log-det ``-L(x(y, theta), theta)``
    (implicit-function theorem: ``dx/dy = 1/g``, ``dx/dtheta = -(dy/dtheta)/g``;
    :func:`_bin_inverse_partials`, as :func:`refflow.kernels.splines.rqs_inverse_vjp`),
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
        xi, u = _bin_root(v - y0, y1 - v, h, s, d0, d1, zero)
        (x_y, l_y, x_x0, x_x1, x_y0, x_y1, x_d0, x_d1,
         l_x0, l_x1, l_y0, l_y1, l_d0, l_d1) = _bin_inverse_partials(xi, u, w, h, s, d0, d1,
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
# The fast kernels (issue 7). The same formulas and the same order of operations as the
# reference kernels above, except for what bounded them: per element 2K calls of libm's scalar
# ``exp`` and two ``softplus`` (``exp`` + ``log1p``), ~7-10 ns each, about 80% of the time.
# Rows go in blocks of _BLOCK, in phases: (1) ``exp(u - max u)`` of every width and height
# (:func:`_exp_rows`), (2) per row the bin and its four knots (:func:`_search`, :func:`_pair`,
# the reference's arithmetic, computed only up to the bin), (3) the bin's two derivatives
# ``m_d + softplus`` (and, for the pullbacks, ``sigmoid``) for the whole block
# (:func:`_derivatives`), (4) per row the bin's value / root / partials (the reference's
# helpers). Phases 1 and 3 are branch-free loops that LLVM vectorises, with their own ``exp``
# (:func:`_exp_le0`) and ``log1p`` (:func:`_log1p_01`), each within 2 ulps of libm's
# (tests/parity/test_spline_kernels_fast.py); everything else is bit-for-bit the reference's
# arithmetic, so the two differ by round-off amplified by the spline's conditioning only. Fast-math
# stays off.
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
    Within 1 ulp of libm's exp (tests/parity/test_spline_kernels_fast.py).
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
    (tests/parity/test_spline_kernels_fast.py).
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

    ``softplus(u) = max(u, 0) + log1p(e^-|u|)`` (the reference's ``u + log1p(e^-u)`` for
    ``u > 0``, ``log1p(e^u)`` otherwise), ``sigmoid(u) = 1/(1 + e^-u)`` for ``u >= 0``, else
    ``e^u/(1 + e^u)`` (the reference's two branches), with ``e^-|u|`` by :func:`_exp_le0` and
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
    ``pt[j, b] = softmax(u[i0 + b])_j`` and knots ``kt[0..K, b]``, with the reference's
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
    :func:`rqs_durkan_forward_reference` computed block-wise with vectorised ``exp`` and
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
            yv, g = _bin_value((v - x0) / w, (x1 - v) / w, y0, y1, h, h / w,
                              rows[4, b], rows[5, b], two, half)
            y[i] = yv
            log_det[i] = np.log(g)


@njit
def rqs_durkan_inverse(y, uw, uh, ud, bound, min_bin_width, min_bin_height, min_derivative,
                       x, log_det):
    """Inverse spline with the "durkan" map: ``x = RQS^{-1}(y)``, ``log_det = log dx/dy``.

    Arguments as :func:`rqs_durkan_forward`, with ``y`` the input and ``x`` written;
    :func:`rqs_durkan_inverse_reference` computed block-wise (see :func:`rqs_durkan_forward`).
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
            xi, u = _bin_root(v - y0, y1 - v, h, s, d0, d1, zero)
            if xi <= half:
                x[i] = x0 + xi * w
            else:
                x[i] = x1 - u * w
            _, g = _bin_value(xi, u, y0, y1, h, s, d0, d1, two, half)
            log_det[i] = -np.log(g)


@njit
def rqs_durkan_forward_vjp(x, uw, uh, ud, bound, min_bin_width, min_bin_height, min_derivative,
                           y_bar, ld_bar, x_bar, uw_bar, uh_bar, ud_bar):
    """Cotangents of ``sum(y_bar * y + ld_bar * log_det)`` for :func:`rqs_durkan_forward`.

    Writes ``x_bar`` (N,), ``uw_bar``, ``uh_bar`` (N, K) and ``ud_bar`` (N, K - 1), overwritten.
    :func:`rqs_durkan_forward_vjp_reference` (formulas there) computed block-wise (see
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
             l_x0, l_x1, l_y0, l_y1, l_d0, l_d1) = _bin_partials(
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
    :func:`rqs_durkan_inverse_vjp_reference` (formulas there) computed block-wise (see
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
            xi, u = _bin_root(v - y0, y1 - v, h, s, d0, d1, zero)
            (x_y, l_y, x_x0, x_x1, x_y0, x_y1, x_d0, x_d1,
             l_x0, l_x1, l_y0, l_y1, l_d0, l_d1) = _bin_inverse_partials(xi, u, w, h, s, d0, d1,
                                                                        one, two)
            xb = x_bar[i]
            lb = ld_bar[i]
            y_bar[i] = xb * x_y + lb * l_y
            _chain_fast(i, k, K, gw, gh, prw, prh, rows[6, b], rows[7, b],
                        xb * x_x0 + lb * l_x0, xb * x_x1 + lb * l_x1,
                        xb * x_y0 + lb * l_y0, xb * x_y1 + lb * l_y1,
                        xb * x_d0 + lb * l_d0, xb * x_d1 + lb * l_d1,
                        zero, uw_bar, uh_bar, ud_bar)
