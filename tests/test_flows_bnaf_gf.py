"""The BNAF and GF builders (refflow.flows): FlowJAX's and zuko's layouts, both closed-form
directions, normalisation by quadrature, conditioning, seeding, save/load, FlowDensity, and
held-out log-likelihoods that never exceed the true density's (zuko issue #55's symptom)."""

import numpy as np
import pytest

from refflow import (
    BlockNeuralAutoregressive, Gaussianization, Householder, Inverse, Permute, Reverse,
)
from refflow.estimator import FlowDensity
from refflow.flows import BNAF, BUILDERS, GF
from refflow.testing import assert_bijector

# Trapezoid rule in t with x = sinh(t), t in [-8, 8] (|x| up to 1490: the leaky-tanh BNAF's
# tails are wide, its far-field slope being 0.01 per hidden layer), step 0.02: the quadrature
# error of these smooth integrands and the mass beyond stay below 3e-5 (against t in [-10, 10]
# and a 2x finer step); a wrong log-det term is off by O(0.1).
QUADRATURE_TOL = 1e-4
SMALL_BNAF = dict(n_layers=2, hidden_factors=(3,))
SMALL_GF = dict(n_layers=2, n_components=3)


def types(flow):
    return [type(layer) for layer in flow.bijector.layers]


def test_bnaf_layout_follows_flowjax():
    """FlowJAX: per layer the network then a permutation (random; a flip for dim 2; none for
    dim 1), in its transform direction = refflow's density direction (``invert=True``)."""
    flow = BNAF(3, **SMALL_BNAF, rng=0)
    assert types(flow) == [Permute, BlockNeuralAutoregressive] * 2
    assert types(BNAF(2, **SMALL_BNAF, rng=0)) == [Reverse, BlockNeuralAutoregressive] * 2
    assert types(BNAF(1, **SMALL_BNAF, rng=0)) == [BlockNeuralAutoregressive] * 2
    sampling = BNAF(3, **SMALL_BNAF, closed_form="sampling", rng=0)
    assert types(sampling) == [Inverse, Permute] * 2
    assert all(type(layer.bijector) is BlockNeuralAutoregressive
               for layer in sampling.bijector.layers[::2])
    assert BUILDERS["bnaf"] is BNAF and BUILDERS["gf"] is GF


def test_gf_layout_follows_zuko():
    flow = GF(3, n_layers=3, n_components=2, rng=0)
    assert types(flow) == [Gaussianization, Householder, Gaussianization, Householder,
                           Gaussianization]
    assert all(layer.n_components == 2 for layer in flow.bijector.layers[::2])
    assert flow.bijector.layers[1].params["vectors"].shape == (3, 3)
    assert types(GF(1, n_layers=2, rng=0)) == [Gaussianization] * 2


def integral_2d(flow, half_width=8.0, n=801):
    t = np.linspace(-half_width, half_width, n)
    xs, jac = np.sinh(t), np.cosh(t)
    xx, yy = np.meshgrid(xs, xs, indexing="ij")
    x = np.stack([xx.ravel(), yy.ravel()], axis=1)
    log_q = flow.log_prob(x)
    p = np.exp(log_q).reshape(n, n) * jac[:, None] * jac[None, :]
    inner = np.abs(x).max(axis=1) < 3
    departure = np.abs(log_q - flow.base.log_prob(x))[inner].max()
    return np.trapezoid(np.trapezoid(p, t, axis=1), t), departure


@pytest.mark.parametrize("build", [
    lambda: BNAF(2, n_layers=1, hidden_factors=(3,), rng=0),
    lambda: BNAF(2, **SMALL_BNAF, closed_form="sampling", activation="tanh", residual="gated",
                 parameterization="paper", rng=1),
    lambda: GF(2, **SMALL_GF, rng=0),
    lambda: GF(2, **SMALL_GF, kernel="logistic", weights="uniform", rng=2),
])
def test_log_prob_integrates_to_one_in_2d(build):
    integral, departure = integral_2d(build())
    assert abs(integral - 1.0) < QUADRATURE_TOL
    assert departure > 0.1   # not a near-identity map that would pass with any log-det


@pytest.mark.parametrize("build", [BNAF, GF])
def test_one_dimensional_flows_integrate_to_one(build):
    flow = build(1, n_layers=2, rng=3)
    t = np.linspace(-12.0, 12.0, 12001)       # x = sinh(t), |x| up to 8e4
    log_q = flow.log_prob(np.sinh(t)[:, None])
    assert abs(np.trapezoid(np.exp(log_q) * np.cosh(t), t) - 1.0) < QUADRATURE_TOL


