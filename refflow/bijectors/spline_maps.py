r"""Spline parameter maps by name: unconstrained values -> knots ``(x_k, y_k, d_k)``.

A rational-quadratic spline with ``K`` bins on ``[-B, B]`` is fixed by ``K + 1`` knot positions
``x_0 < ... < x_K``, heights ``y_0 < ... < y_K`` and derivatives ``d_0, ..., d_K > 0``. Every
library computes the spline the same way (Gregory & Delbourgo 1982) but turns a conditioner's
unconstrained output into knots differently, so the same raw vector gives different splines in
different libraries. Each published convention is a map here, with a hand-derived pullback:

=============  ============================================================  ===================
name           knots from ``(u_w, u_h, u_d)``                                inputs / defaults
=============  ============================================================  ===================
``"durkan"``   ``w = m_w + (1 - K m_w) softmax(u_w)``,                       ``(K, K, K-1)``;
               ``x_k = 2B cumsum(w)_{k-1} - B``, ``x_0 = -B``, ``x_K = B``;   ``B = 3``,
               heights alike; ``d_k = m_d + softplus(u_d)``, ``d_0 = d_K = 1``  ``m = 1e-3``
``"zuko"``     ``w = softmax(u_w / (1 + |2 u_w / ln s|))``,                  ``(K, K, K-1)``;
               ``x_k = B (2 cumsum(w)_{k-1} - 1)``, ``x_0 = -B``, ``x_K = B``;  ``B = 5``,
               heights alike; ``d_k = exp(u_d / (1 + |u_d / ln s|))``,        ``s = 1e-3``
               ``d_0 = d_K = 1``
``"distrax"``  ``w = softmax(u_w) (2B - K m_w) + m_w``,                       ``(K, K, K+1)``;
               ``x_k = -B + cumsum(w)_{k-1}``, ``x_0 = -B``, ``x_K = B``;      ``B`` required,
               heights alike; all ``K+1`` slopes                             ``m = 1e-4``
               ``d_k = softplus(u_d + ln(e^{1-m_d} - 1)) + m_d``, then the    (absolute)
               boundary mode
``"pyro"``     as ``"durkan"``, but ``d_0 = d_K = 1 - m_d = 0.999`` and         ``(K, K, K-1)``;
               **identity tails** (the slope jumps from 0.999 to 1 at ``±B``)  ``B = 3``, ``m = 1e-3``
``"flowjax"``  as ``"distrax"`` (``boundary_slopes='unconstrained'``), with       ``(K, K, K+1)``;
               ``m_w = m_h = m_d = 1e-3`` and **identity tails** (the slope   ``B`` required,
               jumps at ``±B``)                                              ``m = 1e-3``
=============  ============================================================  ===================

(``cumsum(w)_{k-1} = w_0 + ... + w_{k-1}``; the end knots are always set to exactly ``±B``.)

Sources and details
-------------------
``"durkan"``: Durkan et al. (2019), section 3.1 and appendix A.2; nflows
``transforms/splines/rational_quadratic.py`` (``unconstrained_rational_quadratic_spline`` with
``tails="linear"``, whose ``tail_bound`` is our ``bound``). The minimum bin width and height are
*fractions* of ``2B``: ``min_bin_width = min_bin_height = min_derivative = 1e-3``. nflows pads
``u_d`` with ``ln(e^{1 - m_d} - 1)`` so that ``m_d + softplus(.) = 1`` at both ends, up to
rounding; here the boundary derivatives are exactly ``1.0``. As nflows does, the knot positions
are computed as ``(2B) cumsum + (-B)`` and then the ends are overwritten with ``±B``, so bin
widths are differences of the rounded knot positions. Zero parameters do **not** give the
identity: the knots are uniform but the inner derivatives are ``softplus(0) + 1e-3 = 0.6941``.
Two intended differences from nflows: ``softplus`` is evaluated exactly
(``log(1 + e^u)`` without torch's ``threshold=20`` switch to ``u``, which differs by
``log1p(e^{-20}) = 2.1e-9`` at ``u = 20``), and the boundary derivatives are ``1.0`` and not
``m_d + softplus(ln(e^{1-m_d} - 1))`` (which rounds to within an ulp of 1).

``"zuko"``: zuko 1.6, ``zuko/transforms.py``, ``MonotonicRQSTransform(widths, heights,
derivatives, bound=5.0, slope=1e-3)``. The unconstrained widths and heights are soft-clipped,
``u / (1 + |2u / ln s|)`` (into ``(-|ln s|/2, |ln s|/2) = (-3.45, 3.45)``), before the softmax,
so the smallest possible bin is ``e^{-6.9} / (K - 1 + e^{-6.9})`` of ``2B`` but there is **no
explicit minimum**. Inner derivatives ``exp(u / (1 + |u / ln s|))`` lie in ``(s, 1/s)``; the
boundary derivatives are ``exp(0) = 1``. zuko computes the last knot as ``B (2 sum(w) - 1)``,
which can differ from ``B`` by an ulp; here it is exactly ``B`` (its mathematical value, and the
value the other maps use). ``min_derivative`` plays the role of zuko's ``slope``. Zero
parameters give the identity (uniform knots, unit slopes).

``"distrax"``: distrax ``bijectors/rational_quadratic_spline.py``, ``RationalQuadraticSpline(
params, range_min=-B, range_max=B, boundary_slopes='unconstrained', min_bin_size=1e-4,
min_knot_slope=1e-4)``, with ``params = concatenate([u_w, u_h, u_d])`` of size ``3K + 1``. The
minimum bin size is **absolute** (not a fraction of the range). All ``K + 1`` slopes are
learned; ``boundary_slopes`` then replaces some of them:

- ``'unconstrained'`` (default): as computed;
- ``'lower_identity'``: ``d_0 = 1``;  ``'upper_identity'``: ``d_K = 1``;
  ``'identity'``: ``d_0 = d_K = 1``;
- ``'circular'``: ``d_K = d_0`` (Rezende et al. 2020, circular splines).

Parameters that a mode discards get a zero cotangent. The tails beyond ``±B`` are linear with
the boundary slopes (log-det ``log d_0`` or ``log d_K``). Zero parameters give the identity up to
rounding: ``softplus(ln(e^{1-m} - 1)) + m = 1`` within an ulp or two.

``"pyro"``: Pyro 1.9.2, ``pyro/distributions/transforms/spline.py``,
``_monotonic_rational_spline(..., bound=3.0, min_bin_width=1e-3, min_bin_height=1e-3,
min_derivative=1e-3)`` with ``order="quadratic"`` (``Spline``, ``SplineCoupling``,
``SplineAutoregressive``): widths ``min_bin_width + (1 - min_bin_width * K) * softmax(u_w)``,
knots by ``_calculate_knots`` (nflows' order: ``(upper - lower) cumsum + lower``, ends
overwritten), inner derivatives ``min_derivative + softplus(u_d)``, and the boundary ones padded
with ``1.0 - min_derivative`` (its comment: "Not sure why this is 1.0 - min_derivative rather
than 1.0"). Outside ``[-B, B]`` Pyro applies the identity (``outputs[outside_interval_mask] =
inputs``), so the derivative jumps from 0.999 to 1 at ``±B``. Pyro's bin search adds ``eps =
1e-6`` to the knots (so a point within 1e-6 below a knot is put in the next bin; the spline is
continuous there, so the values agree to ~1e-6 times the slope difference).

``"flowjax"``: FlowJAX 19.1.2, ``flowjax/bijections/rational_quadratic_spline.py``,
``RationalQuadraticSpline(knots=K-1, interval=B, min_derivative=1e-3, min_width=1e-3)``: the
positions are paramax 0.0.5's ``RealToIncreasingOnInterval(zeros(knots + 1), interval,
min_width, include_endpoints="both")``, i.e. ``widths = min_width + (2B - min_width K)
softmax(arr)``, ``[lower, lower + cumsum(widths)[:-1], upper]`` (distrax's formula, with an
absolute minimum width 1e-3 for x and y); the derivatives are ``Parameterize(softplus(arr) +
min_derivative, full(knots + 2, inv_softplus(1 - min_derivative)))``, all ``K + 1`` learned.
FlowJAX's coupling and masked autoregressive layers *add* the conditioner's output to these raw
initial values (zeros for positions, ``softplus^-1(1 - m_d)`` for derivatives), which is the
``u`` here; zero ``u`` gives the identity. Tails are the identity (``jnp.where(in_bounds, y,
x)``, derivative 1 outside), so the learned boundary slopes make the derivative jump at ``±B``.
FlowJAX also clips ``y`` into the interval (a no-op up to rounding). Only symmetric intervals
``[-B, B]`` are supported here (FlowJAX also takes a tuple). (FlowJAX releases before the
paramax wrapper used ``K - 1`` raw positions with a ``softmax_adjust`` rescaling and a halved
first width; that older map is not provided.)

Pullbacks
---------
With ``p = softmax(u)`` and a cotangent ``g`` of ``p``: ``u_bar = p (g - sum_i p_i g_i)``.
Knot positions are ``x_j = a + c sum_{i<j} p_i`` (``j = 1, ..., K-1``; the ends are constant),
so ``g_i = c sum_{j=i+1}^{K-1} x_bar_j``, a reversed cumulative sum; ``c = 2B (1 - K m_w)`` for
durkan, ``2B`` for zuko and ``2B - K m_w`` for distrax. zuko's soft clip
``v = u / (1 + a|u|)`` has ``dv/du = 1 / (1 + a|u|)^2`` (``a = 2/|ln s|`` for widths and heights,
``1/|ln s|`` for derivatives, where ``d = exp(v)`` adds a factor ``d``); ``softplus' = sigmoid``.
Boundary values set to constants pass no cotangent back. With identity tails ("pyro",
"flowjax"), elements outside ``[-B, B]`` pass ``v_bar = out_bar`` and no knot cotangent
(:func:`refflow.bijectors.spline_core.rqs`).

References
----------
Durkan, Bekasov, Murray, Papamakarios, "Neural Spline Flows", 2019, arXiv:1906.04032.
Gregory, Delbourgo, "Piecewise rational quadratic interpolation to monotonic data",
IMA Journal of Numerical Analysis 2(2), 1982.
Rezende, Papamakarios, Racanière et al., "Normalizing Flows on Tori and Spheres", 2020,
arXiv:2002.02428.

Examples
--------
>>> import numpy as np
>>> from refflow.bijectors.spline_maps import get_spline_map
>>> m = get_spline_map("zuko", n_bins=4)
>>> xk, yk, dk = m(np.zeros(4), np.zeros(4), np.zeros(3))
>>> xk, dk
(array([-5. , -2.5,  0. ,  2.5,  5. ]), array([1., 1., 1., 1., 1.]))
>>> m = get_spline_map("durkan", n_bins=4)
>>> xk, yk, dk = m(np.zeros(4), np.zeros(4), np.zeros(3))
>>> xk, np.round(dk, 4)
(array([-3. , -1.5,  0. ,  1.5,  3. ]), array([1.    , 0.6941, 0.6941, 0.6941, 1.    ]))
>>> rng = np.random.default_rng(0)
>>> uw, uh, ud = rng.normal(size=(3, 4)), rng.normal(size=(3, 4)), rng.normal(size=(3, 3))
>>> (xk, yk, dk), pullback = m.vjp(uw, uh, ud)
>>> uw_bar, uh_bar, ud_bar = pullback(np.ones_like(xk), None, None)
>>> uw_bar.shape, ud_bar.shape
((3, 4), (3, 3))
"""

