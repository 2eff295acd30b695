"""Ctrl-C during fit: it stops after the current step and keeps the best epoch's parameters.

SIGINT is sent to this very process (``os.kill(os.getpid(), SIGINT)``) from inside a step or a
callback; Python runs the handler between bytecodes of the main thread, as for a real Ctrl-C.
The command line's behaviour (the model saved, exit status 130) is tested in test_cli.py with
a signal sent to a subprocess.
"""

import os
import signal
import threading
import warnings

import numpy as np
import pytest

from refflow import Adam, RealNVP
from refflow.estimator import FlowDensity
from refflow.train import fit

X = np.random.default_rng(0).normal(size=(400, 2)) * [2.0, 0.5]
EPOCH_STEPS = 4  # 400 rows, batch_size 100


def small_flow():
    return RealNVP(2, n_layers=2, hidden=(8,), rng=0)


class SnapshotEveryEpoch:
    """A callback keeping a copy of the parameters after every epoch."""

    def __init__(self, flow, then=None):
        self.flow, self.then, self.params = flow, then, []

    def __call__(self, epoch, history):
        self.params.append({k: v.copy() for k, v in self.flow.params.items()})
        if self.then is not None:
            return self.then(epoch, history)
        return False


class SignallingAdam(Adam):
    """Adam that sends SIGINT to this process after the given steps."""

    def __init__(self, params, at, **kwargs):
        super().__init__(params, **kwargs)
        self.at = set(at)

    def step(self, grads):
        super().step(grads)
        if self.t in self.at:
            os.kill(os.getpid(), signal.SIGINT)


@pytest.fixture(autouse=True)
def interactive_sigint():
    """These tests play an interactive Ctrl-C. A process that a shell without job control
    starts in the background (``cmd &`` in a script) begins with SIGINT ignored, and ``fit``
    rightly leaves a handler it did not install alone, so here SIGINT gets Python's default
    handler for the duration of each test."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        yield
        return
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def assert_params_equal(flow, expected):
    for key, value in expected.items():
        np.testing.assert_array_equal(flow.params[key], value)


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(),
                    reason="signals reach the main thread only")
def test_sigint_inside_an_epoch_stops_after_that_step_and_restores_the_best_epoch():
    flow = small_flow()
    keep = SnapshotEveryEpoch(flow)
    optimizer = SignallingAdam(flow.params, at=[2 * EPOCH_STEPS + 2], lr=1e-2)
    history = fit(flow, X, epochs=50, batch_size=100, optimizer=optimizer, rng=0,
                  progress=False, callback=keep)
    assert history.stop_reason == "interrupted" and history.stopped_early
    assert history.n_steps == 2 * EPOCH_STEPS + 2      # the step in progress finished
    assert history.n_epochs == 2                       # the unfinished third is not recorded
    assert_params_equal(flow, keep.params[history.best_epoch])
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_sigint_before_any_epoch_keeps_the_last_step():
    flow = small_flow()
    optimizer = SignallingAdam(flow.params, at=[2], lr=1e-2)
    history = fit(flow, X, epochs=50, batch_size=100, optimizer=optimizer, rng=0, progress=False)
    assert history.stop_reason == "interrupted" and history.n_steps == 2
    assert history.n_epochs == 0 and history.best_epoch is None
    # the parameters after exactly those two steps, replayed by hand from fit's documented
    # use of rng: the validation split, then the first epoch's batch order
    reference = small_flow()
    gen = np.random.default_rng(0)
    perm = gen.permutation(400)
    x_train = X[perm[40:]]
    order = gen.permutation(360)
    adam = Adam(reference.params, lr=1e-2)
    reference.train()
    for b in range(2):
        adam.step(reference.nll_and_grad(x_train[order[b * 100:(b + 1) * 100]])[1])
    assert_params_equal(flow, reference.params)


def test_sigint_after_an_epoch_stops_there():
    flow = small_flow()
    keep = SnapshotEveryEpoch(flow, then=lambda epoch, history: (
        os.kill(os.getpid(), signal.SIGINT) if epoch == 3 else None))
    history = fit(flow, X, epochs=50, batch_size=100, lr=1e-2, rng=0, progress=False,
                  callback=keep)
    assert history.stop_reason == "interrupted" and history.n_epochs == 4
    assert_params_equal(flow, keep.params[history.best_epoch])


def test_keyboard_interrupt_from_a_callback_is_taken_as_ctrl_c():
    flow = small_flow()

    def stop(epoch, history):
        if epoch == 2:
            raise KeyboardInterrupt

    keep = SnapshotEveryEpoch(flow, then=stop)
    history = fit(flow, X, epochs=50, batch_size=100, lr=1e-2, rng=0, progress=False,
                  callback=keep)
    assert history.stop_reason == "interrupted" and history.n_epochs == 3
    assert_params_equal(flow, keep.params[history.best_epoch])
    # without a best epoch to put back (restore_best=False), it propagates
    with pytest.raises(KeyboardInterrupt):
        fit(small_flow(), X, epochs=50, batch_size=100, rng=0, progress=False,
            restore_best=False, callback=stop)


def test_a_second_sigint_interrupts_at_once():
    flow = small_flow()

    class TwiceAdam(Adam):
        def step(self, grads):
            super().step(grads)
            if self.t == 3:
                os.kill(os.getpid(), signal.SIGINT)   # stop after this step, please
                os.kill(os.getpid(), signal.SIGINT)   # no: now

    with pytest.raises(KeyboardInterrupt):
        fit(flow, X, epochs=50, batch_size=100, optimizer=TwiceAdam(flow.params, lr=1e-2),
            rng=0, progress=False)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_handler_of_the_callers_own_is_left_alone():
    seen = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: seen.append(signum))
    try:
        flow = small_flow()
        optimizer = SignallingAdam(flow.params, at=[2], lr=1e-2)
        history = fit(flow, X, epochs=2, batch_size=100, optimizer=optimizer, rng=0,
                      progress=False)
        assert seen == [signal.SIGINT] and history.stop_reason == "completed"
        assert history.n_epochs == 2
    finally:
        signal.signal(signal.SIGINT, previous)


def test_flow_density_keeps_the_best_epoch_and_warns(monkeypatch):
    from refflow.training import optim

    step = optim.Adam.step

    def signalling_step(self, grads):
        step(self, grads)
        if self.t == 3 * EPOCH_STEPS + 1:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(optim.Adam, "step", signalling_step)
    model = FlowDensity("realnvp", n_layers=2, hidden=(8,), epochs=50, batch_size=90,
                        random_state=0, progress=False)
    with pytest.warns(UserWarning, match=r"FlowDensity.fit: interrupted \(Ctrl-C\) after 3 "
                                         r"complete epochs and 13 steps; the parameters of the "
                                         r"best epoch \(\d, 1-based\) are kept"):
        model.fit(X)
    assert model.history_.stop_reason == "interrupted" and model.history_.n_epochs == 3
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.isfinite(model.score_samples(X)).all()
