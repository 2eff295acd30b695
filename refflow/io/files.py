r"""Save and load models: one ``.npz`` file that never executes code when it is read.

>>> import os, tempfile
>>> import numpy as np
>>> from refflow import Affine, Chain, Flow, Permute, StandardNormal
>>> from refflow.io import load, save
>>> flow = Flow(StandardNormal(2), Chain([Affine(2), Permute(2, rng=0)]))
>>> flow.params["bijector.layers.0.shift"] = [1.0, -2.0]
>>> path = os.path.join(tempfile.mkdtemp(), "model.npz")
>>> save(path, flow)
>>> loaded = load(path)
>>> x = np.array([[0.5, 1.5], [-1.0, 2.0]])
>>> bool(np.array_equal(loaded.log_prob(x), flow.log_prob(x)))
True

What is saved
-------------
Every saveable object (each public bijector, ``StandardNormal``, ``DiagNormal``, ``Flow`` and
``refflow.estimator.FlowDensity``) has ``params`` (a flat mapping of float64 arrays),
``buffers`` (a flat mapping of non-trainable arrays: permutations, masks, running statistics,
flags; absent means none) and ``_config()``, JSON-serialisable constructor arguments such that
``type(obj)._from_config(config)`` builds an object of the same structure (same keys, shapes
and dtypes). :func:`to_spec` turns an object into ``{"class": name, "config": config}``; a
nested object inside a config (a ``Chain``'s layers, a ``Flow``'s base and bijector) is such a
spec too. :func:`from_spec` builds the object back, resolving ``name`` against an allow-list of
refflow's public classes only (every ``Bijector`` subclass in ``refflow.bijectors.__all__``,
``StandardNormal``, ``DiagNormal``, ``Flow`` and, when that module imports,
``refflow.estimator.FlowDensity``); nothing is ever imported by a name read from a file.

File format (version 1)
-----------------------
A zip archive as written by ``numpy.savez`` (uncompressed, every member ``ZIP_STORED``) with
these entries, each a ``.npy`` member read with ``numpy.load(..., allow_pickle=False)``:

==================  ============================================================================
entry               content
==================  ============================================================================
``header``          a 0-d unicode array holding the JSON header below
``params/<key>``    one per key of ``obj.params``: float64 (``<f8``)
``buffers/<key>``   one per key of ``obj.buffers``: bool, (unsigned) integer or float
==================  ============================================================================

Arrays are stored C-ordered and little-endian. The JSON header is an object with exactly the
keys

- ``"format"``: ``"refflow-model"``;
- ``"format_version"``: ``1`` (an integer);
- ``"refflow_version"``: the version of refflow that wrote the file (informational);
- ``"spec"``: ``to_spec(obj)``;
- ``"training"``: the ``training`` flag of every bijector in the model, depth first (a layer
  before its children: ``Chain`` then its layers, ``Inverse`` then the layer it wraps), so
  that train/eval mode is restored layer by layer; ``[]`` for a distribution;
- ``"arrays"``: one object per array entry, in the order of ``params`` then ``buffers``, with
  exactly the keys ``"name"`` (``"params/<key>"`` or ``"buffers/<key>"``), ``"dtype"`` (numpy's
  ``dtype.str``, e.g. ``"<f8"``), ``"shape"`` (a list of ints) and ``"sha256"`` (the hex
  SHA-256 digest of the array's bytes, ``arr.tobytes()`` in C order).

JSON numbers are finite (no ``NaN``/``Infinity``) and keys are never repeated.

*Version policy.* ``format_version`` changes whenever a reader of the previous version could
misread a new file. A reader accepts every version up to its own and refuses a newer one with a
message saying so (upgrade refflow to read it); version 1 is the first.

Loading
-------
:func:`load` checks, in this order, and raises ``ValueError`` with one line naming the file
and the problem at the first failure (``FileNotFoundError`` for a missing path): a zip archive
(not random bytes, a ``.npy`` file or a truncated archive); the header entry and its JSON
schema; the format name and version; the set of entries (none missing, none extra); for each
array, before its data is read, the dtype and shape written in its ``.npy`` header against the
JSON header (an object array, whose data would be pickled, is refused there); its SHA-256
digest; finite parameters and float buffers. It then builds a new object from the spec, checks
that its ``params`` and ``buffers`` have exactly the file's keys, shapes and dtypes, assigns
them, restores the training flags, and checks that the loaded object reproduces the file's spec
(structural buffers such as permutations and coupling masks are also in the configuration,
where the constructor validates them). Nothing is assigned to any object that the caller can
see before every check has passed: a failure returns nothing and leaves no half-built model.

The path
--------
:func:`save` writes exactly ``path`` (a ``str`` or ``os.PathLike``); unlike ``numpy.savez``
it never appends ``.npz``, so ``save("model", m)`` writes ``model`` and ``load("model")`` reads
it back. The ``.npz`` suffix is customary but not required; ``.npy`` is refused, since that
suffix names a single array. The file is first written to a
temporary file in the same directory, flushed and ``fsync``-ed, then moved over ``path`` with
``os.replace``: an interrupted save never leaves a partial file at ``path`` (an existing file
there stays as it was), and the temporary file is removed.

Limits: parameters shared between two keys (one layer object used twice in a model) are
refused by :func:`save`, since a loaded model would not share them; buffers of such a layer are
saved (and loaded) as independent copies.
"""

