"""Placeholder: being written (ActNorm, BatchNorm)."""
from .base import Bijector
__all__ = ["ActNorm", "BatchNorm"]
class ActNorm(Bijector): pass
class BatchNorm(Bijector): pass
