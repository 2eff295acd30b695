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
