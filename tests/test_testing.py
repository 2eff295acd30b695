"""The oracle must catch planted bugs: a check that cannot fail is a defect.

Each test builds a small layer with one deliberate mistake and asserts that the matching check
in ``refflow.testing`` flags it (and that the same layer without the mistake passes).
"""

import numpy as np
import pytest

from refflow import Affine
from refflow.testing import (
    RTOL_FD, assert_bijector, assert_vjp, check_bijector, check_vjp, jacobian_fd,
)


def affine_pair(a, b, log_det_sign=1.0, inverse_offset=0.0):
    """``x = z * exp(a) + b`` as plain callables, optionally with a planted bug."""
    def forward(z):
        return z * np.exp(a) + b, np.full(len(z), log_det_sign * a.sum())

    def inverse(x):
        return (x - b) * np.exp(-a) + inverse_offset, np.full(len(x), -a.sum())
    return forward, inverse


@pytest.fixture
def points():
    return np.random.default_rng(0).normal(size=(6, 3))


A, B = np.array([0.3, -0.5, 0.4]), np.array([1.0, 0.0, -2.0])


def test_correct_pair_passes(points):
    report = assert_bijector(*affine_pair(A, B), points)
    assert report.ok and max(report.errors.values()) < 1e-9


def test_flipped_log_det_sign_is_caught(points):
    report = check_bijector(*affine_pair(A, B, log_det_sign=-1.0), points)
    assert not report.ok
    failed = {line.label for line in report.lines if not line.ok}
    assert failed == {"log_det forward vs FD", "log_det fwd + inv"}
    with pytest.raises(AssertionError, match="log_det forward vs FD"):
        assert_bijector(*affine_pair(A, B, log_det_sign=-1.0), points)


def test_inexact_inverse_is_caught(points):
    report = check_bijector(*affine_pair(A, B, inverse_offset=1e-8), points)
    failed = {line.label for line in report.lines if not line.ok}
    assert failed == {"round trip z -> x -> z", "round trip x -> z -> x"}


def test_nan_log_det_fails_instead_of_passing(points):
    forward, inverse = affine_pair(A, B)
    report = check_bijector(lambda z: (forward(z)[0], np.full(len(z), np.nan)), inverse, points)
    assert not report.ok


def test_wrong_log_det_shape_is_a_problem(points):
    forward, inverse = affine_pair(A, B)
    report = check_bijector(lambda z: (forward(z)[0], np.full((len(z), 1), A.sum())), inverse, points)
    assert not report.ok and any("log_det of shape" in p for p in report.problems)


def test_jacobian_fd_accuracy():
    rng = np.random.default_rng(1)
    w = rng.normal(size=(4, 3))
    x = rng.normal(size=(5, 3))
    f = lambda v: np.tanh(v @ w.T)
    analytic = (1 - np.tanh(x @ w.T) ** 2)[:, :, None] * w[None]
    jac = jacobian_fd(f, x)
    assert jac.shape == (5, 4, 3)
    # central differences at the cube-root step: error ~ eps^(2/3) ~ 4e-11
    np.testing.assert_allclose(jac, analytic, rtol=0, atol=1e-9)


class PlantedAffine(Affine):
    """Affine with a planted pullback bug (selected by name)."""

    def __init__(self, dim, bug):
        super().__init__(dim)
        self.bug = bug

    def _forward_pass(self, z, context, vjp):
        x, log_det, pullback = super()._forward_pass(z, context, True)
        scale = np.exp(self._p(z.dtype)["log_scale"])

        def buggy(x_bar, log_det_bar):
            z_bar, grads, _ = pullback(x_bar, log_det_bar)
            if self.bug == "missing_constraint_derivative":
                # d/da [z exp(a)] written as z, forgetting the exp(a) of the reparameterisation
                grads["log_scale"] = (x_bar * z).sum(axis=0) + log_det_bar.sum()
            elif self.bug == "missing_log_det_term":
                grads["log_scale"] = grads["log_scale"] - log_det_bar.sum()
            elif self.bug == "mutates_cotangent":
                x_bar *= 2.0
            elif self.bug == "extra_key":
                grads["scale"] = scale
            return z_bar, grads, None

        return x, log_det, buggy


@pytest.fixture
def layer_params():
    rng = np.random.default_rng(2)
    return rng.normal(size=3), rng.normal(size=3)


@pytest.mark.parametrize("bug", ["missing_constraint_derivative", "missing_log_det_term"])
def test_wrong_parameter_gradient_is_caught(points, layer_params, bug):
    layer = PlantedAffine(3, bug)
    layer.params["log_scale"], layer.params["shift"] = layer_params
    report = check_vjp(layer.forward_vjp, points, layer.params, rng=0)
    assert report.errors["log_scale"] > 1e-3
    assert report.errors["input"] < RTOL_FD and report.errors["shift"] < RTOL_FD
    with pytest.raises(AssertionError, match="log_scale"):
        assert_vjp(layer.forward_vjp, points, layer.params, rng=0)


