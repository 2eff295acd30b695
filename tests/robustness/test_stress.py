"""Numerical stress of every registered bijector.

For every case of ``refflow._cases.CASES`` (same class and options; every parameter element
redrawn), with raw parameters up to ±50 (uniform, and exactly ±50) and inputs up to |v| = 1e3
(for bounded domains: toward the edges, down to 1e-300 from 0 and to one ulp from 1):

- ``test_finite_or_clear_error``: outputs, log-dets and both pullbacks (random cotangents) are
  finite, or the call raises a ``ValueError`` naming the layer; never NaN, never a
  ``RuntimeWarning``. Each round trip (z -> x -> z, x -> z -> x) either holds to 1e-10, or raises
  ``ValueError``, or its error is within what the map's conditioning allows (``_allowed``).
- ``test_round_trip_in_stable_range``: inside each case's measured stable range (``STABLE``),
  round trips hold to 1e-10 relative (``|a - b| / max(1, |b|)``) and the log-dets are negatives.

Conditioning bound (``_allowed``): rounding the output ``x = T(z)`` to float64 perturbs it by
about ``eps (|J| |z| + |x|)`` (the products inside the map and the result itself; ``J = dT/dz``,
infinity norms); the inverse maps that perturbation back with ``|J^-1|``. So a correct pair of
passes has ``|z' - z| <~ eps |J^-1| (|J| |z| + |x|)``. Both Jacobians are read exactly from the
layer's own pullbacks (unit cotangents). ``COND_FACTOR`` covers the few roundings per operation
and the MLP/MADE conditioners (sums of up to ~10 products).
"""

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refflow import bijectors
from refflow import bijectors as B

from ..registry import CASES

_LAYER_NAMES = [name for name in dir(bijectors) if isinstance(getattr(bijectors, name), type)]

CASE_IDS = sorted(CASES)
EPS = np.finfo(np.float64).eps
RTOL_ROUND_TRIP = 1e-10  # as refflow.testing: a few ulps per operation, far below a wrong inverse
# Rounding errors per operation (a few) times the terms of a conditioner's dot products (~10)
# times the passes of a layer (MAF sampling: dim): 1e3 leaves room for that, while a wrong
# inverse is off by O(1) relative (a factor 1e13 above the bound at |J^-1| ~ 1).
COND_FACTOR = 1e3
P_MAX = 50.0     # raw parameters up to ±50
V_MAX = 1e3      # inputs up to |v| = 1e3

# Domains of the forward (z) and inverse (x) passes: None for all of R, else an open interval.
_UNIT, _POS, _SYM = (0.0, 1.0), (0.0, np.inf), (-1.0, 1.0)
DOMAINS = {
    "exp": (None, _POS), "sigmoid": (None, _UNIT), "logit": (_UNIT, None),
    "logit_alpha": ((-0.05 / 0.9, 0.95 / 0.9), None),
    "tanh": (None, _SYM), "softplus": (None, _POS), "chain": (None, _POS),
    "inverse_sigmoid": (_UNIT, None),
}

