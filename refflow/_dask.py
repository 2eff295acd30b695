"""Lazy scoring and sampling over dask arrays: one task per chunk of rows, the model shipped once.

dask is imported only inside these functions, and only when the caller handed over a dask array
(:func:`is_dask_array` looks at ``sys.modules`` and never imports it), so ``import refflow``
does not import dask.

- :func:`map_rows`: ``getattr(model, method)(block, context=c_block, **options)`` on every row
  chunk of a dask array (``map_blocks``). A copy of the model is put in the graph once, as one
  ``dask.delayed`` key that every task depends on (the scheduler sends it once to each worker
  that needs it, not once per task); later changes to the model do not reach a graph already
  built. Each chunk is computed by the NumPy method itself, so the computed result is the NumPy
  result bit for bit whenever that method's result for a row does not depend on the other rows
  (true of every refflow flow in eval mode: see ``Flow.log_prob``).
- :func:`sample_rows`: ``n`` samples in chunks, chunk ``i`` drawn from
  ``numpy.random.default_rng(SeedSequence(entropy).spawn(n_chunks)[i])``: the computed array
  depends on the seed and the chunk sizes only, never on the scheduler or the number of workers.
- :func:`lazy_mean`: the correctly rounded mean of a 1-D dask array (exact partial sums per
  chunk, :mod:`refflow._exact`), equal to :func:`refflow._exact.exact_mean` of the computed
  array bit for bit.
"""

import copy
import numbers
import sys

import numpy as np

from ._exact import mean_from_sum, partial_sum
from ._validation import check_context_given

__all__ = ["is_dask_array", "float_dtype", "map_rows", "sample_rows", "seed_sequence",
           "lazy_mean", "call_rows", "draw_rows"]


def is_dask_array(x):
    """True for a ``dask.array.Array`` (without importing dask: none exists unless it was)."""
    module = sys.modules.get("dask.array")
    return module is not None and isinstance(x, module.Array)


def float_dtype(dtype, where, name):
    """The dtype rows of ``dtype`` are computed in (``as_float_array``'s rule), or ValueError."""
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return dtype if dtype in (np.float32, np.float64) else np.dtype(np.float64)
    if dtype.kind in "biu":
        return np.dtype(np.float64)
    raise ValueError(f"{where}: {name} must be a real numeric array, got dtype {dtype}")


def _rows(x, where, name, dim):
    """A 2-D dask array with known row chunks and its columns in one chunk."""
    if x.ndim != 2:
        raise ValueError(f"{where}: a dask {name} must be 2-D of shape (n, {dim}), got "
                         f"{x.ndim}-D input of shape {x.shape}")
    if any(np.isnan(c) for c in x.chunks[0]):
        raise ValueError(f"{where}: {name} has unknown chunk sizes; call "
                         f"{name}.compute_chunk_sizes() first")
    if dim is not None and x.shape[1] != dim:
        raise ValueError(f"{where}: expected {name} of shape (n, {dim}), got {x.shape} "
                         f"(dimension {x.shape[1]} does not match {dim})")
    if x.numblocks[1] > 1:
        x = x.rechunk({1: -1})
    return x


def _context(context, row_chunks, where, context_dim, allow_shared=True):
    """``(per-row dask context or None, shared row or None)`` aligned with ``row_chunks``;
    a 1-D context is one row shared by every point (``allow_shared``) or refused."""
    import dask.array as da

    n = sum(row_chunks)
    if not check_context_given(context, context_dim, where, "model", "a context"):
        return None, None
    if not is_dask_array(context):
        context = np.asarray(context)
        if context.ndim == 1:
            if not allow_shared:
                raise ValueError(f"{where}: expected a context of shape (n, {context_dim}), got "
                                 f"{context.shape}")
            if context.shape[0] != context_dim:
                raise ValueError(f"{where}: expected a context of shape ({context_dim},), got "
                                 f"{context.shape}")
            return None, context
        if context.ndim != 2 or context.shape[1] != context_dim:
            raise ValueError(f"{where}: expected a context of shape (n, {context_dim}), got "
                             f"{context.shape}")
    if context.shape[0] != n:
        raise ValueError(f"{where}: the context has {context.shape[0]} rows but there are {n}")
    if not is_dask_array(context):
        context = da.from_array(context, chunks=(tuple(row_chunks), (context_dim,)))
    context = _rows(context, where, "context", context_dim)
    if context.chunks[0] != tuple(row_chunks):
        context = context.rechunk({0: row_chunks})
    return context, None


