"""Linear bijectors: Permute, Reverse, LULinear, Householder.

Paper facts (the permutation convention, Glow's ``W = P L U`` built by hand, orthogonality and
``det H = -1`` of reflections), the error cases, and the oracle (round trips, log-dets vs
``slogdet`` of FD Jacobians, pullbacks vs FD) on random, non-identity parameters.
"""

import numpy as np
import pytest
from scipy.special import expit

from refflow import Householder, LULinear, Permute, Reverse
from refflow.testing import RTOL_ROUND_TRIP, assert_bijector, assert_vjp

from ..helpers import randomize

#: Two float64 evaluations of the same matrix product in different summation orders.
RTOL_MATMUL = 1e-12
#: float32 results against float64 ones: a few float32 ulps (eps32 ~ 1.2e-7) over small dims.
RTOL_FLOAT32 = 1e-5
#: Raw parameters drawn N(0, 0.7^2): clearly non-trivial, well-conditioned triangular factors.
PARAM_SCALE = 0.7

DIM = 5


def _lu_by_hand(layer):
    """``P``, ``L``, ``U`` built entry by entry from the documented layout (no tril_indices)."""
    d = layer.dim
    p = layer.params
    lower, upper = np.eye(d), np.zeros((d, d))
    k = 0
    for i in range(d):
        for j in range(i):  # row-major strictly-lower order
            lower[i, j] = p["lower_entries"][k]
            k += 1
    k = 0
    for i in range(d):
        for j in range(i + 1, d):  # row-major strictly-upper order
            upper[i, j] = p["upper_entries"][k]
            k += 1
    u = p["unconstrained_upper_diag"]
    c = np.exp(u) if layer.upper_diag == "exp" else np.log1p(np.exp(u)) + 1e-3
    upper[np.arange(d), np.arange(d)] = c
    perm = layer.buffers["permutation"]
    pmat = np.zeros((d, d))
    pmat[np.arange(d), perm] = 1.0  # (P v)_i = v_{perm[i]}
    return pmat, lower, upper, c


def _householder_matrix(v):
    return np.eye(v.size) - 2.0 * np.outer(v, v) / (v @ v)


# Factories of randomized (non-identity) layers, for the checks every layer must pass.
FACTORIES = {
    "permute": lambda rng: Permute(DIM, rng=rng),
    "reverse": lambda rng: Reverse(DIM),
    "lu_exp": lambda rng: randomize(LULinear(DIM, permutation="random", rng=rng), rng, PARAM_SCALE),
    "lu_softplus": lambda rng: randomize(
        LULinear(DIM, permutation="random", upper_diag="softplus", rng=rng), rng, PARAM_SCALE),
    "lu_exp_identity_perm": lambda rng: randomize(LULinear(DIM), rng, PARAM_SCALE),
    "householder": lambda rng: Householder(DIM, rng=rng),
    "householder_k2": lambda rng: Householder(DIM, n_reflections=2, rng=rng),
    "householder_k7": lambda rng: Householder(DIM, n_reflections=7, rng=rng),
}


@pytest.fixture(params=sorted(FACTORIES))
def layer(request):
    return FACTORIES[request.param](np.random.default_rng(12345))


@pytest.fixture
def rng():
    return np.random.default_rng(2024)


# ------------------------------------------------------------------------ Permute and Reverse
def test_permute_convention_and_exact_round_trip(rng):
    perm = np.array([3, 0, 4, 1, 2])
    layer = Permute(5, permutation=perm)
    z = rng.standard_normal((7, 5))
    x, log_det = layer.forward(z)
    for i in range(5):
        np.testing.assert_array_equal(x[:, i], z[:, perm[i]])
    np.testing.assert_array_equal(log_det, np.zeros(7))
    z_back, inv_log_det = layer.inverse(x)
    np.testing.assert_array_equal(z_back, z)
    np.testing.assert_array_equal(inv_log_det, np.zeros(7))
    np.testing.assert_array_equal(layer.buffers["permutation"], perm)
    assert layer.buffers["permutation"].dtype == np.int64
    assert dict(layer.params) == {}


