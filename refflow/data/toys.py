r"""Seeded 2-D toy densities, with exact log-densities where they exist.

``two_moons``, ``circles``, ``rings``, ``eight_gaussians``, ``checkerboard``, ``pinwheel``,
``two_spirals``, ``swiss_roll``: ``name(n, *, rng=None, ...)`` returns ``n`` i.i.d. float64
points of shape ``(n, 2)``. The defaults are the usual FFJORD / neural-spline-flow toy
definitions; where those generators place points deterministically (``make_circles``' evenly
spaced angles, FFJORD's equal class counts) the versions here draw the angle and the component
at random, so that a sample is i.i.d. from one fixed density. ``toy(name, n, rng=...,
**params)`` dispatches by name (``TOYS`` lists the names).

``toy_log_prob(name, x, **params)`` is the exact log-density of the sampler called with the
same ``params``, for the toys in ``TOYS_WITH_DENSITY``: Gaussian mixtures by log-sum-exp,
piecewise uniform, noisy rings in closed form through the modified Bessel function ``I0``,
noisy half circles by a 1-D integral to ~1e-12. Pinwheel, spirals and the swiss roll raise
``NotImplementedError``.

Examples
--------
>>> from refflow.datasets import toy, toy_log_prob
>>> x = toy("rings", 4, rng=0)
>>> x.shape
(4, 2)
>>> toy_log_prob("rings", x).shape
(4,)
"""

import inspect
import math

import numpy as np
from scipy.special import i0e, logsumexp

from .._validation import as_batch, check_int, check_n, check_real, check_rng

__all__ = [
    "TOYS", "TOYS_WITH_DENSITY", "toy", "toy_log_prob",
    "two_moons", "circles", "rings", "eight_gaussians", "checkerboard", "pinwheel",
    "two_spirals", "swiss_roll",
]

_TWO_PI = 2.0 * math.pi


# ------------------------------------------------------------------------------ validation
def _noise(value, where, *, density):
    """Noise standard deviation: >= 0 for a sampler, > 0 for a density (noise 0 puts the mass on
    curves or points, where no density exists)."""
    return check_real(value, where, "noise", low=0.0, low_open=density)


# ---------------------------------------------------------------------------------- samplers
def two_moons(n, *, noise=0.1, rng=None):
    r"""Two interleaving half circles with Gaussian noise (as scikit-learn's ``make_moons``).

    Parameters
    ----------
    n : int
        Number of points; each is on the upper moon ``(cos t, sin t)`` or the lower moon
        ``(1 - cos t, 1/2 - sin t)`` with probability 1/2, ``t ~ U(0, pi)``.
    noise : float, default 0.1
        Standard deviation of the isotropic Gaussian noise added to every point.
    rng : int or numpy.random.Generator, optional

    Returns
    -------
    ndarray of shape (n, 2), float64

    Notes
    -----
    Unlike ``make_moons``, the angle is drawn at random, so the points are i.i.d. samples of a
    fixed density (a mixture of two noisy half circles), which is what a density model needs.
    The density (``toy_log_prob("two_moons", x, noise=noise)``), with ``sigma = noise``, unit
    radius, centres ``c_1 = (0, 0)``, ``c_2 = (1, 1/2)`` and arcs ``A_1 = [0, pi]``,
    ``A_2 = [pi, 2 pi]`` (the lower moon is ``c_2 + (cos(t + pi), sin(t + pi))``)::

        p(x) = 1/2 sum_m 1/pi int_{A_m} N(x; c_m + (cos s, sin s), sigma^2 I) ds

    FFJORD's "moons" are ``2 * make_moons(noise=0.1) + (-1, -0.2)``; refflow keeps
    scikit-learn's scale (``2 * two_moons(n) + (-1, -0.2)`` has FFJORD's distribution).

    Examples
    --------
    >>> two_moons(3, rng=0).shape
    (3, 2)
    """
    n = check_n(n, "two_moons")
    noise = _noise(noise, "two_moons", density=False)
    rng = check_rng(rng, "two_moons")
    t = rng.uniform(0.0, np.pi, size=n)
    upper = rng.random(n) < 0.5
    x = np.where(upper, np.cos(t), 1.0 - np.cos(t))
    y = np.where(upper, np.sin(t), 0.5 - np.sin(t))
    return np.stack([x, y], axis=1) + noise * rng.standard_normal((n, 2))


