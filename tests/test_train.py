"""refflow.train.fit: batching, validation, early stopping, divergence, progress, bad input.

Tiny flows (an Affine layer, a small MAF) and few epochs keep the file fast. Where a test needs
the parameters of a given epoch or step it records them itself (a callback, or an optimizer
subclass that copies the parameters after each step), independently of fit's own snapshots.
"""

import io
import json
import math
import sys

import numpy as np
import pytest

from refflow import (ActNorm, Affine, BatchNorm, Chain, Flow, MaskedAffineAutoregressive,
                     StandardNormal)
from refflow.optim import SGD, Adam, CosineAnnealing
from refflow.params import copy_params
from refflow.train import History, TrainingDiverged, fit

#: fit's NLL against the closed-form Gaussian MLE: converged to round-off of the loss (~1e-15)
#: plus the optimizer's final distance from the optimum, which the cosine schedule drives to 0.
TOL_MLE = 1e-6


def _gauss(n=60, seed=0, loc=(1.0, -2.0), scale=(0.5, 2.0)):
    return np.random.default_rng(seed).normal(loc, scale, size=(n, len(loc)))


def _affine_flow(dim=2):
    return Flow(StandardNormal(dim), Affine(dim))


def _quiet(**kwargs):
    return dict({"progress": False}, **kwargs)


def _params_equal(a, b):
    return set(a) == set(b) and all(np.array_equal(a[k], b[k]) for k in a)


class RecordingAdam(Adam):
    """Adam that keeps a copy of the parameters after every successful step and the lr used."""

    def __init__(self, params, **kwargs):
        super().__init__(params, **kwargs)
        self.after_step, self.lrs, self.grads = [], [], []

    def step(self, grads):
        lr = self.lr
        super().step(grads)
        self.after_step.append(copy_params(self.params))
        self.lrs.append(lr)
        self.grads.append({k: np.array(v) for k, v in grads.items()})


class RecordingSGD(SGD):
    def __init__(self, params, **kwargs):
        super().__init__(params, **kwargs)
        self.grads = []

    def step(self, grads):
        super().step(grads)
        self.grads.append({k: np.array(v) for k, v in grads.items()})


def _epoch_recorder():
    snapshots = []

    def callback(epoch, history):
        assert len(history.train_nll) == epoch + 1 == len(snapshots) + 1
        snapshots.append(copy_params(flow_ref[0].params))

    flow_ref = [None]
    return snapshots, callback, flow_ref


