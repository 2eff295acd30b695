"""The spline layers' fused "durkan" path against their composed reference path.

``RationalQuadraticSpline``, ``SplineCoupling`` and ``MaskedSplineAutoregressive`` with the
"durkan" map run every pass on the fused kernels of :mod:`refflow.kernels.splines`
(``refflow.bijectors.spline_core.rqs``); ``refflow.kernels.fast_paths(False, paths=["splines"])``
switches them to the reference path (the NumPy map's knot arrays, the NumPy twins of the knot
kernels, the map's pullback); the other maps run the numba knot kernels on the map's knots, or
the same twins. Here the two are compared pass by pass.

Tolerances
----------
- ``RTOL = 1e-12`` (float64), as ``|a - b| <= RTOL * max(1, max |b|)`` per array: the two paths
  compute the same formulas, but the knots differ by a few ulps (the fused kernels use their own
  ``exp`` and sequential sums, the map NumPy's SIMD ``exp`` and pairwise sums), which the
  spline's conditioning amplifies (up to ~1e2 for these parameters; the same bound as
  ``RTOL_VALUE`` in ``tests/test_spline_maps.py``). Measured: at most 3.5e-13 over the ~460
  checks of this file (the extreme-parameter cases), most below 1e-14.
- float32: both paths against the float64 result; the fused path's error at most 4x the
  reference path's (or ``10 eps32`` of the array's scale).
- On and next to knots: ``RTOL`` plus the reference's own change when the input moves by
  ``8 eps B`` (the knots' ulp-level difference; see ``test_fused_at_and_near_knots_and_bounds``).
"""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import refflow.bijectors.spline_core as spline_core
from refflow import MaskedSplineAutoregressive, RationalQuadraticSpline, SplineCoupling
from refflow.bijectors.spline_maps import get_spline_map
from refflow.kernels import NUMBA_DISABLED, fast_paths
from refflow.testing import assert_vjp

from ..helpers import randomize

RTOL = 1e-12

NON_DEFAULT = dict(bound=2.5, min_bin_width=1e-2, min_bin_height=5e-3, min_derivative=2e-2)


def _elementwise(rng, dim=4, context_dim=None, **kw):
    assert context_dim is None
    return randomize(RationalQuadraticSpline(dim, **kw), rng, 1.0)


def _coupling(rng, dim=5, context_dim=None, **kw):
    return randomize(SplineCoupling(dim, hidden=(12,), context_dim=context_dim, rng=rng, **kw),
                      rng, 0.4)


def _autoregressive(rng, dim=5, context_dim=None, order="reverse", **kw):
    return randomize(MaskedSplineAutoregressive(dim, hidden=(12, 12), context_dim=context_dim,
                                                 order=order, rng=rng, **kw), rng, 0.3)


BUILDERS = {"elementwise": _elementwise, "coupling": _coupling,
            "autoregressive": _autoregressive}
CONDITIONAL = ["coupling", "autoregressive"]


def _close(a, b, rtol):
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape and a.dtype == b.dtype, (a.shape, b.shape, a.dtype, b.dtype)
    scale = max(1.0, float(np.max(np.abs(b), initial=0.0)))
    err = float(np.max(np.abs(a.astype(np.float64) - b), initial=0.0))
    assert err <= rtol * scale, (err, scale)


def _run(layer, direction, v, context, fused, monkeypatch, bars=None):
    """``(out, log_det, in_bar, grads, context_bar)`` of one pass and its pullback."""
    args = (v,) if context is None else (v, context)
    with fast_paths(fused, paths=["splines"]):
        out, log_det = getattr(layer, direction)(*args)
        out2, log_det2, pullback = getattr(layer, direction + "_vjp")(*args)
    np.testing.assert_array_equal(out, out2)         # one private pass serves both
    np.testing.assert_array_equal(log_det, log_det2)
    if bars is None:
        rng = np.random.default_rng(7)
        bars = (rng.standard_normal(out.shape).astype(out.dtype),
                rng.standard_normal(log_det.shape).astype(out.dtype))
    result = pullback(*bars)
    context_bar = result[2] if context is not None else None
    return out, log_det, result[0], result[1], context_bar


