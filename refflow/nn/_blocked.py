r"""Degree-sorted block products for :class:`refflow.nn.MADE` (the ``made`` fast path).

A MADE mask ``M[o, i] = [m_out(o) >= m_in(i)]`` (``>`` for the output layer) becomes
block-triangular once the units of every layer are sorted by degree: a group of output units
whose largest degree is ``D`` sees only the prefix of the sorted inputs of degree ``<= D``
(``< D``), and an input unit of degree ``d`` is seen only by the output units of degree
``>= d`` (``> d``), a contiguous range of the sorted outputs. So a layer ``a = h V^T + b``
(``V = W * M``) is, per group ``[o0, o1)`` of outputs with input prefix ``P``::

    a[:, o0:o1] = h[:, :P] V[o0:o1, :P]^T                      (forward)
    W_bar[o0:o1, :P] = g[:, o0:o1]^T h[:, :P],  0 beyond P      (weight gradient, then * M)
    h_bar[:, i0:i1] = g[:, lo:hi] V[lo:hi, i0:i1]               (input cotangent per input group)

with ``[lo, hi)`` the outputs that see input ``i0`` (the one of least degree of the group).
The products skip the masked zeros outside the prefixes (about half of a hidden layer's
weights for cyclic degrees, minus the zeros left inside the blocks); everything in a block is
the same sum as the dense product's restricted to the nonzero terms, so the results agree
with the dense pass to round-off (summation order only).

Activations stay in sorted order through the network, ``(batch, units)`` as in the dense
pass: the plan permutes only the network's input ``[context, x]`` (context columns have degree
0, first), its output (only when the output degrees are not already monotone in the original
layout: natural and reverse orders need no permutation; a descending layout puts the suffixes
at the front, which works the same), and the cotangents of both.

Layout and determinism. Units-major activations ``(units, batch)`` make every block contiguous
and measured 1.3-1.6x faster per block product, but put the batch on the GEMMs' column side,
where OpenBLAS 0.3.31 sums in an order that depends on the column count (remainder kernels):
row chunks of a pass were then not bit-identical to the whole pass (``tests/test_memory.py``),
so the batch stays the GEMMs' row count (bit-identical for chunks above 600 rows).

Weights are gathered once per pass into the sorted layout (one ``take`` with a precomputed
flat index, times the sorted mask); gradients are gathered back. The number of groups per
layer (:data:`GROUPS`) was chosen from measured speed (fewer, larger blocks run nearer the
GEMM rate; more skip more zeros): see :func:`_n_groups`.
"""

import numpy as np

#: Groups per side of a layer (outputs for the forward and weight-gradient blocks, inputs for
#: the input-cotangent blocks). Measured on ``MADE(64, (256, 256))`` vjp + pullback, batch
#: 512, n_params 2 and 23, one OpenBLAS thread, medians interleaved with the dense pass on a
#: loaded machine: G = 4 was best (1.18-1.24x the dense pass); G = 1, 2, 3, 6, 8 gave
#: 0.86-1.13x (G = 1 is the sorted dense product: only the permutation overhead).
GROUPS = 4
#: No group narrower than this many units (a block of few columns runs far below the GEMM
#: rate, and OpenBLAS's small-matrix kernel, which sums in another order, takes GEMMs with
#: few output columns: keeping blocks wide keeps row-chunked passes bit-identical).
MIN_WIDTH = 16


