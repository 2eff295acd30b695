"""Elementwise bijectors: Affine, Exp, Sigmoid, Logit, Tanh, Softplus, LeakyReLU.

Paper facts (closed forms against direct NumPy/SciPy formulas, Logit as the inverse of Sigmoid,
RealNVP's alpha squeeze and its ``dim * log(1 - 2 alpha)`` log-det term, identity at zero
parameters), monotonicity, the stable log-dets at extreme inputs, domain and overflow errors,
constructor checks, dtype and shape handling (float32, single points, empty batches), and the
oracle (round trips, log-dets vs ``slogdet`` of FD Jacobians, pullbacks vs FD).
"""

import math
import warnings

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal
from scipy.special import expit, logit

from refflow import Affine, Exp, LeakyReLU, Logit, Sigmoid, Softplus, Tanh
from refflow.testing import assert_bijector, assert_vjp

#: Closed forms evaluated two different ways in float64: a few ulps of relative error.
RTOL_CLOSED = 1e-12
#: Absolute floor for closed forms whose value crosses zero (logit at 1/2, log(expm1) at log 2):
#: there a relative error is meaningless and the error is a few ulps of the O(1) summands.
ATOL_CROSSING = 1e-14
#: Round trips z -> x -> z of one elementwise map on its well-conditioned range.
RTOL_RT = 1e-12
#: float32 results against float64 ones: a few float32 ulps (eps32 ~ 1.2e-7) over small dims.
RTOL_FLOAT32 = 1e-5
#: Absolute floor for float32 log-dets that sum to nearly zero (cancellation of O(1) terms).
ATOL_FLOAT32 = 1e-5

DIM = 3
ALPHA = 0.05


def _affine(rng):
    layer = Affine(DIM)
    layer.params["shift"] = rng.normal(0.0, 1.0, DIM)
    layer.params["log_scale"] = rng.normal(0.0, 0.5, DIM)
    return layer


def _away_from_zero(rng, n, margin=0.1):
    signs = rng.choice([-1.0, 1.0], size=(n, DIM))
    return signs * (margin + np.abs(rng.standard_normal((n, DIM))))


# id -> (builder(rng), sample_z(rng, n), sample_x(rng, n)); samples stay on the range where the
# round trip is exact and away from LeakyReLU's kink.
CASES = {
    "affine": (_affine, lambda r, n: r.normal(0, 1.5, (n, DIM)), lambda r, n: r.normal(0, 1.5, (n, DIM))),
    "exp": (lambda r: Exp(DIM), lambda r, n: r.normal(0, 2, (n, DIM)),
            lambda r, n: np.exp(r.normal(0, 2, (n, DIM)))),
    "sigmoid": (lambda r: Sigmoid(DIM), lambda r, n: r.uniform(-8, 8, (n, DIM)),
                lambda r, n: r.uniform(0.01, 0.99, (n, DIM))),
    "logit": (lambda r: Logit(DIM), lambda r, n: r.uniform(0.01, 0.99, (n, DIM)),
              lambda r, n: r.uniform(-8, 8, (n, DIM))),
    "logit_alpha": (lambda r: Logit(DIM, alpha=ALPHA), lambda r, n: r.uniform(0.0, 1.0, (n, DIM)),
                    lambda r, n: r.uniform(-2.5, 2.5, (n, DIM))),
    "tanh": (lambda r: Tanh(DIM), lambda r, n: r.uniform(-3, 3, (n, DIM)),
             lambda r, n: r.uniform(-0.95, 0.95, (n, DIM))),
    "softplus": (lambda r: Softplus(DIM), lambda r, n: r.uniform(-5, 5, (n, DIM)),
                 lambda r, n: np.exp(r.normal(0, 1, (n, DIM)))),
    "leaky_relu": (lambda r: LeakyReLU(DIM, negative_slope=0.2), _away_from_zero, _away_from_zero),
    "leaky_relu_default": (lambda r: LeakyReLU(DIM), _away_from_zero, _away_from_zero),
}
IDS = sorted(CASES)
CLASSES = [Affine, Exp, Sigmoid, Logit, Tanh, Softplus, LeakyReLU]


def _make(case_id, seed=0):
    build, sample_z, sample_x = CASES[case_id]
    rng = np.random.default_rng(seed)
    return build(rng), sample_z(rng, 6), sample_x(rng, 6)


