"""Timing of the foundation layers and of a training step, with the machine's GEMM rate beside.

Run: ``python benchmarks/bench_foundation.py [--quick] [--json out.json]``

Seeded workloads, warm-up, several repeats; medians with min and max. Every figure is measured in
this run on this machine; compare ratios within one run, not across machines. The environment
(NumPy, BLAS, thread settings, ``OPENBLAS_CORETYPE``) is printed with the table, because NumPy's
GEMM speed depends on it.
"""

import argparse
import json
import sys

import numpy as np

from common import environment, timeit
from refflow import ActNorm, Adam, BatchNorm, Chain, Flow, Householder, LeakyReLU, LULinear, StandardNormal


def randomize(params, rng, scale=0.1):
    for key, value in params.items():
        params[key] = rng.normal(0.0, scale, size=value.shape)


def workloads(dim, batch, dtype, rng):
    z = rng.standard_normal((batch, dim)).astype(dtype)
    lu = LULinear(dim, permutation="random", rng=rng)
    randomize(lu.params, rng)
    house = Householder(dim, n_reflections=8, rng=rng)
    bn = BatchNorm(dim)
    actnorm = ActNorm(dim, initialized=True)
    x_bar = np.ones_like(z)
    ld_bar = np.ones(batch, dtype=dtype)

    def vjp_and_pullback(method):
        def run():
            out, log_det, pullback = method(z)
            pullback(x_bar, ld_bar)
        return run

    layers = []
    for _ in range(4):
        layers += [ActNorm(dim, initialized=True), LULinear(dim, permutation="random", rng=rng),
                   LeakyReLU(dim, negative_slope=0.5)]
    flow = Flow(StandardNormal(dim), Chain(layers))
    randomize(flow.params, rng)
    opt = Adam(flow.params, lr=1e-3)
    x_data = (rng.standard_normal((batch, dim))).astype(dtype)

    def train_step():
        _, grads = flow.nll_and_grad(x_data)
        opt.step(grads)

    weight = rng.standard_normal((dim, dim)).astype(dtype)
    return {
        f"GEMM ({batch}x{dim}) @ ({dim}x{dim}) [reference]": lambda: z @ weight.T,
        "LULinear forward": lambda: lu.forward(z),
        "LULinear inverse (2 triangular solves)": lambda: lu.inverse(z),
        "LULinear forward_vjp + pullback": vjp_and_pullback(lu.forward_vjp),
        "LULinear inverse_vjp + pullback": vjp_and_pullback(lu.inverse_vjp),
        "Householder(k=8) forward_vjp + pullback": vjp_and_pullback(house.forward_vjp),
        "ActNorm forward_vjp + pullback": vjp_and_pullback(actnorm.forward_vjp),
        "BatchNorm (train) inverse_vjp + pullback": vjp_and_pullback(bn.inverse_vjp),
        "train step: 12-layer flow nll_and_grad + Adam": train_step,
        "Flow.log_prob, 12-layer flow": lambda: flow.log_prob(x_data),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args(argv)
    repeats = 5 if args.quick else 20

    env = environment()
    results = []
    for dtype in (np.float64, np.float32):
        rng = np.random.default_rng(0)
        for name, fn in workloads(args.dim, args.batch, dtype, rng).items():
            med, lo, hi = timeit(fn, repeats)
            results.append({"workload": name, "dtype": np.dtype(dtype).name, "median_ms": med * 1e3,
                            "min_ms": lo * 1e3, "max_ms": hi * 1e3,
                            "samples_per_s": args.batch / med})

    print("Environment: " + ", ".join(f"{k}={v}" for k, v in env.items()))
    print(f"\ndim {args.dim}, batch {args.batch}, {repeats} repeats after 2 warm-ups; "
          f"median (min - max) ms\n")
    print("| workload | dtype | median ms | min - max ms | samples/s | x GEMM time |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    gemm = {r["dtype"]: r["median_ms"] for r in results if "[reference]" in r["workload"]}
    for r in results:
        ratio = r["median_ms"] / gemm[r["dtype"]]
        print(f"| {r['workload']} | {r['dtype']} | {r['median_ms']:.3f} | {r['min_ms']:.3f} - "
              f"{r['max_ms']:.3f} | {r['samples_per_s']:,.0f} | {ratio:.1f} |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"environment": env, "dim": args.dim, "batch": args.batch,
                       "repeats": repeats, "results": results}, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
