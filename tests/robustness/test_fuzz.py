"""Fuzzing every public entry point with valid, odd and invalid inputs.

Each call must either work correctly or raise ``ValueError``/``TypeError`` whose message names
the function or class; never another exception type, a ``RuntimeWarning`` (warnings are errors
here) or a silent NaN/inf in an output. A valid input in an unusual form (non-contiguous,
read-only, list, tuple, integer, bool, float16, object array of numbers) must give exactly the
result of its C-contiguous float64 copy (float32 gives the float32 result). After a failed
call, parameters, buffers and optimizer state are unchanged.

``EXAMPLES`` counts the examples run per entry point; run with ``-s`` to see the table.
"""

import collections
import copy
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import refflow
import refflow.__main__
from refflow import bijectors as B
from refflow._cases import CASES
from refflow.distributions import DiagNormal, Flow, StandardNormal
from refflow.nn import MADE, MLP

EXAMPLES = collections.Counter()
FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                      HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module", autouse=True)
def _report_counts():
    yield
    if EXAMPLES:
        width = max(len(k) for k in EXAMPLES)
        print("\nfuzz examples per entry point:")
        for key in sorted(EXAMPLES):
            print(f"  {key:<{width}}  {EXAMPLES[key]}")


# ------------------------------------------------------------------------------ helpers
ACCEPTED = (ValueError, TypeError)


class Refused(Exception):
    """Raised by ``outcome`` to carry a clean refusal."""


def outcome(fn, names):
    """``("ok", result)`` or ``("refused", message)``; any other failure fails the test.

    Warnings are errors, so a RuntimeWarning (overflow, invalid value) fails too. A refusal must
    name one of ``names`` in its message.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            result = fn()
        except ACCEPTED as exc:
            message = str(exc)
            assert any(name in message for name in names), (
                f"{type(exc).__name__} does not name any of {names}: {message!r}")
            return "refused", message
    return "ok", result


def allow_inf_scores(fn):
    """``fn`` with FlowDensity's one documented warning let through: rows beyond float64's
    range score -inf with a RuntimeWarning saying so (every other warning still fails)."""
    def call(*args):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*their scores are -inf",
                                    category=RuntimeWarning)
            return fn(*args)
    return call


def snapshot(obj):
    """Deep copies of params and buffers (and of an optimizer's state) for later comparison."""
    state = {}
    for attr in ("params", "buffers"):
        try:
            values = getattr(obj, attr)
        except Exception:  # noqa: BLE001 - e.g. an unfitted estimator has no buffers
            continue
        state[attr] = {k: copy.deepcopy(np.asarray(v)) for k, v in values.items()}
    for attr in ("initialized", "training", "t", "_lr", "m", "v", "momentum_buffer"):
        if hasattr(obj, attr):
            value = getattr(obj, attr)
            state[attr] = copy.deepcopy(dict(value) if isinstance(value, dict) else value)
    return state


def assert_same_state(before, after):
    assert before.keys() == after.keys()
    for key in before:
        a, b = before[key], after[key]
        if isinstance(a, dict):
            assert a.keys() == b.keys(), key
            for k in a:
                np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]), err_msg=f"{key}.{k}")
        else:
            assert a == b, key


def all_finite(*arrays):
    return all(np.isfinite(np.asarray(a, dtype=np.float64)).all() for a in arrays)


# ------------------------------------------------------------------ input variants
# Forms that must give exactly the result of the contiguous float64 (or float32) array.
SAME_FORMS = ["c_contiguous", "fortran", "strided", "negative_stride", "read_only", "list",
              "tuple", "object_of_floats", "float32", "single_point", "empty"]
# Forms whose result is the float64 result of the converted values.
CONVERTED_FORMS = ["int", "bool", "float16"]
# Forms that must be refused.
BAD_FORMS = ["wrong_dim", "three_d", "zero_d", "nan", "inf", "neg_inf", "complex", "strings",
             "object_of_strings", "none", "ragged", "datetime", "dict", "empty_1d"]
# Extreme magnitudes: finite output or a clean refusal.
EXTREME_FORMS = ["huge", "neg_huge", "tiny", "subnormal", "float32_huge"]
ALL_FORMS = SAME_FORMS + CONVERTED_FORMS + BAD_FORMS + EXTREME_FORMS


def make_variant(form, valid, rng):
    """``(value, reference)`` from a valid ``(n, dim)`` float64 array.

    ``reference`` is the array the value must behave like exactly (``None`` for forms that must
    be refused, ``"extreme"`` for forms that may work or be refused).
    """
    n, dim = valid.shape
    if form == "c_contiguous":
        return valid.copy(), valid
    if form == "fortran":
        return np.asfortranarray(valid), valid
    if form == "strided":
        big = np.zeros((n, 2 * dim))
        big[:, ::2] = valid
        return big[:, ::2], valid
    if form == "negative_stride":
        rev = valid[::-1].copy()
        return rev[::-1], valid
    if form == "read_only":
        v = valid.copy()
        v.setflags(write=False)
        return v, valid
    if form == "list":
        return valid.tolist(), valid
    if form == "tuple":
        return tuple(tuple(r) for r in valid.tolist()), valid
    if form == "object_of_floats":
        return valid.astype(object), valid
    if form == "float32":
        v = valid.astype(np.float32)
        return v.copy(), v
    if form == "single_point":
        return valid[0].copy(), valid[0]
    if form == "empty":
        return np.zeros((0, dim)), np.zeros((0, dim))
    if form == "int":
        v = np.rint(valid).astype(np.int64)
        return v, v.astype(np.float64)
    if form == "bool":
        v = valid > np.median(valid)
        return v, v.astype(np.float64)
    if form == "float16":
        v = valid.astype(np.float16)
        return v, v.astype(np.float64)
    if form == "wrong_dim":
        return np.zeros((n, dim + 1 + int(rng.integers(3)))), None
    if form == "three_d":
        return valid[None], None
    if form == "zero_d":
        return np.float64(valid.flat[0]), None
    if form in ("nan", "inf", "neg_inf"):
        v = valid.copy()
        v[int(rng.integers(n)), int(rng.integers(dim))] = {"nan": np.nan, "inf": np.inf,
                                                          "neg_inf": -np.inf}[form]
        return v, None
    if form == "complex":
        return valid + 1j, None
    if form == "strings":
        return valid.astype(str), None
    if form == "object_of_strings":
        v = valid.astype(object)
        v[0, 0] = "1.0"
        return v, None
    if form == "none":
        return None, None
    if form == "ragged":
        rows = valid.tolist()
        rows[0] = rows[0] + [1.0]
        return rows, None
    if form == "datetime":
        return np.zeros((n, dim), dtype="datetime64[s]"), None
    if form == "dict":
        return {"x": valid}, None
    if form == "empty_1d":
        return np.zeros(0), None
    if form == "huge":
        return np.full((n, dim), 1e300) * rng.choice([-1.0, 1.0], size=(n, dim)), "extreme"
    if form == "neg_huge":
        return np.full((n, dim), -1e300), "extreme"
    if form == "tiny":
        return valid * 1e-300, "extreme"
    if form == "subnormal":
        return np.full((n, dim), 5e-324) * rng.choice([-1.0, 1.0], size=(n, dim)), "extreme"
    if form == "float32_huge":
        return np.full((n, dim), 3e38, dtype=np.float32), "extreme"
    raise AssertionError(form)


