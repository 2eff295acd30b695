"""Optimizers that update a parameter dict in place, gradient clipping and a cosine schedule.

Every optimizer works on a mapping of float64 arrays (``flow.params``) and writes the new values
into those very arrays. A ``step`` is all or nothing: it checks the keys, shapes and finiteness
of every gradient, computes every new parameter and state value, checks that they are finite,
and only then writes them; a ``ValueError`` leaves parameters and optimizer state as they were.

==================  ===============================================================
``Adam``            Adam with decoupled weight decay (AdamW), as ``torch.optim.AdamW``
``SGD``             SGD with (Nesterov) momentum and L2 weight decay, as ``torch.optim.SGD``
``clip_grad_norm``  rescale a gradient dict to a maximal global L2 norm
``CosineAnnealing``  ``lr_t = eta_min + (lr_0 - eta_min)(1 + cos(pi t / t_max)) / 2``
==================  ===============================================================

Examples
--------
Minimise ``|p - 3|^2``:

>>> import numpy as np
>>> from refflow.optim import Adam
>>> params = {"p": np.zeros(2)}
>>> opt = Adam(params, lr=0.1)
>>> for _ in range(300):
...     opt.step({"p": 2.0 * (params["p"] - 3.0)})
>>> np.allclose(params["p"], 3.0, atol=1e-3)
True
"""

import math
from collections.abc import Mapping

import numpy as np

from .._validation import (as_float_array, check_bool, check_int, check_positive, check_real,
                           check_same_keys)
from ..kernels import use_fast_paths
from ..kernels.fused import adam_update, sgd_update

__all__ = ["Adam", "SGD", "clip_grad_norm", "CosineAnnealing", "ReduceOnPlateau"]


def _all_finite(*arrays):
    return all(np.isfinite(a).all() for a in arrays)