import hashlib
import json
import math
import os
import secrets
import zipfile
from collections.abc import Mapping

import numpy as np

from ..params import assign
from .._version import __version__
from .spec import from_spec, normalized, to_spec

__all__ = ["save", "load", "atomic_write", "FORMAT_NAME", "FORMAT_VERSION"]

#: The ``"format"`` value of the JSON header.
FORMAT_NAME = "refflow-model"
#: The format version this module writes and the newest it reads.
FORMAT_VERSION = 1

_HEADER = "header"
_GROUPS = ("params", "buffers")
_HEADER_KEYS = ("format", "format_version", "refflow_version", "spec", "training", "arrays")
_ARRAY_KEYS = ("name", "dtype", "shape", "sha256")
#: Characters of the JSON header beyond which a file is refused (64 Mi).
_MAX_HEADER_CHARS = 1 << 26
#: Stored little-endian dtypes (``dtype.str``) an array may have; parameters only ``<f8``.
_DTYPES = {np.dtype(t).newbyteorder("<").str: np.dtype(t) for t in (
    np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64,
    np.float32, np.float64)}
_PARAM_DTYPE = np.dtype(np.float64).newbyteorder("<").str
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")


class _FileError(ValueError):
    """A problem with the file's content, already phrased for the user (one line)."""


def _reject_constant(name):
    raise ValueError(f"the JSON holds {name}, which is not a finite number")


def _unique_keys(pairs):
    out = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"the JSON repeats the key {key!r}")
        out[key] = value
    return out



# ---------------------------------------------------------------------- model traversal
def _bijector_nodes(obj):
    """Every bijector of a model, depth first, a layer before its children: an object with
    ``_children()`` (a bijector), else the ``bijector`` of a flow or the fitted ``flow_`` of an
    estimator; ``[]`` for anything else (a base distribution, an unfitted estimator)."""
    if callable(getattr(obj, "_children", None)):
        nodes = [obj]
        for child in obj._children():
            nodes += _bijector_nodes(child)
        return nodes
    for attr in ("bijector", "flow_"):
        inner = getattr(obj, attr, None)
        if inner is not None:
            return _bijector_nodes(inner)
    return []


def _groups(obj):
    """``{"params": mapping, "buffers": mapping}`` of an object (buffers may be absent)."""
    out = {}
    for group in _GROUPS:
        mapping = getattr(obj, group, None)
        if mapping is None:
            mapping = {}
        if not isinstance(mapping, Mapping):
            raise ValueError(f"{type(obj).__name__}.{group} is a {type(mapping).__name__}, not a "
                             f"mapping")
        out[group] = mapping
    return out


def _digest(arr):
    return hashlib.sha256(arr.tobytes(order="C")).hexdigest()