@pytest.mark.parametrize("build", [
    lambda c: BNAF(3, **SMALL_BNAF, context_dim=c, rng=0),
    lambda c: BNAF(3, **SMALL_BNAF, context_dim=c, closed_form="sampling", rng=0),
    lambda c: GF(3, **SMALL_GF, context_dim=c, hidden=(8,), rng=0),
])
def test_conditional_flows_and_the_oracle(build, rng):
    flow = build(2)
    context = rng.normal(size=(4, 2))
    z = rng.normal(size=(4, 3))
    assert_bijector(lambda v: flow.bijector.forward(v, context),
                    lambda v: flow.bijector.inverse(v, context), z)
    x, log_q = flow.sample_and_log_prob(4, rng=1, context=context)
    np.testing.assert_allclose(flow.log_prob(x, context), log_q, rtol=1e-10, atol=1e-10)
    other = flow.log_prob(x, context[::-1])
    assert not np.allclose(other, log_q)


@pytest.mark.parametrize("build", [BNAF, GF])
def test_same_rng_gives_identical_models(build):
    a, b, c = build(3, rng=7), build(3, rng=7), build(3, rng=8)
    assert all(np.array_equal(a.params[k], b.params[k]) for k in a.params)
    assert any(not np.array_equal(a.params[k], c.params[k]) for k in a.params)


@pytest.mark.parametrize("build, kwargs, match", [
    (BNAF, dict(n_layers=0), "BNAF: n_layers"),
    (BNAF, dict(closed_form="both"), "BNAF: closed_form"),
    (BNAF, dict(hidden_factors=(0,)), "BNAF: BlockNeuralAutoregressive: hidden_factors"),
    (GF, dict(n_components=0), "GF: Gaussianization: n_components"),
    (GF, dict(shrink=2.0), "GF: Gaussianization: shrink"),
    (GF, dict(context_dim=-1), "GF: context_dim"),
])
def test_bad_options_name_the_builder(build, kwargs, match):
    with pytest.raises(ValueError, match=match):
        build(3, **kwargs)


@pytest.mark.parametrize("build", [
    lambda: BNAF(3, **SMALL_BNAF, context_dim=2, rng=0),
    lambda: BNAF(3, **SMALL_BNAF, closed_form="sampling", residual="gated", rng=0),
    lambda: GF(3, **SMALL_GF, parameterization="zuko", weights="uniform", shrink=1e-6, rng=0),
    lambda: GF(3, **SMALL_GF, context_dim=2, hidden=(8,), rng=0),
])
def test_built_flows_save_and_load(build, rng, tmp_path):
    from refflow import io

    flow = build()
    context = rng.normal(size=(5, 2)) if flow.bijector.context_dim else None
    io.save(tmp_path / "flow.npz", flow)
    loaded = io.load(tmp_path / "flow.npz")
    x = rng.normal(size=(5, 3))
    np.testing.assert_array_equal(loaded.log_prob(x, context), flow.log_prob(x, context))


@pytest.mark.parametrize("name", ["bnaf", "gf"])
def test_held_out_log_likelihood_never_beats_the_truth(name):
    """zuko #55: NAF log-likelihoods above the data's true log-likelihood. With exact log-dets a
    fitted flow's held-out mean log-likelihood cannot exceed the true density's on the same
    points beyond sampling error (Gibbs: E_p[log q] <= E_p[log p])."""
    rng = np.random.default_rng(0)
    a = np.array([[1.0, 0.0], [0.8, 0.6]])
    train, test = rng.normal(size=(2000, 2)) @ a.T, rng.normal(size=(4000, 2)) @ a.T
    cov_inv = np.linalg.inv(a @ a.T)
    true = -0.5 * np.einsum("ni,ij,nj->n", test, cov_inv, test) - np.log(2 * np.pi) \
        - 0.5 * np.log(np.linalg.det(a @ a.T))
    model = FlowDensity(flow=name, n_layers=2, epochs=20, lr=1e-2, random_state=0,
                        progress=False)
    model.fit(train)
    diff = model.score_samples(test) - true
    assert np.isfinite(diff).all()
    # the mean of log q - log p is <= 0 in expectation; allow 3 standard errors of noise
    assert diff.mean() <= 3 * diff.std(ddof=1) / np.sqrt(len(diff))
    assert diff.mean() > -0.2     # and the fit is close (measured: -0.05 BNAF, -0.01 GF)
    assert model.sample(5, random_state=1).shape == (5, 2)
