"""The oracle: check a bijector and its pullbacks against finite differences and ``slogdet``.

These are the checks refflow runs on itself, public so that anyone can run them on their own
layers. They take plain callables on NumPy arrays: a PyTorch or JAX layer wrapped to take and
return float64 arrays is checked to the same standard.

=====================  ==============================================================================
``jacobian_fd``        central finite-difference Jacobian per sample, ``(batch, d_out, d_in)``
``check_bijector``     round trips both ways, log-dets vs ``slogdet`` of the FD Jacobian, ``fwd + inv = 0``
``check_vjp``          a pullback vs finite differences, for the input and every parameter element
``assert_bijector``    ``check_bijector`` that raises ``AssertionError`` with the report
``assert_vjp``         ``check_vjp`` that raises ``AssertionError`` with the report
=====================  ==============================================================================

Derivatives are central differences with one Richardson extrapolation,
``D = (4 D(h/2) - D(h)) / 3``: truncation error O(h^4) instead of O(h^2), so maps with features
much narrower than 1 (spline bins of width 1e-2, steep derivatives) are still resolved to ~1e-9.

Errors are relative, ``|a - b| / max(1, |b|)`` for values and log-dets (so values near zero are
compared absolutely), and normwise ``max_i |a_i - b_i| / max_i |b_i|`` for gradients.

Examples
--------
Check a hand-written layer given only as two functions (here ``x = 2 z + 1``, with a planted
bug in the inverse log-det sign):

>>> import numpy as np
>>> from refflow.testing import check_bijector
>>> fwd = lambda z: (2 * z + 1, np.full(len(z), z.shape[1] * np.log(2.0)))
>>> inv = lambda x: ((x - 1) / 2, np.full(len(x), x.shape[1] * np.log(2.0)))  # wrong sign
>>> report = check_bijector(fwd, inv, np.random.default_rng(0).normal(size=(5, 3)))
>>> report.ok
False
>>> [line.label for line in report.lines if not line.ok]
['log_det inverse vs FD', 'log_det fwd + inv']
>>> print(report)  # doctest: +SKIP
check_bijector: FAILED
  check                     error       tolerance  worst row
  round trip z -> x -> z    1.11e-16    1e-10      0
  round trip x -> z -> x    0           1e-10      0
  log_det forward vs FD     6.61e-12    1e-06      1
  log_det inverse vs FD     2           1e-06      0  FAIL
  log_det fwd + inv         2           1e-10      0  FAIL

And a pullback, against finite differences of ``<x_bar, x> + <log_det_bar, log_det>``:

>>> from refflow import Affine
>>> from refflow.testing import assert_vjp
>>> layer = Affine(3)
>>> layer.params["log_scale"] = [0.1, -0.2, 0.3]
>>> report = assert_vjp(layer.forward_vjp, np.ones((4, 3)), layer.params, rng=0)
>>> report.ok
True
"""

import math
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "jacobian_fd", "check_bijector", "assert_bijector", "check_vjp", "assert_vjp",
    "BijectorReport", "VJPReport", "RTOL_ROUND_TRIP", "RTOL_FD",
]

#: Round trips in float64: a few ulps per operation through a stack of layers.
RTOL_ROUND_TRIP = 1e-10
#: Analytic quantities vs central differences: the FD error is about
#: ``eps^(2/3) ~ 4e-11`` relative for smooth maps, so 1e-6 leaves room for conditioning
#: while catching any wrong term (a wrong term is an O(1) relative error).
RTOL_FD = 1e-6

_STEP = np.finfo(np.float64).eps ** (1.0 / 3.0)  # central-difference step, ~6e-6 (then h/2)


def _richardson(difference, h):
    """``(4 D(h/2) - D(h)) / 3`` for ``D(s) = difference(s)`` (a central difference at step s):
    the O(s^2) error terms cancel, leaving O(s^4)."""
    return (4.0 * difference(0.5 * h) - difference(h)) / 3.0


