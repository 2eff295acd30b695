"""``FlowDensity(blend=True)``: the candidate flows and a full-covariance Gaussian mixture,
weighted by the validation rows.

The pieces are checked against independent computations: the mixture's EM against
scikit-learn's ``GaussianMixture``, the weights against the optimality conditions of the
concave problem they solve, the blend's density against a log-sum-exp of its flows computed
here, and the flows and histories against a fit without the blend (which must not change).
"""

import pickle

import numpy as np
import pytest
from scipy.stats import norm

from refflow import io
from refflow.data import toy
from refflow.estimator import FlowDensity, blend_log_likelihood, blend_weights
from refflow.estimator import _full_mixture_em as full_mixture_em

#: Sums of the same terms in another order (the blend's mean against score's chunks).
SAME_SUM = 1e-12
#: EM on the weights stops when no weight moves by 1e-10 in a round: the KKT ratios are 1 to
#: about that times the problem's curvature.
KKT_TOL = 1e-7
#: Small fits: two candidates, whitened and not (400 rows: whiten="auto" fits both ways).
SMALL = dict(n_layers=1, hidden=(8,), epochs=6, patience=None, random_state=0,
             progress=False)


@pytest.fixture(scope="module")
def moons():
    return toy("two_moons", 400, rng=0)


@pytest.fixture(scope="module")
def fitted(moons):
    return (FlowDensity(blend=True, **SMALL).fit(moons),
            FlowDensity(blend=False, **SMALL).fit(moons))


def test_full_mixture_em_matches_scikit_learn():
    sklearn_mixture = pytest.importorskip("sklearn.mixture")
    rng = np.random.default_rng(0)
    a = rng.multivariate_normal([0, 0, 0], [[1, .5, 0], [.5, 1, .2], [0, .2, 1]], size=600)
    b = rng.multivariate_normal([6, 1, -4], [[2, -.3, 0], [-.3, .5, 0], [0, 0, .3]], size=400)
    z = np.vstack([a, b])
    log_w, means, chols, mean_ll = full_mixture_em(z, 2, np.random.default_rng(0))
    ref = sklearn_mixture.GaussianMixture(2, covariance_type="full", reg_covar=1e-6, tol=1e-10,
                                          max_iter=1000, random_state=0).fit(z)
    # the same maximum: well-separated clusters, both EMs converged to their tolerance
    assert mean_ll == pytest.approx(ref.score(z), rel=1e-6)
    order = np.argsort(means[:, 0])
    ref_order = np.argsort(ref.means_[:, 0])
    np.testing.assert_allclose(np.exp(log_w[order]), ref.weights_[ref_order], atol=1e-5)
    np.testing.assert_allclose(chols[order] @ np.swapaxes(chols[order], 1, 2),
                               ref.covariances_[ref_order], atol=1e-4)


def _two_bumps(n=4000, seed=0):
    """Rows of 0.3 N(0, 1) + 0.7 N(3, 1) and the log-densities of three components: the two
    bumps and a useless one far away."""
    rng = np.random.default_rng(seed)
    x = np.where(rng.random(n) < 0.3, rng.normal(0.0, 1.0, n), rng.normal(3.0, 1.0, n))
    return np.stack([norm.logpdf(x, 0.0), norm.logpdf(x, 3.0), norm.logpdf(x, 8.0)], axis=1)


def test_blend_weights_meet_the_optimality_conditions():
    log_q = _two_bumps()
    w = blend_weights(log_q)
    assert w.sum() == pytest.approx(1.0, abs=1e-12) and (w >= 0).all()
    # KKT of max mean log sum_j w_j q_j over the simplex: mean(q_j / q_w) = 1 where w_j > 0
    # (and <= 1 where w_j = 0); q_w computed here, not by blend_log_likelihood
    ratio = np.mean(np.exp(log_q) / (np.exp(log_q) @ w)[:, None], axis=0)
    active = w > 1e-3
    np.testing.assert_allclose(ratio[active], 1.0, atol=KKT_TOL)
    assert (ratio[~active] <= 1.0 + KKT_TOL).all()
    assert active.tolist() == [True, True, False]
    # the sampling weights, to a few standard errors (sqrt(0.21 / 4000) = 0.007)
    assert abs(w[0] - 0.3) < 0.03
    # and no point of the simplex does better (a check that does not use the conditions)
    best = np.mean(blend_log_likelihood(log_q, w))
    others = np.random.default_rng(1).dirichlet(np.ones(3), size=200)
    assert all(np.mean(blend_log_likelihood(log_q, v)) <= best for v in others)


