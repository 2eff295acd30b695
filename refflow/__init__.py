"""refflow: reference normalizing flows in plain NumPy.

Every bijector has an explicit ``forward`` (base ``z`` -> data ``x``), ``inverse``, an analytic
log-determinant both ways and a hand-derived pullback both ways. ``refflow.testing`` holds the
oracle that checks them (finite-difference Jacobians, ``slogdet``) and works on any callables.
"""

from . import datasets, nn, params, testing
from .bijectors import (
    ActNorm, AdditiveCoupling, Affine, AffineCoupling, BatchNorm, Bijector, Chain, Exp,
    Householder, Inverse, LeakyReLU, Logit, LULinear, MaskedAffineAutoregressive,
    MatrixExponential, Rotation, TriangularAffine,
    MaskedSplineAutoregressive, Permute, Planar, Radial, RationalQuadraticSpline, Reverse,
    CircularSpline, LinearRationalSpline,
    Sigmoid, Softplus, SplineCoupling, Sylvester, Tanh,
)
from .bijectors import (
    BernsteinAutoregressive, MaskedMonotonicAutoregressive, NeuralAutoregressive,
    SumOfSquaresAutoregressive, UnconstrainedMonotonicAutoregressive,
)
from .bijectors import BlockNeuralAutoregressive, Gaussianization
from .bijectors import LeakyTanh, Softclip
from .splines import rational_quadratic_spline, rational_quadratic_spline_vjp
from .distributions import (
    DiagGaussianMixture, DiagNormal, DiagStudentTMixture, Flow, StandardNormal, StudentT, Uniform,
)
from .training import (SGD, Adam, CosineAnnealing, History, ReduceOnPlateau, TrainingDiverged,
                       clip_grad_norm, fit)
from .flows import (BUILDERS, BPF, MAF, NAF, NCSF, NSF, SOSPF, UNAF, Glow, PlanarFlow, RadialFlow,
                    RealNVP, SylvesterFlow)
from .estimator import FlowDensity
from . import data, flows, io, optim, train, training, variational
from .io import load, save

from ._version import __version__ as __version__  # re-exported (not in __all__)

__all__ = [
    # contract and containers
    "Bijector", "Chain", "Inverse",
    # elementwise
    "Affine", "Exp", "Sigmoid", "Logit", "Tanh", "Softplus", "LeakyReLU", "Softclip",
    "LeakyTanh",
    # linear
    "Permute", "Reverse", "LULinear", "Householder", "MatrixExponential", "Rotation",
    "TriangularAffine",
    # normalization
    "ActNorm", "BatchNorm",
    # coupling and autoregressive (conditioners in refflow.nn)
    "AdditiveCoupling", "AffineCoupling", "MaskedAffineAutoregressive",
    # Rezende & Mohamed family
    "Planar", "Radial", "Sylvester",
    # monotone-network transformers (numerical inverses)
    "BlockNeuralAutoregressive", "Gaussianization",
    # splines
    "RationalQuadraticSpline", "CircularSpline", "SplineCoupling", "MaskedSplineAutoregressive",
    "LinearRationalSpline",
    "rational_quadratic_spline", "rational_quadratic_spline_vjp",
    # monotone-network and polynomial transformers (numerical inverses)
    "NeuralAutoregressive", "MaskedMonotonicAutoregressive",
    "UnconstrainedMonotonicAutoregressive", "SumOfSquaresAutoregressive",
    "BernsteinAutoregressive",
    # distributions, flows, training
    "StandardNormal", "DiagNormal", "Uniform", "StudentT", "DiagGaussianMixture",
    "DiagStudentTMixture", "Flow",
    # training
    "Adam", "SGD", "CosineAnnealing", "ReduceOnPlateau", "clip_grad_norm", "fit", "History",
    "TrainingDiverged",
    # builders and the estimator
    "RealNVP", "MAF", "NSF", "NCSF", "Glow", "PlanarFlow", "RadialFlow", "SylvesterFlow", "BUILDERS",
    "NAF", "UNAF", "SOSPF", "BPF",
    "FlowDensity",
    # save and load (model files hold arrays and JSON only)
    "save", "load",
    # submodules
    "testing", "data", "datasets", "params", "nn", "io", "training", "optim", "train", "variational",
    "flows",
]
