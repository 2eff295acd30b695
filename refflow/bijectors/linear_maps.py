r"""Linear maps of the peers' catalogues: ``MatrixExponential``, ``Rotation``, ``TriangularAffine``.

Each is ``x_n = W z_n + b`` row by row for a matrix ``W`` that is invertible for every real
parameter value (``b = 0`` for the first two):

===================  ===========================================  =====================  ==========================
bijector             ``W``                                        forward ``log_det``    peer
===================  ===========================================  =====================  ==========================
MatrixExponential    ``expm(M)``                                  ``tr M``               Pyro ``MatrixExponential``
Rotation             ``expm(A - A^T)`` (orthogonal, det 1)        ``0``                  zuko ``RotationTransform``
TriangularAffine     triangular ``T``, ``T_ii = softplus(a_ii)``  ``sum_i log T_ii``     FlowJAX ``TriangularAffine``
===================  ===========================================  =====================  ==========================

As in :mod:`refflow.bijectors.linear`, the pullbacks of ``x = z W^T + b`` are::

    forward   z_bar = x_bar W,          W_bar =  x_bar^T z,   b_bar =  sum_n x_bar_n
    inverse   x_bar = z_bar W^{-T},     W_bar = -x_bar^T z,   b_bar = -sum_n x_bar_n

(summed over the rows) and each class carries ``W_bar`` to its parameters.

**The matrix exponential's pullback** is the adjoint of its Frechet derivative
``L(M, E) = d/dt expm(M + t E)|_0``: since ``<G, L(M, E)> = <L(M^T, G), E>`` (Frobenius inner
product; Higham, *Functions of Matrices*, 2008, eq. 10.15 and Problem 10.2 / Al-Mohy & Higham
2009), a cotangent ``G`` of ``expm(M)`` gives ``M_bar = L(M^T, G)``, which
``scipy.linalg.expm_frechet`` evaluates (scaling and squaring with a Pade approximant, to about
the accuracy of ``expm`` itself). No finite differences and no differentiation of the series.

The ``d x d`` matrices of ``MatrixExponential`` and ``Rotation`` are computed in float64 (SciPy's
``expm_frechet``) and rounded to the input's dtype; the rows are then mapped in that dtype.

References
----------
Al-Mohy, Higham, "Computing the Frechet derivative of the matrix exponential, with an
application to condition number estimation", SIAM J. Matrix Anal. Appl. 30(4), 2009.
Hoogeboom, Garcia Satorras, Tomczak, Welling, "The Convolution Exponential and Generalized
Sylvester Flows", 2020, arXiv:2006.01910 (the matrix exponential as a flow layer).
"""

import math
import warnings

import numpy as np
from scipy.linalg import LinAlgWarning, expm_frechet, lu_factor, lu_solve, solve_triangular

from .._math import sigmoid, softplus
from .._validation import check_bool, check_dim
from ..io.spec import constructor_arguments, declaration
from .base import Bijector

__all__ = ["MatrixExponential", "Rotation", "TriangularAffine"]

# softplus^-1(1) = log(e - 1): the raw diagonal of the identity
_INV_SOFTPLUS_ONE = math.log(math.expm1(1.0))


def _expm(m, where):
    """``expm(m)`` in float64 (via ``expm_frechet``, the same algorithm as the pullback's);
    ``where`` names the layer in the error for a non-finite ``m``."""
    if not np.isfinite(m).all():
        raise ValueError(f"{where}: the matrix parameter is not finite")
    try:
        return expm_frechet(m, np.zeros_like(m), compute_expm=True, check_finite=False)[0]
    except ValueError:  # scaling and squaring overflowed inside scipy (its solve saw inf)
        raise ValueError(f"{where}: the matrix exponential of the parameter overflows "
                         f"float64") from None


def _expm_adjoint(m, g, where):
    """``L(m^T, g)``: the cotangent of ``m`` for a cotangent ``g`` of ``expm(m)`` (float64);
    ``where`` names the layer in the error for a non-finite ``g`` (``g`` is ``out_bar^T v``:
    it overflows when the rows or their cotangents are too large for float64)."""
    if not np.isfinite(g).all():
        raise ValueError(f"{where}: the cotangent of the matrix exponential overflows float64 "
                         f"(rows or output cotangents too large)")
    try:
        return expm_frechet(m.T, g, compute_expm=False, check_finite=False)
    except ValueError:  # scaling and squaring overflowed inside scipy (its solve saw inf)
        raise ValueError(f"{where}: the cotangent of the matrix exponential overflows float64 "
                         f"(rows or output cotangents too large)") from None


