"""Fuzzing the model-file format: ``refflow.io.load`` of mutated valid files.

Starting from valid files of every builder (and the base distributions, a fitted and an
unfitted ``FlowDensity``), hypothesis mutates

- the JSON header: numbers scaled up, lists repeated, keys dropped or duplicated, types swapped;
- the ``.npy`` header of one array entry: its shape, dtype or Fortran order;
- bytes of the archive: flipped, overwritten, inserted, or the file truncated.

``load`` must then either raise ``ValueError``/``TypeError`` with one line, or return a model
that is exactly what the file says (its spec, every array bit for bit, its train/eval flags)
and, when the mutation left all of these as they were, scores bit for bit as the original.
Every call runs under ``tracemalloc``, and its peak must stay within ``MEMORY_BASE`` plus
``MEMORY_FACTOR`` times the file's size. Times are recorded and printed (run with ``-s``), not
asserted: the machine is shared. ``benchmarks/fuzz_io.py`` runs the same tests with a larger
budget (``REFFLOW_IO_FUZZ_EXAMPLES``).
"""

import collections
import io
import json
import math
import os
import time
import tracemalloc
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from refflow.io import load, save, to_spec

from ..io_models import MODELS, score

#: Examples per mutation family (the CI budget; the benchmark script raises it).
EXAMPLES = int(os.environ.get("REFFLOW_IO_FUZZ_EXAMPLES", "120"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow,
                                       HealthCheck.function_scoped_fixture])
#: Peak bytes a load may allocate: interpreter-level work (the JSON header parsed, messages,
#: the small model built and its arrays: measured up to ~1 MiB for these files) ...
MEMORY_BASE = 8 << 20
#: ... plus this many bytes per byte of the file (the header's JSON is held as UCS-4 text and
#: parsed to Python objects, ~40 bytes each for a few bytes of JSON; a header whose lists were
#: repeated is most of the file).
MEMORY_FACTOR = 64

OUTCOMES = collections.Counter()
TIMES = collections.defaultdict(list)
PEAKS = collections.defaultdict(list)  # (peak bytes, file bytes) per load


@pytest.fixture(scope="module", autouse=True)
def _report():
    yield
    if OUTCOMES:
        print("\nio fuzz outcomes:")
        for key in sorted(OUTCOMES):
            print(f"  {key}: {OUTCOMES[key]}")
        for family, times in sorted(TIMES.items()):
            peak, size = max(PEAKS[family])
            ratio = max(p / max(s, 1) for p, s in PEAKS[family])
            print(f"  {family}: {len(times)} loads, slowest {max(times) * 1e3:.1f} ms "
                  f"(provisional: shared machine, tracemalloc on); largest peak {peak} bytes "
                  f"(file {size} bytes), largest peak / file size {ratio:.1f}")


# ------------------------------------------------------------------------- valid files
class Original:
    """A valid file's members, its parsed header and arrays, and the model's scores."""

    def __init__(self, name, tmp):
        model, self.x, self.context = MODELS[name](0)
        path = tmp / f"{name}.npz"
        save(path, model)
        self.data = path.read_bytes()
        self.members = _members(self.data)
        self.header, self.arrays = _parse(self.data)
        self.score = score(model, self.x, self.context)


@pytest.fixture(scope="module")
def originals(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("io_fuzz")
    return {name: Original(name, tmp) for name in sorted(MODELS)}


def _members(data):
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        return {info.filename: z.read(info) for info in z.infolist()}


def _archive(members):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


def _parse(data):
    """``(header, arrays)`` read with numpy and json alone (no refflow code)."""
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        arrays = {name: npz[name] for name in npz.files}
    return json.loads(str(arrays.pop("header")[()])), arrays


def _npy(array_bytes_or_text):
    buf = io.BytesIO()
    np.save(buf, np.array(array_bytes_or_text), allow_pickle=False)
    return buf.getvalue()


# ---------------------------------------------------------------------- JSON mutations
class Pairs(list):
    """A JSON object written from ``(key, value)`` pairs, so that a key can repeat."""


def _dumps(value):
    if isinstance(value, Pairs):
        return "{" + ", ".join(f"{json.dumps(k)}: {_dumps(v)}" for k, v in value) + "}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)}: {_dumps(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_dumps(v) for v in value) + "]"
    return json.dumps(value)


