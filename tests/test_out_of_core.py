"""Out-of-core training: fitting a numpy.memmap or a dask array gives the in-memory fit bit for
bit, without copying the data whole; the exact statistics it relies on."""

import tracemalloc
from decimal import Decimal, getcontext
from fractions import Fraction

import numpy as np
import pytest
import scipy.linalg

from refflow import MAF, FlowDensity, fit
from refflow import _exact as exact_module
from refflow import _rows as rows_module
from refflow._exact import CrossMoments, Moments, exact_mean
from refflow._rows import (Standardized, Whitened, covariance, permutation, rotate, rows_of,
                           whiten)

FAST = dict(n_layers=2, hidden=(16, 16), epochs=3, batch_size=100, random_state=0,
            progress=False)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(21)
    mix = np.array([[2.0, 0.5, 0.0], [0.0, 0.3, 0.1], [0.0, 0.0, 40.0]])
    return rng.normal(size=(2001, 3)) @ mix + [5.0, -1.0, 300.0]


@pytest.fixture(scope="module")
def context(data):
    return np.random.default_rng(22).normal(size=(data.shape[0], 2))


def memmap_of(array, tmp_path, name="x.npy"):
    path = tmp_path / name
    np.save(path, array)
    return np.load(path, mmap_mode="r")


def dask_of(array, rows=450):
    da = pytest.importorskip("dask.array")
    return da.from_array(array, chunks=(rows, array.shape[1]))


def same_params(a, b):
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def fit_flow(x, context=None, rng=5, **kw):
    flow = MAF(3, n_layers=2, hidden=(8,), rng=1, context_dim=None if context is None
               else (2 if np.ndim(context) != 1 else len(context)))
    gen = np.random.default_rng(rng)
    history = fit(flow, x, context=context, epochs=2, batch_size=64, rng=gen, progress=False,
                  **kw)
    return flow, history, gen.bit_generator.state


# ---------------------------------------------------------------------------- refflow.fit
@pytest.mark.parametrize("kind", ["memmap", "dask"])
def test_fit_on_a_memmap_or_dask_array_is_the_in_memory_fit_bitwise(data, context, kind,
                                                                     tmp_path):
    stream = memmap_of if kind == "memmap" else (lambda a, _p, name=None: dask_of(a))
    cases = [
        ({}, dict()),
        (dict(context=context), dict(context=stream(context, tmp_path, "c.npy"))),
        (dict(context=context[0]), dict(context=context[0])),              # one shared row
        (dict(validation_data=data[:300]),
         dict(validation_data=stream(data[:300], tmp_path, "v.npy"))),
        (dict(validation_fraction=0.0), dict(validation_fraction=0.0)),
    ]
    x = stream(data, tmp_path, "x.npy")
    for memory_kw, stream_kw in cases:
        f0, h0, state0 = fit_flow(data, **memory_kw)
        f1, h1, state1 = fit_flow(x, **stream_kw)
        assert same_params(f0.params, f1.params), memory_kw.keys()
        assert h0.train_nll == h1.train_nll and h0.val_nll == h1.val_nll
        assert h0.n_steps == h1.n_steps and state0 == state1     # the same draws from rng


def test_float32_memmap_fits_in_float32_as_in_memory(data, tmp_path):
    x32 = data.astype(np.float32)
    f0, h0, _ = fit_flow(x32)
    f1, h1, _ = fit_flow(memmap_of(x32, tmp_path))
    assert same_params(f0.params, f1.params) and h0.train_nll == h1.train_nll


def test_a_dask_window_smaller_than_the_data_changes_nothing(data, monkeypatch):
    # several windows of gathered batches per epoch, each one dask computation
    from refflow import _rows

    monkeypatch.setattr(_rows, "WINDOW_BYTES", 64 * 3 * 8 * 5)    # 5 batches per window
    f0, h0, _ = fit_flow(data)
    f1, h1, _ = fit_flow(dask_of(data, rows=333))
    assert same_params(f0.params, f1.params) and h0.train_nll == h1.train_nll