def call_rows(block, c_block, model, method, shared, options):
    """One task: ``getattr(model, method)(block, context=..., **options)``."""
    context = shared if c_block is None else c_block
    if context is None:
        return getattr(model, method)(block, **options)
    return getattr(model, method)(block, context=context, **options)


def _ship(model):
    """A copy of ``model`` as one graph key (a snapshot: later changes do not reach it)."""
    import dask

    return dask.delayed(copy.deepcopy(model), pure=False, traverse=False)


def map_rows(model, method, x, context=None, *, where, dim, context_dim=None, options=None,
             name="X", allow_shared=True):
    """``getattr(model, method)`` of each row chunk of the dask array ``x``: a lazy ``(n,)``
    float array (one task per chunk, ``map_blocks``), the model in the graph once."""
    import dask.array as da

    x = _rows(x, where, name, dim)
    dtype = float_dtype(x.dtype, where, name)
    c, shared = _context(context, x.chunks[0], where, context_dim, allow_shared)
    args = (x, "ij") + ((c, "ik") if c is not None else (None, None))
    return da.blockwise(call_rows, "i", *args, _ship(model), None, method, None, shared, None,
                        dict(options or {}), None, concatenate=True, dtype=dtype,
                        meta=np.empty((0,), dtype=dtype))


def seed_sequence(random_state, where):
    """A ``numpy.random.SeedSequence`` from None (fresh entropy), an int, a SeedSequence, a
    Generator or a RandomState (a 128-bit seed drawn from either, consuming it)."""
    if random_state is None:
        return np.random.SeedSequence()
    if isinstance(random_state, np.random.SeedSequence):
        return random_state
    if isinstance(random_state, numbers.Integral) and not isinstance(random_state, bool):
        if random_state < 0:
            raise ValueError(f"{where}: random_state must be a non-negative int, got "
                             f"{random_state}")
        return np.random.SeedSequence(int(random_state))
    if isinstance(random_state, np.random.Generator):
        return np.random.SeedSequence(random_state.integers(0, 2 ** 32, size=4, dtype=np.uint64))
    if isinstance(random_state, np.random.RandomState):
        return np.random.SeedSequence(random_state.randint(0, 2 ** 32, size=4, dtype=np.uint64))
    raise TypeError(f"{where}: random_state must be None, an int, a SeedSequence, a Generator "
                    f"or a RandomState, got {type(random_state).__name__}")


def draw_rows(model, method, size, seed, context, options):
    """One task: ``getattr(model, method)(size, Generator(seed), context=..., **options)``."""
    rng = np.random.default_rng(seed)
    if context is None:
        return getattr(model, method)(size, rng, **options)
    return getattr(model, method)(size, rng, context=context, **options)


def _row_chunks(n, chunks, where):
    """Row chunk sizes from an int (rows per chunk) or a tuple of sizes summing to ``n``."""
    if isinstance(chunks, numbers.Integral) and not isinstance(chunks, bool):
        if chunks < 1:
            raise ValueError(f"{where}: chunks must be a positive int, got {chunks}")
        return tuple(min(int(chunks), n - i) for i in range(0, n, int(chunks)))
    try:
        sizes = tuple(int(c) for c in chunks)
    except TypeError:
        raise TypeError(f"{where}: chunks must be an int or a tuple of ints, got "
                        f"{type(chunks).__name__}") from None
    if any(c < 1 for c in sizes) or sum(sizes) != n:
        raise ValueError(f"{where}: chunks must be positive sizes summing to n_samples={n}, "
                         f"got {sizes}")
    return sizes


