"""The FlowJAX and Pyro scale maps and the stable affine form: hand-computed values from the
peers' formulas, derivatives against finite differences, and whole layers against FlowJAX's
``MaskedAutoregressive`` and Pyro's ``AffineAutoregressive`` with the same weights."""

import math

import numpy as np
import pytest
from scipy.special import expit

from refflow import Inverse, MaskedAffineAutoregressive
from refflow.bijectors.scale_maps import (
    SCALE_MAPS, STRAIGHT_THROUGH_MAPS, affine_divide, affine_multiply, get_scale_map,
)
from refflow.testing import RTOL_ROUND_TRIP, assert_vjp

# the same float64 formula evaluated by two programs: a few ulps of O(1) values
RTOL_SAME_FORMULA = 1e-13
# a peer's whole layer (MADE GEMMs, exp, sums) in float64 against refflow's: summation order
RTOL_PEER = 1e-12
# peer gradients through the same layer: backpropagation's extra rounding
RTOL_PEER_GRAD = 1e-10


def _softplus(x):
    return math.log1p(math.exp(-abs(x))) + max(x, 0.0)


@pytest.mark.parametrize("u", [-700.0, -20.0, -1.3, 0.0, 0.4, 5.0, 800.0])
def test_flowjax_map_values(u):
    # FlowJAX: scale = softplus(raw) + 0.01, raw = softplus^-1(1 - 0.01) + u
    c = math.log(math.expm1(0.99))
    expected = _softplus(u + c) + 0.01
    log_scale, dlog = SCALE_MAPS["flowjax"](np.array([u]))
    assert math.exp(log_scale[0]) == pytest.approx(expected, rel=RTOL_SAME_FORMULA)
    sig = 1.0 / (1.0 + math.exp(-(u + c))) if u + c > -700 else 0.0
    assert dlog[0] == pytest.approx(sig / expected, rel=RTOL_SAME_FORMULA, abs=1e-300)
    if u == 0.0:  # FlowJAX initialises its affine transformer to the identity
        assert math.exp(log_scale[0]) == pytest.approx(1.0, rel=RTOL_SAME_FORMULA)


def test_pyro_clamp_values_and_straight_through():
    u = np.array([-1e3, -5.5, -5.0, -1.0, 0.0, 2.9, 3.0, 3.1, 1e3])
    value, d = SCALE_MAPS["pyro-clamp"](u)
    np.testing.assert_array_equal(value, [-5, -5, -5, -1, 0, 2.9, 3, 3, 3])
    np.testing.assert_array_equal(d, [0, 0, 1, 1, 1, 1, 1, 0, 0])
    value_st, d_st = STRAIGHT_THROUGH_MAPS["pyro-clamp-st"](u)
    np.testing.assert_array_equal(value_st, value)
    np.testing.assert_array_equal(d_st, np.ones_like(u))
    assert get_scale_map("pyro-clamp-st") is STRAIGHT_THROUGH_MAPS["pyro-clamp-st"]
    assert "pyro-clamp-st" not in SCALE_MAPS  # the property suite and builders never pick it


def test_sigmoid_nofloor_values():
    u = np.array([-800.0, -3.0, 0.0, 2.0, 800.0])
    log_scale, d = SCALE_MAPS["sigmoid-nofloor"](u)
    v = u + 2.0
    expected = -np.logaddexp(0.0, -v)   # log sigmoid(u + 2), Pyro's logsigmoid(logit + bias)
    np.testing.assert_allclose(log_scale, expected, rtol=RTOL_SAME_FORMULA)
    np.testing.assert_allclose(d, expit(-v), rtol=RTOL_SAME_FORMULA)
    assert np.isfinite(log_scale).all() and np.isfinite(d).all()


def test_sigmoid_reciprocal_values():
    # normflows' scale_map="sigmoid": z2 / sigmoid(u + 2) + shift, log-det -log sigmoid(u + 2)
    u = np.array([-700.0, -3.0, 0.0, 2.0, 800.0])
    log_scale, d = SCALE_MAPS["sigmoid-reciprocal"](u)
    v = u + 2.0
    expected = np.logaddexp(0.0, -v)    # -log sigmoid(v) = log(1 + e^-v)
    np.testing.assert_allclose(log_scale, expected, rtol=RTOL_SAME_FORMULA)
    np.testing.assert_allclose(d, -expit(-v), rtol=RTOL_SAME_FORMULA)
    inner = np.abs(u) < 50
    np.testing.assert_allclose(np.exp(log_scale[inner]), 1.0 / expit(v[inner]),
                               rtol=RTOL_SAME_FORMULA)
    assert np.isfinite(log_scale).all() and np.isfinite(d).all()