def test_permute_random_permutation_is_seeded():
    a = Permute(10, rng=0).buffers["permutation"]
    np.testing.assert_array_equal(a, Permute(10, rng=np.random.default_rng(0)).buffers["permutation"])
    np.testing.assert_array_equal(np.sort(a), np.arange(10))
    assert not np.array_equal(a, Permute(10, rng=1).buffers["permutation"])


def test_permute_buffer_is_owned():
    perm = np.array([1, 0, 2])
    layer = Permute(3, permutation=perm)
    perm[0] = 2
    np.testing.assert_array_equal(layer.buffers["permutation"], [1, 0, 2])


@pytest.mark.parametrize("perm, message", [
    ([0, 1], "length 3"),
    ([0, 1, 2, 3], "length 3"),
    ([[0, 1, 2]], "length 3"),
    ([0, 1, 1], "duplicates"),
    ([0, 1, 3], "0..2"),
    ([-1, 0, 1], "0..2"),
    ([0.0, 1.0, 2.0], "integers"),
    ([0.5, 1, 2], "integers"),
    ([True, False, True], "integers"),
    ("random", "integers"),
])
def test_permute_rejects_invalid_permutations(perm, message):
    with pytest.raises(ValueError, match=message) as info:
        Permute(3, permutation=perm)
    assert "Permute" in str(info.value)


@pytest.mark.parametrize("dim", [0, -1, 2.5, "3", True])
def test_permute_rejects_bad_dim(dim):
    error = ValueError if type(dim) is int else TypeError  # out of range / wrong type
    with pytest.raises(error, match="Permute"):
        Permute(dim)


def test_reverse(rng):
    layer = Reverse(4)
    z = rng.standard_normal((3, 4))
    x, log_det = layer.forward(z)
    np.testing.assert_array_equal(x, z[:, ::-1])
    np.testing.assert_array_equal(layer.inverse(z)[0], z[:, ::-1])  # its own inverse
    np.testing.assert_array_equal(log_det, np.zeros(3))
    np.testing.assert_array_equal(layer.buffers["permutation"], [3, 2, 1, 0])
    assert x.flags.c_contiguous
    with pytest.raises(ValueError, match="Reverse"):
        Reverse(0)


# ---------------------------------------------------------------------------------- LULinear
def test_lu_parameter_layout():
    layer = LULinear(3)
    assert {k: v.shape for k, v in layer.params.items()} == {
        "lower_entries": (3,), "upper_entries": (3,), "unconstrained_upper_diag": (3,),
        "bias": (3,)}
    layer.params["lower_entries"] = [1.0, 2.0, 3.0]
    layer.params["upper_entries"] = [4.0, 5.0, 6.0]
    expected_l = np.array([[1, 0, 0], [1, 1, 0], [2, 3, 1]], dtype=float)
    expected_u = np.array([[1, 4, 5], [0, 1, 6], [0, 0, 1]], dtype=float)
    np.testing.assert_array_equal(layer.weight(), expected_l @ expected_u)


@pytest.mark.parametrize("upper_diag", ["exp", "softplus"])
@pytest.mark.parametrize("permutation", [None, "random", [2, 0, 3, 1]])
def test_lu_weight_is_p_l_u_by_hand(upper_diag, permutation, rng):
    layer = randomize(LULinear(4, permutation=permutation, upper_diag=upper_diag, rng=7), rng,
                      PARAM_SCALE)
    pmat, lower, upper, c = _lu_by_hand(layer)
    weight = pmat @ lower @ upper
    np.testing.assert_allclose(layer.weight(), weight, rtol=RTOL_MATMUL, atol=0)
    z = rng.standard_normal((6, 4))
    x, log_det = layer.forward(z)
    np.testing.assert_allclose(x, z @ weight.T + layer.params["bias"], rtol=RTOL_MATMUL,
                               atol=RTOL_MATMUL)
    np.testing.assert_allclose(log_det, np.full(6, np.log(c).sum()), rtol=RTOL_MATMUL)
    # The analytic log-det is log|det W| (slogdet in the test only).
    np.testing.assert_allclose(log_det, np.linalg.slogdet(weight)[1], rtol=1e-10)
    z_back, inv_log_det = layer.inverse(x)
    np.testing.assert_allclose(z_back, z, rtol=RTOL_ROUND_TRIP, atol=RTOL_ROUND_TRIP)
    np.testing.assert_array_equal(inv_log_det, -log_det)


