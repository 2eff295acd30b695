"""Rational-quadratic spline kernels (``refflow.kernels.splines``) against their NumPy twins,
finite differences and the spline's own exact properties.

Runs in both modes: compiled (default) and plain Python (``REFFLOW_DISABLE_NUMBA=1`` or
``NUMBA_DISABLE_JIT=1``; batches shrink, the test sized for compiled code is skipped, and
``-k "not million"`` deselects it). Knots are per element, so one "row" below is one element with
its own ``K + 1`` knots; finite differences perturb one knot column of every row at once and give
every row's derivative in one pair of calls.
"""

import numpy as np
import pytest

from refflow.kernels import NUMBA_DISABLED, njit
from refflow.kernels.splines import (
    rqs_forward, rqs_forward_numpy, rqs_forward_vjp, rqs_forward_vjp_numpy,
    rqs_inverse, rqs_inverse_numpy, rqs_inverse_vjp, rqs_inverse_vjp_numpy,
)

B = 3.0
K = 8
EPS = np.finfo(np.float64).eps

#: Kernel vs NumPy twin: the same functions evaluated along different paths (the twin applies
#: the chain rule term by term, and differentiates the inverse in the bin's own coordinates; the
#: kernel uses pre-simplified products), so results differ by a few ulps times the mild
#: cancellation in dy/dx0 and dL/dx0 (terms of the row's own scale; see cotangent_error).
#: Worst seen over 12 seeds x 2e4 rows per kind: 6.7e-15 (nsf, generic), 3.8e-14 (extreme).
RTOL_PARITY = 1e-13
#: On "extreme" knots (derivatives 1e-3..1e3) ``dL/dx = L_xi / w`` is ill-conditioned:
#: ``L_xi = M_xi/M - 2 Q_xi/Q`` at xi = 0 is ``2 (s^2 + s d0 - d0^2 - d0 d1) / (s d0)``, whose
#: terms cancel without bound when ``d0 d1 ~ s^2 + s d0``. Kernel and twin meet RTOL_PARITY there
#: only because both evaluate ``L_xi`` with the same operations (``a/M - D(1-2xi)/Q``, two
#: divisions): a kernel using ``a * (1/M)`` differed from the twin by 8e-12 on seed 102, and was
#: 3x less accurate. So test_parity_cotangents_extreme also measures both against the twin in
#: long double: the kernel's worst error must be <= AS_ACCURATE x the float64 twin's + RTOL_PARITY.
AS_ACCURATE = 2
LONG_DOUBLE_EXTENDED = np.finfo(np.longdouble).eps < 1e-18      # x86-64 Linux: 80-bit
#: Round trip in float64 where the inverse is well conditioned; where ``g = dy/dx`` is small the
#: bound adds ``VALUE_ULPS * eps * scale / g``: the forward pass's own rounding of ``y`` moved
#: through ``dx/dy = 1/g`` (what any backward-stable inverse gives; see
#: test_inverse_backward_stable).
RTOL_ROUND_TRIP = 1e-12
#: Rounding of one forward evaluation ``y = y0 + h R`` (or ``y1 - h (1 - R)``): ~5 roundings of
#: quantities no larger than the row's knot heights or the value, so ``8 eps * scale(y, yk)``.
VALUE_ULPS = 8
#: Two evaluations of ``log g`` compared (e.g. the inverse's at its root and the forward's at the
#: rounded output): ``g = (s/Q)^2 M`` takes ~8 roundings in each, so ``16 eps`` absolute in
#: ``log g``, scaled by ``max(1, |log g|)`` for the rounding of the log itself.
LOG_DET_ULPS = 16
#: Analytic derivatives vs central differences with step ~7.6e-6 on bins >= 0.18 wide: the
#: truncation error is ~(step / width)^2 ~ 2e-9 relative, rounding ~eps |phi| / step ~ 1e-10.
RTOL_FD = 1e-6
#: float32 vs float64 on the same (float32) inputs: ~30 roundings of 6e-8 each, amplified by at
#: most ~10 by the cancellations in the knot cotangents on the moderate knots used.
RTOL_FLOAT32 = 2e-5

KINDS = ("nsf", "generic", "extreme")


# ---------------------------------------------------------------------------------------------
# knot and point generators (seeded NumPy only)
# ---------------------------------------------------------------------------------------------


def _softplus(u):
    return np.logaddexp(0.0, u)


def _positions(fractions, lo, hi):
    """Knots at ``lo + (hi - lo) * cumsum(fractions)``, with both ends exact."""
    n = fractions.shape[0]
    c = np.concatenate([np.zeros((n, 1)), np.cumsum(fractions, axis=1)], axis=1)
    knots = lo[:, None] + (hi - lo)[:, None] * c
    knots[:, 0] = lo
    knots[:, -1] = hi
    assert np.all(np.diff(knots, axis=1) > 0)
    return knots


