r"""Import a Pyro ``TransformedDistribution`` as the equivalent refflow ``Flow``.

:func:`from_pyro` reads the base distribution and the transforms and builds the refflow
:class:`~refflow.Flow` that computes the same density and the same samples from the same base
noise, in float64. torch and Pyro are imported inside the function only.

Conventions bridged (Pyro 1.9, read from its sources):

=====================================  =====================================================
Pyro                                   refflow
=====================================  =====================================================
``TransformedDistribution(base, ts)``  ``Flow(base, Chain([...]))`` in the same order: each
samples ``ts[-1](...ts[0](z))``        Pyro transform's ``_call`` (base to data) is the
                                       refflow layer's ``forward``
``Normal(loc, scale).to_event(1)``     ``DiagNormal`` (``log_scale = log(scale)``)
``Permute(p)``: ``y = x[..., p]``      ``Permute(permutation=p)``
``Householder``: ``H_k ... H_1 x``,    ``Householder`` with ``vectors = u_unnormed`` (the
``u_unnormed`` normalised per row      reflection depends on the direction only)
``Planar`` (``u_hat`` with ``m(a) =    ``Planar``: ``u``, ``w``, ``b = bias`` (the same
-1 + softplus(a)``)                    constraint)
``Radial`` (``alpha = softplus(a')``,  ``Radial``: ``z0 = x0``, ``alpha = alpha_prime``,
``beta = -alpha + softplus(b')``)      ``beta = beta_prime``
``AffineAutoregressive`` (IAF:         ``Inverse(MaskedAffineAutoregressive(scale=
``y = exp(l) x + mu``, ``mu, l`` from  "pyro-clamp", scale_side="density"))``: Pyro's
``arn(x)``, ``l`` clamped to           ``_call`` is refflow's one-pass ``inverse``;
``[-5, 3]``)                           ``straight_through=True`` gives ``"pyro-clamp-st"``
                                       (Pyro's straight-through clamp gradient)
``AffineAutoregressive(stable=True)``  the same with ``scale="sigmoid-nofloor",
(``y = s x + (1 - s) mu``)             stable=True`` (``sigmoid_bias = 2``)
``AutoRegressiveNN``                   ``MADE`` with ``order = argsort(permutation)``,
(``permutation``, degrees by           hidden degrees from Pyro's ``sample_mask_indices``
``sample_mask_indices``; output        (masks checked equal); first-layer columns
``(slots, D)``; input ``[c, x]``)      ``[c, x]`` -> ``[x, c]``; output row ``m D + i`` ->
                                       ``i P + m``
``AffineCoupling`` (a ``DenseNN``,     ``AffineCoupling(mask = arange(D) >= split_dim,
``y2 = exp(l) x2 + mu``)               scale="pyro-clamp", scale_side="sampling")``; the
                                       ``DenseNN`` is refflow's MLP (``[mean | log_scale]``
                                       is refflow's ``[t | u]``)
``Spline`` (``order="linear"`` /       ``LinearRationalSpline`` / ``RationalQuadraticSpline
``"quadratic"``)                       (parameterization="pyro")``, Pyro's parameter names
``SplineCoupling``: ``y2 = upper(x2;   ``[Inverse(SplineCoupling(mask = arange(D) >=
x1)``, ``y1 = lower(x1)``              split_dim)), Inverse(constant spline of x1)]``: the
                                       upper spline sees the *input* ``x1``; the lower spline
                                       is a coupling whose conditioner is a constant (zero
                                       weights, ``hidden=()``, bias = Pyro's parameters);
                                       ``DenseNN`` outputs reordered parameter-major ->
                                       feature-major
``SplineAutoregressive``               ``Inverse(MaskedSplineAutoregressive(...))``, the
                                       kinds as for ``Spline``
``BatchNorm`` in eval mode:            ``BatchNorm(gamma="pyro")`` in eval mode with Pyro's
``y = (x - beta) / g sqrt(v + eps)     running statistics as its buffers: Pyro's ``_call`` is
+ m``, ``g = relu(gamma) + 1e-6``      refflow's ``forward``
their ``Conditional`` twins (affine    the same layers with ``context_dim``, from a
autoregressive and coupling, spline    ``ConditionalTransformedDistribution``
autoregressive)
=====================================  =====================================================

Pyro's ``Planar`` and ``Radial`` invert only from their cache; refflow inverts them exactly,
so the imported model evaluates ``log_prob`` anywhere.

Not imported (``NotImplementedError`` naming the class and the reason, or ``ValueError``
naming the class and the option). Four transforms whose log-det is not the log-det of the map
they compute, so that Pyro's density is not a density of its own map and no consistent refflow
bijector reproduces both within 1e-10:

- ``BlockAutoregressive``: its log-det uses ``0.5 log(|w|^2 + 1e-8)`` while its weights
  divide by ``|w| + 1e-8``, and its gate carries ``1e-8`` terms (refflow's ``"pyro"`` BNAF is
  the consistent map, equal to Pyro's only to ~1e-8);
- ``Sylvester``: its map is ``y = x + tanh(x S Q^T + b) Q R`` (``Q`` the product of its
  Householder reflections), whose Jacobian ``I + S Q^T diag(tanh') Q R`` has the determinant
  ``prod(1 + tanh' R_ii S_ii)`` only when ``Q`` commutes with ``diag(tanh')``; its log-det
  ``sum log1p(tanh' R_ii S_ii + 1e-8)`` ignores ``Q`` (and adds ``1e-8``);
- ``NeuralAutoregressive`` (and its conditional twin): the log-det takes ``log(A + 1e-8)``
  where the map's slopes are ``A = softplus(.)``, and its ELU inverse is ``log1p(y + 1e-8)``;
- ``Polynomial``: the log-det is ``log(p'(x) + 1e-8)`` where the map's derivative is
  ``p'(x)``.

Conditional transforms not imported: ``ConditionalPlanar``, ``ConditionalRadial``,
``ConditionalHouseholder``, ``ConditionalMatrixExponential`` (a ``DenseNN`` of the context
gives the layer's parameters per row: refflow has no such conditional layers),
``ConditionalSpline`` (the same, not written yet), ``ConditionalNeuralAutoregressive`` (its
log-det, above) and ``ConditionalGeneralizedChannelPermute`` (an image transform). Options
refused: ``BatchNorm`` in training mode (Pyro normalises with the batch's unbiased variance and
updates its statistics on every ``log_prob``); non-default clamps (``log_scale_min_clip``/
``max_clip`` other than ``-5``/``3``), ``sigmoid_bias`` other than 2, ``skip_connections=True``,
``count_bins < 2``, other nonlinearities than ReLU, Tanh, Softplus; bases other than
``Normal``, ``Uniform`` and ``StudentT`` (``.to_event(1)``; refflow's ``DiagNormal``,
``Uniform`` and ``StudentT(trainable_df=False)``). Nothing is approximated.

The returned model carries ``peer_gradients`` (``{"<transform index>.<parameter name>":
(refflow key, flat indices)}``) for :func:`refflow.interop.compare`.
"""