def same(a, b):
    """Bit-for-bit equality of two results (tuples of arrays)."""
    assert len(a) == len(b)
    for u, v in zip(a, b):
        u, v = np.asarray(u), np.asarray(v)
        assert u.dtype == v.dtype and u.shape == v.shape, (u.dtype, v.dtype, u.shape, v.shape)
        np.testing.assert_array_equal(u, v)


# --------------------------------------------------------------------------- bijectors
def _extra_cases():
    """Stateful layers not in CASES in their stateful mode, and a Chain that fails late."""
    def actnorm(rng):
        layer = B.ActNorm(3)
        return layer, (lambda r, n: np.random.default_rng(r).normal(size=(n, 3))), \
            (lambda r, n: np.random.default_rng(r).normal(size=(n, 3))), None

    def batchnorm_train(rng):
        layer = B.BatchNorm(3).train()
        return layer, (lambda r, n: np.random.default_rng(r).normal(size=(n, 3))), \
            (lambda r, n: np.random.default_rng(r).normal(size=(n, 3))), None

    def chain_late_failure(rng):
        # ActNorm (uninitialised) first, then Logit whose domain is (0, 1): most inputs fail in
        # the second layer, after ActNorm has computed its initialisation.
        layer = B.Chain([B.ActNorm(3), B.BatchNorm(3).train(), B.Sigmoid(3)])
        return layer, (lambda r, n: np.random.default_rng(r).normal(size=(n, 3))), \
            (lambda r, n: np.random.default_rng(r).uniform(0.05, 0.95, size=(n, 3))), None

    return {"actnorm_uninitialized": actnorm, "batchnorm_train": batchnorm_train,
            "chain_stateful": chain_late_failure}


ALL_CASES = dict(CASES, **_extra_cases())


def _names(bijector):
    """A container's error may name the inner layer that refused (``BatchNorm.forward``)."""
    names = [type(bijector).__name__, bijector._name()]
    for child in bijector._children():
        names += _names(child)
    return names


def _bijector_call(bijector, method, value, context):
    fn = getattr(bijector, method)
    if context is _NO_CONTEXT:
        return lambda: fn(value)
    return lambda: fn(value, context=context)


_NO_CONTEXT = object()


def _context_for(bijector, n, data, rng, sample_context):
    """A context (or a bad one) and the valid context to compare with."""
    if bijector.context_dim is None:
        kind = data.draw(st.sampled_from(["absent"] * 4 + ["given"]), label="context")
        if kind == "absent":
            return _NO_CONTEXT, _NO_CONTEXT
        return np.zeros((max(n, 1), 2)), None
    valid = sample_context(int(rng.integers(1 << 30)), max(n, 1))[:n]
    kind = data.draw(st.sampled_from(["valid", "shared", "fortran", "list", "float32", "int",
                                      "none", "wrong_dim", "wrong_rows", "three_d", "nan",
                                      "complex", "strings"]), label="context")
    c = bijector.context_dim
    if kind == "valid":
        return valid, valid
    if kind == "shared":
        return valid[0].copy() if n else np.zeros(c), "shared"
    if kind == "fortran":
        return np.asfortranarray(valid), valid
    if kind == "list":
        return valid.tolist(), valid
    if kind == "float32":
        return valid.astype(np.float32), valid.astype(np.float32)
    if kind == "int":
        v = np.rint(valid).astype(int)
        return v, v.astype(np.float64)
    if kind == "none":
        return _NO_CONTEXT, None
    if kind == "wrong_dim":
        return np.zeros((n, c + 1)), None
    if kind == "wrong_rows":
        return np.zeros((n + 2, c)), None
    if kind == "three_d":
        return valid[None], None
    if kind == "nan":
        if n == 0:
            return np.full(c, np.nan), None
        v = valid.copy()
        v[0, 0] = np.nan
        return v, None
    if kind == "complex":
        return valid + 0j + 1j, None
    if kind == "strings":
        return valid.astype(str) if n else np.array(["a"] * c), None
    raise AssertionError(kind)


@pytest.mark.parametrize("case_id", sorted(ALL_CASES))
@FUZZ
@given(data=st.data())
def test_bijector_entry_points(case_id, data):
    seed = data.draw(st.integers(0, 2**16), label="seed")
    rng = np.random.default_rng(seed)
    bijector, sample_z, sample_x, sample_context = ALL_CASES[case_id](seed)
    method = data.draw(st.sampled_from(["forward", "inverse", "forward_vjp", "inverse_vjp"]),
                       label="method")
    direction = method.split("_")[0]
    n = data.draw(st.integers(1, 4), label="n")
    sampler = sample_z if direction == "forward" else sample_x
    valid = np.asarray(sampler(seed + 1, n), dtype=np.float64)
    form = data.draw(st.sampled_from(ALL_FORMS), label="form")
    value, reference = make_variant(form, valid, rng)
    n_rows = 0 if form == "empty" else n
    context, context_ref = _context_for(bijector, n_rows, data, rng, sample_context)
    EXAMPLES[f"{type(bijector).__name__}.{method}"] += 1
    names = _names(bijector)

    if isinstance(reference, np.ndarray) and context_ref is not None:
        # Compare with a fresh copy of the layer (stateful layers change on success).
        twin, *_ = ALL_CASES[case_id](seed)
        ref_context = context
        if context_ref is not _NO_CONTEXT and isinstance(context_ref, np.ndarray):
            ref_context = context_ref.astype(reference.dtype) if reference.ndim == 2 else context
        ref_outcome = outcome(_bijector_call(twin, method, reference, ref_context), names)
    else:
        ref_outcome = None

    before = snapshot(bijector)
    status, result = outcome(_bijector_call(bijector, method, value, context), names)

    if status == "refused":
        assert_same_state(before, snapshot(bijector))
        if ref_outcome is not None:
            assert ref_outcome[0] == "refused", (
                f"{form}: refused ({result}) but the contiguous copy works")
        return
    assert reference is not None and context_ref is not None, (
        f"{form} input (context {context_ref!r}) was accepted: {result!r}")
    out, log_det = result[0], result[1]
    assert all_finite(out, log_det), f"{form}: non-finite output"
    if isinstance(reference, np.ndarray):
        want_dtype = np.float32 if reference.dtype == np.float32 else np.float64
        assert out.dtype == want_dtype and np.asarray(log_det).dtype == want_dtype
        assert out.shape == reference.shape and np.shape(log_det) == reference.shape[:-1]
        if ref_outcome is not None:
            assert ref_outcome[0] == "ok", f"{form}: works but the contiguous copy fails"
            same(result[:2], ref_outcome[1][:2])
    if method.endswith("_vjp"):
        _fuzz_pullback(bijector, result, out, log_det, data, rng, names,
                       None if ref_outcome is None else ref_outcome[1])


COTANGENT_FORMS = ["none", "valid", "fortran", "list", "int", "float32", "read_only",
                   "wrong_shape", "nan", "inf", "complex", "strings", "three_d"]


