r"""Read a data table (CSV, TSV, whitespace text, ``.npy``, ``.npz``, ``.parquet``) as floats.

:func:`read_table` is what the command line reads data files with, and it works the same way
from Python. Text files are parsed by pandas when it is installed (``pip install
"refflow[pandas]"``) and by a small parser of its own otherwise; both follow the same rules
and give the same numbers (every field is converted by correctly rounded decimal-to-binary
conversion, so the two agree bit for bit):

- **Delimiter.** ``delimiter=None`` takes a tab for ``.tsv``/``.tab`` files, and otherwise the
  most frequent of ``,`` ``;`` tab ``|`` on the first record (outside quotes); with none of them,
  runs of spaces and tabs separate the fields (``numpy.savetxt``'s default output).
- **Quotes.** ``"..."`` fields may hold the delimiter, ``#`` or newlines; ``""`` inside quotes
  is one ``"`` (the CSV convention, RFC 4180).
- **Comments and blank lines.** From a ``#`` outside quotes to the end of the line is ignored;
  lines with nothing left are skipped.
- **Header.** With ``header="auto"`` the first record is a header when one of its fields is
  neither a number nor a missing-value marker; ``True``/``False`` decide it.
- **Missing values.** Empty fields and pandas' markers (``NA``, ``NaN``, ``null``, ``None``,
  ``N/A``, ...) are missing; ``inf`` parses as infinity. Both count as *non-finite*: with
  ``drop_na=True`` the rows holding one in a selected column are dropped (and counted), else
  the first one is an error.
- **Columns** are chosen by header name or by 0-based position (as pandas' ``usecols``):
  ``columns`` (default: every column not in ``exclude`` or ``context_columns``), and
  ``context_columns`` for the conditioning variables of a conditional model. A selected column
  holding text is an error naming the file, the line, the column and the value.

Errors are one-line ``ValueError`` messages naming the file and, where there is one, the line
(1-based, as an editor shows it; for ``.npy``/``.npz`` arrays the 0-based row) and the column.

Examples
--------
>>> import os, tempfile
>>> from refflow.data.tables import read_table
>>> path = os.path.join(tempfile.mkdtemp(), "points.csv")
>>> with open(path, "w") as f:
...     _ = f.write('id;label;x;y\n# a comment line\n1;"a; b";0.5;1.5\n2;c;;2.5\n3;d;1e3;-4\n')
>>> table = read_table(path, exclude=["id", "label"], drop_na=True)
>>> table.names, table.x.tolist(), table.n_dropped
(['x', 'y'], [[0.5, 1.5], [1000.0, -4.0]], 1)
"""

import os
from typing import NamedTuple

import numpy as np

__all__ = ["read_table", "column_names", "Table", "TEXT_SUFFIXES", "ARRAY_SUFFIXES", "PARQUET_SUFFIXES",
           "NA_VALUES"]

TEXT_SUFFIXES = (".csv", ".tsv", ".tab", ".txt", ".dat")
ARRAY_SUFFIXES = (".npy", ".npz")
PARQUET_SUFFIXES = (".parquet", ".pq")
_TAB_SUFFIXES = (".tsv", ".tab")
#: Candidate delimiters, in order of preference on a tie.
_DELIMITERS = (",", "\t", ";", "|")

#: Strings read as missing values: pandas' default ``na_values`` (pandas 2.x and 3.x).
NA_VALUES = frozenset([
    "", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
    "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null",
])

_PANDAS_HINT = 'pip install "refflow[pandas]"'
_PARQUET_HINT = 'pip install "refflow[parquet]"'


class Table(NamedTuple):
    """What :func:`read_table` returns.

    Attributes
    ----------
    x : ndarray of shape (n_rows, n_columns), float64
        The selected columns, finite.
    context : ndarray of shape (n_rows, n_context_columns) or None
        The ``context_columns`` (None when none were asked for).
    names, context_names : list of str or None
        Their header names (None for a file without a header, and for arrays).
    n_dropped : int
        Rows dropped for a missing or non-finite value (``drop_na=True``).
    """

    x: np.ndarray
    context: object
    names: object
    context_names: object
    n_dropped: int


