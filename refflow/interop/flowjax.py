r"""Import a FlowJAX distribution as the equivalent refflow ``Flow`` (same weights, masks, maps).

:func:`from_flowjax` reads a ``flowjax.distributions.Transformed`` (what
``masked_autoregressive_flow``, ``coupling_flow``, ``block_neural_autoregressive_flow``,
``planar_flow`` and ``triangular_spline_flow`` return) layer by layer and builds the refflow
:class:`~refflow.Flow` that computes the same density and the same samples from the same base
noise, in float64. :func:`parameter_map` gives, per trainable FlowJAX leaf, the derivative of
the importer's parameter map, with which :func:`refflow.interop.compare` carries refflow's
gradients back to FlowJAX's leaves (to compare with ``jax.grad``). JAX, equinox, paramax and
FlowJAX are imported inside the functions only: ``import refflow`` never needs them.

Conventions bridged (FlowJAX 19.1, read from its sources):

==================================  ========================================================
FlowJAX                             refflow
==================================  ========================================================
``Transformed(base, b)``: samples   ``Flow(base, B)`` with ``B.forward`` = ``b.transform``
are ``b.transform(z)``              (each FlowJAX bijection ``b`` becomes a refflow ``B``
                                    whose ``forward`` is ``b.transform``)
``Invert(b)``                       ``Inverse(B)``
``Chain([b1, ..., bn])``,           ``Chain([B1, ..., Bn])`` (both apply the list in order;
``Scan`` over stacked layers        ``Scan``'s stacked leaves are sliced layer by layer)
``Permute(p)``: ``y = x[p]``        ``Permute(permutation=p)`` (``x = z[:, p]``)
``Flip``                            ``Reverse``
``MaskedAutoregressive``            ``Inverse`` of ``MaskedAffineAutoregressive(scale_side=
(``y = x s(x) + m(x)``)             "density")``: refflow's ``inverse`` is the density
                                    direction, where the conditioner reads its own input
``Coupling`` (first ``D // 2``      ``Inverse`` of ``AffineCoupling(scale_side="density")``
features untouched)                 with ``mask = arange(D) >= D // 2``
conditioner outputs *added* to the  the initial raw parameters are folded into the last bias
transformer's initial raw           (same function, same gradients for every weight)
parameters
MADE ranks: inputs ``0..D-1``,      explicit hidden degrees ``rank + 1``; the rebuilt masks
hidden ``arange(W) % (D - 1)`` (or  are checked equal to FlowJAX's
``arange(W) % D - 1`` with a
condition, rank -1)
``RationalQuadraticSpline(knots,    ``MaskedSplineAutoregressive`` / ``SplineCoupling`` with
interval)`` transformer             ``parameterization="flowjax"``, ``n_bins = knots + 1``,
                                    ``bound = interval``, FlowJAX's ``min_width`` and
                                    ``min_derivative`` (identity tails; refflow's ``u`` is the
                                    raw value minus FlowJAX's initial one, the difference
                                    folded into the last bias); the same ``(D, [x | y | d])``
                                    layout; an interval ``(a, b)`` is the spline on
                                    ``[-B, B]``, ``B = (b - a) / 2``, between two ``Affine``
                                    shifts by ``-+(a + b) / 2`` (the conditioner's first bias
                                    takes ``W c``, as it reads the shifted input)
``Affine`` transformer, scale       a refflow scale map ``l`` with ``exp(l(u)) = fn(u)``
``Parameterize(fn, raw)``           (checked numerically on a grid); FlowJAX's default
                                    ``softplus(u) + 0.01`` is ``scale="flowjax"`` (its
                                    initial raw value ``softplus^-1(0.99)`` built in)
``Vmap`` of ``RationalQuadratic``   elementwise ``RationalQuadraticSpline(parameterization=
``Spline``                          "flowjax")``, one row of parameters per coordinate
``TriangularAffine`` (optionally    ``TriangularAffine(lower, weight_normalization)``:
``WeightNormalization``)            ``matrix``, ``loc``, ``row_scale`` copied (its matrix
                                    checked against FlowJAX's)
``Planar`` (tanh, unconditional):   ``Planar(constraint="flowjax")``: FlowJAX's
``params = [w | u | b]``,           ``m(s) = -1 + log(1 + softplus(s))`` (Rezende & Mohamed's
``u`` constrained by ``m``          is ``-1 + softplus(s)``); ``forward`` = ``transform``
``LeakyTanh(M)``                    ``LeakyTanh(dim, M)`` with FlowJAX's stored line slope and
                                    intercept (float32 if FlowJAX built it without x64)
``Sandwich(inner, outer)``:         ``Chain([outer, inner, Inverse(outer)])`` (a parameter-free
``outer, inner, outer^-1``          ``outer`` only: it appears twice)
``BlockAutoregressiveNetwork``      ``Inverse(BlockNeuralAutoregressive(parameterization=
(``NumericalInverse``)              "flowjax", activation="leaky_tanh"))``, raw weights and
                                    weight-norm scales copied
``Normal(loc, scale)`` base         ``DiagNormal`` with ``log_scale = log(scale)``
``StudentT(df, loc, scale)`` base   ``StudentT`` with FlowJAX's raw ``df`` (``softplus``)
                                    and ``log_scale = log(scale)``
``Uniform(minval, maxval)`` base    ``Uniform(minval, maxval)``
==================================  ========================================================

Not imported (each raises naming the class and the option; nothing is approximated):

- ``Planar`` with a condition (its MLP conditioner) or ``negative_slope`` (leaky ReLU):
  ``ValueError``; refflow's :class:`~refflow.Planar` is unconditional tanh.
- the conditional ``triangular_spline_flow`` (``NotImplementedError``): its
  ``AdditiveCondition`` (``y = x + W c``) has no refflow twin.
- ``ValueError`` for an option refflow cannot reproduce (an activation refflow lacks, a mask
  that is not a MADE, a scale map no refflow map computes, ...); ``NotImplementedError`` for
  any other FlowJAX layer or base.
"""

