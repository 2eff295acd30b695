"""refflow.io: save/load round trips (every registered bijector, flows, MADE degrees), the file
format's checks (every kind of bad file gives one clear ValueError and no model), atomic writes,
and the explicit hidden degrees of MADE / ResidualMADE that make random structure reloadable."""

import hashlib
import json
import os
import pathlib
import zipfile

import numpy as np
import pytest

import refflow
import refflow.io.files
from refflow import (
    ActNorm, Adam, Affine, AffineCoupling, BatchNorm, Bijector, Chain, DiagNormal, Exp, Flow,
    Inverse, LeakyReLU, LULinear, MaskedAffineAutoregressive, MaskedSplineAutoregressive,
    Permute, Reverse, SplineCoupling, StandardNormal,
)
from refflow.io import FORMAT_NAME, FORMAT_VERSION, from_spec, load, save, to_spec
from refflow.nn import MADE, ResidualMADE

from .helpers import randomize
from .registry import CASES


# ------------------------------------------------------------------------------- helpers
def _json(value):
    return json.loads(json.dumps(value))


def _nodes(obj):
    """Every bijector of a model, depth first (the order of the header's training flags)."""
    if isinstance(obj, Flow):
        return _nodes(obj.bijector)
    return [obj] + [n for child in obj._children() for n in _nodes(child)]


def _assert_same_arrays(a, b):
    assert list(a) == list(b)
    for key in a:
        assert a[key].dtype == b[key].dtype and a[key].shape == b[key].shape, key
        assert np.array_equal(a[key], b[key]), key


def _assert_same_state(original, loaded):
    assert type(loaded) is type(original)
    assert _json(to_spec(loaded)) == _json(to_spec(original))
    _assert_same_arrays(original.params, loaded.params)
    _assert_same_arrays(getattr(original, "buffers", {}), getattr(loaded, "buffers", {}))
    if isinstance(original, (Bijector, Flow)):
        assert [n.training for n in _nodes(loaded)] == [n.training for n in _nodes(original)]
    # the loaded object owns its arrays
    for key, value in loaded.params.items():
        assert not np.shares_memory(value, original.params[key])


def _run(bijector, direction, v, context, rng):
    """Outputs, log-dets and pullback results of one direction, or the error it raises."""
    kw = {} if context is None else {"context": context}
    try:
        out, log_det, pullback = getattr(bijector, f"{direction}_vjp")(v, **kw)
        plain = getattr(bijector, direction)(v, **kw)
    except ValueError as exc:  # e.g. BatchNorm.forward in training mode: must fail alike
        return ("error", str(exc))
    result = pullback(rng.normal(size=out.shape), rng.normal(size=log_det.shape))
    return [out, log_det, *plain, result[0], result[1], *result[2:]]


def _assert_bit_identical(a, b):
    if isinstance(a, tuple):
        assert a == b
        return
    assert len(a) == len(b)
    for x, y in zip(a, b):
        if isinstance(x, dict):
            _assert_same_arrays(x, y)
        else:
            assert x.dtype == y.dtype and np.array_equal(x, y)


def _assert_same_map(original, loaded, z, x, context):
    for direction, v in (("forward", z), ("inverse", x)):
        # the same cotangents for both; state updates (running statistics) happen alike
        a = _run(original, direction, v, context, np.random.default_rng(5))
        b = _run(loaded, direction, v, context, np.random.default_rng(5))
        _assert_bit_identical(a, b)


def _entries(path):
    """``(header, arrays)`` of a model file (read with numpy directly)."""
    with np.load(path, allow_pickle=False) as npz:
        arrays = {name: npz[name] for name in npz.files}
    return json.loads(str(arrays.pop("header")[()])), arrays


def _write(path, header, arrays, redigest=False, **savez_kwargs):
    """Write an archive by hand (``header`` a dict or raw text), optionally with fresh digests."""
    if redigest:
        for record in header["arrays"]:
            if record["name"] in arrays:
                record["sha256"] = hashlib.sha256(arrays[record["name"]].tobytes()).hexdigest()
    text = header if isinstance(header, str) else json.dumps(header)
    with open(path, "wb") as f:
        np.savez(f, header=np.array(text), **arrays, **savez_kwargs)


def _record(header, name):
    return next(r for r in header["arrays"] if r["name"] == name)


def _assert_clear_error(path, match):
    with pytest.raises(ValueError, match=match) as info:
        load(path)
    message = str(info.value)
    assert "\n" not in message and message.startswith("refflow.io.load(")
    return info.value


# ------------------------------------------------------------- every registered bijector
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("case_id", sorted(CASES))
def test_every_registered_case_round_trips_bit_identically(case_id, training, tmp_path):
    bijector, sample_z, sample_x, sample_context = CASES[case_id](7)
    bijector.train(training)
    path = tmp_path / "model.npz"
    save(path, bijector)
    loaded = load(path)
    _assert_same_state(bijector, loaded)
    # saving the loaded object writes the same header and arrays
    again = tmp_path / "again.npz"
    save(again, loaded)
    header_a, arrays_a = _entries(path)
    header_b, arrays_b = _entries(again)
    assert header_a == header_b
    _assert_same_arrays(arrays_a, arrays_b)
    n = 6
    context = None if sample_context is None else sample_context(3, n)
    _assert_same_map(bijector, loaded, sample_z(1, n), sample_x(2, n), context)
    if context is not None:  # one context row shared by every point
        _assert_same_map(bijector, loaded, sample_z(4, n), sample_x(5, n), context[0])
    _assert_same_state(bijector, loaded)  # including state changed by the passes


