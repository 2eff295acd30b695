"""The density suite: held-out log-likelihoods of FlowDensity beside the classical estimators.

Run (from the repository root)::

    python benchmarks/density_suite.py [--quick | --smoke] [--sets NAME,...]
        [--estimators NAME,...] [--skip NAME,...] [--max-fit-seconds S] [--n-train N]
        [--seeds S,...] [--draws TRAIN,TEST] [--variant NAME=JSON ...] [--json PATH]
        [--markdown PATH] [--from-json PATH,...]

Data sets, drawn afresh for each seed ``s`` of ``--seeds`` (training rows ``rng=2 s``, test
rows ``rng=2 s + 1``, so that no two seeds share rows):

- every 2-D toy with an exact density (``refflow.data.TOYS_WITH_DENSITY``) and the synthetic
  sets of ``refflow.data.SYNTHETIC`` (4 to 16 dimensions, exact densities): 20,000 training rows
  and 10,000 test rows (``--quick``: 5,000 and 5,000);
- real data that installs with scikit-learn (no download): ``digits`` (1797 x 64,
  ``refflow.data.load_digits``: ``(k + u) / 17``), ``breast_cancer`` (569 x 30) and ``wine``
  (178 x 13), split two thirds for training by a permutation seeded with ``s`` (and
  dequantized with noise seeded with ``s``).

Dequantization of the real sets: their values are recorded to a fixed number of decimals
(integers, for digits' pixels, wine's magnesium and proline), so they carry point masses and no
density. Each column ``j`` gets ``x + u h_j`` with ``u ~ U[0, 1)`` and ``h_j`` the recording
step (the smallest ``10^-k``, ``k = 0..8``, of which 99% of the values are whole multiples; digits use
``load_digits``' own scaling, step 1/17). A density of the dequantized values is a lower bound
on the probability of the recorded values (Theis et al. 2016); every estimator sees the same
dequantized rows.

Estimators:

- ``FlowDensity()``: the estimator's defaults (only ``random_state`` and ``progress=False``).
- every family of ``refflow.flows.BUILDERS`` (each ``flow=`` name, default sizes), found at run
  time, so that families added later are run too; ``--skip`` leaves some out, and
  ``--max-fit-seconds`` skips a family on the remaining sets once one of its fits took longer.
- ``Gaussian``: the full-covariance Gaussian of maximum likelihood (training mean and
  covariance), what ``FlowDensity(whiten=True)`` starts from.
- ``GMM(BIC)``: ``sklearn.mixture.GaussianMixture`` (full covariances, ``random_state=seed``)
  on standardised data, the number of components ``k = 1..30`` chosen by the BIC on the
  training rows.
- ``KDE(CV)``: ``sklearn.neighbors.KernelDensity`` (Gaussian kernel) on standardised data, the
  bandwidth chosen by 3-fold cross-validated likelihood (``GridSearchCV``) on a grid of 13
  values from 0.01 to 2.5 (extended by a factor 2.5 beyond an edge that wins).

The baselines fit standardised data ``s = (x - mean) / std`` (training statistics) and report
the log-density in the data's units, ``log p(x) = log p_s(s) - sum_j log std_j``, as
``FlowDensity`` does.

Reported for each (set, seed, estimator) in the JSON: the held-out mean log-likelihood in nats
and its standard error (``std / sqrt(n_test)`` of the per-row log-densities), the gap to the
truth where the density is known (``mean(log p_true - log q)`` over the test rows: the KL
divergence estimate, with its paired standard error), and the fit time (the estimator's ``fit`` and, for the
baselines, the model selection), in wall seconds and in CPU seconds (user + system of the
process, ``getrusage``: closer to a quiet machine's time when the machine is shared). Fit times are measured with ``OPENBLAS_NUM_THREADS=1`` (set
here before NumPy loads, unless already set) and the load average of the machine is recorded
beside them: on a shared machine they are provisional; log-likelihoods do not depend on load.
The tables give, per (set, estimator), the mean over the seeds and its standard error across
the seeds (``std(ddof=1) / sqrt(k)``: it includes the variability of the data draw and of the
fit); with a single seed, the standard error over the test rows.

Nothing is tuned here: no estimator sees the test rows before it is scored.

Choosing defaults (DEVELOPERS.md, "FlowDensity's defaults"): ``--variant NAME=JSON`` adds a
``FlowDensity`` with the given constructor arguments (``random_state`` and ``progress`` are set
here) as estimator ``NAME``, e.g. ``--variant 't5={"base": "student_t", "n_layers": 5}'``,
and ``--draws TRAIN,TEST`` draws the toys' and synthetic sets' rows with these generator seeds
instead of ``2 s, 2 s + 1``, so that the choices are made on rows that no table uses
(``--draws 7,8``; the real sets keep their split by seed).

``--quick``: 5,000 training rows. ``--smoke``: tiny sizes, three sets, 2 epochs per flow, two
families, ``k <= 3``, three bandwidths (tests the script, not the estimators).
"""

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402

