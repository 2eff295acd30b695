"""Model builders (refflow.flows): layouts, parameter counts, conditioning, seeding, the oracle."""

import importlib.util

import numpy as np
import pytest

from refflow import (
    ActNorm, AffineCoupling, BatchNorm, Flow, LULinear, MaskedAffineAutoregressive,
    MaskedSplineAutoregressive, Permute, Reverse, SplineCoupling, StandardNormal,
)
from refflow.flows import BUILDERS, MAF, NSF, Glow, RealNVP
from refflow.testing import assert_bijector

from .helpers import randomize

HAVE_PLANAR = importlib.util.find_spec("refflow.bijectors.planar") is not None
needs_planar = pytest.mark.skipif(not HAVE_PLANAR, reason="refflow.bijectors.planar not there")

# Grid quadrature of a 2-D density on [-10, 10]^2 with step 0.05: the trapezoid rule's error
# on these densities (continuous, kinks at spline knots) and the mass beyond the grid measured
# below 1.2e-4 (against grids 5x finer); a missing or wrong log-det term is off by O(0.1).
QUADRATURE_TOL = 1e-3
# parameter noise for the quadrature tests: clearly non-trivial maps whose features the grid
# still resolves (0.2 makes bins and tails that need a 5x finer grid)
QUADRATURE_NOISE = 0.1
# identity initialisations hold to a few ulps of the exact values
RTOL_EXACT = 1e-12
# parameters are moved off their initial values by this much (zeroed last layers hide bugs)
PARAM_NOISE = 0.2

NETWORK_BUILDERS = ["realnvp", "maf", "nsf", "nsf-coupling", "glow"]
SMALL = dict(n_layers=2, hidden=(16,))


def n_params(params):
    return sum(int(v.size) for v in params.values())


def layer_types(flow):
    return [type(layer) for layer in flow.bijector.layers]


def ready(flow, rng, context=None, scale=PARAM_NOISE):
    """Randomised parameters, ActNorm initialised on a data-like batch, eval mode."""
    randomize(flow.params, rng, scale, shift=True)
    flow.log_prob(rng.normal(size=(64, flow.dim)), context=None if context is None else context[0])
    return flow.eval()


def grid_integral(flow, half_width=10.0, n=401):
    """Trapezoid rule on the grid, and how far log q departs from the base density there."""
    t = np.linspace(-half_width, half_width, n)
    xx, yy = np.meshgrid(t, t, indexing="ij")
    x = np.stack([xx.ravel(), yy.ravel()], axis=1)
    log_q = flow.log_prob(x)
    inner = np.abs(x).max(axis=1) < 3.0
    departure = np.abs(log_q - flow.base.log_prob(x))[inner].max()
    p = np.exp(log_q).reshape(n, n)
    return np.trapezoid(np.trapezoid(p, t, axis=1), t), departure


# ----------------------------------------------------------------------------- structure
def test_realnvp_layout_alternates_masks_in_the_density_order():
    flow = RealNVP(5, n_layers=4, hidden=(8,), rng=0)
    assert isinstance(flow, Flow) and isinstance(flow.base, StandardNormal)
    assert layer_types(flow) == [AffineCoupling] * 4
    # step k in the density direction (layers[-1 - k]) transforms j with j % 2 != k % 2:
    # the first step the data meet transforms the odd coordinates, as nflows and zuko
    for k in range(4):
        mask = flow.bijector.layers[-1 - k].buffers["mask"]
        np.testing.assert_array_equal(mask, np.arange(5) % 2 != k % 2)
    assert flow.bijector.layers[0]._scale_name == "softclip"


def test_realnvp_batch_norm_follows_every_coupling_layer():
    flow = RealNVP(3, n_layers=3, hidden=(8,), batch_norm=True, rng=0)
    assert layer_types(flow) == [BatchNorm, AffineCoupling] * 3


@pytest.mark.parametrize("permutation, between", [("reverse", Reverse), ("random", Permute),
                                                  (None, None)])
