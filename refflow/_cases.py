"""Registry of every public bijector with randomised parameters and valid input samplers.

``CASES[id](rng) -> (bijector, sample_z, sample_x, sample_context)``, where ``sample_z(rng, n)``
draws ``n`` points in the domain of ``forward``, ``sample_x(rng, n)`` in the domain of
``inverse`` and ``sample_context(rng, n)`` contexts (``None`` for an unconditional layer). The
samplers keep away from points where a map is not differentiable (LeakyReLU's kink, a spline's
knots) and from domain edges, so that central differences stay inside the domain. Where those
points move with the context (a conditional spline's knots), pass the rows' contexts too:
``sample_z(rng, n, context)``; every sampler takes that optional argument.

The property tests (``tests/test_properties.py``) and ``python -m refflow demo`` run the oracle
over every case; ``tests/test_registry.py`` fails when a public bijector has no case here.
"""

import numpy as np

from . import bijectors as B
from .testing import check_bijector, check_vjp

__all__ = ["CASES", "oracle_reports"]


def _randomize(bijector, rng, scale=0.5):
    for key, value in bijector.params.items():
        bijector.params[key] = rng.normal(0.0, scale, size=value.shape)
    return bijector


def _normal(scale=1.0, loc=0.0):
    return lambda rng, n, dim: loc + scale * rng.standard_normal((n, dim))


def _uniform(low, high):
    return lambda rng, n, dim: rng.uniform(low, high, size=(n, dim))


def _lognormal(scale=1.0):
    return lambda rng, n, dim: np.exp(scale * rng.standard_normal((n, dim)))


def _away_from_zero(margin=0.1, scale=1.0):
    def sample(rng, n, dim):
        return rng.choice([-1.0, 1.0], size=(n, dim)) * (margin + scale * np.abs(rng.standard_normal((n, dim))))
    return sample


def _context_sampler(context_dim):
    """Standard normal contexts of ``context_dim`` columns, or None for an unconditional layer."""
    if context_dim is None:
        return None
    return lambda r, n: np.random.default_rng(r).standard_normal((n, context_dim))


def _case(build, sample_z, sample_x):
    """Wrap a builder ``build(rng) -> bijector`` and two ``(rng, n, dim)`` samplers.

    Conditional bijectors get standard normal contexts of their ``context_dim``.
    """
    def factory(rng):
        rng = np.random.default_rng(rng)
        bijector = build(rng)
        dim = bijector.dim
        return (bijector,
                lambda r, n, context=None: sample_z(np.random.default_rng(r), n, dim),
                lambda r, n, context=None: sample_x(np.random.default_rng(r), n, dim),
                _context_sampler(bijector.context_dim))
    return factory


def _knot_safe_case(build, sample_z, sample_x, margin=1e-3):
    """A case for a spline layer: rows with a coordinate within ``margin`` (relative) of one of
    its knots are drawn again, so that central differences never straddle a knot or ``±B``,
    where the derivative of the log-det jumps. Uses the layer's ``_input_knots``.

    A conditional layer's knots depend on the context: its samplers keep row ``i`` away from the
    knots of ``context[i]`` when given the rows' contexts (without them they draw plainly).

    The margin covers parameter perturbations too: ``check_vjp`` moves each conditioner weight
    (and each context entry) by up to ``6e-6 max(1, |w|)``, and the knots move with it (measured
    sensitivities up to ~10 per unit weight), i.e. by up to ~1e-4 for these cases."""
    def factory(rng):
        rng = np.random.default_rng(rng)
        bijector = build(rng)
        dim, conditional = bijector.dim, bijector.context_dim is not None

        def safe(sample, direction):
            def draw(r, n, context=None):
                r = np.random.default_rng(r)
                v = sample(r, n, dim)
                if conditional and context is None:
                    return v
                for _ in range(100):
                    knots = bijector._input_knots(direction, v, context)
                    gap = np.abs(v[:, :, None] - knots) / np.maximum(1.0, np.abs(v[:, :, None]))
                    near = (gap < margin).any(axis=(1, 2))
                    if not near.any():
                        return v
                    v[near] = sample(r, int(near.sum()), dim)
                raise RuntimeError("could not draw points away from the knots")
            return draw

        return (bijector, safe(sample_z, "forward"), safe(sample_x, "inverse"),
                _context_sampler(bijector.context_dim))
    return factory