def test_blend_weights_of_equal_lone_and_unscorable_components():
    log_q = _two_bumps()
    # two copies of one model: EM's first round leaves equal weights where they are
    np.testing.assert_array_equal(blend_weights(log_q[:, [1, 1]]), [0.5, 0.5])
    assert blend_weights(log_q[:, [0]]).tolist() == [1.0]
    # a row no component can score is left out, not a NaN
    dead = np.vstack([log_q, [-np.inf, -np.inf, -np.inf]])
    np.testing.assert_allclose(blend_weights(dead), blend_weights(log_q), rtol=0, atol=1e-15)


@pytest.mark.parametrize("log_q, message", [
    (np.zeros(3), r"log_q must be \(rows, components\), got shape \(3,\)"),
    (np.zeros((3, 0)), r"log_q must be \(rows, components\), got shape \(3, 0\)"),
    (np.array([[0.0, np.nan]]), "log_q must not hold NaN or \\+inf"),
    (np.array([[0.0, np.inf]]), "log_q must not hold NaN or \\+inf"),
])
def test_blend_weights_refuse_bad_log_densities(log_q, message):
    with pytest.raises(ValueError, match=message):
        blend_weights(log_q)


@pytest.mark.parametrize("weights, message", [
    ([1.0], r"weights \(components,\), got shapes \(2, 2\) and \(1,\)"),
    ([0.5, 0.6], r"weights must be non-negative and sum to 1, got \[0.5, 0.6\]"),
    ([1.5, -0.5], r"weights must be non-negative and sum to 1, got \[1.5, -0.5\]"),
    ([np.nan, 1.0], "weights must be non-negative and sum to 1"),
])
def test_blend_log_likelihood_refuses_bad_weights(weights, message):
    with pytest.raises(ValueError, match=message):
        blend_log_likelihood(np.zeros((2, 2)), weights)


def test_blend_log_likelihood_is_a_stable_log_sum_exp():
    log_q = np.array([[-1000.0, -1001.0], [1000.0, 999.0], [-np.inf, -3.0], [-np.inf, -np.inf]])
    w = np.array([0.25, 0.75])
    expected = [-1000.0 + np.log(0.25 + 0.75 * np.exp(-1.0)),
                1000.0 + np.log(0.25 + 0.75 * np.exp(-1.0)), np.log(0.75) - 3.0, -np.inf]
    np.testing.assert_allclose(blend_log_likelihood(log_q, w), expected, rtol=1e-15)
    # a zero weight adds nothing, even against a -inf log-density
    np.testing.assert_array_equal(blend_log_likelihood(log_q[:3], [0.0, 1.0]), log_q[:3, 1])


def test_blend_scores_the_weighted_flows(fitted, moons):
    model, _ = fitted
    blend = model._blend
    assert blend.flows[0] is model.flow_
    assert blend.weights.sum() == pytest.approx(1.0, abs=1e-12) and (blend.weights >= 0).all()
    x = toy("two_moons", 300, rng=1)
    # log-densities of a few nats: the plain sum of exponentials is exact enough here
    by_hand = np.log(np.exp(np.stack([f.log_prob(x) for f in blend.flows], axis=1))
                     @ blend.weights)
    np.testing.assert_allclose(model.score_samples(x), by_hand, rtol=1e-12)
    # the validation score is the blend's, and score agrees with it
    val = moons[model.validation_index_]
    assert model.blend_score_ == pytest.approx(model.score(val), rel=SAME_SUM)
    # the weights: every candidate and the mixture, optimal on the validation rows
    names = set(model.candidate_scores_) | {"gmm"}
    assert set(model.blend_weights_) == names
    assert sum(model.blend_weights_.values()) == pytest.approx(1.0, abs=1e-12)


