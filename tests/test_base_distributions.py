"""Uniform, StudentT, DiagGaussianMixture and DiagStudentTMixture bases: closed forms against scipy.stats, pullbacks
against finite differences, the peers' own densities and autograd gradients, sampling moments,
float32, save/load and their use in Flow."""

import numpy as np
import pytest
from scipy import stats
from scipy.special import logsumexp

from refflow import (
    Affine, Chain, DiagGaussianMixture, DiagStudentTMixture, Flow, LULinear, StudentT, Uniform,
    load, save,
)
from refflow.testing import RTOL_FLOAT32, assert_vjp

# closed forms evaluated two ways in float64 (lgamma, log1p, logsumexp): a few ulps of the
# terms, which are O(10) here
RTOL_EXACT = 1e-12
# a peer's float64 density or gradient of the same formula: its own rounding of O(10) terms
RTOL_PEER = 1e-10
# Monte-Carlo moments: each bound is 5 standard errors of the estimate at the sample size used
N_MC = 200_000


def _student(rng, dim=3, trainable_df=True):
    d = StudentT(dim, df=rng.uniform(1.5, 8.0, size=dim), trainable_df=trainable_df)
    d.params["loc"] = rng.normal(size=dim)
    d.params["log_scale"] = rng.normal(0.0, 0.5, size=dim)
    return d


def _mixture(rng, dim=3, k=4):
    d = DiagGaussianMixture(dim, k, rng=rng)
    d.params["logits"] = rng.normal(size=k)
    d.params["log_scale"] = rng.normal(0.0, 0.4, size=(k, dim))
    return d


def _t_mixture(rng, dim=3, k=4):
    d = DiagStudentTMixture(dim, k, rng=rng)
    d.params["logits"] = rng.normal(size=k)
    d.params["log_scale"] = rng.normal(0.0, 0.4, size=(k, dim))
    d.params["raw_df"] = rng.uniform(0.5, 8.0, size=(k, dim))     # df from 0.97 to 8.0
    return d


def _t_mixture_scipy(d, z):
    w = np.exp(d.params["logits"] - logsumexp(d.params["logits"]))
    comps = [stats.t(d.df[k], d.params["loc"][k], np.exp(d.params["log_scale"][k])).logpdf(z)
             .sum(1) for k in range(d.n_components)]
    return logsumexp(np.stack(comps, 1) + np.log(w), axis=1)


def _mixture_scipy(d, z):
    w = np.exp(d.params["logits"] - logsumexp(d.params["logits"]))
    comps = [stats.norm(d.params["loc"][k], np.exp(d.params["log_scale"][k])).logpdf(z).sum(1)
             for k in range(d.n_components)]
    return logsumexp(np.stack(comps, 1) + np.log(w), axis=1)


# --------------------------------------------------------------------------- closed forms
def test_uniform_matches_scipy_and_support(rng):
    low, high = np.array([-1.0, 0.0, 2.0]), np.array([1.0, 0.5, 7.0])
    d = Uniform(low, high)
    z = rng.uniform(low, high, size=(6, 3))
    expected = stats.uniform(low, high - low).logpdf(z).sum(axis=1)
    np.testing.assert_allclose(d.log_prob(z), expected, rtol=RTOL_EXACT)
    # the closed box: both bounds are inside; a point a float beyond either is outside
    edges = np.array([low, high, np.nextafter(low, -np.inf), np.nextafter(high, np.inf)])
    lp = d.log_prob(edges)
    assert np.isfinite(lp[:2]).all() and np.isneginf(lp[2:]).all()
    z_bar = d.log_prob_vjp(z)[1](np.ones(6))[0]
    assert np.array_equal(z_bar, np.zeros_like(z))
    assert Uniform(-2.0, 3.0, dim=2).log_prob(np.zeros(2)) == pytest.approx(-2 * np.log(5.0))