import math
import numbers

import numpy as np

from .._math import sigmoid, softplus
from .._validation import as_float_array

__all__ = ["SPLINE_MAPS", "SplineMap", "get_spline_map"]

BOUNDARY_SLOPES = ("unconstrained", "lower_identity", "upper_identity", "identity", "circular")


# ---------------------------------------------------------------------------------------------
# shared pieces and their transposes

def _softmax(u):
    """``exp(u - max u) * (1 / sum(exp(u - max u)))`` along the last axis (torch's order)."""
    e = np.exp(u - u.max(axis=-1, keepdims=True))
    return e * (1.0 / e.sum(axis=-1, keepdims=True))


def _softmax_vjp(p, g):
    """Transpose of the softmax JVP: ``u_bar = p (g - sum(p g))``."""
    return p * (g - (p * g).sum(axis=-1, keepdims=True))


def _interior_cumsum_vjp(k_bar, c):
    """Cotangent of ``p`` (length ``K``) from ``x_j = a + c sum_{i<j} p_i``, ``j = 1..K-1``.

    ``g_i = c sum_{j=i+1}^{K-1} x_bar_j``: a reversed cumulative sum of the interior knot
    cotangents, shifted by one, with ``g_{K-1} = 0``.
    """
    inner = k_bar[..., 1:-1]                              # x_bar_1 .. x_bar_{K-1}
    g = np.zeros(k_bar.shape[:-1] + (k_bar.shape[-1] - 1,), dtype=k_bar.dtype)
    g[..., :-1] = np.flip(np.cumsum(np.flip(inner, -1), axis=-1), -1)
    return c * g


