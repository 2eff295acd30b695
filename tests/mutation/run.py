"""Planted-bug harness: does the test suite catch realistic single bugs?

Each mutant in :mod:`tests.mutation.mutants` is one textual change to one file of the package
(``old`` -> ``new``, ``old`` occurring exactly once) and the pytest runs that should catch it.
For every mutant this script applies the change in a temporary copy of the repository, runs
those tests there (``python -m pytest -x``, one run per entry of ``tests``, CI's derandomized
hypothesis profile), restores the file and reports the mutant as

- ``caught``: a run failed;
- ``SURVIVED``: the tests passed on the bug (a blind spot of the suite);
- ``stale``: the ``old`` text is not in the file exactly once (the code moved: retarget the
  entry);
- ``error``: pytest could not run the tests (exit code other than 0 or 1), or timed out.

Run on demand, never in CI (a full run takes tens of minutes)::

    python tests/mutation/run.py                 # every mutant
    python tests/mutation/run.py --only io-shape-as-size spline-exp-clamp-f32
    python tests/mutation/run.py --family splines --markdown results.md
    python tests/mutation/run.py --list          # ids, files, tests; nothing run

The working tree is copied as it is (tracked and untracked files, without ``.git`` and ignored
files), so uncommitted changes are part of the run. numba compiles into a cache inside the
temporary directory, and a mutated file gets a distinct modification time, so no compiled
kernel of one mutant is reused by another. The repository itself is never modified.
"""

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _load_mutants():
    sys.path.insert(0, str(ROOT))
    try:
        from tests.mutation.mutants import MUTANTS
    finally:
        sys.path.pop(0)
    return MUTANTS


def _copy_tree(dest):
    """Copy the working tree's tracked and untracked (not ignored) files to ``dest``."""
    listing = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                             cwd=ROOT, check=True, capture_output=True).stdout
    for rel in listing.decode().split("\0"):
        if not rel:
            continue
        src = ROOT / rel
        if not src.is_file():       # deleted in the working tree
            continue
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target)


def _failed_tests(output):
    """The ids of the failed tests from pytest's short summary (``FAILED id - message``)."""
    return re.findall(r"^(?:FAILED|ERROR) (\S+)", output, flags=re.MULTILINE)


def _run_pytest(copy, args, env, timeout):
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "--no-header", "-p", "no:cacheprovider", "-n", "0",
           "-rfE", *shlex.split(args)]
    start = time.monotonic()
    try:
        proc = subprocess.run(cmd, cwd=copy, env=env, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, "", time.monotonic() - start
    return proc.returncode, proc.stdout + proc.stderr, time.monotonic() - start


def run_mutant(mutant, copy, env, timeout):
    """Apply one mutant in ``copy``, run its tests, restore; a result dict."""
    path = copy / mutant.file
    result = {"id": mutant.id, "family": mutant.family, "file": mutant.file,
              "tests": list(mutant.tests)}
    if not path.is_file():
        return dict(result, status="stale", detail=f"{mutant.file} does not exist")
    original = path.read_text(encoding="utf-8")
    count = original.count(mutant.old)
    if count != 1:
        return dict(result, status="stale", detail=f"old text found {count} times")
    stat = path.stat()
    try:
        path.write_text(original.replace(mutant.old, mutant.new), encoding="utf-8")
        # a distinct modification time: numba's cache never takes this for the original
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
        seconds = 0.0
        for args in mutant.tests:
            rc, output, took = _run_pytest(copy, args, env, timeout)
            seconds += took
            if rc != 0:
                break
    finally:
        path.write_text(original, encoding="utf-8")
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 2_000_000_000))
    failed = _failed_tests(output)
    if rc is None:
        status, detail = "error", f"timed out after {timeout} s"
    elif rc == 1:
        status, detail = "caught", failed[0] if failed else "tests failed"
    elif rc == 0:
        status, detail = "SURVIVED", "all tests passed"
    else:
        tail = output.strip().splitlines()[-3:]
        status, detail = "error", f"pytest exit code {rc}: {' | '.join(tail)}"
    return dict(result, status=status, detail=detail, seconds=round(seconds, 1))


def markdown(results):
    lines = ["| mutant | family | file | result | caught by |", "| --- | --- | --- | --- | --- |"]
    for r in results:
        lines.append(f"| `{r['id']}` | {r['family']} | `{r['file']}` | {r['status']} | "
                     f"{r['detail'].replace('|', '/')} |")
    counts = {s: sum(r["status"] == s for r in results)
              for s in ("caught", "SURVIVED", "stale", "error")}
    lines.append("")
    lines.append(", ".join(f"{n} {s}" for s, n in counts.items()) + f" of {len(results)}")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", metavar="ID", help="run these mutants only")
    parser.add_argument("--family", nargs="+", help="run the mutants of these families only")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--baseline", action="store_true",
                        help="first run every selected mutant's tests on the unmutated copy")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per mutant")
    parser.add_argument("--json", type=Path, help="write the results as JSON here")
    parser.add_argument("--markdown", type=Path, help="write the results table here")
    args = parser.parse_args(argv)

    mutants = _load_mutants()
    ids = [m.id for m in mutants]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        parser.error(f"duplicate mutant ids: {duplicates}")
    if args.only:
        unknown = sorted(set(args.only) - set(ids))
        if unknown:
            parser.error(f"unknown mutant ids: {unknown}")
        mutants = [m for m in mutants if m.id in args.only]
    if args.family:
        mutants = [m for m in mutants if m.family in args.family]
    if args.list:
        for m in mutants:
            print(f"{m.id:<40} {m.family:<14} {m.file}\n    tests: {' '.join(m.tests)}\n"
                  f"    {m.why}")
        return 0

    results = []
    with tempfile.TemporaryDirectory(prefix="refflow-mutants-") as tmp:
        copy = Path(tmp) / "repo"
        _copy_tree(copy)
        env = dict(os.environ, PYTHONPATH=str(copy), REFFLOW_HYPOTHESIS_PROFILE="ci",
                   NUMBA_CACHE_DIR=str(Path(tmp) / "numba-cache"))
        env.pop("PYTEST_ADDOPTS", None)
        if args.baseline:
            for run in sorted({t for m in mutants for t in m.tests}):
                rc, output, seconds = _run_pytest(copy, run, env, args.timeout)
                print(f"baseline: {run}: pytest exit code {rc} in {seconds:.0f} s", flush=True)
                if rc != 0:
                    print(output[-3000:])
                    return 2
        for m in mutants:
            r = run_mutant(m, copy, env, args.timeout)
            results.append(r)
            print(f"{r['status']:<9} {m.id:<40} {r.get('seconds', 0):>7.1f} s  {r['detail']}",
                  flush=True)
    table = markdown(results)
    print()
    print(table)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    if args.markdown:
        args.markdown.write_text(table + "\n", encoding="utf-8")
    return 0 if all(r["status"] == "caught" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
