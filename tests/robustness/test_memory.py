"""Bounded memory: ``batch_size`` chunking of ``Flow.log_prob`` / ``sample`` /
``sample_and_log_prob`` and ``FlowDensity.score_samples`` / ``sample``.

Chunked results are bit for bit the unchunked ones when every chunk has more than 600 rows
(NumPy's OpenBLAS 0.3.31 computes a GEMM ``(M, K) @ (K, N)`` with ``M * N <= ~1200`` with its
small-matrix kernel, which sums in another order; chunks are balanced, at least ``batch_size /
2`` rows, so ``batch_size >= 1202`` is enough, and the default 65,536 always is). Smaller chunks
agree to round-off (``SAME_PASS``). Peak memory: ``benchmarks/bench_memory.py``.
"""

import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refflow import (ActNorm, BatchNorm, Chain, DiagNormal, Flow, MaskedAffineAutoregressive,
                     StandardNormal)
from refflow import distributions
from refflow._cases import CASES
from refflow.estimator import FlowDensity
from refflow.flows import MAF, NSF, RealNVP

from ..helpers import rel

#: One point vs the same point in another batch: BLAS may sum a dot product in another order
#: (DEVELOPERS.md); measured worst over the registry and chunks of 1-7 rows: 5.1e-15.
SAME_PASS = 1e-14
#: Chunks above this many rows are bit-identical to one pass (see the module docstring).
BIG_CHUNK = 601


def _case_flow(name, seed=0, n=40):
    r = np.random.default_rng(seed)
    bijector, _, sample_x, sample_c = CASES[name](r)
    flow = Flow(StandardNormal(bijector.dim), bijector)
    return flow, sample_x(r, n), (None if sample_c is None else sample_c(r, n))


# ------------------------------------------------------------------ the random stream
def test_generator_normals_are_one_stream_whatever_the_chunks():
    whole = np.random.default_rng(5).standard_normal((1000, 3))
    rng = np.random.default_rng(5)
    parts = [rng.standard_normal((m, 3)) for m in (1, 333, 2, 600, 64)]
    np.testing.assert_array_equal(np.concatenate(parts), whole)


def test_chunks_are_balanced_and_cover_the_rows():
    flow = MAF(2, hidden=(4, 4), rng=0)
    assert list(distributions._chunks(10, 10, flow.bijector, True, "t")) == [(0, 10)]
    assert list(distributions._chunks(0, 3, flow.bijector, True, "t")) == [(0, 0)]
    chunks = list(distributions._chunks(65_537, 65_536, flow.bijector, False, "t"))
    assert chunks == [(0, 32_768), (32_768, 65_537)]   # not 65,536 rows and a 1-row remainder
    for n, bs in ((10, 3), (1001, 7), (5, 1)):
        chunks = list(distributions._chunks(n, bs, flow.bijector, True, "t"))
        assert len(distributions._chunks(n, bs, flow.bijector, True, "t")) == len(chunks)
        sizes = [b - a for a, b in chunks]
        assert chunks[0][0] == 0 and chunks[-1][1] == n
        assert all(a2 == b1 for (_, b1), (a2, _) in zip(chunks, chunks[1:]))
        assert max(sizes) <= bs and max(sizes) - min(sizes) <= 1


# -------------------------------------------------------- chunked == unchunked, registry
@pytest.mark.parametrize("name", sorted(CASES))
def test_log_prob_chunks_of_every_case_are_bit_identical_when_big(name):
    flow, x, c = _case_flow(name, n=1300)
    whole = flow.log_prob(x, c, batch_size=x.shape[0])
    np.testing.assert_array_equal(flow.log_prob(x, c, batch_size=2 * BIG_CHUNK), whole)
    # small chunks (GEMMs of few rows): round-off only
    small = flow.log_prob(x[:40], None if c is None else c[:40], batch_size=3)
    assert rel(small, whole[:40]) <= SAME_PASS


