"""Shared fixtures and hypothesis profiles.

Profiles (choose one with ``pytest --hypothesis-profile=NAME``):

- ``"ci"`` (the default when the ``CI`` environment variable is set): derandomized, 30 examples
  per test, the same examples on every run.
- ``"dev"`` (the default otherwise): 10 random examples per test.
- ``"random"``: the long random run, 100 examples per test (``REFFLOW_HYPOTHESIS_EXAMPLES``
  overrides) from a random seed. It must pass too: a failure is a bug (in the code or in a
  test's bound), never "bad luck". Run it on the property suites, e.g. ``pytest
  --hypothesis-profile=random tests/robustness/test_fuzz.py tests/robustness/test_stress.py
  tests/test_properties.py``.

``--hypothesis-seed=N`` fixes the seed of the random profiles (``dev``, ``random``) to replay a
run; a failure also prints a ``@reproduce_failure`` blob. The derandomized ``ci`` profile
ignores it (hypothesis derives its seed from each test).
"""

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

_COMMON = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("ci", max_examples=30, derandomize=True, **_COMMON)
settings.register_profile("dev", max_examples=10, **_COMMON)
settings.register_profile(
    "random", max_examples=int(os.environ.get("REFFLOW_HYPOTHESIS_EXAMPLES", "100")),
    derandomize=False, print_blob=True, **_COMMON,
)
settings.load_profile("ci" if os.environ.get("CI") else "dev")


@pytest.fixture
def rng():
    """A seeded generator, new for every test."""
    return np.random.default_rng(20261123)
