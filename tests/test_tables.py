"""refflow.data.tables.read_table: real-world data files, by pandas and by the own parser."""

import importlib.util

import numpy as np
import pytest

from refflow.data.tables import column_names, read_table

HAS_PANDAS = importlib.util.find_spec("pandas") is not None
ENGINES = ["python", pytest.param("pandas", marks=pytest.mark.skipif(
    not HAS_PANDAS, reason="pandas is not installed"))]


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(params=ENGINES)
def engine(request):
    return request.param


# A file as exported by a spreadsheet or a database: an id column, a text column with a quoted
# delimiter, a doubled quote and a newline inside quotes, a comment line, a trailing comment, a
# blank line, an empty cell and a missing-value marker.
MESSY = '''# exported 2026-01-01
id,name,x,y
1,"Smith, J",0.5,1.5
2,"say ""hi""",2,3   # trailing comment

3,"two
lines",4e-3,
4,plain,-7,NA
5,last,1e300,-0.25
'''


def test_messy_csv_with_columns_and_drop_na(tmp_path, engine):
    path = write(tmp_path, "messy.csv", MESSY)
    table = read_table(path, exclude=["id", "name"], drop_na=True, engine=engine)
    assert table.names == ["x", "y"] and table.n_dropped == 2 and table.context is None
    np.testing.assert_array_equal(table.x, [[0.5, 1.5], [2.0, 3.0], [1e300, -0.25]])
    # the same by name and by 0-based position, in another order
    by_name = read_table(path, columns=["y", "x"], drop_na=True, engine=engine)
    by_position = read_table(path, columns=["3", 2], drop_na=True, engine=engine)
    np.testing.assert_array_equal(by_name.x, table.x[:, ::-1])
    np.testing.assert_array_equal(by_position.x, table.x[:, ::-1])
    assert by_name.names == by_position.names == ["y", "x"]


def test_text_column_is_one_line_naming_file_line_column_and_value(tmp_path, engine):
    path = write(tmp_path, "messy.csv", MESSY)
    with pytest.raises(ValueError) as info:
        read_table(path, drop_na=True, engine=engine)
    message = str(info.value)
    # the first text cell: line 3 of the file (header on line 2), column 'name'
    assert message.startswith(f"{path}: line 3, column 'name': 'Smith, J' is not a number")
    assert "--exclude-columns" in message and "\n" not in message


def test_missing_value_is_one_line_naming_line_and_column(tmp_path, engine):
    path = write(tmp_path, "messy.csv", MESSY)
    with pytest.raises(ValueError) as info:
        read_table(path, exclude=["id", "name"], engine=engine)
    message = str(info.value)
    # the record that starts on line 6 spans two lines; its y cell is empty
    assert message.startswith(f"{path}: line 6, column 'y': a missing or non-finite value "
                              f"(NaN or inf): an empty cell (2 rows with")
    assert "--drop-na" in message and "\n" not in message


@pytest.mark.parametrize("name, text", [
    ("semicolon.csv", "a;b\n1,5;2\n3;4\n"),           # ';' detected (the ',' is the decimal)
    ("tabs.tsv", "a\tb\n1.5\t2\n3\t4\n"),               # .tsv: tab
    ("tabs.csv", "a\tb\n1.5\t2\n3\t4\n"),               # a tab-separated .csv, detected
    ("pipes.txt", "a|b\n1.5|2\n3|4\n"),
    ("spaces.txt", "a b\n1.5   2\n 3 4\n"),              # numpy.savetxt's output: whitespace
    ("crlf.csv", "a,b\r\n1.5,2\r\n3,4\r\n"),
    ("bom.csv", "\ufeffa,b\n1.5,2\n3,4\n"),
])
def test_delimiters_are_detected(tmp_path, engine, name, text):
    path = write(tmp_path, name, text)
    decimal = "," if name == "semicolon.csv" else "."
    table = read_table(path, engine=engine, decimal=decimal)
    assert table.names == ["a", "b"]
    np.testing.assert_array_equal(table.x, [[1.5, 2.0], [3.0, 4.0]])


def test_explicit_delimiter_and_no_header(tmp_path, engine):
    path = write(tmp_path, "plain.txt", "1;2\n3;4\n")
    table = read_table(path, delimiter=";", engine=engine)
    assert table.names is None
    np.testing.assert_array_equal(table.x, [[1.0, 2.0], [3.0, 4.0]])
    with pytest.raises(ValueError, match="no header to name columns by"):
        read_table(path, delimiter=";", columns=["a"], engine=engine)


def test_context_columns(tmp_path, engine):
    path = write(tmp_path, "ctx.csv", "x,c,y,label\n1,10,2,a\n3,30,4,b\n")
    table = read_table(path, context_columns=["c"], exclude=["label"], engine=engine)
    assert table.names == ["x", "y"] and table.context_names == ["c"]
    np.testing.assert_array_equal(table.x, [[1.0, 2.0], [3.0, 4.0]])
    np.testing.assert_array_equal(table.context, [[10.0], [30.0]])
    with pytest.raises(ValueError, match="in both columns and context_columns"):
        read_table(path, columns=["x", "c"], context_columns=["c"], engine=engine)


