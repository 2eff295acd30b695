"""Wrap a torch module or a JAX function for the oracle: NumPy callables and a functional vjp.

torch and JAX are imported inside these functions only.
"""

import numpy as np


def _as_tuple(out):
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


class _Wrapped:
    """A layer as the oracle sees it.

    Attributes
    ----------
    params : dict of ndarray
        float64 copies of the trainable parameters (the functional check perturbs its own
        copies of these).

    Calling it with NumPy arrays evaluates the layer at its current parameters and returns a
    tuple of NumPy arrays (the form :func:`check_bijector` takes); ``vjp(params, *inputs)`` is
    the functional pullback for ``check_vjp(..., functional=True)``.
    """

    def __init__(self, params, evaluate, vjp):
        self.params = params
        self._evaluate = evaluate
        self.vjp = vjp

    def __call__(self, *inputs):
        return self._evaluate(*inputs)


def from_torch(module, call=None):
    """A torch module, or any call on it, as NumPy callables and a functional pullback.

    Parameters
    ----------
    module : torch.nn.Module
        Its trainable parameters (``requires_grad``) become ``params``, named as in
        ``named_parameters()``. Use a float64 module (``module.double()``) for the
        finite-difference checks; a float32 one is checked against a float64 copy
        (``reference=``).
    call : callable, optional
        ``call(module, *tensors) -> tensor or tuple of tensors``; default ``module(*tensors)``.
        For instance ``lambda m, y: m.inverse(y)``, or a peer's own method.

    Returns
    -------
    wrapped
        ``wrapped(*arrays)`` returns the outputs as a tuple of NumPy arrays (``torch.no_grad``,
        parameters ``wrapped.params``); ``wrapped.vjp(params, *arrays) -> (*outputs, pullback)``
        evaluates with ``params`` and ``pullback(*cotangents) -> (input_bar, grads)``
        (``(bar_0, grads, bar_1, ...)`` for several inputs) by ``torch.autograd.grad``;
        ``wrapped.params`` holds float64 copies of the parameters at wrapping time.

    Notes
    -----
    The parameter values are written into the module's own parameters (``.data``) before each
    evaluation, and again before each pullback, so that code which re-runs the module inside
    its backward pass (zuko's bisection and quadrature) sees the values of its own forward pass.
    Afterwards the module holds the values of the last call. ``vjp`` evaluates without a graph
    (the finite differences need values only); the first call of its pullback runs the pass
    again with autograd on.

    Examples
    --------
    >>> import numpy as np, torch                                   # doctest: +SKIP
    >>> layer = torch.nn.Linear(3, 3).double()                      # doctest: +SKIP
    >>> fwd = from_torch(layer)                                     # doctest: +SKIP
    >>> check_vjp(fwd.vjp, np.ones((4, 3)), fwd.params, functional=True).ok   # doctest: +SKIP
    True
    """
    import torch

    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"from_torch: expected a torch.nn.Module, got {type(module).__name__}")
    call = (lambda m, *args: m(*args)) if call is None else call
    named = [(k, p) for k, p in module.named_parameters() if p.requires_grad]
    base = {k: p.detach().cpu().numpy().astype(np.float64, copy=True) for k, p in named}

    def load(values):
        with torch.no_grad():
            for k, p in named:
                p.data.copy_(torch.as_tensor(np.asarray(values[k])).to(p.dtype))

    def evaluate(*inputs):
        load(base)
        with torch.no_grad():
            out = _as_tuple(call(module, *[torch.as_tensor(np.array(v, copy=True)) for v in inputs]))
        return tuple(o.detach().cpu().numpy() for o in out)

    def vjp(params, *inputs):
        snapshot = {k: np.array(params[k], dtype=np.float64, copy=True) for k, _ in named}
        inputs = [np.array(v, copy=True) for v in inputs]
        load(snapshot)
        with torch.no_grad():       # finite differences need values only: no graph here
            first = _as_tuple(call(module, *[torch.as_tensor(v) for v in inputs]))
        values = tuple(o.detach().cpu().numpy().copy() for o in first)
        graph = []

        def pullback(*cotangents):
            load(snapshot)          # the values of this call, also for code run in backward
            if not graph:           # the pass again, with a graph, on the first pullback
                xs = [torch.as_tensor(v.copy()).requires_grad_() for v in inputs]
                with torch.enable_grad():
                    graph.append((xs, _as_tuple(call(module, *xs))))
            xs, out = graph[0]
            pairs = [(o, torch.as_tensor(np.asarray(c)).to(o.dtype))
                     for o, c in zip(out, cotangents) if c is not None and o.requires_grad]
            wrt = [*xs, *(p for _, p in named)]
            if pairs:
                got = torch.autograd.grad([o for o, _ in pairs], wrt, [c for _, c in pairs],
                                          retain_graph=True, allow_unused=True)
            else:
                got = [None] * len(wrt)

            def numpy(g, w, dtype):
                if g is None:
                    return np.zeros(tuple(w.shape), dtype=dtype)
                return g.detach().cpu().numpy().astype(dtype)

            bars = [numpy(g, w, np.asarray(v).dtype) for g, w, v in zip(got, xs, inputs)]
            grads = {k: numpy(g, p, np.float64) for (k, p), g in zip(named, got[len(xs):])}
            if len(bars) == 1:
                return bars[0], grads
            return (bars[0], grads, *bars[1:])

        return (*values, pullback)

    return _Wrapped({k: v.copy() for k, v in base.items()}, evaluate, vjp)


