r"""Import a zuko flow as the equivalent refflow ``Flow`` (same weights, masks, maps).

:func:`from_zuko` builds the refflow :class:`~refflow.Flow` that computes exactly what a
``zuko.flows.MAF``, ``NSF``, ``NCSF``, ``RealNVP``/``NICE`` (affine or spline coupling), ``GF``,
``BPF``, ``NAF``, ``SOSPF``, or any ``zuko.flows.Flow`` made of the layers below
computes, conditional or not, with plain or residual (``residual=True``) masked networks,
with the same weights (as float64), MADE masks, output layout,
scale, spline and polynomial maps and direction; :func:`parameter_map` gives the
correspondence of parameter names that :func:`refflow.interop.compare` uses.

torch and zuko are imported inside the functions only: ``import refflow`` never needs them.

Conventions bridged (read from zuko's source):

==============================  ==========================================================
zuko                            refflow
==============================  ==========================================================
transforms map ``x -> z``,      ``Chain`` lists layers in the sampling direction, so zuko's
``transforms[0]`` touches ``x``  list is reversed; zuko's element-wise and autoregressive
                                layers are density-direction layers already (``z = f(x)``)
``MonotonicAffineTransform``    ``scale="softclip", scale_side="density"``:
(``z = x exp(l(u)) + shift``)   ``l(u) = u / (1 + |u / ln 1e-3|)``
``MonotonicRQSTransform``       ``parameterization="zuko"``, ``bound`` (5), ``min_derivative``
                                = zuko's ``slope``
``MNN`` (NAF): ``MonotonicMLP``  ``MaskedMonotonicAutoregressive(network_activation="elu")``:
per feature, ``|W|``,           the stacked weights copied raw (``network.w{l}`` ``(D, out,
``TwoWayELU``, input            in)``), the same ``[x_i, signal_i]`` input and two-way split
``[x, signal]``
``CircularRQSTransform``        ``MaskedSplineAutoregressive(parameterization="zuko",
(NCSF): shift ``(x mod 2 pi) -  circular=True, shift=True)``: the shift on the transformed
pi``, then the RQS on ``+-pi``   coordinate only, the MADE fed the raw angles (as zuko's)
``ShiftedSOSPTransform``        ``SumOfSquaresAutoregressive(degree=L, n_polynomials=K,
(SOSPF): ``(K, L + 1)`` + 1     slope, bound=10)``: zuko's ``(L + 1)``-node rule is exact for
                                the degree-``2L`` integrand, refflow's closed form the same
``BoundedBernsteinTransform``   ``BernsteinAutoregressive(degree=R + 4, tails="identity")``
(BPF), ``R`` raw values         (refflow's degree is the polynomial's); ``BernsteinTransform``
                                -> ``degree=R + 1, tails="linear"``; ``bound`` copied
``MaskedMLP`` masks             explicit MADE ``order`` (ranks of zuko's bucketed order) and
                                explicit hidden degrees, derived from zuko's mask buffers; the
                                rebuilt masks are checked equal to zuko's
``MaskedMLP(residual=True)``:   :class:`~refflow.nn.ResidualMaskedMLP` with the same widths,
masked linear, per width a      order and degrees (the layer's network replaced after
``Residual`` block              construction; such a layer cannot be saved, its configuration
``h + W1 f(W0 h + b0) + b1``,   being a plain MADE's): no activation outside the blocks, a
a masked linear between blocks  ``links.{s}`` layer only where zuko keeps one; zuko's masks
only where the width changes    are checked equal to the rebuilt ones
MADE output ``(D, total)``      the same feature-major layout (``[shift, u]``; ``[w | h | d]``;
                                ``[signal]``; ``[a (K, L + 1) | beta]``; ``[raw]``)
coupling ``mask`` True =        ``mask`` True = transformed, so refflow's mask is ``~mask``;
identity part; output           coupling output ``[t (n_b) | u (n_b)]``: the last layer's rows
``(n_b, [shift, u])``           are permuted
``ElementWiseTransform`` of     ``Gaussianization(parameterization="zuko",
``GaussianizationTransform``    weights="uniform", shrink=1e-6)``: zuko's
(``GF``)                        ``Phi^-1((1 - 1e-6) mean_k Phi(e^a x + b) + 1e-6 / 2)``;
                                ``phi`` copied as ``shift``/``scale``, or its ``hyper`` MLP
``RotationTransform(A)``:       ``Inverse(Rotation)`` with ``generator = A`` (refflow's
``z = exp(A - A^T) x``          ``Rotation.forward`` multiplies by ``exp(A - A^T)``)
``SoftclipTransform(bound)``    ``Inverse(Softclip(dim, bound))`` (refflow's ``Softclip.
(between NAF / UNAF / SOSPF     forward`` is zuko's ``x / (1 + |x| / B)``); no parameters
layers): ``x / (1 + |x| / B)``
``LULinearTransform(LU)``:      ``Inverse(LULinear(upper_diag="raw", diagonal="lower"))``:
``z = L U x``, ``L = tril(LU)``  ``LU``'s strictly lower, strictly upper and diagonal entries
``U = triu(LU, 1) + I``         (one zuko tensor, three refflow parameters; zero bias)
fixed ``DiagNormal(loc, s)``    ``StandardNormal`` (loc 0, scale 1) or ``DiagNormal`` with
base                            ``log_scale = log s``
fixed ``BoxUniform(lo, hi)``    ``Uniform(lo, hi)``
==============================  ==========================================================

Not imported (each raises naming the zuko class and the option; nothing is approximated):

- ``UMNN`` (``UNAF``): zuko's log-det is ``log g(x)``, not the log-derivative of its own
  32-node quadrature map; refflow's :class:`~refflow.UnconstrainedMonotonicAutoregressive`
  reports the map's exact log-det, so the densities differ by the rule's error.
- ``normalize=True`` hyper-networks (refflow's MADE is a plain masked MLP), a
  ``CircularRQSTransform`` in a coupling layer (refflow's circular ``SplineCoupling`` feeds its
  conditioner ``(sin, cos)`` of the angles, zuko's the raw angles), a slope other than 1e-3 for
  the affine map, unsupported activations, one-feature element-wise flows, a trainable
  ``SoftclipTransform`` bound, trainable or other bases (``GMM``, ...), batched
  ``RotationTransform``/``LULinearTransform`` matrices.
"""

