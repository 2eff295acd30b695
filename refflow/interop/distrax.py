r"""Import a distrax flow as the equivalent refflow ``Flow`` (same weights, maps and direction).

:func:`from_distrax` reads a ``distrax.Transformed`` distribution (or a bare bijector plus a
``base``) layer by layer and builds the refflow :class:`~refflow.Flow` that computes the same
log-density and the same samples from the same base noise, in float64. JAX, distrax and
equinox are imported inside the functions only: ``import refflow`` never needs them.

Conventions bridged (distrax 0.1.9, read from its sources, ``distrax/_src``):

==========================================  ================================================
distrax                                     refflow
==========================================  ================================================
``Transformed(base, b)``: samples are       ``Flow(base, B)`` with ``B.forward`` =
``b.forward(z)`` (base -> data, as refflow) ``b.forward`` (no direction flip)
``Chain([b1, ..., bn])`` applies ``bn``     ``Chain([Bn, ..., B1])`` (refflow applies its
first (``y = b1(...(bn(x)))``)              list in order)
``Inverse(b)``                              ``Inverse(B)`` (simplified: ``Inverse(Inverse(B))
                                            = B``, a chain inverted layer by layer)
``Block(b, 1)`` of a scalar bijector        the elementwise refflow layer (log-dets summed
                                            over the event, as ``Block`` does); ``Block(b, 0)``
                                            is ``b``
``ScalarAffine(shift, log_scale=)``:        ``Affine``: ``shift``, ``log_scale`` broadcast to
``y = x exp(log_scale) + shift``            ``(dim,)``; ``scale=`` gives ``log_scale =
                                            log(scale)`` (positive scales only)
``Shift(shift)``                            ``Affine`` with ``log_scale = 0``
``Tanh``, ``Sigmoid``                       ``Tanh``, ``Sigmoid``
``DiagLinear(diag)``                        ``Affine`` with ``log_scale = log(diag)``
                                            (positive diagonals only)
``LowerUpperTriangularAffine(M, b)``:       ``LULinear(upper_diag="raw")`` with
``y = L U x + b``, ``L = I + tril(M, -1)``, ``lower_entries = M[tril(-1)]``,
``U = triu(M)``                             ``upper_entries = M[triu(1)]``,
                                            ``unconstrained_upper_diag = diag(M)``, ``bias = b``
``TriangularLinear(A, is_lower)``:          ``LULinear(upper_diag="raw")`` with the raw
``y = tri(A) x``                            diagonal on the triangular factor (``diagonal=
                                            "lower"`` for a lower ``A``), the other unit
                                            factor's free entries zero, ``bias = 0``
``UnconstrainedAffine(A, b)``:              ``LULinear(permutation=p, upper_diag="raw")`` from
``y = A x + b``, log-det ``slogdet(A)``     the partially pivoted factorisation ``A = P L U``
                                            (``scipy.linalg.lu``; the permutation matrices
                                            that stand for permutations factor exactly); the
                                            map from ``A`` to ``(L, U)`` is not a copy, so
                                            gradients are with respect to ``L`` and ``U``
``MaskedCoupling(mask, conditioner, fn)``   ``AffineCoupling(scale="exp",
with ``fn(p) = ScalarAffine(shift=p[..],    scale_side="sampling")``, refflow's mask
log_scale=p[..])``                          ``~mask`` (distrax: True = unchanged)
``MaskedCoupling`` with ``fn(p) =           ``Inverse(SplineCoupling(parameterization=
RationalQuadraticSpline(p[..], a, b,        "distrax", bound=(b - a) / 2, min_bin_width =
boundary_slopes, min_bin_size,              min_bin_height = min_bin_size, min_derivative =
min_knot_slope))``                          min_knot_slope, boundary_slopes))`` (refflow's
                                            spline coupling applies the spline in its
                                            density direction); ``a != -b`` is the spline on
                                            ``[-B, B]`` between ``Affine`` shifts by
                                            ``-+(a + b) / 2`` (the conditioner's first bias
                                            takes ``W c``, as it reads the shifted input)
the conditioner: an ``equinox.nn.MLP``      the coupling's ``MLP``: hidden weights and biases
(``relu``, ``tanh``, ``elu``, ``softplus``  copied; the first layer's columns of the
activations, identity final activation,     transformed coordinates (which read
biases), reading ``where(mask, x, 0)``      ``where(mask, x, 0) = 0``) dropped; the last
                                            layer's rows permuted to refflow's layout
``Independent(Normal(loc, scale), 1)``,     ``DiagNormal`` with ``log_scale = log(scale)``
``MultivariateNormalDiag(loc, scale_diag)``
==========================================  ================================================

How ``fn`` (an opaque callable) is read: it is called once on a probe vector ``p`` of
distinct random values, the size of the conditioner's output; the ``ScalarAffine`` it returns
keeps ``shift`` and ``log_scale`` as given, and the arguments of the
``RationalQuadraticSpline`` constructor (which keeps only the knots) are recorded while ``fn``
runs (its ``__init__`` is wrapped for that call and restored after it, so splines constructed
by other threads at the same moment would be recorded too: import from one thread). Every parameter must be an entry of ``p`` (a selection: slicing, reshaping,
broadcasting); the selection found is checked on a second probe. ``fn`` that computes with
``p`` (``2 * p``, ``softplus(p)``, constants) is refused.

Not imported (each raises naming the class and the option; nothing is approximated):

- ``RationalQuadraticSpline`` outside a ``MaskedCoupling`` (``ValueError``): distrax keeps
  only its knots, not its raw ``params``, ``min_bin_size``, ``min_knot_slope`` or
  ``boundary_slopes``, so the map from raw parameters to knots cannot be read back.
- ``Lambda`` and any opaque callable (``NotImplementedError``): its function cannot be read;
  ``BijectorFromTFP`` (a TFP bijector inside distrax), ``GumbelCDF``,
  ``DiagPlusLowRankLinear``, ``SplitCoupling``: no importer yet (``NotImplementedError``).
- ``ValueError`` for an option refflow cannot reproduce: a conditioner that is not an
  ``equinox.nn.MLP`` (a plain function or a haiku/flax module: its weights cannot be read),
  a ``MaskedCoupling`` mask that is not one boolean vector or with ``inner_event_ndims`` other
  than 0, a scalar bijector on vector events outside ``Block(..., 1)``, negative scales, a
  spline with one bin, and so on.
"""

