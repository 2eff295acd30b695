"""Choosing FlowDensity's defaults: one traced fit replays several epoch, patience and
weight-averaging settings exactly.

Run (from the repository root)::

    python benchmarks/density_grid.py SET [--kwargs JSON] [--n-train N] [--n-test N]
        [--draws TRAIN,TEST] [--random-state S] [--epochs E,...] [--patience P,...]
        [--decay D] [--json PATH] [--label TEXT]

Why a replay is exact. With a constant learning rate (``lr_schedule=None``, which the script
sets; FlowDensity's default drop, ``"plateau"``, starts where the patience runs out, so it
depends on the setting and is not replayed; nor is ``blend``, which the script sets to
False: each setting's kept flow is scored alone) the training run of
:func:`refflow.training.fit` does not depend on ``epochs`` or ``patience``: they only decide
when it stops, and the parameters kept are those of the epoch with the lowest validation NLL
among the epochs run (the first on a tie). Weight averaging (``average="ema"``) does not change
the run either (the average is a shadow of the iterates); it only adds a candidate per epoch.
So one fit of ``FlowDensity(**kwargs)`` with ``average="ema"``, ``patience=None`` and
``epochs=max(E)`` records, per epoch, the validation NLL of the trained and of the averaged
parameters (``history_.val_nll_trained``, ``val_nll_averaged``), and a copy of the parameters
each time one of the two reaches a new low; for every ``(epochs, patience, average)`` setting
the epoch and the parameters that a fit with that setting would keep follow by applying
fit's rule to those numbers, and are then scored on the test rows. The trace stops once the
largest setting would have stopped, with and without averaging.

The averaged parameters come from this script's own optimizer (Adam, which the default uses,
with the same ``lr`` and ``weight_decay``; a subclass that keeps the zero-started
bias-corrected average ``m_t / (1 - beta^t)`` after each step): a second implementation of
fit's average, checked against fit's own validation NLLs of the average every tenth epoch (to
1e-9 relative). ``tests/test_density_suite.py`` checks the replay against real fits with
those settings, bit for bit.

CPU seconds (user + system, ``getrusage``) of a setting: the fit's set-up (standardisation,
whitening, the Student t start) plus the trace's epochs up to the setting's last one. They
include the validation pass of the averaged parameters in every epoch (for a setting without
averaging, an overestimate of about the cost of one validation pass per epoch), and exclude
this script's own checks and copies.

Data: the toys' and synthetic sets' rows drawn with ``--draws TRAIN,TEST`` (default ``7,8``,
which no table of ``benchmarks/density_suite.py`` uses); gap = mean(log p_true - log q) over
the test rows, with its paired standard error. On at most ``WHITEN_CHOICE_MAX_ROWS`` training
rows pass ``"whiten": true`` or ``false`` in ``--kwargs``: the choice that ``whiten="auto"``
makes there between whitened and unwhitened candidates is not replayed (refused).
"""

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
import warnings  # noqa: E402

import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if importlib.util.find_spec("refflow") is None:  # not installed: the repository's refflow
    sys.path.insert(0, ROOT)
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import refflow.estimator as estimator_module  # noqa: E402
from density_suite import cpu_seconds  # noqa: E402
from refflow.data import (SYNTHETIC, TOYS_WITH_DENSITY, synthetic, synthetic_log_prob,  # noqa: E402
                          toy, toy_log_prob)
from refflow.bijectors import Chain  # noqa: E402
from refflow.distributions import Flow  # noqa: E402
from refflow.estimator import FlowDensity  # noqa: E402
from refflow.optim import Adam  # noqa: E402

#: fit's running average and the zero-started form here round differently (a few ulps a
#: step over thousands of steps): their validation NLLs agree to far better than 1e-9.
SAME_AVERAGE_NLL = 1e-9
#: Check the two averages against each other every this many epochs.
CHECK_EVERY = 10


