r"""Numerical inverses of increasing scalar maps: bracketed, safeguarded Newton, row by row.

``monotone_solve`` solves ``f(x; params_n) = z_n`` for every row ``n`` of three families of
increasing maps, given their *constrained* parameters (the layers build them):

======  ===============  ==============================================================
kind    name             ``f(x)`` (``params[n]`` holds)
======  ===============  ==============================================================
0       ``SIGMOIDAL``    the (deep dense) sigmoidal flow: ``n_layers`` layers ``1 -> K ->
                         ... -> K -> 1``, each ``h' = log D - log(1 - D)``, ``D = W
                         sigmoid(a * (U h) + b)`` (rows of ``W`` and ``U`` sum to 1); per
                         layer ``[a (K) | log a (K) | b (K) | log W (d_out K) | log U
                         (K d_in, if d_in > 1)]`` (``n_layers = 1``: the DSF)
1       ``POLYNOMIAL``   ``sum_j e_j v^j``, ``v = x / scale`` (``[e_0 .. e_d]``)
2       ``BERNSTEIN``    ``sum_i theta_i C(M, i) v^i (1 - v)^(M-i)``, ``v = (x + scale) /
                         (2 scale)``, for ``|x| <= scale`` (``[theta_0 .. theta_M]``)
======  ===============  ==============================================================

The sigmoidal layers are evaluated in log space (``log D_m = LSE_j(log W_mj + log
sigmoid(C_j))``, ``log(1 - D_m) = LSE_j(log W_mj + log sigmoid(-C_j))``, and the log-derivative
``t' = LSE_j(log W_mj + log a_j + log sigmoid(C_j) + log sigmoid(-C_j) + LSE_i(log U_ji + t_i))
- log D_m - log(1 - D_m)`` carried from layer to layer), the polynomial by Horner's rule
(value and derivative), the Bernstein polynomial by de Casteljau's algorithm (value, and the
derivative as the degree ``M - 1`` polynomial of the differences ``M (theta_{i+1} -
theta_i)``).

The solver (the same steps as :func:`solve_increasing`, its NumPy twin)
------------------------------------------------------------------------
1. Bracket, unless given (``bracketed``: ``lo <= x <= hi``): from ``x0``, a first step of 1.5
   times the Newton step (at least 4 ulps, or 1 when the Newton step is not finite), then
   doubling, until ``f`` passes ``z``. A candidate that overflows stops with status 2.
2. Start at the regula-falsi point of the bracket (the midpoint if it is not strictly inside).
3. ``rtsafe`` (Press et al., Numerical Recipes, 9.4): a Newton step is taken when it stays
   strictly inside the bracket and ``|2 (f - z)| <= |dx_old f'|`` (it at least halves the step
   before last) or it is at most ``NOISE_ULPS`` ulps (the residual's rounding noise near the
   root); otherwise the bracket is bisected. Each evaluation shrinks the bracket.
4. Stop when ``f == z``, the Newton step (or the new step) is at most four ulps of ``x`` (the
   new point is the answer, even on the bracket's end), or the bracket holds two adjacent
   floats. Status 3 after ``MAX_BISECTIONS`` steps
   (never reached: bisection from ``2^1024`` to subnormal spacings takes ~2100 halvings in
   float64, ~280 in float32); status 1 when ``f`` is NaN.

``f(x)`` then equals ``z`` to the rounding of ``f`` itself, and ``x`` is within four ulps
plus that rounding divided by ``f'(x)``. Kernels compute in the arrays' dtype (float32 or
float64; constants built from it) and write ``x_out`` and ``status`` (0 = solved).

``monotone_solve_numpy`` is the twin: :func:`solve_increasing` (vectorised over rows, written
for any callable ``f``) with vectorised NumPy evaluators of the three kinds. The network
transformers (which run batched products) use :func:`solve_increasing` directly.

Examples
--------
Invert ``f(x) = x + x^3`` (a polynomial with ``scale = 1``) at ``z = 2`` (root ``x = 1``):

>>> import numpy as np
>>> from refflow.kernels.monotone import POLYNOMIAL, monotone_solve
>>> z = np.array([2.0]); params = np.array([[0.0, 1.0, 0.0, 1.0]])
>>> x, status = np.empty(1), np.empty(1, dtype=np.int64)
>>> monotone_solve(POLYNOMIAL, z, params, 1.0, 0, 0, np.zeros(1), z, z, False, x, status)
>>> float(x[0]), int(status[0])
(1.0, 0)
"""

