r"""Degree-ordered incremental evaluation of a :class:`~refflow.nn.MADE` for sequential sampling.

Sampling a masked autoregressive layer fixes its coordinates one at a time, in the order of their
MADE degrees ``m = 1..D``: the coordinate of degree ``k + 1`` is a function of its own MADE
outputs, which depend only on the coordinates of degree ``<= k``. Running a full MADE pass per
coordinate (the reference, ``MADE._sample_passes``) costs ``D`` density
passes. But a hidden unit of degree ``k`` depends only on the inputs of degree ``<= k`` (masks
``out >= in``), so it is final as soon as those are known: this module computes every unit
exactly once, in degree order.

Layout. Every layer's units (and the inputs: context first, degree 0, then the coordinates by
degree) are sorted by degree, stably; the output unit ``i * n_params + p`` gets the *effective*
degree ``m(i) - 1`` (its mask is strict, ``out > in``), so that every layer obeys the same rule
"a unit of degree ``k`` reads the units of degree ``<= k`` of the layer below". The units of
degree ``<= k`` of a sorted layer are then a prefix and those of degree ``k`` a contiguous range.
Buffers are feature-major (``(units, rows)``), so both are contiguous row blocks. Step ``k =
0..D-1`` computes, layer by layer, the units of degree ``k``, then the coordinate of degree
``k + 1`` from its ``n_params`` outputs (the layer's ``sample_coordinate`` hook).

Blocking. Degrees are taken in blocks ``[k0, k1)`` of ``_BLOCK`` degrees. At the start of a
block the contribution of the units of degree ``< k0`` (all known) to every unit of the block,
plus the bias, is one GEMM per layer with ``_BLOCK``-degree-wide output; inside the block each
step adds only the units of degree ``k0..k`` (a small GEMM). This is the same sum as the
reference's dot product over the masked row (masked weights are exactly 0), split in two
partial sums, so results agree with the reference passes to round-off (summation order only).

Row chunks. Rows are processed in chunks of exactly ``_CHUNK`` rows (the last one padded by
repeating its last row; batches smaller than ``_CHUNK`` use one chunk of the next power of two),
so that every GEMM has the same shape however the caller splits a large batch: OpenBLAS picks its
kernel (hence its summation order) by shape, and ``Flow.sample`` must give the same bits in
``batch_size`` chunks as in one pass (DEVELOPERS.md, "Chunking"). The chunk's buffers are
allocated once per call and reused.

Cost: the masked multiply-adds of one MADE pass (about half of a dense pass) plus ``D`` small
steps of Python per layer and chunk, instead of ``D`` dense passes.
"""

import numpy as np

__all__ = ["made_sample"]

_CHUNK = 1024   # rows per chunk: buffers stay in L2/L3, Python overhead per step amortised
_BLOCK = 8      # degrees per block: the block GEMMs are ~_BLOCK x (units per degree) wide
_MIN_CHUNK = 8  # smallest chunk (a power of two) for small batches


def _layer_plan(made, dtype):
    """Sorted, masked weight copies and degree offsets of every layer, in ``dtype``.

    Returns ``(layers, n_in, in_perm)``: per layer ``(V, b, start, prev_end, hidden)`` with ``V``
    the masked weights with rows (units) and columns (inputs) sorted by degree, ``b`` the sorted
    bias as a column, ``start[k]`` the number of units of (effective) degree ``< k`` for
    ``k = 0..D`` and ``prev_end[k]`` the number of units of the layer below with degree ``<= k``
    (``k = 0..D-1``); ``in_perm`` maps sorted input columns to MADE's ``[x, context]`` columns.
    """
    dim, cf = made.dim, made.context_features
    in_deg = np.concatenate([made.input_degrees, np.zeros(cf, dtype=np.int64)])
    prev_perm = np.argsort(in_deg, kind="stable")           # context first, then by degree
    prev_sorted = in_deg[prev_perm]
    in_perm = prev_perm
    out_deg = [*made.hidden_degree_list, np.repeat(made.input_degrees, made.n_params) - 1]
    n_hidden = len(made.hidden_degree_list)
    ks = np.arange(dim + 1)
    layers = []
    for l, (key_w, key_b, mask, deg) in enumerate(zip(made._w_keys, made._b_keys, made.masks,
                                                      out_deg)):
        perm = np.argsort(deg, kind="stable")
        srt = deg[perm]
        w = made.params[key_w] * mask                       # masked, as _masked_weights does
        v = np.ascontiguousarray(w[perm][:, prev_perm], dtype=dtype)
        b = np.ascontiguousarray(made.params[key_b][perm], dtype=dtype)[:, None]
        start = np.searchsorted(srt, ks, side="left")
        prev_end = np.searchsorted(prev_sorted, ks[:-1], side="right")
        layers.append((v, b, start, prev_end, l < n_hidden))
        prev_perm, prev_sorted = perm, srt
    return layers, in_perm