import functools

import numpy as np


from .common import np64, require_torch, unsaveable

__all__ = ["from_zuko", "parameter_map"]

_SOFTCLIP_SLOPE = 1e-3  # refflow's "softclip" scale map is zuko's slope = 1e-3 exactly
_GF_SHRINK = 1e-6  # zuko's GaussianizationTransform: mean(erf(...)) * (1 - 1e-6)
_MONOTONIC_BOUND = 10.0  # zuko's MonotonicTransform bound: SOSPolynomialTransform's x / B


# ------------------------------------------------------------------------------- helpers
def _require_zuko(where):
    require_torch(where)
    try:
        import zuko
    except ImportError:  # pragma: no cover
        raise ImportError(f"{where}: needs zuko (pip install zuko)") from None
    return zuko


def _activation_name(modules, where):
    """refflow's name of the activation modules between the linear layers (all the same)."""
    import torch.nn as nn
    names = set()
    for m in modules:
        if type(m) is nn.ReLU:
            names.add("relu")
        elif type(m) is nn.Tanh:
            names.add("tanh")
        elif type(m) is nn.ELU and float(m.alpha) == 1.0:
            names.add("elu")
        elif type(m) is nn.GELU and m.approximate == "none":
            names.add("gelu")
        else:
            raise ValueError(f"{where}: unsupported activation {type(m).__name__} (option "
                             f"'activation'); "
                             f"refflow has exactly ReLU, Tanh, ELU(alpha=1) and "
                             f"GELU(approximate='none')")
    if len(names) > 1:
        raise ValueError(f"{where}: mixed activations {sorted(names)} (option 'activation')")
    return names.pop() if names else "relu"


def _split_sequential(seq, linear_types, where):
    """``(linears, activation)`` of an ``nn.Sequential`` alternating linear and activation."""
    modules = list(seq)
    if any(type(m).__name__ == "Residual" for m in modules):
        raise ValueError(f"{where}: a residual hyper-network (option 'residual=True') is "
                         f"imported only as the MaskedMLP of a MaskedAutoregressiveTransform; "
                         f"refflow's plain networks of the other layers have no residual "
                         f"blocks")
    linears, acts = modules[0::2], modules[1::2]
    # anything but torch's own activation modules between the linears (zuko's Residual
    # blocks, LayerNorm) is a layout refflow's networks do not have
    plain = all(type(m).__module__ == "torch.nn.modules.activation" for m in acts)
    if len(modules) % 2 != 1 or not plain or not all(isinstance(m, linear_types) for m in linears):
        names = [type(m).__name__ for m in modules]
        raise ValueError(f"{where}: unsupported hyper-network layout {names} (options "
                         f"'residual' / 'normalize'); refflow imports plain "
                         f"Linear-activation-...-Linear stacks")
    for lin in linears:
        if lin.bias is None:
            raise ValueError(f"{where}: a linear layer without bias (option 'bias=False') is "
                             f"not supported")
    return linears, _activation_name(acts, where)