def _away_from_zero_weights(bijector, rng, scale=0.5, floor=0.05):
    """Randomise like ``_randomize``, but the monotonic networks' raw weights (used as
    ``|w|``) at least ``floor`` away from 0, where ``|w|`` has its kink."""
    _randomize(bijector, rng, scale)
    for key, value in bijector.params.items():
        if key.startswith("network.w"):
            bijector.params[key] = np.sign(value) * (floor + np.abs(value))
    return bijector


def _away_from_zero_raw(bijector, key, floor=0.05):
    """``params[key]`` moved at least ``floor`` away from 0 (a raw value used as ``|a|``)."""
    value = bijector.params[key]
    bijector.params[key] = np.where(value < 0, -1.0, 1.0) * (floor + np.abs(value))
    return bijector


def _kink_free_planar_case(margin=1e-3):
    """normflows' leaky-ReLU Planar: rows whose pre-activation ``w^T z + b`` (forward) or
    ``w^T x + b`` (inverse: the same sign) lies within ``margin`` of the kink at 0 are drawn
    again, so that central differences never straddle it."""
    def factory(rng):
        rng = np.random.default_rng(rng)
        layer = _randomize(B.Planar(3, activation="leaky_relu", rng=rng), rng, 0.7)

        def safe(r, n, context=None):
            r = np.random.default_rng(r)
            v = 1.5 * r.standard_normal((n, 3))
            for _ in range(100):
                p = v @ layer.params["w"] + layer.params["b"][0]
                near = np.abs(p) < margin * np.maximum(1.0, np.abs(v).max(axis=1))
                if not near.any():
                    return v
                v[near] = 1.5 * r.standard_normal((int(near.sum()), 3))
            raise RuntimeError("could not draw points away from the kink")
        return layer, safe, safe, None
    return factory


def _kink_safe_case(build, sample_z, sample_x, margin=1e-3):
    """A case for a layer whose transformer has kinks in a second derivative (ELU units, the
    softclip's ``|y|``): rows with a pre-activation within ``margin`` of its kink are drawn
    again, so that central differences of log-dets never straddle one. Uses the layer's
    ``_kink_distance(direction, v)``. The margin covers the oracle's perturbations (inputs and
    weights move by ``6e-6 max(1, |v|)``, pre-activations by at most ~1e-4 here)."""
    def factory(rng):
        rng = np.random.default_rng(rng)
        bijector = build(rng)
        dim = bijector.dim

        def safe(sample, direction):
            def draw(r, n, context=None):
                # the samplers' signature; kink-safe cases are unconditional, so no context
                r = np.random.default_rng(r)
                v = sample(r, n, dim)
                for _ in range(200):
                    near = bijector._kink_distance(direction, v) < margin
                    if not near.any():
                        return v
                    v[near] = sample(r, int(near.sum()), dim)
                raise RuntimeError("could not draw points away from the kinks")
            return draw

        return bijector, safe(sample_z, "forward"), safe(sample_x, "inverse"), None
    return factory


def _image_case(build, sample_z, sample_w):
    """A case whose inverse is defined on a bounded image only (Pyro's BlockAutoregressive
    direction): ``x`` is drawn as ``forward(w)`` for ``w`` from ``sample_w``, so it lies inside
    the range, at an open margin that central differences cannot cross."""
    def factory(rng):
        rng = np.random.default_rng(rng)
        bijector = build(rng)
        dim = bijector.dim

        def sample_x(r, n, context=None):
            return bijector.forward(sample_w(np.random.default_rng(r), n, dim))[0]
        return (bijector, lambda r, n, context=None: sample_z(np.random.default_rng(r), n, dim),
                sample_x, None)
    return factory


def _raw_diagonal(layer, rng):
    _randomize(layer, rng)
    layer.params["unconstrained_upper_diag"] = (rng.choice([-1.0, 1.0], size=layer.dim)
                                                * rng.uniform(0.5, 1.5, size=layer.dim))
    return layer


def _pyro_clamped(layer, rng):
    _randomize(layer, rng)
    b = layer.params[f"made.b{len(layer.made.hidden)}"]
    b[1::2] += [0.0, 8.0, -9.0]        # u biases (MADE outputs are (mu_i, u_i) pairs)
    return layer


