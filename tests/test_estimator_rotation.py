"""FlowDensity's rotation of the whitened rows to independent components (``rotation``)."""

import math

import numpy as np
import pytest

from refflow import Flow, LULinear
from refflow.data import synthetic
from refflow.estimator import (ICA_MIN_FEATURES, ROTATED_CANDIDATES, WHITEN_CHOICE_MAX_ROWS,
                               FlowDensity, _ica_rotation, _rotation_layer)

#: Two routes through the same float64 linear maps (elementwise sums against triangular
#: solves of the layers' LU forms) agree to ~1e-14; 1e-10 leaves room and no more.
ROUND_TRIP = 1e-10
#: The history and ``score`` of the same rows (see test_estimator_defaults.py).
SAME_ROWS = 1e-12

SMALL = dict(flow="maf", n_layers=2, hidden=(16,), epochs=3, random_state=0, progress=False)


@pytest.fixture(scope="module")
def wide():
    """Five features (``ICA_MIN_FEATURES``): scaled_ica's independent sources, mixed."""
    assert ICA_MIN_FEATURES == 5
    return synthetic("scaled_ica", 600, dim=5, rng=0)


@pytest.fixture
def many(monkeypatch):
    """``rotation="auto"`` rotates above ``WHITEN_CHOICE_MAX_ROWS`` rows: made 400 here, so
    that ``wide``'s 600 rows count as many (and ``whiten="auto"`` does not choose)."""
    import refflow.estimator as estimator

    assert WHITEN_CHOICE_MAX_ROWS == 5000
    monkeypatch.setattr(estimator, "WHITEN_CHOICE_MAX_ROWS", 400)


def _sources(n, rng):
    """Five independent, unit-variance, non-Gaussian sources."""
    return np.column_stack([rng.uniform(-math.sqrt(3), math.sqrt(3), n),
                            rng.laplace(0.0, 1.0 / math.sqrt(2), n),
                            rng.exponential(1.0, n) - 1.0,
                            np.where(rng.random(n) < 0.5, -1.0, 1.0) * 0.9
                            + math.sqrt(1 - 0.81) * rng.standard_normal(n),
                            rng.standard_t(5, n) / math.sqrt(5 / 3)])


def test_ica_rotation_unmixes_independent_sources():
    rng = np.random.default_rng(0)
    s = _sources(20000, rng)
    R, _ = np.linalg.qr(rng.standard_normal((5, 5)))   # a random rotation
    w = s @ R.T
    Q = _ica_rotation(w)
    np.testing.assert_allclose(Q @ Q.T, np.eye(5), atol=1e-12)
    # Q R is a signed permutation: every recovered component is one source (cosine > 0.99;
    # with 20,000 rows FastICA's estimate is within a few hundredths of a radian)
    M = np.abs(Q @ R)
    assert (M.max(axis=1) > 0.99).all() and sorted(M.argmax(axis=1)) == list(range(5))
    # deterministic (started at the identity, no random draw)
    np.testing.assert_array_equal(_ica_rotation(w), Q)
    # the signs are chosen so that Q^T = P L U with diag U > 0: the layer's log-det is ~0
    layer, log_det = _rotation_layer(Q)
    assert abs(log_det) < 1e-12
    u = rng.standard_normal((7, 5))
    np.testing.assert_allclose(layer.forward(u)[0], u @ Q, rtol=ROUND_TRIP, atol=ROUND_TRIP)
    np.testing.assert_allclose(layer.inverse(u @ Q)[0], u, rtol=ROUND_TRIP, atol=ROUND_TRIP)


@pytest.mark.parametrize("case", ["fewer rows than features", "constant feature"])
def test_ica_rotation_of_degenerate_rows_is_still_a_rotation(case):
    rng = np.random.default_rng(1)
    w = rng.laplace(size=(3, 6)) if case == "fewer rows than features" else np.column_stack(
        [rng.laplace(size=(500, 4)), np.zeros(500)])
    Q = _ica_rotation(w)
    assert np.isfinite(Q).all()
    np.testing.assert_allclose(Q @ Q.T, np.eye(w.shape[1]), atol=1e-12)