def _noisy_ring_points(r, sigma, rng):
    """``r (cos theta, sin theta) + sigma eps`` per row, ``theta ~ U(0, 2 pi)``, ``eps ~ N(0, I)``
    (drawn in that order), for the radii ``r`` already drawn."""
    n = r.shape[0]
    theta = rng.uniform(0.0, _TWO_PI, size=n)
    return r[:, None] * np.stack([np.cos(theta), np.sin(theta)], axis=1) + (
        sigma * rng.standard_normal((n, 2)))


def _circles_params(where, factor, noise, scale, density):
    factor = check_real(factor, where, "factor", low=0.0, high=1.0, high_open=True)
    noise = _noise(noise, where, density=density)
    scale = check_real(scale, where, "scale", low=0.0, low_open=True)
    return np.array([scale, scale * factor]), scale * noise


def circles(n, *, factor=0.5, noise=0.08, scale=3.0, rng=None):
    r"""Two concentric noisy rings (FFJORD's "circles": ``3 * make_circles(factor=.5, noise=.08)``).

    Parameters
    ----------
    n : int
        Number of points.
    factor : float in [0, 1), default 0.5
        Radius of the inner ring relative to the outer one.
    noise : float >= 0, default 0.08
        Noise standard deviation *before* scaling (as in ``make_circles``).
    scale : float > 0, default 3.0
        Radius of the outer ring; the noise standard deviation is ``scale * noise`` (0.24).
    rng : int or numpy.random.Generator, optional

    Returns
    -------
    ndarray of shape (n, 2), float64

    Notes
    -----
    Each point picks the outer ring (radius ``r_1 = scale``) or the inner one
    (``r_2 = scale * factor``) with probability 1/2 and an angle ``theta ~ U(0, 2 pi)``:
    ``x = r (cos theta, sin theta) + sigma eps`` with ``sigma = scale * noise``,
    ``eps ~ N(0, I)``. A ring of radius ``r`` convolved with ``N(0, sigma^2 I)`` has, at
    ``rho = |x|``, the density (``I0`` the modified Bessel function, ``i0e(z) = e^-z I0(z)``)::

        p_r(x) = exp(-(rho^2 + r^2) / (2 sigma^2)) I0(rho r / sigma^2) / (2 pi sigma^2)
        log p_r(x) = -log(2 pi sigma^2) - (rho - r)^2 / (2 sigma^2) + log i0e(rho r / sigma^2)

    and ``p(x) = (p_{r_1}(x) + p_{r_2}(x)) / 2``.

    Examples
    --------
    >>> circles(3, rng=0).shape
    (3, 2)
    """
    n = check_n(n, "circles")
    radii, sigma = _circles_params("circles", factor, noise, scale, density=False)
    rng = check_rng(rng, "circles")
    r = np.where(rng.random(n) < 0.5, radii[0], radii[1])
    return _noisy_ring_points(r, sigma, rng)


def _rings_params(where, n_rings, radius, noise, density):
    n_rings = check_int(n_rings, where, "n_rings", minimum=1)
    radius = check_real(radius, where, "radius", low=0.0, low_open=True)
    noise = _noise(noise, where, density=density)
    return radius * np.arange(1, n_rings + 1) / n_rings, noise


def rings(n, *, n_rings=4, radius=3.0, noise=0.08, rng=None):
    r"""Concentric noisy rings of equal weight (FFJORD's "rings").

    Parameters
    ----------
    n : int
        Number of points.
    n_rings : int >= 1, default 4
        Number of rings; their radii are ``radius * k / n_rings``, ``k = 1..n_rings``
        (FFJORD: 0.75, 1.5, 2.25, 3).
    radius : float > 0, default 3.0
        Radius of the outermost ring.
    noise : float >= 0, default 0.08
        Standard deviation of the Gaussian noise (added after scaling, as in FFJORD).
    rng : int or numpy.random.Generator, optional

    Returns
    -------
    ndarray of shape (n, 2), float64

    Notes
    -----
    Ring ``k`` uniform, angle ``theta ~ U(0, 2 pi)``, ``x = r_k (cos theta, sin theta) +
    noise eps``. FFJORD uses equal counts per ring and evenly spaced angles; here both are
    random, so the sample is i.i.d. from the mixture of noisy rings
    ``p(x) = 1/K sum_k p_{r_k}(x)``, each ``p_r`` in closed form as in :func:`circles`.

    Examples
    --------
    >>> rings(3, rng=0).shape
    (3, 2)
    """
    n = check_n(n, "rings")
    radii, sigma = _rings_params("rings", n_rings, radius, noise, density=False)
    rng = check_rng(rng, "rings")
    r = radii[rng.integers(radii.size, size=n)]
    return _noisy_ring_points(r, sigma, rng)