import numpy as np

from .common import (
    affine_layer, as_flow, centered, chain, diag_normal_base, invert, lu_layer, matrix, refuse,
    require, to_numpy, transformed_parts, unsupported, vector,
)

__all__ = ["from_distrax"]

_WHERE = "from_distrax"
_PEER = "distrax"
#: Grid on which the activation of an ``equinox.nn.MLP`` is identified (relu, tanh, elu,
#: softplus of refflow's MLP): agreement to ``_ACT_RTOL`` on every point, tails included.
_ACT_GRID = np.concatenate([np.linspace(-40.0, 40.0, 401), [-700.0, -3e-3, 3e-3, 700.0]])
_ACT_RTOL = 1e-14


def _require(where=_WHERE):
    return require(where, ("jax", "distrax"), "jax and distrax", "'jax[cpu]' distrax")


# --------------------------------------------------------------------------------- layers
def _scalar_affine(b, dim):
    """``ScalarAffine``: ``y = scale x + shift`` -> ``Affine``."""
    scale = to_numpy(b.scale)
    if np.any(scale <= 0):
        refuse(_WHERE, "ScalarAffine", "a negative or zero scale (refflow's Affine has "
                                       "exp(log_scale))")
    return affine_layer(dim, vector(_WHERE, b.shift, dim, "ScalarAffine", "shift"),
                        vector(_WHERE, b.log_scale, dim, "ScalarAffine", "log_scale"))


