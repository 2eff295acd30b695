r"""``LeakyTanh``: FlowJAX's tanh with linear tails, a bijection of R onto R.

``x = tanh(z)`` for ``|z| < M`` and ``x = g z + sign(z) c`` for ``|z| >= M``, where the line
matches tanh's value and slope at ``±M``: ``g = 1 - tanh(M)^2`` and ``c = tanh(M) - g M``
(FlowJAX 19.1.2, ``flowjax/bijections/tanh.py``, ``LeakyTanh``; its
``triangular_spline_flow`` puts the splines on ``[-1, 1]`` between ``LeakyTanh`` and its
inverse). Elementwise, with ``T = tanh(M)``:

    forward   tanh part: log f'(z) = 2 (log 2 - |z| - log1p(exp(-2 |z|))),  (log f')' = -2 tanh z
              line:      log f'(z) = log g,                                 (log f')' = 0
    inverse   |x| < T:   z = artanh(x),  log g'(x) = -log1p(-x) - log1p(x),
                         (log g')'(x) = 2 x / ((1 - x)(1 + x))
              |x| >= T:  z = (x - sign(x) c) / g,  log g'(x) = -log g,   (log g')' = 0

and the pullbacks of :mod:`refflow.bijectors.elementwise`: ``z_bar = x_bar f'(z) + log_det_bar
(log f')'(z)``, ``x_bar = z_bar g'(x) + log_det_bar (log g')'(x)``. No parameters. The
log-det's derivative jumps at ``z = ±M`` (``x = ±T``).

FlowJAX computes ``g`` as ``exp(-2 (M + softplus(-2 M) - log 2))`` in JAX's default precision
(float32 unless x64 is enabled when the layer is built) and stores ``g`` and ``c`` as numbers;
``linear_grad`` and ``intercept`` take those stored numbers, so that an imported layer computes
exactly FlowJAX's map (whose two pieces then meet at ``±M`` only to that precision).

References
----------
Ward, "FlowJAX: distributions and normalizing flows in JAX", 2024,
``flowjax.bijections.LeakyTanh`` (FlowJAX 19.1.2).
"""

import math

import numpy as np

from .._validation import check_dim, check_positive
from ..io.spec import constructor_arguments, declaration
from .base import Bijector

__all__ = ["LeakyTanh"]


def _line(max_val):
    """FlowJAX's ``(g, c)`` in float64: tanh's slope and the line's intercept at ``M``."""
    t = math.tanh(max_val)
    # 1 - tanh(M)^2 = exp(2 (log 2 - M - log1p(exp(-2 M)))), without cancellation
    g = math.exp(2.0 * (math.log(2.0) - max_val - math.log1p(math.exp(-2.0 * max_val))))
    return g, t - g * max_val


