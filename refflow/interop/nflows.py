r"""Import an nflows ``Flow`` as the equivalent refflow ``Flow`` (same weights, masks, maps).

``from_nflows(flow)`` reads the nflows model layer by layer and builds refflow layers that
compute the same density in float64. torch and nflows are imported lazily (only when this
function runs); the core package never needs them.

Conventions carried over exactly (nflows 0.14, read from its sources):

- **Direction.** nflows transforms map data to noise (``forward``: x -> z) and
  ``CompositeTransform`` applies its list in order; refflow's ``Chain`` lists layers in the
  sampling direction, so the list is reversed. Every supported nflows layer computes, in its
  density direction, what the refflow layer's ``inverse`` computes (``Inverse(LULinear)`` for
  the LU layer).
- **Permutations.** nflows ``z = x[:, p]``; refflow ``Permute`` has ``z = x[:, argsort(perm)]``,
  so ``perm = argsort(p)``.
- **LULinear.** nflows ``z = L U x + b``, ``diag U = softplus(u) + eps``: refflow
  ``Inverse(LULinear(upper_diag="softplus"))`` (eps must be 1e-3).
- **MADE.** The masks are rebuilt from nflows' own degree buffers (explicit hidden degrees) and
  checked equal to nflows' masks. nflows' conditional MADE adds ``f(C c + d)`` (a separate
  context layer, its own activation) to the first layer's pre-activation and gives hidden units
  degrees ``1..D-1``; refflow's conditional MADE concatenates the context instead, so a
  conditional nflows MADE is imported as a private MADE subclass with that context path.
- **Affine MAF.** nflows ``z = x (softplus(u) + 1e-3) + t`` with MADE outputs interleaved
  ``[u, t]`` per feature: refflow ``MaskedAffineAutoregressive(scale="softplus",
  scale_side="density")``, whose outputs are ``[t, u]``; the output rows are swapped.
- **Affine coupling.** ``scale = sigmoid(u + 2) + 1e-3``, outputs ``[t | u]``:
  ``AffineCoupling(scale="sigmoid", scale_side="density")``.
- **Splines.** nflows' parameter map is refflow's ``"durkan"`` map (same ``min_*``, bound,
  layout ``[widths | heights | derivatives]`` per feature, feature-major). nflows divides the
  unnormalized widths and heights by ``sqrt(transform_net.hidden_features)`` *only when the
  conditioner has that attribute*: ``ResidualNet`` has it, nflows' ``MADE`` does not (so the
  autoregressive spline layers are not scaled in nflows 0.14). The division is done inside the
  imported conditioner, with the same float64 operation, so parameters and gradients map one to
  one.
- **Coupling conditioners.** nflows' coupling calls ``transform_net(x_a, context)``; its
  ``ResidualNet`` (``[x_a, context]`` into the first layer, GLU context gates in the blocks) is
  imported as :class:`refflow.interop.common.GatedResidualNet` (hand-derived pullback; the
  spline widths' and heights' divisor as its ``divisor``), shared with normflows. nflows' ``MLP``
  takes no context argument, so nflows' own coupling layers cannot call it; it is refused.

Anything else (another base distribution, an embedding net, batch norm or active dropout
inside a network, other activations, other layers or options) raises ``ValueError`` naming the
class and the option. The returned model carries ``peer_parameters``: ``{refflow key:
(nflows parameter name, rows)}`` with ``refflow_param == nflows_param[rows]`` (``rows`` None for
the whole tensor), so gradients can be compared by name (equal, not scaled).
"""

import numpy as np

from .common import (
    GatedResidualNet, check_made_masks, check_network, made_layout, refuse, residual_net_names,
    to_numpy, unsaveable,
)

__all__ = ["from_nflows"]

_WHERE = "from_nflows"
_FLOOR = 1e-3  # nflows' epsilon of the softplus/sigmoid scales and of the LU diagonal


# ------------------------------------------------------------------------- private networks
def _activation_name(fn, where):
    import torch
    from torch.nn import functional as F
    names = {F.relu: "relu", torch.relu: "relu", torch.tanh: "tanh", F.tanh: "tanh"}
    for f, name in names.items():
        if fn is f:
            return name
    refuse(_WHERE, where, f"activation {getattr(fn, '__name__', fn)!r} (only relu and tanh)")


