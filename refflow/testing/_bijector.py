"""``check_bijector``: round trips, log-dets against ``slogdet`` of FD Jacobians, fwd + inv."""

import numpy as np

from . import _fd
from ._common import (
    COND_ULPS, RTOL_FD, RTOL_FLOAT32, RTOL_LOG_DET_SUM, RTOL_ROUND_TRIP,
    RTOL_ROUND_TRIP_FLOAT32, as_points, describe_exception, is_low_precision, rel_rows,
)
from ._report import BijectorReport, Line


def _first(result):
    """The main output of a callable that may return ``(out, log_det, ...)``."""
    out = result[0] if isinstance(result, (tuple, list)) else result
    return np.asarray(out, dtype=np.float64)


def jacobian_fd(f, x, eps=None):
    """Central finite-difference Jacobian of a batched function, per sample.

    Parameters
    ----------
    f : callable
        Maps ``(batch, d_in)`` to ``(batch, d_out)``, or to a tuple whose first element is that
        (so a bijector's ``forward`` can be passed as it is). Rows must be independent.
    x : array_like of shape (batch, d_in)
    eps : float, optional
        Step. Default ``eps_machine^(1/3) * max(1, |x_ij|)`` (about 6e-6 relative), the step that
        balances truncation and rounding error for central differences.

    Returns
    -------
    jac : ndarray of shape (batch, d_out, d_in)
        ``jac[n, i, j] ~ d f_i / d x_j`` at row ``n``.

    Notes
    -----
    One coordinate is perturbed for all rows at once, at steps ``h`` and ``h/2`` combined by
    Richardson extrapolation: ``4 * d_in`` calls of ``f``, always in float64. The steps used are
    the exactly representable differences ``(x + h) - (x - h)``. This is the first pass of
    :func:`check_bijector`, which sweeps the step further only where it disagrees.

    Examples
    --------
    >>> import numpy as np
    >>> jac = jacobian_fd(lambda x: np.sin(x), np.array([[0.0, 1.0]]))
    >>> np.allclose(jac[0], np.diag(np.cos([0.0, 1.0])), atol=1e-9)
    True
    """
    x = as_points(x, "jacobian_fd: x", keep_float32=False)
    return _jacobian(f, x, eps, catch=False)


def _jacobian(f, x, eps, catch):
    h = _fd.steps(x, eps)
    columns = []
    for j in range(x.shape[1]):
        def difference(s, j=j):
            xp, xm = x.copy(), x.copy()
            xp[:, j] += s[:, j]
            xm[:, j] -= s[:, j]
            step = xp[:, j] - xm[:, j]
            try:
                up, down = _first(f(xp)), _first(f(xm))
            except Exception:
                if not catch:
                    raise
                return np.full((x.shape[0], 1), np.nan)
            with np.errstate(all="ignore"):
                return (up - down) / step[:, None]
        with np.errstate(all="ignore"):
            columns.append(_fd.richardson(difference, h))
    if not columns:
        return np.zeros((x.shape[0], 0, 0))
    width = max(c.shape[1] for c in columns)
    columns = [np.broadcast_to(c, (x.shape[0], width)) for c in columns]
    return np.stack(columns, axis=-1)


def _slogdet(jac):
    """``log|det|`` per row; ``-inf`` for a singular matrix, NaN for a non-finite or non-square one."""
    if jac.ndim != 3 or jac.shape[1] != jac.shape[2]:
        return np.full(jac.shape[0], np.nan)
    out = np.full(jac.shape[0], np.nan)
    ok = np.isfinite(jac).all(axis=(1, 2))
    if ok.any():
        with np.errstate(all="ignore"):
            _, logabs = np.linalg.slogdet(jac[ok])
        out[ok] = logabs
    return out