@pytest.mark.parametrize("name", ["flowjax", "pyro-clamp", "sigmoid-nofloor",
                                  "sigmoid-reciprocal"])
def test_map_derivative_against_finite_differences(name, rng):
    u = rng.normal(scale=3.0, size=50)
    u = u[(np.abs(u + 5) > 1e-3) & (np.abs(u - 3) > 1e-3)]   # away from the clip's kinks
    f = SCALE_MAPS[name]
    h = 1e-6
    fd = (f(u + h)[0] - f(u - h)[0]) / (2 * h)
    np.testing.assert_allclose(f(u)[1], fd, rtol=1e-8, atol=1e-9)


def test_map_float32_stays_float32():
    u = np.linspace(-8, 8, 17)
    for name in ("flowjax", "pyro-clamp", "sigmoid-nofloor", "sigmoid-reciprocal",
                 "pyro-clamp-st"):
        l32, d32 = get_scale_map(name)(u.astype(np.float32))
        l64, d64 = get_scale_map(name)(u)
        assert l32.dtype == d32.dtype == np.float32, name
        np.testing.assert_allclose(l32, l64, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(d32, d64, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("stable", [False, True])
def test_affine_stable_closed_forms_and_pullbacks(rng, stable):
    v, t, u = rng.normal(size=(3, 4, 3))
    l, dl = SCALE_MAPS["flowjax"](u)
    y, ld, _ = affine_multiply(v, t, l, dl, False, stable=stable)
    expected = t + (v - t) * np.exp(l) if stable else v * np.exp(l) + t
    np.testing.assert_allclose(y, expected, rtol=RTOL_SAME_FORMULA)
    back, ld_back, _ = affine_divide(y, t, l, dl, False, stable=stable)
    np.testing.assert_allclose(back, v, rtol=RTOL_ROUND_TRIP, atol=RTOL_ROUND_TRIP)
    np.testing.assert_array_equal(ld, -ld_back)

    for fn in (affine_multiply, affine_divide):
        def vjp(v_, t_, u_, fn=fn):
            l_, dl_ = SCALE_MAPS["flowjax"](u_)
            y_, ld_, pb = fn(v_, t_, l_, dl_, True, stable=stable)

            def pullback(y_bar, ld_bar):
                v_bar, t_bar, u_bar = pb(y_bar, ld_bar)
                return v_bar, {}, t_bar, u_bar
            return y_, ld_, pullback
        assert_vjp(vjp, (v, t, u), {}, rng=0)


def test_stable_option_validated_and_saved(tmp_path):
    with pytest.raises(TypeError, match="MaskedAffineAutoregressive: stable"):
        MaskedAffineAutoregressive(3, stable="yes")
    with pytest.raises(ValueError, match="pyro-clamp-st"):
        MaskedAffineAutoregressive(3, scale="pyro")
    from refflow import load, save
    layer = MaskedAffineAutoregressive(3, hidden=(5,), scale="pyro-clamp-st", stable=True, rng=0)
    save(tmp_path / "m.npz", layer)
    loaded = load(tmp_path / "m.npz")
    assert loaded.stable and loaded.scale == "pyro-clamp-st"
    x = np.random.default_rng(1).normal(size=(4, 3))
    assert np.array_equal(loaded.inverse(x)[0], layer.inverse(x)[0])
    assert "stable" not in MaskedAffineAutoregressive(3, hidden=(5,), rng=0)._config()


# ------------------------------------------------------------------------------------ peers
@pytest.fixture
def flowjax_x64():
    jax = pytest.importorskip("jax")
    pytest.importorskip("flowjax")
    with jax.enable_x64(True):
        yield jax


@pytest.mark.parametrize("depth", [1, 2])
def test_flowjax_masked_autoregressive_layer(flowjax_x64, rng, depth):
    """FlowJAX's MaskedAutoregressive with its default MAF transformer
    (``flowjax.flows._affine_with_min_scale``) equals ``MaskedAffineAutoregressive(scale=
    "flowjax", scale_side="density", hidden_degrees="cyclic")`` with the same weights: values,
    log-dets, the sequential inverse and JAX's gradients."""
    jax = flowjax_x64
    import jax.numpy as jnp
    import paramax
    from flowjax.bijections import MaskedAutoregressive
    from flowjax.flows import _affine_with_min_scale

    dim, width = 4, 7
    fj = MaskedAutoregressive(jax.random.key(3), transformer=_affine_with_min_scale(), dim=dim,
                              nn_width=width, nn_depth=depth)
    # randomise the biases too (FlowJAX's are small uniform draws), to move u off zero
    mlp = paramax.unwrap(fj.masked_autoregressive_mlp)
    layer = MaskedAffineAutoregressive(dim, hidden=(width,) * depth, scale="flowjax",
                                       scale_side="density", rng=0)
    for k, lin in enumerate(mlp.layers):
        w = np.asarray(lin.weight)
        # FlowJAX's masks are refflow's cyclic-degree masks: nothing is lost by masking again
        assert np.array_equal(w * layer.made.masks[k], w)
        layer.params[f"made.w{k}"] = w
        layer.params[f"made.b{k}"] = np.asarray(lin.bias)

    x = rng.normal(size=(5, dim))
    z, log_det = layer.inverse(x)
    z_fj, ld_fj = jax.vmap(fj.transform_and_log_det)(jnp.asarray(x))
    np.testing.assert_allclose(z, np.asarray(z_fj), rtol=RTOL_PEER, atol=RTOL_PEER)
    np.testing.assert_allclose(log_det, np.asarray(ld_fj), rtol=RTOL_PEER, atol=RTOL_PEER)
    x_back, ld_inv = layer.forward(z)
    x_fj, ld_inv_fj = jax.vmap(fj.inverse_and_log_det)(z_fj)
    np.testing.assert_allclose(x_back, np.asarray(x_fj), rtol=RTOL_PEER, atol=RTOL_PEER)
    np.testing.assert_allclose(ld_inv, np.asarray(ld_inv_fj), rtol=RTOL_PEER, atol=RTOL_PEER)

    # gradients of sum(c * z) + sum(g * log_det) for x and the (masked) weights
    c, g = rng.normal(size=(5, dim)), rng.normal(size=5)
    _, _, pullback = layer.inverse_vjp(x)
    x_bar, grads = pullback(c, g)

    import equinox as eqx

    def loss(mlp_, x_):
        fj_ = eqx.tree_at(lambda m: m.masked_autoregressive_mlp, fj, mlp_)
        z_, ld_ = jax.vmap(fj_.transform_and_log_det)(x_)
        return jnp.sum(jnp.asarray(c) * z_) + jnp.sum(jnp.asarray(g) * ld_)

    g_mlp = eqx.filter_grad(lambda m: loss(m, jnp.asarray(x)))(mlp)
    g_x = jax.grad(lambda x_: loss(mlp, x_))(jnp.asarray(x))
    np.testing.assert_allclose(x_bar, np.asarray(g_x), rtol=RTOL_PEER_GRAD, atol=1e-13)
    for k, lin in enumerate(g_mlp.layers):
        gw = np.asarray(lin.weight) * layer.made.masks[k]
        np.testing.assert_allclose(grads[f"made.w{k}"], gw, rtol=RTOL_PEER_GRAD, atol=1e-12)
        np.testing.assert_allclose(grads[f"made.b{k}"], np.asarray(lin.bias),
                                   rtol=RTOL_PEER_GRAD, atol=1e-12)


@pytest.fixture
def torch64():
    torch = pytest.importorskip("torch")
    pytest.importorskip("pyro")
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)   # Pyro's sequential inverse allocates zeros
    yield torch
    torch.set_default_dtype(old)


def _from_pyro_arn(arn, dim, hidden, scale, stable):
    """refflow's ``Inverse(MaskedAffineAutoregressive)`` with a Pyro ``AutoRegressiveNN``'s
    masks and weights: input degrees ``1 + var_index`` (the permutation's inverse), hidden
    degrees ``round(linspace(1, D - 1, H))`` (Pyro's ``sample_mask_indices``), and the output
    rows reordered from Pyro's parameter-major ``[means, log_scales]`` to refflow's
    feature-major ``(mu_i, u_i)`` pairs."""
    from pyro.nn.auto_reg_nn import sample_mask_indices
    perm = arn.permutation.numpy()
    var_index = np.empty(dim, dtype=np.int64)
    var_index[perm] = np.arange(dim)
    degrees = [sample_mask_indices(dim - 1, h).numpy().astype(np.int64) for h in hidden]
    maf = MaskedAffineAutoregressive(dim, hidden=hidden, order=var_index, hidden_degrees=degrees,
                                     scale=scale, scale_side="density", stable=stable, rng=0)
    rows = np.array([p * dim + i for i in range(dim) for p in range(2)])
    for k, lin in enumerate(arn.layers):
        w = (lin.weight * lin.mask).detach().numpy()
        b = lin.bias.detach().numpy()
        if k == len(arn.layers) - 1:
            w, b = w[rows], b[rows]
        assert np.array_equal(w * maf.made.masks[k], w)   # Pyro's masks are refflow's
        maf.params[f"made.w{k}"] = w
        maf.params[f"made.b{k}"] = b
    return Inverse(maf)


@pytest.mark.parametrize("stable", [False, True])
def test_pyro_affine_autoregressive_layer(torch64, rng, stable):
    """Pyro's ``AffineAutoregressive`` (IAF direction, clamp [-5, 3] with straight-through
    gradients, or ``stable=True``) against refflow's ``Inverse(MaskedAffineAutoregressive(...,
    scale_side="density"))`` on the same ``AutoRegressiveNN``: values, log-dets, the sequential
    inverse, and torch's autograd gradients, which refflow reproduces with ``"pyro-clamp-st"``
    (the straight-through surrogate) but not with ``"pyro-clamp"`` (the true derivative)."""
    torch = torch64
    from pyro.distributions.transforms import AffineAutoregressive
    from pyro.nn import AutoRegressiveNN

    dim, hidden = 4, (9, 7)
    torch.manual_seed(5)
    arn = AutoRegressiveNN(dim, list(hidden))
    with torch.no_grad():
        # push some log-scales outside [-5, 3] so that the clamp acts
        arn.layers[-1].bias[dim:] += torch.tensor([0.0, 7.0, -8.0, 0.0])
    peer = AffineAutoregressive(arn, stable=stable)
    scale = "sigmoid-nofloor" if stable else "pyro-clamp-st"
    layer = _from_pyro_arn(arn, dim, hidden, scale, stable)

    z = rng.normal(size=(6, dim))
    zt = torch.tensor(z, requires_grad=True)
    xt = peer(zt)
    ldt = peer.log_abs_det_jacobian(zt, xt)
    x, log_det = layer.forward(z)
    np.testing.assert_allclose(x, xt.detach().numpy(), rtol=RTOL_PEER, atol=RTOL_PEER)
    np.testing.assert_allclose(log_det, ldt.detach().numpy(), rtol=RTOL_PEER, atol=RTOL_PEER)
    if not stable:
        u = np.asarray(arn(zt)[1].detach().numpy())
        assert (u > 3).any() and (u < -5).any()   # the clamp acts on this data

    c, g = rng.normal(size=(6, dim)), rng.normal(size=6)
    ((xt * torch.tensor(c)).sum() + (ldt * torch.tensor(g)).sum()).backward()
    _, _, pullback = layer.forward_vjp(z)
    z_bar, grads = pullback(c, g)
    np.testing.assert_allclose(z_bar, zt.grad.numpy(), rtol=RTOL_PEER_GRAD, atol=1e-12)
    n_last = len(arn.layers) - 1
    rows = np.array([p * dim + i for i in range(dim) for p in range(2)])
    for k, lin in enumerate(arn.layers):
        gw = (lin.weight.grad * lin.mask).numpy()
        gb = lin.bias.grad.numpy()
        if k == n_last:
            gw, gb = gw[rows], gb[rows]
        np.testing.assert_allclose(grads[f"made.w{k}"], gw, rtol=RTOL_PEER_GRAD, atol=1e-12)
        np.testing.assert_allclose(grads[f"made.b{k}"], gb, rtol=RTOL_PEER_GRAD, atol=1e-12)

    # Pyro's sequential inverse (from fresh tensors, not its cache)
    x_new = torch.tensor(x)
    z_peer = peer._inverse(x_new).detach().numpy()
    z_back, ld_back = layer.inverse(x)
    np.testing.assert_allclose(z_back, z_peer, rtol=RTOL_PEER, atol=RTOL_PEER)
    np.testing.assert_allclose(z_back, z, rtol=RTOL_ROUND_TRIP, atol=RTOL_ROUND_TRIP)

    if not stable:
        # the true derivative differs exactly where the clamp is active
        true = _from_pyro_arn(arn, dim, hidden, "pyro-clamp", False)
        z_bar_true = true.forward_vjp(z)[2](c, g)[0]
        assert not np.allclose(z_bar_true, z_bar, rtol=1e-3)
        assert_vjp(true.forward_vjp, z, true.params, rng=0)
