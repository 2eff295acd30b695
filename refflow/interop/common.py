"""Helpers shared by the importers: torch imported on demand, peer arrays and tensors as float64
arrays, the importers' two refusals (an option refflow cannot reproduce: ``ValueError``; a layer
or base without a refflow twin: ``NotImplementedError``), parameter vectors and matrices checked
against the event size, the refflow layers and bases several importers build (``Affine``,
raw-diagonal ``LULinear``, flattened chains, simplified inverses, shifts around a layer, a
diagonal normal base), the gradient maps of :func:`refflow.interop.compare` (and their check),
torch networks checked for what refflow does not compute (active dropout, batch norm), the layout
of the masked MADE that nflows and normflows share (its parameter names, masks and degree
buffers), and the dense residual network with context gates that they share.

Every message names the importer first (``importer``: ``"from_distrax"``, ``"from_pyro"``,
...), then the peer's class and the option, so that a user reads which part of the model was
refused and why.
"""

import sys

import numpy as np

__all__ = ["require", "require_torch", "np64", "to_numpy", "refuse", "unsupported", "NO_TWIN",
           "vector", "matrix", "affine_layer", "lu_layer", "chain", "invert", "centered",
           "as_flow", "transformed_parts", "diag_normal_base", "index_map", "whole_map",
           "unused_map", "gather_layers", "with_peer_gradients", "unsaveable", "check_network",
           "made_layout", "check_made_masks", "residual_net_names", "GatedResidualNet"]

#: The reason :func:`unsupported` gives when the importer names none.
NO_TWIN = "its refflow twin, or its import, does not exist yet"


def require(importer, modules, needs, install):
    """The peer's ``modules`` (dotted names), imported in the order given, as a tuple; or
    ``ImportError``: ``"{importer}: needs {needs} (pip install {install})"``."""
    import importlib
    try:
        return tuple(importlib.import_module(name) for name in modules)
    except ImportError:
        raise ImportError(f"{importer}: needs {needs} (pip install {install})") from None


def require_torch(where):
    """torch, imported, or ``ImportError`` naming ``where``."""
    return require(where, ("torch",), "torch", "torch")[0]


def np64(tensor):
    """A float64 copy of a torch ``tensor`` (detached, on the CPU; converted by torch, so that
    dtypes NumPy lacks, such as bfloat16, convert too)."""
    import torch
    return tensor.detach().cpu().to(dtype=torch.float64).numpy().copy()


def to_numpy(value):
    """A float64 copy of ``value``: a torch tensor (through :func:`np64`), a JAX array, a NumPy
    array or anything ``np.array`` reads (scalars, nested lists).

    torch is not imported here: a tensor exists only once torch is.
    """
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(value, torch.Tensor):
        return np64(value)
    return np.array(value, dtype=np.float64, copy=True)


# ----------------------------------------------------------------------------- refusals
def refuse(importer, cls_name, option):
    """Raise the ``ValueError`` of an option refflow cannot reproduce exactly:
    ``"{importer}: {cls_name}: {option} is not supported (refflow would not compute the same
    function)"``. ``cls_name`` names the peer's class (or the place in the model)."""
    raise ValueError(f"{importer}: {cls_name}: {option} is not supported (refflow would not "
                     f"compute the same function)")


def unsupported(importer, peer, obj, why=None):
    """Raise the ``NotImplementedError`` of a peer layer (or base) refflow does not import:
    ``"{importer}: {peer} {type(obj).__name__} is not supported ({why})"``, ``peer`` the peer
    library's name as its users write it (``"FlowJAX"``, ``"Pyro"``), ``why`` :data:`NO_TWIN`
    when None."""
    raise NotImplementedError(f"{importer}: {peer} {type(obj).__name__} is not supported "
                              f"({NO_TWIN if why is None else why})")


