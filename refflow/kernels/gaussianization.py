r"""Numerical inverse of the Gaussianization transformer, one element at a time.

:class:`refflow.Gaussianization` maps ``x`` to ``z = Phi^{-1}(eps/2 + (1 - eps) C(x))`` with the
mixture CDF ``C(x) = sum_k w_k F(u_k)``, ``u_k = (x - a_k) p_k`` (``form = 0``) or
``u_k = x p_k + a_k`` (``form = 1``), ``p_k > 0`` and ``F`` the standard normal (``kernel = 0``)
or logistic (``kernel = 1``) CDF. The inverse is solved in log-CDF space, where both tails are
well conditioned: with the target ``t`` prepared by the caller,

* ``side = 0`` (``z <= 0``): ``G(x) = log C(x) - t``,
  ``t = log((Phi(z) - eps/2) / (1 - eps))``;
* ``side = 1`` (``z > 0``): ``G(x) = t - log(1 - C(x))``,
  ``t = log((Phi(-z) - eps/2) / (1 - eps))``;

both strictly increasing, ``G' = C'(x) / C`` or ``C'(x) / (1 - C)``, every log a log-sum-exp
over the components (``log F`` and ``log(1 - F)`` in closed form: ``log_ndtr`` from ``erfc``
and, below ``cut``, its asymptotic series; ``-softplus(-u)`` for the logistic).

The solver (per element)
------------------------
1. Bracket: ``[lo, hi]`` from the caller (the components' own quantiles at the target level:
   every ``F(u_k)`` is below it at ``lo`` and above it at ``hi``, so the mixture is too), widened
   by doubling steps until ``G(lo) <= 0 <= G(hi)`` also holds in floating point.
2. Start at the Newton point of the bracket's end with the smaller ``|G|`` (else the
   false-position point); safeguarded Newton as in :mod:`refflow.kernels.bnaf`
   (bisection whenever a step leaves the bracket or does not halve).
3. Stop when ``G == 0``, after a Newton step of at most 4 ulps of ``x``, when a Newton step no
   longer changes ``x``, or when no float lies strictly inside the bracket.
4. Check ``|G| <= RESOLVE_ULPS eps (1 + |t|)``; otherwise ``C`` jumps between adjacent floats
   (extreme slopes) and no float64 ``x`` solves the element: ``status[n] = -(i + 1)``, ``x`` NaN.

Tolerance and worst case: ``|G|`` at its rounding level (a few ulps of ``log C``), i.e. ``x``
within a few ulps of the root plus that over ``G'``; typically 4-8 evaluations, at most
:data:`MAX_ITER` (bisection down to adjacent floats).

Arrays: ``target``, ``lo``, ``hi``, ``x_out`` ``(n, d)``; ``side`` int64 ``(n, d)``; ``a``,
``p``, ``logp = log p``, ``logw`` ``(R, d, K)`` with ``R = 1`` (shared) or ``n`` (per row);
``consts = kernel_constants(dtype)``: ``cut``, ``1/sqrt(2)`` and ``log sqrt(2 pi)`` in the
dtype, ``cut`` being the argument below which ``log_ndtr`` uses its asymptotic series (-37 in
float64, -12 in float32, where ``erfc`` still has full precision). Every constant comes from the
arrays' dtype (float32 computes in float32).

``gaussianization_inverse_numpy`` is the vectorised NumPy twin (scipy's ``log_ndtr``,
masked Newton/bisection over all elements at once), used by the parity tests.

References
----------
S. S. Chen, R. A. Gopinath, "Gaussianization", NeurIPS 2000.
C. Meng, Y. Song, J. Song, S. Ermon, "Gaussianization Flows", AISTATS 2020, arXiv:2003.01941.

Examples
--------
One Gaussian component with ``p = 1``, ``a = 0`` is the identity: ``x = z``.

>>> import numpy as np
>>> from scipy.special import log_ndtr
>>> from refflow.kernels.gaussianization import gaussianization_inverse
>>> z = np.array([[-1.5, 0.7]])
>>> side = (z > 0).astype(np.int64); target = log_ndtr(np.where(side == 1, -z, z))
>>> ones = np.ones((1, 2, 1)); x = np.empty_like(z); status = np.zeros(1, dtype=np.int64)
>>> consts = np.array([-37.0, 1 / np.sqrt(2), 0.5 * np.log(2 * np.pi)])
>>> gaussianization_inverse(target, side, z - 1, z + 1, 0 * ones, ones, 0 * ones, 0 * ones, 0, 0,
...                         consts, x, status)
>>> bool(np.allclose(x, z, rtol=0, atol=1e-15))
True
"""

