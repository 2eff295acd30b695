"""The command line: ``refflow {demo,fit,score,sample,transform,inverse-transform,check,
potentials}`` (also ``python -m refflow``)."""

import configparser
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from refflow.__main__ import main

COMMANDS = ["demo", "fit", "score", "sample", "transform", "inverse-transform", "check",
            "potentials"]
ROOT = pathlib.Path(__file__).resolve().parents[1]
FAST_FIT = ["--n", "300", "--epochs", "2", "--layers", "2", "--hidden", "8,8", "--no-progress"]


def run(argv):
    """``main(argv)`` in-process: (status, stdout lines)."""
    lines = []
    return main(argv, out=lines.append), "\n".join(lines)


def run_subprocess(*argv):
    return subprocess.run([sys.executable, "-m", "refflow", *argv], capture_output=True,
                          text=True, timeout=300)


def assert_one_line_error(capsys, command, *fragments):
    err = capsys.readouterr().err
    assert err.startswith(f"refflow {command}: error: "), err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, err


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "moons.npz"
    status, out = run(["fit", "two_moons", "-o", str(path), "--seed", "1", *FAST_FIT])
    assert status == 0, out
    assert "model written to" in out and path.exists()
    return path


@pytest.mark.parametrize("command", [None] + COMMANDS)
def test_every_command_has_help(command, capsys):
    argv = ["--help"] if command is None else [command, "--help"]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: python -m refflow")
    if command is None:
        assert all(c in out for c in COMMANDS)


def test_fit_writes_a_model_that_loads_and_scores(model_file, tmp_path):
    from refflow import io
    from refflow.datasets import two_moons
    from refflow.estimator import FlowDensity

    model = io.load(model_file)
    assert isinstance(model, FlowDensity) and model.n_features_in_ == 2
    # The data file, with a header line, scored through the command line and in Python.
    x = two_moons(50, rng=7)
    data = tmp_path / "points.csv"
    np.savetxt(data, x, delimiter=",", header="x,y", comments="")
    scores = tmp_path / "scores.npy"
    status, out = run(["score", str(model_file), str(data), "-o", str(scores)])
    assert status == 0 and "50 points" in out
    expected = model.score_samples(np.loadtxt(data, delimiter=",", skiprows=1))
    np.testing.assert_array_equal(np.load(scores), expected)
    assert f"{expected.mean():.4f}" in out


def test_sample_is_seeded_and_matches_the_estimator(model_file, tmp_path):
    from refflow import io

    paths = [tmp_path / f"s{i}.npy" for i in range(3)]
    for path, seed in zip(paths, ["3", "3", "4"]):
        assert run(["sample", str(model_file), "-n", "20", "--seed", seed, "-o", str(path)])[0] == 0
    a, b, c = (np.load(p) for p in paths)
    assert a.shape == (20, 2)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    np.testing.assert_array_equal(a, io.load(model_file).sample(20, random_state=3))


def test_fit_from_npy_file(tmp_path):
    rng = np.random.default_rng(0)
    data = tmp_path / "gauss.npy"
    np.save(data, rng.normal(size=(200, 3)) * [1.0, 2.0, 0.5])
    out_path = tmp_path / "model.npz"
    status, out = run(["fit", str(data), "-o", str(out_path), "--model", "maf", *FAST_FIT[2:]])
    assert status == 0 and "200 x 3" in out and out_path.exists()


def test_bad_data_is_one_clear_line(tmp_path, capsys, model_file):
    model = str(tmp_path / "m.npz")
    assert run(["fit", str(tmp_path / "missing.npy"), "-o", model])[0] == 1
    assert_one_line_error(capsys, "fit", "neither a toy", "two_moons")

    bad = tmp_path / "nan.csv"
    bad.write_text("1,2\n3,nan\n4,5\n")
    assert run(["fit", str(bad), "-o", model])[0] == 1
    assert_one_line_error(capsys, "fit", "NaN")

    other = tmp_path / "data.json"
    other.write_text("[1, 2]")
    assert run(["fit", str(other), "-o", model])[0] == 1
    assert_one_line_error(capsys, "fit", "unsupported file type")

    wrong_dim = tmp_path / "three.npy"
    np.save(wrong_dim, np.zeros((4, 3)))
    assert run(["score", str(model_file), str(wrong_dim)])[0] == 1
    assert_one_line_error(capsys, "score", "3 features")
    assert not (tmp_path / "m.npz").exists()