def _chunk_rows(n):
    if n >= _CHUNK:
        return _CHUNK
    return max(_MIN_CHUNK, 1 << (int(n) - 1).bit_length())


def made_sample(made, z, context, sample_coordinate, sampling_order):
    """Sample a masked autoregressive layer by degree-ordered incremental MADE evaluation.

    Parameters
    ----------
    made : refflow.nn.MADE
        The conditioner (a plain MADE: masked dense layers).
    z : ndarray of shape (n, dim)
        Validated, C-contiguous, float dtype (the compute dtype).
    context : ndarray of shape (n, context_features) or None
    sample_coordinate : callable
        ``sample_coordinate(z_i, out_i) -> x_i`` with ``z_i`` of shape ``(m,)`` and ``out_i``
        ``(m, n_params)`` (both C-contiguous), the layer's elementwise map in the sampling
        direction.
    sampling_order : ndarray of int
        The coordinates by increasing degree (``argsort(made.input_degrees)``).

    Returns
    -------
    x : ndarray of shape (n, dim)
        Every coordinate fixed.
    out : ndarray of shape (n, dim, n_params)
        MADE's outputs at ``x`` (all final once the loop ends).
    """
    dtype = z.dtype
    n, dim = z.shape
    cf, n_par = made.context_features, made.n_params
    x = np.empty((n, dim), dtype=dtype)
    out = np.empty((n, dim, n_par), dtype=dtype)
    if n == 0:
        return x, out
    layers, in_perm = _layer_plan(made, dtype)
    act = made._act.value
    rows = _chunk_rows(n)
    n_in = dim + cf
    u = np.empty((n_in, rows), dtype=dtype)                  # sorted inputs, feature-major
    zt = np.empty((dim, rows), dtype=dtype)
    acc = [np.empty((v.shape[0], rows), dtype=dtype) for v, *_ in layers]
    hid = [np.empty_like(a) if hidden else None for a, (*_, hidden) in zip(acc, layers)]
    last = acc[-1]
    ctx_cols = in_perm[:cf] - dim                            # context columns, sorted order
    for r0 in range(0, n, rows):
        r1 = min(r0 + rows, n)
        m = r1 - r0
        zt[:, :m] = z[r0:r1, sampling_order].T
        if cf:
            u[:cf, :m] = context[r0:r1][:, ctx_cols].T
        if m < rows:                                         # pad with copies of the last row
            zt[:, m:] = zt[:, m - 1:m]
            if cf:
                u[:cf, m:] = u[:cf, m - 1:m]
        for k0 in range(0, dim, _BLOCK):
            k1 = min(k0 + _BLOCK, dim)
            below = u
            for (v, b, start, prev_end, hidden), a, h in zip(layers, acc, hid):
                s0, s1 = start[k0], start[k1]
                if s1 > s0:
                    p = prev_end[k0 - 1] if k0 > 0 else 0    # units below of degree < k0
                    # bias + contribution of every unit below of degree < k0 (all known)
                    np.matmul(v[s0:s1, :p], below[:p], out=a[s0:s1])
                    a[s0:s1] += b[s0:s1]
                below = h
            for k in range(k0, k1):
                below = u
                for (v, b, start, prev_end, hidden), a, h in zip(layers, acc, hid):
                    s0, s1 = start[k], start[k + 1]
                    if s1 > s0:
                        p0 = prev_end[k0 - 1] if k0 > 0 else 0
                        p1 = prev_end[k]
                        if p1 > p0:                          # units below of degree k0..k
                            a[s0:s1] += v[s0:s1, p0:p1] @ below[p0:p1]
                        if hidden:
                            h[s0:s1] = act(a[s0:s1])
                    below = h
                out_k = np.ascontiguousarray(last[k * n_par:(k + 1) * n_par].T)
                u[cf + k] = sample_coordinate(zt[k], out_k)
        x[r0:r1, sampling_order] = u[cf:, :m].T
        out[r0:r1, sampling_order, :] = last[:, :m].reshape(dim, n_par, m).transpose(2, 0, 1)
    return x, out
