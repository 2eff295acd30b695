r"""Import a TensorFlow Probability (JAX substrate) flow as the equivalent refflow ``Flow``.

:func:`from_tfp` reads a ``tfp.substrates.jax.distributions.TransformedDistribution`` (or a
bare bijector plus a ``base``) layer by layer, from each bijector's constructor arguments
(``bijector.parameters``), and builds the refflow :class:`~refflow.Flow` that computes the
same log-density and the same samples from the same base noise, in float64. JAX and TFP are
imported inside the functions only: ``import refflow`` never needs them.

Conventions bridged (tfp-nightly 0.26, ``tensorflow_probability/python/bijectors``):

======================================  ====================================================
TFP (``tfb`` = ``tfp.bijectors``)       refflow
======================================  ====================================================
``TransformedDistribution(base, b)``:   ``Flow(base, B)`` with ``B.forward = b.forward``
samples are ``b.forward(z)``            (TFP's forward is base -> data, as refflow's)
``Chain([b1, ..., bn])`` applies ``bn`` ``Chain([Bn, ..., B1])``
first
``Invert(b)`` (and ``Log``)             ``Inverse(B)`` (``Inverse(Inverse(B)) = B``)
``Shift(shift)``                        ``Affine`` with ``log_scale = 0``
``Scale(scale)`` / ``Scale(log_scale=)``  ``Affine`` with ``log_scale = log(scale)`` (positive
                                        scales only) / ``log_scale`` copied
``ScaleMatvecDiag(scale_diag)``         ``Affine`` with ``log_scale = log(scale_diag)``
                                        (positive diagonals only)
``ScaleMatvecTriL(scale_tril)``:        ``LULinear(upper_diag="raw", diagonal="lower")``:
``y = tril(T) x``                       ``lower_entries`` = ``T``'s strictly lower entries,
                                        ``unconstrained_upper_diag = diag(T)`` (any sign,
                                        ``log|det| = sum log|T_ii|`` as TFP), ``U = I``
``ScaleMatvecLU(lower_upper, perm)``:   ``LULinear(permutation=argsort(perm),
``y = gather(L U, invert(perm)) x``     upper_diag="raw")``: ``L = I + tril(LU, -1)``,
                                        ``U = triu(LU)`` copied entry by entry
``Permute(p)``: ``y = x[..., p]``       ``Permute(permutation=p)``
``Exp``, ``Sigmoid()``, ``Tanh``,       ``Exp``, ``Sigmoid``, ``Tanh``, ``Softplus`` (TFP's
``Softplus()``                          defaults: no ``low``/``high``, no
                                        ``hinge_softness``, no ``low`` offset)
``Independent(Normal(loc, scale), 1)``, ``DiagNormal`` with ``log_scale = log(scale)``
``MultivariateNormalDiag(loc,
scale_diag)``
======================================  ====================================================

Not imported (each raises naming the class and the option; nothing is approximated):

- ``RationalQuadraticSpline`` (``ValueError``): TFP takes *constrained* bin widths, heights
  and slopes and its range is ``[range_min, range_min + sum(widths)]`` (heights alike), so it
  moves with the parameters; refflow's spline maps take unconstrained values on a fixed range
  ``[-B, B]``: the same knots could be rebuilt, but not the same function of TFP's parameters
  (its gradients).
- ``MaskedAutoregressiveFlow`` and ``RealNVP`` (``ValueError``): their
  ``shift_and_log_scale_fn`` / ``bijector_fn`` are callables whose weights cannot be read;
  TFP's own ``AutoregressiveNetwork`` is a Keras layer, and the JAX substrate's Keras is an
  empty stub (``tensorflow_probability/python/internal/backend/jax/keras_layers.py``), so
  that network cannot even be built there.
- ``Sigmoid(low, high)``, ``Softplus(hinge_softness, low)``, ``Permute(axis != -1)``,
  ``adjoint=True``, negative scales, batches of bijectors (``ValueError``); any other
  bijector or base (``NotImplementedError``).
"""

import numpy as np

from .common import (
    affine_layer, as_flow, chain, diag_normal_base, invert, lu_layer, matrix, refuse, require,
    to_numpy, transformed_parts, unsupported, vector,
)

