r"""Monotone linear-rational splines (Dolatabadi, Erfani, Leckie 2020): ``LinearRationalSpline``,
Pyro's default spline (``Spline(order="linear")``).

Each bin ``[x_k, x_{k+1}]`` (width ``w``, height ``h``, slope ``s = h / w``, end derivatives
``d_0 = d_k``, ``d_1 = d_{k+1}``) is split at ``theta = lambda`` (``theta = (x - x_k) / w``) into
two linear-rational pieces that meet at ``(lambda, y_c)`` with weights ``w_a = 1``,
``r = w_b = sqrt(d_0 / d_1)`` and ``w_c = (lambda d_0 + (1 - lambda) r d_1) / s``::

    y_c = ((1 - lambda) y_0 + lambda r y_1) / ((1 - lambda) + lambda r)
    theta <= lambda:  y = (y_0 (lambda - theta) + w_c y_c theta) / D,   D = (lambda - theta) + w_c theta
                      y' = w_c lambda (y_c - y_0) / (w D^2)
    theta >  lambda:  y = (w_c y_c (1 - theta) + r y_1 (theta - lambda)) / D,
                      D = w_c (1 - theta) + r (theta - lambda)
                      y' = r w_c (1 - lambda) (y_1 - y_c) / (w D^2)

(Dolatabadi et al. 2020, eqs. 8-10; Pyro ``pyro/distributions/transforms/spline.py``,
``_monotonic_rational_spline`` with ``lambdas``). Both pieces take the value ``y_c`` at
``theta = lambda``, and ``y'(x_k) = d_0``, ``y'(x_{k+1}) = d_1``. The inverse is closed form,
written without cancellation (every sum below has non-negative terms)::

    y <= y_c:  theta = lambda (y - y_0) / ((y - y_0) + w_c (y_c - y))
    y >  y_c:  theta = (a + b lambda) / (a + b),   a = w_c (y - y_c),  b = r (y_1 - y)

(Pyro's ``numerator / denominator`` is the same expression rearranged.) Outside ``[-B, B]`` the
map is the identity (Pyro's tails; its boundary derivatives are ``1 - min_derivative``, so the
slope jumps at ``+-B``).

Pullbacks. The forward pass is differentiated in reverse, operation by operation (the
intermediate quantities above; the formulas are in :func:`_forward_pullback`), to ``x`` and
``(x_0, x_1, y_0, y_1, d_0, d_1, lambda)`` of each element's bin, then scattered into the knot
arrays and sent through the knot map's pullback. The inverse uses the implicit-function
theorem at ``x = f^{-1}(y)``: with ``g = y'(x)`` and ``L = log g``,
``dx/dy = 1/g``, ``dx/dp = -y_p / g`` and the inverse log-det ``-L(x)``, so for cotangents
``(x_bar, l_bar)``::

    c = (x_bar - l_bar L_x) / g,   y_bar = c,   p_bar = -(c y_p + l_bar L_p)

i.e. the forward pullback at ``x`` with cotangents ``(-c, -l_bar)`` for the parameters, and
``L_x`` from the forward pullback with ``(0, 1)``.

References
----------
Dolatabadi, Erfani, Leckie, "Invertible Generative Modeling using Linear Rational Splines",
2020, arXiv:2001.05168.
"""

import numpy as np

from .._math import sigmoid
from .._validation import check_dim
from ..io.spec import constructor_arguments, declaration
from .base import Bijector
from .spline_core import layer_spline_map

__all__ = ["LinearRationalSpline", "lrs", "lrs_input_knots", "lrs_n_params",
           "split_lrs_parameters"]

#: Pyro's ``min_lambda``: ``lambda = (1 - 2 * 0.025) sigmoid(u) + 0.025``.
_MIN_LAMBDA = 0.025


def _forward_core(x, x0, x1, y0, y1, d0, d1, lam):
    """Values, log-derivatives and the residuals of the reverse pass (elementwise)."""
    one = x.dtype.type(1)
    w, h = x1 - x0, y1 - y0
    s = h / w
    r = np.sqrt(d0 / d1)
    m = lam * d0 + (one - lam) * r * d1
    wc = m / s
    p = (one - lam) * y0 + lam * r * y1
    q = (one - lam) + lam * r
    yc = p / q
    theta = np.clip((x - x0) / w, 0, 1)
    left = theta <= lam
    num = np.where(left, y0 * (lam - theta) + wc * yc * theta,
                   wc * yc * (one - theta) + r * y1 * (theta - lam))
    den = np.where(left, (lam - theta) + wc * theta, wc * (one - theta) + r * (theta - lam))
    y = num / den
    gap = np.where(left, yc - y0, y1 - yc)
    factor = np.where(left, lam, (one - lam) * r)
    log_g = np.log(wc) + np.log(factor) + np.log(gap) - np.log(w) - 2 * np.log(den)
    res = (x0, y0, y1, d0, d1, lam, w, s, r, m, wc, p, q, yc, theta, left, den, y, gap)
    return y, log_g, res


