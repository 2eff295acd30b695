r"""Tabular data sets: the MAF paper's preprocessed data and scikit-learn's digits.

``load_power``, ``load_gas``, ``load_hepmass``, ``load_miniboone``, ``load_bsds300`` and
``load_tabular(name, root)`` read the MAF data release from a directory you give, reproduce its
preprocessing and splits (never unpickling), and return a ``TabularData(train, validation,
test)`` of float64 arrays. ``load_digits``: scikit-learn's 8x8 digits, dequantized into
``(0, 1)``.
"""

import csv
import itertools
import os
import warnings
from typing import NamedTuple

import numpy as np

from .._validation import check_rng

__all__ = ["TABULAR", "TabularData", "load_tabular", "load_power", "load_gas", "load_hepmass",
           "load_miniboone", "load_bsds300", "load_digits"]


# ------------------------------------------------------------------- tabular data (MAF paper)
class TabularData(NamedTuple):
    """Train, validation and test splits of a tabular data set (float64 ``(n_i, n_dims)``).

    Unpacks as ``train, validation, test = load_power(root)``; ``n_dims`` is the number of
    columns.
    """

    train: np.ndarray
    validation: np.ndarray
    test: np.ndarray

    @property
    def n_dims(self):
        """Number of columns (dimensions) of each split."""
        return int(self.train.shape[1])


_GAS_CONVERT = (
    "python -c \"import pandas as pd; pd.read_pickle('gas/ethylene_CO.pickle')"
    ".to_csv('gas/ethylene_CO.csv', index=False)\""
)


def _root_dir(root, where):
    if not isinstance(root, (str, os.PathLike)):
        raise TypeError(f"{where}: root must be a path (str or os.PathLike), got "
                        f"{type(root).__name__}")
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise FileNotFoundError(
            f"{where}: the data directory {root!r} does not exist; pass the directory the MAF "
            f"data release (data.tar.gz, Zenodo record 1161203) unpacks to, holding power/, "
            f"gas/, hepmass/, miniboone/ and BSDS300/"
        )
    return root


def _data_file(root, where, *parts):
    path = os.path.join(_root_dir(root, where), *parts)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{where}: the file {path!r} does not exist")
    return path


def _as_float64(arr, path, where):
    if arr.dtype.kind not in "fiu":
        raise ValueError(f"{where}: {path!r} holds dtype {arr.dtype}; expected real numbers")
    return np.array(arr, dtype=np.float64)    # an owned copy: the pipeline shuffles in place


def _check_table(arr, path, where, n_cols):
    if arr.ndim != 2 or arr.shape[1] != n_cols:
        raise ValueError(f"{where}: {path!r} should hold a 2-D array with {n_cols} columns, "
                         f"found shape {arr.shape}")
    if arr.shape[0] == 0:
        raise ValueError(f"{where}: {path!r} has no rows")
    finite = np.isfinite(arr)
    if not finite.all():
        first = tuple(int(i) for i in np.argwhere(~finite)[0])
        raise ValueError(f"{where}: {path!r} has {int((~finite).sum())} NaN or infinite "
                         f"value(s), the first at (row, column) {first}")
    return arr


def _load_npy(path, where, n_cols):
    try:
        arr = np.load(path, allow_pickle=False)   # never unpickle: object arrays are refused
    except (ValueError, OSError, EOFError) as exc:
        raise ValueError(f"{where}: could not read {path!r} as a .npy array ({exc})") from None
    if not isinstance(arr, np.ndarray):          # an .npz archive under a .npy name
        arr.close()
        raise ValueError(f"{where}: {path!r} is an .npz archive, expected a single .npy array")
    return _check_table(_as_float64(arr, path, where), path, where, n_cols)


