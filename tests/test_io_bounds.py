"""refflow.io: declarations and bounds. A spec's declared arrays equal the built object's for
every registry case, builder and estimator (so a declaration cannot drift from its
constructor); specs beyond the limits and files whose arrays disagree with their spec are
refused before anything is allocated or read."""

import dataclasses
import io
import json
import tracemalloc
import zipfile

import numpy as np
import pytest

import refflow
import refflow.flows
from refflow import NSF
from refflow.io import DEFAULT_LIMITS, Limits, declare, from_spec, load, save, to_spec
from refflow.io.spec import registered_classes

from .io_models import MODELS, score
from .registry import CASES

#: Bytes Python may allocate while refusing a spec or a file that asks for gigabytes: parsing
#: the small JSON header, a few dicts and the message (measured: well under 1 MiB), plus
#: SPEC_FACTOR bytes per character of the spec's JSON (the checker's work list: one entry per
#: list or dict element; measured ~12 for a chain of 10,001 small specs).
SMALL_ALLOCATION = 4 << 20
SPEC_FACTOR = 20


def _arrays(obj):
    return {"params": {k: v.shape for k, v in obj.params.items()},
            "buffers": {k: (v.dtype.str, v.shape) for k, v in getattr(obj, "buffers", {}).items()}}


def _assert_declared(obj):
    declared = declare(to_spec(obj))
    built = _arrays(obj)
    assert declared == built
    for group in ("params", "buffers"):  # the same order too
        assert list(declared[group]) == list(built[group])


# ------------------------------------------------------------ declarations vs built objects
@pytest.mark.parametrize("case_id", sorted(CASES))
def test_every_registry_case_declares_exactly_its_arrays(case_id):
    _assert_declared(CASES[case_id](3)[0])


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_builder_and_estimator_declares_exactly_its_arrays(name):
    _assert_declared(MODELS[name](0)[0])


@pytest.mark.parametrize("case_id", sorted(CASES))
def test_declarations_follow_the_constructor_defaults(case_id):
    # a hand-written spec may leave out arguments: drop each optional one in turn, and the
    # declaration must still equal what the constructor builds from that config
    spec = json.loads(json.dumps(to_spec(CASES[case_id](3)[0])))
    if spec["class"] == "Inverse":
        spec = spec["config"]["bijector"]
    if spec["class"] == "Chain":
        return  # its layers are cases of their own
    checked = 0
    for key in list(spec["config"]):
        config = {k: v for k, v in spec["config"].items() if k != key}
        partial = {"class": spec["class"], "config": config}
        try:
            built = from_spec(partial)
        except ValueError:
            with pytest.raises(ValueError):  # a required argument: refused alike
                declare(partial) if key == "dim" else (_ for _ in ()).throw(ValueError())
            continue
        assert declare(partial) == _arrays(built), key
        checked += 1
    assert checked or list(spec["config"]) == ["dim"]


def test_every_registered_class_has_a_declaration_and_a_case():
    classes = registered_classes()
    assert {"Flow", "FlowDensity", "StandardNormal", "DiagNormal", "Chain"} <= set(classes)
    for name, cls in classes.items():
        assert "_declare" in vars(cls) or any("_declare" in vars(base) for base in cls.__mro__[1:]
                                              if base.__name__ != "Bijector"), name


# ------------------------------------------------------------------------- spec bounds
def _refused_quickly(spec, match, **kwargs):
    """``from_spec`` refuses ``spec`` with ``match``, allocating almost nothing."""
    try:
        size = len(json.dumps(spec))
    except ValueError:  # an integer too long to print (over 4300 digits): a tiny spec otherwise
        size = 0
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=match) as info:
            from_spec(spec, **kwargs)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "\n" not in str(info.value)
    assert peak < SMALL_ALLOCATION + SPEC_FACTOR * size, peak
    return info.value


