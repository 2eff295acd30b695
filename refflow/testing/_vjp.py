"""``check_vjp``: a pullback against finite differences, in place or functional."""

import numpy as np

from . import _fd
from ._common import (
    RTOL_FD, RTOL_FLOAT32, RTOL_FLOAT32_GRAD, TWIN_TERMS_PROBES, describe_exception,
    is_low_precision,
)
from ._report import VJPReport, Line

#: Elements of one gradient re-examined with a step sweep before the line is called
#: ``not-converged`` (each sweep costs ~60 evaluations).
MAX_SWEEPS = 8


def _split_vjp(result):
    if not (isinstance(result, (tuple, list)) and len(result) >= 2 and callable(result[-1])):
        raise ValueError("check_vjp: vjp must return (*outputs, pullback)")
    return [np.asarray(o) for o in result[:-1]], result[-1]


def _split_pullback(result, n_inputs):
    """``(input bars, grads)`` from ``bar``, ``(bar, grads)`` or ``(bar_0, grads, bar_1, ...)``."""
    if isinstance(result, (tuple, list)) and len(result) >= 2 and isinstance(result[1], dict):
        bars, grads = [result[0], *result[2:]], result[1]
    elif n_inputs == 1:
        bars, grads = [result], {}
    else:
        bars, grads = list(result), {}
    if len(bars) != n_inputs:
        raise ValueError(f"check_vjp: the pullback returned {len(bars)} input cotangent(s) for "
                         f"{n_inputs} input(s)")
    return [np.asarray(b) for b in bars], dict(grads)


def _attempt(what, fn, problems):
    """``(True, fn())``; or ``(False, None)`` with ``"{what} raised ..."`` added to ``problems``
    when ``fn`` raises. check_vjp's own ValueErrors (``"check_vjp: ..."``, a misuse of the
    check rather than a finding about the code under test) propagate."""
    try:
        return True, fn()
    except Exception as exc:
        if isinstance(exc, ValueError) and str(exc).startswith("check_vjp:"):
            raise
        problems.append(f"{what} raised {describe_exception(exc)}")
        return False, None


def _where(flat, shape):
    if len(shape) <= 1:
        return int(flat)
    return tuple(int(i) for i in np.unravel_index(int(flat), shape))


class _Target:
    """One gradient to check: how to read and set its elements."""

    def __init__(self, label, array, typical, in_place):
        self.label, self.array, self.typical, self.in_place = label, array, typical, in_place
        self.shape = array.shape

    def get(self, idx):
        return float(self.array[idx])

    def set(self, idx, value):
        self.array[idx] = value


def _params_in_place(params):
    """Validate a dict of arrays that the callable reads at call time (refflow's convention)."""
    for key, value in params.items():
        if not isinstance(value, np.ndarray):
            raise ValueError(
                f"check_vjp: params[{key!r}] is a {type(value).__name__}, not a NumPy array the "
                f"callable reads at call time; pass functional=True and fn(params, *inputs)")
        if not value.flags.writeable:
            raise ValueError(
                f"check_vjp: params[{key!r}] is read-only (a JAX array?), so it cannot be "
                f"perturbed in place; pass functional=True and fn(params, *inputs)")
        if value.dtype != np.float64:
            raise ValueError(
                f"check_vjp: params[{key!r}] has dtype {value.dtype}; finite differences need "
                f"float64 parameters (check a float32 layer against a float64 twin: reference=)")
        if not np.isfinite(value).all():
            raise ValueError(f"check_vjp: params[{key!r}] must be finite")
    return params


def _params_copy(params):
    out = {}
    for key, value in params.items():
        arr = np.array(value, dtype=np.float64, copy=True)
        if not np.isfinite(arr).all():
            raise ValueError(f"check_vjp: params[{key!r}] must be finite")
        out[key] = arr
    return out


