"""The bijector contract: Chain, Inverse, ParamDict, pullbacks, input validation, params helpers.

Chain order and log-det additivity against manual composition, state-dict parameter names and
in-place write-through, ParamDict's fixed keys/shapes and all-or-nothing update, Inverse's
swapped directions and shared parameters, train/eval and buffers propagation, pullback
closures (unaffected by later parameter updates, never mutating their arguments, ``None`` as
zeros, cotangent validation, float64 grads), input validation at the public boundary (dtypes,
shapes, non-finite values, layouts, no mutation), ``refflow.params`` helpers and ``check_rng``.
"""

import warnings

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

from refflow import Affine, Bijector, Chain, Exp, Inverse, LeakyReLU, Logit, Sigmoid, Softplus, Tanh
from refflow._validation import check_rng
from refflow.params import ParamDict, allclose, assign, copy_params, ravel
from refflow.testing import assert_bijector, assert_vjp

#: The same float64 operations in the same order (a chain vs its manual composition):
#: identical up to a few ulps.
RTOL_SAME_OPS = 1e-14
#: Round trips through a short chain of well-conditioned layers.
RTOL_RT = 1e-12
#: float32 results against float64 ones: a few float32 ulps.
RTOL_FLOAT32 = 1e-5

DIM = 3


def _affine(rng, dim=DIM):
    layer = Affine(dim)
    layer.params["shift"] = rng.normal(0.0, 1.0, dim)
    layer.params["log_scale"] = rng.normal(0.0, 0.5, dim)
    return layer


def _chain(seed=0):
    """A chain whose order matters: Affine, Exp, Affine, Softplus (forward domain: all reals)."""
    rng = np.random.default_rng(seed)
    return Chain([_affine(rng), Exp(DIM), _affine(rng), Softplus(DIM)])


class _Buffered(Bijector):
    """The identity, with a non-trainable buffer (as a permutation layer would have)."""

    def __init__(self, dim):
        super().__init__(dim, buffers={"perm": np.arange(dim)})

    def _forward_pass(self, z, context, vjp):
        return (z.copy(), np.zeros(z.shape[0], dtype=z.dtype),
                lambda x_bar, ld_bar: (x_bar.copy(), {}, None))

    def _inverse_pass(self, x, context, vjp):
        return (x.copy(), np.zeros(x.shape[0], dtype=x.dtype),
                lambda z_bar, ld_bar: (z_bar.copy(), {}, None))


def _snapshot(params):
    return {k: v.copy() for k, v in params.items()}


def _assert_params_equal(params, snapshot):
    assert set(params) == set(snapshot)
    for key in snapshot:
        assert_array_equal(params[key], snapshot[key])


# ============================================================================ Chain
def test_chain_forward_applies_layers_in_list_order():
    chain = _chain()
    z = np.random.default_rng(1).normal(size=(6, DIM))
    v, total = z, np.zeros(6)
    for layer in chain.layers:  # f1 first
        v, ld = layer.forward(v)
        total = total + ld
    x, log_det = chain.forward(z)
    assert_allclose(x, v, rtol=RTOL_SAME_OPS)
    assert_allclose(log_det, total, rtol=RTOL_SAME_OPS)
    # order matters: the reversed list is a different map
    x_rev, _ = Chain(chain.layers[::-1]).forward(z)
    assert not np.allclose(x_rev, x)


def test_chain_inverse_runs_the_list_backwards():
    chain = _chain()
    x, _ = chain.forward(np.random.default_rng(2).normal(size=(6, DIM)))
    v, total = x, np.zeros(6)
    for layer in reversed(chain.layers):
        v, ld = layer.inverse(v)
        total = total + ld
    z, log_det = chain.inverse(x)
    assert_allclose(z, v, rtol=RTOL_SAME_OPS)
    assert_allclose(log_det, total, rtol=RTOL_SAME_OPS)


def test_chain_log_dets_add_and_round_trip():
    chain = _chain()
    z = np.random.default_rng(3).normal(size=(6, DIM))
    x, log_det = chain.forward(z)
    expected = sum(
        layer.forward(v)[1]
        for layer, v in zip(chain.layers, _intermediates(chain, z))
    )
    assert_allclose(log_det, expected, rtol=RTOL_SAME_OPS)
    z_back, log_det_inv = chain.inverse(x)
    assert_allclose(z_back, z, rtol=RTOL_RT, atol=RTOL_RT)
    assert_allclose(log_det + log_det_inv, 0.0, atol=RTOL_RT)
    assert assert_bijector(chain.forward, chain.inverse, z).ok


def _intermediates(chain, z):
    out, v = [], z
    for layer in chain.layers:
        out.append(v)
        v, _ = layer.forward(v)
    return out


@pytest.mark.parametrize("direction", ["forward", "inverse"])
def test_chain_pullback_against_finite_differences(direction):
    chain = _chain()
    z = np.random.default_rng(4).normal(size=(4, DIM))
    if direction == "forward":
        report = assert_vjp(chain.forward_vjp, z, chain.params, rng=0)
    else:
        report = assert_vjp(chain.inverse_vjp, chain.forward(z)[0], chain.params, rng=0)
    assert set(report.errors) == {"input", *chain.params}


