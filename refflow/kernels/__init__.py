"""Numba kernels, and the one decorator they all go through.

Every kernel in ``refflow/kernels/`` is decorated with :func:`njit` from this module, never with
``numba.njit`` directly, so that the compilation flags are set in one place:

``cache=True``
    compiled machine code is cached next to the source (``*.nbi`` / ``*.nbc`` in
    ``__pycache__``), so only the first run after a change pays the compile time.
``nogil=True``
    the kernels release the GIL, so callers may run them from several threads.
``fastmath=False``
    IEEE semantics: no reassociation, no FMA contraction, NaN and inf propagate. refflow is a
    reference implementation; its float64 results are meant to be trusted to ~1e-12.

The kernels take arrays and scalars only, never allocate their outputs (the caller passes them
in) and loop over the leading (batch) axis.

Fast paths and reference paths
------------------------------
Every fast path of refflow keeps a reference path that computes the same thing the plain way,
and one switch chooses between them, read at call time. The paths, by name (:data:`PATHS`):

============  ========  ===================================================================
name          numba     fast path (reference path)
============  ========  ===================================================================
``mlp``       yes       fused bias+ReLU, mask+column-sum and ReLU value/derivative kernels,
                        work-array pool (the plain NumPy MLP passes); bitwise equal
``optim``     yes       fused Adam / SGD update kernels (``_update`` per array); bitwise
``coupling``  yes       the coupling layers' column scatter kernel (fancy indexing); bitwise
``splines``   yes       fused "durkan" kernels, numba knot kernels for the other maps (the
                        NumPy map and the NumPy twins of the knot kernels); to rounding
``made``      no        MADE as degree-sorted block products (the dense masked passes); to
                        rounding
``sampling``  no        incremental MAF sampling (``dim`` sequential MADE passes); to
                        rounding
``monotone``  yes       the monotone transformers' bracketed Newton solve, numba kernel
                        ``monotone_solve`` (its vectorised NumPy twin); to a few ulps
============  ========  ===================================================================

>>> from refflow.kernels import fast_paths, use_fast_paths
>>> use_fast_paths("made")
True
>>> with fast_paths(False):                      # every pass inside on its reference path
...     use_fast_paths("made"), use_fast_paths("splines")
(False, False)
>>> with fast_paths(False, paths=["splines"]):   # only the named ones
...     use_fast_paths("made"), use_fast_paths("splines")
(True, False)

:func:`fast_paths` is a context manager over a :mod:`contextvars` variable, so it is local to
the thread (and asyncio task) that enters it; nested blocks restore the outer setting on exit.
Outside any block the default holds: every fast path is on, except that with
``REFFLOW_DISABLE_NUMBA=1`` the ones that run numba kernels (they would be slow plain-Python
loops) are off; ``made`` and ``sampling``, pure NumPy, stay on. ``fast_paths(True)`` turns the
paths on also in that mode (the parity tests run the plain-Python kernels that way).

Threads
-------
The kernels are elementwise along the batch axis, so :func:`launch` splits big batches into row
slices and runs them from a thread pool (batches of at least ``2 * 2^15`` elements, one slice
per thread). The number of threads is the CPUs available to the process
(``len(os.sched_getaffinity(0))``), or the environment variable ``REFFLOW_NUM_THREADS`` (read at
each call; ``1`` turns the threads off). Results are bit-identical for any number of threads:
every element's arithmetic is the same whichever slice or block it lands in (fast-math off, so
vectorised and scalar loop iterations round alike; tests/parity/test_spline_kernels_fast.py).

The BLAS's threads are decided by the size of the work, in :mod:`refflow.kernels.threads`
(:func:`blas_threads`): one thread for small products, :func:`n_threads` for large ones, the
user's own setting (``OPENBLAS_NUM_THREADS`` and the like, ``REFFLOW_BLAS_THREADS``, a
``threadpoolctl`` limit) left alone. numba's slices and the BLAS never run at the same time
(the caller waits for each), and ``REFFLOW_NUM_THREADS`` bounds both.

The NumPy twin mode
-------------------
With the environment variable ``REFFLOW_DISABLE_NUMBA=1`` set *before* refflow is imported,
:func:`njit` returns the plain Python function unchanged: the kernels then run as ordinary
(slow, loop-by-loop) Python on NumPy scalars, which coverage tools and debuggers can step
through, and numba need not even be installed. Numba's own ``NUMBA_DISABLE_JIT=1`` has the same
effect through numba. Each kernel also has a vectorised NumPy twin (``<kernel>_numpy``), written
independently, that the parity tests compare it with.
"""

import contextlib
import contextvars
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .threads import blas_threads, n_threads