class MatrixExponential(Bijector):
    r"""``x = expm(M) z`` row by row, with a trainable square ``M`` (Pyro's ``MatrixExponential``).

    Parameters
    ----------
    dim : int

    Attributes
    ----------
    params : ParamDict
        ``"weight"`` ``(dim, dim)``: ``M``, zeros at construction (the identity).

    Notes
    -----
    ``E = expm(M)`` is invertible for every ``M`` (its inverse is ``expm(-M)``) and
    ``det E = exp(tr M)``::

        forward   x_n = E z_n,                              log_det =  tr M
        inverse   z_n = E^{-1} x_n  (LU solve with E),      log_det = -tr M

    The inverse solves with the forward pass's own ``E`` (``scipy.linalg.lu_factor`` /
    ``lu_solve``) instead of multiplying by a separately computed ``expm(-M)``, whose product
    with ``E`` differs from ``I`` by far more than ``cond(E) eps`` when ``||M||`` is large.

    Pullbacks (module docstring; ``L`` the Frechet derivative, ``s = sum_n log_det_bar_n``).
    Forward: ``z_bar = x_bar E`` (rows), ``E_bar = x_bar^T z``,
    ``M_bar = L(M^T, E_bar) + s I``. Inverse, by the implicit-function theorem on
    ``E z_n = x_n``: differentiating, ``dE z_n + E dz_n = dx_n``, so
    ``dz_n = E^{-1} (dx_n - dE z_n)`` and, for a cotangent ``z_bar_n``::

        x_bar_n = E^{-T} z_bar_n                    (one transposed solve with the same LU)
        E_bar   = -sum_n x_bar_n z_n^T = -(E^{-T} z_bar)^T z   (as a d x d matrix)
        M_bar   = L(M^T, E_bar) - s I               (the adjoint Frechet derivative of expm)

    Pyro computes ``expm(M) z`` by a power series truncated after ``iterations = 8`` terms
    (``pyro/distributions/transforms/matrix_exponential.py``, ``_exp``) but reports the exact
    ``log_abs_det_jacobian = trace(M)``: the two agree to the truncation error
    ``<= ||M||^9 / 9! (1 + ...)`` (1e-12 relative for ``||M|| <= 0.2``). refflow uses the exact
    exponential, so its log-det is the exact log-determinant of its own map. The forward pass
    is one GEMM, the inverse one LU factorisation and a solve; the round trip's error is
    about ``cond(expm(M)) eps``.

    References
    ----------
    Hoogeboom, Garcia Satorras, Tomczak, Welling, "The Convolution Exponential and Generalized
    Sylvester Flows", 2020, arXiv:2006.01910.
    Al-Mohy, Higham, "Computing the Frechet derivative of the matrix exponential", 2009.

    Examples
    --------
    >>> import numpy as np
    >>> from refflow.bijectors import MatrixExponential
    >>> layer = MatrixExponential(2)
    >>> layer.params["weight"] = [[0.0, 1.0], [0.0, 0.0]]     # nilpotent: expm = I + M
    >>> x, log_det = layer.forward(np.array([[1.0, 2.0]]))
    >>> x, log_det
    (array([[3., 2.]]), array([0.]))
    >>> bool(np.allclose(layer.inverse(x)[0], [[1.0, 2.0]]))
    True
    """

    def __init__(self, dim):
        dim = check_dim(dim, "MatrixExponential")
        super().__init__(dim, params={"weight": np.zeros((dim, dim))})

    @classmethod
    def _declare(cls, config):
        dim = check_dim(constructor_arguments(cls, config)["dim"], cls.__name__)
        return declaration({"weight": (dim, dim)})

    def _config(self):
        return {"dim": self.dim}

    def _exp(self, direction):
        m = self._p(np.float64)["weight"]
        w = _expm(m, "MatrixExponential")
        if not np.isfinite(w).all():
            raise self._domain_error(direction, "expm(weight) overflows float64")
        return m, w

    def _forward_pass(self, z, context, vjp):
        m, w = self._exp("forward")
        w_d = w.astype(z.dtype)
        x = z @ w_d.T
        log_det = np.full(z.shape[0], np.trace(m), dtype=z.dtype)
        if not vjp:
            return x, log_det, None

        def pullback(x_bar, log_det_bar):
            g = (x_bar.T @ z).astype(np.float64)              # cotangent of E = expm(M)
            m_bar = _expm_adjoint(m, g, "MatrixExponential") + float(log_det_bar.sum()) * np.eye(self.dim)
            return x_bar @ w_d, {"weight": m_bar}, None

        return x, log_det, pullback

    def _inverse_pass(self, x, context, vjp):
        # z = E^{-1} x by an LU solve with the same E = expm(M) as the forward pass (not a
        # product with a separately computed expm(-M)): the round trip is then that of one
        # solve, ~cond(E) eps, instead of ||expm(-M) expm(M) - I|| (class Notes)
        m, w = self._exp("inverse")
        w_d = w.astype(x.dtype)
        with warnings.catch_warnings():  # an exact zero pivot is refused just below
            warnings.simplefilter("ignore", LinAlgWarning)
            lu = lu_factor(w_d, check_finite=False)
        if not (np.isfinite(lu[0]).all() and (np.diagonal(lu[0]) != 0).all()):
            raise self._domain_error("inverse", "expm(weight) is singular in the input's dtype "
                                     "(its entries under- or overflow)")
        z = lu_solve(lu, x.T, check_finite=False).T
        z = np.ascontiguousarray(z, dtype=x.dtype)
        log_det = np.full(x.shape[0], -np.trace(m), dtype=x.dtype)
        if not vjp:
            return z, log_det, None

        def pullback(z_bar, log_det_bar):
            # x_bar_n = E^{-T} z_bar_n (a transposed solve with the same LU factors)
            x_bar = np.ascontiguousarray(lu_solve(lu, z_bar.T, trans=1, check_finite=False).T,
                                         dtype=x.dtype)
            g = -(x_bar.T @ z).astype(np.float64)             # E_bar = -sum_n x_bar_n z_n^T
            m_bar = _expm_adjoint(m, g, "MatrixExponential") - float(log_det_bar.sum()) * np.eye(self.dim)
            return x_bar, {"weight": m_bar}, None

        return z, log_det, pullback


