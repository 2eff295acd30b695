r"""Rezende & Mohamed's planar and radial flows and van den Berg et al.'s Sylvester flows.

All three are residual maps ``x = z + (a correction)``, made invertible by the constraints of
the papers, with exact inverses (to float64 round-off) computed here:

==========  ====================================  ===============================================
bijector    forward ``x = T(z)``                  inverse
==========  ====================================  ===============================================
Planar      ``z + u_hat tanh(w^T z + b)``         scalar monotone equation for ``a = w^T z``
                                                  (safeguarded Newton, numba kernel)
Planar      ``z + u_hat h(w^T z + b)``, ``h``     closed form: ``w^T x + b = p D(p)``, ``D``
(leaky)     a leaky ReLU (normflows)              fixed by the sign of ``w^T x + b``
Radial      ``z + beta (z - z0) / (alpha + r)``   closed form: ``r`` solves a quadratic
Sylvester   ``z + Q R tanh(R~ Q^T z + b)``        triangular system in ``v = Q^T z``, one scalar
                                                  monotone equation per coordinate (numba kernel)
==========  ====================================  ===============================================

with ``r = |z - z0|``. Every real value of the stored (unconstrained) parameters gives an
invertible map; the classes' Notes give the constraints, both log-dets and both pullbacks.

A common piece
--------------
Planar and Sylvester log-dets are sums of ``log(1 + gamma h'(a))`` with ``h = tanh``,
``h' = 1 - tanh^2 = sech^2 in (0, 1]`` and ``gamma > -1``. With ``delta = 1 + gamma > 0``
evaluated without cancellation (``softplus(w^T u)`` for Planar; ``1 - |tanh p| |tanh q|`` as
``(1 - |tanh p|) + |tanh p| (1 - |tanh q|)`` for Sylvester's diagonals)::

    D = 1 + gamma h'(a) = tanh(a)^2 + delta h'(a)            (two non-negative terms)
    log D = log1p(gamma h')                                  where gamma h' > -1/2
          = logaddexp(2 log|tanh a|, log delta + log h')     elsewhere (finite even when
                                                             delta underflows)
    d log D / d a = -2 tanh(a) gamma h'(a) / D,      d log D / d gamma = h'(a) / D

so the log-dets stay exact near the boundary ``gamma -> -1`` and finite for raw parameters far
beyond it (``log h' = log 4 - 2|a| - 2 log1p(exp(-2|a|))`` never overflows).

References
----------
Rezende, Mohamed, "Variational Inference with Normalizing Flows", ICML 2015, arXiv:1505.05770
(section 4.1 and appendix A.1: planar and radial flows and their invertibility constraints).
van den Berg, Hasenclever, Tomczak, Welling, "Sylvester Normalizing Flows for Variational
Inference", UAI 2018, arXiv:1803.05649 (the map, its determinant, H-SNF and T-SNF).
"""

import math

import numpy as np

from .._math import log_softplus, sigmoid, softplus
from .._validation import check_choice, check_dim, check_real, check_rng
from ..io.spec import constructor_arguments, declaration
from ..kernels.planar import planar_inverse, sylvester_inverse
from .base import Bijector
from ._orthogonal import check_permutation, reflect, reflect_pullback, scaled_reflections

__all__ = ["Planar", "Radial", "Sylvester"]

_LN2 = math.log(2.0)
_LN4 = math.log(4.0)
_Q_KINDS = ("householder", "permutation")
_RADIAL_KINDS = ("pyro", "normflows")


# ------------------------------------------------------------------------------ shared pieces
def _log_one_minus_abs_tanh(p):
    """``log(1 - |tanh p|) = log 2 - 2|p| - log1p(exp(-2|p|))`` (no cancellation, no overflow)."""
    a = np.abs(p)
    return _LN2 - 2.0 * a - np.log1p(np.exp(-2.0 * a))


def _sech2(a):
    """``sech^2 a = 4 e / (1 + e)^2`` with ``e = exp(-2|a|)``: no overflow, full accuracy."""
    e = np.exp(-2 * np.abs(a))
    return 4 * e / ((1 + e) * (1 + e))


def _tanh_terms(a, gamma, delta, log_delta):
    """``t = tanh a``, ``h' = sech^2 a``, ``D = 1 + gamma h'`` and ``log D``, elementwise.

    ``gamma``, ``delta = 1 + gamma`` (accurate) and ``log delta`` broadcast against ``a``; all
    in the dtype of ``a`` (module docstring, "A common piece").
    """
    t = np.tanh(a)
    abs_a = np.abs(a)
    e = np.exp(-2 * abs_a)
    hp = 4 * e / ((1 + e) * (1 + e))
    log_hp = _LN4 - 2 * abs_a - 2 * np.log1p(e)
    d = t * t + delta * hp
    gh = gamma * hp
    with np.errstate(divide="ignore", invalid="ignore"):
        log_d = np.where(gh > -0.5, np.log1p(gh),
                         np.logaddexp(2 * np.log(np.abs(t)), log_delta + log_hp))
    return t, hp, d, log_d.astype(a.dtype, copy=False)


# ------------------------------------------------------------------------------------- Planar
_PLANAR_ACTIVATIONS = ("tanh", "leaky_relu")
#: the leaky inverse refuses slopes ``1 + w^T u_hat h'`` below this many ulps of
#: ``1 + |w| |u_hat|``: the rounding of the computed ``w^T u_hat`` is of that size
_SLOPE_ULPS = 64


def _planar_activation(activation, negative_slope):
    """Checked ``(activation, negative_slope as float)`` of :class:`Planar`."""
    activation = check_choice(activation, _PLANAR_ACTIVATIONS, "Planar", "activation")
    # 1 + alpha c > 0 for every c > -1 needs alpha <= 1
    slope = check_real(negative_slope, "Planar", "negative_slope", low=0.0, high=1.0,
                       low_open=True)
    return activation, slope