import numpy as np

from .common import (
    gather_layers, index_map, np64, refuse, require, unsupported, unused_map, vector,
    whole_map, with_peer_gradients,
)

__all__ = ["from_pyro"]

_WHERE = "from_pyro"
_PEER = "Pyro"
_CLAMP = (-5.0, 3.0)       # refflow's "pyro-clamp": Pyro's default log_scale_{min,max}_clip
_SIGMOID_BIAS = 2.0        # refflow's "sigmoid-nofloor": Pyro's default sigmoid_bias
_SPLINE_DEFAULTS = {"min_bin_width": 1e-3, "min_bin_height": 1e-3, "min_derivative": 1e-3}

#: Pyro transforms whose density is not the density of their own map (a log-det that is not
#: the log-det of the function computed), or whose import is not written; the reason is in the
#: message. refflow imports none of them: nothing is approximated.
_NOT_YET = {
    "BlockAutoregressive": "its log-det uses 0.5 log(|w|^2 + 1e-8) while its weights divide by "
                           "|w| + 1e-8: refflow's 'pyro' BNAF agrees with it only to ~1e-8",
    "Sylvester": "its log-det sum log1p(tanh'(a) R_ii S_ii + 1e-8) is not the log-det of its map "
                 "y = x + tanh(x S Q^T + b) Q R, whose Jacobian I + S Q^T diag(tanh') Q R has "
                 "another determinant unless Q commutes with diag(tanh'), and carries a 1e-8 "
                 "term: Pyro's Sylvester density is not a density of its map",
    "NeuralAutoregressive": "its log-det takes log(A + 1e-8) where the map has the slope A = "
                            "softplus(.) (and its ELU inverse log1p(y + 1e-8)): its density "
                            "differs from the density of its map by ~1e-8 per feature",
    "Polynomial": "its log-det is log(p'(x) + 1e-8) where the map's derivative is p'(x): its "
                  "density differs from the density of its map by ~1e-8 / p'(x) per feature",
    "ConditionalNeuralAutoregressive": "the log-det of NeuralAutoregressive (log(A + 1e-8))",
    "ConditionalPlanar": "a DenseNN hypernetwork of the context gives (b, u, w) per row: no "
                         "conditional refflow Planar",
    "ConditionalRadial": "a DenseNN hypernetwork of the context gives (x0, alpha', beta') per row: "
                         "no conditional refflow Radial",
    "ConditionalHouseholder": "a DenseNN hypernetwork of the context gives the reflections per "
                              "row: no conditional refflow Householder",
    "ConditionalMatrixExponential": "a DenseNN hypernetwork of the context gives the matrix per "
                                    "row: no conditional refflow MatrixExponential",
    "ConditionalSpline": "a DenseNN hypernetwork of the context gives the spline parameters per "
                         "row: not imported yet",
    "ConditionalGeneralizedChannelPermute": "an image-channel transform (refflow imports vector "
                                            "flows)",
    "GeneralizedChannelPermute": "an image-channel transform (refflow imports vector flows)",
}


