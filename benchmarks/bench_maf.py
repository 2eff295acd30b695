"""One MAF training step (``nll_and_grad`` + Adam), refflow vs zuko, in the same run.

Run: ``python benchmarks/bench_maf.py [--quick] [--json out.json]``

Workload (fixed so later runs compare): MAF with dim 64, 5 layers alternating natural and
reversed orders (zuko's default layout), MADE hidden (256, 256), ReLU, batch 512; float64 and
float32. zuko's ``MAF(features=64, transforms=5, hidden_features=[256, 256])`` is timed when
torch and zuko are installed, with ``torch.set_num_threads`` equal to NumPy's BLAS threads;
otherwise the script says it skipped them. Medians of several repeats after warm-up; compare the
ratio, measured here, not absolute times across machines.
"""

import argparse
import json
import sys

import numpy as np

from common import blas_threads, environment, timeit
from refflow import Adam, Chain, Flow, MaskedAffineAutoregressive, StandardNormal

DIM, LAYERS, HIDDEN, BATCH = 64, 5, (256, 256), 512


def refflow_step(dtype, rng):
    layers = [MaskedAffineAutoregressive(DIM, hidden=HIDDEN, order="natural" if i % 2 == 0 else "reverse",
                                         rng=rng) for i in range(LAYERS)]
    flow = Flow(StandardNormal(DIM), Chain(layers))
    opt = Adam(flow.params, lr=1e-4)
    x = rng.standard_normal((BATCH, DIM)).astype(dtype)

    def step():
        _, grads = flow.nll_and_grad(x)
        opt.step(grads)

    n_params = sum(v.size for v in flow.params.values())
    return step, n_params


def zuko_step(dtype, threads):
    try:
        import torch
        import zuko
    except ImportError as exc:
        return None, f"skipped ({exc.name} not installed)"
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    tdtype = torch.float64 if dtype == np.float64 else torch.float32
    flow = zuko.flows.MAF(features=DIM, transforms=LAYERS, hidden_features=list(HIDDEN)).to(tdtype)
    opt = torch.optim.Adam(flow.parameters(), lr=1e-4)
    x = torch.randn(BATCH, DIM, dtype=tdtype)

    def step():
        loss = -flow().log_prob(x).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    n_params = sum(p.numel() for p in flow.parameters())
    return step, f"zuko {zuko.__version__}, torch {torch.__version__}, {n_params} parameters"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    repeats = 5 if args.quick else 15
    threads = blas_threads()
    env = environment()
    print("Environment: " + ", ".join(f"{k}={v}" for k, v in env.items()))
    print(f"MAF train step: dim {DIM}, {LAYERS} layers, hidden {HIDDEN}, batch {BATCH}")
    results = []
    for dtype in (np.float64, np.float32):
        name = np.dtype(dtype).name
        step, n_params = refflow_step(dtype, np.random.default_rng(0))
        med, lo, hi = timeit(step, repeats, warmup=3)
        results.append({"impl": "refflow", "dtype": name, "median_ms": med * 1e3, "min_ms": lo * 1e3,
                        "max_ms": hi * 1e3, "samples_per_s": BATCH / med})
        print(f"  refflow {name}: {med * 1e3:8.1f} ms (min {lo * 1e3:.1f}, max {hi * 1e3:.1f}), "
              f"{BATCH / med:10,.0f} samples/s, {n_params} parameters (dense storage)")
        zstep, info = zuko_step(dtype, threads)
        if zstep is None:
            print(f"  zuko {name}: {info}")
            continue
        zmed, zlo, zhi = timeit(zstep, repeats, warmup=3)
        results.append({"impl": "zuko", "dtype": name, "median_ms": zmed * 1e3, "min_ms": zlo * 1e3,
                        "max_ms": zhi * 1e3, "samples_per_s": BATCH / zmed, "info": info})
        print(f"  zuko    {name}: {zmed * 1e3:8.1f} ms (min {zlo * 1e3:.1f}, max {zhi * 1e3:.1f}), "
              f"{BATCH / zmed:10,.0f} samples/s ({info})")
        print(f"  ratio zuko / refflow time ({name}): {zmed / med:.2f}x")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"environment": env, "results": results}, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
