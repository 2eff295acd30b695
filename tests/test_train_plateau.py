"""The learning rate lowered on a plateau (``fit(lr_schedule="plateau")``, ``ReduceOnPlateau``).

Everything is checked against a record kept outside ``fit``: an optimizer subclass copies the
parameters before and after every step and the rate it stepped with, and the drops are
replayed from the history's validation NLLs by the rule as the class documents it.
"""

import math

import numpy as np
import pytest

from refflow import Affine, Flow, StandardNormal
from refflow.estimator import FlowDensity
from refflow.optim import SGD, ReduceOnPlateau
from refflow.params import copy_params
from refflow.train import fit

#: A mean NLL over the same rows evaluated twice, summed in chunks in another order.
SAME_NLL = 1e-12


class RecordingSGD(SGD):
    """SGD that records the parameters before and after every step and the rate it used."""

    def __init__(self, params, **kwargs):
        super().__init__(params, **kwargs)
        self.before, self.after, self.rates = [], [], []

    def step(self, grads):
        self.before.append(copy_params(self.params))
        self.rates.append(self.lr)
        super().step(grads)
        self.after.append(copy_params(self.params))


def _gauss(n, seed):
    return np.random.default_rng(seed).normal([1.0, -2.0], [0.5, 2.0], size=(n, 2))


def _noisy_fit(lr_schedule, patience=2, epochs=40, average=None, lr=0.3):
    """An affine flow by SGD with a large step on batches of 5: the iterates rattle around the
    maximum-likelihood point, so the validation NLL soon stops improving."""
    x, x_val = _gauss(100, 0), _gauss(4000, 1)
    flow = Flow(StandardNormal(2), Affine(2))
    opt = RecordingSGD(flow.params, lr=lr)
    history = fit(flow, x, validation_data=x_val, epochs=epochs, batch_size=5, optimizer=opt,
                  lr_schedule=lr_schedule, patience=patience, average=average,
                  average_decay=0.9, rng=3, progress=False)
    return flow, opt, history, x_val


def _replay(val_nll, patience, after_drop, drops):
    """The drops and the last epoch by the documented rule, from the validation NLLs alone."""
    best, counted_from, waiting, done = 0, 0, patience, []
    for epoch, value in enumerate(val_nll):
        if value < val_nll[best]:
            best = epoch
        if epoch - max(best, counted_from) >= waiting:
            if len(done) == drops:
                return done, epoch
            done.append(epoch)
            counted_from, waiting = epoch, after_drop
    return done, len(val_nll) - 1


def _nll(params, x):
    twin = Flow(StandardNormal(2), Affine(2))
    twin.params.update(params)
    return -float(np.mean(twin.log_prob(x)))


STEPS_PER_EPOCH = 20   # 100 rows in batches of 5


@pytest.mark.parametrize("schedule, after_drop, drops", [
    (ReduceOnPlateau(factor=0.25, drops=2, patience=1), 1, 2),
    (ReduceOnPlateau(factor=0.5, drops=3), 2, 3),      # after a drop: ceil(3 / 2) = 2
    ("plateau", 2, 1),
])
def test_drops_restore_the_best_epoch_and_lower_the_rate(schedule, after_drop, drops):
    patience = 3
    flow, opt, history, x_val = _noisy_fit(schedule, patience=patience)
    factor = 0.1 if schedule == "plateau" else schedule.factor
    expected_drops, last = _replay(history.val_nll, patience, after_drop, drops)
    assert history.lr_drops == expected_drops and len(expected_drops) == drops
    assert history.n_epochs == last + 1 and history.stop_reason == "patience"
    # the rate of every step: lr0 times factor per drop before its epoch
    for t, rate in enumerate(opt.rates):
        epoch = t // STEPS_PER_EPOCH
        k = sum(d < epoch for d in history.lr_drops)
        assert rate == pytest.approx(0.3 * factor ** k, rel=1e-15)
    best_so_far = 0
    for epoch in range(history.n_epochs):
        if history.val_nll[epoch] < history.val_nll[best_so_far]:
            best_so_far = epoch
        if epoch in history.lr_drops:
            # training resumes from the parameters at the end of the best epoch so far
            resumed = opt.before[(epoch + 1) * STEPS_PER_EPOCH]
            best_params = opt.after[(best_so_far + 1) * STEPS_PER_EPOCH - 1]
            for key in best_params:
                np.testing.assert_array_equal(resumed[key], best_params[key])
            assert best_so_far < epoch
    # the kept parameters are the best epoch's, and their NLL is the history's best
    kept = opt.after[(history.best_epoch + 1) * STEPS_PER_EPOCH - 1]
    for key in kept:
        np.testing.assert_array_equal(flow.params[key], kept[key])
    assert _nll(flow.params, x_val) == pytest.approx(min(history.val_nll), rel=SAME_NLL)


