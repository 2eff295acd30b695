"""Measure the stable ranges of ``tests/robustness/test_stress.py`` (``STABLE``).

Run (from the repository root, with the repository on ``PYTHONPATH``)::

    python benchmarks/stable_ranges.py --cases rqs_pyro,iaf_pyro_stable [--seeds 150] [--json f]
    python benchmarks/stable_ranges.py --cases rqs_pyro --verify 1000,2 [--seeds 500]

A stable range is a pair (largest |input|, largest |raw parameter|) inside which both round trips
hold to ``RTOL_ROUND_TRIP`` (1e-10) and the two log-dets are negatives (to the same tolerance), for
every draw, with no error raised and no ``RuntimeWarning``. Every check here is exactly the one of
``test_round_trip_in_stable_range``: the same builder (``_build``: the registry case with every raw
parameter redrawn uniform in [-p, p], or exactly +-p), the same inputs (``_inputs``: 8 rows from
``default_rng([seed, 2])``, bounded domains sampled toward their edges), the same context
(``_context``), the same round trip (``_round_trip``) and the same error scaling (relative to
``max(1, |v|)``, and for MAF / IAF to the terms each coordinate is the sum of: ``_affine_terms``).

Grid mode (default): for every cell of ``P_GRID`` x ``V_GRID`` (a case whose both domains are
bounded intervals has one input column: its domain), ``--seeds`` seeds (0, 1, ...) x {uniform,
exactly +-p} x both directions; per cell the worst round-trip error, the worst log-det error and
the number of draws that raised (a clear ``ValueError`` or a ``RuntimeWarning``). Once a column
(fixed |v|) has been dirty at two successive p, its larger p are skipped (``--full`` runs them).

How an entry is chosen (as the comment above ``STABLE`` says): for each |v| of the grid, the
measured edge is the largest p such that this cell and every smaller cell (smaller or equal |v|
and p) is clean; the entry is one grid step inside that edge, or the edge itself when the worst
error of its rectangle is a factor 5 or more below 1e-10 (the grid's last p included) and neither
cell beside it on the dirty side (next p, next |v|) raised: raises come from overflow, whose tails
an error margin does not measure. The suggested entry is the staircase of those (|v|, p) pairs. Then
``--verify v,p`` checks it over ``--seeds`` further seeds (default 500, numbered from
``VERIFY_SEED0`` so they differ from the grid's) x both parameter kinds x both directions, and
prints the worst errors and the number of raises; an entry is kept only if that is clean.

This is a measurement, not a test (one cell of 150 seeds takes seconds to minutes per case).
"""

import argparse
import json
import os
import sys
import time
import warnings

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from tests.helpers import rel  # noqa: E402
from tests.robustness.test_stress import (  # noqa: E402
    DOMAINS, RTOL_ROUND_TRIP, STABLE, _affine_terms, _build, _context, _inputs, _round_trip)

P_GRID = (0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 8.0, 10.0, 20.0, 50.0)
V_GRID = (1.0, 3.0, 10.0, 30.0, 100.0, 1e3)
#: the entry is the edge itself when its worst error is this far below the tolerance
MARGIN = 5.0
VERIFY_SEED0 = 1_000_000


def v_grid(case_id, v_values=V_GRID):
    """The input column(s) of a case: its domain's half-width when both domains are bounded
    (then ``_inputs`` ignores |v|), else ``v_values``."""
    dz, dx = DOMAINS.get(case_id, (None, None))
    if dz is not None and dx is not None and np.isfinite(dz[1]) and np.isfinite(dx[1]):
        return (float(max(abs(dz[0]), abs(dz[1]), abs(dx[0]), abs(dx[1]))),)
    return tuple(v_values)


