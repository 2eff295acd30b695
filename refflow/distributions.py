r"""Base distributions and ``Flow``, the density ``q(x)`` of ``x = T(z)``, ``z ~ p``.

    log q(x) = log p(T^{-1}(x)) + log|det dT^{-1}/dx|

``Flow.log_prob`` runs the bijector's ``inverse`` (x -> z) and adds its log-det;
``Flow.sample`` runs ``forward`` on base samples. ``Flow.nll_and_grad`` gives the mean negative
log-likelihood of a batch and its gradient for every parameter, by the bijector's and the base
distribution's hand-derived pullbacks.
"""

import math
import numbers

import numpy as np
from scipy.special import digamma, gammaln, logsumexp, ndtr, stdtrit

from ._dask import is_dask_array
from ._math import logsumexp_rows, sigmoid, softplus, softplus_inverse
from ._validation import (
    as_batch, as_float_array, check_bool, check_dim, check_int, check_rng, empty_output,
)
from .bijectors.base import Bijector, atomic
from .io.spec import (combine, constructor_arguments, declaration, declare, from_spec,
                      register, to_spec)
from .kernels.threads import blas_threads, largest_weight
from .params import ParamDict, prefixed

__all__ = ["StandardNormal", "DiagNormal", "Uniform", "StudentT", "DiagGaussianMixture",
           "DiagStudentTMixture", "Flow"]

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


#: Beyond ``nu / 2 = 100`` the t's normalising constant is computed from its asymptotic series
#: (lgamma of ``nu/2`` and ``(nu+1)/2`` would cancel to ``eps lgamma(nu/2)``; the series'
#: first omitted term is below 1e-20 there).
_T_SERIES_FROM = 100.0


def _t_log_norm(nu):
    r"""``lgamma((nu+1)/2) - lgamma(nu/2) - log(nu pi)/2``, the log normalising constant of a
    standard Student t, float64, accurate for every ``nu > 0``: for ``x = nu/2 >= 100`` as
    ``f(x) - log(2 pi)/2`` with ``f(x) = lgamma(x + 1/2) - lgamma(x) - log(x)/2 = -1/(8x) +
    1/(192 x^3) - 1/(640 x^5) + 17/(14336 x^7) + O(x^-9)`` (Stirling's series of the two
    lgammas; the coefficients checked against 60-digit arithmetic)."""
    nu = np.asarray(nu, dtype=np.float64)
    x = 0.5 * nu
    big = x >= _T_SERIES_FROM
    y = 1.0 / np.where(big, x, 1.0)                 # in powers of 1/x: no overflow
    y2 = y * y
    series = (y * (-1.0 / 8 + y2 * (1.0 / 192 + y2 * (-1.0 / 640 + y2 * (17.0 / 14336))))
              - 0.5 * math.log(2 * math.pi))
    xd = np.where(big, 1.0, x)                      # no lgamma of a huge x above
    direct = gammaln(xd + 0.5) - gammaln(xd) - 0.5 * np.log(2 * xd * math.pi)
    return np.where(big, series, direct)


def _t_dlog_norm(nu):
    r"""``d/d nu`` of :func:`_t_log_norm`: ``(psi((nu+1)/2) - psi(nu/2) - 1/nu) / 2``, float64;
    for ``x = nu/2 >= 100`` as ``f'(x) / 2 = (1/(8x^2) - 1/(64 x^4) + 1/(128 x^6) -
    119/(14336 x^8)) / 2`` (the series above, differentiated), where the digammas would cancel."""
    nu = np.asarray(nu, dtype=np.float64)
    x = 0.5 * nu
    big = x >= _T_SERIES_FROM
    y2 = (1.0 / np.where(big, x, 1.0)) ** 2
    series = 0.5 * y2 * (1.0 / 8 + y2 * (-1.0 / 64 + y2 * (1.0 / 128 + y2 * (-119.0 / 14336))))
    xd = np.where(big, 1.0, x)
    direct = 0.5 * (digamma(xd + 0.5) - digamma(xd) - 1.0 / (2 * xd))
    return np.where(big, series, direct)


def _check_n(n, where):
    if isinstance(n, (bool, np.bool_)) or not isinstance(n, numbers.Integral) or n < 0:
        raise ValueError(f"{where}: the number of samples must be a non-negative int, got {n!r}")
    return int(n)


#: Rows per chunk of ``Flow.log_prob`` / ``sample`` / ``sample_and_log_prob`` when
#: ``batch_size=None``: the temporaries of a pass (conditioner activations, per-layer outputs)
#: then grow with the chunk, not with ``n``; a batch this small or smaller runs in one piece.
DEFAULT_BATCH_SIZE = 65_536


def _check_batch_size(batch_size, where):
    """``batch_size`` as an int >= 1, or None for :data:`DEFAULT_BATCH_SIZE`."""
    if batch_size is None:
        return DEFAULT_BATCH_SIZE
    if isinstance(batch_size, (bool, np.bool_)) or not isinstance(batch_size, numbers.Integral) \
            or batch_size < 1:
        raise ValueError(f"{where}: batch_size must be a positive int or None, got "
                         f"{batch_size!r}")
    return int(batch_size)


def _single_row(context):
    """True for a 1-D context (one row shared by every point); anything else is left to the
    context validation."""
    try:
        return np.ndim(context) == 1
    except Exception:  # ragged nested lists: as_batch gives the error
        return False


def _batch_coupled(bijector):
    """``(layer, reason)`` for the first layer whose pass depends on the whole batch, not row by
    row (``Bijector._batch_coupling``: a training-mode ``BatchNorm``, an uninitialised
    ``ActNorm``), else None. Splitting the batch into chunks would change their results, so
    the chunked entry points refuse to split a flow holding one.
    """
    stack = [bijector]
    while stack:
        layer = stack.pop()
        reason = layer._batch_coupling()
        if reason is not None:
            return layer, reason
        stack.extend(layer._children())
    return None


