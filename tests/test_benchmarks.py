"""``benchmarks/run.py``: the command runs, its JSON has the documented structure, every timing is
positive and finite, every case ran in processes of its own, a peer's process sets torch's
threads before anything else and never loads refflow, the self-check flags a disagreement,
peers are timed or skipped with a message, and the multiply-add count follows its formula.
No time is asserted anywhere."""

import ast
import importlib.util
import json
import math
import os
import subprocess
import sys

import pytest

from .helpers import bench_module

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "benchmarks")
RUN = os.path.join(BENCH, "run.py")
MISSING = [m for m in ("torch", "zuko", "nflows") if importlib.util.find_spec(m) is None]
HAVE_PEERS = not MISSING
needs_peers = pytest.mark.skipif(bool(MISSING),
                                 reason=f"needs {', '.join(MISSING)} (not installed)")
TRAIN = ("maf_train", "nsf_train", "realnvp_train")
PEER_WORKLOADS = TRAIN + ("maf_log_prob", "maf_sample", "maf_sample_log_prob", "spline_fwd",
                          "spline_inv", "spline_grad")
GEMM = ("gemm_square", "gemm_maf_hidden", "gemm_plan_maf", "gemm_plan_nsf", "gemm_plan_realnvp")
ENV_KEYS = ("python", "numpy", "scipy", "numba", "refflow", "torch", "zuko", "nflows",
            "blas_threads", "numba_threads", "blas", "blas_core", "cpu", "OPENBLAS_CORETYPE",
            "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "REFFLOW_NUM_THREADS", "torch_threads")
RECORD_KEYS = ("workload", "impl", "dtype", "median_s", "min_s", "max_s", "repeats", "items",
               "unit", "throughput", "processes")
# modules that must not be loaded when a peer's process sets torch's threads
NOT_BEFORE_THREADS = ("scipy", "numba", "threadpoolctl", "refflow", "zuko", "nflows")


def run(*argv, env=None):
    full_env = dict(os.environ, OPENBLAS_NUM_THREADS="1", **(env or {}))
    return subprocess.run([sys.executable, RUN, *argv], capture_output=True, text=True,
                          timeout=600, cwd=ROOT, env=full_env)


def positive_finite(value):
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """One ``--smoke`` run in float64 (with ``--peers`` when torch, zuko and nflows import)."""
    path = tmp_path_factory.mktemp("bench") / "smoke.json"
    md = path.with_suffix(".md")
    argv = ["--smoke", "--dtype", "float64", "--json", str(path), "--markdown", str(md)]
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
    assert result["environment"]["torch_threads"] == 1   # OPENBLAS_NUM_THREADS=1 (run())
    assert "python benchmarks/run.py --smoke --dtype float64 --json" in result["command"]
    records = result["records"]
    assert records
    for rec in records:
        for key in RECORD_KEYS:
            assert key in rec, (key, rec)
        for key in ("median_s", "min_s", "max_s", "items", "throughput", "repeats"):
            assert positive_finite(rec[key]), (key, rec)
        assert rec["min_s"] <= rec["median_s"] <= rec["max_s"], rec
        assert rec["throughput"] == pytest.approx(rec["items"] / rec["median_s"], rel=1e-12)
        assert rec["dtype"] == "float64"
        assert rec["impl"] in ("refflow", "zuko", "nflows")
        assert rec["processes"] == result["sizes"]["rounds"]   # one process per round
    keys = {(r["workload"], r["impl"], r["dtype"]) for r in records}
    assert len(keys) == len(records)  # one record per (workload, impl, dtype)
    impls = ("refflow", "zuko", "nflows") if HAVE_PEERS else ("refflow",)
    for workload in PEER_WORKLOADS:
        for impl in impls:
            assert (workload, impl, "float64") in keys, (workload, impl)
    for workload in GEMM:
        assert (workload, "refflow", "float64") in keys
        assert (workload, "zuko", "float64") not in keys  # NumPy's GEMM rate only


def test_every_case_ran_in_its_own_process(smoke):
    """The run log has one process per (workload, impl, dtype, round); a peer's process had
    set torch's threads before scipy, numba, threadpoolctl, refflow or the peer were loaded
    and never loaded refflow; refflow's processes never loaded torch."""
    result, _, _ = smoke
    cases = [r for r in result["runs"] if r["kind"] == "case" and not r["threads_config"]]
    seen = {}
    for r in cases:
        key = (r["workload"], r["impl"], r["dtype"], r["round"])
        seen[key] = seen.get(key, 0) + 1
        process = r["process"]
        if r["impl"] == "refflow":
            assert process["loaded_at_set_threads"] is None
            assert not process["loaded_at_end"]["torch"], r
        else:
            assert process["torch_threads"] == result["environment"]["torch_threads"], r
            for module in NOT_BEFORE_THREADS:
                assert not process["loaded_at_set_threads"][module], (module, r)
            assert process["loaded_at_set_threads"]["torch"]
            assert not process["loaded_at_end"]["refflow"], r
            assert process["loaded_at_end"][r["impl"]], r
    assert all(n == 1 for n in seen.values()), seen
    assert all(not r["env"] and not r["dropped"] for r in cases)


@needs_peers
def test_peer_models_have_the_same_parameter_count(smoke):
    result, _, _ = smoke
    for workload in TRAIN:
        counts = {r["impl"]: r["params"] for r in result["records"]
                  if r["workload"] == workload and r["dtype"] == "float64"}
        assert set(counts) == {"refflow", "zuko", "nflows"}
        assert len(set(counts.values())) == 1, (workload, counts)


@needs_peers
def test_self_check_ran(smoke):
    """Every peer case was also timed by ``peer_alone.py``, with the same thread count and the
    same parameter count; the check is reported (not enforced in --smoke)."""
    result, _, md = smoke
    check = result["self_check"]
    assert check["enforced"] is False and check["tolerance"] == 0.15
    compared = {(r["workload"], r["impl"]) for r in check["rows"]}
    assert compared == {(w, p) for w in PEER_WORKLOADS for p in ("zuko", "nflows")}
    for row in check["rows"]:
        assert positive_finite(row["alone_s"]) and positive_finite(row["harness_s"]), row
        assert row["ratio"] == pytest.approx(row["harness_s"] / row["alone_s"])
        if row["workload"] in TRAIN:
            assert row["params_alone"] == row["params_harness"], row
    for alone in result["alone"]:
        assert alone["threads"] == result["environment"]["torch_threads"]
    assert "| self-check: peer case |" in md


def test_limit_rows(smoke):
    result, _, _ = smoke
    rows = {(r["workload"], r["dtype"]): r for r in result["limit"]}
    assert set(rows) == {(w, "float64") for w in TRAIN}
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


def test_thread_workloads(smoke):
    """Default threads vs one OpenBLAS thread, each in its own processes; the ratio is the
    quotient of the two medians."""
    result, _, md = smoke
    rows = {r["workload"]: r for r in result["threads"]}
    assert set(rows) == {"threads_fit", "threads_demo", "threads_maf_train"}  # no long fit
    for row in rows.values():
        assert positive_finite(row["default_s"]) and positive_finite(row["one_s"])
        assert row["ratio"] == pytest.approx(row["default_s"] / row["one_s"])
    assert rows["threads_fit"]["default_epochs"] == rows["threads_fit"]["one_epochs"] == 1
    maf = [r for r in result["runs"] if r["kind"] == "case" and r["threads_config"]]
    common = bench_module("common")
    assert [(r["workload"], r["threads_config"], r["env"]) for r in maf] == [
        ("maf_train", "default", {}), ("maf_train", "one", {"OPENBLAS_NUM_THREADS": "1"})]
    assert all(r["dropped"] == sorted(common.THREAD_VARS) for r in maf)
    assert "| thread control (refflow, float64) |" in md


def test_child_env_controls_threads(monkeypatch):
    run_module = bench_module("run")
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "3")
    monkeypatch.setenv("REFFLOW_NUM_THREADS", "3")
    default = run_module.child_env({}, run_module.THREAD_VARS)
    one = run_module.child_env(run_module.THREAD_CONFIGS["one"], run_module.THREAD_VARS)
    assert "OPENBLAS_NUM_THREADS" not in default and "REFFLOW_NUM_THREADS" not in default
    assert one["OPENBLAS_NUM_THREADS"] == "1" and "REFFLOW_NUM_THREADS" not in one
    assert default["PYTHONPATH"].split(os.pathsep)[0] == run_module.refflow_root()
    assert run_module.default_torch_threads({"OPENBLAS_NUM_THREADS": "3"}) == 3
    assert run_module.default_torch_threads({"REFFLOW_NUM_THREADS": "1",
                                             "OPENBLAS_NUM_THREADS": "3"}) == 1