import math

import numpy as np
from scipy.special import log_expit, log_ndtr

from . import njit

__all__ = ["gaussianization_inverse", "gaussianization_inverse_numpy", "log_ndtr_kernel",
           "kernel_constants", "MAX_ITER", "RESOLVE_ULPS"]

#: Refinement steps per element (bisection of any float64 bracket to adjacent floats).
MAX_ITER = 2200
#: A root's ``|G|`` may be at most this many ulps of ``1 + |t|`` (measured at most 4);
#: beyond, ``C`` jumps between adjacent floats and the element has no float64 root.
RESOLVE_ULPS = 64

_SQRT1_2 = 0.7071067811865476        # 1/sqrt(2)
_LOG_SQRT_2PI = 0.9189385332046728   # log(sqrt(2 pi))
#: Where ``log_ndtr_kernel`` switches to its asymptotic series: ``erfc`` keeps full precision
#: down to these arguments in each dtype.
ASYMPTOTIC_CUT = {np.dtype(np.float64): -37.0, np.dtype(np.float32): -12.0}


def kernel_constants(dtype):
    """``consts`` for :func:`gaussianization_inverse`: ``[cut, 1/sqrt(2), log sqrt(2 pi)]``."""
    dtype = np.dtype(dtype)
    return np.array([ASYMPTOTIC_CUT[dtype], _SQRT1_2, _LOG_SQRT_2PI], dtype=dtype)


@njit
def log_ndtr_kernel(u, cut, one, r, c):
    """``log Phi(u)`` for one value: ``log1p(-erfc(u/sqrt2)/2)`` for ``u > 0``,
    ``log(erfc(-u/sqrt2)/2)`` down to ``cut``, below it the asymptotic series
    ``-u^2/2 - log(-u) - log sqrt(2 pi) + log(sum_k (-1)^k (2k-1)!! / u^{2k})`` (8 terms:
    truncation below 2e-19 at ``|u| >= 37``, 1e-11 at ``|u| >= 12``). ``one``, ``r = 1/sqrt(2)``
    and ``c = log sqrt(2 pi)`` are scalars of the compute dtype."""
    two = one + one
    half = one / two
    if u > 0:
        return math.log1p(-half * math.erfc(u * r))
    if u > cut:
        return math.log(half * math.erfc(-u * r))
    y = one / (u * u)
    s = one
    term = one
    odd = one
    for _ in range(8):
        term = -term * odd * y
        s = s + term
        odd = odd + two
    return -half * u * u - math.log(-u) - c + math.log(s)


@njit
def _log_tail(code, side, u, cut, one, r, c):
    """``log F(u)`` (``side = 0``) or ``log(1 - F(u))`` (``side = 1``)."""
    if side == 1:
        u = -u
    if code == 0:
        return log_ndtr_kernel(u, cut, one, r, c)
    return -(max(-u, one - one) + math.log1p(math.exp(-abs(u))))      # -softplus(-u)


@njit
def _log_pdf(code, u, one, c):
    if code == 0:
        return -(one / (one + one)) * u * u - c
    return -abs(u) - (one + one) * math.log1p(math.exp(-abs(u)))


