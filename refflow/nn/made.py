r"""Masked autoregressive networks: ``MADE`` (Germain et al. 2015), ``ResidualMADE`` (ResMADE) and
``ResidualMaskedMLP`` (zuko's residual ``MaskedMLP``).

All three map ``x`` of shape ``(batch, dim)`` (and an optional context) to parameters of shape
``(batch, dim, n_params)`` such that ``out[:, i, :]`` depends only on the inputs that come
before input ``i`` in the autoregressive order. Each input ``i`` has a degree
``m(i) = order[i] + 1`` in ``1..dim``; each hidden unit ``k`` a degree ``m(k)``. Masks:

    hidden layer   M[k, j] = 1  iff  m_out(k) >= m_in(j)
    output layer   M[k, j] = 1  iff  m_out(k) >  m_in(j)

so a path ``j -> ... -> i`` exists only if ``m(j) <= ... < m(i)`` (Germain et al., eq. 12-13),
hence ``d out[i, p] / d x[j] = 0`` unless ``m(j) < m(i)``. Output unit ``i * n_params + p``
belongs to input ``i`` (feature-major, as nflows' ``tile`` and TFP's ``[..., dim, params]``)
and has degree ``m(i)``.

Hidden degrees. Without context they take values in ``1..dim-1`` (the paper's rule):

==========  ======================================================  ==========================
rule        degrees of a hidden layer of width ``H``                 as in
==========  ======================================================  ==========================
cyclic      ``arange(H) % (dim - 1) + 1``                            nflows (deterministic)
equal       ``max(ceil(arange(1, H + 1) (dim - 1) / (H + 1)), 1)``   TFP ``_create_degrees``
random      ``rng.integers(max(min(m_prev), 1), dim)``               Germain et al. 2015
==========  ======================================================  ==========================

For ``dim == 1`` every hidden degree is 1, and no output depends on anything (the single
output is a learned constant).

Context. A conditional network takes ``[x, context]`` as its first layer's input; context
columns have degree 0 (connected to every hidden unit of the first layer). Then hidden
degrees take values in ``0..dim-1`` instead: a degree-0 unit sees the context only, and is what
carries the context to the outputs of the first input in the order (degree 1), which may depend
on nothing else. (With hidden degrees ``>= 1`` those outputs would be constants, a known
defect of nflows' conditional MADE, nflows PR #85; TextFlow and FlowJAX use degree-0 units in
the same way.) The rules become ``arange(H) % dim`` (cyclic), ``max(ceil(arange(1, H + 1) dim
/ (H + 1)), 1) - 1`` (equal) and ``rng.integers(max(min(m_prev), 0), dim)`` (random); an
unconditional network is unchanged.

Weights are stored full size; every pass uses ``W * M`` and every weight gradient is
multiplied by ``M``, so masked entries have gradient exactly 0 (and stay 0 under any optimizer
that moves parameters along their gradient). :class:`MADE` computes its passes as
degree-sorted block products that skip the masked zeros outside the blocks
(:mod:`refflow.nn._blocked`), equal to the dense passes on ``W * M`` (the reference path,
``MADE._forward_reference`` / ``_vjp_reference``, under ``refflow.kernels.fast_paths(False)``)
to round-off.

References
----------
Germain, Gregor, Murray, Larochelle, "MADE: Masked Autoencoder for Distribution Estimation",
ICML 2015, arXiv:1502.03509.
Durkan, Bekasov, Murray, Papamakarios, "Neural Spline Flows", NeurIPS 2019, arXiv:1906.04032
(ResMADE, their appendix B; nflows ``ResidualMADE``).
"""

import numpy as np

from .._validation import as_batch, as_cotangent, check_dim, check_rng
from ..kernels import use_fast_paths
from ..params import ParamDict
from . import _blocked
from .activations import get_activation
from ._incremental import made_sample
from .mlp import (check_features, check_hidden, check_result, dense_forward, dense_vjp, grads64,
                  linear_init)

__all__ = ["MADE", "ResidualMADE", "ResidualMaskedMLP"]

_ORDERS = ("natural", "reverse", "random")
_DEGREE_RULES = ("cyclic", "equal", "random")


# ------------------------------------------------------------------ degrees and masks
def _input_order(order, dim, rng, where):
    """0-based autoregressive positions of the inputs, int64 of shape ``(dim,)``."""
    if isinstance(order, str):
        if order == "natural":
            return np.arange(dim, dtype=np.int64)
        if order == "reverse":
            return np.arange(dim - 1, -1, -1, dtype=np.int64)
        if order == "random":
            return rng.permutation(dim).astype(np.int64)
        raise ValueError(f"{where}: unknown order {order!r}; use one of {list(_ORDERS)} or a "
                         f"permutation of 0..dim-1")
    arr = np.asarray(order)
    if arr.dtype.kind not in "iu" or arr.ndim != 1:
        raise ValueError(f"{where}: order must be one of {list(_ORDERS)} or a 1-D integer array "
                         f"(a permutation of 0..{dim - 1}), got {arr.ndim}-D dtype {arr.dtype}")
    if arr.shape[0] != dim:
        raise ValueError(f"{where}: order must have length dim = {dim}, got {arr.shape[0]}")
    if not np.array_equal(np.sort(arr), np.arange(dim)):
        values, counts = np.unique(arr, return_counts=True)
        repeated = values[counts > 1].tolist()
        missing = np.setdiff1d(np.arange(dim), arr).tolist()
        raise ValueError(f"{where}: order must be a permutation of 0..{dim - 1}; repeated "
                         f"{repeated}, missing {missing}")
    return arr.astype(np.int64)