def _univariate(lazy, where):
    """``(kind, options)`` from a zuko layer's ``univariate`` constructor."""
    from zuko.flows.spline import CircularRQSTransform
    from zuko.transforms import (BernsteinTransform, BoundedBernsteinTransform,
                                 MonotonicAffineTransform, MonotonicRQSTransform)
    uni, kwargs = lazy.univariate, {}
    if isinstance(uni, functools.partial):
        if uni.args:
            raise ValueError(f"{where}: univariate partial with positional arguments is not "
                             f"supported (option 'univariate')")
        uni, kwargs = uni.func, dict(uni.keywords)
    shapes = [tuple(s) for s in lazy.shapes]
    if uni is MonotonicAffineTransform:
        slope = kwargs.pop("slope", 1e-3)
        if kwargs or slope != _SOFTCLIP_SLOPE:
            raise ValueError(f"{where}: MonotonicAffineTransform with options "
                             f"{dict(kwargs, slope=slope)} (option 'slope'): refflow's "
                             f"'softclip' scale map is zuko's slope = 1e-3 only")
        if shapes != [(), ()]:
            raise ValueError(f"{where}: MonotonicAffineTransform with shapes {shapes} "
                             f"(option 'shapes'); expected ((), ())")
        return "affine", {}
    if uni is MonotonicRQSTransform:
        bound = float(kwargs.pop("bound", 5.0))
        slope = float(kwargs.pop("slope", 1e-3))
        if kwargs:
            raise ValueError(f"{where}: MonotonicRQSTransform options {sorted(kwargs)} are not "
                             f"supported (option 'univariate')")
        if len(shapes) != 3 or len(shapes[0]) != 1 or shapes[1] != shapes[0] \
                or shapes[2] != (shapes[0][0] - 1,):
            raise ValueError(f"{where}: MonotonicRQSTransform with shapes {shapes} (option "
                             f"'shapes'); expected [(K,), (K,), (K - 1,)]")
        return "spline", {"n_bins": shapes[0][0], "bound": bound, "min_derivative": slope}
    if type(uni).__name__ == "MNN" and isinstance(uni, _nn_module()):
        return _mnn_options(uni, shapes, where)
    if type(uni).__name__ == "UMNN" and isinstance(uni, _nn_module()):
        # zuko's UnconstrainedMonotonicTransform reports log g(x) as its log-det, not the
        # derivative of its own map (the n-node rule); refflow's UMNN reports the latter.
        raise ValueError(f"{where}: univariate UMNN (zuko's UNAF) is not supported: zuko's "
                         f"log-det is log g(x), not the log-derivative of its quadrature map, "
                         f"so no exact refflow twin exists (refflow's "
                         f"UnconstrainedMonotonicAutoregressive reports the map's own log-det)")
    if getattr(uni, "__name__", None) == "ShiftedSOSPTransform":
        slope = float(kwargs.pop("slope", 1e-3))
        if kwargs:
            raise ValueError(f"{where}: ShiftedSOSPTransform options {sorted(kwargs)} are not "
                             f"supported (option 'univariate')")
        if len(shapes) != 2 or len(shapes[0]) != 2 or shapes[1] != ():
            raise ValueError(f"{where}: ShiftedSOSPTransform with shapes {shapes} (option "
                             f"'shapes'); expected [(K, L + 1), ()]")
        return "sos", {"n_polynomials": shapes[0][0], "degree": shapes[0][1] - 1,
                       "slope": slope, "bound": _MONOTONIC_BOUND}
    if uni is BoundedBernsteinTransform or uni is BernsteinTransform:
        bound = float(kwargs.pop("bound", 5.0))
        if kwargs:
            raise ValueError(f"{where}: {uni.__name__} options {sorted(kwargs)} are not "
                             f"supported (option 'univariate')")
        if len(shapes) != 1 or len(shapes[0]) != 1:
            raise ValueError(f"{where}: {uni.__name__} with shapes {shapes} (option 'shapes'); "
                             f"expected [(M,)]")
        identity = uni is BoundedBernsteinTransform
        # refflow's degree is the polynomial's: raw + 4 (identity tails), raw + 1 (linear)
        degree = shapes[0][0] + (4 if identity else 1)
        return "bernstein", {"degree": degree, "bound": bound,
                             "tails": "identity" if identity else "linear"}
    if uni is CircularRQSTransform:
        # zuko: CircularShiftTransform(pi) then MonotonicRQSTransform(bound=pi, slope) on the
        # transformed coordinate; the MADE reads the unshifted angles
        slope = float(kwargs.pop("slope", 1e-3))
        if kwargs:
            raise ValueError(f"{where}: CircularRQSTransform options {sorted(kwargs)} are not "
                             f"supported (option 'univariate')")
        if len(shapes) != 3 or len(shapes[0]) != 1 or shapes[1] != shapes[0] \
                or shapes[2] != (shapes[0][0] - 1,):
            raise ValueError(f"{where}: CircularRQSTransform with shapes {shapes} (option "
                             f"'shapes'); expected [(K,), (K,), (K - 1,)]")
        return "circular", {"n_bins": shapes[0][0], "min_derivative": slope}
    name = getattr(uni, "__name__", type(uni).__name__)
    raise ValueError(f"{where}: univariate transformation {name} is not supported (option "
                     f"'univariate'); refflow imports MonotonicAffineTransform, "
                     f"MonotonicRQSTransform, CircularRQSTransform (NCSF), MNN (NAF), "
                     f"ShiftedSOSPTransform (SOSPF) and BoundedBernsteinTransform / "
                     f"BernsteinTransform (BPF)")


def _nn_module():
    import torch.nn as nn
    return nn.Module


def _mnn_options(mnn, shapes, where):
    """``("monotonic", options)`` of zuko's ``MNN`` (NAF): its ``MonotonicMLP`` per feature."""
    from zuko.nn import MonotonicLinear, TwoWayELU
    modules = list(mnn.network)
    linears, acts = modules[0::2], modules[1::2]
    if len(modules) % 2 != 1 or not all(type(m) is MonotonicLinear for m in linears) \
            or not all(type(m) is TwoWayELU and float(m.alpha) == 1.0 for m in acts):
        raise ValueError(f"{where}: MNN network layout {[type(m).__name__ for m in modules]} "
                         f"(option 'network'); refflow imports MonotonicLinear and "
                         f"TwoWayELU(alpha=1) stacks")
    if any(lin.bias is None or lin.weight.dim() != 3 for lin in linears):
        raise ValueError(f"{where}: MNN without bias or stack (option 'network') is not "
                         f"supported")
    signal = int(linears[0].weight.shape[-1]) - 1
    if shapes != [(signal,)] or int(linears[-1].weight.shape[-2]) != 1:
        raise ValueError(f"{where}: MNN with shapes {shapes} and signal {signal} (option "
                         f"'shapes'); expected [(signal,)]")
    network = tuple(int(lin.weight.shape[-2]) for lin in linears[:-1])
    return "monotonic", {"signal": signal, "network": network, "linears": linears}


# ------------------------------------------------------------------ zuko layers -> specs
def _ranked_order(lazy, dim, where):
    """refflow's order (a permutation) for zuko's, possibly bucketed (``passes``), order."""
    if lazy.order is None:
        raise ValueError(f"{where}: a MaskedAutoregressiveTransform built from an explicit "
                         f"'adjacency' is not supported (option 'adjacency')")
    bucket = lazy.order.detach().cpu().numpy().astype(np.int64)
    # refflow needs a permutation: rank zuko's (possibly bucketed, tied) order, ties by index.
    order = np.empty(dim, dtype=np.int64)
    order[np.argsort(bucket, kind="stable")] = np.arange(dim)
    return order


