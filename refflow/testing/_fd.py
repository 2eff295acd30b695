"""Finite differences for the oracle: the fast first pass and the step sweep behind verdicts.

First pass
    One central difference at ``h`` and ``h/2`` per coordinate, Richardson-extrapolated:
    ``R(h) = (4 D(h/2) - D(h)) / 3``, truncation error O(h^4). ``h = eps^(1/3) max(|v|, s)``
    with ``s`` a typical magnitude (1 for inputs, the array's RMS for a parameter array).
    This settles almost every element: an analytic value that agrees with ``R(h)`` to the
    tolerance is not re-examined.

Sweep (only for coordinates where the first pass disagrees)
    Central and one-sided differences at ``LADDER_UP + LADDER_DOWN + 1`` steps
    ``h_k = h 2^(LADDER_UP - k)`` (from ~6e-3 down to ~6e-12 relative), Richardson between
    neighbours, and Ridders' rule: the best estimate is the one that changes least from its
    neighbours, and that change is its *spread*. Levels where no output moves by more than
    ``RESOLVED`` rounding units are ignored (rounding noise, or the steps of a piecewise-constant
    numerical inverse). The same evaluations show

    - a **jump**: ``|g(t + h) - g(t - h)|`` stays the same over the eight smallest steps (a
      ``2^8`` range) instead of shrinking with ``h``: the function is discontinuous at ``t``;
    - a **kink**: the one-sided estimates ``2 P(h/2) - P(h)`` (``P(h) = (g(t + h) - g(t)) / h``)
      from the right and from the left differ by the same amount at the smallest resolved steps:
      the derivative jumps at ``t`` (LeakyReLU at 0, a spline knot).

The classification of a coordinate (``classify``) uses these: within tolerance of the best
estimate is a pass; a jump is a failure (a flow must be continuous); at a kink, an analytic value
equal to one of the one-sided derivatives is "not converged (kink)" unless the caller declared
the map smooth; a disagreement larger than the tolerance plus ``SAFETY`` spreads (the best
estimate's spread floored by the finer levels' ``spread x step / h``, which is ~q/h under a
staircase of quantum q) is a failure unless the estimates depend on the step: the coarsest
witness, a coarser level that differs from the best estimate or beyond which the levels show a
staircase (spreads above both ends' by ``AGREE``, ``spread x step`` of at least ``RESOLVED``
rounding units), agrees with the analytic value within ``AGREE`` of its spread, or within
``SAFETY`` of its staircase noise (the median ``spread x step`` of the levels between, over
its step); anything else is "not converged" with the two estimates.
"""

import numpy as np

EPS = np.finfo(np.float64).eps
#: First-pass step relative to ``max(|v|, typical)``: balances truncation and rounding error of
#: one central difference (about 6e-6).
STEP = EPS ** (1.0 / 3.0)
#: The sweep's largest step is ``2^LADDER_UP`` first-pass steps (~6e-3 relative): big enough to
#: see through the ~1e-6 resolution of a bisection inverse.
LADDER_UP = 10
#: ... and its smallest ``2^-LADDER_DOWN`` (~6e-12 relative), where float64 rounding takes over.
LADDER_DOWN = 20
#: A sweep level counts only if some output moves by more than this many rounding units.
RESOLVED = 100.0
#: A disagreement is a failure only when it exceeds the tolerance by ``SAFETY`` spreads of the
#: finite-difference estimate (the spread is itself only an estimate of the FD error).
SAFETY = 10.0
#: A coarse step agrees with the analytic value when within this many of its spreads.
AGREE = 3.0
#: A hidden staircase's quantum is measured by the median of ``spread x step`` over the levels
#: between a coarse level and the best one: fewer than this many levels give no median.
STAIR_LEVELS = 3
#: A jump: the difference across the point varies by less than this fraction over the eight
#: smallest steps ...
JUMP_FLAT = 0.1
#: ... and is at least this many rounding units.
JUMP_MIN = 1e4
#: A kink: the one-sided estimates differ by at least this many times their rounding noise ...
KINK_MIN = 100.0
#: ... by an amount that varies by less than this factor over the smallest resolved levels.
KINK_FLAT = 1.5


