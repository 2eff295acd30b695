"""Softclip: zuko's soft clip ``x = z / (1 + |z| / B)`` onto ``(-B, B)``.

Paper facts: both passes and both pullbacks against the closed forms written out here in plain
NumPy (not the layer's helpers), the log-dets' stability at |z| = 1e3 and next to the bound,
round trips, exact negation of the log-dets, float32 kept, zuko's own ``SoftclipTransform``
(values and log-det, in float64), bad constructor arguments and points outside ``(-B, B)``.
The oracle (FD Jacobians, pullbacks vs FD, single points, empty batches) runs on the registry's
``softclip`` case in ``tests/test_properties.py``.
"""

import numpy as np
import pytest
from numpy.testing import assert_allclose

from refflow import Softclip

#: Closed forms evaluated two ways in float64: a few ulps.
RTOL_CLOSED = 1e-13
#: Round trips of one elementwise map at |z| <= 1e3: the rounding of x next to B is carried back
#: by dz/dx = ((B + |z|) / B)^2 (|z| = 1e3, B = 11: ~8e3), i.e. ~1e-12 relative at most.
RTOL_RT = 1e-11
#: float32 results against float64: a few float32 ulps.
RTOL_FLOAT32 = 1e-5


def _closed_forward(z, b):
    x = z / (1.0 + np.abs(z) / b)
    log_det = (-2.0 * np.log(1.0 + np.abs(z) / b)).sum(axis=1)
    dx = 1.0 / (1.0 + np.abs(z) / b) ** 2
    dlog = -2.0 * np.sign(z) / (b + np.abs(z))
    return x, log_det, dx, dlog


def _closed_inverse(x, b):
    z = x / (1.0 - np.abs(x) / b)
    log_det = (-2.0 * np.log(1.0 - np.abs(x) / b)).sum(axis=1)
    dz = 1.0 / (1.0 - np.abs(x) / b) ** 2
    dlog = 2.0 * np.sign(x) / (b - np.abs(x))
    return z, log_det, dz, dlog


@pytest.mark.parametrize("bound", [1.0, 11.0, 0.3])
def test_both_passes_and_pullbacks_follow_the_closed_forms(bound):
    rng = np.random.default_rng(0)
    layer = Softclip(3, bound=bound)
    z = rng.normal(0.0, 3.0 * bound, size=(20, 3))
    x, log_det, pullback = layer.forward_vjp(z)
    xe, lde, dx, dlog = _closed_forward(z, bound)
    assert_allclose(x, xe, rtol=RTOL_CLOSED)
    assert_allclose(log_det, lde, rtol=RTOL_CLOSED)
    x_bar, ld_bar = rng.normal(size=x.shape), rng.normal(size=20)
    z_bar, grads = pullback(x_bar, ld_bar)
    assert grads == {}
    assert_allclose(z_bar, x_bar * dx + ld_bar[:, None] * dlog, rtol=RTOL_CLOSED)

    xs = rng.uniform(-0.99 * bound, 0.99 * bound, size=(20, 3))
    zz, log_det_i, pullback_i = layer.inverse_vjp(xs)
    ze, ldie, dz, dlogi = _closed_inverse(xs, bound)
    assert_allclose(zz, ze, rtol=RTOL_CLOSED)
    assert_allclose(log_det_i, ldie, rtol=RTOL_CLOSED)
    z_bar, ld_bar = rng.normal(size=zz.shape), rng.normal(size=20)
    xs_bar, grads = pullback_i(z_bar, ld_bar)
    assert grads == {}
    assert_allclose(xs_bar, z_bar * dz + ld_bar[:, None] * dlogi, rtol=RTOL_CLOSED)


def test_round_trips_and_log_dets_negate_up_to_1e3_and_next_to_the_bound():
    layer = Softclip(2, bound=11.0)
    z = np.array([[1e3, -1e3], [1e-300, -3.0], [0.0, 250.0], [-7.5, 11.0]])
    x, ld = layer.forward(z)
    assert np.all(np.abs(x) < 11.0)
    z2, ld2 = layer.inverse(x)
    assert_allclose(z2, z, rtol=RTOL_RT, atol=0.0)
    assert_allclose(ld2, -ld, rtol=RTOL_CLOSED)
    # next to the bound, log(1 - |x| / B) keeps its digits: -2 log(ulp-sized gap / B)
    edge = np.nextafter(11.0, 0.0)
    z3, ld3 = layer.inverse(np.array([[edge, -edge]]))
    gap = 11.0 - edge
    assert_allclose(ld3, [-4.0 * np.log(gap / 11.0)], rtol=RTOL_CLOSED)
    assert_allclose(z3, [[edge * 11.0 / gap, -edge * 11.0 / gap]], rtol=RTOL_CLOSED)
    # near 0 the log-det is log1p's, not log's: -2 log1p(-1e-12 / B) to full precision
    _, ld4 = layer.inverse(np.array([[1e-12, 0.0]]))
    assert_allclose(ld4, [-2.0 * np.log1p(-1e-12 / 11.0)], rtol=RTOL_CLOSED)


def test_float32_stays_float32():
    rng = np.random.default_rng(1)
    layer = Softclip(3, bound=2.0)
    z = rng.normal(size=(5, 3))
    x32, ld32, pb = layer.forward_vjp(z.astype(np.float32))
    assert x32.dtype == np.float32 and ld32.dtype == np.float32
    z_bar, _ = pb(np.ones_like(x32), np.ones(5, dtype=np.float32))
    assert z_bar.dtype == np.float32
    x64, ld64 = layer.forward(z)
    assert_allclose(x32, x64, rtol=RTOL_FLOAT32)
    z32, _ = layer.inverse(x64.astype(np.float32))
    assert z32.dtype == np.float32
    assert_allclose(z32, z, rtol=RTOL_FLOAT32 * 10)  # dz/dx up to (1 + |z| / 2)^2 ~ 10


def test_bad_arguments_and_points_outside_the_image_are_refused():
    with pytest.raises(ValueError, match="Softclip: bound"):
        Softclip(2, bound=0.0)
    with pytest.raises(ValueError, match="Softclip: bound"):
        Softclip(2, bound=float("inf"))
    with pytest.raises(TypeError, match="Softclip: bound"):
        Softclip(2, bound="11")
    layer = Softclip(2, bound=3.0)
    with pytest.raises(ValueError, match=r"Softclip.inverse: x must lie in the open interval"):
        layer.inverse(np.array([[0.0, 3.0]]))
    assert repr(layer) == "Softclip(dim=2, bound=3.0)"


def test_zukos_softclip_transform():
    torch = pytest.importorskip("torch")
    zuko = pytest.importorskip("zuko")
    rng = np.random.default_rng(2)
    for bound in (1.0, 11.0):
        t = zuko.transforms.SoftclipTransform(bound=bound)
        z = rng.normal(0.0, 20.0, size=(16, 3))
        zt = torch.as_tensor(z)
        y = t(zt)
        theirs_ld = t.log_abs_det_jacobian(zt, y).sum(-1).numpy()
        x, ld = Softclip(3, bound=bound).forward(z)
        assert_allclose(x, y.numpy(), rtol=RTOL_CLOSED)
        assert_allclose(ld, theirs_ld, rtol=RTOL_CLOSED)
        assert_allclose(Softclip(3, bound=bound).inverse(x)[0], t.inv(y).numpy(),
                        rtol=RTOL_RT)