def test_lu_permutation_option():
    np.testing.assert_array_equal(LULinear(4).buffers["permutation"], np.arange(4))
    a = LULinear(6, permutation="random", rng=3).buffers["permutation"]
    np.testing.assert_array_equal(a, LULinear(6, permutation="random", rng=3).buffers["permutation"])
    np.testing.assert_array_equal(np.sort(a), np.arange(6))
    layer = LULinear(3, permutation=[1, 2, 0])
    np.testing.assert_array_equal(layer.weight(), np.eye(3)[[1, 2, 0]])
    np.testing.assert_array_equal(layer.forward(np.array([[1.0, 2.0, 3.0]]))[0], [[2.0, 3.0, 1.0]])


def test_orthogonal_lu_is_the_matrix_up_to_column_signs():
    """``orthogonal_lu(q)``: the ``LULinear`` whose weight is ``q D`` (``D`` the signs that keep
    ``diag U > 0``), log-det 0 to rounding; negating columns of ``q`` first gives the same
    parameters bit for bit (the LU of ``q D`` is the LU of ``q`` with ``U``'s columns negated)."""
    from refflow.bijectors.linear import orthogonal_lu

    q, _ = np.linalg.qr(np.random.default_rng(4).standard_normal((6, 6)))
    perm, params, signs = orthogonal_lu(q)
    assert set(np.unique(signs)) <= {-1.0, 1.0} and (signs < 0).any()
    layer = LULinear(6, permutation=perm)
    layer.params.update(params)
    # a float64 LU and its product: ~1e-15 apart; 1e-12 leaves room and no more
    np.testing.assert_allclose(layer.weight(), q * signs, rtol=0, atol=1e-12)
    assert abs(np.sum(params["unconstrained_upper_diag"])) < 1e-12
    again = orthogonal_lu(q * signs)
    np.testing.assert_array_equal(again[0], perm)
    assert all(np.array_equal(again[1][k], params[k]) for k in params)
    np.testing.assert_array_equal(again[2], np.ones(6))


@pytest.mark.parametrize("upper_diag", ["exp", "softplus"])
def test_lu_identity_at_init(upper_diag, rng):
    layer = LULinear(DIM, upper_diag=upper_diag)
    np.testing.assert_allclose(layer.weight(), np.eye(DIM), rtol=0, atol=1e-15)
    z = rng.standard_normal((4, DIM))
    for direction in (layer.forward, layer.inverse):
        out, log_det = direction(z)
        np.testing.assert_allclose(out, z, rtol=1e-15, atol=0)
        np.testing.assert_allclose(log_det, np.zeros(4), rtol=0, atol=1e-15)
    if upper_diag == "exp":
        np.testing.assert_array_equal(layer.params["unconstrained_upper_diag"], np.zeros(DIM))
    else:
        np.testing.assert_allclose(layer.params["unconstrained_upper_diag"],
                                   np.log(np.expm1(1 - 1e-3)), rtol=1e-15)
    for key in ("lower_entries", "upper_entries", "bias"):
        np.testing.assert_array_equal(layer.params[key], 0.0)