class _Optimizer:
    """Shared parts: parameter checks, gradient checks, ``lr``, all-or-nothing commits.

    Subclasses list their per-parameter state arrays in ``_state_names`` (attributes holding
    dicts keyed like ``params``) and implement ``_update(key, p, g, t) -> (p_new, states)``.
    """

    _state_names = ()

    def __init__(self, params, lr):
        where = type(self).__name__
        if not isinstance(params, Mapping):
            raise TypeError(f"{where}: params must be a mapping of str to float64 ndarray "
                            f"(e.g. flow.params), got {type(params).__name__}")
        for key, value in params.items():
            if not isinstance(value, np.ndarray) or value.dtype != np.float64:
                got = (f"dtype {value.dtype}" if isinstance(value, np.ndarray)
                       else type(value).__name__)
                raise TypeError(f"{where}: parameter {key!r} must be a float64 ndarray (it is "
                                f"updated in place), got {got}")
            if not value.flags.writeable:
                raise ValueError(f"{where}: parameter {key!r} is read-only; it is updated in place")
        self.params = params
        self._lr = check_positive(lr, where, "lr")
        self.t = 0

    @property
    def lr(self):
        """Learning rate; a schedule may set it to any finite value ``>= 0``."""
        return self._lr

    @lr.setter
    def lr(self, value):
        self._lr = check_real(value, type(self).__name__, "lr", low=0.0)

    def _check_grads(self, grads, where):
        if not isinstance(grads, Mapping):
            raise TypeError(f"{where}: grads must be a mapping with the keys of params, "
                            f"got {type(grads).__name__}")
        check_same_keys(grads, self.params, where, "gradient keys")
        checked = {}
        for key in self.params:
            g = as_float_array(grads[key], where, f"gradient {key!r}")
            # No copy when already float64 and C-contiguous: step reads every gradient before it
            # writes anything (parameters, states), so a gradient may even alias a parameter.
            if g.dtype != np.float64 or not g.flags.c_contiguous:
                g = g.astype(np.float64, order="C")
            if g.shape != self.params[key].shape:
                raise ValueError(f"{where}: gradient {key!r} has shape {g.shape}, expected "
                                 f"{self.params[key].shape}")
            if not np.isfinite(g).all():
                raise ValueError(f"{where}: gradient {key!r} is not finite; nothing was updated")
            checked[key] = g
        return checked

    def step(self, grads):
        """Apply one update from ``grads`` (same keys and shapes as ``params``), in place.

        Raises
        ------
        ValueError
            Keys, shapes or finiteness of ``grads`` wrong, or an update that overflows; nothing
            is changed then.
        """
        where = f"{type(self).__name__}.step"
        checked = self._check_grads(grads, where)
        t = self.t + 1
        # The fused one-pass kernels of refflow.kernels.fused (bitwise the reference _update
        # arithmetic) when the fast paths are on (refflow.kernels.use_fast_paths).
        if use_fast_paths("optim"):
            self._step_fused(checked, t, where)
        else:
            self._step_reference(checked, t, where)
        self.t = t

    def _step_reference(self, checked, t, where):
        """The reference step: ``_update`` per key into new arrays, checked, then written."""
        new = {}
        with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
            for key, g in checked.items():
                p_new, states = self._update(key, self.params[key], g, t)
                if not _all_finite(p_new, *states):
                    raise ValueError(f"{where}: the update of {key!r} overflows (lr {self.lr}); "
                                     f"nothing was updated")
                new[key] = (p_new, states)
        for key, (p_new, states) in new.items():
            self.params[key][...] = p_new
            for name, value in zip(self._state_names, states):
                getattr(self, name)[key][...] = value

    def _step_fused(self, checked, t, where):
        """``_step_reference`` through one fused kernel per array (no temporaries).

        Each kernel writes the new parameter and states into scratch buffers owned by the
        optimizer and reports whether all are finite; only when every key passed are they
        copied into the parameter and state arrays (which stay the same objects).
        Non-contiguous parameters take the reference ``_update``.
        """
        scratch = self.__dict__.setdefault("_scratch", {})
        done = []
        with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
            for key, g in checked.items():
                p = self.params[key]
                states = [getattr(self, name)[key] for name in self._state_names]
                if p.flags.c_contiguous and all(s.flags.c_contiguous for s in states):
                    bufs = scratch.get(key)
                    if bufs is None or bufs[0].shape != p.shape:
                        bufs = scratch[key] = [np.empty(p.shape) for _ in range(1 + len(states))]
                    ok = self._fused(p.reshape(-1), g.reshape(-1), [s.reshape(-1) for s in states],
                                     [b.reshape(-1) for b in bufs], t)
                    p_new, new_states = bufs[0], bufs[1:]
                else:
                    p_new, new_states = self._update(key, p, g, t)
                    ok = _all_finite(p_new, *new_states)
                if not ok:
                    raise ValueError(f"{where}: the update of {key!r} overflows (lr {self.lr}); "
                                     f"nothing was updated")
                done.append((p, p_new, states, new_states))
        for p, p_new, states, new_states in done:
            np.copyto(p, p_new)
            for target, value in zip(states, new_states):
                np.copyto(target, value)

    # ----------------------------------------------------------------- state dicts
    def _hyper_state(self):
        return {"t": np.array(self.t), "lr": np.array(self.lr)}

    def state_dict(self):
        """The optimizer's state as a flat dict of arrays (copies), for ``np.savez``.

        Keys: ``"t"`` (steps taken), ``"lr"`` (current learning rate) and
        ``"<state>.<param key>"`` for every per-parameter state array.
        """
        out = self._hyper_state()
        for name in self._state_names:
            for key, value in getattr(self, name).items():
                out[f"{name}.{key}"] = value.copy()
        return out

    def load_state_dict(self, state):
        """Restore what :meth:`state_dict` returned (all or nothing; parameters untouched)."""
        where = f"{type(self).__name__}.load_state_dict"
        if not isinstance(state, Mapping):
            raise TypeError(f"{where}: expected a mapping of arrays, got {type(state).__name__}")
        expected = self.state_dict()
        check_same_keys(state, expected, where)
        arrays = {}
        for key, ref in expected.items():
            value = as_float_array(state[key], where, key)
            if value.shape != ref.shape or not np.isfinite(value).all():
                raise ValueError(f"{where}: {key!r} must be a finite array of shape {ref.shape}, "
                                 f"got shape {value.shape}")
            arrays[key] = value.astype(np.float64)
        t = float(arrays["t"])
        if t < 0 or t != int(t):
            raise ValueError(f"{where}: 't' must be a non-negative integer, got {t}")
        self._check_loaded(arrays, where)
        lr = check_real(float(arrays["lr"]), where, "lr", low=0.0)
        for name in self._state_names:
            for key, target in getattr(self, name).items():
                target[...] = arrays[f"{name}.{key}"]
        self.t, self._lr = int(t), lr

    def _check_loaded(self, arrays, where):
        pass


