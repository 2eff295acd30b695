"""A long fuzz run of the model-file format, and the reported attack measured in a fresh process.

Run: ``python benchmarks/fuzz_io.py [--examples N] [--skip-fuzz]`` from the repository root.

1. ``tests/robustness/test_io_fuzz.py`` with ``N`` examples per mutation family (default 2,000;
   the test suite runs 120): JSON headers, ``.npy`` headers and archive bytes of valid files of
   every builder, mutated; ``load`` must refuse in one line or load exactly what the file says,
   within a memory bound. Prints the outcome counts, the slowest load and the largest peak.
2. The attack: a saved 2-layer ``NSF(4, hidden=(8, 8))`` whose JSON header asks for
   ``hidden = [20000, 20000]`` (and ``[40000, 40000]``), loaded in a fresh interpreter under
   ``/usr/bin/time -v`` (when present) with the default limits and with limits raised to
   ``10**12`` elements: the message, the load's own time, the process's peak RSS (which
   includes the interpreter, NumPy, SciPy and numba: ``import refflow`` alone is most of it).

Times on a shared machine are provisional.
"""

import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent

CHILD = """
import sys, time
import refflow
from refflow.io import Limits
limits = None if sys.argv[2] == "default" else Limits(max_params=10**12)
start = time.perf_counter()
try:
    refflow.load(sys.argv[1], limits=limits)
    print("LOADED")
except ValueError as exc:
    print("REFUSED", exc)
print("LOAD_SECONDS", time.perf_counter() - start)
"""


def make_attack_files(directory):
    sys.path.insert(0, str(ROOT))
    import numpy as np

    import refflow
    from refflow import NSF

    good = directory / "nsf.npz"
    refflow.save(good, NSF(4, n_layers=2, hidden=(8, 8), rng=0))
    with np.load(good, allow_pickle=False) as npz:
        arrays = {name: npz[name] for name in npz.files}
    text = str(arrays.pop("header")[()])
    out = []
    for width in (20_000, 40_000):
        path = directory / f"nsf_hidden_{width}.npz"
        edited = text.replace('"hidden": [8, 8]', f'"hidden": [{width}, {width}]')
        assert edited != text
        with open(path, "wb") as f:
            np.savez(f, header=np.array(edited), **arrays)
        out.append(path)
    return good, out


def measure(path, limits):
    command = [sys.executable, "-c", CHILD, str(path), limits]
    timer = shutil.which("time") and pathlib.Path("/usr/bin/time").exists()
    if timer:
        command = ["/usr/bin/time", "-v", *command]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    lines = result.stdout.splitlines()
    report = {"file": path.name, "bytes": path.stat().st_size, "limits": limits,
              "outcome": next((line for line in lines if line.startswith(("REFUSED", "LOADED"))),
                              result.stderr.strip().splitlines()[-1:]),
              "load_seconds": next((float(line.split()[1]) for line in lines
                                    if line.startswith("LOAD_SECONDS")), None)}
    for line in result.stderr.splitlines():
        line = line.strip()
        if line.startswith("Maximum resident set size (kbytes):"):
            report["peak_rss_mb"] = int(line.rsplit(":", 1)[1]) / 1024
        if line.startswith("Elapsed (wall clock) time"):
            report["process_wall"] = line.rsplit(" ", 1)[1]
    return report


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=2000)
    parser.add_argument("--skip-fuzz", action="store_true")
    args = parser.parse_args()

    if not args.skip_fuzz:
        env = dict(os.environ, REFFLOW_IO_FUZZ_EXAMPLES=str(args.examples),
                   PYTHONPATH=str(ROOT))
        subprocess.run([sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", "-n", "0",
                        "tests/robustness/test_io_fuzz.py"], cwd=ROOT, env=env, check=True)

    with tempfile.TemporaryDirectory() as tmp:
        good, attacks = make_attack_files(pathlib.Path(tmp))
        reports = [measure(good, "default")]
        for path in attacks:
            reports += [measure(path, "default"), measure(path, "raised")]
    for report in reports:
        print(json.dumps(report))


if __name__ == "__main__":
    main()
