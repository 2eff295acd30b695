"""The registry of every public bijector lives in the package (``refflow._cases``) so that
``python -m refflow demo`` runs the same cases as the test suite; this module re-exports it."""

from refflow._cases import CASES, oracle_reports  # noqa: F401