def _first(result):
    """The main output of a callable that may return ``(out, log_det, ...)``."""
    out = result[0] if isinstance(result, (tuple, list)) else result
    return np.asarray(out, dtype=np.float64)


def _as_2d(x, name):
    x = np.array(x, dtype=np.float64, copy=True)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2:
        raise ValueError(f"{name} must have shape (batch, dim), got {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} must be finite")
    return x


def _steps(x, eps):
    if eps is None:
        return _STEP * np.maximum(1.0, np.abs(x))
    return np.full_like(x, float(eps))


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
    Richardson extrapolation: ``4 * d_in`` calls of ``f``. The steps used are the exactly
    representable differences ``(x + h) - (x - h)``.

    Examples
    --------
    >>> import numpy as np
    >>> jac = jacobian_fd(lambda x: np.sin(x), np.array([[0.0, 1.0]]))
    >>> np.allclose(jac[0], np.diag(np.cos([0.0, 1.0])), atol=1e-9)
    True
    """
    x = _as_2d(x, "jacobian_fd: x")
    h = _steps(x, eps)
    columns = []
    for j in range(x.shape[1]):
        def difference(s, j=j):
            xp, xm = x.copy(), x.copy()
            xp[:, j] += s[:, j]
            xm[:, j] -= s[:, j]
            step = xp[:, j] - xm[:, j]
            return (_first(f(xp)) - _first(f(xm))) / step[:, None]
        columns.append(_richardson(difference, h))
    return np.stack(columns, axis=-1)


@dataclass
class _Line:
    label: str
    error: float
    tolerance: float
    row: int = -1
    note: str = ""

    @property
    def ok(self):
        return bool(self.error <= self.tolerance)  # NaN fails


def _rel(a, b):
    """Per-row max of ``|a - b| / max(1, |b|)``."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    err = np.abs(a - b) / np.maximum(1.0, np.abs(b))
    err = np.where(np.isnan(err), np.inf, err)
    return err.reshape(err.shape[0], -1).max(axis=1) if err.ndim > 1 else err


def _line(label, per_row, tolerance, note=""):
    if per_row.size == 0:
        return _Line(label, 0.0, tolerance, -1, note)
    row = int(np.argmax(per_row))
    return _Line(label, float(per_row[row]), tolerance, row, note)


def _format(title, columns, lines, notes):
    ok = all(line.ok for line in lines) and not notes
    out = [f"{title}: {'ok' if ok else 'FAILED'}",
           f"  {columns[0]:<26}{'error':<12}{'tolerance':<11}{columns[1]}"]
    for line in lines:
        where = "" if line.row < 0 else str(line.row)
        flag = "" if line.ok else "  FAIL"
        out.append(f"  {line.label:<26}{line.error:<12.3g}{line.tolerance:<11.0e}{where}{flag}")
    out.extend(f"  problem: {note}" for note in notes)
    return "\n".join(out)


@dataclass
class _Report:
    """Worst errors of a check; ``ok`` when all are within tolerance and nothing else is wrong.

    Attributes
    ----------
    lines : list
        One entry per check: ``label``, ``error``, ``tolerance``, worst ``row`` (or element),
        ``ok``.
    problems : list of str
        Contract violations found on the way (wrong shapes, keys, a pullback with side effects).
    """

    lines: list = field(default_factory=list)
    problems: list = field(default_factory=list)
    _title = ""
    _columns = ("check", "worst")

    @property
    def ok(self):
        return all(line.ok for line in self.lines) and not self.problems

    @property
    def errors(self):
        """``{label: worst error}``."""
        return {line.label: line.error for line in self.lines}

    def __str__(self):
        return _format(self._title, self._columns, self.lines, self.problems)


class BijectorReport(_Report):
    """Worst errors found by :func:`check_bijector`, one line per check."""

    _title = "check_bijector"
    _columns = ("check", "worst row")


