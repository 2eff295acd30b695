"""``refflow.train``: the long-standing import path of :mod:`refflow.training.loop`."""

from .training.loop import *  # noqa: F401,F403
from .training.loop import __all__  # noqa: F401
