"""Bijectors, one module per family. ``forward`` maps base to data, ``x = T(z)``."""

from ..io.spec import register
from .base import Bijector, Chain, Inverse
from .elementwise import Affine, Exp, LeakyReLU, Logit, Sigmoid, Softplus, Tanh
from .autoregressive import MaskedAffineAutoregressive
from .block_neural import BlockNeuralAutoregressive
from .coupling import AdditiveCoupling, AffineCoupling
from .gaussianization import Gaussianization
from .linear import Householder, LULinear, Permute, Reverse
from .linear_maps import MatrixExponential, Rotation, TriangularAffine
from .linear_rational import LinearRationalSpline
from .normalization import ActNorm, BatchNorm
from .planar import Planar, Radial, Sylvester
from .splines import (CircularSpline, MaskedSplineAutoregressive, RationalQuadraticSpline,
                      SplineCoupling)
from .neural import (MaskedMonotonicAutoregressive, NeuralAutoregressive,
                     UnconstrainedMonotonicAutoregressive)
from .polynomial import BernsteinAutoregressive, SumOfSquaresAutoregressive
from .leaky_tanh import LeakyTanh
from .softclip import Softclip

__all__ = [
    "Bijector", "Chain", "Inverse",
    "Affine", "Exp", "Sigmoid", "Logit", "Tanh", "Softplus", "LeakyReLU",
    "Permute", "Reverse", "LULinear", "Householder",
    "MatrixExponential", "Rotation", "TriangularAffine",
    "ActNorm", "BatchNorm",
    "Planar", "Radial", "Sylvester",
    "AdditiveCoupling", "AffineCoupling", "MaskedAffineAutoregressive",
    "RationalQuadraticSpline", "CircularSpline", "SplineCoupling", "MaskedSplineAutoregressive",
    "LinearRationalSpline",
    "BlockNeuralAutoregressive", "Gaussianization",
    "NeuralAutoregressive", "MaskedMonotonicAutoregressive",
    "UnconstrainedMonotonicAutoregressive", "SumOfSquaresAutoregressive",
    "BernsteinAutoregressive", "Softclip", "LeakyTanh",
]

# The allow-list of model files: every public bijector (refflow.io.spec).
register(*(globals()[name] for name in __all__ if name != "Bijector"))
