r"""Linear bijectors: ``Permute``, ``Reverse``, ``LULinear``, ``Householder``.

Each is ``x = z W^T + b`` row by row (``x_n = W z_n + b``) for an invertible ``W`` built from
a parameterization in which every real parameter value gives an invertible matrix:

===============  ===============================  ==========================  ====================
bijector         ``W``                            forward ``log_det``          parameters
===============  ===============================  ==========================  ====================
Permute          ``P``, ``(P v)_i = v_{perm[i]}``  ``0``                       none (buffer)
Reverse          ``P`` with ``perm = [d-1..0]``    ``0``                       none (buffer)
LULinear         ``P L U``                         ``sum_i log c(u_i)``        L, U, u, b
Householder      ``H_k ... H_1``                   ``0``                       ``v_1 .. v_k``
===============  ===============================  ==========================  ====================

The log-determinant does not depend on the point, so it is the same for every row; the inverse
log-det is its negative. For any linear ``x = z W^T + b`` the pullbacks are ::

    forward   z_bar = x_bar W,          W_bar =  sum_n x_bar_n z_n^T,   b_bar =  sum_n x_bar_n
    inverse   x_bar = z_bar W^{-T},     W_bar = -sum_n x_bar_n z_n^T,   b_bar = -sum_n x_bar_n

(in the inverse, ``z_n = W^{-1}(x_n - b)`` and ``dW^{-1} = -W^{-1} dW W^{-1}``), and each class
carries ``W_bar`` back to its own parameters; the classes' Notes give the details.
"""

import math

import numpy as np
import scipy.linalg
from scipy.linalg import solve_triangular

from .._math import sigmoid, softplus
from .._validation import check_dim, check_rng
from ..io.spec import constructor_arguments, declaration
from ._orthogonal import (check_permutation, inverse_permutation, reflect, reflect_pullback,
                          scaled_reflections)
from .base import Bijector

__all__ = ["Permute", "Reverse", "LULinear", "Householder", "orthogonal_lu"]

#: Floor of nflows' ``softplus(u) + 1e-3`` diagonal, keeping U away from singular.
_SOFTPLUS_FLOOR = 1e-3
_UPPER_DIAG = ("exp", "softplus", "raw")
_DIAGONAL_ON = ("upper", "lower")


# --------------------------------------------------------------------------------- permutations
def _permutation_pass(v, perm, inv, vjp):
    """``v[:, perm]`` and a zero log-det; the output is a new C-contiguous array. The pullback
    permutes the cotangent back with ``inv``, the inverse permutation."""
    # take, not v[:, perm]: fancy indexing along axis 1 returns an F-ordered array.
    out, log_det = v.take(perm, axis=1), np.zeros(v.shape[0], dtype=v.dtype)
    if not vjp:
        return out, log_det, None

    def pullback(out_bar, log_det_bar):
        return out_bar.take(inv, axis=1), {}, None

    return out, log_det, pullback


