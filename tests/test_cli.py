"""The command line: ``python -m refflow demo``."""

import subprocess
import sys

from refflow.__main__ import main


def test_demo_runs_and_passes(capsys):
    assert main(["demo", "--steps", "150"]) == 0
    out = capsys.readouterr().out
    assert "mean log-likelihood" in out
    assert "Oracle: all checks passed" in out
    # every registered case appears in the table
    from refflow._cases import CASES
    assert all(case_id in out for case_id in CASES)


def test_demo_rejects_bad_arguments():
    result = subprocess.run([sys.executable, "-m", "refflow", "demo", "--steps", "0"],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "--steps" in result.stderr
    result = subprocess.run([sys.executable, "-m", "refflow"], capture_output=True, text=True)
    assert result.returncode == 2