def _parameter(t, name, dim, cls_name):
    """Pyro's parameter ``t.<name>`` as float64, exactly of shape ``(dim,)`` (its gradient is
    mapped entry for entry)."""
    return vector(_WHERE, getattr(t, name), dim, cls_name, f"parameter {name}", broadcast=False)


def _activation(f, where):
    import torch
    names = {torch.nn.ReLU: "relu", torch.nn.Tanh: "tanh", torch.nn.Softplus: "softplus"}
    name = names.get(type(f))
    if name is None or (name == "softplus" and (float(f.beta) != 1.0)):
        refuse(_WHERE, where, f"nonlinearity {type(f).__name__} (ReLU, Tanh, Softplus(beta=1))")
    return name


def _first_columns(n_in, n_context):
    """Columns of Pyro's first weight (``[context, x]``) in refflow's order ``[x, context]``."""
    return np.concatenate([np.arange(n_context, n_context + n_in), np.arange(n_context)])


def _linears(layers, cols, rows, prefix, key_prefix):
    """The weights ``w{k}``, biases ``b{k}`` of Pyro's masked / dense linear ``layers`` with the
    first layer's columns taken in the order ``cols`` and the last layer's rows in the order
    ``rows``, and ``{peer name: (refflow key, flat indices)}`` (the inverse permutations)."""
    arrays, grads = {}, {}
    for k, lin in enumerate(layers):
        w, b = np64(lin.weight), np64(lin.bias)
        w_idx, b_idx = index_map(w.shape), index_map(b.shape)
        if k == 0:
            w = w[:, cols]
            w_idx = index_map(w.shape)[:, np.argsort(cols)]
        if k == len(layers) - 1:
            w, b = w[rows], b[rows]
            w_idx, b_idx = index_map(w.shape)[np.argsort(rows)], b_idx[np.argsort(rows)]
        arrays[f"w{k}"], arrays[f"b{k}"] = w, b
        grads[f"{prefix}layers.{k}.weight"] = (f"{key_prefix}w{k}", w_idx)
        grads[f"{prefix}layers.{k}.bias"] = (f"{key_prefix}b{k}", b_idx)
    return arrays, grads


