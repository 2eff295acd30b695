"""refflow.optim: Adam (AdamW), SGD, clip_grad_norm, CosineAnnealing.

Closed forms worked out by hand, and torch (when installed) as the reference implementation of
the same update rules. Adam's basic behaviour (first step, convergence, bad settings) is also
covered in tests/test_flow.py.
"""

import math

import numpy as np
import pytest

from refflow.optim import SGD, Adam, CosineAnnealing, clip_grad_norm

try:
    import torch
except ImportError:  # pragma: no cover - torch is optional
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="torch is not installed")

#: Parameters after 20 steps, refflow vs torch in float64: the same formulas evaluated in the
#: same order, apart from torch's lerp / fused multiply-adds: a few ulps per step.
RTOL_TORCH = 1e-13

SHAPES = {"a": (3,), "b": (2, 4), "c": ()}


def _init(seed=0):
    r = np.random.default_rng(seed)
    return {k: r.normal(size=s) for k, s in SHAPES.items()}


def _grad_sequence(n, seed=1):
    r = np.random.default_rng(seed)
    # magnitudes over six decades so that eps and the bias corrections matter
    return [{k: r.normal(size=s) * 10.0 ** r.uniform(-3, 3) for k, s in SHAPES.items()}
            for _ in range(n)]


def _rel(a, b):
    return float(np.max(np.abs(a - b) / np.maximum(1.0, np.abs(b))))


def _run_torch(make_optimizer, init, grads):
    tensors = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in init.items()}
    opt = make_optimizer(list(tensors.values()))
    for g in grads:
        for k, t in tensors.items():
            t.grad = torch.tensor(g[k], dtype=torch.float64)
        opt.step()
    return {k: t.detach().numpy() for k, t in tensors.items()}


def _snapshot(opt):
    return {k: v.copy() for k, v in opt.params.items()}, opt.state_dict()


def _assert_unchanged(opt, snapshot):
    params, state = snapshot
    for k in params:
        np.testing.assert_array_equal(opt.params[k], params[k])
    after = opt.state_dict()
    assert set(after) == set(state)
    for k in state:
        np.testing.assert_array_equal(after[k], state[k])


# ------------------------------------------------------------------------------------ Adam
@needs_torch
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_adam_matches_torch_adamw(weight_decay):
    init, grads = _init(), _grad_sequence(20)
    params = {k: v.copy() for k, v in init.items()}
    opt = Adam(params, lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=weight_decay)
    for g in grads:
        opt.step(g)
    ref = _run_torch(lambda ps: torch.optim.AdamW(ps, lr=0.01, betas=(0.8, 0.99), eps=1e-6,
                                                  weight_decay=weight_decay, foreach=False),
                     init, grads)
    for k in SHAPES:
        assert _rel(params[k], ref[k]) < RTOL_TORCH, k
    # and the runs moved the parameters by much more than the tolerance
    assert max(_rel(params[k], init[k]) for k in SHAPES) > 0.05


def test_adam_first_step_closed_form():
    # bias-corrected m / sqrt(v) is g / |g| at step 1:  p1 = p0 (1 - lr wd) - lr g / (|g| + eps)
    p0 = np.array([1.5, -2.0, 0.25])
    g = np.array([0.3, -4.0, 1e-9])
    params = {"p": p0.copy()}
    Adam(params, lr=0.05, eps=1e-8, weight_decay=0.2).step({"p": g})
    expected = p0 * (1 - 0.05 * 0.2) - 0.05 * g / (np.abs(g) + 1e-8)
    np.testing.assert_allclose(params["p"], expected, rtol=1e-15, atol=0)


def test_adam_weight_decay_is_decoupled():
    # with zero gradients the moments stay zero and the decay alone shrinks by (1 - lr wd)^t
    params = {"w": np.array([2.0, -3.0])}
    opt = Adam(params, lr=0.1, weight_decay=0.5)
    for _ in range(5):
        opt.step({"w": np.zeros(2)})
    np.testing.assert_allclose(params["w"], np.array([2.0, -3.0]) * 0.95 ** 5, rtol=1e-15)
    # coupled L2 (grad + wd * p, torch.optim.Adam's weight_decay) would have gone through the
    # moments: steps of ~lr each, and nonzero moments
    assert not opt.m["w"].any() and not opt.v["w"].any()