def _collect(obj, where):
    """``(entries, records)``: the arrays to write (little-endian, C-ordered copies) and the
    header's ``"arrays"`` list."""
    entries, records, seen = {}, [], {}
    for group, mapping in _groups(obj).items():
        for key, value in mapping.items():
            name = f"{group}/{key}"
            if not isinstance(key, str) or not key:
                raise ValueError(f"{where}: {group} key {key!r} is not a non-empty str")
            if not isinstance(value, np.ndarray):
                raise ValueError(f"{where}: {name} is a {type(value).__name__}, not an ndarray")
            stored = value.dtype.newbyteorder("<").str
            if group == "params" and stored != _PARAM_DTYPE:
                raise ValueError(f"{where}: {name} has dtype {value.dtype}; parameters are "
                                 f"float64")
            if stored not in _DTYPES:
                raise ValueError(f"{where}: {name} has dtype {value.dtype}, which cannot be "
                                 f"saved (bool, integer and float arrays only)")
            if value.dtype.kind == "f" and not np.isfinite(value).all():
                raise ValueError(f"{where}: {name} holds NaN or inf; only finite values can be "
                                 f"saved")
            if group == "params" and value.nbytes:
                address = value.__array_interface__["data"][0]
                if address in seen:
                    raise ValueError(f"{where}: {name} and {seen[address]} are the same array "
                                     f"(a layer used twice?); shared parameters cannot be "
                                     f"saved, a loaded model would not share them")
                seen[address] = name
            # a copy (the file gets the values of this moment), C-ordered, little-endian; 0-d
            # arrays stay 0-d (np.ascontiguousarray would make them 1-d)
            arr = np.array(value, dtype=value.dtype.newbyteorder("<"), order="C", copy=True)
            entries[name] = arr
            records.append({"name": name, "dtype": arr.dtype.str, "shape": list(arr.shape),
                            "sha256": _digest(arr)})
    return entries, records


# ------------------------------------------------------------------------------- save
def _fspath(path, where):
    try:
        path = os.fspath(path)
    except TypeError:
        raise TypeError(f"{where}: path must be a str or os.PathLike, got "
                        f"{type(path).__name__}") from None
    return os.fsdecode(path) if isinstance(path, bytes) else path


def _write_npz(f, entries):
    """Write the archive to the open binary file ``f`` (``numpy.savez``, uncompressed)."""
    np.savez(f, **entries)


def _open_temporary(directory, base):
    """A new file in ``directory`` (the umask applies, as for any new file): ``(fd, path)``."""
    while True:
        tmp = os.path.join(directory, f".{base}.{secrets.token_hex(6)}.tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0),
                           0o666), tmp
        except FileExistsError:
            continue


