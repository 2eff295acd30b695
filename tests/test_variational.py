"""Reverse KL: Flow.kl_and_grad and Flow.kl; refflow.variational (fit_reverse_kl, fit_potential)."""

import numpy as np
import pytest

from refflow import (
    ActNorm, Affine, AffineCoupling, Chain, DiagNormal, Flow, LULinear,
    MaskedAffineAutoregressive, StandardNormal,
)
from refflow.testing import RTOL_FD, assert_vjp

# A flow fitted to its own density: both sides of log q(x) - log q(x) are the same quantities
# computed by a forward and an inverse pass; they agree to the round trips' accuracy.
ATOL_SELF_KL = 1e-12
# The same gradient by two code paths (forward pass + reparameterization vs inverse pass):
# round-off through the layers, a few ulps each.
RTOL_TWO_PATHS = 1e-9
# A Monte-Carlo mean is tested against zero at this many standard errors (a false alarm has
# probability ~6e-7 per component).
N_SIGMA = 5.0


def randomize(params, rng, scale=0.3):
    for key, value in params.items():
        params[key] = rng.normal(0.0, scale, size=value.shape)


def make_flow(base_cls, rng, dim=3):
    rng = np.random.default_rng(rng)
    bijector = Chain([
        Affine(dim),
        LULinear(dim, rng=rng),
        AffineCoupling(dim, hidden=(6,), activation="tanh", rng=rng),
        MaskedAffineAutoregressive(dim, hidden=(6,), activation="tanh", rng=rng),
    ])
    flow = Flow(base_cls(dim), bijector)
    randomize(flow.params, rng)
    return flow


class StudentTarget:
    """``log p~(x) = -sum_i log1p(((x_i - m_i) / s_i)^2)`` (unnormalised product of Cauchys)."""

    def __init__(self, m, s):
        self.m, self.s = np.asarray(m, float), np.asarray(s, float)
        self.calls = []

    def log_p(self, x):
        u = (x - self.m) / self.s
        return -np.log1p(u * u).sum(axis=1)

    def grad(self, x):
        u = (x - self.m) / self.s
        return -2.0 * u / (self.s * (1.0 + u * u))

    def __call__(self, x):
        self.calls.append(x.copy())
        return self.log_p(x), self.grad(x)


def self_target(frozen):
    """The log-density of ``frozen`` (an identical copy of the flow under test) and its
    gradient, by the inverse pass."""

    def log_target(x):
        lp, pullback = frozen.log_prob_vjp(x)
        return lp, pullback(np.ones(len(x)))[0]

    return log_target


BASES = [StandardNormal, DiagNormal]


# ------------------------------------------------------------------ gradient vs FD
@pytest.mark.parametrize("base_cls", BASES, ids=lambda c: c.__name__)
def test_kl_gradient_matches_finite_differences(base_cls, rng):
    """With a fixed seed (common random numbers) the estimate is a smooth function of the
    parameters, and kl_and_grad returns its exact gradient."""
    flow = make_flow(base_cls, rng)
    target = StudentTarget([0.5, -0.3, 0.2], [1.0, 0.7, 1.5])

    def vjp(dummy):
        kl, grads = flow.kl_and_grad(target, 12, rng=7)
        return np.array([kl]), lambda c: (np.zeros(0), {k: c[0] * g for k, g in grads.items()})

    report = assert_vjp(vjp, np.zeros(0), flow.params, rng=0)
    assert [line.label for line in report.lines] == ["input"] + sorted(flow.params)
    assert max(report.errors.values()) < RTOL_FD


@pytest.mark.parametrize("base_cls", BASES, ids=lambda c: c.__name__)
def test_kl_grads_have_the_keys_shapes_and_dtype_of_params(base_cls, rng):
    flow = make_flow(base_cls, rng)
    kl, grads = flow.kl_and_grad(StudentTarget(np.zeros(3), np.ones(3)), 5, rng=1)
    assert isinstance(kl, float)
    assert set(grads) == set(flow.params)
    for key, g in grads.items():
        assert g.shape == flow.params[key].shape and g.dtype == np.float64


