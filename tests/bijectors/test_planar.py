"""Planar, Radial and Sylvester flows (``refflow.bijectors.planar``) and their inverse kernels
(``refflow.kernels.planar``).

Paper facts (the invertibility constraints at extreme raw values, the maps and determinants
rebuilt by hand from the papers' formulas, orthonormal ``Q``, the component outside
``span(Q)``), round trips next to the constraints' boundaries and at ``|z|`` up to 1e3, the
kernels against their NumPy twins and against long-double residuals, finite results for raw
parameters at +-50, the save/load config and the error cases. The oracle (log-dets vs
``slogdet`` of FD Jacobians, pullbacks vs FD) runs on the registry cases in
``tests/test_properties.py``; a Chain of all three and Sylvester's ``m = 1`` are checked here.
"""

import json

import numpy as np
import pytest

from refflow import Chain, Planar, Radial, Sylvester
from refflow.kernels import NUMBA_DISABLED
from refflow.kernels.planar import (
    planar_inverse, planar_inverse_numpy, sylvester_inverse, sylvester_inverse_numpy,
)
from refflow.testing import RTOL_ROUND_TRIP, assert_bijector, assert_vjp

from ..helpers import randomize, rel

EPS = np.finfo(np.float64).eps
EPS32 = float(np.finfo(np.float32).eps)

#: The layer against the papers' formulas evaluated here along another path (naive
#: ``log|1 + u^T psi|``, ``slogdet`` of the analytic Jacobian, matrices built entry by entry):
#: a few ulps per operation, amplified by at most ~1e2 on the moderate parameters used.
RTOL_SAME_MAP = 1e-12
#: A scalar root is "exact to round-off" when its residual, evaluated in long double, is at most
#: a few float64 roundings of the terms of ``g(v) = (v - y) + alpha tanh(beta v + gamma)``:
#: ``RESIDUAL_ULPS * eps * (|y| + |alpha| + |v| + |gamma|)``. Worst seen: 0.85 (kernel) and 0.66
#: (twin) over 6e4 roots.
RESIDUAL_ULPS = 4
#: Kernel vs twin: two roots with such residuals differ by at most their sum over the slope
#: ``g'(v)`` (first order), i.e. ``2 RESIDUAL_ULPS eps scale / g'``. Worst seen: 1.2 eps scale/g'.
PARITY_ULPS = 2 * RESIDUAL_ULPS
#: Radius around the flat point of the scalar equation that round-trip tests skip: where
#: ``|a| < FLAT`` the Jacobian's smallest singular value is ``~a^2 + (1 + gamma)``, so the
#: forward pass's own rounding of ``x`` moves the exact inverse by ``eps |x| / (a^2 + 1 + gamma)``
#: (intrinsic to the map in float64). test_planar_flat_spot_error_is_the_conditioning checks
#: that bound inside the window.
FLAT = 1e-2
#: The z -> x -> z error of a layer whose inverse Jacobian has norm ``||J^{-1}||``: the forward
#: pass rounds ``x`` (a few ulps of ``max |x|``), the inverse carries that through ``J^{-1}``.
#: Worst seen 2.2 (Sylvester near its constraint).
COND_ULPS = 16
#: Rows with ``||J^{-1}|| <= COND_MAX`` round-trip to ``COND_ULPS eps COND_MAX ~ 4e-11`` relative.
COND_MAX = 1e4
#: Two evaluations of one log-det (sums of ``log1p``/``logaddexp`` of a few rounded terms).
LOG_DET_ULPS = 16
#: float32 roots: the float64 criterion with float32's unit round-off.
RESIDUAL_ULPS_32 = RESIDUAL_ULPS
#: Raw parameters drawn N(0, 0.7^2): clearly non-trivial maps, well inside the constraints.
PARAM_SCALE = 0.7


def _plain_python():
    if NUMBA_DISABLED:
        return True
    import numba
    return bool(numba.config.DISABLE_JIT)


#: Kernels run as plain Python (REFFLOW_DISABLE_NUMBA=1 or NUMBA_DISABLE_JIT=1): smaller batches.
PLAIN_PYTHON = _plain_python()


def n_rows(compiled, python):
    return python if PLAIN_PYTHON else compiled


def softplus(s):
    return np.log1p(np.exp(-abs(s))) + max(s, 0.0)


@pytest.fixture
def rng():
    return np.random.default_rng(20240605)


def planar_with_margin(dim, margin, rng, b=0.3):
    """A Planar layer whose ``1 + w^T u_hat = softplus(w^T u)`` equals ``margin``."""
    layer = Planar(dim, rng=rng)
    w = rng.normal(size=dim)
    s = np.log(np.expm1(margin))                       # softplus(s) = margin
    u = rng.normal(size=dim)
    layer.params["w"] = w
    layer.params["u"] = u + (s - w @ u) * w / (w @ w)  # w^T u = s
    layer.params["b"] = [b]
    return layer


# ============================================================================== paper facts
@pytest.mark.parametrize("s", [-50.0, -13.8, -1.0, 0.0, 0.5413, 3.0, 50.0])
def test_planar_constraint_holds_for_extreme_raw_values(s, rng):
    """Appendix A.1: ``u_hat = u + (m(w^T u) - w^T u) w / |w|^2``, ``m(s) = -1 + softplus(s)``,
    so ``w^T u_hat = m(w^T u) > -1``; ``1 + w^T u_hat = softplus(w^T u)`` without cancellation."""
    layer = Planar(3, rng=rng)
    w = rng.choice([-50.0, 50.0], size=3)
    u = rng.choice([-50.0, 50.0], size=3)
    u = u + (s - w @ u) * w / (w @ w)
    layer.params["w"], layer.params["u"] = w, u
    k = layer.constrained()
    s_used = float(w @ layer.params["u"])
    assert k["one_plus_w_dot_u_hat"] > 0
    assert k["w_dot_u_hat"] >= -1.0
    np.testing.assert_allclose(k["one_plus_w_dot_u_hat"], softplus(s_used), rtol=1e-15)
    # u_hat by hand, and its defining property w^T u_hat = m(w^T u) to the rounding of the dot
    m = softplus(s_used) - 1.0
    u_hat = layer.params["u"] + (m - s_used) * w / (w @ w)
    np.testing.assert_allclose(k["u_hat"], u_hat, rtol=1e-13, atol=1e-13 * np.abs(u).max())
    terms = np.abs(w) @ (np.abs(layer.params["u"]) + np.abs(u_hat))
    assert abs(w @ k["u_hat"] - m) <= 16 * EPS * terms


@pytest.mark.parametrize("s", [-800.0, -50.0, -13.8, -1.0, 0.0, 0.5413, 3.0, 50.0])
def test_planar_flowjax_constraint(s, rng):
    """FlowJAX's ``m(s) = -1 + log(1 + softplus(s))``: ``w^T u_hat = m(w^T u) > -1`` with
    ``1 + w^T u_hat = log1p(softplus(s))``; u_hat by hand; the log-det at ``p = 0`` is
    ``log(1 + c)`` (finite where softplus underflows, ``s`` there)."""
    layer = Planar(3, constraint="flowjax", rng=rng)
    w = rng.choice([-5.0, 5.0], size=3)
    u = rng.normal(size=3)
    u = u + (s - w @ u) * w / (w @ w)
    layer.params["w"], layer.params["u"], layer.params["b"] = w, u, [0.0]
    k = layer.constrained()
    s_used = float(w @ layer.params["u"])
    sp = float(np.logaddexp(0.0, s_used))
    np.testing.assert_allclose(k["one_plus_w_dot_u_hat"], np.log1p(sp), rtol=1e-15)
    m = np.log1p(sp) - 1.0
    u_hat = layer.params["u"] + (m - s_used) * w / (w @ w)
    np.testing.assert_allclose(k["u_hat"], u_hat, rtol=1e-13, atol=1e-13 * np.abs(u).max())
    _, log_det = layer.forward(np.zeros((1, 3)))
    expected = np.log(np.log1p(sp)) if sp > 0 else s_used
    np.testing.assert_allclose(log_det[0], expected, rtol=1e-13)
    assert repr(layer) == "Planar(dim=3, constraint='flowjax')"