def test_markdown(smoke):
    _, stdout, md = smoke
    assert md in stdout  # printed and written alike
    for fragment in ("| workload (float64) | refflow | zuko | nflows | zuko ÷ refflow | "
                     "nflows ÷ refflow |", "| training step (refflow) |", "Environment: ",
                     "Command: `", "OPENBLAS_CORETYPE=", "REFFLOW_NUM_THREADS=",
                     "first thing in their process"):
        assert fragment in md, fragment


def test_peer_child_code_sets_threads_first():
    """The generated program of a peer: ``import torch`` then ``torch.set_num_threads(n)``,
    before any other statement; refflow's program never mentions torch."""
    run_module = bench_module("run")
    spec = {"workload": "maf_train", "impl": "zuko", "dtype": "float64", "mode": "smoke",
            "warmup": 1, "repeats": 1, "out": "x.json"}
    body = ast.parse(run_module.child_code(spec, 3)).body
    assert isinstance(body[0], ast.Import) and [a.name for a in body[0].names] == ["torch"]
    call = body[1].value
    assert ast.unparse(call) == "torch.set_num_threads(3)"
    own = run_module.child_code(dict(spec, impl="refflow"), 3)
    assert "torch" not in own
    # the standalone script: only ``sys`` (to read the thread count) before torch, and the
    # threads set right after it
    with open(os.path.join(BENCH, "peer_alone.py")) as fh:
        body = [n for n in ast.parse(fh.read()).body if not isinstance(n, ast.Expr)
                or not isinstance(n.value, ast.Constant)]   # without the docstring
    assert [ast.unparse(n) for n in body[:3:2]] == ["import sys", "import torch"]
    assert "sys.argv[1]" in ast.unparse(body[1]) and "import" not in ast.unparse(body[1])
    assert ast.unparse(body[3]) == "if THREADS:\n    torch.set_num_threads(THREADS)"


