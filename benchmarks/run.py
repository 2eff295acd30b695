"""One command for every benchmark workload, refflow beside zuko and nflows, in one run.

Run (from the repository root)::

    python benchmarks/run.py [--quick] [--peers] [--dtype float64|float32|both]
                             [--only NAME,...] [--json PATH] [--markdown PATH] [--smoke]
                             [--no-check] [--rounds N] [--threads N]

Workloads (fixed configurations, so later runs compare; seeds fixed), one module per topic:

- ``bench_train``: training steps (``nll_and_grad`` + Adam vs torch's ``-log_prob(x).mean()``,
  ``zero_grad``, ``backward``, ``step``): ``maf_train``, ``nsf_train``, ``realnvp_train``.
- ``bench_density``: the MAF's ``maf_log_prob`` (batch 4096) and ``maf_sample`` (10,000
  samples), which also times ``maf_sample_log_prob`` (one ``log_prob`` of the rows just sampled,
  for the ratio sampling time / log_prob time of the same rows).
- ``bench_splines``: rational-quadratic spline kernels on 2^20 elements, K = 8:
  ``spline_fwd`` (forward + log-det), ``spline_inv`` (inverse + log-det), ``spline_grad``
  (forward + gradient).
- ``bench_gemm``: the machine's GEMM rate (``gemm_square``, ``gemm_maf_hidden``, and
  ``gemm_plan_*``: every product of one training step), for "the limit" table: multiply-adds
  per training step (dense and masked) and the achieved fraction of the GEMM rate.
- thread control (refflow only, float64): ``threads_fit`` (``python -m refflow fit two_moons
  -o <tmp>.npz --epochs 5``, the whole command), ``threads_fit_long`` (the same with
  ``--epochs 20``; not in ``--quick``), ``threads_demo`` (the fit of ``python -m refflow demo``:
  ``FlowDensity(flow="nsf", n_layers=4, hidden=(32, 32), epochs=60, batch_size=256, lr=3e-3,
  validation_fraction=0.1, patience=15, random_state=0)`` on ``two_moons(4000, noise=0.1)``,
  the fit alone timed) and ``threads_maf_train`` (the ``maf_train`` step), each with the default
  threads (every thread variable removed from the environment) and with
  ``OPENBLAS_NUM_THREADS=1``; ratio default ÷ one thread (1 is the goal, above 1 the default is
  slower).

How it times (so that it cannot flatter refflow):

- Every (workload, implementation, dtype) runs in a fresh Python process (``sys.executable``),
  ``rounds`` times (3; ``--quick`` 2; ``--smoke`` 1; ``--rounds``), the implementations
  alternating (refflow, zuko, nflows, then the self-check's standalone processes; each round
  rotates that order by one) so that drift of the machine hits all of them and no process always follows
  the same one. Each process makes warm-up calls and then a few timed calls; the median is over every
  timed call of every round. Nothing else runs meanwhile: this script only waits.
- A peer's process starts with ``import torch`` and ``torch.set_num_threads(n)``, before
  anything else is imported or run (``child_code``; torch itself loads NumPy, nothing loads
  SciPy, numba or threadpoolctl before the threads are set); it never imports refflow, and
  refflow's processes never import torch. ``n`` = ``--threads``, by default the thread budget
  refflow has: ``REFFLOW_NUM_THREADS``, ``OPENBLAS_NUM_THREADS`` or ``OMP_NUM_THREADS`` if set,
  else the CPUs this process may use. Peer models are converted with ``.to(dtype)``; torch's
  default dtype is never changed.
- Self-check (``--peers``): each peer case is also timed alone, in a fresh process running
  ``benchmarks/peer_alone.py`` (torch and the peer only, threads first, no code shared with
  this harness), once in every round, each standalone process making as many calls as one
  harness process. The two sides are compared process for process: the median over rounds of
  the per-process medians, harness against standalone (one fresh torch process on this kind of
  machine can sit 20-40% above or below the next, so one standalone process against a pool of
  rounds judged that noise, not the harness). If the two differ by
  more than 15% (ratio outside [1/1.15, 1.15]), or the two models' parameter counts differ,
  the run prints ``SELF-CHECK FAILED`` with the cases and exits with status 1. ``--no-check``
  skips the standalone timings; in ``--smoke`` the check runs but is not enforced (tiny models
  time noise).
- The environment line (versions, BLAS and its core type, BLAS and numba threads, CPU,
  ``OPENBLAS_CORETYPE``, the thread variables, ``REFFLOW_NUM_THREADS``) is recorded by a fresh
  refflow process, so the thread counts are those a refflow process starts with.

Reading the results: every ratio column is ``peer time / refflow time`` for the same workload
and dtype in this run: above 1, refflow is faster. Compare ratios, not absolute times across
runs or machines: the times move with the load of the machine, the BLAS and its
``OPENBLAS_CORETYPE`` (this machine's environment may set ``OPENBLAS_CORETYPE=Haswell``, which
runs OpenBLAS's GEMM at about 0.65x of its AVX-512 speed; recorded, never set here).

``--quick`` keeps every configuration but draws 1,000 instead of 10,000 samples, repeats less
in each process and leaves out the long fit (the table says what it changed); ``--smoke`` runs
tiny models once, to test this script. A full run with ``--peers`` takes about 13-14 minutes
on 2 idle cores: some 170 fresh processes (a peer's takes ~3 s to start), the peers' sampling
(~3 minutes) and spline kernels (~2 minutes), and the thread workloads (~1-2 minutes).
"""