def _lower_upper(b, dim):
    """``LowerUpperTriangularAffine(M, b)``: ``y = L U x + b`` -> ``LULinear(upper_diag="raw")``
    with ``M``'s entries copied (``L = I + tril(M, -1)``, ``U = triu(M)``)."""
    m = matrix(_WHERE, b.upper, dim, "LowerUpperTriangularAffine")  # triu(M)
    low = matrix(_WHERE, b.lower, dim, "LowerUpperTriangularAffine")  # I + tril(M, -1)
    return lu_layer(_WHERE, dim, low, m, np.diagonal(m).copy(),
                    vector(_WHERE, b.bias, dim, "LowerUpperTriangularAffine", "bias"))


def _triangular(b, dim):
    """``TriangularLinear(A, is_lower)``: ``y = tri(A) x`` -> ``LULinear`` with the raw diagonal
    on the triangular factor and the other factor the identity."""
    a = matrix(_WHERE, b.matrix, dim, "TriangularLinear")
    zero = np.zeros((dim, dim))
    if b.is_lower:
        return lu_layer(_WHERE, dim, a, zero, np.diagonal(a).copy(), np.zeros(dim),
                        diagonal="lower")
    return lu_layer(_WHERE, dim, zero, a, np.diagonal(a).copy(), np.zeros(dim))


def _unconstrained(b, dim):
    """``UnconstrainedAffine(A, b)`` -> ``LULinear`` of ``A = P L U`` (partial pivoting)."""
    from scipy.linalg import lu
    a = matrix(_WHERE, b.matrix, dim, "UnconstrainedAffine")
    p, low, up = lu(a)
    if np.any(np.diagonal(up) == 0):
        refuse(_WHERE, "UnconstrainedAffine", "a singular matrix")
    # refflow's (P v)_i = v_{perm[i]}: W = M[perm]; scipy's A = P M, so perm[i] = argmax P[i]
    perm = np.argmax(p, axis=1).astype(np.int64)
    return lu_layer(_WHERE, dim, low, up, np.diagonal(up).copy(),
                    vector(_WHERE, b.bias, dim, "UnconstrainedAffine", "bias"), permutation=perm)


def _diag_linear(b, dim):
    diag = vector(_WHERE, b.diag, dim, "DiagLinear", "diag")
    if np.any(diag <= 0):
        refuse(_WHERE, "DiagLinear", "a negative or zero diagonal entry (refflow's Affine has "
                                     "exp(log_scale))")
    return affine_layer(dim, np.zeros(dim), np.log(diag))


# ------------------------------------------------------------------------ masked coupling
def _activation(mlp, where):
    """refflow's name of an ``equinox.nn.MLP``'s hidden activation, identified on a grid."""
    import jax
    import jax.numpy as jnp

    from ..nn import get_activation
    act = mlp.activation
    if any(isinstance(leaf, jax.Array) for leaf in jax.tree_util.tree_leaves(act)):
        refuse(_WHERE, where, "a conditioner with learnt activations")
    grid = jnp.asarray(_ACT_GRID)
    try:
        theirs = to_numpy(act(grid))
    except Exception:  # noqa: BLE001 - any failure means the activation is not elementwise
        refuse(_WHERE, where, "a conditioner activation that is not elementwise")
    for name in ("relu", "tanh", "elu", "softplus", "gelu"):
        mine = get_activation(name, where).value_and_derivative(_ACT_GRID.copy())[0]
        if theirs.shape == mine.shape and np.allclose(mine, theirs, rtol=_ACT_RTOL, atol=0.0):
            return name
    refuse(_WHERE, where, f"conditioner activation {getattr(act, '__name__', act)!r} (refflow "
                          f"imports relu, tanh, elu, softplus and exact gelu)")