class Rotation(Bijector):
    r"""``x = R z`` row by row with ``R = expm(A - A^T)``, a rotation (zuko's ``RotationTransform``).

    Parameters
    ----------
    dim : int

    Attributes
    ----------
    params : ParamDict
        ``"generator"`` ``(dim, dim)``: ``A``, zeros at construction (the identity); only its
        skew-symmetric part ``K = A - A^T`` matters.

    Notes
    -----
    ``K = A - A^T`` is skew-symmetric, so ``R = expm(K)`` is orthogonal with ``det R = 1``::

        forward   x_n = R z_n,     log_det = 0
        inverse   z_n = R^T x_n,   log_det = 0

    (zuko's inverse is the same transpose). Pullbacks, with ``G`` the cotangent of ``R`` and
    ``L`` the Frechet derivative (module docstring; ``K^T = -K``)::

        forward   z_bar = x_bar R,     G = x_bar^T z
        inverse   x_bar = z_bar R^T,   G = x^T z_bar        (rows: z = x R)
        K_bar = L(-K, G),              A_bar = K_bar - K_bar^T

    References
    ----------
    Rozet et al., zuko (``zuko.transforms.RotationTransform``), 2022-2026.
    Al-Mohy, Higham, "Computing the Frechet derivative of the matrix exponential", 2009.

    Examples
    --------
    >>> import numpy as np
    >>> from refflow.bijectors import Rotation
    >>> layer = Rotation(2)
    >>> layer.params["generator"] = [[0.0, np.pi / 2], [0.0, 0.0]]   # K = [[0, t], [-t, 0]]
    >>> x, log_det = layer.forward(np.array([[1.0, 0.0]]))
    >>> np.round(x, 6), log_det                                      # rotated by -90 degrees
    (array([[ 0., -1.]]), array([0.]))
    """

    def __init__(self, dim):
        dim = check_dim(dim, "Rotation")
        super().__init__(dim, params={"generator": np.zeros((dim, dim))})

    @classmethod
    def _declare(cls, config):
        dim = check_dim(constructor_arguments(cls, config)["dim"], cls.__name__)
        return declaration({"generator": (dim, dim)})

    def _config(self):
        return {"dim": self.dim}

    def _rotation(self):
        a = self._p(np.float64)["generator"]
        k = a - a.T
        return k, _expm(k, "Rotation")

    def _generator_bar(self, k, g):
        k_bar = _expm_adjoint(k, g, "Rotation")   # L(K^T, G) = L(-K, G)
        return k_bar - k_bar.T

    def _forward_pass(self, z, context, vjp):
        k, r = self._rotation()
        r_d = r.astype(z.dtype)
        x = z @ r_d.T
        log_det = np.zeros(z.shape[0], dtype=z.dtype)
        if not vjp:
            return x, log_det, None

        def pullback(x_bar, log_det_bar):
            g = (x_bar.T @ z).astype(np.float64)
            return x_bar @ r_d, {"generator": self._generator_bar(k, g)}, None

        return x, log_det, pullback

    def _inverse_pass(self, x, context, vjp):
        k, r = self._rotation()
        r_d = r.astype(x.dtype)
        z = x @ r_d
        log_det = np.zeros(x.shape[0], dtype=x.dtype)
        if not vjp:
            return z, log_det, None

        def pullback(z_bar, log_det_bar):
            g = (x.T @ z_bar).astype(np.float64)      # z_nj = sum_i x_ni R_ij
            return z_bar @ r_d.T, {"generator": self._generator_bar(k, g)}, None

        return z, log_det, pullback