# ---------------------------------------------------------------------------- closed forms
def test_affine_closed_form():
    rng = np.random.default_rng(1)
    layer = _affine(rng)
    b, a = layer.params["shift"].copy(), layer.params["log_scale"].copy()
    z = rng.normal(size=(7, DIM))
    x, log_det = layer.forward(z)
    assert_allclose(x, z * np.exp(a) + b, rtol=RTOL_CLOSED)
    assert_allclose(log_det, np.full(7, a.sum()), rtol=RTOL_CLOSED)
    z_back, log_det_inv = layer.inverse(x)
    assert_allclose(z_back, (x - b) / np.exp(a), rtol=RTOL_CLOSED)
    assert_allclose(log_det_inv, np.full(7, -a.sum()), rtol=RTOL_CLOSED)
    assert sorted(layer.params) == ["log_scale", "shift"]
    assert all(v.shape == (DIM,) and v.dtype == np.float64 for v in layer.params.values())


def test_affine_is_identity_at_zero_parameters():
    layer = Affine(DIM)
    assert_array_equal(layer.params["shift"], np.zeros(DIM))
    assert_array_equal(layer.params["log_scale"], np.zeros(DIM))
    z = np.random.default_rng(2).normal(size=(5, DIM))
    x, log_det = layer.forward(z)
    assert_array_equal(x, z)
    assert_array_equal(log_det, np.zeros(5))
    z_back, log_det_inv = layer.inverse(z)
    assert_array_equal(z_back, z)
    assert_array_equal(log_det_inv, np.zeros(5))


def test_exp_closed_form():
    z = np.random.default_rng(3).normal(0, 3, size=(8, DIM))
    x, log_det = Exp(DIM).forward(z)
    assert_allclose(x, np.exp(z), rtol=RTOL_CLOSED)
    assert_allclose(log_det, z.sum(axis=1), rtol=RTOL_CLOSED)
    z_back, log_det_inv = Exp(DIM).inverse(x)
    assert_allclose(z_back, np.log(x), rtol=RTOL_CLOSED)
    assert_allclose(log_det_inv, -np.log(x).sum(axis=1), rtol=RTOL_CLOSED)


def test_sigmoid_is_expit():
    z = np.random.default_rng(4).uniform(-8, 8, size=(8, DIM))
    x, log_det = Sigmoid(DIM).forward(z)
    assert_allclose(x, expit(z), rtol=RTOL_CLOSED)
    # log sigmoid'(z) = log(sigmoid(z) * (1 - sigmoid(z)))
    assert_allclose(log_det, np.log(expit(z) * expit(-z)).sum(axis=1), rtol=RTOL_CLOSED)
    u = np.random.default_rng(5).uniform(0.01, 0.99, size=(8, DIM))
    z_back, log_det_inv = Sigmoid(DIM).inverse(u)
    assert_allclose(z_back, logit(u), rtol=RTOL_CLOSED, atol=ATOL_CROSSING)
    assert_allclose(log_det_inv, -np.log(u * (1 - u)).sum(axis=1), rtol=RTOL_CLOSED)


def test_logit_without_alpha_is_scipy_logit():
    u = np.random.default_rng(6).uniform(0.001, 0.999, size=(8, DIM))
    x, log_det = Logit(DIM).forward(u)
    assert_allclose(x, logit(u), rtol=RTOL_CLOSED, atol=ATOL_CROSSING)
    assert_allclose(log_det, -np.log(u * (1 - u)).sum(axis=1), rtol=RTOL_CLOSED)


def test_logit_is_the_inverse_of_sigmoid():
    rng = np.random.default_rng(7)
    u = rng.uniform(0.001, 0.999, size=(8, DIM))
    z = rng.uniform(-8, 8, size=(8, DIM))
    lg, sg = Logit(DIM), Sigmoid(DIM)
    x_l, ld_l = lg.forward(u)
    x_s, ld_s = sg.inverse(u)
    assert_allclose(x_l, x_s, rtol=RTOL_CLOSED, atol=ATOL_CROSSING)
    assert_allclose(ld_l, ld_s, rtol=RTOL_CLOSED)
    u_l, ldi_l = lg.inverse(z)
    u_s, ldi_s = sg.forward(z)
    assert_allclose(u_l, u_s, rtol=RTOL_CLOSED)
    assert_allclose(ldi_l, ldi_s, rtol=RTOL_CLOSED)
    # and composing the two is the identity
    back, _ = sg.forward(lg.forward(u)[0])
    assert_allclose(back, u, rtol=RTOL_RT)
    assert_allclose(ld_l + sg.forward(x_l)[1], 0.0, atol=1e-12)