def vector(importer, value, dim, cls_name, what, *, broadcast=True):
    """``value`` as a float64 ``(dim,)`` array, or :func:`refuse` naming ``cls_name`` and
    ``what`` (the parameter).

    ``broadcast=True``: a scalar or any array that broadcasts to ``(dim,)`` (a peer's scalar
    shift, a ``(1,)`` array); any other shape is a batch of bijectors, refused.
    ``broadcast=False``: exactly ``(dim,)`` (a parameter whose gradient is mapped entry for
    entry).
    """
    arr = to_numpy(value)
    if broadcast:
        try:
            return np.broadcast_to(arr, (dim,)).copy()
        except ValueError:
            refuse(importer, cls_name, f"{what} of shape {arr.shape} for events of size {dim} "
                                       f"(a batch of bijectors)")
    if arr.shape != (dim,):
        refuse(importer, cls_name, f"{what} of shape {arr.shape} (expected ({dim},))")
    return arr


def matrix(importer, value, dim, cls_name):
    """``value`` as a float64 ``(dim, dim)`` array, or :func:`refuse` (a batch of matrices)."""
    m = to_numpy(value)
    if m.shape != (dim, dim):
        refuse(importer, cls_name, f"a matrix of shape {m.shape} for events of size {dim} (a "
                                   f"batch of matrices)")
    return m


# ------------------------------------------------------------------------------- layers
def affine_layer(dim, shift, log_scale):
    """refflow ``Affine(dim)``: ``x = z exp(log_scale) + shift``, the arrays copied in."""
    from ..bijectors import Affine
    layer = Affine(dim)
    layer.params["shift"] = shift
    layer.params["log_scale"] = log_scale
    return layer


def lu_layer(importer, dim, lower, upper, diag, bias=None, *, diagonal="upper",
             permutation=None):
    """refflow ``LULinear(upper_diag="raw")`` computing ``x = P L U z + bias``: the strict
    lower triangle of ``lower``, the strict upper triangle of ``upper`` and the raw diagonal
    ``diag`` (on the upper factor, or on the lower one with ``diagonal="lower"``) copied,
    ``bias`` zero when None; ``permutation`` as refflow's (``(P v)_i = v_{perm[i]}``).

    A zero on ``diag`` (a singular map) is refused before anything is built.
    """
    from ..bijectors import LULinear
    if np.any(diag == 0):
        refuse(importer, "LULinear", "a singular triangular factor (a zero on its diagonal)")
    layer = LULinear(dim, permutation=permutation, upper_diag="raw", diagonal=diagonal)
    layer.params["lower_entries"] = lower[np.tril_indices(dim, -1)]
    layer.params["upper_entries"] = upper[np.triu_indices(dim, 1)]
    layer.params["unconstrained_upper_diag"] = diag
    layer.params["bias"] = np.zeros(dim) if bias is None else bias
    return layer


def chain(layers):
    """``Chain(layers)`` with every ``Chain`` among ``layers`` flattened into its layers."""
    from ..bijectors import Chain
    flat = []
    for layer in layers:
        flat += list(layer.layers) if type(layer) is Chain else [layer]
    return Chain(flat)


def invert(layer):
    """``Inverse(layer)``, simplified: ``Inverse(Inverse(b)) = b``, a chain inverted layer by
    layer (``Chain([b1, ..., bn])^-1 = Chain([bn^-1, ..., b1^-1])``), a permutation by its
    inverse permutation (``Permute(p)^-1 = Permute(argsort p)``)."""
    from ..bijectors import Chain, Inverse, Permute
    if type(layer) is Inverse:
        return layer.bijector
    if type(layer) is Chain:
        return Chain([invert(b) for b in layer.layers[::-1]])
    if isinstance(layer, Permute):
        p = layer.buffers["permutation"]
        return Permute(p.shape[0], permutation=np.argsort(p))
    return Inverse(layer)


