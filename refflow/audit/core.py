"""``audit(library)``: the oracle over every class a peer library exports."""

import datetime
import json
import platform
import time

import numpy as np

from ..testing import check_layer
from . import peers
from .catalogue import catalogue, import_library
from .recipes import RECIPES, Recipe

#: Parameter elements per array whose gradient is checked: a seeded sample keeps one layer's
#: gradient check to a few hundred calls; the analytic norm still covers every element.
SAMPLE = 6
#: Elements per gradient re-examined by a step sweep: enough to confirm a failure or show one
#: step-dependent estimate (each sweep is ~60 calls).
SWEEPS = 3
#: The checks' own random stream (cotangents, samples) is seeded ``[seed, CHECK_STREAM]``, not
#: ``seed``: the builders draw the points from ``default_rng(seed)``, and cotangents equal to the
#: points put the inverse's gradient check of any orthogonal layer (a Householder reflection) at
#: a stationary point (``sum_r z_r . Q(q)^-1 Q(q0) z_r`` is largest at ``q = q0``), where the
#: gradient is zero and its check says nothing.
CHECK_STREAM = 1
#: Dimensions built by default: the smallest coupling split (2) and an odd one (3).
SIZES = (2, 3)
DTYPES = ("float64", "float32")

_REGISTERED = {}


def register(library, cls, factory, *, label="", sizes=None, dtypes=None, options=None, why=""):
    """Add a recipe to the audit of ``library`` (for this process): a class the catalogue does
    not list (your own layer), or another variant of one it does.

    Parameters
    ----------
    library, cls : str
        Where the rows appear (``library`` one of :data:`LIBRARIES`).
    factory : callable
        ``factory(dim) -> build``, ``build(seed) -> dict`` of :func:`refflow.testing.check_layer`
        arguments (``forward``, ``inverse``, ``z``, pullbacks, ``params``, options), for
        instance from :func:`refflow.audit.peers.torch_layer`.
    label, sizes, dtypes, options, why
        As the fields of :class:`refflow.audit.recipes.Recipe`.

    Returns
    -------
    Recipe
        Pass it to :func:`unregister` to remove it.
    """
    if library not in RECIPES:
        raise ValueError(f"register: unknown library {library!r}; expected one of "
                         f"{', '.join(RECIPES)}")
    if not callable(factory):
        raise TypeError(f"register: factory must be callable, got {type(factory).__name__}")
    entry = Recipe(factory, label, sizes=sizes, dtypes=dtypes, options=dict(options or {}),
                   why=why)
    _REGISTERED.setdefault(library, {}).setdefault(cls, []).append(entry)
    return entry


def unregister(library, cls, entry):
    """Remove a recipe added by :func:`register`."""
    found = _REGISTERED.get(library, {}).get(cls, [])
    if entry not in found:
        raise ValueError(f"unregister: no such recipe registered for {library} {cls}")
    found.remove(entry)
    if not found:
        del _REGISTERED[library][cls]


class Row:
    """One audited case (class, variant, size, precision), or one class not built."""

    def __init__(self, library, cls, *, label="", dim=None, dtype=None, verdict="skipped",
                 checks=0, worst_error=None, flagged=(), reason="", reproducer="", seconds=0.0,
                 report=None):
        self.library, self.cls, self.label, self.dim, self.dtype = library, cls, label, dim, dtype
        self.verdict, self.checks, self.worst_error = verdict, checks, worst_error
        self.flagged, self.reason, self.reproducer = list(flagged), reason, reproducer
        self.seconds, self.report = seconds, report

    def as_dict(self):
        worst = self.worst_error
        return {"library": self.library, "class": self.cls, "variant": self.label,
                "dim": self.dim, "dtype": self.dtype, "verdict": self.verdict,
                "checks": self.checks,
                "worst_error": None if worst is None or not np.isfinite(worst) else float(worst),
                "not_passed": self.flagged, "reason": self.reason,
                "reproducer": self.reproducer}


