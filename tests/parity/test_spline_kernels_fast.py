"""The block "durkan" spline kernels against the scalar kernels (called "reference" below).

``refflow.kernels.splines.rqs_durkan_*`` evaluate exactly the scalar kernels' formulas in the
same order (``rqs_durkan_*_scalar``), block-wise, with their own vectorisable ``exp``
(``_exp_le0``) and ``log1p`` (``_log1p_01``) in place of libm's. So they differ by round-off in
those two functions only, and the tests check precisely that:

- ``_exp_le0`` within ``EXP_ULPS`` = 1 ulp of the exact exponential (long double), ``_log1p_01``
  within ``LOG1P_ULPS`` = 2 ulps, softplus and sigmoid within ``SOFTPLUS_ULPS`` of the
  reference's (float64 and float32);
- values and log-dets: a relative error ``eps`` in each softmax exponential is the same as
  moving that parameter by ``eps``, and a few ulps in a softplus move the derivative by
  ``~eps softplus(u)``. So, per element, ``|fast - reference| <= COND_ULPS * eps *
  (|out| + sum_theta |d out / d theta| |delta theta / eps|)``, with the sensitivities from the
  reference pullback: the bound is the problem's own conditioning, with no free factor;
- cotangents (derivatives of those outputs, one factor of the same conditioning more):
  normwise ``RTOL_COTANGENT``;
- results do not depend on how a batch is split (threads, blocks): bit for bit;
- float32 stays float32 and is as accurate as the reference float32 kernels.

Runs in plain-Python mode too (``REFFLOW_DISABLE_NUMBA=1``; smaller batches).
"""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refflow.bijectors.spline_maps import get_spline_map
from refflow.kernels import NUMBA_DISABLED
from refflow.kernels import splines as D
from refflow.kernels.splines import rqs_forward_vjp, rqs_inverse_vjp

EPS = np.finfo(np.float64).eps
EPS32 = float(np.finfo(np.float32).eps)
#: ``_exp_le0``: Cody-Waite reduction exact, Taylor truncation 4e-18, ~1 ulp of evaluation
#: rounding; measured worst 1.0 ulp vs the correctly rounded value over 5e6 points.
EXP_ULPS = 1.0
#: ``_log1p_01``: ``f = (m - 1)/(m + 1)`` takes two roundings (~1 ulp), the series and the
#: correction ``c/w`` another; measured worst 2.3 ulps (at ``t`` ~ 3e-8) over 2e6 points.
LOG1P_ULPS = 3.0
#: softplus = ``max(u, 0) + log1p(e^-|u|)``: the exp's ulp (1 ulp of ``t`` is ~1 ulp of
#: ``log1p(t)``), the log1p's 3, the final addition's.
SOFTPLUS_ULPS = 5.0
#: Elementwise bound factor: ~1 ulp per exponential / a few per softplus (above) plus the
#: reference kernel's own rounding of the output (~8 roundings, test_kernels' VALUE_ULPS).
COND_ULPS = 16.0
#: Cotangents: the same parameter perturbations moved through the derivatives of the outputs
#: (one more factor ``1/w`` <= ``1 / (2B m_w)`` = 167 of conditioning than the values, whose
#: errors stay below 1e-12 for these parameters): normwise, measured worst 1.7e-11 (K = 17,
#: parameters of scale 3) over 45 configurations x 2e4 elements.
RTOL_COTANGENT = 1e-10
#: Steep parameters (scale >= 3): cotangents up to 5e6 (a flat top bin, ``dx/dy`` ~ 1e6 at
#: ``y = 0.9989``, ``B = 1``, ``K = 3``) where the reference and its NumPy twin happen to agree
#: bit for bit but an ulp in a knot moves the inverse's cotangents by 2.1e-10 normwise
#: (measured worst); the second-order conditioning ``dx/dy / w`` is the reason, not the path.
RTOL_COTANGENT_STEEP = 1e-9

PLAIN = NUMBA_DISABLED
if not PLAIN:
    import numba
    PLAIN = bool(numba.config.DISABLE_JIT)


def n_rows(compiled, python):
    return python if PLAIN else compiled


KERNELS = ("forward", "inverse", "forward_vjp", "inverse_vjp")


