"""One MAF training step (``nll_and_grad`` + Adam), refflow vs zuko and nflows, in the same run.

Run: ``python benchmarks/bench_maf.py [--quick] [--peers] [--json out.json]``: the ``maf_train``
workload of ``benchmarks/run.py`` (the same as ``run.py --only maf_train``), kept as a
shortcut. Workload (fixed so later runs compare): MAF with dim 64, 5 layers alternating natural
and reversed orders (zuko's default layout), MADE hidden (256, 256), ReLU, batch 512; float64
and float32; see ``bench_train.py`` for the models and ``run.py`` for the options. Compare the
ratio measured in one run, not absolute times across machines.
"""

import sys

import run


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    return run.main(["--only", "maf_train"] + argv)


if __name__ == "__main__":
    sys.exit(main())