def test_the_drops_gain_on_the_noisy_fit():
    """What the schedule is for: from the best point, a lower rate finds a better one."""
    _, _, plain, _ = _noisy_fit(None, patience=3)
    _, _, lowered, _ = _noisy_fit(ReduceOnPlateau(factor=0.1, drops=2, patience=3), patience=3)
    assert min(lowered.val_nll) < min(plain.val_nll) - 1e-4


def test_before_the_first_drop_the_fit_is_the_constant_rate_one():
    _, opt_off, off, _ = _noisy_fit(None, patience=3)
    _, opt_on, on, _ = _noisy_fit("plateau", patience=3)
    first = on.lr_drops[0]
    assert off.stop_reason == "patience" and off.n_epochs == first + 1
    assert on.val_nll[:first + 1] == off.val_nll and on.train_nll[:first + 1] == off.train_nll
    for a, b in zip(opt_off.after, opt_on.after[:len(opt_off.after)]):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    assert off.lr_drops == [] and on.n_epochs > off.n_epochs


def test_the_average_restarts_at_a_drop():
    """After a drop the moving average weighs only the steps taken from the restored point."""
    decay = 0.9
    flow, opt, history, x_val = _noisy_fit("plateau", patience=3, average="ema")
    (drop,) = history.lr_drops
    steps = opt.after[(drop + 1) * STEPS_PER_EPOCH:(drop + 2) * STEPS_PER_EPOCH]
    m = {k: np.zeros_like(v) for k, v in steps[0].items()}
    for theta in steps:
        m = {k: decay * m[k] + (1.0 - decay) * theta[k] for k in m}
    average = {k: v / (1.0 - decay ** len(steps)) for k, v in m.items()}
    assert history.val_nll_averaged[drop + 1] == pytest.approx(_nll(average, x_val), rel=1e-10)


def test_no_drop_without_a_plateau():
    """A fit that keeps improving until ``epochs`` never drops, and equals the constant rate."""
    x = _gauss(2000, 0)
    runs = []
    for schedule in (None, "plateau"):
        flow = Flow(StandardNormal(2), Affine(2))
        history = fit(flow, x, epochs=5, batch_size=500, lr=0.01, lr_schedule=schedule,
                      patience=3, rng=0, progress=False)
        runs.append((history, copy_params(flow.params)))
    (off, p_off), (on, p_on) = runs
    assert on.lr_drops == [] and on.stop_reason == "completed"
    assert on.val_nll == off.val_nll
    for key in p_off:
        np.testing.assert_array_equal(p_on[key], p_off[key])


@pytest.mark.parametrize("kwargs, error, message", [
    ({"lr_schedule": "plateau", "patience": None}, ValueError, "needs patience"),
    ({"lr_schedule": "plateau", "restore_best": False}, ValueError, "restore_best=True"),
    ({"lr_schedule": "plateu"}, ValueError, "'plateau'"),
    ({"lr_schedule": ReduceOnPlateau(), "patience": None}, ValueError, "needs patience"),
])
def test_bad_plateau_arguments_raise_before_anything_changes(kwargs, error, message):
    flow = Flow(StandardNormal(2), Affine(2))
    before = copy_params(flow.params)
    options = dict(epochs=2, batch_size=50, patience=2, rng=0, progress=False)
    options.update(kwargs)
    with pytest.raises(error, match=message):
        fit(flow, _gauss(100, 0), **options)
    for key in before:
        np.testing.assert_array_equal(flow.params[key], before[key])


