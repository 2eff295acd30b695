"""Spline layers: RationalQuadraticSpline, SplineCoupling, MaskedSplineAutoregressive."""

import numpy as np
import pytest

from refflow import (
    Chain, Flow, MaskedSplineAutoregressive, RationalQuadraticSpline, SplineCoupling,
    StandardNormal,
)
from refflow.testing import assert_bijector, assert_vjp, jacobian_fd

from ..helpers import paper_knots, paper_rqs, paper_rqs_inverse, randomize, rel

MAPS = ["durkan", "zuko", "distrax"]


#: Raw parameters of the layers drawn N(0, 0.5^2) unless a test says otherwise.
PARAM_SCALE = 0.5
#: The layers against the papers' formulas evaluated here in another order (knots from
#: ``scipy.special.softmax`` and plain cumulative sums, the bin's formula as printed, inverses by
#: bisection): knots a few ulps apart, amplified by the spline's conditioning (below ~1e2 for
#: standard-normal parameters; the same bound as ``RTOL_VALUE`` in tests/test_spline_maps.py).
RTOL_PAPER = 1e-12


def away_from_knots(layer, direction, v, rng, margin=1e-3, context=None):
    """Redraw rows with a coordinate within ``margin`` of one of its knots (FD must not straddle;
    parameter perturbations move the knots by up to ~1e-4, see refflow._cases)."""
    for _ in range(100):
        knots = layer._input_knots(direction, v, context)
        near = (np.abs(v[:, :, None] - knots) < margin).any(axis=(1, 2))
        if not near.any():
            return v
        v[near] = rng.normal(0.0, 2.0, size=(int(near.sum()), v.shape[1]))
    raise RuntimeError("no points away from the knots")