def test_every_case_file_lists_every_array_with_its_digest(tmp_path):
    # the header documents each entry; checked independently of refflow.io's own reader
    for case_id, factory in CASES.items():
        bijector = factory(0)[0]
        path = tmp_path / f"{case_id}.npz"
        save(path, bijector)
        header, arrays = _entries(path)
        assert header["format"] == FORMAT_NAME and header["format_version"] == FORMAT_VERSION
        assert header["refflow_version"] == refflow.__version__
        expected = {f"params/{k}": v for k, v in bijector.params.items()}
        expected.update({f"buffers/{k}": v for k, v in bijector.buffers.items()})
        assert [r["name"] for r in header["arrays"]] == list(expected)
        assert set(arrays) == set(expected)
        for record in header["arrays"]:
            value = expected[record["name"]]
            assert record["dtype"] == value.dtype.str and record["shape"] == list(value.shape)
            assert record["sha256"] == hashlib.sha256(value.tobytes()).hexdigest()
            assert np.array_equal(arrays[record["name"]], value)


# ------------------------------------------------------------------------------- flows
@pytest.mark.parametrize("base", [StandardNormal, DiagNormal])
def test_flow_round_trip_with_each_base(base, rng, tmp_path):
    bijector = Chain([
        BatchNorm(3), MaskedAffineAutoregressive(3, hidden=(8,), order="random",
                                                 hidden_degrees="random", rng=rng),
        Reverse(3), LULinear(3, permutation="random", rng=rng), Exp(3),
    ])
    flow = Flow(base(3), bijector)
    randomize(flow.params, rng)
    flow.bijector.layers[0].buffers["running_var"][...] = [0.5, 2.0, 1.5]
    flow.bijector.layers[0].eval()  # one layer in eval mode, the rest in training mode
    path = tmp_path / "flow.npz"
    save(path, flow)
    loaded = load(path)
    _assert_same_state(flow, loaded)
    # the Chain's own flag keeps its value (eval() on one layer does not change it)
    assert [n.training for n in _nodes(loaded)] == [True, False, True, True, True, True]
    x = np.exp(rng.normal(size=(7, 3)))
    assert np.array_equal(loaded.log_prob(x), flow.log_prob(x))
    nll_a, grads_a = flow.nll_and_grad(x)
    nll_b, grads_b = loaded.nll_and_grad(x)
    assert nll_a == nll_b
    _assert_same_arrays(grads_a, grads_b)
    lp_a, pb_a = flow.log_prob_vjp(x)
    lp_b, pb_b = loaded.log_prob_vjp(x)
    assert np.array_equal(lp_a, lp_b)
    _assert_bit_identical(list(pb_a(np.ones(7))), list(pb_b(np.ones(7))))
    flow.eval()
    loaded.eval()
    for a, b in zip(flow.sample_and_log_prob(5, rng=3), loaded.sample_and_log_prob(5, rng=3)):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("base", [StandardNormal, DiagNormal])
def test_distributions_round_trip(base, rng, tmp_path):
    dist = base(4)
    randomize(dist.params, rng)
    save(tmp_path / "d.npz", dist)
    loaded = load(tmp_path / "d.npz")
    _assert_same_state(dist, loaded)
    z = rng.normal(size=(5, 4))
    assert np.array_equal(loaded.log_prob(z), dist.log_prob(z))
    assert np.array_equal(loaded.sample(4, rng=1), dist.sample(4, rng=1))
    assert _entries(tmp_path / "d.npz")[0]["training"] == []


def test_conditional_flow_round_trip(rng, tmp_path):
    flow = Flow(StandardNormal(3), Chain([
        MaskedAffineAutoregressive(3, hidden=(8,), context_dim=2, scale="tanh", rng=rng),
        Permute(3, rng=rng),
        AffineCoupling(3, hidden=(6,), context_dim=2, rng=rng),
        SplineCoupling(3, mask=[True, False, True], hidden=(6,), n_bins=3,
                       parameterization="distrax", bound=2.5, boundary_slopes="circular",
                       context_dim=2, rng=rng),
    ]))
    randomize(flow.params, rng)
    save(tmp_path / "c.npz", flow)
    loaded = load(tmp_path / "c.npz")
    _assert_same_state(flow, loaded)
    x, c = rng.normal(size=(6, 3)), rng.normal(size=(6, 2))
    assert np.array_equal(loaded.log_prob(x, context=c), flow.log_prob(x, context=c))
    _assert_bit_identical(list(flow.log_prob_vjp(x, context=c)[1](np.ones(6))),
                          list(loaded.log_prob_vjp(x, context=c)[1](np.ones(6))))
    assert np.array_equal(loaded.sample(4, rng=2, context=c[0]),
                          flow.sample(4, rng=2, context=c[0]))


def test_trained_actnorm_flow_round_trip(rng, tmp_path):
    data = rng.normal(loc=[2.0, -1.0], scale=[3.0, 0.5], size=(256, 2))
    flow = Flow(DiagNormal(2), Chain([ActNorm(2), AffineCoupling(2, hidden=(8,), rng=rng),
                                      Reverse(2), ActNorm(2)]))
    opt = Adam(flow.params, lr=1e-2)
    for _ in range(5):
        opt.step(flow.nll_and_grad(data)[1])
    actnorms = (flow.bijector.layers[0], flow.bijector.layers[3])
    assert all(bool(a.buffers["initialized"]) for a in actnorms)
    save(tmp_path / "trained.npz", flow)
    loaded = load(tmp_path / "trained.npz")
    _assert_same_state(flow, loaded)
    assert all(bool(loaded.bijector.layers[i].buffers["initialized"]) for i in (0, 3))
    # new data must not re-initialise the loaded layers (the flag came from the file)
    other = rng.normal(size=(9, 2)) * 10.0
    assert np.array_equal(loaded.log_prob(other), flow.log_prob(other))
    _assert_same_state(flow, loaded)


