r"""Gaussianization: an elementwise mixture CDF followed by the normal quantile function.

Per coordinate (Chen & Gopinath 2000; Meng et al. 2020; zuko's ``GaussianizationTransform``)::

    z = Phi^{-1}( eps/2 + (1 - eps) C(x) ),       C(x) = sum_k w_k F(u_k)

with ``K`` components, ``u_k`` an increasing affine function of ``x`` with slope ``p_k > 0``,
``F`` the standard normal CDF ``Phi`` (``kernel="gaussian"``) or the logistic CDF (``"logistic"``,
Meng et al.'s code) and ``eps`` a shrinkage toward 1/2 (0 by default: a bijection of the real
line; zuko uses ``1e-6``, which bounds ``|z|`` by ``Phi^{-1}(1 - 5e-7) = 4.89``).

The closed form runs in the *density* direction (refflow's ``inverse``, ``x -> z``), as in
zuko (``GF`` maps data to noise) and Meng et al.; sampling (``forward``) is numerical.

================  ==================================  =====================================
parameterization  ``u_k``; ``log p_k``                parameters (each ``(dim, K)``)
================  ==================================  =====================================
``"kernel"``      ``(x - loc_k) exp(-log_scale_k)``;  ``loc``, ``log_scale`` (Meng et al.:
                  ``-log_scale_k``                    kernel centres, log bandwidths)
``"zuko"``        ``x exp(scale_k) + shift_k``;       ``shift``, ``scale`` (zuko/transforms.py
                  ``scale_k``                         ``GaussianizationTransform``)
================  ==================================  =====================================

``weights="learned"`` adds ``weight_logits`` with ``w = softmax(weight_logits)``; ``"uniform"``
fixes ``w_k = 1/K`` (zuko, and Meng et al.'s ``kde_weights`` of zeros). A conditional layer
(``context_dim``) gets its parameters per row from ``MLP(context_dim, dim * P * K, hidden)``
(zuko's ``ElementWiseTransform``: per feature ``P`` contiguous groups of ``K``, in the table's
order, then ``weight_logits``); the unconditional layer stores them.

Stable tails
------------
Everything is computed from logs: ``log C = LSE_k(log w_k + log F(u_k))`` and ``log(1 - C) =
LSE_k(log w_k + log F(-u_k))`` (``scipy.special.log_ndtr``, or ``-softplus(-u)``),
``z = ndtri_exp(log C~)`` when ``C~ <= 1/2`` and ``-ndtri_exp(log(1 - C~))`` otherwise (each
polished by one Newton step on ``log Phi(z) = log C~``: scipy's ``ndtri_exp`` alone is off by
~6e-13 relative at ``|z| = 1000``), so
``|x|`` up to 1e3 (and beyond) gives finite ``z`` and log-dets.

Log-determinants
----------------
With ``log f`` the kernel's log density and ``log phi(z) = -z^2/2 - log sqrt(2 pi)``::

    inverse:  log dz/dx = log(1 - eps) + LSE_k(log w_k + log p_k + log f(u_k)) - log phi(z)
    forward:  log dx/dz = -(the same at the solved x)

summed over coordinates.

Pullbacks
---------
*Inverse (closed form).* Per element, with ``gamma_k = dz/du_k = (1 - eps) w_k f(u_k) / phi(z)``,
``rho_k = w_k p_k f(u_k) / C'`` (responsibilities), ``LD = log dz/dx`` and the effective
``z`` cotangent ``zc = z_bar + ld_bar z`` (``d(-log phi(z))/dz = z``)::

    u_bar_k      = zc gamma_k + ld_bar rho_k (log f)'(u_k)      ((log f)' = -u or -tanh(u/2))
    log_p_bar_k  = ld_bar rho_k                                  (direct, not through u)
    logit_bar_j  = zc (1 - eps) w_j (F(u_j) - C) / phi(z) + ld_bar (rho_j - w_j)
    x_bar        = sum_k u_bar_k p_k

``F(u_j) - C`` is evaluated as ``(1 - C) - (1 - F(u_j))`` when ``z > 0`` (no cancellation in the
upper tail). Then ``"kernel"``: ``loc_bar = -sum u_bar p``, ``log_scale_bar = -sum (u_bar u +
log_p_bar)``; ``"zuko"``: ``shift_bar = sum u_bar``, ``scale_bar = sum (u_bar x p +
log_p_bar)``; a conditional layer hands these (per row) to its MLP's pullback.

Far in a tail the log-det's gradient is a small difference of large terms: with one dominant
component ``z gamma_k ~ u_k`` (Mills' ratio), so ``u_bar_k = z gamma_k - rho_k u_k`` cancels from
``|u_k|`` to ``O(1/|u_k|)``; since ``gamma_k = exp(log f(u_k) - log phi(z) + ...)`` carries the
rounding of ``z^2/2`` (``~eps z^2`` relative), ``u_bar`` has an absolute error of ``~eps |z|^3``
(6e-12 at ``|z| = 30``; 1e-7 measured against 60-digit finite differences at ``|z| = 1000``,
times ``|u_k|`` for ``log_scale``: 7e-5 there, where finite differences of the float64 map are
no better). Values and the ``z`` part of the gradient keep full accuracy.

*Forward (numerical).* ``x = h^{-1}(z)`` with ``h`` the closed form; implicit-function theorem,
elementwise (``h' = exp(LD)``)::

    g         = x_bar - ld_bar dLD/dx            (closed-form pullback with (0, -ld_bar))
    z_bar     = g / h'(x)
    theta_bar = the parameter part of the closed-form pullback with (-z_bar, -ld_bar)

The numerical inverse
---------------------
:func:`refflow.kernels.gaussianization.gaussianization_inverse` solves ``log C(x) = log((Phi(z) -
eps/2)/(1 - eps))`` (or the same for ``1 - C`` when ``z > 0``) per element, bracketed by the
components' own quantiles at that level (every ``F(u_k)`` is below it at the smallest, above it at
the largest) and refined by safeguarded Newton to a few ulps of ``log C`` (typically 4-8
evaluations; at most ``MAX_ITER = 2200``, bisection to adjacent floats). With ``eps > 0``, a
``z`` with ``Phi(z) <= eps/2`` or ``Phi(-z) <= eps/2`` is outside the range: ``ValueError``; so
is a root whose residual exceeds ``RESOLVE_ULPS = 64`` ulps of ``1 + |log C|`` (the CDF jumps
between adjacent floats, for component slopes near ``e^{+-50}``).

References
----------
S. S. Chen, R. A. Gopinath, "Gaussianization", NeurIPS 2000.
C. Meng, Y. Song, J. Song, S. Ermon, "Gaussianization Flows", AISTATS 2020, arXiv:2003.01941.
"""