def test_rotated_fit_is_the_flow_of_the_rotated_whitened_rows(wide, many):
    model = FlowDensity(whiten=True, **SMALL).fit(wide)
    assert model.whitened_ and model.rotated_
    inner, rotation, whitening, affine = model.flow_.bijector.layers
    assert isinstance(rotation, LULinear) and isinstance(whitening, LULinear)
    # log q(x) = log q_u(Q C^{-1} s) - sum log C_jj - sum log scale_j, by hand, with Q the
    # FastICA rotation of the whitened rows (all 600 of them: fewer than _ICA_ROWS)
    s = (wide - model.mean_) / model.scale_
    chol = np.linalg.cholesky(np.cov(s, rowvar=False, bias=True))
    w = np.linalg.solve(chol, s.T).T
    Q = _ica_rotation(w)
    np.testing.assert_allclose(rotation.forward(np.eye(5))[0], Q, rtol=ROUND_TRIP,
                               atol=ROUND_TRIP)
    by_hand = (Flow(model.flow_.base, inner).log_prob(w @ Q.T)
               - np.sum(np.log(np.diag(chol))) - np.sum(np.log(model.scale_)))
    np.testing.assert_allclose(model.score_samples(wide), by_hand, rtol=ROUND_TRIP)
    history = model.history_
    assert history.val_log_likelihood[history.best_epoch] == pytest.approx(
        model.score(wide[model.validation_index_]), rel=SAME_ROWS)
    z = model.transform(wide[:5])
    np.testing.assert_allclose(model.inverse_transform(z), wide[:5], rtol=1e-8, atol=1e-8)


def test_auto_fits_the_rotated_candidates_on_the_rotated_rows(wide, many):
    options = {k: v for k, v in SMALL.items() if k != "flow"}
    # flow, whiten and rotation "auto"; the kept flow scored alone (not blended)
    model = FlowDensity(blend=False, **options).fit(wide)
    scores = model.candidate_scores_
    assert ROTATED_CANDIDATES == ("gf",)
    assert list(scores) == ["maf", "nsf", "gf"] and model.rotated_ and model.whitened_
    kept = max(scores, key=scores.get)
    assert model.flow_name_ == kept
    history = model.history_
    assert history.val_log_likelihood[history.best_epoch] == pytest.approx(scores[kept],
                                                                           rel=1e-12)
    assert model.score(wide[model.validation_index_]) == pytest.approx(scores[kept],
                                                                       rel=SAME_ROWS)
    # a family named: that family alone, rotated
    named = FlowDensity(whiten=True, **SMALL).fit(wide)
    assert named.rotated_ and not hasattr(named, "candidate_scores_")


def test_rotation_ica_with_the_whitening_choice(wide):
    """rotation="ica" on few rows: whiten="auto" fits every family both ways, gf only to the
    rotated rows; the kept candidate is the best, in the data's units."""
    options = {k: v for k, v in SMALL.items() if k != "flow"}
    model = FlowDensity(rotation="ica", blend=False, **options).fit(wide)
    scores = model.candidate_scores_
    assert list(scores) == ["maf", "nsf", "gf", "maf (unwhitened)", "nsf (unwhitened)"]
    kept = max(scores, key=scores.get)
    assert model.flow_name_ == kept.split(" ")[0]
    assert model.rotated_ == model.whitened_ == (kept in ("maf", "nsf", "gf"))
    assert model.score(wide[model.validation_index_]) == pytest.approx(scores[kept],
                                                                       rel=SAME_ROWS)

