r"""Numerical inverse of a block neural autoregressive network, one coordinate at a time.

The network (De Cao et al. 2019; :class:`refflow.BlockNeuralAutoregressive`) maps ``x`` to
``z = r1 x + r2 F(x)`` with ``F`` a stack of block lower-triangular linear layers ``W_l``
(``widths[l + 1] x widths[l]``, ``dim`` row blocks of ``k_{l+1} = widths[l + 1] / dim`` rows
and ``dim`` column blocks of ``k_l`` columns, positive diagonal blocks) and activations ``f``
between them. Coordinate ``i`` of ``z`` depends on ``x_1 .. x_i`` only and increases strictly in
``x_i``, so ``x = T^{-1}(z)`` is found coordinate by coordinate, in order. With ``x_1 .. x_{i-1}``
known, the pre-activations of block ``i`` are ``a_l = c_l + D_l h_{l-1}`` where ``c_l`` (the
bias plus the columns of the earlier blocks) is fixed and ``D_l`` is the ``i``-th diagonal
block; ``x_i`` then solves the scalar equation::

    g(t) = r1 t + r2 F_i(t) - z_i = 0,      g'(t) = r1 + r2 D_L f'(a_{L-1}) D_{L-1} ... f'(a_1) D_1

(a forward-mode pass through the ``k``-wide block chain gives ``g'`` with ``g``).

The solver (per coordinate)
---------------------------
1. Bracket: from ``t = 0`` towards the root (the sign of ``g(0)``), first to the Newton point
   ``-g(0)/g'(0)``, then by steps that double (at least 1, 2, 4, ...) until
   ``g(lo) <= 0 <= g(hi)``. If an end passes ``big`` (a quarter of the dtype's largest value)
   first, ``z_i`` is outside the range of the map (a bounded activation such as ``tanh`` with no
   residual bounds each coordinate's range): ``status[n]`` is set to ``i + 1`` and the row is
   abandoned (``x_out`` is NaN from that coordinate on).
2. Start at the Newton point of the bracket's end with the smaller ``|g|`` (the false-position
   point if that leaves the bracket).
3. Newton steps ``t - g/g'``; each evaluation shrinks the bracket by the sign of ``g``; a step
   that leaves the bracket or is not at most half the step before last is replaced by bisection
   (Numerical Recipes' ``rtsafe`` safeguard).
4. Stop when ``g == 0``, after a Newton step of at most 4 ulps of ``t`` (Newton converges
   quadratically, so the step lands within rounding of the root), when a Newton step no longer
   changes ``t``, or when no float lies strictly inside the bracket.
5. Check: ``|g(t)| <= RESOLVE_ULPS eps scale``, with ``scale`` the magnitude of the terms summed
   to evaluate ``T_i`` (first-order forward error bound). Otherwise ``T_i`` jumps between
   adjacent floats (units saturated behind huge weights: no float64 root exists), ``status[n]``
   is set to ``-(i + 1)`` and the row abandoned.

Tolerance and worst case: the root returned has ``|g|`` at the rounding level of evaluating
``g`` (a few ulps of the terms of ``z_i``), i.e. ``t`` is within a few ulps of the exact root
plus that rounding over ``g'``. Newton converges in ~5-8 evaluations on ordinary inputs;
the safeguard bounds the worst case by bisection: at most ~2,100 expansion steps (from 1 to the
dtype's largest value) and :data:`MAX_ITER` refinement steps (enough to bisect any float64
bracket down to adjacent floats).

Arrays
------
``z``, ``x_out`` ``(n, dim)``; ``w`` the layers' weight matrices ``W_0, ..., W_{L-1}``
raveled (row-major) one after the other; ``b`` their biases likewise (the entries of ``b_0``
are not read: ``b0_rows`` replaces them); ``b0_rows`` ``(R, widths[1])`` the first layer's
bias per row (``R = n``: a conditional layer adds its context term) or for every row
(``R = 1``); ``widths`` int64 ``(L + 1,)`` with ``widths[0] = widths[L] = dim``; ``activation``
an int code (0 ``tanh(a) + 0.01 a``, 1 ``tanh``, 2 ``sigmoid``, 3 ``elu``, 4 leaky ReLU with slope
0.01); ``r1, r2, big`` scalars of the dtype; ``status`` int64 ``(n,)``, 0 when the row was
solved. Every constant is built from ``z``'s dtype, so float32 computes in float32.

``bnaf_inverse_numpy`` is a vectorised NumPy twin written separately (all rows of a coordinate
at once, masked Newton/bisection, bracket expansion by masks; without step 5), used by the
parity tests.

References
----------
N. De Cao, I. Titov and W. Aziz, "Block Neural Autoregressive Flow", UAI 2019,
arXiv:1904.04676.

W. H. Press, S. A. Teukolsky, W. T. Vetterling and B. P. Flannery, "Numerical Recipes",
3rd ed., 2007, section 9.4 (``rtsafe``).

Examples
--------
A one-layer network (no hidden layer) is a lower-triangular linear map ``z = W x + b``:

>>> import numpy as np
>>> from refflow.kernels.bnaf import bnaf_inverse
>>> w = np.array([[2.0, 0.0], [0.5, 1.0]]); b = np.array([0.1, -0.2])
>>> x = np.array([[0.3, -1.2]]); z = x @ w.T + b
>>> out = np.empty_like(z); status = np.zeros(1, dtype=np.int64)
>>> bnaf_inverse(z, w.ravel(), b, b[None], np.array([2, 2]), 0, 0.0, 1.0, 1e300, out, status)
>>> bool(np.allclose(out, x, rtol=0, atol=1e-15)), int(status[0])
(True, 0)
"""

