"""Weight averaging in ``refflow.training.fit`` (``average="ema"``) and ``FlowDensity``.

The averages are recomputed here from the parameters an optimizer subclass records after every
step, with the textbook zero-started, bias-corrected form ``a_t = m_t / (1 - beta^t)``,
``m_t = beta m_{t-1} + (1 - beta) theta_t`` (fit keeps the equivalent running form), and the
validation NLLs from a copy of the flow holding those parameters: nothing here is taken from
fit's own bookkeeping.
"""

import numpy as np
import pytest

from refflow import Affine, Flow, MaskedAffineAutoregressive, StandardNormal
from refflow.data import synthetic
from refflow.estimator import FlowDensity
from refflow.optim import SGD, Adam
from refflow.params import copy_params
from refflow.train import fit

#: The running and the zero-started forms of the average round differently (a few ulps per
#: step, over at most a few hundred steps here): 1e-12 relative leaves room and no more.
SAME_AVERAGE = 1e-12
#: Two evaluations of a mean NLL over the same rows, summed in chunks in another order.
SAME_NLL = 1e-12


class Recording:
    """Mixin: keeps a copy of the parameters after every successful step."""

    def __init__(self, params, **kwargs):
        super().__init__(params, **kwargs)
        self.after_step = []

    def step(self, grads):
        super().step(grads)
        self.after_step.append(copy_params(self.params))


class RecordingSGD(Recording, SGD):
    pass


class RecordingAdam(Recording, Adam):
    pass


def _averages(steps, decay):
    """The bias-corrected moving average after each step, zero-started (textbook form)."""
    m = {k: np.zeros_like(v) for k, v in steps[0].items()}
    out = []
    for t, theta in enumerate(steps, start=1):
        m = {k: decay * m[k] + (1.0 - decay) * theta[k] for k in m}
        out.append({k: m[k] / (1.0 - decay ** t) for k in m})
    return out


def _nll(flow, params, x):
    twin = Flow(StandardNormal(flow.dim), Affine(flow.dim))
    twin.params.update(params)
    return -float(np.mean(twin.log_prob(x)))


def _gauss(n, seed):
    return np.random.default_rng(seed).normal([1.0, -2.0], [0.5, 2.0], size=(n, 2))


def _noisy_fit(average, decay=0.95, epochs=6, patience=None):
    """An affine flow by SGD with a large step on small batches: the iterates rattle around
    the maximum-likelihood point, so their average is closer to it."""
    x, x_val = _gauss(200, 0), _gauss(4000, 1)
    flow = Flow(StandardNormal(2), Affine(2))
    opt = RecordingSGD(flow.params, lr=0.3)
    history = fit(flow, x, validation_data=x_val, epochs=epochs, batch_size=5, optimizer=opt,
                  average=average, average_decay=decay, patience=patience, rng=3,
                  progress=False)
    return flow, opt, history, x_val


def test_averaging_leaves_the_training_run_unchanged():
    _, opt_off, off, _ = _noisy_fit(None)
    _, opt_on, on, _ = _noisy_fit("ema")
    # the same steps, batches and training NLLs: the average is a shadow of the run
    assert on.train_nll == off.train_nll and on.n_steps == off.n_steps
    assert all(np.array_equal(a[k], b[k]) for a, b in zip(opt_on.after_step, opt_off.after_step)
               for k in a)
    assert on.val_nll_trained == off.val_nll
    assert off.val_nll_trained == [] and off.val_nll_averaged == [] and not off.best_averaged


