"""``benchmarks/run.py``: the command runs, its JSON has the documented structure, every timing is
positive and finite, peers are timed or skipped with a message, and the multiply-add count
follows its formula. No time is asserted anywhere."""

import importlib.util
import json
import math
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "benchmarks")
RUN = os.path.join(BENCH, "run.py")
HAVE_PEERS = all(importlib.util.find_spec(m) is not None for m in ("torch", "zuko", "nflows"))
TRAIN = ("maf_train", "nsf_train", "realnvp_train")
PEER_WORKLOADS = TRAIN + ("maf_log_prob", "maf_sample", "maf_sample_log_prob", "spline_fwd",
                          "spline_inv", "spline_grad")
GEMM = ("gemm_square", "gemm_maf_hidden", "gemm_plan_maf", "gemm_plan_nsf", "gemm_plan_realnvp")
ENV_KEYS = ("python", "numpy", "scipy", "numba", "refflow", "torch", "zuko", "nflows",
            "blas_threads", "numba_threads", "blas", "cpu", "OPENBLAS_CORETYPE",
            "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")
RECORD_KEYS = ("workload", "impl", "dtype", "median_s", "min_s", "max_s", "repeats", "items",
               "unit", "throughput")


def run(*argv, env=None):
    full_env = dict(os.environ, OPENBLAS_NUM_THREADS="1", **(env or {}))
    return subprocess.run([sys.executable, RUN, *argv], capture_output=True, text=True,
                          timeout=240, cwd=ROOT, env=full_env)


def positive_finite(value):
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """One ``--smoke`` run (with ``--peers`` when torch, zuko and nflows import)."""
    path = tmp_path_factory.mktemp("bench") / "smoke.json"
    md = path.with_suffix(".md")
    argv = ["--smoke", "--json", str(path), "--markdown", str(md)]
    argv += ["--peers"] if HAVE_PEERS else []
    proc = run(*argv)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with open(path) as fh:
        return json.load(fh), proc.stdout, md.read_text()


def test_json_structure(smoke):
    result, _, _ = smoke
    assert result["mode"] == "smoke" and result["failures"] == []
    for key in ENV_KEYS:
        assert key in result["environment"], key
    assert "python benchmarks/run.py --smoke --json" in result["command"]
    records = result["records"]
    assert records
    for rec in records:
        for key in RECORD_KEYS:
            assert key in rec, (key, rec)
        for key in ("median_s", "min_s", "max_s", "items", "throughput", "repeats"):
            assert positive_finite(rec[key]), (key, rec)
        assert rec["min_s"] <= rec["median_s"] <= rec["max_s"], rec
        assert rec["throughput"] == pytest.approx(rec["items"] / rec["median_s"], rel=1e-12)
        assert rec["dtype"] in ("float64", "float32")
        assert rec["impl"] in ("refflow", "zuko", "nflows")
    keys = {(r["workload"], r["impl"], r["dtype"]) for r in records}
    assert len(keys) == len(records)  # one record per (workload, impl, dtype)
    impls = ("refflow", "zuko", "nflows") if HAVE_PEERS else ("refflow",)
    for dtype in ("float64", "float32"):
        for workload in PEER_WORKLOADS:
            for impl in impls:
                assert (workload, impl, dtype) in keys, (workload, impl, dtype)
        for workload in GEMM:
            assert (workload, "refflow", dtype) in keys
            assert (workload, "zuko", dtype) not in keys  # NumPy's GEMM rate only


@pytest.mark.skipif(not HAVE_PEERS, reason="torch, zuko or nflows not installed")
def test_peer_models_have_the_same_parameter_count(smoke):
    result, _, _ = smoke
    for workload in TRAIN:
        counts = {r["impl"]: r["params"] for r in result["records"]
                  if r["workload"] == workload and r["dtype"] == "float64"}
        assert set(counts) == {"refflow", "zuko", "nflows"}
        assert len(set(counts.values())) == 1, (workload, counts)


def test_limit_rows(smoke):
    result, _, _ = smoke
    rows = {(r["workload"], r["dtype"]): r for r in result["limit"]}
    assert set(rows) == {(w, d) for w in TRAIN for d in ("float64", "float32")}
    for (workload, _), row in rows.items():
        for key in ("macs_dense", "macs_masked", "gflops_dense", "gflops_masked",
                    "gemm_plan_gflops", "gemm_square_gflops", "frac_plan_dense",
                    "frac_square_dense"):
            assert positive_finite(row[key]), (key, row)
        if workload == "realnvp_train":
            assert row["macs_masked"] == row["macs_dense"]  # coupling MLPs have no masks
        else:
            assert row["macs_masked"] < row["macs_dense"]
        assert row["gflops_dense"] == pytest.approx(2 * row["macs_dense"] / row["median_s"] / 1e9)


