"""The shared machinery of the monotone-transformer layers (numerical inverses, the
implicit-function pullback), with planted sign bugs the oracle must catch, and the flows built
from them: normalisation, held-out likelihood on data of known density (zuko issue 55's
symptom must not occur), builders against zuko's sizes, FlowDensity."""

import numpy as np
import pytest
from scipy.special import logsumexp, ndtr

from refflow import (BernsteinAutoregressive, FlowDensity, Inverse,
                     MaskedMonotonicAutoregressive, NeuralAutoregressive,
                     SumOfSquaresAutoregressive, UnconstrainedMonotonicAutoregressive, fit)
from refflow.flows import BPF, BUILDERS, NAF, SOSPF, UNAF
from refflow.testing import check_vjp

#: Mass of a 1-D flow between the images of z = -8 and z = 8 by adaptive quadrature of
#: exp(log q) (QUADPACK, asked for 1e-12) against the exact Phi(8) - Phi(-8): a log-det that is
#: not the map's derivative (an inexact quadrature reported as exact, say) is off by >1e-6.
RTOL_MASS = 1e-9
#: Held-out log-likelihood may exceed the truth only by sampling error (Gibbs' inequality:
#: E log q <= E log p); three standard errors of the mean difference.
N_SE = 3.0


def _randomized(layer, seed, scale=0.4):
    rng = np.random.default_rng(seed)
    for key, value in layer.params.items():
        layer.params[key] = rng.normal(0.0, scale, size=value.shape)
    return layer


# ------------------------------------------------------------- planted implicit-sign bugs
class _WrongThetaSign(SumOfSquaresAutoregressive):
    """Planted: ``theta_bar = +z_bar f_theta - g s`` (the implicit function's sign flipped)."""

    @staticmethod
    def _implicit(lam, g, fprime, r, f_theta, s):
        z_bar = (lam - g * r) / fprime
        return z_bar, z_bar[..., None] * f_theta - g[..., None] * s


class _WrongLogDetSign(SumOfSquaresAutoregressive):
    """Planted: ``x~ = lambda + g r`` (the log-det's own x-dependence with the wrong sign)."""

    @staticmethod
    def _implicit(lam, g, fprime, r, f_theta, s):
        z_bar = (lam + g * r) / fprime
        return z_bar, (-z_bar)[..., None] * f_theta - g[..., None] * s


@pytest.mark.parametrize("cls, ok", [(SumOfSquaresAutoregressive, True), (_WrongThetaSign, False),
                                     (_WrongLogDetSign, False)])
def test_planted_implicit_function_sign_is_caught(cls, ok):
    layer = _randomized(cls(3, degree=3, n_polynomials=2, bound=3.0, hidden=(6,), rng=0), 1)
    z = np.random.default_rng(2).normal(size=(4, 3))
    report = check_vjp(layer.forward_vjp, z, layer.params, rng=3)
    assert report.ok == ok, report
    if not ok:
        assert max(report.errors.values()) > 1e-3, report