# ------------------------------------------------------------------------------- results
def test_affine_flow_reaches_closed_form_mle():
    x = _gauss(400, seed=1)
    sigma = x.std(axis=0)                           # the MLE of a Gaussian: biased std
    best = float(np.sum(0.5 * np.log(2 * np.pi * sigma ** 2) + 0.5))
    flow = _affine_flow()
    history = fit(flow, x, validation_fraction=0, epochs=300, batch_size=400, lr=0.1,
                  lr_schedule="cosine", rng=0, **_quiet())
    nll = -float(np.mean(flow.log_prob(x)))
    assert best - 1e-12 <= nll < best + TOL_MLE
    np.testing.assert_allclose(flow.params["bijector.shift"], x.mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(np.exp(flow.params["bijector.log_scale"]), sigma, rtol=1e-5)
    assert history.train_nll[0] > best + 1.0 and history.train_nll[-1] < best + TOL_MLE
    assert history.val_nll == [] and history.n_steps == 300 and history.stop_reason == "completed"
    assert not history.stopped_early


def test_sgd_optimizer_reaches_closed_form_mle():
    x = _gauss(200, seed=2)
    best = float(np.sum(0.5 * np.log(2 * np.pi * x.var(axis=0)) + 0.5))
    flow = _affine_flow()
    fit(flow, x, validation_fraction=0, epochs=200, batch_size=200,
        optimizer=SGD(flow.params, lr=0.1, momentum=0.5), rng=0, **_quiet())
    assert -float(np.mean(flow.log_prob(x))) < best + TOL_MLE


def test_batches_split_and_weighting_follow_the_documented_protocol():
    # Replays fit by hand: split with perm = gen.permutation(n), one permutation per epoch,
    # batches order[i:i + batch_size] including the last partial one, Adam on each.
    x = _gauss(31, seed=3)
    flow = _affine_flow()
    history = fit(flow, x, validation_fraction=0.2, epochs=3, batch_size=7, lr=0.05, rng=11,
                  restore_best=False, **_quiet())

    ref = _affine_flow()
    opt = Adam(ref.params, lr=0.05)
    gen = np.random.default_rng(11)
    perm = gen.permutation(31)
    n_val = math.ceil(0.2 * 31)
    x_val, x_train = x[perm[:n_val]], x[perm[n_val:]]
    train_nll, val_nll, steps = [], [], 0
    for _ in range(3):
        order = gen.permutation(len(x_train))
        total = 0.0
        for i in range(0, len(order), 7):
            batch = x_train[order[i:i + 7]]
            nll, grads = ref.nll_and_grad(batch)
            opt.step(grads)
            total += nll * len(batch)
            steps += 1
        train_nll.append(total / len(x_train))
        val_nll.append(-float(np.sum(ref.log_prob(x_val))) / n_val)
    assert n_val == 7 and steps == 3 * 4                       # 24 rows: 7 + 7 + 7 + 3
    assert _params_equal(flow.params, ref.params)
    assert history.train_nll == train_nll and history.val_nll == val_nll
    assert history.n_steps == steps


def test_validation_data_is_used_as_given_and_rng_only_orders_batches():
    x, x_val = _gauss(20, seed=4), _gauss(9, seed=5)
    flow = _affine_flow()
    history = fit(flow, x, validation_data=x_val, epochs=2, batch_size=8, lr=0.05, rng=3,
                  restore_best=False, **_quiet())
    ref = _affine_flow()
    opt = Adam(ref.params, lr=0.05)
    gen = np.random.default_rng(3)
    for _ in range(2):
        order = gen.permutation(20)                            # no split: all rows train
        for i in range(0, 20, 8):
            opt.step(ref.nll_and_grad(x[order[i:i + 8]])[1])
    assert _params_equal(flow.params, ref.params) and history.n_steps == 6
    assert history.val_nll[-1] == -float(np.sum(ref.log_prob(x_val))) / 9
    # the pair form (x_val, None) is accepted for an unconditional flow
    again = _affine_flow()
    fit(again, x, validation_data=(x_val, None), epochs=2, batch_size=8, lr=0.05, rng=3,
        restore_best=False, **_quiet())
    assert _params_equal(again.params, flow.params)


def test_same_seed_gives_identical_runs_and_another_seed_does_not():
    x = _gauss(50, seed=6)

    def run(seed):
        flow = Flow(StandardNormal(2), Chain([Affine(2), MaskedAffineAutoregressive(
            2, hidden=(4,), activation="tanh", rng=0)]))
        history = fit(flow, x, epochs=3, batch_size=16, lr=0.01, rng=seed, **_quiet())
        d = history.as_dict()
        d.pop("epoch_time"), d.pop("wall_time")
        return copy_params(flow.params), d

    (p1, h1), (p2, h2), (p3, h3) = run(5), run(5), run(6)
    assert _params_equal(p1, p2) and h1 == h2
    assert not _params_equal(p1, p3) and h1["train_nll"] != h3["train_nll"]
    # a Generator is consumed like the seed it came from
    flow = Flow(StandardNormal(2), Chain([Affine(2), MaskedAffineAutoregressive(
        2, hidden=(4,), activation="tanh", rng=0)]))
    fit(flow, x, epochs=3, batch_size=16, lr=0.01, rng=np.random.default_rng(5), **_quiet())
    assert _params_equal(copy_params(flow.params), p1)


def test_default_optimizer_gets_lr_and_decoupled_weight_decay():
    x = _gauss(30, seed=7)
    a, b, c = _affine_flow(), _affine_flow(), _affine_flow()
    fit(a, x, epochs=3, batch_size=10, lr=0.03, weight_decay=0.5, rng=1, **_quiet())
    fit(b, x, epochs=3, batch_size=10, optimizer=Adam(b.params, lr=0.03, weight_decay=0.5),
        rng=1, **_quiet())
    fit(c, x, epochs=3, batch_size=10, lr=0.03, rng=1, **_quiet())
    assert _params_equal(a.params, b.params)
    assert not _params_equal(a.params, c.params)


def test_conditional_flow_with_context_and_validation_pair():
    r = np.random.default_rng(8)
    c = r.normal(size=(80, 2))
    x = np.column_stack([c[:, 0] + 0.3 * r.normal(size=80), c[:, 1] - 0.5 * r.normal(size=80)])
    c_val = r.normal(size=(20, 2))
    x_val = np.column_stack([c_val[:, 0] + 0.3 * r.normal(size=20),
                             c_val[:, 1] - 0.5 * r.normal(size=20)])
    flow = Flow(StandardNormal(2), MaskedAffineAutoregressive(
        2, hidden=(8,), activation="tanh", context_dim=2, scale="softclip", rng=0))
    start = -float(np.mean(flow.log_prob(x_val, c_val)))
    history = fit(flow, x, context=c, validation_data=(x_val, c_val), epochs=30, batch_size=20,
                  lr=0.02, rng=0, **_quiet())
    assert history.val_nll[history.best_epoch] < start - 0.3
    assert history.val_nll[history.best_epoch] == -float(np.mean(flow.log_prob(x_val, c_val)))
    # one shared context row for every point is accepted
    shared = fit(flow, x, context=np.zeros(2), validation_fraction=0.25, epochs=1,
                 batch_size=20, lr=0.01, rng=0, **_quiet())
    assert shared.n_steps == 3


# ----------------------------------------------------------------- validation and stopping
def _rising_validation_case():
    """Train data N(0, 0.1^2), validation N(0, 0.5^2): as the fitted scale falls from 1 to 0.1
    the validation NLL first falls (down to scale 0.5), then rises."""
    r = np.random.default_rng(9)
    return r.normal(0.0, 0.1, size=(64, 1)), r.normal(0.0, 0.5, size=(64, 1))


def test_early_stopping_restores_the_best_epoch():
    x, x_val = _rising_validation_case()
    snapshots, callback, ref = _epoch_recorder()
    flow = ref[0] = _affine_flow(1)
    history = fit(flow, x, validation_data=x_val, epochs=500, batch_size=16, lr=0.01,
                  patience=3, rng=0, callback=callback, **_quiet())
    val = np.array(history.val_nll)
    best = int(np.argmin(val))
    assert history.stopped_early and history.stop_reason == "patience"
    assert history.best_epoch == best and 0 < best < len(val) - 1
    assert len(val) == best + 1 + 3                            # patience epochs after the best
    assert val[-1] > val[best]                                 # it did rise
    assert _params_equal(flow.params, snapshots[best])
    assert not _params_equal(snapshots[-1], snapshots[best])
    assert -float(np.sum(flow.log_prob(x_val))) / 64 == val[best]

    # restore_best=False keeps the last epoch's parameters
    snapshots2, callback2, ref2 = _epoch_recorder()
    flow2 = ref2[0] = _affine_flow(1)
    history2 = fit(flow2, x, validation_data=x_val, epochs=500, batch_size=16, lr=0.01,
                   patience=3, restore_best=False, rng=0, callback=callback2, **_quiet())
    assert history2.as_dict()["val_nll"] == history.as_dict()["val_nll"]
    assert _params_equal(flow2.params, snapshots2[-1])


def test_without_validation_the_training_nll_is_monitored():
    x = _gauss(40, seed=10)
    snapshots, callback, ref = _epoch_recorder()
    flow = ref[0] = _affine_flow()
    # a large constant lr makes Adam oscillate, so the best epoch is not the last one
    history = fit(flow, x, validation_fraction=0, epochs=15, batch_size=40, lr=0.5,
                  rng=0, callback=callback, **_quiet())
    best = int(np.argmin(history.train_nll))
    assert history.best_epoch == best and best != len(history.train_nll) - 1
    assert _params_equal(flow.params, snapshots[best])


def test_callback_stops_training():
    seen = []

    def callback(epoch, history):
        seen.append((epoch, len(history.train_nll), len(history.val_nll)))
        return epoch == 2

    history = fit(_affine_flow(), _gauss(30), epochs=10, batch_size=10, rng=0,
                  callback=callback, **_quiet())
    assert seen == [(0, 1, 1), (1, 2, 2), (2, 3, 3)]
    assert history.stopped_early and history.stop_reason == "callback"
    assert history.n_epochs == 3 and len(history.epoch_time) == 3


def test_validation_runs_in_eval_mode_and_modes_are_restored():
    x = _gauss(64, seed=11)
    flow = Flow(StandardNormal(2), Chain([Affine(2), BatchNorm(2)]))
    bn = flow.bijector.layers[1]
    flow.eval()                                   # fit trains in training mode regardless
    running = bn.buffers["running_mean"].copy()
    history = fit(flow, x, validation_fraction=0.25, epochs=3, batch_size=16, lr=0.01, rng=0,
                  restore_best=False, **_quiet())
    assert not bn.training and not flow.bijector.training          # eval again, as before
    assert not np.array_equal(bn.buffers["running_mean"], running)   # trained with batch stats
    x_val = x[np.random.default_rng(0).permutation(64)[:16]]
    eval_nll = -float(np.sum(flow.log_prob(x_val))) / 16
    assert history.val_nll[-1] == eval_nll
    flow.train()
    assert -float(np.mean(flow.log_prob(x_val))) != pytest.approx(eval_nll, rel=1e-6)
    fit(flow, x, epochs=1, batch_size=16, rng=0, **_quiet())
    assert bn.training                                              # train mode kept


def test_validation_nll_is_computed_in_chunks(monkeypatch):
    import refflow.training.loop as train
    x, x_val = _gauss(20, seed=12), _gauss(50, seed=13)
    calls = []
    original = Flow.log_prob

    def counting(self, x, context=None):
        calls.append(len(x))
        return original(self, x, context)

    monkeypatch.setattr(train, "_EVAL_CHUNK", 16)
    monkeypatch.setattr(Flow, "log_prob", counting)
    flow = _affine_flow()
    history = fit(flow, x, validation_data=x_val, epochs=1, batch_size=4, rng=0,
                  restore_best=False, **_quiet())
    monkeypatch.undo()
    assert calls == [16, 16, 16, 2]
    # the same mean as one call on the whole set, up to the round-off of splitting the sum
    assert history.val_nll[0] == pytest.approx(-float(np.mean(flow.log_prob(x_val))), rel=1e-14)


def test_clip_grad_norm_is_applied_to_every_step():
    x = _gauss(40, seed=14, loc=(30.0, -40.0))         # far from the start: large gradients
    flow = _affine_flow()
    opt = RecordingSGD(flow.params, lr=0.1)
    fit(flow, x, validation_fraction=0, epochs=3, batch_size=10, optimizer=opt,
        clip_grad_norm=0.5, rng=0, **_quiet())
    norms = [math.sqrt(sum(float(np.sum(g ** 2)) for g in grads.values())) for grads in opt.grads]
    assert len(norms) == 12
    np.testing.assert_allclose(norms, 0.5, rtol=1e-14)       # every raw norm was far above 0.5


def test_cosine_schedule_over_all_steps_and_custom_schedule():
    x = _gauss(30, seed=15)
    flow = _affine_flow()
    opt = RecordingAdam(flow.params, lr=0.2)
    history = fit(flow, x, validation_fraction=0, epochs=4, batch_size=8, optimizer=opt,
                  lr_schedule="cosine", rng=0, **_quiet())
    total = 4 * 4
    assert history.n_steps == total
    expected = [0.2 * (1 + math.cos(math.pi * s / total)) / 2 for s in range(total)]
    np.testing.assert_allclose(opt.lrs, expected, rtol=1e-15)
    assert opt.lr == 0.0

    class Counter:
        def __init__(self):
            self.calls = 0

        def step(self):
            self.calls += 1

    counter = Counter()
    history = fit(_affine_flow(), x, epochs=2, batch_size=8, lr_schedule=counter, rng=0,
                  **_quiet())
    assert counter.calls == history.n_steps == 2 * 4


# ----------------------------------------------------------------------------- divergence
def test_divergence_restores_the_best_epoch():
    x, x_val = _rising_validation_case()
    snapshots, record, ref = _epoch_recorder()
    flow = ref[0] = _affine_flow(1)
    opt = Adam(flow.params, lr=0.01)

    def callback(epoch, history):
        record(epoch, history)
        if epoch == 5:
            opt.lr = 1e300                     # the next step throws log_scale to ~ -1e300

    with pytest.raises(TrainingDiverged) as info:
        fit(flow, x, validation_data=x_val, epochs=50, batch_size=16, optimizer=opt, rng=0,
            callback=callback, **_quiet())
    err = info.value
    assert isinstance(err, ValueError)
    assert err.epoch == 6 and err.history.n_epochs == 6 and err.history.stop_reason == "diverged"
    assert 6 * 4 <= err.step == err.history.n_steps < 7 * 4
    best = int(np.argmin(err.history.val_nll))
    assert err.history.best_epoch == best
    assert _params_equal(flow.params, snapshots[best])
    message = str(err)
    assert "epoch 6" in message and f"step {err.step}" in message
    assert "lower lr" in message and "clip_grad_norm" in message and "standardised" in message
    assert "best epoch" in message


def test_divergence_without_restore_keeps_the_last_good_parameters():
    x, x_val = _rising_validation_case()
    flow = _affine_flow(1)
    opt = RecordingAdam(flow.params, lr=0.01)

    def callback(epoch, history):
        if epoch == 2:
            opt.lr = 1e300

    with pytest.raises(TrainingDiverged) as info:
        fit(flow, x, validation_data=x_val, epochs=50, batch_size=16, optimizer=opt, rng=0,
            restore_best=False, callback=callback, **_quiet())
    err = info.value
    assert err.step == len(opt.after_step) == err.history.n_steps
    assert _params_equal(flow.params, opt.after_step[-1])
    assert np.isfinite(opt.after_step[-1]["bijector.log_scale"]).all()
    assert "last good parameters" in str(err)


def test_divergence_from_outliers_in_the_first_step():
    x = _gauss(20, seed=16)
    x[7, 1] = 1e200                                   # its z^2 overflows
    flow = Flow(StandardNormal(2), Chain([ActNorm(2, initialized=True), Affine(2)]))
    flow.params["bijector.layers.0.shift"] = [0.5, 0.5]
    before = copy_params(flow.params)
    with pytest.raises(TrainingDiverged, match="epoch 0, step 0") as info:
        fit(flow, x, validation_fraction=0, epochs=3, batch_size=20, rng=0, **_quiet())
    assert info.value.history.best_epoch is None and info.value.history.n_steps == 0
    assert _params_equal(flow.params, before)
    assert isinstance(info.value.__cause__, ValueError)


def test_divergence_in_validation():
    x, x_val = _gauss(20, seed=17), _gauss(10, seed=18)
    x_val[3, 0] = 1e200
    flow = _affine_flow()
    opt = RecordingAdam(flow.params, lr=0.01)
    with pytest.raises(TrainingDiverged, match="in the evaluation at epoch 0") as info:
        fit(flow, x, validation_data=x_val, epochs=3, batch_size=10, optimizer=opt, rng=0,
            **_quiet())
    assert info.value.history.n_epochs == 0 and info.value.step == 2
    assert _params_equal(flow.params, opt.after_step[-1])


# ------------------------------------------------------------------------------- progress
def test_progress_bar_with_tqdm(capsys):
    pytest.importorskip("tqdm")
    fit(_affine_flow(), _gauss(20), epochs=2, batch_size=10, rng=0, progress=True)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "fit" in captured.err and "4/4" in captured.err


def test_built_in_progress_line_without_tqdm(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm", None)          # "import tqdm" now fails
    fit(_affine_flow(), _gauss(20), epochs=3, batch_size=10, rng=0, progress=True)
    err = capsys.readouterr().err
    assert "epoch 3/3" in err and "train NLL" in err and "val NLL" in err and "elapsed" in err
    assert err.endswith("\n")


def test_progress_off_and_auto(capsys, monkeypatch):
    fit(_affine_flow(), _gauss(20), epochs=2, batch_size=10, rng=0, progress=False)
    assert capsys.readouterr() == ("", "")
    fit(_affine_flow(), _gauss(20), epochs=2, batch_size=10, rng=0)   # stderr is not a terminal
    assert capsys.readouterr() == ("", "")
    monkeypatch.setattr(sys, "stderr", _TTY())
    fit(_affine_flow(), _gauss(20), epochs=2, batch_size=10, rng=0)
    assert "fit" in sys.stderr.getvalue()


class _TTY(io.StringIO):
    def isatty(self):
        return True


# -------------------------------------------------------------------------------- history
def test_history_as_dict_and_repr():
    history = fit(_affine_flow(), _gauss(30), epochs=3, batch_size=10, rng=0, **_quiet())
    d = history.as_dict()
    assert json.loads(json.dumps(d)) == d
    assert set(d) == {"train_nll", "val_nll", "epoch_time", "best_epoch", "stopped_early",
                      "stop_reason", "wall_time", "n_steps", "nll_shift", "lr_drops"}
    assert d["nll_shift"] == 0.0  # refflow.fit's NLLs are in the units of the data it was given
    assert len(d["train_nll"]) == len(d["val_nll"]) == len(d["epoch_time"]) == 3
    assert d["n_steps"] == 9 and d["wall_time"] >= sum(d["epoch_time"]) > 0
    text = repr(history)
    assert text.startswith("History(") and "epochs=3" in text and "best_epoch=" in text
    assert repr(History()).startswith("History(epochs=0")


# ------------------------------------------------------------------------------ bad input
def _stateful_flow():
    """A flow in eval mode with state that any training pass would change (ActNorm's
    initialisation, BatchNorm's running statistics)."""
    return Flow(StandardNormal(2), Chain([ActNorm(2), Affine(2), BatchNorm(2)])).eval()


_X = _gauss(20, seed=19)


def _other_params_optimizer(flow):
    return Adam(copy_params(flow.params))


def _subset_optimizer(flow):
    params = flow.params
    return Adam({k: params[k] for k in list(params)[:2]})


def _foreign_schedule(flow):
    return CosineAnnealing(Adam(copy_params(flow.params)), t_max=3)


BAD = [
    # (description, positional x, kwargs or callable(flow) -> kwargs, error, message)
    ("x 1-D", _X[0], {}, ValueError, "x must be a 2-D array"),
    ("x 3-D", _X[None], {}, ValueError, "x must be a 2-D array"),
    ("x wrong dim", _X[:, :1], {}, ValueError, r"fit: expected x of shape \(batch, 2\)"),
    ("x NaN", np.where(np.arange(40).reshape(20, 2) == 5, np.nan, _X), {}, ValueError,
     "fit: x must be finite"),
    ("x inf", np.where(np.arange(40).reshape(20, 2) == 5, np.inf, _X), {}, ValueError,
     "fit: x must be finite"),
    ("x empty", np.zeros((0, 2)), {}, ValueError, "x is empty"),
    ("x strings", np.array([["a", "b"]]), {}, ValueError, "real numeric"),
    ("context unconditional", _X, {"context": np.zeros((20, 1))}, ValueError, "unconditional"),
    ("validation wrong dim", _X, {"validation_data": np.zeros((5, 3))}, ValueError,
     "validation x"),
    ("validation NaN", _X, {"validation_data": np.full((5, 2), np.nan)}, ValueError,
     "validation x must be finite"),
    ("validation empty", _X, {"validation_data": np.zeros((0, 2))}, ValueError,
     "validation x is empty"),
    ("validation context unconditional", _X, {"validation_data": (_X, np.zeros((20, 1)))},
     ValueError, "unconditional"),
    ("epochs 0", _X, {"epochs": 0}, ValueError, "epochs must be a positive integer"),
    ("epochs float", _X, {"epochs": 2.0}, TypeError, "epochs"),
    ("epochs bool", _X, {"epochs": True}, TypeError, "epochs"),
    ("batch_size 0", _X, {"batch_size": 0}, ValueError, "batch_size"),
    ("batch_size -1", _X, {"batch_size": -1}, ValueError, "batch_size"),
    ("patience 0", _X, {"patience": 0}, ValueError, "patience"),
    ("fraction 1", _X, {"validation_fraction": 1.0}, ValueError, "validation_fraction"),
    ("fraction negative", _X, {"validation_fraction": -0.1}, ValueError, "validation_fraction"),
    ("fraction nan", _X, {"validation_fraction": float("nan")}, ValueError, "validation_fraction"),
    ("fraction bool", _X, {"validation_fraction": False}, TypeError, "validation_fraction"),
    ("too few rows", _X[:1], {"validation_fraction": 0.1}, ValueError, "too few rows"),
    ("optimizer other params", _X, lambda f: {"optimizer": _other_params_optimizer(f)},
     ValueError, "not the flow's parameters"),
    ("optimizer subset", _X, lambda f: {"optimizer": _subset_optimizer(f)}, ValueError,
     "not the flow's parameters"),
    ("optimizer no step", _X, {"optimizer": object()}, TypeError, "optimizer must have"),
    ("lr 0", _X, {"lr": 0.0}, ValueError, "Adam: lr"),
    ("lr negative", _X, {"lr": -1e-3}, ValueError, "Adam: lr"),
    ("weight_decay negative", _X, {"weight_decay": -0.1}, ValueError, "weight_decay"),
    ("clip 0", _X, {"clip_grad_norm": 0.0}, ValueError, "clip_grad_norm"),
    ("clip nan", _X, {"clip_grad_norm": float("nan")}, ValueError, "clip_grad_norm"),
    ("schedule name", _X, {"lr_schedule": "linear"}, ValueError, "lr_schedule"),
    ("schedule no step", _X, {"lr_schedule": 3}, TypeError, "lr_schedule"),
    ("schedule foreign", _X, lambda f: {"lr_schedule": _foreign_schedule(f)}, ValueError,
     "another optimizer"),
    ("restore_best", _X, {"restore_best": "yes"}, TypeError, "restore_best"),
    ("progress", _X, {"progress": "yes"}, TypeError, "progress"),
    ("callback", _X, {"callback": 3}, TypeError, "callback must be callable"),
    ("rng negative", _X, {"rng": -1}, ValueError, "seed must be non-negative"),
    ("rng string", _X, {"rng": "0"}, ValueError, "rng must be"),
]


@pytest.mark.parametrize("name, x, kwargs, error, message", BAD, ids=[b[0] for b in BAD])
def test_bad_arguments_raise_before_anything_changes(name, x, kwargs, error, message):
    flow = _stateful_flow()
    kwargs = kwargs(flow) if callable(kwargs) else dict(kwargs)
    kwargs.setdefault("progress", False)
    gen = kwargs.setdefault("rng", np.random.default_rng(0))
    state = gen.bit_generator.state if isinstance(gen, np.random.Generator) else None
    params, buffers = copy_params(flow.params), {k: v.copy() for k, v in flow.buffers.items()}
    with pytest.raises(error, match=message):
        fit(flow, x, epochs=kwargs.pop("epochs", 2), **kwargs)
    assert _params_equal(flow.params, params)
    assert all(np.array_equal(flow.buffers[k], v) for k, v in buffers.items())
    assert not flow.bijector.buffers["layers.0.initialized"]
    assert not any(layer.training for layer in flow.bijector.layers)
    if state is not None:
        assert gen.bit_generator.state == state


def test_bad_flow_and_conditional_arguments():
    with pytest.raises(TypeError, match="fit: flow must be a refflow Flow"):
        fit(Affine(2), _X)
    flow = Flow(StandardNormal(2), MaskedAffineAutoregressive(2, hidden=(4,), context_dim=3,
                                                             rng=0))
    params = copy_params(flow.params)
    c = np.zeros((20, 3))
    cases = [
        ({}, "the flow is conditional; pass context"),
        ({"context": np.zeros((19, 3))}, "context has 19 rows but x has 20"),
        ({"context": np.zeros((20, 2))}, r"expected context of shape \(batch, 3\)"),
        ({"context": np.full((20, 3), np.nan)}, "context must be finite"),
        ({"context": c, "validation_data": _X[:5]}, "validation_data must be a pair"),
        ({"context": c, "validation_data": (_X[:5], np.zeros((4, 3)))},
         "validation context has 4 rows"),
        ({"context": c, "validation_data": (_X[:5], None)}, "the flow is conditional"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            fit(flow, _X, epochs=1, rng=0, progress=False, **kwargs)
        assert _params_equal(flow.params, params)
