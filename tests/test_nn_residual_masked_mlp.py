"""ResidualMaskedMLP (zuko's residual MaskedMLP): pullbacks against finite differences, the
network written out by hand, its autoregressive structure on its own Jacobian, masks, float32,
bad arguments, and its use as the conditioner of the masked autoregressive layers."""

import numpy as np
import pytest

from refflow import MaskedAffineAutoregressive, MaskedSplineAutoregressive
from refflow.kernels import fast_paths
from refflow.nn import MADE, ResidualMaskedMLP
from refflow.testing import RTOL_FD, assert_bijector, assert_vjp, jacobian_fd
from .helpers import joined_vjp

#: float32 pass vs float64 pass, normwise: float32 round-off 6e-8, amplified by the sums over a
#: few dozen units per layer and a handful of layers (as for MADE in test_nn.py).
RTOL_FLOAT32 = 1e-5
#: A dependency that the masks allow is "present" when some row's FD derivative exceeds this;
#: FD noise on these O(1) networks is ~1e-10, real derivatives are O(1e-2) or more.
PRESENT = 1e-6
#: The forward pass written out by hand vs the network's: the same float64 products, summed in
#: the same order up to BLAS blocking, so a few ulps of O(1) numbers.
RTOL_BY_HAND = 1e-13
#: a layer's fast kernels vs their NumPy references (summation order only), O(1) values.
RTOL_PATHS = 1e-12

ORDERS = ["natural", "reverse", "random", np.array([2, 0, 3, 1])]
HIDDEN = [(6,), (6, 6), (5, 8, 8, 6), (7, 5)]


def _normwise(a, b):
    return float(np.max(np.abs(a - b)) / max(1.0, float(np.max(np.abs(b)))))


def _by_hand(net, x, c=None):
    """The network of the class Notes, written out from the parameters and masks."""
    p = net.params
    m = dict(zip([k for k in p if k.rsplit(".", 1)[-1][0] == "w"], net.masks))
    f = {"tanh": np.tanh, "relu": lambda a: np.maximum(a, 0.0),
         "elu": lambda a: np.where(a > 0, a, np.expm1(np.minimum(a, 0.0)))}[net.activation]
    u = x if c is None else np.hstack([x, c])
    if not net.hidden:
        return (u @ (p["w_out"] * m["w_out"]).T + p["b_out"]).reshape(len(x), net.dim, -1)
    h = u @ (p["w0"] * m["w0"]).T + p["b0"]
    for s, width in enumerate(net.hidden):
        if s > 0 and width != net.hidden[s - 1]:
            h = h @ (p[f"links.{s}.w"] * m[f"links.{s}.w"]).T + p[f"links.{s}.b"]
        a = h @ (p[f"blocks.{s}.w0"] * m[f"blocks.{s}.w0"]).T + p[f"blocks.{s}.b0"]
        h = h + f(a) @ (p[f"blocks.{s}.w1"] * m[f"blocks.{s}.w1"]).T + p[f"blocks.{s}.b1"]
    out = h @ (p["w_out"] * m["w_out"]).T + p["b_out"]
    return out.reshape(len(x), net.dim, net.n_params)


# ------------------------------------------------------------------------------ pullbacks
@pytest.mark.parametrize("hidden", HIDDEN, ids=str)
@pytest.mark.parametrize("context_features", [0, 2])
@pytest.mark.parametrize("activation", ["tanh", "elu", "gelu", "softplus"])
def test_pullback_vs_fd(hidden, context_features, activation, rng):
    dim = 4
    net = ResidualMaskedMLP(dim, hidden, n_params=3, order="random", activation=activation,
                            context_features=context_features, rng=rng)
    x = rng.normal(size=(3, dim + context_features))
    vjp = net.vjp if context_features == 0 else joined_vjp(net, dim)
    report = assert_vjp(vjp, x, net.params, rng=4, rtol=RTOL_FD)
    assert set(report.errors) == {"input", *net.params}