def _fuzz_pullback(bijector, result, out, log_det, data, rng, names, ref_result):
    pullback = result[2]
    out_shape, ld_shape = np.shape(out), np.shape(log_det)
    for which in ("out", "log_det"):
        shape = out_shape if which == "out" else ld_shape
        form = data.draw(st.sampled_from(COTANGENT_FORMS), label=f"{which}_bar")
        EXAMPLES[f"{type(bijector).__name__}.pullback({which}_bar)"] += 1
        valid = rng.normal(size=shape)
        bar = {"none": None, "valid": valid, "fortran": np.asfortranarray(valid),
               "list": valid.tolist(), "int": np.rint(valid).astype(int),
               "float32": valid.astype(np.float32), "read_only": valid.copy(),
               "wrong_shape": np.zeros(tuple(s + 1 for s in shape) or (2,)),
               "nan": np.full(shape, np.nan), "inf": np.full(shape, np.inf),
               "complex": valid + 1j, "strings": valid.astype(str),
               "three_d": np.zeros((1, *shape, 1))}[form]
        if form == "read_only":
            bar.setflags(write=False)
        ref = None if bar is None else np.asarray(bar)
        good = form in ("none", "valid", "fortran", "list", "int", "float32", "read_only")
        if form in ("nan", "inf") and 0 in shape:
            good = True  # nothing to be non-finite in an empty cotangent
        args = (bar, None) if which == "out" else (None, bar)
        status, res = outcome(lambda: pullback(*args), names)
        if not good:
            assert status == "refused", f"{form} {which}_bar accepted"
            continue
        if status == "refused":
            # A valid cotangent may still overflow the gradient; it must do so for the
            # contiguous float64 copy as well.
            ref_args = (None if ref is None else np.ascontiguousarray(ref, dtype=np.float64),)
            ref_args = (ref_args[0], None) if which == "out" else (None, ref_args[0])
            assert outcome(lambda: pullback(*ref_args), names)[0] == "refused"
            continue
        in_bar, grads = res[0], res[1]
        assert all_finite(in_bar, *grads.values(), *res[2:])
        assert set(grads) == set(bijector.params)
        for k, g in grads.items():
            assert g.dtype == np.float64 and g.shape == bijector.params[k].shape
        if ref is not None and form != "float32":
            ref64 = np.array(ref, dtype=out.dtype, order="C")  # ascontiguousarray makes 0-D 1-D
            ref_args = (ref64, None) if which == "out" else (None, ref64)
            same(res[:1], pullback(*ref_args)[:1])
            for k in grads:
                np.testing.assert_array_equal(grads[k], pullback(*ref_args)[1][k])


# --------------------------------------------------------------------------- flows
def _flows():
    rng = 0
    return {
        "realnvp": lambda: refflow.RealNVP(3, n_layers=2, hidden=(8,), rng=rng),
        "maf": lambda: refflow.MAF(3, n_layers=2, hidden=(8,), rng=rng),
        "nsf": lambda: refflow.NSF(2, n_layers=2, hidden=(8,), n_bins=4, rng=rng),
        "maf_conditional": lambda: refflow.MAF(3, n_layers=2, hidden=(8,), context_dim=2,
                                               rng=rng),
        "planar_diag": lambda: Flow(DiagNormal(3), B.Chain([B.Planar(3, rng=1), B.ActNorm(3)])),
        "batchnorm_train": lambda: Flow(StandardNormal(3),
                                        B.Chain([B.BatchNorm(3).train(), B.Affine(3)])),
    }


FLOWS = _flows()


def _flow_context(flow, n, data, rng):
    if flow.bijector.context_dim is None:
        if data.draw(st.booleans(), label="give_context"):
            return np.zeros((max(n, 1), 2)), False
        return None, True
    c = flow.bijector.context_dim
    kind = data.draw(st.sampled_from(["valid", "shared", "none", "wrong_dim", "wrong_rows",
                                      "nan", "complex"]), label="context")
    valid = rng.normal(size=(n, c))
    return {"valid": (valid, True), "shared": (rng.normal(size=c), True),
            "none": (None, False), "wrong_dim": (np.zeros((n, c + 1)), False),
            "wrong_rows": (np.zeros((n + 1, c)), False),
            "nan": (np.full((n, c), np.nan), n == 0),
            "complex": (valid + 1j, False)}[kind]


@pytest.mark.parametrize("flow_id", sorted(FLOWS))
@FUZZ
@given(data=st.data())
def test_flow_density_entry_points(flow_id, data):
    flow = FLOWS[flow_id]()
    seed = data.draw(st.integers(0, 2**16), label="seed")
    rng = np.random.default_rng(seed)
    method = data.draw(st.sampled_from(["log_prob", "log_prob_vjp", "nll_and_grad"]),
                       label="method")
    n = data.draw(st.integers(1, 4), label="n")
    valid = rng.normal(size=(n, flow.dim))
    form = data.draw(st.sampled_from(ALL_FORMS), label="form")
    value, reference = make_variant(form, valid, rng)
    n_rows = 0 if form == "empty" else (1 if form == "single_point" else n)
    context, context_ok = _flow_context(flow, n_rows, data, rng)
    EXAMPLES[f"Flow.{method}"] += 1
    names = ["Flow"] + _names(flow.bijector)

    def call(f, v):
        fn = getattr(f, method)
        return (lambda: fn(v)) if context is None else (lambda: fn(v, context=context))

    before = snapshot(flow)
    status, result = outcome(call(flow, value), names)
    if status == "refused":
        assert_same_state(before, snapshot(flow))
        if isinstance(reference, np.ndarray) and context_ok:
            assert outcome(call(FLOWS[flow_id](), reference), names)[0] == "refused", form
        return
    assert reference is not None and context_ok, f"{form} accepted"
    if method == "nll_and_grad":
        loss, grads = result
        assert np.isfinite(loss) and all_finite(*grads.values())
        assert set(grads) == set(flow.params)
    else:
        lp = result[0] if method == "log_prob_vjp" else result
        # extreme magnitudes included: an overflowing log-density is refused, never -inf
        # (test_flow_log_prob_overflow_is_refused below)
        assert all_finite(lp)
        if method == "log_prob_vjp":
            pb = result[1]
            bar_form = data.draw(st.sampled_from(["none", "valid", "nan", "wrong", "str"]))
            EXAMPLES["Flow.log_prob_vjp pullback"] += 1
            bar = {"none": None, "valid": np.ones(np.shape(lp)), "nan": np.full(np.shape(lp), np.nan),
                   "wrong": np.ones(np.size(lp) + 1), "str": "abc"}[bar_form]
            st2, res = outcome(lambda: pb(bar), names)
            if bar_form == "none":
                # Flow's pullback takes a required log_prob_bar (unlike a bijector's pullback,
                # where None means zeros): refusing None cleanly is the documented behaviour.
                assert st2 == "refused", res
            elif bar_form == "valid" and isinstance(reference, str) and st2 == "refused":
                assert "not finite" in res  # extreme input: the gradient overflows
            elif bar_form == "valid" or (bar_form == "nan" and np.size(lp) == 0):
                assert st2 == "ok", res
                assert all_finite(res[0], *res[1].values())
            else:
                assert st2 == "refused", bar_form
    if isinstance(reference, np.ndarray) and form not in ("c_contiguous",):
        ref = outcome(call(FLOWS[flow_id](), reference), names)
        assert ref[0] == "ok", form
        got = result if method == "nll_and_grad" else (result[0] if method == "log_prob_vjp"
                                                        else result)
        want = ref[1] if method == "nll_and_grad" else (ref[1][0] if method == "log_prob_vjp"
                                                        else ref[1])
        if method == "nll_and_grad":
            assert got[0] == want[0]
            for k in got[1]:
                np.testing.assert_array_equal(got[1][k], want[1][k])
        else:
            same((got,), (want,))


