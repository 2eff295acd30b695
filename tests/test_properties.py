"""Properties every registered bijector must have, with randomised parameters and inputs.

For each case of ``refflow._cases.CASES`` (hypothesis draws the seed and the batch size):

- round trips both ways, log-dets vs ``slogdet`` of the FD Jacobian both ways, forward and
  inverse log-dets negatives (``assert_bijector``);
- both pullbacks vs finite differences for the input and the parameters (``assert_vjp``; at
  most ``FD_ELEMENTS`` elements per gradient in each example, a different seeded sample each
  time), and the context for conditional cases, with ``grads`` of ``params``' keys, shapes and
  dtype;
- the ``*_vjp`` passes give the plain passes' outputs bit for bit (many layers take different
  code paths with and without residuals: MAF's sampler, the fused spline and MLP passes);
- float32 in gives float32 out (outputs, log-dets, input cotangents);
- a single point ``(dim,)`` and a batch of one agree with the batch path;
- an empty batch gives empty outputs of the input's dtype.

Tolerances are those of ``refflow.testing`` (RTOL_ROUND_TRIP = 1e-10 for round trips, RTOL_FD =
1e-6 against finite differences; see DEVELOPERS.md).
"""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from refflow.testing import assert_bijector, assert_vjp

from .registry import CASES

CASE_IDS = sorted(CASES)
seeds = st.integers(0, 2**32 - 1)
batch_sizes = st.integers(1, 6)

# float32 against float64 on the same inputs: float32's unit round-off is 6e-8; a few layers of
# exp/log/solves amplify it by at most ~1e2 on these well-conditioned cases.
RTOL_FLOAT32 = 2e-5

# Finite differences cost four calls per element, and the sampling direction of a layer with
# a numerical inverse solves each call coordinate by coordinate: checking every element of every
# example took most of the suite's time. Each example checks a seeded sample of at most 64
# elements per gradient (every element still enters the analytic gradient's norm); the samples
# differ between hypothesis's 30 examples, so an element of the largest array of any case (384)
# goes unchecked in all of them with probability (1 - 64/384)^30 < 0.5%, and a smaller array
# (most have at most 64 elements) is checked whole in every example.
FD_ELEMENTS = 64

# One point against the same point inside a batch: the same arithmetic, except that BLAS may
# order a dot product's terms differently for different batch sizes (a few ulps).
SAME_PASS = 1e-14


def build(case_id, seed, n):
    """The bijector, ``z``, ``x`` and keyword arguments (the context of conditional cases)."""
    bijector, sample_z, sample_x, sample_context = CASES[case_id](seed)
    context = None if sample_context is None else sample_context(seed + 3, n)
    kw = {} if context is None else {"context": context}
    return bijector, sample_z(seed + 1, n, context), sample_x(seed + 2, n, context), kw


def vjp_inputs(v, kw):
    """``check_vjp`` inputs: ``v``, or ``(v, context)`` for a conditional case."""
    return (v, kw["context"]) if kw else v


def row(kw, i):
    return {k: c[i] for k, c in kw.items()}


@pytest.mark.parametrize("case_id", CASE_IDS)
@given(seed=seeds, n=batch_sizes)
def test_round_trips_and_log_dets(case_id, seed, n):
    bijector, z, x, kw = build(case_id, seed, n)
    assert_bijector(lambda v: bijector.forward(v, **kw), lambda v: bijector.inverse(v, **kw), z, x=x)


@pytest.mark.parametrize("case_id", CASE_IDS)
@given(seed=seeds, n=batch_sizes)
def test_forward_pullback(case_id, seed, n):
    bijector, z, _, kw = build(case_id, seed, n)
    assert_vjp(bijector.forward_vjp, vjp_inputs(z, kw), bijector.params, rng=seed,
               max_elements=FD_ELEMENTS)


@pytest.mark.parametrize("case_id", CASE_IDS)
@given(seed=seeds, n=batch_sizes)
def test_inverse_pullback(case_id, seed, n):
    bijector, _, x, kw = build(case_id, seed, n)
    assert_vjp(bijector.inverse_vjp, vjp_inputs(x, kw), bijector.params, rng=seed,
               max_elements=FD_ELEMENTS)


@pytest.mark.parametrize("case_id", CASE_IDS)
@pytest.mark.parametrize("direction", ["forward", "inverse"])
def test_grads_match_params(case_id, direction):
    bijector, z, x, kw = build(case_id, 3, 4)
    v = z if direction == "forward" else x
    out, log_det, pullback = getattr(bijector, f"{direction}_vjp")(v, **kw)
    in_bar, grads, *context_bar = pullback(np.ones_like(out), np.ones_like(log_det))
    if kw:
        assert context_bar[0].shape == kw["context"].shape
    else:
        assert not context_bar
    assert set(grads) == set(bijector.params)
    for key, g in grads.items():
        assert g.shape == bijector.params[key].shape, key
        assert g.dtype == np.float64, key
    assert in_bar.shape == v.shape


