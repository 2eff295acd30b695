r"""Multilayer perceptron with a hand-derived backward pass.

``MLP`` is a stack of affine layers ``a_k = h_k W_k^T + b_k`` (weights shaped ``(out, in)``
as torch's ``nn.Linear``) with an activation ``h_{k+1} = f(a_k)`` between them and none after
the last. Its pullback, for a cotangent ``g = out_bar`` of the output, runs the layers
backwards:

    W_k_bar = g_k^T h_k,        b_k_bar = sum_n g_k,        h_k_bar = g_k W_k,
    g_{k-1} = h_k_bar * f'(a_{k-1})

(``g_L = out_bar`` for the last layer ``L``; ``h_0 = h`` is the input). Parameter gradients are
sums over the batch, as a loss's reduction lives in the cotangent.

The helpers here (:func:`dense_forward`, :func:`dense_vjp`, :func:`linear_init` and the
validators) are shared with :mod:`refflow.nn.made`, whose networks are the same stack run on
masked weights, and with the network importers of :mod:`refflow.interop`; they are not in
``__all__``.
"""

import math
import numbers
import sys
import threading

import numpy as np

from .._validation import as_batch, as_cotangent, check_dim, check_hidden, check_rng
from ..params import ParamDict
from ..kernels import use_fast_paths
from ..kernels.fused import bias_relu, outer_bias_relu, relu_mask_colsum
from .activations import ACTIVATIONS, get_activation

__all__ = ["MLP"]


# ------------------------------------------------------------------ private helpers
def linear_init(rng, out_features, in_features):
    """torch's ``nn.Linear`` default: weights and biases ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``.

    ``fan_in = in_features``; for ``fan_in = 0`` (a layer with no input) the bound is 0, as
    torch's bias initialisation does. Weights are drawn first, then biases.
    """
    bound = 1.0 / np.sqrt(in_features) if in_features > 0 else 0.0
    w = rng.uniform(-bound, bound, size=(out_features, in_features))
    b = rng.uniform(-bound, bound, size=out_features)
    return w, b


def _refs(arrays, i):
    return sys.getrefcount(arrays[i])


#: What :func:`_refs` reports for an array held by its list only (calibrated, not assumed).
_UNUSED_REFS = _refs([np.empty(0)], 0)


class _Buffers:
    """Reusable work arrays of one network: a pass's activations and backward cotangents.

    A fresh ``(4096, 64)`` float64 array is 2 MB, which the C allocator maps from the system
    and unmaps on release, so every pass paid ~512 page faults per array (measured: 24 such
    arrays cost 30 ms of page faults, 2 ms when reused). ``get`` hands out an array of the
    pool only when nothing else holds it: no residual of a live pullback, no output the caller
    kept, no view of either (a view holds its base), which the reference count tells exactly.
    Values are never read from a buffer before they are written, so results do not change.
    Arrays above ``MAX_BYTES`` are not kept, nor more than ``MAX_PER_SHAPE`` of one shape; a
    new shape beyond ``MAX_SHAPES`` forgets the pool (held arrays live on with their holders).
    """

    MAX_BYTES = 1 << 26
    MIN_BYTES = 1 << 16     # smaller arrays come from the allocator's heap without faults
    MAX_PER_SHAPE = 16
    MAX_SHAPES = 4

    def __init__(self):
        self._arrays = {}
        self._lock = threading.Lock()

    def __reduce__(self):         # copies and pickles start with an empty pool
        return (_Buffers, ())

    def get(self, shape, dtype):
        """An uninitialised C-contiguous array of ``shape`` and ``dtype`` that nobody holds."""
        dtype = np.dtype(dtype)
        nbytes = dtype.itemsize * math.prod(shape)
        if not self.MIN_BYTES <= nbytes <= self.MAX_BYTES:
            return np.empty(shape, dtype=dtype)
        key = (shape, dtype.str)
        with self._lock:
            arrays = self._arrays.get(key)
            if arrays is None:
                if len(self._arrays) >= self.MAX_SHAPES:
                    self._arrays.clear()
                arrays = self._arrays[key] = []
            for i in range(len(arrays)):
                if _refs(arrays, i) == _UNUSED_REFS:
                    return arrays[i]
            out = np.empty(shape, dtype=dtype)
            if len(arrays) < self.MAX_PER_SHAPE:
                arrays.append(out)
            return out