def _imported_made_class():
    from ..nn.made import MADE
    from ..nn.mlp import dense_forward, dense_vjp

    class _NflowsConditionalMADE(MADE):
        """nflows' conditional MADE: ``a_0 = x V_0^T + b_0 + f(c C^T + d)``, then as MADE.

        Pullback: ``a_0_bar = h_1_bar f'(a_0)``; ``x_bar = a_0_bar V_0``; ``e_bar = a_0_bar
        f'(e)`` for ``e = c C^T + d``; ``C_bar = e_bar^T c``, ``d_bar = sum_n e_bar``,
        ``c_bar = e_bar C``. Keys ``context_w``, ``context_b`` besides MADE's.
        """

        def _sample(self, z, context, sample_coordinate):
            # The context layer is not part of MADE's incremental plan: the full passes.
            return self._sample_passes(z, context, sample_coordinate)

        def _ctx(self, dtype):
            return (self.params["context_w"].astype(dtype),
                    self.params["context_b"].astype(dtype))

        def _forward(self, x, context=None, weights=None):
            ws, bs = self._weights(x.dtype) if weights is None else weights
            cw, cb = self._ctx(x.dtype)
            wk, bk = self._w_keys, self._b_keys
            a0 = x @ ws[wk[0]].T
            a0 += bs[bk[0]]
            a0 += self._act.value(context @ cw.T + cb)
            out = dense_forward(self._act.value(a0), [ws[k] for k in wk[1:]],
                                [bs[k] for k in bk[1:]], self._act)
            return out.reshape(x.shape[0], self.dim, self.n_params)

        def _vjp(self, x, context=None):
            dtype, n = x.dtype, x.shape[0]
            ws, bs = self._weights(dtype)
            cw, cb = self._ctx(dtype)
            wk, bk = self._w_keys, self._b_keys
            fe, dfe = self._act.value_and_derivative(context @ cw.T + cb)
            a0 = x @ ws[wk[0]].T
            a0 += bs[bk[0]]
            a0 += fe
            h1, d1 = self._act.value_and_derivative(a0)
            out, backward = dense_vjp(h1, [ws[k] for k in wk[1:]], [bs[k] for k in bk[1:]],
                                      self._act)

            def pullback(out_bar):
                h1_bar, w_bars, b_bars = backward(out_bar.reshape(n, self.dim * self.n_params))
                a0_bar = h1_bar * d1
                e_bar = a0_bar * dfe
                masks = self._masks_as(dtype)
                grads = {wk[0]: (a0_bar.T @ x) * masks[0], bk[0]: a0_bar.sum(axis=0)}
                for k, wb, bb, m in zip(range(1, len(wk)), w_bars, b_bars, masks[1:]):
                    grads[wk[k]], grads[bk[k]] = wb * m, bb
                grads["context_w"], grads["context_b"] = e_bar.T @ context, e_bar.sum(axis=0)
                grads = {k: np.asarray(grads[k], dtype=np.float64) for k in self.params}
                return a0_bar @ ws[wk[0]], grads, e_bar @ cw

            return out.reshape(n, self.dim, self.n_params), pullback

    return _NflowsConditionalMADE


