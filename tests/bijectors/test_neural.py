"""Paper facts of the neural transformers: NeuralAutoregressive (DSF/DDSF, Huang et al. 2018),
MaskedMonotonicAutoregressive (zuko's NAF) and UnconstrainedMonotonicAutoregressive (UMNN,
Wehenkel & Louppe 2019), including UMNN's quadrature convergence rates and a planted
"inexact quadrature reported as exact" bug the oracle must catch."""

import numpy as np
import pytest
import scipy.optimize
from scipy.special import expit, logit

from refflow import (MaskedMonotonicAutoregressive, NeuralAutoregressive,
                     UnconstrainedMonotonicAutoregressive)
from refflow.bijectors.neural import quadrature_rule
from refflow.testing import RTOL_FD, check_bijector, jacobian_fd

#: Two evaluations of the same map by different formulas (log space vs direct): a few
#: roundings of O(1) terms.
RTOL_SAME = 1e-12
#: DSF universal approximation (Huang et al. 2018, thm 1): the fitted map's worst error on a
#: fine grid (the issue's target).
FIT_TOL = 1e-3


def _one_dim(layer, theta):
    """A ``dim = 1`` layer whose MADE outputs ``theta`` (its last bias; weights zero)."""
    last = len(layer.made.hidden)
    for key in layer.made.params:
        layer.made.params[key] = np.zeros_like(layer.made.params[key])
    layer.made.params[f"b{last}"] = theta
    return layer


def _last_bias(layer):
    return f"made.b{len(layer.made.hidden)}"


# ===================================================================================== DSF
def test_dsf_is_the_papers_formula():
    """``z = logit(sum_k w_k sigmoid(a_k x + b_k))``, ``a = softplus``, ``w = softmax``, and
    ``dz/dx`` from the paper's expression, at moderate ``x`` where the direct form is exact."""
    rng = np.random.default_rng(0)
    K = 6
    theta = rng.normal(size=3 * K)
    layer = _one_dim(NeuralAutoregressive(1, units=K, hidden=(4,), rng=0), theta)
    a = np.logaddexp(0, theta[:K])
    w = np.exp(theta[K:2 * K]) / np.exp(theta[K:2 * K]).sum()
    b = theta[2 * K:]
    x = np.linspace(-3, 3, 13)
    s = expit(a * x[:, None] + b)
    D = np.sum(w * s, axis=1)
    dz = np.sum(w * a * s * (1 - s), axis=1) / (D * (1 - D))
    z, log_det = layer.inverse(x[:, None])
    np.testing.assert_allclose(z[:, 0], logit(D), rtol=RTOL_SAME, atol=RTOL_SAME)
    np.testing.assert_allclose(log_det, np.log(dz), rtol=RTOL_SAME, atol=RTOL_SAME)


def test_dsf_log_space_is_exact_far_out():
    """At |x| = 1e3 the direct form rounds D to 0 or 1 (logit = -+inf); in log space the map
    follows its asymptote ``z ~ a_min x + const`` with slope ``a_min`` (DSF is onto R)."""
    rng = np.random.default_rng(1)
    K = 4
    theta = rng.normal(size=3 * K)
    layer = _one_dim(NeuralAutoregressive(1, units=K, hidden=(4,), rng=0), theta)
    a_min = np.logaddexp(0, theta[:K]).min()
    x = np.array([[-1e3], [-500.0], [500.0], [1e3]])
    z, log_det = layer.inverse(x)
    assert np.isfinite(z).all() and np.isfinite(log_det).all()
    np.testing.assert_allclose(np.exp(log_det), a_min, rtol=1e-9)
    slopes = (z[1, 0] - z[0, 0]) / 500.0, (z[3, 0] - z[2, 0]) / 500.0
    np.testing.assert_allclose(slopes, a_min, rtol=1e-9)
    x_back, _ = layer.forward(z)
    np.testing.assert_allclose(x_back, x, rtol=1e-12)


