"""Accuracy and speed of BlockNeuralAutoregressive and Gaussianization.

Run: ``python benchmarks/bench_bnaf_gf.py [--quick] [--seeds S] [--rows N] [--no-speed]``

Accuracy, per registry case (``refflow._cases``) of the two classes, worst over ``S`` seeds of
4-row batches (the property suite's draws):

* float64: the oracle's errors (``refflow.testing``): round trips both ways, log-dets against
  ``slogdet`` of central-difference Jacobians both ways, pullbacks against finite differences
  for the input, the context and every parameter element, both directions. Tolerances:
  round trip 1e-10, FD checks 1e-6.
* float32: the same layer run on float32 inputs against float64 on the same (float32-valued)
  inputs: round trip ``|v' - v| / max(1, |v|)``, log-det ``|ld32 - ld64| / max(1, |ld64|)``,
  pullback ``max |g32 - g64| / max |g64|`` over the input and every parameter (one random
  cotangent per output), both directions.

Speed: ``inverse`` (closed form), ``forward`` (numerical) and each with its pullback on
``N x 8`` rows (default 1e5) for the default layers ``BlockNeuralAutoregressive(8)`` (hidden
factors (8,), FlowJAX's) and ``Gaussianization(8)`` (8 components, zuko's), median of 3 after a
warm-up. Timings depend on the machine's load (printed); they are never asserted.
"""

import argparse
import os
import statistics
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from refflow import BlockNeuralAutoregressive, Gaussianization  # noqa: E402
from refflow._cases import CASES, oracle_reports  # noqa: E402

CLASSES = (BlockNeuralAutoregressive, Gaussianization)


def _inner(bijector):
    return getattr(bijector, "bijector", bijector)


def cases():
    return [cid for cid in sorted(CASES) if isinstance(_inner(CASES[cid](0)[0]), CLASSES)]


def float64_errors(case_id, seeds):
    worst = {"round trip": 0.0, "log-det vs FD": 0.0, "pullback vs FD": 0.0}
    for seed in range(seeds):
        bijector, sample_z, sample_x, sample_context = CASES[case_id](seed)
        z, x = sample_z(seed + 1, 4), sample_x(seed + 2, 4)
        context = None if sample_context is None else sample_context(seed + 3, 4)
        reports = oracle_reports(bijector, z, x, rng=seed, context=context)
        e = reports["bijector"].errors
        worst["round trip"] = max(worst["round trip"], e["round trip z -> x -> z"],
                                  e["round trip x -> z -> x"])
        worst["log-det vs FD"] = max(worst["log-det vs FD"], e["log_det forward vs FD"],
                                     e["log_det inverse vs FD"])
        for name in ("forward_vjp", "inverse_vjp"):
            worst["pullback vs FD"] = max(worst["pullback vs FD"],
                                          max(reports[name].errors.values()))
    return worst


def _rel(a, b):
    return float(np.max(np.abs(a - b) / np.maximum(1.0, np.abs(b)))) if a.size else 0.0


def _normwise(a, b):
    scale = np.max(np.abs(b)) if b.size else 0.0
    if scale > 0:
        return float(np.max(np.abs(a - b)) / scale)
    return float(np.max(np.abs(a), initial=0))


def float32_errors(case_id, seeds):
    worst = {"round trip": 0.0, "log-det": 0.0, "pullback": 0.0}
    for seed in range(seeds):
        bijector, sample_z, sample_x, sample_context = CASES[case_id](seed)
        rng = np.random.default_rng(seed)
        kw32, kw64 = {}, {}
        if sample_context is not None:
            c = sample_context(seed + 3, 4).astype(np.float32)
            kw32, kw64 = {"context": c}, {"context": c.astype(np.float64)}
        draws = (("forward", sample_z(seed + 1, 4)), ("inverse", sample_x(seed + 2, 4)))
        for direction, v in draws:
            v32 = v.astype(np.float32)
            other = "inverse" if direction == "forward" else "forward"
            out32, ld32, pb32 = getattr(bijector, f"{direction}_vjp")(v32, **kw32)
            out64, ld64, pb64 = getattr(bijector, f"{direction}_vjp")(v32.astype(np.float64),
                                                                      **kw64)
            back32, _ = getattr(bijector, other)(out32, **kw32)
            worst["round trip"] = max(worst["round trip"], _rel(back32.astype(np.float64),
                                                                v32.astype(np.float64)))
            worst["log-det"] = max(worst["log-det"], _rel(ld32.astype(np.float64), ld64))
            c_out, c_ld = rng.standard_normal(out64.shape), rng.standard_normal(ld64.shape)
            r32 = pb32(c_out.astype(np.float32), c_ld.astype(np.float32))
            r64 = pb64(c_out, c_ld)
            bars32 = [r32[0]] + list(r32[2:]) + [r32[1][k] for k in sorted(r32[1])]
            bars64 = [r64[0]] + list(r64[2:]) + [r64[1][k] for k in sorted(r64[1])]
            for a, b in zip(bars32, bars64):
                worst["pullback"] = max(worst["pullback"],
                                        _normwise(np.asarray(a, np.float64), np.asarray(b)))
    return worst


def timeit(fn, repeats=3):
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def speed(rows):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(rows, 8))
    out = []
    for layer in (BlockNeuralAutoregressive(8, rng=0), Gaussianization(8, rng=0)):
        z, _ = layer.inverse(x)

        def with_pullback(direction, v):
            o, ld, pb = getattr(layer, f"{direction}_vjp")(v)
            pb(np.ones_like(o), np.ones_like(ld))

        out.append((type(layer).__name__, {
            "inverse (closed form)": timeit(lambda: layer.inverse(x)),
            "forward (numerical)": timeit(lambda: layer.forward(z)),
            "inverse + pullback": timeit(lambda: with_pullback("inverse", x)),
            "forward + pullback": timeit(lambda: with_pullback("forward", z)),
        }))
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 seeds, 1e4 rows")
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--no-speed", action="store_true")
    args = parser.parse_args(argv)
    seeds, rows = (3, 10_000) if args.quick else (args.seeds, args.rows)

    print(f"Accuracy: worst over {seeds} seeds x 4 rows per case\n")
    print("| case | f64 round trip | f64 log-det vs FD | f64 pullback vs FD | "
          "f32 round trip | f32 log-det | f32 pullback |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for case_id in cases():
        e64, e32 = float64_errors(case_id, seeds), float32_errors(case_id, seeds)
        print(f"| {case_id} | {e64['round trip']:.1e} | {e64['log-det vs FD']:.1e} | "
              f"{e64['pullback vs FD']:.1e} | {e32['round trip']:.1e} | {e32['log-det']:.1e} | "
              f"{e32['pullback']:.1e} |")
    if args.no_speed:
        return
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    blas = os.environ.get("OPENBLAS_NUM_THREADS")
    print(f"\nSpeed: {rows} x 8 rows, float64, median of 3 (load average {load:.1f} on "
          f"{os.cpu_count()} CPUs; OPENBLAS_NUM_THREADS={blas})\n")
    print("| layer | inverse (closed form) | forward (numerical) | inverse + pullback | "
          "forward + pullback |")
    print("| --- | --- | --- | --- | --- |")
    for name, t in speed(rows):
        print(f"| {name} | " + " | ".join(f"{v:.2f} s" for v in t.values()) + " |")


if __name__ == "__main__":
    main()
