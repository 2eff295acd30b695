r"""Normalization bijectors: ``ActNorm`` (Glow) and ``BatchNorm`` (RealNVP, MAF).

Both are elementwise affine maps, so the Jacobian is diagonal and the log-det is the same for
every row. They differ in where the affine coefficients come from:

==========  ==================================================================================
ActNorm     trainable ``shift`` and ``log_scale``, set once from the first batch it sees
            (data-dependent initialisation), then ordinary parameters.
BatchNorm   the statistics of the current batch (training mode) or running averages of them
            (eval mode), followed by a trainable ``exp(log_gamma)`` scale and ``beta`` shift.
==========  ==================================================================================

The state that is not a parameter (ActNorm's ``initialized`` flag, BatchNorm's running
statistics) lives in ``buffers`` and is changed in place (so views of the buffers held by a
container stay valid) through ``commit_on_success``: only when the whole public call succeeds,
so a call that raises, in this layer or in a later layer of a ``Chain``, leaves the layer as it
was.
"""

import math
import numbers

import numpy as np

from .._validation import check_choice, check_dim
from ..io.spec import constructor_arguments, declaration
from .base import Bijector, commit_on_success
from .elementwise import affine_forward, affine_inverse

__all__ = ["ActNorm", "BatchNorm"]

#: Glow's guard in ``1 / (std + 1e-6)``: keeps the initial scale finite for a constant column.
_ACTNORM_INIT_GUARD = 1e-6
#: Pyro's ``BatchNorm.constrained_gamma = relu(gamma) + 1e-6``
_PYRO_GAMMA_FLOOR = 1e-6
_GAMMA_KINDS = ("exp", "pyro")


def _all_finite(*arrays):
    return all(np.isfinite(a).all() for a in arrays)


def _check_fraction(value, where, name):
    """``value`` as a float in ``(0, 1]`` or a ``ValueError`` naming ``where``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise ValueError(f"{where}: {name} must be a real number in (0, 1], got {value!r}")
    value = float(value)
    if not (0.0 < value <= 1.0):
        raise ValueError(f"{where}: {name} must lie in (0, 1], got {value}")
    return value


def _check_positive(value, where, name):
    """``value`` as a positive finite float or a ``ValueError`` naming ``where``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise ValueError(f"{where}: {name} must be a positive finite number, got {value!r}")
    value = float(value)
    if not (math.isfinite(value) and value > 0.0):
        raise ValueError(f"{where}: {name} must be a positive finite number, got {value}")
    return value