@pytest.mark.parametrize("trainable_df", [True, False])
def test_student_t_matches_scipy(rng, trainable_df):
    d = _student(rng, trainable_df=trainable_df)
    z = rng.standard_t(3.0, size=(7, 3)) * 3
    expected = stats.t(d.df, d.params["loc"], np.exp(d.params["log_scale"])).logpdf(z).sum(1)
    np.testing.assert_allclose(d.log_prob(z), expected, rtol=RTOL_EXACT)
    assert ("raw_df" in d.params) == trainable_df


def test_student_t_far_tail_is_finite():
    d = StudentT(2, df=3.0)
    z = np.array([[1e3, -1e3], [1e150, 0.0]])
    lp = d.log_prob(z)
    expected = stats.t(3.0).logpdf(z).sum(1)
    np.testing.assert_allclose(lp, expected, rtol=RTOL_EXACT)


def test_t_normalising_constant_is_accurate_for_every_df():
    """Beyond nu = 200 the t's constant comes from Stirling's series, where the two lgammas
    (digammas) would cancel. Checked against an independent route: the recurrence ``f(x) =
    f(x + N) + sum_j [0.5 log1p(1/(x+j)) - log1p(0.5/(x+j))]`` (``f(x) = lgamma(x + 1/2) -
    lgamma(x) - log(x)/2``, from ``Gamma(y + 1) = y Gamma(y)``) carries the series at x + N >= 100
    down to x = 10, where lgamma itself is accurate to a few ulps of ~3; a wrong coefficient of
    the series' x^-5 term would be off by 3e-13 at x = 110, 2e-11 of f there."""
    from scipy.special import digamma, gammaln

    from refflow.distributions import _t_dlog_norm, _t_log_norm

    half_log_2pi = 0.5 * np.log(2 * np.pi)
    for x in (10.0, 10.25, 12.5):
        n_steps = int(np.ceil(100.0 - x)) + 3
        j = np.arange(n_steps)
        carried = (_t_log_norm(2 * (x + n_steps)) + half_log_2pi
                   + np.sum(0.5 * np.log1p(1 / (x + j)) - np.log1p(0.5 / (x + j))))
        direct = gammaln(x + 0.5) - gammaln(x) - 0.5 * np.log(x)
        assert carried == pytest.approx(direct, rel=1e-12, abs=0)
        # the derivative: f'(x) = f'(x + N) + sum_j d/dx[...], by the same recurrence
        carried_d = (2 * _t_dlog_norm(2 * (x + n_steps))
                     + np.sum(-0.5 / ((x + j) * (x + j + 1)) + 0.5 / ((x + j) * (x + j + 0.5))))
        direct_d = digamma(x + 0.5) - digamma(x) - 0.5 / x
        assert carried_d == pytest.approx(direct_d, rel=1e-10, abs=0)
    # the switch at nu = 200 is continuous, and a huge df is the normal's constant
    below, at = np.nextafter(200.0, 0.0), 200.0
    assert _t_log_norm(below) == pytest.approx(_t_log_norm(at), rel=1e-13)
    assert _t_dlog_norm(below) == pytest.approx(_t_dlog_norm(at), rel=1e-9)
    assert np.isfinite(_t_log_norm(1e300)) and _t_log_norm(1e300) == -half_log_2pi
    np.testing.assert_allclose(StudentT(2, df=1e12).log_prob(np.array([[0.3, -2.0]])),
                               stats.norm.logpdf([0.3, -2.0]).sum(), rtol=1e-11)


def test_mixture_matches_scipy(rng):
    d = _mixture(rng)
    z = rng.normal(scale=2.0, size=(8, 3))
    np.testing.assert_allclose(d.log_prob(z), _mixture_scipy(d, z), rtol=RTOL_EXACT)
    # far from every component: logsumexp keeps it finite (each component underflows exp)
    far = np.full((1, 3), 1e3)
    np.testing.assert_allclose(d.log_prob(far), _mixture_scipy(d, far), rtol=RTOL_EXACT)


