"""Block neural autoregressive flow (``refflow.bijectors.block_neural``) and its inverse kernel
(``refflow.kernels.bnaf``).

Paper facts: the log-det (log-sum-exp products of the diagonal blocks) equals ``slogdet`` of the
full Jacobian, the Jacobian is block-autoregressive (lower triangular, positive diagonal), the
log-space log-det stays exact where the diagonal products underflow (long-double reference),
the map rebuilt by hand from each peer's formulas, the peers themselves (FlowJAX, Pyro) with
copied parameters, values and autodiff gradients. The numerical inverse: residuals at the
rounding level (long double), kernel vs NumPy twin, float32, ``|z|`` up to 1e3, domain errors.
Planted bugs that the oracle must catch: a wrong implicit-function sign, a non-transposed
triangular solve, a log-det gradient without the network's second derivative. The property
suite (``tests/test_properties.py``) runs the oracle on the registry cases.
"""

import numpy as np
import pytest

from refflow import BlockNeuralAutoregressive, Inverse
from refflow.bijectors import block_neural
from refflow.kernels.bnaf import ACTIVATION_CODES, bnaf_inverse, bnaf_inverse_numpy
from refflow.testing import RTOL_ROUND_TRIP, assert_vjp, check_vjp

EPS = np.finfo(np.float64).eps
LD = np.longdouble

#: Two evaluations of the same map along different paths (log-space chain of the diagonal
#: blocks vs forward-mode products, or the layer vs a hand-written reference): a few ulps per
#: operation over a few layers of moderate weights.
RTOL_SAME_MAP = 1e-10
#: A root is "exact to round-off" when its long-double residual is at most this many ulps of
#: the magnitude of the terms summed to evaluate it (a first-order forward error bound of the
#: network, ``scale`` below). Worst seen 1.4 over 1.2e4 coordinates.
RESIDUAL_ULPS = 4
#: Kernel vs twin: two roots with such residuals differ in ``z`` space (``|J (x_k - x_t)|``) by
#: at most the sum of their residuals. Worst seen 0.63 eps (scale_k + scale_t).
PARITY_ULPS = 2 * RESIDUAL_ULPS
#: float32 roots against the float64 map: float32's unit round-off 6e-8 amplified by the
#: network's conditioning on these moderate cases.
RTOL_FLOAT32 = 2e-5
#: The log-det in long double (a plain product of the diagonal blocks in 64-bit mantissa and
#: 15-bit exponent, where e^-800 is representable) against the float64 log-space chain.
RTOL_LONG_DOUBLE = 1e-12

ACTIVATIONS = list(ACTIVATION_CODES)
CONFIGS = [
    dict(hidden_factors=(3,)),
    dict(hidden_factors=(2, 3), activation="tanh", parameterization="paper", residual="gated"),
    dict(hidden_factors=(), parameterization="pyro"),
    dict(hidden_factors=(2, 2, 2), activation="sigmoid", parameterization="pyro",
         residual="normal"),
    dict(hidden_factors=(3,), activation="elu", residual="normal", context_dim=2),
    dict(hidden_factors=(2,), activation="leaky_relu", parameterization="paper"),
]


def _context(layer, rng, n):
    return None if layer.context_dim is None else rng.normal(size=(n, layer.context_dim))


# ------------------------------------------------------------------ independent references
def _act(name, a, lib=np):
    with np.errstate(over="ignore"):    # 1 / cosh(a)^2 -> 0 for large |a|
        return _act_values(name, a, lib)


def _act_values(name, a, lib):
    s = a.dtype.type(0.01)
    if name == "tanh":
        return lib.tanh(a), 1 / lib.cosh(a) ** 2
    if name == "leaky_tanh":
        return lib.tanh(a) + s * a, 1 / lib.cosh(a) ** 2 + s
    if name == "sigmoid":
        e = 1 / (1 + lib.exp(-a))
        return e, e * (1 - e)
    if name == "elu":
        neg = lib.minimum(a, 0)
        return lib.where(a > 0, a, lib.expm1(neg)), lib.where(a > 0, 1, lib.exp(neg))
    return lib.where(a >= 0, a, s * a), lib.where(a >= 0, 1, s)


