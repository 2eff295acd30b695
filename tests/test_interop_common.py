"""The importers' shared helpers (``refflow.interop.common``): their messages, conversions and
the refflow layers they build, checked without any peer library (torch only where a helper
reads torch modules or tensors)."""

import numpy as np
import pytest

from refflow.bijectors import Chain, Inverse, LULinear, Permute, Tanh
from refflow.interop.common import (
    NO_TWIN, affine_layer, as_flow, centered, chain, check_network, diag_normal_base,
    gather_layers, invert, lu_layer, matrix, refuse, require, to_numpy, transformed_parts,
    unsupported, vector, whole_map, with_peer_gradients,
)

#: float64 matrix products of a few terms, computed in two orders: rounding only.
RTOL_MAP = 1e-12
#: a map composed with its exact inverse (a permutation, an affine shift): rounding only.
ATOL_ROUND_TRIP = 1e-12


class _Layer:
    """A stand-in peer object: only its class name is read."""


def test_refuse_names_the_importer_class_and_option():
    msg = r"^from_peer: Layer: opt=1 is not supported \(refflow would not compute the same " \
          r"function\)$"
    with pytest.raises(ValueError, match=msg):
        refuse("from_peer", "Layer", "opt=1")


def test_unsupported_names_the_peer_class_and_reason():
    with pytest.raises(NotImplementedError,
                       match=r"^from_peer: Peer _Layer is not supported \(its refflow twin, or its "
                             r"import, does not exist yet\)$"):
        unsupported("from_peer", "Peer", _Layer())
    assert NO_TWIN == "its refflow twin, or its import, does not exist yet"
    with pytest.raises(NotImplementedError, match=r"^from_peer: Peer _Layer is not supported "
                                                  r"\(as a base distribution\)$"):
        unsupported("from_peer", "Peer", _Layer(), "as a base distribution")


def test_to_numpy_copies_as_float64():
    a = np.arange(3, dtype=np.float32)
    out = to_numpy(a)
    assert out.dtype == np.float64 and np.array_equal(out, [0.0, 1.0, 2.0])
    out[0] = 7.0
    assert a[0] == 0.0  # a copy, not a view
    b = np.arange(3.0)
    assert to_numpy(b) is not b
    assert to_numpy([[1, 2]]).dtype == np.float64 and to_numpy(2.5).shape == ()


def test_to_numpy_reads_torch_tensors():
    torch = pytest.importorskip("torch")
    t = torch.tensor([0.1, -2.0], dtype=torch.float32, requires_grad=True)
    out = to_numpy(t)
    assert out.dtype == np.float64
    assert np.array_equal(out, t.detach().numpy().astype(np.float64))
    half = torch.tensor([1.5, -0.25], dtype=torch.bfloat16)  # a dtype NumPy lacks
    assert np.array_equal(to_numpy(half), [1.5, -0.25])


def test_vector_broadcasts_or_refuses_a_batch():
    assert np.array_equal(vector("f", 2.0, 3, "Shift", "shift"), [2.0, 2.0, 2.0])
    assert np.array_equal(vector("f", np.array([4.0]), 3, "Shift", "shift"), [4.0, 4.0, 4.0])
    row = np.array([1, 2, 3], dtype=np.int32)
    out = vector("f", row, 3, "Shift", "shift")
    assert out.shape == (3,) and out.dtype == np.float64 and np.array_equal(out, row)
    out[0] = 9.0
    assert row[0] == 1  # a copy
    with pytest.raises(ValueError, match=r"^f: Shift: shift of shape \(2, 3\) for events of "
                                         r"size 3 \(a batch of bijectors\) is not supported"):
        vector("f", np.zeros((2, 3)), 3, "Shift", "shift")


def test_vector_without_broadcast_wants_the_exact_shape():
    assert np.array_equal(vector("f", [1.0, 2.0], 2, "Planar", "parameter u", broadcast=False),
                          [1.0, 2.0])
    with pytest.raises(ValueError, match=r"^f: Planar: parameter b of shape \(\) \(expected "
                                         r"\(1,\)\) is not supported"):
        vector("f", 0.5, 1, "Planar", "parameter b", broadcast=False)


def test_matrix_wants_one_square_matrix():
    m = np.arange(4.0).reshape(2, 2)
    assert np.array_equal(matrix("f", m, 2, "Tri"), m)
    with pytest.raises(ValueError, match=r"^f: Tri: a matrix of shape \(3, 2, 2\) for events of "
                                         r"size 2 \(a batch of matrices\)"):
        matrix("f", np.zeros((3, 2, 2)), 2, "Tri")