class _Columns(NamedTuple):
    """Columns of a parsed file before selection: header names, and per column a callable
    giving ``(values, missing, bad)`` (floats, non-finite mask, index of the first text cell or
    -1) and the raw cell at a row (for messages)."""

    names: object
    width: int
    convert: object
    cell: object
    locate: object  # row index -> "line L" / "row R" for messages


# ------------------------------------------------------------------------- text parsing
def _split_plain(line, delimiter):
    return line.split() if delimiter is None else line.split(delimiter)


def _records(lines, delimiter, comment, quote='"'):
    """``(line_number, fields)`` of every record of a text file.

    A quoted field may span lines (the record keeps its first line's number); text from
    ``comment`` outside quotes to the end of the line is dropped; records with no field left
    (blank or comment-only lines) are skipped. ``delimiter=None``: runs of spaces and tabs.
    Fields are stripped of surrounding spaces; quotes are removed.
    """
    in_quote = False
    fields, field, quoted, start = [], [], False, 0
    for number, raw in enumerate(lines, 1):
        line = raw.rstrip("\r\n")
        if not in_quote:
            if quote not in line and (comment is None or comment not in line):
                if line.strip():  # the fast path: no quotes, no comment
                    parts = _split_plain(line, delimiter)
                    yield number, [p.strip() for p in parts]
                continue
            fields, field, quoted, start = [], [], False, number
        else:
            field.append("\n")
        i, n = 0, len(line)
        while i < n:
            ch = line[i]
            if in_quote:
                if ch == quote:
                    if i + 1 < n and line[i + 1] == quote:
                        field.append(quote)
                        i += 1
                    else:
                        in_quote = False
                else:
                    field.append(ch)
            elif ch == quote and not "".join(field).strip():
                in_quote, quoted, field = True, True, []
            elif comment is not None and ch == comment:
                break
            elif (ch == delimiter) if delimiter is not None else ch in " \t":
                text = "".join(field)
                if delimiter is not None or quoted or text.strip():
                    fields.append(text if quoted else text.strip())
                field, quoted = [], False
            else:
                field.append(ch)
            i += 1
        if in_quote:
            continue  # the quoted field goes on in the next line
        text = "".join(field)
        if delimiter is not None or quoted or text.strip():
            fields.append(text if quoted else text.strip())
        if fields and (len(fields) > 1 or quoted or fields[0] != ""):
            yield start, fields
        fields, field, quoted = [], [], False
    if in_quote:
        raise ValueError(f"line {start}: a quoted field is not closed before the end of the "
                         f"file")


def _first_record_line(path, comment, quote='"'):
    """The raw text of the first line holding data (not blank, not a comment)."""
    with open(path, encoding="utf-8-sig", newline="") as f:
        for raw in f:
            line = raw.rstrip("\r\n")
            stripped = line.strip()
            if stripped and not (comment is not None and stripped.startswith(comment)):
                return line
    return ""


def _sniff(line, quote='"'):
    """The delimiter of a record: the most frequent candidate outside quotes, else None
    (whitespace), as described in the module docstring."""
    counts = dict.fromkeys(_DELIMITERS, 0)
    in_quote = False
    for ch in line:
        if ch == quote:
            in_quote = not in_quote
        elif not in_quote and ch in counts:
            counts[ch] += 1
    best = max(_DELIMITERS, key=lambda d: counts[d])  # max keeps the first on a tie
    if counts[best]:
        return best
    return None if len(line.split()) > 1 else ","


def _is_number(text, decimal):
    if text in NA_VALUES:
        return True
    try:
        float(text if decimal == "." else text.replace(decimal, "."))
    except ValueError:
        return False
    return True


def _convert_cells(cells, decimal):
    """``(values, nonfinite, bad)`` of a column of text cells: float64 values (NaN for a
    missing-value marker), the non-finite mask, and the index of the first cell that is text
    (-1 if none). The conversion is NumPy's string-to-float cast, which rounds correctly as
    ``float()`` does, so both parsers give the same bits."""
    cells = ["nan" if c in NA_VALUES else c for c in cells]
    if decimal != ".":
        cells = [c.replace(decimal, ".") for c in cells]
    try:
        values = np.asarray(cells, dtype=np.float64) if cells else np.empty(0)
        bad = -1
    except ValueError:  # some cell is text: find the first one, convert the others
        values = np.empty(len(cells))
        bad = -1
        for i, c in enumerate(cells):
            try:
                values[i] = float(c)
            except ValueError:
                values[i] = np.nan
                if bad < 0:
                    bad = i
    return values, ~np.isfinite(values), bad


