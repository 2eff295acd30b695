r"""Polynomial transformers in masked autoregressive layers: ``SumOfSquaresAutoregressive``
(SOS polynomial flow, Jaini et al. 2019) and ``BernsteinAutoregressive`` (Bernstein-polynomial
flow, as zuko's BPF).

Both apply their increasing polynomial ``f(.; theta_i(x_<i))`` in the density direction
(``inverse``: ``z_i = f(x_i)``, one MADE pass) and invert it numerically, coordinate by
coordinate in degree order, to sample (``forward``); see :mod:`refflow.bijectors._monotone` for
the solver, its tolerance and worst case, and the implicit-function pullback of the sampling
direction. Pyro's ``Polynomial`` (the transformer in the sampling direction) is
``Inverse(SumOfSquaresAutoregressive(...))``.

References
----------
Jaini, Selby, Yu, "Sum-of-Squares Polynomial Flow", 2019, arXiv:1905.02325.
Sick, Hothorn, Duerr, "Deep transformation models: Tackling complex regression problems with
neural network based transformation models", 2020, arXiv:2004.00464.
Arpogaus, Voss, Sick, Nigge-Uricher, Duerr, "Short-Term Density Forecasting of Low-Voltage Load
using Bernstein-Polynomial Normalizing Flows", 2022, arXiv:2204.13939.
"""

import math

import numpy as np

from .._validation import check_choice, check_int, check_positive, check_real
from ..io.spec import constructor_arguments
from ..kernels.monotone import BERNSTEIN, POLYNOMIAL
from ._monotone import MonotoneAutoregressive, kernel_solve, sigmoid, softplus

__all__ = ["SumOfSquaresAutoregressive", "BernsteinAutoregressive"]

_TAILS = ("identity", "linear")


def _powers(v, count):
    """``v^0 .. v^(count-1)`` along a new last axis."""
    out = np.empty(v.shape + (count,), dtype=v.dtype)
    out[..., 0] = 1
    for j in range(1, count):
        out[..., j] = out[..., j - 1] * v
    return out


def _sos(x, theta, K, L, B, slope, vjp):
    """The SOS transformer on any leading shape: ``(z, l, f', residuals | None)``.

    ``theta[..., :K (L + 1)]`` are the coefficients ``a_kj`` (row-major ``(K, L + 1)``),
    ``theta[..., -1]`` the constant ``beta``. See :class:`SumOfSquaresAutoregressive`.
    """
    dt = x.dtype.type
    c = theta[..., :K * (L + 1)].reshape(theta.shape[:-1] + (K, L + 1)).copy()
    c[..., 0] += dt(1)
    beta = theta[..., -1]
    v = x / dt(B)
    V = _powers(v, 2 * L + 2)                                   # v^0 .. v^(2L+1)
    p = np.einsum("...kj,...j->...k", c, V[..., :L + 1])        # p_k(v)
    g = dt(slope) + np.mean(p * p, axis=-1)
    # exact integral: F = beta + slope x + (B / K) sum_k c_k^T H c_k, H_ij = v^(i+j+1)/(i+j+1)
    idx = np.add.outer(np.arange(L + 1), np.arange(L + 1))
    M = V[..., 1:] / np.arange(1, 2 * L + 2, dtype=x.dtype)     # M_m = v^(m+1) / (m+1)
    H = M[..., idx]                                             # (..., L+1, L+1)
    Hc = np.einsum("...ij,...kj->...ki", H, c)
    z = beta + dt(slope) * x + dt(B / K) * np.einsum("...ki,...ki->...", c, Hc)
    ell = np.log(g)
    if not vjp:
        return z, ell, g, None
    jj = np.arange(1, L + 1, dtype=x.dtype)
    dp = np.einsum("...kj,...j->...k", c[..., 1:] * jj, V[..., :L])   # p_k'(v)
    dg = dt(2.0 / (K * B)) * np.sum(p * dp, axis=-1)                  # dg/dx
    return z, ell, g, (g, dg, p, V[..., :L + 1], Hc)


