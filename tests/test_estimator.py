"""FlowDensity: the scikit-learn density-estimator surface over refflow's flows."""

import copy
import pickle
import sys
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
    # whiten=False: these tests check the diagonal standardisation folded in alone (the
    # whitening layer is tested in test_estimator_defaults.py); base="gaussian": they check
    # the standard normal base against scipy.stats.norm (the Student t base, the default
    # since, against scipy.stats.t in test_estimator_defaults.py)
    return FlowDensity("maf", whiten=False, base="gaussian", **FAST).fit(data)


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
    model = FlowDensity("maf", standardize=False, whiten=False, **FAST).fit(data)
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
        "flow", "n_layers", "hidden", "flow_kwargs", "base", "epochs", "batch_size", "lr",
        "lr_schedule", "weight_decay", "validation_fraction", "patience", "average",
        "average_decay", "standardize",
        "whiten", "rotation", "blend", "random_state", "progress"}
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


# ------------------------------------------------------- feature names, as scikit-learn
def test_feature_names_follow_scikit_learn_exactly(data):
    """A data frame fit records feature_names_in_; other, reordered or missing columns raise
    scikit-learn's own error, and a plain array its warning (compared with KernelDensity)."""
    pd = pytest.importorskip("pandas")
    pytest.importorskip("sklearn")
    from sklearn.neighbors import KernelDensity

    frame = pd.DataFrame(data, columns=["a", "b", "c"])
    model = FlowDensity("maf", **FAST).fit(frame)
    kde = KernelDensity().fit(frame)
    assert model.feature_names_in_.dtype == object
    np.testing.assert_array_equal(model.feature_names_in_, kde.feature_names_in_)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        by_frame = model.score_samples(frame)
    np.testing.assert_array_equal(by_frame, model.flow_.log_prob(data))
    for bad in (frame[["c", "a", "b"]], frame.rename(columns={"a": "z"}), frame[["a", "b"]]):
        for method in ("score_samples", "score", "transform"):
            with pytest.raises(ValueError) as ours:
                getattr(model, method)(bad)
            with pytest.raises(ValueError) as theirs:
                getattr(kde, "score_samples" if method == "transform" else method)(bad)
            assert str(ours.value) == str(theirs.value)
    for X in (data, frame.to_numpy()):
        with pytest.warns(UserWarning) as ours:
            model.score_samples(X)
        with pytest.warns(UserWarning) as theirs:
            kde.score_samples(X)
        assert [str(w.message).replace("FlowDensity", "KernelDensity") for w in ours] == \
            [str(w.message) for w in theirs]
    mixed = pd.DataFrame(data, columns=["a", 1, "c"])
    with pytest.raises(TypeError) as ours:
        FlowDensity(**FAST).fit(mixed)
    with pytest.raises(TypeError) as theirs:
        KernelDensity().fit(mixed)
    assert str(ours.value) == str(theirs.value)
    # names survive save/load; a refit on a plain array forgets them
    loaded = pickle.loads(pickle.dumps(model))
    np.testing.assert_array_equal(loaded.feature_names_in_, model.feature_names_in_)
    model.fit(data)
    assert not hasattr(model, "feature_names_in_")


def test_feature_names_pass_scikit_learns_own_check():
    pytest.importorskip("pandas")
    pytest.importorskip("sklearn")
    from sklearn.utils.estimator_checks import check_dataframe_column_names_consistency

    check_dataframe_column_names_consistency("FlowDensity", FlowDensity("maf", **FAST))


def test_feature_names_are_saved(data, tmp_path):
    pd = pytest.importorskip("pandas")
    from refflow import io

    model = FlowDensity("maf", **FAST).fit(pd.DataFrame(data, columns=["a", "b", "c"]))
    model.save(tmp_path / "m.npz")
    loaded = io.load(tmp_path / "m.npz")
    np.testing.assert_array_equal(loaded.feature_names_in_, ["a", "b", "c"])
    with pytest.raises(ValueError, match="Feature names must be in the same order"):
        loaded.score_samples(pd.DataFrame(data[:, ::-1], columns=["c", "b", "a"]))