@njit
def _g(x, s, i, side, target, a, p, logp, logw, form, code, cut, one, r, c):
    """``(G(x), G'(x))`` for element ``(s, i)`` (module docstring): one pass over the
    components with running log-sum-exps of ``log w + log F`` and ``log w + log p + log f``."""
    top = one
    acc = one
    top_d = one
    acc_d = one
    for k in range(a.shape[2]):
        pk = p[s, i, k]
        u = (x - a[s, i, k]) * pk if form == 0 else x * pk + a[s, i, k]
        lv = logw[s, i, k] + _log_tail(code, side, u, cut, one, r, c)
        ld = logw[s, i, k] + logp[s, i, k] + _log_pdf(code, u, one, c)
        if k == 0:
            top, top_d = lv, ld
        else:
            if lv > top:
                acc = acc * math.exp(top - lv) + one
                top = lv
            else:
                acc += math.exp(lv - top)
            if ld > top_d:
                acc_d = acc_d * math.exp(top_d - ld) + one
                top_d = ld
            else:
                acc_d += math.exp(ld - top_d)
    log_v = top + math.log(acc)
    slope = math.exp(top_d + math.log(acc_d) - log_v)
    if side == 0:
        return log_v - target, slope
    return target - log_v, slope


@njit
def gaussianization_inverse(target, side, lo, hi, a, p, logp, logw, form, kernel, consts,
                            x_out, status):
    """Solve ``G(x) = 0`` for every element (module docstring); ``x_out`` is the output,
    ``status[n]`` 0, or ``-(i + 1)`` for the first element ``(n, i)`` without a float root."""
    one = target.dtype.type(1)
    two = one + one
    half = one / two
    zero = one - one
    eps = one
    while one + eps / two != one:
        eps = eps / two
    ulps = (two + two) * eps
    resolve = target.dtype.type(RESOLVE_ULPS) * eps
    inf = two
    while inf < inf * two:          # squaring overflows to inf in a few steps, in the dtype
        inf = inf * inf
    nan = inf - inf
    cut = consts[0]
    r_ = consts[1]
    c_ = consts[2]
    n, dim = target.shape
    shared = a.shape[0] == 1
    for s in range(n):
        r = 0 if shared else s
        status[s] = 0
        for i in range(dim):
            sd = side[s, i]
            t_ = target[s, i]
            lo_ = lo[s, i]
            hi_ = hi[s, i]
            g_lo, d_lo = _g(lo_, r, i, sd, t_, a, p, logp, logw, form, kernel, cut, one,
                                r_, c_)
            width = max(hi_ - lo_, one)
            for _ in range(2100):
                if not g_lo > zero:
                    break
                hi_ = lo_
                lo_ = lo_ - width
                width = width * two
                g_lo, d_lo = _g(lo_, r, i, sd, t_, a, p, logp, logw, form, kernel, cut, one,
                                r_, c_)
            g_hi, d_hi = _g(hi_, r, i, sd, t_, a, p, logp, logw, form, kernel, cut, one,
                                r_, c_)
            width = max(hi_ - lo_, one)
            for _ in range(2100):
                if not g_hi < zero:
                    break
                lo_ = hi_
                g_lo = g_hi
                d_lo = d_hi
                hi_ = hi_ + width
                width = width * two
                g_hi, d_hi = _g(hi_, r, i, sd, t_, a, p, logp, logw, form, kernel, cut, one,
                                r_, c_)
            if g_lo == zero:
                x_out[s, i] = lo_
                continue
            if g_hi == zero:
                x_out[s, i] = hi_
                continue
            v = lo_
            if -g_lo <= g_hi and d_lo > zero:       # Newton from the better end of the bracket
                v = lo_ - g_lo / d_lo
            elif d_hi > zero:
                v = hi_ - g_hi / d_hi
            if not (v > lo_ and v < hi_):
                v = lo_ + (hi_ - lo_) * (-g_lo / (g_hi - g_lo))
            if not (v > lo_ and v < hi_):
                v = lo_ + half * (hi_ - lo_)
            dx_before = hi_ - lo_
            dx = dx_before
            for _ in range(MAX_ITER):
                g, dg = _g(v, r, i, sd, t_, a, p, logp, logw, form, kernel, cut, one, r_, c_)
                if g == zero:
                    break
                if g < zero:
                    lo_ = v
                else:
                    hi_ = v
                newton = v
                step = zero
                if dg > zero:   # G' can underflow to 0 far in a tail: bisect then
                    step = g / dg
                    newton = v - step
                    if newton == v:
                        break
                if dg > zero and newton > lo_ and newton < hi_ \
                        and abs(two * step) <= abs(dx_before):
                    dx_before = dx
                    dx = step
                    v = newton
                    if abs(step) <= ulps * abs(v):   # converged to a few ulps
                        break
                else:
                    mid = lo_ + half * (hi_ - lo_)
                    if not (mid > lo_ and mid < hi_):
                        break
                    dx_before = dx
                    dx = v - mid
                    v = mid
            x_out[s, i] = v
            # a root leaves |G| at the rounding level of log C; more means C jumps between
            # adjacent floats (slopes e^{+-50}): no float64 x solves this element
            g = _g(v, r, i, sd, t_, a, p, logp, logw, form, kernel, cut, one, r_, c_)[0]
            if not abs(g) <= resolve * (one + abs(t_)):
                if status[s] == 0:
                    status[s] = -(i + 1)
                x_out[s, i] = nan


