"""Tolerances and small helpers shared by the oracle's checks."""

import numpy as np

#: Round trips in float64: a few ulps per operation through a stack of layers; 1e-10 leaves
#: room for ill-conditioned layers yet catches any wrong inverse. Scaled up by the row's
#: conditioning (``COND_ULPS``) where that explains more.
RTOL_ROUND_TRIP = 1e-10
#: Analytic quantities vs central differences: the FD error is about ``eps^(2/3) ~ 4e-11``
#: relative for smooth maps, so 1e-6 leaves room for conditioning while catching any wrong term
#: (a wrong term is an O(1) relative error).
RTOL_FD = 1e-6
#: ``forward log_det(z) + inverse log_det(forward(z))`` in float64: two analytic sums of ``dim``
#: terms each, a few ulps apiece, and the rounding of ``x`` moving the inverse's log-det.
RTOL_LOG_DET_SUM = 1e-10
#: A round trip moves the rounding of the intermediate point (``eps |x|``) by the inverse's
#: Jacobian: the tolerance of a row is at least ``COND_ULPS eps ||J^-1|| max(1, |x|) /
#: max(1, |z|)``; 100 ulps covers the forward pass's own rounding and the inverse's.
COND_ULPS = 100.0
#: float32 round trips and log-det sums: eps32 = 1.2e-7, times ~100 ulps of a few layers.
RTOL_ROUND_TRIP_FLOAT32 = 1e-5
#: float32 outputs and log-dets against their float64 twin: ~1e3 ulps of float32 (sums of
#: hundreds of terms in a network's matrix products, exp and log).
RTOL_FLOAT32 = 1e-4
#: float32 gradients against the float64 twin's (normwise): backpropagation through the same
#: network compounds the forward pass's rounding once more. The error is measured relative to
#: the larger of the twin gradient's size and the size of the terms it sums (measured with
#: :data:`TWIN_TERMS_PROBES`), since float32 rounds the terms, not only their sum.
RTOL_FLOAT32_GRAD = 1e-3
#: Random sign flips of the cotangents used to measure the terms a float32 gradient sums
#: (``sum_i u_i J_ij``, each rounded by float32): the float64 twin's pullbacks of ``sigma * u``
#: have mean square ``sum_i (u_i J_ij)^2``, so their rms is the size of the terms even where they
#: cancel (a Householder vector's gradient can be 1e-5 of them); 4 probes estimate it within a
#: factor ~2, plenty for a scale.
TWIN_TERMS_PROBES = 4

_EPS64 = np.finfo(np.float64).eps


def is_low_precision(dtype):
    """True for float dtypes coarser than float64 (float32, float16)."""
    dtype = np.dtype(dtype)
    return dtype.kind == "f" and np.finfo(dtype).eps > _EPS64


def as_points(v, name, *, keep_float32=True):
    """``(batch, dim)`` copy of ``v``: float64, or float32 when ``v`` is float32."""
    arr = np.asarray(v)
    dtype = np.float32 if keep_float32 and arr.dtype == np.float32 else np.float64
    x = np.array(arr, dtype=dtype, copy=True)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2:
        raise ValueError(f"{name} must have shape (batch, dim), got {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} must be finite")
    return x


def describe_exception(exc):
    """``"TypeError: first line of the message"`` (at most 240 characters)."""
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    out = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    return out if len(out) <= 240 else out[:237] + "..."


def rel_rows(a, b):
    """Per-row max of ``|a - b| / max(1, |b|)`` (NaN counts as inf)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    with np.errstate(all="ignore"):
        err = np.abs(a - b) / np.maximum(1.0, np.abs(b))
    err = np.where(np.isnan(err), np.inf, err)
    return err.reshape(err.shape[0], -1).max(axis=1) if err.ndim > 1 else err
