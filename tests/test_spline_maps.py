"""Spline parameter maps (``refflow.bijectors.spline_maps``) and the public spline functional
(``refflow.splines``), including cross-checks against nflows and zuko when installed.

Tolerances (float64):

- ``RTOL_EXACT = 1e-14``: two computations with the same operations up to summation order.
- ``RTOL_VALUE = 1e-12``: the same spline computed from knots that differ by a few ulps (NumPy's
  AVX-512 ``exp`` vs libm's, pairwise vs sequential sums, torch's kernels), amplified by the
  spline's conditioning; standard-normal parameters keep the amplification below ~1e2.
- ``RTOL_FD``: pullbacks vs central differences (``refflow.testing``).

Round trips ``x -> y -> x`` are compared relative to ``dx/dy = exp(-log_det)``: the inverse
multiplies the forward's rounding error in ``y`` by ``dx/dy`` (up to ~1e7 for steep
parameters), which no implementation can avoid; ``y -> x -> y`` needs no such factor.
"""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import refflow.bijectors.spline_core as spline_core
import refflow.kernels.splines as spline_kernels
from refflow.bijectors.spline_maps import (
    SPLINE_MAPS, _interior_cumsum_vjp, _softmax_vjp, get_spline_map,
)
from refflow.kernels import MIN_PER_THREAD, fast_paths
from refflow.kernels.splines import rqs_forward, rqs_forward_vjp, rqs_inverse, rqs_inverse_vjp
from refflow.splines import rational_quadratic_spline, rational_quadratic_spline_vjp
from refflow.testing import assert_vjp

#: Same operations, different summation order.
RTOL_EXACT = 1e-14
#: The same formulas evaluated by two kernels whose arithmetic may be ordered differently:
#: ``L_xi`` subtracts two terms that cancel by up to ~1e2 for these parameters, so an ulp-level
#: reordering inside it shows up as up to ~3e-14 relative in ``dL/dx`` (measured).
RTOL_PARITY = 1e-13
#: Knots a few ulps apart, amplified by the spline's conditioning (module docstring).
RTOL_VALUE = 1e-12
#: The same over many seeds: the scalar kernels vs the map path reach 5.3e-12 (20 seeds x
#: 4000 elements, inverse cotangents); see test_fused_vs_map_path.
RTOL_VALUE_SEEDS = 1e-11
#: Round trips, relative to the conditioning factor dx/dy.
RTOL_ROUND_TRIP = 1e-12

K = 8
MAP_CASES = [
    ("durkan", {}),
    ("durkan", {"bound": 2.0, "min_bin_width": 1e-2, "min_bin_height": 5e-2,
                "min_derivative": 0.1}),
    ("zuko", {}),
    ("zuko", {"bound": 1.5, "min_derivative": 1e-2}),
    ("distrax", {"bound": 3.0}),
    ("distrax", {"bound": 3.0, "boundary_slopes": "lower_identity"}),
    ("distrax", {"bound": 3.0, "boundary_slopes": "upper_identity"}),
    ("distrax", {"bound": 3.0, "boundary_slopes": "identity"}),
    ("distrax", {"bound": 3.0, "boundary_slopes": "circular", "min_bin_width": 0.1,
                 "min_derivative": 0.05}),
]
MAP_IDS = [f"{n}-{'-'.join(f'{k}={v}' for k, v in kw.items()) or 'defaults'}"
           for n, kw in MAP_CASES]


def _rel(a, b):
    """Max of ``|a - b| / max(1, |b|)``."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b) / np.maximum(1.0, np.abs(b)), initial=0.0))


def _params(rng, m, lead, scale=1.0):
    return (scale * rng.standard_normal(lead + (m.n_bins,)),
            scale * rng.standard_normal(lead + (m.n_bins,)),
            scale * rng.standard_normal(lead + (m.n_derivatives,)))


def _durkan_params(rng, n, k=K, scale=1.0):
    return (scale * rng.standard_normal((n, k)), scale * rng.standard_normal((n, k)),
            scale * rng.standard_normal((n, k - 1)))


def _map_vjp(m):
    """The map in check_vjp's tuple-input form: ``vjp(*inputs) -> (*outputs, pullback)``."""
    def vjp(uw, uh, ud):
        (xk, yk, dk), pullback = m.vjp(uw, uh, ud)

        def pb(xk_bar, yk_bar, dk_bar):
            uw_bar, uh_bar, ud_bar = pullback(xk_bar, yk_bar, dk_bar)
            return uw_bar, {}, uh_bar, ud_bar

        return xk, yk, dk, pb
    return vjp


def _spline_vjp(inverse, **kwargs):
    def vjp(x, uw, uh, ud):
        y, log_det, pullback = rational_quadratic_spline_vjp(x, uw, uh, ud, inverse=inverse,
                                                             **kwargs)

        def pb(y_bar, log_det_bar):
            x_bar, uw_bar, uh_bar, ud_bar = pullback(y_bar, log_det_bar)
            return x_bar, {}, uw_bar, uh_bar, ud_bar

        return y, log_det, pb
    return vjp


@pytest.fixture(params=[True, False], ids=["fused", "reference"])
def path(request):
    """Run a functional test on both the fused kernels and the reference path (the NumPy map
    and the NumPy twins of the knot kernels)."""
    with fast_paths(request.param, paths=["splines"]):
        yield request.param


# ---------------------------------------------------------------------------------------------
# the maps: knots


@pytest.mark.parametrize("name,kwargs", MAP_CASES, ids=MAP_IDS)
@pytest.mark.parametrize("scale", [1.0, 5.0, 50.0])
def test_knots_increasing_with_exact_ends(rng, name, kwargs, scale):
    m = get_spline_map(name, n_bins=K, **kwargs)
    xk, yk, dk = m(*_params(rng, m, (200,), scale))
    B = m.bound
    for knots in (xk, yk):
        assert knots.shape == (200, K + 1)
        assert np.all(np.diff(knots, axis=-1) > 0)
        assert np.all(knots[:, 0] == -B) and np.all(knots[:, -1] == B)
    assert np.all(np.isfinite(dk)) and np.all(dk > 0)