@needs_peers
def test_peer_child_reports_its_threads(tmp_path):
    """A real peer process: torch's thread count is the one asked for (3, neither torch's
    default nor this machine's usual count here) and nothing heavy was loaded before it."""
    run_module = bench_module("run")
    common = bench_module("common")
    runner = run_module.Runner(common.SIZES["smoke"], 3, str(tmp_path), verbose=False)
    result = runner.case("maf_log_prob", "nflows", "float64")
    assert runner.failures == []
    process = result["process"]
    assert process["torch_threads"] == 3
    for module in NOT_BEFORE_THREADS:
        assert not process["loaded_at_set_threads"][module], module
    assert not process["loaded_at_end"]["refflow"]
    assert positive_finite(result["results"]["maf_log_prob"]["times"][0])


def test_plan_interleaves_implementations():
    run_module = bench_module("run")
    plan = run_module.plan_runs([("maf_train", False), ("gemm_square", True)], ["float64"],
                                ["refflow", "zuko", "nflows"], 3, ["zuko", "nflows"])
    order = [(p["workload"], p["kind"], p["impl"], p["round"]) for p in plan]
    steps = [("case", "refflow"), ("case", "zuko"), ("case", "nflows"), ("alone", "zuko"),
             ("alone", "nflows")]
    orders = [(0, 1, 2, 3, 4), (1, 3, 0, 2, 4), (2, 0, 3, 1, 4)]      # strides 1, 2, 3
    rounds = [[("maf_train",) + steps[i] + (r,) for i in orders[r]] for r in range(3)]
    gemm = [("gemm_square", "case", "refflow", r) for r in range(3)]
    assert order == rounds[0] + rounds[1] + rounds[2] + gemm
    # every process of maf_train follows a different one in each round
    before = {}
    for prev, cur in zip(order[:15], order[1:15]):
        before.setdefault(cur[1:3], []).append(prev[1:3])
    assert all(len(set(p)) == len(p) for p in before.values()), before


