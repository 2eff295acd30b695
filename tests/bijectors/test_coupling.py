"""AdditiveCoupling (NICE) and AffineCoupling (RealNVP): paper facts, oracle, context, errors."""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy.special import expit

from refflow import Chain, Inverse, Reverse
from refflow.bijectors.coupling import AdditiveCoupling, AffineCoupling
from refflow.testing import assert_bijector, assert_vjp, jacobian_fd

#: Identities computed two ways in float64 (a few roundings apart).
RTOL_EXACT = 1e-12
#: Analytic derivative vs the central-difference Jacobian (refflow.testing's RTOL_FD).
RTOL_FD = 1e-6
#: float32 results vs the float64 computation: O(1) values through a small MLP, a few ulps.
TOL_FLOAT32 = 1e-5
#: Entries of d x_b / d z_a that must be non-zero: random conditioners give O(0.1) entries.
MIN_COUPLING = 1e-4

SCALES = ["exp", "softplus", "sigmoid", "softclip", "tanh"]
MASK = np.array([True, False, True, False, False])  # non-default: b = {0, 2}, a = {1, 3, 4}
DIM = 5
HIDDEN = (7, 6)


@pytest.fixture
def rng():
    return np.random.default_rng(20250117)


def _randomize(layer, rng, scale=0.3):
    for key, value in layer.params.items():
        layer.params[key] = rng.normal(0.0, scale, size=value.shape)
    return layer


def _affine(rng, *, scale="exp", mask=MASK, context_dim=None, activation="tanh", **kwargs):
    layer = AffineCoupling(DIM, mask=mask, hidden=HIDDEN, activation=activation, scale=scale,
                           context_dim=context_dim, rng=rng, **kwargs)
    return _randomize(layer, rng)


def _additive(rng, *, mask=MASK, context_dim=None, activation="tanh", **kwargs):
    layer = AdditiveCoupling(DIM, mask=mask, hidden=HIDDEN, activation=activation,
                             context_dim=context_dim, rng=rng, **kwargs)
    return _randomize(layer, rng)


def _parts(layer):
    mask = layer.buffers["mask"]
    return np.flatnonzero(~mask), np.flatnonzero(mask)


def _log_scale_by_hand(name, u):
    """Each scale map's log-scale written out independently of refflow.bijectors.scale_maps."""
    if name == "exp":
        return u
    if name == "softplus":
        return np.log(np.log1p(np.exp(u)) + 1e-3)
    if name == "sigmoid":
        return np.log(expit(u + 2.0) + 1e-3)
    if name == "softclip":
        return u / (1.0 + np.abs(u) / -math.log(1e-3))
    if name == "tanh":
        return 2.0 * np.tanh(u / 2.0)
    raise AssertionError(name)


def _conditioner_out(layer, v, context=None):
    a, _ = _parts(layer)
    h = np.ascontiguousarray(v[:, a])
    if context is not None:
        h = np.concatenate([h, context], axis=1)
    return layer.conditioner._forward(h)


