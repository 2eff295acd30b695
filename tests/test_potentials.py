"""The Rezende-Mohamed potentials U1-U4 (refflow.data.potentials)."""

import math

import numpy as np
import pytest

from refflow.data.potentials import POTENTIALS, rezende_potential
from refflow.testing import RTOL_FD, jacobian_fd

# The same closed form evaluated two ways in float64 (different operation order): a few ulps
# of the largest term.
RTOL_EXACT = 1e-12
# log Z by two independent quadratures (tensor trapezoid vs polar Gauss-Legendre x periodic
# trapezoid) of a smooth integrand: both far more accurate than this.
RTOL_QUADRATURE = 1e-9


# --------------------------------------------------- Table 1, written out independently
def table1(name, z1, z2):
    """-U(z) straight from Table 1 of Rezende & Mohamed (2015), scalar math."""
    w1 = math.sin(2 * math.pi * z1 / 4)
    w2 = 3 * math.exp(-0.5 * ((z1 - 1) / 0.6) ** 2)
    w3 = 3 / (1 + math.exp(-(z1 - 1) / 0.3))
    if name == "U1":
        u = 0.5 * ((math.sqrt(z1 ** 2 + z2 ** 2) - 2) / 0.4) ** 2 - math.log(
            math.exp(-0.5 * ((z1 - 2) / 0.6) ** 2) + math.exp(-0.5 * ((z1 + 2) / 0.6) ** 2))
    elif name == "U2":
        u = 0.5 * ((z2 - w1) / 0.4) ** 2
    elif name == "U3":
        u = -math.log(math.exp(-0.5 * ((z2 - w1) / 0.35) ** 2)
                      + math.exp(-0.5 * ((z2 - w1 + w2) / 0.35) ** 2))
    else:
        u = -math.log(math.exp(-0.5 * ((z2 - w1) / 0.4) ** 2)
                      + math.exp(-0.5 * ((z2 - w1 + w3) / 0.35) ** 2))
    return -u


POINTS = [(0.0, 0.0), (1.0, 1.0), (2.0, 0.0), (-1.5, 0.7), (0.3, -2.2), (3.9, -0.1), (-3.2, 1.4)]


@pytest.mark.parametrize("name", POTENTIALS)
def test_values_match_table_1(name):
    pot = rezende_potential(name)
    x = np.array(POINTS)
    expected = [table1(name, *p) for p in POINTS]
    # inside the band |z1| <= 4 the envelope is exactly 1
    np.testing.assert_allclose(pot(x)[0], expected, rtol=RTOL_EXACT, atol=RTOL_EXACT)
    np.testing.assert_allclose(rezende_potential(name, envelope=None)(x)[0], expected,
                               rtol=RTOL_EXACT, atol=RTOL_EXACT)


def test_hand_computed_values():
    # U1 at (2, 0): on the ring, the bump at z1 = 2 is 1, the other exp(-0.5 (4/0.6)^2)
    assert rezende_potential("U1")(np.array([2.0, 0.0]))[0] == pytest.approx(
        math.log1p(math.exp(-0.5 * (4 / 0.6) ** 2)), rel=RTOL_EXACT)
    # U2 at (1, 1): w1 = sin(pi/2) = 1 = z2, so U2 = 0; at (0, 0.4): one sd away, -1/2
    np.testing.assert_allclose(rezende_potential("U2")(np.array([[1.0, 1.0], [0.0, 0.4]]))[0],
                               [0.0, -0.5], atol=1e-15)
    # U3 at (1, -1.5): w1 = 1, w2 = 3; both bumps at distance 2.5 and 0.5 from z2 - w1 + ...
    a, b = -0.5 * (-2.5 / 0.35) ** 2, -0.5 * (0.5 / 0.35) ** 2
    assert rezende_potential("U3")(np.array([1.0, -1.5]))[0] == pytest.approx(
        math.log(math.exp(a) + math.exp(b)), rel=RTOL_EXACT)
    # U4 at (1, 1): w1 = 1, w3 = 3/2; bumps at 0 (sd 0.4) and 1.5 (sd 0.35)
    assert rezende_potential("U4")(np.array([1.0, 1.0]))[0] == pytest.approx(
        math.log(1.0 + math.exp(-0.5 * (1.5 / 0.35) ** 2)), rel=RTOL_EXACT)