@pytest.mark.parametrize("alpha", [0.05, 0.1, 0.3])
def test_logit_alpha_squeeze_formula(alpha):
    rng = np.random.default_rng(8)
    z = rng.uniform(0.0, 1.0, size=(9, DIM))
    z[0] = [0.0, 1.0, 0.5]  # the ends of [0, 1] are inside the domain when alpha > 0
    c = 1.0 - 2.0 * alpha
    y = alpha + c * z
    x, log_det = Logit(DIM, alpha=alpha).forward(z)
    assert_allclose(x, logit(y), rtol=RTOL_CLOSED, atol=ATOL_CROSSING)
    # d/dz logit(alpha + c z) = c / (y (1 - y)), so log_det = dim log c + sum -log(y (1 - y))
    expected = DIM * math.log(c) - np.log(y * (1.0 - y)).sum(axis=1)
    assert_allclose(log_det, expected, rtol=RTOL_CLOSED)
    # the squeeze adds exactly dim*log(1 - 2 alpha) to Logit(alpha=0) at y
    assert_allclose(log_det - Logit(DIM).forward(y)[1], DIM * math.log(c), rtol=RTOL_CLOSED)
    assert np.isfinite(x[0]).all()
    assert_allclose(x[0, :2], [logit(alpha), -logit(alpha)], rtol=RTOL_CLOSED)


@pytest.mark.parametrize("alpha", [0.05, 0.3])
def test_logit_alpha_inverse_formula(alpha):
    x = np.random.default_rng(9).uniform(-5, 5, size=(9, DIM))
    c = 1.0 - 2.0 * alpha
    z, log_det = Logit(DIM, alpha=alpha).inverse(x)
    assert_allclose(z, (expit(x) - alpha) / c, rtol=RTOL_CLOSED, atol=ATOL_CROSSING)
    expected = np.log(expit(x) * expit(-x)).sum(axis=1) - DIM * math.log(c)
    assert_allclose(log_det, expected, rtol=RTOL_CLOSED)


def test_tanh_closed_form():
    rng = np.random.default_rng(10)
    small = rng.uniform(-0.5, 0.5, size=(8, DIM))
    large = rng.choice([-1, 1], size=(8, DIM)) * rng.uniform(0.5, 15, size=(8, DIM))
    for z in (small, large):
        x, log_det = Tanh(DIM).forward(z)
        assert_allclose(x, np.tanh(z), rtol=RTOL_CLOSED)
    # log(1 - tanh^2) = log1p(-tanh^2) (accurate for small |z|) = -2 log cosh z (for larger |z|)
    assert_allclose(Tanh(DIM).forward(small)[1], np.log1p(-np.tanh(small) ** 2).sum(axis=1),
                    rtol=RTOL_CLOSED)
    assert_allclose(Tanh(DIM).forward(large)[1], -2.0 * np.log(np.cosh(large)).sum(axis=1),
                    rtol=RTOL_CLOSED)
    u = rng.uniform(-0.95, 0.95, size=(8, DIM))
    z_back, log_det_inv = Tanh(DIM).inverse(u)
    assert_allclose(z_back, np.arctanh(u), rtol=RTOL_CLOSED)
    assert_allclose(log_det_inv, -np.log1p(-u ** 2).sum(axis=1), rtol=RTOL_CLOSED)