def test_rotation_auto_starts_at_ica_min_features_and_many_rows(wide, monkeypatch):
    """Four features: not rotated, bit for bit rotation=None; five: rotated; five on
    ``WHITEN_CHOICE_MAX_ROWS`` rows or fewer: not rotated, bit for bit rotation=None."""
    import refflow.estimator as estimator

    monkeypatch.setattr(estimator, "WHITEN_CHOICE_MAX_ROWS", 599)
    four = FlowDensity(whiten=True, **SMALL).fit(wide[:, :4])
    none = FlowDensity(whiten=True, rotation=None, **SMALL).fit(wide[:, :4])
    assert not four.rotated_ and len(four.flow_.bijector.layers) == 3
    np.testing.assert_array_equal(four.score_samples(wide[:, :4]),
                                  none.score_samples(wide[:, :4]))
    five = FlowDensity(whiten=True, **SMALL).fit(wide)
    unrotated = FlowDensity(whiten=True, rotation=None, **SMALL).fit(wide)
    assert five.rotated_ and not unrotated.rotated_
    assert len(unrotated.flow_.bijector.layers) == 3
    monkeypatch.setattr(estimator, "WHITEN_CHOICE_MAX_ROWS", 600)
    few = FlowDensity(whiten=True, **SMALL).fit(wide)
    assert not few.rotated_
    np.testing.assert_array_equal(few.score_samples(wide), unrotated.score_samples(wide))
    # rotation="ica" rotates fewer features too; whiten=False: nothing to rotate
    three = FlowDensity(whiten=True, rotation="ica", **SMALL).fit(wide[:, :3])
    assert three.rotated_ and len(three.flow_.bijector.layers) == 4
    plain = FlowDensity(whiten=False, **SMALL).fit(wide)
    assert not plain.rotated_ and not plain.whitened_


@pytest.mark.parametrize("kwargs, error, match", [
    ({"rotation": "pca"}, ValueError, "rotation"), ({"rotation": True}, TypeError, "rotation"),
    ({"rotation": "ica", "whiten": False}, ValueError, "rotation='ica' rotates the whitened")])
def test_bad_rotation(wide, kwargs, error, match):
    model = FlowDensity(**dict(SMALL, **kwargs))
    with pytest.raises(error, match=match):
        model.fit(wide)
    assert not hasattr(model, "flow_")


def test_rotated_fit_of_a_memmap_is_the_in_memory_fit(tmp_path, wide, many):
    path = tmp_path / "x.npy"
    np.save(path, wide)
    mapped = np.load(path, mmap_mode="r")
    a = FlowDensity(whiten=True, **SMALL).fit(wide)
    b = FlowDensity(whiten=True, **SMALL).fit(mapped)
    assert a.rotated_ and b.rotated_
    np.testing.assert_array_equal(a.score_samples(wide), b.score_samples(wide))


def test_rotation_is_saved_and_loaded(tmp_path, wide, many):
    from refflow import io

    model = FlowDensity(whiten=True, **SMALL).fit(wide)
    path = tmp_path / "rotated.npz"
    model.save(path)
    loaded = io.load(path)
    assert loaded.rotated_ is True and loaded.rotation == "auto"
    np.testing.assert_array_equal(loaded.score_samples(wide), model.score_samples(wide))
    # a file from before the rotation existed has no rotated_: nothing was rotated then
    config = FlowDensity(whiten=True, rotation=None, **SMALL).fit(wide)._config()
    del config["fitted"]["rotated_"]
    assert FlowDensity._from_config(config).rotated_ is False
    for bad in ("yes", True):
        config["fitted"]["rotated_"] = bad
        config["fitted"]["whitened_"] = False
        with pytest.raises(ValueError, match="rotated_ must be true or false"):
            FlowDensity._from_config(config)


def test_ica_reads_at_most_its_bytes_of_evenly_spaced_rows(wide, many, monkeypatch, tmp_path):
    """FastICA sees at most ``_ICA_BYTES`` of whitened rows, evenly spaced (a streamed fit
    gathers no more): made 150 rows of 5 features here."""
    import refflow.estimator as estimator

    monkeypatch.setattr(estimator, "_ICA_BYTES", 150 * 5 * 8)
    model = FlowDensity(whiten=True, **SMALL).fit(wide)
    s = (wide - model.mean_) / model.scale_
    chol = np.linalg.cholesky(np.cov(s, rowvar=False, bias=True))
    w = np.linalg.solve(chol, s.T).T
    index = (np.arange(150) * 600) // 150
    Q = _ica_rotation(w[index])
    assert np.abs(Q - _ica_rotation(w)).max() > 1e-3   # the subset gives another rotation
    rotation = model.flow_.bijector.layers[1]
    np.testing.assert_allclose(rotation.forward(np.eye(5))[0], Q, rtol=ROUND_TRIP,
                               atol=ROUND_TRIP)
    path = tmp_path / "x.npy"
    np.save(path, wide)
    mapped = FlowDensity(whiten=True, **SMALL).fit(np.load(path, mmap_mode="r"))
    np.testing.assert_array_equal(mapped.score_samples(wide), model.score_samples(wide))
