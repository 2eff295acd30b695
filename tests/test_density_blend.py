"""Blends of fitted densities (``benchmarks/density_blend.py``): the weights and a smoke run."""

import json

import numpy as np
import pytest
from scipy.stats import norm

from refflow.data import toy as draw
from refflow.estimator import FlowDensity

from .helpers import bench_module

pytest.importorskip("sklearn")

#: EM stops when no weight moves by more than 1e-10 in a round; at its fixed point the KKT
#: ratios mean(q_j / q_w) are 1 to about that, times the curvature (order 1 here).
KKT_TOL = 1e-7


@pytest.fixture(scope="module")
def blend():
    return bench_module("density_blend")


def _two_bumps(n=4000, seed=0):
    """Rows of 0.3 N(0, 1) + 0.7 N(3, 1) and the log-densities of three components: the two
    bumps and a useless one far away."""
    rng = np.random.default_rng(seed)
    x = np.where(rng.random(n) < 0.3, rng.normal(0.0, 1.0, n), rng.normal(3.0, 1.0, n))
    return np.stack([norm.logpdf(x, 0.0), norm.logpdf(x, 3.0), norm.logpdf(x, 8.0)], axis=1)


def test_weights_meet_the_optimality_conditions(blend):
    log_q = _two_bumps()
    w = blend.blend_weights(log_q)
    assert w.sum() == pytest.approx(1.0, abs=1e-12) and (w >= 0).all()
    # KKT of max mean log sum_j w_j q_j over the simplex: mean(q_j / q_w) = 1 where w_j > 0
    # (and <= 1 where w_j = 0)
    ratio = np.mean(np.exp(log_q - blend.blend_log_likelihood(log_q, w)[:, None]), axis=0)
    active = w > 1e-3
    np.testing.assert_allclose(ratio[active], 1.0, atol=KKT_TOL)
    assert (ratio[~active] <= 1.0 + KKT_TOL).all()
    assert active.tolist() == [True, True, False]
    # the sampling weights, to a few standard errors (sqrt(0.21 / 4000) = 0.007)
    assert abs(w[0] - 0.3) < 0.03
    # and no point of the simplex does better (a check that does not use the conditions)
    best = np.mean(blend.blend_log_likelihood(log_q, w))
    others = np.random.default_rng(1).dirichlet(np.ones(3), size=200)
    assert all(np.mean(blend.blend_log_likelihood(log_q, v)) <= best for v in others)


def test_weights_of_equal_and_of_lone_components(blend):
    log_q = _two_bumps()
    # two copies of one model: EM's first round leaves equal weights where they are
    np.testing.assert_array_equal(blend.blend_weights(log_q[:, [1, 1]]), [0.5, 0.5])
    assert blend.blend_weights(log_q[:, [0]]).tolist() == [1.0]
    # a row no component can score is left out, not a NaN
    with_dead = np.vstack([log_q, [-np.inf, -np.inf, -np.inf]])
    np.testing.assert_allclose(blend.blend_weights(with_dead), blend.blend_weights(log_q),
                               rtol=0, atol=1e-15)


def test_blend_log_likelihood_is_a_stable_log_sum_exp(blend):
    log_q = np.array([[-1000.0, -1001.0], [1000.0, 999.0], [-np.inf, -3.0], [-np.inf, -np.inf]])
    w = np.array([0.25, 0.75])
    expected = [-1000.0 + np.log(0.25 + 0.75 * np.exp(-1.0)),
                1000.0 + np.log(0.25 + 0.75 * np.exp(-1.0)), np.log(0.75) - 3.0, -np.inf]
    np.testing.assert_allclose(blend.blend_log_likelihood(log_q, w), expected, rtol=1e-15)
    # a zero weight adds nothing, even against a -inf log-density
    np.testing.assert_array_equal(blend.blend_log_likelihood(log_q[:3], [0.0, 1.0]),
                                  log_q[:3, 1])


def test_smoke_run(blend, tmp_path):
    out = tmp_path / "blend.json"
    results = blend.main(["--sets", "eight_gaussians,wine", "--families", "maf",
                          "--n-train", "300", "--n-test", "200", "--epochs", "2",
                          "--draws", "7,8,9", "--json", str(out)], say=lambda *args: None)
    assert json.loads(out.read_text())["results"] == results
    toy, wine = results
    assert (toy["kind"], wine["kind"]) == ("exact", "real")
    assert toy["n_train"] == 300 and toy["n_test"] == 200 and wine["n_test"] == 59
    for entry in results:
        models = entry["models"]
        assert list(models) == ["maf", "gmm", "flows", "flows+gmm"]
        assert models["flows+gmm"]["components"] == ["maf", "gmm"]
        # on the rows that chose the weights the blend is at least either model alone
        for fold, chosen in enumerate(models["flows+gmm"]["weight_rows_log_likelihood"]):
            for single in ("maf", "gmm"):
                assert chosen >= models[single]["weight_rows_log_likelihood"][fold] - 1e-9
        # one model alone: the blend of the flows is that flow
        assert models["flows"]["log_likelihood"] == models["maf"]["log_likelihood"]
    for record in toy["models"].values():
        assert record["gap"] == pytest.approx(
            toy["models"]["maf"]["gap"] + toy["models"]["maf"]["log_likelihood"]
            - record["log_likelihood"], abs=1e-12)
    # the same model refitted here scores the test draw (rng=8) and the weight draw (rng=9)
    model = FlowDensity(flow="maf", random_state=1, progress=False, epochs=2)
    model.fit(draw("eight_gaussians", 300, rng=7))
    maf = toy["models"]["maf"]
    assert maf["log_likelihood"] == pytest.approx(
        model.score(draw("eight_gaussians", 200, rng=8)), rel=1e-12)
    assert maf["weight_rows_log_likelihood"] == [pytest.approx(
        model.score(draw("eight_gaussians", 200, rng=9)), rel=1e-12)]
    # the real set's weights are cross-fitted: one set per half of the test split
    assert len(wine["models"]["flows+gmm"]["weights"]) == 2


@pytest.mark.parametrize("argv, message", [
    (["--sets", "nope"], "--sets: unknown set"),
    (["--families", "maf,maf"], "--families: expected distinct names"),
    (["--draws", "7,8"], "--draws: expected three distinct"),
    (["--draws", "7,7,9"], "--draws: expected three distinct"),
    (["--n-test", "1"], "--n-test: expected at least 2"),
    (["--epochs", "0"], "--epochs: expected at least 1"),
    (["--json", "/nonexistent-folder/x.json"], "--json: cannot write"),
])
def test_bad_arguments(blend, argv, message, capsys):
    with pytest.raises(SystemExit):
        blend.main(argv, say=lambda *args: None)
    assert message in capsys.readouterr().err
