"""refflow.datasets: toy samplers and their exact densities, the MAF tabular loaders, digits.

The tabular tests write small synthetic files in exactly the release's formats to ``tmp_path``
and compare the loaders with the MAF preprocessing re-derived here step by step (or with
expected columns worked out by hand), never with the loaders' own output.
"""

import math
import os
import pickle
import sys
import warnings

import numpy as np
import pytest
from scipy import integrate, stats
from scipy.special import i0e

from refflow import datasets
from refflow.data import toys
from refflow.datasets import (
    TABULAR, TOYS, TOYS_WITH_DENSITY, TabularData, load_bsds300, load_digits, load_gas,
    load_hepmass, load_miniboone, load_power, load_tabular, toy, toy_log_prob,
)

# ------------------------------------------------------------------------------------- toys
# Boxes holding all but < 1e-12 of each default density's mass (>= 7 noise standard
# deviations beyond the curves), for the grid quadrature and the histograms.
BOXES = {
    "two_moons": ((-1.8, 2.8), (-1.3, 1.8)),
    "circles": ((-5.0, 5.0), (-5.0, 5.0)),
    "rings": ((-3.8, 3.8), (-3.8, 3.8)),
    "eight_gaussians": ((-5.5, 5.5), (-5.5, 5.5)),
    "checkerboard": ((-4.0, 4.0), (-4.0, 4.0)),
}
# Grid steps: at most a third of the noise standard deviation (0.1, 0.24, 0.08, 0.35), or a
# divisor of the checkerboard's cell.
STEPS = {"two_moons": 0.025, "circles": 0.06, "rings": 0.02, "eight_gaussians": 0.1,
         "checkerboard": 0.25}
# The midpoint rule on a smooth density that vanishes (to < 1e-12) at the box edges converges
# like exp(-2 pi^2 sigma^2 / h^2) < 1e-70 at h <= sigma / 3, and it is exact on a grid aligned
# with the checkerboard's cells; what is left is the moons' quadrature (~1e-12) and round-off.
# 1e-4 would already catch a missing factor; 1e-9 also catches a wrong normalising constant.
ATOL_MASS = 1e-9
# Independent references (scipy.integrate.quad at epsrel 1e-13, closed forms): the moons'
# graded Gauss-Legendre rule is accurate to ~1e-12 relative (module comment); 1e-10 leaves
# room for quad's own error.
RTOL_REFERENCE = 1e-10


def _grid(box, h):
    (x0, x1), (y0, y1) = box
    xs, ys = np.arange(x0 + h / 2, x1, h), np.arange(y0 + h / 2, y1, h)
    gx, gy = np.meshgrid(xs, ys, indexing="ij")
    return np.stack([gx.ravel(), gy.ravel()], axis=1)


@pytest.mark.parametrize("name", TOYS)
def test_toy_shapes_dtype_and_seeding(name):
    a = toy(name, 300, rng=7)
    assert a.shape == (300, 2) and a.dtype == np.float64 and np.isfinite(a).all()
    np.testing.assert_array_equal(a, toy(name, 300, rng=np.random.default_rng(7)))
    np.testing.assert_array_equal(a, getattr(datasets, name)(300, rng=7))
    assert not np.array_equal(a, toy(name, 300, rng=8))
    gen = np.random.default_rng(1)
    assert not np.array_equal(toy(name, 50, rng=gen), toy(name, 50, rng=gen))  # it advances
    assert toy(name, 0, rng=0).shape == (0, 2)


def test_toy_registry_and_errors():
    assert set(TOYS) >= set(TOYS_WITH_DENSITY) and len(TOYS) == 8
    for name in datasets.__all__:
        assert hasattr(datasets, name), name
    with pytest.raises(ValueError, match="unknown toy 'moons'.*two_moons, circles"):
        toy("moons", 10)
    with pytest.raises(TypeError, match="toy"):
        toy(3, 10)
    with pytest.raises(TypeError, match="unexpected parameter 'sigma' for toy 'rings'"):
        toy("rings", 10, sigma=1.0)
    with pytest.raises(ValueError, match="number of samples"):
        toy("circles", -1)
    with pytest.raises(ValueError, match="rng"):
        toy("circles", 3, rng="seed")


@pytest.mark.parametrize("name, params, error", [
    ("two_moons", {"noise": -0.1}, ValueError),
    ("two_moons", {"noise": float("nan")}, ValueError),
    ("two_moons", {"noise": "0.1"}, TypeError),
    ("circles", {"factor": 1.0}, ValueError),
    ("circles", {"factor": -0.5}, ValueError),
    ("circles", {"scale": 0.0}, ValueError),
    ("rings", {"n_rings": 0}, ValueError),
    ("rings", {"n_rings": 2.0}, TypeError),
    ("rings", {"radius": float("inf")}, ValueError),
    ("eight_gaussians", {"radius": -1.0}, ValueError),
    ("checkerboard", {"scale": -2.0}, ValueError),
    ("pinwheel", {"n_arms": 0}, ValueError),
    ("pinwheel", {"radial_std": -0.3}, ValueError),
    ("pinwheel", {"rate": True}, TypeError),
    ("two_spirals", {"noise": -1.0}, ValueError),
    ("swiss_roll", {"noise": None}, TypeError),
])
def test_toy_parameters_are_validated(name, params, error):
    with pytest.raises(error, match=name):
        toy(name, 5, rng=0, **params)