@pytest.mark.parametrize("order", ORDERS, ids=str)
def test_pullback_vs_fd_relu_and_no_hidden(order, rng):
    net = ResidualMaskedMLP(4, (6, 9), n_params=2, order=order, context_features=1, rng=rng)
    assert_vjp(joined_vjp(net, 4), rng.normal(size=(4, 5)), net.params, rng=5, rtol=RTOL_FD)
    flat = ResidualMaskedMLP(4, (), n_params=2, order=order, context_features=1, rng=rng)
    assert list(flat.params) == ["w_out", "b_out"] and flat.masks[0].shape == (8, 5)
    assert_vjp(joined_vjp(flat, 4), rng.normal(size=(4, 5)), flat.params, rng=6,
               rtol=RTOL_FD)


# --------------------------------------------------------------------- the network itself
@pytest.mark.parametrize("hidden", HIDDEN + [()], ids=str)
@pytest.mark.parametrize("activation", ["tanh", "relu", "elu"])
def test_forward_written_out_by_hand(hidden, activation, rng):
    net = ResidualMaskedMLP(4, hidden, n_params=2, activation=activation, context_features=2,
                            rng=rng)
    x, c = rng.normal(size=(6, 4)), rng.normal(size=(6, 2))
    expected = _by_hand(net, x, c)
    np.testing.assert_allclose(net(x, c), expected, rtol=RTOL_BY_HAND, atol=RTOL_BY_HAND)
    out, _ = net.vjp(x, c)
    np.testing.assert_allclose(out, expected, rtol=RTOL_BY_HAND, atol=RTOL_BY_HAND)


def test_structure_keys_links_and_masks():
    net = ResidualMaskedMLP(4, (6, 6, 9, 9, 5), n_params=3, context_features=1, rng=0)
    keys = list(net.params)
    assert keys[:2] == ["w0", "b0"] and keys[-2:] == ["w_out", "b_out"]
    # a link only where the width changes (stages 2 and 4), none between equal widths
    assert [k for k in keys if k.startswith("links.")] == ["links.2.w", "links.2.b",
                                                           "links.4.w", "links.4.b"]
    assert net.params["links.2.w"].shape == (9, 6) and net.params["links.4.w"].shape == (5, 9)
    assert all(f"blocks.{s}.w{i}" in keys for s in range(5) for i in range(2))
    deg = net.hidden_degree_list
    assert np.array_equal(deg[0], deg[1]) and np.array_equal(deg[2], deg[3])
    # the masks by their definition, element by element
    in_deg = list(net.input_degrees) + [0]
    ge = lambda out, inp: np.array([[float(o >= i) for i in inp] for o in out])  # noqa: E731
    expected = {"w0": ge(deg[0], in_deg), "links.2.w": ge(deg[2], deg[1]),
                "links.4.w": ge(deg[4], deg[3]),
                "w_out": np.array([[float(o > i) for i in deg[4]]
                                   for o in np.repeat(net.input_degrees, 3)])}
    for s in range(5):
        expected[f"blocks.{s}.w0"] = expected[f"blocks.{s}.w1"] = ge(deg[s], deg[s])
    w_keys = [k for k in keys if k.rsplit(".", 1)[-1][0] == "w"]
    assert len(w_keys) == len(net.masks)
    for key, mask in zip(w_keys, net.masks):
        assert np.array_equal(mask, expected[key]), key
        assert mask.shape == net.params[key].shape and np.all(net.params[key][mask == 0] == 0)
    # seeded, torch's nn.Linear default bound 1/sqrt(fan_in) on every layer
    again = ResidualMaskedMLP(4, (6, 6, 9, 9, 5), n_params=3, context_features=1, rng=0)
    assert all(np.array_equal(net.params[k], again.params[k]) for k in keys)
    assert np.abs(net.params["blocks.0.w1"]).max() <= 1 / np.sqrt(6)
    assert np.abs(net.params["blocks.0.w1"]).max() > 0.5 / np.sqrt(6)
    zero = ResidualMaskedMLP(4, (6,), zero_last=True, rng=1)
    assert np.array_equal(zero(np.ones((2, 4))), np.zeros((2, 4, 2)))


