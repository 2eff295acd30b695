r"""Exact inverses of planar and Sylvester layers: safeguarded Newton on monotone scalar equations.

Both layers reduce their inverse to scalar equations of one form (Rezende & Mohamed 2015,
appendix A.1; van den Berg et al. 2018, section 3)::

    g(v) = (v - y) + alpha * tanh(beta * v + gamma) = 0,
    g'(v) = 1 + alpha beta h'(a) = tanh(a)^2 + delta h'(a),     a = beta v + gamma,

with ``h' = 1 - tanh^2 = sech^2`` and ``delta = 1 + alpha beta > 0`` passed in separately (the
caller evaluates it without cancellation, e.g. ``softplus(w^T u)`` for a planar layer), so
``g`` is strictly increasing. Since ``|alpha tanh| <= |alpha|`` the root lies in
``[y - |alpha|, y + |alpha|]``.

``planar_inverse``
    ``alpha = c = w^T u_hat``, ``beta = 1``, ``gamma = b``: per row ``n`` the scalar
    ``a = w^T z`` solving ``a + c tanh(a + b) = y[n] = w^T x_n``.
``sylvester_inverse``
    The upper-triangular system ``y = v + R tanh(R~ v + b)`` (``v = Q^T z``, ``y = Q^T x``),
    solved from the last coordinate to the first: with ``c_i = b_i + sum_{k>i} R~_ik v_k``
    and ``y'_i = y_i - sum_{j>i} R_ij tanh(a_j)``, ``v_i`` solves the scalar equation with
    ``alpha = R_ii``, ``beta = R~_ii``, ``gamma = c_i``, ``delta = delta_i``.

The solver
----------
1. Bracket: ``[y - W, y + W]`` with ``W = |alpha| + 1``, doubled until ``g(lo) <= 0 <= g(hi)``
   holds in floating point too (only needed when ``|y|`` dwarfs ``W``).
2. Start at one fixed-point step ``v = y - alpha tanh(beta y + gamma)`` (inside the bracket).
3. Newton steps ``v - g/g'``, each evaluation shrinking the bracket by the sign of ``g``; a step
   that leaves the bracket, or that is not at least half the step before last (slow progress,
   e.g. near an inflection point where ``g'`` is tiny), is replaced by bisection (the
   "rtsafe" safeguard of Numerical Recipes, section 9.4).
4. Stop when ``g == 0``, when the Newton step no longer changes ``v`` (the step is below half
   an ulp: round-off), or when the bracket holds no float strictly inside.

The result's residual is at the rounding level of ``g`` (``~eps (|v - y| + |alpha|)``); ``v``
itself is then accurate to that divided by ``g'(v)`` (the equation's conditioning, intrinsic
to the map). ``delta`` may underflow to 0 for extreme parameters (``g'`` vanishing at one
point): the bracket then still converges, by bisection.

Kernels take arrays and scalars of one float dtype (float32 or float64) and compute in it (all
constants are built from the arrays' dtype); the caller allocates the outputs.

=====================  ==========================================================================
``planar_inverse``     ``(y, c, b, delta, a_out)``: ``y``, ``a_out`` of shape ``(n,)``; scalars
``sylvester_inverse``  ``(y, r, r_tilde, b, delta, v_out, a_out, t_out)``: ``y``, outputs
                       ``(n, m)``; ``r``, ``r_tilde`` ``(m, m)`` upper triangular (the entries
                       below the diagonal are never read), ``b``, ``delta`` ``(m,)``;
                       ``a_out = v R~^T + b`` and ``t_out = tanh(a_out)`` as computed
=====================  ==========================================================================

``<kernel>_numpy`` are vectorised NumPy twins written separately (all rows at once, a masked
Newton/bisection iteration started at ``v = y``), used by the parity tests.

References
----------
D. J. Rezende and S. Mohamed, "Variational Inference with Normalizing Flows", ICML 2015,
arXiv:1505.05770 (appendix A.1).

R. van den Berg, L. Hasenclever, J. M. Tomczak and M. Welling, "Sylvester Normalizing Flows
for Variational Inference", UAI 2018, arXiv:1803.05649.

W. H. Press, S. A. Teukolsky, W. T. Vetterling and B. P. Flannery, "Numerical Recipes",
3rd ed., 2007, section 9.4 (``rtsafe``).

Examples
--------
Solve ``a + 0.5 tanh(a + 0.1) = 1`` (``c = 0.5``, ``b = 0.1``, ``delta = 1 + c``):

>>> import numpy as np
>>> from refflow.kernels.planar import planar_inverse
>>> y = np.array([1.0, -2.0])
>>> a = np.empty(2)
>>> planar_inverse(y, np.float64(0.5), np.float64(0.1), np.float64(1.5), a)
>>> bool(np.allclose(a + 0.5 * np.tanh(a + 0.1), y, rtol=0, atol=1e-15))
True
"""