def test_pullback_mutating_its_cotangent_is_caught(points):
    layer = PlantedAffine(3, "mutates_cotangent")
    report = check_vjp(layer.forward_vjp, points, layer.params, rng=0)
    assert not report.ok
    assert any("modified its cotangent" in p for p in report.problems)


def test_grads_with_extra_key_is_caught(points):
    layer = PlantedAffine(3, "extra_key")
    report = check_vjp(layer.forward_vjp, points, layer.params, rng=0)
    assert not report.ok and any("grads keys" in p for p in report.problems)


def linear_vjp(w, transpose_bug=False):
    """``x = z W^T`` as a plain function with a pullback (a wrapped foreign layer)."""
    def vjp(z):
        x = z @ w.T

        def pullback(x_bar):
            # correct: z_bar = x_bar W ; the planted bug uses W^T
            return x_bar @ (w.T if transpose_bug else w), {"w": x_bar.T @ z}
        return x, pullback
    return vjp


def test_transposed_jacobian_is_caught(points):
    w = np.random.default_rng(3).normal(size=(3, 3))
    params = {"w": w}
    assert assert_vjp(linear_vjp(w), points, params, rng=0).ok
    report = check_vjp(linear_vjp(w, transpose_bug=True), points, params, rng=0)
    assert report.errors["input"] > 1e-2 and report.errors["w"] < RTOL_FD


def test_check_vjp_restores_parameters_exactly(points, layer_params):
    layer = Affine(3)
    layer.params["log_scale"], layer.params["shift"] = layer_params
    before = {k: v.copy() for k, v in layer.params.items()}
    check_vjp(layer.forward_vjp, points, layer.params, rng=0)
    for key, value in before.items():
        np.testing.assert_array_equal(layer.params[key], value)


def test_non_repeatable_pullback_is_caught(points):
    calls = []

    def vjp(z):
        def pullback(x_bar):
            calls.append(1)
            return x_bar * len(calls)   # different every call
        return 2.0 * z, pullback

    report = check_vjp(vjp, points, rng=0)
    assert any("twice" in p for p in report.problems)


def test_zero_gradient_is_not_a_false_alarm(points):
    # A parameter that does not influence the output has gradient exactly 0; the FD estimate is
    # rounding noise. The oracle must pass it, and must still flag a nonzero wrong answer.
    params = {"unused": np.array([0.7])}

    def vjp(z, wrong=0.0):
        def pullback(x_bar):
            return 2.0 * x_bar, {"unused": np.array([wrong])}
        return 2.0 * z + 0.0 * params["unused"][0], pullback

    assert check_vjp(vjp, points, params, rng=0).ok
    report = check_vjp(lambda z: vjp(z, wrong=1e-3), points, params, rng=0)
    assert not report.ok


def test_several_inputs_conditional_convention():
    # y = x * exp(c) row-wise scaled by a context column; pullback returns (x_bar, grads, c_bar)
    rng = np.random.default_rng(4)
    x, c = rng.normal(size=(4, 3)), rng.normal(size=(4, 1))

    def vjp(x, c, wrong=False):
        y = x * np.exp(c)

        def pullback(y_bar):
            c_bar = (y_bar * y).sum(axis=1, keepdims=True)
            return y_bar * np.exp(c), {}, (2 * c_bar if wrong else c_bar)
        return y, pullback

    report = assert_vjp(vjp, (x, c), rng=0)
    assert set(report.errors) == {"input[0]", "input[1]"}
    bad = check_vjp(lambda x, c: vjp(x, c, wrong=True), (x, c), rng=0)
    assert bad.errors["input[1]"] > 1e-2 and bad.errors["input[0]"] < RTOL_FD


# --------------------------------------------------------------- the functional interface
def affine_fn(wrong=False, mutate=False):
    """``fn(params, z)`` for ``x = z exp(a) + b`` (functional form), optionally with a bug."""
    def fn(params, z):
        a, b = params["log_scale"], params["shift"]
        x = z * np.exp(a) + b
        log_det = np.full(len(z), a.sum())
        if mutate:
            params["shift"] += 1.0

        def pullback(x_bar, log_det_bar):
            a_bar = (x_bar * z * np.exp(a)).sum(axis=0) + log_det_bar.sum()
            if wrong:
                a_bar = a_bar - log_det_bar.sum()          # forgets the log-det term
            return x_bar * np.exp(a), {"log_scale": a_bar, "shift": x_bar.sum(axis=0)}
        return x, log_det, pullback
    return fn


def test_functional_vjp_passes_and_catches_a_wrong_term(points, layer_params):
    params = {"log_scale": layer_params[0], "shift": layer_params[1]}
    before = {k: v.copy() for k, v in params.items()}
    report = check_vjp(affine_fn(), points, params, functional=True, rng=0)
    assert report.verdict == "pass" and set(report.errors) == {"input", "log_scale", "shift"}
    bad = check_vjp(affine_fn(wrong=True), points, params, functional=True, rng=0)
    assert bad.line("log_scale").verdict == "fail" and bad.line("shift").verdict == "pass"
    for key, value in before.items():            # the caller's arrays are never touched
        np.testing.assert_array_equal(params[key], value)


