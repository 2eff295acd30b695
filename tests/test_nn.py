"""refflow.nn: activations, MLP, MADE, ResidualMADE.

Pullbacks against finite differences (the oracle's default tolerance), MADE's autoregressive
structure from finite-difference Jacobians, masks against the paper's definition written out
here independently, dtype handling, initialisation and bad inputs.
"""

import itertools
import math
import warnings

import numpy as np
import pytest
from scipy.special import erf

from refflow.nn import ACTIVATIONS, MADE, MLP, Activation, ResidualMADE, get_activation
from refflow.params import ParamDict
from refflow.testing import RTOL_FD, assert_vjp, jacobian_fd
from .helpers import joined_vjp

#: float32 pass vs float64 pass, normwise: float32 round-off 6e-8, amplified by the sums over a
#: few dozen units per layer and a handful of layers.
RTOL_FLOAT32 = 1e-5
#: A dependency that the masks allow is "present" when some row's FD derivative exceeds this;
#: FD noise on these O(1) networks is ~1e-10, real derivatives are O(1e-2) or more.
PRESENT = 1e-6

ACTIVATION_NAMES = sorted(ACTIVATIONS)
ORDERS = ["natural", "reverse", "random", "explicit"]
RULES = ["cyclic", "equal", "random"]


def _order(name, dim):
    # An explicit permutation that is neither natural nor reversed.
    return np.array([2, 0, 3, 1, 4, 5, 6][:dim]) if name == "explicit" else name


def _normwise(a, b):
    return float(np.max(np.abs(a - b)) / max(1.0, float(np.max(np.abs(b)))))


def _flat(net, context=None):
    """``x -> out.reshape(batch, dim * n_params)`` with the context (if any) held fixed."""
    return lambda x: net(x, context).reshape(x.shape[0], -1)


def _no_warnings():
    """Warnings as errors and floating-point overflow / invalid / divide as exceptions."""
    class _Ctx:
        def __enter__(self):
            self._w = warnings.catch_warnings()
            self._w.__enter__()
            warnings.simplefilter("error")
            self._e = np.errstate(over="raise", invalid="raise", divide="raise")
            self._e.__enter__()

        def __exit__(self, *exc):
            self._e.__exit__(*exc)
            return self._w.__exit__(*exc)
    return _Ctx()


# =============================================================================== activations
_REFERENCE = {  # plain textbook forms, valid on moderate |a|
    "relu": (lambda a: np.where(a > 0, a, 0.0), lambda a: np.where(a > 0, 1.0, 0.0)),
    "tanh": (np.tanh, lambda a: 1.0 / np.cosh(a) ** 2),
    "elu": (lambda a: np.where(a > 0, a, np.exp(a) - 1), lambda a: np.where(a > 0, 1.0, np.exp(a))),
    "softplus": (lambda a: np.log1p(np.exp(a)), lambda a: 1.0 / (1.0 + np.exp(-a))),
    "gelu": (lambda a: 0.5 * a * (1 + erf(a / math.sqrt(2))),
             lambda a: (0.5 * (1 + erf(a / math.sqrt(2)))
                        + a * np.exp(-a * a / 2) / math.sqrt(2 * math.pi))),
}