class Permute(Bijector):
    r"""Fixed permutation of the coordinates, ``x_i = z_{perm[i]}``, i.e. ``x = z[:, perm]``.

    Parameters
    ----------
    dim : int
        Event size.
    permutation : array_like of int of shape (dim,), optional
        A permutation of ``0..dim-1``. Default: drawn at random from ``rng`` (nflows'
        ``RandomPermutation``).
    rng : None, int or numpy.random.Generator, optional
        Used only when ``permutation`` is None.

    Attributes
    ----------
    buffers : dict
        ``{"permutation": int64 array of shape (dim,)}``; no trainable parameters.

    Raises
    ------
    ValueError
        If ``permutation`` is not a permutation of ``0..dim-1`` (wrong length, entries out of
        range, duplicates, non-integer dtype), or ``dim`` or ``rng`` is invalid.

    See Also
    --------
    Reverse : the permutation ``[dim-1, ..., 0]``.
    LULinear : a trainable linear map with a fixed permutation inside.

    Notes
    -----
    With ``P`` the permutation matrix ``(P v)_i = v_{perm[i]}`` and ``inv`` the inverse
    permutation (``inv[perm[i]] = i``)::

        forward   x = z[:, perm]          log_det = 0
        inverse   z = x[:, inv]           log_det = 0
        forward pullback   z_bar = x_bar[:, inv]
        inverse pullback   x_bar = z_bar[:, perm]

    ``|det P| = 1``, so both log-dets are exactly zero (returned as ``(batch,)`` arrays).

    References
    ----------
    Dinh, Krueger, Bengio, "NICE: Non-linear Independent Components Estimation", 2014,
    arXiv:1410.8516.
    Durkan, Bekasov, Murray, Papamakarios, "Neural Spline Flows", 2019, arXiv:1906.04032.

    Examples
    --------
    >>> import numpy as np
    >>> from refflow import Permute
    >>> layer = Permute(3, permutation=[2, 0, 1])
    >>> layer.forward(np.array([[10.0, 20.0, 30.0]]))
    (array([[30., 10., 20.]]), array([0.]))
    >>> layer.inverse(np.array([[30.0, 10.0, 20.0]]))[0]
    array([[10., 20., 30.]])
    >>> np.sort(Permute(4, rng=0).buffers["permutation"])
    array([0, 1, 2, 3])
    """

    def __init__(self, dim, *, permutation=None, rng=None):
        name = type(self).__name__
        dim = check_dim(dim, name)
        rng = check_rng(rng, f"{name}: rng")
        if permutation is None:
            perm = rng.permutation(dim).astype(np.int64)
        else:
            perm = check_permutation(permutation, dim, name)
        super().__init__(dim, buffers={"permutation": perm})

    def __repr__(self):
        return f"{type(self).__name__}(dim={self.dim})"

    def _config(self):
        # The permutation is structure: the constructor validates it when the file is loaded.
        return {"dim": self.dim, "permutation": self.buffers["permutation"].tolist()}

    @classmethod
    def _declare(cls, config):
        dim = check_dim(constructor_arguments(cls, config)["dim"], cls.__name__)
        return declaration(buffers={"permutation": ("<i8", (dim,))})

    def _perm(self):
        # Read at call time (a loaded model may replace the buffer); the copy keeps the pullback
        # independent of later changes.
        return np.array(self.buffers["permutation"], dtype=np.int64, copy=True)

    def _forward_pass(self, z, context, vjp):
        perm = self._perm()
        return _permutation_pass(z, perm, inverse_permutation(perm), vjp)

    def _inverse_pass(self, x, context, vjp):
        perm = self._perm()
        return _permutation_pass(x, inverse_permutation(perm), perm, vjp)


class Reverse(Permute):
    r"""Reverse the order of the coordinates, ``x = z[:, ::-1]``.

    A :class:`Permute` with ``perm = [dim-1, ..., 1, 0]`` (its own inverse), as used between
    the MADE layers of MAF and the coupling layers of RealNVP.

    Parameters
    ----------
    dim : int
        Event size.

    Notes
    -----
    ::

        forward   x_i = z_{d-1-i}        log_det = 0
        inverse   z_i = x_{d-1-i}        log_det = 0
        pullbacks reverse the cotangent the same way.

    ``buffers["permutation"]`` holds ``[dim-1, ..., 0]``.

    References
    ----------
    Papamakarios, Pavlakou, Murray, "Masked Autoregressive Flow for Density Estimation", 2017,
    arXiv:1705.07057.
    Dinh, Sohl-Dickstein, Bengio, "Density estimation using Real NVP", 2017, arXiv:1605.08803.

    Examples
    --------
    >>> import numpy as np
    >>> from refflow import Reverse
    >>> Reverse(3).forward(np.array([[1.0, 2.0, 3.0]]))
    (array([[3., 2., 1.]]), array([0.]))
    """

    def __init__(self, dim):
        dim = check_dim(dim, "Reverse")
        super().__init__(dim, permutation=np.arange(dim - 1, -1, -1, dtype=np.int64))

    def _config(self):
        return {"dim": self.dim}