def test_blend_does_not_change_the_flows(fitted, moons):
    blended, plain = fitted
    assert not hasattr(plain, "blend_weights_") and getattr(plain, "_blend", None) is None
    assert blended.history_.as_dict()["val_nll"] == plain.history_.as_dict()["val_nll"]
    assert blended.candidate_scores_ == plain.candidate_scores_
    for key, value in plain.flow_.params.items():
        np.testing.assert_array_equal(blended.flow_.params[key], value)
    x = toy("two_moons", 200, rng=2)
    np.testing.assert_array_equal(blended.transform(x), plain.transform(x))
    np.testing.assert_array_equal(plain.score_samples(x), plain.flow_.log_prob(x))
    # on the validation rows the blend is at least as good as the kept flow (a vertex of
    # the weights' simplex)
    val = moons[blended.validation_index_]
    assert blended.blend_score_ >= plain.score(val) - 1e-12


def test_saved_and_pickled_blends_score_the_same(fitted, tmp_path):
    model, _ = fitted
    x = toy("two_moons", 200, rng=3)
    path = tmp_path / "blend.npz"
    model.save(path)
    for copy in (io.load(path), pickle.loads(pickle.dumps(model))):
        np.testing.assert_array_equal(copy.score_samples(x), model.score_samples(x))
        np.testing.assert_array_equal(copy._blend.weights, model._blend.weights)
        assert copy.blend_weights_ == model.blend_weights_
        assert copy.blend_score_ == model.blend_score_
        np.testing.assert_array_equal(copy.sample(50, random_state=4),
                                      model.sample(50, random_state=4))


def test_blend_samples(fitted, moons):
    model, _ = fitted
    a = model.sample(4000, random_state=0)
    assert a.shape == (4000, 2) and np.isfinite(a).all()
    np.testing.assert_array_equal(a, model.sample(4000, random_state=0))
    # the blend was fitted to the moons: its draws' mean is the data's to a few standard
    # errors (std <= 1 per coordinate: 4 / sqrt(4000) + 4 / sqrt(400) < 0.3)
    np.testing.assert_allclose(a.mean(axis=0), moons.mean(axis=0), atol=0.3)
    # draws of sum_j w_j q_j: E[w_j q_j(x) / q(x)] = w_j exactly, so the mean responsibility
    # of each component over the draws is its weight, to 5 standard errors (each
    # responsibility is in [0, 1]: its variance is at most w_j (1 - w_j) <= 1/4)
    blend = model._blend
    log_q = np.stack([f.log_prob(a) for f in blend.flows], axis=1) + np.log(blend.weights)
    resp = np.exp(log_q - np.logaddexp.reduce(log_q, axis=1)[:, None])
    np.testing.assert_allclose(resp.mean(axis=0), blend.weights, atol=5 * 0.5 / np.sqrt(4000))
    assert len(blend.weights) > 2 and blend.weights.max() > 0.2


@pytest.mark.parametrize("kwargs, fit_kwargs, error, message", [
    ({"blend": "yes"}, {}, ValueError, "blend must be 'auto', True or False, got 'yes'"),
    ({"blend": 1}, {}, TypeError, "blend must be 'auto', True or False"),
    ({"blend": True, "validation_fraction": 0.0}, {}, ValueError, "needs validation_fraction"),
    ({"blend": True, "flow": "maf"}, {"context": np.zeros((400, 1))}, ValueError,
     "blend=True needs a fit without context"),
])
def test_bad_blend_requests_change_nothing(moons, kwargs, fit_kwargs, error, message):
    model = FlowDensity(**dict(SMALL, **kwargs))
    with pytest.raises(error, match=message):
        model.fit(moons, **fit_kwargs)
    assert not hasattr(model, "flow_")


def test_blend_of_a_single_family_is_the_flow_and_the_mixture(moons):
    model = FlowDensity("maf", blend=True, whiten=True, **SMALL).fit(moons)
    assert set(model.blend_weights_) == {"maf", "gmm"}