# ============================================================================ construction
class TestConstruction:
    def test_default_mask_transforms_the_second_half(self):
        assert AffineCoupling(5, hidden=(4,), rng=0).buffers["mask"].tolist() == [
            False, False, True, True, True]
        assert AdditiveCoupling(4, hidden=(4,), rng=0).buffers["mask"].tolist() == [
            False, False, True, True]

    @pytest.mark.parametrize("cls, per_feature", [(AdditiveCoupling, 1), (AffineCoupling, 2)])
    @pytest.mark.parametrize("context_dim", [None, 3])
    def test_conditioner_sizes(self, cls, per_feature, context_dim):
        layer = cls(DIM, mask=MASK, hidden=(4,), context_dim=context_dim, rng=0)
        n_in = 3 + (context_dim or 0)
        out = layer.conditioner._forward(np.zeros((2, n_in)))
        assert out.shape == (2, per_feature * 2)
        assert layer.context_dim == context_dim

    @pytest.mark.parametrize("mask", [[1, 0, 1, 0, 0], np.array([1, 0, 1, 0, 0], dtype=np.int8),
                                      [True, False, True, False, False], MASK.astype(np.uint8)])
    def test_mask_accepts_bools_and_zero_one_ints(self, mask):
        layer = AffineCoupling(DIM, mask=mask, hidden=(4,), rng=0)
        assert layer.buffers["mask"].dtype == bool
        np.testing.assert_array_equal(layer.buffers["mask"], MASK)

    def test_mask_is_copied(self):
        mask = MASK.copy()
        layer = AffineCoupling(DIM, mask=mask, hidden=(4,), rng=0)
        mask[:] = ~MASK
        np.testing.assert_array_equal(layer.buffers["mask"], MASK)

    def test_params_are_prefixed_views_of_the_conditioner(self, rng):
        layer = _affine(rng)
        assert set(layer.params) == {f"conditioner.{k}" for k in layer.conditioner.params}
        assert all(v.dtype == np.float64 for v in layer.params.values())
        z = rng.normal(size=(3, DIM))
        x_before = layer.forward(z)[0]
        key = sorted(layer.params)[0]
        new = rng.normal(size=layer.params[key].shape)
        layer.params[key] = new  # written in place into the MLP's array
        np.testing.assert_array_equal(layer.conditioner.params[key.split(".", 1)[1]], new)
        assert not np.array_equal(layer.forward(z)[0], x_before)

    def test_same_seed_same_layer(self):
        a = AffineCoupling(DIM, hidden=(4,), rng=7)
        b = AffineCoupling(DIM, hidden=(4,), rng=7)
        assert all(np.array_equal(a.params[k], b.params[k]) for k in a.params)

    @pytest.mark.parametrize("cls", [AdditiveCoupling, AffineCoupling])
    @pytest.mark.parametrize("kwargs, error, match", [
        ({"dim": 1}, ValueError, "at least 2"),
        ({"dim": 0}, ValueError, "dim"),
        ({"dim": 2.0}, TypeError, "dim"),
        ({"dim": True}, TypeError, "dim"),
        ({"mask": [True, False]}, ValueError, r"shape \(5,\)"),
        ({"mask": np.ones((1, 5), dtype=bool)}, ValueError, r"shape \(5,\)"),
        ({"mask": [1] * 5}, ValueError, "at least one"),
        ({"mask": [0] * 5}, ValueError, "at least one"),
        ({"mask": [1, 0, 2, 0, 0]}, ValueError, "0 and 1"),
        ({"mask": [1, 0, -1, 0, 0]}, ValueError, "0 and 1"),
        ({"mask": [1.0, 0.0, 1.0, 0.0, 0.0]}, ValueError, "bools or 0/1"),
        ({"mask": "10100"}, ValueError, "mask"),
        ({"context_dim": 0}, ValueError, "context_dim"),
        ({"context_dim": -2}, ValueError, "context_dim"),
        ({"context_dim": 1.5}, TypeError, "context_dim"),
        ({"context_dim": True}, TypeError, "context_dim"),
        ({"activation": "nope"}, ValueError, "activation"),
    ])
    def test_bad_arguments(self, cls, kwargs, error, match):
        args = {"dim": DIM, "hidden": (4,), "rng": 0, **kwargs}
        dim = args.pop("dim")
        with pytest.raises(error, match=match) as info:
            cls(dim, **args)
        assert cls.__name__ in str(info.value)

    @pytest.mark.parametrize("scale", ["bogus", "EXP", None, 1])
    def test_bad_scale_name(self, scale):
        with pytest.raises(ValueError, match="AffineCoupling.*scale"):
            AffineCoupling(DIM, hidden=(4,), scale=scale, rng=0)

    def test_repr(self):
        assert repr(AffineCoupling(4, hidden=(4,), scale="tanh", context_dim=2, rng=0)) == \
            "AffineCoupling(dim=4, scale='tanh', context_dim=2)"
        assert repr(AdditiveCoupling(4, hidden=(4,), rng=0)) == \
            "AdditiveCoupling(dim=4, context_dim=None)"