class Planar(Bijector):
    r"""Planar flow ``x = z + u_hat tanh(w^T z + b)`` with the invertibility constraint of
    Rezende & Mohamed (2015, appendix A.1).

    Parameters
    ----------
    dim : int
        Event size ``d``.
    activation : {"tanh", "leaky_relu"}, default "tanh"
        ``h``: ``tanh`` (Rezende & Mohamed), or the leaky ReLU ``h(p) = p`` for ``p >= 0``,
        ``negative_slope * p`` below (normflows' ``Planar(act="leaky_relu")``), whose inverse
        is closed-form (see Notes).
    negative_slope : float, default 0.2
        The leaky ReLU's slope ``alpha`` in ``(0, 1]`` (normflows' value 0.2); used with
        ``activation="leaky_relu"`` only.
    constraint : {"rezende", "flowjax"}, default "rezende"
        The map ``m`` of the invertibility constraint: the paper's ``m(s) = -1 + softplus(s)``,
        or FlowJAX's ``m(s) = -1 + log(1 + softplus(s))`` (FlowJAX 19.1.2,
        ``flowjax/bijections/planar.py``, ``get_act_scale``); both give ``w^T u_hat > -1``.
    rng : None, int or numpy.random.Generator, optional
        Initialisation: ``u``, ``w`` and ``b`` are drawn from ``N(0, 1/d)`` (entries of standard
        deviation ``1/sqrt(d)``, so ``|w| ~ 1``; ``w`` is nonzero with probability one).

    Attributes
    ----------
    params : ParamDict
        ``"u"`` ``(d,)``: the raw vector ``u``; ``"w"`` ``(d,)``; ``"b"`` ``(1,)``: the bias.

    Raises
    ------
    ValueError
        For an invalid ``dim``, ``activation``, ``negative_slope``, ``constraint`` or ``rng``; at
        call time, if ``params["w"]`` is zero (``u_hat`` is undefined there, see Notes).

    See Also
    --------
    Radial, Sylvester

    Notes
    -----
    Constraint (appendix A.1): with ``m(s) = -1 + softplus(s)``, the layer uses ::

        u_hat = u + (m(w^T u) - w^T u) w / |w|^2,     so   c := w^T u_hat = m(w^T u) > -1

    for every ``u`` and nonzero ``w`` (``m(s) - s = softplus(-s) - 1`` and
    ``1 + c = softplus(w^T u)`` are evaluated without cancellation). ``constraint="flowjax"``
    uses ``m(s) = -1 + log(1 + softplus(s))`` instead: ``1 + c = log1p(softplus(s))`` (its log
    ``log softplus(s) + log1p(-softplus(s) / 2)`` below ``s = -30``), ``m'(s) = sigmoid(s) /
    (1 + softplus(s))``, ``1 - m'(s) = (1 + softplus(s) - sigmoid(s)) / (1 + softplus(s))``
    (a sum of positive terms). With ``a = w^T z``,
    ``p = a + b``, ``t = tanh p``, ``h' = 1 - t^2``::

        forward   x = z + u_hat t,                 log_det =  log(1 + c h'(p))
        inverse   a solves a + c tanh(a + b) = w^T x,   z = x - u_hat tanh(a + b),
                  log_det = -log(1 + c h'(a + b))

    ``det(I + u_hat h' w^T) = 1 + c h'`` (matrix determinant lemma) and ``1 + c h' > 0`` since
    ``h' in (0, 1]``. ``w^T x = a + c tanh(a + b)`` is strictly increasing in ``a`` (slope
    ``1 + c h'``), so the inverse is one scalar root per row, found to round-off by
    :func:`refflow.kernels.planar.planar_inverse` (safeguarded Newton). The log-det is
    ``log1p(c h')``, or ``logaddexp(2 log|t|, log softplus(w^T u) + log h')`` when
    ``c h' < -1/2`` (no cancellation near ``c = -1``, finite for any raw ``u``).

    Pullbacks (``D = 1 + c h'``, ``dlogD/dp = -2 t c h' / D``, ``dlogD/dc = h' / D``).
    Forward, per row, ``g_p = (x_bar . u_hat) h' + ld_bar dlogD/dp``::

        z_bar = x_bar + g_p w,    b_bar = sum g_p,    w_bar|direct = sum g_p z,
        u_hat_bar = sum x_bar t,  c_bar = sum ld_bar h' / D

    Inverse, by the implicit-function theorem on ``F(a) = a + c h(a + b) - w^T x``:
    ``dp = (w^T dx + x^T dw - t dc + db) / D``; with
    ``r = (-(z_bar . u_hat) h' + ld_bar 2 t c h' / D) / D``::

        x_bar = z_bar + r w,      b_bar = sum r,      w_bar|direct = sum r x,
        u_hat_bar = -sum z_bar t, c_bar = sum (-r t - ld_bar h' / D)

    Both then go through the constraint: with ``s = w^T u``, ``q = |w|^2``,
    ``k = (m(s) - s) / q`` (``u_hat = u + k w``, ``c = m(s)``; for the paper's ``m``,
    ``m' = sigmoid`` and ``1 - m' = sigmoid(-s)``)::

        g_s   = -(u_hat_bar . w) (1 - m'(s)) / q + c_bar m'(s)
        u_bar = u_hat_bar + g_s w
        w_bar = w_bar|direct + k u_hat_bar + g_s u - 2 k (u_hat_bar . w) w / q

    ``w = 0`` leaves ``u_hat`` undefined (the limit depends on the direction of approach):
    both passes raise ``ValueError`` there.

    *Leaky ReLU* (``activation="leaky_relu"``, slope ``alpha in (0, 1]``): ``h(p) = h'(p) p``
    with ``h' = 1`` for ``p >= 0`` and ``alpha`` below (normflows' convention at the kink
    ``p = 0``), so ``D = 1 + c h'`` is ``softplus(w^T u)`` or ``(1 - alpha) + alpha
    softplus(w^T u)``, a sum of non-negative terms (positive: the same constraint
    suffices). The inverse is closed-form: ``q = w^T x + b = p (1 + c h'(p))`` has the sign
    of ``p``, so ``p = q / D`` with ``h'`` chosen by the sign of ``q``, and ``z = x - u_hat
    h(p)`` (solved with the slope of the float map, ``1 + (w^T u_hat) h'`` of the rounded
    ``u_hat``; a ``ValueError`` where that slope is below the rounding of ``w^T u_hat``, 64
    ulps of ``1 + |w| |u_hat|``, where the float map collapses a half-line and has no
    inverse). ``D`` is piecewise constant in ``p`` (``dlogD/dp = 0`` away from the kink), so
    the pullbacks are those above with ``t = h(p)``, ``h' = h'(p)`` and the ``dlogD/dp``
    terms dropped::

        forward   g_p = (x_bar . u_hat) h'
        inverse   r = -(z_bar . u_hat) h' / D     (from dp = (dq - h dc) / D)

    References
    ----------
    Rezende, Mohamed, "Variational Inference with Normalizing Flows", 2015, arXiv:1505.05770
    (section 4.1, the planar map and its determinant; appendix A.1, the constraint).
    Stimper, Liu, Campbell, Berenz, Ryll, Schölkopf, Hernández-Lobato, "normflows: A PyTorch
    Package for Normalizing Flows", 2023, arXiv:2302.12014 (its ``Planar`` with the leaky
    ReLU of slope 0.2 and its closed-form inverse).

    Examples
    --------
    >>> import numpy as np
    >>> from refflow import Planar
    >>> layer = Planar(2, rng=0)
    >>> layer.params["u"] = [-3.0, 1.0]               # w^T u = -3: u_hat is projected
    >>> layer.params["w"] = [1.0, 0.0]
    >>> bool(layer.constrained()["w_dot_u_hat"] > -1)
    True
    >>> z = np.random.default_rng(1).normal(size=(4, 2))
    >>> x, log_det = layer.forward(z)
    >>> z_back, inv_log_det = layer.inverse(x)
    >>> bool(np.allclose(z_back, z, rtol=0, atol=1e-13)), bool(np.allclose(log_det, -inv_log_det))
    (True, True)
    """

    def __init__(self, dim, *, activation="tanh", negative_slope=0.2, constraint="rezende",
                 rng=None):
        dim = check_dim(dim, "Planar")
        self.activation, self.negative_slope = _planar_activation(activation, negative_slope)
        self.constraint = check_choice(constraint, ("rezende", "flowjax"), "Planar",
                                       "constraint")
        rng = check_rng(rng, "Planar: rng")
        std = 1.0 / math.sqrt(dim)
        super().__init__(dim, params={
            "u": rng.normal(0.0, std, size=dim),
            "w": rng.normal(0.0, std, size=dim),
            "b": rng.normal(0.0, std, size=1),
        })

    def _config(self):
        # the defaults are left out, so files written before the options keep their form
        config = {"dim": self.dim}
        if self.activation != "tanh":
            config.update(activation=self.activation, negative_slope=self.negative_slope)
        if self.constraint != "rezende":
            config["constraint"] = self.constraint
        return config

    def __repr__(self):
        extra = ""
        if self.activation != "tanh":
            extra += f", activation={self.activation!r}, negative_slope={self.negative_slope}"
        if self.constraint != "rezende":
            extra += f", constraint={self.constraint!r}"
        return f"Planar(dim={self.dim}{extra})"

    @classmethod
    def _declare(cls, config):
        args = constructor_arguments(cls, config)
        dim = check_dim(args["dim"], "Planar")
        _planar_activation(args["activation"], args["negative_slope"])
        check_choice(args["constraint"], ("rezende", "flowjax"), "Planar", "constraint")
        return declaration({"u": (dim,), "w": (dim,), "b": (1,)})

    def _terms(self, p, c, delta, log_delta):
        """``(t = h(p), h'(p), D, log D, k = -dlogD/dp)`` in the dtype of ``p``."""
        if self.activation == "tanh":
            t, hp, d, log_d = _tanh_terms(p, c, delta, log_delta)
            return t, hp, d, log_d, 2 * t * c * hp / d
        dt = p.dtype.type
        alpha = dt(self.negative_slope)
        pos = p >= 0
        hp = np.where(pos, dt(1), alpha)
        d_low = (dt(1) - alpha) + alpha * delta     # 1 + alpha c, no cancellation
        d = np.where(pos, delta, d_low)
        log_d = np.where(pos, log_delta, np.log(d_low)).astype(p.dtype, copy=False)
        return hp * p, hp, d, log_d, np.zeros_like(p)

    def _coefficients(self, direction):
        """The constrained quantities in float64 (module docstring and class Notes)."""
        p = self._p(np.float64)
        u, w, b = p["u"], p["w"], float(p["b"][0])
        scale = float(np.max(np.abs(w)))
        if scale == 0.0:
            raise self._domain_error(
                direction,
                "params['w'] is zero: u_hat = u + (m(w^T u) - w^T u) w / |w|^2 is undefined for "
                "w = 0 (set a nonzero w)")
        unit = w / scale
        norm1 = math.sqrt(float(unit @ unit))
        nrm = scale * norm1                  # |w| without underflow or overflow of |w|^2
        w_unit = unit / norm1
        s = float(w @ u)
        if self.constraint == "rezende":
            k_num = float(softplus(-s)) - 1.0   # m(s) - s
            one_plus_c = float(softplus(s))
            log_one_plus_c = float(log_softplus(s))
            dm, one_minus_dm = float(sigmoid(s)), float(sigmoid(-s))
        else:  # FlowJAX: m(s) = -1 + log1p(softplus(s))
            sp = float(softplus(s))
            one_plus_c = math.log1p(sp)
            k_num = one_plus_c - 1.0 - s
            # log(log1p(sp)) = log(sp) + log(log1p(sp) / sp); below s = -30, log1p(-sp / 2)
            log_one_plus_c = float(log_softplus(s)) + (math.log1p(-0.5 * sp) if s < -30.0
                                                        else math.log(one_plus_c / sp))
            sg = float(sigmoid(s))
            dm, one_minus_dm = sg / (1.0 + sp), (1.0 + sp - sg) / (1.0 + sp)
        u_hat = u + (k_num / nrm) * w_unit
        return dict(u=u, w=w, b=b, s=s, nrm=nrm, w_unit=w_unit, k_num=k_num, u_hat=u_hat,
                    c=one_plus_c - 1.0, one_plus_c=one_plus_c,
                    log_one_plus_c=log_one_plus_c, dm=dm, one_minus_dm=one_minus_dm)

    def constrained(self):
        """The map's constrained coefficients (float64), e.g. to compare with another library.

        Returns
        -------
        dict
            ``"u_hat"`` ``(d,)``, ``"w"`` ``(d,)``, ``"b"`` (float), ``"w_dot_u_hat"``
            (``c = m(w^T u) > -1``) and ``"one_plus_w_dot_u_hat"`` (``softplus(w^T u) > 0``,
            evaluated without cancellation).
        """
        k = self._coefficients("constrained")
        return {"u_hat": k["u_hat"].copy(), "w": k["w"].copy(), "b": k["b"],
                "w_dot_u_hat": k["c"], "one_plus_w_dot_u_hat": k["one_plus_c"]}

    @staticmethod
    def _param_grads(k, u_hat_bar, c_bar, w_direct, b_bar):
        """Carry ``(u_hat_bar, c_bar)`` through the constraint to ``u`` and ``w`` (float64)."""
        u_hat_bar = np.asarray(u_hat_bar, dtype=np.float64)
        c_bar = float(c_bar)
        nrm, w_unit, k_num = k["nrm"], k["w_unit"], k["k_num"]
        uw = float(u_hat_bar @ w_unit)                      # (u_hat_bar . w) / |w|
        g_s = -(uw / nrm) * k["one_minus_dm"] + c_bar * k["dm"]
        kq = k_num / (nrm * nrm)                            # k = (m(s) - s) / |w|^2
        u_bar = u_hat_bar + g_s * k["w"]
        w_bar = (np.asarray(w_direct, dtype=np.float64) + kq * u_hat_bar + g_s * k["u"]
                 - 2.0 * uw * kq * w_unit)
        return {"u": u_bar, "w": w_bar, "b": np.array([float(b_bar)])}

    def _cast(self, k, dtype):
        u_hat, w = k["u_hat"].astype(dtype), k["w"].astype(dtype)
        return (u_hat, w, dtype.type(k["b"]), dtype.type(k["c"]), dtype.type(k["one_plus_c"]),
                dtype.type(k["log_one_plus_c"]))

    def _forward_pass(self, z, context, vjp):
        k = self._coefficients("forward")
        u_hat, w, b, c, delta, log_delta = self._cast(k, z.dtype)
        t, hp, d, log_d, curv = self._terms(z @ w + b, c, delta, log_delta)
        x = z + t[:, None] * u_hat
        if not vjp:
            return x, log_d, None

        def pullback(x_bar, log_det_bar):
            g_p = (x_bar @ u_hat) * hp - log_det_bar * curv
            grads = self._param_grads(k, t @ x_bar, np.sum(log_det_bar * hp / d),
                                      g_p @ z, np.sum(g_p))
            return x_bar + g_p[:, None] * w, grads, None

        return x, log_d, pullback

    def _inverse_pass(self, x, context, vjp):
        k = self._coefficients("inverse")
        u_hat, w, b, c, delta, log_delta = self._cast(k, x.dtype)
        # The c the float map actually has: w . u_hat of the rounded u_hat, so that the solve
        # inverts the forward pass as computed (the log-det keeps the accurate 1 + c).
        if self.activation == "tanh":
            c_map = x.dtype.type(w.astype(np.float64) @ u_hat.astype(np.float64))
            a = np.empty(x.shape[0], dtype=x.dtype)
            planar_inverse(x @ w, c_map, b, delta, a)
            p = a + b
        else:  # q = w^T x + b = p D(p), D > 0 chosen by the sign of q (class Notes)
            # solved with the slope the float map has: 1 + c_map h' for the c_map = w . u_hat
            # of the rounded u_hat, as delta + (c_map - c) h' (no cancellation near c = -1)
            c_map = w.astype(np.float64) @ u_hat.astype(np.float64)
            q = x @ w + b
            _, hq, d_q, _, _ = self._terms(q, c, delta, log_delta)
            d_map = d_q + x.dtype.type(c_map - k["c"]) * hq
            # below the rounding of w . u_hat the float map's slope is noise: p = q / d_map
            # would be meaningless (the forward map collapses a half-line onto w^T x + b ~ 0)
            noise = _SLOPE_ULPS * np.finfo(x.dtype).eps * (
                1.0 + float(np.linalg.norm(w.astype(np.float64))
                            * np.linalg.norm(u_hat.astype(np.float64))))
            # the slope of the p >= 0 half-line (the smaller one, alpha <= 1) decides for every
            # row: where it is noise that half-line collapses onto w^T x + b ~ 0, and the sign
            # of q no longer tells the branches apart
            slope = k["one_plus_c"] + (c_map - k["c"])
            if not slope > noise:
                raise self._domain_error(
                    "inverse",
                    f"the leaky map's slope 1 + w^T u_hat = {slope:.3g} is below the rounding "
                    f"of w^T u_hat ({noise:.3g}): the float map is not invertible (softplus(w^T "
                    f"u) too small for this precision)")
            p = q / d_map
        t, hp, d, log_d, curv = self._terms(p, c, delta, log_delta)
        z = x - t[:, None] * u_hat
        if not vjp:
            return z, -log_d, None

        def pullback(z_bar, log_det_bar):
            r = (-(z_bar @ u_hat) * hp + log_det_bar * curv) / d
            grads = self._param_grads(k, -(t @ z_bar), np.sum(-r * t - log_det_bar * hp / d),
                                      r @ x, np.sum(r))
            return z_bar + r[:, None] * w, grads, None

        return z, -log_d, pullback


