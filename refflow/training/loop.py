"""Fitting a flow by maximum likelihood: ``fit``, its ``History`` and ``TrainingDiverged``.

``fit`` minimises the mean negative log-likelihood ``-mean_n log q(x_n)`` of a ``Flow`` with
mini-batches (a seeded permutation per epoch), an optional validation set evaluated in eval
mode after every epoch, early stopping, optional gradient clipping and a learning-rate
schedule, and optional weight averaging (an exponential moving average of the parameters,
evaluated on the validation set beside the trained ones). It returns a :class:`History`. A
non-finite loss or gradient stops training with :class:`TrainingDiverged` and leaves finite
parameters in place.

How ``rng`` is used (so that a run can be replayed exactly): ``gen = np.random.default_rng(rng)``
(or the Generator given); when the validation set is split off the training data,
``perm = gen.permutation(n)``, ``x_val = x[perm[:n_val]]``, ``x_train = x[perm[n_val:]]`` with
``n_val = ceil(validation_fraction * n)``; then each epoch draws ``order =
gen.permutation(n_train)`` and takes the batches ``order[i:i + batch_size]`` for ``i = 0,
batch_size, ...`` (the last one may be smaller).

Ctrl-C (SIGINT, in the main thread) stops training cleanly after the current step: the steps
already taken stand, the best epoch's parameters are put back (``restore_best``), and ``fit``
returns its history with ``stop_reason == "interrupted"``; a second Ctrl-C interrupts at once.

Data larger than memory: ``x`` (and ``context``, ``validation_data``) may be a
``numpy.memmap`` or a ``dask.array.Array``. Nothing is then copied whole: a first pass checks
that every value is finite, the split keeps the permutation ``perm`` (int32 below 2^31 rows,
the same numbers and the same draws as ``gen.permutation``), and each mini-batch (a window of
mini-batches for dask, one computation per window) is gathered from the source by its rows
``perm[n_val:][order[i:i + batch_size]]``. The batches, and so the fitted parameters and the
history's NLLs, are bit for bit those of the same data fitted as an in-memory array with the
same ``rng``; the memory used is the permutations (4 bytes per row each) and a window of rows.
"""

import math
import signal
import sys
import threading
import time

import numpy as np

from .._rows import RepeatedRows, out_of_core, permutation, rows_of, scan
from .._validation import (as_batch, as_float_array, check_bool, check_context_given, check_int,
                           check_option, check_positive, check_real, check_rng)
from ..distributions import Flow
from ..kernels.threads import blas_threads, largest_weight
from . import optim as _optim  # fit's argument clip_grad_norm shadows the function
from ._common import ProgressLine, check_optimizer, make_schedule

__all__ = ["fit", "History", "TrainingDiverged"]

#: Rows per ``log_prob`` call when computing the validation NLL (at least the batch size).
_EVAL_CHUNK = 1024

#: The built-in progress line is redrawn at most this often within an epoch (seconds).
_PROGRESS_INTERVAL = 0.5


class TrainingDiverged(ValueError):
    """Training met a non-finite loss or gradient (or an overflowing update).

    Attributes
    ----------
    history : History or dict
        The completed epochs (``stop_reason == "diverged"``) for :func:`fit`; the dict history
        of :func:`refflow.variational.fit_reverse_kl` (its ``epoch`` is None) for reverse KL.
    epoch : int
        0-based epoch in which it happened.
    step : int
        0-based global index of the step that failed (``history.n_steps`` steps succeeded);
        for a failed validation pass, the number of steps taken so far.
    """

    def __init__(self, message, history, epoch, step):
        super().__init__(message)
        self.history = history
        self.epoch = epoch
        self.step = step


