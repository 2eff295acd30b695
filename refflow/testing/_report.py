"""Report objects of the oracle: lines with verdicts, a fixed-column table, JSON records."""

import json
import math
import textwrap
from dataclasses import dataclass, field

import numpy as np

#: The four verdicts, in order of severity.
VERDICTS = ("pass", "skipped", "not-converged", "fail")

_NAME_WIDTH = 30    # check column; longer names go on their own line
_NOTE_WIDTH = 72    # notes wrap at this width


@dataclass
class Line:
    """One check: its worst error, the tolerance it was held to, and the verdict.

    ``verdict`` is ``"pass"``, ``"fail"``, ``"not-converged"`` (finite differences could not
    decide: a kink, a steep or noisy region; ``note`` gives the two estimates) or ``"skipped"``
    (``note`` says why). Left ``None``, it is ``"pass"`` when ``error <= tolerance`` and
    ``"fail"`` otherwise (NaN fails).
    """

    label: str
    error: float
    tolerance: float
    row: object = -1
    note: str = ""
    verdict: str = None
    cond: float = None

    def __post_init__(self):
        if self.verdict is None:
            self.verdict = "pass" if self.error <= self.tolerance else "fail"
        if self.verdict not in VERDICTS:
            raise ValueError(f"unknown verdict {self.verdict!r}")

    @property
    def ok(self):
        """True for ``pass`` and ``skipped``."""
        return self.verdict in ("pass", "skipped")


def _fmt_error(value):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if math.isinf(value):
        return "inf"
    return f"{value:.2e}" if value != 0 else "0"


def _fmt_where(row):
    if row is None or (isinstance(row, (int, np.integer)) and row < 0):
        return ""
    if isinstance(row, tuple):
        return "[" + ", ".join(str(int(i)) for i in row) + "]"
    return str(row)


def _worst(verdicts):
    worst = "pass"
    for v in verdicts:
        if VERDICTS.index(v) > VERDICTS.index(worst):
            worst = v
    return worst


def _table(title, where_title, lines, problems):
    verdict = _worst([line.verdict for line in lines] + (["fail"] if problems else []))
    counts = {v: sum(line.verdict == v for line in lines) for v in VERDICTS}
    summary = ", ".join(f"{counts[v]} {v}" for v in ("fail", "not-converged", "skipped") if counts[v])
    head = {"pass": "ok", "skipped": "ok", "not-converged": "NOT CONVERGED", "fail": "FAILED"}[verdict]
    out = [f"{title}: {head}" + (f" ({summary})" if summary else "")]
    out.append(f"  {'check':<{_NAME_WIDTH}}{'error':<10}{'tolerance':<11}{'verdict':<15}"
               f"{where_title:<10}note")
    indent = " " * (2 + _NAME_WIDTH + 10 + 11 + 15 + 10)
    for line in lines:
        name = line.label
        if len(name) > _NAME_WIDTH - 2:
            out.append(f"  {name}")
            name = ""
        verdict_text = "FAIL" if line.verdict == "fail" else line.verdict
        tol = "-" if line.verdict == "skipped" else f"{line.tolerance:.0e}"
        note = line.note
        if line.cond is not None and np.isfinite(line.cond):
            note = f"cond {line.cond:.2g}" + (f"; {note}" if note else "")
        wrapped = textwrap.wrap(note, _NOTE_WIDTH) or [""]
        out.append(f"  {name:<{_NAME_WIDTH}}{_fmt_error(line.error):<10}{tol:<11}"
                   f"{verdict_text:<15}{_fmt_where(line.row):<10}{wrapped[0]}".rstrip())
        out.extend(indent + w for w in wrapped[1:])
    for problem in problems:
        wrapped = textwrap.wrap(problem, _NOTE_WIDTH + 40) or [""]
        out.append(f"  problem: {wrapped[0]}")
        out.extend("           " + w for w in wrapped[1:])
    return "\n".join(out)


