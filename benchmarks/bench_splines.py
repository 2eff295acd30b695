"""Rational-quadratic spline throughput, refflow vs nflows vs zuko, in the same run.

Run: ``python benchmarks/bench_splines.py [--quick] [--json out.json]``

Workload (fixed so later runs compare): 2^20 elements, K = 8 bins, unconstrained parameters
drawn from N(0, 1), inputs from N(0, 2) (some in the tails); three operations: forward+log-det,
inverse+log-det, forward+gradient (the pullback of ``sum(y) + sum(log_det)`` to the input and
all parameters). refflow: ``rational_quadratic_spline(_vjp)`` ("durkan", B = 3). nflows:
``unconstrained_rational_quadratic_spline(tails="linear", tail_bound=3)``. zuko:
``MonotonicRQSTransform(bound=5)`` (zuko's own default bound; its map differs, the work does
not). Peers run on torch CPU with ``torch.set_num_threads`` = NumPy's BLAS threads, skipped
with a message when not installed. Elements per second; ratios measured in this run.
"""

import argparse
import json
import sys

import numpy as np

from common import blas_threads, environment, timeit
from refflow import rational_quadratic_spline, rational_quadratic_spline_vjp

N, K, B = 2 ** 20, 8, 3.0


def data(dtype, n):
    rng = np.random.default_rng(0)
    x = (2.0 * rng.standard_normal(n)).astype(dtype)
    uw, uh = (rng.standard_normal((n, K)).astype(dtype) for _ in range(2))
    ud = rng.standard_normal((n, K - 1)).astype(dtype)
    return x, uw, uh, ud


def refflow_ops(x, uw, uh, ud):
    y, _ = rational_quadratic_spline(x, uw, uh, ud, bound=B)
    ones = np.ones_like(x)

    def grad():
        _, _, pullback = rational_quadratic_spline_vjp(x, uw, uh, ud, bound=B)
        pullback(ones, ones)

    return {
        "forward+log_det": lambda: rational_quadratic_spline(x, uw, uh, ud, bound=B),
        "inverse+log_det": lambda: rational_quadratic_spline(y, uw, uh, ud, inverse=True, bound=B),
        "forward+gradient": grad,
    }


def nflows_ops(x, uw, uh, ud):
    import torch
    from nflows.transforms.splines.rational_quadratic import unconstrained_rational_quadratic_spline as f
    tx, tw, th, td = (torch.from_numpy(a) for a in (x, uw, uh, ud))
    with torch.no_grad():
        ty, _ = f(tx, tw, th, td, inverse=False, tails="linear", tail_bound=B)

    def grad():
        args = [t.clone().requires_grad_(True) for t in (tx, tw, th, td)]
        y, ld = f(*args, inverse=False, tails="linear", tail_bound=B)
        (y.sum() + ld.sum()).backward()

    def run(inp, inverse):
        with torch.no_grad():
            return f(inp, tw, th, td, inverse=inverse, tails="linear", tail_bound=B)

    return {"forward+log_det": lambda: run(tx, False), "inverse+log_det": lambda: run(ty, True),
            "forward+gradient": grad}


def zuko_ops(x, uw, uh, ud):
    import torch
    from zuko.transforms import MonotonicRQSTransform
    tx, tw, th, td = (torch.from_numpy(a) for a in (x, uw, uh, ud))
    with torch.no_grad():
        ty = MonotonicRQSTransform(tw, th, td, bound=5.0)(tx)

    def run(inp, inverse):
        with torch.no_grad():
            t = MonotonicRQSTransform(tw, th, td, bound=5.0)
            return (t.inv if inverse else t).call_and_ladj(inp)

    def grad():
        args = [t.clone().requires_grad_(True) for t in (tx, tw, th, td)]
        y, ladj = MonotonicRQSTransform(*args[1:], bound=5.0).call_and_ladj(args[0])
        (y.sum() + ladj.sum()).backward()

    return {"forward+log_det": lambda: run(tx, False), "inverse+log_det": lambda: run(ty, True),
            "forward+gradient": grad}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    repeats = 3 if args.quick else 7
    env = environment()
    print("Environment: " + ", ".join(f"{k}={v}" for k, v in env.items()))
    try:
        import torch
        torch.set_num_threads(blas_threads())
        env["torch"] = torch.__version__
    except ImportError:
        print("torch not installed: nflows and zuko skipped")
    results = []
    for dtype in (np.float64, np.float32):
        arrays = data(dtype, N)
        impls = {"refflow": refflow_ops}
        for name, ops in (("nflows", nflows_ops), ("zuko", zuko_ops)):
            try:
                impls[name] = ops
                ops(*(a[:16] for a in arrays))  # import check on a tiny input
            except ImportError as exc:
                print(f"{name} skipped ({exc.name} not installed)")
                del impls[name]
        for impl, ops in impls.items():
            for op, fn in ops(*arrays).items():
                med, lo, hi = timeit(fn, repeats, warmup=1)
                results.append({"impl": impl, "dtype": np.dtype(dtype).name, "op": op,
                                "median_s": med, "min_s": lo, "max_s": hi,
                                "elements_per_s": N / med})
    print(f"\n{N} elements, K = {K}, {repeats} repeats; million elements/s (median), ratio = "
          f"refflow / peer throughput\n")
    print("| dtype | operation | refflow | nflows | zuko | vs nflows | vs zuko |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    table = {(r["impl"], r["dtype"], r["op"]): r["elements_per_s"] / 1e6 for r in results}
    for dtype in ("float64", "float32"):
        for op in ("forward+log_det", "inverse+log_det", "forward+gradient"):
            ours = table[("refflow", dtype, op)]
            cells = [table.get((p, dtype, op)) for p in ("nflows", "zuko")]
            text = [f"{c:.2f}" if c else "-" for c in cells]
            ratios = [f"{ours / c:.1f}x" if c else "-" for c in cells]
            print(f"| {dtype} | {op} | {ours:.2f} | {text[0]} | {text[1]} | {ratios[0]} | {ratios[1]} |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"environment": env, "n": N, "bins": K, "results": results}, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