def test_uninitialized_actnorm_initialises_alike_after_loading(rng, tmp_path):
    layer = ActNorm(3)
    save(tmp_path / "a.npz", layer)
    loaded = load(tmp_path / "a.npz")
    assert not bool(loaded.buffers["initialized"])
    x = rng.normal(size=(20, 3)) * 4.0 + 1.0
    _assert_bit_identical(list(layer.inverse(x)), list(loaded.inverse(x)))
    assert bool(loaded.buffers["initialized"])
    _assert_same_state(layer, loaded)


def test_batchnorm_running_statistics_and_mode_survive(rng, tmp_path):
    layer = BatchNorm(3, momentum=0.25, eps=1e-3)
    randomize(layer.params, rng)
    for _ in range(3):
        layer.inverse(rng.normal(size=(16, 3)) * 2.0 + 1.0)
    for mode in (True, False):
        layer.train(mode)
        save(tmp_path / "bn.npz", layer)
        loaded = load(tmp_path / "bn.npz")
        assert loaded.training is mode and (loaded.momentum, loaded.eps) == (0.25, 1e-3)
        _assert_same_state(layer, loaded)
        x = rng.normal(size=(8, 3))
        _assert_same_map(layer, loaded, x, x, None)
        _assert_same_state(layer, loaded)  # train mode updated both sets of statistics alike


def test_chain_with_mixed_modes_restores_each_flag(tmp_path):
    chain = Chain([Inverse(BatchNorm(2)), Chain([BatchNorm(2), Affine(2)])])
    chain.layers[1].layers[0].eval()
    save(tmp_path / "m.npz", chain)
    header, _ = _entries(tmp_path / "m.npz")
    # depth first: Chain, Inverse, BatchNorm, Chain, BatchNorm, Affine
    assert header["training"] == [True, True, True, True, False, True]
    loaded = load(tmp_path / "m.npz")
    assert [n.training for n in _nodes(loaded)] == header["training"]


# ---------------------------------------------------------------- MADE degrees in configs
@pytest.mark.parametrize("layer_type", [MaskedAffineAutoregressive, MaskedSplineAutoregressive])
@pytest.mark.parametrize("context_dim", [None, 2])
def test_random_order_and_degrees_are_in_the_config(layer_type, context_dim, tmp_path):
    kw = {"n_bins": 3} if layer_type is MaskedSplineAutoregressive else {}
    layer = layer_type(5, hidden=(7, 4), order="random", hidden_degrees="random",
                       context_dim=context_dim, rng=11, **kw)
    config = to_spec(layer)["config"]
    assert config["order"] == layer.made.order.tolist()
    assert config["hidden_degrees"] == [d.tolist() for d in layer.made.hidden_degree_list]
    save(tmp_path / "r.npz", layer)
    loaded = load(tmp_path / "r.npz")
    assert np.array_equal(loaded.made.order, layer.made.order)
    for a, b in zip(loaded.made.hidden_degree_list, layer.made.hidden_degree_list):
        assert np.array_equal(a, b)
    for a, b in zip(loaded.made.masks, layer.made.masks):
        assert np.array_equal(a, b)
    assert np.array_equal(loaded._sampling_order, layer._sampling_order)
    # another seed draws other degrees: the file, not the seed, decides the structure
    assert any(not np.array_equal(a, b) for a, b in zip(
        layer_type(5, hidden=(7, 4), order="random", hidden_degrees="random",
                   context_dim=context_dim, rng=12, **kw).made.masks, layer.made.masks))


def test_deterministic_degree_rules_stay_rule_names(tmp_path):
    layer = MaskedAffineAutoregressive(4, hidden=(9,), order="reverse", hidden_degrees="equal",
                                       rng=0)
    assert to_spec(layer)["config"]["hidden_degrees"] == "equal"
    assert to_spec(layer)["config"]["order"] == [3, 2, 1, 0]


# ------------------------------------------------------------ explicit MADE hidden degrees
@pytest.mark.parametrize("context_features", [0, 2])
def test_made_rebuilds_from_explicit_degrees(context_features):
    made = MADE(4, hidden=(6, 3, 5), n_params=3, order="random", hidden_degrees="random",
                context_features=context_features, rng=3)
    rebuilt = MADE(4, hidden=(6, 3, 5), n_params=3, order=made.order,
                   hidden_degrees=made.hidden_degree_list, context_features=context_features,
                   rng=0)
    assert rebuilt.hidden_degrees == "explicit"
    for a, b in zip(rebuilt.masks, made.masks):
        assert np.array_equal(a, b)
    # lists (as read from JSON) work too, and the stored arrays are owned and read-only
    as_lists = [d.tolist() for d in made.hidden_degree_list]
    rebuilt = MADE(4, hidden=(6, 3, 5), n_params=3, order=made.order.tolist(),
                   hidden_degrees=as_lists, context_features=context_features)
    assert [d.tolist() for d in rebuilt.hidden_degree_list] == as_lists
    assert not rebuilt.hidden_degree_list[0].flags.writeable