def _read_csv(path, where, keep_rows=None, block=1 << 17):
    """Header names and float64 data of a comma-separated file with one header line.

    ``keep_rows(block) -> bool mask`` filters each block of rows as it is read (HEPMASS keeps
    the signal rows only, half of the file).
    """
    blocks = []
    try:
        with open(path, encoding="utf-8") as fh:
            header = fh.readline()
            if not header.strip():
                raise ValueError(f"{where}: {path!r} is empty (expected a header line)")
            names = [s.strip() for s in next(csv.reader([header]))]
            line_no, n_rows = 1, 0
            while True:
                lines = list(itertools.islice(fh, block))
                if not lines:
                    break
                first = line_no + 1
                line_no += len(lines)
                lines = [line for line in lines if line.strip()]
                if not lines:
                    continue
                try:
                    data = np.loadtxt(lines, delimiter=",", dtype=np.float64, comments=None,
                                      ndmin=2)
                except ValueError as exc:
                    raise ValueError(
                        f"{where}: could not parse {path!r} in lines {first}-{line_no}: every "
                        f"row must hold {len(names)} comma-separated numbers like the header "
                        f"({exc})"
                    ) from None
                if data.shape[1] != len(names):
                    raise ValueError(
                        f"{where}: {path!r} has {data.shape[1]} columns in lines "
                        f"{first}-{line_no} but {len(names)} names in its header"
                    )
                if not np.isfinite(data).all():
                    row, col = (int(i) for i in np.argwhere(~np.isfinite(data))[0])
                    raise ValueError(
                        f"{where}: {path!r} has a NaN or infinite value in data row "
                        f"{n_rows + row} (0-based, after the header), column {col}"
                    )
                n_rows += data.shape[0]
                blocks.append(data if keep_rows is None else data[keep_rows(data)])
    except UnicodeDecodeError as exc:
        raise ValueError(f"{where}: {path!r} is not a text file ({exc})") from None
    data = np.concatenate(blocks) if blocks else np.empty((0, len(names)))
    return names, data


def _split_tail(data, path, where, what):
    """MAF's split: the last ``int(0.1 N)`` rows become ``what``; returns ``(head, tail)``."""
    n = data.shape[0]
    n_tail = int(0.1 * n)
    if n_tail < 1 or n_tail >= n:
        raise ValueError(f"{where}: {path!r} has too few rows ({n}) to split off 10% as {what}")
    return data[:-n_tail], data[-n_tail:]


def _standardise(ref, ddof, path, where):
    mu, s = ref.mean(axis=0), ref.std(axis=0, ddof=ddof)
    if not np.all(s > 0):
        col = int(np.flatnonzero(~(s > 0))[0])
        raise ValueError(f"{where}: column {col} of the data from {path!r} (after the columns "
                         f"the preprocessing drops) is constant, so it cannot be normalised "
                         f"(the MAF preprocessing would divide by zero)")
    return mu, s


def _split_then_normalise(data, path, where):
    """POWER's and MINIBOONE's ending in the MAF code: split off the test set, then the
    validation set, and normalise all three by the mean and population standard deviation of
    train + validation."""
    rest, test = _split_tail(data, path, where, "the test set")
    train, validation = _split_tail(rest, path, where, "the validation set")
    mu, s = _standardise(rest, 0, path, where)
    return TabularData((train - mu) / s, (validation - mu) / s, (test - mu) / s)


def load_power(root):
    r"""The POWER data set of the MAF paper, preprocessed and split exactly as the MAF code.

    Parameters
    ----------
    root : str or os.PathLike
        The directory of the unpacked MAF data release; reads ``root/power/data.npy`` (the
        household power consumption table, 8 numeric columns, loaded with
        ``allow_pickle=False``).

    Returns
    -------
    TabularData
        ``n_dims = 6``. On the release: 1,659,917 / 184,435 / 204,928 rows.

    Raises
    ------
    FileNotFoundError
        Missing directory or file.
    ValueError
        Unreadable file, not 8 columns, NaN or infinite values, too few rows.

    Notes
    -----
    As ``maf/datasets/power.py``: with ``rs = np.random.RandomState(42)`` (the legacy
    generator, to reproduce the release bit for bit), ``rs.shuffle`` the rows; drop columns 3
    (global intensity) and 1 (reactive power); add uniform noise drawn in this order:
    voltage ``0.01 U``, global active power ``0.001 U``, the three sub-meterings ``U``, none on
    the time column; the last ``int(0.1 N)`` rows are the test set, the last 10 % of the rest
    the validation set; normalise every split by the mean and (population) standard deviation
    of train + validation.

    References
    ----------
    G. Papamakarios, T. Pavlakou, I. Murray, "Masked Autoregressive Flow for Density
    Estimation", NeurIPS 2017, arXiv:1705.07057.

    Examples
    --------
    >>> import os, tempfile, numpy as np
    >>> tmp = tempfile.TemporaryDirectory()
    >>> os.mkdir(os.path.join(tmp.name, "power"))
    >>> np.save(os.path.join(tmp.name, "power", "data.npy"),
    ...         np.random.default_rng(0).random((200, 8)))
    >>> splits = load_power(tmp.name)
    >>> splits.train.shape, splits.validation.shape, splits.test.shape
    ((162, 6), (18, 6), (20, 6))
    >>> tmp.cleanup()
    """
    where = "load_power"
    path = _data_file(root, where, "power", "data.npy")
    data = _load_npy(path, where, 8)
    n = data.shape[0]
    rs = np.random.RandomState(42)                 # the MAF release's fixed seed
    rs.shuffle(data)
    data = np.ascontiguousarray(data[:, [0, 2, 4, 5, 6, 7]])   # drop columns 1 and 3
    voltage = 0.01 * rs.rand(n, 1)
    active = 0.001 * rs.rand(n, 1)
    metering = rs.rand(n, 3)
    data += np.hstack([active, voltage, metering, np.zeros((n, 1))])
    return _split_then_normalise(data, path, where)


