"""Compare a peer flow with its refflow twin: log-probs per sample, gradients per parameter.

torch peers (zuko, nflows, normflows, Pyro): autograd on a float64 copy; JAX peers (FlowJAX):
``jax.grad`` on a float64 copy, in JAX's x64 mode for the call only. torch and JAX are imported
inside the functions."""

import copy

import numpy as np

from .common import np64, require_torch
from .flowjax import parameter_map as flowjax_parameter_map
from .zuko import parameter_map

__all__ = ["compare", "assert_matches", "ComparisonReport"]

#: A parameter's gradient is compared relative to ``max(|g_peer|, GRAD_NOISE_FLOOR * (largest
#: |g_peer| of the model))``: a gradient that is exactly zero (a rotation in front of an
#: isotropic base) comes out of both float64 computations as rounding noise (~1e-15 of the
#: model's gradient scale), whose relative difference means nothing. With rtol 1e-8 the floor
#: still requires such a gradient to agree to 1e-14 of the model's scale (~50 ulps), and a
#: wrong gradient above 1e-14 of that scale fails.
GRAD_NOISE_FLOOR = 1e-6


# --------------------------------------------------------------------------- comparison
class ComparisonReport:
    """Result of :func:`compare`.

    Attributes
    ----------
    log_prob_peer, log_prob_refflow : ndarray (n,)
    log_prob_diff : ndarray (n,)
        ``refflow - peer``.
    log_prob_rel : ndarray (n,)
        ``|diff| / max(|peer|, 1)`` (relative, with an absolute floor of 1 nat near 0).
    grad_rel : dict
        Per peer parameter name: ``||g_refflow - g_peer|| / max(||g_peer||, GRAD_NOISE_FLOOR
        * max_k ||g_peer_k||)`` (Frobenius norms; the absolute norm of the difference when
        every ``g_peer`` is 0), for the gradient of the mean log-prob.
    grad_peer, grad_refflow : dict of ndarray
        The two gradients, in the peer's names and shapes.
    rtol_log_prob, rtol_grad : float
    ok : bool
        Every ``log_prob_rel <= rtol_log_prob`` and every ``grad_rel <= rtol_grad``.
    """

    def __init__(self, lp_peer, lp_ref, grad_peer, grad_ref, rtol_log_prob, rtol_grad, peer):
        self.peer = peer
        self.log_prob_peer, self.log_prob_refflow = lp_peer, lp_ref
        self.log_prob_diff = lp_ref - lp_peer
        self.log_prob_rel = np.abs(self.log_prob_diff) / np.maximum(np.abs(lp_peer), 1.0)
        self.grad_peer, self.grad_refflow = grad_peer, grad_ref
        self.grad_rel = {}
        norms = {name: float(np.linalg.norm(g)) for name, g in grad_peer.items()}
        floor = GRAD_NOISE_FLOOR * max(norms.values(), default=0.0)
        for name, g in grad_peer.items():
            diff = float(np.linalg.norm(grad_ref[name] - g))
            norm = max(norms[name], floor)
            self.grad_rel[name] = diff / norm if norm > 0 else diff
        self.rtol_log_prob, self.rtol_grad = rtol_log_prob, rtol_grad
        bad_lp = ~(self.log_prob_rel <= rtol_log_prob)  # NaN counts as a failure
        self.bad_samples = np.flatnonzero(bad_lp)
        self.bad_params = [k for k, v in self.grad_rel.items() if not v <= rtol_grad]
        self.ok = not bad_lp.any() and not self.bad_params

    @property
    def max_log_prob_rel(self):
        return float(np.max(self.log_prob_rel)) if self.log_prob_rel.size else 0.0

    @property
    def max_grad_rel(self):
        return max(self.grad_rel.values(), default=0.0)

    def __str__(self, worst=5):
        lines = [f"refflow vs {self.peer}: {'OK' if self.ok else 'MISMATCH'}",
                 f"  log-prob: {self.log_prob_rel.size} samples, max relative difference "
                 f"{self.max_log_prob_rel:.3e} (rtol {self.rtol_log_prob:.0e}), "
                 f"{self.bad_samples.size} above"]
        order = np.argsort(-np.nan_to_num(self.log_prob_rel, nan=np.inf))[:worst]
        lines.append(f"    {'sample':>8} {'peer':>22} {'refflow':>22} {'rel diff':>10}")
        for i in order:
            lines.append(f"    {i:>8d} {self.log_prob_peer[i]:>22.15g} "
                         f"{self.log_prob_refflow[i]:>22.15g} {self.log_prob_rel[i]:>10.3e}")
        lines.append(f"  gradient of the mean log-prob: {len(self.grad_rel)} parameters, max "
                     f"relative difference {self.max_grad_rel:.3e} (rtol {self.rtol_grad:.0e}), "
                     f"{len(self.bad_params)} above")
        ranked = sorted(self.grad_rel, key=lambda k: -np.nan_to_num(self.grad_rel[k], nan=np.inf))
        width = max([len(k) for k in ranked[:worst]] + [9])
        lines.append(f"    {'parameter':<{width}} {'|g_peer|':>10} {'rel diff':>10}")
        for k in ranked[:worst]:
            lines.append(f"    {k:<{width}} {np.linalg.norm(self.grad_peer[k]):>10.3e} "
                         f"{self.grad_rel[k]:>10.3e}")
        return "\n".join(lines)

    def __repr__(self):
        return (f"ComparisonReport(ok={self.ok}, max_log_prob_rel={self.max_log_prob_rel:.3e}, "
                f"max_grad_rel={self.max_grad_rel:.3e})")


