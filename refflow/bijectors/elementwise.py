r"""Elementwise bijectors: ``Affine``, ``Exp``, ``Sigmoid``, ``Logit``, ``Tanh``, ``Softplus``, ``LeakyReLU``.

Each acts on every coordinate separately, ``x_i = f(z_i)``, so the Jacobian is diagonal and

    forward   log_det = sum_i log f'(z_i)
    inverse   log_det = sum_i log g'(x_i),        g = f^{-1},  g'(x) = 1 / f'(g(x))

The pullback of the forward pass, for cotangents ``x_bar`` and ``log_det_bar`` (one per row):

    z_bar_i = x_bar_i * f'(z_i) + log_det_bar * (log f')'(z_i)

and symmetrically for the inverse with ``g``. Each parameter-free map below lists ``f``, ``f'``,
``log f'`` (in a form that does not overflow) and ``(log f')'`` for both directions.

=============  ==========================  ===========================================  ==================
map            forward ``f(z)``            ``log f'(z)``                                ``(log f')'(z)``
=============  ==========================  ===========================================  ==================
Exp            ``exp(z)``                  ``z``                                        ``1``
Sigmoid        ``1 / (1 + exp(-z))``       ``-softplus(-z) - softplus(z)``              ``-tanh(z / 2)``
Logit(alpha)   ``logit(a + c z)``          ``log c - log y - log1p(-y)``, ``y=a+cz``    ``c (2y-1)/(y(1-y))``
Tanh           ``tanh(z)``                 ``2 (log 2 - |z| - log1p(exp(-2|z|)))``      ``-2 tanh(z)``
Softplus       ``log(1 + exp(z))``         ``-softplus(-z)``                            ``sigmoid(-z)``
LeakyReLU(a)   ``z`` if ``z >= 0`` else ``a z``   ``0`` or ``log a``                    ``0``
=============  ==========================  ===========================================  ==================

(``c = 1 - 2 alpha`` for ``Logit``.) Inverse maps: ``log``; ``log x - log1p(-x)``;
``(sigmoid(x) - alpha) / c``; ``artanh``; ``x + log(1 - exp(-x))``; ``x`` or ``x / a``.

References
----------
Maechler, "Accurately computing log(1 - exp(-|a|)), assessed by the Rmpfr package", 2012.
"""

import math
import numbers

import numpy as np

from .._math import log1mexp, log_sigmoid, sigmoid, softplus
from .._validation import check_dim
from ..io.spec import constructor_arguments, declaration
from .base import Bijector

__all__ = ["Affine", "Exp", "Sigmoid", "Logit", "Tanh", "Softplus", "LeakyReLU"]


def affine_forward(z, shift, log_scale, vjp):
    """``x = z exp(a) + b`` with ``log_det = sum(a)`` and, when ``vjp``, its pullback
    ``(x_bar, log_det_bar) -> (z_bar, {"shift", "log_scale"}, None)`` (:class:`Affine`'s Notes;
    :class:`refflow.ActNorm` runs the same pass)."""
    scale = np.exp(log_scale)
    x = z * scale + shift
    log_det = np.full(z.shape[0], log_scale.sum(), dtype=z.dtype)
    if not vjp:
        return x, log_det, None

    def pullback(x_bar, log_det_bar):
        grads = {
            "shift": x_bar.sum(axis=0),
            "log_scale": (x_bar * z).sum(axis=0) * scale + log_det_bar.sum(),
        }
        return x_bar * scale, grads, None

    return x, log_det, pullback


def affine_inverse(x, shift, log_scale, vjp):
    """``z = (x - b) exp(-a)`` with ``log_det = -sum(a)`` and, when ``vjp``, its pullback (as
    :func:`affine_forward`)."""
    inv_scale = np.exp(-log_scale)
    z = (x - shift) * inv_scale
    log_det = np.full(x.shape[0], -log_scale.sum(), dtype=x.dtype)
    if not vjp:
        return z, log_det, None

    def pullback(z_bar, log_det_bar):
        x_bar = z_bar * inv_scale
        grads = {
            "shift": -x_bar.sum(axis=0),
            "log_scale": -(z_bar * z).sum(axis=0) - log_det_bar.sum(),
        }
        return x_bar, grads, None

    return z, log_det, pullback