# ------------------------------------------------------------------- rows out of range
def test_rows_out_of_range_score_minus_inf_and_the_others_exactly(fitted, data):
    # 3000 rows: GEMMs this large do not depend on the number of rows (see test_memory), so
    # the other rows' scores are bit for bit those of the data without the far rows
    X = np.tile(data, (10, 1))
    clean = fitted.score_samples(X)
    far = X.copy()
    far[17] = 1e200
    far[1500, 2] = -1e200
    good = np.ones(len(X), dtype=bool)
    good[[17, 1500]] = False
    with pytest.warns(RuntimeWarning) as caught:
        scores = fitted.score_samples(far)
    assert len(caught) == 1
    assert str(caught[0].message) == (
        "FlowDensity.score_samples: 2 of 3000 rows lie outside the range where the model's "
        "log-density is representable in float64 (the first is row 17); their scores are -inf")
    assert scores[17] == scores[1500] == -np.inf
    np.testing.assert_array_equal(scores[good], clean[good])
    np.testing.assert_array_equal(scores[good], fitted.score_samples(X[good]))
    # chunked passes give the same, and score() is the mean, -inf
    with pytest.warns(RuntimeWarning):
        np.testing.assert_array_equal(fitted.score_samples(far, batch_size=700), scores)
    with pytest.warns(RuntimeWarning, match="2 of 3000 rows"):
        assert fitted.score(far) == -np.inf
    # a few rows (a small GEMM): still exactly the scores of the rows without the far one
    with pytest.warns(RuntimeWarning, match="1 of 4 rows"):
        few = fitted.score_samples(far[15:19])
    np.testing.assert_array_equal(few[[0, 1, 3]], fitted.score_samples(far[[15, 16, 18]]))


def test_every_row_out_of_range(fitted):
    with pytest.warns(RuntimeWarning, match="3 of 3 rows"):
        assert (fitted.score_samples(np.full((3, 3), 1e300)) == -np.inf).all()


# ------------------------------------------------------------------- units of the history
def test_history_records_log_likelihoods_in_the_data_units(data):
    # whiten=False: nll_shift is then sum(log scale_) alone (the whitened shift is tested in
    # test_estimator_defaults.py)
    a = FlowDensity("realnvp", whiten=False, **FAST).fit(data)
    b = FlowDensity("realnvp", whiten=False, **FAST).fit(data * 8.0)  # same standardised data
    assert b.history_.val_nll == a.history_.val_nll
    assert a.history_.nll_shift == pytest.approx(np.log(a.scale_).sum(), rel=RTOL_EXACT)
    # log q_8(8 x) = log q(x) - 3 log 8 (three features)
    np.testing.assert_allclose(b.history_.val_log_likelihood,
                               np.array(a.history_.val_log_likelihood) - 3 * np.log(8.0),
                               rtol=RTOL_EXACT)
    np.testing.assert_allclose(a.history_.train_log_likelihood,
                               -(np.array(a.history_.train_nll) + a.history_.nll_shift),
                               rtol=RTOL_EXACT)
    # older files without nll_shift still load (shift 0)
    old = a.history_.as_dict()
    del old["nll_shift"]
    assert History.from_dict(old).nll_shift == 0.0


# ---------------------------------------------------------------------------- progress
class _Terminal:
    """A stderr that says it is a terminal."""

    def __init__(self, tty):
        self.tty, self.text = tty, []

    def isatty(self):
        return self.tty

    def write(self, text):
        self.text.append(text)
        return len(text)

    def flush(self):
        pass


def test_progress_auto_is_the_default_and_shows_on_a_terminal_only(data, monkeypatch):
    assert FlowDensity().progress == "auto"
    terminal, pipe = _Terminal(True), _Terminal(False)
    monkeypatch.setattr(sys, "stderr", terminal)
    model = FlowDensity("maf", **FAST).fit(data)
    model.score_samples(data)
    model.sample(500, random_state=0)
    shown = "".join(terminal.text)
    assert "fit" in shown and "FlowDensity.score_samples" in shown and "FlowDensity.sample" in shown
    monkeypatch.setattr(sys, "stderr", pipe)
    model = FlowDensity("maf", **FAST).fit(data)
    model.score_samples(data)
    model.sample(500, random_state=0)
    assert pipe.text == []
    # progress=True shows it in a pipe too; False never
    model.set_params(progress=True).transform(data)
    assert "FlowDensity.transform" in "".join(pipe.text)
    monkeypatch.setattr(sys, "stderr", terminal)
    terminal.text.clear()
    FlowDensity("maf", **dict(FAST, progress=False)).fit(data).score_samples(data)
    assert terminal.text == []


# -------------------------------------------------------------------------- latent space
def test_transform_and_inverse_transform(fitted, data):
    from scipy import stats as st

    Z = fitted.transform(data)
    assert Z.shape == data.shape
    np.testing.assert_array_equal(Z, fitted.flow_.bijector.inverse(data)[0])
    np.testing.assert_allclose(fitted.inverse_transform(Z), data, rtol=1e-10, atol=1e-10)
    # the density is the base density of z times the Jacobian of x -> z
    log_det = fitted.flow_.bijector.inverse(data)[1]
    np.testing.assert_allclose(fitted.score_samples(data),
                               st.norm.logpdf(Z).sum(axis=1) + log_det, rtol=RTOL_EXACT)
    np.testing.assert_array_equal(fitted.transform(data, batch_size=7), Z)
    assert list(fitted.get_feature_names_out()) == ["flowdensity0", "flowdensity1",
                                                    "flowdensity2"]
    model = FlowDensity("maf", **FAST)
    np.testing.assert_array_equal(model.fit_transform(data), model.transform(data))
    with pytest.raises(ValueError, match="Z has 2 features"):
        fitted.inverse_transform(Z[:, :2])


