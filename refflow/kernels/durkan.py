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
"""

import math

import numpy as np

from . import njit

__all__ = ["rqs_durkan_forward", "rqs_durkan_inverse", "rqs_durkan_forward_vjp",
           "rqs_durkan_inverse_vjp"]


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
def rqs_durkan_inverse(y, uw, uh, ud, bound, min_bin_width, min_bin_height, min_derivative,
                       x, log_det):
    """Inverse spline with the "durkan" map: ``x = RQS^{-1}(y)``, ``log_det = log dx/dy``.

    Arguments as :func:`rqs_durkan_forward`, with ``y`` the input and ``x`` written.
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
def rqs_durkan_forward_vjp(x, uw, uh, ud, bound, min_bin_width, min_bin_height, min_derivative,
                           y_bar, ld_bar, x_bar, uw_bar, uh_bar, ud_bar):
    """Cotangents of ``sum(y_bar * y + ld_bar * log_det)`` for :func:`rqs_durkan_forward`.

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
def rqs_durkan_inverse_vjp(y, uw, uh, ud, bound, min_bin_width, min_bin_height, min_derivative,
                           x_bar, ld_bar, y_bar, uw_bar, uh_bar, ud_bar):
    """Cotangents of ``sum(x_bar * x + ld_bar * log_det)`` for :func:`rqs_durkan_inverse`.

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