BAD_N = [-1, -5, 2.0, 2.5, True, False, np.bool_(True), "3", None, [2], np.array([2]),
         float("nan"), 1j]
GOOD_N = [0, 1, 3, np.int64(2), np.int32(1)]
BAD_RNG = [-1, 1.5, "seed", [1, 2], np.random.RandomState(0), True, object(), np.float64(1.0)]
GOOD_RNG = [None, 0, 7, np.int64(3), "generator"]


@pytest.mark.parametrize("flow_id", sorted(FLOWS))
@FUZZ
@given(data=st.data())
def test_flow_sampling_entry_points(flow_id, data):
    flow = FLOWS[flow_id]()
    method = data.draw(st.sampled_from(["sample", "sample_and_log_prob", "kl_and_grad", "kl"]))
    n = data.draw(st.sampled_from(GOOD_N + BAD_N), label="n")
    rng = data.draw(st.sampled_from(GOOD_RNG + BAD_RNG), label="rng")
    rng = np.random.default_rng(5) if isinstance(rng, str) and rng == "generator" else rng
    # BatchNorm in training mode has no sampling direction (statistics come from data).
    mode_good = flow_id != "batchnorm_train"
    n_good = any(n is g for g in GOOD_N) or (type(n) in (int, np.int64, np.int32) and n >= 0
                                              and not isinstance(n, bool))
    rng_good = rng is None or isinstance(rng, np.random.Generator) or (
        type(rng) in (int, np.int64) and rng >= 0)
    dim = flow.dim
    ctx_kind = data.draw(st.sampled_from(["auto", "none", "bad"]), label="context")
    conditional = flow.bijector.context_dim is not None
    if ctx_kind == "auto":
        context = np.zeros(flow.bijector.context_dim) if conditional else None
        ctx_good = True
    elif ctx_kind == "none":
        context, ctx_good = None, not conditional
    else:
        context, ctx_good = np.zeros((1, 7)), False
    target = data.draw(st.sampled_from(["good", "pair", "not_callable", "bad_shape", "nan",
                                        "single"]), label="target")

    def log_target(x, *context):  # a conditional flow's target also receives the context
        return -0.5 * (x ** 2).sum(axis=1), -x

    targets = {"good": log_target,
               "pair": (lambda x, *c: -0.5 * (x ** 2).sum(axis=1), lambda x, *c: -x),
               "not_callable": 3.0, "bad_shape": lambda x, *c: (np.zeros(len(x) + 1), -x),
               "nan": lambda x, *c: (np.full(len(x), np.nan), -x),
               "single": lambda x, *c: -0.5 * (x ** 2).sum(axis=1)}
    EXAMPLES[f"Flow.{method}"] += 1
    names = ["Flow"] + _names(flow.bijector)
    fn = getattr(flow, method)
    if method.startswith("kl"):
        call = lambda: fn(targets[target], n, rng, context=context)  # noqa: E731
        target_good = target in ("good", "pair") or (target == "single" and method == "kl")
        # kl_and_grad needs n >= 1; kl n >= 2 (it also returns a standard error).
        n_good = n_good and not (type(n) in (int, np.int64, np.int32)
                                 and n < (2 if method == "kl" else 1))
    else:
        call = lambda: fn(n, rng, context=context)  # noqa: E731
        target_good = True
    before = snapshot(flow)
    status, result = outcome(call, names)
    if status == "refused":
        assert_same_state(before, snapshot(flow))
        assert not (n_good and rng_good and ctx_good and target_good and mode_good), result
        return
    assert n_good and rng_good and ctx_good and target_good and mode_good, (n, rng, ctx_kind,
                                                                            target)
    if method == "sample":
        assert result.shape == (n, dim) and result.dtype == np.float64 and all_finite(result)
    elif method == "sample_and_log_prob":
        x, lp = result
        assert x.shape == (n, dim) and lp.shape == (n,) and all_finite(x, lp)
    elif method == "kl_and_grad":
        kl, grads = result
        assert np.isfinite(kl) and all_finite(*grads.values())
    else:
        assert all_finite(*result)  # (kl, standard error)


# ------------------------------------------------------------------------- MLP, MADE
NETS = {
    "mlp": lambda: MLP(3, 4, hidden=(5,), rng=0),
    "mlp_no_input": lambda: MLP(0, 2, hidden=(3,), rng=0),
    "made": lambda: MADE(3, (6,), 2, rng=0),
    "made_context": lambda: MADE(3, (6,), 2, context_features=2, rng=0),
}


@pytest.mark.parametrize("net_id", sorted(NETS))
@FUZZ
@given(data=st.data())
def test_networks(net_id, data):
    net = NETS[net_id]()
    is_mlp = isinstance(net, MLP)
    in_dim = net.in_features if is_mlp else net.dim
    if in_dim == 0:
        valid = np.zeros((data.draw(st.integers(1, 3)), 0))
        form = data.draw(st.sampled_from(["c_contiguous", "list", "empty", "none", "three_d",
                                          "strings", "complex"]), label="form")
        value, reference = {"c_contiguous": (valid, valid), "list": (valid.tolist(), "any"),
                            "empty": (np.zeros((0, 0)), np.zeros((0, 0))),
                            "none": (None, None), "three_d": (valid[None], None),
                            "strings": (np.array([["a"]]), None),
                            "complex": (valid + 0j, None)}[form]
    else:
        seed = data.draw(st.integers(0, 2**16), label="seed")
        rng = np.random.default_rng(seed)
        valid = rng.normal(size=(data.draw(st.integers(1, 4), label="n"), in_dim))
        form = data.draw(st.sampled_from(ALL_FORMS), label="form")
        value, reference = make_variant(form, valid, rng)
    method = data.draw(st.sampled_from(["call", "vjp"]), label="method")
    name = type(net).__name__
    EXAMPLES[f"{name}.{method}"] += 1
    context_kind = "none"
    context = None
    if not is_mlp:
        n_rows = np.shape(reference)[0] if isinstance(reference, np.ndarray) and np.ndim(reference) == 2 else 1
        context_kind = data.draw(st.sampled_from(["none", "valid", "shared", "wrong", "nan"]),
                                 label="context")
        cf = max(net.context_features, 1)
        context = {"none": None, "valid": np.ones((n_rows, cf)), "shared": np.ones(cf),
                   "wrong": np.ones((n_rows + 1, cf + 1)),
                   "nan": np.full((n_rows, cf), np.nan)}[context_kind]
    context_good = (context_kind == "none") if is_mlp or net.context_features == 0 else (
        context_kind in ("valid", "shared"))
    if context_kind == "nan" and np.ndim(reference) == 2 and np.shape(reference)[0] == 0:
        context_good = not (is_mlp or net.context_features == 0)

    def call(v):
        if is_mlp:
            return (lambda: net(v)) if method == "call" else (lambda: net.vjp(v))
        return (lambda: net(v, context)) if method == "call" else (lambda: net.vjp(v, context))

    before = snapshot(net)
    status, result = outcome(call(value), [name])
    if status == "refused":
        assert_same_state(before, snapshot(net))
        assert reference is None or reference == "extreme" or not context_good \
            if not isinstance(reference, np.ndarray) else not context_good or \
            outcome(call(reference), [name])[0] == "refused"
        return
    assert reference is not None and context_good, (form, context_kind)
    out = result if method == "call" else result[0]
    assert all_finite(out)
    if isinstance(reference, np.ndarray):
        assert out.dtype == (np.float32 if reference.dtype == np.float32 else np.float64)
        ref = outcome(call(reference), [name])
        assert ref[0] == "ok"
        same((out,), (ref[1] if method == "call" else ref[1][0],))
    if method == "vjp":
        pb = result[1]
        bar_form = data.draw(st.sampled_from(["none", "valid", "nan", "wrong", "str"]))
        EXAMPLES[f"{name}.vjp pullback"] += 1
        bar = {"none": None, "valid": np.ones(out.shape), "nan": np.full(out.shape, np.nan),
               "wrong": np.ones(out.shape + (2,)), "str": "x"}[bar_form]
        st2, res = outcome(lambda: pb(bar), [name])
        if bar_form == "valid" and isinstance(reference, str) and st2 == "refused":
            assert "not finite" in res  # extreme input: the gradient overflows
        elif bar_form in ("none", "valid") or (bar_form == "nan" and out.size == 0):
            assert st2 == "ok", res
            assert all_finite(*res[:1], *res[1].values(), *res[2:])
        else:
            assert st2 == "refused", bar_form