def test_engines_agree_bit_for_bit(tmp_path):
    pytest.importorskip("pandas")
    rng = np.random.default_rng(0)
    values = rng.normal(size=(300, 4)) * 10.0 ** rng.integers(-300, 300, size=(300, 4))
    path = tmp_path / "numbers.csv"
    np.savetxt(path, values, fmt="%.17g", delimiter=",", header="a,b,c,d", comments="")
    a = read_table(path, engine="python").x
    b = read_table(path, engine="pandas").x
    np.testing.assert_array_equal(a, values)  # 17 significant digits round-trip exactly
    np.testing.assert_array_equal(b, values)


@pytest.mark.parametrize("text, fragment", [
    ("", "holds no data"),
    ("a,b\n", "holds no data rows"),
    ("a,b\n1,2,3\n", "3"),
    ('a,b\n"1,2\n', "quoted field is not closed"),
])
def test_malformed_text_is_one_line(tmp_path, text, fragment):
    # (the python parser; pandas' own messages differ in wording)
    path = write(tmp_path, "bad.csv", text)
    with pytest.raises(ValueError) as info:
        read_table(path, engine="python")
    assert str(info.value).startswith(f"{path}: ") and fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_npy_and_npz(tmp_path):
    x = np.arange(12.0).reshape(6, 2)
    np.save(tmp_path / "x.npy", x)
    np.testing.assert_array_equal(read_table(tmp_path / "x.npy").x, x)
    np.savez(tmp_path / "one.npz", data=x)
    np.testing.assert_array_equal(read_table(tmp_path / "one.npz").x, x)
    np.savez(tmp_path / "two.npz", train=x, test=x[:2] + 1)
    with pytest.raises(ValueError, match=r"holds 2 arrays \(train, test\); choose one with key"):
        read_table(tmp_path / "two.npz")
    np.testing.assert_array_equal(read_table(tmp_path / "two.npz", key="test").x, x[:2] + 1)
    with pytest.raises(ValueError, match="no array 'valid'"):
        read_table(tmp_path / "two.npz", key="valid")
    # NaN in an array: the 0-based row and column, or dropped
    x[3, 1] = np.nan
    np.save(tmp_path / "nan.npy", x)
    with pytest.raises(ValueError, match=r"row 3 \(0-based\), column 1 \(0-based\)"):
        read_table(tmp_path / "nan.npy")
    assert read_table(tmp_path / "nan.npy", drop_na=True).n_dropped == 1


def test_parquet(tmp_path):
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    frame = pd.DataFrame({"id": [1, 2, 3], "name": ["a", "b", "c"], "x": [0.5, np.nan, 2.0],
                          "y": [1.0, 2.0, 3.0]})
    frame.to_parquet(tmp_path / "data.parquet")
    table = read_table(tmp_path / "data.parquet", exclude=["id", "name"], drop_na=True)
    assert table.names == ["x", "y"] and table.n_dropped == 1
    np.testing.assert_array_equal(table.x, [[0.5, 1.0], [2.0, 3.0]])
    assert column_names(tmp_path / "data.parquet") == ["id", "name", "x", "y"]
    with pytest.raises(ValueError, match=r"row 0 \(0-based\), column 'name': 'a' is not a number"):
        read_table(tmp_path / "data.parquet")


def test_parquet_without_pandas_names_the_extra(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_pandas(name, *args, **kwargs):
        if name == "pandas" or name.startswith("pandas."):
            raise ImportError("No module named 'pandas'")
        return real_import(name, *args, **kwargs)

    path = tmp_path / "data.parquet"
    path.write_bytes(b"PAR1")
    monkeypatch.setattr(builtins, "__import__", no_pandas)
    with pytest.raises(ImportError, match=r'pip install "refflow\[parquet\]"'):
        read_table(path)


def test_paths_and_suffixes(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        read_table(tmp_path / "missing.csv")
    with pytest.raises(IsADirectoryError, match="is a directory"):
        read_table(tmp_path)
    path = write(tmp_path, "data.json", "[1]")
    with pytest.raises(ValueError, match=r"unsupported file type '\.json'; use one of \.csv"):
        read_table(path)


def test_column_names_reads_the_header_only(tmp_path):
    path = write(tmp_path, "h.csv", '# c\n"a, 1";b\n1;text\n')
    assert column_names(path) == ["a, 1", "b"]
    assert column_names(write(tmp_path, "n.csv", "1,2\n")) is None
    np.save(tmp_path / "x.npy", np.zeros((2, 2)))
    assert column_names(tmp_path / "x.npy") is None