def _paths(value, path=()):
    """Every path to a node of a JSON value (dict keys and list indices)."""
    yield path
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _paths(item, path + (key,))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _paths(item, path + (i,))


def _get(value, path):
    for key in path:
        value = value[key]
    return value


def _set(root, path, new):
    if not path:
        return new
    _get(root, path[:-1])[path[-1]] = new
    return root


SCALES = [-1, 0, 2, 10, 1000, 10**6, 10**9, 10**12, 10**18, 2**63, 10**30]
SWAPS = [None, True, "", "x" * 50, 0, -1, 1.5, [], {}, [1, 2], {"class": "Exp"}]


@st.composite
def json_mutation(draw, original):
    header = json.loads(json.dumps(original.header))
    paths = list(_paths(header))
    path = paths[draw(st.integers(0, len(paths) - 1))]
    node = _get(header, path)
    kinds = ["swap"]
    if isinstance(node, (int, float)) and not isinstance(node, bool):
        kinds += ["scale", "scale"]
    if isinstance(node, list) and node:
        kinds += ["repeat", "repeat"]
    if isinstance(node, dict) and node:
        kinds += ["drop", "duplicate"]
    kind = draw(st.sampled_from(kinds))
    if kind == "scale":
        factor = draw(st.sampled_from(SCALES))
        new = node * factor if isinstance(node, int) or factor in (0, -1) else node * float(factor)
        header = _set(header, path, new if not isinstance(new, float) or math.isfinite(new)
                      else 1e308)
    elif kind == "repeat":
        header = _set(header, path, node * draw(st.sampled_from([2, 3, 10, 1000])))
    elif kind == "drop":
        key = draw(st.sampled_from(sorted(node)))
        del node[key]
    elif kind == "duplicate":
        key = draw(st.sampled_from(sorted(node)))
        twin = draw(st.sampled_from(SWAPS + [node[key]]))
        header = _set(header, path, Pairs(list(node.items()) + [(key, twin)]))
    else:
        header = _set(header, path, draw(st.sampled_from(SWAPS)))
    text = _dumps(header)
    return kind, _archive(dict(original.members, **{"header.npy": _npy(text)}))


# ----------------------------------------------------------------------- npy mutations
DTYPES = ["<f8", ">f8", "<f4", "<f2", "<i8", "<i4", "|u1", "|b1", "<c16", "|O", "|V8", "<U3",
          "<M8[s]", "[('a', '<f8')]"]


def _npy_header(descr, shape, fortran):
    descr = descr if descr.startswith("[") else repr(descr)
    text = f"{{'descr': {descr}, 'fortran_order': {fortran}, 'shape': {tuple(shape)!r}, }}"
    text += " " * ((64 - (10 + len(text) + 1) % 64) % 64) + "\n"
    text = text.encode("latin1")
    return b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text


@st.composite
def npy_mutation(draw, original):
    names = sorted(n for n in original.members if n != "header.npy")
    if not names:
        names = ["header.npy"]
    member = draw(st.sampled_from(names))
    data = original.members[member]
    arr = np.load(io.BytesIO(data), allow_pickle=False)
    header_length = 10 + int.from_bytes(data[8:10], "little")
    body = data[header_length:]
    descr, shape, fortran = arr.dtype.str, list(arr.shape), False
    kind = draw(st.sampled_from(["shape", "shape", "dtype", "fortran"]))
    if kind == "shape":
        how = draw(st.sampled_from(["scale", "append", "drop", "huge", "zero"]))
        if how == "scale" and shape:
            i = draw(st.integers(0, len(shape) - 1))
            shape[i] *= draw(st.sampled_from([2, 10, 10**6, 10**12]))
        elif how == "append":
            shape.append(draw(st.sampled_from([1, 2, 10**9])))
        elif how == "drop" and shape:
            shape.pop()
        elif how == "huge":
            shape = [10**9] * max(1, len(shape))
        else:
            shape = [0] * max(1, len(shape))
    elif kind == "dtype":
        descr = draw(st.sampled_from(DTYPES))
    else:
        fortran = True
    members = dict(original.members, **{member: _npy_header(descr, shape, fortran) + body})
    return f"npy-{kind}", _archive(members)