def _reference_weights(layer, dtype=np.float64):
    """The peers' formulas, written out: ``W = s(g) v / (||v|| + eps)`` per row."""
    blocks = (1, *layer.hidden_factors, 1)
    diag_map, scale_map, eps = {"flowjax": ("softplus", "softplus", 0.0),
                                "paper": ("exp", "exp", 0.0),
                                "pyro": ("exp", "exp", 1e-8)}[layer.parameterization]
    pos = {"exp": np.exp, "softplus": lambda u: np.log1p(np.exp(u))}
    out = []
    for l in range(len(blocks) - 1):
        u = layer.params[f"w{l}"].astype(dtype)
        v = np.zeros_like(u)
        for r in range(u.shape[0]):
            for c in range(u.shape[1]):
                rb, cb = r // blocks[l + 1], c // blocks[l]
                v[r, c] = pos[diag_map](u[r, c]) if rb == cb else (u[r, c] if rb > cb else 0)
        s = pos[scale_map](layer.params[f"g{l}"].astype(dtype))
        w = s[:, None] * v / (np.sqrt((v ** 2).sum(axis=1)) + eps)[:, None]
        out.append((w, layer.params[f"b{l}"].astype(dtype)))
    return out


def _reference_map(layer, x, context=None, dtype=np.float64, lib=np):
    """``z`` and ``log|det dz/dx|`` as a plain product of the diagonal blocks (no log space)."""
    d = layer.dim
    weights = _reference_weights(layer, dtype)
    blocks = (1, *layer.hidden_factors, 1)
    x = x.astype(dtype)
    h = x
    diag = np.ones((x.shape[0], d, 1, 1), dtype=dtype)
    for l, (w, b) in enumerate(weights):
        w, b = w.astype(dtype), b.astype(dtype)
        a = h @ w.T + b
        if l == 0 and context is not None:
            a = a + context.astype(dtype) @ layer.params["context_weight"].astype(dtype).T
        ko, ki = blocks[l + 1], blocks[l]
        blk = np.stack([w[i * ko:(i + 1) * ko, i * ki:(i + 1) * ki] for i in range(d)])
        diag = np.matmul(blk[None], diag)
        if l < len(weights) - 1:
            h, dh = _act(layer.activation, a, lib)
            diag = dh.reshape(x.shape[0], d, blocks[l + 1], 1) * diag
    f = a
    dfdx = diag[:, :, 0, 0]
    if layer.residual is None:
        z, jii = f, dfdx
    elif layer.residual == "normal":
        z, jii = x + f, 1 + dfdx
    else:
        gate = layer.params["gate"][0].astype(dtype)
        a = 1 / (1 + np.exp(-gate))
        z, jii = a * f + (1 - a) * x, (1 - a) + a * dfdx
    return z, np.log(jii).sum(axis=1)


# ------------------------------------------------------------------------- paper facts
@pytest.mark.parametrize("config", CONFIGS)
def test_log_det_equals_slogdet_of_the_full_jacobian(config):
    layer = BlockNeuralAutoregressive(3, rng=0, **config)
    rng = np.random.default_rng(1)
    x = 1.5 * rng.normal(size=(20, 3))
    c = _context(layer, rng, 20)
    z, log_det = layer.inverse(x, context=c)
    jac = layer.jacobian(x, context=c)
    sign, logabs = np.linalg.slogdet(jac)
    assert np.all(sign > 0)
    np.testing.assert_allclose(log_det, logabs, rtol=RTOL_SAME_MAP, atol=RTOL_SAME_MAP)
    # lower triangular exactly, positive diagonal (block-autoregressive, monotone per coordinate)
    assert np.all(np.triu(jac, 1) == 0)
    assert np.all(np.diagonal(jac, axis1=1, axis2=2) > 0)
    x2, log_det2 = layer.forward(z, context=c)
    np.testing.assert_allclose(log_det2, -log_det, rtol=0, atol=1e-13)