def _n_groups(n_units):
    """Number of groups for a side of ``n_units`` sorted units."""
    return max(1, min(GROUPS, n_units // MIN_WIDTH))


def _split(degrees, n_groups):
    """Boundaries ``[0, ..., len(degrees)]`` of ``n_groups`` near-equal contiguous groups of
    sorted (monotone) ``degrees``, each inner boundary moved to the nearest change of degree
    (a group that ends inside a run of one degree pays for that degree's prefix anyway)."""
    n = len(degrees)
    if n == 0:
        return [0, 0]
    changes = np.flatnonzero(np.diff(degrees)) + 1         # positions where the degree changes
    bounds = [0]
    for g in range(1, n_groups):
        target = round(g * n / n_groups)
        if changes.size:
            c = int(changes[np.argmin(np.abs(changes - target))])
            if c > bounds[-1] and n - c >= 1:
                bounds.append(c)
    bounds.append(n)
    return sorted(set(bounds))


class _LayerPlan:
    """One masked layer in sorted order.

    ``w_index`` maps the sorted ``(n_out, n_in)`` weight to flat indices of the original one;
    ``g_index`` the original back to the sorted one (for gradients); ``out_perm`` the sorted
    outputs to original output units (bias gather); ``out_inv`` its inverse.
    ``groups`` are ``(o0, o1, P)``; ``in_groups`` are ``(i0, i1, lo, hi)``.
    """

    def __init__(self, out_perm, in_perm, d_out, d_in, strict):
        n_out, n_in = len(out_perm), len(in_perm)
        self.n_out, self.n_in = n_out, n_in
        self.shape = (n_out, n_in)
        self.out_perm = out_perm
        self.out_inv = np.argsort(out_perm)
        self.in_inv = np.argsort(in_perm)
        self.identity_out = bool(np.array_equal(out_perm, np.arange(n_out)))
        self.w_index = (out_perm[:, None] * n_in + in_perm[None, :]).ravel()
        self.g_index = (self.out_inv[:, None] * n_in + self.in_inv[None, :]).ravel()
        ds_out, ds_in = d_out[out_perm], d_in[in_perm]       # sorted degrees
        mask = (ds_out[:, None] > ds_in[None, :]) if strict else \
            (ds_out[:, None] >= ds_in[None, :])
        self.mask = mask.astype(np.float64)
        side = "left" if strict else "right"
        groups = []
        bounds = _split(ds_out, _n_groups(n_out))
        for o0, o1 in zip(bounds[:-1], bounds[1:]):
            top = int(ds_out[o0:o1].max())
            groups.append((o0, o1, int(np.searchsorted(ds_in, top, side=side))))
        self.groups = groups
        in_groups = []
        bounds = _split(ds_in, _n_groups(n_in))
        for i0, i1 in zip(bounds[:-1], bounds[1:]):
            low = ds_in[i0]                                  # least degree of the group
            seen = np.flatnonzero((ds_out > low) if strict else (ds_out >= low))
            if seen.size == 0:
                lo = hi = 0
            else:
                lo, hi = int(seen[0]), int(seen[-1]) + 1
                if hi - lo != seen.size:                     # never for monotone ds_out
                    raise AssertionError("MADE block plan: outputs seeing an input group are "
                                         "not contiguous")
            in_groups.append((i0, i1, lo, hi))
        self.in_groups = in_groups
        self.masked_macs = sum((o1 - o0) * p for o0, o1, p in groups)  # per row, forward
        self._mask_cache = {}

    def mask_as(self, dtype):
        m = self._mask_cache.get(dtype)
        if m is None:
            m = self.mask.astype(dtype)
            self._mask_cache[dtype] = m
        return m

    def gather(self, w, dtype):
        """Sorted masked weight ``(W * M)[out_perm][:, in_perm]`` in ``dtype``, contiguous.

        The product by 0/1 is exact in float64, so casting after it equals masking after the
        cast (the reference pass's order)."""
        v = np.empty(self.shape, dtype=dtype)
        np.multiply(np.take(w.ravel(), self.w_index).reshape(self.shape), self.mask, out=v)
        return v

    def matmul(self, h, v, out):
        """``out = h V^T`` by groups (``h`` sorted inputs, ``out`` ``(n, n_out)``); each
        block is written in place (a column block of ``out``), no accumulation."""
        for o0, o1, p in self.groups:
            if p == 0:
                out[:, o0:o1] = 0
            else:
                np.matmul(h[:, :p], v[o0:o1, :p].T, out=out[:, o0:o1])
        return out

    def input_cotangent(self, g, v, dtype):
        """``h_bar = g V`` by input groups, each written once (no accumulation)."""
        hb = np.empty((g.shape[0], self.n_in), dtype=dtype)
        for i0, i1, lo, hi in self.in_groups:
            if hi == lo:
                hb[:, i0:i1] = 0
            else:
                np.matmul(g[:, lo:hi], v[lo:hi, i0:i1], out=hb[:, i0:i1])
        return hb

    def weight_gradient(self, g, h, dtype):
        """``(g^T h) * M`` by groups in sorted order, returned in the original layout, float64.

        Entries beyond a group's prefix are masked (zero) and are written as 0 directly."""
        gs = np.empty(self.shape, dtype=dtype)
        m = self.mask_as(dtype)
        for o0, o1, p in self.groups:
            blk = gs[o0:o1, :p]
            if p:
                np.matmul(g[:, o0:o1].T, h[:, :p], out=blk)
                blk *= m[o0:o1, :p]
            gs[o0:o1, p:] = 0
        out = np.take(gs.ravel(), self.g_index).reshape(self.shape)
        return out if dtype == np.float64 else out.astype(np.float64)


class Plan:
    """The sorted layout of one MADE: a :class:`_LayerPlan` per weight and the input / output
    permutations. Built once from the degrees (which never change)."""

    def __init__(self, input_degrees, hidden_degree_list, n_params, context_features):
        dim = len(input_degrees)
        cf = context_features
        self.dim, self.n_params, self.cf = dim, n_params, cf
        sigma = np.argsort(input_degrees, kind="stable")     # x columns by degree
        self.x_perm = None if np.array_equal(sigma, np.arange(dim)) else sigma
        self.x_inv = np.argsort(sigma)
        d_in = np.concatenate([input_degrees, np.zeros(cf, dtype=np.int64)])
        in_perm = np.concatenate([np.arange(dim, dim + cf), sigma]).astype(np.int64)
        layers = []
        for deg in hidden_degree_list:
            out_perm = np.argsort(deg, kind="stable")
            layers.append(_LayerPlan(out_perm, in_perm, deg, d_in, strict=False))
            d_in, in_perm = deg, out_perm
        d_out = np.repeat(input_degrees, n_params)
        steps = np.diff(input_degrees)
        if (steps >= 0).all() or (steps <= 0).all():
            self.feature_perm = None                         # monotone: keep the layout
            out_perm = np.arange(dim * n_params)
        else:
            self.feature_perm = sigma                        # sorted feature r is sigma[r]
            out_perm = (sigma[:, None] * n_params + np.arange(n_params)).ravel()
        layers.append(_LayerPlan(out_perm, in_perm, d_out, d_in, strict=True))
        self.layers = layers

    def macs(self):
        """Multiply-adds per row of one forward pass: ``(masked, dense)``."""
        return (sum(lp.masked_macs for lp in self.layers),
                sum(lp.n_out * lp.n_in for lp in self.layers))

    # ----------------------------------------------------------------- permutations
    def sorted_input(self, x, context):
        """``[context, x]`` sorted by degree (``x`` itself when that is the identity)."""
        if self.cf == 0 and self.x_perm is None:
            return x
        n, cf = x.shape[0], self.cf
        u = np.empty((n, cf + self.dim), dtype=x.dtype)
        if cf:
            u[:, :cf] = context
        u[:, cf:] = x if self.x_perm is None else x[:, self.x_perm]
        return u

    def split_input_bar(self, u_bar):
        """``(x_bar, context_bar)`` (``None`` without context), C-contiguous."""
        cf = self.cf
        if cf == 0 and self.x_perm is None:
            return u_bar, None
        xb = u_bar[:, cf:]
        xb = np.ascontiguousarray(xb) if self.x_perm is None else xb[:, self.x_inv]
        return xb, (np.ascontiguousarray(u_bar[:, :cf]) if cf else None)

    def original_output(self, out):
        """``(n, dim, n_params)`` in the original feature layout."""
        out = out.reshape(out.shape[0], self.dim, self.n_params)
        return out if self.feature_perm is None else out[:, self.x_inv]

    def sorted_cotangent(self, out_bar):
        """``out_bar`` ``(n, dim, n_params)`` as ``(n, dim * n_params)`` in sorted order (a
        read-only use: never written)."""
        n = out_bar.shape[0]
        if self.feature_perm is not None:
            out_bar = out_bar[:, self.feature_perm]
        return out_bar.reshape(n, self.dim * self.n_params)


class Prepared:
    """Weights prepared once in a compute dtype for several passes (``MADE._weights``).

    Iterating gives ``(masked weights, biases)`` dicts in the original layout (what the dense
    reference pass and subclasses that override the passes unpack), built on first use; the
    blocked passes read :attr:`sorted`: the sorted masked weights and biases per layer.
    """

    def __init__(self, made, dtype):
        self._made, self.dtype = made, np.dtype(dtype)
        self._dense = self._sorted = None

    @property
    def sorted(self):
        if self._sorted is None:
            made, dtype, p = self._made, self.dtype, self._made.params
            self._sorted = [(lp.gather(p[wk], dtype),
                             np.take(p[bk], lp.out_perm).astype(dtype, copy=False))
                            for lp, wk, bk in zip(made._plan().layers, made._w_keys,
                                                  made._b_keys)]
        return self._sorted

    def __iter__(self):
        if self._dense is None:
            self._dense = (self._made._masked_weights(self.dtype),
                           self._made._biases(self.dtype))
        return iter(self._dense)


#: Rows per tile of a forward pass without residuals (``forward``): a big batch runs through the
#: whole network one tile at a time, so a tile's activations stay in cache. Tiles are balanced
#: and never below ``TILE_ROWS`` rows (> 600: OpenBLAS keeps one summation order above 600
#: rows, so a tiled pass is bit-identical to one pass, as row chunks are; DEVELOPERS.md).
#: Measured, MADE(64, (256, 256)) at 4096 rows: 1.3-1.5x faster than one pass with 601-1024
#: rows (768 best), 1.15x with 2048. Off (None) for now: tiles also bound the pass's
#: temporaries, which breaks ``tests/test_memory.py``'s check that an unchunked MAF log_prob's
#: peak memory grows with n (the check needs another flow before this is turned on: 768).
TILE_ROWS = None


def forward(plan, prepared, x, context, act):
    """The network's output ``(n, dim, n_params)`` (no residuals), by row tiles."""
    n = x.shape[0]
    n_tiles = 0 if TILE_ROWS is None else n // TILE_ROWS
    if n_tiles <= 1:
        return _forward_rows(plan, prepared, x, context, act)
    out = np.empty((n, plan.dim, plan.n_params), dtype=x.dtype)
    edges = np.linspace(0, n, n_tiles + 1).round().astype(np.int64)
    for a, b in zip(edges[:-1], edges[1:]):
        out[a:b] = _forward_rows(plan, prepared, x[a:b],
                                 None if context is None else context[a:b], act)
    return out


def _forward_rows(plan, prepared, x, context, act):
    h = plan.sorted_input(x, context)
    n, last = x.shape[0], len(plan.layers) - 1
    relu = act.name == "relu"
    for k, (lp, (v, b)) in enumerate(zip(plan.layers, prepared.sorted)):
        a = lp.matmul(h, v, np.empty((n, lp.n_out), dtype=x.dtype))
        a += b
        if k < last:
            h = np.maximum(a, 0, out=a) if relu else act.value(a)   # a is not kept: in place
    return plan.original_output(a)


def vjp(plan, prepared, x, context, act):
    """``(out, backward)``; ``backward(out_bar) -> (x_bar, w_bars, b_bars, context_bar)`` with
    float64 gradients in the original layout (weight gradients masked) per layer."""
    dtype, n = x.dtype, x.shape[0]
    h = plan.sorted_input(x, context)
    last = len(plan.layers) - 1
    relu = act.name == "relu"
    inputs, derivs = [], []
    for k, (lp, (v, b)) in enumerate(zip(plan.layers, prepared.sorted)):
        inputs.append(h)
        a = lp.matmul(h, v, np.empty((n, lp.n_out), dtype=dtype))
        a += b
        if k < last:
            if relu:                # f in place; f'(a) = [a > 0] is read off h in backward
                h = np.maximum(a, 0, out=a)
            else:
                h, d = act.value_and_derivative(a)
                derivs.append(d)
    out = plan.original_output(a)

    def backward(out_bar):
        g = plan.sorted_cotangent(out_bar)
        w_bars, b_bars = [None] * (last + 1), [None] * (last + 1)
        for k in range(last, -1, -1):
            lp, v = plan.layers[k], prepared.sorted[k][0]
            w_bars[k] = lp.weight_gradient(g, inputs[k], dtype)      # (g^T h) * M
            b_bars[k] = np.take(g.sum(axis=0), lp.out_inv).astype(np.float64, copy=False)
            hb = lp.input_cotangent(g, v, dtype)                     # h_bar = g V
            if k > 0:                                                # a_bar = h_bar f'(a)
                if relu:
                    # ReLU: f'(a) = [a > 0] = [h > 0] for h = max(a, 0) (as mlp's
                    # _dense_vjp_relu); times it as 1.0 / 0.0, the same products as before
                    np.multiply(hb, inputs[k] > 0, out=hb)
                else:
                    hb *= derivs[k - 1]
            g = hb
        x_bar, c_bar = plan.split_input_bar(g)
        return x_bar, w_bars, b_bars, c_bar

    return out, backward