# Measured stable ranges: pairs (largest |input|, largest |raw parameter|) inside which both
# round trips hold to 1e-10 for every draw (measured over a grid p in {0.5 .. 50}, |v| in
# {1 .. 1e3}, uniform and exactly-±p parameters, then verified over 100-150 further seeds x
# both parameter kinds x both directions; each entry is one grid step or a factor ~5 in error
# inside the measured edge). The input bound is |v| on R; an interval domain (Sigmoid's
# (0, 1), Exp's (0, inf), ...) is sampled up to its edges (1e-300 from 0, one ulp from 1).
# Why each range ends (float64, eps = 2.2e-16):
_AFFINE = [(V_MAX, 8.0)]        # shift rounding eps |b| amplified by exp(|a|): P e^P eps ~ 1e-10 at P ~ 10
_ALL = [(V_MAX, P_MAX)]         # orthogonal / volume-bounded / additive: no amplification
STABLE = {
    "affine": _AFFINE, "actnorm": _AFFINE, "batchnorm_eval": _AFFINE,
    "additive_coupling": _ALL, "permute": _ALL, "reverse": _ALL, "leaky_relu": _ALL,
    "householder": _ALL, "sylvester_householder": _ALL,
    # alpha = softplus(raw) -> e^-P while beta -> P: near z0 the forward map stretches by
    # ~beta / alpha, so z = z0 + (offset ~ alpha) loses the offset to rounding of z0 and
    # x -> z -> x errs by ~P^2 e^P eps (1e-10 at P ~ 9; O(1) at P = 50, alpha ~ 1e-22)
    "radial": [(V_MAX, 8.0)],
    "sylvester_permutation": _ALL,
    # m = dim: a scalar Newton solve per coordinate; slopes 1 + R_ii R~_ii h' near 0 compound
    # through the triangular system (8e-10 at p = 50 in 100 seeds)
    "sylvester_full": [(V_MAX, 10.0)],
    # exp(z) overflows at 709.8 (ValueError); below, log(exp(z)) is exact to a few ulps
    "exp": [(700.0, P_MAX)],
    # softplus(z) underflows below z ~ -745 (x = 0 leaves the inverse's domain)
    "softplus": [(700.0, P_MAX)],
    # sigmoid(z) = 1 - e^-z rounds: z -> x -> z errs by eps e^|z| / |z| (1.2e-10 at |z| = 16)
    "sigmoid": [(15.0, P_MAX)], "logit": [(15.0, P_MAX)], "logit_alpha": [(15.0, P_MAX)],
    "inverse_sigmoid": [(15.0, P_MAX)],
    # tanh(z) = 1 - 2 e^-2z rounds: eps e^2|z| / (2|z|) (1.2e-10 at |z| = 8)
    "tanh": [(7.5, P_MAX)],
    # LU: cond(L U) grows like e^(2P) (diag U = e^a) times the products of the L/U entries
    "lu_linear": [(V_MAX, 1.0)],
    "lu_linear_softplus": [(V_MAX, 1.0)],
    "inverse_lu_linear": [(V_MAX, 1.0)],
    # the Chain's LU and affine factors as above, and its Softplus underflows (x -> 0)
    "chain": [(10.0, 1.0)],
    # sigmoid scale >= 1e-3: the shift t(z_a) ~ p^2 |v| is rounded, then divided by the scale
    "affine_coupling": [(V_MAX, 0.5), (100.0, 1.0)],
    # "exp" scale with elu units: log-scale ~ p^2 |v| unbounded, exp(-s) amplifies rounding
    "affine_coupling_conditional": [(1.0, 0.5)],
    # MAF sampling: dim sequential passes, each amplifying the previous rounding by |du/dx| e^u
    "maf": [(V_MAX, 1.0)],
    "maf_relu_softclip": [(10.0, 0.5), (1.0, 1.0)],
    "maf_softplus_reverse_equal": [(10.0, 1.0)],
    "maf_conditional_random": [(100.0, 0.5), (1.0, 1.0)],
    "iaf": [(V_MAX, 0.5), (100.0, 2.0), (10.0, 3.0)],
    # scale_side="density" (zuko / nflows): the sequential pass is now the sampling one,
    # x = (z - shift) e^-l, with the same compounding
    "maf_density_softclip_conditional": [(10.0, 0.5)],
    "maf_density_softplus_reverse": [(10.0, 0.5), (1.0, 1.0)],
    "affine_coupling_density": [(V_MAX, 0.5), (100.0, 1.0)],
    "affine_coupling_density_conditional": [(V_MAX, 0.5), (100.0, 1.0)],
    # splines: softmax of ±p saturates to min_bin = 1e-3 bins next to wide ones and derivatives
    # up to softplus(p); in-bin slopes then range over ~1e6 and the inverse's root conditioning
    # grows with them (identity tails: |v| beyond B costs nothing)
    "rqs_durkan": [(V_MAX, 3.0)], "rqs_distrax": [(V_MAX, 3.0)], "rqs_zuko": [(V_MAX, 5.0)],
    "spline_coupling": [(V_MAX, 0.5)],  # conditioner output ~ p^2 |v|: saturates at p ~ 1
    "spline_autoregressive": [(V_MAX, 1.0)],
    # planar: u is constrained (w.u >= -1); near the constraint's edge the slope 1 + u.w h'
    # tends to 0, and the inverse's 1-D root is then ill-conditioned (1e-10 at p ~ 35)
    "planar": [(V_MAX, 20.0)],
    # Monotone transformers (numerical inverses, measured over p in {0.2 .. 50}, |v| in
    # {1, 10, 1e3}; tanh MADEs, so conditioner outputs stay below ~p^2 H). Where they grow,
    # they enter exponentially (softplus slopes, sigmoids, exp integrands): the maps flatten to
    # slopes ~e^-|out| whose inverses are ill-conditioned. SOS and Bernstein (identity tails)
    # are polynomial in their parameters and stay accurate throughout.
    "sos": [(V_MAX, P_MAX)], "sos_conditional": [(V_MAX, P_MAX)],
    "bernstein": [(V_MAX, P_MAX)],
    "bernstein_linear": [(V_MAX, 1.0)],          # tail slopes softplus(r) -> e^-r (p >= 5)
    "neural_dsf": [(V_MAX, 1.0)],
    "neural_ddsf_conditional": [(V_MAX, 0.5)],
    "monotonic_elu": [(V_MAX, 2.0)], "monotonic_softplus_conditional": [(V_MAX, 2.0)],
    # UMNN: the map is the fixed-node rule, a bijection only where the rule resolves the
    # integrand on [0, x] (see _OPEN)
    "umnn_softclip_elu": [(10.0, 0.2), (1.0, 0.5)],
    "umnn_clenshaw_curtis_conditional": [(V_MAX, 0.2), (1.0, 0.5)],
    # BNAF (numerical sampling direction): diagonal slopes softplus(-p) / e^-p and weights up
    # to s(p) make x = T^{-1}(z) huge and T's terms cancel (2e-10 at p = 2 for the leaky-tanh
    # and linear cases; the gated tanh case at p = 3); the sigmoid + x residual stays near the
    # identity. The Pyro-direction case inverts onto a bounded image, which holds |x| <= 0.1
    # for every draw at p = 0.25 (outside it the inverse raises, as it should).
    "bnaf": [(V_MAX, 1.0)], "bnaf_linear": [(V_MAX, 1.0), (100.0, 2.0)],
    "bnaf_paper_tanh_gated": [(V_MAX, 2.0)], "bnaf_sigmoid_conditional": [(V_MAX, P_MAX)],
    "bnaf_pyro_inverse": [(0.1, 0.25)],
    # Gaussianization: narrow components (log-scale -p) leave gaps where the mixture CDF is
    # flat to float64 (x -> z -> x returns another preimage: O(1) at p = 2); at |x| = 1e3 the
    # log-det's two ~u^2/2 terms cancel (5e-10 at p = 0.5); zuko's shrink flattens the map
    # beyond |u| ~ 4.9; the hyper-network multiplies p by its width
    "gaussianization": [(100.0, 1.0)], "gaussianization_zuko": [(1.0, 1.0)],
    "gauss_logistic_conditional": [(V_MAX, 0.5)],
}


