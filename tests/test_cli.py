"""The command line: ``python -m refflow {demo,fit,score,sample,check,potentials}``."""

import subprocess
import sys

import numpy as np
import pytest

from refflow.__main__ import main

COMMANDS = ["demo", "fit", "score", "sample", "check", "potentials"]
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


def test_demo_fits_beats_a_gaussian_and_draws(tmp_path):
    png = tmp_path / "demo.png"
    status, out = run(["demo", "--epochs", "8", "--plot", str(png)])
    assert status == 0, out
    assert "mean test log-likelihood" in out and "Oracle: all checks passed" in out
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
