r"""Numerically stable elementwise functions shared by the layers (NumPy; no numba here).

===================  ==============================================  ========================
function             value                                           evaluated as
===================  ==============================================  ========================
``softplus(x)``      ``log(1 + e^x)``                                ``logaddexp(0, x)``
``sigmoid(x)``       ``1 / (1 + e^-x)``                              ``scipy.special.expit``
``log_sigmoid(x)``   ``log sigmoid(x) = -softplus(-x)``              ``scipy.special.log_expit``
``log_softplus(x)``  ``log(softplus(x))``, finite for finite ``x``   see the function
``log1mexp(x)``      ``log(1 - e^-x)`` for ``x > 0``                 Maechler (2012)
===================  ==============================================  ========================

None overflows or warns for ``|x|`` up to 1e3 and beyond; each keeps the dtype of an array
argument (float32 stays float32) and returns float64 for Python numbers.

References
----------
Maechler, "Accurately computing log(1 - exp(-|a|)), assessed by the Rmpfr package", 2012.

Examples
--------
>>> import numpy as np
>>> from refflow._math import softplus, log_softplus
>>> softplus(np.array([-1e3, 0.0, 1e3])).tolist()
[0.0, 0.6931471805599453, 1000.0]
>>> float(log_softplus(-800.0))          # softplus(-800) underflows; its log does not
-800.0
"""

import math

import numpy as np
from scipy.special import expit, log_expit

__all__ = ["softplus", "softplus_inverse", "sigmoid", "log_sigmoid", "log_softplus", "log1mexp",
           "logsumexp_rows"]

_LN2 = math.log(2.0)

#: ``sigmoid(x) = 1 / (1 + e^-x)`` without overflow (``scipy.special.expit``).
sigmoid = expit

#: ``log sigmoid(x) = -softplus(-x)`` without overflow (``scipy.special.log_expit``).
log_sigmoid = log_expit


def softplus(x):
    """``log(1 + e^x)`` without overflow: NumPy's ``logaddexp(0, x)``."""
    return np.logaddexp(0.0, x)


def softplus_inverse(y):
    """``softplus^-1(y) = log(e^y - 1) = y + log(-expm1(-y))`` for ``y > 0``, without overflow
    for large ``y`` (where it tends to ``y``)."""
    return y + np.log(-np.expm1(-y))


def log_softplus(x):
    """``log(softplus(x))`` in float64, finite for every finite ``x``.

    ``softplus(x)`` underflows below about -745, so below ``x = -30`` it is taken as
    ``x + log1p(-exp(x)/2)``, whose omitted term ``O(exp(2x))`` is below 1e-26 there.
    """
    x = np.asarray(x, dtype=np.float64)
    low = x < -30.0
    with np.errstate(divide="ignore"):
        return np.where(low, x + np.log1p(-0.5 * np.exp(np.minimum(x, -30.0))),
                        np.log(softplus(np.maximum(x, -30.0))))


def log1mexp(x):
    """``log(1 - exp(-x))`` for ``x > 0``, accurate everywhere (Maechler 2012):
    ``log(-expm1(-x))`` for ``x <= log 2``, where ``1 - e^{-x}`` is small, and
    ``log1p(-exp(-x))`` beyond. ``x`` is an array."""
    out = np.empty_like(x)
    big = x > _LN2
    out[big] = np.log1p(-np.exp(-x[big]))
    out[~big] = np.log(-np.expm1(-x[~big]))
    return out


def logsumexp_rows(a):
    """``log sum_k exp(a[n, k])`` of each row of a 2-D array, in its dtype, without overflow:
    ``m + log(sum_k exp(a - m))`` with ``m`` the row's maximum (0 for a row with no finite
    maximum, so that a row of ``-inf`` gives ``-inf``). scipy's ``logsumexp(a, axis=1)``
    without its generic checks, which cost more than the sum on the small arrays of a
    training step."""
    m = a.max(axis=1)
    m = np.where(np.isfinite(m), m, 0.0).astype(a.dtype)
    with np.errstate(divide="ignore"):
        return m + np.log(np.exp(a - m[:, None]).sum(axis=1))