class AuditReport:
    """The audit of one library: a row per case and per class not built.

    Attributes
    ----------
    library, version, command : str
    rows : list of Row
    date : str
        UTC time of the run (ISO 8601, seconds).
    """

    def __init__(self, library, version, rows, command, date):
        self.library, self.version, self.rows, self.command, self.date = (
            library, version, rows, command, date)

    @property
    def failures(self):
        """The rows whose verdict is ``fail``."""
        return [r for r in self.rows if r.verdict == "fail"]

    @property
    def ok(self):
        return not self.failures

    def classes(self, verdict=None):
        """Class names, each with its worst verdict; only those with ``verdict`` if given."""
        order = {"pass": 0, "not-converged": 1, "fail": 2}
        worst = {}
        for r in self.rows:
            if r.verdict == "skipped":
                worst.setdefault(r.cls, "skipped")
            elif worst.get(r.cls, "skipped") == "skipped" or \
                    order[r.verdict] > order[worst[r.cls]]:
                worst[r.cls] = r.verdict
        return sorted(c for c, v in worst.items() if verdict is None or v == verdict)

    def summary(self):
        counts = {v: len(self.classes(v)) for v in ("pass", "not-converged", "fail", "skipped")}
        cases = sum(r.verdict != "skipped" for r in self.rows)
        return (f"{self.library} {self.version}: {len(self.classes())} classes, {cases} cases; "
                f"classes {counts['pass']} pass, {counts['not-converged']} not-converged, "
                f"{counts['fail']} fail, {counts['skipped']} skipped")

    def to_json(self, **kwargs):
        """JSON text: ``{"library", "version", "command", "date", "rows": [...]}``."""
        kwargs.setdefault("indent", 2)
        return json.dumps({"library": self.library, "version": self.version,
                           "command": self.command, "date": self.date,
                           "rows": [r.as_dict() for r in self.rows]}, allow_nan=False, **kwargs)

    def table(self):
        """The text table: class, variant, dim, dtype, checks, worst error, verdict, and what
        did not pass (or why the class was skipped)."""
        head = (f"{'class':<42}{'variant':<34}{'dim':>4} {'dtype':<8}{'checks':>7}"
                f"{'worst':>10}  {'verdict':<14}note")
        lines = [head]
        for r in self.rows:
            worst = "" if r.worst_error is None or not np.isfinite(r.worst_error) else \
                f"{r.worst_error:.2e}"
            note = r.reason if r.verdict == "skipped" else "; ".join(r.flagged[:2]) + (
                f"; +{len(r.flagged) - 2} more" if len(r.flagged) > 2 else "")
            lines.append(f"{r.cls:<42}{r.label[:33]:<34}{'' if r.dim is None else r.dim:>4} "
                         f"{r.dtype or '':<8}{r.checks or '':>7}{worst:>10}  {r.verdict:<14}"
                         f"{note}")
        lines.append(self.summary())
        for r in self.failures:
            lines.append(f"FAIL {r.cls} [{r.label or 'default'}, dim {r.dim}, {r.dtype}]: "
                         f"{r.reproducer}")
        return "\n".join(lines)

    def __str__(self):
        return self.table()

    def markdown(self):
        """The report as Markdown: a header (command, versions, date) and the table."""
        out = [f"# Audit of {self.library} {self.version}", "",
               f"Generated by `{self.command}` on {self.date} (Python "
               f"{platform.python_version()}, NumPy {np.__version__}{_peer_versions()}).",
               "Verdicts of `refflow.testing` (pass, fail, not-converged: finite differences "
               "cannot decide, skipped: not built, with the reason); explanations of the "
               "failures in [README.md](README.md).", "", f"**{self.summary()}**", "",
               "| class | variant | dim | dtype | checks | worst error | verdict | not passed / "
               "reason |", "| --- | --- | ---: | --- | ---: | ---: | --- | --- |"]
        for r in self.rows:
            worst = "" if r.worst_error is None or not np.isfinite(r.worst_error) else \
                f"{r.worst_error:.1e}"
            note = r.reason if r.verdict == "skipped" else "; ".join(r.flagged)
            verdict = f"**{r.verdict}**" if r.verdict == "fail" else r.verdict
            out.append(f"| {r.cls} | {r.label} | {'' if r.dim is None else r.dim} | "
                       f"{r.dtype or ''} | {r.checks or ''} | {worst} | {verdict} | "
                       f"{note.replace('|', '/')} |")
        if self.failures:
            out += ["", "## Reproducers", ""]
            out += [f"- {r.cls} [{r.label or 'default'}, dim {r.dim}, {r.dtype}]: "
                    f"`{r.reproducer}`" for r in self.failures]
        return "\n".join(out) + "\n"