def _eight_gaussians_params(where, radius, noise, density):
    radius = check_real(radius, where, "radius", low=0.0)
    noise = _noise(noise, where, density=density)
    angles = np.arange(8) * (np.pi / 4)
    return radius * np.stack([np.cos(angles), np.sin(angles)], axis=1), noise


def eight_gaussians(n, *, radius=4.0 / 1.414, noise=0.5 / 1.414, rng=None):
    r"""A mixture of eight equally weighted Gaussians on a circle (FFJORD's "8gaussians").

    Parameters
    ----------
    n : int
        Number of points.
    radius : float >= 0, default 4 / 1.414
        Distance of the means from the origin; the means are at angles ``k pi / 4``.
    noise : float >= 0, default 0.5 / 1.414
        Standard deviation of each (isotropic) component. The defaults are FFJORD's: means at
        radius 4, standard deviation 0.5, everything divided by 1.414 (not ``sqrt(2)``).
    rng : int or numpy.random.Generator, optional

    Returns
    -------
    ndarray of shape (n, 2), float64

    Notes
    -----
    With means ``mu_k = radius (cos(k pi/4), sin(k pi/4))`` and ``sigma = noise``::

        log p(x) = logsumexp_k(-|x - mu_k|^2 / (2 sigma^2)) - log 8 - log(2 pi sigma^2)

    Examples
    --------
    >>> eight_gaussians(3, rng=0).shape
    (3, 2)
    """
    n = check_n(n, "eight_gaussians")
    means, sigma = _eight_gaussians_params("eight_gaussians", radius, noise, density=False)
    rng = check_rng(rng, "eight_gaussians")
    return means[rng.integers(8, size=n)] + sigma * rng.standard_normal((n, 2))


def checkerboard(n, *, scale=2.0, rng=None):
    r"""Uniform on the black squares of a 4 x 4 checkerboard (FFJORD's "checkerboard").

    Parameters
    ----------
    n : int
        Number of points.
    scale : float > 0, default 2.0
        Side of one square; the board is ``[-2 scale, 2 scale)^2`` (FFJORD: ``[-4, 4)^2``).
    rng : int or numpy.random.Generator, optional

    Returns
    -------
    ndarray of shape (n, 2), float64

    Notes
    -----
    With ``u = x / scale``, the support is the 8 unit squares of ``[-2, 2)^2`` where
    ``floor(u_1) + floor(u_2)`` is even, total area ``8 scale^2``::

        p(x) = 1 / (8 scale^2) on the support, 0 elsewhere

    Sampling as FFJORD: ``u_1 ~ U(-2, 2)``, ``u_2 = U(0, 1) - 2 b + (floor(u_1) mod 2)``
    with ``b`` a fair bit.

    Examples
    --------
    >>> checkerboard(3, rng=0).shape
    (3, 2)
    """
    n = check_n(n, "checkerboard")
    scale = check_real(scale, "checkerboard", "scale", low=0.0, low_open=True)
    rng = check_rng(rng, "checkerboard")
    u1 = rng.uniform(-2.0, 2.0, size=n)
    u2 = rng.random(n) - 2.0 * rng.integers(2, size=n) + np.mod(np.floor(u1), 2.0)
    return scale * np.stack([u1, u2], axis=1)