def _made(arn, slots, where, prefix):
    """refflow MADE for a Pyro ``(Conditional)AutoRegressiveNN`` whose outputs, per feature,
    are the ``slots`` values, and ``{peer name: (key, indices)}``.

    Pyro's output ``h`` is viewed ``(sum(param_dims), D)``: feature ``i``'s slot ``m`` is row
    ``m D + i``; refflow's MADE output ``(D, P)`` is row ``i P + m``: the rows are permuted.
    """
    from pyro.nn import AutoRegressiveNN, ConditionalAutoRegressiveNN
    from pyro.nn.auto_reg_nn import sample_mask_indices

    from ..nn.made import MADE
    from ..params import ParamDict
    if type(arn) not in (AutoRegressiveNN, ConditionalAutoRegressiveNN):
        refuse(_WHERE, where, f"autoregressive_nn of type {type(arn).__name__} (Pyro's "
                              f"AutoRegressiveNN / ConditionalAutoRegressiveNN)")
    if arn.skip_layer is not None:
        refuse(_WHERE, where, "skip_connections=True (refflow's MADE has no skip layer)")
    dim, n_context = int(arn.input_dim), int(arn.context_dim)
    if int(arn.output_multiplier) != slots:
        refuse(_WHERE, where, f"param_dims {list(arn.param_dims)} ({slots} values per feature "
                              f"expected)")
    if dim < 2:
        refuse(_WHERE, where, "input_dim=1")
    act = _activation(arn.f, where)
    perm = np64(arn.permutation).astype(np.int64)
    order = np.argsort(perm)                    # Pyro: var_index[perm] = arange(D)
    hidden = [int(h) for h in arn.hidden_dims]
    if n_context:
        degrees = [np64(sample_mask_indices(dim, h)).astype(np.int64) - 1 for h in hidden]
    else:
        degrees = [np64(sample_mask_indices(dim - 1, h)).astype(np.int64) for h in hidden]
    try:
        made = MADE(dim, tuple(hidden), slots, order=order, hidden_degrees=degrees,
                    activation=act, context_features=n_context)
    except ValueError as err:
        refuse(_WHERE, where, f"its masks ({err})")
    cols = _first_columns(dim, n_context)
    rows = (np.arange(slots)[None, :] * dim + np.arange(dim)[:, None]).ravel()
    layers = list(arn.layers)
    for k, (ours, lin) in enumerate(zip(made.masks, layers)):
        theirs = np64(lin.mask)
        if k == 0:
            theirs = theirs[:, cols]
        if k == len(layers) - 1:
            theirs = theirs[rows]
        if not np.array_equal(ours, theirs):
            raise ValueError(f"{_WHERE}: {where}: rebuilt MADE mask {k} differs from Pyro's")
    arrays, grads = _linears(layers, cols, rows, prefix, "made.")
    made.params = ParamDict(arrays)
    return made, grads


def _dense(net, n_in, slot_sizes, n_b, where, prefix, feature_major=True):
    """refflow MLP for a Pyro ``(Conditional)DenseNN`` whose output is parameter-major
    (``[slot group 0 of every feature | group 1 | ...]``, group ``g`` of feature ``j`` at
    ``offset_g + j size_g``), reordered feature-major (refflow's spline coupling's ``(n_b,
    P)`` view) unless ``feature_major`` is False (the affine coupling's ``[t | u]`` blocks are
    Pyro's ``[mean | log_scale]``)."""
    from pyro.nn import ConditionalDenseNN, DenseNN

    from ..nn.mlp import MLP
    if type(net) not in (DenseNN, ConditionalDenseNN):
        refuse(_WHERE, where, f"hypernet of type {type(net).__name__} (Pyro's DenseNN / "
                              f"ConditionalDenseNN)")
    n_context = int(net.context_dim)
    if int(net.input_dim) != n_in:
        refuse(_WHERE, where, f"a hypernet with {net.input_dim} inputs for {n_in}")
    if [int(d) for d in net.param_dims] != [n_b * s for s in slot_sizes]:
        refuse(_WHERE, where, f"param_dims {list(net.param_dims)} (expected "
                              f"{[n_b * s for s in slot_sizes]})")
    act = _activation(net.f, where)
    offset, per = 0, sum(slot_sizes)
    rows = np.empty(n_b * per, dtype=np.int64)
    col = 0
    for size in slot_sizes:
        for j in range(n_b):
            rows[j * per + col:j * per + col + size] = offset + j * size + np.arange(size)
        offset += n_b * size
        col += size
    if not feature_major:
        rows = np.arange(n_b * per)
    cols = _first_columns(n_in, n_context)
    layers = list(net.layers)
    hidden = tuple(int(lin.out_features) for lin in layers[:-1])
    mlp = MLP(n_in + n_context, n_b * per, hidden, activation=act, rng=0)
    arrays, grads = _linears(layers, cols, rows, prefix, "conditioner.")
    for key, value in arrays.items():
        if mlp.params[key].shape != value.shape:
            refuse(_WHERE, where, "a hypernet whose layer sizes refflow's MLP cannot hold")
        mlp.params[key] = value
    return mlp, grads, n_context


def _conditioned(t, context_dim):
    """A conditional transform's unconditional twin (for its options), and the network."""
    import torch
    inner = t.condition(torch.zeros(context_dim or 1))
    return inner


def _affine_scale(t, where, straight_through):
    """refflow's (scale map, stable) for a Pyro affine transform's options."""
    lo, hi = float(t.log_scale_min_clip), float(t.log_scale_max_clip)
    if getattr(t, "stable", False):
        if float(t.sigmoid_bias) != _SIGMOID_BIAS:
            refuse(_WHERE, where, f"sigmoid_bias={t.sigmoid_bias} (refflow's 'sigmoid-nofloor' has "
                                  f"{_SIGMOID_BIAS})")
        return "sigmoid-nofloor", True
    if (lo, hi) != _CLAMP:
        refuse(_WHERE, where, f"log_scale_min_clip={lo}, log_scale_max_clip={hi} (refflow's "
                              f"'pyro-clamp' clips to {list(_CLAMP)})")
    return ("pyro-clamp-st" if straight_through else "pyro-clamp"), False