def test_noiseless_toys_lie_on_their_curves():
    """Geometry of each definition, checked with the noise switched off."""
    x = toy("rings", 2000, rng=0, noise=0.0, n_rings=3, radius=1.5)
    radii = np.hypot(x[:, 0], x[:, 1])
    np.testing.assert_allclose(np.sort(np.unique(np.round(radii, 12))), [0.5, 1.0, 1.5])
    x = toy("circles", 2000, rng=0, noise=0.0)
    np.testing.assert_allclose(np.unique(np.round(np.hypot(x[:, 0], x[:, 1]), 12)), [1.5, 3.0])
    x = toy("eight_gaussians", 2000, rng=0, noise=0.0, radius=2.0)
    angles = np.round(np.arctan2(x[:, 1], x[:, 0]) / (np.pi / 4)) % 8
    assert len(np.unique(angles)) == 8
    np.testing.assert_allclose(np.hypot(x[:, 0], x[:, 1]), 2.0, rtol=1e-14)
    x = toy("swiss_roll", 2000, rng=0, noise=0.0)
    t = 5.0 * np.hypot(x[:, 0], x[:, 1])       # x = (t cos t, t sin t) / 5
    assert t.min() >= 1.5 * np.pi - 1e-12 and t.max() <= 4.5 * np.pi + 1e-12
    np.testing.assert_allclose(np.cos(t), 5 * x[:, 0] / t, atol=1e-12)
    np.testing.assert_allclose(np.sin(t), 5 * x[:, 1] / t, atol=1e-12)
    # pinwheel without spread: radius 2, clockwise angle 2 pi k / n_arms + rate * e
    x = toy("pinwheel", 500, rng=0, radial_std=0.0, tangential_std=0.0, n_arms=3)
    np.testing.assert_allclose(np.hypot(x[:, 0], x[:, 1]), 2.0, rtol=1e-14)
    arm = np.round(((-np.arctan2(x[:, 1], x[:, 0]) - 0.25 * np.e) / (2 * np.pi / 3)) % 3)
    np.testing.assert_allclose(
        np.cos(-np.arctan2(x[:, 1], x[:, 0])), np.cos(2 * np.pi * arm / 3 + 0.25 * np.e),
        atol=1e-12)
    assert len(np.unique(arm)) == 3
    # two spirals: the two arms are mirror images through the origin
    x = toy("two_spirals", 4000, rng=0, noise=0.0)
    assert (x[:, 0] > 0).mean() == pytest.approx(0.5, abs=0.05)
    assert np.hypot(x[:, 0], x[:, 1]).max() < (3 * np.pi + 0.75) / 3


@pytest.mark.parametrize("name, params, box, step", [
    ("two_moons", {}, BOXES["two_moons"], STEPS["two_moons"]),
    ("two_moons", {"noise": 0.2}, ((-2.5, 3.5), (-2.0, 2.5)), 0.05),
    ("circles", {}, BOXES["circles"], STEPS["circles"]),
    ("circles", {"factor": 0.3, "noise": 0.05, "scale": 2.0}, ((-3.2, 3.2), (-3.2, 3.2)), 0.03),
    ("rings", {}, BOXES["rings"], STEPS["rings"]),
    ("rings", {"n_rings": 2, "radius": 2.0, "noise": 0.15}, BOXES["rings"], 0.05),
    ("eight_gaussians", {}, BOXES["eight_gaussians"], STEPS["eight_gaussians"]),
    ("eight_gaussians", {"radius": 1.0, "noise": 1.0}, ((-9.0, 9.0), (-9.0, 9.0)), 0.25),
    ("checkerboard", {}, BOXES["checkerboard"], STEPS["checkerboard"]),
    ("checkerboard", {"scale": 1.0}, ((-2.5, 2.5), (-2.5, 2.5)), 0.125),
])
def test_density_integrates_to_one(name, params, box, step):
    """Boxes leave > 7 noise standard deviations beyond the curves (< 1e-12 of the mass)."""
    pts = _grid(box, step)
    mass = np.exp(toy_log_prob(name, pts, **params)).sum() * step ** 2
    assert abs(mass - 1.0) < ATOL_MASS


_GL_X, _GL_W = np.polynomial.legendre.leggauss(6)