import math

import numpy as np

from . import njit

__all__ = ["SIGMOIDAL", "POLYNOMIAL", "BERNSTEIN", "sigmoidal_row_size", "NOISE_ULPS",
           "monotone_evaluate_numpy", "monotone_solve", "monotone_solve_numpy",
           "solve_increasing", "MAX_BISECTIONS", "MAX_EXPANSIONS"]

SIGMOIDAL, POLYNOMIAL, BERNSTEIN = 0, 1, 2


def sigmoidal_row_size(units, n_layers):
    """Length of a ``SIGMOIDAL`` parameter row (layers ``1 -> units -> ... -> 1``)."""
    size = 0
    for l in range(n_layers):
        d_in = 1 if l == 0 else units
        d_out = 1 if l == n_layers - 1 else units
        size += 3 * units + d_out * units + (units * d_in if d_in > 1 else 0)
    return size

#: Expansion doublings before ``x`` would overflow (float64's exponent range, with slack).
MAX_EXPANSIONS = 1100
#: A Newton step of at most this many ulps is taken even when it does not halve the step
#: before last: near the root, the map's own rounding (sums of many terms, quadrature nodes)
#: makes the residual noisy, and bisecting then would restart from a wide bracket.
NOISE_ULPS = 64
#: Bisection halvings that always suffice: from ``2^1024`` down to the spacing of subnormals
#: (``2^-1074``) in float64, plus slack; float32 needs ~280.
MAX_BISECTIONS = 2200


# ---------------------------------------------------------------------------------------------
# numba kernels (constants from the arrays' dtype: a literal 2.0 would promote float32)
# ---------------------------------------------------------------------------------------------
@njit
def _log_sigmoid(c, one, zero):
    """``log sigmoid(c) = -log(1 + e^-c)``, without overflow."""
    if c >= zero:
        return -math.log1p(math.exp(-c))
    return c - math.log1p(math.exp(c))


@njit
def _lse_max_sum(values, n, base, inf):
    """``log sum_{k<n} e^{values[base + k]}`` by a max pass and a sum pass."""
    m = -inf
    for k in range(n):
        m = max(m, values[base + k])
    if m == -inf:
        return m
    s = values[base] - values[base]
    for k in range(n):
        s += math.exp(values[base + k] - m)
    return m + math.log(s)


@njit
def _sigmoidal(x, row, units, n_layers, work, one, zero, inf):
    """``(f, f')`` of the sigmoidal layers (module docstring). ``work`` holds, from 0: ``h``,
    ``t`` (K each), ``lsp``, ``lsn``, ``r`` (K each), a scratch row (K) and the new ``h``,
    ``t`` (K each)."""
    K = units
    H, T, LSP, LSN, R, S, H2, T2 = 0, K, 2 * K, 3 * K, 4 * K, 5 * K, 6 * K, 7 * K
    work[H] = x
    work[T] = zero
    off = 0
    for l in range(n_layers):
        d_in = 1 if l == 0 else K
        d_out = 1 if l == n_layers - 1 else K
        a0, la0, b0, w0 = off, off + K, off + 2 * K, off + 3 * K
        u0 = w0 + d_out * K
        for j in range(K):
            if d_in == 1:
                pre = work[H]
                q = work[T]
            else:
                pre = zero
                for i in range(d_in):
                    pre += math.exp(row[u0 + j * d_in + i]) * work[H + i]
                    work[S + i] = row[u0 + j * d_in + i] + work[T + i]
                q = _lse_max_sum(work, d_in, S, inf)
            c = row[a0 + j] * pre + row[b0 + j]
            lp = _log_sigmoid(c, one, zero)
            ln = _log_sigmoid(-c, one, zero)
            work[LSP + j] = lp
            work[LSN + j] = ln
            work[R + j] = row[la0 + j] + lp + ln + q
        for m in range(d_out):
            for j in range(K):
                work[S + j] = row[w0 + m * K + j] + work[LSP + j]
            log_d = _lse_max_sum(work, K, S, inf)
            for j in range(K):
                work[S + j] = row[w0 + m * K + j] + work[LSN + j]
            log_e = _lse_max_sum(work, K, S, inf)
            for j in range(K):
                work[S + j] = row[w0 + m * K + j] + work[R + j]
            t_m = _lse_max_sum(work, K, S, inf)
            work[H2 + m] = log_d - log_e
            work[T2 + m] = t_m - log_d - log_e
        for m in range(d_out):
            work[H + m] = work[H2 + m]
            work[T + m] = work[T2 + m]
        off = u0 + (K * d_in if d_in > 1 else 0)
    return work[H], math.exp(work[T])