def test_affine_layer_computes_its_map():
    z = np.random.default_rng(0).normal(size=(4, 2))
    layer = affine_layer(2, np.array([1.0, -2.0]), np.array([0.5, 0.0]))
    x, log_det = layer.forward(z)
    np.testing.assert_allclose(x, z * np.exp([0.5, 0.0]) + [1.0, -2.0], rtol=RTOL_MAP)
    np.testing.assert_allclose(log_det, np.full(4, 0.5), rtol=RTOL_MAP)


@pytest.mark.parametrize("diagonal", ["upper", "lower"])
def test_lu_layer_computes_p_l_u(diagonal):
    rng = np.random.default_rng(1)
    dim = 4
    lower, upper = rng.normal(size=(dim, dim)), rng.normal(size=(dim, dim))
    diag = rng.uniform(0.5, 2.0, dim) * np.array([1.0, -1.0, 1.0, -1.0])
    bias, perm = rng.normal(size=dim), np.array([2, 0, 3, 1])
    layer = lu_layer("f", dim, lower, upper, diag, bias, diagonal=diagonal, permutation=perm)
    assert type(layer) is LULinear
    unit = np.eye(dim)
    low = np.tril(lower, -1) + (np.diag(diag) if diagonal == "lower" else unit)
    up = np.triu(upper, 1) + (np.diag(diag) if diagonal == "upper" else unit)
    z = rng.normal(size=(5, dim))
    x, log_det = layer.forward(z)
    np.testing.assert_allclose(x, z @ (low @ up)[perm].T + bias, rtol=RTOL_MAP)
    np.testing.assert_allclose(log_det, np.full(5, np.log(np.abs(diag)).sum()), rtol=RTOL_MAP)
    plain = lu_layer("f", dim, lower, upper, diag)
    assert np.array_equal(plain.params["bias"], np.zeros(dim))


def test_lu_layer_refuses_a_singular_factor():
    with pytest.raises(ValueError, match=r"^f: LULinear: a singular triangular factor"):
        lu_layer("f", 2, np.eye(2), np.eye(2), np.array([1.0, 0.0]))


def test_chain_flattens_and_invert_simplifies():
    a, b, c = Tanh(2), affine_layer(2, np.ones(2), np.zeros(2)), Permute(2, permutation=[1, 0])
    flat = chain([Chain([a, b]), c])
    assert type(flat) is Chain and flat.layers == [a, b, c]
    assert invert(Inverse(a)) is a
    inv = invert(flat)
    assert type(inv) is Chain and [type(x) for x in inv.layers] == [Permute, Inverse, Inverse]
    assert inv.layers[1].bijector is b and inv.layers[2].bijector is a
    z = np.random.default_rng(2).normal(size=(3, 2)) * 0.5
    x, _ = flat.forward(z)
    back, _ = inv.forward(x)
    np.testing.assert_allclose(back, z, atol=ATOL_ROUND_TRIP)
    p = Permute(4, permutation=[2, 0, 3, 1])
    q = invert(p)
    assert type(q) is Permute
    assert np.array_equal(q.buffers["permutation"], np.argsort([2, 0, 3, 1]))


def test_centered_shifts_a_layer():
    layer = Tanh(2)
    assert centered(layer, 2, 0.0) is layer
    moved = centered(layer, 2, 1.5)
    z = np.random.default_rng(3).normal(size=(4, 2))
    x, log_det = moved.forward(z)
    inner, inner_log_det = layer.forward(z - 1.5)
    np.testing.assert_allclose(x, inner + 1.5, atol=ATOL_ROUND_TRIP)
    np.testing.assert_allclose(log_det, inner_log_det, atol=ATOL_ROUND_TRIP)


def test_whole_map_indexes_every_entry_once():
    idx = whole_map((3,), (1, 3))
    assert idx.shape == (1, 3) and np.array_equal(idx.ravel(), np.arange(3))
    assert np.array_equal(whole_map((2, 2)), np.arange(4).reshape(2, 2))


def test_check_network_refuses_dropout_in_training_and_batch_norm():
    torch = pytest.importorskip("torch")
    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.1))
    with pytest.raises(ValueError, match=r"^f: MADE: dropout \(p=0.1\) in training mode"):
        check_network("f", net, "MADE")
    net.eval()
    check_network("f", net, "MADE")  # dropout in eval mode is the identity: accepted
    for norm in (torch.nn.BatchNorm1d(2), torch.nn.BatchNorm2d(2)):
        with pytest.raises(ValueError, match=r"^f: MADE: batch norm inside the network"):
            check_network("f", torch.nn.Sequential(torch.nn.Linear(2, 2), norm).eval(), "MADE")