def test_chain_params_keys_and_nested_chains():
    chain = Chain([Affine(2), Chain([Affine(2), Exp(2)]), LeakyReLU(2), Affine(2)])
    assert sorted(chain.params) == [
        "layers.0.log_scale", "layers.0.shift",
        "layers.1.layers.0.log_scale", "layers.1.layers.0.shift",
        "layers.3.log_scale", "layers.3.shift",
    ]
    assert chain.params["layers.1.layers.0.shift"] is chain.layers[1].layers[0].params["shift"]
    assert isinstance(chain.params, ParamDict)
    assert len(chain) == 4 and chain[3] is chain.layers[3]
    _, _, pullback = chain.forward_vjp(np.ones((2, 2)))
    _, grads = pullback(np.ones((2, 2)), np.ones(2))
    assert set(grads) == set(chain.params)
    for key, g in grads.items():
        assert g.shape == chain.params[key].shape and g.dtype == np.float64


def test_chain_params_write_through_in_place():
    chain = Chain([Affine(2), Chain([Affine(2)])])
    inner = chain.layers[1].layers[0]
    array = inner.params["shift"]
    chain.params["layers.1.layers.0.shift"] = [1.5, -2.0]
    assert inner.params["shift"] is array  # same object, written in place
    assert_array_equal(array, [1.5, -2.0])
    layer0 = chain.layers[0].params["log_scale"]
    chain.params["layers.0.log_scale"][...] = [0.25, 0.5]  # an optimizer's in-place step
    assert_array_equal(layer0, [0.25, 0.5])
    x, log_det = chain.forward(np.zeros((1, 2)))
    assert_allclose(x, [[1.5, -2.0]], rtol=RTOL_SAME_OPS)
    assert_allclose(log_det, [0.75], rtol=RTOL_SAME_OPS)


def test_chain_params_setitem_copies_the_value():
    chain = Chain([Affine(2)])
    value = np.array([1.0, 2.0])
    chain.params["layers.0.shift"] = value
    value[0] = 99.0
    assert_array_equal(chain.layers[0].params["shift"], [1.0, 2.0])


@pytest.mark.parametrize("layers", [
    [Affine(2), Affine(3)],
    [Exp(1), Chain([Exp(2)])],
    [],
    [Affine(2), "not a bijector"],
    [Affine(2), None],
    [Affine(2), lambda z: z],
], ids=["dims", "nested-dims", "empty", "string", "none", "callable"])
def test_chain_construction_errors(layers):
    with pytest.raises(ValueError, match="Chain"):
        Chain(layers)


def test_chain_accepts_any_iterable_of_layers():
    layers = (Affine(2) for _ in range(3))
    chain = Chain(layers)
    assert len(chain) == 3 and chain.dim == 2


# ============================================================================ ParamDict
@pytest.mark.parametrize("make", [lambda: Affine(DIM), lambda: Chain([Affine(DIM), Exp(DIM)])],
                         ids=["layer", "chain"])
def test_param_dict_refuses_new_keys_bad_shapes_and_non_finite(make):
    model = make()
    params = model.params
    key = sorted(params)[0]
    before = _snapshot(params)
    with pytest.raises(KeyError):
        params["no_such_parameter"] = np.zeros(DIM)
    for bad in (np.zeros(DIM + 1), np.zeros((1, DIM)), 0.0, np.zeros((DIM, DIM))):
        with pytest.raises(ValueError, match="shape"):
            params[key] = bad
    for bad in (np.nan, np.inf, -np.inf):
        value = np.zeros(DIM)
        value[1] = bad
        with pytest.raises(ValueError, match="NaN or inf"):
            params[key] = value
    with pytest.raises(ValueError):
        params[key] = np.array(["a", "b", "c"])
    _assert_params_equal(model.params, before)
    assert "no_such_parameter" not in model.params


@pytest.mark.parametrize("make", [lambda: Affine(DIM), lambda: Chain([Affine(DIM), Exp(DIM)])],
                         ids=["layer", "chain"])
def test_param_dict_refuses_removal(make):
    model = make()
    params = model.params
    key = sorted(params)[0]
    keys = sorted(params)
    for remove in (lambda: params.__delitem__(key), lambda: params.pop(key), params.popitem,
                   params.clear, lambda: params.setdefault("new", np.zeros(DIM))):
        with pytest.raises(TypeError):
            remove()
    with pytest.raises(TypeError):
        del params[key]
    assert sorted(model.params) == keys == sorted(params)


def test_param_dict_setitem_is_in_place():
    layer = Affine(DIM)
    array = layer.params["shift"]
    layer.params["shift"] = [1, 2, 3]  # ints converted
    assert layer.params["shift"] is array
    assert array.dtype == np.float64
    assert_array_equal(array, [1.0, 2.0, 3.0])