__all__ = ["njit", "NUMBA_DISABLED", "PATHS", "fast_paths", "use_fast_paths", "launch",
           "n_threads", "blas_threads"]

#: True when ``REFFLOW_DISABLE_NUMBA=1`` was set at import time: kernels are plain Python.
NUMBA_DISABLED = os.environ.get("REFFLOW_DISABLE_NUMBA", "").strip() == "1"

#: The fast paths by name, and whether each runs numba kernels (module docstring).
PATHS = {"mlp": True, "optim": True, "coupling": True, "splines": True, "made": False,
         "sampling": False, "monotone": True}

# {name: bool} for the paths set by the enclosing fast_paths blocks; the others take the default.
_FAST_PATHS = contextvars.ContextVar("refflow_fast_paths", default={})


@contextlib.contextmanager
def fast_paths(enabled, paths=None):
    """Run the block with the fast paths on (``True``) or on their reference paths (``False``).

    Parameters
    ----------
    enabled : bool
    paths : iterable of str, optional
        The paths to set (names of :data:`PATHS`); default every one. The others keep the
        setting of the enclosing block (or the default).

    Raises
    ------
    TypeError
        If ``enabled`` is not a bool.
    ValueError
        For an unknown path name.

    Notes
    -----
    Read at call time by every module that has a fast path (:func:`use_fast_paths`); local to
    the current thread or task (:mod:`contextvars`), restored on exit, nestable; also usable as
    a function decorator.
    """
    if not isinstance(enabled, (bool, np.bool_)):
        raise TypeError(f"fast_paths: enabled must be True or False, got {enabled!r}")
    names = list(PATHS) if paths is None else [paths] if isinstance(paths, str) else list(paths)
    unknown = [name for name in names if name not in PATHS]
    if unknown:
        raise ValueError(f"fast_paths: unknown path(s) {unknown}; the paths are {list(PATHS)}")
    token = _FAST_PATHS.set({**_FAST_PATHS.get(), **{name: bool(enabled) for name in names}})
    try:
        yield
    finally:
        _FAST_PATHS.reset(token)


def use_fast_paths(path):
    """Whether the fast path ``path`` (a name of :data:`PATHS`) should run now.

    Returns
    -------
    bool
        The setting of the innermost :func:`fast_paths` block that names ``path``, else the
        default: on, except a path that runs numba kernels when ``REFFLOW_DISABLE_NUMBA=1``.
    """
    state = _FAST_PATHS.get().get(path)
    if state is None:
        return not (PATHS[path] and NUMBA_DISABLED)
    return state


#: Batches of at least this many elements per thread are split across threads by :func:`launch`.
MIN_PER_THREAD = 1 << 15
_POOL = None
_POOL_SIZE = 0
_POOL_LOCK = threading.Lock()


def launch(kernel, arrays, settings, outputs):
    """``kernel(*arrays, *settings, *outputs)``, split by rows over threads for big batches.

    For elementwise kernels that release the GIL (``nogil=True``): row blocks of ``arrays`` and
    ``outputs`` (split along axis 0) run in parallel, so the result is bitwise the same for any
    number of threads. ``settings`` are scalars passed to every call. One thread when numba is
    disabled (plain-Python kernels hold the GIL).
    """
    global _POOL, _POOL_SIZE
    n = arrays[0].shape[0]
    threads = 1 if NUMBA_DISABLED else min(n_threads(), n // MIN_PER_THREAD)
    if threads <= 1:
        kernel(*arrays, *settings, *outputs)
        return
    with _POOL_LOCK:
        if _POOL_SIZE < threads:  # grown when asked for more threads; the old one is let go
            _POOL = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="refflow")
            _POOL_SIZE = threads
        pool = _POOL
    edges = np.linspace(0, n, threads + 1).astype(np.intp)
    jobs = [pool.submit(kernel, *[a[lo:hi] for a in arrays], *settings,
                        *[o[lo:hi] for o in outputs])
            for lo, hi in zip(edges[:-1], edges[1:])]
    for job in jobs:
        job.result()


def njit(fn):
    """Compile ``fn`` with ``numba.njit(cache=True, nogil=True, fastmath=False)``.

    Parameters
    ----------
    fn : callable
        A function of arrays and scalars in numba's nopython subset.

    Returns
    -------
    callable
        The numba dispatcher, or ``fn`` itself when ``REFFLOW_DISABLE_NUMBA=1`` (see the module
        docstring).
    """
    if NUMBA_DISABLED:
        return fn
    import numba  # imported here so that the twin mode runs without numba installed

    return numba.njit(cache=True, nogil=True, fastmath=False)(fn)
