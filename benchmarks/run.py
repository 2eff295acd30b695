"""One command for every benchmark workload, refflow beside zuko and nflows, in one run.

Run (from the repository root)::

    python benchmarks/run.py [--quick] [--peers] [--dtype float64|float32|both]
                             [--only NAME,...] [--json PATH] [--markdown PATH] [--smoke]

Workloads (fixed configurations, so later runs compare; seeds fixed), one module per topic:

- ``bench_train``: training steps (``nll_and_grad`` + Adam vs torch's ``-log_prob(x).mean()``,
  ``zero_grad``, ``backward``, ``step``): ``maf_train``, ``nsf_train``, ``realnvp_train``.
- ``bench_density``: the MAF's ``maf_log_prob`` (batch 4096), ``maf_sample`` (10,000 samples)
  and ``maf_sample_log_prob`` (one ``log_prob`` of the rows just sampled, for the ratio
  sampling time / log_prob time of the same rows).
- ``bench_splines``: rational-quadratic spline kernels on 2^20 elements, K = 8:
  ``spline_fwd`` (forward + log-det), ``spline_inv`` (inverse + log-det), ``spline_grad``
  (forward + gradient).
- ``bench_gemm``: the machine's GEMM rate (``gemm_square``, ``gemm_maf_hidden``, and
  ``gemm_plan_*``: every product of one training step), for "the limit" table: multiply-adds
  per training step (dense and masked) and the achieved fraction of the GEMM rate.

Each (workload, implementation, dtype) is timed after warm-up calls: medians with min and max of
several repeats (``timeit`` in ``common``). Implementations run interleaved, workload by
workload, in one process. Peers (``--peers``) run on torch CPU with ``torch.set_num_threads``
equal to NumPy's BLAS threads and float64/float32 set per model (``.to(dtype)``, explicit
dtypes; torch's default dtype is never changed); when torch, zuko or nflows is not importable
the run prints ``zuko: skipped (not installed)`` (or the like) and goes on.

Reading the results: every ratio column is ``peer time / refflow time`` for the same workload
and dtype in this run: above 1, refflow is faster. Compare ratios, not absolute times across
runs or machines: the times move with the load of the machine, the BLAS and its
``OPENBLAS_CORETYPE`` (this machine's environment may set ``OPENBLAS_CORETYPE=Haswell``, which
runs OpenBLAS's GEMM at about 0.65x of its AVX-512 speed; recorded, never set here).

``--quick`` keeps every configuration but draws 1,000 instead of 10,000 samples and repeats
less (the table says what it changed); ``--smoke`` runs tiny models once, to test this script.
"""

import argparse
import dataclasses
import gc
import importlib.util
import json
import math
import os
import sys
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
from common import (DTYPES, IMPLS, PEERS, SIZES, Skip, blas_threads, environment,  # noqa: E402
                    environment_line, quick_changes, record, timeit, torch_or_skip)

TOPICS = {"train": bench_train, "density": bench_density, "splines": bench_splines,
          "gemm": bench_gemm}
ORDER = [(name, module) for module in TOPICS.values() for name in module.WORKLOADS]
MODULE = dict(ORDER)


def parse(argv):
    names = ", ".join(list(TOPICS) + [n for n, _ in ORDER])
    parser = argparse.ArgumentParser(
        prog="python benchmarks/run.py",
        description="Every refflow benchmark workload (training steps, log_prob, sampling, "
                    "spline kernels, GEMM rate), optionally beside zuko and nflows; medians "
                    "after warm-up, JSON and Markdown results. Ratios are peer time / refflow "
                    "time (above 1: refflow is faster).")
    parser.add_argument("--quick", action="store_true",
                        help="same configurations, 1,000 instead of 10,000 samples and fewer "
                             "repeats (under 5 minutes on 2 cores with --peers)")
    parser.add_argument("--peers", action="store_true",
                        help="also time zuko and nflows (torch CPU); skipped with a message "
                             "when not installed")
    parser.add_argument("--dtype", choices=("float64", "float32", "both"), default="both")
    parser.add_argument("--only", metavar="NAME,...",
                        help=f"comma-separated workloads or topics: {names}")
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON")
    parser.add_argument("--markdown", metavar="PATH", help="write the Markdown tables")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny sizes, one repeat (tests the script, not the speed)")
    args = parser.parse_args(argv)
    selected = [n for n, _ in ORDER]
    if args.only:
        wanted = [w.strip() for w in args.only.split(",") if w.strip()]
        unknown = [w for w in wanted if w not in TOPICS and w not in MODULE]
        if unknown or not wanted:
            parser.error(f"--only: unknown workload(s) {', '.join(unknown) or '(none given)'}; "
                         f"choose from {names}")
        selected = [n for n, m in ORDER
                    if n in wanted or any(TOPICS.get(w) is m for w in wanted)]
    args.selected = selected
    args.dtypes = DTYPES if args.dtype == "both" else (args.dtype,)
    return args


# ----------------------------------------------------------------------------- running
def available_peers():
    """The peers that import, and a skip message for each that does not."""
    peers, messages = [], []
    for peer in PEERS:
        try:
            torch, _ = torch_or_skip(peer)
        except Skip as exc:
            messages.append(str(exc))
            continue
        peers.append(peer)
    if peers:
        import torch
        torch.set_num_threads(blas_threads())
    return peers, messages


def repeats_for(name, sizes):
    if name == "maf_sample":
        return sizes.sample_repeats
    if name.startswith("spline"):
        return sizes.spline_repeats
    return sizes.repeats