def _sos_coefficients(theta, K, L, B, slope):
    """``e`` ``(m, 2L + 2)`` with ``z = sum_j e_j v^j``, ``v = x / B`` (for the solver):
    ``e_0 = beta``, ``e_1 = slope B + B Q_0``, ``e_{m+1} = B Q_m / (m + 1)`` with ``Q_m = (1/K)
    sum_k sum_{i+j=m} c_ki c_kj``."""
    dt = theta.dtype.type
    c = theta[:, :K * (L + 1)].reshape(-1, K, L + 1).copy()
    c[..., 0] += dt(1)
    outer = np.mean(c[:, :, :, None] * c[:, :, None, :], axis=1)     # (m, L+1, L+1)
    idx = np.add.outer(np.arange(L + 1), np.arange(L + 1))
    Q = np.zeros((theta.shape[0], 2 * L + 1), dtype=theta.dtype)
    for m in range(2 * L + 1):
        Q[:, m] = outer[:, idx == m].sum(axis=1)
    e = np.zeros((theta.shape[0], 2 * L + 2), dtype=theta.dtype)
    e[:, 0] = theta[:, -1]
    e[:, 1:] = dt(B) * Q / np.arange(1, 2 * L + 2, dtype=theta.dtype)
    e[:, 1] += dt(slope * B)
    return e


def _sos_pullback(res, z_bar, ell_bar, K, L, B):
    """``(x_bar, theta_bar)`` of :func:`_sos` (formulas in the class Notes)."""
    g, dg, p, V, Hc = res
    dt = g.dtype.type
    x_bar = z_bar * g + ell_bar * dg / g
    c_bar = dt(2.0 * B / K) * z_bar[..., None, None] * Hc \
        + dt(2.0 / K) * (ell_bar / g)[..., None, None] * p[..., :, None] * V[..., None, :]
    theta_bar = np.empty(g.shape + (K * (L + 1) + 1,), dtype=g.dtype)
    theta_bar[..., :-1] = c_bar.reshape(g.shape + (K * (L + 1),))
    theta_bar[..., -1] = z_bar
    return x_bar, theta_bar