def test_random_degrees_drawn_only_where_the_width_changes():
    net = ResidualMaskedMLP(6, (8, 8, 12, 12), hidden_degrees="random", order="random", rng=3)
    deg = net.hidden_degree_list
    assert np.array_equal(deg[0], deg[1]) and np.array_equal(deg[2], deg[3])
    rebuilt = ResidualMaskedMLP(6, (8, 8, 12, 12), hidden_degrees=deg, order=net.order, rng=3)
    assert rebuilt.hidden_degrees == "explicit"
    assert all(np.array_equal(a, b) for a, b in zip(net.masks, rebuilt.masks))


@pytest.mark.parametrize("context_features", [0, 2])
@pytest.mark.parametrize("order", ORDERS, ids=str)
@pytest.mark.parametrize("hidden", [(7, 9), (8, 8), (5, 9, 9, 6)], ids=str)
def test_autoregressive_structure_on_its_own_jacobian(hidden, order, context_features, rng):
    dim, n_params, n = 4, 2, 16
    net = ResidualMaskedMLP(dim, hidden, n_params=n_params, order=order, activation="tanh",
                            context_features=context_features, rng=rng)
    x = rng.normal(size=(n, dim))
    c = rng.normal(size=(n, context_features)) if context_features else None
    jac = jacobian_fd(lambda v: net(v, c).reshape(n, -1), x).reshape(n, dim, n_params, dim)
    deg = net.input_degrees
    allowed = deg[None, :] < deg[:, None]                   # [i, j]: m(j) < m(i)
    forbidden = np.broadcast_to(~allowed[None, :, None, :], jac.shape)
    assert np.all(jac[forbidden] == 0.0)                    # exactly, not approximately
    # wide deterministic (cyclic) stages carry every allowed dependency
    assert np.array_equal(np.abs(jac).max(axis=(0, 2)) > PRESENT, allowed)
    if context_features:                                    # every output sees the context
        jac_c = jacobian_fd(lambda cc: net(x, cc).reshape(n, -1), c)
        assert np.all(np.abs(jac_c).max(axis=(0, 2)) > PRESENT)


def test_float32_pass_and_masked_gradients(rng):
    net = ResidualMaskedMLP(5, (16, 12), n_params=2, context_features=2, activation="tanh",
                            rng=rng)
    x, c = rng.normal(size=(7, 5)), rng.normal(size=(7, 2))
    out64, pb64 = net.vjp(x, c)
    out32, pb32 = net.vjp(x.astype(np.float32), c.astype(np.float32))
    assert out32.dtype == np.float32 and _normwise(out32, out64) <= RTOL_FLOAT32
    assert net(x.astype(np.float32), c.astype(np.float32)).dtype == np.float32
    g = rng.normal(size=out64.shape)
    x64, gr64, c64 = pb64(g)
    x32, gr32, c32 = pb32(g.astype(np.float32))
    assert x32.dtype == np.float32 and c32.dtype == np.float32
    assert _normwise(x32, x64) <= RTOL_FLOAT32 and _normwise(c32, c64) <= RTOL_FLOAT32
    w_keys = [k for k in net.params if k.rsplit(".", 1)[-1][0] == "w"]
    for key, mask in zip(w_keys, net.masks):
        assert gr32[key].dtype == np.float64 and _normwise(gr32[key], gr64[key]) <= RTOL_FLOAT32
        assert np.all(gr64[key][mask == 0] == 0.0) and np.any(gr64[key][mask == 1] != 0.0)