def test_pair_form_equals_tuple_form(rng):
    flow = make_flow(DiagNormal, rng)
    target = StudentTarget([0.1, 0.2, 0.3], [1.0, 2.0, 0.5])
    kl_a, grads_a = flow.kl_and_grad(target, 20, rng=3)
    kl_b, grads_b = flow.kl_and_grad((target.log_p, target.grad), 20, rng=3)
    assert kl_a == kl_b
    for key in grads_a:
        np.testing.assert_array_equal(grads_a[key], grads_b[key])


# ------------------------------------------------------- the flow's own density as target
@pytest.mark.parametrize("base_cls", BASES, ids=lambda c: c.__name__)
def test_kl_to_own_density_is_zero(base_cls):
    flow = make_flow(base_cls, 1)
    log_target = self_target(make_flow(base_cls, 1))
    kl, _ = flow.kl_and_grad(log_target, 200, rng=5)
    assert abs(kl) < ATOL_SELF_KL
    estimate, stderr = flow.kl(log_target, 200, rng=5)
    assert abs(estimate) < ATOL_SELF_KL and stderr < ATOL_SELF_KL


@pytest.mark.parametrize("base_cls", BASES, ids=lambda c: c.__name__)
def test_kl_gradient_at_own_density_is_the_score(base_cls):
    """At p~ = q the pathwise terms cancel (grad_x log q - grad_x log p~ = 0), so the gradient
    is the mean score d/dtheta log q_theta(x) at the fixed samples: computed here by the inverse
    pass (Flow.log_prob_vjp), a different code path."""
    flow = make_flow(base_cls, 2)
    n = 50
    _, grads = flow.kl_and_grad(self_target(make_flow(base_cls, 2)), n, rng=11)
    x = flow.sample(n, rng=11)
    _, pullback = flow.log_prob_vjp(x)
    _, score = pullback(np.full(n, 1.0 / n))
    scale = max(np.max(np.abs(g)) for g in score.values())
    for key in grads:
        np.testing.assert_allclose(grads[key], score[key], rtol=0, atol=RTOL_TWO_PATHS * scale)


def test_kl_gradient_at_own_density_vanishes_on_average():
    """The mean score is zero: over 40 independent batches the mean gradient is within
    N_SIGMA standard errors of 0 for every parameter, while a wrong target is detected."""
    flow = make_flow(DiagNormal, 3)

    def batch_gradients(log_target):
        rows = []
        for seed in range(40):
            _, grads = flow.kl_and_grad(log_target, 100, rng=seed)
            rows.append(np.concatenate([grads[k].ravel() for k in sorted(grads)]))
        rows = np.array(rows)
        return rows.mean(axis=0), rows.std(axis=0, ddof=1) / np.sqrt(len(rows))

    mean, stderr = batch_gradients(self_target(make_flow(DiagNormal, 3)))
    assert np.all(np.abs(mean) <= N_SIGMA * stderr)
    # power: the same check fails for a target shifted by 0.5 (the gradient is not zero there)
    shifted = self_target(make_flow(DiagNormal, 3))
    mean, stderr = batch_gradients(lambda x: shifted(x - 0.5))
    assert np.any(np.abs(mean) > N_SIGMA * stderr)


# ----------------------------------------------------------------------- consistency
@pytest.mark.parametrize("base_cls", BASES, ids=lambda c: c.__name__)
def test_same_samples_as_sample_and_kl(base_cls, rng):
    flow = make_flow(base_cls, rng)
    target = StudentTarget([0.0, 1.0, -1.0], [1.0, 1.0, 1.0])
    kl, _ = flow.kl_and_grad(target, 30, rng=4)
    np.testing.assert_array_equal(target.calls[-1], flow.sample(30, rng=4))
    estimate, stderr = flow.kl(target, 30, rng=4)
    np.testing.assert_array_equal(target.calls[-1], flow.sample(30, rng=4))
    assert estimate == pytest.approx(kl, rel=1e-13)
    x, lq = flow.sample_and_log_prob(30, rng=4)
    f = lq - target.log_p(x)
    assert estimate == pytest.approx(f.mean(), rel=1e-13)
    assert stderr == pytest.approx(f.std(ddof=1) / np.sqrt(30), rel=1e-12)


