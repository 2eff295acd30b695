"""The scalar solver kernel (``refflow.kernels.monotone``) against its NumPy twin, its own
residuals, extreme targets, failure codes and float32 typing."""

import numpy as np
import pytest

import refflow
from refflow.kernels import NUMBA_DISABLED, fast_paths
from refflow.kernels.monotone import (
    BERNSTEIN, POLYNOMIAL, SIGMOIDAL, monotone_evaluate_numpy, monotone_solve,
    monotone_solve_numpy, sigmoidal_row_size, solve_increasing,
)

EPS = np.finfo(np.float64).eps
#: Kernel vs twin: each stops within two ulps of its own root; their evaluators round
#: differently by a few ulps of the map's scale, which moves the root by that over f'(x).
#: Worst seen over 20 seeds x 3 kinds x 200 rows: 3.1 in these units.
PARITY_ULPS = 16
#: |f(x) - z| at the kernel's root, in ulps of the terms of f (|z| + |x| f'(x) + 1).
RESIDUAL_ULPS = 64
#: float32 roots vs float64 roots on the same (float32) data: a few float32 roundings of f,
#: over f'(x), relative to |x| + 1 (worst seen 1.2e-6).
RTOL_FLOAT32 = 1e-4


def _sigmoidal_rows(rng, m, units, n_layers):
    """Random constrained rows: ``a > 0``, log-softmax ``W``, ``U``."""
    K = units
    parts = []
    for l in range(n_layers):
        d_in = 1 if l == 0 else K
        d_out = 1 if l == n_layers - 1 else K
        a = np.exp(rng.normal(0.0, 0.5, size=(m, K)))
        w = rng.normal(size=(m, d_out, K))
        lw = w - np.log(np.exp(w).sum(axis=-1, keepdims=True))
        parts += [a, np.log(a), rng.normal(size=(m, K)), lw.reshape(m, -1)]
        if d_in > 1:
            u = rng.normal(size=(m, K, d_in))
            parts.append((u - np.log(np.exp(u).sum(axis=-1, keepdims=True))).reshape(m, -1))
    rows = np.concatenate(parts, axis=1)
    assert rows.shape[1] == sigmoidal_row_size(K, n_layers)
    return rows


def _polynomial_rows(rng, m, degree):
    """Increasing polynomials in v: the integral of 0.1 + (sum_j c_j v^j)^2, plus a constant."""
    c = rng.normal(size=(m, degree + 1))
    sq = np.zeros((m, 2 * degree + 1))
    for i in range(degree + 1):
        for j in range(degree + 1):
            sq[:, i + j] += c[:, i] * c[:, j]
    sq[:, 0] += 0.1
    e = np.zeros((m, 2 * degree + 2))
    e[:, 0] = rng.normal(size=m)
    e[:, 1:] = sq / np.arange(1, 2 * degree + 2)
    return e


def _bernstein_rows(rng, m, degree, scale):
    steps = np.exp(rng.normal(size=(m, degree)))
    theta = np.concatenate([np.full((m, 1), -scale), -scale + np.cumsum(steps, axis=1)], axis=1)
    return theta


CASES = {
    "dsf": (SIGMOIDAL, 1.0, 5, 1),
    "ddsf": (SIGMOIDAL, 1.0, 3, 3),
    "polynomial": (POLYNOMIAL, 2.0, 0, 0),
    "bernstein": (BERNSTEIN, 1.5, 0, 0),
}


def _setup(name, rng, m, dtype=np.float64):
    kind, scale, units, n_layers = CASES[name]
    if kind == SIGMOIDAL:
        params = _sigmoidal_rows(rng, m, units, n_layers)
        x_true = rng.normal(0.0, 3.0, size=m)
    elif kind == POLYNOMIAL:
        params = _polynomial_rows(rng, m, 3)
        x_true = rng.normal(0.0, 3.0, size=m)
    else:
        params = _bernstein_rows(rng, m, 9, scale)
        x_true = rng.uniform(-scale, scale, size=m)
    params = params.astype(dtype)
    x_true = x_true.astype(dtype)
    z, _ = monotone_evaluate_numpy(kind, x_true, params, scale, units, n_layers)
    lo = np.full(m, -scale, dtype=dtype)
    hi = np.full(m, scale, dtype=dtype)
    return kind, scale, units, n_layers, params, z, lo, hi


