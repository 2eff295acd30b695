"""FlowDensity's whitening, the standard error of ``score`` and the history in data units."""

import math

import numpy as np
import pytest

from refflow import LULinear
from refflow.data import synthetic
from refflow.estimator import WHITEN_CHOICE_MAX_ROWS, FlowDensity
from refflow.flows import BUILDERS

#: float64 evaluations of the same map by two routes (a triangular solve against the layer's
#: LU form, sums of a few hundred terms) agree to ~1e-13; 1e-10 leaves room and no more.
ROUND_TRIP = 1e-10

SMALL = dict(flow="maf", n_layers=2, hidden=(16,), epochs=3, random_state=0, progress=False)


@pytest.fixture(scope="module")
def data():
    return synthetic("curve", 600, rng=0)


def test_whitening_is_the_cholesky_factor(data):
    model = FlowDensity(whiten=True, **SMALL).fit(data)
    assert model.whitened_
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
    assert not model.whitened_
    with pytest.raises(TypeError, match="whiten"):
        FlowDensity(whiten=1, **SMALL).fit(data)
    with pytest.raises(ValueError, match="whiten"):
        FlowDensity(whiten="yes", **SMALL).fit(data)


def test_whitening_survives_constant_and_collinear_features():
    x = synthetic("curve", 300, rng=1)
    x = np.column_stack([x, np.full(300, 2.5), x[:, 0] * 3.0 - x[:, 1]])
    model = FlowDensity(whiten=True, **SMALL).fit(x)
    lp = model.score_samples(x)
    assert np.isfinite(lp).all()
    z = model.transform(x[:5])
    np.testing.assert_allclose(model.inverse_transform(z), x[:5], rtol=1e-8, atol=1e-8)


#: The history's validation NLL and ``score`` evaluate the same rows through the same layers
#: (plus the folded-in whitening and standardisation, and sums in another order): they agree
#: to a few ulps of the mean; 1e-12 relative leaves room for that and no more.
SAME_ROWS = 1e-12


def test_history_in_data_units_is_the_score_of_the_validation_rows(data):
    """``val_log_likelihood[best_epoch]`` is ``score`` of the held-out rows, which the
    estimator exposes as ``validation_index_`` (the split that ``refflow.training.fit``
    documents: ``perm = gen.permutation(n)`` after the builder drew its initialisation from
    the same generator)."""
    # whiten=True: a single fit (whiten="auto" on these 600 rows fits two candidates; the
    # split is then the one of flow="auto", tested below)
    model = FlowDensity(**SMALL, whiten=True, validation_fraction=0.25).fit(data)
    n_val = math.ceil(0.25 * data.shape[0])
    index = model.validation_index_
    assert index.shape == (n_val,) and np.unique(index).size == n_val
    # the documented replay of the split gives the same rows, in the same order
    gen = np.random.default_rng(SMALL["random_state"])
    BUILDERS["maf"](data.shape[1], n_layers=2, hidden=(16,), rng=gen)
    np.testing.assert_array_equal(index, gen.permutation(data.shape[0])[:n_val])
    history = model.history_
    assert history.val_log_likelihood[history.best_epoch] == pytest.approx(
        model.score(data[index]), rel=SAME_ROWS)


def test_validation_index_without_validation_rows(data):
    model = FlowDensity(**SMALL, validation_fraction=0.0).fit(data)
    assert model.validation_index_.shape == (0,)
    assert model.history_.val_nll == []