def test_lu_softplus_diagonal_has_floor_and_every_value_is_valid(rng):
    layer = LULinear(3, upper_diag="softplus")
    layer.params["unconstrained_upper_diag"] = [-800.0, 0.0, 800.0]  # softplus must not overflow
    x, log_det = layer.forward(np.array([[1.0, 1.0, 1.0]]))
    c = np.array([1e-3, np.log(2.0) + 1e-3, 800.0 + 1e-3])
    np.testing.assert_allclose(x, [c], rtol=1e-15)
    np.testing.assert_allclose(log_det, [np.log(c).sum()], rtol=1e-15)
    z = rng.standard_normal((5, 3))
    z_back, _ = layer.inverse(layer.forward(z)[0])
    np.testing.assert_allclose(z_back, z, rtol=RTOL_ROUND_TRIP, atol=RTOL_ROUND_TRIP)


def test_lu_log_det_gradient_of_softplus_diagonal():
    # d/du sum log c(u) = sigmoid(u) / c(u): the constraint's derivative is in the pullback.
    layer = LULinear(2, upper_diag="softplus")
    u = np.array([-1.0, 2.0])
    layer.params["unconstrained_upper_diag"] = u
    _, _, pullback = layer.forward_vjp(np.zeros((3, 2)))
    _, grads = pullback(np.zeros((3, 2)), np.ones(3))
    c = np.logaddexp(0, u) + 1e-3
    np.testing.assert_allclose(grads["unconstrained_upper_diag"], 3 * expit(u) / c, rtol=1e-14)
    _, _, pullback = layer.inverse_vjp(np.zeros((3, 2)))
    _, grads = pullback(np.zeros((3, 2)), np.ones(3))
    np.testing.assert_allclose(grads["unconstrained_upper_diag"], -3 * expit(u) / c, rtol=1e-14)


@pytest.mark.parametrize("u, dtype", [(-800.0, np.float64), (800.0, np.float64),
                                      (100.0, np.float32), (-120.0, np.float32)])
@pytest.mark.parametrize("method", ["forward", "inverse", "forward_vjp", "inverse_vjp"])
def test_lu_exp_diagonal_out_of_range_raises(u, dtype, method):
    # exp(u) under- or overflows in this dtype: a clear error, not a LAPACK one or inf/NaN.
    layer = LULinear(2)
    layer.params["unconstrained_upper_diag"] = [0.0, u]
    with pytest.raises(ValueError, match=rf"LULinear\.(forward|inverse).*index 1.*{np.dtype(dtype)}"):
        getattr(layer, method)(np.ones((2, 2), dtype=dtype))


@pytest.mark.parametrize("kwargs, message", [
    ({"upper_diag": "relu"}, "upper_diag"),
    ({"upper_diag": None}, "upper_diag"),
    ({"permutation": "shuffle"}, "permutation"),
    ({"permutation": [0, 1, 1]}, "duplicates"),
    ({"permutation": [0, 1]}, "length 3"),
    ({"permutation": [0, 1, 5]}, "0..2"),
    ({"permutation": [0.0, 1.0, 2.0]}, "integers"),
    ({"rng": "seed"}, "rng"),
    ({"rng": -1}, "rng"),
])
def test_lu_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message) as info:
        LULinear(3, **kwargs)
    assert "LULinear" in str(info.value)


def test_lu_rejects_bad_dim():
    with pytest.raises(ValueError, match="LULinear"):
        LULinear(0)


def test_lu_dim_one():
    layer = LULinear(1)
    layer.params["unconstrained_upper_diag"] = [np.log(3.0)]
    layer.params["bias"] = [1.0]
    x, log_det = layer.forward(np.array([[2.0]]))
    np.testing.assert_allclose(x, [[7.0]], rtol=1e-15)
    np.testing.assert_allclose(log_det, [np.log(3.0)], rtol=1e-15)
    assert layer.params["lower_entries"].shape == (0,)


# ------------------------------------------------------------------------------- Householder
def test_householder_matrices_orthogonal_with_det_minus_one(rng):
    layer = Householder(DIM, rng=3)
    for v in layer.params["vectors"]:
        h = _householder_matrix(v)
        np.testing.assert_allclose(h @ h.T, np.eye(DIM), rtol=0, atol=1e-14)
        np.testing.assert_allclose(h, h.T, rtol=0, atol=0)
        sign, logabsdet = np.linalg.slogdet(h)
        assert sign == -1.0
        assert abs(logabsdet) < 1e-14