def _compare(layer, direction, v, context, monkeypatch, rtol=RTOL, bars=None):
    fused = _run(layer, direction, v, context, True, monkeypatch, bars)
    ref = _run(layer, direction, v, context, False, monkeypatch, bars)
    for a, b in zip(fused[:3], ref[:3]):
        _close(a, b, rtol)
    assert fused[3].keys() == ref[3].keys() and fused[3]
    for key in ref[3]:
        _close(fused[3][key], ref[3][key], rtol)
    if context is not None:
        _close(fused[4], ref[4], rtol)
    return fused, ref


def _inputs(rng, n, dim, scale=1.5, dtype=np.float64):
    return (rng.normal(0.0, scale, size=(n, dim))).astype(dtype)


# ---------------------------------------------------------------------------------------------
# the routing


@pytest.mark.parametrize("kind", list(BUILDERS))
def test_durkan_runs_the_fused_kernels_and_other_maps_do_not(rng, monkeypatch, kind):
    """Every durkan pass calls a fused kernel and no generic one; zuko calls only generic ones."""
    calls = []
    names = ["rqs_durkan_forward", "rqs_durkan_inverse", "rqs_durkan_forward_vjp",
             "rqs_durkan_inverse_vjp", "rqs_forward", "rqs_inverse", "rqs_forward_vjp",
             "rqs_inverse_vjp"]
    for name in names:
        kernel = getattr(spline_core, name)
        monkeypatch.setattr(spline_core, name,
                            lambda *a, _k=kernel, _n=name: (calls.append(_n), _k(*a))[1])
    for parameterization, family in (("durkan", "rqs_durkan_"), ("zuko", "rqs_")):
        layer = BUILDERS[kind](rng, parameterization=parameterization, n_bins=4)
        v = _inputs(rng, 6, layer.dim)
        for direction in ("forward", "inverse"):
            calls.clear()
            out, log_det = getattr(layer, direction)(v)
            _, _, pullback = getattr(layer, direction + "_vjp")(v)
            pullback(np.ones_like(out), np.ones_like(log_det))
            assert calls and all(c.startswith(family) for c in calls), calls
            if parameterization == "zuko":
                assert not any(c.startswith("rqs_durkan_") for c in calls)
            assert any(c.endswith("_vjp") for c in calls)


def test_other_maps_numba_kernels_match_their_twins(rng, monkeypatch):
    """zuko and distrax: the same knot arrays through the numba knot kernels (fast) or their
    NumPy twins (reference), to the kernels' parity (far below RTOL)."""
    for parameterization in ("zuko", "distrax"):
        for build in BUILDERS.values():
            layer = build(rng, parameterization=parameterization, n_bins=4)
            v = _inputs(rng, 7, layer.dim)
            for direction in ("forward", "inverse"):
                _compare(layer, direction, v, None, monkeypatch)



@pytest.mark.parametrize("parameterization", ["durkan", "zuko"])
@pytest.mark.parametrize("fast", [True, False])
def test_rqs_casts_parameters_to_the_input_dtype(rng, parameterization, fast):
    """``rqs`` with float64 parameters (or lists) and a float32 input gives bit for bit what it
    gives with the parameters cast to float32 first (values, log-dets and every pullback), and
    parameters already of the input's dtype reach the kernels as the caller's own views."""
    smap = get_spline_map(parameterization, n_bins=4, bound=3.0)
    n = 7
    theta = rng.normal(size=(n, 8 + smap.n_derivatives))
    uw, uh, ud = spline_core.split_parameters(theta, 4)
    v = (2.0 * rng.normal(size=n)).astype(np.float32)
    bars = [rng.normal(size=n).astype(np.float32) for _ in range(2)]
    with fast_paths(fast, paths=["splines"]):
        for apply in ("spline", "inverse"):
            want = spline_core.rqs(apply, v, *(a.astype(np.float32) for a in (uw, uh, ud)),
                                   smap, True)
            for params in ((uw, uh, ud), tuple(a.tolist() for a in (uw, uh, ud))):
                got = spline_core.rqs(apply, v, *params, smap, True)
                for a, b in ((got[0], want[0]), (got[1], want[1])):
                    assert a.dtype == np.float32 and np.array_equal(a, b)
                g_v, g_params = got[2](*bars)
                w_v, w_params = want[2](*bars)
                for a, b in zip((g_v,) + tuple(g_params), (w_v,) + tuple(w_params)):
                    assert a.dtype == np.float32 and np.array_equal(a, b)
    if fast and parameterization == "durkan" and not NUMBA_DISABLED:
        seen = []

        def record(kernel, arrays, settings, outputs):
            seen.append(arrays)
            kernel(*arrays, *settings, *outputs)

        views = spline_core.split_parameters(theta, 4)
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(spline_core, "launch", record)
            spline_core.rqs("spline", v.astype(np.float64), *views, smap, False)
        assert all(a is b for a, b in zip(seen[0][1:], views))   # no copies of the views