def test_functional_fn_that_modifies_its_params_gets_copies(points, layer_params):
    params = {"log_scale": layer_params[0], "shift": layer_params[1]}
    before = {k: v.copy() for k, v in params.items()}
    check_vjp(affine_fn(mutate=True), points, params, functional=True, rng=0)
    for key, value in before.items():
        np.testing.assert_array_equal(params[key], value)


def test_max_elements_checks_a_seeded_sample():
    rng = np.random.default_rng(5)
    w = rng.normal(size=(6, 5))
    params = {"w": w}

    def fn(p, z):
        x = z @ p["w"].T

        def pullback(x_bar):
            return x_bar @ p["w"], {"w": x_bar.T @ z}
        return x, pullback

    z = rng.normal(size=(3, 5))
    calls = []

    def counted(p, z):
        calls.append(1)
        return fn(p, z)

    report = check_vjp(counted, z, params, functional=True, rng=1, max_elements=4)
    assert report.verdict == "pass"
    assert report.line("w").note.startswith("4 of 30 elements")
    assert report.line("input").note.startswith("4 of 15 elements")
    # the pullback's pass and the projection at the base, then 4 per checked element
    assert len(calls) == 2 + 4 * (4 + 4)
    again = check_vjp(fn, z, params, functional=True, rng=1, max_elements=4)
    assert again.line("w").row == report.line("w").row            # same seed, same sample
    with pytest.raises(ValueError, match="max_elements"):
        check_vjp(fn, z, params, functional=True, max_elements=0)


# ------------------------------------------------------------- in-place parameters, views
def test_non_contiguous_view_is_perturbed_in_place():
    # A strided view (the transpose of the array the callable reads) must be perturbed where it
    # lives: a reshaped copy would leave the FD gradient at 0 and report "error 1".
    rng = np.random.default_rng(6)
    storage = rng.normal(size=(4, 3))
    view = storage.T                          # (3, 4), not C-contiguous
    assert not view.flags.c_contiguous

    def vjp(z):
        w = storage.T                         # read at call time
        x = np.tanh(z @ w.T)

        def pullback(x_bar):
            g = x_bar * (1 - x ** 2)
            return g @ w, {"w": g.T @ z}
        return x, pullback

    report = check_vjp(vjp, rng.normal(size=(2, 4)), {"w": view}, rng=0)
    assert report.verdict == "pass" and report.errors["w"] < RTOL_FD


def test_a_copy_instead_of_a_view_fails_with_a_hint():
    rng = np.random.default_rng(7)
    w = rng.normal(size=(3, 3))

    def vjp(z):
        x = z @ w.T

        def pullback(x_bar):
            return x_bar @ w, {"w": x_bar.T @ z}
        return x, pullback

    report = check_vjp(vjp, rng.normal(size=(2, 3)), {"w": w.copy()}, rng=0)
    line = report.line("w")
    assert line.verdict == "fail" and "functional=True" in line.note


@pytest.mark.parametrize("value, message", [
    (np.ones(3, dtype=np.float32), "float64"),
    (np.ones(3)[::1].copy(), None),
    ([1.0, 2.0, 3.0], "not a NumPy array"),
])
def test_in_place_params_must_be_writeable_float64_arrays(value, message):
    def vjp(z):
        return z, lambda x_bar: (x_bar, {"p": np.zeros(3)})
    if message is None:
        readonly = np.ones(3)
        readonly.setflags(write=False)
        with pytest.raises(ValueError, match="read-only"):
            check_vjp(vjp, np.ones((2, 3)), {"p": readonly})
        return
    with pytest.raises(ValueError, match=message):
        check_vjp(vjp, np.ones((2, 3)), {"p": value})


# -------------------------------------------------- steps: small parameters, steep points
def test_small_parameter_near_a_kink_is_resolved_by_relative_steps():
    # x = z * |theta| with theta = 1e-7: an absolute step of 6e-6 crosses 0 (the FD slope
    # would be the average of the two sides, ~0); the sweep must still find the right value
    theta = np.array([1e-7, 0.8])

    def vjp(z):
        x = z * np.abs(theta)

        def pullback(x_bar):
            return x_bar * np.abs(theta), {"theta": (x_bar * z).sum(axis=0) * np.sign(theta)}
        return x, pullback

    report = check_vjp(vjp, np.random.default_rng(8).normal(size=(4, 2)), {"theta": theta}, rng=0,
                       eps=6e-6)
    assert report.line("theta").verdict == "pass"


