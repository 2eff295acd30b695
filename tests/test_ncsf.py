"""NCSF (zuko's neural circular spline flow): a density on the torus."""

import numpy as np

from refflow.flows import NCSF

# Midpoint rule on an n x n grid of [-pi, pi]^2, error O(h^2) (the density is continuous with
# kinks at the knots): measured |mass - expected| = 4.7e-5 at n = 128, 1.3e-5 at n = 256,
# 7e-6 at n = 512 for this flow. 1e-4 leaves room for that and is far below what a wrong
# log-det gives (its log-density spans 4.6 nats here). (It does not resolve the base's 1e-5
# margin: (2 pi / (2 pi + 2e-5))^2 = 1 - 6.4e-6.)
QUAD_TOL = 1e-4
N_GRID = 256


def test_ncsf_is_normalised_on_the_torus():
    flow = NCSF(2, n_layers=2, hidden=(8,), n_bins=4, rng=0)
    rng = np.random.default_rng(1)
    for key, value in flow.params.items():   # away from the identity: the test has teeth
        flow.params[key] = value + rng.normal(0.0, 0.3, size=value.shape)
    h = 2 * np.pi / N_GRID
    t = -np.pi + h * (np.arange(N_GRID) + 0.5)
    grid = np.stack(np.meshgrid(t, t, indexing="ij"), axis=-1).reshape(-1, 2)
    log_q = flow.log_prob(grid)
    mass = np.exp(log_q).sum() * h * h
    # zuko's base is uniform on +-(pi + 1e-5): the torus holds (2 pi / (2 pi + 2e-5))^2 of it
    expected = (2 * np.pi / (2 * np.pi + 2e-5)) ** 2
    assert abs(mass - expected) < QUAD_TOL, (mass, expected)
    # and the density is not uniform (the layers do something)
    assert np.ptp(log_q) > 0.1


def test_ncsf_samples_lie_on_the_torus_and_score_consistently():
    flow = NCSF(3, n_layers=2, hidden=(8,), n_bins=4, rng=2)
    x, log_q = flow.sample_and_log_prob(50, rng=3)
    assert (np.abs(x) <= np.pi).all()
    assert np.allclose(flow.log_prob(x), log_q, rtol=1e-10, atol=1e-10)