def _inverse_norm(jac):
    """``||J^-1||_inf`` per row (inf when singular or not finite)."""
    out = np.full(jac.shape[0], np.inf)
    if jac.ndim != 3 or jac.shape[1] != jac.shape[2] or jac.shape[1] == 0:
        return out
    for n in range(jac.shape[0]):
        if not np.isfinite(jac[n]).all():
            continue
        try:
            with np.errstate(all="ignore"):
                inv = np.linalg.inv(jac[n])
        except np.linalg.LinAlgError:
            continue
        value = float(np.abs(inv).sum(axis=1).max())
        out[n] = value if np.isfinite(value) else np.inf
    return out


class _Side:
    """One callable's results at some points: output, log-det, or the problem that stopped it."""

    def __init__(self, out=None, log_det=None, failed=None):
        self.out, self.log_det, self.failed = out, log_det, failed
        self.out_f64 = None if out is None else np.asarray(out, dtype=np.float64)


def _log_det_rows(ld, n, d, name, sum_log_det, problems):
    """The per-row log-det from what the callable returned; elementwise ones summed on request."""
    elementwise = (ld.shape == (n, d) and d > 1) or (ld.shape == (d,) and d != n and d > 1)
    if elementwise:
        if not sum_log_det:
            raise ValueError(
                f"check_bijector: {name} returned an elementwise log_det of shape {ld.shape} for "
                f"{n} points of dimension {d}; pass sum_log_det=True to sum it over the last axis "
                f"(event_ndims=1), or return log|det| per point, shape ({n},)")
        return np.broadcast_to(ld.sum(axis=-1), (n,)).astype(np.float64)
    if ld.shape == (n,):
        return ld.astype(np.float64)
    if ld.shape == ():              # one value for every point (a constant Jacobian)
        return np.full(n, float(ld))
    if ld.shape == (n, 1) and d == 1:
        return ld[:, 0].astype(np.float64)
    problems.append(f"{name} returned log_det of shape {ld.shape}, expected ({n},)")
    if ld.size >= n and ld.shape[:1] == (n,):
        return ld.reshape(n, -1)[:, 0].astype(np.float64)
    return np.full(n, np.nan)


def _call(fn, v, name, problems, sum_log_det, check_dtype=True):
    """Run ``fn(v) -> (out, log_det)``; a raised exception becomes a problem, not an error."""
    n, d = v.shape
    try:
        result = fn(v.copy())
    except Exception as exc:           # the layer failed: a finding, reported as a problem
        problems.append(f"{name} raised {describe_exception(exc)}")
        return _Side(failed=f"{name} raised")
    if not (isinstance(result, (tuple, list)) and len(result) >= 2):
        raise ValueError(f"check_bijector: {name} must return (output, log_det)")
    out_raw, ld_raw = np.asarray(result[0]), np.asarray(result[1])
    if check_dtype:
        for what, arr in (("output", out_raw), ("log_det", ld_raw)):
            if arr.dtype.kind == "f" and np.finfo(arr.dtype).eps > np.finfo(v.dtype).eps:
                problems.append(f"{name} returned {what} of dtype {arr.dtype} for {v.dtype} input "
                                f"(precision lost)")
    dtype = np.float32 if v.dtype == np.float32 else np.float64
    out = out_raw.astype(dtype)
    if out.shape != v.shape:
        problems.append(f"{name} returned output of shape {out.shape}, expected {v.shape}")
        out = np.full(v.shape, np.nan, dtype=dtype)
    log_det = _log_det_rows(ld_raw, n, d, name, sum_log_det, problems)
    bad = ~(np.isfinite(out).all(axis=1) & np.isfinite(log_det))
    if bad.any():
        rows = np.flatnonzero(bad)
        shown = ", ".join(str(r) for r in rows[:5]) + (", ..." if len(rows) > 5 else "")
        problems.append(f"{name} returned non-finite values for finite input (rows {shown})")
    return _Side(out, log_det)


def _skipped(label, note):
    return Line(label, float("nan"), float("nan"), -1, note, "skipped")