def test_adam_lr_zero_from_a_schedule_leaves_parameters():
    params = {"w": np.array([1.0, 2.0])}
    opt = Adam(params, lr=0.1, weight_decay=0.3)
    opt.lr = 0.0
    opt.step({"w": np.array([5.0, -1.0])})
    np.testing.assert_array_equal(params["w"], [1.0, 2.0])
    assert opt.t == 1 and opt.m["w"].any()          # the moments still advance
    for bad, error in [(-1e-3, ValueError), (float("nan"), ValueError),
                       (float("inf"), ValueError), ("0.1", TypeError), (True, TypeError)]:
        with pytest.raises(error, match="Adam: lr"):
            opt.lr = bad
    assert opt.lr == 0.0


@pytest.mark.parametrize("kwargs, error", [
    ({"weight_decay": -0.1}, ValueError), ({"weight_decay": float("inf")}, ValueError),
    ({"weight_decay": "0.1"}, TypeError), ({"eps": -1.0}, ValueError),
    ({"betas": (0.9, -0.1)}, ValueError), ({"betas": (0.9, 0.99, 0.9)}, ValueError)])
def test_adam_rejects_more_bad_settings(kwargs, error):
    with pytest.raises(error, match="Adam"):
        Adam({"p": np.zeros(1)}, **kwargs)


@pytest.mark.parametrize("cls, kwargs", [(Adam, {}), (SGD, {"lr": 0.1})])
def test_optimizers_check_params(cls, kwargs):
    with pytest.raises(TypeError, match=f"{cls.__name__}: params must be a mapping"):
        cls([np.zeros(2)], **kwargs)
    with pytest.raises(TypeError, match="must be a float64 ndarray"):
        cls({"p": [0.0, 1.0]}, **kwargs)
    with pytest.raises(TypeError, match="float64 ndarray.*float32"):
        cls({"p": np.zeros(2, dtype=np.float32)}, **kwargs)
    frozen = np.zeros(2)
    frozen.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        cls({"p": frozen}, **kwargs)


def _adam_with_state():
    params = {"a": np.array([1.0, -1.0]), "b": np.array([[0.5]])}
    opt = Adam(params, lr=0.1)
    opt.step({"a": np.array([1.0, 2.0]), "b": np.array([[3.0]])})
    return opt


def _sgd_with_state():
    params = {"a": np.array([1.0, -1.0]), "b": np.array([[0.5]])}
    opt = SGD(params, lr=0.1, momentum=0.9, weight_decay=0.01)
    opt.step({"a": np.array([1.0, 2.0]), "b": np.array([[3.0]])})
    return opt


@pytest.mark.parametrize("make", [_adam_with_state, _sgd_with_state])
def test_bad_gradients_change_nothing(make):
    opt = make()
    name = type(opt).__name__
    before = _snapshot(opt)
    bad = [
        {"a": np.ones(2)},                                                   # missing key
        {"a": np.ones(2), "b": np.ones((1, 1)), "c": np.ones(1)},            # extra key
        {"a": np.ones(3), "b": np.ones((1, 1))},                             # wrong shape
        {"a": np.ones(2), "b": np.ones(1)},                                  # wrong shape
        {"a": np.ones(2), "b": np.array([[np.inf]])},                        # inf after a good one
        {"a": np.array([np.nan, 1.0]), "b": np.ones((1, 1))},                # NaN
        {"a": np.array(["1", "2"]), "b": np.ones((1, 1))},                   # not numeric
    ]
    for grads in bad:
        with pytest.raises(ValueError, match=f"{name}.step"):
            opt.step(grads)
        _assert_unchanged(opt, before)
    with pytest.raises(TypeError, match=f"{name}.step: grads must be a mapping"):
        opt.step([np.ones(2), np.ones((1, 1))])
    _assert_unchanged(opt, before)


def test_adam_overflowing_update_changes_nothing():
    opt = _adam_with_state()
    before = _snapshot(opt)
    # g^2 overflows the second moment of "b" (after "a" was computed fine)
    with pytest.raises(ValueError, match="Adam.step: the update of 'b' overflows"):
        opt.step({"a": np.ones(2), "b": np.array([[1e200]])})
    _assert_unchanged(opt, before)