def _header_of(first, header, decimal):
    if header != "auto":
        return header
    return first is not None and not all(_is_number(v, decimal) for v in first[1])


def _python_columns(path, delimiter, comment, header, decimal):
    with open(path, encoding="utf-8-sig", newline="") as f:
        records = list(_records(f, delimiter, comment))
    header = _header_of(records[0] if records else None, header, decimal)
    names = None
    if header:
        names = list(records[0][1])
        records = records[1:]
    width = len(names) if names is not None else (len(records[0][1]) if records else 0)
    for number, fields in records:
        if len(fields) > width:
            raise ValueError(f"line {number} has {len(fields)} fields, but the "
                             f"{'header' if names is not None else 'first record'} has {width}")
    lines = [number for number, _ in records]

    def column(j):  # a short record's missing cells are empty
        return [fields[j] if j < len(fields) else "" for _, fields in records]

    return _Columns(names, width, lambda j: _convert_cells(column(j), decimal),
                    lambda j, i: column(j)[i], lambda i: f"line {lines[i]}")


def _line_of_row(path, delimiter, comment, header, decimal, row):
    """The file line of data row ``row`` (0-based), found by this module's parser."""
    with open(path, encoding="utf-8-sig", newline="") as f:
        records = _records(f, delimiter, comment)
        first = next(records, None)
        if first is None:
            return f"row {row}"
        if not header:
            if row == 0:
                return f"line {first[0]}"
            row -= 1
        for i, (number, _) in enumerate(records):
            if i == row:
                return f"line {number}"
    return f"row {row}"


def _pandas_columns(pd, path, delimiter, comment, header, decimal):
    """pandas' C tokenizer (its python one for whitespace), every cell read as text."""
    with open(path, encoding="utf-8-sig", newline="") as f:
        header = _header_of(next(_records(f, delimiter, comment), None), header, decimal)
    try:
        frame = pd.read_csv(
            path, sep=r"\s+" if delimiter is None else delimiter, comment=comment,
            header=0 if header else None, skipinitialspace=True, quotechar='"',
            doublequote=True, encoding="utf-8-sig", skip_blank_lines=True, dtype=str,
            keep_default_na=False, na_filter=False, index_col=False,
            engine="python" if delimiter is None else "c")
    except pd.errors.EmptyDataError:
        return _Columns([] if header else None, 0, None, None, None)
    except pd.errors.ParserError as exc:
        raise ValueError(" ".join(str(exc).split())) from None
    names = [str(c).strip() for c in frame.columns] if header else None

    def column(j):
        return [("" if v is None else str(v).strip()) for v in frame.iloc[:, j].tolist()]

    return _Columns(names, frame.shape[1], lambda j: _convert_cells(column(j), decimal),
                    lambda j, i: column(j)[i],
                    lambda i: _line_of_row(path, delimiter, comment, header, decimal, i))


# ------------------------------------------------------------------------------ arrays
def _array_columns(arr, where):
    if arr.ndim == 1:
        arr = arr[:, None]
    # Real numbers only: complex data would lose its imaginary part (with a ComplexWarning).
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.dtype.kind not in "biuf":
        raise ValueError(f"{where}: expected a non-empty numeric 2-D array (rows = points), "
                         f"got shape {arr.shape} and dtype {arr.dtype}")
    arr = arr.astype(np.float64, copy=False)

    def convert(j):
        values = np.ascontiguousarray(arr[:, j])
        return values, ~np.isfinite(values), -1

    return _Columns(None, arr.shape[1], convert, lambda j, i: repr(float(arr[i, j])),
                    lambda i: f"row {i} (0-based)")