def test_t_mixture_matches_scipy(rng):
    d = _t_mixture(rng)
    z = rng.standard_t(3.0, size=(8, 3)) * 2
    np.testing.assert_allclose(d.log_prob(z), _t_mixture_scipy(d, z), rtol=RTOL_EXACT)
    # far out: polynomial tails, finite at 1e3 and 1e150 (t^2 / nu stays below overflow)
    far = np.array([[1e3, -1e3, 1e3], [1e150, 0.0, -1e150]])
    np.testing.assert_allclose(d.log_prob(far), _t_mixture_scipy(d, far), rtol=RTOL_EXACT)


def test_t_mixture_special_cases(rng):
    """One component is StudentT; equal components are one component; a huge df is
    DiagGaussianMixture's component to the t's O(1/nu) difference."""
    z = rng.normal(scale=2.0, size=(6, 3))
    single = DiagStudentTMixture(3, 1)
    student = _student(rng)
    single.params.update({"loc": student.params["loc"][None], "raw_df": student.params["raw_df"][None],
                          "log_scale": student.params["log_scale"][None]})
    np.testing.assert_allclose(single.log_prob(z), student.log_prob(z), rtol=RTOL_EXACT)
    gauss, heavy = _mixture(rng), DiagStudentTMixture(3, 4, df=1e12)
    heavy.params.update({k: gauss.params[k] for k in ("logits", "loc", "log_scale")})
    np.testing.assert_allclose(heavy.log_prob(z), gauss.log_prob(z), rtol=1e-9)


# ------------------------------------------------------------------------------ pullbacks
@pytest.mark.parametrize("trainable_df", [True, False])
def test_student_t_pullback(rng, trainable_df):
    d = _student(rng, trainable_df=trainable_df)
    z = rng.standard_t(4.0, size=(5, 3)) * 2
    assert_vjp(d.log_prob_vjp, z, d.params, rng=0)


def test_mixture_pullback(rng):
    d = _mixture(rng)
    z = rng.normal(scale=1.5, size=(5, 3))
    assert_vjp(d.log_prob_vjp, z, d.params, rng=0)


def test_t_mixture_pullback(rng):
    d = _t_mixture(rng)
    z = rng.standard_t(3.0, size=(5, 3)) * 2
    assert_vjp(d.log_prob_vjp, z, d.params, rng=0)


def test_uniform_pullback_is_zero_and_checked(rng):
    d = Uniform(-3.0, 3.0, dim=2)
    assert_vjp(d.log_prob_vjp, rng.uniform(-2.0, 2.0, size=(4, 2)), d.params, rng=0)


# ---------------------------------------------------------------------------------- float32
@pytest.mark.parametrize("make", [_student, _mixture, _t_mixture,
                                  lambda r: Uniform(-2.0, 2.0, dim=3)])
def test_float32_stays_float32(rng, make):
    d = make(rng)
    z = rng.uniform(-1.5, 1.5, size=(6, 3))
    lp32, pb32 = d.log_prob_vjp(z.astype(np.float32))
    lp64, pb64 = d.log_prob_vjp(z)
    assert lp32.dtype == np.float32
    np.testing.assert_allclose(lp32, lp64, rtol=RTOL_FLOAT32, atol=RTOL_FLOAT32)
    zb32, zb64 = pb32(np.ones(6, np.float32))[0], pb64(np.ones(6))[0]
    assert zb32.dtype == np.float32
    np.testing.assert_allclose(zb32, zb64, rtol=RTOL_FLOAT32, atol=RTOL_FLOAT32)


# --------------------------------------------------------------------------------- sampling
def test_uniform_samples(rng):
    d = Uniform([-1.0, 10.0], [3.0, 11.0])
    s = d.sample(N_MC, rng=rng)
    assert (s >= d.low).all() and (s <= d.high).all()
    sd = (d.high - d.low) / np.sqrt(12.0)
    np.testing.assert_allclose(s.mean(0), (d.low + d.high) / 2, atol=(5 * sd / np.sqrt(N_MC)).max())
    assert np.array_equal(d.sample(3, rng=4), d.sample(3, rng=4))


