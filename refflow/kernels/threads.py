"""Thread counts, decided in one place: numba's row slices and the BLAS's threads.

Two kinds of threads run refflow's arithmetic, one after the other (the caller waits for each),
never at the same time:

- numba's row slices (:func:`refflow.kernels.launch`): batches of at least ``2 * 2^15``
  elements are split over :func:`n_threads` threads;
- the BLAS (NumPy's and SciPy's OpenBLAS): matrix products, triangular solves.

The BLAS policy
---------------
A BLAS started with one thread per CPU (OpenBLAS's default) wakes its threads for every product
above a tiny size. For the products of a small flow (``256 x 64`` times ``64 x 64``, a ``2 x 2``
triangular solve) the hand-off costs far more than the arithmetic, and on a busy machine a
second thread that has to wait for a core costs milliseconds per call: a small NSF trained for
5 epochs spent most of its time so. So refflow decides the BLAS thread count by the size of the
work, once per call of :meth:`Flow.log_prob <refflow.Flow.log_prob>`, ``sample``,
``sample_and_log_prob``, ``log_prob_vjp`` (and its pullback), ``nll_and_grad``, ``kl`` and
``kl_and_grad`` (the flow's passes; the user's target runs outside), and once per epoch of
:func:`refflow.fit` (its steps and validation passes do not decide again; the callback runs
outside):

- the work is ``rows x`` the size of the flow's largest weight matrix (its largest parameter
  of two or more dimensions), ``rows`` the rows of one pass (the batch, or the chunk);
- below :data:`SMALL_WORK` (``2^22``: a ``256 x 128`` by ``128 x 128`` product) the BLAS runs
  on one thread; from there on with :func:`n_threads` threads (``REFFLOW_NUM_THREADS`` or every
  CPU this process may use), so the two kinds of threads share one budget;
- only NumPy's own BLAS takes more than one thread: a second BLAS library (SciPy's wheels
  bring their own OpenBLAS, used for the triangular solves) runs on one thread inside the
  call, since two libraries' threads fight for the cores (:func:`library_limits`).

The user decides first. refflow leaves the BLAS thread count alone when

- any of :data:`BLAS_VARS` (``OPENBLAS_NUM_THREADS``, ``OMP_NUM_THREADS``,
  ``MKL_NUM_THREADS``, ...) is set in the environment;
- ``REFFLOW_BLAS_THREADS=off``; an integer ``REFFLOW_BLAS_THREADS=N`` instead runs every
  refflow call with ``N`` BLAS threads whatever its size; ``auto`` (or unset) is the policy
  above. Read at each call;
- a loaded BLAS library does not run its default count (one thread per CPU this process may
  use) when the call starts: the user has set it (``threadpoolctl.threadpool_limits``,
  ``openblas_set_num_threads``, ...), and that limit holds inside the call. A limit equal to
  the default cannot be told from no limit.

The count is restored when the call returns (or raises). It is process-wide, as the BLAS's own
setting is: two Python threads calling refflow at once may see each other's setting (the
second then finds a non-default count and leaves it alone). Results do not depend on the
count: OpenBLAS splits a product's rows and columns among its threads, never the sum over the
inner dimension, so every entry is computed by the same sequence of operations
(tests/test_threads.py checks a seeded fit bit for bit).

>>> from refflow.kernels.threads import blas_limit, SMALL_WORK
>>> blas_limit(SMALL_WORK - 1, environ={}, current=[n_threads()])
1
>>> blas_limit(SMALL_WORK, environ={}, current=[n_threads()]) == n_threads()
True
>>> blas_limit(1, environ={"OPENBLAS_NUM_THREADS": "2"}, current=[2]) is None  # the user's
True
"""

import contextlib
import contextvars
import functools
import os
import sys
import threading

__all__ = ["SMALL_WORK", "BLAS_VARS", "n_threads", "cpus", "blas_setting", "blas_limit",
           "library_limits", "largest_weight", "blas_threads"]

#: Work (rows x largest weight size) below which the BLAS runs on one thread. At 2^22
#: multiply-adds a product takes ~0.1 ms on one core, about where waking a second thread stops
#: costing more than it saves; a flow trained on 2-D toy data sits far below it, the MAF of the
#: benchmarks (dim 64, hidden 256, batch 512: 2^25) well above.
SMALL_WORK = 1 << 22

#: Environment variables that set a BLAS's thread count: when any is set, refflow leaves the
#: BLAS alone.
BLAS_VARS = ("OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
             "BLIS_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")

# True inside a refflow call that has decided the BLAS threads: the calls it makes do not decide
# again (per thread and asyncio task, as contextvars are).
_DECIDED = contextvars.ContextVar("refflow_blas_decided", default=False)
_LOCK = threading.Lock()
_CONTROLLER = [None, -1]  # [threadpoolctl controller of the BLAS libraries, len(sys.modules)]