def _params(rng, n, K, scale, dtype=np.float64):
    return tuple((scale * rng.standard_normal(shape)).astype(dtype)
                 for shape in ((n, K), (n, K), (n, K - 1)))


def _call(name, v, uw, uh, ud, settings_, bars=None, reference=False):
    kern = getattr(D, "rqs_durkan_" + name + ("_scalar" if reference else ""))
    if name.endswith("vjp"):
        outs = (np.empty_like(v), np.empty_like(uw), np.empty_like(uh), np.empty_like(ud))
        kern(v, uw, uh, ud, *settings_, bars[0], bars[1], *outs)
    else:
        outs = (np.empty_like(v), np.empty_like(v))
        kern(v, uw, uh, ud, *settings_, *outs)
    return outs


def _loop(fn):
    """Apply a scalar jitted helper elementwise (a numba loop when compiled)."""
    if PLAIN:
        def run(xs, *args):
            return np.array([fn(x, *args) for x in xs], dtype=xs.dtype)
        return run
    import numba

    @numba.njit
    def run(xs, *args):
        out = np.empty_like(xs)
        for i in range(xs.size):
            out[i] = fn(xs[i], *args)
        return out
    return run


def _ulps(got, exact, dtype):
    """``|got - exact|`` in units of the spacing of ``exact`` rounded to ``dtype`` (the
    smallest subnormal spacing below the normal range)."""
    ref = exact.astype(dtype)
    spacing = np.spacing(np.abs(ref)).astype(np.longdouble)
    return np.abs(got.astype(np.longdouble) - exact) / spacing


# ---------------------------------------------------------------------------------------------
# the vectorised elementary functions
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_exp_within_one_ulp(dtype):
    rng = np.random.default_rng(1)
    n = n_rows(300_000, 3000)
    lo = -700.0 if dtype == np.float64 else -85.0          # normal results
    x = np.concatenate([-rng.exponential(3.0, n), rng.uniform(lo, 0, n),
                        [0.0, -0.0, -1e-300, -np.log(2) / 2, -np.log(2), lo]]).astype(dtype)
    one = dtype(1)
    got = _loop(D._exp_le0)(x, one, D._exp_consts(one))
    assert got.dtype == dtype
    exact = np.exp(x.astype(np.longdouble))
    assert _ulps(got, exact, dtype).max() <= EXP_ULPS
    # underflow: gradual, then exactly 0; never negative, NaN or a wrong power of two
    tiny = np.linspace(-760.0, -700.0, n_rows(100_001, 301)) if dtype == np.float64 else \
        np.linspace(-110.0, -85.0, n_rows(100_001, 301))
    tiny = np.concatenate([tiny, [-1e4, -1e30]]).astype(dtype)
    got = _loop(D._exp_le0)(tiny, one, D._exp_consts(one))
    exact = np.exp(tiny.astype(np.longdouble))
    assert np.all(got >= 0) and got[-1] == 0 and got[-2] == 0
    assert _ulps(got, exact, dtype).max() <= EXP_ULPS
    assert _loop(D._exp_le0)(np.array([0.0], dtype), one, D._exp_consts(one))[0] == 1


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_log1p_within_three_ulps(dtype):
    rng = np.random.default_rng(2)
    n = n_rows(300_000, 3000)
    t = np.concatenate([rng.uniform(0, 1, n), np.exp(-rng.uniform(0, 700, n)),
                        [0.0, 1.0, np.sqrt(2) - 1, 5e-324, 1e-17]]).astype(dtype)
    one = dtype(1)
    got = _loop(D._log1p_01)(t, dtype(0), one, D._log1p_consts(one))
    assert got.dtype == dtype
    exact = np.log1p(t.astype(np.longdouble))
    assert _ulps(got, exact, dtype).max() <= LOG1P_ULPS


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_derivatives_match_the_reference_softplus_and_sigmoid(dtype):
    rng = np.random.default_rng(3)
    n = n_rows(100_000, 500)
    ua = np.concatenate([rng.normal(0, 5, n), [0.0, 30.0, -30.0, 80.0, -80.0]]).astype(dtype)
    ub = -ua[::-1].copy()
    m = ua.size
    da, db, sa, sb = (np.empty(m, dtype) for _ in range(4))
    one, zero = dtype(1), dtype(0)
    md = dtype(1e-3)
    D._derivatives(ua, ub, m, md, zero, one, D._exp_consts(one), D._log1p_consts(one),
                   da, db, sa, sb, True)
    for u, d, s in ((ua, da, sa), (ub, db, sb)):
        exact_sp = np.logaddexp(np.longdouble(0), u.astype(np.longdouble))
        assert _ulps(d, md + exact_sp, dtype).max() <= SOFTPLUS_ULPS + 1   # + the md addition
        exact_sig = 1 / (1 + np.exp(-u.astype(np.longdouble)))
        assert _ulps(s, exact_sig, dtype).max() <= SOFTPLUS_ULPS


