"""FlowDensity: the scikit-learn density-estimator surface over refflow's flows."""

import copy
import pickle
import warnings

import numpy as np
import pytest
from scipy import stats

from refflow import (
    Affine, AffineCoupling, Chain, Flow, MaskedAffineAutoregressive, MaskedSplineAutoregressive,
    SplineCoupling,
)
from refflow.datasets import two_moons
from refflow.estimator import FlowDensity, _NotFittedError
from refflow.train import History, TrainingDiverged

# the fold is one elementwise affine map: a few ulps of the log-density
RTOL_EXACT = 1e-12
# A fast configuration: 2 epochs of a small model.
FAST = dict(n_layers=2, hidden=(16,), epochs=2, random_state=0)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(5)
    # correlated, shifted and scaled features, so that the standardisation matters
    z = rng.normal(size=(300, 3))
    return z @ np.array([[2.0, 0.5, 0.0], [0.0, 0.3, 0.1], [0.0, 0.0, 40.0]]) + [5.0, -1.0, 300.0]


@pytest.fixture(scope="module")
def fitted(data):
    return FlowDensity("maf", **FAST).fit(data)


def inner_flow(model):
    """The fitted flow without the folded standardisation."""
    return Flow(model.flow_.base, model.flow_.bijector.layers[0])


# ------------------------------------------------------------------------------ fitting
def test_three_lines_on_two_moons_beat_a_gaussian():
    X, X_test = two_moons(1000, rng=0), two_moons(1000, rng=1)
    model = FlowDensity("nsf", n_layers=2, hidden=(32, 32), epochs=20, lr=3e-3,
                        random_state=0).fit(X)
    log_q = model.score_samples(X_test)
    gaussian = stats.multivariate_normal(X.mean(axis=0), np.cov(X.T)).logpdf(X_test)
    assert log_q.shape == (1000,) and np.isfinite(log_q).all()
    # two moons are far from Gaussian: the fitted flow gains ~0.7 nats per test point
    assert log_q.mean() > gaussian.mean() + 0.3
    assert model.score(X_test) == pytest.approx(log_q.mean(), rel=RTOL_EXACT)


def test_fitted_attributes(fitted, data):
    assert fitted.n_features_in_ == 3
    np.testing.assert_allclose(fitted.mean_, data.mean(axis=0), rtol=RTOL_EXACT)
    np.testing.assert_allclose(fitted.scale_, data.std(axis=0), rtol=RTOL_EXACT)
    assert isinstance(fitted.history_, History) and len(fitted.history_.train_nll) == 2
    assert len(fitted.history_.val_nll) == 2  # 10% held out by default
    layers = fitted.flow_.bijector.layers
    assert isinstance(fitted.flow_.bijector, Chain) and len(layers) == 2
    assert isinstance(layers[1], Affine)
    assert all(not layer.training for layer in layers[0].layers)  # eval mode


def test_standardisation_is_folded_exactly(fitted, data):
    # log q(x) = log q_s((x - mean) / scale) - sum_j log scale_j
    x = data[:50] + np.random.default_rng(0).normal(size=(50, 3))
    standardised = (x - fitted.mean_) / fitted.scale_
    expected = inner_flow(fitted).log_prob(standardised) - np.log(fitted.scale_).sum()
    np.testing.assert_allclose(fitted.score_samples(x), expected, rtol=RTOL_EXACT)
    # sampling: the inner flow's samples, mapped back to the data's units
    s = fitted.sample(20, random_state=3)
    s_inner = inner_flow(fitted).sample(20, rng=3)
    np.testing.assert_allclose(s, s_inner * fitted.scale_ + fitted.mean_, rtol=RTOL_EXACT)


