"""Shared fixtures and hypothesis profiles.

Profiles: "ci" (selected when the CI environment variable is set; derandomized so a run is
reproducible, more examples) and "dev" (the default; fewer examples, random). Choose one with
``pytest --hypothesis-profile=ci``.
"""

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", max_examples=30, deadline=None, derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "dev", max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("ci" if os.environ.get("CI") else "dev")


@pytest.fixture
def rng():
    """A seeded generator, new for every test."""
    return np.random.default_rng(20261123)
