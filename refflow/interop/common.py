"""Helpers shared by the importers: torch imported on demand, tensors as float64 arrays, the
gradient maps of :func:`refflow.interop.compare`, the layout of the masked MADE that nflows and
normflows share (its parameter names, masks and degree buffers), and the dense residual network
with context gates that they share."""

import numpy as np

__all__ = ["require_torch", "np64", "index_map", "unused_map", "unsaveable", "made_layout",
           "check_made_masks", "residual_net_names", "GatedResidualNet"]


def require_torch(where):
    try:
        import torch
    except ImportError:  # pragma: no cover - exercised only without torch
        raise ImportError(f"{where}: needs torch (pip install torch)") from None
    return torch


def np64(tensor):
    import torch
    return tensor.detach().cpu().to(dtype=torch.float64).numpy().copy()


def index_map(shape, selector=Ellipsis):
    """Flat indices into a refflow array of ``shape`` of the entries ``selector`` picks.

    An importer that copies a peer tensor ``P`` into ``refflow_array[selector]`` (so that
    ``refflow_array[selector] == P`` entrywise) records ``index_map(refflow_array.shape,
    selector)``: an integer array of ``P``'s shape whose entries are the flat positions, in the
    refflow array, of the copies. The gradient of a loss with respect to ``P`` is then
    ``refflow_grad.ravel()[indices]`` (each peer entry is used exactly once, through its copy).
    """
    return np.arange(int(np.prod(shape, dtype=np.int64))).reshape(shape)[selector]


def unused_map(shape):
    """The gradient map of a peer tensor whose entries the peer multiplies by exact zeros (a
    masked-out column): ``-1`` everywhere, read as a zero gradient."""
    return np.full(shape, -1, dtype=np.int64)


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
