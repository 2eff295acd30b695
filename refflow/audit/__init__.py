"""The oracle over a whole peer library: ``audit("zuko")``, ``python -m refflow audit zuko``.

For every bijector class a peer library exports (zuko, nflows, normflows, Pyro, FlowJAX,
distrax, TFP), :func:`audit` builds it with randomised parameters through the library's own
constructors (the recipes of :mod:`refflow.audit.recipes`: several sizes, options, points on
and beyond a spline's bound, wide points, near-singular matrices), wraps it as NumPy callables
(:func:`refflow.testing.from_torch`, :func:`refflow.testing.from_jax`) and runs
:func:`refflow.testing.check_layer` on it in float64 and float32 (float32 against the float64
twin). A class it does not build (abstract, not a bijector, a re-export of another package, no
recipe yet, a constructor that raised) is a ``skipped`` row with the reason, never left out.
torch and JAX are imported only inside functions.

Examples
--------
>>> from refflow.audit import audit
>>> report = audit("nflows", only=["LULinear"], sizes=(2,), dtypes=("float64",))  # doctest: +SKIP
>>> report.ok, [r.verdict for r in report.rows]                                    # doctest: +SKIP
(True, ['pass', 'pass'])
"""

from .catalogue import MODULES, LibraryMissing, catalogue
from .core import DTYPES, SIZES, AuditReport, Row, audit, register, unregister

#: The libraries the audit knows.
LIBRARIES = tuple(MODULES)

__all__ = ["audit", "AuditReport", "Row", "register", "unregister", "catalogue",
           "LibraryMissing", "LIBRARIES", "DTYPES", "SIZES"]