# ------------------------------------------------------------------------------------- Radial
class Radial(Bijector):
    r"""Radial flow ``x = z + beta (z - z0) / (alpha + |z - z0|)`` (Rezende & Mohamed 2015),
    with ``alpha > 0`` and ``beta >= -alpha`` by construction and a closed-form inverse.

    Parameters
    ----------
    dim : int
        Event size ``d``.
    parameterization : {"pyro", "normflows"}, default "pyro"
        How the raw ``alpha_raw`` gives ``alpha``: ``"pyro"``, ``alpha = softplus(alpha_raw)``
        (Rezende & Mohamed's appendix A.1, Pyro's ``Radial``); ``"normflows"``,
        ``alpha = |alpha_raw|`` (normflows' ``Radial``). Both have ``alpha + beta =
        softplus(beta_raw)``.
    rng : None, int or numpy.random.Generator, optional
        Initialisation: ``z0``, ``alpha`` and ``beta`` (raw) drawn from ``N(0, 1/d)``.

    Attributes
    ----------
    params : ParamDict
        ``"z0"`` ``(d,)``: the centre; ``"alpha"`` ``(1,)`` and ``"beta"`` ``(1,)``: raw values
        ``alpha_raw``, ``beta_raw``.

    Raises
    ------
    ValueError
        For an invalid ``dim``, ``parameterization`` or ``rng``; at call time, when
        ``softplus`` of a raw value underflows to 0 (raw values below about -745), where
        ``alpha > 0`` or ``alpha + beta > 0`` no longer holds in float64, and for
        ``"normflows"`` when ``alpha_raw = 0`` (``alpha = 0``: the map is singular at ``z0``).

    See Also
    --------
    Planar, Sylvester

    Notes
    -----
    Constraints (appendix A.1): ``alpha = softplus(alpha_raw) > 0`` (``"normflows"``:
    ``alpha = |alpha_raw|``, positive except at ``alpha_raw = 0``, which is refused) and
    ``beta = -alpha + softplus(beta_raw) >= -alpha``; write ``S = softplus(beta_raw) = alpha +
    beta > 0``. With ``v = z - z0``, ``r = |v|``, ``h = 1 / (alpha + r)``::

        forward   x = z0 + rho v,     rho = 1 + beta h = (r + S) / (alpha + r)
        log_det = (d - 1) log(1 + beta h) + log(1 + beta h + beta h'(r) r)
                = (d - 1) log((r + S) / (alpha + r)) + log(N / (alpha + r)^2),
                  N = r (2 alpha + r) + alpha S

    (both factors positive: sums of positive terms; each log is taken as ``log1p(beta h)`` and
    ``log1p(alpha beta h^2)`` when that argument is within ``(-1/2, 1/2)``).
    Inverse: ``|x - z0| = phi(r) = r (r + S) / (alpha + r)``, strictly increasing, so with
    ``y = x - z0``, ``R = |y|``, ``r`` is the positive root of ``r^2 + (S - R) r - R alpha = 0``::

        B = R - S,    sq = hypot(B, 2 sqrt(R alpha))          (no cancellation under the root)
        r = (B + sq) / 2  if B >= 0,   else  2 R alpha / (sq - B)      (no cancellation)
        z = z0 + kappa y,   kappa = (alpha + r) / (r + S),   log_det = -log_det_forward(r)

    ``z = z0`` (``r = 0``) is an ordinary point: ``x = z0``, ``log_det = d log(S / alpha)``; the
    pullbacks take the unit vector ``v / r`` as 0 there (the log-det's kink in ``r``).

    Pullbacks, with ``L(r, alpha, S)`` the forward log-det::

        L_r = (alpha - S) ((d-1) / ((r + S)(alpha + r)) + 2 alpha / (N (alpha + r)))
        L_alpha = (2r + S) / N - (d + 1) / (alpha + r),    L_S = (d-1) / (r + S) + alpha / N
        rho_r = (alpha - S) / (alpha + r)^2,   rho_alpha = -rho / (alpha + r),
        rho_S = 1 / (alpha + r)

    forward, ``xv = x_bar . v``, ``g = xv rho_r + ld_bar L_r``: ``z_bar = rho x_bar + g v / r``,
    ``z0_bar = sum (x_bar - z_bar)``, ``alpha_bar = sum xv rho_alpha + ld_bar L_alpha``,
    ``S_bar = sum xv rho_S + ld_bar L_S``. Inverse, by the implicit-function theorem on
    ``phi(r, alpha, S) = R`` (``phi_r = N / (alpha + r)^2``, ``phi_alpha = -r rho / (alpha + r)``,
    ``phi_S = r / (alpha + r)``), with ``zy = z_bar . y``,
    ``kappa_r = (S - alpha) / (r + S)^2``, ``kappa_alpha = 1 / (r + S)``,
    ``kappa_S = -kappa / (r + S)`` and ``q = (zy kappa_r - ld_bar L_r) / phi_r``::

        x_bar = kappa z_bar + q y / R,        z0_bar = sum (z_bar - x_bar)
        alpha_bar = sum zy kappa_alpha - ld_bar L_alpha - q phi_alpha
        S_bar     = sum zy kappa_S - ld_bar L_S - q phi_S

    and finally ``alpha_raw_bar = alpha_bar sigmoid(alpha_raw)`` (``"pyro"``) or
    ``alpha_bar sign(alpha_raw)`` (``"normflows"``: ``d|a|/da = sign(a)``, taken as 0 at
    ``a = 0`` as torch's ``abs`` does; that point itself is refused), and
    ``beta_raw_bar = S_bar sigmoid(beta_raw)``.

    References
    ----------
    Rezende, Mohamed, "Variational Inference with Normalizing Flows", 2015, arXiv:1505.05770
    (section 4.1, the radial map and its determinant; appendix A.1 for ``beta >= -alpha``).
    Stimper, Liu, Campbell, Berenz, Ryll, Schölkopf, Hernández-Lobato, "normflows: A PyTorch
    Package for Normalizing Flows", 2023, arXiv:2302.12014 (its ``Radial``, ``alpha =
    |alpha_raw|``).

    Examples
    --------
    >>> import numpy as np
    >>> from refflow import Radial
    >>> layer = Radial(3, rng=0)
    >>> layer.params["beta"] = [-50.0]                # beta -> -alpha: nearly collapses z0
    >>> k = layer.constrained()
    >>> bool(k["beta"] >= -k["alpha"]), bool(k["alpha_plus_beta"] > 0)
    (True, True)
    >>> z = np.random.default_rng(1).normal(size=(4, 3))
    >>> x, log_det = layer.forward(z)
    >>> z_back, inv_log_det = layer.inverse(x)
    >>> bool(np.allclose(z_back, z, rtol=0, atol=1e-13)), bool(np.allclose(log_det, -inv_log_det))
    (True, True)
    """

    def __init__(self, dim, *, parameterization="pyro", rng=None):
        dim = check_dim(dim, "Radial")
        self.parameterization = check_choice(parameterization, _RADIAL_KINDS, "Radial",
                                             "parameterization")
        rng = check_rng(rng, "Radial: rng")
        std = 1.0 / math.sqrt(dim)
        super().__init__(dim, params={
            "z0": rng.normal(0.0, std, size=dim),
            "alpha": rng.normal(0.0, std, size=1),
            "beta": rng.normal(0.0, std, size=1),
        })

    def _config(self):
        if self.parameterization == "pyro":  # the default: configurations as before it existed
            return {"dim": self.dim}
        return {"dim": self.dim, "parameterization": self.parameterization}

    @classmethod
    def _declare(cls, config):
        args = constructor_arguments(cls, config)
        dim = check_dim(args["dim"], "Radial")
        check_choice(args["parameterization"], _RADIAL_KINDS, "Radial", "parameterization")
        return declaration({"z0": (dim,), "alpha": (1,), "beta": (1,)})

    def _coefficients(self, direction):
        p = self._p(np.float64)
        a_raw, b_raw = float(p["alpha"][0]), float(p["beta"][0])
        s = float(softplus(b_raw))
        if self.parameterization == "normflows":
            alpha, d_alpha = abs(a_raw), float(np.sign(a_raw))
            if alpha == 0.0:
                raise self._domain_error(
                    direction,
                    "alpha = |params['alpha']| is 0: the map (z - z0) (r + S) / r is singular "
                    "at z0 (set a nonzero params['alpha'])")
        else:
            alpha, d_alpha = float(softplus(a_raw)), float(sigmoid(a_raw))
        for name, value, raw in (("alpha", alpha, a_raw), ("alpha + beta", s, b_raw)):
            if value == 0.0:
                key = "alpha" if name == "alpha" else "beta"
                raise self._domain_error(
                    direction,
                    f"{name} = softplus(params['{key}']) underflows to 0 for params['{key}'] = "
                    f"{raw!r}: the map is not invertible in float64 (keep raw values above -745)")
        return dict(z0=p["z0"], alpha=alpha, s=s, d_alpha=d_alpha, sig_b=float(sigmoid(b_raw)))

    def constrained(self):
        """The constrained coefficients (float64): ``{"z0", "alpha", "beta", "alpha_plus_beta"}``.

        ``alpha_plus_beta = softplus(beta_raw) > 0`` is evaluated directly (``beta`` itself is
        ``alpha_plus_beta - alpha``, rounded).
        """
        k = self._coefficients("constrained")
        return {"z0": k["z0"].copy(), "alpha": k["alpha"], "beta": k["s"] - k["alpha"],
                "alpha_plus_beta": k["s"]}

    def _log_det(self, r, alpha, s):
        """Forward log-det at radius ``r`` and ``N = r (2 alpha + r) + alpha S`` (dtype of r)."""
        d = self.dim
        ar = alpha + r
        n = r * (2 * alpha + r) + alpha * s
        beta_h = (s - alpha) / ar                       # 1 + beta h = (r + S)/(alpha + r)
        ab_h2 = alpha * (s - alpha) / (ar * ar)         # N / (alpha + r)^2 = 1 + alpha beta h^2
        with np.errstate(divide="ignore", invalid="ignore"):
            log_first = np.where(np.abs(beta_h) < 0.5, np.log1p(beta_h), np.log(r + s) - np.log(ar))
            log_second = np.where(np.abs(ab_h2) < 0.5, np.log1p(ab_h2), np.log(n) - 2 * np.log(ar))
        return (d - 1) * log_first + log_second, n

    def _partials(self, r, alpha, s, n):
        """``L_r``, ``L_alpha``, ``L_S`` (class Notes)."""
        d = self.dim
        ar = alpha + r
        l_r = (alpha - s) * ((d - 1) / ((r + s) * ar) + 2 * alpha / (n * ar))
        l_alpha = (2 * r + s) / n - (d + 1) / ar
        l_s = (d - 1) / (r + s) + alpha / n
        return l_r, l_alpha, l_s

    @staticmethod
    def _raw_grads(k, z0_bar, alpha_bar, s_bar):
        return {"z0": np.asarray(z0_bar, dtype=np.float64),
                "alpha": np.array([float(alpha_bar) * k["d_alpha"]]),
                "beta": np.array([float(s_bar) * k["sig_b"]])}

    def _forward_pass(self, z, context, vjp):
        k = self._coefficients("forward")
        dt = z.dtype.type
        z0, alpha, s = k["z0"].astype(z.dtype), dt(k["alpha"]), dt(k["s"])
        v = z - z0
        r = np.sqrt(np.einsum("ij,ij->i", v, v))
        ar = alpha + r
        rho = (r + s) / ar
        x = z0 + rho[:, None] * v
        log_det, n = self._log_det(r, alpha, s)
        if not vjp:
            return x, log_det, None

        def pullback(x_bar, log_det_bar):
            l_r, l_alpha, l_s = self._partials(r, alpha, s, n)
            xv = np.einsum("ij,ij->i", x_bar, v)
            g = xv * (alpha - s) / (ar * ar) + log_det_bar * l_r
            unit = np.divide(v, r[:, None], out=np.zeros_like(v), where=r[:, None] > 0)
            z_bar = rho[:, None] * x_bar + g[:, None] * unit
            alpha_bar = np.sum(-xv * rho / ar + log_det_bar * l_alpha)
            s_bar = np.sum(xv / ar + log_det_bar * l_s)
            grads = self._raw_grads(k, (x_bar - z_bar).sum(axis=0), alpha_bar, s_bar)
            return z_bar, grads, None

        return x, log_det, pullback

    def _inverse_pass(self, x, context, vjp):
        k = self._coefficients("inverse")
        dt = x.dtype.type
        z0, alpha, s = k["z0"].astype(x.dtype), dt(k["alpha"]), dt(k["s"])
        y = x - z0
        big_r = np.sqrt(np.einsum("ij,ij->i", y, y))
        b = big_r - s
        sq = np.hypot(b, 2 * np.sqrt(big_r * alpha))
        with np.errstate(divide="ignore", invalid="ignore"):
            r = np.where(b >= 0, (b + sq) / 2, 2 * big_r * alpha / (sq - b))
        ar = alpha + r
        kappa = ar / (r + s)
        z = z0 + kappa[:, None] * y
        log_det, n = self._log_det(r, alpha, s)
        if not vjp:
            return z, -log_det, None

        def pullback(z_bar, log_det_bar):
            l_r, l_alpha, l_s = self._partials(r, alpha, s, n)
            zy = np.einsum("ij,ij->i", z_bar, y)
            rs = r + s
            q = (zy * (s - alpha) / (rs * rs) - log_det_bar * l_r) / (n / (ar * ar))
            unit = np.divide(y, big_r[:, None], out=np.zeros_like(y), where=big_r[:, None] > 0)
            x_bar = kappa[:, None] * z_bar + q[:, None] * unit
            phi_alpha = -r * rs / (ar * ar)
            alpha_bar = np.sum(zy / rs - log_det_bar * l_alpha - q * phi_alpha)
            s_bar = np.sum(-zy * kappa / rs - log_det_bar * l_s - q * r / ar)
            grads = self._raw_grads(k, (z_bar - x_bar).sum(axis=0), alpha_bar, s_bar)
            return x_bar, grads, None

        return z, -log_det, pullback