def test_the_average_is_the_bias_corrected_ema_and_is_scored_on_the_validation_rows():
    flow, opt, history, x_val = _noisy_fit("ema")
    n_batches = 40
    averages = _averages(opt.after_step, 0.95)
    for epoch in range(history.n_epochs):
        by_hand = _nll(flow, averages[(epoch + 1) * n_batches - 1], x_val)
        assert history.val_nll_averaged[epoch] == pytest.approx(by_hand, rel=SAME_NLL)
        trained = _nll(flow, opt.after_step[(epoch + 1) * n_batches - 1], x_val)
        assert history.val_nll_trained[epoch] == pytest.approx(trained, rel=SAME_NLL)
        # the epoch's candidate is the better of the two
        assert history.val_nll[epoch] == min(history.val_nll_trained[epoch],
                                             history.val_nll_averaged[epoch])
    # the first step's average is its parameters exactly (the start carries no weight)
    assert averages[0]["bijector.shift"] == pytest.approx(opt.after_step[0]["bijector.shift"],
                                                          rel=1e-15)


def test_the_better_averaged_parameters_are_restored():
    flow, opt, history, x_val = _noisy_fit("ema")
    assert history.best_averaged        # the noisy iterates lose to their average here
    best = history.best_epoch
    assert history.val_nll[best] == min(history.val_nll)
    expected = _averages(opt.after_step, 0.95)[(best + 1) * 40 - 1]
    for key, value in expected.items():
        np.testing.assert_allclose(flow.params[key], value, rtol=SAME_AVERAGE, atol=0)
    assert _nll(flow, flow.params, x_val) == pytest.approx(history.val_nll[best], rel=SAME_NLL)
    # the trained parameters after the last step are not what is kept
    assert not np.array_equal(flow.params["bijector.shift"],
                              opt.after_step[-1]["bijector.shift"])


def test_averaged_worse_keeps_the_trained_parameters():
    """A decay near 1 over few steps averages in the early, poor iterates: the trained
    parameters win and are the ones kept."""
    x, x_val = _gauss(400, 0), _gauss(2000, 1)
    flow = Flow(StandardNormal(2), Affine(2))
    opt = RecordingAdam(flow.params, lr=0.05)
    history = fit(flow, x, validation_data=x_val, epochs=8, batch_size=100, optimizer=opt,
                  average="ema", average_decay=0.99, rng=0, progress=False)
    assert all(t < a for t, a in zip(history.val_nll_trained, history.val_nll_averaged))
    assert not history.best_averaged and history.val_nll == history.val_nll_trained
    best_step = (history.best_epoch + 1) * 4 - 1
    for key, value in opt.after_step[best_step].items():
        np.testing.assert_array_equal(flow.params[key], value)


def _patience_stop(val_nll, patience):
    """(best epoch, last epoch run) of early stopping on ``val_nll`` (fit's documented rule:
    stop after ``patience`` epochs without a strict improvement)."""
    best = 0
    for epoch, value in enumerate(val_nll):
        if value < val_nll[best]:
            best = epoch
        if epoch - best >= patience:
            return best, epoch
    return best, len(val_nll) - 1


def test_early_stopping_goes_by_the_better_of_the_two():
    """The same run, with patience: it stops where the rule applied to the epochs' better
    value (``val_nll``) says, on the full run's values."""
    _, _, full, _ = _noisy_fit("ema", epochs=40)
    _, _, stopped, _ = _noisy_fit("ema", epochs=40, patience=3)
    best, last = _patience_stop(full.val_nll, 3)
    assert last < 39        # the rule does stop this run early
    assert (stopped.best_epoch, stopped.n_epochs - 1) == (best, last)
    assert stopped.val_nll == full.val_nll[:last + 1]


def test_averaging_works_with_a_masked_autoregressive_flow_and_the_split():
    x = synthetic("curve", 400, rng=0)[:, :3]
    flow = Flow(StandardNormal(3), MaskedAffineAutoregressive(3, hidden=(8,),
                                                               rng=np.random.default_rng(0)))
    history = fit(flow, x, validation_fraction=0.25, epochs=4, batch_size=50, lr=1e-2,
                  average="ema", average_decay=0.9, rng=1, progress=False)
    assert len(history.val_nll_averaged) == len(history.val_nll_trained) == history.n_epochs
    x_val = x[history.validation_index]
    flow.eval()
    kept = -float(np.mean(flow.log_prob(x_val)))
    assert kept == pytest.approx(history.val_nll[history.best_epoch], rel=SAME_NLL)


