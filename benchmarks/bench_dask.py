"""Dask: scoring throughput with 1 and 2 worker processes, the peak memory of an out-of-core
fit on a memory-mapped file, and the overhead of data-parallel steps.

Run: ``python benchmarks/bench_dask.py [--quick] [--only scoring,fit,steps] [--json out.json]``
(needs ``pip install -e ".[dask]"``).

Scoring: ``n`` rows x 8 (10^7 rows, 640 MB; ``--quick``: 10^6) of float64 in a ``.npy`` file,
scored by a fitted ``FlowDensity`` (MAF, 3 layers, hidden (32, 32)) as ``score --dask`` scores
it: each task memory-maps the file and reads its chunk of 250,000 rows, the scores are reduced to
exact sums chunk by chunk (nothing is written). Baseline: the same rows scored in this process
by ``score_samples`` over the memory map, chunk by chunk. Workers: a ``LocalCluster`` of 1 or 2
processes with one thread each (``OPENBLAS_NUM_THREADS=1``), started before timing and warmed
up (refflow and numba loaded) on one chunk. Each figure is the best of ``--repeats`` runs, and
the mean log-density is checked bitwise against the baseline's.

Out-of-core fit: ``FlowDensity.fit`` on a 2 GB ``.npy`` memory map (33.5 M rows x 8; ``--quick``:
200 MB), one epoch, batch 16,384, in a fresh subprocess. Reported: ``tracemalloc``'s peak of
traced allocations (NumPy's arrays are traced), and the process' peak resident set ``VmHWM``
with ``RssAnon`` / ``RssFile`` at the end from ``/proc/self/status``: the pages of the mapped file
that were read count in the resident set (``RssFile``) but belong to the page cache, which the
kernel drops under memory pressure; the heap (``RssAnon``) is what the fit allocates.

Data-parallel steps: ``fit(..., client=...)`` against ``fit`` in one process, MAF (dim 8, 3
layers, hidden (256, 256)), batches of 8,192 rows, 40 steps, a ``LocalCluster`` of 2 processes
(one thread each) and ``n_shards=2``, the one-process fit limited to one BLAS thread as each
worker is (threadpoolctl); reported per step, with the largest relative difference of the
parameters.

The timings are those of the machine the script runs on; on a shared machine they are
provisional.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIM = 8
CHUNK_ROWS = 250_000

FIT_CHILD = r"""
import json, sys, time, tracemalloc
import numpy as np
sys.path.insert(0, {root!r})
from refflow import FlowDensity

def status():
    out = {{}}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
                out[key] = int(value.split()[0]) * 1024
    return out

x = np.load({path!r}, mmap_mode="r")
FlowDensity("maf", n_layers=1, hidden=(8,), epochs=1, progress=False).fit(np.asarray(x[:1000]))
before = status()
tracemalloc.start()
start = time.perf_counter()
model = FlowDensity("maf", n_layers=3, hidden=(32, 32), epochs=1, batch_size=16384,
                    random_state=0, progress=False).fit(x)
seconds = time.perf_counter() - start
peak = tracemalloc.get_traced_memory()[1]
tracemalloc.stop()
print(json.dumps(dict(rows=int(x.shape[0]), data_bytes=int(x.nbytes), seconds=seconds,
                      tracemalloc_peak=peak, before=before, after=status(),
                      train_nll=model.history_.train_nll)))
"""


def write_rows(path, n, seed=0):
    """``n x DIM`` correlated float64 rows into a ``.npy`` file, written in pieces."""
    import numpy as np

    rng = np.random.default_rng(seed)
    mix = np.triu(np.full((DIM, DIM), 0.3)) + np.eye(DIM)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float64, shape=(n, DIM))
    for start in range(0, n, CHUNK_ROWS):
        stop = min(n, start + CHUNK_ROWS)
        out[start:stop] = rng.normal(size=(stop - start, DIM)) @ mix
    out.flush()
    del out


def bench_scoring(folder, n, repeats):
    import numpy as np
    import dask
    from distributed import Client, LocalCluster

    from refflow import FlowDensity
    from refflow._dask import npy_rows, summarize_rows
    from refflow._exact import Moments

    path = os.path.join(folder, "points.npy")
    write_rows(path, n)
    mapped = np.load(path, mmap_mode="r")
    model = FlowDensity("maf", n_layers=3, hidden=(32, 32), epochs=2, random_state=0,
                        progress=False).fit(np.asarray(mapped[:20_000]))

    def baseline():
        total = Moments(1)
        for start in range(0, n, CHUNK_ROWS):
            total.add(model.score_samples(mapped[start:start + CHUNK_ROWS]).reshape(-1, 1))
        return total

    records = []
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        reference = baseline()
        times.append(time.perf_counter() - t)
    records.append(dict(setup="NumPy, this process", workers=0, seconds=min(times),
                        rows_per_s=n / min(times), mean=float(reference.mean()[0])))
    os.environ["OPENBLAS_NUM_THREADS"] = "1"
    for workers in (1, 2):
        with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                          host="127.0.0.1", dashboard_address=None) as cluster, \
                Client(cluster) as client:
            with dask.config.set(scheduler=client):
                warm = npy_rows(path, CHUNK_ROWS, "bench")[:CHUNK_ROWS * workers]
                summarize_rows(model.score_samples(warm))                # warm-up
                times = []
                for _ in range(repeats):
                    t = time.perf_counter()
                    moments, _, _ = summarize_rows(model.score_samples(
                        npy_rows(path, CHUNK_ROWS, "bench")))
                    times.append(time.perf_counter() - t)
        assert moments.mean()[0] == reference.mean()[0], "not the NumPy scores"
        records.append(dict(setup=f"dask LocalCluster, {workers} process(es)", workers=workers,
                            seconds=min(times), rows_per_s=n / min(times),
                            mean=float(moments.mean()[0])))
    os.unlink(path)
    return records


def bench_fit(folder, nbytes):
    path = os.path.join(folder, "train.npy")
    n = nbytes // (8 * DIM)
    write_rows(path, n, seed=1)
    try:
        result = subprocess.run([sys.executable, "-c", FIT_CHILD.format(root=ROOT, path=path)],
                                capture_output=True, text=True, check=True)
    finally:
        os.unlink(path)
    return json.loads(result.stdout.strip().splitlines()[-1])


def _one_blas_thread():
    """threadpoolctl's limit to one BLAS thread when installed, else nothing."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        import contextlib

        return contextlib.nullcontext()
    return threadpool_limits(1)