def _round_trip_line(label, back, start, mid, inv_norm, base_tol, eps, note_extra=""):
    """Round trip ``start -> mid -> back``; tolerance per row scaled by the conditioning.

    The rounding of ``mid`` (``eps |mid|``) moves ``back`` by up to ``||J^-1|| eps |mid|``, with
    ``J^-1`` the Jacobian of the way back: the row's tolerance is ``max(base, COND_ULPS eps
    ||J^-1|| max(1, |mid|) / max(1, |start|))``.
    """
    err = rel_rows(back, start)
    amp = inv_norm * np.maximum(1.0, np.abs(mid).max(axis=1)) / np.maximum(1.0, np.abs(start).max(axis=1))
    tol = np.maximum(base_tol, COND_ULPS * eps * np.where(np.isfinite(amp), amp, 0.0))
    if err.size == 0:
        return Line(label, 0.0, base_tol)
    with np.errstate(all="ignore"):
        ratio = np.where(np.isfinite(err), err / tol, np.inf)
    row = int(np.argmax(ratio))
    note = note_extra
    if not np.isfinite(amp[row]):
        note = "singular FD Jacobian: conditioning unknown" + (f"; {note}" if note else "")
    cond = float(amp[row]) if np.isfinite(amp[row]) else None
    error = float(err[row]) if np.isfinite(err[row]) else float("inf")
    return Line(label, error, float(tol[row]), row, note, cond=cond)


def _refine_rows(f, v, g0, ld, tol, smooth, eps):
    """Sweep every column for the given rows; a verdict, FD log-det and note per row."""
    rows, d = v.shape
    if eps is None:
        h0 = _fd.STEP * np.maximum(np.abs(v), 1.0)
    else:
        h0 = np.full(v.shape, float(eps))
    floor = _fd.EPS * np.abs(g0) + np.finfo(np.float64).tiny
    sweeps = []
    for j in range(d):
        def evaluate(t, j=j):
            w = v.copy()
            w[:, j] = t
            return _first(f(w))
        sweeps.append(_fd.sweep(evaluate, v[:, j], h0[:, j], g0, floor))
    results = []
    for r in range(rows):
        jumps = [(j, s.jump[r]) for j, s in enumerate(sweeps) if s.jump[r] > 0]
        best = np.stack([s.estimate[r] for s in sweeps], axis=-1)
        fd = float(_slogdet(best[None])[0])
        a = float(ld[r])
        t = tol * max(1.0, abs(fd)) if np.isfinite(fd) else tol
        if np.isfinite(fd) and abs(a - fd) <= t:
            results.append(("pass", fd, ""))
            continue
        if jumps:
            j, size = max(jumps, key=lambda p: p[1])
            results.append(("fail", fd, f"discontinuous: the output jumps by {size:.2g} as input "
                                        f"coordinate {j} crosses this point"))
            continue
        kinked = [j for j, s in enumerate(sweeps) if s.kink[r]]
        if kinked:
            left, right = best.copy(), best.copy()
            for j in kinked:
                left[:, j], right[:, j] = sweeps[j].left[r], sweeps[j].right[r]
            lo, hi = (float(_slogdet(m[None])[0]) for m in (left, right))
            slack = t + _fd.SAFETY * max(sweeps[j].kink_noise[r] for j in kinked)
            near = min(abs(a - lo), abs(a - hi)) <= slack
            text = (f"kink in input coordinate {kinked[0]}: one-sided log-dets {lo:.6g} (left) and "
                    f"{hi:.6g} (right), analytic {a:.6g}")
            if near and not smooth:
                results.append(("not-converged", fd, text))
            else:
                results.append(("fail", fd, text + ("" if near else ", matching neither")))
            continue
        spread = 0.0
        for j, s in enumerate(sweeps):
            alt = best.copy()
            alt[:, j] = s.alternative[r]
            other = float(_slogdet(alt[None])[0])
            spread += abs(other - fd) if np.isfinite(other) and np.isfinite(fd) else np.inf
        if fd == -np.inf:
            if np.isfinite(spread) or np.isfinite(a):
                results.append(("fail", fd, f"FD Jacobian singular (slogdet -inf): the output does "
                                            f"not move along some input direction; analytic {a:.6g}"))
            else:
                results.append(("not-converged", fd, "FD Jacobian singular; analytic not finite"))
            continue
        if not np.isfinite(fd):
            results.append(("not-converged", fd, "no finite difference could be evaluated "
                                                 "(domain edge?)"))
            continue
        if abs(a - fd) > t + _fd.SAFETY * spread:
            results.append(("fail", fd, f"FD log-det {fd:.6g} (spread {spread:.1g}) vs analytic {a:.6g}"))
        else:
            quantum = max(float(s.quantum[r]) for s in sweeps)
            why = (f"the output moves in steps of ~{quantum:.1g}, a numerical inverse?" if quantum > 0
                   else "steep or noisy")
            results.append(("not-converged", fd, f"FD log-det not converged ({why}): "
                                                 f"{fd:.6g} +- {spread:.1g}, analytic {a:.6g}"))
    return results