def _affine_autoregressive(t, where, conditional, straight_through):
    from ..bijectors import Inverse, MaskedAffineAutoregressive
    net = t.nn if conditional else t.arn
    inner = _conditioned(t, int(net.context_dim)) if conditional else t
    scale, stable = _affine_scale(inner, where, straight_through)
    made, grads = _made(net, 2, where, "nn." if conditional else "arn.")
    layer = MaskedAffineAutoregressive(made.dim, hidden=tuple(made.hidden), scale=scale,
                                       scale_side="density", stable=stable, rng=0,
                                       context_dim=made.context_features or None,
                                       order=made.order, hidden_degrees=made.hidden_degree_list,
                                       activation=made.activation)
    layer.made = made
    return [Inverse(layer)], {n: (0, k, i) for n, (k, i) in grads.items()}


def _affine_coupling(t, dim, where, conditional, straight_through):
    from ..bijectors import AffineCoupling
    inner = _conditioned(t, int(t.nn.context_dim)) if conditional else t
    if int(inner.dim) != -1:
        refuse(_WHERE, where, f"dim={inner.dim} (refflow couples along the last axis)")
    scale, _ = _affine_scale(inner, where, straight_through)
    split = int(t.split_dim)
    n_b = dim - split
    mlp, grads, n_context = _dense(t.nn, split, [1, 1], n_b, where, "nn.", feature_major=False)
    layer = AffineCoupling(dim, mask=np.arange(dim) >= split, hidden=tuple(mlp.hidden),
                           activation=mlp.activation, scale=scale, scale_side="sampling",
                           context_dim=n_context or None, rng=0)
    layer.conditioner = mlp
    return [layer], {n: (0, k, i) for n, (k, i) in grads.items()}


def _spline_kind(t, where):
    order = t.order
    bins = int(t.count_bins) if hasattr(t, "count_bins") else None
    if order not in ("linear", "quadratic"):
        refuse(_WHERE, where, f"order={order!r}")
    if bins is not None and bins < 2:
        refuse(_WHERE, where, f"count_bins={bins}")
    kind = dict(spline="linear-rational") if order == "linear" else \
        dict(parameterization="pyro")
    return kind, order


def _slot_sizes(order, k):
    return [k, k, k - 1, k] if order == "linear" else [k, k, k - 1]


_SPLINE_NAMES = ("unnormalized_widths", "unnormalized_heights", "unnormalized_derivatives",
                 "unnormalized_lambdas")


def _spline(t, dim, where):
    from ..bijectors import LinearRationalSpline, RationalQuadraticSpline
    kind, order = _spline_kind(t, where)
    k = int(t.count_bins)
    if int(t.input_dim) != dim:
        refuse(_WHERE, where, f"input_dim={t.input_dim} for {dim} features")
    if order == "linear":
        layer = LinearRationalSpline(dim, n_bins=k, bound=float(t.bound))
    else:
        layer = RationalQuadraticSpline(dim, n_bins=k, bound=float(t.bound), **kind)
    grads = {}
    for name in _SPLINE_NAMES[:len(_slot_sizes(order, k))]:
        value = np64(getattr(t, name))
        if value.shape != layer.params[name].shape:
            refuse(_WHERE, where, f"{name} of shape {value.shape}")
        layer.params[name] = value
        grads[name] = (0, name, whole_map(value.shape))
    return [layer], grads


def _constant_spline(dim, mask, theta, options):
    """``Inverse(SplineCoupling)`` whose conditioner is the constant ``theta`` (zero weights,
    no hidden layer: ``0 x + b = b`` exactly): an unconditional spline of the ``mask``
    coordinates alone, with refflow's ``forward`` the spline (Pyro's direction)."""
    from ..bijectors import Inverse, SplineCoupling
    layer = SplineCoupling(dim, mask=mask, hidden=(), rng=0, **options)
    layer.params["conditioner.w0"] = np.zeros_like(layer.params["conditioner.w0"])
    layer.params["conditioner.b0"] = theta.ravel()
    return Inverse(layer)