def test_blend_auto_is_for_flow_auto_without_context(moons):
    assert FlowDensity().blend == "auto"
    assert hasattr(FlowDensity(**SMALL).fit(moons), "blend_weights_")
    # a single family, a conditional fit, no validation rows: no blend
    assert not hasattr(FlowDensity("maf", **SMALL).fit(moons), "blend_weights_")
    assert not hasattr(FlowDensity(**SMALL).fit(moons, context=moons[:, :1]),
                       "blend_weights_")
    assert not hasattr(FlowDensity(**dict(SMALL, validation_fraction=0.0)).fit(moons),
                       "blend_weights_")
    # and a refit without a blend leaves none of the last one behind
    model = FlowDensity(**SMALL).fit(moons)
    model.set_params(blend=False).fit(moons)
    assert getattr(model, "_blend", None) is None and not hasattr(model, "blend_score_")


def test_a_streamed_blend_is_the_in_memory_one(fitted, moons, tmp_path):
    model, _ = fitted
    path = tmp_path / "rows.npy"
    np.save(path, moons)
    on_disk = FlowDensity(blend=True, **SMALL).fit(np.load(path, mmap_mode="r"))
    assert on_disk.blend_weights_ == model.blend_weights_
    x = toy("two_moons", 100, rng=5)
    np.testing.assert_array_equal(on_disk.score_samples(x), model.score_samples(x))


def test_the_mixture_sees_at_most_blend_max_rows(moons, monkeypatch):
    import refflow.estimator as estimator

    seen = []
    original = estimator._full_mixture_bic
    monkeypatch.setattr(estimator, "BLEND_MAX_ROWS", 50)
    monkeypatch.setattr(estimator, "_full_mixture_bic",
                        lambda z: seen.append(z.copy()) or original(z))
    model = FlowDensity(blend=True, **SMALL).fit(moons)
    (rows,) = seen
    assert rows.shape == (50, 2)
    # evenly spaced training rows (never a validation row), standardised
    val = set(model.validation_index_.tolist())
    training = np.array([i for i in range(len(moons)) if i not in val])
    chosen = training[(np.arange(50) * len(training)) // 50]
    np.testing.assert_allclose(rows, (moons[chosen] - model.mean_) / model.scale_, rtol=1e-13,
                               atol=1e-13)


@pytest.mark.parametrize("damage, message", [
    (lambda b: b.update(weights=[2.0] + b["weights"][1:]), "blend weights must be"),
    (lambda b: b.update(weights=b["weights"][:-1]), "blend weights must be"),
    (lambda b: b.update(flows="x"), "blend weights must be"),
    (lambda b: b.update(blend_score_=float("nan")), "blend_score_ must be a finite number"),
    (lambda b: b.pop("blend_weights_"), "blend must have exactly the keys"),
])
def test_a_damaged_blend_entry_is_refused(fitted, damage, message):
    import copy

    model, _ = fitted
    config = copy.deepcopy(model._config())
    assert FlowDensity._from_config(copy.deepcopy(config)).blend_weights_ == \
        model.blend_weights_
    damage(config["fitted"]["blend"])
    with pytest.raises(ValueError, match=message):
        FlowDensity._from_config(config)


def test_blend_draws_each_flow_in_proportion_to_its_weight():
    from refflow.bijectors import Affine
    from refflow.distributions import Flow, StandardNormal
    from refflow.estimator import _Blend

    def shifted(mu):
        layer = Affine(1)
        layer.params["shift"] = np.array([mu])
        return Flow(StandardNormal(1), layer)

    blend = _Blend([shifted(-8.0), shifted(8.0)], [0.2, 0.8])
    x = blend.sample(4000, np.random.default_rng(0))
    # every draw is from one bump or the other (|x -+ 8| < 6 sigma); a fraction 0.8 from the
    # second, to 5 standard errors (sqrt(0.16 / 4000) = 0.0063), in a random order
    assert x.shape == (4000, 1) and (np.abs(np.abs(x) - 8.0) < 6.0).all()
    assert abs(np.mean(x > 0) - 0.8) < 5 * 0.0063
    assert 0.6 < np.mean(x[:200] > 0) < 1.0   # not sorted by component
    # and its density is the weighted sum of the two
    grid = np.array([[-8.0], [0.0], [8.0]])
    expected = np.log(0.2 * np.exp(shifted(-8.0).log_prob(grid))
                      + 0.8 * np.exp(shifted(8.0).log_prob(grid)))
    np.testing.assert_allclose(blend.log_prob(grid), expected, rtol=1e-13)
