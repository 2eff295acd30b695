"""MatrixExponential, Rotation and TriangularAffine: closed forms, the Frechet-derivative
pullback, and the peers' layers (Pyro, zuko, FlowJAX) with the same parameters."""

import numpy as np
import pytest
from scipy.linalg import expm

from refflow import MatrixExponential, Rotation, TriangularAffine
from refflow.testing import RTOL_ROUND_TRIP, assert_vjp

# the same float64 matrix computed by two algorithms (Pade via expm_frechet vs scipy's expm,
# or a GEMM vs torch's einsum): a few ulps of O(1) entries times the dimension
RTOL_SAME = 1e-13
# peer gradients through the same map (autograd vs the Frechet adjoint / hand pullback)
RTOL_PEER_GRAD = 1e-11


def _random(layer, rng, scale=0.5):
    for k, v in layer.params.items():
        layer.params[k] = rng.normal(scale=scale, size=v.shape)
    return layer


def test_matrix_exponential_closed_form(rng):
    layer = _random(MatrixExponential(4), rng)
    m = layer.params["weight"]
    z = rng.normal(size=(5, 4))
    x, log_det = layer.forward(z)
    np.testing.assert_allclose(x, z @ expm(m).T, rtol=RTOL_SAME, atol=RTOL_SAME)
    np.testing.assert_allclose(log_det, np.linalg.slogdet(expm(m))[1], rtol=RTOL_SAME)
    back, inv_ld = layer.inverse(x)
    np.testing.assert_allclose(back, z, rtol=RTOL_ROUND_TRIP, atol=RTOL_ROUND_TRIP)
    np.testing.assert_array_equal(inv_ld, -log_det)


def test_rotation_is_orthogonal_with_det_one(rng):
    layer = _random(Rotation(5), rng, 1.0)
    r = layer.forward(np.eye(5))[0].T                  # columns R e_j
    np.testing.assert_allclose(r @ r.T, np.eye(5), atol=1e-14)
    assert np.linalg.det(r) == pytest.approx(1.0, rel=1e-13)
    a = layer.params["generator"]
    np.testing.assert_allclose(r, expm(a - a.T), rtol=RTOL_SAME, atol=RTOL_SAME)
    # only the skew part matters: adding a symmetric matrix changes nothing, and the
    # gradient is skew-symmetric
    z = rng.normal(size=(3, 5))
    x0 = layer.forward(z)[0]
    s = rng.normal(size=(5, 5))
    layer.params["generator"] = a + s + s.T
    np.testing.assert_allclose(layer.forward(z)[0], x0, rtol=1e-12, atol=1e-12)
    _, _, pullback = layer.forward_vjp(z)
    g = pullback(rng.normal(size=(3, 5)), np.zeros(3))[1]["generator"]
    np.testing.assert_allclose(g, -g.T, atol=1e-15)