_RELU_VD = ACTIVATIONS["relu"].value_and_derivative


def _is_relu(act):
    """ReLU stacks take the fused passes (:func:`_dense_forward_relu`, :func:`_dense_vjp_relu`),
    bitwise equal to the reference passes, when the fast paths are on
    (:func:`refflow.kernels.use_fast_paths`); other activations take the reference passes."""
    return act.value_and_derivative is _RELU_VD and use_fast_paths("mlp")


def _affine(h, w, b, relu, buffers=None):
    """``a = h W^T + b``, then ``max(a, 0)`` in place when ``relu``: one array (of ``buffers``).

    The same operations as the reference ``a = h @ w.T; a += b; np.maximum(a, 0)``: a
    one-input layer is an outer product (``h W^T`` has a single product per entry, so this is
    exact), and bias and ReLU are fused into one pass (``bias_relu``).
    """
    shape = (h.shape[0], w.shape[0])
    if h.shape[1] == 1 and h.dtype == w.dtype == b.dtype:
        a = np.empty(shape, dtype=h.dtype) if buffers is None else buffers.get(shape, h.dtype)
        outer_bias_relu(h, w, b, a, relu)
        return a
    if buffers is None or h.dtype != w.dtype:
        a = h @ w.T
    else:
        a = np.matmul(h, w.T, out=buffers.get(shape, h.dtype))
    if relu and a.dtype == b.dtype:
        bias_relu(a, b)
    else:
        a += b
        if relu:
            np.maximum(a, 0, out=a)
    return a


def dense_forward(h, weights, biases, act, buffers=None):
    """Output of the stack (no residuals kept): ``a_k = h_k W_k^T + b_k``, ``h_{k+1} = f(a_k)``.

    ``buffers`` (optional, a :class:`_Buffers` owned by the network) lets a ReLU stack reuse
    work arrays across passes.
    """
    if _is_relu(act):
        return _dense_forward_relu(h, weights, biases, buffers)
    return _dense_forward_reference(h, weights, biases, act)


def _dense_forward_relu(h, weights, biases, buffers=None):
    """:func:`dense_forward` for ReLU through the fused :func:`_affine` (bitwise equal).

    With ``buffers`` (a :class:`_Buffers`) the hidden layers reuse its arrays; the output is
    always a new array.
    """
    last = len(weights) - 1
    for k, (w, b) in enumerate(zip(weights, biases)):
        h = _affine(h, w, b, k < last, buffers if k < last else None)
    return h


def _dense_forward_reference(h, weights, biases, act):
    """The reference forward pass (any activation)."""
    last = len(weights) - 1
    for k, (w, b) in enumerate(zip(weights, biases)):
        a = h @ w.T
        a += b
        if k < last:
            h = act.value(a)
    return a


def dense_vjp(h, weights, biases, act, buffers=None):
    """The stack's output and a backward function over its residuals.

    ``weights`` and ``biases`` are the compute-dtype arrays the pass uses (already masked for
    MADE); they, the layer inputs ``h_k`` and the derivatives ``f'(a_k)`` are the residuals.
    ``buffers`` (optional, a :class:`_Buffers` owned by the network) lets a ReLU stack reuse
    work arrays across passes (see :func:`_dense_vjp_relu`).

    Returns
    -------
    out : ndarray of shape (batch, out)
        A new array, not referenced by the residuals.
    backward : callable
        ``backward(g) -> (h_bar, w_bars, b_bars)`` (lists per layer, compute dtype, not yet
        masked); ``g`` is not modified.
    """
    if _is_relu(act):
        return _dense_vjp_relu(h, weights, biases, buffers)
    return _dense_vjp_reference(h, weights, biases, act)


