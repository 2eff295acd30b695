"""Paper facts of the polynomial transformers: SumOfSquaresAutoregressive (Jaini et al. 2019)
and BernsteinAutoregressive (zuko's BPF), with a planted quadrature bug the oracle must catch."""

import numpy as np
import pytest
from scipy import integrate

from refflow import BernsteinAutoregressive, Inverse, SumOfSquaresAutoregressive
from refflow.testing import RTOL_FD, check_bijector

#: The closed-form integral against adaptive quadrature of the same integrand (QUADPACK's
#: estimate is ~1e-14 relative for these smooth polynomials).
RTOL_INTEGRAL = 1e-12
#: Values of the same polynomial evaluated two ways (closed form vs an independent formula):
#: a few roundings of terms no larger than the value's scale.
RTOL_SAME = 1e-12


def _one_dim(layer, theta):
    """Set a ``dim = 1`` layer's MADE to output ``theta`` (its last bias; weights zero)."""
    last = len(layer.made.hidden)
    for key in layer.made.params:
        layer.made.params[key] = np.zeros_like(layer.made.params[key])
    layer.made.params[f"b{last}"] = theta
    return layer


# ----------------------------------------------------------------------- sum of squares
def test_sos_closed_form_is_the_integral():
    rng = np.random.default_rng(0)
    K, L, B, slope = 3, 4, 10.0, 1e-3
    layer = _one_dim(SumOfSquaresAutoregressive(1, hidden=(4,), rng=0), rng.normal(size=K * (L + 1) + 1))
    theta = layer.made.params[f"b{len(layer.made.hidden)}"]
    c = theta[:-1].reshape(K, L + 1).copy()
    c[:, 0] += 1

    def g(u):
        return slope + np.mean(np.polyval(c[:, ::-1].T, u / B) ** 2)

    for x in (-7.3, -0.4, 0.0, 1.1, 9.0):
        z, log_det = layer.inverse(np.array([[x]]))
        expected = theta[-1] + integrate.quad(g, 0.0, x, epsabs=0, epsrel=1e-13)[0]
        assert abs(z[0, 0] - expected) <= RTOL_INTEGRAL * max(1.0, abs(expected))
        assert abs(log_det[0] - np.log(g(x))) <= RTOL_SAME * max(1.0, abs(np.log(g(x))))


def test_sos_zero_conditioner_is_a_scaling():
    """``a = 0`` and ``beta = 0`` give ``p_k = 1``, ``g = 1 + slope``: ``z = (1 + slope) x``."""
    layer = SumOfSquaresAutoregressive(3, hidden=(8, 8), slope=0.25, zero_last=True, rng=0)
    x = np.random.default_rng(1).normal(size=(5, 3))
    z, log_det = layer.inverse(x)
    np.testing.assert_allclose(z, 1.25 * x, rtol=1e-15)
    np.testing.assert_allclose(log_det, 3 * np.log(1.25), rtol=1e-15)


def test_sos_paper_form_via_parameter_map():
    """Jaini et al.'s eq. 8 (and Pyro's ``Polynomial``), ``z = c + int_0^x sum_k (sum_r A_kr
    u^r)^2 du``, is this layer with ``slope = 0``, ``B = 1`` and ``a_k = sqrt(K) A_k - e_0``
    (the mean over ``k`` and the ``1 +`` absorbed). Pyro applies it in the sampling direction:
    ``Inverse(layer)``."""
    rng = np.random.default_rng(2)
    K, L = 3, 4
    A = rng.normal(size=(K, L + 1))
    c0 = 0.7
    a = np.sqrt(K) * A
    a[:, 0] -= 1.0
    layer = _one_dim(SumOfSquaresAutoregressive(1, degree=L, n_polynomials=K, slope=0.0,
                                                bound=1.0, hidden=(4,), rng=0),
                     np.concatenate([a.ravel(), [c0]]))
    x = np.linspace(-1.5, 1.5, 7)
    # the paper's closed form, expanded: sum_k sum_{r,s} A_kr A_ks x^(r+s+1) / (r+s+1)
    r = np.arange(L + 1)
    powers = r[:, None] + r[None, :] + 1
    paper = c0 + np.array([np.sum(np.einsum("kr,ks->rs", A, A) * xi ** powers / powers) for xi in x])
    z, _ = layer.inverse(x[:, None])
    np.testing.assert_allclose(z[:, 0], paper, rtol=RTOL_SAME, atol=RTOL_SAME)
    iaf = Inverse(layer)                                  # Pyro's direction: x -> y in one pass
    y, _ = iaf.forward(x[:, None])
    np.testing.assert_array_equal(y, z)