@pytest.mark.parametrize("name,kwargs", MAP_CASES, ids=MAP_IDS)
def test_minimum_bin_sizes(rng, name, kwargs):
    """Extreme parameters push bins to their floor and never below (a few ulps of ``B``)."""
    m = get_spline_map(name, n_bins=K, **kwargs)
    xk, yk, _ = m(*_params(rng, m, (500,), 50.0))
    B, ulps = m.bound, 8 * np.finfo(np.float64).eps * m.bound
    if name == "durkan":
        floors = (2 * B * m.min_bin_width, 2 * B * m.min_bin_height)
    elif name == "distrax":
        floors = (m.min_bin_width, m.min_bin_height)
    else:  # zuko: soft clip to +-a = |ln s|/2, so p >= e^-a / (e^-a + (K - 1) e^a)
        a = abs(math.log(m.min_derivative)) / 2
        floors = (2 * B * math.exp(-a) / (math.exp(-a) + (K - 1) * math.exp(a)),) * 2
    for knots, floor in zip((xk, yk), floors):
        widths = np.diff(knots, axis=-1)
        assert widths.min() >= floor - ulps
        if name != "zuko":  # reached with such parameters (zuko's only in the limit)
            assert widths.min() < 1.5 * floor


@pytest.mark.parametrize("name,kwargs", MAP_CASES, ids=MAP_IDS)
def test_derivatives_and_boundary_slopes(rng, name, kwargs):
    m = get_spline_map(name, n_bins=K, **kwargs)
    uw, uh, ud = _params(rng, m, (300,), 5.0)
    _, _, dk = m(uw, uh, ud)
    assert dk.shape == (300, K + 1)
    if name == "durkan":
        assert np.all(dk[:, 1:-1] > m.min_derivative)
        assert np.all(dk[:, 0] == 1.0) and np.all(dk[:, -1] == 1.0)
        np.testing.assert_allclose(dk[:, 1:-1], m.min_derivative + np.logaddexp(0, ud),
                                   rtol=RTOL_EXACT)
    elif name == "zuko":
        s = m.min_derivative
        assert np.all(dk[:, 1:-1] > s) and np.all(dk[:, 1:-1] < 1 / s)
        assert np.all(dk[:, 0] == 1.0) and np.all(dk[:, -1] == 1.0)
    else:
        assert np.all(dk > m.min_derivative)
        offset = math.log(math.exp(1 - m.min_derivative) - 1)
        raw = np.logaddexp(0, ud + offset) + m.min_derivative   # distrax's formula
        mode = m.boundary_slopes
        np.testing.assert_allclose(dk[:, 1:-1], raw[:, 1:-1], rtol=RTOL_EXACT)
        expected_lo = 1.0 if mode in ("lower_identity", "identity") else raw[:, 0]
        expected_hi = {"upper_identity": 1.0, "identity": 1.0, "circular": raw[:, 0]}.get(
            mode, raw[:, -1])
        np.testing.assert_allclose(dk[:, 0], expected_lo, rtol=RTOL_EXACT)
        np.testing.assert_allclose(dk[:, -1], expected_hi, rtol=RTOL_EXACT)
        if mode == "circular":
            assert np.all(dk[:, -1] == dk[:, 0])