def test_param_dict_update_is_all_or_nothing():
    chain = Chain([Affine(DIM), Affine(DIM)])
    chain.params["layers.0.shift"] = [1.0, 2.0, 3.0]
    before = _snapshot(chain.params)
    good = np.full(DIM, 7.0)
    bad_entries = [
        ({"layers.0.shift": good, "layers.1.shift": np.zeros(DIM + 1)}, ValueError),
        ({"layers.0.shift": good, "layers.1.shift": np.array([0.0, np.nan, 0.0])}, ValueError),
        ({"layers.0.shift": good, "layers.9.shift": np.zeros(DIM)}, KeyError),
        ({"layers.1.log_scale": np.array([0.0, np.inf, 0.0]), "layers.0.log_scale": good}, ValueError),
    ]
    for entries, error in bad_entries:
        with pytest.raises(error):
            chain.params.update(entries)
        _assert_params_equal(chain.params, before)
    arrays = {k: v for k, v in chain.params.items()}
    chain.params.update({"layers.0.shift": good}, **{"layers.1.log_scale": -good})
    assert all(chain.params[k] is arrays[k] for k in arrays)
    assert_array_equal(chain.layers[0].params["shift"], good)
    assert_array_equal(chain.layers[1].params["log_scale"], -good)
    assert_array_equal(chain.layers[1].params["shift"], before["layers.1.shift"])


def test_param_dict_in_place_or_is_checked_too():
    layer = Affine(DIM)
    array = layer.params["shift"]
    params = layer.params
    with pytest.raises(KeyError):
        params |= {"new": np.zeros(DIM)}
    assert sorted(layer.params) == ["log_scale", "shift"]
    for bad in (np.array([np.nan, 1.0, 0.0]), np.zeros(DIM + 1)):
        with pytest.raises(ValueError):
            params |= {"log_scale": np.ones(DIM), "shift": bad}  # all or nothing
        assert_array_equal(layer.params["log_scale"], np.zeros(DIM))
    assert layer.params["shift"] is array
    params |= {"shift": [1.0, 2.0, 3.0]}
    assert layer.params["shift"] is array and layer.params is params
    assert_array_equal(array, [1.0, 2.0, 3.0])


def test_param_dict_refuses_complex_values():
    layer = Affine(DIM)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # refused outright, not cast with a ComplexWarning
        for bad in (np.array([1 + 1j, 2j, 0.0]), np.zeros(DIM, dtype=complex),
                    np.array(["1", "2", "3"], dtype=object)):
            with pytest.raises(ValueError):
                layer.params["shift"] = bad
    assert_array_equal(layer.params["shift"], np.zeros(DIM))


# ============================================================================ Inverse
def test_inverse_swaps_directions():
    rng = np.random.default_rng(5)
    for base in (_affine(rng), _chain(1), Exp(DIM)):
        inv = Inverse(base)
        z = rng.normal(size=(5, DIM))
        x, _ = base.forward(z)
        for got, want in ((inv.forward(x), base.inverse(x)), (inv.inverse(z), base.forward(z))):
            assert_array_equal(got[0], want[0])
            assert_array_equal(got[1], want[1])
        got = inv.forward_vjp(x)
        want = base.inverse_vjp(x)
        assert_array_equal(got[0], want[0])
        cot = rng.normal(size=(5, DIM)), rng.normal(size=5)
        g_bar, g_grads = got[2](*cot)
        w_bar, w_grads = want[2](*cot)
        assert_array_equal(g_bar, w_bar)
        assert set(g_grads) == set(w_grads) == set(base.params)
        for k in w_grads:
            assert_array_equal(g_grads[k], w_grads[k])
        assert inv.dim == base.dim
    # the inverse of the inverse is the bijector again
    base = _affine(rng)
    z = rng.normal(size=(4, DIM))
    assert_array_equal(Inverse(Inverse(base)).forward(z)[0], base.forward(z)[0])


def test_inverse_shares_params():
    base = _affine(np.random.default_rng(6))
    inv = Inverse(base)
    assert inv.params is base.params
    assert inv.params["shift"] is base.params["shift"]
    inv.params["shift"] = [3.0, 2.0, 1.0]
    assert_array_equal(base.params["shift"], [3.0, 2.0, 1.0])
    chain = Chain([Inverse(base), Exp(DIM)])
    assert sorted(chain.params) == ["layers.0.log_scale", "layers.0.shift"]
    assert chain.params["layers.0.shift"] is base.params["shift"]


@pytest.mark.parametrize("inner", ["a bijector", None, Affine])
def test_inverse_of_a_non_bijector_raises(inner):
    with pytest.raises(ValueError, match="Inverse"):
        Inverse(inner)


@pytest.mark.parametrize("direction", ["forward", "inverse"])
def test_inverse_pullback_against_finite_differences(direction):
    inv = Inverse(_chain(2))
    rng = np.random.default_rng(7)
    z = rng.normal(size=(4, DIM))
    x, _ = inv.bijector.forward(z)  # a valid input of inv.forward
    vjp, point = (inv.forward_vjp, x) if direction == "forward" else (inv.inverse_vjp, z)
    report = assert_vjp(vjp, point, inv.params, rng=1)
    assert set(report.errors) == {"input", *inv.params}


# ============================================================================ train / eval, buffers
def test_train_and_eval_propagate():
    leaf_a, leaf_b, leaf_c = Affine(2), Affine(2), Exp(2)
    inner = Chain([leaf_b, Inverse(leaf_c)])
    chain = Chain([leaf_a, Inverse(inner)])
    everything = [chain, leaf_a, leaf_b, leaf_c, inner, chain.layers[1], inner.layers[1]]
    assert all(m.training for m in everything)
    assert chain.eval() is chain
    assert not any(m.training for m in everything)
    assert chain.train() is chain
    assert all(m.training for m in everything)
    assert chain.train(False) is chain
    assert not any(m.training for m in everything)
    inv = Inverse(Chain([Affine(2)]))
    inv.eval()
    assert not inv.training and not inv.bijector.training and not inv.bijector.layers[0].training
    inv.train()
    assert inv.training and inv.bijector.layers[0].training