import math
import numbers

import numpy as np
from scipy.special import log_ndtr, ndtri_exp

from .._validation import check_dim, check_rng
from ..kernels.gaussianization import gaussianization_inverse, kernel_constants
from ..nn.mlp import MLP
from ..params import prefixed
from .base import Bijector

__all__ = ["Gaussianization"]

KERNELS = ("gaussian", "logistic")
PARAMETERIZATIONS = {"kernel": ("loc", "log_scale"), "zuko": ("shift", "scale")}
WEIGHTS = ("learned", "uniform")
_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def _lse(v, axis=-1):
    top = v.max(axis=axis, keepdims=True)
    top = np.where(np.isfinite(top), top, 0)
    return (top + np.log(np.exp(v - top).sum(axis=axis, keepdims=True))).squeeze(axis)


def _ndtri_exp(y):
    """``Phi^{-1}(exp(y))`` for ``y <= log(1/2)``: scipy's ``ndtri_exp`` and one Newton step on
    ``log Phi(z) = y`` (``d log Phi / dz = phi/Phi``). ``ndtri_exp`` alone is off by up to
    ~3e3 ulps in the far tail (6e-13 relative at ``z = -1000``); after the step, a few ulps."""
    z = ndtri_exp(y)
    log_cdf = log_ndtr(z)
    log_pdf = -z * z / 2 - _LOG_SQRT_2PI
    return z - (log_cdf - y) * np.exp(log_cdf - log_pdf)


