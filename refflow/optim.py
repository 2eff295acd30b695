"""Optimizers that update a parameter dict in place.

Examples
--------
Minimise ``|p - 3|^2``:

>>> import numpy as np
>>> from refflow.optim import Adam
>>> params = {"p": np.zeros(2)}
>>> opt = Adam(params, lr=0.1)
>>> for _ in range(300):
...     opt.step({"p": 2.0 * (params["p"] - 3.0)})
>>> np.allclose(params["p"], 3.0, atol=1e-3)
True
"""

import math
import numbers

import numpy as np

__all__ = ["Adam"]


def _positive(value, name, where, upper=None):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{where}: {name} must be a finite number, got {value!r}")
    if value <= 0 or (upper is not None and value >= upper):
        bound = f"in (0, {upper})" if upper is not None else "positive"
        raise ValueError(f"{where}: {name} must be {bound}, got {value}")
    return float(value)


class Adam:
    """Adam (Kingma & Ba 2015) on a dict of float64 arrays, updated in place.

    Parameters
    ----------
    params : mapping of str to ndarray
        E.g. ``flow.params``; the arrays are written in place, so the layers that own them see
        the update at their next call.
    lr : float, default 1e-3
    betas : (float, float), default (0.9, 0.999)
    eps : float, default 1e-8

    Notes
    -----
    With gradient ``g`` at step ``t``::

        m = b1 m + (1 - b1) g,   v = b2 v + (1 - b2) g^2
        p -= lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)

    ``step`` checks every gradient (keys, shapes, finiteness) before it changes anything, so a
    bad gradient raises ``ValueError`` and leaves parameters and optimizer state as they were.

    References
    ----------
    Kingma, Ba, "Adam: A Method for Stochastic Optimization", 2015, arXiv:1412.6980.
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8):
        self.params = params
        self.lr = _positive(lr, "lr", "Adam")
        try:
            b1, b2 = betas
        except (TypeError, ValueError):
            raise ValueError(f"Adam: betas must be a pair, got {betas!r}") from None
        self.betas = (_beta(b1, "Adam"), _beta(b2, "Adam"))
        self.eps = _positive(eps, "eps", "Adam")
        self.t = 0
        self.m = {k: np.zeros(np.shape(v)) for k, v in params.items()}
        self.v = {k: np.zeros(np.shape(v)) for k, v in params.items()}

    def step(self, grads):
        """Apply one update from ``grads`` (same keys and shapes as ``params``)."""
        if set(grads) != set(self.params):
            missing = sorted(set(self.params) - set(grads))
            extra = sorted(set(grads) - set(self.params))
            raise ValueError(f"Adam.step: gradient keys differ (missing {missing}, unexpected {extra})")
        checked = {}
        for key, g in grads.items():
            g = np.asarray(g, dtype=np.float64)
            if g.shape != np.shape(self.params[key]):
                raise ValueError(
                    f"Adam.step: gradient {key!r} has shape {g.shape}, expected {np.shape(self.params[key])}"
                )
            if not np.isfinite(g).all():
                raise ValueError(f"Adam.step: gradient {key!r} is not finite; nothing was updated")
            checked[key] = g
        b1, b2 = self.betas
        self.t += 1
        c1, c2 = 1.0 - b1 ** self.t, 1.0 - b2 ** self.t
        for key, g in checked.items():
            m, v = self.m[key], self.v[key]
            m *= b1
            m += (1.0 - b1) * g
            v *= b2
            v += (1.0 - b2) * g * g
            self.params[key][...] -= self.lr * (m / c1) / (np.sqrt(v / c2) + self.eps)


def _beta(value, where):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (0.0 <= value < 1.0):
        raise ValueError(f"{where}: each beta must lie in [0, 1), got {value!r}")
    return float(value)
