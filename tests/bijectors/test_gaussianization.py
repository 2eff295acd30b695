"""Gaussianization (``refflow.bijectors.gaussianization``) and its inverse kernel
(``refflow.kernels.gaussianization``).

Paper facts: the map and log-det against a multiple-precision evaluation (mpmath) from the
centre to ``|x| = 1e3`` (stable tails), identity for one standard component, Meng et al.'s
logistic kernel density, zuko's ``GaussianizationTransform`` with copied parameters (values,
log-dets, autograd gradients), the shrunken range of zuko's ``eps``. The numerical inverse:
round trips to a few ulps of ``z``, kernel vs NumPy twin, the kernel's ``log_ndtr`` against
mpmath, float32. Planted bugs that the oracle must catch: a wrong implicit-function sign, a
log-det gradient without the kernel's ``(log f)'``. The property suite
(``tests/test_properties.py``) runs the oracle on the registry cases.
"""

import numpy as np
import pytest
from scipy.special import log_ndtr as log_ndtr_scipy

from refflow import Gaussianization
from refflow.bijectors import gaussianization as gauss
from refflow.kernels.gaussianization import (
    gaussianization_inverse, gaussianization_inverse_numpy, log_ndtr_kernel,
)
from refflow.testing import RTOL_ROUND_TRIP, assert_vjp, check_vjp

EPS = np.finfo(np.float64).eps
EPS32 = float(np.finfo(np.float32).eps)

#: z against a 40-digit evaluation: ndtri_exp and log_ndtr are accurate to a few ulps of z;
#: relative to max(1, |z|). Worst seen 2.4e-16.
RTOL_Z = 16 * EPS
#: The log-det against 40 digits: ``LSE(log w + log p + log f(u)) - log phi(z)`` subtracts two
#: terms of size ``~u^2/2`` and ``z^2/2``, each correct to a few ulps: a few ulps of
#: ``1 + z^2 + max u^2``. Worst seen 0.3 of that.
LOG_DET_ULPS = 16
#: z -> x -> z: the solver's residual in log-CDF space is a few ulps of ``log C``, i.e. a few
#: ulps of max(1, |z|) in z. Worst seen 5.0 over 2.9e4 values with |z| up to 60.
ROUND_TRIP_ULPS = 16
#: Kernel vs twin, in z space (|x_k - x_t| dz/dx): both within the above of the root. Worst 2.8.
PARITY_ULPS = 2 * ROUND_TRIP_ULPS
#: The kernel's log_ndtr (erfc, asymptotic series below -37) vs 400 digits: absolute error in
#: units of eps max(1, u^2) (erfc's argument u/sqrt2 is rounded: a relative change eps in it
#: moves log Phi by ~u^2 eps). Worst seen 1.4 (scipy's log_ndtr: 3.0).
LOG_NDTR_ULPS = 4
#: float32 computations against float64 on the same inputs (unit round-off 6e-8 times the
#: conditioning of these moderate cases).
RTOL_FLOAT32 = 2e-5

OPTIONS = [
    dict(),
    dict(kernel="logistic", weights="uniform"),
    dict(parameterization="zuko", weights="uniform", shrink=1e-6),
    dict(parameterization="zuko", kernel="logistic"),
]