import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if importlib.util.find_spec("refflow") is None:  # not installed: the repository's refflow
    sys.path.insert(0, ROOT)

import refflow  # noqa: E402
from refflow.data import (SYNTHETIC, TOYS_WITH_DENSITY, load_digits, synthetic,  # noqa: E402
                          synthetic_log_prob, toy, toy_log_prob)
from refflow.estimator import FlowDensity  # noqa: E402
from refflow.flows import BUILDERS  # noqa: E402

REAL = ("digits", "breast_cancer", "wine")
SETS = tuple(TOYS_WITH_DENSITY) + tuple(SYNTHETIC) + REAL
BASELINES = ("gaussian", "gmm", "kde")
DEFAULT = "default"
#: Shares of the real sets used for training (the rest is the test set).
TRAIN_SHARE = 2.0 / 3.0
#: The GMM's component counts and the KDE's bandwidth grid (standardised units).
GMM_MAX_K = 30
KDE_GRID = tuple(np.geomspace(0.01, 2.5, 13))
KDE_FOLDS = 3


class Mode:
    """Sizes of a run: ``full`` (the README's table), ``quick`` and ``smoke``."""

    def __init__(self, name, n_train, n_test, sets, epochs=None, families=None,
                 gmm_max_k=GMM_MAX_K, kde_grid=KDE_GRID, draws=None, variants=None):
        self.name, self.n_train, self.n_test, self.sets = name, n_train, n_test, sets
        self.epochs, self.families = epochs, families
        self.gmm_max_k, self.kde_grid = gmm_max_k, kde_grid
        #: ``(train_seed, test_seed)`` of the toys' and synthetic sets' draws (None: by seed)
        self.draws = draws
        #: ``{name: FlowDensity keyword arguments}`` of ``--variant``
        self.variants = dict(variants or {})


MODES = {
    "full": Mode("full", 20000, 10000, SETS),
    "quick": Mode("quick", 5000, 5000, SETS),
    "smoke": Mode("smoke", 300, 200, ("eight_gaussians", "curve", "wine"), epochs=2,
                  families=("maf", "realnvp"), gmm_max_k=3, kde_grid=(0.1, 0.3, 1.0)),
}


# ------------------------------------------------------------------------------- data
def recording_step(column):
    """The smallest ``10^-k`` (``k = 0..8``) of which at least 99% of the values of ``column``
    are whole multiples (to 1e-6 of the step): the resolution the values were recorded at (a
    few values stored as e.g. 3.2799999 do not make a column continuous)."""
    for k in range(9):
        scaled = column * 10.0 ** k
        if np.mean(np.abs(scaled - np.round(scaled)) < 1e-6) >= 0.99:
            return 10.0 ** -k
    return 10.0 ** -8


def dequantize(X, rng):
    """``X + u * step`` per column, ``u ~ U[0, 1)``; returns ``(X_dequantized, steps)``."""
    steps = np.array([recording_step(X[:, j]) for j in range(X.shape[1])])
    return X + rng.random(X.shape) * steps, steps


def _split(X, seed):
    perm = np.random.default_rng(seed).permutation(X.shape[0])
    n_train = int(round(TRAIN_SHARE * X.shape[0]))
    return X[perm[:n_train]], X[perm[n_train:]]


def load_set(name, mode, seed):
    """``dict(train, test, log_prob, kind, note)``; ``log_prob`` is None without a known density."""
    if name in TOYS_WITH_DENSITY or name in SYNTHETIC:
        draw, density = ((toy, toy_log_prob) if name in TOYS_WITH_DENSITY
                         else (synthetic, synthetic_log_prob))
        train_rng, test_rng = mode.draws if mode.draws else (2 * seed, 2 * seed + 1)
        return {"train": draw(name, mode.n_train, rng=train_rng),
                "test": draw(name, mode.n_test, rng=test_rng),
                "log_prob": lambda x: density(name, x),
                "kind": "toy" if name in TOYS_WITH_DENSITY else "synthetic", "note": ""}
    if name == "digits":
        X = load_digits(rng=seed)
        note = "pixels (k + u) / 17"
    else:
        from sklearn import datasets

        raw = getattr(datasets, f"load_{name}")().data.astype(np.float64)
        X, steps = dequantize(raw, np.random.default_rng(seed))
        note = f"steps {', '.join(f'{s:g}' for s in sorted(set(steps)))}"
    train, test = _split(X, seed)
    if mode.name == "smoke":
        train, test = train[:mode.n_train], test[:mode.n_test]
    return {"train": train, "test": test, "log_prob": None, "kind": "real",
            "note": f"uniform dequantization, {note}"}