def test_steep_point_passes_after_the_sweep_and_a_wrong_slope_fails():
    # derivative of tanh(1e4 (z - c)) changes on a scale 1e-4: the first step (6e-6) is too
    # coarse for Richardson at the inflection's shoulder; smaller steps converge
    c = 0.3

    def forward(z):
        x = z + np.tanh(1e4 * (z - c))
        return x, np.log1p(1e4 * (1 - np.tanh(1e4 * (z - c)) ** 2)).sum(axis=1)

    def bad_forward(z):
        x, ld = forward(z)
        return x, ld * 1.001

    z = np.array([[c + 1.3e-4, 0.1], [c - 2.1e-4, 0.2]])
    good = check_bijector(forward, None, z)
    assert good.line("log_det forward vs FD").verdict == "pass"
    bad = check_bijector(bad_forward, None, z)
    assert bad.line("log_det forward vs FD").verdict == "fail"


# -------------------------------------------------------------- kinks, jumps, staircases
def leaky(slope=0.2):
    def forward(z):
        x = np.where(z > 0, z, slope * z)
        return x, np.log(np.where(z > 0, 1.0, slope)).sum(axis=1)

    def inverse(x):
        z = np.where(x > 0, x, x / slope)
        return z, -np.log(np.where(x > 0, 1.0, slope)).sum(axis=1)
    return forward, inverse


def test_kink_at_a_point_is_not_converged_unless_declared_smooth():
    z = np.array([[0.0, 0.7], [0.4, -0.3]])
    report = check_bijector(*leaky(), z)
    line = report.line("log_det forward vs FD")
    assert line.verdict == "not-converged" and "kink" in line.note and report.verdict == "not-converged"
    strict = check_bijector(*leaky(), z, smooth=True)
    assert strict.line("log_det forward vs FD").verdict == "fail"
    # away from the kink there is nothing to report
    assert check_bijector(*leaky(), z + 0.05).verdict == "pass"


def test_log_det_matching_neither_side_of_a_kink_fails():
    forward, inverse = leaky()
    z = np.array([[0.0, 0.7]])
    report = check_bijector(lambda v: (forward(v)[0], forward(v)[1] + 0.5), inverse, z)
    line = report.line("log_det forward vs FD")
    assert line.verdict == "fail" and "matching neither" in line.note


def test_a_jump_is_a_failure():
    # continuous except for a 1e-5 step at z = 1 (a branch hand-over that does not meet)
    def forward(z):
        x = np.where(z > 1.0, 2 * z + 1e-5, 2 * z)
        return x, np.full(len(z), z.shape[1] * np.log(2.0))

    def inverse(x):
        z = np.where(x > 2.0, (x - 1e-5) / 2, x / 2)
        return z, np.full(len(x), -x.shape[1] * np.log(2.0))

    report = check_bijector(forward, inverse, np.array([[1.0, 0.5], [0.2, -0.4]]),
                            rtol_round_trip=1e-5)
    line = report.line("log_det forward vs FD")
    assert line.verdict == "fail" and "discontinuous" in line.note and "1e-05" in line.note


def test_numerical_inverse_is_not_converged_not_failed_and_a_wrong_gradient_still_fails():
    # z = f^-1(x; a) for f(z) = a z + z^3, by bisection to ~2e-8: the output is a staircase in
    # x and in a. Its implicit-function gradient is right; finite differences cannot reach 1e-6.
    a = np.array([1.3, 0.7])

    def solve(x, a):
        lo, hi = np.full(x.shape, -10.0), np.full(x.shape, 10.0)
        for _ in range(30):
            mid = (lo + hi) / 2
            below = a * mid + mid ** 3 < x
            lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
        return (lo + hi) / 2

    def vjp(x, factor=1.0):
        z = solve(x, a)
        slope = a + 3 * z ** 2                            # df/dz at the solution

        def pullback(z_bar):
            # implicit function: dz/dx = 1 / f'(z), dz/da = -z / f'(z)
            return z_bar / slope, {"a": factor * (-(z_bar * z / slope)).sum(axis=0)}
        return z, pullback

    x = np.random.default_rng(9).normal(size=(3, 2))
    report = check_vjp(vjp, x, {"a": a}, rng=0)
    assert report.verdict == "not-converged"
    assert all(line.verdict in ("pass", "not-converged") for line in report.lines)
    wrong = check_vjp(lambda x: vjp(x, factor=1.3), x, {"a": a}, rng=0)
    assert wrong.line("a").verdict == "fail"



# ------------------------------------------- a staircase under a smooth term (zuko's SOS)
#: Resolution of the simulated bisection below (zuko's ``eps``).
STAIR = 1e-6
#: Output units per unit of the root in the staircase of (b): its coarse finite differences are
#: then resolved to ~1e-5 of the gradient, well below the 1e-3 error planted there (with gain 1
#: they are resolved to ~1e-3 only, and (b) could not be decided by any rule).
STAIR_GAIN = 30.0


def cubic_root(x, a):
    """The root of ``a z + z^3 = x`` (``a > 0``): Cardano's formula, then two Newton steps."""
    p = a / 3.0
    s = np.sqrt((x / 2) ** 2 + p ** 3)
    z = np.cbrt(x / 2 + s) + np.cbrt(x / 2 - s)
    for _ in range(2):
        z = z - (a * z + z ** 3 - x) / (a + 3 * z ** 2)
    return z


