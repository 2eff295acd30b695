"""Training: the mini-batch loop, the optimizers, and variational (reverse-KL) fitting.

- :mod:`refflow.training.loop`: ``fit`` (mini-batches, validation split, early stopping, a
  progress bar, a ``History``; a non-finite loss raises ``TrainingDiverged``).
- :mod:`refflow.training.optim`: ``Adam`` (decoupled weight decay), ``SGD``, ``clip_grad_norm``,
  ``CosineAnnealing``, ``ReduceOnPlateau``; they update a model's ``params`` in place.
- ``ProgressLine``: the progress display they share (tqdm when installed, else one stderr line).
- :mod:`refflow.training.variational`: ``fit_reverse_kl`` and ``fit_potential``, fitting a flow
  to an unnormalized density by the reparameterization gradient.
"""

from ._common import ProgressLine
from .loop import History, TrainingDiverged, fit
from .optim import SGD, Adam, CosineAnnealing, ReduceOnPlateau, clip_grad_norm
from .variational import fit_potential, fit_reverse_kl

__all__ = ["fit", "History", "TrainingDiverged", "Adam", "SGD", "clip_grad_norm",
           "CosineAnnealing", "ReduceOnPlateau", "fit_reverse_kl", "fit_potential", "ProgressLine"]