def test_buffers_are_prefixed_in_chain_and_shared():
    b0, b1 = _Buffered(2), _Buffered(2)
    chain = Chain([Affine(2), b0, Chain([b1, Inverse(_Buffered(2))])])
    assert sorted(chain.buffers) == ["layers.1.perm", "layers.2.layers.0.perm",
                                     "layers.2.layers.1.perm"]
    assert chain.buffers["layers.1.perm"] is b0.buffers["perm"]
    assert chain.buffers["layers.2.layers.0.perm"] is b1.buffers["perm"]
    assert Inverse(b0).buffers is b0.buffers
    assert Affine(2).buffers == {}
    assert chain.params.keys() == {"layers.0.shift", "layers.0.log_scale"}


# ============================================================================ in-place updates
def test_in_place_parameter_update_takes_effect_at_next_call():
    layer = Affine(DIM)
    z = np.random.default_rng(8).normal(size=(3, DIM))
    x0, _ = layer.forward(z)
    assert_array_equal(x0, z)
    layer.params["shift"] = [1.0, 1.0, 1.0]
    x1, _ = layer.forward(z)
    assert_allclose(x1, z + 1.0, rtol=RTOL_SAME_OPS)
    chain = Chain([layer, Affine(DIM)])
    chain.params["layers.1.log_scale"][...] += 0.5  # optimizer-style in-place step
    x2, log_det = chain.forward(z)
    assert_allclose(x2, (z + 1.0) * np.exp(0.5), rtol=RTOL_SAME_OPS)
    assert_allclose(log_det, np.full(3, 1.5), rtol=RTOL_SAME_OPS)


def _models():
    rng = np.random.default_rng(9)
    return {
        "affine": _affine(rng),
        "chain": _chain(3),
        "inverse": Inverse(_chain(4)),
    }


def _valid_input(name, model, direction, rng):
    z = rng.normal(size=(5, DIM))
    if name == "inverse":  # Inverse(chain).forward needs points in the chain's image
        return model.bijector.forward(z)[0] if direction == "forward" else z
    return z if direction == "forward" else model.forward(z)[0]


@pytest.mark.parametrize("name", ["affine", "chain", "inverse"])
@pytest.mark.parametrize("direction", ["forward", "inverse"])
def test_pullback_is_unaffected_by_later_parameter_updates(name, direction):
    model = _models()[name]
    rng = np.random.default_rng(10)
    v = _valid_input(name, model, direction, rng)
    out, log_det, pullback = getattr(model, f"{direction}_vjp")(v)
    out_bar, ld_bar = rng.normal(size=out.shape), rng.normal(size=log_det.shape)
    probe = np.random.default_rng(99).normal(size=(5, DIM))
    probe_before = (model.inverse if name == "inverse" else model.forward)(probe)[0]
    bar1, grads1 = pullback(out_bar, ld_bar)
    for key in model.params:  # an optimizer step, in place
        model.params[key] = model.params[key] + 0.3
    # the step did change the map (checked in the direction defined on all of R^dim)
    probe = np.random.default_rng(99).normal(size=(5, DIM))
    total_direction = model.inverse if name == "inverse" else model.forward
    assert not np.array_equal(total_direction(probe)[0], probe_before)
    bar2, grads2 = pullback(out_bar, ld_bar)
    assert_array_equal(bar1, bar2)
    assert set(grads1) == set(grads2) == set(model.params)
    for key in grads1:
        assert_array_equal(grads1[key], grads2[key])


@pytest.mark.parametrize("name", ["affine", "chain", "inverse"])
@pytest.mark.parametrize("direction", ["forward", "inverse"])
def test_pullback_does_not_mutate_its_arguments_and_is_repeatable(name, direction):
    model = _models()[name]
    rng = np.random.default_rng(11)
    v = _valid_input(name, model, direction, rng)
    out, log_det, pullback = getattr(model, f"{direction}_vjp")(v)
    out_bar, ld_bar = rng.normal(size=out.shape), rng.normal(size=log_det.shape)
    kept = out_bar.copy(), ld_bar.copy()
    out_kept, ld_kept = out.copy(), log_det.copy()
    first = pullback(out_bar, ld_bar)
    second = pullback(out_bar, ld_bar)
    assert_array_equal(out_bar, kept[0])
    assert_array_equal(ld_bar, kept[1])
    assert_array_equal(out, out_kept)
    assert_array_equal(log_det, ld_kept)
    assert_array_equal(first[0], second[0])
    for key in first[1]:
        assert_array_equal(first[1][key], second[1][key])
    assert not np.shares_memory(first[0], out_bar)