# ----------------------------------------------------------------------- mpmath reference
def _reference(layer, x, mpmath):
    """``z`` and ``log|det dz/dx|`` in 40 digits, tails in log space (mpmath's exponent range
    is unbounded), ``z`` by a root-find of ``log Phi(+-z) = log C~`` (or ``1 - C~``)."""
    mp = mpmath
    K = layer.n_components
    p = {k: np.asarray(v) for k, v in layer.params.items()}
    eps = mp.mpf(layer.shrink)
    zs, lds = np.empty_like(x), np.empty(x.shape[0])
    for n, row in enumerate(x):
        total = mp.mpf(0)
        for i, xi in enumerate(row):
            xi = mp.mpf(float(xi))
            if layer.parameterization == "kernel":
                lp = [-mp.mpf(float(v)) for v in p["log_scale"][i]]
                us = [(xi - mp.mpf(float(a))) * mp.exp(l) for a, l in zip(p["loc"][i], lp)]
            else:
                lp = [mp.mpf(float(v)) for v in p["scale"][i]]
                us = [xi * mp.exp(l) + mp.mpf(float(b)) for b, l in zip(p["shift"][i], lp)]
            if layer.weights == "learned":
                e = [mp.exp(mp.mpf(float(v))) for v in p["weight_logits"][i]]
                w = [v / sum(e) for v in e]
            else:
                w = [mp.mpf(1) / K] * K
            if layer.kernel == "gaussian":
                cdf, pdf = mp.ncdf, mp.npdf
            else:
                cdf = lambda u: 1 / (1 + mp.exp(-u))                      # noqa: E731
                pdf = lambda u: mp.exp(-abs(u)) / (1 + mp.exp(-abs(u))) ** 2  # noqa: E731
            c = eps / 2 + (1 - eps) * sum(wk * cdf(u) for wk, u in zip(w, us))
            cc = eps / 2 + (1 - eps) * sum(wk * cdf(-u) for wk, u in zip(w, us))
            cp = (1 - eps) * sum(wk * mp.exp(l) * pdf(u) for wk, l, u in zip(w, lp, us))
            if c <= cc:
                target, sign = mp.log(c), 1
            else:
                target, sign = mp.log(cc), -1
            start = float(layer.inverse(np.array([[float(v) for v in row]]))[0][0, i])
            t = mp.findroot(lambda v: mp.log(mp.ncdf(sign * v)) - target, mp.mpf(start))
            zs[n, i] = float(t)
            total += mp.log(cp) - mp.log(mp.npdf(t))
        lds[n] = float(total)
    return zs, lds


@pytest.mark.parametrize("options", OPTIONS)
def test_map_and_log_det_against_multiple_precision_into_the_tails(options):
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 40
    layer = Gaussianization(2, n_components=3, rng=0, **options)
    x = np.array([[0.3, -1.2], [4.0, -6.0], [30.0, -30.0], [1e3, -1e3], [-200.0, 500.0]])
    z, log_det = layer.inverse(x)
    assert np.isfinite(z).all() and np.isfinite(log_det).all()
    z_ref, ld_ref = _reference(layer, x, mpmath)
    np.testing.assert_array_less(np.abs(z - z_ref), RTOL_Z * np.maximum(1, np.abs(z_ref)))
    a, log_p, _ = layer._coefficients({k: v[None] for k, v in layer.params.items()},
                                      np.dtype(np.float64))
    u = (x[..., None] - a) * np.exp(log_p) if layer.parameterization == "kernel" \
        else x[..., None] * np.exp(log_p) + a
    scale = (1 + z_ref ** 2 + (u ** 2).max(axis=2)).sum(axis=1)
    np.testing.assert_array_less(np.abs(log_det - ld_ref), LOG_DET_ULPS * EPS * scale)


def test_one_standard_gaussian_component_is_the_identity():
    layer = Gaussianization(3, n_components=1, weights="uniform", rng=0)
    layer.params["loc"] = np.zeros((3, 1))
    layer.params["log_scale"] = np.zeros((3, 1))
    x = np.array([[-1e3, -37.5, 0.0], [1e-300, 5.0, 1e3]])
    z, log_det = layer.inverse(x)
    np.testing.assert_allclose(z, x, rtol=4 * EPS, atol=4 * EPS)
    np.testing.assert_allclose(log_det, 0, atol=1e-9)
    x2, _ = layer.forward(z)
    np.testing.assert_allclose(x2, x, rtol=4 * EPS, atol=4 * EPS)


def test_meng_et_al_logistic_kernel_density():
    """Meng et al.'s code: ``Phi^{-1}(mean_k sigmoid((x - mu_k) / h_k))`` (uniform weights)."""
    layer = Gaussianization(2, n_components=4, kernel="logistic", weights="uniform", rng=1)
    x = np.random.default_rng(2).normal(size=(8, 2))
    mu, h = layer.params["loc"], np.exp(layer.params["log_scale"])
    cdf = (1 / (1 + np.exp(-(x[..., None] - mu) / h))).mean(axis=2)
    from scipy.special import ndtri
    z, log_det = layer.inverse(x)
    np.testing.assert_allclose(z, ndtri(cdf), rtol=1e-13, atol=1e-13)
    s = 1 / (1 + np.exp(-(x[..., None] - mu) / h))
    pdf = (s * (1 - s) / h).mean(axis=2)
    np.testing.assert_allclose(log_det, (np.log(pdf) + z ** 2 / 2 + 0.5 * np.log(2 * np.pi)).sum(1),
                               rtol=1e-12)