class SumOfSquaresAutoregressive(MonotoneAutoregressive):
    r"""Masked autoregressive sum-of-squares polynomial layer (SOS flow, Jaini et al. 2019).

    Density direction (``inverse``, one MADE pass), per coordinate with ``v = x / B``::

        z = beta + int_0^x g(u) du,   g(u) = slope + (1/K) sum_k p_k(u / B)^2,
        p_k(v) = 1 + sum_{j=0}^{L} a_kj v^j

    with ``a_kj`` and ``beta`` from the MADE. The integral is exact, in closed form: with
    ``c_k = (1 + a_k0, a_k1, ..., a_kL)`` and the Hankel matrix ``H_ij = v^(i+j+1) / (i+j+1)``,
    ``int_0^x g = slope x + (B / K) sum_k c_k^T H c_k`` (a polynomial of degree ``2L + 1``).
    This is zuko's ``SOSPolynomialTransform`` + ``AdditiveTransform`` exactly (zuko integrates
    by an ``(L + 1)``-node Gauss-Legendre rule, exact for this degree-``2L`` integrand).

    Parameters
    ----------
    dim : int
    degree : int, default 4
        ``L``, the degree of each ``p_k`` (zuko's SOSPF and Pyro's ``polynomial`` default).
    n_polynomials : int, default 3
        ``K`` (zuko's and Pyro's default).
    slope : float, default 1e-3
        Minimum slope ``g >= slope`` (zuko's default); 0 allows slopes ``g = 0`` at isolated
        points (the paper's and Pyro's form), where the log-det is ``-inf`` (``ValueError``).
    bound : float, default 10.0
        ``B``, the scale of ``v = x / B`` (zuko's ``MonotonicTransform`` bound); the map is
        defined on all of R.
    hidden, order, hidden_degrees, activation : MADE options (see :class:`refflow.nn.MADE`)
    context_dim : int, optional
    zero_last : bool, default False
        Zero MADE's output layer: then ``a = 0``, ``beta = 0`` and ``z = (1 + slope) x``.
    rng : None, int or numpy.random.Generator

    Notes
    -----
    MADE outputs ``P = K (L + 1) + 1`` numbers per coordinate: ``a`` row-major ``(K, L + 1)``,
    then ``beta`` (zuko's layout). ``l = log g(x)`` is the exact log-derivative of the closed
    form; ``inverse`` returns ``sum_i l_i``, ``forward`` its negative at the same point.

    Density-direction pullback, for cotangents ``(z_bar, l_bar)``::

        x_bar    = z_bar g + l_bar g' / g,      g' = (2 / (K B)) sum_k p_k(v) p_k'(v)
        c_bar_kj = z_bar (2B / K) (H c_k)_j + l_bar (2 / K) p_k(v) v^j / g   (= a_bar_kj)
        beta_bar = z_bar

    (``d/dc_k c_k^T H c_k = 2 H c_k``; ``dg/dc_kj = (2 / K) p_k v^j``.) The sampling direction
    solves ``f(x) = z`` by the bracketed Newton iteration of :mod:`refflow.bijectors._monotone`
    (from ``x = 0``), and its pullback is the implicit-function one written there.

    References
    ----------
    Jaini, Selby, Yu, "Sum-of-Squares Polynomial Flow", 2019, arXiv:1905.02325.

    Examples
    --------
    >>> import numpy as np
    >>> from refflow import SumOfSquaresAutoregressive
    >>> layer = SumOfSquaresAutoregressive(3, hidden=(8, 8), rng=0)
    >>> x = np.random.default_rng(1).normal(size=(4, 3))
    >>> z, log_det = layer.inverse(x)              # closed form, one MADE pass
    >>> x_back, log_det_back = layer.forward(z)    # numerical inverse, coordinate by coordinate
    >>> bool(np.allclose(x_back, x, rtol=1e-12, atol=1e-12)), bool(np.allclose(log_det_back, -log_det))
    (True, True)
    """

    def __init__(self, dim, *, degree=4, n_polynomials=3, slope=1e-3, bound=10.0,
                 hidden=(64, 64), order="natural", hidden_degrees="cyclic", activation="relu",
                 context_dim=None, zero_last=False, rng=None):
        where = "SumOfSquaresAutoregressive"
        self.degree = check_int(degree, where, "degree", minimum=0)
        self.n_polynomials = check_int(n_polynomials, where, "n_polynomials", minimum=1)
        self.slope = check_real(slope, where, "slope", low=0.0)
        self.bound = check_positive(bound, where, "bound")
        n_params = self.n_polynomials * (self.degree + 1) + 1
        super().__init__(dim, n_params, hidden, order, hidden_degrees, activation, context_dim,
                         zero_last, rng)

    def __repr__(self):
        return (f"SumOfSquaresAutoregressive(dim={self.dim}, degree={self.degree}, "
                f"n_polynomials={self.n_polynomials}, hidden={tuple(self.made.hidden)})")

    def _config(self):
        return dict(self._made_config(), degree=self.degree, n_polynomials=self.n_polynomials,
                    slope=self.slope, bound=self.bound)

    @classmethod
    def _declare(cls, config):
        args = constructor_arguments(cls, config)
        degree = check_int(args["degree"], cls.__name__, "degree", minimum=0)
        n_polynomials = check_int(args["n_polynomials"], cls.__name__, "n_polynomials",
                                  minimum=1)
        return cls._monotone_declaration(args, n_polynomials * (degree + 1) + 1)

    def _args(self):
        return self.n_polynomials, self.degree, self.bound, self.slope

    def _elements(self, x, theta, p, vjp):
        K, L, B, slope = self._args()
        z, ell, _, res = _sos(x, theta, K, L, B, slope, vjp)
        if not vjp:
            return z, ell, None

        def pullback(z_bar, ell_bar, need_params=True):
            x_bar, theta_bar = _sos_pullback(res, z_bar, ell_bar, K, L, B)
            return x_bar, theta_bar, {}

        return z, ell, pullback

    def _scalar(self, i, x, theta_i, p):
        K, L, B, slope = self._args()
        z, _, g, _ = _sos(x, theta_i, K, L, B, slope, False)
        return z, g

    def _solve(self, i, z_i, theta_i, p):
        K, L, B, slope = self._args()
        return kernel_solve(POLYNOMIAL, z_i, _sos_coefficients(theta_i, K, L, B, slope), B,
                            np.zeros_like(z_i), where="SumOfSquaresAutoregressive.forward")