def _hidden_degrees(rule, width, dim, conditional, prev, rng, layer, where):
    """Degrees of one hidden layer of ``width`` units (see the module docstring).

    ``prev`` are the degrees of the layer's inputs (context columns included, degree 0).
    """
    low = 0 if conditional else 1
    n = dim - low                                   # distinct degrees low..dim-1
    if n == 0:                                      # unconditional dim == 1
        return np.ones(width, dtype=np.int64)
    if rule == "random":
        return rng.integers(max(int(prev.min()), low), dim, size=width).astype(np.int64)
    if width < n:
        extra = " + 1 (degree 0 for the context)" if conditional else ""
        raise ValueError(
            f"{where}: hidden layer {layer} has width {width}, but the {rule!r} degree rule "
            f"needs at least dim - 1{extra} = {n} units to carry every dependency; widen the "
            f"layer or use hidden_degrees='random'")
    if rule == "cyclic":
        return (np.arange(width) % n + low).astype(np.int64)
    k = np.arange(1, width + 1, dtype=np.int64)
    ceil = -((-k * n) // (width + 1))               # exact integer ceil(k n / (H + 1))
    return (np.maximum(ceil, 1) + (low - 1)).astype(np.int64)


def _explicit_hidden_degrees(degrees, width, dim, conditional, prev, layer, where):
    """Validate one layer of explicit hidden degrees; an owned int64 array of shape ``(width,)``.

    The values must lie in ``low..max(dim - 1, low)`` (``low`` is 0 with a context, else 1:
    the range of every degree rule) and obey the MADE connectivity rule: no unit's degree is
    below the smallest degree of the layer before (``prev``), so that every unit receives at
    least one input (Germain et al. 2015, the lower end of their random rule).
    """
    if isinstance(degrees, str):
        raise ValueError(f"{where}: hidden_degrees[{layer}] must be an array of integers, got "
                         f"{degrees!r}")
    try:
        arr = np.asarray(degrees)
    except Exception as exc:  # ragged lists and the like
        raise ValueError(f"{where}: hidden_degrees[{layer}] could not be converted to an array "
                         f"({exc})") from None
    if arr.dtype.kind not in "iu":  # bool is an integer dtype to NumPy, never a degree
        raise ValueError(f"{where}: hidden_degrees[{layer}] must hold integers, got dtype "
                         f"{arr.dtype}")
    if arr.shape != (width,):
        raise ValueError(f"{where}: hidden_degrees[{layer}] must have shape ({width},) (the "
                         f"width of hidden layer {layer}), got shape {arr.shape}")
    low = 0 if conditional else 1
    high = max(dim - 1, low)
    outside = (arr < low) | (arr > high)
    if outside.any():
        j = int(np.argmax(outside))
        raise ValueError(f"{where}: hidden_degrees[{layer}] must lie in {low}..{high}; unit {j} "
                         f"has degree {int(arr[j])}")
    floor = int(prev.min()) if prev.size else low
    below = arr < floor
    if below.any():
        j = int(np.argmax(below))
        raise ValueError(f"{where}: hidden_degrees[{layer}]: unit {j} has degree {int(arr[j])}, "
                         f"below the smallest degree {floor} of the layer before, so it would "
                         f"receive no input (MADE connectivity rule)")
    return arr.astype(np.int64)


def _degree_sequence(hidden_degrees, n_layers, where):
    """An explicit ``hidden_degrees`` as a list of ``n_layers`` array_likes (not yet checked)."""
    if isinstance(hidden_degrees, (str, bytes)) or not hasattr(hidden_degrees, "__iter__"):
        raise ValueError(f"{where}: hidden_degrees must be one of {list(_DEGREE_RULES)} or a "
                         f"sequence of integer arrays (one per hidden layer), got "
                         f"{hidden_degrees!r}")
    seq = list(hidden_degrees)
    if len(seq) != n_layers:
        raise ValueError(f"{where}: hidden_degrees must hold one array per hidden layer "
                         f"({n_layers}), got {len(seq)}")
    return seq


def _mask(out_degrees, in_degrees, strict):
    m = (out_degrees[:, None] > in_degrees[None, :]) if strict else \
        (out_degrees[:, None] >= in_degrees[None, :])
    m = m.astype(np.float64)
    m.flags.writeable = False
    return m


def _frozen(a):
    a.flags.writeable = False
    return a


# --------------------------------------------------------------- shared public plumbing
class _Autoregressive:
    """Validation, context handling and the public ``__call__`` / ``vjp`` of both networks.

    Subclasses set ``dim``, ``n_params``, ``context_features``, ``params``, ``masks``,
    ``_w_keys`` (weight keys, aligned with ``masks``) and implement ``_forward`` / ``_vjp``.
    """

    def _set_layers(self, arrays, masks):
        """Store the initialised ``arrays`` (weights already masked) and their ``masks``; the
        weight and bias keys follow from the names (last part ``w...`` or ``b...``)."""
        self.params = ParamDict(arrays)
        self.masks = masks
        self._mask_cache = {}
        self._w_keys = [k for k in arrays if k.rsplit(".", 1)[-1].startswith("w")]
        self._b_keys = [k for k in arrays if k.rsplit(".", 1)[-1].startswith("b")]

    def _masks_as(self, dtype):
        dtype = np.dtype(dtype)
        cached = self._mask_cache.get(dtype)
        if cached is None:
            cached = [m.astype(dtype) for m in self.masks]
            self._mask_cache[dtype] = cached
        return cached

    def _masked_weights(self, dtype):
        """``{key: W * M}`` copies in the compute dtype (residuals of the pass)."""
        out = {}
        for key, m in zip(self._w_keys, self._masks_as(dtype)):
            w = self.params[key].astype(dtype)
            w *= m
            out[key] = w
        return out

    def _biases(self, dtype):
        return {k: self.params[k].astype(dtype) for k in self._b_keys}

    def _weights(self, dtype):
        """``(masked weights, biases)`` in ``dtype``: prepare once for several ``_forward`` calls
        on the same parameters (the sequential sampling passes of the autoregressive layers)."""
        return self._masked_weights(dtype), self._biases(dtype)

    def _sampling_order(self):
        """The inputs by increasing degree (stable): the order in which sampling fixes them."""
        return np.argsort(self.input_degrees, kind="stable")

    def _sample(self, z, context, sample_coordinate):
        """Sample a masked autoregressive layer: fix ``x`` coordinate by coordinate in degree
        order, ``x_i = sample_coordinate(z_i, out_i)`` from the network's outputs ``out_i`` for
        input ``i``, which depend only on the coordinates fixed before it.

        ``z`` ``(n, dim)`` and ``context`` (or None) are validated arrays of one dtype;
        ``sample_coordinate(z_i, out_i) -> x_i`` takes C-contiguous ``(m,)`` and
        ``(m, n_params)`` arrays. Returns ``(x, out)``: every coordinate of ``x`` and the
        network's outputs at ``x`` (all final).

        This is the reference, :meth:`_sample_passes`; :class:`MADE` overrides it with the
        incremental evaluation when the fast paths are on. A subclass that computes another
        function than its masked layers must say how it samples (see :class:`MADE`).
        """
        return self._sample_passes(z, context, sample_coordinate)

    def _sample_passes(self, z, context, sample_coordinate):
        """:meth:`_sample` by full passes: ``dim - 1`` sequential passes fix every coordinate
        but the last in the order (which feeds no output); one more pass gives the outputs at
        ``x``, all final, and the last coordinate from them. ``sample_coordinate`` is called
        once per coordinate, in the sampling order (as by the incremental sampler, so that a
        caller may count the calls to know the coordinate).

        A coordinate's outputs in the final pass equal those of the pass that fixed it: they
        depend only on the coordinates before it, and the later ones enter with masked weights
        that are exactly 0 (as long as ``x`` is finite; a sample that overflowed is refused by
        the flows' sampling checks).
        """
        x = np.zeros_like(z)
        order = self._sampling_order()
        weights = self._weights(z.dtype)  # masked and cast once, not once per pass
        for i in order[:-1]:
            out = self._forward(x, context, weights)
            x[:, i] = sample_coordinate(np.ascontiguousarray(z[:, i]),
                                        np.ascontiguousarray(out[:, i]))
        out = self._forward(x, context, weights)
        last = order[-1]
        x[:, last] = sample_coordinate(np.ascontiguousarray(z[:, last]),
                                       np.ascontiguousarray(out[:, last]))
        return x, out

    def _first_input(self, x, context):
        return x if context is None else np.concatenate([x, context], axis=1)

    def _masked_grads(self, w_bars, b_bars, dtype):
        """float64 grads, weight gradients multiplied by their masks (masked entries exactly 0)."""
        grads = grads64(self._b_keys, b_bars)
        for key, g, m in zip(self._w_keys, w_bars, self._masks_as(dtype)):
            g *= m                          # g is this pullback's own array (a GEMM result)
            grads[key] = np.asarray(g, dtype=np.float64)
        return {k: grads[k] for k in self.params}     # the order of params

    def _split_input_bar(self, u_bar):
        if self.context_features == 0:
            return u_bar, None
        return (np.ascontiguousarray(u_bar[:, :self.dim]),
                np.ascontiguousarray(u_bar[:, self.dim:]))

    def _validate(self, x, context, where, keep):
        """``(x2, c2, was_1d, shared)``: validated arrays of one dtype, for the private passes."""
        name = type(self).__name__
        x2, was_1d = as_batch(x, self.dim, where, "x")
        if keep and isinstance(x, np.ndarray) and np.may_share_memory(x2, x):
            x2 = x2.copy()  # the pullback may read it; the caller may change their array later
        cf = self.context_features
        if cf == 0:
            if context is not None:
                raise ValueError(f"{where}: this {name} has no context (context_features=0), "
                                 f"but a context was given")
            return x2, None, was_1d, False
        if context is None:
            raise ValueError(f"{where}: this {name} is conditional (context_features={cf}); "
                             f"pass context of shape (batch, {cf}) or ({cf},)")
        c2, c_1d = as_batch(context, cf, where, "context")
        n = x2.shape[0]
        shared = c_1d and not was_1d
        if shared:                  # one context for every row; its cotangent is summed
            c2 = np.repeat(c2, n, axis=0)
        elif c2.shape[0] != n:
            raise ValueError(f"{where}: context has {c2.shape[0]} rows but x has {n}")
        if c2.dtype != x2.dtype:
            c2 = c2.astype(x2.dtype)  # one compute dtype per pass, never silently mixed
        # The pass concatenates [x, context] into a new array, so c2 needs no defensive copy.
        return x2, c2, was_1d, shared

    def __call__(self, x, context=None):
        """Evaluate the network.

        Parameters
        ----------
        x : array_like of shape (batch, dim) or (dim,)
        context : array_like of shape (batch, context_features) or (context_features,)
            Required when ``context_features > 0``, refused otherwise. A single context row
            is used for every row of ``x``.

        Returns
        -------
        out : ndarray of shape (batch, dim, n_params) (or (dim, n_params)), dtype of ``x``
        """
        where = type(self).__name__
        x2, c2, was_1d, _ = self._validate(x, context, where, keep=False)
        with np.errstate(over="ignore", invalid="ignore"):
            out = self._forward(x2, c2)
        check_result([out], where, "output")
        return out[0] if was_1d else out

    def vjp(self, x, context=None):
        """Evaluate the network and return its pullback.

        Parameters
        ----------
        x, context
            As for ``__call__``.

        Returns
        -------
        out : ndarray of shape (batch, dim, n_params) (or (dim, n_params))
        pullback : callable
            ``pullback(out_bar=None) -> (x_bar, grads)``, or ``(x_bar, grads, context_bar)``
            for a conditional network. ``out_bar`` has the shape of ``out`` (None means
            zeros); ``x_bar`` and ``context_bar`` have the shapes of ``x`` and ``context`` (a
            single shared context gets the sum over rows); ``grads`` are float64, keys and
            shapes of ``params``, summed over the batch, exactly 0 at masked weights.
        """
        where = f"{type(self).__name__}.vjp"
        x2, c2, was_1d, shared = self._validate(x, context, where, keep=True)
        with np.errstate(over="ignore", invalid="ignore"):
            out, inner = self._vjp(x2, c2)
        check_result([out], where, "output")
        n, dtype = x2.shape[0], x2.dtype
        x_shape = x2.shape[1:] if was_1d else x2.shape
        conditional = self.context_features > 0

        def pullback(out_bar=None):
            g = as_cotangent(out_bar, (n, self.dim, self.n_params), was_1d, dtype,
                             f"{where} pullback", "out_bar")
            with np.errstate(over="ignore", invalid="ignore"):
                result = inner(g)
            check_result([result[0], *result[1].values(),
                          *(r for r in result[2:] if r is not None)], f"{where} pullback",
                         "gradient")
            x_bar = result[0].reshape(x_shape)
            if not conditional:
                return x_bar, result[1]
            c_bar = result[2]
            c_bar = c_bar.sum(axis=0) if shared else (c_bar[0] if was_1d else c_bar)
            return x_bar, result[1], c_bar

        return (out[0] if was_1d else out), pullback


def _check_common(dim, n_params, context_features, activation, rng, where):
    dim = check_dim(dim, where, "dim")
    n_params = check_dim(n_params, where, "n_params")
    context_features = check_features(context_features, where, "context_features",
                                       allow_zero=True)
    act = get_activation(activation, where)
    rng = check_rng(rng, f"{where}: rng")
    return dim, n_params, context_features, act, rng


def _output_layer(rng, arrays, masks, out_mask, fan_in, zero_last):
    """The output layer ``w_out``, ``b_out`` (torch's initialisation, or zeros with
    ``zero_last``), masked by ``out_mask``, added to ``arrays`` and ``masks``."""
    w, b = linear_init(rng, out_mask.shape[0], fan_in)
    if zero_last:
        w[...], b[...] = 0.0, 0.0
    arrays["w_out"], arrays["b_out"] = w * out_mask, b
    masks.append(out_mask)


def _init_layered(net, where, dim, hidden, n_params, order, hidden_degrees, activation,
                  context_features, rng):
    """The checks and attributes :class:`MADE` and :class:`ResidualMaskedMLP` share: sets
    ``dim``, ``n_params``, ``hidden``, ``context_features``, the activation, the degree rule,
    ``order`` (a random order is drawn here, first) and ``input_degrees`` on ``net``; returns
    ``(explicit, rng)``, ``explicit`` the per-layer degree arrays or None (a named rule)."""
    dim, n_params, context_features, act, rng = _check_common(
        dim, n_params, context_features, activation, rng, where)
    hidden = check_hidden(hidden, where)
    explicit = None
    if isinstance(hidden_degrees, str):
        if hidden_degrees not in _DEGREE_RULES:
            raise ValueError(f"{where}: unknown hidden_degrees rule {hidden_degrees!r}; "
                             f"choose one of {list(_DEGREE_RULES)}")
    else:
        explicit = _degree_sequence(hidden_degrees, len(hidden), where)
    net.dim, net.n_params, net.hidden = dim, n_params, hidden
    net.context_features = context_features
    net._act = act
    net.activation = act.name
    net.hidden_degrees = "explicit" if explicit is not None else hidden_degrees
    net.order = _frozen(_input_order(order, dim, rng, where))
    net.input_degrees = _frozen(net.order + 1)
    return explicit, rng


# ----------------------------------------------------------------------------- MADE
class MADE(_Autoregressive):
    r"""Masked autoencoder for distribution estimation (Germain et al. 2015).

    ``out[n, i, :]`` (``n_params`` numbers per input) depends only on the inputs ``x[n, j]``
    with ``input_degrees[j] < input_degrees[i]`` (and on the context).

    Parameters
    ----------
    dim : int
        Number of autoregressive inputs ``D``.
    hidden : sequence of int, default (64, 64)
        Hidden widths (``()`` gives a single masked affine layer).
    n_params : int, default 2
        Outputs per input (2 for an affine MAF: shift and unconstrained scale).
    order : {"natural", "reverse", "random"} or array of int, default "natural"
        Autoregressive order: ``[1, ..., D]``, ``[D, ..., 1]``, a permutation drawn from
        ``rng``, or an explicit permutation of ``0..D-1`` where ``order[i]`` is the 0-based
        position of input ``i`` (``input_degrees = order + 1``).
    hidden_degrees : {"cyclic", "equal", "random"} or sequence of array of int, default "cyclic"
        Rule for hidden-unit degrees (module docstring). The deterministic rules need every
        hidden width ``>= D - 1`` (``>= D`` with context); "random" takes any width. An explicit
        sequence gives the degrees of every hidden layer (one integer array of its width per
        layer, e.g. another network's ``hidden_degree_list``, so that a saved random-degree
        MADE is rebuilt identically): values in ``1..D-1`` (``0..D-1`` with context; all 1
        for an unconditional ``D = 1``), none below the smallest degree of the layer before
        (every unit then has an input); ``hidden_degrees`` is then ``"explicit"``.
    activation : str, default "relu"
        See :data:`refflow.nn.ACTIVATIONS`.
    context_features : int, default 0
        Width of a conditioning input concatenated to ``x`` at the first layer.
    zero_last : bool, default False
        Start the output layer at zero (output 0 everywhere).
    rng : None, int or numpy.random.Generator
        Draws, in this order: a random order, random hidden degrees (layer by layer), then
        weights and biases layer by layer, torch's ``nn.Linear`` default
        ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` with the full (unmasked) fan-in; the stored
        weights are then multiplied by their masks.

    Attributes
    ----------
    params : ParamDict
        ``"w{k}"``, ``"b{k}"`` for ``k = 0..len(hidden)``; ``w0`` has shape
        ``(H_0, D + context_features)`` and the last ``(D * n_params, H_last)``.
    masks : list of ndarray
        One float64 0/1 array per weight, shaped like it (read-only).
    order, input_degrees : ndarray of int64, shape (D,)
    hidden_degree_list : list of ndarray of int64
    dim, n_params, hidden, context_features, activation

    Raises
    ------
    ValueError
        Bad sizes, an unknown order, degree rule or activation, an order that is not a
        permutation, a hidden layer too narrow for a deterministic degree rule.

    Notes
    -----
    With ``u = x`` (or ``[x, context]``), ``V_k = W_k * M_k``::

        a_k = h_k V_k^T + b_k,   h_0 = u,   h_{k+1} = f(a_k)  (k < L),
        out = a_L.reshape(batch, D, n_params)

    Pullback, ``g_L = out_bar.reshape(batch, D * n_params)``, ``k = L, ..., 0``::

        W_k_bar = (g_k^T h_k) * M_k     b_k_bar = sum_n g_k     h_k_bar = g_k V_k
        g_{k-1} = h_k_bar * f'(a_{k-1})
        u_bar = h_0_bar = [x_bar, context_bar]

    (``d a_k / d W_k = (d a_k / d V_k) * M_k`` since ``V = W * M`` elementwise.)

    Examples
    --------
    >>> import numpy as np
    >>> from refflow.nn import MADE
    >>> made = MADE(3, hidden=(4, 4), n_params=2, rng=0)
    >>> made.input_degrees, made.hidden_degree_list[0]
    (array([1, 2, 3]), array([1, 2, 1, 2]))
    >>> made.masks[-1].astype(int)        # output units [1, 1, 2, 2, 3, 3] > hidden degrees
    array([[0, 0, 0, 0],
           [0, 0, 0, 0],
           [1, 0, 1, 0],
           [1, 0, 1, 0],
           [1, 1, 1, 1],
           [1, 1, 1, 1]])
    >>> x = np.random.default_rng(1).normal(size=(5, 3))
    >>> out, pullback = made.vjp(x)
    >>> x_bar, grads = pullback(np.ones_like(out))
    >>> out.shape, x_bar.shape, float(np.abs(x_bar[:, 2]).max())   # nothing depends on x_3
    ((5, 3, 2), (5, 3), 0.0)
    """

    def __init__(self, dim, hidden=(64, 64), n_params=2, *, order="natural",
                 hidden_degrees="cyclic", activation="relu", context_features=0,
                 zero_last=False, rng=None):
        where = "MADE"
        explicit, rng = _init_layered(self, where, dim, hidden, n_params, order, hidden_degrees,
                                      activation, context_features, rng)
        dim, n_params, hidden = self.dim, self.n_params, self.hidden
        context_features = self.context_features

        conditional = context_features > 0
        prev = np.concatenate([self.input_degrees, np.zeros(context_features, dtype=np.int64)])
        degrees, masks = [], []
        for layer, width in enumerate(hidden):
            if explicit is not None:
                deg = _frozen(_explicit_hidden_degrees(explicit[layer], width, dim, conditional,
                                                       prev, layer, where))
            else:
                deg = _frozen(_hidden_degrees(hidden_degrees, width, dim, conditional, prev, rng,
                                              layer, where))
            masks.append(_mask(deg, prev, strict=False))
            degrees.append(deg)
            prev = deg
        out_degrees = np.repeat(self.input_degrees, n_params)     # unit i * n_params + p -> i
        masks.append(_mask(out_degrees, prev, strict=True))
        self.hidden_degree_list = degrees
        self.masks = masks
        self._mask_cache = {}

        sizes = (dim + context_features, *hidden, dim * n_params)
        n_layers = len(sizes) - 1
        arrays = {}
        for k in range(n_layers):
            w, b = linear_init(rng, sizes[k + 1], sizes[k])
            if zero_last and k == n_layers - 1:
                w[...], b[...] = 0.0, 0.0
            arrays[f"w{k}"], arrays[f"b{k}"] = w * masks[k], b
        self.params = ParamDict(arrays)
        self._w_keys = [f"w{k}" for k in range(n_layers)]
        self._b_keys = [f"b{k}" for k in range(n_layers)]

    def __init_subclass__(cls, **kwargs):
        # The incremental sampler evaluates MADE's own masked layers: a subclass that replaces
        # the passes must say how it samples, never silently get the wrong (or slow) sampler.
        super().__init_subclass__(**kwargs)
        replaced = sorted({"_forward", "_vjp"} & set(vars(cls)))
        if replaced and "_sample" not in vars(cls):
            raise TypeError(
                f"{cls.__name__} overrides MADE.{'/'.join(replaced)} but not _sample: the "
                f"incremental sampler evaluates MADE's own masked layers, so define _sample "
                f"(e.g. returning self._sample_passes(z, context, sample_coordinate), the "
                f"sequential full passes)")

    def __repr__(self):
        return (f"MADE(dim={self.dim}, hidden={self.hidden}, n_params={self.n_params}, "
                f"hidden_degrees={self.hidden_degrees!r}, activation={self.activation!r}, "
                f"context_features={self.context_features})")

    # ------------------------------------------------------------ private, unchecked
    def _plan(self):
        """The degree-sorted block layout (:mod:`refflow.nn._blocked`), built on first use:
        the degrees never change."""
        plan = self.__dict__.get("_block_plan")
        if plan is None:
            plan = _blocked.Plan(self.input_degrees, self.hidden_degree_list, self.n_params,
                                 self.context_features)
            self._block_plan = plan
        return plan

    def _weights(self, dtype):
        """The parameters prepared once in ``dtype`` for several ``_forward`` calls (the
        sequential sampling passes): sorted masked weights for the blocked pass; unpacking it,
        ``ws, bs = made._weights(dtype)``, gives the dense ``(masked weights, biases)`` dicts."""
        return _blocked.Prepared(self, dtype)

    def _forward(self, x, context=None, weights=None):
        """Output ``(batch, dim, n_params)`` for validated arrays of one dtype.

        ``context`` is ``(batch, context_features)`` for a conditional MADE, else None;
        ``weights`` optionally the result of ``_weights(x.dtype)``, prepared once.

        Degree-sorted block products when the fast paths are on
        (:func:`refflow.kernels.use_fast_paths`): the same sums as the dense
        :meth:`_forward_reference` without the masked zeros outside the blocks, so equal to it
        to round-off.
        """
        if weights is None or weights.dtype != x.dtype:  # (prepared for another dtype)
            weights = self._weights(x.dtype)
        if not use_fast_paths("made"):
            return self._forward_reference(x, context, weights)
        return _blocked.forward(self._plan(), weights, x, context, self._act)

    def _vjp(self, x, context=None):
        """``(out, pullback)`` for validated arrays of one dtype.

        ``pullback(out_bar)`` with ``out_bar`` of shape ``(batch, dim, n_params)`` returns
        ``(x_bar, grads, context_bar)``, ``context_bar`` None for an unconditional MADE. ``x``
        (unconditional) is kept as a residual: do not change it while the pullback lives.
        Degree-sorted block products when the fast paths are on; equal to the dense
        :meth:`_vjp_reference` to round-off.
        """
        if not use_fast_paths("made"):
            return self._vjp_reference(x, context)
        out, backward = _blocked.vjp(self._plan(), self._weights(x.dtype), x, context,
                                     self._act)

        def pullback(out_bar):
            x_bar, w_bars, b_bars, c_bar = backward(out_bar)
            grads = dict(zip(self._w_keys, w_bars))
            grads.update(zip(self._b_keys, b_bars))
            grads = {k: grads[k] for k in self.params}          # the order of params
            return x_bar, grads, c_bar

        return out, pullback

    def _sample(self, z, context, sample_coordinate):
        """:meth:`_Autoregressive._sample` by the degree-ordered incremental evaluation of
        :mod:`refflow.nn._incremental` (every hidden unit computed once, about the cost of one
        pass) when the fast paths are on, else by the sequential full passes (the reference).
        The two agree to round-off (summation order)."""
        if not use_fast_paths("sampling"):
            return self._sample_passes(z, context, sample_coordinate)
        return made_sample(self, z, context, sample_coordinate, self._sampling_order())

    # The dense reference passes on ``W * M`` (kept to test the blocked ones against).
    def _forward_reference(self, x, context=None, weights=None):
        ws, bs = _Autoregressive._weights(self, x.dtype) if weights is None else weights
        out = dense_forward(self._first_input(x, context), [ws[k] for k in self._w_keys],
                             [bs[k] for k in self._b_keys], self._act)
        return out.reshape(x.shape[0], self.dim, self.n_params)

    def _vjp_reference(self, x, context=None):
        dtype, n = x.dtype, x.shape[0]
        ws, bs = _Autoregressive._weights(self, dtype)
        out, backward = dense_vjp(self._first_input(x, context),
                                   [ws[k] for k in self._w_keys],
                                   [bs[k] for k in self._b_keys], self._act)

        def pullback(out_bar):
            u_bar, w_bars, b_bars = backward(out_bar.reshape(n, self.dim * self.n_params))
            grads = self._masked_grads(w_bars, b_bars, dtype)
            x_bar, c_bar = self._split_input_bar(u_bar)
            return x_bar, grads, c_bar

        return out.reshape(n, self.dim, self.n_params), pullback


# --------------------------------------------------------------------- ResidualMADE
class ResidualMADE(_Autoregressive):
    r"""MADE with masked residual blocks (ResMADE; Durkan et al. 2019, nflows' residual MADE).

    Parameters
    ----------
    dim : int
        Number of autoregressive inputs ``D``.
    hidden_features : int, default 64
        Width ``H`` of every hidden layer; ``>= D - 1`` (``>= D`` with context).
    n_blocks : int, default 2
        Number of residual blocks (``>= 0``).
    n_params : int, default 2
        Outputs per input.
    hidden_degrees : "cyclic" or sequence of array of int, default "cyclic"
        Hidden degrees follow the cyclic rule, the same for every hidden layer. An explicit
        sequence (e.g. another network's ``hidden_degree_list``) has one array of shape
        ``(H,)`` per hidden layer, ``1 + 2 n_blocks`` in all, every one the same (a residual
        sum adds units of equal degree), with the value range and connectivity rule of
        :class:`MADE`; ``hidden_degrees`` is then ``"explicit"``.
    order, activation, context_features, zero_last, rng
        As for :class:`MADE`. ``rng`` draws a random order first, then the parameters in key
        order:
        ``w0, b0`` (torch default), per block ``w0, b0`` (torch default) and ``w1, b1``
        (``U(-1e-3, 1e-3)``, as nflows, so each block starts near the identity), then
        ``w_out, b_out`` (torch default, or zeros with ``zero_last``).

    Attributes
    ----------
    params : ParamDict
        ``"w0"`` ``(H, D + context_features)``, ``"b0"``; ``"blocks.{j}.w0"``,
        ``"blocks.{j}.w1"`` ``(H, H)`` and their biases ``"blocks.{j}.b0"``,
        ``"blocks.{j}.b1"``; ``"w_out"`` ``(D * n_params, H)``, ``"b_out"``.
    masks : list of ndarray
        Aligned with the weights in key order: ``w0``, the blocks' ``w0, w1``, ``w_out``.
    order, input_degrees : ndarray of int64
    hidden_degree_list : list of ndarray
        The degrees of every hidden layer (all the same array): the initial layer, then two
        per block.
    dim, n_params, hidden_features, n_blocks, context_features, activation

    Notes
    -----
    Forward, ``V = W * M`` for every weight, ``u = x`` or ``[x, context]``::

        h_0 = u V_0^T + b_0
        block j:  s_1 = f(h_j),  t = s_1 V_{j,0}^T + b_{j,0},  s_2 = f(t),
                  h_{j+1} = h_j + s_2 V_{j,1}^T + b_{j,1}
        out = (h_B V_out^T + b_out).reshape(batch, D, n_params)     (no activation before it)

    The block masks (``m_out >= m_in`` on the same degrees) keep the degree of every unit, so
    the residual sum respects the autoregressive structure. Pullback, ``g = out_bar``::

        W_out_bar = (g^T h_B) * M_out,   b_out_bar = sum_n g,   h_bar = g V_out
        block j (reversed), with r = h_bar (the cotangent of the block's residual branch):
            W_{j,1}_bar = (r^T s_2) * M,   b_{j,1}_bar = sum_n r,   t_bar = (r V_{j,1}) * f'(t)
            W_{j,0}_bar = (t_bar^T s_1) * M,   b_{j,0}_bar = sum_n t_bar
            h_bar <- h_bar + (t_bar V_{j,0}) * f'(h_j)
        W_0_bar = (h_bar^T u) * M_0,   b_0_bar = sum_n h_bar,   u_bar = h_bar V_0

    Examples
    --------
    >>> import numpy as np
    >>> from refflow.nn import ResidualMADE
    >>> net = ResidualMADE(3, hidden_features=8, n_blocks=1, n_params=3, rng=0)
    >>> list(net.params)
    ['w0', 'b0', 'blocks.0.w0', 'blocks.0.b0', 'blocks.0.w1', 'blocks.0.b1', 'w_out', 'b_out']
    >>> x = np.random.default_rng(1).normal(size=(4, 3))
    >>> out, pullback = net.vjp(x)
    >>> x_bar, grads = pullback(np.ones_like(out))
    >>> out.shape, float(np.abs(x_bar[:, 2]).max())
    ((4, 3, 3), 0.0)
    """

    def __init__(self, dim, hidden_features=64, n_blocks=2, n_params=2, *, order="natural",
                 hidden_degrees="cyclic", activation="relu", context_features=0,
                 zero_last=False, rng=None):
        where = "ResidualMADE"
        dim, n_params, context_features, act, rng = _check_common(
            dim, n_params, context_features, activation, rng, where)
        width = check_dim(hidden_features, where, "hidden_features")
        n_blocks = check_features(n_blocks, where, "n_blocks", allow_zero=True)
        explicit = None
        if isinstance(hidden_degrees, str):
            if hidden_degrees != "cyclic":
                raise ValueError(f"{where}: hidden_degrees must be 'cyclic' or a sequence of "
                                 f"integer arrays, got {hidden_degrees!r}")
        else:
            explicit = _degree_sequence(hidden_degrees, 1 + 2 * n_blocks, where)
        self.hidden_degrees = "explicit" if explicit is not None else "cyclic"
        self.dim, self.n_params = dim, n_params
        self.hidden_features, self.n_blocks = width, n_blocks
        self.context_features = context_features
        self._act = act
        self.activation = act.name
        self.order = _frozen(_input_order(order, dim, rng, where))
        self.input_degrees = _frozen(self.order + 1)

        prev = np.concatenate([self.input_degrees, np.zeros(context_features, dtype=np.int64)])
        if explicit is None:
            deg = _frozen(_hidden_degrees("cyclic", width, dim, context_features > 0, prev, rng,
                                          0, where))
        else:
            deg = _frozen(_explicit_hidden_degrees(explicit[0], width, dim, context_features > 0,
                                                   prev, 0, where))
            for layer, other in enumerate(explicit[1:], start=1):
                other = _explicit_hidden_degrees(other, width, dim, context_features > 0, deg,
                                                 layer, where)
                if not np.array_equal(other, deg):
                    raise ValueError(f"{where}: hidden_degrees[{layer}] differs from "
                                     f"hidden_degrees[0]; every hidden layer of a residual "
                                     f"MADE has the same degrees")
        self.hidden_degree_list = [deg] * (1 + 2 * n_blocks)
        m_in = _mask(deg, prev, strict=False)
        m_hh = _mask(deg, deg, strict=False)
        m_out = _mask(np.repeat(self.input_degrees, n_params), deg, strict=True)

        arrays, masks = {}, []
        w, b = linear_init(rng, width, dim + context_features)
        arrays["w0"], arrays["b0"] = w * m_in, b
        masks.append(m_in)
        for j in range(n_blocks):
            w, b = linear_init(rng, width, width)
            arrays[f"blocks.{j}.w0"], arrays[f"blocks.{j}.b0"] = w * m_hh, b
            w = rng.uniform(-1e-3, 1e-3, size=(width, width))
            b = rng.uniform(-1e-3, 1e-3, size=width)
            arrays[f"blocks.{j}.w1"], arrays[f"blocks.{j}.b1"] = w * m_hh, b
            masks += [m_hh, m_hh]
        _output_layer(rng, arrays, masks, m_out, width, zero_last)
        self._set_layers(arrays, masks)

    def __repr__(self):
        return (f"ResidualMADE(dim={self.dim}, hidden_features={self.hidden_features}, "
                f"n_blocks={self.n_blocks}, n_params={self.n_params}, "
                f"activation={self.activation!r}, context_features={self.context_features})")

    def _block_weights(self, dtype, weights=None):
        ws, bs = self._weights(dtype) if weights is None else weights
        blocks = [(ws[f"blocks.{j}.w0"], bs[f"blocks.{j}.b0"],
                   ws[f"blocks.{j}.w1"], bs[f"blocks.{j}.b1"]) for j in range(self.n_blocks)]
        return ws, bs, blocks

    # ------------------------------------------------------------ private, unchecked
    def _forward(self, x, context=None, weights=None):
        """Output ``(batch, dim, n_params)`` for validated arrays of one dtype (``weights`` as
        :meth:`MADE._forward`)."""
        ws, bs, blocks = self._block_weights(x.dtype, weights)
        f = self._act.value
        h = self._first_input(x, context) @ ws["w0"].T
        h += bs["b0"]
        for w0, b0, w1, b1 in blocks:
            t = f(h) @ w0.T
            t += b0
            r = f(t) @ w1.T
            r += b1
            h += r
        out = h @ ws["w_out"].T
        out += bs["b_out"]
        return out.reshape(x.shape[0], self.dim, self.n_params)

    def _vjp(self, x, context=None):
        """``(out, pullback)``; ``pullback(out_bar) -> (x_bar, grads[, context_bar])``.

        Residuals: the first layer's input ``u``, per block ``f(h_j), f'(h_j), f(t), f'(t)``,
        the last hidden state and the masked weights.
        """
        dtype, n = x.dtype, x.shape[0]
        ws, bs, blocks = self._block_weights(dtype)
        vd = self._act.value_and_derivative
        u = self._first_input(x, context)
        h = u @ ws["w0"].T
        h += bs["b0"]
        saved = []
        for w0, b0, w1, b1 in blocks:
            s1, d1 = vd(h)
            t = s1 @ w0.T
            t += b0
            s2, d2 = vd(t)
            r = s2 @ w1.T
            r += b1
            h += r                          # h itself is not a residual, so in place is safe
            saved.append((s1, d1, s2, d2))
        out = h @ ws["w_out"].T
        out += bs["b_out"]
        h_last = h

        def pullback(out_bar):
            g = out_bar.reshape(n, self.dim * self.n_params)
            w_bars, b_bars = {}, {}
            w_bars["w_out"], b_bars["b_out"] = g.T @ h_last, g.sum(axis=0)
            h_bar = g @ ws["w_out"]
            for j in range(self.n_blocks - 1, -1, -1):
                (w0, _, w1, _), (s1, d1, s2, d2) = blocks[j], saved[j]
                w_bars[f"blocks.{j}.w1"], b_bars[f"blocks.{j}.b1"] = h_bar.T @ s2, h_bar.sum(0)
                t_bar = h_bar @ w1
                t_bar *= d2
                w_bars[f"blocks.{j}.w0"], b_bars[f"blocks.{j}.b0"] = t_bar.T @ s1, t_bar.sum(0)
                s1_bar = t_bar @ w0
                s1_bar *= d1
                h_bar += s1_bar             # h_bar is this pullback's own array
            w_bars["w0"], b_bars["b0"] = h_bar.T @ u, h_bar.sum(axis=0)
            u_bar = h_bar @ ws["w0"]
            grads = self._masked_grads([w_bars[k] for k in self._w_keys],
                                       [b_bars[k] for k in self._b_keys], dtype)
            x_bar, c_bar = self._split_input_bar(u_bar)
            return x_bar, grads, c_bar

        return out.reshape(n, self.dim, self.n_params), pullback


# ----------------------------------------------------------------- ResidualMaskedMLP
class ResidualMaskedMLP(_Autoregressive):
    r"""Masked MLP with residual blocks and no activation outside them (zuko's ``MaskedMLP``
    with ``residual=True``).

    The same autoregressive structure, degrees and masks as :class:`MADE` (``out[n, i, :]``
    depends only on the inputs ``x[n, j]`` with ``input_degrees[j] < input_degrees[i]``, and on
    the context), but another network: a masked linear input layer, then per hidden width a
    residual block ``h <- h + f(h A^T + c) B^T + d`` (the activation inside the block only), a
    plain masked linear between two blocks only where their widths differ, and the masked
    linear output layer. It is not :class:`ResidualMADE` (nflows' ResMADE applies ``f`` to the
    block's input as well, ``h + f(f(h) A^T + c) B^T + d``, and has one width).

    Parameters
    ----------
    dim : int
        Number of autoregressive inputs ``D``.
    hidden : sequence of int, default (64, 64)
        The width ``H_s`` of every stage ``s`` (one residual block each); ``()`` gives a single
        masked affine layer.
    n_params : int, default 2
        Outputs per input.
    order, hidden_degrees, activation, context_features, zero_last
        As for :class:`MADE`, with one degree array per stage (a residual sum adds units of
        equal degree): a stage with the width of the stage before it has no linear layer
        between the two, so it keeps the degrees of that stage (the "random" rule draws only
        where the width changes; explicit degrees must repeat the previous stage's there).
    rng : None, int or numpy.random.Generator
        Draws a random order first, then random degrees stage by stage, then the parameters in
        key order, each weight and bias with torch's ``nn.Linear`` default
        ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` (zuko's ``MaskedLinear`` is an ``nn.Linear``);
        stored weights are multiplied by their masks. ``zero_last`` zeros the output layer.

    Attributes
    ----------
    params : ParamDict
        ``"w0"`` ``(H_0, D + context_features)``, ``"b0"``; per stage ``s``: ``"links.{s}.w"``
        ``(H_s, H_{s-1})`` and ``"links.{s}.b"`` (only where ``H_s != H_{s-1}``), then
        ``"blocks.{s}.w0"``, ``"blocks.{s}.b0"``, ``"blocks.{s}.w1"``, ``"blocks.{s}.b1"``
        (``(H_s, H_s)`` weights); ``"w_out"`` ``(D * n_params, H_last)``, ``"b_out"``.
    masks : list of ndarray
        One float64 0/1 array per weight, in key order (read-only).
    order, input_degrees : ndarray of int64, shape (D,)
    hidden_degree_list : list of ndarray of int64
        The degrees of every stage.
    dim, n_params, hidden, context_features, activation, hidden_degrees

    Raises
    ------
    ValueError
        As :class:`MADE`; explicit degrees that change between two stages of equal width.

    Notes
    -----
    With ``u = x`` (or ``[x, context]``) and every weight masked, ``V = W * M``::

        h = u V_0^T + b_0                                      (input layer, width H_0)
        stage s = 0 .. L-1:
            h <- h V_{link,s}^T + b_{link,s}                   (only if s > 0, H_s != H_{s-1})
            a_s = h A_s^T + c_s,   y_s = h + f(a_s) B_s^T + d_s,   h <- y_s     (block s)
        out = (h V_out^T + b_out).reshape(batch, D, n_params)

    with ``A_s = W_{blocks.s.w0} * M``, ``B_s = W_{blocks.s.w1} * M``. Masks: input layer
    ``m_0(k) >= m_in(j)``; link ``m_s(k) >= m_{s-1}(j)``; both block weights
    ``m_s(k) >= m_s(j)`` (so a block keeps every unit's degree and the residual sum respects
    the autoregressive structure); output ``m_in(i) > m_last(k)`` (strict).

    Pullback, ``g = out_bar.reshape(batch, D * n_params)``, ``h_bar = g V_out``,
    ``W_out_bar = (g^T h_L) * M_out``, ``b_out_bar = sum_n g``; then stage by stage in
    reverse, with ``y_bar = h_bar`` the cotangent of a block's output (the chain rule on
    ``y = h + f(a) B^T + d``, ``a = h A^T + c``)::

        B_bar = (y_bar^T f(a)) * M,   d_bar = sum_n y_bar
        a_bar = (y_bar B) * f'(a)
        A_bar = (a_bar^T h) * M,      c_bar = sum_n a_bar
        h_bar = y_bar + a_bar A                         (identity path + branch)
        link:  V_link_bar = (h_bar^T h_prev) * M,  b_link_bar = sum_n h_bar,  h_bar <- h_bar V_link

    and at the input layer ``W_0_bar = (h_bar^T u) * M_0``, ``b_0_bar = sum_n h_bar``,
    ``u_bar = h_bar V_0 = [x_bar, context_bar]``. In column-vector notation the block's input
    cotangent is ``h_bar = y_bar + A^T (f'(a) * (B^T y_bar))``. Multiplying every weight
    gradient by its mask is ``d out / d W = (d out / d V) * M`` for ``V = W * M``, so masked
    entries get exactly 0.

    It has the private interface of a masked autoregressive layer's conditioner (the ``made``
    attribute of :class:`~refflow.MaskedAffineAutoregressive`, the spline and the monotone
    layers): put in place of a layer's MADE with the same ``dim``, ``n_params``, ``order`` and
    ``context_features``, the layer computes with it (``refflow.interop.from_zuko`` does this).
    Sampling (the layers' sequential direction) runs ``dim`` full passes (the reference
    :meth:`_sample_passes`); :class:`MADE`'s degree-ordered incremental sampler and its
    degree-sorted block products evaluate MADE's own layers and are not used here.

    References
    ----------
    Germain, Gregor, Murray, Larochelle, "MADE: Masked Autoencoder for Distribution
    Estimation", ICML 2015, arXiv:1502.03509.
    He, Zhang, Ren, Sun, "Deep Residual Learning for Image Recognition", CVPR 2016,
    arXiv:1512.03385.
    Rozet et al., "Zuko: Normalizing flows in PyTorch", 2022, doi:10.5281/zenodo.7625672
    (``zuko.nn.MaskedMLP``, ``residual=True``).

    Examples
    --------
    >>> import numpy as np
    >>> from refflow.nn import ResidualMaskedMLP
    >>> net = ResidualMaskedMLP(3, hidden=(4, 6), n_params=2, rng=0)
    >>> list(net.params)                  # doctest: +NORMALIZE_WHITESPACE
    ['w0', 'b0', 'blocks.0.w0', 'blocks.0.b0', 'blocks.0.w1', 'blocks.0.b1', 'links.1.w',
     'links.1.b', 'blocks.1.w0', 'blocks.1.b0', 'blocks.1.w1', 'blocks.1.b1', 'w_out', 'b_out']
    >>> x = np.random.default_rng(1).normal(size=(5, 3))
    >>> out, pullback = net.vjp(x)
    >>> x_bar, grads = pullback(np.ones_like(out))
    >>> out.shape, float(np.abs(x_bar[:, 2]).max())       # nothing depends on x_3
    ((5, 3, 2), 0.0)
    """

    def __init__(self, dim, hidden=(64, 64), n_params=2, *, order="natural",
                 hidden_degrees="cyclic", activation="relu", context_features=0,
                 zero_last=False, rng=None):
        where = "ResidualMaskedMLP"
        explicit, rng = _init_layered(self, where, dim, hidden, n_params, order, hidden_degrees,
                                      activation, context_features, rng)
        dim, n_params, hidden = self.dim, self.n_params, self.hidden
        context_features = self.context_features

        conditional = context_features > 0
        prev = np.concatenate([self.input_degrees, np.zeros(context_features, dtype=np.int64)])
        degrees = []
        # per stage: whether a linear layer leads into it (the input layer, or a width change)
        self._linked = [s == 0 or hidden[s] != hidden[s - 1] for s in range(len(hidden))]
        for s, width in enumerate(hidden):
            if explicit is not None:
                deg = _frozen(_explicit_hidden_degrees(explicit[s], width, dim, conditional,
                                                       prev, s, where))
                if not self._linked[s] and not np.array_equal(deg, prev):
                    raise ValueError(f"{where}: hidden_degrees[{s}] differs from "
                                     f"hidden_degrees[{s - 1}]; two stages of equal width have "
                                     f"no layer between them, so they share their degrees")
            elif self._linked[s]:
                deg = _frozen(_hidden_degrees(hidden_degrees, width, dim, conditional, prev,
                                              rng, s, where))
            else:
                deg = prev
            degrees.append(deg)
            prev = deg
        self.hidden_degree_list = degrees

        arrays, masks = {}, []
        prev_deg = np.concatenate([self.input_degrees,
                                   np.zeros(context_features, dtype=np.int64)])
        prev_width = dim + context_features
        for s, (width, deg) in enumerate(zip(hidden, degrees)):
            if self._linked[s]:
                m = _mask(deg, prev_deg, strict=False)
                key_w, key_b = ("w0", "b0") if s == 0 else (f"links.{s}.w", f"links.{s}.b")
                w, b = linear_init(rng, width, prev_width)
                arrays[key_w], arrays[key_b] = w * m, b
                masks.append(m)
            m_hh = _mask(deg, deg, strict=False)
            for i in range(2):
                w, b = linear_init(rng, width, width)
                arrays[f"blocks.{s}.w{i}"], arrays[f"blocks.{s}.b{i}"] = w * m_hh, b
                masks.append(m_hh)
            prev_deg, prev_width = deg, width
        out_mask = _mask(np.repeat(self.input_degrees, n_params), prev_deg, strict=True)
        _output_layer(rng, arrays, masks, out_mask, prev_width, zero_last)
        self._set_layers(arrays, masks)

    def __repr__(self):
        return (f"ResidualMaskedMLP(dim={self.dim}, hidden={self.hidden}, "
                f"n_params={self.n_params}, hidden_degrees={self.hidden_degrees!r}, "
                f"activation={self.activation!r}, context_features={self.context_features})")

    # ------------------------------------------------------------ private, unchecked
    def _stages(self, ws, bs):
        """Per stage ``(link (V, b) or None, (A, c, B, d))`` from the prepared weights."""
        stages = []
        for s in range(len(self.hidden)):
            link = None
            if s > 0 and self._linked[s]:
                link = (ws[f"links.{s}.w"], bs[f"links.{s}.b"])
            block = (ws[f"blocks.{s}.w0"], bs[f"blocks.{s}.b0"],
                     ws[f"blocks.{s}.w1"], bs[f"blocks.{s}.b1"])
            stages.append((link, block))
        return stages

    def _input_layer(self, u, ws, bs):
        key = "w0" if self.hidden else "w_out"
        h = u @ ws[key].T
        h += bs["b0" if self.hidden else "b_out"]
        return h

    def _forward(self, x, context=None, weights=None):
        """Output ``(batch, dim, n_params)`` for validated arrays of one dtype (``weights``
        optionally ``self._weights(x.dtype)``, prepared once for several passes)."""
        ws, bs = self._weights(x.dtype) if weights is None else weights
        n = x.shape[0]
        h = self._input_layer(self._first_input(x, context), ws, bs)
        if not self.hidden:
            return h.reshape(n, self.dim, self.n_params)
        f = self._act.value
        for link, (a_w, a_b, b_w, b_b) in self._stages(ws, bs):
            if link is not None:
                h = h @ link[0].T
                h += link[1]
            a = h @ a_w.T
            a += a_b
            r = f(a) @ b_w.T
            r += b_b
            h += r                          # h is this pass's own array
        out = h @ ws["w_out"].T
        out += bs["b_out"]
        return out.reshape(n, self.dim, self.n_params)

    def _vjp(self, x, context=None):
        """``(out, pullback)``; ``pullback(out_bar) -> (x_bar, grads, context_bar)``
        (``context_bar`` None without context). Residuals: the first layer's input ``u``, per
        stage the link's input, the block's input ``h``, ``f(a)`` and ``f'(a)``, the last
        hidden state, and the masked weights."""
        dtype, n = x.dtype, x.shape[0]
        ws, bs = self._weights(dtype)
        u = self._first_input(x, context)
        h = self._input_layer(u, ws, bs)
        stages = self._stages(ws, bs) if self.hidden else []
        vd = self._act.value_and_derivative
        saved = []
        for link, (a_w, a_b, b_w, b_b) in stages:
            h_prev = None
            if link is not None:
                h_prev = h
                h = h @ link[0].T
                h += link[1]
            a = h @ a_w.T
            a += a_b
            fa, dfa = vd(a)
            y = fa @ b_w.T
            y += b_b
            y += h                          # a new array: h stays the block's residual
            saved.append((h_prev, h, fa, dfa))
            h = y
        if self.hidden:
            out = h @ ws["w_out"].T
            out += bs["b_out"]
        else:
            out = h
        h_last = h

        def pullback(out_bar):
            g = out_bar.reshape(n, self.dim * self.n_params)
            w_bars, b_bars = {}, {}
            if not self.hidden:
                w_bars["w_out"], b_bars["b_out"] = g.T @ u, g.sum(axis=0)
                u_bar = g @ ws["w_out"]
            else:
                w_bars["w_out"], b_bars["b_out"] = g.T @ h_last, g.sum(axis=0)
                h_bar = g @ ws["w_out"]
                for s in range(len(stages) - 1, -1, -1):
                    (link, (a_w, _, b_w, _)), (h_prev, h_in, fa, dfa) = stages[s], saved[s]
                    # block: y = h + f(a) B^T + d, a = h A^T + c; h_bar is y_bar here
                    w_bars[f"blocks.{s}.w1"] = h_bar.T @ fa
                    b_bars[f"blocks.{s}.b1"] = h_bar.sum(axis=0)
                    a_bar = h_bar @ b_w
                    a_bar *= dfa
                    w_bars[f"blocks.{s}.w0"] = a_bar.T @ h_in
                    b_bars[f"blocks.{s}.b0"] = a_bar.sum(axis=0)
                    h_bar = h_bar + a_bar @ a_w     # identity path + branch (a new array)
                    if link is not None:
                        w_bars[f"links.{s}.w"] = h_bar.T @ h_prev
                        b_bars[f"links.{s}.b"] = h_bar.sum(axis=0)
                        h_bar = h_bar @ link[0]
                w_bars["w0"], b_bars["b0"] = h_bar.T @ u, h_bar.sum(axis=0)
                u_bar = h_bar @ ws["w0"]
            grads = self._masked_grads([w_bars[k] for k in self._w_keys],
                                       [b_bars[k] for k in self._b_keys], dtype)
            x_bar, c_bar = self._split_input_bar(u_bar)
            return x_bar, grads, c_bar

        return out.reshape(n, self.dim, self.n_params), pullback