def _is_flowjax(peer):
    module = type(peer).__module__
    return module.startswith("flowjax") and hasattr(peer, "bijection") and \
        hasattr(peer, "log_prob")


def _peer_kind(torch_flow):
    if _is_flowjax(torch_flow):
        return "flowjax"
    try:
        from zuko.lazy import Flow as ZukoFlow
    except ImportError:  # pragma: no cover
        ZukoFlow = ()
    if ZukoFlow and isinstance(torch_flow, ZukoFlow):
        return "zuko"
    module = type(torch_flow).__module__
    if module.startswith("nflows"):
        return "nflows"
    if module.startswith("normflows"):
        return "normflows"
    if module.startswith(("pyro", "torch.distributions")) and \
            hasattr(torch_flow, "base_dist") and hasattr(torch_flow, "transforms"):
        return "pyro"
    raise TypeError(f"compare: the peer must be a zuko, nflows, normflows or Pyro flow or a "
                    f"FlowJAX distribution, got {type(torch_flow).__name__}")


def _peer_mapping(torch_flow, model, kind):
    """``{peer parameter name: (refflow key, rows)}`` with ``refflow = peer[rows]``."""
    if kind == "zuko":
        return parameter_map(torch_flow, "compare")
    if kind in ("normflows", "pyro"):
        # from_normflows / from_pyro record {peer name: (refflow key, flat indices)}
        recorded = getattr(model, "peer_gradients", None)
        if not isinstance(recorded, dict):
            raise ValueError(f"compare: for a {kind} model, model must come from from_{kind} "
                             f"(it carries the gradient map 'peer_gradients')")
        return recorded
    # nflows: from_nflows (refflow.interop.nflows) records {refflow key: (peer name, rows)}
    recorded = getattr(model, "peer_parameters", None)
    if not isinstance(recorded, dict):
        raise ValueError("compare: for an nflows flow, model must come from from_nflows (it "
                         "carries the parameter map 'peer_parameters')")
    mapping = {}
    for key, (name, rows) in recorded.items():
        if name in mapping:
            raise ValueError(f"compare: peer parameter {name!r} maps to several refflow "
                             f"parameters; not supported")
        mapping[name] = (key, rows)
    return mapping


def _double_distribution(dist):
    """The floating tensors of a torch distribution (and of those it wraps) as float64."""
    import torch
    while dist is not None:
        for name, value in list(vars(dist).items()):
            if torch.is_tensor(value) and value.is_floating_point():
                setattr(dist, name, value.detach().double())
        dist = getattr(dist, "base_dist", None)


def _pyro_log_prob(dist, xt, ct):
    """Pyro's ``log_prob`` of a float64 copy of ``dist`` at ``xt`` (conditioned on ``ct``) and
    the copy's parameters named ``"<transform index>.<parameter name>"``."""
    import torch

    # Pyro's transforms cache their last (x, y) and log-scales, tensors inside an autograd
    # graph that deepcopy refuses: the copy gets them detached (the caller's stay as they are)
    memo, seen = {}, set()

    def detach_cached(obj):
        if id(obj) in seen:
            return
        seen.add(id(obj))
        if torch.is_tensor(obj):
            if obj.grad_fn is not None:
                memo[id(obj)] = obj.detach()
        elif isinstance(obj, (tuple, list)):
            for item in obj:
                detach_cached(item)
        elif isinstance(obj, dict):
            for item in obj.values():
                detach_cached(item)
        elif hasattr(obj, "__dict__") and not isinstance(obj, type):
            detach_cached(vars(obj))

    detach_cached(dist)
    peer = copy.deepcopy(dist, memo)
    _double_distribution(peer.base_dist)
    named = {}
    for i, t in enumerate(peer.transforms):
        if type(t).__name__ == "ConstantConditionalTransform":  # a plain transform (BatchNorm,
            t = t.transform                                    # Spline...) in a conditional flow
        if hasattr(t, "clear_cache"):
            t.clear_cache()
        if hasattr(t, "named_parameters"):
            t.double()
            for n, p in t.named_parameters():
                p.grad = None
                named[f"{i}.{n}"] = p
    if ct is not None:
        if not hasattr(peer, "condition"):
            raise ValueError("compare: a context was given for an unconditional Pyro flow")
        peer = peer.condition(ct)
    # Pyro's sequential inverses start from torch.zeros in the default dtype: float64 while
    # Pyro runs, restored after
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        return peer.log_prob(xt), named
    finally:
        torch.set_default_dtype(old)


