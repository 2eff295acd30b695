"""What :func:`refflow.training.fit` and :func:`refflow.training.fit_reverse_kl` share: the
optimizer and schedule checks and the progress line. Internal to :mod:`refflow.training`."""

import math
import sys
import time
from collections.abc import Mapping

import numpy as np

from .optim import CosineAnnealing

__all__ = ["check_optimizer", "make_schedule", "ProgressLine"]


def _same_array(a, b):
    if a is b:
        return True
    return (isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.shape == b.shape
            and a.dtype == b.dtype and a.strides == b.strides
            and a.__array_interface__["data"][0] == b.__array_interface__["data"][0])


def check_optimizer(optimizer, flow_params, where):
    """An optimizer whose ``params`` are the very arrays of ``flow_params``: ``TypeError``
    without ``params`` and ``step``, ``ValueError`` when it updates other arrays."""
    if not callable(getattr(optimizer, "step", None)) or not hasattr(optimizer, "params"):
        raise TypeError(f"{where}: optimizer must have 'params' and a 'step(grads)' method (e.g. "
                        f"refflow.optim.Adam), got {type(optimizer).__name__}")
    params = optimizer.params
    if not isinstance(params, Mapping) or set(params) != set(flow_params) or not all(
            _same_array(params[k], flow_params[k]) for k in flow_params):
        raise ValueError(f"{where}: the optimizer's params are not the flow's parameters; build "
                         f"it as e.g. Adam(flow.params, ...)")


def make_schedule(lr_schedule, optimizer, t_max, where):
    """None, ``"cosine"`` (CosineAnnealing over ``t_max`` steps) or a schedule object of
    ``optimizer``, checked."""
    if lr_schedule is None:
        return None
    if isinstance(lr_schedule, str):
        if lr_schedule != "cosine":
            raise ValueError(f"{where}: lr_schedule must be None, 'cosine' or an object with a "
                             f"step() method, got {lr_schedule!r}")
        return CosineAnnealing(optimizer, t_max=t_max)
    if not callable(getattr(lr_schedule, "step", None)):
        raise TypeError(f"{where}: lr_schedule must be None, 'cosine' or an object with a "
                        f"step() method, got {type(lr_schedule).__name__}")
    if getattr(lr_schedule, "optimizer", optimizer) is not optimizer:
        raise ValueError(f"{where}: lr_schedule schedules another optimizer than the one "
                         f"{where} uses")
    return lr_schedule


class ProgressLine:
    """A tqdm bar over ``total`` steps when tqdm is installed, else one line on stderr redrawn
    at most every ``interval`` seconds (``where: text  elapsed t s``). Subclasses (one in
    :mod:`~refflow.training.loop`, one in :mod:`~refflow.training.variational`, one in
    :mod:`refflow.estimator` for rows scored or sampled) say what the line shows; ``unit``
    names what ``total`` counts.
    """

    def __init__(self, where, total, interval, unit="step"):
        self.where, self.interval = where, interval
        self.start = time.perf_counter()
        self.last_draw = -math.inf
        try:
            from tqdm import tqdm
        except ImportError:
            tqdm = None
        self.bar = None
        if tqdm is not None:
            self.bar = tqdm(total=total, desc=where, unit=unit, file=sys.stderr,
                            dynamic_ncols=True, leave=True)

    def due(self):
        """True when the last redraw is at least ``interval`` seconds old."""
        return time.perf_counter() - self.last_draw >= self.interval

    def draw(self, text):
        """Redraw the stderr line with ``text`` (the fallback without tqdm)."""
        now = time.perf_counter()
        self.last_draw = now
        line = f"{self.where}: {text}  elapsed {now - self.start:.1f} s"
        sys.stderr.write("\r" + line.ljust(79))
        sys.stderr.flush()

    def close(self):
        if self.bar is not None:
            self.bar.close()
        elif self.last_draw > -math.inf:
            sys.stderr.write("\n")
            sys.stderr.flush()