import math

import numpy as np

from . import njit

__all__ = ["bnaf_inverse", "bnaf_inverse_numpy", "MAX_ITER", "RESOLVE_ULPS", "ACTIVATION_CODES"]

#: Refinement steps per coordinate: Newton needs ~5-8; bisecting a float64 bracket from the
#: dtype's range down to adjacent floats needs ~2,100.
MAX_ITER = 2200

#: A root's residual may be at most this many ulps of the magnitude of the terms evaluated
#: (a first-order forward error bound of the network); measured at most 1.4 on ordinary
#: networks. Larger means the map jumps between adjacent floats: the row is refused.
RESOLVE_ULPS = 64

#: The activations' integer codes, as the kernels read them.
ACTIVATION_CODES = {"leaky_tanh": 0, "tanh": 1, "sigmoid": 2, "elu": 3, "leaky_relu": 4}


# ---------------------------------------------------------------------------------------------
# numba kernel (constants from the arrays' dtype)
# ---------------------------------------------------------------------------------------------


@njit
def _activation(code, a, one, two, four, slope):
    """``(f(a), f'(a))`` for the activation ``code``; ``sech^2`` without overflow."""
    if code == 0 or code == 1:
        t = math.tanh(a)
        e = math.exp(-two * abs(a))
        d = four * e / ((one + e) * (one + e))
        if code == 0:
            return t + slope * a, d + slope
        return t, d
    if code == 2:
        e = math.exp(-abs(a))
        s = one / (one + e)
        h = s if a >= 0 else e * s
        return h, e * s * s
    if code == 3:
        if a > 0:
            return a, one
        return math.expm1(a), math.exp(a)
    if a >= 0:
        return a, one
    return slope * a, slope