class History:
    """What ``fit`` recorded, one entry per completed epoch (0-based epochs).

    Attributes
    ----------
    train_nll : list of float
        Mean training NLL of each epoch: the batches' mean NLLs (each before its step),
        weighted by batch size.
    val_nll : list of float
        Mean NLL of the whole validation set after each epoch, in eval mode (empty without
        validation), of the parameters the epoch offers: the trained ones, or with
        ``average="ema"`` the better of the trained and the averaged ones (the value early
        stopping and ``best_epoch`` go by).
    val_nll_trained, val_nll_averaged : list of float
        With ``average="ema"``: the validation NLL of the trained and of the averaged
        parameters after each epoch (``inf`` where the averaged ones could not be scored);
        ``val_nll[e] = min(val_nll_trained[e], val_nll_averaged[e])``. Empty without
        averaging. Not part of :meth:`as_dict`.
    best_averaged : bool
        True when the parameters of ``best_epoch`` (those ``restore_best`` puts back) are the
        averaged ones.
    epoch_time : list of float
        Seconds per epoch, validation included.
    best_epoch : int or None
        Epoch with the lowest validation NLL (training NLL without validation); None before an
        epoch completed.
    stopped_early : bool
        True when ``patience``, the callback or Ctrl-C ended training before ``epochs``.
    stop_reason : str
        ``"completed"``, ``"patience"``, ``"callback"``, ``"interrupted"`` (Ctrl-C) or
        ``"diverged"``.
    wall_time : float
        Seconds spent in ``fit``.
    n_steps : int
        Optimizer steps taken.
    nll_shift : float
        Nats to add to an NLL above to express it in the units of the data the caller gave:
        0 for :func:`fit`; ``sum_j log scale_j`` for ``FlowDensity``, which fits the
        standardised data ``(x - mean) / scale`` (its density in the data's units is
        ``log q(x) = log q_s(s) - sum_j log scale_j``).
    train_log_likelihood, val_log_likelihood : list of float
        ``-(nll + nll_shift)`` per epoch: mean log-likelihoods in nats per sample, in the data's
        units (``val_log_likelihood[best_epoch]`` is the held-out score of the kept model).
    lr_drops : list of int
        With ``lr_schedule="plateau"``: the epochs after which the best parameters were put
        back and the learning rate lowered, increasing (empty without drops).
    validation_index : ndarray of int or None
        The rows of ``x`` that :func:`fit` held out itself (``perm[:n_val]``, in the order
        they were evaluated); None when there was no split (``validation_data`` given, or
        ``validation_fraction=0``). Not part of :meth:`as_dict`: a history read back from a
        file has None.
    """

    def __init__(self):
        self.train_nll = []
        self.val_nll = []
        self.epoch_time = []
        self.best_epoch = None
        self.stopped_early = False
        self.stop_reason = "completed"
        self.wall_time = 0.0
        self.n_steps = 0
        self.nll_shift = 0.0
        self.validation_index = None
        self.val_nll_trained = []
        self.val_nll_averaged = []
        self.lr_drops = []

    @property
    def best_averaged(self):
        """True when the best epoch's parameters are the averaged ones (``average="ema"``)."""
        if self.best_epoch is None or not self.val_nll_averaged:
            return False
        return self.val_nll_averaged[self.best_epoch] < self.val_nll_trained[self.best_epoch]

    @property
    def train_log_likelihood(self):
        """Mean training log-likelihood per epoch, nats per sample, in the data's units."""
        return [-(v + self.nll_shift) for v in self.train_nll]

    @property
    def val_log_likelihood(self):
        """Mean validation log-likelihood per epoch, nats per sample, in the data's units."""
        return [-(v + self.nll_shift) for v in self.val_nll]

    @property
    def n_epochs(self):
        """Number of completed epochs."""
        return len(self.train_nll)

    @classmethod
    def from_dict(cls, d, where="History"):
        """The inverse of :meth:`as_dict`, checking keys and types (``ValueError`` if wrong).

        ``nll_shift`` and ``lr_drops`` may be absent (histories written before they existed):
        they are then 0 and ``[]``.
        """
        history = cls()
        kinds = {"train_nll": "floats", "val_nll": "floats", "epoch_time": "floats",
                 "best_epoch": "epoch", "stopped_early": bool, "stop_reason": str,
                 "wall_time": "float", "n_steps": "count", "nll_shift": "float",
                 "lr_drops": "epochs"}
        if isinstance(d, dict):
            d = {"nll_shift": 0.0, "lr_drops": [], **d}   # older files lack these two
        if not isinstance(d, dict) or set(d) != set(kinds):
            raise ValueError(f"{where}: history_ must have exactly the keys {sorted(kinds)} "
                             f"(nll_shift and lr_drops may be absent)")

        def real(v):
            return type(v) in (int, float) and math.isfinite(v)

        for key, kind in kinds.items():
            v = d[key]
            ok = {"floats": lambda: isinstance(v, list) and all(real(e) for e in v),
                  "epoch": lambda: v is None or (type(v) is int and v >= 0),
                  "float": lambda: real(v),
                  "count": lambda: type(v) is int and v >= 0,
                  # the epochs of the drops: increasing, each one a completed epoch
                  "epochs": lambda: (isinstance(v, list)
                                     and all(type(e) is int for e in v)
                                     and all(0 <= e < len(d["train_nll"]) for e in v)
                                     and all(a < b for a, b in zip(v, v[1:])))
                  }.get(kind, lambda: type(v) is kind)()
            if not ok:
                raise ValueError(f"{where}: history_ entry {key!r} has an invalid value {v!r}")
            setattr(history, key, [float(e) for e in v] if kind == "floats"
                    else list(v) if kind == "epochs" else v)
        return history

    def as_dict(self):
        """The history as plain JSON-able types (lists of float, int, bool, str, None)."""
        return {
            "train_nll": [float(v) for v in self.train_nll],
            "val_nll": [float(v) for v in self.val_nll],
            "epoch_time": [float(v) for v in self.epoch_time],
            "best_epoch": None if self.best_epoch is None else int(self.best_epoch),
            "stopped_early": bool(self.stopped_early),
            "stop_reason": str(self.stop_reason),
            "wall_time": float(self.wall_time),
            "n_steps": int(self.n_steps),
            "nll_shift": float(self.nll_shift),
            "lr_drops": [int(e) for e in self.lr_drops],
        }

    def __repr__(self):
        parts = [f"epochs={self.n_epochs}", f"n_steps={self.n_steps}"]
        if self.train_nll:
            parts.append(f"train_nll={self.train_nll[-1]:.6g} (last)")
        if self.val_nll:
            parts.append(f"val_nll={self.val_nll[-1]:.6g} (last)")
        parts += [f"best_epoch={self.best_epoch}", f"stop_reason={self.stop_reason!r}",
                  f"wall_time={self.wall_time:.3g} s"]
        return f"History({', '.join(parts)})"


