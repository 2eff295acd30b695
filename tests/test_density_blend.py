"""Blends of fitted densities (``benchmarks/density_blend.py``): a smoke run and its arguments
(the weights and the blend's log-likelihood are ``refflow.estimator``'s, tested in
``test_estimator_blend.py``)."""

import json

import pytest

from refflow.data import toy as draw
from refflow.estimator import FlowDensity

from .helpers import bench_module

pytest.importorskip("sklearn")


@pytest.fixture(scope="module")
def blend():
    return bench_module("density_blend")


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