@pytest.mark.parametrize("flow", ["maf", "auto"])
def test_validation_index_of_a_streamed_fit(tmp_path, data, flow):
    """A memory-mapped ``X`` is fitted bit for bit as in memory: the same held-out rows (and
    with ``flow="auto"``, the default, the same family and scores)."""
    path = tmp_path / "x.npy"
    np.save(path, data)
    mapped = np.load(path, mmap_mode="r")
    options = dict(SMALL, flow=flow)
    a = FlowDensity(**options).fit(data)
    b = FlowDensity(**options).fit(mapped)
    np.testing.assert_array_equal(a.validation_index_, b.validation_index_)
    np.testing.assert_array_equal(a.score_samples(data), b.score_samples(data))
    history = b.history_
    # the held-out score users see: the kept flow's, or with flow="auto" the blend's
    held_out = (b.blend_score_ if flow == "auto"
                else history.val_log_likelihood[history.best_epoch])
    assert held_out == pytest.approx(b.score(data[b.validation_index_]), rel=SAME_ROWS)
    assert hasattr(b, "blend_score_") == (flow == "auto") == hasattr(a, "blend_score_")


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
    options = {k: v for k, v in SMALL.items() if k != "flow"}
    model = FlowDensity("auto", whiten=True, blend=False, **options).fit(data)
    scores = model.candidate_scores_
    assert set(scores) == {"maf", "nsf"}
    assert model.flow_name_ == max(scores, key=scores.get)
    history = model.history_
    # the kept family's history is the winner's, in the data's units
    assert history.val_log_likelihood[history.best_epoch] == pytest.approx(
        scores[model.flow_name_], rel=1e-12)
    # the validation rows are perm[:ceil(0.1 n)] of the permutation drawn by every family's
    # generator default_rng(split_seed), split_seed drawn first (before any family is built):
    # the kept model scores them as its history says
    gen = np.random.default_rng(SMALL["random_state"])
    perm = np.random.default_rng(int(gen.integers(2 ** 63))).permutation(data.shape[0])
    n_val = math.ceil(0.1 * data.shape[0])
    np.testing.assert_array_equal(model.validation_index_, perm[:n_val])
    assert model.score(data[model.validation_index_]) == pytest.approx(
        scores[model.flow_name_], rel=SAME_ROWS)


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


def _correlated(n=600):
    """Three Gaussian columns correlated by 0.98-0.99: at ``SMALL``'s sizes the whitened fit
    wins here (by 0.4 nats), as the unwhitened one does on ``data`` (``curve``, by 0.6)."""
    cov = [[1.0, 0.99, 0.98], [0.99, 1.0, 0.99], [0.98, 0.99, 1.0]]
    return np.random.default_rng(0).multivariate_normal(np.zeros(3), cov, n)


@pytest.mark.parametrize("which", ["curve", "correlated"])
def test_whiten_auto_keeps_the_better_of_whitened_and_unwhitened(data, which):
    x = data if which == "curve" else _correlated()
    assert FlowDensity().whiten == "auto" and x.shape[0] <= WHITEN_CHOICE_MAX_ROWS
    model = FlowDensity(**SMALL).fit(x)
    scores = model.candidate_scores_
    assert set(scores) == {"maf", "maf (unwhitened)"}
    assert model.whitened_ == (which == "correlated")
    kept = "maf" if model.whitened_ else "maf (unwhitened)"
    assert kept == max(scores, key=scores.get) and model.flow_name_ == "maf"
    assert len(model.flow_.bijector.layers) == (3 if model.whitened_ else 2)
    # both candidates' scores are in the data's units: the kept one is its history's and
    # the score of the held-out rows (a whitening's log-det left out would break one of them)
    history = model.history_
    assert history.val_log_likelihood[history.best_epoch] == pytest.approx(scores[kept],
                                                                           rel=1e-12)
    assert model.score(x[model.validation_index_]) == pytest.approx(scores[kept],
                                                                    rel=SAME_ROWS)
    # the whitened candidates come first, built from the generator as without the choice:
    # with flow="auto" they are whiten=True's candidates, bit for bit
    options = {k: v for k, v in SMALL.items() if k != "flow"}
    both = FlowDensity("auto", **options).fit(x).candidate_scores_
    whitened = FlowDensity("auto", whiten=True, **options).fit(x).candidate_scores_
    assert list(both) == ["maf", "nsf", "maf (unwhitened)", "nsf (unwhitened)"]
    assert {k: both[k] for k in whitened} == whitened