# ---------------------------------------------------------------------------------------------
# the kernels against the reference kernels
# ---------------------------------------------------------------------------------------------


def _value_bound(name, v, uw, uh, ud, settings_, out_index):
    """Per-element conditioning bound for output ``out_index`` (0: value, 1: log-det): its
    sensitivities to the parameters (reference pullback) times the perturbations the fast
    path's ``exp`` and ``softplus`` rounding amount to, plus the output's own rounding."""
    n = v.shape[0]
    bars = [np.zeros(n), np.zeros(n)]
    bars[out_index] = np.ones(n)
    direction = "forward_vjp" if name == "forward" else "inverse_vjp"
    vb, uwb, uhb, udb = _call(direction, v, uw, uh, ud, settings_, bars, reference=True)
    # the rounding of the knots themselves (a running sum of K terms, each knot off by up to
    # ~K eps B in either kernel, independently of the parameters' perturbations) moved by the
    # knots' cotangents (generic kernels on the map's knots)
    smap = get_spline_map("durkan", n_bins=uw.shape[1], bound=settings_[0],
                          min_bin_width=settings_[1], min_bin_height=settings_[2],
                          min_derivative=settings_[3])
    knots = smap(uw, uh, ud)
    kbars = [np.empty_like(k) for k in knots]
    generic = rqs_forward_vjp if name == "forward" else rqs_inverse_vjp
    generic(v, *knots, bars[0], bars[1], np.empty_like(v), *kbars)
    knot_term = uw.shape[1] * settings_[0] * (np.abs(kbars[0]).sum(-1) + np.abs(kbars[1]).sum(-1))
    sp = np.logaddexp(0, ud)
    sig = 1 / (1 + np.exp(-ud))
    # the rounding of ``v - x_k`` (<= eps (|v| + B)) moved by d out / d v, then the parameters
    sens = (knot_term + np.abs(vb) * (np.abs(v) + settings_[0])
            + np.abs(uwb).sum(-1) + np.abs(uhb).sum(-1)
            + SOFTPLUS_ULPS * (np.abs(udb) * sp / sig).sum(-1))
    return sens


def _generic_vjp(name, v, uw, uh, ud, settings_, bars):
    """The reference's independent twin: NumPy's map (SIMD exp, pairwise sums) + the generic
    kernels of refflow.kernels.splines + the map's pullback."""
    smap = get_spline_map("durkan", n_bins=uw.shape[1], bound=settings_[0],
                          min_bin_width=settings_[1], min_bin_height=settings_[2],
                          min_derivative=settings_[3])
    knots, pullback = smap.vjp(uw, uh, ud)
    kbars = [np.empty_like(k) for k in knots]
    v_bar = np.empty_like(v)
    (rqs_forward_vjp if name == "forward" else rqs_inverse_vjp)(v, *knots, bars[0], bars[1],
                                                                 v_bar, *kbars)
    return (v_bar, *pullback(*kbars))


CONFIGS = [  # (K, parameter scale, bound, min_bin_width, min_bin_height, min_derivative)
    (8, 1.0, 3.0, 1e-3, 1e-3, 1e-3), (2, 1.0, 3.0, 1e-3, 1e-3, 1e-3),
    (3, 3.0, 1.0, 1e-2, 1e-3, 1e-2), (17, 3.0, 5.0, 1e-3, 1e-3, 1e-3),
    (8, 10.0, 3.0, 1e-3, 1e-3, 1e-3), (5, 1.0, 2.0, 0.0, 0.0, 1e-3),
]


