"""The bijector contract, ``Chain`` and ``Inverse``.

A bijector ``T`` maps base space to data space, ``x = T(z)``.

======================  =====================================================================
``forward(z)``          ``(x, log_det)`` with ``log_det = log|det dx/dz|``, shape ``(batch,)``
``inverse(x)``          ``(z, log_det)`` with ``log_det = log|det dz/dx|``
``forward_vjp(z)``      ``(x, log_det, pullback)``; ``pullback(x_bar, log_det_bar) -> (z_bar, grads)``
``inverse_vjp(x)``      ``(z, log_det, pullback)``; ``pullback(z_bar, log_det_bar) -> (x_bar, grads)``
======================  =====================================================================

``grads`` has the keys and shapes of ``params`` and holds gradients summed over the batch.
Either cotangent may be ``None`` (zeros). A conditional layer takes ``context`` in every call
and its pullback also returns the context's cotangent.

Writing a bijector
------------------
A subclass implements one pass per direction, :meth:`Bijector._forward_pass` and
:meth:`Bijector._inverse_pass` ``(v, context, vjp) -> (out, log_det, pullback or None)``, on
*validated* C-contiguous ``(batch, dim)`` arrays of one float dtype (``context`` is None for an
unconditional layer). It reads parameters through ``self._p(dtype)``, which returns copies, so
a pullback that closes over them is unaffected by later optimizer steps. The pullback receives
full cotangent arrays (never ``None``) of the pass's dtype and returns
``(in_bar, grads, context_bar)``, ``context_bar`` None when ``context`` is. Optional hooks:
``_check_forward_domain`` / ``_check_inverse_domain`` (raising ``self._domain_error``),
``_batch_coupling`` (a layer whose pass depends on the whole batch), ``_input_knots`` (where
its log-det is not differentiable) and ``_config`` / ``_from_config`` (model files). Changes of
non-trainable state (running statistics, data-dependent initialisation) go through
``commit_on_success``, so they happen only when the whole public call succeeds. The public
methods here do the rest: input validation, single points, context broadcasting, result
finiteness, cotangent validation and float64 grads. DEVELOPERS.md, "Adding a bijector", has a
worked example.
"""

import contextlib
import contextvars

import numpy as np

from .._validation import as_batch, as_cotangent
from ..io.spec import from_spec, to_spec
from ..params import ParamDict, prefixed

__all__ = ["Bijector", "Chain", "Inverse"]

_OTHER = {"forward": "inverse", "inverse": "forward"}

# State updates (running statistics, data-dependent initialisation) requested during a public
# call; they are applied only when the outermost public call succeeds, so that a call that
# raises anywhere (in a later layer of a Chain, say) leaves every layer as it was.
_PENDING = contextvars.ContextVar("refflow_pending_state_updates", default=None)


def commit_on_success(update):
    """Run ``update()`` when the outermost public call now running succeeds.

    Outside any public call (a private pass used directly) it runs at once.
    """
    pending = _PENDING.get()
    if pending is None:
        update()
    else:
        pending.append(update)


@contextlib.contextmanager
def atomic():
    """Collect the state updates of the passes inside; apply them only if no exception escapes."""
    if _PENDING.get() is not None:  # nested: the outermost call commits
        yield
        return
    pending = []
    token = _PENDING.set(pending)
    try:
        yield
    finally:
        _PENDING.reset(token)
    for update in pending:  # not reached when the body raised
        update()