def test_non_finite_streamed_data_raises_and_changes_nothing(data, tmp_path):
    bad = data.copy()
    bad[1234, 2] = np.nan
    flow = MAF(3, n_layers=2, hidden=(8,), rng=1)
    before = {k: v.copy() for k, v in flow.params.items()}
    with pytest.raises(ValueError, match=r"fit: x holds NaN or infinity \(the first at row "
                                         r"1234, column 2\)"):
        fit(flow, memmap_of(bad, tmp_path), epochs=1, progress=False)
    assert same_params(before, flow.params)
    with pytest.raises(ValueError, match="fit: expected x of shape"):
        fit(flow, memmap_of(data[:, :2], tmp_path, "y.npy"), epochs=1, progress=False)


def traced_peak(run):
    tracemalloc.start()
    try:
        run()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_the_memmap_is_not_copied_whole(tmp_path):
    n, dim = 300_000, 8                                            # 19.2 MB of float64
    data = np.random.default_rng(0).normal(size=(n, dim))
    x = memmap_of(data, tmp_path)

    def run(values):
        return lambda: fit(MAF(dim, n_layers=1, hidden=(8,), rng=0), values, epochs=1,
                           batch_size=1024, rng=0, progress=False)

    run(data[:100])()                       # numba's kernels loaded before measuring
    in_memory, streamed = traced_peak(run(data)), traced_peak(run(x))
    # in memory, the split copies the data (the check would see a copy); streamed: the int32
    # permutations (1.2 MB each), the finiteness pass's mask (2.4 MB: one piece), a batch and
    # the temporaries of a step (~1 MB)
    assert in_memory > x.nbytes
    assert streamed < x.nbytes // 2, streamed


# ------------------------------------------------------------------------ FlowDensity.fit
@pytest.mark.parametrize("kind", ["memmap", "dask"])
@pytest.mark.parametrize("standardize", [True, False])
@pytest.mark.parametrize("whiten", [True, False])
def test_flowdensity_fit_streamed_is_the_in_memory_fit(data, context, kind, standardize,
                                                       whiten, tmp_path):
    stream = (lambda a, name: memmap_of(a, tmp_path, name)) if kind == "memmap" else (
        lambda a, name: dask_of(a.astype(np.float32) if name == "f" else a))
    ref = FlowDensity("maf", standardize=standardize, whiten=whiten, **FAST).fit(data)
    got = FlowDensity("maf", standardize=standardize, whiten=whiten, **FAST).fit(
        stream(data, "x.npy"))
    assert [type(b).__name__ for b in got.flow_.bijector.layers][1:] == (
        ["LULinear", "Affine"] if whiten else ["Affine"])
    assert same_params(ref.params, got.params)
    assert np.array_equal(ref.mean_, got.mean_) and np.array_equal(ref.scale_, got.scale_)
    assert ref.history_.train_nll == got.history_.train_nll
    assert ref.history_.val_nll == got.history_.val_nll
    cref = FlowDensity("maf", standardize=standardize, whiten=whiten, **FAST).fit(
        data, context=context)
    cgot = FlowDensity("maf", standardize=standardize, whiten=whiten, **FAST).fit(
        stream(data, "x.npy"), context=stream(context, "c.npy"))
    assert same_params(cref.params, cgot.params)
    assert np.array_equal(cref.context_scale_, cgot.context_scale_)


def test_flowdensity_streamed_errors(data, tmp_path):
    bad = data.copy()
    bad[7, 0] = np.inf
    with pytest.raises(ValueError, match=r"FlowDensity.fit: X holds NaN or infinity \(the "
                                         r"first at row 7, column 0\)"):
        FlowDensity("maf", **FAST).fit(memmap_of(bad, tmp_path))
    huge = data.copy()
    huge[:, 1] = -1.7e308
    huge[0, 1] = 1.7e308                                  # 1.7e308 - mean > 2e308
    for X in (huge, memmap_of(huge, tmp_path, "h.npy")):
        with pytest.raises(ValueError, match="X - mean\\(X\\) overflows float64"):
            FlowDensity("maf", **FAST).fit(X)
    with pytest.raises(ValueError, match="context has 5 rows, but X has 2001"):
        FlowDensity("maf", **FAST).fit(memmap_of(data, tmp_path, "x.npy"),
                                       context=np.zeros((5, 2)))