# ------------------------------------------------------------------------- optimizers
def _opt_params():
    return {"a": np.zeros(3), "b": np.ones((2, 2))}


@pytest.mark.parametrize("opt_name", ["Adam", "SGD"])
@FUZZ
@given(data=st.data())
def test_optimizer_step(opt_name, data):
    params = _opt_params()
    cls = getattr(refflow.optim, opt_name)
    opt = cls(params, lr=0.1)
    opt.step({"a": np.ones(3), "b": np.ones((2, 2))})  # state is not trivially zero
    kind = data.draw(st.sampled_from(["valid", "list", "int", "float32", "fortran", "read_only",
                                      "missing", "extra", "wrong_shape", "nan", "inf",
                                      "complex", "strings", "none", "not_mapping", "huge",
                                      "object_floats"]), label="grads")
    EXAMPLES[f"{opt_name}.step"] += 1
    good_b = np.arange(4.0).reshape(2, 2)
    grads = {"a": np.full(3, 0.5), "b": good_b}
    if kind == "list":
        grads["b"] = good_b.tolist()
    elif kind == "int":
        grads["b"] = good_b.astype(int)
    elif kind == "float32":
        grads["b"] = good_b.astype(np.float32)
    elif kind == "fortran":
        grads["b"] = np.asfortranarray(good_b)
    elif kind == "read_only":
        grads["b"] = good_b.copy()
        grads["b"].setflags(write=False)
    elif kind == "object_floats":
        grads["b"] = good_b.astype(object)
    elif kind == "missing":
        del grads["b"]
    elif kind == "extra":
        grads["c"] = np.zeros(1)
    elif kind == "wrong_shape":
        grads["b"] = np.zeros(4)
    elif kind == "nan":
        grads["b"] = np.full((2, 2), np.nan)
    elif kind == "inf":
        grads["a"] = np.full(3, -np.inf)
    elif kind == "complex":
        grads["b"] = good_b + 1j
    elif kind == "strings":
        grads["b"] = good_b.astype(str)
    elif kind == "none":
        grads["b"] = None
    elif kind == "not_mapping":
        grads = [np.ones(3), good_b]
    elif kind == "huge":
        grads["b"] = np.full((2, 2), 1e308)
    good = kind in ("valid", "list", "int", "float32", "fortran", "read_only", "object_floats",
                    "huge")
    before = snapshot(opt)
    before_params = copy.deepcopy(params)
    status, result = outcome(lambda: opt.step(grads), [opt_name])
    if status == "refused":
        assert not good or kind == "huge", (kind, result)
        assert_same_state(before, snapshot(opt))
        for k in params:
            np.testing.assert_array_equal(params[k], before_params[k])
        return
    assert good, kind
    assert all_finite(*params.values())
    twin = cls(_opt_params(), lr=0.1)
    twin.step({"a": np.ones(3), "b": np.ones((2, 2))})
    twin.step({"a": np.full(3, 0.5), "b": np.asarray(grads["b"], dtype=np.float64)})
    for k in params:
        np.testing.assert_array_equal(params[k], twin.params[k])


# ------------------------------------------------------------------------------ fit
@FUZZ
@given(data=st.data())
def test_train_fit(data):
    flow = refflow.RealNVP(2, n_layers=1, hidden=(4,), rng=0)
    rng = np.random.default_rng(data.draw(st.integers(0, 100), label="seed"))
    valid = rng.normal(size=(12, 2))
    form = data.draw(st.sampled_from(ALL_FORMS), label="form")
    value, reference = make_variant(form, valid, rng)
    option = data.draw(st.sampled_from(
        ["none", "epochs=0", "epochs=-1", "epochs=1.5", "batch_size=0", "batch_size=True",
         "lr=-1", "lr=nan", "validation_fraction=1.0", "validation_fraction=-0.1",
         "rng=-3", "rng=str", "context", "patience=0", "validation_data=bad",
         "validation_data=nan", "clip_grad_norm=-1", "lr_schedule=bogus", "optimizer=3",
         "callback=3"]), label="option")
    kwargs = {"epochs": 2, "batch_size": 5, "progress": False, "rng": 0}
    good_option = option in ("none",)
    if option != "none":
        key, _, raw = option.partition("=")
        value_map = {"0": 0, "-1": -1, "1.5": 1.5, "True": True, "nan": float("nan"), "1.0": 1.0,
                     "-0.1": -0.1, "-3": -3, "str": "abc", "bogus": "bogus", "3": 3,
                     "bad": np.zeros((3, 5)), }
        if key == "context":
            kwargs["context"] = np.zeros((12, 1))
        elif key == "validation_data" and raw == "nan":
            kwargs["validation_data"] = np.full((3, 2), np.nan)
        else:
            kwargs[key] = value_map[raw]
    EXAMPLES["train.fit"] += 1
    before = snapshot(flow)
    status, result = outcome(lambda: refflow.train.fit(flow, value, **kwargs), ["fit"])
    if status == "refused":
        assert_same_state(before, snapshot(flow))
        if isinstance(reference, np.ndarray) and good_option and reference.shape[0] > 0:
            twin = refflow.RealNVP(2, n_layers=1, hidden=(4,), rng=0)
            assert outcome(lambda: refflow.train.fit(twin, reference, **kwargs),
                           ["fit"])[0] == "refused", (form, result)
        return
    assert good_option and reference is not None, (form, option)
    assert all_finite(*flow.params.values())
    assert len(result.train_nll) >= 1 and all(np.isfinite(result.train_nll))
    if isinstance(reference, np.ndarray) and form not in ("c_contiguous", "float32", "float16"):
        twin = refflow.RealNVP(2, n_layers=1, hidden=(4,), rng=0)
        refflow.train.fit(twin, reference, **kwargs)
        for k in flow.params:
            np.testing.assert_array_equal(flow.params[k], twin.params[k])