class _GaussLegendreSOS(SumOfSquaresAutoregressive):
    """Planted bug: the integral by an ``n_nodes`` Gauss-Legendre rule (exact only for
    ``n_nodes >= L + 1``), while the log-det still reports ``log g(x)`` as if exact."""

    def __init__(self, *args, n_nodes, **kwargs):
        self._nodes = np.polynomial.legendre.leggauss(n_nodes)
        super().__init__(*args, **kwargs)

    def _elements(self, x, theta, p, vjp):
        z_exact, ell, pullback = super()._elements(x, theta, p, vjp)
        K, L, B, slope = self._args()
        t, w = self._nodes
        c = theta[..., :K * (L + 1)].reshape(theta.shape[:-1] + (K, L + 1)).copy()
        c[..., 0] += 1
        total = np.zeros_like(x)
        for tk, wk in zip(t, w):
            u = x * (tk + 1) / 2
            V = (u / B)[..., None] ** np.arange(L + 1)
            p_k = np.einsum("...kj,...j->...k", c, V)
            total += wk / 2 * (slope + np.mean(p_k ** 2, axis=-1))
        return theta[..., -1] + x * total, ell, pullback

    def _scalar(self, i, x, theta_i, p):
        z, ell, _ = self._elements(x, theta_i, p, False)
        return z, np.exp(ell)

    def _solve(self, i, z_i, theta_i, p):
        return super(SumOfSquaresAutoregressive, self)._solve(i, z_i, theta_i, p)


@pytest.mark.parametrize("n_nodes, exact", [(5, True), (4, False)])
def test_planted_quadrature_one_node_short_is_caught(n_nodes, exact):
    """With L = 4 the integrand has degree 8: a 5-node Gauss-Legendre rule is exact (the layer
    passes the oracle and equals the closed form), a 4-node rule is not, and reporting
    ``log g(x)`` for it fails the log-det vs finite-difference check."""
    rng = np.random.default_rng(4)
    layer = _GaussLegendreSOS(2, degree=4, n_nodes=n_nodes, bound=1.0, hidden=(6,), rng=0)
    for key, value in layer.params.items():
        layer.params[key] = rng.normal(0.0, 0.5, size=value.shape)
    twin = SumOfSquaresAutoregressive(2, degree=4, bound=1.0, hidden=(6,), rng=0)
    twin.params.update(layer.params)
    x = 2.0 * rng.normal(size=(5, 2))
    report = check_bijector(layer.forward, layer.inverse, layer.inverse(x)[0], x=x)
    if exact:
        assert report.ok, report
        np.testing.assert_allclose(layer.inverse(x)[0], twin.inverse(x)[0], rtol=1e-12,
                                   atol=1e-12)
    else:
        assert not report.ok
        assert report.errors["log_det inverse vs FD"] > 10 * RTOL_FD, report


def test_sos_bad_options():
    for kwargs, word in (({"degree": -1}, "degree"), ({"n_polynomials": 0}, "n_polynomials"),
                         ({"slope": -1.0}, "slope"), ({"bound": 0.0}, "bound"),
                         ({"slope": float("nan")}, "slope")):
        with pytest.raises(ValueError, match=f"SumOfSquaresAutoregressive: {word}"):
            SumOfSquaresAutoregressive(2, **kwargs)
    with pytest.raises(TypeError, match="SumOfSquaresAutoregressive: degree"):
        SumOfSquaresAutoregressive(2, degree=2.0)


def test_sos_huge_inputs_finite():
    """|x| up to 1e3 (v = 100, degree 9): finite values, log-dets and an exact round trip."""
    layer = SumOfSquaresAutoregressive(2, hidden=(6,), rng=3)
    x = np.array([[1e3, -1e3], [-1e3, 5.0], [0.5, 1e3]])
    z, log_det = layer.inverse(x)
    assert np.isfinite(z).all() and np.isfinite(log_det).all()
    x_back, log_det_back = layer.forward(z)
    np.testing.assert_allclose(x_back, x, rtol=1e-12)
    np.testing.assert_allclose(log_det_back, -log_det, rtol=1e-12)


# ------------------------------------------------------------------------------- Bernstein
def _bernstein(tails, degree=9, bound=2.0, seed=0):
    rng = np.random.default_rng(seed)
    layer = BernsteinAutoregressive(1, degree=degree, bound=bound, tails=tails, hidden=(4,), rng=0)
    return _one_dim(layer, rng.normal(size=layer.n_params))


def _derivatives(layer, x):
    """``f'`` and ``f''`` from the layer's own pullbacks at ``x``: ``x_bar`` for cotangents
    ``(1, 0)`` is ``f'`` and for ``(0, 1)`` is ``d log f' / dx = f'' / f'``."""
    _, _, pullback = layer.inverse_vjp(x[:, None])
    fp = pullback(np.ones((x.size, 1)), np.zeros(x.size))[0][:, 0]
    r = pullback(np.zeros((x.size, 1)), np.ones(x.size))[0][:, 0]
    return fp, r * fp


def test_bernstein_identity_tails_join_twice_differentiably():
    """f(+-B) = +-B, f'(+-B) = 1, f''(+-B) = 0 from inside (identity outside)."""
    layer = _bernstein("identity", bound=2.0)
    B = 2.0
    inside = np.array([-B, np.nextafter(-B, 0), np.nextafter(B, 0)])
    z, _ = layer.inverse(inside[:, None])
    np.testing.assert_allclose(z[:, 0], inside, rtol=0, atol=4e-15)
    fp, fpp = _derivatives(layer, np.array([-B + 1e-9, B - 1e-9]))
    np.testing.assert_allclose(fp, 1.0, atol=1e-7)
    np.testing.assert_allclose(fpp, 0.0, atol=1e-6)
    outside = np.array([[-5.0], [2.0], [3.5]])
    np.testing.assert_array_equal(layer.inverse(outside)[0], outside)


