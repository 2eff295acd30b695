"""CircularSpline: the circle conditions (ends fixed, equal end slopes), the shift, the domain,
and the peers' circular splines (zuko's CircularRQSTransform, distrax's 'circular' mode)."""

import math

import numpy as np
import pytest

from refflow import CircularSpline, load, save
from refflow.testing import RTOL_ROUND_TRIP

# a peer's float64 spline from the same knots: another evaluation order of the same formulas
RTOL_PEER = 1e-12
# peer autograd gradients against the hand pullbacks
RTOL_PEER_GRAD = 1e-10


def _random(layer, rng, scale=1.0):
    for k, v in layer.params.items():
        layer.params[k] = scale * rng.normal(size=v.shape)
    return layer


@pytest.mark.parametrize("parameterization", ["distrax", "zuko"])
def test_circle_conditions(rng, parameterization):
    layer = _random(CircularSpline(3, n_bins=6, parameterization=parameterization), rng, 2.0)
    ends = np.array([[-np.pi] * 3, [np.pi] * 3])
    x, ld = layer.forward(ends)
    np.testing.assert_allclose(x, ends, rtol=1e-15)              # both ends fixed
    # the slope is continuous across -pi ~ pi: equal log-derivatives at both ends
    _, ld_lo = layer.forward(ends[:1])
    _, ld_hi = layer.forward(ends[1:])
    np.testing.assert_allclose(ld_lo, ld_hi, rtol=1e-13, atol=1e-13)
    if parameterization == "zuko":
        np.testing.assert_allclose(ld_lo, 0.0, atol=1e-13)      # d_0 = d_K = 1
    else:
        assert abs(ld_lo[0]) > 1e-3                               # learned, not 1
    z = rng.uniform(-np.pi, np.pi, size=(20, 3))
    x, _ = layer.forward(z)
    assert np.all(np.abs(x) <= np.pi)
    np.testing.assert_allclose(layer.inverse(x)[0], z, rtol=RTOL_ROUND_TRIP,
                               atol=RTOL_ROUND_TRIP)


def test_shift_is_zukos_and_round_trips(rng):
    layer = CircularSpline(2, n_bins=4, parameterization="zuko", shift=True)
    z = np.array([[-3.0, 0.0], [0.5, -np.pi]])
    np.testing.assert_allclose(layer.forward(z)[0], np.remainder(z, 2 * np.pi) - np.pi,
                               rtol=1e-15, atol=1e-15)
    _random(layer, rng)
    z = rng.uniform(-np.pi, np.pi, size=(30, 2))
    x, ld = layer.forward(z)
    back, inv_ld = layer.inverse(x)
    np.testing.assert_allclose(back, z, rtol=RTOL_ROUND_TRIP, atol=RTOL_ROUND_TRIP)
    np.testing.assert_allclose(ld, -inv_ld, rtol=1e-12, atol=1e-12)


def test_domain_and_arguments(tmp_path):
    layer = CircularSpline(2, n_bins=4)
    with pytest.raises(ValueError, match=r"CircularSpline.forward: angles must lie in \[-pi, pi\]"):
        layer.forward(np.array([[0.0, 3.2]]))
    with pytest.raises(ValueError, match="CircularSpline.inverse: angles"):
        layer.inverse(np.array([[-4.0, 0.0]]))
    with pytest.raises(ValueError, match="CircularSpline: parameterization must be"):
        CircularSpline(2, parameterization="durkan")
    with pytest.raises(TypeError, match="CircularSpline: shift"):
        CircularSpline(2, shift=1)
    layer = CircularSpline(2, n_bins=5, parameterization="zuko", shift=True)
    save(tmp_path / "c.npz", layer)
    loaded = load(tmp_path / "c.npz")
    assert repr(loaded) == repr(layer) and loaded.shift


def test_zuko_circular_rqs_transform(rng):
    """zuko 1.6 ``CircularRQSTransform(w, h, d)`` (NCSF's univariate map): ``f(x) =
    RQS(remainder(x, 2 pi) - pi)`` with bound pi: refflow's forward with ``shift=True``;
    values, log-dets, inverse and autograd gradients."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("zuko")
    from zuko.flows.spline import CircularRQSTransform

    dim, n_bins = 3, 5
    layer = _random(CircularSpline(dim, n_bins=n_bins, parameterization="zuko", shift=True), rng)
    phi = [torch.tensor(layer.params[k], requires_grad=True) for k in
           ("unnormalized_widths", "unnormalized_heights", "unnormalized_derivatives")]
    peer = CircularRQSTransform(*phi)
    z = rng.uniform(-np.pi, np.pi, size=(8, dim))
    zt = torch.tensor(z, requires_grad=True)
    xt, ldt = peer.call_and_ladj(zt)
    x, ld = layer.forward(z)
    np.testing.assert_allclose(x, xt.detach().numpy(), rtol=RTOL_PEER, atol=RTOL_PEER)
    np.testing.assert_allclose(ld, ldt.detach().numpy().sum(-1), rtol=RTOL_PEER, atol=RTOL_PEER)
    with torch.no_grad():
        np.testing.assert_allclose(layer.inverse(x)[0], peer.inv(torch.tensor(x)).numpy(),
                                   rtol=1e-11, atol=1e-11)
    c, g = rng.normal(size=z.shape), rng.normal(size=len(z))
    ((xt * torch.tensor(c)).sum() + (ldt.sum(-1) * torch.tensor(g)).sum()).backward()
    z_bar, grads = layer.forward_vjp(z)[2](c, g)
    np.testing.assert_allclose(z_bar, zt.grad.numpy(), rtol=RTOL_PEER_GRAD, atol=1e-12)
    for k, p in zip(("unnormalized_widths", "unnormalized_heights",
                     "unnormalized_derivatives"), phi):
        np.testing.assert_allclose(grads[k], p.grad.numpy(), rtol=RTOL_PEER_GRAD, atol=1e-11,
                                   err_msg=k)


def test_distrax_circular_mode(rng):
    """distrax ``RationalQuadraticSpline(params, range_min=-pi, range_max=pi,
    boundary_slopes='circular')`` with ``params = [u_w, u_h, u_d]``: values and log-dets."""
    jax = pytest.importorskip("jax")
    distrax = pytest.importorskip("distrax")
    dim, n_bins = 2, 4
    layer = _random(CircularSpline(dim, n_bins=n_bins), rng)
    z = rng.uniform(-np.pi, np.pi, size=(10, dim))
    x, ld = layer.forward(z)
    with jax.enable_x64(True):
        import jax.numpy as jnp
        for j in range(dim):
            params = np.concatenate([layer.params[k][j] for k in
                                     ("unnormalized_widths", "unnormalized_heights",
                                      "unnormalized_derivatives")])
            peer = distrax.RationalQuadraticSpline(jnp.asarray(params), range_min=-math.pi,
                                                   range_max=math.pi,
                                                   boundary_slopes="circular",
                                                   min_bin_size=1e-4, min_knot_slope=1e-4)
            xj, ldj = peer.forward_and_log_det(jnp.asarray(z[:, j]))
            np.testing.assert_allclose(x[:, j], np.asarray(xj), rtol=RTOL_PEER, atol=RTOL_PEER)
            if j == 0:
                ld_peer = np.asarray(ldj)
            else:
                ld_peer = ld_peer + np.asarray(ldj)
    np.testing.assert_allclose(ld, ld_peer, rtol=RTOL_PEER, atol=RTOL_PEER)
