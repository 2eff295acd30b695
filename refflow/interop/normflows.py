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
``AffineCouplingBlock`` (channel      ``AffineCoupling(scale=..., scale_side="sampling")``
split; shift ``param[:, 0::2]``,      with ``mask = arange(D) >= ceil(D / 2)``; the
scale ``param[:, 1::2]``; forward     conditioner's last rows reordered to ``[t | u]``;
``z2 exp(s) + t`` (``"exp"``),        ``scale="exp"``, ``"sigmoid-reciprocal"`` (``1 /
``z2 / sigmoid(s + 2) + t``           sigmoid(u + 2)``) and ``"sigmoid-nofloor"``
(``"sigmoid"``), ``z2 sigmoid(s + 2)  (``sigmoid(u + 2)``); ``scale=False`` is
+ t`` (``"sigmoid_inv"``))            ``AdditiveCoupling``
====================================  ======================================================

``MaskedAffineAutoregressive``        ``Inverse(MaskedAffineAutoregressive(scale="sigmoid",
(``forward``: one MADE pass,          scale_side="density"))``: normflows' ``forward`` is
``y = (sigmoid(u + 2) + 1e-3) z +     refflow's one-pass ``inverse``; MADE outputs
t`` with ``u, t`` at ``z``)           ``[u, t]`` per feature swapped to refflow's ``[t, u]``
normflows' residual ``MADE``          ``ResidualMADE`` with normflows' degrees (``permute_mask``
(``initial -> blocks -> final``,      the input degrees' order; masks checked equal); with a
no activation after ``initial``)      context a private subclass: ``C c + d`` added to the
                                      first layer, each block's residual gated by
                                      ``sigmoid(C_j c + d_j)`` (``F.glu``)
``AutoregressiveRationalQuadratic     ``MaskedSplineAutoregressive(parameterization="durkan")``
Spline`` (``forward`` = nflows'      (``bound = tail_bound``, normflows' ``min_*``): its
``inverse``)                          ``forward`` is normflows' ``forward``; no
                                      ``sqrt(hidden)`` divisor (normflows' MADE has no
                                      ``hidden_features``); ``init_identity`` only sets the
                                      initial weights, which are copied
``CoupledRationalQuadraticSpline``    ``[SplineCoupling(mask=identity half), SplineCoupling
(alternating mask, ``reverse_mask``,  (mask=transform half)]``: the first has a constant
``apply_unconditional_transform``)    conditioner (zero weights, ``hidden=()``) whose bias
                                      holds the unconditional spline's widths, heights and
                                      derivatives (normflows' density direction applies the
                                      coupling, then the unconditional spline of the identity
                                      half); the second's conditioner is normflows'
                                      ``ResidualNet`` (context gates included) with the widths
                                      and heights divided by ``sqrt(hidden_features)``
``Planar`` (``act="tanh"``)           ``Planar`` (same ``u_hat`` constraint ``m(a) = -1 +
                                      softplus(a)``); normflows cannot invert it (it scores
                                      only its own samples), refflow inverts it exactly
``Radial`` (``alpha = |alpha_raw|``,  ``Radial(parameterization="normflows")``: ``z0 =
``beta = softplus(beta_raw) -         z_0``, the raw ``alpha`` and ``beta`` copied;
|alpha_raw|``)                        normflows cannot invert it, refflow does (closed form)
``GaussianMixture`` base              ``DiagGaussianMixture`` (``logits = weight_scores``)
``ConditionalNormalizingFlow``        the same, with ``context`` passed to every layer
====================================  ======================================================