import argparse
import dataclasses
import importlib.util
import json
import math
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)
ROOT = os.path.dirname(HERE)
if importlib.util.find_spec("refflow") is None:  # not installed: the repository's refflow
    sys.path.insert(1, ROOT)

import bench_density  # noqa: E402
import bench_gemm  # noqa: E402
import bench_splines  # noqa: E402
import bench_train  # noqa: E402
import child  # noqa: E402
from common import (DTYPES, IMPLS, PEERS, SIZES, THREAD_VARS, alone_repeats,  # noqa: E402
                    environment_line, quick_changes, record, repeats_for, warmup_for)

PEER_ALONE = os.path.join(HERE, "peer_alone.py")
# The bound for the self-check: harness and standalone medians of a peer agree within
# 15% (about the run-to-run noise of a torch step on 2 shared cores).
CHECK_TOLERANCE = 0.15
CHILD_TIMEOUT = 1800  # seconds for one process: a hung child must not hang the run

THREAD_WORKLOADS = {
    "threads_fit": "`python -m refflow fit two_moons -o <tmp>.npz --epochs {fit_epochs}` "
                   "(whole command)",
    "threads_fit_long": "`python -m refflow fit two_moons -o <tmp>.npz --epochs "
                        "{fit_long_epochs}` (whole command)",
    "threads_demo": "the demo's fit (NSF 4 x (32, 32), two moons {demo_rows} rows, up to "
                    "{demo_epochs} epochs; fit only)",
    "threads_maf_train": "MAF train step (dim 64, 5 layers, hidden (256, 256), batch 512; "
                         "float64)",
}
THREAD_CONFIGS = {"default": {}, "one": {"OPENBLAS_NUM_THREADS": "1"}}
TOPICS = {"train": bench_train, "density": bench_density, "splines": bench_splines,
          "gemm": bench_gemm, "threads": None}
ORDER = [(name, module) for topic, module in TOPICS.items() if module is not None
         for name in module.WORKLOADS] + [(name, None) for name in THREAD_WORKLOADS]
MODULE = dict(ORDER)
TOPIC_OF = {name: topic for topic, module in TOPICS.items()
            for name in (module.WORKLOADS if module is not None else THREAD_WORKLOADS)}
LABELS = {name: text for m in TOPICS.values() if m is not None
          for name, text in m.WORKLOADS.items()}
LABELS.update({name: label for name, (_, label) in bench_density.FOLLOWUPS.items()})


def parse(argv):
    names = ", ".join(list(TOPICS) + [n for n, _ in ORDER])
    parser = argparse.ArgumentParser(
        prog="python benchmarks/run.py",
        description="Every refflow benchmark workload (training steps, log_prob, sampling, "
                    "spline kernels, GEMM rate, thread control), optionally beside zuko and "
                    "nflows; each case in fresh processes, implementations interleaved, "
                    "medians after warm-up, JSON and Markdown results. Ratios are peer time / "
                    "refflow time (above 1: refflow is faster).")
    parser.add_argument("--quick", action="store_true",
                        help="same configurations, 1,000 instead of 10,000 samples, fewer "
                             "repeats, no long fit")
    parser.add_argument("--peers", action="store_true",
                        help="also time zuko and nflows (torch CPU) and check them against a "
                             "standalone timing; skipped with a message when not installed")
    parser.add_argument("--dtype", choices=("float64", "float32", "both"), default="both")
    parser.add_argument("--only", metavar="NAME,...",
                        help=f"comma-separated workloads or topics: {names} "
                             "(maf_sample also times maf_sample_log_prob)")
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON")
    parser.add_argument("--markdown", metavar="PATH", help="write the Markdown tables")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny sizes, one repeat (tests the script, not the speed); the "
                             "self-check runs but is not enforced")
    parser.add_argument("--no-check", dest="check", action="store_false",
                        help="skip the self-check (no standalone peer timings)")
    parser.add_argument("--rounds", type=int, default=None, metavar="N",
                        help="processes per (workload, implementation, dtype), interleaved "
                             "(default 2, --smoke 1)")
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="torch.set_num_threads(N) in the peers' processes (default: "
                             "REFFLOW_NUM_THREADS, OPENBLAS_NUM_THREADS or OMP_NUM_THREADS if "
                             "set, else the usable CPUs)")
    args = parser.parse_args(argv)
    selected = [n for n, _ in ORDER]
    if args.only:
        wanted = [w.strip() for w in args.only.split(",") if w.strip()]
        unknown = [w for w in wanted if w not in TOPICS and w not in MODULE]
        if unknown or not wanted:
            parser.error(f"--only: unknown workload(s) {', '.join(unknown) or '(none given)'}; "
                         f"choose from {names}")
        selected = [n for n, _ in ORDER if n in wanted or TOPIC_OF[n] in wanted]
    if args.rounds is not None and args.rounds < 1:
        parser.error("--rounds: expected a positive integer")
    if args.threads is not None and args.threads < 1:
        parser.error("--threads: expected a positive integer")
    for option, path in (("--json", args.json), ("--markdown", args.markdown)):
        folder = os.path.dirname(os.path.abspath(path)) if path else None
        if folder and not (os.path.isdir(folder) and os.access(folder, os.W_OK)):
            parser.error(f"{option}: cannot write {path!r} (no such writable directory)")
    args.selected = selected
    args.dtypes = DTYPES if args.dtype == "both" else (args.dtype,)
    return args


