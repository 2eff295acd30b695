"""FlowDensity's whitening, the standard error of ``score`` and the history in data units."""

import math

import numpy as np
import pytest

from refflow import LULinear
from refflow.data import synthetic
from refflow.estimator import FlowDensity
from refflow.flows import BUILDERS

#: float64 evaluations of the same map by two routes (a triangular solve against the layer's
#: LU form, sums of a few hundred terms) agree to ~1e-13; 1e-10 leaves room and no more.
ROUND_TRIP = 1e-10

SMALL = dict(flow="maf", n_layers=2, hidden=(16,), epochs=3, random_state=0, progress=False)


@pytest.fixture(scope="module")
def data():
    return synthetic("curve", 600, rng=0)


def test_whitening_is_the_cholesky_factor(data):
    model = FlowDensity(**SMALL).fit(data)
    inner, whitening, affine = model.flow_.bijector.layers
    assert isinstance(whitening, LULinear)
    s = (data - model.mean_) / model.scale_
    chol = np.linalg.cholesky(np.cov(s, rowvar=False, bias=True))
    w = np.eye(data.shape[1])
    np.testing.assert_allclose(whitening.forward(w)[0], w @ chol.T, rtol=ROUND_TRIP,
                               atol=ROUND_TRIP)
    # log q(x) = log q_w(C^{-1} s) - sum log C_jj - sum log scale_j, by hand
    from refflow import Flow

    q_w = Flow(model.flow_.base, inner)
    by_hand = (q_w.log_prob(np.linalg.solve(chol, s.T).T) - np.sum(np.log(np.diag(chol)))
               - np.sum(np.log(model.scale_)))
    np.testing.assert_allclose(model.score_samples(data), by_hand, rtol=ROUND_TRIP)


def test_whiten_false_keeps_the_diagonal_standardisation(data):
    model = FlowDensity(whiten=False, **SMALL).fit(data)
    assert [type(layer).__name__ for layer in model.flow_.bijector.layers][1:] == ["Affine"]
    with pytest.raises(TypeError, match="whiten"):
        FlowDensity(whiten=1, **SMALL).fit(data)


def test_whitening_survives_constant_and_collinear_features():
    x = synthetic("curve", 300, rng=1)
    x = np.column_stack([x, np.full(300, 2.5), x[:, 0] * 3.0 - x[:, 1]])
    model = FlowDensity(**SMALL).fit(x)
    lp = model.score_samples(x)
    assert np.isfinite(lp).all()
    z = model.transform(x[:5])
    np.testing.assert_allclose(model.inverse_transform(z), x[:5], rtol=1e-8, atol=1e-8)


def test_history_in_data_units_is_the_score_of_the_validation_rows(data):
    """``val_log_likelihood[best_epoch]`` is ``score`` of the held-out rows (the split that
    ``refflow.training.fit`` documents: ``perm = gen.permutation(n)`` after the builder drew
    its initialisation from the same generator)."""
    model = FlowDensity(**SMALL, validation_fraction=0.25).fit(data)
    gen = np.random.default_rng(SMALL["random_state"])
    BUILDERS["maf"](data.shape[1], n_layers=2, hidden=(16,), rng=gen)
    perm = gen.permutation(data.shape[0])
    val = data[perm[:math.ceil(0.25 * data.shape[0])]]
    history = model.history_
    assert history.val_log_likelihood[history.best_epoch] == pytest.approx(
        model.score(val), rel=ROUND_TRIP)


def test_score_standard_error(data):
    model = FlowDensity(**SMALL).fit(data)
    lp = model.score_samples(data)
    mean, se = model.score(data, return_std=True)
    assert mean == model.score(data)
    assert se == pytest.approx(np.std(lp, ddof=1) / math.sqrt(lp.size), rel=1e-12)
    one = model.score(data[:1], return_std=True)
    assert one[0] == pytest.approx(lp[0], rel=1e-12) and math.isnan(one[1])
    with pytest.raises(TypeError, match="return_std"):
        model.score(data, return_std="yes")


def test_auto_keeps_the_family_with_the_best_validation_likelihood(data):
    model = FlowDensity("auto", **{k: v for k, v in SMALL.items() if k != "flow"}).fit(data)
    scores = model.candidate_scores_
    assert set(scores) == {"maf", "nsf"}
    assert model.flow_name_ == max(scores, key=scores.get)
    history = model.history_
    # the kept family's history is the winner's, in the data's units
    assert history.val_log_likelihood[history.best_epoch] == pytest.approx(
        scores[model.flow_name_], rel=1e-12)
    # the validation rows are perm[:ceil(0.1 n)] of the first permutation the generator
    # draws (before any family is built): the kept model scores them as its history says
    gen = np.random.default_rng(SMALL["random_state"])
    perm = gen.permutation(data.shape[0])
    n_val = math.ceil(0.1 * data.shape[0])
    val = data[perm[:n_val]]
    assert model.score(val) == pytest.approx(scores[model.flow_name_], rel=1e-10)


def test_auto_without_validation_rows_fits_the_first_family(data):
    options = {k: v for k, v in SMALL.items() if k != "flow"}
    model = FlowDensity("auto", validation_fraction=0.0, **options).fit(data)
    assert model.flow_name_ == "maf" and not hasattr(model, "candidate_scores_")


def test_auto_is_saved_and_loaded(tmp_path, data):
    from refflow import io

    options = {k: v for k, v in SMALL.items() if k != "flow"}
    model = FlowDensity("auto", **options).fit(data)
    path = tmp_path / "auto.npz"
    model.save(path)
    loaded = io.load(path)
    assert loaded.flow_name_ == model.flow_name_
    assert loaded.candidate_scores_ == model.candidate_scores_
    np.testing.assert_array_equal(loaded.score_samples(data), model.score_samples(data))


def test_lr_schedule(data):
    a = FlowDensity(lr_schedule="cosine", **SMALL).fit(data)
    b = FlowDensity(lr_schedule=None, **SMALL).fit(data)
    # the first epoch's steps run at nearly the same rates; later ones differ
    assert a.history_.train_nll[0] == pytest.approx(b.history_.train_nll[0], rel=1e-2)
    assert a.history_.train_nll[-1] != b.history_.train_nll[-1]
    with pytest.raises(ValueError, match="lr_schedule"):
        FlowDensity(lr_schedule="linear", **SMALL).fit(data)
    with pytest.raises(TypeError, match="lr_schedule"):
        FlowDensity(lr_schedule=1, **SMALL).fit(data)


def test_hidden_and_context_reach_the_nsf_coupling_builder():
    """The "nsf-coupling" builder names its options, so FlowDensity passes ``hidden`` (and
    ``context_dim``) to it as to every network family."""
    x = synthetic("curve", 200, rng=2)
    options = dict(n_layers=1, hidden=(7,), epochs=1, random_state=0, progress=False)
    model = FlowDensity("nsf-coupling", **options).fit(x)
    coupling = model.flow_.bijector.layers[0].layers[0]
    assert type(coupling).__name__ == "SplineCoupling"
    assert coupling.params["conditioner.w0"].shape[0] == 7
    context = np.random.default_rng(3).normal(size=(200, 1))
    conditional = FlowDensity("nsf-coupling", **options).fit(x, context=context)
    assert np.isfinite(conditional.score(x, context=context))
    with pytest.raises(ValueError, match="flow_kwargs do not fit"):
        FlowDensity("nsf-coupling", flow_kwargs={"n_bin": 4}, **options).fit(x)