@pytest.mark.parametrize("kwargs, error, message", [
    ({"average": "swa"}, ValueError, "average"),
    ({"average": 1}, TypeError, "average"),
    ({"average": "ema", "average_decay": 1.0}, ValueError, "average_decay"),
    ({"average": "ema", "average_decay": 0.0}, ValueError, "average_decay"),
    ({"average": "ema", "average_decay": True}, TypeError, "average_decay"),
    ({"average": "ema", "validation_fraction": 0.0}, ValueError, "needs validation rows"),
    ({"average": "ema", "restore_best": False}, ValueError, "restore_best"),
])
def test_bad_averaging_arguments_raise_before_anything_changes(kwargs, error, message):
    flow = Flow(StandardNormal(2), Affine(2))
    before = copy_params(flow.params)
    with pytest.raises(error, match=message):
        fit(flow, _gauss(50, 0), epochs=2, batch_size=10, rng=0, progress=False, **kwargs)
    assert all(np.array_equal(before[k], flow.params[k]) for k in before)


# ------------------------------------------------------------------------------ FlowDensity
SMALL = dict(flow="maf", n_layers=2, hidden=(16,), epochs=4, random_state=0, progress=False)


def test_flow_density_average_keeps_history_and_score_in_agreement():
    X = synthetic("curve", 600, rng=0)
    model = FlowDensity(average="ema", average_decay=0.9, validation_fraction=0.25,
                        **SMALL).fit(X)
    history = model.history_
    assert len(history.val_nll_averaged) == history.n_epochs
    held_out = model.score(X[model.validation_index_])
    assert history.val_log_likelihood[history.best_epoch] == pytest.approx(held_out,
                                                                           rel=SAME_NLL)
    # the same fit without averaging trains the same way
    plain = FlowDensity(average=None, validation_fraction=0.25, **SMALL).fit(X)
    assert plain.history_.train_nll == history.train_nll
    assert plain.history_.val_nll == history.val_nll_trained


@pytest.mark.parametrize("dim, same_as", [(1, "ema"), (2, "ema"), (3, None), (4, None)])
def test_flow_density_average_auto_is_ema_up_to_two_features(dim, same_as):
    """The default ``average="auto"`` is the fit with ``"ema"`` on data of one or two
    features and the fit without averaging above: the same histories and parameters."""
    from refflow.estimator import LOW_DIM_FEATURES

    assert LOW_DIM_FEATURES == 2 and FlowDensity().average == "auto"
    X = synthetic("curve", 400, rng=1)[:, :dim]
    auto = FlowDensity(average_decay=0.9, **SMALL).fit(X)
    explicit = FlowDensity(average=same_as, average_decay=0.9, **SMALL).fit(X)
    assert (len(auto.history_.val_nll_averaged) > 0) == (same_as == "ema")
    assert auto.history_.val_nll == explicit.history_.val_nll
    assert auto.history_.val_nll_averaged == explicit.history_.val_nll_averaged
    params, other = auto.flow_.params, explicit.flow_.params
    assert all(np.array_equal(params[k], other[k]) for k in params)


def test_flow_density_average_without_validation_rows_does_not_average():
    X = synthetic("curve", 300, rng=0)
    model = FlowDensity(average="ema", validation_fraction=0.0, **SMALL).fit(X)
    assert model.history_.val_nll_averaged == [] and model.history_.val_nll == []


@pytest.mark.parametrize("kwargs, error", [
    ({"average": "polyak"}, ValueError), ({"average": 0.9}, TypeError),
    ({"average_decay": 1.5}, ValueError), ({"average_decay": "0.9"}, TypeError)])
def test_flow_density_bad_average(kwargs, error):
    model = FlowDensity(**kwargs, **SMALL)
    with pytest.raises(error, match="average"):
        model.fit(synthetic("curve", 50, rng=0))
    assert not hasattr(model, "flow_")