def test_rescaling_by_a_power_of_two_shifts_the_log_density_exactly(data):
    # X * 8 has exactly 8 x the mean and standard deviation (powers of two scale floating
    # point exactly), so both fits see bitwise the same standardised data, train identically,
    # and log q_8(8 x) = log q(x) - dim log 8 to round-off.
    a = FlowDensity("realnvp", **FAST).fit(data)
    b = FlowDensity("realnvp", **FAST).fit(data * 8.0)
    np.testing.assert_array_equal(b.mean_, 8.0 * a.mean_)
    np.testing.assert_array_equal(b.scale_, 8.0 * a.scale_)
    assert b.history_.train_nll == a.history_.train_nll
    np.testing.assert_allclose(b.score_samples(data * 8.0),
                               a.score_samples(data) - 3 * np.log(8.0), rtol=RTOL_EXACT)
    np.testing.assert_allclose(b.sample(10, random_state=1), 8.0 * a.sample(10, random_state=1),
                               rtol=RTOL_EXACT)


def test_without_standardisation_the_affine_is_the_identity(data):
    model = FlowDensity("maf", standardize=False, **FAST).fit(data)
    np.testing.assert_array_equal(model.mean_, np.zeros(3))
    np.testing.assert_array_equal(model.scale_, np.ones(3))
    np.testing.assert_allclose(model.score_samples(data), inner_flow(model).log_prob(data),
                               rtol=RTOL_EXACT)


def test_random_state_determinism(data):
    a = FlowDensity("nsf", **FAST).fit(data)
    b = FlowDensity("nsf", **FAST).fit(data)
    c = FlowDensity("nsf", **dict(FAST, random_state=1)).fit(data)
    np.testing.assert_array_equal(a.score_samples(data), b.score_samples(data))
    assert all(np.array_equal(a.flow_.params[k], b.flow_.params[k]) for k in a.flow_.params)
    assert not np.array_equal(a.score_samples(data), c.score_samples(data))
    np.testing.assert_array_equal(a.sample(5, random_state=2), b.sample(5, random_state=2))
    # a Generator and a legacy RandomState are accepted too
    g = FlowDensity("maf", **dict(FAST, random_state=np.random.default_rng(4))).fit(data)
    r = FlowDensity("maf", **dict(FAST, random_state=np.random.RandomState(4))).fit(data)
    assert np.isfinite(g.score(data)) and np.isfinite(r.score(data))


def test_one_feature_uses_an_autoregressive_layout():
    x = np.random.default_rng(0).normal(3.0, 2.0, size=(400, 1))
    maf, nsf = MaskedAffineAutoregressive, MaskedSplineAutoregressive
    for flow, layer in [("realnvp", maf), ("glow", maf), ("nsf-coupling", nsf), ("nsf", nsf)]:
        model = FlowDensity(flow, **dict(FAST, epochs=30, hidden=(8,))).fit(x)
        types = {type(l) for l in model.flow_.bijector.layers[0].layers}
        assert layer in types and not types & {AffineCoupling, SplineCoupling}
        # a density on the line: it integrates to one in the original units
        t = np.linspace(-30.0, 36.0, 6001)
        integral = np.trapezoid(np.exp(model.score_samples(t[:, None])), t)
        assert abs(integral - 1.0) < 1e-3
    # the last fit (NSF) is close to the true N(3, 2^2) log-likelihood
    truth = stats.norm(3.0, 2.0).logpdf(x[:, 0]).mean()
    assert abs(model.score(x) - truth) < 0.1