# ================================================================================ Bernstein
def _binomials(n, dtype):
    return np.array([math.comb(n, i) for i in range(n + 1)], dtype=dtype)


def _basis(v, w, n):
    """Bernstein basis ``b_{i,n}(v) = C(n, i) v^i w^(n-i)``, ``w = 1 - v``, ``i = 0..n``."""
    pv = _powers(v, n + 1)
    pw = _powers(w, n + 1)[..., ::-1]
    return _binomials(n, v.dtype) * pv * pw


def _bernstein_increments(u, M, B, tails):
    """Constrained increments ``Delta`` (``(..., M)``) and ``theta_0`` from raw ``u``.

    identity: ``Delta = [d, d, S softmax(u), d, d]``, ``d = 2B / M``, ``S = 2B - 4d``,
    ``theta_0 = -B``. linear: ``Delta = softplus(u[1:][pad])`` with ``pad = [0, 0, 1, ..,
    M-3, M-3]`` (first and last repeated), ``theta_0 = u_0 - log(2) (M - 1) / 2``.
    Also returns what the pullback needs (the softmax, or the padded raw values).
    """
    dt = u.dtype.type
    if tails == "identity":
        d = 2.0 * B / M
        e = np.exp(u - u.max(axis=-1, keepdims=True))
        s = e / e.sum(axis=-1, keepdims=True)
        delta = np.empty(u.shape[:-1] + (M,), dtype=u.dtype)
        delta[..., :2] = dt(d)
        delta[..., -2:] = dt(d)
        delta[..., 2:M - 2] = dt(2.0 * B - 4.0 * d) * s
        theta0 = np.full(u.shape[:-1], -B, dtype=u.dtype)
        return delta, theta0, s
    pad = np.concatenate([[0], np.arange(M - 2), [M - 3]])
    raw = u[..., 1:][..., pad]
    delta = softplus(raw)
    theta0 = u[..., 0] - dt(math.log(2.0) * (M - 1) / 2.0)
    return delta, theta0, raw


def _bernstein(x, u, M, B, tails, vjp):
    """The Bernstein transformer on any leading shape: ``(z, l, f', residuals | None)``."""
    dt = x.dtype.type
    delta, theta0, aux = _bernstein_increments(u, M, B, tails)
    inside = np.abs(x) < dt(B)
    xc = np.where(inside, x, dt(0))
    v = (xc + dt(B)) / dt(2 * B)
    w = (dt(B) - xc) / dt(2 * B)
    b1 = _basis(v, w, M - 1)                                         # b_{j, M-1}
    bM = _basis(v, w, M)                                             # b_{i, M}
    tail_sums = np.cumsum(bM[..., ::-1], axis=-1)[..., ::-1][..., 1:]   # T_j = sum_{i>j} b_i
    c1 = dt(M / (2.0 * B))
    f_in = theta0 + np.sum(delta * tail_sums, axis=-1)
    d_in = c1 * np.sum(delta * b1, axis=-1)
    if tails == "identity":
        z = np.where(inside, f_in, x)
        fprime = np.where(inside, d_in, dt(1))
    else:
        s0, sM = c1 * delta[..., 0], c1 * delta[..., -1]
        top = theta0 + np.sum(delta, axis=-1)
        left = x <= dt(-B)
        z = np.where(inside, f_in, np.where(left, theta0 + s0 * (x + dt(B)), top + sM * (x - dt(B))))
        fprime = np.where(inside, d_in, np.where(left, s0, sM))
    ell = np.log(fprime)
    if not vjp:
        return z, ell, fprime, None
    b2 = _basis(v, w, M - 2) if M >= 2 else None
    c2 = dt(M * (M - 1) / (4.0 * B * B))
    d2_in = c2 * np.sum((delta[..., 1:] - delta[..., :-1]) * b2, axis=-1)
    return z, ell, fprime, (inside, x, delta, aux, b1, tail_sums, fprime, d2_in)