def test_maf_layout(permutation, between):
    flow = MAF(4, n_layers=3, hidden=(8,), permutation=permutation, rng=0)
    made = MaskedAffineAutoregressive
    expected = [made, made, made] if between is None else [made, between, made, between, made]
    assert layer_types(flow) == expected
    for layer in flow.bijector.layers:
        if isinstance(layer, made):
            np.testing.assert_array_equal(layer.made.order, np.arange(4))
            assert layer.scale == "softclip"
    if permutation == "random":
        perms = [layer.buffers["permutation"] for layer in flow.bijector.layers[1::2]]
        assert all(np.array_equal(np.sort(p), np.arange(4)) for p in perms)


def test_maf_batch_norm_after_every_made():
    flow = MAF(3, n_layers=2, hidden=(8,), batch_norm=True, rng=0)
    made = MaskedAffineAutoregressive
    assert layer_types(flow) == [BatchNorm, made, Reverse, BatchNorm, made]


def test_nsf_layouts():
    flow = NSF(3, n_layers=3, hidden=(8,), rng=0)
    assert layer_types(flow) == [MaskedSplineAutoregressive, LULinear] * 3
    spline = flow.bijector.layers[0]
    assert (spline.n_bins, spline.parameterization) == (8, "durkan")
    assert spline._map.bound == 3.0
    assert all(layer.upper_diag == "softplus" for layer in flow.bijector.layers[1::2])

    flow = NSF(4, n_layers=2, hidden=(8,), n_bins=5, bound=4.0, autoregressive=False, rng=0)
    assert layer_types(flow) == [SplineCoupling, LULinear] * 2
    for k in range(2):
        coupling = flow.bijector.layers[-2 - 2 * k]
        np.testing.assert_array_equal(coupling.buffers["mask"], np.arange(4) % 2 != k % 2)
        assert (coupling.n_bins, coupling._map.bound) == (5, 4.0)
    assert type(BUILDERS["nsf-coupling"](4, **SMALL, rng=0).bijector.layers[0]) is SplineCoupling


def test_glow_layout():
    flow = Glow(4, n_layers=3, hidden=(8,), rng=0)
    assert layer_types(flow) == [AffineCoupling, LULinear, ActNorm] * 3
    for coupling in flow.bijector.layers[::3]:
        np.testing.assert_array_equal(coupling.buffers["mask"], np.arange(4) >= 2)


def test_builders_registry():
    assert set(BUILDERS) == {"realnvp", "maf", "nsf", "nsf-coupling", "glow", "planar",
                             "radial", "sylvester", "bnaf", "gf", "naf", "unaf", "sospf",
                             "bpf"}
    for name in NETWORK_BUILDERS:
        flow = BUILDERS[name](3, **SMALL, rng=0)
        assert isinstance(flow, Flow) and flow.dim == 3
    with pytest.raises(ValueError, match="nsf-coupling"):
        BUILDERS["nsf-coupling"](3, autoregressive=True)


# -------------------------------------------------------------------------- initialisation
@pytest.mark.parametrize("autoregressive", [True, False])
def test_nsf_starts_as_a_permutation(autoregressive, rng):
    # zero last layers + the derivative biases: every spline is the identity, every LULinear
    # a permutation, so the density is exactly the base density
    flow = NSF(4, n_layers=3, hidden=(8,), autoregressive=autoregressive, rng=0)
    z = rng.normal(size=(6, 4)) * 2.0
    x, log_det = flow.bijector.forward(z)
    np.testing.assert_allclose(np.sort(x, axis=1), np.sort(z, axis=1), rtol=RTOL_EXACT,
                               atol=RTOL_EXACT)
    np.testing.assert_allclose(log_det, 0.0, atol=RTOL_EXACT)
    for layer in flow.bijector.layers[::2]:  # the spline layers alone are the identity
        v, ld = layer.forward(z)
        np.testing.assert_allclose(v, z, rtol=RTOL_EXACT, atol=RTOL_EXACT)
        np.testing.assert_allclose(ld, 0.0, atol=RTOL_EXACT)