def check_draw(case_id, bijector, sample_context, seed, vmax):
    """``(worst round-trip error, worst log-det error, raised)`` of one draw, both directions, as
    ``test_round_trip_in_stable_range`` computes them."""
    rng = np.random.default_rng([seed, 2])
    z, x = _inputs(case_id, bijector, rng, 8, vmax)
    context = _context(sample_context, seed, 8, vmax)
    worst_trip = worst_log_det = 0.0
    for direction, v in (("forward", z), ("inverse", x)):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                trip = _round_trip(bijector, direction, v, context)
        except RuntimeWarning:
            trip = None
        if trip is None:
            return worst_trip, worst_log_det, True
        err, out, log_det, log_det_back = trip
        scale = np.maximum(1.0, np.abs(v))
        err = err * scale / np.maximum(scale, _affine_terms(bijector, direction, v, out, context))
        worst_trip = max(worst_trip, float(np.nan_to_num(err, nan=np.inf).max()))
        log_det_err = rel(-log_det_back, log_det)
        worst_log_det = max(worst_log_det, log_det_err if np.isfinite(log_det_err) else np.inf)
    return worst_trip, worst_log_det, False


def measure(case_id, pmax, vmaxes, seeds):
    """``{vmax: cell}`` for one p: each cell ``{"trip", "log_det", "raised", "draws"}``."""
    cells = {v: {"trip": 0.0, "log_det": 0.0, "raised": 0, "draws": 0} for v in vmaxes}
    for seed in seeds:
        for extreme in (False, True):
            bijector, sample_context = _build(case_id, seed, pmax, extreme)
            for vmax in vmaxes:
                trip, log_det, raised = check_draw(case_id, bijector, sample_context, seed, vmax)
                cell = cells[vmax]
                cell["trip"] = max(cell["trip"], trip)
                cell["log_det"] = max(cell["log_det"], log_det)
                cell["raised"] += int(raised)
                cell["draws"] += 1
    return cells


def clean(cell):
    return (cell is not None and cell["raised"] == 0 and cell["trip"] <= RTOL_ROUND_TRIP
            and cell["log_det"] <= RTOL_ROUND_TRIP)


def grid(case_id, n_seeds, p_values=P_GRID, v_values=V_GRID, full=False, log=None):
    """``{(vmax, p): cell or None (skipped)}`` over the grid ``v_grid(case_id, v_values)`` x
    ``p_values``."""
    vmaxes = v_grid(case_id, v_values)
    result = {}
    dirty_run = {v: 0 for v in vmaxes}
    for p in p_values:
        alive = [v for v in vmaxes if full or dirty_run[v] < 2]
        cells = measure(case_id, p, alive, range(n_seeds)) if alive else {}
        for v in vmaxes:
            result[(v, p)] = cells.get(v)
            if v in cells:
                dirty_run[v] = 0 if clean(cells[v]) else dirty_run[v] + 1
        if log is not None:
            log(f"  p = {p:g}: " + ", ".join(
                f"|v| {v:g}: {_fmt(result[(v, p)])}" for v in vmaxes))
    return result


def suggest(result):
    """The staircase of (|v|, p) pairs chosen from ``grid``'s result as the module docstring
    says, largest |v| first (empty when no cell is clean)."""
    vmaxes = sorted({v for v, _ in result})
    p_values = sorted({p for _, p in result})
    chosen = {}
    for j, v in enumerate(vmaxes):
        edge = None
        for i, p in enumerate(p_values):
            below = [result.get((w, q)) for w in vmaxes[:j + 1] for q in p_values[:i + 1]]
            if all(clean(c) for c in below):
                edge = i
            else:
                break
        if edge is None:
            continue
        worst = max(max(c["trip"], c["log_det"]) for c in (
            result[(w, q)] for w in vmaxes[:j + 1] for q in p_values[:edge + 1]))
        # raises beside the edge (overflow, heavy-tailed): an error margin says nothing of them
        beside = [result.get((v, p_values[edge + 1])) if edge + 1 < len(p_values) else None,
                  result.get((vmaxes[j + 1], p_values[edge])) if j + 1 < len(vmaxes) else None]
        raised = any(c is not None and c["raised"] for c in beside)
        i = edge if worst * MARGIN <= RTOL_ROUND_TRIP and not raised else edge - 1
        if i >= 0:
            chosen[v] = p_values[i]
    pairs = []
    for j, v in enumerate(vmaxes):
        if v not in chosen:
            continue
        nxt = vmaxes[j + 1] if j + 1 < len(vmaxes) else None
        if nxt is None or nxt not in chosen or chosen[nxt] < chosen[v]:
            pairs.append((v, chosen[v]))
    return sorted(pairs, key=lambda pair: -pair[0])


