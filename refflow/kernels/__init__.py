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

Threads
-------
The kernels are elementwise along the batch axis, so callers split big batches into row slices
and run them from a thread pool (``refflow.splines._launch``: batches of at least ``2 * 2^15``
elements, one slice per thread). The number of threads is the CPUs available to the process
(``len(os.sched_getaffinity(0))``), or the environment variable ``REFFLOW_NUM_THREADS`` (read at
each call; ``1`` turns the threads off). Results are bit-identical for any number of threads:
every element's arithmetic is the same whichever slice or block it lands in (fast-math off, so
vectorised and scalar loop iterations round alike; tests/parity/test_spline_kernels_fast.py).

The NumPy twin mode
-------------------
With the environment variable ``REFFLOW_DISABLE_NUMBA=1`` set *before* refflow is imported,
:func:`njit` returns the plain Python function unchanged: the kernels then run as ordinary
(slow, loop-by-loop) Python on NumPy scalars, which coverage tools and debuggers can step
through, and numba need not even be installed. Numba's own ``NUMBA_DISABLE_JIT=1`` has the same
effect through numba. Each kernel also has a vectorised NumPy twin (``<kernel>_numpy``), written
independently, that the parity tests compare it with.
"""

import os

__all__ = ["njit", "NUMBA_DISABLED"]

#: True when ``REFFLOW_DISABLE_NUMBA=1`` was set at import time: kernels are plain Python.
NUMBA_DISABLED = os.environ.get("REFFLOW_DISABLE_NUMBA", "").strip() == "1"


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