# -------------------------------------------------------------------------- estimators
def _standardise(train):
    mean, std = train.mean(axis=0), train.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    return mean, std


def fit_gaussian(train, test):
    """The full-covariance Gaussian of maximum likelihood (training mean and covariance,
    ``bias=True``), fitted to the standardised rows and reported in the data's units (the same
    density as fitting the raw rows, with better conditioned arithmetic)."""
    mean, std = _standardise(train)
    s_train, s_test = (train - mean) / std, (test - mean) / std
    mu = s_train.mean(axis=0)
    cov = np.atleast_2d(np.cov(s_train, rowvar=False, bias=True))
    chol = np.linalg.cholesky(cov)
    r = np.linalg.solve(chol, (s_test - mu).T)
    d = train.shape[1]
    lp = (-0.5 * np.sum(r * r, axis=0) - np.sum(np.log(np.diag(chol)))
          - 0.5 * d * math.log(2.0 * math.pi))
    return lp - np.sum(np.log(std)), {}


def fit_gmm(train, test, seed, max_k):
    """GaussianMixture with k = 1..max_k chosen by the BIC on the standardised training rows."""
    from sklearn.mixture import GaussianMixture

    mean, std = _standardise(train)
    s_train, s_test = (train - mean) / std, (test - mean) / std
    best, bics = None, []
    for k in range(1, max_k + 1):
        if k > s_train.shape[0]:
            break
        model = GaussianMixture(k, covariance_type="full", random_state=seed).fit(s_train)
        bics.append(float(model.bic(s_train)))
        if best is None or bics[-1] < best[0]:
            best = (bics[-1], k, model)
    _, k, model = best
    return model.score_samples(s_test) - np.sum(np.log(std)), {"k": k}


def fit_kde(train, test, seed, grid):
    """KernelDensity, bandwidth by 3-fold CV likelihood on standardised rows (the grid is
    extended by a factor 2.5 past an edge that wins, up to 4 times)."""
    from sklearn.model_selection import GridSearchCV, KFold
    from sklearn.neighbors import KernelDensity

    mean, std = _standardise(train)
    s_train, s_test = (train - mean) / std, (test - mean) / std
    grid = list(grid)
    folds = KFold(KDE_FOLDS, shuffle=True, random_state=seed)
    for _ in range(5):
        search = GridSearchCV(KernelDensity(kernel="gaussian"), {"bandwidth": grid}, cv=folds)
        search.fit(s_train)
        h = search.best_params_["bandwidth"]
        if h == grid[0]:
            grid = [grid[0] / 2.5 ** i for i in range(3, 0, -1)] + grid[:3]
        elif h == grid[-1]:
            grid = grid[-3:] + [grid[-1] * 2.5 ** i for i in range(1, 4)]
        else:
            break
    model = KernelDensity(kernel="gaussian", bandwidth=h).fit(s_train)
    return model.score_samples(s_test) - np.sum(np.log(std)), {"bandwidth": float(h)}


def fit_flow(family, train, test, seed, epochs, variants=None):
    """FlowDensity with its defaults (``family == "default"``), ``flow=family``, or the
    arguments of the variant named ``family``."""
    variants = variants or {}
    if family in variants:
        kwargs = dict(variants[family])
    else:
        kwargs = {} if family == DEFAULT else {"flow": family}
    if epochs is not None:
        kwargs["epochs"] = epochs
    model = FlowDensity(random_state=seed, progress=False, **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)   # -inf rows are counted below
        model.fit(train)
        lp = model.score_samples(test)
    history = model.history_
    info = {"epochs": history.n_epochs, "best_epoch": history.best_epoch,
            "stop_reason": history.stop_reason,
            "lr_drops": list(history.lr_drops)}   # lr_schedule="plateau": epochs of the drops
    if history.val_nll_averaged:   # average="ema": were the averaged parameters kept?
        info["best_averaged"] = history.best_averaged
    chosen = getattr(model, "flow_name_", None)
    if chosen is not None:
        info["chosen"] = chosen
    info["whitened"] = bool(model.whitened_)   # whiten="auto": the kept fit's whitening
    info["rotated"] = bool(model.rotated_)     # rotation="auto": and its rotation
    if hasattr(model, "candidate_scores_"):   # flow="auto": each family's validation score
        info["candidate_scores"] = dict(model.candidate_scores_)
    if hasattr(model, "blend_weights_"):      # a blend (blend="auto" or True): its weights
        info["blend_weights"] = dict(model.blend_weights_)
    return lp, info


