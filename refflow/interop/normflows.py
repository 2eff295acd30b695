r"""Import a normflows ``NormalizingFlow`` as the equivalent refflow ``Flow``.

:func:`from_normflows` reads ``model.q0`` and ``model.flows`` and builds the refflow
:class:`~refflow.Flow` that computes the same density, and the same samples from the same base
noise, in float64. torch and normflows are imported inside the functions only.

Conventions bridged (normflows 1.7, read from its sources):

====================================  ======================================================
normflows                             refflow
====================================  ======================================================
``forward`` maps base to data;        the same direction: ``Chain`` in list order, each
``flows`` applied in list order       layer's ``forward`` is the normflows layer's ``forward``
``DiagGaussian`` base                 ``DiagNormal`` (``loc``, ``log_scale``; no temperature)
``AffineConstFlow`` / ``ActNorm``     ``Affine`` (``shift = t``, ``log_scale = s``); an
(``z exp(s) + t``)                    ``ActNorm`` must have done its data-dependent init
``Permute`` (``shuffle``/``swap``)    ``Permute`` (``x = z[:, perm]``; swap: the halves)
``LULinearPermute``                   ``[Inverse(LULinear(upper_diag="softplus")),
                                      Permute(argsort(p))]``: data to base is ``L U x[:, p]
                                      + b``, ``diag U = softplus(u) + 1e-3``
``MaskedAffineFlow(b, t, s)``         ``AffineCoupling(scale="exp", scale_side="sampling")``
(``z exp(s(bz)) + t(bz)`` on          with ``mask = (b == 0)``; the two ``nets.MLP`` become
``b == 0``)                           one conditioner with block-diagonal weights (exact
                                      zeros between the two networks; the columns of the
                                      masked-out inputs, which always multiply 0, dropped)
``AffineCouplingBlock`` (channel      ``AffineCoupling(scale="exp", scale_side="sampling")``
split, ``scale_map="exp"``):          with ``mask = arange(D) >= ceil(D / 2)``; the
shift ``param[:, 0::2]``, scale       conditioner's last rows reordered to ``[t | u]``;
``param[:, 1::2]``                    ``scale=False`` is ``AdditiveCoupling``
====================================  ======================================================

``AffineCouplingBlock`` with ``scale_map="sigmoid"``/``"sigmoid_inv"`` (a ``sigmoid(h + 2)``
scale without refflow's ``1e-3`` floor), the neural-spline wrappers (their conditioners are
normflows' copies of nflows' networks, and the coupled one adds an unconditional spline on the
identity half), ``Planar``/``Radial``, ``MaskedAffineAutoregressive``, ``Invertible1x1Conv``
and the rest raise ``NotImplementedError`` naming the class; options refflow cannot reproduce
raise ``ValueError``. Nothing is approximated.
"""

import numpy as np

from .common import np64

__all__ = ["from_normflows"]

_WHERE = "from_normflows"
_LU_EPS = 1e-3  # refflow's "softplus" LU diagonal floor (nflows' and normflows' eps)


def _unsupported(obj, why="its refflow twin, or its import, does not exist yet"):
    raise NotImplementedError(f"{_WHERE}: normflows layer {type(obj).__name__} is not "
                              f"supported ({why})")


def _refuse(cls_name, option):
    raise ValueError(f"{_WHERE}: {cls_name}: {option} is not supported (refflow would not "
                     f"compute the same function)")


def _mlp(net, where):
    """``(weights, biases, activation)`` of a normflows ``nets.MLP`` (plain Linear/LeakyReLU)."""
    import torch.nn as nn
    from normflows.nets import MLP
    if type(net) is not MLP:
        _refuse(where, f"a network of type {type(net).__name__} (refflow imports "
                       f"normflows.nets.MLP)")
    mods = list(net.net)
    linears, acts = mods[0::2], mods[1::2]
    if len(mods) % 2 != 1 or not all(type(m) is nn.Linear for m in linears) \
            or not all(type(m) is nn.LeakyReLU for m in acts):
        _refuse(where, f"MLP layout {[type(m).__name__ for m in mods]} (output_fn, dropout "
                       f"or score scaling)")
    if any(float(m.negative_slope) != 0.0 for m in acts):
        _refuse(where, "leaky > 0 (refflow's MLP has ReLU, not leaky ReLU)")
    if any(lin.bias is None for lin in linears):
        _refuse(where, "a linear layer without bias")
    return [np64(m.weight) for m in linears], [np64(m.bias) for m in linears], "relu"


def _block_diagonal(a, b):
    out = np.zeros((a.shape[0] + b.shape[0], a.shape[1] + b.shape[1]))
    out[:a.shape[0], :a.shape[1]] = a
    out[a.shape[0]:, a.shape[1]:] = b
    return out