def test_huge_values_standardise_without_overflow(rng):
    # squares of 1e200 overflow; the standardisation divides by the column's magnitude first
    X = rng.normal(size=(200, 2)) * [1e200, 1e-200] + [3e200, 0.0]
    model = FlowDensity("maf", **FAST).fit(X)
    np.testing.assert_allclose(model.mean_, X.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(model.scale_, (X / [1e200, 1e-200]).std(axis=0) * [1e200, 1e-200],
                               rtol=1e-12)
    assert np.isfinite(model.score_samples(X)).all()


def test_a_constant_feature_gets_scale_one(rng):
    X = np.column_stack([rng.normal(size=200), np.full(200, 0.1), rng.normal(size=200)])
    model = FlowDensity("maf", **FAST).fit(X)
    assert model.scale_[1] == 1.0 and model.mean_[1] == pytest.approx(0.1, rel=1e-15)
    assert np.isfinite(model.score_samples(X)).all()


@pytest.mark.parametrize("flow", ["planar", "radial", "sylvester", "glow", "nsf-coupling"])
def test_every_builder_fits(flow, data):
    model = FlowDensity(flow, **FAST).fit(data)
    assert np.isfinite(model.score(data)) and model.sample(3, random_state=0).shape == (3, 3)


def test_flow_kwargs_reach_the_builder(data):
    model = FlowDensity("maf", flow_kwargs={"scale": "tanh", "permutation": None}, **FAST).fit(data)
    made_layers = model.flow_.bijector.layers[0].layers
    assert [layer.scale for layer in made_layers] == ["tanh", "tanh"]


def test_progress_false_prints_nothing(data, capsys):
    FlowDensity("maf", progress=False, **FAST).fit(data)
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


# ------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("X, error, match", [
    (np.zeros(5), ValueError, "Expected 2D array, got 1D array"),
    (np.zeros((2, 3, 4)), ValueError, "Expected 2D array, got 3D array"),
    (np.zeros((0, 3)), ValueError, "0 sample"),
    (np.zeros((5, 0)), ValueError, "0 feature"),
    (np.array([[1.0, np.nan], [2.0, 3.0]]), ValueError, "NaN or infinity"),
    (np.array([[1.0, np.inf], [2.0, 3.0]]), ValueError, "NaN or infinity"),
    (np.ones((4, 2)) * 1j, ValueError, "Complex data not supported"),
    (np.array([["a", "b"], ["c", "d"]]), ValueError, "real numeric"),
    (np.array([[1.0, {"a": 1}], [2.0, 3.0]], dtype=object), TypeError, "must hold numbers"),
    (np.array([[1.0, "x"], [2.0, 3.0]], dtype=object), ValueError, "must hold numbers"),
    (np.ones((1, 3)), ValueError, "1 sample"),
    ([[1.0, 2.0], [3.0]], ValueError, "could not be converted"),
    (np.array([[1.7e308, 0.0], [-1.7e308, 1.0], [1.7e308, 2.0]]), ValueError, "overflows"),
])
def test_bad_X_in_fit(X, error, match):
    with pytest.raises(error, match=f"FlowDensity.fit: .*{match}"):
        FlowDensity(**FAST).fit(X)


def test_sparse_X_is_refused():
    sparse = pytest.importorskip("scipy.sparse")
    with pytest.raises(TypeError, match="sparse input is not supported"):
        FlowDensity(**FAST).fit(sparse.csr_matrix(np.eye(3)))


def test_object_array_of_numbers_is_accepted(data):
    model = FlowDensity("maf", **FAST).fit(data.astype(object))
    np.testing.assert_allclose(model.score_samples(data.astype(object)), model.score_samples(data),
                               rtol=RTOL_EXACT)


def test_wrong_number_of_features(fitted, data):
    for method in (fitted.score_samples, fitted.score):
        with pytest.raises(ValueError, match="X has 2 features, but FlowDensity is expecting 3 "
                                             "features as input"):
            method(data[:, :2])
    with pytest.raises(ValueError, match="Expected 2D array"):
        fitted.score_samples(data[0])  # one point must be (1, n_features)


@pytest.mark.parametrize("method, args", [("score_samples", (np.zeros((2, 2)),)),
                                          ("score", (np.zeros((2, 2)),)), ("sample", (3,))])
def test_not_fitted(method, args):
    model = FlowDensity()
    with pytest.raises(ValueError, match="not fitted yet") as info:
        getattr(model, method)(*args)
    assert isinstance(info.value, AttributeError)  # what sklearn's NotFittedError also is
    try:
        from sklearn.exceptions import NotFittedError
    except ImportError:
        assert isinstance(info.value, _NotFittedError)
    else:
        assert isinstance(info.value, NotFittedError)