def test_markdown(smoke):
    _, stdout, md = smoke
    assert md in stdout  # printed and written alike
    for fragment in ("| workload (float64) | refflow | zuko | nflows | zuko ÷ refflow | "
                     "nflows ÷ refflow |", "| workload (float32) |", "| training step (refflow) |",
                     "Environment: ", "Command: `", "OPENBLAS_CORETYPE="):
        assert fragment in md, fragment


def test_peers_skipped_with_a_message(tmp_path):
    """A peer that cannot be imported is skipped with ``<peer>: skipped (not installed)``."""
    hidden = tmp_path / "zuko"
    hidden.mkdir()
    (hidden / "__init__.py").write_text("raise ImportError('hidden by the test')\n")
    path = tmp_path / "out.json"
    proc = run("--smoke", "--peers", "--only", "maf_train", "--dtype", "float64", "--json",
               str(path), env={"PYTHONPATH": str(tmp_path) + os.pathsep +
                               os.environ.get("PYTHONPATH", "")})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # without torch the reason is torch itself (then zuko is never imported)
    torch_missing = importlib.util.find_spec("torch") is None
    reason = "torch not installed" if torch_missing else "not installed"
    assert f"zuko: skipped ({reason})" in proc.stdout
    result = json.loads(path.read_text())
    impls = {r["impl"] for r in result["records"]}
    assert "zuko" not in impls and "refflow" in impls
    assert ("nflows" in impls) == (importlib.util.find_spec("nflows") is not None
                                   and importlib.util.find_spec("torch") is not None)
    assert {r["workload"] for r in result["records"]} == {"maf_train"}
    assert {r["dtype"] for r in result["records"]} == {"float64"}


def test_help():
    proc = run("--help")
    assert proc.returncode == 0, proc.stderr
    for option in ("--quick", "--peers", "--dtype", "--only", "--json", "--markdown", "--smoke",
                   "maf_train", "spline_grad"):
        assert option in proc.stdout, option


def test_unknown_workload_is_refused():
    proc = run("--smoke", "--only", "maf_train,no_such_workload")
    assert proc.returncode == 2
    assert "--only: unknown workload(s) no_such_workload" in proc.stderr


def test_count_macs_follows_its_formula():
    """Dense: forward n*out*in + backward 2*n*out*in per matrix, minus the data-side input
    cotangent; masked: the same with the mask's nonzeros."""
    sys.path.insert(0, BENCH)
    try:
        import bench_gemm
    finally:
        sys.path.remove(BENCH)
    from refflow.flows import MAF, RealNVP

    n = 7
    flow = RealNVP(2, n_layers=2, hidden=(3,), rng=0)   # per layer: W0 (3, 1), W1 (2, 3)
    per_layer = 3 * n * (3 * 1 + 2 * 3)
    expected = 2 * per_layer - n * 3 * 1                # no cotangent for the data's own input
    assert bench_gemm.count_macs(flow, n) == {"dense": expected, "masked": expected,
                                              "data_side_dense": n * 3, "data_side_masked": n * 3}
    assert len(bench_gemm.gemm_plan(flow, n)) == 4 * 3 - 1

    flow = MAF(3, n_layers=2, hidden=(4,), rng=0)
    mades = [layer.made for layer in flow.bijector.layers[::-1] if hasattr(layer, "made")]
    nnz = [[int(m.sum()) for m in made.masks] for made in mades]
    masked = 3 * n * sum(map(sum, nnz)) - n * nnz[0][0]
    dense = 3 * n * 2 * (4 * 3 + 6 * 4) - n * 4 * 3
    got = bench_gemm.count_macs(flow, n)
    assert (got["dense"], got["masked"]) == (dense, masked)
    assert masked < dense
    plan_macs = sum(a[0] * a[1] * (b[0] if tb else b[1]) if not ta else a[1] * a[0] * b[1]
                    for a, b, ta, tb in bench_gemm.gemm_plan(flow, n))
    assert plan_macs == dense