# ----------------------------------------------------------------------------------- LULinear
def _upper_diag(kind, u):
    """``c(u)``, ``c'(u)``, ``log |c(u)|`` and ``(log |c|)'(u) = c'/c``, in the dtype of ``u``."""
    if kind == "exp":
        with np.errstate(over="ignore", under="ignore"):  # checked by the caller
            c = np.exp(u)
        return c, c, u.copy(), np.ones_like(u)
    if kind == "raw":  # zuko: the diagonal itself, of either sign (checked nonzero by the caller)
        with np.errstate(divide="ignore"):
            return u.copy(), np.ones_like(u), np.log(np.abs(u)), 1.0 / u
    c = softplus(u) + u.dtype.type(_SOFTPLUS_FLOOR)
    dc = sigmoid(u)
    return c, dc, np.log(c), dc / c


def _lu_factors(lower_entries, upper_entries, diag, on="upper"):
    """``L`` and ``U`` in the dtype of ``diag``: the diagonal ``diag`` on ``U`` (``L`` unit)
    or, with ``on="lower"``, on ``L`` (``U`` unit)."""
    d = diag.shape[0]
    lower = np.eye(d, dtype=diag.dtype)
    lower[np.tril_indices(d, -1)] = lower_entries
    upper = np.eye(d, dtype=diag.dtype)
    upper[np.triu_indices(d, 1)] = upper_entries
    (upper if on == "upper" else lower)[np.diag_indices(d)] = diag
    return lower, upper


def _lu_param_grads(m_bar, lower, upper, dc, dlog_c, log_det_term, on="upper"):
    """Carry ``M_bar`` (for ``M = L U``) and the log-det cotangent to the LU parameters.

    ``log_det_term`` is ``±sum_n log_det_bar_n`` (minus for the inverse pass); ``dc`` is the
    derivative of the diagonal (signs included), ``dlog_c`` that of ``log |diagonal|``; ``on``
    the factor that holds the diagonal.
    """
    d = lower.shape[0]
    lower_bar = m_bar @ upper.T
    upper_bar = lower.T @ m_bar
    diag_bar = np.diagonal(upper_bar if on == "upper" else lower_bar)
    return {
        "lower_entries": lower_bar[np.tril_indices(d, -1)],
        "upper_entries": upper_bar[np.triu_indices(d, 1)],
        "unconstrained_upper_diag": diag_bar * dc + log_det_term * dlog_c,
    }