def _peer_versions():
    import importlib
    out = []
    for name in ("torch", "jax"):
        try:
            out.append(f", {name} {importlib.import_module(name).__version__}")
        except ImportError:
            pass
    return "".join(out)


def _summary(report):
    ran = [line for r in report.reports.values() for line in r.lines if line.verdict != "skipped"]
    problems = [f"{part}: {p}" for part, r in report.reports.items() for p in r.problems]
    flagged = problems + [f"{part}: {line.label} ({line.verdict})"
                          for verdict in ("fail", "not-converged")
                          for part, r in report.reports.items() for line in r.lines
                          if line.verdict == verdict]
    return len(ran) + len(problems), report.worst_error(), flagged


def run_recipe(library, cls, entry, dim, dtype, seed=0):
    """Build one case and check it: ``(LayerReport or None, error text)``."""
    with peers.precision(dtype):
        kwargs = entry.factory(dim)(seed)
    options = dict(entry.options)
    options.update({k: kwargs.pop(k) for k in list(kwargs) if k not in (
        "forward", "inverse", "z", "forward_vjp", "inverse_vjp", "params", "functional")})
    return check_layer(library, cls, kwargs.pop("forward"), kwargs.pop("inverse"),
                       kwargs.pop("z"), max_elements=SAMPLE, max_sweeps=SWEEPS,
                       rng=[seed, CHECK_STREAM], **kwargs, **options)