# ------------------------------------------------------------------------------------ Adam
class Adam(_Optimizer):
    """Adam (Kingma & Ba 2015) with decoupled weight decay (AdamW), updated in place.

    Parameters
    ----------
    params : mapping of str to float64 ndarray
        E.g. ``flow.params``; the arrays are written in place, so the layers that own them see
        the update at their next call.
    lr : float, default 1e-3
        Positive. A schedule may later set ``opt.lr`` to any value ``>= 0``.
    betas : (float, float), default (0.9, 0.999)
        Each in ``[0, 1)``.
    eps : float, default 1e-8
    weight_decay : float, default 0.0
        Decoupled weight decay ``lambda >= 0`` (AdamW): it shrinks the parameters directly and
        is *not* added to the gradient, so it does not pass through the moment estimates.

    Attributes
    ----------
    m, v : dict of ndarray
        First and second moment estimates, keyed like ``params``.
    t : int
        Number of steps taken.

    Raises
    ------
    TypeError
        ``params`` is not a mapping of float64 arrays, or a setting of the wrong type.
    ValueError
        A setting out of range.

    See Also
    --------
    SGD, clip_grad_norm, CosineAnnealing

    Notes
    -----
    With gradient ``g`` at step ``t`` (counting from 1)::

        m = b1 m + (1 - b1) g,   v = b2 v + (1 - b2) g^2
        p <- p (1 - lr lambda) - (lr / (1 - b1^t)) m / (sqrt(v) / sqrt(1 - b2^t) + eps)

    that is ``p -= lr * (adam_step + lambda * p)`` with the decay taken at the old ``p``
    (Loshchilov & Hutter 2019, Algorithm 2, with the schedule multiplier folded into ``lr``),
    evaluated in the order ``torch.optim.AdamW`` uses; ``lambda = 0`` is Adam.

    ``step`` checks every gradient (keys, shapes, finiteness) and computes every new value before
    it changes anything, so a bad gradient or an overflowing update raises ``ValueError`` and
    leaves parameters and optimizer state as they were.

    References
    ----------
    Kingma, Ba, "Adam: A Method for Stochastic Optimization", 2015, arXiv:1412.6980.
    Loshchilov, Hutter, "Decoupled Weight Decay Regularization", 2019, arXiv:1711.05101.

    Examples
    --------
    Weight decay alone (zero gradient) shrinks by ``1 - lr * lambda`` per step:

    >>> import numpy as np
    >>> from refflow.optim import Adam
    >>> params = {"w": np.array([2.0])}
    >>> opt = Adam(params, lr=0.1, weight_decay=0.5)
    >>> opt.step({"w": np.zeros(1)})
    >>> params["w"]
    array([1.9])
    """

    _state_names = ("m", "v")

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(params, lr)
        try:
            b1, b2 = betas
        except (TypeError, ValueError):
            raise ValueError(f"Adam: betas must be a pair, got {betas!r}") from None
        self.betas = tuple(check_real(b, "Adam", f"betas[{i}]", low=0.0, high=1.0,
                                      high_open=True) for i, b in enumerate((b1, b2)))
        self.eps = check_positive(eps, "Adam", "eps")
        self.weight_decay = check_real(weight_decay, "Adam", "weight_decay", low=0.0)
        self.m = {k: np.zeros(np.shape(v)) for k, v in params.items()}
        self.v = {k: np.zeros(np.shape(v)) for k, v in params.items()}

    def __repr__(self):
        return (f"Adam(lr={self.lr}, betas={self.betas}, eps={self.eps}, "
                f"weight_decay={self.weight_decay}, t={self.t})")

    def _fused(self, p, g, states, outs, t):
        # adam_update: the arithmetic of _update below, in its order, one pass per array.
        b1, b2 = self.betas
        return adam_update(p, g, states[0], states[1], outs[0], outs[1], outs[2], b1, 1.0 - b1,
                           b2, 1.0 - b2, self.lr / (1.0 - b1 ** t),
                           math.sqrt(1.0 - b2 ** t), self.eps,
                           1.0 - self.lr * self.weight_decay, bool(self.weight_decay))

    def _update(self, key, p, g, t):
        b1, b2 = self.betas
        m = b1 * self.m[key] + (1.0 - b1) * g
        v = b2 * self.v[key] + (1.0 - b2) * (g * g)
        step_size = self.lr / (1.0 - b1 ** t)
        denom = np.sqrt(v) / math.sqrt(1.0 - b2 ** t) + self.eps
        if self.weight_decay:
            p = p * (1.0 - self.lr * self.weight_decay)    # decoupled: at the old p
        return p - step_size * (m / denom), (m, v)

    def _check_loaded(self, arrays, where):
        if any((arrays[k] < 0).any() for k in arrays if k.startswith("v.")):
            raise ValueError(f"{where}: second moments 'v.*' must be non-negative")