class LULinear(Bijector):
    r"""Trainable invertible linear map ``x = z W^T + b`` with ``W = P L U`` (Glow's LU form).

    Parameters
    ----------
    dim : int
        Event size ``d``.
    permutation : None, "random" or array_like of int of shape (dim,), optional
        The fixed permutation inside ``P``: None (default) is the identity, ``"random"`` draws
        one from ``rng``, an array must be a permutation of ``0..dim-1``.
    upper_diag : {"exp", "softplus", "raw"}, default "exp"
        How the non-unit diagonal is made from ``u``: ``c(u) = exp(u)`` (Glow) or
        ``c(u) = softplus(u) + 1e-3`` (nflows), both positive; or ``"raw"``, ``c(u) = u``
        itself, of either sign (zuko's ``LULinearTransform``; singular where some ``u_i = 0``,
        which the passes refuse with ``ValueError``).
    diagonal : {"upper", "lower"}, default "upper"
        The factor that holds the diagonal ``c(u)``; the other is unit triangular. zuko puts
        the raw diagonal on ``L`` (``L = tril(LU)``, ``U = triu(LU, 1) + I``): ``upper_diag="raw",
        diagonal="lower"``. ``"unconstrained_upper_diag"`` then holds ``L``'s diagonal.
    signs : None or array_like of +-1 of shape (dim,), optional
        Fixed signs ``sigma`` of the diagonal, ``diag = sigma * c(u)`` (with ``"exp"`` or
        ``"softplus"``): normflows' ``Invertible1x1Conv(use_lu=True)`` / ``InvertibleAffine``
        keep ``sign_S`` as a buffer and learn ``log_S``, i.e. ``upper_diag="exp",
        signs=sign_S``. None means all +1.
    rng : None, int or numpy.random.Generator, optional
        Used only for ``permutation="random"``.

    Attributes
    ----------
    params : ParamDict
        ``"lower_entries"`` ``(d(d-1)/2,)``: strictly-lower entries of ``L`` in the row-major
        order of ``np.tril_indices(d, -1)``; ``"upper_entries"`` ``(d(d-1)/2,)``: strictly-upper
        entries of ``U`` in the order of ``np.triu_indices(d, 1)``;
        ``"unconstrained_upper_diag"`` ``(d,)``: ``u``, with ``diag U = c(u)``; ``"bias"``
        ``(d,)``: ``b``. Initialised to the identity map: all zeros, except ``u`` for
        ``"softplus"``, which starts at ``log(expm1(1 - 1e-3))`` so that ``c(u) = 1``, and for
        ``"raw"``, which starts at 1 (times the signs, if any: then the map starts as
        ``diag(signs)``, as the peers' random initialisations are not the identity either).
    buffers : dict
        ``{"permutation": int64 array of shape (d,)}``.

    Raises
    ------
    ValueError
        For an invalid ``dim``, ``permutation``, ``upper_diag`` or ``rng``.

    See Also
    --------
    Permute, Householder

    Notes
    -----
    ``P`` is the permutation matrix ``(P v)_i = v_{perm[i]}`` (so ``W = M[perm]`` for
    ``M = L U``), ``L`` is unit lower triangular, ``U`` upper triangular with diagonal
    ``c(u) > 0``, so ``det W = ±prod_i c(u_i)`` is never zero::

        forward   x_n = W z_n + b,                     log_det =  sum_i log c(u_i)
        inverse   z_n = U^{-1} L^{-1} P^T (x_n - b),    log_det = -sum_i log c(u_i)

    The inverse is two triangular solves (no inverse matrix is formed). Both log-dets are the
    same for every row.

    Pullbacks. Forward: ``z_bar = x_bar W``, ``W_bar = x_bar^T z`` (summed over rows),
    ``b_bar = sum_n x_bar_n``. Inverse, with ``y = x - b`` and ``z = y W^{-T}``:
    ``y_bar = z_bar W^{-1}`` (row-wise ``W^{-T} z_bar_n = P L^{-T} U^{-T} z_bar_n``, two
    transposed triangular solves), ``x_bar = y_bar``, ``b_bar = -sum_n y_bar_n`` and
    ``W_bar = -y_bar^T z``. Then, through ``W = P M`` and ``M = L U``::

        M_bar = P^T W_bar
        L_bar = M_bar U^T        -> "lower_entries"  = strictly-lower entries of L_bar
        U_bar = L^T M_bar        -> "upper_entries"  = strictly-upper entries of U_bar
        u_bar = diag(U_bar) c'(u) ± (sum_n log_det_bar_n) c'(u) / c(u)   (+ forward, - inverse)

    with, for ``"exp"``, ``c' = c`` and ``c'/c = 1``, and for ``"softplus"``
    ``c'(u) = sigmoid(u)``; for ``"raw"``, ``c' = 1`` and ``log |det| = sum_i log|u_i|``, so
    ``c'/c = 1/u``. With ``signs``, ``diag = sigma c(u)``: ``c'`` becomes ``sigma c'`` in the
    first term only (``log |det|`` does not see the signs). With ``diagonal="lower"``,
    ``diag(U_bar)`` is replaced by ``diag(L_bar)`` and the inverse's solves swap which factor
    is unit. The softplus is evaluated as ``logaddexp(0, u)`` so it does not
    overflow. With ``"exp"``, ``u_i`` beyond about ``±709`` (``±88`` in float32) makes
    ``exp(u_i)`` overflow or underflow: the matrix is then not representable (singular or
    infinite) in that precision, and both passes raise ``ValueError`` naming the entry.

    References
    ----------
    Kingma, Dhariwal, "Glow: Generative Flow with Invertible 1x1 Convolutions", 2018,
    arXiv:1807.03039 (section 3.2, LU-decomposed weights).
    Durkan, Bekasov, Murray, Papamakarios, "Neural Spline Flows", 2019, arXiv:1906.04032
    (the ``LULinear`` layer, softplus diagonal).

    Examples
    --------
    >>> import numpy as np
    >>> from refflow import LULinear
    >>> layer = LULinear(3)                       # starts as the identity
    >>> layer.forward(np.array([[1.0, 2.0, 3.0]]))
    (array([[1., 2., 3.]]), array([0.]))
    >>> rng = np.random.default_rng(0)
    >>> for key in layer.params:
    ...     layer.params[key] = 0.5 * rng.standard_normal(layer.params[key].shape)
    >>> z = rng.standard_normal((4, 3))
    >>> x, log_det = layer.forward(z)
    >>> np.allclose(x, z @ layer.weight().T + layer.params["bias"])
    True
    >>> z_back, inv_log_det = layer.inverse(x)
    >>> np.allclose(z_back, z), np.allclose(log_det, -inv_log_det)
    (True, True)
    >>> np.allclose(log_det, layer.params["unconstrained_upper_diag"].sum())
    True
    """

    def __init__(self, dim, *, permutation=None, upper_diag="exp", diagonal="upper", signs=None,
                 rng=None):
        dim = check_dim(dim, "LULinear")
        rng = check_rng(rng, "LULinear: rng")
        if not (isinstance(upper_diag, str) and upper_diag in _UPPER_DIAG):
            raise ValueError(
                f"LULinear: upper_diag must be one of {list(_UPPER_DIAG)}, got {upper_diag!r}"
            )
        if not (isinstance(diagonal, str) and diagonal in _DIAGONAL_ON):
            raise ValueError(
                f"LULinear: diagonal must be one of {list(_DIAGONAL_ON)}, got {diagonal!r}"
            )
        if signs is not None:
            if upper_diag == "raw":
                raise ValueError("LULinear: signs apply to a positive diagonal ('exp' or "
                                 "'softplus'); upper_diag='raw' carries its own signs")
            signs = np.array(signs, dtype=np.float64) if not isinstance(signs, str) else None
            if signs is None or signs.shape != (dim,) or not np.isin(signs, (-1.0, 1.0)).all():
                raise ValueError(f"LULinear: signs must be an array of shape ({dim},) holding "
                                 f"only +1 and -1")
            signs.flags.writeable = False
        if permutation is None:
            perm = np.arange(dim, dtype=np.int64)
        elif isinstance(permutation, str):
            if permutation != "random":
                raise ValueError(
                    f"LULinear: permutation must be None, 'random' or an array of integers, "
                    f"got {permutation!r}"
                )
            perm = rng.permutation(dim).astype(np.int64)
        else:
            perm = check_permutation(permutation, dim, "LULinear")
        n_off = dim * (dim - 1) // 2
        # u0 makes c(u0) = 1, so the layer starts as the identity in both modes.
        u0 = {"exp": 0.0, "raw": 1.0,
              "softplus": math.log(math.expm1(1.0 - _SOFTPLUS_FLOOR))}[upper_diag]
        super().__init__(
            dim,
            params={
                "lower_entries": np.zeros(n_off),
                "upper_entries": np.zeros(n_off),
                "unconstrained_upper_diag": np.full(dim, u0),
                "bias": np.zeros(dim),
            },
            buffers={"permutation": perm},
        )
        self.upper_diag = upper_diag
        self.diagonal = diagonal
        self.signs = signs

    def __repr__(self):
        extra = "" if self.diagonal == "upper" else f", diagonal={self.diagonal!r}"
        extra += "" if self.signs is None else f", signs={self.signs.tolist()}"
        return f"LULinear(dim={self.dim}, upper_diag={self.upper_diag!r}{extra})"

    def _config(self):
        config = {"dim": self.dim, "permutation": self.buffers["permutation"].tolist(),
                  "upper_diag": self.upper_diag}
        # the options appear only when set, so that earlier model files keep their configs
        if self.diagonal != "upper":
            config["diagonal"] = self.diagonal
        if self.signs is not None:
            config["signs"] = self.signs.tolist()
        return config

    @classmethod
    def _declare(cls, config):
        dim = check_dim(constructor_arguments(cls, config)["dim"], "LULinear")
        n_off = dim * (dim - 1) // 2
        return declaration({"lower_entries": (n_off,), "upper_entries": (n_off,),
                            "unconstrained_upper_diag": (dim,), "bias": (dim,)},
                           {"permutation": ("<i8", (dim,))})

    def _state(self, direction, dtype):
        """Parameter copies, the factors and ``c`` in ``dtype``, and the permutation."""
        p = self._p(dtype)
        perm = np.array(self.buffers["permutation"], dtype=np.int64, copy=True)
        c, dc, log_c, dlog_c = _upper_diag(self.upper_diag, p["unconstrained_upper_diag"])
        # exp(u) is positive for every real u, but not in floating point: a diagonal that
        # underflows to 0 or overflows makes W singular or non-finite in this dtype (and a raw
        # diagonal may be exactly 0).
        bad = ~((np.abs(c) > 0) & np.isfinite(c))
        if bad.any():
            i = int(np.argmax(bad))
            raise self._domain_error(
                direction,
                f"the diagonal of {self.diagonal[0].upper()}, {self.upper_diag}(u), is "
                f"{float(c[i])!r} at index {i} "
                f"(unconstrained_upper_diag[{i}] = {float(p['unconstrained_upper_diag'][i])!r}): "
                f"outside the range representable in {np.dtype(dtype)}, the map is not "
                f"invertible in this precision",
            )
        if self.signs is not None:
            signs = self.signs.astype(dtype)
            c, dc = c * signs, dc * signs
        lower, upper = _lu_factors(p["lower_entries"], p["upper_entries"], c, self.diagonal)
        return p, perm, lower, upper, dc, log_c, dlog_c

    def weight(self, dtype=np.float64):
        """The matrix ``W = P L U`` of shape ``(dim, dim)`` (a new array; ``x_n = W z_n + b``)."""
        _, perm, lower, upper, *_ = self._state("weight", np.dtype(dtype))
        return (lower @ upper)[perm]

    def _forward_pass(self, z, context, vjp):
        p, perm, lower, upper, dc, log_c, dlog_c = self._state("forward", z.dtype)
        weight = (lower @ upper)[perm]
        x = z @ weight.T + p["bias"]
        log_det = np.full(z.shape[0], log_c.sum(), dtype=z.dtype)
        if not vjp:
            return x, log_det, None
        inv = inverse_permutation(perm)

        def pullback(x_bar, log_det_bar):
            m_bar = x_bar.take(inv, axis=1).T @ z  # P^T W_bar, W_bar = x_bar^T z
            grads = _lu_param_grads(m_bar, lower, upper, dc, dlog_c, log_det_bar.sum(),
                                    self.diagonal)
            grads["bias"] = x_bar.sum(axis=0)
            return x_bar @ weight, grads, None

        return x, log_det, pullback

    def _inverse_pass(self, x, context, vjp):
        p, perm, lower, upper, dc, log_c, dlog_c = self._state("inverse", x.dtype)
        inv = inverse_permutation(perm)
        # Columns are points: solving on (d, batch) right-hand sides keeps LAPACK in F order.
        rhs = (x - p["bias"]).take(inv, axis=1).T
        unit_l = self.diagonal == "upper"
        z_t = solve_triangular(
            upper,
            solve_triangular(lower, rhs, lower=True, unit_diagonal=unit_l, check_finite=False),
            lower=False, unit_diagonal=not unit_l, check_finite=False,
        )
        z = np.ascontiguousarray(z_t.T)
        log_det = np.full(x.shape[0], -log_c.sum(), dtype=x.dtype)
        if not vjp:
            return z, log_det, None

        def pullback(z_bar, log_det_bar):
            # B = L^{-T} U^{-T} z_bar^T, so y_bar_n = P B_n and P^T W_bar = -B z.
            b_t = solve_triangular(
                lower,
                solve_triangular(upper, z_bar.T, trans="T", lower=False,
                                 unit_diagonal=not unit_l, check_finite=False),
                trans="T", lower=True, unit_diagonal=unit_l, check_finite=False,
            )
            y_bar = b_t.T.take(perm, axis=1)
            m_bar = -(b_t @ z)
            grads = _lu_param_grads(m_bar, lower, upper, dc, dlog_c, -log_det_bar.sum(),
                                    self.diagonal)
            grads["bias"] = -y_bar.sum(axis=0)
            return y_bar, grads, None

        return z, log_det, pullback


