"""The density suite (``benchmarks/density_suite.py``): a smoke run and its pieces."""

import json
import math

import numpy as np
import pytest

from .helpers import bench_module

pytest.importorskip("sklearn")

#: Baselines refitted on data scaled by 10 see the same standardised rows: their scores move by
#: exactly -d log 10, up to the rounding of the standardisation (~1e-12 relative).
JACOBIAN_TOL = 1e-9


@pytest.fixture(scope="module")
def suite():
    return bench_module("density_suite")


def test_smoke_run_writes_consistent_tables(suite, tmp_path):
    out_json, out_md = tmp_path / "suite.json", tmp_path / "suite.md"
    results = suite.main(["--smoke", "--sets", "eight_gaussians,wine", "--estimators",
                          "default,gaussian,gmm,kde,maf", "--seeds", "0,1", "--json",
                          str(out_json), "--markdown", str(out_md)], say=lambda *args: None)
    saved = json.loads(out_json.read_text())
    assert [(e["set"], e["seed"]) for e in saved["results"]] == [
        ("eight_gaussians", 0), ("eight_gaussians", 1), ("wine", 0), ("wine", 1)]
    toy, _, wine, _ = results
    assert toy["dim"] == 2 and toy["n_train"] == 300 and toy["n_test"] == 200
    assert wine["dim"] == 13 and "truth" not in wine
    for entry in results:
        assert [r["estimator"] for r in entry["records"]] == ["default", "gaussian", "gmm",
                                                              "kde", "maf"]
        for r in entry["records"]:
            assert math.isfinite(r["log_likelihood"]) and r["se"] > 0 and r["fit_seconds"] > 0
            assert r["fit_cpu_seconds"] >= 0   # getrusage: may round a tiny fit down to 0
            # the flows record their kept fit's whitening (the baselines have none)
            assert ("whitened" in r) == (r["estimator"] in ("default", "maf"))
            assert ("rotated" in r) == ("whitened" in r)
            assert not r.get("rotated") or r["whitened"]
            # and the epochs after which the learning rate was lowered
            assert ("lr_drops" in r) == ("whitened" in r)
            assert all(0 <= e < r["epochs"] for e in r.get("lr_drops", []))
    # wine's 13 features on few rows: not rotated to independent components, and no gf
    assert not wine["records"][0]["rotated"]
    assert "gf" not in wine["records"][0]["candidate_scores"]
    # the gap is the mean difference to the exact density on the same test rows
    for r in toy["records"]:
        assert r["gap"] == pytest.approx(toy["truth"] - r["log_likelihood"], abs=1e-9)
    table = out_md.read_text()
    assert "| eight_gaussians | 300 x 2 | 2 |" in table and "| wine | 119 x 13 | 2 |" in table
    assert "Fit CPU seconds (user + system, getrusage)" in table
    # merging two runs gives the same tables
    merged = suite.main(["--from-json", f"{out_json},{out_json}"], say=lambda *args: None)
    assert merged == saved["results"]


@pytest.mark.parametrize("fit", ["gaussian", "gmm", "kde"])
def test_baselines_report_the_data_units(suite, fit):
    from refflow.data import synthetic

    train, test = synthetic("curve", 400, rng=0), synthetic("curve", 100, rng=1)
    if fit == "gaussian":
        a, _ = suite.fit_gaussian(train, test)
        b, _ = suite.fit_gaussian(10 * train, 10 * test)
    elif fit == "gmm":
        a, _ = suite.fit_gmm(train, test, 0, 3)
        b, _ = suite.fit_gmm(10 * train, 10 * test, 0, 3)
    else:
        a, _ = suite.fit_kde(train, test, 0, (0.1, 0.3, 1.0))
        b, _ = suite.fit_kde(10 * train, 10 * test, 0, (0.1, 0.3, 1.0))
    np.testing.assert_allclose(b, a - 4 * np.log(10.0), rtol=JACOBIAN_TOL)


def test_dequantization_steps(suite):
    column = np.array([1.25, 3.5, 0.75, 2.0] * 30)
    assert suite.recording_step(column) == pytest.approx(0.01)
    assert suite.recording_step(np.array([3.0, 7.0, 11.0])) == 1.0
    x = np.column_stack([column, np.arange(120.0)])
    deq, steps = suite.dequantize(x, np.random.default_rng(0))
    np.testing.assert_allclose(steps, [0.01, 1.0])
    assert np.all((deq - x >= 0) & (deq - x < steps))


def test_every_family_is_run(suite):
    from refflow.flows import BUILDERS

    estimators = suite.estimators_for(suite.MODES["full"], skip=["planar"])
    assert estimators[:4] == ["default", "gaussian", "gmm", "kde"]
    assert set(estimators[4:]) == set(BUILDERS) - {"planar"}


def test_verdict(suite):
    def entry(default, gmm, kde, gap=None):
        records = [{"estimator": "default", "log_likelihood": default},
                   {"estimator": "gmm", "log_likelihood": gmm},
                   {"estimator": "kde", "log_likelihood": kde}]
        if gap is not None:
            records[0]["gap"] = gap
        return {"records": records}

    assert suite.verdict(entry(-1.0, -1.1, -1.2, 0.04)) == (True, True)
    assert suite.verdict(entry(-1.0, -0.9, -1.2, 0.06)) == (False, False)
    assert suite.verdict(entry(-1.0, -1.1, -1.2)) == (True, None)


def test_bad_arguments(suite, capsys):
    with pytest.raises(SystemExit):
        suite.main(["--sets", "nope"], say=lambda *args: None)
    with pytest.raises(SystemExit):
        suite.main(["--estimators", "nope"], say=lambda *args: None)
    with pytest.raises(SystemExit):
        suite.main(["--json", "/nonexistent-folder/x.json"], say=lambda *args: None)
    assert "unknown" in capsys.readouterr().err