def _first_degrees(mask, dim, context, where):
    """Degrees of the units of zuko's first masked layer: the length of the prefix of the order
    each unit sees (zuko's units are labelled by nested adjacency rows)."""
    if context and not mask[:, dim:].all():
        raise ValueError(f"{where}: hidden units that do not see the whole context "
                         f"(option 'adjacency') cannot be expressed in refflow")
    return mask[:, :dim].sum(axis=1).astype(np.int64)


def _next_degrees(mask, prev):
    """Degrees of a masked layer's units from its mask and its inputs' degrees (-1 for a unit
    with no input, which no refflow degree rule allows: the mask check then refuses)."""
    return np.array([prev[row].max() if row.any() else -1 for row in mask], dtype=np.int64)


def _made_structure(lazy, dim, context, where):
    """Order and explicit hidden degrees reproducing a zuko ``MaskedMLP``'s masks exactly."""
    from zuko.nn import MaskedLinear
    linears, activation = _split_sequential(lazy.hyper, (MaskedLinear,), where)
    masks = [np64(lin.mask).astype(bool) for lin in linears]
    order = _ranked_order(lazy, dim, where)
    degrees, prev = [], order + 1  # input degrees
    for k, m in enumerate(masks[:-1]):
        d = _first_degrees(m, dim, context, where) if k == 0 else _next_degrees(m, prev)
        degrees.append(d)
        prev = d
    return order, degrees, activation, linears, masks


def _is_residual(hyper):
    """Whether a zuko ``MaskedMLP`` was built with ``residual=True`` (has ``Residual`` blocks)."""
    from zuko.nn import Residual
    return any(isinstance(m, Residual) for m in hyper)


def _residual_structure(lazy, dim, context, where):
    """The :class:`~refflow.nn.ResidualMaskedMLP` twin of a zuko ``MaskedMLP(residual=True)``.

    zuko's module list is ``[MaskedLinear, Residual, ([MaskedLinear,] Residual)*,
    MaskedLinear]``: the input layer, one ``Residual(MaskedLinear, activation, MaskedLinear)``
    per hidden width, a masked linear between two blocks only where the width changes (zuko
    pops it otherwise), and the output layer; no activation outside the blocks. Returns
    ``(order, hidden, degrees, activation, layers)``, ``layers`` a list of ``(refflow weight key,
    refflow bias key, zuko name prefix, MaskedLinear)`` in refflow's key order.
    """
    from zuko.nn import MaskedLinear, Residual
    modules = list(lazy.hyper)
    names = [type(m).__name__ for m in modules]

    def refuse(why):
        raise ValueError(f"{where}: unsupported residual hyper-network layout {names} (option "
                         f"'residual'): {why}")

    if len(modules) < 3 or type(modules[0]) is not MaskedLinear \
            or type(modules[-1]) is not MaskedLinear:
        refuse("expected a MaskedLinear first and last")
    order = _ranked_order(lazy, dim, where)
    first = modules[0]
    layers = [("w0", "b0", "hyper.0", first)]
    hidden, degrees, acts = [], [], []
    prev = _first_degrees(np64(first.mask).astype(bool), dim, context, where)
    width = int(first.weight.shape[0])
    idx, s = 1, 0
    while idx < len(modules) - 1:
        m = modules[idx]
        if type(m) is MaskedLinear:  # a link between two blocks of different widths
            new = int(m.weight.shape[0])
            if s == 0 or idx + 1 >= len(modules) - 1:
                refuse(f"a MaskedLinear at position {idx} where zuko's MaskedMLP has none")
            if new == width:
                refuse(f"a MaskedLinear between two blocks of equal width {width} (position "
                       f"{idx}; zuko's MaskedMLP has none there)")
            layers.append((f"links.{s}.w", f"links.{s}.b", f"hyper.{idx}", m))
            prev = _next_degrees(np64(m.mask).astype(bool), prev)
            width = new
            idx += 1
            m = modules[idx]
        parts = list(m) if type(m) is Residual else []
        if len(parts) != 3 or type(parts[0]) is not MaskedLinear \
                or type(parts[2]) is not MaskedLinear:
            refuse(f"position {idx} is not a Residual(MaskedLinear, activation, MaskedLinear)")
        if any(tuple(p.weight.shape) != (width, width) for p in (parts[0], parts[2])):
            refuse(f"Residual block {s} is not square of the width {width} before it (a "
                   f"change of width needs a MaskedLinear between the blocks)")
        acts.append(parts[1])
        for i, p in enumerate((parts[0], parts[2])):
            layers.append((f"blocks.{s}.w{i}", f"blocks.{s}.b{i}", f"hyper.{idx}.{2 * i}", p))
        hidden.append(width)
        degrees.append(prev)
        idx += 1
        s += 1
    if not hidden:
        refuse("no Residual block")
    layers.append(("w_out", "b_out", f"hyper.{len(modules) - 1}", modules[-1]))
    for _, _, zname, lin in layers:
        if lin.bias is None:
            raise ValueError(f"{where}: a linear layer without bias ({zname}) is not supported")
    activation = _activation_name(acts, where)
    return order, tuple(hidden), degrees, activation, layers


def _check_masks(made, masks, where):
    if len(made.masks) != len(masks):
        raise ValueError(f"{where}: zuko's MaskedMLP has {len(masks)} masked layers, the rebuilt "
                         f"network {len(made.masks)}; refusing rather than approximating")
    for k, (mine, theirs) in enumerate(zip(made.masks, masks)):
        if mine.shape != theirs.shape or not np.array_equal(mine.astype(bool), theirs):
            raise ValueError(f"{where}: zuko's MaskedMLP mask {k} cannot be expressed as a MADE "
                             f"with an order and hidden degrees (option 'order' / "
                             f"'adjacency' / 'passes'); refusing rather than approximating")