def _chi2_pvalue(name, x, params, bins=16):
    """Pearson chi-square p-value of the sample ``x`` against the density with ``params``.

    Bin probabilities by a 6 x 6 Gauss-Legendre rule per bin (relative error < 1e-6 for bins
    of at most 2.5 noise standard deviations, far below the 1/sqrt(400) sampling noise);
    bins expecting fewer than 5 points are pooled with the outside of the box.
    """
    n = x.shape[0]
    (x0, x1), (y0, y1) = BOXES[name]
    ex, ey = np.linspace(x0, x1, bins + 1), np.linspace(y0, y1, bins + 1)
    counts = np.histogram2d(x[:, 0], x[:, 1], bins=[ex, ey])[0].ravel()
    hx, hy = ex[1] - ex[0], ey[1] - ey[0]
    px = (ex[:-1, None] + 0.5 * hx * (1 + _GL_X)).ravel()
    py = (ey[:-1, None] + 0.5 * hy * (1 + _GL_X)).ravel()
    gx, gy = np.meshgrid(px, py, indexing="ij")
    dens = np.exp(toy_log_prob(name, np.stack([gx.ravel(), gy.ravel()], axis=1), **params))
    probs = np.einsum("iajb,a,b->ij", dens.reshape(bins, 6, bins, 6), _GL_W, _GL_W)
    expected = n * probs.ravel() * hx * hy / 4
    big = expected >= 5
    e = np.append(expected[big], n - expected[big].sum())
    o = np.append(counts[big], n - counts[big].sum())
    if e[-1] < 1e-9 * n:            # the pooled remainder carries no mass: it must be empty
        assert o[-1] == 0
        e, o = e[:-1], o[:-1]
    return stats.chi2.sf(((o - e) ** 2 / e).sum(), e.size - 1)


@pytest.mark.parametrize("name, wrong", [
    ("two_moons", {"noise": 0.105}), ("circles", {"factor": 0.52}), ("rings", {"noise": 0.09}),
    ("eight_gaussians", {"noise": 0.37}), ("checkerboard", {"scale": 2.05}),
])
def test_density_matches_histogram_of_sample(name, wrong):
    """The sampler and the density describe the same distribution (100,000 seeded points).

    Under the right density the p-value is uniform on (0, 1), so the fixed seed passes the
    1e-4 threshold unless it is a 1-in-10,000 draw; the same sample scored against a density
    whose parameter is off by 2.5-12 % must be rejected (p < 1e-8), so the test has power.
    """
    x = toy(name, 100_000, rng=20261123)
    assert _chi2_pvalue(name, x, {}) > 1e-4
    assert _chi2_pvalue(name, x, wrong) < 1e-8


def _moons_density_quad(point, sigma):
    """p(x) of two_moons by scipy quad over the sampler's own angle t (no polar reduction)."""
    x, y = point

    def gauss(cx, cy):
        return math.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * sigma ** 2)) / (
            2 * math.pi * sigma ** 2)

    upper = integrate.quad(lambda t: gauss(math.cos(t), math.sin(t)), 0, math.pi,
                           epsabs=0, epsrel=1e-13, limit=500)[0]
    lower = integrate.quad(lambda t: gauss(1 - math.cos(t), 0.5 - math.sin(t)), 0, math.pi,
                           epsabs=0, epsrel=1e-13, limit=500)[0]
    return 0.5 * (upper + lower) / math.pi


def test_two_moons_density_matches_direct_quadrature():
    points = [(0.0, 1.0), (1.0, 0.0), (-1.05, 0.02), (2.0, 0.45), (0.5, 0.25), (1.7, -0.6),
              (0.3, 0.95), (-0.5, -0.5), (2.5, 1.2), (1.0, 2.0), (0.0, 0.0), (1.0, 0.5)]
    for sigma in (0.1, 0.3):
        got = toy_log_prob("two_moons", points, noise=sigma)
        ref = np.log([_moons_density_quad(p, sigma) for p in points])
        np.testing.assert_allclose(got, ref, rtol=RTOL_REFERENCE, atol=0)


def test_ring_density_matches_angular_quadrature():
    sigma, radii = 0.08, [0.75, 1.5, 2.25, 3.0]
    points = [(0.0, 0.0), (0.75, 0.0), (1.1, 1.1), (-2.2, 0.3), (0.1, -3.05), (3.5, 3.5)]
    for x, y in points:
        ring = []
        for r in radii:
            f = lambda th, r=r: math.exp(-((x - r * math.cos(th)) ** 2 + (y - r * math.sin(th))
                                           ** 2) / (2 * sigma ** 2)) / (2 * math.pi * sigma ** 2)
            ring.append(integrate.quad(f, 0, 2 * math.pi, epsabs=0, epsrel=1e-13,
                                       limit=500)[0] / (2 * math.pi))
        got = toy_log_prob("rings", [x, y])
        assert got == pytest.approx(math.log(np.mean(ring)), rel=RTOL_REFERENCE)