def _dense_vjp_relu(h, weights, biases, buffers=None):
    """:func:`dense_vjp` for ReLU, bitwise equal to the reference pass, with fewer passes.

    ``f'(a_k) = 1 if a_k > 0 else 0`` is read off the next layer's input ``h_{k+1} =
    max(a_k, 0)`` (``> 0`` exactly when ``a_k > 0``), so no derivative array is stored; the
    backward multiplies ``h_bar`` by it and sums ``b_bar = sum_n g`` in the same pass
    (``relu_mask_colsum``, rows added in order as ``g.sum(axis=0)`` does). With ``buffers``
    (a :class:`_Buffers`) the hidden activations and the hidden cotangents reuse its arrays;
    the output and the returned ``h_bar`` are new arrays.
    """
    last = len(weights) - 1
    inputs = []
    for k, (w, b) in enumerate(zip(weights, biases)):
        inputs.append(h)
        h = _affine(h, w, b, k < last, buffers if k < last else None)
    a = h

    def backward(g):
        w_bars, b_bars = [None] * (last + 1), [None] * (last + 1)
        b_bars[last] = g.sum(axis=0)             # b_bar = sum_n g
        for k in range(last, -1, -1):
            w_bars[k] = g.T @ inputs[k]          # W_bar = g^T h
            # h_bar = g W  (a new or free array: g is never written)
            if k > 0 and buffers is not None and g.dtype == weights[k].dtype:
                g_in = np.matmul(g, weights[k],
                                 out=buffers.get((g.shape[0], weights[k].shape[1]), g.dtype))
            else:
                g_in = g @ weights[k]
            if k > 0:
                # a_bar = h_bar * f'(a) and its column sums, the previous layer's b_bar
                # (one column: NumPy sums a contiguous column pairwise, not row by row)
                if g_in.dtype == inputs[k].dtype and g_in.shape[1] > 1:
                    b_bars[k - 1] = np.empty(g_in.shape[1], dtype=g_in.dtype)
                    relu_mask_colsum(g_in, inputs[k], b_bars[k - 1])
                else:
                    g_in *= inputs[k] > 0
                    b_bars[k - 1] = g_in.sum(axis=0)
            g = g_in
        return g, w_bars, b_bars

    return a, backward


def _dense_vjp_reference(h, weights, biases, act):
    """The reference pass of :func:`dense_vjp` (any activation): residuals ``h_k``, ``f'(a_k)``."""
    last = len(weights) - 1
    inputs, derivs = [], []
    for k, (w, b) in enumerate(zip(weights, biases)):
        inputs.append(h)
        a = h @ w.T
        a += b
        if k < last:
            h, d = act.value_and_derivative(a)
            derivs.append(d)

    def backward(g):
        w_bars, b_bars = [None] * (last + 1), [None] * (last + 1)
        for k in range(last, -1, -1):
            w_bars[k] = g.T @ inputs[k]          # W_bar = g^T h
            b_bars[k] = g.sum(axis=0)            # b_bar = sum_n g
            g_in = g @ weights[k]                # h_bar = g W  (a new array: g is never written)
            if k > 0:
                g_in *= derivs[k - 1]            # a_bar = h_bar * f'(a)
            g = g_in
        return g, w_bars, b_bars

    return a, backward


def check_result(arrays, where, what):
    """Overflow (huge inputs or weights) becomes a ValueError, never a silent inf."""
    if not all(np.isfinite(a).all() for a in arrays):
        raise ValueError(f"{where}: the {what} is not finite (overflow): the input or the "
                         f"parameters are outside the range this network can represent")


def check_features(n, where, name, allow_zero=False):
    """A width as a Python int: positive, or non-negative when ``allow_zero``."""
    if not allow_zero:
        return check_dim(n, where, name)
    if isinstance(n, (bool, np.bool_)) or not isinstance(n, numbers.Integral) or int(n) < 0:
        raise ValueError(f"{where}: {name} must be a non-negative integer, got {n!r}")
    return int(n)


