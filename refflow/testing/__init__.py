"""The oracle: check a bijector and its pullbacks against finite differences and ``slogdet``.

These are the checks refflow runs on itself, public so that anyone can run them on their own
layers. They take plain callables on NumPy arrays, so a PyTorch, JAX or NumPy layer is checked to
the same standard; :func:`from_torch` and :func:`from_jax` do the wrapping.

======================  =============================================================================
``check_bijector``      round trips both ways (tolerance scaled by conditioning), log-dets vs
                        ``slogdet`` of the FD Jacobian, ``fwd + inv = 0``; ``inverse=None`` for a
                        forward-only layer, ``reference=`` for a float32 layer
``check_vjp``           a pullback vs finite differences, for the inputs and every parameter element
                        (in place, or ``functional=True`` with ``fn(params, *inputs)``)
``check_layer``         both, for a named layer: a :class:`LayerReport` with JSON ``records``
``assert_bijector``     ``check_bijector`` that raises ``AssertionError`` with the report
``assert_vjp``          ``check_vjp`` that raises ``AssertionError`` with the report
``jacobian_fd``         central finite-difference Jacobian per sample, ``(batch, d_out, d_in)``
``from_torch``          a torch module (or any call on it) as NumPy callables and a functional vjp
``from_jax``            a JAX function ``f(params, *inputs)`` likewise, jitted, in float64
``to_json``             JSON text of reports or records
======================  =============================================================================

Verdicts
--------
Every check ends ``pass``, ``fail``, ``not-converged`` or ``skipped``. Derivatives start as
central differences with one Richardson extrapolation, ``D = (4 D(h/2) - D(h)) / 3``, at the
relative step ``h = eps^(1/3) max(|v|, s)`` (``s = 1`` for inputs, the array's RMS for a
parameter array). Where that disagrees with the analytic value, a sweep of 31 steps (about 6e-3
down to 6e-12 relative) decides: ``fail`` only when the sweep converges away from the analytic
value (or finds the map discontinuous), ``not-converged`` with the two best estimates when finite
differences cannot decide (a kink, a steep or a noisy region, a numerical inverse's finite
resolution). ``skipped``: a check that does not apply (no inverse; float32 without a float64
twin).

Errors are relative, ``|a - b| / max(1, |b|)`` for values and log-dets (so values near zero are
compared absolutely), and normwise ``max_i |a_i - b_i| / max_i |b_i|`` for gradients. Each check
has its own tolerance (:data:`RTOL_ROUND_TRIP`, :data:`RTOL_FD`, :data:`RTOL_LOG_DET_SUM`,
:data:`RTOL_FLOAT32`, ...); a round trip's is raised by the row's conditioning
(:data:`COND_ULPS`).

Examples
--------
Check a hand-written layer given only as two functions (here ``x = 2 z + 1``, with a planted
bug in the inverse log-det sign):

>>> import numpy as np
>>> from refflow.testing import check_bijector
>>> fwd = lambda z: (2 * z + 1, np.full(len(z), z.shape[1] * np.log(2.0)))
>>> inv = lambda x: ((x - 1) / 2, np.full(len(x), x.shape[1] * np.log(2.0)))  # wrong sign
>>> report = check_bijector(fwd, inv, np.random.default_rng(0).normal(size=(5, 3)))
>>> report.ok, report.verdict
(False, 'fail')
>>> [line.label for line in report.lines if not line.ok]
['log_det inverse vs FD', 'log_det fwd + inv']
>>> print(report)  # doctest: +SKIP
check_bijector: FAILED (2 fail)
  check                         error     tolerance  verdict        row       note
  round trip z -> x -> z        0         1e-10      pass           0         cond 0.5
  round trip x -> z -> x        0         1e-10      pass           0         cond 2
  log_det forward vs FD         2.33e-12  1e-06      pass           2         cond 1
  log_det inverse vs FD         2.00e+00  1e-06      FAIL           0         cond 1; FD log-det -2.07944 (spread 2e-15) vs analytic 2.07944
  log_det fwd + inv             2.00e+00  1e-10      FAIL           0

And a pullback, against finite differences of ``<x_bar, x> + <log_det_bar, log_det>``:

>>> from refflow import Affine
>>> from refflow.testing import assert_vjp
>>> layer = Affine(3)
>>> layer.params["log_scale"] = [0.1, -0.2, 0.3]
>>> report = assert_vjp(layer.forward_vjp, np.ones((4, 3)), layer.params, rng=0)
>>> report.ok
True

The same pullback in the functional form, where the check copies and perturbs the parameters
itself (how a JAX or torch layer is wrapped):

>>> from refflow.testing import check_vjp
>>> def fn(params, z):
...     scale = np.exp(params["log_scale"])
...     x, log_det = z * scale, np.full(len(z), params["log_scale"].sum())
...     def pullback(x_bar, log_det_bar):
...         grads = {"log_scale": (x_bar * x).sum(axis=0) + log_det_bar.sum()}
...         return x_bar * scale, grads
...     return x, log_det, pullback
>>> check_vjp(fn, np.ones((4, 3)), {"log_scale": np.array([0.1, -0.2, 0.3])},
...           functional=True, rng=0).verdict
'pass'
"""

from ._adapters import from_jax, from_torch
from ._bijector import assert_bijector, check_bijector, jacobian_fd
from ._common import (
    COND_ULPS, RTOL_FD, RTOL_FLOAT32, RTOL_FLOAT32_GRAD, RTOL_LOG_DET_SUM, RTOL_ROUND_TRIP,
    RTOL_ROUND_TRIP_FLOAT32,
)
from ._layer import check_layer, records
from ._report import BijectorReport, LayerReport, VJPReport, to_json
from ._vjp import assert_vjp, check_vjp

__all__ = [
    "jacobian_fd", "check_bijector", "assert_bijector", "check_vjp", "assert_vjp",
    "check_layer", "records", "to_json", "from_torch", "from_jax",
    "BijectorReport", "VJPReport", "LayerReport",
    "RTOL_ROUND_TRIP", "RTOL_FD", "RTOL_LOG_DET_SUM", "RTOL_ROUND_TRIP_FLOAT32", "RTOL_FLOAT32",
    "RTOL_FLOAT32_GRAD", "COND_ULPS",
]