def diag_normal_base(importer, dist, loc, scale):
    """``(refflow DiagNormal, dim)`` for a peer's normal ``dist`` with diagonal covariance over
    vectors (read through ``dist.batch_shape`` and ``dist.event_shape``, as distrax and TFP
    have them): ``loc`` and ``scale`` broadcast to the event, ``log_scale = log(scale)``.
    :func:`refuse` a batch of distributions, an event that is not a vector, a scale that is
    not positive."""
    from ..distributions import DiagNormal
    name = type(dist).__name__
    if tuple(dist.batch_shape) != () or len(dist.event_shape) != 1:
        refuse(importer, name, f"batch shape {dist.batch_shape}, event shape {dist.event_shape} "
                               f"(refflow imports one distribution over vectors)")
    dim = int(dist.event_shape[0])
    loc, scale = np.broadcast_to(loc, (dim,)), np.broadcast_to(scale, (dim,))
    if np.any(scale <= 0):
        refuse(importer, name, "a non-positive scale")
    base = DiagNormal(dim)
    base.params["loc"] = loc.copy()
    base.params["log_scale"] = np.log(scale)
    return base, dim


def transformed_parts(importer, peer, obj, base, transformed, bijector, distribution):
    """``(base, bijector)`` of a distrax or TFP flow: ``obj`` is a ``transformed`` distribution
    (``.distribution``, ``.bijector``; ``base`` must then be None) or a bare ``bijector`` with
    its ``base`` given; the base must be a ``distribution`` (the peer's classes, passed in).
    ``TypeError`` naming ``importer`` and ``peer`` otherwise."""
    if isinstance(obj, transformed):
        if base is not None:
            raise TypeError(f"{importer}: base must be None with a {peer} "
                            f"{transformed.__name__} (it has its own)")
        base, obj = obj.distribution, obj.bijector
    elif isinstance(obj, bijector):
        if base is None:
            raise TypeError(f"{importer}: a bare bijector needs base= (a {peer} "
                            f"Independent(Normal, 1) or MultivariateNormalDiag)")
    else:
        raise TypeError(f"{importer}: expected a {peer} {transformed.__name__} or "
                        f"{bijector.__name__}, got {type(obj).__name__}")
    if not isinstance(base, distribution):
        raise TypeError(f"{importer}: base must be a {peer} distribution, got "
                        f"{type(base).__name__}")
    return base, obj


def as_flow(base, layer):
    """``Flow(base, layer)``, ``layer`` wrapped in a one-layer ``Chain`` unless it is a chain
    (so that the model's parameter keys always read ``bijector.layers.{k}.*``)."""
    from ..bijectors import Chain
    from ..distributions import Flow
    return Flow(base, layer if type(layer) is Chain else Chain([layer]))


def centered(layer, dim, center):
    """``S_c o layer o S_-c`` (``S_c(v) = v + c``, an ``Affine`` shift) as a refflow chain (a
    spline of ``[-B, B]`` moved to ``[c - B, c + B]``); ``layer`` itself for ``c = 0``."""
    from ..bijectors import Chain
    if center == 0.0:
        return layer
    return Chain([affine_layer(dim, np.full(dim, -center), np.zeros(dim)), layer,
                  affine_layer(dim, np.full(dim, center), np.zeros(dim))])


def index_map(shape, selector=Ellipsis):
    """Flat indices into a refflow array of ``shape`` of the entries ``selector`` picks.

    An importer that copies a peer tensor ``P`` into ``refflow_array[selector]`` (so that
    ``refflow_array[selector] == P`` entrywise) records ``index_map(refflow_array.shape,
    selector)``: an integer array of ``P``'s shape whose entries are the flat positions, in the
    refflow array, of the copies. The gradient of a loss with respect to ``P`` is then
    ``refflow_grad.ravel()[indices]`` (each peer entry is used exactly once, through its copy).
    """
    return np.arange(int(np.prod(shape, dtype=np.int64))).reshape(shape)[selector]