def staircase_inverse(a, factor=1.0, gain=1.0):
    """A bisection-like inverse, shaped like zuko's ``SOSPolynomialTransform.inv``: ``z`` solves
    ``a z + z^3 = x`` and ``gain z`` is returned rounded to ``STAIR`` (a staircase in ``x`` and
    ``a``), with the log-det ``-log f'(z) = -log(a + 3 z^2)`` at the rounded root and ``a`` live
    (smooth in ``a`` between the stairs, so no step leaves the outputs unchanged). The pullback
    is the exact implicit-function gradient at the exact root, the gradient of ``a`` scaled by
    ``factor`` (a planted error unless 1):

    ``dz/dx = 1 / s``, ``dz/da = -z / s`` (``s = a + 3 z^2``); ``d(-log s)/dx = -6 z / s^2``,
    ``d(-log s)/da = -(1 + 6 z dz/da) / s``.
    """
    def vjp(x):
        z = cubic_root(x, a)
        zq = np.round(gain * z / STAIR) * STAIR
        s = a + 3 * z ** 2

        def pullback(z_bar, ld_bar):
            dz_dx, dz_da = 1 / s, -z / s
            x_bar = gain * z_bar * dz_dx - ld_bar * 6 * z * dz_dx / s
            a_bar = gain * z_bar * dz_da - ld_bar * (1 + 6 * z * dz_da) / s
            return x_bar, {"a": factor * a_bar.sum(axis=0)}
        return zq, -np.log(a + 3 * (zq / gain) ** 2), pullback
    return vjp


def staircase_case(seed):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(4, 3)), rng.uniform(0.5, 2.0, size=3)


@pytest.mark.parametrize("gain", [1.0, STAIR_GAIN])
def test_staircase_under_a_smooth_term_is_not_converged_never_failed(gain):
    # (a) the exact gradient of a staircase under a smooth term. Fine steps see the smooth
    # term alone (a precise, wrong estimate); the coarse ones carry the staircase's noise ~q/h,
    # which their neighbours' spreads can miss (zuko's SOSPolynomialTransform: FD 0.606109 at
    # h = 6e-3, spread 7e-6, against the analytic 0.606185, right to the root's 3e-7).
    for seed in range(12):
        x, a = staircase_case(seed)
        report = check_vjp(staircase_inverse(a, gain=gain), x, {"a": a}, rng=seed)
        for line in report.lines:
            assert line.verdict == "not-converged" and line.note, (seed, str(report))


def test_staircase_with_a_wrong_gradient_still_fails():
    # (b) the same staircase, the gradient of a wrong by 1e-3 relative: the coarse steps agree
    # with each other (to ~1e-5) and not with it. Wrong either way, it fails.
    for seed in range(12):
        x, a = staircase_case(seed)
        for factor in (1 + 1e-3, 1 - 1e-3):
            report = check_vjp(staircase_inverse(a, factor, STAIR_GAIN), x, {"a": a}, rng=seed)
            assert report.line("a").verdict == "fail", (seed, factor, str(report))


def smooth_map(a, factor=1.0, w=20.0):
    """``y = sin(w a x)``, with curvature (``w = 20``) enough that the coarsest finite
    differences carry truncation errors of ~1e-5, the size of the error planted in (d):
    ``dy/dx = w a cos(w a x)``, ``dy/da = w x cos(w a x)`` (the latter times ``factor``)."""
    def vjp(x):
        c = np.cos(w * a * x)

        def pullback(y_bar):
            return y_bar * c * w * a, {"a": factor * (y_bar * c * w * x).sum(axis=0)}
        return np.sin(w * a * x), pullback
    return vjp


def test_smooth_map_passes_and_a_gradient_wrong_by_1e5_fails():
    # (c) and (d): the staircase rules must not blur a smooth map's verdicts
    for seed in range(8):
        rng = np.random.default_rng(seed)
        x, a = rng.normal(size=(3, 2)) * 0.3, rng.uniform(0.5, 2.0, size=2)
        assert check_vjp(smooth_map(a), x, {"a": a}, rng=seed).verdict == "pass"
        for factor in (1 + 1e-5, 1 - 1e-5):
            report = check_vjp(smooth_map(a, factor), x, {"a": a}, rng=seed)
            assert report.line("a").verdict == "fail", (seed, factor, str(report))

# --------------------------------------------------------------- elementwise log-dets
def elementwise_pair(shape="rows"):
    def forward(z):
        x = np.sinh(z)
        ld = np.log(np.cosh(z))
        if shape == "dim":
            ld = np.log(np.cosh(np.zeros(z.shape[1]))) + 0.0     # (dim,), here 0
            x = z.copy()
        return x, ld

    def inverse(x):
        if shape == "dim":
            return x.copy(), np.zeros(x.shape[1])
        return np.arcsinh(x), -0.5 * np.log1p(x ** 2)
    return forward, inverse