def _run(solver, kind, z, params, scale, units, n_layers, lo, hi):
    x = np.empty_like(z)
    status = np.empty(z.shape[0], dtype=np.int64)
    bracketed = kind == BERNSTEIN
    solver(kind, z, params, z.dtype.type(scale), units, n_layers, np.zeros_like(z), lo, hi,
           bracketed, x, status)
    return x, status


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("seed", range(5))
def test_kernel_matches_twin_and_solves(name, seed):
    rng = np.random.default_rng(seed)
    kind, scale, units, n_layers, params, z, lo, hi = _setup(name, rng, 200)
    xk, sk = _run(monotone_solve, kind, z, params, scale, units, n_layers, lo, hi)
    xt, st = _run(monotone_solve_numpy, kind, z, params, scale, units, n_layers, lo, hi)
    assert not sk.any() and not st.any()
    f, fp = monotone_evaluate_numpy(kind, xk, params, scale, units, n_layers)
    parity = np.abs(xk - xt) / (EPS * (np.abs(xk) + (np.abs(z) + 1.0) / fp))
    assert parity.max() <= PARITY_ULPS, parity.max()
    residual = np.abs(f - z) / (EPS * (np.abs(z) + np.abs(xk) * fp + 1.0))
    assert residual.max() <= RESIDUAL_ULPS, residual.max()


def test_extreme_targets_polynomial():
    """A linear map ``f = x`` reaches ``z = +-1e300`` by ~1000 doublings; a cubic with huge
    targets too; no overflow warnings."""
    for row, z0 in ((np.array([[0.0, 1.0]]), 1e300), (np.array([[0.0, 1.0]]), -1e300),
                    (np.array([[1.0, 0.5, 0.0, 2.0]]), 1e200)):
        z = np.array([z0])
        for solver in (monotone_solve, monotone_solve_numpy):
            x, status = _run(solver, POLYNOMIAL, z, row, 1.0, 0, 0, z, z)
            assert status[0] == 0
            f, _ = monotone_evaluate_numpy(POLYNOMIAL, x, row, 1.0, 0, 0)
            assert abs(f[0] - z0) <= 4 * EPS * abs(z0)


def test_failure_codes():
    """A constant map cannot reach the target (status 2, the bracket would overflow); NaN
    parameters give status 1; both solvers agree."""
    z = np.array([1.0, 0.5])
    params = np.array([[0.0, 0.0], [np.nan, 1.0]])
    for solver in (monotone_solve, monotone_solve_numpy):
        x, status = _run(solver, POLYNOMIAL, z[:1], params[:1], 1.0, 0, 0, z[:1], z[:1])
        assert status[0] == 2
        x, status = _run(solver, POLYNOMIAL, z[1:], params[1:], 1.0, 0, 0, z[1:], z[1:])
        assert status[0] == 1


def test_solve_increasing_whole_rows_gives_the_same_roots():
    """``whole=True`` (every row evaluated each step, for batched products) changes only which
    rows are evaluated, not any row's iterates."""
    rng = np.random.default_rng(3)
    kind, scale, units, n_layers, params, z, lo, hi = _setup("dsf", rng, 50)
    calls = []

    def evaluate(x, idx):
        calls.append(len(idx))
        return monotone_evaluate_numpy(kind, x, params[idx], scale, units, n_layers)

    x_part = solve_increasing(evaluate, z, np.zeros_like(z))
    x_whole = solve_increasing(evaluate, z, np.zeros_like(z), whole=True)
    np.testing.assert_array_equal(x_part, x_whole)
    assert min(calls) < 50 and max(calls) == 50


@pytest.mark.parametrize("name", sorted(CASES))
def test_float32(name):
    rng = np.random.default_rng(11)
    kind, scale, units, n_layers, params, z, lo, hi = _setup(name, rng, 100, np.float32)
    x32, s32 = _run(monotone_solve, kind, z, params, scale, units, n_layers, lo, hi)
    x64, s64 = _run(monotone_solve, kind, z.astype(np.float64), params.astype(np.float64),
                    scale, units, n_layers, lo.astype(np.float64), hi.astype(np.float64))
    assert x32.dtype == np.float32 and not s32.any() and not s64.any()
    _, fp = monotone_evaluate_numpy(kind, x64, params.astype(np.float64), scale, units, n_layers)
    err = np.abs(x32 - x64) / (np.abs(x64) + 1.0 + 1.0 / fp)
    assert err.max() <= RTOL_FLOAT32, err.max()


