"""Peak memory of ``Flow.log_prob`` and ``Flow.sample`` with and without chunking (``batch_size``).

Run: ``python benchmarks/bench_memory.py [--quick] [--json out.json]``

Workload: MAF with dim 64, 5 layers, reversed orders between them, ReLU MADEs. ``log_prob`` uses
hidden (256, 256) (the ``bench_maf.py`` model); ``sample`` uses hidden (64, 64), because MAF
sampling runs ``dim`` = 64 sequential MADE passes per layer (one 10^6-row sample with (256, 256)
would take ~30 min here, with (64, 64) ~5 min). n = 10^4, 10^5, 10^6 rows (``--quick``: 10^4,
10^5), each measured in a fresh subprocess so that no allocation of an earlier run is counted:
the child builds the model (and, for ``log_prob``, the input), resets the peak-RSS counter
(``/proc/self/clear_refs``, Linux; otherwise the process peak since start is reported and the
setup is included), makes one call and reads ``VmHWM`` from ``/proc/self/status`` (falling back
to ``getrusage(RUSAGE_SELF).ru_maxrss``).

Columns: ``rss before`` (resident set after setup: interpreter, model, input), ``peak`` (peak
RSS during the call), ``output`` (the result arrays the call must return, ``n x 64`` samples
and/or ``n`` log-densities) and ``extra = peak - rss before - output``: the temporaries of the
passes, which chunking bounds (by the chunk of ``DEFAULT_BATCH_SIZE`` = 65,536 rows at most;
the chunks are balanced, so n = 10^5 runs as two chunks of 50,000 rows). ``unchunked`` rows pass
``batch_size=n`` (one pass over all rows, the behaviour before chunking existed).
"""

import argparse
import json
import os
import subprocess
import sys
import time

from common import environment

DIM, LAYERS = 64, 5
HIDDEN = {"log_prob": (256, 256), "sample": (64, 64)}

CHILD = r"""
import json, os, resource, sys, time
import numpy as np
sys.path.insert(0, {root!r})
from refflow.flows import MAF

def status(key):
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None

what, n, chunked = {what!r}, {n}, {chunked}
flow = MAF({dim}, n_layers={layers}, hidden={hidden}, permutation="reverse", rng=0)
rng = np.random.default_rng(1)
x = rng.standard_normal((n, {dim})) if what == "log_prob" else None
batch_size = None if chunked else n
flow.log_prob(rng.standard_normal((8, {dim})))          # warm-up (numba, lazy imports)
reset = False
try:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")                                  # reset VmHWM to the current RSS
    reset = True
except OSError:
    pass
before = status("VmRSS")
start = time.perf_counter()
if what == "log_prob":
    out = flow.log_prob(x, batch_size=batch_size)
    out_bytes = out.nbytes
else:
    out = flow.sample(n, rng=2, batch_size=batch_size)
    out_bytes = out.nbytes
seconds = time.perf_counter() - start
peak = status("VmHWM")
if peak is None:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({{"before": before, "peak": peak, "output": out_bytes, "seconds": seconds,
                  "reset": reset}}))
"""


def measure(what, n, chunked):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = CHILD.format(root=root, what=what, n=n, chunked=chunked, dim=DIM, layers=LAYERS,
                        hidden=HIDDEN[what])
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="n = 1e4, 1e5 only")
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args()

    env = environment()
    print("environment:", ", ".join(f"{k}={v}" for k, v in env.items()))
    sizes = [10_000, 100_000] if args.quick else [10_000, 100_000, 1_000_000]
    runs = []
    for what in ("log_prob", "sample"):
        for n in sizes:
            # one pass over 10^6 rows holds several (10^6, 256) activations (GBs): skip it
            for chunked in ((True, False) if n < 1_000_000 else (True,)):
                runs.append((what, n, chunked))
    mb = 1 / 2 ** 20
    print(f"\nMAF dim {DIM}, {LAYERS} layers; log_prob hidden {HIDDEN['log_prob']}, sample hidden "
          f"{HIDDEN['sample']}; MB = 2^20 bytes")
    header = (f"{'call':9} {'n':>9} {'mode':9} {'rss before':>10} {'peak':>9} {'output':>8} "
              f"{'extra':>8} {'seconds':>8}")
    print(header)
    print("-" * len(header))
    results = []
    for what, n, chunked in runs:
        r = measure(what, n, chunked)
        extra = r["peak"] - r["before"] - r["output"]
        row = dict(call=what, n=n, chunked=chunked, hidden=list(HIDDEN[what]), **r,
                   extra=extra)
        results.append(row)
        print(f"{what:9} {n:>9,} {'chunked' if chunked else 'unchunked':9} "
              f"{r['before'] * mb:10.1f} {r['peak'] * mb:9.1f} {r['output'] * mb:8.1f} "
              f"{extra * mb:8.1f} {r['seconds']:8.2f}" + ("" if r["reset"] else "  (peak since start)"),
              flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"environment": env, "results": results, "time": time.time()}, f, indent=1)


if __name__ == "__main__":
    main()
