"""Spline layers: RationalQuadraticSpline, SplineCoupling, MaskedSplineAutoregressive."""

import numpy as np
import pytest

from refflow import (
    Chain, Flow, MaskedSplineAutoregressive, RationalQuadraticSpline, SplineCoupling,
    StandardNormal,
)
from refflow.splines import rational_quadratic_spline
from refflow.testing import assert_bijector, assert_vjp, jacobian_fd

MAPS = ["durkan", "zuko", "distrax"]


def randomize(layer, rng, scale=0.5):
    for key, value in layer.params.items():
        layer.params[key] = rng.normal(0.0, scale, size=value.shape)
    return layer


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


def test_elementwise_durkan_matches_the_functional():
    rng = np.random.default_rng(4)
    layer = randomize(RationalQuadraticSpline(3, n_bins=7), rng, 1.0)
    z = rng.normal(0, 2.0, size=(5, 3))
    x, log_det = layer.forward(z)
    p = layer.params
    for j in range(3):
        y, ld = rational_quadratic_spline(z[:, j], np.tile(p["unnormalized_widths"][j], (5, 1)),
                                          np.tile(p["unnormalized_heights"][j], (5, 1)),
                                          np.tile(p["unnormalized_derivatives"][j], (5, 1)))
        np.testing.assert_allclose(x[:, j], y, rtol=1e-14, atol=1e-14)
    z_tail = np.array([[3.5, -10.0, 1e3]])
    x_tail, ld_tail = layer.forward(z_tail)
    np.testing.assert_array_equal(x_tail, z_tail)   # identity tails outside [-3, 3]
    np.testing.assert_array_equal(ld_tail, [0.0])


@pytest.mark.parametrize("parameterization", MAPS)
def test_coupling_density_direction_is_the_spline(parameterization):
    rng = np.random.default_rng(5)
    layer = randomize(SplineCoupling(4, hidden=(8,), n_bins=4, parameterization=parameterization,
                                     rng=rng), rng)
    x = rng.normal(size=(5, 4))
    z, log_det = layer.inverse(x)
    np.testing.assert_array_equal(z[:, :2], x[:, :2])  # identity part
    # by hand: conditioner on x_a, the map's knots, the kernel
    theta = layer.conditioner(x[:, :2]).reshape(5, 2, -1)
    from refflow.bijectors.spline_core import rqs, split_parameters
    out, ld, _ = rqs("spline", np.ascontiguousarray(x[:, 2:]).reshape(-1),
                     *split_parameters(theta.reshape(10, -1), 4), layer._map, False)
    np.testing.assert_allclose(z[:, 2:], out.reshape(5, 2), rtol=1e-14, atol=1e-14)
    np.testing.assert_allclose(log_det, ld.reshape(5, 2).sum(axis=1), rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("parameterization", MAPS)
def test_coupling_oracle_conditional(parameterization):
    rng = np.random.default_rng(6)
    layer = randomize(SplineCoupling(3, mask=[True, False, True], hidden=(8,), n_bins=4,
                                     parameterization=parameterization, activation="tanh",
                                     context_dim=2, rng=rng), rng)
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
                                                 order="random", rng=rng), rng)
    c = rng.normal(size=(4, 2))
    z = away_from_knots(layer, "forward", rng.normal(0, 2.0, size=(4, 3)), rng, context=c)
    x = away_from_knots(layer, "inverse", rng.normal(0, 2.0, size=(4, 3)), rng, context=c)
    assert_bijector(lambda v: layer.forward(v, context=c), lambda v: layer.inverse(v, context=c), z, x=x)
    assert_vjp(layer.forward_vjp, (z, c), layer.params, rng=4)   # dim sequential passes: exact
    assert_vjp(layer.inverse_vjp, (x, c), layer.params, rng=5)


def test_autoregressive_jacobian_is_triangular():
    rng = np.random.default_rng(8)
    layer = randomize(MaskedSplineAutoregressive(4, hidden=(12, 12), n_bins=5, activation="tanh",
                                                 order="reverse", rng=rng), rng)
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