def test_kl_of_gaussians_matches_closed_form():
    """q = N(mu, diag(s^2)) (Affine over StandardNormal), p = N(0, I) unnormalised
    (log p~ = -|x|^2/2, log Z = log(2 pi)): E[log q - log p~] = KL - log Z, and with many
    samples the estimate is within N_SIGMA standard errors of it."""
    flow = Flow(StandardNormal(2), Affine(2))
    mu, log_s = np.array([0.7, -0.4]), np.array([0.3, -0.2])
    flow.params["bijector.shift"], flow.params["bijector.log_scale"] = mu, log_s
    s2 = np.exp(2 * log_s)
    exact_kl = 0.5 * np.sum(s2 + mu ** 2 - 1.0 - np.log(s2))
    estimate, stderr = flow.kl(lambda x: -0.5 * np.sum(x * x, axis=1), 20000, rng=0)
    assert abs(estimate - (exact_kl - np.log(2 * np.pi))) < N_SIGMA * stderr
    assert 0 < stderr < 0.02


def test_conditional_flow_passes_context_to_the_target(rng):
    layer = MaskedAffineAutoregressive(2, hidden=(6,), activation="tanh", context_dim=3, rng=rng)
    flow = Flow(StandardNormal(2), layer)
    randomize(flow.params, rng)
    seen = []

    def log_target(x, context):
        seen.append(context)
        return -0.5 * np.sum((x - context[:, :2]) ** 2, axis=1), -(x - context[:, :2])

    context = rng.normal(size=3)
    kl, grads = flow.kl_and_grad(log_target, 8, rng=0, context=context)
    assert seen[-1].shape == (8, 3) and np.all(seen[-1] == context)
    assert set(grads) == set(flow.params)
    # the gradient with a context is exact too
    def vjp(dummy):
        kl, g = flow.kl_and_grad(log_target, 8, rng=0, context=context)
        return np.array([kl]), lambda c: (np.zeros(0), {k: c[0] * v for k, v in g.items()})
    assert_vjp(vjp, np.zeros(0), flow.params, rng=0)
    with pytest.raises(ValueError, match="conditional"):
        flow.kl_and_grad(log_target, 8, rng=0)


# ------------------------------------------------------------------------ bad inputs
def returning(log_p=None, grad=None):
    def log_target(x):
        n = len(x)
        lp = -0.5 * np.sum(x * x, axis=1) if log_p is None else log_p(n)
        g = -x if grad is None else grad(n)
        return lp, g
    return log_target


def with_value(value, index=1):
    def make(n):
        lp = np.zeros(n)
        lp[index] = value
        return lp
    return make


@pytest.fixture
def fragile_flow():
    """A flow whose first forward call would initialise an ActNorm layer."""
    return Flow(DiagNormal(2), Chain([ActNorm(2), Affine(2)]))


def assert_unchanged(flow, before):
    assert not bool(flow.bijector.layers[0].buffers["initialized"])
    for key, value in flow.params.items():
        np.testing.assert_array_equal(value, before[key])


@pytest.mark.parametrize("target, message", [
    (returning(log_p=with_value(np.nan)), "1 NaN and 0 \\+inf"),
    (returning(log_p=with_value(np.inf)), "0 NaN and 1 \\+inf"),
    (returning(log_p=with_value(-np.inf)), "-inf at 1 of 6 samples.*no mass"),
    (returning(log_p=lambda n: np.zeros((n, 1))), "log_p of shape \\(6, 1\\), expected \\(6,\\)"),
    (returning(log_p=lambda n: np.zeros(n + 1)), "log_p of shape \\(7,\\)"),
    (returning(log_p=lambda n: np.zeros(n, dtype=complex)), "real numeric"),
    (returning(log_p=lambda n: np.array(["a"] * n)), "real numeric"),
    (returning(grad=lambda n: np.zeros((n, 3))), "grad of shape \\(6, 3\\), expected \\(6, 2\\)"),
    (returning(grad=lambda n: np.full((n, 2), np.nan)), "non-finite grad for 6 of 6"),
    (returning(grad=lambda n: None), "real numeric"),
    (lambda x: -0.5 * np.sum(x * x, axis=1), "must return \\(log_p, grad\\)"),
    (lambda x: (np.zeros(len(x)), -x, 0), "tuple of 3 items"),
])
def test_bad_targets_raise_and_change_nothing(fragile_flow, target, message):
    before = {k: v.copy() for k, v in fragile_flow.params.items()}
    with pytest.raises(ValueError, match=message) as info:
        fragile_flow.kl_and_grad(target, 6, rng=0)
    assert "Flow.kl_and_grad" in str(info.value)
    assert_unchanged(fragile_flow, before)