def _flowjax_log_prob_and_grads(dist, x, c):
    """FlowJAX's log-probs at ``x`` and ``jax.grad`` of their mean with respect to every
    trainable leaf (FlowJAX's partition), in float64 (JAX's x64 mode inside this call only,
    on a float64 copy of ``dist``), as ``(lp, {leaf path: gradient})``."""
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import paramax

    with jax.enable_x64(True):
        peer = jax.tree_util.tree_map(
            lambda a: jnp.asarray(a, dtype=jnp.float64) if eqx.is_inexact_array(a) else a, dist)
        params, static = eqx.partition(
            peer, eqx.is_inexact_array,
            is_leaf=lambda leaf: isinstance(leaf, paramax.NonTrainable))
        args = (jnp.asarray(x),) if c is None else (jnp.asarray(x), jnp.asarray(c))

        def log_probs(p):
            return jax.vmap(eqx.combine(p, static).log_prob)(*args)

        lp = np.array(log_probs(params), dtype=np.float64)
        grads = jax.grad(lambda p: jnp.mean(log_probs(p)))(params)
        named = {jax.tree_util.keystr(path): np.array(g, dtype=np.float64)
                 for path, g in jax.tree_util.tree_flatten_with_path(grads)[0]}
    return lp, named


def _flowjax_compare(dist, model, x, c, rtol_log_prob, rtol_grad):
    mapping = flowjax_parameter_map(dist, "compare")
    params = model.params
    for path, pieces in mapping.items():
        for key, *_ in pieces:
            if key not in params:
                raise ValueError(f"compare: model has no parameter {key!r} (for FlowJAX's "
                                 f"{path!r}); build it with from_flowjax")
    if c is not None and c.ndim == 1:
        c = np.broadcast_to(c, (x.shape[0], c.shape[0]))
    lp_peer, grad_peer = _flowjax_log_prob_and_grads(dist, x, c)
    lp_ref = np.asarray(model.log_prob(x, context=c), dtype=np.float64)
    _, grads = model.nll_and_grad(x, context=c)
    grad_ref = {}
    for path, g_peer in grad_peer.items():
        back = np.zeros_like(g_peer)
        for key, idx, factor, layer in mapping[path]:
            flat = -np.asarray(grads[key], dtype=np.float64).ravel()  # d mean lp = -d nll
            value = np.where(idx >= 0, flat[np.maximum(idx, 0)], 0.0)
            if factor is not None:
                value = value * factor
            shape = back.shape if layer is None else back.shape[1:]
            if value.ndim > len(shape):  # a leaf broadcast to several refflow entries
                value = value.reshape(shape + (-1,)).sum(axis=-1)
            if layer is None:
                back += value
            else:
                back[layer] += value
        grad_ref[path] = back
    return ComparisonReport(lp_peer, lp_ref, grad_peer, grad_ref, rtol_log_prob, rtol_grad,
                            "flowjax")