def from_jax(f, params=None):
    """A JAX function ``f(params, *inputs)`` as NumPy callables and a functional pullback.

    Parameters
    ----------
    f : callable
        ``f(params, *inputs) -> array or tuple of arrays`` in ``jax.numpy``, ``params`` a dict of
        arrays (flatten a model's leaves into one, e.g. with ``equinox.partition``). It is jitted
        once; the check's repeated calls then cost microseconds.
    params : dict of array_like, optional
        The parameters at which ``wrapped(*inputs)`` evaluates (stored as float64 copies in
        ``wrapped.params``).

    Returns
    -------
    wrapped
        As :func:`from_torch`: ``wrapped(*arrays)``, ``wrapped.vjp(params, *arrays)`` (pullback by
        ``jax.vjp``, jitted), ``wrapped.params``.

    Raises
    ------
    ValueError
        If JAX runs in float32 (``jax.config.update("jax_enable_x64", True)`` must come first):
        finite differences in float32 are meaningless.
    """
    import jax

    if not jax.config.jax_enable_x64:
        raise ValueError('from_jax: JAX computes in float32; call jax.config.update('
                         '"jax_enable_x64", True) before creating any array')

    def _tuple(p, *xs):
        return _as_tuple(f(p, *xs))

    fwd = jax.jit(_tuple)

    @jax.jit
    def bwd(p, cts, *xs):
        _, pull = jax.vjp(_tuple, p, *xs)
        return pull(tuple(cts))

    def evaluate(*inputs):
        if params is None:
            raise ValueError("from_jax: give params to evaluate the function directly")
        return tuple(np.asarray(o) for o in fwd(stored, *[np.asarray(v) for v in inputs]))

    def vjp(p, *inputs):
        xs = [np.array(v, copy=True) for v in inputs]
        p = {k: np.asarray(v) for k, v in p.items()}
        values = tuple(np.array(o) for o in fwd(p, *xs))

        def pullback(*cotangents):
            cts = [np.zeros(v.shape, v.dtype) if c is None else np.asarray(c, dtype=v.dtype)
                   for c, v in zip(cotangents, values)]
            got = bwd(p, cts, *xs)
            grads = {k: np.asarray(v, dtype=np.float64) for k, v in got[0].items()}
            bars = [np.asarray(b) for b in got[1:]]
            if len(bars) == 1:
                return bars[0], grads
            return (bars[0], grads, *bars[1:])

        return (*values, pullback)

    stored = None if params is None else {k: np.array(v, dtype=np.float64, copy=True)
                                          for k, v in params.items()}
    return _Wrapped({} if stored is None else {k: v.copy() for k, v in stored.items()},
                    evaluate, vjp)