def check_vjp(vjp, inputs, params=None, *, rng=None, eps=None, rtol=RTOL_FD, functional=False,
              max_elements=None, reference=None, rtol_float32=RTOL_FLOAT32,
              rtol_float32_grad=RTOL_FLOAT32_GRAD, smooth=False, max_sweeps=MAX_SWEEPS):
    """Check a pullback against central finite differences, element by element.

    Parameters
    ----------
    vjp : callable
        In place (default): ``vjp(*inputs) -> (*outputs, pullback)``, reading ``params`` at call
        time, with ``pullback(*cotangents) -> (input_bar, grads)`` (or just ``input_bar`` when
        there are no parameters); a refflow bijector's ``forward_vjp`` / ``inverse_vjp`` has
        exactly this form. With several inputs (a tuple) the pullback returns ``(input_bar_0,
        grads, input_bar_1, ...)``, as a conditional refflow layer does for ``(x, context)``.

        Functional (``functional=True``): ``vjp(params, *inputs) -> (*outputs, pullback)``, the
        same pullback. The check passes its own copies of ``params`` (a dict of float64 arrays,
        perturbed one element at a time), so torch, JAX and NumPy code wrap the same way
        (see :func:`from_torch`, :func:`from_jax`).
    inputs : array_like or tuple of array_like
        Where to check (any shapes; every element is perturbed, so rows may be coupled, as in
        batch normalisation). float32 inputs check a float32 layer: give ``reference``.
    params : dict of array_like, optional
        In place: NumPy arrays (writeable, float64, any strides: views of torch tensors work)
        that ``vjp`` reads at call time; each element is perturbed in place and restored
        exactly afterwards. Functional: any arrays, copied. ``grads`` must have the same keys
        and shapes.
    rng : int or numpy.random.Generator, optional
        Seeds the random cotangents and the ``max_elements`` sample.
    eps : float, optional
        Fixed first-pass step; default relative steps ``eps^(1/3) max(|v|, s)`` with ``s = 1``
        for inputs and the array's RMS for a parameter array.
    rtol : float
        Tolerance on the normwise relative error ``max_i |a_i - f_i| / max_i |f_i|`` of each
        gradient (analytic ``a``, finite-difference ``f``); default :data:`RTOL_FD`. A gradient
        whose norm is below the finite differences' rounding noise divided by ``rtol`` is
        compared absolutely, at that noise level (about ``1e-10 * sum|c * out|`` for unit-scale
        inputs).
    functional : bool
        Use the functional calling convention above.
    max_elements : int, optional
        Check a seeded random sample of at most this many elements per gradient (the analytic
        norm still covers every element).
    reference : callable, optional
        A float64 twin of a float32 ``vjp`` (same convention, same weights): its outputs and
        gradients at the same points and cotangents are compared with the float32 ones
        (``rtol_float32``, ``rtol_float32_grad``), and the finite-difference checks run on the
        twin. A gradient's error is relative to the larger of its size and the size of the
        terms it sums (the twin's pullbacks of sign-flipped cotangents: float32 rounds the
        terms, so a gradient whose terms cancel is judged at their scale, not its own).
        Without it a float32 layer gets no finite-difference checks.
    smooth : bool
        A kink found at the points (one-sided derivatives that differ) is a failure rather than
        ``not-converged``.
    max_sweeps : int
        Elements per gradient that are re-examined with a step sweep (default ``MAX_SWEEPS``).

    Returns
    -------
    VJPReport
        One line per gradient (``"input"``, or ``"input[0]"``, ``"input[1]"``, ... for several
        inputs, then each parameter key), each with a verdict; ``problems`` lists contract
        violations (missing or extra keys, wrong shapes or dtypes, a pullback that changes its
        arguments or gives a different answer when called twice, a callable that raised).

    Notes
    -----
    With random cotangents ``c_k`` for the outputs, the scalar ``S = sum_k <c_k, out_k>`` has
    gradient ``(input_bar, grads)`` by definition of the pullback; each element of it is compared
    with the central difference ``(S(v + h e_i) - S(v - h e_i)) / 2h`` at ``h`` and ``h/2``,
    Richardson-extrapolated: four calls per element. Elements that disagree are re-examined with
    a sweep of steps (up to ``max_sweeps`` per gradient): ``fail`` only when the sweep confirms
    the disagreement, ``not-converged`` with the two estimates when finite differences cannot
    decide (a kink, a steep or a noisy region, a numerical inverse's staircase). A jump in
    ``S`` fails with ``smooth=True``; otherwise it is ``not-converged``, since ``S`` includes the
    log-det, which jumps at a kink of the map by design (LeakyReLU at 0).
    """
    several = isinstance(inputs, tuple)
    raw = inputs if several else (inputs,)
    v0s = [np.array(a, dtype=np.float32 if np.asarray(a).dtype == np.float32 else np.float64,
                    copy=True) for a in raw]
    labels = [f"input[{i}]" for i in range(len(v0s))] if several else ["input"]
    low = any(is_low_precision(v.dtype) for v in v0s)
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise ValueError(f"check_vjp: params must be a dict of arrays, got {type(params).__name__}")
    params = _params_copy(params) if functional else _params_in_place(params)
    if reference is not None and not low:
        raise ValueError("check_vjp: reference is for float32 inputs (give the inputs as float32)")
    if max_elements is not None and int(max_elements) < 1:
        raise ValueError("check_vjp: max_elements must be a positive integer")
    rng = np.random.default_rng(rng)

    def call(fn, vs, ps):
        args = [v.copy() for v in vs]
        return _split_vjp(fn(ps, *args) if functional else fn(*args))

    problems = []
    ok, result = _attempt("vjp", lambda: call(vjp, v0s, params), problems)
    if not ok:
        return VJPReport([], problems)
    outputs, pullback = result
    cotangents = [rng.standard_normal(o.shape) for o in outputs]
    kept = [c.copy() for c in cotangents]
    cts = [c.astype(o.dtype) if o.dtype.kind == "f" else c for c, o in zip(cotangents, outputs)]
    ok, result = _attempt("pullback", lambda: (_split_pullback(pullback(*cts), len(v0s)),
                                                _split_pullback(pullback(*cts), len(v0s))),
                          problems)
    if not ok:
        return VJPReport([], problems)
    (bars, grads), (bars2, grads2) = result
    _contract(problems, v0s, labels, params, outputs, cts, kept, bars, grads, bars2, grads2)

    if low:
        lines = []
        if reference is None:
            for label in labels + sorted(k for k in params if k in grads):
                lines.append(Line(label, float("nan"), float("nan"), -1,
                                   "float32: finite differences need float64; pass reference=",
                                   "skipped"))
            return VJPReport(lines, problems)
        v64 = [v.astype(np.float64) for v in v0s]
        try:
            out64, pull64 = call(reference, v64, params)
            bars64, grads64 = _split_pullback(pull64(*cotangents), len(v0s))
        except Exception as exc:
            problems.append(f"reference raised {describe_exception(exc)}")
            return VJPReport([], problems)
        terms = _term_scales(pull64, cotangents, labels, sorted(params), len(v0s))
        twin = _twin_lines(outputs, out64, bars, bars64, grads, grads64, labels, params,
                           rtol_float32, rtol_float32_grad, terms)
        inner = _fd_lines(lambda vs, ps: call(reference, vs, ps), v64, labels, params, functional,
                          cotangents, out64, bars64, grads64, rng, eps, rtol, max_elements, smooth,
                          max_sweeps, problems)
        return VJPReport(twin + inner, list(dict.fromkeys(problems)))

    lines = _fd_lines(lambda vs, ps: call(vjp, vs, ps), v0s, labels, params, functional,
                      cotangents, outputs, bars, grads, rng, eps, rtol, max_elements, smooth,
                      max_sweeps, problems)
    return VJPReport(lines, list(dict.fromkeys(problems)))


