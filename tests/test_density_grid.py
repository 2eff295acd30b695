"""``benchmarks/density_grid.py``: its replay of (epochs, patience, average) settings from one
traced fit is the fit that ``FlowDensity`` makes with those settings, bit for bit."""

import math

import numpy as np
import pytest

from .helpers import bench_module

#: whiten=True: on 400 rows whiten="auto" would also fit unwhitened candidates, which the
#: grid does not replay (it refuses; tested below)
TINY = dict(n_layers=2, hidden=(8,), base="student_t", whiten=True)
#: The script's average (zero-started, bias-corrected) and fit's running form of it round
#: differently, by a few ulps of the parameters: the gaps agree to far better than 1e-10 nats.
#: Trained parameters are copies of fit's own: their gaps agree exactly.
AVERAGE_GAP = 1e-10


@pytest.fixture(scope="module")
def grid():
    return bench_module("density_grid")


def _real(grid, name, kwargs, epochs, patience, average, decay, n_train, n_test):
    from refflow.estimator import FlowDensity

    train, test, truth = grid.load(name, n_train, n_test, (7, 8))
    model = FlowDensity(random_state=0, progress=False, epochs=epochs, patience=patience,
                        average="ema" if average else None, average_decay=decay,
                        lr_schedule=None, blend=False, **kwargs).fit(train)
    lp = model.score_samples(test)
    return model, float(np.mean(truth - lp))


@pytest.mark.parametrize("kwargs", [dict(flow="nsf", **TINY), dict(flow="auto", **TINY)],
                         ids=["nsf", "auto"])
def test_replayed_settings_are_the_real_fits(grid, kwargs):
    n_train, n_test, decay = 400, 300, 0.9
    records = grid.trace("two_moons", kwargs, n_train=n_train, n_test=n_test,
                         epochs_list=(4, 7), patience_list=(1, 2), decay=decay,
                         say=lambda *a: None)
    assert len(records) == 8
    assert {(r["epochs"], r["patience"], r["average"]) for r in records} == set(
        grid.settings((4, 7), (1, 2)))
    for r in records:
        model, gap = _real(grid, "two_moons", kwargs, r["epochs"], r["patience"], r["average"],
                           decay, n_train, n_test)
        history = model.history_
        if r["kept"] == "trained":
            assert r["gap"] == gap, r
        else:
            assert r["gap"] == pytest.approx(gap, rel=0, abs=AVERAGE_GAP), r
        assert r["family"] == model.flow_name_
        assert r["best_epoch"] == history.best_epoch
        assert r["kept"] == ("averaged" if history.best_averaged else "trained")
        assert r["cpu_seconds"] > 0 and math.isfinite(r["gap_se"])
    if kwargs["flow"] == "auto":   # both candidates traced and compared
        assert all(set(r["val_nll"]) == {"maf", "nsf"} for r in records)
    else:   # the settings are not all the same fit: averaging or patience changed something
        assert len({r["gap"] for r in records}) > 1


def test_replay_rule(grid):
    inf = math.inf
    trained = [5.0, 4.0, 4.5, 4.2, 3.97, 4.1]
    averaged = [6.0, 4.1, 3.95, 4.0, 4.0, inf]
    # without averaging: patience 2 stops at epoch 3 (best 1); patience 3 runs on to 3.97
    assert grid.replay(trained, averaged, 6, 2, False) == (1, "trained", 3)
    assert grid.replay(trained, averaged, 6, 3, False) == (4, "trained", 5)
    # with averaging: epoch 2's average (3.95) stays the best (3.97 and 4.0 are not lower)
    assert grid.replay(trained, averaged, 6, 2, True) == (2, "averaged", 4)
    assert grid.replay(trained, averaged, 6, None, True) == (2, "averaged", 5)
    # a trace too short for the setting
    assert grid.replay(trained, averaged, 9, None, True) is None
    # patience is not applied at the last epoch (fit completes there)
    assert grid.replay(trained, averaged, 4, 2, False) == (1, "trained", 3)


def test_a_schedule_is_refused(grid):
    with pytest.raises(ValueError, match="lr_schedule='plateau' is not replayed"):
        grid.trace("two_moons", dict(TINY, lr_schedule="plateau"), n_train=400, n_test=300,
                   epochs_list=(4,), patience_list=(1,), say=lambda *a: None)


@pytest.mark.parametrize("blend", ["auto", True])
def test_a_blend_is_refused(grid, blend):
    with pytest.raises(ValueError, match=f"blend={blend!r} is not replayed"):
        grid.trace("two_moons", dict(TINY, blend=blend), n_train=400, n_test=300,
                   epochs_list=(4,), patience_list=(1,), say=lambda *a: None)


def test_the_whitening_choice_is_refused(grid):
    with pytest.raises(ValueError, match="whiten='auto' also fits unwhitened candidates"):
        grid.trace("two_moons", dict(n_layers=2, hidden=(8,)), n_train=400, n_test=300,
                   epochs_list=(4,), patience_list=(1,), say=lambda *a: None)