@pytest.mark.parametrize("name", sorted(CASES))
def test_sample_chunks_of_every_case(name):
    flow, _, c = _case_flow(name, n=1300)
    try:
        x, lq = flow.sample_and_log_prob(1300, rng=3, context=c, batch_size=1300)
    except ValueError as exc:  # standard normal base samples outside the forward domain
        assert name in {"logit", "logit_alpha", "inverse_sigmoid", "circular_spline_distrax",
                        "circular_spline_zuko_shift", "spline_coupling_circular",
                        "spline_coupling_circular_zuko_shift", "spline_autoregressive_circular",
                        "spline_autoregressive_circular_zuko_shift"}, str(exc)
        return
    x2, lq2 = flow.sample_and_log_prob(1300, rng=3, context=c, batch_size=2 * BIG_CHUNK)
    np.testing.assert_array_equal(x2, x)
    np.testing.assert_array_equal(lq2, lq)
    x3, lq3 = flow.sample_and_log_prob(40, rng=3, context=None if c is None else c[:40],
                                       batch_size=7)
    assert rel(x3, x[:40]) <= SAME_PASS and rel(lq3, lq[:40]) <= SAME_PASS


@pytest.mark.parametrize("build", [
    lambda: MAF(64, n_layers=2, hidden=(256, 256), rng=0),
    lambda: NSF(8, rng=1),
    lambda: RealNVP(16, rng=2),
    lambda: RealNVP(2, rng=3),
], ids=["maf64", "nsf8", "realnvp16", "realnvp2"])
def test_builders_chunked_bit_identical(build):
    flow = build()
    x = np.random.default_rng(0).standard_normal((3000, flow.dim))
    whole = flow.log_prob(x, batch_size=3000)
    for bs in (1202, 1500, 2999):
        np.testing.assert_array_equal(flow.log_prob(x, batch_size=bs), whole)
    xs, lq = flow.sample_and_log_prob(1300, rng=4, batch_size=1300)
    xs2, lq2 = flow.sample_and_log_prob(1300, rng=4, batch_size=1202)
    np.testing.assert_array_equal(xs2, xs)
    np.testing.assert_array_equal(lq2, lq)
    np.testing.assert_array_equal(flow.sample(1300, rng=4, batch_size=1202), xs)


def test_default_batch_size_chunks_and_matches(monkeypatch):
    flow = RealNVP(3, rng=0)
    x = np.random.default_rng(1).standard_normal((2500, 3))
    whole = flow.log_prob(x, batch_size=2500)
    calls = []
    run = flow.bijector._run
    monkeypatch.setattr(flow.bijector, "_run", lambda *a, **k: calls.append(a[1].shape[0]) or run(*a, **k))
    monkeypatch.setattr(distributions, "DEFAULT_BATCH_SIZE", 1250)
    np.testing.assert_array_equal(flow.log_prob(x), whole)
    assert calls == [1250, 1250]


def test_conditional_context_is_chunked_alongside():
    made = MaskedAffineAutoregressive(4, hidden=(16, 16), context_dim=3, rng=0)
    for k, v in made.params.items():
        made.params[k] = np.random.default_rng(1).normal(0, 0.3, v.shape)
    flow = Flow(DiagNormal(4), Chain([made]))
    flow.params["base.loc"] = [0.1, -0.2, 0.3, 0.0]
    r = np.random.default_rng(2)
    x, c = r.standard_normal((1500, 4)), r.standard_normal((1500, 3))
    whole = flow.log_prob(x, c, batch_size=1500)
    np.testing.assert_array_equal(flow.log_prob(x, c, batch_size=1202), whole)
    assert rel(flow.log_prob(x, c, batch_size=5), whole) <= SAME_PASS
    # a shared context row: same numbers as the repeated rows
    shared = flow.log_prob(x, c[0], batch_size=1202)
    np.testing.assert_array_equal(shared, flow.log_prob(x, np.repeat(c[:1], 1500, 0),
                                                        batch_size=1500))
    xs, lq = flow.sample_and_log_prob(1500, rng=0, context=c, batch_size=1500)
    xs2, lq2 = flow.sample_and_log_prob(1500, rng=0, context=c, batch_size=1202)
    np.testing.assert_array_equal(xs2, xs)
    np.testing.assert_array_equal(lq2, lq)
    xs3 = flow.sample(1500, rng=0, context=c[0], batch_size=1202)
    np.testing.assert_array_equal(xs3, flow.sample(1500, rng=0, context=np.repeat(c[:1], 1500, 0),
                                                   batch_size=1500))