# ---------------------------------------------------------------------- byte mutations
@st.composite
def byte_mutation(draw, original):
    data = bytearray(original.data)
    kind = draw(st.sampled_from(["flip", "overwrite", "insert", "truncate"]))
    pos = draw(st.integers(0, len(data) - 1))
    if kind == "flip":
        for _ in range(draw(st.integers(1, 4))):
            data[pos] ^= 1 << draw(st.integers(0, 7))
            pos = draw(st.integers(0, len(data) - 1))
    elif kind == "overwrite":
        chunk = draw(st.binary(min_size=1, max_size=16))
        data[pos:pos + len(chunk)] = chunk
    elif kind == "insert":
        data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
    else:
        del data[pos:]
    return f"bytes-{kind}", bytes(data)


# ---------------------------------------------------------------------------- the oracle
def _same_arrays(a, b):
    return list(a) == list(b) and all(
        a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and np.array_equal(a[k], b[k])
        for k in a)


def _nodes(model):
    if callable(getattr(model, "_children", None)):
        return [model] + [n for child in model._children() for n in _nodes(child)]
    inner = getattr(model, "bijector", None) or getattr(model, "flow_", None)
    return [] if inner is None else _nodes(inner)


def _check(original, family, kind, data, tmp_path):
    path = tmp_path / "fuzzed.npz"
    path.write_bytes(data)
    tracemalloc.start()
    start = time.perf_counter()
    try:
        loaded = load(path)
        error = None
    except (ValueError, TypeError) as exc:
        loaded, error = None, exc
    finally:
        elapsed = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    TIMES[family].append(elapsed)
    PEAKS[family].append((peak, len(data)))
    assert peak <= MEMORY_BASE + MEMORY_FACTOR * len(data), (kind, peak, len(data))
    if error is not None:
        message = str(error)
        assert "\n" not in message and message.startswith("refflow.io.load("), message
        OUTCOMES[f"{kind}: refused"] += 1
        return
    # accepted: the model is exactly what the file says
    header, arrays = _parse(data)
    assert json.loads(json.dumps(to_spec(loaded))) == header["spec"]
    stored = {**{f"params/{k}": v for k, v in loaded.params.items()},
              **{f"buffers/{k}": v for k, v in getattr(loaded, "buffers", {}).items()}}
    assert _same_arrays({k: arrays[k] for k in stored}, stored)
    assert set(stored) == set(arrays)
    assert [n.training for n in _nodes(loaded)] == header["training"]
    unchanged = (header["spec"] == original.header["spec"]
                 and header["training"] == original.header["training"]
                 and _same_arrays(arrays, original.arrays))
    if unchanged:
        got = score(loaded, original.x, original.context)
        assert got.dtype == original.score.dtype and np.array_equal(got, original.score)
    OUTCOMES[f"{kind}: loaded ({'same model' if unchanged else 'as the file says'})"] += 1


NAMES = sorted(MODELS)


@FUZZ
@given(data=st.data())
def test_mutated_json_headers(originals, tmp_path, data):
    original = originals[data.draw(st.sampled_from(NAMES), label="model")]
    kind, fuzzed = data.draw(json_mutation(original), label="mutation")
    _check(original, "json", f"json-{kind}", fuzzed, tmp_path)


@FUZZ
@given(data=st.data())
def test_mutated_npy_headers(originals, tmp_path, data):
    original = originals[data.draw(st.sampled_from(NAMES), label="model")]
    kind, fuzzed = data.draw(npy_mutation(original), label="mutation")
    _check(original, "npy", kind, fuzzed, tmp_path)


@FUZZ
@given(data=st.data())
def test_mutated_archive_bytes(originals, tmp_path, data):
    original = originals[data.draw(st.sampled_from(NAMES), label="model")]
    kind, fuzzed = data.draw(byte_mutation(original), label="mutation")
    _check(original, "bytes", kind, fuzzed, tmp_path)


def test_the_unmutated_files_load_as_the_same_models(originals, tmp_path):
    # the oracle's own baseline: every starting file is accepted and scores as its model
    for name, original in originals.items():
        _check(original, "baseline", f"baseline-{name}", original.data, tmp_path)
    assert sum(v for k, v in OUTCOMES.items() if k.startswith("baseline")) == len(originals)
