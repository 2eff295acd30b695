"""refflow as an oracle for other flow libraries: import a peer's model, compare it with refflow.

- :func:`from_zuko` (:mod:`refflow.interop.zuko`), :func:`from_nflows`
  (:mod:`refflow.interop.nflows`), :func:`from_flowjax` (:mod:`refflow.interop.flowjax`),
  :func:`from_normflows` (:mod:`refflow.interop.normflows`) and :func:`from_pyro`
  (:mod:`refflow.interop.pyro`) build the refflow :class:`~refflow.Flow` that computes exactly
  what the peer's model computes, with the same weights (as float64), masks, parameter maps and
  direction. A peer layer whose refflow twin does not exist yet raises ``NotImplementedError``
  naming it; an option refflow cannot reproduce raises ``ValueError``.
- :func:`compare` (zuko, nflows, normflows, Pyro and FlowJAX models) evaluates both on the same
  points: per-sample log-prob differences and, per peer parameter, the difference between the
  peer's autograd (torch) or ``jax.grad`` (FlowJAX) gradient of the mean log-prob and refflow's
  hand-derived one; :func:`assert_matches` is its
  assert-style twin.

The peer libraries (torch, zuko, nflows, JAX, FlowJAX, normflows, Pyro) are imported inside the
functions only: ``import refflow`` never needs them.
"""

from .compare import ComparisonReport, assert_matches, compare
from .distrax import from_distrax
from .flowjax import from_flowjax
from .nflows import from_nflows
from .normflows import from_normflows
from .pyro import from_pyro
from .tfp import from_tfp
from .zuko import from_zuko

__all__ = ["from_zuko", "from_nflows", "from_flowjax", "from_normflows", "from_pyro", "compare",
           "assert_matches", "ComparisonReport"]
__all__ += ["from_distrax", "from_tfp"]