def test_sgd_overflowing_update_changes_nothing():
    opt = _sgd_with_state()
    opt.lr = 1e300
    before = _snapshot(opt)
    with pytest.raises(ValueError, match="SGD.step: the update of 'a' overflows"):
        opt.step({"a": np.array([1e10, 0.0]), "b": np.ones((1, 1))})
    _assert_unchanged(opt, before)


@pytest.mark.parametrize("make", [_adam_with_state, _sgd_with_state])
def test_state_dict_round_trip_continues_identically(make):
    a = make()
    state = a.state_dict()
    assert all(isinstance(v, np.ndarray) for v in state.values())
    b = make()
    b.lr = 0.5
    b.step({"a": np.array([-7.0, 0.1]), "b": np.array([[2.0]])})    # different state
    for k in b.params:
        b.params[k][...] = a.params[k]
    b.load_state_dict(state)
    state["t"][...] = 99                                  # the dict holds copies
    assert a.t == b.t == 1 and b.lr == a.lr
    grads = _grad_sequence(3)
    for g in grads:
        g = {"a": g["a"][:2], "b": g["b"][:1, :1]}
        a.step(g)
        b.step(g)
    for k in a.params:
        np.testing.assert_array_equal(a.params[k], b.params[k])


@pytest.mark.parametrize("make", [_adam_with_state, _sgd_with_state])
def test_load_state_dict_refuses_bad_states(make):
    opt = make()
    before = _snapshot(opt)
    good = opt.state_dict()
    state_key = [k for k in good if "." in k][0]
    bad_states = [
        {k: v for k, v in good.items() if k != "t"},                       # missing key
        {**good, "extra": np.zeros(1)},                                    # extra key
        {**good, state_key: np.zeros(5)},                                  # wrong shape
        {**good, state_key: np.full_like(good[state_key], np.nan)},        # NaN
        {**good, "t": np.array(1.5)},                                      # not an integer
        {**good, "t": np.array(-1)},
        {**good, "lr": np.array(-0.1)},
    ]
    if isinstance(opt, Adam):
        bad_states.append({**good, "v.a": -np.ones(2)})                    # negative v
    for state in bad_states:
        with pytest.raises(ValueError, match="load_state_dict"):
            opt.load_state_dict(state)
        _assert_unchanged(opt, before)


# ------------------------------------------------------------------------------------- SGD
@needs_torch
@pytest.mark.parametrize("momentum, nesterov, weight_decay",
                         [(0.0, False, 0.0), (0.0, False, 0.05), (0.9, False, 0.01),
                          (0.9, True, 0.01), (0.5, True, 0.0)])
def test_sgd_matches_torch(momentum, nesterov, weight_decay):
    init, grads = _init(2), _grad_sequence(20, seed=3)
    params = {k: v.copy() for k, v in init.items()}
    opt = SGD(params, lr=0.01, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)
    for g in grads:
        opt.step(g)
    ref = _run_torch(lambda ps: torch.optim.SGD(ps, lr=0.01, momentum=momentum, nesterov=nesterov,
                                                weight_decay=weight_decay, foreach=False),
                     init, grads)
    for k in SHAPES:
        assert _rel(params[k], ref[k]) < RTOL_TORCH, k
    assert max(_rel(params[k], init[k]) for k in SHAPES) > 0.05


def test_sgd_closed_forms():
    g1, g2 = np.array([1.0, -2.0]), np.array([0.5, 4.0])
    p0 = np.array([0.25, 1.0])
    lr, mu, wd = 0.1, 0.5, 0.2

    plain = {"p": p0.copy()}
    SGD(plain, lr=lr).step({"p": g1})
    np.testing.assert_allclose(plain["p"], p0 - lr * g1, rtol=1e-15)

    # heavy ball with L2 decay: d = g + wd p, b1 = d1, b2 = mu b1 + d2, p -= lr b
    hb = {"p": p0.copy()}
    opt = SGD(hb, lr=lr, momentum=mu, weight_decay=wd)
    opt.step({"p": g1})
    opt.step({"p": g2})
    d1 = g1 + wd * p0
    p1 = p0 - lr * d1
    b2 = mu * d1 + (g2 + wd * p1)
    np.testing.assert_allclose(hb["p"], p1 - lr * b2, rtol=1e-14)
    np.testing.assert_allclose(opt.momentum_buffer["p"], b2, rtol=1e-14)

    # Nesterov: p -= lr (d + mu b)
    nv = {"p": p0.copy()}
    opt = SGD(nv, lr=lr, momentum=mu, nesterov=True)
    opt.step({"p": g1})
    opt.step({"p": g2})
    p1 = p0 - lr * (g1 + mu * g1)
    b2 = mu * g1 + g2
    np.testing.assert_allclose(nv["p"], p1 - lr * (g2 + mu * b2), rtol=1e-14)