def test_dsf_universal_approximation_of_a_monotone_map():
    """Huang et al. (thm 1): DSF approximates any increasing map on a compact set. Fit the
    1-D map ``T(x) = x + 0.8 sin x + 0.3 tanh 3x`` on [-3, 3] by least squares (L-BFGS on the
    layer's own pullback, from sigmoids spread over the interval) to within 1e-3 everywhere."""
    K = 16
    layer = NeuralAutoregressive(1, units=K, hidden=(4,), rng=0)
    key = _last_bias(layer)

    def target(x):
        return x + 0.8 * np.sin(x) + 0.3 * np.tanh(3 * x)

    x = np.linspace(-3, 3, 201)[:, None]
    t = target(x[:, 0])

    def objective(theta):
        layer.params[key] = theta
        z, _, pullback = layer.inverse_vjp(x)
        r = z[:, 0] - t
        _, grads = pullback((2 * r / r.size)[:, None], np.zeros(r.size))
        return float(np.mean(r * r)), grads[key]

    centers, a = np.linspace(-4, 4, K), np.full(K, 1.5)
    start = np.concatenate([np.log(np.expm1(a)), np.zeros(K), -a * centers])
    result = scipy.optimize.minimize(objective, start, jac=True, method="L-BFGS-B",
                                     options=dict(maxiter=1500, maxfun=3000, ftol=0, gtol=0))
    layer.params[key] = result.x
    grid = np.linspace(-3, 3, 1001)[:, None]
    err = np.abs(layer.inverse(grid)[0][:, 0] - target(grid[:, 0])).max()
    assert err <= FIT_TOL, err


def test_ddsf_is_a_composition_of_dense_sigmoidal_layers():
    """DDSF against the paper's eq. 9 written directly (``h' = logit(W sigmoid(a (U h) +
    b))``), layer by layer, and its Jacobian positive."""
    rng = np.random.default_rng(2)
    K, L = 3, 3
    layer = NeuralAutoregressive(1, units=K, n_layers=L, hidden=(4,), rng=0)
    for key, value in layer.params.items():
        layer.params[key] = rng.normal(0.0, 0.7, size=value.shape)
    layer = _one_dim(layer, rng.normal(0.0, 0.7, size=layer.n_params))
    theta = layer.made.params[_last_bias(layer)[5:]]
    p = layer.params
    x = np.linspace(-2, 2, 9)
    h, off = x[:, None], 0
    for l in range(L):
        d_in = 1 if l == 0 else K
        a = np.logaddexp(0, theta[off:off + K])
        w_pre = theta[off + K:off + 2 * K] + (p[f"dense.w{l}"] if L > 1 else 0)
        W = np.exp(w_pre) / np.exp(w_pre).sum(axis=-1, keepdims=True)
        b = theta[off + 2 * K:off + 3 * K]
        if d_in > 1:
            u_pre = p[f"dense.u{l}"] + theta[off + 3 * K:off + 3 * K + d_in]
            U = np.exp(u_pre) / np.exp(u_pre).sum(axis=-1, keepdims=True)
            pre = h @ U.T
        else:
            pre = h * np.ones(K)
        h = logit(expit(a * pre + b) @ W.T)
        off += 3 * K + (d_in if d_in > 1 else 0)
    z, log_det = layer.inverse(x[:, None])
    np.testing.assert_allclose(z[:, 0], h[:, 0], rtol=1e-11, atol=1e-11)
    jac = jacobian_fd(layer.inverse, x[:, None])[:, 0, 0]
    assert np.all(jac > 0)
    np.testing.assert_allclose(log_det, np.log(jac), rtol=RTOL_FD)


def test_neural_bad_options():
    with pytest.raises(ValueError, match="NeuralAutoregressive: units"):
        NeuralAutoregressive(2, units=0)
    with pytest.raises(TypeError, match="NeuralAutoregressive: n_layers"):   # a wrong type
        NeuralAutoregressive(2, n_layers=1.5)
    with pytest.raises(TypeError, match="NeuralAutoregressive: units"):
        NeuralAutoregressive(2, units=True)


# ====================================================================== monotonic network
def _monotonic(seed, activation="elu"):
    layer = MaskedMonotonicAutoregressive(2, signal=3, network=(6, 5),
                                          network_activation=activation, hidden=(6,), rng=seed)
    rng = np.random.default_rng(seed)
    for key, value in layer.params.items():
        layer.params[key] = rng.normal(0.0, 0.6, size=value.shape)
    return layer


def test_monotonic_network_is_increasing_and_onto():
    """Non-negative weights and increasing two-way activations: increasing in x; linear at both
    ends (one half of the units is linear each way), so every z in R is reached."""
    layer = _monotonic(0)
    x = np.linspace(-50, 50, 2001)
    pts = np.column_stack([x, np.full_like(x, 0.3)])
    z, log_det = layer.inverse(pts)
    assert np.all(np.diff(z[:, 0]) > 0) and np.isfinite(log_det).all()
    far = np.array([[-1e3, 0.3], [1e3, 0.3]])
    z_far, _ = layer.inverse(far)
    assert z_far[0, 0] < z[0, 0] and z_far[1, 0] > z[-1, 0]
    np.testing.assert_allclose(layer.forward(z_far)[0], far, rtol=1e-12)