def _convert_autoregressive(lazy, index, dim, context):
    """One ``MaskedAutoregressiveTransform`` -> (refflow layer, {zuko name: (key, rows)})."""
    from .. import bijectors as B
    from ..nn import ResidualMaskedMLP
    where = f"from_zuko: transforms[{index}] (MaskedAutoregressiveTransform)"
    kind, opts = _univariate(lazy, where)
    residual = _is_residual(lazy.hyper)
    if residual:
        order, hidden, degrees, activation, linears = _residual_structure(lazy, dim, context,
                                                                         where)
        # the layer's MADE is a placeholder (one masked layer), replaced by the residual twin
        common = dict(hidden=(), order=order, activation=activation,
                      context_dim=context or None, rng=0)
    else:
        order, degrees, activation, linears, masks = _made_structure(lazy, dim, context, where)
        hidden = tuple(int(lin.weight.shape[0]) for lin in linears[:-1])
        common = dict(hidden=hidden, order=order, activation=activation,
                      context_dim=context or None, rng=0, hidden_degrees=degrees)
    linears_mnn = opts.pop("linears", None)
    try:
        if kind == "affine":
            layer = B.MaskedAffineAutoregressive(dim, scale="softclip", scale_side="density",
                                                 **common)
        elif kind == "spline":
            layer = B.MaskedSplineAutoregressive(dim, parameterization="zuko", **opts, **common)
        elif kind == "circular":
            layer = B.MaskedSplineAutoregressive(dim, parameterization="zuko", circular=True,
                                                 shift=True, **opts, **common)
        elif kind == "monotonic":
            layer = B.MaskedMonotonicAutoregressive(dim, network_activation="elu", **opts,
                                                    **common)
        elif kind == "sos":
            layer = B.SumOfSquaresAutoregressive(dim, **opts, **common)
        else:
            layer = B.BernsteinAutoregressive(dim, **opts, **common)
        if residual:
            layer.made = ResidualMaskedMLP(dim, hidden, layer.made.n_params, order=order,
                                           hidden_degrees=degrees, activation=activation,
                                           context_features=context, rng=0)
    except ValueError as exc:
        raise ValueError(f"{where}: its masks cannot be expressed as a refflow MADE ({exc})") \
            from None
    names = {}
    if residual:
        # its configuration (a plain MADE's) does not describe the residual network: refuse
        # to save it rather than write a file that rebuilds another model
        layer = unsaveable(layer, "Zuko", __name__)
        masks = [np64(lin.mask).astype(bool) for _, _, _, lin in linears]
        keys = [k for k in layer.made.params if k.rsplit(".", 1)[-1].startswith("w")]
        if keys != [key_w for key_w, _, _, _ in linears]:  # (masks are in weight-key order)
            raise ValueError(f"{where}: the rebuilt residual network's layers {keys} do not "
                             f"match zuko's {[key_w for key_w, _, _, _ in linears]}")
        _check_masks(layer.made, masks, where)
        for (key_w, key_b, zname, lin), m in zip(linears, masks):
            layer.params[f"made.{key_w}"] = np64(lin.weight) * m  # the weight zuko uses
            layer.params[f"made.{key_b}"] = np64(lin.bias)
            names[f"{zname}.weight"] = (f"made.{key_w}", None)
            names[f"{zname}.bias"] = (f"made.{key_b}", None)
    else:
        _check_masks(layer.made, masks, where)
        for k, (lin, m) in enumerate(zip(linears, masks)):
            layer.params[f"made.w{k}"] = np64(lin.weight) * m  # the weight zuko uses: W * M
            layer.params[f"made.b{k}"] = np64(lin.bias)
            names[f"hyper.{2 * k}.weight"] = (f"made.w{k}", None)
            names[f"hyper.{2 * k}.bias"] = (f"made.b{k}", None)
    if linears_mnn is not None:  # MNN: the stacked MonotonicMLP, raw weights (|W| in both)
        for k, lin in enumerate(linears_mnn):
            for part, key in (("weight", f"network.w{k}"), ("bias", f"network.b{k}")):
                value = np64(getattr(lin, part))
                if value.shape != layer.params[key].shape:
                    raise ValueError(f"{where}: MNN {part} {k} of shape {value.shape}; expected "
                                     f"{layer.params[key].shape} (option 'stack')")
                layer.params[key] = value
                names[f"univariate.network.{2 * k}.{part}"] = (key, None)
    return layer, names