def cpu_seconds():
    """User + system CPU seconds of this process so far (``getrusage``; all its threads), or
    ``time.process_time()`` where ``resource`` is missing (Windows)."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not POSIX
        return time.process_time()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_one(estimator, data, seed, mode):
    """One fit and score: a record (never raises for an estimator's failure)."""
    train, test = data["train"], data["test"]
    record = {"estimator": estimator}
    start, start_cpu = time.perf_counter(), cpu_seconds()
    try:
        if estimator == "gaussian":
            lp, info = fit_gaussian(train, test)
        elif estimator == "gmm":
            lp, info = fit_gmm(train, test, seed, mode.gmm_max_k)
        elif estimator == "kde":
            lp, info = fit_kde(train, test, seed, mode.kde_grid)
        else:
            lp, info = fit_flow(estimator, train, test, seed, mode.epochs, mode.variants)
    except Exception as exc:  # a family that cannot fit this set: recorded, the run goes on
        record.update(error=f"{type(exc).__name__}: {str(exc)[:300]}",
                      fit_seconds=time.perf_counter() - start,
                      fit_cpu_seconds=cpu_seconds() - start_cpu)
        return record
    record["fit_seconds"] = time.perf_counter() - start
    record["fit_cpu_seconds"] = cpu_seconds() - start_cpu
    record.update(info)
    finite = np.isfinite(lp)
    record["n_nonfinite"] = int((~finite).sum())
    record["log_likelihood"] = float(np.mean(lp))
    record["se"] = float(np.std(lp[finite]) / math.sqrt(finite.sum())) if finite.any() else None
    if data["log_prob"] is not None:
        diff = data["truth_rows"] - lp
        record["gap"] = float(np.mean(diff))
        record["gap_se"] = float(np.std(diff) / math.sqrt(diff.size)) if finite.all() else None
    return record


# -------------------------------------------------------------------------------- run
def estimators_for(mode, skip):
    families = mode.families if mode.families is not None else tuple(BUILDERS)
    out = [DEFAULT, *BASELINES, *families]
    return [e for e in out if e not in skip]


def load_average():
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def environment(mode):
    import scipy
    import sklearn

    return {"python": platform.python_version(), "numpy": np.__version__,
            "scipy": scipy.__version__, "sklearn": sklearn.__version__,
            "refflow": getattr(refflow, "__version__", "?"), "cpus": os.cpu_count(),
            "machine": platform.machine(),
            "OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS"),
            "mode": mode.name, "n_train": mode.n_train, "n_test": mode.n_test,
            "draws": None if mode.draws is None else list(mode.draws),
            "variants": mode.variants}


def run(mode, sets, estimators, seeds, max_fit_seconds=None, say=print, after_set=None):
    """Every (set, seed, estimator): the list of per-(set, seed) results (``after_set(results)``
    is called after each, to save partial results)."""
    over_budget = set()
    results = []
    for name in sets:
        for seed in seeds:
            data = load_set(name, mode, seed)
            entry = {"set": name, "seed": int(seed), "kind": data["kind"], "note": data["note"],
                     "n_train": int(data["train"].shape[0]),
                     "n_test": int(data["test"].shape[0]),
                     "dim": int(data["train"].shape[1]), "load_before": load_average(),
                     "records": []}
            if data["log_prob"] is not None:
                data["truth_rows"] = data["log_prob"](data["test"])
                entry["truth"] = float(np.mean(data["truth_rows"]))
                entry["truth_se"] = float(np.std(data["truth_rows"]) /
                                          math.sqrt(data["test"].shape[0]))
            say(f"{name} (seed {seed}): {entry['n_train']} x {entry['dim']} training rows"
                + (f", truth {entry['truth']:.4f}" if "truth" in entry else ""))
            for estimator in estimators:
                if estimator in over_budget:
                    entry["records"].append({"estimator": estimator,
                                             "skipped": f"a fit took over {max_fit_seconds} s"})
                    continue
                record = run_one(estimator, data, seed, mode)
                entry["records"].append(record)
                if (max_fit_seconds is not None and estimator not in (DEFAULT, *BASELINES)
                        and record["fit_seconds"] > max_fit_seconds):
                    over_budget.add(estimator)
                say("  " + _line(record))
            entry["load_after"] = load_average()
            results.append(entry)
            if after_set is not None:
                after_set(results)
    return results