@pytest.mark.parametrize("name", ACTIVATION_NAMES)
def test_activation_matches_textbook_form(name, rng):
    a = rng.uniform(-6, 6, size=200)
    act = get_activation(name)
    value, deriv = act.value_and_derivative(a)
    f, df = _REFERENCE[name]
    np.testing.assert_allclose(value, f(a), rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(deriv, df(a), rtol=1e-12, atol=1e-15)
    assert np.array_equal(act(a), value) and np.array_equal(act.value(a), value)
    assert np.array_equal(act.derivative(a), deriv)


@pytest.mark.parametrize("name", ACTIVATION_NAMES)
def test_activation_derivative_vs_finite_differences(name, rng):
    a = rng.uniform(-4, 4, size=(50, 3))
    a = a[np.all(np.abs(a) > 1e-3, axis=1)]  # away from the kinks of relu / elu at 0
    act = get_activation(name)
    jac = jacobian_fd(lambda v: act(v), a)                 # (batch, 3, 3), diagonal
    fd = np.einsum("nii->ni", jac)
    assert np.max(np.abs(act.derivative(a) - fd)) <= RTOL_FD


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", ACTIVATION_NAMES)
def test_activation_stable_and_dtype_kept(name, dtype):
    a = np.array([-1e3, -40.0, -1.0, 0.0, 1.0, 40.0, 1e3], dtype=dtype)
    a_copy = a.copy()
    with _no_warnings():
        value, deriv = get_activation(name).value_and_derivative(a)
        value2 = get_activation(name)(a)
    assert value.dtype == dtype and deriv.dtype == dtype and value2.dtype == dtype
    assert np.isfinite(value).all() and np.isfinite(deriv).all()
    assert np.array_equal(a, a_copy)                       # input untouched
    # Limits: identity-like for large positive a, the left asymptote for large negative a.
    assert value[-1] == 1e3 or name == "tanh"
    assert deriv[-1] == 1.0 or name == "tanh"
    expected_left = {"relu": 0.0, "tanh": -1.0, "elu": -1.0, "softplus": 0.0, "gelu": 0.0}
    assert value[0] == expected_left[name]
    assert deriv[0] == 0.0


def test_activation_values_at_zero():
    a = np.zeros(1)
    got = {n: get_activation(n).value_and_derivative(a) for n in ACTIVATION_NAMES}
    assert got["relu"] == (0.0, 0.0) and got["tanh"] == (0.0, 1.0) and got["elu"] == (0.0, 1.0)
    assert got["softplus"][0] == pytest.approx(math.log(2)) and got["softplus"][1] == 0.5
    assert got["gelu"] == (0.0, 0.5)


def test_unknown_activation_lists_names():
    with pytest.raises(ValueError, match=r"unknown activation 'swish'.*'elu'.*'gelu'.*'relu'"):
        get_activation("swish")
    act = get_activation("tanh")
    assert isinstance(act, Activation) and get_activation(act) is act


# ======================================================================================= MLP
@pytest.mark.parametrize("activation", ACTIVATION_NAMES)
def test_mlp_pullback_vs_fd(activation, rng):
    net = MLP(3, 2, hidden=(5, 4), activation=activation, rng=rng)
    h = rng.normal(size=(4, 3))
    report = assert_vjp(net.vjp, h, net.params, rng=1)
    assert set(report.errors) == {"input", "w0", "b0", "w1", "b1", "w2", "b2"}


@pytest.mark.parametrize("hidden", [(), (6,), (3, 4, 5)])
def test_mlp_pullback_depths(hidden, rng):
    net = MLP(2, 3, hidden=hidden, activation="tanh", rng=rng)
    assert_vjp(net.vjp, rng.normal(size=(3, 2)), net.params, rng=2)
    assert len(net.params) == 2 * (len(hidden) + 1)


def test_mlp_forward_by_hand(rng):
    net = MLP(3, 2, hidden=(4, 5), activation="elu", rng=rng)
    h = rng.normal(size=(6, 3))
    p = net.params
    elu = lambda a: np.where(a > 0, a, np.expm1(a))
    expected = elu(elu(h @ p["w0"].T + p["b0"]) @ p["w1"].T + p["b1"]) @ p["w2"].T + p["b2"]
    np.testing.assert_allclose(net(h), expected, rtol=1e-14, atol=1e-14)
    out, _ = net.vjp(h)
    assert np.array_equal(out, net(h))
    assert np.array_equal(net._forward(h), net(h))


def test_mlp_zero_inputs_is_the_bias_path(rng):
    net = MLP(0, 3, hidden=(4,), activation="tanh", rng=rng)
    net.params["b0"] = rng.normal(size=4)          # torch's bound for fan_in 0 is 0
    h = np.zeros((5, 0))
    p = net.params
    expected = np.tanh(p["b0"]) @ p["w1"].T + p["b1"]
    out = net(h)
    assert out.shape == (5, 3)
    np.testing.assert_allclose(out, np.broadcast_to(expected, (5, 3)), rtol=1e-15)
    out, pullback = net.vjp(h)
    h_bar, grads = pullback(np.ones((5, 3)))
    assert h_bar.shape == (5, 0) and grads["w0"].shape == (4, 0)
    assert_vjp(net.vjp, h, net.params, rng=3)
    assert np.all(MLP(0, 2, rng=0).params["b0"] == 0.0)


def test_mlp_float32(rng):
    net = MLP(3, 2, hidden=(16, 16), activation="gelu", rng=rng)
    h = rng.normal(size=(8, 3))
    out64, pb64 = net.vjp(h)
    out32, pb32 = net.vjp(h.astype(np.float32))
    assert out32.dtype == np.float32 and net(h.astype(np.float32)).dtype == np.float32
    assert _normwise(out32, out64) <= RTOL_FLOAT32
    g = rng.normal(size=out64.shape)
    h_bar64, grads64 = pb64(g)
    h_bar32, grads32 = pb32(g.astype(np.float32))
    assert h_bar32.dtype == np.float32 and _normwise(h_bar32, h_bar64) <= RTOL_FLOAT32
    for k in grads64:
        assert grads32[k].dtype == np.float64
        assert _normwise(grads32[k], grads64[k]) <= RTOL_FLOAT32, k


def test_mlp_zero_last_and_init(rng):
    net = MLP(3, 2, hidden=(7, 5), zero_last=True, rng=0)
    assert np.array_equal(net(rng.normal(size=(4, 3))), np.zeros((4, 2)))
    assert np.abs(net.params["w0"]).max() > 0                  # only the last layer is zero
    a, b, c = MLP(3, 2, hidden=(7, 5), rng=5), MLP(3, 2, hidden=(7, 5), rng=5), MLP(3, 2, rng=6)
    assert isinstance(a.params, ParamDict)
    assert all(np.array_equal(a.params[k], b.params[k]) for k in a.params)
    assert not np.array_equal(a.params["w0"], c.params["w0"][:7])
    # torch's nn.Linear bound 1/sqrt(fan_in), for weights and biases; shapes (out, in).
    big = MLP(50, 100, hidden=(200,), rng=0)
    for k, fan_in in [("w0", 50), ("b0", 50), ("w1", 200), ("b1", 200)]:
        v = big.params[k]
        assert v.dtype == np.float64 and np.abs(v).max() <= 1 / math.sqrt(fan_in)
        assert np.abs(v).max() > 0.9 / math.sqrt(fan_in)        # fills the interval
    assert big.params["w0"].shape == (200, 50) and big.params["w1"].shape == (100, 200)


def test_mlp_pullback_independent_of_later_updates_and_inputs(rng):
    net = MLP(3, 2, hidden=(6,), activation="softplus", rng=rng)
    h = rng.normal(size=(4, 3))
    g = rng.normal(size=(4, 2))
    out, pullback = net.vjp(h)
    before = pullback(g)
    h[...] = 0.0                                   # the caller changes their array
    net.params["w0"] = net.params["w0"] + 1.0      # an optimizer step
    net.params["w1"] = net.params["w1"] * 2.0
    after = pullback(g)
    assert np.array_equal(before[0], after[0])
    assert all(np.array_equal(before[1][k], after[1][k]) for k in before[1])


def test_mlp_single_point_and_none_cotangent(rng):
    net = MLP(3, 2, hidden=(4,), rng=rng)
    h = rng.normal(size=3)
    out, pullback = net.vjp(h)
    assert out.shape == (2,) and np.allclose(out, net(h[None])[0], rtol=1e-15)
    h_bar, grads = pullback(np.ones(2))
    assert h_bar.shape == (3,)
    h_bar0, grads0 = pullback()
    assert np.array_equal(h_bar0, np.zeros(3)) and all(not g.any() for g in grads0.values())


def test_mlp_bad_inputs(rng):
    net = MLP(3, 2, hidden=(4,), rng=rng)
    with pytest.raises(ValueError, match=r"MLP.*\(batch, 3\).*dimension 4 does not match 3"):
        net(np.zeros((2, 4)))
    with pytest.raises(ValueError, match="MLP.*3-D"):
        net(np.zeros((2, 3, 1)))
    with pytest.raises(ValueError, match="MLP.vjp.*finite.*1 NaN"):
        net.vjp(np.array([[0.0, np.nan, 1.0]]))
    with pytest.raises(ValueError, match="MLP.*real numeric"):
        net(np.array([["a", "b", "c"]]))
    _, pullback = net.vjp(np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"MLP.vjp pullback.*out_bar of shape \(2, 2\)"):
        pullback(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="MLP.vjp pullback.*finite"):
        pullback(np.full((2, 2), np.inf))
    with pytest.raises(ValueError, match="MLP: unknown activation 'sigmoid'"):
        MLP(3, 2, activation="sigmoid")
    with pytest.raises(ValueError, match="MLP: in_features must be a non-negative integer"):
        MLP(-1, 2)
    with pytest.raises(ValueError, match="MLP: out_features must be a positive integer"):
        MLP(3, 0)
    with pytest.raises(TypeError, match=r"MLP: hidden must be a sequence.*\(64, 64\)"):
        MLP(3, 2, hidden=64)
    with pytest.raises(ValueError, match="MLP: hidden width must be a positive integer"):
        MLP(3, 2, hidden=(4, 0))
    with pytest.raises(ValueError, match="MLP: rng"):
        MLP(3, 2, rng="seed")


def test_mlp_overflow_is_an_error():
    net = MLP(1, 1, hidden=(2,), activation="softplus", rng=0)
    net.params["w0"] = np.full((2, 1), 1e300)
    net.params["w1"] = np.full((1, 2), 1e300)
    with pytest.raises(ValueError, match="MLP.*not finite"):
        net(np.array([[1e10]]))


# ====================================================================================== MADE
def _reference_masks(input_degrees, hidden_degree_list, n_params, context_features):
    """The masks by their definition, element by element (Germain et al., eq. 12-13)."""
    prev = list(input_degrees) + [0] * context_features
    masks = []
    for deg in hidden_degree_list:
        masks.append(np.array([[1.0 if dk >= dj else 0.0 for dj in prev] for dk in deg]))
        prev = list(deg)
    out_deg = [d for d in input_degrees for _ in range(n_params)]
    masks.append(np.array([[1.0 if dk > dj else 0.0 for dj in prev] for dk in out_deg]))
    return masks


def _made_cases():
    for i, (rule, order, ctx) in enumerate(itertools.product(RULES, ORDERS, [0, 2])):
        yield pytest.param(rule, order, ctx, 1 + i % 3, id=f"{rule}-{order}-ctx{ctx}-p{1 + i % 3}")


@pytest.mark.parametrize("rule, order, context_features, n_params", list(_made_cases()))
def test_made_pullback_vs_fd(rule, order, context_features, n_params, rng):
    dim = 4
    made = MADE(dim, hidden=(6, 5), n_params=n_params, order=_order(order, dim),
                hidden_degrees=rule, activation="tanh" if n_params == 2 else "relu",
                context_features=context_features, rng=rng)
    x = rng.normal(size=(3, dim + context_features))
    vjp = made.vjp if context_features == 0 else joined_vjp(made, dim)
    report = assert_vjp(vjp, x, made.params, rng=4)
    assert set(report.errors) == {"input", *made.params}


@pytest.mark.parametrize("activation", ACTIVATION_NAMES)
def test_made_pullback_each_activation(activation, rng):
    made = MADE(3, hidden=(4, 4, 3), n_params=2, order="reverse", activation=activation,
                context_features=1, rng=rng)
    assert_vjp(joined_vjp(made, 3), rng.normal(size=(4, 4)), made.params, rng=5)


def test_made_no_hidden_layers(rng):
    made = MADE(3, hidden=(), n_params=2, context_features=1, rng=rng)
    assert len(made.masks) == 1 and made.masks[0].shape == (6, 4)
    assert_vjp(joined_vjp(made, 3), rng.normal(size=(3, 4)), made.params, rng=6)


@pytest.mark.parametrize("context_features", [0, 2])
@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("rule", RULES)
def test_made_autoregressive_property(rule, order, context_features, rng):
    dim, n_params = 5, 2
    made = MADE(dim, hidden=(7, 9), n_params=n_params, order=_order(order, dim),
                hidden_degrees=rule, activation="tanh", context_features=context_features,
                rng=rng)
    x = rng.normal(size=(16, dim))
    context = rng.normal(size=(16, context_features)) if context_features else None
    jac = jacobian_fd(_flat(made, context), x).reshape(16, dim, n_params, dim)
    deg = made.input_degrees
    allowed = deg[None, :] < deg[:, None]                     # [i, j]: m(j) < m(i)
    forbidden = np.broadcast_to(~allowed[None, :, None, :], jac.shape)
    assert np.all(jac[forbidden] == 0.0)                      # exactly, not approximately
    if rule != "random":  # wide enough deterministic layers carry every allowed dependency
        present = np.abs(jac).max(axis=(0, 2)) > PRESENT      # [i, j]
        assert np.array_equal(present, allowed)


@pytest.mark.parametrize("activation", ["relu", "gelu"])
@pytest.mark.parametrize("rule", ["cyclic", "equal"])
def test_made_allowed_dependencies_present(rule, activation, rng):
    dim = 6
    made = MADE(dim, hidden=(dim - 1, 12), n_params=1, order="random", hidden_degrees=rule,
                activation=activation, rng=rng)                # the narrowest allowed layer
    x = rng.normal(size=(32, dim))
    jac = jacobian_fd(_flat(made), x)
    deg = made.input_degrees
    allowed = deg[None, :] < deg[:, None]
    assert np.array_equal(np.abs(jac).max(axis=0) > PRESENT, allowed)


@pytest.mark.parametrize("rule", ["cyclic", "equal"])
def test_made_context_affects_every_output(rule, rng):
    dim, cf = 4, 3
    made = MADE(dim, hidden=(dim, 8), n_params=2, order="reverse", hidden_degrees=rule,
                activation="tanh", context_features=cf, rng=rng)
    x = rng.normal(size=(8, dim))
    c = rng.normal(size=(8, cf))
    jac_c = jacobian_fd(lambda cc: made(x, cc).reshape(8, -1), c)      # (8, dim*2, cf)
    assert np.all(np.abs(jac_c).max(axis=(0, 2)) > PRESENT)
    # Including the first input in the order (degree 1), which depends on no input at all.
    first = int(np.argmin(made.input_degrees))
    jac_x = jacobian_fd(lambda xx: made(xx, c).reshape(8, dim, 2)[:, first], x)
    assert np.all(jac_x == 0.0)


def test_made_dim_one(rng):
    made = MADE(1, hidden=(3, 3), n_params=2, rng=rng)
    assert all(np.array_equal(d, np.ones(3)) for d in made.hidden_degree_list)
    out = made(rng.normal(size=(5, 1)))
    assert np.array_equal(out, np.broadcast_to(made.params["b2"].reshape(1, 1, 2), (5, 1, 2)))
    cond = MADE(1, hidden=(3,), n_params=2, context_features=2, activation="tanh", rng=rng)
    assert np.array_equal(cond.hidden_degree_list[0], np.zeros(3))
    x, c = rng.normal(size=(4, 1)), rng.normal(size=(4, 2))
    jac_x = jacobian_fd(lambda xx: cond(xx, c).reshape(4, -1), x)
    jac_c = jacobian_fd(lambda cc: cond(x, cc).reshape(4, -1), c)
    assert np.all(jac_x == 0.0) and np.all(np.abs(jac_c).max(axis=(0, 2)) > PRESENT)
    assert_vjp(joined_vjp(cond, 1), np.hstack([x, c]), cond.params, rng=7)


@pytest.mark.parametrize("context_features", [0, 2])
@pytest.mark.parametrize("rule", RULES)
def test_made_masks_match_definition(rule, context_features, rng):
    dim, n_params = 4, 3
    made = MADE(dim, hidden=(5, 6), n_params=n_params, order="random", hidden_degrees=rule,
                context_features=context_features, rng=rng)
    ref = _reference_masks(made.input_degrees, made.hidden_degree_list, n_params,
                           context_features)
    assert len(made.masks) == len(ref) == 3
    for k, (m, r) in enumerate(zip(made.masks, ref)):
        assert m.dtype == np.float64 and m.shape == made.params[f"w{k}"].shape
        assert np.array_equal(m, r)
        assert np.all(made.params[f"w{k}"][m == 0] == 0.0)         # stored masked entries are 0
        assert np.any(made.params[f"w{k}"][m == 1] != 0.0)
    low = 0 if context_features else 1
    for deg in made.hidden_degree_list:
        assert deg.dtype == np.int64 and deg.min() >= low and deg.max() <= dim - 1
    assert made.masks[0][:, dim:].all() if context_features else True  # context: degree 0


def test_made_degree_rules_values():
    # nflows' cyclic rule and TFP's 'equal' rule, written out for dim 5, width 6.
    cyc = MADE(5, hidden=(6,), hidden_degrees="cyclic", rng=0).hidden_degree_list[0]
    eq = MADE(5, hidden=(6,), hidden_degrees="equal", rng=0).hidden_degree_list[0]
    assert cyc.tolist() == [1, 2, 3, 4, 1, 2]
    assert eq.tolist() == [1, 2, 2, 3, 3, 4]        # ceil(k * 4 / 7), k = 1..6
    assert MADE(5, hidden=(4,), hidden_degrees="equal", rng=0).hidden_degree_list[0].tolist() \
        == [1, 2, 3, 4]
    # With context, degree 0 joins (units that see only the context).
    ccyc = MADE(3, hidden=(4,), context_features=1, rng=0).hidden_degree_list[0]
    ceq = MADE(3, hidden=(4,), hidden_degrees="equal", context_features=1,
               rng=0).hidden_degree_list[0]
    assert ccyc.tolist() == [0, 1, 2, 0] and ceq.tolist() == [0, 1, 1, 2]
    # Germain's random rule: each layer's degrees are at least the previous layer's minimum.
    made = MADE(6, hidden=(20, 20, 20), hidden_degrees="random", rng=3)
    prev_min = 1
    for deg in made.hidden_degree_list:
        assert deg.min() >= prev_min and deg.max() <= 5
        prev_min = deg.min()
    assert len(np.unique(made.hidden_degree_list[0])) > 1


def test_made_orders():
    assert MADE(4, hidden=(3,), order="natural", rng=0).input_degrees.tolist() == [1, 2, 3, 4]
    assert MADE(4, hidden=(3,), order="reverse", rng=0).input_degrees.tolist() == [4, 3, 2, 1]
    made = MADE(4, hidden=(3,), order=[2, 0, 3, 1], rng=0)
    assert made.order.tolist() == [2, 0, 3, 1] and made.order.dtype == np.int64
    assert made.input_degrees.tolist() == [3, 1, 4, 2]
    r1, r2 = MADE(7, hidden=(8,), order="random", rng=4), MADE(7, hidden=(8,), order="random",
                                                                rng=4)
    assert sorted(r1.order.tolist()) == list(range(7))
    assert np.array_equal(r1.order, r2.order)
    assert any(not np.array_equal(MADE(7, hidden=(8,), order="random", rng=s).order, r1.order)
               for s in range(5, 10))


def test_made_masked_entries_get_zero_gradient(rng):
    made = MADE(4, hidden=(5, 5), n_params=2, context_features=1, activation="tanh", rng=rng)
    for k, m in enumerate(made.masks):           # as if an optimizer wrote into masked entries
        w = made.params[f"w{k}"]
        made.params[f"w{k}"] = np.where(m == 0, 7.0, w)
    x, c = rng.normal(size=(6, 4)), rng.normal(size=(6, 1))
    out, pullback = made.vjp(x, c)
    _, grads, _ = pullback(rng.normal(size=out.shape))
    for k, m in enumerate(made.masks):
        g = grads[f"w{k}"]
        assert np.all(g[m == 0] == 0.0) and np.all(g[m == 1] != 0.0)
    # and the written values have no effect on the output: the pass uses W * M
    clean = MADE(4, hidden=(5, 5), n_params=2, context_features=1, activation="tanh", rng=0)
    clean.params.update({k: v * (clean.masks[int(k[1:])] if k[0] == "w" else 1)
                         for k, v in made.params.items()})
    np.testing.assert_array_equal(clean(x, c), out)


def test_made_float32(rng):
    made = MADE(5, hidden=(32, 32), n_params=3, context_features=2, activation="elu", rng=rng)
    x, c = rng.normal(size=(10, 5)), rng.normal(size=(10, 2))
    out64, pb64 = made.vjp(x, c)
    out32, pb32 = made.vjp(x.astype(np.float32), c)               # context cast to x's dtype
    assert out32.dtype == np.float32 and made(x.astype(np.float32), c).dtype == np.float32
    assert _normwise(out32, out64) <= RTOL_FLOAT32
    g = rng.normal(size=out64.shape)
    x64, gr64, c64 = pb64(g)
    x32, gr32, c32 = pb32(g)
    assert x32.dtype == np.float32 and c32.dtype == np.float32
    assert _normwise(x32, x64) <= RTOL_FLOAT32 and _normwise(c32, c64) <= RTOL_FLOAT32
    for k in gr64:
        assert gr32[k].dtype == np.float64 and _normwise(gr32[k], gr64[k]) <= RTOL_FLOAT32
        assert np.all(gr32[k][made.masks[int(k[1:])] == 0] == 0) if k[0] == "w" else True
    assert made.masks[0].dtype == np.float64               # the float32 masks are a cache


def test_made_zero_last_and_seeded_init(rng):
    made = MADE(4, hidden=(5,), zero_last=True, context_features=2, rng=1)
    x, c = rng.normal(size=(3, 4)), rng.normal(size=(3, 2))
    assert np.array_equal(made(x, c), np.zeros((3, 4, 2)))
    kw = dict(hidden=(6, 6), order="random", hidden_degrees="random", rng=11)
    a, b = MADE(5, **kw), MADE(5, **kw)
    assert all(np.array_equal(a.params[k], b.params[k]) for k in a.params)
    assert all(np.array_equal(m, n) for m, n in zip(a.masks, b.masks))
    assert np.array_equal(a.order, b.order)
    assert a.params["w0"].shape == (6, 5) and a.params["w2"].shape == (10, 6)
    kw["rng"] = 12
    c2 = MADE(5, **kw)
    assert not np.array_equal(a.params["b0"], c2.params["b0"])
    # the generator is advanced, not copied: two networks from one generator differ
    g = np.random.default_rng(0)
    assert not np.array_equal(MADE(3, hidden=(4,), rng=g).params["b0"],
                              MADE(3, hidden=(4,), rng=g).params["b0"])


def test_made_pullback_repeatable_and_isolated(rng):
    made = MADE(4, hidden=(6,), n_params=2, context_features=1, activation="gelu", rng=rng)
    x, c = rng.normal(size=(5, 4)), rng.normal(size=(5, 1))
    out, pullback = made._vjp(x, c)          # the private pass, as a MAF layer calls it
    assert np.array_equal(made._forward(x, c), out)
    g = rng.normal(size=(5, 4, 2))
    g_copy = g.copy()
    r0 = pullback(g)
    for other in rng.normal(size=(4, 5, 4, 2)):    # called many times, as MAF sampling does
        pullback(other)
    made.params["w0"] = made.params["w0"] * 3.0    # an optimizer step after the pass
    made.params["b1"] = made.params["b1"] + 1.0
    r1 = pullback(g)
    assert np.array_equal(g, g_copy)
    assert np.array_equal(r0[0], r1[0]) and np.array_equal(r0[2], r1[2])
    assert list(r0[1]) == list(made.params)
    assert all(np.array_equal(r0[1][k], r1[1][k]) for k in r0[1])
    assert not np.array_equal(made._forward(x, c), out)      # the weights did change
    zero = pullback(np.zeros((5, 4, 2)))
    assert not zero[0].any() and not zero[2].any() and not any(v.any() for v in zero[1].values())


def test_made_single_and_shared_context(rng):
    made = MADE(3, hidden=(4,), n_params=2, context_features=2, activation="tanh", rng=rng)
    x, c = rng.normal(size=(5, 3)), rng.normal(size=2)
    out, pullback = made.vjp(x, c)
    out_rep, pullback_rep = made.vjp(x, np.tile(c, (5, 1)))
    assert np.array_equal(out, out_rep)
    g = rng.normal(size=out.shape)
    x_bar, _, c_bar = pullback(g)
    _, _, c_bar_rep = pullback_rep(g)
    assert c_bar.shape == (2,) and np.allclose(c_bar, c_bar_rep.sum(axis=0), rtol=1e-14)
    one, pb1 = made.vjp(x[0], c)
    assert one.shape == (3, 2) and np.allclose(one, out[0], rtol=1e-15)
    xb, _, cb = pb1(g[0])
    assert xb.shape == (3,) and cb.shape == (2,)


def test_made_bad_inputs(rng):
    with pytest.raises(ValueError, match=r"MADE: order must be a permutation of 0..3; "
                                         r"repeated \[1\], missing \[3\]"):
        MADE(4, hidden=(4,), order=[0, 1, 1, 2])
    with pytest.raises(ValueError, match="MADE: order must have length dim = 4"):
        MADE(4, hidden=(4,), order=[0, 1, 2])
    with pytest.raises(ValueError, match="MADE: order must be one of.*integer"):
        MADE(3, hidden=(4,), order=np.array([0.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match="MADE: unknown order 'sideways'"):
        MADE(3, hidden=(4,), order="sideways")
    with pytest.raises(ValueError, match="MADE: unknown hidden_degrees rule 'spread'"):
        MADE(3, hidden=(4,), hidden_degrees="spread")
    for rule in ("cyclic", "equal"):
        with pytest.raises(ValueError, match=rf"MADE: hidden layer 1 has width 3.*'{rule}'"
                                             rf".*at least dim - 1 = 4"):
            MADE(5, hidden=(8, 3), hidden_degrees=rule)
        with pytest.raises(ValueError, match="MADE: hidden layer 0 has width 4.* = 5 units"):
            MADE(5, hidden=(4,), hidden_degrees=rule, context_features=1)
    MADE(5, hidden=(2, 1), hidden_degrees="random", rng=0)        # any width is allowed
    with pytest.raises(ValueError, match="MADE: unknown activation"):
        MADE(3, hidden=(4,), activation="swish")
    with pytest.raises(ValueError, match="MADE: n_params must be a positive integer"):
        MADE(3, hidden=(4,), n_params=0)
    with pytest.raises(ValueError, match="MADE: context_features must be a non-negative"):
        MADE(3, hidden=(4,), context_features=-2)

    made = MADE(3, hidden=(4,), rng=0)
    with pytest.raises(ValueError, match=r"MADE: expected x of shape \(batch, 3\)"):
        made(np.zeros((2, 4)))
    with pytest.raises(ValueError, match="MADE.vjp: x must be finite"):
        made.vjp(np.array([[0.0, np.nan, 1.0]]))
    with pytest.raises(ValueError, match="MADE: this MADE has no context"):
        made(np.zeros((2, 3)), np.zeros((2, 1)))
    _, pullback = made.vjp(np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"MADE.vjp pullback: expected out_bar of shape "
                                         r"\(2, 3, 2\)"):
        pullback(np.zeros((2, 6)))

    cond = MADE(3, hidden=(4,), context_features=2, rng=0)
    with pytest.raises(ValueError, match=r"MADE: this MADE is conditional.*\(batch, 2\)"):
        cond(np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"MADE.vjp: expected context of shape \(batch, 2\)"):
        cond.vjp(np.zeros((2, 3)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="MADE: context has 3 rows but x has 2"):
        cond(np.zeros((2, 3)), np.zeros((3, 2)))
    with pytest.raises(ValueError, match="MADE: context must be finite"):
        cond(np.zeros((2, 3)), np.array([[0.0, np.inf], [0.0, 0.0]]))


def test_made_attributes_read_only():
    made = MADE(3, hidden=(4,), rng=0)
    for arr in (made.order, made.input_degrees, made.masks[0], made.hidden_degree_list[0]):
        with pytest.raises(ValueError):
            arr[0] = 5
    assert made.dim == 3 and made.n_params == 2 and made.hidden == (4,)
    assert made.context_features == 0 and made.activation == "relu"


# ============================================================================== ResidualMADE
@pytest.mark.parametrize("n_blocks", [0, 1, 2])
@pytest.mark.parametrize("context_features", [0, 2])
@pytest.mark.parametrize("order", ORDERS)
def test_residual_made_pullback_vs_fd(order, context_features, n_blocks, rng):
    dim = 4
    net = ResidualMADE(dim, hidden_features=6, n_blocks=n_blocks, n_params=1 + n_blocks,
                       order=_order(order, dim), activation="tanh" if n_blocks != 1 else "relu",
                       context_features=context_features, rng=rng)
    for key in net.params:   # the 1e-3 init makes the blocks nearly invisible; test real ones
        if key.endswith("w1") or key.endswith("b1"):
            net.params[key] = net.params[key] * 300.0
    x = rng.normal(size=(3, dim + context_features))
    vjp = net.vjp if context_features == 0 else joined_vjp(net, dim)
    report = assert_vjp(vjp, x, net.params, rng=8)
    assert set(report.errors) == {"input", *net.params}


@pytest.mark.parametrize("activation", ACTIVATION_NAMES)
def test_residual_made_pullback_each_activation(activation, rng):
    net = ResidualMADE(3, hidden_features=5, n_blocks=2, context_features=1,
                       activation=activation, rng=rng)
    for j in range(2):
        net.params[f"blocks.{j}.w1"] = rng.uniform(-0.5, 0.5, size=(5, 5)) * net.masks[2 + 2 * j]
    assert_vjp(joined_vjp(net, 3), rng.normal(size=(4, 4)), net.params, rng=9)


def test_residual_made_forward_by_hand(rng):
    net = ResidualMADE(3, hidden_features=4, n_blocks=1, n_params=2, activation="tanh",
                       context_features=1, rng=rng)
    p, m = net.params, net.masks
    x, c = rng.normal(size=(5, 3)), rng.normal(size=(5, 1))
    h = np.hstack([x, c]) @ (p["w0"] * m[0]).T + p["b0"]
    t = np.tanh(h) @ (p["blocks.0.w0"] * m[1]).T + p["blocks.0.b0"]
    h = h + np.tanh(t) @ (p["blocks.0.w1"] * m[2]).T + p["blocks.0.b1"]
    expected = (h @ (p["w_out"] * m[3]).T + p["b_out"]).reshape(5, 3, 2)
    np.testing.assert_allclose(net(x, c), expected, rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("context_features", [0, 2])
@pytest.mark.parametrize("order", ORDERS)
def test_residual_made_autoregressive_property(order, context_features, rng):
    dim = 5
    net = ResidualMADE(dim, hidden_features=8, n_blocks=2, n_params=2,
                       order=_order(order, dim), activation="tanh",
                       context_features=context_features, rng=rng)
    for key in net.params:
        if key.endswith("w1"):
            net.params[key] = net.params[key] * 300.0
    x = rng.normal(size=(16, dim))
    c = rng.normal(size=(16, context_features)) if context_features else None
    jac = jacobian_fd(_flat(net, c), x).reshape(16, dim, 2, dim)
    deg = net.input_degrees
    allowed = deg[None, :] < deg[:, None]
    assert np.all(jac[np.broadcast_to(~allowed[None, :, None, :], jac.shape)] == 0.0)
    assert np.array_equal(np.abs(jac).max(axis=(0, 2)) > PRESENT, allowed)
    if context_features:
        jac_c = jacobian_fd(lambda cc: net(x, cc).reshape(16, -1), c)
        assert np.all(np.abs(jac_c).max(axis=(0, 2)) > PRESENT)


def test_residual_made_structure_and_init(rng):
    net = ResidualMADE(4, hidden_features=6, n_blocks=2, n_params=3, context_features=1,
                       rng=0)
    assert list(net.params) == ["w0", "b0", "blocks.0.w0", "blocks.0.b0", "blocks.0.w1",
                                "blocks.0.b1", "blocks.1.w0", "blocks.1.b0", "blocks.1.w1",
                                "blocks.1.b1", "w_out", "b_out"]
    assert net.params["w0"].shape == (6, 5) and net.params["w_out"].shape == (12, 6)
    deg = net.hidden_degree_list[0]
    assert deg.tolist() == [0, 1, 2, 3, 0, 1]                    # cyclic, with context
    assert len(net.hidden_degree_list) == 5
    ref = _reference_masks(net.input_degrees, [deg], 3, 1)
    hh = (deg[:, None] >= deg[None, :]).astype(float)
    expected = [ref[0], hh, hh, hh, hh, ref[1]]
    w_keys = [k for k in net.params if k.rsplit(".", 1)[-1][0] == "w"]
    for key, mask, exp in zip(w_keys, net.masks, expected, strict=True):
        assert np.array_equal(mask, exp) and mask.shape == net.params[key].shape
        assert np.all(net.params[key][mask == 0] == 0.0)
    for j in range(2):
        for k in (f"blocks.{j}.w1", f"blocks.{j}.b1"):
            assert 0 < np.abs(net.params[k]).max() <= 1e-3       # nflows' near-identity init
        assert np.abs(net.params[f"blocks.{j}.w0"]).max() > 1e-2
    a = ResidualMADE(4, hidden_features=6, order="random", rng=3)
    b = ResidualMADE(4, hidden_features=6, order="random", rng=3)
    assert all(np.array_equal(a.params[k], b.params[k]) for k in a.params)
    assert np.array_equal(a.order, b.order)
    z = ResidualMADE(4, hidden_features=6, zero_last=True, rng=3)
    assert np.array_equal(z(rng.normal(size=(2, 4))), np.zeros((2, 4, 2)))


def test_residual_made_float32_and_masked_grads(rng):
    net = ResidualMADE(5, hidden_features=16, n_blocks=2, n_params=2, context_features=2,
                       activation="softplus", rng=rng)
    x, c = rng.normal(size=(7, 5)), rng.normal(size=(7, 2))
    out64, pb64 = net.vjp(x, c)
    out32, pb32 = net.vjp(x.astype(np.float32), c.astype(np.float32))
    assert out32.dtype == np.float32 and _normwise(out32, out64) <= RTOL_FLOAT32
    g = rng.normal(size=out64.shape)
    x64, gr64, c64 = pb64(g)
    x32, gr32, c32 = pb32(g)
    assert _normwise(x32, x64) <= RTOL_FLOAT32 and _normwise(c32, c64) <= RTOL_FLOAT32
    w_keys = [k for k in net.params if k.rsplit(".", 1)[-1][0] == "w"]
    for key, mask in zip(w_keys, net.masks):
        assert gr32[key].dtype == np.float64
        assert _normwise(gr32[key], gr64[key]) <= RTOL_FLOAT32
        assert np.all(gr64[key][mask == 0] == 0.0) and np.any(gr64[key][mask == 1] != 0.0)


def test_residual_made_bad_inputs():
    with pytest.raises(ValueError, match=r"ResidualMADE: hidden layer 0 has width 3.*= 4 units"):
        ResidualMADE(5, hidden_features=3)
    with pytest.raises(ValueError, match=r"ResidualMADE: hidden layer 0 has width 4.*= 5 units"):
        ResidualMADE(5, hidden_features=4, context_features=2)
    with pytest.raises(ValueError, match="ResidualMADE: order must be a permutation"):
        ResidualMADE(3, hidden_features=4, order=[0, 0, 1])
    with pytest.raises(ValueError, match="ResidualMADE: n_blocks must be a non-negative"):
        ResidualMADE(3, hidden_features=4, n_blocks=-1)
    with pytest.raises(ValueError, match="ResidualMADE: unknown activation"):
        ResidualMADE(3, hidden_features=4, activation="swish")
    net = ResidualMADE(3, hidden_features=4, context_features=1, rng=0)
    with pytest.raises(ValueError, match="ResidualMADE: this ResidualMADE is conditional"):
        net(np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"ResidualMADE.vjp: expected x of shape \(batch, 3\)"):
        net.vjp(np.zeros((2, 2)), np.zeros((2, 1)))
    with pytest.raises(ValueError, match="ResidualMADE: this ResidualMADE has no context"):
        ResidualMADE(3, hidden_features=4, rng=0)(np.zeros((2, 3)), np.zeros((2, 1)))
