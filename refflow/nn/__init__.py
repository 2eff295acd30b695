"""Conditioner networks with hand-derived pullbacks: ``MLP``, ``MADE``, ``ResidualMADE``,
``ResidualMaskedMLP``.

Every network follows the conditioner pattern of the bijectors::

    out, pullback = net.vjp(h)          # MADE: net.vjp(x, context=None)
    h_bar, grads = pullback(out_bar)    # conditional MADE: (x_bar, grads, context_bar)

``params`` is a :class:`refflow.params.ParamDict` of float64 arrays (``"w0", "b0", ...``,
weights shaped ``(out, in)`` as torch's ``nn.Linear``); ``grads`` has its keys and shapes and
holds gradients summed over the batch. Passes run in the input's dtype. Layers call the private
unchecked passes ``_forward`` / ``_vjp`` on validated C-contiguous 2-D arrays.
"""

from .activations import ACTIVATIONS, Activation, get_activation
from .made import MADE, ResidualMADE, ResidualMaskedMLP
from .mlp import MLP

__all__ = ["MLP", "MADE", "ResidualMADE", "ResidualMaskedMLP", "Activation", "ACTIVATIONS",
           "get_activation"]