@pytest.mark.parametrize("config", CONFIGS)
def test_the_map_rebuilt_from_the_peers_formulas(config):
    layer = BlockNeuralAutoregressive(3, rng=2, **config)
    rng = np.random.default_rng(3)
    x = 1.5 * rng.normal(size=(10, 3))
    c = _context(layer, rng, 10)
    z, log_det = layer.inverse(x, context=c)
    z_ref, log_det_ref = _reference_map(layer, x, c)
    np.testing.assert_allclose(z, z_ref, rtol=RTOL_SAME_MAP, atol=RTOL_SAME_MAP)
    np.testing.assert_allclose(log_det, log_det_ref, rtol=RTOL_SAME_MAP, atol=RTOL_SAME_MAP)


def test_coordinate_i_depends_on_the_first_i_inputs_only():
    layer = BlockNeuralAutoregressive(4, hidden_factors=(3, 2), rng=4)
    x = np.random.default_rng(5).normal(size=(6, 4))
    z, _ = layer.inverse(x)
    for j in range(4):
        x2 = x.copy()
        x2[:, j] += 0.7
        z2, _ = layer.inverse(x2)
        assert np.array_equal(z2[:, :j], z[:, :j])
        assert np.all(z2[:, j] > z[:, j])          # strictly increasing in its own input


def test_log_det_is_exact_where_the_diagonal_products_underflow():
    """Saturated units (``log tanh'(a) ~ -2|a|``) next to weights spread over e^-760 make the
    shifted products underflow; the entry-by-entry fallback keeps the log-det exact (against a
    long-double product, whose exponent range holds e^-1500)."""
    layer = BlockNeuralAutoregressive(2, hidden_factors=(3, 3), activation="tanh",
                                      parameterization="paper", rng=0)
    # every row weighs the saturated unit by 1 and the others by e^-760
    spread = [[0.0, -760.0, -760.0]] * 3
    w1 = np.zeros((6, 6))
    w1[:3, :3] = spread            # block 0's diagonal block (raw u, v = e^u)
    w1[3:, :3] = 0.1
    w1[3:, 3:] = spread
    layer.params["w1"] = w1
    layer.params["g0"] = np.zeros(6)
    layer.params["g1"] = np.zeros(6)
    # with x_0 = 400: block 0's hidden pre-activations 400, 5, 0.5 (log tanh' -799, -9, -0.3)
    layer.params["b0"] = np.array([0.0, -395.0, -399.5, 0.0, 0.0, 0.0])
    x = np.array([[400.0, -0.3], [400.0, 2.0], [0.5, -0.3]])
    z, log_det = layer.inverse(x)
    assert np.all(np.isfinite(log_det))
    # the plain float64 product underflows to 0 (so this exercises the fallback) ...
    with np.errstate(divide="ignore", under="ignore", over="ignore"):
        _, naive = _reference_map(layer, x)
    assert not np.isfinite(naive[0]) and not np.isfinite(naive[1])
    # ... while the long-double product does not, and agrees
    with np.errstate(under="ignore"):
        _, ref = _reference_map(layer, x, dtype=LD)
    np.testing.assert_allclose(log_det, ref.astype(float), rtol=RTOL_LONG_DOUBLE)
    assert log_det[0] < -700 and log_det[1] < -700
    # the pullback through the fallback rows agrees with finite differences (the numerical
    # direction is ill-posed here: z_0 = tanh-saturated, equal to its supremum in float64)
    assert_vjp(layer.inverse_vjp, x[:2], layer.params, rng=0)


def test_depth_zero_is_a_triangular_linear_map():
    layer = BlockNeuralAutoregressive(3, hidden_factors=(), rng=6)
    w, b = _reference_weights(layer)[0]
    assert np.all(np.triu(w, 1) == 0) and np.all(np.diag(w) > 0)
    x = np.random.default_rng(7).normal(size=(5, 3))
    z, log_det = layer.inverse(x)
    np.testing.assert_allclose(z, x @ w.T + b, rtol=1e-14, atol=1e-14)
    np.testing.assert_allclose(log_det, np.log(np.diag(w)).sum(), rtol=1e-14)