@pytest.mark.parametrize("config", CONFIGS, ids=[f"K{c[0]}-s{c[1]}-B{c[2]}" for c in CONFIGS])
def test_kernels_match_reference(config):
    K, scale_p, B, mw, mh, md = config
    rng = np.random.default_rng(K * 100 + int(scale_p))
    n = n_rows(6000, 200)
    settings_ = (B, mw, mh, md)
    uw, uh, ud = _params(rng, n, K, scale_p)
    x = rng.uniform(-1.1 * B, 1.1 * B, n)
    x[:5] = [-B, B, 0.0, -1.1 * B, 1.1 * B]
    y, _ = _call("forward", x, uw, uh, ud, settings_, reference=True)
    bars = (rng.standard_normal(n), rng.standard_normal(n))
    for name, v in (("forward", x), ("inverse", y)):
        fast = _call(name, v, uw, uh, ud, settings_)
        ref = _call(name, v, uw, uh, ud, settings_, reference=True)
        for j in (0, 1):
            # + the output's own rounding: that of ``v - x_k`` moved by the slope (forward
            # ``dy/dx``, inverse ``dx/dy``: both exp(log-det)), as in test_kernels' bounds
            # (and ~16 roundings of ``g`` inside ``log g``: 1 absolute, as test_kernels'
            # LOG_DET_ULPS)
            own = 1 + np.abs(ref[j]) + (np.abs(v) + B) * (1 + np.exp(ref[1]))
            bound = COND_ULPS * EPS * (own + _value_bound(name, v, uw, uh, ud, settings_, j))
            err = np.abs(fast[j] - ref[j])
            assert np.all(err <= bound), (name, j, float(np.max(err / bound)),
                                          v[np.argmax(err / bound)], err.max())
        fast = _call(name + "_vjp", v, uw, uh, ud, settings_, bars)
        ref = _call(name + "_vjp", v, uw, uh, ud, settings_, bars, reference=True)
        twin = _generic_vjp(name, v, uw, uh, ud, settings_, bars)
        for a, b, c in zip(fast, ref, twin):
            assert a.shape == b.shape
            # within RTOL_COTANGENT, or (steep parameters, where the cotangents' conditioning
            # exceeds that) no further from the reference than its independent twin is
            scale = np.max(np.abs(b))
            err, err_twin = np.max(np.abs(a - b)) / scale, np.max(np.abs(c - b)) / scale
            rtol = RTOL_COTANGENT if scale_p < 3 else RTOL_COTANGENT_STEEP
            assert err <= max(rtol, 4 * err_twin), (name, err, err_twin)
            assert np.array_equal(a == 0, b == 0)   # the same bins: the same zero pattern


@settings(deadline=None)
@given(seed=st.integers(0, 2 ** 32 - 1), K=st.integers(2, 12),
       scale=st.sampled_from([0.1, 1.0, 4.0]), n=st.integers(1, 150))
def test_kernels_match_reference_property(seed, K, scale, n):
    """Small random batches (every block remainder) of random sizes and bin counts."""
    rng = np.random.default_rng(seed)
    settings_ = (3.0, 1e-3, 1e-3, 1e-3)
    uw, uh, ud = _params(rng, n, K, scale)
    x = rng.uniform(-3.3, 3.3, n)
    bars = (rng.standard_normal(n), rng.standard_normal(n))
    for name in KERNELS:
        b_ = bars if name.endswith("vjp") else None
        fast = _call(name, x, uw, uh, ud, settings_, b_)
        ref = _call(name, x, uw, uh, ud, settings_, b_, reference=True)
        for a, b in zip(fast, ref):
            assert np.max(np.abs(a - b)) <= RTOL_COTANGENT * max(1.0, np.max(np.abs(b)))