def _softmax(u):
    e = np.exp(u - u.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def make_knots(rng, n, kind, k=K):
    """``(xk, yk, dk)``, each ``(n, k + 1)``.

    nsf       DESIGN's parameterization with N(0, 1) unnormalized values: fractions
              ``1e-3 + (1 - 1e-3 k) softmax``, knots on [-B, B], inner derivatives
              ``1e-3 + softplus``, boundary derivatives 1 (identity tails).
    generic   distrax-like: random end knots (x and y ranges differ), all derivatives random
              (boundary slopes included), ``exp(N(0, 1))``.
    extreme   on [-B, B], about half the bins 1e-6 of the range wide (heights likewise,
              independently), every derivative log-uniform on [1e-3, 1e3] (boundaries too).
    moderate  well-conditioned, for finite differences: fractions >= 0.25/k, derivatives in
              [e^-1, e].
    """
    lo, hi = np.full(n, -B), np.full(n, B)
    if kind == "nsf":
        frac = [1e-3 + (1 - 1e-3 * k) * _softmax(rng.normal(size=(n, k))) for _ in range(2)]
        xk, yk = _positions(frac[0], lo, hi), _positions(frac[1], lo, hi)
        dk = np.ones((n, k + 1))
        dk[:, 1:k] = 1e-3 + _softplus(rng.normal(size=(n, k - 1)))
    elif kind == "generic":
        frac = [1e-4 + (1 - 1e-4 * k) * _softmax(rng.normal(size=(n, k))) for _ in range(2)]
        xk = _positions(frac[0], rng.uniform(-4, -1, n), rng.uniform(1, 4, n))
        yk = _positions(frac[1], rng.uniform(-5, 0, n), rng.uniform(0.5, 5, n))
        dk = np.exp(rng.normal(size=(n, k + 1)))
    elif kind == "extreme":
        frac = []
        for _ in range(2):
            tiny = rng.random((n, k)) < 0.5
            tiny[np.arange(n), rng.integers(0, k, n)] = False      # at least one wide bin
            wide = np.where(tiny, 0.0, rng.uniform(0.1, 1.0, (n, k)))
            wide *= (1 - 1e-6 * tiny.sum(axis=1, keepdims=True)) / wide.sum(axis=1, keepdims=True)
            frac.append(np.where(tiny, 1e-6, wide))
        xk, yk = _positions(frac[0], lo, hi), _positions(frac[1], lo, hi)
        dk = 10.0 ** rng.uniform(-3, 3, (n, k + 1))
    elif kind == "moderate":
        frac = [0.25 / k + 0.75 * _softmax(0.5 * rng.normal(size=(n, k))) for _ in range(2)]
        xk, yk = _positions(frac[0], lo, hi), _positions(frac[1], lo, hi)
        dk = np.exp(rng.uniform(-1, 1, (n, k + 1)))
    else:
        raise ValueError(kind)
    return xk, yk, dk


def mixed_points(rng, knots):
    """One point per row, in the knots' dtype: uniform over the knots' span widened by 1 (tails
    included), exactly at a random knot (ends included), one ulp (of that dtype) either side of
    a knot, far outside (+-1e3), or uniform inside a random bin."""
    n, k1 = knots.shape
    rows = np.arange(n)
    j = rng.integers(0, k1, n)
    at = knots[rows, j]
    span = np.stack([knots[:, 0] - 1, knots[:, -1] + 1], axis=1)
    kb = rng.integers(0, k1 - 1, n)
    inside = knots[rows, kb] + rng.random(n) * (knots[rows, kb + 1] - knots[rows, kb])
    choices = [
        rng.uniform(span[:, 0], span[:, 1]),
        at,
        np.nextafter(at, np.where(rng.random(n) < 0.5, -np.inf, np.inf).astype(at.dtype)),
        np.where(rng.random(n) < 0.5, -1e3, 1e3),
        inside,
    ]
    which = rng.choice(len(choices), size=n, p=[0.35, 0.15, 0.15, 0.05, 0.3])
    return np.choose(which, choices).astype(knots.dtype)


def away_points(rng, knots, margin=0.05):
    """One point per row at least ``margin`` (relative to the bin width; 0.05 in the tails) away
    from every knot: inside a random bin with ``xi`` in [margin, 1 - margin], or in a tail."""
    n, k1 = knots.shape
    rows = np.arange(n)
    kb = rng.integers(-1, k1, n)                                  # -1 and k1-1: the two tails
    kc = np.clip(kb, 0, k1 - 2)
    x0, x1 = knots[rows, kc], knots[rows, kc + 1]
    inside = x0 + rng.uniform(margin, 1 - margin, n) * (x1 - x0)
    left = knots[:, 0] - rng.uniform(0.05, 2, n)
    right = knots[:, -1] + rng.uniform(0.05, 2, n)
    return np.where(kb < 0, left, np.where(kb == k1 - 1, right, inside))


# ---------------------------------------------------------------------------------------------
# calling the kernels
# ---------------------------------------------------------------------------------------------


def forward(x, xk, yk, dk, impl=rqs_forward):
    y, ld = np.empty_like(x), np.empty_like(x)
    impl(x, xk, yk, dk, y, ld)
    return y, ld


def inverse(y, xk, yk, dk, impl=rqs_inverse):
    x, ld = np.empty_like(y), np.empty_like(y)
    impl(y, xk, yk, dk, x, ld)
    return x, ld


def vjp(v, xk, yk, dk, out_bar, ld_bar, impl=rqs_forward_vjp):
    """Cotangents ``(input_bar, xk_bar, yk_bar, dk_bar)``, outputs pre-filled with NaN to check
    that the kernel overwrites every entry."""
    in_bar = np.full_like(v, np.nan)
    bars = [np.full_like(xk, np.nan) for _ in range(3)]
    impl(v, xk, yk, dk, out_bar, ld_bar, in_bar, *bars)
    return (in_bar, *bars)


def rel(a, b):
    """``max |a - b| / max(1, |b|)``, for values and log-dets."""
    return float(np.max(np.abs(a - b) / np.maximum(1.0, np.abs(b))))


def _stack(arrays):
    return np.column_stack([np.reshape(v, (v.shape[0], -1)) for v in arrays])


def rowwise(a_list, b_list, row_scale=None):
    """Worst over rows of the row's normwise error ``max_j |a - b| / max_j |b|`` over all of
    the row's cotangents (input and every knot entry together), or relative to ``row_scale``."""
    a, b = _stack(a_list), _stack(b_list)
    if row_scale is None:
        row_scale = np.max(np.abs(b), axis=1)
    assert np.all(row_scale > 0)
    return float(np.max(np.max(np.abs(a - b), axis=1) / row_scale))


def cotangent_error(kernel, reference, args, dtype=None):
    """Worst row error of ``kernel``'s cotangents against ``reference`` (run on ``args`` cast to
    ``dtype``, e.g. long double), for the cotangent pairs ``(out_bar, 0)``, ``(0, ld_bar)`` and
    ``(out_bar, ld_bar)``. The first two are relative to their own row maxima; the pair is
    relative to the sum of both: its entries are sums ``out_bar d/dtheta + ld_bar dL/dtheta``
    that cancel in the odd row (random cotangents near the ratio that zeroes ``x_bar``), and a
    sum can only be accurate relative to its terms."""
    v, xk, yk, dk, out_bar, ld_bar = args
    zero = np.zeros_like(out_bar)
    cast = (lambda a: a) if dtype is None else (lambda a: a.astype(dtype))   # noqa: E731

    def run(impl, ob, lb, convert):
        return [convert(b) for b in vjp(*map(convert, (v, xk, yk, dk, ob, lb)), impl)]

    pairs = [(out_bar, zero), (zero, ld_bar), (out_bar, ld_bar)]
    refs = [run(reference, ob, lb, cast) for ob, lb in pairs]
    scales = [np.max(np.abs(_stack(r)), axis=1) for r in refs[:2]]
    scales.append(scales[0] + scales[1])
    return max(rowwise([cast(b) for b in run(kernel, ob, lb, lambda a: a)], ref, sc)
               for (ob, lb), ref, sc in zip(pairs, refs, scales))


def scale(v, knots):
    """Per row, the size of the quantities an evaluation rounds: ``max(1, |v|, max |knots|)``
    (``y = y0 + h R`` rounds at the size of ``y0``, ``xi = (x - x0)/w`` at the size of ``x0``)."""
    return np.maximum(np.maximum(1.0, np.abs(v)), np.abs(knots).max(axis=1))


def forward_error_bound(x, y, xk, yk, ld):
    """Bound on ``|forward(x) - f(x)|``: ``VALUE_ULPS`` roundings at the scale of the heights, plus
    ``g`` times the rounding of ``x - x0`` (also how far an inverse's rounded output may be off)."""
    return VALUE_ULPS * EPS * scale(y, yk) + np.exp(ld) * 2 * EPS * scale(x, xk)


def _plain_python():
    if NUMBA_DISABLED:
        return True
    try:
        import numba
    except ImportError:                                           # pragma: no cover
        return True
    return bool(numba.config.DISABLE_JIT)


#: The kernels run as plain Python (REFFLOW_DISABLE_NUMBA=1 or NUMBA_DISABLE_JIT=1).
PLAIN_PYTHON = _plain_python()


def n_rows(compiled, python):
    """Batch sizes: plain-Python kernels are ~1e3 times slower than compiled ones."""
    return python if PLAIN_PYTHON else compiled


# ---------------------------------------------------------------------------------------------
# the wrapper
# ---------------------------------------------------------------------------------------------


def test_njit_wrapper_flags():
    if NUMBA_DISABLED:
        def f(a):
            return a + 1
        assert njit(f) is f
        assert not hasattr(rqs_forward, "targetoptions")
        return
    numba = pytest.importorskip("numba")
    if numba.config.DISABLE_JIT:
        pytest.skip("NUMBA_DISABLE_JIT=1: numba returns the plain function")
    for kernel in (rqs_forward, rqs_inverse, rqs_forward_vjp, rqs_inverse_vjp):
        opts = kernel.targetoptions
        assert opts["nogil"] is True and opts["fastmath"] is False and opts["nopython"] is True
        assert kernel._cache.__class__.__name__ == "FunctionCache"       # cache=True


# ---------------------------------------------------------------------------------------------
# kernels vs NumPy twins
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_parity_forward(kind):
    rng = np.random.default_rng(11)
    xk, yk, dk = make_knots(rng, n_rows(20000, 1500), kind)
    x = mixed_points(rng, xk)
    y, ld = forward(x, xk, yk, dk)
    y_t, ld_t = forward(x, xk, yk, dk, rqs_forward_numpy)
    assert rel(y, y_t) <= RTOL_PARITY
    assert rel(ld, ld_t) <= RTOL_PARITY
    args = (x, xk, yk, dk, rng.normal(size=x.shape), rng.normal(size=x.shape))
    assert cotangent_error(rqs_forward_vjp, rqs_forward_vjp_numpy, args) <= RTOL_PARITY


@pytest.mark.parametrize("kind", KINDS)
def test_parity_inverse(kind):
    rng = np.random.default_rng(12)
    xk, yk, dk = make_knots(rng, n_rows(20000, 1500), kind)
    y = mixed_points(rng, yk)
    x, ld = inverse(y, xk, yk, dk)
    x_t, ld_t = inverse(y, xk, yk, dk, rqs_inverse_numpy)
    assert rel(x, x_t) <= RTOL_PARITY
    assert rel(ld, ld_t) <= RTOL_PARITY
    args = (y, xk, yk, dk, rng.normal(size=y.shape), rng.normal(size=y.shape))
    assert cotangent_error(rqs_inverse_vjp, rqs_inverse_vjp_numpy, args) <= RTOL_PARITY


@pytest.mark.skipif(not LONG_DOUBLE_EXTENDED, reason="long double is double on this platform")
@pytest.mark.parametrize("seed", [11, 12, 102])
@pytest.mark.parametrize("direction", ["forward", "inverse"])
def test_parity_cotangents_extreme(direction, seed):
    """Extreme knots: the kernel is as accurate as the float64 twin, both measured against the
    twin in long double (AS_ACCURATE). Seed 102 holds a row where ``L_xi`` cancels by ~1e5."""
    rng = np.random.default_rng(seed)
    xk, yk, dk = make_knots(rng, n_rows(20000, 1500), "extreme")
    v = mixed_points(rng, xk if direction == "forward" else yk)
    args = (v, xk, yk, dk, rng.normal(size=v.shape), rng.normal(size=v.shape))
    kernel, twin = ((rqs_forward_vjp, rqs_forward_vjp_numpy) if direction == "forward"
                    else (rqs_inverse_vjp, rqs_inverse_vjp_numpy))
    err_kernel = cotangent_error(kernel, twin, args, np.longdouble)
    err_twin = cotangent_error(twin, twin, args, np.longdouble)
    assert err_kernel <= AS_ACCURATE * err_twin + RTOL_PARITY


# ---------------------------------------------------------------------------------------------
# exact facts: knots, ends, continuity, monotonicity
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_knots_map_exactly(kind):
    """At every knot (ends included) ``y = yk``, ``g = dk`` and the inverse gives ``xk`` back,
    exactly: ``xi`` is exactly 0 (or ``1 - xi`` exactly 0 at the last knot), and both ends of a
    bin are evaluated from their own side. (The log-dets are compared to 1 ulp: the compiled
    kernels call libm's ``log``, NumPy its own SIMD one; both are within 1 ulp.)"""
    rng = np.random.default_rng(13)
    xk, yk, dk = make_knots(rng, n_rows(200, 40), kind)
    rep = lambda a: np.repeat(a, K + 1, axis=0)                  # noqa: E731
    xk_r, yk_r, dk_r = rep(xk), rep(yk), rep(dk)
    y, ld = forward(xk.ravel(), xk_r, yk_r, dk_r)
    np.testing.assert_array_equal(y, yk.ravel())
    log_dk = np.log(dk.ravel())
    assert np.all(np.abs(ld - log_dk) <= np.spacing(np.abs(log_dk)))
    x, ld_inv = inverse(yk.ravel(), xk_r, yk_r, dk_r)
    np.testing.assert_array_equal(x, xk.ravel())
    assert np.all(np.abs(ld_inv + log_dk) <= np.spacing(np.abs(log_dk)))


@pytest.mark.parametrize("kind", ("nsf", "generic", "moderate"))
def test_continuity_at_knots_and_ends(kind):
    """Left and right limits agree at every knot and at both ends: the value to
    ``g |dx| + 4 eps`` (at a knot ``y`` is the exact height plus a tiny term) and the log-derivative
    to ``|dL/dx| |dx| + LOG_DET_ULPS eps`` (one ulp step ``dx``; the derivative bounds come from
    the kernel's own pullback at both points)."""
    rng = np.random.default_rng(14)
    xk, yk, dk = make_knots(rng, n_rows(300, 40), kind)
    rep = lambda a: np.repeat(a, K + 1, axis=0)                  # noqa: E731
    xk_r, yk_r, dk_r = rep(xk), rep(yk), rep(dk)
    at = xk.ravel()
    below, above = np.nextafter(at, -np.inf), np.nextafter(at, np.inf)
    y_at, ld_at = forward(at, xk_r, yk_r, dk_r)
    for side in (below, above):
        y_s, ld_s = forward(side, xk_r, yk_r, dk_r)
        dx = np.abs(side - at)
        ones = np.ones_like(at)
        g_bound = np.maximum(np.exp(ld_at), np.exp(ld_s))
        lx_at = vjp(at, xk_r, yk_r, dk_r, 0 * ones, ones)[0]
        lx_s = vjp(side, xk_r, yk_r, dk_r, 0 * ones, ones)[0]
        lx_bound = np.maximum(np.abs(lx_at), np.abs(lx_s))
        assert np.all(np.abs(y_s - y_at) <= g_bound * dx + 4 * EPS * np.maximum(1, np.abs(y_at)))
        assert np.all(np.abs(ld_s - ld_at)
                      <= lx_bound * dx + LOG_DET_ULPS * EPS * np.maximum(1, np.abs(ld_at)))
    # the inverse, at knot heights, likewise
    hat = yk.ravel()
    x_at, ldi_at = inverse(hat, xk_r, yk_r, dk_r)
    for side in (np.nextafter(hat, -np.inf), np.nextafter(hat, np.inf)):
        x_s, ldi_s = inverse(side, xk_r, yk_r, dk_r)
        dy = np.abs(side - hat)
        ones = np.ones_like(hat)
        inv_g = np.maximum(np.exp(ldi_at), np.exp(ldi_s))         # dx/dy on either side
        ly_at, ly_s = (vjp(v, xk_r, yk_r, dk_r, 0 * ones, ones, rqs_inverse_vjp)[0]
                       for v in (hat, side))
        ly_bound = np.maximum(np.abs(ly_at), np.abs(ly_s))
        assert np.all(np.abs(x_s - x_at) <= inv_g * dy + 4 * EPS * np.maximum(1, np.abs(x_at)))
        assert np.all(np.abs(ldi_s - ldi_at)
                      <= ly_bound * dy + LOG_DET_ULPS * EPS * np.maximum(1, np.abs(ldi_at)))


def test_log_det_derivative_is_right_sided_at_interior_knots():
    """An input exactly at an interior knot belongs to the bin on its right: the kernel's
    ``dL/dx`` there is the right-sided derivative of the log-det, not the left one."""
    rng = np.random.default_rng(15)
    xk, yk, dk = make_knots(rng, n_rows(300, 40), "moderate")
    j = rng.integers(1, K, xk.shape[0])
    at = xk[np.arange(xk.shape[0]), j]
    ones = np.ones_like(at)
    lx = vjp(at, xk, yk, dk, 0 * ones, ones)[0]
    step = 2.0**-20
    right = (forward(at + step, xk, yk, dk)[1] - forward(at, xk, yk, dk)[1]) / step
    left = (forward(at, xk, yk, dk)[1] - forward(at - step, xk, yk, dk)[1]) / step
    # one-sided differences are first order: error ~ step |L''| ~ 1e-6 * O(100)
    scale = np.maximum(1, np.abs(right))
    assert np.all(np.abs(lx - right) <= 1e-3 * scale)
    assert np.median(np.abs(lx - left) / scale) > 1e-2            # the jump is real


@pytest.mark.parametrize("kind", KINDS)
def test_monotone(kind):
    """Forward and inverse are non-decreasing on a dense grid through every knot and both tails,
    and strictly increasing wherever the grid step is worth more than a few ulps of the
    output."""
    rng = np.random.default_rng(16)
    rows = n_rows(12, 2)
    xk, yk, dk = make_knots(rng, rows, kind)
    m = n_rows(20001, 1001)
    for i in range(rows):
        for knots, fn in ((xk, forward), (yk, inverse)):
            grid = np.sort(np.concatenate([
                np.linspace(knots[i, 0] - 2, knots[i, -1] + 2, m),
                knots[i], np.nextafter(knots[i], -np.inf), np.nextafter(knots[i], np.inf)]))
            reps = [np.repeat(a[i:i + 1], grid.size, axis=0) for a in (xk, yk, dk)]
            out, ld = fn(grid, *reps)
            assert np.all(np.isfinite(out)) and np.all(np.isfinite(ld))
            step = np.diff(out)
            assert np.all(step >= 0)
            # strictly increasing where half the smaller end slope times the step (g changes by
            # far less than 2x over one step, away from 1e-6-wide bins) beats 8 ulps of the value
            slope = np.exp(np.minimum(ld[1:], ld[:-1]))           # dy/dx, or dx/dy for the inverse
            big = slope * np.diff(grid) * 0.5 > 8 * EPS * np.maximum(1, np.abs(out[1:]))
            assert np.all(step[big] > 0)


# ---------------------------------------------------------------------------------------------
# round trips
# ---------------------------------------------------------------------------------------------


def _round_trip_bound(x, y, yk, ld):
    return (RTOL_ROUND_TRIP * np.maximum(1, np.abs(x))
            + VALUE_ULPS * EPS * scale(y, yk) * np.exp(-ld))


def _log_det_match_bound(x_back, xk, yk, dk, ld):
    """``|inverse log-det + forward log-det at x_back|``: the inverse evaluates ``-L`` at its own
    ``xi``, of which ``x_back`` is the rounded image (off by ``2 eps scale``, see
    forward_error_bound), so ``L`` moves by ``|dL/dx|`` times that, plus LOG_DET_ULPS."""
    ones = np.ones_like(x_back)
    # dL/dx jumps at knots, where x_back may have rounded onto the knot from the left: take the
    # larger of the two one-sided values
    l_x = np.maximum(*(np.abs(vjp(v, xk, yk, dk, 0 * ones, ones)[0])
                       for v in (x_back, np.nextafter(x_back, -np.inf))))
    return l_x * 2 * EPS * scale(x_back, xk) + LOG_DET_ULPS * EPS * np.maximum(1, np.abs(ld))


@pytest.mark.skipif(PLAIN_PYTHON, reason="sized for compiled kernels")
def test_round_trip_million():
    """``inverse(forward(x)) == x`` on 2^20 points, each with its own random NSF knots (tails
    included): to 1e-12 where the inverse is well conditioned, and to the conditioning bound
    where ``g`` is tiny. Also ``forward(inverse(y)) == y`` and the log-dets are negatives."""
    rng = np.random.default_rng(17)
    n = 2**20
    xk, yk, dk = make_knots(rng, n, "nsf")
    x = rng.uniform(-B - 1, B + 1, n)
    y, ld = forward(x, xk, yk, dk)
    x_back, ld_inv = inverse(y, xk, yk, dk)
    err = np.abs(x_back - x)
    assert np.all(err <= _round_trip_bound(x, y, yk, ld))
    well = ld > np.log(1e-2)                                      # dx/dy <= 100
    assert well.mean() > 0.95
    assert np.max(err[well] / np.maximum(1, np.abs(x[well]))) <= RTOL_ROUND_TRIP
    _, ld_back = forward(x_back, xk, yk, dk)
    assert np.all(np.abs(ld_inv + ld_back) <= _log_det_match_bound(x_back, xk, yk, dk, ld))
    yy = rng.uniform(-B - 1, B + 1, n)
    xx, _ = inverse(yy, xk, yk, dk)
    y_back, ld_back = forward(xx, xk, yk, dk)
    assert np.all(np.abs(y_back - yy) <= forward_error_bound(xx, yy, xk, yk, ld_back))


@pytest.mark.parametrize("kind", KINDS)
def test_inverse_backward_stable(kind):
    """``forward(inverse(y))`` reproduces ``y`` to a few ulps for every kind of knots, extreme
    ones included: the inverse is backward stable, so its forward error is only the
    conditioning ``dx/dy``. (The paper's root ``2c / (-b - sqrt(b^2 - 4ac))`` with the
    discriminant computed as ``b^2 - 4ac`` is not: it loses up to half the digits near a double
    root, see test_naive_root_is_worse.)"""
    rng = np.random.default_rng(18)
    xk, yk, dk = make_knots(rng, n_rows(100000, 2000), kind)
    y = mixed_points(rng, yk)
    x, ld_inv = inverse(y, xk, yk, dk)
    y_back, ld = forward(x, xk, yk, dk)
    assert np.all(np.abs(y_back - y) <= forward_error_bound(x, y, xk, yk, ld))
    x_back, _ = inverse(y_back, xk, yk, dk)
    assert np.all(np.abs(x_back - x) <= _round_trip_bound(x, y, yk, ld))


def _naive_root(y, xk, yk, dk):
    """The textbook evaluation, for comparison only: bin, then ``a, b, c`` and
    ``xi = 2c / (-b - sqrt(max(b^2 - 4ac, 0)))``."""
    n = y.shape[0]
    k = np.count_nonzero(yk[:, 1:-1] <= y[:, None], axis=1)
    r = np.arange(n)
    x0, x1, y0, y1, d0, d1 = xk[r, k], xk[r, k + 1], yk[r, k], yk[r, k + 1], dk[r, k], dk[r, k + 1]
    w, h = x1 - x0, y1 - y0
    s = h / w
    dy = np.clip(y - y0, 0, h)
    D = d0 + d1 - 2 * s
    a, b, c = h * (s - d0) + dy * D, h * d0 - dy * D, -s * dy
    disc = b * b - 4 * a * c
    xi = np.clip(2 * c / (-b - np.sqrt(np.maximum(disc, 0))), 0, 1)
    return x0 + xi * w, disc


def test_naive_root_is_worse():
    """Documents why the kernel evaluates the discriminant as a sum of squares: on the same
    points the textbook formula misses the backward-error bound the kernel meets, by ~1e4x on
    extreme knots (and by ~50x, more rarely, on distrax-like ones: 217 of 1e5 points)."""
    rng = np.random.default_rng(19)
    xk, yk, dk = make_knots(rng, n_rows(100000, 20000), "extreme")
    y = rng.uniform(yk[:, 0], yk[:, -1])
    x_naive, _ = _naive_root(y, xk, yk, dk)
    x_ours, _ = inverse(y, xk, yk, dk)

    def worst(x):
        y_back, ld = forward(x, xk, yk, dk)
        return np.max(np.abs(y_back - y) / forward_error_bound(x, y, xk, yk, ld))

    assert worst(x_ours) <= 1
    assert worst(x_naive) > 10


def test_discriminant_rounding_negative():
    """Cases where the textbook ``b^2 - 4ac`` rounds negative (its exact value is ``h^2 d1^2`` at
    the top of a bin): ``y`` at and a few ulps below the top knot of a steep bin (``s ~ 1e5``)
    with a tiny derivative there. The kernel's discriminant, a sum of squares, cannot round
    negative; its results are finite, inside the bin, backward stable, with finite cotangents."""
    # (x0, x1, y0, y1, d0, d1), found by a seeded search over bins 1e-6..1 wide and high with
    # derivatives 1e-3..1e3; the bin is the spline's last, so y = y1 belongs to it
    bins = [
        (-2.455018829092732, -2.455006674387207, -1.4050044894453064, 1.041537354884619,
         2.7366984424891334, 0.00159988994677098),
        (-2.313171687994417, -2.3131587023176614, -2.931087863230351, -0.5473707601582047,
         288.5189840960873, 0.0014814270669516018),
        (-0.0029702126713724297, -0.0029638825748467532, -0.10072176737744387,
         3.4375339325532166, 906.6713168254327, 0.005077772448806097),
    ]
    xs, ys, ds, pts = [], [], [], []
    for x0, x1, y0, y1, d0, d1 in bins:
        yv = y1
        for _ in range(8):
            xs.append([-B, x0, x1])
            ys.append([-B, y0, y1])
            ds.append([1.0, d0, d1])
            pts.append(yv)
            yv = np.nextafter(yv, -np.inf)
    xk, yk, dk, y = map(np.array, (xs, ys, ds, pts))
    _, disc = _naive_root(y, xk, yk, dk)
    assert np.sum(disc < 0) >= 5                                  # the construction works
    x, ld = inverse(y, xk, yk, dk)
    assert np.all(np.isfinite(x)) and np.all(np.isfinite(ld))
    assert np.all((x >= xk[:, 1]) & (x <= xk[:, 2]))
    y_back, ld_f = forward(x, xk, yk, dk)
    assert np.all(np.abs(y_back - y) <= forward_error_bound(x, y, xk, yk, ld_f))
    ones = np.ones_like(y)
    for bar in vjp(y, xk, yk, dk, ones, ones, rqs_inverse_vjp):
        assert np.all(np.isfinite(bar))


# ---------------------------------------------------------------------------------------------
# derivatives vs finite differences
# ---------------------------------------------------------------------------------------------


STEP = 2.0**-17                                                   # ~7.6e-6 ~ eps^(1/3)


def _fd_cotangents(fn, v, xk, yk, dk, out_bar, ld_bar):
    """Central differences of ``phi_n = out_bar out_n + ld_bar ld_n`` w.r.t. the input and every
    knot entry, one column of every row at a time."""
    def phi(v_, xk_, yk_, dk_):
        out, ld = fn(v_, xk_, yk_, dk_)
        return out_bar * out + ld_bar * ld

    def central(args, i, j=None):
        plus = [a.copy() for a in args]
        minus = [a.copy() for a in args]
        if j is None:
            plus[i] += STEP
            minus[i] -= STEP
            step = plus[i] - minus[i]
        else:
            plus[i][:, j] += STEP
            minus[i][:, j] -= STEP
            step = plus[i][:, j] - minus[i][:, j]
        return (phi(*plus) - phi(*minus)) / step

    args = [v, xk, yk, dk]
    v_bar = central(args, 0)
    knot_bars = [np.column_stack([central(args, i, j) for j in range(xk.shape[1])])
                 for i in (1, 2, 3)]
    return (v_bar, *knot_bars)


@pytest.mark.parametrize("cotangents", ["value", "log_det", "both"])
@pytest.mark.parametrize("direction", ["forward", "inverse"])
def test_vjp_vs_finite_differences(direction, cotangents):
    rng = np.random.default_rng(20)
    xk, yk, dk = make_knots(rng, n_rows(2000, 200), "moderate")
    n = xk.shape[0]
    out_bar = rng.normal(size=n) * (cotangents != "log_det")
    ld_bar = rng.normal(size=n) * (cotangents != "value")
    if direction == "forward":
        v, fn, kernel = away_points(rng, xk), forward, rqs_forward_vjp
    else:
        v, fn, kernel = away_points(rng, yk), inverse, rqs_inverse_vjp
    bars = vjp(v, xk, yk, dk, out_bar, ld_bar, kernel)
    fd = _fd_cotangents(fn, v, xk, yk, dk, out_bar, ld_bar)
    # with both cotangents, relative to the sum of the parts' sizes (see cotangent_error)
    zero = np.zeros(n)
    row_scale = sum(np.max(np.abs(_stack(vjp(v, xk, yk, dk, ob, lb, kernel))), axis=1)
                    for ob, lb in ((out_bar, zero), (zero, ld_bar)))
    assert rowwise(bars, fd, row_scale) <= RTOL_FD
    # every entry the element does not touch is exactly zero (FD agrees: the kernel never reads it)
    for bar, fd_bar in zip(bars[1:], fd[1:]):
        np.testing.assert_array_equal(bar == 0, fd_bar == 0)


def test_log_det_vs_finite_difference_slope():
    """``exp(log_det)`` is ``dy/dx``: central differences of ``y`` away from knots, to RTOL_FD
    plus the differences' own rounding (the two values' error bounds over the step), which is
    what limits them where ``g`` is tiny (down to ~1e-5 on distrax-like knots)."""
    rng = np.random.default_rng(21)
    step = 1e-6            # points >= 1.2e-3 from a knot; measured truncation <= 2e-9 relative
    for kind in ("nsf", "generic", "moderate"):
        xk, yk, dk = make_knots(rng, n_rows(20000, 1000), kind)
        x = away_points(rng, xk, margin=0.2)
        _, ld = forward(x, xk, yk, dk)
        xp, xm = x + step, x - step
        (y_p, ld_p), (y_m, ld_m) = forward(xp, xk, yk, dk), forward(xm, xk, yk, dk)
        slope = (y_p - y_m) / (xp - xm)
        rounding = ((forward_error_bound(xp, y_p, xk, yk, ld_p)
                     + forward_error_bound(xm, y_m, xk, yk, ld_m)) / (xp - xm))
        assert np.all(np.abs(np.exp(ld) - slope) <= RTOL_FD * np.exp(ld) + rounding)


def test_inverse_log_det_is_minus_forward():
    rng = np.random.default_rng(22)
    for kind in KINDS:
        xk, yk, dk = make_knots(rng, n_rows(20000, 1000), kind)
        x = mixed_points(rng, xk)
        y, ld = forward(x, xk, yk, dk)
        x_back, ld_inv = inverse(y, xk, yk, dk)
        _, ld_back = forward(x_back, xk, yk, dk)
        assert np.all(np.abs(ld_inv + ld_back) <= _log_det_match_bound(x_back, xk, yk, dk, ld))


# ---------------------------------------------------------------------------------------------
# outputs written, not accumulated; extreme inputs stay finite
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kernel", [rqs_forward_vjp, rqs_inverse_vjp,
                                    rqs_forward_vjp_numpy, rqs_inverse_vjp_numpy])