def verify(case_id, vmax, pmax, n_seeds):
    seeds = range(VERIFY_SEED0, VERIFY_SEED0 + n_seeds)
    return measure(case_id, pmax, [vmax], seeds)[vmax]


def _fmt(cell):
    if cell is None:
        return "skipped"
    return (f"trip {cell['trip']:.2g} logdet {cell['log_det']:.2g}"
            + (f" raised {cell['raised']}/{cell['draws']}" if cell["raised"] else "")
            + ("" if clean(cell) else " *"))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", required=True, help="comma-separated registry case ids")
    parser.add_argument("--seeds", type=int, default=None,
                        help="seeds per cell (default 150; 500 with --verify)")
    parser.add_argument("--verify", default=None, metavar="V,P",
                        help="check one range (largest |input|, largest |raw parameter|)")
    parser.add_argument("--full", action="store_true", help="measure every cell (no skipping)")
    parser.add_argument("--p-grid", default=None, help="comma-separated p values (default grid)")
    parser.add_argument("--v-grid", default=None, help="comma-separated |v| values (default grid)")
    parser.add_argument("--json", default=None, help="write the results to this file")
    args = parser.parse_args(argv)
    try:
        p_values = tuple(float(s) for s in args.p_grid.split(",")) if args.p_grid else P_GRID
        v_values = tuple(float(s) for s in args.v_grid.split(",")) if args.v_grid else V_GRID
    except ValueError:
        parser.error("--p-grid / --v-grid take comma-separated numbers")
    if args.seeds is not None and args.seeds < 1:
        parser.error("--seeds must be at least 1")
    cases = [c for c in args.cases.split(",") if c]
    unknown = [c for c in cases if c not in STABLE]
    if unknown:
        parser.error(f"unknown case(s): {', '.join(unknown)}")
    if args.json:
        folder = os.path.dirname(os.path.abspath(args.json))
        if not os.path.isdir(folder):
            parser.error(f"--json: folder {folder} does not exist")
    if args.verify is not None:
        try:
            vmax, pmax = (float(s) for s in args.verify.split(","))
        except ValueError:
            parser.error("--verify takes V,P (two numbers)")
    out = {}
    for case_id in cases:
        start = time.perf_counter()
        if args.verify is not None:
            n = args.seeds or 500
            cell = verify(case_id, vmax, pmax, n)
            verdict = "clean" if clean(cell) else "NOT CLEAN"
            print(f"{case_id} verify ({vmax:g}, {pmax:g}) over {n} seeds: {_fmt(cell)} "
                  f"[{verdict}] ({time.perf_counter() - start:.0f} s)", flush=True)
            out[case_id] = {"verify": [vmax, pmax], "seeds": n, **cell, "clean": clean(cell)}
            continue
        n = args.seeds or 150
        print(f"{case_id} (current {STABLE[case_id]}), {n} seeds per cell:", flush=True)
        result = grid(case_id, n, p_values, v_values, full=args.full,
                      log=lambda s: print(s, flush=True))
        pairs = suggest(result)
        print(f"{case_id}: suggested {pairs} ({time.perf_counter() - start:.0f} s)", flush=True)
        out[case_id] = {"seeds": n, "suggested": pairs, "cells": [
            {"v": v, "p": p, **cell} for (v, p), cell in result.items() if cell is not None]}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return out


if __name__ == "__main__":
    main()