def test_softplus_closed_form():
    rng = np.random.default_rng(11)
    z = rng.uniform(-20, 20, size=(8, DIM))
    x, log_det = Softplus(DIM).forward(z)
    assert_allclose(x, np.log1p(np.exp(z)), rtol=RTOL_CLOSED)
    # softplus' = sigmoid, so log_det = sum log sigmoid(z) = -sum log1p(exp(-z))
    assert_allclose(log_det, -np.log1p(np.exp(-z)).sum(axis=1), rtol=RTOL_CLOSED)
    u = rng.uniform(0.01, 30, size=(8, DIM))  # larger x: see the accuracy test below
    u[0, 0] = math.log(2.0)  # where the inverse crosses zero
    z_back, log_det_inv = Softplus(DIM).inverse(u)
    assert_allclose(z_back, np.log(np.expm1(u)), rtol=RTOL_CLOSED, atol=ATOL_CROSSING)
    # g'(x) = 1 / sigmoid(g(x)) = 1 / (1 - e^{-x})
    assert_allclose(log_det_inv, -np.log1p(-np.exp(-u)).sum(axis=1), rtol=RTOL_CLOSED)


def test_softplus_inverse_log_det_is_accurate_for_large_x():
    u = np.array([[20.0, 27.0, 40.0]])
    _, log_det = Softplus(DIM).inverse(u)
    # for x > log 2, -log1p(-exp(-x)) is accurate to a few ulps (Maechler 2012, "log1mexp")
    assert_allclose(log_det, -np.log1p(-np.exp(-u)).sum(axis=1), rtol=RTOL_CLOSED)


@pytest.mark.parametrize("slope", [0.01, 0.2, 3.0])
def test_leaky_relu_closed_form(slope):
    rng = np.random.default_rng(12)
    z = _away_from_zero(rng, 10)
    layer = LeakyReLU(DIM, negative_slope=slope)
    x, log_det = layer.forward(z)
    assert_allclose(x, np.where(z > 0, z, slope * z), rtol=RTOL_CLOSED)
    assert_allclose(log_det, (z < 0).sum(axis=1) * math.log(slope), rtol=RTOL_CLOSED, atol=0)
    z_back, log_det_inv = layer.inverse(x)
    assert_allclose(z_back, z, rtol=RTOL_RT)
    assert_allclose(log_det_inv, -(x < 0).sum(axis=1) * math.log(slope), rtol=RTOL_CLOSED)


def test_leaky_relu_at_zero_uses_slope_one():
    layer = LeakyReLU(DIM, negative_slope=0.2)
    x, log_det = layer.forward(np.zeros((2, DIM)))
    assert_array_equal(x, np.zeros((2, DIM)))
    assert_array_equal(log_det, np.zeros(2))
    assert layer.negative_slope == 0.2
    assert LeakyReLU(DIM).negative_slope == 0.01


# ---------------------------------------------------------------------- the oracle
@pytest.mark.parametrize("case_id", IDS)
def test_oracle_round_trips_and_log_dets(case_id):
    layer, z, x = _make(case_id)
    report = assert_bijector(layer.forward, layer.inverse, z, x=x)
    assert report.ok
    # the elementwise round trips are tighter than the oracle's default
    assert_allclose(layer.inverse(layer.forward(z)[0])[0], z, rtol=RTOL_RT, atol=RTOL_RT)
    assert_allclose(layer.forward(layer.inverse(x)[0])[0], x, rtol=RTOL_RT, atol=RTOL_RT)
    assert_allclose(layer.forward(z)[1] + layer.inverse(layer.forward(z)[0])[1], 0.0,
                    atol=RTOL_RT)


@pytest.mark.parametrize("case_id", IDS)
@pytest.mark.parametrize("direction", ["forward", "inverse"])
def test_oracle_pullbacks(case_id, direction):
    layer, z, x = _make(case_id)
    vjp = layer.forward_vjp if direction == "forward" else layer.inverse_vjp
    report = assert_vjp(vjp, z if direction == "forward" else x, layer.params, rng=3)
    assert set(report.errors) == {"input", *layer.params}


@pytest.mark.parametrize("case_id", IDS)
def test_vjp_outputs_equal_plain_pass(case_id):
    layer, z, x = _make(case_id)
    x1, ld1 = layer.forward(z)
    x2, ld2, _ = layer.forward_vjp(z)
    assert_array_equal(x1, x2)
    assert_array_equal(ld1, ld2)
    z1, ldi1 = layer.inverse(x)
    z2, ldi2, _ = layer.inverse_vjp(x)
    assert_array_equal(z1, z2)
    assert_array_equal(ldi1, ldi2)