def _log_det_line(label, f, v, side, tol, smooth, eps, twin_note=""):
    """Analytic log-det vs ``slogdet`` of the FD Jacobian; rows that disagree are swept.

    Rows where the callable itself returned non-finite values (already a problem) are left
    out: there is no finite difference to take there."""
    finite = np.isfinite(side.out_f64).all(axis=1) & np.isfinite(side.log_det)
    if not finite.all():
        if not finite.any():
            return Line(label, float("nan"), float("nan"), -1,
                         "the callable returned non-finite values at every point", "skipped"), \
                np.full((len(v), v.shape[1], v.shape[1]), np.nan)
        keep = np.flatnonzero(finite)
        sub = _Side(side.out[keep], side.log_det[keep])
        line, jac_sub = _log_det_line(label, f, v[keep], sub, tol, smooth, eps, twin_note)
        if isinstance(line.row, int) and line.row >= 0:
            line.row = int(keep[line.row])
        jac = np.full((len(v),) + jac_sub.shape[1:], np.nan)
        jac[keep] = jac_sub
        return line, jac
    jac = _jacobian(f, v, eps, catch=True)
    fd = _slogdet(jac)
    ld = side.log_det
    err = rel_rows(ld, fd)
    verdicts = np.array(["pass"] * len(v), dtype=object)
    notes = [""] * len(v)
    bad = np.flatnonzero(~(err <= tol))
    if bad.size:
        for r, (verdict, fd_r, note) in zip(bad, _refine_rows(f, v[bad], side.out_f64[bad],
                                                               ld[bad], tol, smooth, eps)):
            verdicts[r], notes[r] = verdict, note
            if np.isfinite(fd_r) or fd_r == -np.inf:
                fd[r] = fd_r
                err[r] = rel_rows(ld[r:r + 1], fd[r:r + 1])[0]
                if verdict == "pass":
                    err[r] = min(err[r], tol)
    order = ["fail", "not-converged", "pass"]
    rank = np.array([order.index(v) for v in verdicts])
    worst_rank = rank.min() if rank.size else 2
    candidates = np.flatnonzero(rank == worst_rank)
    row = int(candidates[np.argmax(err[candidates])]) if candidates.size else -1
    if row < 0:
        return Line(label, 0.0, tol), jac
    note = notes[row]
    if not note and fd[row] == -np.inf:
        note = "FD slogdet -inf: the FD Jacobian is singular"
    if twin_note:
        note = twin_note + (f"; {note}" if note else "")
    cond = None
    if np.isfinite(jac[row]).all() and jac.shape[1] == jac.shape[2] and jac.shape[1] > 0:
        with np.errstate(all="ignore"):
            c = float(np.linalg.cond(jac[row]))
        cond = c if np.isfinite(c) else None
    error = float(err[row]) if np.isfinite(err[row]) else float("inf")
    return Line(label, error, tol, row, note, str(verdicts[row]), cond), jac