class Affine(Bijector):
    r"""Elementwise affine map ``x = z * exp(log_scale) + shift``.

    Parameters
    ----------
    dim : int
        Event size; ``params["shift"]`` and ``params["log_scale"]`` have shape ``(dim,)``
        and start at zero (the identity).

    Notes
    -----
    ::

        forward   x = z exp(a) + b,          log_det =  sum_i a_i      (the same for every row)
        inverse   z = (x - b) exp(-a),       log_det = -sum_i a_i
        forward pullback   z_bar = x_bar exp(a),   b_bar = sum_n x_bar,
                           a_bar = sum_n x_bar z exp(a) + sum_n log_det_bar
        inverse pullback   x_bar = z_bar exp(-a),  b_bar = -sum_n x_bar,
                           a_bar = -sum_n z_bar z - sum_n log_det_bar

    The scale is ``exp(log_scale)``, so every real parameter value is a valid bijection.

    Examples
    --------
    >>> import numpy as np
    >>> from refflow import Affine
    >>> layer = Affine(2)
    >>> layer.params["log_scale"] = [np.log(2.0), 0.0]
    >>> x, log_det = layer.forward(np.array([[1.0, 1.0]]))
    >>> x, np.round(log_det, 6)
    (array([[2., 1.]]), array([0.693147]))
    """

    def __init__(self, dim):
        dim = check_dim(dim, "Affine")
        super().__init__(dim, params={"shift": np.zeros(dim), "log_scale": np.zeros(dim)})

    def _config(self):
        return {"dim": self.dim}

    @classmethod
    def _declare(cls, config):
        dim = check_dim(constructor_arguments(cls, config)["dim"], cls.__name__)
        return declaration({"shift": (dim,), "log_scale": (dim,)})

    def _forward_pass(self, z, context, vjp):
        p = self._p(z.dtype)
        return affine_forward(z, p["shift"], p["log_scale"], vjp)

    def _inverse_pass(self, x, context, vjp):
        p = self._p(x.dtype)
        return affine_inverse(x, p["shift"], p["log_scale"], vjp)


def _elementwise_pass(u, h, dh, log_dh, dlog_dh, vjp):
    """One direction ``v = h(u)`` of an elementwise map (``f`` forward, ``g`` inverse):
    ``log_det = sum_i log h'(u_i)``, pullback ``u_bar = v_bar h'(u) + log_det_bar (log h')'(u)``
    (module docstring); ``dh``, ``log_dh``, ``dlog_dh`` are ``h'``, ``log h'``, ``(log h')'``."""
    v, log_det = h(u), log_dh(u).sum(axis=1)
    if not vjp:
        return v, log_det, None

    def pullback(v_bar, log_det_bar):
        return v_bar * dh(u) + log_det_bar[:, None] * dlog_dh(u), {}, None

    return v, log_det, pullback


class _Elementwise(Bijector):
    """Parameter-free elementwise bijector defined by ``f`` and ``g = f^{-1}`` and derivatives.

    Subclasses define, for the forward map on ``z`` and the inverse map on ``x``:
    ``_f``, ``_df`` (f'), ``_log_df`` (log f'), ``_dlog_df`` ((log f')') and
    ``_g``, ``_dg``, ``_log_dg``, ``_dlog_dg``.
    """

    def __init__(self, dim):
        dim = check_dim(dim, type(self).__name__)
        super().__init__(dim)

    def _config(self):
        return {"dim": self.dim}

    @classmethod
    def _declare(cls, config):
        check_dim(constructor_arguments(cls, config)["dim"], cls.__name__)
        return declaration()

    def _forward_pass(self, z, context, vjp):
        return _elementwise_pass(z, self._f, self._df, self._log_df, self._dlog_df, vjp)

    def _inverse_pass(self, x, context, vjp):
        return _elementwise_pass(x, self._g, self._dg, self._log_dg, self._dlog_dg, vjp)

    def _check_open_interval(self, direction, v, low, high, what):
        inside = np.ones(v.shape, dtype=bool)
        if low is not None:
            inside &= v > low
        if high is not None:
            inside &= v < high
        if not inside.all():
            bad = np.argwhere(~inside)[0]
            raise self._domain_error(
                direction,
                f"{what} must lie in the open interval ({'-inf' if low is None else low}, "
                f"{'inf' if high is None else high}); {int((~inside).sum())} value(s) do not, "
                f"the first {float(v[tuple(bad)])!r} at index {tuple(int(i) for i in bad)}",
            )