@pytest.mark.parametrize("options", OPTIONS)
@pytest.mark.parametrize("x_scale", [1.0, 30.0, 1e3])
def test_tails_round_trips_and_pullbacks(options, x_scale):
    layer = Gaussianization(2, n_components=3, rng=3, **options)
    rng = np.random.default_rng(4)
    x = x_scale * np.sign(rng.normal(size=(3, 2))) * rng.uniform(0.5, 1.0, size=(3, 2))
    z, ld = layer.inverse(x)
    assert np.isfinite(z).all() and np.isfinite(ld).all()
    _, _, pullback = layer.inverse_vjp(x)
    x_bar, grads = pullback(np.ones_like(z), np.ones(3))
    assert np.isfinite(x_bar).all() and all(np.isfinite(g).all() for g in grads.values())
    if layer.shrink == 0 or x_scale == 1.0:
        # (with zuko's shrink the map is flat to float64 out there: its inverse is not defined)
        back, _ = layer.forward(z)
        assert (np.abs(back - x) / np.maximum(1, np.abs(x))).max() <= RTOL_ROUND_TRIP
        if x_scale <= 30:
            # At |x| = 1e3 the log-det's parameter gradient is an O(1) difference of terms of
            # size |z u| ~ 1e6 (module docstring): float64 holds it to ~eps z^2 ~ 1e-10 relative
            # to those terms, which is also the finite differences' noise; checked to 1e-6 here.
            assert_vjp(layer.inverse_vjp, x, layer.params, rng=0)
            assert_vjp(layer.forward_vjp, z, layer.params, rng=0)


def test_zuko_shrink_bounds_the_range():
    layer = Gaussianization(2, n_components=3, parameterization="zuko", weights="uniform",
                            shrink=1e-6, rng=5)
    z, _ = layer.inverse(np.array([[1e3, -1e3]]))
    bound = -float(gauss.ndtri_exp(np.log(0.5e-6)))
    assert 4.89 < bound < 4.90
    np.testing.assert_allclose(np.abs(z), bound, rtol=1e-12)
    before = {k: v.copy() for k, v in layer.params.items()}
    with pytest.raises(ValueError, match=r"Gaussianization\.forward: z\[0, 1\] = -5\.0 is outside"):
        layer.forward(np.array([[0.0, -5.0]]))
    assert all(np.array_equal(before[k], layer.params[k]) for k in before)


# ---------------------------------------------------------------------- numerical inverse
def _forward_with(layer, z, kernel):
    original = gauss.gaussianization_inverse
    gauss.gaussianization_inverse = kernel
    try:
        return layer.forward(z)[0]
    finally:
        gauss.gaussianization_inverse = original