def _mlp_layout(mlp, where):
    """``(weights, biases, activation)`` of the conditioner, an ``equinox.nn.MLP``."""
    try:
        import equinox as eqx
    except ImportError:  # pragma: no cover - exercised only without equinox
        eqx = None
    if eqx is None or not isinstance(mlp, eqx.nn.MLP):
        name = getattr(mlp, "__name__", type(mlp).__name__)
        refuse(_WHERE, where, f"conditioner {name!r} of type {type(mlp).__name__}: its weights "
                              f"cannot be read (refflow imports an equinox.nn.MLP conditioner; a "
                              f"plain function, a haiku or a flax module is opaque)")
    if getattr(mlp, "scan", False):
        refuse(_WHERE, where, "a conditioner MLP built with scan=True")
    if mlp.in_size == "scalar" or mlp.out_size == "scalar":
        refuse(_WHERE, where, "a conditioner MLP with a scalar input or output")
    probe = np.linspace(-3.0, 3.0, 7)
    final = to_numpy(mlp.final_activation(probe)) if mlp.out_size != "scalar" else None
    if final is None or final.shape != probe.shape or not np.array_equal(final, probe):
        refuse(_WHERE, where, "a conditioner whose final activation is not the identity")
    act = _activation(mlp, where) if mlp.depth > 0 else "relu"
    weights, biases = [], []
    for lin in mlp.layers:
        if not lin.use_bias or lin.bias is None:
            refuse(_WHERE, where, "a conditioner linear layer without bias")
        weights.append(to_numpy(lin.weight))
        biases.append(to_numpy(lin.bias))
    return weights, biases, act


class _RecordSplineArguments:
    """While active, the arguments of every ``distrax.RationalQuadraticSpline`` constructed are
    appended to ``self.calls`` (distrax keeps only the knots it computes from them)."""

    def __enter__(self):
        import inspect

        import distrax
        cls = distrax.RationalQuadraticSpline
        original = cls.__init__
        signature = inspect.signature(original)
        self.calls, self._cls, self._original = [], cls, original

        def recording(obj, *args, **kwargs):
            bound = signature.bind(obj, *args, **kwargs)
            bound.apply_defaults()
            self.calls.append({k: v for k, v in bound.arguments.items() if k != "self"})
            original(obj, *args, **kwargs)

        cls.__init__ = recording
        return self

    def __exit__(self, *exc):
        self._cls.__init__ = self._original
        return False


def _selection(values, probe, where, what):
    """Indices ``idx`` with ``values == probe[idx]`` exactly (``probe`` has distinct entries);
    refuses when some value is not an entry of ``probe``."""
    values = to_numpy(values)
    order = np.argsort(probe)
    pos = np.searchsorted(probe[order], values.ravel())
    pos = np.clip(pos, 0, probe.size - 1)
    idx = order[pos]
    if not np.array_equal(probe[idx], values.ravel()):
        refuse(_WHERE, where, f"an inner bijector function whose {what} is not a selection of "
                              f"the conditioner's output (it computes with it: a scaling, an "
                              f"offset, a nonlinearity or a constant)")
    return idx.reshape(values.shape)