class Bijector:
    """Base class of every bijector: validation, single points and the pullback wrapper.

    Attributes
    ----------
    dim : int
        Event size; inputs are ``(batch, dim)`` or ``(dim,)``.
    params : ParamDict
        Trainable parameters (float64), possibly empty. Assigning ``params[k] = v`` writes in
        place; updates take effect at the next call.
    buffers : dict
        Non-trainable state that defines the map (permutations, running statistics).
    training : bool
        Train/eval mode; matters only for layers with batch statistics. See :meth:`train`.
    context_dim : int or None
        ``None`` for an unconditional layer. A conditional layer takes ``context`` of shape
        ``(batch, context_dim)`` (or ``(context_dim,)``, shared by every row) in every pass, and
        the pullback of a conditional call returns ``(in_bar, grads, context_bar)``.
    """

    dim = None
    training = True
    context_dim = None

    def __init__(self, dim, params=None, buffers=None):
        self.dim = dim
        self._params = ParamDict(params or {})
        self._buffers = dict(buffers or {})

    # ----------------------------------------------------------------- state
    @property
    def params(self):
        return self._params

    @property
    def buffers(self):
        return self._buffers

    def _children(self):
        return []

    def train(self, mode=True):
        """Set training mode (batch statistics) or, with ``mode=False``, eval mode; returns self."""
        self.training = bool(mode)
        for child in self._children():
            child.train(mode)
        return self

    def eval(self):
        """Set eval mode (running statistics); returns self."""
        return self.train(False)

    def _p(self, dtype):
        """Copies of this layer's parameters in the compute dtype (residuals for the pullback)."""
        return {k: v.astype(dtype) for k, v in self._params.items()}

    def __repr__(self):
        return f"{type(self).__name__}(dim={self.dim})"

    # ------------------------------------------------------------ save / load
    def _config(self):
        """JSON-serialisable constructor arguments that rebuild this layer's structure.

        ``type(self)._from_config(self._config())`` has the same ``params`` and ``buffers``
        keys, shapes and dtypes; their values come from the file (see :mod:`refflow.io`).
        """
        raise NotImplementedError(f"{type(self).__name__} does not define _config(), so it "
                                  f"cannot be saved")

    @classmethod
    def _from_config(cls, config):
        """Build the layer from :meth:`_config`'s output (default ``cls(**config)``)."""
        return cls(**config)

    # ----------------------------------------------------------- subclass hooks
    def _forward_pass(self, z, context, vjp):
        """One pass ``z -> x``: ``(x, log_det, pullback)``, ``pullback`` None unless ``vjp``.

        ``z`` is a validated C-contiguous ``(n, dim)`` array of one float dtype; ``context`` a
        validated ``(n, context_dim)`` array of the same dtype, or None for an unconditional
        layer. ``x`` must be a new C-contiguous array of ``z``'s dtype and ``log_det`` (``n,``)
        ``log|det dx/dz|`` per row. ``pullback(x_bar, log_det_bar)`` receives full cotangent
        arrays of the pass's dtype, must not modify them, and returns ``(z_bar, grads,
        context_bar)``: ``grads`` with the keys and shapes of ``params`` (summed over the
        batch), ``context_bar`` None when ``context`` is None.
        """
        raise NotImplementedError(f"{type(self).__name__} does not implement _forward_pass")

    def _inverse_pass(self, x, context, vjp):
        """One pass ``x -> z``, as :meth:`_forward_pass` (``log_det = log|det dz/dx|``)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement _inverse_pass")

    def _check_forward_domain(self, z):
        """Raise ``self._domain_error("forward", ...)`` for points outside the domain."""

    def _check_inverse_domain(self, x):
        """Raise ``self._domain_error("inverse", ...)`` for points outside the domain."""

    def _batch_coupling(self):
        """Why this layer's pass now depends on the whole batch, not row by row (a phrase), or
        None (the default: every row is mapped on its own).

        A training-mode ``BatchNorm`` normalises with the batch's statistics and an
        uninitialised ``ActNorm`` initialises from the batch; ``Flow`` refuses to split a batch
        into chunks while any layer says so. Containers are searched through ``_children``.
        """
        return None

    def _input_knots(self, direction, v, context=None):
        """Points where the derivative of the log-det jumps, or None (the default: nowhere).

        A piecewise layer (the splines) returns an ``(n, dim, m)`` array: for each row of the
        input ``v`` of ``direction`` and each coordinate, the ``m`` input values at which that
        coordinate's log-det is not differentiable (``inf`` for none). The registry of test
        cases keeps finite differences away from them.
        """
        return None

    # ------------------------------------------ checked private passes (containers call these)
    def _run(self, direction, v, with_vjp, context=None):
        """One pass on a validated 2-D array: domain check, the hook, a finiteness check.

        ``context`` (validated, ``(batch, context_dim)``) is handed to the hook of a conditional
        layer and must be None for an unconditional one. Returns ``(out, log_det, pullback)``,
        ``pullback`` None unless ``with_vjp``; the pullback returns ``(in_bar, grads,
        context_bar)``.
        """
        # Overflow is reported below as a ValueError naming the layer, not as a RuntimeWarning.
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            if direction == "forward":
                self._check_forward_domain(v)
                result = self._forward_pass(v, context, with_vjp)
            else:
                self._check_inverse_domain(v)
                result = self._inverse_pass(v, context, with_vjp)
        out, log_det = result[0], result[1]
        if not (out.flags.c_contiguous and log_det.shape == (v.shape[0],)):
            raise AssertionError(f"{type(self).__name__}.{direction}: a pass broke the contract "
                                 f"(C-contiguous output, log_det of shape (batch,))")
        if not (np.isfinite(out).all() and np.isfinite(log_det).all()):
            bad = ~(np.isfinite(out).all(axis=1) & np.isfinite(log_det))
            raise ValueError(
                f"{type(self).__name__}.{direction}: the result is not finite for "
                f"{int(bad.sum())} of {v.shape[0]} rows (first row {int(np.argmax(bad))}); the "
                f"input or the parameters are outside the range representable in {v.dtype}"
            )
        return result

    def _domain_error(self, direction, message):
        return ValueError(f"{type(self).__name__}.{direction}: {message}")

    # ------------------------------------------------------------- public API
    def _name(self):
        return type(self).__name__

    def _check_context(self, context, n, where):
        """Validate ``context`` for a batch of ``n``: ``(c2, shared)``, ``c2`` of shape ``(n, c)``.

        ``shared`` is True when a single ``(context_dim,)`` context was given for every row.
        """
        if self.context_dim is None:
            if context is not None:
                raise ValueError(f"{where}: this layer is unconditional (context_dim=None), but a "
                                 f"context was given")
            return None, False
        if context is None:
            raise ValueError(f"{where}: this layer is conditional; pass context of shape "
                             f"(batch, {self.context_dim}) or ({self.context_dim},)")
        c2, shared = as_batch(context, self.context_dim, where, "context")
        if shared:
            c2 = np.repeat(c2, n, axis=0)
        elif c2.shape[0] != n:
            raise ValueError(f"{where}: context has {c2.shape[0]} rows but the input has {n}")
        return c2, shared

    def _public(self, direction, v, with_vjp, context=None):
        where = f"{self._name()}.{direction}"
        v2, was_1d = as_batch(v, self.dim, where)
        c2, shared = self._check_context(context, v2.shape[0], where)
        if with_vjp and np.shares_memory(v2, v):
            v2 = v2.copy()  # the pullback may read it; the caller may change their array later
        if with_vjp and c2 is not None and np.shares_memory(c2, context):
            c2 = c2.copy()
        if c2 is not None and c2.dtype != v2.dtype:
            c2 = c2.astype(v2.dtype)  # one compute dtype per pass, never silently mixed
        with atomic():
            result = self._run(direction, v2, with_vjp, c2)
        out, log_det, inner = result
        if with_vjp:  # the pullback may read the output: the caller gets their own copy
            out, log_det = out.copy(), log_det.copy()
        if was_1d:
            out, log_det = out[0], log_det[0]
        if not with_vjp:
            return out, log_det
        conditional = None if c2 is None else shared
        return out, log_det, self._wrap_pullback(inner, v2, was_1d, where, conditional)

    def _wrap_pullback(self, inner, v2, was_1d, where, conditional=None):
        """Public pullback: validates cotangents (None = zeros), float64 grads, finiteness.

        ``conditional`` is None for an unconditional call; otherwise True when the caller gave a
        single ``(context_dim,)`` context (its cotangent is summed over the rows) and False for a
        ``(batch, context_dim)`` one.
        """
        n, dtype = v2.shape[0], v2.dtype
        out_name = "x_bar" if where.endswith("forward") else "z_bar"
        in_shape = v2.shape[1:] if was_1d else v2.shape

        def pullback(out_bar=None, log_det_bar=None):
            out_bar = as_cotangent(out_bar, (n, self.dim), was_1d, dtype, f"{where} pullback",
                                   out_name)
            log_det_bar = as_cotangent(log_det_bar, (n,), was_1d, dtype, f"{where} pullback",
                                       "log_det_bar")
            with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                in_bar, grads, context_bar = inner(out_bar, log_det_bar)
            grads = {k: np.asarray(g, dtype=np.float64) for k, g in grads.items()}
            bars = [in_bar] if conditional is None else [in_bar, context_bar]
            if not (all(np.isfinite(b).all() for b in bars)
                    and all(np.isfinite(g).all() for g in grads.values())):
                raise ValueError(f"{where} pullback: the gradient is not finite (overflow)")
            if conditional is None:
                return in_bar.reshape(in_shape), grads
            if conditional:  # one context row was shared by every point
                context_bar = context_bar.sum(axis=0)
            return in_bar.reshape(in_shape), grads, context_bar

        return pullback

    def forward(self, z, context=None):
        """Map base points to data points.

        Parameters
        ----------
        z : array_like of shape (batch, dim) or (dim,)
        context : array_like of shape (batch, context_dim) or (context_dim,), optional
            Required by conditional layers, refused by unconditional ones.

        Returns
        -------
        x : ndarray of the shape and float dtype of ``z``
        log_det : ndarray of shape (batch,) (a scalar for a single point)
            ``log|det dx/dz|``.
        """
        return self._public("forward", z, False, context)

    def inverse(self, x, context=None):
        """Map data points to base points; ``log_det = log|det dz/dx|``."""
        return self._public("inverse", x, False, context)

    def forward_vjp(self, z, context=None):
        """``(x, log_det, pullback)``; ``pullback(x_bar=None, log_det_bar=None) -> (z_bar, grads)``.

        For a conditional call the pullback returns ``(z_bar, grads, context_bar)``.
        """
        return self._public("forward", z, True, context)

    def inverse_vjp(self, x, context=None):
        """``(z, log_det, pullback)``; ``pullback(z_bar=None, log_det_bar=None) -> (x_bar, grads)``.

        For a conditional call the pullback returns ``(x_bar, grads, context_bar)``.
        """
        return self._public("inverse", x, True, context)


class Chain(Bijector):
    """Composition ``x = f_K(... f_2(f_1(z)))``: ``forward`` applies the list in order.

    Log-dets add; ``inverse`` runs the list backwards. Parameters are named
    ``"layers.<i>.<name>"``.

    Parameters
    ----------
    layers : sequence of Bijector
        Non-empty, all of the same ``dim``.

    Examples
    --------
    >>> import numpy as np
    >>> from refflow import Affine, Chain, Exp
    >>> chain = Chain([Affine(2), Exp(2)])
    >>> chain.params["layers.0.shift"] = [0.5, -1.0]
    >>> x, log_det = chain.forward(np.zeros((1, 2)))
    >>> np.allclose(x, np.exp([[0.5, -1.0]])), np.allclose(log_det, -0.5)
    (True, True)
    """

    def __init__(self, layers):
        layers = list(layers)
        if not layers:
            raise ValueError("Chain: needs at least one layer")
        for i, layer in enumerate(layers):
            if not isinstance(layer, Bijector):
                raise ValueError(f"Chain: layer {i} is a {type(layer).__name__}, not a Bijector")
        dims = {layer.dim for layer in layers}
        if len(dims) != 1:
            raise ValueError(f"Chain: layers have different dims {[l.dim for l in layers]}")
        context_dims = {layer.context_dim for layer in layers} - {None}
        if len(context_dims) > 1:
            raise ValueError(f"Chain: conditional layers have different context_dims "
                             f"{sorted(context_dims)}")
        self.layers = layers
        self.dim = layers[0].dim
        self.context_dim = context_dims.pop() if context_dims else None
        self.training = all(layer.training for layer in layers)

    @property
    def params(self):
        return prefixed((f"layers.{i}", layer.params) for i, layer in enumerate(self.layers))

    @property
    def buffers(self):
        return {
            f"layers.{i}.{k}": v for i, layer in enumerate(self.layers) for k, v in layer.buffers.items()
        }

    def _children(self):
        return list(self.layers)

    def __len__(self):
        return len(self.layers)

    def __getitem__(self, i):
        return self.layers[i]

    def __repr__(self):
        inner = ",\n  ".join(repr(layer) for layer in self.layers)
        return f"Chain([\n  {inner}\n])"

    def _config(self):
        return {"layers": [to_spec(layer) for layer in self.layers]}

    @classmethod
    def _from_config(cls, config):
        return cls(**dict(config, layers=[from_spec(spec) for spec in config["layers"]]))

    def _pass(self, direction, v, context, vjp):
        order = self.layers if direction == "forward" else self.layers[::-1]
        log_det = np.zeros(v.shape[0], dtype=v.dtype)
        pullbacks = []
        for layer in order:
            layer_context = None if layer.context_dim is None else context
            v, layer_log_det, layer_pullback = layer._run(direction, v, vjp, layer_context)
            log_det = log_det + layer_log_det
            pullbacks.append(layer_pullback)
        if not vjp:
            return v, log_det, None
        index = list(range(len(self.layers)))
        index = index if direction == "forward" else index[::-1]

        def pullback(out_bar, log_det_bar):
            grads = {}
            context_bar = None if context is None else np.zeros_like(context)
            for i, pb in zip(index[::-1], pullbacks[::-1]):
                out_bar, layer_grads, layer_context_bar = pb(out_bar, log_det_bar)
                if layer_context_bar is not None:  # a conditional layer's share
                    context_bar = context_bar + layer_context_bar
                grads.update({f"layers.{i}.{k}": g for k, g in layer_grads.items()})
            return out_bar, grads, context_bar

        return v, log_det, pullback

    def _forward_pass(self, z, context, vjp):
        return self._pass("forward", z, context, vjp)

    def _inverse_pass(self, x, context, vjp):
        return self._pass("inverse", x, context, vjp)


class Inverse(Bijector):
    """The inverse of a bijector: ``Inverse(b).forward`` is ``b.inverse`` and vice versa.

    Parameters and buffers are those of the wrapped bijector (same arrays, same keys).

    Examples
    --------
    >>> import numpy as np
    >>> from refflow import Exp, Inverse
    >>> x, log_det = Inverse(Exp(1)).forward(np.array([[np.e]]))
    >>> x, log_det
    (array([[1.]]), array([-1.]))
    """

    def __init__(self, bijector):
        if not isinstance(bijector, Bijector):
            raise ValueError(f"Inverse: expected a Bijector, got {type(bijector).__name__}")
        self.bijector = bijector
        self.dim = bijector.dim
        self.context_dim = bijector.context_dim
        self.training = bijector.training

    @property
    def params(self):
        return self.bijector.params

    @property
    def buffers(self):
        return self.bijector.buffers

    def _children(self):
        return [self.bijector]

    def __repr__(self):
        return f"Inverse({self.bijector!r})"

    def _config(self):
        return {"bijector": to_spec(self.bijector)}

    @classmethod
    def _from_config(cls, config):
        return cls(**dict(config, bijector=from_spec(config["bijector"])))

    def _run(self, direction, v, with_vjp, context=None):
        return self.bijector._run(_OTHER[direction], v, with_vjp, context)

    def _name(self):
        return f"Inverse({self.bijector._name()})"