# A value of the wrong type raises TypeError, one of the right type out of range ValueError.
@pytest.mark.parametrize("params, error, match", [
    ({"flow": "glowish"}, ValueError, "flow must be one of"),
    ({"flow": None}, TypeError, "flow must be one of"),
    ({"n_layers": 0}, ValueError, "n_layers"),
    ({"hidden": 64}, TypeError, "hidden"),
    ({"hidden": (8, -1)}, ValueError, "hidden"),
    ({"flow_kwargs": ["scale"]}, TypeError, "flow_kwargs"),
    ({"flow_kwargs": {"rng": 0}}, ValueError, "random_state"),
    ({"flow_kwargs": {"hidden": (8,)}}, ValueError, "'hidden' parameter"),
    ({"flow_kwargs": {"context_dim": 2}}, ValueError, r"context_dim.*fit\(X, context=C\)"),
    ({"flow_kwargs": {"n_bins": 8}, "flow": "maf"}, ValueError, "do not fit the 'maf' builder"),
    ({"flow_kwargs": {"scale": "bogus"}, "flow": "maf"}, ValueError, "MAF: scale"),
    ({"epochs": 0}, ValueError, "epochs"),
    ({"epochs": 2.0}, TypeError, "epochs"),
    ({"batch_size": 0}, ValueError, "batch_size"),
    ({"lr": 0.0}, ValueError, "lr"),
    ({"lr": float("nan")}, ValueError, "lr"),
    ({"weight_decay": -1.0}, ValueError, "weight_decay"),
    ({"validation_fraction": 1.0}, ValueError, "validation_fraction"),
    ({"validation_fraction": -0.1}, ValueError, "validation_fraction"),
    ({"patience": 0}, ValueError, "patience"),
    ({"standardize": "yes"}, TypeError, "standardize"),
    ({"random_state": "seed"}, ValueError, "random_state"),
    ({"random_state": -3}, ValueError, "random_state"),
    ({"progress": "bar"}, ValueError, "progress must be 'auto', True, False or None"),
    ({"progress": 1}, TypeError, "progress"),
])
def test_bad_parameters_raise_at_fit_and_change_nothing(params, error, match, fitted, data):
    model = copy.deepcopy(fitted)
    before = model.score_samples(data)
    model.set_params(**params)  # scikit-learn's rule: no validation before fit
    with pytest.raises(error, match=match):
        model.fit(data)
    np.testing.assert_array_equal(model.score_samples(data), before)


def test_a_diverging_fit_leaves_the_estimator_unchanged(fitted, data):
    model = copy.deepcopy(fitted)
    before = model.score_samples(data)
    model.set_params(flow_kwargs={"scale": "exp"}, lr=1e8, epochs=5)
    with pytest.raises(TrainingDiverged):
        model.fit(data)
    np.testing.assert_array_equal(model.score_samples(data), before)


def test_bad_sample_arguments(fitted):
    for n in (0, -1, 2.0, "3", True):
        error = ValueError if type(n) is int else TypeError
        with pytest.raises(error, match="n_samples"):
            fitted.sample(n)
    with pytest.raises(ValueError, match="random_state"):
        fitted.sample(2, random_state="seed")


# ------------------------------------------------------------------ scikit-learn surface
def test_init_only_stores_arguments():
    hidden, kwargs = [8, 8], {"n_bins": 4}
    model = FlowDensity("nope", hidden=hidden, flow_kwargs=kwargs, epochs=-1)
    params = model.get_params()
    assert params["hidden"] is hidden and params["flow_kwargs"] is kwargs
    assert params["flow"] == "nope" and params["epochs"] == -1
    assert not model.__sklearn_is_fitted__()


