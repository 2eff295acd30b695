"""Degree-ordered incremental sampling of the masked autoregressive layers.

The incremental evaluation (``refflow.nn._incremental``) must give the reference sequential
passes' results (``MADE._sample_passes``, what ``refflow.kernels.fast_paths(False,
paths=["sampling"])`` runs) to round-off. Why ``RTOL_INCREMENTAL``: both
compute the same sums of the same products; only the order of the additions differs (block
GEMMs of other shapes, the masked prefix split in two partial sums), a few ulps per MADE output.
Each such difference moves ``x_i`` by ``|dx_i/dout| * ulps``, and the next coordinates inherit
it through the layer's Lipschitz constant, compounded over at most ``dim`` sequential steps.
The worst seen over 3,000 random configurations
(dim <= 7, every option below, parameters N(0, 0.5), N(0, 0.2) for "exp", blocks 1-8):
6.5e-14 on x and log-det (softplus; 7.8e-15 for exp); whole flows (MAF dim 8 and 64, 5 layers;
conditional MAF; NSF): <= 1.0e-15. The bound 1e-12 leaves ~15x over that worst case and cannot
hide a wrong unit (an O(1) error).

The sampler's x is returned as is and the log-det comes from one full MADE pass at x (so that
forward and inverse log-dets stay exact negatives). Round trips are then limited by the
difference between the sampler's and the full pass's ``mu`` (a few ulps of ``sum |w h|``, not of
``|mu|``) divided by the scale: fine at ``RTOL_ROUND_TRIP`` in the ranges tested here.
"""

import itertools

import numpy as np
import pytest
from hypothesis import example, given, settings, strategies as st

import refflow.nn._incremental as inc
import refflow.nn.made as made_module
from refflow import MaskedAffineAutoregressive, MaskedSplineAutoregressive
from refflow.flows import MAF, NSF
from refflow.kernels import fast_paths
from refflow.nn import MADE

RTOL_INCREMENTAL = 1e-12   # summation order only, compounded over <= dim steps (docstring)
RTOL_FLOAT32 = 2e-5        # float32 round-off 6e-8, amplified by at most ~1e2 (test_properties)
RTOL_ROUND_TRIP = 1e-10    # DEVELOPERS.md

SCALES = ("exp", "softclip", "softplus")
SIDES = ("sampling", "density")
ORDERS = ("natural", "reverse", "random")
RULES = ("cyclic", "equal", "random", "explicit")
HIDDENS = ((), (8,), (16, 16, 16))
DIMS = (1, 2, 3, 7)
CONTEXTS = (None, "batch", "shared")


def rel_err(a, b):
    """``max |a - b| / max(1, |b|)`` elementwise (DEVELOPERS.md, values and log-dets)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.size == 0:
        return 0.0
    return float(np.max(np.abs(a - b) / np.maximum(1.0, np.abs(b))))


def explicit_degrees(dim, hidden, conditional, rng):
    """Valid explicit degrees with gaps: each layer draws from a random subset of the allowed
    values (so some degrees have no unit at all), never below the layer before's minimum."""
    low = 0 if conditional else 1
    high = max(dim - 1, low)
    out, floor = [], low
    for width in hidden:
        allowed = np.arange(floor, high + 1)
        keep = allowed[rng.random(allowed.size) < 0.6]
        keep = keep if keep.size else allowed[-1:]
        deg = rng.choice(keep, size=width)
        out.append(deg)
        floor = int(deg.min())
    return out


def make_layer(rng, dim, *, scale="softclip", side="sampling", order="natural", rule="cyclic",
               hidden=(8,), context=None, cls=MaskedAffineAutoregressive, **kw):
    conditional = context is not None
    if rule == "explicit":
        degrees = explicit_degrees(dim, hidden, conditional, rng)
    elif rule in ("cyclic", "equal") and any(h < dim - 1 + conditional for h in hidden):
        degrees = "random"      # the deterministic rules need wide layers
    else:
        degrees = rule
    if cls is MaskedAffineAutoregressive:
        kw = dict(kw, scale=scale, scale_side=side)
        # tanh hidden units for the unbounded "exp" map, as the registry's case (DEVELOPERS.md)
        kw.setdefault("activation", "tanh" if scale == "exp" else "relu")
    layer = cls(dim, hidden=hidden, order=order, hidden_degrees=degrees,
                context_dim=2 if conditional else None, rng=rng, **kw)
    # Random parameters everywhere, masked entries included: the sampler must apply the masks.
    # Smaller for the unbounded "exp" map, whose sequential steps can leave float64's range
    # (DEVELOPERS.md, known limits); the bounded maps take scale 0.5.
    std = 0.2 if scale == "exp" and cls is MaskedAffineAutoregressive else 0.5
    for key, value in layer.params.items():
        layer.params[key] = rng.normal(0.0, std, size=value.shape)
    return layer