# --------------------------------------------------------------------- numerical inverse
def _forward_error_bound(layer, x, z, context=None):
    """Long-double residual ``|T(x) - z|`` and the magnitude ``scale`` of the terms evaluated
    (first-order forward error bound: ``nu_l = |W_l| mu_{l-1} + |b_l|``,
    ``mu_l = |h_l| + f'(a_l) nu_l``)."""
    st = layer._state(np.dtype(np.float64))
    h, mu = x.astype(LD), np.abs(x)
    for l, lay in enumerate(st["layers"]):
        a = h @ lay["w"].astype(LD).T + lay["b"].astype(LD)
        nu = mu @ np.abs(lay["w"]).T + np.abs(lay["b"])
        if l == 0 and context is not None:
            a = a + context.astype(LD) @ st["context_weight"].astype(LD).T
            nu = nu + np.abs(context) @ np.abs(st["context_weight"]).T
        if l < len(st["layers"]) - 1:
            h, _ = _act(layer.activation, a)
            _, d = _act(layer.activation, a.astype(np.float64))
            mu = np.abs(h.astype(np.float64)) + d * nu
    t = LD(st["r1"]) * x.astype(LD) + LD(st["r2"]) * a
    return (np.abs(t - z.astype(LD))).astype(np.float64), abs(st["r1"]) * np.abs(x) + st["r2"] * nu


def _kernel_args(layer, z, context=None):
    st = layer._state(np.dtype(z.dtype))
    lays = st["layers"]
    w = np.concatenate([lay["w"].ravel() for lay in lays])
    b = np.concatenate([lay["b"] for lay in lays])
    b0 = lays[0]["b"][None] if context is None else lays[0]["b"] + context @ st["context_weight"].T
    widths = np.array([layer.dim] + [lay["w"].shape[0] for lay in lays], dtype=np.int64)
    big = z.dtype.type(np.finfo(z.dtype).max / 4)
    return (w, b, np.ascontiguousarray(b0), widths, ACTIVATION_CODES[layer.activation],
            z.dtype.type(st["r1"]), z.dtype.type(st["r2"]), big)


@pytest.mark.parametrize("seed", range(10))
def test_roots_are_exact_to_round_off_and_kernel_matches_twin(seed):
    rng = np.random.default_rng(seed)
    activation = ACTIVATIONS[seed % 5]
    residual = [None, "normal", "gated"][seed % 3]
    if activation in ("tanh", "sigmoid", "elu") and residual is None:
        residual = "normal"    # an unbounded range, so that every z below is reachable
    layer = BlockNeuralAutoregressive(
        4, hidden_factors=(3, 2), activation=activation, residual=residual,
        parameterization=["flowjax", "paper", "pyro"][seed % 3],
        context_dim=2 if seed % 2 else None, rng=seed)
    z = 3 * rng.normal(size=(200, 4))
    c = _context(layer, rng, 200)
    args = _kernel_args(layer, z, c)
    x_k, x_t = np.empty_like(z), np.empty_like(z)
    s_k, s_t = np.ones(200, dtype=np.int64), np.ones(200, dtype=np.int64)
    bnaf_inverse(z, *args[:2], args[2], *args[3:], x_k, s_k)
    bnaf_inverse_numpy(z, *args[:2], args[2], *args[3:], x_t, s_t)
    assert not s_k.any() and not s_t.any()
    res_k, scale_k = _forward_error_bound(layer, x_k, z, c)
    res_t, scale_t = _forward_error_bound(layer, x_t, z, c)
    assert np.all(res_k <= RESIDUAL_ULPS * EPS * scale_k)
    assert np.all(res_t <= RESIDUAL_ULPS * EPS * scale_t)
    jac = layer.jacobian(x_k, context=c)
    dz = np.abs(np.einsum("nij,nj->ni", jac, x_t - x_k))
    assert np.all(dz <= PARITY_ULPS * EPS * (scale_k + scale_t))
    # the layer's forward is the kernel's root
    x_layer, _ = layer.forward(z, context=c)
    assert np.array_equal(x_layer, x_k)