__all__ = ["from_tfp"]

_WHERE = "from_tfp"
_PEER = "TFP"


def _require(where=_WHERE):
    return require(where, ("jax", "tensorflow_probability.substrates.jax"),
                   "jax and TensorFlow Probability's JAX substrate", "'jax[cpu]' tfp-nightly")


def _positive_log(values, cls_name, what):
    if np.any(values <= 0):
        refuse(_WHERE, cls_name, f"a negative or zero {what} (refflow's Affine has "
                                 f"exp(log_scale))")
    return np.log(values)


def _no_adjoint(b, name):
    if b.parameters.get("adjoint", False):
        refuse(_WHERE, name, "adjoint=True")


def _convert(b, dim):
    """The refflow bijector whose ``forward`` computes TFP's ``b.forward`` on ``(dim,)``
    events."""
    from tensorflow_probability.substrates.jax import bijectors as tfb

    from ..bijectors import Exp, Permute, Sigmoid, Softplus, Tanh
    cls = type(b)
    name = cls.__name__
    p = b.parameters
    if cls is tfb.Chain:
        return chain([_convert(x, dim) for x in b.bijectors[::-1]])
    if isinstance(b, tfb.Invert):  # Invert and its subclasses (Log = Invert(Exp()))
        return invert(_convert(b.bijector, dim))
    if cls is tfb.Shift:
        return affine_layer(dim, vector(_WHERE, p["shift"], dim, name, "shift"), np.zeros(dim))
    if cls is tfb.Scale:
        if p.get("log_scale") is not None:
            log_scale = vector(_WHERE, p["log_scale"], dim, name, "log_scale")
        else:
            log_scale = _positive_log(vector(_WHERE, p["scale"], dim, name, "scale"), name,
                                      "scale")
        return affine_layer(dim, np.zeros(dim), log_scale)
    if cls is tfb.ScaleMatvecDiag:
        _no_adjoint(b, name)
        diag = vector(_WHERE, p["scale_diag"], dim, name, "scale_diag")
        return affine_layer(dim, np.zeros(dim), _positive_log(diag, name, "scale_diag"))
    if cls is tfb.ScaleMatvecTriL:
        _no_adjoint(b, name)
        t = np.tril(matrix(_WHERE, p["scale_tril"], dim, name))
        return lu_layer(_WHERE, dim, t, np.zeros((dim, dim)), np.diagonal(t).copy(),
                        diagonal="lower")
    if cls is tfb.ScaleMatvecLU:
        lu = matrix(_WHERE, p["lower_upper"], dim, name)
        perm = np.asarray(p["permutation"], dtype=np.int64)
        if perm.shape != (dim,) or not np.array_equal(np.sort(perm), np.arange(dim)):
            refuse(_WHERE, name, f"permutation {perm.tolist()} (not one permutation of {dim} "
                                 f"indices)")
        # W = gather(L U, invert_permutation(perm)): W[i] = M[argsort(perm)[i]], refflow's
        # W = M[permutation]
        return lu_layer(_WHERE, dim, lu, lu, np.diagonal(lu).copy(), permutation=np.argsort(perm))
    if cls is tfb.Permute:
        if int(np.asarray(p.get("axis", -1))) != -1:
            refuse(_WHERE, name, f"axis={p.get('axis')} (refflow permutes the event's last axis)")
        perm = np.asarray(p["permutation"], dtype=np.int64)
        if perm.shape != (dim,):
            refuse(_WHERE, name, f"a permutation of shape {perm.shape} for events of size {dim}")
        return Permute(dim, permutation=perm)
    if cls is tfb.Exp:
        return Exp(dim)
    if cls is tfb.Tanh:
        return Tanh(dim)
    if cls is tfb.Sigmoid:
        if p.get("low") is not None or p.get("high") is not None:
            refuse(_WHERE, name, "low/high (refflow's Sigmoid maps onto (0, 1))")
        return Sigmoid(dim)
    if cls is tfb.Softplus:
        if p.get("hinge_softness") is not None or p.get("low") is not None:
            refuse(_WHERE, name, "hinge_softness or low (refflow's Softplus is log(1 + e^z))")
        return Softplus(dim)
    if cls is tfb.RationalQuadraticSpline:
        refuse(_WHERE, name, "TFP's constrained bin widths, heights and slopes on the moving "
                             "range [range_min, range_min + sum(widths)] (refflow's spline maps "
                             "take unconstrained values on a fixed range [-B, B])")
    if cls in (tfb.MaskedAutoregressiveFlow, tfb.RealNVP):
        refuse(_WHERE, name, "its shift_and_log_scale_fn / bijector_fn, a callable whose "
                             "weights cannot be read (TFP's AutoregressiveNetwork is a Keras "
                             "layer, and the JAX substrate's Keras is an empty stub)")
    unsupported(_WHERE, _PEER, b)


