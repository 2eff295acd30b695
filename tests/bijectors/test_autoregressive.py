"""MaskedAffineAutoregressive (MAF) and IAF (its Inverse): paper facts, exact pullbacks, errors."""

import numpy as np
import pytest

from refflow import Chain, Flow, Inverse, MaskedAffineAutoregressive, StandardNormal
from refflow.bijectors.scale_maps import SCALE_MAPS
from refflow.testing import assert_bijector, assert_vjp, jacobian_fd

from ..helpers import made_two_orders_bound

DIM = 4


def make(rng, **kwargs):
    kwargs.setdefault("hidden", (12, 12))
    layer = MaskedAffineAutoregressive(DIM, rng=rng, **kwargs)
    for key, value in layer.params.items():
        layer.params[key] = rng.normal(0.0, 0.5, size=value.shape)
    return layer


@pytest.fixture
def rng():
    return np.random.default_rng(7)


@pytest.mark.parametrize("order", ["natural", "reverse", "random", np.array([2, 0, 3, 1])])
@pytest.mark.parametrize("direction", ["forward", "inverse"])
def test_jacobian_is_triangular_in_the_order(rng, order, direction):
    # tanh, not relu: a relu unit can be inactive for every sampled row, hiding an allowed
    # dependency; with tanh every allowed path carries a nonzero derivative
    layer = make(rng, order=order, activation="tanh")
    degrees = layer.made.input_degrees
    v = rng.normal(size=(3, DIM))
    jac = jacobian_fd(getattr(layer, direction), v)
    for i in range(DIM):
        for j in range(DIM):
            if degrees[j] > degrees[i]:
                # masked paths contribute exact zeros, so the FD derivative is exactly zero
                assert np.all(jac[:, i, j] == 0.0), (i, j)
    # and the lower part is really used (random weights connect every allowed pair)
    below = [(i, j) for i in range(DIM) for j in range(DIM) if degrees[j] < degrees[i]]
    assert all(np.any(np.abs(jac[:, i, j]) > 1e-8) for i, j in below)