# ------------------------------------------------------------------------------ checks
def _data(flow, x, context, x_name, c_name):
    """Validated ``(x2, c2)``: ``x2`` of shape ``(n, dim)``, ``n >= 1``; ``c2`` ``(n, c)``/None."""
    arr = as_float_array(x, "fit", x_name)
    if arr.ndim != 2:
        raise ValueError(f"fit: {x_name} must be a 2-D array of shape (n, {flow.dim}), got "
                         f"{arr.ndim}-D input of shape {arr.shape}")
    x2, _ = as_batch(arr, flow.dim, "fit", x_name)
    if x2.shape[0] == 0:
        raise ValueError(f"fit: {x_name} is empty")
    if not check_context_given(context, flow.context_dim, "fit", "flow", c_name):
        return x2, None
    c2, shared = as_batch(context, flow.context_dim, "fit", c_name)
    if shared:
        c2 = np.repeat(c2, x2.shape[0], axis=0)
    elif c2.shape[0] != x2.shape[0]:
        raise ValueError(f"fit: {c_name} has {c2.shape[0]} rows but {x_name} has {x2.shape[0]}")
    return x2, c2


def _source_data(flow, x, context, x_name, c_name):
    """``(x_rows, c_rows)``: out-of-core data as row sources (:mod:`refflow._rows`), their
    shapes checked without reading them and every value checked finite in one pass."""
    xs = rows_of(x, "fit", x_name, flow.dim)
    if not xs.checked:
        scan(xs, "fit", x_name, with_moments=False)
    if not check_context_given(context, flow.context_dim, "fit", "flow", c_name):
        return xs, None
    if not out_of_core(context) and np.ndim(context) == 1:
        row, _ = as_batch(context, flow.context_dim, "fit", c_name)
        return xs, RepeatedRows(row[0], xs.n)
    cs = rows_of(context if out_of_core(context) else as_float_array(context, "fit", c_name),
                 "fit", c_name, flow.context_dim)
    if cs.n != xs.n:
        raise ValueError(f"fit: {c_name} has {cs.n} rows but {x_name} has {xs.n}")
    if not cs.checked:
        scan(cs, "fit", c_name, with_moments=False)
    return xs, cs


class _Part:
    """Rows ``index`` of a source (all rows in order when ``index`` is None), read in pieces."""

    def __init__(self, source, index=None):
        self.source, self.index = source, index
        self.n = source.n if index is None else index.shape[0]

    def rows(self, start, stop):
        if self.index is None:
            return self.source.read(start, stop)
        return self.source.take(self.index[start:stop])

    def take(self, positions):
        """Rows at ``positions`` (into this part), in that order."""
        return self.source.take(positions if self.index is None else self.index[positions])


def _validation_data(flow, data):
    if flow.context_dim is not None:
        if not (isinstance(data, (tuple, list)) and len(data) == 2):
            raise ValueError("fit: the flow is conditional; validation_data must be a pair "
                             "(x_val, context_val)")
        return _data(flow, data[0], data[1], "validation x", "validation context")
    if isinstance(data, tuple) and len(data) == 2:     # the pair form (x_val, None)
        return _data(flow, data[0], data[1], "validation x", "validation context")
    return _data(flow, data, None, "validation x", "validation context")


def _streamed_pair(data):
    parts = data if isinstance(data, (tuple, list)) and len(data) == 2 else (data,)
    return any(out_of_core(p) for p in parts)


def _streamed_validation(flow, data):
    """The validation set as :class:`_Part` s of row sources (out-of-core training data)."""
    if flow.context_dim is not None:
        if not (isinstance(data, (tuple, list)) and len(data) == 2):
            raise ValueError("fit: the flow is conditional; validation_data must be a pair "
                             "(x_val, context_val)")
        x, c = data
    elif isinstance(data, tuple) and len(data) == 2:
        x, c = data
    else:
        x, c = data, None
    if not out_of_core(x):
        x = as_float_array(x, "fit", "validation x")
    xs, cs = _source_data(flow, x, c, "validation x", "validation context")
    return _Part(xs), None if cs is None else _Part(cs)


def _modes(flow):
    """``[(layer, training), ...]`` over the bijector tree, to put every layer back later."""
    out, stack = [], [flow.bijector]
    while stack:
        layer = stack.pop()
        out.append((layer, layer.training))
        stack.extend(layer._children())
    return out


def _restore_modes(modes):
    for layer, mode in modes:
        layer.training = mode