def make_inputs(rng, layer, n, context, dtype=np.float64):
    z = rng.normal(size=(n, layer.dim)).astype(dtype)
    if context is None:
        return z, None
    c = rng.normal(size=(layer.context_dim,) if context == "shared" else (n, layer.context_dim))
    return z, c.astype(dtype)


def reference_forward(layer, z, context):
    """The layer's public forward on the reference paths (sequential passes)."""
    with fast_paths(False, paths=["sampling"]):
        return layer.forward(z, context=context) if context is not None else layer.forward(z)


def sample(layer, z, context):
    """``(x, out)`` of the layer's sampler (the incremental evaluation, fast paths on)."""
    return layer.made._sample(z, context, layer._sample_coordinate)


def forward(layer, z, context):
    return layer.forward(z, context=context) if context is not None else layer.forward(z)


def check_against_reference(layer, z, context):
    """Incremental x, outputs and log-det against the reference passes; returns the worst."""
    x, log_det = forward(layer, z, context)
    x_ref, log_det_ref = reference_forward(layer, z, context)
    err = max(rel_err(x, x_ref), rel_err(log_det, log_det_ref))
    # The sampler's own outputs: MADE's outputs at its x (a full pass there) to round-off.
    c2 = None
    if context is not None:
        c2 = np.broadcast_to(context, (z.shape[0], layer.context_dim)).copy()
    xs, out = sample(layer, z, c2)
    err = max(err, rel_err(xs, x_ref))
    if z.shape[0]:
        err = max(err, rel_err(out, layer.made._forward(x_ref, c2)))
    assert err <= RTOL_INCREMENTAL, err
    return err