# ============================================================================== paper facts
class TestPaperFacts:
    @pytest.mark.parametrize("make", [_affine, _additive])
    def test_identity_part_passes_through_exactly(self, rng, make):
        layer = make(rng)
        a, b = _parts(layer)
        z = rng.normal(size=(6, DIM))
        x, _ = layer.forward(z)
        np.testing.assert_array_equal(x[:, a], z[:, a])
        assert np.all(x[:, b] != z[:, b])  # the transformed part really is transformed
        z_back, _ = layer.inverse(x)
        np.testing.assert_array_equal(z_back[:, a], x[:, a])

    @pytest.mark.parametrize("scale", SCALES)
    def test_forward_inverse_and_log_det_by_hand(self, rng, scale):
        layer = _affine(rng, scale=scale)
        a, b = _parts(layer)
        z = rng.normal(size=(6, DIM))
        out = _conditioner_out(layer, z)
        t, log_scale = out[:, :2], _log_scale_by_hand(scale, out[:, 2:])
        x, log_det = layer.forward(z)
        np.testing.assert_allclose(x[:, b], z[:, b] * np.exp(log_scale) + t, rtol=RTOL_EXACT)
        np.testing.assert_allclose(log_det, log_scale.sum(axis=1), rtol=RTOL_EXACT)
        z_back, inv_log_det = layer.inverse(x)
        np.testing.assert_allclose(z_back[:, b], (x[:, b] - t) * np.exp(-log_scale),
                                   rtol=RTOL_EXACT)
        np.testing.assert_allclose(inv_log_det, -log_scale.sum(axis=1), rtol=RTOL_EXACT)

    def test_additive_by_hand(self, rng):
        layer = _additive(rng)
        a, b = _parts(layer)
        z = rng.normal(size=(6, DIM))
        t = _conditioner_out(layer, z)
        x, log_det = layer.forward(z)
        np.testing.assert_allclose(x[:, b], z[:, b] + t, rtol=RTOL_EXACT)
        z_back, inv_log_det = layer.inverse(x)
        np.testing.assert_allclose(z_back[:, b], x[:, b] - t, rtol=RTOL_EXACT)
        np.testing.assert_array_equal(log_det, np.zeros(6))
        np.testing.assert_array_equal(inv_log_det, np.zeros(6))

    @pytest.mark.parametrize("scale", SCALES)
    def test_jacobian_is_block_triangular_with_the_scales_on_the_diagonal(self, rng, scale):
        layer = _affine(rng, scale=scale)
        a, b = _parts(layer)
        z = rng.normal(size=(4, DIM))
        jac = jacobian_fd(layer.forward, z)
        scale_by_hand = np.exp(_log_scale_by_hand(scale, _conditioner_out(layer, z)[:, 2:]))
        # x_a = z_a exactly: central differences of the identity are exact.
        np.testing.assert_array_equal(jac[:, a][:, :, a], np.broadcast_to(np.eye(3), (4, 3, 3)))
        np.testing.assert_array_equal(jac[:, a][:, :, b], 0.0)
        jac_bb = jac[:, b][:, :, b]
        np.testing.assert_array_equal(jac_bb[:, 0, 1], 0.0)  # diagonal exactly
        np.testing.assert_array_equal(jac_bb[:, 1, 0], 0.0)
        np.testing.assert_allclose(np.diagonal(jac_bb, axis1=1, axis2=2), scale_by_hand,
                                   rtol=RTOL_FD)
        assert np.all(np.abs(jac[:, b][:, :, a]).max(axis=2) > MIN_COUPLING)

    def test_additive_is_volume_preserving(self, rng):
        layer = _additive(rng)
        a, b = _parts(layer)
        z = rng.normal(size=(4, DIM))
        jac = jacobian_fd(layer.forward, z)
        np.testing.assert_allclose(np.diagonal(jac, axis1=1, axis2=2), 1.0, rtol=RTOL_FD)
        sign, logabsdet = np.linalg.slogdet(jac)
        np.testing.assert_array_equal(sign, 1.0)
        np.testing.assert_allclose(logabsdet, 0.0, atol=RTOL_FD)
        assert np.all(np.abs(jac[:, b][:, :, a]).max(axis=2) > MIN_COUPLING)

    @pytest.mark.parametrize("cls", [AdditiveCoupling, AffineCoupling])
    def test_zero_last_gives_the_identity(self, rng, cls):
        layer = cls(DIM, mask=MASK, hidden=(6,), zero_last=True, rng=0)
        z = rng.normal(size=(5, DIM))
        x, log_det = layer.forward(z)
        np.testing.assert_array_equal(x, z)
        np.testing.assert_array_equal(log_det, 0.0)
        z_back, inv_log_det = layer.inverse(z)
        np.testing.assert_array_equal(z_back, z)
        np.testing.assert_array_equal(inv_log_det, 0.0)

    def test_zero_last_with_another_scale_map_is_a_constant_scale(self, rng):
        layer = AffineCoupling(DIM, mask=MASK, hidden=(6,), scale="softplus", zero_last=True,
                               rng=0)
        z = rng.normal(size=(5, DIM))
        x, log_det = layer.forward(z)
        constant = math.log(math.log(2.0) + 1e-3)
        np.testing.assert_allclose(log_det, 2 * constant, rtol=RTOL_EXACT)
        np.testing.assert_allclose(x[:, MASK], z[:, MASK] * math.exp(constant), rtol=RTOL_EXACT)

    @given(st.integers(2, 6).flatmap(lambda d: st.lists(st.booleans(), min_size=d, max_size=d)
                                     .filter(lambda m: any(m) and not all(m))),
           st.integers(0, 2**32 - 1))
    def test_any_mask_round_trips_and_keeps_its_identity_part(self, mask, seed):
        rng = np.random.default_rng(seed)
        mask = np.array(mask)
        layer = _randomize(AffineCoupling(mask.size, mask=mask, hidden=(5,), activation="tanh",
                                          rng=rng), rng, scale=0.5)
        z = rng.normal(size=(4, mask.size))
        x, log_det = layer.forward(z)
        np.testing.assert_array_equal(x[:, ~mask], z[:, ~mask])
        z_back, inv_log_det = layer.inverse(x)
        np.testing.assert_allclose(z_back, z, rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(log_det + inv_log_det, 0.0, atol=1e-12)


# =================================================================================== oracle
class TestOracle:
    @pytest.mark.parametrize("mask", [None, MASK], ids=["default-mask", "mask"])
    @pytest.mark.parametrize("scale", SCALES)
    def test_affine(self, rng, scale, mask):
        layer = _affine(rng, scale=scale, mask=mask)
        z = rng.normal(size=(4, DIM))
        assert_bijector(layer.forward, layer.inverse, z)
        assert_vjp(layer.forward_vjp, z, layer.params, rng=0)
        x = layer.forward(z)[0]
        assert_vjp(layer.inverse_vjp, x, layer.params, rng=0)

    @pytest.mark.parametrize("mask", [None, MASK], ids=["default-mask", "mask"])
    def test_additive(self, rng, mask):
        layer = _additive(rng, mask=mask)
        z = rng.normal(size=(4, DIM))
        assert_bijector(layer.forward, layer.inverse, z)
        assert_vjp(layer.forward_vjp, z, layer.params, rng=0)
        assert_vjp(layer.inverse_vjp, layer.forward(z)[0], layer.params, rng=0)

    @pytest.mark.parametrize("cls", [AdditiveCoupling, AffineCoupling])
    def test_default_relu_conditioner(self, rng, cls):
        layer = _randomize(cls(4, hidden=(12, 12), rng=rng), rng)
        z = rng.normal(size=(3, 4))
        assert_bijector(layer.forward, layer.inverse, z)
        assert_vjp(layer.forward_vjp, z, layer.params, rng=0)
        assert_vjp(layer.inverse_vjp, layer.forward(z)[0], layer.params, rng=0)

    def test_log_det_cotangent_reaches_the_parameters(self, rng):
        # Only the log-det is pulled back: the gradient is that of sum(log_scale).
        layer = _affine(rng, scale="softclip")
        z = rng.normal(size=(3, DIM))
        _, _, pullback = layer.forward_vjp(z)
        z_bar, grads = pullback(None, np.ones(3))
        assert np.any(z_bar != 0) and any(np.any(g != 0) for g in grads.values())
        _, _, pullback = _additive(rng).forward_vjp(z)
        z_bar, grads = pullback(None, np.ones(3))
        np.testing.assert_array_equal(z_bar, 0.0)
        assert all(np.all(g == 0) for g in grads.values())


# ================================================================================= context
class TestContext:
    @pytest.mark.parametrize("make, scale", [(_affine, "exp"), (_affine, "sigmoid"),
                                             (_affine, "tanh"), (_additive, None)])
    def test_oracle_with_context(self, rng, make, scale):
        kwargs = {} if scale is None else {"scale": scale}
        layer = make(rng, context_dim=3, **kwargs)
        z, c = rng.normal(size=(4, DIM)), rng.normal(size=(4, 3))
        assert_bijector(lambda v: layer.forward(v, context=c),
                        lambda v: layer.inverse(v, context=c), z)
        report = assert_vjp(layer.forward_vjp, (z, c), layer.params, rng=0)
        assert "input[1]" in report.errors  # context_bar was compared with FD
        x = layer.forward(z, c)[0]
        assert_vjp(layer.inverse_vjp, (x, c), layer.params, rng=0)

    def test_context_changes_the_map(self, rng):
        layer = _affine(rng, context_dim=2)
        a, b = _parts(layer)
        z = rng.normal(size=(3, DIM))
        x1, ld1 = layer.forward(z, rng.normal(size=(3, 2)))
        x2, ld2 = layer.forward(z, rng.normal(size=(3, 2)))
        np.testing.assert_array_equal(x1[:, a], x2[:, a])
        assert np.all(x1[:, b] != x2[:, b]) and np.all(ld1 != ld2)

    def test_by_hand_with_context(self, rng):
        layer = _affine(rng, context_dim=2)
        a, b = _parts(layer)
        z, c = rng.normal(size=(3, DIM)), rng.normal(size=(3, 2))
        out = _conditioner_out(layer, z, c)
        x, log_det = layer.forward(z, c)
        np.testing.assert_allclose(x[:, b], z[:, b] * np.exp(out[:, 2:]) + out[:, :2],
                                   rtol=RTOL_EXACT)
        np.testing.assert_allclose(log_det, out[:, 2:].sum(axis=1), rtol=RTOL_EXACT)

    @pytest.mark.parametrize("direction", ["forward", "inverse"])
    def test_single_context_is_shared_and_its_cotangent_summed(self, rng, direction):
        layer = _affine(rng, context_dim=2, scale="softplus")
        v, c = rng.normal(size=(4, DIM)), rng.normal(size=2)
        tiled = np.tile(c, (4, 1))
        out_s, ld_s, pb_s = getattr(layer, f"{direction}_vjp")(v, c)
        out_t, ld_t, pb_t = getattr(layer, f"{direction}_vjp")(v, tiled)
        np.testing.assert_array_equal(out_s, out_t)
        np.testing.assert_array_equal(ld_s, ld_t)
        out_bar, ld_bar = rng.normal(size=(4, DIM)), rng.normal(size=4)
        in_s, grads_s, c_bar_s = pb_s(out_bar, ld_bar)
        in_t, grads_t, c_bar_t = pb_t(out_bar, ld_bar)
        assert c_bar_s.shape == (2,) and c_bar_t.shape == (4, 2)
        np.testing.assert_allclose(c_bar_s, c_bar_t.sum(axis=0), rtol=RTOL_EXACT)
        np.testing.assert_array_equal(in_s, in_t)
        assert all(np.array_equal(grads_s[k], grads_t[k]) for k in grads_t)

    def test_single_context_gradient_against_fd(self, rng):
        layer = _affine(rng, context_dim=2, scale="tanh")
        z, c = rng.normal(size=(3, DIM)), rng.normal(size=2)
        assert_vjp(layer.forward_vjp, (z, c), layer.params, rng=0)
        assert_vjp(layer.inverse_vjp, (layer.forward(z, c)[0], c), layer.params, rng=0)

    def test_pullback_arity(self, rng):
        z = rng.normal(size=(2, DIM))
        assert len(_affine(rng).forward_vjp(z)[2]()) == 2
        assert len(_affine(rng, context_dim=1).inverse_vjp(z, np.ones((2, 1)))[2]()) == 3

    @pytest.mark.parametrize("method", ["forward", "inverse", "forward_vjp", "inverse_vjp"])
    def test_bad_context(self, rng, method):
        z = rng.normal(size=(3, DIM))
        unconditional, conditional = _affine(rng), _additive(rng, context_dim=2)
        with pytest.raises(ValueError, match="unconditional"):
            getattr(unconditional, method)(z, np.ones((3, 2)))
        with pytest.raises(ValueError, match="conditional"):
            getattr(conditional, method)(z)
        with pytest.raises(ValueError, match="context"):
            getattr(conditional, method)(z, np.ones((3, 3)))  # wrong width
        with pytest.raises(ValueError, match="context"):
            getattr(conditional, method)(z, np.ones(3))  # wrong width, single context
        with pytest.raises(ValueError, match="rows"):
            getattr(conditional, method)(z, np.ones((2, 2)))  # wrong batch
        with pytest.raises(ValueError, match="context"):
            getattr(conditional, method)(z, np.array([[0.0, np.nan]] * 3))

    def test_in_a_chain_and_inverted(self, rng):
        chain = Chain([_affine(rng, context_dim=2), Reverse(DIM),
                       _additive(rng, context_dim=2, mask=None)])
        z, c = rng.normal(size=(3, DIM)), rng.normal(size=(3, 2))
        assert_bijector(lambda v: chain.forward(v, c), lambda v: chain.inverse(v, c), z)
        assert_vjp(chain.forward_vjp, (z, c), chain.params, rng=0)
        inverted = Inverse(chain.layers[0])
        x, log_det = chain.layers[0].forward(z, c)
        z_back, inv_log_det = inverted.forward(x, c)
        np.testing.assert_allclose(z_back, z, rtol=RTOL_EXACT, atol=RTOL_EXACT)
        np.testing.assert_allclose(inv_log_det, -log_det, rtol=RTOL_EXACT)


# ======================================================================= dtypes and shapes
class TestDtypesAndShapes:
    @pytest.mark.parametrize("make, kwargs", [(_affine, {"scale": s}) for s in SCALES]
                             + [(_additive, {})])
    @pytest.mark.parametrize("context_dim", [None, 2])
    def test_float32_in_float32_out(self, rng, make, kwargs, context_dim):
        layer = make(rng, context_dim=context_dim, **kwargs)
        z = rng.normal(size=(5, DIM))
        c = None if context_dim is None else rng.normal(size=(5, 2))
        c32 = None if c is None else c.astype(np.float32)
        x64, ld64 = layer.forward(z, c)
        x32, ld32 = layer.forward(z.astype(np.float32), c32)
        assert x32.dtype == np.float32 and ld32.dtype == np.float32
        np.testing.assert_allclose(x32, x64, rtol=TOL_FLOAT32, atol=TOL_FLOAT32)
        np.testing.assert_allclose(ld32, ld64, rtol=TOL_FLOAT32, atol=TOL_FLOAT32)
        z32, ild32 = layer.inverse(x32, c32)
        assert z32.dtype == np.float32 and ild32.dtype == np.float32
        np.testing.assert_allclose(z32, z, rtol=TOL_FLOAT32, atol=TOL_FLOAT32)
        result = layer.forward_vjp(z.astype(np.float32), c32)
        bars = result[2](np.ones((5, DIM), np.float32), np.ones(5, np.float32))
        assert bars[0].dtype == np.float32
        assert all(g.dtype == np.float64 for g in bars[1].values())
        assert all(v.dtype == np.float64 for v in layer.params.values())

    @pytest.mark.parametrize("make", [_affine, _additive])
    def test_single_point(self, rng, make):
        layer = make(rng)
        z = rng.normal(size=(3, DIM))
        x, log_det = layer.forward(z)
        x0, ld0 = layer.forward(z[0])
        assert x0.shape == (DIM,) and np.shape(ld0) == ()
        # allclose, not equal: BLAS may round a 1-row product differently from a 3-row one
        np.testing.assert_allclose(x0, x[0], rtol=RTOL_EXACT, atol=RTOL_EXACT)
        np.testing.assert_allclose(ld0, log_det[0], rtol=RTOL_EXACT, atol=RTOL_EXACT)
        z0, _, pullback = layer.inverse_vjp(x[0])
        x_bar, grads = pullback(np.ones(DIM), 1.0)
        assert z0.shape == x_bar.shape == (DIM,)
        np.testing.assert_allclose(z0, z[0], rtol=RTOL_EXACT, atol=RTOL_EXACT)

    def test_single_point_with_context(self, rng):
        layer = _affine(rng, context_dim=2)
        z, c = rng.normal(size=DIM), rng.normal(size=2)
        x, log_det, pullback = layer.forward_vjp(z, c)
        z_bar, grads, c_bar = pullback(np.ones(DIM), 1.0)
        assert x.shape == z_bar.shape == (DIM,) and c_bar.shape == (2,)
        np.testing.assert_allclose(x, layer.forward(z[None], c[None])[0][0], rtol=RTOL_EXACT)

    @pytest.mark.parametrize("make", [_affine, _additive])
    @pytest.mark.parametrize("context_dim", [None, 2])
    def test_empty_batch(self, rng, make, context_dim):
        layer = make(rng, context_dim=context_dim)
        z = np.zeros((0, DIM))
        c = None if context_dim is None else np.zeros((0, 2))
        for direction in ("forward", "inverse"):
            out, log_det, pullback = getattr(layer, f"{direction}_vjp")(z, c)
            assert out.shape == (0, DIM) and log_det.shape == (0,)
            bars = pullback(np.zeros((0, DIM)), np.zeros(0))
            assert bars[0].shape == (0, DIM)
            assert set(bars[1]) == set(layer.params)
            assert all(np.array_equal(bars[1][k], np.zeros(v.shape))
                       for k, v in layer.params.items())
            if context_dim is not None:
                assert bars[2].shape == (0, 2)

    def test_outputs_are_c_contiguous_new_arrays(self, rng):
        layer = _affine(rng, context_dim=2)
        z = np.asfortranarray(rng.normal(size=(4, DIM)))
        c = np.asfortranarray(rng.normal(size=(4, 2)))
        x, log_det, pullback = layer.forward_vjp(z, c)
        z_bar, _, c_bar = pullback(np.asfortranarray(rng.normal(size=(4, DIM))), np.ones(4))
        for arr in (x, z_bar, c_bar):
            assert arr.flags.c_contiguous
        np.testing.assert_array_equal(x, layer.forward(np.ascontiguousarray(z), c)[0])
        assert not np.shares_memory(x, z)


# ===================================================================== pullback behaviour
class TestPullbackBehaviour:
    @pytest.mark.parametrize("direction", ["forward", "inverse"])
    def test_vjp_pass_matches_plain_pass(self, rng, direction):
        layer = _affine(rng, scale="sigmoid", context_dim=2)
        v, c = rng.normal(size=(4, DIM)), rng.normal(size=(4, 2))
        out, log_det = getattr(layer, direction)(v, c)
        out_v, log_det_v, _ = getattr(layer, f"{direction}_vjp")(v, c)
        np.testing.assert_array_equal(out, out_v)
        np.testing.assert_array_equal(log_det, log_det_v)

    @pytest.mark.parametrize("direction", ["forward", "inverse"])
    def test_pullback_is_unaffected_by_later_parameter_updates(self, rng, direction):
        layer = _affine(rng)
        v = rng.normal(size=(3, DIM))
        _, _, pullback = getattr(layer, f"{direction}_vjp")(v)
        out_bar, ld_bar = rng.normal(size=(3, DIM)), rng.normal(size=3)
        before = pullback(out_bar, ld_bar)
        for key, value in layer.params.items():
            layer.params[key] = value + 1.0
        after = pullback(out_bar, ld_bar)
        np.testing.assert_array_equal(before[0], after[0])
        assert all(np.array_equal(before[1][k], after[1][k]) for k in before[1])

    def test_exp_scale_overflow_is_a_clear_error_and_bounded_maps_stay_finite(self, rng):
        z = rng.normal(size=(2, DIM))
        last_bias = f"conditioner.b{len(HIDDEN)}"  # the MLP has len(hidden) + 1 layers
        for scale in SCALES:
            layer = _affine(rng, scale=scale)
            # t and u near 800: exp(800) overflows float64, the bounded maps do not care
            layer.params[last_bias] = np.full(layer.params[last_bias].shape, 800.0)
            if scale == "exp":
                with pytest.raises(ValueError, match="AffineCoupling.forward.*not finite"):
                    layer.forward(z)
            else:
                x, log_det = layer.forward(z)
                assert np.isfinite(x).all() and np.isfinite(log_det).all()
                z_back, _ = layer.inverse(x)
                np.testing.assert_allclose(z_back, z, rtol=1e-10, atol=1e-10)

    def test_mask_buffer_that_no_longer_matches_is_refused(self, rng):
        layer = _affine(rng)
        layer.buffers["mask"][...] = [True, True, True, False, False]
        with pytest.raises(ValueError, match="mask"):
            layer.forward(rng.normal(size=(2, DIM)))

    def test_mask_buffer_is_read_at_call_time(self, rng):
        layer = _affine(rng)
        z = rng.normal(size=(3, DIM))
        layer.buffers["mask"][...] = [False, True, False, True, False]
        x, _ = layer.forward(z)
        np.testing.assert_array_equal(x[:, [0, 2, 4]], z[:, [0, 2, 4]])
        np.testing.assert_allclose(layer.inverse(x)[0], z, rtol=RTOL_EXACT, atol=RTOL_EXACT)