def test_get_and_set_params():
    model = FlowDensity()
    assert set(model.get_params()) == {
        "flow", "n_layers", "hidden", "flow_kwargs", "epochs", "batch_size", "lr",
        "weight_decay", "validation_fraction", "patience", "standardize", "random_state",
        "progress"}
    assert model.get_params(deep=False) == model.get_params(deep=True)
    assert model.set_params(flow="maf", epochs=3) is model
    assert (model.flow, model.epochs) == ("maf", 3)
    with pytest.raises(ValueError, match="Invalid parameter 'epoch' for estimator"):
        model.set_params(epoch=3)
    assert model.epochs == 3
    assert repr(model) == "FlowDensity(epochs=3, flow='maf')"
    assert repr(FlowDensity()) == "FlowDensity()"


def test_score_is_the_mean_log_likelihood(fitted, data):
    assert fitted.score(data, y=None) == pytest.approx(fitted.score_samples(data).mean(),
                                                       rel=RTOL_EXACT)


def test_pickle_and_deepcopy(fitted, data):
    expected = fitted.score_samples(data)
    for clone in (pickle.loads(pickle.dumps(fitted)), copy.deepcopy(fitted)):
        np.testing.assert_array_equal(clone.score_samples(data), expected)
        np.testing.assert_array_equal(clone.mean_, fitted.mean_)
        np.testing.assert_array_equal(clone.sample(4, random_state=0),
                                      fitted.sample(4, random_state=0))
    unfitted = pickle.loads(pickle.dumps(FlowDensity("maf", epochs=3)))
    assert unfitted.get_params() == FlowDensity("maf", epochs=3).get_params()


def test_save_and_load(fitted, data, tmp_path):
    from refflow import io

    path = tmp_path / "model.npz"
    fitted.save(path)
    loaded = io.load(path)
    assert isinstance(loaded, FlowDensity)
    assert loaded.get_params() == fitted.get_params()
    np.testing.assert_array_equal(loaded.score_samples(data), fitted.score_samples(data))
    np.testing.assert_array_equal(loaded.sample(4, random_state=1),
                                  fitted.sample(4, random_state=1))
    np.testing.assert_array_equal(loaded.mean_, fitted.mean_)
    np.testing.assert_array_equal(loaded.scale_, fitted.scale_)
    assert loaded.n_features_in_ == 3
    assert loaded.history_.as_dict() == fitted.history_.as_dict()
    # an unfitted estimator saves its parameters only
    io.save(tmp_path / "unfitted.npz", FlowDensity("maf", hidden=(8, 8), epochs=7))
    unfitted = io.load(tmp_path / "unfitted.npz")
    assert unfitted.get_params() == FlowDensity("maf", hidden=(8, 8), epochs=7).get_params()
    assert not unfitted.__sklearn_is_fitted__()


def test_sklearn_check_is_fitted_and_clone(fitted):
    pytest.importorskip("sklearn")
    from sklearn.base import clone
    from sklearn.exceptions import NotFittedError
    from sklearn.utils.validation import check_is_fitted

    with pytest.raises(NotFittedError):
        check_is_fitted(FlowDensity())
    check_is_fitted(fitted)
    fresh = clone(fitted)
    assert fresh.get_params() == fitted.get_params() and not fresh.__sklearn_is_fitted__()


@pytest.mark.parametrize("flow", ["nsf", "realnvp"])
def test_sklearn_check_estimator(flow):
    pytest.importorskip("sklearn")
    from sklearn.utils.estimator_checks import check_estimator

    model = FlowDensity(flow, n_layers=2, hidden=(16,), epochs=2)
    with warnings.catch_warnings():
        # it does not inherit from BaseEstimator, by design (no scikit-learn at import)
        warnings.filterwarnings("ignore", message=".*does not inherit from.*BaseEstimator")
        warnings.filterwarnings("ignore", message=".*SCIPY_ARRAY_API is not set")
        results = check_estimator(model, on_fail=None)
    failed = {r["check_name"]: repr(r["exception"]) for r in results if r["status"] == "failed"}
    assert not failed
    assert sum(r["status"] == "passed" for r in results) >= 40
