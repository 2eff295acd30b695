"""Seeded toy datasets.

Examples
--------
>>> from refflow.datasets import two_moons
>>> two_moons(4, rng=0).shape
(4, 2)
"""

import numpy as np

from ._validation import check_rng
from .distributions import _check_n

__all__ = ["two_moons"]


def two_moons(n, *, noise=0.1, rng=None):
    """Two interleaving half circles with Gaussian noise (as scikit-learn's ``make_moons``).

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
    """
    n = _check_n(n, "two_moons")
    noise = float(noise)
    if not (np.isfinite(noise) and noise >= 0):
        raise ValueError(f"two_moons: noise must be a non-negative number, got {noise}")
    rng = check_rng(rng, "two_moons")
    t = rng.uniform(0.0, np.pi, size=n)
    upper = rng.random(n) < 0.5
    x = np.where(upper, np.cos(t), 1.0 - np.cos(t))
    y = np.where(upper, np.sin(t), 0.5 - np.sin(t))
    return np.stack([x, y], axis=1) + noise * rng.standard_normal((n, 2))