def pinwheel(n, *, n_arms=5, radial_std=0.3, tangential_std=0.1, rate=0.25, rng=None):
    r"""Curved Gaussian arms (FFJORD's "pinwheel", from Johnson et al. 2016's SVAE code).

    Parameters
    ----------
    n : int
        Number of points.
    n_arms : int >= 1, default 5
        Number of arms, chosen with equal probability.
    radial_std, tangential_std : float >= 0, default 0.3 and 0.1
        Standard deviations of the feature ``f = (1 + radial_std e_1, tangential_std e_2)``.
    rate : float, default 0.25
        How fast an arm turns: angle ``2 pi k / n_arms + rate * exp(f_1)``.
    rng : int or numpy.random.Generator, optional

    Returns
    -------
    ndarray of shape (n, 2), float64

    Notes
    -----
    ``x = 2 (f_1 cos a + f_2 sin a, -f_1 sin a + f_2 cos a)`` (FFJORD's rotation convention).
    FFJORD draws exactly ``n // 5`` points per arm; here the arm is random (i.i.d. points).
    There is no closed-form density: :func:`toy_log_prob` raises ``NotImplementedError``.

    Examples
    --------
    >>> pinwheel(3, rng=0).shape
    (3, 2)
    """
    where = "pinwheel"
    n = check_n(n, where)
    n_arms = check_int(n_arms, where, "n_arms", minimum=1)
    radial_std = check_real(radial_std, where, "radial_std", low=0.0)
    tangential_std = check_real(tangential_std, where, "tangential_std", low=0.0)
    rate = check_real(rate, where, "rate")
    rng = check_rng(rng, where)
    arm = rng.integers(n_arms, size=n)
    f = rng.standard_normal((n, 2)) * np.array([radial_std, tangential_std])
    f[:, 0] += 1.0
    a = _TWO_PI * arm / n_arms + rate * np.exp(f[:, 0])
    c, s = np.cos(a), np.sin(a)
    return 2.0 * np.stack([f[:, 0] * c + f[:, 1] * s, -f[:, 0] * s + f[:, 1] * c], axis=1)


def two_spirals(n, *, noise=0.1, rng=None):
    r"""Two interleaved spirals (FFJORD's "2spirals").

    Parameters
    ----------
    n : int
        Number of points.
    noise : float >= 0, default 0.1
        Standard deviation of the Gaussian noise added at the end.
    rng : int or numpy.random.Generator, optional

    Returns
    -------
    ndarray of shape (n, 2), float64

    Notes
    -----
    ``t = sqrt(U) * 3 pi`` (540 degrees), ``d = (-t cos t + u_1, t sin t + u_2)`` with
    ``u_i ~ U(0, 1/2)``, ``x = s d / 3 + noise eps`` with a random sign ``s`` (FFJORD takes
    exactly half of each). No closed-form density (:func:`toy_log_prob` raises
    ``NotImplementedError``).

    Examples
    --------
    >>> two_spirals(3, rng=0).shape
    (3, 2)
    """
    n = check_n(n, "two_spirals")
    noise = _noise(noise, "two_spirals", density=False)
    rng = check_rng(rng, "two_spirals")
    t = np.sqrt(rng.random(n)) * (3.0 * np.pi)
    jitter = 0.5 * rng.random((n, 2))
    d = np.stack([-np.cos(t) * t, np.sin(t) * t], axis=1) + jitter
    sign = np.where(rng.random(n) < 0.5, 1.0, -1.0)
    return sign[:, None] * d / 3.0 + noise * rng.standard_normal((n, 2))


def swiss_roll(n, *, noise=0.2, rng=None):
    r"""The 2-D swiss roll (FFJORD's "swissroll": ``make_swiss_roll(noise=1.0)[:, [0, 2]] / 5``).

    Parameters
    ----------
    n : int
        Number of points.
    noise : float >= 0, default 0.2
        Standard deviation of the Gaussian noise in the output's units (FFJORD's noise 1.0
        divided by 5).
    rng : int or numpy.random.Generator, optional

    Returns
    -------
    ndarray of shape (n, 2), float64

    Notes
    -----
    ``t = 3 pi / 2 (1 + 2 U)``, ``x = (t cos t, t sin t) / 5 + noise eps``. No closed-form
    density (:func:`toy_log_prob` raises ``NotImplementedError``).

    Examples
    --------
    >>> swiss_roll(3, rng=0).shape
    (3, 2)
    """
    n = check_n(n, "swiss_roll")
    noise = _noise(noise, "swiss_roll", density=False)
    rng = check_rng(rng, "swiss_roll")
    t = 1.5 * np.pi * (1.0 + 2.0 * rng.random(n))
    return np.stack([t * np.cos(t), t * np.sin(t)], axis=1) / 5.0 + (
        noise * rng.standard_normal((n, 2)))