def _check_real(value, what, where):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise ValueError(f"{where}: {what} must be a real number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{where}: {what} must be finite, got {value}")
    return value


# ---------------------------------------------------------------------------------------------
# the maps

class SplineMap:
    """A named map ``(u_w, u_h, u_d) -> (x_k, y_k, d_k)`` with its pullback.

    Create one with :func:`get_spline_map`. Attributes: ``name``, ``n_bins`` (``K``), ``bound``
    (``B``), ``n_derivatives`` (the size of ``u_d``: ``K - 1`` or ``K + 1``),
    ``identity_tails`` (True when the map is the identity outside ``[-B, B]`` whatever its
    boundary slopes) and the map's settings.

    ``m(uw, uh, ud)`` takes arrays of shapes ``(..., K)``, ``(..., K)``, ``(..., n_derivatives)``
    (same leading shape) and returns ``(xk, yk, dk)``, each ``(..., K + 1)``, in the inputs'
    dtype (float32 stays float32; anything else numeric becomes float64).
    ``m.vjp(uw, uh, ud)`` returns ``((xk, yk, dk), pullback)`` with
    ``pullback(xk_bar, yk_bar, dk_bar) -> (uw_bar, uh_bar, ud_bar)`` (``None`` means zeros),
    not summed over the leading axes.
    """

    name = ""
    identity_tails = False

    def __init__(self, n_bins, bound):
        self.n_bins = n_bins
        self.bound = bound

    @property
    def n_derivatives(self):
        return self.n_bins - 1

    def __repr__(self):
        settings = ", ".join(f"{k}={v!r}" for k, v in self.settings().items())
        return (f"get_spline_map({self.name!r}, n_bins={self.n_bins}, bound={self.bound}, "
                f"{settings})")

    def settings(self):
        """The map's settings besides ``n_bins`` and ``bound`` (constructor keywords)."""
        return {}

    # -- input handling ----------------------------------------------------------------------
    def _check(self, uw, uh, ud):
        where = f"spline map {self.name!r}"
        arrs = [as_float_array(a, where, n) for a, n in
                ((uw, "unnormalized_widths"), (uh, "unnormalized_heights"),
                 (ud, "unnormalized_derivatives"))]
        dtype = np.result_type(*arrs)
        uw, uh, ud = (np.ascontiguousarray(a, dtype=dtype) for a in arrs)
        K = self.n_bins
        if uw.ndim < 1 or uw.shape[-1] != K:
            raise ValueError(f"{where}: unnormalized_widths must have shape (..., {K}), "
                             f"got {uw.shape}")
        lead = uw.shape[:-1]
        if uh.shape != lead + (K,):
            raise ValueError(f"{where}: unnormalized_heights must have shape {lead + (K,)}, "
                             f"got {uh.shape}")
        nd = self.n_derivatives
        if ud.shape != lead + (nd,):
            raise ValueError(f"{where}: unnormalized_derivatives must have shape "
                             f"{lead + (nd,)}, got {ud.shape}")
        return uw, uh, ud

    def _bars(self, shape, dtype, bars):
        out = []
        for name, bar in zip(("xk_bar", "yk_bar", "dk_bar"), bars):
            if bar is None:
                out.append(np.zeros(shape, dtype=dtype))
                continue
            bar = as_float_array(bar, f"spline map {self.name!r} pullback", name)
            if bar.shape != shape:
                raise ValueError(f"spline map {self.name!r} pullback: {name} must have shape "
                                 f"{shape}, got {bar.shape}")
            out.append(bar.astype(dtype, copy=False))
        return out

    # -- public surface ----------------------------------------------------------------------
    def __call__(self, uw, uh, ud):
        return self._knots(*self._check(uw, uh, ud))[:3]

    def vjp(self, uw, uh, ud):
        uw, uh, ud = self._check(uw, uh, ud)
        xk, yk, dk, res = self._knots(uw, uh, ud)

        def pullback(xk_bar=None, yk_bar=None, dk_bar=None):
            bars = self._bars(xk.shape, xk.dtype, (xk_bar, yk_bar, dk_bar))
            return self._pullback(res, *bars)

        return (xk, yk, dk), pullback

    # -- per map -----------------------------------------------------------------------------
    def _knots(self, uw, uh, ud):  # -> xk, yk, dk, residuals
        raise NotImplementedError

    def _pullback(self, res, xk_bar, yk_bar, dk_bar):  # -> uw_bar, uh_bar, ud_bar
        raise NotImplementedError