def _spline_coupling(t, dim, where):
    from ..bijectors import Inverse, SplineCoupling
    upper, lower = t.upper_spline, t.lower_spline
    kind, order = _spline_kind(upper, where)
    k = int(upper.count_bins)
    split = int(t.split_dim)
    n_b = dim - split
    if int(upper.input_dim) != n_b:
        refuse(_WHERE, where, f"an upper spline over {upper.input_dim} features for {n_b}")
    options = dict(n_bins=k, bound=float(upper.bound), **kind)
    sizes = _slot_sizes(order, k)
    mlp, grads, _ = _dense(upper.nn, split, sizes, n_b, where, "upper_spline.nn.")
    coupling = SplineCoupling(dim, mask=np.arange(dim) >= split, hidden=tuple(mlp.hidden),
                              activation=mlp.activation, rng=0, **options)
    coupling.conditioner = mlp
    # Pyro's _call: the upper spline conditioned on the *input* x1, then the lower spline of
    # x1: refflow's sampling-direction Chain [coupling, lower]; both are Pyro's spline in
    # refflow's forward, hence the Inverse (refflow's spline layers' inverse is the spline)
    layers = [Inverse(coupling)]
    out = {n: (0, key, i) for n, (key, i) in grads.items()}
    if t.identity:  # Pyro keeps (and never uses) the lower spline's parameters: gradient 0
        for name in _SPLINE_NAMES[:len(sizes)]:
            out[f"lower_spline.{name}"] = (0, "conditioner.b0",
                                           unused_map(tuple(getattr(lower, name).shape)))
    else:
        if lower.order != order or int(lower.count_bins) != k or \
                float(lower.bound) != float(upper.bound):
            refuse(_WHERE, where, "lower and upper splines of different kinds")
        parts = [np64(getattr(lower, name)) for name in _SPLINE_NAMES[:len(sizes)]]
        theta = np.concatenate(parts, axis=1)
        per = sum(sizes)
        layers.append(_constant_spline(dim, np.arange(dim) < split, theta, options))
        idx = index_map((split, per))
        start = 0
        for name, size in zip(_SPLINE_NAMES, sizes):
            out[f"lower_spline.{name}"] = (1, "conditioner.b0", idx[:, start:start + size])
            start += size
    return layers, out


def _spline_autoregressive(t, dim, where, conditional):
    from ..bijectors import Inverse, MaskedSplineAutoregressive
    net = t.nn if conditional else t.arn
    inner = _conditioned(t, int(net.context_dim)) if conditional else t
    spline = inner.spline
    kind, order = _spline_kind(spline, where)
    k = int(spline.count_bins)
    sizes = _slot_sizes(order, k)
    made, grads = _made(net, sum(sizes), where, "nn." if conditional else "arn.")
    layer = MaskedSplineAutoregressive(made.dim, hidden=tuple(made.hidden), n_bins=k,
                                       bound=float(spline.bound), order=made.order,
                                       hidden_degrees=made.hidden_degree_list,
                                       activation=made.activation,
                                       context_dim=made.context_features or None, rng=0, **kind)
    layer.made = made
    return [Inverse(layer)], {n: (0, key, i) for n, (key, i) in grads.items()}


def _batchnorm(t, dim):
    """refflow ``BatchNorm(gamma="pyro")`` in eval mode: Pyro's ``_call`` ``y = (x - beta) /
    (relu(gamma) + 1e-6) sqrt(v + eps) + m`` is refflow's ``forward``."""
    from ..bijectors import BatchNorm
    where = "BatchNorm"
    if t.training:
        refuse(_WHERE, where, "training mode (Pyro normalises with the batch's unbiased variance "
                              "and updates its running statistics on every log_prob; call "
                              ".eval())")
    momentum = float(t.momentum)
    if not 0.0 < momentum <= 1.0:
        refuse(_WHERE, where, f"momentum={momentum} (refflow's BatchNorm takes (0, 1])")
    if not float(t.epsilon) > 0.0:
        refuse(_WHERE, where, f"epsilon={t.epsilon}")
    layer = BatchNorm(dim, momentum=momentum, eps=float(t.epsilon), gamma="pyro")
    layer.params["gamma"] = _parameter(t, "gamma", dim, where)
    layer.params["beta"] = _parameter(t, "beta", dim, where)
    layer.buffers["running_mean"][...] = _parameter(t, "moving_mean", dim, where)
    layer.buffers["running_var"][...] = _parameter(t, "moving_variance", dim, where)
    layer.eval()
    return [layer], {"gamma": (0, "gamma", whole_map((dim,))),
                     "beta": (0, "beta", whole_map((dim,)))}