def test_bernstein_linear_tails_continue_the_boundary_slope():
    layer = _bernstein("linear", degree=7, bound=1.5, seed=1)
    B = 1.5
    fp_in, fpp_in = _derivatives(layer, np.array([-B + 1e-9, B - 1e-9]))
    fp_out, _ = _derivatives(layer, np.array([-B - 3.0, B + 3.0]))
    np.testing.assert_allclose(fp_out, fp_in, rtol=1e-7)
    np.testing.assert_allclose(fpp_in, 0.0, atol=1e-6 * max(1.0, float(np.abs(fp_in).max())))
    z_in = layer.inverse(np.array([[-B], [B]]))[0][:, 0]
    z_out = layer.inverse(np.array([[-B - 3.0], [B + 3.0]]))[0][:, 0]
    np.testing.assert_allclose(z_out, z_in + np.array([-3.0, 3.0]) * fp_in, rtol=1e-12)


@pytest.mark.parametrize("tails", ["identity", "linear"])
def test_bernstein_is_increasing(tails):
    layer = _bernstein(tails, degree=12, seed=5)
    x = np.linspace(-6, 6, 4001)[:, None]
    z, log_det = layer.inverse(x)
    assert np.all(np.diff(z[:, 0]) > 0)
    assert np.isfinite(log_det).all()


def test_bernstein_bad_options():
    with pytest.raises(ValueError, match="BernsteinAutoregressive: tails"):
        BernsteinAutoregressive(2, tails="quadratic")
    with pytest.raises(ValueError, match="BernsteinAutoregressive: degree"):
        BernsteinAutoregressive(2, degree=4)                       # identity tails need 5
    with pytest.raises(ValueError, match="BernsteinAutoregressive: degree"):
        BernsteinAutoregressive(2, degree=2, tails="linear")
    with pytest.raises(ValueError, match="BernsteinAutoregressive: bound"):
        BernsteinAutoregressive(2, bound=-1.0)
    with pytest.raises(TypeError, match="BernsteinAutoregressive: bound"):
        BernsteinAutoregressive(2, bound="2")


# ------------------------------------------------------------------------ zuko, side by side
def _zuko_value_and_ladj(transform, x):
    torch = pytest.importorskip("torch")
    xt = torch.tensor(x, dtype=torch.float64)
    with torch.no_grad():
        y, ladj = transform.call_and_ladj(xt)
    return y.detach().numpy(), ladj.detach().numpy()


def test_sos_matches_zuko():
    """zuko's ``SOSPolynomialTransform`` + ``AdditiveTransform`` on the same coefficients (its
    (L + 1)-node Gauss-Legendre rule is exact here): values and log-dets agree to round-off."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("zuko")
    from zuko.transforms import AdditiveTransform, ComposedTransform, SOSPolynomialTransform

    rng = np.random.default_rng(7)
    K, L = 3, 4
    theta = rng.normal(size=K * (L + 1) + 1)
    layer = _one_dim(SumOfSquaresAutoregressive(1, hidden=(4,), rng=0), theta)
    x = np.linspace(-9.0, 9.0, 13)
    a = torch.tensor(np.broadcast_to(theta[:-1].reshape(K, L + 1), (x.size, K, L + 1)).copy())
    shift = torch.tensor(np.full(x.size, theta[-1]))
    transform = ComposedTransform(SOSPolynomialTransform(a=a, slope=1e-3), AdditiveTransform(shift))
    y, ladj = _zuko_value_and_ladj(transform, x)
    z, log_det = layer.inverse(x[:, None])
    np.testing.assert_allclose(z[:, 0], y, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(log_det, ladj, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("tails", ["identity", "linear"])
def test_bernstein_matches_zuko(tails):
    """zuko's ``BoundedBernsteinTransform`` (identity tails) / ``BernsteinTransform`` (linear
    tails) from the same raw values, at points inside ``(-B, B)`` away from zuko's ``eps``
    edges (where it switches to its extrapolation)."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("zuko")
    from zuko.transforms import BernsteinTransform, BoundedBernsteinTransform

    rng = np.random.default_rng(8)
    raw = rng.normal(size=17)
    degree = 21 if tails == "identity" else 18
    layer = _one_dim(BernsteinAutoregressive(1, degree=degree, tails=tails, hidden=(4,), rng=0),
                     raw)
    x = np.linspace(-4.9, 4.9, 15)
    cls = BoundedBernsteinTransform if tails == "identity" else BernsteinTransform
    transform = cls(torch.tensor(np.broadcast_to(raw, (x.size, raw.size)).copy()))
    y, ladj = _zuko_value_and_ladj(transform, x)
    z, log_det = layer.inverse(x[:, None])
    np.testing.assert_allclose(z[:, 0], y, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(log_det, ladj, rtol=1e-10, atol=1e-10)