def test_pullback_repeatable_and_independent_of_later_updates(rng):
    net = ResidualMaskedMLP(3, (5, 7), n_params=2, activation="tanh", rng=rng)
    x = rng.normal(size=(4, 3))
    x_keep = x.copy()
    out, pullback = net.vjp(x)
    g = rng.normal(size=out.shape)
    first = pullback(g)
    x[...] = 0.0                                   # the caller's array changes
    for key in net.params:                         # an optimizer step
        net.params[key] = net.params[key] + 1.0
    second = pullback(g)
    assert np.array_equal(first[0], second[0])
    assert all(np.array_equal(first[1][k], second[1][k]) for k in first[1])
    net2 = ResidualMaskedMLP(3, (5, 7), n_params=2, activation="tanh", rng=0)
    assert net2.vjp(x_keep)[0].shape == (4, 3, 2)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match=r"ResidualMaskedMLP: hidden layer 0 has width 3"):
        ResidualMaskedMLP(5, (3,))
    with pytest.raises(TypeError, match="ResidualMaskedMLP: hidden must be a sequence"):
        ResidualMaskedMLP(3, 8)
    with pytest.raises(ValueError, match="ResidualMaskedMLP: unknown hidden_degrees rule"):
        ResidualMaskedMLP(3, (4,), hidden_degrees="cyclical")
    with pytest.raises(ValueError, match="ResidualMaskedMLP: unknown activation"):
        ResidualMaskedMLP(3, (4,), activation="swish")
    with pytest.raises(ValueError, match=r"hidden_degrees\[1\] differs from hidden_degrees\[0\]"):
        ResidualMaskedMLP(3, (4, 4), hidden_degrees=[[1, 2, 1, 2], [1, 1, 2, 2]])
    with pytest.raises(ValueError, match="ResidualMaskedMLP: hidden_degrees must hold one array"):
        ResidualMaskedMLP(3, (4, 4), hidden_degrees=[[1, 2, 1, 2]])
    net = ResidualMaskedMLP(3, (4,), context_features=1, rng=0)
    with pytest.raises(ValueError, match="ResidualMaskedMLP: this ResidualMaskedMLP is "
                                         "conditional"):
        net(np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"ResidualMaskedMLP.vjp: expected x of shape "
                                         r"\(batch, 3\)"):
        net.vjp(np.zeros((2, 2)), np.zeros((2, 1)))


# ------------------------------------------------------------- as a layer's conditioner
def _with_residual_conditioner(layer, hidden, rng, scale=1.0):
    made = layer.made
    layer.made = ResidualMaskedMLP(made.dim, hidden, made.n_params, order=made.order,
                                   activation="tanh", context_features=made.context_features,
                                   rng=rng)
    for key in layer.made.params:
        layer.made.params[key] = layer.made.params[key] * scale
    return layer


@pytest.mark.parametrize("kind", ["affine", "spline"])
@pytest.mark.parametrize("context_dim", [None, 2])
def test_as_the_conditioner_of_masked_autoregressive_layers(kind, context_dim, rng):
    dim = 4
    if kind == "affine":
        layer = MaskedAffineAutoregressive(dim, hidden=(8,), order="random",
                                           context_dim=context_dim, rng=rng)
    else:
        layer = MaskedSplineAutoregressive(dim, hidden=(8,), n_bins=5, order="random",
                                           context_dim=context_dim, rng=rng)
    _with_residual_conditioner(layer, (8, 11), rng)
    z = rng.normal(size=(5, dim))
    c = None if context_dim is None else rng.normal(size=(5, context_dim))
    fwd = lambda v: layer.forward(v, context=c)    # noqa: E731
    inv = lambda v: layer.inverse(v, context=c)    # noqa: E731
    assert_bijector(fwd, inv, z)
    x = fwd(z)[0]
    inputs_x, inputs_z = (x, z) if c is None else ((x, c), (z, c))
    report = assert_vjp(layer.inverse_vjp, inputs_x, layer.params, rng=1, rtol=RTOL_FD)
    assert all(f"made.{k}" in report.errors for k in layer.made.params)   # all checked
    assert_vjp(layer.forward_vjp, inputs_z, layer.params, rng=2, rtol=RTOL_FD)
    # the network has no fast path of its own; the layer's (spline / affine kernels) agree
    # with their references under the one switch
    with fast_paths(False):
        ref = fwd(z) + inv(x)
    for got, want in zip(fwd(z) + inv(x), ref):
        np.testing.assert_allclose(got, want, rtol=RTOL_PATHS, atol=RTOL_PATHS)
    # and MADE's own incremental sampler is not used for it
    assert ResidualMaskedMLP._sample is not MADE._sample