def test_vjp_overwrites_and_touches_two_knots(kernel):
    rng = np.random.default_rng(23)
    xk, yk, dk = make_knots(rng, 300, "generic")
    v = mixed_points(rng, yk if "inverse" in kernel.__name__ else xk)
    bars_nan = vjp(v, xk, yk, dk, np.ones(300), np.ones(300), kernel)
    bars_junk = [np.full_like(b, 7.0) for b in bars_nan]
    kernel(v, xk, yk, dk, np.ones(300), np.ones(300), *bars_junk)
    for a, b in zip(bars_nan, bars_junk):
        np.testing.assert_array_equal(a, b)
    for bar in bars_nan[1:]:
        assert np.all(np.isfinite(bar))
        assert np.all(np.count_nonzero(bar, axis=1) <= 2)


@pytest.mark.parametrize("kind", KINDS)
def test_finite_everywhere(kind):
    """Knots exactly, ends exactly, one ulp off them, far outside (|x| = 1e3, 1e6): finite values,
    log-dets and cotangents in both directions, for both the kernels and the twins."""
    rng = np.random.default_rng(24)
    xk, yk, dk = make_knots(rng, n_rows(3000, 300), kind)
    n = xk.shape[0]
    ones = np.ones(n)
    for knots, fwd, bwd in ((xk, (rqs_forward, rqs_forward_numpy),
                             (rqs_forward_vjp, rqs_forward_vjp_numpy)),
                            (yk, (rqs_inverse, rqs_inverse_numpy),
                             (rqs_inverse_vjp, rqs_inverse_vjp_numpy))):
        j = rng.integers(0, K + 1, n)
        at = knots[np.arange(n), j]
        for v in (at, np.nextafter(at, -np.inf), np.nextafter(at, np.inf), knots[:, 0],
                  knots[:, -1], np.full(n, -1e3), np.full(n, 1e3), np.full(n, 1e6)):
            for impl in fwd:
                out, ld = np.empty(n), np.empty(n)
                impl(v, xk, yk, dk, out, ld)
                assert np.all(np.isfinite(out)) and np.all(np.isfinite(ld))
            for impl in bwd:
                for bar in vjp(v, xk, yk, dk, ones, ones, impl):
                    assert np.all(np.isfinite(bar))