class Exp(_Elementwise):
    """Elementwise ``x = exp(z)``; the inverse ``z = log(x)`` needs ``x > 0``.

    Notes
    -----
    forward log_det ``sum_i z_i``; inverse log_det ``-sum_i log x_i``. ``exp`` overflows float64
    for ``z > 709.78``; such inputs raise ``ValueError`` (the result is not representable).

    Examples
    --------
    >>> import numpy as np
    >>> from refflow import Exp
    >>> Exp(2).inverse(np.array([[1.0, np.e]]))
    (array([[0., 1.]]), array([-1.]))
    """

    _f = staticmethod(np.exp)
    _df = staticmethod(np.exp)

    @staticmethod
    def _log_df(z):
        return z.copy()

    @staticmethod
    def _dlog_df(z):
        return np.ones_like(z)

    _g = staticmethod(np.log)

    @staticmethod
    def _dg(x):
        return 1.0 / x

    @staticmethod
    def _log_dg(x):
        return -np.log(x)

    @staticmethod
    def _dlog_dg(x):
        return -1.0 / x

    def _check_inverse_domain(self, x):
        self._check_open_interval("inverse", x, 0, None, "x")


class Sigmoid(_Elementwise):
    """Elementwise logistic sigmoid ``x = 1 / (1 + exp(-z))``, onto ``(0, 1)``.

    Notes
    -----
    forward log_det ``sum_i -softplus(-z_i) - softplus(z_i)`` (never overflows); inverse
    ``z = log x - log1p(-x)`` with log_det ``-sum_i log x_i + log1p(-x_i)``, for ``0 < x < 1``.
    In float64 ``sigmoid(z)`` rounds to 1 for ``z > 36.7``, so the round trip is exact only on
    ``|z| < ~36``; beyond it the forward pass is still finite.

    Examples
    --------
    >>> import numpy as np
    >>> from refflow import Sigmoid
    >>> Sigmoid(1).forward(np.array([[0.0]]))[0]
    array([[0.5]])
    """

    _f = staticmethod(sigmoid)

    @staticmethod
    def _df(z):
        return sigmoid(z) * sigmoid(-z)

    @staticmethod
    def _log_df(z):
        return log_sigmoid(z) + log_sigmoid(-z)

    @staticmethod
    def _dlog_df(z):
        return -np.tanh(0.5 * z)  # d/dz [log s(z) + log s(-z)] = 1 - 2 s(z)

    @staticmethod
    def _g(x):
        return np.log(x) - np.log1p(-x)

    @staticmethod
    def _dg(x):
        return 1.0 / (x * (1.0 - x))

    @staticmethod
    def _log_dg(x):
        return -np.log(x) - np.log1p(-x)

    @staticmethod
    def _dlog_dg(x):
        return (2.0 * x - 1.0) / (x * (1.0 - x))

    def _check_inverse_domain(self, x):
        self._check_open_interval("inverse", x, 0, 1, "x")