def test_made_explicit_degrees_give_an_autoregressive_network(rng):
    made = MADE(3, hidden=(4, 4), n_params=1, hidden_degrees=[[1, 2, 2, 1], [2, 1, 2, 2]], rng=0)
    x = rng.normal(size=(2, 3))
    for i in range(3):  # d out_i / d x_j = 0 unless j < i (natural order)
        out_bar = np.zeros((2, 3, 1))
        out_bar[:, i] = 1.0
        x_bar, _ = made.vjp(x)[1](out_bar)
        assert np.all(x_bar[:, i:] == 0.0)


def test_made_explicit_degrees_are_validated():
    ok = [[1, 2, 1, 2], [1, 1, 2, 2]]
    MADE(3, hidden=(4, 4), hidden_degrees=ok)
    bad = [
        ([[1, 2, 1, 2]], "hidden_degrees must hold one array per hidden layer \\(2\\), got 1"),
        ([[1, 2, 1], [1, 1, 2, 2]], "hidden_degrees\\[0\\] must have shape \\(4,\\)"),
        ([[1.0, 2.0, 1.0, 2.0], [1, 1, 2, 2]], "must hold integers, got dtype float64"),
        ([[True, True, True, True], [1, 1, 2, 2]], "must hold integers, got dtype bool"),
        ([[1, 2, 0, 2], [1, 1, 2, 2]], "must lie in 1..2; unit 2 has degree 0"),
        ([[1, 2, 3, 2], [1, 1, 2, 2]], "must lie in 1..2; unit 2 has degree 3"),
        ([[2, 2, 2, 2], [1, 2, 2, 2]],
         "hidden_degrees\\[1\\]: unit 0 has degree 1, below the smallest degree 2 .*connectivity"),
        ([[1, 2], [1, 2]], "hidden_degrees\\[0\\] must have shape"),
        ("spread", "unknown hidden_degrees rule 'spread'"),
        (5, "hidden_degrees must be one of .* or a sequence of integer arrays"),
        (["ab", [1, 1, 2, 2]], "hidden_degrees\\[0\\] must be an array of integers"),
    ]
    for degrees, match in bad:
        with pytest.raises(ValueError, match="^MADE: .*" + match):
            MADE(3, hidden=(4, 4), hidden_degrees=degrees)
    # with a context, degree 0 (context only) is allowed; without, dim 1 means degree 1
    MADE(3, hidden=(3,), hidden_degrees=[[0, 1, 2]], context_features=1)
    MADE(1, hidden=(2,), hidden_degrees=[[1, 1]])
    with pytest.raises(ValueError, match="must lie in 1..1"):
        MADE(1, hidden=(2,), hidden_degrees=[[0, 1]])


def test_residual_made_explicit_degrees(rng):
    net = ResidualMADE(4, hidden_features=5, n_blocks=2, order="random", rng=1)
    rebuilt = ResidualMADE(4, hidden_features=5, n_blocks=2, order=net.order,
                           hidden_degrees=net.hidden_degree_list, rng=2)
    assert rebuilt.hidden_degrees == "explicit" and net.hidden_degrees == "cyclic"
    for a, b in zip(rebuilt.masks, net.masks):
        assert np.array_equal(a, b)
    other = [[1, 1, 2, 3, 3]] * 5
    ResidualMADE(4, hidden_features=5, n_blocks=2, hidden_degrees=other)
    with pytest.raises(ValueError, match="ResidualMADE: hidden_degrees\\[2\\] differs from"):
        ResidualMADE(4, hidden_features=5, n_blocks=2,
                     hidden_degrees=other[:2] + [[1, 2, 2, 3, 3]] + other[:2])
    with pytest.raises(ValueError, match="ResidualMADE: hidden_degrees must hold one array per "
                                         "hidden layer \\(5\\), got 1"):
        ResidualMADE(4, hidden_features=5, n_blocks=2, hidden_degrees=other[:1])
    with pytest.raises(ValueError, match="ResidualMADE: hidden_degrees must be 'cyclic'"):
        ResidualMADE(4, hidden_features=5, hidden_degrees="random")


# ---------------------------------------------------------------------------- specs
def test_to_spec_and_from_spec_rebuild_the_structure():
    chain = Chain([LeakyReLU(2, negative_slope=0.2), Inverse(Permute(2, permutation=[1, 0]))])
    spec = to_spec(chain)
    assert _json(spec) == spec  # plain JSON
    assert spec == {"class": "Chain", "config": {"layers": [
        {"class": "LeakyReLU", "config": {"dim": 2, "negative_slope": 0.2}},
        {"class": "Inverse", "config": {"bijector": {
            "class": "Permute", "config": {"dim": 2, "permutation": [1, 0]}}}}]}}
    rebuilt = from_spec(spec)
    assert isinstance(rebuilt.layers[1].bijector, Permute)
    assert rebuilt.layers[1].bijector.buffers["permutation"].tolist() == [1, 0]


def test_from_spec_refuses_names_outside_the_allow_list():
    for name in ("os.system", "Bijector", "refflow.bijectors.Affine", "__import__", "MLP",
                 "ParamDict", "Adam"):
        with pytest.raises(ValueError, match=f"from_spec: unknown class '{name}'"):
            from_spec({"class": name, "config": {}})