def _twin_line(label, side32, side64, tol):
    if side32.out is None or side64.out is None:
        return _skipped(label, "a callable raised")
    err = np.maximum(rel_rows(side32.out, side64.out), rel_rows(side32.log_det, side64.log_det))
    row = int(np.argmax(err)) if err.size else -1
    error = float(err[row]) if row >= 0 and np.isfinite(err[row]) else (0.0 if row < 0 else float("inf"))
    return Line(label, error, tol, row)


def check_bijector(forward, inverse, z, *, x=None, eps=None, rtol_round_trip=None,
                   rtol_log_det=RTOL_FD, rtol_log_det_sum=None, sum_log_det=False,
                   reference=None, rtol_float32=RTOL_FLOAT32, smooth=False):
    """Check a bijector given as two callables: round trips and log-dets.

    Parameters
    ----------
    forward : callable
        ``forward(z) -> (x, log_det)`` on ``(batch, dim)`` arrays, ``log_det = log|det dx/dz|``
        of shape ``(batch,)`` (see ``sum_log_det`` for elementwise ones).
    inverse : callable or None
        ``inverse(x) -> (z, log_det)``, ``log_det = log|det dz/dx|``. ``None`` for a layer
        without an inverse (planar, radial, Sylvester, BNAF): the log-det of ``forward`` is still
        checked, the round trips and the inverse's checks are ``skipped``.
    z : array_like of shape (batch, dim)
        Points in the domain of ``forward``: float64, or float32 to check a float32 layer (then
        give ``reference``).
    x : array_like of shape (batch, dim), optional
        Points in the domain of ``inverse``; default ``forward(z)``.
    eps : float, optional
        Fixed finite-difference step; default relative steps (see :func:`jacobian_fd`).
    rtol_round_trip : float, optional
        Base tolerance of the round trips, raised per row by its conditioning (see Notes).
        Default :data:`RTOL_ROUND_TRIP` (float64) or :data:`RTOL_ROUND_TRIP_FLOAT32`.
    rtol_log_det : float
        Log-dets against ``slogdet`` of the FD Jacobian; default :data:`RTOL_FD`.
    rtol_log_det_sum : float, optional
        ``forward log_det + inverse log_det`` at matching points; default
        :data:`RTOL_LOG_DET_SUM` (float64) or :data:`RTOL_ROUND_TRIP_FLOAT32`.
    sum_log_det : bool
        Sum an elementwise log-det (shape ``(batch, dim)``, or ``(dim,)`` for one that does not
        depend on the point, as Pyro's BatchNorm returns) over its last axis, as
        ``event_ndims=1`` does. Without it such a log-det is refused with a ``ValueError``.
    reference : tuple of callables, optional
        ``(forward64, inverse64)``: a float64 twin of a float32 layer (the same weights). The
        float32 outputs and log-dets are compared with the twin's (``rtol_float32``), the
        finite-difference checks run on the twin, the round trips in float32. Without it a
        float32 layer gets no finite-difference checks (``skipped``): FD never runs in float32.
    rtol_float32 : float
        float32 against the twin; default :data:`RTOL_FLOAT32`.
    smooth : bool
        Claim that the map is continuously differentiable at the points: a kink found there
        (one-sided derivatives that differ) is then a failure rather than ``not-converged``.

    Returns
    -------
    BijectorReport
        ``ok``, ``verdict``, the worst error of each check and the row where it occurred;
        ``str(report)`` is a readable table, ``report.records(library, cls)`` JSON records.

    Raises
    ------
    ValueError
        Bad points, a callable that does not return ``(output, log_det)``, or an elementwise
        log-det without ``sum_log_det``. A callable that raises is not an error of the check:
        it is reported as a problem (the report fails).

    Notes
    -----
    Checks, each as a relative error ``|a - b| / max(1, |b|)`` (worst row):

    - ``inverse(forward(z)) == z`` and ``forward(inverse(x)) == x``. A row's tolerance is
      ``max(rtol_round_trip, COND_ULPS eps ||J^-1||_inf max(1, |x|) / max(1, |z|))``: the
      rounding of the intermediate point carried back by the inverse's Jacobian (from the FD
      Jacobians); the worst row's factor is printed as ``cond``;
    - forward ``log_det(z)`` vs ``log|det J|`` of the FD Jacobian of ``forward`` at ``z``;
    - inverse ``log_det(x)`` vs the same for ``inverse`` at ``x``;
    - ``forward log_det(z) + inverse log_det(forward(z)) == 0``.

    Rows whose log-det disagrees with the first-pass FD Jacobian are re-examined with a sweep
    of steps (see ``refflow.testing._fd``): the verdict is ``fail`` only when the sweep confirms
    the disagreement, ``not-converged`` (with both estimates, or the one-sided log-dets at a
    kink) when finite differences cannot decide. A discontinuity is a failure. Callables get a
    copy of the points and must treat rows independently. Outputs of lower precision than the
    input (float32 from float64) are a problem.
    """
    z = as_points(z, "check_bijector: z")
    low = is_low_precision(z.dtype)
    eps_dtype = float(np.finfo(z.dtype).eps)
    if rtol_round_trip is None:
        rtol_round_trip = RTOL_ROUND_TRIP_FLOAT32 if low else RTOL_ROUND_TRIP
    if rtol_log_det_sum is None:
        rtol_log_det_sum = RTOL_ROUND_TRIP_FLOAT32 if low else RTOL_LOG_DET_SUM
    if reference is not None:
        if not (isinstance(reference, (tuple, list)) and len(reference) == 2 and callable(reference[0])):
            raise ValueError("check_bijector: reference must be (forward64, inverse64)")
        if not low:
            raise ValueError("check_bijector: reference is for float32 points (give z as float32)")
    problems = []

    side_f = _call(forward, z, "forward", problems, sum_log_det)
    lines = []
    labels = ["round trip z -> x -> z", "round trip x -> z -> x", "log_det forward vs FD",
              "log_det inverse vs FD", "log_det fwd + inv"]
    if side_f.failed:
        return BijectorReport([_skipped(lb, "forward raised") for lb in labels], problems)
    if x is None:
        x = side_f.out
    else:
        x = as_points(x, "check_bijector: x").astype(z.dtype)
    side_rt = side_i = side_back = None
    if inverse is not None:
        side_rt = _call(inverse, side_f.out, "inverse", problems, sum_log_det)
        side_i = _call(inverse, x, "inverse", problems, sum_log_det)
        if side_i.out is not None:
            side_back = _call(forward, side_i.out, "forward", problems, sum_log_det)

    # float64 callables for finite differences: the layer itself, or its twin
    fwd64 = forward if not low else (reference[0] if reference is not None else None)
    inv64 = inverse if not low else (reference[1] if reference is not None else None)
    z64, x64 = z.astype(np.float64), x.astype(np.float64)
    twin_lines = []
    twin_note = ""
    if low and reference is not None:
        twin_problems = []
        tf = _call(fwd64, z64, "float64 twin forward", twin_problems, sum_log_det)
        twin_lines.append(_twin_line("forward vs float64 twin", side_f, tf, rtol_float32))
        side_f64 = tf
        if inverse is not None and inv64 is not None:
            ti = _call(inv64, x64, "float64 twin inverse", twin_problems, sum_log_det)
            if side_i.out is not None:
                twin_lines.append(_twin_line("inverse vs float64 twin", side_i, ti, rtol_float32))
            side_i64 = ti
        else:
            side_i64 = None
        problems.extend(twin_problems)
        twin_note = "float64 twin"
    else:
        side_f64 = side_f if not low else None
        side_i64 = side_i if not low else None

    # log-dets vs FD (first pass, then sweeps where they disagree)
    jac_f = jac_i = None
    if fwd64 is None:
        lines_fd = [_skipped("log_det forward vs FD",
                             "float32: finite differences need float64; pass reference=")]
    elif side_f64 is None or side_f64.out is None:
        lines_fd = [_skipped("log_det forward vs FD", "float64 twin raised")]
    else:
        line, jac_f = _log_det_line("log_det forward vs FD", fwd64, z64, side_f64, rtol_log_det,
                                    smooth, eps, twin_note)
        lines_fd = [line]
    if inverse is None:
        lines_fd.append(_skipped("log_det inverse vs FD", "no inverse"))
    elif inv64 is None:
        lines_fd.append(_skipped("log_det inverse vs FD",
                                 "float32: finite differences need float64; pass reference="))
    elif side_i64 is None or side_i64.out is None:
        lines_fd.append(_skipped("log_det inverse vs FD", "inverse raised"))
    else:
        line, jac_i = _log_det_line("log_det inverse vs FD", inv64, x64, side_i64, rtol_log_det,
                                    smooth, eps, twin_note)
        lines_fd.append(line)

    # round trips, with the conditioning of the way back from the FD Jacobians
    if inverse is None:
        lines.append(_skipped("round trip z -> x -> z", "no inverse"))
        lines.append(_skipped("round trip x -> z -> x", "no inverse"))
    else:
        cond_note = "" if not low or reference is not None else "conditioning unknown (float32, no reference)"
        if side_rt.out is None:
            lines.append(_skipped("round trip z -> x -> z", "inverse raised"))
        else:
            norm = _inverse_norm(jac_f) if jac_f is not None else np.zeros(len(z))
            lines.append(_round_trip_line("round trip z -> x -> z", side_rt.out, z, side_f.out,
                                          norm, rtol_round_trip, eps_dtype, cond_note))
        if side_back is None or side_back.out is None:
            lines.append(_skipped("round trip x -> z -> x", "inverse or forward raised"))
        else:
            norm = _inverse_norm(jac_i) if jac_i is not None else np.zeros(len(x))
            lines.append(_round_trip_line("round trip x -> z -> x", side_back.out, x, side_i.out,
                                          norm, rtol_round_trip, eps_dtype, cond_note))
    lines.extend(lines_fd)
    if inverse is None:
        lines.append(_skipped("log_det fwd + inv", "no inverse"))
    elif side_rt.out is None:
        lines.append(_skipped("log_det fwd + inv", "inverse raised"))
    else:
        ld_f, ld_i = side_f.log_det.astype(np.float64), side_rt.log_det.astype(np.float64)
        with np.errstate(all="ignore"):
            err = np.abs(ld_f + ld_i) / np.maximum(1.0, np.abs(ld_f))
        err = np.where(np.isnan(err), np.inf, err)
        row = int(np.argmax(err)) if err.size else -1
        error = float(err[row]) if row >= 0 else 0.0
        lines.append(Line("log_det fwd + inv", error if np.isfinite(error) else float("inf"),
                           rtol_log_det_sum, row))
    lines.extend(twin_lines)
    return BijectorReport(lines, list(dict.fromkeys(problems)))


def assert_bijector(forward, inverse, z, **kwargs):
    """:func:`check_bijector`, raising ``AssertionError`` with the report unless every check
    passed (``not-converged`` counts as not passed).

    Returns the report when all checks pass.
    """
    report = check_bijector(forward, inverse, z, **kwargs)
    if not report.ok:
        raise AssertionError("\n" + str(report))
    return report
