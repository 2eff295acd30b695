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
=====================================  =====================================================

Pyro's ``Planar`` and ``Radial`` invert only from their cache; refflow inverts them exactly,
so the imported model evaluates ``log_prob`` anywhere.

Not imported (``NotImplementedError`` naming the class): ``AffineAutoregressive`` and
``AffineCoupling`` (a log-scale clamped to ``[-5, 3]`` with a straight-through gradient, or
``stable=True``'s ``sigma x + (1 - sigma) mu``: no refflow scale map computes them yet);
``Spline``/``SplineCoupling``/``SplineAutoregressive`` (the linear-rational spline, and the
quadratic spline's boundary slope ``1 - 1e-3``: no refflow twin yet); ``BlockAutoregressive``
(its log-det uses ``0.5 log(|w|^2 + 1e-8)`` while its weights divide by ``|w| + 1e-8``, and its
gate carries ``1e-8`` terms: refflow's ``"pyro"`` BNAF is the consistent map, equal to Pyro's
only to ~1e-8); ``Sylvester``, ``BatchNorm``, ``NeuralAutoregressive``, ``Polynomial`` and the
rest. Options refflow cannot reproduce raise ``ValueError``. Nothing is approximated.
"""

import numpy as np

from .common import np64

__all__ = ["from_pyro"]

_WHERE = "from_pyro"

_NOT_YET = {
    "AffineAutoregressive": "its log-scale clamp to [-5, 3] with a straight-through gradient "
                            "(or stable=True) has no refflow scale map yet",
    "AffineCoupling": "its log-scale clamp to [-5, 3] with a straight-through gradient has "
                      "no refflow scale map yet",
    "Spline": "Pyro's linear-rational spline and its quadratic spline's boundary slope "
              "1 - 1e-3 have no refflow twin yet",
    "SplineCoupling": "Pyro's linear-rational spline and its quadratic spline's boundary slope "
                      "1 - 1e-3 have no refflow twin yet",
    "SplineAutoregressive": "Pyro's linear-rational spline and its quadratic spline's boundary "
                            "slope 1 - 1e-3 have no refflow twin yet",
    "BlockAutoregressive": "its log-det uses 0.5 log(|w|^2 + 1e-8) while its weights divide by "
                           "|w| + 1e-8: refflow's 'pyro' BNAF agrees with it only to ~1e-8",
}


def _unsupported(t):
    name = type(t).__name__
    why = _NOT_YET.get(name, "its refflow twin, or its import, does not exist yet")
    raise NotImplementedError(f"{_WHERE}: Pyro transform {name} is not supported ({why})")


def _refuse(cls_name, option):
    raise ValueError(f"{_WHERE}: {cls_name}: {option} is not supported (refflow would not "
                     f"compute the same function)")


def _vector(t, name, dim, cls_name):
    value = np64(getattr(t, name))
    if value.shape != (dim,):
        _refuse(cls_name, f"parameter {name} of shape {value.shape} (expected ({dim},))")
    return value


def _convert(t, dim):
    """The refflow layers whose ``forward`` is the Pyro transform's ``_call``."""
    import pyro.distributions.transforms as T
    from torch.distributions.transforms import ComposeTransform

    from ..bijectors import Householder, Permute, Planar, Radial
    cls = type(t)
    if cls is ComposeTransform:
        out = []
        for part in t.parts:
            out += _convert(part, dim)
        return out
    if cls is T.Permute:
        if t.dim != -1:
            _refuse("Permute", f"dim={t.dim} (refflow permutes the last axis)")
        p = np64(t.permutation).astype(np.int64)
        if p.shape != (dim,):
            _refuse("Permute", f"a permutation of length {p.shape[0]} for {dim} features")
        return [Permute(dim, permutation=p)]
    if cls is T.Householder:
        vectors = np64(t.u_unnormed)
        if vectors.ndim != 2 or vectors.shape[1] != dim:
            _refuse("Householder", f"u_unnormed of shape {vectors.shape}")
        layer = Householder(dim, n_reflections=vectors.shape[0], rng=0)
        layer.params["vectors"] = vectors
        return [layer]
    if cls is T.Planar:
        layer = Planar(dim, rng=0)
        layer.params["u"] = _vector(t, "u", dim, "Planar")
        layer.params["w"] = _vector(t, "w", dim, "Planar")
        layer.params["b"] = _vector(t, "bias", 1, "Planar")
        return [layer]
    if cls is T.Radial:
        layer = Radial(dim, rng=0)
        layer.params["z0"] = _vector(t, "x0", dim, "Radial")
        layer.params["alpha"] = _vector(t, "alpha_prime", 1, "Radial")
        layer.params["beta"] = _vector(t, "beta_prime", 1, "Radial")
        return [layer]
    _unsupported(t)


def _base(base):
    import torch.distributions as D

    from ..distributions import DiagNormal
    inner = base
    if isinstance(base, D.Independent):  # torch's, or Pyro's subclass (``.to_event(1)``)
        if base.reinterpreted_batch_ndims != 1:
            _refuse("Independent", f"reinterpreted_batch_ndims={base.reinterpreted_batch_ndims}")
        inner = base.base_dist
    if not isinstance(inner, D.Normal) or type(inner).__name__ != "Normal" or inner is base:
        raise NotImplementedError(f"{_WHERE}: base distribution {type(base).__name__} is not "
                                  f"supported (refflow imports Normal(loc, scale).to_event(1))")
    loc, scale = np64(inner.loc), np64(inner.scale)
    if loc.ndim != 1 or scale.shape != loc.shape:
        _refuse("Normal", f"loc of shape {loc.shape} and scale of shape {scale.shape} (one "
                          f"vector event, no batch)")
    out = DiagNormal(loc.shape[0])
    out.params["loc"] = loc
    out.params["log_scale"] = np.log(scale)
    return out


def from_pyro(dist, base=None):
    """The refflow :class:`~refflow.Flow` that computes exactly what a Pyro flow computes.

    Parameters
    ----------
    dist : pyro.distributions.TransformedDistribution or sequence of transforms
        A ``TransformedDistribution`` (its ``base_dist`` and ``transforms``), or the list of
        transforms, with ``base`` given. Supported: ``Permute``, ``Householder``, ``Planar``,
        ``Radial`` (and ``ComposeTransform`` of them) over ``Normal(loc, scale).to_event(1)``.
    base : torch.distributions.Distribution, optional
        The base distribution, when ``dist`` is a list of transforms.

    Returns
    -------
    refflow.Flow
        float64 copies of the parameters. ``Flow.bijector.forward(z)`` equals the transforms
        applied to ``z`` in order, and ``Flow.log_prob`` equals Pyro's ``log_prob`` (which Pyro
        evaluates only at its own cached samples for ``Planar`` and ``Radial``).

    Raises
    ------
    TypeError
        Neither a ``TransformedDistribution`` nor a list of transforms with a base.
    NotImplementedError
        A Pyro transform refflow does not import (yet), naming its class and the reason.
    ValueError
        An option refflow cannot reproduce, naming the class and the option.
    """
    try:
        import pyro.distributions as pd
    except ImportError:  # pragma: no cover
        raise ImportError(f"{_WHERE}: needs torch and pyro-ppl (pip install pyro-ppl)") \
            from None
    from torch.distributions import TransformedDistribution

    from ..bijectors import Chain
    from ..distributions import Flow
    if isinstance(dist, (TransformedDistribution, pd.TransformedDistribution)):
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
    layers = []
    for t in transforms:
        layers += _convert(t, out_base.dim)
    return Flow(out_base, Chain(layers))