@pytest.mark.parametrize("case_id", CASE_IDS)
@pytest.mark.parametrize("direction", ["forward", "inverse"])
def test_vjp_pass_gives_the_plain_pass_outputs(case_id, direction):
    bijector, z, x, kw = build(case_id, 9, 5)
    v = z if direction == "forward" else x
    out, log_det = getattr(bijector, direction)(v, **kw)
    out_vjp, log_det_vjp, _ = getattr(bijector, f"{direction}_vjp")(v, **kw)
    np.testing.assert_array_equal(out_vjp, out)
    np.testing.assert_array_equal(log_det_vjp, log_det)


@pytest.mark.parametrize("case_id", CASE_IDS)
@pytest.mark.parametrize("direction", ["forward", "inverse"])
def test_float32_in_float32_out(case_id, direction):
    bijector, z, x, kw = build(case_id, 5, 6)
    v = z if direction == "forward" else x
    v32 = v.astype(np.float32)
    kw32 = {k: c.astype(np.float32) for k, c in kw.items()}
    out64, ld64 = getattr(bijector, direction)(v32.astype(np.float64), **kw32)
    out32, ld32, pullback = getattr(bijector, f"{direction}_vjp")(v32, **kw32)
    assert out32.dtype == np.float32 and ld32.dtype == np.float32
    np.testing.assert_allclose(out32, out64, rtol=RTOL_FLOAT32, atol=RTOL_FLOAT32)
    np.testing.assert_allclose(ld32, ld64, rtol=RTOL_FLOAT32, atol=RTOL_FLOAT32 * v.shape[1])
    in_bar, grads, *context_bar = pullback(np.ones_like(out32), np.ones_like(ld32))
    assert in_bar.dtype == np.float32 and all(c.dtype == np.float32 for c in context_bar)
    assert all(g.dtype == np.float64 for g in grads.values())


@pytest.mark.parametrize("case_id", CASE_IDS)
@pytest.mark.parametrize("direction", ["forward", "inverse"])
def test_single_point_and_batch_of_one(case_id, direction):
    bijector, z, x, kw = build(case_id, 7, 3)
    v = z if direction == "forward" else x
    batch_out, batch_ld = getattr(bijector, direction)(v, **kw)
    for i in range(v.shape[0]):
        out1, ld1 = getattr(bijector, direction)(v[i], **row(kw, i))
        assert out1.shape == (bijector.dim,) and np.ndim(ld1) == 0
        np.testing.assert_allclose(out1, batch_out[i], rtol=SAME_PASS, atol=SAME_PASS)
        np.testing.assert_allclose(ld1, batch_ld[i], rtol=SAME_PASS, atol=SAME_PASS)
        out_row, ld_row = getattr(bijector, direction)(
            v[i:i + 1], **{k: c[i:i + 1] for k, c in kw.items()})
        assert out_row.shape == (1, bijector.dim) and ld_row.shape == (1,)
        np.testing.assert_allclose(out_row[0], batch_out[i], rtol=SAME_PASS, atol=SAME_PASS)
    # the pullback of a single point takes and gives single-point shapes
    out1, ld1, pullback = getattr(bijector, f"{direction}_vjp")(v[0], **row(kw, 0))
    in_bar, _, *context_bar = pullback(np.ones(bijector.dim), 1.0)
    assert in_bar.shape == (bijector.dim,)
    assert all(c.shape == (bijector.context_dim,) for c in context_bar)


@pytest.mark.parametrize("case_id", CASE_IDS)
@pytest.mark.parametrize("direction", ["forward", "inverse"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_empty_batch(case_id, direction, dtype):
    bijector, _, _, kw = build(case_id, 0, 1)
    empty = np.zeros((0, bijector.dim), dtype=dtype)
    kw = {k: c[:0].astype(dtype) for k, c in kw.items()}
    out, log_det = getattr(bijector, direction)(empty, **kw)
    assert out.shape == (0, bijector.dim) and log_det.shape == (0,)
    assert out.dtype == dtype and log_det.dtype == dtype
    out, log_det, pullback = getattr(bijector, f"{direction}_vjp")(empty, **kw)
    assert out.shape == (0, bijector.dim) and log_det.shape == (0,)
    assert out.dtype == dtype and log_det.dtype == dtype
    in_bar, grads, *_ = pullback(None, None)
    assert in_bar.shape == (0, bijector.dim) and in_bar.dtype == dtype
    assert all(np.array_equal(g, np.zeros_like(g)) for g in grads.values())