@pytest.mark.parametrize("spec, match", [
    ([], "a spec must be a dict"),
    ({"class": "Affine"}, "exactly the keys 'class' and 'config'"),
    ({"class": "Affine", "config": {"dim": 2}, "code": "x"}, "exactly the keys"),
    ({"class": 3, "config": {}}, "'class' must be a str"),
    ({"class": "Affine", "config": [2]}, "Affine: 'config' must be a dict"),
    ({"class": "Affine", "config": {"dim": float("nan")}}, "config\\['dim'\\] is nan"),
    ({"class": "Affine", "config": {"dim": {1: 2}}}, "has a key 1 that is not a str"),
])
def test_from_spec_checks_the_structure(spec, match):
    with pytest.raises(ValueError, match=match):
        from_spec(spec)


def test_from_spec_names_the_class_and_chains_the_constructor_error():
    with pytest.raises(ValueError, match="cannot build Affine from its config: ValueError: "
                                         "Affine: dim must be a positive integer") as info:
        from_spec({"class": "Affine", "config": {"dim": -3}})
    assert isinstance(info.value.__cause__, ValueError)
    with pytest.raises(ValueError, match="cannot build Logit .*TypeError.*'beta'") as info:
        from_spec({"class": "Logit", "config": {"dim": 2, "beta": 0.1}})
    assert isinstance(info.value.__cause__, TypeError)
    # a nested failure names the innermost class, not wrapped once per level
    nested = {"class": "Chain", "config": {"layers": [
        {"class": "Exp", "config": {"dim": 2}},
        {"class": "Chain", "config": {"layers": [
            {"class": "Permute", "config": {"dim": 2, "permutation": [0, 0]}}]}}]}}
    with pytest.raises(ValueError) as info:
        from_spec(nested)
    message = str(info.value)
    assert message.startswith("from_spec: cannot build Permute from its config: ValueError: "
                              "Permute: permutation has duplicates")
    assert message.count("from_spec") == 1
    assert type(info.value) is ValueError


def test_to_spec_refuses_foreign_classes_and_non_json_configs():
    class MyAffine(Affine):
        pass

    class Affine2(Affine):
        def _config(self):
            return {"dim": np.int64(2)}

    Affine2.__name__ = "Affine"  # a look-alike name does not pass
    with pytest.raises(ValueError, match="MyAffine is not a refflow class that can be saved"):
        to_spec(MyAffine(2))
    with pytest.raises(ValueError, match="is not a refflow class that can be saved"):
        to_spec(Affine2(2))
    with pytest.raises(ValueError, match="to_spec: .*not a refflow class"):
        to_spec({"dim": 2})


def test_save_refuses_what_it_cannot_reload(tmp_path, monkeypatch):
    path = tmp_path / "m.npz"
    with pytest.raises(ValueError, match="not a refflow class"):
        save(path, object())
    shared = Affine(2)
    with pytest.raises(ValueError, match="shared parameters cannot be saved"):
        save(path, Chain([shared, Exp(2), shared]))
    monkeypatch.setattr(Exp, "_config", lambda self: {"dim": self.dim, "f": np.exp})
    with pytest.raises(ValueError, match="to_spec: Exp: config\\['f'\\] is a numpy.ufunc"):
        save(path, Exp(2))
    assert list(tmp_path.iterdir()) == []


def test_a_parameter_free_layer_used_twice_is_saved_as_copies(rng, tmp_path):
    reverse = Reverse(3)
    chain = Chain([Affine(3), reverse, Affine(3), reverse])
    randomize(chain.params, rng)
    save(tmp_path / "m.npz", chain)
    loaded = load(tmp_path / "m.npz")
    x = rng.normal(size=(4, 3))
    assert np.array_equal(loaded.inverse(x)[0], chain.inverse(x)[0])


# ------------------------------------------------------------------------ paths, atomicity
def test_the_path_is_used_exactly_as_given(tmp_path):
    layer = Affine(2)
    layer.params["shift"] = [1.0, 2.0]
    save(tmp_path / "model", layer)  # no .npz appended, unlike numpy.savez
    save(str(tmp_path / "other.npz"), layer)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "other.npz"]
    for name in ("model", "other.npz"):
        assert np.array_equal(load(tmp_path / name).params["shift"], [1.0, 2.0])
        assert np.array_equal(load(str(tmp_path / name)).params["shift"], [1.0, 2.0])
    with pytest.raises(FileNotFoundError):
        load(tmp_path / "model.npz")
    with pytest.raises(TypeError, match="refflow.io.save: path must be a str or os.PathLike"):
        save(3, layer)
    with pytest.raises(TypeError, match="refflow.io.load: path must be a str or os.PathLike"):
        load(None)


def test_saving_over_an_existing_file_replaces_it(tmp_path):
    path = tmp_path / "m.npz"
    save(path, Affine(2))
    save(path, Exp(3))
    assert isinstance(load(path), Exp) and os.listdir(tmp_path) == ["m.npz"]