def merge(runs):
    """The results of several runs (``--from-json``) as one: records of the same set and seed
    are concatenated in the order given (a later record of the same estimator replaces an
    earlier one in its place, so that the tables keep their columns' order)."""
    merged, order = {}, []
    for results in runs:
        for entry in results:
            key = (entry["set"], entry.get("seed"))
            if key not in merged:
                merged[key] = dict(entry, records=[])
                order.append(key)
            target = merged[key]
            for record in entry["records"]:
                names = [r["estimator"] for r in target["records"]]
                if record["estimator"] in names:
                    target["records"][names.index(record["estimator"])] = record
                else:
                    target["records"].append(record)
            for name in ("load_before", "load_after"):
                if entry.get(name):
                    target[name] = entry[name]
    return [merged[key] for key in order]


def _mean_se(values, row_ses):
    """Mean over seeds and its standard error: across seeds (``std(ddof=1) / sqrt(k)``) when
    there are several, else the single run's standard error over its test rows."""
    values = np.asarray(values, dtype=float)
    if values.size > 1:
        return float(values.mean()), float(values.std(ddof=1) / math.sqrt(values.size))
    return float(values[0]), row_ses[0]


def aggregate(results):
    """One entry per set: each estimator's mean over the seeds run (``n_seeds``), with the
    standard error across seeds (or, for one seed, over the test rows); ``failed`` counts the
    seeds on which the estimator raised."""
    by_set, order = {}, []
    for entry in results:
        if entry["set"] not in by_set:
            by_set[entry["set"]] = []
            order.append(entry["set"])
        by_set[entry["set"]].append(entry)
    out = []
    for name in order:
        entries = by_set[name]
        first = entries[0]
        agg = {key: first[key] for key in ("set", "kind", "note", "n_train", "n_test", "dim")}
        agg["seeds"] = [e.get("seed") for e in entries]
        agg["load_before"] = first.get("load_before")
        if "truth" in first:
            agg["truth"], agg["truth_se"] = _mean_se([e["truth"] for e in entries],
                                                     [first["truth_se"]])
        estimators = []
        for e in entries:
            for r in e["records"]:
                if r["estimator"] not in estimators:
                    estimators.append(r["estimator"])
        agg["records"] = []
        for estimator in estimators:
            recs = [r for e in entries for r in e["records"] if r["estimator"] == estimator]
            done = [r for r in recs if "log_likelihood" in r]
            record = {"estimator": estimator, "n_seeds": len(done),
                      "failed": sum("error" in r for r in recs)}
            if not done:
                record.update({k: v for k, v in recs[0].items() if k in ("error", "skipped")})
                agg["records"].append(record)
                continue
            record["log_likelihood"], record["se"] = _mean_se(
                [r["log_likelihood"] for r in done], [r["se"] for r in done])
            if all("gap" in r for r in done):
                record["gap"], record["gap_se"] = _mean_se(
                    [r["gap"] for r in done], [r.get("gap_se") for r in done])
            record["fit_seconds"] = float(np.mean([r["fit_seconds"] for r in done]))
            if all("fit_cpu_seconds" in r for r in done):
                record["fit_cpu_seconds"] = float(np.mean([r["fit_cpu_seconds"] for r in done]))
            record["n_nonfinite"] = int(sum(r.get("n_nonfinite", 0) for r in done))
            for key in ("k", "bandwidth", "chosen", "whitened"):
                if all(key in r for r in done):
                    record[key] = [r[key] for r in done]
            agg["records"].append(record)
        out.append(agg)
    return out


def _line(record):
    if "error" in record:
        return f"{record['estimator']:>14}: {record['error']}"
    gap = f"  gap {record['gap']:+.4f}" if "gap" in record else ""
    cpu = (f", {record['fit_cpu_seconds']:.1f} s CPU" if "fit_cpu_seconds" in record else "")
    return (f"{record['estimator']:>14}: {record['log_likelihood']:.4f} "
            f"(se {record['se']:.4f}){gap}  {record['fit_seconds']:.1f} s{cpu}")