def test_self_check_flags_disagreement():
    """Synthetic medians: within 15% either way passes, beyond fails (both directions), a
    parameter-count mismatch fails, a case missing from the harness fails."""
    run_module = bench_module("run")

    def rec(workload, impl, median, params=None):
        r = {"workload": workload, "impl": impl, "dtype": "float64", "median_s": median}
        if params is not None:
            r["params"] = params
        return r

    records = [rec("maf_train", "zuko", 1.10, 10), rec("nsf_train", "zuko", 1.20, 10),
               rec("maf_train", "nflows", 0.85), rec("nsf_train", "nflows", 1 / 1.14),
               rec("realnvp_train", "zuko", 1.0, 10), rec("maf_sample", "zuko", 1.0),
               rec("maf_sample_log_prob", "zuko", 2.0)]
    alone = [{"peer": "zuko", "workload": "maf_train", "dtype": "float64", "times": [1.0],
              "params": 10},
             {"peer": "zuko", "workload": "nsf_train", "dtype": "float64", "times": [0.9, 1.0,
                                                                                  1.1],
              "params": 10},
             {"peer": "nflows", "workload": "maf_train", "dtype": "float64", "times": [1.0]},
             {"peer": "nflows", "workload": "nsf_train", "dtype": "float64", "times": [1.0]},
             {"peer": "zuko", "workload": "realnvp_train", "dtype": "float64", "times": [1.0],
              "params": 11},
             {"peer": "nflows", "workload": "realnvp_train", "dtype": "float64",
              "times": [1.0]},
             {"peer": "zuko", "workload": "maf_sample", "dtype": "float64", "times": [1.05],
              "log_prob_times": [1.0]}]
    rows = run_module.self_check(records, alone)
    verdict = {(r["workload"], r["impl"]): r["ok"] for r in rows}
    assert verdict == {("maf_train", "zuko"): True,            # 1.10
                       ("nsf_train", "zuko"): False,           # 1.20
                       ("maf_train", "nflows"): False,         # 0.85 = 1 / 1.18
                       ("nsf_train", "nflows"): True,          # 1 / 1.14
                       ("realnvp_train", "zuko"): False,       # parameters 10 vs 11
                       ("realnvp_train", "nflows"): False,     # not in the harness
                       ("maf_sample", "zuko"): True,           # 1 / 1.05
                       ("maf_sample_log_prob", "zuko"): False}  # 2.0
    assert run_module.exit_status([], rows) == 1
    assert run_module.exit_status([], rows, enforced=False) == 0
    assert run_module.exit_status([], [r for r in rows if r["ok"]]) == 0
    assert run_module.exit_status(["a process failed"], [], enforced=False) == 1
    table = "\n".join(run_module.check_table(rows))
    assert table.count("**NO**") == 5 and "parameters 10 vs 11" in table


def test_self_check_compares_process_medians():
    """With several processes per side, each side is the median of its per-process medians:
    one slow standalone process of three does not fail a harness that agrees with the other
    two, while a harness whose every process is slow does fail."""
    run_module = bench_module("run")

    def alone(peer, times):
        return {"peer": peer, "workload": "maf_train", "dtype": "float64", "times": times,
                "params": 7}

    records = [{"workload": "maf_train", "impl": "zuko", "dtype": "float64", "median_s": 1.0,
                "params": 7, "process_medians": [0.98, 1.0, 1.02]},
               {"workload": "maf_train", "impl": "nflows", "dtype": "float64",
                "median_s": 1.3, "params": 7, "process_medians": [1.25, 1.3, 1.35]}]
    runs = [alone("zuko", [1.0, 1.01]), alone("zuko", [1.6, 1.5]), alone("zuko", [0.97, 0.99]),
            alone("nflows", [1.0]), alone("nflows", [1.02]), alone("nflows", [0.99])]
    rows = {r["impl"]: r for r in run_module.self_check(records, runs)}
    assert rows["zuko"]["alone_process_s"] == [1.005, 1.55, 0.98]
    assert rows["zuko"]["alone_s"] == 1.005 and rows["zuko"]["harness_s"] == 1.0
    assert rows["zuko"]["ok"] is True and rows["zuko"]["params_alone"] == 7
    assert rows["nflows"]["ratio"] == pytest.approx(1.3 / 1.0) and rows["nflows"]["ok"] is False
    table = "\n".join(run_module.check_table(list(rows.values())))
    assert "| 1000.0 ms (980.0-1020.0, 3 processes) | 1005.0 ms (980.0-1550.0, 3 processes) |" \
        in table


