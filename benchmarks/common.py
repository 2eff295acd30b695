"""Shared by the benchmark scripts: timing with warm-up, the environment that moves timings,
benchmark sizes, result records and the torch set-up of the peers.

Importing this module imports NumPy only (never refflow, torch, numba or threadpoolctl): a peer's
child process imports it after ``torch.set_num_threads``, and must not load refflow at all.

Nothing here changes the environment: ``OPENBLAS_CORETYPE`` (this machine's environment may set
``OPENBLAS_CORETYPE=Haswell``, which runs OpenBLAS's GEMM at about 0.65x of its AVX-512 speed)
and the thread variables are recorded, never set.
"""

import contextlib
import dataclasses
import math
import os
import platform
import statistics
import time

import numpy as np

PEERS = ("zuko", "nflows")
IMPLS = ("refflow",) + PEERS
DTYPES = ("float64", "float32")


# ----------------------------------------------------------------------------- timing
def time_calls(fn, repeats, warmup=2, warmup_fn=None):
    """Seconds of each of ``repeats`` calls of ``fn``, after ``warmup`` calls.

    ``warmup_fn`` (default ``fn``) is what the warm-up calls run: a smaller version of the
    workload when one full call is long (sampling), enough to compile and import lazily.
    """
    for _ in range(warmup):
        (warmup_fn or fn)()
    times = []
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def timeit(fn, repeats, warmup=2, warmup_fn=None):
    """``(median, min, max)`` seconds of ``repeats`` calls of ``fn`` after ``warmup`` calls."""
    times = time_calls(fn, repeats, warmup=warmup, warmup_fn=warmup_fn)
    return statistics.median(times), min(times), max(times)


# ----------------------------------------------------------------------------- environment
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