@pytest.mark.parametrize("spec, elements", [
    ({"class": "Affine", "config": {"dim": 10**12}}, 2 * 10**12),
    ({"class": "LULinear", "config": {"dim": 10**6}}, 10**12 + 2 * 10**6),
    ({"class": "MaskedAffineAutoregressive", "config": {"dim": 2, "hidden": [10**6, 10**6]}},
     # w0 (10^6, 2), b0 (10^6,), w1 (10^6, 10^6), b1 (10^6,), w2 (4, 10^6), b2 (4,)
     2 * 10**6 + 10**6 + 10**12 + 10**6 + 4 * 10**6 + 4),
    ({"class": "RationalQuadraticSpline",
      "config": {"dim": 10**6, "n_bins": 10**6, "parameterization": "zuko"}},
     3 * 10**12 - 10**6),
    ({"class": "BlockNeuralAutoregressive", "config": {"dim": 1000, "hidden_factors": [1000]}},
     # blocks (1, 1000, 1): w0 (10^6, 1000), g0, b0 (10^6,); w1 (1000, 10^6), g1, b1 (1000,)
     2 * 10**9 + 2 * 10**6 + 2 * 1000),
])
def test_a_spec_asking_for_a_trillion_elements_fails_without_allocating(spec, elements):
    _refused_quickly(spec, f"{spec['class']} asks for {elements} array elements, more than "
                           f"the limit {DEFAULT_LIMITS.max_params} \\(Limits.max_params")


def test_a_chain_of_many_large_layers_fails_at_the_total():
    layer = {"class": "Affine", "config": {"dim": 10**7}}  # 2e7 elements each: under the limit
    spec = {"class": "Chain", "config": {"layers": [layer] * 6}}
    _refused_quickly(spec, "Chain asks for 120000000 array elements, more than the limit")
    flow = {"class": "Flow", "config": {"base": {"class": "DiagNormal", "config": {"dim": 10**7}},
                                        "bijector": {"class": "Chain",
                                                     "config": {"layers": [layer] * 5}}}}
    # the chain's 10^8 pass; with the base's 2 * 10^7 the flow does not
    _refused_quickly(flow, "Flow asks for 120000000 array elements")


def test_the_other_limits():
    exp = {"class": "Exp", "config": {"dim": 2}}
    many = {"class": "Chain", "config": {"layers": [exp] * 10_001}}
    _refused_quickly(many, "the spec names more than 10000 objects \\(Limits.max_layers")
    deep = exp
    for _ in range(40):
        deep = {"class": "Inverse", "config": {"bijector": deep}}
    _refused_quickly(deep, "Inverse is nested more than 32 specs deep \\(Limits.max_depth\\)")
    long = {"class": "Logit", "config": {"dim": 2, "alpha": 0.0, "x" * 20_000: 1}}
    _refused_quickly(long, "has a key of 20000 characters, more than the limit 10000")
    text = {"class": "AffineCoupling", "config": {"dim": 2, "activation": "r" * 10_001}}
    _refused_quickly(text, "Affine.*config\\['activation'\\] is a string of 10001 characters")
    items = {"class": "Permute", "config": {"dim": 3, "permutation": [0] * 10**6}}
    _refused_quickly(items, "more than 1000 list and dict elements \\(Limits.max_items\\)",
                     limits=Limits(max_items=1000))
    # larger limits let a legitimately larger model through (and build it)
    big = {"class": "Affine", "config": {"dim": 60_000_000}}
    _refused_quickly(big, "Affine asks for 120000000 array elements")
    assert declare(big, Limits(max_params=2 * 60_000_000))["params"]["shift"] == (60_000_000,)
    assert len(from_spec(many, Limits(max_layers=20_000))) == 10_001


def test_limits_are_checked():
    with pytest.raises(ValueError, match="Limits: max_params must be a positive int, got 0"):
        Limits(max_params=0)
    with pytest.raises(ValueError, match="max_depth must be a positive int, got True"):
        Limits(max_depth=True)
    with pytest.raises(TypeError, match="limits must be a refflow.io.Limits or None, got dict"):
        from_spec({"class": "Exp", "config": {"dim": 1}}, {"max_params": 10})
    with pytest.raises(TypeError, match="load.*limits must be a refflow.io.Limits"):
        load("model.npz", limits=10)
    assert dataclasses.replace(DEFAULT_LIMITS, max_params=5).max_layers == 10_000