# ------------------------------------------------------------------------------- ActNorm
class ActNorm(Bijector):
    r"""Activation normalization ``x = z * exp(log_scale) + shift`` with data-dependent
    initialisation (Glow).

    Parameters
    ----------
    dim : int
        Event size; ``params["shift"]`` and ``params["log_scale"]`` have shape ``(dim,)`` and
        start at zero.
    initialized : bool, default False
        Whether the parameters are already set. With ``False`` the first call on a non-empty
        batch overwrites them from that batch (see Notes); with ``True`` the current values are
        used as they are (for a layer whose parameters were loaded, or in tests that set them).

    Attributes
    ----------
    buffers : dict
        ``buffers["initialized"]``, a 0-d bool array, ``True`` once the parameters are set.
        Set it with ``layer.buffers["initialized"][...] = False`` to initialise again from the
        next batch.

    Raises
    ------
    ValueError
        For a bad ``dim`` or an ``initialized`` that is not a bool; from a first call whose
        batch statistics overflow float64 (the layer then stays uninitialised).

    See Also
    --------
    Affine : the same map without the initialisation.
    BatchNorm : normalization by the statistics of every batch.

    Notes
    -----
    With ``a = log_scale`` and ``b = shift``::

        forward   x = z exp(a) + b,          log_det =  sum_i a_i      (the same for every row)
        inverse   z = (x - b) exp(-a),       log_det = -sum_i a_i
        forward pullback   z_bar = x_bar exp(a),   b_bar = sum_n x_bar,
                           a_bar = sum_n x_bar z exp(a) + sum_n log_det_bar
        inverse pullback   x_bar = z_bar exp(-a),  b_bar = -sum_n x_bar,
                           a_bar = -sum_n z_bar z - sum_n log_det_bar

    Every real ``(a, b)`` is a valid bijection.

    *Initialisation* (Glow, section 3.1). On the first call with a non-empty batch, in either
    direction and in training or eval mode, the parameters are set from that batch so that
    *that call's output* has zero mean and unit variance per dimension (up to the guard
    ``1e-6``), using the mean ``mu`` and the biased standard deviation ``sigma`` of the batch,
    computed in float64 whatever the input dtype::

        first call inverse(x):   b = mu(x),                  a =  log(sigma(x) + 1e-6)
        first call forward(z):   b = -mu(z) / (sigma(z) + 1e-6),   a = -log(sigma(z) + 1e-6)

    so that ``z = (x - mu) / (sigma + 1e-6)``, respectively ``x = (z - mu) / (sigma + 1e-6)``.
    The density direction (``inverse``, which sees data) is the usual one; the forward case
    serves a layer used in the sampling direction, e.g. inside :class:`Inverse`. Then
    ``buffers["initialized"]`` becomes ``True`` and later calls never change the parameters.
    The initialisation is not differentiated: the pullback of the first call treats the
    parameters it set as constants, as in Glow. An empty batch never initialises, and a pass
    whose result is not finite commits nothing. A batch of one point, or a constant column,
    has ``sigma = 0`` and gives ``a = +-log(1e-6)``: initialise from a representative batch.

    References
    ----------
    Kingma, Dhariwal, "Glow: Generative Flow with Invertible 1x1 Convolutions", 2018,
    arXiv:1807.03039, section 3.1.

    Examples
    --------
    >>> import numpy as np
    >>> from refflow import ActNorm
    >>> x = np.random.default_rng(0).normal(loc=[3.0, -1.0], scale=[2.0, 0.5], size=(500, 2))
    >>> layer = ActNorm(2)
    >>> z, log_det = layer.inverse(x)        # first call: shift and log_scale set from x
    >>> bool(np.abs(z.mean(axis=0)).max() < 1e-12), np.round(z.std(axis=0), 4)
    (True, array([1., 1.]))
    >>> layer.buffers["initialized"]
    array(True)
    >>> bool(np.allclose(layer.params["shift"], x.mean(axis=0)))
    True
    """

    def __init__(self, dim, *, initialized=False):
        dim = check_dim(dim, "ActNorm")
        if not isinstance(initialized, (bool, np.bool_)):
            raise ValueError(f"ActNorm: initialized must be True or False, got {initialized!r}")
        super().__init__(
            dim,
            params={"shift": np.zeros(dim), "log_scale": np.zeros(dim)},
            buffers={"initialized": np.array(bool(initialized))},
        )

    def __repr__(self):
        return f"ActNorm(dim={self.dim}, initialized={bool(self._buffers['initialized'])})"

    def _config(self):
        return {"dim": self.dim}  # the initialized flag is a buffer, restored from the file

    @classmethod
    def _declare(cls, config):
        dim = check_dim(constructor_arguments(cls, config)["dim"], "ActNorm")
        return declaration({"shift": (dim,), "log_scale": (dim,)},
                           {"initialized": ("|b1", ())})

    def _data_init(self, direction, v):
        """The float64 parameters that normalise the batch ``v`` (see Notes)."""
        v64 = v.astype(np.float64)
        # Overflow is reported below with a clear message instead of a RuntimeWarning.
        with np.errstate(over="ignore", invalid="ignore"):
            mean = v64.mean(axis=0)
            spread = v64.std(axis=0) + _ACTNORM_INIT_GUARD
            if direction == "inverse":
                init = {"shift": mean, "log_scale": np.log(spread)}
            else:
                init = {"shift": -mean / spread, "log_scale": -np.log(spread)}
        if not _all_finite(*init.values()):
            raise self._domain_error(
                direction,
                "data-dependent initialisation failed: the batch mean or standard deviation "
                "overflows float64; rescale the data (the layer stays uninitialised)",
            )
        return init

    def _batch_coupling(self):
        if not self._buffers["initialized"]:
            return ("is not initialised yet (its first call initialises it from the whole "
                    "batch)")
        return None

    def _parameters(self, direction, v):
        """The pass's parameters in ``v``'s dtype: the layer's, or on the first call those
        that normalise ``v`` (committed when the public call succeeds)."""
        if self._buffers["initialized"] or v.shape[0] == 0:
            return self._p(v.dtype)
        init = self._data_init(direction, v)
        commit_on_success(lambda: self._commit_init(init))
        return {k: a.astype(v.dtype) for k, a in init.items()}

    def _commit_init(self, init):
        self._params.update(init)
        self._buffers["initialized"][...] = True

    def _forward_pass(self, z, context, vjp):
        p = self._parameters("forward", z)
        return affine_forward(z, p["shift"], p["log_scale"], vjp)

    def _inverse_pass(self, x, context, vjp):
        p = self._parameters("inverse", x)
        return affine_inverse(x, p["shift"], p["log_scale"], vjp)