@pytest.mark.parametrize("kwargs, error, message", [
    ({"factor": 1.0}, ValueError, "factor"), ({"factor": 0.0}, ValueError, "factor"),
    ({"factor": math.nan}, ValueError, "factor"), ({"drops": 0}, ValueError, "drops"),
    ({"drops": 1.5}, TypeError, "drops"), ({"patience": 0}, ValueError, "patience"),
])
def test_bad_reduce_on_plateau(kwargs, error, message):
    with pytest.raises(error, match=f"ReduceOnPlateau: {message}"):
        ReduceOnPlateau(**kwargs)


def test_reduce_on_plateau_patience_after_a_drop():
    assert ReduceOnPlateau().after_drop(10) == 5 and ReduceOnPlateau().after_drop(5) == 3
    assert ReduceOnPlateau().after_drop(1) == 1
    assert ReduceOnPlateau(patience=4).after_drop(20) == 4


def test_the_variational_fit_refuses_plateau():
    from refflow.training import fit_reverse_kl

    flow = Flow(StandardNormal(2), Affine(2))
    with pytest.raises(ValueError, match="lr_schedule"):
        fit_reverse_kl(flow, lambda z: -0.5 * np.sum(z * z, axis=1), steps=2,
                       lr_schedule="plateau", rng=0, progress=False)


# ------------------------------------------------------------------------- FlowDensity
SMALL = dict(flow="maf", n_layers=1, hidden=(8,), base="gaussian", epochs=60, patience=2,
             batch_size=64, random_state=0, progress=False, whiten=False, lr=3e-2)


def _moons():
    return np.random.default_rng(0).normal(size=(600, 2)) * [1.0, 0.3] + [0.0, 1.0]


def test_flow_density_plateau_is_the_default_and_records_its_drop():
    assert FlowDensity().lr_schedule == "plateau"
    X = _moons()
    on = FlowDensity(**SMALL).fit(X)
    off = FlowDensity(lr_schedule=None, **SMALL).fit(X)
    (drop,) = on.history_.lr_drops
    assert off.history_.n_epochs == drop + 1 and off.history_.lr_drops == []
    assert on.history_.val_nll[:drop + 1] == off.history_.val_nll
    # the kept score is the best validation NLL, in data units, and no worse than without
    assert on.history_.val_log_likelihood[on.history_.best_epoch] >= \
        off.history_.val_log_likelihood[off.history_.best_epoch]


def test_flow_density_plateau_without_patience_is_a_constant_rate():
    X = _moons()
    options = dict(SMALL, patience=None, epochs=4)
    on = FlowDensity(**options).fit(X)
    off = FlowDensity(**dict(options, lr_schedule=None)).fit(X)
    assert on.history_.val_nll == off.history_.val_nll and on.history_.lr_drops == []
    np.testing.assert_array_equal(on.score_samples(X), off.score_samples(X))


def test_a_saved_model_keeps_its_drops(tmp_path):
    from refflow import io
    from refflow.train import History

    fitted = FlowDensity(**SMALL).fit(_moons())
    assert len(fitted.history_.lr_drops) == 1
    path = tmp_path / "model.npz"
    fitted.save(path)
    loaded = io.load(path)
    assert loaded.history_.lr_drops == fitted.history_.lr_drops
    assert loaded.history_.as_dict() == fitted.history_.as_dict()
    # a history written before the drops were saved still loads, with no drops
    old = fitted.history_.as_dict()
    del old["lr_drops"]
    assert History.from_dict(old).lr_drops == []


@pytest.mark.parametrize("drops", [[1.0], [True], [-1], [3, 3], [4, 2], [5], "1", None])
def test_bad_saved_drops_are_refused(drops):
    from refflow.train import History

    _, _, history, _ = _noisy_fit(None, epochs=5, patience=None)
    d = dict(history.as_dict(), lr_drops=drops)   # drops must name one of five epochs, 0..4
    with pytest.raises(ValueError, match=r"history_ entry 'lr_drops' has an invalid value"):
        History.from_dict(d)
    d["lr_drops"] = [0, 4]
    assert History.from_dict(d).lr_drops == [0, 4]