# ------------------------------------------------------------------------ exact densities
def _log_noisy_rings(x, radii, sigma):
    """log of the equal-weight mixture of rings (``radii``) convolved with N(0, sigma^2 I)."""
    rho = np.hypot(x[:, 0], x[:, 1])[:, None]
    s2 = sigma * sigma
    lp = -(rho - radii) ** 2 / (2.0 * s2) + np.log(i0e(rho * radii / s2))
    return logsumexp(lp, axis=1) - math.log(radii.size) - math.log(_TWO_PI * s2)


# Composite Gauss-Legendre rule for the arc integral: graded panels around the three points
# where the integrand can peak. Against mpmath (40 digits) over kappa in [0, 1e12] and every
# peak position, order 10 with panels h * 2^k, k = -2..6, gives relative errors <= 3e-12,
# the round-off floor of evaluating t - phi at those scales.
_GL_NODES, _GL_WEIGHTS = np.polynomial.legendre.leggauss(10)
_LOG_GL_WEIGHTS = np.log(_GL_WEIGHTS)
_GRADING = 2.0 ** np.arange(-2, 7)
_UNIFORM_PANELS = 4
_ARC_BLOCK = 2048


def _log_arc_integral(kappa, phi, a, b):
    r"""``log int_a^b exp(-2 kappa sin^2((t - phi) / 2)) dt`` for arrays ``kappa >= 0``, ``phi``.

    The integrand is ``exp(kappa (cos(t - phi) - 1))`` written without cancellation. On
    ``[a, b]`` (length at most ``2 pi``) it peaks at the point nearest ``phi`` and possibly at
    the end points, with width ``h = 1 / (kappa |sin(c - phi)| + sqrt(kappa) + 1/pi)`` at a
    peak ``c`` (linear decay at an end point, Gaussian at an interior maximum). Panels are
    graded geometrically around each candidate peak (``c +- h 2^k``, ``k = -2..6``) on top of
    four uniform panels, and each panel gets a 10-point Gauss-Legendre rule, summed in log
    space. Beyond ``64 h`` the integrand is below ``e^-60`` of its peak.
    """
    out = np.empty(kappa.shape[0])
    for start in range(0, kappa.shape[0], _ARC_BLOCK):
        k = kappa[start:start + _ARC_BLOCK]
        f = phi[start:start + _ARC_BLOCK]
        p = a + np.mod(f - a, _TWO_PI)          # phi moved into [a, a + 2 pi)
        nearest = np.where(p <= b, p, np.where(p - b <= a + _TWO_PI - p, b, a))
        uniform = np.linspace(a, b, _UNIFORM_PANELS + 1)
        edges = [np.broadcast_to(uniform, (k.size, uniform.size))]
        for c in (nearest, np.full_like(k, a), np.full_like(k, b)):
            h = 1.0 / (k * np.abs(np.sin(c - f)) + np.sqrt(k) + 1.0 / np.pi)
            offsets = h[:, None] * _GRADING
            edges += [c[:, None] - offsets, c[:, None] + offsets]
        edges = np.sort(np.clip(np.concatenate(edges, axis=1), a, b), axis=1)
        half = 0.5 * (edges[:, 1:] - edges[:, :-1])
        with np.errstate(divide="ignore"):      # empty panels (clipped edges) weigh log 0
            log_half = np.log(half)
        # g = -2 kappa sin^2((t - phi) / 2) + log(weight), t = mid + half * node, in place
        g = (0.25 * (edges[:, 1:] + edges[:, :-1]) - 0.5 * f[:, None])[..., None] + (
            0.5 * half[..., None] * _GL_NODES)
        np.sin(g, out=g)
        np.square(g, out=g)
        g *= -2.0 * k[:, None, None]
        g += log_half[..., None]
        g += _LOG_GL_WEIGHTS
        g = g.reshape(k.size, -1)
        peak = g.max(axis=1, keepdims=True)
        g -= peak
        np.exp(g, out=g)
        out[start:start + _ARC_BLOCK] = np.log(g.sum(axis=1)) + peak[:, 0]
    return out