def bench_steps(steps=40, batch=8192):
    import numpy as np
    from distributed import Client, LocalCluster

    from refflow import MAF, fit

    x = np.random.default_rng(2).normal(size=(steps * batch, DIM))
    flows = [MAF(DIM, n_layers=3, hidden=(256, 256), rng=0) for _ in range(3)]
    common = dict(epochs=1, batch_size=batch, validation_fraction=0.0, rng=0, progress=False)
    fit(flows[2], x[:batch], **common)                                   # warm-up
    with _one_blas_thread():                 # as each worker: one BLAS thread
        t = time.perf_counter()
        fit(flows[0], x, **common)
        one = (time.perf_counter() - t) / steps
    os.environ["OPENBLAS_NUM_THREADS"] = "1"
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster, Client(cluster) as client:
        fit(MAF(DIM, n_layers=3, hidden=(256, 256), rng=0), x[:2 * batch], client=client,
            **common)                                                    # warm-up
        t = time.perf_counter()
        fit(flows[1], x, client=client, n_shards=2, **common)
        sharded = (time.perf_counter() - t) / steps
    difference = max(float(np.max(np.abs(flows[1].params[k] - flows[0].params[k]))
                           / max(1.0, float(np.max(np.abs(flows[0].params[k])))))
                     for k in flows[0].params)
    return dict(steps=steps, batch=batch, one_process_s=one, two_workers_s=sharded,
                max_relative_difference=difference)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10^6 rows, a 200 MB fit")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", default=None, help="write the records here")
    parser.add_argument("--dir", default=None, help="folder for the data files")
    parser.add_argument("--only", default="scoring,fit,steps", help="parts to run")
    args = parser.parse_args(argv)
    parts = set(args.only.split(","))
    n = 10 ** 6 if args.quick else 10 ** 7
    fit_bytes = (200 << 20) if args.quick else (2 << 30)
    scoring = fit = steps = None
    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        if "scoring" in parts:
            scoring = bench_scoring(folder, n, args.repeats)
        if "fit" in parts:
            fit = bench_fit(folder, fit_bytes)
    if "steps" in parts:
        steps = bench_steps(10 if args.quick else 40)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(scoring=scoring, fit=fit, steps=steps), f, indent=1)
    mb = 1 << 20
    if steps is not None:
        print(f"data-parallel steps, MAF dim {DIM} hidden (256, 256), batch {steps['batch']:,}, "
              f"{steps['steps']} steps: one process {steps['one_process_s'] * 1e3:.1f} ms/step, "
              f"2 worker processes {steps['two_workers_s'] * 1e3:.1f} ms/step; parameters "
              f"differ by {steps['max_relative_difference']:.1e} (relative)")
    if scoring is None or fit is None:
        return
    print(f"scoring {n:,} x {DIM} float64 rows ({n * DIM * 8 / mb:.0f} MB, .npy memory map, "
          f"chunks of {CHUNK_ROWS:,} rows), best of {args.repeats}:")
    for r in scoring:
        print(f"  {r['setup']:<34} {r['seconds']:7.2f} s  {r['rows_per_s'] / 1e6:6.2f} M rows/s"
              f"  mean log q {r['mean']:.6f}")
    print(f"out-of-core FlowDensity.fit, {fit['rows']:,} x {DIM} rows ({fit['data_bytes'] / mb:.0f}"
          f" MB memory map), 1 epoch, batch 16,384: {fit['seconds']:.1f} s")
    print(f"  tracemalloc peak {fit['tracemalloc_peak'] / mb:.0f} MB; VmHWM "
          f"{fit['after']['VmHWM'] / mb:.0f} MB (before the fit {fit['before']['VmRSS'] / mb:.0f}"
          f" MB); at the end RssAnon {fit['after']['RssAnon'] / mb:.0f} MB, RssFile "
          f"{fit['after']['RssFile'] / mb:.0f} MB (mapped file pages: page cache)")


if __name__ == "__main__":
    main()