def _implicit_z_bar(g, log_slope):
    """``J^{-T} g`` for the diagonal ``J = dz/dx = exp(log_slope)`` (implicit-function theorem)."""
    return g * np.exp(-log_slope)


class Gaussianization(Bijector):
    r"""Elementwise Gaussianization ``z = Phi^{-1}(eps/2 + (1 - eps) sum_k w_k F(u_k(x)))``.

    Parameters
    ----------
    dim : int
        Event size ``d``.
    n_components : int, default 8
        ``K`` (zuko's ``components=8``).
    kernel : {"gaussian", "logistic"}, default "gaussian"
        ``F``: the normal CDF (zuko, Chen & Gopinath) or the logistic CDF (Meng et al.'s code).
    parameterization : {"kernel", "zuko"}, default "kernel"
        ``u_k = (x - loc_k) e^{-log_scale_k}`` or zuko's ``x e^{scale_k} + shift_k``.
    weights : {"learned", "uniform"}, default "learned"
        ``softmax(weight_logits)`` or ``1/K`` (zuko; Meng et al.).
    shrink : float, default 0.0
        ``eps`` in ``[0, 1)``; zuko's ``GaussianizationTransform`` uses ``1e-6``.
    context_dim : int, optional
        A conditional layer whose parameters come from an MLP of the context (zuko's
        ``ElementWiseTransform``).
    hidden : sequence of int, default (64, 64)
        That MLP's hidden widths (zuko's default); ignored without a context.
    activation : str, default "relu"
        That MLP's activation (zuko's default).
    rng : None, int or numpy.random.Generator
        Initialisation: unconditional parameters as zuko's ``torch.randn`` (``shift``,
        ``scale``, ``loc`` ``~ N(0, 1)``), ``log_scale ~ N(0, 0.5^2)``,
        ``weight_logits ~ N(0, 0.5^2)``; the MLP as torch's ``nn.Linear``.

    Attributes
    ----------
    params : ParamDict
        The table's two ``(dim, K)`` arrays and ``weight_logits`` (if learned), or the MLP's
        ``"hyper.w0"``, ... for a conditional layer.

    Raises
    ------
    ValueError
        For bad options; in ``forward`` with ``shrink > 0``, for ``z`` outside the bounded range.

    Notes
    -----
    Formulas, both log-dets and pullbacks: :mod:`refflow.bijectors.gaussianization`. The
    closed form is ``inverse`` (data to base); ``forward`` is the bracketed numerical solve,
    followed by the closed form at the solution, so the log-dets are exact negatives.

    References
    ----------
    C. Meng, Y. Song, J. Song, S. Ermon, "Gaussianization Flows", AISTATS 2020,
    arXiv:2003.01941.

    Examples
    --------
    >>> import numpy as np
    >>> from refflow import Gaussianization
    >>> layer = Gaussianization(2, n_components=4, rng=0)
    >>> x = np.array([[0.5, -1.0], [1e3, -1e3]])
    >>> z, log_det = layer.inverse(x)                   # finite in the tails
    >>> bool(np.isfinite(z).all() and np.isfinite(log_det).all())
    True
    >>> x_back, _ = layer.forward(z)
    >>> bool(np.allclose(x_back, x, rtol=1e-12))
    True
    """

    def __init__(self, dim, n_components=8, *, kernel="gaussian", parameterization="kernel",
                 weights="learned", shrink=0.0, context_dim=None, hidden=(64, 64),
                 activation="relu", rng=None):
        where = "Gaussianization"
        dim = check_dim(dim, where)
        if isinstance(n_components, (bool, np.bool_)) or not isinstance(
                n_components, numbers.Integral) or n_components < 1:
            raise ValueError(f"{where}: n_components must be a positive integer, got "
                             f"{n_components!r}")
        for value, choices, name in ((kernel, KERNELS, "kernel"),
                                     (parameterization, tuple(PARAMETERIZATIONS),
                                      "parameterization"),
                                     (weights, WEIGHTS, "weights")):
            if not (isinstance(value, str) and value in choices):
                raise ValueError(f"{where}: {name} must be one of {list(choices)}, got {value!r}")
        if isinstance(shrink, (bool, np.bool_)) or not isinstance(shrink, numbers.Real) \
                or not (0.0 <= shrink < 1.0):
            raise ValueError(f"{where}: shrink must be a number in [0, 1), got {shrink!r}")
        if context_dim is not None:
            context_dim = check_dim(context_dim, where, "context_dim")
        rng = check_rng(rng, f"{where}: rng")
        n_components = int(n_components)
        names = PARAMETERIZATIONS[parameterization] + (
            ("weight_logits",) if weights == "learned" else ())
        hyper = None
        params = {}
        if context_dim is None:
            for name in names:
                scale = 1.0 if name in ("loc", "shift", "scale") else 0.5
                params[name] = scale * rng.standard_normal((dim, n_components))
        else:
            try:
                hyper = MLP(context_dim, dim * len(names) * n_components, hidden, activation,
                            rng=rng)
            except ValueError as exc:
                raise ValueError(f"{where}: hyper-network: {exc}") from None
        super().__init__(dim, params=params)
        self.n_components = n_components
        self.kernel = kernel
        self.parameterization = parameterization
        self.weights = weights
        self.shrink = float(shrink)
        self.context_dim = context_dim
        self.hyper = hyper
        self._names = names

    @property
    def params(self):
        if self.hyper is None:
            return self._params
        return prefixed([("hyper", self.hyper.params)])

    def __repr__(self):
        return (f"Gaussianization(dim={self.dim}, n_components={self.n_components}, kernel="
                f"{self.kernel!r}, parameterization={self.parameterization!r}, weights="
                f"{self.weights!r}, shrink={self.shrink!r}, context_dim={self.context_dim})")

    def _config(self):
        config = {"dim": self.dim, "n_components": self.n_components, "kernel": self.kernel,
                  "parameterization": self.parameterization, "weights": self.weights,
                  "shrink": self.shrink, "context_dim": self.context_dim}
        if self.hyper is not None:
            config.update(hidden=list(self.hyper.hidden), activation=self.hyper.activation)
        return config

    # ------------------------------------------------------------------ parameters
    def _raw(self, context, dtype):
        """The raw parameter arrays ``{name: (R, d, K)}`` and the hyper-network's pullback."""
        if self.hyper is None:
            p = self._p(dtype)
            return {k: p[k][None] for k in self._names}, None
        out, hyper_pullback = self.hyper.vjp(context)
        out = out.reshape(context.shape[0], self.dim, len(self._names), self.n_components)
        return {k: np.ascontiguousarray(out[:, :, j]) for j, k in enumerate(self._names)}, \
            hyper_pullback

    def _coefficients(self, raw, dtype):
        """``(a, log p, log w)``: ``u = (x - a) p`` (kernel) or ``x p + a`` (zuko)."""
        if self.parameterization == "kernel":
            a, log_p = raw["loc"], -raw["log_scale"]
        else:
            a, log_p = raw["shift"], raw["scale"]
        if self.weights == "learned":
            logits = raw["weight_logits"]
            log_w = logits - _lse(logits)[..., None]
        else:
            log_w = np.full(a.shape, -math.log(self.n_components), dtype=dtype)
        return a, log_p, log_w.astype(dtype)

    def _check_scales(self, log_p, direction):
        p = np.exp(log_p)
        bad = ~((p > 0) & np.isfinite(p))
        if bad.any():
            raise self._domain_error(direction, f"a component's slope exp(log p) is "
                                                f"{float(p[bad][0])!r}: outside the range of "
                                                f"{p.dtype}, the map is not invertible there")
        return p

    # ----------------------------------------------------------------- closed form
    def _kernel_logs(self, u):
        """``(log F(u), log(1 - F(u)), log f(u), (log f)'(u))``.

        One tail function per value: the smaller tail ``m = log F(-|u|)`` directly, the other
        as ``log1p(-exp(m))`` (accurate, since ``exp(m) <= 1/2``)."""
        neg = u <= 0
        if self.kernel == "gaussian":
            small = log_ndtr(-np.abs(u))
            big = np.log1p(-np.exp(small))
            lpdf, dlpdf = -u * u / 2 - u.dtype.type(_LOG_SQRT_2PI), -u
        else:
            soft = np.log1p(np.exp(-np.abs(u)))
            small, big = -np.abs(u) - soft, -soft      # -softplus(|u|), -softplus(-|u|)
            lpdf, dlpdf = small + big, -np.tanh(u / 2)
        return np.where(neg, small, big), np.where(neg, big, small), lpdf, dlpdf

    def _closed(self, x, context, vjp, direction="inverse"):
        dtype = x.dtype
        raw, hyper_pullback = self._raw(context, dtype)
        a, log_p, log_w = self._coefficients(raw, dtype)
        p = self._check_scales(log_p, direction)
        xe = x[..., None]
        u = (xe - a) * p if self.parameterization == "kernel" else xe * p + a
        lf, lsf, lpdf, dlpdf = self._kernel_logs(u)
        eps = self.shrink
        log_c = _lse(log_w + lf)
        log_cc = _lse(log_w + lsf)
        ld_terms = log_w + log_p + lpdf
        log_cp = _lse(ld_terms)
        if eps > 0:
            half_eps, keep = dtype.type(math.log(eps / 2)), dtype.type(math.log1p(-eps))
            log_ct = np.logaddexp(half_eps, keep + log_c)
            log_cct = np.logaddexp(half_eps, keep + log_cc)
        else:
            keep = dtype.type(0)
            log_ct, log_cct = log_c, log_cc
        lower = log_ct <= log_cct
        z = np.where(lower, _ndtri_exp(np.where(lower, log_ct, -1)),
                     -_ndtri_exp(np.where(lower, -1, log_cct))).astype(dtype)
        log_phi = -z * z / 2 - dtype.type(_LOG_SQRT_2PI)
        ld_elem = keep + log_cp - log_phi
        log_det = ld_elem.sum(axis=1).astype(dtype)
        z = np.ascontiguousarray(z)
        if not vjp:
            return z, log_det, None, ld_elem
        n = x.shape[0]

        def pullback(z_bar, log_det_bar):
            ld_bar = log_det_bar[:, None]
            zc = z_bar + ld_bar * z
            lphi = log_phi[..., None]
            gamma = np.exp(keep + log_w + lpdf - lphi)          # dz/du_k
            rho = np.exp(ld_terms - log_cp[..., None])
            u_bar = zc[..., None] * gamma + ld_bar[..., None] * rho * dlpdf
            log_p_bar = ld_bar[..., None] * rho
            x_bar = (u_bar * p).sum(axis=2)
            bars = {}
            if self.parameterization == "kernel":
                bars["loc"] = -u_bar * p
                bars["log_scale"] = -(u_bar * u + log_p_bar)
            else:
                bars["shift"] = u_bar
                bars["scale"] = u_bar * xe * p + log_p_bar
            if self.weights == "learned":
                w = np.exp(log_w)
                # dz/dlogit_j = (1 - eps) w_j (F_j - C) / phi(z), from the lower or upper tail
                below = (np.exp(keep + log_w + lf - lphi)
                         - w * np.exp(keep + log_c[..., None] - lphi))
                above = (w * np.exp(keep + log_cc[..., None] - lphi)
                         - np.exp(keep + log_w + lsf - lphi))
                dz_dlogit = np.where(lower[..., None], below, above)
                bars["weight_logits"] = zc[..., None] * dz_dlogit + ld_bar[..., None] * (rho - w)
            if hyper_pullback is None:
                grads = {k: np.asarray(bars[k].sum(axis=0)) for k in self._names}
                return x_bar, grads, None
            out_bar = np.stack([np.broadcast_to(bars[k], (n, self.dim, self.n_components))
                                for k in self._names], axis=2).reshape(n, self.hyper.out_features)
            context_bar, hyper_grads = hyper_pullback(np.ascontiguousarray(out_bar))
            return x_bar, {f"hyper.{k}": g for k, g in hyper_grads.items()}, context_bar

        return z, log_det, pullback, ld_elem

    # ------------------------------------------------------------------------ hooks
    def _inverse_pass(self, x, context, vjp):
        z, log_det, pullback, _ = self._closed(x, context, vjp)
        return z, log_det, pullback

    def _forward_pass(self, z, context, vjp):
        x = self._solve(z, context)
        _, ld, closed_pullback, ld_elem = self._closed(x, context, vjp, "forward")
        if not vjp:
            return x, -ld, None

        def pullback(x_bar, log_det_bar):
            g = x_bar + closed_pullback(np.zeros_like(x_bar), -log_det_bar)[0]
            z_bar = _implicit_z_bar(g, ld_elem)
            _, grads, context_bar = closed_pullback(-z_bar, -log_det_bar)
            return z_bar, grads, context_bar

        return x, -ld, pullback

    def _solve(self, z, context):
        """``x = h^{-1}(z)``: targets and brackets here, the iterations in the kernel."""
        dtype = z.dtype
        raw, _ = self._raw(context, dtype)
        a, log_p, log_w = self._coefficients(raw, dtype)
        p = self._check_scales(log_p, "forward")
        eps = self.shrink
        side = (z > 0).astype(np.int64)
        log_tail = log_ndtr(np.where(side == 1, -z, z))   # log Phi(z) or log Phi(-z)
        if eps > 0:
            rel = (eps / 2) * np.exp(-log_tail)            # (eps/2) / Phi(+-z)
            bad = ~(rel < 1)
            if bad.any():
                row, col = (int(v[0]) for v in np.nonzero(bad))
                bound = float(-ndtri_exp(np.log(eps / 2)))
                raise self._domain_error(
                    "forward", f"z[{row}, {col}] = {float(z[row, col])!r} is outside the range "
                    f"(-{bound:.6g}, {bound:.6g}) of the map with shrink={eps!r}; "
                    f"{int(bad.sum())} values are")
            target = (log_tail + np.log1p(-rel) - math.log1p(-eps)).astype(dtype)
        else:
            target = log_tail.astype(dtype)
        # the kernel's quantile at the target level: every F(u_k) is below it at the smallest
        # x_k solving u_k = q, above it at the largest
        level = np.minimum(target, 0)
        if self.kernel == "gaussian":
            q = ndtri_exp(level)
        else:
            q = level - np.log(-np.expm1(np.minimum(level, -np.finfo(dtype).tiny)))
        q = np.where(side == 1, -q, q)[..., None]
        x_k = a + q / p if self.parameterization == "kernel" else (q - a) / p
        lo = np.ascontiguousarray(x_k.min(axis=2), dtype=dtype)
        hi = np.ascontiguousarray(x_k.max(axis=2), dtype=dtype)
        x = np.empty_like(z)
        status = np.zeros(z.shape[0], dtype=np.int64)
        form = 0 if self.parameterization == "kernel" else 1
        gaussianization_inverse(
            np.ascontiguousarray(target), side, lo, hi, np.ascontiguousarray(a, dtype=dtype),
            np.ascontiguousarray(p, dtype=dtype), np.ascontiguousarray(log_p, dtype=dtype),
            np.ascontiguousarray(log_w, dtype=dtype), form,
            KERNELS.index(self.kernel), kernel_constants(dtype), x, status)
        if status.any():
            row = int(np.argmax(status != 0))
            col = -int(status[row]) - 1
            raise self._domain_error(
                "forward", f"z[{row}, {col}] = {float(z[row, col])!r} has no preimage in "
                f"{dtype}: the mixture CDF jumps past it between adjacent floats (component "
                f"slopes too extreme); {int((status != 0).sum())} of {z.shape[0]} rows cannot "
                f"be inverted")
        return x