def _load_npz(path, key, where):
    with np.load(path, allow_pickle=False) as archive:
        keys = list(archive.files)
        if key is None:
            if len(keys) != 1:
                raise ValueError(f"{where}: the archive holds {len(keys)} arrays "
                                 f"({', '.join(keys[:10]) or 'none'}); choose one with key=... "
                                 f"(--key on the command line)")
            key = keys[0]
        elif key not in keys:
            raise ValueError(f"{where}: no array {key!r} in the archive; it holds "
                             f"{', '.join(keys[:10]) or 'none'}")
        return archive[key]


# --------------------------------------------------------------------------- selection
def _resolve(tokens, names, width, where, what):
    """Column indices for ``tokens`` (names, or 0-based positions)."""
    if isinstance(tokens, (str, int)):
        tokens = [tokens]
    out = []
    for token in tokens:
        if isinstance(token, (bool, np.bool_)):
            raise TypeError(f"{where}: {what} must be column names or 0-based positions, got "
                            f"{token!r}")
        if isinstance(token, str) and names is not None and token in names:
            index = names.index(token)
        elif isinstance(token, (int, np.integer)) or (isinstance(token, str)
                                                      and token.strip().isdigit()):
            index = int(token)
            if not 0 <= index < width:
                raise ValueError(f"{where}: {what}: position {index} is out of range; the file "
                                 f"has {width} columns (positions 0 to {width - 1})")
        elif names is None:
            raise ValueError(f"{where}: {what}: {token!r} is not a column position, and the "
                             f"file has no header to name columns by")
        else:
            shown = ", ".join(repr(n) for n in names[:12]) + (", ..." if len(names) > 12 else "")
            raise ValueError(f"{where}: {what}: no column {token!r}; the header has {shown}")
        if index in out:
            raise ValueError(f"{where}: {what}: column {token!r} is listed twice")
        out.append(index)
    return out


def _rows(k):
    return f"{k} row" if k == 1 else f"{k} rows"


def _label(names, j):
    return repr(names[j]) if names is not None else f"{j} (0-based)"


def column_names(path, *, delimiter=None, comment="#", header="auto", decimal="."):
    """The header names of a data file (None without a header, and for ``.npy``/``.npz``),
    read without parsing the rest: what :func:`read_table` would report as ``names``."""
    where = os.fspath(path)
    suffix = os.path.splitext(where)[1].lower()
    if suffix in TEXT_SUFFIXES and os.path.isfile(where):
        if delimiter == "whitespace":
            delimiter = None
        elif delimiter is None:
            delimiter = "\t" if suffix in _TAB_SUFFIXES else _sniff(
                _first_record_line(where, comment))
        try:
            with open(where, encoding="utf-8-sig", newline="") as f:
                first = next(_records(f, delimiter, comment), None)
        except (UnicodeDecodeError, ValueError):
            return None
        return list(first[1]) if _header_of(first, header, decimal) else None
    if suffix in PARQUET_SUFFIXES and os.path.isfile(where):
        try:
            import pyarrow.parquet as pq

            schema = pq.read_schema(where)
            index = {c for c in (schema.pandas_metadata or {}).get("index_columns", [])
                     if isinstance(c, str)}  # pandas' stored index: not a column once read
            return [str(n) for n in schema.names if n not in index]
        except Exception:  # noqa: BLE001 - no pyarrow, or not a parquet file: read_table says
            return None
    return None