def test_planar_flowjax_constraint_is_flowjaxs(rng):
    jax = pytest.importorskip("jax")
    pytest.importorskip("flowjax")
    from flowjax.bijections.planar import _UnconditionalPlanar
    with jax.enable_x64(True):
        import jax.numpy as jnp
        for _ in range(5):
            w, u = rng.normal(size=4), rng.normal(0.0, 2.0, size=4)
            layer = Planar(4, constraint="flowjax", rng=rng)
            layer.params["w"], layer.params["u"] = w, u
            theirs = _UnconditionalPlanar(jnp.asarray(w), jnp.asarray(u), jnp.asarray(0.3))
            np.testing.assert_allclose(layer.constrained()["u_hat"],
                                       np.asarray(theirs.get_act_scale()), rtol=1e-13,
                                       atol=1e-14)


def test_planar_constraint_option_is_checked_and_saved(rng):
    with pytest.raises(ValueError, match="Planar: constraint"):
        Planar(2, constraint="other")
    assert Planar(2, rng=rng)._config() == {"dim": 2}
    assert Planar(2, constraint="flowjax", rng=rng)._config() == {"dim": 2,
                                                                 "constraint": "flowjax"}


@pytest.mark.parametrize("entries", [50.0, -50.0])
def test_planar_constraint_with_every_raw_entry_at_50(entries, rng):
    """Raw entries of +-50 give ``w^T u = +-7500``: ``softplus`` underflows for the negative
    sign (``1 + c`` is ``e^-7500``, not representable), yet the log-det stays finite (it is
    taken as ``logaddexp(2 log|t|, log softplus(s) + log h')``) and equals ``s`` at ``p = 0``."""
    layer = Planar(3, rng=rng)
    layer.params["u"] = [entries] * 3
    layer.params["w"] = [50.0] * 3
    layer.params["b"] = [0.0]
    z = np.array([[0.0, 0.0, 0.0], [1.0, -1.0, 0.0], [1e-3, 0.0, 0.0], [1e3, -1e3, 2e3]])
    x, log_det = layer.forward(z)
    assert np.isfinite(x).all() and np.isfinite(log_det).all()
    s = 7500.0 if entries > 0 else -7500.0
    # at p = 0: log(1 + c h'(0)) = log(1 + c) = log softplus(s)
    expected = np.log(s) if s > 0 else s
    np.testing.assert_allclose(log_det[0], expected, rtol=1e-14)
    z_back, inv_log_det = layer.inverse(x)
    assert np.isfinite(z_back).all() and np.isfinite(inv_log_det).all()


def test_planar_matches_the_paper(rng):
    """The paper's planar map ``x = z + u_hat h(w^T z + b)`` and
    ``log|det| = log|1 + u_hat^T psi(z)|``, ``psi = h'(w^T z + b) w``; naive formulas."""
    layer = randomize(Planar(4, rng=rng), rng, PARAM_SCALE)
    k = layer.constrained()
    z = rng.normal(size=(50, 4)) * 2
    pre = z @ k["w"] + k["b"]
    psi = (1 - np.tanh(pre) ** 2)[:, None] * k["w"]
    x, log_det = layer.forward(z)
    np.testing.assert_allclose(x, z + np.tanh(pre)[:, None] * k["u_hat"], rtol=RTOL_SAME_MAP,
                               atol=RTOL_SAME_MAP)
    np.testing.assert_allclose(log_det, np.log(np.abs(1 + psi @ k["u_hat"])), rtol=RTOL_SAME_MAP,
                               atol=RTOL_SAME_MAP)
    # the Jacobian I + u_hat psi^T, its determinant by slogdet
    jac = np.eye(4) + k["u_hat"][None, :, None] * psi[:, None, :]
    np.testing.assert_allclose(log_det, np.linalg.slogdet(jac)[1], atol=RTOL_SAME_MAP)


def test_leaky_planar_matches_normflows_formulas(rng):
    """normflows' leaky Planar written out: ``x = z + u_hat h(w^T z + b)``, ``h`` the leaky
    ReLU of slope 0.2 (``h' = 1`` at 0), ``log|1 + (w^T u_hat) h'|``, its closed-form inverse
    ``z = x - a u_hat (w^T x + b) / (1 + a w^T u_hat)``, and ``slogdet`` of the Jacobian."""
    layer = randomize(Planar(4, activation="leaky_relu", rng=rng), rng, PARAM_SCALE)
    k = layer.constrained()
    z = rng.normal(size=(50, 4)) * 2
    pre = z @ k["w"] + k["b"]
    slope = np.where(pre < 0, 0.2, 1.0)
    x, log_det = layer.forward(z)
    np.testing.assert_allclose(x, z + (slope * pre)[:, None] * k["u_hat"], rtol=RTOL_SAME_MAP,
                               atol=RTOL_SAME_MAP)
    np.testing.assert_allclose(log_det, np.log(np.abs(1 + slope * (k["w"] @ k["u_hat"]))),
                               rtol=RTOL_SAME_MAP, atol=RTOL_SAME_MAP)
    jac = np.eye(4) + k["u_hat"][None, :, None] * (slope[:, None] * k["w"])[:, None, :]
    np.testing.assert_allclose(log_det, np.linalg.slogdet(jac)[1], atol=RTOL_SAME_MAP)
    lin = x @ k["w"] + k["b"]
    a = np.where(lin < 0, 0.2, 1.0)
    z_paper = x - (a * lin / (1 + a * (k["w"] @ k["u_hat"])))[:, None] * k["u_hat"]
    z_back, inv_log_det = layer.inverse(x)
    np.testing.assert_allclose(z_back, z_paper, rtol=RTOL_SAME_MAP, atol=RTOL_SAME_MAP)
    np.testing.assert_allclose(z_back, z, rtol=RTOL_ROUND_TRIP, atol=RTOL_ROUND_TRIP)
    np.testing.assert_array_equal(inv_log_det, -log_det)


def test_radial_normflows_alpha_is_the_absolute_value(rng):
    """normflows: ``alpha = |alpha_raw|``, ``beta = softplus(beta_raw) - |alpha_raw|``; the map
    is the same as the default parameterization's with ``softplus(alpha_raw')`` equal to it."""
    ours = randomize(Radial(3, parameterization="normflows", rng=rng), rng, PARAM_SCALE)
    ours.params["alpha"] = [-0.7]
    k = ours.constrained()
    assert k["alpha"] == 0.7
    np.testing.assert_allclose(k["beta"], softplus(ours.params["beta"][0]) - 0.7, rtol=1e-15)
    twin = Radial(3, rng=rng)
    twin.params.update(ours.params)
    twin.params["alpha"] = [np.log(np.expm1(0.7))]          # softplus^-1(0.7)
    z = rng.normal(size=(20, 3))
    for direction in ("forward", "inverse"):
        for a, b in zip(getattr(ours, direction)(z), getattr(twin, direction)(z)):
            np.testing.assert_allclose(a, b, rtol=RTOL_SAME_MAP, atol=RTOL_SAME_MAP)
    ours.params["alpha"] = [0.0]
    with pytest.raises(ValueError, match=r"Radial\.forward.*alpha.*is 0"):
        ours.forward(z)