@pytest.mark.parametrize("name", ["affine", "chain", "inverse"])
def test_pullback_none_means_zeros(name):
    model = _models()[name]
    rng = np.random.default_rng(12)
    v = _valid_input(name, model, "forward", rng)
    out, log_det, pullback = model.forward_vjp(v)
    out_bar, ld_bar = rng.normal(size=out.shape), rng.normal(size=log_det.shape)
    zeros_out, zeros_ld = np.zeros_like(out), np.zeros_like(log_det)
    for given, explicit in (((None, None), (zeros_out, zeros_ld)),
                            ((out_bar, None), (out_bar, zeros_ld)),
                            ((None, ld_bar), (zeros_out, ld_bar))):
        a_bar, a_grads = pullback(*given)
        b_bar, b_grads = pullback(*explicit)
        assert_array_equal(a_bar, b_bar)
        assert set(a_grads) == set(b_grads) == set(model.params)
        for key in a_grads:
            assert_array_equal(a_grads[key], b_grads[key])
    z_bar, grads = pullback()
    assert_array_equal(z_bar, np.zeros_like(v))
    assert all(not g.any() for g in grads.values())


@pytest.mark.parametrize("which", ["out", "log_det"])
def test_pullback_refuses_bad_cotangents(which):
    layer = _affine(np.random.default_rng(13))
    n = 4
    x, log_det, pullback = layer.forward_vjp(np.ones((n, DIM)))
    good = {"out": np.ones((n, DIM)), "log_det": np.ones(n)}
    if which == "out":
        bad_values = [np.ones((n, DIM + 1)), np.ones((n + 1, DIM)), np.ones(DIM), np.ones((1, n, DIM)),
                      np.ones(n)]
    else:
        bad_values = [np.ones((n, 1)), np.ones(n + 1), np.ones((n, DIM)), 1.0]
    nan = good[which].copy()
    nan.flat[1] = np.nan
    inf = good[which].copy()
    inf.flat[0] = -np.inf
    bad_values += [nan, inf]
    for bad in bad_values:
        args = dict(good, **{which: bad})
        with pytest.raises(ValueError, match=r"Affine\.forward pullback"):
            pullback(args["out"], args["log_det"])
    _, _, pullback = Chain([layer, Exp(DIM)]).inverse_vjp(np.ones((n, DIM)))
    args = dict(good, **{which: bad_values[-2]})
    with pytest.raises(ValueError, match=r"Chain\.inverse pullback"):
        pullback(args["out"], args["log_det"])


def test_single_point_pullback_shapes():
    layer = _affine(np.random.default_rng(14))
    _, _, pullback = layer.forward_vjp(np.ones(DIM))
    z_bar, grads = pullback(np.ones(DIM), 2.0)
    assert z_bar.shape == (DIM,)
    assert_allclose(grads["log_scale"], np.exp(layer.params["log_scale"]) + 2.0, rtol=RTOL_SAME_OPS)
    with pytest.raises(ValueError, match="pullback"):
        pullback(np.ones((1, DIM)), 2.0)  # a single point has cotangents of shape (dim,) and ()