import math

import numpy as np

from . import njit

__all__ = ["planar_inverse", "sylvester_inverse", "planar_inverse_numpy",
           "sylvester_inverse_numpy", "MAX_ITER"]

#: Iteration cap of the scalar solvers. Newton converges in under ten steps on ordinary inputs;
#: the cap only matters for pathological ones (bisection over the whole float range takes
#: ~1100 halvings).
MAX_ITER = 2000


# ---------------------------------------------------------------------------------------------
# numba kernels (constants from the arrays' dtype: a literal 2.0 would promote float32 to float64)
# ---------------------------------------------------------------------------------------------


@njit
def _residual(v, y, alpha, beta, gamma):
    """``g(v) = (v - y) + alpha tanh(beta v + gamma)``."""
    return (v - y) + alpha * math.tanh(beta * v + gamma)


@njit
def _solve(y, alpha, beta, gamma, delta, one, two, four, half):
    """The root ``v`` of ``(v - y) + alpha tanh(beta v + gamma)`` (module docstring, "The
    solver"); ``delta = 1 + alpha beta`` evaluated accurately by the caller."""
    zero = one - one
    width = abs(alpha) + one
    lo = y - width
    for _ in range(2100):  # widen until the signs hold in floating point (|y| >> width)
        if not _residual(lo, y, alpha, beta, gamma) > zero:
            break
        width = width * two
        lo = y - width
    width = abs(alpha) + one
    hi = y + width
    for _ in range(2100):
        if not _residual(hi, y, alpha, beta, gamma) < zero:
            break
        width = width * two
        hi = y + width
    v = y - alpha * math.tanh(beta * y + gamma)
    if not (v > lo and v < hi):
        v = lo + half * (hi - lo)
    dx_before = hi - lo
    dx = dx_before
    for _ in range(MAX_ITER):
        a = beta * v + gamma
        t = math.tanh(a)
        g = (v - y) + alpha * t
        if g == zero:
            break
        if g < zero:
            lo = v
        else:
            hi = v
        e = math.exp(-two * abs(a))
        hp = four * e / ((one + e) * (one + e))        # sech^2(a), no overflow
        step = g / (t * t + hp * delta)
        newton = v - step
        if newton == v:                                 # the step is below half an ulp
            break
        if newton > lo and newton < hi and abs(two * step) <= abs(dx_before):
            dx_before = dx
            dx = step
            v = newton
        else:
            mid = lo + half * (hi - lo)
            if not (mid > lo and mid < hi):             # no float strictly inside the bracket
                break
            dx_before = dx
            dx = v - mid
            v = mid
    return v


@njit
def planar_inverse(y, c, b, delta, a_out):
    """Per row, ``a_out[n]`` solving ``a + c tanh(a + b) = y[n]`` (``delta = 1 + c > 0``).

    Parameters
    ----------
    y : ndarray of shape (n,)
        ``w^T x_n``.
    c, b, delta : scalars of the dtype of ``y``
        ``c = w^T u_hat > -1``, the bias, and ``1 + c`` evaluated without cancellation.
    a_out : ndarray of shape (n,)
        Output: ``w^T z_n``.
    """
    one = y.dtype.type(1)
    two = one + one
    four = two + two
    half = one / two
    for n in range(y.shape[0]):
        a_out[n] = _solve(y[n], c, one, b, delta, one, two, four, half)