# -------------------------------------------------------------------- gradients vs FD
@pytest.mark.parametrize("envelope", ["box", None])
@pytest.mark.parametrize("name", POTENTIALS)
def test_gradient_matches_finite_differences(name, envelope, rng):
    pot = rezende_potential(name, envelope=envelope)
    x = np.concatenate([rng.uniform(-6, 6, size=(40, 2)), rng.normal(0, 2, size=(20, 2))])
    x = x[np.hypot(*x.T) > 0.05]  # U1's cone point at the origin is not differentiable
    x = x[np.abs(np.abs(x[:, 0]) - 4.0) > 0.01]  # nor is the envelope's second derivative at 4
    _, grad = pot(x)
    fd = jacobian_fd(lambda v: pot(v)[0][:, None], x)[:, 0, :]
    error = np.abs(grad - fd).max(axis=1) / np.maximum(1.0, np.abs(fd).max(axis=1))
    assert error.max() < RTOL_FD


@pytest.mark.parametrize("name", POTENTIALS)
def test_far_points_are_finite(name):
    x = np.array([[1e3, -1e3], [-1e3, 1e3], [1e3, 0.0], [0.0, 1e3], [1e5, 1e5]])
    log_p, grad = rezende_potential(name)(x)
    assert np.isfinite(log_p).all() and np.isfinite(grad).all()
    assert (log_p < -1e5).all()


def test_u1_origin_gradient_is_the_zero_subgradient_of_the_ring():
    # at the origin only the two-bump term (symmetric in z1) contributes: gradient 0
    _, grad = rezende_potential("U1")(np.zeros(2))
    np.testing.assert_array_equal(grad, [0.0, 0.0])


# ------------------------------------------------------------------------ symmetries
def test_u1_is_symmetric_in_both_axes(rng):
    pot = rezende_potential("U1")
    x = rng.uniform(-5, 5, size=(50, 2))
    lp, g = pot(x)
    for sign in ([-1, 1], [1, -1], [-1, -1]):
        lp_m, g_m = pot(x * sign)
        np.testing.assert_allclose(lp_m, lp, rtol=RTOL_EXACT)
        np.testing.assert_allclose(g_m, g * sign, rtol=RTOL_EXACT, atol=1e-12)