class TracingAdam(Adam):
    """Adam that also keeps the bias-corrected moving average of the parameters after each
    step: ``m_t = beta m_{t-1} + (1 - beta) theta_t`` from ``m_0 = 0``, ``a_t = m_t / (1 -
    beta^t)``."""

    def __init__(self, params, decay, **kwargs):
        super().__init__(params, **kwargs)
        # names of their own: Adam's state has its own m and t
        self.average_decay, self.average_steps = decay, 0
        self.average_sum = {k: np.zeros_like(v, dtype=np.float64) for k, v in params.items()}

    def step(self, grads):
        super().step(grads)
        self.average_steps += 1
        for key, m in self.average_sum.items():
            m *= self.average_decay
            m += (1.0 - self.average_decay) * self.params[key]

    def average(self):
        correction = 1.0 - self.average_decay ** self.average_steps
        return {k: m / correction for k, m in self.average_sum.items()}


def settings(epochs_list, patience_list):
    """Every ``(epochs, patience, average)``; patience None means none."""
    return [(e, p, a) for e in epochs_list for p in patience_list for a in (False, True)]


def replay(trained, averaged, epochs, patience, average):
    """``(best_epoch, which, last_epoch)`` that fit keeps for this setting, from the per-epoch
    validation NLLs of the trained and averaged parameters (fit's rule: the averaged ones
    when strictly better; a new best when strictly lower; stop when ``epoch - best >=
    patience`` before the last epoch). None when the trace is too short to tell."""
    best, which, best_metric = None, None, math.inf
    n = len(trained)
    for epoch in range(min(epochs, n)):
        value, kind = trained[epoch], "trained"
        if average and averaged[epoch] < value:
            value, kind = averaged[epoch], "averaged"
        if value < best_metric:
            best, which, best_metric = epoch, kind, value
        if patience is not None and epoch - best >= patience and epoch < epochs - 1:
            return best, which, epoch
    if n < epochs:
        return None
    return best, which, epochs - 1


def load(name, n_train, n_test, draws):
    if name in TOYS_WITH_DENSITY:
        draw, density = toy, toy_log_prob
    elif name in SYNTHETIC:
        draw, density = synthetic, synthetic_log_prob
    else:
        raise ValueError(f"density_grid: {name!r} has no exact density; choose from "
                         f"{', '.join(TOYS_WITH_DENSITY + SYNTHETIC)}")
    train, test = draw(name, n_train, rng=draws[0]), draw(name, n_test, rng=draws[1])
    return train, test, density(name, test)


def _scorer(model, family):
    """A function scoring test rows with the parameters of a snapshot of ``family``'s flow, in
    the data's units (the family's inner flow before the fitted whitening and
    standardisation, as ``FlowDensity.fit`` folds them in)."""
    inner = family["flow"]
    kept = model.flow_
    tail = list(kept.bijector.layers[1:])
    folded = Flow(inner.base, Chain([inner.bijector, *tail])).eval()

    def score(snapshot, test):
        for k, v in snapshot.items():
            inner.params[k][...] = v
        model.flow_ = folded
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                return model.score_samples(test)
        finally:
            model.flow_ = kept

    return score