def _inner_layout(fn, n_out, dim, where):
    """Read the inner bijector function ``fn`` of a ``MaskedCoupling`` on probe vectors.

    Returns ``(options, index)``: ``options`` the inner layer's kind and settings,
    ``index`` an int array ``(dim, P)``: entry ``[j, q]`` is the conditioner output that
    becomes refflow parameter ``q`` of coordinate ``j`` (``[shift, log_scale]`` for the
    affine inner bijector, ``[widths | heights | slopes]`` for the spline).
    """
    import distrax
    import jax.numpy as jnp
    rng = np.random.default_rng(12345)
    layouts = []
    for _ in range(2):  # the selection must be the same on two unrelated probes
        probe = rng.permutation(np.arange(1, n_out + 1)) * 1e-3 + rng.uniform(-1e-4, 1e-4,
                                                                             n_out)
        with _RecordSplineArguments() as rec:
            try:
                inner = fn(jnp.asarray(probe))
            except Exception as exc:  # noqa: BLE001 - report what the callable raised
                refuse(_WHERE, where, f"an inner bijector function that fails on a conditioner "
                                      f"output of shape ({n_out},) ({type(exc).__name__}: {exc})")
        while type(inner) is distrax.Block and inner.ndims == 0:
            inner = inner.bijector
        if type(inner) is distrax.ScalarAffine:
            if rec.calls:
                refuse(_WHERE, where, "an inner bijector function that builds splines it does "
                                      "not return")
            shift = np.broadcast_to(to_numpy(inner.shift), (dim,))
            log_scale = np.broadcast_to(to_numpy(inner.log_scale), (dim,))
            idx = np.stack([_selection(shift, probe, where, "ScalarAffine shift"),
                            _selection(log_scale, probe, where, "ScalarAffine log_scale")],
                           axis=1)
            opts = {"kind": "affine"}
        elif type(inner) is distrax.RationalQuadraticSpline:
            if len(rec.calls) != 1:
                refuse(_WHERE, where, "an inner bijector function that builds several splines")
            args = rec.calls[0]
            params = to_numpy(args["params"])
            if params.ndim == 0 or params.shape[-1] != 3 * inner.num_bins + 1:
                refuse(_WHERE, where, f"spline parameters of shape {params.shape}")
            try:
                params = np.broadcast_to(params, (dim, params.shape[-1]))
            except ValueError:
                refuse(_WHERE, where, f"spline parameters of shape {params.shape} for {dim} "
                                      f"coordinates (a batch of splines)")
            idx = _selection(params, probe, where, "RationalQuadraticSpline params")
            opts = {"kind": "spline", "n_bins": int(inner.num_bins),
                    "range": (float(args["range_min"]), float(args["range_max"])),
                    "boundary_slopes": str(args["boundary_slopes"]),
                    "min_bin_size": float(args["min_bin_size"]),
                    "min_knot_slope": float(args["min_knot_slope"])}
            if opts["n_bins"] < 2:
                refuse(_WHERE, "RationalQuadraticSpline", "a spline with one bin (refflow's "
                                                          "splines have at least 2)")
        else:
            unsupported(_WHERE, _PEER, inner, "as the inner bijector of a MaskedCoupling; "
                                              "refflow imports ScalarAffine(shift=, log_scale=) "
                                              "and RationalQuadraticSpline")
        layouts.append((opts, idx))
    (opts, idx), (opts2, idx2) = layouts
    if opts != opts2 or not np.array_equal(idx, idx2):
        refuse(_WHERE, where, "an inner bijector function whose parameters are not the same "
                              "selection of the conditioner's output on every input")
    return opts, idx