# ------------------------------------------------------------------------- estimator
def _estimator_variant(form, valid, rng):
    """As ``make_variant``; an object array holding a numeric string is valid X for sklearn's
    ``check_array`` (it converts with ``astype(float)``), and FlowDensity follows it."""
    value, reference = make_variant(form, valid, rng)
    if form == "object_of_strings":
        reference = valid.copy()
        reference[0, 0] = 1.0
    return value, reference


@pytest.fixture(scope="module")
def fitted():
    rng = np.random.default_rng(0)
    return refflow.FlowDensity(flow="realnvp", n_layers=1, hidden=(4,), epochs=2,
                               batch_size=16, random_state=0, progress=False).fit(
        rng.normal(size=(40, 2)))


@FUZZ
@given(data=st.data())
def test_estimator_scoring(fitted, data):
    rng = np.random.default_rng(data.draw(st.integers(0, 100), label="seed"))
    valid = rng.normal(size=(data.draw(st.integers(1, 4)), 2))
    form = data.draw(st.sampled_from(ALL_FORMS), label="form")
    value, reference = _estimator_variant(form, valid, rng)
    method = data.draw(st.sampled_from(["score_samples", "score"]), label="method")
    EXAMPLES[f"FlowDensity.{method}"] += 1
    before = snapshot(fitted.flow_)
    status, result = outcome(lambda: allow_inf_scores(getattr(fitted, method))(value),
                             ["FlowDensity"])
    assert_same_state(before, snapshot(fitted.flow_))
    if status == "refused":
        if isinstance(reference, np.ndarray) and reference.ndim == 2 and reference.shape[0] > 0:
            assert outcome(lambda: getattr(fitted, method)(reference),
                           ["FlowDensity"])[0] == "refused", (form, result)
        return
    assert reference is not None, form
    if isinstance(reference, str):  # extreme magnitudes: -inf from Flow.log_prob (reported)
        assert not np.isnan(result).any() and not (np.asarray(result) == np.inf).any()
        result = np.where(np.isneginf(result), 0.0, result)
    assert all_finite(result)
    if isinstance(reference, np.ndarray):
        want = getattr(fitted, method)(np.ascontiguousarray(reference, dtype=np.float64))
        np.testing.assert_array_equal(result, want)


@FUZZ
@given(n=st.sampled_from(GOOD_N + BAD_N), rs=st.sampled_from(GOOD_RNG + BAD_RNG))
def test_estimator_sample(fitted, n, rs):
    EXAMPLES["FlowDensity.sample"] += 1
    rs = np.random.default_rng(1) if isinstance(rs, str) and rs == "generator" else rs
    status, result = outcome(lambda: fitted.sample(n, random_state=rs), ["FlowDensity"])
    n_ok = type(n) in (int, np.int64, np.int32) and n >= 1
    rs_ok = rs is None or isinstance(rs, (np.random.Generator, np.random.RandomState)) or (
        type(rs) in (int, np.int64) and rs >= 0)
    if status == "refused":
        assert not (n_ok and rs_ok), result
        return
    assert n_ok and rs_ok, (n, rs)
    assert result.shape == (n, 2) and all_finite(result)


@FUZZ
@given(data=st.data())
def test_estimator_fit(data):
    rng = np.random.default_rng(data.draw(st.integers(0, 100), label="seed"))
    valid = rng.normal(size=(data.draw(st.integers(2, 12)), data.draw(st.integers(1, 3))))
    # Any number of features is valid here; a single point is one sample (refused: n < 2).
    form = data.draw(st.sampled_from([f for f in ALL_FORMS if f not in ("wrong_dim",)]),
                     label="form")
    value, reference = _estimator_variant(form, valid, rng)
    EXAMPLES["FlowDensity.fit"] += 1
    est = refflow.FlowDensity(flow=data.draw(st.sampled_from(["realnvp", "maf", "nsf"])),
                              n_layers=1, hidden=(4,), epochs=1, batch_size=8, random_state=0,
                              progress=False)
    # TrainingDiverged (a ValueError) names refflow.train.fit, which FlowDensity.fit runs.
    status, result = outcome(lambda: est.fit(value), ["FlowDensity", "fit:"])
    if status == "refused":
        assert not hasattr(est, "flow_")
        if isinstance(reference, np.ndarray) and reference.shape[0] >= 2 and form != "bool":
            twin = refflow.FlowDensity(**est.get_params())
            assert outcome(lambda: twin.fit(reference), ["FlowDensity", "fit:"])[0] == "refused", (
                form, result)
        return
    assert reference is not None, form
    assert all_finite(*est.flow_.params.values())
    # A fit that succeeds gives a model that scores its own training data.
    train = np.asarray(value, dtype=np.float64)
    assert outcome(lambda: est.score_samples(train), ["FlowDensity"])[0] == "ok", form
    if isinstance(reference, np.ndarray):
        twin = refflow.FlowDensity(**est.get_params()).fit(
            np.ascontiguousarray(reference, dtype=np.float64))
        for k in est.flow_.params:
            np.testing.assert_array_equal(est.flow_.params[k], twin.flow_.params[k])


# ------------------------------------------------------------------------------ io.load
@pytest.fixture(scope="module")
def model_bytes(tmp_path_factory, fitted):
    path = tmp_path_factory.mktemp("model") / "model.npz"
    refflow.io.save(path, fitted)
    return path.read_bytes()


@FUZZ
@given(data=st.data())
def test_io_load_mutated(model_bytes, tmp_path_factory, data):
    kind = data.draw(st.sampled_from(["flip", "truncate", "random", "insert", "empty",
                                      "splice"]), label="kind")
    blob = bytearray(model_bytes)
    if kind == "flip":
        for _ in range(data.draw(st.integers(1, 8))):
            i = data.draw(st.integers(0, len(blob) - 1))
            blob[i] ^= 1 << data.draw(st.integers(0, 7))
    elif kind == "truncate":
        blob = blob[:data.draw(st.integers(0, len(blob) - 1))]
    elif kind == "random":
        blob = bytearray(data.draw(st.binary(max_size=512)))
    elif kind == "insert":
        i = data.draw(st.integers(0, len(blob)))
        blob[i:i] = data.draw(st.binary(min_size=1, max_size=16))
    elif kind == "empty":
        blob = bytearray()
    else:
        i, j = sorted(data.draw(st.lists(st.integers(0, len(blob)), min_size=2, max_size=2)))
        blob[i:j] = bytes(reversed(blob[i:j]))
    EXAMPLES["io.load"] += 1
    path = tmp_path_factory.mktemp("mut") / "m.npz"
    path.write_bytes(bytes(blob))
    status, result = outcome(lambda: refflow.io.load(path), ["load", str(path)])
    if status == "ok":
        # Only an unchanged model may load (bit flips inside ignored bytes, e.g. zip padding).
        assert isinstance(result, refflow.FlowDensity)
        x = np.random.default_rng(0).normal(size=(5, 2))
        assert all_finite(result.score_samples(x))


