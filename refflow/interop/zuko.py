r"""Import a zuko flow as the equivalent refflow ``Flow`` (same weights, masks, maps).

:func:`from_zuko` builds the refflow :class:`~refflow.Flow` that computes exactly what a
``zuko.flows.MAF``, ``NSF``, ``RealNVP``/``NICE`` (affine or spline coupling) or one-layer
``GF`` computes, with
the same weights (as float64), MADE masks, output layout, scale and spline maps and direction;
:func:`parameter_map` gives the correspondence of parameter names that
:func:`refflow.interop.compare` uses.

torch and zuko are imported inside the functions only: ``import refflow`` never needs them.

Conventions bridged (read from zuko's source):

==============================  ==========================================================
zuko                            refflow
==============================  ==========================================================
transforms map ``x -> z``,      ``Chain`` lists layers in the sampling direction, so zuko's
``transforms[0]`` touches ``x``  list is reversed; every zuko layer is a density-direction
                                layer already (``z = f(x)``), so no ``Inverse`` is needed
``MonotonicAffineTransform``    ``scale="softclip", scale_side="density"``:
(``z = x exp(l(u)) + shift``)   ``l(u) = u / (1 + |u / ln 1e-3|)``
``MonotonicRQSTransform``       ``parameterization="zuko"``, ``bound`` (5), ``min_derivative``
                                = zuko's ``slope``
``MaskedMLP`` masks             explicit MADE ``order`` (ranks of zuko's bucketed order) and
                                explicit hidden degrees, derived from zuko's mask buffers; the
                                rebuilt masks are checked equal to zuko's
MADE output ``(D, total)``      the same feature-major layout (``[shift, u]``; ``[w | h | d]``)
coupling ``mask`` True =        ``mask`` True = transformed, so refflow's mask is ``~mask``;
identity part; output           coupling output ``[t (n_b) | u (n_b)]``: the last layer's rows
``(n_b, [shift, u])``           are permuted
``ElementWiseTransform`` of     ``Gaussianization(parameterization="zuko",
``GaussianizationTransform``    weights="uniform", shrink=1e-6)``: zuko's
(``GF``)                        ``Phi^-1((1 - 1e-6) mean_k Phi(e^a x + b) + 1e-6 / 2)``;
                                ``phi`` copied as ``shift``/``scale``, or its ``hyper`` MLP
``DiagNormal(0, 1)`` base       ``StandardNormal`` (anything else is refused)
==============================  ==========================================================

Anything else (other layers, residual ``MaskedMLP``, ``normalize=True``, a slope other than
1e-3 for the affine map, unsupported activations, one-feature element-wise flows) raises
``ValueError`` naming the zuko class and the option; zuko's ``RotationTransform`` (between the
layers of a ``GF`` with ``transforms > 1``), whose refflow twin does not exist yet, raises
``NotImplementedError``. Nothing is approximated.
"""

import functools

import numpy as np


from .common import np64, require_torch

__all__ = ["from_zuko", "parameter_map"]

_SOFTCLIP_SLOPE = 1e-3  # refflow's "softclip" scale map is zuko's slope = 1e-3 exactly
_GF_SHRINK = 1e-6  # zuko's GaussianizationTransform: mean(erf(...)) * (1 - 1e-6)


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
    from zuko.transforms import MonotonicAffineTransform, MonotonicRQSTransform
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
    name = getattr(uni, "__name__", type(uni).__name__)
    raise ValueError(f"{where}: univariate transformation {name} is not supported (option "
                     f"'univariate'); refflow imports MonotonicAffineTransform and "
                     f"MonotonicRQSTransform")


# ------------------------------------------------------------------ zuko layers -> specs
def _made_structure(lazy, dim, context, where):
    """Order and explicit hidden degrees reproducing a zuko ``MaskedMLP``'s masks exactly."""
    from zuko.nn import MaskedLinear
    linears, activation = _split_sequential(lazy.hyper, (MaskedLinear,), where)
    masks = [np64(lin.mask).astype(bool) for lin in linears]
    if lazy.order is None:
        raise ValueError(f"{where}: a MaskedAutoregressiveTransform built from an explicit "
                         f"'adjacency' is not supported (option 'adjacency')")
    bucket = lazy.order.detach().cpu().numpy().astype(np.int64)
    # refflow needs a permutation: rank zuko's (possibly bucketed, tied) order, ties by index.
    order = np.empty(dim, dtype=np.int64)
    order[np.argsort(bucket, kind="stable")] = np.arange(dim)
    degrees, prev = [], order + 1  # input degrees
    for k, m in enumerate(masks[:-1]):
        if k == 0:
            mx = m[:, :dim]
            d = mx.sum(axis=1).astype(np.int64)  # a prefix of the order: its length
            if context:
                if not m[:, dim:].all():
                    raise ValueError(f"{where}: hidden units that do not see the whole context "
                                     f"(option 'adjacency') cannot be expressed in refflow")
        else:
            d = np.array([prev[row].max() if row.any() else -1 for row in m], dtype=np.int64)
        degrees.append(d)
        prev = d
    return order, degrees, activation, linears, masks


def _check_masks(made, masks, where):
    for k, (mine, theirs) in enumerate(zip(made.masks, masks)):
        if mine.shape != theirs.shape or not np.array_equal(mine.astype(bool), theirs):
            raise ValueError(f"{where}: zuko's MaskedMLP mask {k} cannot be expressed as a MADE "
                             f"with an order and hidden degrees (option 'order' / "
                             f"'adjacency' / 'passes'); refusing rather than approximating")