@settings(deadline=None)
@given(n=st.integers(0, 60), bs=st.integers(1, 70), seed=st.integers(0, 2 ** 16))
def test_any_chunking_agrees_to_round_off(n, bs, seed):
    flow = MAF(3, n_layers=2, hidden=(8, 8), rng=seed)
    x = np.random.default_rng(seed).standard_normal((n, 3))
    whole = flow.log_prob(x, batch_size=max(n, 1))
    got = flow.log_prob(x, batch_size=bs)
    assert got.shape == (n,) and rel(got, whole) <= SAME_PASS
    xs, lq = flow.sample_and_log_prob(n, rng=seed, batch_size=max(n, 1))
    xs2, lq2 = flow.sample_and_log_prob(n, rng=seed, batch_size=bs)
    assert xs2.shape == (n, 3) and rel(xs2, xs) <= SAME_PASS and rel(lq2, lq) <= SAME_PASS


def test_single_point_float32_and_empty():
    flow = MAF(3, n_layers=2, hidden=(8, 8), rng=0)
    x = np.random.default_rng(0).standard_normal((5, 3))
    assert np.ndim(flow.log_prob(x[0], batch_size=1)) == 0
    assert flow.log_prob(x[0], batch_size=1) == flow.log_prob(x[:1])[0]
    lp32 = flow.log_prob(x.astype(np.float32), batch_size=2)
    assert lp32.dtype == np.float32 and lp32.shape == (5,)
    assert flow.log_prob(np.zeros((0, 3)), batch_size=2).shape == (0,)
    x0, lq0 = flow.sample_and_log_prob(0, rng=0, batch_size=2)
    assert x0.shape == (0, 3) and lq0.shape == (0,)


# ----------------------------------------------------------------------- validation
@pytest.mark.parametrize("bad", [0, -1, 2.5, True, "8", np.float64(4.0)])
def test_bad_batch_size_raises_naming_the_function(bad):
    flow = MAF(2, hidden=(4, 4), rng=0)
    x = np.zeros((3, 2))
    for call, where in ((lambda: flow.log_prob(x, batch_size=bad), "Flow.log_prob"),
                        (lambda: flow.sample(3, rng=0, batch_size=bad), "Flow.sample"),
                        (lambda: flow.sample_and_log_prob(3, rng=0, batch_size=bad),
                         "Flow.sample_and_log_prob")):
        with pytest.raises(ValueError, match=f"{where}: batch_size must be a positive int"):
            call()
    assert flow.log_prob(x, batch_size=np.int64(2)).shape == (3,)