def test_distrax_knots_follow_its_formula(rng):
    """A direct transcription of distrax's ``_normalize_bin_sizes`` and knot positions."""
    B, mb = 2.5, 1e-2
    m = get_spline_map("distrax", n_bins=K, bound=B, min_bin_width=mb, min_bin_height=mb)
    uw, uh, ud = _params(rng, m, (50,), 2.0)
    xk, yk, _ = m(uw, uh, ud)
    for u, knots in ((uw, xk), (uh, yk)):
        p = np.exp(u - u.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        w = p * (2 * B - K * mb) + mb
        expected = np.concatenate([np.full((50, 1), -B), -B + np.cumsum(w[:, :-1], -1),
                                   np.full((50, 1), B)], -1)
        np.testing.assert_allclose(knots, expected, rtol=0, atol=RTOL_EXACT * B)


@pytest.mark.parametrize("name,kwargs", MAP_CASES, ids=MAP_IDS)
def test_zero_parameters(name, kwargs):
    """Uniform knots everywhere; unit slopes (the identity) for zuko and distrax, not durkan."""
    m = get_spline_map(name, n_bins=K, **kwargs)
    xk, yk, dk = m(np.zeros((3, K)), np.zeros((3, K)), np.zeros((3, m.n_derivatives)))
    uniform = np.linspace(-m.bound, m.bound, K + 1)
    if getattr(m, "min_bin_width", 0.0) == getattr(m, "min_bin_height", 0.0):
        np.testing.assert_allclose(xk, yk, rtol=0, atol=RTOL_EXACT * m.bound)
    np.testing.assert_allclose(xk[0], uniform, rtol=0, atol=RTOL_EXACT * m.bound)
    if name == "durkan":
        inner = m.min_derivative + math.log(2.0)                 # softplus(0) + m_d: 0.6941
        np.testing.assert_allclose(dk[:, 1:-1], inner, rtol=RTOL_EXACT)
        assert np.all(dk[:, [0, -1]] == 1.0)
    else:
        np.testing.assert_allclose(dk, 1.0, rtol=0, atol=4 * np.finfo(np.float64).eps)


def test_zero_parameters_durkan_defaults_value():
    m = get_spline_map("durkan", n_bins=4)
    _, _, dk = m(np.zeros(4), np.zeros(4), np.zeros(3))
    np.testing.assert_allclose(dk, [1.0, 0.6941471805599453, 0.6941471805599453,
                                    0.6941471805599453, 1.0], rtol=RTOL_EXACT)


@pytest.mark.parametrize("name", SPLINE_MAPS)
def test_map_attributes_and_defaults(name):
    m = get_spline_map(name, n_bins=5, **({"bound": 1.0} if name == "distrax" else {}))
    assert m.n_bins == 5
    assert m.n_derivatives == (6 if name == "distrax" else 4)
    assert m.bound == {"durkan": 3.0, "zuko": 5.0, "distrax": 1.0}[name]
    assert m.min_derivative == {"durkan": 1e-3, "zuko": 1e-3, "distrax": 1e-4}[name]
    assert name in repr(m)


@pytest.mark.parametrize("name,kwargs", MAP_CASES, ids=MAP_IDS)
def test_map_dtype_and_leading_shape(rng, name, kwargs):
    m = get_spline_map(name, n_bins=K, **kwargs)
    uw, uh, ud = _params(rng, m, (2, 3))
    out64 = m(uw, uh, ud)
    out32 = m(*(a.astype(np.float32) for a in (uw, uh, ud)))
    for a, b in zip(out32, out64):
        assert a.dtype == np.float32 and a.shape == (2, 3, K + 1)
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    (_, _, _), pullback = m.vjp(*(a.astype(np.float32) for a in (uw, uh, ud)))
    bars = pullback(np.ones((2, 3, K + 1), np.float32), None, None)
    assert [b.dtype for b in bars] == [np.float32] * 3
    assert [b.shape for b in bars] == [uw.shape, uh.shape, ud.shape]


# ---------------------------------------------------------------------------------------------
# the maps: pullbacks


@pytest.mark.parametrize("name,kwargs", MAP_CASES, ids=MAP_IDS)
@pytest.mark.parametrize("scale", [0.5, 3.0])
def test_map_pullback_vs_fd(rng, name, kwargs, scale):
    m = get_spline_map(name, n_bins=5, **kwargs)
    assert_vjp(_map_vjp(m), _params(rng, m, (3,), scale), rng=1)


@pytest.mark.parametrize("name,kwargs", MAP_CASES, ids=MAP_IDS)
def test_map_pullback_zeros_and_purity(rng, name, kwargs):
    m = get_spline_map(name, n_bins=K, **kwargs)
    uw, uh, ud = _params(rng, m, (4,))
    (xk, _, _), pullback = m.vjp(uw, uh, ud)
    for bar, a in zip(pullback(), (uw, uh, ud)):
        assert bar.shape == a.shape and not bar.any()
    bars = [rng.standard_normal(xk.shape) for _ in range(3)]
    first = pullback(*bars)
    kept_bars = [b.copy() for b in bars]
    for a in (uw, uh, ud):     # the caller changes its arrays: the pullback must not notice
        a += 1.0
    for b1, b2 in zip(first, pullback(*bars)):
        np.testing.assert_array_equal(b1, b2)
    assert all(np.array_equal(b, k) for b, k in zip(bars, kept_bars))  # cotangents untouched


def test_map_pullback_of_discarded_parameters_is_zero(rng):
    """Slopes replaced by a boundary mode pass nothing back (``circular``: to ``u_0`` only)."""
    for mode, dead in (("identity", [0, K]), ("lower_identity", [0]),
                       ("upper_identity", [K]), ("circular", [K])):
        m = get_spline_map("distrax", n_bins=K, bound=1.0, boundary_slopes=mode)
        (xk, _, _), pullback = m.vjp(*_params(rng, m, (5,)))
        _, _, ud_bar = pullback(None, None, np.ones_like(xk))
        assert np.all(ud_bar[:, dead] == 0)
        assert np.all(np.delete(ud_bar, dead, axis=1) != 0)


def test_softmax_and_cumsum_transposes(rng):
    """The two building blocks against dense Jacobians."""
    u = rng.standard_normal(6)
    p = np.exp(u) / np.exp(u).sum()
    jac = np.diag(p) - np.outer(p, p)
    g = rng.standard_normal(6)
    np.testing.assert_allclose(_softmax_vjp(p, g), jac.T @ g, rtol=RTOL_EXACT, atol=1e-15)
    # x_j = c sum_{i<j} p_i for j = 1..K-1 (K = 6): the end knots are constant
    c, k_bar = 2.5, rng.standard_normal(7)
    lower = np.tril(np.ones((7, 6)), -1)
    lower[[0, 6]] = 0
    np.testing.assert_allclose(_interior_cumsum_vjp(k_bar, c), c * lower.T @ k_bar,
                               rtol=RTOL_EXACT)


# ---------------------------------------------------------------------------------------------
# the maps: validation


@pytest.mark.parametrize("kwargs,match", [
    ({"name": "nflows"}, "unknown spline map"),
    ({"name": 3}, "unknown spline map"),
    ({"n_bins": 1}, "at least 2"),
    ({"n_bins": 2.5}, "integer"),
    ({"n_bins": True}, "integer"),
    ({"bound": 0.0}, "positive"),
    ({"bound": -1.0}, "positive"),
    ({"bound": math.inf}, "finite"),
    ({"bound": math.nan}, "finite"),
    ({"bound": "3"}, "real number"),
    ({"min_bin_width": 0.125}, "min_bin_width \\* n_bins"),
    ({"min_bin_height": 0.2}, "min_bin_height \\* n_bins"),
    ({"min_bin_width": -1e-3}, "non-negative"),
    ({"min_derivative": -1e-3}, "non-negative"),
    ({"boundary_slopes": "circular"}, "boundary slopes are fixed"),
    ({"name": "zuko", "min_bin_width": 1e-3}, "no minimum bin size"),
    ({"name": "zuko", "min_derivative": 0.0}, "\\(0, 1\\)"),
    ({"name": "zuko", "min_derivative": 1.0}, "\\(0, 1\\)"),
    ({"name": "distrax", "bound": None}, "bound is required"),
    ({"name": "distrax", "bound": 1.0, "min_bin_width": 0.25}, "2 \\* bound"),
    ({"name": "distrax", "bound": 1.0, "min_derivative": 1.0}, "below 1"),
    ({"name": "distrax", "bound": 1.0, "boundary_slopes": "periodic"}, "boundary_slopes"),
])
def test_map_settings_validation(kwargs, match):
    kwargs = {"name": "durkan", "n_bins": 8, **kwargs}
    name = kwargs.pop("name")
    with pytest.raises(ValueError, match=match):
        get_spline_map(name, **kwargs)


def test_map_input_validation():
    m = get_spline_map("durkan", n_bins=4)
    ok = (np.zeros((2, 4)), np.zeros((2, 4)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"unnormalized_widths must have shape \(\.\.\., 4\)"):
        m(np.zeros((2, 5)), *ok[1:])
    with pytest.raises(ValueError, match="unnormalized_heights must have shape"):
        m(ok[0], np.zeros((3, 4)), ok[2])
    with pytest.raises(ValueError, match=r"unnormalized_derivatives must have shape \(2, 3\)"):
        m(*ok[:2], np.zeros((2, 4)))
    with pytest.raises(ValueError, match="real numeric"):
        m(np.array([["a"] * 4] * 2), *ok[1:])
    (_, _, _), pullback = m.vjp(*ok)
    with pytest.raises(ValueError, match="xk_bar must have shape"):
        pullback(np.zeros((2, 4)))


# ---------------------------------------------------------------------------------------------
# the functional: values


def _reference_durkan(x, uw, uh, ud, inverse=False, B=3.0, mw=1e-3, mh=1e-3, md=1e-3):
    """Durkan et al.'s spline written out directly from the paper (and nflows' code): knots from
    the parameters, ``searchsorted``, eqs. 4-6 and the paper's root ``2c / (-b - sqrt(disc))``."""
    k_bins = uw.shape[-1]

    def knots(u, m):
        p = np.exp(u - u.max(-1, keepdims=True))
        p = p / p.sum(-1, keepdims=True)
        c = np.cumsum(m + (1 - k_bins * m) * p, axis=-1)
        c = np.concatenate([np.zeros(c.shape[:-1] + (1,)), c], -1) * 2 * B - B
        c[..., 0], c[..., -1] = -B, B
        return c

    xk, yk = knots(uw, mw), knots(uh, mh)
    dk = np.ones(xk.shape)
    dk[..., 1:-1] = md + np.logaddexp(0, ud)
    inside = (x >= -B) & (x <= B)
    grid = yk if inverse else xk
    k = np.clip((x[..., None] >= grid[..., 1:]).sum(-1), 0, k_bins - 1)

    def take(a, j):
        return np.take_along_axis(a, (k + j)[..., None], -1)[..., 0]

    x0, x1, y0, y1, d0, d1 = (take(xk, 0), take(xk, 1), take(yk, 0), take(yk, 1),
                              take(dk, 0), take(dk, 1))
    w, h = x1 - x0, y1 - y0
    s = h / w
    with np.errstate(invalid="ignore", divide="ignore"):
        if inverse:
            dy = x - y0
            a = dy * (d0 + d1 - 2 * s) + h * (s - d0)
            b = h * d0 - dy * (d0 + d1 - 2 * s)
            c = -s * dy
            xi = 2 * c / (-b - np.sqrt(b * b - 4 * a * c))
        else:
            xi = (x - x0) / w
        t = xi * (1 - xi)
        den = s + (d0 + d1 - 2 * s) * t
        y = y0 + h * (s * xi**2 + d0 * t) / den
        ld = np.log(s**2 * (d1 * xi**2 + 2 * s * t + d0 * (1 - xi) ** 2)) - 2 * np.log(den)
    if inverse:
        return np.where(inside, xi * w + x0, x), np.where(inside, -ld, 0.0)
    return np.where(inside, y, x), np.where(inside, ld, 0.0)


@pytest.mark.parametrize("inverse", [False, True])
def test_values_vs_direct_numpy(rng, path, inverse):
    n = 2000
    x = rng.uniform(-3.5, 3.5, n)
    params = _durkan_params(rng, n)
    y, ld = rational_quadratic_spline(x, *params, inverse=inverse)
    y_ref, ld_ref = _reference_durkan(x, *params, inverse=inverse)
    assert _rel(y, y_ref) <= RTOL_VALUE
    assert _rel(ld, ld_ref) <= RTOL_VALUE


def test_non_default_settings_vs_direct_numpy(rng, path):
    n, k = 500, 5
    settings = dict(bound=1.5, min_bin_width=0.05, min_bin_height=0.02, min_derivative=0.2)
    x = rng.uniform(-2, 2, n)
    params = _durkan_params(rng, n, k)
    y, ld = rational_quadratic_spline(x, *params, **settings)
    y_ref, ld_ref = _reference_durkan(x, *params, B=1.5, mw=0.05, mh=0.02, md=0.2)
    assert _rel(y, y_ref) <= RTOL_VALUE and _rel(ld, ld_ref) <= RTOL_VALUE


@pytest.mark.parametrize("scale", [1.0, 5.0])
def test_round_trips_and_log_dets(rng, path, scale):
    n = 5000
    x = rng.uniform(-3.2, 3.2, n)
    params = _durkan_params(rng, n, scale=scale)
    y, ld = rational_quadratic_spline(x, *params)
    x_rt, ld_inv = rational_quadratic_spline(y, *params, inverse=True)
    # x -> y -> x: the inverse scales y's rounding by dx/dy
    assert np.max(np.abs(x_rt - x) / np.maximum(1.0, np.exp(-ld))) <= RTOL_ROUND_TRIP
    # y -> x -> y: well conditioned
    y_rt, ld_rt = rational_quadratic_spline(x_rt, *params)
    assert _rel(y_rt, y) <= RTOL_ROUND_TRIP
    # the inverse log-det is minus the forward one at the point it returned
    assert _rel(ld_inv, -ld_rt) <= RTOL_ROUND_TRIP


@given(seed=st.integers(0, 2**32 - 1), n_bins=st.integers(2, 12),
       bound=st.floats(0.1, 20.0), scale=st.floats(0.0, 20.0),
       min_bin=st.floats(1e-4, 0.04), min_derivative=st.floats(1e-4, 0.5))
def test_property_round_trip(seed, n_bins, bound, scale, min_bin, min_derivative):
    """Any settings, any parameters: finite, and ``y -> x -> y`` exact up to conditioning.

    ``x`` carries a rounding error of about ``eps max(1, |x|)``, which the forward map turns into
    ``g eps max(1, |x|)`` in ``y`` (``g = dy/dx``, up to ~1e7 when bins may be arbitrarily narrow)
    and into ``|dL/dx| eps max(1, |x|)`` in the log-det.
    """
    rng = np.random.default_rng(seed)
    settings = dict(bound=bound, min_bin_width=min_bin, min_bin_height=min_bin,
                    min_derivative=min_derivative)
    params = _durkan_params(rng, 64, n_bins, scale)
    y = rng.uniform(-1.2 * bound, 1.2 * bound, 64)
    x, ld_inv = rational_quadratic_spline(y, *params, inverse=True, **settings)
    assert np.all(np.isfinite(x)) and np.all(np.isfinite(ld_inv))
    y_rt, ld, pullback = rational_quadratic_spline_vjp(x, *params, **settings)
    dl_dx, *_ = pullback(None, np.ones(64))
    size = np.maximum(1.0, np.abs(x))
    assert np.all(np.abs(y_rt - y) <= RTOL_ROUND_TRIP * np.maximum(1.0, np.abs(y))
                  * (1.0 + np.exp(ld) * size))
    assert np.all(np.abs(ld_inv + ld) <= RTOL_ROUND_TRIP * (1.0 + np.abs(ld)
                                                            + np.abs(dl_dx) * size))


def test_monotone_and_continuous_across_knots(rng, path):
    """At each interior knot the value and log-det from both sides meet."""
    m = get_spline_map("durkan", n_bins=K)
    params = _durkan_params(rng, 1)
    xk, yk, dk = m(*params)
    for j in range(1, K):
        xs = np.array([np.nextafter(xk[0, j], -np.inf), xk[0, j]])
        y, ld = rational_quadratic_spline(xs, *(np.repeat(p, 2, 0) for p in params))
        assert abs(y[1] - yk[0, j]) <= RTOL_EXACT * 3
        assert abs(y[0] - y[1]) <= RTOL_EXACT * 3
        np.testing.assert_allclose(ld, np.log(dk[0, j]), rtol=0, atol=1e-12)
    grid = np.linspace(-3.5, 3.5, 20001)
    y, ld = rational_quadratic_spline(grid, *(np.repeat(p, grid.size, 0) for p in params))
    assert np.all(np.diff(y) > 0) and np.all(np.isfinite(ld))


def test_tails_identity(rng, path):
    n = 400
    x = np.concatenate([rng.uniform(-40, -3.0001, n // 2), rng.uniform(3.0001, 40, n // 2)])
    params = _durkan_params(rng, n, scale=3.0)
    for inverse in (False, True):
        y, ld, pullback = rational_quadratic_spline_vjp(x, *params, inverse=inverse)
        np.testing.assert_allclose(y, x, rtol=RTOL_EXACT, atol=0)
        assert np.all(ld == 0.0)
        y_bar = rng.standard_normal(n)
        x_bar, *param_bars = pullback(y_bar, rng.standard_normal(n))
        np.testing.assert_allclose(x_bar, y_bar, rtol=RTOL_EXACT)
        assert all(not b.any() for b in param_bars)


@fast_paths(True, paths=["splines"])
def test_tails_exact_identity_on_fused_path(rng):
    x = np.concatenate([-3.0 - rng.exponential(5, 100), 3.0 + rng.exponential(5, 100)])
    params = _durkan_params(rng, 200)
    for inverse in (False, True):
        y, ld = rational_quadratic_spline(x, *params, inverse=inverse)
        assert np.array_equal(y, x) and np.all(ld == 0)


def test_bounds_map_to_themselves(rng, path):
    params = _durkan_params(rng, 2, scale=3.0)
    for inverse in (False, True):
        y, ld = rational_quadratic_spline(np.array([-3.0, 3.0]), *params, inverse=inverse)
        np.testing.assert_allclose(y, [-3.0, 3.0], rtol=0, atol=RTOL_EXACT)
        np.testing.assert_allclose(ld, 0.0, rtol=0, atol=RTOL_VALUE)


def test_extreme_parameters_finite(rng, path):
    n = 2000
    x = rng.uniform(-3.5, 3.5, n)
    for params in (_durkan_params(rng, n, scale=50.0),
                   tuple(np.full(s, v) for s, v in (((n, K), 50.0), ((n, K), -50.0),
                                                    ((n, K - 1), 50.0)))):
        y, ld, pullback = rational_quadratic_spline_vjp(x, *params)
        bars = pullback(np.ones(n), np.ones(n))
        assert np.all(np.isfinite(y)) and np.all(np.isfinite(ld))
        assert all(np.all(np.isfinite(b)) for b in bars)
        x_rt, ld_inv, pullback = rational_quadratic_spline_vjp(y, *params, inverse=True)
        bars = pullback(np.ones(n), np.ones(n))
        assert np.all(np.isfinite(x_rt)) and np.all(np.isfinite(ld_inv))
        assert all(np.all(np.isfinite(b)) for b in bars)
        y_rt, _ = rational_quadratic_spline(x_rt, *params)
        assert _rel(y_rt, y) <= RTOL_ROUND_TRIP


def test_shapes_and_dtypes(rng, path):
    x = rng.uniform(-3, 3, (2, 3))
    params = (rng.standard_normal((2, 3, K)), rng.standard_normal((2, 3, K)),
              rng.standard_normal((2, 3, K - 1)))
    y, ld, pullback = rational_quadratic_spline_vjp(x, *params)
    assert y.shape == ld.shape == (2, 3)
    bars = pullback(np.ones((2, 3)))
    assert [b.shape for b in bars] == [x.shape] + [p.shape for p in params]
    assert [b.dtype for b in bars] == [np.float64] * 4
    # a single element
    y0, ld0 = rational_quadratic_spline(x[0, 0], *(p[0, 0] for p in params))
    assert y0.shape == () and y0 == y[0, 0] and ld0 == ld[0, 0]
    # float32 in, float32 out, close to float64
    y32, ld32, pb32 = rational_quadratic_spline_vjp(x.astype(np.float32),
                                                    *(p.astype(np.float32) for p in params))
    assert y32.dtype == ld32.dtype == np.float32
    np.testing.assert_allclose(y32, y, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ld32, ld, rtol=1e-4, atol=1e-4)
    assert all(b.dtype == np.float32 for b in pb32(np.ones((2, 3), np.float32)))
    # integer input is converted
    yi, _ = rational_quadratic_spline(np.array([0, 1]), *(p[0, :2] for p in params))
    assert yi.dtype == np.float64


def test_pullback_sees_a_snapshot(rng, path):
    n = 20
    x = rng.uniform(-3, 3, n)
    params = _durkan_params(rng, n)
    _, _, pullback = rational_quadratic_spline_vjp(x, *params)
    first = pullback(np.ones(n), np.ones(n))
    x += 0.5
    for p in params:
        p *= 2.0
    for a, b in zip(first, pullback(np.ones(n), np.ones(n))):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match=r"y_bar must have shape \(20,\)"):
        pullback(np.ones(3))


# ---------------------------------------------------------------------------------------------
# the functional: pullbacks


def _away_from_knots(rng, params, n, inverse, B=3.0, **settings):
    """Points whose relative position in their bin is in [0.1, 0.9] (forward or inverse)."""
    m = get_spline_map("durkan", n_bins=params[0].shape[-1], bound=B, **settings)
    xk, yk, _ = m(*params)
    grid = yk if inverse else xk
    k = rng.integers(0, grid.shape[-1] - 1, n)
    lo, hi = grid[np.arange(n), k], grid[np.arange(n), k + 1]
    return lo + rng.uniform(0.1, 0.9, n) * (hi - lo)


@pytest.mark.parametrize("inverse", [False, True])
@pytest.mark.parametrize("scale", [0.5, 2.0])
def test_pullback_vs_fd(rng, path, inverse, scale):
    n, k = 6, 5
    params = _durkan_params(rng, n, k, scale)
    x = _away_from_knots(rng, params, n, inverse)
    x[0] = -4.0  # one tail element
    assert_vjp(_spline_vjp(inverse), (x, *params), rng=2)


def test_pullback_vs_fd_non_default_settings(rng, path):
    n, k = 5, 4
    settings = dict(min_bin_width=0.05, min_bin_height=0.1, min_derivative=0.3)
    params = _durkan_params(rng, n, k, 1.0)
    for inverse in (False, True):
        x = _away_from_knots(rng, params, n, inverse, B=1.5, **settings)
        assert_vjp(_spline_vjp(inverse, bound=1.5, **settings), (x, *params), rng=3)


def test_pullback_none_cotangents(rng, path):
    n = 10
    params = _durkan_params(rng, n)
    x = rng.uniform(-3, 3, n)
    _, ld, pullback = rational_quadratic_spline_vjp(x, *params)
    assert all(not b.any() for b in pullback())
    x_bar, *_ = pullback(np.ones(n))
    np.testing.assert_allclose(x_bar, np.exp(ld), rtol=RTOL_EXACT)     # dy/dx
    full = pullback(np.ones(n), np.ones(n))
    parts = [a + b for a, b in zip(pullback(np.ones(n)), pullback(None, np.ones(n)))]
    for a, b in zip(full, parts):
        np.testing.assert_allclose(a, b, rtol=RTOL_EXACT, atol=1e-14)


# ---------------------------------------------------------------------------------------------
# the fused kernels against the map + generic kernels


def _libm_knots(u, m):
    """The "durkan" knots with libm's ``exp`` and sequential sums, as the fused kernels compute
    them (NumPy's own ``exp`` is a SIMD implementation that differs by an ulp in a few per cent
    of arguments). Returns ``(knots, p)``."""
    k_bins = u.shape[-1]
    e = np.vectorize(math.exp, otypes=[np.float64])(u - u.max(-1, keepdims=True))
    p = e * (1.0 / np.cumsum(e, -1)[..., -1:])
    knots = np.empty(u.shape[:-1] + (k_bins + 1,))
    knots[..., 1:] = (m.bound - (-m.bound)) * np.cumsum(
        m.min_bin_width + (1.0 - m.min_bin_width * k_bins) * p, -1) + (-m.bound)
    knots[..., 0], knots[..., -1] = -m.bound, m.bound
    return knots, p


@pytest.mark.parametrize("inverse", [False, True])
@pytest.mark.parametrize("scale", [1.0, 4.0])
def test_fused_equals_generic_kernels_on_the_same_knots(rng, monkeypatch, inverse, scale):
    """Given bitwise-identical knots, the fused kernels reproduce the generic kernels and the
    map's pullback (they share the per-bin helpers; only summation orders differ)."""
    # libm's exp gives these knots bit for bit only in the scalar fused kernels; the block
    # ones (vectorised exp, within 1 ulp) are held to them in tests/test_spline_speed_paths.py
    for name in ("forward", "inverse", "forward_vjp", "inverse_vjp"):
        monkeypatch.setattr(spline_core, f"rqs_durkan_{name}",
                            getattr(spline_kernels, f"rqs_durkan_{name}_scalar"))
    n = 3000
    m = get_spline_map("durkan", n_bins=K)
    x = rng.uniform(-3.3, 3.3, n)
    uw, uh, ud = _durkan_params(rng, n, scale=scale)
    xk, pw = _libm_knots(uw, m)
    yk, ph = _libm_knots(uh, m)
    dk = np.ones_like(xk)
    dk[:, 1:-1] = m.min_derivative + np.logaddexp(0, ud)
    inside = np.abs(x) <= 3.0
    out, ld = np.empty(n), np.empty(n)
    (rqs_inverse if inverse else rqs_forward)(x, xk, yk, dk, out, ld)
    with fast_paths(True, paths=["splines"]):
        y_f, ld_f, pullback = rational_quadratic_spline_vjp(x, uw, uh, ud, inverse=inverse)
    assert _rel(y_f[inside], out[inside]) <= RTOL_PARITY
    assert _rel(ld_f[inside], ld[inside]) <= RTOL_PARITY
    y_bar, ld_bar = rng.standard_normal(n), rng.standard_normal(n)
    kernel_vjp = rqs_inverse_vjp if inverse else rqs_forward_vjp

    def generic_pullback(out_bar, log_det_bar):
        v_bar, bars = np.empty(n), [np.empty_like(xk) for _ in range(3)]
        kernel_vjp(x, xk, yk, dk, out_bar, log_det_bar, v_bar, *bars)
        c = 2 * m.bound * (1 - K * m.min_bin_width)
        sigmoid = np.vectorize(lambda v: 1 / (1 + math.exp(-v)) if v >= 0
                               else math.exp(v) / (1 + math.exp(v)), otypes=[np.float64])
        return (v_bar, _softmax_vjp(pw, _interior_cumsum_vjp(bars[0], c)),
                _softmax_vjp(ph, _interior_cumsum_vjp(bars[1], c)),
                bars[2][:, 1:-1] * sigmoid(ud)), (v_bar, c * bars[0], c * bars[1], bars[2])

    expected, _ = generic_pullback(y_bar, ld_bar)
    # Rounding is relative to the size of the terms that are added, not to the (possibly much
    # smaller) result: y_bar dy/dtheta and ld_bar dL/dtheta can nearly cancel, and so do the
    # knot cotangents in the map's transpose (neighbouring knots of a narrow bin, p (g - sum pg)).
    _, terms_y = generic_pullback(y_bar, np.zeros(n))
    _, terms_l = generic_pullback(np.zeros(n), ld_bar)
    got = pullback(y_bar, ld_bar)
    for a, b, ty, tl in zip(got, expected, terms_y, terms_l):
        a, b = a[inside].reshape(inside.sum(), -1), b[inside].reshape(inside.sum(), -1)
        scale = (np.abs(ty[inside].reshape(inside.sum(), -1)).max(-1)
                 + np.abs(tl[inside].reshape(inside.sum(), -1)).max(-1))
        err = np.abs(a - b).max(-1) / np.maximum(scale, 1e-300)
        assert err.max() <= RTOL_PARITY, err.max()


@pytest.mark.parametrize("inverse", [False, True])
def test_fused_vs_map_path(rng, monkeypatch, inverse):
    """The two public paths on the same inputs: they differ only by ulps in the knots."""
    n = 4000
    x = rng.uniform(-3.3, 3.3, n)
    params = _durkan_params(rng, n)
    out = {}
    for fused in (True, False):
        with fast_paths(fused, paths=["splines"]):
            y, ld, pullback = rational_quadratic_spline_vjp(x, *params, inverse=inverse)
            out[fused] = (y, ld, *pullback(np.ones(n), np.ones(n)))
    # The block kernels' own exp (within 1 ulp of libm's) moves the knots as much as NumPy's
    # does. The libm-based scalar kernels meet RTOL_VALUE on this seed, but reach 5.3e-12 over
    # 20 seeds (a few steep elements, |a - b| / max(1, |b|) on cotangents), as do the block
    # ones (5.3e-12, on other elements): so the fast path is held to the scalar kernels' worst
    # over seeds, RTOL_VALUE_SEEDS.
    for name in ("forward", "inverse", "forward_vjp", "inverse_vjp"):
        monkeypatch.setattr(spline_core, f"rqs_durkan_{name}",
                            getattr(spline_kernels, f"rqs_durkan_{name}_scalar"))
    with fast_paths(True, paths=["splines"]):
        y, ld, pullback = rational_quadratic_spline_vjp(x, *params, inverse=inverse)
    reference = (y, ld, *pullback(np.ones(n), np.ones(n)))
    for a, b, r in zip(out[True], out[False], reference):
        assert _rel(r, b) <= RTOL_VALUE
        assert _rel(a, b) <= RTOL_VALUE_SEEDS


def test_threads_give_identical_results(rng, monkeypatch, path):
    n = 4 * MIN_PER_THREAD + 17
    x = rng.uniform(-3.3, 3.3, n)
    params = _durkan_params(rng, n)
    results = []
    for threads in ("1", "3"):
        monkeypatch.setenv("REFFLOW_NUM_THREADS", threads)
        for inverse in (False, True):
            y, ld, pullback = rational_quadratic_spline_vjp(x, *params, inverse=inverse)
            results.append((y, ld, *pullback(np.ones(n), np.ones(n))))
    for a, b in zip(results[:2], results[2:]):
        for u, v in zip(a, b):
            np.testing.assert_array_equal(u, v)


# ---------------------------------------------------------------------------------------------
# the functional: validation


def test_functional_validation(rng):
    x = np.zeros(3)
    uw, uh, ud = np.zeros((3, 4)), np.zeros((3, 4)), np.zeros((3, 3))
    f = rational_quadratic_spline
    with pytest.raises(ValueError, match="at least 2"):
        f(x, np.zeros((3, 1)), np.zeros((3, 1)), np.zeros((3, 0)))
    with pytest.raises(ValueError, match="unnormalized_widths must have shape"):
        f(x, np.zeros((2, 4)), uh, ud)
    with pytest.raises(ValueError, match="unnormalized_heights must have shape"):
        f(x, uw, np.zeros((3, 5)), ud)
    with pytest.raises(ValueError, match=r"unnormalized_derivatives must have shape \(3, 3\)"):
        f(x, uw, uh, np.zeros((3, 4)))
    with pytest.raises(ValueError, match="scalar"):
        f(x, 1.0, uh, ud)
    for bound in (0.0, -2.0, np.inf):
        with pytest.raises(ValueError, match="bound"):
            f(x, uw, uh, ud, bound=bound)
    with pytest.raises(ValueError, match="min_bin_width"):
        f(x, uw, uh, ud, min_bin_width=0.25)
    with pytest.raises(ValueError, match="min_derivative"):
        f(x, uw, uh, ud, min_derivative=-1.0)
    for bad in (np.nan, np.inf, -np.inf):
        with pytest.raises(ValueError, match="x must be finite"):
            f(np.array([0.0, bad, 1.0]), uw, uh, ud)
        for i, name in enumerate(("unnormalized_widths", "unnormalized_heights",
                                  "unnormalized_derivatives")):
            args = [uw.copy(), uh.copy(), ud.copy()]
            args[i][1, 0] = bad
            with pytest.raises(ValueError, match=f"{name} must be finite"):
                f(x, *args)
    with pytest.raises(ValueError, match="real numeric"):
        f(np.array(["a", "b", "c"]), uw, uh, ud)
    with pytest.raises(ValueError, match="real numeric"):
        f(x.astype(complex), uw, uh, ud)
    with pytest.raises(ValueError, match="rational_quadratic_spline_vjp"):
        rational_quadratic_spline_vjp(x, uw, uh, np.zeros((3, 2)))


def test_zero_minimum_bins_degenerate(path):
    """With no minimum bin size, a softmax weight of ~1e-26 rounds a bin to zero width; an
    element in it gets a clear error, not NaN or numba's ZeroDivisionError."""
    uw = np.array([[30.0, -30.0]])       # the last x-bin: e^-60 of 2B, below half an ulp of B
    uh = np.zeros((1, 2))
    ud = np.zeros((1, 1))
    for inverse, v in ((True, 1.0), (False, 3.0)):
        with pytest.raises(ValueError, match="zero width or height"), \
                np.errstate(divide="ignore", invalid="ignore"):  # NumPy twins: 0/0 is NaN
            rational_quadratic_spline(np.array([v]), uw, uh, ud, inverse=inverse,
                                      min_bin_width=0.0, min_bin_height=0.0)
    # a derivative that underflows to zero, softplus(-800) = 0, at the knot x = 0 itself
    with pytest.raises(ValueError, match="zero derivative"), \
            np.errstate(divide="ignore", invalid="ignore"):
        rational_quadratic_spline(np.array([0.0]), np.zeros((1, 2)), np.zeros((1, 2)),
                                  np.array([[-800.0]]), min_derivative=0.0)


# ---------------------------------------------------------------------------------------------
# peers


def _nflows_spline():
    torch = pytest.importorskip("torch")
    rq = pytest.importorskip("nflows.transforms.splines.rational_quadratic")
    return torch, rq.unconstrained_rational_quadratic_spline


@pytest.mark.parametrize("inverse", [False, True])
@pytest.mark.parametrize("bound,n_bins", [(3.0, 8), (1.0, 4), (5.0, 10)])
def test_against_nflows(rng, path, inverse, bound, n_bins):
    """Values and log-dets, float64; inside and outside ``[-B, B]``."""
    torch, nflows_spline = _nflows_spline()
    n = 3000
    x = rng.uniform(-1.1 * bound, 1.1 * bound, n)
    params = _durkan_params(rng, n, n_bins)
    y, ld = rational_quadratic_spline(x, *params, inverse=inverse, bound=bound)
    y_t, ld_t = nflows_spline(*(torch.from_numpy(a) for a in (x, *params)), inverse=inverse,
                              tails="linear", tail_bound=bound)
    assert _rel(y, y_t.numpy()) <= RTOL_VALUE
    assert _rel(ld, ld_t.numpy()) <= RTOL_VALUE


@pytest.mark.parametrize("inverse", [False, True])
def test_gradients_against_nflows_autograd(rng, path, inverse):
    """Our hand-derived pullback against torch's autograd through nflows' code."""
    torch, nflows_spline = _nflows_spline()
    n = 500
    x = rng.uniform(-3.3, 3.3, n)
    params = _durkan_params(rng, n)
    y_bar, ld_bar = rng.standard_normal(n), rng.standard_normal(n)
    _, _, pullback = rational_quadratic_spline_vjp(x, *params, inverse=inverse)
    ours = pullback(y_bar, ld_bar)
    leaves = [torch.tensor(a, requires_grad=True) for a in (x, *params)]
    y_t, ld_t = nflows_spline(*leaves, inverse=inverse, tails="linear", tail_bound=3.0)
    ((y_t * torch.from_numpy(y_bar)).sum() + (ld_t * torch.from_numpy(ld_bar)).sum()).backward()
    for a, leaf in zip(ours, leaves):
        b = leaf.grad.numpy()
        # normwise per element, as the gradients of one element share one scale
        a, b = a.reshape(n, -1), b.reshape(n, -1)
        err = np.abs(a - b).max(-1) / np.maximum(1.0, np.abs(b).max(-1))
        assert err.max() <= RTOL_VALUE, err.max()


def test_against_zuko():
    """The "zuko" map + generic kernels vs ``zuko.transforms.MonotonicRQSTransform`` (x -> y)."""
    torch = pytest.importorskip("torch")
    zuko = pytest.importorskip("zuko")
    rng = np.random.default_rng(5)
    n = 3000
    for bound, n_bins in ((5.0, 8), (2.0, 5)):
        m = get_spline_map("zuko", n_bins=n_bins, bound=bound)
        uw, uh, ud = _params(rng, m, (n,))
        x = rng.uniform(-1.2 * bound, 1.2 * bound, n)
        xk, yk, dk = m(uw, uh, ud)
        y, ld = np.empty(n), np.empty(n)
        rqs_forward(x, xk, yk, dk, y, ld)
        t = zuko.transforms.MonotonicRQSTransform(*(torch.from_numpy(a) for a in (uw, uh, ud)),
                                                  bound=bound)
        y_z = t(torch.from_numpy(x))
        ld_z = t.log_abs_det_jacobian(torch.from_numpy(x), y_z)
        assert _rel(y, y_z.numpy()) <= RTOL_VALUE
        assert _rel(ld, ld_z.numpy()) <= RTOL_VALUE
        # zuko's inverse, from our y
        x_back, _ = np.empty(n), np.empty(n)
        rqs_inverse(y, xk, yk, dk, x_back, _)
        assert _rel(x_back, t.inv(torch.from_numpy(y)).numpy()) <= RTOL_VALUE