def _convert(t, dim, straight_through=False):
    """``(layers, grads)``: the refflow layers whose ``forward`` is the Pyro transform's
    ``_call``, and ``{parameter name: (layer offset, refflow key, flat indices)}``."""
    import pyro.distributions.transforms as T
    from torch.distributions.transforms import ComposeTransform

    from ..bijectors import Householder, Permute, Planar, Radial
    if type(t).__name__ == "ConstantConditionalTransform":  # a plain transform in a conditional
        t = t.transform                                    # flow: Pyro's wrapper
    cls = type(t)
    where = cls.__name__
    if cls is ComposeTransform:
        out = []
        for part in t.parts:
            out += _convert(part, dim, straight_through)[0]
        return out, {}  # a ComposeTransform is no Module: its parameters have no names
    if cls is T.Permute:
        if t.dim != -1:
            refuse(_WHERE, "Permute", f"dim={t.dim} (refflow permutes the last axis)")
        p = np64(t.permutation).astype(np.int64)
        if p.shape != (dim,):
            refuse(_WHERE, "Permute", f"a permutation of length {p.shape[0]} for {dim} features")
        return [Permute(dim, permutation=p)], {}
    if cls is T.Householder:
        vectors = np64(t.u_unnormed)
        if vectors.ndim != 2 or vectors.shape[1] != dim:
            refuse(_WHERE, "Householder", f"u_unnormed of shape {vectors.shape}")
        layer = Householder(dim, n_reflections=vectors.shape[0], rng=0)
        layer.params["vectors"] = vectors
        return [layer], {"u_unnormed": (0, "vectors", whole_map(vectors.shape))}
    if cls is T.Planar:
        layer = Planar(dim, rng=0)
        layer.params["u"] = _parameter(t, "u", dim, "Planar")
        layer.params["w"] = _parameter(t, "w", dim, "Planar")
        layer.params["b"] = _parameter(t, "bias", 1, "Planar")
        return [layer], {"u": (0, "u", whole_map((dim,))), "w": (0, "w", whole_map((dim,))),
                         "bias": (0, "b", whole_map((1,)))}
    if cls is T.Radial:
        layer = Radial(dim, rng=0)
        layer.params["z0"] = _parameter(t, "x0", dim, "Radial")
        layer.params["alpha"] = _parameter(t, "alpha_prime", 1, "Radial")
        layer.params["beta"] = _parameter(t, "beta_prime", 1, "Radial")
        return [layer], {"x0": (0, "z0", whole_map((dim,))),
                         "alpha_prime": (0, "alpha", whole_map((1,))),
                         "beta_prime": (0, "beta", whole_map((1,)))}
    if cls is T.BatchNorm:
        return _batchnorm(t, dim)
    if cls is T.AffineAutoregressive:
        return _affine_autoregressive(t, where, False, straight_through)
    if cls is T.ConditionalAffineAutoregressive:
        return _affine_autoregressive(t, where, True, straight_through)
    if cls is T.AffineCoupling:
        return _affine_coupling(t, dim, where, False, straight_through)
    if cls is T.ConditionalAffineCoupling:
        return _affine_coupling(t, dim, where, True, straight_through)
    if cls is T.Spline:
        return _spline(t, dim, where)
    if cls is T.SplineCoupling:
        return _spline_coupling(t, dim, where)
    if cls is T.SplineAutoregressive:
        return _spline_autoregressive(t, dim, where, False)
    if cls is T.ConditionalSplineAutoregressive:
        return _spline_autoregressive(t, dim, where, True)
    unsupported(_WHERE, _PEER, t, _NOT_YET.get(type(t).__name__))


def _base(base):
    import torch.distributions as D

    from ..distributions import DiagNormal, StudentT, Uniform
    if type(base).__name__ == "ConstantConditionalDistribution":  # a conditional flow's base
        base = base.base_dist
    inner = base
    if isinstance(base, D.Independent):  # torch's, or Pyro's subclass (``.to_event(1)``)
        if base.reinterpreted_batch_ndims != 1:
            refuse(_WHERE, "Independent",
                   f"reinterpreted_batch_ndims={base.reinterpreted_batch_ndims}")
        inner = base.base_dist
    kind = type(inner).__name__
    if inner is base or kind not in ("Normal", "Uniform", "StudentT") or \
            not isinstance(inner, (D.Normal, D.Uniform, D.StudentT)):
        unsupported(_WHERE, _PEER, base, "as a base distribution; refflow imports Normal, "
                                         "Uniform and StudentT with .to_event(1)")
    names = {"Normal": ("loc", "scale"), "Uniform": ("low", "high"),
             "StudentT": ("df", "loc", "scale")}[kind]
    values = [np64(getattr(inner, n)) for n in names]
    if values[0].ndim != 1 or any(v.shape != values[0].shape for v in values):
        refuse(_WHERE, kind, f"parameters of shapes {[v.shape for v in values]} (one vector event, "
                             f"no batch)")
    dim = values[0].shape[0]
    if kind == "Uniform":
        return Uniform(values[0], values[1])
    if kind == "StudentT":
        out = StudentT(dim, df=values[0], trainable_df=False)
        values = values[1:]
    else:
        out = DiagNormal(dim)
    out.params["loc"] = values[0]
    out.params["log_scale"] = np.log(values[1])
    return out