def _masked_affine(flow):
    from ..bijectors import AffineCoupling
    where = "MaskedAffineFlow"
    b = np64(flow.b).reshape(-1)
    if b.ndim != 1 or not np.all((b == 0) | (b == 1)):
        _refuse(where, "a mask that is not a 0/1 vector")
    if not callable(getattr(flow, "s", None)) or not hasattr(flow.s, "net") \
            or not hasattr(flow.t, "net"):
        _refuse(where, "a missing s or t network (NICE-style layers)")
    keep = b == 1                           # the identity part (refflow: mask False)
    dim = b.shape[0]
    ws, bs, act = _mlp(flow.s, where + ".s")
    wt, bt, _ = _mlp(flow.t, where + ".t")
    if len(ws) != len(wt):
        _refuse(where, "s and t networks of different depths")
    trans = np.flatnonzero(~keep)
    weights = [np.concatenate([wt[0][:, keep], ws[0][:, keep]], axis=0)]
    biases = [np.concatenate([bt[0], bs[0]])]
    for k in range(1, len(ws) - 1):
        weights.append(_block_diagonal(wt[k], ws[k]))
        biases.append(np.concatenate([bt[k], bs[k]]))
    if len(ws) > 1:
        last = _block_diagonal(wt[-1][trans], ws[-1][trans])
        weights.append(last)
        biases.append(np.concatenate([bt[-1][trans], bs[-1][trans]]))
    else:
        # no hidden layer: out = x_a W^T + b for both networks, stacked [t | u]
        weights = [np.concatenate([wt[0][trans][:, keep], ws[0][trans][:, keep]], axis=0)]
        biases = [np.concatenate([bt[0][trans], bs[0][trans]])]
    hidden = tuple(w.shape[0] for w in weights[:-1])
    layer = AffineCoupling(dim, mask=~keep, hidden=hidden, activation=act, scale="exp",
                           scale_side="sampling", rng=0)
    for k, (w, bias) in enumerate(zip(weights, biases)):
        layer.params[f"conditioner.w{k}"] = w
        layer.params[f"conditioner.b{k}"] = bias
    return [layer]