def time_all(args, sizes, impls):
    records, failures = [], []
    for name in args.selected:
        module = MODULE[name]
        if sizes.mode != "smoke":
            gc.collect()  # once per workload: with torch loaded a collection takes ~0.5 s
        for dtype in args.dtypes:
            for impl in impls:
                try:
                    case = module.build(name, impl, sizes, dtype)
                    reps = repeats_for(name, sizes)
                    times = timeit(case.fn, reps, warmup=sizes.warmup, warmup_fn=case.warmup_fn)
                except Skip:
                    continue
                except Exception as exc:  # a failing implementation must not stop the others
                    msg = f"{name} {impl} {dtype}: failed ({type(exc).__name__}: {exc})"
                    print(msg, flush=True)
                    failures.append(msg)
                    continue
                rec = record(name, impl, dtype, module.UNIT, case, times, reps)
                records.append(rec)
                print(f"  {name:20s} {impl:8s} {dtype:8s} median {times[0] * 1e3:10.2f} ms "
                      f"(min {times[1] * 1e3:.2f}, max {times[2] * 1e3:.2f}, {reps} repeats), "
                      f"{_rate(rec)}", flush=True)
        if module is bench_splines and not any(n.startswith("spline") for n in
                                               args.selected[args.selected.index(name) + 1:]):
            bench_splines.clear()
    return records, failures


def _rate(rec):
    t = rec["throughput"]
    if rec["unit"] == "FLOP/s":
        return f"{t / 1e9:.1f} GFLOP/s"
    unit = rec["unit"].split("/")[0]
    return f"{t / 1e6:.2f} M {unit}/s" if t >= 1e6 else f"{t / 1e3:.1f} k {unit}/s"


# ----------------------------------------------------------------------------- the limit
TRAIN_PLAN = {"maf_train": "gemm_plan_maf", "nsf_train": "gemm_plan_nsf",
              "realnvp_train": "gemm_plan_realnvp"}


def limit_rows(records, sizes):
    """One row per (training workload, dtype) with refflow's time, the multiply-adds and the
    fractions of the GEMM rates measured in the same run."""
    by = {(r["workload"], r["impl"], r["dtype"]): r for r in records}
    rows = []
    for train, plan in TRAIN_PLAN.items():
        which = train.split("_")[0]
        flow = bench_train.refflow_model(which, sizes)
        batch = sizes.rnvp_batch if which == "realnvp" else sizes.batch
        macs = bench_gemm.count_macs(flow, batch)
        for dtype in DTYPES:
            rec = by.get((train, "refflow", dtype))
            if rec is None:
                continue
            t = rec["median_s"]
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
        return f"MAF sampling time ÷ log_prob time, same {sizes.sample_rows:,} rows"
    if name == "maf_sample":
        return f"MAF sampling ({sizes.sample_rows:,} samples)"
    if name == "maf_sample_log_prob":
        return f"MAF log_prob of the {sizes.sample_rows:,} sampled rows"
    return MODULE[name].WORKLOADS[name]


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


def markdown(records, limit, env, sizes, command, dtypes, skipped):
    out = ["### Performance", ""]
    mode = {"full": "", "quick": f" `--quick` changed: {quick_changes()}.",
            "smoke": " `--smoke`: tiny models, one repeat; not a measurement."}[sizes.mode]
    out.append("Medians (with the rate) of one run, peers on torch CPU with the same thread "
               "count as NumPy's BLAS. Ratio columns: peer time ÷ refflow time (above 1: refflow "
               f"is faster).{mode} NSF: refflow and nflows B = 3, zuko's bound is fixed at 5. "
               "refflow's float32 sampling is the bijector's forward pass of float32 noise "
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
    table = limit_table(limit)
    if table:
        out += ["", "The limit: multiply-adds per training step (forward n·out·in, backward "
                "2·n·out·in per weight matrix; the data's own cotangent not counted; dense = "
                "every entry, masked = MADE's nonzero mask entries; elementwise work ignored), "
                "achieved GFLOP/s = 2·MACs/time, and its fraction of NumPy's GEMM rate measured "
                "in the same run, at the step's own shapes and at 1024².", ""] + table
    out += ["", f"Environment: {environment_line(env)}.", "", f"Command: `{command}`"]
    return "\n".join(out) + "\n"


def command_line(argv):
    env = [f"{v}={os.environ[v]}" for v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS",
                                             "OPENBLAS_CORETYPE") if v in os.environ]
    return " ".join(env + ["python", "benchmarks/run.py"] + list(argv))


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse(argv)
    sizes = SIZES["smoke" if args.smoke else "quick" if args.quick else "full"]
    start = time.perf_counter()
    env = environment()
    print("Environment: " + environment_line(env), flush=True)
    impls, skipped = ["refflow"], []
    if args.peers:
        peers, skipped = available_peers()
        for msg in skipped:
            print(msg, flush=True)
        impls += peers
    print(f"Mode {sizes.mode}; workloads {', '.join(args.selected)}; dtypes "
          f"{', '.join(args.dtypes)}; implementations {', '.join(impls)}", flush=True)
    records, failures = time_all(args, sizes, impls)
    limit = limit_rows(records, sizes)
    command = command_line(argv)
    md = markdown(records, limit, env, sizes, command, args.dtypes, skipped)
    wall = time.perf_counter() - start
    print("\n" + md, flush=True)
    print(f"Wall time {wall:.0f} s", flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"environment": env, "command": command, "mode": sizes.mode,
                       "sizes": dataclasses.asdict(sizes), "implementations": impls,
                       "skipped": skipped, "failures": failures, "wall_s": wall,
                       "records": records, "limit": limit}, fh, indent=2)
    if args.markdown:
        with open(args.markdown, "w") as fh:
            fh.write(md)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