def trace(name, kwargs, *, n_train=20000, n_test=5000, draws=(7, 8), random_state=0,
          epochs_list=(100, 200), patience_list=(10, 20), decay=0.999, say=print):
    """Fit once, replay every setting; returns a list of records (one per setting).

    With ``flow="auto"`` (the default) every candidate family is traced; a setting keeps, as
    ``FlowDensity`` does, the family whose kept epoch has the lowest validation NLL (the
    first on a tie), and its CPU time is the sum of the families' fits up to their last
    epochs under the setting. The fits replayed are ``FlowDensity(lr_schedule=None,
    blend=False, **kwargs)``: a constant learning rate, and the kept flow scored alone.
    """
    if kwargs.get("lr_schedule") is not None:
        raise ValueError(f"density_grid: lr_schedule={kwargs['lr_schedule']!r} is not "
                         f"replayed (a schedule changes the run with the epochs or the "
                         f"patience); the grid replays lr_schedule=None")
    if kwargs.get("blend", False) is not False:
        raise ValueError(f"density_grid: blend={kwargs['blend']!r} is not replayed (the grid "
                         f"scores the kept flow of each setting); it replays blend=False")
    if (kwargs.get("whiten", "auto") == "auto"
            and n_train <= estimator_module.WHITEN_CHOICE_MAX_ROWS):
        raise ValueError(f"density_grid: on {n_train} <= "
                         f"{estimator_module.WHITEN_CHOICE_MAX_ROWS} rows whiten='auto' also "
                         f"fits unwhitened candidates, which are not replayed; pass "
                         f"\"whiten\": true or false in --kwargs")
    train, test, truth = load(name, n_train, n_test, draws)
    all_settings = settings(epochs_list, patience_list)
    max_epochs = max(epochs_list)
    longest_patience = max(patience_list, key=lambda p: math.inf if p is None else p)
    longest = [(max_epochs, longest_patience, False), (max_epochs, longest_patience, True)]
    families = []
    real_fit = estimator_module.fit

    def traced_fit(flow, x, **options):
        family = {"flow": flow, "fit_start": cpu_seconds(), "snapshots": {}, "epoch_cpu": [],
                  "overhead": 0.0, "checked": 0, "best_t": math.inf, "best_a": math.inf}
        families.append(family)
        family["optimizer"] = TracingAdam(flow.params, decay, lr=options.pop("lr"),
                                          weight_decay=options.pop("weight_decay"))
        options.update(epochs=max_epochs, patience=None, average="ema", average_decay=decay,
                       callback=lambda epoch, history: callback(family, x, epoch, history))
        history = real_fit(flow, x, optimizer=family["optimizer"], **options)
        family["history"] = history
        family["span"] = cpu_seconds() - family["fit_start"]
        return history

    def callback(family, x, epoch, history):
        now = cpu_seconds()
        family["epoch_cpu"].append(now - family["overhead"])
        flow = family["flow"]
        t, a = history.val_nll_trained[-1], history.val_nll_averaged[-1]
        if t < family["best_t"]:
            family["best_t"] = t
            family["snapshots"][(epoch, "trained")] = {k: np.array(v)
                                                       for k, v in flow.params.items()}
        if a < family["best_a"]:
            family["best_a"] = a
            average = family["optimizer"].average()
            family["snapshots"][(epoch, "averaged")] = average
            if epoch % CHECK_EVERY == 0:
                check_average(flow, x[history.validation_index], average, a)
                family["checked"] += 1
        family["overhead"] += cpu_seconds() - now
        done = [replay(history.val_nll_trained, history.val_nll_averaged, *s) for s in longest]
        return all(r is not None and r[2] <= epoch for r in done)

    model = FlowDensity(random_state=random_state, progress=False,
                        **dict(kwargs, lr_schedule=None, blend=False))
    start = cpu_seconds()
    estimator_module.fit = traced_fit
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            model.fit(train)
    finally:
        estimator_module.fit = real_fit
    setup = cpu_seconds() - start - sum(f["span"] for f in families)
    names = list(getattr(model, "candidate_scores_", {model.flow_name_: None}))
    if len(names) != len(families):
        raise RuntimeError(f"density_grid: {len(families)} fits traced for the families "
                           f"{names} (a candidate diverged?)")
    for family, family_name in zip(families, names):
        family["name"] = family_name
        family["score"] = _scorer(model, family)
        h = family["history"]
        say(f"{name}: {family_name} traced {h.n_epochs} epochs ({len(family['snapshots'])} "
            f"snapshots, {family['checked']} checks of the average)")
    records, scored = [], {}
    for epochs, patience, average in all_settings:
        per_family = []
        for family in families:
            h = family["history"]
            result = replay(h.val_nll_trained, h.val_nll_averaged, epochs, patience, average)
            if result is None:
                break
            best, which, last = result
            value = (h.val_nll_averaged if which == "averaged" else h.val_nll_trained)[best]
            per_family.append((value, family, best, which, last))
        if len(per_family) != len(families):
            continue
        value, family, best, which, _ = min(per_family, key=lambda r: r[0])  # first on a tie
        key = (family["name"], best, which)
        if key not in scored:
            lp = family["score"](family["snapshots"][(best, which)], test)
            diff = truth - lp
            scored[key] = (float(np.mean(lp)), float(np.mean(diff)),
                           float(np.std(diff) / math.sqrt(diff.size)),
                           int((~np.isfinite(lp)).sum()))
        log_likelihood, gap, gap_se, n_bad = scored[key]
        cpu = setup + sum(f["epoch_cpu"][last] - f["fit_start"] for _, f, _, _, last in per_family)
        records.append({
            "set": name, "kwargs": kwargs, "epochs": epochs, "patience": patience,
            "average": average, "decay": decay if average else None, "family": family["name"],
            "best_epoch": best, "kept": which,
            "epochs_run": [last + 1 for *_, last in per_family],
            "log_likelihood": log_likelihood, "gap": gap, "gap_se": gap_se, "n_nonfinite": n_bad,
            "cpu_seconds": cpu, "n_train": n_train, "n_test": n_test, "draws": list(draws),
            "random_state": random_state,
            "val_nll": {f["name"]: v for v, f, *_ in per_family},
            # the trace itself, to replay other settings' choices and CPU times later
            "trace": {f["name"]: {"val_nll_trained": f["history"].val_nll_trained,
                                  "val_nll_averaged": f["history"].val_nll_averaged,
                                  "epoch_cpu": [c - f["fit_start"] for c in f["epoch_cpu"]]}
                      for f in families}})
    return records