def test_student_t_samples(rng):
    d = StudentT(2, df=[6.0, 12.0])
    d.params["loc"] = [1.0, -2.0]
    d.params["log_scale"] = [0.0, np.log(2.0)]
    s = d.sample(N_MC, rng=rng)
    var = np.array([1.0, 4.0]) * d.df / (d.df - 2)
    np.testing.assert_allclose(s.mean(0), [1.0, -2.0], atol=5 * np.sqrt(var.max() / N_MC))
    # the median is 5 / (2 f(0) sqrt(n)) standard errors off at most
    med_se = 1.0 / (2 * stats.t(d.df, 0, [1.0, 2.0]).pdf(0) * np.sqrt(N_MC))
    assert (np.abs(np.median(s, 0) - [1.0, -2.0]) < 5 * med_se).all()
    ks = stats.kstest(s[:20_000, 0], stats.t(6.0, 1.0, 1.0).cdf)
    assert ks.pvalue > 1e-4


def test_mixture_samples(rng):
    d = DiagGaussianMixture(1, 2)
    d.params["loc"] = [[-3.0], [2.0]]
    d.params["logits"] = [np.log(0.3), np.log(0.7)]
    d.params["log_scale"] = [[0.0], [np.log(0.5)]]
    s = d.sample(N_MC, rng=rng)[:, 0]
    mean = 0.3 * -3 + 0.7 * 2
    var = 0.3 * (1 + 9) + 0.7 * (0.25 + 4) - mean**2
    assert abs(s.mean() - mean) < 5 * np.sqrt(var / N_MC)
    frac = (s < -0.5).mean()  # component 0 below -0.5 with prob 0.3 * Phi(2.5) + 0.7 * Phi(-5)
    p = 0.3 * stats.norm.cdf(2.5) + 0.7 * stats.norm.cdf(-5.0)
    assert abs(frac - p) < 5 * np.sqrt(p * (1 - p) / N_MC)


def test_t_mixture_samples(rng):
    d = DiagStudentTMixture(1, 2)
    d.params["loc"] = [[-3.0], [2.0]]
    d.params["logits"] = [np.log(0.3), np.log(0.7)]
    d.params["log_scale"] = [[0.0], [np.log(0.5)]]
    d.params["raw_df"] = [[6.0], [3.0]]                       # df 6.0025 and 3.0486
    s = d.sample(N_MC, rng=rng)[:, 0]
    nu = d.df[:, 0]
    mean = 0.3 * -3 + 0.7 * 2
    second = 0.3 * (nu[0] / (nu[0] - 2) + 9) + 0.7 * (0.25 * nu[1] / (nu[1] - 2) + 4)
    assert abs(s.mean() - mean) < 5 * np.sqrt((second - mean**2) / N_MC)
    # P(s < -0.5) = 0.3 T_6(2.5) + 0.7 T_3(-5): the mixture's cdf, a binomial proportion
    p = 0.3 * stats.t(nu[0]).cdf(2.5) + 0.7 * stats.t(nu[1]).cdf(-5.0)
    assert abs((s < -0.5).mean() - p) < 5 * np.sqrt(p * (1 - p) / N_MC)
    ks = stats.kstest(s[:20_000], lambda v: 0.3 * stats.t(nu[0], -3.0).cdf(v)
                      + 0.7 * stats.t(nu[1], 2.0, 0.5).cdf(v))
    assert ks.pvalue > 1e-4


@pytest.mark.parametrize("make", [_mixture, _t_mixture])
def test_mixture_samples_do_not_depend_on_the_chunks(rng, make):
    """Rows drawn in chunks from one generator are the rows of one draw (what Flow.sample's
    and FlowDensity.sample's batch_size rely on), and the same seed gives the same rows."""
    d = make(rng)
    whole = d.sample(50, rng=3)
    gen = np.random.default_rng(3)
    parts = np.vstack([d.sample(m, rng=gen) for m in (1, 20, 29)])
    np.testing.assert_array_equal(parts, whole)
    flow = Flow(d, Chain([Affine(3), LULinear(3, rng=0)]))
    np.testing.assert_array_equal(flow.sample(50, rng=4, batch_size=7), flow.sample(50, rng=4))