@pytest.mark.parametrize("alpha_raw, beta_raw", [(50.0, -50.0), (-50.0, -50.0), (-50.0, 50.0),
                                                 (50.0, 50.0), (0.0, 0.0)])
def test_radial_constraint_holds_for_extreme_raw_values(alpha_raw, beta_raw, rng):
    """``alpha = softplus(alpha_raw) > 0``, ``beta = -alpha + softplus(beta_raw) >= -alpha``;
    ``alpha + beta`` is returned exactly (``beta`` itself may round to ``-alpha``)."""
    layer = Radial(3, rng=rng)
    layer.params["alpha"], layer.params["beta"] = [alpha_raw], [beta_raw]
    k = layer.constrained()
    assert k["alpha"] > 0 and k["alpha_plus_beta"] > 0 and k["beta"] >= -k["alpha"]
    np.testing.assert_allclose(k["alpha"], softplus(alpha_raw), rtol=1e-15)
    np.testing.assert_allclose(k["alpha_plus_beta"], softplus(beta_raw), rtol=1e-15)
    np.testing.assert_allclose(k["beta"], softplus(beta_raw) - softplus(alpha_raw), rtol=1e-15)
    z = np.concatenate([rng.normal(size=(20, 3)) * 10.0 ** rng.uniform(-3, 3, size=(20, 1)),
                        k["z0"][None]])
    for v in (z, layer.forward(z)[0]):
        for direction in (layer.forward, layer.inverse):
            out, log_det = direction(v)
            assert np.isfinite(out).all() and np.isfinite(log_det).all()


def test_radial_matches_the_paper(rng):
    """The paper's radial map ``x = z + beta h(alpha, r)(z - z0)``, ``h = 1/(alpha + r)``, with
    ``det = [1 + beta h]^(d-1) [1 + beta h + beta h'(alpha, r) r]``, and the Jacobian
    ``(1 + beta h) I + beta h' (z - z0)(z - z0)^T / r`` by slogdet."""
    d = 4
    layer = randomize(Radial(d, rng=rng), rng, PARAM_SCALE)
    k = layer.constrained()
    alpha, beta = k["alpha"], k["beta"]
    z = rng.normal(size=(50, d)) * 2
    v = z - k["z0"]
    r = np.linalg.norm(v, axis=1)
    h = 1 / (alpha + r)
    dh = -1 / (alpha + r) ** 2
    x, log_det = layer.forward(z)
    np.testing.assert_allclose(x, z + (beta * h)[:, None] * v, rtol=RTOL_SAME_MAP,
                               atol=RTOL_SAME_MAP)
    paper = (d - 1) * np.log(1 + beta * h) + np.log(1 + beta * h + beta * dh * r)
    np.testing.assert_allclose(log_det, paper, rtol=RTOL_SAME_MAP, atol=RTOL_SAME_MAP)
    jac = ((1 + beta * h)[:, None, None] * np.eye(d)
           + (beta * dh / r)[:, None, None] * v[:, :, None] * v[:, None, :])
    np.testing.assert_allclose(log_det, np.linalg.slogdet(jac)[1], atol=RTOL_SAME_MAP)


def test_radial_at_the_centre(rng):
    """``z = z0`` (``r = 0``) is an ordinary point: ``x = z0``, ``log_det = d log((alpha +
    beta) / alpha)``, and the pullbacks are finite, with the unit vector ``v / r`` taken as 0."""
    d = 3
    layer = randomize(Radial(d, rng=rng), rng, PARAM_SCALE)
    k = layer.constrained()
    z0 = k["z0"]
    ratio = k["alpha_plus_beta"] / k["alpha"]
    x, log_det, pullback = layer.forward_vjp(z0)
    np.testing.assert_array_equal(x, z0)
    np.testing.assert_allclose(log_det, d * np.log(ratio), rtol=1e-14)
    x_bar = rng.normal(size=d)
    z_bar, grads = pullback(x_bar, 1.0)
    np.testing.assert_allclose(z_bar, ratio * x_bar, rtol=1e-14)
    assert all(np.isfinite(g).all() for g in grads.values())
    z, inv_log_det, pullback = layer.inverse_vjp(z0)
    np.testing.assert_array_equal(z, z0)
    np.testing.assert_allclose(inv_log_det, -d * np.log(ratio), rtol=1e-14)
    x_bar, grads = pullback(x_bar, 1.0)
    assert np.isfinite(x_bar).all() and all(np.isfinite(g).all() for g in grads.values())


def householder_product(vectors, d):
    """``H_k ... H_1`` built from the reflection matrices, ``H = I - 2 v v^T / (v^T v)``."""
    h = np.eye(d)
    for v in vectors:
        h = (np.eye(d) - 2 * np.outer(v, v) / (v @ v)) @ h
    return h


def triangular_by_hand(entries, raw_diag, m):
    t = np.zeros((m, m))
    k = 0
    for i in range(m):
        for j in range(i + 1, m):  # row-major strictly-upper order
            t[i, j] = entries[k]
            k += 1
        t[i, i] = np.tanh(raw_diag[i])
    return t


@pytest.mark.parametrize("q, m", [("householder", 3), ("householder", 5), ("permutation", 2),
                                  ("permutation", 5)])
def test_sylvester_matches_the_paper(q, m, rng):
    """``x = z + Q R h(R~ Q^T z + b)``; ``log|det J|`` with ``J = I + Q R diag(h') R~ Q^T``
    built here by hand and measured by slogdet; ``Q`` from the reflection matrices or the
    permutation; ``R``, ``R~`` upper triangular with ``tanh`` diagonals."""
    d = 5
    layer = randomize(Sylvester(d, m=m, q=q, rng=rng), rng, PARAM_SCALE)
    p = layer.params
    if q == "householder":
        qmat = householder_product(p["vectors"], d)[:, :m]
    else:
        perm = layer.buffers["permutation"]
        qmat = np.eye(d)[:, perm[:m]]                # column j is e_{perm[j]}
    r = triangular_by_hand(p["r_entries"], p["unconstrained_r_diag"], m)
    rt = triangular_by_hand(p["r_tilde_entries"], p["unconstrained_r_tilde_diag"], m)
    k = layer.constrained()
    np.testing.assert_allclose(k["q"], qmat, atol=1e-14)
    np.testing.assert_allclose(k["q"].T @ k["q"], np.eye(m), atol=1e-14)
    np.testing.assert_array_equal(k["r"], r)
    np.testing.assert_array_equal(k["r_tilde"], rt)
    z = rng.normal(size=(40, d)) * 2
    a = z @ qmat @ rt.T + p["b"]
    x, log_det = layer.forward(z)
    np.testing.assert_allclose(x, z + np.tanh(a) @ r.T @ qmat.T, rtol=RTOL_SAME_MAP,
                               atol=RTOL_SAME_MAP)
    hp = 1 - np.tanh(a) ** 2
    jac = np.eye(d) + np.einsum("ij,nj,jk->nik", qmat @ r, hp, rt @ qmat.T)
    np.testing.assert_allclose(log_det, np.linalg.slogdet(jac)[1], atol=RTOL_SAME_MAP)
    # the paper's determinant: prod_i (1 + R_ii R~_ii h'(a_i))
    np.testing.assert_allclose(
        log_det, np.log(1 + np.diag(r) * np.diag(rt) * hp).sum(axis=1), atol=RTOL_SAME_MAP)