# ---------------------------------------------------------------------------------------------
# fused == reference, every pass, every class


@pytest.mark.parametrize("settings_", [{}, NON_DEFAULT], ids=["default", "non-default"])
@pytest.mark.parametrize("direction", ["forward", "inverse"])
@pytest.mark.parametrize("kind", list(BUILDERS))
def test_fused_matches_reference(rng, monkeypatch, kind, direction, settings_):
    layer = BUILDERS[kind](rng, n_bins=6, **settings_)
    v = _inputs(rng, 40, layer.dim)
    _compare(layer, direction, v, None, monkeypatch)


@pytest.mark.parametrize("shared", [False, True], ids=["per-row", "shared"])
@pytest.mark.parametrize("direction", ["forward", "inverse"])
@pytest.mark.parametrize("kind", CONDITIONAL)
def test_fused_matches_reference_with_context(rng, monkeypatch, kind, direction, shared):
    layer = BUILDERS[kind](rng, context_dim=3, n_bins=5)
    v = _inputs(rng, 30, layer.dim)
    context = rng.normal(size=3) if shared else rng.normal(size=(30, 3))
    fused, _ = _compare(layer, direction, v, context, monkeypatch)
    assert fused[4].shape == context.shape and np.any(fused[4] != 0)


@pytest.mark.parametrize("kind", list(BUILDERS))
def test_fused_extreme_parameters(rng, monkeypatch, kind):
    """Large parameters (bins near their minimum size, derivatives near m_d or large)."""
    layer = BUILDERS[kind](rng, n_bins=8)
    for key, value in layer.params.items():
        layer.params[key] = value * 6.0
    v = _inputs(rng, 50, layer.dim, scale=2.0)
    for direction in ("forward", "inverse"):
        _compare(layer, direction, v, None, monkeypatch)


def _knot_inputs(layer, direction, rng, n, offset):
    """Inputs at the reference knots (``offset = 0``) or ``offset * (1 + |knot|)`` next to them,
    coordinate by coordinate in the autoregressive order (a coordinate's knots depend only on
    the coordinates before it); the identity part of a coupling stays random."""
    v = _inputs(rng, n, layer.dim)
    order = getattr(layer, "_sampling_order", range(layer.dim))
    for i in order:
        knots = layer._input_knots(direction, v)[:, i]      # the map's knots
        if not np.all(np.isfinite(knots)):
            continue
        j = rng.integers(0, knots.shape[1], size=n)
        k = knots[np.arange(n), j]
        v[:, i] = k + offset * rng.choice([-1.0, 1.0], size=n) * (1.0 + np.abs(k))
    return v


def _wobble(layer, direction, v, bars, monkeypatch, delta):
    """How much the reference pass and pullback move when every input moves by ``±delta``:
    ``(out, log_det, in_bar)`` elementwise and the gradients per array (their max)."""
    ref = _run(layer, direction, v, None, False, monkeypatch, bars)
    spread = [np.zeros(a.shape) for a in ref[:3]] + [{k: 0.0 for k in ref[3]}]
    for sign in (-1.0, 1.0):
        moved = _run(layer, direction, v + sign * delta, None, False, monkeypatch, bars)
        for i in range(3):
            spread[i] = np.maximum(spread[i], np.abs(moved[i] - ref[i]))
        for k in ref[3]:
            spread[3][k] = max(spread[3][k], float(np.abs(moved[3][k] - ref[3][k]).max()))
    return spread