class _EndSlopes:
    """``end_slopes="learned"`` for the maps whose boundary derivatives are otherwise 1: all
    ``K + 1`` derivatives come from ``u_d`` by the map's own inner formula, and the tails stay
    the identity (so the derivative jumps at ``±B``, as FlowJAX's). ``end_slopes="circular"``:
    ``K`` derivatives ``d_0 .. d_{K-1}`` come from ``u_d`` and ``d_K = d_0`` (normflows'
    ``tails="circular"``, ``normflows/utils/splines.py`` lines 42-44: ``u_d`` padded by one
    and its last entry set to its first); the linear tails beyond ``±B`` then have slopes
    ``d_0`` (only ``[-B, B]`` is used, as a circle)."""

    end_slopes = "fixed"

    @property
    def identity_tails(self):
        return self.end_slopes == "learned"

    @property
    def n_derivatives(self):
        return {"learned": self.n_bins + 1, "circular": self.n_bins}.get(self.end_slopes,
                                                                           self.n_bins - 1)

    def _slope_settings(self):
        return {} if self.end_slopes == "fixed" else {"end_slopes": self.end_slopes}

    def _inner(self, dk):
        """The entries of ``dk`` that come from ``u_d``."""
        if self.end_slopes == "circular":
            return dk[..., :-1]
        return dk if self.end_slopes == "learned" else dk[..., 1:-1]

    def _close(self, dk):
        """``d_K = d_0`` for ``end_slopes="circular"`` (after the inner ones are set)."""
        if self.end_slopes == "circular":
            dk[..., -1] = dk[..., 0]

    def _inner_bar(self, dk_bar):
        """The cotangent of the entries of ``dk`` that come from ``u_d``: with
        ``end_slopes="circular"`` ``d_K = d_0`` adds ``dk_bar[K]`` to ``dk_bar[0]``."""
        if self.end_slopes != "circular":
            return self._inner(dk_bar)
        g = dk_bar[..., :-1].copy()
        g[..., 0] += dk_bar[..., -1]
        return g