def test_monotonic_refuses_bounded_activation():
    with pytest.raises(ValueError, match="MaskedMonotonicAutoregressive: network_activation"):
        MaskedMonotonicAutoregressive(2, network_activation="tanh")
    with pytest.raises(ValueError, match="MaskedMonotonicAutoregressive: signal"):
        MaskedMonotonicAutoregressive(2, signal=0)
    with pytest.raises(TypeError, match="MaskedMonotonicAutoregressive: network"):
        MaskedMonotonicAutoregressive(2, network=64)


def test_monotonic_matches_zuko():
    """zuko's ``MNN`` (``MonotonicMLP`` with ``|W|`` and ``TwoWayELU``, one per coordinate) with
    the same weights and signals: values and log-dets (zuko's autograd derivative) agree."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("zuko")
    from zuko.flows.neural import MNN

    layer = _monotonic(1)
    D, S = 2, 3
    mnn = MNN(signal=S, stack=D, hidden_features=(6, 5)).double()
    linears = [m for m in mnn.network if hasattr(m, "weight")]
    with torch.no_grad():
        for l, lin in enumerate(linears):
            lin.weight.copy_(torch.tensor(layer.params[f"network.w{l}"]))
            lin.bias.copy_(torch.tensor(layer.params[f"network.b{l}"]))
    rng = np.random.default_rng(2)
    x = rng.normal(size=(7, D)) * 2
    signals = rng.normal(size=(7, D, S))
    transform = mnn(torch.tensor(signals))
    y, ladj = transform.call_and_ladj(torch.tensor(x))
    p = layer._p(np.float64)
    z, ell, _ = layer._elements(x, signals, p, False)
    np.testing.assert_allclose(z, y.detach().numpy(), rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(ell, ladj.detach().numpy(), rtol=1e-12, atol=1e-12)


# ==================================================================================== UMNN
def _poles_integrand(delta):
    """``f(t) = 1 / (1 + ((2t - 1) / (2 delta))^2)`` on [0, 1]: poles at ``2t - 1 = +-2i delta``,
    so analytic inside every Bernstein ellipse of [-1, 1] with ``rho < 2 delta + sqrt(4 delta^2
    + 1)``; its integral is ``2 delta arctan(1 / (2 delta))``."""
    rho = 2 * delta + np.sqrt(4 * delta ** 2 + 1)
    exact = 2 * delta * np.arctan(1 / (2 * delta))
    return (lambda t: 1 / (1 + ((2 * t - 1) / (2 * delta)) ** 2)), exact, rho


@pytest.mark.parametrize("rule", ["gauss-legendre", "clenshaw-curtis"])
def test_quadrature_exact_degrees(rule):
    """Gauss-Legendre with n nodes integrates degree 2n - 1 exactly, Clenshaw-Curtis degree
    n - 1 (and not one degree more, resp. two more, in general)."""
    for n in (2, 3, 5, 8):
        c, w = quadrature_rule(rule, n)
        exact_deg = 2 * n - 1 if rule == "gauss-legendre" else n - 1
        if rule == "clenshaw-curtis" and (n - 1) % 2 == 0:
            exact_deg = n          # odd symmetric degrees come for free
        assert abs(np.sum(w * c ** exact_deg) - 1 / (exact_deg + 1)) <= 1e-15
        assert abs(np.sum(w * c ** (exact_deg + 1)) - 1 / (exact_deg + 2)) > 1e-11


@pytest.mark.parametrize("rule, rate_power", [("gauss-legendre", 2), ("clenshaw-curtis", 1)])
def test_quadrature_converges_at_the_documented_rate(rule, rate_power):
    """For an integrand analytic in the Bernstein ellipse E_rho with |f| <= Mx there, the n-node
    error is at most ``(1/2) 64 Mx / (15 (rho^2 - 1) rho^(k n'))`` on [0, 1] (Trefethen 2008,
    thms 4.5 and 5.1; ``k n' = 2n`` Gauss, ``n - 1`` Clenshaw-Curtis). Checked against that
    bound on an ellipse just inside the poles, and the observed geometric rate is at least the
    proven one."""
    f, exact, rho_max = _poles_integrand(0.3)
    rho = 0.98 * rho_max
    # |f| on E_rho: the ellipse's points nearest the poles are on the imaginary axis
    b = (rho - 1 / rho) / 2
    Mx = 1 / (1 - (b / 0.6) ** 2)
    errors = []
    ns = (4, 8, 12, 16, 20)
    for n in ns:
        c, w = quadrature_rule(rule, n)
        err = abs(np.sum(w * f(c)) - exact)
        power = 2 * n if rule == "gauss-legendre" else n - 1
        bound = 0.5 * 64 * Mx / (15 * (rho ** 2 - 1) * rho ** power)
        assert err <= bound, (n, err, bound)
        errors.append(err)
    observed = np.log(errors[0] / errors[-2]) / (ns[-2] - ns[0])   # per node, before round-off
    assert observed >= 0.9 * rate_power * np.log(rho_max), (observed, np.log(rho_max))


def _umnn(n_nodes, activation, positive, rule="gauss-legendre", seed=1, dim=1):
    return UnconstrainedMonotonicAutoregressive(
        dim, signal=2, network=(8, 8), network_activation=activation, positive=positive,
        n_nodes=n_nodes, quadrature=rule, hidden=(4,), rng=seed)


@pytest.mark.parametrize("rule", ["gauss-legendre", "clenshaw-curtis"])
def test_umnn_map_converges_geometrically_for_smooth_integrands(rule):
    """With tanh units and ``P = exp`` the integrand is analytic in a strip: the layer's map
    ``F_n`` reaches the integral (``F_400``) to round-off by 16 (Gauss) / 32 (Clenshaw-Curtis)
    nodes, shrinking by more than 10x per doubling before that."""
    ref = _umnn(400, "tanh", "exp", rule)
    x = np.array([[-3.0], [-1.0], [0.5], [2.0], [4.0]])
    exact = ref.inverse(x)[0][:, 0]
    errors = []
    for n in (4, 8, 16, 32):
        layer = _umnn(n, "tanh", "exp", rule)
        layer.params.update(ref.params)
        errors.append(np.abs(layer.inverse(x)[0][:, 0] - exact).max() / np.abs(exact).max())
    reached = 2 if rule == "gauss-legendre" else 3
    assert errors[reached] <= 1e-13, errors
    assert all(e1 <= 0.1 * e0 for e0, e1 in zip(errors[:reached], errors[1:reached + 1])), errors


def test_umnn_elu_integrand_converges_at_the_proven_algebraic_rate():
    """ELU units (and the softclip's |y|) make g only C^1 with a second derivative of bounded
    variation: Trefethen's thm 4.5 with k = 2 gives O(n^-2) for Gauss-Legendre. The measured
    error from 16 to 128 nodes falls at least that fast (measured: about n^-2.2)."""
    ref = _umnn(512, "elu", "softclip")
    x = np.array([[-3.0], [-1.0], [0.5], [2.0], [4.0]])
    exact = ref.inverse(x)[0][:, 0]
    errors = {}
    for n in (16, 128):
        layer = _umnn(n, "elu", "softclip")
        layer.params.update(ref.params)
        errors[n] = np.abs(layer.inverse(x)[0][:, 0] - exact).max()
    assert errors[128] <= errors[16] * (16 / 128) ** 2, errors
    assert errors[128] > 1e-12          # algebraic: still far from round-off (not analytic)


class _ZukoLogDetUMNN(UnconstrainedMonotonicAutoregressive):
    """Planted bug (the paper's and zuko's convention): the map is the n-node rule, but the
    log-det reported is ``log g(x)``, as if the rule were exact."""

    def _elements(self, x, theta, p, vjp):
        z, _, pullback = super()._elements(x, theta, p, vjp)
        g = self._integrand(np.ascontiguousarray(x.T), np.swapaxes(theta[..., :self.signal], 0, 1), p)
        return z, np.ascontiguousarray(np.log(g).T), pullback


def test_planted_inexact_quadrature_reported_exact_is_caught():
    """With 4 nodes the rule is not exact for this integrand: reporting ``log g(x)`` fails the
    log-det vs FD check, while the layer's own log-det (the rule's exact derivative) passes."""
    rng = np.random.default_rng(5)
    x = rng.normal(size=(5, 2)) * 3.0
    honest = _umnn(4, "tanh", "exp", dim=2)
    planted = _ZukoLogDetUMNN(2, signal=2, network=(8, 8), network_activation="tanh",
                              positive="exp", n_nodes=4, hidden=(4,), rng=1)
    planted.params.update(honest.params)
    good = check_bijector(honest.forward, honest.inverse, honest.inverse(x)[0], x=x)
    bad = check_bijector(planted.forward, planted.inverse, planted.inverse(x)[0], x=x)
    assert good.ok, good
    assert not bad.ok and bad.errors["log_det inverse vs FD"] > 10 * RTOL_FD, bad


def test_umnn_matches_zuko_values_and_shows_its_log_det_gap():
    """zuko's UMNN (``UnconstrainedMonotonicTransform``, 32-node Gauss-Legendre, plus the
    constant) gives the same values; its log-det ``log g(x)`` differs from the derivative of
    its own map, which finite differences of zuko's values confirm is this layer's log-det."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("zuko")
    from zuko.flows.neural import UMNN

    D, S, H = 2, 3, (6, 5)
    layer = UnconstrainedMonotonicAutoregressive(D, signal=S, network=H, n_nodes=32, hidden=(6,),
                                                 rng=3)
    umnn = UMNN(signal=S, stack=D, hidden_features=H).double()
    linears = [m for m in umnn.integrand if hasattr(m, "weight")]
    rng = np.random.default_rng(4)
    with torch.no_grad():
        for l, lin in enumerate(linears):
            w = rng.normal(0.0, 0.8, size=layer.params[f"network.w{l}"].shape)
            b = rng.normal(0.0, 0.8, size=layer.params[f"network.b{l}"].shape)
            layer.params[f"network.w{l}"], layer.params[f"network.b{l}"] = w, b
            lin.weight.copy_(torch.tensor(w))
            lin.bias.copy_(torch.tensor(b))
    x = rng.normal(size=(6, D)) * 3
    theta = rng.normal(size=(6, D, S + 1))

    def zuko_map(v):
        t = umnn(torch.tensor(theta[..., :S]), torch.tensor(theta[..., S]))
        return t(torch.tensor(v)).detach().numpy()

    t = umnn(torch.tensor(theta[..., :S]), torch.tensor(theta[..., S]))
    y, ladj = t.call_and_ladj(torch.tensor(x))
    z, ell, _ = layer._elements(x, theta, layer._p(np.float64), False)
    np.testing.assert_allclose(z, y.detach().numpy(), rtol=1e-12, atol=1e-12)
    # finite differences of zuko's own values, coordinate by coordinate (elementwise map)
    fd = np.stack([jacobian_fd(zuko_map, x)[:, i, i] for i in range(D)], axis=1)
    np.testing.assert_allclose(ell, np.log(fd), rtol=0, atol=1e-8)
    gap = np.abs(ladj.detach().numpy() - np.log(fd)).max()
    assert gap > 100 * np.abs(ell - np.log(fd)).max(), gap


def test_umnn_coarse_rule_far_out_raises_instead_of_folding():
    """A 2-node rule cannot follow the integrand far from 0: where its derivative turns
    negative the pass raises a ValueError naming the layer and the direction."""
    layer = _umnn(2, "tanh", "exp", seed=0)
    for key, value in layer.params.items():
        layer.params[key] = np.random.default_rng(6).normal(0.0, 2.0, size=value.shape)
    x = np.linspace(-60, 60, 241)[:, None]
    with pytest.raises(ValueError, match=r"UnconstrainedMonotonicAutoregressive\.inverse: the "
                                         r"2-node gauss-legendre rule"):
        layer.inverse(x)


def test_umnn_bad_options():
    with pytest.raises(ValueError, match="UnconstrainedMonotonicAutoregressive: quadrature"):
        UnconstrainedMonotonicAutoregressive(2, quadrature="simpson")
    with pytest.raises(ValueError, match="UnconstrainedMonotonicAutoregressive: n_nodes"):
        UnconstrainedMonotonicAutoregressive(2, quadrature="clenshaw-curtis", n_nodes=1)
    with pytest.raises(ValueError, match="UnconstrainedMonotonicAutoregressive: positive"):
        UnconstrainedMonotonicAutoregressive(2, positive="square")
    with pytest.raises(TypeError, match="UnconstrainedMonotonicAutoregressive: quadrature"):
        UnconstrainedMonotonicAutoregressive(2, quadrature=None)