import contextvars

import numpy as np

from .common import (
    as_flow, centered, chain, index_map, invert, refuse, require, to_numpy, unsupported,
)

__all__ = ["from_flowjax", "parameter_map"]

_WHERE = "from_flowjax"
_PEER = "FlowJAX"
#: Grid on which a FlowJAX scale function is compared with refflow's scale maps; agreement to
#: a few ulps (``_MAP_RTOL``) on 401 points from -8 to 8 identifies the map.
_MAP_GRID = np.linspace(-8.0, 8.0, 401)
_MAP_RTOL = 1e-13
#: FlowJAX's initial raw scale of its default affine transformer, softplus^-1(1 - 0.01):
#: refflow's "flowjax" scale map is ``softplus(u + c) + 0.01`` of ``u = raw - c``.
_FLOWJAX_SCALE_RAW = float(np.log(np.expm1(0.99)))


def _require(where=_WHERE):
    return require(where, ("jax", "equinox", "paramax", "flowjax"),
                   "jax, equinox, paramax and flowjax", "'jax[cpu]' flowjax")


# ------------------------------------------------------------- gradient map (compare)
#: While :func:`parameter_map` runs the importer: ``{"pieces": [...], "origin": {...},
#: "keep": [...]}``, the links from FlowJAX leaves to the refflow arrays built from them.
_LINKS = contextvars.ContextVar("refflow_flowjax_links", default=None)


def _link(peer, target, idx=None, factor=None):
    """Record, while :func:`parameter_map` runs, that the refflow parameter array ``target``
    depends on the FlowJAX leaf ``peer`` through ``d target.flat[idx] / d peer = factor``
    entrywise (``idx`` of ``peer``'s shape, or that shape plus trailing axes summed over for a
    leaf broadcast to several entries; ``-1`` for an entry that does not enter ``target``;
    ``factor`` None for 1). Default ``idx``: ``target`` is ``peer`` reshaped."""
    links = _LINKS.get()
    if links is None:
        return
    if idx is None:
        idx = index_map(target.shape).reshape(np.shape(peer))
    links["pieces"].append((peer, target, np.asarray(idx, dtype=np.int64), factor))


def _slice_layers(stacked, n):
    """The ``n`` layers of a ``Scan``'s stacked pytree (every array leaf has a layer axis)."""
    import equinox as eqx
    import jax
    links = _LINKS.get()

    def take(a, i):
        if not eqx.is_array(a):
            return a
        piece = a[i]
        if links is not None:  # a slice's gradient is row i of the stacked leaf's
            links["origin"][id(piece)] = (a, i)
            links["keep"].append(piece)
        return piece

    return [jax.tree_util.tree_map(lambda a, i=i: take(a, i), stacked) for i in range(n)]


def _raw_weight(lin):
    """``(leaf, mask)`` of a linear layer's weight: a plain array (mask None) or FlowJAX's
    masked ``Parameterize(jnp.where, mask, W, 0)``; ``(None, None)`` for another wrapper (no
    link recorded: compare then reports that leaf's gradient as missing)."""
    import equinox as eqx
    import jax.numpy as jnp
    from paramax import Parameterize
    w = lin.weight
    if eqx.is_array(w):
        return w, None
    if type(w) is Parameterize and w.fn is jnp.where and len(w.args) == 3 and not w.kwargs:
        return w.args[1], np.asarray(w.args[0], dtype=bool)
    return None, None


def _link_mlp(mlp, layer, prefix, rows=None, center=None):
    """Links of an MLP's weights and biases to ``layer.params[f"{prefix}w{k}"]`` / ``b{k}``
    (refflow stores ``W * M``); ``rows``: refflow's last layer is FlowJAX's ``[rows]``;
    ``center = (c, n)``: refflow's first bias is ``b_0 + (W_0 * M_0)[:, :n] c 1``."""
    if _LINKS.get() is None:
        return
    last = len(mlp.layers) - 1
    for k, lin in enumerate(mlp.layers):
        w_leaf, mask = _raw_weight(lin)
        w_t, b_t = layer.params[f"{prefix}w{k}"], layer.params[f"{prefix}b{k}"]
        back = None if (k != last or rows is None) else np.argsort(rows)
        sel = Ellipsis if back is None else back
        if w_leaf is not None:
            idx = index_map(w_t.shape, sel)
            if mask is not None:
                idx = np.where(mask, idx, -1)
            _link(w_leaf, w_t, idx)
            if k == 0 and center is not None and center[0] != 0.0:
                c, n = center
                used = np.ones(idx.shape, dtype=bool) if mask is None else mask.copy()
                used[:, n:] = False
                rows_b = np.broadcast_to(index_map(b_t.shape, sel)[:, None], idx.shape)
                _link(w_leaf, b_t, np.where(used, rows_b, -1), factor=c)
        _link(lin.bias, b_t, index_map(b_t.shape, sel))


def _n_layers(stacked):
    import equinox as eqx
    import jax
    sizes = {int(a.shape[0]) for a in jax.tree_util.tree_leaves(stacked) if eqx.is_array(a)}
    if len(sizes) != 1:
        refuse(_WHERE, "Scan", f"stacked leaves with different leading sizes {sorted(sizes)}")
    return sizes.pop()