# ------------------------------------------------------------------ monotonicity
@pytest.mark.parametrize("case_id", IDS)
def test_monotone_increasing_in_each_coordinate(case_id):
    layer, z, x = _make(case_id)
    lo, hi = z.min(axis=0), z.max(axis=0)
    grid = np.linspace(lo, hi, 201)  # (201, dim), each column increasing
    if case_id.startswith("leaky"):
        grid = np.linspace(-3, 3, 201)[:, None] * np.ones(DIM)
    out, _ = layer.forward(grid)
    assert (np.diff(out, axis=0) > 0).all()
    lo, hi = x.min(axis=0), x.max(axis=0)
    grid = np.linspace(lo, hi, 201)
    if case_id.startswith("leaky"):
        grid = np.linspace(-3, 3, 201)[:, None] * np.ones(DIM)
    back, _ = layer.inverse(grid)
    assert (np.diff(back, axis=0) > 0).all()


# ---------------------------------------------------------- stable log-dets at |z| = 1e3
EXTREME = np.array([[1e3, -1e3, 1e3], [-1e3, -1e3, -1e3], [1e3, 1e3, 0.0]])


def test_tanh_log_det_at_extreme_inputs():
    x, log_det = Tanh(DIM).forward(EXTREME)
    assert_array_equal(x, np.sign(EXTREME))
    per_coord = np.where(EXTREME == 0, 0.0, 2.0 * (math.log(2.0) - np.abs(EXTREME)))
    assert np.isfinite(log_det).all()
    assert_allclose(log_det, per_coord.sum(axis=1), rtol=RTOL_CLOSED)
    # d log_det / dz = -2 tanh(z) -> -2 sign(z)
    _, _, pullback = Tanh(DIM).forward_vjp(EXTREME)
    z_bar, _ = pullback(None, np.ones(3))
    assert_allclose(z_bar, -2.0 * np.sign(EXTREME), rtol=RTOL_CLOSED)


def test_sigmoid_log_det_at_extreme_inputs():
    x, log_det = Sigmoid(DIM).forward(EXTREME)
    assert np.isfinite(x).all() and np.isfinite(log_det).all()
    assert_allclose(x, expit(EXTREME), rtol=RTOL_CLOSED)
    # log sigmoid'(z) = -|z| - 2 log1p(exp(-|z|)) -> -|z|
    a = np.abs(EXTREME)
    assert_allclose(log_det, (-a - 2.0 * np.log1p(np.exp(-a))).sum(axis=1), rtol=RTOL_CLOSED)
    assert_allclose(log_det[:2], [-3e3, -3e3], rtol=RTOL_CLOSED)
    _, _, pullback = Sigmoid(DIM).forward_vjp(EXTREME)
    z_bar, _ = pullback(None, np.ones(3))
    assert_allclose(z_bar, -np.sign(EXTREME), rtol=RTOL_CLOSED)  # -tanh(z/2)


def test_softplus_log_det_at_extreme_inputs():
    x, log_det = Softplus(DIM).forward(EXTREME)
    assert np.isfinite(x).all() and np.isfinite(log_det).all()
    assert_allclose(x, np.maximum(EXTREME, 0.0) + np.where(EXTREME == 0, math.log(2.0), 0.0),
                    rtol=RTOL_CLOSED)
    # log sigmoid(z) -> z for z -> -inf and -> 0 for z -> +inf
    expected = np.where(EXTREME == 0, -math.log(2.0), np.minimum(EXTREME, 0.0)).sum(axis=1)
    assert_allclose(log_det, expected, rtol=RTOL_CLOSED)
    _, _, pullback = Softplus(DIM).forward_vjp(EXTREME)
    z_bar, _ = pullback(None, np.ones(3))
    assert_allclose(z_bar, expit(-EXTREME), rtol=RTOL_CLOSED)


def test_exp_at_large_negative_input_is_finite():
    z = np.array([[-1e3, 0.0, 700.0]])
    x, log_det = Exp(DIM).forward(z)
    assert_allclose(x, np.exp(z), rtol=RTOL_CLOSED)
    assert_allclose(log_det, [-300.0], rtol=RTOL_CLOSED)