def _chunks(n, batch_size, bijector, explicit, where):
    """Row ranges ``[(start, stop), ...]`` covering ``n`` rows in chunks of ``batch_size``.

    One range when the batch fits, and when a layer is batch-coupled: then an explicit
    ``batch_size`` smaller than ``n`` raises (the chunks would give other results), and the
    default processes the whole batch at once, as without chunking.
    """
    if n <= batch_size:
        return [(0, n)]
    coupled = _batch_coupled(bijector)
    if coupled is not None:
        if explicit:
            layer, why = coupled
            raise ValueError(f"{where}: cannot split {n} rows into chunks of batch_size="
                             f"{batch_size}: a {type(layer).__name__} layer {why}, or pass "
                             f"batch_size=None")
        return [(0, n)]
    # Balanced chunks (sizes differ by at most one row, each at least half of batch_size), not
    # full chunks and a remainder: OpenBLAS computes a GEMM with few rows (M * N <= ~1200 in
    # 0.3.31) with its small-matrix kernel, which sums in another order, so a short last chunk
    # would break bit-identity with the unchunked pass (tests/robustness/test_memory.py).
    k = -(-n // batch_size)
    return _Balanced(n, k)


class _Balanced:
    """The ``k`` balanced row ranges of ``n`` rows, computed on demand (``k`` may be huge)."""

    def __init__(self, n, k):
        self.n, self.k = n, k

    def __len__(self):
        return self.k

    def __iter__(self):
        n, k = self.n, self.k
        return (((n * i) // k, (n * (i + 1)) // k) for i in range(k))


def _finite_log_prob(lp, where, base_lp=None):
    """Raise when a log-density is not finite (it overflowed float64), naming the rows.

    With ``base_lp`` (the base's log-density of the same rows), ``-inf`` is let through where
    the base gives ``-inf``: a point outside the support of a bounded base (``Uniform``) has
    density zero, which is a value, not an overflow.
    """
    bad = ~np.isfinite(lp)
    if base_lp is not None:
        bad &= ~(np.isneginf(base_lp) & np.isneginf(lp))
    if bad.any():
        raise ValueError(f"{where}: the log-density is not finite for {int(bad.sum())} of "
                         f"{lp.shape[0]} rows (first row {int(np.argmax(bad))}): the points lie "
                         f"beyond the range where it is representable in {lp.dtype}")


class _Distribution:
    """Shared validation: ``log_prob``, ``log_prob_vjp``, ``sample`` on ``(n, dim)`` arrays."""

    #: True for a base whose support is bounded (``Uniform``): there a log-density of ``-inf``
    #: means "outside the support", a value; for the others it can only be an overflow.
    _bounded_support = False

    def __init__(self, dim, params=None):
        self.dim = check_dim(dim, type(self).__name__)
        self._params = ParamDict(params or {})

    @property
    def params(self):
        return self._params

    def __repr__(self):
        return f"{type(self).__name__}(dim={self.dim})"

    def _config(self):
        """Constructor arguments for :mod:`refflow.io` (parameters come from the file)."""
        return {"dim": self.dim}

    @classmethod
    def _from_config(cls, config):
        return cls(**config)

    #: Names of the ``(dim,)`` parameters (declarations for :mod:`refflow.io`).
    _param_names = ()

    @classmethod
    def _declare(cls, config):
        args = constructor_arguments(cls, config)
        if args.get("params") is not None:
            raise TypeError(f"{cls.__name__}: the config may not give params (they come from "
                            f"the file)")
        dim = check_dim(args["dim"], cls.__name__)
        return declaration({name: (dim,) for name in cls._param_names})

    def _log_prob(self, z):
        # The value of the pass with a pullback; a closed form without residuals overrides it.
        return self._log_prob_vjp(z)[0]

    def log_prob(self, z):
        """Log-density of each point: ``z`` of shape ``(n, dim)`` -> ``(n,)`` (or a scalar)."""
        z2, was_1d = as_batch(z, self.dim, f"{type(self).__name__}.log_prob")
        lp = self._log_prob(z2)
        return lp[0] if was_1d else lp

    def log_prob_vjp(self, z):
        """``(log_prob, pullback)``; ``pullback(log_prob_bar) -> (z_bar, grads)``."""
        where = f"{type(self).__name__}.log_prob"
        z2, was_1d = as_batch(z, self.dim, where)
        lp, inner = self._log_prob_vjp(z2)

        def pullback(lp_bar):
            lp_bar = as_float_array(lp_bar, f"{where} pullback", "log_prob_bar").astype(z2.dtype)
            expected = () if was_1d else (z2.shape[0],)
            if lp_bar.shape != expected or not np.isfinite(lp_bar).all():
                raise ValueError(f"{where} pullback: expected a finite log_prob_bar of shape {expected}")
            z_bar, grads = inner(lp_bar.reshape(z2.shape[0]))
            grads = {k: np.asarray(g, dtype=np.float64) for k, g in grads.items()}
            return (z_bar[0] if was_1d else z_bar), grads

        return (lp[0] if was_1d else lp), pullback

    def sample(self, n, rng=None):
        """``n`` samples, float64 array of shape ``(n, dim)``; ``rng`` an int seed or Generator."""
        n = _check_n(n, f"{type(self).__name__}.sample")
        return self._sample(n, check_rng(rng, f"{type(self).__name__}.sample"))


class StandardNormal(_Distribution):
    """Standard normal ``N(0, I)`` in ``dim`` dimensions (no parameters).

    Notes
    -----
    ``log p(z) = -|z|^2 / 2 - dim/2 log(2 pi)``; pullback ``z_bar = -log_prob_bar * z``.

    Examples
    --------
    >>> import numpy as np
    >>> from refflow import StandardNormal
    >>> np.round(StandardNormal(2).log_prob(np.zeros((1, 2))), 6)
    array([-1.837877])
    """

    def _log_prob(self, z):
        return -0.5 * np.einsum("ij,ij->i", z, z) - self.dim * _HALF_LOG_2PI

    def _log_prob_vjp(self, z):
        def pullback(lp_bar):
            return -lp_bar[:, None] * z, {}
        return self._log_prob(z), pullback

    def _sample(self, n, rng):
        return rng.standard_normal((n, self.dim))


def _sampling_scale(log_scale, where):
    """``exp(log_scale)``, the scale a sample is drawn with, or a ValueError naming ``where``
    when it overflows float64."""
    with np.errstate(over="ignore"):
        scale = np.exp(log_scale)
    if not np.isfinite(scale).all():
        raise ValueError(f"{where}: exp(log_scale) overflows float64 (log_scale up to "
                         f"{log_scale.max():.4g})")
    return scale


class DiagNormal(_Distribution):
    """Normal with trainable mean and log-standard-deviation, ``N(loc, diag(exp(log_scale))^2)``.

    Parameters
    ----------
    dim : int
        ``params["loc"]`` and ``params["log_scale"]`` have shape ``(dim,)`` and start at zero
        (the standard normal).

    Notes
    -----
    With ``u = (z - loc) exp(-log_scale)``: ``log p(z) = sum_i -u_i^2/2 - log_scale_i - log(2 pi)/2``.
    Pullback for ``log_prob_bar = g`` (one per row)::

        z_bar = -g u exp(-log_scale),   loc_bar = sum_n g u exp(-log_scale),
        log_scale_bar = sum_n g (u^2 - 1)

    Examples
    --------
    >>> import numpy as np
    >>> from refflow import DiagNormal
    >>> d = DiagNormal(1)
    >>> d.params["loc"] = [1.0]
    >>> float(np.round(d.log_prob(np.array([[1.0]]))[0], 6))
    -0.918939
    """

    _param_names = ("loc", "log_scale")

    def __init__(self, dim):
        dim = check_dim(dim, "DiagNormal")
        super().__init__(dim, params={name: np.zeros(dim) for name in self._param_names})

    def _log_prob_vjp(self, z):
        loc = self._params["loc"].astype(z.dtype)
        log_scale = self._params["log_scale"].astype(z.dtype)
        with np.errstate(over="ignore"):
            inv_scale = np.exp(-log_scale)
        if not np.isfinite(inv_scale).all():
            raise ValueError(f"DiagNormal.log_prob: exp(-log_scale) overflows {z.dtype} "
                             f"(log_scale down to {log_scale.min():.4g})")
        u = (z - loc) * inv_scale
        lp = -0.5 * np.einsum("ij,ij->i", u, u) - log_scale.sum() - self.dim * _HALF_LOG_2PI

        def pullback(lp_bar):
            g = lp_bar[:, None]
            gu = g * u * inv_scale
            return -gu, {"loc": gu.sum(axis=0), "log_scale": (g * (u * u - 1.0)).sum(axis=0)}

        return lp, pullback

    def _sample(self, n, rng):
        scale = _sampling_scale(self._params["log_scale"], "DiagNormal.sample")
        eps = rng.standard_normal((n, self.dim))
        return self._params["loc"] + scale * eps


def _as_vector(value, dim, where, name):
    """``value`` (a number or a 1-D array) broadcast to a finite float64 ``(dim,)`` array."""
    arr = as_float_array(value, where, name).astype(np.float64)
    if arr.ndim > 1 or (arr.ndim == 1 and arr.shape[0] not in (1, dim)):
        raise ValueError(f"{where}: {name} must be a number or an array of shape ({dim},), got "
                         f"shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{where}: {name} must be finite")
    return np.array(np.broadcast_to(arr, (dim,)), dtype=np.float64)


class Uniform(_Distribution):
    r"""Uniform distribution on the box ``[low, high]`` (no trainable parameters).

    Parameters
    ----------
    low, high : float or array_like of shape (dim,)
        Finite bounds with ``low < high`` elementwise; numbers are broadcast to ``dim``.
    dim : int, optional
        Needed only when both bounds are numbers; otherwise the bounds' length.

    Notes
    -----
    ``log p(z) = -sum_i log(high_i - low_i)`` for ``z`` in the closed box, and ``-inf``
    outside it (**explicit support check**: a point outside has density zero, it is not an
    error; :meth:`Flow.log_prob` passes the ``-inf`` through, while gradients of such points
    are refused). The density is constant inside, so the pullback is ``z_bar = 0``; it has no
    parameters. ``sample`` draws ``low + (high - low) U`` with ``U ~ U[0, 1)`` (``rng.random``).

    This is zuko's ``BoxUniform(lower, upper)`` (the NCSF base, on ``+-(pi + 1e-5)``), distrax's
    ``Independent(Uniform(low, high), 1)`` and torch's ``Uniform`` summed over the last axis.

    Examples
    --------
    >>> import numpy as np
    >>> from refflow import Uniform
    >>> d = Uniform(-np.pi, np.pi, dim=2)
    >>> float(np.round(d.log_prob(np.zeros(2)), 6))
    -3.675754
    >>> d.log_prob(np.array([[0.0, 4.0]]))
    array([-inf])
    >>> bool(np.all(np.abs(d.sample(5, rng=0)) <= np.pi))
    True
    """

    _bounded_support = True

    def __init__(self, low, high, dim=None):
        where = "Uniform"
        lo = as_float_array(low, where, "low")
        hi = as_float_array(high, where, "high")
        if dim is None:
            sizes = {a.shape[0] for a in (lo, hi) if a.ndim == 1}
            if not sizes:
                raise ValueError(f"{where}: dim is required when low and high are numbers")
            dim = max(sizes)
        dim = check_dim(dim, where)
        lo, hi = _as_vector(lo, dim, where, "low"), _as_vector(hi, dim, where, "high")
        if not (hi > lo).all():
            i = int(np.argmax(~(hi > lo)))
            raise ValueError(f"{where}: low must be below high in every coordinate; coordinate "
                             f"{i} has low {lo[i]!r}, high {hi[i]!r}")
        if not np.isfinite(hi - lo).all():
            raise ValueError(f"{where}: high - low overflows float64")
        super().__init__(dim)
        lo.flags.writeable = hi.flags.writeable = False
        self.low, self.high = lo, hi

    def __repr__(self):
        return f"Uniform(low={self.low.tolist()}, high={self.high.tolist()})"

    def _config(self):
        return {"low": self.low.tolist(), "high": self.high.tolist()}

    @classmethod
    def _declare(cls, config):
        # no arrays; the bounds are validated as the constructor does (O(dim) work, the lists
        # being bounded by the loader's limits)
        cls(**constructor_arguments(cls, config))
        return declaration({})

    def _log_prob(self, z):
        low, high = self.low.astype(z.dtype), self.high.astype(z.dtype)
        log_volume = np.log(high - low).sum(dtype=z.dtype)
        inside = ((z >= low) & (z <= high)).all(axis=1)
        return np.where(inside, -log_volume, z.dtype.type(-np.inf)).astype(z.dtype)

    def _log_prob_vjp(self, z):
        def pullback(lp_bar):
            return np.zeros_like(z), {}
        return self._log_prob(z), pullback

    def _sample(self, n, rng):
        u = rng.random((n, self.dim))
        return np.minimum(self.low + (self.high - self.low) * u, self.high)


class StudentT(_Distribution):
    r"""Independent Student's t in each coordinate, with trainable location, scale and
    (optionally) degrees of freedom.

    Parameters
    ----------
    dim : int
    df : float or array_like of shape (dim,), default 5.0
        Initial degrees of freedom ``nu > 0``.
    trainable_df : bool, default True
        If True, ``params["raw_df"]`` holds ``softplus^-1(nu)`` (FlowJAX's parameterization of
        ``df``: ``nu = softplus(raw_df)``); if False, ``nu`` is fixed (saved in the config).

    Attributes
    ----------
    params : ParamDict
        ``"loc"`` and ``"log_scale"`` of shape ``(dim,)`` (zeros: the standard t), and
        ``"raw_df"`` when ``trainable_df``.

    Notes
    -----
    With ``sigma = exp(log_scale)``, ``t = (z - loc) / sigma`` and ``q = t^2 / nu``::

        log p(z) = sum_i [ lgamma((nu+1)/2) - lgamma(nu/2) - log(nu pi)/2 - log sigma
                           - (nu+1)/2 log1p(q) ]

    Pullbacks for ``log_prob_bar = g`` (one per row), from ``d log p / dt = -(nu+1) t /
    (nu + t^2) =: r``::

        z_bar         = g r / sigma,          loc_bar = -sum_n g r / sigma
        log_scale_bar = sum_n g (-1 - t r) = sum_n g ((nu+1) t^2 / (nu + t^2) - 1)
        raw_df_bar    = sum_n g sigmoid(raw_df) [ (psi((nu+1)/2) - psi(nu/2) - 1/nu
                                                  - log1p(q)) / 2 + (nu+1) t^2 / (2 nu (nu + t^2)) ]

    (``psi`` the digamma function; the last term is ``-(nu+1)/2 d log1p(q) / d nu``).
    ``sample`` draws ``loc + sigma T`` with ``T`` from ``rng.standard_t(nu)``.

    This is FlowJAX's ``StudentT(df, loc, scale)`` (which maps ``scale`` by a softplus where
    refflow uses ``exp(log_scale)``; the densities agree for equal ``df, loc, scale``) and
    ``torch.distributions.StudentT`` summed over the coordinates.

    Examples
    --------
    >>> import numpy as np
    >>> from refflow import StudentT
    >>> d = StudentT(1, df=1.0)                 # the standard Cauchy: log p(0) = -log(pi)
    >>> float(np.round(d.log_prob(np.zeros(1)), 6))
    -1.14473
    >>> d.sample(3, rng=0).shape
    (3, 1)
    """

    def __init__(self, dim, df=5.0, trainable_df=True):
        where = "StudentT"
        dim = check_dim(dim, where)
        nu = _as_vector(df, dim, where, "df")
        if not (nu > 0).all():
            raise ValueError(f"{where}: df must be positive, got {nu.tolist()}")
        self.trainable_df = check_bool(trainable_df, where, "trainable_df")
        params = {"loc": np.zeros(dim), "log_scale": np.zeros(dim)}
        if self.trainable_df:
            params["raw_df"] = softplus_inverse(nu)
            self._fixed_df = None
        else:
            nu.flags.writeable = False
            self._fixed_df = nu
        super().__init__(dim, params=params)

    def __repr__(self):
        return f"StudentT(dim={self.dim}, trainable_df={self.trainable_df})"

    @property
    def df(self):
        """The degrees of freedom ``nu``, float64 ``(dim,)`` (a copy)."""
        if self._fixed_df is not None:
            return self._fixed_df.copy()
        return softplus(self._params["raw_df"])

    def _config(self):
        return {"dim": self.dim, "df": self.df.tolist(), "trainable_df": self.trainable_df}

    @classmethod
    def _declare(cls, config):
        args = constructor_arguments(cls, config)
        dim = check_dim(args["dim"], cls.__name__)
        names = ("loc", "log_scale", "raw_df") if check_bool(
            args["trainable_df"], cls.__name__, "trainable_df") else ("loc", "log_scale")
        return declaration({name: (dim,) for name in names})

    def _constrained(self, dtype, where):
        loc = self._params["loc"].astype(dtype)
        log_scale = self._params["log_scale"].astype(dtype)
        nu = self.df.astype(dtype)
        with np.errstate(over="ignore"):
            inv_scale = np.exp(-log_scale)
        if not (np.isfinite(inv_scale).all() and (nu > 0).all()):
            raise ValueError(f"{where}: exp(-log_scale) overflows {np.dtype(dtype)} or df "
                             f"underflows to 0 (log_scale down to {log_scale.min():.4g}, df "
                             f"down to {self.df.min():.4g})")
        return loc, log_scale, nu, inv_scale

    def _log_prob_vjp(self, z):
        loc, log_scale, nu, inv_scale = self._constrained(z.dtype, "StudentT.log_prob")
        half = z.dtype.type(0.5)
        t = (z - loc) * inv_scale
        t2 = t * t
        q = t2 / nu
        l1q = np.log1p(q)
        const = (_t_log_norm(self.df) - self._params["log_scale"]).astype(z.dtype)
        lp = (const - half * (nu + 1) * l1q).sum(axis=1)

        def pullback(lp_bar):
            g = lp_bar[:, None]
            r = -(nu + 1) * t / (nu + t2)          # d log p / dt
            grads = {"loc": -(g * r * inv_scale).sum(axis=0),
                     "log_scale": (g * (-1 - t * r)).sum(axis=0)}
            if self.trainable_df:
                dnu = (_t_dlog_norm(self.df).astype(z.dtype) - half * l1q
                       + (nu + 1) * t2 / (2 * nu * (nu + t2)))
                dsp = sigmoid(self._params["raw_df"].astype(z.dtype))
                grads["raw_df"] = (g * dnu).sum(axis=0) * dsp
            return g * r * inv_scale, grads

        return lp, pullback

    def _sample(self, n, rng):
        loc, log_scale, nu, _ = self._constrained(np.float64, "StudentT.sample")
        scale = _sampling_scale(log_scale, "StudentT.sample")
        return loc + scale * rng.standard_t(nu, size=(n, self.dim))


class _DiagMixture(_Distribution):
    """What the diagonal mixtures share: ``n_components``, the config, the declaration
    (``"logits"`` ``(K,)`` and each of ``_per_component`` ``(K, dim)``) and the weights and
    scales in a dtype."""

    _per_component = ("loc", "log_scale")

    def __repr__(self):
        return f"{type(self).__name__}(dim={self.dim}, n_components={self.n_components})"

    def _config(self):
        return {"dim": self.dim, "n_components": self.n_components}

    @classmethod
    def _declare(cls, config):
        args = constructor_arguments(cls, config)
        dim = check_dim(args["dim"], cls.__name__)
        k = check_int(args["n_components"], cls.__name__, "n_components", minimum=1)
        return declaration({"logits": (k,), **{name: (k, dim) for name in cls._per_component}})

    def _weights_and_scales(self, dtype, where):
        """``(log_w, loc, log_scale, inv_scale)`` in ``dtype``; ValueError naming ``where``
        when ``exp(-log_scale)`` overflows."""
        logits = self._params["logits"].astype(dtype)
        log_w = logits - logsumexp(logits)
        log_scale = self._params["log_scale"].astype(dtype)
        with np.errstate(over="ignore"):
            inv_scale = np.exp(-log_scale)
        if not np.isfinite(inv_scale).all():
            raise ValueError(f"{where}: exp(-log_scale) overflows {np.dtype(dtype)} (log_scale "
                             f"down to {log_scale.min():.4g})")
        return log_w.astype(dtype), self._params["loc"].astype(dtype), log_scale, inv_scale

    def _draw(self, n, rng, where):
        """``(k, g, loc, scale)`` for ``n`` samples from one request of ``n x (dim + 1)``
        standard normals ``G``: the component ``k_n`` is the first whose cumulative weight
        exceeds ``Phi(G_n0)`` (a uniform), ``g = G[:, 1:]`` the noise. One request of normals,
        row by row, so that rows drawn in chunks from one generator are the rows of one draw
        (a Generator's normals form one stream, whatever the shapes of the requests), as for
        the other bases; ``Flow.sample`` and ``FlowDensity.sample`` rely on it."""
        log_w, loc, log_scale, _ = self._weights_and_scales(np.float64, where)
        scale = _sampling_scale(log_scale, where)
        draws = rng.standard_normal((n, self.dim + 1))
        cumulative = np.cumsum(np.exp(log_w))
        k = np.minimum(np.searchsorted(cumulative / cumulative[-1], ndtr(draws[:, 0]),
                                       side="right"), self.n_components - 1)
        return k, draws[:, 1:], loc, scale


class DiagGaussianMixture(_DiagMixture):
    r"""Mixture of ``n_components`` Gaussians with diagonal covariances, all parameters
    trainable.

    Parameters
    ----------
    dim : int
    n_components : int >= 1
    rng : int or numpy.random.Generator, optional
        Initial means: ``N(0, I)`` draws from ``rng`` (zuko's ``GMM`` and normflows'
        ``GaussianMixture`` draw random means too, so that the components can separate in
        training); None gives zero means (every component the standard normal).

    Attributes
    ----------
    params : ParamDict
        ``"logits"`` ``(K,)`` (zeros: equal weights), ``"loc"`` ``(K, dim)``,
        ``"log_scale"`` ``(K, dim)`` (zeros).

    Notes
    -----
    With ``w = softmax(logits)``, ``s_k = exp(log_scale_k)``, ``u_nk = (z_n - loc_k) / s_k``::

        a_nk     = log w_k - |u_nk|^2 / 2 - sum_i log_scale_ki - dim log(2 pi) / 2
        log p(z_n) = logsumexp_k a_nk

    Pullbacks for ``log_prob_bar = g``, with the responsibilities ``r_nk = exp(a_nk - log p(z_n))``
    (``d logsumexp / d a = r``; ``d log w_k / d logits_j = delta_kj - w_j``)::

        z_bar_n       = -g_n sum_k r_nk u_nk / s_k
        loc_bar_k     =  sum_n g_n r_nk u_nk / s_k
        log_scale_bar_k = sum_n g_n r_nk (u_nk^2 - 1)
        logits_bar    =  sum_n g_n (r_n - w)

    ``sample`` draws ``dim + 1`` standard normals per sample, ``(g_0, eps)``: the component
    ``k`` is the first whose cumulative weight exceeds ``Phi(g_0)`` (so ``k ~
    Categorical(w)``), and the sample is ``loc_k + s_k eps``. All normals, one request per
    call: samples drawn in chunks from one generator are those of a single draw. This is normflows'
    ``GaussianMixture(n_modes, dim)`` (``weight_scores`` = ``logits``, same ``loc`` and
    ``log_scale``) and zuko's ``GMM`` with diagonal covariances.

    Examples
    --------
    >>> import numpy as np
    >>> from refflow import DiagGaussianMixture, StandardNormal
    >>> d = DiagGaussianMixture(2, 3)           # zero means: three copies of N(0, I)
    >>> z = np.array([[0.5, -1.0]])
    >>> bool(np.allclose(d.log_prob(z), StandardNormal(2).log_prob(z)))
    True
    >>> DiagGaussianMixture(2, 3, rng=0).sample(4, rng=1).shape
    (4, 2)
    """

    def __init__(self, dim, n_components, rng=None):
        where = "DiagGaussianMixture"
        dim = check_dim(dim, where)
        k = check_int(n_components, where, "n_components", minimum=1)
        loc = np.zeros((k, dim)) if rng is None else \
            check_rng(rng, where).standard_normal((k, dim))
        self.n_components = k
        super().__init__(dim, params={"logits": np.zeros(k), "loc": loc,
                                      "log_scale": np.zeros((k, dim))})

    def _log_prob_vjp(self, z):
        log_w, loc, log_scale, inv_scale = self._weights_and_scales(
            z.dtype, "DiagGaussianMixture.log_prob")
        u = (z[:, None, :] - loc) * inv_scale                     # (n, K, dim)
        a = (log_w - 0.5 * np.einsum("nkd,nkd->nk", u, u) - log_scale.sum(axis=1)
             - z.dtype.type(self.dim * _HALF_LOG_2PI))
        lp = logsumexp_rows(a)

        def pullback(lp_bar):
            r = np.exp(a - lp[:, None])                           # responsibilities
            gr = lp_bar[:, None] * r                              # (n, K)
            gru = gr[:, :, None] * u * inv_scale                  # g r u / s
            grads = {"logits": gr.sum(axis=0) - lp_bar.sum() * np.exp(log_w),
                     "loc": gru.sum(axis=0),
                     "log_scale": (gr[:, :, None] * (u * u - 1)).sum(axis=0)}
            return -gru.sum(axis=1), grads

        return lp, pullback

    def _sample(self, n, rng):
        k, eps, loc, scale = self._draw(n, rng, "DiagGaussianMixture.sample")
        return loc[k] + scale[k] * eps


class DiagStudentTMixture(_DiagMixture):
    r"""Mixture of ``n_components`` products of independent Student's t's (a location, scale
    and degrees of freedom per component and coordinate), all parameters trainable: the
    heavy-tailed counterpart of :class:`DiagGaussianMixture`.

    Parameters
    ----------
    dim : int
    n_components : int >= 1
    df : float, default 5.0
        Initial degrees of freedom ``nu > 0`` of every component and coordinate.
    rng : int or numpy.random.Generator, optional
        Initial locations: ``N(0, I)`` draws from ``rng``; None gives zero locations.

    Attributes
    ----------
    params : ParamDict
        ``"logits"`` ``(K,)`` (zeros: equal weights), ``"loc"``, ``"log_scale"`` (zeros) and
        ``"raw_df"`` (``softplus^-1(df)``, FlowJAX's parameterization of ``df``), each
        ``(K, dim)``.

    Notes
    -----
    With ``w = softmax(logits)``, ``s = exp(log_scale)``, ``nu = softplus(raw_df)``, ``t_nki =
    (z_ni - loc_ki) / s_ki`` and ``q = t^2 / nu``::

        a_nk       = log w_k + sum_i [ lgamma((nu_ki+1)/2) - lgamma(nu_ki/2)
                                       - log(nu_ki pi)/2 - log s_ki - (nu_ki+1)/2 log1p(q_nki) ]
        log p(z_n) = logsumexp_k a_nk

    Pullbacks for ``log_prob_bar = g``: with the responsibilities ``r_nk = exp(a_nk - log
    p(z_n))`` (``d logsumexp / d a = r``) each component's terms are :class:`StudentT`'s, weighted
    by ``g_n r_nk``. With ``rho = d a_nk / d t_nki = -(nu+1) t / (nu + t^2)``::

        z_bar_n         =  sum_k g_n r_nk rho_nk / s_k
        loc_bar_k       = -sum_n g_n r_nk rho_nk / s_k
        log_scale_bar_k =  sum_n g_n r_nk (-1 - t_nk rho_nk)
        raw_df_bar_k    =  sigmoid(raw_df_k) sum_n g_n r_nk [ (psi((nu+1)/2) - psi(nu/2) - 1/nu
                                        - log1p(q_nk)) / 2 + (nu+1) t^2 / (2 nu (nu + t^2)) ]
        logits_bar      =  sum_n g_n (r_n - w)

    (``psi`` the digamma function). ``sample`` draws ``dim + 1`` standard normals per sample,
    ``(g_0, g)``: the component ``k`` is the first whose cumulative weight exceeds ``Phi(g_0)``,
    and the sample is ``loc_k + s_k T`` with ``T = sign(g) |F_nu^-1(Phi(-|g|))|`` (the t's
    inverse cdf, ``scipy.special.stdtrit``, taken in the lower tail where ``Phi`` keeps its
    relative precision): all normals, one request per call, so that samples drawn in chunks
    from one generator are those of a single draw (``rng.standard_t`` would interleave its
    normals and gammas with the component's draw). With one component it is
    :class:`StudentT`; as ``nu -> inf`` each component tends to :class:`DiagGaussianMixture`'s.

    Examples
    --------
    >>> import numpy as np
    >>> from refflow import DiagStudentTMixture, StudentT
    >>> d = DiagStudentTMixture(2, 3, df=4.0)   # zero locations: three copies of one t
    >>> z = np.array([[0.5, -1.0]])
    >>> bool(np.allclose(d.log_prob(z), StudentT(2, df=4.0).log_prob(z)))
    True
    >>> DiagStudentTMixture(2, 3, rng=0).sample(4, rng=1).shape
    (4, 2)
    """

    def __init__(self, dim, n_components, df=5.0, rng=None):
        where = "DiagStudentTMixture"
        dim = check_dim(dim, where)
        k = check_int(n_components, where, "n_components", minimum=1)
        if isinstance(df, bool) or not isinstance(df, numbers.Real) or not \
                (math.isfinite(df) and df > 0):
            raise ValueError(f"{where}: df must be a positive finite number, got {df!r}")
        loc = np.zeros((k, dim)) if rng is None else \
            check_rng(rng, where).standard_normal((k, dim))
        self.n_components = k
        super().__init__(dim, params={"logits": np.zeros(k), "loc": loc,
                                      "log_scale": np.zeros((k, dim)),
                                      "raw_df": softplus_inverse(np.full((k, dim), float(df)))})

    _per_component = ("loc", "log_scale", "raw_df")

    @property
    def df(self):
        """The degrees of freedom ``nu``, float64 ``(K, dim)`` (a copy)."""
        return softplus(self._params["raw_df"])

    def _constrained(self, dtype, where):
        log_w, loc, log_scale, inv_scale = self._weights_and_scales(dtype, where)
        nu = self.df.astype(dtype)
        if not (nu > 0).all():
            raise ValueError(f"{where}: df underflows to 0 in {np.dtype(dtype)} (df down to "
                             f"{self.df.min():.4g})")
        return log_w, loc, log_scale, nu, inv_scale

    def _components(self, z, where):
        """``(log_w, a, t, t2, l1q, nu, inv_scale)``: ``a_nk = log w_k + log p_k(z_n)``."""
        log_w, loc, log_scale, nu, inv_scale = self._constrained(z.dtype, where)
        t = (z[:, None, :] - loc) * inv_scale                     # (n, K, dim)
        t2 = t * t
        l1q = np.log1p(t2 / nu)
        const = (_t_log_norm(self.df) - self._params["log_scale"]).sum(axis=1).astype(z.dtype)
        a = log_w + const - z.dtype.type(0.5) * np.einsum("kd,nkd->nk", nu + 1, l1q)
        return log_w, a, t, t2, l1q, nu, inv_scale

    def component_log_prob(self, z):
        """Log-density of each point under each component (without the weights): ``z`` of
        shape ``(n, dim)`` -> ``(n, K)`` (or ``(K,)``)."""
        where = "DiagStudentTMixture.component_log_prob"
        z2, was_1d = as_batch(z, self.dim, where)
        log_w, a = self._components(z2, where)[:2]
        out = a - log_w
        return out[0] if was_1d else out

    def _log_prob_vjp(self, z):
        log_w, a, t, t2, l1q, nu, inv_scale = self._components(z, "DiagStudentTMixture.log_prob")
        half = z.dtype.type(0.5)
        lp = logsumexp_rows(a)

        def pullback(lp_bar):
            gr = (lp_bar[:, None] * np.exp(a - lp[:, None]))[:, :, None]   # g r, (n, K, 1)
            rho = -(nu + 1) * t / (nu + t2)                       # d a / d t
            grs = gr * rho * inv_scale                            # g r rho / s
            dnu = (_t_dlog_norm(self.df).astype(z.dtype) - half * l1q
                   + (nu + 1) * t2 / (2 * nu * (nu + t2)))
            dsp = sigmoid(self._params["raw_df"].astype(z.dtype))
            grads = {"logits": gr[:, :, 0].sum(axis=0) - lp_bar.sum() * np.exp(log_w),
                     "loc": -grs.sum(axis=0),
                     "log_scale": (gr * (-1 - t * rho)).sum(axis=0),
                     "raw_df": (gr * dnu).sum(axis=0) * dsp}
            return grs.sum(axis=1), grads

        return lp, pullback

    def _sample(self, n, rng):
        where = "DiagStudentTMixture.sample"
        nu = self._constrained(np.float64, where)[3]
        k, g, loc, scale = self._draw(n, rng, where)
        # Phi(-|g|) > 0 up to |g| ~ 38 (probability ~1e-316); tiny keeps the quantile finite
        lower = np.maximum(ndtr(-np.abs(g)), np.finfo(np.float64).tiny)
        return loc[k] + scale[k] * np.copysign(-stdtrit(nu[k], lower), g)


class Flow:
    """A normalizing flow: base distribution ``p`` and bijector ``T``, ``x = T(z)``.

    Parameters
    ----------
    base : StandardNormal, DiagNormal, Uniform, StudentT or DiagGaussianMixture
        A point whose ``z`` lies outside a ``Uniform`` base's box has ``log_prob`` ``-inf``;
        gradients (``log_prob_vjp``, ``nll_and_grad``) refuse such points. ``kl_and_grad``
        reparameterizes normal bases only.
    bijector : Bijector
        Of the same ``dim``.

    Attributes
    ----------
    params : ParamDict
        ``"base.<name>"`` and ``"bijector.<name>"`` (e.g. ``"bijector.layers.3.log_scale"``),
        the very arrays of the layers: an optimizer updates them in place.

    Notes
    -----
    ``log_prob``, ``sample``, ``sample_and_log_prob``, ``log_prob_vjp``, ``nll_and_grad``,
    ``kl`` and ``kl_and_grad`` run their passes with the BLAS thread count
    :mod:`refflow.kernels.threads` picks for the rows of one pass: one thread for small work,
    the default for large; your own setting (a thread variable, ``REFFLOW_BLAS_THREADS``, a
    ``threadpoolctl`` limit) takes precedence. Results do not depend on it.

    Examples
    --------
    >>> import numpy as np
    >>> from refflow import Affine, Flow, StandardNormal
    >>> flow = Flow(StandardNormal(2), Affine(2))
    >>> flow.params["bijector.shift"] = [1.0, -1.0]
    >>> x = flow.sample(3, rng=0)
    >>> flow.log_prob(x).shape
    (3,)
    >>> nll, grads = flow.nll_and_grad(x)
    >>> sorted(grads)
    ['bijector.log_scale', 'bijector.shift']
    """

    def __init__(self, base, bijector):
        if not isinstance(base, _Distribution):
            raise ValueError(f"Flow: base must be a refflow distribution, got {type(base).__name__}")
        if not isinstance(bijector, Bijector):
            raise ValueError(f"Flow: bijector must be a Bijector, got {type(bijector).__name__}")
        if base.dim != bijector.dim:
            raise ValueError(f"Flow: base dim {base.dim} differs from bijector dim {bijector.dim}")
        self.base = base
        self.bijector = bijector
        self.dim = base.dim
        self.context_dim = bijector.context_dim

    def __repr__(self):
        return f"Flow(base={self.base!r}, bijector={self.bijector!r})"

    def _config(self):
        return {"base": to_spec(self.base), "bijector": to_spec(self.bijector)}

    @classmethod
    def _from_config(cls, config):
        return cls(**dict(config, base=from_spec(config["base"]),
                          bijector=from_spec(config["bijector"])))

    @classmethod
    def _declare(cls, config):
        base, bijector = declare(config["base"]), declare(config["bijector"])
        if base["buffers"]:
            raise ValueError("Flow: the base distribution declares buffers, which a Flow does "
                             "not save")
        return combine(("base", base), ("bijector", bijector))

    @property
    def params(self):
        return prefixed([("base", self.base.params), ("bijector", self.bijector.params)])

    @property
    def buffers(self):
        return {f"bijector.{k}": v for k, v in self.bijector.buffers.items()}

    def train(self, mode=True):
        """Training mode for every layer (batch statistics); returns self."""
        self.bijector.train(mode)
        return self

    def eval(self):
        """Eval mode for every layer (running statistics); returns self."""
        return self.train(False)

    def _blas(self, rows):
        """The BLAS thread count for passes of ``rows`` rows (:mod:`refflow.kernels.threads`):
        the work is ``rows`` times the size of the largest weight, kept per bijector."""
        kept = self.__dict__.get("_largest_weight")
        if kept is None or kept[0] is not self.bijector or kept[1] is not self.base:
            kept = (self.bijector, self.base, largest_weight(self.params.values()))
            self._largest_weight = kept
        return blas_threads(rows * kept[2])

    def _context(self, context, n, where, dtype=np.float64):
        c2, shared = self.bijector._check_context(context, n, where)
        if c2 is not None and c2.dtype != dtype:
            c2 = c2.astype(dtype)
        return c2, shared

    def _context_chunks(self, context, n, where, dtype):
        """``chunk(start, stop) -> context rows`` (None for an unconditional flow).

        A single ``(context_dim,)`` context is repeated per chunk, not for all ``n`` rows, so
        that its copy does not grow with ``n`` (the same values as one repeat of all rows).
        """
        if context is not None and self.context_dim is not None and _single_row(context):
            c1, _ = self._context(context, 1, where, dtype)
            return lambda start, stop: np.repeat(c1, stop - start, axis=0)
        c2, _ = self._context(context, n, where, dtype)
        if c2 is None:
            return lambda start, stop: None
        return lambda start, stop: c2[start:stop]

    def log_prob(self, x, context=None, *, batch_size=None):
        """Log-density ``log q(x | context)`` of each point: ``(n, dim)`` -> ``(n,)``.

        Parameters
        ----------
        x : array_like of shape (n, dim) or (dim,)
        context : array_like of shape (n, context_dim) or (context_dim,), optional
            Conditional flows only; one ``(context_dim,)`` row is shared by every point.
        batch_size : int >= 1 or None, default None
            Rows per pass: the rows are processed in chunks (the context alongside) and the
            results written into one output array, so that the temporaries of the passes are
            bounded by the chunk, not by ``n``. None means :data:`DEFAULT_BATCH_SIZE` (65,536)
            rows. The result is bit for bit the one of a single pass over all rows (every layer
            maps rows independently, and the GEMMs' results do not depend on the number of rows
            with NumPy's OpenBLAS; ``tests/robustness/test_memory.py`` checks it). A flow with a
            training-mode ``BatchNorm`` or an uninitialised ``ActNorm`` depends on the whole
            batch: it runs in one pass with ``batch_size=None`` and refuses a smaller explicit
            ``batch_size`` with ``ValueError``.

        A ``dask.array.Array`` ``x`` of shape ``(n, dim)`` (rows in chunks, known chunk sizes;
        ``context`` a dask array, an array or one shared row) gives a lazy ``(n,)`` dask array:
        one task per chunk of rows, each calling this method on its chunk, the flow in the
        graph once (a copy: later changes to the flow do not reach it). The computed result is
        bit for bit the NumPy result, for the reason above; a batch-coupled flow refuses more
        than one chunk (``ValueError``). Errors in the values (a NaN row) are raised by
        ``compute``.
        """
        where = "Flow.log_prob"
        if is_dask_array(x):
            from ._dask import map_rows

            if _batch_coupled(self.bijector) is not None and len(x.chunks[0]) > 1:
                layer, reason = _batch_coupled(self.bijector)
                raise ValueError(f"{where}: {type(layer).__name__} {reason}; a dask x in more "
                                 f"than one chunk of rows would change its result")
            options = {} if batch_size is None else {"batch_size": batch_size}
            return map_rows(self, "log_prob", x, context, where=where, dim=self.dim,
                            context_dim=self.context_dim, options=options, name="x")
        x2, was_1d = as_batch(x, self.dim, where)
        n = x2.shape[0]
        explicit = batch_size is not None
        batch_size = _check_batch_size(batch_size, where)
        context_rows = self._context_chunks(context, n, where, x2.dtype)
        chunks = _chunks(n, batch_size, self.bijector, explicit, where)
        lp = None if len(chunks) == 1 else np.empty(n, dtype=x2.dtype)
        with atomic(), self._blas(min(n, batch_size)):
            for start, stop in chunks:
                z, log_det, _ = self.bijector._run("inverse", x2[start:stop], False,
                                                context_rows(start, stop))
                with np.errstate(over="ignore", invalid="ignore"):
                    base_lp = self.base._log_prob(z)
                    part = base_lp + log_det
                _finite_log_prob(part, where,
                                 base_lp if self.base._bounded_support else None)
                if len(chunks) == 1:
                    lp = part
                    break
                lp[start:stop] = part
        return lp[0] if was_1d else lp

    def sample(self, n, rng=None, *, context=None, batch_size=None):
        """``n`` samples ``x = T(z)``, ``z ~ base``: float64 ``(n, dim)``.

        ``context`` (conditional flows only): ``(n, context_dim)``, or ``(context_dim,)`` to
        draw all ``n`` samples at one context. ``batch_size``: rows per pass, as in
        :meth:`sample_and_log_prob`; the samples do not depend on it.
        """
        return self.sample_and_log_prob(n, rng, context=context, batch_size=batch_size,
                                        _where="Flow.sample")[0]

    def sample_and_log_prob(self, n, rng=None, *, context=None, batch_size=None,
                            _where="Flow.sample_and_log_prob"):
        """Samples and their log-densities in one pass: ``log q(x) = log p(z) - log|det dx/dz|``.

        Parameters
        ----------
        n : int >= 0
        rng : int or numpy.random.Generator, optional
        context : array_like of shape (n, context_dim) or (context_dim,), optional
            Conditional flows only.
        batch_size : int >= 1 or None, default None
            Rows per pass (None: :data:`DEFAULT_BATCH_SIZE`), as in :meth:`log_prob`: the base
            noise is drawn chunk by chunk, in order, from the one generator, which gives exactly
            the numbers of a single draw of all ``n`` rows (a Generator's normals form one
            stream, whatever the shapes of the requests), so samples and log-densities are bit
            for bit those of an unchunked call with the same seed.

        Returns
        -------
        x : ndarray of shape (n, dim)
        log_prob : ndarray of shape (n,)
        """
        n = _check_n(n, _where)
        rng = check_rng(rng, _where)
        explicit = batch_size is not None
        batch_size = _check_batch_size(batch_size, _where)
        context_rows = self._context_chunks(context, n, _where, np.float64)
        chunks = _chunks(n, batch_size, self.bijector, explicit, _where)
        x = lq = None
        if len(chunks) > 1:  # preallocated: a request too large for memory fails here, clearly
            x, lq = empty_output((n, self.dim), _where), empty_output(n, _where)
        with atomic(), self._blas(min(n, batch_size)):
            for start, stop in chunks:
                z = self.base._sample(stop - start, rng)
                x_part, log_det, _ = self.bijector._run("forward", z, False,
                                                     context_rows(start, stop))
                with np.errstate(over="ignore", invalid="ignore"):
                    lq_part = self.base._log_prob(z) - log_det
                _finite_log_prob(lq_part, _where)
                if len(chunks) == 1:
                    x, lq = x_part, lq_part
                    break
                x[start:stop] = x_part
                lq[start:stop] = lq_part
        return x, lq

    def _log_prob_vjp(self, x2, c2):
        """``log q`` of validated rows and a pullback ``lp_bar -> (x_bar, grads, context_bar)``."""
        z, log_det, bijector_pullback = self.bijector._run("inverse", x2, True, c2)
        lp, base_pullback = self.base._log_prob_vjp(z)
        outside = np.isneginf(lp) if self.base._bounded_support else np.zeros(0, bool)
        if outside.any():
            raise ValueError(f"Flow: {int(outside.sum())} of {lp.shape[0]} points map outside "
                             f"the support of the base {type(self.base).__name__} (first row "
                             f"{int(np.argmax(outside))}; log-density -inf, no gradient)")

        def pullback(lq_bar):
            # d log q / d log_det = 1 and d log q / d log p(z) = 1: both get lq_bar
            z_bar, base_grads = base_pullback(lq_bar)
            x_bar, bijector_grads, context_bar = bijector_pullback(z_bar, lq_bar)
            grads = {f"base.{k}": np.asarray(g, dtype=np.float64) for k, g in base_grads.items()}
            grads.update({f"bijector.{k}": np.asarray(g, dtype=np.float64)
                          for k, g in bijector_grads.items()})
            return x_bar, grads, context_bar

        return lp + log_det, pullback

    def log_prob_vjp(self, x, context=None):
        """``(log_prob, pullback)``; ``pullback(log_prob_bar) -> (x_bar, grads)``.

        For a conditional flow called with a context, the pullback returns
        ``(x_bar, grads, context_bar)``, so that a network producing the context can be trained.
        ``grads`` has the keys of ``params``.
        """
        where = "Flow.log_prob_vjp"
        x2, was_1d = as_batch(x, self.dim, where)
        if np.shares_memory(x2, x):
            x2 = x2.copy()
        c2, shared = self._context(context, x2.shape[0], where, x2.dtype)
        if c2 is not None and np.shares_memory(c2, context):
            c2 = c2.copy()
        with atomic(), self._blas(x2.shape[0]), \
                np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            lq, inner = self._log_prob_vjp(x2, c2)
            _finite_log_prob(lq, where)

        def pullback(lq_bar):
            lq_bar = as_float_array(lq_bar, f"{where} pullback", "log_prob_bar")
            expected = () if was_1d else (x2.shape[0],)
            if lq_bar.shape != expected or not np.isfinite(lq_bar).all():
                raise ValueError(f"{where} pullback: expected a finite log_prob_bar of shape {expected}")
            with self._blas(x2.shape[0]), \
                    np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                x_bar, grads, c_bar = inner(lq_bar.reshape(x2.shape[0]).astype(x2.dtype))
            if not (np.isfinite(x_bar).all() and all(np.isfinite(g).all() for g in grads.values())
                    and (c_bar is None or np.isfinite(c_bar).all())):
                raise ValueError(f"{where} pullback: the gradient is not finite")
            x_bar = x_bar[0] if was_1d else x_bar
            if c_bar is None:
                return x_bar, grads
            return x_bar, grads, (c_bar.sum(axis=0) if shared else c_bar)

        return (lq[0] if was_1d else lq.copy()), pullback

    def nll_and_grad(self, x, context=None):
        """Mean negative log-likelihood of a batch and its gradient for every parameter.

        Parameters
        ----------
        x : array_like of shape (n, dim), n >= 1
        context : array_like of shape (n, context_dim) or (context_dim,), optional
            Conditional flows only.

        Returns
        -------
        nll : float
            ``-mean_n log q(x_n | context_n)``.
        grads : dict
            Same keys and shapes as ``params``, float64.

        Notes
        -----
        One inverse pass with residuals; the cotangent of every ``log q(x_n)`` is ``-1/n``, sent
        through the base distribution's pullback (to ``z`` and the base parameters) and then the
        bijector's (to its parameters; the cotangent of its log-det is also ``-1/n``).
        """
        x2, _ = as_batch(x, self.dim, "Flow.nll_and_grad")
        if x2.shape[0] == 0:
            raise ValueError("Flow.nll_and_grad: the batch is empty; the mean is undefined")
        n = x2.shape[0]
        c2, _ = self._context(context, n, "Flow.nll_and_grad", x2.dtype)
        # A non-finite loss or gradient raises inside (as a ValueError, not a RuntimeWarning), so
        # no running statistics are updated.
        with atomic(), self._blas(n), \
                np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            lq, pullback = self._log_prob_vjp(x2, c2)
            nll = -float(np.mean(lq))
            _, grads, _ = pullback(np.full(n, -1.0 / n, dtype=x2.dtype))
            if not (np.isfinite(nll) and all(np.isfinite(g).all() for g in grads.values())):
                raise ValueError("Flow.nll_and_grad: the loss or its gradient is not finite")
        return nll, grads

    # ------------------------------------------------------------------ reverse KL
    @staticmethod
    def _kl_target(log_target, where):
        """``(log_p_fn, grad_fn)`` from a callable (``grad_fn`` None) or a pair of callables."""
        if isinstance(log_target, (tuple, list)):
            if len(log_target) != 2 or not all(callable(f) for f in log_target):
                raise TypeError(f"{where}: log_target must be a callable x -> (log_p, grad) or a "
                                f"pair of callables (log_p_fn, grad_fn)")
            return log_target[0], log_target[1]
        if not callable(log_target):
            raise TypeError(f"{where}: log_target must be a callable x -> (log_p, grad) or a pair "
                            f"of callables (log_p_fn, grad_fn), got {type(log_target).__name__}")
        return log_target, None

    def _eval_kl_target(self, fns, x, c2, where, need_grad):
        """Call the target on copies of ``x`` (and the context rows) and validate what it returns.

        Returns float64 ``log_p`` of shape ``(n,)``, finite or ``-inf`` (NaN and ``+inf`` raise),
        and, when ``need_grad``, a finite ``grad`` of shape ``(n, dim)`` (else None).
        """
        log_p_fn, grad_fn = fns
        n = x.shape[0]
        args = (x.copy(),) if c2 is None else (x.copy(), c2.copy())
        out = log_p_fn(*args)
        grad = None
        if grad_fn is None and isinstance(out, tuple):
            if len(out) != 2:
                raise ValueError(f"{where}: log_target returned a tuple of {len(out)} items; "
                                 f"expected (log_p, grad)")
            out, grad = out
        elif grad_fn is None and need_grad:
            raise ValueError(f"{where}: log_target must return (log_p, grad), got a single "
                             f"{type(out).__name__}; or pass a pair (log_p_fn, grad_fn)")
        log_p = as_float_array(out, where, "log_target's log_p")
        if log_p.shape != (n,):
            raise ValueError(f"{where}: log_target returned log_p of shape {log_p.shape}, "
                             f"expected ({n},)")
        log_p = log_p.astype(np.float64)
        n_nan, n_pinf = int(np.isnan(log_p).sum()), int((log_p == np.inf).sum())
        if n_nan or n_pinf:
            raise ValueError(f"{where}: log_target returned {n_nan} NaN and {n_pinf} +inf "
                             f"log-densities among {n} samples; they must be finite (or -inf "
                             f"where the target has no mass)")
        if not need_grad:
            return log_p, None
        n_ninf = int((log_p == -np.inf).sum())
        if n_ninf:
            raise ValueError(f"{where}: log_target is -inf at {n_ninf} of {n} samples: the target "
                             f"has no mass where the flow puts mass, so KL(q || p) is +inf and "
                             f"has no gradient (Flow.kl returns (inf, inf) there); give the target "
                             f"full support or restrict the flow's")
        if grad_fn is not None:
            grad = grad_fn(*args)
        grad = as_float_array(grad, where, "log_target's grad")
        if grad.shape != (n, self.dim):
            raise ValueError(f"{where}: log_target returned grad of shape {grad.shape}, "
                             f"expected ({n}, {self.dim})")
        grad = grad.astype(np.float64)
        if not np.isfinite(grad).all():
            bad = int((~np.isfinite(grad).all(axis=1)).sum())
            raise ValueError(f"{where}: log_target returned a non-finite grad for {bad} of {n} "
                             f"samples")
        return log_p, grad

    def _reparameterized_sample(self, n, rng, where):
        """Base samples ``z = g(eps)``, ``eps ~ N(0, I)`` (the draws of ``base.sample``), and the
        pullback ``z_bar -> grads`` of ``g`` for the base parameters."""
        eps = rng.standard_normal((n, self.dim))
        if isinstance(self.base, DiagNormal):
            loc = self.base.params["loc"].copy()
            scale = np.exp(self.base.params["log_scale"])
            z = loc + scale * eps  # as DiagNormal._sample

            def pullback(z_bar):
                # z = loc + exp(log_scale) eps: dz/dloc = 1, dz/dlog_scale = exp(log_scale) eps
                return {"loc": z_bar.sum(axis=0), "log_scale": (z_bar * scale * eps).sum(axis=0)}

            return z, pullback
        if isinstance(self.base, StandardNormal):
            return eps, lambda z_bar: {}
        raise ValueError(f"{where}: no reparameterization for base {type(self.base).__name__}")

    def kl_and_grad(self, log_target, n, rng=None, *, context=None):
        r"""Monte-Carlo reverse KL to an unnormalised target and its gradient (reparameterization).

        Parameters
        ----------
        log_target : callable or (callable, callable)
            ``log_target(x) -> (log_p, grad)``: ``log p~(x)`` of shape ``(n,)`` and its gradient
            ``(n, dim)`` (e.g. :func:`refflow.datasets.rezende_potential`), or a pair
            ``(log_p_fn, grad_fn)``. ``p~`` need not be normalised. For a conditional flow it is
            called as ``log_target(x, context)`` with the ``(n, context_dim)`` context rows.
        n : int, >= 1
            Number of samples.
        rng : int or numpy.random.Generator, optional
            The same seed gives the same samples (common random numbers), and the same ``x`` as
            ``sample(n, rng)``.
        context : array_like of shape (n, context_dim) or (context_dim,), optional
            Conditional flows only.

        Returns
        -------
        kl : float
            ``mean_n [log q(x_n) - log p~(x_n)]``, which estimates ``KL(q || p) - log Z``
            (``Z = int p~``; so it is bounded below by ``-log Z``).
        grads : dict
            Its gradient, with the keys and shapes of ``params``, float64.

        Raises
        ------
        ValueError
            ``log_target`` returns NaN, ``+inf``, ``-inf`` (the target has no mass at a sample:
            the KL is infinite; :meth:`kl` returns ``(inf, inf)`` then) or arrays of the wrong
            shape; a pass overflows. Parameters and layer state are then unchanged.
        TypeError
            ``log_target`` is neither a callable nor a pair of callables.

        Notes
        -----
        With ``eps_n ~ N(0, I)``, ``z_n = g(eps_n)`` (``z = eps`` for ``StandardNormal``,
        ``z = loc + exp(log_scale) eps`` for ``DiagNormal``), ``x_n = T(z_n)`` and
        ``log q(x_n) = log p(z_n) - log|det dT/dz|(z_n)``, the estimate is
        ``L = 1/n sum_n f_n``, ``f_n = log p(z_n) - log_det_n - log p~(x_n)``; differentiating
        through the samples (Kingma & Welling 2014; Rezende & Mohamed 2015, eq. 15), the
        cotangents are::

            x_bar = -(1/n) grad log p~(x),   log_det_bar = -(1/n),   log p(z)_bar = +(1/n)

        The bijector's forward pullback gives ``z_bar_T`` and the bijector's parameters; the
        base's ``log_prob`` pullback gives ``z_bar_p`` and the partial derivatives at fixed
        ``z``; ``z_bar = z_bar_T + z_bar_p`` then flows through ``g``. For ``DiagNormal``, with
        ``u = (z - loc) / s = eps``, ``s = exp(log_scale)``::

            z_bar_p       = -(1/n) u / s
            loc_bar       = sum_n (1/n) u / s      + sum_n z_bar_n         = sum_n z_bar_T,n
            log_scale_bar = sum_n (1/n) (u^2 - 1)  + sum_n z_bar_n s eps_n = sum_n z_bar_T,n s eps_n - 1

        (as it must: ``log p(g(eps)) = -|eps|^2/2 - sum(log_scale) - const`` depends on the base
        parameters only through ``-sum(log_scale)``).

        References
        ----------
        Rezende, Mohamed, "Variational Inference with Normalizing Flows", 2015, arXiv:1505.05770.
        Kingma, Welling, "Auto-Encoding Variational Bayes", 2014, arXiv:1312.6114.

        Examples
        --------
        A flow fitted to its own density has zero reverse KL, for every sample:

        >>> import numpy as np
        >>> from refflow import Affine, DiagNormal, Flow, StandardNormal
        >>> target = Flow(StandardNormal(2), Affine(2))
        >>> target.params["bijector.shift"] = [1.0, -1.0]
        >>> def log_target(x):
        ...     lp, pullback = target.log_prob_vjp(x)
        ...     return lp, pullback(np.ones(len(x)))[0]
        >>> flow = Flow(DiagNormal(2), Affine(2))
        >>> kl, grads = flow.kl_and_grad(log_target, 1000, rng=0)
        >>> sorted(grads)
        ['base.loc', 'base.log_scale', 'bijector.log_scale', 'bijector.shift']
        >>> flow.params["bijector.shift"] = [1.0, -1.0]
        >>> abs(flow.kl(log_target, 1000, rng=0)[0]) < 1e-12
        True
        """
        where = "Flow.kl_and_grad"
        fns = self._kl_target(log_target, where)
        n = _check_n(n, where)
        if n == 0:
            raise ValueError(f"{where}: n must be at least 1")
        rng = check_rng(rng, where)
        c2, _ = self._context(context, n, where)
        # Layer state changes (data-dependent initialisation) commit only if everything succeeds.
        # The flow's passes run with refflow's BLAS threads, the user's target as the user set.
        with atomic(), np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            with self._blas(n):
                z, reparam_pullback = self._reparameterized_sample(n, rng, where)
                lp, base_pullback = self.base._log_prob_vjp(z)
                x, log_det, bijector_pullback = self.bijector._run("forward", z, True, c2)
            log_t, grad_t = self._eval_kl_target(fns, x, c2, where, need_grad=True)
            f = lp - log_det - log_t
            kl = float(np.mean(f))
            inv_n = 1.0 / n
            with self._blas(n):
                z_bar_t, bijector_grads, _ = bijector_pullback(-inv_n * grad_t,
                                                               np.full(n, -inv_n))
                z_bar_p, base_grads = base_pullback(np.full(n, inv_n))
            for key, g in reparam_pullback(z_bar_t + z_bar_p).items():
                base_grads[key] = base_grads[key] + g
            grads = {f"base.{k}": np.asarray(g, dtype=np.float64) for k, g in base_grads.items()}
            grads.update({f"bijector.{k}": np.asarray(g, dtype=np.float64)
                          for k, g in bijector_grads.items()})
            if not (math.isfinite(kl) and all(np.isfinite(g).all() for g in grads.values())):
                raise ValueError(f"{where}: the KL estimate or its gradient is not finite "
                                 f"(overflow)")
        return kl, grads

    def kl(self, log_target, n, rng=None, *, context=None):
        """Monte-Carlo estimate of ``E_q[log q(x) - log p~(x)]`` and its standard error.

        Parameters
        ----------
        log_target : callable or (callable, callable)
            As in :meth:`kl_and_grad`, or a callable returning ``log_p`` alone (a tuple it
            returns is read as ``(log_p, grad)``; the gradient is not used).
        n : int, >= 2
        rng : int or numpy.random.Generator, optional
            Same samples as ``sample(n, rng)`` and :meth:`kl_and_grad` with the same seed.
        context : array_like, optional
            Conditional flows only.

        Returns
        -------
        estimate : float
            ``mean_n f_n``, ``f_n = log q(x_n) - log p~(x_n)``: ``KL(q || p) - log Z``.
        standard_error : float
            ``std(f, ddof=1) / sqrt(n)``.

        Both are ``inf`` when ``log p~`` is ``-inf`` at some sample (the target has no mass
        there). NaN or ``+inf`` from the target, or a wrong shape, raise ``ValueError``.
        """
        where = "Flow.kl"
        fns = self._kl_target(log_target, where)
        n = _check_n(n, where)
        if n < 2:
            raise ValueError(f"{where}: n must be at least 2 for a standard error, got {n}")
        rng = check_rng(rng, where)
        c2, _ = self._context(context, n, where)
        z = self.base._sample(n, rng)
        with atomic():  # a target that raises leaves layer state (ActNorm init) unchanged
            with self._blas(n):
                x, log_det, _ = self.bijector._run("forward", z, False, c2)
                lq = self.base._log_prob(z) - log_det
            log_t, _ = self._eval_kl_target((fns[0], None), x, c2, where, need_grad=False)
        if np.isneginf(log_t).any():
            return math.inf, math.inf
        with np.errstate(over="ignore", invalid="ignore"):
            f = lq - log_t
            estimate, stderr = float(np.mean(f)), float(np.std(f, ddof=1) / math.sqrt(n))
        if not (math.isfinite(estimate) and math.isfinite(stderr)):
            raise ValueError(f"{where}: the estimate overflows float64 (log q - log p~ reaches "
                             f"{np.max(np.abs(f)):.3g}); the target is far from the flow")
        return estimate, stderr


register(StandardNormal, DiagNormal, Uniform, StudentT, DiagGaussianMixture, DiagStudentTMixture,
         Flow)