def test_kl_returns_inf_where_the_target_has_no_mass():
    flow = Flow(StandardNormal(2), Affine(2))
    assert flow.kl(returning(log_p=with_value(-np.inf)), 6, rng=0) == (np.inf, np.inf)
    # a log-density-only callable is allowed here
    estimate, stderr = flow.kl(lambda x: np.where(x[:, 0] > 0, 0.0, -np.inf), 50, rng=0)
    assert estimate == np.inf and stderr == np.inf


@pytest.mark.parametrize("target, message", [
    (returning(log_p=with_value(np.nan)), "1 NaN"),
    (returning(log_p=with_value(np.inf)), "1 \\+inf"),
    (lambda x: np.zeros(3), "log_p of shape \\(3,\\), expected \\(6,\\)"),
    (lambda x: np.zeros(len(x), dtype=complex), "real numeric"),
])
def test_kl_bad_targets_raise_and_change_nothing(fragile_flow, target, message):
    before = {k: v.copy() for k, v in fragile_flow.params.items()}
    with pytest.raises(ValueError, match="Flow.kl: .*" + message):
        fragile_flow.kl(target, 6, rng=0)
    assert_unchanged(fragile_flow, before)


def test_kl_without_gradient_accepts_density_only_and_pair(rng):
    flow = make_flow(StandardNormal, rng)
    target = StudentTarget(np.zeros(3), np.ones(3))
    a = flow.kl(target.log_p, 40, rng=2)
    b = flow.kl((target.log_p, target.grad), 40, rng=2)
    c = flow.kl(target, 40, rng=2)
    assert a == b == c


@pytest.mark.parametrize("bad, error, message", [
    ("not callable", TypeError, "callable"),
    ((lambda x: x, "grad"), TypeError, "pair of callables"),
    ((lambda x: x,), TypeError, "pair of callables"),
])
def test_log_target_of_the_wrong_type(bad, error, message):
    flow = Flow(StandardNormal(2), Affine(2))
    with pytest.raises(error, match=message):
        flow.kl_and_grad(bad, 4, rng=0)
    with pytest.raises(error, match=message):
        flow.kl(bad, 4, rng=0)


@pytest.mark.parametrize("kwargs, message", [
    ({"n": 0}, "at least 1"),
    ({"n": -3}, "non-negative int"),
    ({"n": 2.5}, "non-negative int"),
    ({"n": True}, "non-negative int"),
    ({"n": 4, "rng": "seed"}, "rng must be"),
    ({"n": 4, "rng": -1}, "non-negative"),
    ({"n": 4, "context": np.zeros(2)}, "unconditional"),
])
def test_bad_arguments(kwargs, message):
    flow = Flow(StandardNormal(2), Affine(2))
    target = returning()
    with pytest.raises(ValueError, match=message):
        flow.kl_and_grad(target, **kwargs)


def test_kl_needs_two_samples():
    flow = Flow(StandardNormal(2), Affine(2))
    with pytest.raises(ValueError, match="at least 2"):
        flow.kl(returning(), 1, rng=0)


def test_overflow_in_the_flow_raises_and_changes_nothing():
    flow = Flow(StandardNormal(1), Affine(1))
    flow.params["bijector.log_scale"] = [800.0]  # exp(800) overflows
    with pytest.raises(ValueError, match="Affine.forward: the result is not finite"):
        flow.kl_and_grad(returning(), 4, rng=0)