def _call_bijector(fn, v, name, problems):
    result = fn(v)
    if not (isinstance(result, (tuple, list)) and len(result) >= 2):
        raise ValueError(f"check_bijector: {name} must return (output, log_det)")
    out = np.asarray(result[0], dtype=np.float64)
    log_det = np.asarray(result[1], dtype=np.float64)
    if out.shape != v.shape:
        problems.append(f"{name} returned output of shape {out.shape}, expected {v.shape}")
    if log_det.shape != (v.shape[0],):
        problems.append(f"{name} returned log_det of shape {log_det.shape}, expected ({v.shape[0]},)")
        log_det = np.broadcast_to(log_det.reshape(-1)[: v.shape[0]], (v.shape[0],)) \
            if log_det.size >= v.shape[0] else np.full(v.shape[0], np.nan)
    return out, log_det


def check_bijector(forward, inverse, z, *, x=None, eps=None,
                   rtol_round_trip=RTOL_ROUND_TRIP, rtol_log_det=RTOL_FD):
    """Check a bijector given as two callables: round trips and log-dets.

    Parameters
    ----------
    forward : callable
        ``forward(z) -> (x, log_det)`` on ``(batch, dim)`` arrays, ``log_det = log|det dx/dz|``
        of shape ``(batch,)``.
    inverse : callable
        ``inverse(x) -> (z, log_det)``, ``log_det = log|det dz/dx|``.
    z : array_like of shape (batch, dim)
        Points in the domain of ``forward``. Keep them away from points where the map is not
        differentiable (spline knots, LeakyReLU's kink), where no FD Jacobian is meaningful.
    x : array_like of shape (batch, dim), optional
        Points in the domain of ``inverse``; default ``forward(z)``.
    eps : float, optional
        Finite-difference step (see :func:`jacobian_fd`).
    rtol_round_trip, rtol_log_det : float
        Tolerances; defaults :data:`RTOL_ROUND_TRIP` and :data:`RTOL_FD`.

    Returns
    -------
    BijectorReport
        ``ok``, the worst error of each check and the row where it occurred; ``str(report)``
        is a readable table.

    Notes
    -----
    Checks, each as a relative error ``|a - b| / max(1, |b|)``:

    - ``inverse(forward(z)) == z`` and ``forward(inverse(x)) == x``;
    - forward ``log_det(z)`` vs ``log|det J|`` of the FD Jacobian of ``forward`` at ``z``;
    - inverse ``log_det(x)`` vs the same for ``inverse`` at ``x``;
    - ``forward log_det(z) + inverse log_det(forward(z)) == 0``.
    """
    z = _as_2d(z, "check_bijector: z")
    problems = []
    x_of_z, ld_f = _call_bijector(forward, z, "forward", problems)
    z_rt, ld_i_at = _call_bijector(inverse, x_of_z, "inverse", problems)
    x = x_of_z if x is None else _as_2d(x, "check_bijector: x")
    z_of_x, ld_i = _call_bijector(inverse, x, "inverse", problems)
    x_rt, _ = _call_bijector(forward, z_of_x, "forward", problems)

    _, fd_f = np.linalg.slogdet(jacobian_fd(forward, z, eps))
    _, fd_i = np.linalg.slogdet(jacobian_fd(inverse, x, eps))
    lines = [
        _line("round trip z -> x -> z", _rel(z_rt, z), rtol_round_trip),
        _line("round trip x -> z -> x", _rel(x_rt, x), rtol_round_trip),
        _line("log_det forward vs FD", _rel(ld_f, fd_f), rtol_log_det),
        _line("log_det inverse vs FD", _rel(ld_i, fd_i), rtol_log_det),
        _line("log_det fwd + inv", np.abs(ld_f + ld_i_at) / np.maximum(1.0, np.abs(ld_f)),
              rtol_round_trip),
    ]
    for line in lines:  # NaN anywhere is a failure, never a silent pass
        if not np.isfinite(line.error):
            line.error = math.inf
    return BijectorReport(lines, problems)


def assert_bijector(forward, inverse, z, **kwargs):
    """:func:`check_bijector`, raising ``AssertionError`` with the report when a check fails.

    Returns the report when all checks pass.
    """
    report = check_bijector(forward, inverse, z, **kwargs)
    if not report.ok:
        raise AssertionError("\n" + str(report))
    return report