def _bernstein_pullback(res, z_bar, ell_bar, M, B, tails):
    """``(x_bar, u_bar)`` of :func:`_bernstein` (formulas in the class Notes)."""
    inside, x, delta, aux, b1, tail_sums, fprime, d2_in = res
    dt = x.dtype.type
    c1 = dt(M / (2.0 * B))
    zi = np.where(inside, z_bar, dt(0))
    li = np.where(inside, ell_bar, dt(0))
    delta_bar = zi[..., None] * tail_sums + (li * c1 / fprime)[..., None] * b1
    x_bar = np.where(inside, z_bar * fprime + ell_bar * d2_in / fprime,
                     z_bar * fprime if tails == "linear" else z_bar)
    u_bar = np.zeros(delta.shape[:-1] + ((M - 4) if tails == "identity" else (M - 1),),
                     dtype=x.dtype)
    if tails == "identity":
        s = aux
        g = dt(2.0 * B - 8.0 * B / M) * delta_bar[..., 2:M - 2]
        u_bar[...] = s * (g - np.sum(s * g, axis=-1, keepdims=True))
        return x_bar, u_bar
    left = ~inside & (x <= dt(-B))
    right = ~inside & ~left
    zl = np.where(left, z_bar, dt(0))
    zr = np.where(right, z_bar, dt(0))
    delta_bar[..., 0] += zl * c1 * (x + dt(B)) + np.where(left, ell_bar, dt(0)) / delta[..., 0]
    delta_bar += zr[..., None]
    delta_bar[..., -1] += zr * c1 * (x - dt(B)) + np.where(right, ell_bar, dt(0)) / delta[..., -1]
    raw_bar = delta_bar * sigmoid(aux)                               # softplus' = sigmoid
    pad = np.concatenate([[0], np.arange(M - 2), [M - 3]])
    r_bar = np.zeros(delta.shape[:-1] + (M - 2,), dtype=x.dtype)
    for k, j in enumerate(pad):                                      # scatter-add (M small)
        r_bar[..., j] += raw_bar[..., k]
    u_bar[..., 0] = z_bar
    u_bar[..., 1:] = r_bar
    return x_bar, u_bar