def test_gaussian_baseline_is_the_maximum_likelihood_gaussian(suite):
    from scipy.stats import multivariate_normal

    from refflow.data import synthetic

    train, test = synthetic("student_t", 500, rng=0), synthetic("student_t", 50, rng=1)
    lp, _ = suite.fit_gaussian(train, test)
    expected = multivariate_normal(train.mean(axis=0),
                                   np.cov(train, rowvar=False, bias=True)).logpdf(test)
    np.testing.assert_allclose(lp, expected, rtol=JACOBIAN_TOL)


def test_aggregate_over_seeds(suite):
    def entry(seed, default, gmm, gap):
        return {"set": "curve", "seed": seed, "kind": "synthetic", "note": "", "n_train": 10,
                "n_test": 5, "dim": 4, "truth": -1.0, "truth_se": 0.1,
                "records": [{"estimator": "default", "log_likelihood": default, "se": 0.5,
                             "gap": gap, "gap_se": 0.2, "fit_seconds": 2.0},
                            {"estimator": "gmm", "log_likelihood": gmm, "se": 0.5,
                             "fit_seconds": 1.0, "k": seed + 1}]}

    (one,) = suite.aggregate([entry(0, -1.2, -1.5, 0.2)])
    default = suite._by(one)["default"]
    # one seed: the standard error over the test rows, as run
    assert default["log_likelihood"] == -1.2 and default["se"] == 0.5
    (three,) = suite.aggregate([entry(0, -1.2, -1.5, 0.2), entry(1, -1.0, -1.4, 0.0),
                                entry(2, -1.1, -1.6, 0.1)])
    default, gmm = suite._by(three)["default"], suite._by(three)["gmm"]
    # three seeds: mean -1.1, sample std 0.1, standard error 0.1 / sqrt(3)
    assert default["log_likelihood"] == pytest.approx(-1.1, abs=1e-12)
    assert default["se"] == pytest.approx(0.1 / math.sqrt(3), rel=1e-12)
    assert default["gap"] == pytest.approx(0.1, abs=1e-12)
    assert gmm["k"] == [1, 2, 3] and three["seeds"] == [0, 1, 2]
    assert suite.verdict(three) == (True, False)
    assert "-1.100 ± 0.058" in suite.summary_table([three])


def test_seeds_draw_disjoint_rows(suite):
    mode = suite.MODES["smoke"]
    a, b = suite.load_set("curve", mode, 0), suite.load_set("curve", mode, 1)
    rows = np.concatenate([a["train"], a["test"], b["train"], b["test"]])
    assert np.unique(rows, axis=0).shape[0] == rows.shape[0]


def test_variants_and_draws(suite, tmp_path):
    """``--variant`` adds a FlowDensity with the given arguments; ``--draws`` draws the rows
    with the given seeds (the same rows as ``refflow.data`` gives for them)."""
    from refflow.data import toy

    out_json = tmp_path / "v.json"
    results = suite.main(["--smoke", "--sets", "eight_gaussians", "--estimators", "gaussian,t",
                          "--variant", 't={"flow": "maf", "base": "student_t", "n_layers": 1}',
                          "--draws", "7,8", "--json", str(out_json)], say=lambda *args: None)
    (entry,) = results
    assert [r["estimator"] for r in entry["records"]] == ["gaussian", "t"]
    assert math.isfinite(entry["records"][1]["log_likelihood"])
    saved = json.loads(out_json.read_text())
    assert saved["environment"]["draws"] == [7, 8]
    assert saved["environment"]["variants"] == {"t": {"flow": "maf", "base": "student_t",
                                                      "n_layers": 1}}
    # the Gaussian baseline's score is that of the rows drawn with rng 7 and 8
    mode = suite.MODES["smoke"]
    lp, _ = suite.fit_gaussian(toy("eight_gaussians", mode.n_train, rng=7),
                               toy("eight_gaussians", mode.n_test, rng=8))
    assert entry["records"][0]["log_likelihood"] == pytest.approx(float(np.mean(lp)),
                                                                  rel=1e-12)


@pytest.mark.parametrize("argv", [["--draws", "7"], ["--draws", "7,7"], ["--draws", "a,b"],
                                  ["--variant", "t"], ["--variant", "t={"],
                                  ["--variant", "maf={}"],
                                  ["--variant", 't={"random_state": 1}'],
                                  ["--variant", 't={"base": "cauchy"}'],
                                  ["--variant", 't={"nope": 1}']])
def test_bad_variants_and_draws(suite, argv):
    with pytest.raises(SystemExit):
        suite.main(argv, say=lambda *args: None)


def test_merge_replaces_a_record_in_its_place(suite):
    """A later run's record of an estimator replaces the earlier one where it stood (the
    tables keep their columns' order); new estimators and sets are appended."""
    def entry(name, *records):
        return {"set": name, "seed": 1, "records": [dict(estimator=e, log_likelihood=v)
                                                    for e, v in records]}

    first = [entry("wine", ("gaussian", 1.0), ("default", 2.0), ("kde", 3.0))]
    later = [entry("wine", ("default", 4.0), ("maf", 5.0)), entry("digits", ("default", 6.0))]
    merged = suite.merge([first, later])
    assert [e["set"] for e in merged] == ["wine", "digits"]
    assert [(r["estimator"], r["log_likelihood"]) for r in merged[0]["records"]] == [
        ("gaussian", 1.0), ("default", 4.0), ("kde", 3.0), ("maf", 5.0)]
