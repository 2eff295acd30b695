"""The density suite (``benchmarks/density_suite.py``): a smoke run and its pieces."""

import importlib
import json
import math
import os
import sys

import numpy as np
import pytest

pytest.importorskip("sklearn")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "benchmarks")

#: Baselines refitted on data scaled by 10 see the same standardised rows: their scores move by
#: exactly -d log 10, up to the rounding of the standardisation (~1e-12 relative).
JACOBIAN_TOL = 1e-9


@pytest.fixture(scope="module")
def suite():
    if BENCH not in sys.path:
        sys.path.insert(0, BENCH)
    return importlib.import_module("density_suite")


def test_smoke_run_writes_consistent_tables(suite, tmp_path):
    out_json, out_md = tmp_path / "suite.json", tmp_path / "suite.md"
    results = suite.main(["--smoke", "--sets", "eight_gaussians,wine", "--estimators",
                          "default,gmm,kde,maf", "--json", str(out_json), "--markdown",
                          str(out_md)], say=lambda *args: None)
    saved = json.loads(out_json.read_text())
    assert [e["set"] for e in saved["results"]] == ["eight_gaussians", "wine"]
    toy, wine = results
    assert toy["dim"] == 2 and toy["n_train"] == 300 and toy["n_test"] == 200
    assert wine["dim"] == 13 and "truth" not in wine
    for entry in results:
        assert [r["estimator"] for r in entry["records"]] == ["default", "gmm", "kde", "maf"]
        for r in entry["records"]:
            assert math.isfinite(r["log_likelihood"]) and r["se"] > 0 and r["fit_seconds"] > 0
    # the gap is the mean difference to the exact density on the same test rows
    for r in toy["records"]:
        assert r["gap"] == pytest.approx(toy["truth"] - r["log_likelihood"], abs=1e-9)
    table = out_md.read_text()
    assert "| eight_gaussians | 300 x 2 |" in table and "| wine | 119 x 13 |" in table
    # merging two runs gives the same tables
    merged = suite.main(["--from-json", f"{out_json},{out_json}"], say=lambda *args: None)
    assert merged == saved["results"]


@pytest.mark.parametrize("fit", ["gmm", "kde"])
def test_baselines_report_the_data_units(suite, fit):
    from refflow.data import synthetic

    train, test = synthetic("curve", 400, rng=0), synthetic("curve", 100, rng=1)
    if fit == "gmm":
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
    assert estimators[:3] == ["default", "gmm", "kde"]
    assert set(estimators[3:]) == set(BUILDERS) - {"planar"}


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