def test_elementwise_log_det_is_refused_without_sum_log_det(points):
    with pytest.raises(ValueError, match="sum_log_det=True"):
        check_bijector(*elementwise_pair(), points)
    assert check_bijector(*elementwise_pair(), points, sum_log_det=True).verdict == "pass"


def test_constant_per_coordinate_and_scalar_log_dets(points):
    forward, inverse = elementwise_pair("dim")
    with pytest.raises(ValueError, match="elementwise log_det of shape \\(3,\\)"):
        check_bijector(forward, inverse, points)
    assert check_bijector(forward, inverse, points, sum_log_det=True).verdict == "pass"
    scalar = check_bijector(lambda z: (2 * z, 3 * np.log(2.0)), lambda x: (x / 2, -3 * np.log(2.0)),
                            points)
    assert scalar.verdict == "pass" and not scalar.problems


# ------------------------------------------------------------------------ forward-only
def planar_forward(u, w, b, sign=1.0):
    def forward(z):
        a = z @ w + b
        x = z + np.outer(np.tanh(a), u)
        return x, sign * np.log(np.abs(1 + (1 - np.tanh(a) ** 2) * (u @ w)))
    return forward


def test_forward_only_layer_checks_its_log_det():
    u, w, b = np.array([0.5, -0.3, 0.2]), np.array([0.4, 0.9, -0.6]), 0.1
    z = np.random.default_rng(10).normal(size=(5, 3))
    report = check_bijector(planar_forward(u, w, b), None, z)
    assert report.verdict == "pass" and report.ok
    assert [line.verdict for line in report.lines].count("skipped") == 4
    assert "no inverse" in report.line("round trip z -> x -> z").note
    bad = check_bijector(planar_forward(u, w, b, sign=-1.0), None, z)
    assert bad.line("log_det forward vs FD").verdict == "fail"


# --------------------------------------------------------------------------- float32
def affine32(a, b, bug=0.0):
    def forward(z):
        x = (z * np.exp(a) + b).astype(z.dtype)
        return x, np.full(len(z), a.sum() + bug, dtype=z.dtype)

    def inverse(x):
        z = ((x - b) * np.exp(-a)).astype(x.dtype)
        return z, np.full(len(x), -a.sum(), dtype=x.dtype)
    return forward, inverse


def test_float32_without_reference_runs_no_finite_differences(points):
    import warnings
    z32 = points.astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")            # no RuntimeWarning may leak
        report = check_bijector(*affine32(A.astype(np.float32), B.astype(np.float32)), z32)
    assert report.line("log_det forward vs FD").verdict == "skipped"
    assert "reference=" in report.line("log_det forward vs FD").note
    assert report.line("round trip z -> x -> z").verdict == "pass"
    assert report.line("round trip z -> x -> z").tolerance == pytest.approx(1e-5)


def test_float32_against_its_float64_twin(points):
    z32 = points.astype(np.float32)
    twin = affine_pair(A, B)
    good = check_bijector(*affine32(A.astype(np.float32), B.astype(np.float32)), z32, reference=twin)
    assert good.verdict == "pass"
    assert good.line("forward vs float64 twin").error < 1e-6
    assert good.line("log_det forward vs FD").note.startswith("float64 twin")
    bad = check_bijector(*affine32(A.astype(np.float32), B.astype(np.float32), bug=1e-3), z32,
                         reference=twin)
    assert bad.line("forward vs float64 twin").verdict == "fail"


def test_float32_vjp_against_its_twin(points, layer_params):
    params = {"log_scale": layer_params[0], "shift": layer_params[1]}

    def fn32(p, z, wrong=False):
        q = {k: v.astype(np.float32) for k, v in p.items()}
        x, ld, pull = affine_fn(wrong)(q, z)

        def pullback(x_bar, ld_bar):
            bar, grads = pull(x_bar, ld_bar)
            return bar, {k: g.astype(np.float64) for k, g in grads.items()}
        return x.astype(np.float32), ld.astype(np.float32), pullback

    z32 = points.astype(np.float32)
    report = check_vjp(fn32, z32, params, functional=True, reference=affine_fn(), rng=0)
    assert report.verdict == "pass"
    assert {"outputs vs float64 twin", "log_scale vs float64 twin", "input"} <= set(report.errors)
    bad = check_vjp(lambda p, z: fn32(p, z, wrong=True), z32, params, functional=True,
                    reference=affine_fn(), rng=0)
    assert bad.line("log_scale vs float64 twin").verdict == "fail"
    alone = check_vjp(fn32, z32, params, functional=True, rng=0)
    assert all(line.verdict == "skipped" for line in alone.lines)