def load_gas(root):
    r"""The GAS data set of the MAF paper (ethylene and CO), preprocessed as the MAF code.

    Parameters
    ----------
    root : str or os.PathLike
        The directory of the unpacked MAF data release; reads ``root/gas/ethylene_CO.csv``.

    Returns
    -------
    TabularData
        ``n_dims = 8`` on the release (852,174 / 94,685 / 105,206 rows).

    Raises
    ------
    FileNotFoundError
        Missing directory or CSV file. When only the release's ``ethylene_CO.pickle`` is
        there, the message explains how to convert it.
    ValueError
        Unparsable CSV, not the 19 columns ``Time``, ``Meth``, ``Eth`` and 16 sensors, NaN or
        infinite values, a constant column, too few rows.

    Notes
    -----
    The release ships a pandas pickle, and unpickling a file can run arbitrary code, so refflow
    never opens it. Convert it once with pandas (the 2017 pickle may need ``pandas<2``), from
    ``root``, only on the file you downloaded from the release::

        python -c "import pandas as pd; pd.read_pickle('gas/ethylene_CO.pickle').to_csv('gas/ethylene_CO.csv', index=False)"

    pandas writes every float64 in round-trip precision, so the CSV holds the same numbers.
    Preprocessing as ``maf/datasets/gas.py``: drop the columns ``Meth``, ``Eth`` and ``Time``;
    while some column has a Pearson correlation above 0.98 with another one, drop the first
    such column (by name, as ``DataFrame.drop``: every column carrying that name) and
    recompute; standardise every column by its mean and sample standard deviation (``ddof=1``)
    over all rows; the last ``int(0.1 N)`` rows are the test set, the last 10 % of the rest the
    validation set (no shuffling).

    Examples
    --------
    >>> import os, tempfile, numpy as np
    >>> tmp = tempfile.TemporaryDirectory()
    >>> os.mkdir(os.path.join(tmp.name, "gas"))
    >>> names = ["Time", "Meth", "Eth"] + [f"s{i}" for i in range(16)]
    >>> np.savetxt(os.path.join(tmp.name, "gas", "ethylene_CO.csv"),
    ...            np.random.default_rng(0).random((100, 19)), delimiter=",",
    ...            header=",".join(names), comments="")
    >>> load_gas(tmp.name).n_dims
    16
    >>> tmp.cleanup()
    """
    where = "load_gas"
    root = _root_dir(root, where)
    path = os.path.join(root, "gas", "ethylene_CO.csv")
    if not os.path.isfile(path):
        pickled = os.path.join(root, "gas", "ethylene_CO.pickle")
        found = (f"found {pickled!r}, but refflow never unpickles a file (loading a pickle can "
                 f"run arbitrary code)" if os.path.isfile(pickled)
                 else f"the file {path!r} does not exist")
        raise FileNotFoundError(
            f"{where}: {found}. The loader reads {path!r}: convert the MAF release's pickle "
            f"once, from {root!r} and with pandas installed (the 2017 pickle may need "
            f"pandas<2), with: {_GAS_CONVERT}"
        )
    names, data = _read_csv(path, where)
    missing = [c for c in ("Time", "Meth", "Eth") if c not in names]
    if missing or len(names) != 19:
        raise ValueError(
            f"{where}: {path!r} should have 19 columns, 'Time', 'Meth', 'Eth' and 16 sensors, "
            f"found {len(names)}" + (f" (missing {', '.join(missing)})" if missing else "")
        )
    if data.shape[0] == 0:
        raise ValueError(f"{where}: {path!r} has no data rows")
    keep = [i for i, c in enumerate(names) if c not in ("Time", "Meth", "Eth")]
    names, data = [names[i] for i in keep], data[:, keep]
    while True:
        with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            # NaN for a constant column, as pandas; NaN > 0.98 is False
            corr = np.atleast_2d(np.corrcoef(data, rowvar=False))
        counts = (corr > 0.98).sum(axis=1)       # the diagonal counts once
        over = np.flatnonzero(counts > 1)
        if over.size == 0:
            break
        drop = names[over[0]]
        keep = [i for i, c in enumerate(names) if c != drop]
        names, data = [names[i] for i in keep], data[:, keep]
    mu, s = _standardise(data, 1, path, where)
    data = (data - mu) / s
    rest, test = _split_tail(data, path, where, "the test set")
    train, validation = _split_tail(rest, path, where, "the validation set")
    return TabularData(train, validation, test)