@pytest.mark.parametrize("raw", [50.0, 20.0, 5.0, 0.5])
def test_sylvester_diagonal_products_stay_above_minus_one(raw, rng):
    """``R_ii R~_ii = tanh(p) tanh(q) > -1``: at ``p = -q = 50`` both tanh round to +-1 and the
    product to -1, but ``1 + R_ii R~_ii = (1 - tanh p) + tanh p (1 - tanh q)`` is kept (here
    ``~4 e^-2|raw|``), so the log-det stays finite even where ``h' = 1``."""
    layer = Sylvester(3, m=2, rng=rng)
    layer.params["unconstrained_r_diag"] = [raw, -raw]
    layer.params["unconstrained_r_tilde_diag"] = [-raw, raw]
    layer.params["b"] = [0.0, 0.0]
    k = layer.constrained()
    margin = k["one_plus_diag_products"]
    assert (margin > 0).all()
    exact = np.cosh(0.0) / (np.cosh(raw) * np.cosh(raw))          # 1 + tanh p tanh q
    np.testing.assert_allclose(margin, [exact, exact], rtol=1e-13)
    np.testing.assert_array_equal(np.diag(k["r"]), np.tanh([raw, -raw]))
    x, log_det = layer.forward(np.zeros((1, 3)))                  # a = 0, h' = 1
    np.testing.assert_allclose(log_det, 2 * np.log(exact), rtol=1e-13)


def test_sylvester_leaves_the_orthogonal_complement_unchanged(rng):
    """With ``m < d`` the component of ``z`` (and of ``x``) outside ``span(Q)`` passes unchanged."""
    layer = randomize(Sylvester(6, m=2, n_reflections=4, rng=rng), rng, PARAM_SCALE)
    q = layer.constrained()["q"]
    proj = np.eye(6) - q @ q.T
    z = rng.normal(size=(30, 6)) * 3
    x, _ = layer.forward(z)
    np.testing.assert_allclose(x @ proj, z @ proj, atol=1e-13)
    z_back, _ = layer.inverse(z)
    np.testing.assert_allclose(z_back @ proj, z @ proj, atol=1e-13)


def test_sylvester_defaults(rng):
    layer = Sylvester(4, rng=0)
    assert (layer.m, layer.q, layer.n_reflections) == (4, "householder", 4)
    assert layer.params["vectors"].shape == (4, 4) and layer.params["r_entries"].shape == (6,)
    assert dict(layer.buffers) == {}
    layer = Sylvester(5, m=2, q="permutation", rng=0)
    assert "vectors" not in layer.params and layer.n_reflections is None
    perm = layer.buffers["permutation"]
    np.testing.assert_array_equal(np.sort(perm), np.arange(5))
    again = Sylvester(5, m=2, q="permutation", rng=0).buffers["permutation"]
    np.testing.assert_array_equal(perm, again)
    np.testing.assert_array_equal(
        Sylvester(3, q="permutation", permutation=[2, 1, 0]).buffers["permutation"], [2, 1, 0])


def test_initialisation_is_seeded_and_random():
    for cls in (Planar, Radial, Sylvester):
        a, b, c = cls(3, rng=1), cls(3, rng=np.random.default_rng(1)), cls(3, rng=2)
        for key in a.params:
            np.testing.assert_array_equal(a.params[key], b.params[key])
        assert any(not np.array_equal(a.params[k], c.params[k]) for k in a.params)
        assert all(np.any(v != 0) for v in a.params.values() if v.size)
    assert np.any(Planar(1, rng=0).params["w"] != 0)


# =============================================================== round trips near the boundary
def planar_flat_mask(layer, z):
    k = layer.constrained()
    return np.abs(z @ k["w"] + k["b"]) >= FLAT


@pytest.mark.parametrize("margin", [1e-6, 1e-3, 0.5])
@pytest.mark.parametrize("scale", [1.0, 10.0, 100.0, 1e3])
def test_planar_round_trips_near_the_constraint(margin, scale, rng):
    """``w^T u_hat = -1 + margin``: round trips to RTOL_ROUND_TRIP at ``|z|`` up to 1e3 (outside
    the flat window, see FLAT), and ``x -> z -> x`` everywhere (the inverse is backward stable)."""
    layer = planar_with_margin(4, margin, rng)
    np.testing.assert_allclose(layer.constrained()["one_plus_w_dot_u_hat"], margin, rtol=1e-9)
    z = rng.normal(size=(400, 4)) * scale
    keep = planar_flat_mask(layer, z)
    x, log_det = layer.forward(z)
    z_back, inv_log_det = layer.inverse(x)
    assert rel(z_back[keep], z[keep]) <= RTOL_ROUND_TRIP
    assert np.max(np.abs(log_det + inv_log_det)[keep] / np.maximum(1, np.abs(log_det[keep]))) \
        <= RTOL_ROUND_TRIP
    # x -> z -> x, on random x and on x whose preimage sits on the flat point p = 0
    k = layer.constrained()
    xs = rng.normal(size=(400, 4)) * scale
    flat = rng.normal(size=(100, 4)) * scale
    flat -= ((flat @ k["w"] + k["b"]) / (k["w"] @ k["w"]))[:, None] * k["w"]   # p = 0 (rounded)
    xs = np.concatenate([xs, layer.forward(flat)[0]])
    z_of_x, _ = layer.inverse(xs)
    assert rel(layer.forward(z_of_x)[0], xs) <= RTOL_ROUND_TRIP


def test_planar_flat_spot_error_is_the_conditioning(rng):
    """Inside the flat window the z -> x -> z error is the forward pass's rounding of ``x``
    carried through the inverse's Jacobian, ``|u_hat| h' / D`` times a few roundings of the
    terms of ``w^T x`` (D = 1 + c h', the slope): the solver adds nothing beyond that."""
    layer = planar_with_margin(4, 1e-6, rng)
    k = layer.constrained()
    w, u_hat, b = k["w"], k["u_hat"], k["b"]
    z = rng.normal(size=(2000, 4))
    target = rng.normal(size=2000) * np.logspace(-9, -2, 2000)     # p = w^T z + b, near 0
    z += ((target - b - z @ w) / (w @ w))[:, None] * w
    x, _ = layer.forward(z)
    z_back, _ = layer.inverse(x)
    p = z @ w + b
    slope = np.tanh(p) ** 2 + k["one_plus_w_dot_u_hat"] / np.cosh(p) ** 2
    terms = np.abs(x) @ np.abs(w) + np.abs(z) @ np.abs(w) + abs(b) + 1.0
    bound = 8 * EPS * terms * np.abs(u_hat).max() / slope
    err = np.max(np.abs(z_back - z), axis=1)
    assert (err <= bound).all(), float(np.max(err / bound))
    assert err.max() > 1e3 * EPS      # the window is genuinely ill-conditioned (~1e-10 here)


def sech2(a):
    e = np.exp(-2 * np.abs(a))
    return 4 * e / (1 + e) ** 2


