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