def _masked_coupling(b, dim):
    """``MaskedCoupling`` -> refflow coupling layer ``B`` with ``B.forward = b.forward``."""
    from ..bijectors import AffineCoupling, Inverse, SplineCoupling
    where = "MaskedCoupling"
    if int(b._inner_event_ndims) != 0 or int(b._event_ndims) != 1:
        refuse(_WHERE, where, f"inner_event_ndims={b._inner_event_ndims}, event_ndims="
                              f"{b._event_ndims} (refflow imports scalar inner bijectors on "
                              f"vector events)")
    keep = np.asarray(b.mask)
    if keep.dtype != bool or keep.shape != (dim,):
        refuse(_WHERE, where, f"a mask of shape {keep.shape} (refflow imports one boolean mask "
                              f"of the event's shape ({dim},))")
    kept, moved = np.flatnonzero(keep), np.flatnonzero(~keep)
    if kept.size == 0 or moved.size == 0:
        refuse(_WHERE, where, "a mask that keeps every coordinate or none")
    weights, biases, act = _mlp_layout(b.conditioner, where)
    if weights[0].shape[1] != dim:
        refuse(_WHERE, where, f"a conditioner reading {weights[0].shape[1]} inputs (distrax "
                              f"feeds it the masked event, {dim} values)")
    opts, idx = _inner_layout(b.bijector, weights[-1].shape[0], dim, where)
    rows = idx[moved]  # (n_b, P): the transformed coordinates' conditioner outputs
    hidden = tuple(w.shape[0] for w in weights[:-1])
    mask = ~keep  # refflow: True = transformed
    common = dict(mask=mask, hidden=hidden, activation=act, rng=0)
    center = 0.0
    if opts["kind"] == "affine":
        layer = AffineCoupling(dim, scale="exp", scale_side="sampling", **common)
        perm = np.concatenate([rows[:, 0], rows[:, 1]])  # refflow's [t (n_b) | u (n_b)]
    else:
        lo, hi = opts["range"]
        center, half = 0.5 * (lo + hi), 0.5 * (hi - lo)
        try:
            layer = SplineCoupling(dim, n_bins=opts["n_bins"], parameterization="distrax",
                                   bound=half, min_bin_width=opts["min_bin_size"],
                                   min_bin_height=opts["min_bin_size"],
                                   min_derivative=opts["min_knot_slope"],
                                   boundary_slopes=opts["boundary_slopes"], **common)
        except ValueError as exc:
            raise ValueError(f"{_WHERE}: RationalQuadraticSpline: its options are not "
                             f"reproducible ({exc})") from None
        perm = rows.reshape(-1)  # the same (n_b, [w | h | d]) layout
    weights[0] = weights[0][:, kept]  # the transformed coordinates are fed as zeros
    weights[-1], biases[-1] = weights[-1][perm], biases[-1][perm]
    for k, (w, bias) in enumerate(zip(weights, biases)):
        if layer.params[f"conditioner.w{k}"].shape != w.shape:
            refuse(_WHERE, where, f"conditioner layer {k} of shape {w.shape}")
        layer.params[f"conditioner.w{k}"] = w
        layer.params[f"conditioner.b{k}"] = bias
    if opts["kind"] == "affine":
        return layer
    if center != 0.0:  # the conditioner reads x_a - c: W (x_a - c + c) + b
        layer.params["conditioner.b0"] = biases[0] + weights[0] @ np.full(kept.size, center)
    return centered(Inverse(layer), dim, center)


# ------------------------------------------------------------------------------ dispatch
_SCALAR = ("ScalarAffine", "Shift", "Tanh", "Sigmoid", "RationalQuadraticSpline", "GumbelCDF")


def _convert(b, dim, elementwise=False):
    """The refflow bijector whose ``forward`` computes distrax's ``b.forward`` on ``(dim,)``
    events; ``elementwise`` inside ``Block(..., 1)``."""
    import distrax
    cls = type(b)
    name = cls.__name__
    if cls is distrax.Chain:
        return chain([_convert(x, dim, elementwise) for x in b.bijectors[::-1]])
    if cls is distrax.Inverse:
        return invert(_convert(b.bijector, dim, elementwise))
    if cls is distrax.Block:
        nd = int(b.ndims)
        if nd not in (0, 1) or (nd == 1 and elementwise) or \
                nd + int(b.bijector.event_ndims_in) != (0 if elementwise else 1):
            refuse(_WHERE, "Block", f"ndims={nd} around {type(b.bijector).__name__} (refflow "
                                    f"imports Block(scalar bijector, 1) on vector events)")
        return _convert(b.bijector, dim, elementwise or nd == 1)
    if name in _SCALAR and not elementwise:
        refuse(_WHERE, name, "a scalar bijector on vector events outside Block(..., 1) "
                             "(distrax would not sum its log-det over the event)")
    if not elementwise and int(b.event_ndims_in) != 1:
        refuse(_WHERE, name, f"event_ndims_in={b.event_ndims_in} (refflow imports flows on "
                             f"vector events)")
    if cls is distrax.ScalarAffine:
        return _scalar_affine(b, dim)
    if cls is distrax.Shift:
        return affine_layer(dim, vector(_WHERE, b.shift, dim, "Shift", "shift"), np.zeros(dim))
    if cls is distrax.Tanh:
        from ..bijectors import Tanh
        return Tanh(dim)
    if cls is distrax.Sigmoid:
        from ..bijectors import Sigmoid
        return Sigmoid(dim)
    if cls is distrax.RationalQuadraticSpline:
        refuse(_WHERE, name, "a spline outside a MaskedCoupling: distrax keeps only its knots, "
                             "not its raw params, min_bin_size, min_knot_slope or boundary_slopes, "
                             "so the map from raw parameters to knots cannot be read back")
    if cls is distrax.Lambda:
        unsupported(_WHERE, _PEER, b, "its functions are opaque callables")
    if cls is distrax.LowerUpperTriangularAffine:
        return _lower_upper(b, dim)
    if cls is distrax.TriangularLinear:
        return _triangular(b, dim)
    if cls is distrax.UnconstrainedAffine:
        return _unconstrained(b, dim)
    if cls is distrax.DiagLinear:
        return _diag_linear(b, dim)
    if cls is distrax.MaskedCoupling:
        return _masked_coupling(b, dim)
    unsupported(_WHERE, _PEER, b)


