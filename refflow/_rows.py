"""Rows of a data set that need not fit in memory: a ``numpy.memmap`` or a dask array, read by row
ranges and gathered by index without reading the rest.

A :class:`Rows` source hands out C-contiguous float arrays of the dtype ``as_float_array`` would
give (float32 and float64 kept, other real types as float64), so that rows read from it are bit
for bit the rows of the same data held in memory. dask is imported only when the data is a dask
array (:func:`refflow._dask.is_dask_array` never imports it).

- :class:`ArrayRows`: an in-memory array or a ``numpy.memmap`` (rows are read through the
  mapping; the pages read stay in the operating system's page cache, not in the process' heap).
- :class:`DaskRows`: a dask array with known row chunks; a gather of rows runs one dask
  computation per window of rows (each chunk holding some of them gives just those).
- :class:`Standardized`: ``(rows - mean) / scale`` of another source, in float64.
- :class:`Whitened`: ``C^{-1} rows`` of another source for a lower-triangular ``C`` (then
  rotated by an orthogonal ``Q``, if given), row by row (:func:`whiten`: the same bits for a
  row whatever chunk it is read in).
- :func:`covariance`: the exact population covariance of a source's rows in one pass.
- :func:`scan`: one pass over a source, chunk by chunk, that checks every value is finite and
  (optionally) accumulates the exact column moments of :class:`refflow._exact.Moments`; over a
  dask array the chunks are scanned in parallel (exact sums do not depend on the order).
"""

import numpy as np

from ._dask import float_dtype, is_dask_array
from ._exact import CrossMoments, Moments

__all__ = ["out_of_core", "Rows", "ArrayRows", "DaskRows", "RepeatedRows",
           "Standardized", "Whitened", "whiten", "rotate", "covariance", "rows_of", "scan",
           "permutation", "WINDOW_BYTES", "PASS_BYTES"]

#: Bytes of rows gathered from a dask array per computation (a window of mini-batches).
WINDOW_BYTES = 64 << 20
#: Bytes of rows per piece of a sequential pass over a memory-mapped array.
PASS_BYTES = 32 << 20


def out_of_core(x):
    """True for data read piece by piece: a ``numpy.memmap``, a dask array or a :class:`Rows`."""
    return isinstance(x, (np.memmap, Rows)) or is_dask_array(x)


def permutation(gen, n):
    """``gen.permutation(n)``, the same numbers and the same draws from ``gen``, in int32 when
    ``n < 2^31`` (half the memory): ``Generator.permutation(n)`` shuffles ``arange(n)``, and the
    shuffle's draws do not depend on the array's dtype."""
    out = np.arange(n, dtype=np.int32 if n < 2 ** 31 else np.int64)
    gen.shuffle(out)
    return out