def _activation(fn, where):
    import jax
    names = {jax.nn.relu: "relu", jax.numpy.tanh: "tanh", jax.nn.elu: "elu"}
    for f, name in names.items():
        if fn is f:
            return name
    refuse(_WHERE, where, f"nn_activation {getattr(fn, '__name__', fn)!r} (refflow imports "
                          f"jax.nn.relu, jax.nn.tanh and jax.nn.elu)")


def _mlp_layout(mlp, where):
    """``(weights, biases, activation)`` of an ``equinox.nn.MLP`` (weights as used: unwrapped)."""
    import paramax
    probe = np.linspace(-3.0, 3.0, 7)
    final = np.asarray(mlp.final_activation(probe))
    if final.shape != probe.shape or not np.array_equal(final, probe):
        refuse(_WHERE, where, "a final activation other than the identity")
    if getattr(mlp, "scan", False):
        refuse(_WHERE, where, "an MLP built with scan=True")
    act = _activation(mlp.activation, where) if mlp.depth > 0 else "relu"
    weights, biases = [], []
    for lin in mlp.layers:
        if not lin.use_bias or lin.bias is None:
            refuse(_WHERE, where, "a linear layer without bias")
        weights.append(to_numpy(paramax.unwrap(lin.weight)))
        biases.append(to_numpy(lin.bias))
    return weights, biases, act


def _transformer(bij, n_params, where):
    """``(options, rows)`` of a ``MaskedAutoregressive``/``Coupling`` ``Affine`` transformer.

    ``rows[j]`` is the index, within one feature's FlowJAX parameter vector, of refflow's
    parameter ``j`` (``[shift, u]``); ``options["init"]`` is FlowJAX's initial raw vector,
    added to the conditioner output; ``options["scale"]`` the refflow scale map's name.
    """
    import equinox as eqx
    import jax
    import paramax
    from flowjax.bijections import Affine, RationalQuadraticSpline
    from jax.flatten_util import ravel_pytree
    from paramax import Parameterize

    from ..bijectors.scale_maps import SCALE_MAPS
    # the transformer at a zero conditioner output: FlowJAX's initial raw parameters
    tr = bij.transformer_constructor(jax.numpy.zeros(n_params))
    init_params, _ = eqx.partition(tr, eqx.is_inexact_array,
                                   is_leaf=lambda leaf: isinstance(leaf, paramax.NonTrainable))
    flat, _ = ravel_pytree(init_params)
    init = to_numpy(flat)
    if init.shape != (n_params,):
        refuse(_WHERE, where, f"a transformer with {init.shape[0]} parameters for {n_params} "
                              f"conditioner outputs per feature")
    offsets, start = {}, 0
    for path, leaf in jax.tree_util.tree_flatten_with_path(init_params)[0]:
        offsets[jax.tree_util.keystr(path)] = (start, int(np.size(leaf)))
        start += int(np.size(leaf))
    if type(tr) is Affine:
        scale = tr.scale
        if not isinstance(scale, Parameterize) or len(scale.args) != 1 or scale.kwargs:
            refuse(_WHERE, "Affine", "a scale that is not Parameterize(fn, raw)")
        if set(offsets) != {".loc", ".scale.args[0]"}:
            refuse(_WHERE, "Affine", f"trainable leaves {sorted(offsets)}")
        fn_vals = np.asarray(scale.fn(jax.numpy.asarray(_MAP_GRID)), dtype=np.float64)
        found, offset = None, 0.0
        for name, smap in SCALE_MAPS.items():
            # refflow's "flowjax" map has FlowJAX's initial raw value c = softplus^-1(0.99)
            # built in (u = raw - c); the other maps take the raw value itself
            shift = _FLOWJAX_SCALE_RAW if name == "flowjax" else 0.0
            mine = np.exp(smap(_MAP_GRID - shift)[0])
            if np.all(np.abs(mine - fn_vals) <= _MAP_RTOL * np.abs(fn_vals)):
                found, offset = name, shift
                break
        if found is None:
            raise NotImplementedError(
                f"{_WHERE}: FlowJAX layer Affine (transformer of {where}) with scale "
                f"{getattr(scale.fn, '__name__', scale.fn)!r} is not supported (no refflow "
                f"scale map computes it yet; FlowJAX's default is softplus(u) + 0.01)")
        rows = [offsets[".loc"][0], offsets[".scale.args[0]"][0]]
        init = init.copy()
        init[rows[1]] -= offset
        return {"kind": "affine", "scale": found, "init": init}, rows
    if type(tr) is RationalQuadraticSpline:
        opts = _spline_options(tr, where)
        if set(offsets) != {".x_pos.arr", ".y_pos.arr", ".derivatives.args[0]"}:
            refuse(_WHERE, "RationalQuadraticSpline", f"trainable leaves {sorted(offsets)}")
        K = opts["n_bins"]
        if [offsets[k] for k in (".x_pos.arr", ".y_pos.arr", ".derivatives.args[0]")] != \
                [(0, K), (K, K), (2 * K, K + 1)]:
            refuse(_WHERE, "RationalQuadraticSpline", f"parameter layout {offsets}")
        # refflow's "flowjax" map takes u = raw - (FlowJAX's initial raw values): fold the
        # difference (positions: 0 - 0; derivatives: softplus^-1(1 - m_d) - refflow's
        # constant, zero up to rounding) into the last bias
        init = init - _spline_identity_raw(opts)
        return dict(opts, kind="spline", init=init), list(range(n_params))
    unsupported(_WHERE, _PEER, tr, f"transformer of {where}; refflow imports Affine and "
                                   f"RationalQuadraticSpline")