@njit
def _polynomial(x, row, scale):
    """``(f, f')`` of ``sum_j e_j (x / scale)^j`` by Horner's rule."""
    v = x / scale
    d = row.shape[0] - 1
    f = row[d]
    df = f - f
    for j in range(d - 1, -1, -1):
        df = df * v + f
        f = f * v + row[j]
    return f, df / scale


@njit
def _bernstein(x, row, scale, work, one, zero, two):
    """``(f, f')`` of the Bernstein polynomial with control points ``row`` on ``[-scale,
    scale]`` by de Casteljau's algorithm."""
    M = row.shape[0] - 1
    v = (x + scale) / (two * scale)
    w = (scale - x) / (two * scale)
    for i in range(M + 1):
        work[i] = row[i]
    for r in range(1, M + 1):
        for i in range(M + 1 - r):
            work[i] = w * work[i] + v * work[i + 1]
    f = work[0]
    if M == 0:
        return f, f - f
    for i in range(M):
        work[i] = row[i + 1] - row[i]
    for r in range(1, M):
        for i in range(M - r):
            work[i] = w * work[i] + v * work[i + 1]
    m = zero
    for _ in range(M):                       # M as a float of the dtype (one * M would be float64)
        m += one
    return f, m * work[0] / (two * scale)


@njit
def _eval(kind, x, row, scale, units, n_layers, work, one, zero, two, inf):
    if kind == 0:
        return _sigmoidal(x, row, units, n_layers, work, one, zero, inf)
    if kind == 1:
        return _polynomial(x, row, scale)
    return _bernstein(x, row, scale, work, one, zero, two)


@njit
def _ulp(x, inf):
    a = abs(x)
    return np.nextafter(a, inf) - a


@njit
def _solve_row(kind, z, row, scale, units, n_layers, x0, lo, hi, bracketed, work, one, zero,
               two, half, inf):
    """``(x, status)`` for one row (module docstring, "The solver")."""
    x = x0
    if bracketed:
        f_lo, _ = _eval(kind, lo, row, scale, units, n_layers, work, one, zero, two, inf)
        f_hi, _ = _eval(kind, hi, row, scale, units, n_layers, work, one, zero, two, inf)
        if f_lo == z:
            return lo, 0
        if f_hi == z:
            return hi, 0
        x = half * lo + half * hi
    else:
        f0, fp0 = _eval(kind, x, row, scale, units, n_layers, work, one, zero, two, inf)
        if f0 != f0:
            return x, 1
        if f0 == z:
            return x, 0
        up = f0 < z
        lo, hi, f_lo, f_hi = x, x, f0, f0
        floor = (two + two) * _ulp(x, inf)
        step = zero
        if fp0 > zero:                      # (error_model="python": never divide by 0)
            step = (one + half) * abs(z - f0) / fp0
        if not (step == step and step < inf and step > floor):
            step = max(floor, one)
        found = False
        for _ in range(1100):
            cand = (lo + step) if up else (hi - step)
            if not (abs(cand) < inf):
                return x, 2
            f_c, _ = _eval(kind, cand, row, scale, units, n_layers, work, one, zero, two, inf)
            if f_c != f_c:
                return x, 1
            if up:
                if f_c >= z:
                    hi, f_hi, found = cand, f_c, True
                else:
                    lo, f_lo = cand, f_c
            else:
                if f_c <= z:
                    lo, f_lo, found = cand, f_c, True
                else:
                    hi, f_hi = cand, f_c
            if found:
                break
            step = step * two
        if not found:
            return x, 2
        if f_lo == z:
            return lo, 0
        if f_hi == z:
            return hi, 0
        start = lo
        if f_hi - f_lo > zero:
            start = lo + (z - f_lo) / (f_hi - f_lo) * (hi - lo)
        if start > lo and start < hi:
            x = start
        else:
            x = half * lo + half * hi
    dx_old, dx = inf, inf
    noise = zero                             # NOISE_ULPS in the dtype (no int -> float64)
    for _ in range(NOISE_ULPS):
        noise += one
    for _ in range(2200):
        f, fp = _eval(kind, x, row, scale, units, n_layers, work, one, zero, two, inf)
        if f != f:
            return x, 1
        if f < z:
            lo = x
        elif f > z:
            hi = x
        else:
            return x, 0
        newton = lo
        if fp > zero:
            newton = x - (f - z) / fp
        ulp = _ulp(x, inf)
        if newton == newton and abs(newton - x) <= (two + two) * ulp:
            return newton, 0                 # (may sit on the bracket's end x just became)
        fast = abs(two * (f - z)) <= abs(dx_old * fp) or abs(newton - x) <= noise * ulp
        if newton == newton and newton > lo and newton < hi and fast:
            new = newton
        else:
            new = half * lo + half * hi
        dx_old = dx
        dx = new - x
        adjacent = (hi - lo) <= two * _ulp(max(abs(lo), abs(hi)), inf)
        if abs(new - x) <= (two + two) * ulp or adjacent:
            return new, 0
        x = new
    return x, 3