class Rows:
    """``n`` rows of ``k`` columns of ``dtype``; subclasses define ``read`` and ``take``.

    Attributes
    ----------
    checked : bool
        True when every value is known to be finite (a scan found no NaN or infinity).
    """

    checked = False

    def __init__(self, n, k, dtype):
        self.n, self.k, self.dtype = int(n), int(k), np.dtype(dtype)

    @property
    def shape(self):
        return (self.n, self.k)

    def read(self, start, stop):
        """Rows ``start:stop`` as a C-contiguous ``(stop - start, k)`` array."""
        raise NotImplementedError

    def take(self, index):
        """Rows ``index`` (integers), in that order, as a C-contiguous array."""
        raise NotImplementedError

    def window(self, unit):
        """Rows to gather at once, a multiple of ``unit`` (``unit`` itself by default)."""
        return unit

    def pieces(self):
        """Row ranges ``(start, stop)`` of a sequential pass."""
        step = max(1, PASS_BYTES // max(1, self.k * self.dtype.itemsize))
        return [(i, min(i + step, self.n)) for i in range(0, self.n, step)]

    def _convert(self, rows):
        return np.ascontiguousarray(rows, dtype=self.dtype)


class ArrayRows(Rows):
    """An in-memory array or a ``numpy.memmap``, read through NumPy's indexing."""

    def __init__(self, x, dtype):
        super().__init__(x.shape[0], x.shape[1], dtype)
        self.x = x

    def read(self, start, stop):
        return self._convert(self.x[start:stop])

    def take(self, index):
        return self._convert(self.x[index])


class RepeatedRows(Rows):
    """One row repeated ``n`` times (a context shared by every point)."""

    def __init__(self, row, n):
        row = np.asarray(row)
        super().__init__(n, row.shape[0], row.dtype)
        self.row = row.reshape(1, -1)
        self.checked = bool(np.isfinite(row).all())

    def read(self, start, stop):
        return np.repeat(self.row, stop - start, axis=0)

    def take(self, index):
        return np.repeat(self.row, len(index), axis=0)


class DaskRows(Rows):
    """A dask array with known row chunks (the columns are put in one chunk)."""

    def __init__(self, x, dtype, where, name):
        if any(np.isnan(c) for c in x.chunks[0]):
            raise ValueError(f"{where}: {name} has unknown chunk sizes; call "
                             f"{name}.compute_chunk_sizes() first")
        if x.numblocks[1] > 1:
            x = x.rechunk({1: -1})
        super().__init__(x.shape[0], x.shape[1], dtype)
        self.x = x
        self.bounds = np.concatenate([[0], np.cumsum(x.chunks[0])]).astype(np.int64)

    def window(self, unit):
        rows = WINDOW_BYTES // max(1, self.k * self.dtype.itemsize)
        return max(unit, rows // unit * unit)

    def pieces(self):
        return [(int(a), int(b)) for a, b in zip(self.bounds[:-1], self.bounds[1:])]

    def read(self, start, stop):
        return self._convert(self.x[start:stop].compute())

    def take(self, index):
        import dask

        index = np.asarray(index, dtype=np.int64)
        order = np.argsort(index, kind="stable")
        wanted = index[order]
        block = np.searchsorted(self.bounds, wanted, side="right") - 1
        cuts = np.flatnonzero(np.diff(block)) + 1
        parts = []
        for rows, b in zip(np.split(wanted, cuts), block[np.r_[0, cuts]] if wanted.size else []):
            parts.append(self.x.blocks[int(b)][rows - self.bounds[b]])
        out = np.empty((index.shape[0], self.k), dtype=self.dtype)
        if parts:
            out[order] = np.concatenate(dask.compute(*parts), axis=0)
        return out


class Standardized(Rows):
    """``(rows - mean) / scale`` of ``source`` in float64 (``mean=None``: float64 rows as
    they are), elementwise as the in-memory ``(X - mean) / scale``."""

    def __init__(self, source, mean=None, scale=None):
        super().__init__(source.n, source.k, np.float64)
        self.source, self.mean, self.scale = source, mean, scale
        self.checked = source.checked

    def window(self, unit):
        return self.source.window(unit)

    def pieces(self):
        return self.source.pieces()

    def _apply(self, rows):
        rows = np.ascontiguousarray(rows, dtype=np.float64)
        if self.mean is None:
            return rows
        with np.errstate(over="ignore", invalid="ignore"):
            return (rows - self.mean) / self.scale

    def read(self, start, stop):
        return self._apply(self.source.read(start, stop))

    def take(self, index):
        return self._apply(self.source.take(index))


def whiten(rows, chol, rotation=None):
    """``w`` with ``chol w_r = s_r`` for every row ``s_r`` of ``rows`` (forward substitution,
    ``w_i = (s_i - sum_{j<i} C_ij w_j) / C_ii``, the sum taken in the order ``j = 0, 1, ...``),
    then, given an orthogonal ``rotation`` ``Q``, ``u = Q w`` (``u_i = sum_j Q_ij w_j``, the
    same order).

    Elementwise over the rows (no BLAS call, whose blocking may depend on how many rows it is
    given): a row's result is the same bits in any chunk, so a streamed fit whitens exactly as
    the in-memory one."""
    rows = np.asarray(rows, dtype=np.float64)
    out = np.empty_like(rows)
    with np.errstate(over="ignore", invalid="ignore"):
        for i in range(rows.shape[1]):
            acc = rows[:, i].copy()
            for j in range(i):
                acc -= chol[i, j] * out[:, j]
            out[:, i] = acc / chol[i, i]
    return out if rotation is None else rotate(out, rotation)


def rotate(rows, rotation):
    """``u = Q w`` for every row ``w`` of ``rows`` and a square ``rotation`` ``Q`` (``u_i =
    sum_j Q_ij w_j``, the sum taken in the order ``j = 0, 1, ...``), elementwise as
    :func:`whiten`."""
    out = np.empty_like(rows)
    with np.errstate(over="ignore", invalid="ignore"):
        for i in range(rows.shape[1]):
            acc = rotation[i, 0] * rows[:, 0]
            for j in range(1, rows.shape[1]):
                acc += rotation[i, j] * rows[:, j]
            out[:, i] = acc
    return out


class Whitened(Rows):
    """:func:`whiten` of the rows of a float64 ``source`` by a lower-triangular ``chol`` (and
    an orthogonal ``rotation``, if given)."""

    def __init__(self, source, chol, rotation=None):
        super().__init__(source.n, source.k, np.float64)
        self.source, self.chol = source, np.asarray(chol, dtype=np.float64)
        self.rotation = None if rotation is None else np.asarray(rotation, dtype=np.float64)

    def window(self, unit):
        return self.source.window(unit)

    def pieces(self):
        return self.source.pieces()

    def read(self, start, stop):
        return whiten(self.source.read(start, stop), self.chol, self.rotation)

    def take(self, index):
        return whiten(self.source.take(index), self.chol, self.rotation)


def _products_block(block, convert):
    return CrossMoments(block.shape[1]).add(convert(block))


def covariance(rows):
    """The correctly rounded population covariance of the (finite) rows of ``rows`` from the
    exact sums of :class:`refflow._exact.CrossMoments`, in one pass: the same matrix for the
    data in memory, memory-mapped or in dask chunks. Over a dask array (also standardised) the
    chunks are summed in parallel."""
    base = rows.source if isinstance(rows, Standardized) else rows
    if isinstance(base, DaskRows):
        import dask

        def convert(block):
            block = base._convert(block)
            return rows._apply(block) if rows is not base else block

        tasks = [dask.delayed(_products_block, pure=True)(block, convert)
                 for block in base.x.to_delayed().ravel()]
        parts = dask.compute(*tasks)
    else:
        parts = (CrossMoments(rows.k).add(rows.read(a, b)) for a, b in rows.pieces())
    total = CrossMoments(rows.k)
    for part in parts:
        total.merge(part)
    return total.covariance()


def rows_of(x, where, name, dim=None):
    """``x`` (a ``numpy.memmap``, a dask array, an array or a :class:`Rows`) as a source of
    2-D rows, its shape and dtype checked without reading the data."""
    if isinstance(x, Rows):
        rows = x
    elif is_dask_array(x) or isinstance(x, np.ndarray):
        if x.ndim != 2:
            raise ValueError(f"{where}: {name} must be a 2-D array of shape (n, "
                             f"{'dim' if dim is None else dim}), got {x.ndim}-D input of "
                             f"shape {x.shape}")
        dtype = float_dtype(x.dtype, where, name)
        rows = DaskRows(x, dtype, where, name) if is_dask_array(x) else ArrayRows(x, dtype)
    else:
        raise TypeError(f"{where}: {name} must be an array, a numpy.memmap or a dask array, "
                        f"got {type(x).__name__}")
    if dim is not None and rows.k != dim:
        raise ValueError(f"{where}: expected {name} of shape (n, {dim}), got {rows.shape} "
                         f"(dimension {rows.k} does not match {dim})")
    if rows.n == 0:
        raise ValueError(f"{where}: {name} is empty")
    return rows


def _scan_block(block, start, dtype, with_moments):
    """``(Moments or None, first non-finite (row, column) or None)`` of one block."""
    block = np.ascontiguousarray(block, dtype=dtype)
    finite = np.isfinite(block)
    if not finite.all():
        r, c = np.argwhere(~finite)[0]
        return None, (start + int(r), int(c))
    if not with_moments:
        return None, None
    return Moments(block.shape[1]).add(block), None


def scan(rows, where, name, with_moments=True):
    """One pass over ``rows``: ValueError at the first NaN or infinity, else the exact column
    moments (``with_moments``) or None; marks the source ``checked``."""
    if isinstance(rows, Standardized) and rows.mean is None:
        rows = rows.source
    if isinstance(rows, DaskRows):
        import dask

        blocks = rows.x.to_delayed().ravel()
        tasks = [dask.delayed(_scan_block, pure=True)(block, start, rows.dtype, with_moments)
                 for block, (start, _) in zip(blocks, rows.pieces())]
        results = dask.compute(*tasks)
    else:
        results = (_scan_block(rows.read(a, b), a, rows.dtype, with_moments)
                   for a, b in rows.pieces())
    total = Moments(rows.k) if with_moments else None
    for moments, bad in results:
        if bad is not None:
            raise ValueError(f"{where}: {name} holds NaN or infinity (the first at row "
                             f"{bad[0]}, column {bad[1]})")
        if total is not None:
            total.merge(moments)
    rows.checked = True
    return total