@pytest.mark.parametrize("direction", ["forward", "inverse"])
@pytest.mark.parametrize("kind", list(BUILDERS))
def test_fused_at_and_near_knots_and_bounds(rng, monkeypatch, kind, direction):
    """At the knots (``±B`` included; value cotangents only: the log-det's gradients jump
    across a knot, as the spline's second derivative does) and 1e-7 next to them (both).

    The fused path's knots differ from the map's by a few ulps of ``B``, which moves a point
    sitting on a knot relative to it by as much, possibly into the neighbouring bin: the
    difference is bounded by the reference's own change when the input moves by
    ``delta = 8 eps B`` (measured by :func:`_wobble`), plus ``RTOL``. That change is not
    small everywhere: next to a knot with a small derivative ``d_k`` and a steep neighbouring
    bin, ``d log_det / dv`` reaches ~1e3-1e4 (``L_xi / (w g)``).
    """
    layer = BUILDERS[kind](rng, n_bins=5)
    delta = 8 * np.finfo(np.float64).eps * layer._map.bound
    for offset in (0.0, 1e-7):
        v = _knot_inputs(layer, direction, rng, 40, offset)
        # on a knot only the value's cotangents (continuous across it), next to it both
        bars = (rng.standard_normal(v.shape), rng.standard_normal(40) * (offset > 0))
        slack = _wobble(layer, direction, v, bars, monkeypatch, delta)
        fused = _run(layer, direction, v, None, True, monkeypatch, bars)
        ref = _run(layer, direction, v, None, False, monkeypatch, bars)
        for a, b, w in zip(fused[:3], ref[:3], slack[:3]):
            scale = max(1.0, float(np.abs(b).max()))
            assert np.all(np.abs(a - b) <= RTOL * scale + w), np.max(np.abs(a - b) - w)
        for k in ref[3]:
            scale = max(1.0, float(np.abs(ref[3][k]).max()))
            assert np.abs(fused[3][k] - ref[3][k]).max() <= RTOL * scale + slack[3][k], k


@pytest.mark.parametrize("direction", ["forward", "inverse"])
@pytest.mark.parametrize("kind", list(BUILDERS))
def test_fused_tails_are_the_identity(rng, monkeypatch, kind, direction):
    """Outside ``[-B, B]`` both paths give exactly the identity, log-det 0, ``in_bar = out_bar``
    for the spline part and no parameter cotangent from those elements."""
    layer = BUILDERS[kind](rng, n_bins=5)
    v = rng.choice([-1.0, 1.0], size=(10, layer.dim)) * rng.uniform(3.0 + 1e-12, 1e3,
                                                                      size=(10, layer.dim))
    fused, ref = _compare(layer, direction, v, None, monkeypatch)
    if kind != "coupling":
        np.testing.assert_array_equal(fused[0], v)
        np.testing.assert_array_equal(fused[1], np.zeros(10))
    if kind == "elementwise":
        for g in fused[3].values():
            np.testing.assert_array_equal(g, np.zeros_like(g))


@pytest.mark.parametrize("kind", list(BUILDERS))
def test_fused_empty_batch(rng, monkeypatch, kind):
    layer = BUILDERS[kind](rng, n_bins=4)
    v = np.zeros((0, layer.dim))
    for direction in ("forward", "inverse"):
        out, log_det, in_bar, grads, _ = _run(layer, direction, v, None, True, monkeypatch,
                                              bars=(np.zeros((0, layer.dim)), np.zeros(0)))
        assert out.shape == (0, layer.dim) and log_det.shape == (0,) and in_bar.shape == v.shape
        for key, g in grads.items():
            assert g.shape == layer.params[key].shape
            np.testing.assert_array_equal(g, np.zeros_like(g))


@pytest.mark.parametrize("direction", ["forward", "inverse"])
@pytest.mark.parametrize("kind", list(BUILDERS))
def test_fused_float32(rng, monkeypatch, kind, direction):
    """float32 stays float32 on the fused path and is as accurate as the float32 reference
    path: both against the float64 result, the fused error within 4x the reference's (or
    ``10 eps32`` of the array's scale, when the reference happens to be nearly exact)."""
    layer = BUILDERS[kind](rng, n_bins=6)
    v = _inputs(rng, 30, layer.dim, dtype=np.float32)
    fused = _run(layer, direction, v, None, True, monkeypatch)
    ref = _run(layer, direction, v, None, False, monkeypatch)
    exact = _run(layer, direction, v.astype(np.float64), None, True, monkeypatch)
    assert all(a.dtype == np.float32 for a in fused[:3])
    assert all(fused[3][k].dtype == ref[3][k].dtype for k in ref[3])   # as the params'
    pairs = list(zip(fused[:3], ref[:3], exact[:3]))
    pairs += [(fused[3][k], ref[3][k], exact[3][k]) for k in exact[3]]
    eps32 = float(np.finfo(np.float32).eps)
    for a, b, e in pairs:
        scale = max(1.0, float(np.abs(e).max(initial=0.0)))
        err_fused = float(np.abs(a - e).max(initial=0.0))
        err_ref = float(np.abs(b - e).max(initial=0.0))
        assert err_fused <= max(4 * err_ref, 10 * eps32 * scale), (err_fused, err_ref, scale)