class _Durkan(_EndSlopes, SplineMap):
    name = "durkan"

    def __init__(self, n_bins, bound, min_bin_width, min_bin_height, min_derivative,
                 end_slopes="fixed"):
        super().__init__(n_bins, bound)
        self.min_bin_width = min_bin_width
        self.min_bin_height = min_bin_height
        self.min_derivative = min_derivative
        self.end_slopes = end_slopes

    def settings(self):
        return {"min_bin_width": self.min_bin_width, "min_bin_height": self.min_bin_height,
                "min_derivative": self.min_derivative, **self._slope_settings()}

    def _positions(self, u, min_bin):
        """nflows' order: ``(right - left) * cumsum(m + (1 - K m) p) + left``, ends overwritten."""
        t = u.dtype.type
        K, B = self.n_bins, self.bound
        p = _softmax(u)
        w = t(min_bin) + t(1.0 - min_bin * K) * p
        k = np.empty(u.shape[:-1] + (K + 1,), dtype=u.dtype)
        k[..., 1:] = t(B - (-B)) * np.cumsum(w, axis=-1) + t(-B)
        k[..., 0] = -B
        k[..., K] = B
        return k, p

    def _knots(self, uw, uh, ud):
        xk, pw = self._positions(uw, self.min_bin_width)
        yk, ph = self._positions(uh, self.min_bin_height)
        dk = np.ones_like(xk)
        self._inner(dk)[...] = ud.dtype.type(self.min_derivative) + softplus(ud)
        self._close(dk)
        return xk, yk, dk, (pw, ph, ud.copy())  # ud may be the caller's array

    def _pullback(self, res, xk_bar, yk_bar, dk_bar):
        pw, ph, ud = res
        t = pw.dtype.type
        K, B = self.n_bins, self.bound
        cw = t(2.0 * B * (1.0 - self.min_bin_width * K))
        ch = t(2.0 * B * (1.0 - self.min_bin_height * K))
        uw_bar = _softmax_vjp(pw, _interior_cumsum_vjp(xk_bar, cw))
        uh_bar = _softmax_vjp(ph, _interior_cumsum_vjp(yk_bar, ch))
        ud_bar = self._inner_bar(dk_bar) * sigmoid(ud)
        return uw_bar, uh_bar, ud_bar


class _Pyro(_Durkan):
    """Pyro's quadratic spline: the durkan map with boundary derivatives ``1 - m_d``."""

    name = "pyro"
    identity_tails = True

    def _knots(self, uw, uh, ud):
        xk, yk, dk, res = super()._knots(uw, uh, ud)
        dk[..., 0] = dk[..., -1] = 1.0 - self.min_derivative
        return xk, yk, dk, res


