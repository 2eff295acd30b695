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

__all__ = ["from_tfp"]

_WHERE = "from_tfp"


def _require(where=_WHERE):
    try:
        import jax
        from tensorflow_probability.substrates import jax as tfp
    except ImportError:  # pragma: no cover - exercised only without the peer
        raise ImportError(f"{where}: needs jax and TensorFlow Probability's JAX substrate (pip "
                          f"install 'jax[cpu]' tfp-nightly)") from None
    return jax, tfp


def _np(a):
    return np.array(a, dtype=np.float64, copy=True)


def _unsupported(obj, why="its refflow twin does not exist yet"):
    raise NotImplementedError(f"{_WHERE}: TFP {type(obj).__name__} is not supported ({why})")


def _refuse(cls_name, option):
    raise ValueError(f"{_WHERE}: {cls_name}: {option} is not supported (refflow would not "
                     f"compute the same function)")


def _vector(value, dim, cls_name, what):
    arr = _np(value)
    try:
        return np.broadcast_to(arr, (dim,)).copy()
    except ValueError:
        _refuse(cls_name, f"{what} of shape {arr.shape} for events of size {dim} (a batch of "
                          f"bijectors)")


def _matrix(m, dim, cls_name):
    m = _np(m)
    if m.shape != (dim, dim):
        _refuse(cls_name, f"a matrix of shape {m.shape} for events of size {dim} (a batch of "
                          f"matrices)")
    return m


def _affine(dim, shift, log_scale):
    from ..bijectors import Affine
    layer = Affine(dim)
    layer.params["shift"] = shift
    layer.params["log_scale"] = log_scale
    return layer


def _positive_log(values, cls_name, what):
    if np.any(values <= 0):
        _refuse(cls_name, f"a negative or zero {what} (refflow's Affine has exp(log_scale))")
    return np.log(values)


def _lu_layer(dim, lower, upper, diag, permutation=None, diagonal="upper"):
    from ..bijectors import LULinear
    if np.any(diag == 0):
        _refuse("LULinear", "a singular triangular factor (a zero on its diagonal)")
    layer = LULinear(dim, permutation=permutation, upper_diag="raw", diagonal=diagonal)
    layer.params["lower_entries"] = lower[np.tril_indices(dim, -1)]
    layer.params["upper_entries"] = upper[np.triu_indices(dim, 1)]
    layer.params["unconstrained_upper_diag"] = diag
    layer.params["bias"] = np.zeros(dim)
    return layer


def _no_adjoint(b, name):
    if b.parameters.get("adjoint", False):
        _refuse(name, "adjoint=True")


def _convert(b, dim):
    """The refflow bijector whose ``forward`` computes TFP's ``b.forward`` on ``(dim,)``
    events."""
    from tensorflow_probability.substrates.jax import bijectors as tfb

    from ..bijectors import Exp, Permute, Sigmoid, Softplus, Tanh
    cls = type(b)
    name = cls.__name__
    p = b.parameters
    if cls is tfb.Chain:
        return _chain([_convert(x, dim) for x in b.bijectors[::-1]])
    if isinstance(b, tfb.Invert):  # Invert and its subclasses (Log = Invert(Exp()))
        return _invert(_convert(b.bijector, dim))
    if cls is tfb.Shift:
        return _affine(dim, _vector(p["shift"], dim, name, "shift"), np.zeros(dim))
    if cls is tfb.Scale:
        if p.get("log_scale") is not None:
            log_scale = _vector(p["log_scale"], dim, name, "log_scale")
        else:
            log_scale = _positive_log(_vector(p["scale"], dim, name, "scale"), name, "scale")
        return _affine(dim, np.zeros(dim), log_scale)
    if cls is tfb.ScaleMatvecDiag:
        _no_adjoint(b, name)
        diag = _vector(p["scale_diag"], dim, name, "scale_diag")
        return _affine(dim, np.zeros(dim), _positive_log(diag, name, "scale_diag"))
    if cls is tfb.ScaleMatvecTriL:
        _no_adjoint(b, name)
        t = np.tril(_matrix(p["scale_tril"], dim, name))
        return _lu_layer(dim, t, np.zeros((dim, dim)), np.diagonal(t).copy(), diagonal="lower")
    if cls is tfb.ScaleMatvecLU:
        lu = _matrix(p["lower_upper"], dim, name)
        perm = np.asarray(p["permutation"], dtype=np.int64)
        if perm.shape != (dim,) or not np.array_equal(np.sort(perm), np.arange(dim)):
            _refuse(name, f"permutation {perm.tolist()} (not one permutation of {dim} indices)")
        # W = gather(L U, invert_permutation(perm)): W[i] = M[argsort(perm)[i]], refflow's
        # W = M[permutation]
        return _lu_layer(dim, lu, lu, np.diagonal(lu).copy(), permutation=np.argsort(perm))
    if cls is tfb.Permute:
        if int(np.asarray(p.get("axis", -1))) != -1:
            _refuse(name, f"axis={p.get('axis')} (refflow permutes the event's last axis)")
        perm = np.asarray(p["permutation"], dtype=np.int64)
        if perm.shape != (dim,):
            _refuse(name, f"a permutation of shape {perm.shape} for events of size {dim}")
        return Permute(dim, permutation=perm)
    if cls is tfb.Exp:
        return Exp(dim)
    if cls is tfb.Tanh:
        return Tanh(dim)
    if cls is tfb.Sigmoid:
        if p.get("low") is not None or p.get("high") is not None:
            _refuse(name, "low/high (refflow's Sigmoid maps onto (0, 1))")
        return Sigmoid(dim)
    if cls is tfb.Softplus:
        if p.get("hinge_softness") is not None or p.get("low") is not None:
            _refuse(name, "hinge_softness or low (refflow's Softplus is log(1 + e^z))")
        return Softplus(dim)
    if cls is tfb.RationalQuadraticSpline:
        _refuse(name, "TFP's constrained bin widths, heights and slopes on the moving range "
                      "[range_min, range_min + sum(widths)] (refflow's spline maps take "
                      "unconstrained values on a fixed range [-B, B])")
    if cls in (tfb.MaskedAutoregressiveFlow, tfb.RealNVP):
        _refuse(name, "its shift_and_log_scale_fn / bijector_fn, a callable whose weights "
                      "cannot be read (TFP's AutoregressiveNetwork is a Keras layer, and the "
                      "JAX substrate's Keras is an empty stub)")
    _unsupported(b)