def _spline_identity_raw(opts):
    """FlowJAX's raw values at refflow's ``u = 0`` for the "flowjax" map: zero positions and
    ``log(expm1(1 - m_d))`` derivatives (refflow's own constant)."""
    K = opts["n_bins"]
    raw = np.zeros(3 * K + 1)
    raw[2 * K:] = np.log(np.expm1(1.0 - opts["min_derivative"]))
    return raw


def _spline_options(tr, where):
    """refflow options of a FlowJAX ``RationalQuadraticSpline`` (checked: the "flowjax" map,
    a symmetric interval, equal minimum widths, the derivative map ``softplus + m``)."""
    import jax
    from paramax import Parameterize
    lo, hi = (float(v) for v in tr.interval)
    if not lo < hi:
        refuse(_WHERE, "RationalQuadraticSpline", f"the interval ({lo}, {hi})")
    # an interval [lo, hi] is the spline on [-B, B] conjugated by the shift by its centre
    # (FlowJAX's knots lo + cumsum(widths) are centre + (-B + cumsum(widths)))
    center, half = (lo + hi) / 2.0, (hi - lo) / 2.0
    widths = {float(getattr(tr.x_pos, "min_width", np.nan)),
              float(getattr(tr.y_pos, "min_width", np.nan))}
    if len(widths) != 1 or not np.isfinite(min(widths)):
        refuse(_WHERE, "RationalQuadraticSpline", f"minimum widths {sorted(widths)} (option "
                                                  f"'min_width')")
    deriv = tr.derivatives
    if type(deriv) is not Parameterize or len(deriv.args) != 1 or deriv.kwargs:
        refuse(_WHERE, "RationalQuadraticSpline", "derivatives that are not Parameterize(fn, raw)")
    # fn(u) = softplus(u) + m: m is fn far below (softplus underflows to 0 there), checked
    m = float(deriv.fn(jax.numpy.asarray(-1e4)))
    grid = jax.numpy.asarray(_MAP_GRID)
    want = np.logaddexp(0.0, _MAP_GRID) + m
    if not np.all(np.abs(np.asarray(deriv.fn(grid)) - want) <= _MAP_RTOL * want):
        refuse(_WHERE, "RationalQuadraticSpline", "a derivative map other than softplus(u) + m "
                                                  "(option 'min_derivative')")
    width = widths.pop()
    return {"n_bins": int(tr.knots) + 1, "bound": half, "center": center,
            "min_bin_width": width, "min_bin_height": width, "min_derivative": m}


# ------------------------------------------------------------------------ layer converters
def _spline_layer_options(opts):
    return {"parameterization": "flowjax", "n_bins": opts["n_bins"], "bound": opts["bound"],
            "min_bin_width": opts["min_bin_width"], "min_bin_height": opts["min_bin_height"],
            "min_derivative": opts["min_derivative"]}


def _fold(biases, init, n_out_features):
    """Add FlowJAX's initial raw parameters (one feature's vector) to the last bias."""
    biases[-1] = biases[-1] + np.tile(init, n_out_features)


