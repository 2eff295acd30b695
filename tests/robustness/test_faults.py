"""Training faults: outliers, duplicated points, a diverging learning rate, interrupted saves.

Outcomes measured here and asserted exactly: with the bounded default scale map
(``"softclip"``) a MAF trains through 1e6 outliers (huge but finite losses); with the paper's
unbounded ``scale="exp"`` the same data overflow a pass and ``fit`` raises ``TrainingDiverged``
with the last good parameters in place; ``FlowDensity`` standardises the outliers away and
trains; duplicated points train normally; a learning rate blown up mid-training diverges and the
best epoch's parameters are restored bit for bit.
"""

import math
import os

import numpy as np
import pytest

import refflow.io.files as rio
from refflow.estimator import FlowDensity
from refflow.flows import MAF
from refflow.train import TrainingDiverged, fit


def _data(n=400, seed=0):
    return np.random.default_rng(seed).standard_normal((n, 2))


def _outliers():
    x = _data()
    x[:4] = 1e6
    return x


class _StepRecorder:
    """An ``lr_schedule`` that snapshots the parameters after every optimizer step and, from
    step ``blow_up_at`` on, sets a huge learning rate."""

    def __init__(self, optimizer, params, blow_up_at=None, lr=1e4):
        self.optimizer, self.params = optimizer, params
        self.blow_up_at, self.lr = blow_up_at, lr
        self.steps, self.last = 0, None

    def step(self):
        self.steps += 1
        self.last = {k: v.copy() for k, v in self.params.items()}
        if self.blow_up_at is not None and self.steps >= self.blow_up_at:
            self.optimizer.lr = self.lr


def _epoch_snapshots():
    snapshots = []

    def callback(epoch, history):
        snapshots.append({k: v.copy() for k, v in callback.flow.params.items()})
        return False

    return snapshots, callback


def _assert_params_equal(flow, snapshot):
    assert sorted(flow.params) == sorted(snapshot)
    for key, value in flow.params.items():
        assert value.tobytes() == snapshot[key].tobytes(), key


# ------------------------------------------------------------------------- outliers
def test_outliers_bounded_scale_trains_through_and_restores_best():
    flow = MAF(2, n_layers=2, hidden=(16, 16), rng=0)
    snapshots, callback = _epoch_snapshots()
    callback.flow = flow
    history = fit(flow, _outliers(), epochs=5, batch_size=64, rng=1, progress=False,
                  callback=callback)
    assert history.stop_reason == "completed" and history.n_epochs == 5
    assert all(math.isfinite(v) for v in history.train_nll + history.val_nll)
    assert max(history.train_nll) > 1e9          # the outliers dominate the loss ...
    assert history.best_epoch == int(np.argmin(history.val_nll))
    _assert_params_equal(flow, snapshots[history.best_epoch])   # ... and the best epoch is kept
    assert all(np.isfinite(v).all() for v in flow.params.values())


def test_outliers_unbounded_scale_diverge_with_last_good_parameters():
    from refflow.optim import Adam
    flow = MAF(2, n_layers=2, hidden=(16, 16), scale="exp", rng=0)
    optimizer = Adam(flow.params, lr=1e-3)
    recorder = _StepRecorder(optimizer, flow.params)
    with pytest.raises(TrainingDiverged) as info:
        fit(flow, _outliers(), epochs=5, batch_size=64, optimizer=optimizer,
            lr_schedule=recorder, rng=1, progress=False)
    exc = info.value
    assert (exc.epoch, exc.step) == (0, 1) and exc.history.stop_reason == "diverged"
    assert exc.history.n_epochs == 0 and exc.history.n_steps == 1 == recorder.steps
    message = str(exc)
    assert message.startswith("fit: training diverged in a training step at epoch 0, step 1")
    assert "MaskedAffineAutoregressive.inverse: the result is not finite" in message
    assert "The last good parameters are in place" in message and "Try a lower lr" in message
    _assert_params_equal(flow, recorder.last)    # the failed step changed nothing