def test_eight_gaussians_density_is_the_mixture():
    rng = np.random.default_rng(0)
    x = rng.normal(scale=3.0, size=(20, 2))
    radius, sigma = 4 / 1.414, 0.5 / 1.414
    means = [(radius * math.cos(k * math.pi / 4), radius * math.sin(k * math.pi / 4))
             for k in range(8)]
    ref = np.mean([stats.multivariate_normal(m, sigma ** 2).pdf(x) for m in means], axis=0)
    np.testing.assert_allclose(toy_log_prob("eight_gaussians", x), np.log(ref),
                               rtol=RTOL_REFERENCE)


def test_checkerboard_density_values():
    inside = [[1.0, 1.0], [-3.0, -3.0], [3.0, -1.0], [-1.0, 3.0], [0.0, 0.0], [-4.0, -4.0]]
    outside = [[1.0, -1.0], [-3.0, 3.0], [0.0, -0.5], [4.0, 0.0], [5.0, 5.0], [-4.0, -1.5]]
    np.testing.assert_allclose(toy_log_prob("checkerboard", inside), -math.log(32.0),
                               rtol=1e-15)
    assert np.all(toy_log_prob("checkerboard", outside) == -np.inf)
    samples = toy("checkerboard", 5000, rng=0, scale=0.5)
    assert np.all(toy_log_prob("checkerboard", samples, scale=0.5) == -math.log(8 * 0.25))


def test_arc_integral_against_the_bessel_closed_form():
    """int over the full circle of exp(-2 kappa sin^2((t - phi)/2)) = 2 pi i0e(kappa), and
    splitting the circle anywhere (peaks at end points, far sides) must add up to it."""
    rng = np.random.default_rng(3)
    kappa = 10.0 ** rng.uniform(-3, 12, 400)
    phi = rng.uniform(-np.pi, 3 * np.pi, 400)
    ref = np.log(2 * np.pi * i0e(kappa))
    full = toys._log_arc_integral(kappa, phi, 0.0, 2 * np.pi)
    np.testing.assert_allclose(full, ref, rtol=RTOL_REFERENCE, atol=RTOL_REFERENCE)
    for split in (0.4, np.pi, 5.0):
        first = toys._log_arc_integral(kappa, phi, 0.0, split)
        second = toys._log_arc_integral(kappa, phi, split, 2 * np.pi)
        np.testing.assert_allclose(np.logaddexp(first, second), ref, rtol=RTOL_REFERENCE,
                                   atol=RTOL_REFERENCE)