def _invert(layer):
    """``Inverse(layer)``, simplified: ``Inverse(Inverse(b)) = b``, a chain inverted layer-wise,
    a permutation by its inverse."""
    from ..bijectors import Chain, Inverse, Permute
    if type(layer) is Inverse:
        return layer.bijector
    if type(layer) is Chain:
        return Chain([_invert(x) for x in layer.layers[::-1]])
    if type(layer) is Permute:
        p = layer.buffers["permutation"]
        return Permute(p.shape[0], permutation=np.argsort(p))
    return Inverse(layer)


def _chain(layers):
    from ..bijectors import Chain
    flat = []
    for x in layers:
        flat += list(x.layers) if type(x) is Chain else [x]
    return Chain(flat)


def _base(dist):
    """``(refflow base, dim)`` for ``Independent(Normal, 1)`` or ``MultivariateNormalDiag``."""
    from tensorflow_probability.substrates.jax import distributions as tfd

    from ..distributions import DiagNormal
    name = type(dist).__name__
    if type(dist) is tfd.Independent and type(dist.distribution) is tfd.Normal \
            and int(dist.reinterpreted_batch_ndims) == 1:
        loc, scale = _np(dist.distribution.loc), _np(dist.distribution.scale)
    elif type(dist) is tfd.MultivariateNormalDiag:
        p = dist.parameters
        if p.get("scale_identity_multiplier") is not None:
            _refuse(name, "scale_identity_multiplier")
        loc = 0.0 if p.get("loc") is None else _np(p["loc"])
        scale = 1.0 if p.get("scale_diag") is None else _np(p["scale_diag"])
    else:
        _unsupported(dist, "as a base distribution; refflow imports Independent(Normal, 1) and "
                           "MultivariateNormalDiag")
    if tuple(dist.batch_shape) != () or len(dist.event_shape) != 1:
        _refuse(name, f"batch shape {dist.batch_shape}, event shape {dist.event_shape} "
                      f"(refflow imports one distribution over vectors)")
    dim = int(dist.event_shape[0])
    loc, scale = np.broadcast_to(loc, (dim,)), np.broadcast_to(scale, (dim,))
    if np.any(scale <= 0):
        _refuse(name, "a non-positive scale")
    base = DiagNormal(dim)
    base.params["loc"] = loc.copy()
    base.params["log_scale"] = np.log(scale)
    return base, dim


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
    _require()
    from tensorflow_probability.substrates.jax import bijectors as tfb
    from tensorflow_probability.substrates.jax import distributions as tfd

    from ..bijectors import Chain
    from ..distributions import Flow
    if isinstance(dist_or_bijector, tfd.TransformedDistribution):
        if base is not None:
            raise TypeError(f"{_WHERE}: base must be None with a TransformedDistribution (it "
                            f"has its own)")
        base, bij = dist_or_bijector.distribution, dist_or_bijector.bijector
    elif isinstance(dist_or_bijector, tfb.Bijector):
        if base is None:
            raise TypeError(f"{_WHERE}: a bare bijector needs base= (a TFP Independent(Normal, "
                            f"1) or MultivariateNormalDiag)")
        bij = dist_or_bijector
    else:
        raise TypeError(f"{_WHERE}: expected a tfp.substrates.jax TransformedDistribution or "
                        f"Bijector, got {type(dist_or_bijector).__name__}")
    if not isinstance(base, tfd.Distribution):
        raise TypeError(f"{_WHERE}: base must be a TFP distribution, got {type(base).__name__}")
    refflow_base, dim = _base(base)
    layer = _convert(bij, dim)
    if type(layer) is not Chain:
        layer = Chain([layer])
    return Flow(refflow_base, layer)
