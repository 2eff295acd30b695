"""Blends of fitted densities: ``q = sum_j w_j q_j``, the weights fitted on held-out rows.

Run (from the repository root)::

    python benchmarks/density_blend.py [--sets NAME,...] [--families NAME,...]
        [--draws TRAIN,TEST,WEIGHTS] [--seed S] [--n-train N] [--n-test N] [--epochs E]
        [--json PATH]

What it measures. ``FlowDensity(blend=False)`` fits several candidates (a MAF and an NSF, a
Gaussianization flow on rotated rows) and keeps the one with the best validation likelihood;
the others are thrown away. A mixture of fitted densities is a density too, and its
log-likelihood is concave in the mixture weights, so the best blend of the candidates on
held-out rows is never worse there than the best candidate alone (each candidate is a vertex
of the simplex). How much better it is on rows that chose nothing, and whether the classical
estimator the suite compares against (``GaussianMixture``, full covariances, ``k`` by BIC up to 30, as in
``benchmarks/density_suite.py``) adds to the blend, is what this script reports: the
measurement behind ``FlowDensity``'s ``blend="auto"`` (DEVELOPERS.md, "FlowDensity's
defaults", tenth round), made with the suite's own GMM and weights chosen on a separate draw.

For each set: ``FlowDensity(flow=family, random_state=seed)`` for each family of
``--families`` (default ``maf,nsf``, the candidates ``"auto"`` always fits), and the suite's
GMM, all fitted on the training rows; their log-densities of the test rows and of the weight
rows. Blends: every family's flow alone, the flows together (``flows``) and the flows with the
GMM (``flows+gmm``), with the weights of the highest mean log-likelihood of the weight rows,
found by EM (:func:`refflow.estimator.blend_weights`). The toys' and synthetic sets' rows
are drawn with ``--draws TRAIN,TEST,WEIGHTS`` (default ``7,8,9``: rows that no table of the
suite uses; the weight rows are as many as the test rows); the real sets are split by
``--seed`` as in the suite, and their weights are cross-fitted on the test split (chosen on
its even rows and scored on its odd ones, and the other way round). Gap = mean(log p_true -
log q) over the test rows where the density is known, else the held-out mean log-likelihood.
Nothing here sees the test rows before they are scored.

The weights chosen on a fresh draw stand in for those a fit would choose on its own validation
rows (the rows its early stopping and its choice of candidate already used); the JSON keeps the
weight rows' scores too, where the blend is at least the best single model by construction.
"""

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import warnings  # noqa: E402

import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if importlib.util.find_spec("refflow") is None:  # not installed: the repository's refflow
    sys.path.insert(0, ROOT)
if HERE not in sys.path:
    sys.path.insert(0, HERE)

from density_suite import (GMM_MAX_K, MODES, REAL, SETS, Mode, cpu_seconds,  # noqa: E402
                           fit_gmm, load_set)
from refflow.data import SYNTHETIC, synthetic, toy  # noqa: E402
from refflow.estimator import (FlowDensity, blend_log_likelihood,  # noqa: E402
                               blend_weights)
from refflow.flows import BUILDERS  # noqa: E402


def _draw(name, n, rng):
    return (synthetic if name in SYNTHETIC else toy)(name, n, rng=rng)


def run_set(name, families, draws, seed, n_train, n_test, epochs=None):
    """One set: ``dict`` of the scores of every model and blend (see the module's doc)."""
    real = name in REAL
    if real:
        data = load_set(name, MODES["full"], seed)
        train, test = data["train"], data["test"]
        rows = test
    else:
        mode = Mode("full", n_train, n_test, SETS, draws=draws[:2])
        data = load_set(name, mode, seed)
        train, test = data["train"], data["test"]
        weight_rows = _draw(name, n_test, draws[2])
        rows = np.vstack([test, weight_rows])
    labels, columns, seconds = [], [], {}
    for family in families:
        kwargs = {} if epochs is None else {"epochs": epochs}
        start = cpu_seconds()
        model = FlowDensity(flow=family, random_state=seed, progress=False, **kwargs)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)   # -inf rows are kept as such
            model.fit(train)
            columns.append(model.score_samples(rows))
        seconds[family] = cpu_seconds() - start
        labels.append(family)
    start = cpu_seconds()
    gmm_rows, info = fit_gmm(train, rows, seed, min(GMM_MAX_K, len(train)))
    seconds["gmm"] = cpu_seconds() - start
    columns.append(gmm_rows)
    labels.append("gmm")
    log_q = np.stack(columns, axis=1)
    blends = {label: [j] for j, label in enumerate(labels)}
    blends["flows"] = list(range(len(families)))
    blends["flows+gmm"] = list(range(len(labels)))
    out = {"set": name, "kind": "real" if real else "exact", "seed": seed,
           "n_train": int(train.shape[0]), "n_test": int(test.shape[0]),
           "gmm_k": info["k"], "cpu_seconds": seconds, "models": {}}
    if real:
        even = np.arange(test.shape[0]) % 2 == 0
        folds = ((even, ~even), (~even, even))
    else:
        n = test.shape[0]
        folds = ((np.arange(n, rows.shape[0]), np.arange(n)),)
        out["draws"] = list(draws)
        truth_test = float(np.mean(data["log_prob"](test)))
    for label, cols in blends.items():
        scored, weights, chosen_on = np.zeros(test.shape[0]), [], []
        for choose, score in folds:
            w = blend_weights(log_q[choose][:, cols]) if len(cols) > 1 else np.ones(1)
            weights.append([float(v) for v in w])
            chosen_on.append(float(np.mean(blend_log_likelihood(log_q[choose][:, cols], w))))
            target = score if real else np.arange(test.shape[0])
            scored[target] = blend_log_likelihood(log_q[score][:, cols], w)
        record = {"log_likelihood": float(np.mean(scored)), "weights": weights,
                  "weight_rows_log_likelihood": chosen_on,
                  "components": [labels[j] for j in cols]}
        if not real:
            record["gap"] = truth_test - record["log_likelihood"]
        out["models"][label] = record
    return out


