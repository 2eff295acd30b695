"""Placeholder: being written (Permute, Reverse, LULinear, Householder)."""
from .base import Bijector
__all__ = ["Permute", "Reverse", "LULinear", "Householder"]
class Permute(Bijector): pass
class Reverse(Bijector): pass
class LULinear(Bijector): pass
class Householder(Bijector): pass