def test_pullback_refuses_complex_and_string_cotangents():
    _, _, pullback = Affine(DIM).forward_vjp(np.ones((2, DIM)))
    bad_values = [
        (np.ones((2, DIM)) * (1 + 1j), None),
        (np.zeros((2, DIM), dtype=complex), None),
        (np.array([["1", "2", "3"]] * 2), None),
        (np.array([["1", "2", "3"]] * 2, dtype=object), None),
        (None, np.array([1j, 0.0])),
        (None, np.array(["1", "2"])),
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for out_bar, ld_bar in bad_values:
            with pytest.raises(ValueError, match=r"Affine\.forward pullback"):
                pullback(out_bar, ld_bar)
    # int, bool and list cotangents are numeric and accepted
    z_bar, _ = pullback([[1, 2, 3], [4, 5, 6]], np.array([True, False]))
    assert z_bar.dtype == np.float64


@pytest.mark.parametrize("name", ["affine", "chain", "inverse"])
def test_grads_are_float64_for_float32_inputs(name):
    model = _models()[name]
    rng = np.random.default_rng(15)
    v = _valid_input(name, model, "forward", rng)
    out32, ld32, pullback32 = model.forward_vjp(v.astype(np.float32))
    assert out32.dtype == np.float32 and ld32.dtype == np.float32
    cot = rng.normal(size=v.shape), rng.normal(size=v.shape[0])
    z_bar32, grads32 = pullback32(*cot)
    _, _, pullback64 = model.forward_vjp(v)
    z_bar64, grads64 = pullback64(*cot)
    assert z_bar32.dtype == np.float32
    assert set(grads32) == set(model.params)
    for key, g in grads32.items():
        assert g.dtype == np.float64 and g.shape == model.params[key].shape
        scale = np.abs(grads64[key]).max()
        assert_allclose(g, grads64[key], rtol=RTOL_FLOAT32, atol=RTOL_FLOAT32 * scale)
    assert_allclose(z_bar32, z_bar64, rtol=RTOL_FLOAT32, atol=RTOL_FLOAT32 * np.abs(z_bar64).max())


@pytest.mark.parametrize("name", ["affine", "chain", "inverse"])
@pytest.mark.parametrize("direction", ["forward", "inverse"])
@pytest.mark.parametrize("single", [False, True], ids=["batch", "point"])
def test_pullback_is_unaffected_by_later_mutation_of_input_and_outputs(name, direction, single):
    model = _models()[name]
    rng = np.random.default_rng(16)
    v = _valid_input(name, model, direction, rng)
    v = v[0].copy() if single else v
    out, log_det, pullback = getattr(model, f"{direction}_vjp")(v)
    log_det = np.asarray(log_det)
    bars = rng.normal(size=out.shape), rng.normal(size=log_det.shape)
    first_bar, first_grads = pullback(*bars)
    v[...] = 5.0  # e.g. a data loader refilling its batch buffer
    out[...] = -7.0
    if log_det.ndim:
        log_det[...] = 3.0
    second_bar, second_grads = pullback(*bars)
    assert_array_equal(second_bar, first_bar)
    for key in first_grads:
        assert_array_equal(second_grads[key], first_grads[key])


# ============================================================================ input validation
BAD_INPUTS = {
    "3-D": np.ones((2, 2, DIM)),
    "0-D": np.float64(1.0),
    "wrong dim": np.ones((4, DIM + 1)),
    "wrong dim 1-D": np.ones(DIM - 1),
    "NaN": np.array([[0.0, np.nan, 0.0]]),
    "inf": np.array([[0.0, 0.0, np.inf]]),
    "-inf": np.array([[-np.inf, 0.0, 0.0], [0.0, 0.0, 0.0]]),
    "strings": np.array([["1.0", "2.0", "3.0"]]),
    "bytes": np.array([[b"1", b"2", b"3"]]),
    "complex": np.ones((2, DIM), dtype=complex),
    "object strings": np.array([["a", "b", "c"]], dtype=object),
    "object None": np.array([[None, 1.0, 2.0]], dtype=object),
    "datetime": np.zeros((1, DIM), dtype="datetime64[s]"),
    "ragged": [[1.0, 2.0, 3.0], [1.0]],
}


@pytest.mark.parametrize("bad", list(BAD_INPUTS), ids=list(BAD_INPUTS))
@pytest.mark.parametrize("method", ["forward", "inverse", "forward_vjp", "inverse_vjp"])
def test_bad_inputs_raise_value_error_naming_the_bijector(bad, method):
    direction = method.replace("_vjp", "")
    rng = np.random.default_rng(18)
    for model, name in ((_affine(rng), "Affine"), (_chain(5), "Chain"),
                        (Inverse(Affine(DIM)), r"Inverse\(Affine\)")):
        with pytest.raises(ValueError, match=rf"{name}\.{direction}"):
            getattr(model, method)(BAD_INPUTS[bad])


def test_wrong_shape_message_states_expected_and_actual():
    with pytest.raises(ValueError, match=r"\(batch, 3\).*\(4, 5\)"):
        Affine(3).forward(np.ones((4, 5)))


def test_object_array_of_numeric_strings_is_refused():
    with pytest.raises(ValueError, match=r"Affine\.forward"):
        Affine(DIM).forward(np.array([["1.0", "2.0", "3.0"]], dtype=object))


@pytest.mark.parametrize("value", [
    np.arange(6).reshape(2, DIM),
    np.arange(6, dtype=np.uint8).reshape(2, DIM),
    np.array([[True, False, True], [False, False, True]]),
    [[0, 1, 2], [3.5, 4, 5]],
    [0.5, 1.0, 2.0],
    np.arange(6, dtype=np.float16).reshape(2, DIM),
    np.array([[1.0, 2.0, 3.0]], dtype=object),
], ids=["int64", "uint8", "bool", "list", "list 1-D", "float16", "object numbers"])
def test_numeric_non_float_inputs_become_float64(value):
    layer = _affine(np.random.default_rng(19))
    expected_in = np.asarray(value).astype(np.float64)
    for method in ("forward", "inverse"):
        out, log_det = getattr(layer, method)(value)
        want_out, want_ld = getattr(layer, method)(expected_in)
        assert out.dtype == np.float64 and np.asarray(log_det).dtype == np.float64
        assert_array_equal(out, want_out)
        assert_array_equal(log_det, want_ld)
    out, _, pullback = layer.forward_vjp(value)
    assert out.dtype == np.float64
    assert pullback(np.ones(out.shape), None)[0].dtype == np.float64


def _in_layout(a, layout):
    """The values of the C-contiguous ``a`` laid out as ``layout`` (a view or a copy)."""
    if layout == "strided":  # x[:, ::2] of a wider array
        wide = np.full((a.shape[0], 2 * a.shape[1]), np.nan)
        wide[:, ::2] = a
        return wide[:, ::2]
    if layout == "fortran":
        return np.asfortranarray(a)
    if layout == "transposed":
        return a.T.copy().T
    if layout == "read-only":
        b = a.copy()
        b.flags.writeable = False
        return b
    raise AssertionError(layout)


def _layout_cases():
    """``(id, model, method, sample(rng) -> valid C-contiguous (5, DIM) input)``."""
    normal = lambda r: r.normal(size=(5, DIM))  # noqa: E731
    chain = _chain(6)
    return [
        ("affine-forward", _affine(np.random.default_rng(0)), "forward", normal),
        ("affine-inverse", _affine(np.random.default_rng(0)), "inverse", normal),
        ("chain-forward", chain, "forward", normal),
        ("chain-inverse", chain, "inverse", lambda r: chain.forward(normal(r))[0]),
        ("tanh-forward", Tanh(DIM), "forward", normal),
        ("tanh-inverse", Tanh(DIM), "inverse", lambda r: r.uniform(-0.9, 0.9, (5, DIM))),
        ("inverse-softplus-forward", Inverse(Softplus(DIM)), "forward",
         lambda r: np.exp(normal(r))),
        ("inverse-softplus-inverse", Inverse(Softplus(DIM)), "inverse", normal),
    ]


@pytest.mark.parametrize("layout", ["strided", "fortran", "read-only", "transposed"])
@pytest.mark.parametrize("case", range(8), ids=[c[0] for c in _layout_cases()])
def test_non_contiguous_and_read_only_inputs(layout, case):
    _, model, method, sample = _layout_cases()[case]
    rng = np.random.default_rng(20)
    plain = sample(rng)
    v = _in_layout(plain, layout)
    assert not v.flags.c_contiguous or not v.flags.writeable
    kept = v.copy()
    out, log_det = getattr(model, method)(v)
    want_out, want_ld = getattr(model, method)(plain)
    assert_array_equal(out, want_out)
    assert_array_equal(log_det, want_ld)
    out, log_det, pullback = getattr(model, f"{method}_vjp")(v)
    _, _, want_pullback = getattr(model, f"{method}_vjp")(plain)
    bars = rng.normal(size=out.shape), rng.normal(size=log_det.shape)
    got_bar, got_grads = pullback(*bars)
    want_bar, want_grads = want_pullback(*bars)
    assert_array_equal(got_bar, want_bar)
    for key in want_grads:
        assert_array_equal(got_grads[key], want_grads[key])
    # cotangents in the same odd layout work as well
    assert_array_equal(pullback(_in_layout(bars[0], layout), bars[1])[0], want_bar)
    assert_array_equal(v, kept)
    assert v.flags.writeable == (layout != "read-only")


def _all_models():
    rng = np.random.default_rng(21)
    return [
        (_affine(rng), "normal"), (_chain(7), "normal"), (Exp(DIM), "normal"),
        (Sigmoid(DIM), "normal"), (Logit(DIM, alpha=0.05), "unit"), (Tanh(DIM), "normal"),
        (Softplus(DIM), "normal"), (LeakyReLU(DIM), "normal"), (Inverse(Logit(DIM)), "normal"),
    ]


@pytest.mark.parametrize("index", range(9))
def test_inputs_and_cotangents_are_never_mutated(index):
    model, kind = _all_models()[index]
    rng = np.random.default_rng(22)
    z = rng.normal(size=(6, DIM)) if kind == "normal" else rng.uniform(0.05, 0.95, size=(6, DIM))
    z_kept = z.copy()
    x, _ = model.forward(z)
    x_kept = x.copy()
    model.inverse(x)
    out, ld, pullback = model.forward_vjp(z)
    bars = rng.normal(size=out.shape), rng.normal(size=ld.shape)
    bars_kept = [b.copy() for b in bars]
    pullback(*bars)
    out, ld, pullback = model.inverse_vjp(x)
    pullback(*bars)
    model.forward(z[0])
    assert_array_equal(z, z_kept)
    assert_array_equal(x, x_kept)
    for b, k in zip(bars, bars_kept):
        assert_array_equal(b, k)


def test_outputs_do_not_alias_inputs():
    z = np.random.default_rng(23).normal(size=(4, DIM))
    for model in (Affine(DIM), LeakyReLU(DIM), Chain([Affine(DIM)]), Inverse(Affine(DIM))):
        for method in ("forward", "inverse"):
            out, _ = getattr(model, method)(z)
            assert not np.shares_memory(out, z)
        out, _ = model.forward(z[1])
        assert not np.shares_memory(out, z)


# ============================================================================ refflow.params
def test_ravel_unravel_round_trip():
    params = {"b": np.arange(3.0), "a": np.arange(6.0).reshape(2, 3) + 10, "c": np.array(7.0)}
    vec, unravel = ravel(params)
    # sorted keys: a (2x3), b (3), c (scalar)
    assert_array_equal(vec, [10, 11, 12, 13, 14, 15, 0, 1, 2, 7])
    back = unravel(vec)
    assert set(back) == set(params)
    for key in params:
        assert back[key].shape == params[key].shape
        assert_array_equal(back[key], params[key])
        assert not np.shares_memory(back[key], vec)
        assert not np.shares_memory(back[key], params[key])
    vec[0] = -1.0  # the vector is a copy
    assert params["a"][0, 0] == 10.0
    with pytest.raises(ValueError, match="unravel"):
        unravel(np.zeros(9))
    with pytest.raises(ValueError, match="unravel"):
        unravel(np.zeros((2, 5)))


def test_ravel_of_a_chain_and_assign_back():
    chain = _chain(8)
    vec, unravel = ravel(chain.params)
    assert vec.shape == (4 * DIM,)
    arrays = dict(chain.params)
    assign(chain.params, unravel(vec + 1.0))
    assert all(chain.params[k] is arrays[k] for k in arrays)  # written in place
    assert_allclose(ravel(chain.params)[0], vec + 1.0, rtol=RTOL_SAME_OPS)
    assert_array_equal(chain.layers[0].params["shift"], unravel(vec + 1.0)["layers.0.shift"])


def test_ravel_of_empty_params():
    vec, unravel = ravel(Exp(DIM).params)
    assert vec.shape == (0,) and vec.dtype == np.float64
    assert unravel(vec) == {}


def test_copy_params_is_an_independent_snapshot():
    chain = _chain(9)
    snap = copy_params(chain.params)
    assert type(snap) is dict and set(snap) == set(chain.params)
    for key in snap:
        assert not np.shares_memory(snap[key], chain.params[key])
    original = _snapshot(chain.params)
    for key in chain.params:
        chain.params[key] = chain.params[key] * 2.0 + 1.0
    _assert_params_equal(snap, original)
    assign(chain.params, snap)
    _assert_params_equal(chain.params, original)


def test_assign_is_all_or_nothing():
    chain = _chain(10)
    before = _snapshot(chain.params)
    values = {k: v + 1.0 for k, v in before.items()}
    missing = dict(values)
    missing.pop("layers.2.shift")
    with pytest.raises(ValueError, match="missing"):
        assign(chain.params, missing)
    _assert_params_equal(chain.params, before)
    with pytest.raises(ValueError, match="unexpected"):
        assign(chain.params, dict(values, **{"layers.9.shift": np.zeros(DIM)}))
    _assert_params_equal(chain.params, before)
    for bad_key in ("layers.0.log_scale", "layers.2.shift"):
        wrong = dict(values)
        wrong[bad_key] = np.zeros(DIM + 1)  # other keys (before and after it) are fine
        with pytest.raises(ValueError, match="shape"):
            assign(chain.params, wrong)
        _assert_params_equal(chain.params, before)
    assign(chain.params, values)
    _assert_params_equal(chain.params, values)


def test_assign_refuses_non_finite_values_all_or_nothing():
    chain = _chain(11)
    before = _snapshot(chain.params)
    values = {k: v + 1.0 for k, v in before.items()}
    values["layers.2.shift"] = np.array([0.0, np.nan, 0.0])
    with pytest.raises(ValueError, match="NaN or inf"):
        assign(chain.params, values)
    _assert_params_equal(chain.params, before)


@pytest.mark.parametrize("kwargs", [{"alpha": None}, {"alpha": "0.1"}, {"alpha": True}])
def test_logit_alpha_must_be_a_number(kwargs):
    with pytest.raises(ValueError, match="Logit: alpha"):
        Logit(2, **kwargs)


@pytest.mark.parametrize("slope", [None, "0.1", True])
def test_leaky_relu_slope_must_be_a_number(slope):
    with pytest.raises(ValueError, match="LeakyReLU: negative_slope"):
        LeakyReLU(2, negative_slope=slope)


def test_allclose():
    a = {"w": np.array([1.0, 2.0])}
    assert allclose(a, {"w": np.array([1.0, 2.0 + 1e-15])})
    assert not allclose(a, {"w": np.array([1.0, 2.0 + 1e-9])})
    assert not allclose(a, {"v": np.array([1.0, 2.0])})
    assert not allclose(a, {"w": np.array([1.0, 2.0, 3.0])})


# ============================================================================ check_rng
@pytest.mark.parametrize("seed", [0, 5, 2**40, np.int64(5), np.uint32(5)])
def test_check_rng_accepts_int_seeds(seed):
    rng = check_rng(seed)
    assert isinstance(rng, np.random.Generator)
    assert_array_equal(rng.random(4), np.random.default_rng(int(seed)).random(4))


def test_check_rng_accepts_none_and_generators():
    assert isinstance(check_rng(None), np.random.Generator)
    gen = np.random.default_rng(1)
    assert check_rng(gen) is gen
    state = np.random.get_state()[1].copy()
    check_rng(None).random(3)  # no global state touched
    assert_array_equal(np.random.get_state()[1], state)


@pytest.mark.parametrize("bad", [1.5, 2.0, -1, np.int64(-3), "abc", "3", True, [1, 2],
                                 np.random.RandomState(0)],
                         ids=["1.5", "2.0", "-1", "np -3", "abc", "'3'", "True", "list",
                              "RandomState"])
def test_check_rng_rejects(bad):
    with pytest.raises(ValueError, match="seed|rng"):
        check_rng(bad, where="fit")


# ========================================================================= pickling, deepcopy
@pytest.mark.parametrize("copier", ["pickle", "deepcopy"])
def test_bijectors_and_flows_pickle_and_deepcopy_to_independent_equal_objects(copier):
    import copy
    import pickle

    from refflow import Flow, LULinear, StandardNormal

    rng = np.random.default_rng(0)
    layer = LULinear(3, permutation="random", rng=rng)
    layer.params["lower_entries"] = rng.normal(size=layer.params["lower_entries"].shape)
    flow = Flow(StandardNormal(3), Chain([Affine(3), layer]))
    clone = pickle.loads(pickle.dumps(flow)) if copier == "pickle" else copy.deepcopy(flow)
    x = rng.normal(size=(5, 3))
    np.testing.assert_array_equal(clone.log_prob(x), flow.log_prob(x))
    assert isinstance(clone.bijector.layers[1].params, ParamDict)
    clone.params["bijector.layers.0.shift"] = [1.0, 2.0, 3.0]        # independent arrays
    assert np.all(flow.params["bijector.layers.0.shift"] == 0.0)
    with pytest.raises(KeyError):                                     # still a fixed key set
        clone.bijector.layers[0].params["new"] = [1.0]