def check_average(flow, x_val, average, fit_value):
    """This script's average against fit's: the validation NLL of ours must be fit's."""
    trained = {k: np.array(v) for k, v in flow.params.items()}
    try:
        for k, v in average.items():
            flow.params[k][...] = v
        ours = -float(np.mean(flow.log_prob(x_val)))
    finally:
        for k, v in trained.items():
            flow.params[k][...] = v
    if not abs(ours - fit_value) <= SAME_AVERAGE_NLL * abs(fit_value):
        raise AssertionError(f"density_grid: the average's validation NLL is {ours!r} here and "
                             f"{fit_value!r} in fit")


def table(records):
    lines = ["| set | change | epochs | patience | average | gap | family: best epoch (kept) "
             "| epochs run | CPU s |", "|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        lines.append(
            f"| {r['set']} | {r.get('label', '')} | {r['epochs']} | {r['patience']} | "
            f"{'ema ' + str(r['decay']) if r['average'] else 'no'} | {r['gap']:.3f} ± "
            f"{r['gap_se']:.3f} | {r['family']}: {r['best_epoch'] + 1} ({r['kept']}) | "
            f"{'+'.join(map(str, r['epochs_run']))} | {r['cpu_seconds']:.1f} |")
    return "\n".join(lines)


def _ints(text, name, allow_none=False):
    out = []
    for v in text.split(","):
        v = v.strip()
        if allow_none and v.lower() == "none":
            out.append(None)
            continue
        try:
            out.append(int(v))
        except ValueError:
            raise SystemExit(f"density_grid: {name} expects integers separated by commas, got "
                             f"{text!r}") from None
        if out[-1] < 1:
            raise SystemExit(f"density_grid: {name} values must be positive, got {text!r}")
    return out


def main(argv=None, say=print):
    parser = argparse.ArgumentParser(prog="python benchmarks/density_grid.py",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("set", help="a toy or synthetic set with an exact density")
    parser.add_argument("--kwargs", default="{}", help="FlowDensity arguments as JSON")
    parser.add_argument("--label", default="", help="names the change in the table")
    parser.add_argument("--n-train", type=int, default=20000)
    parser.add_argument("--n-test", type=int, default=5000)
    parser.add_argument("--draws", default="7,8")
    parser.add_argument("--random-state", type=int, default=0)
    parser.add_argument("--epochs", default="100,200")
    parser.add_argument("--patience", default="10,20")
    parser.add_argument("--decay", type=float, default=0.999)
    parser.add_argument("--json", help="append the records to this JSON list")
    args = parser.parse_args(argv)
    kwargs = json.loads(args.kwargs)
    bad = sorted(set(kwargs) & {"random_state", "progress", "epochs", "patience", "average",
                                "average_decay"})
    if not isinstance(kwargs, dict) or bad:
        raise SystemExit(f"density_grid: --kwargs must be a JSON object without {bad} (set "
                         f"here)")
    draws = tuple(_ints(args.draws, "--draws"))
    records = trace(args.set, kwargs, n_train=args.n_train, n_test=args.n_test, draws=draws,
                    random_state=args.random_state, epochs_list=_ints(args.epochs, "--epochs"),
                    patience_list=_ints(args.patience, "--patience", allow_none=True),
                    decay=args.decay, say=say)
    for r in records:
        r["label"] = args.label
    say(table(records))
    if args.json:
        old = []
        if os.path.exists(args.json):
            with open(args.json) as fh:
                old = json.load(fh)
        with open(args.json, "w") as fh:
            json.dump(old + records, fh, indent=1)
    return records


if __name__ == "__main__":
    main()