def _json_error(value):
    """JSON has no inf or NaN: a non-finite error is written as null (see the verdict)."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


@dataclass
class _Report:
    """Worst errors of a check; ``ok`` when every line passed (or was skipped) and nothing else
    is wrong.

    Attributes
    ----------
    lines : list
        One entry per check: ``label``, ``error``, ``tolerance``, worst ``row`` (or element),
        ``verdict``, ``note``, ``ok``.
    problems : list of str
        Contract violations found on the way (wrong shapes or dtypes, keys, a pullback with side
        effects, a callable that raised). Each makes the report fail.
    """

    lines: list = field(default_factory=list)
    problems: list = field(default_factory=list)
    _title = ""
    _where = "worst"
    _prefix = ""

    @property
    def ok(self):
        return all(line.ok for line in self.lines) and not self.problems

    @property
    def verdict(self):
        """The worst verdict: ``"fail"`` (a problem counts as one), else ``"not-converged"``,
        else ``"pass"`` (all lines skipped: ``"skipped"``)."""
        if self.problems:
            return "fail"
        if self.lines and all(line.verdict == "skipped" for line in self.lines):
            return "skipped"
        return _worst([line.verdict for line in self.lines if line.verdict != "skipped"])

    @property
    def errors(self):
        """``{label: worst error}`` of the checks that ran (skipped ones left out)."""
        return {line.label: line.error for line in self.lines if line.verdict != "skipped"}

    def line(self, label):
        """The line with this label (``KeyError`` if there is none)."""
        for line in self.lines:
            if line.label == label:
                return line
        raise KeyError(label)

    def records(self, library="", cls="", reproducer="", *, details=False, prefix=None):
        """One JSON-able record per check: see :func:`refflow.testing.records`. ``check`` is
        ``"<prefix>: <label>"`` (prefix ``"bijector"`` or ``"vjp"`` unless given)."""
        prefix = self._prefix if prefix is None else prefix
        prefix = f"{prefix}: " if prefix else ""
        out = []
        for line in self.lines:
            record = {"library": library, "class": cls, "check": prefix + line.label,
                      "worst_error": _json_error(line.error), "verdict": line.verdict,
                      "reproducer": reproducer}
            if details:
                record.update(tolerance=line.tolerance, note=line.note, where=_fmt_where(line.row))
            out.append(record)
        for problem in self.problems:
            record = {"library": library, "class": cls, "check": f"{prefix}contract: {problem}",
                      "worst_error": None, "verdict": "fail", "reproducer": reproducer}
            if details:
                record.update(tolerance=None, note=problem, where="")
            out.append(record)
        return out

    def __str__(self):
        return _table(self._title, self._where, self.lines, self.problems)


class BijectorReport(_Report):
    """Worst errors found by :func:`check_bijector`, one line per check."""

    _title = "check_bijector"
    _where = "row"
    _prefix = "bijector"


class VJPReport(_Report):
    """Errors found by :func:`check_vjp`, per gradient (``"input"`` and each parameter key)."""

    _title = "check_vjp"
    _where = "element"
    _prefix = "vjp"


class LayerReport:
    """All checks of one named layer (:func:`check_layer`): a report per part.

    Attributes
    ----------
    library, name, reproducer : str
        What the records carry.
    reports : dict
        ``{"bijector": BijectorReport, "forward_vjp": VJPReport, "inverse_vjp": VJPReport}``
        (the parts that were run).
    """

    def __init__(self, library, name, reports, reproducer=""):
        self.library, self.name, self.reproducer = library, name, reproducer
        self.reports = dict(reports)

    @property
    def ok(self):
        return all(r.ok for r in self.reports.values())

    @property
    def verdict(self):
        verdicts = [r.verdict for r in self.reports.values()]
        if verdicts and all(v == "skipped" for v in verdicts):
            return "skipped"
        return _worst([v for v in verdicts if v != "skipped"])

    def worst_error(self):
        """Largest finite error over every check that ran (``nan`` if none)."""
        values = [line.error for r in self.reports.values() for line in r.lines
                  if line.verdict != "skipped" and line.error is not None and np.isfinite(line.error)]
        return max(values) if values else float("nan")

    def records(self, *, details=False):
        """The records of every part, with ``check`` prefixed by the part (``"forward_vjp: w0"``)."""
        out = []
        for part, report in self.reports.items():
            out.extend(report.records(self.library, self.name, self.reproducer, details=details,
                                      prefix=part))
        return out

    def to_json(self, **kwargs):
        return to_json(self.records(), **kwargs)

    def __str__(self):
        head = f"{self.library} {self.name}: {self.verdict}".strip()
        parts = []
        for part, report in self.reports.items():
            text = str(report).splitlines()
            text[0] = f"{part} ({text[0]})"
            parts.append("\n".join("  " + t for t in text))
        return head + "\n" + "\n".join(parts)


def to_json(items, **kwargs):
    """JSON text of a list of records, reports or layer reports (records concatenated).

    Parameters
    ----------
    items : LayerReport, list of LayerReport or list of dict
    **kwargs
        Passed to ``json.dumps`` (``indent=2`` by default).
    """
    if isinstance(items, LayerReport):
        items = [items]
    records_ = []
    for item in items:
        if isinstance(item, LayerReport):
            records_.extend(item.records())
        elif isinstance(item, dict):
            records_.append(item)
        else:
            raise TypeError(f"to_json: expected records or LayerReport objects, got {type(item).__name__}")
    kwargs.setdefault("indent", 2)
    return json.dumps(records_, allow_nan=False, **kwargs)