class BernsteinAutoregressive(MonotoneAutoregressive):
    r"""Masked autoregressive Bernstein-polynomial layer on ``[-B, B]`` (zuko's BPF).

    Density direction (``inverse``, one MADE pass), per coordinate, for ``|x| < B`` with
    ``v = (x + B) / (2B)``::

        z = f(x) = sum_{i=0}^{M} theta_i C(M, i) v^i (1 - v)^(M - i),
        theta_0 < theta_1 < ... < theta_M   (theta_i = theta_0 + Delta_0 + ... + Delta_{i-1})

    and outside the interval identity tails (``tails="identity"``, zuko's
    ``BoundedBernsteinTransform``, the default) or linear tails (``tails="linear"``, zuko's
    ``BernsteinTransform``).

    - identity: ``theta_0 = -B``, ``Delta = [d, d, S softmax(u), d, d]`` with ``d = 2B / M``,
      ``S = 2B - 4d`` (``M - 4`` raw values ``u``), so ``theta_M = B``, ``f(+-B) = +-B``,
      ``f'(+-B) = M d / (2B) = 1`` and ``f''(+-B) = 0``: the map joins the identity with two
      continuous derivatives. ``z = x`` for ``|x| >= B``.
    - linear: ``theta_0 = u_0 - log(2) (M - 1) / 2``, ``Delta = softplus(r)`` with
      ``r = (u_1, u_1, u_2, ..., u_{M-2}, u_{M-2})`` (first and last repeated, so
      ``f''(+-B) = 0``; ``M - 1`` raw values); beyond ``+-B`` the line with the boundary slope
      ``f'(-B) = M Delta_0 / (2B)``, ``f'(B) = M Delta_{M-1} / (2B)``.

    Parameters
    ----------
    dim : int
    degree : int, default 21
        ``M``, the polynomial's degree (at least 5 for identity tails, 3 for linear ones).
        zuko's ``BPF(degree=16)`` has 17 raw values per coordinate, i.e. ``M = 21`` identity
        (its ``degree`` counts raw values minus one; here it is the polynomial's degree).
    bound : float, default 5.0
        ``B`` (zuko's).
    tails : {"identity", "linear"}, default "identity"
    hidden, order, hidden_degrees, activation : MADE options (see :class:`refflow.nn.MADE`)
    context_dim : int, optional
    zero_last : bool, default False
    rng : None, int or numpy.random.Generator

    Notes
    -----
    Derivatives (``b_{j,n}`` the Bernstein basis of degree ``n``)::

        f'(x)  = (M / 2B) sum_{j<M} Delta_j b_{j,M-1}(v) > 0
        f''(x) = (M (M-1) / 4B^2) sum_{j<M-1} (Delta_{j+1} - Delta_j) b_{j,M-2}(v)

    and ``l = log f'(x)`` is the log-det of each coordinate (``inverse``: ``sum_i l_i``;
    ``forward``: its negative). Since ``f = theta_0 + sum_j Delta_j T_j(v)`` with
    ``T_j = sum_{i>j} b_{i,M}``, the density-direction pullback for ``(z_bar, l_bar)`` inside
    ``(-B, B)`` is::

        x_bar       = z_bar f' + l_bar f'' / f'
        Delta_bar_j = z_bar T_j + l_bar (M / 2B) b_{j,M-1} / f'

    then through the constraint: identity, ``u_bar = s * (G - <s, G>)`` with ``G = S
    Delta_bar[2:M-2]`` and ``s = softmax(u)``; linear, ``u_bar_0 = z_bar`` and the padded
    ``Delta_bar * sigmoid(r)`` summed back onto ``u_1..u_{M-2}``. In the tails: identity,
    ``x_bar = z_bar``, no parameter cotangent; linear (left), ``z = theta_0 + s_0 (x + B)``,
    ``l = log s_0``: ``x_bar = z_bar s_0``, ``u_bar_0 = z_bar``, ``Delta_bar_0 = z_bar M (x + B)
    / (2B) + l_bar / Delta_0`` (and symmetrically on the right, where ``z = theta_M + s_M (x -
    B)`` adds ``z_bar`` to every ``Delta_bar_j``).

    The sampling direction is closed form in the tails and, inside, the bracketed Newton
    iteration of :mod:`refflow.bijectors._monotone` on the known bracket ``[-B, B]``.

    References
    ----------
    Sick, Hothorn, Duerr, "Deep transformation models", 2020, arXiv:2004.00464.
    Arpogaus et al., "Short-Term Density Forecasting of Low-Voltage Load using
    Bernstein-Polynomial Normalizing Flows", 2022, arXiv:2204.13939.

    Examples
    --------
    >>> import numpy as np
    >>> from refflow import BernsteinAutoregressive
    >>> layer = BernsteinAutoregressive(2, degree=8, hidden=(8,), rng=0)
    >>> x = np.array([[0.3, -1.2], [7.0, 2.0]])       # 7 is beyond B = 5: identity tail
    >>> z, log_det = layer.inverse(x)
    >>> float(z[1, 0])
    7.0
    >>> x_back, _ = layer.forward(z)
    >>> bool(np.allclose(x_back, x, rtol=1e-12, atol=1e-12))
    True
    """

    def __init__(self, dim, *, degree=21, bound=5.0, tails="identity", hidden=(64, 64),
                 order="natural", hidden_degrees="cyclic", activation="relu", context_dim=None,
                 zero_last=False, rng=None):
        where = "BernsteinAutoregressive"
        self.tails = check_choice(tails, _TAILS, where, "tails")
        self.degree = check_int(degree, where, "degree", minimum=5 if tails == "identity" else 3)
        self.bound = check_positive(bound, where, "bound")
        n_params = self.degree - 4 if tails == "identity" else self.degree - 1
        super().__init__(dim, n_params, hidden, order, hidden_degrees, activation, context_dim,
                         zero_last, rng)

    def __repr__(self):
        return (f"BernsteinAutoregressive(dim={self.dim}, degree={self.degree}, "
                f"bound={self.bound}, tails={self.tails!r}, hidden={tuple(self.made.hidden)})")

    def _config(self):
        return dict(self._made_config(), degree=self.degree, bound=self.bound, tails=self.tails)

    @classmethod
    def _declare(cls, config):
        args = constructor_arguments(cls, config)
        tails = check_choice(args["tails"], _TAILS, cls.__name__, "tails")
        degree = check_int(args["degree"], cls.__name__, "degree",
                           minimum=5 if tails == "identity" else 3)
        return cls._monotone_declaration(args, degree - 4 if tails == "identity" else degree - 1)

    def _elements(self, x, theta, p, vjp):
        M, B, tails = self.degree, self.bound, self.tails
        z, ell, _, res = _bernstein(x, theta, M, B, tails, vjp)
        if not vjp:
            return z, ell, None

        def pullback(z_bar, ell_bar, need_params=True):
            x_bar, theta_bar = _bernstein_pullback(res, z_bar, ell_bar, M, B, tails)
            return x_bar, theta_bar, {}

        return z, ell, pullback

    def _scalar(self, i, x, theta_i, p):
        z, _, fprime, _ = _bernstein(x, theta_i, self.degree, self.bound, self.tails, False)
        return z, fprime

    def _input_knots(self, direction, v, context=None):
        """``(n, dim, 2)``: the points where the map leaves the polynomial, in the input space
        of ``direction`` (``+-B`` for ``inverse``, their images for ``forward``), for the
        registry's samplers (finite differences must not straddle them)."""
        B = self.bound
        if direction == "inverse" or self.tails == "identity":
            return np.broadcast_to(np.array([-B, B]), v.shape + (2,))
        x = self.forward(v, context)[0]
        theta = self.made(x, context)
        delta, theta0, _ = _bernstein_increments(theta, self.degree, B, self.tails)
        return np.stack([theta0, theta0 + delta.sum(axis=-1)], axis=-1)

    def _solve(self, i, z_i, theta_i, p):
        dt = z_i.dtype.type
        M, B, tails = self.degree, self.bound, self.tails
        delta, theta0, _ = _bernstein_increments(theta_i, M, B, tails)
        top = theta0 + delta.sum(axis=-1)
        x = np.empty_like(z_i)
        below, above = z_i <= theta0, z_i >= top
        if tails == "identity":
            x[below | above] = z_i[below | above]
        else:
            c1 = dt(M / (2.0 * B))
            x[below] = dt(-B) + (z_i[below] - theta0[below]) / (c1 * delta[below, 0])
            x[above] = dt(B) + (z_i[above] - top[above]) / (c1 * delta[above, -1])
        inner = np.flatnonzero(~(below | above))
        if inner.size:
            control = np.empty((inner.size, M + 1), dtype=z_i.dtype)
            control[:, 0] = theta0[inner]
            control[:, 1:] = theta0[inner, None] + np.cumsum(delta[inner], axis=1)
            x[inner] = kernel_solve(BERNSTEIN, z_i[inner], control, B,
                                    np.zeros(inner.size, dtype=z_i.dtype),
                                    lo=np.full(inner.size, -B, dtype=z_i.dtype),
                                    hi=np.full(inner.size, B, dtype=z_i.dtype),
                                    where="BernsteinAutoregressive.forward")
        return x