@pytest.mark.parametrize("seed", range(8))
def test_round_trips_to_a_few_ulps_and_kernel_matches_twin(seed):
    options = dict(kernel=["gaussian", "logistic"][seed % 2],
                   parameterization=["kernel", "zuko"][(seed // 2) % 2],
                   weights=["learned", "uniform"][(seed // 4) % 2])
    layer = Gaussianization(3, n_components=5, rng=seed, **options)
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(300, 3)) * [1.0, 5.0, 20.0]
    x_k = _forward_with(layer, z, gaussianization_inverse)
    x_t = _forward_with(layer, z, gaussianization_inverse_numpy)
    z_k, _ = layer.inverse(x_k)
    z_t, _ = layer.inverse(x_t)
    assert np.all(np.abs(z_k - z) <= ROUND_TRIP_ULPS * EPS * np.maximum(1, np.abs(z)))
    assert np.all(np.abs(z_t - z) <= ROUND_TRIP_ULPS * EPS * np.maximum(1, np.abs(z)))
    _, _, _, log_slope = layer._closed(x_k, None, False)
    dz = np.abs(x_k - x_t) * np.exp(log_slope)
    assert np.all(dz <= PARITY_ULPS * EPS * np.maximum(1, np.abs(z)))


def test_kernel_log_ndtr_against_multiple_precision():
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 400
    u = np.concatenate([np.linspace(-1e3, 40, 401), -np.logspace(-3, 3, 201),
                        np.linspace(-40, -30, 101), np.logspace(-3, 1.6, 101)])
    args = (-37.0, 1.0, 0.7071067811865476, 0.9189385332046728)
    mine = np.array([log_ndtr_kernel(v, *args) for v in u])
    exact = np.array([float(mpmath.log(mpmath.ncdf(mpmath.mpf(v)))) for v in u])
    assert np.all(np.abs(mine - exact) <= LOG_NDTR_ULPS * EPS * np.maximum(1, u * u))


def test_float32_computes_in_float32():
    layer = Gaussianization(3, n_components=4, rng=6)
    z = np.random.default_rng(7).normal(size=(50, 3))
    x64, ld64 = layer.forward(z)
    x32, ld32 = layer.forward(z.astype(np.float32))
    assert x32.dtype == np.float32 and ld32.dtype == np.float32
    np.testing.assert_allclose(x32, x64, rtol=RTOL_FLOAT32, atol=RTOL_FLOAT32)
    np.testing.assert_allclose(ld32, ld64, rtol=RTOL_FLOAT32, atol=RTOL_FLOAT32)
    zz, _ = layer.inverse(x32)
    np.testing.assert_allclose(zz, z, rtol=0, atol=64 * EPS32 * 4)


@pytest.mark.parametrize("kwargs, match", [
    (dict(n_components=0), "n_components"),
    (dict(kernel="cauchy"), "kernel"),
    (dict(parameterization="meng"), "parameterization"),
    (dict(weights="softmax"), "weights"),
    (dict(shrink=1.0), "shrink"),
    (dict(shrink=-1e-3), "shrink"),
    (dict(context_dim=2, hidden=(0,)), "hyper-network"),
])
def test_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=f"Gaussianization.*{match}"):
        Gaussianization(3, **kwargs)


def test_conditional_layer_reads_zukos_parameter_layout():
    """Per feature, ``K`` shifts then ``K`` scales (zuko's ``unflatten(-1, (-1, total))`` and
    ``unpack``): the layer equals an unconditional one holding those rows' parameters."""
    layer = Gaussianization(2, n_components=3, parameterization="zuko", weights="uniform",
                            context_dim=2, hidden=(4,), rng=8)
    c = np.array([[0.3, -0.4]])
    out = layer.hyper(c).reshape(2, 2, 3)
    plain = Gaussianization(2, n_components=3, parameterization="zuko", weights="uniform")
    plain.params["shift"], plain.params["scale"] = out[:, 0], out[:, 1]
    x = np.array([[0.7, -1.1]])
    np.testing.assert_array_equal(layer.inverse(x, context=c)[0], plain.inverse(x)[0])


# ------------------------------------------------------------------------- planted bugs
def test_oracle_catches_a_wrong_implicit_function_sign(monkeypatch):
    layer = Gaussianization(2, n_components=3, rng=9)
    z = np.random.default_rng(10).normal(size=(3, 2))
    assert check_vjp(layer.forward_vjp, z, layer.params, rng=0).ok
    right = gauss._implicit_z_bar
    monkeypatch.setattr(gauss, "_implicit_z_bar", lambda g, s: -right(g, s))
    report = check_vjp(layer.forward_vjp, z, layer.params, rng=0)
    assert not report.ok and report.errors["input"] > 1 and report.errors["loc"] > 1


def test_oracle_catches_a_log_det_gradient_without_the_kernels_curvature(monkeypatch):
    layer = Gaussianization(2, n_components=3, rng=11)
    x = np.random.default_rng(12).normal(size=(3, 2))
    right = Gaussianization._kernel_logs

    def flat(self, u):
        lf, lsf, lpdf, _ = right(self, u)
        return lf, lsf, lpdf, np.zeros_like(u)

    monkeypatch.setattr(Gaussianization, "_kernel_logs", flat)
    for run, v in ((layer.inverse_vjp, x), (layer.forward_vjp, layer.inverse(x)[0])):
        report = check_vjp(run, v, layer.params, rng=0)
        assert not report.ok and report.errors["input"] > 1e-3


# ------------------------------------------------------------------------------- zuko
def test_zuko_gaussianization_transform_values_and_gradients():
    torch = pytest.importorskip("torch")
    zuko = pytest.importorskip("zuko")
    g = torch.Generator().manual_seed(0)
    shift = torch.randn(3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    scale = torch.randn(3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    t = zuko.transforms.GaussianizationTransform(shift, scale)
    layer = Gaussianization(3, n_components=4, parameterization="zuko", weights="uniform",
                            shrink=1e-6)
    layer.params["shift"] = shift.detach().numpy()
    layer.params["scale"] = scale.detach().numpy()
    x = np.random.default_rng(13).normal(size=(6, 3))
    xt = torch.tensor(x, requires_grad=True)
    zt = t(xt)
    ladj = t.log_abs_det_jacobian(xt, zt)
    z, log_det, pullback = layer.inverse_vjp(x)
    # zuko evaluates through erf/erfinv (rounding near C = 1/2 +- 1/2 amplified by erfinv's slope)
    np.testing.assert_allclose(z, zt.detach().numpy(), rtol=1e-11, atol=1e-11)
    np.testing.assert_allclose(log_det, ladj.sum(dim=1).detach().numpy(), rtol=1e-9, atol=1e-9)
    c = np.random.default_rng(14).normal(size=(6, 3))
    (torch.tensor(c) * zt).sum().add(ladj.sum()).backward()
    x_bar, grads = pullback(c, np.ones(6))
    np.testing.assert_allclose(x_bar, xt.grad.numpy(), rtol=1e-8, atol=1e-9)
    np.testing.assert_allclose(grads["shift"], shift.grad.numpy(), rtol=1e-8, atol=1e-9)
    np.testing.assert_allclose(grads["scale"], scale.grad.numpy(), rtol=1e-8, atol=1e-9)
    # zuko's inverse is a 25-step bisection on [-10, 10] (absolute tolerance 1e-6)
    x_back = t.inv(torch.tensor(z)).detach().numpy()
    np.testing.assert_allclose(layer.forward(z)[0], x, rtol=1e-12, atol=1e-12)
    assert np.abs(x_back - x).max() < 1e-6


def test_float32_kernel_arithmetic_stays_float32():
    """No float64 in the float32 specialisations of the kernel and its helpers (numba's
    inferred types of fresh, uncached compilations)."""
    from refflow.kernels import NUMBA_DISABLED
    from refflow.kernels import gaussianization as kg
    if NUMBA_DISABLED:
        pytest.skip("plain-Python mode: no numba typing to inspect")
    numba = pytest.importorskip("numba")

    def typemap(dispatcher):
        (sig,) = dispatcher.signatures
        return {str(t) for t in dispatcher.overloads[sig].type_annotation.typemap.values()}

    f = np.float32
    z = np.array([[-1.5, 0.7], [-40.0, 3.0]], dtype=f)
    side = (z > 0).astype(np.int64)
    target = log_ndtr_scipy(np.where(side == 1, -z, z).astype(np.float64)).astype(f)
    ones = np.ones((1, 2, 3), dtype=f)
    seen = set()
    for kernel in (0, 1):
        fresh = numba.njit(kg.gaussianization_inverse.py_func)
        fresh(target, side, z - 1, z + 1, 0 * ones, ones, 0 * ones, ones - np.log(f(3)), 0,
              kernel, kg.kernel_constants(f), np.empty_like(z), np.zeros(2, dtype=np.int64))
        seen |= typemap(fresh)
    for helper in (kg._g, kg._log_tail, kg._log_pdf, kg.log_ndtr_kernel):
        for sig in helper.nopython_signatures:
            if "float32" in str(sig.args):
                seen |= typemap(numba.njit(sig)(helper.py_func))
                seen.add(str(sig.return_type))
    assert "float32" in seen
    assert not [t for t in seen if "float64" in t], sorted(seen)


def test_a_root_that_float64_cannot_hold_is_refused():
    """One component of width e^-50 at x = 1: ``u = (x - 1) e^50`` takes the values 0 and
    +-5.7e5 at 1 and its neighbouring floats, so ``z = 0`` (``u = 0``) is solved exactly, and
    ``z = 1`` (``u = 1``) has no float64 preimage and is refused."""
    layer = Gaussianization(1, n_components=1, weights="uniform")
    layer.params["loc"] = np.ones((1, 1))
    layer.params["log_scale"] = np.full((1, 1), -50.0)
    x, _ = layer.forward(np.array([[0.0]]))
    assert x[0, 0] == 1.0
    with pytest.raises(ValueError, match=r"forward: z\[0, 0\] = 1\.0 has no preimage in float64"):
        layer.forward(np.array([[1.0]]))
