"""refflow: reference normalizing flows in plain NumPy.

Every bijector has an explicit ``forward`` (base ``z`` -> data ``x``), ``inverse``, an analytic
log-determinant both ways and a hand-derived pullback both ways. ``refflow.testing`` holds the
oracle that checks them (finite-difference Jacobians, ``slogdet``) and works on any callables.
"""

from .bijectors import (
    ActNorm, Affine, BatchNorm, Bijector, Chain, Exp, Householder, Inverse, LeakyReLU, Logit,
    LULinear, Permute, Reverse, Sigmoid, Softplus, Tanh,
)

__version__ = "0.1.0"

__all__ = [
    "Bijector", "Chain", "Inverse",
    "Affine", "Exp", "Sigmoid", "Logit", "Tanh", "Softplus", "LeakyReLU",
    "Permute", "Reverse", "LULinear", "Householder",
    "ActNorm", "BatchNorm",
]
