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
reciprocal of refflow's. The layers' ``scale_side`` option chooses, and :func:`affine_map`
gives the elementwise formula of each direction:

==================  ==========================  ==========================
``scale_side``      ``forward`` (z -> x)        ``inverse`` (x -> z)
==================  ==========================  ==========================
``"sampling"``      :func:`affine_multiply`     :func:`affine_divide`
``"density"``       :func:`affine_divide`       :func:`affine_multiply`
==================  ==========================  ==========================

with, elementwise (``l = l(u)``, ``l' = dl/du``; ``v`` the input, ``y`` the output, row
log-dets summed over the last axis)::

    multiply   y = v e^l + t,        log_det =  sum l
               v_bar = y_bar e^l,    t_bar =  y_bar,   u_bar = (y_bar v e^l + log_det_bar) l'
    divide     y = (v - t) e^-l,     log_det = -sum l
               v_bar = y_bar e^-l,   t_bar = -v_bar,   u_bar = (-y_bar y - log_det_bar) l'

(from ``dy = e^l (dv + v dl) + dt`` and ``dy = e^-l (dv - dt) - y dl``).
"""

import math

import numpy as np

from .._math import log_sigmoid, sigmoid, softplus

__all__ = ["SCALE_MAPS", "get_scale_map", "affine_map", "affine_multiply", "affine_divide",
           "affine_value"]

_FLOOR = 1e-3
_LOG_FLOOR = math.log(_FLOOR)
_SOFTCLIP = -math.log(1e-3)  # zuko's bound on |log_scale|: |ln 1e-3| = 6.9078
_TANH_CLAMP = 2.0


def _exp(u):
    return u.copy(), np.ones_like(u)


def _softplus_scale(u):
    sp = softplus(u)  # never overflows; its log needs no special form
    return np.log(sp + _FLOOR), sigmoid(u) / (sp + _FLOOR)


def _sigmoid_scale(u):
    s = sigmoid(u + 2.0)
    # log(s + floor) = logaddexp(log s, log floor): stays accurate where s underflows
    log_scale = np.logaddexp(log_sigmoid(u + 2.0), u.dtype.type(_LOG_FLOOR))
    return log_scale, s * sigmoid(-(u + 2.0)) / (s + _FLOOR)


def _softclip(u):
    d = 1.0 + np.abs(u) / _SOFTCLIP
    return u / d, 1.0 / (d * d)


def _tanh(u):
    t = np.tanh(u / _TANH_CLAMP)
    return _TANH_CLAMP * t, 1.0 - t * t


SCALE_MAPS = {"exp": _exp, "softplus": _softplus_scale, "sigmoid": _sigmoid_scale,
              "softclip": _softclip, "tanh": _tanh}


def get_scale_map(name, where="scale"):
    """The map ``u -> (log_scale, d log_scale / du)`` named ``name``; ValueError if unknown."""
    if not isinstance(name, str) or name not in SCALE_MAPS:
        raise ValueError(f"{where}: scale must be one of {sorted(SCALE_MAPS)}, got {name!r}")
    return SCALE_MAPS[name]


def affine_multiply(v, shift, log_scale, dlog_scale, vjp, out=None):
    """``y = v e^l + t`` elementwise, ``log_det = sum_j l_j`` over the last axis (module
    docstring), and when ``vjp`` its pullback ``(y_bar, log_det_bar) -> (v_bar, t_bar, u_bar)``.

    ``out``, if given, is returned as ``y`` instead (the masked autoregressive layers' sampler
    computes ``y`` itself); the pullback does not read ``y``.
    """
    scale = np.exp(log_scale)
    vs = v * scale  # dy/dl, a residual of the pullback
    y = vs + shift if out is None else out
    log_det = log_scale.sum(axis=-1)
    if not vjp:
        return y, log_det, None

    def pullback(y_bar, log_det_bar):
        return y_bar * scale, y_bar, (y_bar * vs + log_det_bar[..., None]) * dlog_scale

    return y, log_det, pullback


def affine_divide(v, shift, log_scale, dlog_scale, vjp, out=None):
    """``y = (v - t) e^-l`` elementwise, ``log_det = -sum_j l_j`` over the last axis, and when
    ``vjp`` its pullback ``(y_bar, log_det_bar) -> (v_bar, t_bar, u_bar)``.

    ``out``, if given, is returned as ``y`` (and read by the pullback, ``dy/dl = -y``) instead
    of the value computed here.
    """
    inv_scale = np.exp(-log_scale)
    y = (v - shift) * inv_scale if out is None else out
    log_det = -log_scale.sum(axis=-1)
    if not vjp:
        return y, log_det, None

    def pullback(y_bar, log_det_bar):
        v_bar = y_bar * inv_scale
        return v_bar, -v_bar, (-y_bar * y - log_det_bar[..., None]) * dlog_scale

    return y, log_det, pullback


def affine_map(direction, scale_side):
    """:func:`affine_multiply` or :func:`affine_divide`: the formula of ``direction``
    (``"forward"`` or ``"inverse"``) for a layer whose scale multiplies on ``scale_side``
    (``"sampling"`` or ``"density"``; module docstring)."""
    return affine_multiply if (direction == "forward") == (scale_side == "sampling") \
        else affine_divide


def affine_value(direction, scale_side, v, shift, log_scale):
    """The value ``y`` alone of :func:`affine_map` ``(direction, scale_side)``, by the same
    operations (no log-det, no residuals: the per-coordinate step of sequential sampling)."""
    if (direction == "forward") == (scale_side == "sampling"):
        return v * np.exp(log_scale) + shift
    return (v - shift) * np.exp(-log_scale)
