"""Shared by the benchmark scripts: timing with warm-up, and the environment that moves timings."""

import os
import platform
import statistics
import time

import numpy as np


def timeit(fn, repeats, warmup=2):
    """``(median, min, max)`` seconds of ``repeats`` calls of ``fn`` after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), min(times), max(times)


def blas_threads():
    """NumPy's BLAS thread count (threadpoolctl when installed, else the usual variables)."""
    try:
        from threadpoolctl import threadpool_info
        counts = [p["num_threads"] for p in threadpool_info() if p.get("user_api") == "blas"]
        if counts:
            return max(counts)
    except ImportError:
        pass
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return os.cpu_count()


def environment():
    """Versions, BLAS, thread settings and ``OPENBLAS_CORETYPE``, recorded with every result."""
    import refflow
    env = {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "refflow": refflow.__version__,
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "blas_threads": blas_threads(),
    }
    for var in ("OPENBLAS_CORETYPE", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = os.environ.get(var, "(unset)")
    try:
        config = np.show_config(mode="dicts")
        blas = config.get("Build Dependencies", {}).get("blas", {})
        env["blas"] = f"{blas.get('name', '?')} {blas.get('version', '')}".strip()
    except Exception:  # older NumPy without mode="dicts"
        env["blas"] = "unknown"
    return env