# -------------------------------------------------------------------------------- Householder
class Householder(Bijector):
    r"""Product of Householder reflections, ``x = H_k ... H_2 H_1 z``: an orthogonal map.

    Parameters
    ----------
    dim : int
        Event size ``d``.
    n_reflections : int, optional
        Number ``k`` of reflections; default ``dim`` (``d`` reflections reach every orthogonal
        matrix of determinant ``(-1)^d``).
    rng : None, int or numpy.random.Generator, optional
        Initialisation: the vectors are drawn from ``rng.standard_normal((k, d))``.

    Attributes
    ----------
    params : ParamDict
        ``"vectors"`` of shape ``(k, d)``: row ``j`` is ``v_{j+1}``. Any length is allowed (the
        reflection depends only on the direction).

    Raises
    ------
    ValueError
        For an invalid ``dim``, ``n_reflections`` or ``rng``; at call time, if a vector is zero.

    See Also
    --------
    LULinear : a general (not only orthogonal) trainable linear map.

    Notes
    -----
    Each reflection ``H_v = I - 2 v v^T / (v^T v)`` is symmetric, orthogonal and its own
    inverse, with ``det H_v = -1``::

        forward   x = H_k ... H_1 z       (H_1 applied first),   log_det = 0
        inverse   z = H_1 ... H_k x       (H_k applied first),   log_det = 0

    Pullback of one reflection ``y = h - 2 v (v . h) / s``, ``s = v . v``, for every row::

        h_bar = H_v y_bar
        v_bar = -(2/s) sum_n [ (y_bar_n . v) h_n + (v . h_n) y_bar_n
                               - 2 (v . h_n)(y_bar_n . v) v / s ]

    The passes chain these in reverse order of application; the reflection inputs ``h`` are
    recomputed from the output by reflecting back (each ``H`` is an involution), so the
    pullback keeps one ``(batch, d)`` array instead of ``k``.

    ``H_v`` is invariant to the scale of ``v``, so each vector is first divided by its largest
    absolute entry ``m`` (in float64): ``v . v`` then neither overflows nor underflows, for any
    nonzero ``v``. Since ``v_bar`` is homogeneous of degree -1 in ``v``, the gradient for ``v``
    is the one for ``v / m`` divided by ``m``.

    The one exception to "every parameter value gives a bijection": a zero vector (measure
    zero) defines no reflection, and ``forward``/``inverse`` then raise ``ValueError`` naming
    the reflection's index ``j`` (row ``j`` of ``params["vectors"]``).

    References
    ----------
    Tomczak, Welling, "Improving Variational Auto-Encoders using Householder Flow", 2016,
    arXiv:1611.09630.
    van den Berg, Hasenclever, Tomczak, Welling, "Sylvester Normalizing Flows for Variational
    Inference", 2018, arXiv:1803.05649.

    Examples
    --------
    >>> import numpy as np
    >>> from refflow import Householder
    >>> layer = Householder(2, n_reflections=1)
    >>> layer.params["vectors"] = [[1.0, 1.0]]    # reflect across the line x_0 = -x_1
    >>> layer.forward(np.array([[1.0, 2.0]]))
    (array([[-2., -1.]]), array([0.]))
    >>> layer = Householder(3, rng=0)             # random vectors, an orthogonal map
    >>> z = np.array([[1.0, 2.0, 2.0]])
    >>> x, log_det = layer.forward(z)
    >>> print(np.round(np.linalg.norm(x), 12), log_det)
    3.0 [0.]
    >>> np.allclose(layer.inverse(x)[0], z)
    True
    """

    def __init__(self, dim, *, n_reflections=None, rng=None):
        dim = check_dim(dim, "Householder")
        k = dim if n_reflections is None else check_dim(n_reflections, "Householder", "n_reflections")
        rng = check_rng(rng, "Householder: rng")
        super().__init__(dim, params={"vectors": rng.standard_normal((k, dim))})
        self.n_reflections = k

    def __repr__(self):
        return f"Householder(dim={self.dim}, n_reflections={self.n_reflections})"

    def _config(self):
        return {"dim": self.dim, "n_reflections": self.n_reflections}

    @classmethod
    def _declare(cls, config):
        args = constructor_arguments(cls, config)
        dim = check_dim(args["dim"], "Householder")
        k = args["n_reflections"]
        k = dim if k is None else check_dim(k, "Householder", "n_reflections")
        return declaration({"vectors": (k, dim)})

    def _directions(self, direction, dtype):
        """Vectors scaled to max-abs 1 (in ``dtype``), their float64 scales ``m``, ``s = w . w``."""
        w, scale = scaled_reflections(self, direction, self._p(np.float64)["vectors"])
        w = w.astype(dtype)
        return w, scale, np.einsum("ij,ij->i", w, w)

    def _order(self, direction):
        k = self.n_reflections
        return range(k) if direction == "forward" else range(k - 1, -1, -1)

    def _reflections(self, direction, v, vjp):
        """The reflections in the order of ``direction`` (the inverse runs them backwards)."""
        w, scale, s = self._directions(direction, v.dtype)
        order = self._order(direction)
        out = v
        for j in order:
            out = reflect(out, w[j], s[j])
        log_det = np.zeros(v.shape[0], dtype=v.dtype)
        if not vjp:
            return out, log_det, None

        def pullback(out_bar, log_det_bar):
            grads = np.zeros_like(w)
            y, y_bar = out, out_bar
            for j in reversed(order):
                h = reflect(y, w[j], s[j])  # the input of reflection j
                y_bar, grads[j] = reflect_pullback(h, y_bar, w[j], s[j])
                y = h
            # In float64: m need not be representable in float32. A gradient that overflows
            # (m near the underflow threshold) is reported by the public wrapper.
            with np.errstate(over="ignore"):
                return y_bar, {"vectors": grads.astype(np.float64) / scale[:, None]}, None

        return out, log_det, pullback

    def _forward_pass(self, z, context, vjp):
        return self._reflections("forward", z, vjp)

    def _inverse_pass(self, x, context, vjp):
        return self._reflections("inverse", x, vjp)