@pytest.mark.parametrize("k", [1, 2, DIM, 7])
def test_householder_forward_is_product_of_reflections(k, rng):
    layer = Householder(DIM, n_reflections=k, rng=5)
    product = np.eye(DIM)
    for v in layer.params["vectors"]:  # H_1 applied first: x = H_k ... H_1 z
        product = _householder_matrix(v) @ product
    z = rng.standard_normal((6, DIM))
    x, log_det = layer.forward(z)
    np.testing.assert_allclose(x, z @ product.T, rtol=RTOL_MATMUL, atol=RTOL_MATMUL)
    np.testing.assert_array_equal(log_det, np.zeros(6))
    z_back, inv_log_det = layer.inverse(x)
    np.testing.assert_allclose(z_back, z, rtol=RTOL_ROUND_TRIP, atol=RTOL_ROUND_TRIP)
    np.testing.assert_array_equal(inv_log_det, np.zeros(6))
    np.testing.assert_allclose(layer.inverse(z)[0], z @ product, rtol=RTOL_MATMUL, atol=RTOL_MATMUL)
    # The whole map is orthogonal with determinant (-1)^k.
    jac = layer.forward(np.eye(DIM))[0].T
    sign, logabsdet = np.linalg.slogdet(jac)
    assert sign == (-1.0) ** k
    assert abs(logabsdet) < 1e-13
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), np.linalg.norm(z, axis=1), rtol=1e-14)


def test_householder_order_matters():
    layer = Householder(2, n_reflections=2)
    layer.params["vectors"] = [[1.0, 0.0], [1.0, 1.0]]  # H_1 flips x_0, H_2 swaps and negates
    x, _ = layer.forward(np.array([[1.0, 2.0]]))
    np.testing.assert_allclose(x, [[-2.0, 1.0]], rtol=1e-15)  # H_2 H_1 z = H_2 [-1, 2]
    z, _ = layer.inverse(np.array([[1.0, 2.0]]))
    np.testing.assert_allclose(z, [[2.0, -1.0]], rtol=1e-15)  # H_1 H_2 x = H_1 [-2, -1]


def test_householder_init_and_arguments():
    layer = Householder(4, rng=0)
    assert layer.params["vectors"].shape == (4, 4)
    np.testing.assert_array_equal(layer.params["vectors"],
                                  np.random.default_rng(0).standard_normal((4, 4)))
    assert Householder(4, n_reflections=2, rng=0).params["vectors"].shape == (2, 4)
    assert not np.array_equal(layer.params["vectors"], Householder(4, rng=1).params["vectors"])
    for bad in (0, -2, 1.5, "2"):
        error = ValueError if type(bad) is int else TypeError  # out of range / wrong type
        with pytest.raises(error, match="Householder.*n_reflections"):
            Householder(4, n_reflections=bad)
    with pytest.raises(ValueError, match="Householder"):
        Householder(0)
    with pytest.raises(ValueError, match="rng"):
        Householder(3, rng="seed")


@pytest.mark.parametrize("method", ["forward", "inverse", "forward_vjp", "inverse_vjp"])
def test_householder_zero_vector_raises_naming_the_reflection(method):
    layer = Householder(3, rng=0)
    vectors = layer.params["vectors"].copy()
    vectors[1] = 0.0
    layer.params["vectors"] = vectors
    with pytest.raises(ValueError, match=r"Householder\.(forward|inverse).*reflection 1"):
        getattr(layer, method)(np.ones((2, 3)))