def test_float32_computes_in_float32():
    layer = BlockNeuralAutoregressive(3, hidden_factors=(4,), rng=8)
    z = np.random.default_rng(9).normal(size=(50, 3))
    x64, ld64 = layer.forward(z)
    x32, ld32 = layer.forward(z.astype(np.float32))
    assert x32.dtype == np.float32 and ld32.dtype == np.float32
    np.testing.assert_allclose(x32, x64, rtol=RTOL_FLOAT32, atol=RTOL_FLOAT32)
    np.testing.assert_allclose(ld32, ld64, rtol=RTOL_FLOAT32, atol=RTOL_FLOAT32)
    # the kernel itself in float32 (its residual at float32's rounding level)
    args = _kernel_args(layer, z.astype(np.float32))
    out = np.empty((50, 3), dtype=np.float32)
    status = np.zeros(50, dtype=np.int64)
    bnaf_inverse(z.astype(np.float32), *args, out, status)
    assert np.array_equal(out, x32)


@pytest.mark.parametrize("scale", [1.0, 30.0, 1e3])
def test_round_trips_up_to_1e3(scale):
    layer = BlockNeuralAutoregressive(3, hidden_factors=(4, 4), rng=10)
    rng = np.random.default_rng(11)
    for v in (scale * rng.normal(size=(40, 3)), np.full((1, 3), scale), np.full((1, 3), -scale)):
        z, ld = layer.inverse(v)
        assert np.isfinite(z).all() and np.isfinite(ld).all()
        x, ld2 = layer.forward(z)
        rel = np.abs(x - v) / np.maximum(1, np.abs(v))
        assert rel.max() <= RTOL_ROUND_TRIP
        np.testing.assert_allclose(ld2, -ld, rtol=RTOL_ROUND_TRIP, atol=RTOL_ROUND_TRIP)
        z2, _ = layer.forward(v)          # the numerical direction from |z| up to 1e3 too
        assert np.isfinite(z2).all()
        back, _ = layer.inverse(z2)
        assert (np.abs(back - v) / np.maximum(1, np.abs(v))).max() <= RTOL_ROUND_TRIP


def test_out_of_range_z_is_a_clear_error_and_changes_nothing():
    layer = BlockNeuralAutoregressive(2, hidden_factors=(2,), activation="tanh", rng=12)
    before = {k: v.copy() for k, v in layer.params.items()}
    x = np.random.default_rng(13).normal(size=(4, 2))
    z, _ = layer.inverse(x)
    assert np.array_equal(layer.forward(z)[0].shape, (4, 2))
    z_bad = z.copy()
    z_bad[2, 1] = 1e6     # a bounded tanh network cannot reach it
    with pytest.raises(ValueError,
                       match=r"BlockNeuralAutoregressive\.forward: z\[2, 1\].*outside the range"):
        layer.forward(z_bad)
    assert all(np.array_equal(before[k], layer.params[k]) for k in before)


@pytest.mark.parametrize("kwargs, match", [
    (dict(hidden_factors=(0,)), "hidden_factors"),
    (dict(hidden_factors=(2.5,)), "hidden_factors"),
    (dict(hidden_factors="8"), "hidden_factors"),
    (dict(activation="relu"), "activation"),
    (dict(parameterization="torch"), "parameterization"),
    (dict(residual="gate"), "residual"),
    (dict(context_dim=0), "context_dim"),
])
def test_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=f"BlockNeuralAutoregressive.*{match}"):
        BlockNeuralAutoregressive(3, **kwargs)


def test_random_initialisation_is_seeded_and_not_the_identity():
    a = BlockNeuralAutoregressive(3, rng=0)
    b = BlockNeuralAutoregressive(3, rng=0)
    assert all(np.array_equal(a.params[k], b.params[k]) for k in a.params)
    x = np.random.default_rng(0).normal(size=(5, 3))
    z, _ = a.inverse(x)
    assert not np.allclose(z, x)
    # FlowJAX's weight normalisation starts every row at s(g_r) = 1 / ||v_r||:
    # ||W_r|| ||v_r|| = 1
    w, _ = _reference_weights(a)[0]
    u = a.params["w0"]
    rows, cols = np.indices(u.shape) // np.array([8, 1])[:, None, None]
    v = np.where(rows == cols, np.log1p(np.exp(u)), np.where(rows > cols, u, 0))
    np.testing.assert_allclose(np.linalg.norm(w, axis=1) * np.linalg.norm(v, axis=1), 1, rtol=1e-14)