@njit
def monotone_solve(kind, z, params, scale, units, n_layers, x0, lo, hi, bracketed, x_out,
                   status):
    """Solve ``f(x; params[n]) = z[n]`` for every row (module docstring).

    Parameters
    ----------
    kind : int
        ``SIGMOIDAL`` (0), ``POLYNOMIAL`` (1) or ``BERNSTEIN`` (2).
    z : ndarray of shape (m,)
    params : ndarray of shape (m, P)
        Constrained parameters per row (module docstring), dtype of ``z``.
    scale : float
        ``v = x / scale`` (polynomial) or the Bernstein interval ``[-scale, scale]`` (a scalar
        of the arrays' dtype); unused by the sigmoidal kind.
    units, n_layers : int
        The sigmoidal layers' width ``K`` and depth (unused by the other kinds).
    x0, lo, hi : ndarray of shape (m,)
        Initial guesses, and the bracket when ``bracketed`` (else ignored).
    bracketed : bool
    x_out : ndarray of shape (m,)
    status : ndarray of int64, shape (m,)
        0 solved, 1 the map is NaN, 2 the target is beyond the map's range (the bracket would
        overflow), 3 no convergence (never seen).
    """
    one = z.dtype.type(1)
    zero = one - one
    two = one + one
    half = one / two
    inf = one
    for _ in range(2100):                    # doubling to overflow: inf in the dtype (a float
        bigger = inf * two                   # literal np.inf would be a float64 constant)
        if bigger == inf:
            break
        inf = bigger
    work = np.empty(8 * units + params.shape[1] + 2, dtype=z.dtype)
    for n in range(z.shape[0]):
        x, s = _solve_row(kind, z[n], params[n], scale, units, n_layers, x0[n], lo[n], hi[n],
                          bracketed, work, one, zero, two, half, inf)
        x_out[n] = x
        status[n] = s