@pytest.mark.parametrize("kwargs, error", [
    ({"lr": 0.0}, ValueError), ({"lr": -0.1}, ValueError), ({"lr": float("nan")}, ValueError),
    ({"lr": 0.1, "momentum": -0.1}, ValueError), ({"lr": 0.1, "momentum": 1.0}, ValueError),
    ({"lr": 0.1, "nesterov": True}, ValueError),
    ({"lr": 0.1, "momentum": 0.9, "nesterov": "yes"}, TypeError),
    ({"lr": 0.1, "weight_decay": -1.0}, ValueError)])
def test_sgd_rejects_bad_settings(kwargs, error):
    with pytest.raises(error, match="SGD"):
        SGD({"p": np.zeros(1)}, **kwargs)


# -------------------------------------------------------------------------------- clipping
def test_clip_grad_norm_global_norm_and_scaling():
    r = np.random.default_rng(5)
    grads = {"a": r.normal(size=(3, 4)), "b": r.normal(size=5), "c": np.array(2.5)}
    originals = {k: v.copy() for k, v in grads.items()}
    flat = np.concatenate([np.ravel(v) for v in grads.values()])
    expected_norm = math.sqrt(math.fsum(flat ** 2))

    clipped, norm = clip_grad_norm(grads, 1.0)
    assert math.isclose(norm, expected_norm, rel_tol=1e-15)
    assert norm > 1.0
    factor = 1.0 / expected_norm
    for k in grads:
        np.testing.assert_allclose(clipped[k], originals[k] * factor, rtol=1e-15)
        np.testing.assert_array_equal(grads[k], originals[k])            # input untouched
    clipped_flat = np.concatenate([np.ravel(v) for v in clipped.values()])
    assert math.isclose(math.sqrt(math.fsum(clipped_flat ** 2)), 1.0, rel_tol=1e-14)

    same, norm2 = clip_grad_norm(grads, 2 * expected_norm)
    assert norm2 == norm
    for k in grads:
        np.testing.assert_array_equal(same[k], grads[k])
        assert not np.shares_memory(same[k], grads[k])                      # new arrays


def test_clip_grad_norm_extreme_magnitudes_and_edges():
    big, norm = clip_grad_norm({"a": np.full(4, 1e200), "b": np.array([1e200])}, 1.0)
    assert math.isclose(norm, 1e200 * math.sqrt(5), rel_tol=1e-15)        # no overflow
    np.testing.assert_allclose(big["a"], 1 / math.sqrt(5), rtol=1e-15)
    _, norm = clip_grad_norm({"a": np.array([3e-200, 4e-200])}, 1.0)
    assert math.isclose(norm, 5e-200, rel_tol=1e-15)                        # no underflow
    zeros, norm = clip_grad_norm({"a": np.zeros(3), "e": np.zeros(0)}, 1.0)
    assert norm == 0.0 and not zeros["a"].any() and zeros["e"].shape == (0,)
    assert clip_grad_norm({}, 1.0) == ({}, 0.0)
    out, _ = clip_grad_norm({"i": [1, 2]}, 10.0)
    assert out["i"].dtype == np.float64


def test_clip_grad_norm_rejects_bad_input():
    for bad in (0.0, -1.0, float("nan"), float("inf"), True, "1"):
        error = TypeError if isinstance(bad, (bool, str)) else ValueError
        with pytest.raises(error, match="clip_grad_norm: max_norm"):
            clip_grad_norm({"a": np.ones(2)}, bad)
    with pytest.raises(ValueError, match="clip_grad_norm: gradient 'b' is not finite"):
        clip_grad_norm({"a": np.ones(2), "b": np.array([np.nan])}, 1.0)
    with pytest.raises(TypeError, match="clip_grad_norm: grads must be a mapping"):
        clip_grad_norm([np.ones(2)], 1.0)


