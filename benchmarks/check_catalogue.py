"""Worst errors and speed of the seven monotone-transformer layers (the oracle over many draws).

Run: ``python benchmarks/check_catalogue.py [--seeds 20] [--rows 100000] [--no-speed]
[--no-accuracy] [--json out.json] [--families monotone|catalogue]``

``--families catalogue`` runs the accuracy part on the peers' catalogue cases instead
(``CATALOGUE``: spline maps and tails, circular and linear-rational splines, the linear maps,
LU and scale-map options; the speed table is the monotone layers' only).

For every registry case of the monotone-transformer layers (``refflow._cases``: the five MADE
layers, ``BlockNeuralAutoregressive`` and ``Gaussianization``, also inside ``Inverse``), over
``--seeds`` parameter draws and batches of 6 points:

- float64: the oracle of ``refflow.testing`` (round trips both ways, forward and inverse log-det
  against ``slogdet`` of finite-difference Jacobians, forward + inverse log-dets, and both
  pullbacks against finite differences for the input, the context and every parameter
  element); the worst error of each kind.
- float32: the same passes in float32 against float64 on the same (float32-representable)
  inputs: outputs, log-dets and the pullbacks' input and parameter cotangents, relative as
  ``|a - b| / max(1, |b|)`` (normwise for parameter gradients); and the float32 round trip.

A second table gives, per layer class, the worst of its cases.

Speed: ``forward`` (sampling: a numerical inverse per coordinate) and ``inverse`` (density: the
closed form) of one layer at the sizes listed in ``SPEED`` on ``--rows x 8`` rows, float64,
median of a few runs after a warm-up; the load average is printed with them. On a shared
machine the figures are provisional.
"""

import argparse
import json
import os
import sys
import time

import numpy as np

from refflow import bijectors as B
from refflow._cases import CASES
from refflow.testing import check_bijector, check_vjp

LAYERS = (B.NeuralAutoregressive, B.MaskedMonotonicAutoregressive,
          B.UnconstrainedMonotonicAutoregressive, B.BlockNeuralAutoregressive,
          B.SumOfSquaresAutoregressive, B.BernsteinAutoregressive, B.Gaussianization)


#: ``--families catalogue``: the registry cases of the peers' catalogue (spline maps and
#: tails, circular and linear-rational splines, linear maps, LU and scale-map options).
CATALOGUE = (
    "rqs_pyro", "rqs_flowjax", "rqs_durkan_learned_end_slopes", "linear_rational_spline",
    "spline_coupling_flowjax", "spline_coupling_zuko_learned_end_slopes",
    "spline_coupling_linear_rational", "spline_autoregressive_pyro",
    "spline_autoregressive_linear_rational", "circular_spline_distrax",
    "circular_spline_zuko_shift", "spline_coupling_circular",
    "spline_coupling_circular_zuko_shift", "spline_autoregressive_circular",
    "spline_autoregressive_circular_zuko_shift", "matrix_exponential", "rotation",
    "triangular_affine", "triangular_affine_upper_weight_norm", "lu_linear_zuko_raw_lower",
    "lu_linear_normflows_signs", "maf_density_flowjax", "iaf_pyro_clamp", "iaf_pyro_stable",
    "maf_stable_flowjax_conditional",
)


def _inner(bijector):
    """The layer inside an ``Inverse`` (Pyro's direction of BNAF), else the bijector itself."""
    return bijector.bijector if isinstance(bijector, B.Inverse) else bijector