def _convert_coupling(lazy, index, dim, context):
    from torch import nn
    from zuko.nn import Linear as ZukoLinear

    from .. import bijectors as B
    where = f"from_zuko: transforms[{index}] (GeneralCouplingTransform)"
    kind, opts = _univariate(lazy, where)
    if kind not in ("affine", "spline"):
        # refflow's circular SplineCoupling feeds the conditioner (sin, cos) of the angles,
        # zuko's the raw angles; the monotone transformers have no coupling layer in refflow
        raise ValueError(f"{where}: univariate {kind!r} transformer in a coupling layer is not "
                         f"supported (option 'univariate'); refflow imports affine and "
                         f"MonotonicRQSTransform couplings")
    linears, activation = _split_sequential(lazy.hyper, (nn.Linear, ZukoLinear), where)
    if any(lin.weight.dim() != 2 for lin in linears):
        raise ValueError(f"{where}: stacked linear layers (option 'stack') are not supported")
    zmask = lazy.mask.detach().cpu().numpy().astype(bool)  # zuko: True = identity part
    n_b = int((~zmask).sum())
    hidden = tuple(int(lin.weight.shape[0]) for lin in linears[:-1])
    common = dict(mask=~zmask, hidden=hidden, activation=activation,
                  context_dim=context or None, rng=0)
    if kind == "affine":
        layer = B.AffineCoupling(dim, scale="softclip", scale_side="density", **common)
        # zuko's rows are (feature j, [shift, u]) at 2j, 2j + 1; refflow's [t (n_b) | u (n_b)]
        rows = np.concatenate([2 * np.arange(n_b), 2 * np.arange(n_b) + 1])
    else:
        layer = B.SplineCoupling(dim, parameterization="zuko", **opts, **common)
        rows = None  # the same (n_b, [w | h | d]) layout
    names, last = {}, len(linears) - 1
    for k, lin in enumerate(linears):
        r = rows if k == last else None
        w, b = np64(lin.weight), np64(lin.bias)
        layer.params[f"conditioner.w{k}"] = w if r is None else w[r]
        layer.params[f"conditioner.b{k}"] = b if r is None else b[r]
        names[f"hyper.{2 * k}.weight"] = (f"conditioner.w{k}", r)
        names[f"hyper.{2 * k}.bias"] = (f"conditioner.b{k}", r)
    return layer, names


def _convert_elementwise(lazy, index, dim, context):
    """``ElementWiseTransform(GaussianizationTransform)`` (zuko's ``GF`` layer) ->
    ``Gaussianization(parameterization="zuko", weights="uniform", shrink=1e-6)``."""
    import torch.nn as nn
    from zuko.nn import Linear as ZukoLinear
    from zuko.transforms import GaussianizationTransform

    from ..bijectors import Gaussianization
    where = f"from_zuko: transforms[{index}] (ElementWiseTransform)"
    uni, shapes = lazy.univariate, [tuple(s) for s in lazy.shapes]
    if uni is not GaussianizationTransform:
        name = getattr(uni, "__name__", type(uni).__name__)
        raise ValueError(f"{where}: univariate transformation {name} is not supported "
                         f"(option 'univariate'; refflow imports an element-wise "
                         f"GaussianizationTransform)")
    if len(shapes) != 2 or shapes[0] != shapes[1] or len(shapes[0]) != 1:
        raise ValueError(f"{where}: GaussianizationTransform with shapes {shapes} (option "
                         f"'shapes'); expected [(K,), (K,)]")
    K = shapes[0][0]
    names = {}
    if context:
        linears, activation = _split_sequential(lazy.hyper, (nn.Linear, ZukoLinear), where)
        hidden = tuple(int(lin.weight.shape[0]) for lin in linears[:-1])
        layer = Gaussianization(dim, K, parameterization="zuko", weights="uniform",
                                shrink=_GF_SHRINK, context_dim=context, hidden=hidden,
                                activation=activation, rng=0)
        for k, lin in enumerate(linears):
            layer.params[f"hyper.w{k}"] = np64(lin.weight)
            layer.params[f"hyper.b{k}"] = np64(lin.bias)
            names[f"hyper.{2 * k}.weight"] = (f"hyper.w{k}", None)
            names[f"hyper.{2 * k}.bias"] = (f"hyper.b{k}", None)
    else:
        layer = Gaussianization(dim, K, parameterization="zuko", weights="uniform",
                                shrink=_GF_SHRINK, rng=0)
        for j, key in enumerate(("shift", "scale")):
            value = np64(lazy.phi[j])
            if value.shape != (dim, K):
                raise ValueError(f"{where}: parameter {key} of shape {value.shape}; expected "
                                 f"({dim}, {K})")
            layer.params[key] = value
            names[f"phi.{j}"] = (key, None)
    return layer, names


def _convert(flow, where="from_zuko"):
    """``(refflow Flow, {zuko parameter name: (refflow key, row permutation or None)})``."""
    _require_zuko(where)
    from zuko.flows.autoregressive import MaskedAutoregressiveTransform
    from zuko.flows.coupling import GeneralCouplingTransform
    from zuko.flows.gaussianization import ElementWiseTransform
    from zuko.lazy import Flow as ZukoFlow
    from zuko.lazy import LazyComposedTransform, UnconditionalTransform

    from ..bijectors import Chain
    from ..distributions import Flow
    if not isinstance(flow, ZukoFlow):
        raise TypeError(f"{where}: expected a zuko.flows.Flow (MAF, NSF, RealNVP, ...), got "
                        f"{type(flow).__name__}")
    base, dim = _convert_base(flow.base, where)
    transform = flow.transform
    lazies = list(transform.transforms) if isinstance(transform, LazyComposedTransform) \
        else [transform]
    layers, names, n = [], {}, len(lazies)
    for i, lazy in enumerate(lazies):
        prefix = f"transform.transforms.{i}." if isinstance(transform, LazyComposedTransform) \
            else "transform."
        if isinstance(lazy, MaskedAutoregressiveTransform):
            features, context = _features(lazy, dim, i, where)
            layer, layer_names = _convert_autoregressive(lazy, i, dim, context)
        elif isinstance(lazy, GeneralCouplingTransform):
            features, context = _features(lazy, dim, i, where)
            layer, layer_names = _convert_coupling(lazy, i, dim, context)
        elif isinstance(lazy, ElementWiseTransform):
            context = 0 if not hasattr(lazy, "hyper") else \
                int(list(lazy.hyper)[0].weight.shape[1])
            layer, layer_names = _convert_elementwise(lazy, i, dim, context)
        elif isinstance(lazy, UnconditionalTransform):
            layer, layer_names = _convert_unconditional(lazy, i, dim, where)
        else:
            raise ValueError(f"{where}: transforms[{i}] is a {type(lazy).__name__}, which "
                             f"refflow cannot import (supported: MaskedAutoregressiveTransform, "
                             f"GeneralCouplingTransform, ElementWiseTransform and "
                             f"UnconditionalTransform of RotationTransform / "
                             f"LULinearTransform)")
        layers.append(layer)
        # zuko applies transforms[0] to x first; refflow's Chain lists the sampling direction,
        # so zuko's layer i is refflow's layer n - 1 - i.
        for zname, target in layer_names.items():
            pieces = [(f"bijector.layers.{n - 1 - i}.{key}", rows)
                      for key, rows in (target if isinstance(target, list) else [target])]
            names[prefix + zname] = pieces if isinstance(target, list) else pieces[0]
    missing = [name for name, _ in flow.named_parameters() if name not in names]
    if missing:
        raise ValueError(f"{where}: parameters {missing} have no refflow counterpart")
    return Flow(base, Chain(layers[::-1])), names