# ---------------------------------------------------------------------- domain errors
DOMAIN_ERRORS = [
    (lambda: Logit(DIM), "forward", r"Logit\.forward", [0.0, 1.0, -0.1, 1.1, -1e3]),
    (lambda: Logit(DIM, alpha=ALPHA), "forward", r"Logit\.forward", [-0.06, 1.06, -1.0, 2.0]),
    (lambda: Exp(DIM), "inverse", r"Exp\.inverse", [0.0, -1.0, -1e-300]),
    (lambda: Softplus(DIM), "inverse", r"Softplus\.inverse", [0.0, -1.0, -1e-300]),
    (lambda: Sigmoid(DIM), "inverse", r"Sigmoid\.inverse", [0.0, 1.0, -0.5, 1.5]),
    (lambda: Tanh(DIM), "inverse", r"Tanh\.inverse", [1.0, -1.0, 1.5, -2.0]),
]


@pytest.mark.parametrize("build, direction, pattern, bad_values", DOMAIN_ERRORS)
@pytest.mark.parametrize("with_vjp", [False, True])
def test_domain_errors_name_the_bijector(build, direction, pattern, bad_values, with_vjp):
    layer = build()
    method = getattr(layer, f"{direction}_vjp" if with_vjp else direction)
    for bad in bad_values:
        v = np.full((4, DIM), 0.5)
        v[2, 1] = bad  # one bad value in an otherwise valid batch
        with pytest.raises(ValueError, match=pattern):
            method(v)
        with pytest.raises(ValueError, match=pattern):
            method(np.array([0.5, bad, 0.5]))


def test_logit_alpha_accepts_the_closed_unit_interval_and_a_margin():
    layer = Logit(DIM, alpha=ALPHA)
    z = np.array([[0.0, 1.0, 0.5], [-0.05, 1.05, 0.0]])  # y = 0.005 and 0.995 for the margins
    x, log_det = layer.forward(z)
    assert np.isfinite(x).all() and np.isfinite(log_det).all()
    assert_allclose(x, logit(ALPHA + (1 - 2 * ALPHA) * z), rtol=RTOL_CLOSED, atol=ATOL_CROSSING)
    with pytest.raises(ValueError, match=r"Logit\.forward"):
        Logit(DIM).forward(np.array([[0.0, 0.5, 0.5]]))


def test_exp_overflow_raises_instead_of_returning_inf():
    layer = Exp(DIM)
    for method in (layer.forward, layer.forward_vjp):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            with pytest.raises(ValueError, match=r"Exp\.forward"):
                method(np.array([[1000.0, 0.0, 0.0]]))
    # float32 overflows much earlier (exp(100) > 3.4e38) and must raise too
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with pytest.raises(ValueError, match=r"Exp\.forward"):
            layer.forward(np.array([[100.0, 0.0, 0.0]], dtype=np.float32))
    x, _ = layer.forward(np.array([[100.0, 0.0, 0.0]]))  # fine in float64
    assert np.isfinite(x).all()


def test_overflow_raises_a_clean_value_error():
    # no numpy RuntimeWarning escapes before the ValueError (it would replace it under -W error)
    affine = Affine(DIM)
    affine.params["log_scale"] = [800.0, 0.0, 0.0]
    calls = [
        (r"Exp\.forward", lambda: Exp(DIM).forward(np.array([[1000.0, 0.0, 0.0]]))),
        (r"Exp\.forward", lambda: Exp(DIM).forward_vjp(np.array([[1000.0, 0.0, 0.0]]))),
        (r"Exp\.forward", lambda: Exp(DIM).forward(np.array([[100.0, 0.0, 0.0]], dtype=np.float32))),
        (r"Affine\.forward", lambda: affine.forward(np.ones((2, DIM)))),
    ]
    for pattern, call in calls:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with pytest.raises(ValueError, match=pattern):
                call()