def test_glow_linear_layers_start_as_random_rotations(rng):
    flow = Glow(4, n_layers=3, hidden=(8,), rng=0)
    weights = [layer.weight() for layer in flow.bijector.layers[1::3]]
    for w in weights:
        np.testing.assert_allclose(w @ w.T, np.eye(4), atol=RTOL_EXACT)   # orthogonal
        assert np.count_nonzero(np.abs(w) > 1e-3) > 4                     # not a permutation
        assert abs(np.linalg.slogdet(w)[1]) < RTOL_EXACT
    assert not np.allclose(weights[0], weights[1])
    z = rng.normal(size=(5, 4))
    for coupling in flow.bijector.layers[::3]:  # zero-initialised couplings: the identity
        x, log_det = coupling.forward(z)
        np.testing.assert_array_equal(x, z)
        np.testing.assert_array_equal(log_det, 0.0)


# -------------------------------------------------------------------- parameter counts
def test_parameter_counts_match_the_peers_figures():
    # the counts of zuko's and nflows' models of the same configurations (masked entries counted)
    assert n_params(RealNVP(2, n_layers=8, hidden=(64, 64), rng=0).params) == 35_344
    assert n_params(MAF(64, n_layers=5, hidden=(256, 256), rng=0).params) == 576_640
    flow = NSF(64, n_layers=5, hidden=(256, 256), rng=0)
    splines = [l for l in flow.bijector.layers if isinstance(l, MaskedSplineAutoregressive)]
    assert sum(n_params(l.params) for l in splines) == 2_303_680
    # plus one LULinear per step: strictly lower + strictly upper + diagonal + bias
    assert n_params(flow.params) == 2_303_680 + 5 * (64 * 63 + 2 * 64)


def test_parameter_counts_match_zuko_models():
    zuko = pytest.importorskip("zuko")

    def count(module):
        return sum(p.numel() for p in module.parameters())

    # zuko's base is a buffer-only DiagNormal; masked weights count in full in both libraries
    cases = [
        (zuko.flows.RealNVP(features=4, context=2, transforms=3, hidden_features=[16, 16]),
         RealNVP(4, n_layers=3, hidden=(16, 16), context_dim=2, rng=0).params),
        (zuko.flows.MAF(features=5, context=0, transforms=3, hidden_features=[16, 16]),
         MAF(5, n_layers=3, hidden=(16, 16), rng=0).params),
        (zuko.flows.MAF(features=3, context=2, transforms=2, hidden_features=[8]),
         MAF(3, n_layers=2, hidden=(8,), context_dim=2, rng=0).params),
    ]
    for peer, ours in cases:
        assert count(peer) == n_params(ours)
    peer = zuko.flows.NSF(features=3, context=0, transforms=2, bins=8, hidden_features=[16, 16])
    ours = NSF(3, n_layers=2, hidden=(16, 16), rng=0)
    assert count(peer) == sum(n_params(l.params) for l in ours.bijector.layers[::2])


# ---------------------------------------------------------------------- seeds, contexts
@pytest.mark.parametrize("name", NETWORK_BUILDERS)
def test_same_rng_gives_identical_models(name):
    a, b = (BUILDERS[name](3, **SMALL, rng=7) for _ in range(2))
    c = BUILDERS[name](3, **SMALL, rng=8)
    assert a.params.keys() == b.params.keys() and a.buffers.keys() == b.buffers.keys()
    assert all(np.array_equal(a.params[k], b.params[k]) for k in a.params)
    assert all(np.array_equal(a.buffers[k], b.buffers[k]) for k in a.buffers)
    assert not all(np.array_equal(a.params[k], c.params[k]) for k in a.params)
    g1, g2 = np.random.default_rng(3), np.random.default_rng(3)
    d, e = BUILDERS[name](3, **SMALL, rng=g1), BUILDERS[name](3, **SMALL, rng=g2)
    assert all(np.array_equal(d.params[k], e.params[k]) for k in d.params)