def test_gather_layers_numbers_the_refflow_layers():
    a, b, c = Tanh(2), Tanh(2), Tanh(2)
    idx = np.arange(2)
    converted = [("flows.0.", [a], {"s": (0, "shift", idx)}),
                 ("flows.1.", [b, c], {"t": (1, "log_scale", idx)}),
                 ("flows.2.", [], {})]
    layers, peer = gather_layers(iter(converted))
    assert layers == [a, b, c]
    assert peer == {"flows.0.s": ("bijector.layers.0.shift", idx),
                    "flows.1.t": ("bijector.layers.2.log_scale", idx)}


def test_with_peer_gradients_checks_the_map():
    from refflow.distributions import Flow, StandardNormal
    model = Flow(StandardNormal(2), Chain([affine_layer(2, np.zeros(2), np.zeros(2))]))
    peer = {"t": ("bijector.layers.0.shift", np.array([1, 0]))}
    assert with_peer_gradients("f", model, peer) is model and model.peer_gradients is peer
    for bad in ({"t": ("bijector.layers.1.shift", np.array([0]))},   # no such parameter
                {"t": ("bijector.layers.0.shift", np.array([2]))}):  # index out of range
        fresh = Flow(StandardNormal(2), Chain([affine_layer(2, np.zeros(2), np.zeros(2))]))
        with pytest.raises(RuntimeError, match=r"^f: internal error: gradient map of t"):
            with_peer_gradients("f", fresh, bad)
        assert not hasattr(fresh, "peer_gradients")


class _Dist:
    """A stand-in distrax/TFP distribution: only its shapes and class name are read."""

    def __init__(self, batch_shape, event_shape):
        self.batch_shape, self.event_shape = batch_shape, event_shape


def test_diag_normal_base_broadcasts_and_refuses():
    scale = np.array([1.0, 2.0, 4.0])
    base, dim = diag_normal_base("f", _Dist((), (3,)), np.array(0.5), scale)
    assert dim == 3 and base.dim == 3
    assert np.array_equal(base.params["loc"], np.full(3, 0.5))
    assert np.array_equal(base.params["log_scale"], np.log(scale))
    with pytest.raises(ValueError, match=r"^f: _Dist: batch shape \(2,\), event shape \(3,\)"):
        diag_normal_base("f", _Dist((2,), (3,)), 0.0, 1.0)
    with pytest.raises(ValueError, match=r"^f: _Dist: a non-positive scale"):
        diag_normal_base("f", _Dist((), (2,)), 0.0, np.array([1.0, 0.0]))


class _Transformed:
    """Stand-ins for a JAX peer's transformed distribution, bijector and distribution."""

    def __init__(self, distribution, bijector):
        self.distribution, self.bijector = distribution, bijector


class _Bijector:
    pass


class _Distribution:
    pass


def test_transformed_parts_accepts_both_forms_and_names_the_mistakes():
    kinds = (_Transformed, _Bijector, _Distribution)
    d, b = _Distribution(), _Bijector()
    assert transformed_parts("f", "Peer", _Transformed(d, b), None, *kinds) == (d, b)
    assert transformed_parts("f", "Peer", b, d, *kinds) == (d, b)
    with pytest.raises(TypeError, match=r"^f: base must be None with a Peer _Transformed"):
        transformed_parts("f", "Peer", _Transformed(d, b), d, *kinds)
    with pytest.raises(TypeError, match=r"^f: a bare bijector needs base="):
        transformed_parts("f", "Peer", b, None, *kinds)
    with pytest.raises(TypeError, match=r"^f: expected a Peer _Transformed or _Bijector, got "
                                        r"object$"):
        transformed_parts("f", "Peer", object(), d, *kinds)
    with pytest.raises(TypeError, match=r"^f: base must be a Peer distribution, got object$"):
        transformed_parts("f", "Peer", b, object(), *kinds)
    with pytest.raises(TypeError, match=r"^f: base must be a Peer distribution, got object$"):
        transformed_parts("f", "Peer", _Transformed(object(), b), None, *kinds)


def test_as_flow_wraps_one_layer_in_a_chain():
    from refflow.distributions import Flow, StandardNormal
    layer = Tanh(2)
    flow = as_flow(StandardNormal(2), layer)
    assert type(flow) is Flow and type(flow.bijector) is Chain
    assert flow.bijector.layers == [layer]
    already = Chain([Tanh(2), Tanh(2)])
    assert as_flow(StandardNormal(2), already).bijector is already


def test_require_imports_in_order_or_says_what_to_install():
    import numpy.linalg
    assert require("f", ("numpy", "numpy.linalg"), "numpy", "numpy") == (np, numpy.linalg)
    with pytest.raises(ImportError, match=r"^f: needs a peer \(pip install 'peer\[cpu\]'\)$"):
        require("f", ("numpy", "refflow_no_such_peer_module"), "a peer", "'peer[cpu]'")