# ------------------------------------------------------------------ agreement with reference
def test_every_option_agrees_with_the_reference():
    """Every scale side x scale x order x degree rule; hidden, dim and context cycle through
    their values along the product (each value of each axis is met many times)."""
    rng = np.random.default_rng(0)
    worst = 0.0
    for i, (side, scale, order, rule) in enumerate(itertools.product(SIDES, SCALES, ORDERS,
                                                                     RULES)):
        hidden = HIDDENS[i % 3]
        dim = DIMS[(i // 3) % 4]
        context = CONTEXTS[(i // 12) % 3]
        layer = make_layer(rng, dim, scale=scale, side=side, order=order, rule=rule,
                           hidden=hidden, context=context)
        z, c = make_inputs(rng, layer, 23, context)
        worst = max(worst, check_against_reference(layer, z, c))
    assert worst > 0.0  # the grid did exercise rounding differences (not a vacuous check)


@settings(deadline=None)
@given(seed=st.integers(0, 2**32 - 1), side=st.sampled_from(SIDES), scale=st.sampled_from(SCALES),
       order=st.sampled_from(ORDERS), rule=st.sampled_from(RULES), hidden=st.sampled_from(HIDDENS),
       dim=st.sampled_from(DIMS), context=st.sampled_from(CONTEXTS), n=st.integers(1, 40),
       block=st.sampled_from((1, 2, 3, 8)))
@example(seed=1, side="density", scale="exp", order="random", rule="explicit",
         hidden=(16, 16, 16), dim=7, context="shared", n=5, block=2)
@example(seed=2, side="sampling", scale="softplus", order="reverse", rule="equal", hidden=(),
         dim=1, context="batch", n=1, block=1)
def test_random_configurations_agree(seed, side, scale, order, rule, hidden, dim, context, n,
                                     block):
    """Block sizes below dim exercise the blocked GEMMs' boundaries (the default 8 >= dim)."""
    rng = np.random.default_rng(seed)
    layer = make_layer(rng, dim, scale=scale, side=side, order=order, rule=rule, hidden=hidden,
                       context=context)
    z, c = make_inputs(rng, layer, n, context)
    saved = inc._BLOCK
    inc._BLOCK = block
    try:
        check_against_reference(layer, z, c)
    finally:
        inc._BLOCK = saved


@pytest.mark.parametrize("chunk", [1024, 16])
def test_many_chunks_and_a_padded_last_chunk(monkeypatch, chunk):
    rng = np.random.default_rng(3)
    monkeypatch.setattr(inc, "_CHUNK", chunk)
    monkeypatch.setattr(inc, "_BLOCK", 3)
    layer = make_layer(rng, 7, hidden=(16, 16), context="batch", order="random")
    z, c = make_inputs(rng, layer, 2 * chunk + 5, "batch")   # 3 chunks, the last padded
    check_against_reference(layer, z, c)


def test_reference_sampler_sets_every_coordinate_from_a_full_pass():
    """The reference (sequential passes) returns outputs that are MADE's full pass at its x,
    and every coordinate of x is the elementwise map of those outputs, bit for bit."""
    rng = np.random.default_rng(12)
    for side in SIDES:
        layer = make_layer(rng, 5, side=side, hidden=(16, 16), order="random", context="batch")
        z, c = make_inputs(rng, layer, 30, "batch")
        with fast_paths(False, paths=["sampling"]):
            x_ref, out = sample(layer, z, c)
            np.testing.assert_array_equal(out, layer.made._forward(x_ref, c))
        for i in range(5):
            xi = layer._sample_coordinate(np.ascontiguousarray(z[:, i]),
                                          np.ascontiguousarray(out[:, i]))
            np.testing.assert_array_equal(x_ref[:, i], xi)
        np.testing.assert_array_equal(reference_forward(layer, z, c)[0], x_ref)


def test_sampler_x_is_the_forward_x_and_sampled_from_its_own_outputs():
    rng = np.random.default_rng(4)
    for side in SIDES:
        layer = make_layer(rng, 5, side=side, hidden=(16, 16), order="random")
        z, _ = make_inputs(rng, layer, 30, None)
        x_s, out = sample(layer, z, None)
        # every coordinate is the elementwise map of its own (final) outputs, bit for bit
        for i in range(5):
            xi = layer._sample_coordinate(np.ascontiguousarray(z[:, i]),
                                          np.ascontiguousarray(out[:, i]))
            np.testing.assert_array_equal(x_s[:, i], xi)
        np.testing.assert_array_equal(layer.forward(z)[0], x_s)
        np.testing.assert_array_equal(layer.forward_vjp(z)[0], x_s)


def test_empty_batch_and_single_point():
    rng = np.random.default_rng(5)
    layer = make_layer(rng, 3, hidden=(8,), context="batch")
    x, log_det = layer.forward(np.zeros((0, 3)), context=np.zeros((0, 2)))
    assert x.shape == (0, 3) and log_det.shape == (0,)
    x_s, out = sample(layer, np.zeros((0, 3)), np.zeros((0, 2)))
    assert x_s.shape == (0, 3) and out.shape == (0, 3, 2)
    z, c = make_inputs(rng, layer, 1, "batch")
    x1, ld1 = layer.forward(z[0], context=c[0])
    x_ref, ld_ref = reference_forward(layer, z, c)
    assert x1.shape == (3,) and rel_err(x1, x_ref[0]) <= RTOL_INCREMENTAL
    assert rel_err(ld1, ld_ref[0]) <= RTOL_INCREMENTAL


def test_float32_stays_float32_and_agrees():
    """float32 incremental vs the float64 reference: float32 round-off (6e-8) times the
    amplification of a few sequential steps (<= ~1e2, as for the registered layers)."""
    rng = np.random.default_rng(6)
    for scale in SCALES:
        layer = make_layer(rng, 7, scale=scale, hidden=(16, 16), context="batch", order="random")
        z, c = make_inputs(rng, layer, 50, "batch")
        x32, ld32 = layer.forward(z.astype(np.float32), context=c.astype(np.float32))
        assert x32.dtype == np.float32 and ld32.dtype == np.float32
        xs, out = sample(layer, z.astype(np.float32), c.astype(np.float32))
        assert xs.dtype == np.float32 and out.dtype == np.float32
        x64, ld64 = reference_forward(layer, z, c)
        assert rel_err(x32, x64) <= RTOL_FLOAT32 and rel_err(ld32, ld64) <= RTOL_FLOAT32


def test_round_trip():
    rng = np.random.default_rng(7)
    for side, scale in itertools.product(SIDES, SCALES):
        layer = make_layer(rng, 7, scale=scale, side=side, hidden=(16, 16), order="random",
                           context="batch", rule="random")
        z, c = make_inputs(rng, layer, 40, "batch")
        x, log_det = layer.forward(z, context=c)
        z_back, inv_log_det = layer.inverse(x, context=c)
        assert rel_err(z_back, z) <= RTOL_ROUND_TRIP
        np.testing.assert_array_equal(log_det, -inv_log_det)  # one MADE pass at x both ways


def test_forward_vjp_matches_the_reference():
    """The sampling pullback runs its MADE pass at the sampler's x: values and gradients as
    with the reference passes, to round-off."""
    rng = np.random.default_rng(8)
    for side in SIDES:
        layer = make_layer(rng, 6, side=side, hidden=(16, 16), context="batch", order="random")
        z, c = make_inputs(rng, layer, 20, "batch")
        x_bar, ld_bar = rng.normal(size=z.shape), rng.normal(size=20)
        x, ld, pb = layer.forward_vjp(z, context=c)
        with fast_paths(False, paths=["sampling"]):
            x_r, ld_r, pb_r = layer.forward_vjp(z, context=c)
        assert max(rel_err(x, x_r), rel_err(ld, ld_r)) <= RTOL_INCREMENTAL
        got, ref = pb(x_bar, ld_bar), pb_r(x_bar, ld_bar)
        for a, b in [(got[0], ref[0]), (got[2], ref[2])] + [(got[1][k], ref[1][k])
                                                            for k in ref[1]]:
            assert np.max(np.abs(a - b)) <= RTOL_INCREMENTAL * max(1.0, np.max(np.abs(b)))


def test_a_made_subclass_samples_as_it_declares(monkeypatch):
    """A MADE subclass that replaces the passes must say how it samples (the incremental
    evaluation reads MADE's own layers); one that keeps them keeps the incremental sampler."""
    with pytest.raises(TypeError, match="_sample"):
        class Silent(MADE):
            def _forward(self, x, context=None, weights=None):
                return super()._forward(x, context, weights)

    class Declared(MADE):
        def _forward(self, x, context=None, weights=None):
            return super()._forward(x, context, weights)

        def _sample(self, z, context, sample_coordinate):
            return self._sample_passes(z, context, sample_coordinate)

    class Plain(MADE):
        pass

    calls = []
    incremental = made_module.made_sample
    monkeypatch.setattr(made_module, "made_sample",
                        lambda *args: (calls.append(1), incremental(*args))[1])
    rng = np.random.default_rng(9)
    layer = make_layer(rng, 4, hidden=(8,))
    z, _ = make_inputs(rng, layer, 10, None)
    with fast_paths(False, paths=["sampling"]):
        x_ref, _ = sample(layer, z, None)
    for cls, incremental_calls in ((Declared, 0), (Plain, 1)):
        calls.clear()
        sub = cls(4, (8,), 2, rng=0)
        for k in sub.params:
            sub.params[k] = layer.made.params[k]
        layer.made = sub
        x, _ = sample(layer, z, None)
        assert len(calls) == incremental_calls
        assert rel_err(x, x_ref) <= RTOL_INCREMENTAL


def test_spline_layer_agrees_with_the_reference():
    rng = np.random.default_rng(10)
    for dim, context, order in [(1, None, "natural"), (3, "shared", "reverse"),
                                (6, "batch", "random")]:
        layer = make_layer(rng, dim, hidden=(16, 16), context=context, order=order,
                           cls=MaskedSplineAutoregressive, n_bins=4)
        z, c = make_inputs(rng, layer, 25, context)
        x, log_det = forward(layer, z, c)
        x_ref, log_det_ref = reference_forward(layer, z, c)
        assert max(rel_err(x, x_ref), rel_err(log_det, log_det_ref)) <= RTOL_INCREMENTAL
        z_back = layer.inverse(x, context=c)[0] if c is not None else layer.inverse(x)[0]
        assert rel_err(z_back, z) <= RTOL_ROUND_TRIP


# --------------------------------------------------------------------------- whole flows
@pytest.mark.parametrize("build", [
    lambda: MAF(8, n_layers=5, hidden=(32, 32), rng=0),
    lambda: MAF(6, n_layers=3, hidden=(16, 16), context_dim=2, hidden_degrees="random", rng=1),
    lambda: NSF(6, n_layers=2, hidden=(16, 16), rng=2),
])
def test_flow_sampling_unchanged(build):
    flow = build()
    kw = {} if flow.context_dim is None else {"context": np.array([0.3, -1.2])}
    x, lp = flow.sample_and_log_prob(300, rng=5, **kw)
    s = flow.sample(300, rng=5, **kw)
    with fast_paths(False, paths=["sampling"]):
        x_r, lp_r = flow.sample_and_log_prob(300, rng=5, **kw)
        s_r = flow.sample(300, rng=5, **kw)
    assert rel_err(x, x_r) <= RTOL_INCREMENTAL and rel_err(lp, lp_r) <= RTOL_INCREMENTAL
    assert rel_err(s, s_r) <= RTOL_INCREMENTAL


def test_rows_do_not_depend_on_how_a_large_batch_is_split():
    """Chunks of a fixed row count (padded): the same bits for every split into parts of
    >= 513 rows (Flow.sample's batch_size contract, DEVELOPERS.md "Chunking")."""
    rng = np.random.default_rng(11)
    layer = make_layer(rng, 7, hidden=(32, 32), context="batch", order="random")
    z, c = make_inputs(rng, layer, 2600, "batch")
    whole = sample(layer, z, c)
    for cut in (700, 1024, 1100):
        parts = [sample(layer, z[a:b], c[a:b]) for a, b in ((0, cut), (cut, 2600))]
        for j in range(2):
            np.testing.assert_array_equal(np.concatenate([p[j] for p in parts]), whole[j])