@pytest.mark.parametrize("parameterization", MAPS)
def test_elementwise_starts_at_identity(parameterization):
    layer = RationalQuadraticSpline(3, n_bins=6, parameterization=parameterization)
    z = np.linspace(-7, 7, 30).reshape(10, 3)
    x, log_det = layer.forward(z)
    np.testing.assert_allclose(x, z, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(log_det, 0.0, atol=1e-12)


@pytest.mark.parametrize("parameterization", MAPS)
def test_elementwise_oracle_and_monotone(parameterization):
    rng = np.random.default_rng(3)
    layer = randomize(RationalQuadraticSpline(2, n_bins=5, parameterization=parameterization), rng, 1.0)
    z = away_from_knots(layer, "forward", rng.normal(0, 2.0, size=(6, 2)), rng)
    x = away_from_knots(layer, "inverse", rng.normal(0, 2.0, size=(6, 2)), rng)
    assert_bijector(layer.forward, layer.inverse, z, x=x)
    assert_vjp(layer.forward_vjp, z, layer.params, rng=0)
    assert_vjp(layer.inverse_vjp, x, layer.params, rng=1)
    grid = np.linspace(-6, 6, 2001)[:, None].repeat(2, axis=1)
    values, _ = layer.forward(grid)
    assert np.all(np.diff(values, axis=0) > 0)


def _paper_spline(name, v, theta, n_bins, inverse=False):
    """``RQS`` (or its inverse) of each ``v[i]`` with the unconstrained parameters ``theta[i]``
    laid out ``[widths | heights | derivatives]``, from the papers' formulas (tests/helpers.py)."""
    out, log_det = np.empty(v.shape), np.empty(v.shape)
    for i, (value, t) in enumerate(zip(v, theta)):
        knots = paper_knots(name, t[:n_bins], t[n_bins:2 * n_bins], t[2 * n_bins:])
        out[i], log_det[i] = (paper_rqs_inverse if inverse else paper_rqs)(value, *knots)
    return out, log_det


@pytest.mark.parametrize("parameterization", MAPS)
def test_elementwise_is_the_papers_spline(parameterization):
    """Both passes of ``RationalQuadraticSpline`` against the spline computed here from the NSF
    paper's formulas (and each map's published knot rule): values and log-dets, inside the
    bound and in the linear tails (the identity for durkan and zuko)."""
    rng = np.random.default_rng(4)
    layer = randomize(RationalQuadraticSpline(3, n_bins=7, parameterization=parameterization),
                      rng, 1.0)
    bound = layer._map.bound
    z = np.concatenate([rng.normal(0, bound / 2, size=(6, 3)),
                        [[bound + 0.5, -3.0 * bound, 1e3]]])
    theta = np.concatenate([layer.params["unnormalized_widths"],
                            layer.params["unnormalized_heights"],
                            layer.params["unnormalized_derivatives"]], axis=1)
    for direction in ("forward", "inverse"):
        out, log_det = getattr(layer, direction)(z)
        expected_log_det = np.zeros(z.shape[0])
        for j in range(3):
            expected, expected_ld = _paper_spline(parameterization, z[:, j],
                                                  np.tile(theta[j], (z.shape[0], 1)), 7,
                                                  inverse=direction == "inverse")
            assert rel(out[:, j], expected) <= RTOL_PAPER, (direction, j)
            expected_log_det += expected_ld
        assert rel(log_det, expected_log_det) <= RTOL_PAPER, direction
    if parameterization != "distrax":
        x_tail, ld_tail = layer.forward(z[-1:])
        np.testing.assert_array_equal(x_tail, z[-1:])   # identity tails outside [-B, B]
        np.testing.assert_array_equal(ld_tail, [0.0])


@pytest.mark.parametrize("parameterization", MAPS)
def test_coupling_density_direction_is_the_spline(parameterization):
    """``SplineCoupling.inverse`` is ``z_b = RQS(x_b; theta(x_a))`` and ``z_a = x_a`` (nflows'
    and zuko's direction), with the spline from the papers' formulas; ``forward`` inverts it."""
    rng = np.random.default_rng(5)
    layer = randomize(SplineCoupling(4, hidden=(8,), n_bins=4, parameterization=parameterization,
                                     rng=rng), rng, PARAM_SCALE)
    x = rng.normal(size=(5, 4))
    z, log_det = layer.inverse(x)
    np.testing.assert_array_equal(z[:, :2], x[:, :2])  # identity part
    theta = layer.conditioner(x[:, :2]).reshape(10, -1)   # the MLP's output: 2 elements per row
    expected, expected_ld = _paper_spline(parameterization, x[:, 2:].reshape(-1), theta, 4)
    assert rel(z[:, 2:], expected.reshape(5, 2)) <= RTOL_PAPER
    assert rel(log_det, expected_ld.reshape(5, 2).sum(axis=1)) <= RTOL_PAPER
    x_back, log_det_back = layer.forward(z)
    np.testing.assert_array_equal(x_back[:, :2], z[:, :2])
    expected, expected_ld = _paper_spline(parameterization, z[:, 2:].reshape(-1), theta, 4,
                                          inverse=True)
    assert rel(x_back[:, 2:], expected.reshape(5, 2)) <= RTOL_PAPER
    assert rel(log_det_back, expected_ld.reshape(5, 2).sum(axis=1)) <= RTOL_PAPER


@pytest.mark.parametrize("parameterization", MAPS)
def test_coupling_oracle_conditional(parameterization):
    rng = np.random.default_rng(6)
    layer = randomize(SplineCoupling(3, mask=[True, False, True], hidden=(8,), n_bins=4,
                                     parameterization=parameterization, activation="tanh",
                                     context_dim=2, rng=rng), rng, PARAM_SCALE)
    c = rng.normal(size=(5, 2))
    z = away_from_knots(layer, "forward", rng.normal(0, 2.0, size=(5, 3)), rng, context=c)
    x = away_from_knots(layer, "inverse", rng.normal(0, 2.0, size=(5, 3)), rng, context=c)
    assert_bijector(lambda v: layer.forward(v, context=c), lambda v: layer.inverse(v, context=c), z, x=x)
    assert_vjp(layer.forward_vjp, (z, c), layer.params, rng=2)
    assert_vjp(layer.inverse_vjp, (x, c), layer.params, rng=3)


@pytest.mark.parametrize("parameterization", MAPS)
def test_autoregressive_oracle_conditional(parameterization):
    rng = np.random.default_rng(7)
    layer = randomize(MaskedSplineAutoregressive(3, hidden=(9, 9), n_bins=4, activation="tanh",
                                                 parameterization=parameterization, context_dim=2,
                                                 order="random", rng=rng), rng, PARAM_SCALE)
    c = rng.normal(size=(4, 2))
    z = away_from_knots(layer, "forward", rng.normal(0, 2.0, size=(4, 3)), rng, context=c)
    x = away_from_knots(layer, "inverse", rng.normal(0, 2.0, size=(4, 3)), rng, context=c)
    assert_bijector(lambda v: layer.forward(v, context=c), lambda v: layer.inverse(v, context=c), z, x=x)
    assert_vjp(layer.forward_vjp, (z, c), layer.params, rng=4)   # dim sequential passes: exact
    assert_vjp(layer.inverse_vjp, (x, c), layer.params, rng=5)


def test_autoregressive_jacobian_is_triangular():
    rng = np.random.default_rng(8)
    layer = randomize(MaskedSplineAutoregressive(4, hidden=(12, 12), n_bins=5, activation="tanh",
                                                 order="reverse", rng=rng), rng, PARAM_SCALE)
    degrees = layer.made.input_degrees
    for direction in ("forward", "inverse"):
        jac = jacobian_fd(getattr(layer, direction), rng.normal(size=(3, 4)))
        for i in range(4):
            for j in range(4):
                if degrees[j] > degrees[i]:
                    assert np.all(jac[:, i, j] == 0.0)


def test_spline_flow_trains():
    rng = np.random.default_rng(9)
    flow = Flow(StandardNormal(2), Chain([
        SplineCoupling(2, mask=[False, True], hidden=(16,), n_bins=6, rng=rng),
        SplineCoupling(2, mask=[True, False], hidden=(16,), n_bins=6, rng=rng)]))
    x = rng.normal(size=(256, 2)) * [1.0, 0.3] + [0.5, -0.2]
    from refflow import Adam
    opt = Adam(flow.params, lr=1e-2)
    before = flow.log_prob(x).mean()
    for _ in range(100):
        opt.step(flow.nll_and_grad(x)[1])
    assert flow.log_prob(x).mean() > before + 0.3


@pytest.mark.parametrize("kwargs, match", [
    ({"n_bins": 1}, "n_bins"),
    ({"parameterization": "spam"}, "spam|parameterization"),
    ({"bound": -1.0}, "bound"),
])
def test_constructor_errors(kwargs, match):
    for cls in (RationalQuadraticSpline, SplineCoupling, MaskedSplineAutoregressive):
        with pytest.raises(ValueError, match=match):
            cls(4, **kwargs)


def test_far_outside_and_at_the_bound_are_finite():
    rng = np.random.default_rng(10)
    layer = randomize(MaskedSplineAutoregressive(3, hidden=(8,), n_bins=4, rng=rng), rng, 2.0)
    v = np.array([[3.0, -3.0, 1e3], [-1e3, 0.0, 3.0]])
    for direction in ("forward", "inverse"):
        out, log_det, pullback = getattr(layer, f"{direction}_vjp")(v)
        v_bar, grads = pullback(np.ones_like(out), np.ones(2))
        assert np.isfinite(out).all() and np.isfinite(log_det).all() and np.isfinite(v_bar).all()
        assert all(np.isfinite(g).all() for g in grads.values())