# ---------------------------------------------------------------------------------- Sylvester
class Sylvester(Bijector):
    r"""Sylvester flow ``x = z + Q R tanh(R~ Q^T z + b)`` (van den Berg et al. 2018), with an
    exact inverse.

    Parameters
    ----------
    dim : int
        Event size ``d``.
    m : int, optional
        Number of columns of ``Q`` (``1 <= m <= d``); default ``d``.
    q : {"householder", "permutation"}, default "householder"
        How ``Q`` is made orthonormal: ``"householder"`` (H-SNF) takes the first ``m`` columns
        of ``H_k ... H_1`` (trainable reflections, as :class:`Householder`);
        ``"permutation"`` (T-SNF) takes ``Q[:, j] = e_{perm[j]}`` for a fixed permutation.
    n_reflections : int, optional
        Number ``k`` of reflections for ``q="householder"``; default ``m`` (``m`` reflections
        reach every ``d x m`` orthonormal frame, up to column signs that ``R``, ``R~`` absorb).
        Must be None for ``q="permutation"``.
    permutation : array_like of int of shape (dim,), optional
        For ``q="permutation"`` only; default drawn at random from ``rng``. The paper's T-SNF
        alternates the identity ``np.arange(d)`` and the reversal ``np.arange(d)[::-1]``.
    rng : None, int or numpy.random.Generator, optional
        Initialisation: Householder vectors from ``N(0, 1)``; the entries of ``R``, ``R~``,
        their raw diagonals and ``b`` from ``N(0, 1/m)``; the default permutation.

    Attributes
    ----------
    params : ParamDict
        ``"r_entries"``, ``"r_tilde_entries"`` ``(m(m-1)/2,)``: strictly-upper entries of
        ``R``, ``R~`` in the order of ``np.triu_indices(m, 1)``; ``"unconstrained_r_diag"``,
        ``"unconstrained_r_tilde_diag"`` ``(m,)``: raw diagonals ``p``, ``q``
        (``R_ii = tanh p_i``, ``R~_ii = tanh q_i``); ``"b"`` ``(m,)``; and for
        ``q="householder"`` ``"vectors"`` ``(k, d)`` (row ``j`` is ``v_{j+1}``).
    buffers : dict
        ``{"permutation": int64 array of shape (d,)}`` for ``q="permutation"``; else empty.

    Raises
    ------
    ValueError
        For an invalid ``dim``, ``m``, ``q``, ``n_reflections``, ``permutation`` or ``rng``;
        at call time, if a Householder vector is zero.

    See Also
    --------
    Planar : the case ``m = 1``, with its own constraint.
    Householder : the reflections used for ``Q``.

    Notes
    -----
    ``Q`` is ``d x m`` with orthonormal columns; ``R``, ``R~`` are ``m x m`` upper triangular
    with ``R_ii R~_ii = tanh(p_i) tanh(q_i) > -1`` (the paper's ``tanh`` diagonals), so with
    ``h' in (0, 1]`` every ``1 + R_ii R~_ii h' > 0``. With ``v = Q^T z``, ``a = R~ v + b``::

        forward   x = z + Q R tanh(a),
                  log_det = sum_i log(1 + R_ii R~_ii h'(a_i))
        inverse   y = Q^T x;  solve y = v + R tanh(R~ v + b) for v (upper triangular: from
                  v_m back to v_1, each a strictly increasing scalar equation, see
                  :func:`refflow.kernels.planar.sylvester_inverse`);
                  z = x - Q R tanh(a),   log_det = -sum_i log(1 + R_ii R~_ii h'(a_i))

    (``det(I_d + Q R H R~ Q^T) = det(I_m + H R~ R)`` by Sylvester's determinant identity, and
    ``R~ R`` is upper triangular with diagonal ``R~_ii R_ii``.) The component of ``x`` outside
    ``span(Q)`` passes unchanged when ``m < d``. ``1 + R_ii R~_ii`` is evaluated as
    ``(1 - |tanh p|) + |tanh p| (1 - |tanh q|)`` when the signs differ (no cancellation, so raw
    diagonals of +-50, where ``tanh`` rounds to +-1, still give finite log-dets).

    Pullbacks, row-wise (``T = tanh(A)``, ``H' = sech^2(A)``, ``D = 1 + gamma H'``,
    ``gamma_i = R_ii R~_ii``, ``G = ld_bar 2 T gamma H' / D``, row vectors as in the code).
    Forward: ``P = x_bar Q``, ``A_bar = (P R) H' - G``::

        z_bar = x_bar + (A_bar R~) Q^T,   R_bar = triu(P^T T),   R~_bar = triu(A_bar^T V),
        b_bar = sum A_bar,   Q_bar = x_bar^T (T R^T) + z^T (A_bar R~),
        gamma_bar = sum ld_bar H' / D

    Inverse, by the implicit-function theorem on ``F(v) = v + R tanh(R~ v + b) - y`` (Jacobian
    ``J = I + R H' R~``, upper triangular): ``v_bar = z_bar Q + G R~``, then
    ``lambda = J^{-T} v_bar`` by forward substitution, with ``mu = H' R^T lambda``::

        lambda_i = (v_bar_i - sum_{k<i} R~_ki mu_k - R~_ii H'_i sum_{j<i} R_ji lambda_j) / D_i
        y_bar = lambda - z_bar Q,   x_bar = z_bar + y_bar Q^T,
        R_bar = -triu(lambda^T T),  A_bar = G - mu,  R~_bar = triu(A_bar^T V),  b_bar = sum A_bar,
        Q_bar = -z_bar^T (T R^T) + x^T y_bar,   gamma_bar = -sum ld_bar H' / D

    Then ``p_bar_i = (R_bar_ii + gamma_bar_i R~_ii) sech^2 p_i``,
    ``q_bar_i = (R~_bar_ii + gamma_bar_i R_ii) sech^2 q_i``, and ``Q_bar`` goes back through
    the reflections as in :class:`Householder` (``Q^T`` is the reflections applied to the rows
    ``e_1 .. e_m``).

    References
    ----------
    van den Berg, Hasenclever, Tomczak, Welling, "Sylvester Normalizing Flows for Variational
    Inference", 2018, arXiv:1803.05649.
    Tomczak, Welling, "Improving Variational Auto-Encoders using Householder Flow", 2016,
    arXiv:1611.09630.

    Examples
    --------
    >>> import numpy as np
    >>> from refflow import Sylvester
    >>> layer = Sylvester(4, m=2, rng=0)
    >>> k = layer.constrained()
    >>> k["q"].shape, bool(np.allclose(k["q"].T @ k["q"], np.eye(2)))
    ((4, 2), True)
    >>> z = np.random.default_rng(1).normal(size=(5, 4))
    >>> x, log_det = layer.forward(z)
    >>> z_back, inv_log_det = layer.inverse(x)
    >>> bool(np.allclose(z_back, z, rtol=0, atol=1e-13)), bool(np.allclose(log_det, -inv_log_det))
    (True, True)
    >>> layer = Sylvester(3, q="permutation", permutation=[2, 1, 0], rng=0)   # T-SNF
    >>> layer.constrained()["q"]
    array([[0., 0., 1.],
           [0., 1., 0.],
           [1., 0., 0.]])
    """

    def __init__(self, dim, *, m=None, q="householder", n_reflections=None, permutation=None,
                 rng=None):
        dim = check_dim(dim, "Sylvester")
        rng = check_rng(rng, "Sylvester: rng")
        if not (isinstance(q, str) and q in _Q_KINDS):
            raise ValueError(f"Sylvester: q must be one of {list(_Q_KINDS)}, got {q!r}")
        m = dim if m is None else check_dim(m, "Sylvester", "m")
        if m > dim:
            raise ValueError(f"Sylvester: m must satisfy 1 <= m <= dim = {dim}, got m = {m}")
        buffers = {}
        if q == "householder":
            if permutation is not None:
                raise ValueError("Sylvester: permutation applies only to q='permutation'")
            k = m if n_reflections is None else check_dim(n_reflections, "Sylvester",
                                                           "n_reflections")
        else:
            if n_reflections is not None:
                raise ValueError("Sylvester: n_reflections applies only to q='householder'")
            k = None
            if permutation is None:
                perm = rng.permutation(dim).astype(np.int64)
            else:
                perm = check_permutation(permutation, dim, "Sylvester")
            buffers["permutation"] = perm
        n_off = m * (m - 1) // 2
        std = 1.0 / math.sqrt(m)
        params = {}
        if k is not None:
            params["vectors"] = rng.standard_normal((k, dim))
        params.update({
            "r_entries": rng.normal(0.0, std, size=n_off),
            "unconstrained_r_diag": rng.normal(0.0, std, size=m),
            "r_tilde_entries": rng.normal(0.0, std, size=n_off),
            "unconstrained_r_tilde_diag": rng.normal(0.0, std, size=m),
            "b": rng.normal(0.0, std, size=m),
        })
        super().__init__(dim, params=params, buffers=buffers)
        self.m, self.q, self.n_reflections = m, q, k

    def __repr__(self):
        extra = f", n_reflections={self.n_reflections}" if self.q == "householder" else ""
        return f"Sylvester(dim={self.dim}, m={self.m}, q={self.q!r}{extra})"

    def _config(self):
        config = {"dim": self.dim, "m": self.m, "q": self.q, "n_reflections": self.n_reflections}
        if self.q == "permutation":
            config["permutation"] = np.asarray(self.buffers["permutation"]).tolist()
        return config

    @classmethod
    def _declare(cls, config):
        args = constructor_arguments(cls, config)
        where = "Sylvester"
        dim = check_dim(args["dim"], where)
        q, m, k = args["q"], args["m"], args["n_reflections"]
        if not (isinstance(q, str) and q in _Q_KINDS):
            raise ValueError(f"{where}: q must be one of {list(_Q_KINDS)}, got {q!r}")
        m = dim if m is None else check_dim(m, where, "m")
        n_off = m * (m - 1) // 2
        params, buffers = {}, {}
        if q == "householder":
            params["vectors"] = (m if k is None else check_dim(k, where, "n_reflections"), dim)
        else:
            buffers["permutation"] = ("<i8", (dim,))
        params.update({"r_entries": (n_off,), "unconstrained_r_diag": (m,),
                       "r_tilde_entries": (n_off,), "unconstrained_r_tilde_diag": (m,),
                       "b": (m,)})
        return declaration(params, buffers)

    # ------------------------------------------------------------------ the constrained map
    def _orthonormal(self, direction):
        """``Q`` (float64, ``(d, m)``) and what its pullback needs (None for a permutation)."""
        d, m = self.dim, self.m
        if self.q == "permutation":
            perm = np.array(self.buffers["permutation"], dtype=np.int64, copy=True)
            q = np.zeros((d, m))
            q[perm[:m], np.arange(m)] = 1.0
            return q, None
        w, scale = scaled_reflections(self, direction, self._p(np.float64)["vectors"])
        s = np.einsum("ij,ij->i", w, w)
        rows = np.eye(m, d)          # Q^T = the reflections applied to e_1 .. e_m (as rows)
        inputs = []
        for j in range(w.shape[0]):
            inputs.append(rows)
            rows = reflect(rows, w[j], s[j])
        return np.ascontiguousarray(rows.T), (w, s, scale, inputs)

    def _triangular(self):
        """``R``, ``R~`` (float64), ``gamma = diag R * diag R~``, ``delta = 1 + gamma`` and
        ``log delta`` (accurate), and ``sech^2`` of the raw diagonals."""
        p = self._p(np.float64)
        m = self.m
        iu = np.triu_indices(m, 1)
        rp, rq = p["unconstrained_r_diag"], p["unconstrained_r_tilde_diag"]
        tp, tq = np.tanh(rp), np.tanh(rq)
        r = np.zeros((m, m))
        r[iu] = p["r_entries"]
        r[np.diag_indices(m)] = tp
        rt = np.zeros((m, m))
        rt[iu] = p["r_tilde_entries"]
        rt[np.diag_indices(m)] = tq
        gamma = tp * tq
        with np.errstate(divide="ignore"):
            log_delta = np.where(
                gamma >= 0, np.log1p(np.abs(gamma)),
                np.logaddexp(_log_one_minus_abs_tanh(rp),
                             np.log(np.abs(tp)) + _log_one_minus_abs_tanh(rq)))
        return dict(r=r, rt=rt, b=p["b"], gamma=gamma, delta=np.exp(log_delta),
                    log_delta=log_delta, tp=tp, tq=tq, sech2_p=_sech2(rp), sech2_q=_sech2(rq))

    def constrained(self):
        """The map's matrices (float64), e.g. to compare with another library.

        Returns
        -------
        dict
            ``"q"`` ``(d, m)`` with orthonormal columns, ``"r"`` and ``"r_tilde"`` ``(m, m)``
            upper triangular, ``"b"`` ``(m,)`` and ``"one_plus_diag_products"``
            ``(m,)``: ``1 + R_ii R~_ii > 0``, evaluated without cancellation.
        """
        q, _ = self._orthonormal("constrained")
        tri = self._triangular()
        return {"q": q, "r": tri["r"], "r_tilde": tri["rt"], "b": tri["b"].copy(),
                "one_plus_diag_products": tri["delta"]}

    def _state(self, direction, dtype):
        q, q_res = self._orthonormal(direction)
        tri = self._triangular()
        cast = {key: tri[key].astype(dtype) for key in ("r", "rt", "b", "gamma", "delta",
                                                         "log_delta")}
        return q.astype(dtype), q_res, tri, cast

    def _param_grads(self, q_res, tri, q_bar, r_bar, rt_bar, b_bar, gamma_bar):
        """Carry the matrix cotangents (``(m, m)`` full, upper part used) to the parameters."""
        iu = np.triu_indices(self.m, 1)
        f64 = lambda a: np.asarray(a, dtype=np.float64)  # noqa: E731
        r_bar, rt_bar, gamma_bar = f64(r_bar), f64(rt_bar), f64(gamma_bar)
        grads = {
            "r_entries": r_bar[iu],
            "unconstrained_r_diag": (np.diagonal(r_bar) + gamma_bar * tri["tq"]) * tri["sech2_p"],
            "r_tilde_entries": rt_bar[iu],
            "unconstrained_r_tilde_diag": ((np.diagonal(rt_bar) + gamma_bar * tri["tp"])
                                           * tri["sech2_q"]),
            "b": f64(b_bar),
        }
        if q_res is not None:
            w, s, scale, inputs = q_res
            rows_bar = f64(q_bar).T
            vec_bar = np.zeros_like(w)
            for j in range(w.shape[0] - 1, -1, -1):
                rows_bar, vec_bar[j] = reflect_pullback(inputs[j], rows_bar, w[j], s[j])
            with np.errstate(over="ignore"):  # reported by the public wrapper if it overflows
                grads["vectors"] = vec_bar / scale[:, None]
        return grads

    def _forward_pass(self, z, context, vjp):
        q, q_res, tri, c = self._state("forward", z.dtype)
        r, rt = c["r"], c["rt"]
        v = z @ q
        t, hp, d, log_d = _tanh_terms(v @ rt.T + c["b"], c["gamma"], c["delta"], c["log_delta"])
        w = t @ r.T
        x = z + w @ q.T
        if not vjp:
            return x, log_d.sum(axis=1), None

        def pullback(x_bar, log_det_bar):
            p = x_bar @ q
            g = log_det_bar[:, None] * (2 * t * c["gamma"] * hp / d)
            a_bar = (p @ r) * hp - g
            v_bar = a_bar @ rt
            q_bar = x_bar.T @ w + z.T @ v_bar
            grads = self._param_grads(q_res, tri, q_bar, p.T @ t, a_bar.T @ v, a_bar.sum(axis=0),
                                      (log_det_bar[:, None] * hp / d).sum(axis=0))
            return x_bar + v_bar @ q.T, grads, None

        return x, log_d.sum(axis=1), pullback

    def _inverse_pass(self, x, context, vjp):
        q, q_res, tri, c = self._state("inverse", x.dtype)
        r, rt = c["r"], c["rt"]
        n, m = x.shape[0], self.m
        y = x @ q
        v, a, t = (np.empty((n, m), dtype=x.dtype) for _ in range(3))
        sylvester_inverse(y, r, rt, c["b"], c["delta"], v, a, t)
        t, hp, d, log_d = _tanh_terms(a, c["gamma"], c["delta"], c["log_delta"])
        w = t @ r.T
        z = x - w @ q.T
        if not vjp:
            return z, -log_d.sum(axis=1), None

        def pullback(z_bar, log_det_bar):
            zq = z_bar @ q
            g = log_det_bar[:, None] * (2 * t * c["gamma"] * hp / d)
            v_bar = zq + g @ rt
            # lambda = J^{-T} v_bar, J = I + R H' R~ (upper triangular): forward substitution
            lam = np.zeros_like(v_bar)
            mu = np.zeros_like(v_bar)
            for i in range(m):
                rhs = v_bar[:, i] - mu[:, :i] @ rt[:i, i]
                back = lam[:, :i] @ r[:i, i]
                lam[:, i] = (rhs - rt[i, i] * hp[:, i] * back) / d[:, i]
                mu[:, i] = hp[:, i] * (back + r[i, i] * lam[:, i])
            y_bar = lam - zq
            a_bar = g - mu
            q_bar = -(z_bar.T @ w) + x.T @ y_bar
            gamma_bar = -(log_det_bar[:, None] * hp / d).sum(axis=0)
            grads = self._param_grads(q_res, tri, q_bar, -(lam.T @ t), a_bar.T @ v,
                                      a_bar.sum(axis=0), gamma_bar)
            return z_bar + y_bar @ q.T, grads, None

        return z, -log_d.sum(axis=1), pullback