def test_peers_skipped_with_a_message(tmp_path):
    """A peer that cannot be imported is skipped with ``<peer>: skipped (not installed)``."""
    hidden = tmp_path / "zuko"
    hidden.mkdir()
    (hidden / "__init__.py").write_text("raise ImportError('hidden by the test')\n")
    path = tmp_path / "out.json"
    proc = run("--smoke", "--peers", "--only", "maf_train", "--dtype", "float64", "--no-check",
               "--json", str(path), env={"PYTHONPATH": str(tmp_path) + os.pathsep +
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
    assert result["self_check"]["rows"] == [] and result["alone"] == []


def test_float32_smoke(tmp_path):
    """refflow alone in float32 (the peers' float32 models are the float64 ones converted)."""
    path = tmp_path / "out.json"
    proc = run("--smoke", "--dtype", "float32", "--only", "maf_train,maf_sample,gemm_square,"
               "gemm_plan_maf", "--json", str(path))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(path.read_text())
    keys = {(r["workload"], r["impl"], r["dtype"]) for r in result["records"]}
    assert keys == {(w, "refflow", "float32") for w in (
        "maf_train", "maf_sample", "maf_sample_log_prob", "gemm_square", "gemm_plan_maf")}
    [row] = result["limit"]
    assert (row["workload"], row["dtype"]) == ("maf_train", "float32")
    assert positive_finite(row["frac_plan_masked"]) and positive_finite(row["frac_square_dense"])


def test_help():
    proc = run("--help")
    assert proc.returncode == 0, proc.stderr
    for option in ("--quick", "--peers", "--dtype", "--only", "--json", "--markdown", "--smoke",
                   "--no-check", "--rounds", "--threads", "maf_train", "spline_grad",
                   "threads_demo"):
        assert option in proc.stdout, option


def test_unknown_workload_is_refused():
    proc = run("--smoke", "--only", "maf_train,no_such_workload")
    assert proc.returncode == 2
    assert "--only: unknown workload(s) no_such_workload" in proc.stderr


def test_unwritable_output_is_refused_before_work(tmp_path):
    proc = run("--smoke", "--json", str(tmp_path / "no" / "such" / "dir" / "out.json"))
    assert proc.returncode == 2
    assert "--json: cannot write" in proc.stderr


def test_count_macs_follows_its_formula():
    """Dense: forward n*out*in + backward 2*n*out*in per matrix, minus the data-side input
    cotangent; masked: the same with the mask's nonzeros."""
    bench_gemm = bench_module("bench_gemm")
    import refflow

    n = 7
    flow = refflow.RealNVP(2, n_layers=2, hidden=(3,), rng=0)   # per layer: W0 (3, 1), W1 (2, 3)
    per_layer = 3 * n * (3 * 1 + 2 * 3)
    expected = 2 * per_layer - n * 3 * 1                # no cotangent for the data's own input
    assert bench_gemm.count_macs(flow, n) == {"dense": expected, "masked": expected,
                                              "data_side_dense": n * 3, "data_side_masked": n * 3}
    assert len(bench_gemm.gemm_plan(flow, n)) == 4 * 3 - 1

    flow = refflow.MAF(3, n_layers=2, hidden=(4,), rng=0)
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


def test_fit_summary_reads_both_forms_of_the_fit_line():
    """The thread workloads time `refflow fit` by its own summary: one fit's line, or the
    candidates' line and the kept one's (flow="auto", whiten="auto")."""
    fit_summary = bench_module("run").fit_summary
    assert fit_summary("fit: ...\n  5 epochs (90 steps) in 3.7 s\n") == (5, 3.7)
    assert fit_summary("  5 epochs in 3.7 s; stopped early: 10 epochs without\n") == (5, 3.7)
    both = ("  4 candidates fitted in 10.8 s; validation mean log-likelihood: maf 37.7649, "
            "nsf (unwhitened) 40.8909\n  kept nsf (unwhitened): 61 epochs (122 steps); "
            "stopped early: 10 epochs without a better validation score\n")
    assert fit_summary(both) == (61, 10.8)
    assert fit_summary("  model written to m.npz\n") is None