# ------------------------------------------------------------------------- Flow, save/load
@pytest.mark.parametrize("make", [_student, _mixture, _t_mixture,
                                  lambda r: Uniform(-1.0, 2.0, dim=3)])
def test_round_trip_through_model_file(rng, tmp_path, make):
    d = make(rng)
    save(tmp_path / "d.npz", d)
    loaded = load(tmp_path / "d.npz")
    assert type(loaded) is type(d) and repr(loaded) == repr(d)
    z = rng.uniform(-0.9, 1.9, size=(5, 3))
    assert np.array_equal(loaded.log_prob(z), d.log_prob(z))
    assert np.array_equal(loaded.sample(4, rng=1), d.sample(4, rng=1))
    for key, value in d.params.items():
        assert np.array_equal(loaded.params[key], value)


def test_flow_with_each_base(rng):
    for base in (_student(rng), _mixture(rng), _t_mixture(rng)):
        flow = Flow(base, Chain([Affine(3), LULinear(3, rng=rng)]))
        x = rng.normal(size=(6, 3))
        z, ld = flow.bijector.inverse(x)
        np.testing.assert_allclose(flow.log_prob(x), base.log_prob(z) + ld, rtol=RTOL_EXACT)
        _, grads = flow.nll_and_grad(x)
        assert {k for k in grads if k.startswith("base.")} == {f"base.{k}" for k in base.params}
        xs, lq = flow.sample_and_log_prob(5, rng=2)
        np.testing.assert_allclose(lq, flow.log_prob(xs), rtol=1e-10, atol=1e-10)


def test_flow_with_uniform_base_passes_minus_inf(rng):
    flow = Flow(Uniform(-1.0, 1.0, dim=2), Affine(2))
    flow.params["bijector.shift"] = [0.5, 0.0]
    x = np.array([[0.6, 0.0], [2.0, 0.0]])       # z = x - 0.5: inside, then outside
    lp = flow.log_prob(x)
    assert lp[0] == pytest.approx(-2 * np.log(2.0)) and lp[1] == -np.inf
    with pytest.raises(ValueError, match="outside the support"):
        flow.nll_and_grad(x)
    with pytest.raises(ValueError, match="outside the support"):
        flow.log_prob_vjp(x)
    xs, lq = flow.sample_and_log_prob(50, rng=0)
    assert np.isfinite(lq).all()


def test_bad_arguments():
    with pytest.raises(ValueError, match="Uniform: low must be below high"):
        Uniform([0.0, 1.0], [1.0, 1.0])
    with pytest.raises(ValueError, match="Uniform: dim is required"):
        Uniform(0.0, 1.0)
    with pytest.raises(ValueError, match="Uniform: high must be a number or an array of shape"):
        Uniform([0.0, 1.0, 2.0], [3.0, 4.0])
    with pytest.raises(ValueError, match="Uniform: high must be finite"):
        Uniform(0.0, np.inf, dim=1)
    with pytest.raises(ValueError, match="StudentT: df must be positive"):
        StudentT(2, df=[1.0, 0.0])
    with pytest.raises(TypeError, match="StudentT: trainable_df"):
        StudentT(2, trainable_df=1)
    with pytest.raises(ValueError, match="n_components"):
        DiagGaussianMixture(2, 0)
    with pytest.raises(ValueError, match="n_components"):
        DiagStudentTMixture(2, 0)
    for df in (0.0, -1.0, np.inf, np.nan, "5", True):
        with pytest.raises(ValueError, match="DiagStudentTMixture: df must be a positive finite"):
            DiagStudentTMixture(2, 3, df=df)
    with pytest.raises(ValueError, match="StudentT.log_prob"):
        StudentT(2).log_prob(np.zeros((3, 3)))