def test_whiten_auto_chooses_only_on_few_rows_with_rows_held_out(monkeypatch, data):
    import refflow.estimator as estimator

    monkeypatch.setattr(estimator, "WHITEN_CHOICE_MAX_ROWS", 400)
    at = FlowDensity(**SMALL).fit(data[:400])
    assert "maf (unwhitened)" in at.candidate_scores_
    # one row more: the whiten=True fit, bit for bit
    above = FlowDensity(**SMALL).fit(data[:401])
    same = FlowDensity(whiten=True, **SMALL).fit(data[:401])
    assert above.whitened_ and not hasattr(above, "candidate_scores_")
    np.testing.assert_array_equal(above.score_samples(data), same.score_samples(data))
    # no rows held out, nothing to choose by: whitened; one feature: nothing to whiten
    alone = FlowDensity(validation_fraction=0.0, **SMALL).fit(data[:400])
    assert alone.whitened_ and not hasattr(alone, "candidate_scores_")
    one = FlowDensity(**SMALL).fit(data[:400, :1])
    assert not one.whitened_ and not hasattr(one, "candidate_scores_")


def test_whitening_choice_is_saved_and_loaded(tmp_path, data):
    from refflow import io

    model = FlowDensity(**SMALL).fit(data)
    assert not model.whitened_
    path = tmp_path / "choice.npz"
    model.save(path)
    loaded = io.load(path)
    assert loaded.whitened_ is False and loaded.candidate_scores_ == model.candidate_scores_
    np.testing.assert_array_equal(loaded.score_samples(data), model.score_samples(data))
    # a file from before the choice existed has no whitened_: whiten was then True or False
    config = FlowDensity(whiten=True, **SMALL).fit(data)._config()
    del config["fitted"]["whitened_"]
    assert FlowDensity._from_config(config).whitened_ is True
    config["fitted"]["whitened_"] = "yes"
    with pytest.raises(ValueError, match="whitened_ must be true or false"):
        FlowDensity._from_config(config)


def test_training_length_auto_is_longer_up_to_two_features():
    from refflow.estimator import training_length

    assert FlowDensity().epochs == "auto" and FlowDensity().patience == "auto"
    assert training_length("auto", "auto", 1) == training_length("auto", "auto", 2) == (200,
                                                                                           20)
    assert training_length("auto", "auto", 3) == (100, 10)
    assert training_length(7, None, 2) == (7, None) and training_length(7, 3, 5) == (7, 3)


@pytest.mark.parametrize("dim, length, stop", [(2, (6, 6), "completed"),
                                               (3, (8, 1), "patience")])
def test_training_length_auto_reaches_fit(monkeypatch, dim, length, stop):
    """``"auto"`` fits as the explicit values do (the constants made small here: six epochs
    without early stopping on two features, early stopping after one epoch above)."""
    import refflow.estimator as estimator

    for name, value in (("EPOCHS_LOW_DIM", 6), ("PATIENCE_LOW_DIM", 6), ("EPOCHS", 8),
                        ("PATIENCE", 1)):
        monkeypatch.setattr(estimator, name, value)
    x = synthetic("curve", 300, rng=1)[:, :dim]
    options = dict({k: v for k, v in SMALL.items() if k != "epochs"}, whiten=True, lr=1e-2)
    auto = FlowDensity(**options).fit(x)
    epochs, patience = length
    explicit = FlowDensity(epochs=epochs, patience=patience, **options).fit(x)
    assert auto.history_.stop_reason == explicit.history_.stop_reason == stop
    assert auto.history_.val_nll == explicit.history_.val_nll
    assert (auto.history_.n_epochs == epochs) == (stop == "completed")


@pytest.mark.parametrize("kwargs, error", [
    ({"epochs": "long"}, ValueError), ({"epochs": 0}, ValueError), ({"epochs": 2.5}, TypeError),
    ({"patience": "never"}, ValueError), ({"patience": 0}, ValueError),
    ({"patience": 1.5}, TypeError)])