def test_float32_arithmetic_stays_float32():
    """No float64 variable in the float32 specialisation of the kernel and of each helper (a
    float literal would silently promote the arithmetic). Each is compiled afresh (uncached)
    on float32 arguments, so the check does not depend on what earlier tests compiled."""
    if NUMBA_DISABLED:
        pytest.skip("plain-Python mode: no numba typing to inspect")
    numba = pytest.importorskip("numba")
    if numba.config.DISABLE_JIT:
        pytest.skip("NUMBA_DISABLE_JIT=1")
    from refflow.kernels import monotone

    f = np.float32
    one, zero, two, half, inf = f(1), f(0), f(2), f(0.5), f(np.inf)
    work = np.zeros(64, dtype=f)
    rows = {name: _setup(name, np.random.default_rng(0), 4, f)[4][0] for name in CASES}
    calls = [("_log_sigmoid", (f(0.3), one, zero)),
             ("_lse_max_sum", (work, 3, 0, inf)),
             ("_ulp", (f(0.3), inf)),
             ("_sigmoidal", (f(0.3), rows["ddsf"], 3, 3, work, one, zero, inf)),
             ("_polynomial", (f(0.3), rows["polynomial"], f(2))),
             ("_bernstein", (f(0.3), rows["bernstein"], f(1.5), work, one, zero, two))]
    for kind, name in ((SIGMOIDAL, "ddsf"), (POLYNOMIAL, "polynomial"), (BERNSTEIN, "bernstein")):
        calls.append(("_eval", (kind, f(0.3), rows[name], f(1.5), 3, 3, work, one, zero, two,
                                inf)))
        calls.append(("_solve_row", (kind, f(0.1), rows[name], f(1.5), 3, 3, zero, f(-1.5),
                                     f(1.5), kind == BERNSTEIN, work, one, zero, two, half, inf)))
    seen = set()
    for name, args in calls:
        fresh = numba.njit(getattr(monotone, name).py_func)
        fresh(*args)
        for sig in fresh.signatures:
            seen |= {str(t) for t in fresh.overloads[sig].type_annotation.typemap.values()}
            seen.add(str(fresh.overloads[sig].signature.return_type))
    for name in CASES:
        kind, scale, units, n_layers, params, z, lo, hi = _setup(name, np.random.default_rng(0),
                                                                  4, f)
        fresh = numba.njit(monotone.monotone_solve.py_func)
        fresh(kind, z, params, f(scale), units, n_layers, np.zeros_like(z), lo, hi,
              kind == BERNSTEIN, np.empty_like(z), np.empty(4, dtype=np.int64))
        for sig in fresh.signatures:
            seen |= {str(t) for t in fresh.overloads[sig].type_annotation.typemap.values()}
    assert "float32" in seen
    assert not any("float64" in t for t in seen), sorted(t for t in seen if "float64" in t)


@pytest.mark.parametrize("build", [
    lambda: refflow.NeuralAutoregressive(3, units=4, hidden=(8,), rng=0),
    lambda: refflow.NeuralAutoregressive(3, units=3, n_layers=3, hidden=(8,), rng=0),
    lambda: refflow.SumOfSquaresAutoregressive(3, hidden=(8,), rng=0),
    lambda: refflow.BernsteinAutoregressive(3, degree=9, bound=2.0, hidden=(8,), rng=0),
], ids=["dsf", "ddsf", "sos", "bernstein"])
def test_layers_sample_alike_with_kernel_and_twin(build):
    """The layers' sampling direction through the kernel and through its twin (the reference
    path ``monotone``): the same points to a few ulps over the map's slope."""
    layer = build()
    rng = np.random.default_rng(9)
    for key, value in layer.params.items():
        layer.params[key] = rng.normal(0.0, 0.3, size=value.shape)
    z = rng.normal(size=(64, 3)) * 1.5
    x_kernel, ld_kernel = layer.forward(z)
    with fast_paths(False, paths=["monotone"]):
        x_twin, ld_twin = layer.forward(z)
    _, log_det = layer.inverse(x_kernel)
    slope = np.exp(-np.abs(log_det)).min()            # the flattest coordinate's scale, bounded
    err = np.abs(x_kernel - x_twin) / (np.abs(x_twin) + 1.0)
    assert err.max() <= PARITY_ULPS * EPS / slope, err.max()
    np.testing.assert_allclose(ld_kernel, ld_twin, rtol=1e-10, atol=1e-10)