def test_unknown_classes_and_bad_configs_are_named_in_one_line():
    error = _refused_quickly({"class": "subprocess.Popen", "config": {}},
                             "from_spec: unknown class 'subprocess.Popen'")
    assert "Affine" in str(error)  # the allowed names are listed
    _refused_quickly({"class": "x" * 5000, "config": {}}, "unknown class 'xxxx.*\\.\\.\\.'")
    _refused_quickly({"class": "Affine", "config": {"dim": 3, "bogus": 1}},
                     "cannot build Affine from its config: TypeError: .*'bogus'")
    _refused_quickly({"class": "Affine", "config": {"dim": "3"}},
                     "cannot build Affine from its config: TypeError: Affine: dim")
    _refused_quickly({"class": "Chain", "config": {"layers": {"a": 1}}},
                     "cannot build Chain from its config: TypeError: Chain: layers must be a "
                     "list")
    _refused_quickly({"class": "Householder", "config": {"dim": 3, "n_reflections": -1}},
                     "cannot build Householder from its config: ValueError")


# ------------------------------------------------------------------------------- files
def _npy_header(descr, shape, fortran=False):
    """A version 1.0 ``.npy`` header written by hand (so it can claim anything)."""
    text = f"{{'descr': {descr!r}, 'fortran_order': {fortran}, 'shape': {tuple(shape)!r}, }}"
    pad = 64 - (10 + len(text) + 1) % 64
    text = (text + " " * (pad % 64) + "\n").encode("latin1")
    return b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text


def _members(path):
    with zipfile.ZipFile(path) as z:
        return {info.filename: z.read(info) for info in z.infolist()}


def _write_members(path, members):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for name, data in members.items():
            z.writestr(name, data)


def _header_of(members):
    return json.loads(str(np.load(io.BytesIO(members["header.npy"]), allow_pickle=False)[()]))


def _with_header(members, header):
    buf = io.BytesIO()
    np.save(buf, np.array(json.dumps(header)), allow_pickle=False)
    return dict(members, **{"header.npy": buf.getvalue()})


def _refused_file(path, match, **kwargs):
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=match) as info:
            load(path, **kwargs)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    message = str(info.value)
    assert "\n" not in message and message.startswith("refflow.io.load(")
    assert peak < SMALL_ALLOCATION, peak
    return info.value


@pytest.fixture
def nsf_file(tmp_path):
    """The reported attack's starting point: a saved 2-layer ``NSF(4, hidden=(8, 8))``."""
    model = NSF(4, n_layers=2, hidden=(8, 8), rng=0)
    path = tmp_path / "nsf.npz"
    save(path, model)
    return path, model


def test_a_small_file_asking_for_wide_layers_is_refused_before_anything_is_built(nsf_file,
                                                                                  tmp_path):
    path, _ = nsf_file
    members = _members(path)
    text = json.dumps(_header_of(members))
    assert text.count('"hidden": [8, 8]') == 2
    bad = tmp_path / "wide.npz"
    for width in (20_000, 40_000):
        edited = json.loads(text.replace('"hidden": [8, 8]', f'"hidden": [{width}, {width}]'))
        _write_members(bad, _with_header(members, edited))
        assert bad.stat().st_size < 50_000
        _refused_file(bad, "MaskedSplineAutoregressive asks for [0-9]+ array elements, more "
                           "than the limit 100000000")
        # limits raised: the declaration still disagrees with the file's arrays
        _refused_file(bad, "params/bijector.layers.0.made.w0 has shape \\(8, 4\\) in the file "
                           f"but the model built from the spec expects \\({width}, 4\\)",
                      limits=Limits(max_params=10**12))
    # widths under the limit: refused by the same comparison, nothing built
    edited = json.loads(text.replace('"hidden": [8, 8]', '"hidden": [3000, 3000]'))
    _write_members(bad, _with_header(members, edited))
    _refused_file(bad, "made.w0 has shape \\(8, 4\\) in the file but the model built from the "
                       "spec expects \\(3000, 4\\)")