#: One layer per class at the benchmark's size (dim 8, MADE hidden (64, 64)); the network
#: transformers at reduced widths (their default (64, 64) networks with 32 quadrature nodes
#: cost ~1e11 multiply-adds per pass at 1e5 x 8 rows).
SPEED = {
    "NeuralAutoregressive (DSF, K=16)": lambda: B.NeuralAutoregressive(8, units=16, rng=0),
    "NeuralAutoregressive (DDSF, K=8, 2 layers)": lambda: B.NeuralAutoregressive(
        8, units=8, n_layers=2, rng=0),
    "MaskedMonotonicAutoregressive (signal 8, network (16, 16))":
        lambda: B.MaskedMonotonicAutoregressive(8, signal=8, network=(16, 16), rng=0),
    "UnconstrainedMonotonicAutoregressive (signal 8, network (16, 16), 16 nodes)":
        lambda: B.UnconstrainedMonotonicAutoregressive(8, signal=8, network=(16, 16), n_nodes=16,
                                                       rng=0),
    "SumOfSquaresAutoregressive (L=4, K=3)": lambda: B.SumOfSquaresAutoregressive(8, rng=0),
    "BernsteinAutoregressive (M=21, identity tails)":
        lambda: B.BernsteinAutoregressive(8, rng=0),
    "BlockNeuralAutoregressive (hidden factors (8,), FlowJAX's)":
        lambda: B.BlockNeuralAutoregressive(8, rng=0),
    "Gaussianization (8 components, zuko's)": lambda: B.Gaussianization(8, rng=0),
}


def _rel(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b) / np.maximum(1.0, np.abs(b)), initial=0.0))


def _normwise(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b), initial=0.0) / max(1.0, float(np.max(np.abs(b), initial=0.0))))


def _float32_errors(bijector, z, x, context):
    """Worst float32-vs-float64 errors of both passes and pullbacks, and the float32 round trip."""
    worst = {"value": 0.0, "log_det": 0.0, "input_bar": 0.0, "grads": 0.0, "round_trip": 0.0}
    kw32 = {} if context is None else {"context": context.astype(np.float32)}
    kw64 = {} if context is None else {"context": context.astype(np.float32).astype(np.float64)}
    rng = np.random.default_rng(0)
    for direction, v in (("forward", z), ("inverse", x)):
        v32 = v.astype(np.float32)
        out32, ld32, pb32 = getattr(bijector, f"{direction}_vjp")(v32, **kw32)
        out64, ld64, pb64 = getattr(bijector, f"{direction}_vjp")(v32.astype(np.float64), **kw64)
        bar = rng.standard_normal(out64.shape)
        ld_bar = rng.standard_normal(ld64.shape)
        r32 = pb32(bar.astype(np.float32), ld_bar.astype(np.float32))
        r64 = pb64(bar, ld_bar)
        worst["value"] = max(worst["value"], _rel(out32, out64))
        worst["log_det"] = max(worst["log_det"], _rel(ld32, ld64))
        worst["input_bar"] = max(worst["input_bar"], _normwise(r32[0], r64[0]))
        worst["grads"] = max(worst["grads"], max(_normwise(r32[1][k], r64[1][k]) for k in r64[1]))
        other = "inverse" if direction == "forward" else "forward"
        back, _ = getattr(bijector, other)(out32, **kw32)
        worst["round_trip"] = max(worst["round_trip"], _rel(back, v32))
    return worst


def accuracy(case_ids, seeds, n=6):
    rows = {}
    for case_id in case_ids:
        w64 = {"round_trip": 0.0, "log_det_fd": 0.0, "log_det_sum": 0.0, "pullback_fd": 0.0}
        w32 = {}
        for seed in range(seeds):
            bijector, sample_z, sample_x, sample_context = CASES[case_id](seed)
            z, x = sample_z(seed + 1, n), sample_x(seed + 2, n)
            context = None if sample_context is None else sample_context(seed + 3, n)
            kw = {} if context is None else {"context": context}
            report = check_bijector(lambda v: bijector.forward(v, **kw),
                                    lambda v: bijector.inverse(v, **kw), z, x=x)
            e = report.errors
            w64["round_trip"] = max(w64["round_trip"], e["round trip z -> x -> z"],
                                    e["round trip x -> z -> x"])
            w64["log_det_fd"] = max(w64["log_det_fd"], e["log_det forward vs FD"],
                                    e["log_det inverse vs FD"])
            w64["log_det_sum"] = max(w64["log_det_sum"], e["log_det fwd + inv"])
            for method, v in ((bijector.forward_vjp, z), (bijector.inverse_vjp, x)):
                inputs = v if context is None else (v, context)
                vjp_report = check_vjp(method, inputs, bijector.params, rng=seed)
                w64["pullback_fd"] = max(w64["pullback_fd"], max(vjp_report.errors.values()))
            for key, value in _float32_errors(bijector, z, x, context).items():
                w32[key] = max(w32.get(key, 0.0), value)
        layer = CASES[case_id](0)[0]
        name = type(_inner(layer)).__name__
        rows[case_id] = {"class": name if _inner(layer) is layer else f"Inverse({name})",
                         "layer": name, "float64": w64, "float32": w32}
        print(f"{case_id:34s} f64 {w64}  f32 {w32}", file=sys.stderr, flush=True)
    return rows