def _snapshot(flow):
    return ({k: v.copy() for k, v in flow.params.items()},
            {k: np.array(v, copy=True) for k, v in flow.buffers.items()})


def _restore(flow, snapshot):
    params, buffers = snapshot
    flow_params = flow.params
    for key, value in params.items():
        flow_params[key][...] = value     # raw write: these values were finite parameters
    for key, target in flow.buffers.items():
        if isinstance(target, np.ndarray) and not np.array_equal(target, buffers[key]):
            target[...] = buffers[key]


class _Average:
    r"""Exponential moving average of the parameters, bias-corrected, updated after each step.

    After step ``t`` (1-based) with parameters ``theta_t`` and decay ``beta``::

        m_t = beta m_{t-1} + (1 - beta) theta_t,   m_0 = 0
        a_t = m_t / (1 - beta^t)                   (Adam's bias correction)

    kept as ``a_t = a_{t-1} + w_t (theta_t - a_{t-1})`` with ``w_t = (1 - beta) / (1 -
    beta^t)`` (the two agree: ``1 - w_t = beta (1 - beta^{t-1}) / (1 - beta^t)``), so ``a_1 =
    theta_1`` exactly (``w_1 = 1``) and the start's parameters carry no weight. ``a_t`` is the
    average of the steps' parameters with weights ``(1 - beta) beta^{t-s} / (1 - beta^t)``:
    about the last ``1 / (1 - beta)`` steps.
    """

    def __init__(self, params, decay):
        self.decay = decay
        self.log_decay = math.log(decay)
        self.t = 0
        self.params = {k: np.array(v, dtype=np.float64, copy=True) for k, v in params.items()}

    def update(self, params):
        self.t += 1
        # 1 - beta and 1 - beta^t as -expm1: exact for beta near 1, and w_1 = 1 exactly
        w = math.expm1(self.log_decay) / math.expm1(self.t * self.log_decay)
        for key, a in self.params.items():
            a += w * (params[key] - a)


def _mean_nll(flow, x, c, chunk):
    """``-mean log q`` over all rows in eval mode (chunks of ``chunk`` rows), mode restored;
    ``x``, ``c`` arrays or :class:`_Part` s."""
    def rows(v, i):
        if v is None:
            return None
        return v.rows(i, min(i + chunk, v.n)) if isinstance(v, _Part) else v[i:i + chunk]

    n = x.n if isinstance(x, _Part) else x.shape[0]
    modes = _modes(flow)
    flow.eval()
    try:
        total = 0.0
        # a point whose log-density overflows to -inf is reported by the caller, not warned about
        with np.errstate(over="ignore", invalid="ignore"):
            for i in range(0, n, chunk):
                lp = flow.log_prob(rows(x, i), rows(c, i))
                total -= float(np.sum(lp))
    finally:
        _restore_modes(modes)
    return total / n


def _score_average(flow, averager, x_val, c_val, chunk):
    """``(nll, snapshot)`` of the averaged parameters on the validation rows (``(inf, None)``
    when the pass fails or is not finite); the trained parameters are back in place after."""
    trained = _snapshot(flow)
    _restore(flow, (averager.params, trained[1]))
    try:
        try:
            nll = _mean_nll(flow, x_val, c_val, chunk)
        except ValueError:  # a row out of range under the averaged map: no candidate
            nll = math.inf
        if not math.isfinite(nll):
            return math.inf, None
        return nll, _snapshot(flow)
    finally:
        _restore(flow, trained)


# ---------------------------------------------------------------------------- progress
class _Progress(ProgressLine):
    """fit's progress: one bar over all steps; epoch, step and the NLLs on the line."""

    def __init__(self, epochs, n_batches):
        super().__init__("fit", epochs * n_batches, _PROGRESS_INTERVAL)
        self.epochs, self.n_batches = epochs, n_batches
        self.text = ""

    def step(self, epoch, batch):
        if self.bar is not None:
            self.bar.update(1)
        elif self.due():
            self.draw(f"epoch {epoch + 1}/{self.epochs}  step {batch + 1}/{self.n_batches}"
                       f"{self.text}")

    def epoch(self, epoch, train_nll, val_nll):
        self.text = f"  train NLL {train_nll:.4f}"
        if val_nll is not None:
            self.text += f"  val NLL {val_nll:.4f}"
        if self.bar is not None:
            post = {"epoch": f"{epoch + 1}/{self.epochs}", "train_nll": f"{train_nll:.4f}"}
            if val_nll is not None:
                post["val_nll"] = f"{val_nll:.4f}"
            self.bar.set_postfix(post)
        else:
            self.draw(f"epoch {epoch + 1}/{self.epochs}{self.text}")


class _Interrupt:
    """Ctrl-C during ``fit``: the first SIGINT only sets a flag, which the loop reads after every
    step; a second one raises ``KeyboardInterrupt`` at once. The handler is installed only in
    the main thread (where Python delivers signals) and only over Python's default handler, so
    a handler of the caller's own is left alone; the previous handler is put back on exit."""

    def __init__(self):
        self.count = 0
        self.previous = None

    def install(self):
        if (threading.current_thread() is threading.main_thread()
                and signal.getsignal(signal.SIGINT) is signal.default_int_handler):
            self.previous = signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum, frame):
        self.count += 1
        if self.count > 1:
            raise KeyboardInterrupt

    def uninstall(self):
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
            self.previous = None

    @property
    def requested(self):
        return self.count > 0


