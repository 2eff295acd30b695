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

from ._validation import as_batch, as_float_array, check_dim, check_rng
from .bijectors.base import Bijector, atomic
from .params import ParamDict, prefixed

__all__ = ["StandardNormal", "DiagNormal", "Flow"]

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


def _check_n(n, where):
    if isinstance(n, (bool, np.bool_)) or not isinstance(n, numbers.Integral) or n < 0:
        raise ValueError(f"{where}: the number of samples must be a non-negative int, got {n!r}")
    return int(n)


class _Distribution:
    """Shared validation: ``log_prob``, ``log_prob_vjp``, ``sample`` on ``(n, dim)`` arrays."""

    def __init__(self, dim, params=None):
        self.dim = check_dim(dim, type(self).__name__)
        self._params = ParamDict(params or {})

    @property
    def params(self):
        return self._params

    def __repr__(self):
        return f"{type(self).__name__}(dim={self.dim})"

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

    def __init__(self, dim):
        dim = check_dim(dim, "DiagNormal")
        super().__init__(dim, params={"loc": np.zeros(dim), "log_scale": np.zeros(dim)})

    def _log_prob_vjp(self, z):
        loc = self._params["loc"].astype(z.dtype)
        log_scale = self._params["log_scale"].astype(z.dtype)
        inv_scale = np.exp(-log_scale)
        u = (z - loc) * inv_scale
        lp = -0.5 * np.einsum("ij,ij->i", u, u) - log_scale.sum() - self.dim * _HALF_LOG_2PI

        def pullback(lp_bar):
            g = lp_bar[:, None]
            gu = g * u * inv_scale
            return -gu, {"loc": gu.sum(axis=0), "log_scale": (g * (u * u - 1.0)).sum(axis=0)}

        return lp, pullback

    def _log_prob(self, z):
        return self._log_prob_vjp(z)[0]

    def _sample(self, n, rng):
        eps = rng.standard_normal((n, self.dim))
        return self._params["loc"] + np.exp(self._params["log_scale"]) * eps


class Flow:
    """A normalizing flow: base distribution ``p`` and bijector ``T``, ``x = T(z)``.

    Parameters
    ----------
    base : StandardNormal or DiagNormal
    bijector : Bijector
        Of the same ``dim``.

    Attributes
    ----------
    params : ParamDict
        ``"base.<name>"`` and ``"bijector.<name>"`` (e.g. ``"bijector.layers.3.log_scale"``),
        the very arrays of the layers: an optimizer updates them in place.

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

    def _context(self, context, n, where, dtype=np.float64):
        c2, shared = self.bijector._check_context(context, n, where)
        if c2 is not None and c2.dtype != dtype:
            c2 = c2.astype(dtype)
        return c2, shared

    def log_prob(self, x, context=None):
        """Log-density ``log q(x | context)`` of each point: ``(n, dim)`` -> ``(n,)``.

        ``context`` (conditional flows only) is ``(n, context_dim)`` or one ``(context_dim,)``
        row shared by every point.
        """
        x2, was_1d = as_batch(x, self.dim, "Flow.log_prob")
        c2, _ = self._context(context, x2.shape[0], "Flow.log_prob", x2.dtype)
        with atomic():
            z, log_det = self.bijector._run("inverse", x2, False, c2)
        lp = self.base._log_prob(z) + log_det
        return lp[0] if was_1d else lp

    def sample(self, n, rng=None, *, context=None):
        """``n`` samples ``x = T(z)``, ``z ~ base``: float64 ``(n, dim)``.

        ``context`` (conditional flows only): ``(n, context_dim)``, or ``(context_dim,)`` to
        draw all ``n`` samples at one context.
        """
        return self.sample_and_log_prob(n, rng, context=context, _where="Flow.sample")[0]

    def sample_and_log_prob(self, n, rng=None, *, context=None, _where="Flow.sample_and_log_prob"):
        """Samples and their log-densities in one pass: ``log q(x) = log p(z) - log|det dx/dz|``."""
        z = self.base.sample(n, check_rng(rng, _where))
        c2, _ = self._context(context, z.shape[0], _where)
        with atomic():
            x, log_det = self.bijector._run("forward", z, False, c2)
        return x, self.base._log_prob(z) - log_det

    def _log_prob_vjp(self, x2, c2):
        """``log q`` of validated rows and a pullback ``lp_bar -> (x_bar, grads, context_bar)``."""
        z, log_det, bijector_pullback = self.bijector._run("inverse", x2, True, c2)
        lp, base_pullback = self.base._log_prob_vjp(z)

        def pullback(lq_bar):
            # d log q / d log_det = 1 and d log q / d log p(z) = 1: both get lq_bar
            z_bar, base_grads = base_pullback(lq_bar)
            result = bijector_pullback(z_bar, lq_bar)
            grads = {f"base.{k}": np.asarray(g, dtype=np.float64) for k, g in base_grads.items()}
            grads.update({f"bijector.{k}": np.asarray(g, dtype=np.float64)
                          for k, g in result[1].items()})
            return result[0], grads, (result[2] if len(result) == 3 else None)

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
        with atomic(), np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            lq, inner = self._log_prob_vjp(x2, c2)

        def pullback(lq_bar):
            lq_bar = as_float_array(lq_bar, f"{where} pullback", "log_prob_bar")
            expected = () if was_1d else (x2.shape[0],)
            if lq_bar.shape != expected or not np.isfinite(lq_bar).all():
                raise ValueError(f"{where} pullback: expected a finite log_prob_bar of shape {expected}")
            with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
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
        with atomic(), np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            lq, pullback = self._log_prob_vjp(x2, c2)
            nll = -float(np.mean(lq))
            _, grads, _ = pullback(np.full(n, -1.0 / n, dtype=x2.dtype))
            if not (np.isfinite(nll) and all(np.isfinite(g).all() for g in grads.values())):
                raise ValueError("Flow.nll_and_grad: the loss or its gradient is not finite")
        return nll, grads