def _partial_tensors(lazy):
    """``{name: tensor}`` of a zuko ``Partial``'s tensor arguments, under the names its
    ``named_parameters``/``named_buffers`` use (``_0``, ... for positional ones)."""
    import torch
    out = {f"_{i}": a for i, a in enumerate(lazy.args) if torch.is_tensor(a)}
    out.update({k: a for k, a in lazy.kwargs.items() if torch.is_tensor(a)})
    return out


def _convert_unconditional(lazy, index, dim, where):
    """``UnconditionalTransform`` of ``RotationTransform`` / ``LULinearTransform``: the refflow
    layer whose ``inverse`` is zuko's ``z = R x`` / ``z = L U x``, i.e. ``Inverse`` of the twin
    whose ``forward`` multiplies by the same matrix."""
    from zuko.transforms import LULinearTransform, RotationTransform, SoftclipTransform

    from ..bijectors import Inverse, LULinear, Rotation
    f = lazy.f
    name = getattr(f, "__name__", type(f).__name__)
    here = f"{where}: transforms[{index}] (UnconditionalTransform of {name})"
    if f is SoftclipTransform:
        return _convert_softclip(lazy, dim, here)
    if f not in (RotationTransform, LULinearTransform):
        raise ValueError(f"{here} is not supported (refflow imports RotationTransform, "
                         f"LULinearTransform and SoftclipTransform)")
    tensors = _partial_tensors(lazy)
    if len(tensors) != 1 or (set(lazy.kwargs) - set(tensors)):
        raise ValueError(f"{here}: expected one matrix argument, got {sorted(tensors)} and "
                         f"options {sorted(set(lazy.kwargs) - set(tensors))}")
    (zname, tensor), = tensors.items()
    m = np64(tensor)
    if m.shape != (dim, dim):
        raise ValueError(f"{here}: matrix of shape {m.shape}; expected ({dim}, {dim}) (option "
                         f"'shape'; batched matrices are not supported)")
    if f is RotationTransform:
        layer = Rotation(dim)
        layer.params["generator"] = m
        return Inverse(layer), {zname: ("generator", None)}
    # zuko: L = tril(LU) (raw diagonal, either sign), U = triu(LU, 1) + I, z = L U x
    if np.any(np.diag(m) == 0.0):
        raise ValueError(f"{here}: a zero on the diagonal of LU (a singular map)")
    layer = LULinear(dim, upper_diag="raw", diagonal="lower")
    lower, upper, diag = np.tril_indices(dim, -1), np.triu_indices(dim, 1), np.diag_indices(dim)
    pieces = [("lower_entries", lower), ("upper_entries", upper),
              ("unconstrained_upper_diag", diag)]
    for key, idx in pieces:
        layer.params[key] = m[idx]
    return Inverse(layer), {zname: pieces}


def _convert_softclip(lazy, dim, here):
    """``UnconditionalTransform(SoftclipTransform, bound)`` (zuko's ``z = x / (1 + |x| / B)``,
    between the layers of NAF, UNAF and SOSPF) -> ``Inverse(Softclip(dim, B))``, whose
    ``inverse`` is the same map; no parameters (a trainable bound is refused)."""
    import torch

    from ..bijectors import Inverse, Softclip
    args, kwargs = list(lazy.args), dict(lazy.kwargs)
    if len(args) > 1 or set(kwargs) - {"bound"} or (args and kwargs):
        raise ValueError(f"{here}: arguments {args} and options {sorted(kwargs)}; expected the "
                         f"bound alone (option 'bound')")
    bound = args[0] if args else kwargs.get("bound", 1.0)  # zuko's default bound is 1
    if list(lazy.named_parameters()):
        raise ValueError(f"{here}: a trainable bound (option 'buffer=False' with a tensor "
                         f"bound) is not supported; refflow's Softclip has a fixed bound")
    if torch.is_tensor(bound):
        if bound.numel() != 1:
            raise ValueError(f"{here}: a bound of shape {tuple(bound.shape)} (option 'bound'); "
                             f"expected a scalar")
        bound = float(bound.detach().cpu().double())
    if isinstance(bound, bool) or not isinstance(bound, (int, float)) or not bound > 0 \
            or not np.isfinite(bound):
        raise ValueError(f"{here}: bound {bound!r} (option 'bound'); expected a positive "
                         f"finite number")
    return Inverse(Softclip(dim, bound=float(bound))), {}


