r"""Activation functions with their derivatives, for hand-written backward passes.

Each :class:`Activation` gives the value ``f(a)`` and the derivative ``f'(a)`` with respect to
the pre-activation ``a``, elementwise, in the dtype of ``a``. A network's backward pass through
``h = f(a)`` is ``a_bar = h_bar * f'(a)``.

==========  ======================================  ============================================
name        ``f(a)``                                ``f'(a)``
==========  ======================================  ============================================
relu        ``max(a, 0)``                           ``1`` if ``a > 0`` else ``0`` (``0`` at 0)
tanh        ``tanh(a)``                             ``1 - tanh(a)^2``
elu         ``a`` if ``a > 0`` else ``exp(a) - 1``  ``1`` if ``a > 0`` else ``exp(a)``
softplus    ``log(1 + exp(a))``                     ``sigmoid(a)``
gelu        ``a Phi(a)`` (exact, erf form)          ``Phi(a) + a phi(a)``
==========  ======================================  ============================================

``Phi`` and ``phi`` are the standard normal CDF and density; ELU has ``alpha = 1``. Every
formula is evaluated in a form that neither overflows nor warns for ``|a|`` up to 1e3 (and far
beyond): ``softplus = logaddexp(0, a)``, ``sigmoid = expit``, ELU through
``expm1(min(a, 0))`` and ``exp(min(a, 0))`` (so ``exp`` never sees a positive argument),
``Phi = ndtr`` (accurate in the lower tail), and ``phi = exp(-a^2 / 2) / sqrt(2 pi)``, which
underflows quietly to 0.

Examples
--------
>>> import numpy as np
>>> from refflow.nn import get_activation
>>> act = get_activation("softplus")
>>> value, derivative = act.value_and_derivative(np.array([-1e3, 0.0, 1e3]))
>>> value.tolist(), derivative.tolist()
([0.0, 0.6931471805599453, 1000.0], [0.0, 0.5, 1.0])
"""

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy.special import ndtr

from .._math import sigmoid, softplus
from ..kernels import use_fast_paths
from ..kernels.fused import relu_value_derivative

__all__ = ["Activation", "ACTIVATIONS", "get_activation"]

_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


@dataclass(frozen=True)
class Activation:
    """An elementwise nonlinearity ``h = f(a)`` and its derivative.

    Attributes
    ----------
    name : str
        The registry name (``"relu"``, ...).
    value : callable
        ``value(a) -> f(a)``, a new array of the dtype and shape of ``a``.
    value_and_derivative : callable
        ``value_and_derivative(a) -> (f(a), f'(a))``, two new arrays; computes the shared
        intermediate values once (what a forward pass that keeps residuals calls).

    Notes
    -----
    Calling the object is ``value``; ``derivative(a)`` is the second element of
    ``value_and_derivative(a)``. Neither mutates ``a``.
    """

    name: str
    value: Callable
    value_and_derivative: Callable

    def __call__(self, a):
        return self.value(a)

    def derivative(self, a):
        """``f'(a)``, elementwise."""
        return self.value_and_derivative(a)[1]

    def __repr__(self):
        return f"Activation({self.name!r})"


# --------------------------------------------------------------------------- relu
def _relu(a):
    return np.maximum(a, 0)


def _relu_vd(a):
    # f'(0) = 0, as torch's autograd does for relu. One fused kernel on the "mlp" fast path.
    if not use_fast_paths("mlp") or type(a) is not np.ndarray \
            or a.dtype not in (np.float32, np.float64) or not a.flags.c_contiguous:
        return _relu_vd_reference(a)
    # One pass instead of three (the bool -> float astype alone cost 2 ms per 4096 x 64 array);
    # bitwise the reference values (tests/test_fused_paths.py).
    h, d = np.empty_like(a), np.empty_like(a)
    relu_value_derivative(a.reshape(-1), h.reshape(-1), d.reshape(-1))
    return h, d


def _relu_vd_reference(a):
    return np.maximum(a, 0), (a > 0).astype(a.dtype)


# --------------------------------------------------------------------------- tanh
def _tanh(a):
    return np.tanh(a)


def _tanh_vd(a):
    t = np.tanh(a)
    d = t * t
    np.subtract(1, d, out=d)
    return t, d


# ---------------------------------------------------------------------------- elu
def _elu(a):
    v = np.expm1(np.minimum(a, 0))  # 0 for a > 0; exp never sees a positive argument
    v += np.maximum(a, 0)
    return v


def _elu_vd(a):
    neg = np.minimum(a, 0)
    d = np.exp(neg)                 # exp(a) for a <= 0, 1 for a > 0: accurate relative to itself
    v = np.expm1(neg)
    v += np.maximum(a, 0)
    return v, d


# ----------------------------------------------------------------------- softplus
def _softplus(a):
    return softplus(a).astype(a.dtype, copy=False)


def _softplus_vd(a):
    return softplus(a).astype(a.dtype, copy=False), sigmoid(a).astype(a.dtype, copy=False)


# --------------------------------------------------------------------------- gelu
def _gelu(a):
    v = ndtr(a).astype(a.dtype, copy=False)
    v *= a
    return v


def _gelu_vd(a):
    cdf = ndtr(a).astype(a.dtype, copy=False)
    with np.errstate(under="ignore"):  # exp(-a^2/2) underflows to 0 for |a| > ~38: exact enough
        pdf = np.exp(-0.5 * (a * a))
    pdf *= _INV_SQRT_2PI
    v = cdf * a
    pdf *= a
    pdf += cdf                      # Phi(a) + a phi(a)
    return v, pdf.astype(a.dtype, copy=False)


#: Registry ``name -> Activation``.
ACTIVATIONS = {
    "relu": Activation("relu", _relu, _relu_vd),
    "tanh": Activation("tanh", _tanh, _tanh_vd),
    "elu": Activation("elu", _elu, _elu_vd),
    "softplus": Activation("softplus", _softplus, _softplus_vd),
    "gelu": Activation("gelu", _gelu, _gelu_vd),
}


def get_activation(name, where="get_activation"):
    """Look up an activation by name.

    Parameters
    ----------
    name : str or Activation
        One of ``"relu"``, ``"tanh"``, ``"elu"``, ``"softplus"``, ``"gelu"`` (case-sensitive),
        or an :class:`Activation` (returned as it is).
    where : str
        Caller named in the error message.

    Returns
    -------
    Activation

    Raises
    ------
    ValueError
        For an unknown name; the message lists the known ones.

    Examples
    --------
    >>> import numpy as np
    >>> from refflow.nn import get_activation
    >>> gelu = get_activation("gelu")
    >>> np.round(gelu(np.array([-1.0, 0.0, 1.0])), 6)
    array([-0.158655,  0.      ,  0.841345])
    """
    if isinstance(name, Activation):
        return name
    if isinstance(name, str) and name in ACTIVATIONS:
        return ACTIVATIONS[name]
    raise ValueError(
        f"{where}: unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}"
    )
