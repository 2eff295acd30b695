"""The "pyro" and "flowjax" spline maps (identity tails, boundary slopes other than 1): the
knots against transcriptions of the peers' formulas, pullbacks against finite differences, and
whole splines against Pyro's ``Spline(order="quadratic")`` and FlowJAX's
``RationalQuadraticSpline`` with the same raw parameters (values, log-dets, inverses, autograd
gradients)."""

import math

import numpy as np
import pytest

from refflow import RationalQuadraticSpline
from refflow.bijectors.spline_maps import get_spline_map
from refflow.kernels import fast_paths
from refflow.testing import RTOL_ROUND_TRIP, assert_vjp

# knots by the same formula in another summation order: a few ulps of B
RTOL_EXACT = 1e-14
# a peer's spline values and log-dets in float64 from the same knots (another evaluation order
# of eq. 4, and the peer's own root formula in the inverse)
RTOL_PEER = 1e-12
# peer autograd gradients (through softmax, cumsum and the spline) against the hand pullbacks
RTOL_PEER_GRAD = 1e-10

K = 6


def _softmax(u):
    e = np.exp(u - u.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _params(rng, m, n, scale=1.0):
    return (scale * rng.standard_normal((n, m.n_bins)),
            scale * rng.standard_normal((n, m.n_bins)),
            scale * rng.standard_normal((n, m.n_derivatives)))


def _map_vjp(m):
    def vjp(uw, uh, ud):
        (xk, yk, dk), pullback = m.vjp(uw, uh, ud)

        def pb(xk_bar, yk_bar, dk_bar):
            uw_bar, uh_bar, ud_bar = pullback(xk_bar, yk_bar, dk_bar)
            return uw_bar, {}, uh_bar, ud_bar
        return xk, yk, dk, pb
    return vjp


def test_pyro_knots_follow_its_formula(rng):
    """``_monotonic_rational_spline``: widths ``m + (1 - K m) softmax``, ``_calculate_knots``
    (pad, ``(upper - lower) * cumsum + lower``, ends overwritten), inner derivatives
    ``m + softplus``, boundary ``1 - m``."""
    m = get_spline_map("pyro", n_bins=K, bound=2.5)
    uw, uh, ud = _params(rng, m, 40, 2.0)
    xk, yk, dk = m(uw, uh, ud)
    for u, knots in ((uw, xk), (uh, yk)):
        w = 1e-3 + (1 - 1e-3 * K) * _softmax(u)
        expected = np.concatenate([np.zeros((40, 1)), np.cumsum(w, -1)], -1) * 5.0 - 2.5
        expected[:, 0], expected[:, -1] = -2.5, 2.5
        np.testing.assert_allclose(knots, expected, rtol=0, atol=RTOL_EXACT * 2.5)
    np.testing.assert_allclose(dk[:, 1:-1], 1e-3 + np.logaddexp(0, ud), rtol=RTOL_EXACT)
    assert np.all(dk[:, [0, -1]] == 0.999)


def test_flowjax_knots_follow_its_formula(rng):
    """paramax's ``RealToIncreasingOnInterval(arr, interval, min_width=1e-3,
    include_endpoints="both")``: ``widths = m + (2B - m K) softmax(arr)``, ``[lower, lower +
    cumsum(widths)[:-1], upper]``; derivatives ``softplus(u + softplus^-1(1 - m_d)) + m_d`` for
    all ``K + 1`` knots."""
    B, mw = 1.5, 1e-3
    m = get_spline_map("flowjax", n_bins=K, bound=B)
    uw, uh, ud = _params(rng, m, 40, 2.0)
    xk, yk, dk = m(uw, uh, ud)
    for u, knots in ((uw, xk), (uh, yk)):
        w = mw + (2 * B - mw * K) * _softmax(u)
        expected = np.concatenate([np.full((40, 1), -B), -B + np.cumsum(w, -1)[:, :-1],
                                   np.full((40, 1), B)], -1)
        np.testing.assert_allclose(knots, expected, rtol=0, atol=RTOL_EXACT * B)
    offset = math.log(math.expm1(0.999))
    np.testing.assert_allclose(dk, np.logaddexp(0, ud + offset) + 1e-3, rtol=RTOL_EXACT)
    # zero parameters: the identity (equal x and y knots, unit slopes)
    xk0, yk0, dk0 = m(np.zeros(K), np.zeros(K), np.zeros(K + 1))
    np.testing.assert_array_equal(xk0, yk0)
    np.testing.assert_allclose(dk0, 1.0, rtol=4 * np.finfo(float).eps)


@pytest.mark.parametrize("name,kwargs", [("pyro", {}), ("pyro", {"bound": 1.0}),
                                         ("flowjax", {"bound": 2.0}),
                                         ("flowjax", {"bound": 2.0, "min_bin_width": 0.1,
                                                      "min_derivative": 0.1})])
@pytest.mark.parametrize("scale", [0.5, 3.0])
def test_new_map_pullbacks_vs_fd(rng, name, kwargs, scale):
    m = get_spline_map(name, n_bins=5, **kwargs)
    assert_vjp(_map_vjp(m), _params(rng, m, 3, scale), rng=1)


@pytest.mark.parametrize("name", ["pyro", "flowjax"])
@pytest.mark.parametrize("fast", [True, False])
def test_identity_tails_and_slope_jump(rng, name, fast):
    layer = RationalQuadraticSpline(1, n_bins=4, parameterization=name, bound=2.0)
    for k, v in layer.params.items():
        layer.params[k] = rng.normal(size=v.shape)
    with fast_paths(fast, paths=["splines"]):
        z = np.array([[-7.0], [-2.0 - 1e-9], [2.0 + 1e-9], [100.0]])
        x, ld = layer.forward(z)
        np.testing.assert_array_equal(x, z)           # the identity outside [-B, B]
        np.testing.assert_array_equal(ld, 0.0)
        np.testing.assert_array_equal(layer.inverse(x)[0], z)
        _, _, pullback = layer.forward_vjp(z)
        z_bar, grads = pullback(np.ones((4, 1)), np.ones(4))
        np.testing.assert_array_equal(z_bar, 1.0)
        assert all(not g.any() for g in grads.values())
        # inside, at the bounds, the log-derivative is log d_0 / log d_K: not 0 (the jump)
        _, ld_edge = layer.forward(np.array([[-2.0], [2.0]]))
        xk, yk, dk = layer._map(*(layer.params[k] for k in
                                  ("unnormalized_widths", "unnormalized_heights",
                                   "unnormalized_derivatives")))
        np.testing.assert_allclose(ld_edge, np.log(dk[0, [0, -1]]), rtol=1e-12)
        assert np.all(np.abs(ld_edge) > 1e-6)


def test_new_maps_validation():
    with pytest.raises(ValueError, match="boundary_slopes must be None"):
        get_spline_map("pyro", n_bins=4, boundary_slopes="identity")
    with pytest.raises(ValueError, match="bound is required"):
        get_spline_map("flowjax", n_bins=4)
    with pytest.raises(ValueError, match="min_bin_width \\* n_bins must be below the range"):
        get_spline_map("flowjax", n_bins=4, bound=1.0, min_bin_width=0.6)
    with pytest.raises(ValueError, match="RationalQuadraticSpline: .*n_bins"):
        RationalQuadraticSpline(2, n_bins=1, parameterization="flowjax")


# ------------------------------------------------------------------------------------ peers
def _random_layer(rng, name, dim, n_bins, bound, scale=1.0):
    layer = RationalQuadraticSpline(dim, n_bins=n_bins, parameterization=name, bound=bound)
    for k, v in layer.params.items():
        layer.params[k] = scale * rng.normal(size=v.shape)
    return layer


def _points(rng, n, dim, bound):
    # inside and outside [-B, B], off the bounds themselves
    z = rng.uniform(-1.4 * bound, 1.4 * bound, size=(n, dim))
    z[np.abs(np.abs(z) - bound) < 1e-3] *= 0.9
    return z


@pytest.mark.parametrize("fast", [True, False])
def test_pyro_quadratic_spline(rng, fast):
    torch = pytest.importorskip("torch")
    pytest.importorskip("pyro")
    from pyro.distributions.transforms import Spline

    dim, n_bins, bound = 3, 5, 2.0
    layer = _random_layer(rng, "pyro", dim, n_bins, bound)
    peer = Spline(dim, count_bins=n_bins, bound=bound, order="quadratic").double()
    with torch.no_grad():
        for k in ("unnormalized_widths", "unnormalized_heights", "unnormalized_derivatives"):
            getattr(peer, k).copy_(torch.tensor(layer.params[k]))
    z = _points(rng, 40, dim, bound)
    zt = torch.tensor(z, requires_grad=True)
    xt = peer(zt)
    ldt = peer.log_abs_det_jacobian(zt, xt)
    with fast_paths(fast, paths=["splines"]):
        x, ld = layer.forward(z)
        _, _, pullback = layer.forward_vjp(z)
        z_back, _ = layer.inverse(x)
    np.testing.assert_allclose(x, xt.detach().numpy(), rtol=RTOL_PEER, atol=RTOL_PEER)
    np.testing.assert_allclose(ld, ldt.detach().numpy().sum(-1), rtol=RTOL_PEER,
                               atol=RTOL_PEER)
    np.testing.assert_allclose(z_back, z, rtol=RTOL_ROUND_TRIP, atol=RTOL_ROUND_TRIP)
    with torch.no_grad():
        z_peer = peer._inverse(torch.tensor(x)).numpy()
    np.testing.assert_allclose(z_back, z_peer, rtol=RTOL_PEER, atol=RTOL_PEER)
    c, g = rng.normal(size=x.shape), rng.normal(size=len(x))
    ((xt * torch.tensor(c)).sum() + (ldt.sum(-1) * torch.tensor(g)).sum()).backward()
    z_bar, grads = pullback(c, g)
    np.testing.assert_allclose(z_bar, zt.grad.numpy(), rtol=RTOL_PEER_GRAD, atol=1e-12)
    for k in grads:
        np.testing.assert_allclose(grads[k], getattr(peer, k).grad.numpy(),
                                   rtol=RTOL_PEER_GRAD, atol=1e-11, err_msg=k)


@pytest.mark.parametrize("fast", [True, False])
def test_flowjax_rational_quadratic_spline(rng, fast):
    jax = pytest.importorskip("jax")
    pytest.importorskip("flowjax")
    import equinox as eqx
    import jax.numpy as jnp
    import paramax
    from flowjax.bijections import RationalQuadraticSpline as FjRQS

    dim, n_bins, bound = 2, 5, 1.5
    layer = _random_layer(rng, "flowjax", dim, n_bins, bound)
    z = _points(rng, 30, dim, bound)
    c, g = rng.normal(size=z.shape), rng.normal(size=len(z))
    with fast_paths(fast, paths=["splines"]):
        x, ld = layer.forward(z)
        _, _, pullback = layer.forward_vjp(z)
        z_bar, grads = pullback(c, g)
    offset = math.log(math.expm1(1 - 1e-3))
    with jax.enable_x64(True):
        def spline(j, uw, uh, ud):
            s = FjRQS(knots=n_bins - 1, interval=bound)
            s = eqx.tree_at(lambda t: t.x_pos.arr, s, uw)
            s = eqx.tree_at(lambda t: t.y_pos.arr, s, uh)
            # FlowJAX adds a conditioner's output to its raw initial derivatives
            return eqx.tree_at(lambda t: t.derivatives.args[0], s, ud + offset)

        def run(params, z_):
            xs, lds = [], []
            for j in range(dim):
                s = paramax.unwrap(spline(j, *(p[j] for p in params)))
                xj, ldj = jax.vmap(s.transform_and_log_det)(z_[:, j])
                xs.append(xj)
                lds.append(ldj)
            return jnp.stack(xs, -1), sum(lds)

        params = tuple(jnp.asarray(layer.params[k]) for k in
                       ("unnormalized_widths", "unnormalized_heights",
                        "unnormalized_derivatives"))
        xt, ldt = run(params, jnp.asarray(z))
        np.testing.assert_allclose(x, np.asarray(xt), rtol=RTOL_PEER, atol=RTOL_PEER)
        np.testing.assert_allclose(ld, np.asarray(ldt), rtol=RTOL_PEER, atol=RTOL_PEER)
        for j in range(dim):
            s = paramax.unwrap(spline(j, *(p[j] for p in params)))
            back = jax.vmap(s.inverse)(xt[:, j])
            np.testing.assert_allclose(layer.inverse(x)[0][:, j], np.asarray(back),
                                       rtol=RTOL_PEER, atol=RTOL_PEER)

        def loss(params_, z_):
            x_, ld_ = run(params_, z_)
            return jnp.sum(jnp.asarray(c) * x_) + jnp.sum(jnp.asarray(g) * ld_)

        g_params, g_z = jax.grad(loss, argnums=(0, 1))(params, jnp.asarray(z))
    np.testing.assert_allclose(z_bar, np.asarray(g_z), rtol=RTOL_PEER_GRAD, atol=1e-12)
    for k, gp in zip(("unnormalized_widths", "unnormalized_heights",
                      "unnormalized_derivatives"), g_params):
        np.testing.assert_allclose(grads[k], np.asarray(gp), rtol=RTOL_PEER_GRAD, atol=1e-11,
                                   err_msg=k)


# ------------------------------------------------------------------- end_slopes="learned"
@pytest.mark.parametrize("name", ["durkan", "zuko"])
def test_learned_end_slopes_formula_and_tails(rng, name):
    fixed = get_spline_map(name, n_bins=K, bound=2.0)
    m = get_spline_map(name, n_bins=K, bound=2.0, end_slopes="learned")
    assert (m.n_derivatives, fixed.n_derivatives) == (K + 1, K - 1)
    assert m.identity_tails and not fixed.identity_tails
    uw, uh, ud = _params(rng, m, 20, 2.0)
    xk, yk, dk = m(uw, uh, ud)
    xk0, yk0, dk0 = fixed(uw, uh, ud[:, 1:-1])
    np.testing.assert_array_equal(xk, xk0)             # same knots, same inner slopes
    np.testing.assert_array_equal(dk[:, 1:-1], dk0[:, 1:-1])
    if name == "durkan":   # the inner formula at the ends too
        ends = 1e-3 + np.logaddexp(0, ud[:, [0, -1]])
    else:
        v = ud[:, [0, -1]]
        ends = np.exp(v / (1 + np.abs(v / math.log(1e-3))))
    np.testing.assert_allclose(dk[:, [0, -1]], ends, rtol=RTOL_EXACT)
    assert_vjp(_map_vjp(m), _params(rng, m, 3), rng=2)
    layer = RationalQuadraticSpline(1, n_bins=4, parameterization=name, bound=2.0,
                                    end_slopes="learned")
    np.testing.assert_array_equal(layer.forward(np.array([[-0.3], [5.0]]))[0],
                                  [[-0.3], [5.0]])          # the identity at construction
    for k, v in layer.params.items():
        layer.params[k] = rng.normal(size=v.shape)
    for fast in (True, False):
        with fast_paths(fast, paths=["splines"]):
            x, ld = layer.forward(np.array([[-9.0], [3.0]]))
            np.testing.assert_array_equal(x, [[-9.0], [3.0]])
            np.testing.assert_array_equal(ld, 0.0)


def test_learned_end_slopes_validation():
    with pytest.raises(ValueError, match="end_slopes='learned' applies to the durkan and zuko"):
        get_spline_map("distrax", n_bins=4, bound=1.0, end_slopes="learned")
    with pytest.raises(ValueError, match="end_slopes must be 'fixed' or 'learned'"):
        get_spline_map("durkan", n_bins=4, end_slopes="free")
    with pytest.raises(ValueError, match="SplineCoupling: .*end_slopes"):
        from refflow import SplineCoupling
        SplineCoupling(4, end_slopes="free")