def read_table(path, *, columns=None, exclude=None, context_columns=None, drop_na=False,
               delimiter=None, decimal=".", comment="#", header="auto", key=None,
               engine="auto"):
    """Read the numeric columns of a data file into float64 arrays.

    Parameters
    ----------
    path : str or os.PathLike
        ``.csv``, ``.tsv``/``.tab``, ``.txt``/``.dat`` (text), ``.npy``, ``.npz`` (one array, or
        the one named ``key``), ``.parquet``/``.pq`` (needs pandas with pyarrow or fastparquet).
    columns : sequence of str or int, optional
        The columns of ``x``, in this order: header names, or 0-based positions (a digit
        string that is not a header name counts as a position). Default: every column not in
        ``exclude`` or ``context_columns``.
    exclude : sequence of str or int, optional
        Columns to leave out of the default selection (ids, labels, text).
    context_columns : sequence of str or int, optional
        Columns returned separately as ``context``.
    drop_na : bool, default False
        Drop the rows with a missing or non-finite value in a selected column (else the first
        such value raises).
    delimiter : str, optional
        One character; None detects it (module docstring). ``"whitespace"``: runs of spaces
        and tabs.
    decimal : str, default "."
        The decimal mark (``","`` for ``1,5``; then the delimiter is not ``,``).
    comment : str or None, default "#"
    header : "auto", True or False, default "auto"
    key : str, optional
        The array of an ``.npz`` archive holding several.
    engine : {"auto", "pandas", "python"}, default "auto"
        The text parser: pandas when installed ("auto"), or this module's.

    Returns
    -------
    Table
        ``x``, ``context``, ``names``, ``context_names``, ``n_dropped``.

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    IsADirectoryError
        ``path`` is a directory.
    ValueError
        An unknown suffix, a file that does not parse, a selected column with text, a missing
        or non-finite value (without ``drop_na``), no rows left: one line naming the file and
        the line or row and the column.
    ImportError
        A ``.parquet`` file without pandas and pyarrow, or ``engine="pandas"`` without pandas.
    """
    where = os.fspath(path)
    if not isinstance(where, str):
        where = os.fsdecode(where)
    if os.path.isdir(where):
        raise IsADirectoryError(f"{where}: is a directory, not a data file")
    if not os.path.exists(where):
        raise FileNotFoundError(f"{where}: no such file")
    if engine not in ("auto", "pandas", "python"):
        raise ValueError(f"read_table: engine must be 'auto', 'pandas' or 'python', got "
                         f"{engine!r}")
    if header not in ("auto", True, False):
        raise ValueError(f"read_table: header must be 'auto', True or False, got {header!r}")
    if not isinstance(decimal, str) or len(decimal) != 1:
        raise ValueError(f"read_table: decimal must be one character, got {decimal!r}")
    if comment is not None and (not isinstance(comment, str) or len(comment) != 1):
        raise ValueError(f"read_table: comment must be one character or None, got {comment!r}")
    suffix = os.path.splitext(where)[1].lower()

    if suffix in TEXT_SUFFIXES:
        if delimiter == "whitespace":
            delimiter = None
        elif delimiter is None:
            delimiter = "\t" if suffix in _TAB_SUFFIXES else _sniff(
                _first_record_line(where, comment))
        elif not isinstance(delimiter, str) or len(delimiter) != 1 or delimiter in "\r\n\"":
            raise ValueError(f"read_table: delimiter must be one character (or 'whitespace'), "
                             f"got {delimiter!r}")
        if delimiter is not None and delimiter == decimal:
            raise ValueError(f"read_table: the delimiter and the decimal mark are both "
                             f"{decimal!r}")
        pd = None
        if engine != "python":
            try:
                import pandas as pd
            except ImportError:
                if engine == "pandas":
                    raise ImportError(f"read_table: engine='pandas' needs pandas: "
                                      f"{_PANDAS_HINT}") from None
        try:
            if pd is not None:
                table = _pandas_columns(pd, where, delimiter, comment, header, decimal)
            else:
                table = _python_columns(where, delimiter, comment, header, decimal)
        except UnicodeDecodeError as exc:
            raise ValueError(f"{where}: not UTF-8 text ({exc.reason} at byte {exc.start})") \
                from None
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
    elif suffix == ".npy":
        try:
            arr = np.load(where, allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise ValueError(f"{where}: not a readable .npy array ({exc})") from None
        table = _array_columns(arr, where)
    elif suffix == ".npz":
        try:
            arr = _load_npz(where, key, where)
        except ValueError:
            raise
        except (OSError, Exception) as exc:  # noqa: BLE001 - zipfile's and numpy's errors
            raise ValueError(f"{where}: not a readable .npz archive ({exc})") from None
        table = _array_columns(arr, where)
    elif suffix in PARQUET_SUFFIXES:
        try:
            import pandas as pd
        except ImportError:
            raise ImportError(f"{where}: reading .parquet needs pandas and pyarrow: "
                              f"{_PARQUET_HINT}") from None
        try:
            frame = pd.read_parquet(where)
        except ImportError as exc:
            raise ImportError(f"{where}: reading .parquet needs pyarrow (or fastparquet): "
                              f"{_PARQUET_HINT} ({exc})") from None
        except Exception as exc:  # noqa: BLE001 - pyarrow's many error types
            raise ValueError(f"{where}: not a readable parquet file ({exc})") from None
        table = _frame_columns(pd, frame)
    else:
        known = ", ".join(TEXT_SUFFIXES + ARRAY_SUFFIXES + PARQUET_SUFFIXES)
        raise ValueError(f"{where}: unsupported file type {suffix or '(no suffix)'!r}; "
                         f"use one of {known}")
    return _select(table, where, columns, exclude, context_columns, drop_na)


def _frame_columns(pd, frame):
    names = [str(c) for c in frame.columns]

    def convert(j):
        column = frame.iloc[:, j]
        if column.dtype.kind in "biuf":
            values = column.to_numpy(dtype=np.float64)
            return values, ~np.isfinite(values), -1
        return _convert_cells([("" if v is None or v is pd.NA or (isinstance(v, float) and
                                         np.isnan(v)) else str(v).strip())
                               for v in column.tolist()], ".")

    return _Columns(names, frame.shape[1], convert, lambda j, i: str(frame.iat[i, j]),
                    lambda i: f"row {i} (0-based)")


def _select(table, where, columns, exclude, context_columns, drop_na):
    names, width = table.names, table.width
    if table.convert is None or width == 0:
        raise ValueError(f"{where}: expected a non-empty table of numbers; the file holds no "
                         f"data")
    ctx = [] if context_columns is None else _resolve(context_columns, names, width, where,
                                                      "context_columns")
    if columns is not None:
        cols = _resolve(columns, names, width, where, "columns")
        both = [j for j in cols if j in ctx]
        if both:
            raise ValueError(f"{where}: column {_label(names, both[0])} is in both columns and "
                             f"context_columns")
    else:
        skip = set(ctx) | set([] if exclude is None else _resolve(exclude, names, width, where,
                                                                  "exclude"))
        cols = [j for j in range(width) if j not in skip]
    if not cols:
        raise ValueError(f"{where}: no column is left to read (every column is excluded)")

    arrays, missing = {}, None
    for j in cols + ctx:
        values, nonfinite, bad = table.convert(j)
        if bad >= 0:
            raise ValueError(
                f"{where}: {table.locate(bad)}, column {_label(names, j)}: "
                f"{table.cell(j, bad)!r} is not a number; choose numeric columns with "
                f"columns=[...] or exclude=[...] (--columns / --exclude-columns)")
        arrays[j] = values
        missing = nonfinite if missing is None else missing | nonfinite
    n_rows = missing.shape[0]
    if n_rows == 0:
        raise ValueError(f"{where}: expected a non-empty table of numbers; the file holds no "
                         f"data rows")
    n_dropped = 0
    if missing.any():
        if not drop_na:
            i = int(np.argmax(missing))
            j = next(j for j in cols + ctx if not np.isfinite(arrays[j][i]))
            value = table.cell(j, i)
            what = "an empty cell" if value in ("", None) else repr(value)
            raise ValueError(
                f"{where}: {table.locate(i)}, column {_label(names, j)}: a missing or "
                f"non-finite value (NaN or inf): {what} "
                f"({_rows(int(missing.sum()))} with missing or non-finite values); drop them "
                f"with drop_na=True (--drop-na)")
        keep = ~missing
        n_dropped = int(missing.sum())
        if n_dropped == n_rows:
            raise ValueError(f"{where}: every row ({n_rows}) has a missing or non-finite "
                             f"value in the selected columns")
        arrays = {j: v[keep] for j, v in arrays.items()}
    x = np.column_stack([arrays[j] for j in cols])
    context = np.column_stack([arrays[j] for j in ctx]) if ctx else None
    pick = (lambda idx: [names[j] for j in idx]) if names is not None else (lambda idx: None)
    return Table(np.ascontiguousarray(x), context, pick(cols), pick(ctx) if ctx else None,
                 n_dropped)