@needs_torch
def test_clip_grad_norm_against_torch():
    r = np.random.default_rng(6)
    grads = {"a": r.normal(size=(3, 4)) * 10, "b": r.normal(size=5)}
    tensors = []
    for g in grads.values():
        t = torch.zeros(g.shape, dtype=torch.float64, requires_grad=True)
        t.grad = torch.tensor(g)
        tensors.append(t)
    torch_norm = float(torch.nn.utils.clip_grad_norm_(tensors, 2.0))
    clipped, norm = clip_grad_norm(grads, 2.0)
    assert math.isclose(norm, torch_norm, rel_tol=1e-14)
    # torch scales by max_norm / (norm + 1e-6); refflow by max_norm / norm (documented)
    for (k, c), t in zip(clipped.items(), tensors):
        np.testing.assert_allclose(c * norm / (norm + 1e-6), t.grad.numpy(), rtol=1e-14)


# -------------------------------------------------------------------------------- schedule
def test_cosine_annealing_closed_form_and_clamp():
    opt = SGD({"p": np.zeros(1)}, lr=0.3)
    schedule = CosineAnnealing(opt, t_max=8, eta_min=0.01)
    assert schedule.lr_at(0) == 0.3 and opt.lr == 0.3
    lrs = [schedule.step() for _ in range(11)]
    expected = [0.01 + 0.29 * (1 + math.cos(math.pi * t / 8)) / 2 for t in range(1, 9)]
    np.testing.assert_allclose(lrs[:8], expected, rtol=1e-15)
    assert lrs[3] == pytest.approx(0.01 + 0.29 / 2, rel=1e-15)              # half-way: the mean
    assert lrs[7:] == [0.01] * 4 and schedule.t == 8                          # clamped at t_max
    assert opt.lr == 0.01


@needs_torch
def test_cosine_annealing_matches_torch():
    opt = Adam({"p": np.zeros(1)}, lr=0.3)
    schedule = CosineAnnealing(opt, t_max=7, eta_min=0.01)
    t = torch.zeros(1, requires_grad=True)
    t_opt = torch.optim.SGD([t], lr=0.3)
    t_schedule = torch.optim.lr_scheduler.CosineAnnealingLR(t_opt, T_max=7, eta_min=0.01)
    for _ in range(7):
        t_opt.step()
        t_schedule.step()
        schedule.step()
        assert math.isclose(opt.lr, t_opt.param_groups[0]["lr"], rel_tol=1e-14)


def test_cosine_annealing_state_and_bad_arguments():
    opt = Adam({"p": np.zeros(1)}, lr=1.0)
    schedule = CosineAnnealing(opt, t_max=4)
    schedule.step()
    state = schedule.state_dict()
    schedule.step()
    schedule.load_state_dict(state)
    assert schedule.t == 1 and opt.lr == schedule.lr_at(1)
    for bad in ({"t": np.array(5)}, {"t": np.array(1.5)}, {"t": np.array(-1)}, {"x": 1}):
        with pytest.raises(ValueError, match="CosineAnnealing.load_state_dict"):
            schedule.load_state_dict(bad)
    assert schedule.t == 1
    for t_max in (0, -3, 2.5, True, "4"):
        error = ValueError if type(t_max) is int else TypeError
        with pytest.raises(error, match="CosineAnnealing: t_max"):
            CosineAnnealing(opt, t_max=t_max)
    for eta_min in (-0.1, float("nan"), None):
        error = TypeError if eta_min is None else ValueError
        with pytest.raises(error, match="CosineAnnealing: eta_min"):
            CosineAnnealing(opt, t_max=3, eta_min=eta_min)
    with pytest.raises(TypeError, match="CosineAnnealing: the optimizer has no 'lr'"):
        CosineAnnealing(object(), t_max=3)
    opt.lr = 0.0
    with pytest.raises(ValueError, match="CosineAnnealing: the optimizer's lr"):
        CosineAnnealing(opt, t_max=3)