# ---------------------------------------------------------------------- the exact pieces
def test_permutation_is_generator_permutation_in_int32():
    for n in (1, 2, 17, 100_003):
        a, b = np.random.default_rng(n), np.random.default_rng(n)
        p = permutation(a, n)
        assert p.dtype == np.int32 and np.array_equal(p, b.permutation(n))
        assert a.bit_generator.state == b.bit_generator.state


def correctly_rounded_sqrt(q):
    """sqrt of a Fraction to 80 digits, then rounded to float64 (80 >> 17 digits: the double
    rounding cannot differ from a correct rounding but for a tie 10^-60 close)."""
    getcontext().prec = 80
    return float((Decimal(q.numerator) / Decimal(q.denominator)).sqrt())


def test_moments_are_correctly_rounded_and_order_free():
    rng = np.random.default_rng(3)
    x = np.column_stack([rng.normal(1e6, 1e-3, 999), rng.standard_cauchy(999) * 1e150,
                         np.full(999, 0.1), rng.normal(0, 1e-200, 999)])
    m = Moments(4).add(x)
    for j in range(4):
        s1 = sum(Fraction(v) for v in x[:, j])
        s2 = sum(Fraction(v) ** 2 for v in x[:, j])
        mean = s1 / 999
        assert m.mean()[j] == float(mean)
        assert m.std()[j] == correctly_rounded_sqrt(s2 / 999 - mean ** 2)
    assert m.constant().tolist() == [False, False, True, False]
    # any order and any split into pieces, merged in any order: the same bits
    perm = np.random.default_rng(4).permutation(999)
    parts = [Moments(4).add(x[perm[a:b]]) for a, b in ((500, 999), (0, 1), (1, 500))]
    merged = parts[0].merge(parts[1]).merge(parts[2])
    assert np.array_equal(merged.mean(), m.mean()) and np.array_equal(merged.std(), m.std())
    assert np.array_equal(merged.low, x.min(axis=0)) and np.array_equal(merged.high,
                                                                         x.max(axis=0))


def test_exact_mean():
    v = np.array([1e308, 1e308, -1e308, 3.0, 1e-300])       # np.mean overflows
    assert exact_mean(v) == float(sum(Fraction(e) for e in v) / 5)
    assert exact_mean(np.array([0.0, -np.inf])) == -np.inf
    with pytest.raises(ValueError, match="NaN or \\+inf"):
        exact_mean(np.array([0.0, np.nan]))


# ---------------------------------------------------------------------- whitening, streamed
#: Forward substitution here and LAPACK's trsm differ only in the order of a few operations
#: on values of order 1 (measured: 8.9e-16 apart on this data): a few ulps, and no more.
SUBSTITUTION = 1e-14


def test_cross_moments_covariance_is_correctly_rounded_and_order_free(monkeypatch):
    rng = np.random.default_rng(5)
    x = np.column_stack([rng.normal(1e6, 1e-3, 401), rng.standard_cauchy(401) * 1e150,
                         np.full(401, 0.1), rng.normal(0, 1e-200, 401)])
    x[:, 3] += x[:, 0] * 1e-206                                     # correlated, tiny
    cov = CrossMoments(4).add(x).covariance()
    cols = [[Fraction(v) for v in x[:, j]] for j in range(4)]
    for i in range(4):
        for j in range(4):
            s_i, s_j = sum(cols[i]), sum(cols[j])
            s_ij = sum(a * b for a, b in zip(cols[i], cols[j]))
            assert cov[i, j] == float((401 * s_ij - s_i * s_j) / 401 ** 2), (i, j)
    perm = np.random.default_rng(6).permutation(401)
    parts = [CrossMoments(4).add(x[perm[a:b]]) for a, b in ((200, 401), (0, 1), (1, 200))]
    assert np.array_equal(parts[2].merge(parts[0]).merge(parts[1]).covariance(), cov)
    # small blocks (bins re-windowed as the exponents change) and early flushes: the same bits
    monkeypatch.setattr(exact_module, "_BLOCK", 40)                 # 4 rows per block
    monkeypatch.setattr(exact_module, "_ROWS_EXACT", 30)
    assert np.array_equal(CrossMoments(4).add(x[perm]).covariance(), cov)