@njit
def _block_eval(t, i, dim, w, woff, widths, c, coff, hp, dp, hn, dn, code, r1, r2, one, two,
                four, slope):
    """``(g + z_i, g')`` at ``x_i = t`` for block ``i`` (a forward-mode pass through the
    block's chain of diagonal blocks)."""
    zero = one - one
    n_layers = widths.shape[0] - 1
    hp[0] = t
    dp[0] = one
    f = zero
    df = zero
    for l in range(n_layers):
        k_in = widths[l] // dim
        k_out = widths[l + 1] // dim
        n_in = widths[l]
        for r in range(k_out):
            row = i * k_out + r
            base = woff[l] + row * n_in + i * k_in
            acc = c[coff[l] + r]
            dacc = zero
            for j in range(k_in):
                wv = w[base + j]
                acc += wv * hp[j]
                dacc += wv * dp[j]
            if l < n_layers - 1:
                h, dh = _activation(code, acc, one, two, four, slope)
                hn[r] = h
                dn[r] = dh * dacc
            else:
                f = acc
                df = dacc
        for r in range(k_out):
            hp[r] = hn[r]
            dp[r] = dn[r]
    return r1 * t + r2 * f, r1 + r2 * df


@njit
def _block_store(t, i, dim, w, woff, widths, c, cm, coff, hp, mp, hn, mn, code, r1, r2, h_all,
                 m_all, hoff, one, two, four, slope):
    """At the root ``x_i = t``: store block ``i``'s hidden activations (``h_all``) and their
    first-order rounding magnitudes (``m_all``: ``nu = |c| + sum |D| mu`` for a pre-activation,
    ``mu = |f(a)| + f'(a) nu`` after the activation); return ``(T_i(t), scale)`` with ``scale =
    |r1 t| + r2 nu_L``, the magnitude of the terms summed to evaluate ``T_i``."""
    zero = one - one
    n_layers = widths.shape[0] - 1
    hp[0] = t
    mp[0] = abs(t)
    f = zero
    nu_f = zero
    for l in range(n_layers):
        k_in = widths[l] // dim
        k_out = widths[l + 1] // dim
        n_in = widths[l]
        for r in range(k_out):
            row = i * k_out + r
            base = woff[l] + row * n_in + i * k_in
            acc = c[coff[l] + r]
            nu = cm[coff[l] + r]
            for j in range(k_in):
                wv = w[base + j]
                acc += wv * hp[j]
                nu += abs(wv) * mp[j]
            if l < n_layers - 1:
                h, dh = _activation(code, acc, one, two, four, slope)
                hn[r] = h
                mn[r] = abs(h) + dh * nu
                h_all[hoff[l + 1] + row] = h
                m_all[hoff[l + 1] + row] = mn[r]
            else:
                f = acc
                nu_f = nu
        for r in range(k_out):
            hp[r] = hn[r]
            mp[r] = mn[r]
    return r1 * t + r2 * f, abs(r1 * t) + r2 * nu_f