def _sample(rng, n, dim, domain, vmax):
    """``n`` points in ``domain`` up to |v| = vmax; intervals: log-spaced toward both edges."""
    if domain is None:
        mag = np.exp(rng.uniform(np.log(1e-3), np.log(vmax), size=(n, dim)))
        v = rng.choice([-1.0, 1.0], size=(n, dim)) * mag
        v[0] = rng.choice([-vmax, vmax], size=dim)  # the extreme itself
        return v
    low, high = domain
    if high == np.inf:  # (low, inf): from 1e-300 above low up to vmax
        v = low + np.exp(rng.uniform(np.log(1e-300), np.log(vmax), size=(n, dim)))
        v[0] = low + rng.choice([1e-300, vmax], size=dim)
        return v
    # a bounded interval: distance to the nearer edge from one ulp to half the width
    width = high - low
    gap = np.exp(rng.uniform(np.log(1e-300), np.log(width / 2), size=(n, dim)))
    side = rng.random((n, dim)) < 0.5
    v = np.where(side, low + gap, high - gap)
    return np.clip(v, np.nextafter(low, high), np.nextafter(high, low))


def _build(case_id, seed, pmax, extreme):
    bijector, _, _, sample_context = CASES[case_id](seed)
    rng = np.random.default_rng([seed, 1])
    for key, value in bijector.params.items():
        if extreme:
            bijector.params[key] = rng.choice([-pmax, pmax], size=value.shape)
        else:
            bijector.params[key] = rng.uniform(-pmax, pmax, size=value.shape)
    return bijector, sample_context