@pytest.mark.parametrize("scale", [1e-200, 1e-20, 1e20, 1e200])
def test_householder_scale_invariance_even_at_extreme_lengths(scale, rng):
    # v . v would underflow or overflow for these; the map depends only on the direction.
    layer = Householder(DIM, rng=4)
    z = rng.standard_normal((3, DIM))
    x, _, pullback = layer.forward_vjp(z)
    x_bar = rng.standard_normal((3, DIM))
    z_bar, grads = pullback(x_bar, None)
    layer.params["vectors"] = layer.params["vectors"] * scale
    x_s, _, pullback_s = layer.forward_vjp(z)
    z_bar_s, grads_s = pullback_s(x_bar, None)
    np.testing.assert_allclose(x_s, x, rtol=1e-14, atol=1e-14)
    np.testing.assert_allclose(z_bar_s, z_bar, rtol=1e-14, atol=1e-14)
    # v_bar is homogeneous of degree -1 in v.
    np.testing.assert_allclose(grads_s["vectors"] * scale, grads["vectors"], rtol=1e-12, atol=1e-14)


# ------------------------------------------------------------------- checks every layer passes
def test_oracle_round_trips_and_log_dets(layer, rng):
    z = rng.standard_normal((6, DIM))
    assert_bijector(layer.forward, layer.inverse, z)


def test_oracle_forward_pullback(layer, rng):
    assert_vjp(layer.forward_vjp, rng.standard_normal((4, DIM)), layer.params, rng=0)


def test_oracle_inverse_pullback(layer, rng):
    x = layer.forward(rng.standard_normal((4, DIM)))[0]
    assert_vjp(layer.inverse_vjp, x, layer.params, rng=0)


def test_oracle_pullbacks_with_large_parameters(rng):
    # Well away from the identity: the constraint derivatives and all L, U entries matter.
    for layer in (randomize(LULinear(4, permutation="random", rng=1), rng, scale=2.0),
                  randomize(LULinear(4, upper_diag="softplus", rng=1), rng, scale=2.0)):
        z = rng.standard_normal((4, 4))
        assert_bijector(layer.forward, layer.inverse, z)
        assert_vjp(layer.forward_vjp, z, layer.params, rng=1)
        assert_vjp(layer.inverse_vjp, layer.forward(z)[0], layer.params, rng=1)


def test_grads_keys_and_shapes(layer, rng):
    z = rng.standard_normal((3, DIM))
    for vjp, v in ((layer.forward_vjp, z), (layer.inverse_vjp, z)):
        out, log_det, pullback = vjp(v)
        in_bar, grads = pullback(np.ones_like(out), np.ones_like(log_det))
        assert in_bar.shape == v.shape
        assert {k: g.shape for k, g in grads.items()} == {k: p.shape for k, p in layer.params.items()}
        assert all(g.dtype == np.float64 for g in grads.values())


def test_forward_and_forward_vjp_agree(layer, rng):
    z = rng.standard_normal((3, DIM))
    x, log_det = layer.forward(z)
    x2, log_det2, _ = layer.forward_vjp(z)
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(log_det, log_det2)
    z2, inv_log_det = layer.inverse(x)
    z3, inv_log_det2, _ = layer.inverse_vjp(x)
    np.testing.assert_array_equal(z2, z3)
    np.testing.assert_array_equal(inv_log_det, inv_log_det2)


def test_pullback_is_pure(layer, rng):
    """Same result twice, after a parameter update and after the caller changes the arrays."""
    z = rng.standard_normal((3, DIM))
    for vjp in (layer.forward_vjp, layer.inverse_vjp):
        v = z.copy()
        out, log_det, pullback = vjp(v)
        out_bar, log_det_bar = rng.standard_normal(out.shape), rng.standard_normal(3)
        kept = out_bar.copy(), log_det_bar.copy()
        first = pullback(out_bar, log_det_bar)
        for key in layer.params:
            layer.params[key] = layer.params[key] + 0.5
        v += 1.0
        out += 1.0
        second = pullback(out_bar, log_det_bar)
        for key in layer.params:
            layer.params[key] = layer.params[key] - 0.5
        np.testing.assert_array_equal(out_bar, kept[0])
        np.testing.assert_array_equal(log_det_bar, kept[1])
        np.testing.assert_array_equal(first[0], second[0])
        for key in first[1]:
            np.testing.assert_array_equal(first[1][key], second[1][key])


