"""``benchmarks/stable_ranges.py`` (the measurement behind ``STABLE`` in ``test_stress.py``): the
staircase rule on hand-made cells, a tiny grid run end to end, and the draw that showed the old
``iaf_pyro_stable`` range was too wide."""

import importlib
import json
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BENCH = os.path.join(ROOT, "benchmarks")


def script():
    if BENCH not in sys.path:
        sys.path.insert(0, BENCH)
    return importlib.import_module("stable_ranges")


def _cell(trip, raised=0):
    return {"trip": trip, "log_det": 0.0, "raised": raised, "draws": 10}


def test_suggest_staircase():
    """Edge = largest p with every smaller cell clean; one step inside unless 5x below 1e-10 with
    no raise beside it."""
    sr = script()
    result = {
        (1.0, 0.5): _cell(1e-16), (1.0, 1.0): _cell(1e-16), (1.0, 2.0): _cell(5e-11),
        (1.0, 5.0): _cell(2e-10),
        (1e3, 0.5): _cell(1e-16), (1e3, 1.0): _cell(1e-11), (1e3, 2.0): _cell(0.0, raised=1),
        (1e3, 5.0): None,
    }
    # |v| = 1: edge 2 (5e-11: not 5x inside) -> 1; |v| = 1e3: edge 1 (1e-11, 10x inside, but
    # (1e3, 2) raised) -> 0.5
    assert sr.suggest(result) == [(1e3, 0.5), (1.0, 1.0)]
    result[(1.0, 2.0)] = _cell(1e-11)    # 10x inside ...
    result[(1e3, 2.0)] = _cell(2e-10)    # ... and no raise beside: the edges themselves
    assert sr.suggest(result) == [(1e3, 1.0), (1.0, 2.0)]
    result[(1.0, 0.5)] = _cell(1.5e-10)  # the smallest cell dirty: nothing is stable
    assert sr.suggest(result) == []


def test_tiny_grid(tmp_path):
    """Two p x two |v| x one seed of a spline: clean at p = 0.5, dirty at p = 50 (softmax bins
    saturate), so the suggestion is (1e3, 0.5); the JSON has every cell."""
    sr = script()
    path = tmp_path / "out.json"
    out = sr.main(["--cases", "rqs_pyro", "--seeds", "1", "--p-grid", "0.5,50",
                   "--v-grid", "1,1000", "--json", str(path)])
    assert out["rqs_pyro"]["suggested"] == [(1e3, 0.5)]
    cells = json.loads(path.read_text())["rqs_pyro"]["cells"]
    assert {(c["v"], c["p"]) for c in cells} == {(1.0, 0.5), (1e3, 0.5), (1.0, 50.0), (1e3, 50.0)}
    assert all(c["draws"] == 2 for c in cells)   # one seed x {uniform, exactly +-p}


def test_old_iaf_pyro_stable_range_draw_raises():
    """Seed 96968, exactly +-0.5, |v| <= 10 (the old provisional range): MAF's sampling pass
    scales by 1 / sigmoid(u + 2) twice in sequence (x_2 = 9074, then u_3 = -1136): x_3 ~ e^1134
    is beyond float64, so the pass raises, as it must."""
    sr = script()
    from tests.robustness.test_stress import _build
    bijector, sample_context = _build("iaf_pyro_stable", 96968, 0.5, True)
    trip, log_det, raised = sr.check_draw("iaf_pyro_stable", bijector, sample_context, 96968,
                                          10.0)
    assert raised
    assert np.isfinite(trip) and np.isfinite(log_det)