def _forward_pullback(res, y_bar, l_bar):
    """Reverse pass of :func:`_forward_core`: ``(x_bar, (x0, x1, y0, y1, d0, d1, lam)_bar)``.

    With ``y = N / D`` (``N_bar = y_bar / D``, ``D_bar = -y_bar y / D``) and ``L = log w_c +
    log F + log G - log w - 2 log D`` (``F = lambda`` or ``(1 - lambda) r``, ``G = y_c - y_0``
    or ``y_1 - y_c``), each line below is the transpose of one assignment of the forward pass
    (left piece / right piece)::

        N = y0 (lam - t) + wc yc t        | N = wc yc (1 - t) + r y1 (t - lam)
        D = (lam - t) + wc t              | D = wc (1 - t) + r (t - lam)
        t = (x - x0) / w;  yc = P / Q, P = (1 - lam) y0 + lam r y1, Q = (1 - lam) + lam r
        wc = M / s, M = lam d0 + (1 - lam) r d1;  r = sqrt(d0 / d1);  s = h / w
    """
    (x0, y0, y1, d0, d1, lam, w, s, r, m, wc, p, q, yc, theta, left, den, y, gap) = res
    one = y_bar.dtype.type(1)
    n_bar = y_bar / den
    d_bar = -y_bar * y / den - 2 * l_bar / den
    wc_bar = l_bar / wc
    gap_bar = l_bar / gap
    w_bar = -l_bar / w
    # L's factor: lam (left) or (1 - lam) r (right)
    lam_bar = np.where(left, l_bar / lam, -l_bar / (one - lam))
    r_bar = np.where(left, 0, l_bar / r)
    # gap = yc - y0 (left) or y1 - yc (right)
    yc_bar = np.where(left, gap_bar, -gap_bar)
    y0_bar = np.where(left, -gap_bar, 0)
    y1_bar = np.where(left, 0, gap_bar)
    # N and D
    lt, omt = lam - theta, one - theta
    tml = theta - lam
    y0_bar = y0_bar + np.where(left, n_bar * lt, 0)
    lam_bar = lam_bar + np.where(left, n_bar * y0 + d_bar, -n_bar * r * y1 - d_bar * r)
    theta_bar = np.where(left, n_bar * (wc * yc - y0) + d_bar * (wc - one),
                         n_bar * (r * y1 - wc * yc) + d_bar * (r - wc))
    wc_bar = wc_bar + np.where(left, n_bar * yc * theta + d_bar * theta,
                               n_bar * yc * omt + d_bar * omt)
    yc_bar = yc_bar + np.where(left, n_bar * wc * theta, n_bar * wc * omt)
    r_bar = r_bar + np.where(left, 0, n_bar * y1 * tml + d_bar * tml)
    y1_bar = y1_bar + np.where(left, 0, n_bar * r * tml)
    # theta = (x - x0) / w
    x_bar = theta_bar / w
    x0_bar = -x_bar
    w_bar = w_bar - theta_bar * theta / w
    # yc = P / Q
    p_bar = yc_bar / q
    q_bar = -yc_bar * yc / q
    y0_bar = y0_bar + p_bar * (one - lam)
    lam_bar = lam_bar + p_bar * (r * y1 - y0) + q_bar * (r - one)
    r_bar = r_bar + p_bar * lam * y1 + q_bar * lam
    y1_bar = y1_bar + p_bar * lam * r
    # wc = M / s
    m_bar = wc_bar / s
    s_bar = -wc_bar * wc / s
    lam_bar = lam_bar + m_bar * (d0 - r * d1)
    d0_bar = m_bar * lam
    d1_bar = m_bar * (one - lam) * r
    r_bar = r_bar + m_bar * (one - lam) * d1
    # r = sqrt(d0 / d1)
    d0_bar = d0_bar + r_bar * r / (2 * d0)
    d1_bar = d1_bar - r_bar * r / (2 * d1)
    # s = h / w, h = y1 - y0, w = x1 - x0
    h_bar = s_bar / w
    w_bar = w_bar - s_bar * s / w
    y1_bar = y1_bar + h_bar
    y0_bar = y0_bar - h_bar
    x1_bar = w_bar
    x0_bar = x0_bar - w_bar
    return x_bar, (x0_bar, x1_bar, y0_bar, y1_bar, d0_bar, d1_bar, lam_bar)