@pytest.mark.parametrize("name", NETWORK_BUILDERS)
def test_conditional_variants_take_a_context(name, rng):
    flow = BUILDERS[name](3, **SMALL, context_dim=2, rng=0)
    assert flow.context_dim == 2
    randomize(flow.params, rng, PARAM_NOISE, shift=True)
    x = rng.normal(size=(5, 3))
    c1, c2 = rng.normal(size=(5, 2)), rng.normal(size=(5, 2))
    lp1 = flow.log_prob(x, c1)
    assert lp1.shape == (5,) and np.isfinite(lp1).all()
    assert not np.allclose(lp1, flow.log_prob(x, c2))  # the context changes the density
    assert flow.sample(4, rng=0, context=c1[0]).shape == (4, 3)
    with pytest.raises(ValueError, match="conditional"):
        flow.log_prob(x)
    # every conditioner reads the context: its cotangent reaches all of them
    _, pullback = flow.log_prob_vjp(x, c1)
    _, grads, c_bar = pullback(np.ones(5))
    assert c_bar.shape == (5, 2) and np.abs(c_bar).max() > 0


# ------------------------------------------------------------- normalisation, the oracle
@pytest.mark.parametrize("name, options", [
    ("realnvp", {}), ("realnvp", {"batch_norm": True}), ("maf", {}),
    ("maf", {"permutation": "random", "batch_norm": True}), ("nsf", {}),
    ("nsf-coupling", {}), ("glow", {}),
])
def test_log_prob_integrates_to_one_in_2d(name, options, rng):
    flow = ready(BUILDERS[name](2, **SMALL, **options, rng=0), rng, scale=QUADRATURE_NOISE)
    integral, departure = grid_integral(flow)
    assert abs(integral - 1.0) < QUADRATURE_TOL
    assert departure > 0.1  # not a near-identity map that would pass with any log-det


@pytest.mark.parametrize("name", ["maf", "nsf"])
def test_one_dimensional_flows_integrate_to_one(name, rng):
    flow = ready(BUILDERS[name](1, **SMALL, rng=0), rng)
    t = np.linspace(-15.0, 15.0, 6001)
    log_q = flow.log_prob(t[:, None])
    assert abs(np.trapezoid(np.exp(log_q), t) - 1.0) < QUADRATURE_TOL
    assert np.abs(log_q - flow.base.log_prob(t[:, None]))[np.abs(t) < 3].max() > 0.1


@pytest.mark.parametrize("name", NETWORK_BUILDERS)
@pytest.mark.parametrize("conditional", [False, True])
def test_oracle_passes_on_the_bijector(name, conditional, rng):
    dim = 4
    context = rng.normal(size=(3, 2)) if conditional else None
    flow = ready(BUILDERS[name](dim, **SMALL, context_dim=2 if conditional else None, rng=0),
                 rng, context)
    if conditional:
        def forward(v):
            return flow.bijector.forward(v, context)

        def inverse(v):
            return flow.bijector.inverse(v, context)
    else:
        forward, inverse = flow.bijector.forward, flow.bijector.inverse
    assert_bijector(forward, inverse, rng.normal(size=(3, dim)))


def test_batch_norm_flows_sample_in_eval_mode(rng):
    flow = MAF(2, **SMALL, batch_norm=True, rng=0)
    flow.log_prob(rng.normal(size=(32, 2)))
    with pytest.raises(ValueError, match="BatchNorm"):
        flow.sample(3, rng=0)
    assert flow.eval().sample(3, rng=0).shape == (3, 2)


