r"""``Softclip``: the elementwise soft clip ``x = z / (1 + |z| / B)`` of zuko, from R onto ``(-B, B)``.

zuko's NAF, UNAF and SOSPF put ``SoftclipTransform(bound=11)`` between their autoregressive
layers (applied in the density direction), so that each layer sees features in ``(-11, 11)``.
With ``a = |z| / B`` and ``r = 1 - |x| / B = 1 / (1 + a)``:

    forward   x = z / (1 + a),                 log_det = -2 sum_i log1p(|z_i| / B)
    inverse   z = x / r = B x / (B - |x|),     log_det = -2 sum_i log(r_i)      (|x_i| < B)

The derivative is ``dx/dz = 1 / (1 + a)^2 = r^2``, so the two log-dets are exact negatives at
matching points. Pullbacks (``sign`` of the input; the log-det's derivative jumps at 0, where the
map itself is smooth to first order):

    forward   z_bar = x_bar / (1 + a)^2 - log_det_bar 2 sign(z) / (B + |z|)
    inverse   x_bar = z_bar / r^2      + log_det_bar 2 sign(x) / (B - |x|)

``log(r)`` is computed as ``log1p(-|x| / B)`` for ``|x| <= B / 2`` and as ``log((B - |x|) / B)``
above (``B - |x|`` is exact there by Sterbenz's lemma), so it is accurate to a few ulps both near
0 and next to the bound; ``|z|`` up to the largest float gives ``x`` within rounding of ``±B``.
The bound is fixed (a constructor argument, not a parameter): no parameter gradients.

References
----------
Rozet et al., "zuko: normalizing flows in PyTorch", 2022, ``zuko.transforms.SoftclipTransform``
(zuko 1.6, ``zuko/transforms.py``).
"""

import numpy as np

from .._validation import check_dim, check_positive
from ..io.spec import constructor_arguments, declaration
from .base import Bijector

__all__ = ["Softclip"]


def _log_r(ax, bound):
    """``log(1 - |x| / B)`` for ``ax = |x| < B``, accurate near 0 and near ``B``."""
    half = ax <= bound / 2
    near = np.log(np.where(half, bound, bound - ax) / bound)  # B - |x| exact for |x| >= B / 2
    return np.where(half, np.log1p(-np.where(half, ax, 0) / bound), near)


class Softclip(Bijector):
    """Elementwise soft clip ``x = z / (1 + |z| / bound)`` onto ``(-bound, bound)`` (zuko's
    ``SoftclipTransform``).

    Parameters
    ----------
    dim : int
        Event size.
    bound : float, default 1.0
        The bound ``B > 0`` of the image (zuko's default 1; its NAF / SOSPF use 11). Fixed.

    Notes
    -----
    forward ``x = z / (1 + |z| / B)``, log_det ``-2 sum_i log1p(|z_i| / B)``; inverse
    ``z = B x / (B - |x|)`` for ``|x| < B``, log_det ``-2 sum_i log(1 - |x_i| / B)``.
    Pullbacks ``z_bar = x_bar / (1 + |z| / B)^2 - log_det_bar 2 sign(z) / (B + |z|)`` and
    ``x_bar = z_bar / (1 - |x| / B)^2 + log_det_bar 2 sign(x) / (B - |x|)`` (module docstring).
    The log-det is not differentiable at 0 (``|z|``); the map is.

    Examples
    --------
    >>> import numpy as np
    >>> from refflow import Softclip
    >>> layer = Softclip(2, bound=11.0)
    >>> x, log_det = layer.forward(np.array([[11.0, -22.0]]))
    >>> x
    array([[ 5.5       , -7.33333333]])
    >>> np.allclose(log_det, -2 * (np.log(2.0) + np.log(3.0)))
    True
    >>> np.allclose(layer.inverse(x)[0], [[11.0, -22.0]])
    True
    """

    def __init__(self, dim, bound=1.0):
        dim = check_dim(dim, "Softclip")
        self.bound = check_positive(bound, "Softclip", "bound")
        super().__init__(dim)

    def __repr__(self):
        return f"Softclip(dim={self.dim}, bound={self.bound})"

    def _config(self):
        return {"dim": self.dim, "bound": self.bound}

    @classmethod
    def _declare(cls, config):
        args = constructor_arguments(cls, config)
        check_dim(args["dim"], "Softclip")
        check_positive(args["bound"], "Softclip", "bound")
        return declaration()

    def _input_knots(self, direction, v, context=None):
        # the log-det's derivative jumps at 0 (|v|) in both directions
        return np.zeros(v.shape + (1,), dtype=v.dtype)

    def _check_inverse_domain(self, x):
        bad = ~(np.abs(x) < self.bound)
        if bad.any():
            i = tuple(int(j) for j in np.argwhere(bad)[0])
            raise self._domain_error("inverse", f"x must lie in the open interval "
                                                f"(-{self.bound}, {self.bound}); "
                                                f"{int(bad.sum())} value(s) do not, the first "
                                                f"{float(x[i])!r} at index {i}")

    def _forward_pass(self, z, context, vjp):
        bound = z.dtype.type(self.bound)
        az = np.abs(z)
        q = 1 + az / bound
        x = z / q
        log_det = -2 * np.log1p(az / bound).sum(axis=1)
        if not vjp:
            return x, log_det, None

        def pullback(x_bar, log_det_bar):
            z_bar = x_bar / (q * q) - log_det_bar[:, None] * (2 * np.sign(z) / (bound + az))
            return z_bar, {}, None

        return x, log_det, pullback

    def _inverse_pass(self, x, context, vjp):
        bound = x.dtype.type(self.bound)
        ax = np.abs(x)
        gap = bound - ax  # > 0 (checked); exact for |x| >= B / 2
        z = x * bound / gap
        log_r = _log_r(ax, bound)
        log_det = -2 * log_r.sum(axis=1)
        if not vjp:
            return z, log_det, None

        def pullback(z_bar, log_det_bar):
            r = gap / bound
            x_bar = z_bar / (r * r) + log_det_bar[:, None] * (2 * np.sign(x) / gap)
            return x_bar, {}, None

        return z, log_det, pullback