def load_hepmass(root):
    r"""The HEPMASS data set of the MAF paper, preprocessed and split exactly as the MAF code.

    Parameters
    ----------
    root : str or os.PathLike
        The directory of the unpacked MAF data release; reads ``root/hepmass/1000_train.csv``
        and ``root/hepmass/1000_test.csv`` (one header line, the class label first).

    Returns
    -------
    TabularData
        ``n_dims = 21`` on the release (315,123 / 35,013 / 174,987 rows).

    Raises
    ------
    FileNotFoundError
        Missing directory or file.
    ValueError
        Unparsable CSV, rows of the wrong length, column counts of the two files that do not
        match, NaN or infinite values, a constant column, too few rows.

    Notes
    -----
    As ``maf/datasets/hepmass.py``: keep the signal rows (label 1) of both files and drop the
    label; drop the last column of the test file (the MAF code: "because the data set is
    messed up"); standardise both by the mean and sample standard deviation (``ddof=1``) of the
    training file; drop every feature whose *smallest* training value occurs more than 5 times
    (the MAF code's ``max_count`` is the count of the smallest value); the last ``int(0.1 N)``
    training rows are the validation set (no shuffling). Columns are matched by position and
    must carry the same header names, as pandas matched them by name.

    Examples
    --------
    >>> import os, tempfile, numpy as np
    >>> tmp = tempfile.TemporaryDirectory()
    >>> os.mkdir(os.path.join(tmp.name, "hepmass"))
    >>> rng = np.random.default_rng(0)
    >>> head = ",".join(["# label"] + [f"f{i}" for i in range(27)])
    >>> for part, extra in (("train", []), ("test", ["mass"])):
    ...     rows = np.column_stack([np.ones(60), rng.normal(size=(60, 27 + len(extra)))])
    ...     np.savetxt(os.path.join(tmp.name, "hepmass", f"1000_{part}.csv"), rows,
    ...                delimiter=",", header=",".join([head] + extra), comments="")
    >>> splits = load_hepmass(tmp.name)
    >>> splits.train.shape, splits.validation.shape, splits.test.shape
    ((54, 27), (6, 27), (60, 27))
    >>> tmp.cleanup()
    """
    where = "load_hepmass"
    train_path = _data_file(root, where, "hepmass", "1000_train.csv")
    test_path = _data_file(root, where, "hepmass", "1000_test.csv")

    def signal(block):
        return block[:, 0] == 1.0

    names_train, train = _read_csv(train_path, where, keep_rows=signal)
    names_test, test = _read_csv(test_path, where, keep_rows=signal)
    for path, names, data in ((train_path, names_train, train), (test_path, names_test, test)):
        if len(names) < 2:
            raise ValueError(f"{where}: {path!r} should have a label column and features, "
                             f"found {len(names)} column(s)")
        if data.shape[0] == 0:
            raise ValueError(f"{where}: {path!r} has no signal rows (label 1)")
    train, test = train[:, 1:], test[:, 1:-1]
    k, k_test = train.shape[1], test.shape[1]
    if k_test not in (k, k - 1):
        raise ValueError(
            f"{where}: {train_path!r} has {k} feature columns after the label but {test_path!r} "
            f"has {k_test} after the label and its dropped last column; expected {k} or {k - 1}"
        )
    if names_train[1:1 + k_test] != names_test[1:1 + k_test]:
        raise ValueError(f"{where}: the header names of {train_path!r} and {test_path!r} differ; "
                         f"the MAF preprocessing matches the columns by name")
    mu, s = _standardise(train, 1, train_path, where)
    train = (train - mu) / s
    test = (test - mu[:k_test]) / s[:k_test]
    kept = [j for j in range(k)
            if np.count_nonzero(train[:, j] == train[:, j].min()) <= 5]
    if k_test < k and (k - 1) in kept:
        raise ValueError(
            f"{where}: the last feature of {train_path!r} has no counterpart in {test_path!r} "
            f"(one column fewer) and is not removed as discrete, so the MAF preprocessing would "
            f"leave it undefined (NaN) in the test set"
        )
    if not kept:
        raise ValueError(f"{where}: every feature of {train_path!r} is discrete (its smallest "
                         f"value occurs more than 5 times); nothing is left")
    train, test = train[:, kept], test[:, kept]
    train, validation = _split_tail(train, train_path, where, "the validation set")
    return TabularData(train, validation, test)