# ------------------------------------------------------------------------------------- SGD
class SGD(_Optimizer):
    """Stochastic gradient descent with optional (Nesterov) momentum and L2 weight decay.

    Parameters
    ----------
    params : mapping of str to float64 ndarray
        Written in place.
    lr : float
        Positive.
    momentum : float, default 0.0
        In ``[0, 1)``.
    nesterov : bool, default False
        Nesterov momentum (needs ``momentum > 0``).
    weight_decay : float, default 0.0
        L2 penalty ``lambda >= 0`` added to the gradient (coupled, as ``torch.optim.SGD``).

    Attributes
    ----------
    momentum_buffer : dict of ndarray
        The velocity ``b``, keyed like ``params`` (zeros before the first step).

    Notes
    -----
    The update of ``torch.optim.SGD`` with ``dampening=0``::

        d = g + lambda p
        b = mu b + d                  (b = d at the first step: b starts at 0)
        d = d + mu b   if nesterov,   else  d = b        (when mu > 0)
        p <- p - lr d

    Examples
    --------
    >>> import numpy as np
    >>> from refflow.optim import SGD
    >>> params = {"p": np.array([1.0])}
    >>> opt = SGD(params, lr=0.1, momentum=0.5)
    >>> opt.step({"p": np.array([1.0])}); opt.step({"p": np.array([1.0])})
    >>> params["p"]       # 1 - 0.1 * 1 - 0.1 * (0.5 + 1)
    array([0.75])
    """

    _state_names = ("momentum_buffer",)

    def __init__(self, params, lr, momentum=0.0, nesterov=False, weight_decay=0.0):
        super().__init__(params, lr)
        self.momentum = check_real(momentum, "SGD", "momentum", low=0.0, high=1.0,
                                   high_open=True)
        check_bool(nesterov, "SGD", "nesterov")
        if nesterov and self.momentum == 0.0:
            raise ValueError("SGD: Nesterov momentum needs momentum > 0")
        self.nesterov = bool(nesterov)
        self.weight_decay = check_real(weight_decay, "SGD", "weight_decay", low=0.0)
        self.momentum_buffer = {k: np.zeros(np.shape(v)) for k, v in params.items()}

    def __repr__(self):
        return (f"SGD(lr={self.lr}, momentum={self.momentum}, nesterov={self.nesterov}, "
                f"weight_decay={self.weight_decay}, t={self.t})")

    def _fused(self, p, g, states, outs, t):
        # sgd_update: the arithmetic of _update below, in its order, one pass per array.
        return sgd_update(p, g, states[0], outs[0], outs[1], self.lr, self.weight_decay,
                          bool(self.weight_decay), self.momentum, self.nesterov)

    def _update(self, key, p, g, t):
        d = g + self.weight_decay * p if self.weight_decay else g
        b = self.momentum_buffer[key]
        if self.momentum:
            b = self.momentum * b + d
            d = d + self.momentum * b if self.nesterov else b
        return p - self.lr * d, (b,)