def _fsync_directory(directory):
    """Make the rename durable where the platform allows it (POSIX); best effort."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save(path, obj):
    """Save a model (its structure, parameters, buffers and train/eval mode) to ``path``.

    Parameters
    ----------
    path : str or os.PathLike
        Written exactly as given: no ``.npz`` is appended (see the module docstring).
    obj : Bijector, StandardNormal, DiagNormal, Flow or FlowDensity
        An instance of a refflow class (see :func:`to_spec`).

    Raises
    ------
    ValueError
        If ``obj`` is not saveable (unknown class, non-JSON config, parameters shared between
        keys, non-finite values, unsupported buffer dtype), or ``path`` ends in ``.npy`` (the
        file is an ``.npz`` archive; ``numpy.load`` of a ``.npy`` name would not give an
        array). Nothing is written then.
    IsADirectoryError
        If ``path`` is a directory.
    TypeError
        If ``path`` is not a str or path-like.
    OSError
        If the file cannot be written; ``path`` is then unchanged.

    Notes
    -----
    The archive is written to a temporary file next to ``path``, flushed, ``fsync``-ed and
    moved over ``path`` with ``os.replace`` (atomic on POSIX and Windows), so ``path`` holds
    either the old file or the complete new one, never a partial file.

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np
    >>> from refflow import BatchNorm
    >>> from refflow.io import load, save
    >>> layer = BatchNorm(2)
    >>> _ = layer.inverse(np.random.default_rng(0).normal(size=(64, 2)))   # running statistics
    >>> path = os.path.join(tempfile.mkdtemp(), "batchnorm")
    >>> save(path, layer.eval())
    >>> os.listdir(os.path.dirname(path))
    ['batchnorm']
    >>> loaded = load(path)
    >>> running_var = loaded.buffers["running_var"]
    >>> loaded.training, bool(np.array_equal(running_var, layer.buffers["running_var"]))
    (False, True)
    """
    path = _fspath(path, "refflow.io.save")
    where = f"refflow.io.save({path!r})"
    if os.path.isdir(path):
        raise IsADirectoryError(f"{where}: is a directory; give a file name such as "
                                f"{os.path.join(path, 'model.npz')!r}")
    if path.lower().endswith(".npy"):
        raise ValueError(f"{where}: a model file is an .npz archive, and a .npy name would "
                         f"promise a single array (numpy.load would return an archive); use "
                         f"the .npz suffix")
    spec = to_spec(obj)
    entries, records = _collect(obj, where)
    header = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "refflow_version": _refflow_version(),
        "spec": normalized(spec),
        "training": [bool(node.training) for node in _bijector_nodes(obj)],
        "arrays": records,
    }
    text = json.dumps(header, allow_nan=False)
    entries = {_HEADER: np.array(text), **entries}

    atomic_write(path, lambda f: _write_npz(f, entries))


def atomic_write(path, write):
    """``write(f)`` into a temporary file next to ``path``, fsync it, ``os.replace`` it over
    ``path``: ``path`` holds the old file or the complete new one, never a partial file, and no
    temporary file is left behind on failure (also used by the command line's ``.npy`` output).
    """
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = _open_temporary(directory, os.path.basename(path))
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_directory(directory)


def _refflow_version():
    return __version__


# ------------------------------------------------------------------------------- load
def _read_npy_header(npz, name):
    """``(dtype, shape)`` from the ``.npy`` header of entry ``name``, data not read."""
    info = npz.zip.getinfo(f"{name}.npy")
    if info.compress_type != zipfile.ZIP_STORED:
        raise _FileError(f"entry {name!r} is compressed; refflow model files store every entry "
                         f"uncompressed")
    with npz.zip.open(info) as fp:
        version = np.lib.format.read_magic(fp)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(fp)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(fp)
        else:
            raise _FileError(f"entry {name!r} is a .npy of version {version}, which refflow "
                             f"model files do not use")
    if dtype.hasobject:
        raise _FileError(f"entry {name!r} holds an object array (pickled Python objects); "
                         f"refused, a model file never executes code")
    return dtype, shape, info.file_size


def _read_header(npz, file_size):
    if _HEADER not in npz.files:
        raise _FileError("no 'header' entry: not a refflow model file")
    dtype, shape, size = _read_npy_header(npz, _HEADER)
    if dtype.kind != "U" or shape != ():
        raise _FileError(f"the 'header' entry must be a 0-d unicode array, got dtype {dtype} and "
                         f"shape {shape}")
    if dtype.itemsize // 4 > _MAX_HEADER_CHARS or not dtype.itemsize <= size <= file_size:
        raise _FileError(f"the header entry declares {dtype.itemsize // 4} characters, more than "
                         f"its {size} bytes in the archive hold (or over {_MAX_HEADER_CHARS})")
    text = str(npz[_HEADER][()])
    try:
        header = json.loads(text, parse_constant=_reject_constant,
                            object_pairs_hook=_unique_keys)
    except RecursionError:
        raise _FileError("the header is not valid JSON: nested too deeply") from None
    except ValueError as exc:
        raise _FileError(f"the header is not valid JSON: {exc}") from None
    return header


def _check_header(header):
    """Validate the JSON header's schema; ``{name: (dtype, shape, sha256)}`` of the arrays."""
    if not isinstance(header, dict):
        raise _FileError(f"the header must be a JSON object, got {type(header).__name__}")
    if header.get("format") != FORMAT_NAME:
        raise _FileError(f"the header's format is {header.get('format')!r}, not {FORMAT_NAME!r}:"
                         f" not a refflow model file")
    version = header.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise _FileError(f"the header's format_version must be an integer, got {version!r}")
    if version > FORMAT_VERSION:
        raise _FileError(f"the file has format version {version}, newer than the version "
                         f"{FORMAT_VERSION} this refflow reads: it was written by a newer "
                         f"refflow ({header.get('refflow_version')!r}); upgrade refflow")
    if version < 1:
        raise _FileError(f"the header's format_version {version} is not a valid version")
    if set(header) != set(_HEADER_KEYS):
        missing = sorted(set(_HEADER_KEYS) - set(header))
        extra = sorted(set(header) - set(_HEADER_KEYS))
        raise _FileError(f"the header does not match the schema: missing keys {missing}, "
                         f"unexpected keys {extra}")
    if not isinstance(header["refflow_version"], str):
        raise _FileError("the header's refflow_version must be a str")
    if not isinstance(header["spec"], dict):
        raise _FileError("the header's spec must be a JSON object")
    training = header["training"]
    if not (isinstance(training, list) and all(isinstance(t, bool) for t in training)):
        raise _FileError("the header's training must be a list of true/false")
    records = header["arrays"]
    if not isinstance(records, list):
        raise _FileError("the header's arrays must be a list")
    arrays = {}
    for i, record in enumerate(records):
        if not (isinstance(record, dict) and set(record) == set(_ARRAY_KEYS)):
            raise _FileError(f"the header's arrays[{i}] must be an object with exactly the keys "
                             f"{list(_ARRAY_KEYS)}")
        name, dtype, shape, digest = (record[k] for k in _ARRAY_KEYS)
        if not (isinstance(name, str) and name.partition("/")[0] in _GROUPS
                and name.partition("/")[2]):
            raise _FileError(f"the header's arrays[{i}] has name {name!r}; names are "
                             f"'params/<key>' or 'buffers/<key>'")
        if name in arrays:
            raise _FileError(f"the header lists the array {name!r} twice")
        if dtype not in _DTYPES:
            raise _FileError(f"the header gives {name!r} the dtype {dtype!r}; allowed: "
                             f"{sorted(_DTYPES)}")
        if name.startswith("params/") and dtype != _PARAM_DTYPE:
            raise _FileError(f"the header gives the parameter {name!r} the dtype "
                             f"{_DTYPES[dtype]}; parameters are float64 ({_PARAM_DTYPE!r})")
        if not (isinstance(shape, list) and all(isinstance(n, int) and not isinstance(n, bool)
                                                and n >= 0 for n in shape)):
            raise _FileError(f"the header gives {name!r} the shape {shape!r}; a shape is a list "
                             f"of non-negative integers")
        if not (isinstance(digest, str) and len(digest) == 64
                and all(c in "0123456789abcdef" for c in digest)):
            raise _FileError(f"the header gives {name!r} the sha256 {digest!r}, not 64 lowercase "
                             f"hex digits")
        arrays[name] = (dtype, tuple(shape), digest)
    return arrays


def _read_arrays(npz, expected, file_size):
    """Every array entry, checked against the header before and after its data is read."""
    present = set(npz.files) - {_HEADER}
    missing = sorted(set(expected) - present)
    extra = sorted(present - set(expected))
    if missing or extra:
        raise _FileError(f"the entries do not match the header: missing {missing}, "
                         f"unexpected {extra}")
    out = {}
    members = set(npz.zip.namelist())
    for name, (dtype, shape, digest) in expected.items():
        if f"{name}.npy" not in members:
            raise _FileError(f"entry {name!r} is not a .npy member")
        file_dtype, file_shape, size = _read_npy_header(npz, name)
        if file_dtype.str != dtype:
            raise _FileError(f"entry {name!r} has dtype {file_dtype.str!r} but the header says "
                             f"{dtype!r}")
        if tuple(file_shape) != shape:
            raise _FileError(f"entry {name!r} has shape {tuple(file_shape)} but the header says "
                             f"{shape}")
        if not math.prod(shape) * file_dtype.itemsize <= size <= file_size:
            raise _FileError(f"entry {name!r} has {size} bytes in the archive, which cannot hold "
                             f"its shape {shape} or exceeds the file")
        arr = npz[name]
        if _digest(arr) != digest:
            raise _FileError(f"entry {name!r} does not match its SHA-256 digest: the array's "
                             f"bytes were altered or damaged")
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise _FileError(f"entry {name!r} holds NaN or inf; parameters and buffers must be "
                             f"finite")
        out[name] = arr.astype(arr.dtype.newbyteorder("="), copy=False)
    return out


def _read_file(path):
    """``(header, arrays)`` of a model file, every content check done; raises ``_FileError``."""
    with open(path, "rb") as f:
        file_size = os.fstat(f.fileno()).st_size
        magic = f.read(4)
        f.seek(0)
        if magic.startswith(b"\x93NUM"):
            raise _FileError("a .npy array file, not a refflow model (a .npz archive)")
        if magic not in _ZIP_MAGIC:
            raise _FileError(f"not a refflow model file: not a zip/npz archive (it starts with "
                             f"{magic!r})")
        try:
            with np.load(f, allow_pickle=False) as npz:
                if not isinstance(npz, np.lib.npyio.NpzFile):
                    raise _FileError("not a zip/npz archive")
                header = _read_header(npz, file_size)
                expected = _check_header(header)
                arrays = _read_arrays(npz, expected, file_size)
        except _FileError:
            raise
        except Exception as exc:  # noqa: BLE001 - zipfile, zlib, numpy: a damaged archive
            raise _FileError(f"damaged or not a refflow model file ({type(exc).__name__}: "
                             f"{exc})") from exc
    return header, arrays


def _assemble(header, arrays):
    """Build the object from the spec and fill it; nothing escapes unless every check passed."""
    obj = from_spec(header["spec"])
    groups = _groups(obj)
    values = {group: {} for group in _GROUPS}
    for name, arr in arrays.items():
        group, _, key = name.partition("/")
        values[group][key] = arr
    for group, mapping in groups.items():
        missing = sorted(set(mapping) - set(values[group]))
        extra = sorted(set(values[group]) - set(mapping))
        if missing or extra:
            raise _FileError(f"the {header['spec']['class']} built from the spec has other "
                             f"{group} than the file: missing in the file {missing}, not in the "
                             f"model {extra}")
        for key, target in mapping.items():
            value = values[group][key]
            if value.shape != np.shape(target):
                raise _FileError(f"{group}/{key} has shape {value.shape} in the file but the "
                                 f"model built from the spec expects {np.shape(target)}")
            target_dtype = np.asarray(target).dtype
            if value.dtype != target_dtype:
                raise _FileError(f"{group}/{key} has dtype {value.dtype} in the file but the "
                                 f"model built from the spec expects {target_dtype}")
    nodes = _bijector_nodes(obj)
    if len(nodes) != len(header["training"]):
        raise _FileError(f"the header has {len(header['training'])} training flags but the model "
                         f"has {len(nodes)} bijectors")

    assign(groups["params"], values["params"])
    for key, target in groups["buffers"].items():
        value = values["buffers"][key]
        if target.flags.writeable:
            target[...] = value
        elif not np.array_equal(target, value):
            raise _FileError(f"buffers/{key} is fixed by the model's configuration and the file "
                             f"holds a different value")
    for node, flag in zip(nodes, header["training"]):
        node.training = flag
    if normalized(to_spec(obj)) != header["spec"]:
        raise _FileError("the loaded model does not reproduce the file's spec: its buffers "
                         "disagree with its configuration")
    return obj


def load(path):
    """Load a model saved by :func:`save`, checking everything before anything is built.

    Parameters
    ----------
    path : str or os.PathLike
        Read exactly as given (no suffix is added).

    Returns
    -------
    object
        A new object of the saved class whose ``log_prob`` / ``forward`` / ``inverse`` are
        bit-identical to the saved object's, in the same train/eval mode.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    IsADirectoryError
        If ``path`` is a directory (one line naming it).
    ValueError
        One line naming the file and the problem, for any file that is not a complete, intact
        refflow model file of a version this refflow reads (see the module docstring for the
        checks). The model is then neither returned nor left anywhere.
    TypeError
        If ``path`` is not a str or path-like.

    Examples
    --------
    >>> import os, tempfile
    >>> from refflow.io import load
    >>> path = os.path.join(tempfile.mkdtemp(), "junk.npz")
    >>> with open(path, "wb") as f:
    ...     _ = f.write(b"definitely not a model")
    >>> load(path)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: refflow.io.load('...junk.npz'): not a refflow model file: not a zip/npz archive (it starts with b'defi')
    """
    path = _fspath(path, "refflow.io.load")
    where = f"refflow.io.load({path!r})"
    if os.path.isdir(path):
        raise IsADirectoryError(f"{where}: is a directory, not a model file")
    try:
        header, arrays = _read_file(path)
        return _assemble(header, arrays)
    except _FileError as exc:
        raise ValueError(f"{where}: {exc}") from exc.__cause__
    except RecursionError:
        raise ValueError(f"{where}: the spec is nested too deeply") from None
    except ValueError as exc:  # from_spec refusing the spec (its cause chained), assign
        raise ValueError(f"{where}: {exc}") from exc
    except TypeError as exc:  # a damaged value that no check above anticipated: still the file
        raise ValueError(f"{where}: the file's spec does not fit its class ({exc})") from exc