def richardson(difference, h):
    """``(4 D(h/2) - D(h)) / 3`` for ``D(s) = difference(s)``, a central difference at step
    ``s``: the O(s^2) error terms cancel, leaving O(s^4)."""
    return (4.0 * difference(0.5 * h) - difference(h)) / 3.0


def steps(v, eps=None, typical=1.0):
    """First-pass steps ``eps^(1/3) max(|v|, typical)``, or the fixed step ``eps``."""
    v = np.asarray(v, dtype=np.float64)
    if eps is not None:
        return np.full(v.shape, float(eps))
    return STEP * np.maximum(np.abs(v), typical)


def typical_scale(values):
    """RMS of a parameter array (its typical magnitude), or 1 when it is all zeros."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return 1.0
    rms = float(np.sqrt(np.mean(np.square(values))))
    return rms if np.isfinite(rms) and rms > 0 else 1.0


def _norm(a):
    """Max-abs over the last axis (one number per row)."""
    return np.max(np.abs(a), axis=-1) if a.shape[-1] else np.zeros(a.shape[:-1])


class Sweep:
    """What the step sweep found for each row: best estimate, its spread, jump and kink.

    Attributes (one entry per row)
    ----------
    estimate, alternative : ndarray of shape (rows, m)
        Ridders' best Richardson estimate and its neighbour (the second estimate reported).
    step, alt_step : ndarray of shape (rows,)
        The (larger) steps of the two estimates.
    spread : ndarray of shape (rows,)
        ``max |estimate - neighbour|``; inf when no two neighbouring levels were resolved.
    jump : ndarray of shape (rows,)
        Size ``max |g(t + h) - g(t - h)|`` of a discontinuity at the point, 0 if none.
    kink : ndarray of bool, shape (rows,)
        The one-sided derivatives differ at the point.
    left, right : ndarray of shape (rows, m)
        One-sided estimates (meaningful where ``kink``).
    kink_noise : ndarray of shape (rows,)
        Rounding noise of the one-sided estimates at the level they were read.
    """


def sweep(evaluate, t0, h0, g0, floor):
    """Run the step sweep along one coordinate for several independent rows.

    Parameters
    ----------
    evaluate : callable
        ``evaluate(t)`` with ``t`` of shape ``(rows,)`` returns ``(rows, m)`` values, the rows
        of the function with the coordinate set to ``t``; NaN (or a raised exception) marks an
        invalid evaluation (outside the domain).
    t0, h0 : ndarray of shape (rows,)
        The point's coordinate and the first-pass step.
    g0 : ndarray of shape (rows, m)
        The function at ``t0``.
    floor : ndarray of shape (rows, m) or (rows, 1)
        Rounding unit of each output (``eps |g|``, or ``eps sum |c out|`` for a projection).

    Returns
    -------
    Sweep
    """
    t0 = np.asarray(t0, dtype=np.float64)
    h0 = np.asarray(h0, dtype=np.float64)
    rows = t0.shape[0]
    n_levels = LADDER_UP + LADDER_DOWN + 1
    scale = 2.0 ** (LADDER_UP - np.arange(n_levels))
    floor = np.maximum(np.broadcast_to(floor, g0.shape), np.finfo(np.float64).tiny)

    def call(t):
        try:
            with np.errstate(all="ignore"):
                out = np.asarray(evaluate(t), dtype=np.float64).reshape(rows, -1)
        except Exception:       # outside the domain: this level is unusable for every row
            return np.full(g0.shape, np.nan)
        return np.where(np.isfinite(out).all(axis=1, keepdims=True), out, np.nan)

    m = g0.shape[1]
    gp = np.empty((n_levels, rows, m))
    gm = np.empty((n_levels, rows, m))
    hp = np.empty((n_levels, rows))
    hm = np.empty((n_levels, rows))
    for k in range(n_levels):
        h = h0 * scale[k]
        tp, tm = t0 + h, t0 - h
        hp[k], hm[k] = tp - t0, t0 - tm           # the representable steps actually taken
        gp[k], gm[k] = call(tp), call(tm)

    with np.errstate(all="ignore"):
        delta = gp - gm
        valid = np.isfinite(delta).all(axis=2) & (hp > 0) & (hm > 0)
        resolved = valid & (np.max(np.abs(delta) / floor, axis=2) > RESOLVED)
        central = delta / (hp + hm)[..., None]
        right = (gp - g0) / hp[..., None]
        left = (g0 - gm) / hm[..., None]
        # Richardson between level k and k + 1 (half the step)
        rich = (4.0 * central[1:] - central[:-1]) / 3.0
        rich_ok = resolved[1:] & resolved[:-1]
        right_r = 2.0 * right[1:] - right[:-1]
        left_r = 2.0 * left[1:] - left[:-1]

    # A quantized function (a bisection inverse, float32 inside): some finer step leaves every
    # output bitwise unchanged while coarser ones move it. Its quantum q (the smallest nonzero
    # move seen) limits each central difference to ~q / h, whatever Ridders' rule says: steady
    # sawtooth errors can agree between neighbouring levels.
    moved = _norm(np.where(valid[..., None], delta, 0.0))          # (n_levels, rows)
    frozen = (valid & (moved == 0)).any(axis=0)
    quantum = np.where(frozen, np.min(np.where(moved > 0, moved, np.inf), axis=0), 0.0)
    quantum = np.where(np.isfinite(quantum), quantum, 0.0)
    out_quantum = quantum

    n_rich = n_levels - 1
    spread_k = np.full((n_rich, rows), np.inf)
    for k in range(n_rich):
        diffs = []
        for j in (k - 1, k + 1):
            if 0 <= j < n_rich:
                d = np.where(rich_ok[k] & rich_ok[j], _norm(rich[k] - rich[j]), np.inf)
                diffs.append(d)
        worst = np.max(np.where(np.isinf(diffs), -np.inf, diffs), axis=0)   # max of finite ones
        any_finite = np.isfinite(diffs).any(axis=0)
        worst = np.maximum(worst, 3.0 * quantum / (h0 * scale[k + 1]))   # Richardson: 3x noise
        spread_k[k] = np.where(rich_ok[k] & any_finite, worst, np.inf)

    out = Sweep()
    out.quantum = out_quantum
    out.unit = np.max(floor, axis=1)                         # a rounding unit per row
    out.levels = rich                                        # (n_rich, rows, m)
    out.level_spread = spread_k                              # (n_rich, rows)
    out.level_steps = h0[None] * scale[:-1, None]            # (n_rich, rows)
    # no step, up to the largest, moved any output: the function is flat in this coordinate
    out.flat = valid.any(axis=0) & ~(valid & (moved > 0)).any(axis=0)
    best = np.argmin(spread_k, axis=0)                       # (rows,)
    idx = np.arange(rows)
    out.best = best
    out.estimate = rich[best, idx]
    out.spread = spread_k[best, idx]
    out.step = h0 * scale[best]
    # the neighbour reported beside the best estimate: the finer one when it was resolved
    finer = np.minimum(best + 1, n_rich - 1)
    coarser = np.maximum(best - 1, 0)
    use_finer = rich_ok[finer, idx] & (finer != best)
    nb = np.where(use_finer, finer, coarser)
    out.alternative = rich[nb, idx]
    out.alt_step = h0 * scale[nb]
    none = ~np.isfinite(out.spread)
    if none.any():          # nothing resolved: report the first-pass level (k = LADDER_UP)
        k0 = LADDER_UP
        out.estimate[none] = rich[k0, idx][none]
        out.alternative[none] = rich[k0 + 1, idx][none]
        out.step[none] = h0[none]
        out.alt_step[none] = h0[none] / 2

    # jump: the difference across t does not shrink over the eight smallest steps
    tail = slice(n_levels - 8, n_levels)
    d_tail = delta[tail]                                      # (8, rows, m)
    last = d_tail[-1]
    flat = _norm(d_tail - last[None]) <= JUMP_FLAT * _norm(last)[None]
    big = np.max(np.abs(d_tail) / floor[None], axis=2) >= JUMP_MIN
    jump_ok = (valid[tail] & flat & big).all(axis=0)
    out.jump = np.where(jump_ok, _norm(last), 0.0)

    # kink: the one-sided estimates disagree by an amount that does not shrink with the step
    out.kink = np.zeros(rows, dtype=bool)
    out.left = out.estimate.copy()
    out.right = out.estimate.copy()
    out.kink_noise = np.zeros(rows)
    gap = _norm(right_r - left_r)                             # (n_rich, rows)
    # one-sided Richardson 2 P(h/2) - P(h): about 5 rounding units (or quanta) over h/2
    noise = (20.0 * np.max(floor, axis=1)[None] + 10.0 * quantum[None]) / (h0[None] * scale[1:, None])
    for r in range(rows):
        levels = [k for k in range(n_rich) if rich_ok[k, r] and np.isfinite(gap[k, r])]
        above = [k for k in levels if gap[k, r] > KINK_MIN * noise[k, r]]
        if len(above) < 3:
            continue
        smallest = above[-3:]
        values = gap[smallest, r]
        if not (values.max() <= KINK_FLAT * values.min() and smallest[-1] - smallest[0] >= 2):
            continue
        # at a kink the gap persists at every finer step, down to where noise hides it; beside
        # a kink (at a distance delta) it vanishes once the step is below delta
        size = float(np.median(values))
        finer = [k for k in levels if k > smallest[-1]]
        if all(gap[k, r] >= 0.5 * size or noise[k, r] >= 0.1 * size for k in finer):
            k = smallest[-1]
            out.kink[r] = True
            out.left[r], out.right[r] = left_r[k, r], right_r[k, r]
            out.kink_noise[r] = noise[k, r]
    return out


def classify(analytic, sw, r, tol, smooth=False):
    """Verdict for one scalar of row ``r`` of a sweep (``m == 1``).

    Returns ``(verdict, estimate, note)`` with verdict ``"pass"``, ``"fail"`` or
    ``"not-converged"``.
    """
    est = float(sw.estimate[r, 0])
    alt = float(sw.alternative[r, 0])
    spread = float(sw.spread[r])
    a = float(analytic)
    if np.isfinite(est) and abs(a - est) <= tol:
        return "pass", est, ""
    if sw.flat[r]:
        return "fail", 0.0, (f"no step (from {sw.step[r] * 2.0 ** -LADDER_DOWN:.1g} to "
                             f"{sw.step[r] * 2.0 ** LADDER_UP:.1g}) changes the output, "
                             f"analytic {a:.6g}")
    if sw.jump[r] > 0:
        # The projection mixes outputs and log-dets: a map with a kink (LeakyReLU at 0) has a
        # log-det that jumps there by design. Only a map claimed smooth must not jump;
        # check_bijector tells a jump of the map itself (always a failure) from one of its
        # log-det.
        return ("fail" if smooth else "not-converged"), est, (
            f"discontinuous: the value jumps by {sw.jump[r]:.2g} at this point (analytic {a:.6g};"
            f" a jump of the log-det at a kink, or of the map)")
    if sw.kink[r]:
        lo, hi = float(sw.left[r, 0]), float(sw.right[r, 0])
        near = min(abs(a - lo), abs(a - hi)) <= tol + SAFETY * sw.kink_noise[r]
        text = f"kink: one-sided derivatives {lo:.6g} (left) and {hi:.6g} (right), analytic {a:.6g}"
        if near and not smooth:
            return "not-converged", est, text
        return "fail", est, text + ("" if near else ", matching neither")
    if not np.isfinite(est):
        return "not-converged", est, "no finite difference could be evaluated (domain edge?)"
    # The best estimate's spread compares it with its neighbours only. Under a staircase
    # (quantum q) a level's error is ~q/h, and the finer levels measure q: their spreads are
    # ~q/h_j. So the best estimate is uncertain by at least max_j(s_j h_j) / h over the finer
    # levels (for a smooth map that is its truncation or rounding error, no more than spread).
    best = int(sw.best[r])
    finer = [float(sw.level_spread[j, r] * sw.level_steps[j, r])
             for j in range(best + 1, sw.levels.shape[0]) if np.isfinite(sw.level_spread[j, r])]
    if finer:
        spread = max(spread, max(finer) / float(sw.step[r]))
    if abs(a - est) > tol + SAFETY * spread:
        # A failure needs the trustworthy steps to contradict the analytic value. The estimates
        # depend on the step when a smooth term sits on a piecewise-constant one (a bisection
        # inverse's staircase, quantum q): fine steps do not cross the stairs and see the
        # smooth partial derivative alone (a precise but wrong best estimate), coarse ones see
        # the whole derivative with an error ~q/h. A coarser level k is a witness when it
        # differs from the best estimate by SAFETY of both spreads and is precise enough to
        # contradict it (SAFETY of its spread fit in the disagreement with the analytic
        # value), or when the levels between it and the best one show a staircase: spreads
        # that exceed both ends' by AGREE (the estimates swing through the stairs), with
        # s_j ~ q/h_j for a quantum q of more than RESOLVED rounding units (finer levels swing
        # through rounding noise, q ~ eps |S|). Those spreads measure q, and
        # the witness's noise is at least median(s_j h_j) / h_k (its own spread, a comparison
        # with its neighbours, can miss an error of that size). Only the coarsest witness
        # decides, the most accurate under a staircase (error ~q/h; trying every level would
        # let a noisy one agree by chance): it agrees within AGREE of its noise, or, for a
        # staircase, does not contradict the analytic value by SAFETY of it; otherwise the
        # failure stands.
        witness = None
        for k in range(best):
            s_k = float(sw.level_spread[k, r])
            if not np.isfinite(s_k):
                continue
            between = [j for j in range(k + 1, best) if np.isfinite(sw.level_spread[j, r])]
            quantum = (float(np.median([sw.level_spread[j, r] * sw.level_steps[j, r]
                                        for j in between])) if between else 0.0)
            stair = (len(between) >= STAIR_LEVELS and quantum > RESOLVED * sw.unit[r]
                     and max(sw.level_spread[j, r] for j in between) > AGREE * max(s_k, spread))
            distinct = abs(float(sw.levels[k, r, 0]) - est) > SAFETY * max(s_k, spread)
            if not (stair or (distinct and SAFETY * s_k < abs(a - est))):
                continue
            noise = max(s_k, quantum / float(sw.level_steps[k, r])) if stair else s_k
            witness = (k, noise, stair)
            break
        if witness is not None:
            k, noise, stair = witness
            r_k = float(sw.levels[k, r, 0])
            if abs(a - r_k) <= tol + (SAFETY if stair else AGREE) * noise:
                why = (f"staircase noise ~{noise:.1g}, measured by the levels between: a "
                       f"numerical inverse under a smooth term?" if stair else
                       f"spread {noise:.1g}: a staircase, e.g. a numerical inverse, under a "
                       f"smooth term?")
                return "not-converged", est, (
                    f"FD depends on the step: {est:.6g} (h={sw.step[r]:.1g}, spread {spread:.1g}) "
                    f"but {r_k:.6g} (h={sw.level_steps[k, r]:.1g}) does not contradict analytic "
                    f"{a:.6g} ({why})")
            if stair:
                return "fail", r_k, (
                    f"FD {r_k:.6g} (h={sw.level_steps[k, r]:.1g}, staircase noise {noise:.1g}) vs "
                    f"analytic {a:.6g}; the finest steps give {est:.6g} (the smooth term alone)")
        note = f"FD {est:.6g} (spread {spread:.1g}) vs analytic {a:.6g}"
        for k in range(int(sw.best[r])):     # a coarser estimate that differs: show it too
            s_k = float(sw.level_spread[k, r])
            r_k = float(sw.levels[k, r, 0])
            if np.isfinite(s_k) and abs(r_k - est) > SAFETY * max(s_k, spread):
                note += f"; coarser steps give {r_k:.6g} (h={sw.level_steps[k, r]:.1g}, spread {s_k:.1g})"
                break
        return "fail", est, note
    why = (f"the function moves in steps of ~{sw.quantum[r]:.1g} (a numerical inverse?)"
           if sw.quantum[r] > 0 else "steep, noisy or kinked")
    return "not-converged", est, (
        f"FD not converged ({why}): estimates {est:.6g} (h={sw.step[r]:.1g}) and "
        f"{alt:.6g} (h={sw.alt_step[r]:.1g}), analytic {a:.6g}")