def test_iaf_direction_is_the_inverse():
    """Pyro's NeuralAutoregressive / Polynomial are this layer's ``Inverse``: one MADE pass to
    sample, the numerical inverse for densities; the same bijection, log-dets negated."""
    layer = _randomized(NeuralAutoregressive(3, units=4, hidden=(8,), rng=0), 4, 0.3)
    iaf = Inverse(layer)
    z = np.random.default_rng(5).normal(size=(6, 3))
    x, log_det = iaf.forward(z)
    z2, log_det2 = layer.inverse(z)
    np.testing.assert_array_equal(x, z2)
    np.testing.assert_array_equal(log_det, log_det2)
    back, back_log_det = iaf.inverse(x)
    np.testing.assert_allclose(back, z, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(back_log_det, -log_det, rtol=1e-12)


# ----------------------------------------------------------------------- normalisation
def _one_dim_flows():
    return {
        "naf": NAF(1, n_layers=2, hidden=(8,), signal=3, network=(6, 6),
                   network_activation="softplus", rng=0),
        "naf-sigmoidal": NAF(1, n_layers=2, hidden=(8,), transformer="sigmoidal", units=5,
                             sigmoid_layers=2, rng=0),
        "unaf": UNAF(1, n_layers=2, hidden=(8,), signal=3, network=(6,), n_nodes=16,
                     network_activation="tanh", rng=0),
        "sospf": SOSPF(1, n_layers=2, hidden=(8,), rng=0),
        "bpf": BPF(1, n_layers=2, hidden=(8,), degree=9, tails="linear", rng=0),
    }


@pytest.mark.parametrize("name", sorted(_one_dim_flows()))
def test_one_dimensional_flows_are_normalised(name):
    """A 1-D flow's density integrates to ``Phi(8) - Phi(-8)`` between the images of the base
    points -8 and 8 (its map is an increasing bijection and its log-det the map's derivative);
    the map also reaches base points far out (|z| = 30: onto R in practice)."""
    from scipy import integrate

    flow = _one_dim_flows()[name]
    for layer in flow.bijector.layers:
        _randomized(layer, 7, 0.3)
    (a, b), _ = flow.bijector.forward(np.array([[-8.0], [8.0]]))
    mass, _ = integrate.quad(lambda v: float(np.exp(flow.log_prob(np.array([[v]])))[0]),
                             a[0], b[0], epsabs=1e-13, epsrel=1e-12, limit=500)
    assert abs(mass - (ndtr(8.0) - ndtr(-8.0))) <= RTOL_MASS, mass
    far, _ = flow.bijector.forward(np.array([[-30.0], [30.0]]))
    back, _ = flow.bijector.inverse(far)
    np.testing.assert_allclose(back, [[-30.0], [30.0]], rtol=1e-10)


# ------------------------------------------------------------- held-out likelihood (#55)
_MU = np.array([[-1.5, 0.5], [1.5, -0.5]])
_SD = np.array([0.6, 0.9])


def _mixture_sample(n, rng):
    return _MU[rng.integers(2, size=n)] + rng.normal(size=(n, 2)) * _SD


def _mixture_log_prob(x):
    lp = -0.5 * (((x[:, None, :] - _MU) / _SD) ** 2).sum(-1) - np.log(2 * np.pi) - np.log(_SD).sum()
    return logsumexp(lp, axis=1) - np.log(2)


@pytest.mark.parametrize("transformer", ["monotonic", "sigmoidal"])
def test_held_out_log_likelihood_never_beats_the_truth(transformer):
    """zuko issue 55: a NAF reported log-likelihoods above the data's true ones, impossible
    for a normalised density (E log q <= E log p). Fit NAFs to a Gaussian mixture and compare
    on 20,000 fresh points: the mean difference stays below 3 standard errors (and the fit is
    good: within 0.1 nats of the truth)."""
    rng = np.random.default_rng(0)
    x_train, x_test = _mixture_sample(4000, rng), _mixture_sample(20000, rng)
    if transformer == "monotonic":
        flow = NAF(2, n_layers=2, hidden=(16, 16), signal=4, network=(16, 16), rng=0)
    else:
        flow = NAF(2, n_layers=2, hidden=(16, 16), transformer="sigmoidal", units=8, rng=0)
    fit(flow, x_train, epochs=15, batch_size=256, lr=3e-3, rng=0)
    diff = flow.log_prob(x_test) - _mixture_log_prob(x_test)
    se = diff.std() / np.sqrt(diff.size)
    assert diff.mean() <= N_SE * se, (diff.mean(), se)
    assert diff.mean() > -0.1, diff.mean()


# --------------------------------------------------------------------------- the builders
def test_builders_are_registered_and_alternate_orders():
    for name, builder in (("naf", NAF), ("unaf", UNAF), ("sospf", SOSPF), ("bpf", BPF)):
        assert BUILDERS[name] is builder
    flow = SOSPF(3, n_layers=3, hidden=(8,), rng=0)
    orders = [layer.made.order.tolist() for layer in flow.bijector.layers[::-1]]
    assert orders == [[0, 1, 2], [2, 1, 0], [0, 1, 2]]        # density direction: as zuko


@pytest.mark.parametrize("name", ["naf", "unaf", "sospf", "bpf"])
def test_builder_defaults_have_zukos_parameter_counts(name):
    """Defaults as zuko's NAF / UNAF / SOSPF / BPF (3 transforms, MADE hidden (64, 64),
    signal 16 and (64, 64) networks, degree 4 x 3 polynomials, 17 Bernstein values): the same
    number of parameters (masked weights counted, as torch does)."""
    pytest.importorskip("torch")
    zuko = pytest.importorskip("zuko")
    dim = 3
    ours = sum(v.size for v in BUILDERS[name](dim, rng=0).params.values())
    theirs = {"naf": zuko.flows.NAF, "unaf": zuko.flows.UNAF, "sospf": zuko.flows.SOSPF,
              "bpf": zuko.flows.BPF}[name](dim)
    assert ours == sum(p.numel() for p in theirs.parameters())


def test_builders_refuse_bad_options():
    with pytest.raises(ValueError, match="NAF: transformer"):
        NAF(2, transformer="spline")
    with pytest.raises(ValueError, match="UNAF: .*quadrature"):
        UNAF(2, quadrature="trapezoid")
    with pytest.raises(ValueError, match="SOSPF: n_layers"):
        SOSPF(2, n_layers=0)
    with pytest.raises(ValueError, match="BPF: .*tails"):
        BPF(2, tails="none")


@pytest.mark.parametrize("flow", ["naf", "sospf", "bpf"])
def test_flow_density_fits_with_the_new_builders(flow):
    rng = np.random.default_rng(1)
    x = _mixture_sample(300, rng)
    kwargs = {"naf": {"signal": 4, "network": (8,)}, "sospf": {}, "bpf": {"degree": 8}}[flow]
    model = FlowDensity(flow=flow, n_layers=2, hidden=(8, 8), flow_kwargs=kwargs, epochs=3,
                        random_state=0, progress=False).fit(x)
    scores = model.score_samples(x[:50])
    assert scores.shape == (50,) and np.isfinite(scores).all()
    assert model.sample(7, random_state=0).shape == (7, 2)


def test_layers_save_and_load(tmp_path):
    from refflow import load, save

    layers = [NeuralAutoregressive(2, units=3, n_layers=2, hidden=(4,), context_dim=1, rng=0),
              MaskedMonotonicAutoregressive(2, signal=2, network=(3,), hidden=(4,), rng=0),
              UnconstrainedMonotonicAutoregressive(2, signal=2, network=(3,), n_nodes=5,
                                                   quadrature="clenshaw-curtis", hidden=(4,),
                                                   rng=0),
              SumOfSquaresAutoregressive(2, degree=2, n_polynomials=2, hidden=(4,), rng=0),
              BernsteinAutoregressive(2, degree=7, tails="linear", order="random", hidden=(4,),
                                      rng=0)]
    x = np.random.default_rng(0).normal(size=(3, 2))
    for i, layer in enumerate(layers):
        _randomized(layer, i)
        path = tmp_path / f"layer{i}.npz"
        save(path, layer)
        again = load(path)
        kw = {"context": np.ones((3, 1))} if layer.context_dim else {}
        np.testing.assert_array_equal(again.inverse(x, **kw)[0], layer.inverse(x, **kw)[0])
        np.testing.assert_array_equal(again.forward(x, **kw)[0], layer.forward(x, **kw)[0])