# ------------------------------------------------------------------------------- clipping
def clip_grad_norm(grads, max_norm):
    """Rescale a gradient dict so that its global L2 norm is at most ``max_norm``.

    Parameters
    ----------
    grads : mapping of str to array_like
        Finite gradients (any shapes).
    max_norm : float
        Positive.

    Returns
    -------
    clipped : dict of ndarray
        New float64 arrays (the input is never modified): ``g * max_norm / total_norm`` when
        ``total_norm > max_norm``, else copies of ``g``.
    total_norm : float
        ``sqrt(sum_k |g_k|^2)`` over every element of every array, before clipping.

    Raises
    ------
    ValueError
        A non-finite gradient or a ``max_norm`` that is not finite and positive.
    TypeError
        ``grads`` is not a mapping, or ``max_norm`` is not a real number.

    Notes
    -----
    The norm is computed as ``s sqrt(sum (g / s)^2)`` with ``s = max |g|``, so squares neither
    overflow nor underflow. Unlike ``torch.nn.utils.clip_grad_norm_``, which scales by
    ``max_norm / (total_norm + 1e-6)``, the clipped norm here is ``max_norm`` to round-off (as
    ``optax.clip_by_global_norm``).

    Examples
    --------
    >>> import numpy as np
    >>> from refflow.optim import clip_grad_norm
    >>> clipped, norm = clip_grad_norm({"a": np.array([3.0]), "b": np.array([4.0])}, 1.0)
    >>> norm, clipped["a"], clipped["b"]
    (5.0, array([0.6]), array([0.8]))
    """
    max_norm = check_positive(max_norm, "clip_grad_norm", "max_norm")
    if not isinstance(grads, Mapping):
        raise TypeError(f"clip_grad_norm: grads must be a mapping of arrays, got "
                        f"{type(grads).__name__}")
    arrays = {}
    for key, g in grads.items():
        g = as_float_array(g, "clip_grad_norm", f"gradient {key!r}").astype(np.float64)
        if not np.isfinite(g).all():
            raise ValueError(f"clip_grad_norm: gradient {key!r} is not finite")
        arrays[key] = g
    scale = max((float(np.max(np.abs(g))) for g in arrays.values() if g.size), default=0.0)
    if scale == 0.0:
        total = 0.0
    else:
        total = scale * math.sqrt(sum(float(np.sum(np.square(g / scale))) for g in arrays.values()))
    if total > max_norm:
        factor = max_norm / total
        return {k: g * factor for k, g in arrays.items()}, total
    return {k: g.copy() for k, g in arrays.items()}, total


# ------------------------------------------------------------------------------- schedule
class CosineAnnealing:
    """Cosine learning-rate annealing (SGDR without restarts), stepped once per optimizer step.

    Parameters
    ----------
    optimizer : Adam or SGD
        Anything with a positive ``lr`` attribute; its current ``lr`` is ``lr_0``.
    t_max : int
        Number of steps to anneal over (positive); after ``t_max`` steps ``lr`` stays at
        ``eta_min``.
    eta_min : float, default 0.0
        Final learning rate, ``>= 0``.

    Attributes
    ----------
    t : int
        Steps taken (``0 <= t <= t_max``).
    base_lr : float
        ``lr_0``.

    Notes
    -----
    ``step()`` advances ``t <- min(t + 1, t_max)`` and sets::

        optimizer.lr = eta_min + (lr_0 - eta_min) (1 + cos(pi t / t_max)) / 2

    the closed form of ``torch.optim.lr_scheduler.CosineAnnealingLR`` up to ``t_max`` (which
    keeps following the cosine beyond; this schedule clamps). The NSF paper anneals so over all
    training steps.

    References
    ----------
    Loshchilov, Hutter, "SGDR: Stochastic Gradient Descent with Warm Restarts", 2017,
    arXiv:1608.03983, eq. (5).
    Durkan, Bekasov, Murray, Papamakarios, "Neural Spline Flows", 2019, arXiv:1906.04032.

    Examples
    --------
    >>> import numpy as np
    >>> from refflow.optim import Adam, CosineAnnealing
    >>> opt = Adam({"p": np.zeros(1)}, lr=1.0)
    >>> schedule = CosineAnnealing(opt, t_max=4)
    >>> [round(schedule.step(), 6) for _ in range(5)]
    [0.853553, 0.5, 0.146447, 0.0, 0.0]
    """

    def __init__(self, optimizer, t_max, eta_min=0.0):
        if not hasattr(optimizer, "lr"):
            raise TypeError(f"CosineAnnealing: the optimizer has no 'lr' attribute "
                            f"({type(optimizer).__name__})")
        base_lr = check_positive(optimizer.lr, "CosineAnnealing", "the optimizer's lr")
        t_max = check_int(t_max, "CosineAnnealing", "t_max", minimum=1)
        self.optimizer = optimizer
        self.t_max = t_max
        self.eta_min = check_real(eta_min, "CosineAnnealing", "eta_min", low=0.0)
        self.base_lr = base_lr
        self.t = 0

    def __repr__(self):
        return (f"CosineAnnealing(t_max={self.t_max}, eta_min={self.eta_min}, "
                f"base_lr={self.base_lr}, t={self.t})")

    def lr_at(self, t):
        """The learning rate after ``t`` steps (``t`` clamped to ``[0, t_max]``)."""
        t = min(max(int(t), 0), self.t_max)
        return self.eta_min + (self.base_lr - self.eta_min) * \
            (1.0 + math.cos(math.pi * t / self.t_max)) / 2.0

    def step(self):
        """Advance one step, set and return the optimizer's new ``lr``."""
        self.t = min(self.t + 1, self.t_max)
        lr = self.lr_at(self.t)
        self.optimizer.lr = lr
        return lr

    def state_dict(self):
        """``{"t": array(t)}``."""
        return {"t": np.array(self.t)}

    def load_state_dict(self, state):
        """Restore ``t`` and set the optimizer's ``lr`` to match."""
        where = "CosineAnnealing.load_state_dict"
        if not isinstance(state, Mapping) or set(state) != {"t"}:
            raise ValueError(f"{where}: expected a mapping with the single key 't'")
        t = np.asarray(state["t"])
        if t.shape != () or t.dtype.kind not in "iuf" or not np.isfinite(t) \
                or float(t) != int(t) or not 0 <= int(t) <= self.t_max:
            raise ValueError(f"{where}: 't' must be an integer in [0, {self.t_max}], got {t!r}")
        self.t = int(t)
        self.optimizer.lr = self.lr_at(self.t)