def test_flow_density_standardises_outliers_away():
    X = _outliers()
    # whiten=True: the whitened fit is the scenario (on these 400 rows whiten="auto" would also
    # fit an unwhitened candidate, and the validation rows may prefer it: with its four equal
    # outliers, a point mass of 1%, it can rightly give them more density than the bulk's tail)
    model = FlowDensity("maf", n_layers=2, hidden=(16, 16), epochs=5, whiten=True,
                        random_state=0).fit(X)
    history = model.history_
    assert history.stop_reason == "completed" and history.n_epochs == 5
    assert all(math.isfinite(v) and abs(v) < 10 for v in history.train_nll + history.val_nll)
    scores = model.score_samples(X)
    assert np.isfinite(scores).all()
    # the N(0, 1) bulk (about 1e-5 of the standardised spread) gets a far higher density
    assert scores[4:].min() > scores[:4].max()


# ----------------------------------------------------------------------- duplicates
@pytest.mark.parametrize("scale", ["softclip", "exp"])
def test_duplicated_points_train_normally(scale):
    x = np.repeat(_data(5), 80, axis=0)          # 400 rows, 5 distinct points
    flow = MAF(2, n_layers=2, hidden=(16, 16), scale=scale, rng=0)
    history = fit(flow, x, epochs=5, batch_size=64, lr=1e-2, rng=1, progress=False)
    assert history.stop_reason == "completed" and history.best_epoch == 4
    assert history.val_nll == sorted(history.val_nll, reverse=True)   # steadily better
    model = FlowDensity("nsf", n_layers=2, hidden=(16, 16), epochs=5, random_state=0).fit(x)
    assert model.history_.stop_reason == "completed"
    assert np.isfinite(model.score_samples(x)).all()


def test_single_repeated_point_is_a_constant_column_density():
    x = np.tile([[3.0, -1.0]], (50, 1))          # no spread at all: scale 1 per feature
    model = FlowDensity("maf", n_layers=2, hidden=(8, 8), epochs=3, random_state=0).fit(x)
    np.testing.assert_array_equal(model.scale_, [1.0, 1.0])
    assert model.history_.stop_reason == "completed"
    assert np.isfinite(model.score_samples(x)).all()


# ----------------------------------------------------------------------- divergence
@pytest.mark.parametrize("restore_best", [True, False])
def test_diverging_lr_restores_best_epoch_exactly(restore_best):
    from refflow.optim import Adam
    flow = MAF(2, n_layers=2, hidden=(16, 16), scale="exp", rng=0)
    optimizer = Adam(flow.params, lr=1e-3)
    # 360 training rows in batches of 64: 6 steps per epoch; blow up in the third epoch
    recorder = _StepRecorder(optimizer, flow.params, blow_up_at=14)
    snapshots, callback = _epoch_snapshots()
    callback.flow = flow
    with pytest.raises(TrainingDiverged) as info:
        fit(flow, _data(), epochs=10, batch_size=64, optimizer=optimizer, lr_schedule=recorder,
            restore_best=restore_best, rng=1, progress=False, callback=callback)
    exc = info.value
    history = exc.history
    assert exc.epoch == 2 and history.n_epochs == 2 and history.stop_reason == "diverged"
    assert history.n_steps == exc.step == recorder.steps
    assert history.best_epoch == int(np.argmin(history.val_nll))
    if restore_best:
        assert f"The parameters of the best epoch ({history.best_epoch}) were restored" in str(exc)
        _assert_params_equal(flow, snapshots[history.best_epoch])
    else:
        assert "The last good parameters are in place" in str(exc)
        _assert_params_equal(flow, recorder.last)
    assert all(np.isfinite(v).all() for v in flow.params.values())