Not imported (``NotImplementedError`` naming the class, or ``ValueError`` naming the class and
option): ``Planar(act="leaky_relu")`` (its forward map has the slope 0.2, but its inverse and
forward log-det build the slope as ``(x < 0) * (0.2 - 1.0) + 1.0``, a tensor of torch's default
dtype: in a float64 model they use 0.19999998807907104, so its ``log_prob`` is not the density
of the map it samples with, 1e-8 apart; refflow's ``Planar(activation="leaky_relu")`` is the
consistent map); ``Radial`` with ``alpha_raw = 0`` (the map is singular at ``z_0``); a
MADE without residual blocks (``use_residual_blocks=False``: normflows applies no activation
between its first layer and the first block, so two linear maps compose, which refflow's MADE
does not compute), with batch norm, active dropout, ``random_mask`` or a preprocessing
(the circular splines' periodic features); splines with ``tails`` other than ``"linear"``
(``CircularCoupledRationalQuadraticSpline``, ``CircularAutoregressiveRationalQuadraticSpline``);
``Invertible1x1Conv``, ``InvertibleAffine``, ``BatchNorm``, ``Residual``, ``GlowBlock`` and the
other bases. Nothing is approximated.

The returned model carries ``peer_gradients``: ``{normflows parameter name: (refflow key,
flat indices)}`` (see :func:`refflow.interop.common.index_map`), which
:func:`refflow.interop.compare` uses to compare gradients by name.
"""

import numpy as np

from .common import (
    GatedResidualNet, check_made_masks, check_network, gather_layers, index_map, made_layout,
    np64, refuse, require, residual_net_names, unsaveable, unsupported, unused_map, whole_map,
    with_peer_gradients,
)

__all__ = ["from_normflows"]

_WHERE = "from_normflows"
_PEER = "normflows"
_LU_EPS = 1e-3  # refflow's "softplus" LU diagonal floor (nflows' and normflows' eps)
#: normflows' AffineCoupling scale maps (base -> data: z2 exp(s) + t, z2 / sigmoid(s + 2) + t,
#: z2 sigmoid(s + 2) + t) as refflow scale maps multiplying on the sampling side
_COUPLING_SCALES = {"exp": "exp", "sigmoid": "sigmoid-reciprocal",
                    "sigmoid_inv": "sigmoid-nofloor"}


def _mlp(net, where):
    """``(weights, biases, activation)`` of a normflows ``nets.MLP`` (plain Linear/LeakyReLU)."""
    import torch.nn as nn
    from normflows.nets import MLP
    if type(net) is not MLP:
        refuse(_WHERE, where, f"a network of type {type(net).__name__} (refflow imports "
                              f"normflows.nets.MLP)")
    mods = list(net.net)
    linears, acts = mods[0::2], mods[1::2]
    if len(mods) % 2 != 1 or not all(type(m) is nn.Linear for m in linears) \
            or not all(type(m) is nn.LeakyReLU for m in acts):
        refuse(_WHERE, where, f"MLP layout {[type(m).__name__ for m in mods]} (output_fn, dropout "
                              f"or score scaling)")
    if any(float(m.negative_slope) != 0.0 for m in acts):
        refuse(_WHERE, where, "leaky > 0 (refflow's MLP has ReLU, not leaky ReLU)")
    if any(lin.bias is None for lin in linears):
        refuse(_WHERE, where, "a linear layer without bias")
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
        refuse(_WHERE, where, "a mask that is not a 0/1 vector")
    if not callable(getattr(flow, "s", None)) or not hasattr(flow.s, "net") \
            or not hasattr(flow.t, "net"):
        refuse(_WHERE, where, "a missing s or t network (NICE-style layers)")
    keep = b == 1                           # the identity part (refflow: mask False)
    dim = b.shape[0]
    ws, bs, act = _mlp(flow.s, where + ".s")
    wt, bt, _ = _mlp(flow.t, where + ".t")
    if len(ws) != len(wt):
        refuse(_WHERE, where, "s and t networks of different depths")
    trans = np.flatnonzero(~keep)
    kcols = np.flatnonzero(keep)
    n_layers = len(ws)
    weights, biases, grads = [], [], {}

    # first layer: [t; s] rows over the identity columns (the masked-out columns, which
    # multiply exact zeros, dropped: their gradient map is -1); later layers block-diagonal
    for k in range(n_layers):
        last = k == n_layers - 1
        rows_t = trans if last else np.arange(wt[k].shape[0])
        rows_s = trans if last else np.arange(ws[k].shape[0])
        a_t, a_s = wt[k][rows_t], ws[k][rows_s]
        if k == 0:
            a_t, a_s = a_t[:, keep], a_s[:, keep]
            w = np.concatenate([a_t, a_s], axis=0)
        else:
            w = _block_diagonal(a_t, a_s)
        weights.append(w)
        biases.append(np.concatenate([bt[k][rows_t], bs[k][rows_s]]))
        n_rt = rows_t.shape[0]
        w_idx, b_idx = index_map(w.shape), index_map((w.shape[0],))
        in_t = wt[k].shape[1] if k else dim
        in_s = ws[k].shape[1] if k else dim
        for net, rows, row0, col0, n_in, full in (("t", rows_t, 0, 0, in_t, wt[k]),
                                                   ("s", rows_s, n_rt, in_t if k else 0,
                                                    in_s, ws[k])):
            peer_w, peer_b = unused_map(full.shape), unused_map((full.shape[0],))
            r = row0 + np.arange(rows.shape[0])
            if k == 0:
                peer_w[np.ix_(rows, kcols)] = w_idx[np.ix_(r, np.arange(kcols.shape[0]))]
            else:
                peer_w[rows] = w_idx[np.ix_(r, col0 + np.arange(n_in))]
            peer_b[rows] = b_idx[r]
            grads[f"{net}.net.{2 * k}.weight"] = (0, f"conditioner.w{k}", peer_w)
            grads[f"{net}.net.{2 * k}.bias"] = (0, f"conditioner.b{k}", peer_b)
    hidden = tuple(w.shape[0] for w in weights[:-1])
    layer = AffineCoupling(dim, mask=~keep, hidden=hidden, activation=act, scale="exp",
                           scale_side="sampling", rng=0)
    for k, (w, bias) in enumerate(zip(weights, biases)):
        layer.params[f"conditioner.w{k}"] = w
        layer.params[f"conditioner.b{k}"] = bias
    return [layer], grads


def _coupling_block(flow):
    from normflows.flows.affine.coupling import AffineCoupling as NfAffineCoupling
    from normflows.flows.reshape import Merge, Split

    from ..bijectors import AdditiveCoupling, AffineCoupling
    where = "AffineCouplingBlock"
    split, coupling, merge = list(flow.flows)
    if type(split) is not Split or type(merge) is not Merge or \
            type(coupling) is not NfAffineCoupling:
        refuse(_WHERE, where, "a block other than [Split, AffineCoupling, Merge]")
    if split.mode != "channel" or merge.mode != "channel":
        refuse(_WHERE, where, f"split_mode={split.mode!r} (refflow imports 'channel')")
    weights, biases, act = _mlp(coupling.param_map, where + ".param_map")
    n_a = weights[0].shape[1]
    n_out = weights[-1].shape[0]
    dim = n_a + (n_out // 2 if coupling.scale else n_out)
    if -(-dim // 2) != n_a:
        refuse(_WHERE, where, f"a param_map with {n_a} inputs for {dim} features")
    mask = np.arange(dim) >= n_a
    hidden = tuple(w.shape[0] for w in weights[:-1])
    common = dict(mask=mask, hidden=hidden, activation=act, rng=0)
    rows = np.arange(n_out)
    if not coupling.scale:
        layer = AdditiveCoupling(dim, **common)
    else:
        scale = _COUPLING_SCALES.get(coupling.scale_map)
        if scale is None:
            refuse(_WHERE, where, f"scale_map={coupling.scale_map!r} (refflow imports "
                                  f"{sorted(_COUPLING_SCALES)})")
        layer = AffineCoupling(dim, scale=scale, scale_side="sampling", **common)
        n_b = dim - n_a
        rows = np.concatenate([2 * np.arange(n_b), 2 * np.arange(n_b) + 1])
        weights[-1], biases[-1] = weights[-1][rows], biases[-1][rows]
    grads = {}
    last = len(weights) - 1
    for k, (w, bias) in enumerate(zip(weights, biases)):
        layer.params[f"conditioner.w{k}"] = w
        layer.params[f"conditioner.b{k}"] = bias
        order = np.argsort(rows) if k == last else np.arange(w.shape[0])  # peer row -> ours
        grads[f"flows.1.param_map.net.{2 * k}.weight"] = (
            0, f"conditioner.w{k}", index_map(w.shape)[order])
        grads[f"flows.1.param_map.net.{2 * k}.bias"] = (
            0, f"conditioner.b{k}", index_map(bias.shape)[order])
    return [layer], grads


def _affine_const(flow):
    from normflows.flows import ActNorm

    from ..bijectors import Affine
    where = type(flow).__name__
    if isinstance(flow, ActNorm) and not float(flow.data_dep_init_done) > 0:
        refuse(_WHERE, where, "an ActNorm before its data-dependent initialisation (run the model "
                              "on a batch first: normflows would re-initialise it)")
    s, t = np64(flow.s), np64(flow.t)
    if s.ndim != 2 or s.shape[0] != 1 or t.shape != s.shape:
        refuse(_WHERE, where, f"parameters of shape {s.shape} (refflow imports vectors)")
    layer = Affine(s.shape[1])
    layer.params["shift"] = t[0]
    layer.params["log_scale"] = s[0]
    grads = {"s": (0, "log_scale", whole_map(s.shape[1:], s.shape)),
             "t": (0, "shift", whole_map(t.shape[1:], t.shape))}
    return [layer], grads


def _permute(flow):
    from ..bijectors import Permute
    n = int(flow.num_channels)
    if flow.mode == "shuffle":
        p = np64(flow.perm).astype(np.int64)
    elif flow.mode == "swap":  # forward: [z[n//2:], z[:n//2]]
        p = np.concatenate([np.arange(n // 2, n), np.arange(n // 2)])
    else:
        refuse(_WHERE, "Permute", f"mode={flow.mode!r}")
    return [Permute(n, permutation=p)], {}


def _lu_permute(flow):
    from ..bijectors import Inverse, LULinear, Permute
    lin, perm = flow.linear, flow.permutation
    if float(lin.eps) != _LU_EPS:
        refuse(_WHERE, "LULinearPermute", f"eps={lin.eps} (refflow's softplus diagonal has 1e-3)")
    if int(perm._dim) != 1:
        refuse(_WHERE, "LULinearPermute", f"a permutation along dim {perm._dim}")
    layer = LULinear(int(lin.features), upper_diag="softplus")
    grads = {}
    for key in ("lower_entries", "upper_entries", "unconstrained_upper_diag", "bias"):
        layer.params[key] = np64(getattr(lin, key))
        grads[f"linear.{key}"] = (0, key, whole_map(layer.params[key].shape))
    p = np64(perm._permutation).astype(np.int64)
    # data -> base: u = x[:, p], then L U u + b (refflow's LULinear.forward); sampling runs
    # Inverse(LULinear) and then x = u[:, argsort(p)]
    return [Inverse(layer), Permute(p.shape[0], permutation=np.argsort(p))], grads


def _planar(flow):
    from ..bijectors import Planar
    where = "Planar"
    if flow.act == "leaky_relu":
        refuse(_WHERE, where, "act='leaky_relu' (normflows' forward map has the slope 0.2, but "
                              "its inverse and forward log-det build it as (x < 0) * (0.2 - 1.0) "
                              "+ 1.0 in torch's default dtype: in a float64 model they use "
                              "0.19999998807907104, so its log_prob is not the density of its "
                              "own samples' map (1e-8 apart); refflow's "
                              "Planar(activation='leaky_relu') is the consistent map")
    if flow.act != "tanh":
        refuse(_WHERE, where, f"act={flow.act!r} (refflow's Planar has tanh)")
    u, w, b = np64(flow.u), np64(flow.w), np64(flow.b)
    if u.ndim != 2 or u.shape[0] != 1 or w.shape != u.shape or b.shape != (1,):
        refuse(_WHERE, where, f"parameters of shape {u.shape} (refflow imports vectors)")
    dim = u.shape[1]
    layer = Planar(dim, rng=0)
    layer.params["u"], layer.params["w"], layer.params["b"] = u[0], w[0], b
    grads = {"u": (0, "u", whole_map((dim,), u.shape)), "w": (0, "w", whole_map((dim,), w.shape)),
             "b": (0, "b", whole_map((1,)))}
    return [layer], grads


def _radial(flow):
    from ..bijectors import Radial
    where = "Radial"
    z0, alpha, beta = np64(flow.z_0), np64(flow.alpha), np64(flow.beta)
    if z0.ndim != 2 or z0.shape[0] != 1 or alpha.shape != (1,) or beta.shape != (1,):
        refuse(_WHERE, where, f"parameters of shape {z0.shape} (refflow imports vectors)")
    if alpha[0] == 0.0:
        refuse(_WHERE, where, "alpha = 0 (|alpha| = 0: the map is singular at z_0)")
    dim = z0.shape[1]
    layer = Radial(dim, parameterization="normflows", rng=0)
    layer.params["z0"], layer.params["alpha"], layer.params["beta"] = z0[0], alpha, beta
    grads = {"z_0": (0, "z0", whole_map((dim,), z0.shape)), "alpha": (0, "alpha", whole_map((1,))),
             "beta": (0, "beta", whole_map((1,)))}
    return [layer], grads


# ------------------------------------------------------------------------------ MADE
def _activation(act, where):
    """refflow's name of a normflows activation (a function or a torch module)."""
    import torch
    import torch.nn.functional as F
    if act in (F.relu, torch.relu) or type(act) is torch.nn.ReLU:
        return "relu"
    if act in (F.tanh, torch.tanh) or type(act) is torch.nn.Tanh:
        return "tanh"
    if act is F.elu or (type(act) is torch.nn.ELU and float(act.alpha) == 1.0):
        return "elu"
    refuse(_WHERE, where, f"activation {getattr(act, '__name__', type(act).__name__)} (relu, tanh, "
                          f"elu)")


_GATED = {}


def _gated_residual_made_class():
    """normflows' conditional residual MADE, as a private subclass of refflow's ResidualMADE.

    ``h = x V_0^T + b_0 + c C^T + d``; block ``j``: ``t = f(f(h) V_j0^T + b_j0) V_j1^T +
    b_j1``, ``h <- h + t g_j`` with ``g_j = sigmoid(c C_j^T + d_j)``; ``out = h V_out^T +
    b_out`` (``V = W * M``, the masks of the unconditional network: the context reaches every
    hidden unit, so every output, through ``C`` and the gates). Pullback (reverse):
    ``h_bar = out_bar V_out``; per block ``r_bar = h_bar g``, ``e_bar = h_bar t g (1 - g)``
    (``C_j_bar = e_bar^T c``, ``c_bar += e_bar C_j``), ``t_bar = r_bar V_j1 f'(.)``, ``h_bar +=
    t_bar V_j0 f'(h)``; ``V_0_bar = h_bar^T x``, ``C_bar = h_bar^T c``, ``x_bar = h_bar V_0``,
    ``c_bar += h_bar C``; weight cotangents multiplied by their masks.
    """
    if "cls" in _GATED:
        return _GATED["cls"]
    from .._math import sigmoid
    from ..nn.made import ResidualMADE

    class _GatedResidualMADE(ResidualMADE):
        def _sample(self, z, context, sample_coordinate):
            return self._sample_passes(z, context, sample_coordinate)

        def _run(self, x, context, weights, with_vjp):
            dtype, n = x.dtype, x.shape[0]
            ws, bs, blocks = self._block_weights(dtype, weights)
            p = {k: self.params[k].astype(dtype) for k in self.params if "context" in k}
            f = self._act
            h = x @ ws["w0"].T + bs["b0"] + (context @ p["context_w"].T + p["context_b"])
            saved = []
            for j, (w0, b0, w1, b1) in enumerate(blocks):
                s1, d1 = f.value_and_derivative(h)
                t = s1 @ w0.T + b0
                s2, d2 = f.value_and_derivative(t)
                r = s2 @ w1.T + b1
                g = sigmoid(context @ p[f"blocks.{j}.context_w"].T + p[f"blocks.{j}.context_b"])
                saved.append((s1, d1, s2, d2, r, g))
                h = h + r * g
            out = h @ ws["w_out"].T + bs["b_out"]
            shaped = out.reshape(n, self.dim, self.n_params)
            if not with_vjp:
                return shaped

            def pullback(out_bar):
                o = out_bar.reshape(n, self.dim * self.n_params)
                w_bars, b_bars = {"w_out": o.T @ h}, {"b_out": o.sum(axis=0)}
                c_grads = {}
                h_bar = o @ ws["w_out"]
                c_bar = np.zeros_like(context)
                for j in range(self.n_blocks - 1, -1, -1):
                    (w0, _, w1, _), (s1, d1, s2, d2, r, g) = blocks[j], saved[j]
                    e_bar = h_bar * r * g * (1.0 - g)
                    c_grads[f"blocks.{j}.context_w"] = e_bar.T @ context
                    c_grads[f"blocks.{j}.context_b"] = e_bar.sum(axis=0)
                    c_bar += e_bar @ p[f"blocks.{j}.context_w"]
                    r_bar = h_bar * g
                    w_bars[f"blocks.{j}.w1"], b_bars[f"blocks.{j}.b1"] = r_bar.T @ s2, \
                        r_bar.sum(0)
                    t_bar = (r_bar @ w1) * d2
                    w_bars[f"blocks.{j}.w0"], b_bars[f"blocks.{j}.b0"] = t_bar.T @ s1, \
                        t_bar.sum(0)
                    h_bar = h_bar + (t_bar @ w0) * d1
                w_bars["w0"], b_bars["b0"] = h_bar.T @ x, h_bar.sum(axis=0)
                c_grads["context_w"], c_grads["context_b"] = h_bar.T @ context, h_bar.sum(0)
                c_bar += h_bar @ p["context_w"]
                grads = self._masked_grads([w_bars[k] for k in self._w_keys],
                                           [b_bars[k] for k in self._b_keys], dtype)
                grads.update({k: np.asarray(v, dtype=np.float64) for k, v in c_grads.items()})
                return h_bar @ ws["w0"], {k: grads[k] for k in self.params}, c_bar

            return shaped, pullback

        def _forward(self, x, context=None, weights=None):
            return self._run(x, context, weights, False)

        def _vjp(self, x, context=None):
            return self._run(x, context, None, True)

        def _masked_grads(self, w_bars, b_bars, dtype):
            from ..nn.mlp import grads64
            grads = grads64(self._b_keys, b_bars)
            for key, g, m in zip(self._w_keys, w_bars, self._masks_as(dtype)):
                grads[key] = np.asarray(g * m, dtype=np.float64)
            return grads

    _GATED["cls"] = _GatedResidualMADE
    return _GatedResidualMADE


def _made(net, n_params, where):
    """refflow network for a normflows residual MADE and ``{peer name: (key, indices)}``."""
    import torch
    from normflows.nets.made import MADE as NfMADE, MaskedResidualBlock

    from ..nn.made import ResidualMADE
    from ..params import ParamDict
    if type(net) is not NfMADE:
        refuse(_WHERE, where, f"autoregressive_net of type {type(net).__name__} (normflows MADE)")
    check_network(_WHERE, net, where)
    if type(net.preprocessing) is not torch.nn.Identity:
        refuse(_WHERE, where, f"preprocessing {type(net.preprocessing).__name__} (the circular "
                              f"splines' periodic features)")
    if not all(type(b) is MaskedResidualBlock for b in net.blocks):
        refuse(_WHERE, where, "use_residual_blocks=False (normflows applies no activation between "
                              "its first layer and the first block)")
    dim = int(net.initial_layer.in_features)
    width = int(net.initial_layer.out_features)
    if net.final_layer.out_features != dim * n_params:
        refuse(_WHERE, where, f"MADE output width {net.final_layer.out_features} (expected {dim} x "
                              f"{n_params})")
    in_degrees = np64(net.final_layer.degrees).astype(np.int64)[::n_params] \
        if hasattr(net.final_layer, "degrees") else None
    if in_degrees is None or sorted(in_degrees.tolist()) != list(range(1, dim + 1)):
        refuse(_WHERE, where, "output degrees that are not one permutation of 1..dim per parameter")
    order = in_degrees - 1
    names, torch_masks, degrees = made_layout(net, residual=True)
    conditional = hasattr(net, "context_layer")
    act = _activation(net.blocks[0].activation if len(net.blocks) else torch.relu, where)
    try:
        model = ResidualMADE(dim, width, len(net.blocks), n_params, order=order,
                             hidden_degrees=degrees, activation=act)
    except ValueError as err:
        refuse(_WHERE, where, f"its hidden degrees ({err})")
    if conditional:
        model.__class__ = _gated_residual_made_class()
    check_made_masks(model, torch_masks, f"{_WHERE}: {where}")
    state = dict(net.named_parameters())
    arrays = {ours: np64(state[theirs]) for ours, theirs in names}
    if conditional:
        n_context = int(net.context_layer.in_features)
        extra = [("context_w", "context_layer.weight"), ("context_b", "context_layer.bias")]
        for j in range(len(net.blocks)):
            extra += [(f"blocks.{j}.context_w", f"blocks.{j}.context_layer.weight"),
                      (f"blocks.{j}.context_b", f"blocks.{j}.context_layer.bias")]
        arrays.update({ours: np64(state[theirs]) for ours, theirs in extra})
        names += extra
        model.context_features = n_context
    model.params = ParamDict(arrays)
    grads = {theirs: (ours, whole_map(arrays[ours].shape)) for ours, theirs in names}
    return model, grads


def _masked_affine_autoregressive(flow):
    from ..bijectors import Inverse, MaskedAffineAutoregressive
    where = "MaskedAffineAutoregressive"
    made, names = _made(flow.autoregressive_net, 2, where)
    dim = made.dim
    # normflows' outputs per feature [u, t]; refflow's [t, u]: swap the two rows
    rows = np.arange(2 * dim).reshape(dim, 2)[:, ::-1].ravel()
    for key in ("w_out", "b_out"):
        made.params[key] = made.params[key][rows]
    layer = MaskedAffineAutoregressive(dim, hidden=(2 * dim,), scale="sigmoid",
                                       scale_side="density", rng=0)
    layer.made = made
    layer.context_dim = made.context_features or None
    grads = {}
    for theirs, (ours, idx) in names.items():
        if ours in ("w_out", "b_out"):
            idx = idx[np.argsort(rows)]
        grads[f"autoregressive_net.{theirs}"] = (0, f"made.{ours}", idx)
    return [Inverse(unsaveable(layer, "Normflows", __name__))], grads


def _check_spline(obj, where):
    if obj.tails != "linear":
        refuse(_WHERE, where, f"tails={obj.tails!r} (refflow imports 'linear')")
    import torch
    if torch.is_tensor(obj.tail_bound):
        refuse(_WHERE, where, "a tail_bound per feature")


def _spline_options(obj):
    return dict(n_bins=int(obj.num_bins), parameterization="durkan",
                bound=float(obj.tail_bound), min_bin_width=float(obj.min_bin_width),
                min_bin_height=float(obj.min_bin_height),
                min_derivative=float(obj.min_derivative))


def _autoregressive_spline(flow):
    from ..bijectors import MaskedSplineAutoregressive
    where = "AutoregressiveRationalQuadraticSpline"
    inner = flow.mprqat
    _check_spline(inner, where)
    n_params = 3 * int(inner.num_bins) - 1
    if hasattr(inner.autoregressive_net, "hidden_features"):  # pragma: no cover - 1.7.3 has not
        refuse(_WHERE, where, "a MADE with a hidden_features attribute (the sqrt scaling)")
    made, names = _made(inner.autoregressive_net, n_params, where)
    layer = MaskedSplineAutoregressive(made.dim, hidden=(2 * made.dim,), rng=0,
                                       **_spline_options(inner))
    layer.made = made
    layer.context_dim = made.context_features or None
    grads = {f"mprqat.autoregressive_net.{t}": (0, f"made.{o}", idx)
             for t, (o, idx) in names.items()}
    return [unsaveable(layer, "Normflows", __name__)], grads


def _residual_net(net, n_in, n_b, n_bins, where, prefix):
    """:class:`GatedResidualNet` for a normflows ``ResidualNet`` (widths and heights divided
    by ``sqrt(hidden_features)``, as normflows' spline coupling does) and its gradient map."""
    from normflows.nets.resnet import ResidualNet

    from ..nn.activations import get_activation
    if type(net) is not ResidualNet:
        refuse(_WHERE, where, f"transform_net of type {type(net).__name__} (normflows ResidualNet)")
    check_network(_WHERE, net, where)
    if net.preprocessing is not None:
        refuse(_WHERE, where, f"preprocessing {type(net.preprocessing).__name__}")
    import torch
    act = get_activation(_activation(net.blocks[0].activation if len(net.blocks) else
                                     torch.relu, where))
    n_context = net.context_features or 0
    per = 3 * n_bins - 1
    if net.initial_layer.in_features != n_in + n_context or \
            net.final_layer.out_features != n_b * per:
        refuse(_WHERE, where, "a ResidualNet whose sizes do not match the coupling split")
    names = residual_net_names(len(net.blocks), bool(n_context))
    state = dict(net.named_parameters())
    divisor = np.ones((n_b, per))
    divisor[:, :2 * n_bins] = np.sqrt(net.hidden_features)
    arrays = {k: np64(state[t]) for k, t in names}
    model = GatedResidualNet(arrays, n_in, n_context, len(net.blocks), act, divisor.ravel())
    grads = {f"{prefix}{t}": (f"conditioner.{k}", whole_map(arrays[k].shape)) for k, t in names}
    return model, grads, n_context


def _coupled_spline(flow):
    from ..bijectors import SplineCoupling
    where = "CoupledRationalQuadraticSpline"
    inner = flow.prqct
    _check_spline(inner, where)
    trans = np64(inner.transform_features).astype(np.int64)
    ident = np64(inner.identity_features).astype(np.int64)
    dim = int(inner.features)
    mask = np.zeros(dim, dtype=bool)
    mask[trans] = True
    n_bins = int(inner.num_bins)
    per = 3 * n_bins - 1
    conditioner, names, n_context = _residual_net(inner.transform_net, ident.shape[0],
                                                  trans.shape[0], n_bins, where,
                                                  "prqct.transform_net.")
    coupling = SplineCoupling(dim, mask=mask, hidden=(1,), rng=0,
                              context_dim=n_context or None, **_spline_options(inner))
    coupling.conditioner = conditioner
    layers = [unsaveable(coupling, "Normflows", __name__)]
    grads = {t: (0, o, i) for t, (o, i) in names.items()}
    cdf = inner.unconditional_transform
    if cdf is not None:
        # the unconditional spline of the identity half: a coupling whose conditioner is the
        # constant b_out (zero weight, no hidden layer), so its widths, heights and derivatives
        # are normflows' parameters, copied
        if cdf.tails != "linear" or float(cdf.tail_bound) != float(inner.tail_bound) or \
                cdf.unnormalized_derivatives.shape[-1] != n_bins - 1:
            refuse(_WHERE, where, "an unconditional spline with other tails than the coupling's")
        for name in ("min_bin_width", "min_bin_height", "min_derivative"):
            if float(getattr(cdf, name)) != float(getattr(inner, name)):
                refuse(_WHERE, where, f"an unconditional spline with another {name}")
        n_id = ident.shape[0]
        free = SplineCoupling(dim, mask=~mask, hidden=(), rng=0,
                              context_dim=n_context or None, **_spline_options(inner))
        w = free.params["conditioner.w0"]
        free.params["conditioner.w0"] = np.zeros_like(w)
        theta = np.concatenate([np64(cdf.unnormalized_widths), np64(cdf.unnormalized_heights),
                                np64(cdf.unnormalized_derivatives)], axis=1)
        if theta.shape != (n_id, per):
            refuse(_WHERE, where, f"unconditional spline parameters of shape {theta.shape}")
        free.params["conditioner.b0"] = theta.ravel()
        idx = index_map((n_id, per))
        grads.update({
            "prqct.unconditional_transform.unnormalized_widths":
                (-1, "conditioner.b0", idx[:, :n_bins]),
            "prqct.unconditional_transform.unnormalized_heights":
                (-1, "conditioner.b0", idx[:, n_bins:2 * n_bins]),
            "prqct.unconditional_transform.unnormalized_derivatives":
                (-1, "conditioner.b0", idx[:, 2 * n_bins:])})
        # density direction: the coupling first, then the unconditional spline; refflow's
        # Chain lists the sampling direction
        grads = {t: (0 if j == -1 else j + 1, o, i) for t, (j, o, i) in grads.items()}
        layers = [free] + layers
    return layers, grads


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
    if cls is nf.Planar:
        return _planar(flow)
    if cls is nf.MaskedAffineAutoregressive:
        return _masked_affine_autoregressive(flow)
    if cls is nf.AutoregressiveRationalQuadraticSpline:
        return _autoregressive_spline(flow)
    if cls is nf.CoupledRationalQuadraticSpline:
        return _coupled_spline(flow)
    if cls is nf.Radial:
        return _radial(flow)
    unsupported(_WHERE, _PEER, flow)


def _base(q0):
    from normflows.distributions import DiagGaussian, GaussianMixture

    from ..distributions import DiagGaussianMixture, DiagNormal
    if type(q0) is GaussianMixture:
        loc, log_scale, scores = np64(q0.loc), np64(q0.log_scale), np64(q0.weight_scores)
        if loc.ndim != 3 or loc.shape[0] != 1:
            refuse(_WHERE, "GaussianMixture", f"loc of shape {loc.shape}")
        k, dim = loc.shape[1:]
        base = DiagGaussianMixture(dim, k)
        base.params["loc"], base.params["log_scale"] = loc[0], log_scale[0]
        base.params["logits"] = scores[0]
        grads = {"loc": ("loc", whole_map((k, dim), loc.shape)),
                 "log_scale": ("log_scale", whole_map((k, dim), loc.shape)),
                 "weight_scores": ("logits", whole_map((k,), scores.shape))}
        return base, grads
    if type(q0) is not DiagGaussian:
        unsupported(_WHERE, _PEER, q0, "as a base distribution; refflow imports DiagGaussian and "
                                       "GaussianMixture")
    if q0.temperature is not None:
        refuse(_WHERE, "DiagGaussian", f"temperature={q0.temperature}")
    loc, log_scale = np64(q0.loc), np64(q0.log_scale)
    if loc.ndim != 2 or loc.shape[0] != 1:
        refuse(_WHERE, "DiagGaussian", f"shape {tuple(q0.shape)} (refflow imports vectors)")
    dim = loc.shape[1]
    base = DiagNormal(dim)
    base.params["loc"] = loc[0]
    base.params["log_scale"] = log_scale[0]
    grads = {"loc": ("loc", whole_map((dim,), loc.shape)),
             "log_scale": ("log_scale", whole_map((dim,), loc.shape))}
    return base, grads


def from_normflows(model):
    """The refflow :class:`~refflow.Flow` that computes exactly what a normflows model computes.

    Parameters
    ----------
    model : normflows.NormalizingFlow or normflows.ConditionalNormalizingFlow
        With a ``DiagGaussian`` or ``GaussianMixture`` base and layers among
        ``MaskedAffineFlow`` (``nets.MLP`` networks with ReLU), ``AffineCouplingBlock``
        (``split_mode="channel"``, ``scale_map`` ``"exp"``, ``"sigmoid"`` or
        ``"sigmoid_inv"``, or ``scale=False``), ``AffineConstFlow``, ``ActNorm`` (after its
        initialisation), ``Permute``, ``LULinearPermute``, ``Planar`` (tanh),
        ``Radial``, ``MaskedAffineAutoregressive``,
        ``AutoregressiveRationalQuadraticSpline`` and ``CoupledRationalQuadraticSpline``
        (residual networks, linear tails; conditional ones in a
        ``ConditionalNormalizingFlow``).

    Returns
    -------
    refflow.Flow
        float64 copies of the weights. ``model.log_prob(x)`` equals ``Flow.log_prob(x)`` and
        each normflows layer's ``forward`` equals the refflow layers' ``forward``. It carries
        ``peer_gradients`` (``{normflows parameter name: (refflow key, flat indices)}``) for
        :func:`refflow.interop.compare`.

    Raises
    ------
    TypeError
        ``model`` is not a normflows ``NormalizingFlow``.
    NotImplementedError
        A normflows layer refflow does not import (yet), naming its class.
    ValueError
        An option refflow cannot reproduce, naming the class and the option.
    """
    normflows = require(_WHERE, ("normflows",), "torch and normflows", "normflows")[0]
    from ..bijectors import Chain
    from ..distributions import Flow
    if type(model) not in (normflows.NormalizingFlow, normflows.ConditionalNormalizingFlow):
        raise TypeError(f"{_WHERE}: expected a normflows.NormalizingFlow, got "
                        f"{type(model).__name__}")
    base, base_grads = _base(model.q0)
    layers, peer = gather_layers((f"flows.{i}.", *_layers(flow))
                                 for i, flow in enumerate(model.flows))
    for name, (key, idx) in base_grads.items():
        if getattr(model.q0, name).requires_grad:
            peer[f"q0.{name}"] = (f"base.{key}", idx)
    for layer in layers:
        if layer.dim != base.dim:
            refuse(_WHERE, type(layer).__name__, f"dimension {layer.dim} for a base of {base.dim}")
    return with_peer_gradients(_WHERE, Flow(base, Chain(layers)), peer)