def test_damaged_or_missing_model_file_is_one_clear_line(tmp_path, capsys, model_file):
    damaged = tmp_path / "damaged.npz"
    damaged.write_bytes(model_file.read_bytes()[:1000])
    out = str(tmp_path / "s.npy")
    assert run(["sample", str(damaged), "-n", "3", "-o", out])[0] == 1
    assert_one_line_error(capsys, "sample", str(damaged))
    assert run(["score", str(tmp_path / "nothing.npz"), "two_moons"])[0] == 1
    assert_one_line_error(capsys, "score", "no such model file")
    # .npy, .csv, .tsv and .txt are written; any other suffix is refused before sampling
    assert run(["sample", str(model_file), "-n", "3", "-o", str(tmp_path / "s.json")])[0] == 1
    assert_one_line_error(capsys, "sample", ".npy", ".json")
    assert not (tmp_path / "s.npy").exists() and not (tmp_path / "s.json").exists()


@pytest.mark.parametrize("argv, fragment", [
    (["fit", "two_moons", "-o", "m.npz", "--epochs", "0"], "--epochs"),
    (["fit", "two_moons", "-o", "m.npz", "--hidden", "a,b"], "--hidden"),
    (["fit", "two_moons", "-o", "m.npz", "--validation-fraction", "1.5"], "--validation-fraction"),
    (["fit", "two_moons"], "--output"),
    (["sample", "m.npz", "-o", "s.npy"], "-n"),
    (["demo", "--epochs", "0"], "--epochs"),
    (["potentials", "U9"], "U9"),
    (["nonsense"], "nonsense"),
])
def test_usage_errors_exit_2(argv, fragment, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert fragment in capsys.readouterr().err


def test_check_runs_the_oracle_over_every_case():
    from refflow._cases import CASES

    status, out = run(["check", "--n", "4"])
    assert status == 0 and "Oracle: all checks passed" in out
    assert all(case_id in out for case_id in CASES)


def test_demo_fits_beats_a_gaussian_and_draws(tmp_path, monkeypatch):
    from refflow import _cases

    # the oracle over every case is test_check_runs_the_oracle_over_every_case's (and CI runs
    # the demo itself); here two cases show that the demo runs it and reports its verdict
    few = dict(list(_cases.CASES.items())[:2])
    monkeypatch.setattr(_cases, "CASES", few)
    png = tmp_path / "demo.png"
    status, out = run(["demo", "--epochs", "8", "--plot", str(png)])
    assert status == 0, out
    assert "mean test log-likelihood" in out and "Oracle: all checks passed (2 bijectors)" in out
    assert all(case_id in out for case_id in few)
    pytest.importorskip("matplotlib")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_potentials_command_reports_kl():
    status, out = run(["potentials", "U1", "--layers", "2", "--steps", "20"])
    assert status == 0 and out.startswith("U1: 2 planar layers") and "+/-" in out


def test_module_entry_point_exit_codes(tmp_path):
    result = run_subprocess("sample", str(tmp_path / "none.npz"), "-n", "2", "-o",
                            str(tmp_path / "x.npy"))
    assert result.returncode == 1 and "no such model file" in result.stderr
    assert "Traceback" not in result.stderr
    assert run_subprocess().returncode == 2


def test_npy_output_is_written_atomically(model_file, tmp_path, monkeypatch, capsys):
    # a failure while writing leaves neither a partial output nor a temporary file
    out = tmp_path / "s.npy"
    out.write_bytes(b"old")

    def failing_save(f, array, allow_pickle):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(np, "save", failing_save)
    assert run(["sample", str(model_file), "-n", "3", "-o", str(out)])[0] == 1
    assert_one_line_error(capsys, "sample", "disk full")
    assert out.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["s.npy"]


# ----------------------------------------------------- the README's potentials command
def test_potentials_with_the_default_names_and_a_new_plot_dir(tmp_path):
    # nargs="*" with choices and a list default failed in argparse; a missing directory was
    # found only after the first fit
    figures = tmp_path / "figures" / "planar"
    status, out = run(["potentials", "--plot-dir", str(figures), "--layers", "1", "--steps", "2",
                       "--no-progress"])
    assert status == 0, out
    assert [line.split(":")[0] for line in out.splitlines()] == ["U1", "U2", "U3", "U4"]
    assert sorted(p.name for p in figures.iterdir()) == [f"potential_U{i}.png" for i in range(1, 5)]
    status, out = run(["potentials", "U3", "U1", "U3", "--layers", "1", "--steps", "2"])
    assert status == 0 and [line[:2] for line in out.splitlines()] == ["U3", "U1"]


def test_potentials_plot_dir_that_is_a_file_is_refused_before_work(tmp_path, capsys, monkeypatch):
    from refflow.training import variational

    monkeypatch.setattr(variational, "fit_potential", refuse_work)
    clash = tmp_path / "figures"
    clash.write_text("")
    assert run(["potentials", "--plot-dir", str(clash)])[0] == 1
    assert_one_line_error(capsys, "potentials", str(clash), "not a directory")


# ------------------------------------------------------ output paths checked before work
def refuse_work(*args, **kwargs):
    raise AssertionError("work started before the output path was checked")


@pytest.fixture
def no_work(monkeypatch):
    from refflow.estimator import FlowDensity

    for method in ("fit", "score_samples", "sample", "transform", "inverse_transform"):
        monkeypatch.setattr(FlowDensity, method, refuse_work, raising=False)


@pytest.mark.parametrize("argv, fragments", [
    (["fit", "two_moons", "-o", "{tmp}/missing/dir/m.npz"], ["missing/dir does not exist"]),
    (["fit", "two_moons", "-o", "{tmp}/m.npy"], ["-o", "must be a .npz file", "'.npy'"]),
    (["fit", "two_moons", "-o", "{tmp}"], ["is a directory"]),
    (["fit", "two_moons", "-o", "{tmp}/m.npz", "--plot", "{tmp}/fig.xyz"], ["--plot", "figure"]),
    (["fit", "two_moons", "-o", "{tmp}/m.npz", "--plot", "{tmp}/no/fig.png"], ["does not exist"]),
    (["score", "{model}", "two_moons", "-o", "{tmp}/scores.json"], ["scores file", ".npy"]),
    (["score", "{model}", "two_moons", "-o", "{tmp}/none/s.npy"], ["does not exist"]),
    (["sample", "{model}", "-n", "5", "-o", "{tmp}/nonexistent/s.npy"], ["does not exist"]),
    (["sample", "{model}", "-n", "5", "-o", "{tmp}"], ["is a directory"]),
    (["transform", "{model}", "two_moons", "-o", "{tmp}/z.bin"], ["latent file"]),
    (["inverse-transform", "{model}", "{tmp}/z.npy", "-o", "{tmp}/x.pkl"], ["output file"]),
])
def test_output_paths_are_checked_before_any_work(argv, fragments, tmp_path, model_file,
                                                  no_work, capsys):
    argv = [a.format(tmp=tmp_path, model=model_file) for a in argv]
    assert run(argv)[0] == 1
    err = capsys.readouterr().err
    assert err.startswith(f"refflow {argv[0]}: error: ") and err.count("\n") == 1, err
    assert all(f in err for f in fragments), err
    assert ".tmp" not in err                       # never a hidden temporary file's name
    assert sorted(p.name for p in tmp_path.iterdir()) == []


# ------------------------------------------------------------------------ real data files
def messy_rows(n, rng):
    """A CSV as a spreadsheet in a decimal-comma locale writes it: a comment, ids, quoted names
    holding the delimiter, decimal commas, and an empty cell in every 97th row."""
    def number(v):
        return repr(float(v)).replace(".", ",")

    lines = ["# a comment line", "id;name;x;y;z"]
    for i in range(n):
        x, y, z = rng.normal(size=3)
        lines.append(f'{i};"row; {i}";{number(x)};{"" if i % 97 == 5 else number(y)};{number(z)}')
    return "\n".join(lines) + "\n"


def test_fit_and_score_a_real_csv(tmp_path, capsys):
    from refflow import io
    from refflow.data.tables import read_table

    rng = np.random.default_rng(0)
    data = tmp_path / "data.csv"
    data.write_text(messy_rows(300, rng), encoding="utf-8")
    model_path = tmp_path / "m.npz"
    # refused without choosing columns: one line naming file, line, column and value
    assert run(["fit", str(data), "-o", str(model_path), *FAST_FIT[2:]])[0] == 1
    assert_one_line_error(capsys, "fit", str(data), "line 3", "column 'name'", "'row; 0'")
    status, out = run(["fit", str(data), "-o", str(model_path), "--exclude-columns", "id,name",
                       "--decimal", ",", "--drop-na", *FAST_FIT[2:]])
    assert status == 0 and "(296 x 3; 4 rows with missing values dropped)" in out, out
    model = io.load(model_path)
    assert list(model.feature_names_in_) == ["x", "y", "z"]
    # scoring finds the model's columns by name in a file with more columns, in another order
    shuffled = tmp_path / "shuffled.tsv"
    table = read_table(data, exclude=["id", "name"], decimal=",", drop_na=True)
    np.savetxt(shuffled, np.column_stack([table.x[:, ::-1], np.arange(len(table.x))]),
               delimiter="\t", header="z\ty\tx\tother", comments="", fmt="%.17g")
    scores = tmp_path / "scores.csv"
    status, out = run(["score", str(model_path), str(shuffled), "-o", str(scores)])
    assert status == 0, out
    with pytest.warns(UserWarning, match="X does not have valid feature names"):
        expected = model.score_samples(table.x)   # (an array, for a model fitted on names)
    np.testing.assert_array_equal(read_table(scores).x[:, 0], expected)
    # --columns in another order than the model's features is refused (names and order)
    assert run(["score", str(model_path), str(shuffled), "--columns", "z,y,x"])[0] == 1
    assert_one_line_error(capsys, "score", "do not match the model's features x,y,z")
    # so are columns left in another order by --exclude-columns
    assert run(["score", str(model_path), str(shuffled), "--exclude-columns", "other"])[0] == 1
    assert_one_line_error(capsys, "score", "the columns read, z,y,x, are not the model's "
                                           "features x,y,z")
    # and a headerless file with a column too many is told how to choose
    np.save(tmp_path / "four.npy", np.zeros((3, 4)))
    assert run(["score", str(model_path), str(tmp_path / "four.npy")])[0] == 1
    assert_one_line_error(capsys, "score", "X has 4 features, but FlowDensity is expecting 3",
                          "--columns")


def test_npz_with_key_and_parquet(tmp_path, model_file):
    x = np.random.default_rng(1).normal(size=(30, 2))
    np.savez(tmp_path / "arrays.npz", train=x, test=x[:5])
    status, out = run(["score", str(model_file), str(tmp_path / "arrays.npz"), "--key", "test"])
    assert status == 0 and "5 points" in out
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    pd.DataFrame({"label": ["a"] * 30, "u": x[:, 0], "v": x[:, 1]}).to_parquet(
        tmp_path / "d.parquet")
    status, out = run(["score", str(model_file), str(tmp_path / "d.parquet"),
                       "--columns", "u,v"])
    assert status == 0 and "30 points" in out


# --------------------------------------------------- rows out of range, readable summary
def test_far_rows_score_minus_inf_and_the_summary_stays_readable(model_file, tmp_path, capsys):
    from refflow import io

    model = io.load(model_file)
    x = np.random.default_rng(2).normal(size=(5000, 2))
    x[17] = 1e200
    np.save(tmp_path / "far.npy", x)
    status, out = run(["score", str(model_file), str(tmp_path / "far.npy"), "-o",
                       str(tmp_path / "s.npy"), "--no-progress"])
    assert status == 0, out
    err = capsys.readouterr().err
    assert err == ("refflow score: warning: FlowDensity.score_samples: 1 of 5000 rows lie "
                   "outside the range where the model's log-density is representable in float64 "
                   "(the first is row 17); their scores are -inf\n")
    scores = np.load(tmp_path / "s.npy")
    good = np.arange(5000) != 17
    assert scores[17] == -np.inf
    np.testing.assert_array_equal(scores[good], model.score_samples(x[good]))
    assert "1 point outside the range the model represents in float64: scored -inf" in out
    # a row at 1e150 is representable but, under a model with a Gaussian base, its log-density
    # is about -1e300: printed readably (the default Student t base's heavier tails give
    # it a log-density of about -7e5 only)
    from refflow.data import toy
    from refflow.estimator import FlowDensity

    gaussian = tmp_path / "gaussian.npz"
    FlowDensity("maf", base="gaussian", n_layers=1, hidden=(8,), epochs=2, random_state=0,
                progress=False).fit(toy("two_moons", 500, rng=0)).save(gaussian)
    x[17] = 1e150
    np.save(tmp_path / "far.npy", x)
    status, out = run(["score", str(gaussian), str(tmp_path / "far.npy")])
    assert status == 0
    stats = out.splitlines()[1]
    assert not re.search(r"\d{12}", stats), out         # no 300-digit number
    assert "inf" not in stats and "nan" not in stats, out   # std computed without overflow
    assert re.search(r"min -\d\.\d{3}e\+\d{3}", stats), out


# ----------------------------------------------------------------------- units and epochs
def test_fit_states_units_and_one_based_epochs_as_the_plot(tmp_path):
    from refflow import io
    from refflow.__main__ import _fmt
    from refflow.plots import plot_history

    path = tmp_path / "m.npz"
    status, out = run(["fit", "two_moons", "-o", str(path), "--n", "400", "--epochs", "6",
                       "--layers", "2", "--hidden", "8,8", "--lr", "0.01", "--no-progress"])
    assert status == 0, out
    assert "mean log-likelihood, nats per sample, in the data's units" in out
    h = io.load(path).history_
    best = int(re.search(r"validation rows, best epoch (\d+)", out).group(1))
    assert best == h.best_epoch + 1
    # two features: average="auto" averages, and either parameters may be the ones kept
    assert re.search(rf"best epoch {best} \(the (averaged )?parameters kept\)  "
                     rf"{re.escape(_fmt(h.val_log_likelihood[h.best_epoch]))}\n", out), out
    assert f"training rows, epoch {h.n_epochs} (mean over its mini-batches)  " \
        f"{_fmt(h.train_log_likelihood[-1])}" in out
    pytest.importorskip("matplotlib")
    ax = plot_history(h).axes[0]
    marks = [line for line in ax.lines if line.get_label().startswith("best epoch")]
    assert list(marks[0].get_xdata()) == [best, best]
    # the plotted curves are in the same units as the printed numbers
    val = next(line for line in ax.lines if line.get_label() == "validation NLL")
    np.testing.assert_allclose(-val.get_ydata()[h.best_epoch],
                               h.val_log_likelihood[h.best_epoch], rtol=1e-15)


# ----------------------------------------------------------------------------- progress
@pytest.mark.parametrize("flag, shown", [(None, False), ("--progress", True),
                                         ("--no-progress", False)])
def test_progress_bars_on_score_and_sample(flag, shown, model_file, tmp_path, capsys):
    # capsys's stderr is not a terminal, like a pipe: the default shows nothing
    extra = [] if flag is None else [flag]
    assert run(["score", str(model_file), "two_moons", *extra])[0] == 0
    assert run(["sample", str(model_file), "-n", "1000", "-o", str(tmp_path / "s.npy"),
                *extra])[0] == 0
    err = capsys.readouterr().err
    assert ("FlowDensity.score_samples" in err and "FlowDensity.sample" in err) == shown, err
    assert bool(err) == shown


def _read_until(stream, pattern, timeout):
    """Bytes of ``stream`` (non-blocking reads) until ``pattern`` matches or ``timeout`` s."""
    import selectors

    selector = selectors.DefaultSelector()
    selector.register(stream, selectors.EVENT_READ)
    seen, deadline = b"", time.monotonic() + timeout
    while time.monotonic() < deadline:
        if selector.select(timeout=0.2):
            chunk = os.read(stream.fileno(), 4096)
            if not chunk:
                break
            seen += chunk
            if re.search(pattern, seen):
                return seen
    raise AssertionError(f"no {pattern!r} within {timeout} s: {seen[-500:]!r}")


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT to a subprocess")
def test_ctrl_c_during_fit_saves_the_best_epoch_and_exits_130(tmp_path):
    model = tmp_path / "m.npz"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OPENBLAS_NUM_THREADS="1")
    process = subprocess.Popen(
        [sys.executable, "-m", "refflow", "fit", "two_moons", "-o", str(model), "--n", "2000",
         "--epochs", "100000", "--patience", "0", "--layers", "2", "--hidden", "8,8",
         "--batch-size", "50", "--progress"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
        # an interactive Ctrl-C: SIGINT's default action in the command, even when this test
        # runs in a process started in the background with SIGINT ignored (which a child
        # would inherit, and Python would leave ignored)
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        # wait for the bar to show steps taken (the handler is in place by then), and one
        # epoch or so more, then press Ctrl-C
        _read_until(process.stderr, rb"\| *[1-9]\d*/\d+", timeout=120)
        time.sleep(1.0)
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    stdout, stderr = stdout.decode(), stderr.decode()
    assert process.returncode == 130, (stdout, stderr)
    assert "Traceback" not in stderr and "interrupted (Ctrl-C)" in stdout, (stdout, stderr)
    assert f"model written to {model}" in stdout
    from refflow import io

    loaded = io.load(model)
    assert loaded.history_.stop_reason == "interrupted"
    assert np.isfinite(loaded.score_samples(np.zeros((1, 2)))).all()


# ------------------------------------------------------------------ what users expect
def test_console_script_and_version(capsys, monkeypatch):
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    scripts = config["options.entry_points"]["console_scripts"].strip().splitlines()
    assert "refflow = refflow.__main__:main" in [line.strip() for line in scripts]
    from refflow._version import __version__

    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.startswith(f"refflow {__version__} (Python ")
    monkeypatch.setattr(sys, "argv", ["/usr/local/bin/refflow", "--help"])
    with pytest.raises(SystemExit):
        main(["--help"])
    assert capsys.readouterr().out.startswith("usage: refflow ")


def test_fit_plot_for_two_and_more_features(tmp_path):
    pytest.importorskip("matplotlib")
    png = tmp_path / "fit.png"
    status, out = run(["fit", "two_moons", "-o", str(tmp_path / "m.npz"), "--plot", str(png),
                       *FAST_FIT])
    assert status == 0 and f"figure written to {png}" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    wide = tmp_path / "wide.npy"
    np.save(wide, np.random.default_rng(0).normal(size=(200, 8)))
    pdf = tmp_path / "wide.pdf"
    status, out = run(["fit", str(wide), "-o", str(tmp_path / "w.npz"), "--plot", str(pdf),
                       *FAST_FIT[2:]])
    assert status == 0 and pdf.read_bytes()[:5] == b"%PDF-"


def test_wide_data_fits_with_the_auto_width_and_the_hints_name_cli_options(tmp_path, capsys):
    wide = tmp_path / "wide.npy"
    np.save(wide, np.random.default_rng(0).normal(size=(100, 70)))
    out_path = str(tmp_path / "w.npz")
    common = ["--epochs", "1", "--layers", "1", "--no-progress"]
    status, out = run(["fit", str(wide), "-o", out_path, "--model", "maf", *common])
    assert status == 0 and "hidden (70, 70)" in out, out
    assert run(["fit", str(wide), "-o", out_path, "--model", "maf", "--hidden", "8,8",
                *common])[0] == 1
    assert_one_line_error(capsys, "fit", "--hidden W,W", "--option hidden_degrees=random")
    status, out = run(["fit", str(wide), "-o", out_path, "--model", "maf", "--hidden", "8,8",
                       "--option", "hidden_degrees=random", *common])
    assert status == 0, out


def test_transform_and_inverse_transform_commands(model_file, tmp_path):
    from refflow import io
    from refflow.datasets import two_moons

    x = two_moons(40, rng=3)
    np.save(tmp_path / "x.npy", x)
    assert run(["transform", str(model_file), str(tmp_path / "x.npy"), "-o",
                str(tmp_path / "z.csv")])[0] == 0
    assert run(["inverse-transform", str(model_file), str(tmp_path / "z.csv"), "-o",
                str(tmp_path / "back.npy")])[0] == 0
    model = io.load(model_file)
    from refflow.data.tables import read_table

    z = read_table(tmp_path / "z.csv")
    assert z.names == ["z0", "z1"]
    np.testing.assert_array_equal(z.x, model.transform(x))
    np.testing.assert_allclose(np.load(tmp_path / "back.npy"), x, rtol=1e-10, atol=1e-10)


# (the Python calls below pass arrays to a model fitted on named columns: sklearn's warning)
@pytest.mark.filterwarnings("ignore:.*does not have valid feature names")
def test_conditional_fit_score_and_sample_from_the_command_line(tmp_path, capsys):
    from refflow import io

    rng = np.random.default_rng(0)
    c = rng.normal(size=300) * 5 + 20
    x = np.column_stack([0.5 * (c - 20) + 0.1 * rng.normal(size=300), rng.normal(size=300)])
    data = tmp_path / "cond.csv"
    np.savetxt(data, np.column_stack([x, c]), delimiter=",", header="a,b,temp", comments="",
               fmt="%.17g")
    model_path = tmp_path / "c.npz"
    status, out = run(["fit", str(data), "-o", str(model_path), "--context-columns", "temp",
                       "--model", "maf", *FAST_FIT[2:]])
    assert status == 0 and "1 context column" in out, out
    model = io.load(model_path)
    assert list(model.context_names_in_) == ["temp"] and model.n_context_features_in_ == 1
    status, out = run(["score", str(model_path), str(data), "-o", str(tmp_path / "s.npy")])
    assert status == 0, out
    np.testing.assert_array_equal(np.load(tmp_path / "s.npy"),
                                  model.score_samples(x, context=c[:, None]))
    assert run(["sample", str(model_path), "-n", "4", "--context", "25", "-o",
                str(tmp_path / "s4.npy"), "--seed", "1"])[0] == 0
    np.testing.assert_array_equal(np.load(tmp_path / "s4.npy"),
                                  model.sample(4, random_state=1, context=[25.0]))
    contexts = tmp_path / "contexts.csv"
    contexts.write_text("temp\n15\n20\n25\n")
    assert run(["sample", str(model_path), "-n", "3", "--context-file", str(contexts), "-o",
                str(tmp_path / "s3.csv")])[0] == 0
    assert run(["sample", str(model_path), "-n", "3", "-o", str(tmp_path / "s.npy")])[0] == 1
    assert_one_line_error(capsys, "sample", "conditional", "--context")


# ------------------------------------------------------------------------- small things
def test_fit_defaults_are_flow_densitys(tmp_path):
    from refflow.__main__ import build_parser
    from refflow.estimator import FlowDensity

    args = build_parser().parse_args(["fit", "two_moons", "-o", "m.npz"])
    python = FlowDensity().get_params()
    for option, param in [("patience", "patience"), ("epochs", "epochs"), ("lr", "lr"),
                          ("batch_size", "batch_size"), ("model", "flow"),
                          ("validation_fraction", "validation_fraction"),
                          ("weight_decay", "weight_decay"), ("base", "base"),
                          ("average_decay", "average_decay"), ("average", "average"),
                          ("whiten", "whiten"), ("rotation", "rotation")]:
        assert getattr(args, option) == python[param], option
    assert python["average"] == "auto" and python["whiten"] == "auto"
    assert python["rotation"] == "auto"
    assert args.blend == python["blend"] == "auto"
    assert python["lr_schedule"] == "plateau" and args.lr_schedule == "plateau"
    assert python["epochs"] == "auto" and python["patience"] == "auto"
    assert "(default auto, as FlowDensity" in build_parser()._subparsers._group_actions[0] \
        .choices["fit"].format_help().replace("\n", " ").replace("  ", " ")


def test_fit_training_options_reach_flow_density(tmp_path, capsys, monkeypatch):
    """--lr-schedule, --weight-decay, --average, --average-decay and --base are passed to
    FlowDensity as given ("none" as None), and the summary says when the averaged parameters
    were kept; an averaged fit from the command line is the same model as from Python."""
    import refflow.estimator as estimator
    from refflow import io
    from refflow.datasets import two_moons

    seen = {}
    original = estimator.FlowDensity.fit

    def spy(self, X, **kw):
        seen.update(self.get_params())
        return original(self, X, **kw)

    monkeypatch.setattr(estimator.FlowDensity, "fit", spy)
    data = tmp_path / "moons.npy"
    np.save(data, two_moons(300, rng=np.random.default_rng(0)))
    path = tmp_path / "m.npz"
    code, text = run(["fit", str(data), "-o", str(path), "--model", "maf", "--layers", "2",
                      "--hidden", "16,16", "--epochs", "4", "--lr-schedule", "cosine",
                      "--weight-decay", "0.01", "--average", "ema", "--average-decay", "0.9",
                      "--base", "gaussian", "--seed", "3"])
    assert code == 0, text
    assert (seen["lr_schedule"], seen["weight_decay"], seen["average"], seen["average_decay"],
            seen["base"]) == ("cosine", 0.01, "ema", 0.9, "gaussian")
    python = estimator.FlowDensity(flow="maf", n_layers=2, hidden=(16, 16), epochs=4,
                                   lr_schedule="cosine", weight_decay=0.01, average="ema",
                                   average_decay=0.9, base="gaussian", random_state=3,
                                   progress=False).fit(np.load(data))
    kept = ("the averaged parameters kept" if python.history_.best_averaged
            else "the parameters kept")
    assert kept in text
    x = two_moons(50, rng=np.random.default_rng(1))
    np.testing.assert_array_equal(io.load(path).score_samples(x), python.score_samples(x))
    seen.clear()
    assert run(["fit", str(data), "-o", str(tmp_path / "n.npz"), "--model", "maf",
                "--layers", "2", "--hidden", "16,16", "--epochs", "1"])[0] == 0
    assert seen["lr_schedule"] == "plateau" and seen["average"] == "auto"
    assert run(["fit", str(data), "-o", str(tmp_path / "o.npz"), "--model", "maf", "--layers",
                "2", "--hidden", "16,16", "--epochs", "1", "--average", "none",
                "--lr-schedule", "none"])[0] == 0
    # "none" on the command line is FlowDensity's None
    assert seen["average"] is None and seen["whiten"] == "auto" and seen["lr_schedule"] is None
    for given, param in (("yes", True), ("no", False), ("auto", "auto")):
        assert run(["fit", str(data), "-o", str(tmp_path / "w.npz"), "--model", "maf",
                    "--layers", "1", "--hidden", "8,8", "--epochs", "1", "--whiten",
                    given])[0] == 0
        assert seen["whiten"] == param and type(seen["whiten"]) is type(param)
    for given, param in (("ica", "ica"), ("none", None), ("auto", "auto")):
        assert run(["fit", str(data), "-o", str(tmp_path / "r.npz"), "--model", "maf",
                    "--layers", "1", "--hidden", "8,8", "--epochs", "1", "--rotation",
                    given])[0] == 0
        assert seen["rotation"] == param


@pytest.mark.parametrize("option, value, fragment", [
    ("--average-decay", "1", "expected a number in (0, 1)"),
    ("--weight-decay", "-1", "expected a non-negative number"),
    ("--average", "swa", "invalid choice"),
    ("--base", "cauchy", "invalid choice"),
    ("--epochs", "0", "expected a positive integer or auto"),
    ("--patience", "soon", "expected a non-negative integer or auto"),
    ("--whiten", "true", "invalid choice")])
def test_fit_training_options_refuse_bad_values(tmp_path, capsys, option, value, fragment):
    out = tmp_path / "m.npz"
    with pytest.raises(SystemExit) as exc:
        main(["fit", "two_moons", "-o", str(out), option, value])
    assert exc.value.code == 2
    assert fragment in capsys.readouterr().err
    assert not out.exists()


def test_fit_names_the_candidates_and_the_one_kept(tmp_path):
    """With the defaults (flow="auto", whiten="auto") on 300 rows, four candidates are fitted;
    the summary lists each one's validation score as the saved model has it, and names the
    best as kept."""
    from refflow import io
    from refflow.datasets import two_moons

    data = tmp_path / "moons.npy"
    np.save(data, two_moons(300, rng=np.random.default_rng(0)))
    path = tmp_path / "m.npz"
    code, text = run(["fit", str(data), "-o", str(path), "--layers", "1", "--hidden", "8,8",
                      "--epochs", "2", "--seed", "0"])
    assert code == 0, text
    model = io.load(path)
    scores = model.candidate_scores_
    assert list(scores) == ["maf", "nsf", "maf (unwhitened)", "nsf (unwhitened)"]
    listed = ", ".join(f"{k} {v:.4f}" for k, v in scores.items())
    assert "4 candidates fitted in " in text and f"log-likelihood: {listed}\n" in text
    kept = max(scores, key=scores.get)
    assert f"  kept {kept}: " in text
    assert model.flow_name_ == kept.split(" ")[0]
    assert model.whitened_ == (not kept.endswith("(unwhitened)"))


def test_fit_says_when_the_rows_were_rotated(tmp_path):
    """--rotation ica (auto rotates only above 5,000 rows): the summary says the kept fit is
    rotated, as the saved model is; --rotation none: not said, not rotated."""
    from refflow import io

    data = tmp_path / "wide.npy"
    np.save(data, np.random.default_rng(0).laplace(size=(300, 5)))
    said = "fitted to the whitened rows rotated to their independent components"
    for rotation, rotated in (("ica", True), ("none", False)):
        path = tmp_path / f"{rotation}.npz"
        code, text = run(["fit", str(data), "-o", str(path), "--layers", "1", "--hidden", "8,8",
                          "--model", "maf", "--whiten", "yes", "--epochs", "1", "--rotation",
                          rotation])
        assert code == 0, text
        assert (said in text) == rotated and io.load(path).rotated_ == rotated


def test_fit_resolves_the_automatic_training_length(tmp_path):
    """--epochs and --patience default to auto, resolved by the data's width as FlowDensity
    resolves them (200 and 20 on two features); given values are used as they are."""
    path = tmp_path / "m.npz"
    code, text = run(["fit", "two_moons", "--n", "300", "-o", str(path), "--layers", "1",
                      "--hidden", "8,8", "--whiten", "yes", "--model", "maf"])
    assert code == 0, text
    # (this seed's best epoch was the first: patience 20 ran out after epoch 21, the rate
    # was lowered, and half the patience, 10 epochs, passed without a better score)
    assert "up to 200 epochs" in text
    assert ("31 epochs (62 steps)" in text and "from epoch 22 at lr 0.0001" in text
            and "stopped early: 10 epochs without a better validation score" in text)
    code, text = run(["fit", "two_moons", "--n", "300", "-o", str(path), "--layers", "1",
                      "--hidden", "8,8", "--whiten", "yes", "--model", "maf", "--epochs", "3",
                      "--patience", "1"])
    assert code == 0, text
    assert "up to 3 epochs" in text


def test_fit_summary_says_where_the_learning_rate_was_lowered(tmp_path):
    """With the default --lr-schedule plateau the summary names the epoch from which the fit
    ran at the lower rate and the patience after it, as the Python fit's history has them."""
    from refflow.datasets import two_moons
    from refflow.estimator import FlowDensity

    data = tmp_path / "moons.npy"
    np.save(data, two_moons(400, rng=np.random.default_rng(0)))
    options = ["--model", "maf", "--layers", "1", "--hidden", "8,8", "--epochs", "60",
               "--patience", "2", "--lr", "0.03", "--base", "gaussian", "--seed", "0"]
    code, text = run(["fit", str(data), "-o", str(tmp_path / "m.npz"), *options])
    assert code == 0, text
    python = FlowDensity(flow="maf", n_layers=1, hidden=(8, 8), epochs=60, patience=2, lr=0.03,
                         base="gaussian", random_state=0, progress=False).fit(np.load(data))
    (drop,) = python.history_.lr_drops
    h = python.history_
    assert (f"kept maf: {h.n_epochs} epochs ({h.n_steps} steps); from epoch {drop + 2} at lr "
            f"0.003 (the best epoch's parameters put back); stopped early: 1 epoch without a "
            f"better validation score") in text
    code, text = run(["fit", str(data), "-o", str(tmp_path / "n.npz"), *options,
                      "--lr-schedule", "none"])
    assert code == 0 and "at lr" not in text and "stopped early: 2 epochs" in text


def test_fit_blend(tmp_path):
    """--blend yes: the Python blend, named in the summary, saved and scored as in Python."""
    from refflow import io
    from refflow.datasets import two_moons
    from refflow.estimator import FlowDensity

    data = tmp_path / "moons.npy"
    np.save(data, two_moons(300, rng=np.random.default_rng(0)))
    path = tmp_path / "b.npz"
    code, text = run(["fit", str(data), "-o", str(path), "--model", "maf", "--layers", "1",
                      "--hidden", "8,8", "--epochs", "3", "--blend", "yes", "--seed", "2"])
    assert code == 0, text
    python = FlowDensity("maf", n_layers=1, hidden=(8, 8), epochs=3, blend=True,
                         random_state=2, progress=False).fit(np.load(data))
    assert "blended (weights by the validation rows): maf " in text and " gmm " in text
    x = two_moons(50, rng=np.random.default_rng(1))
    loaded = io.load(path)
    assert loaded.blend_weights_ == python.blend_weights_
    np.testing.assert_array_equal(loaded.score_samples(x), python.score_samples(x))
    with pytest.raises(SystemExit):   # argparse's choices
        run(["fit", str(data), "-o", str(tmp_path / "c.npz"), "--blend", "maybe"])
