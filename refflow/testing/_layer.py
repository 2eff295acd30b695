"""``check_layer``: every check of one named layer, and its JSON records."""

import numpy as np

from ._bijector import check_bijector
from ._common import RTOL_FD, RTOL_FLOAT32, RTOL_FLOAT32_GRAD, describe_exception
from ._report import LayerReport, VJPReport
from ._vjp import MAX_SWEEPS, check_vjp


def check_layer(library, name, forward, inverse, z, *, x=None, forward_vjp=None,
                inverse_vjp=None, params=None, functional=False, reproducer="",
                sum_log_det=False, reference=None, smooth=False, rng=0, max_elements=None,
                eps=None, rtol_round_trip=None, rtol_log_det=RTOL_FD, rtol_log_det_sum=None,
                rtol_grad=RTOL_FD, rtol_float32=RTOL_FLOAT32, rtol_float32_grad=RTOL_FLOAT32_GRAD,
                max_sweeps=MAX_SWEEPS):
    """Run every check on one named layer; the report gives JSON records for an audit.

    Parameters
    ----------
    library, name : str
        The layer's library and class, as the records name them (``"zuko"``, ``"NAF"``).
    forward, inverse : callable or None
        As in :func:`check_bijector` (``inverse=None``: forward-only). ``forward=None`` runs
        only the gradient checks.
    z : array_like of shape (batch, dim)
        Points in the domain of ``forward`` (float32 for a float32 layer, with ``reference``).
    x : array_like, optional
        Points in the domain of ``inverse``; default ``forward(z)``.
    forward_vjp, inverse_vjp : callable, optional
        Pullbacks as in :func:`check_vjp` (``functional`` selects the convention), checked at
        ``z`` and at ``x``.
    params : dict of array_like, optional
        Parameters of the pullbacks.
    reproducer : str
        What reproduces the layer (a code snippet, a test id); copied into every record.
    reference : dict, optional
        float64 twins of a float32 layer: any of ``"forward"``, ``"inverse"``,
        ``"forward_vjp"``, ``"inverse_vjp"``.
    rng : int
        Seeds the cotangents and samples.
    rtol_grad : float
        Tolerance of the gradients (``rtol`` of :func:`check_vjp`).
    sum_log_det, smooth, max_elements, eps, rtol_round_trip, rtol_log_det, rtol_log_det_sum, \
rtol_float32, rtol_float32_grad, max_sweeps
        Passed to :func:`check_bijector` / :func:`check_vjp`.

    Returns
    -------
    LayerReport
        ``verdict``, ``ok``, ``reports`` (``"bijector"``, ``"forward_vjp"``, ``"inverse_vjp"``
        as run), ``records()`` and ``to_json()``.

    Examples
    --------
    >>> import numpy as np
    >>> from refflow.testing import check_layer
    >>> fwd = lambda z: (np.sinh(z), np.log(np.cosh(z)).sum(axis=1))
    >>> inv = lambda x: (np.arcsinh(x), -0.5 * np.log1p(x ** 2).sum(axis=1))
    >>> report = check_layer("demo", "Sinh", fwd, inv, np.random.default_rng(0).normal(size=(4, 2)))
    >>> report.verdict
    'pass'
    >>> sorted(report.records()[0])
    ['check', 'class', 'library', 'reproducer', 'verdict', 'worst_error']
    """
    reference = {} if reference is None else dict(reference)
    unknown = set(reference) - {"forward", "inverse", "forward_vjp", "inverse_vjp"}
    if unknown:
        raise ValueError(f"check_layer: unknown reference keys {sorted(unknown)}")
    reports = {}
    z_arr = np.asarray(z)
    if forward is not None:
        twin = None
        if "forward" in reference:
            twin = (reference["forward"], reference.get("inverse"))
        reports["bijector"] = check_bijector(
            forward, inverse, z, x=x, eps=eps, rtol_round_trip=rtol_round_trip,
            rtol_log_det=rtol_log_det, rtol_log_det_sum=rtol_log_det_sum, sum_log_det=sum_log_det,
            reference=twin, rtol_float32=rtol_float32, smooth=smooth)
    options = dict(params=params, functional=functional, rng=rng, eps=eps, rtol=rtol_grad,
                   max_elements=max_elements, rtol_float32=rtol_float32,
                   rtol_float32_grad=rtol_float32_grad, smooth=smooth, max_sweeps=max_sweeps)
    if forward_vjp is not None:
        reports["forward_vjp"] = check_vjp(forward_vjp, z_arr, reference=reference.get("forward_vjp"),
                                           **options)
    if inverse_vjp is not None:
        points = x
        if points is None and forward is not None:
            try:
                points = np.asarray(forward(z_arr.copy())[0]).astype(z_arr.dtype)
            except Exception as exc:
                report = VJPReport([], [f"forward raised {describe_exception(exc)}"])
                reports["inverse_vjp"] = report
                points = None
        if points is None and "inverse_vjp" not in reports:
            raise ValueError("check_layer: inverse_vjp needs x (or forward to compute it)")
        if points is not None:
            reports["inverse_vjp"] = check_vjp(inverse_vjp, np.asarray(points),
                                               reference=reference.get("inverse_vjp"), **options)
    if not reports:
        raise ValueError("check_layer: nothing to check (give forward and/or a vjp)")
    return LayerReport(library, name, reports, reproducer)


def records(library, cls, reports, reproducer="", *, details=False):
    """JSON-able records ``{"library", "class", "check", "worst_error", "verdict",
    "reproducer"}`` of some reports, one per check (and one ``fail`` per contract problem).

    Parameters
    ----------
    library, cls : str
    reports : report or dict of reports
        A :class:`BijectorReport` / :class:`VJPReport`, or ``{part: report}`` (the part prefixes
        ``check``).
    reproducer : str
    details : bool
        Also ``tolerance``, ``note`` (the reason of a ``not-converged`` or ``skipped``) and
        ``where`` (worst row or element).

    Returns
    -------
    list of dict
        ``verdict`` is ``"pass"``, ``"fail"``, ``"not-converged"`` or ``"skipped"``;
        ``worst_error`` is a float, or ``None`` when it is not finite (JSON has no inf).
    """
    if isinstance(reports, dict):
        return LayerReport(library, cls, reports, reproducer).records(details=details)
    return reports.records(library, cls, reproducer, details=details)