class ReduceOnPlateau:
    """Lower the learning rate where the validation NLL stops improving, from the best epoch.

    Passed to :func:`refflow.training.fit` as ``lr_schedule`` (``lr_schedule="plateau"`` is
    ``ReduceOnPlateau()``). It is not stepped: ``fit`` acts on it once per epoch, where early
    stopping would. When ``fit``'s ``patience`` epochs have passed without a strict
    improvement, ``fit`` does not stop: it puts the best epoch's parameters back (and its
    buffers), multiplies the optimizer's ``lr`` by ``factor``, restarts the weight average
    (``average="ema"``) from them, and trains on, counting ``patience`` (this object's)
    epochs without improvement from the drop. After ``drops`` drops the next run of
    ``patience`` epochs without improvement stops training (``stop_reason="patience"``), and
    ``epochs`` still bounds the whole fit. The optimizer's moments are kept.

    Unlike ``torch.optim.lr_scheduler.ReduceLROnPlateau``, which lowers the rate from wherever
    the parameters have drifted, training resumes from the best parameters. Why it helps: with
    a constant step, stochastic gradient iterates settle in a region around a minimiser whose
    size grows with the step (Bottou, Curtis, Nocedal, "Optimization Methods for Large-Scale
    Machine Learning", 2018, arXiv:1606.04838, Sec. 4.2), so the validation NLL stops
    improving while a smaller step, started from the best point, can still go deeper.

    Parameters
    ----------
    factor : float in (0, 1), default 0.1
        The rate is multiplied by it at each drop.
    drops : int, default 1
        How many times the rate is lowered (at least 1).
    patience : int, optional
        Epochs without improvement after a drop before the next drop (or the stop). Default:
        half of ``fit``'s ``patience``, rounded up (at the lowered rate the gains come within
        a few epochs).

    Examples
    --------
    >>> from refflow.optim import ReduceOnPlateau
    >>> ReduceOnPlateau()
    ReduceOnPlateau(factor=0.1, drops=1, patience=None)
    >>> ReduceOnPlateau(factor=0.5, drops=2, patience=3).after_drop(10)
    3
    >>> ReduceOnPlateau().after_drop(5)
    3
    """

    def __init__(self, factor=0.1, drops=1, patience=None):
        where = "ReduceOnPlateau"
        self.factor = check_real(factor, where, "factor", low=0.0, high=1.0, low_open=True,
                                 high_open=True)
        self.drops = check_int(drops, where, "drops", minimum=1)
        self.patience = None if patience is None else check_int(patience, where, "patience",
                                                                minimum=1)

    def __repr__(self):
        return (f"ReduceOnPlateau(factor={self.factor}, drops={self.drops}, "
                f"patience={self.patience})")

    def after_drop(self, patience):
        """The epochs without improvement allowed after a drop, given ``fit``'s ``patience``."""
        return self.patience if self.patience is not None else -(-patience // 2)