@pytest.mark.parametrize("failure", [OSError("No space left on device"), KeyboardInterrupt()])
def test_an_interrupted_save_leaves_the_old_file_and_no_temporary(failure, tmp_path, monkeypatch):
    path = tmp_path / "m.npz"
    old = Affine(2)
    old.params["shift"] = [3.0, 4.0]
    save(path, old)
    before = path.read_bytes()
    real_write = refflow.io.files._write_npz

    def write_half_then_fail(f, entries):
        real_write(f, entries)
        f.seek(0)
        f.truncate(f.tell() // 2 + 100)
        raise failure

    monkeypatch.setattr(refflow.io.files, "_write_npz", write_half_then_fail)
    with pytest.raises(type(failure)):
        save(path, Exp(2))
    with pytest.raises(type(failure)):
        save(tmp_path / "new.npz", Exp(2))
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["m.npz"]
    monkeypatch.undo()
    assert np.array_equal(load(path).params["shift"], [3.0, 4.0])


def test_a_failed_replace_leaves_no_temporary(tmp_path, monkeypatch):
    def refuse(src, dst):
        raise PermissionError("replace refused")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(PermissionError):
        save(tmp_path / "m.npz", Affine(2))
    assert os.listdir(tmp_path) == []


def test_the_file_is_written_before_the_rename(tmp_path, monkeypatch):
    # what os.replace moves into place is already the complete, fsync-ed file
    seen = []
    real_replace, real_fsync = os.replace, os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (seen.append("fsync"), real_fsync(fd))[1])

    def replace(src, dst):
        seen.append("replace")
        assert os.path.dirname(src) == os.path.dirname(os.fspath(dst))
        assert isinstance(load(src), Affine)
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    save(tmp_path / "m.npz", Affine(2))
    assert seen[:2] == ["fsync", "replace"]


# ----------------------------------------------------------------------------- bad files
@pytest.fixture
def good(tmp_path, rng):
    """A saved model with params and buffers of several dtypes: ``(path, model)``."""
    model = Flow(DiagNormal(4), Chain([
        AffineCoupling(4, mask=[True, False, False, True], hidden=(5,), rng=rng),
        Permute(4, rng=rng), ActNorm(4, initialized=True), BatchNorm(4)]))
    randomize(model.params, rng)
    path = tmp_path / "good.npz"
    save(path, model)
    assert isinstance(load(path), Flow)
    return path, model


def test_truncated_files(good, tmp_path):
    path, _ = good
    data = path.read_bytes()
    bad = tmp_path / "truncated.npz"
    for length in (0, 3, 4, 30, 200, len(data) // 3, len(data) // 2, len(data) - 100,
                   len(data) - 22, len(data) - 1):
        bad.write_bytes(data[:length])
        _assert_clear_error(bad, "not a zip/npz archive|damaged or not a refflow model")


def test_random_bytes(tmp_path):
    gen = np.random.default_rng(0)
    bad = tmp_path / "random.npz"
    for prefix in (b"", b"PK\x03\x04", b"PK\x05\x06"):
        bad.write_bytes(prefix + gen.bytes(3000))
        _assert_clear_error(bad, "not a zip/npz archive|damaged or not a refflow model")


def test_a_npy_file_is_not_a_model(tmp_path):
    bad = tmp_path / "array.npy"
    np.save(bad, np.zeros(3))
    _assert_clear_error(bad, "a .npy array file, not a refflow model")


def test_a_pickled_object_array_is_refused_without_unpickling(good, tmp_path):
    path, _ = good
    header, arrays = _entries(path)

    class Boom:
        def __reduce__(self):  # would run on unpickling
            return (os.system, ("echo pwned",))

    for name in ("params/base.loc", "buffers/bijector.layers.1.permutation"):
        changed = dict(arrays)
        changed[name] = np.array([Boom(), 1.0], dtype=object)
        bad = tmp_path / "pickle.npz"
        _write(bad, header, changed, allow_pickle=True)
        _assert_clear_error(bad, f"entry '{name}' holds an object array .* never executes code")
    # a pickled header
    bad = tmp_path / "pickled_header.npz"
    with open(bad, "wb") as f:
        np.savez(f, header=np.array({"format": FORMAT_NAME}, dtype=object), **arrays,
                 allow_pickle=True)
    _assert_clear_error(bad, "entry 'header' holds an object array")


def test_a_flipped_byte_inside_an_array(good, tmp_path):
    path, model = good
    data = bytearray(path.read_bytes())
    weights = model.params["bijector.layers.0.conditioner.w0"]
    start = bytes(data).find(weights.tobytes())
    assert start > 0
    data[start + 13] ^= 0x10
    bad = tmp_path / "flipped.npz"
    bad.write_bytes(bytes(data))
    _assert_clear_error(bad, "damaged or not a refflow model .*(CRC|crc)")


def test_altered_array_bytes_fail_the_digest(good, tmp_path):
    # a consistent archive (valid CRCs) whose array differs from the digest in the header
    path, _ = good
    header, arrays = _entries(path)
    arrays["params/bijector.layers.2.shift"] = arrays["params/bijector.layers.2.shift"] + 1e-12
    bad = tmp_path / "altered.npz"
    _write(bad, header, arrays)
    _assert_clear_error(bad, "entry 'params/bijector.layers.2.shift' does not match its "
                             "SHA-256 digest")


def test_a_header_edited_to_another_shape(good, tmp_path):
    path, _ = good
    header, arrays = _entries(path)
    _record(header, "params/base.loc")["shape"] = [5]
    bad = tmp_path / "shape.npz"
    _write(bad, header, arrays)
    _assert_clear_error(bad, "entry 'params/base.loc' has shape \\(4,\\) but the header says "
                             "\\(5,\\)")


def test_a_consistent_file_of_another_shape_than_the_model(good, tmp_path):
    path, _ = good
    header, arrays = _entries(path)
    arrays["params/base.loc"] = np.zeros(5)
    _record(header, "params/base.loc")["shape"] = [5]
    bad = tmp_path / "shape.npz"
    _write(bad, header, arrays, redigest=True)
    _assert_clear_error(bad, "params/base.loc has shape \\(5,\\) in the file but the model built "
                             "from the spec expects \\(4,\\)")