def whole_map(shape, peer_shape=None):
    """The gradient map of a peer tensor copied whole into a refflow array of ``shape``:
    :func:`index_map` of the whole array, reshaped to the peer tensor's ``peer_shape`` when
    the copy reshapes it (a peer's ``(1, dim)`` parameter as refflow's ``(dim,)``)."""
    idx = index_map(shape)
    return idx if peer_shape is None else idx.reshape(peer_shape)


def unused_map(shape):
    """The gradient map of a peer tensor whose entries the peer multiplies by exact zeros (a
    masked-out column): ``-1`` everywhere, read as a zero gradient."""
    return np.full(shape, -1, dtype=np.int64)


def gather_layers(converted):
    """``(layers, peer)`` of a flow imported layer by layer.

    ``converted`` yields ``(prefix, new, grads)`` per peer layer, in order: its peer parameter
    names' ``prefix`` (``"flows.3."``), the refflow layers ``new`` built for it and ``grads``
    ``{peer parameter name: (offset in new, refflow key, flat indices)}``. ``layers`` is every
    ``new`` in turn; ``peer`` maps ``prefix + name`` to ``("bijector.layers.{k}.{key}",
    indices)``, ``k`` the layer's position in ``layers`` (the keys of ``Flow.params``).
    """
    layers, peer = [], {}
    for prefix, new, grads in converted:
        for name, (j, key, idx) in grads.items():
            peer[f"{prefix}{name}"] = (f"bijector.layers.{len(layers) + j}.{key}", idx)
        layers += new
    return layers, peer


def with_peer_gradients(importer, model, peer):
    """``model`` carrying ``peer_gradients = peer`` (``{peer parameter name: (refflow key, flat
    indices)}``, read by :func:`refflow.interop.compare`), once every key is checked to name a
    parameter of ``model`` and every index to be inside it (``RuntimeError``: an importer bug,
    never the user's input)."""
    params = model.params
    for name, (key, idx) in peer.items():
        if key not in params or idx.max(initial=-1) >= params[key].size:
            raise RuntimeError(f"{importer}: internal error: gradient map of {name} -> {key}")
    model.peer_gradients = peer
    return model


_UNSAVEABLE = {}


def unsaveable(layer, peer, module):
    """Give ``layer`` a private subclass of its class (named after ``peer``, e.g.
    ``"Nflows"``, and placed in ``module``), whose ``_config`` raises, so that ``refflow.save``
    refuses it: its network was replaced by an imported one that ``_config`` does not describe
    (the placeholder ``hidden``), and a saved file would silently rebuild another model."""
    cls = type(layer)
    sub = _UNSAVEABLE.get((cls, peer))
    if sub is None:
        def _config(self):
            raise NotImplementedError(f"imported from {peer.lower()} (its network is not a "
                                      f"refflow MADE/MLP configuration)")
        sub = type(f"_{peer}{cls.__name__}", (cls,), {"_config": _config,
                                                       "__module__": module})
        _UNSAVEABLE[(cls, peer)] = sub
    layer.__class__ = sub
    return layer


def check_network(importer, net, where):
    """:func:`refuse` (naming ``where``) a torch network ``net`` holding active dropout
    (``p > 0`` in training mode: random) or batch norm anywhere in it."""
    import torch
    for m in net.modules():
        if isinstance(m, torch.nn.Dropout) and m.p > 0 and m.training:
            refuse(importer, where, f"dropout (p={m.p}) in training mode (call .eval())")
        if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            refuse(importer, where, "batch norm inside the network (use_batch_norm=True)")


