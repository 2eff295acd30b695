"""One (workload, implementation, dtype) case, timed in the process that imports this module.

``run.py`` starts one fresh Python process per case with the code of :func:`run.child_code`:
for a peer, ``import torch`` and ``torch.set_num_threads(n)`` are its first two statements, and
only then is this module (NumPy, the peer) imported; refflow's processes never import torch, and
a peer's process never imports refflow. :func:`main` builds the case, makes the warm-up calls,
times the repeats and writes one JSON file:

``{"results": {workload: {"times": [...], "items": int, "unit": str, "info": {...}}},
"process": {...}}``, or ``{"skip": message}`` when the implementation cannot run the workload.
``process`` reports what the self-tests check: ``torch_threads`` (``torch.get_num_threads()``
at the end), ``loaded_at_set_threads`` (which of :data:`WATCHED` were in ``sys.modules`` when
the threads were set) and ``loaded_at_end``.
"""

import json
import sys

# modules whose presence in a process matters for the timings (see run.child_code)
WATCHED = ("numpy", "scipy", "numba", "threadpoolctl", "refflow", "torch", "zuko", "nflows")


def loaded():
    """``{name: bool}``: which of :data:`WATCHED` this process has imported."""
    return {m: m in sys.modules for m in WATCHED}


def main(spec_json, loaded_at_set_threads=None):
    """Runs the case of ``spec_json`` (a JSON object: ``workload``, ``impl``, ``dtype``,
    ``mode``, ``warmup``, ``repeats``, ``out``) and writes the result to ``out``."""
    spec = json.loads(spec_json)
    import bench_density
    import bench_gemm
    import bench_splines
    import bench_train
    from common import SIZES, Skip, time_calls

    modules = {name: m for m in (bench_train, bench_density, bench_splines, bench_gemm)
               for name in m.WORKLOADS}
    module = modules[spec["workload"]]
    sizes = SIZES[spec["mode"]]
    out = {"spec": spec}
    try:
        case = module.build(spec["workload"], spec["impl"], sizes, spec["dtype"])
    except Skip as exc:
        out["skip"] = str(exc)
    else:
        results = {}
        times = time_calls(case.fn, spec["repeats"], warmup=spec["warmup"],
                           warmup_fn=case.warmup_fn)
        results[spec["workload"]] = {"times": times, "items": case.items, "unit": module.UNIT,
                                     "info": case.info}
        for name, follow in (case.followup() if case.followup else {}).items():
            ftimes = time_calls(follow.fn, spec["repeats"], warmup=spec["warmup"])
            results[name] = {"times": ftimes, "items": follow.items, "unit": module.UNIT,
                             "info": follow.info}
        out["results"] = results
    process = {"loaded_at_set_threads": loaded_at_set_threads, "loaded_at_end": loaded()}
    if "torch" in sys.modules:
        process["torch_threads"] = sys.modules["torch"].get_num_threads()
    out["process"] = process
    with open(spec["out"], "w") as fh:
        json.dump(out, fh)
    return 0
