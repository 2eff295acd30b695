r"""Multilayer perceptron with a hand-derived backward pass.

``MLP`` is a stack of affine layers ``a_k = h_k W_k^T + b_k`` (weights shaped ``(out, in)``
as torch's ``nn.Linear``) with an activation ``h_{k+1} = f(a_k)`` between them and none after
the last. Its pullback, for a cotangent ``g = out_bar`` of the output, runs the layers
backwards:

    W_k_bar = g_k^T h_k,        b_k_bar = sum_n g_k,        h_k_bar = g_k W_k,
    g_{k-1} = h_k_bar * f'(a_{k-1})

(``g_L = out_bar`` for the last layer ``L``; ``h_0 = h`` is the input). Parameter gradients are
sums over the batch, as a loss's reduction lives in the cotangent.

The private helpers here (:func:`_dense_forward`, :func:`_dense_vjp`, :func:`_linear_init`,
:func:`_cotangent`) are shared with :mod:`refflow.nn.made`, whose networks are the same stack
run on masked weights.
"""

import numbers

import numpy as np

from .._validation import as_batch, as_float_array, check_dim, check_finite, check_rng
from ..params import ParamDict
from .activations import get_activation

__all__ = ["MLP"]


# ------------------------------------------------------------------ private helpers
def _linear_init(rng, out_features, in_features):
    """torch's ``nn.Linear`` default: weights and biases ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``.

    ``fan_in = in_features``; for ``fan_in = 0`` (a layer with no input) the bound is 0, as
    torch's bias initialisation does. Weights are drawn first, then biases.
    """
    bound = 1.0 / np.sqrt(in_features) if in_features > 0 else 0.0
    w = rng.uniform(-bound, bound, size=(out_features, in_features))
    b = rng.uniform(-bound, bound, size=out_features)
    return w, b


def _dense_forward(h, weights, biases, act):
    """Output of the stack (no residuals kept): ``a_k = h_k W_k^T + b_k``, ``h_{k+1} = f(a_k)``."""
    last = len(weights) - 1
    for k, (w, b) in enumerate(zip(weights, biases)):
        a = h @ w.T
        a += b
        if k < last:
            h = act.value(a)
    return a


def _dense_vjp(h, weights, biases, act):
    """The stack's output and a backward function over its residuals.

    ``weights`` and ``biases`` are the compute-dtype arrays the pass uses (already masked for
    MADE); they, the layer inputs ``h_k`` and the derivatives ``f'(a_k)`` are the residuals.

    Returns
    -------
    out : ndarray of shape (batch, out)
        A new array, not referenced by the residuals.
    backward : callable
        ``backward(g) -> (h_bar, w_bars, b_bars)`` (lists per layer, compute dtype, not yet
        masked); ``g`` is not modified.
    """
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


def _cotangent(value, shape, was_1d, dtype, where, name):
    """Validate a public cotangent (``None`` means zeros); return it C-contiguous, batch-shaped."""
    if value is None:
        return np.zeros(shape, dtype=dtype)
    arr = as_float_array(value, where, name)
    expected = shape[1:] if was_1d else shape
    if arr.shape != expected:
        raise ValueError(f"{where}: expected {name} of shape {expected}, got {arr.shape}")
    check_finite(arr, where, name)
    return np.ascontiguousarray(arr.reshape(shape), dtype=dtype)


def _check_result(arrays, where, what):
    """Overflow (huge inputs or weights) becomes a ValueError, never a silent inf."""
    if not all(np.isfinite(a).all() for a in arrays):
        raise ValueError(f"{where}: the {what} is not finite (overflow): the input or the "
                         f"parameters are outside the range this network can represent")


def _check_hidden(hidden, where, name="hidden"):
    """``hidden`` as a tuple of positive ints (a bare int is refused: write ``(64,)``)."""
    if isinstance(hidden, (numbers.Integral, str)) or not hasattr(hidden, "__iter__"):
        raise ValueError(f"{where}: {name} must be a sequence of positive ints such as (64, 64), "
                         f"got {hidden!r}")
    return tuple(check_dim(h, where, f"{name} width") for h in hidden)


def _check_features(n, where, name, allow_zero=False):
    """A width as a Python int: positive, or non-negative when ``allow_zero``."""
    if not allow_zero:
        return check_dim(n, where, name)
    if isinstance(n, (bool, np.bool_)) or not isinstance(n, numbers.Integral) or int(n) < 0:
        raise ValueError(f"{where}: {name} must be a non-negative integer, got {n!r}")
    return int(n)


def _grads64(keys, bars):
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
    summed over the batch and returned as float64.

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
        self.in_features = _check_features(in_features, where, "in_features", allow_zero=True)
        self.out_features = _check_features(out_features, where, "out_features")
        self.hidden = _check_hidden(hidden, where)
        self._act = get_activation(activation, where)
        self.activation = self._act.name
        rng = check_rng(rng, f"{where}: rng")
        sizes = (self.in_features, *self.hidden, self.out_features)
        arrays = {}
        for k in range(len(sizes) - 1):
            arrays[f"w{k}"], arrays[f"b{k}"] = _linear_init(rng, sizes[k + 1], sizes[k])
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
        return _dense_forward(h, ws, bs, self._act)

    def _vjp(self, h):
        """``(out, pullback)`` for a validated array; ``pullback(out_bar) -> (h_bar, grads)``.

        ``h`` is kept as a residual: the caller must not change it while the pullback lives.
        """
        ws, bs = self._layers(h.dtype)
        out, backward = _dense_vjp(h, ws, bs, self._act)

        def pullback(out_bar):
            h_bar, w_bars, b_bars = backward(out_bar)
            grads = _grads64(self._w_keys, w_bars)
            grads.update(_grads64(self._b_keys, b_bars))
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
        _check_result([out], "MLP", "output")
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
        _check_result([out], where, "output")
        n, dtype, in_shape = h2.shape[0], h2.dtype, (h2.shape[1:] if was_1d else h2.shape)

        def pullback(out_bar=None):
            g = _cotangent(out_bar, (n, self.out_features), was_1d, dtype,
                           f"{where} pullback", "out_bar")
            with np.errstate(over="ignore", invalid="ignore"):
                h_bar, grads = inner(g)
            _check_result([h_bar, *grads.values()], f"{where} pullback", "gradient")
            return h_bar.reshape(in_shape), grads

        return (out[0] if was_1d else out), pullback