def cpus():
    """The CPUs this process may run on (``sched_getaffinity``: a container or ``taskset``
    limit, not the host's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def n_threads(environ=None):
    """Threads for large work (numba's row slices, large BLAS products):
    ``REFFLOW_NUM_THREADS`` if set to a positive integer, else :func:`cpus`.
    ``environ``: the environment to read (default ``os.environ``)."""
    env = (os.environ if environ is None else environ).get("REFFLOW_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) >= 1:
        return int(env)
    return cpus()


def blas_setting(environ=None):
    """``REFFLOW_BLAS_THREADS``: ``"auto"`` (unset or empty), ``"off"`` or a positive int.

    Raises
    ------
    ValueError
        For any other value.
    """
    environ = os.environ if environ is None else environ
    value = environ.get("REFFLOW_BLAS_THREADS", "").strip().lower()
    if value in ("", "auto"):
        return "auto"
    if value == "off":
        return "off"
    if value.isdigit() and int(value) >= 1:
        return int(value)
    raise ValueError(f"refflow: REFFLOW_BLAS_THREADS must be 'auto', 'off' or a positive "
                     f"integer, got {value!r}")


def blas_limit(work, *, environ=None, current=()):
    """The BLAS thread count refflow sets for ``work`` multiply-adds, or None (leave it).

    Parameters
    ----------
    work : int
        Rows of one pass times the size of the largest weight matrix.
    environ : mapping, optional
        The environment (default ``os.environ``).
    current : sequence of int, or a callable returning one
        The thread counts of the loaded BLAS libraries now (a callable is called only when
        the environment leaves the decision to refflow).

    Returns
    -------
    int or None
        None when a variable of :data:`BLAS_VARS` is set, with ``REFFLOW_BLAS_THREADS=off``,
        or when a count in ``current`` is not the default (:func:`cpus`); else the integer
        ``REFFLOW_BLAS_THREADS``, or 1 below :data:`SMALL_WORK` and :func:`n_threads` (at
        most :func:`cpus`) from there on.

    Raises
    ------
    ValueError
        For a ``REFFLOW_BLAS_THREADS`` that is not ``auto``, ``off`` or a positive integer.
    """
    environ = os.environ if environ is None else environ
    if any(environ.get(var) for var in BLAS_VARS):
        return None
    setting = blas_setting(environ)
    if setting == "off":
        return None
    default = cpus()
    if any(count != default for count in (current() if callable(current) else current)):
        return None
    if setting != "auto":
        return setting
    return 1 if work < SMALL_WORK else min(n_threads(environ), default)


def largest_weight(arrays):
    """The size of the largest array of two or more dimensions in ``arrays`` (0 if none)."""
    return max((a.size for a in arrays if getattr(a, "ndim", 0) >= 2), default=0)


def _blas_controller():
    """threadpoolctl's controller of the loaded BLAS libraries; built again when modules have
    been imported since (a new library may have been loaded)."""
    from threadpoolctl import ThreadpoolController

    with _LOCK:
        controller, n_modules = _CONTROLLER
        if controller is None or n_modules != len(sys.modules):
            controller = ThreadpoolController().select(user_api="blas")
            _CONTROLLER[:] = [controller, len(sys.modules)]
        return controller


@contextlib.contextmanager
def blas_threads(work):
    """Run the block with the BLAS thread count :func:`blas_limit` picks for ``work``.

    Entered once per refflow call (module docstring); a block inside another one changes
    nothing. Costs a few microseconds on an idle machine when it leaves the count alone, some
    ten more when it sets and restores it (a threadpoolctl limit on a kept controller).
    """
    if _DECIDED.get():
        yield
        return
    token = _DECIDED.set(True)
    changed = []
    try:
        counts = []

        def current():
            counts.extend(lib.get_num_threads() for lib in _blas_controller().lib_controllers)
            return counts

        limit = blas_limit(work, current=current)
        if limit is not None:
            libs = _blas_controller().lib_controllers
            paths = [lib.filepath for lib in libs]
            # an integer REFFLOW_BLAS_THREADS is the user's count for every library
            wanted_counts = (library_limits(limit, paths) if blas_setting() == "auto"
                             else [limit] * len(libs))
            for lib, count, wanted in zip(libs, counts, wanted_counts):
                if count != wanted:
                    lib.set_num_threads(wanted)
                    changed.append((lib, count))
        yield  # with the user's setting, or the counts wanted
    finally:
        for lib, count in reversed(changed):
            lib.set_num_threads(count)
        _DECIDED.reset(token)


@functools.lru_cache(maxsize=None)
def _under_numpy(path):
    """True for a file under NumPy's package directory or its wheels' library directory
    (``numpy.libs``). Cached: neither moves while the process runs, and the check runs in
    every refflow call with large work (``os.path.realpath`` costs file-system calls)."""
    import numpy

    root = os.path.dirname(os.path.realpath(numpy.__file__))
    return os.path.realpath(path).startswith((root + os.sep, root + ".libs" + os.sep))


def library_limits(limit, paths):
    """The thread count for each BLAS library (by its file ``paths``) when refflow's policy
    picks ``limit``: ``limit`` for NumPy's own BLAS (the one under NumPy's directory, or
    ``numpy.libs``; where the products of the networks run) and 1 for any other (SciPy's
    wheels bring a second OpenBLAS, which refflow uses only for the ``d x d`` triangular
    solves of its linear layers). Two libraries with threads of their own fight for the cores:
    each one's idle threads spin after its call while the other's want them, and an NSF
    alternating products and solves ran 2.4-17 times slower so on 2 cores (DEVELOPERS.md,
    "Threads"). With one library, or
    ``limit`` 1, every library gets ``limit``; with several and none of them NumPy's, 1.

    >>> library_limits(2, ["/usr/lib/libopenblas.so"])
    [2]
    """
    if limit == 1 or len(paths) <= 1:
        return [limit] * len(paths)
    return [limit if _under_numpy(path) else 1 for path in paths]