def test_whiten_gives_a_row_the_same_bits_in_any_chunk(data):
    s = (data - data.mean(axis=0)) / data.std(axis=0)
    chol = np.linalg.cholesky(np.cov(s, rowvar=False, bias=True))
    w = whiten(s, chol)
    pieces = np.concatenate([whiten(s[a:a + 450], chol) for a in range(0, len(s), 450)])
    assert np.array_equal(pieces, w)
    index = np.random.default_rng(7).permutation(len(s))[:333]
    assert np.array_equal(whiten(s[index], chol), w[index])
    np.testing.assert_allclose(w, scipy.linalg.solve_triangular(chol, s.T, lower=True).T,
                               rtol=0, atol=SUBSTITUTION)
    assert np.allclose(np.cov(w, rowvar=False, bias=True), np.eye(3), atol=1e-12)
    # with a rotation after the whitening (rotation="ica"): the same, and u = Q w
    Q, _ = np.linalg.qr(np.random.default_rng(8).standard_normal((3, 3)))
    u = whiten(s, chol, Q)
    pieces = np.concatenate([whiten(s[a:a + 450], chol, Q) for a in range(0, len(s), 450)])
    assert np.array_equal(pieces, u) and np.array_equal(whiten(s[index], chol, Q), u[index])
    assert np.array_equal(rotate(w, Q), u)
    np.testing.assert_allclose(u, w @ Q.T, rtol=0, atol=SUBSTITUTION)


@pytest.mark.parametrize("kind", ["memmap", "dask"])
def test_streamed_covariance_is_the_in_memory_one(data, kind, tmp_path):
    x = memmap_of(data, tmp_path) if kind == "memmap" else dask_of(data)
    mean, scale = data.mean(axis=0), data.std(axis=0)
    rows = Standardized(rows_of(x, "t", "X"), mean, scale)
    expected = CrossMoments(3).add((data - mean) / scale).covariance()
    assert np.array_equal(covariance(rows), expected)
    assert np.array_equal(covariance(rows_of(x, "t", "X")), CrossMoments(3).add(data).covariance())
    chol = np.linalg.cholesky(expected)
    assert np.array_equal(Whitened(rows, chol).take(np.arange(2000, 5, -7)),
                          whiten((data - mean) / scale, chol)[2000:5:-7])


def test_the_whitened_fit_reads_the_memmap_in_pieces(tmp_path, monkeypatch):
    n, dim = 300_000, 4                                            # 9.6 MB of float64
    data = np.random.default_rng(0).normal(size=(n, dim)) @ np.triu(np.ones((dim, dim)))
    x = memmap_of(data, tmp_path)
    monkeypatch.setattr(rows_module, "PASS_BYTES", 64 << 10)        # 64 KiB pieces

    def run(values):
        options = dict(n_layers=1, hidden=(8,), epochs=1, batch_size=1024, random_state=0,
                       validation_fraction=0.0, progress=False)
        return lambda: FlowDensity("maf", **options).fit(values)

    run(data[:100])()
    in_memory, streamed = traced_peak(run(data)), traced_peak(run(x))
    # in memory, standardising and whitening each make a copy; streamed: the permutation
    # (1.2 MB), pieces of 64 KiB, the exact sums' temporaries (~100 bytes per value of a
    # block of at most 2^16 values, whatever the data's size), a batch and a step's
    assert in_memory > x.nbytes
    assert streamed < x.nbytes // 2, streamed