def _coupling_block(flow):
    from normflows.flows.affine.coupling import AffineCoupling as NfAffineCoupling
    from normflows.flows.reshape import Merge, Split

    from ..bijectors import AdditiveCoupling, AffineCoupling
    where = "AffineCouplingBlock"
    split, coupling, merge = list(flow.flows)
    if type(split) is not Split or type(merge) is not Merge or \
            type(coupling) is not NfAffineCoupling:
        _refuse(where, "a block other than [Split, AffineCoupling, Merge]")
    if split.mode != "channel" or merge.mode != "channel":
        _refuse(where, f"split_mode={split.mode!r} (refflow imports 'channel')")
    weights, biases, act = _mlp(coupling.param_map, where + ".param_map")
    n_a = weights[0].shape[1]
    n_out = weights[-1].shape[0]
    dim = n_a + (n_out // 2 if coupling.scale else n_out)
    if -(-dim // 2) != n_a:
        _refuse(where, f"a param_map with {n_a} inputs for {dim} features")
    mask = np.arange(dim) >= n_a
    hidden = tuple(w.shape[0] for w in weights[:-1])
    common = dict(mask=mask, hidden=hidden, activation=act, rng=0)
    if not coupling.scale:
        layer = AdditiveCoupling(dim, **common)
    else:
        if coupling.scale_map != "exp":
            raise NotImplementedError(
                f"{_WHERE}: normflows layer AffineCouplingBlock with scale_map="
                f"{coupling.scale_map!r} is not supported (sigmoid(h + 2) without a floor: its "
                f"refflow scale map does not exist yet)")
        layer = AffineCoupling(dim, scale="exp", scale_side="sampling", **common)
        n_b = dim - n_a
        rows = np.concatenate([2 * np.arange(n_b), 2 * np.arange(n_b) + 1])
        weights[-1], biases[-1] = weights[-1][rows], biases[-1][rows]
    for k, (w, bias) in enumerate(zip(weights, biases)):
        layer.params[f"conditioner.w{k}"] = w
        layer.params[f"conditioner.b{k}"] = bias
    return [layer]


def _affine_const(flow):
    from normflows.flows import ActNorm

    from ..bijectors import Affine
    where = type(flow).__name__
    if isinstance(flow, ActNorm) and not float(flow.data_dep_init_done) > 0:
        _refuse(where, "an ActNorm before its data-dependent initialisation (run the model "
                       "on a batch first: normflows would re-initialise it)")
    s, t = np64(flow.s), np64(flow.t)
    if s.ndim != 2 or s.shape[0] != 1 or t.shape != s.shape:
        _refuse(where, f"parameters of shape {s.shape} (refflow imports vectors)")
    layer = Affine(s.shape[1])
    layer.params["shift"] = t[0]
    layer.params["log_scale"] = s[0]
    return [layer]


def _permute(flow):
    from ..bijectors import Permute
    n = int(flow.num_channels)
    if flow.mode == "shuffle":
        p = np64(flow.perm).astype(np.int64)
    elif flow.mode == "swap":  # forward: [z[n//2:], z[:n//2]]
        p = np.concatenate([np.arange(n // 2, n), np.arange(n // 2)])
    else:
        _refuse("Permute", f"mode={flow.mode!r}")
    return [Permute(n, permutation=p)]


def _lu_permute(flow):
    from ..bijectors import Inverse, LULinear, Permute
    lin, perm = flow.linear, flow.permutation
    if float(lin.eps) != _LU_EPS:
        _refuse("LULinearPermute", f"eps={lin.eps} (refflow's softplus diagonal has 1e-3)")
    if int(perm._dim) != 1:
        _refuse("LULinearPermute", f"a permutation along dim {perm._dim}")
    layer = LULinear(int(lin.features), upper_diag="softplus")
    for key in ("lower_entries", "upper_entries", "unconstrained_upper_diag", "bias"):
        layer.params[key] = np64(getattr(lin, key))
    p = np64(perm._permutation).astype(np.int64)
    # data -> base: u = x[:, p], then L U u + b (refflow's LULinear.forward); sampling runs
    # Inverse(LULinear) and then x = u[:, argsort(p)]
    return [Inverse(layer), Permute(p.shape[0], permutation=np.argsort(p))]


def _layers(flow):
    from normflows import flows as nf
    cls = type(flow)
    if cls is nf.MaskedAffineFlow:
        return _masked_affine(flow)
    if cls is nf.AffineCouplingBlock:
        return _coupling_block(flow)
    if cls in (nf.AffineConstFlow, nf.ActNorm):
        return _affine_const(flow)
    if cls is nf.Permute:
        return _permute(flow)
    if cls is nf.LULinearPermute:
        return _lu_permute(flow)
    _unsupported(flow)


def _base(q0):
    from normflows.distributions import DiagGaussian

    from ..distributions import DiagNormal
    if type(q0) is not DiagGaussian:
        _unsupported(q0, "as a base distribution; refflow imports DiagGaussian")
    if q0.temperature is not None:
        _refuse("DiagGaussian", f"temperature={q0.temperature}")
    loc, log_scale = np64(q0.loc), np64(q0.log_scale)
    if loc.ndim != 2 or loc.shape[0] != 1:
        _refuse("DiagGaussian", f"shape {tuple(q0.shape)} (refflow imports vectors)")
    base = DiagNormal(loc.shape[1])
    base.params["loc"] = loc[0]
    base.params["log_scale"] = log_scale[0]
    return base


def from_normflows(model):
    """The refflow :class:`~refflow.Flow` that computes exactly what a normflows model computes.

    Parameters
    ----------
    model : normflows.NormalizingFlow
        With a ``DiagGaussian`` base and layers among ``MaskedAffineFlow`` (``nets.MLP``
        networks with ReLU), ``AffineCouplingBlock`` (``split_mode="channel"``,
        ``scale_map="exp"`` or ``scale=False``), ``AffineConstFlow``, ``ActNorm`` (after its
        initialisation), ``Permute`` and ``LULinearPermute``.

    Returns
    -------
    refflow.Flow
        float64 copies of the weights. ``model.log_prob(x)`` equals ``Flow.log_prob(x)`` and
        each normflows layer's ``forward`` equals the refflow layers' ``forward``.

    Raises
    ------
    TypeError
        ``model`` is not a normflows ``NormalizingFlow``.
    NotImplementedError
        A normflows layer refflow does not import (yet), naming its class.
    ValueError
        An option refflow cannot reproduce, naming the class and the option.
    """
    try:
        import normflows
    except ImportError:  # pragma: no cover
        raise ImportError(f"{_WHERE}: needs torch and normflows (pip install normflows)") \
            from None
    from ..bijectors import Chain
    from ..distributions import Flow
    if type(model) is not normflows.NormalizingFlow:
        raise TypeError(f"{_WHERE}: expected a normflows.NormalizingFlow, got "
                        f"{type(model).__name__}")
    base = _base(model.q0)
    layers = []
    for flow in model.flows:
        layers += _layers(flow)
    for layer in layers:
        if layer.dim != base.dim:
            _refuse(type(layer).__name__, f"dimension {layer.dim} for a base of {base.dim}")
    return Flow(base, Chain(layers))