def _convert_base(base, where):
    """``(refflow base, dim)`` and ``{zuko name: (refflow key, rows)}`` of a zuko base: a
    fixed ``DiagNormal`` (``StandardNormal`` for loc 0, scale 1, else ``DiagNormal``) or a
    fixed ``BoxUniform`` (``Uniform``)."""
    import zuko
    from zuko.lazy import UnconditionalDistribution

    from ..distributions import DiagNormal, StandardNormal, Uniform
    f = getattr(base, "f", None)
    if not isinstance(base, UnconditionalDistribution) or \
            f not in (zuko.distributions.DiagNormal, zuko.distributions.BoxUniform):
        raise ValueError(f"{where}: base {type(base).__name__} ({base!r}) is not supported "
                         f"(option 'base'); refflow imports a fixed DiagNormal or BoxUniform")
    name = f.__name__
    if list(base.named_parameters()):
        raise ValueError(f"{where}: base {name} with trainable arguments (option 'buffer=False')"
                         f" is not supported; refflow imports a fixed base (zuko's default)")
    tensors = _partial_tensors(base)
    # positional arguments first, then the keywords in the constructor's order
    order = [f"_{i}" for i in range(len(base.args))] + \
        [k for k in (("loc", "scale") if name == "DiagNormal" else ("lower", "upper"))]
    args = [tensors[k] for k in order if k in tensors]
    if len(args) != 2 or len(tensors) != 2 or set(base.kwargs) - set(tensors):
        raise ValueError(f"{where}: base {name} with arguments {sorted(tensors)} and options "
                         f"{sorted(set(base.kwargs) - set(tensors))} (option 'base'); expected "
                         f"two vectors")
    a, b = (np64(t) for t in args)
    if a.ndim != 1 or b.shape != a.shape:
        raise ValueError(f"{where}: base {name} with argument shapes {a.shape}, {b.shape} "
                         f"(option 'base'); expected two vectors of the same size")
    dim = a.shape[0]
    if f is zuko.distributions.BoxUniform:
        if not np.all(a < b):
            raise ValueError(f"{where}: base BoxUniform needs lower < upper elementwise")
        return Uniform(a, b), dim
    if not np.all(b > 0):
        raise ValueError(f"{where}: base DiagNormal needs a positive scale")
    if np.all(a == 0.0) and np.all(b == 1.0):
        return StandardNormal(dim), dim
    normal = DiagNormal(dim)
    normal.params["loc"] = a
    normal.params["log_scale"] = np.log(b)
    return normal, dim


def _features(lazy, dim, index, where):
    """``(features, context)`` of a zuko layer, from its hyper-network's first layer."""
    first = list(lazy.hyper)[0]
    n_in = int(first.weight.shape[1])
    if type(lazy).__name__ == "GeneralCouplingTransform":
        n_a = int(lazy.mask.sum())
        if lazy.mask.shape[0] != dim:
            raise ValueError(f"{where}: transforms[{index}] has {lazy.mask.shape[0]} features, "
                             f"the base {dim}")
        return dim, n_in - n_a
    if lazy.order is not None and lazy.order.shape[0] != dim:
        raise ValueError(f"{where}: transforms[{index}] has {lazy.order.shape[0]} features, the "
                         f"base {dim}")
    return dim, n_in - dim


def from_zuko(flow):
    """The refflow :class:`~refflow.Flow` that computes exactly what a zuko flow computes.

    Parameters
    ----------
    flow : zuko.flows.Flow
        A ``MAF``, ``NSF``, ``NCSF``, ``RealNVP`` / ``NICE``, ``GF``, ``BPF``, ``NAF`` or
        ``SOSPF``, or any ``zuko.flows.Flow`` made of the layers of the module's table
        (``MaskedAutoregressiveTransform``, ``GeneralCouplingTransform``,
        ``ElementWiseTransform``, ``UnconditionalTransform`` of ``RotationTransform``,
        ``LULinearTransform`` or ``SoftclipTransform``), conditional or not, with a fixed
        ``DiagNormal`` or ``BoxUniform`` base. The masked networks may be plain or residual
        (``residual=True``, imported as :class:`~refflow.nn.ResidualMaskedMLP`; such layers
        cannot be saved with :func:`refflow.save`).

    Returns
    -------
    refflow.Flow
        ``Flow(base, Chain([...]))`` with zuko's layers in reverse (refflow lists
        the sampling direction), the weights copied as float64 (masked weights stored as
        ``W * M``), MADE orders and hidden degrees that reproduce zuko's masks exactly (checked),
        ``scale="softclip", scale_side="density"`` for affine layers and
        ``parameterization="zuko"`` with zuko's bound and slope for spline layers. zuko's
        ``flow(c).log_prob(x)`` equals ``model.log_prob(x, context=c)``, and
        ``flow(c).transform.inv(z)`` equals ``model.bijector.forward(z, context=c)[0]``.

    Raises
    ------
    TypeError
        ``flow`` is not a zuko flow.
    ValueError
        An unsupported layer or option, naming the zuko class and the option.

    Examples
    --------
    >>> import numpy as np, torch, zuko                                # doctest: +SKIP
    >>> from refflow.interop import from_zuko, assert_matches         # doctest: +SKIP
    >>> flow = zuko.flows.MAF(3, transforms=2, hidden_features=[16])   # doctest: +SKIP
    >>> model = from_zuko(flow)                                        # doctest: +SKIP
    >>> assert_matches(flow, model, np.random.default_rng(0).normal(size=(8, 3)))  # doctest: +SKIP
    """
    return _convert(flow)[0]


def parameter_map(flow, where="parameter_map"):
    """``{zuko parameter name: (refflow key, rows)}`` for ``from_zuko(flow)``: the refflow
    parameter is ``zuko_parameter[rows]`` (``rows`` None for the whole tensor, else a NumPy
    index). A zuko parameter split over several refflow parameters (``LULinearTransform``'s
    ``LU``) maps to a list of such ``(refflow key, index)`` pieces."""
    return _convert(flow, where)[1]