# ---------------------------------------------------------------------------------------------
# the NumPy twin: a vectorised solver for any callable, and vectorised evaluators
# ---------------------------------------------------------------------------------------------
def solve_increasing(evaluate, z, x0, *, lo=None, hi=None, whole=False, where="solve_increasing"):
    """Solve ``f(x) = z`` row by row for increasing scalar maps ``f`` (vectorised rtsafe).

    Parameters
    ----------
    evaluate : callable
        ``evaluate(x, idx) -> (f, fprime)``: the maps of rows ``idx`` (an int array) at the
        points ``x`` (``len(idx)`` values), and their derivatives. With ``whole=True`` it is
        always called with every row (``idx`` the full range), so that batched products see
        the same shapes whatever rows are still iterating (results bit-identical per row).
    z : ndarray of shape (m,)
        Targets, float32 or float64 (the compute dtype).
    x0 : ndarray of shape (m,)
        Initial guesses.
    lo, hi : ndarray of shape (m,), optional
        A known bracket (``f(lo) <= z <= f(hi)``); skips the expansion.
    where : str
        Names the caller in errors.

    Returns
    -------
    x : ndarray of shape (m,)

    Raises
    ------
    ValueError
        When ``z`` lies beyond the map's range in the dtype (the bracket would overflow) or the
        map gives NaN; the message starts with ``where``.

    Notes
    -----
    The steps of the module docstring ("The solver"), all rows at once, each row's arithmetic
    independent of the others.
    """
    dtype = z.dtype
    one, two, half = dtype.type(1), dtype.type(2), dtype.type(0.5)
    m = z.shape[0]
    x = np.array(x0, dtype=dtype, copy=True)
    if m == 0:
        return x
    all_rows = np.arange(m)

    def call(points, idx):
        if whole:
            full = x.copy()
            full[idx] = points
            f, fp = evaluate(full, all_rows)
            return f[idx], fp[idx]
        return evaluate(points, idx)

    def failed(mask, what):
        row = int(np.flatnonzero(mask)[0])
        return ValueError(f"{where}: the numerical inverse failed at row {row} ({what})")

    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if lo is not None:
            lo = np.array(lo, dtype=dtype, copy=True)
            hi = np.array(hi, dtype=dtype, copy=True)
            f_lo, _ = call(lo, all_rows)
            f_hi, _ = call(hi, all_rows)
            done = np.zeros(m, dtype=bool)
            hit = f_lo == z
            x[hit], done[hit] = lo[hit], True
            hit = ~done & (f_hi == z)
            x[hit], done[hit] = hi[hit], True
            x = np.where(done, x, half * lo + half * hi)
        else:
            f0, fp0 = call(x, all_rows)
            if np.isnan(f0).any():
                raise failed(np.isnan(f0), "the map is NaN at the initial guess")
            done = f0 == z
            up = f0 < z                                 # the root lies above x0
            lo, hi = x.copy(), x.copy()
            f_lo, f_hi = f0.copy(), f0.copy()
            step = dtype.type(1.5) * np.abs(z - f0) / fp0
            floor = dtype.type(4) * np.spacing(np.abs(x))
            step = np.where(np.isfinite(step) & (step > floor), step, np.maximum(floor, one))
            open_rows = np.flatnonzero(~done)
            for _ in range(MAX_EXPANSIONS):
                if open_rows.size == 0:
                    break
                u = up[open_rows]
                cand = np.where(u, lo[open_rows] + step[open_rows],
                                hi[open_rows] - step[open_rows])
                if not np.isfinite(cand).all():
                    raise failed(np.isin(all_rows, open_rows[~np.isfinite(cand)]),
                                 f"the target is beyond the map's range in {dtype}")
                f_c, _ = call(cand, open_rows)
                if np.isnan(f_c).any():
                    raise failed(np.isin(all_rows, open_rows[np.isnan(f_c)]), "the map is NaN")
                zc = z[open_rows]
                reached = np.where(u, f_c >= zc, f_c <= zc)
                move_lo = u & ~reached | ~u & reached     # cand becomes lo
                rows_lo, rows_hi = open_rows[move_lo], open_rows[~move_lo]
                lo[rows_lo], f_lo[rows_lo] = cand[move_lo], f_c[move_lo]
                hi[rows_hi], f_hi[rows_hi] = cand[~move_lo], f_c[~move_lo]
                step[open_rows] = step[open_rows] * two
                open_rows = open_rows[~reached]
            if open_rows.size:
                raise failed(np.isin(all_rows, open_rows), "no bracket found")
            exact_lo, exact_hi = ~done & (f_lo == z), ~done & (f_hi == z)
            x = np.where(done, x, np.where(exact_lo, lo, np.where(exact_hi, hi, x)))
            done = done | exact_lo | exact_hi
            t = (z - f_lo) / (f_hi - f_lo)
            start = lo + t * (hi - lo)
            mid = half * lo + half * hi
            ok = np.isfinite(start) & (start > lo) & (start < hi)
            x = np.where(done, x, np.where(ok, start, mid))

        active = np.flatnonzero(~done)
        dx_old = np.full(m, np.inf, dtype=dtype)
        dx = np.full(m, np.inf, dtype=dtype)
        for _ in range(MAX_BISECTIONS):
            if active.size == 0:
                return x
            xa = x[active]
            f, fp = call(xa, active)
            if np.isnan(f).any():
                raise failed(np.isin(all_rows, active[np.isnan(f)]), "the map is NaN")
            za = z[active]
            below, above = f < za, f > za
            lo[active] = np.where(below, xa, lo[active])
            hi[active] = np.where(above, xa, hi[active])
            la, ha = lo[active], hi[active]
            newton = xa - (f - za) / fp
            ulp = np.spacing(np.abs(xa))
            tiny = np.isfinite(newton) & (np.abs(newton - xa) <= dtype.type(4) * ulp)
            fast = (np.abs(two * (f - za)) <= np.abs(dx_old[active] * fp)) \
                | (np.abs(newton - xa) <= dtype.type(NOISE_ULPS) * ulp)
            take = tiny | np.isfinite(newton) & (newton > la) & (newton < ha) & fast
            new = np.where(take, newton, half * la + half * ha)
            dx_old[active] = dx[active]
            dx[active] = new - xa
            adjacent = (ha - la) <= two * np.spacing(np.maximum(np.abs(la), np.abs(ha)))
            exact = ~(below | above)
            finished = exact | tiny | (np.abs(new - xa) <= dtype.type(4) * ulp) | adjacent
            x[active] = np.where(exact, xa, new)
            active = active[~finished]
    raise failed(np.isin(all_rows, active), "no convergence")


