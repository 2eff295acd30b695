"""The fused "durkan" kernels on their knots: which bin a knot belongs to (the block kernels,
"fast", and the scalar kernels ``rqs_durkan_*_scalar``, called "reference" below).

The kernels' convention (``refflow.kernels.splines``, module docstring; the generic kernels'
``_find_bin``): a point ``v`` is in bin ``k`` with ``knot_k <= v < knot_{k+1}``, the last bin
including ``B``. On a knot the value and the slope are the same from both sides (the spline is
C1), but its second derivative jumps, so the log-det's derivatives are one-sided: a kernel that
put ``v = knot_k`` in bin ``k - 1`` would give other gradients there (``dL/dv``, the width
cotangents), with no value or log-det to show it, and the fast and reference kernels compared on
random inputs never meet a knot.

The knots are the fast kernels' own (their ``exp`` rounds differently from the reference's, so
the reference's knots may be an ulp away), computed by the fast path's phase-1 helper.
"""

import numpy as np
import pytest

from refflow.kernels import splines as D

B, K, MW, MH, MD = 3.0, 6, 1e-3, 1e-3, 1e-3
#: Points this many ulps above / below a knot are inside one bin; dL/dv moves by ~ulps |L''|.
NUDGE_ULPS = 8
#: dL/dv at the knot against a few ulps above it: the same bin's formula at inputs ~1e-15 apart
#: (relative to max(1, |dL/dv|)), while the two sides of a knot differ by O(1).
SAME_SIDE_RTOL = 1e-6
#: The left and right derivatives of the log-det at a knot differ by O(1) for random knots.
JUMP = 1e-2


def _fast_knots(u, min_bin):
    """``(n, K + 1)`` knots of the rows of ``u`` as the fast kernels compute them."""
    n = u.shape[0]
    one, zero = 1.0, 0.0
    ec = D._exp_consts(one)
    out = np.empty((n, K + 1))
    for i0 in range(0, n, D._BLOCK):
        nb = min(D._BLOCK, n - i0)
        pt, kt = np.empty((K, D._BLOCK)), np.empty((K + 1, D._BLOCK))
        m, r = np.empty(D._BLOCK), np.empty(D._BLOCK)
        D._knots_block(u, i0, nb, B, B - (-B), min_bin, 1.0 - min_bin * K, zero, one, ec, m, r,
                       pt, kt)
        out[i0:i0 + nb] = kt[:, :nb].T
    return out


@pytest.mark.parametrize("reference", [False, True], ids=["fast", "reference"])
@pytest.mark.parametrize("direction", ["forward", "inverse"])
def test_a_knot_belongs_to_the_bin_above(direction, reference):
    """At an interior knot (the kernel's own), ``d log_det / d v`` from the pullback is that of
    the bin above (as a few ulps above the knot), not the one below (they differ: the spline's
    second derivative jumps at a knot)."""
    rng = np.random.default_rng(3)
    n_rows = 60
    uw, uh = rng.standard_normal((n_rows, K)), rng.standard_normal((n_rows, K))
    ud = rng.standard_normal((n_rows, K - 1))
    u, min_bin = (uw, MW) if direction == "forward" else (uh, MH)
    if reference:   # the reference kernels' knots (libm's exp): _positions, as they call it
        knots = np.empty((n_rows, K + 1))
        p = np.empty(K)
        for i in range(n_rows):
            D._positions(u[i], K, B, B - (-B), min_bin, 1.0 - min_bin * K, 0.0, 1.0, p, knots[i])
    else:
        knots = _fast_knots(u, min_bin)
    j = rng.integers(1, K, n_rows)
    at = knots[np.arange(n_rows), j]
    suffix = "_scalar" if reference else ""
    settings = (B, MW, MH, MD)

    def pullback(v):
        v_bar = np.empty(n_rows)
        getattr(D, f"rqs_durkan_{direction}_vjp{suffix}")(
            v, uw, uh, ud, *settings, np.zeros(n_rows), np.ones(n_rows), v_bar,
            np.empty((n_rows, K)), np.empty((n_rows, K)), np.empty((n_rows, K - 1)))
        return v_bar

    # A few ulps above and below the knot the bin is unambiguous, and dL/dv moves by a few ulps
    # times L'' only: the value at the knot must be the one from above.
    nudge = NUDGE_ULPS * np.spacing(np.abs(at))
    at_knot, above, below = pullback(at), pullback(at + nudge), pullback(at - nudge)
    scale = np.maximum(1.0, np.abs(above))
    assert np.all(np.abs(at_knot - above) <= SAME_SIDE_RTOL * scale), \
        float(np.max(np.abs(at_knot - above) / scale))
    assert np.median(np.abs(at_knot - below) / scale) > JUMP       # the jump is real