def test_inputs_not_modified_and_outputs_not_aliased(layer, rng):
    z = rng.standard_normal((3, DIM))
    kept = z.copy()
    x, _ = layer.forward(z)
    z_back, _ = layer.inverse(x)
    np.testing.assert_array_equal(z, kept)
    assert not np.shares_memory(x, z) and not np.shares_memory(z_back, x)


def test_float32_in_float32_out(layer, rng):
    z64 = rng.standard_normal((4, DIM))
    z = z64.astype(np.float32)
    x, log_det, pullback = layer.forward_vjp(z)
    assert x.dtype == np.float32 and log_det.dtype == np.float32
    z_bar, grads = pullback(np.ones_like(x), np.ones_like(log_det))
    assert z_bar.dtype == np.float32
    assert all(g.dtype == np.float64 for g in grads.values())
    x64, log_det64 = layer.forward(z.astype(np.float64))
    np.testing.assert_allclose(x, x64, rtol=RTOL_FLOAT32, atol=RTOL_FLOAT32)
    np.testing.assert_allclose(log_det, log_det64, rtol=RTOL_FLOAT32, atol=RTOL_FLOAT32)
    z_back, inv_log_det, pullback = layer.inverse_vjp(x)
    assert z_back.dtype == np.float32 and inv_log_det.dtype == np.float32
    assert pullback(np.ones_like(z_back), np.ones_like(inv_log_det))[0].dtype == np.float32
    np.testing.assert_allclose(z_back, z, rtol=RTOL_FLOAT32, atol=RTOL_FLOAT32)


def test_lu_float32_is_computed_in_float32(rng):
    # Parameters cast to float32 first: the result equals the float32 computation, not a
    # rounded float64 one.
    layer = randomize(LULinear(3, permutation="random", rng=0), rng, PARAM_SCALE)
    z = rng.standard_normal((2, 3)).astype(np.float32)
    x, _ = layer.forward(z)
    w32 = layer.weight(np.float32)
    assert w32.dtype == np.float32
    np.testing.assert_allclose(x, z @ w32.T + layer.params["bias"].astype(np.float32),
                               rtol=1e-6, atol=1e-6)


def test_empty_batch(layer):
    empty = np.zeros((0, DIM))
    for vjp in (layer.forward_vjp, layer.inverse_vjp):
        out, log_det, pullback = vjp(empty)
        assert out.shape == (0, DIM) and log_det.shape == (0,)
        in_bar, grads = pullback(np.zeros((0, DIM)), np.zeros(0))
        assert in_bar.shape == (0, DIM)
        for key, g in grads.items():
            np.testing.assert_array_equal(g, np.zeros(layer.params[key].shape))


def test_single_point(layer, rng):
    z = rng.standard_normal(DIM)
    x, log_det = layer.forward(z)
    assert x.shape == (DIM,) and np.ndim(log_det) == 0
    x_batch, log_det_batch = layer.forward(z[None, :])
    np.testing.assert_array_equal(x, x_batch[0])
    assert log_det == log_det_batch[0]
    z_back, inv_log_det = layer.inverse(x)
    assert z_back.shape == (DIM,) and np.ndim(inv_log_det) == 0
    _, _, pullback = layer.forward_vjp(z)
    z_bar, _ = pullback(np.ones(DIM), 1.0)
    assert z_bar.shape == (DIM,)


def test_wrong_dim_raises(layer):
    with pytest.raises(ValueError, match=type(layer).__name__):
        layer.forward(np.zeros((2, DIM + 1)))



def test_outputs_are_c_contiguous(layer, rng):
    # Containers hand one layer's output to the next layer's private pass, which assumes C order.
    z = rng.standard_normal((4, DIM))
    for vjp in (layer.forward_vjp, layer.inverse_vjp):
        out, log_det, pullback = vjp(z)
        in_bar, _ = pullback(rng.standard_normal((4, DIM)), np.ones(4))
        assert out.flags.c_contiguous and in_bar.flags.c_contiguous