def test_bad_training_length(data, kwargs, error):
    model = FlowDensity(**dict(SMALL, **kwargs))
    with pytest.raises(error, match=next(iter(kwargs))):
        model.fit(data)
    assert not hasattr(model, "flow_")

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


# ----------------------------------------------------------------------- Student t base
def test_student_t_start_is_the_maximum_likelihood_t():
    """The start of a Student t base maximises the t likelihood per coordinate: it agrees
    with scipy's own maximum-likelihood fit (``scipy.stats.t.fit``, Nelder-Mead on the
    negative log-likelihood) in likelihood, and its df is near the truth."""
    from scipy import stats

    from refflow.estimator import _student_t_start

    rng = np.random.default_rng(11)
    z = np.column_stack([rng.standard_t(3.0, size=4000) * 2.0 + 0.5,
                         rng.standard_normal(4000)])
    df, loc, log_scale = _student_t_start(z)
    ours = stats.t.logpdf(z[:, 0], df[0], loc[0], np.exp(log_scale[0])).mean()
    fitted = stats.t.fit(z[:, 0])
    theirs = stats.t.logpdf(z[:, 0], *fitted).mean()
    # both stop within their optimisers' tolerances of the same interior optimum: the mean
    # log-likelihoods agree to ~1e-9 nats, 1e-7 leaves room; the parameters to ~1e-4
    assert ours == pytest.approx(theirs, abs=1e-7)
    np.testing.assert_allclose([df[0], loc[0], np.exp(log_scale[0])], fitted, rtol=1e-3)
    # 4,000 draws pin df = 3 to a few tenths; the normal coordinate's optimum is df -> inf
    # (scipy's goes to ~1e9): ours stops at the bound 1000
    assert abs(df[0] - 3.0) < 0.6 and df[1] == pytest.approx(1000.0, rel=1e-12)
    assert abs(loc[0] - 0.5) < 0.1 and abs(np.exp(log_scale[0]) - 2.0) < 0.15


def test_student_t_base():
    from refflow import StudentT

    x = synthetic("student_t", 600, rng=3)
    model = FlowDensity(base="student_t", **SMALL).fit(x)
    assert isinstance(model.flow_.base, StudentT) and model.flow_.base.trainable_df
    assert "base.raw_df" in model.flow_.params
    assert np.isfinite(model.score(x))
    history = model.history_
    assert history.val_log_likelihood[history.best_epoch] == pytest.approx(
        model.score(x[model.validation_index_]), rel=SAME_ROWS)


def test_student_t_base_density_is_scipys():
    """``score_samples`` is the Student t density of ``transform(X)`` (scipy.stats.t with the
    base's df, loc, scale) times the Jacobian of x -> z."""
    from scipy import stats

    x = synthetic("student_t", 300, rng=6)
    model = FlowDensity(base="student_t", **SMALL).fit(x)
    base = model.flow_.base
    z, log_det = model.flow_.bijector.inverse(x)
    np.testing.assert_array_equal(z, model.transform(x))
    expected = stats.t.logpdf(z, base.df, base.params["loc"],
                              np.exp(base.params["log_scale"])).sum(axis=1) + log_det
    np.testing.assert_allclose(model.score_samples(x), expected, rtol=ROUND_TRIP)


