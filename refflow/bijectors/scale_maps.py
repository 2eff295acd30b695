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
``"flowjax"``   ``softplus(u + softplus^-1(0.99))``       FlowJAX ``masked_autoregressive_flow`` /
                ``+ 0.01`` (1 at ``u = 0``)               ``coupling_flow`` default transformer
``"pyro-clamp"`` ``exp(clip(u, -5, 3))``                  Pyro ``AffineAutoregressive`` (values)
``"sigmoid-``   ``sigmoid(u + 2)``, no floor,             Pyro ``AffineAutoregressive(stable=True)``
``nofloor"``    ``l(u) = log_sigmoid(u + 2)``             (``sigmoid_bias = 2``); normflows'
                                                          ``scale_map="sigmoid_inv"``
``"sigmoid-``   ``1 / sigmoid(u + 2) = 1 + e^-(u+2)``,    normflows ``AffineCoupling(scale_map=
``reciprocal"`` ``l(u) = softplus(-(u + 2))``             "sigmoid")`` (Glow's sigmoid scale on
                                                          the density side: ``z2 / s + shift``
                                                          from base to data)
==============  =======================================  =========================================

and, outside :data:`SCALE_MAPS` because its "derivative" is not the derivative of its value
(the property suite and the builders use :data:`SCALE_MAPS` only):

``"pyro-clamp-st"``: the value of ``"pyro-clamp"`` with Pyro's straight-through gradient,
``d l / du := 1`` everywhere (Pyro's ``clamp_preserve_gradients``, ``x + (clamp(x) - x).detach()``,
``pyro/distributions/transforms/utils.py``). Choose it to reproduce Pyro's training gradients
bit for bit in formula; its pullbacks are **not** the derivatives of the map where
``u < -5`` or ``u > 3`` (there the true derivative is 0, as ``"pyro-clamp"`` gives).

Where each convention was read (FlowJAX 19.1.2, Pyro 1.9.2):

- FlowJAX ``flowjax/flows.py``, ``_affine_with_min_scale(min_scale=1e-2)``: ``scale =
  Parameterize(lambda x: softplus(x) + min_scale, inv_softplus(1 - min_scale))``; the
  conditioner's output is *added* to that raw value (``flowjax/bijections/
  masked_autoregressive.py``, ``get_ravelled_pytree_constructor``), hence ``softplus(u +
  softplus^-1(0.99)) + 0.01``. FlowJAX's ``Affine`` computes ``x * scale + loc`` in its
  ``transform`` (data -> base), so a FlowJAX MAF layer is ``scale="flowjax",
  scale_side="density"``.
- Pyro ``pyro/distributions/transforms/affine_autoregressive.py``: ``log_scale =
  clamp_preserve_gradients(log_scale, log_scale_min_clip=-5.0, log_scale_max_clip=3.0)``,
  ``y = scale * x + mean`` (``_call``); with ``stable=True`` (``_call_stable``)
  ``scale = sigmoid(logit_scale + sigmoid_bias)``, ``y = scale * x + (1 - scale) * mean``,
  ``log_abs_det_jacobian = logsigmoid(logit_scale + sigmoid_bias).sum(-1)``. Pyro's
  ``AffineAutoregressive`` maps base -> data with its conditioner on the base side, so it is
  ``Inverse(MaskedAffineAutoregressive(..., scale_side="density"))`` (with ``stable=True`` for
  the stable form) on a MADE with Pyro's masks.

Each map returns ``log_scale`` and its derivative ``d log_scale / du`` (for the pullbacks):

- exp: ``1``
- softplus: ``sigmoid(u) / (softplus(u) + 1e-3)``
- sigmoid: ``s (1 - s) / (s + 1e-3)`` with ``s = sigmoid(u + 2)``
- softclip: ``1 / (1 + |u| / c)^2`` with ``c = -ln 1e-3``
- tanh: ``1 - tanh(u / 2)^2``
- flowjax: ``sigmoid(u + c) / (softplus(u + c) + 0.01)`` with ``c = softplus^-1(0.99) =
  log(expm1(0.99))``