def test_tails_are_linear_and_identity_for_nsf():
    rng = np.random.default_rng(25)
    xk, yk, dk = make_knots(rng, 100, "generic")
    x = np.concatenate([xk[:50, 0] - rng.uniform(0, 1e3, 50),
                        xk[50:, -1] + rng.uniform(0, 1e3, 50)])
    y, ld = forward(x, xk, yk, dk)
    end = np.r_[np.zeros(50, int), np.full(50, K)]
    r = np.arange(100)
    np.testing.assert_allclose(y, yk[r, end] + dk[r, end] * (x - xk[r, end]), rtol=1e-15, atol=0)
    np.testing.assert_array_equal(ld, np.log(dk[r, end]))
    xk, yk, dk = make_knots(rng, 100, "nsf")
    x = np.concatenate([-B - rng.uniform(0, 1e3, 50), B + rng.uniform(0, 1e3, 50)])
    y, ld = forward(x, xk, yk, dk)
    np.testing.assert_array_equal(y, x)
    np.testing.assert_array_equal(ld, 0.0)


# ---------------------------------------------------------------------------------------------
# float32
# ---------------------------------------------------------------------------------------------


def test_float32_agrees_with_float64():
    """float32 kernels on float32 knots vs float64 kernels on the same values: values, log-dets
    and cotangents agree to RTOL_FLOAT32; outputs stay float32; the arithmetic is float32 (it
    differs from the correctly rounded float64 result somewhere, which promotion to float64
    inside the kernel would not)."""
    rng = np.random.default_rng(26)
    xk, yk, dk = (a.astype(np.float32) for a in make_knots(rng, n_rows(20000, 1000), "moderate"))
    x32 = mixed_points(rng, xk)
    up = lambda *a: [v.astype(np.float64) for v in a]              # noqa: E731
    cot = rng.normal(size=(2, x32.size)).astype(np.float32)

    y32, ld32 = forward(x32, xk, yk, dk)
    y64, ld64 = forward(*up(x32, xk, yk, dk))
    assert y32.dtype == ld32.dtype == np.float32
    assert rel(y32, y64) <= RTOL_FLOAT32 and rel(ld32, ld64) <= RTOL_FLOAT32
    assert np.any(y32 != y64.astype(np.float32))                  # computed in float32
    assert all(b.dtype == np.float32 for b in vjp(x32, xk, yk, dk, cot[0], cot[1]))
    args = (x32, xk, yk, dk, cot[0], cot[1])
    assert cotangent_error(rqs_forward_vjp, rqs_forward_vjp, args, np.float64) <= RTOL_FLOAT32

    yq = mixed_points(rng, yk)
    xi32, ldi32 = inverse(yq, xk, yk, dk)
    xi64, ldi64 = inverse(*up(yq, xk, yk, dk))
    assert xi32.dtype == np.float32
    # dx/dy <= e on these knots (derivatives >= 1/e inside, RQ bins bounded by their slopes)
    assert rel(xi32, xi64) <= RTOL_FLOAT32 and rel(ldi32, ldi64) <= RTOL_FLOAT32
    args = (yq, xk, yk, dk, cot[0], cot[1])
    assert cotangent_error(rqs_inverse_vjp, rqs_inverse_vjp, args, np.float64) <= RTOL_FLOAT32
    # the twins keep float32 too
    for impl, v in ((rqs_forward_numpy, x32), (rqs_inverse_numpy, yq)):
        out, ld = np.empty_like(v), np.empty_like(v)
        impl(v, xk, yk, dk, out, ld)
        assert out.dtype == np.float32 and np.all(np.isfinite(out))