def _contract(problems, v0s, labels, params, outputs, cts, kept, bars, grads, bars2, grads2):
    if any(not np.array_equal(c, k.astype(c.dtype)) for c, k in zip(cts, kept)):
        problems.append("the pullback modified its cotangent arguments")
    def equal(a, b):
        a, b = np.asarray(a), np.asarray(b)
        if a.shape != b.shape:
            return False
        if a.dtype.kind in "fc" and b.dtype.kind in "fc":
            return bool(np.array_equal(a, b, equal_nan=True))
        return bool(np.array_equal(a, b))

    same = all(equal(a, b) for a, b in zip(bars, bars2)) and all(
        equal(grads[k], grads2.get(k)) for k in grads)
    if not same:
        problems.append("calling the pullback twice gave different results")
    if set(grads) != set(params):
        problems.append(f"grads keys {sorted(grads)} differ from params keys {sorted(params)}")
    for label, bar, v0 in zip(labels, bars, v0s):
        if bar.shape != v0.shape:
            problems.append(f"{label} cotangent has shape {bar.shape}, expected {v0.shape}")
        elif bar.dtype.kind == "f" and np.finfo(bar.dtype).eps > np.finfo(v0.dtype).eps:
            problems.append(f"{label} cotangent has dtype {bar.dtype} for {v0.dtype} input "
                            f"(precision lost)")
    for k, out in enumerate(outputs):
        if out.dtype.kind == "f" and not np.isfinite(out).all():
            problems.append(f"output {k} is not finite for finite input")
    for label, bar in zip(labels, bars):
        if bar.dtype.kind == "f" and not np.isfinite(bar).all():
            problems.append(f"{label} cotangent is not finite")
    for key in sorted(grads):
        g = np.asarray(grads[key])
        if g.dtype.kind == "f" and not np.isfinite(g).all():
            problems.append(f"grads[{key!r}] is not finite")
    in_eps = min(np.finfo(v.dtype).eps for v in v0s) if v0s else np.finfo(np.float64).eps
    for k, out in enumerate(outputs):
        if out.dtype.kind == "f" and np.finfo(out.dtype).eps > in_eps:
            problems.append(f"output {k} has dtype {out.dtype} for {v0s[0].dtype} input "
                            f"(precision lost)")
    if in_eps == np.finfo(np.float64).eps:
        for key in sorted(grads):
            g = np.asarray(grads[key])
            if key in params and g.dtype.kind == "f" and g.dtype != np.float64:
                problems.append(f"grads[{key!r}] has dtype {g.dtype}, expected float64")