# ------------------------------------------------------------------------------------ peers
def test_student_t_against_torch_autograd(rng):
    """torch.distributions.StudentT: density and autograd gradients for z, loc, log_scale and
    raw_df (through the same softplus of FlowJAX's parameterization)."""
    torch = pytest.importorskip("torch")
    d = _student(rng)
    z = rng.standard_t(3.0, size=(6, 3)) * 2
    g = rng.normal(size=6)
    lp, pullback = d.log_prob_vjp(z)
    z_bar, grads = pullback(g)
    p = {k: torch.tensor(v, requires_grad=True) for k, v in d.params.items()}
    zt = torch.tensor(z, requires_grad=True)
    dist = torch.distributions.StudentT(torch.nn.functional.softplus(p["raw_df"]), p["loc"],
                                        torch.exp(p["log_scale"]))
    lpt = dist.log_prob(zt).sum(-1)
    (lpt * torch.tensor(g)).sum().backward()
    np.testing.assert_allclose(lp, lpt.detach().numpy(), rtol=RTOL_PEER)
    np.testing.assert_allclose(z_bar, zt.grad.numpy(), rtol=RTOL_PEER)
    for k in d.params:
        np.testing.assert_allclose(grads[k], p[k].grad.numpy(), rtol=RTOL_PEER, err_msg=k)


def test_student_t_against_flowjax(rng):
    jax = pytest.importorskip("jax")
    pytest.importorskip("flowjax")
    from flowjax.distributions import StudentT as FjStudentT

    d = _student(rng)
    z = rng.standard_t(3.0, size=(6, 3)) * 2
    with jax.enable_x64(True):
        fj = FjStudentT(df=d.df, loc=d.params["loc"], scale=np.exp(d.params["log_scale"]))
        # FlowJAX stores df as softplus^-1(df): the same raw value as refflow's raw_df
        np.testing.assert_allclose(np.asarray(fj.base_dist.df.args[0]), d.params["raw_df"],
                                   rtol=RTOL_EXACT)
        expected = np.asarray(fj.log_prob(z))
    np.testing.assert_allclose(d.log_prob(z), expected, rtol=RTOL_PEER)


def test_mixture_against_normflows(rng):
    torch = pytest.importorskip("torch")
    normflows = pytest.importorskip("normflows")
    d = _mixture(rng, dim=3, k=4)
    peer = normflows.distributions.GaussianMixture(4, 3, loc=d.params["loc"],
                                                   scale=np.exp(d.params["log_scale"]))
    with torch.no_grad():
        peer.weight_scores.copy_(torch.tensor(d.params["logits"])[None])
    z = rng.normal(scale=1.5, size=(6, 3))
    g = rng.normal(size=6)
    lp, pullback = d.log_prob_vjp(z)
    z_bar, grads = pullback(g)
    zt = torch.tensor(z, requires_grad=True)
    lpt = peer.log_prob(zt)
    (lpt * torch.tensor(g)).sum().backward()
    np.testing.assert_allclose(lp, lpt.detach().numpy(), rtol=RTOL_PEER)
    np.testing.assert_allclose(z_bar, zt.grad.numpy(), rtol=RTOL_PEER, atol=1e-14)
    names = {"logits": "weight_scores", "loc": "loc", "log_scale": "log_scale"}
    for k, name in names.items():
        np.testing.assert_allclose(grads[k], getattr(peer, name).grad.numpy()[0],
                                   rtol=RTOL_PEER, atol=1e-14, err_msg=k)


def test_uniform_against_zuko_box_uniform(rng):
    torch = pytest.importorskip("torch")
    zuko = pytest.importorskip("zuko")
    low, high = -np.pi - 1e-5, np.pi + 1e-5      # zuko's NCSF base
    d = Uniform(low, high, dim=3)
    peer = zuko.distributions.BoxUniform(torch.full((3,), low, dtype=torch.float64),
                                         torch.full((3,), high, dtype=torch.float64))
    z = rng.uniform(-3.0, 3.0, size=(5, 3))
    np.testing.assert_allclose(d.log_prob(z), peer.log_prob(torch.tensor(z)).numpy(),
                               rtol=RTOL_EXACT)
