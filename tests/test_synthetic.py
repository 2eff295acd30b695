"""The synthetic sets: each log-density is normalised and is the density of its sampler."""

import numpy as np
import pytest
from scipy import integrate, stats

from refflow.data import SYNTHETIC, synthetic, synthetic_log_prob
from refflow.data import synthetic_sets as synthetic_module

#: Two-dimensional trapezoid integrals of smooth densities that vanish at the box's edges
#: converge fast; 1e-5 is well above their error at the grids below and far below what a wrong
#: Jacobian or constant (a factor of 2, or a scale of 1e3) would give.
INTEGRAL_TOL = 1e-5
#: Statistical checks: an estimate within this many standard errors of its expected value
#: (the probability of exceeding it by chance is below 1e-6 per entry).
N_SE = 5.0
#: scipy's quad on a one-dimensional density reaches ~1e-10; a wrong constant moves it by more.
QUAD_TOL = 1e-8


def _grid_integral(name, lows, highs, counts, **params):
    axes = [np.linspace(lo, hi, k) for lo, hi, k in zip(lows, highs, counts)]
    g0, g1 = np.meshgrid(*axes, indexing="ij")
    lp = synthetic_log_prob(name, np.column_stack([g0.ravel(), g1.ravel()]), **params)
    p = np.exp(lp).reshape(g0.shape)
    return integrate.trapezoid(integrate.trapezoid(p, axes[1], axis=1), axes[0])


@pytest.mark.parametrize("name, lows, highs, counts", [
    ("curve", (-9.0, -3.0), (9.0, 3.0), (1801, 1201)),
    ("skew_mixture", (-30.0, -30.0), (30.0, 30.0), (3001, 3001)),
    # scales 1e-3 and 1e3: the box is 40 source units along each feature
    ("scaled_ica", (-0.04, -4e4), (0.04, 4e4), (2001, 2001)),
])
def test_two_dimensional_densities_integrate_to_one(name, lows, highs, counts):
    total = _grid_integral(name, lows, highs, counts, dim=2)
    assert abs(total - 1.0) < INTEGRAL_TOL


@pytest.mark.parametrize("kind", synthetic_module._ICA_SOURCES)
def test_sources_integrate_to_one(kind):
    total, err = integrate.quad(lambda s: np.exp(synthetic_module._source_log_prob(
        kind, np.array([s])))[0], -np.inf, np.inf, limit=200)
    assert abs(total - 1.0) < QUAD_TOL


@pytest.mark.parametrize("epsilon, delta", [(-0.5, 0.8), (0.5, 1.2), (0.3, 0.9), (0.5, 0.7)])
def test_sinh_arcsinh_density_integrates_to_one(epsilon, delta):
    total, _ = integrate.quad(lambda u: np.exp(synthetic_module._sas_log_prob(
        np.array([u]), epsilon, delta))[0], -np.inf, np.inf, limit=200)
    assert abs(total - 1.0) < QUAD_TOL


@pytest.mark.parametrize("dim, df", [(1, 1.0), (2, 3.0), (8, 3.0), (5, 7.5)])
def test_student_t_matches_scipy(dim, df):
    x = synthetic("student_t", 50, rng=0, dim=dim, df=df)
    i = np.arange(dim)
    shape = synthetic_module._T_RHO ** np.abs(i[:, None] - i[None, :])
    expected = stats.multivariate_t(loc=np.zeros(dim), shape=shape, df=df).logpdf(x)
    np.testing.assert_allclose(synthetic_log_prob("student_t", x, dim=dim, df=df),
                               np.atleast_1d(expected), rtol=1e-12, atol=1e-12)


def _score(name, x, **params):
    """``grad log p`` by central differences with a step relative to each feature's spread
    (truncation error ~h^2, far below the statistical tolerance)."""
    h = 1e-5 * x.std(axis=0)
    g = np.empty_like(x)
    for k in range(x.shape[1]):
        e = np.zeros(x.shape[1])
        e[k] = h[k]
        g[:, k] = (synthetic_log_prob(name, x + e, **params)
                   - synthetic_log_prob(name, x - e, **params)) / (2 * h[k])
    return g


@pytest.mark.parametrize("name", SYNTHETIC)
def test_density_is_the_samplers(name):
    """Stein's identities hold under the sampler only for the sampler's own density p:
    ``E[d_k log p(x)] = 0`` and ``E[x_j d_k log p(x)] = -delta_jk`` (integration by parts of
    ``x_j p(x)``). A density of another law (a wrong rotation, mean, scale or skew) breaks
    them."""
    x = synthetic(name, 20000, rng=1)
    n, dim = x.shape
    g = _score(name, x)
    mean_g = g.mean(axis=0)
    se_g = g.std(axis=0) / np.sqrt(n)
    assert np.all(np.abs(mean_g) < N_SE * se_g)
    prod = x[:, :, None] * g[:, None, :]
    m = prod.mean(axis=0)
    se = prod.std(axis=0) / np.sqrt(n)
    assert np.all(np.abs(m + np.eye(dim)) < N_SE * se + 1e-12)
    # the check has power: the same statistic under a shifted sampler fails
    bad = x + 0.3 * x.std(axis=0)
    assert not np.all(np.abs(_score(name, bad).mean(axis=0)) < N_SE * se_g)


@pytest.mark.parametrize("name", SYNTHETIC)
def test_seeded_and_shaped(name):
    a = synthetic(name, 7, rng=3)
    assert a.dtype == np.float64 and a.shape[0] == 7
    np.testing.assert_array_equal(a, synthetic(name, 7, rng=3))
    lp = synthetic_log_prob(name, a)
    assert lp.shape == (7,) and np.isfinite(lp).all()
    assert np.isfinite(synthetic_log_prob(name, a[0]))
    # far points (20 spreads out on every feature) stay finite; further out the Gumbel
    # source's left tail, log p = -s - exp(-s), is honestly below -1e308
    far = 20.0 * synthetic(name, 2000, rng=4).std(axis=0)
    assert np.isfinite(synthetic_log_prob(name, np.vstack([far, -far]))).all()


def test_bad_input():
    with pytest.raises(ValueError, match="unknown synthetic set"):
        synthetic("nope", 3)
    with pytest.raises(TypeError, match="must be a str"):
        synthetic_log_prob(3, np.zeros((1, 4)))
    with pytest.raises(TypeError, match="unexpected parameter 'noise'"):
        synthetic("student_t", 3, noise=0.1)
    with pytest.raises(ValueError, match="synthetic_log_prob"):
        synthetic_log_prob("curve", np.zeros((2, 5)))        # dim 4 by default
    with pytest.raises(ValueError, match="noise"):
        synthetic("curve", 3, noise=0.0)
    with pytest.raises(ValueError, match="dim"):
        synthetic("skew_mixture", 3, dim=1)