@pytest.mark.parametrize("scale", sorted(SCALE_MAPS))
def test_log_det_is_the_sum_of_log_scales(rng, scale):
    layer = make(rng, scale=scale)
    x = rng.normal(size=(5, DIM))
    out = layer.made(x)
    log_scale, _ = SCALE_MAPS[scale](out[..., 1])
    z, log_det = layer.inverse(x)
    np.testing.assert_allclose(log_det, -log_scale.sum(axis=1), rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(z, (x - out[..., 0]) * np.exp(-log_scale), rtol=1e-13, atol=1e-13)
    x_back, forward_log_det = layer.forward(z)
    np.testing.assert_allclose(forward_log_det, log_scale.sum(axis=1), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("scale", sorted(SCALE_MAPS))
@pytest.mark.parametrize("hidden_degrees", ["cyclic", "equal", "random"])
def test_oracle_every_scale_map_and_degree_rule(rng, scale, hidden_degrees):
    layer = make(rng, scale=scale, hidden_degrees=hidden_degrees, order="random")
    z, x = rng.normal(size=(4, DIM)), rng.normal(size=(4, DIM))
    assert_bijector(layer.forward, layer.inverse, z, x=x)
    assert_vjp(layer.forward_vjp, z, layer.params, rng=1)   # D sequential passes: exact pullback
    assert_vjp(layer.inverse_vjp, x, layer.params, rng=2)


def test_sampling_pass_is_the_exact_inverse_of_the_density_pass(rng):
    layer = make(rng, hidden=(32, 32))
    z = rng.normal(size=(50, DIM))
    x, log_det = layer.forward(z)
    z_back, inv_log_det = layer.inverse(x)
    np.testing.assert_array_equal(log_det, -inv_log_det)  # forward's log-det is the density pass's
    # Exact to round-off. The sampler sets x = z s' + mu' from its own (incremental) sums,
    # the density pass recomputes mu, s at x with whole-row sums: |mu' - mu| <= d_mu and
    # |s'/s - 1| <= d_u (first order; exp scale) by made_two_orders_bound. Then
    # z_back - z = (mu' - mu) / s + z (s'/s - 1) + rounding, and the rounding of x = z s + mu
    # (about eps (|z s| + |mu|)) is divided by s; a few ulps of slack for the operations.
    out, d_out = made_two_orders_bound(layer.made, x)
    s = np.exp(out[..., 1])
    eps = np.finfo(float).eps
    bound = (4 * eps * (np.abs(x) + np.abs(out[..., 0])) / s + 4 * eps * np.abs(z)
             + d_out[..., 0] / s + np.abs(z) * d_out[..., 1])
    assert np.all(np.abs(z_back - z) <= bound)
    # and the bound is not vacuous: it stays near round-off of the sums, scaled by 1/s
    assert np.median(bound / (1 + np.abs(z) + 1 / s)) < 1e-12


def test_zero_last_exp_is_identity(rng):
    layer = MaskedAffineAutoregressive(DIM, zero_last=True, rng=rng)
    z = rng.normal(size=(3, DIM))
    x, log_det = layer.forward(z)
    np.testing.assert_array_equal(x, z)
    np.testing.assert_array_equal(log_det, np.zeros(3))


def test_iaf_trains_through_its_one_pass_forward(rng):
    maf = make(rng)
    iaf = Inverse(maf)
    z = rng.normal(size=(4, DIM))
    # IAF's sampling direction is MAF's density direction: one MADE pass
    calls = []
    original = maf.made._vjp
    maf.made._vjp = lambda *a: (calls.append(1), original(*a))[1]
    x, log_det, pullback = iaf.forward_vjp(z)
    pullback(np.ones_like(x), np.ones_like(log_det))
    maf.made._vjp = original
    assert len(calls) == 1
    assert_vjp(iaf.forward_vjp, z, iaf.params, rng=3)
    assert_bijector(iaf.forward, iaf.inverse, z)


def test_conditional_layer(rng):
    # tanh: no inactive units, so the context reaches every coordinate for every row
    layer = MaskedAffineAutoregressive(DIM, hidden=(12, 12), context_dim=3, scale="softclip",
                                       activation="tanh", rng=rng)
    for key, value in layer.params.items():
        layer.params[key] = rng.normal(0.0, 0.5, size=value.shape)
    z, x, c = rng.normal(size=(4, DIM)), rng.normal(size=(4, DIM)), rng.normal(size=(4, 3))
    assert_bijector(lambda v: layer.forward(v, context=c), lambda v: layer.inverse(v, context=c), z, x=x)
    assert_vjp(layer.forward_vjp, (z, c), layer.params, rng=4)
    assert_vjp(layer.inverse_vjp, (x, c), layer.params, rng=5)
    # the context changes every output coordinate (it feeds every first-layer hidden unit)
    x1, _ = layer.forward(z, context=c)
    x2, _ = layer.forward(z, context=c + 1.0)
    assert np.all(x1 != x2)
    # a shared context row: the same as repeating it; its cotangent is summed over rows
    shared = c[0]
    xs, lds, pb = layer.forward_vjp(z, context=shared)
    xr, ldr, pbr = layer.forward_vjp(z, context=np.repeat(c[:1], 4, axis=0))
    np.testing.assert_array_equal(xs, xr)
    c_bar_shared = pb(np.ones_like(xs), np.ones(4))[2]
    c_bar_rows = pbr(np.ones_like(xs), np.ones(4))[2]
    assert c_bar_shared.shape == (3,)
    np.testing.assert_allclose(c_bar_shared, c_bar_rows.sum(axis=0), rtol=1e-12)


def test_conditional_flow_log_prob_vjp_gives_context_gradient(rng):
    layer = MaskedAffineAutoregressive(DIM, hidden=(12, 12), context_dim=2, rng=rng)
    for key, value in layer.params.items():
        layer.params[key] = rng.normal(0.0, 0.4, size=value.shape)
    flow = Flow(StandardNormal(DIM), Chain([layer, MaskedAffineAutoregressive(DIM, hidden=(8,), order="reverse",
                                                                          context_dim=2, rng=rng)]))
    x, c = rng.normal(size=(3, DIM)), rng.normal(size=(3, 2))
    assert_vjp(flow.log_prob_vjp, (x, c), flow.params, rng=6)
    samples = flow.sample(5, rng=0, context=c[0])
    assert samples.shape == (5, DIM)
    np.testing.assert_allclose(flow.sample_and_log_prob(5, rng=0, context=c[0])[1],
                               flow.log_prob(samples, context=c[0]), rtol=1e-10, atol=1e-10)
    nll, grads = flow.nll_and_grad(x, context=c)
    assert nll == pytest.approx(-flow.log_prob(x, context=c).mean(), rel=1e-13)
    assert set(grads) == set(flow.params)


def test_context_errors(rng):
    plain = MaskedAffineAutoregressive(DIM, hidden=(8,), rng=rng)
    conditional = MaskedAffineAutoregressive(DIM, hidden=(8,), context_dim=2, rng=rng)
    z = rng.normal(size=(3, DIM))
    with pytest.raises(ValueError, match="unconditional"):
        plain.forward(z, context=np.zeros((3, 2)))
    with pytest.raises(ValueError, match="conditional"):
        conditional.forward(z)
    with pytest.raises(ValueError, match="context"):
        conditional.inverse(z, context=np.zeros((3, 5)))
    with pytest.raises(ValueError, match="rows"):
        conditional.inverse(z, context=np.zeros((2, 2)))
    with pytest.raises(ValueError, match="context"):
        conditional.inverse(z, context=np.full((3, 2), np.nan))
    with pytest.raises(ValueError, match="context_dims"):
        Chain([conditional, MaskedAffineAutoregressive(DIM, hidden=(8,), context_dim=3, rng=rng)])


@pytest.mark.parametrize("kwargs, match", [
    ({"scale": "cube"}, "scale"),
    ({"order": np.array([0, 0, 1, 2])}, "order|permutation"),
    ({"order": "sideways"}, "order"),
    ({"hidden": (2, 8)}, "hidden|narrower|width"),
    ({"context_dim": 0}, "context_dim"),
])
def test_constructor_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MaskedAffineAutoregressive(DIM, **kwargs)


def test_float32_sampling_stays_float32(rng):
    layer = make(rng)
    z = rng.normal(size=(3, DIM)).astype(np.float32)
    x, log_det, pullback = layer.forward_vjp(z)
    assert x.dtype == np.float32 and log_det.dtype == np.float32
    z_bar, grads = pullback(np.ones_like(x), np.ones_like(log_det))
    assert z_bar.dtype == np.float32 and all(g.dtype == np.float64 for g in grads.values())
    x64, _ = layer.forward(z.astype(np.float64))
    np.testing.assert_allclose(x, x64, rtol=1e-4, atol=1e-4)