def _inverse_theta(y, y0, y1, lam, r, wc, yc):
    """The closed-form root (module docstring), without cancellation."""
    one = y.dtype.type(1)
    left = y <= yc
    dy = np.maximum(y - y0, 0)
    t_left = lam * dy / np.maximum(dy + wc * np.maximum(yc - y, 0), np.finfo(y.dtype).tiny)
    a = wc * np.maximum(y - yc, 0)
    b = r * np.maximum(y1 - y, 0)
    t_right = (a + b * lam) / np.maximum(a + b, np.finfo(y.dtype).tiny)
    return np.clip(np.where(left, t_left, t_right), 0, one)


def split_lrs_parameters(theta, n_bins):
    """``(widths, heights, derivatives, lambdas)`` views of per-element parameters laid out
    ``[K | K | K - 1 | K]`` (Pyro's order)."""
    k = n_bins
    return (theta[..., :k], theta[..., k:2 * k], theta[..., 2 * k:3 * k - 1],
            theta[..., 3 * k - 1:])


def lrs_n_params(n_bins):
    """Unconstrained parameters per element: ``4K - 1``."""
    return 4 * n_bins - 1


def _element_knots(theta, smap, vjp):
    """Per-element knots ``(N, K + 1)``, ``lambda`` ``(N, K)``, ``sigmoid(u_lambda)`` and the
    knot map's pullback (or None)."""
    uw, uh, ud, ul = split_lrs_parameters(theta, smap.n_bins)
    if vjp:
        (xk, yk, dk), map_pullback = smap.vjp(uw, uh, ud)
    else:
        (xk, yk, dk), map_pullback = smap(uw, uh, ud), None
    t = theta.dtype.type
    sig = sigmoid(ul)
    lam = t(1 - 2 * _MIN_LAMBDA) * sig + t(_MIN_LAMBDA)
    return xk, yk, dk, lam, sig, map_pullback


def _gather(v, xk, yk, dk, lam, knots):
    """Per element: the bin index ``k`` (searched in ``knots``) and ``(x0, x1, y0, y1, d0, d1,
    lambda)`` of that bin."""
    k = (v[:, None] >= knots[:, 1:-1]).sum(axis=1)
    rows = np.arange(v.shape[0])
    return k, (xk[rows, k], xk[rows, k + 1], yk[rows, k], yk[rows, k + 1], dk[rows, k],
               dk[rows, k + 1], lam[rows, k])


def lrs(apply, v, theta, smap, vjp):
    """The linear-rational spline (``apply="spline"``) or its inverse (``"inverse"``) of ``v``
    ``(N,)`` elementwise, element ``i`` with the unconstrained parameters ``theta[i]``
    (``(N, 4K - 1)``, :func:`split_lrs_parameters`) through the knot map ``smap``.

    Returns ``(out, log_det, pullback)``; ``pullback(out_bar, log_det_bar) -> (v_bar,
    theta_bar)`` (``theta_bar`` ``(N, 4K - 1)``, not summed) when ``vjp``, else None. The
    formulas and both pullbacks are in the module docstring.
    """
    dtype = v.dtype
    theta = np.asarray(theta).astype(dtype, copy=False)
    xk, yk, dk, lam, sig, map_pullback = _element_knots(theta, smap, vjp)
    outside = np.abs(v) > dtype.type(smap.bound)
    if apply == "spline":
        k, vals = _gather(v, xk, yk, dk, lam, xk)
        out, log_g, res = _forward_core(v, *vals)
        out = np.where(outside, v, out)
    else:
        k, vals = _gather(v, xk, yk, dk, lam, yk)
        x0, x1, y0, y1, _, _, lm = vals
        _, _, res0 = _forward_core(x0, *vals)     # r, w_c, y_c do not depend on x
        theta_in = _inverse_theta(v, y0, y1, lm, res0[8], res0[10], res0[13])
        u = np.minimum(np.maximum(x0 + theta_in * (x1 - x0), x0), x1)
        out = np.where(outside, v, u)
        _, log_g, res = _forward_core(np.where(outside, x0, u), *vals)
    log_g = np.where(outside, 0, log_g)
    log_det = log_g if apply == "spline" else -log_g
    if not vjp:
        return out, log_det, None
    inside = ~outside

    def pullback(out_bar, log_det_bar):
        if apply == "spline":
            v_bar, bars = _forward_pullback(res, np.where(inside, out_bar, 0),
                                            np.where(inside, log_det_bar, 0))
        else:
            # implicit-function theorem (module docstring): L_x from (0, 1), then (-c, -l_bar)
            l_x, _ = _forward_pullback(res, np.zeros_like(out_bar), np.ones_like(out_bar))
            c = np.where(inside, (out_bar - log_det_bar * l_x) / np.exp(log_g), 0)
            _, bars = _forward_pullback(res, -c, np.where(inside, -log_det_bar, 0))
            v_bar = c
        v_bar = np.where(outside, out_bar, v_bar)
        n, K = v.shape[0], smap.n_bins
        rows = np.arange(n)
        knot_bars = []
        for lo, hi in zip(bars[0:6:2], bars[1:6:2]):
            bar = np.zeros((n, K + 1), dtype=dtype)
            np.add.at(bar, (rows, k), lo)
            np.add.at(bar, (rows, k + 1), hi)
            knot_bars.append(bar)
        lam_bar = np.zeros((n, K), dtype=dtype)
        lam_bar[rows, k] = bars[6]
        theta_bar = np.empty(theta.shape, dtype=dtype)
        uw_bar, uh_bar, ud_bar, ul_bar = split_lrs_parameters(theta_bar, K)
        uw_bar[...], uh_bar[...], ud_bar[...] = map_pullback(*knot_bars)
        ul_bar[...] = lam_bar * dtype.type(1 - 2 * _MIN_LAMBDA) * sig * (1 - sig)
        return v_bar, theta_bar

    return out, log_det, pullback