@pytest.mark.parametrize("raw", [8.0, 15.0])
@pytest.mark.parametrize("scale", [1.0, 30.0, 1e3])
def test_sylvester_round_trips_near_the_constraint(raw, scale, rng):
    """``R_ii R~_ii = -tanh(raw)^2`` (``1 + R_ii R~_ii ~ 4 e^-2raw``, down to 4e-13) at ``|z|``
    up to 1e3: the z -> x -> z error is at most COND_ULPS roundings of ``x`` carried through
    ``||J^{-1}||`` (the triangular system compounds the small slopes ``1 + R_ii R~_ii h'``), so
    it meets RTOL_ROUND_TRIP wherever ``||J^{-1}|| <= COND_MAX``; ``x -> z -> x`` everywhere."""
    d, m = 5, 3
    layer = randomize(Sylvester(d, m=m, n_reflections=4, rng=rng), rng, PARAM_SCALE)
    layer.params["unconstrained_r_diag"] = [raw, -raw, raw]
    layer.params["unconstrained_r_tilde_diag"] = [-raw, raw, -raw]
    k = layer.constrained()
    assert (k["one_plus_diag_products"] < 1e-5).all()
    z = rng.normal(size=(400, d)) * scale
    hp = sech2(z @ k["q"] @ k["r_tilde"].T + k["b"])
    jac = np.eye(d) + np.einsum("ij,nj,jk->nik", k["q"] @ k["r"], hp, k["r_tilde"] @ k["q"].T)
    cond = np.linalg.norm(np.linalg.inv(jac), 2, axis=(1, 2))
    x, log_det = layer.forward(z)
    z_back, inv_log_det = layer.inverse(x)
    dz = COND_ULPS * EPS * cond * np.maximum(1, np.abs(x).max(axis=1))   # bound on |z_back - z|
    assert (np.max(np.abs(z_back - z), axis=1) <= dz).all()
    keep = cond <= COND_MAX
    assert keep.sum() > 300
    assert rel(z_back[keep], z[keep]) <= RTOL_ROUND_TRIP
    # the log-dets then differ by at most |dL/dz| dz: dL/da_i = -2 t_i gamma_i h'_i / D_i
    a = z @ k["q"] @ k["r_tilde"].T + k["b"]
    slope = np.tanh(a) ** 2 + k["one_plus_diag_products"] * sech2(a)
    grad = np.linalg.norm(2 * np.abs(np.tanh(a)) / slope, axis=1) * np.linalg.norm(k["r_tilde"], 2)
    gap = np.abs(log_det + inv_log_det)
    assert (gap <= dz * grad + LOG_DET_ULPS * EPS * np.maximum(1, np.abs(log_det))).all()
    xs = np.concatenate([rng.normal(size=(400, d)) * scale, x])
    z_of_x, _ = layer.inverse(xs)
    assert rel(layer.forward(z_of_x)[0], xs) <= RTOL_ROUND_TRIP


@pytest.mark.parametrize("beta_raw", [-14.0, -30.0, 0.0, 30.0])
@pytest.mark.parametrize("scale", [1.0, 30.0, 1e3])
def test_radial_round_trips_near_the_constraint(beta_raw, scale, rng):
    """``alpha + beta = softplus(beta_raw)`` down to 1e-13 (``beta -> -alpha``: the layer
    contracts the neighbourhood of ``z0``): closed-form inverse to round-off at ``|z|`` up to
    1e3 (``r >= FLAT``, where ``x - z0`` keeps its digits) and ``x -> z -> x`` everywhere."""
    d = 3
    layer = randomize(Radial(d, rng=rng), rng, PARAM_SCALE)
    layer.params["beta"] = [beta_raw]
    z = rng.normal(size=(400, d)) * scale
    keep = np.linalg.norm(z - layer.constrained()["z0"], axis=1) >= FLAT
    x, log_det = layer.forward(z)
    z_back, inv_log_det = layer.inverse(x)
    assert rel(z_back[keep], z[keep]) <= RTOL_ROUND_TRIP
    assert np.max(np.abs(log_det + inv_log_det)[keep] / np.maximum(1, np.abs(log_det[keep]))) \
        <= RTOL_ROUND_TRIP
    xs = np.concatenate([rng.normal(size=(400, d)) * scale, x])
    z_of_x, _ = layer.inverse(xs)
    assert rel(layer.forward(z_of_x)[0], xs) <= RTOL_ROUND_TRIP


def test_radial_inverse_root_has_no_cancellation(rng):
    """``r`` from ``r^2 + (S - R) r - R alpha = 0``: the textbook ``(-b + sqrt(b^2 - 4ac)) / 2``
    cancels when ``R << S``; the layer's root keeps full relative accuracy there."""
    layer = Radial(2, rng=rng)
    layer.params["alpha"], layer.params["beta"] = [-20.0], [3.0]   # alpha ~ 2e-9, S ~ 3.05
    layer.params["z0"] = [0.0, 0.0]          # so that z - z0 keeps every digit of r
    k = layer.constrained()
    z0, alpha, s = k["z0"], k["alpha"], k["alpha_plus_beta"]
    r_true = np.logspace(-14, -11, 50)          # R = |x - z0| <= 0.02 << S: relative cond ~1
    direction = np.array([0.6, 0.8])
    # R = r (r + S) / (alpha + r): the image radius of r, evaluated in long double
    L = np.longdouble
    big_r = (r_true.astype(L) * (r_true.astype(L) + L(s)) / (L(alpha) + r_true.astype(L)))
    x = z0 + big_r.astype(float)[:, None] * direction
    z, _ = layer.inverse(x)
    r = np.linalg.norm(z - z0, axis=1)
    assert np.max(np.abs(r - r_true) / r_true) <= 1e-14
    b = s - big_r.astype(float)
    naive = (-b + np.sqrt(b * b + 4 * big_r.astype(float) * alpha)) / 2
    assert np.max(np.abs(naive - r_true) / r_true) > 1e-3


# ================================================================================== kernels
def g_long(v, y, alpha, beta, gamma):
    """``g(v) = (v - y) + alpha tanh(beta v + gamma)`` in long double."""
    L = np.longdouble
    v, y, alpha, beta, gamma = (np.asarray(t, dtype=L) for t in (v, y, alpha, beta, gamma))
    return (v - y) + alpha * np.tanh(beta * v + gamma)


def scalar_scale(v, y, alpha, gamma):
    return np.abs(v) + np.abs(y) + np.abs(alpha) + np.abs(gamma)


def planar_cases(rng, kind, n_sets, per_set):
    """``(y, c, b, delta)`` sets: generic ``c in (-1, 4)``, ``near`` (``1 + c`` down to
    1e-43) and ``flat`` (``y`` from points within 1e-12..1e-1 of the flat point)."""
    for _ in range(n_sets):
        delta = 10 ** rng.uniform(-3, 0.7) if kind == "generic" else 10 ** rng.uniform(-43, -3)
        c, b = delta - 1.0, rng.normal() * 2
        y = rng.normal(size=per_set) * 10 ** rng.uniform(-3, 3, size=per_set)
        if kind == "flat":
            a0 = -b + rng.normal(size=per_set) * 10 ** rng.uniform(-12, -1, size=per_set)
            y = a0 + c * np.tanh(a0 + b)
        yield y, c, b, delta


@pytest.mark.parametrize("kind", ["generic", "near", "flat"])
def test_planar_kernel_parity_and_round_off(kind, rng):
    """Kernel and twin both reach round-off residuals (long double) and agree within them."""
    for y, c, b, delta in planar_cases(rng, kind, n_rows(40, 6), n_rows(500, 50)):
        a_k, a_t = np.empty_like(y), np.empty_like(y)
        planar_inverse(y, np.float64(c), np.float64(b), np.float64(delta), a_k)
        planar_inverse_numpy(y, c, b, delta, a_t)
        for a in (a_k, a_t):
            tol = RESIDUAL_ULPS * EPS * scalar_scale(a, y, c, b)
            resid = np.abs(g_long(a, y, c, 1.0, b)).astype(float)
            assert (resid <= tol).all(), float(np.max(resid / tol))
            assert ((a >= y - abs(c)) & (a <= y + abs(c))).all()
        with np.errstate(over="ignore"):
            slope = np.tanh(a_k + b) ** 2 + delta / np.cosh(a_k + b) ** 2
        bound = PARITY_ULPS * EPS * scalar_scale(a_k, y, c, b) / slope
        assert (np.abs(a_k - a_t) <= bound).all()