@pytest.mark.parametrize("name", ["params/base.loc", "buffers/bijector.layers.3.running_var"])
@pytest.mark.parametrize("shape", [(1, 4), (4, 1), (2, 2)])
def test_a_consistent_file_of_the_same_size_but_another_shape(good, tmp_path, name, shape):
    """Same number of elements, other shape (a parameter and a buffer): refused by shape, not
    silently reshaped or broadcast into the model's ``(4,)`` array."""
    path, _ = good
    header, arrays = _entries(path)
    arrays[name] = arrays[name].reshape(shape)
    _record(header, name)["shape"] = list(shape)
    bad = tmp_path / "same_size.npz"
    _write(bad, header, arrays, redigest=True)
    shown = "\\(" + ", ".join(str(k) for k in shape) + "\\)"
    _assert_clear_error(bad, f"{name} has shape {shown} in the file but the model built from "
                             f"the spec expects \\(4,\\)")


def test_missing_and_extra_entries(good, tmp_path):
    path, _ = good
    header, arrays = _entries(path)
    bad = tmp_path / "entries.npz"
    missing = {k: v for k, v in arrays.items() if k != "buffers/bijector.layers.3.running_var"}
    _write(bad, header, missing)
    _assert_clear_error(bad, "missing \\['buffers/bijector.layers.3.running_var'\\], "
                             "unexpected \\[\\]")
    _write(bad, header, dict(arrays, **{"params/extra": np.zeros(2)}))
    _assert_clear_error(bad, "missing \\[\\], unexpected \\['params/extra'\\]")
    # listed in the header too: then the model built from the spec does not have it
    header["arrays"].append({"name": "params/extra", "dtype": "<f8", "shape": [2],
                             "sha256": "0" * 64})
    _write(bad, header, dict(arrays, **{"params/extra": np.zeros(2)}), redigest=True)
    _assert_clear_error(bad, "other params than the file: missing in the file \\[\\], not in "
                             "the model \\['extra'\\]")
    # or the header omits an array the model needs
    header, arrays = _entries(path)
    header["arrays"] = [r for r in header["arrays"] if r["name"] != "params/base.log_scale"]
    del arrays["params/base.log_scale"]
    _write(bad, header, arrays)
    _assert_clear_error(bad, "missing in the file \\['base.log_scale'\\]")
    # no header at all
    with open(bad, "wb") as f:
        np.savez(f, **arrays)
    _assert_clear_error(bad, "no 'header' entry")


@pytest.mark.parametrize("edit, match", [
    (lambda h: h.update(format_version=FORMAT_VERSION + 1),
     f"format version {FORMAT_VERSION + 1}, newer than the version {FORMAT_VERSION} this "
     f"refflow reads: it was written by a newer refflow"),
    (lambda h: h.update(format_version=0), "format_version 0 is not a valid version"),
    (lambda h: h.update(format_version="1"), "format_version must be an integer"),
    (lambda h: h.update(format_version=True), "format_version must be an integer"),
    (lambda h: h.update(format="numpy"), "format is 'numpy', not 'refflow-model'"),
    (lambda h: h.pop("training"), "missing keys \\['training'\\], unexpected keys \\[\\]"),
    (lambda h: h.update(code="print(1)"), "missing keys \\[\\], unexpected keys \\['code'\\]"),
    (lambda h: h.update(training=[1, 0]), "training must be a list of true/false"),
    (lambda h: h.update(training=[True]), "the header has 1 training flags but the model has "
                                          "5 bijectors"),
    (lambda h: h.update(refflow_version=1), "refflow_version must be a str"),
    (lambda h: h.update(spec=[]), "spec must be a JSON object"),
    (lambda h: h.update(arrays={}), "arrays must be a list"),
    (lambda h: h["arrays"][0].pop("sha256"), "arrays\\[0\\] must be an object with exactly"),
    (lambda h: h["arrays"][0].update(name="weights/w"), "names are 'params/<key>'"),
    (lambda h: h["arrays"][1].update(name=h["arrays"][0]["name"]), "lists the array .* twice"),
    (lambda h: h["arrays"][0].update(dtype="|O"), "the dtype '\\|O'; allowed"),
    (lambda h: h["arrays"][0].update(shape=[-1]), "a shape is a list of non-negative integers"),
    (lambda h: h["arrays"][0].update(shape=3), "a shape is a list of non-negative integers"),
    (lambda h: h["arrays"][0].update(sha256="abc"), "not 64 lowercase hex digits"),
    (lambda h: h["spec"].update({"class": "os.system"}), "from_spec: unknown class 'os.system'"),
    (lambda h: h["spec"]["config"]["base"].update(config={"dim": 0}),
     "cannot build DiagNormal from its config: ValueError: DiagNormal: dim must be a positive"),
    (lambda h: h["spec"]["config"]["bijector"]["config"]["layers"][1]["config"].update(
        permutation=[0, 1, 2, 0]), "cannot build Permute from its config"),
])
def test_a_header_that_breaks_the_schema(good, tmp_path, edit, match):
    path, _ = good
    header, arrays = _entries(path)
    edit(header)
    bad = tmp_path / "header.npz"
    _write(bad, header, arrays)
    _assert_clear_error(bad, match)