# ----------------------------------------------------------------------------- BatchNorm
class BatchNorm(Bijector):
    r"""Batch normalization as a bijector (RealNVP, MAF): in the density direction
    ``z = (x - m) / sqrt(v + eps) * exp(log_gamma) + beta``.

    Parameters
    ----------
    dim : int
        Event size; ``params["log_gamma"]`` and ``params["beta"]`` have shape ``(dim,)`` and
        start at zero.
    momentum : float, default 0.1
        In ``(0, 1]``: weight of the current batch in the running averages.
    eps : float, default 1e-5
        Positive; added to the variance.
    gamma : {"exp", "pyro"}, default "exp"
        How the trainable scale ``g`` is stored: ``"exp"``, ``g = exp(log_gamma)`` with
        ``params["log_gamma"]`` (MAF); ``"pyro"``, ``g = relu(gamma) + 1e-6`` with
        ``params["gamma"]`` (starting at ones), Pyro's ``BatchNorm.constrained_gamma``.

    Attributes
    ----------
    buffers : dict
        ``"running_mean"`` (zeros at construction) and ``"running_var"`` (ones), float64
        arrays of shape ``(dim,)``, updated in place by training-mode ``inverse`` passes. They
        are not parameters: ``params`` has only ``log_gamma`` (or ``gamma``) and ``beta``.

    Raises
    ------
    ValueError
        For a bad ``dim``, ``momentum``, ``eps`` or ``gamma``; from ``forward`` /
        ``forward_vjp`` in training mode.

    See Also
    --------
    ActNorm : a per-dimension affine map initialised once from data.

    Notes
    -----
    With ``g = exp(log_gamma)``, ``r = (v + eps)^(-1/2)`` and ``xhat = (x - m) r``::

        inverse   z = xhat g + beta,
                  log_det = sum_j [log_gamma_j - 0.5 log(v_j + eps)]     (the same for every row)
        forward   x = (z - beta) exp(-log_gamma) sqrt(v + eps) + m,
                  log_det = -sum_j [log_gamma_j - 0.5 log(v_j + eps)]

    *Training mode* (``layer.training``, the default): ``m`` and ``v`` are the mean and the
    **biased** variance ``mean_n (x - m)^2`` of the current batch of ``N`` rows, so the rows are
    coupled and the log-det is that of the map with ``m, v`` held fixed (as in RealNVP and MAF).
    After a pass with a finite result the running statistics are updated in place::

        running_mean = (1 - momentum) running_mean + momentum m
        running_var  = (1 - momentum) running_var  + momentum v      (biased v)

    A batch of one row is allowed (``v = 0``, so ``z = beta``); an empty batch gives empty
    outputs and updates nothing. ``forward`` raises in training mode: the batch statistics
    belong to the data side, call :meth:`eval` to sample (as nflows does).

    *Eval mode* (after :meth:`eval`): ``m`` and ``v`` are the running statistics, constants;
    the map is then an ordinary elementwise affine bijection in both directions, valid for
    every real ``log_gamma``, ``beta`` and every running variance ``> -eps``.

    Pullbacks, with ``S = sum_n log_det_bar_n`` and ``xhat_bar = z_bar g``::

        inverse, both modes   beta_bar = sum_n z_bar,
                              log_gamma_bar = sum_n z_bar xhat g + S
        inverse, eval mode    x_bar = xhat_bar r
        inverse, training     x_bar = r (xhat_bar - mean_n xhat_bar
                                         - xhat (mean_n(xhat_bar xhat) + S / N))
        forward (eval only)   z_bar = x_bar exp(-log_gamma) sqrt(v + eps),
                              beta_bar = -sum_n z_bar,
                              log_gamma_bar = -sum_n x_bar (x - m) - S

    With ``gamma="pyro"`` every formula holds with ``log_gamma = log(relu(gamma) + 1e-6)``,
    and ``gamma_bar = log_gamma_bar / g`` where ``gamma > 0``, 0 elsewhere (the derivative
    of ``relu``, 0 at 0 as torch takes it).

    The training-mode ``x_bar`` differentiates through the batch statistics. From
    ``dm_j/dx_nj = 1/N``, ``dv_j/dx_nj = 2 (x_nj - m_j) / N`` and ``dr/dv = -r^3 / 2``::

        d xhat_kj / d x_nj = r_j (delta_kn - 1/N) - r_j xhat_kj xhat_nj / N

    which gives the usual batch-norm backward ``r (xhat_bar - mean xhat_bar - xhat
    mean(xhat_bar xhat))``; the log-det ``-0.5 S sum_j log(v_j + eps)`` adds
    ``-0.5 S r^2 dv/dx = -S r xhat / N``. It equals the brief's form
    ``r/N (N xhat_bar - sum_n xhat_bar - xhat sum_n(xhat_bar xhat)) - S xhat r / N``.
    The running statistics are constants of the map, never differentiated.

    *Difference from nflows.* nflows' ``BatchNorm`` uses ``torch.var`` (unbiased, ``/(N-1)``)
    both to normalise and in the running average, and ``softplus(w) + eps`` for the scale;
    here the variance is biased (``/N``, as in the log-det of RealNVP and MAF and in
    ``torch.nn.BatchNorm1d``'s normalisation) and the scale is ``exp(log_gamma)`` (MAF).
    nflows' ``forward`` is the density direction, our ``inverse``.

    *Pyro's* ``BatchNorm`` in eval mode is this layer in eval mode with ``gamma="pyro"``
    (its ``_call``, base to data, is our ``forward``); in training mode Pyro normalises with
    the unbiased ``torch.var``.

    References
    ----------
    Dinh, Sohl-Dickstein, Bengio, "Density estimation using Real NVP", 2017, arXiv:1605.08803,
    section 3.7.

    Papamakarios, Pavlakou, Murray, "Masked Autoregressive Flow for Density Estimation", 2017,
    arXiv:1705.07057, appendix B (batch normalization as a bijection, ``exp(gamma)`` scale).

    Ioffe, Szegedy, "Batch Normalization: Accelerating Deep Network Training by Reducing
    Internal Covariate Shift", 2015, arXiv:1502.03167.

    Examples
    --------
    >>> import numpy as np
    >>> from refflow import BatchNorm
    >>> x = np.random.default_rng(0).normal(loc=[0.0, 10.0], scale=[1.0, 5.0], size=(256, 2))
    >>> layer = BatchNorm(2)
    >>> z, log_det = layer.inverse(x)           # training mode: statistics of this batch
    >>> np.round(z.std(axis=0), 4)
    array([1., 1.])
    >>> bool(np.allclose(layer.buffers["running_mean"], 0.1 * x.mean(axis=0)))
    True
    >>> x_new, _ = layer.eval().forward(np.zeros((1, 2)))   # sampling needs eval mode
    >>> bool(np.allclose(x_new, layer.buffers["running_mean"]))
    True
    """

    def __init__(self, dim, *, momentum=0.1, eps=1e-5, gamma="exp"):
        dim = check_dim(dim, "BatchNorm")
        self.momentum = _check_fraction(momentum, "BatchNorm", "momentum")
        self.eps = _check_positive(eps, "BatchNorm", "eps")
        self.gamma = check_choice(gamma, _GAMMA_KINDS, "BatchNorm", "gamma")
        scale = {"log_gamma": np.zeros(dim)} if self.gamma == "exp" else {"gamma": np.ones(dim)}
        super().__init__(
            dim,
            params={**scale, "beta": np.zeros(dim)},
            buffers={"running_mean": np.zeros(dim), "running_var": np.ones(dim)},
        )

    def __repr__(self):
        extra = "" if self.gamma == "exp" else f", gamma={self.gamma!r}"
        return f"BatchNorm(dim={self.dim}, momentum={self.momentum}, eps={self.eps}{extra})"

    def _config(self):
        config = {"dim": self.dim, "momentum": self.momentum, "eps": self.eps}
        if self.gamma != "exp":  # the default: configurations as before the option existed
            config["gamma"] = self.gamma
        return config

    @classmethod
    def _declare(cls, config):
        args = constructor_arguments(cls, config)
        dim = check_dim(args["dim"], "BatchNorm")
        kind = check_choice(args["gamma"], _GAMMA_KINDS, "BatchNorm", "gamma")
        key = "log_gamma" if kind == "exp" else "gamma"
        return declaration({key: (dim,), "beta": (dim,)},
                           {"running_mean": ("<f8", (dim,)), "running_var": ("<f8", (dim,))})

    def _scale(self, p):
        """``(g, log g, d log g / d raw)`` of the stored scale parameter (class Notes)."""
        if self.gamma == "exp":
            log_gamma = p["log_gamma"]
            return np.exp(log_gamma), log_gamma, None
        raw = p["gamma"]
        g = np.maximum(raw, 0) + raw.dtype.type(_PYRO_GAMMA_FLOOR)
        return g, np.log(g), np.where(raw > 0, 1 / g, 0).astype(raw.dtype)

    def _scale_grads(self, log_gamma_bar, dlog):
        if dlog is None:
            return {"log_gamma": log_gamma_bar}
        return {"gamma": log_gamma_bar * dlog}

    def _running(self, dtype):
        """Copies of the running statistics in ``dtype`` (constants for the pullback)."""
        return (self._buffers["running_mean"].astype(dtype),
                self._buffers["running_var"].astype(dtype))

    def _update_running(self, mean, var):
        keep = 1.0 - self.momentum
        # In place, so containers holding these arrays see the update.
        rm, rv = self._buffers["running_mean"], self._buffers["running_var"]
        rm[...] = keep * rm + self.momentum * mean.astype(np.float64)
        rv[...] = keep * rv + self.momentum * var.astype(np.float64)

    def _batch_coupling(self):
        if self.training:
            return ("is in training mode (it normalises with the batch's statistics); call "
                    "flow.eval() first")
        return None

    def _inverse_pass(self, x, context, vjp):
        dtype = x.dtype
        n = x.shape[0]
        p = self._p(dtype)
        gamma, log_gamma, dlog = self._scale(p)
        # An empty batch has no statistics; its outputs are empty whatever m and v are.
        use_batch = self.training and n > 0
        if use_batch:
            m = x.mean(axis=0)
            xc = x - m
            v = (xc * xc).mean(axis=0)
        else:
            m, v = self._running(dtype)
            xc = x - m
        var_eps = v + dtype.type(self.eps)
        std = np.sqrt(var_eps)
        xhat = xc / std
        z = xhat * gamma + p["beta"]
        log_det = np.full(n, (log_gamma - 0.5 * np.log(var_eps)).sum(), dtype=dtype)
        if use_batch:
            commit_on_success(lambda: self._update_running(m, v))
        if not vjp:
            return z, log_det, None

        def pullback(z_bar, log_det_bar):
            s = log_det_bar.sum()
            xhat_bar = z_bar * gamma
            grads = self._scale_grads((xhat_bar * xhat).sum(axis=0) + s, dlog)
            grads["beta"] = z_bar.sum(axis=0)
            if use_batch:
                inner = (xhat_bar * xhat).mean(axis=0) + s / n
                x_bar = (xhat_bar - xhat_bar.mean(axis=0) - xhat * inner) / std
            else:
                x_bar = xhat_bar / std
            return x_bar, grads, None

        return z, log_det, pullback

    def _forward_pass(self, z, context, vjp):
        if self.training:
            raise self._domain_error(
                "forward",
                "the sampling direction is available only in eval mode (in training mode the "
                "statistics come from the data batch); call .eval() first",
            )
        dtype = z.dtype
        p = self._p(dtype)
        m, v = self._running(dtype)
        var_eps = v + dtype.type(self.eps)
        std = np.sqrt(var_eps)
        gamma, log_gamma, dlog = self._scale(p)
        inv_gamma = np.exp(-log_gamma) if dlog is None else 1 / gamma
        u = (z - p["beta"]) * inv_gamma
        x = u * std + m
        log_det = np.full(z.shape[0], -(log_gamma - 0.5 * np.log(var_eps)).sum(), dtype=dtype)
        if not vjp:
            return x, log_det, None

        def pullback(x_bar, log_det_bar):
            z_bar = x_bar * (inv_gamma * std)
            grads = self._scale_grads(-(x_bar * u).sum(axis=0) * std - log_det_bar.sum(), dlog)
            grads["beta"] = -z_bar.sum(axis=0)
            return z_bar, grads, None

        return x, log_det, pullback