@pytest.mark.parametrize("delta", [0.0, 1e-300, 1e-43])
def test_planar_kernel_degenerate_slope(delta):
    """``1 + c`` that is 0 or denormal in float64 (raw ``w^T u`` below ~-745): the slope vanishes
    at the flat point, Newton divides by zero there, the bisection still converges."""
    c, b = delta - 1.0, 0.25
    y = np.array([-b + c * 0.0, -b + 1e-300, -b - 1e-20, -b + 1e-8, 3.0, -1e3])
    for kernel in (planar_inverse, planar_inverse_numpy):
        a = np.empty_like(y)
        kernel(y, np.float64(c), np.float64(b), np.float64(delta), a)
        assert np.isfinite(a).all()
        resid = np.abs(g_long(a, y, c, 1.0, b)).astype(float)
        assert (resid <= RESIDUAL_ULPS * EPS * scalar_scale(a, y, c, b)).all()


def test_planar_kernel_huge_y():
    """``|y|`` so large that ``y +- (|c| + 1)`` rounds to ``y``: the bracket widens until its
    signs hold, and the root is ``y - c sign(.)`` to round-off."""
    y = np.array([1e17, -1e17, 3e300, -3e300])
    for kernel in (planar_inverse, planar_inverse_numpy):
        a = np.empty_like(y)
        kernel(y, np.float64(2.0), np.float64(0.5), np.float64(3.0), a)
        resid = np.abs(g_long(a, y, 2.0, 1.0, 0.5)).astype(float)
        assert (resid <= RESIDUAL_ULPS * EPS * scalar_scale(a, y, 2.0, 0.5)).all()


def sylvester_system(rng, n, m, kind):
    """A random upper-triangular system ``y = v + R tanh(R~ v + b)`` with a known solution."""
    diag_scale = {"generic": 1.0, "near": 15.0}[kind]
    p = rng.normal(size=m) * diag_scale
    if kind == "near":        # opposite signs: R_ii R~_ii close to -1
        q = -np.sign(p) * np.abs(rng.normal(size=m)) * diag_scale
    else:
        q = rng.normal(size=m)
    r = np.triu(rng.normal(size=(m, m)), 1) + np.diag(np.tanh(p))
    rt = np.triu(rng.normal(size=(m, m)), 1) + np.diag(np.tanh(q))
    delta = np.cosh(p + q) / (np.cosh(p) * np.cosh(q))             # 1 + tanh p tanh q
    b = rng.normal(size=m)
    v = rng.normal(size=(n, m)) * 10 ** rng.uniform(-2, 2, size=(n, 1))
    y = v + np.tanh(v @ rt.T + b) @ r.T
    return y, r, rt, b, delta, v


@pytest.mark.parametrize("kind", ["generic", "near"])
def test_sylvester_kernel_parity_and_round_off(kind, rng):
    """Kernel vs twin on triangular systems; each coordinate's scalar root has a round-off
    residual (long double) given the coordinates solved before it; ``a`` and ``tanh(a)`` are
    the values the kernel used."""
    m = 4
    y, r, rt, b, delta, v_true = sylvester_system(rng, n_rows(5000, 300), m, kind)
    outs = {}
    for name, kernel in (("kernel", sylvester_inverse), ("twin", sylvester_inverse_numpy)):
        v, a, t = (np.empty_like(y) for _ in range(3))
        kernel(y, r, rt, b, delta, v, a, t)
        np.testing.assert_allclose(t, np.tanh(a), rtol=2 * EPS, atol=EPS)  # libm vs NumPy tanh
        for i in range(m - 1, -1, -1):
            # coordinate i given the ones solved before it (the sums are rounded in another
            # order here, so their absolute terms join the scale)
            later = slice(i + 1, m)
            y_i = y[:, i] - t[:, later] @ r[i, later]
            c_i = b[i] + v[:, later] @ rt[i, later]
            sums = (np.abs(t[:, later]) @ np.abs(r[i, later])
                    + np.abs(v[:, later]) @ np.abs(rt[i, later]))
            tol = RESIDUAL_ULPS * EPS * (scalar_scale(v[:, i], y[:, i], r[i, i], b[i]) + sums)
            assert (np.abs(a[:, i] - (rt[i, i] * v[:, i] + c_i)) <= tol).all()
            resid = np.abs(g_long(v[:, i], y_i, r[i, i], rt[i, i], c_i)).astype(float)
            assert (resid <= tol).all(), float(np.max(resid / tol))
        outs[name] = v
    # both solve the same system: a backward-stable solution of the whole system
    for v in outs.values():
        recon = v + np.tanh(v @ rt.T + b) @ r.T
        assert rel(recon, y) <= 1e-12
    if kind == "generic":
        assert rel(outs["kernel"], outs["twin"]) <= 1e-11
        assert rel(outs["kernel"], v_true) <= 1e-11


def test_kernels_float32(rng):
    """float32 in, float32 out, float32 round-off residuals; kernel and twin alike."""
    y, r, rt, b, delta, _ = (a.astype(np.float32) for a in sylvester_system(rng, 200, 3, "generic"))
    for kernel in (sylvester_inverse, sylvester_inverse_numpy):
        v, a, t = (np.empty_like(y) for _ in range(3))
        kernel(y, r, rt, b, delta, v, a, t)
        assert v.dtype == np.float32 and np.isfinite(v).all()
        recon = v + np.tanh(v @ rt.T + b) @ r.T
        assert np.max(np.abs(recon - y) / np.maximum(1, np.abs(y))) <= 64 * EPS32
    y = (rng.normal(size=500) * 10).astype(np.float32)
    c, bb, dl = np.float32(-0.9), np.float32(0.3), np.float32(0.1)
    for kernel in (planar_inverse, planar_inverse_numpy):
        a = np.empty_like(y)
        kernel(y, c, bb, dl, a)
        assert a.dtype == np.float32
        resid = np.abs(g_long(a, y, c, 1.0, bb)).astype(float)
        assert (resid <= RESIDUAL_ULPS_32 * EPS32 * scalar_scale(a.astype(float), y, c, bb)).all()


#: The float32 Planar inverse against the exact inverse of the float32 map (below): a few
#: float32 roundings of each term; measured worst 1.2 over 30 seeds x 400 rows.
INVERSE32_ULPS = 4


