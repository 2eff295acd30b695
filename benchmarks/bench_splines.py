"""Rational-quadratic spline throughput, refflow vs nflows vs zuko, in the same run.

Run: ``python benchmarks/bench_splines.py [--quick] [--peers] [--json out.json]`` (the spline
workloads of ``benchmarks/run.py``; the same as ``run.py --only spline_fwd,spline_inv,spline_grad``)

Workload (fixed so later runs compare): 2^20 elements, K = 8 bins, unconstrained parameters
drawn from N(0, 1), inputs from N(0, 2) (some in the tails); three operations: forward+log-det,
inverse+log-det, forward+gradient (the pullback of ``sum(y) + sum(log_det)`` to the input and
all parameters). refflow: ``rational_quadratic_spline(_vjp)`` ("durkan", B = 3). nflows:
``unconstrained_rational_quadratic_spline(tails="linear", tail_bound=3)``. zuko:
``MonotonicRQSTransform(bound=5)`` (zuko's own default bound; its map differs, the work does
not). Each (operation, implementation, dtype) runs in a fresh process (``run.py``); peers on
torch CPU with ``torch.set_num_threads`` set first thing in their process, skipped with a
message when not installed. Elements per second; ratios measured in this run
(``peer time / refflow time``: above 1, refflow is faster). refflow's fused spline kernels are
numba code and may run on numba's threads (recorded as ``numba_threads``), the peers on torch's.
"""

import sys

import numpy as np

from common import Case, torch_copy, torch_or_skip

N, K, B = 2 ** 20, 8, 3.0
WORKLOADS = {
    "spline_fwd": "spline forward+log-det (2^20 elements, K 8)",
    "spline_inv": "spline inverse+log-det (2^20 elements, K 8)",
    "spline_grad": "spline forward+gradient (2^20 elements, K 8)",
}
OPS = {"spline_fwd": "forward+log_det", "spline_inv": "inverse+log_det",
       "spline_grad": "forward+gradient"}
UNIT = "elements/s"


def data(dtype, n):
    rng = np.random.default_rng(0)
    x = (2.0 * rng.standard_normal(n)).astype(dtype)
    uw, uh = (rng.standard_normal((n, K)).astype(dtype) for _ in range(2))
    ud = rng.standard_normal((n, K - 1)).astype(dtype)
    return x, uw, uh, ud


def refflow_ops(x, uw, uh, ud):
    from refflow import rational_quadratic_spline, rational_quadratic_spline_vjp
    y, _ = rational_quadratic_spline(x, uw, uh, ud, bound=B)
    ones = np.ones_like(x)

    def grad():
        _, _, pullback = rational_quadratic_spline_vjp(x, uw, uh, ud, bound=B)
        pullback(ones, ones)

    return {
        "forward+log_det": lambda: rational_quadratic_spline(x, uw, uh, ud, bound=B),
        "inverse+log_det": lambda: rational_quadratic_spline(y, uw, uh, ud, inverse=True, bound=B),
        "forward+gradient": grad,
    }


def nflows_ops(x, uw, uh, ud):
    import torch
    from nflows.transforms.splines.rational_quadratic import unconstrained_rational_quadratic_spline as f
    tx, tw, th, td = (torch_copy(a) for a in (x, uw, uh, ud))
    with torch.no_grad():
        ty, _ = f(tx, tw, th, td, inverse=False, tails="linear", tail_bound=B)

    def grad():
        args = [t.clone().requires_grad_(True) for t in (tx, tw, th, td)]
        y, ld = f(*args, inverse=False, tails="linear", tail_bound=B)
        (y.sum() + ld.sum()).backward()

    def run(inp, inverse):
        with torch.no_grad():
            return f(inp, tw, th, td, inverse=inverse, tails="linear", tail_bound=B)

    return {"forward+log_det": lambda: run(tx, False), "inverse+log_det": lambda: run(ty, True),
            "forward+gradient": grad}


def zuko_ops(x, uw, uh, ud):
    import torch
    from zuko.transforms import MonotonicRQSTransform
    tx, tw, th, td = (torch_copy(a) for a in (x, uw, uh, ud))
    with torch.no_grad():
        ty = MonotonicRQSTransform(tw, th, td, bound=5.0)(tx)

    def run(inp, inverse):
        with torch.no_grad():
            t = MonotonicRQSTransform(tw, th, td, bound=5.0)
            return (t.inv if inverse else t).call_and_ladj(inp)

    def grad():
        args = [t.clone().requires_grad_(True) for t in (tx, tw, th, td)]
        y, ladj = MonotonicRQSTransform(*args[1:], bound=5.0).call_and_ladj(args[0])
        (y.sum() + ladj.sum()).backward()

    return {"forward+log_det": lambda: run(tx, False), "inverse+log_det": lambda: run(ty, True),
            "forward+gradient": grad}


def build(workload, impl, sizes, dtype):
    """The :class:`Case` of ``workload`` for ``impl`` in ``dtype`` on ``sizes.spline_n``
    elements (``sizes.bins`` is not used: K = 8 is this benchmark's fixed configuration, also in
    the smoke run)."""
    if impl != "refflow":
        torch_or_skip(impl)
    ops = {"refflow": refflow_ops, "nflows": nflows_ops, "zuko": zuko_ops}[impl]
    return Case(ops(*data(np.dtype(dtype).type, sizes.spline_n))[OPS[workload]], sizes.spline_n)


def main(argv=None):
    import run
    argv = list(sys.argv[1:] if argv is None else argv)
    return run.main(["--only", ",".join(WORKLOADS)] + argv)


if __name__ == "__main__":
    sys.exit(main())
