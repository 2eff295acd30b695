"""The fused "durkan" kernels' inverse, checked without the code it shares with its reference
(the scalar kernels ``rqs_durkan_*_scalar``, called "reference" below).

The fast and the reference fused kernels (and the generic knot kernels) solve each bin's
quadratic with the same root function, ``_rq_root``, so comparing them
(tests/parity/test_spline_kernels_fast.py, tests/test_spline_maps.py) cannot see a wrong root.
Here the inverse of both is checked against the forward kernels, which never solve for a root: for
``x = RQS^{-1}(y)``, ``RQS(x)`` must give back ``y`` to within the rounding the computation
allows,

    |RQS(x) - y| <= ROOT_ULPS eps ((|y| + B) + g (|x| + B)),     g = dy/dx = exp(-log_det),

(the rounding of ``y - y_k`` and of ``y_k + h R``, and that of ``x = x_k + xi w`` moved by the
slope), and against the spline computed from the papers' formulas (bisection, tests/helpers.py)
on a few hundred elements. (The log-dets are compared with finite differences and the generic
kernels elsewhere.)
"""

import numpy as np
import pytest

from refflow.kernels import NUMBA_DISABLED
from refflow.kernels import splines as D

from ..helpers import paper_knots, paper_rqs_inverse

EPS = np.finfo(np.float64).eps
#: Roundings allowed in each term of the bound (module docstring); measured worst 2.8 over the
#: configurations below x 3 seeds x 2e4 elements, fast and reference kernels.
ROOT_ULPS = 8.0

PLAIN = NUMBA_DISABLED
if not PLAIN:
    import numba
    PLAIN = bool(numba.config.DISABLE_JIT)

CONFIGS = [  # (K, parameter scale, bound, min_bin_width, min_bin_height, min_derivative)
    (8, 1.0, 3.0, 1e-3, 1e-3, 1e-3), (2, 1.0, 3.0, 1e-3, 1e-3, 1e-3),
    (3, 3.0, 1.0, 1e-2, 1e-3, 1e-2), (17, 3.0, 5.0, 1e-3, 1e-3, 1e-3),
    (8, 10.0, 3.0, 1e-3, 1e-3, 1e-3), (5, 1.0, 2.0, 0.0, 0.0, 1e-3),
]


def _kernel(name, reference):
    return getattr(D, "rqs_durkan_" + name + ("_scalar" if reference else ""))


def _run(name, v, params, settings, reference):
    out, log_det = np.empty_like(v), np.empty_like(v)
    _kernel(name, reference)(v, *params, *settings, out, log_det)
    return out, log_det


@pytest.mark.parametrize("reference", [False, True], ids=["fast", "reference"])
@pytest.mark.parametrize("config", CONFIGS, ids=[f"K{c[0]}-s{c[1]}-B{c[2]}" for c in CONFIGS])
def test_inverse_gives_back_y_through_the_forward_kernel(config, reference):
    K, scale, B, mw, mh, md = config
    rng = np.random.default_rng(K * 7 + int(scale))
    n = 20000 if not PLAIN else 300
    settings = (B, mw, mh, md)
    params = tuple(scale * rng.standard_normal(s) for s in ((n, K), (n, K), (n, K - 1)))
    y = rng.uniform(-1.1 * B, 1.1 * B, n)
    y[:3] = [-B, B, 0.0]
    x, log_det = _run("inverse", y, params, settings, reference)
    for forward_reference in (False, True):
        y_back, _ = _run("forward", x, params, settings, forward_reference)
        g = np.exp(-log_det)
        bound = ROOT_ULPS * EPS * ((np.abs(y) + B) + g * (np.abs(x) + B))
        err = np.abs(y_back - y)
        assert np.all(err <= bound), (float(np.max(err / bound)), float(y[np.argmax(err / bound)]))


@pytest.mark.parametrize("reference", [False, True], ids=["fast", "reference"])
def test_inverse_matches_the_papers_spline(reference):
    """A few hundred elements against the bisection of the spline written from the paper: its
    knots are computed in another order (up to ``K`` roundings of ``B`` apart), which moves ``x``
    by up to ``2 K B eps (1 + 1/g)``; measured worst 0.2 of the bound over 4 seeds."""
    rng = np.random.default_rng(5)
    K, B, n = 6, 3.0, 300
    params = tuple(rng.standard_normal(s) for s in ((n, K), (n, K), (n, K - 1)))
    y = rng.uniform(-B, B, n)
    x, log_det = _run("inverse", y, params, (B, 1e-3, 1e-3, 1e-3), reference)
    for i in range(n):
        knots = paper_knots("durkan", params[0][i], params[1][i], params[2][i], bound=B)
        x_paper, ld_paper = paper_rqs_inverse(y[i], *knots)
        g = np.exp(-ld_paper)
        bound = ROOT_ULPS * EPS * ((abs(y[i]) + B) / g + 2 * K * B * (1 + 1 / g))
        assert abs(x[i] - x_paper) <= bound, (i, x[i], float(x_paper), bound)
