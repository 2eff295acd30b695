"""``refflow.optim``: the long-standing import path of :mod:`refflow.training.optim`."""

from .training.optim import *  # noqa: F401,F403
from .training.optim import __all__  # noqa: F401