def default_torch_threads(environ=None):
    """The peers' thread count: refflow's thread budget (see the module docstring)."""
    environ = os.environ if environ is None else environ
    for var in ("REFFLOW_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
        value = environ.get(var, "").strip()
        if value.isdigit() and int(value) > 0:
            return int(value)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


# ----------------------------------------------------------------------------- processes
def refflow_root():
    """The directory holding the refflow this script resolves (put first on the children's
    ``PYTHONPATH``, so that every child times the same refflow)."""
    spec = importlib.util.find_spec("refflow")
    if spec is None or spec.origin is None:
        return ROOT
    return os.path.dirname(os.path.dirname(spec.origin))


def child_env(set_vars=None, drop=()):
    """The children's environment: this one, less ``drop``, plus ``set_vars``, with refflow's
    directory first on ``PYTHONPATH``."""
    env = {k: v for k, v in os.environ.items() if k not in drop}
    path = [refflow_root()] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    env["PYTHONPATH"] = os.pathsep.join(path)
    env.update(set_vars or {})
    return env


def child_code(spec, torch_threads):
    """The ``python -c`` program of one case.

    A peer's program starts with ``import torch`` and ``torch.set_num_threads(n)``: nothing
    runs before them but the interpreter's start-up (no NumPy use, no numba, no threadpoolctl,
    no refflow). It then records which modules were loaded at that point and imports the
    benchmark modules. refflow's program never imports torch.
    """
    lines = []
    if spec["impl"] in PEERS:
        lines += ["import torch",
                  f"torch.set_num_threads({int(torch_threads)})",
                  "import sys",
                  f"_at_threads = {{m: m in sys.modules for m in {child.WATCHED!r}}}"]
    else:
        lines += ["import sys", "_at_threads = None"]
    lines += [f"sys.path.insert(0, {HERE!r})",
              "import child",
              f"sys.exit(child.main({json.dumps(spec)!r}, _at_threads))"]
    return "\n".join(lines) + "\n"


def _tail(text, n=1500):
    text = (text or "").strip()
    return text[-n:]


def run_process(cmd, env, cwd, timeout=CHILD_TIMEOUT):
    """Runs ``cmd``; returns ``(CompletedProcess or None, wall seconds, CPU seconds, error)``.
    CPU = user + system time of the child (``RUSAGE_CHILDREN`` difference)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, time.perf_counter() - start, math.nan, f"timed out after {timeout} s"
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    error = None
    if proc.returncode != 0:
        error = f"exit status {proc.returncode}: {_tail(proc.stderr) or _tail(proc.stdout)}"
    return proc, wall, cpu, error


def plan_runs(workloads, dtypes, impls, rounds, check_peers=()):
    """The order of the processes: per (workload, dtype), ``rounds`` rounds, each of one process
    per implementation and, for the self-check, one standalone process per peer in
    ``check_peers``. Round ``r`` runs that list of ``n`` in the order ``(r + s k) mod n``,
    ``k = 0 .. n - 1``, with ``s`` the ``r``-th stride coprime to ``n`` (cycling): for five
    processes A B C a b, the rounds are A B C a b, B a A C b, C A a B b. A plain repetition (or
    rotation) would keep every process behind the same one in every round, and a process can
    find the machine changed by the one before it (memory being reclaimed, caches, clocks).

    ``workloads`` is a list of ``(name, refflow_only)``. Returns a list of dicts
    ``{kind: "case" | "alone", workload, impl, dtype, round}``.
    """
    plan = []
    for name, refflow_only in workloads:
        here = [i for i in impls if i == "refflow" or not refflow_only]
        for dtype in dtypes:
            steps = [("case", impl) for impl in here]
            if not refflow_only:
                steps += [("alone", peer) for peer in check_peers if peer in here]
            n = len(steps)
            strides = [s for s in range(1, n + 1) if math.gcd(s, n) == 1]
            for r in range(rounds):
                stride = strides[r % len(strides)]
                plan += [{"kind": kind, "workload": name, "impl": impl, "dtype": dtype,
                          "round": r}
                         for kind, impl in (steps[(r + stride * k) % n] for k in range(n))]
    return plan


class Runner:
    """Starts the processes and keeps every result, failure and log entry."""

    def __init__(self, sizes, torch_threads, tmpdir, verbose=True):
        self.sizes, self.torch_threads, self.tmpdir = sizes, torch_threads, tmpdir
        self.failures, self.log, self.verbose = [], [], verbose
        self._n = 0

    def say(self, text):
        if self.verbose:
            print(text, flush=True)

    def fail(self, text):
        self.say(text)
        self.failures.append(text)

    def case(self, workload, impl, dtype, rnd=0, set_vars=None, drop=(), repeats=None,
             threads_config=None):
        """One fresh process timing ``workload`` for ``impl`` in ``dtype``; returns the child's
        JSON (``results`` and ``process``, or ``skip``) or None on failure. ``set_vars`` and
        ``drop`` change its environment (:func:`child_env`); ``threads_config`` names the thread
        workload's configuration, for the log."""
        self._n += 1
        out = os.path.join(self.tmpdir, f"case{self._n}.json")
        spec = {"workload": workload, "impl": impl, "dtype": dtype, "mode": self.sizes.mode,
                "warmup": warmup_for(workload, self.sizes),
                "repeats": repeats_for(workload, self.sizes) if repeats is None else repeats,
                "out": out}
        code = child_code(spec, self.torch_threads)
        _, wall, _, error = run_process([sys.executable, "-c", code],
                                        child_env(set_vars, drop), self.tmpdir)
        entry = {"kind": "case", "workload": workload, "impl": impl, "dtype": dtype,
                 "round": rnd, "env": dict(set_vars or {}), "dropped": sorted(drop),
                 "threads_config": threads_config, "wall_s": wall}
        self.log.append(entry)
        if error is None and not os.path.exists(out):
            error = "no result written"
        if error:
            self.fail(f"{workload} {impl} {dtype}: failed ({error})")
            return None
        with open(out) as fh:
            result = json.load(fh)
        entry["process"] = result.get("process")
        return result

    def alone(self, workload, peer, dtype):
        """The standalone timing of a peer (``peer_alone.py``); its JSON or None."""
        reps = alone_repeats(workload, self.sizes)
        cmd = [sys.executable, PEER_ALONE, str(self.torch_threads), peer, workload, dtype,
               "--warmup", str(warmup_for(workload, self.sizes)), "--repeats", str(reps),
               "--rows", str(self.sizes.sample_rows)] + (["--smoke"] if self.sizes.mode ==
                                                         "smoke" else [])
        proc, wall, _, error = run_process(cmd, child_env(), self.tmpdir)
        self.log.append({"kind": "alone", "workload": workload, "impl": peer, "dtype": dtype,
                         "wall_s": wall})
        if error:
            self.fail(f"{workload} {peer} {dtype} (standalone): failed ({error})")
            return None
        try:
            return json.loads(proc.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            self.fail(f"{workload} {peer} {dtype} (standalone): no JSON in its output")
            return None


def probe_peers(runner):
    """The peers that import in a fresh process (threads set first), and a skip message for
    each that does not."""
    peers, messages = [], []
    code = ("import sys\ntry:\n    import torch\nexcept ImportError:\n    sys.exit(3)\n"
            "torch.set_num_threads({n})\ntry:\n    import {peer}\nexcept ImportError:\n"
            "    sys.exit(4)\n")
    for peer in PEERS:
        proc, _, _, _ = run_process([sys.executable, "-c", code.format(n=runner.torch_threads,
                                                                      peer=peer)],
                                    child_env(), runner.tmpdir)
        if proc is not None and proc.returncode == 0:
            peers.append(peer)
        elif proc is not None and proc.returncode == 3:
            messages.append(f"{peer}: skipped (torch not installed)")
        elif proc is not None and proc.returncode == 4:
            messages.append(f"{peer}: skipped (not installed)")
        else:
            messages.append(f"{peer}: skipped (import failed: "
                            f"{_tail(proc.stderr if proc else '', 300)})")
    return peers, messages


def record_environment(runner):
    """``common.environment()`` from a fresh refflow process."""
    code = (f"import json, sys\nsys.path.insert(0, {HERE!r})\nimport common\n"
            "print(json.dumps(common.environment()))\n")
    proc, _, _, error = run_process([sys.executable, "-c", code], child_env(), runner.tmpdir)
    if error:
        runner.fail(f"environment: failed ({error})")
        return {}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- timing
def _rate(rec):
    t = rec["throughput"]
    if rec["unit"] == "FLOP/s":
        return f"{t / 1e9:.1f} GFLOP/s"
    unit = rec["unit"].split("/")[0]
    return f"{t / 1e6:.2f} M {unit}/s" if t >= 1e6 else f"{t / 1e3:.1f} k {unit}/s"


def time_cases(args, sizes, impls, runner, check_peers):
    """Runs :func:`plan_runs`; returns ``(records, alone)``: one record per (workload, impl,
    dtype) over all its rounds, and the standalone peer results."""
    work = [(n, getattr(MODULE[n], "REFFLOW_ONLY", False)) for n in args.selected
            if n not in THREAD_WORKLOADS]
    plan = plan_runs(work, args.dtypes, impls, sizes.rounds, check_peers)
    collected, alone, skipped = {}, [], set()
    for step in plan:
        key = (step["workload"], step["impl"], step["dtype"])
        if key in skipped:
            continue
        if step["kind"] == "alone":
            result = runner.alone(*key)
            if result is not None:
                alone.append(result)
                runner.say(f"  {key[0]:20s} {key[1]:8s} {key[2]:8s} alone    median "
                           f"{result['median_s'] * 1e3:10.2f} ms ({len(result['times'])} calls)")
            continue
        result = runner.case(*key, rnd=step["round"])
        if result is None:
            skipped.add(key)
            continue
        if "skip" in result:
            runner.say(result["skip"])
            skipped.add(key)
            continue
        for name, res in result["results"].items():
            slot = collected.setdefault((name, key[1], key[2]),
                                        {"times": [], "items": res["items"], "unit": res["unit"],
                                         "info": res["info"], "processes": 0})
            slot["times"] += res["times"]
            slot.setdefault("process_medians", []).append(statistics.median(res["times"]))
            slot["processes"] += 1
            runner.say(f"  {name:20s} {key[1]:8s} {key[2]:8s} round {step['round'] + 1}/"
                       f"{sizes.rounds} median {statistics.median(res['times']) * 1e3:10.2f} ms "
                       f"({len(res['times'])} calls)")
    records = []
    for (name, impl, dtype), slot in collected.items():
        rec = record(name, impl, dtype, slot["unit"], slot["items"], slot["times"], slot["info"])
        rec["processes"] = slot["processes"]
        rec["process_medians"] = slot["process_medians"]
        records.append(rec)
    return records, alone


# ----------------------------------------------------------------------------- self-check
def self_check(records, alone, tolerance=CHECK_TOLERANCE):
    """Compares each peer's harness timing with its standalone timing, process for process.

    ``alone``: the JSON objects of ``peer_alone.py`` (``peer``, ``workload``, ``dtype``,
    ``times``, optional ``params`` and ``log_prob_times``), one per standalone process, several
    per case (one per round). Each side is summarised by the median over its processes of the
    per-process medians: ``alone_s`` over the standalone processes of the case, ``harness_s``
    over the harness processes (``process_medians`` of the record; ``median_s`` when a record
    has none). Returns one row per case: ``{workload, impl, dtype, harness_s, alone_s, ratio,
    harness_process_s, alone_process_s, params_harness, params_alone, ok}`` with ``ratio =
    harness / alone`` and ``ok`` when ``1 / (1 + tolerance) <= ratio <= 1 + tolerance`` and the
    parameter counts (when both are known) agree. A case timed alone but missing from the
    harness records is a row with ``ok`` False.
    """
    by = {(r["workload"], r["impl"], r["dtype"]): r for r in records}
    grouped, order = {}, []
    for a in alone:
        pairs = [(a["workload"], a["times"])]
        if a.get("log_prob_times"):
            pairs.append(("maf_sample_log_prob", a["log_prob_times"]))
        for workload, times in pairs:
            key = (workload, a["peer"], a["dtype"])
            if key not in grouped:
                grouped[key] = {"medians": [], "params": set()}
                order.append(key)
            grouped[key]["medians"].append(statistics.median(times))
            if a.get("params") is not None:
                grouped[key]["params"].add(a["params"])
    rows = []
    for key in order:
        workload, peer, dtype = key
        medians, params = grouped[key]["medians"], grouped[key]["params"]
        alone_s = statistics.median(medians)
        row = {"workload": workload, "impl": peer, "dtype": dtype, "alone_s": alone_s,
               "alone_process_s": medians, "harness_s": None, "harness_process_s": None,
               "ratio": None, "params_harness": None,
               "params_alone": params.pop() if len(params) == 1 else
               (sorted(params) if params else None), "ok": False}
        rec = by.get(key)
        if rec is not None:
            harness = rec.get("process_medians") or [rec["median_s"]]
            harness_s = statistics.median(harness)
            ratio = harness_s / alone_s if alone_s > 0 else math.inf
            row.update(harness_s=harness_s, harness_process_s=list(harness), ratio=ratio,
                       params_harness=rec.get("params"))
            params_ok = (row["params_alone"] is None or row["params_harness"] is None
                         or row["params_alone"] == row["params_harness"])
            row["ok"] = bool(1 / (1 + tolerance) <= ratio <= 1 + tolerance and params_ok)
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------- thread control
DEMO_CODE = """\
import json, time
import numpy as np
from refflow import FlowDensity
from refflow.datasets import two_moons
train = two_moons({rows}, noise=0.1, rng=np.random.default_rng(0))
model = FlowDensity(flow="nsf", n_layers=4, hidden={hidden!r}, epochs={epochs}, batch_size=256,
                    lr=3e-3, validation_fraction=0.1, patience=15, random_state=0,
                    progress=False)
start = time.perf_counter()
model.fit(train)
print(json.dumps({{"fit_s": time.perf_counter() - start,
                  "epochs": len(model.history_.train_nll)}}))
"""
# The summary line of `refflow fit`: "  5 epochs (90 steps) in 3.7 s" (the step count optional,
# for older versions that printed "5 epochs in 3.7 s"); after a choice between candidates,
# "  4 candidates fitted in 3.7 s; ..." and "  kept nsf: 5 epochs (90 steps)".
FIT_SECONDS = re.compile(r"(\d+) epochs (?:\(\d+ steps\) )?in ([0-9.]+) s")
FIT_CANDIDATES = re.compile(r"\d+ candidates fitted in ([0-9.]+) s")
FIT_KEPT = re.compile(r"kept [^:]+: (\d+) epochs")


def fit_summary(stdout):
    """``(epochs of the kept fit, fit seconds)`` from ``refflow fit``'s output, or None."""
    match = FIT_SECONDS.search(stdout)
    if match is not None:
        return int(match.group(1)), float(match.group(2))
    seconds, kept = FIT_CANDIDATES.search(stdout), FIT_KEPT.search(stdout)
    if seconds is not None and kept is not None:
        return int(kept.group(1)), float(seconds.group(1))
    return None


def thread_workload(name, sizes, runner, config):
    """One process of thread workload ``name`` under ``config`` ("default" or "one"): returns
    ``{"times": [...], ...}`` (seconds; the whole command for the fits) or None."""
    set_vars, drop = THREAD_CONFIGS[config], THREAD_VARS
    if name == "threads_maf_train":
        result = runner.case("maf_train", "refflow", "float64", set_vars=set_vars, drop=drop,
                             threads_config=config)
        if result is None or "skip" in result:
            return None
        return {"times": result["results"]["maf_train"]["times"]}
    env = child_env(set_vars, drop)
    if name == "threads_demo":
        code = DEMO_CODE.format(rows=sizes.demo_rows, hidden=tuple(sizes.demo_hidden),
                                epochs=sizes.demo_epochs)
        proc, wall, cpu, error = run_process([sys.executable, "-c", code], env, runner.tmpdir)
        if error is None:
            out = json.loads(proc.stdout.strip().splitlines()[-1])
            runner.log.append({"kind": "threads", "workload": name, "config": config,
                               "wall_s": wall})
            return {"times": [out["fit_s"]], "epochs": out["epochs"], "process_s": wall,
                    "cpu_s": cpu}
    else:
        epochs = sizes.fit_epochs if name == "threads_fit" else sizes.fit_long_epochs
        model = os.path.join(runner.tmpdir, f"fit_{config}.npz")
        cmd = [sys.executable, "-m", "refflow", "fit", "two_moons", "-o", model,
               "--epochs", str(epochs), *sizes.fit_extra]
        proc, wall, cpu, error = run_process(cmd, env, runner.tmpdir)
        if error is None:
            runner.log.append({"kind": "threads", "workload": name, "config": config,
                               "wall_s": wall})
            summary = fit_summary(proc.stdout)
            if summary is not None:
                return {"times": [wall], "cpu_s": cpu, "fit_s": summary[1],
                        "epochs": summary[0]}
            error = "no 'N epochs (M steps) in S s' line in its output"
    runner.fail(f"{name} ({config} threads): failed ({error})")
    return None


def time_threads(args, sizes, runner):
    """Each selected thread workload, default threads and one OpenBLAS thread alternating
    over ``sizes.thread_rounds`` rounds; one row per workload."""
    rows = []
    for name in args.selected:
        if name not in THREAD_WORKLOADS:
            continue
        if name == "threads_fit_long" and not sizes.fit_long_epochs:
            continue
        got = {c: [] for c in THREAD_CONFIGS}
        for r in range(sizes.thread_rounds):
            for config in THREAD_CONFIGS:
                res = thread_workload(name, sizes, runner, config)
                if res is not None:
                    got[config].append(res)
                    runner.say(f"  {name:20s} {config:8s} round {r + 1}/{sizes.thread_rounds} "
                               f"median {statistics.median(res['times']) * 1e3:10.1f} ms")
        if not all(got.values()):
            continue
        label = THREAD_WORKLOADS[name].format(**dataclasses.asdict(sizes))
        if sizes.mode == "smoke":
            label += " [smoke: tiny sizes]"
        row = {"workload": name, "label": label, "rounds": sizes.thread_rounds}
        for config, results in got.items():
            times = [t for res in results for t in res["times"]]
            row[f"{config}_s"] = statistics.median(times)
            row[f"{config}_times"] = times
            for extra in ("cpu_s", "fit_s", "epochs", "process_s"):
                values = [res[extra] for res in results if res.get(extra) is not None]
                if values:
                    row[f"{config}_{extra}"] = statistics.median(values)
        row["ratio"] = row["default_s"] / row["one_s"]
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------- the limit
TRAIN_PLAN = {"maf_train": "gemm_plan_maf", "nsf_train": "gemm_plan_nsf",
              "realnvp_train": "gemm_plan_realnvp"}


def limit_rows(records):
    """One row per (training workload, dtype) with refflow's time, the multiply-adds (counted
    in refflow's process, ``info["macs"]``) and the fractions of the GEMM rates measured in the
    same run."""
    by = {(r["workload"], r["impl"], r["dtype"]): r for r in records}
    rows = []
    for train, plan in TRAIN_PLAN.items():
        for dtype in DTYPES:
            rec = by.get((train, "refflow", dtype))
            if rec is None or "macs" not in rec:
                continue
            macs, t = rec["macs"], rec["median_s"]
            row = {"workload": train, "dtype": dtype, "macs_dense": macs["dense"],
                   "macs_masked": macs["masked"], "data_side_macs_dense": macs["data_side_dense"],
                   "median_s": t, "gflops_dense": 2 * macs["dense"] / t / 1e9,
                   "gflops_masked": 2 * macs["masked"] / t / 1e9}
            for key, gemm in (("plan", plan), ("square", "gemm_square")):
                g = by.get((gemm, "refflow", dtype))
                rate = g["throughput"] / 1e9 if g else None
                row[f"gemm_{key}_gflops"] = rate
                row[f"frac_{key}_dense"] = row["gflops_dense"] / rate if rate else None
                row[f"frac_{key}_masked"] = row["gflops_masked"] / rate if rate else None
            rows.append(row)
    return rows


# ----------------------------------------------------------------------------- tables
TABLE_ROWS = ["maf_train", "nsf_train", "realnvp_train", "maf_log_prob", "maf_sample",
              "sample/log_prob", "spline_fwd", "spline_inv", "spline_grad"]


def _label(name, sizes):
    if name == "sample/log_prob":
        text = f"MAF sampling time ÷ log_prob time, same {sizes.sample_rows:,} rows"
    elif name == "maf_sample":
        text = f"MAF sampling ({sizes.sample_rows:,} samples)"
    elif name == "maf_sample_log_prob":
        text = f"MAF log_prob of the {sizes.sample_rows:,} sampled rows"
    else:
        text = LABELS[name]
    return text + (" [smoke: tiny sizes]" if sizes.mode == "smoke" else "")


def _cell(rec):
    t = rec["median_s"]
    time_text = f"{t * 1e3:.1f} ms" if t < 10 else f"{t:.1f} s"
    return f"{time_text} ({_rate(rec)})"


def _fmt_ratio(x):
    return "-" if x is None or not math.isfinite(x) else f"{x:.2f}x"


def comparison_table(records, dtype, sizes):
    by = {(r["workload"], r["impl"]): r for r in records if r["dtype"] == dtype}
    lines = [f"| workload ({dtype}) | refflow | zuko | nflows | zuko ÷ refflow "
             "| nflows ÷ refflow |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for name in TABLE_ROWS:
        if name == "sample/log_prob":
            cells = []
            for impl in IMPLS:
                s, lp = by.get(("maf_sample", impl)), by.get(("maf_sample_log_prob", impl))
                cells.append(_fmt_ratio(s["median_s"] / lp["median_s"]) if s and lp else "-")
            if all(c == "-" for c in cells):
                continue
            lines.append(f"| {_label(name, sizes)} | " + " | ".join(cells) + " | - | - |")
            continue
        ours = by.get((name, "refflow"))
        peers = [by.get((name, p)) for p in PEERS]
        if ours is None and not any(peers):
            continue
        cells = [_cell(r) if r else "-" for r in [ours] + peers]
        ratios = [_fmt_ratio(p["median_s"] / ours["median_s"]) if p and ours else "-"
                  for p in peers]
        lines.append(f"| {_label(name, sizes)} | " + " | ".join(cells + ratios) + " |")
    return lines if len(lines) > 2 else []


def limit_table(rows):
    if not rows:
        return []
    pct = lambda f: "-" if f is None else f"{100 * f:.0f}%"  # noqa: E731
    gf = lambda g: "-" if g is None else f"{g:.1f}"  # noqa: E731
    lines = ["| training step (refflow) | dtype | MACs dense | MACs masked | time | GFLOP/s dense "
             "| GFLOP/s masked | GEMM GFLOP/s, step shapes | % dense | % masked "
             "| GEMM GFLOP/s, 1024² | % dense of 1024² |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(
            f"| {r['workload']} | {r['dtype']} | {r['macs_dense'] / 1e6:.1f} M "
            f"| {r['macs_masked'] / 1e6:.1f} M | {r['median_s'] * 1e3:.1f} ms "
            f"| {r['gflops_dense']:.1f} | {r['gflops_masked']:.1f} | {gf(r['gemm_plan_gflops'])} "
            f"| {pct(r['frac_plan_dense'])} | {pct(r['frac_plan_masked'])} "
            f"| {gf(r['gemm_square_gflops'])} | {pct(r['frac_square_dense'])} |")
    return lines


def params_line(records):
    seen = {}
    for r in records:
        if r["workload"].endswith("_train") and "params" in r:
            seen.setdefault(r["workload"], {})[r["impl"]] = r["params"]
    parts = [f"{w.split('_')[0].upper()} " + " / ".join(f"{i} {n:,}" for i, n in d.items())
             for w, d in seen.items()]
    return "Parameters (masked entries counted): " + "; ".join(parts) + "." if parts else ""




def _span(median, processes):
    """``"37.2 ms (36.1-38.9, 3 processes)"``: a median and the range of the per-process
    medians it summarises."""
    text = f"{median * 1e3:.1f} ms"
    if processes and len(processes) > 1:
        text += (f" ({min(processes) * 1e3:.1f}-{max(processes) * 1e3:.1f}, "
                 f"{len(processes)} processes)")
    return text


def _params(p):
    return ", ".join(f"{q:,}" for q in p) if isinstance(p, list) else f"{p:,}"


def check_table(rows, tolerance=CHECK_TOLERANCE):
    if not rows:
        return []
    lines = ["| self-check: peer case | dtype | harness median | alone median "
             "| harness ÷ alone | agrees within " f"{100 * tolerance:.0f}% |",
             "| --- | --- | ---: | ---: | ---: | --- |"]
    for r in rows:
        harness = ("-" if r["harness_s"] is None else
                   _span(r["harness_s"], r.get("harness_process_s")))
        note = "yes" if r["ok"] else "**NO**"
        if (r["params_alone"] is not None and r["params_harness"] is not None
                and r["params_alone"] != r["params_harness"]):
            note += (f" (parameters {_params(r['params_harness'])} vs "
                     f"{_params(r['params_alone'])})")
        lines.append(f"| {r['workload']} {r['impl']} | {r['dtype']} | {harness} "
                     f"| {_span(r['alone_s'], r.get('alone_process_s'))} "
                     f"| {_fmt_ratio(r['ratio'])} | {note} |")
    return lines


def _secs(t):
    return f"{t * 1e3:.1f} ms" if t < 1 else f"{t:.2f} s"


def threads_table(rows):
    if not rows:
        return []
    lines = ["| thread control (refflow, float64) | default threads | OPENBLAS_NUM_THREADS=1 "
             "| default ÷ one thread |",
             "| --- | ---: | ---: | ---: |"]
    for r in rows:
        cells = []
        for config in THREAD_CONFIGS:
            text = _secs(r[f"{config}_s"])
            extra = []
            if r.get(f"{config}_cpu_s") is not None:
                extra.append(f"CPU {r[f'{config}_cpu_s']:.1f} s")
            if r.get(f"{config}_fit_s") is not None:
                extra.append(f"fit {r[f'{config}_fit_s']:.2f} s")
            if r.get(f"{config}_epochs") is not None:
                extra.append(f"{r[f'{config}_epochs']:g} epochs")
            cells.append(text + (f" ({', '.join(extra)})" if extra else ""))
        lines.append(f"| {r['label']} | {cells[0]} | {cells[1]} | {_fmt_ratio(r['ratio'])} |")
    return lines


def markdown(records, limit, checks, threads, env, sizes, command, dtypes, skipped, check):
    out = ["### Performance", ""]
    mode = {"full": "", "quick": f" `--quick` changed: {quick_changes()}.",
            "smoke": " `--smoke`: tiny models, one repeat; not a measurement."}[sizes.mode]
    calls = (f"{sizes.rounds} fresh process{'es' if sizes.rounds > 1 else ''} per case, "
             "implementations interleaved, "
             f"{sizes.warmup} warm-up and {sizes.repeats} timed calls in each "
             f"(sampling: {sizes.sample_warmup} full-size warm-up and {sizes.sample_repeats} "
             "timed; splines: "
             f"{sizes.spline_warmup} and {sizes.spline_repeats}); medians over all timed calls")
    out.append(f"Medians (with the rate) of one run: {calls}. Peers on torch CPU, "
               f"`torch.set_num_threads({env.get('torch_threads', '?')})` first thing in their "
               "process. Ratio columns: peer time ÷ refflow time (above 1: refflow is faster)."
               f"{mode} NSF: refflow and nflows B = 3, zuko's bound is fixed at 5. refflow's "
               "float32 sampling is the bijector's forward pass of float32 noise "
               "(`Flow.sample` draws float64).")
    if skipped:
        out.append("Skipped: " + "; ".join(skipped) + ".")
    line = params_line(records)
    if line:
        out += ["", line]
    for dtype in dtypes:
        table = comparison_table(records, dtype, sizes)
        if table:
            out += [""] + table
    if checks:
        failed = [r for r in checks if not r["ok"]]
        verdict = ("passed" if not failed else
                   f"FAILED for {len(failed)} of {len(checks)} cases"
                   + (" (not enforced in --smoke)" if sizes.mode == "smoke" else ""))
        out += ["", f"Self-check {verdict}: each peer also timed alone in a fresh process "
                "per round (`benchmarks/peer_alone.py`: torch and the peer only, threads set "
                "first); the median over processes of the per-process medians, harness ÷ alone, "
                f"within 1 ± {100 * CHECK_TOLERANCE:.0f}%.", ""]
        out += check_table(checks)
    elif check and any(r["impl"] in PEERS for r in records):
        out += ["", "Self-check: no standalone timing ran."]
    table = limit_table(limit)
    if table:
        out += ["", "The limit: multiply-adds per training step (forward n·out·in, backward "
                "2·n·out·in per weight matrix; the data's own cotangent not counted; dense = "
                "every entry, masked = MADE's nonzero mask entries; elementwise work ignored), "
                "achieved GFLOP/s = 2·MACs/time, and its fraction of NumPy's GEMM rate measured "
                "in the same run, at the step's own shapes and at 1024².", ""] + table
    table = threads_table(threads)
    if table:
        out += ["", "Thread control: each workload in fresh processes with every thread "
                "variable removed (default threads) or with only `OPENBLAS_NUM_THREADS=1`, "
                f"alternating, {sizes.thread_rounds} round(s); medians. The fits are timed as "
                "whole commands (with their CPU time and the fit time they print).", ""] + table
    out += ["", f"Environment: {environment_line(env)}." if env else "Environment: unknown.",
            "", f"Command: `{command}`"]
    return "\n".join(out) + "\n"


def command_line(argv):
    env = [f"{v}={os.environ[v]}" for v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS",
                                             "OPENBLAS_CORETYPE", "REFFLOW_NUM_THREADS")
           if v in os.environ]
    return " ".join(env + ["python", "benchmarks/run.py"] + list(argv))


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse(argv)
    sizes = SIZES["smoke" if args.smoke else "quick" if args.quick else "full"]
    if args.rounds is not None:
        sizes = dataclasses.replace(sizes, rounds=args.rounds)
    threads = args.threads or default_torch_threads()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="refflow-bench-") as tmpdir:
        runner = Runner(sizes, threads, tmpdir)
        env = record_environment(runner)
        if env:
            env["torch_threads"] = threads
            print("Environment: " + environment_line(env), flush=True)
        impls, skipped = ["refflow"], []
        if args.peers:
            peers, skipped = probe_peers(runner)
            for msg in skipped:
                print(msg, flush=True)
            impls += peers
        check_peers = [p for p in impls if p in PEERS] if args.check else []
        print(f"Mode {sizes.mode}; workloads {', '.join(args.selected)}; dtypes "
              f"{', '.join(args.dtypes)}; implementations {', '.join(impls)}; {sizes.rounds} "
              f"round(s); peers' torch threads {threads}; self-check "
              f"{'on' if check_peers else 'off'}", flush=True)
        records, alone = time_cases(args, sizes, impls, runner, check_peers)
        thread_rows = time_threads(args, sizes, runner)
    checks = self_check(records, alone)
    limit = limit_rows(records)
    command = command_line(argv)
    md = markdown(records, limit, checks, thread_rows, env, sizes, command, args.dtypes,
                  skipped, args.check)
    wall = time.perf_counter() - start
    print("\n" + md, flush=True)
    print(f"Wall time {wall:.0f} s", flush=True)
    failed_checks = [r for r in checks if not r["ok"]]
    enforced = sizes.mode != "smoke"
    if failed_checks:
        cases = ", ".join(f"{r['workload']} {r['impl']} {r['dtype']} "
                          f"({_fmt_ratio(r['ratio'])})" for r in failed_checks)
        print(f"SELF-CHECK FAILED{'' if enforced else ' (not enforced in --smoke)'}: harness "
              f"and standalone peer medians differ by more than {100 * CHECK_TOLERANCE:.0f}% "
              f"for {cases}", flush=True)
    if runner.failures:
        print(f"{len(runner.failures)} process(es) failed: " + "; ".join(runner.failures),
              flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"environment": env, "command": command, "mode": sizes.mode,
                       "sizes": dataclasses.asdict(sizes), "implementations": impls,
                       "skipped": skipped, "failures": runner.failures, "wall_s": wall,
                       "records": records, "limit": limit, "alone": alone,
                       "self_check": {"rows": checks, "tolerance": CHECK_TOLERANCE,
                                      "enforced": enforced,
                                      "ok": not failed_checks},
                       "threads": thread_rows, "runs": runner.log}, fh, indent=2)
    if args.markdown:
        with open(args.markdown, "w") as fh:
            fh.write(md)
    return exit_status(runner.failures, checks, enforced)


def exit_status(failures, checks, enforced=True):
    """1 if a process failed or (when ``enforced``) a self-check row disagrees, else 0."""
    return 1 if failures or (enforced and any(not r["ok"] for r in checks)) else 0


if __name__ == "__main__":
    sys.exit(main())