- pyro-clamp: ``1`` for ``-5 <= u <= 3``, else ``0`` (the clip's derivative; the kinks at
  ``-5`` and ``3`` take the inside value, as torch's ``clamp`` does)
- sigmoid-nofloor: ``sigmoid(-(u + 2))``
- sigmoid-reciprocal: ``-sigmoid(-(u + 2))`` (``d softplus(-v) / dv = -sigmoid(-v)``)
- pyro-clamp-st: ``1`` (straight-through; not a derivative, see above)

Every form is finite for any finite ``u`` (``softplus(u) = logaddexp(0, u)`` and
``log_expit`` do not overflow), so nothing overflows for ``|u|`` up to 1e3 and beyond. (The
scale itself, ``exp(l)``, is unbounded for ``"exp"`` and ``"sigmoid-reciprocal"``: ``1 +
e^-(u+2)`` is not a float64 number below ``u = -712``.)

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

``stable=True`` (Pyro's "stable" IAF, ``y = s v + (1 - s) t``) keeps ``t`` as the fixed point
of the map instead of adding it: same log-dets, and::

    multiply   y = t + (v - t) e^l
               v_bar = y_bar e^l,    t_bar = -y_bar expm1(l),   u_bar = (y_bar (v - t) e^l + log_det_bar) l'
    divide     y = t + (v - t) e^-l
               v_bar = y_bar e^-l,   t_bar = -y_bar expm1(-l),  u_bar = (-y_bar (y - t) - log_det_bar) l'

(from ``dy = e^l dv + (1 - e^l) dt + (v - t) e^l dl`` and ``dy = e^-l dv + (1 - e^-l) dt -
(y - t) dl``). Multiply and divide with the same ``t, l`` are still inverses of each other.

References
----------
Kingma, Salimans, Jozefowicz, Chen, Sutskever, Welling, "Improving Variational Inference with
Inverse Autoregressive Flow", 2016, arXiv:1606.04934 (eq. 14, the stable form).
"""

import math

import numpy as np

from .._math import log_sigmoid, sigmoid, softplus

__all__ = ["SCALE_MAPS", "STRAIGHT_THROUGH_MAPS", "get_scale_map", "affine_map",
           "affine_multiply", "affine_divide", "affine_value"]

_FLOOR = 1e-3
_LOG_FLOOR = math.log(_FLOOR)
_SOFTCLIP = -math.log(1e-3)  # zuko's bound on |log_scale|: |ln 1e-3| = 6.9078
_TANH_CLAMP = 2.0
_FLOWJAX_MIN = 1e-2                          # FlowJAX's min_scale
_FLOWJAX_SHIFT = math.log(math.expm1(0.99))  # softplus^-1(1 - min_scale): scale 1 at u = 0
_PYRO_MIN, _PYRO_MAX = -5.0, 3.0             # Pyro's log_scale_min_clip, log_scale_max_clip
_PYRO_SIGMOID_BIAS = 2.0                     # Pyro's sigmoid_bias (stable=True)


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


def _flowjax(u):
    v = u + u.dtype.type(_FLOWJAX_SHIFT)
    scale = softplus(v) + u.dtype.type(_FLOWJAX_MIN)  # >= 0.01: its log needs no special form
    return np.log(scale), sigmoid(v) / scale


def _pyro_clamp(u):
    lo, hi = u.dtype.type(_PYRO_MIN), u.dtype.type(_PYRO_MAX)
    return np.clip(u, lo, hi), ((u >= lo) & (u <= hi)).astype(u.dtype)


def _pyro_clamp_straight_through(u):
    return _pyro_clamp(u)[0], np.ones_like(u)


def _sigmoid_nofloor(u):
    v = u + u.dtype.type(_PYRO_SIGMOID_BIAS)
    return log_sigmoid(v), sigmoid(-v)


def _sigmoid_reciprocal(u):
    v = u + u.dtype.type(_PYRO_SIGMOID_BIAS)
    return softplus(-v), -sigmoid(-v)


SCALE_MAPS = {"exp": _exp, "softplus": _softplus_scale, "sigmoid": _sigmoid_scale,
              "softclip": _softclip, "tanh": _tanh, "flowjax": _flowjax,
              "pyro-clamp": _pyro_clamp, "sigmoid-nofloor": _sigmoid_nofloor,
              "sigmoid-reciprocal": _sigmoid_reciprocal}

#: Maps whose second output is a surrogate gradient, not ``d log_scale / du`` (module docstring).
STRAIGHT_THROUGH_MAPS = {"pyro-clamp-st": _pyro_clamp_straight_through}


def get_scale_map(name, where="scale"):
    """The map ``u -> (log_scale, d log_scale / du)`` named ``name`` (one of
    :data:`SCALE_MAPS` or :data:`STRAIGHT_THROUGH_MAPS`); ValueError if unknown."""
    if isinstance(name, str) and name in SCALE_MAPS:
        return SCALE_MAPS[name]
    if isinstance(name, str) and name in STRAIGHT_THROUGH_MAPS:
        return STRAIGHT_THROUGH_MAPS[name]
    raise ValueError(f"{where}: scale must be one of "
                     f"{sorted(SCALE_MAPS) + sorted(STRAIGHT_THROUGH_MAPS)}, got {name!r}")


def affine_multiply(v, shift, log_scale, dlog_scale, vjp, out=None, stable=False):
    """``y = v e^l + t`` elementwise (``y = t + (v - t) e^l`` when ``stable``), ``log_det =
    sum_j l_j`` over the last axis (module docstring), and when ``vjp`` its pullback
    ``(y_bar, log_det_bar) -> (v_bar, t_bar, u_bar)``.

    ``out``, if given, is returned as ``y`` instead (the masked autoregressive layers' sampler
    computes ``y`` itself); the pullback does not read ``y``.
    """
    scale = np.exp(log_scale)
    vs = (v - shift if stable else v) * scale  # dy/dl, a residual of the pullback
    y = vs + shift if out is None else out
    log_det = log_scale.sum(axis=-1)
    if not vjp:
        return y, log_det, None

    def pullback(y_bar, log_det_bar):
        t_bar = -y_bar * np.expm1(log_scale) if stable else y_bar
        return y_bar * scale, t_bar, (y_bar * vs + log_det_bar[..., None]) * dlog_scale

    return y, log_det, pullback


def affine_divide(v, shift, log_scale, dlog_scale, vjp, out=None, stable=False):
    """``y = (v - t) e^-l`` elementwise (``y = t + (v - t) e^-l`` when ``stable``),
    ``log_det = -sum_j l_j`` over the last axis, and when ``vjp`` its pullback
    ``(y_bar, log_det_bar) -> (v_bar, t_bar, u_bar)``.

    ``out``, if given, is returned as ``y`` (and read by the pullback, ``dy/dl = -(y - t)``
    when ``stable``, else ``-y``) instead of the value computed here.
    """
    inv_scale = np.exp(-log_scale)
    if out is None:
        y = (v - shift) * inv_scale
        dy_dl = -y            # a residual of the pullback: -(y - t) when stable
        if stable:
            y = y + shift
    else:
        y = out
        dy_dl = -(y - shift) if stable else -y
    log_det = -log_scale.sum(axis=-1)
    if not vjp:
        return y, log_det, None

    def pullback(y_bar, log_det_bar):
        v_bar = y_bar * inv_scale
        t_bar = -y_bar * np.expm1(-log_scale) if stable else -v_bar
        return v_bar, t_bar, (y_bar * dy_dl - log_det_bar[..., None]) * dlog_scale

    return y, log_det, pullback


def affine_map(direction, scale_side):
    """:func:`affine_multiply` or :func:`affine_divide`: the formula of ``direction``
    (``"forward"`` or ``"inverse"``) for a layer whose scale multiplies on ``scale_side``
    (``"sampling"`` or ``"density"``; module docstring)."""
    return affine_multiply if (direction == "forward") == (scale_side == "sampling") \
        else affine_divide


def affine_value(direction, scale_side, v, shift, log_scale, stable=False):
    """The value ``y`` alone of :func:`affine_map` ``(direction, scale_side)``, by the same
    operations (no log-det, no residuals: the per-coordinate step of sequential sampling)."""
    if (direction == "forward") == (scale_side == "sampling"):
        return (v - shift if stable else v) * np.exp(log_scale) + shift
    y = (v - shift) * np.exp(-log_scale)
    return y + shift if stable else y
