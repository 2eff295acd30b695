"""The oracle over the peers' transforms: pass (or not-converged, with its reason) where the peer
is right, fail on the known defects, and no false alarm.

Each case skips when its library is not installed. The bisection-based zuko flows (``NAF``,
``UNAF``, ``SOSPF``, ``BPF``) take 1-3 minutes each and run only with ``REFFLOW_HEAVY=1``
(select them with ``-k heavy``). Cases, expected verdicts and reasons: ``tests/oracle_survey.py``;
``python -m tests.oracle_survey`` prints the table.
"""

import os

import pytest

from .oracle_survey import run, survey

MODULES = {"zuko": "zuko", "nflows": "nflows", "normflows": "normflows", "pyro": "pyro",
           "flowjax": "flowjax", "distrax": "distrax"}
CASES = survey()
HEAVY = os.environ.get("REFFLOW_HEAVY") == "1"


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny tensors: a second intra-op thread only adds spin-waits (10-1000x slower on a busy
    machine). Restored afterwards; nothing to do without torch (the JAX cases still run)."""
    try:
        import torch
    except ImportError:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _check(case):
    if case.library not in ("flowjax", "distrax"):
        pytest.importorskip("torch")
    pytest.importorskip(MODULES[case.library])
    if case.library in ("flowjax", "distrax"):
        pytest.importorskip("jax")
    report = run(case)
    detail = f"{case.id}: expected {case.expect}, got {report.verdict}\n{report}"
    assert report.verdict == case.expect, detail
    # every line that did not pass says why; nothing failed without a contract problem or a line
    for part, r in report.reports.items():
        for line in r.lines:
            if line.verdict in ("not-converged", "skipped", "fail"):
                assert line.note or line.verdict == "fail", detail
    if case.expect != "fail":
        assert not any(r.problems for r in report.reports.values()), detail
    else:
        assert case.reason, f"{case.id}: a failure in the survey must name its defect"


@pytest.mark.parametrize("case", [c for c in CASES if not c.heavy], ids=lambda c: c.id)
def test_survey(case):
    _check(case)


@pytest.mark.parametrize("case", [c for c in CASES if c.heavy], ids=lambda c: c.id)
def test_survey_heavy(case):
    if not HEAVY:
        pytest.skip("bisection-based zuko flow: 1-3 minutes; set REFFLOW_HEAVY=1")
    _check(case)


def test_survey_is_broad():
    libraries = {c.library for c in CASES}
    assert libraries == set(MODULES)
    assert len(CASES) >= 40
    assert sum(c.expect == "fail" for c in CASES) >= 6
