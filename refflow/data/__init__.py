r"""Seeded 2-D toy densities (with exact log-densities where they exist) and dataset loaders.

Toys
    ``two_moons``, ``circles``, ``rings``, ``eight_gaussians``, ``checkerboard``, ``pinwheel``,
    ``two_spirals``, ``swiss_roll``: ``name(n, *, rng=None, ...)`` returns ``n`` i.i.d. float64
    points of shape ``(n, 2)``. The defaults are the usual FFJORD / neural-spline-flow toy
    definitions; where those generators place points deterministically (``make_circles``'
    evenly spaced angles, FFJORD's equal class counts) the versions here draw the angle and
    the component at random, so that a sample is i.i.d. from one fixed density.
    ``toy(name, n, rng=..., **params)`` dispatches by name (``TOYS`` lists the names).
Exact densities
    ``toy_log_prob(name, x, **params)`` is the exact log-density of the sampler called with
    the same ``params``, for the toys in ``TOYS_WITH_DENSITY``: Gaussian mixtures by
    log-sum-exp, piecewise uniform, noisy rings in closed form through the modified Bessel
    function ``I0``, noisy half circles by a 1-D integral to ~1e-12. Pinwheel, spirals and
    the swiss roll raise ``NotImplementedError``.
Synthetic sets in 4 to 16 dimensions
    ``curve`` (a noisy curved manifold), ``student_t`` (heavy tails), ``skew_mixture``
    (multimodal), ``scaled_ica`` (feature scales from 1e-3 to 1e3): ``synthetic(name, n,
    rng=...)`` draws, ``synthetic_log_prob(name, x)`` is the exact log-density (``SYNTHETIC``
    lists the names).
Tabular data of the MAF paper
    ``load_power``, ``load_gas``, ``load_hepmass``, ``load_miniboone``, ``load_bsds300`` and
    ``load_tabular(name, root)`` read the MAF data release and reproduce its preprocessing and
    splits; each returns a ``TabularData(train, validation, test)`` of float64 arrays.
Digits
    ``load_digits``: scikit-learn's 8x8 digits, dequantized into ``(0, 1)``.

Examples
--------
>>> import numpy as np
>>> from refflow.datasets import toy, toy_log_prob
>>> x = toy("rings", 4, rng=0)
>>> x.shape
(4, 2)
>>> toy_log_prob("rings", x).shape
(4,)
"""

from .potentials import POTENTIALS, RezendePotential, rezende_potential
from .synthetic_sets import (SYNTHETIC, curve, scaled_ica, skew_mixture, student_t, synthetic,
                        synthetic_log_prob)
from .tabular import (TABULAR, TabularData, load_bsds300, load_digits, load_gas, load_hepmass,
                      load_miniboone, load_power, load_tabular)
from .toys import (TOYS, TOYS_WITH_DENSITY, checkerboard, circles, eight_gaussians, pinwheel,
                   rings, swiss_roll, toy, toy_log_prob, two_moons, two_spirals)

__all__ = [
    # toys
    "TOYS", "TOYS_WITH_DENSITY", "toy", "toy_log_prob",
    "two_moons", "circles", "rings", "eight_gaussians", "checkerboard", "pinwheel",
    "two_spirals", "swiss_roll",
    # synthetic sets with exact densities, 4 to 16 dimensions
    "SYNTHETIC", "synthetic", "synthetic_log_prob", "curve", "student_t", "skew_mixture",
    "scaled_ica",
    # tabular data (MAF paper) and digits
    "TABULAR", "TabularData", "load_tabular", "load_power", "load_gas", "load_hepmass",
    "load_miniboone", "load_bsds300", "load_digits",
    # the Rezende-Mohamed potentials, for reverse-KL fits
    "rezende_potential", "POTENTIALS", "RezendePotential",
]