def _log_sigmoid_numpy(c):
    return -np.logaddexp(c.dtype.type(0), -c)


def _lse_numpy(v):
    m = v.max(axis=-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0)
    return m[..., 0] + np.log(np.exp(v - m).sum(axis=-1))


def monotone_evaluate_numpy(kind, x, params, scale, units, n_layers):
    """Vectorised ``(f, f')`` of the three kinds at ``x`` ``(m,)`` (module docstring)."""
    dt = x.dtype.type
    if kind == SIGMOIDAL:
        K, n = units, x.shape[0]
        h, t = x[:, None], np.zeros((n, 1), dtype=x.dtype)
        off = 0
        for l in range(n_layers):
            d_in = 1 if l == 0 else K
            d_out = 1 if l == n_layers - 1 else K
            a, la, b = (params[:, off + j * K:off + (j + 1) * K] for j in range(3))
            lw = params[:, off + 3 * K:off + 3 * K + d_out * K].reshape(n, d_out, K)
            u0 = off + 3 * K + d_out * K
            if d_in > 1:
                lu = params[:, u0:u0 + K * d_in].reshape(n, K, d_in)
                pre = np.sum(np.exp(lu) * h[:, None, :], axis=-1)
                q = _lse_numpy(lu + t[:, None, :])
            else:
                pre, q = h, t
            c = a * pre + b
            lp, ln = _log_sigmoid_numpy(c), _log_sigmoid_numpy(-c)
            r = la + lp + ln + q
            log_d = _lse_numpy(lw + lp[:, None, :])
            log_e = _lse_numpy(lw + ln[:, None, :])
            h, t = log_d - log_e, _lse_numpy(lw + r[:, None, :]) - log_d - log_e
            off = u0 + (K * d_in if d_in > 1 else 0)
        return h[:, 0], np.exp(t[:, 0])
    if kind == POLYNOMIAL:
        v = x / dt(scale)
        d = params.shape[1] - 1
        f, df = params[:, d].copy(), np.zeros_like(x)
        for j in range(d - 1, -1, -1):       # Horner (powers times zero coefficients give NaN)
            df = df * v + f
            f = f * v + params[:, j]
        return f, df / dt(scale)
    M = params.shape[1] - 1
    v = (x + dt(scale)) / dt(2 * scale)
    w = (dt(scale) - x) / dt(2 * scale)
    comb = np.array([math.comb(M, i) for i in range(M + 1)], dtype=x.dtype)
    i = np.arange(M + 1, dtype=x.dtype)
    basis = comb * v[:, None] ** i * w[:, None] ** (dt(M) - i)
    f = np.sum(params * basis, axis=1)
    if M == 0:
        return f, np.zeros_like(f)
    comb1 = np.array([math.comb(M - 1, i) for i in range(M)], dtype=x.dtype)
    j = np.arange(M, dtype=x.dtype)
    basis1 = comb1 * v[:, None] ** j * w[:, None] ** (dt(M - 1) - j)
    df = dt(M) * np.sum(np.diff(params, axis=1) * basis1, axis=1) / dt(2 * scale)
    return f, df


def monotone_solve_numpy(kind, z, params, scale, units, n_layers, x0, lo, hi, bracketed, x_out,
                         status):
    """The NumPy twin of :func:`monotone_solve` (same arguments and outputs)."""
    status[...] = 0
    try:
        x_out[...] = solve_increasing(
            lambda x, idx: monotone_evaluate_numpy(kind, x, params[idx], scale, units, n_layers), z, x0,
            lo=lo if bracketed else None, hi=hi if bracketed else None)
    except ValueError as exc:
        message = str(exc)
        code = 2 if "beyond" in message else (1 if "NaN" in message else 3)
        row = int(message.split("at row ")[1].split(" ")[0])
        status[row] = code