def _normwise(a, b, floor=0.0):
    """``max |a - b| / max(max |b|, floor)`` (absolute when both are zero)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        return float("inf"), -1
    if a.size == 0:
        return 0.0, -1
    with np.errstate(all="ignore"):
        diff = np.abs(a - b)
    if not np.isfinite(diff).all():
        return float("inf"), int(np.argmax(~np.isfinite(diff).ravel()))
    scale = max(float(np.max(np.abs(b))), float(floor))
    worst = int(np.argmax(diff))
    if scale > np.finfo(np.float64).tiny:
        return float(diff.ravel()[worst]) / scale, worst
    return float(diff.ravel()[worst]), worst


def _term_scales(pullback, cotangents, labels, keys, n_inputs):
    """Size of the terms each float32 gradient sums: ``{label or key: max_j rms_k |(J^T
    (sigma_k * u))_j|}``.

    Element ``j`` of a pullback is ``sum_i u_i J_ij`` (``u`` the cotangents, ``J`` the Jacobian
    of the outputs in that input or parameter array); float32 rounds every term, so its error
    scales with the terms, ``(sum_i (u_i J_ij)^2)^(1/2)``, whatever the sum's own size (terms
    that cancel leave a tiny gradient). With random signs ``sigma`` (Rademacher),
    ``E (sum_i sigma_i u_i J_ij)^2 = sum_i (u_i J_ij)^2``: the float64 twin's pullback of
    ``TWIN_TERMS_PROBES`` sign-flipped cotangents estimates it exactly in expectation, with no
    finite difference. The signs come from their own fixed generator, so the check's other draws
    are unchanged. A probe that raises gives ``{}`` (each gradient is then compared relative to
    its own size)."""
    signs = np.random.default_rng(20231)
    total = {}
    try:
        for _ in range(TWIN_TERMS_PROBES):
            flipped = [c * signs.choice(np.array([-1.0, 1.0]), size=np.shape(c))
                       for c in cotangents]
            bars, grads = _split_pullback(pullback(*flipped), n_inputs)
            got = dict(zip(labels, bars))
            got.update({k: grads[k] for k in keys if k in grads})
            for name, value in got.items():
                sq = np.square(np.asarray(value, dtype=np.float64))
                total[name] = total.get(name, 0.0) + sq
    except Exception:
        return {}
    out = {}
    with np.errstate(all="ignore"):
        for name, sq in total.items():
            rms = np.sqrt(sq / TWIN_TERMS_PROBES)
            m = float(np.max(rms, initial=0.0))
            out[name] = m if np.isfinite(m) else 0.0
    return out


def _twin_lines(out32, out64, bars32, bars64, grads32, grads64, labels, params, tol, tol_grad,
                terms=None):
    """Outputs and gradients of a float32 layer against its float64 twin. A gradient's error is
    relative to the larger of its own size and ``terms[label]``, the size of the terms it sums
    (:func:`_term_scales`)."""
    terms = {} if terms is None else terms
    lines = []
    worst, where = 0.0, -1
    for k, (a, b) in enumerate(zip(out32, out64)):
        a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
        if a.shape != b.shape:
            worst, where = float("inf"), k
            continue
        with np.errstate(all="ignore"):
            err = np.abs(a - b) / np.maximum(1.0, np.abs(b))
        e = float(np.max(np.where(np.isnan(err), np.inf, err), initial=0.0))
        if e > worst:
            worst, where = e, k
    lines.append(Line("outputs vs float64 twin", worst, tol, where,
                       "" if where < 0 else f"output {where}"))
    pairs = [(label, a, b) for label, a, b in zip(labels, bars32, bars64)]
    pairs += [(key, grads32[key], grads64[key]) for key in sorted(params)
              if key in grads32 and key in grads64]
    for label, a, b in pairs:
        floor = float(terms.get(label, 0.0))
        e, w = _normwise(a, b, floor)
        size = float(np.max(np.abs(np.asarray(b, dtype=np.float64)), initial=0.0))
        note = (f"relative to the size of its terms {floor:.2g} (the gradient is {size:.2g})"
                if floor > 10.0 * size else "")
        lines.append(Line(f"{label} vs float64 twin", e, tol_grad,
                          _where(w, np.shape(b)) if w >= 0 else -1, note))
    return lines


def _fd_lines(call, v0s, labels, params, functional, cotangents, outputs, bars, grads, rng, eps,
              rtol, max_elements, smooth, max_sweeps, problems):
    """Finite-difference lines for every input and parameter gradient."""
    vs = [v.astype(np.float64) for v in v0s]
    ps = params                               # functional: our copies; in place: the caller's

    def scalar():
        outs, _ = call(vs, ps)
        total = 0.0
        for c, o in zip(cotangents, outs):
            total += float(np.sum(c * np.asarray(o, dtype=np.float64)))
        return total

    def safe_scalar():
        try:
            with np.errstate(all="ignore"):
                value = scalar()
        except Exception:
            return float("nan")
        return value if np.isfinite(value) else float("nan")

    s0 = safe_scalar()
    s_abs = sum(float(np.sum(np.abs(c * np.asarray(o, dtype=np.float64))))
                for c, o in zip(cotangents, outputs))
    if not (np.isfinite(s0) and np.isfinite(s_abs)):     # a problem already says why
        skipped = [label for label, bar, v in zip(labels, bars, vs) if bar.shape == v.shape]
        skipped += [k for k in sorted(params) if k in grads]
        return [Line(label, float("nan"), float("nan"), -1,
                      "the outputs are not finite at these points", "skipped") for label in skipped]
    targets = []
    for label, bar, v in zip(labels, bars, vs):
        if bar.shape == v.shape:
            targets.append((_Target(label, v, 1.0, False), np.asarray(bar, dtype=np.float64)))
    for key in sorted(params):
        if key not in grads:
            continue
        analytic = np.asarray(grads[key], dtype=np.float64)
        if analytic.shape != np.shape(params[key]):
            problems.append(f"grads[{key!r}] has shape {analytic.shape}, expected {np.shape(params[key])}")
            continue
        targets.append((_Target(key, ps[key], _fd.typical_scale(ps[key]), not functional), analytic))

    lines = []
    for target, analytic in targets:
        lines.append(_gradient_line(target, analytic, safe_scalar, s0, s_abs, rng, eps, rtol,
                                    max_elements, smooth, max_sweeps))
    return lines


def _gradient_line(target, analytic, evaluate, s0, s_abs, rng, eps, rtol, max_elements, smooth,
                   max_sweeps):
    shape = target.shape
    size = int(np.prod(shape)) if shape else 1
    if size == 0:
        return Line(target.label, 0.0, rtol)
    flat_ids = np.arange(size)
    if max_elements is not None and size > max_elements:
        flat_ids = np.sort(rng.choice(size, size=int(max_elements), replace=False))
    idxs = [np.unravel_index(i, shape) if shape else () for i in flat_ids]
    values = np.array([target.get(i) for i in idxs])
    h = _fd.steps(values, eps, target.typical)
    a_sel = analytic.reshape(-1)[flat_ids]
    if not np.isfinite(analytic).all():
        bad = int(np.flatnonzero(~np.isfinite(analytic.reshape(-1)))[0])
        return Line(target.label, float("inf"), rtol, _where(bad, shape),
                     "the analytic gradient is not finite", "fail")

    def at(i, value):
        orig = target.get(i)
        try:
            target.set(i, value)
            return evaluate()
        finally:
            target.set(i, orig)       # restored bit for bit

    frozen = True

    def central(i, step):
        nonlocal frozen
        orig = target.get(i)
        plus, minus = orig + step, orig - step
        up, down = at(i, plus), at(i, minus)
        if up != down:
            frozen = False
        with np.errstate(all="ignore"):
            return (up - down) / (plus - minus)

    fd = np.empty(len(idxs))
    with np.errstate(all="ignore"):
        for p, i in enumerate(idxs):
            fd[p] = _fd.richardson(lambda s: central(i, s), h[p])
    # rounding noise of one Richardson difference: each evaluation of S is off by about
    # eps * sum|c * out|, divided by the step, times 3 for the extrapolation (x10 margin)
    noise = 30.0 * _fd.EPS * s_abs / float(np.min(h, initial=np.inf)) if len(h) else 0.0
    finite_a = np.isfinite(analytic)
    a_max = float(np.max(np.abs(analytic[finite_a]), initial=0.0))

    status = {}
    sweeps = 0
    while True:
        finite = np.isfinite(fd)
        scale = max(float(np.max(np.abs(fd[finite]), initial=0.0)), a_max, noise / rtol)
        tol = rtol * scale
        with np.errstate(all="ignore"):
            diff = np.where(np.isfinite(fd), np.abs(a_sel - fd), np.inf)
        pending = [p for p in range(len(idxs)) if p not in status and not diff[p] <= tol]
        if not pending or sweeps >= max_sweeps:
            break
        p = max(pending, key=lambda q: diff[q])
        i = idxs[p]

        def along(t, i=i):
            return np.array([[at(i, float(t[0]))]])

        sw = _fd.sweep(along, np.array([values[p]]), np.array([h[p]]), np.array([[s0]]),
                       np.array([[_fd.EPS * s_abs]]))
        verdict, est, note = _fd.classify(a_sel[p], sw, 0, tol, smooth)
        if verdict == "fail" and sw.flat[0] and target.in_place:
            note += (f"; if vjp reads a copy of params[{target.label!r}] (not a view), the check "
                     f"cannot perturb it: use functional=True")
        if np.isfinite(est):
            fd[p] = est
        status[p] = (verdict, note)
        sweeps += 1
        if verdict == "fail":
            break

    finite = np.isfinite(fd)
    scale = max(float(np.max(np.abs(fd[finite]), initial=0.0)), a_max, noise / rtol)
    tol = rtol * scale
    with np.errstate(all="ignore"):
        diff = np.where(np.isfinite(fd) & np.isfinite(a_sel), np.abs(a_sel - fd), np.inf)
    error = float(np.max(diff, initial=0.0)) / scale if scale > 0 else 0.0
    failed = [p for p, (v, _) in status.items() if v == "fail"]
    unsettled = [p for p in range(len(idxs)) if not diff[p] <= tol and p not in status]
    stuck = [p for p, (v, _) in status.items() if v == "not-converged"]
    if failed:
        p = failed[0]
        verdict, note = "fail", status[p][1]
        error = max(error, float(diff[p]) / scale if scale > 0 else np.inf)
    elif not any(not diff[p] <= tol for p in range(len(idxs))):
        p = int(np.argmax(diff)) if len(diff) else 0
        verdict, note = "pass", ""
    elif stuck or unsettled:
        p = stuck[0] if stuck else unsettled[0]
        verdict = "not-converged"
        note = status[p][1] if p in status else "not re-examined"
        if unsettled:
            note += f"; {len(unsettled)} more element(s) disagree at the first step, not re-examined"
    else:               # every disagreeing element was re-examined and passed
        p = int(np.argmax(diff))
        verdict, note = "pass", ""
    if not np.isfinite(error):
        error = float("inf")
    if max_elements is not None and size > max_elements:
        note = f"{len(idxs)} of {size} elements" + (f"; {note}" if note else "")
    where = _where(flat_ids[p], shape) if len(flat_ids) else -1
    if frozen and size and a_max > tol and verdict == "fail" and target.in_place and "copy" not in note:
        note += (f"; perturbing params[{target.label!r}] in place changed no output: if vjp "
                 f"reads a copy of it, use functional=True")
    return Line(target.label, error, rtol, where, note, verdict)


def assert_vjp(vjp, inputs, params=None, **kwargs):
    """:func:`check_vjp`, raising ``AssertionError`` with the report unless every check passed.

    Returns the report when all checks pass.
    """
    report = check_vjp(vjp, inputs, params, **kwargs)
    if not report.ok:
        raise AssertionError("\n" + str(report))
    return report