def test_batch_coupled_layers_refuse_explicit_chunks_and_run_whole_by_default(monkeypatch):
    rng = np.random.default_rng(0)
    x = rng.normal(1.0, 2.0, size=(50, 2))
    # training-mode BatchNorm: batch statistics
    bn_flow = Flow(StandardNormal(2), Chain([BatchNorm(2), MAF(2, hidden=(4, 4), rng=0).bijector]))
    before = {k: v.copy() for k, v in bn_flow.buffers.items()}
    with pytest.raises(ValueError, match="Flow.log_prob: cannot split 50 rows.*BatchNorm.*eval"):
        bn_flow.log_prob(x, batch_size=10)
    for k, v in bn_flow.buffers.items():
        np.testing.assert_array_equal(v, before[k])  # no running statistics were updated
    monkeypatch.setattr(distributions, "DEFAULT_BATCH_SIZE", 10)
    whole = bn_flow.log_prob(x)                       # the default: one pass over all rows
    twin = Flow(StandardNormal(2), Chain([BatchNorm(2), MAF(2, hidden=(4, 4), rng=0).bijector]))
    np.testing.assert_array_equal(whole, twin.log_prob(x, batch_size=50))
    bn_flow.eval()
    np.testing.assert_array_equal(bn_flow.log_prob(x, batch_size=10),
                                  bn_flow.log_prob(x, batch_size=50))
    # uninitialised ActNorm: initialises from the whole batch, never from a chunk
    an_flow = Flow(StandardNormal(2), ActNorm(2))
    with pytest.raises(ValueError, match="ActNorm layer is not initialised"):
        an_flow.sample(50, rng=0, batch_size=10)
    assert not an_flow.bijector.buffers["initialized"]
    lp = an_flow.log_prob(x)                           # default: whole batch, initialises
    assert an_flow.bijector.buffers["initialized"]
    np.testing.assert_allclose(an_flow.bijector.params["shift"], x.mean(axis=0), rtol=1e-12)
    np.testing.assert_array_equal(an_flow.log_prob(x, batch_size=10), lp)


# -------------------------------------------------------------------------- estimator
def test_flow_density_passes_batch_size_through():
    X = np.random.default_rng(0).standard_normal((300, 2))
    model = FlowDensity("maf", n_layers=2, hidden=(8, 8), epochs=2, random_state=0).fit(X)
    whole = model.score_samples(X)
    assert rel(model.score_samples(X, batch_size=7), whole) <= SAME_PASS
    np.testing.assert_array_equal(model.score_samples(X, batch_size=300), whole)
    s = model.sample(50, random_state=3)
    assert rel(model.sample(50, random_state=3, batch_size=4), s) <= SAME_PASS
    for bad in (0, 1.5, False):
        error = ValueError if type(bad) is int else TypeError  # out of range / wrong type
        with pytest.raises(error, match="FlowDensity.score_samples: batch_size"):
            model.score_samples(X, batch_size=bad)
        with pytest.raises(error, match="FlowDensity.sample: batch_size"):
            model.sample(5, batch_size=bad)


# ---------------------------------------------------------------------- peak memory
def _peak_bytes(fn):
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        out = fn()
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    return peak, out


def test_peak_temporary_memory_does_not_grow_with_n():
    flow = MAF(8, n_layers=3, hidden=(64, 64), rng=0)
    flow.log_prob(np.zeros((4, 8)))  # warm-up: numba, caches
    peaks = {}
    for n in (2_000, 16_000):
        x = np.random.default_rng(0).standard_normal((n, 8))
        for bs in (256, None):
            peak, lp = _peak_bytes(lambda: flow.log_prob(x, batch_size=bs or n))
            peaks[n, bs] = peak - lp.nbytes          # the output must grow with n; the rest not
    # chunks of 256 rows: the temporaries are the same for 2,000 and 16,000 rows (within 10%)
    assert peaks[16_000, 256] <= 1.1 * peaks[2_000, 256]
    # the measurement can see growth: one pass over all rows grows ~8x
    assert peaks[16_000, None] >= 6 * peaks[2_000, None]
    assert peaks[16_000, 256] * 20 < peaks[16_000, None]


def test_peak_memory_of_sampling_does_not_grow_beyond_the_output():
    flow = MAF(8, n_layers=2, hidden=(32, 32), rng=0)
    flow.sample(4, rng=0)
    extra = {}
    for n in (1_000, 8_000):
        peak, x = _peak_bytes(lambda: flow.sample(n, rng=0, batch_size=128))
        extra[n] = peak - x.nbytes - n * 8             # samples and their log-densities
    assert extra[8_000] <= 1.1 * extra[1_000]