class LeakyTanh(Bijector):
    """Elementwise ``x = tanh(z)`` for ``|z| < max_val``, continued by the tangent lines at
    ``±max_val`` beyond (FlowJAX's ``LeakyTanh``): a bijection of R onto R.

    Parameters
    ----------
    dim : int
        Event size.
    max_val : float, default 3.0
        ``M > 0``, where tanh gives way to its tangent lines (FlowJAX's ``max_val``; its
        ``triangular_spline_flow`` default ``tanh_max_val = 3``).
    linear_grad, intercept : float, optional
        The lines' slope ``g`` and intercept ``c`` (``x = g z + sign(z) c``); by default
        ``g = 1 - tanh(M)^2`` and ``c = tanh(M) - g M`` in float64. Give FlowJAX's stored
        values to reproduce a layer it built in float32.

    Notes
    -----
    See the module docstring for both passes, log-dets and pullbacks. The inverse takes the
    line where ``|x| >= tanh(M)`` (FlowJAX's rule). Round trips are exact to rounding where
    tanh is not rounded to ``±1`` (``M`` up to ~19).

    Examples
    --------
    >>> import numpy as np
    >>> from refflow import LeakyTanh
    >>> layer = LeakyTanh(2, max_val=1.0)
    >>> x, log_det = layer.forward(np.array([[0.5, 3.0]]))
    >>> bool(np.isclose(x[0, 0], np.tanh(0.5)))
    True
    >>> g = 1 - np.tanh(1.0) ** 2
    >>> bool(np.isclose(x[0, 1], np.tanh(1.0) + 2.0 * g))
    True
    >>> bool(np.allclose(layer.inverse(x)[0], [[0.5, 3.0]]))
    True
    """

    def __init__(self, dim, max_val=3.0, *, linear_grad=None, intercept=None):
        dim = check_dim(dim, "LeakyTanh")
        self.max_val = check_positive(max_val, "LeakyTanh", "max_val")
        g, c = _line(self.max_val)
        if (linear_grad is None) != (intercept is None):
            raise ValueError("LeakyTanh: give both linear_grad and intercept, or neither")
        if linear_grad is not None:
            g = check_positive(linear_grad, "LeakyTanh", "linear_grad")
            c = float(intercept)
            if not math.isfinite(c):
                raise ValueError(f"LeakyTanh: intercept must be finite, got {intercept!r}")
        self.linear_grad, self.intercept = g, c
        self._explicit = linear_grad is not None
        super().__init__(dim)

    def __repr__(self):
        return f"LeakyTanh(dim={self.dim}, max_val={self.max_val})"

    def _config(self):
        config = {"dim": self.dim, "max_val": self.max_val}
        if self._explicit:
            config.update(linear_grad=self.linear_grad, intercept=self.intercept)
        return config

    @classmethod
    def _declare(cls, config):
        args = constructor_arguments(cls, config)
        check_dim(args["dim"], "LeakyTanh")
        check_positive(args["max_val"], "LeakyTanh", "max_val")
        return declaration()

    def _input_knots(self, direction, v, context=None):
        edge = self.max_val if direction == "forward" else math.tanh(self.max_val)
        knots = np.empty(v.shape + (2,), dtype=v.dtype)
        knots[..., 0], knots[..., 1] = -edge, edge
        return knots

    def _forward_pass(self, z, context, vjp):
        dt = z.dtype.type
        az = np.abs(z)
        line = az >= dt(self.max_val)
        zt = np.where(line, 0, z)  # tanh part only where it is used
        g, c = dt(self.linear_grad), dt(self.intercept)
        x = np.where(line, g * z + np.sign(z) * c, np.tanh(zt))
        azt = np.abs(zt)
        log_tanh = 2 * (dt(math.log(2.0)) - azt - np.log1p(np.exp(-2 * azt)))
        log_d = np.where(line, np.log(g), log_tanh)
        log_det = log_d.sum(axis=1)
        if not vjp:
            return x, log_det, None

        def pullback(x_bar, log_det_bar):
            d = np.exp(log_d)
            dlog = np.where(line, 0, -2 * np.tanh(zt))
            return x_bar * d + log_det_bar[:, None] * dlog, {}, None

        return x, log_det, pullback

    def _inverse_pass(self, x, context, vjp):
        dt = x.dtype.type
        line = np.abs(x) >= dt(math.tanh(self.max_val))
        xt = np.where(line, 0, x)
        g, c = dt(self.linear_grad), dt(self.intercept)
        z = np.where(line, (x - np.sign(x) * c) / g, np.arctanh(xt))
        log_d = np.where(line, -np.log(g), -np.log1p(-xt) - np.log1p(xt))
        log_det = log_d.sum(axis=1)
        if not vjp:
            return z, log_det, None

        def pullback(z_bar, log_det_bar):
            one = (1 - xt) * (1 + xt)
            d = np.where(line, 1 / g, 1 / one)
            dlog = np.where(line, 0, 2 * xt / one)
            return z_bar * d + log_det_bar[:, None] * dlog, {}, None

        return z, log_det, pullback
