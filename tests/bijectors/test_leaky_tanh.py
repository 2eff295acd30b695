"""LeakyTanh: FlowJAX's tanh continued by its tangent lines beyond ``±max_val``.

Paper facts: both passes, both log-dets and both pullbacks against closed forms written out here
(``np.tanh``, ``np.arctanh``, the tangent line from its definition), continuity of value and
slope at ``±max_val``, explicit slope / intercept, FlowJAX's own ``LeakyTanh`` (values and
log-dets in float64), float32 kept, bad arguments. The oracle (FD Jacobians, pullbacks vs FD)
runs on the registry's ``leaky_tanh`` case in ``tests/test_properties.py``.
"""

import numpy as np
import pytest
from numpy.testing import assert_allclose

from refflow import LeakyTanh

#: closed forms evaluated two ways in float64: a few ulps.
RTOL_CLOSED = 1e-13
#: float32 against float64: a few float32 ulps.
RTOL_FLOAT32 = 1e-5


def _closed(z, m):
    g = 1.0 - np.tanh(m) ** 2
    c = np.tanh(m) - g * m
    line = np.abs(z) >= m
    x = np.where(line, g * z + np.sign(z) * c, np.tanh(z))
    d = np.where(line, g, 1.0 - np.tanh(z) ** 2)
    dlog = np.where(line, 0.0, -2.0 * np.tanh(z))
    return x, np.log(d).sum(axis=1), d, dlog


@pytest.mark.parametrize("m", [0.5, 2.0, 3.0])
def test_passes_and_pullbacks_follow_the_closed_forms(m):
    rng = np.random.default_rng(0)
    layer = LeakyTanh(3, max_val=m)
    z = rng.normal(0.0, 2.0 * m, size=(30, 3))
    x, ld, pb = layer.forward_vjp(z)
    xe, lde, d, dlog = _closed(z, m)
    assert_allclose(x, xe, rtol=RTOL_CLOSED)
    assert_allclose(ld, lde, rtol=RTOL_CLOSED, atol=RTOL_CLOSED)
    xb, lb = rng.normal(size=x.shape), rng.normal(size=30)
    zb, grads = pb(xb, lb)
    assert grads == {}
    assert_allclose(zb, xb * d + lb[:, None] * dlog, rtol=RTOL_CLOSED, atol=RTOL_CLOSED)
    # inverse at the same points: z back, minus the log-det, pullback with 1 / f'
    z2, ld2, pbi = layer.inverse_vjp(x)
    assert_allclose(z2, z, rtol=1e-12)
    assert_allclose(ld2, -lde, rtol=RTOL_CLOSED, atol=RTOL_CLOSED)
    zb2, lb2 = rng.normal(size=x.shape), rng.normal(size=30)
    xb2, _ = pbi(zb2, lb2)
    inside = np.abs(x) < np.tanh(m)
    dlog_inv = np.where(inside, 2.0 * x / (1.0 - x ** 2), 0.0)
    assert_allclose(xb2, zb2 / d + lb2[:, None] * dlog_inv, rtol=1e-12, atol=1e-13)


def test_value_and_slope_are_continuous_at_max_val():
    m = 3.0
    layer = LeakyTanh(1, max_val=m)
    below, above = np.nextafter(m, 0.0), m
    xs, _ = layer.forward(np.array([[below], [above], [-below], [-above]]))
    assert_allclose(xs[0], xs[1], atol=1e-15)
    assert_allclose(xs[2], xs[3], atol=1e-15)
    _, ld = layer.forward(np.array([[below], [above]]))
    assert_allclose(ld[0], ld[1], rtol=1e-13)


def test_flowjaxs_leaky_tanh_in_float64():
    jax = pytest.importorskip("jax")
    pytest.importorskip("flowjax")
    from flowjax.bijections import LeakyTanh as FJLeakyTanh
    rng = np.random.default_rng(3)
    with jax.enable_x64(True):
        import jax.numpy as jnp
        theirs = FJLeakyTanh(2.5, (3,))
        z = rng.normal(0.0, 3.0, size=(20, 3))
        y, ld = jax.vmap(theirs.transform_and_log_det)(jnp.asarray(z))
        x_back, ld_inv = jax.vmap(theirs.inverse_and_log_det)(y)
        y, ld, x_back, ld_inv = (np.asarray(a) for a in (y, ld, x_back, ld_inv))
    mine = LeakyTanh(3, max_val=2.5, linear_grad=theirs.linear_grad,
                     intercept=theirs.intercept)
    x, lda = mine.forward(z)
    assert_allclose(x, y, rtol=RTOL_CLOSED)
    assert_allclose(lda, ld, rtol=RTOL_CLOSED, atol=RTOL_CLOSED)
    zz, ldi = mine.inverse(y)
    assert_allclose(zz, x_back, rtol=1e-12)
    assert_allclose(ldi, ld_inv, rtol=1e-12, atol=1e-12)
    # refflow's default slope and intercept are FlowJAX's formulas in float64
    default = LeakyTanh(3, max_val=2.5)
    assert_allclose([default.linear_grad, default.intercept],
                    [theirs.linear_grad, theirs.intercept], rtol=1e-14)


def test_float32_stays_float32():
    layer = LeakyTanh(3, max_val=2.0)
    z = np.random.default_rng(1).normal(0.0, 3.0, size=(6, 3))
    x32, ld32 = layer.forward(z.astype(np.float32))
    assert x32.dtype == np.float32 and ld32.dtype == np.float32
    x64, ld64 = layer.forward(z)
    assert_allclose(x32, x64, rtol=RTOL_FLOAT32, atol=RTOL_FLOAT32)
    assert layer.inverse(x32)[0].dtype == np.float32


def test_bad_arguments():
    with pytest.raises(ValueError, match="LeakyTanh: max_val"):
        LeakyTanh(2, max_val=0.0)
    with pytest.raises(ValueError, match="LeakyTanh: give both"):
        LeakyTanh(2, linear_grad=0.1)
    with pytest.raises(ValueError, match="LeakyTanh: linear_grad"):
        LeakyTanh(2, linear_grad=-0.1, intercept=0.0)
    with pytest.raises(ValueError, match="LeakyTanh: intercept"):
        LeakyTanh(2, linear_grad=0.1, intercept=float("nan"))