class _Zuko(_EndSlopes, SplineMap):
    name = "zuko"

    def __init__(self, n_bins, bound, slope, end_slopes="fixed"):
        super().__init__(n_bins, bound)
        self.min_derivative = slope
        self._log_slope = math.log(slope)
        self.end_slopes = end_slopes

    def settings(self):
        return {"min_derivative": self.min_derivative, **self._slope_settings()}

    def _positions(self, u):
        """zuko's order: ``v = u / (1 + |2 u / ln s|)``, ``B * (2 cumsum(pad(softmax v)) - 1)``."""
        t = u.dtype.type
        K, B = self.n_bins, self.bound
        q = 1.0 + np.abs(t(2.0) * u / t(self._log_slope))
        p = _softmax(u / q)
        k = np.empty(u.shape[:-1] + (K + 1,), dtype=u.dtype)
        k[..., 0] = 0.0
        k[..., 1:] = np.cumsum(p, axis=-1)
        k = t(B) * (t(2.0) * k - t(1.0))
        k[..., K] = B  # zuko's B (2 sum(p) - 1) is B up to an ulp; its exact value is B
        return k, p, q

    def _knots(self, uw, uh, ud):
        t = uw.dtype.type
        xk, pw, qw = self._positions(uw)
        yk, ph, qh = self._positions(uh)
        qd = 1.0 + np.abs(ud / t(self._log_slope))
        dk = np.ones_like(xk)
        self._inner(dk)[...] = np.exp(ud / qd)
        self._close(dk)
        return xk, yk, dk, (pw, qw, ph, qh, qd, self._inner(dk).copy())

    def _pullback(self, res, xk_bar, yk_bar, dk_bar):
        pw, qw, ph, qh, qd, d_inner = res
        c = pw.dtype.type(2.0 * self.bound)
        uw_bar = _softmax_vjp(pw, _interior_cumsum_vjp(xk_bar, c)) / (qw * qw)
        uh_bar = _softmax_vjp(ph, _interior_cumsum_vjp(yk_bar, c)) / (qh * qh)
        ud_bar = self._inner_bar(dk_bar) * d_inner / (qd * qd)
        return uw_bar, uh_bar, ud_bar


class _Distrax(SplineMap):
    name = "distrax"

    def __init__(self, n_bins, bound, min_bin_width, min_bin_height, min_derivative,
                 boundary_slopes):
        super().__init__(n_bins, bound)
        self.min_bin_width = min_bin_width
        self.min_bin_height = min_bin_height
        self.min_derivative = min_derivative
        self.boundary_slopes = boundary_slopes
        self._offset = math.log(math.exp(1.0 - min_derivative) - 1.0)  # distrax's order

    @property
    def n_derivatives(self):
        return self.n_bins + 1

    def settings(self):
        return {"min_bin_width": self.min_bin_width, "min_bin_height": self.min_bin_height,
                "min_derivative": self.min_derivative, "boundary_slopes": self.boundary_slopes}

    def _positions(self, u, min_bin):
        """distrax's order: ``w = p (2B - K m) + m``, ``-B + cumsum(w[:-1])``, ends ``±B``."""
        t = u.dtype.type
        K, B = self.n_bins, self.bound
        p = _softmax(u)
        w = p * t(2.0 * B - K * min_bin) + t(min_bin)
        k = np.empty(u.shape[:-1] + (K + 1,), dtype=u.dtype)
        k[..., 0] = -B
        k[..., 1:K] = t(-B) + np.cumsum(w[..., :-1], axis=-1)
        k[..., K] = B
        return k, p

    def _knots(self, uw, uh, ud):
        t = uw.dtype.type
        xk, pw = self._positions(uw, self.min_bin_width)
        yk, ph = self._positions(uh, self.min_bin_height)
        v = ud + t(self._offset)
        dk = softplus(v) + t(self.min_derivative)
        mode = self.boundary_slopes
        if mode in ("lower_identity", "identity"):
            dk[..., 0] = 1.0
        if mode in ("upper_identity", "identity"):
            dk[..., -1] = 1.0
        if mode == "circular":
            dk[..., -1] = dk[..., 0]
        return xk, yk, dk, (pw, ph, v)

    def _pullback(self, res, xk_bar, yk_bar, dk_bar):
        pw, ph, v = res
        t = pw.dtype.type
        K, B = self.n_bins, self.bound
        cw, ch = t(2.0 * B - K * self.min_bin_width), t(2.0 * B - K * self.min_bin_height)
        uw_bar = _softmax_vjp(pw, _interior_cumsum_vjp(xk_bar, cw))
        uh_bar = _softmax_vjp(ph, _interior_cumsum_vjp(yk_bar, ch))
        g = dk_bar.copy()
        mode = self.boundary_slopes
        if mode in ("lower_identity", "identity"):
            g[..., 0] = 0.0
        if mode in ("upper_identity", "identity"):
            g[..., -1] = 0.0
        if mode == "circular":  # d_K = d_0: both cotangents flow to u_0, none to u_K
            g[..., 0] += g[..., -1]
            g[..., -1] = 0.0
        ud_bar = g * sigmoid(v)
        return uw_bar, uh_bar, ud_bar