def _log_noisy_arc(x, centre, a, b, sigma):
    """log density of ``centre + (cos s, sin s) + N(0, sigma^2 I)`` with ``s ~ U(a, b)``."""
    dx, dy = x[:, 0] - centre[0], x[:, 1] - centre[1]
    rho = np.hypot(dx, dy)
    s2 = sigma * sigma
    # |x - c - e_s|^2 = (rho - 1)^2 + 4 rho sin^2((s - phi) / 2)
    log_int = _log_arc_integral(rho / s2, np.arctan2(dy, dx), a, b)
    return -math.log(_TWO_PI * s2) - (rho - 1.0) ** 2 / (2.0 * s2) - math.log(b - a) + log_int


def _two_moons_log_prob(x, noise=0.1):
    sigma = _noise(noise, "toy_log_prob('two_moons')", density=True)
    upper = _log_noisy_arc(x, (0.0, 0.0), 0.0, np.pi, sigma)
    lower = _log_noisy_arc(x, (1.0, 0.5), np.pi, _TWO_PI, sigma)
    return np.logaddexp(upper, lower) - math.log(2.0)


def _circles_log_prob(x, factor=0.5, noise=0.08, scale=3.0):
    radii, sigma = _circles_params("toy_log_prob('circles')", factor, noise, scale, density=True)
    return _log_noisy_rings(x, radii, sigma)


def _rings_log_prob(x, n_rings=4, radius=3.0, noise=0.08):
    radii, sigma = _rings_params("toy_log_prob('rings')", n_rings, radius, noise, density=True)
    return _log_noisy_rings(x, radii, sigma)


def _eight_gaussians_log_prob(x, radius=4.0 / 1.414, noise=0.5 / 1.414):
    means, sigma = _eight_gaussians_params(
        "toy_log_prob('eight_gaussians')", radius, noise, density=True)
    d2 = ((x[:, None, :] - means[None, :, :]) ** 2).sum(axis=2)
    s2 = sigma * sigma
    return logsumexp(-d2 / (2.0 * s2), axis=1) - math.log(8.0) - math.log(_TWO_PI * s2)


def _checkerboard_log_prob(x, scale=2.0):
    scale = check_real(scale, "toy_log_prob('checkerboard')", "scale", low=0.0, low_open=True)
    u = x / scale
    inside = np.all((u >= -2.0) & (u < 2.0), axis=1)
    black = np.mod(np.floor(u[:, 0]) + np.floor(u[:, 1]), 2.0) == 0.0
    return np.where(inside & black, -math.log(8.0 * scale * scale), -np.inf)


_SAMPLERS = {
    "two_moons": two_moons, "circles": circles, "rings": rings,
    "eight_gaussians": eight_gaussians, "checkerboard": checkerboard, "pinwheel": pinwheel,
    "two_spirals": two_spirals, "swiss_roll": swiss_roll,
}
_LOG_PROBS = {
    "two_moons": _two_moons_log_prob, "circles": _circles_log_prob, "rings": _rings_log_prob,
    "eight_gaussians": _eight_gaussians_log_prob, "checkerboard": _checkerboard_log_prob,
}
_NO_DENSITY = {
    "pinwheel": "the arm angle depends on the radial feature, so p(x) needs a root search and "
                "a 2-D change of variables per arm",
    "two_spirals": "the uniform jitter and Gaussian noise along a spiral leave a 1-D integral "
                   "with no closed form",
    "swiss_roll": "the Gaussian noise along a spiral leaves a 1-D integral with no closed form",
}

#: Names of the toy samplers, for :func:`toy`.
TOYS = tuple(_SAMPLERS)
#: The toys whose exact log-density :func:`toy_log_prob` computes.
TOYS_WITH_DENSITY = tuple(_LOG_PROBS)


def _toy_name(name, where):
    if not isinstance(name, str):
        raise TypeError(f"{where}: the toy name must be a str, got {type(name).__name__}")
    if name not in _SAMPLERS:
        raise ValueError(f"{where}: unknown toy {name!r}; valid names: {', '.join(TOYS)}")
    return name