def made_layout(net, residual):
    """``(names, masks, degrees)`` of an nflows or normflows ``MADE`` (normflows' is nflows',
    copied): ``initial_layer``, then per block ``j`` either two ``linear_layers`` (residual
    blocks: refflow ``ResidualMADE`` keys ``blocks.{j}.w{i}``, ``.b{i}``) or one ``linear``
    (feed-forward blocks: refflow ``MADE`` keys ``w{j+1}``, ``b{j+1}``), then ``final_layer``.

    ``names`` lists ``(refflow key, peer parameter name)``; ``masks`` are the peer's masks of
    every layer and ``degrees`` the degree buffers of every hidden layer, as float64 / int64
    arrays, from which the refflow network is rebuilt and checked (:func:`check_made_masks`).
    """
    names = [("w0", "initial_layer.weight"), ("b0", "initial_layer.bias")]
    layers = [net.initial_layer]
    for j, block in enumerate(net.blocks):
        if residual:
            for i in range(2):
                names += [(f"blocks.{j}.w{i}", f"blocks.{j}.linear_layers.{i}.weight"),
                          (f"blocks.{j}.b{i}", f"blocks.{j}.linear_layers.{i}.bias")]
                layers.append(block.linear_layers[i])
        else:
            names += [(f"w{j + 1}", f"blocks.{j}.linear.weight"),
                      (f"b{j + 1}", f"blocks.{j}.linear.bias")]
            layers.append(block.linear)
    last = "_out" if residual else str(len(net.blocks) + 1)
    names += [(f"w{last}", "final_layer.weight"), (f"b{last}", "final_layer.bias")]
    masks = [np64(lin.mask) for lin in layers] + [np64(net.final_layer.mask)]
    degrees = [np64(lin.degrees).astype(np.int64) for lin in layers]
    return names, masks, degrees


def check_made_masks(model, masks, where):
    """``ValueError`` (``where`` names the importer and the layer) unless the rebuilt refflow
    MADE ``model`` has exactly the peer's ``masks``."""
    for i, (ours, theirs) in enumerate(zip(model.masks, masks)):
        if not np.array_equal(ours, theirs):
            raise ValueError(f"{where}: rebuilt MADE mask {i} differs from the peer's mask")


def residual_net_names(n_blocks, conditional):
    """``[(GatedResidualNet key, peer parameter name)]`` of an nflows / normflows
    ``ResidualNet`` with ``n_blocks`` blocks (context gates when ``conditional``)."""
    names = [("w_in", "initial_layer.weight"), ("b_in", "initial_layer.bias")]
    for j in range(n_blocks):
        for i in range(2):
            names += [(f"blocks.{j}.w{i}", f"blocks.{j}.linear_layers.{i}.weight"),
                      (f"blocks.{j}.b{i}", f"blocks.{j}.linear_layers.{i}.bias")]
        if conditional:
            names += [(f"blocks.{j}.context_w", f"blocks.{j}.context_layer.weight"),
                      (f"blocks.{j}.context_b", f"blocks.{j}.context_layer.bias")]
    return names + [("w_out", "final_layer.weight"), ("b_out", "final_layer.bias")]