@njit
def sylvester_inverse(y, r, r_tilde, b, delta, v_out, a_out, t_out):
    """Solve ``y_n = v_n + R tanh(R~ v_n + b)`` per row, from the last coordinate to the first.

    Parameters
    ----------
    y : ndarray of shape (n, m)
        ``Q^T x_n``.
    r, r_tilde : ndarray of shape (m, m)
        Upper triangular (only the upper triangle is read).
    b, delta : ndarray of shape (m,)
        Bias and ``delta_i = 1 + R_ii R~_ii > 0`` evaluated without cancellation.
    v_out, a_out, t_out : ndarray of shape (n, m)
        Outputs: ``v_n = Q^T z_n``, ``a_n = R~ v_n + b`` and ``tanh(a_n)``.
    """
    one = y.dtype.type(1)
    two = one + one
    four = two + two
    half = one / two
    m = y.shape[1]
    for n in range(y.shape[0]):
        for i in range(m - 1, -1, -1):
            yi = y[n, i]
            ci = b[i]
            for j in range(i + 1, m):
                yi = yi - r[i, j] * t_out[n, j]
                ci = ci + r_tilde[i, j] * v_out[n, j]
            v = _solve(yi, r[i, i], r_tilde[i, i], ci, delta[i], one, two, four, half)
            a = r_tilde[i, i] * v + ci
            v_out[n, i] = v
            a_out[n, i] = a
            t_out[n, i] = math.tanh(a)


# ---------------------------------------------------------------------------------------------
# NumPy twins: every row at once, masked Newton/bisection started at v = y, no slow-progress
# test; written from the formulas, independent of the kernels above.
# ---------------------------------------------------------------------------------------------


def _solve_numpy(y, alpha, beta, gamma, delta):
    """Vectorised roots of ``(v - y) + alpha tanh(beta v + gamma)``; all arguments broadcast."""
    y, alpha, beta, gamma, delta = np.broadcast_arrays(y, alpha, beta, gamma, delta)
    dtype = y.dtype
    res = lambda v: (v - y) + alpha * np.tanh(beta * v + gamma)   # noqa: E731
    width = np.abs(alpha) + dtype.type(1)
    lo, hi = y - width, y + width
    for _ in range(2100):
        bad_lo, bad_hi = res(lo) > 0, res(hi) < 0
        if not (bad_lo.any() or bad_hi.any()):
            break
        width = np.where(bad_lo | bad_hi, 2 * width, width)
        lo = np.where(bad_lo, y - width, lo)
        hi = np.where(bad_hi, y + width, hi)
    v = y.copy()
    active = np.ones(y.shape, dtype=bool)
    for _ in range(MAX_ITER):
        a = beta * v + gamma
        t = np.tanh(a)
        g = (v - y) + alpha * t
        lo = np.where(active & (g < 0), v, lo)
        hi = np.where(active & (g > 0), v, hi)
        with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
            slope = 1 + alpha * beta / np.cosh(a) ** 2
            slope = np.where(slope > 0.5, slope, t * t + delta / np.cosh(a) ** 2)
            newton = v - g / slope
        mid = lo + (hi - lo) / 2
        inside = (newton > lo) & (newton < hi)
        done = (g == 0) | (newton == v) | (~inside & ~((mid > lo) & (mid < hi)))
        step = active & ~done
        v = np.where(step, np.where(inside, newton, mid), v)
        active = step
        if not active.any():
            break
    return v


def planar_inverse_numpy(y, c, b, delta, a_out):
    """NumPy twin of :func:`planar_inverse` (same signature and outputs)."""
    one = y.dtype.type(1)
    a_out[...] = _solve_numpy(y, y.dtype.type(c), one, y.dtype.type(b), y.dtype.type(delta))


def sylvester_inverse_numpy(y, r, r_tilde, b, delta, v_out, a_out, t_out):
    """NumPy twin of :func:`sylvester_inverse` (same signature and outputs)."""
    m = y.shape[1]
    for i in range(m - 1, -1, -1):
        later = slice(i + 1, m)
        yi = y[:, i] - t_out[:, later] @ r[i, later]
        ci = b[i] + v_out[:, later] @ r_tilde[i, later]
        v = _solve_numpy(yi, r[i, i], r_tilde[i, i], ci, delta[i])
        v_out[:, i] = v
        a_out[:, i] = r_tilde[i, i] * v + ci
        t_out[:, i] = np.tanh(a_out[:, i])
