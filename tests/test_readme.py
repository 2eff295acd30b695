"""Every example of README.md runs on its own, as a reader pastes it.

Each ```python block runs in a fresh interpreter (doctest blocks through ``doctest``, with their
outputs checked; script blocks as scripts), so a block that leans on an import or a name of an
earlier block fails here; pytest's README doctest runs them in one shared namespace and cannot
see that. Blocks importing a peer that is not installed (torch, zuko, nflows) are skipped.

Each ```bash block that runs ``refflow`` commands runs in a fresh empty directory, verbatim,
with options appended for speed (argparse keeps the last value: ``--epochs 2`` after the
block's own ``--epochs``); ``refflow demo`` and ``refflow check`` are left to test_cli.py, which
runs both. Blocks that install packages or run pytest are not run.
"""

import ast
import importlib.util
import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
TEXT = (ROOT / "README.md").read_text(encoding="utf-8")
BLOCKS = [(m.group(1), m.group(2), TEXT.count("\n", 0, m.start()) + 1)
          for m in re.finditer(r"^```(\w*)\n(.*?)^```", TEXT, flags=re.S | re.M)]
PYTHON = [(code, line) for lang, code, line in BLOCKS if lang == "python"]
SHELL = [(code, line) for lang, code, line in BLOCKS
         if lang == "bash" and "refflow " in code and "pip install" not in code]

# Fast options appended to each command (argparse: the last occurrence wins).
FAST = {"fit": "--epochs 2 --layers 2 --hidden 8,8 --n 500 --no-progress",
        "potentials": "--steps 2 --layers 1 --no-progress"}
PRELUDE = """
refflow() {
    case "$1" in
        demo|check) echo "refflow $1: run by tests/test_cli.py";;
        fit) "$PYTHON" -m refflow "$@" %(fit)s;;
        potentials) "$PYTHON" -m refflow "$@" %(potentials)s;;
        *) "$PYTHON" -m refflow "$@";;
    esac
}
""" % FAST

DOCTEST_RUNNER = """
import doctest, sys
text = sys.stdin.read()
test = doctest.DocTestParser().get_doctest(text, {"__name__": "__main__"}, "README block",
                                           "README.md", 0)
runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS)
runner.run(test)
sys.exit(1 if runner.failures else 0)
"""


def _env():
    # one BLAS thread: the examples' small GEMMs only lose from a second thread that competes
    # with other work (DEVELOPERS.md, "BLAS threads on small models")
    return dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
                MPLBACKEND="Agg", OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")


def _missing_imports(code):
    source = "\n".join(line[4:] if line.startswith((">>> ", "... ")) else line
                       for line in code.splitlines()
                       if line.startswith((">>> ", "... ")) or ">>>" not in code)
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return sorted(n for n in names if importlib.util.find_spec(n) is None)


def test_the_readme_has_examples():
    assert len(PYTHON) >= 8 and len(SHELL) >= 2


@pytest.mark.parametrize("code, line", PYTHON, ids=[f"line {line}" for _, line in PYTHON])
def test_python_block_runs_alone(code, line, tmp_path):
    missing = _missing_imports(code)
    if missing:
        pytest.skip(f"the block imports {', '.join(missing)}, which is not installed")
    if ">>> " in code:
        result = subprocess.run([sys.executable, "-c", DOCTEST_RUNNER], input=code, text=True,
                                capture_output=True, cwd=tmp_path, env=_env(), timeout=600)
    else:
        result = subprocess.run([sys.executable, "-c", code], text=True, capture_output=True,
                                cwd=tmp_path, env=_env(), timeout=600)
    assert result.returncode == 0, f"README.md line {line}:\n{result.stdout}\n{result.stderr}"


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
@pytest.mark.parametrize("code, line", SHELL, ids=[f"line {line}" for _, line in SHELL])
def test_shell_block_runs_alone(code, line, tmp_path):
    pytest.importorskip("matplotlib")  # the block draws figures
    env = dict(_env(), PYTHON=sys.executable)
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", PRELUDE + code], text=True,
                            capture_output=True, cwd=tmp_path, env=env, timeout=600)
    assert result.returncode == 0, f"README.md line {line}:\n{result.stdout}\n{result.stderr}"
    assert "Traceback" not in result.stderr
    # what the commands wrote exists (the README's points.csv among them)
    for path in re.findall(r"-o (\S+)", code):
        assert (tmp_path / path).exists(), path