def sample_rows(model, method, n, dim, random_state, chunks, *, where, context=None,
                context_dim=None, options=None):
    """``n`` samples as a lazy ``(n, dim)`` float64 dask array: chunk ``i`` is
    ``getattr(model, method)(size_i, default_rng(children[i]), ...)`` with
    ``children = seed_sequence(random_state).spawn(n_chunks)``."""
    import dask
    import dask.array as da

    sizes = _row_chunks(n, chunks, where)
    c, shared = _context(context, sizes, where, context_dim)
    c_blocks = [None] * len(sizes) if c is None else list(c.to_delayed().ravel())
    seeds = seed_sequence(random_state, where).spawn(len(sizes))
    shipped = _ship(model)
    options = dict(options or {})
    parts = []
    for size, seed, c_block in zip(sizes, seeds, c_blocks):
        task = dask.delayed(draw_rows, pure=False)(
            shipped, method, size, seed, shared if c_block is None else c_block, options)
        parts.append(da.from_delayed(task, shape=(size, dim), dtype=np.float64,
                                     meta=np.empty((0, 0))))
    return da.concatenate(parts, axis=0)


def _finish_mean(parts):
    n = sum(p[0] for p in parts)
    return mean_from_sum(n, sum(p[1] for p in parts), sum(p[2] for p in parts))


def lazy_mean(values):
    """The correctly rounded mean of a 1-D dask array, as a lazy 0-d dask array."""
    import dask
    import dask.array as da

    parts = [dask.delayed(partial_sum, pure=True)(b) for b in values.to_delayed().ravel()]
    total = dask.delayed(_finish_mean, pure=True)(parts)
    return da.from_delayed(total, shape=(), dtype=np.float64)


def read_npy_rows(path, start, stop):
    """One task: rows ``start:stop`` of a ``.npy`` file, read through a memory map."""
    return np.array(np.load(path, mmap_mode="r")[start:stop])


def npy_rows(path, rows_per_chunk, where):
    """The rows of a 2-D ``.npy`` file as a lazy dask array: each task maps the file and reads
    its own rows (nothing of the data goes through the graph: a process or cluster worker
    reads the file itself, so the workers must see the same path)."""
    import dask
    import dask.array as da

    mapped = np.load(path, mmap_mode="r")          # reads the header only
    if mapped.ndim != 2:
        raise ValueError(f"{where}: {path} holds a {mapped.ndim}-D array of shape "
                         f"{mapped.shape}; expected rows of shape (n, n_features)")
    if mapped.shape[0] == 0:
        raise ValueError(f"{where}: {path} holds no rows")
    float_dtype(mapped.dtype, where, path)
    n, k = mapped.shape
    parts, start = [], 0
    for size in _row_chunks(n, rows_per_chunk, where):
        task = dask.delayed(read_npy_rows, pure=True)(path, start, start + size)
        parts.append(da.from_delayed(task, shape=(size, k), dtype=mapped.dtype,
                                     meta=np.empty((0, 0), dtype=mapped.dtype)))
        start += size
    return da.concatenate(parts, axis=0)


def summarize_block(values, path=None, start=0):
    """One task: ``(Moments of the finite values, count of -inf, count of others)`` of a
    block of scores, after writing it at ``start`` into the ``.npy`` file ``path`` (if any)."""
    from ._exact import Moments

    values = np.asarray(values, dtype=np.float64)
    if path is not None:
        out = np.load(path, mmap_mode="r+")
        out[start:start + values.shape[0]] = values
        out.flush()
        del out
    finite = np.isfinite(values)
    moments = Moments(1).add(values[finite].reshape(-1, 1))
    n_neg_inf = int(np.count_nonzero(values == -np.inf))
    return moments, n_neg_inf, int(values.shape[0] - np.count_nonzero(finite)) - n_neg_inf


def summarize_rows(scores, path=None):
    """Compute the lazy 1-D ``scores`` chunk by chunk (written into ``path``, a ``.npy`` file of
    their shape, if given) and return ``(Moments of the finite scores, count of -inf, count
    of NaN/+inf)``: the scores are never held whole."""
    import dask

    from ._exact import Moments

    tasks, start = [], 0
    for block, size in zip(scores.to_delayed().ravel(), scores.chunks[0]):
        tasks.append(dask.delayed(summarize_block, pure=False)(block, path, start))
        start += size
    total, n_neg_inf, n_other = Moments(1), 0, 0
    for moments, neg, other in dask.compute(*tasks):
        total.merge(moments)
        n_neg_inf += neg
        n_other += other
    return total, n_neg_inf, n_other