def _base(dist):
    """``(refflow base, dim)`` for ``Independent(Normal, 1)`` or ``MultivariateNormalDiag``."""
    from tensorflow_probability.substrates.jax import distributions as tfd
    name = type(dist).__name__
    if type(dist) is tfd.Independent and type(dist.distribution) is tfd.Normal \
            and int(dist.reinterpreted_batch_ndims) == 1:
        loc, scale = to_numpy(dist.distribution.loc), to_numpy(dist.distribution.scale)
    elif type(dist) is tfd.MultivariateNormalDiag:
        p = dist.parameters
        if p.get("scale_identity_multiplier") is not None:
            refuse(_WHERE, name, "scale_identity_multiplier")
        loc = 0.0 if p.get("loc") is None else to_numpy(p["loc"])
        scale = 1.0 if p.get("scale_diag") is None else to_numpy(p["scale_diag"])
    else:
        unsupported(_WHERE, _PEER, dist, "as a base distribution; refflow imports "
                                         "Independent(Normal, 1) and MultivariateNormalDiag")
    return diag_normal_base(_WHERE, dist, loc, scale)


def from_tfp(dist_or_bijector, base=None):
    """The refflow :class:`~refflow.Flow` that computes exactly what a TFP (JAX) flow computes.

    Parameters
    ----------
    dist_or_bijector : tfd.TransformedDistribution or tfb.Bijector
        From ``tensorflow_probability.substrates.jax``: a ``TransformedDistribution`` (its own
        base is imported), or a bijector with ``base`` given. Supported layers and bases: the
        table of :mod:`refflow.interop.tfp`.
    base : tfd.Distribution, optional
        Required with a bare bijector; must be None with a ``TransformedDistribution``.

    Returns
    -------
    refflow.Flow
        float64 copies of TFP's parameters. ``model.log_prob(x)`` equals
        ``dist.log_prob(x)`` and ``model.bijector.forward(z)[0]`` equals
        ``dist.bijector.forward(z)``.

    Raises
    ------
    TypeError
        Not a TFP ``TransformedDistribution`` or bijector (or a bijector without ``base``).
    NotImplementedError
        A TFP bijector or base whose refflow twin does not exist yet, naming it.
    ValueError
        An option refflow cannot reproduce, naming the class and the option.

    Examples
    --------
    >>> import jax.numpy as jnp                                             # doctest: +SKIP
    >>> from tensorflow_probability.substrates import jax as tfp           # doctest: +SKIP
    >>> from refflow.interop import from_tfp                                # doctest: +SKIP
    >>> tfd, tfb = tfp.distributions, tfp.bijectors                         # doctest: +SKIP
    >>> base = tfd.MultivariateNormalDiag(jnp.zeros(2), jnp.ones(2))        # doctest: +SKIP
    >>> model = from_tfp(tfd.TransformedDistribution(base, tfb.Exp()))      # doctest: +SKIP
    """
    _, tfp = _require()
    tfb, tfd = tfp.bijectors, tfp.distributions
    base, bij = transformed_parts(_WHERE, _PEER, dist_or_bijector, base,
                                  tfd.TransformedDistribution, tfb.Bijector, tfd.Distribution)
    refflow_base, dim = _base(base)
    return as_flow(refflow_base, _convert(bij, dim))