def test_split_batches_are_bit_identical():
    """Threads split a batch into row slices: any split (across and inside blocks) gives the
    same bits, and so do strided (non-contiguous) inputs."""
    rng = np.random.default_rng(7)
    n = n_rows(3 * D._BLOCK + 29, D._BLOCK + 7)
    settings_ = (3.0, 1e-3, 1e-3, 1e-3)
    uw, uh, ud = _params(rng, n, 8, 1.0)
    x = rng.uniform(-3.3, 3.3, n)
    bars = (rng.standard_normal(n), rng.standard_normal(n))
    cuts = [0, 1, 17, D._BLOCK + 5, n]
    for name in KERNELS:
        b_ = bars if name.endswith("vjp") else None
        whole = _call(name, x, uw, uh, ud, settings_, b_)
        parts = []
        for lo, hi in zip(cuts[:-1], cuts[1:]):
            sub_b = None if b_ is None else (b_[0][lo:hi], b_[1][lo:hi])
            parts.append(_call(name, x[lo:hi], uw[lo:hi], uh[lo:hi], ud[lo:hi], settings_, sub_b))
        for j, w in enumerate(whole):
            np.testing.assert_array_equal(w, np.concatenate([p[j] for p in parts]))
        wide = [np.repeat(a, 2, axis=-1)[..., ::2] for a in (uw, uh, ud)]   # strided views
        strided = _call(name, x, *wide, settings_, b_)
        for w, s in zip(whole, strided):
            np.testing.assert_array_equal(w, s)


# ---------------------------------------------------------------------------------------------
# float32
# ---------------------------------------------------------------------------------------------


def test_float32_as_accurate_as_the_reference_float32():
    rng = np.random.default_rng(9)
    n = n_rows(20000, 300)
    settings_ = (3.0, 1e-3, 1e-3, 1e-3)
    p32 = _params(rng, n, 8, 1.0, np.float32)
    x32 = rng.uniform(-3.3, 3.3, n).astype(np.float32)
    b32 = tuple(rng.standard_normal(n).astype(np.float32) for _ in range(2))
    p64 = tuple(a.astype(np.float64) for a in p32)
    x64 = x32.astype(np.float64)
    b64 = tuple(a.astype(np.float64) for a in b32)
    for name in KERNELS:
        vjp = name.endswith("vjp")
        exact = _call(name, x64, *p64, settings_, b64 if vjp else None, reference=True)
        fast = _call(name, x32, *p32, settings_, b32 if vjp else None)
        ref = _call(name, x32, *p32, settings_, b32 if vjp else None, reference=True)
        for f, r, e in zip(fast, ref, exact):
            assert f.dtype == np.float32
            assert np.all(np.isfinite(f))
            err_fast = np.max(np.abs(f - e)) / max(1.0, np.max(np.abs(e)))
            err_ref = np.max(np.abs(r - e)) / max(1.0, np.max(np.abs(e)))
            # the same order of error (the fast exp / log1p round differently, 1-3 ulps)
            assert err_fast <= 4 * err_ref + 16 * EPS32, (name, err_fast, err_ref)


def test_float32_vectorised_helpers_stay_float32():
    """No float64 in the float32 specialisations of the vectorised helpers (their constants are
    built from the dtype); fresh, uncached compilations so numba's type annotations exist."""
    if PLAIN:
        pytest.skip("plain-Python mode: no numba typing to inspect")
    import numba

    def types_of(fn, *args):
        fresh = numba.njit(fn.py_func)
        fresh(*args)
        (sig,) = fresh.signatures
        return {str(t) for t in fresh.overloads[sig].type_annotation.typemap.values()}

    f32 = np.float32
    one, zero = f32(1), f32(0)
    ec = tuple(f32(c) for c in D._exp_consts(one))     # as the kernels hold them
    lc = tuple(f32(c) for c in D._log1p_consts(one))
    v = np.linspace(-3, 0, 40).astype(f32)
    outs = [np.empty(40, f32) for _ in range(4)]
    seen = types_of(D._exp_le0, f32(-1.5), one, ec)
    seen |= types_of(D._log1p_01, f32(0.5), zero, one, lc)
    seen |= types_of(D._derivatives, v, v, 40, f32(1e-3), zero, one, ec, lc, *outs, True)
    u = np.random.default_rng(0).standard_normal((40, 8)).astype(f32)
    pt, kt = np.empty((8, D._BLOCK), f32), np.empty((9, D._BLOCK), f32)
    m, r = np.empty(D._BLOCK, f32), np.empty(D._BLOCK, f32)
    seen |= types_of(D._knots_block, u, 0, 40, f32(3), f32(6), f32(1e-3), f32(0.992), zero, one,
                     ec, m, r, pt, kt)
    assert "float32" in seen
    assert not [t for t in seen if "float64" in t], [t for t in seen if "float64" in t]
    assert math.isfinite(float(ec[0]))