def _masked_autoregressive(bij, cond):
    """``MaskedAutoregressive`` -> the refflow layer ``B`` with ``B.forward = bij.transform``."""
    from ..bijectors import Inverse, MaskedAffineAutoregressive, MaskedSplineAutoregressive
    where = "MaskedAutoregressive"
    dim = int(bij.shape[0])
    weights, biases, act = _mlp_layout(bij.masked_autoregressive_mlp, where)
    opts, rows = _transformer(bij, weights[-1].shape[0] // dim, where)
    P = len(rows)
    _fold(biases, opts["init"], dim)
    hidden = tuple(w.shape[0] for w in weights[:-1])
    if not hidden:
        refuse(_WHERE, where, "nn_depth=0")
    ranks = _mlp_hidden_ranks(bij.masked_autoregressive_mlp, dim, cond)
    degrees = [r + 1 for r in ranks]
    common = dict(hidden=hidden, order="natural", hidden_degrees=degrees, activation=act,
                  context_dim=cond, rng=0)
    try:
        if opts["kind"] == "affine":
            layer = MaskedAffineAutoregressive(dim, scale=opts["scale"], scale_side="density",
                                               **common)
        else:
            layer = MaskedSplineAutoregressive(dim, **_spline_layer_options(opts), **common)
    except ValueError as exc:
        raise ValueError(f"{_WHERE}: {where}: its masks cannot be expressed as a refflow MADE "
                         f"({exc})") from None
    # refflow's output row i*P + j is FlowJAX's row i*P + rows[j] (feature-major in both)
    perm = (np.arange(dim)[:, None] * P + np.asarray(rows)[None, :]).reshape(-1)
    weights[-1], biases[-1] = weights[-1][perm], biases[-1][perm]
    masks = [np.asarray(lin.weight.args[0], dtype=bool) for lin in
             bij.masked_autoregressive_mlp.layers]
    masks[-1] = masks[-1][perm]
    for k, (mine, theirs) in enumerate(zip(layer.made.masks, masks)):
        if mine.shape != theirs.shape or not np.array_equal(mine.astype(bool), theirs):
            raise ValueError(f"{_WHERE}: {where}: rebuilt MADE mask {k} differs from FlowJAX's")
    center = opts.get("center", 0.0)
    if center != 0.0:  # the MADE reads x - centre: W (x - c + c) + b
        biases[0] = biases[0] + weights[0][:, :dim] @ np.full(dim, center)
    for k, (w, b) in enumerate(zip(weights, biases)):
        layer.params[f"made.w{k}"] = w
        layer.params[f"made.b{k}"] = b
    _link_mlp(bij.masked_autoregressive_mlp, layer, "made.", rows=perm, center=(center, dim))
    return centered(Inverse(layer), dim, center)


def _mlp_hidden_ranks(mlp, dim, cond):
    """Hidden ranks of FlowJAX's masked MLP, recovered from its first mask (and checked by the
    caller against every mask): rank = number of inputs the unit sees, minus one."""
    first = np.asarray(mlp.layers[0].weight.args[0], dtype=bool)
    seen = first[:, :dim].sum(axis=1).astype(np.int64)
    ranks = [seen - 1]
    for lin in mlp.layers[1:-1]:
        ranks.append(ranks[-1].copy())  # FlowJAX uses the same hidden ranks in every layer
        if lin.weight.args[0].shape[0] != ranks[-1].shape[0]:
            refuse(_WHERE, "MaskedAutoregressive", "hidden layers of different widths")
    if cond is None and (ranks[0] < 0).any():
        refuse(_WHERE, "MaskedAutoregressive", "hidden units that see no input")
    return ranks


def _coupling(bij, cond):
    """``Coupling`` -> the refflow layer ``B`` with ``B.forward = bij.transform``."""
    from ..bijectors import AffineCoupling, Inverse, SplineCoupling
    where = "Coupling"
    dim, n_a = int(bij.dim), int(bij.untransformed_dim)
    n_b = dim - n_a
    weights, biases, act = _mlp_layout(bij.conditioner, where)
    opts, rows = _transformer(bij, weights[-1].shape[0] // n_b, where)
    P = len(rows)
    _fold(biases, opts["init"], n_b)
    perm = None
    hidden = tuple(w.shape[0] for w in weights[:-1])
    mask = np.arange(dim) >= n_a  # refflow: True = transformed
    common = dict(mask=mask, hidden=hidden, activation=act, context_dim=cond, rng=0)
    if opts["kind"] == "affine":
        layer = AffineCoupling(dim, scale=opts["scale"], scale_side="density", **common)
        # refflow's output [t (n_b) | u (n_b)]; FlowJAX's (feature, [loc and scale raw])
        perm = np.concatenate([np.arange(n_b) * P + rows[0], np.arange(n_b) * P + rows[1]])
        if P != 2:
            refuse(_WHERE, where, f"an affine transformer with {P} parameters per feature")
        weights[-1], biases[-1] = weights[-1][perm], biases[-1][perm]
    else:  # the same (n_b, [w | h | d]) layout
        layer = SplineCoupling(dim, **_spline_layer_options(opts), **common)
    for k, (w, b) in enumerate(zip(weights, biases)):
        if layer.params[f"conditioner.w{k}"].shape != w.shape:
            refuse(_WHERE, where, f"conditioner layer {k} of shape {w.shape}")
        layer.params[f"conditioner.w{k}"] = w
        layer.params[f"conditioner.b{k}"] = b
    center = opts.get("center", 0.0)
    if center != 0.0:  # the conditioner reads x_a - centre: W (x_a - c + c) + b
        layer.params["conditioner.b0"] = biases[0] + weights[0][:, :n_a] @ np.full(n_a, center)
    _link_mlp(bij.conditioner, layer, "conditioner.", rows=perm, center=(center, n_a))
    return centered(Inverse(layer), dim, center)


def _bnaf(bij, cond):
    """``NumericalInverse(BlockAutoregressiveNetwork)`` -> ``Inverse(BlockNeuralAutoregressive)``
    (FlowJAX's ``transform`` is the closed-form network, refflow's ``inverse``)."""
    from flowjax.bijections.block_autoregressive_network import BlockAutoregressiveNetwork
    from paramax import Parameterize, WeightNormalization

    from ..bijectors import BlockNeuralAutoregressive, Inverse
    net = bij.bijection
    where = "BlockAutoregressiveNetwork"
    if type(net) is not BlockAutoregressiveNetwork:
        unsupported(_WHERE, _PEER, net, "inside NumericalInverse; refflow imports "
                                        "BlockAutoregressiveNetwork")
    act = net.activation
    if type(act).__name__ != "_LeakyTanh" or float(act.min_grad) != 0.01:
        refuse(_WHERE, where, f"activation {type(act).__name__} (refflow has FlowJAX's default "
                              f"tanh(x) + 0.01 x)")
    dim, depth, k = int(net.shape[0]), int(net.depth), int(net.block_dim)
    factors = () if depth == 0 else (k,) * depth
    layer = BlockNeuralAutoregressive(dim, factors, activation="leaky_tanh",
                                      parameterization="flowjax", context_dim=cond, rng=0)
    for i, (lin, _) in enumerate(net.layers):
        wn = lin.weight
        if type(wn) is not WeightNormalization or type(wn.weight) is not Parameterize \
                or type(wn.scale) is not Parameterize:
            refuse(_WHERE, where, "a linear layer without FlowJAX's masked weight normalisation")
        if not lin.use_bias:
            refuse(_WHERE, where, "a linear layer without bias")
        layer.params[f"w{i}"] = to_numpy(wn.weight.args[0])
        layer.params[f"g{i}"] = to_numpy(wn.scale.args[0]).reshape(-1)
        layer.params[f"b{i}"] = to_numpy(lin.bias)
        for leaf, key in ((wn.weight.args[0], f"w{i}"), (wn.scale.args[0], f"g{i}"),
                          (lin.bias, f"b{i}")):
            _link(leaf, layer.params[key])
    if cond is not None:
        layer.params["context_weight"] = to_numpy(net.cond_linear.weight)
        _link(net.cond_linear.weight, layer.params["context_weight"])
    return Inverse(layer)


def _convert(bij, cond):
    """The refflow bijector whose ``forward`` computes FlowJAX's ``bij.transform``."""
    import flowjax.bijections as fb

    from ..bijectors import Permute, Reverse
    cls = type(bij)
    if cls is fb.Invert:
        return invert(_convert(bij.bijection, cond))
    if cls is fb.Chain:
        return chain([_convert(b, cond) for b in bij.bijections])
    if cls is fb.Scan:
        layers = _slice_layers(bij.bijection, _n_layers(bij.bijection))
        return chain([_convert(b, cond) for b in layers])
    if cls is fb.Permute:
        perm = bij.permutation
        if len(perm) != 1:
            refuse(_WHERE, "Permute", "a multi-dimensional permutation")
        p = np.asarray(perm[0], dtype=np.int64)
        return Permute(p.shape[0], permutation=p)
    if cls is fb.Flip:
        if len(bij.shape) != 1:
            refuse(_WHERE, "Flip", f"shape {bij.shape}")
        return Reverse(int(bij.shape[0]))
    if cls is fb.MaskedAutoregressive:
        return _masked_autoregressive(bij, cond)
    if cls is fb.Coupling:
        return _coupling(bij, cond)
    if cls is fb.NumericalInverse:
        return _bnaf(bij, cond)
    if cls is fb.TriangularAffine:
        return _triangular_affine(bij)
    if cls is fb.Vmap:
        return _vmap_spline(bij)
    if cls is fb.Planar:
        return _planar(bij)
    if cls is fb.Sandwich:
        # transform = Chain([outer, inner, Invert(outer)]); the outer layer appears twice, so
        # only a parameter-free one (refflow would hold two untied copies)
        outer = _convert(bij.outer, cond)
        if len(outer.params):
            refuse(_WHERE, "Sandwich", f"an outer bijection with parameters "
                                       f"({type(bij.outer).__name__})")
        return chain([outer, _convert(bij.inner, cond), invert(_convert(bij.outer, cond))])
    if cls is fb.LeakyTanh:
        return _leaky_tanh(bij)
    if cls is fb.AdditiveCondition:
        unsupported(_WHERE, _PEER, bij, "a conditional shift y = x + f(condition) "
                                        "(triangular_spline_flow with cond_dim) has no refflow "
                                        "twin")
    unsupported(_WHERE, _PEER, bij)


def _leaky_tanh(bij):
    """``LeakyTanh(max_val, (dim,))`` -> refflow's ``LeakyTanh`` with FlowJAX's stored slope
    and intercept of the lines (computed in whatever precision FlowJAX had)."""
    from ..bijectors import LeakyTanh
    if len(bij.shape) != 1:
        refuse(_WHERE, "LeakyTanh", f"shape {bij.shape} (refflow imports a vector of coordinates)")
    return LeakyTanh(int(bij.shape[0]), max_val=float(bij.max_val),
                     linear_grad=float(bij.linear_grad), intercept=float(bij.intercept))


def _planar(bij):
    """``Planar`` (``y = x + u_hat tanh(w^T x + b)``, ``params = [w | u | b]``, FlowJAX's
    constraint ``m(s) = -1 + log(1 + softplus(s))``) -> ``Planar(constraint="flowjax")``,
    whose ``forward`` is the same map."""
    from ..bijectors import Planar
    if bij.cond_shape is not None or bij.params is None:
        refuse(_WHERE, "Planar", "a conditional planar layer (cond_dim, its MLP conditioner)")
    if bij.negative_slope is not None:
        refuse(_WHERE, "Planar", f"negative_slope={bij.negative_slope} (a leaky-ReLU activation; "
                                 f"refflow's Planar is tanh)")
    if len(bij.shape) != 1:
        refuse(_WHERE, "Planar", f"shape {bij.shape}")
    dim = int(bij.shape[0])
    raw = to_numpy(bij.params)
    if raw.shape != (2 * dim + 1,):
        refuse(_WHERE, "Planar", f"parameters of shape {raw.shape}; expected ({2 * dim + 1},)")
    layer = Planar(dim, constraint="flowjax", rng=0)
    none = np.full(2 * dim + 1, -1, dtype=np.int64)
    for key, start, stop in (("w", 0, dim), ("u", dim, 2 * dim), ("b", 2 * dim, 2 * dim + 1)):
        layer.params[key] = raw[start:stop]
        idx = none.copy()
        idx[start:stop] = np.arange(stop - start)
        _link(bij.params, layer.params[key], idx)
    return layer


def _triangular_affine(bij):
    """``TriangularAffine`` (``y = T x + loc``, softplus diagonal, optionally weight-normalised
    rows) -> refflow's ``TriangularAffine``, whose ``forward`` is the same map."""
    import paramax
    from paramax import Parameterize, WeightNormalization

    from ..bijectors import TriangularAffine
    where = "TriangularAffine"
    tri = bij.triangular
    wn = type(tri) is WeightNormalization
    inner = tri.weight if wn else tri
    if type(inner) is not Parameterize or len(inner.args) != 1 or inner.kwargs:
        refuse(_WHERE, where, "a triangular matrix that is not FlowJAX's "
                              "Parameterize(_to_triangular)")
    if wn and (type(tri.scale) is not Parameterize or len(tri.scale.args) != 1):
        refuse(_WHERE, where, "a weight normalisation scale that is not "
                              "Parameterize(softplus, raw)")
    arr = to_numpy(inner.args[0])
    dim = arr.shape[0]
    layer = TriangularAffine(dim, lower=bool(bij.lower), weight_normalization=wn)
    # the refflow layer's matrix, checked against FlowJAX's unwrapped one
    layer.params["matrix"] = arr
    layer.params["loc"] = to_numpy(bij.loc)
    _link(inner.args[0], layer.params["matrix"])
    _link(bij.loc, layer.params["loc"])
    if wn:
        layer.params["row_scale"] = to_numpy(tri.scale.args[0]).reshape(-1)
        _link(tri.scale.args[0], layer.params["row_scale"])
    theirs = to_numpy(paramax.unwrap(tri))
    if not np.allclose(layer.weight(), theirs, rtol=_MAP_RTOL * 100, atol=0.0):
        refuse(_WHERE, where, "a triangular parameterisation that differs from refflow's "
                              "(checked on the matrix)")
    return layer


def _vmap_spline(bij):
    """``Vmap`` of ``RationalQuadraticSpline`` (one spline per coordinate, its own raw
    parameters) -> refflow's elementwise ``RationalQuadraticSpline(parameterization=
    "flowjax")``, whose ``forward`` is FlowJAX's ``transform``."""
    import jax

    from ..bijectors import RationalQuadraticSpline as RQS
    from flowjax.bijections import RationalQuadraticSpline
    inner = bij.bijection
    if type(inner) is not RationalQuadraticSpline or len(bij.shape) != 1:
        unsupported(_WHERE, _PEER, bij, "a Vmap of anything but RationalQuadraticSpline over "
                                        "one axis")
    dim = int(bij.shape[0])
    first = jax.tree_util.tree_map(lambda a: a[0] if hasattr(a, "shape") and a.ndim else a,
                                   inner)
    opts = _spline_options(first, "Vmap")
    layer = RQS(dim, **_spline_layer_options(opts))
    K = opts["n_bins"]
    x_raw, y_raw = to_numpy(inner.x_pos.arr), to_numpy(inner.y_pos.arr)
    d_raw = to_numpy(inner.derivatives.args[0])
    if x_raw.shape != (dim, K) or y_raw.shape != (dim, K) or d_raw.shape != (dim, K + 1):
        refuse(_WHERE, "Vmap", f"spline parameters of shapes {x_raw.shape}, {y_raw.shape}, "
                               f"{d_raw.shape} (expected one spline per coordinate)")
    ident = _spline_identity_raw(opts)
    layer.params["unnormalized_widths"] = x_raw
    layer.params["unnormalized_heights"] = y_raw
    layer.params["unnormalized_derivatives"] = d_raw - ident[2 * K:]
    for leaf, key in ((inner.x_pos.arr, "unnormalized_widths"),
                      (inner.y_pos.arr, "unnormalized_heights"),
                      (inner.derivatives.args[0], "unnormalized_derivatives")):
        _link(leaf, layer.params[key])
    return centered(layer, dim, opts["center"])


def _broadcast_index(leaf, dim):
    """``idx`` of a leaf broadcast to ``(dim,)`` (a scalar leaf: all ``dim`` entries)."""
    if np.shape(leaf) == (dim,):
        return np.arange(dim)
    return np.broadcast_to(np.arange(dim), np.shape(leaf) + (dim,))


def _link_loc_scale(affine, base, dim):
    """Links of a FlowJAX loc-scale base's ``Affine(loc, Parameterize(softplus, raw))`` to
    refflow's ``loc`` and ``log_scale = log softplus(raw)`` (``d/draw = sigmoid(raw) /
    softplus(raw)``)."""
    from paramax import Parameterize
    if _LINKS.get() is None:
        return
    _link(affine.loc, base.params["loc"], _broadcast_index(affine.loc, dim))
    scale = affine.scale
    if type(scale) is Parameterize and len(scale.args) == 1:
        raw = to_numpy(scale.args[0])
        sp = np.logaddexp(0.0, raw)
        factor = np.exp(raw - sp) / sp  # sigmoid(raw) / softplus(raw)
        idx = _broadcast_index(scale.args[0], dim)
        _link(scale.args[0], base.params["log_scale"], idx,
              factor=np.broadcast_to(factor[..., None] if idx.ndim > raw.ndim else factor,
                                     idx.shape))


def _base(dist):
    """``(refflow base, dim)`` for FlowJAX's ``StandardNormal`` or ``Normal`` base."""
    import paramax
    from flowjax.distributions import Normal, StandardNormal, StudentT, Uniform

    from ..distributions import DiagNormal, StandardNormal as RStandardNormal
    from ..distributions import StudentT as RStudentT, Uniform as Uniform_
    if len(dist.shape) != 1 or dist.cond_shape is not None:
        refuse(_WHERE, type(dist).__name__, f"base of shape {dist.shape} / condition shape "
                                            f"{dist.cond_shape} (refflow imports a vector base)")
    dim = int(dist.shape[0])
    if type(dist) is StandardNormal:
        return RStandardNormal(dim), dim
    if type(dist) is Normal:
        loc, scale = to_numpy(paramax.unwrap(dist.loc)), to_numpy(paramax.unwrap(dist.scale))
        base = DiagNormal(dim)
        base.params["loc"] = np.broadcast_to(loc, (dim,)).copy()
        base.params["log_scale"] = np.log(np.broadcast_to(scale, (dim,)))
        _link_loc_scale(dist.bijection, base, dim)
        return base, dim
    if type(dist) is Uniform:
        lo, hi = to_numpy(dist.minval), to_numpy(dist.maxval)
        return Uniform_(np.broadcast_to(lo, (dim,)), np.broadcast_to(hi, (dim,))), dim
    if type(dist) is StudentT:
        from paramax import Parameterize
        df = dist.base_dist.df
        if type(df) is not Parameterize or len(df.args) != 1:
            refuse(_WHERE, "StudentT", "degrees of freedom not parameterised as softplus(raw)")
        base = RStudentT(dim)
        base.params["raw_df"] = np.broadcast_to(to_numpy(df.args[0]), (dim,)).copy()
        base.params["loc"] = np.broadcast_to(to_numpy(paramax.unwrap(dist.loc)), (dim,)).copy()
        base.params["log_scale"] = np.log(np.broadcast_to(to_numpy(paramax.unwrap(dist.scale)),
                                                          (dim,)))
        _link(df.args[0], base.params["raw_df"], _broadcast_index(df.args[0], dim))
        _link_loc_scale(dist.bijection, base, dim)
        return base, dim
    unsupported(_WHERE, _PEER, dist, "as a base distribution; refflow imports StandardNormal, "
                                     "Normal, Uniform and StudentT")


def from_flowjax(dist):
    """The refflow :class:`~refflow.Flow` that computes exactly what a FlowJAX flow computes.

    Parameters
    ----------
    dist : flowjax.distributions.Transformed
        A flow from ``masked_autoregressive_flow`` or ``coupling_flow`` with an ``Affine``
        transformer whose scale map refflow has (FlowJAX's default, ``exp``, ...) or a
        ``RationalQuadraticSpline(knots, interval)`` transformer,
        ``block_neural_autoregressive_flow`` (default activation), ``planar_flow`` (tanh,
        unconditional), ``triangular_spline_flow`` (unconditional), or
        any ``Transformed`` of a ``StandardNormal``/``Normal``/``StudentT``/``Uniform`` base
        made of ``Invert``, ``Chain``, ``Scan``, ``Permute``, ``Flip``, ``TriangularAffine``,
        ``Vmap``'d splines, ``Planar``, ``LeakyTanh``, ``Sandwich`` and those layers;
        conditional or not (``invert=True`` or ``False``).

    Returns
    -------
    refflow.Flow
        float64 copies of FlowJAX's raw parameters (masked weights as ``W * M``; the
        transformers' initial raw parameters folded into the conditioners' last biases).
        ``model.log_prob(x, context=c)`` equals ``dist.log_prob(x, c)`` and
        ``model.bijector.forward(z, context=c)[0]`` equals ``dist.bijection.transform(z, c)``.

    Raises
    ------
    TypeError
        ``dist`` is not a FlowJAX ``Transformed`` distribution.
    NotImplementedError
        A FlowJAX layer (or scale map) whose refflow twin does not exist yet, naming it.
    ValueError
        An option refflow cannot reproduce, naming the class and the option.

    Examples
    --------
    >>> import jax, jax.numpy as jnp, jax.random as jr                     # doctest: +SKIP
    >>> from flowjax.flows import block_neural_autoregressive_flow          # doctest: +SKIP
    >>> from flowjax.distributions import StandardNormal                    # doctest: +SKIP
    >>> from refflow.interop import from_flowjax                            # doctest: +SKIP
    >>> dist = block_neural_autoregressive_flow(jr.key(0), base_dist=StandardNormal((2,)))  # doctest: +SKIP
    >>> model = from_flowjax(dist)                                          # doctest: +SKIP
    """
    _require()
    return _from_flowjax(dist)


def _from_flowjax(dist):
    from flowjax.distributions import AbstractTransformed
    if not isinstance(dist, AbstractTransformed):
        raise TypeError(f"{_WHERE}: expected a flowjax.distributions.Transformed (what "
                        f"flowjax.flows builders return), got {type(dist).__name__}")
    cond = None if dist.cond_shape is None else int(dist.cond_shape[0])
    if dist.cond_shape is not None and len(dist.cond_shape) != 1:
        refuse(_WHERE, type(dist).__name__, f"condition shape {dist.cond_shape}")
    base, _ = _base(dist.base_dist)
    return as_flow(base, _convert(dist.bijection, cond))


def parameter_map(dist, where="parameter_map"):
    """``{FlowJAX leaf path: [(refflow key, idx, factor, layer), ...]}`` for
    ``from_flowjax(dist)``: how the gradient of a loss with respect to each trainable leaf of
    ``dist`` (FlowJAX's partition: ``eqx.is_inexact_array``, ``NonTrainable`` excluded; paths as
    ``jax.tree_util.keystr``) follows from refflow's gradients.

    Each piece adds ``factor * g[key].flat[idx]`` (``idx`` ``-1``: nothing; trailing axes of
    ``idx`` beyond the leaf's shape summed over) to the leaf's gradient, or to its row
    ``layer`` for a ``Scan``'s stacked leaf. The pieces are the derivatives of the importer's
    parameter maps: copies (masked entries ``-1``, the rows of an output layer permuted),
    the interval centre folded into a first bias (``factor = c``), ``log softplus`` of a base's
    scale (``factor = sigmoid / softplus``). A trainable leaf the model does not use maps to
    ``[]`` (its refflow gradient is 0).
    """
    jax, eqx, paramax, _ = _require(where)
    links = {"pieces": [], "origin": {}, "keep": []}
    token = _LINKS.set(links)
    try:
        model = _from_flowjax(dist)
    finally:
        _LINKS.reset(token)
    params, _ = eqx.partition(dist, eqx.is_inexact_array,
                              is_leaf=lambda leaf: isinstance(leaf, paramax.NonTrainable))
    paths = {id(leaf): jax.tree_util.keystr(path)
             for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]}
    keys = {id(arr): key for key, arr in model.params.items()}
    mapping = {path: [] for path in paths.values()}
    for peer, target, idx, factor in links["pieces"]:
        layer = None
        if id(peer) in links["origin"]:
            peer, layer = links["origin"][id(peer)]
        if id(peer) not in paths:  # a NonTrainable leaf: FlowJAX does not differentiate it
            continue
        if id(target) not in keys:
            raise RuntimeError(f"{where}: a linked refflow array is not among the model's "
                               f"parameters (importer bug)")
        mapping[paths[id(peer)]].append((keys[id(target)], idx, factor, layer))
    return mapping