class VJPReport(_Report):
    """Errors found by :func:`check_vjp`, per gradient (``"input"`` and each parameter key)."""

    _title = "check_vjp"
    _columns = ("gradient", "worst element")


def _split_vjp(result):
    if not (isinstance(result, (tuple, list)) and len(result) >= 2 and callable(result[-1])):
        raise ValueError("check_vjp: vjp(inputs) must return (*outputs, pullback)")
    return [np.asarray(o, dtype=np.float64) for o in result[:-1]], result[-1]


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
    return [np.asarray(b, dtype=np.float64) for b in bars], grads


def check_vjp(vjp, inputs, params=None, *, rng=None, eps=None, rtol=RTOL_FD):
    """Check a pullback against central finite differences, element by element.

    Parameters
    ----------
    vjp : callable
        ``vjp(inputs) -> (*outputs, pullback)``, with ``pullback(*cotangents) -> (input_bar,
        grads)`` (or just ``input_bar`` when there are no parameters). A refflow bijector's
        ``forward_vjp`` / ``inverse_vjp`` has exactly this form. With several inputs (a tuple),
        ``vjp(*inputs)`` is called and the pullback returns ``(input_bar_0, grads, input_bar_1,
        ...)``, as a conditional refflow layer does for ``(x, context)``.
    inputs : array_like or tuple of array_like
        Where to check (any shapes; every element is perturbed, so rows may be coupled, as in
        batch normalisation).
    params : dict of ndarray, optional
        Parameters that ``vjp`` reads *at call time* (refflow's in-place convention). Each
        element is perturbed in place and restored exactly afterwards. ``grads`` must have the
        same keys and shapes.
    rng : int or numpy.random.Generator, optional
        Seeds the random cotangents.
    eps : float, optional
        Finite-difference step; default ``eps_machine^(1/3) * max(1, |value|)``.
    rtol : float
        Tolerance on the normwise relative error ``max_i |a_i - f_i| / max_i |f_i|`` of each
        gradient (analytic ``a``, finite-difference ``f``); default :data:`RTOL_FD`. A gradient
        whose norm is below the finite differences' rounding noise divided by ``rtol`` is
        compared absolutely, at that noise level (about ``1e-10 * sum|c * out|`` for unit-scale
        inputs).

    Returns
    -------
    VJPReport
        One line per gradient (``"input"``, or ``"input[0]"``, ``"input[1]"``, ... for several
        inputs, then each parameter key); ``problems`` lists contract violations (missing or extra keys,
        wrong shapes, a pullback that changes its arguments or gives a different answer when
        called twice).

    Notes
    -----
    With random cotangents ``c_k`` for the outputs, the scalar ``S = sum_k <c_k, out_k>`` has
    gradient ``(input_bar, grads)`` by definition of the pullback; each element of it is compared
    with the central difference ``(S(v + h e_i) - S(v - h e_i)) / 2h`` at ``h`` and ``h/2``,
    Richardson-extrapolated. That costs four calls per input and parameter element, so use small
    batches and layers.
    """
    rng = np.random.default_rng(rng)
    several = isinstance(inputs, tuple)
    v0s = [np.array(a, dtype=np.float64, copy=True) for a in (inputs if several else (inputs,))]
    labels = [f"input[{i}]" for i in range(len(v0s))] if several else ["input"]
    params = {} if params is None else params

    def call(vs):
        return _split_vjp(vjp(*[v.copy() for v in vs]))

    outputs, pullback = call(v0s)
    cotangents = [rng.standard_normal(o.shape) for o in outputs]
    problems = []

    kept = [c.copy() for c in cotangents]
    bars, grads = _split_pullback(pullback(*cotangents), len(v0s))
    bars2, grads2 = _split_pullback(pullback(*cotangents), len(v0s))
    if any(not np.array_equal(c, k) for c, k in zip(cotangents, kept)):
        problems.append("the pullback modified its cotangent arguments")
    if not (all(np.array_equal(a, b) for a, b in zip(bars, bars2))
            and all(np.array_equal(grads[k], grads2.get(k)) for k in grads)):
        problems.append("calling the pullback twice gave different results")
    if set(grads) != set(params):
        problems.append(f"grads keys {sorted(grads)} differ from params keys {sorted(params)}")
    for label, bar, v0 in zip(labels, bars, v0s):
        if bar.shape != v0.shape:
            problems.append(f"{label} cotangent has shape {bar.shape}, expected {v0.shape}")

    def scalar(vs):
        outs, _ = call(vs)
        return sum(float(np.sum(c * o)) for c, o in zip(cotangents, outs))

    # Rounding noise of one central difference: each evaluation of S is off by about
    # eps * sum|c * out|, divided by the step. Below noise / rtol a gradient cannot be resolved
    # relatively, so it is compared absolutely at the noise level (see _grad_line).
    s_abs = sum(float(np.sum(np.abs(c * o))) for c, o in zip(cotangents, outputs))

    def noise(target):
        # Richardson's (4 D(h/2) - D(h)) / 3 carries (4 * 2 + 1) / 3 = 3 times the noise of D(h)
        h = _steps(np.asarray(target, dtype=np.float64), eps)
        return 30.0 * np.finfo(np.float64).eps * s_abs / float(np.min(h, initial=np.inf))

    def fd_gradient(target, evaluate):
        grad = np.zeros(target.shape)
        h = _steps(target, eps)
        flat_t, flat_h, flat_g = target.reshape(-1), h.reshape(-1), grad.reshape(-1)

        def central(i, step):
            orig = flat_t[i]
            try:
                flat_t[i] = orig + step
                up, plus = evaluate(), flat_t[i]
                flat_t[i] = orig - step
                down, minus = evaluate(), flat_t[i]
            finally:
                flat_t[i] = orig
            return (up - down) / (plus - minus)

        for i in range(flat_t.size):
            flat_g[i] = _richardson(lambda s: central(i, s), flat_h[i])
        return grad

    lines = []
    for i, (label, bar) in enumerate(zip(labels, bars)):
        if bar.shape != v0s[i].shape:
            continue
        vs = [v.copy() for v in v0s]
        fd = fd_gradient(vs[i], lambda: scalar(vs))
        lines.append(_grad_line(label, bar, fd, rtol, noise(v0s[i])))
    for key in sorted(params):
        if key not in grads:
            continue
        target = params[key]
        analytic = np.asarray(grads[key], dtype=np.float64)
        if analytic.shape != np.shape(target):
            problems.append(f"grads[{key!r}] has shape {analytic.shape}, expected {np.shape(target)}")
            continue
        fd = fd_gradient(target, lambda: scalar(v0s))
        lines.append(_grad_line(key, analytic, fd, rtol, noise(target)))
    return VJPReport(lines, problems)


def _grad_line(label, analytic, fd, rtol, noise):
    """Normwise relative error, the norm floored at ``noise / rtol`` (FD cannot resolve less)."""
    scale = max(float(np.max(np.abs(fd), initial=0.0)),
                float(np.max(np.abs(analytic), initial=0.0)), noise / rtol)
    diff = np.abs(analytic - fd)
    if diff.size == 0:
        return _Line(label, 0.0, rtol)
    if not (np.isfinite(diff).all()):
        return _Line(label, math.inf, rtol, int(np.argmax(~np.isfinite(diff).ravel())))
    worst = int(np.argmax(diff))
    error = float(diff.ravel()[worst]) / scale if scale > 0 else 0.0
    return _Line(label, error, rtol, worst)


def assert_vjp(vjp, inputs, params=None, **kwargs):
    """:func:`check_vjp`, raising ``AssertionError`` with the report when a check fails.

    Returns the report when all checks pass.
    """
    report = check_vjp(vjp, inputs, params, **kwargs)
    if not report.ok:
        raise AssertionError("\n" + str(report))
    return report