def _call(bijector, direction, v, context, vjp=False):
    name = ("forward" if direction == "forward" else "inverse") + ("_vjp" if vjp else "")
    fn = getattr(bijector, name)
    return fn(v) if context is None else fn(v, context=context)


def _jacobian(bijector, direction, v, context):
    """Per-row Jacobian of one pass from its pullback with unit cotangents, or None (overflow)."""
    try:
        out, _, pullback = _call(bijector, direction, v, context, vjp=True)
        n, d = out.shape
        jac = np.empty((n, d, d))
        for i in range(d):
            bar = np.zeros_like(out)
            bar[:, i] = 1.0
            jac[:, i, :] = pullback(bar, np.zeros(n))[0]
        return jac
    except ValueError:
        return None


def _assert_clear(err):
    """A ValueError names the layer that failed (a Chain's child names itself) and the pass."""
    message = str(err)
    assert any(f"{name}." in message for name in _LAYER_NAMES), message
    assert "forward" in message or "inverse" in message, message


def _rel(a, b):
    return np.abs(a - b) / np.maximum(1.0, np.abs(b))


def _allowed_chain(chain, direction, v, out, context):
    """As ``_allowed`` for a ``Chain``: each intermediate ``u_k`` is rounded (by ``eps |u_k|``) on
    the way out and back, and that error reaches the end of the round trip through the maps
    between level ``k`` and ``v``; the composite Jacobian alone misses large intermediates."""
    layers = chain.layers
    z = v if direction == "forward" else out
    levels = [z]
    for layer in layers:
        levels.append(_call(layer, "forward", levels[-1], None)[0])
    bound = np.zeros(v.shape[0])
    for k, u in enumerate(levels):
        part = layers[:k] if direction == "forward" else layers[k:]
        if part:
            jac = _jacobian(B.Chain(part), "inverse" if direction == "forward" else "forward",
                            u, context)
            if jac is None:
                return np.full(v.shape[0], np.inf)
            gain = np.abs(jac).sum(axis=2).max(axis=1)
        else:
            gain = 1.0
        with np.errstate(over="ignore"):
            bound = bound + gain * np.abs(u).max(axis=1)
    bound = COND_FACTOR * EPS * bound / np.maximum(1.0, np.abs(v).max(axis=1))
    return np.maximum(bound, RTOL_ROUND_TRIP)


def _allowed(bijector, direction, v, out, context):
    """Row-wise error that the conditioning allows for ``v -> out -> v`` (see the docstring)."""
    if isinstance(bijector, B.Chain):
        return _allowed_chain(bijector, direction, v, out, context)
    other = "inverse" if direction == "forward" else "forward"
    j_there = _jacobian(bijector, direction, v, context)
    j_back = _jacobian(bijector, other, out, context)
    if j_there is None or j_back is None:  # a Jacobian beyond float64: no accuracy to expect
        return np.full(v.shape[0], np.inf)
    with np.errstate(over="ignore"):
        norm_there = np.abs(j_there).sum(axis=2).max(axis=1)
        norm_back = np.abs(j_back).sum(axis=2).max(axis=1)
        scale = norm_there * np.abs(v).max(axis=1) + np.abs(out).max(axis=1)
        bound = COND_FACTOR * EPS * norm_back * scale / np.maximum(1.0, np.abs(v).max(axis=1))
    return np.maximum(bound, RTOL_ROUND_TRIP)