def test_planar_float32_inverse_solves_the_float32_map():
    """The float32 forward pass computes ``x = z + u_hat32 tanh(w32^T z + b32)`` with the rounded
    coefficients; its scalar equation is ``alpha + c tanh(alpha + b32) = w32^T x`` with
    ``c = w32^T u_hat32``, which differs from ``w^T u_hat`` (float64, then rounded) by up to
    ``eps32 |w| |u_hat|``. The float32 inverse must solve the float map's equation: compared here
    with a float64 bisection of it (same float32 ``y = x @ w32``), ``z`` is within
    ``INVERSE32_ULPS`` float32 roundings of each term, ``|x| + |t| |u_hat| + |u_hat| h' S / g'``
    (``S`` the scale of the equation's terms, ``g' = 1 + c h'`` its slope). Large, nearly
    orthogonal ``w`` and ``u`` with inputs near ``w``'s orthogonal complement make ``c``'s
    rounding visible: solving with the float64 ``c`` is off by ~36 such roundings there."""
    worst = 0.0
    for seed in range(10):
        r = np.random.default_rng(seed)
        layer = Planar(4, rng=r)
        w, u = r.normal(size=4) * 10.0, r.normal(size=4) * 10.0
        u = u - (u @ w) / (w @ w) * w + r.normal() * w / (w @ w)
        layer.params["w"], layer.params["u"] = w, u
        layer.params["b"] = [0.5 * r.normal()]
        v = r.normal(size=(400, 4))
        w_unit = w / np.linalg.norm(w)
        x32 = (v - np.outer(v @ w_unit - 0.1 * r.normal(size=400), w_unit)).astype(np.float32)
        z32, _ = layer.inverse(x32)
        assert z32.dtype == np.float32
        k = layer.constrained()
        w32, u32, b32 = k["w"].astype(np.float32), k["u_hat"].astype(np.float32), np.float32(k["b"])
        y = (x32 @ w32).astype(np.float64)                  # the layer's own float32 product
        c = float(w32.astype(np.float64) @ u32.astype(np.float64))
        b = float(b32)
        lo, hi = y - abs(c) - 1.0, y + abs(c) + 1.0         # g(alpha) = alpha + c tanh(.) - y
        for _ in range(200):
            mid = 0.5 * (lo + hi)
            below = mid + c * np.tanh(mid + b) < y
            lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
        alpha = 0.5 * (lo + hi)
        t = np.tanh(alpha + b)
        hp = 1.0 - t * t
        z = x32.astype(np.float64) - t[:, None] * u32.astype(np.float64)
        terms = np.abs(y) + np.abs(alpha) + abs(c) * np.abs(t) + abs(b)
        scale = (np.abs(x32) + np.abs(t)[:, None] * np.abs(u32)
                 + np.abs(u32) * (hp * terms / np.abs(1.0 + c * hp))[:, None])
        worst = max(worst, float(np.max(np.abs(z32 - z) / (EPS32 * scale))))
    assert worst <= INVERSE32_ULPS, worst


def test_float32_arithmetic_stays_float32():
    """No float64 in the float32 specialisations (a literal 2.0 would promote them): numba's
    inferred types of every variable of fresh, uncached compilations."""
    if PLAIN_PYTHON:
        pytest.skip("plain-Python mode: no numba typing to inspect")
    import numba
    from refflow.kernels import planar as kp

    def typemap(dispatcher):
        (sig,) = dispatcher.signatures
        return {str(t) for t in dispatcher.overloads[sig].type_annotation.typemap.values()}

    y = np.ones(3, np.float32)
    fresh = numba.njit(kp.planar_inverse.py_func)
    fresh(y, np.float32(0.5), np.float32(0.1), np.float32(1.5), np.empty_like(y))
    seen = typemap(fresh)
    ym = np.ones((3, 2), np.float32)
    eye = np.eye(2, dtype=np.float32)
    fresh = numba.njit(kp.sylvester_inverse.py_func)
    fresh(ym, eye, eye, np.zeros(2, np.float32), np.full(2, 2, np.float32),
          *(np.empty_like(ym) for _ in range(3)))
    seen |= typemap(fresh)
    for helper in (kp._solve, kp._residual):
        for sig in helper.nopython_signatures:
            if str(sig.args[0]) == "float32":
                seen |= typemap(numba.njit(sig)(helper.py_func))
                seen.add(str(sig.return_type))
    assert "float32" in seen
    assert not [t for t in seen if "float64" in t], sorted(seen)


def test_njit_flags():
    if PLAIN_PYTHON:
        pytest.skip("plain-Python mode")
    for kernel in (planar_inverse, sylvester_inverse):
        opts = kernel.targetoptions
        assert opts["nogil"] is True and opts["fastmath"] is False
        assert kernel._cache.__class__.__name__ == "FunctionCache"


# ================================================================ extreme raw values: finite
def extreme_layers(rng, trial):
    values = np.array([-50.0, 50.0, 0.0, 1.0])
    planar = Planar(3, rng=trial)
    for key in planar.params:
        planar.params[key] = rng.choice(values, size=planar.params[key].shape)
    if not planar.params["w"].any():
        planar.params["w"] = [50.0, 0.0, 0.0]
    radial = Radial(3, rng=trial)
    for key in radial.params:
        radial.params[key] = rng.choice(values[:3], size=radial.params[key].shape)
    sylv = Sylvester(3, m=2, rng=trial)
    perm = Sylvester(3, q="permutation", rng=trial)
    for layer in (sylv, perm):
        for key in layer.params:
            layer.params[key] = rng.choice(values, size=layer.params[key].shape)
    sylv.params["vectors"] = rng.normal(size=sylv.params["vectors"].shape)
    return planar, radial, sylv, perm


def test_finite_outputs_for_raw_parameters_at_50(rng):
    """Every combination of raw entries in {-50, 0, 1, 50}: forward and inverse give finite
    outputs and log-dets (no ValueError) at points up to 1e3, at 0 and at the flat points.
    (Round trips are not asserted: ``1 + gamma`` as small as 4e-44 makes the map ill-conditioned
    beyond float64 near its flat points; see FLAT.)"""
    z = np.concatenate([rng.normal(size=(30, 3)) * 10.0 ** rng.uniform(-3, 3, size=(30, 1)),
                        np.zeros((1, 3)), [[1e3, -1e3, 1e3]]])
    for trial in range(40):
        for layer in extreme_layers(rng, trial):
            for direction in (layer.forward, layer.inverse):
                out, log_det = direction(z)
                assert np.isfinite(out).all() and np.isfinite(log_det).all(), (layer, trial)
                out2, log_det2 = direction(out)
                assert np.isfinite(out2).all() and np.isfinite(log_det2).all(), (layer, trial)


# ============================================================================ oracle extras
def test_oracle_on_a_chain_and_on_sylvester_m1(rng):
    """A Chain of all three, and Sylvester with ``m = 1`` (no off-diagonal entries: empty
    parameter arrays), through the oracle."""
    chain = Chain([randomize(Planar(3, rng=rng), rng, PARAM_SCALE),
                   randomize(Radial(3, rng=rng), rng, PARAM_SCALE),
                   randomize(Sylvester(3, m=2, rng=rng), rng, PARAM_SCALE),
                   randomize(Sylvester(3, m=1, q="permutation", rng=rng), rng, PARAM_SCALE)])
    single = randomize(Sylvester(3, m=1, rng=rng), rng, PARAM_SCALE)
    assert single.params["r_entries"].shape == (0,)
    for layer in (chain, single):
        z, x = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
        assert_bijector(layer.forward, layer.inverse, z, x=x)
        assert_vjp(layer.forward_vjp, z, layer.params, rng=1)
        assert_vjp(layer.inverse_vjp, x, layer.params, rng=2)