# --------------------------------------------------------------------------------- layers
def _made(net, n_params, context_dim, where, prefix):
    """refflow network for an nflows MADE and ``{key: (name, rows)}``."""
    from nflows.transforms.made import MADE as NfMADE, MaskedFeedforwardBlock, MaskedResidualBlock
    from ..nn.made import MADE, ResidualMADE
    if type(net) is not NfMADE:
        refuse(_WHERE, where, f"autoregressive_net of type {type(net).__name__} (only nflows MADE)")
    check_network(_WHERE, net, where)
    act = _activation_name(net.activation, where)
    dim, width = net.initial_layer.in_features, net.initial_layer.out_features
    if net.final_layer.out_features != dim * n_params:
        refuse(_WHERE, where, f"MADE output width {net.final_layer.out_features} (expected {dim} x "
                              f"{n_params})")
    if hasattr(net, "hidden_features"):
        # nflows would divide the spline widths/heights by sqrt(hidden_features) here.
        refuse(_WHERE, where, "a MADE with a hidden_features attribute (nflows' sqrt scaling)")
    residual = bool(net.use_residual_blocks)
    block_type = MaskedResidualBlock if residual else MaskedFeedforwardBlock
    if not all(type(block) is block_type for block in net.blocks):
        refuse(_WHERE, where, "MADE blocks of another type than nflows' own")
    if residual and context_dim is not None:
        refuse(_WHERE, where, "a conditional residual MADE (use_residual_blocks=True with "
                              "context_features: nflows adds a context layer in every block)")
    names, torch_masks, degrees = made_layout(net, residual)
    if residual:
        model = ResidualMADE(dim, width, len(net.blocks), n_params, activation=act,
                             hidden_degrees=degrees)
    else:
        cls = MADE if context_dim is None else _imported_made_class()
        hidden = tuple(int(d.shape[0]) for d in degrees)
        model = cls(dim, hidden, n_params, activation=act, hidden_degrees=degrees)
    # degrees rebuilt from nflows' buffers
    check_made_masks(model, torch_masks, f"{_WHERE}: {where}")
    state = dict(net.named_parameters())
    arrays = {ours: to_numpy(state[theirs]) for ours, theirs in names}
    if context_dim is not None:
        arrays["context_w"] = to_numpy(net.context_layer.weight)
        arrays["context_b"] = to_numpy(net.context_layer.bias)
        names += [("context_w", "context_layer.weight"), ("context_b", "context_layer.bias")]
        model.context_features = context_dim
    from ..params import ParamDict
    model.params = ParamDict(arrays)
    return model, {k: (f"{prefix}{t}", None) for k, t in names}


def _context_dim(module):
    layer = getattr(module, "context_layer", None)
    return None if layer is None else int(layer.in_features)


def _masked_layer(t, where, prefix, kind):
    from ..bijectors.autoregressive import MaskedAffineAutoregressive
    from ..bijectors.splines import MaskedSplineAutoregressive
    net = t.autoregressive_net
    context_dim = _context_dim(net)
    if kind == "affine":
        if t._epsilon != _FLOOR:
            refuse(_WHERE, where, f"_epsilon={t._epsilon}")
        n_params = 2
    else:
        if t.tails != "linear":
            refuse(_WHERE, where, f"tails={t.tails!r} (only 'linear')")
        n_params = 3 * t.num_bins - 1
    made, names = _made(net, n_params, context_dim, where, f"{prefix}autoregressive_net.")
    dim = made.dim
    hidden = (2 * dim,)  # placeholder; the MADE is replaced below
    if kind == "affine":
        layer = MaskedAffineAutoregressive(dim, hidden=hidden, scale="softplus",
                                           scale_side="density")
        # nflows' MADE output per feature is [u, t]; refflow's [mu, u]: swap the two rows.
        rows = np.arange(2 * dim).reshape(dim, 2)[:, ::-1].ravel()
        last_w = "w_out" if "w_out" in made.params else f"w{len(made.hidden)}"
        last_b = "b_out" if last_w == "w_out" else f"b{len(made.hidden)}"
        for key in (last_w, last_b):
            made.params[key] = made.params[key][rows]
            names[key] = (names[key][0], rows)
    else:
        layer = MaskedSplineAutoregressive(dim, hidden=hidden, n_bins=t.num_bins,
                                           parameterization="durkan", bound=float(t.tail_bound),
                                           min_bin_width=t.min_bin_width,
                                           min_bin_height=t.min_bin_height,
                                           min_derivative=t.min_derivative)
    layer.made = made
    layer.context_dim = context_dim
    return unsaveable(layer, "Nflows", __name__), {f"made.{k}": v for k, v in names.items()}