def grads64(keys, bars):
    return {k: np.asarray(g, dtype=np.float64) for k, g in zip(keys, bars)}


# ------------------------------------------------------------------------------ MLP
class MLP:
    r"""Multilayer perceptron ``out = A_L(f(A_{L-1}(... f(A_0(h)))))``, ``A_k(h) = h W_k^T + b_k``.

    Parameters
    ----------
    in_features : int
        Input width, ``>= 0``. With 0 the network takes ``(batch, 0)`` inputs and every layer
        still applies (the first one gives ``b_0``): a learned constant, e.g. the conditioner of
        the first coordinate.
    out_features : int
        Output width, ``>= 1``.
    hidden : sequence of int, default (64, 64)
        Hidden widths; ``len(hidden) + 1`` affine layers. ``()`` is a single affine map.
    activation : str, default "relu"
        One of :data:`refflow.nn.ACTIVATIONS` (``"relu"``, ``"tanh"``, ``"elu"``,
        ``"softplus"``, ``"gelu"``), applied between layers, not after the last.
    zero_last : bool, default False
        Start the last layer's weights and biases at zero (the output is then 0 everywhere,
        so a flow built on it starts at a fixed point).
    rng : None, int or numpy.random.Generator
        Initialisation, torch's ``nn.Linear`` default: ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``
        for weights and biases, drawn layer by layer (weights, then biases).

    Attributes
    ----------
    params : ParamDict
        ``"w{k}"`` of shape ``(out_k, in_k)`` and ``"b{k}"`` of shape ``(out_k,)``, float64.
    in_features, out_features : int
    hidden : tuple of int
    activation : str

    Raises
    ------
    ValueError
        For non-integer or negative widths, an unknown activation or a bad ``rng``.

    Notes
    -----
    Forward, with ``h_0 = h``::

        a_k = h_k W_k^T + b_k,   h_{k+1} = f(a_k)   (k < L),    out = a_L

    Backward (pullback) for ``g_L = out_bar``, ``k = L, ..., 0``::

        W_k_bar = g_k^T h_k      b_k_bar = sum_n g_k      h_k_bar = g_k W_k
        g_{k-1} = h_k_bar * f'(a_{k-1})                     h_bar = h_0_bar

    The pass runs in the input's dtype (parameters cast at its start; those copies are the
    residuals, so a pullback is unaffected by later in-place parameter updates). Gradients are
    summed over the batch and returned as float64. A ReLU network keeps the hidden arrays of its
    passes in work arrays that later passes reuse once no pullback, output or view holds them
    (about one pass's hidden activations stay allocated per network; results are unchanged).

    Examples
    --------
    >>> import numpy as np
    >>> from refflow.nn import MLP
    >>> net = MLP(3, 2, hidden=(8,), activation="tanh", rng=0)
    >>> sorted(net.params), net.params["w0"].shape
    (['b0', 'b1', 'w0', 'w1'], (8, 3))
    >>> h = np.random.default_rng(1).normal(size=(5, 3))
    >>> out, pullback = net.vjp(h)
    >>> h_bar, grads = pullback(np.ones_like(out))       # gradient of out.sum()
    >>> out.shape, h_bar.shape, grads["w0"].shape
    ((5, 2), (5, 3), (8, 3))
    >>> np.array_equal(out, net(h))
    True
    """

    def __init__(self, in_features, out_features, hidden=(64, 64), activation="relu", *,
                 zero_last=False, rng=None):
        where = "MLP"
        self.in_features = check_features(in_features, where, "in_features", allow_zero=True)
        self.out_features = check_features(out_features, where, "out_features")
        self.hidden = check_hidden(hidden, where)
        self._act = get_activation(activation, where)
        self.activation = self._act.name
        rng = check_rng(rng, f"{where}: rng")
        sizes = (self.in_features, *self.hidden, self.out_features)
        arrays = {}
        for k in range(len(sizes) - 1):
            arrays[f"w{k}"], arrays[f"b{k}"] = linear_init(rng, sizes[k + 1], sizes[k])
        self._n_layers = len(sizes) - 1
        if zero_last:
            last = self._n_layers - 1
            arrays[f"w{last}"][...] = 0.0
            arrays[f"b{last}"][...] = 0.0
        self.params = ParamDict(arrays)
        self._w_keys = [f"w{k}" for k in range(self._n_layers)]
        self._b_keys = [f"b{k}" for k in range(self._n_layers)]

    def __repr__(self):
        return (f"MLP(in_features={self.in_features}, out_features={self.out_features}, "
                f"hidden={self.hidden}, activation={self.activation!r})")

    # ------------------------------------------------------------ private, unchecked
    def _layers(self, dtype):
        """Copies of the weights and biases in the compute dtype (the pass's residuals)."""
        return ([self.params[k].astype(dtype) for k in self._w_keys],
                [self.params[k].astype(dtype) for k in self._b_keys])

    def _forward(self, h):
        """Output for a validated C-contiguous ``(batch, in_features)`` array."""
        ws, bs = self._layers(h.dtype)
        return dense_forward(h, ws, bs, self._act, self._work())

    def _work(self):
        # created on first use: networks built or loaded without __init__ get one too
        work = self.__dict__.get("_buffers")
        if work is None:
            work = self.__dict__.setdefault("_buffers", _Buffers())
        return work

    def _vjp(self, h):
        """``(out, pullback)`` for a validated array; ``pullback(out_bar) -> (h_bar, grads)``.

        ``h`` is kept as a residual: the caller must not change it while the pullback lives.
        """
        ws, bs = self._layers(h.dtype)
        out, backward = dense_vjp(h, ws, bs, self._act, self._work())

        def pullback(out_bar):
            h_bar, w_bars, b_bars = backward(out_bar)
            grads = grads64(self._w_keys, w_bars)
            grads.update(grads64(self._b_keys, b_bars))
            return h_bar, grads

        return out, pullback

    # -------------------------------------------------------------------- public
    def _input(self, h, where, keep):
        h2, was_1d = as_batch(h, self.in_features, where, "h")
        if keep and isinstance(h, np.ndarray) and np.may_share_memory(h2, h):
            h2 = h2.copy()  # the pullback reads it; the caller may change their array later
        return h2, was_1d

    def __call__(self, h):
        """Evaluate the network.

        Parameters
        ----------
        h : array_like of shape (batch, in_features) or (in_features,)

        Returns
        -------
        out : ndarray of shape (batch, out_features) (or (out_features,)), dtype of ``h``
        """
        h2, was_1d = self._input(h, "MLP", keep=False)
        with np.errstate(over="ignore", invalid="ignore"):
            out = self._forward(h2)
        check_result([out], "MLP", "output")
        return out[0] if was_1d else out

    def vjp(self, h):
        """Evaluate the network and return its pullback.

        Parameters
        ----------
        h : array_like of shape (batch, in_features) or (in_features,)

        Returns
        -------
        out : ndarray of shape (batch, out_features) (or (out_features,))
        pullback : callable
            ``pullback(out_bar=None) -> (h_bar, grads)``: ``out_bar`` of the shape of ``out``
            (None means zeros); ``h_bar`` of the shape and dtype of ``h``; ``grads`` float64,
            keys and shapes of ``params``, summed over the batch.
        """
        where = "MLP.vjp"
        h2, was_1d = self._input(h, where, keep=True)
        with np.errstate(over="ignore", invalid="ignore"):
            out, inner = self._vjp(h2)
        check_result([out], where, "output")
        n, dtype, in_shape = h2.shape[0], h2.dtype, (h2.shape[1:] if was_1d else h2.shape)

        def pullback(out_bar=None):
            g = as_cotangent(out_bar, (n, self.out_features), was_1d, dtype,
                           f"{where} pullback", "out_bar")
            with np.errstate(over="ignore", invalid="ignore"):
                h_bar, grads = inner(g)
            check_result([h_bar, *grads.values()], f"{where} pullback", "gradient")
            return h_bar.reshape(in_shape), grads

        return (out[0] if was_1d else out), pullback