def _base(dist):
    """``(refflow base, dim)`` for ``Independent(Normal, 1)`` or ``MultivariateNormalDiag``."""
    import distrax
    if type(dist) is distrax.Independent and type(dist.distribution) is distrax.Normal \
            and int(dist.reinterpreted_batch_ndims) == 1:
        loc, scale = to_numpy(dist.distribution.loc), to_numpy(dist.distribution.scale)
    elif type(dist) is distrax.MultivariateNormalDiag:
        loc, scale = to_numpy(dist.loc), to_numpy(dist.scale_diag)
    else:
        unsupported(_WHERE, _PEER, dist, f"as a base distribution (event shape "
                                         f"{getattr(dist, 'event_shape', '?')}); refflow imports "
                                         f"Independent(Normal, 1) and MultivariateNormalDiag")
    return diag_normal_base(_WHERE, dist, loc, scale)


def from_distrax(dist_or_bijector, base=None):
    """The refflow :class:`~refflow.Flow` that computes exactly what a distrax flow computes.

    Parameters
    ----------
    dist_or_bijector : distrax.Transformed or distrax.Bijector
        A ``Transformed`` distribution (its own base is imported), or a bijector with ``base``
        given. Supported layers and bases: the table of :mod:`refflow.interop.distrax`.
    base : distrax distribution, optional
        The base, required with a bare bijector (``Independent(Normal, 1)`` or
        ``MultivariateNormalDiag``); must be None with a ``Transformed``.

    Returns
    -------
    refflow.Flow
        float64 copies of distrax's parameters. ``model.log_prob(x)`` equals
        ``dist.log_prob(x)`` and ``model.bijector.forward(z)[0]`` equals
        ``dist.bijector.forward(z)``.

    Raises
    ------
    TypeError
        Not a distrax ``Transformed`` or ``Bijector`` (or a bijector without ``base``).
    NotImplementedError
        A distrax layer whose refflow twin does not exist yet (or an opaque ``Lambda``),
        naming it.
    ValueError
        An option refflow cannot reproduce, naming the class and the option.

    Examples
    --------
    >>> import jax.numpy as jnp, distrax                                    # doctest: +SKIP
    >>> from refflow.interop import from_distrax                            # doctest: +SKIP
    >>> base = distrax.MultivariateNormalDiag(jnp.zeros(2), jnp.ones(2))    # doctest: +SKIP
    >>> flow = distrax.Transformed(base, distrax.Block(distrax.Tanh(), 1))  # doctest: +SKIP
    >>> model = from_distrax(flow)                                          # doctest: +SKIP
    """
    _, distrax = _require()
    base, bij = transformed_parts(_WHERE, _PEER, dist_or_bijector, base, distrax.Transformed,
                                  distrax.Bijector, distrax.Distribution)
    refflow_base, dim = _base(base)
    return as_flow(refflow_base, _convert(bij, dim))