def _batchnorm(rng, training=False, gamma="exp"):
    layer = _randomize(B.BatchNorm(3, gamma=gamma), rng)
    if gamma == "pyro":  # relu(gamma) + 1e-6: positive raw values, away from relu's kink
        layer.params["gamma"] = 0.2 + np.abs(layer.params["gamma"])
    layer.buffers["running_mean"][...] = rng.normal(0.0, 1.0, size=3)
    layer.buffers["running_var"][...] = rng.uniform(0.5, 2.0, size=3)
    return layer.train(training)


CASES = {
    "affine": _case(lambda r: _randomize(B.Affine(3), r), _normal(), _normal(2.0)),
    "exp": _case(lambda r: B.Exp(3), _normal(), _lognormal()),
    "sigmoid": _case(lambda r: B.Sigmoid(3), _normal(2.0), _uniform(0.02, 0.98)),
    "logit": _case(lambda r: B.Logit(3), _uniform(0.02, 0.98), _normal(2.0)),
    "logit_alpha": _case(lambda r: B.Logit(3, alpha=0.05), _uniform(0.0, 1.0), _normal(2.0)),
    "tanh": _case(lambda r: B.Tanh(3), _normal(1.5), _uniform(-0.95, 0.95)),
    "softclip": _knot_safe_case(lambda r: B.Softclip(3, bound=2.0), _normal(3.0),
                                _uniform(-1.9, 1.9)),
    "leaky_tanh": _knot_safe_case(lambda r: B.LeakyTanh(3, max_val=1.5), _normal(2.0),
                                  _normal(1.5)),
    "softplus": _case(lambda r: B.Softplus(3), _normal(2.0), _lognormal()),
    "leaky_relu": _case(lambda r: B.LeakyReLU(3, negative_slope=0.3),
                        _away_from_zero(), _away_from_zero()),
    "leaky_relu_default": _case(lambda r: B.LeakyReLU(3), _away_from_zero(), _away_from_zero()),
    "permute": _case(lambda r: B.Permute(4, rng=r), _normal(), _normal()),
    "reverse": _case(lambda r: B.Reverse(4), _normal(), _normal()),
    "lu_linear": _case(lambda r: _randomize(B.LULinear(4, permutation="random", rng=r), r),
                       _normal(), _normal()),
    "lu_linear_softplus": _case(
        lambda r: _randomize(B.LULinear(4, upper_diag="softplus", rng=r), r), _normal(), _normal()),
    "householder": _case(lambda r: B.Householder(4, n_reflections=3, rng=r), _normal(), _normal()),
    "actnorm": _case(lambda r: _randomize(B.ActNorm(3, initialized=True), r), _normal(), _normal()),
    "batchnorm_eval": _case(_batchnorm, _normal(), _normal(1.5, 0.5)),
    "batchnorm_eval_pyro": _case(lambda r: _batchnorm(r, gamma="pyro"), _normal(),
                                 _normal(1.5, 0.5)),
    "chain": _case(
        lambda r: B.Chain([
            _randomize(B.Affine(3), r),
            _randomize(B.LULinear(3, rng=r), r),
            B.Householder(3, n_reflections=2, rng=r),
            B.Softplus(3),
        ]),
        _normal(), _lognormal(0.5)),
    # Two conditional layers around unconditional ones: the Chain adds up their context
    # cotangents and passes no context to the others.
    "chain_conditional": _case(
        lambda r: B.Chain([
            _randomize(B.MaskedAffineAutoregressive(
                3, hidden=(8,), scale="softclip", context_dim=2, rng=r), r),
            B.Reverse(3),
            _randomize(B.AffineCoupling(
                3, hidden=(8,), activation="tanh", scale="sigmoid", context_dim=2, rng=r), r),
            _randomize(B.LULinear(3, rng=r), r),
        ]),
        _normal(), _normal()),
    # The paper's unbounded "exp" log-scale with tanh hidden units: |u| stays bounded by the
    # output weights. With relu, sequential sampling can compound (x_2 ~ 1e4 drives u_3 ~ -240,
    # so x_3 = z_3 e^-240 + mu_3 rounds to mu_3): invertible on paper, not in float64.
    "maf": _case(lambda r: _randomize(B.MaskedAffineAutoregressive(
        4, hidden=(10, 10), activation="tanh", rng=r), r), _normal(), _normal()),
    "maf_relu_softclip": _case(lambda r: _randomize(B.MaskedAffineAutoregressive(
        4, hidden=(10, 10), scale="softclip", rng=r), r), _normal(), _normal()),
    "maf_softplus_reverse_equal": _case(
        lambda r: _randomize(B.MaskedAffineAutoregressive(
            4, hidden=(9,), order="reverse", hidden_degrees="equal", scale="softplus", rng=r), r),
        _normal(), _normal()),
    "maf_conditional_random": _case(
        lambda r: _randomize(B.MaskedAffineAutoregressive(
            3, hidden=(8, 8), order="random", hidden_degrees="random", scale="softclip",
            context_dim=2, rng=r), r),
        _normal(), _normal()),
    # scale_side="density": zuko's MAF (softclip) and nflows' (softplus) convention.
    "maf_density_softclip_conditional": _case(
        lambda r: _randomize(B.MaskedAffineAutoregressive(
            4, hidden=(10, 10), scale="softclip", scale_side="density", context_dim=2, rng=r), r),
        _normal(), _normal()),
    "maf_density_softplus_reverse": _case(
        lambda r: _randomize(B.MaskedAffineAutoregressive(
            3, hidden=(8,), order="reverse", scale="softplus", scale_side="density", rng=r), r),
        _normal(), _normal()),
    "iaf": _case(lambda r: B.Inverse(_randomize(B.MaskedAffineAutoregressive(
        3, hidden=(8,), scale="tanh", rng=r), r)), _normal(), _normal()),
    # FlowJAX's MAF layer: softplus(u + softplus^-1(0.99)) + 0.01, scale on the density side
    "maf_density_flowjax": _case(
        lambda r: _randomize(B.MaskedAffineAutoregressive(
            4, hidden=(10, 10), scale="flowjax", scale_side="density", rng=r), r),
        _normal(), _normal()),
    # Pyro's AffineAutoregressive (an IAF): log-scale clipped to [-5, 3]; the output biases of
    # u push coordinate 1 above 3 and coordinate 2 below -5 (|u - bias| ~ 1 here), so the clip's
    # flat parts are exercised as well as its identity part
    "iaf_pyro_clamp": _case(lambda r: B.Inverse(_pyro_clamped(B.MaskedAffineAutoregressive(
        3, hidden=(8,), order="random", scale="pyro-clamp", scale_side="density", rng=r), r)),
        _normal(), _normal()),
    # Pyro's AffineAutoregressive(stable=True): y = sigmoid(u + 2) x + (1 - sigmoid(u + 2)) mu
    "iaf_pyro_stable": _case(lambda r: B.Inverse(_randomize(B.MaskedAffineAutoregressive(
        3, hidden=(8, 8), scale="sigmoid-nofloor", scale_side="density", stable=True,
        rng=r), r)), _normal(), _normal()),
    "maf_stable_flowjax_conditional": _case(
        lambda r: _randomize(B.MaskedAffineAutoregressive(
            3, hidden=(8,), scale="flowjax", stable=True, context_dim=2, rng=r), r),
        _normal(), _normal()),
    # zuko's LULinearTransform: raw diagonal (either sign, kept away from 0) on L, unit U
    "lu_linear_zuko_raw_lower": _case(lambda r: _raw_diagonal(B.LULinear(
        4, upper_diag="raw", diagonal="lower"), r), _normal(), _normal()),
    # normflows' Invertible1x1Conv(use_lu=True): fixed signs times exp(log_S) on U
    "lu_linear_normflows_signs": _case(lambda r: _randomize(B.LULinear(
        4, permutation="random", signs=[1.0, -1.0, -1.0, 1.0], rng=r), r), _normal(), _normal()),
    "matrix_exponential": _case(lambda r: _randomize(B.MatrixExponential(4), r, 0.4),
                                _normal(), _normal()),
    "rotation": _case(lambda r: _randomize(B.Rotation(4), r, 1.0), _normal(), _normal()),
    "triangular_affine": _case(lambda r: _randomize(B.TriangularAffine(4), r),
                               _normal(), _normal()),
    "triangular_affine_upper_weight_norm": _case(
        lambda r: _randomize(B.TriangularAffine(3, lower=False, weight_normalization=True), r),
        _normal(), _normal()),
    "additive_coupling": _case(
        lambda r: _randomize(B.AdditiveCoupling(4, hidden=(8,), activation="tanh", rng=r), r),
        _normal(), _normal()),
    "affine_coupling": _case(
        lambda r: _randomize(B.AffineCoupling(4, hidden=(8, 8), scale="sigmoid", rng=r), r),
        _normal(), _normal()),
    # normflows' AffineCouplingBlock(scale_map="sigmoid"): scale 1 / sigmoid(u + 2)
    "affine_coupling_sigmoid_reciprocal": _case(
        lambda r: _randomize(B.AffineCoupling(
            4, hidden=(8,), scale="sigmoid-reciprocal", rng=r), r),
        _normal(), _normal()),
    "affine_coupling_conditional": _case(
        lambda r: _randomize(B.AffineCoupling(
            5, mask=np.array([True, False, True, False, True]), hidden=(8,), activation="elu",
            context_dim=3, rng=r), r),
        _normal(), _normal()),
    "affine_coupling_density": _case(
        lambda r: _randomize(B.AffineCoupling(
            4, hidden=(8, 8), scale="sigmoid", scale_side="density", rng=r), r),
        _normal(), _normal()),
    "affine_coupling_density_conditional": _case(
        lambda r: _randomize(B.AffineCoupling(
            5, mask=np.array([False, True, False, True, True]), hidden=(8,), activation="tanh",
            scale="softclip", scale_side="density", context_dim=2, rng=r), r),
        _normal(), _normal()),
    "rqs_durkan": _knot_safe_case(
        lambda r: _randomize(B.RationalQuadraticSpline(3, n_bins=5), r, 1.0), _normal(2.0), _normal(2.0)),
    "rqs_zuko": _knot_safe_case(
        lambda r: _randomize(B.RationalQuadraticSpline(3, n_bins=4, parameterization="zuko"), r, 1.0),
        _normal(3.0), _normal(3.0)),
    "rqs_distrax": _knot_safe_case(
        lambda r: _randomize(B.RationalQuadraticSpline(
            2, n_bins=3, parameterization="distrax", bound=2.0), r, 1.0), _normal(2.0), _normal(2.0)),
    # identity tails with boundary slopes other than 1 (Pyro's quadratic spline, FlowJAX's):
    # samples on both sides of +-B (the knot-safe draw keeps them off +-B itself)
    "rqs_pyro": _knot_safe_case(
        lambda r: _randomize(B.RationalQuadraticSpline(3, n_bins=5, parameterization="pyro",
                                                       bound=2.0), r, 1.0),
        _normal(2.0), _normal(2.0)),
    "rqs_flowjax": _knot_safe_case(
        lambda r: _randomize(B.RationalQuadraticSpline(3, n_bins=4, parameterization="flowjax",
                                                       bound=1.5), r, 1.0),
        _normal(1.5), _normal(1.5)),
    "spline_coupling_flowjax": _knot_safe_case(
        lambda r: _randomize(B.SplineCoupling(4, hidden=(8,), n_bins=3, activation="tanh",
                                              parameterization="flowjax", bound=2.0, rng=r), r),
        _normal(2.0), _normal(2.0)),
    "spline_autoregressive_pyro": _knot_safe_case(
        lambda r: _randomize(B.MaskedSplineAutoregressive(
            3, hidden=(8,), n_bins=4, activation="tanh", parameterization="pyro", bound=2.0,
            rng=r), r), _normal(2.0), _normal(2.0)),
    # end_slopes="learned": every derivative learned, identity tails (slope jumps at +-B)
    "rqs_durkan_learned_end_slopes": _knot_safe_case(
        lambda r: _randomize(B.RationalQuadraticSpline(2, n_bins=4, bound=1.5,
                                                       end_slopes="learned"), r, 1.0),
        _normal(1.5), _normal(1.5)),
    "spline_coupling_zuko_learned_end_slopes": _knot_safe_case(
        lambda r: _randomize(B.SplineCoupling(3, hidden=(8,), n_bins=3, activation="tanh",
                                              parameterization="zuko", bound=2.0,
                                              end_slopes="learned", rng=r), r),
        _normal(2.0), _normal(2.0)),
    # circular splines on [-pi, pi]: learned equal end slopes; zuko's map after its shift
    "circular_spline_distrax": _knot_safe_case(
        lambda r: _randomize(B.CircularSpline(3, n_bins=5), r, 1.0),
        _uniform(-np.pi, np.pi), _uniform(-np.pi, np.pi)),
    "circular_spline_zuko_shift": _knot_safe_case(
        lambda r: _randomize(B.CircularSpline(2, n_bins=4, parameterization="zuko", shift=True),
                             r, 1.0),
        _uniform(-np.pi, np.pi), _uniform(-np.pi, np.pi)),
    # Pyro's default spline (order="linear"); knots and split points kept away from
    "linear_rational_spline": _knot_safe_case(
        lambda r: _randomize(B.LinearRationalSpline(3, n_bins=4, bound=2.0), r, 1.0),
        _normal(2.0), _normal(2.0)),
    "spline_coupling_linear_rational": _knot_safe_case(
        lambda r: _randomize(B.SplineCoupling(3, hidden=(8,), n_bins=3, activation="tanh",
                                              spline="linear-rational", bound=2.0, rng=r), r),
        _normal(2.0), _normal(2.0)),
    "spline_autoregressive_linear_rational": _knot_safe_case(
        lambda r: _randomize(B.MaskedSplineAutoregressive(
            3, hidden=(8,), n_bins=3, activation="tanh", spline="linear-rational", bound=2.0,
            rng=r), r), _normal(2.0), _normal(2.0)),
    "spline_coupling": _knot_safe_case(
        lambda r: _randomize(B.SplineCoupling(4, hidden=(8,), n_bins=4, activation="tanh", rng=r), r),
        _normal(2.0), _normal(2.0)),
    "spline_autoregressive": _knot_safe_case(
        lambda r: _randomize(B.MaskedSplineAutoregressive(
            3, hidden=(8, 8), n_bins=4, activation="tanh", parameterization="zuko", bound=3.0,
            rng=r), r), _normal(2.0), _normal(2.0)),
    # conditional splines on the default ("durkan", fused) map: the context cotangent of the
    # coupling's conditioner and of the MADE's context inputs, through the fused kernels
    "spline_coupling_conditional": _knot_safe_case(
        lambda r: _randomize(B.SplineCoupling(
            5, mask=np.array([True, False, True, False, False]), hidden=(8,), n_bins=4,
            activation="tanh", context_dim=2, rng=r), r), _normal(2.0), _normal(2.0)),
    "spline_autoregressive_conditional": _knot_safe_case(
        lambda r: _randomize(B.MaskedSplineAutoregressive(
            3, hidden=(8, 8), n_bins=4, activation="tanh", order="random", context_dim=2,
            rng=r), r), _normal(2.0), _normal(2.0)),
    # Rezende & Mohamed family; Sylvester with both kinds of Q, m < dim and m = dim.
    "planar": _case(lambda r: _randomize(B.Planar(3, rng=r), r, 0.7), _normal(1.5), _normal(1.5)),
    "planar_leaky_relu": _kink_free_planar_case(),
    "planar_flowjax": _case(lambda r: _randomize(B.Planar(3, constraint="flowjax", rng=r), r, 0.7),
                            _normal(1.5), _normal(1.5)),
    "radial": _case(lambda r: _randomize(B.Radial(3, rng=r), r, 0.7), _normal(1.5), _normal(1.5)),
    # normflows' alpha = |alpha_raw|: the raw value kept away from its kink at 0
    "radial_normflows": _case(lambda r: _away_from_zero_raw(
        _randomize(B.Radial(3, parameterization="normflows", rng=r), r, 0.7), "alpha"),
        _normal(1.5), _normal(1.5)),
    "sylvester_householder": _case(
        lambda r: _randomize(B.Sylvester(4, m=3, n_reflections=2, rng=r), r, 0.7),
        _normal(1.5), _normal(1.5)),
    "sylvester_permutation": _case(
        lambda r: _randomize(B.Sylvester(4, m=2, q="permutation", rng=r), r, 0.7),
        _normal(1.5), _normal(1.5)),
    "sylvester_full": _case(lambda r: _randomize(B.Sylvester(3, rng=r), r, 0.7),
                            _normal(1.5), _normal(1.5)),
    # Block neural autoregressive flows: closed form x -> z, numerical z -> x.
    "bnaf": _case(lambda r: B.BlockNeuralAutoregressive(3, hidden_factors=(3,), rng=r),
                  _normal(1.5), _normal(1.5)),
    "bnaf_paper_tanh_gated": _case(
        lambda r: B.BlockNeuralAutoregressive(3, hidden_factors=(2, 3), activation="tanh",
                                              parameterization="paper", residual="gated", rng=r),
        _normal(1.5), _normal(1.5)),
    "bnaf_linear": _case(lambda r: B.BlockNeuralAutoregressive(4, hidden_factors=(), rng=r),
                         _normal(), _normal()),
    "bnaf_sigmoid_conditional": _case(
        lambda r: B.BlockNeuralAutoregressive(3, hidden_factors=(2,), activation="sigmoid",
                                              residual="normal", context_dim=2, rng=r),
        _normal(1.5), _normal(1.5)),
    # Pyro's direction (closed form base -> data, tanh: a bounded image per coordinate)
    # (parameters redrawn from N(0, 0.5^2): Pyro's g = log U(0, 1) can make a coordinate's
    # image so narrow that finite differences of the inverse lose their accuracy. Inputs from
    # N(0, 0.5^2), and x = T(w) for such w: two tanh layers saturate beyond |z| ~ 3, where the
    # map's slope falls to 1e-6, its inverse's conditioning costs 1e-10 in round trips, and the
    # oracle's FD step crosses the edge of the image)
    "bnaf_pyro_inverse": _image_case(
        lambda r: B.Inverse(_randomize(B.BlockNeuralAutoregressive(
            3, hidden_factors=(2, 2), activation="tanh", parameterization="pyro", rng=r), r)),
        _normal(0.5), _normal(0.5)),
    # Gaussianization: closed form x -> z, numerical z -> x.
    "gaussianization": _case(lambda r: B.Gaussianization(3, n_components=4, rng=r),
                             _normal(1.5), _normal(2.0)),
    # zuko's GF transformer: shrink 1e-6 bounds |z| by 4.89, and the map flattens (dz/dx ->
    # phi(u)/phi(4.89)) where every component's tail mass is below 5e-7 (|u_k| > 4.9):
    # parameters and x are drawn so that |u_k| < ~3.5, where the inverse is well conditioned
    "gaussianization_zuko": _case(
        lambda r: _randomize(B.Gaussianization(2, n_components=3, parameterization="zuko",
                                               weights="uniform", shrink=1e-6, rng=r), r, 0.3),
        _uniform(-3.0, 3.0), _uniform(-1.0, 1.0)),
    "gauss_logistic_conditional": _case(
        lambda r: B.Gaussianization(2, n_components=3, kernel="logistic", context_dim=2,
                                    hidden=(6,), activation="tanh", rng=r),
        _normal(1.5), _normal(2.0)),
    # Monotone-network and polynomial transformers (density direction z = f(x); numerical
    # inverses to sample). ELU / softclip kinks and |w| at 0 are kept away from the FD points;
    # the MADEs use tanh units (relu puts kinks into the weights' derivatives, and lets sampled
    # coordinates of 1e5 cascade into conditioner outputs of 1e5 in the stress tests).
    "neural_dsf": _case(lambda r: _randomize(B.NeuralAutoregressive(
        3, units=4, hidden=(8, 8), activation="tanh", rng=r), r, 0.3), _normal(), _normal(1.5)),
    "neural_ddsf_conditional": _case(lambda r: _randomize(B.NeuralAutoregressive(
        3, units=2, n_layers=3, hidden=(4,), order="reverse", activation="tanh", context_dim=2,
        rng=r), r, 0.2), _normal(), _normal(1.5)),
    "monotonic_elu": _kink_safe_case(lambda r: _away_from_zero_weights(
        B.MaskedMonotonicAutoregressive(3, signal=2, network=(4, 4), hidden=(6,),
                                        activation="tanh", rng=r), r),
        _normal(), _normal(1.5)),
    "monotonic_softplus_conditional": _case(lambda r: _away_from_zero_weights(
        B.MaskedMonotonicAutoregressive(3, signal=2, network=(5,), network_activation="softplus",
                                        hidden=(6,), order="random", activation="tanh",
                                        context_dim=2, rng=r), r),
        _normal(), _normal(1.5)),
    "umnn_softclip_elu": _kink_safe_case(lambda r: _randomize(
        B.UnconstrainedMonotonicAutoregressive(2, signal=2, network=(5, 5), n_nodes=8,
                                               hidden=(6,), activation="tanh", rng=r), r),
        _normal(), _normal(1.5)),
    "umnn_clenshaw_curtis_conditional": _case(lambda r: _randomize(
        B.UnconstrainedMonotonicAutoregressive(
            3, signal=2, network=(6,), network_activation="tanh", positive="exp", n_nodes=9,
            quadrature="clenshaw-curtis", hidden=(6,), activation="tanh", context_dim=2,
            rng=r), r),
        _normal(), _normal(1.5)),
    "sos": _case(lambda r: _randomize(B.SumOfSquaresAutoregressive(
        3, degree=3, n_polynomials=2, bound=3.0, hidden=(8, 8), activation="tanh", rng=r), r),
        _normal(), _normal(1.5)),
    "sos_conditional": _case(lambda r: _randomize(B.SumOfSquaresAutoregressive(
        3, hidden=(8,), order="reverse", activation="tanh", context_dim=2, rng=r), r),
        _normal(), _normal(1.5)),
    "bernstein": _knot_safe_case(lambda r: _randomize(B.BernsteinAutoregressive(
        3, degree=8, bound=2.0, hidden=(8, 8), activation="tanh", rng=r), r),
        _normal(1.5), _normal(1.5)),
    "bernstein_linear": _knot_safe_case(lambda r: _randomize(B.BernsteinAutoregressive(
        3, degree=6, bound=2.0, tails="linear", hidden=(8, 8), activation="tanh", rng=r), r),
        _normal(2.0), _normal(2.0)),
    "inverse_sigmoid": _case(lambda r: B.Inverse(B.Sigmoid(3)), _uniform(0.02, 0.98), _normal(2.0)),
    "inverse_lu_linear": _case(lambda r: B.Inverse(_randomize(B.LULinear(3, rng=r), r)),
                               _normal(), _normal()),
    # circular coordinates in the spline layers (angles on [-pi, pi]): normflows' durkan
    # convention with a mixed layer (identity angle fed as sin/cos, one circular and one
    # linear transformed coordinate) and zuko's map after its circular shift
    "spline_coupling_circular": _knot_safe_case(
        lambda r: _randomize(B.SplineCoupling(4, hidden=(8,), n_bins=4, activation="tanh",
                                              circular=[0, 3], rng=r), r),
        _uniform(-np.pi, np.pi), _uniform(-np.pi, np.pi)),
    "spline_coupling_circular_zuko_shift": _knot_safe_case(
        lambda r: _randomize(B.SplineCoupling(3, hidden=(8,), n_bins=4, activation="tanh",
                                              circular=True, parameterization="zuko",
                                              shift=True, rng=r), r),
        _uniform(-np.pi, np.pi), _uniform(-np.pi, np.pi)),
    "spline_autoregressive_circular": _knot_safe_case(
        lambda r: _randomize(B.MaskedSplineAutoregressive(
            3, hidden=(8,), n_bins=4, activation="tanh", circular=True, rng=r), r),
        _uniform(-np.pi, np.pi), _uniform(-np.pi, np.pi)),
    "spline_autoregressive_circular_zuko_shift": _knot_safe_case(
        lambda r: _randomize(B.MaskedSplineAutoregressive(
            3, hidden=(8,), n_bins=4, activation="tanh", circular=True, parameterization="zuko",
            shift=True, rng=r), r),
        _uniform(-np.pi, np.pi), _uniform(-np.pi, np.pi)),
}