def cpu_model():
    """The ``model name`` line of ``/proc/cpuinfo`` (``platform.processor()`` elsewhere)."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(module):
    try:
        from importlib.metadata import version
        return version(module)
    except Exception:  # not installed
        return "(not installed)"


ENV_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
            "NUMBA_NUM_THREADS", "REFFLOW_NUM_THREADS", "REFFLOW_DISABLE_NUMBA")
# The variables that set thread counts: removed for "default threads" in the thread workloads.
THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS",
               "REFFLOW_NUM_THREADS", "GOTO_NUM_THREADS", "VECLIB_MAXIMUM_THREADS",
               "NUMEXPR_NUM_THREADS", "BLIS_NUM_THREADS")


def environment():
    """Versions, BLAS, threads, CPU and ``OPENBLAS_CORETYPE``, recorded with every result.

    ``run.py`` calls this in a fresh process of its own (it imports refflow, numba and
    threadpoolctl), so that the thread counts are those a refflow process starts with."""
    import refflow
    env = {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "refflow": refflow.__version__,
        "machine": platform.machine(),
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "blas_threads": blas_threads(),
    }
    for name in ("scipy", "numba", "torch", "zuko", "nflows"):
        env[name] = _version(name)
    try:
        import numba
        env["numba_threads"] = numba.get_num_threads()
    except ImportError:
        env["numba_threads"] = None
    for var in ENV_VARS:
        env[var] = os.environ.get(var, "(unset)")
    try:
        config = np.show_config(mode="dicts")
        blas = config.get("Build Dependencies", {}).get("blas", {})
        env["blas"] = f"{blas.get('name', '?')} {blas.get('version', '')}".strip()
    except Exception:  # older NumPy without mode="dicts"
        env["blas"] = "unknown"
    try:
        from threadpoolctl import threadpool_info
        cores = {p.get("architecture") for p in threadpool_info() if p.get("user_api") == "blas"}
        env["blas_core"] = ", ".join(sorted(c for c in cores if c)) or "unknown"
    except ImportError:
        env["blas_core"] = "unknown (threadpoolctl not installed)"
    return env


def environment_line(env):
    """One line for the README under the tables."""
    return (f"{env['cpu']} ({env['cpus']} CPUs), Python {env['python']}, NumPy {env['numpy']} "
            f"({env['blas']}, core {env['blas_core']}, {env['blas_threads']} BLAS threads), "
            f"SciPy {env['scipy']}, numba {env['numba']} ({env['numba_threads']} threads), "
            f"refflow {env['refflow']}, torch {env['torch']}, zuko {env['zuko']}, "
            f"nflows {env['nflows']}; OPENBLAS_CORETYPE={env['OPENBLAS_CORETYPE']}, "
            f"OPENBLAS_NUM_THREADS={env['OPENBLAS_NUM_THREADS']}, "
            f"OMP_NUM_THREADS={env['OMP_NUM_THREADS']}, "
            f"REFFLOW_NUM_THREADS={env['REFFLOW_NUM_THREADS']}"
            + (f"; peers: torch.set_num_threads({env['torch_threads']}) first thing in their "
               f"process" if env.get("torch_threads") else ""))


# ----------------------------------------------------------------------------- sizes
@dataclasses.dataclass(frozen=True)
class Sizes:
    """The fixed configurations (``full``), and what ``--quick`` and ``--smoke`` change.

    ``full`` and ``quick`` share every model and batch; ``quick`` draws fewer sampling rows (the
    sequential passes make sampling the longest workload), runs fewer rounds and repeats and
    leaves out the long fit. ``smoke`` shrinks everything, for the test of the script itself.

    Timing: every (workload, implementation, dtype) runs ``rounds`` times, each time in a fresh
    process that makes ``warmup`` warm-up calls (``spline_warmup`` for the spline kernels,
    ``sample_warmup`` full-size calls for sampling) and
    then ``repeats`` timed calls (``sample_repeats`` for sampling, ``spline_repeats`` for the
    spline kernels); the processes
    of the implementations alternate (A B C A B C ...), and the median is over all timed calls of
    all rounds. The self-check times each peer case alone once per round, in a fresh process
    making as many calls as one harness process (:func:`alone_repeats`).
    """
    mode: str = "full"
    dim: int = 64                 # MAF / NSF event size
    layers: int = 5
    hidden: tuple = (256, 256)
    batch: int = 512              # MAF / NSF training batch
    bins: int = 8                 # NSF K
    bound: float = 3.0            # NSF B (refflow, nflows); zuko's is fixed at 5
    rnvp_dim: int = 2
    rnvp_layers: int = 8
    rnvp_hidden: tuple = (64, 64)
    rnvp_batch: int = 4096
    log_prob_batch: int = 4096
    sample_rows: int = 10_000
    spline_n: int = 2 ** 20
    gemm_square: int = 1024
    rounds: int = 3               # odd: the median over processes is one process's median
    repeats: int = 5
    sample_repeats: int = 1
    spline_repeats: int = 2
    warmup: int = 2
    spline_warmup: int = 1        # one spline call is 0.1-2 s: one warm-up suffices
    # one full-size sampling call before the timed one: a process's first 10,000-row call
    # pays for its fresh memory (zuko float64: 14.7-15.5 s first, 12.1-12.9 s second, four
    # processes), and how much varies with the machine's state more than the steady state does
    sample_warmup: int = 1
    # thread workloads: `python -m refflow fit two_moons --epochs E`, the demo's fit
    fit_epochs: int = 5
    fit_long_epochs: int = 20     # 0: not run
    fit_extra: tuple = ()         # extra `fit` options (smoke: tiny model and data)
    demo_epochs: int = 60
    demo_rows: int = 4000
    demo_hidden: tuple = (32, 32)
    thread_rounds: int = 2


FULL = Sizes()
QUICK = dataclasses.replace(FULL, mode="quick", sample_rows=1000, rounds=2, repeats=2,
                            spline_repeats=1, warmup=1, fit_long_epochs=0)
SMOKE = Sizes(mode="smoke", dim=4, layers=2, hidden=(8, 8), batch=16, bins=4, rnvp_layers=2,
              rnvp_hidden=(8, 8), rnvp_batch=32, log_prob_batch=32, sample_rows=16,
              spline_n=256, gemm_square=32, rounds=1, repeats=1, sample_repeats=1,
              spline_repeats=1, warmup=1, fit_epochs=1, fit_long_epochs=0,
              fit_extra=("--n", "200", "--hidden", "8,8", "--layers", "2"), demo_epochs=1,
              demo_rows=200, demo_hidden=(8, 8), thread_rounds=1)
SIZES = {"full": FULL, "quick": QUICK, "smoke": SMOKE}


def quick_changes():
    """What ``--quick`` changes relative to the full run, for the table's caption."""
    diff = [f"{f.name} {getattr(FULL, f.name)} -> {getattr(QUICK, f.name)}"
            for f in dataclasses.fields(Sizes)
            if f.name != "mode" and getattr(FULL, f.name) != getattr(QUICK, f.name)]
    return ", ".join(diff)