def compare(torch_flow, model, x, context=None, *, rtol_log_prob=1e-10, rtol_grad=1e-8):
    """Compare a peer (zuko, nflows, normflows, Pyro, FlowJAX) flow with a refflow model on ``x``.

    The peer runs on a float64 copy (``copy.deepcopy(torch_flow).double()``; for Pyro the
    transforms and the base distribution's tensors of a deep copy, evaluated with torch's default
    dtype set to float64 and restored after; the caller's objects are left alone). Its autograd gradient of
    ``mean(log_prob(x))`` is compared, per peer parameter, with refflow's
    (``-Flow.nll_and_grad``), mapped back to the peer's names (rows of a coupling layer's last
    linear permuted back).

    A FlowJAX distribution is evaluated with ``jax.vmap(dist.log_prob)`` on a float64 copy
    (every inexact leaf cast, JAX's x64 mode enabled for this call only); its gradient is
    ``jax.grad`` of the mean log-prob with respect to every trainable leaf (FlowJAX's own
    partition: ``eqx.is_inexact_array``, ``paramax.NonTrainable`` excluded), named by
    ``jax.tree_util.keystr`` paths. refflow's gradient is carried back to those leaves through
    the derivatives of the importer's parameter maps
    (:func:`refflow.interop.flowjax.parameter_map`: copies, masks, permuted output rows, the
    interval centre folded into a first bias, ``log softplus`` of a base's scale); a leaf the
    model does not use gets 0, so an unmapped leaf that matters shows as a mismatch.

    Parameters
    ----------
    torch_flow : zuko, nflows or normflows flow, Pyro (Conditional)TransformedDistribution, or
        FlowJAX distribution (``flowjax.distributions.Transformed``)
    model : refflow.Flow
        ``from_zuko(torch_flow)`` (possibly imported before the peer was trained further: the
        parameter map is rebuilt from ``torch_flow``; a zuko tensor split over several refflow
        parameters, as ``LULinearTransform``'s ``LU``, gets their gradients back in place), or
        ``from_nflows(torch_flow)`` (its recorded ``peer_parameters`` map is used), or
        ``from_normflows(torch_flow)`` / ``from_pyro(torch_flow)`` (their recorded
        ``peer_gradients`` map: per peer parameter the refflow key and the flat positions of its
        entries' copies; Pyro's parameters are named ``"<index in dist.transforms>.<parameter
        name>"``), or ``from_flowjax(dist)`` (the map is rebuilt from ``dist``).
    x : array_like (n, D)
    context : array_like (n, C) or (C,), optional
    rtol_log_prob, rtol_grad : float
        Thresholds for ``ok`` (see :class:`ComparisonReport`).

    Returns
    -------
    ComparisonReport
    """
    kind = _peer_kind(torch_flow)
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] != model.dim:
        raise ValueError(f"compare: x must have shape (n >= 1, {model.dim}), got {x.shape}")
    c = None if context is None else np.asarray(context, dtype=np.float64)
    if kind == "flowjax":
        return _flowjax_compare(torch_flow, model, x, c, rtol_log_prob, rtol_grad)
    torch = require_torch("compare")
    mapping = _peer_mapping(torch_flow, model, kind)
    params = model.params
    for zname, target in mapping.items():
        for key, _ in (target if isinstance(target, list) else [target]):
            if key not in params:
                raise ValueError(f"compare: model has no parameter {key!r} (for the peer's "
                                 f"{zname!r}); build it with from_zuko")
    xt = torch.as_tensor(x)
    ct = None if c is None else torch.as_tensor(c)
    if kind == "pyro":
        lp_t, named = _pyro_log_prob(torch_flow, xt, ct)
    else:
        peer = copy.deepcopy(torch_flow).double()
        peer.zero_grad(set_to_none=True)
        if kind == "zuko":
            lp_t = peer(ct).log_prob(xt)
        elif kind == "nflows":
            lp_t = peer.log_prob(xt, context=ct)
        else:
            lp_t = peer.log_prob(xt) if ct is None else peer.log_prob(xt, ct)
        named = dict(peer.named_parameters())
    lp_t.mean().backward()
    lp_peer = lp_t.detach().numpy().copy()
    grad_peer = {n: (np.zeros(tuple(p.shape)) if p.grad is None else np64(p.grad))
                 for n, p in named.items() if n in mapping}
    lp_ref = np.asarray(model.log_prob(x, context=c), dtype=np.float64)
    _, grads = model.nll_and_grad(x, context=c)
    grad_ref = {}
    for zname in grad_peer:
        target = mapping[zname]
        if kind in ("normflows", "pyro"):
            key, rows = target
            # rows: flat positions of the peer entries' copies in the refflow array (-1: an
            # entry the peer multiplies by exact zeros, gradient 0)
            flat = -np.asarray(grads[key], dtype=np.float64).ravel()  # d mean log-prob = -d nll
            grad_ref[zname] = np.where(rows >= 0, flat[np.maximum(rows, 0)], 0.0)
            continue
        back = np.zeros_like(grad_peer[zname])
        # refflow's parameter is peer[rows] (one piece, or several for a split peer tensor)
        for key, rows in (target if isinstance(target, list) else [target]):
            g = -np.asarray(grads[key], dtype=np.float64)  # d mean log-prob = -d nll
            if rows is None:
                back = back + g
            else:
                back[rows] += g
        grad_ref[zname] = back
    return ComparisonReport(lp_peer, lp_ref, grad_peer, grad_ref, rtol_log_prob, rtol_grad, kind)


def assert_matches(torch_flow, model, x, context=None, rtol_log_prob=1e-10, rtol_grad=1e-8):
    """Raise ``AssertionError`` with the :func:`compare` report unless the two flows agree.

    Returns the report when they do.
    """
    report = compare(torch_flow, model, x, context, rtol_log_prob=rtol_log_prob,
                     rtol_grad=rtol_grad)
    if not report.ok:
        raise AssertionError(str(report))
    return report