def test_float32_arithmetic_stays_float32():
    """No float64 anywhere in the float32 specialisations: a float literal (``2.0``) in a kernel
    would silently promote the arithmetic to float64 (and the test above could still pass, as
    the results are stored back as float32). Compiles fresh, uncached copies to read numba's
    type annotations for every variable of every kernel and helper."""
    if NUMBA_DISABLED:
        pytest.skip("plain-Python mode: no numba typing to inspect")
    numba = pytest.importorskip("numba")
    if numba.config.DISABLE_JIT:
        pytest.skip("NUMBA_DISABLE_JIT=1")
    from refflow.kernels import splines

    def typemap(dispatcher):
        (sig,) = dispatcher.signatures
        return {str(t) for t in dispatcher.overloads[sig].type_annotation.typemap.values()}

    rng = np.random.default_rng(28)
    xk, yk, dk = (a.astype(np.float32) for a in make_knots(rng, 64, "moderate"))
    v = mixed_points(rng, xk)
    outs = [np.empty_like(v) for _ in range(3)]
    knot_outs = [np.empty_like(xk) for _ in range(3)]
    calls = [(rqs_forward, (v, xk, yk, dk, *outs[:2])),
             (rqs_inverse, (v, xk, yk, dk, *outs[:2])),
             (rqs_forward_vjp, (v, xk, yk, dk, v, v, outs[0], *knot_outs)),
             (rqs_inverse_vjp, (v, xk, yk, dk, v, v, outs[0], *knot_outs))]
    seen = set()
    for kernel, args in calls:
        fresh = numba.njit(kernel.py_func)
        fresh(*args)
        seen |= typemap(fresh)
    helpers = [getattr(splines, name) for name in dir(splines) if name.startswith("_rq_")]
    assert len(helpers) >= 5
    for helper in helpers:
        for sig in helper.nopython_signatures:
            if sig.args and str(sig.args[0]) == "float32":
                seen |= typemap(numba.njit(sig)(helper.py_func))
                seen.add(str(sig.return_type))
    assert "float32" in seen
    assert not [t for t in seen if "float64" in t], sorted(seen)


@pytest.mark.parametrize("kind", KINDS)
def test_float32_finite_on_hard_inputs(kind):
    """float32 on every kind of knots (1e-6-of-range bins are ~25 float32 ulps wide at |x| ~ 3,
    so they stay strictly increasing): knots, ulp neighbours, far points give finite values,
    log-dets and cotangents, all float32."""
    rng = np.random.default_rng(27)
    xk, yk, dk = (a.astype(np.float32) for a in make_knots(rng, n_rows(3000, 300), kind))
    assert np.all(np.diff(xk, axis=1) > 0) and np.all(np.diff(yk, axis=1) > 0)
    ones = np.ones(xk.shape[0], np.float32)
    for kern, vj, knots in ((rqs_forward, rqs_forward_vjp, xk), (rqs_inverse, rqs_inverse_vjp, yk)):
        v = mixed_points(rng, knots)
        out, ld = np.empty_like(v), np.empty_like(v)
        kern(v, xk, yk, dk, out, ld)
        assert np.all(np.isfinite(out)) and np.all(np.isfinite(ld))
        for bar in vjp(v, xk, yk, dk, ones, ones, vj):
            assert bar.dtype == np.float32 and np.all(np.isfinite(bar))