class GatedResidualNet:
    r"""The dense residual network of nflows and normflows (``ResidualNet``, no batch norm, no
    dropout), with an optional divisor of its outputs.

    ``h = [x_a, c] W_in^T + b_in``; block ``j``: ``t = f(f(h) W_0^T + b_0) W_1^T + b_1``, gated
    by ``g = sigmoid(c C_j^T + d_j)`` when conditional (``F.glu`` of ``[t, c C_j^T + d_j]``),
    ``h <- h + t g``; ``out = (h W_out^T + b_out) / divisor`` (``divisor`` a vector over the
    outputs, e.g. ``sqrt(hidden_features)`` on the spline widths and heights).

    Pullback (reverse order, ``h_bar`` the running cotangent): ``o = out_bar / divisor``,
    ``W_out_bar = o^T h``, ``h_bar = o W_out``; per block ``r_bar = h_bar g``, ``e_bar = h_bar t
    g (1 - g)`` (``C_j_bar = e_bar^T c``, ``c_bar += e_bar C_j``), ``W_1_bar = r_bar^T f(t)``,
    ``t_bar = r_bar W_1 f'(t)``, ``W_0_bar = t_bar^T f(h)``, ``h_bar += t_bar W_0 f'(h)``; then
    ``W_in_bar = h_bar^T [x_a, c]``, ``[x_a, c]_bar = h_bar W_in`` (plus the gates' ``c_bar``).

    Parameters keys: ``w_in, b_in, blocks.{j}.w0, .b0, .w1, .b1`` (and ``.context_w,
    .context_b`` when conditional), ``w_out, b_out``. It is used as a coupling layer's
    ``conditioner`` (``_forward(u)``, ``_vjp(u)`` with ``u = [x_a, context]``).
    """

    def __init__(self, params, n_in, n_context, n_blocks, act, divisor):
        from ..params import ParamDict
        self.params = ParamDict(params)
        self.n_in, self.n_context, self.n_blocks = n_in, n_context, n_blocks
        self._act, self.activation, self.hidden = act, act.name, ()
        self._divisor = np.asarray(divisor, dtype=np.float64)

    def _p(self, dtype):
        return {k: v.astype(dtype) for k, v in self.params.items()}

    def _run(self, u, with_vjp):
        from .._math import sigmoid
        p, f = self._p(u.dtype), self._act
        c = u[:, self.n_in:] if self.n_context else None
        h = u @ p["w_in"].T + p["b_in"]
        saved = []
        for j in range(self.n_blocks):
            s1, d1 = f.value_and_derivative(h)
            t = s1 @ p[f"blocks.{j}.w0"].T + p[f"blocks.{j}.b0"]
            s2, d2 = f.value_and_derivative(t)
            r = s2 @ p[f"blocks.{j}.w1"].T + p[f"blocks.{j}.b1"]
            gate = None
            if c is not None:
                gate = sigmoid(c @ p[f"blocks.{j}.context_w"].T + p[f"blocks.{j}.context_b"])
            saved.append((s1, d1, s2, d2, r, gate))
            h = h + (r if gate is None else r * gate)
        divisor = self._divisor.astype(u.dtype)
        out = (h @ p["w_out"].T + p["b_out"]) / divisor
        if not with_vjp:
            return out

        def pullback(out_bar):
            g = out_bar / divisor
            grads = {"w_out": g.T @ h, "b_out": g.sum(axis=0)}
            h_bar = g @ p["w_out"]
            c_bar = None if c is None else np.zeros_like(c)
            for j in range(self.n_blocks - 1, -1, -1):
                s1, d1, s2, d2, r, gate = saved[j]
                r_bar = h_bar if gate is None else h_bar * gate
                if gate is not None:
                    e_bar = h_bar * r * gate * (1.0 - gate)
                    grads[f"blocks.{j}.context_w"] = e_bar.T @ c
                    grads[f"blocks.{j}.context_b"] = e_bar.sum(axis=0)
                    c_bar += e_bar @ p[f"blocks.{j}.context_w"]
                grads[f"blocks.{j}.w1"], grads[f"blocks.{j}.b1"] = r_bar.T @ s2, r_bar.sum(0)
                t_bar = (r_bar @ p[f"blocks.{j}.w1"]) * d2
                grads[f"blocks.{j}.w0"], grads[f"blocks.{j}.b0"] = t_bar.T @ s1, t_bar.sum(0)
                h_bar = h_bar + (t_bar @ p[f"blocks.{j}.w0"]) * d1
            grads["w_in"], grads["b_in"] = h_bar.T @ u, h_bar.sum(axis=0)
            u_bar = h_bar @ p["w_in"]
            if c is not None:
                u_bar[:, self.n_in:] += c_bar
            return u_bar, {k: np.asarray(grads[k], dtype=np.float64) for k in self.params}

        return out, pullback

    def _forward(self, u):
        return self._run(u, False)

    def _vjp(self, u):
        return self._run(u, True)