# ------------------------------------------------------------------------------ bad options
# A value of the wrong type raises TypeError, one of the right type out of range ValueError.
@pytest.mark.parametrize("builder, kwargs, error, match", [
    (RealNVP, dict(dim=1), ValueError, "at least 2"),
    (RealNVP, dict(dim=0), ValueError, "dim"),
    (RealNVP, dict(dim=2.0), TypeError, "dim"),
    (RealNVP, dict(dim=2, n_layers=0), ValueError, "n_layers"),
    (RealNVP, dict(dim=2, n_layers=True), TypeError, "n_layers"),
    (RealNVP, dict(dim=2, n_layers=2.5), TypeError, "n_layers"),
    (RealNVP, dict(dim=2, hidden=64), TypeError, "hidden"),
    (RealNVP, dict(dim=2, hidden=(0,)), ValueError, "hidden"),
    (RealNVP, dict(dim=2, activation="sigmoid"), ValueError, "activation"),
    (RealNVP, dict(dim=2, scale="log"), ValueError, "scale"),
    (RealNVP, dict(dim=2, batch_norm="yes"), TypeError, "batch_norm"),
    (RealNVP, dict(dim=2, context_dim=0), ValueError, "context_dim"),
    (RealNVP, dict(dim=2, rng="seed"), ValueError, "rng"),
    (RealNVP, dict(dim=2, rng=-1), ValueError, "rng"),
    (MAF, dict(dim=2, permutation="shuffle"), ValueError, "permutation"),
    (MAF, dict(dim=2, scale=None), TypeError, "scale"),
    (MAF, dict(dim=10, hidden=(4,)), ValueError, "width"),
    (NSF, dict(dim=2, n_bins=1), ValueError, "n_bins"),
    (NSF, dict(dim=2, n_bins=8.0), TypeError, "n_bins"),
    (NSF, dict(dim=2, bound=0.0), ValueError, "bound"),
    (NSF, dict(dim=2, bound=float("inf")), ValueError, "bound"),
    (NSF, dict(dim=2, bound=float("nan")), ValueError, "bound"),
    (NSF, dict(dim=2, autoregressive="no"), TypeError, "autoregressive"),
    (NSF, dict(dim=1, autoregressive=False), ValueError, "at least 2"),
    (Glow, dict(dim=1), ValueError, "at least 2"),
    (Glow, dict(dim=2, scale="sigmoid2"), ValueError, "scale"),
])
def test_bad_options_raise_naming_the_builder(builder, kwargs, error, match):
    with pytest.raises(error, match=f"^{builder.__name__}: .*{match}"):
        builder(**kwargs)


def test_unknown_option_is_a_type_error():
    with pytest.raises(TypeError):
        MAF(2, n_bins=8)


# ------------------------------------------------------------------------------ planar family
@needs_planar
@pytest.mark.parametrize("name", ["planar", "radial", "sylvester"])
def test_planar_family(name, rng):
    from refflow.bijectors import planar

    flow = BUILDERS[name](2, n_layers=3, rng=0)
    expected = {"planar": planar.Planar, "radial": planar.Radial,
                "sylvester": planar.Sylvester}[name]
    assert layer_types(flow) == [expected] * 3
    assert isinstance(flow.base, StandardNormal)
    again = BUILDERS[name](2, n_layers=3, rng=0)
    assert all(np.array_equal(flow.params[k], again.params[k]) for k in flow.params)
    integral, departure = grid_integral(flow)
    assert abs(integral - 1.0) < QUADRATURE_TOL and departure > 0.1
    assert_bijector(flow.bijector.forward, flow.bijector.inverse, rng.normal(size=(3, 2)))
    with pytest.raises(ValueError, match="conditional planar, radial and Sylvester flows are "
                                         "not supported"):
        BUILDERS[name](2, context_dim=3)
    with pytest.raises(ValueError, match="n_layers"):
        BUILDERS[name](2, n_layers=0)


# ------------------------------------------------------------------------------ save / load
@pytest.mark.parametrize("name, options", [
    ("realnvp", {"batch_norm": True}), ("maf", {"permutation": "random"}),
    ("maf", {"hidden_degrees": "random", "context_dim": 2}), ("nsf", {}), ("nsf-coupling", {}),
    ("glow", {}), ("planar", {}), ("radial", {}), ("sylvester", {}),
])
def test_built_flows_save_and_load(name, options, rng, tmp_path):
    from refflow import io

    kwargs = dict(n_layers=2, **options) if name in ("planar", "radial", "sylvester") \
        else dict(SMALL, **options)
    context = rng.normal(size=(5, 2)) if "context_dim" in options else None
    flow = ready(BUILDERS[name](3, **kwargs, rng=0), rng, context)
    io.save(tmp_path / "flow.npz", flow)
    loaded = io.load(tmp_path / "flow.npz")
    x = rng.normal(size=(5, 3))
    np.testing.assert_array_equal(loaded.log_prob(x, context), flow.log_prob(x, context))