def test_log_prob_far_away_is_finite_and_quiet():
    far = np.array([[1e3, 1e3], [-1e3, 2.0], [0.5, -1e3], [1e3, -1e3]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for name in ("two_moons", "circles", "rings", "eight_gaussians"):
            lp = toy_log_prob(name, far)
            assert np.all(np.isfinite(lp)) and np.all(lp < -1e4), name
        assert np.all(toy_log_prob("checkerboard", far) == -np.inf)
        # the moons far out: the Gaussian tail of the nearest arc point dominates
        lp = toy_log_prob("two_moons", [[0.0, 1e3]])
        assert lp[0] == pytest.approx(-(1e3 - 1) ** 2 / 0.02, rel=1e-6)


def test_log_prob_shapes_dtypes_and_errors():
    x = toy("two_moons", 7, rng=0)
    lp = toy_log_prob("two_moons", x)
    assert lp.shape == (7,) and lp.dtype == np.float64
    assert toy_log_prob("two_moons", x[3]) == lp[3]
    for name in TOYS_WITH_DENSITY:
        assert toy_log_prob(name, np.zeros((0, 2))).shape == (0,)
    lp32 = toy_log_prob("circles", x.astype(np.float32))
    assert lp32.dtype == np.float64
    np.testing.assert_array_equal(lp32, toy_log_prob("circles", x.astype(np.float32)
                                                     .astype(np.float64)))
    for name in ("pinwheel", "two_spirals", "swiss_roll"):
        with pytest.raises(NotImplementedError, match=f"toy '{name}' has no closed-form"):
            toy_log_prob(name, x)
    with pytest.raises(ValueError, match="noise"):
        toy_log_prob("two_moons", x, noise=0.0)
    with pytest.raises(ValueError, match="unknown toy"):
        toy_log_prob("banana", x)
    with pytest.raises(TypeError, match="unexpected parameter 'scale' for toy 'rings'"):
        toy_log_prob("rings", x, scale=2.0)
    with pytest.raises(ValueError, match="toy_log_prob"):
        toy_log_prob("rings", np.zeros((3, 3)))
    with pytest.raises(ValueError, match="toy_log_prob"):
        toy_log_prob("rings", [[np.nan, 0.0]])


# ----------------------------------------------------------------------------- tabular data
def _write_csv(path, names, rows):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as fh:
        fh.write(",".join(names) + "\n")
        for row in rows:
            fh.write(",".join(repr(float(v)) for v in row) + "\n")


def _marker_pickle(path, marker):
    """A pickle that creates ``marker`` when (and only when) it is unpickled."""
    class Plant:
        def __reduce__(self):
            return os.mkdir, (str(marker),)
    with open(path, "wb") as fh:
        pickle.dump(Plant(), fh)


def _maf_power(raw):
    """maf/datasets/power.py, step by step as published."""
    rng = np.random.RandomState(42)
    data = raw.copy()
    rng.shuffle(data)
    n = data.shape[0]
    data = np.delete(data, 3, axis=1)
    data = np.delete(data, 1, axis=1)
    voltage_noise = 0.01 * rng.rand(n, 1)
    gap_noise = 0.001 * rng.rand(n, 1)
    sm_noise = rng.rand(n, 3)
    time_noise = np.zeros((n, 1))
    data = data + np.hstack((gap_noise, voltage_noise, sm_noise, time_noise))
    n_test = int(0.1 * data.shape[0])
    test, data = data[-n_test:], data[0:-n_test]
    n_val = int(0.1 * data.shape[0])
    val, train = data[-n_val:], data[0:-n_val]
    both = np.vstack((train, val))
    mu, s = both.mean(axis=0), both.std(axis=0)
    return (train - mu) / s, (val - mu) / s, (test - mu) / s


@pytest.fixture
def power_raw(tmp_path):
    rng = np.random.default_rng(0)
    raw = rng.normal(size=(1000, 8)) * np.arange(1, 9) + np.arange(8) * 10
    raw[:, 7] = np.round(rng.uniform(0, 1440, 1000))     # minutes of the day: no noise added
    os.makedirs(tmp_path / "power")
    np.save(tmp_path / "power" / "data.npy", raw)
    return raw


def test_power_reproduces_the_maf_pipeline(tmp_path, power_raw):
    splits = load_power(tmp_path)
    assert isinstance(splits, TabularData) and splits.n_dims == 6
    assert [a.shape[0] for a in splits] == [810, 90, 100]
    for got, ref in zip(splits, _maf_power(power_raw)):
        assert got.dtype == np.float64
        np.testing.assert_allclose(got, ref, rtol=1e-15, atol=1e-15)
    both = np.vstack(splits[:2])
    np.testing.assert_allclose(both.mean(axis=0), 0.0, atol=1e-13)
    np.testing.assert_allclose(both.std(axis=0), 1.0, rtol=1e-13)
    assert np.all(np.abs(splits.train.mean(axis=0)) < 0.15)   # 90 % of the normalised rows
    same = load_power(str(tmp_path))
    for a, b in zip(splits, same):
        np.testing.assert_array_equal(a, b)


def _maf_miniboone(raw):
    n_test = int(0.1 * raw.shape[0])
    test, data = raw[-n_test:], raw[0:-n_test]
    n_val = int(0.1 * data.shape[0])
    val, train = data[-n_val:], data[0:-n_val]
    both = np.vstack((train, val))
    mu, s = both.mean(axis=0), both.std(axis=0)
    return (train - mu) / s, (val - mu) / s, (test - mu) / s


def test_miniboone_split_and_normalisation(tmp_path):
    raw = np.random.default_rng(1).normal(size=(363, 43)) * 5 + 2
    os.makedirs(tmp_path / "miniboone")
    np.save(tmp_path / "miniboone" / "data.npy", raw.astype(np.float32))
    splits = load_miniboone(tmp_path)
    assert splits.n_dims == 43 and [a.shape[0] for a in splits] == [295, 32, 36]
    for got, ref in zip(splits, _maf_miniboone(raw.astype(np.float32).astype(np.float64))):
        assert got.dtype == np.float64
        np.testing.assert_allclose(got, ref, rtol=1e-15, atol=1e-15)
    train, validation, test = load_tabular("miniboone", tmp_path)      # unpacks
    np.testing.assert_array_equal(test, splits.test)


def _gas_rows(rng, n=400):
    base = rng.normal(size=(n, 16))
    base[:, 3] = 1.5 * base[:, 1] + 0.01 * rng.normal(size=n)      # corr(S1, S3) > 0.98
    base[:, 7] = base[:, 2] + 0.001 * rng.normal(size=n)           # corr(S2, S7) > 0.98
    meta = np.column_stack([np.arange(n) * 0.01, rng.uniform(0, 50, n), rng.uniform(0, 20, n)])
    return np.column_stack([meta, base])


GAS_NAMES = ["Time", "Meth", "Eth"] + [f"S{i}" for i in range(16)]


def test_gas_drops_correlated_columns_and_standardises(tmp_path):
    rows = _gas_rows(np.random.default_rng(2))
    _write_csv(str(tmp_path / "gas" / "ethylene_CO.csv"), GAS_NAMES, rows)
    splits = load_gas(tmp_path)
    # S1 (first with a partner above 0.98) goes, then S2; S3 and S7 stay
    kept = [0] + list(range(3, 16))
    assert splits.n_dims == 14 and [a.shape[0] for a in splits] == [324, 36, 40]
    sensors = rows[:, 3:][:, kept]
    expected = (sensors - sensors.mean(axis=0)) / sensors.std(axis=0, ddof=1)
    np.testing.assert_allclose(np.vstack(splits), expected, rtol=1e-13, atol=1e-13)
    again = load_gas(tmp_path)
    np.testing.assert_array_equal(again.train, splits.train)


def test_gas_drops_every_column_of_a_repeated_name(tmp_path):
    """pandas' DataFrame.drop(name) removes every column carrying that name."""
    rng = np.random.default_rng(3)
    rows = _gas_rows(rng)
    names = list(GAS_NAMES)
    rows[:, 3 + 1] = rng.normal(size=rows.shape[0])             # S1 independent again
    rows[:, 3 + 7] = rng.normal(size=rows.shape[0])             # S7 independent again
    names[3 + 9] = "S2"                                         # S9 renamed S2 (a duplicate)
    rows[:, 3 + 2] = rows[:, 3 + 15] * 2 + 0.001 * rng.normal(size=rows.shape[0])
    _write_csv(str(tmp_path / "gas" / "ethylene_CO.csv"), names, rows)
    splits = load_gas(tmp_path)
    kept = [i for i in range(16) if i not in (2, 9)]           # both columns named S2 go
    sensors = rows[:, 3:][:, kept]
    expected = (sensors - sensors.mean(axis=0)) / sensors.std(axis=0, ddof=1)
    np.testing.assert_allclose(np.vstack(splits), expected, rtol=1e-13, atol=1e-13)


def test_gas_refuses_to_unpickle(tmp_path):
    os.makedirs(tmp_path / "gas")
    marker = tmp_path / "unpickled"
    _marker_pickle(tmp_path / "gas" / "ethylene_CO.pickle", marker)
    with pytest.raises(FileNotFoundError, match="never unpickles") as info:
        load_gas(tmp_path)
    message = str(info.value)
    assert "pd.read_pickle('gas/ethylene_CO.pickle')" in message
    assert ".to_csv('gas/ethylene_CO.csv', index=False)" in message
    assert not marker.exists()
    os.remove(tmp_path / "gas" / "ethylene_CO.pickle")
    with pytest.raises(FileNotFoundError, match="ethylene_CO.csv.*does not exist"):
        load_gas(tmp_path)


def _hepmass_files(tmp_path, rng, n_train=300, n_test=120, test_extra="mass"):
    names = ["# label"] + [f"f{i}" for i in range(27)]

    def rows(n):
        feats = rng.normal(size=(n, 27))
        feats[:, 5] = rng.integers(0, 3, n) * 1.08          # discrete: smallest value repeats
        feats[:, 9] = np.maximum(feats[:, 9], -0.5)         # clipped below: the minimum repeats
        feats[:, 12] = np.minimum(feats[:, 12], 0.5)        # clipped above: only the max repeats
        return np.column_stack([rng.integers(0, 2, n), feats])

    train, test = rows(n_train), rows(n_test)
    _write_csv(str(tmp_path / "hepmass" / "1000_train.csv"), names, train)
    extra = [test_extra] if test_extra else []
    test_rows = np.column_stack([test] + ([np.full(n_test, 1000.0)] if extra else []))
    _write_csv(str(tmp_path / "hepmass" / "1000_test.csv"), names + extra, test_rows)
    return train, test


def test_hepmass_preprocessing(tmp_path):
    train_raw, test_raw = _hepmass_files(tmp_path, np.random.default_rng(4))
    splits = load_hepmass(tmp_path)
    pos_train = train_raw[train_raw[:, 0] == 1, 1:]
    pos_test = test_raw[test_raw[:, 0] == 1, 1:]
    kept = [j for j in range(27) if j not in (5, 9)]      # f12's repeated value is its max
    assert splits.n_dims == 25
    n_val = int(0.1 * pos_train.shape[0])
    assert [a.shape[0] for a in splits] == [pos_train.shape[0] - n_val, n_val, pos_test.shape[0]]
    mu, s = pos_train.mean(axis=0), pos_train.std(axis=0, ddof=1)
    np.testing.assert_allclose(np.vstack(splits[:2]), ((pos_train - mu) / s)[:, kept],
                               rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(splits.test, ((pos_test - mu) / s)[:, kept], rtol=1e-13,
                               atol=1e-13)
    both = np.vstack(splits[:2])
    np.testing.assert_allclose(both.mean(axis=0), 0.0, atol=1e-13)
    np.testing.assert_allclose(both.std(axis=0, ddof=1), 1.0, rtol=1e-13)


def test_hepmass_test_file_without_the_extra_column(tmp_path):
    """Both files with the same columns: MAF still drops the test file's last column, which is
    harmless only when that feature is removed as discrete anyway."""
    rng = np.random.default_rng(5)
    train_raw, test_raw = _hepmass_files(tmp_path, rng, test_extra=None)
    with pytest.raises(ValueError, match="last feature.*NaN"):
        load_hepmass(tmp_path)
    names = ["# label"] + [f"f{i}" for i in range(27)]
    for raw, part in ((train_raw, "train"), (test_raw, "test")):
        raw[:, 27] = rng.integers(0, 2, raw.shape[0])          # make f26 discrete
        _write_csv(str(tmp_path / "hepmass" / f"1000_{part}.csv"), names, raw)
    splits = load_hepmass(tmp_path)
    assert splits.n_dims == 24 and splits.test.shape[1] == 24


def test_hepmass_bad_files(tmp_path):
    _hepmass_files(tmp_path, np.random.default_rng(6))
    path = tmp_path / "hepmass" / "1000_test.csv"
    text = path.read_text().splitlines()
    path.write_text("\n".join(text[:1] + ["1," + text[1].split(",", 2)[2]] + text[2:]) + "\n")
    with pytest.raises(ValueError, match="1000_test.csv.*comma-separated"):
        load_hepmass(tmp_path)
    path.write_text(text[0].replace("f3", "g3") + "\n" + "\n".join(text[1:]) + "\n")
    with pytest.raises(ValueError, match="header names.*differ"):
        load_hepmass(tmp_path)
    path.write_text(text[0] + ",extra\n" + "\n".join(r + ",0" for r in text[1:]) + "\n")
    with pytest.raises(ValueError, match="feature columns"):
        load_hepmass(tmp_path)
    fields = text[3].split(",")
    fields[4] = "nan"
    path.write_text("\n".join(text[:3] + [",".join(fields)] + text[4:]) + "\n")
    with pytest.raises(ValueError, match="1000_test.csv.*NaN"):
        load_hepmass(tmp_path)
    path.write_text("\n".join([text[0]] + ["0" + r[r.index(","):] for r in text[1:]]) + "\n")
    with pytest.raises(ValueError, match="no signal rows"):
        load_hepmass(tmp_path)
    path.write_text("")
    with pytest.raises(ValueError, match="empty"):
        load_hepmass(tmp_path)
    os.remove(path)
    with pytest.raises(FileNotFoundError, match="1000_test.csv"):
        load_hepmass(tmp_path)


@pytest.mark.parametrize("loader, folder, filename, n_cols, constant_col, reported_col", [
    # POWER adds noise to every column but time (raw column 7, column 5 once 1 and 3 are gone)
    (load_power, "power", "data.npy", 8, 7, 5),
    (load_miniboone, "miniboone", "data.npy", 43, 4, 4),
])
def test_npy_loaders_bad_files(tmp_path, loader, folder, filename, n_cols, constant_col,
                               reported_col):
    path = tmp_path / folder / filename
    name = loader.__name__
    with pytest.raises(FileNotFoundError, match=f"{name}.*{folder}.*does not exist"):
        loader(tmp_path)
    with pytest.raises(FileNotFoundError, match=f"{name}.*data directory"):
        loader(tmp_path / "nowhere")
    with pytest.raises(TypeError, match=name):
        loader(42)
    os.makedirs(path.parent)
    rng = np.random.default_rng(0)
    np.save(path, rng.normal(size=(50, n_cols - 1)))
    with pytest.raises(ValueError, match=f"{name}.*{filename}.*{n_cols} columns"):
        loader(tmp_path)
    bad = rng.normal(size=(50, n_cols))
    bad[7, 2] = np.nan
    np.save(path, bad)
    with pytest.raises(ValueError, match=r"NaN or infinite.*\(7, 2\)"):
        loader(tmp_path)
    np.save(path, rng.normal(size=(9, n_cols)))
    with pytest.raises(ValueError, match="too few rows"):
        loader(tmp_path)
    constant = rng.normal(size=(50, n_cols))
    constant[:, constant_col] = 3.0
    np.save(path, constant)
    with pytest.raises(ValueError, match=f"column {reported_col} .*constant"):
        loader(tmp_path)
    marker = tmp_path / "unpickled"

    class Plant:
        def __reduce__(self):
            return os.mkdir, (str(marker),)
    np.save(path, np.array([Plant()] * 3, dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match=f"{name}.*could not read"):
        loader(tmp_path)
    assert not marker.exists()
    path.write_bytes(b"not a numpy file at all")
    with pytest.raises(ValueError, match="could not read"):
        loader(tmp_path)
    with open(path, "wb") as fh:
        np.savez(fh, a=np.zeros((50, n_cols)))
    with pytest.raises(ValueError, match="npz"):
        loader(tmp_path)


def test_gas_bad_files(tmp_path):
    path = str(tmp_path / "gas" / "ethylene_CO.csv")
    rows = _gas_rows(np.random.default_rng(7))
    _write_csv(path, GAS_NAMES[:-1], rows[:, :-1])
    with pytest.raises(ValueError, match="load_gas.*19 columns.*found 18"):
        load_gas(tmp_path)
    _write_csv(path, ["Tim"] + GAS_NAMES[1:], rows)
    with pytest.raises(ValueError, match="missing Time"):
        load_gas(tmp_path)
    _write_csv(path, GAS_NAMES, rows)
    with open(path) as fh:
        lines = fh.read().splitlines()
    with open(path, "w") as fh:
        fh.write("\n".join(lines[:5] + [lines[5].rsplit(",", 1)[0]] + lines[6:]) + "\n")
    with pytest.raises(ValueError, match="ethylene_CO.csv.*lines"):
        load_gas(tmp_path)
    with open(path, "w") as fh:
        fh.write("\n".join(lines[:5] + [lines[5].replace(",", ",abc,", 1).rsplit(",", 1)[0]]
                           + lines[6:]) + "\n")
    with pytest.raises(ValueError, match="ethylene_CO.csv"):
        load_gas(tmp_path)
    rows[10, 8] = np.inf
    _write_csv(path, GAS_NAMES, rows)
    with pytest.raises(ValueError, match="ethylene_CO.csv.*NaN or infinite.*row 10"):
        load_gas(tmp_path)
    rows[10, 8] = 0.0
    rows[:, 8] = 1.0
    _write_csv(path, GAS_NAMES, rows)
    with pytest.raises(ValueError, match="constant"):
        load_gas(tmp_path)
    _write_csv(path, GAS_NAMES, [])
    with pytest.raises(ValueError, match="no data rows"):
        load_gas(tmp_path)


def test_bsds300(tmp_path):
    h5py = pytest.importorskip("h5py")
    path = tmp_path / "BSDS300" / "BSDS300.hdf5"
    os.makedirs(path.parent)
    rng = np.random.default_rng(8)
    data = {"train": rng.normal(size=(40, 63)), "validation": rng.normal(size=(6, 63)),
            "test": rng.normal(size=(9, 63))}
    with h5py.File(path, "w") as fh:
        for key, value in data.items():
            fh.create_dataset(key, data=value.astype(np.float32))
    splits = load_bsds300(tmp_path)
    assert splits.n_dims == 63
    for got, key in zip(splits, ("train", "validation", "test")):
        assert got.dtype == np.float64
        np.testing.assert_array_equal(got, data[key].astype(np.float32))
    with h5py.File(path, "a") as fh:
        del fh["validation"]
    with pytest.raises(ValueError, match="BSDS300.hdf5.*no dataset 'validation'"):
        load_bsds300(tmp_path)
    with h5py.File(path, "a") as fh:
        fh.create_dataset("validation", data=np.zeros((6, 62)))
    with pytest.raises(ValueError, match="63 columns"):
        load_bsds300(tmp_path)
    with h5py.File(path, "a") as fh:
        del fh["validation"]
        fh.create_dataset("validation", data=np.full((6, 63), np.nan))
    with pytest.raises(ValueError, match="NaN"):
        load_bsds300(tmp_path)
    path.write_bytes(b"not hdf5")
    with pytest.raises(ValueError, match="HDF5"):
        load_bsds300(tmp_path)


def test_bsds300_without_h5py(tmp_path, monkeypatch):
    os.makedirs(tmp_path / "BSDS300")
    (tmp_path / "BSDS300" / "BSDS300.hdf5").write_bytes(b"")
    monkeypatch.setitem(sys.modules, "h5py", None)
    with pytest.raises(ImportError, match="pip install h5py"):
        load_bsds300(tmp_path)


def test_load_tabular_dispatch(tmp_path):
    assert TABULAR == ("power", "gas", "hepmass", "miniboone", "bsds300")
    with pytest.raises(ValueError, match="unknown data set 'mnist'.*power, gas"):
        load_tabular("mnist", tmp_path)
    with pytest.raises(TypeError, match="load_tabular"):
        load_tabular(None, tmp_path)
    for name in TABULAR:
        with pytest.raises(FileNotFoundError):
            load_tabular(name, tmp_path)


# ----------------------------------------------------------------------------------- digits
def test_load_digits():
    sk = pytest.importorskip("sklearn.datasets")
    raw = sk.load_digits().data
    x = load_digits(rng=0)
    assert x.shape == (1797, 64) and x.dtype == np.float64
    assert np.all(x > 0) and np.all(x < 1)
    # x = (k + u) / 17 with u in [0, 1): 17 x - k lies in [0, 1) up to one rounding
    u = 17 * x - raw
    assert u.min() >= -1e-13 and u.max() < 1 + 1e-13
    assert stats.kstest(u.ravel(), "uniform").pvalue > 1e-4
    np.testing.assert_array_equal(x, load_digits(rng=np.random.default_rng(0)))
    assert not np.array_equal(x, load_digits(rng=1))
    np.testing.assert_array_equal(load_digits(dequantize=False), raw)
    with pytest.raises(TypeError, match="dequantize"):
        load_digits(dequantize="yes")


def test_load_digits_without_sklearn(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(ImportError, match="load_digits.*pip install scikit-learn"):
        load_digits(rng=0)


def test_potentials_are_reexported():
    from refflow.data import potentials
    assert datasets.rezende_potential is potentials.rezende_potential
    assert datasets.POTENTIALS is potentials.POTENTIALS