def lrs_input_knots(apply, theta, smap):
    """Where the log-det's derivative jumps, in the input space of ``apply``: the knots and
    the split points (``x_k``, ``x_k + lambda_k w_k`` for the spline; ``y_k``, ``y_c`` for
    the inverse), ``(..., 2K + 1)``."""
    lead = theta.shape[:-1]
    flat = np.asarray(theta, dtype=np.float64).reshape(-1, theta.shape[-1])
    xk, yk, dk, lam, _, _ = _element_knots(flat, smap, False)
    if apply == "spline":
        knots = np.concatenate([xk, xk[:, :-1] + lam * np.diff(xk, axis=1)], axis=1)
    else:
        r = np.sqrt(dk[:, :-1] / dk[:, 1:])
        yc = ((1 - lam) * yk[:, :-1] + lam * r * yk[:, 1:]) / ((1 - lam) + lam * r)
        knots = np.concatenate([yk, yc], axis=1)
    return knots.reshape(lead + (knots.shape[-1],))


class LinearRationalSpline(Bijector):
    r"""Elementwise monotone linear-rational spline (Pyro's ``Spline(order="linear")``),
    ``x = LRS(z)``.

    Parameters
    ----------
    dim : int
    n_bins : int, default 8
        ``K``.
    bound : float, default 3.0
        ``B``: the spline lives on ``[-B, B]``, the identity outside (Pyro's default 3).
    min_bin_width, min_bin_height, min_derivative : float, optional
        The "pyro" knot map's settings (default ``1e-3``: fractions of ``2B``; inner
        derivatives ``min_derivative + softplus(u)``, boundary ones ``1 - min_derivative``).

    Notes
    -----
    ``params``: ``"unnormalized_widths"`` ``(dim, K)``, ``"unnormalized_heights"`` ``(dim, K)``,
    ``"unnormalized_derivatives"`` ``(dim, K - 1)``, ``"unnormalized_lambdas"`` ``(dim, K)``
    (Pyro's names and shapes), with ``lambda = 0.95 sigmoid(u) + 0.025`` (Pyro's
    ``min_lambda = 0.025``); the knots come from the "pyro" map of
    :mod:`refflow.bijectors.spline_maps`. At construction the knots are uniform with inner
    derivatives 1 and ``lambda = 1/2``: the identity except in the two end bins, whose
    boundary derivatives are 0.999. The formulas, the inverse and both pullbacks are in the
    module docstring; ``lambda_bar`` reaches ``u`` through ``0.95 sigmoid'(u)``. Log-dets:
    ``forward`` ``sum_j log LRS'(z_j)``, ``inverse`` its negative at ``LRS^{-1}(x)``.
    ``SplineCoupling`` and ``MaskedSplineAutoregressive`` take ``spline="linear-rational"``
    for Pyro's ``SplineCoupling`` / ``SplineAutoregressive`` with ``order="linear"``.

    References
    ----------
    Dolatabadi, Erfani, Leckie, "Invertible Generative Modeling using Linear Rational
    Splines", 2020, arXiv:2001.05168.

    Examples
    --------
    >>> import numpy as np
    >>> from refflow.bijectors import LinearRationalSpline
    >>> layer = LinearRationalSpline(2, n_bins=4)
    >>> rng = np.random.default_rng(0)
    >>> for key in layer.params:
    ...     layer.params[key] = rng.normal(size=layer.params[key].shape)
    >>> z = np.array([[0.5, -4.0], [2.0, 1.0]])
    >>> x, log_det = layer.forward(z)
    >>> float(x[0, 1])                             # the identity outside [-3, 3]
    -4.0
    >>> bool(np.allclose(layer.inverse(x)[0], z, rtol=1e-12, atol=1e-12))
    True
    """

    _NAMES = ("unnormalized_widths", "unnormalized_heights", "unnormalized_derivatives",
              "unnormalized_lambdas")

    def __init__(self, dim, *, n_bins=8, bound=3.0, min_bin_width=None, min_bin_height=None,
                 min_derivative=None):
        where = "LinearRationalSpline"
        dim = check_dim(dim, where)
        smap = layer_spline_map(where, "pyro", n_bins, bound, min_bin_width, min_bin_height,
                                min_derivative)
        k = smap.n_bins
        u_d = np.log(np.expm1(1.0 - smap.min_derivative))   # inner derivatives 1
        super().__init__(dim, params={"unnormalized_widths": np.zeros((dim, k)),
                                      "unnormalized_heights": np.zeros((dim, k)),
                                      "unnormalized_derivatives": np.full((dim, k - 1), u_d),
                                      "unnormalized_lambdas": np.zeros((dim, k))})
        self.n_bins, self._map = k, smap

    def __repr__(self):
        return f"LinearRationalSpline(dim={self.dim}, n_bins={self.n_bins})"

    def _config(self):
        m = self._map
        return {"dim": self.dim, "n_bins": m.n_bins, "bound": m.bound,
                "min_bin_width": m.min_bin_width, "min_bin_height": m.min_bin_height,
                "min_derivative": m.min_derivative}

    @classmethod
    def _declare(cls, config):
        args = constructor_arguments(cls, config)
        where = cls.__name__
        dim = check_dim(args["dim"], where)
        k = layer_spline_map(where, "pyro", args["n_bins"], args["bound"], args["min_bin_width"],
                             args["min_bin_height"], args["min_derivative"]).n_bins
        return declaration({"unnormalized_widths": (dim, k), "unnormalized_heights": (dim, k),
                            "unnormalized_derivatives": (dim, k - 1),
                            "unnormalized_lambdas": (dim, k)})

    def _theta(self, dtype):
        p = self._p(dtype)
        return np.concatenate([p[name] for name in self._NAMES], axis=1)

    def _knots(self, dtype, vjp):
        """Per-coordinate knots, ``lambda``, ``sigmoid(u_lambda)`` and the map's pullback."""
        return _element_knots(self._theta(dtype), self._map, vjp)

    def _pass(self, apply, v, vjp):
        n, d = v.shape
        theta = self._theta(v.dtype)
        out, log_det, inner = lrs(apply, v.reshape(-1), np.tile(theta, (n, 1)), self._map, vjp)
        out, log_det = out.reshape(n, d), log_det.reshape(n, d).sum(axis=1)
        if not vjp:
            return out, log_det, None

        def pullback(out_bar, log_det_bar):
            v_bar, theta_bar = inner(out_bar.reshape(-1), np.repeat(log_det_bar, d))
            theta_bar = theta_bar.reshape(n, d, theta.shape[1]).sum(axis=0)
            bars = split_lrs_parameters(theta_bar, self.n_bins)
            return v_bar.reshape(n, d), dict(zip(self._NAMES, bars)), None

        return out, log_det, pullback

    def _forward_pass(self, z, context, vjp):
        return self._pass("spline", z, vjp)

    def _inverse_pass(self, x, context, vjp):
        return self._pass("inverse", x, vjp)

    def _input_knots(self, direction, v, context=None):
        """Knots and split points in the input space of ``direction`` (where the log-det's
        derivative jumps), ``(n, dim, 2K + 1)``."""
        knots = lrs_input_knots("spline" if direction == "forward" else "inverse",
                                self._theta(np.float64), self._map)
        return np.broadcast_to(knots, (v.shape[0],) + knots.shape)