# =================================================================== refflow.variational
from refflow.optim import Adam  # noqa: E402
from refflow.train import TrainingDiverged  # noqa: E402
from refflow.training.variational import _build_flow, fit_potential, fit_reverse_kl  # noqa: E402


def gaussian_target(mean, log_scale):
    """Unnormalised N(mean, diag(exp(2 log_scale))): the reverse-KL optimum of the Affine family."""
    mean, inv_var = np.asarray(mean, float), np.exp(-2 * np.asarray(log_scale, float))

    def log_target(x):
        d = x - mean
        return -0.5 * np.sum(d * d * inv_var, axis=1), -d * inv_var

    return log_target


class RecordingOptimizer:
    """Takes no step; records the gradients it is given."""

    def __init__(self, params):
        self.params, self.grads = params, []

    def step(self, grads):
        self.grads.append({k: v.copy() for k, v in grads.items()})


def test_fit_reverse_kl_finds_the_gaussian_optimum():
    flow = Flow(StandardNormal(2), Affine(2))
    target = gaussian_target([1.0, -2.0], [0.5, -0.3])
    history = fit_reverse_kl(flow, target, steps=600, n_samples=128, lr=0.05,
                             lr_schedule="cosine", rng=0)
    # the optimum is exact in this family; what is left is the Monte-Carlo noise of the last
    # steps, damped by the cosine schedule (measured: 3e-4)
    np.testing.assert_allclose(flow.params["bijector.shift"], [1.0, -2.0], atol=0.01)
    np.testing.assert_allclose(flow.params["bijector.log_scale"], [0.5, -0.3], atol=0.01)
    # E_q[log q - log p~] -> -log Z = -log(2 pi exp(0.5 - 0.3))
    assert np.mean(history["kl"][-50:]) == pytest.approx(-np.log(2 * np.pi) - 0.2, abs=0.01)


def test_fit_reverse_kl_history_and_determinism():
    import json

    runs = []
    for _ in range(2):
        flow = make_flow(DiagNormal, 5)
        history = fit_reverse_kl(flow, StudentTarget(np.zeros(3), np.ones(3)), steps=7,
                                 n_samples=16, lr=0.01, anneal=4, rng=3)
        runs.append((history, {k: v.copy() for k, v in flow.params.items()}))
    (h1, p1), (h2, p2) = runs
    assert h1["kl"] == h2["kl"] and all(np.array_equal(p1[k], p2[k]) for k in p1)
    assert h1["n_steps"] == len(h1["kl"]) == len(h1["step_time"]) == 7
    assert h1["beta"] == pytest.approx([0.01, 0.26, 0.51, 0.76, 1.0, 1.0, 1.0], rel=1e-15)
    assert h1["stop_reason"] == "completed" and not h1["stopped_early"]
    assert h1["n_samples"] == 16 and h1["wall_time"] > 0
    json.dumps(h1)


def test_annealing_records_the_plain_kl_and_steps_on_the_annealed_gradient():
    """With a no-op optimizer every step sees the same parameters: step t's samples are the
    t-th draws of the generator, its recorded KL the beta = 1 estimate, and its gradient that of
    E_q[log q - beta_t log p~]."""
    flow = make_flow(DiagNormal, 6)
    target = StudentTarget([0.3, 0.0, -0.2], [1.0, 0.5, 2.0])
    optimizer = RecordingOptimizer(flow.params)
    history = fit_reverse_kl(flow, target, steps=4, n_samples=10, optimizer=optimizer,
                             anneal=3, rng=np.random.default_rng(9))
    generator = np.random.default_rng(9)
    for t in range(4):
        beta = min(1.0, 0.01 + t / 3)
        state = generator.bit_generator.state
        estimate, _ = flow.kl(target, 10, generator)
        assert history["kl"][t] == pytest.approx(estimate, rel=1e-12, abs=1e-12)
        generator.bit_generator.state = state
        _, grads = flow.kl_and_grad(lambda x: (beta * target.log_p(x), beta * target.grad(x)),
                                    10, generator)
        for key in grads:
            np.testing.assert_allclose(optimizer.grads[t][key], grads[key], rtol=1e-13,
                                       atol=1e-15)