def load_miniboone(root):
    r"""The MINIBOONE data set of the MAF paper, split and normalised exactly as the MAF code.

    Parameters
    ----------
    root : str or os.PathLike
        The directory of the unpacked MAF data release; reads ``root/miniboone/data.npy``
        (43 columns, loaded with ``allow_pickle=False``).

    Returns
    -------
    TabularData
        ``n_dims = 43`` (29,556 / 3,284 / 3,648 rows on the release).

    Raises
    ------
    FileNotFoundError
        Missing directory or file.
    ValueError
        Unreadable file, not 43 columns, NaN or infinite values, a constant column, too few rows.

    Notes
    -----
    The release's ``data.npy`` is already cleaned (the MAF code, kept as a comment, removed the
    outlier rows with a first feature below -100 and the features whose smallest value occurs
    more than 5 times). As ``maf/datasets/miniboone.py``: the last ``int(0.1 N)`` rows are the
    test set, the last 10 % of the rest the validation set (no shuffling); every split is
    normalised by the mean and (population) standard deviation of train + validation.

    Examples
    --------
    >>> import os, tempfile, numpy as np
    >>> tmp = tempfile.TemporaryDirectory()
    >>> os.mkdir(os.path.join(tmp.name, "miniboone"))
    >>> np.save(os.path.join(tmp.name, "miniboone", "data.npy"),
    ...         np.random.default_rng(0).normal(size=(100, 43)))
    >>> splits = load_miniboone(tmp.name)
    >>> splits.train.shape, splits.validation.shape, splits.test.shape
    ((81, 43), (9, 43), (10, 43))
    >>> tmp.cleanup()
    """
    where = "load_miniboone"
    path = _data_file(root, where, "miniboone", "data.npy")
    data = _load_npy(path, where, 43)
    return _split_then_normalise(data, path, where)


def load_bsds300(root):
    r"""The BSDS300 patches of the MAF paper (8x8 patches less one pixel: 63 dimensions).

    Parameters
    ----------
    root : str or os.PathLike
        The directory of the unpacked MAF data release; reads ``root/BSDS300/BSDS300.hdf5``
        (datasets ``train``, ``validation``, ``test``) with h5py.

    Returns
    -------
    TabularData
        The three datasets as stored (already preprocessed), as float64; ``n_dims = 63``
        (1,000,000 / 50,000 / 250,000 rows on the release).

    Raises
    ------
    ImportError
        When h5py is not installed (``pip install h5py``).
    FileNotFoundError
        Missing directory or file.
    ValueError
        Not an HDF5 file, a missing dataset, not 63 columns, NaN or infinite values.

    Examples
    --------
    >>> import os, tempfile, numpy as np, pytest
    >>> h5py = pytest.importorskip("h5py")  # optional: the example needs it to write a file
    >>> tmp = tempfile.TemporaryDirectory()
    >>> os.mkdir(os.path.join(tmp.name, "BSDS300"))
    >>> with h5py.File(os.path.join(tmp.name, "BSDS300", "BSDS300.hdf5"), "w") as f:
    ...     for key, rows in (("train", 30), ("validation", 5), ("test", 10)):
    ...         _ = f.create_dataset(key, data=np.zeros((rows, 63), dtype=np.float32))
    >>> load_bsds300(tmp.name).test.shape
    (10, 63)
    >>> tmp.cleanup()
    """
    where = "load_bsds300"
    path = _data_file(root, where, "BSDS300", "BSDS300.hdf5")
    try:
        import h5py
    except ImportError:
        raise ImportError(f"{where}: reading {path!r} needs h5py; install it with "
                          f"`pip install h5py`") from None
    try:
        fh = h5py.File(path, "r")
    except OSError as exc:
        raise ValueError(f"{where}: could not open {path!r} as an HDF5 file ({exc})") from None
    splits = []
    with fh:
        for key in ("train", "validation", "test"):
            name = f"{path}[{key!r}]"
            if not isinstance(fh.get(key), h5py.Dataset):
                raise ValueError(f"{where}: {path!r} has no dataset {key!r} (it has: "
                                 f"{', '.join(sorted(fh.keys())) or 'nothing'})")
            dset = fh[key]
            if dset.dtype.kind not in "fiu":
                raise ValueError(f"{where}: {name} holds dtype {dset.dtype}; expected real "
                                 f"numbers")
            splits.append(_check_table(np.asarray(dset[()], dtype=np.float64), name, where, 63))
    return TabularData(*splits)