# ------------------------------------------------------------------------- planted bugs
def _run_oracle(layer, z):
    return check_vjp(layer.forward_vjp, z, layer.params, rng=0)


def test_oracle_catches_a_wrong_implicit_function_sign(monkeypatch):
    layer = BlockNeuralAutoregressive(3, hidden_factors=(2,), rng=14)
    z = np.random.default_rng(15).normal(size=(3, 3))
    assert _run_oracle(layer, z).ok
    solve = block_neural._solve_transposed_lower
    monkeypatch.setattr(block_neural, "_solve_transposed_lower", lambda j, g: -solve(j, g))
    report = _run_oracle(layer, z)
    assert not report.ok
    assert report.errors["input"] > 1 and report.errors["w0"] > 1


def test_oracle_catches_an_untransposed_triangular_solve(monkeypatch):
    layer = BlockNeuralAutoregressive(3, hidden_factors=(2,), rng=16)
    z = np.random.default_rng(17).normal(size=(3, 3))

    def untransposed(jac, g):
        return np.linalg.solve(jac, g[..., None])[..., 0]

    monkeypatch.setattr(block_neural, "_solve_transposed_lower", untransposed)
    report = _run_oracle(layer, z)
    assert not report.ok and report.errors["input"] > 1e-3


def test_oracle_catches_a_log_det_gradient_without_second_derivatives(monkeypatch):
    layer = BlockNeuralAutoregressive(3, hidden_factors=(2,), activation="tanh",
                                      residual="normal", rng=18)
    x = np.random.default_rng(19).normal(size=(3, 3))
    assert check_vjp(layer.inverse_vjp, x, layer.params, rng=0).ok
    act = block_neural._activation

    def no_curvature(name, a):
        h, d, log_d, _ = act(name, a)
        return h, d, log_d, np.zeros_like(a)

    monkeypatch.setattr(block_neural, "_activation", no_curvature)
    for run in (layer.inverse_vjp, layer.forward_vjp):
        report = check_vjp(run, x, layer.params, rng=0)
        assert not report.ok and report.errors["input"] > 1e-3


# ------------------------------------------------------------------------------- peers
@pytest.fixture
def flowjax_x64():
    jax = pytest.importorskip("jax")
    pytest.importorskip("flowjax")
    with jax.enable_x64(True):
        yield jax


def _from_flowjax(net, dim, depth, block_dim, cond_dim):
    layer = BlockNeuralAutoregressive(dim, hidden_factors=(block_dim,) * depth,
                                      parameterization="flowjax", context_dim=cond_dim)
    for l, (linear, _) in enumerate(net.layers):
        layer.params[f"w{l}"] = np.asarray(linear.weight.weight.args[0])
        layer.params[f"g{l}"] = np.asarray(linear.weight.scale.args[0])[:, 0]
        layer.params[f"b{l}"] = np.asarray(linear.bias)
    if cond_dim is not None:
        layer.params["context_weight"] = np.asarray(net.cond_linear.weight)
    return layer