def test_a_huge_npy_header_shape_is_refused_before_reading(nsf_file, tmp_path):
    path, _ = nsf_file
    members = _members(path)
    name = "params/bijector.layers.0.made.w0"
    data = members[f"{name}.npy"]
    body = data[len(_npy_header("<f8", (8, 4))):]
    assert len(body) == 8 * 4 * 8
    bad = tmp_path / "huge.npz"
    huge = (10**6, 10**6)
    members_huge = dict(members, **{f"{name}.npy": _npy_header("<f8", huge) + body})
    _write_members(bad, members_huge)
    _refused_file(bad, f"entry '{name}' has shape \\(1000000, 1000000\\) but the header says "
                       f"\\(8, 4\\)")
    # the JSON header agreeing: then the spec disagrees
    header = _header_of(members)
    next(r for r in header["arrays"] if r["name"] == name)["shape"] = list(huge)
    _write_members(bad, _with_header(members_huge, header))
    _refused_file(bad, f"entry '{name}' has [0-9]+ bytes in the archive, which cannot hold its "
                       f"shape \\(1000000, 1000000\\)")
    # everything agreeing on the huge shape (spec edited, limits raised): the archive cannot
    # hold it, and the data is never read
    text = json.dumps(header).replace('"hidden": [8, 8]', '"hidden": [1000000, 8]', 1)
    _write_members(bad, _with_header(members_huge, json.loads(text)))
    _refused_file(bad, f"entry '{name}' has [0-9]+ bytes in the archive, which cannot hold its "
                       f"shape \\(1000000, 1000000\\)", limits=Limits(max_params=10**13))


def test_fortran_order_and_inconsistent_sizes_are_refused(nsf_file, tmp_path):
    path, _ = nsf_file
    members = _members(path)
    name = "params/bijector.layers.0.made.w0"
    body = members[f"{name}.npy"][len(_npy_header("<f8", (8, 4))):]
    bad = tmp_path / "fortran.npz"
    _write_members(bad, dict(members, **{f"{name}.npy": _npy_header("<f8", (8, 4), True) + body}))
    _refused_file(bad, f"entry '{name}' is stored in Fortran order")