def test_a_header_that_is_not_json(good, tmp_path):
    path, _ = good
    header, arrays = _entries(path)
    bad = tmp_path / "json.npz"
    text = json.dumps(header)
    for broken, match in ((text[:-1], "not valid JSON"), ("[1, 2]", "must be a JSON object"),
                          ('{"format": 1, "format": 2}', "repeats the key 'format'"),
                          ("[" * 100_000 + "]" * 100_000, "not valid JSON")):
        _write(bad, broken, arrays)
        _assert_clear_error(bad, match)
    # NaN inside the spec
    bn = json.dumps(header).replace('"momentum": 0.1', '"momentum": NaN')
    assert bn != json.dumps(header)
    _write(bad, bn, arrays)
    _assert_clear_error(bad, "not valid JSON: the JSON holds NaN")
    # a header that is not a 0-d unicode array
    with open(bad, "wb") as f:
        np.savez(f, header=np.array([text]), **arrays)
    _assert_clear_error(bad, "'header' entry must be a 0-d unicode array")


def test_wrong_dtypes(good, tmp_path):
    path, _ = good
    bad = tmp_path / "dtype.npz"
    # float32 parameters, the header agreeing
    header, arrays = _entries(path)
    arrays["params/base.loc"] = arrays["params/base.loc"].astype(np.float32)
    _record(header, "params/base.loc")["dtype"] = "<f4"
    _write(bad, header, arrays, redigest=True)
    _assert_clear_error(bad, "parameter 'params/base.loc' the dtype float32; parameters are "
                             "float64")
    # float32 in the file, float64 in the header
    header, arrays = _entries(path)
    arrays["params/base.loc"] = arrays["params/base.loc"].astype(np.float32)
    _write(bad, header, arrays)
    _assert_clear_error(bad, "entry 'params/base.loc' has dtype '<f4' but the header says '<f8'")
    # a permutation stored as int32 (consistently): not what the model holds
    header, arrays = _entries(path)
    key = "buffers/bijector.layers.1.permutation"
    arrays[key] = arrays[key].astype(np.int32)
    _record(header, key)["dtype"] = "<i4"
    _write(bad, header, arrays, redigest=True)
    _assert_clear_error(bad, f"{key} has dtype int32 in the file but the model built from the "
                             f"spec expects int64")
    # big-endian data
    header, arrays = _entries(path)
    arrays["params/base.loc"] = arrays["params/base.loc"].astype(">f8")
    _write(bad, header, arrays)
    _assert_clear_error(bad, "has dtype '>f8' but the header says '<f8'")


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_values(good, tmp_path, value):
    path, _ = good
    bad = tmp_path / "nan.npz"
    for name in ("params/bijector.layers.0.conditioner.w1",
                 "buffers/bijector.layers.3.running_mean"):
        header, arrays = _entries(path)
        arrays[name] = arrays[name].copy()
        arrays[name].flat[1] = value
        _write(bad, header, arrays, redigest=True)
        _assert_clear_error(bad, f"entry '{name}' holds NaN or inf")


def test_buffers_must_agree_with_the_configuration(good, tmp_path):
    path, model = good
    bad = tmp_path / "buffer.npz"
    # a valid permutation, but not the one in the (validated) config
    header, arrays = _entries(path)
    key = "buffers/bijector.layers.1.permutation"
    arrays[key] = arrays[key][::-1].copy()
    _write(bad, header, arrays, redigest=True)
    _assert_clear_error(bad, "does not reproduce the file's spec: its buffers disagree")
    # a coupling mask that disagrees with the conditioner's sizes
    header, arrays = _entries(path)
    key = "buffers/bijector.layers.0.mask"
    arrays[key] = np.array([True, True, False, False])
    _write(bad, header, arrays, redigest=True)
    _assert_clear_error(bad, "does not reproduce the file's spec")
    # the same coupling mask edited in the config alone
    header, arrays = _entries(path)
    header["spec"]["config"]["bijector"]["config"]["layers"][0]["config"]["mask"] = \
        [True, True, False, False]
    _write(bad, header, arrays)
    _assert_clear_error(bad, "does not reproduce the file's spec")


def test_compressed_entries_are_refused(good, tmp_path):
    path, _ = good
    header, arrays = _entries(path)
    bad = tmp_path / "compressed.npz"
    with open(bad, "wb") as f:
        np.savez_compressed(f, header=np.array(json.dumps(header)), **arrays)
    _assert_clear_error(bad, "is compressed; refflow model files store every entry uncompressed")


def test_an_entry_that_is_not_npy(good, tmp_path):
    path, _ = good
    bad = tmp_path / "member.npz"
    bad.write_bytes(path.read_bytes())
    with zipfile.ZipFile(bad, "a") as z:
        z.writestr("script.py", "import os")
    _assert_clear_error(bad, "unexpected \\['script.py'\\]")


def test_a_failed_load_leaves_the_original_untouched(good, tmp_path):
    # the loaded model is a new object: nothing the caller holds is ever assigned
    path, model = good
    snapshot = {k: v.copy() for k, v in model.params.items()}
    header, arrays = _entries(path)
    arrays["params/base.loc"] = np.full(4, np.nan)
    bad = tmp_path / "nan.npz"
    _write(bad, header, arrays, redigest=True)
    with pytest.raises(ValueError):
        load(bad)
    _assert_same_arrays(snapshot, dict(model.params))


def test_load_accepts_path_objects_and_reports_missing_files(good, tmp_path):
    path, _ = good
    assert isinstance(load(pathlib.Path(path)), Flow)
    with pytest.raises(FileNotFoundError):
        load(tmp_path / "absent.npz")