def test_callback_stops_and_cosine_schedule_reaches_zero():
    flow = Flow(StandardNormal(2), Affine(2))
    seen = []

    def callback(step, history):
        seen.append((step, len(history["kl"])))
        return step == 3

    history = fit_reverse_kl(flow, gaussian_target([0, 0], [0, 0]), steps=10, n_samples=8,
                             rng=0, callback=callback)
    assert seen == [(0, 1), (1, 2), (2, 3), (3, 4)]
    assert history["n_steps"] == 4 and history["stopped_early"]
    assert history["stop_reason"] == "callback"
    optimizer = Adam(flow.params, lr=0.1)
    fit_reverse_kl(flow, gaussian_target([0, 0], [0, 0]), steps=5, n_samples=8,
                   optimizer=optimizer, lr_schedule="cosine", rng=0)
    assert optimizer.lr == 0.0


@pytest.mark.parametrize("fail_at", [0, 3])
def test_divergence_raises_and_restores_the_last_good_parameters(fail_at):
    flow = Flow(DiagNormal(2), Chain([Affine(2), LULinear(2, rng=0)]))
    randomize(flow.params, np.random.default_rng(0))
    initial = {k: v.copy() for k, v in flow.params.items()}
    calls = []

    def log_target(x):
        calls.append(1)
        log_p, grad = gaussian_target([0, 0], [0, 0])(x)
        if len(calls) == fail_at + 1:
            log_p[2] = -np.inf  # no mass at one sample: the KL is infinite
        return log_p, grad

    after_step = []
    with pytest.raises(TrainingDiverged, match=f"at step {fail_at} .*-inf at 1 of 8") as info:
        fit_reverse_kl(flow, log_target, steps=10, n_samples=8, lr=0.05, rng=1,
                       callback=lambda s, h: after_step.append(
                           {k: v.copy() for k, v in flow.params.items()}))
    assert isinstance(info.value, ValueError)
    assert info.value.step == fail_at and info.value.history["n_steps"] == fail_at
    assert info.value.history["stop_reason"] == "diverged"
    # the parameters whose estimate was the last finite one: before the last update
    expected = initial if fail_at <= 1 else after_step[fail_at - 2]
    for key, value in flow.params.items():
        np.testing.assert_array_equal(value, expected[key])


@pytest.mark.parametrize("kwargs, error, message", [
    ({"steps": 0}, ValueError, "steps must be a positive integer"),
    ({"steps": 2.0}, TypeError, "steps must be an integer"),
    ({"n_samples": 0}, ValueError, "n_samples must be a positive integer"),
    ({"lr": 0.0}, ValueError, "lr must be a finite positive"),
    ({"lr": np.inf}, ValueError, "lr must be a finite positive"),
    ({"anneal": 0}, ValueError, "anneal must be a positive integer"),
    ({"optimizer": object()}, TypeError, "optimizer must have 'params'"),
    ({"optimizer": Adam({"p": np.zeros(2)})}, ValueError, "the optimizer's params are not"),
    ({"lr_schedule": "linear"}, ValueError, "lr_schedule must be None, 'cosine'"),
    ({"lr_schedule": 3}, TypeError, "lr_schedule must be None, 'cosine'"),
    ({"rng": "seed"}, ValueError, "rng must be"),
    ({"callback": 3}, TypeError, "callback must be callable"),
])
def test_fit_reverse_kl_bad_arguments(kwargs, error, message):
    flow = Flow(StandardNormal(2), Affine(2))
    flow.params["bijector.shift"] = [0.5, 0.5]
    with pytest.raises(error, match="fit_reverse_kl: " + message):
        fit_reverse_kl(flow, gaussian_target([0, 0], [0, 0]), **kwargs)
    np.testing.assert_array_equal(flow.params["bijector.shift"], [0.5, 0.5])