@pytest.mark.parametrize("lower", [True, False])
@pytest.mark.parametrize("wn", [False, True])
def test_triangular_affine_closed_form(rng, lower, wn):
    layer = _random(TriangularAffine(4, lower=lower, weight_normalization=wn), rng)
    a = layer.params["matrix"]
    v = np.tril(a) if lower else np.triu(a)
    v[np.diag_indices(4)] = np.logaddexp(0, np.diag(a))
    if wn:
        c = np.logaddexp(0, layer.params["row_scale"])
        v = v * (c / np.linalg.norm(v, axis=1))[:, None]
        np.testing.assert_allclose(np.linalg.norm(layer.weight(), axis=1), c, rtol=1e-14)
    np.testing.assert_allclose(layer.weight(), v, rtol=1e-14)
    z = rng.normal(size=(5, 4))
    x, log_det = layer.forward(z)
    np.testing.assert_allclose(x, z @ v.T + layer.params["loc"], rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(log_det, np.linalg.slogdet(v)[1], rtol=1e-13)
    back, _ = layer.inverse(x)
    np.testing.assert_allclose(back, z, rtol=RTOL_ROUND_TRIP, atol=RTOL_ROUND_TRIP)
    # the unused triangle gets zero gradients
    grads = layer.forward_vjp(z)[2](rng.normal(size=(5, 4)), rng.normal(size=5))[1]
    off = np.triu_indices(4, 1) if lower else np.tril_indices(4, -1)
    assert np.all(grads["matrix"][off] == 0.0)


@pytest.mark.parametrize("make", [lambda: MatrixExponential(3), lambda: Rotation(3),
                                  lambda: TriangularAffine(3, weight_normalization=True)])
def test_identity_at_construction_and_pullbacks(rng, make):
    layer = make()
    z = rng.normal(size=(4, 3))
    x, ld = layer.forward(z)
    np.testing.assert_allclose(x, z, rtol=1e-15, atol=1e-15)
    np.testing.assert_allclose(ld, 0.0, atol=1e-15)
    _random(layer, rng)
    assert_vjp(layer.forward_vjp, z, layer.params, rng=0)
    assert_vjp(layer.inverse_vjp, z, layer.params, rng=1)


def test_bad_arguments():
    with pytest.raises(ValueError, match="MatrixExponential"):
        MatrixExponential(0)
    with pytest.raises(ValueError, match="Rotation"):
        Rotation(-1)
    with pytest.raises(TypeError, match="TriangularAffine: lower"):
        TriangularAffine(3, lower="yes")
    layer = MatrixExponential(2)
    layer.params["weight"] = [[800.0, 0.0], [0.0, 0.0]]
    with pytest.raises(ValueError, match="MatrixExponential.forward: expm"):
        layer.forward(np.zeros((1, 2)))


# ------------------------------------------------------------------------------------ peers
def test_pyro_matrix_exponential(rng):
    """Pyro's ``MatrixExponential`` (8-term series; exact trace log-det): values, log-det and
    autograd gradients. With ``||M||_2 <= 0.2`` the series' truncation is below
    ``0.2^9 / 9! = 1.4e-12`` relative, inside the tolerance."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("pyro")
    from pyro.distributions.transforms import MatrixExponential as PyroME

    dim = 4
    m = rng.uniform(-0.05, 0.05, size=(dim, dim))
    assert np.linalg.norm(m, 2) <= 0.2
    layer = MatrixExponential(dim)
    layer.params["weight"] = m
    peer = PyroME(dim).double()
    with torch.no_grad():
        peer.weights.copy_(torch.tensor(m))
    z = rng.normal(size=(5, dim))
    zt = torch.tensor(z, requires_grad=True)
    xt = peer(zt)
    ldt = peer.log_abs_det_jacobian(zt, xt)
    x, ld = layer.forward(z)
    tol = 1e-11
    np.testing.assert_allclose(x, xt.detach().numpy(), rtol=tol, atol=tol)
    np.testing.assert_allclose(ld, ldt.detach().numpy(), rtol=RTOL_SAME, atol=RTOL_SAME)
    c, g = rng.normal(size=(5, dim)), rng.normal(size=5)
    ((xt * torch.tensor(c)).sum() + (ldt * torch.tensor(g)).sum()).backward()
    z_bar, grads = layer.forward_vjp(z)[2](c, g)
    np.testing.assert_allclose(z_bar, zt.grad.numpy(), rtol=tol, atol=tol)
    np.testing.assert_allclose(grads["weight"], peer.weights.grad.numpy(), rtol=tol, atol=tol)


def test_zuko_rotation(rng):
    """zuko's ``RotationTransform(A)`` maps data to base, ``f(x) = R x``: refflow's forward with
    the same ``A``; values and autograd gradients through ``torch.linalg.matrix_exp``."""
    torch = pytest.importorskip("torch")
    zuko = pytest.importorskip("zuko")
    dim = 4
    a = rng.normal(size=(dim, dim))
    layer = Rotation(dim)
    layer.params["generator"] = a
    at = torch.tensor(a, requires_grad=True)
    peer = zuko.transforms.RotationTransform(at)
    z = rng.normal(size=(5, dim))
    zt = torch.tensor(z, requires_grad=True)
    xt = peer(zt)
    x, ld = layer.forward(z)
    np.testing.assert_allclose(x, xt.detach().numpy(), rtol=RTOL_SAME, atol=RTOL_SAME)
    np.testing.assert_allclose(layer.inverse(x)[0], peer.inv(xt).detach().numpy(),
                               rtol=RTOL_SAME, atol=RTOL_SAME)
    c = rng.normal(size=(5, dim))
    (xt * torch.tensor(c)).sum().backward()
    z_bar, grads = layer.forward_vjp(z)[2](c, np.zeros(5))
    np.testing.assert_allclose(z_bar, zt.grad.numpy(), rtol=RTOL_PEER_GRAD, atol=1e-13)
    np.testing.assert_allclose(grads["generator"], at.grad.numpy(), rtol=RTOL_PEER_GRAD,
                               atol=1e-12)


@pytest.mark.parametrize("lower", [True, False])
@pytest.mark.parametrize("wn", [False, True])
def test_flowjax_triangular_affine(rng, lower, wn):
    """FlowJAX's ``TriangularAffine`` (and, with ``wn``, wrapped in ``paramax.WeightNormalization``
    as ``triangular_spline_flow`` does): ``transform`` = refflow's forward, raw parameters equal,
    values, log-dets, inverse and JAX gradients."""
    jax = pytest.importorskip("jax")
    pytest.importorskip("flowjax")
    import equinox as eqx
    import jax.numpy as jnp
    import paramax
    from flowjax.bijections import TriangularAffine as FjTri

    dim = 4
    layer = _random(TriangularAffine(dim, lower=lower, weight_normalization=wn), rng)
    with jax.enable_x64(True):
        peer = FjTri(jnp.asarray(layer.params["loc"]), jnp.eye(dim), lower=lower)
        # FlowJAX stores softplus^-1 of the given diagonal: set the raw array directly
        peer = eqx.tree_at(lambda t: t.triangular.args[0], peer,
                           jnp.asarray(layer.params["matrix"]))
        if wn:
            peer = eqx.tree_at(lambda t: t.triangular, peer,
                               replace_fn=paramax.WeightNormalization)
            peer = eqx.tree_at(lambda t: t.triangular.scale.args[0], peer,
                               jnp.asarray(layer.params["row_scale"])[:, None])
        z = rng.normal(size=(5, dim))

        def run(model, z_):
            return jax.vmap(paramax.unwrap(model).transform_and_log_det)(z_)

        xt, ldt = run(peer, jnp.asarray(z))
        x, ld = layer.forward(z)
        np.testing.assert_allclose(x, np.asarray(xt), rtol=RTOL_SAME, atol=RTOL_SAME)
        np.testing.assert_allclose(ld, np.asarray(ldt), rtol=RTOL_SAME, atol=RTOL_SAME)
        back = jax.vmap(paramax.unwrap(peer).inverse)(xt)
        np.testing.assert_allclose(layer.inverse(x)[0], np.asarray(back), rtol=1e-12,
                                   atol=1e-12)

        c, g = rng.normal(size=(5, dim)), rng.normal(size=5)

        def loss(model, z_):
            x_, ld_ = run(model, z_)
            return jnp.sum(jnp.asarray(c) * x_) + jnp.sum(jnp.asarray(g) * ld_)

        g_model = eqx.filter_grad(lambda m_: loss(m_, jnp.asarray(z)))(peer)
        g_z = jax.grad(lambda z_: loss(peer, z_))(jnp.asarray(z))
    z_bar, grads = layer.forward_vjp(z)[2](c, g)
    np.testing.assert_allclose(z_bar, np.asarray(g_z), rtol=RTOL_PEER_GRAD, atol=1e-13)
    np.testing.assert_allclose(grads["loc"], np.asarray(g_model.loc), rtol=RTOL_PEER_GRAD)
    if wn:
        g_matrix = g_model.triangular.weight.args[0]
        g_scale = np.asarray(g_model.triangular.scale.args[0])[:, 0]
        np.testing.assert_allclose(grads["row_scale"], g_scale, rtol=RTOL_PEER_GRAD)
    else:
        g_matrix = g_model.triangular.args[0]
    np.testing.assert_allclose(grads["matrix"], np.asarray(g_matrix), rtol=RTOL_PEER_GRAD,
                               atol=1e-13)


# ------------------------------------------------------------------- LULinear peer options
def test_lu_linear_options_closed_form_and_errors(rng):
    from refflow import LULinear
    layer = LULinear(3, upper_diag="raw", diagonal="lower")
    np.testing.assert_array_equal(layer.weight(), np.eye(3))       # identity at construction
    _random(layer, rng)
    u = layer.params["unconstrained_upper_diag"]
    lower = np.diag(u)
    lower[np.tril_indices(3, -1)] = layer.params["lower_entries"]
    upper = np.eye(3)
    upper[np.triu_indices(3, 1)] = layer.params["upper_entries"]
    np.testing.assert_allclose(layer.weight(), lower @ upper, rtol=1e-14)
    z = rng.normal(size=(4, 3))
    x, ld = layer.forward(z)
    np.testing.assert_allclose(ld, np.linalg.slogdet(lower @ upper)[1], rtol=1e-13)
    np.testing.assert_allclose(layer.inverse(x)[0], z, rtol=RTOL_ROUND_TRIP, atol=RTOL_ROUND_TRIP)

    signed = LULinear(3, signs=[1, -1, 1])
    np.testing.assert_array_equal(signed.weight(), np.diag([1.0, -1.0, 1.0]))
    assert "signs" in signed._config() and "diagonal" not in signed._config()
    with pytest.raises(ValueError, match="LULinear: signs must be"):
        LULinear(3, signs=[1, 0, 1])
    with pytest.raises(ValueError, match="LULinear: signs apply"):
        LULinear(3, upper_diag="raw", signs=[1, 1, 1])
    with pytest.raises(ValueError, match="LULinear: diagonal must be"):
        LULinear(3, diagonal="middle")
    layer.params["unconstrained_upper_diag"] = [1.0, 0.0, 2.0]
    with pytest.raises(ValueError, match="LULinear.forward: the diagonal of L"):
        layer.forward(z)


def test_zuko_lu_linear_transform(rng):
    """zuko's ``LULinearTransform(LU)``, ``f(x) = L U x`` with the raw diagonal on ``L``:
    refflow's ``LULinear(upper_diag="raw", diagonal="lower")`` forward, parameters read from
    ``LU``; values, inverse, log-det and autograd gradients."""
    torch = pytest.importorskip("torch")
    zuko = pytest.importorskip("zuko")
    from refflow import LULinear
    dim = 4
    lu = rng.normal(size=(dim, dim))
    lu[np.diag_indices(dim)] = rng.choice([-1.0, 1.0], dim) * rng.uniform(0.5, 1.5, dim)
    layer = LULinear(dim, upper_diag="raw", diagonal="lower")
    layer.params["lower_entries"] = lu[np.tril_indices(dim, -1)]
    layer.params["upper_entries"] = lu[np.triu_indices(dim, 1)]
    layer.params["unconstrained_upper_diag"] = np.diag(lu)
    lut = torch.tensor(lu, requires_grad=True)
    peer = zuko.transforms.LULinearTransform(lut)
    z = rng.normal(size=(5, dim))
    zt = torch.tensor(z, requires_grad=True)
    xt = peer(zt)
    ldt = peer.log_abs_det_jacobian(zt, xt)
    x, ld = layer.forward(z)
    np.testing.assert_allclose(x, xt.detach().numpy(), rtol=RTOL_SAME, atol=RTOL_SAME)
    np.testing.assert_allclose(ld, ldt.detach().numpy(), rtol=RTOL_SAME, atol=RTOL_SAME)
    np.testing.assert_allclose(layer.inverse(x)[0], peer.inv(xt).detach().numpy(), rtol=1e-12,
                               atol=1e-12)
    c, g = rng.normal(size=(5, dim)), rng.normal(size=5)
    ((xt * torch.tensor(c)).sum() + (ldt * torch.tensor(g)).sum()).backward()
    z_bar, grads = layer.forward_vjp(z)[2](c, g)
    lu_bar = lut.grad.numpy()
    np.testing.assert_allclose(z_bar, zt.grad.numpy(), rtol=RTOL_PEER_GRAD, atol=1e-13)
    np.testing.assert_allclose(grads["lower_entries"], lu_bar[np.tril_indices(dim, -1)],
                               rtol=RTOL_PEER_GRAD, atol=1e-13)
    np.testing.assert_allclose(grads["upper_entries"], lu_bar[np.triu_indices(dim, 1)],
                               rtol=RTOL_PEER_GRAD, atol=1e-13)
    np.testing.assert_allclose(grads["unconstrained_upper_diag"], np.diag(lu_bar),
                               rtol=RTOL_PEER_GRAD, atol=1e-13)


def test_normflows_invertible_1x1_conv_lu(rng):
    """normflows' ``Invertible1x1Conv(use_lu=True)`` on ``(N, C, 1, 1)`` images: its
    ``inverse`` (data -> base) multiplies by ``W = P L (U + diag(sign_S exp(log_S)))``, which is
    refflow's ``LULinear(upper_diag="exp", signs=sign_S)`` forward with ``perm[i] =
    argmax P[i]``; values, log-dets and autograd gradients."""
    torch = pytest.importorskip("torch")
    normflows = pytest.importorskip("normflows")
    from refflow import LULinear
    dim = 4
    torch.manual_seed(2)
    peer = normflows.flows.Invertible1x1Conv(dim, use_lu=True).double()
    with torch.no_grad():   # move off the QR initialisation: random L, U, log_S
        peer.L.add_(torch.tensor(rng.normal(scale=0.5, size=(dim, dim))))
        peer.U.add_(torch.tensor(rng.normal(scale=0.5, size=(dim, dim))))
        peer.log_S.add_(torch.tensor(rng.normal(scale=0.5, size=dim)))
        peer.sign_S.copy_(torch.tensor([1.0, -1.0, -1.0, 1.0]))   # both signs present
    sign = peer.sign_S.numpy()
    layer = LULinear(dim, permutation=np.argmax(peer.P.numpy(), axis=1), signs=sign)
    layer.params["lower_entries"] = peer.L.detach().numpy()[np.tril_indices(dim, -1)]
    layer.params["upper_entries"] = peer.U.detach().numpy()[np.triu_indices(dim, 1)]
    layer.params["unconstrained_upper_diag"] = peer.log_S.detach().numpy()
    z = rng.normal(size=(5, dim))
    zt = torch.tensor(z[:, :, None, None], requires_grad=True)
    xt, ldt = peer.inverse(zt)
    x, ld = layer.forward(z)
    np.testing.assert_allclose(x, xt.detach().numpy()[:, :, 0, 0], rtol=RTOL_SAME, atol=RTOL_SAME)
    np.testing.assert_allclose(ld, float(ldt.detach()), rtol=RTOL_SAME)
    c, g = rng.normal(size=(5, dim)), rng.normal(size=5)
    ((xt[:, :, 0, 0] * torch.tensor(c)).sum() + ldt * float(g.sum())).backward()
    z_bar, grads = layer.forward_vjp(z)[2](c, g)
    np.testing.assert_allclose(z_bar, zt.grad.numpy()[:, :, 0, 0], rtol=RTOL_PEER_GRAD,
                               atol=1e-13)
    np.testing.assert_allclose(grads["lower_entries"],
                               peer.L.grad.numpy()[np.tril_indices(dim, -1)],
                               rtol=RTOL_PEER_GRAD, atol=1e-13)
    np.testing.assert_allclose(grads["upper_entries"],
                               peer.U.grad.numpy()[np.triu_indices(dim, 1)],
                               rtol=RTOL_PEER_GRAD, atol=1e-13)
    np.testing.assert_allclose(grads["unconstrained_upper_diag"], peer.log_S.grad.numpy(),
                               rtol=RTOL_PEER_GRAD, atol=1e-13)
    # and normflows' forward (base -> data) is refflow's inverse
    with torch.no_grad():
        back, _ = peer.forward(xt.detach())
    np.testing.assert_allclose(layer.inverse(x)[0], back.numpy()[:, :, 0, 0], rtol=1e-12,
                               atol=1e-12)