class _FlowJAX(_Distrax):
    """FlowJAX 19's spline: distrax's positions and slopes (absolute minimum width, all
    ``K + 1`` slopes learned), identity tails."""

    name = "flowjax"
    identity_tails = True

    def __init__(self, n_bins, bound, min_bin_width, min_bin_height, min_derivative):
        super().__init__(n_bins, bound, min_bin_width, min_bin_height, min_derivative,
                         "unconstrained")

    def settings(self):
        return {"min_bin_width": self.min_bin_width, "min_bin_height": self.min_bin_height,
                "min_derivative": self.min_derivative}


# ---------------------------------------------------------------------------------------------
# the factory

_DEFAULTS = {
    "durkan": {"bound": 3.0, "min_bin_width": 1e-3, "min_bin_height": 1e-3,
               "min_derivative": 1e-3},
    "zuko": {"bound": 5.0, "min_bin_width": 0.0, "min_bin_height": 0.0, "min_derivative": 1e-3},
    "distrax": {"bound": None, "min_bin_width": 1e-4, "min_bin_height": 1e-4,
                "min_derivative": 1e-4},
    "pyro": {"bound": 3.0, "min_bin_width": 1e-3, "min_bin_height": 1e-3,
             "min_derivative": 1e-3},
    "flowjax": {"bound": None, "min_bin_width": 1e-3, "min_bin_height": 1e-3,
                "min_derivative": 1e-3},
}

#: The names :func:`get_spline_map` accepts.
SPLINE_MAPS = tuple(_DEFAULTS)