# ---------------------------------------------------------------------------- tables
def _label(estimator, variants=None):
    if variants and estimator in variants:
        return estimator
    return {"default": "FlowDensity()", "gaussian": "Gaussian", "gmm": "GMM(BIC)",
            "kde": "KDE(CV)"}.get(estimator, f"flow={estimator!r}")


def _cell(record, field="log_likelihood"):
    """``mean ± se`` of an aggregated record (``field`` "log_likelihood" or "gap"); empty
    for an estimator not run on the set."""
    if record is None:
        return ""
    if "skipped" in record:
        return "skipped"
    if "log_likelihood" not in record:
        return "failed"
    value = record.get(field)
    if value is None:
        return ""
    se = record.get("se" if field == "log_likelihood" else "gap_se")
    text = f"{value:.3f}" + ("" if se is None else f" ± {se:.3f}")
    if record.get("n_nonfinite"):
        text += f" ({record['n_nonfinite']} -inf)"
    if record.get("failed"):
        text += f" (failed on {record['failed']} seed(s))"
    return text


def _by(entry):
    return {r["estimator"]: r for r in entry["records"]}


def verdict(entry):
    """``(ahead_of_baselines, within_0.05)`` of FlowDensity() on one (aggregated) set: its mean
    above every baseline's mean, its mean gap at most 0.05 nats (None if not run)."""
    recs = _by(entry)
    default = recs.get(DEFAULT)
    if default is None or "log_likelihood" not in default:
        return None, None
    scores = [recs[b]["log_likelihood"] for b in BASELINES
              if b in recs and "log_likelihood" in recs[b]]
    ahead = all(default["log_likelihood"] > s for s in scores) if scores else None
    within = default["gap"] <= 0.05 if "gap" in default else None
    return ahead, within


def _choices(record, key, fmt):
    """The model selection's choices over the seeds: `` (k=3,5)``, `` (h=0.1)``."""
    if not record or key not in record:
        return ""
    values = sorted(set(record[key]))
    return f" ({ {'bandwidth': 'h'}.get(key, key)}={','.join(fmt(v) for v in values)})"