@njit
def bnaf_inverse(z, w, b, b0_rows, widths, activation, r1, r2, big, x_out, status):
    """Solve ``z_n = T(x_n)`` for every row, coordinate by coordinate (module docstring).

    Parameters
    ----------
    z : ndarray of shape (n, dim)
    w, b : ndarray
        The raveled weights and biases of the ``L`` layers.
    b0_rows : ndarray of shape (R, widths[1])
        The first layer's bias for every row (``R = n``) or shared (``R = 1``).
    widths : int64 ndarray of shape (L + 1,)
    activation : int
        Code of :data:`ACTIVATION_CODES`.
    r1, r2, big : scalars of the dtype of ``z``
        ``z = r1 x + r2 F(x)``; ``big`` bounds the bracket search.
    x_out : ndarray of shape (n, dim)
        Output.
    status : int64 ndarray of shape (n,)
        Output: 0; ``i + 1`` when ``z[n, i]`` is outside the range of the map; ``-(i + 1)`` when
        no float64 ``x`` solves coordinate ``i`` to rounding (step 5).
    """
    one = z.dtype.type(1)
    two = one + one
    four = two + two
    half = one / two
    zero = one - one
    slope = one / z.dtype.type(100)
    eps = one
    while one + eps / two != one:
        eps = eps / two
    ulps = four * eps
    resolve = z.dtype.type(RESOLVE_ULPS) * eps
    n, dim = z.shape
    n_layers = widths.shape[0] - 1
    woff = np.zeros(n_layers + 1, dtype=np.int64)
    boff = np.zeros(n_layers + 1, dtype=np.int64)
    hoff = np.zeros(n_layers + 1, dtype=np.int64)
    coff = np.zeros(n_layers + 1, dtype=np.int64)
    kmax = 1
    for l in range(n_layers):
        woff[l + 1] = woff[l] + widths[l + 1] * widths[l]
        boff[l + 1] = boff[l] + widths[l + 1]
        hoff[l + 1] = hoff[l] + widths[l]
        coff[l + 1] = coff[l] + widths[l + 1] // dim
        kmax = max(kmax, widths[l + 1] // dim)
    h_all = np.zeros(hoff[n_layers], dtype=z.dtype)   # layer l's activations at hoff[l]
    m_all = np.zeros(hoff[n_layers], dtype=z.dtype)   # and their rounding magnitudes
    c = np.zeros(coff[n_layers], dtype=z.dtype)
    cm = np.zeros(coff[n_layers], dtype=z.dtype)
    hp = np.zeros(kmax, dtype=z.dtype)
    dp = np.zeros(kmax, dtype=z.dtype)
    hn = np.zeros(kmax, dtype=z.dtype)
    dn = np.zeros(kmax, dtype=z.dtype)
    shared = b0_rows.shape[0] == 1
    for s in range(n):
        status[s] = 0
        brow = 0 if shared else s
        for j in range(dim):
            x_out[s, j] = zero
            h_all[j] = zero
            m_all[j] = zero
        for i in range(dim):
            # fixed part of block i's pre-activations: bias + columns of the earlier blocks
            for l in range(n_layers):
                k_in = widths[l] // dim
                k_out = widths[l + 1] // dim
                n_in = widths[l]
                for r in range(k_out):
                    row = i * k_out + r
                    acc = b0_rows[brow, row] if l == 0 else b[boff[l] + row]
                    mag = abs(acc)
                    base = woff[l] + row * n_in
                    for col in range(i * k_in):
                        acc += w[base + col] * h_all[hoff[l] + col]
                        mag += abs(w[base + col]) * m_all[hoff[l] + col]
                    c[coff[l] + r] = acc
                    cm[coff[l] + r] = mag
            target = z[s, i]
            # 1. bracket: from t = 0 towards the root, first to the Newton point of t = 0,
            #    then by doubling steps
            val0, d0 = _block_eval(zero, i, dim, w, woff, widths, c, coff, hp, dp, hn, dn,
                                   activation, r1, r2, one, two, four, slope)
            g0 = val0 - target
            width = one
            if d0 > zero:
                width = abs(g0) / d0
                if not width < big:
                    width = one
            failed = False
            lo = zero
            hi = zero
            g_lo = g0
            g_hi = g0
            d_lo = d0
            d_hi = d0
            if g0 > zero:
                lo = -width
                val, d_lo = _block_eval(lo, i, dim, w, woff, widths, c, coff, hp, dp, hn, dn,
                                        activation, r1, r2, one, two, four, slope)
                g_lo = val - target
                while g_lo > zero:
                    hi = lo
                    g_hi = g_lo
                    d_hi = d_lo
                    width = two * width
                    lo = hi - width
                    if not lo > -big:
                        failed = True
                        break
                    val, d_lo = _block_eval(lo, i, dim, w, woff, widths, c, coff, hp, dp, hn, dn,
                                            activation, r1, r2, one, two, four, slope)
                    g_lo = val - target
            elif g0 < zero:
                hi = width
                val, d_hi = _block_eval(hi, i, dim, w, woff, widths, c, coff, hp, dp, hn, dn,
                                        activation, r1, r2, one, two, four, slope)
                g_hi = val - target
                while g_hi < zero:
                    lo = hi
                    g_lo = g_hi
                    d_lo = d_hi
                    width = two * width
                    hi = lo + width
                    if not hi < big:
                        failed = True
                        break
                    val, d_hi = _block_eval(hi, i, dim, w, woff, widths, c, coff, hp, dp, hn, dn,
                                            activation, r1, r2, one, two, four, slope)
                    g_hi = val - target
            if failed:
                status[s] = i + 1
                nan = big * big - big * big          # inf - inf, in the dtype
                for j in range(i, dim):
                    x_out[s, j] = nan
                break
            # 2. start: the Newton point of the bracket's better end, else false position
            if g_lo == zero:
                t = lo
            elif g_hi == zero:
                t = hi
            else:
                t = lo
                if -g_lo <= g_hi and d_lo > zero:
                    t = lo - g_lo / d_lo
                elif d_hi > zero:
                    t = hi - g_hi / d_hi
                if not (t > lo and t < hi):
                    t = lo + (hi - lo) * (-g_lo / (g_hi - g_lo))
                if not (t > lo and t < hi):
                    t = lo + half * (hi - lo)
                # 3. safeguarded Newton
                dx_before = hi - lo
                dx = dx_before
                for _ in range(MAX_ITER):
                    val, slope_t = _block_eval(t, i, dim, w, woff, widths, c, coff, hp, dp, hn,
                                               dn, activation, r1, r2, one, two, four, slope)
                    g = val - target
                    if g == zero:
                        break
                    if g < zero:
                        lo = t
                    else:
                        hi = t
                    # g' can round to 0 where the network saturates: bisect then
                    # (numba's error model raises on a division by zero)
                    newton = t
                    delta = zero
                    if slope_t > zero:
                        delta = g / slope_t
                        newton = t - delta
                        if newton == t:
                            break
                    if slope_t > zero and newton > lo and newton < hi \
                            and abs(two * delta) <= abs(dx_before):
                        dx_before = dx
                        dx = delta
                        t = newton
                        if abs(delta) <= ulps * abs(t):   # converged to a few ulps
                            break
                    else:
                        mid = lo + half * (hi - lo)
                        if not (mid > lo and mid < hi):
                            break
                        dx_before = dx
                        dx = t - mid
                        t = mid
            x_out[s, i] = t
            h_all[i] = t
            m_all[i] = abs(t)
            val, scale = _block_store(t, i, dim, w, woff, widths, c, cm, coff, hp, dp, hn, dn,
                                      activation, r1, r2, h_all, m_all, hoff, one, two, four,
                                      slope)
            # 5. a root must leave a residual at the rounding level of evaluating T_i; a larger
            #    one means T_i jumps between adjacent floats (saturated units behind huge
            #    weights): no float64 x solves z_i, and the row is refused
            if not abs(val - target) <= resolve * scale:
                status[s] = -(i + 1)
                nan = big * big - big * big
                for j in range(i, dim):
                    x_out[s, j] = nan
                break


# ---------------------------------------------------------------------------------------------
# NumPy twin: every row of a coordinate at once; written from the formulas, independent of the
# kernel above (dense masked matrices, a masked Newton/bisection iteration).
# ---------------------------------------------------------------------------------------------


def _activation_numpy(code, a):
    dtype = a.dtype.type
    slope = dtype(1) / dtype(100)
    if code in (0, 1):
        e = np.exp(-2 * np.abs(a))
        sech2 = 4 * e / (1 + e) ** 2
        t = np.tanh(a)
        return (t + slope * a, sech2 + slope) if code == 0 else (t, sech2)
    if code == 2:
        e = np.exp(-np.abs(a))
        s = 1 / (1 + e)
        return np.where(a >= 0, s, e * s), e * s * s
    if code == 3:
        neg = np.minimum(a, 0)
        return np.where(a > 0, a, np.expm1(neg)), np.where(a > 0, dtype(1), np.exp(neg))
    return np.where(a >= 0, a, slope * a), np.where(a >= 0, dtype(1), slope)


def bnaf_inverse_numpy(z, w, b, b0_rows, widths, activation, r1, r2, big, x_out, status):
    """NumPy twin of :func:`bnaf_inverse` (same signature and outputs)."""
    dtype = z.dtype
    n, dim = z.shape
    widths = [int(v) for v in widths]
    n_layers = len(widths) - 1
    mats, biases, start, bstart = [], [], 0, 0
    for l in range(n_layers):
        size = widths[l + 1] * widths[l]
        mats.append(w[start:start + size].reshape(widths[l + 1], widths[l]))
        biases.append(np.broadcast_to(b0_rows, (n, widths[1])) if l == 0
                      else b[bstart:bstart + widths[l + 1]])
        start += size
        bstart += widths[l + 1]
    x = np.zeros((n, dim), dtype=dtype)
    ok = np.ones(n, dtype=bool)

    def evaluate(t, i):
        """``(T_i, dT_i/dx_i)`` for all rows with ``x_i = t`` (earlier coordinates from ``x``)."""
        xx = x.copy()
        xx[:, i] = t
        h, dh = xx, np.zeros_like(xx)
        dh[:, i] = 1
        for l in range(n_layers):
            a = h @ mats[l].T + biases[l]
            da = dh @ mats[l].T
            if l < n_layers - 1:
                h, d = _activation_numpy(activation, a)
                dh = d * da
        return r1 * t + r2 * a[:, i], r1 + r2 * da[:, i]

    for i in range(dim):
        target = z[:, i]
        lo = np.full(n, -1, dtype=dtype)
        hi = np.full(n, 1, dtype=dtype)
        g_lo = evaluate(lo, i)[0] - target
        g_hi = evaluate(hi, i)[0] - target
        step = np.ones(n, dtype=dtype)
        fail = ~ok
        for _ in range(2200):
            move = (g_lo > 0) & ~fail
            if not move.any():
                break
            hi = np.where(move, lo, hi)
            g_hi = np.where(move, g_lo, g_hi)
            lo = np.where(move, lo - step, lo)
            step = np.where(move, 2 * step, step)
            fail |= move & ~(lo > -big)
            g_lo = np.where(move & ~fail, evaluate(np.where(fail, 0, lo), i)[0] - target, g_lo)
        for _ in range(2200):
            move = (g_hi < 0) & ~fail
            if not move.any():
                break
            lo = np.where(move, hi, lo)
            g_lo = np.where(move, g_hi, g_lo)
            hi = np.where(move, hi + step, hi)
            step = np.where(move, 2 * step, step)
            fail |= move & ~(hi < big)
            g_hi = np.where(move & ~fail, evaluate(np.where(fail, 0, hi), i)[0] - target, g_hi)
        newly = fail & ok
        status[newly] = i + 1
        ok &= ~fail
        t = (lo + hi) / 2
        t = np.where(g_lo == 0, lo, np.where(g_hi == 0, hi, t))
        active = ok & (g_lo != 0) & (g_hi != 0)
        for _ in range(MAX_ITER):
            if not active.any():
                break
            val, slope_t = evaluate(np.where(ok, t, 0), i)
            g = val - target
            lo = np.where(active & (g < 0), t, lo)
            hi = np.where(active & (g > 0), t, hi)
            with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                newton = t - g / slope_t
            mid = lo + (hi - lo) / 2
            inside = (newton > lo) & (newton < hi)
            done = (g == 0) | (newton == t) | (~inside & ~((mid > lo) & (mid < hi)))
            step_rows = active & ~done
            t = np.where(step_rows, np.where(inside, newton, mid), t)
            active = step_rows
        x[:, i] = np.where(ok, t, np.nan)   # a failed row keeps its solved prefix
    x_out[...] = x
    status[ok] = 0