def repeats_for(workload, sizes):
    """Timed calls per process of ``workload``."""
    if workload == "maf_sample":
        return sizes.sample_repeats
    if workload.startswith("spline"):
        return sizes.spline_repeats
    return sizes.repeats


def alone_repeats(workload, sizes):
    """Timed calls of one standalone process of the self-check (one per round): as many as one
    harness process of ``workload``."""
    return repeats_for(workload, sizes)


def warmup_for(workload, sizes):
    """Warm-up calls per process of ``workload``."""
    if workload == "maf_sample":
        return sizes.sample_warmup
    return sizes.spline_warmup if workload.startswith("spline") else sizes.warmup


# ----------------------------------------------------------------------------- workloads
@dataclasses.dataclass
class Case:
    """One timed callable: ``fn`` (one call = ``items`` units of work), optional ``warmup_fn``,
    ``info`` (parameter count, multiply-adds, notes) and ``followup`` (called once after
    timing; returns ``{workload: Case}`` timed next in the same process, for the log_prob of the
    rows just sampled)."""
    fn: object
    items: int
    warmup_fn: object = None
    info: dict = dataclasses.field(default_factory=dict)
    followup: object = None


class Skip(Exception):
    """A peer cannot run this workload (not installed, or no such operation)."""


def record(workload, impl, dtype, unit, items, times, info=None):
    """One result: the median, min and max of ``times`` (every timed call of every round),
    ``repeats`` = how many, and the throughput ``items / median``."""
    med = statistics.median(times)
    rec = {"workload": workload, "impl": impl, "dtype": dtype, "median_s": med,
           "min_s": min(times), "max_s": max(times), "repeats": len(times), "items": items,
           "unit": unit, "throughput": items / med if med > 0 else math.inf}
    rec.update(info or {})
    return rec


# ----------------------------------------------------------------------------- torch peers
def torch_or_skip(peer):
    """``(torch, module)`` for ``peer`` ("zuko" or "nflows"), or ``Skip`` with the reason."""
    try:
        import torch
    except ImportError:
        raise Skip(f"{peer}: skipped (torch not installed)") from None
    try:
        module = __import__(peer)
    except ImportError:
        raise Skip(f"{peer}: skipped (not installed)") from None
    return torch, module


def torch_copy(a):
    """A torch tensor holding a copy of the NumPy array ``a``, in memory from torch's own
    allocator (64-byte aligned, as every tensor a peer makes itself), not a view of NumPy's
    buffer (``torch.from_numpy``: 16-byte aligned), so that a peer's inputs are what its users'
    tensors would be."""
    import torch
    return torch.from_numpy(a).clone()


def torch_dtype(dtype):
    import torch
    return {"float64": torch.float64, "float32": torch.float32}[dtype]


@contextlib.contextmanager
def torch_seed(seed=0):
    """Seeds torch's global generator for one model build (the previous state is restored)."""
    import torch
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        yield
    finally:
        torch.random.set_rng_state(state)


def n_torch_params(module):
    return int(sum(p.numel() for p in module.parameters()))


def n_params(flow):
    """refflow parameter count (masked MADE entries included, as torch counts them)."""
    return int(sum(np.asarray(v).size for v in flow.params.values()))