def _check_params(name, params, where):
    allowed = [p for p in inspect.signature(_SAMPLERS[name]).parameters if p not in ("n", "rng")]
    for key in params:
        if key not in allowed:
            raise TypeError(
                f"{where}: unexpected parameter {key!r} for toy {name!r}; its parameters are: "
                f"{', '.join(allowed)}"
            )


def toy(name, n, *, rng=None, **params):
    """Draw ``n`` points from the toy density called ``name`` (one of ``TOYS``).

    Parameters
    ----------
    name : str
        One of ``TOYS``: ``"two_moons"``, ``"circles"``, ``"rings"``, ``"eight_gaussians"``,
        ``"checkerboard"``, ``"pinwheel"``, ``"two_spirals"``, ``"swiss_roll"``.
    n : int
        Number of points.
    rng : int or numpy.random.Generator, optional
        Same seed, same array.
    **params
        The toy's own parameters (see each function), e.g. ``noise=0.05``.

    Returns
    -------
    ndarray of shape (n, 2), float64

    Raises
    ------
    ValueError
        For an unknown name (the message lists the valid ones) or a bad parameter value.
    TypeError
        For a parameter the toy does not have.

    Examples
    --------
    >>> import numpy as np
    >>> np.array_equal(toy("pinwheel", 5, rng=1), pinwheel(5, rng=1))
    True
    """
    name = _toy_name(name, "toy")
    _check_params(name, params, "toy")
    return _SAMPLERS[name](n, rng=rng, **params)


def toy_log_prob(name, x, **params):
    r"""Exact log-density of the toy ``name`` with parameters ``params`` at the points ``x``.

    Parameters
    ----------
    name : str
        One of ``TOYS_WITH_DENSITY``: ``"two_moons"``, ``"circles"``, ``"rings"``,
        ``"eight_gaussians"``, ``"checkerboard"``.
    x : array_like of shape (batch, 2) or (2,)
        Points (float32 input is evaluated in float64).
    **params
        The same keyword parameters as the sampler (defaults alike); noise must be > 0.

    Returns
    -------
    ndarray of shape (batch,) or float, float64
        ``log p(x)``; ``-inf`` where the density is zero (outside the checkerboard).

    Raises
    ------
    NotImplementedError
        For ``"pinwheel"``, ``"two_spirals"`` and ``"swiss_roll"``, which have no closed form.
    ValueError, TypeError
        Unknown name, bad points or parameters.

    Notes
    -----
    The formula for each toy is in the sampler's docstring: Gaussian mixtures by log-sum-exp
    (:func:`eight_gaussians`), piecewise uniform (:func:`checkerboard`), noisy rings in closed
    form with ``scipy.special.i0e`` (:func:`circles`, :func:`rings`). The noisy half circles of
    :func:`two_moons` need ``log int_A exp(-2 kappa sin^2((s - phi)/2)) ds`` with
    ``kappa = rho / sigma^2`` (``(rho, phi)`` the polar coordinates of ``x`` about the moon's
    centre): a composite Gauss-Legendre rule with panels graded around the peaks of the
    integrand, summed in log space, accurate to ~1e-12 relative for any ``kappa`` and finite for
    ``|x|`` far beyond ``1e3``.

    Examples
    --------
    >>> import numpy as np
    >>> float(np.round(toy_log_prob("checkerboard", [1.0, 1.0]), 6))  # log(1 / 32)
    -3.465736
    >>> float(np.round(toy_log_prob("eight_gaussians", [0.0, 0.0], radius=0.0, noise=1.0), 6))
    -1.837877
    """
    name = _toy_name(name, "toy_log_prob")
    if name in _NO_DENSITY:
        raise NotImplementedError(
            f"toy_log_prob: the toy {name!r} has no closed-form density ({_NO_DENSITY[name]}); "
            f"exact densities exist for: {', '.join(TOYS_WITH_DENSITY)}"
        )
    _check_params(name, params, "toy_log_prob")
    x2, was_1d = as_batch(x, 2, "toy_log_prob", "x")
    lp = _LOG_PROBS[name](x2.astype(np.float64), **params)
    return lp[0] if was_1d else lp