_TABULAR_LOADERS = {
    "power": load_power, "gas": load_gas, "hepmass": load_hepmass,
    "miniboone": load_miniboone, "bsds300": load_bsds300,
}
#: Names accepted by :func:`load_tabular`.
TABULAR = tuple(_TABULAR_LOADERS)


def load_tabular(name, root):
    """Load one of the MAF paper's tabular data sets by name (one of ``TABULAR``).

    Parameters
    ----------
    name : str
        ``"power"``, ``"gas"``, ``"hepmass"``, ``"miniboone"`` or ``"bsds300"``.
    root : str or os.PathLike
        The directory of the unpacked MAF data release.

    Returns
    -------
    TabularData

    Examples
    --------
    >>> import os, tempfile, numpy as np
    >>> tmp = tempfile.TemporaryDirectory()
    >>> os.mkdir(os.path.join(tmp.name, "miniboone"))
    >>> np.save(os.path.join(tmp.name, "miniboone", "data.npy"),
    ...         np.random.default_rng(0).normal(size=(100, 43)))
    >>> load_tabular("miniboone", tmp.name).n_dims
    43
    >>> tmp.cleanup()
    """
    if not isinstance(name, str):
        raise TypeError(f"load_tabular: name must be a str, got {type(name).__name__}")
    if name not in _TABULAR_LOADERS:
        raise ValueError(f"load_tabular: unknown data set {name!r}; valid names: "
                         f"{', '.join(TABULAR)}")
    return _TABULAR_LOADERS[name](root)


# ------------------------------------------------------------------------------------ digits
_ABOVE_ZERO = np.nextafter(0.0, 1.0)
_BELOW_ONE = np.nextafter(1.0, 0.0)


def load_digits(*, dequantize=True, rng=None):
    r"""scikit-learn's 8x8 handwritten digits (1797 x 64), dequantized for density estimation.

    Parameters
    ----------
    dequantize : bool, default True
        ``True``: ``x = (k + u) / 17`` with ``k in {0, ..., 16}`` the pixel value and
        ``u ~ U[0, 1)``, so every value lies in ``(0, 1)``. ``False``: the integer pixel values
        ``0..16`` as float64.
    rng : int or numpy.random.Generator, optional
        The dequantization noise (unused when ``dequantize=False``).

    Returns
    -------
    ndarray of shape (1797, 64), float64

    Raises
    ------
    ImportError
        When scikit-learn is not installed.

    Notes
    -----
    Uniform dequantization (Theis et al. 2016): a model's density on ``x`` is, times
    ``17^64``, a lower bound on its probability of the integer image. The two float64
    roundings that could give exactly 0 or 1 (probability ~2^-49 per pixel) are moved to the
    nearest interior float, so ``logit(x)`` is always finite.

    Examples
    --------
    >>> x = load_digits(rng=0)
    >>> x.shape, bool((x > 0).all() and (x < 1).all())
    ((1797, 64), True)
    """
    where = "load_digits"
    if not isinstance(dequantize, (bool, np.bool_)):
        raise TypeError(f"{where}: dequantize must be a bool, got {type(dequantize).__name__}")
    rng = check_rng(rng, where)
    try:
        from sklearn.datasets import load_digits as sklearn_digits
    except ImportError:
        raise ImportError(f"{where}: needs scikit-learn, which bundles the digits; install it "
                          f"with `pip install scikit-learn`") from None
    pixels = np.asarray(sklearn_digits().data, dtype=np.float64)
    if not dequantize:
        return pixels
    x = (pixels + rng.random(pixels.shape)) / 17.0
    return np.clip(x, _ABOVE_ZERO, _BELOW_ONE)