def _residual_net(net, n_in, n_out, per_feature, n_bins, where, prefix):
    from nflows.nn.nets import MLP as NfMLP, ResidualNet
    from ..nn.activations import get_activation
    if isinstance(net, NfMLP):
        refuse(_WHERE, where, "transform_net nflows.nn.nets.MLP (its forward takes no context "
                              "argument, so nflows' coupling layers cannot call it; use "
                              "ResidualNet)")
    if type(net) is not ResidualNet:
        refuse(_WHERE, where, f"transform_net of type {type(net).__name__} (only nflows "
                              f"ResidualNet)")
    check_network(_WHERE, net, where)
    for block in net.blocks:
        if block.use_batch_norm:
            refuse(_WHERE, where, "ResidualNet with use_batch_norm=True")
    act = get_activation(_activation_name(net.blocks[0].activation if len(net.blocks) else
                                          __import__("torch").relu, where))
    n_context = net.context_features or 0
    if net.initial_layer.in_features != n_in + n_context or net.final_layer.out_features != n_out:
        refuse(_WHERE, where, "a ResidualNet whose sizes do not match the coupling split")
    names = residual_net_names(len(net.blocks), bool(n_context))
    state = dict(net.named_parameters())
    divisor = np.ones(n_out)
    if n_bins is not None:  # nflows: widths and heights /= sqrt(transform_net.hidden_features)
        cols = np.zeros((n_out // per_feature, per_feature), dtype=bool)
        cols[:, :2 * n_bins] = True
        divisor[cols.ravel()] = np.sqrt(net.hidden_features)
    model = GatedResidualNet({k: to_numpy(state[t]) for k, t in names}, n_in, n_context,
                             len(net.blocks), act, divisor)
    return model, {f"conditioner.{k}": (f"{prefix}transform_net.{t}", None) for k, t in names}


def _coupling_layer(t, where, prefix, kind):
    from ..bijectors.coupling import AffineCoupling
    from ..bijectors.splines import SplineCoupling
    if t.unconditional_transform is not None:
        refuse(_WHERE, where, "apply_unconditional_transform=True")
    mask = np.zeros(t.features, dtype=bool)
    mask[to_numpy(t.transform_features).astype(np.int64)] = True
    n_a, n_b = int((~mask).sum()), int(mask.sum())
    net = t.transform_net
    context_dim = getattr(net, "context_features", None)
    if kind == "affine":
        layer = AffineCoupling(t.features, mask=mask, hidden=(1,), scale="sigmoid",
                               scale_side="density")
        # conditioner output [t | u]: per-feature blocks are not interleaved here
        conditioner, names = _residual_net(net, n_a, 2 * n_b, 2 * n_b, None, where, prefix)
    else:
        if t.tails != "linear":
            refuse(_WHERE, where, f"tails={t.tails!r} (only 'linear')")
        per = 3 * t.num_bins - 1
        layer = SplineCoupling(t.features, mask=mask, hidden=(1,), n_bins=t.num_bins,
                               parameterization="durkan", bound=float(t.tail_bound),
                               min_bin_width=t.min_bin_width, min_bin_height=t.min_bin_height,
                               min_derivative=t.min_derivative)
        scaled = hasattr(net, "hidden_features")
        conditioner, names = _residual_net(net, n_a, per * n_b, per,
                                           t.num_bins if scaled else None, where, prefix)
    layer.conditioner = conditioner
    if context_dim is not None:
        layer.context_dim = int(context_dim)
    return unsaveable(layer, "Nflows", __name__), names


def _transform_layers(t, prefix):
    """``[(refflow layer, names)]`` in nflows' order (data -> noise)."""
    from nflows.transforms import (
        AffineCouplingTransform, CompositeTransform, LULinear as NfLU,
        MaskedAffineAutoregressiveTransform, MaskedPiecewiseRationalQuadraticAutoregressiveTransform,
        PiecewiseRationalQuadraticCouplingTransform, RandomPermutation, ReversePermutation,
    )
    from ..bijectors.base import Inverse
    from ..bijectors.linear import LULinear, Permute
    cls = type(t)
    where = cls.__name__
    if cls is CompositeTransform:
        out = []
        for i, sub in enumerate(t._transforms):
            out += _transform_layers(sub, f"{prefix}_transforms.{i}.")
        return out
    if cls in (ReversePermutation, RandomPermutation):
        if t._dim != 1:
            refuse(_WHERE, where, f"dim={t._dim}")
        p = to_numpy(t._permutation).astype(np.int64)
        # nflows z = x[:, p]; refflow Permute's inverse is z = x[:, argsort(perm)]
        return [(Permute(p.shape[0], permutation=np.argsort(p)), {})]
    if cls is NfLU:
        if t.eps != _FLOOR:
            refuse(_WHERE, where, f"eps={t.eps}")
        layer = LULinear(t.features, upper_diag="softplus")
        keys = {"lower_entries": "lower_entries", "upper_entries": "upper_entries",
                "unconstrained_upper_diag": "unconstrained_upper_diag", "bias": "bias"}
        state = dict(t.named_parameters())
        for ours, theirs in keys.items():
            layer.params[ours] = to_numpy(state[theirs])
        # nflows' forward (data -> noise) z = L U x + b is refflow's forward map x = L U z + b
        return [(Inverse(layer), {k: (f"{prefix}{v}", None) for k, v in keys.items()})]
    if cls is MaskedAffineAutoregressiveTransform:
        return [_masked_layer(t, where, prefix, "affine")]
    if cls is MaskedPiecewiseRationalQuadraticAutoregressiveTransform:
        return [_masked_layer(t, where, prefix, "spline")]
    if cls is AffineCouplingTransform:
        return [_coupling_layer(t, where, prefix, "affine")]
    if cls is PiecewiseRationalQuadraticCouplingTransform:
        return [_coupling_layer(t, where, prefix, "spline")]
    raise ValueError(f"from_nflows: unsupported nflows layer {cls.__module__}.{cls.__qualname__}; "
                     f"supported: CompositeTransform, ReversePermutation, RandomPermutation, "
                     f"LULinear, MaskedAffineAutoregressiveTransform, "
                     f"MaskedPiecewiseRationalQuadraticAutoregressiveTransform, "
                     f"AffineCouplingTransform, PiecewiseRationalQuadraticCouplingTransform")


def from_nflows(flow):
    """The refflow ``Flow`` computing the same density as an nflows ``Flow``.

    Parameters
    ----------
    flow : nflows.flows.base.Flow
        With base ``nflows.distributions.StandardNormal([dim])``, no embedding net, and
        layers among ``CompositeTransform``, ``ReversePermutation``, ``RandomPermutation``,
        ``LULinear``, ``MaskedAffineAutoregressiveTransform``,
        ``MaskedPiecewiseRationalQuadraticAutoregressiveTransform`` (``tails="linear"``),
        ``AffineCouplingTransform`` and ``PiecewiseRationalQuadraticCouplingTransform``
        (``tails="linear"``, ``ResidualNet`` conditioner), conditional or not.

    Returns
    -------
    refflow.Flow
        float64 copies of the weights (later changes to either model are not shared), with
        ``peer_parameters``: ``{refflow key: (nflows parameter name, rows)}``; refflow's
        array equals ``nflows_param[rows]`` (``rows`` None: the whole tensor).

    Raises
    ------
    ValueError
        Naming the nflows class and option that refflow cannot reproduce exactly.
    """
    import torch  # noqa: F401  (nflows needs it; fail here with ImportError if absent)
    from nflows.distributions.normal import StandardNormal as NfNormal
    from nflows.flows.base import Flow as NfFlow
    from ..bijectors.base import Chain
    from ..distributions import Flow, StandardNormal
    if not isinstance(flow, NfFlow):
        raise ValueError(f"from_nflows: expected an nflows.flows.base.Flow, got "
                         f"{type(flow).__name__}")
    if type(flow._embedding_net) is not torch.nn.Identity:
        refuse(_WHERE, type(flow).__name__, f"embedding_net {type(flow._embedding_net).__name__}")
    base = flow._distribution
    if type(base) is not NfNormal or len(base._shape) != 1:
        refuse(_WHERE, type(flow).__name__, f"base distribution {type(base).__name__} with "
                                            f"shape {tuple(getattr(base, '_shape', ()))} (only "
                                            f"StandardNormal of shape (dim,))")
    layers = _transform_layers(flow._transform, "_transform.")
    layers = layers[::-1]  # refflow's Chain lists layers in the sampling direction
    chain = Chain([layer for layer, _ in layers])
    model = Flow(StandardNormal(int(base._shape[0])), chain)
    model.peer_parameters = {f"bijector.layers.{i}.{k}": v
                             for i, (_, names) in enumerate(layers) for k, v in names.items()}
    return model