@pytest.mark.parametrize("whiten", [True, "auto"])
def test_flow_density_divergence_leaves_the_estimator_unchanged(whiten):
    X = _data()
    # the Gaussian base and the whitened fit: the scenario (where the divergence shows first)
    # is theirs; with whiten="auto" the unwhitened candidate diverges too, and its error
    # (the last) is raised
    where = "the evaluation at epoch 0, step 2" if whiten is True else "a training step"
    model = FlowDensity("maf", n_layers=2, hidden=(16, 16), epochs=2, base="gaussian",
                        whiten=whiten, random_state=0).fit(X)
    before = {k: v.copy() for k, v in model.flow_.params.items()}
    flow_before, history_before = model.flow_, model.history_
    model.set_params(lr=10.0, flow_kwargs={"scale": "exp"}, epochs=5)
    with pytest.raises(TrainingDiverged, match=f"fit: training diverged in {where}") as info:
        model.fit(X)
    assert info.value.epoch == 0 and info.value.history.n_epochs == 0
    assert "MaskedAffineAutoregressive.inverse: the result is not finite" in str(info.value)
    assert model.flow_ is flow_before and model.history_ is history_before
    for key, value in model.flow_.params.items():
        assert value.tobytes() == before[key].tobytes()
    fresh = FlowDensity("maf", n_layers=2, hidden=(16, 16), lr=10.0, epochs=5,
                        flow_kwargs={"scale": "exp"}, whiten=whiten, random_state=0)
    with pytest.raises(TrainingDiverged):
        fresh.fit(X)
    assert not hasattr(fresh, "flow_")


# ------------------------------------------------------------------ interrupted saves
class _Interrupt(Exception):
    pass


def _failing_write(exc_type):
    real = rio._write_npz

    def write(f, entries):
        real(f, entries)                        # a complete archive in the temporary file ...
        f.flush()
        f.truncate(f.tell() // 2)               # ... cut in half, then the failure
        raise exc_type("disk full (simulated)")

    return write


def _model():
    X = _data(200)
    return FlowDensity("maf", n_layers=1, hidden=(8, 8), epochs=1, random_state=0).fit(X)


@pytest.mark.parametrize("exc_type", [OSError, _Interrupt, KeyboardInterrupt])
@pytest.mark.parametrize("how", ["io.save", "FlowDensity.save"])
def test_interrupted_save_leaves_no_partial_file(tmp_path, monkeypatch, exc_type, how):
    model = _model()
    save = (lambda p: rio.save(p, model)) if how == "io.save" else model.save
    path = tmp_path / "model.npz"
    monkeypatch.setattr(rio, "_write_npz", _failing_write(exc_type))
    with pytest.raises(exc_type, match="simulated"):
        save(path)
    assert os.listdir(tmp_path) == []           # no partial file, no temporary left over


@pytest.mark.parametrize("how", ["io.save", "FlowDensity.save"])
def test_interrupted_save_keeps_the_existing_file(tmp_path, monkeypatch, how):
    old, new = _model(), _model().set_params(epochs=2)
    new.fit(_data(200, seed=1))
    path = tmp_path / "model.npz"
    old.save(path)
    original = path.read_bytes()
    save = (lambda p: rio.save(p, new)) if how == "io.save" else new.save
    monkeypatch.setattr(rio, "_write_npz", _failing_write(OSError))
    with pytest.raises(OSError, match="simulated"):
        save(path)
    assert os.listdir(tmp_path) == ["model.npz"] and path.read_bytes() == original
    loaded = rio.load(path)                     # still the old, complete, loadable model
    X = _data(20, seed=2)
    np.testing.assert_array_equal(loaded.score_samples(X), old.score_samples(X))
    # a failure at the rename leaves it too
    monkeypatch.undo()
    monkeypatch.setattr(rio.os, "replace", lambda *a: (_ for _ in ()).throw(OSError("simulated")))
    with pytest.raises(OSError, match="simulated"):
        save(path)
    assert os.listdir(tmp_path) == ["model.npz"] and path.read_bytes() == original
    monkeypatch.undo()
    save(path)                                  # and an uninterrupted save replaces it
    np.testing.assert_array_equal(rio.load(path).score_samples(X), new.score_samples(X))