class _NoProgress:
    def step(self, epoch, batch):
        pass

    def epoch(self, epoch, train_nll, val_nll):
        pass

    def close(self):
        pass


# --------------------------------------------------------------------------------- fit
def fit(flow, x, *, context=None, validation_data=None, validation_fraction=0.1, epochs=100,
        batch_size=256, optimizer=None, lr=1e-3, weight_decay=0.0, clip_grad_norm=None,
        lr_schedule=None, patience=None, restore_best=True, average=None, average_decay=0.999,
        rng=None, progress=None, callback=None, client=None, n_shards=None):
    """Fit a flow to data by minimising the mean negative log-likelihood with mini-batches.

    Parameters
    ----------
    flow : Flow
        Trained in place (its ``params``, and its buffers such as BatchNorm statistics).
    x : array_like, numpy.memmap or dask array of shape (n, dim)
        Training data, finite, ``n >= 1``. A memmap or a dask array is streamed, never
        copied whole (see the module docstring): the result is bit for bit that of the same
        data in memory.
    context : array_like, numpy.memmap or dask array of shape (n, context_dim), or (context_dim,), optional
        Conditional flows only (required for them).
    validation_data : array_like of shape (m, dim), or a tuple (x_val, context_val), optional
        A held-out set; the pair form is required for a conditional flow (``(x_val, None)`` is
        accepted for an unconditional one). When given, ``validation_fraction`` is not used.
    validation_fraction : float in [0, 1), default 0.1
        Without ``validation_data``: ``ceil(fraction * n)`` rows chosen with ``rng`` are held out
        before training. 0 means no validation.
    epochs : int, default 100
    batch_size : int, default 256
        The last batch of an epoch holds the remaining rows (it may be smaller).
    optimizer : optional
        An optimizer over ``flow.params`` (e.g. ``refflow.optim.SGD(flow.params, lr=0.1)``).
        Default ``Adam(flow.params, lr=lr, weight_decay=weight_decay)``.
    lr, weight_decay : float
        Used only for the default optimizer (``weight_decay`` is AdamW's decoupled decay).
    clip_grad_norm : float, optional
        Rescale each gradient to this global L2 norm at most (:func:`refflow.optim.clip_grad_norm`).
    lr_schedule : None, "cosine", "plateau", ReduceOnPlateau or object with ``step()``
        ``"cosine"``: :class:`refflow.optim.CosineAnnealing` from the optimizer's ``lr`` to 0
        over all ``epochs * n_batches`` steps. ``"plateau"`` or a
        :class:`refflow.optim.ReduceOnPlateau`: where ``patience`` would stop training, the
        best epoch's parameters are put back and the ``lr`` is lowered (see that class);
        needs ``patience`` and ``restore_best=True``; the epochs of the drops are
        ``History.lr_drops``. An object with ``step()``: it is called after every optimizer
        step.
    patience : int, optional
        Stop after this many epochs without a strict improvement of the validation NLL (of the
        training NLL without validation); with ``lr_schedule="plateau"``, lower the rate
        instead until its drops are spent.
    restore_best : bool, default True
        At the end (and on an early stop or divergence), copy back the parameters and buffers
        of the best epoch.
    average : None or "ema", default None
        Weight averaging. ``"ema"``: an exponential moving average of the parameters
        (bias-corrected, so that it starts at the first step's parameters; see Notes) is
        updated after every step and scored on the validation set after every epoch beside
        the trained parameters; the better of the two (the trained ones on a tie) is the
        epoch's candidate for ``best_epoch`` (and for early stopping), and ``restore_best``
        puts it back. Training itself goes on from the trained parameters: the steps, the
        batches and ``train_nll`` are those of the same fit without averaging. Needs
        validation rows and ``restore_best=True``. None: no averaging (the fit is unchanged).
    average_decay : float in (0, 1), default 0.999
        The average's decay ``beta``: it weighs about the last ``1 / (1 - beta)`` steps.
    rng : int, Generator or None
        Seeds the validation split and the batch order (see the module docstring).
    progress : bool or None
        A progress bar on stderr (tqdm when installed, else one line redrawn); ``None``: only
        when stderr is a terminal; ``False``: nothing is printed.
    callback : callable, optional
        ``callback(epoch, history)`` after each epoch (0-based); a true result stops training.
        A ``KeyboardInterrupt`` it raises is taken as Ctrl-C (see Notes).
    client : dask.distributed.Client, optional
        Data-parallel steps (:mod:`refflow.training.distributed`): each mini-batch is cut
        into ``n_shards`` shards (default: the cluster's worker threads) whose gradients
        workers compute; the driver sums them and steps. The batches are those of a fit
        without ``client``; the parameters agree with it to round-off (a few ulps per step).
        A flow whose layers depend on the whole batch (a training-mode ``BatchNorm``, an
        uninitialised ``ActNorm``) is refused. A step that fails on the cluster after the
        retries raises :class:`refflow.training.distributed.ClusterError`, the parameters
        those after the last completed step.
    n_shards : int, optional
        With ``client``: shards per step.

    Returns
    -------
    History

    Raises
    ------
    ValueError
        An argument out of range, before anything changes.
    TypeError
        An argument of the wrong type (``flow`` is not a Flow, ``optimizer`` or
        ``lr_schedule`` lacks ``step``, ``callback`` is not callable, a float for an int, ...),
        before anything changes.
    TrainingDiverged
        A non-finite loss or gradient (training or validation) or an overflowing update. The
        failed step changed nothing; with ``restore_best`` the best epoch's parameters are put
        back (if an epoch completed), else the last good ones stay in place.

    Notes
    -----
    Every layer is put in training mode for the steps and in eval mode for the validation
    pass (BatchNorm then uses its running statistics); at the end each layer gets back the
    mode it had. The optimizer and the schedule keep their state (a second ``fit`` call with
    the same optimizer continues from it). Layers with data-dependent initialisation
    (ActNorm) initialise from the first training batch.

    *Weight averaging.* With ``average="ema"`` the average after step ``t`` (1-based) is
    ``a_t = m_t / (1 - beta^t)``, ``m_t = beta m_{t-1} + (1 - beta) theta_t``, ``m_0 = 0``:
    the bias correction of Adam's moments (Kingma & Ba, "Adam: A Method for Stochastic
    Optimization", 2014, arXiv:1412.6980, Sec. 3), computed as ``a_t = a_{t-1} + w_t
    (theta_t - a_{t-1})``, ``w_t = (1 - beta) / (1 - beta^t)``; averaging the iterates is
    Polyak and Juditsky's ("Acceleration of stochastic approximation by averaging", 1992).
    Buffers (BatchNorm statistics) are not averaged: the averaged parameters are scored with
    the current buffers. A validation pass of the averaged parameters that fails or is not
    finite makes them no candidate that epoch (``inf`` in ``val_nll_averaged``); it is not a
    divergence.

    *Threads.* Each epoch's steps and validation run with the BLAS thread count
    :mod:`refflow.kernels.threads` picks for ``batch_size`` rows (one thread for a small
    model); the callback runs with the process's own setting. ``OPENBLAS_NUM_THREADS`` and the
    like, ``REFFLOW_BLAS_THREADS`` or your own ``threadpoolctl`` limit take precedence.

    *Ctrl-C.* In the main thread, the first SIGINT lets the current step finish and then stops:
    an unfinished epoch is not recorded (its steps count in ``n_steps``), the best epoch's
    parameters are put back (with ``restore_best``; before any completed epoch the parameters
    of the last step stay), and the history is returned with ``stop_reason="interrupted"``. A
    second Ctrl-C raises ``KeyboardInterrupt`` at once. A ``KeyboardInterrupt`` raised inside
    the loop (by the callback, say) is handled the same way when a best epoch can be put back,
    and propagates otherwise.

    Examples
    --------
    >>> import numpy as np
    >>> from refflow import Affine, Flow, StandardNormal
    >>> from refflow.train import fit
    >>> x = np.random.default_rng(0).normal(2.0, 3.0, size=(500, 1))
    >>> flow = Flow(StandardNormal(1), Affine(1))
    >>> history = fit(flow, x, epochs=200, batch_size=100, lr=0.05, rng=0, progress=False)
    >>> len(history.train_nll), history.train_nll[-1] < history.train_nll[0]
    (200, True)
    >>> np.round(flow.params["bijector.shift"], 1), np.round(np.exp(flow.params["bijector.log_scale"]), 1)
    (array([2.]), array([3.]))
    """
    # ---------------------------------------------------------- validation of everything
    if not isinstance(flow, Flow):
        raise TypeError(f"fit: flow must be a refflow Flow, got {type(flow).__name__}")
    streamed = out_of_core(x) or out_of_core(context)
    if streamed:
        x2, c2 = _source_data(flow, x, context, "x", "context")
        n = x2.n
    else:
        x2, c2 = _data(flow, x, context, "x", "context")
        n = x2.shape[0]
    epochs = check_int(epochs, "fit", "epochs", minimum=1)
    batch_size = check_int(batch_size, "fit", "batch_size", minimum=1)
    if patience is not None:
        patience = check_int(patience, "fit", "patience", minimum=1)
    clip = None if clip_grad_norm is None else check_positive(clip_grad_norm, "fit",
                                                              "clip_grad_norm")
    check_bool(restore_best, "fit", "restore_best")
    check_bool(progress, "fit", "progress", allow_none=True)
    if callback is not None and not callable(callback):
        raise TypeError(f"fit: callback must be callable, got {type(callback).__name__}")
    validation_fraction = check_real(validation_fraction, "fit", "validation_fraction", low=0.0,
                                     high=1.0, high_open=True)
    if average is not None:
        check_option(average, ("ema",), "fit", "average", none=True)
        if not restore_best:
            raise ValueError("fit: average='ema' needs restore_best=True (the averaged "
                             "parameters are kept only by restoring the best epoch)")
    average_decay = check_real(average_decay, "fit", "average_decay", low=0.0, high=1.0,
                               low_open=True, high_open=True)
    gen = check_rng(rng, "fit")

    if validation_data is not None:
        if streamed or _streamed_pair(validation_data):
            x_val, c_val = _streamed_validation(flow, validation_data)
        else:
            x_val, c_val = _validation_data(flow, validation_data)
        n_val = 0
    else:
        x_val = c_val = None
        n_val = math.ceil(validation_fraction * n)
        if n_val and n - n_val < 1:
            raise ValueError(f"fit: too few rows ({n}) to hold out validation_fraction="
                             f"{validation_fraction} and keep a training row; pass "
                             f"validation_fraction=0 or more data")
    n_train = n - n_val
    n_batches = -(-n_train // batch_size)
    if average is not None and x_val is None and not n_val:
        raise ValueError("fit: average='ema' needs validation rows to compare the averaged "
                         "parameters with the trained ones; pass validation_data or "
                         "validation_fraction > 0")

    flow_params = flow.params
    if optimizer is None:
        # Re-raise naming fit: the caller passed lr / weight_decay to fit, not to Adam.
        try:
            optimizer = _optim.Adam(flow_params, lr=lr, weight_decay=weight_decay)
        except (ValueError, TypeError) as exc:
            raise type(exc)(f"fit: {exc}") from None
    else:
        check_optimizer(optimizer, flow_params, "fit")
    plateau = None
    if isinstance(lr_schedule, str) and lr_schedule not in ("cosine", "plateau"):
        raise ValueError(f"fit: lr_schedule must be None, 'cosine', 'plateau', a "
                         f"ReduceOnPlateau or an object with a step() method, got "
                         f"{lr_schedule!r}")
    if isinstance(lr_schedule, str) and lr_schedule == "plateau":
        lr_schedule = _optim.ReduceOnPlateau()
    if isinstance(lr_schedule, _optim.ReduceOnPlateau):
        if patience is None:
            raise ValueError("fit: lr_schedule='plateau' needs patience (the rate is lowered "
                             "where patience would stop training)")
        if not restore_best:
            raise ValueError("fit: lr_schedule='plateau' needs restore_best=True (training "
                             "resumes from the best epoch's parameters)")
        plateau, lr_schedule = lr_schedule, None
    schedule = make_schedule(lr_schedule, optimizer, epochs * n_batches, "fit")

    # ------------------------------------------------------------------------ the split
    if streamed:
        # the split by index: the same draws as gen.permutation, int32 below 2^31 rows
        perm = permutation(gen, n) if n_val else None
        val_index, train_index = (perm[:n_val], perm[n_val:]) if n_val else (None, None)
        if n_val:
            x_val = _Part(x2, val_index)
            c_val = None if c2 is None else _Part(c2, val_index)
        x_train, c_train = _Part(x2, train_index), None if c2 is None else _Part(c2, train_index)
        # rows gathered at once: a window of whole batches (one dask computation per window)
        window = max(1, x2.window(batch_size) // batch_size) * batch_size
    elif n_val:
        perm = gen.permutation(n)
        x_val, x_train = x2[perm[:n_val]], x2[perm[n_val:]]
        c_val, c_train = (None, None) if c2 is None else (c2[perm[:n_val]], c2[perm[n_val:]])
    else:
        x_train, c_train = x2, c2
    has_val = x_val is not None
    chunk = max(batch_size, _EVAL_CHUNK)

    # ------------------------------------------------------------------------- training
    history = History()
    if n_val:   # a copy: the slice of perm would keep the whole permutation alive
        history.validation_index = np.array(perm[:n_val])
    show = bool(progress) if progress is not None else bool(
        sys.stderr is not None and getattr(sys.stderr, "isatty", lambda: False)())
    bar = _Progress(epochs, n_batches) if show else _NoProgress()
    modes = _modes(flow)
    work = min(batch_size, n_train) * largest_weight(flow_params.values())
    best, best_metric = None, math.inf
    # lr_schedule="plateau": the drops so far, the epoch from which patience counts, and the
    # patience in force (fit's until the first drop, the schedule's after it)
    drops, counted_from, waiting = 0, 0, patience
    averager = None if average is None else _Average(flow_params, average_decay)
    start = time.perf_counter()

    def diverged(epoch, step, exc, during):
        history.stop_reason = "diverged"
        history.wall_time = time.perf_counter() - start
        if restore_best and best is not None:
            _restore(flow, best)
            state = f"the parameters of the best epoch ({history.best_epoch}) were restored"
        else:
            state = "the last good parameters are in place"
        return TrainingDiverged(
            f"fit: training diverged {during} at epoch {epoch}, step {step} (0-based; "
            f"{history.n_steps} steps succeeded): {exc}. {state[0].upper()}{state[1:]}. Try a "
            f"lower lr, clip_grad_norm=..., or standardised data (zero mean, unit variance per "
            f"column).", history, epoch, step)

    interrupt = _Interrupt()
    sharded = None
    try:
        interrupt.install()
        flow.train()
        if client is not None:
            from .distributed import ShardedGradient

            sharded = ShardedGradient(client, flow, n_shards, "fit")
        elif n_shards is not None:
            raise ValueError("fit: n_shards goes with client=")
        nll_and_grad = flow.nll_and_grad if sharded is None else sharded
        for epoch in range(epochs):
            epoch_start = time.perf_counter()
            # the epoch's steps and validation with the BLAS threads for the batch's size, the
            # callback outside (as the user set them)
            with blas_threads(work):
                order = permutation(gen, n_train) if streamed else gen.permutation(n_train)
                total = 0.0
                for b in range(n_batches):
                    idx = order[b * batch_size:(b + 1) * batch_size]
                    if streamed:
                        first = b * batch_size % window
                        if first == 0:      # the next window of batches, gathered in one go
                            wanted = order[b * batch_size:b * batch_size + window]
                            x_win = x_train.take(wanted)
                            c_win = None if c_train is None else c_train.take(wanted)
                        xb = x_win[first:first + idx.shape[0]]
                        cb = None if c_win is None else c_win[first:first + idx.shape[0]]
                    else:
                        xb = x_train[idx]
                        cb = None if c_train is None else c_train[idx]
                    try:
                        nll, grads = nll_and_grad(xb, cb)
                        if clip is not None:
                            grads, _ = _optim.clip_grad_norm(grads, clip)
                        optimizer.step(grads)
                    except ValueError as exc:
                        raise diverged(epoch, history.n_steps, exc, "in a training step") from exc
                    total += nll * idx.shape[0]
                    history.n_steps += 1
                    if averager is not None:
                        averager.update(flow_params)
                    if schedule is not None:
                        schedule.step()
                    bar.step(epoch, b)
                    if interrupt.requested:
                        break
                if interrupt.requested and b < n_batches - 1:
                    # Ctrl-C inside the epoch: the epoch is not recorded (nor validated)
                    history.stopped_early, history.stop_reason = True, "interrupted"
                    break
                train_nll = total / n_train
                val_nll = None
                try:
                    if not math.isfinite(train_nll):
                        raise ValueError(f"the epoch's mean training NLL is {train_nll}")
                    if has_val:
                        val_nll = _mean_nll(flow, x_val, c_val, chunk)
                        if not math.isfinite(val_nll):
                            raise ValueError(f"the validation NLL is {val_nll}")
                except ValueError as exc:
                    raise diverged(epoch, history.n_steps, exc, "in the evaluation") from exc
                averaged = None
                if averager is not None:
                    averaged_nll, averaged = _score_average(flow, averager, x_val, c_val, chunk)
                    history.val_nll_trained.append(val_nll)
                    history.val_nll_averaged.append(averaged_nll)
                    if averaged_nll < val_nll:
                        val_nll = averaged_nll
                    else:
                        averaged = None
            history.train_nll.append(train_nll)
            if has_val:
                history.val_nll.append(val_nll)
            history.epoch_time.append(time.perf_counter() - epoch_start)
            metric = val_nll if has_val else train_nll
            if metric < best_metric:
                best_metric, history.best_epoch = metric, epoch
                if restore_best:
                    best = _snapshot(flow) if averaged is None else averaged
            bar.epoch(epoch, train_nll, val_nll)
            reason = None
            if callback is not None and callback(epoch, history):
                reason = "callback"
            elif interrupt.requested:
                reason = "interrupted"
            elif patience is not None and epoch - max(history.best_epoch,
                                                      counted_from) >= waiting:
                if plateau is not None and drops < plateau.drops:
                    # from the best epoch's parameters, at a lower rate (ReduceOnPlateau)
                    _restore(flow, best)
                    optimizer.lr = optimizer.lr * plateau.factor
                    if averager is not None:
                        averager = _Average(flow_params, average_decay)
                    drops += 1
                    counted_from, waiting = epoch, plateau.after_drop(patience)
                    history.lr_drops.append(epoch)
                else:
                    reason = "patience"
            if reason is not None and epoch < epochs - 1:
                history.stopped_early, history.stop_reason = True, reason
                break
        if restore_best and best is not None:
            _restore(flow, best)
    except KeyboardInterrupt:
        # raised inside the loop (a callback, say), or a second Ctrl-C: handled as Ctrl-C
        # when a best epoch can be put back, else passed on
        if interrupt.count > 1 or not restore_best or best is None:
            raise
        history.stopped_early, history.stop_reason = True, "interrupted"
        _restore(flow, best)
    finally:
        interrupt.uninstall()
        if sharded is not None:
            sharded.close()
        _restore_modes(modes)
        bar.close()
        history.wall_time = time.perf_counter() - start
    return history