def test_u2_is_periodic_and_point_symmetric(rng):
    pot = rezende_potential("U2", envelope=None)
    x = rng.uniform(-4, 4, size=(50, 2))
    lp, g = pot(x)
    np.testing.assert_allclose(pot(x + [4.0, 0.0])[0], lp, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(pot(-x)[0], lp, rtol=RTOL_EXACT, atol=1e-12)
    np.testing.assert_allclose(pot(-x)[1], -g, rtol=RTOL_EXACT, atol=1e-12)


def test_u3_u4_far_from_the_split():
    # far left of z1 = 1 (w2 ~ e^-100, w3 ~ 3 e^-43) the two bumps of U3 coincide (log 2 plus
    # one Gaussian); those of U4 differ only in width
    z1 = -12.0
    z2 = np.array([-0.3, 0.0, 0.5])
    x = np.stack([np.full(3, z1), z2], axis=1)
    d = z2 - math.sin(math.pi * z1 / 2)
    u3 = rezende_potential("U3", envelope=None)(x)[0]
    np.testing.assert_allclose(u3, math.log(2.0) - 0.5 * (d / 0.35) ** 2, rtol=RTOL_EXACT)
    u4 = rezende_potential("U4", envelope=None)(x)[0]
    np.testing.assert_allclose(u4, np.logaddexp(-0.5 * (d / 0.4) ** 2, -0.5 * (d / 0.35) ** 2),
                               rtol=1e-10)


# -------------------------------------------------------------- envelope and log Z
@pytest.mark.parametrize("name", POTENTIALS)
def test_envelope_is_exactly_the_soft_box(name, rng):
    boxed = rezende_potential(name, bound=3.0, width=0.7)
    bare = rezende_potential(name, envelope=None)
    x = rng.uniform(-7, 7, size=(200, 2))
    excess = np.maximum(np.abs(x[:, 0]) - 3.0, 0.0)
    np.testing.assert_allclose(boxed(x)[0], bare(x)[0] - 0.5 * (excess / 0.7) ** 2, rtol=1e-13)
    inside = excess == 0
    np.testing.assert_array_equal(boxed(x[inside])[0], bare(x[inside])[0])
    np.testing.assert_array_equal(boxed(x[inside])[1], bare(x[inside])[1])


@pytest.mark.parametrize("name", ["U2", "U3", "U4"])
def test_mass_along_z2_is_the_same_for_every_z1(name):
    """The fact behind the closed-form log Z (and behind U2-U4 being improper)."""
    pot = rezende_potential(name, envelope=None)
    z2 = np.linspace(-12, 12, 24001)
    expected = {"U2": 0.4, "U3": 0.7, "U4": 0.75}[name] * math.sqrt(2 * math.pi)
    for z1 in (-3.3, -0.5, 0.0, 0.9, 1.0, 1.6, 2.7):
        density = np.exp(pot(np.stack([np.full_like(z2, z1), z2], axis=1))[0])
        mass = np.sum(density) * (z2[1] - z2[0])  # trapezoid: end points are ~e^-400
        assert mass == pytest.approx(expected, rel=RTOL_QUADRATURE)


def test_log_normalizer_of_u2_u4_by_quadrature():
    for name in ("U2", "U3", "U4"):
        pot = rezende_potential(name, bound=2.0, width=0.8)
        h = 0.01
        grid = np.arange(-8.0, 8.0 + h / 2, h)
        z = np.stack(np.meshgrid(grid, grid, indexing="ij"), axis=-1).reshape(-1, 2)
        total = np.exp(pot(z)[0]).sum() * h * h
        # the only non-smooth point is |z1| = bound (a jump in the third derivative of the
        # density), where the trapezoid rule is O(h^2)-accurate: ~1e-6 here
        assert pot.log_normalizer == pytest.approx(math.log(total), abs=1e-5)
        assert pot.log_normalizer == pytest.approx(
            math.log({"U2": 0.4, "U3": 0.7, "U4": 0.75}[name] * math.sqrt(2 * math.pi)
                     * (4.0 + 0.8 * math.sqrt(2 * math.pi))), rel=RTOL_EXACT)
    assert rezende_potential("U3", envelope=None).log_normalizer == math.inf


@pytest.mark.parametrize("envelope", ["box", None])
def test_log_normalizer_of_u1_by_polar_quadrature(envelope):
    """U1 in polar coordinates: Gauss-Legendre in r on [0, 6] (40 panels x 20 nodes) times the
    periodic trapezoid rule in theta, independent of the module's Cartesian grid."""
    pot = rezende_potential("U1", envelope=envelope)
    nodes, weights = np.polynomial.legendre.leggauss(20)
    edges = np.linspace(0.0, 6.0, 41)
    mid, half = (edges[:-1, None] + edges[1:, None]) / 2, (edges[1:, None] - edges[:-1, None]) / 2
    r = (mid + half * nodes).ravel()
    w_r = (half * weights).ravel()
    theta = np.linspace(0, 2 * np.pi, 512, endpoint=False)
    rr, tt = np.meshgrid(r, theta, indexing="ij")
    z = np.stack([rr * np.cos(tt), rr * np.sin(tt)], axis=-1).reshape(-1, 2)
    density = np.exp(pot(z)[0]).reshape(rr.shape)
    total = np.sum(w_r[:, None] * r[:, None] * density) * (2 * np.pi / 512)
    assert pot.log_normalizer == pytest.approx(math.log(total), rel=RTOL_QUADRATURE)


# ---------------------------------------------------------------------- API and errors
def test_shapes_dtypes_and_single_points(rng):
    pot = rezende_potential("U3")
    x = rng.normal(size=(7, 2)).astype(np.float32)
    log_p, grad = pot(x)
    assert log_p.shape == (7,) and grad.shape == (7, 2)
    assert log_p.dtype == grad.dtype == np.float64
    lp0, g0 = pot(x[0])
    assert np.ndim(lp0) == 0 and g0.shape == (2,)
    assert lp0 == log_p[0] and np.array_equal(g0, grad[0])
    np.testing.assert_array_equal(pot.log_prob(x), log_p)
    assert POTENTIALS == ("U1", "U2", "U3", "U4")
    assert "U3" in repr(pot)


@pytest.mark.parametrize("args, kwargs, error, message", [
    (("U5",), {}, ValueError, "unknown potential 'U5'"),
    ((1,), {}, TypeError, "name must be a str"),
    (("U1",), {"envelope": "gaussian"}, ValueError, "envelope must be"),
    (("U2",), {"bound": 0.0}, ValueError, "bound must be a finite positive"),
    (("U2",), {"width": np.nan}, ValueError, "width must be a finite positive"),
    (("U2",), {"width": "1"}, TypeError, "width must be a real number"),
])
def test_bad_construction(args, kwargs, error, message):
    with pytest.raises(error, match=message):
        rezende_potential(*args, **kwargs)


@pytest.mark.parametrize("x, message", [
    (np.zeros((3, 3)), "shape \\(batch, 2\\)"),
    (np.zeros((2, 2, 2)), "3-D"),
    (np.array([[np.nan, 0.0]]), "finite"),
    (np.array([["a", "b"]]), "real numeric"),
])
def test_bad_points(x, message):
    with pytest.raises(ValueError, match="rezende_potential\\('U1'\\).*" + message):
        rezende_potential("U1")(x)