def oracle_reports(bijector, z, x, rng=0, context=None):
    """Run the oracle on one bijector: ``{"bijector": ..., "forward_vjp": ..., "inverse_vjp": ...}``.

    ``z`` and ``x`` are points in the domains of ``forward`` and ``inverse``; a conditional
    bijector also needs ``context`` (one row per point, shared by ``z_n`` and ``x_n``), and its
    pullbacks' context cotangents are checked too. ``rng`` seeds the random cotangents. Each value is a report with ``ok`` and a
    readable ``str``.
    """
    if context is None:
        return {
            "bijector": check_bijector(bijector.forward, bijector.inverse, z, x=x),
            "forward_vjp": check_vjp(bijector.forward_vjp, z, bijector.params, rng=rng),
            "inverse_vjp": check_vjp(bijector.inverse_vjp, x, bijector.params, rng=rng),
        }
    # Row n of the context goes with z_n and with x_n; jacobian_fd perturbs z (or x) only.
    return {
        "bijector": check_bijector(lambda v: bijector.forward(v, context=context),
                                   lambda v: bijector.inverse(v, context=context), z, x=x),
        "forward_vjp": check_vjp(bijector.forward_vjp, (z, context), bijector.params, rng=rng),
        "inverse_vjp": check_vjp(bijector.inverse_vjp, (x, context), bijector.params, rng=rng),
    }