def test_affine_overflow_raises():
    layer = Affine(DIM)
    layer.params["log_scale"] = [800.0, 0.0, 0.0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with pytest.raises(ValueError, match=r"Affine\.forward"):
            layer.forward(np.ones((2, DIM)))


# ------------------------------------------------------------------ constructor checks
@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("dim", [0, -1, 2.5, 2.0, True, False, "3", None])
def test_invalid_dim_raises(cls, dim):
    error = ValueError if type(dim) is int else TypeError  # out of range / wrong type
    with pytest.raises(error, match=cls.__name__):
        cls(dim)


@pytest.mark.parametrize("cls", CLASSES)
def test_numpy_integer_dim_is_accepted(cls):
    layer = cls(np.int64(4))
    assert layer.dim == 4 and type(layer.dim) is int
    x, log_det = layer.forward(np.full((2, 4), 0.5))
    assert x.shape == (2, 4) and log_det.shape == (2,)


@pytest.mark.parametrize("alpha", [0.5, -0.1, 0.7, 1.0, np.inf, np.nan])
def test_logit_invalid_alpha_raises(alpha):
    with pytest.raises(ValueError, match="Logit"):
        Logit(DIM, alpha=alpha)


@pytest.mark.parametrize("alpha", [0.0, 0.05, 0.499])
def test_logit_valid_alpha_is_kept(alpha):
    assert Logit(DIM, alpha=alpha).alpha == alpha


@pytest.mark.parametrize("slope", [0.0, -0.1, -1.0, np.inf, -np.inf, np.nan])
def test_leaky_relu_invalid_slope_raises(slope):
    with pytest.raises(ValueError, match="LeakyReLU"):
        LeakyReLU(DIM, negative_slope=slope)


# ---------------------------------------------------------------------- dtype and shapes
@pytest.mark.parametrize("case_id", IDS)
def test_float32_in_float32_out(case_id):
    layer, z, x = _make(case_id)
    for method, v in ((layer.forward, z), (layer.inverse, x)):
        out64, ld64 = method(v)
        out32, ld32 = method(v.astype(np.float32))
        assert out32.dtype == np.float32 and ld32.dtype == np.float32
        assert out32.shape == out64.shape and ld32.shape == ld64.shape
        assert_allclose(out32, out64, rtol=RTOL_FLOAT32, atol=ATOL_FLOAT32)
        assert_allclose(ld32, ld64, rtol=RTOL_FLOAT32, atol=ATOL_FLOAT32)


@pytest.mark.parametrize("case_id", IDS)
def test_float32_pullback_dtypes(case_id):
    layer, z, _ = _make(case_id)
    z32 = z.astype(np.float32)
    _, _, pullback = layer.forward_vjp(z32)
    z_bar, grads = pullback(np.ones_like(z32), np.ones(len(z32), dtype=np.float32))
    assert z_bar.dtype == np.float32
    _, _, pullback64 = layer.forward_vjp(z)
    z_bar64, grads64 = pullback64(np.ones_like(z), np.ones(len(z)))
    assert_allclose(z_bar, z_bar64, rtol=RTOL_FLOAT32, atol=ATOL_FLOAT32)
    assert set(grads) == set(layer.params)
    for key, g in grads.items():
        assert g.dtype == np.float64 and g.shape == layer.params[key].shape
        assert_allclose(g, grads64[key], rtol=RTOL_FLOAT32, atol=ATOL_FLOAT32)


@pytest.mark.parametrize("case_id", IDS)
def test_single_point_gives_single_point(case_id):
    layer, z, x = _make(case_id)
    for method, v in ((layer.forward, z), (layer.inverse, x)):
        out_batch, ld_batch = method(v)
        out, ld = method(v[1])
        assert out.shape == (DIM,)
        assert np.ndim(ld) == 0 and np.shape(ld) == ()
        assert_array_equal(out, out_batch[1])
        assert ld == ld_batch[1]
    x1, ld1, pullback = layer.forward_vjp(z[1])
    z_bar, grads = pullback(np.ones(DIM), 1.0)
    assert x1.shape == (DIM,) and np.shape(ld1) == () and z_bar.shape == (DIM,)
    assert all(grads[k].shape == layer.params[k].shape for k in layer.params)


@pytest.mark.parametrize("case_id", IDS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_empty_batch(case_id, dtype):
    layer, _, _ = _make(case_id)
    empty = np.zeros((0, DIM), dtype=dtype)
    for method in (layer.forward, layer.inverse):
        out, log_det = method(empty)
        assert out.shape == (0, DIM) and log_det.shape == (0,)
        assert out.dtype == dtype and log_det.dtype == dtype
    _, _, pullback = layer.forward_vjp(empty)
    z_bar, grads = pullback(None, None)
    assert z_bar.shape == (0, DIM)
    for key, g in grads.items():
        assert_array_equal(g, np.zeros(layer.params[key].shape))