def audit(library, *, dtypes=DTYPES, sizes=SIZES, seed=0, only=None, heavy=False,
          progress=None):
    """Run the oracle over every bijector class ``library`` exports.

    Every class of the library's transform modules (:mod:`refflow.audit.catalogue`) with a
    constructor recipe (:mod:`refflow.audit.recipes`, or added by :func:`register`) is built
    with randomised parameters, at each size and precision, in each variant (options, points
    near and beyond a spline's bound, wide points, near-singular matrices), and checked by
    :func:`refflow.testing.check_layer`: round trips, log-dets vs ``slogdet`` of FD Jacobians,
    forward + inverse log-det, pullbacks vs FD for the inputs and every parameter array
    (float32: against the float64 twin). Classes not built are rows too, ``skipped`` with the
    reason (abstract, not a bijector, a re-export, no recipe, the constructor raised).

    Parameters
    ----------
    library : str
        ``"zuko"``, ``"nflows"``, ``"normflows"``, ``"pyro"``, ``"flowjax"``, ``"distrax"`` or
        ``"tfp"``.
    dtypes : sequence of str
        ``"float64"`` and/or ``"float32"``.
    sizes : sequence of int
        Dimensions to build (a recipe may fix its own).
    seed : int
        Seeds the parameters, the points and the checks' cotangents.
    only : sequence of str, optional
        Class names to audit (the others are left out of the report).
    heavy : bool
        Also run the recipes marked heavy (zuko's bisection-based flows: 1-3 CPU minutes per
        check); without it they are ``skipped`` rows saying so.
    progress : callable, optional
        Called with one line of text per case.

    Returns
    -------
    AuditReport
        ``failures``, ``ok``, ``table()``, ``markdown()``, ``to_json()``.

    Raises
    ------
    ValueError
        An unknown library, dtype, size, or a name of ``only`` that the library does not export.
    refflow.audit.LibraryMissing
        The library is not installed (an ``ImportError``).
    """
    dtypes = tuple(dtypes)
    if not dtypes or any(d not in DTYPES for d in dtypes):
        raise ValueError(f"audit: dtypes must be among {DTYPES}, got {dtypes}")
    sizes = tuple(sizes)
    if not sizes or any(isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 2
                        for s in sizes):
        raise ValueError(f"audit: sizes must be integers >= 2, got {sizes}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"audit: seed must be a non-negative integer, got {seed!r}")
    _, version = import_library(library)
    exported = catalogue(library)
    recipes = {k: list(v) for k, v in RECIPES.get(library, {}).items()}
    for cls, extra in _REGISTERED.get(library, {}).items():
        recipes.setdefault(cls, []).extend(extra)
    listed = {name: (kind, reason) for name, kind, reason in exported}
    for cls in recipes:
        listed.setdefault(cls, ("bijector", ""))
    if only is not None:
        only = [o.strip() for o in only if o.strip()]
        unknown = [o for o in only if o not in listed]
        if unknown:
            raise ValueError(f"audit: {library} exports no class {', '.join(map(repr, unknown))}")
        listed = {k: v for k, v in listed.items() if k in only}
    if library in ("flowjax", "distrax", "tfp"):
        peers.enable_x64()
    command = f"python -m refflow audit {library}"
    if only is not None:
        command += f" --only {','.join(only)}"
    if sizes != SIZES:
        command += f" --sizes {','.join(map(str, sizes))}"
    if dtypes != DTYPES:
        command += f" --dtypes {','.join(dtypes)}"
    if heavy:
        command += " --heavy"
    command += f" --seed {seed}"
    rows = []
    for cls in sorted(listed):
        kind, reason = listed[cls]
        if cls not in recipes:
            if kind == "bijector":
                reason = NO_RECIPE.get(library, {}).get(cls, "no recipe")
            rows.append(Row(library, cls, reason=reason or kind))
            continue
        for entry in recipes[cls]:
            if entry.heavy and not heavy:
                rows.append(Row(library, cls, label=entry.label,
                                reason="heavy (1-3 CPU minutes per check): run with --heavy"))
                continue
            for dim in entry.sizes or sizes:
                for dtype in dtypes:
                    if entry.dtypes is not None and dtype not in entry.dtypes:
                        continue
                    rows.append(_case(library, cls, entry, dim, dtype, seed))
                    if progress is not None:
                        r = rows[-1]
                        progress(f"{cls} [{r.label or 'default'}, dim {dim}, {dtype}]: "
                                 f"{r.verdict} ({r.seconds:.1f} s)")
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return AuditReport(library, version, rows, command, date)


def _case(library, cls, entry, dim, dtype, seed):
    repro = (f"python -m refflow audit {library} --only {cls} --sizes {dim} --dtypes {dtype} "
             f"--seed {seed}  # variant: {entry.label or 'default'}")
    start = time.perf_counter()
    try:
        report = run_recipe(library, cls, entry, dim, dtype, seed)
    except Exception as exc:  # the peer's constructor or the recipe failed: not a verdict
        text = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        return Row(library, cls, label=entry.label, dim=dim, dtype=dtype,
                   reason=f"could not build: {text[:200]}", reproducer=repro,
                   seconds=time.perf_counter() - start)
    checks, worst, flagged = _summary(report)
    return Row(library, cls, label=entry.label, dim=dim, dtype=dtype, verdict=report.verdict,
               checks=checks, worst_error=worst, flagged=flagged,
               reason=entry.why, reproducer=repro, seconds=time.perf_counter() - start,
               report=report)


#: Why a class the catalogue lists as a bijector has no recipe (default: "no recipe").
NO_RECIPE = {
    "normflows": {
        "HamiltonianMonteCarlo": "stochastic (an MCMC step), not a bijector",
        "MetropolisHastings": "stochastic (an MCMC step), not a bijector",
        "Merge": "multiscale: changes the shape (two tensors to one)",
        "Split": "multiscale: changes the shape (one tensor to two)",
        "Squeeze": "image layer: changes the shape",
        "Residual": "wrapper: an i-ResNet block around a network (fixed-point inverse)",
        "GlowBlock": "image layer (convolutions on (C, H, W))",
        "Invertible1x1Conv": "image layer (convolutions on (C, H, W))",
        "PeriodicWrap": "not invertible on R (wraps to a period)",
        "PeriodicShift": "circular domain (a period)",
        "CircularAutoregressiveRationalQuadraticSpline": "circular domain (a period)",
        "CircularCoupledRationalQuadraticSpline": "circular domain (a period)",
    },
    "nflows": {
        "OneByOneConvolution": "image layer (convolutions on (C, H, W))",
        "SqueezeTransform": "image layer: changes the shape",
        "Logit": "domain (0, 1): no recipe with points there yet",
    },
    "zuko": {
        "FreeFormJacobianTransform": "continuous flow (ODE solver): round trips to the "
        "solver's tolerance; no recipe yet",
        "FFJTransform": "continuous flow (ODE solver): round trips to the solver's tolerance; "
        "no recipe yet",
        "CircularShiftTransform": "circular domain (a period)",
    },
}