@pytest.mark.parametrize("depth, block_dim, cond_dim", [(1, 8, None), (2, 3, 2), (0, 1, None)])
def test_flowjax_block_autoregressive_network_values_and_gradients(flowjax_x64, depth, block_dim,
                                                                    cond_dim):
    jax = flowjax_x64
    import equinox as eqx
    import jax.numpy as jnp
    from flowjax.bijections.block_autoregressive_network import BlockAutoregressiveNetwork

    dim = 3
    net = BlockAutoregressiveNetwork(jax.random.key(0), dim=dim, depth=depth, block_dim=block_dim,
                                     cond_dim=cond_dim)
    layer = _from_flowjax(net, dim, depth, block_dim, cond_dim)
    rng = np.random.default_rng(20)
    x = 1.5 * rng.normal(size=(6, dim))
    c = None if cond_dim is None else rng.normal(size=(6, cond_dim))
    cotangent = rng.normal(size=(6, dim))

    @eqx.filter_jit
    def peer(model, xs, cs):
        fn = lambda xi, ci: model.transform_and_log_det(xi, ci)   # noqa: E731
        return jax.vmap(fn)(xs, cs) if cs is not None else jax.vmap(lambda xi: fn(xi, None))(xs)

    z_p, ld_p = peer(net, jnp.asarray(x), None if c is None else jnp.asarray(c))
    z, ld, pullback = layer.inverse_vjp(x, context=c)
    np.testing.assert_allclose(z, np.asarray(z_p), rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(ld, np.asarray(ld_p), rtol=1e-13, atol=1e-13)

    # gradients of <cotangent, z> + sum(log_det) against JAX's autodiff of FlowJAX's layer
    def loss(model, xs):
        zz, ll = peer(model, xs, None if c is None else jnp.asarray(c))
        return jnp.sum(jnp.asarray(cotangent) * zz) + jnp.sum(ll)

    params, static = eqx.partition(net, eqx.is_inexact_array)
    grad = eqx.filter_jit(jax.grad(lambda p, xs: loss(eqx.combine(p, static), xs), argnums=(0, 1)))
    grads_p, x_bar_p = grad(params, jnp.asarray(x))
    out = pullback(cotangent, np.ones(6))
    x_bar, grads = out[0], out[1]
    np.testing.assert_allclose(x_bar, np.asarray(x_bar_p), rtol=1e-11, atol=1e-11)
    peer_grads = _from_flowjax(grads_p, dim, depth, block_dim, cond_dim).params
    for key, g in grads.items():
        np.testing.assert_allclose(g, peer_grads[key], rtol=1e-10, atol=1e-11, err_msg=key)


@pytest.fixture
def torch64():
    torch = pytest.importorskip("torch")
    pytest.importorskip("pyro")
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield torch
    torch.set_default_dtype(old)


@pytest.mark.parametrize("activation, residual, factors", [
    ("tanh", None, [8, 8]), ("ELU", "normal", [2]), ("sigmoid", "gated", [3, 2]),
    ("LeakyReLU", None, [2])])
def test_pyro_block_autoregressive(torch64, activation, residual, factors):
    """Pyro's ``BlockAutoregressive`` maps base to data: ``Inverse(BlockNeuralAutoregressive)``
    with ``parameterization="pyro"`` and ``gate = -gate_pyro``. The map agrees to round-off;
    Pyro's log-det uses ``-0.5 log(||v||^2 + 1e-8)`` where its weights use ``||v|| + 1e-8``
    (and ``log(a + 1e-8)`` terms with a gate), so it differs from its own map's log-det by
    ~1e-8; refflow's equals ``slogdet`` of the autograd Jacobian of Pyro's map."""
    torch = torch64
    from pyro.distributions.transforms import BlockAutoregressive

    torch.manual_seed(0)
    peer = BlockAutoregressive(3, hidden_factors=factors, activation=activation, residual=residual)
    names = {"ELU": "elu", "LeakyReLU": "leaky_relu", "sigmoid": "sigmoid", "tanh": "tanh"}
    layer = BlockNeuralAutoregressive(3, hidden_factors=factors, activation=names[activation],
                                      parameterization="pyro", residual=residual)
    for l, lin in enumerate(peer.layers):
        layer.params[f"w{l}"] = lin._weight.detach().numpy()
        layer.params[f"g{l}"] = lin._diag_weight.detach().numpy()[:, 0]
        layer.params[f"b{l}"] = lin.bias.detach().numpy()
    if residual == "gated":
        layer.params["gate"] = -peer.gate.detach().numpy()
    flow = Inverse(layer)
    x = np.random.default_rng(21).normal(size=(5, 3))
    xt = torch.tensor(x)
    y_p = peer(xt)
    ld_p = peer.log_abs_det_jacobian(xt, y_p)
    y, ld = flow.forward(x)
    np.testing.assert_allclose(y, y_p.detach().numpy(), rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(ld, ld_p.detach().numpy(), rtol=0, atol=1e-6)
    jac = np.stack([torch.autograd.functional.jacobian(peer, xt[i]).numpy() for i in range(5)])
    np.testing.assert_allclose(ld, np.linalg.slogdet(jac)[1], rtol=1e-12, atol=1e-12)
    # gradients of <c, y> through Pyro's map (autograd) and through refflow's pullback
    c = np.random.default_rng(22).normal(size=(5, 3))
    xt.requires_grad_(True)
    (torch.tensor(c) * peer(xt)).sum().backward()
    _, _, pullback = flow.forward_vjp(x)
    x_bar, grads = pullback(c, np.zeros(5))
    np.testing.assert_allclose(x_bar, xt.grad.numpy(), rtol=1e-11, atol=1e-12)
    for l, lin in enumerate(peer.layers):
        np.testing.assert_allclose(grads[f"w{l}"], lin._weight.grad.numpy(), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(grads[f"g{l}"], lin._diag_weight.grad.numpy()[:, 0], rtol=1e-10,
                                   atol=1e-12)
        np.testing.assert_allclose(grads[f"b{l}"], lin.bias.grad.numpy(), rtol=1e-10, atol=1e-12)
    if residual == "gated":
        np.testing.assert_allclose(grads["gate"], -peer.gate.grad.numpy(), rtol=1e-10)


def test_float32_kernel_arithmetic_stays_float32():
    """No float64 in the float32 specialisation (a float literal would promote it): numba's
    inferred types of every variable of fresh, uncached compilations of the kernel and its
    helpers."""
    from refflow.kernels import NUMBA_DISABLED
    from refflow.kernels import bnaf as kb
    if NUMBA_DISABLED:
        pytest.skip("plain-Python mode: no numba typing to inspect")
    numba = pytest.importorskip("numba")

    def typemap(dispatcher):
        (sig,) = dispatcher.signatures
        return {str(t) for t in dispatcher.overloads[sig].type_annotation.typemap.values()}

    layer = BlockNeuralAutoregressive(2, hidden_factors=(2,), activation="tanh", rng=0)
    z = np.array([[0.1, -0.2], [50.0, 0.0]], dtype=np.float32)   # row 1 out of range
    seen = set()
    for name in ACTIVATIONS:
        layer.activation = name
        args = _kernel_args(layer, z)
        fresh = numba.njit(kb.bnaf_inverse.py_func)
        status = np.zeros(2, dtype=np.int64)
        fresh(z, *args, np.empty_like(z), status)
        seen |= typemap(fresh)
    for helper in (kb._activation, kb._block_eval, kb._block_store):
        for sig in helper.nopython_signatures:
            if "float32" in str(sig.args):
                seen |= typemap(numba.njit(sig)(helper.py_func))
                seen.add(str(sig.return_type))
    assert "float32" in seen
    assert not [t for t in seen if "float64" in t], sorted(seen)


def test_a_root_that_float64_cannot_hold_is_refused():
    """``z = tanh(e^50 (x - 1))``: between the floats next to ``x = 1`` the map jumps from
    about -1 to 1, so ``z = 0.5`` has no float64 preimage; the kernel's residual check refuses it
    instead of returning the nearest float (whose image is off by ~0.5)."""
    layer = BlockNeuralAutoregressive(1, hidden_factors=(1,), activation="tanh",
                                      parameterization="paper")
    layer.params["w0"] = np.zeros((1, 1))
    layer.params["g0"] = np.array([50.0])
    layer.params["b0"] = np.array([-np.exp(50.0)])
    layer.params["w1"] = np.zeros((1, 1))
    layer.params["g1"] = np.zeros(1)
    layer.params["b1"] = np.zeros(1)
    x, _ = layer.forward(np.array([[0.0]]))
    assert x[0, 0] == 1.0
    with pytest.raises(ValueError, match=r"forward: z\[0, 0\] = 0\.5 has no preimage in float64"):
        layer.forward(np.array([[0.5]]))