def test_a_truncated_or_corrupted_archive_is_refused_in_one_line(nsf_file, tmp_path):
    path, _ = nsf_file
    data = path.read_bytes()
    bad = tmp_path / "bad.npz"
    for cut in (10, 100, len(data) // 2, len(data) - 10):
        bad.write_bytes(data[:cut])
        _refused_file(bad, "damaged or not a refflow model|not a zip/npz archive")
    # the central directory claiming a member far larger than the file
    corrupt = bytearray(data)
    central = bytes(corrupt).rfind(b"PK\x01\x02")
    corrupt[central + 24:central + 28] = (1 << 31).to_bytes(4, "little")   # uncompressed size
    bad.write_bytes(bytes(corrupt))
    _refused_file(bad, "damaged|differ|cannot hold|exceeds the file")


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_builder_and_estimator_round_trips_bit_for_bit(name, tmp_path):
    model, x, context = MODELS[name](0)
    path = tmp_path / "model.npz"
    save(path, model)
    loaded = load(path)
    assert type(loaded) is type(model)
    assert json.dumps(to_spec(loaded)) == json.dumps(to_spec(model))
    for key, value in model.params.items():
        assert np.array_equal(loaded.params[key], value) and loaded.params[key].dtype == value.dtype
    a, b = score(model, x, context), score(loaded, x, context)
    assert a.dtype == b.dtype and np.array_equal(a, b)


def test_load_is_exported_with_its_limits():
    assert refflow.load is load
    assert refflow.io.Limits is Limits and refflow.io.DEFAULT_LIMITS == Limits()


# ------------------------------------------------------------- building draws nothing
def _no_random_generators(monkeypatch):
    """Make every real generator refflow could create fail: ``check_rng`` seeds one with
    ``np.random.default_rng`` (the placeholder generator is built on ``PCG64`` directly)."""
    def boom(*args, **kwargs):
        raise AssertionError("a random generator was created while loading")
    monkeypatch.setattr(np.random, "default_rng", boom)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_loading_a_builder_file_draws_no_random_numbers(name, tmp_path, monkeypatch):
    model, x, context = MODELS[name](0)
    path = tmp_path / "model.npz"
    save(path, model)
    expected = score(model, x, context)
    _no_random_generators(monkeypatch)
    loaded = load(path)
    monkeypatch.undo()
    got = score(loaded, x, context)
    assert got.dtype == expected.dtype and np.array_equal(got, expected)


def test_loading_a_registry_case_draws_no_random_numbers(tmp_path, monkeypatch):
    paths = {}
    for case_id, factory in CASES.items():
        paths[case_id] = tmp_path / f"{case_id}.npz"
        save(paths[case_id], factory(5)[0])
    _no_random_generators(monkeypatch)
    loaded = {case_id: load(path) for case_id, path in paths.items()}
    monkeypatch.undo()
    for case_id, layer in loaded.items():
        original = CASES[case_id](5)[0]
        for key, value in original.params.items():
            assert np.array_equal(layer.params[key], value), (case_id, key)


def test_outside_loading_generators_still_draw(monkeypatch):
    # the placeholder generator exists only inside the load's build
    a = NSF(2, n_layers=1, hidden=(4,), rng=1)
    b = NSF(2, n_layers=1, hidden=(4,), rng=2)
    assert not np.array_equal(a.params["bijector.layers.0.made.w0"],
                              b.params["bijector.layers.0.made.w0"])


# --------------------------------------------------------------- valid files, save's check
#: Peak allocation of a valid load, in multiples of the file's array bytes: the arrays read
#: from the file (1x), the built model's own arrays (1x), constructor temporaries such as
#: MADE's masked weights ``w * mask`` (up to 1x more) and the masks; measured ~4.1 for MAF and
#: NSF, 3.8 for RealNVP. Plus LOAD_BASE for the header, the objects and the checks.
LOAD_FACTOR = 6
LOAD_BASE = 2 << 20


@pytest.mark.parametrize("model", [
    lambda: refflow.NSF(8, n_layers=3, hidden=(256, 256), rng=0),
    lambda: refflow.MAF(16, n_layers=2, hidden=(512, 512), rng=0),
    lambda: refflow.RealNVP(4, n_layers=4, hidden=(64, 64), batch_norm=True, rng=0),
    lambda: refflow.flows.GF(6, n_layers=2, n_components=1000, rng=0),
], ids=["nsf", "maf", "realnvp", "gf"])
def test_a_valid_load_costs_a_small_multiple_of_the_file_arrays(model, tmp_path):
    model = model()
    path = tmp_path / "model.npz"
    save(path, model)
    array_bytes = sum(v.nbytes for v in model.params.values()) + sum(
        v.nbytes for v in model.buffers.values())
    assert array_bytes > 100_000
    tracemalloc.start()
    try:
        loaded = load(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < LOAD_BASE + LOAD_FACTOR * array_bytes, (peak, array_bytes)
    for key, value in model.params.items():
        assert np.array_equal(loaded.params[key], value)


def test_save_refuses_an_object_whose_declaration_disagrees(tmp_path, monkeypatch):
    # a class whose _declare drifted from its constructor: caught when writing, not reading
    layer = refflow.Affine(3)
    monkeypatch.setattr(refflow.Affine, "_declare",
                        classmethod(lambda cls, config: {"params": {"shift": (3,)},
                                                         "buffers": {}}))
    path = tmp_path / "drift.npz"
    with pytest.raises(ValueError, match="Affine declares other arrays than it has .*"
                                         "log_scale"):
        save(path, layer)
    assert not path.exists()


def test_integers_beyond_int64_are_refused_by_the_spec_check():
    for spec in ({"class": "Affine", "config": {"dim": 10**5000}},
                 {"class": "MaskedAffineAutoregressive", "config": {"dim": 2, "hidden": [2**63]}}):
        _refused_quickly(spec, "from_spec: .*config\\['(dim|hidden)'\\].* is an integer of "
                               "[0-9]+ bits; a spec's integers lie within")
    # within int64 but far beyond the limits: the element count says so
    _refused_quickly({"class": "Affine", "config": {"dim": 2**62}},
                     f"Affine asks for {2**63} array elements")