class Logit(_Elementwise):
    """Elementwise ``x = logit(alpha + (1 - 2 alpha) z)``: the inverse of :class:`Sigmoid`,
    with RealNVP's optional squeeze ``alpha``.

    Parameters
    ----------
    dim : int
    alpha : float, default 0
        In ``[0, 0.5)``. RealNVP (Dinh et al. 2017, section 4.1) models
        ``logit(alpha + (1 - 2 alpha) x)`` of pixel data with ``alpha = 0.05`` so that values at
        the ends of ``[0, 1]`` stay finite.

    Notes
    -----
    With ``c = 1 - 2 alpha`` and ``y = alpha + c z``::

        forward   x = log y - log1p(-y),     log_det = sum_i log c - log y_i - log1p(-y_i)
        inverse   z = (sigmoid(x) - alpha) / c,
                  log_det = sum_i -softplus(-x_i) - softplus(x_i) - log c

    The forward domain is ``0 < y < 1``, i.e. ``(0, 1)`` for ``alpha = 0`` and a slightly wider
    interval (containing ``[0, 1]``) for ``alpha > 0``. The round trip is exact where
    ``sigmoid(x)`` is not rounded to 0 or 1, ``|x| < ~36``.

    References
    ----------
    Dinh, Sohl-Dickstein, Bengio, "Density estimation using Real NVP", 2017, arXiv:1605.08803.

    Examples
    --------
    >>> import numpy as np
    >>> from refflow import Logit
    >>> Logit(1).forward(np.array([[0.5]]))[0]
    array([[0.]])
    >>> x, _ = Logit(1, alpha=0.05).forward(np.array([[0.0]]))   # finite at the boundary
    >>> np.round(x, 4)
    array([[-2.9444]])
    """

    def __init__(self, dim, *, alpha=0.0):
        super().__init__(dim)
        if isinstance(alpha, (bool, np.bool_)) or not isinstance(alpha, numbers.Real):
            raise ValueError(f"Logit: alpha must be a real number in [0, 0.5), got {alpha!r}")
        alpha = float(alpha)
        if not (0.0 <= alpha < 0.5):
            raise ValueError(f"Logit: alpha must lie in [0, 0.5), got {alpha}")
        self.alpha = alpha
        self._c = 1.0 - 2.0 * alpha
        self._log_c = math.log(self._c)

    def __repr__(self):
        return f"Logit(dim={self.dim}, alpha={self.alpha})"

    def _config(self):
        return {"dim": self.dim, "alpha": self.alpha}

    def _y(self, z):
        return self.alpha + self._c * z if self.alpha else z

    def _f(self, z):
        y = self._y(z)
        return np.log(y) - np.log1p(-y)

    def _df(self, z):
        y = self._y(z)
        return self._c / (y * (1.0 - y))

    def _log_df(self, z):
        y = self._y(z)
        return self._log_c - np.log(y) - np.log1p(-y)

    def _dlog_df(self, z):
        y = self._y(z)
        return self._c * (2.0 * y - 1.0) / (y * (1.0 - y))

    def _g(self, x):
        return (sigmoid(x) - self.alpha) / self._c if self.alpha else sigmoid(x)

    def _dg(self, x):
        return sigmoid(x) * sigmoid(-x) / self._c

    def _log_dg(self, x):
        return log_sigmoid(x) + log_sigmoid(-x) - self._log_c

    def _dlog_dg(self, x):
        return -np.tanh(0.5 * x)

    def _check_forward_domain(self, z):
        if self.alpha:
            self._check_open_interval("forward", self._y(z), 0, 1, "alpha + (1 - 2 alpha) z")
        else:
            self._check_open_interval("forward", z, 0, 1, "z")


class Tanh(_Elementwise):
    """Elementwise ``x = tanh(z)``, onto ``(-1, 1)``.

    Notes
    -----
    forward log_det ``sum_i 2 (log 2 - |z_i| - log1p(exp(-2 |z_i|)))``, the stable form of
    ``log(1 - tanh(z)^2)`` (TFP's, written with ``|z|`` so nothing cancels); inverse
    ``z = artanh(x)`` with log_det ``-sum_i log1p(-x_i) + log1p(x_i)``, for ``|x| < 1``.
    ``tanh(z)`` rounds to ``±1`` for ``|z| > 19.1``, so the round trip is exact on ``|z| < ~19``.

    Examples
    --------
    >>> import numpy as np
    >>> from refflow import Tanh
    >>> Tanh(1).forward(np.array([[0.0]]))
    (array([[0.]]), array([0.]))
    """

    _f = staticmethod(np.tanh)

    @classmethod
    def _df(cls, z):
        return np.exp(cls._log_df(z))

    @staticmethod
    def _log_df(z):
        a = np.abs(z)
        return 2.0 * (math.log(2.0) - a - np.log1p(np.exp(-2.0 * a)))

    @staticmethod
    def _dlog_df(z):
        return -2.0 * np.tanh(z)

    _g = staticmethod(np.arctanh)

    @staticmethod
    def _dg(x):
        return 1.0 / ((1.0 - x) * (1.0 + x))

    @staticmethod
    def _log_dg(x):
        return -np.log1p(-x) - np.log1p(x)

    @staticmethod
    def _dlog_dg(x):
        return 2.0 * x / ((1.0 - x) * (1.0 + x))

    def _check_inverse_domain(self, x):
        self._check_open_interval("inverse", x, -1, 1, "x")


