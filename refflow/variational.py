"""``refflow.variational``: the long-standing import path of :mod:`refflow.training.variational`."""

from .training.variational import *  # noqa: F401,F403
from .training.variational import __all__  # noqa: F401