def get_spline_map(name, *, n_bins, bound=None, min_bin_width=None, min_bin_height=None,
                   min_derivative=None, boundary_slopes=None, end_slopes=None):
    """The spline parameter map ``name``, configured; see the module docstring for the formulas.

    Parameters
    ----------
    name : {"durkan", "zuko", "distrax", "pyro", "flowjax"}
    n_bins : int
        ``K >= 2`` (FlowJAX's ``knots`` is ``K - 1``: its inner knots).
    bound : float, optional
        ``B > 0``; the spline lives on ``[-B, B]``. Defaults: durkan and pyro 3, zuko 5;
        required for distrax (its ``range_min = -B``, ``range_max = B``) and flowjax (its
        ``interval``).
    min_bin_width, min_bin_height : float, optional
        durkan and pyro: fractions of ``2B``, default ``1e-3``, ``K m < 1``. distrax and
        flowjax: absolute sizes, default ``1e-4`` (flowjax ``1e-3``, its ``min_width``),
        ``K m < 2B``. zuko has no minimum bin size (only ``None`` or 0).
    min_derivative : float, optional
        durkan: ``m_d >= 0``, default ``1e-3``. zuko: its ``slope``, in ``(0, 1)``, default
        ``1e-3``. distrax: its ``min_knot_slope``, in ``[0, 1)``, default ``1e-4``.
        pyro: as durkan (default 1e-3; the boundary derivatives are ``1 - m_d``). flowjax:
        its ``min_derivative``, in ``[0, 1)``, default 1e-3.
    end_slopes : {"fixed", "learned", "circular"}, optional
        durkan and zuko only: ``"fixed"`` (default) keeps ``d_0 = d_K = 1``; ``"learned"``
        makes all ``K + 1`` derivatives come from ``u_d`` (then of size ``K + 1``) by the map's
        inner formula, with identity tails, so the derivative jumps at ``±B`` (FlowJAX's tail
        convention on nflows' or zuko's knots); ``"circular"``: ``u_d`` of size ``K`` gives
        ``d_0 .. d_{K-1}`` and ``d_K = d_0`` (normflows' ``tails="circular"``).
    boundary_slopes : str, optional
        distrax only: one of ``'unconstrained'`` (default), ``'lower_identity'``,
        ``'upper_identity'``, ``'identity'``, ``'circular'``. durkan and zuko always have unit
        boundary slopes (``None`` or ``'identity'`` accepted); pyro's are ``1 - m_d`` and
        flowjax's learned (only ``None``).

    Returns
    -------
    SplineMap

    Raises
    ------
    ValueError
        Unknown name or setting, ``K < 2``, non-positive or non-finite bound, negative minima,
        minimum bins that do not fit (``K m_w >= 1`` for durkan, ``K m_w >= 2B`` for distrax),
        a minimum derivative outside its range.
    """
    if not isinstance(name, str) or name not in _DEFAULTS:
        raise ValueError(f"get_spline_map: unknown spline map {name!r}; expected one of "
                         f"{list(SPLINE_MAPS)}")
    where = f"get_spline_map({name!r})"
    if (isinstance(n_bins, (bool, np.bool_)) or not isinstance(n_bins, numbers.Integral)):
        raise ValueError(f"{where}: n_bins must be an integer, got {n_bins!r}")
    K = int(n_bins)
    if K < 2:
        raise ValueError(f"{where}: n_bins must be at least 2, got {K}")
    defaults = _DEFAULTS[name]
    if bound is None:
        bound = defaults["bound"]
        if bound is None:
            raise ValueError(f"{where}: bound is required (the spline range is [-bound, bound])")
    B = _check_real(bound, "bound", where)
    if B <= 0:
        raise ValueError(f"{where}: bound must be positive, got {B}")
    vals = {}
    for key, given in (("min_bin_width", min_bin_width), ("min_bin_height", min_bin_height),
                       ("min_derivative", min_derivative)):
        v = defaults[key] if given is None else _check_real(given, key, where)
        if v < 0:
            raise ValueError(f"{where}: {key} must be non-negative, got {v}")
        vals[key] = v

    if end_slopes not in (None, "fixed", "learned", "circular"):
        raise ValueError(f"{where}: end_slopes must be 'fixed' or 'learned' (or 'circular', "
                         f"d_K = d_0), got {end_slopes!r}")
    if end_slopes in ("learned", "circular") and name not in ("durkan", "zuko"):
        raise ValueError(f"{where}: end_slopes={end_slopes!r} applies to the durkan and zuko "
                         f"maps (distrax: boundary_slopes; pyro and flowjax fix their own)")
    end_slopes = end_slopes or "fixed"
    if name in ("pyro", "flowjax") and boundary_slopes is not None:
        raise ValueError(f"{where}: the boundary slopes of this map are fixed by its "
                         f"convention; boundary_slopes must be None, got {boundary_slopes!r}")
    if name not in ("distrax", "pyro", "flowjax") and boundary_slopes not in (None, "identity"):
        raise ValueError(f"{where}: boundary slopes are fixed to 1; boundary_slopes must be None "
                         f"or 'identity', got {boundary_slopes!r}")

    if name in ("durkan", "pyro"):
        if name == "pyro" and not vals["min_derivative"] < 1.0:
            raise ValueError(f"{where}: min_derivative must be below 1 (the boundary "
                             f"derivatives are 1 - min_derivative), got {vals['min_derivative']}")
        for key in ("min_bin_width", "min_bin_height"):
            if vals[key] * K >= 1.0:
                raise ValueError(f"{where}: {key} * n_bins must be below 1 (it is a fraction of "
                                 f"the interval), got {vals[key]} * {K} = {vals[key] * K}")
        if name == "pyro":
            return _Pyro(K, B, vals["min_bin_width"], vals["min_bin_height"],
                         vals["min_derivative"])
        return _Durkan(K, B, vals["min_bin_width"], vals["min_bin_height"],
                       vals["min_derivative"], end_slopes)
    if name == "zuko":
        for key in ("min_bin_width", "min_bin_height"):
            if vals[key] != 0.0:
                raise ValueError(f"{where}: zuko's map has no minimum bin size; {key} must be "
                                 f"None or 0, got {vals[key]}")
        s = vals["min_derivative"]
        if not 0.0 < s < 1.0:
            raise ValueError(f"{where}: min_derivative (zuko's slope) must lie in (0, 1), got {s}")
        return _Zuko(K, B, s, end_slopes)
    # distrax, flowjax
    for key in ("min_bin_width", "min_bin_height"):
        if vals[key] * K >= 2.0 * B:
            raise ValueError(f"{where}: {key} * n_bins must be below the range 2 * bound "
                             f"(it is an absolute size), got {vals[key]} * {K} >= {2.0 * B}")
    if not vals["min_derivative"] < 1.0:
        raise ValueError(f"{where}: min_derivative must be below 1 (u = 0 gives slope 1), got "
                         f"{vals['min_derivative']}")
    if name == "flowjax":
        return _FlowJAX(K, B, vals["min_bin_width"], vals["min_bin_height"],
                        vals["min_derivative"])
    mode = "unconstrained" if boundary_slopes is None else boundary_slopes
    if mode not in BOUNDARY_SLOPES:
        raise ValueError(f"{where}: boundary_slopes must be one of {list(BOUNDARY_SLOPES)}, got "
                         f"{boundary_slopes!r}")
    return _Distrax(K, B, vals["min_bin_width"], vals["min_bin_height"], vals["min_derivative"],
                    mode)