def test_student_t_base_starts_at_the_maximum_likelihood_t():
    """With a learning rate too small to move anything (Adam's steps are ~lr), the fitted
    base is the start: the maximum-likelihood t of the rows mapped to the base space by the
    untrained flow (``transform``; 600 rows <= 10,000, so all of them)."""
    from refflow.estimator import _student_t_start

    x = synthetic("student_t", 600, rng=3)
    model = FlowDensity(base="student_t", lr=1e-30, **{**SMALL, "epochs": 1}).fit(x)
    df, loc, log_scale = _student_t_start(model.transform(x))
    base = model.flow_.base
    # the same rows by another rounding route (the folded-in whitening): L-BFGS-B may stop
    # at a neighbouring iterate within its tolerance; 1e-4 relative is far below the df's
    # statistical uncertainty (~10% at 600 rows) and far above the iterates' spread
    np.testing.assert_allclose(base.df, df, rtol=1e-4)
    np.testing.assert_allclose(base.params["loc"], loc, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(base.params["log_scale"], log_scale, rtol=1e-4, atol=1e-6)
    assert df.min() < 10.0   # a heavy-tailed set gets a heavy-tailed start


def test_student_t_base_is_saved_and_loaded(tmp_path):
    from refflow import io

    x = synthetic("student_t", 300, rng=4)
    model = FlowDensity(base="student_t", **SMALL).fit(x)
    path = tmp_path / "t.npz"
    model.save(path)
    loaded = io.load(path)
    assert loaded.base == "student_t"
    np.testing.assert_array_equal(loaded.flow_.base.df, model.flow_.base.df)
    np.testing.assert_array_equal(loaded.score_samples(x), model.score_samples(x))


def test_bad_base():
    x = synthetic("curve", 100, rng=5)
    with pytest.raises(ValueError, match="FlowDensity: base"):
        FlowDensity(base="cauchy", **SMALL).fit(x)
    with pytest.raises(TypeError, match="FlowDensity: base"):
        FlowDensity(base=None, **SMALL).fit(x)
    model = FlowDensity(**SMALL)
    with pytest.raises(ValueError):
        model.set_params(base="laplace").fit(x)
    assert not hasattr(model, "flow_")


# ------------------------------------------------------------------------ the mixture base
def _three_clusters(n, rng):
    gen = np.random.default_rng(rng)
    means = np.array([[-4.0, 0.0], [0.0, 3.0], [4.0, -1.0]])
    scales = np.array([[0.5, 1.0], [1.0, 0.3], [0.7, 0.7]])
    k = gen.choice(3, size=n, p=[0.5, 0.3, 0.2])
    return means[k] + scales[k] * gen.standard_normal((n, 2)), means, scales


def test_mixture_em_recovers_a_known_mixture_and_bic_picks_its_size():
    """Three well-separated diagonal Gaussians, 6,000 draws: BIC chooses k = 3, and EM's
    weights, means and standard deviations are the true ones to their sampling error (a few
    times 1/sqrt(n_k): 0.03 for the weights, 0.05 for means and scales)."""
    from refflow.estimator import _mixture_start

    z, means, scales = _three_clusters(6000, 0)
    log_w, m, v = _mixture_start(z)
    assert len(log_w) == 3
    order = np.argsort(m[:, 0])
    np.testing.assert_allclose(np.exp(log_w[order]), [0.5, 0.3, 0.2], atol=0.03)
    np.testing.assert_allclose(m[order], means, atol=0.05)
    np.testing.assert_allclose(np.sqrt(v[order]), scales, atol=0.05)
    assert np.exp(log_w).sum() == pytest.approx(1.0, rel=1e-12)


def test_mixture_em_climbs_and_stops_at_a_fixed_point():
    """EM never lowers the likelihood; at its stop, one more EM round moves the mean
    log-likelihood by less than the tolerance, and the weights are the responsibilities'
    means (the M-step's fixed point)."""
    from scipy.special import logsumexp

    from refflow.estimator import _MIX_TOL, _MIX_VAR_FLOOR, _diag_mixture_em

    z, _, _ = _three_clusters(2000, 1)
    lls = [_diag_mixture_em(z, k, np.random.default_rng(k))[3] for k in (1, 2, 3)]
    assert lls[0] < lls[1] < lls[2]
    log_w, m, v, ll = _diag_mixture_em(z, 3, np.random.default_rng(3))

    def log_joint(log_w, m, v):
        return (log_w - 0.5 * (((z[:, None, :] - m) ** 2 / v).sum(axis=2)
                               + np.log(v).sum(axis=1) + 2 * math.log(2 * math.pi)))

    a = log_joint(log_w, m, v)
    assert np.mean(logsumexp(a, axis=1)) == pytest.approx(ll, abs=1e-12)
    r = np.exp(a - logsumexp(a, axis=1)[:, None])
    counts = r.sum(axis=0)
    m2 = r.T @ z / counts[:, None]
    v2 = r.T @ (z * z) / counts[:, None] - m2 * m2 + _MIX_VAR_FLOOR
    ll2 = np.mean(logsumexp(log_joint(np.log(counts / len(z)), m2, v2), axis=1))
    assert -1e-12 <= ll2 - ll < _MIX_TOL
    np.testing.assert_allclose(np.exp(log_w), counts / len(z), atol=1e-5)


def test_mixture_start_is_deterministic_and_bounded_by_the_rows():
    from refflow.estimator import _mixture_start

    z, _, _ = _three_clusters(500, 2)
    first, second = _mixture_start(z), _mixture_start(z)
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    # 20 rows in 2-D allow at most 20 // 10 = 2 components; one row allows one
    assert len(_mixture_start(z[:20])[0]) <= 2
    assert len(_mixture_start(z[:1])[0]) == 1


def test_mixture_base_starts_at_the_bic_mixture_of_the_mapped_rows():
    """With a learning rate too small to move anything, the fitted base is the start: the
    BIC mixture of the rows mapped to the base space by the untrained flow (``transform``;
    300 rows <= 10,000, so all of them), and ``score_samples`` is that mixture's density of
    ``transform(X)`` times the Jacobian."""
    from refflow import DiagGaussianMixture
    from refflow.estimator import _mixture_start

    x, _, _ = _three_clusters(300, 3)
    model = FlowDensity(base="mixture", lr=1e-30, whiten=True,
                        **{**SMALL, "epochs": 1}).fit(x)
    base = model.flow_.base
    assert isinstance(base, DiagGaussianMixture)
    z = model.transform(x)
    log_w, means, variances = _mixture_start(z)
    assert base.n_components == len(log_w) == 3
    # the same rows by another rounding route (the folded-in whitening): EM's fixed point to
    # its tolerance, far below the sampling error of 300 rows
    np.testing.assert_allclose(base.params["loc"], means, atol=1e-4)
    np.testing.assert_allclose(np.exp(2 * base.params["log_scale"]), variances, rtol=1e-3)
    log_det = model.flow_.bijector.inverse(x)[1]
    d = np.exp(base.params["log_scale"])
    w = np.exp(base.params["logits"] - np.logaddexp.reduce(base.params["logits"]))
    by_hand = np.log(sum(w[j] * np.prod(np.exp(-0.5 * ((z - base.params["loc"][j]) / d[j]) ** 2)
                                        / (d[j] * math.sqrt(2 * math.pi)), axis=1)
                         for j in range(len(w))))
    np.testing.assert_allclose(model.score_samples(x), by_hand + log_det, rtol=ROUND_TRIP)


def test_mixture_scan_stops_after_its_patience_and_fits_all_rows(monkeypatch):
    """BIC's scan over k stops once three values in a row have not beaten the best (k = 3
    here, so k = 4, 5, 6 are tried and no more), on at most 4,000 evenly spaced rows; the
    chosen k is then fitted to all the rows."""
    import refflow.estimator as estimator

    calls = []
    em = estimator._diag_mixture_em

    def counting(z, k, rng):
        calls.append((k, z.shape[0]))
        return em(z, k, rng)

    monkeypatch.setattr(estimator, "_diag_mixture_em", counting)
    z, _, _ = _three_clusters(6000, 5)
    log_w, _, _ = estimator._mixture_start(z)
    assert len(log_w) == 3
    assert calls == [(1, 4000), (2, 4000), (3, 4000), (4, 4000), (5, 4000), (6, 4000),
                     (3, 6000)]


@pytest.mark.parametrize("dim, cap", [(1, 40), (2, 40), (3, 20), (6, 20)])
def test_mixture_scan_goes_up_to_its_cap(monkeypatch, dim, cap):
    """While BIC keeps improving, the scan tries every k up to its cap and no further, then
    fits the last to all the rows: 40 components on one or two features, 20 above. EM is
    replaced by a stand-in whose likelihood grows by 10 nats per row and component, far beyond
    BIC's penalty."""
    import refflow.estimator as estimator

    calls = []

    def growing(z, k, rng):
        calls.append((k, z.shape[0]))
        d = z.shape[1]
        return np.full(k, -np.log(k)), np.zeros((k, d)), np.ones((k, d)), 10.0 * k

    monkeypatch.setattr(estimator, "_diag_mixture_em", growing)
    assert (estimator.MIXTURE_MAX_COMPONENTS_LOW_DIM, estimator.MIXTURE_MAX_COMPONENTS,
            estimator.LOW_DIM_FEATURES) == (40, 20, 2)
    z = np.random.default_rng(0).standard_normal((5000, dim))
    log_w, _, _ = estimator._mixture_start(z)
    assert len(log_w) == cap
    assert calls == [(k, 4000) for k in range(1, cap + 1)] + [(cap, 5000)]


# ---------------------------------------------------------------------- the t mixture base
def _heavy_clusters(n, rng):
    """Two clusters of Student t's with 3 degrees of freedom (heavy tails)."""
    gen = np.random.default_rng(rng)
    k = gen.choice(2, size=n, p=[0.6, 0.4])
    centres = np.array([[-3.0, 0.0], [3.0, 1.0]])
    return centres[k] + 0.5 * gen.standard_t(3.0, size=(n, 2))


def test_t_mixture_start_is_the_bic_mixture_and_a_broad_t_with_em_weights():
    """The start: the BIC Gaussian mixture's locations and scales, one df from the grid for
    them (the best of the grid), the per-coordinate maximum-likelihood t of all the rows as
    one component more, and the weights at EM's fixed point for those components."""
    from refflow import DiagStudentTMixture
    from refflow.estimator import (_MIX_TOL, _T_MIX_BROAD_DF, _T_MIX_DF_GRID, _mixture_start,
                                   _student_t_start, _t_mixture_start)

    z = _heavy_clusters(3000, 0)
    log_w, loc, log_scale, nu = _t_mixture_start(z)
    g_log_w, g_means, g_variances = _mixture_start(z)
    k = len(g_log_w)
    assert log_w.shape == (k + 1,) and loc.shape == log_scale.shape == nu.shape == (k + 1, 2)
    np.testing.assert_array_equal(loc[:k], g_means)
    np.testing.assert_array_equal(log_scale[:k], 0.5 * np.log(g_variances))
    df, t_loc, t_log_scale = _student_t_start(z)
    np.testing.assert_array_equal(nu[k], np.minimum(df, _T_MIX_BROAD_DF))
    assert df.max() > _T_MIX_BROAD_DF      # coordinate 0 is bimodal: its ML t is a wide normal
    np.testing.assert_array_equal(loc[k], t_loc)
    np.testing.assert_array_equal(log_scale[k], t_log_scale)
    assert np.exp(log_w).sum() == pytest.approx(1.0, rel=1e-12)
    assert len(set(nu[:k].ravel())) == 1 and nu[0, 0] in _T_MIX_DF_GRID

    def mixture(values, weights):
        d = DiagStudentTMixture(2, k + 1)
        nus = nu.copy()
        nus[:k] = values
        d.params.update({"logits": weights, "loc": loc, "log_scale": log_scale,
                         "raw_df": nus + np.log(-np.expm1(-nus))})
        return d

    # the grid's df is the best of the grid for the Gaussian mixture's weights
    g_ll = [np.mean(np.logaddexp.reduce(
        mixture(v, log_w).component_log_prob(z)[:, :k] + g_log_w, axis=1)) for v in _T_MIX_DF_GRID]
    assert nu[0, 0] == _T_MIX_DF_GRID[int(np.argmax(g_ll))]
    # EM's fixed point: the weights are the mean responsibilities (to EM's tolerance)
    comp = mixture(nu[0, 0], log_w).component_log_prob(z) + log_w
    r = np.exp(comp - np.logaddexp.reduce(comp, axis=1)[:, None])
    np.testing.assert_allclose(np.exp(log_w), r.mean(axis=0), atol=math.sqrt(_MIX_TOL))
    # heavy tails: far beyond the data the start scores at least as the broad t does, whose
    # log-density falls by at most (nu + 1) log 2 per coordinate when the distance doubles
    # (a normal's would fall by 3 d^2 / (2 s^2), tens of thousands here)
    start = mixture(nu[0, 0], log_w)
    broad = DiagStudentTMixture(2, 1)
    broad.params.update({"loc": loc[k:], "log_scale": log_scale[k:],
                         "raw_df": nu[k:] + np.log(-np.expm1(-nu[k:]))})
    far = np.array([[300.0, -300.0], [600.0, -600.0]])
    assert (start.log_prob(far) >= broad.log_prob(far) + log_w[k] - 1e-9).all()
    drop = np.diff(broad.log_prob(far))[0]
    assert -(nu[k] + 1).sum() * math.log(2) <= drop < 0


def test_t_mixture_base_starts_at_its_start_on_the_mapped_rows():
    """With a learning rate too small to move anything, the fitted base is the start of the
    rows mapped to the base space by the untrained flow, and ``score_samples`` is that t
    mixture's density (scipy's t, written out) of ``transform(X)`` plus the log-det."""
    from scipy import stats

    from refflow import DiagStudentTMixture
    from refflow.estimator import _t_mixture_start

    x = _heavy_clusters(300, 1)
    model = FlowDensity(base="t_mixture", lr=1e-30, **{**SMALL, "epochs": 1}).fit(x)
    base = model.flow_.base
    assert isinstance(base, DiagStudentTMixture)
    z = model.transform(x)
    log_w, loc, log_scale, nu = _t_mixture_start(z)
    assert base.n_components == len(log_w)
    # the same rows by another rounding route (the folded-in whitening): the fixed points to
    # their tolerance, far below the sampling error of 300 rows
    np.testing.assert_allclose(base.params["loc"], loc, atol=1e-4)
    np.testing.assert_allclose(base.params["log_scale"], log_scale, atol=1e-4)
    np.testing.assert_allclose(base.df, nu, rtol=1e-3)
    w = np.exp(base.params["logits"] - np.logaddexp.reduce(base.params["logits"]))
    by_hand = np.logaddexp.reduce(np.stack([
        np.log(w[j]) + stats.t(base.df[j], base.params["loc"][j],
                               np.exp(base.params["log_scale"][j])).logpdf(z).sum(axis=1)
        for j in range(len(w))], axis=1), axis=1)
    log_det = model.flow_.bijector.inverse(x)[1]
    np.testing.assert_allclose(model.score_samples(x), by_hand + log_det, rtol=ROUND_TRIP)


@pytest.mark.parametrize("base", ["mixture", "t_mixture"])
def test_mixture_base_trains_saves_loads_and_samples(tmp_path, base):
    from refflow import io

    x, _, _ = _three_clusters(400, 4)
    model = FlowDensity(base=base, **SMALL).fit(x)
    assert "base.logits" in model.flow_.params and "base.loc" in model.flow_.params
    history = model.history_
    assert history.val_log_likelihood[history.best_epoch] == pytest.approx(
        model.score(x[model.validation_index_]), rel=SAME_ROWS)
    path = tmp_path / "mixture.npz"
    model.save(path)
    loaded = io.load(path)
    assert loaded.base == base
    np.testing.assert_array_equal(loaded.score_samples(x), model.score_samples(x))
    samples = loaded.sample(50, random_state=0)
    assert samples.shape == (50, 2) and np.all(np.isfinite(samples))
    np.testing.assert_array_equal(samples, model.sample(50, random_state=0))