def summary_table(results):
    """FlowDensity() beside the baselines, one row per set (``results`` aggregated)."""
    head = ("| set | n x d | seeds | truth | FlowDensity() | gap | Gaussian | GMM(BIC) | KDE(CV) "
            "| best family | ahead of all baselines | gap <= 0.05 | FlowDensity() fit s |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for entry in results:
        recs = _by(entry)
        families = [r for e, r in recs.items() if e not in (DEFAULT, *BASELINES)
                    and "log_likelihood" in r]
        best = max(families, key=lambda r: r["log_likelihood"], default=None)
        best_text = f"{best['estimator']} {best['log_likelihood']:.3f}" if best else ""
        ahead, within = verdict(entry)
        default = recs.get(DEFAULT)
        baselines = [_cell(recs.get(b)) + _choices(recs.get(b), "k", str)
                     + _choices(recs.get(b), "bandwidth", lambda v: f"{v:.3g}")
                     for b in BASELINES]
        truth = f"{entry['truth']:.3f}" if "truth" in entry else ""
        seconds = ("" if default is None or "fit_seconds" not in default
                   else f"{default['fit_seconds']:.1f}")
        lines.append(
            f"| {entry['set']} | {entry['n_train']} x {entry['dim']} | {len(entry['seeds'])} | "
            f"{truth} | {_cell(default)} | {_cell(default, 'gap')} | {' | '.join(baselines)} | "
            f"{best_text} | {'' if ahead is None else ('yes' if ahead else 'NO')} | "
            f"{'' if within is None else ('yes' if within else 'NO')} | {seconds} |")
    return "\n".join(lines)


def families_table(results, field="log_likelihood", variants=None):
    estimators = []
    for entry in results:
        for r in entry["records"]:
            if r["estimator"] not in estimators:
                estimators.append(r["estimator"])
    head = "| set | " + " | ".join(_label(e, variants) for e in estimators) + " |"
    lines = [head, "|---|" + "---|" * len(estimators)]
    for entry in results:
        recs = _by(entry)
        if field in ("fit_seconds", "fit_cpu_seconds"):
            cells = [("" if recs.get(e) is None or field not in recs[e]
                      else f"{recs[e][field]:.1f}") for e in estimators]
        else:
            cells = [_cell(recs.get(e), field) for e in estimators]
        lines.append(f"| {entry['set']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown(results, env, command):
    """The tables of a run (``results`` as run, one entry per set and seed)."""
    loads = [entry["load_before"] for entry in results if entry.get("load_before")]
    load_text = (f"load average (1 min) {min(l[0] for l in loads):.2f} to "
                 f"{max(l[0] for l in loads):.2f} over the run" if loads else "load unknown")
    seeds = sorted({e.get("seed") for e in results if e.get("seed") is not None})
    table = aggregate(results)
    variants = env.get("variants") or {}
    out = [f"Density suite ({env['mode']}: {env['n_train']:,} training rows, {env['n_test']:,} "
           f"test rows for the toys and synthetic sets; seeds {', '.join(map(str, seeds))}), "
           f"`{command}`.", "",
           "Held-out mean log-likelihood in nats per row (higher is better), mean over the "
           "seeds ± its standard error (across seeds; with one seed, over the test rows); gap "
           "= mean(log p_true - log q) on the test rows (the KL estimate; lower is better).", "",
           summary_table(table), "",
           *(["Variants: " + "; ".join(f"`{k}` = `FlowDensity(**{json.dumps(v)})`"
                                        for k, v in variants.items()), ""] if variants else []),
           *([f"Rows of the toys and synthetic sets drawn with rng={env['draws'][0]} "
              f"(training) and rng={env['draws'][1]} (test).", ""] if env.get("draws") else []),
           "Held-out mean log-likelihood, every estimator:", "",
           families_table(table, variants=variants), "",
           "Gap to the truth, every estimator:", "",
           families_table([e for e in table if "truth" in e], "gap", variants), "",
           "Fit seconds, mean over seeds (provisional: shared machine, "
           f"OPENBLAS_NUM_THREADS={env['OPENBLAS_NUM_THREADS']}; {load_text}):", "",
           families_table(table, "fit_seconds", variants), "",
           "Fit CPU seconds (user + system, getrusage), mean over seeds: what a quiet "
           "machine's fit would take, roughly:", "",
           families_table(table, "fit_cpu_seconds", variants), "",
           f"Python {env['python']}, NumPy {env['numpy']}, SciPy {env['scipy']}, scikit-learn "
           f"{env['sklearn']}, refflow {env['refflow']}, {env['cpus']} CPUs ({env['machine']})."]
    notes = [f"- {e['set']}: {e['note']}" for e in table if e["note"]]
    if notes:
        out += ["", "Real sets:", *notes]
    return "\n".join(out) + "\n"


# ------------------------------------------------------------------------------- main
def parse(argv):
    parser = argparse.ArgumentParser(
        prog="python benchmarks/density_suite.py",
        description="Held-out log-likelihoods of FlowDensity() and every flow family beside "
                    "GaussianMixture (k by BIC) and KernelDensity (bandwidth by 3-fold CV) on "
                    "toys, synthetic sets with exact densities and dequantized real data.")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="5,000 training rows")
    size.add_argument("--smoke", action="store_true",
                      help="tiny sizes, 3 sets, 2 epochs (tests the script)")
    parser.add_argument("--sets", metavar="NAME,...", help=f"subset of {', '.join(SETS)}")
    parser.add_argument("--estimators", metavar="NAME,...",
                        help="subset of default, gmm, kde and the flow families")
    parser.add_argument("--skip", metavar="NAME,...", default="",
                        help="estimators to leave out")
    parser.add_argument("--max-fit-seconds", type=float, default=None, metavar="S",
                        help="skip a family on later sets once a fit of it took longer")
    parser.add_argument("--n-train", type=int, default=None, metavar="N",
                        help="training rows of the toys and synthetic sets")
    parser.add_argument("--seeds", metavar="S,...", default="0",
                        help="seeds, each a full repetition (data draw or split, "
                             "initialisation); the tables give the mean over them (default 0)")
    parser.add_argument("--draws", metavar="TRAIN,TEST", default=None,
                        help="generator seeds of the toys' and synthetic sets' training and "
                             "test rows (default: 2 s and 2 s + 1 for seed s), to choose "
                             "defaults on rows no table uses")
    parser.add_argument("--variant", metavar="NAME=JSON", action="append", default=[],
                        help="an extra estimator NAME: FlowDensity(**JSON) (repeatable)")
    parser.add_argument("--json", metavar="PATH",
                        help="write the results as JSON (rewritten after every set)")
    parser.add_argument("--markdown", metavar="PATH")
    parser.add_argument("--from-json", metavar="PATH,...",
                        help="run nothing: merge these JSON results (e.g. of runs over parts of "
                             "the estimators) and write the tables")
    args = parser.parse_args(argv)
    base = MODES["smoke" if args.smoke else "quick" if args.quick else "full"]
    draws = None
    if args.draws is not None:
        try:
            draws = tuple(int(v) for v in args.draws.split(","))
        except ValueError:
            draws = ()
        if len(draws) != 2 or min(draws) < 0 or draws[0] == draws[1]:
            parser.error(f"--draws: expected two distinct non-negative integers TRAIN,TEST, got "
                         f"{args.draws!r}")
    variants = {}
    for text in args.variant:
        name, sep, spec = text.partition("=")
        name = name.strip()
        try:
            kwargs = json.loads(spec) if sep else None
        except ValueError:
            kwargs = None
        if not name or not isinstance(kwargs, dict) or name in variants:
            parser.error(f"--variant: expected NAME={{JSON object}} with a new name, got "
                         f"{text!r}")
        if name in (DEFAULT, *BASELINES, *BUILDERS):
            parser.error(f"--variant: {name!r} is already an estimator's name")
        bad = sorted(set(kwargs) & {"random_state", "progress"})
        if bad:
            parser.error(f"--variant {name}: {', '.join(bad)} are set by the suite")
        try:
            FlowDensity(**kwargs)._checked_params()
        except (TypeError, ValueError) as exc:
            parser.error(f"--variant {name}: {exc}")
        variants[name] = kwargs
    mode = Mode(base.name, args.n_train or base.n_train, base.n_test, base.sets, base.epochs,
                base.families, base.gmm_max_k, base.kde_grid, draws, variants)
    if args.n_train is not None and args.n_train < 2:
        parser.error("--n-train: expected at least 2")
    try:
        args.seeds = [int(v) for v in args.seeds.split(",") if v.strip()]
    except ValueError:
        parser.error(f"--seeds: expected integers separated by commas, got {args.seeds!r}")
    if not args.seeds or min(args.seeds) < 0 or len(set(args.seeds)) != len(args.seeds):
        parser.error(f"--seeds: expected distinct non-negative integers, got {args.seeds!r}")
    sets = list(mode.sets)
    if args.sets:
        sets = [s.strip() for s in args.sets.split(",") if s.strip()]
        unknown = [s for s in sets if s not in SETS]
        if unknown or not sets:
            parser.error(f"--sets: unknown set(s) {', '.join(unknown) or '(none)'}; choose from "
                         f"{', '.join(SETS)}")
    known = [DEFAULT, *BASELINES, *BUILDERS, *variants]
    skip = [s.strip() for s in args.skip.split(",") if s.strip()]
    estimators = estimators_for(mode, skip) + [v for v in variants if v not in skip]
    if args.estimators:
        estimators = [e.strip() for e in args.estimators.split(",") if e.strip()]
    unknown = [e for e in estimators + skip if e not in known]
    if unknown:
        parser.error(f"unknown estimator(s) {', '.join(unknown)}; choose from {', '.join(known)}")
    estimators = [e for e in estimators if e not in skip]
    for option, path in (("--json", args.json), ("--markdown", args.markdown)):
        folder = os.path.dirname(os.path.abspath(path)) if path else None
        if folder and not (os.path.isdir(folder) and os.access(folder, os.W_OK)):
            parser.error(f"{option}: cannot write {path!r} (no such writable directory)")
    return args, mode, sets, estimators


def main(argv=None, say=print):
    argv = sys.argv[1:] if argv is None else list(argv)
    args, mode, sets, estimators = parse(argv)
    command = " ".join(["python benchmarks/density_suite.py", *argv])

    def save(results, env):
        if args.json:
            with open(args.json, "w") as fh:
                json.dump({"environment": env, "command": command, "seeds": args.seeds,
                           "results": results}, fh, indent=1)

    if args.from_json:
        runs = []
        for path in args.from_json.split(","):
            with open(path) as fh:
                runs.append(json.load(fh))
        env = dict(runs[0]["environment"])
        env["merged_from"] = [r["command"] for r in runs]
        env["variants"] = {k: v for r in runs
                           for k, v in (r["environment"].get("variants") or {}).items()}
        command = " + ".join(f"`{r['command']}`" for r in runs).strip("`")
        results = merge([r["results"] for r in runs])
    else:
        env = environment(mode)
        started = time.perf_counter()
        results = run(mode, sets, estimators, args.seeds, args.max_fit_seconds, say=say,
                      after_set=lambda partial: save(partial, env))
        env["wall_seconds"] = time.perf_counter() - started
    md = markdown(results, env, command)
    say("")
    say(md)
    save(results, env)
    if args.markdown:
        with open(args.markdown, "w") as fh:
            fh.write(md)
    return results


if __name__ == "__main__":
    main()