@pytest.mark.parametrize("kind", list(BUILDERS))
@fast_paths(True, paths=["splines"])
def test_fused_finite_differences(rng, kind):
    """The fused pullbacks against central differences (non-default settings, with context)."""
    context_dim = None if kind == "elementwise" else 2
    layer = BUILDERS[kind](rng, context_dim=context_dim, n_bins=4, **NON_DEFAULT)
    for direction in ("forward", "inverse"):
        v = _inputs(rng, 4, layer.dim, scale=1.0)
        # keep central differences from straddling a knot
        for _ in range(200):
            c = None if context_dim is None else rng.normal(size=(4, 2))
            knots = layer._input_knots(direction, v, c)
            if not (np.abs(v[:, :, None] - knots) < 1e-3).any():
                break
            v = _inputs(rng, 4, layer.dim, scale=1.0)
        fn = getattr(layer, direction + "_vjp")
        assert_vjp(fn, v if c is None else (v, c), layer.params, rng=1)


# ---------------------------------------------------------------------------------------------
# pullback hygiene and threads


@pytest.mark.parametrize("kind", list(BUILDERS))
@fast_paths(True, paths=["splines"])
def test_fused_pullback_is_pure(rng, kind):
    """The pullback closes over its own residuals: same result twice, and after the parameters
    (and the caller's input) change in place."""
    layer = BUILDERS[kind](rng, n_bins=5)
    for direction in ("forward", "inverse"):
        v = _inputs(rng, 1, layer.dim)
        out, log_det, pullback = getattr(layer, direction + "_vjp")(v)
        bars = (np.ones_like(out), np.ones_like(log_det))
        first = pullback(*bars)
        for value in layer.params.values():
            value += 0.25
        second = pullback(*bars)
        np.testing.assert_array_equal(first[0], second[0])
        for key in first[1]:
            np.testing.assert_array_equal(first[1][key], second[1][key])
        np.testing.assert_array_equal(bars[0], np.ones_like(out))   # arguments not mutated


@pytest.mark.skipif(NUMBA_DISABLED, reason="one thread without numba; 65536 elements in Python")
@fast_paths(True, paths=["splines"])
def test_fused_threads_are_bit_identical(rng, monkeypatch):
    """Batches of ``>= 2^16`` elements are split over threads; the result does not depend on it
    (the parameters go in as strided column views, split by rows)."""
    layer = randomize(MaskedSplineAutoregressive(16, hidden=(20,), n_bins=4, rng=rng), rng, 0.3)
    v = _inputs(rng, 4096, 16)
    results = []
    for threads in ("1", "2"):
        monkeypatch.setenv("REFFLOW_NUM_THREADS", threads)
        z, log_det, pullback = layer.inverse_vjp(v)
        x_bar, grads = pullback(np.ones_like(z), np.ones_like(log_det))
        results.append((z, log_det, x_bar, *grads.values()))
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------------------------------------
# random shapes and settings


@settings(deadline=None)
@given(seed=st.integers(0, 2**32 - 1), kind=st.sampled_from(list(BUILDERS)),
       n=st.integers(0, 9), dim=st.integers(2, 5), n_bins=st.integers(2, 9),
       direction=st.sampled_from(["forward", "inverse"]), non_default=st.booleans(),
       scale=st.sampled_from([0.5, 1.5, 4.0]))
def test_fused_matches_reference_random(seed, kind, n, dim, n_bins, direction, non_default,
                                        scale):
    rng = np.random.default_rng(seed)
    layer = BUILDERS[kind](rng, dim=dim, n_bins=n_bins, **(NON_DEFAULT if non_default else {}))
    v = _inputs(rng, n, dim, scale=scale)
    with pytest.MonkeyPatch.context() as monkeypatch:
        _compare(layer, direction, v, None, monkeypatch)