class Softplus(_Elementwise):
    """Elementwise ``x = softplus(z) = log(1 + exp(z))``, onto ``(0, inf)``.

    Notes
    -----
    forward log_det ``sum_i -softplus(-z_i)`` (``log sigmoid``); inverse
    ``z = x + log(1 - exp(-x))`` with log_det ``-sum_i log(1 - exp(-x_i))``, for ``x > 0``, where
    ``log(1 - exp(-x))`` is evaluated as ``log(-expm1(-x))`` for ``x <= log 2`` and
    ``log1p(-exp(-x))`` above (Maechler 2012), accurate to round-off at both ends.
    ``softplus(z)`` underflows to 0 for ``z < -745``, so the round trip is exact on
    ``z > ~-700``; beyond it the forward pass is still finite.

    Examples
    --------
    >>> import numpy as np
    >>> from refflow import Softplus
    >>> z, _ = Softplus(1).inverse(np.array([[np.log(2.0)]]))
    >>> np.round(z, 12)
    array([[0.]])
    """

    _f = staticmethod(softplus)
    _df = staticmethod(sigmoid)
    _log_df = staticmethod(log_sigmoid)

    @staticmethod
    def _dlog_df(z):
        return sigmoid(-z)

    @staticmethod
    def _g(x):
        return x + log1mexp(x)

    @staticmethod
    def _dg(x):
        return -1.0 / np.expm1(-x)

    @staticmethod
    def _log_dg(x):
        return -log1mexp(x)

    @staticmethod
    def _dlog_dg(x):
        return -1.0 / np.expm1(x)  # d/dx -log(1 - e^{-x}) = -1 / (e^x - 1)

    def _check_inverse_domain(self, x):
        self._check_open_interval("inverse", x, 0, None, "x")


class LeakyReLU(_Elementwise):
    """Elementwise ``x = z`` for ``z >= 0`` and ``x = negative_slope * z`` for ``z < 0``.

    Parameters
    ----------
    dim : int
    negative_slope : float, default 0.01
        Must be positive (and finite) for the map to be invertible. Fixed, not trained.

    Notes
    -----
    forward log_det ``(number of z_i < 0) * log(negative_slope)``; inverse ``x / negative_slope``
    where ``x < 0``. At ``z = 0`` the slope is taken as 1; the log-det is piecewise constant,
    so its derivative is 0 everywhere else.

    Examples
    --------
    >>> import numpy as np
    >>> from refflow import LeakyReLU
    >>> LeakyReLU(2, negative_slope=0.5).forward(np.array([[-2.0, 3.0]]))[0]
    array([[-1.,  3.]])
    """

    def __init__(self, dim, *, negative_slope=0.01):
        super().__init__(dim)
        if isinstance(negative_slope, (bool, np.bool_)) or not isinstance(negative_slope, numbers.Real):
            raise ValueError(f"LeakyReLU: negative_slope must be a positive number, got {negative_slope!r}")
        slope = float(negative_slope)
        if not (math.isfinite(slope) and slope > 0):
            raise ValueError(f"LeakyReLU: negative_slope must be positive and finite, got {negative_slope}")
        self.negative_slope = slope
        self._log_slope = math.log(slope)

    def __repr__(self):
        return f"LeakyReLU(dim={self.dim}, negative_slope={self.negative_slope})"

    def _config(self):
        return {"dim": self.dim, "negative_slope": self.negative_slope}

    def _f(self, z):
        return np.where(z >= 0, z, self.negative_slope * z)

    def _df(self, z):
        return np.where(z >= 0, 1.0, self.negative_slope).astype(z.dtype)

    def _log_df(self, z):
        return np.where(z >= 0, 0.0, self._log_slope).astype(z.dtype)

    def _dlog_df(self, z):
        return np.zeros_like(z)

    def _g(self, x):
        return np.where(x >= 0, x, x / self.negative_slope)

    def _dg(self, x):
        return np.where(x >= 0, 1.0, 1.0 / self.negative_slope).astype(x.dtype)

    def _log_dg(self, x):
        return np.where(x >= 0, 0.0, -self._log_slope).astype(x.dtype)

    def _dlog_dg(self, x):
        return np.zeros_like(x)
