"""LinearRationalSpline: the paper's conditions (continuity, knot derivatives), a composed
NumPy reference written from the paper's equations, and Pyro's ``Spline(order="linear")``."""

import numpy as np
import pytest

from refflow import LinearRationalSpline
from refflow.testing import RTOL_ROUND_TRIP, assert_vjp

# the same formula evaluated in another order: a few ulps of O(1) values
RTOL_SAME = 1e-13
# a peer's float64 values (Pyro's own arrangement of the inverse) and autograd gradients
RTOL_PEER = 1e-12
RTOL_PEER_GRAD = 1e-10


def _random(rng, dim=3, n_bins=5, bound=2.0, scale=1.0):
    layer = LinearRationalSpline(dim, n_bins=n_bins, bound=bound)
    for k, v in layer.params.items():
        layer.params[k] = scale * rng.normal(size=v.shape)
    return layer


def _reference(layer, z):
    """Dolatabadi et al. (2020), eqs. 8-10, bin by bin with Python loops (w_a = 1)."""
    xk, yk, dk, lam, _, _ = layer._knots(np.dtype(np.float64), False)
    out, ld = np.empty_like(z), np.zeros(z.shape[0])
    for n in range(z.shape[0]):
        for j in range(z.shape[1]):
            x = z[n, j]
            if abs(x) > layer._map.bound:
                out[n, j] = x
                continue
            k = min(int(np.searchsorted(xk[j], x, side="right")) - 1, layer.n_bins - 1)
            x0, x1, y0, y1 = xk[j, k], xk[j, k + 1], yk[j, k], yk[j, k + 1]
            d0, d1, lm = dk[j, k], dk[j, k + 1], lam[j, k]
            wb = np.sqrt(d0 / d1)
            wc = (lm * d0 + (1 - lm) * wb * d1) / ((y1 - y0) / (x1 - x0))
            yc = ((1 - lm) * y0 + lm * wb * y1) / ((1 - lm) + lm * wb)
            t = (x - x0) / (x1 - x0)
            if t <= lm:
                den = lm - t + wc * t
                out[n, j] = (y0 * (lm - t) + wc * yc * t) / den
                ld[n] += np.log(wc * lm * (yc - y0) / ((x1 - x0) * den ** 2))
            else:
                den = wc * (1 - t) + wb * (t - lm)
                out[n, j] = (wc * yc * (1 - t) + wb * y1 * (t - lm)) / den
                ld[n] += np.log(wb * wc * (1 - lm) * (y1 - yc) / ((x1 - x0) * den ** 2))
    return out, ld


def test_against_the_papers_equations(rng):
    layer = _random(rng)
    z = rng.uniform(-2.6, 2.6, size=(30, 3))
    x, ld = layer.forward(z)
    ref_x, ref_ld = _reference(layer, z)
    np.testing.assert_allclose(x, ref_x, rtol=RTOL_SAME, atol=RTOL_SAME)
    np.testing.assert_allclose(ld, ref_ld, rtol=RTOL_SAME, atol=RTOL_SAME)
    back, inv_ld = layer.inverse(x)
    np.testing.assert_allclose(back, z, rtol=RTOL_ROUND_TRIP, atol=RTOL_ROUND_TRIP)
    np.testing.assert_allclose(inv_ld, -ld, rtol=1e-12, atol=1e-12)


def test_knot_derivatives_and_continuity(rng):
    """``y'(x_k) = d_k`` from both sides and the value is continuous at every knot and split
    point (checked one ulp-scale step either side)."""
    layer = _random(rng, dim=1, n_bins=4)
    xk, yk, dk, lam, _, _ = layer._knots(np.dtype(np.float64), False)
    inner = xk[0, 1:-1]
    for x in inner:
        _, ld_lo = layer.forward(np.array([[x - 1e-9]]))
        _, ld_hi = layer.forward(np.array([[x + 1e-9]]))
        np.testing.assert_allclose(ld_lo, ld_hi, atol=1e-7)
    _, ld = layer.forward(xk[0, 1:-1, None])
    np.testing.assert_allclose(np.exp(ld), dk[0, 1:-1], rtol=1e-12)
    split = xk[0, :-1] + lam[0] * np.diff(xk[0])
    lo, _ = layer.forward((split - 1e-12)[:, None])
    hi, _ = layer.forward((split + 1e-12)[:, None])
    np.testing.assert_allclose(lo, hi, atol=1e-10)


def test_pullbacks_and_float32(rng):
    layer = _random(rng, dim=2, n_bins=4)
    z = rng.uniform(-1.9, 1.9, size=(5, 2))
    assert_vjp(layer.forward_vjp, z, layer.params, rng=0)
    x = layer.forward(z)[0]
    assert_vjp(layer.inverse_vjp, x, layer.params, rng=1)
    x32, ld32 = layer.forward(z.astype(np.float32))
    assert x32.dtype == np.float32
    np.testing.assert_allclose(x32, layer.forward(z)[0], rtol=2e-5, atol=2e-5)


def test_pyro_linear_spline(rng):
    """Pyro 1.9.2 ``Spline(dim, count_bins, bound, order="linear")`` with the same raw
    parameters: values, log-dets, the inverse, and autograd gradients."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("pyro")
    from pyro.distributions.transforms import Spline

    dim, n_bins, bound = 3, 5, 2.0
    layer = _random(rng, dim, n_bins, bound)
    peer = Spline(dim, count_bins=n_bins, bound=bound, order="linear").double()
    with torch.no_grad():
        for k in layer.params:
            getattr(peer, k).copy_(torch.tensor(layer.params[k]))
    z = rng.uniform(-1.3 * bound, 1.3 * bound, size=(40, dim))
    zt = torch.tensor(z, requires_grad=True)
    xt = peer(zt)
    ldt = peer.log_abs_det_jacobian(zt, xt).sum(-1)
    x, ld = layer.forward(z)
    np.testing.assert_allclose(x, xt.detach().numpy(), rtol=RTOL_PEER, atol=RTOL_PEER)
    np.testing.assert_allclose(ld, ldt.detach().numpy(), rtol=RTOL_PEER, atol=RTOL_PEER)
    with torch.no_grad():
        z_peer = peer._inverse(torch.tensor(x)).numpy()
    np.testing.assert_allclose(layer.inverse(x)[0], z_peer, rtol=1e-11, atol=1e-11)
    c, g = rng.normal(size=z.shape), rng.normal(size=len(z))
    ((xt * torch.tensor(c)).sum() + (ldt * torch.tensor(g)).sum()).backward()
    z_bar, grads = layer.forward_vjp(z)[2](c, g)
    np.testing.assert_allclose(z_bar, zt.grad.numpy(), rtol=RTOL_PEER_GRAD, atol=1e-12)
    for k in grads:
        np.testing.assert_allclose(grads[k], getattr(peer, k).grad.numpy(),
                                   rtol=RTOL_PEER_GRAD, atol=1e-11, err_msg=k)


def test_bad_arguments():
    with pytest.raises(ValueError, match="LinearRationalSpline"):
        LinearRationalSpline(0)
    with pytest.raises(ValueError, match="LinearRationalSpline: .*n_bins"):
        LinearRationalSpline(2, n_bins=1)