def from_pyro(dist, base=None, *, straight_through=False):
    """The refflow :class:`~refflow.Flow` that computes exactly what a Pyro flow computes.

    Parameters
    ----------
    dist : pyro.distributions.(Conditional)TransformedDistribution or sequence of transforms
        A (conditional) transformed distribution (its ``base_dist`` and ``transforms``), or the
        list of transforms, with ``base`` given. Supported transforms: ``Permute``,
        ``Householder``, ``Planar``, ``Radial`` (and ``ComposeTransform`` of them),
        ``BatchNorm`` (in eval mode),
        ``AffineAutoregressive`` and ``ConditionalAffineAutoregressive`` (default clamp, or
        ``stable=True`` with ``sigmoid_bias=2``), ``AffineCoupling`` and
        ``ConditionalAffineCoupling`` (default clamp), ``Spline``, ``SplineCoupling``,
        ``SplineAutoregressive`` and ``ConditionalSplineAutoregressive`` (``order`` "linear"
        or "quadratic"), over ``Normal(loc, scale)``, ``Uniform(low, high)`` or
        ``StudentT(df, loc, scale)`` with ``.to_event(1)``.
    base : torch.distributions.Distribution, optional
        The base distribution, when ``dist`` is a list of transforms.
    straight_through : bool, default False
        Pyro clamps the affine layers' log-scales with a straight-through gradient
        (``clamp_preserve_gradients``): its autograd gradient is 1, not the clip's 0, where a
        log-scale is clamped. False imports the clamp as ``"pyro-clamp"`` (the derivative of
        the function); True as ``"pyro-clamp-st"`` (Pyro's training gradient, bit for bit in
        formula). Values are the same either way.

    Returns
    -------
    refflow.Flow
        float64 copies of the parameters. ``Flow.bijector.forward(z)`` equals the transforms
        applied to ``z`` in order, and ``Flow.log_prob`` equals Pyro's ``log_prob`` (which Pyro
        evaluates only at its own cached samples for ``Planar`` and ``Radial``). It carries
        ``peer_gradients`` (``{"<transform index>.<parameter name>": (refflow key, flat
        indices)}``) for :func:`refflow.interop.compare`.

    Raises
    ------
    TypeError
        Neither a ``TransformedDistribution`` nor a list of transforms with a base.
    NotImplementedError
        A Pyro transform refflow does not import (yet), naming its class and the reason.
    ValueError
        An option refflow cannot reproduce, naming the class and the option.
    """
    pd = require(_WHERE, ("pyro.distributions",), "torch and pyro-ppl", "pyro-ppl")[0]
    from torch.distributions import TransformedDistribution

    from .._validation import check_bool
    from ..bijectors import Chain
    from ..distributions import Flow
    straight_through = check_bool(straight_through, _WHERE, "straight_through")
    if isinstance(dist, (TransformedDistribution, pd.TransformedDistribution,
                         pd.ConditionalTransformedDistribution)):
        if base is not None:
            raise TypeError(f"{_WHERE}: base must be None when dist is a "
                            f"TransformedDistribution")
        base, transforms = dist.base_dist, list(dist.transforms)
    elif isinstance(dist, (list, tuple)) and base is not None:
        transforms = list(dist)
    else:
        raise TypeError(f"{_WHERE}: expected a pyro TransformedDistribution, or a list of "
                        f"transforms and a base, got {type(dist).__name__}")
    out_base = _base(base)
    layers, peer = gather_layers((f"{i}.", *_convert(t, out_base.dim, straight_through))
                                 for i, t in enumerate(transforms))
    contexts = {layer.context_dim for layer in layers
                if getattr(layer, "context_dim", None) is not None}
    if len(contexts) > 1:
        refuse(_WHERE, "ConditionalTransformedDistribution", f"context sizes {sorted(contexts)}")
    return with_peer_gradients(_WHERE, Flow(out_base, Chain(layers)), peer)
