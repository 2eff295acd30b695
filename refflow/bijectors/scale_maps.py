r"""Scale maps by name: how an unconstrained conditioner output ``u`` becomes a positive scale.

Affine coupling and masked affine autoregressive layers compute ``log_scale = l(u)`` and use
``scale = exp(log_scale)``; each published convention is a choice of ``l``:

==============  =======================================  =========================================
name            ``scale`` (and ``log_scale = l(u)``)      used by
==============  =======================================  =========================================
``"exp"``       ``exp(u)``, ``l(u) = u``                  MAF paper (raw ``alpha``), RealNVP paper,
                                                          TFP ``MaskedAutoregressiveFlow``
``"softplus"``  ``softplus(u) + 1e-3``                    nflows ``MaskedAffineAutoregressiveTransform``
``"sigmoid"``   ``sigmoid(u + 2) + 1e-3``                 nflows ``AffineCouplingTransform`` default
``"softclip"``  ``exp(u / (1 + |u / ln 1e-3|))``          zuko ``MonotonicAffineTransform``
                                                          (log-scale in ``(-6.91, 6.91)``)
``"tanh"``      ``exp(2 tanh(u / 2))``                    a tanh-bounded log-scale, FrEIA's
                                                          ``'TANH'`` clamp with ``clamp = 2``
==============  =======================================  =========================================

Each map returns ``log_scale`` and its derivative ``d log_scale / du`` (for the pullbacks):

- exp: ``1``
- softplus: ``sigmoid(u) / (softplus(u) + 1e-3)``
- sigmoid: ``s (1 - s) / (s + 1e-3)`` with ``s = sigmoid(u + 2)``
- softclip: ``1 / (1 + |u| / c)^2`` with ``c = -ln 1e-3``
- tanh: ``1 - tanh(u / 2)^2``

Every form is finite for any finite ``u`` (``softplus(u) = logaddexp(0, u)`` and
``log_expit`` do not overflow), so nothing overflows for ``|u|`` up to 1e3 and beyond.

Note on directions: refflow's layers multiply by the scale in the *sampling* direction
(``x = z * scale + shift``), as the MAF paper and TFP do. nflows and zuko multiply in the
density direction (``z = x * scale + shift``); with the same scale map, their scale is the
reciprocal of refflow's.
"""

import math

import numpy as np
from scipy.special import expit, log_expit

__all__ = ["SCALE_MAPS", "get_scale_map"]

_FLOOR = 1e-3
_LOG_FLOOR = math.log(_FLOOR)
_SOFTCLIP = -math.log(1e-3)  # zuko's bound on |log_scale|: |ln 1e-3| = 6.9078
_TANH_CLAMP = 2.0


def _exp(u):
    return u.copy(), np.ones_like(u)


def _softplus(u):
    sp = np.logaddexp(0.0, u)  # never overflows; its log needs no special form
    return np.log(sp + _FLOOR), expit(u) / (sp + _FLOOR)


def _sigmoid(u):
    s = expit(u + 2.0)
    # log(s + floor) = logaddexp(log s, log floor): stays accurate where s underflows
    log_scale = np.logaddexp(log_expit(u + 2.0), u.dtype.type(_LOG_FLOOR))
    return log_scale, s * expit(-(u + 2.0)) / (s + _FLOOR)


def _softclip(u):
    d = 1.0 + np.abs(u) / _SOFTCLIP
    return u / d, 1.0 / (d * d)


def _tanh(u):
    t = np.tanh(u / _TANH_CLAMP)
    return _TANH_CLAMP * t, 1.0 - t * t


SCALE_MAPS = {"exp": _exp, "softplus": _softplus, "sigmoid": _sigmoid, "softclip": _softclip,
              "tanh": _tanh}


def get_scale_map(name, where="scale"):
    """The map ``u -> (log_scale, d log_scale / du)`` named ``name``; ValueError if unknown."""
    if not isinstance(name, str) or name not in SCALE_MAPS:
        raise ValueError(f"{where}: scale must be one of {sorted(SCALE_MAPS)}, got {name!r}")
    return SCALE_MAPS[name]
