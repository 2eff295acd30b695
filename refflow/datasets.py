"""The data sets, under their long-standing import path: everything in :mod:`refflow.data`.

>>> from refflow.datasets import two_moons
>>> two_moons(3, rng=0).shape
(3, 2)
"""

from .data import *  # noqa: F401,F403
from .data import __all__  # noqa: F401