def householder_fn(dtype, wrong=0.0):
    """``fn(params, x)`` for the reflection ``y = x - 2 (x.v) v / (v.v)`` (log-det 0) computed in
    ``dtype``, with its pullback written out: for ``a = x v``, ``b = y_bar v``, ``s = v.v`` and
    ``T = a.b``, ``x_bar = y_bar - (2 / s) b v^T`` and ``v_bar = -(2 / s) (x^T b + y_bar^T a) +
    (4 T / s^2) v``. ``wrong`` scales the last term by ``1 + wrong`` (a planted bug)."""
    def fn(params, x):
        v = np.asarray(params["v"], dtype=dtype)
        x = np.asarray(x, dtype=dtype)
        s = v @ v
        a = x @ v
        y = x - (dtype(2) / s) * a[:, None] * v[None, :]

        def pullback(y_bar, ld_bar):
            y_bar = np.asarray(y_bar, dtype=dtype)
            b = y_bar @ v
            t = a @ b
            x_bar = y_bar - (dtype(2) / s) * b[:, None] * v[None, :]
            v_bar = (-(dtype(2) / s) * (x.T @ b + y_bar.T @ a)
                     + (dtype(4) * t / (s * s)) * v * dtype(1 + wrong))
            return x_bar, {"v": v_bar.astype(np.float64)}
        return y, np.zeros(len(x), dtype=dtype), pullback
    return fn


def _near_stationary_reflection(points):
    """A reflection vector at which the gradient for check_vjp's first cotangents (rng=0) is
    ~1e-5 of its terms: near an eigenvector of the symmetric part of ``sum_r u_r x_r^T``, where
    ``sum_r u_r . H(v) x_r`` is stationary in ``v`` (a Rayleigh quotient)."""
    u = np.random.default_rng(0).standard_normal(points.shape)   # check_vjp's first draw
    m = u.T @ points
    _, vecs = np.linalg.eigh(0.5 * (m + m.T))
    return 1.3 * vecs[:, -1] + 1e-5 * np.array([0.6, -0.8, 0.3])


def test_float32_gradient_with_cancelling_terms_is_not_a_false_alarm(points):
    """A float32 Householder pullback whose true gradient is tiny next to the terms it sums:
    float32 rounds the O(1) terms, so relative to the gradient itself the float32 value is far
    off (the old comparison failed it), relative to the terms it is at float32 rounding."""
    params = {"v": _near_stationary_reflection(points)}
    z32 = points.astype(np.float32)
    fn32, fn64 = householder_fn(np.float32), householder_fn(np.float64)
    # the premise: the true gradient is far below its terms, so float32 misses it relatively
    u = np.random.default_rng(0).standard_normal(points.shape)
    g64 = fn64(params, points)[2](u, np.zeros(len(points)))[1]["v"]
    g32 = fn32(params, z32)[2](u.astype(np.float32), np.zeros(len(points), np.float32))[1]["v"]
    assert np.max(np.abs(g32 - g64)) / np.max(np.abs(g64)) > 1e-2
    report = check_vjp(fn32, z32, params, functional=True, reference=fn64, rng=0)
    line = report.line("v vs float64 twin")
    assert line.verdict == "pass" and line.error < 1e-5, report
    assert "relative to the size of its terms" in line.note
    assert report.line("input vs float64 twin").verdict == "pass"
    assert report.verdict in ("pass", "not-converged"), report


def test_wrong_float32_gradient_still_fails_against_its_terms(points):
    """The same layer with one term of the float32 pullback off by 1 %: a genuine defect, 1e4
    times float32 rounding of the terms, must fail; so must a wrong input cotangent."""
    params = {"v": _near_stationary_reflection(points)}
    z32 = points.astype(np.float32)
    report = check_vjp(householder_fn(np.float32, wrong=1e-2), z32, params, functional=True,
                       reference=householder_fn(np.float64), rng=0)
    assert report.line("v vs float64 twin").verdict == "fail", report
    assert report.line("v vs float64 twin").error > 1e-3

    def wrong_input(p, x):
        y, ld, pull = householder_fn(np.float32)(p, x)

        def pullback(y_bar, ld_bar):
            bar, grads = pull(y_bar, ld_bar)
            return bar * np.float32(1.01), grads
        return y, ld, pullback
    bad = check_vjp(wrong_input, z32, params, functional=True,
                    reference=householder_fn(np.float64), rng=0)
    assert bad.line("input vs float64 twin").verdict == "fail", bad
    assert bad.line("v vs float64 twin").verdict == "pass"


def test_lower_precision_output_for_float64_input_is_a_problem(points):
    forward, inverse = affine_pair(A, B)
    report = check_bijector(lambda z: (forward(z)[0], forward(z)[1].astype(np.float32)), inverse,
                            points)
    assert report.verdict == "fail"
    assert any("dtype float32 for float64 input" in p for p in report.problems)


def test_a_callable_that_raises_is_a_finding_not_a_crash(points):
    forward, _ = affine_pair(A, B)

    def inverse(x):
        raise RuntimeError("mat1 and mat2 must have the same dtype")

    report = check_bijector(forward, inverse, points)
    assert report.verdict == "fail"
    assert any("inverse raised RuntimeError: mat1" in p for p in report.problems)
    assert report.line("log_det forward vs FD").verdict == "pass"
    assert report.line("round trip z -> x -> z").verdict == "skipped"