# ---------------------------------------------------------------------------------------------
# NumPy twin (scipy's log_ndtr; all elements at once, masked Newton/bisection)
# ---------------------------------------------------------------------------------------------


def _g_numpy(x, side, target, a, p, logp, logw, form, kernel):
    u = (x[..., None] - a) * p if form == 0 else x[..., None] * p + a
    if kernel == 0:
        lf, lsf, lpdf = log_ndtr(u), log_ndtr(-u), -u * u / 2 - _LOG_SQRT_2PI
    else:
        lf, lsf = log_expit(u), log_expit(-u)
        lpdf = lf + lsf
    lv = logw + np.where(side[..., None] == 0, lf, lsf)
    ld = logw + logp + lpdf
    top, top_d = lv.max(axis=-1), ld.max(axis=-1)
    log_v = top + np.log(np.exp(lv - top[..., None]).sum(axis=-1))
    log_d = top_d + np.log(np.exp(ld - top_d[..., None]).sum(axis=-1))
    g = np.where(side == 0, log_v - target, target - log_v)
    return g.astype(x.dtype), np.exp(log_d - log_v).astype(x.dtype)


def gaussianization_inverse_numpy(target, side, lo, hi, a, p, logp, logw, form, kernel, consts,
                                  x_out, status):
    """NumPy twin of :func:`gaussianization_inverse` (same signature and output; it does not
    check the roots' residuals: ``status`` is set to 0)."""
    status[...] = 0
    lo, hi = lo.copy(), hi.copy()
    g_lo = _g_numpy(lo, side, target, a, p, logp, logw, form, kernel)[0]
    width = np.maximum(hi - lo, 1)
    for _ in range(2100):
        move = g_lo > 0
        if not move.any():
            break
        hi = np.where(move, lo, hi)
        lo = np.where(move, lo - width, lo)
        width = np.where(move, 2 * width, width)
        g_lo = _g_numpy(lo, side, target, a, p, logp, logw, form, kernel)[0]
    g_hi = _g_numpy(hi, side, target, a, p, logp, logw, form, kernel)[0]
    width = np.maximum(hi - lo, 1)
    for _ in range(2100):
        move = g_hi < 0
        if not move.any():
            break
        lo = np.where(move, hi, lo)
        g_lo = np.where(move, g_hi, g_lo)
        hi = np.where(move, hi + width, hi)
        width = np.where(move, 2 * width, width)
        g_hi = _g_numpy(hi, side, target, a, p, logp, logw, form, kernel)[0]
    v = (lo + hi) / 2
    v = np.where(g_lo == 0, lo, np.where(g_hi == 0, hi, v))
    active = (g_lo != 0) & (g_hi != 0)
    for _ in range(MAX_ITER):
        if not active.any():
            break
        g, dg = _g_numpy(v, side, target, a, p, logp, logw, form, kernel)
        lo = np.where(active & (g < 0), v, lo)
        hi = np.where(active & (g > 0), v, hi)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            newton = v - g / dg
        mid = lo + (hi - lo) / 2
        inside = (newton > lo) & (newton < hi)
        done = (g == 0) | (newton == v) | (~inside & ~((mid > lo) & (mid < hi)))
        step = active & ~done
        v = np.where(step, np.where(inside, newton, mid), v)
        active = step
    x_out[...] = v