def _convert_autoregressive(lazy, index, dim, context):
    """One ``MaskedAutoregressiveTransform`` -> (refflow layer, {zuko name: (key, rows)})."""
    from .. import bijectors as B
    where = f"from_zuko: transforms[{index}] (MaskedAutoregressiveTransform)"
    kind, opts = _univariate(lazy, where)
    order, degrees, activation, linears, masks = _made_structure(lazy, dim, context, where)
    hidden = tuple(int(lin.weight.shape[0]) for lin in linears[:-1])
    common = dict(hidden=hidden, order=order, activation=activation,
                  context_dim=context or None, rng=0)
    try:
        if kind == "affine":
            layer = B.MaskedAffineAutoregressive(dim, scale="softclip", scale_side="density",
                                                 hidden_degrees=degrees, **common)
        else:
            layer = B.MaskedSplineAutoregressive(dim, parameterization="zuko",
                                                 hidden_degrees=degrees, **opts, **common)
    except ValueError as exc:
        raise ValueError(f"{where}: its masks cannot be expressed as a refflow MADE ({exc})") \
            from None
    _check_masks(layer.made, masks, where)
    names = {}
    for k, lin in enumerate(linears):
        names[f"hyper.{2 * k}.weight"] = (f"made.w{k}", None)
        names[f"hyper.{2 * k}.bias"] = (f"made.b{k}", None)
    for k, (lin, m) in enumerate(zip(linears, masks)):
        layer.params[f"made.w{k}"] = np64(lin.weight) * m  # the weight zuko uses: W * M
        layer.params[f"made.b{k}"] = np64(lin.bias)
    return layer, names


def _convert_coupling(lazy, index, dim, context):
    from torch import nn
    from zuko.nn import Linear as ZukoLinear

    from .. import bijectors as B
    where = f"from_zuko: transforms[{index}] (GeneralCouplingTransform)"
    kind, opts = _univariate(lazy, where)
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
    zuko = _require_zuko(where)
    from zuko.flows.autoregressive import MaskedAutoregressiveTransform
    from zuko.flows.coupling import GeneralCouplingTransform
    from zuko.flows.gaussianization import ElementWiseTransform
    from zuko.lazy import Flow as ZukoFlow
    from zuko.transforms import RotationTransform
    from zuko.lazy import LazyComposedTransform, UnconditionalDistribution

    from ..bijectors import Chain
    from ..distributions import Flow, StandardNormal
    if not isinstance(flow, ZukoFlow):
        raise TypeError(f"{where}: expected a zuko.flows.Flow (MAF, NSF, RealNVP, ...), got "
                        f"{type(flow).__name__}")
    base = flow.base
    if not (isinstance(base, UnconditionalDistribution) and base.f is zuko.distributions.DiagNormal):
        raise ValueError(f"{where}: base {type(base).__name__} ({base!r}) is not supported "
                         f"(option 'base'); refflow imports a standard DiagNormal base")
    buffers = dict(base.named_buffers())
    if set(buffers) != {"loc", "scale"} or list(base.named_parameters()):
        raise ValueError(f"{where}: base {base!r} is not a fixed DiagNormal(loc, scale) "
                         f"(option 'base')")
    loc, scale = np64(buffers["loc"]), np64(buffers["scale"])
    if loc.ndim != 1 or not (np.all(loc == 0.0) and np.all(scale == 1.0)):
        raise ValueError(f"{where}: base DiagNormal has loc {loc.tolist()} and scale "
                         f"{scale.tolist()} (option 'base'); refflow's StandardNormal needs "
                         f"loc 0 and scale 1")
    dim = loc.shape[0]
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
        elif getattr(lazy, "f", None) is RotationTransform:
            raise NotImplementedError(f"{where}: transforms[{i}] is an UnconditionalTransform "
                                      f"of RotationTransform, which is not supported (its "
                                      f"refflow twin R = exp(A - A^T) does not exist yet; zuko's "
                                      f"GF puts one between its layers: import a GF with "
                                      f"transforms=1)")
        else:
            raise ValueError(f"{where}: transforms[{i}] is a {type(lazy).__name__}, which "
                             f"refflow cannot import (supported: MaskedAutoregressiveTransform "
                             f"and GeneralCouplingTransform with MonotonicAffineTransform or "
                             f"MonotonicRQSTransform)")
        layers.append(layer)
        # zuko applies transforms[0] to x first; refflow's Chain lists the sampling direction,
        # so zuko's layer i is refflow's layer n - 1 - i.
        names.update({prefix + zname: (f"bijector.layers.{n - 1 - i}.{key}", rows)
                      for zname, (key, rows) in layer_names.items()})
    missing = [name for name, _ in flow.named_parameters() if name not in names]
    if missing:
        raise ValueError(f"{where}: parameters {missing} have no refflow counterpart")
    return Flow(StandardNormal(dim), Chain(layers[::-1])), names


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
        A ``MAF``, ``NSF``, ``RealNVP`` / ``NICE``, a ``GF`` with ``transforms=1`` (or any
        ``zuko.flows.Flow`` made of ``MaskedAutoregressiveTransform`` and
        ``GeneralCouplingTransform`` layers with ``MonotonicAffineTransform`` or
        ``MonotonicRQSTransform``, and ``ElementWiseTransform`` layers of
        ``GaussianizationTransform``), conditional or not, with a ``DiagNormal(0, 1)`` base.

    Returns
    -------
    refflow.Flow
        ``Flow(StandardNormal(D), Chain([...]))`` with zuko's layers in reverse (refflow lists
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
    NotImplementedError
        A zuko layer whose refflow twin does not exist yet (``RotationTransform``).

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
    parameter is ``zuko_parameter[rows]`` (``rows`` None for the whole tensor)."""
    return _convert(flow, where)[1]