# ------------------------------------------------------------- conditioning, tolerances
def test_round_trip_tolerance_follows_the_conditioning():
    # x = M z with ||M^-1|| ~ 1e8: the exact inverse (a solve) loses ~1e-9 to the conditioning,
    # more than the base 1e-10 but within 100 eps ||M^-1|| = 2e-6; an inverse off by 1e-4 is
    # still caught
    m = np.array([[1.0, 1.0], [1.0, 1.0 + 2e-8]])
    ld = np.log(abs(np.linalg.det(m)))

    def forward(z):
        return z @ m.T, np.full(len(z), ld)

    def inverse(x, offset=0.0):
        return np.linalg.solve(m, x.T).T + offset, np.full(len(x), -ld)

    z = np.random.default_rng(11).normal(size=(4, 2))
    report = check_bijector(forward, inverse, z, rtol_log_det=1e-3)
    line = report.line("round trip z -> x -> z")
    assert line.verdict == "pass" and line.cond > 1e7 and line.error > 1e-10
    assert line.tolerance == pytest.approx(100 * np.finfo(float).eps * line.cond)
    bad = check_bijector(forward, lambda x: inverse(x, 1e-4 * np.array([1.0, -1.0])), z,
                         rtol_log_det=1e-3)
    assert bad.line("round trip z -> x -> z").verdict == "fail"


def test_separate_tolerances_per_check(points):
    forward, inverse = affine_pair(A, B)
    off = lambda x: (inverse(x)[0], inverse(x)[1] + 1e-9)
    report = check_bijector(forward, off, points)
    assert report.line("log_det fwd + inv").verdict == "fail"
    assert report.line("round trip z -> x -> z").verdict == "pass"
    loose = check_bijector(forward, off, points, rtol_log_det_sum=1e-8)
    assert loose.line("log_det fwd + inv").verdict == "pass"
    assert loose.line("round trip z -> x -> z").tolerance == 1e-10


# ---------------------------------------------------------------- reports and records
def test_report_table_wraps_long_names_and_explains_minus_inf():
    flat = lambda z: (np.zeros_like(z), np.zeros(len(z)))      # log|det| = -inf really
    report = check_bijector(flat, None, np.ones((2, 2)))
    text = str(report)
    assert "FAIL" in text and "slogdet -inf" in text and "inf" in report.line(
        "log_det forward vs FD").note
    long_key = "transform.transforms.0.univariate.network.0.weight"
    params = {long_key: np.array([0.5])}

    def vjp(z):
        return z * params[long_key][0], lambda x_bar: (x_bar * params[long_key][0],
                                                       {long_key: np.array([(x_bar * z).sum()])})
    text = str(check_vjp(vjp, np.ones((2, 2)), params, rng=0))
    name_line = [t for t in text.splitlines() if long_key in t][0]
    assert name_line.strip() == long_key          # on its own line: columns stay aligned
    widths = {t.index("1e-06") for t in text.splitlines() if "1e-06" in t}
    assert len(widths) == 1


def test_records_and_json():
    import json

    from refflow.testing import check_layer, records, to_json

    forward, inverse = affine_pair(A, B, log_det_sign=-1.0)
    report = check_layer("mine", "Affine", forward, inverse, np.ones((3, 3)),
                         reproducer="tests/test_testing.py")
    recs = report.records()
    assert all(set(r) == {"library", "class", "check", "worst_error", "verdict", "reproducer"}
               for r in recs)
    assert {r["verdict"] for r in recs} <= {"pass", "fail", "not-converged", "skipped"}
    failing = {r["check"] for r in recs if r["verdict"] == "fail"}
    assert failing == {"bijector: log_det forward vs FD", "bijector: log_det fwd + inv"}
    parsed = json.loads(to_json(report))
    assert parsed == recs
    detailed = records("mine", "Affine", report.reports["bijector"], details=True)
    assert {"tolerance", "note", "where"} <= set(detailed[0])
    # non-finite errors become null, so the text is standard JSON
    flat = check_layer("mine", "Flat", lambda z: (np.zeros_like(z), np.zeros(len(z))), None,
                       np.ones((2, 2)))
    text = to_json(flat)
    assert "Infinity" not in text and "NaN" not in text
    assert json.loads(text)[2]["worst_error"] is None


def test_pullback_at_a_kink_is_not_a_false_alarm():
    # refflow's LeakyReLU at exactly 0: the map has a kink, its log-det a jump (by design);
    # the pullback's check cannot converge there, and must not call it a failure
    from refflow import LeakyReLU

    layer = LeakyReLU(2, negative_slope=0.3)
    z = np.array([[0.0, 0.8], [-0.5, 0.4]])
    report = check_vjp(layer.forward_vjp, z, layer.params, rng=0)
    line = report.line("input")
    assert line.verdict == "not-converged" and line.row == (0, 0)
    assert check_vjp(layer.forward_vjp, z, layer.params, rng=0, smooth=True).verdict == "fail"
    assert check_vjp(layer.forward_vjp, z + 0.01, layer.params, rng=0).verdict == "pass"