def _leaves(node, path=()):
    """Paths to every leaf (and every container) of a JSON tree."""
    yield path
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _leaves(v, path + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _leaves(v, path + (i,))


JSON_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 3), st.sampled_from([-2**63, 2**64, 10**6]),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=8),
    st.sampled_from(["Affine", "Flow", "Chain", "StandardNormal", "os.system", "realnvp"]),
    st.lists(st.integers(-2, 5), max_size=3), st.dictionaries(st.text(max_size=3),
                                                              st.integers(), max_size=2))


@FUZZ
@given(data=st.data())
def test_io_load_semantic_mutations(model_bytes, tmp_path_factory, data):
    """Valid archives (digests recomputed) with a mutated header value or array."""
    import hashlib
    import json

    d = tmp_path_factory.mktemp("sem")
    src = d / "src.npz"
    src.write_bytes(model_bytes)
    with np.load(src, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    header = json.loads(str(arrays["header"]))
    kind = data.draw(st.sampled_from(["header", "array_value", "array_shape"]), label="kind")
    names = [a["name"] for a in header["arrays"]]
    if kind == "header":
        paths = [p for p in _leaves(header) if p]
        path = data.draw(st.sampled_from(paths), label="path")
        node = header
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = data.draw(JSON_VALUES, label="value")
    else:
        i = data.draw(st.integers(0, len(names) - 1), label="array")
        name = names[i]
        arr = np.array(arrays[name])
        if kind == "array_value" and arr.size:
            value = data.draw(st.sampled_from([np.nan, np.inf, -1.0, 0.0, 1e300, -1e300, 5e-324,
                                               2.0, 7.0]), label="value")
            flat = arr.reshape(-1)
            flat[data.draw(st.integers(0, arr.size - 1))] = (
                value if arr.dtype.kind == "f" else int(np.clip(np.nan_to_num(value), -5, 5)))
        else:
            arr = np.zeros(arr.shape + (1,), dtype=arr.dtype) if arr.ndim < 3 else arr[..., :1]
            header["arrays"][i]["shape"] = list(arr.shape)
        arrays[name] = np.ascontiguousarray(arr)
        header["arrays"][i]["sha256"] = hashlib.sha256(arrays[name].tobytes()).hexdigest()
    arrays["header"] = np.array(json.dumps(header))
    path = d / "m.npz"
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    EXAMPLES["io.load (semantic)"] += 1
    status, result = outcome(lambda: refflow.io.load(path), ["load"])
    if status == "ok":
        # A loaded model must work, or refuse cleanly, on ordinary points.
        x = np.random.default_rng(0).normal(size=(4, 2))
        scorer = getattr(result, "score_samples", None) or getattr(result, "log_prob", None)
        if scorer is not None and getattr(result, "n_features_in_", 2) == 2:
            st2, lp = outcome(lambda: allow_inf_scores(scorer)(x), ["FlowDensity", "Flow", "."])
            if st2 == "ok":
                assert not np.isnan(lp).any()


@pytest.mark.parametrize("path", [None, 3, 2.5, ["a"], b"\xff\xfe", "", "/nonexistent/x.npz"])
def test_io_load_bad_paths(path):
    EXAMPLES["io.load"] += 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises((ValueError, TypeError, FileNotFoundError)) as info:
            refflow.io.load(path)
    if not isinstance(info.value, FileNotFoundError):
        assert "load" in str(info.value)


# ------------------------------------------------------------------------- command line
@pytest.fixture(scope="module")
def cli_files(tmp_path_factory, model_bytes):
    d = tmp_path_factory.mktemp("cli")
    rng = np.random.default_rng(0)
    (d / "model.npz").write_bytes(model_bytes)
    np.save(d / "good.npy", rng.normal(size=(20, 2)))
    np.save(d / "wrong_dim.npy", rng.normal(size=(20, 3)))
    np.save(d / "nan.npy", np.full((4, 2), np.nan))
    np.save(d / "three_d.npy", np.zeros((2, 2, 2)))
    np.save(d / "empty.npy", np.zeros((0, 2)))
    np.save(d / "zero_d.npy", np.float64(1.0))
    np.save(d / "complex.npy", np.zeros((3, 2)) + 1j)
    np.save(d / "strings.npy", np.array([["a", "b"]]))
    np.save(d / "bool.npy", np.ones((5, 2), dtype=bool))
    np.save(d / "huge.npy", np.full((5, 2), 1e300))
    np.save(d / "object.npy", np.array([[1, "a"]], dtype=object), allow_pickle=True)
    (d / "good.csv").write_text("a,b\n1,2\n3,4\n5,6\n")
    (d / "ragged.csv").write_text("1,2\n3\n")
    (d / "text.csv").write_text("hello\nworld\n")
    (d / "empty.csv").write_text("")
    (d / "binary.npy").write_bytes(b"\x93NUMPY garbage")
    (d / "other.txt").write_text("1,2\n")
    (d / "data.bin").write_bytes(b"123")
    (d / "bad_model.npz").write_bytes(model_bytes[: len(model_bytes) // 2])
    return d


DATA_FILES = ["good.npy", "wrong_dim.npy", "nan.npy", "three_d.npy", "empty.npy", "zero_d.npy",
              "complex.npy", "strings.npy", "bool.npy", "huge.npy", "object.npy", "good.csv",
              "ragged.csv", "text.csv", "empty.csv", "binary.npy", "other.txt", "data.bin",
              "missing.npy", "two_moons", "model.npz"]


def _cli_args(data, d):
    command = data.draw(st.sampled_from(["fit", "score", "sample", "bogus", ""]), label="command")
    f = lambda: str(d / data.draw(st.sampled_from(DATA_FILES), label="data"))  # noqa: E731
    model = lambda: str(d / data.draw(st.sampled_from(  # noqa: E731
        ["model.npz", "bad_model.npz", "good.npy", "missing.npz"]), label="model"))
    extras = data.draw(st.lists(st.sampled_from(
        ["--n", "-3", "0", "5", "abc", "1e9", "--seed", "-1", "--epochs", "1", "--layers",
         "--hidden", "0,4", "4", "--lr", "nan", "inf", "--validation-fraction", "1.5",
         "--batch-size", "--model", "nosuch", "-n", "--unknown"]), max_size=4), label="extras")
    if command == "fit":
        argv = ["fit", f(), "-o", str(d / "out.npz"), "--epochs", "1", "--hidden", "4",
                "--layers", "1", "--no-progress", "--n", "50"]
    elif command == "score":
        argv = ["score", model(), f(), "-o", str(d / data.draw(st.sampled_from(
            ["scores.npy", "scores.txt"]), label="out"))]
    elif command == "sample":
        argv = ["sample", model(), "-n", data.draw(st.sampled_from(["3", "0", "-2", "x", "1.5"])),
                "-o", str(d / data.draw(st.sampled_from(["s.npy", "s.csv"]), label="out"))]
    else:
        argv = [command] if command else []
    return argv + extras


@FUZZ
@given(data=st.data())
def test_command_line(cli_files, data, capsys, monkeypatch):
    monkeypatch.delenv("REFFLOW_TRACEBACK", raising=False)
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "1")
    argv = _cli_args(data, cli_files)
    EXAMPLES["__main__.main"] += 1
    lines = []
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            code = refflow.__main__.main(argv, out=lines.append)
        except SystemExit as exc:  # argparse usage errors
            code = exc.code
    err = capsys.readouterr().err
    assert code in (0, 1, 2), (argv, code)
    if code == 1:
        assert err.startswith("refflow ") and "error:" in err and "Traceback" not in err, err
        assert len(err.strip().splitlines()) == 1, err
    elif code == 2:
        assert "usage" in err
    else:
        assert lines



def test_flow_log_prob_overflow_is_refused():
    # |z|^2 overflows in the base density at x ~ 1e300: a clear error, never a silent -inf
    flow = refflow.NSF(2, n_layers=2, hidden=(8,), n_bins=4, rng=0)
    x = np.array([[0.1, 0.2], [1e300, 1e300]])
    for call, rows in ((lambda: flow.log_prob(x), "1 of 2 rows \\(first row 1\\)"),
                       (lambda: flow.log_prob_vjp(x), "1 of 2 rows \\(first row 1\\)"),
                       (lambda: flow.log_prob(x, batch_size=1), "1 of 1 rows")):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with pytest.raises(ValueError, match=r"Flow\.log_prob.*not finite for " + rows):
                call()


def test_sample_too_large_for_memory_is_a_clear_error():
    # preallocated before any chunk runs: no list of 2^46 ranges, no half-done work
    flow = refflow.Flow(refflow.StandardNormal(2), refflow.Affine(2))
    with pytest.raises(ValueError, match=r"Flow\.sample: an output of shape .* GiB"):
        flow.sample(2**62, rng=0)


def test_kl_estimate_overflow_is_a_clear_error():
    flow = refflow.Flow(refflow.StandardNormal(2), refflow.Affine(2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match=r"Flow\.kl: the estimate overflows"):
            flow.kl(lambda x: np.full(len(x), -1e308), 3, rng=0)


@pytest.mark.parametrize("log_scale, method", [(800.0, "sample"), (-800.0, "log_prob")])
def test_diag_normal_scale_overflow_is_a_clear_error(log_scale, method):
    base = refflow.DiagNormal(2)
    base.params["log_scale"] = [log_scale, 0.0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match=rf"DiagNormal\.{method}: exp\(-?log_scale\) "
                                             rf"overflows"):
            base.sample(3, rng=0) if method == "sample" else base.log_prob(np.zeros((3, 2)))


def test_unknown_parameter_key_is_a_value_error_naming_paramdict():
    layer = refflow.Affine(2)
    with pytest.raises(ValueError, match=r"ParamDict: no parameter 'zzz'"):
        layer.params["zzz"] = [1.0]
    with pytest.raises(KeyError):        # still a KeyError too, as dict users expect
        layer.params["zzz"] = [1.0]
    with pytest.raises(ValueError, match=r"ParamDict: parameter 'shift': value holds NaN"):
        layer.params["shift"] = [np.nan, 0.0]
    assert np.all(layer.params["shift"] == 0.0)


def test_fit_refuses_subnormal_scale():
    """Regression: data with a subnormal standard deviation fitted, but the saved Affine's
    exp(-log(scale)) overflowed, so every score_samples of the fitted model raised."""
    X = np.random.default_rng(0).normal(size=(30, 2)) * 5e-324
    est = refflow.FlowDensity(n_layers=1, hidden=(4,), epochs=1, progress=False)
    with pytest.raises(ValueError, match="FlowDensity.fit: feature 0 has standard deviation"):
        est.fit(X)
    assert not hasattr(est, "flow_")
    # The smallest normal scales still fit and score.
    X = np.random.default_rng(0).normal(size=(30, 2)) * 3e-308
    est.fit(X)
    assert np.isfinite(est.score_samples(X)).all()


def test_fit_names_fit_for_bad_lr():
    """Regression: fit(lr=-1) raised 'Adam: lr must be positive', not naming fit."""
    flow = refflow.RealNVP(2, n_layers=1, hidden=(4,), rng=0)
    before = snapshot(flow)
    for lr, error in [(-1.0, ValueError), (float("nan"), ValueError), ("a", TypeError)]:
        with pytest.raises(error, match="^fit: Adam: lr must be"):
            refflow.train.fit(flow, np.zeros((5, 2)), lr=lr, progress=False)
    assert_same_state(before, snapshot(flow))


@pytest.mark.parametrize("key, value", [("val_nll", None), ("train_nll", None),
                                        ("best_epoch", "x"), ("n_steps", -1), ("extra", 1)])
def test_load_checks_estimator_history(model_bytes, tmp_path, key, value):
    """Regression: a model file whose history_ held None raised "TypeError: 'NoneType' object
    is not iterable" from load (and any key was set as an attribute of History)."""
    # (digests cover arrays only; the header is edited directly)
    import json

    src = tmp_path / "src.npz"
    src.write_bytes(model_bytes)
    with np.load(src, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    header = json.loads(str(arrays["header"]))
    header["spec"]["config"]["fitted"]["history_"][key] = value
    arrays["header"] = np.array(json.dumps(header))
    path = tmp_path / "m.npz"
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    with pytest.raises(ValueError, match=r"refflow\.io\.load.*history_"):
        refflow.io.load(path)


def test_cli_refuses_complex_data(cli_files, capsys):
    """Regression: `fit complex.npy` passed the numeric check and cast complex to float with a
    ComplexWarning (the imaginary part silently dropped)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        code = refflow.__main__.main(["fit", str(cli_files / "complex.npy"), "-o",
                                      str(cli_files / "c.npz"), "--epochs", "1"],
                                     out=lambda *a: None)
    assert code == 1
    assert "expected a non-empty numeric 2-D array" in capsys.readouterr().err


def test_cli_empty_csv_is_one_line(cli_files, capsys):
    """Regression: an empty .csv made numpy.loadtxt emit a UserWarning before the error line."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        code = refflow.__main__.main(["fit", str(cli_files / "empty.csv"), "-o",
                                      str(cli_files / "e.npz")], out=lambda *a: None)
    assert code == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "non-empty" in err


def test_cli_score_of_overflowing_points_is_one_clear_line(cli_files, capsys):
    """Regression: scoring points whose log-density overflows made std() emit a RuntimeWarning.
    Such rows now score -inf (as GaussianMixture gives), never silently: one warning line, and
    the summary says how many."""
    lines = []
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        code = refflow.__main__.main(["score", str(cli_files / "model.npz"),
                                      str(cli_files / "huge.npy")], out=lines.append)
    assert code == 0
    err = capsys.readouterr().err
    assert err.startswith("refflow score: warning: FlowDensity.score_samples: 5 of 5 rows lie "
                          "outside the range") and err.count("\n") == 1, err
    assert "5 points outside the range the model represents in float64: scored -inf" in \
        "\n".join(lines)