def test_pullback_uses_the_parameters_of_its_pass(rng):
    """A pullback closes over its pass: changing the parameters afterwards changes nothing."""
    for layer in (randomize(Planar(3, rng=rng), rng, PARAM_SCALE),
                  randomize(Radial(3, rng=rng), rng, PARAM_SCALE),
                  randomize(Sylvester(3, m=2, rng=rng), rng, PARAM_SCALE)):
        for name in ("forward_vjp", "inverse_vjp"):
            v = rng.normal(size=(5, 3))
            out, log_det, pullback = getattr(layer, name)(v)
            bar, ld_bar = rng.normal(size=out.shape), rng.normal(size=5)
            first = pullback(bar, ld_bar)
            saved = {k: p.copy() for k, p in layer.params.items()}
            for key in layer.params:
                layer.params[key] = layer.params[key] + 0.1
            second = pullback(bar, ld_bar)
            np.testing.assert_array_equal(first[0], second[0])
            for key in first[1]:
                np.testing.assert_array_equal(first[1][key], second[1][key])
            layer.params.update(saved)


# ============================================================================ save / load
@pytest.mark.parametrize("make", [
    lambda: Planar(3, rng=1),
    lambda: Radial(4, rng=1),
    lambda: Sylvester(5, m=3, n_reflections=2, rng=1),
    lambda: Sylvester(4, rng=1),
    lambda: Sylvester(4, m=2, q="permutation", rng=1),
    lambda: Planar(3, activation="leaky_relu", negative_slope=0.3, rng=1),
    lambda: Radial(4, parameterization="normflows", rng=1),
], ids=["planar", "radial", "sylvester_h", "sylvester_default", "sylvester_t", "planar_leaky",
        "radial_normflows"])
def test_config_rebuilds_the_structure(make, rng):
    layer = randomize(make(), rng, PARAM_SCALE)
    config = json.loads(json.dumps(layer._config()))
    assert "rng" not in config
    other = type(layer)._from_config(config)
    assert type(other) is type(layer)
    for mine, theirs in ((layer.params, other.params), (layer.buffers, other.buffers)):
        assert set(mine) == set(theirs)
        for key in mine:
            assert mine[key].shape == theirs[key].shape and mine[key].dtype == theirs[key].dtype
    other.params.update(layer.params)
    for key, value in layer.buffers.items():
        other.buffers[key][...] = value
    z = rng.normal(size=(6, layer.dim))
    for direction in ("forward", "inverse"):
        np.testing.assert_array_equal(getattr(other, direction)(z)[0],
                                      getattr(layer, direction)(z)[0])


# ============================================================================ errors
def test_planar_zero_w_is_an_error(rng):
    layer = randomize(Planar(3, rng=rng), rng, PARAM_SCALE)
    saved = {k: v.copy() for k, v in layer.params.items()}
    layer.params["w"] = [0.0, 0.0, 0.0]
    for name in ("forward", "inverse", "forward_vjp", "inverse_vjp"):
        with pytest.raises(ValueError, match=r"Planar\.(forward|inverse).*'w'.*zero"):
            getattr(layer, name)(np.ones((2, 3)))
    with pytest.raises(ValueError, match="Planar.*zero"):
        layer.constrained()
    np.testing.assert_array_equal(layer.params["u"], saved["u"])
    # a tiny but nonzero w is fine (|w| is computed without underflow)
    layer.params["w"] = [1e-200, 0.0, 0.0]
    layer.params["u"] = [0.0, 1.0, 0.0]
    layer.params["b"] = [0.5]
    x, log_det = layer.forward(np.ones((2, 3)))
    assert np.isfinite(x).all() and np.isfinite(log_det).all()


def test_sylvester_zero_reflection_vector_is_an_error(rng):
    layer = Sylvester(3, m=2, rng=rng)
    layer.params["vectors"] = np.zeros((2, 3))
    with pytest.raises(ValueError, match=r"Sylvester\.forward: reflection 0 has a zero vector"):
        layer.forward(np.ones((1, 3)))
    with pytest.raises(ValueError, match=r"Sylvester\.inverse: reflection 0"):
        layer.inverse(np.ones((1, 3)))


def test_radial_underflowing_constraint_is_an_error(rng):
    layer = Radial(2, rng=rng)
    layer.params["beta"] = [-800.0]
    with pytest.raises(ValueError, match=r"Radial\.forward: alpha \+ beta = softplus"):
        layer.forward(np.ones((1, 2)))
    layer.params["beta"] = [0.0]
    layer.params["alpha"] = [-800.0]
    with pytest.raises(ValueError, match=r"Radial\.inverse: alpha = softplus"):
        layer.inverse(np.ones((1, 2)))


@pytest.mark.parametrize("make", [lambda: Planar(3, rng=0), lambda: Radial(3, rng=0),
                                  lambda: Sylvester(3, m=2, rng=0)])
@pytest.mark.parametrize("bad, message", [
    (np.ones((2, 4)), "expected input of shape"),
    (np.ones((2, 3, 1)), "expected input of shape"),
    (np.ones(2), "expected input of shape"),
    (np.array([[1.0, np.nan, 0.0]]), "must be finite"),
    (np.array([[1.0, np.inf, 0.0]]), "must be finite"),
    (np.array([["a", "b", "c"]]), "real numeric"),
])
def test_bad_inputs(make, bad, message):
    layer = make()
    name = type(layer).__name__
    for direction in ("forward", "inverse", "forward_vjp", "inverse_vjp"):
        with pytest.raises(ValueError, match=message) as info:
            getattr(layer, direction)(bad)
        assert name in str(info.value)


def test_bad_parameter_values(rng):
    layer = Planar(3, rng=rng)
    with pytest.raises(ValueError, match="shape"):
        layer.params["b"] = [1.0, 2.0]
    with pytest.raises(ValueError, match="NaN"):
        layer.params["w"] = [np.nan, 1.0, 1.0]
    assert np.isfinite(layer.params["w"]).all()


@pytest.mark.parametrize("build, error, message", [
    (lambda: Planar(0), ValueError, "Planar: dim"),
    (lambda: Planar(2.5), TypeError, "Planar: dim"),
    (lambda: Planar(2, rng="seed"), ValueError, "Planar: rng"),
    (lambda: Planar(2, activation="relu"), ValueError, "Planar: activation"),
    (lambda: Planar(2, activation="leaky_relu", negative_slope=1.5), ValueError,
     "Planar: negative_slope"),
    (lambda: Planar(2, activation="leaky_relu", negative_slope=0.0), ValueError,
     "Planar: negative_slope"),
    (lambda: Radial(2, parameterization="zuko"), ValueError, "Radial: parameterization"),
    (lambda: Radial(True), TypeError, "Radial: dim"),
    (lambda: Radial(2, rng=-1), ValueError, "Radial: rng"),
    (lambda: Sylvester(0), ValueError, "Sylvester: dim"),
    (lambda: Sylvester(3, m=4), ValueError, "1 <= m <= dim"),
    (lambda: Sylvester(3, m=0), ValueError, "Sylvester: m"),
    (lambda: Sylvester(3, m=1.5), TypeError, "Sylvester: m"),
    (lambda: Sylvester(3, q="orthogonal"), ValueError, "q must be one of"),
    (lambda: Sylvester(3, q=None), ValueError, "q must be one of"),
    (lambda: Sylvester(3, n_reflections=0), ValueError, "n_reflections"),
    (lambda: Sylvester(3, q="permutation", n_reflections=2), ValueError, "only to q='householder'"),
    (lambda: Sylvester(3, permutation=[0, 1, 2]), ValueError, "only to q='permutation'"),
    (lambda: Sylvester(3, q="permutation", permutation=[0, 0, 1]), ValueError, "duplicates"),
    (lambda: Sylvester(3, q="permutation", permutation=[0, 1]), ValueError, "length 3"),
])
def test_constructor_errors(build, error, message):
    with pytest.raises(error, match=message):
        build()