def test_transform_in_a_pipeline(data):
    sklearn = pytest.importorskip("sklearn")  # noqa: F841
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    pipe = make_pipeline(StandardScaler(), FlowDensity("maf", **FAST)).fit(data)
    assert pipe.transform(data).shape == data.shape
    assert np.isfinite(pipe.score_samples(data)).all()


# ------------------------------------------------------------------------- conditional
@pytest.fixture(scope="module")
def conditional():
    rng = np.random.default_rng(3)
    c = rng.normal(size=(1500, 1)) * 10.0 + 50.0          # a context in its own units
    x = np.column_stack([0.3 * (c[:, 0] - 50.0) + 0.2 * rng.normal(size=1500),
                         rng.normal(size=1500)])
    model = FlowDensity("maf", n_layers=2, hidden=(16, 16), epochs=30, lr=5e-3,
                        random_state=0).fit(x, context=c)
    return model, x, c


def test_conditional_fit_score_and_sample(conditional):
    model, x, c = conditional
    assert model.n_context_features_in_ == 1
    np.testing.assert_allclose(model.context_mean_, c.mean(axis=0), rtol=RTOL_EXACT)
    # the right context explains x much better than a shuffled one
    shuffled = np.random.default_rng(0).permutation(c)
    assert model.score(x, context=c) > model.score(x, context=shuffled) + 1.0
    # samples at c = 60 (standardised +1) centre on x0 = 3, at c = 40 on -3
    for value, centre in ((60.0, 3.0), (40.0, -3.0)):
        s = model.sample(2000, random_state=1, context=[value])
        assert abs(s[:, 0].mean() - centre) < 0.3 and abs(s[:, 1].mean()) < 0.2
    # one sample per context row; the same rows as a shared context row each
    rows = model.sample(3, random_state=2, context=[[60.0], [60.0], [60.0]])
    np.testing.assert_array_equal(rows, model.sample(3, random_state=2, context=[60.0]))
    Z = model.transform(x, context=c)
    np.testing.assert_allclose(model.inverse_transform(Z, context=c), x, rtol=1e-10, atol=1e-10)


def test_conditional_errors(conditional, data):
    model, x, c = conditional
    with pytest.raises(ValueError, match="is conditional .* pass context"):
        model.score_samples(x)
    with pytest.raises(ValueError, match="context has 2 rows, but X has 1500"):
        model.score_samples(x, context=c[:2])
    with pytest.raises(ValueError, match="context has 2 features, but FlowDensity is expecting 1"):
        model.sample(3, context=[1.0, 2.0])
    with pytest.raises(ValueError, match=r"context has 3 rows, but n_samples is 5; give one "
                                         r"context row per sample, or one row of shape \(1,\)"):
        model.sample(5, context=c[:3])
    unconditional = FlowDensity("maf", **FAST).fit(data)
    with pytest.raises(ValueError, match="fitted without a context"):
        unconditional.score_samples(data, context=data[:, :1])
    with pytest.raises(ValueError, match=r"conditional planar, radial and Sylvester flows are "
                                         r"not supported"):
        FlowDensity("planar", **FAST).fit(data, context=data[:, :1])
    with pytest.raises(ValueError, match="context has 10 rows, but X has 300"):
        FlowDensity("maf", **FAST).fit(data, context=data[:10, :1])


def test_conditional_save_load_and_pipeline_routing(conditional, tmp_path):
    from refflow import io

    model, x, c = conditional
    model.save(tmp_path / "cond.npz")
    loaded = io.load(tmp_path / "cond.npz")
    np.testing.assert_array_equal(loaded.score_samples(x, context=c),
                                  model.score_samples(x, context=c))
    np.testing.assert_array_equal(loaded.sample(5, random_state=0, context=[55.0]),
                                  model.sample(5, random_state=0, context=[55.0]))
    pytest.importorskip("sklearn")
    from sklearn.pipeline import Pipeline

    pipe = Pipeline([("flow", FlowDensity("maf", **FAST))]).fit(x, flow__context=c)
    assert pipe.named_steps["flow"].n_context_features_in_ == 1


# -------------------------------------------------------------------------- model files
def test_save_refuses_a_npy_name_and_a_directory(fitted, tmp_path):
    with pytest.raises(ValueError, match=r"\.npy name would promise a single array.*use the "
                                         r"\.npz suffix"):
        fitted.save(tmp_path / "m.npy")
    with pytest.raises(IsADirectoryError, match="is a directory; give a file name"):
        fitted.save(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_load_of_a_directory_is_one_line(tmp_path):
    import refflow

    for path in (".", tmp_path):
        with pytest.raises(IsADirectoryError) as info:
            refflow.load(path)
        assert str(info.value) == f"refflow.io.load({str(path)!r}): is a directory, not a model file"