class TriangularAffine(Bijector):
    r"""``x = T z + b`` row by row with a triangular ``T`` of softplus diagonal (FlowJAX's
    ``TriangularAffine``), optionally weight-normalised row by row.

    Parameters
    ----------
    dim : int
    lower : bool, default True
        Lower (FlowJAX's default) or upper triangular ``T``.
    weight_normalization : bool, default False
        Rescale every row of the triangular matrix to norm ``softplus(s_i)`` (Salimans &
        Kingma 2016), as FlowJAX's ``triangular_spline_flow`` does by wrapping ``T`` in
        ``paramax.WeightNormalization``.

    Attributes
    ----------
    params : ParamDict
        ``"matrix"`` ``(dim, dim)``: ``A``; only its triangle is used (the other entries get
        zero gradients), the diagonal through ``softplus``. ``"loc"`` ``(dim,)``: ``b``.
        With weight normalisation also ``"row_scale"`` ``(dim,)``: ``s``. At construction
        ``A_ii = softplus^-1(1)``, ``s_i = softplus^-1(1)``, the rest zero: the identity.

    Notes
    -----
    ``V = tri(A)`` with ``V_ii = softplus(A_ii)``; ``T = V``, or with weight normalisation
    ``T = diag(c / n) V``, ``c_i = softplus(s_i)``, ``n_i = ||V_i,:||`` (FlowJAX:
    ``scale * weight / norm(weight, axis=-1)``)::

        forward   x_n = T z_n + b,                log_det =  sum_i log T_ii
        inverse   z_n = T^{-1} (x_n - b),         log_det = -sum_i log T_ii

    (``T_ii > 0`` always; the inverse is one triangular solve.) Pullbacks: the linear ones of
    the module docstring, plus the log-det's ``d(sum_i log T_ii)/dT = diag(1 / T_ii)`` times
    ``+-sum_n log_det_bar_n``, give ``T_bar``; then, with weight normalisation, row by row::

        V_bar_i = (c_i / n_i) (T_bar_i - V_i (V_i . T_bar_i) / n_i^2),
        s_bar_i = sigmoid(s_i) (V_i . T_bar_i) / n_i

    (without it ``V_bar = T_bar``), and ``A_bar = tri(V_bar)`` with the diagonal times
    ``softplus'(A_ii) = sigmoid(A_ii)``.

    FlowJAX (``flowjax/bijections/affine.py``) computes ``y = T x + loc`` in its
    ``transform``, which a FlowJAX flow uses in the density direction; the importer of a
    FlowJAX flow wraps this layer in ``Inverse``.

    References
    ----------
    Salimans, Kingma, "Weight Normalization: A Simple Reparameterization to Accelerate Training
    of Deep Neural Networks", 2016, arXiv:1602.07868.
    Ward et al., FlowJAX (``flowjax.bijections.TriangularAffine``), 2023.

    Examples
    --------
    >>> import numpy as np
    >>> from refflow.bijectors import TriangularAffine
    >>> layer = TriangularAffine(2)                     # the identity
    >>> layer.forward(np.array([[1.0, 2.0]]))
    (array([[1., 2.]]), array([0.]))
    >>> layer.params["matrix"] = [[np.log(np.e - 1), 9.0], [3.0, np.log(np.e**2 - 1)]]
    >>> layer.weight()                                  # 9.0 lies above the diagonal: unused
    array([[1., 0.],
           [3., 2.]])
    """

    def __init__(self, dim, *, lower=True, weight_normalization=False):
        where = "TriangularAffine"
        dim = check_dim(dim, where)
        self.lower = check_bool(lower, where, "lower")
        self.weight_normalization = check_bool(weight_normalization, where,
                                               "weight_normalization")
        params = {"matrix": np.eye(dim) * _INV_SOFTPLUS_ONE, "loc": np.zeros(dim)}
        if self.weight_normalization:
            params["row_scale"] = np.full(dim, _INV_SOFTPLUS_ONE)
        super().__init__(dim, params=params)
        tri = np.tril if self.lower else np.triu
        self._mask = tri(np.ones((dim, dim)))

    def __repr__(self):
        return (f"TriangularAffine(dim={self.dim}, lower={self.lower}, "
                f"weight_normalization={self.weight_normalization})")

    def _config(self):
        return {"dim": self.dim, "lower": self.lower,
                "weight_normalization": self.weight_normalization}

    @classmethod
    def _declare(cls, config):
        args = constructor_arguments(cls, config)
        dim = check_dim(args["dim"], cls.__name__)
        params = {"matrix": (dim, dim), "loc": (dim,)}
        if check_bool(args["weight_normalization"], cls.__name__, "weight_normalization"):
            params["row_scale"] = (dim,)
        return declaration(params)

    def _matrix(self, dtype):
        """``(T, residuals)`` in ``dtype``; the residuals carry ``T_bar`` to the parameters."""
        p = self._p(dtype)
        a = p["matrix"]
        idx = np.diag_indices(self.dim)
        v = a * self._mask.astype(dtype)
        v[idx] = softplus(a[idx])
        if not self.weight_normalization:
            return v, (p, v, None, None)
        n = np.sqrt(np.einsum("ij,ij->i", v, v))    # >= V_ii > 0
        c = softplus(p["row_scale"])
        t = (c / n)[:, None] * v
        return t, (p, v, n, c)

    def weight(self, dtype=np.float64):
        """The matrix ``T`` (a new array; ``x_n = T z_n + b``)."""
        return self._matrix(np.dtype(dtype))[0]

    def _param_grads(self, t_bar, residuals):
        p, v, n, c = residuals
        grads = {}
        if self.weight_normalization:
            dot = np.einsum("ij,ij->i", v, t_bar)
            v_bar = (c / n)[:, None] * (t_bar - v * (dot / (n * n))[:, None])
            grads["row_scale"] = sigmoid(p["row_scale"]) * dot / n
        else:
            v_bar = t_bar
        a_bar = v_bar * self._mask.astype(v_bar.dtype)
        idx = np.diag_indices(self.dim)
        a_bar[idx] = v_bar[idx] * sigmoid(p["matrix"][idx])
        grads["matrix"] = a_bar
        return grads

    def _log_det_check(self, t, direction):
        d = np.diagonal(t)
        if not (d > 0).all():
            i = int(np.argmax(~(d > 0)))
            raise self._domain_error(direction, f"the diagonal of T underflows to {d[i]!r} at "
                                     f"index {i}: not invertible in {t.dtype}")
        return np.log(d).sum()

    def _forward_pass(self, z, context, vjp):
        t, residuals = self._matrix(z.dtype)
        loc = residuals[0]["loc"]
        x = z @ t.T + loc
        log_det = np.full(z.shape[0], self._log_det_check(t, "forward"), dtype=z.dtype)
        if not vjp:
            return x, log_det, None

        def pullback(x_bar, log_det_bar):
            t_bar = x_bar.T @ z
            t_bar[np.diag_indices(self.dim)] += log_det_bar.sum() / np.diagonal(t)
            grads = self._param_grads(t_bar, residuals)
            grads["loc"] = x_bar.sum(axis=0)
            return x_bar @ t, grads, None

        return x, log_det, pullback

    def _inverse_pass(self, x, context, vjp):
        t, residuals = self._matrix(x.dtype)
        loc = residuals[0]["loc"]
        log_det = np.full(x.shape[0], -self._log_det_check(t, "inverse"), dtype=x.dtype)
        # columns are points: T z^T = (x - b)^T
        z = np.ascontiguousarray(solve_triangular(t, (x - loc).T, lower=self.lower,
                                                  check_finite=False).T)
        if not vjp:
            return z, log_det, None

        def pullback(z_bar, log_det_bar):
            # y = x - b, z = y T^{-T}: y_bar = z_bar T^{-1} (rows), i.e. T^T y_bar^T = z_bar^T
            y_bar = solve_triangular(t, z_bar.T, trans="T", lower=self.lower,
                                     check_finite=False).T
            t_bar = -(y_bar.T @ z)
            t_bar[np.diag_indices(self.dim)] -= log_det_bar.sum() / np.diagonal(t)
            grads = self._param_grads(t_bar, residuals)
            grads["loc"] = -y_bar.sum(axis=0)
            return np.ascontiguousarray(y_bar), grads, None

        return z, log_det, pullback