def test_fit_reverse_kl_bad_flow_and_target():
    with pytest.raises(TypeError, match="flow must be a refflow Flow"):
        fit_reverse_kl(Affine(2), gaussian_target([0, 0], [0, 0]))
    with pytest.raises(TypeError, match="log_target must be a callable"):
        fit_reverse_kl(Flow(StandardNormal(2), Affine(2)), 3.0)
    conditional = Flow(StandardNormal(2), MaskedAffineAutoregressive(2, hidden=(4,), context_dim=1,
                                                                     rng=0))
    with pytest.raises(ValueError, match="conditional"):
        fit_reverse_kl(conditional, gaussian_target([0, 0], [0, 0]))


def test_progress_goes_to_stderr_only_when_asked(capsys):
    flow = Flow(StandardNormal(2), Affine(2))
    fit_reverse_kl(flow, gaussian_target([0, 0], [0, 0]), steps=3, n_samples=4, rng=0,
                   progress=True)
    assert "fit_reverse_kl" in capsys.readouterr().err
    fit_reverse_kl(flow, gaussian_target([0, 0], [0, 0]), steps=3, n_samples=4, rng=0,
                   progress=False)
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""


# ------------------------------------------------------------------------ fit_potential
@pytest.mark.parametrize("kind", ["planar", "sylvester"])
def test_identity_initialisation(kind):
    flow = _build_flow(kind, 4, "identity", np.random.default_rng(0))
    z = np.random.default_rng(1).normal(size=(20, 2))
    x, log_det = flow.bijector.forward(z)
    np.testing.assert_allclose(x, z, rtol=0, atol=1e-15)
    np.testing.assert_allclose(log_det, 0.0, atol=1e-15)
    # the random part of the initialisation is kept: the layers differ
    first, second = flow.bijector.layers[:2]
    assert not all(np.array_equal(first.params[k], second.params[k]) for k in first.params)


def test_fit_potential_result_and_reproducibility():
    a = fit_potential("U1", n_layers=2, steps=20, n_samples=32, n_eval=500, rng=4)
    b = fit_potential("U1", n_layers=2, steps=20, n_samples=32, n_eval=500, rng=4)
    assert sorted(a) == ["flow", "history", "kl", "kl_divergence", "kl_stderr",
                         "log_normalizer", "plot"]
    assert a["kl"] == b["kl"] and a["history"]["kl"] == b["history"]["kl"]
    assert a["kl_divergence"] == a["kl"] + a["log_normalizer"]
    assert a["plot"] is None and a["history"]["n_steps"] == 20
    assert len(a["flow"].bijector) == 2
    # "auto" annealing: beta reaches 1 after a quarter of the steps
    assert a["history"]["beta"][:6] == pytest.approx([0.01, 0.21, 0.41, 0.61, 0.81, 1.0],
                                                     rel=1e-15)


def test_fit_potential_fits_u2():
    """A short fit (400 steps, ~3 s) already gets within 0.1 nat of U2 (measured: 0.03); the
    KL estimate is non-negative within its standard error, which checks log Z too."""
    result = fit_potential("U2", steps=400, n_samples=256, n_eval=20000, rng=0)
    assert -4 * result["kl_stderr"] < result["kl_divergence"] < 0.1


def test_fit_potential_sylvester_and_plot(tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "u3.png"
    result = fit_potential("U3", flow="sylvester", n_layers=2, steps=10, n_samples=16,
                           n_eval=200, plot=path)
    assert result["plot"] == str(path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("kwargs, error, message", [
    ({"name": "U9"}, ValueError, "unknown potential 'U9'"),
    ({"flow": "radial"}, ValueError, "flow must be 'planar' or 'sylvester'"),
    ({"init": "zeros"}, ValueError, "init must be 'identity' or 'random'"),
    ({"anneal": "paper"}, ValueError, "anneal must be 'auto', an int or None"),
    ({"n_layers": 0}, ValueError, "n_layers must be a positive integer"),
    ({"n_eval": 1}, ValueError, "n_eval must be an integer >= 2"),
    ({"lr": -1.0}, ValueError, "lr must be a finite positive"),
    ({"plot": 3}, TypeError, "plot must be a path"),
])
def test_fit_potential_bad_arguments(kwargs, error, message):
    kwargs = {"name": "U1", **kwargs}
    with pytest.raises(error, match="fit_potential: " + message):
        fit_potential(kwargs.pop("name"), **kwargs)