def _round_trip(bijector, direction, v, context):
    """``(error per row, out, log_det, log_det back)`` or None when a pass raises ValueError."""
    other = "inverse" if direction == "forward" else "forward"
    try:
        out, log_det = _call(bijector, direction, v, context)
        back, log_det_back = _call(bijector, other, out, context)
    except ValueError as err:
        _assert_clear(err)
        return None
    return _rel(back, v).max(axis=1), out, log_det, log_det_back


def _stress_one(bijector, context, direction, v, rng, check_bound=True):
    """Every public pass on ``v``: finite or ValueError; pullbacks likewise; round trip bounded
    (unless ``check_bound`` is False: a case whose bound is still open, see ``_OPEN``)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a RuntimeWarning fails the test
        try:
            out, log_det, pullback = _call(bijector, direction, v, context, vjp=True)
        except ValueError as err:
            _assert_clear(err)
            return "raised"
        assert np.isfinite(out).all() and np.isfinite(log_det).all()
        try:
            result = pullback(rng.standard_normal(out.shape), rng.standard_normal(out.shape[0]))
        except ValueError as err:
            assert "pullback" in str(err), err
        else:
            assert np.isfinite(result[0]).all()
            assert all(np.isfinite(g).all() for g in result[1].values())
        trip = _round_trip(bijector, direction, v, context)
        if trip is None:
            return "raised"
        err = trip[0]
        if (err <= RTOL_ROUND_TRIP).all():
            return "accurate"
        if not check_bound:
            return "unchecked"
        bound = _allowed(bijector, direction, v, out, context)
    bad = err > bound
    assert not bad.any(), (
        f"{direction} round trip off by {err[bad].max():.3g} where the conditioning allows "
        f"{bound[bad].min():.3g} (row {int(np.argmax(bad))}: {v[np.argmax(bad)]})")
    return "conditioned"


def _inputs(case_id, bijector, rng, n, vmax):
    dz, dx = DOMAINS.get(case_id, (None, None))
    return _sample(rng, n, bijector.dim, dz, vmax), _sample(rng, n, bijector.dim, dx, vmax)


def _context(sample_context, seed, n, vmax):
    return None if sample_context is None else sample_context(seed, n) * min(vmax, 1.0)


seeds = st.integers(0, 2**32 - 1)


def test_every_case_has_a_stable_range():
    assert sorted(STABLE) == CASE_IDS


# Round trips beyond the heuristic conditioning bound outside their stable ranges, not yet
# explained (open; listed in DEVELOPERS.md): Chain (Softplus last, p = 50: an x of 1e-170 comes
# back off by O(1)), Planar (1.25e-9 vs a bound of 1.14e-9: the inverse's root solve adds
# error ~ eps / slope) and the random-order conditional MAF (1.05e-9 vs 6.8e-10). For these the
# bound is not asserted; the finiteness and clear-error checks are, and their stable ranges are.
# The density-side MAFs (sequential sampling pass) exceed it by a factor ~2-3 at raw ±50, where
# the bound itself is ~1e6 relative: the per-layer Jacobian understates compounding over passes.
_OPEN = {"chain", "planar", "maf_conditional_random", "maf_density_softclip_conditional",
         "maf_density_softplus_reverse"}
# Monotone transformers, explained. (1) UMNN with a fixed rule is increasing only where the
# rule resolves its integrand; beyond (large |x| or weights) the rule's map can fold: a pass
# raises where it sees a negative derivative, but a target with two preimages can come back
# to the other one (an O(1) round trip, no conditioning bound applies; see
# UnconstrainedMonotonicAutoregressive's docstring). (2) A transformer flattened to slopes
# ~1e-20 .. 1e-170 (saturated DSF / DDSF sigmoids, linear Bernstein tails softplus(r) with
# r ~ -400, at raw +-50) maps a long interval of x to one float z; no inverse can recover x
# there, and the bound, read from the Jacobian at the preimage the inverse did find (not at
# x), misses it (measured: 33 of 40 seeds for DSF, 15 DDSF, 7 linear Bernstein). (3) Monotonic
# networks (ELU or softplus) with raw weights +-50: z is a sum of terms ~1e4-1e6 that cancel to
# O(1), so z's own rounding (eps times the terms, not eps |J| |x|) exceeds the bound (ELU: 1
# seed in 40; softplus: the CI profile's seed 3222833333, weights exactly +-50, |z| = 896,
# x = -201: 6.4e-10 vs a bound of 5.0e-10).
_OPEN |= {"umnn_softclip_elu", "umnn_clenshaw_curtis_conditional", "bernstein_linear",
          "neural_dsf", "neural_ddsf_conditional", "monotonic_elu",
          "monotonic_softplus_conditional"}
# BNAF and Gaussianization at raw +-50 (weights and slopes e^+-50): saturated units make the map
# flat over wide intervals in float64, so x -> z -> x returns another valid preimage (its
# residual is checked by the kernels, which refuse roots that do not exist in float64), and
# evaluating T at the huge x that tiny slopes require cancels terms of size |W x|; the bound,
# built from the Jacobians at the end points, sees neither.
_OPEN |= {"bnaf", "bnaf_linear", "bnaf_paper_tanh_gated", "bnaf_sigmoid_conditional",
          "bnaf_pyro_inverse", "gaussianization", "gaussianization_zuko",
          "gauss_logistic_conditional"}


@pytest.mark.parametrize("case_id", CASE_IDS)
@settings(deadline=None)
@given(seed=seeds)
def test_finite_or_clear_error(case_id, seed):
    """Raw parameters up to ±50 (uniform, and exactly ±50), inputs up to 1e3 / the edges: every
    pass and pullback finite or a clear ValueError; round trips accurate, or raising, or within
    the conditioning bound."""
    for pmax, extreme in ((0.5, False), (P_MAX, False), (P_MAX, True)):
        bijector, sample_context = _build(case_id, seed, pmax, extreme)
        for vmax in (1.0, V_MAX):
            rng = np.random.default_rng([seed, int(vmax), int(extreme)])
            z, x = _inputs(case_id, bijector, rng, 6, vmax)
            context = _context(sample_context, seed, 6, vmax)
            check = case_id not in _OPEN
            _stress_one(bijector, context, "forward", z, rng, check_bound=check)
            _stress_one(bijector, context, "inverse", x, rng, check_bound=check)


@pytest.mark.parametrize("case_id", CASE_IDS)
@settings(deadline=None)
@given(seed=seeds, extreme=st.booleans())
def test_round_trip_in_stable_range(case_id, seed, extreme):
    """Inside the measured stable range: no error, round trips and log-dets to 1e-10."""
    if case_id not in STABLE:
        pytest.skip("no measured stable range yet (test_every_case_has_a_stable_range fails)")
    for vmax, pmax in STABLE[case_id]:
        bijector, sample_context = _build(case_id, seed, pmax, extreme)
        rng = np.random.default_rng([seed, 2])
        z, x = _inputs(case_id, bijector, rng, 8, vmax)
        context = _context(sample_context, seed, 8, vmax)
        for direction, v in (("forward", z), ("inverse", x)):
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                trip = _round_trip(bijector, direction, v, context)
            assert trip is not None, f"{direction} raised inside the stable range"
            err, _, log_det, log_det_back = trip
            assert err.max() <= RTOL_ROUND_TRIP, (direction, vmax, pmax, err.max())
            log_det_err = _rel(-log_det_back, log_det).max()
            assert log_det_err <= RTOL_ROUND_TRIP, (direction, vmax, pmax, log_det_err)
