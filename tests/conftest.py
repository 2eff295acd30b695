"""Shared fixtures and hypothesis profiles.

Profiles (``REFFLOW_HYPOTHESIS_PROFILE=NAME`` or ``pytest --hypothesis-profile=NAME``):

- ``"ci"``, the default everywhere (CI and a plain ``pytest``): derandomized and without an
  example database, 30 examples per test, so every run draws the same examples and a red run
  is reproducible by running it again.
- ``"explore"``: the long random run for bug hunting, 100 examples per test
  (``REFFLOW_HYPOTHESIS_EXAMPLES`` overrides) from a random seed, failing examples kept in
  hypothesis's local database and printed as ``@reproduce_failure`` blobs. It must pass too: a
  failure is a bug (in the code or in a test's bound), never bad luck. E.g. ``pytest
  --hypothesis-profile=explore tests/robustness/test_fuzz.py tests/robustness/test_stress.py
  tests/test_properties.py``; ``--hypothesis-seed=N`` replays a run (the ``ci`` profile has
  no seed to set: hypothesis derives one from each test's name).
"""

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

_COMMON = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True)
settings.register_profile("ci", max_examples=30, derandomize=True, database=None, **_COMMON)
settings.register_profile(
    "explore", max_examples=int(os.environ.get("REFFLOW_HYPOTHESIS_EXAMPLES", "100")),
    derandomize=False, **_COMMON,
)
settings.load_profile(os.environ.get("REFFLOW_HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture
def rng():
    """A seeded generator, new for every test."""
    return np.random.default_rng(20261123)


@pytest.fixture(autouse=True)
def _sigint_state_kept():
    """Ctrl-C handling is process state: a test (or a library it calls) that leaves SIGINT
    ignored, blocked or handled by its own handler makes every later test of that worker that
    sends SIGINT fail, and every subprocess it starts inherit an ignored or blocked SIGINT. So
    the disposition and the signal mask are put back after each test, with a warning naming
    the test that changed them. The handler is set again even when Python's record of it did
    not change, since a C library can replace it underneath Python."""
    import signal
    import threading
    import warnings

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    handler = signal.getsignal(signal.SIGINT)
    blocked = signal.SIGINT in signal.pthread_sigmask(signal.SIG_BLOCK, [])
    yield
    changed = []
    if signal.getsignal(signal.SIGINT) is not handler:
        changed.append(f"handler {signal.getsignal(signal.SIGINT)!r}")
    if (signal.SIGINT in signal.pthread_sigmask(signal.SIG_BLOCK, [])) != blocked:
        changed.append("signal mask")
    if handler is not None:        # None: not set from Python; nothing to put back
        signal.signal(signal.SIGINT, handler)
    signal.pthread_sigmask(signal.SIG_BLOCK if blocked else signal.SIG_UNBLOCK, [signal.SIGINT])
    if changed:
        warnings.warn(f"this test changed SIGINT's {' and '.join(changed)}; put back",
                      RuntimeWarning, stacklevel=1)