def _line(entry):
    key = "gap" if entry["kind"] == "exact" else "log_likelihood"
    parts = [f"{label} {record[key]:.4f}" for label, record in entry["models"].items()]
    return f"{entry['set']} ({key}): " + ", ".join(parts)


def parse(argv):
    parser = argparse.ArgumentParser(
        prog="python benchmarks/density_blend.py",
        description="Held-out scores of the flow families, the BIC Gaussian mixture and their "
                    "blends with weights fitted on held-out rows.")
    parser.add_argument("--sets", metavar="NAME,...", default=",".join(SETS),
                        help=f"subset of {', '.join(SETS)} (default: all)")
    parser.add_argument("--families", metavar="NAME,...", default="maf,nsf",
                        help="flow families to fit and blend (default maf,nsf)")
    parser.add_argument("--draws", metavar="TRAIN,TEST,WEIGHTS", default="7,8,9",
                        help="generator seeds of the toys' and synthetic sets' rows")
    parser.add_argument("--seed", type=int, default=1,
                        help="FlowDensity's random_state, the GMM's, and the real sets' split")
    parser.add_argument("--n-train", type=int, default=20000, metavar="N")
    parser.add_argument("--n-test", type=int, default=10000, metavar="N",
                        help="test rows, and as many weight rows")
    parser.add_argument("--epochs", type=int, default=None, metavar="E",
                        help="FlowDensity's epochs (default: its own)")
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON")
    args = parser.parse_args(argv)
    sets = [s.strip() for s in args.sets.split(",") if s.strip()]
    unknown = [s for s in sets if s not in SETS]
    if unknown or not sets:
        parser.error(f"--sets: unknown set(s) {', '.join(unknown) or '(none)'}; choose from "
                     f"{', '.join(SETS)}")
    families = [f.strip() for f in args.families.split(",") if f.strip()]
    unknown = [f for f in families if f not in BUILDERS]
    if unknown or not families or len(set(families)) != len(families):
        parser.error(f"--families: expected distinct names of {', '.join(BUILDERS)}, got "
                     f"{args.families!r}")
    try:
        draws = tuple(int(v) for v in args.draws.split(","))
    except ValueError:
        draws = ()
    if len(draws) != 3 or min(draws) < 0 or len(set(draws)) != 3:
        parser.error(f"--draws: expected three distinct non-negative integers, got "
                     f"{args.draws!r}")
    for option, value, low in (("--seed", args.seed, 0), ("--n-train", args.n_train, 2),
                               ("--n-test", args.n_test, 2)):
        if value < low:
            parser.error(f"{option}: expected at least {low}, got {value}")
    if args.epochs is not None and args.epochs < 1:
        parser.error(f"--epochs: expected at least 1, got {args.epochs}")
    if args.json:
        folder = os.path.dirname(os.path.abspath(args.json))
        if not (os.path.isdir(folder) and os.access(folder, os.W_OK)):
            parser.error(f"--json: cannot write {args.json!r} (no such writable directory)")
    return args, sets, families, draws


def main(argv=None, say=print):
    argv = sys.argv[1:] if argv is None else list(argv)
    args, sets, families, draws = parse(argv)
    command = " ".join(["python benchmarks/density_blend.py", *argv])
    results = []
    for name in sets:
        results.append(run_set(name, families, draws, args.seed, args.n_train, args.n_test,
                               args.epochs))
        say(_line(results[-1]))
        if args.json:
            with open(args.json, "w") as fh:
                json.dump({"command": command, "results": results}, fh, indent=1)
    return results


if __name__ == "__main__":
    main()