def orthogonal_lu(q):
    """``LULinear`` parameters (``upper_diag="exp"``) of an orthogonal ``q`` up to the signs of
    its columns: ``(perm, params, signs)`` for ``W = q D``, ``D = diag(signs)``.

    ``q = P L U`` (``scipy.linalg.lu``, partial pivoting); refflow's ``LULinear`` keeps
    ``diag U > 0``, so the columns of ``U`` whose diagonal entry is negative are negated
    (``signs = sign(diag U)``): ``W = q D`` is still orthogonal (``log|det W| = sum_i log
    (U D)_ii``, zero up to rounding). Negating a column of ``q`` negates the same column of
    ``U`` exactly (the pivots and ``L`` do not change), so ``params`` are the LU of ``q D`` bit
    for bit. ``perm`` is the permutation inside ``P``: ``(P v)_i = v_perm[i]``, i.e.
    ``P[i, perm[i]] = 1``.
    """
    p, lower, upper = scipy.linalg.lu(q)
    signs = np.sign(np.diag(upper))
    upper = upper * signs[None, :]
    dim = q.shape[0]
    perm = np.argmax(p, axis=1).astype(np.int64)
    params = {
        "lower_entries": lower[np.tril_indices(dim, -1)],
        "upper_entries": upper[np.triu_indices(dim, 1)],
        "unconstrained_upper_diag": np.log(np.diag(upper)),
        "bias": np.zeros(dim),
    }
    return perm, params, signs