def speed(n_rows, repeats=3):
    out = {}
    rng = np.random.default_rng(0)
    for name, build in SPEED.items():
        layer = build()
        for key, value in layer.params.items():   # non-identity, moderate maps
            layer.params[key] = value + rng.normal(0.0, 0.05, size=value.shape)
        z = rng.standard_normal((n_rows, 8))
        x, _ = layer.forward(z[:2000])
        layer.inverse(x)                              # warm-up (numba, allocator)
        times = {}
        for direction, v in (("inverse", z), ("forward", z)):
            runs = []
            for _ in range(repeats):
                start = time.perf_counter()
                getattr(layer, direction)(v)
                runs.append(time.perf_counter() - start)
            times[direction] = float(np.median(runs))
        out[name] = times
        print(f"{name:75s} inverse {times['inverse']:.2f} s  forward {times['forward']:.2f} s",
              file=sys.stderr, flush=True)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-speed", action="store_true")
    parser.add_argument("--no-accuracy", action="store_true")
    parser.add_argument("--json")
    parser.add_argument("--families", choices=("monotone", "catalogue"), default="monotone",
                        help="monotone: the seven monotone-transformer layers (default); "
                             "catalogue: the peers' catalogue cases (CATALOGUE)")
    args = parser.parse_args(argv)
    if args.families == "catalogue":
        case_ids = [c for c in CATALOGUE if c in CASES]
    else:
        case_ids = [c for c in sorted(CASES) if isinstance(_inner(CASES[c](0)[0]), LAYERS)]
    result = {"seeds": args.seeds,
              "accuracy": {} if args.no_accuracy else accuracy(case_ids, args.seeds)}
    if not args.no_speed:
        result["speed"] = {"rows": args.rows, "dim": 8, "seconds": speed(args.rows, args.repeats),
                           "load": os.getloadavg()[0]}
    if result["accuracy"]:
        _accuracy_tables(result)
    if "speed" in result:
        print(f"\nspeed, {args.rows} x 8 rows, float64 (s, median of {args.repeats}; load "
              f"average {result['speed']['load']:.1f} on {os.cpu_count()} CPUs; provisional):")
        for name, t in result["speed"]["seconds"].items():
            print(f"| {name} | inverse {t['inverse']:.2f} | forward {t['forward']:.2f} |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=1)


def _accuracy_tables(result):
    print("| case | class | round trip | log-det vs FD | fwd+inv log-det | pullback vs FD | "
          "f32 value | f32 log-det | f32 cotangents | f32 round trip |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for case_id, row in result["accuracy"].items():
        a, b = row["float64"], row["float32"]
        print(f"| {case_id} | {row['class']} | {a['round_trip']:.1e} | {a['log_det_fd']:.1e} | "
              f"{a['log_det_sum']:.1e} | {a['pullback_fd']:.1e} | {b['value']:.1e} | "
              f"{b['log_det']:.1e} | {max(b['input_bar'], b['grads']):.1e} | "
              f"{b['round_trip']:.1e} |")
    print("\nper layer (worst over its cases):\n")
    print("| layer | f64 round trip | f64 log-det vs FD | f64 pullback vs FD | f32 round trip | "
          "f32 log-det | f32 pullback |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for layer in LAYERS:
        mine = [r for r in result["accuracy"].values() if r["layer"] == layer.__name__]
        if not mine:
            continue
        worst = [max(f(r) for r in mine) for f in (
            lambda r: r["float64"]["round_trip"], lambda r: r["float64"]["log_det_fd"],
            lambda r: r["float64"]["pullback_fd"], lambda r: r["float32"]["round_trip"],
            lambda r: r["float32"]["log_det"],
            lambda r: max(r["float32"]["input_bar"], r["float32"]["grads"]))]
        print(f"| {layer.__name__} | " + " | ".join(f"{w:.1e}" for w in worst) + " |")


if __name__ == "__main__":
    main()
