r"""Seeded synthetic densities in 4 to 16 dimensions, each with an exact log-density.

Four sets, each a sampler ``name(n, *, dim=..., rng=None)`` and an exact ``log p(x)`` (through
``synthetic_log_prob(name, x, dim=...)``), built so that the density follows from a change of
variables of one-dimensional densities that are normalised in closed form:

``curve``
    A noisy curve (a curved one-dimensional manifold with Gaussian noise), dimension 4 by
    default: ``t ~ N(0, 1)``, ``x_0 = t``, ``x_k = A sin(w_k t + phi_k) + sigma e_k``.
``student_t``
    A heavy-tailed multivariate Student t, dimension 8, 3 degrees of freedom, with an AR(1)
    correlation ``rho^|i - j|``.
``skew_mixture``
    Multimodal: a four-component mixture, dimension 6, of rotated sinh-arcsinh (skewed,
    heavy- or light-tailed) product densities.
``scaled_ica``
    Scale heterogeneity: dimension 16, independent non-Gaussian sources (logistic, Gumbel,
    sinh-arcsinh, bimodal, Student t) mixed by a rotation, then feature ``j`` scaled by
    ``10^(-3 + 6 j / (dim - 1))`` (scales from 1e-3 to 1e3).

The parameters of each set (means, rotations, weights) are fixed constants of this module,
computed without random numbers; ``rng`` draws the sample only. Rotations are products of
Householder reflections with fixed vectors, so ``|det R| = 1`` exactly.

Examples
--------
>>> import numpy as np
>>> from refflow.data import synthetic, synthetic_log_prob
>>> x = synthetic("curve", 3, rng=0)
>>> x.shape, synthetic_log_prob("curve", x).shape
((3, 4), (3,))
"""

import inspect
import math

import numpy as np
from scipy import special

from .._validation import as_batch, check_int, check_n, check_real, check_rng

__all__ = ["SYNTHETIC", "synthetic", "synthetic_log_prob", "curve", "student_t", "skew_mixture",
           "scaled_ica"]

_LOG_2PI = math.log(2.0 * math.pi)
_LOG_2 = math.log(2.0)

#: Curve: the amplitude of the sines and the noise standard deviation.
_CURVE_AMPLITUDE = 1.5
#: Heavy tails: the AR(1) correlation between neighbouring features.
_T_RHO = 0.7
#: Mixture: weights, the means' offset per coordinate, and per-component sinh-arcsinh
#: skew ``epsilon``, tail ``delta`` (below 1: heavier than Gaussian) and scale.
_MIX_WEIGHTS = (0.4, 0.3, 0.2, 0.1)
_MIX_OFFSET = 1.5
_MIX_EPSILON = (-0.5, 0.5, 0.0, 0.3)
_MIX_DELTA = (0.8, 1.2, 1.0, 0.9)
_MIX_SCALE = (0.6, 0.8, 0.5, 0.7)
#: ICA: sources are cycled in this order; scales run from 10^-3 to 10^3.
_ICA_SOURCES = ("logistic", "gumbel", "sas", "bimodal", "t5")
_ICA_LOG10_SCALE = (-3.0, 3.0)
#: The bimodal source: 0.5 N(-m, s^2) + 0.5 N(m, s^2).
_BIMODAL_MEAN, _BIMODAL_STD = 1.2, 0.5
#: The sinh-arcsinh source's skew and tail parameters.
_SAS_EPSILON, _SAS_DELTA = 0.5, 0.7


# -------------------------------------------------------------------- fixed constructions
def _rotation(dim, salt):
    """A fixed orthogonal ``(dim, dim)`` matrix: the product of three Householder reflections
    ``I - 2 v v^T / |v|^2`` with ``v_j = cos((j + 1) * (k + 1.3 + salt))``, ``k = 0, 1, 2``
    (deterministic, no random numbers; ``|det| = 1`` exactly)."""
    q = np.eye(dim)
    j = np.arange(dim)
    for k in range(3):
        v = np.cos((j + 1.0) * (k + 1.3 + salt))
        q = q - 2.0 * np.outer(q @ v, v) / (v @ v)
    return q


def _mixture_means(dim):
    """Means of the four mixture components: ``1.5 h_c`` for the fixed sign patterns ``h_c``
    (all +, alternating, first half -, every third -)."""
    j = np.arange(dim)
    patterns = [np.ones(dim), np.where(j % 2 == 0, 1.0, -1.0), np.where(j < dim // 2, -1.0, 1.0),
                np.where(j % 3 == 0, -1.0, 1.0)]
    return [_MIX_OFFSET * h for h in patterns]


def _ica_scales(dim):
    low, high = _ICA_LOG10_SCALE
    return 10.0 ** np.linspace(low, high, dim)


# ---------------------------------------------------------------- one-dimensional densities
def _log_cosh(w):
    a = np.abs(w)
    return a + np.log1p(np.exp(-2.0 * a)) - _LOG_2


def _sas_sample(z, epsilon, delta):
    """Jones & Pewsey's sinh-arcsinh variable: ``x = sinh((asinh(z) + epsilon) / delta)``."""
    return np.sinh((np.arcsinh(z) + epsilon) / delta)


def _sas_log_prob(x, epsilon, delta):
    r"""``log p(x)`` of :func:`_sas_sample`: with ``w = delta asinh(x) - epsilon``, ``z = sinh w``,
    ``p(x) = phi(z) dz/dx = phi(sinh w) delta cosh(w) / sqrt(1 + x^2)``."""
    w = delta * np.arcsinh(x) - epsilon
    z = np.sinh(w)
    return -0.5 * (_LOG_2PI + z * z) + math.log(delta) + _log_cosh(w) - 0.5 * np.log1p(x * x)


def _source_sample(kind, n, gen):
    if kind == "logistic":
        return gen.logistic(size=n)
    if kind == "gumbel":
        return gen.gumbel(size=n)
    if kind == "sas":
        return _sas_sample(gen.standard_normal(n), _SAS_EPSILON, _SAS_DELTA)
    if kind == "bimodal":
        sign = np.where(gen.random(n) < 0.5, -1.0, 1.0)
        return sign * _BIMODAL_MEAN + _BIMODAL_STD * gen.standard_normal(n)
    if kind == "t5":
        return gen.standard_t(5.0, size=n)
    raise KeyError(kind)


def _source_log_prob(kind, s):
    if kind == "logistic":    # e^-s / (1 + e^-s)^2, symmetric: -|s| - 2 log1p(e^-|s|)
        a = np.abs(s)
        return -a - 2.0 * np.log1p(np.exp(-a))
    if kind == "gumbel":      # exp(-s - e^-s); below s ~ -709 log p is -inf, honestly
        with np.errstate(over="ignore"):
            return -s - np.exp(-s)
    if kind == "sas":
        return _sas_log_prob(s, _SAS_EPSILON, _SAS_DELTA)
    if kind == "bimodal":
        m, sd = _BIMODAL_MEAN, _BIMODAL_STD
        base = -0.5 * _LOG_2PI - math.log(sd) + math.log(0.5)
        return base + np.logaddexp(-0.5 * ((s - m) / sd) ** 2, -0.5 * ((s + m) / sd) ** 2)
    if kind == "t5":
        return _student_t_log_prob(s[:, None], 5.0, np.ones((1, 1)))
    raise KeyError(kind)


def _student_t_log_prob(x, df, corr_cholesky):
    r"""Multivariate Student t with location 0, scale matrix ``L L^T``, ``df`` degrees:
    ``log p = lgamma((nu + d) / 2) - lgamma(nu / 2) - d/2 log(nu pi) - log|det L|
    - (nu + d)/2 log1p(|L^{-1} x|^2 / nu)``."""
    from scipy.linalg import solve_triangular

    d = x.shape[1]
    u = solve_triangular(corr_cholesky, x.T, lower=True).T
    q = np.einsum("ij,ij->i", u, u)
    const = (special.gammaln(0.5 * (df + d)) - special.gammaln(0.5 * df)
             - 0.5 * d * math.log(df * math.pi) - np.sum(np.log(np.diag(corr_cholesky))))
    return const - 0.5 * (df + d) * np.log1p(q / df)


def _ar1_cholesky(dim):
    i = np.arange(dim)
    corr = _T_RHO ** np.abs(i[:, None] - i[None, :])
    return np.linalg.cholesky(corr)


# ----------------------------------------------------------------------------- the sets
def _check_dim(dim, where, minimum):
    return check_int(dim, where, "dim", minimum=minimum)


def curve(n, *, dim=4, noise=0.2, rng=None):
    r"""A noisy curve in ``dim`` dimensions: a curved 1-D manifold with Gaussian noise.

    ``t ~ N(0, 1)``, ``x_0 = t`` and, for ``k = 1, ..., dim - 1``,
    ``x_k = A sin(w_k t + phi_k) + sigma e_k`` with ``e_k ~ N(0, 1)``, ``A = 1.5``,
    ``w_k = 1 + floor((k - 1) / 2) / 2`` and ``phi_k = 0`` (k odd) or ``pi / 2`` (k even): a
    helix whose turns speed up along the curve.

    Parameters
    ----------
    n : int
    dim : int >= 2, default 4
    noise : float > 0, default 0.2
        ``sigma``.
    rng : int or numpy.random.Generator, optional

    Returns
    -------
    ndarray of shape (n, dim)

    Notes
    -----
    Exact density, a product of Gaussian conditionals:
    ``log p(x) = log N(x_0; 0, 1) + sum_k log N(x_k; A sin(w_k x_0 + phi_k), sigma^2)``.
    """
    n = check_n(n, "curve")
    dim = _check_dim(dim, "curve", 2)
    noise = check_real(noise, "curve", "noise", low=0.0, low_open=True)
    gen = check_rng(rng, "curve")
    t = gen.standard_normal(n)
    x = np.empty((n, dim))
    x[:, 0] = t
    w, phi = _curve_frequencies(dim)
    x[:, 1:] = _CURVE_AMPLITUDE * np.sin(t[:, None] * w + phi) + noise * gen.standard_normal(
        (n, dim - 1))
    return x


def _curve_frequencies(dim):
    k = np.arange(1, dim)
    return 1.0 + 0.5 * ((k - 1) // 2), np.where(k % 2 == 1, 0.0, 0.5 * math.pi)


def _curve_log_prob(x, dim=4, noise=0.2):
    noise = check_real(noise, "synthetic_log_prob", "noise", low=0.0, low_open=True)
    t = x[:, 0]
    w, phi = _curve_frequencies(dim)
    r = (x[:, 1:] - _CURVE_AMPLITUDE * np.sin(t[:, None] * w + phi)) / noise
    return (-0.5 * (_LOG_2PI + t * t)
            - np.sum(0.5 * r * r, axis=1) - (dim - 1) * (0.5 * _LOG_2PI + math.log(noise)))


def student_t(n, *, dim=8, df=3.0, rng=None):
    r"""A heavy-tailed multivariate Student t with an AR(1) correlation.

    ``x = L g / sqrt(v / df)`` with ``g ~ N(0, I)``, ``v ~ chi^2(df)`` and ``L L^T`` the matrix
    ``rho^|i - j|``, ``rho = 0.7``: a Student t with location 0, scale matrix ``L L^T`` and
    ``df`` degrees of freedom (finite variance only for ``df > 2``).

    Parameters
    ----------
    n : int
    dim : int >= 1, default 8
    df : float > 0, default 3.0
    rng : int or numpy.random.Generator, optional

    Returns
    -------
    ndarray of shape (n, dim)

    Notes
    -----
    ``log p(x) = lgamma((df + d)/2) - lgamma(df/2) - (d/2) log(df pi) - log|det L|
    - ((df + d)/2) log(1 + |L^{-1} x|^2 / df)``.
    """
    n = check_n(n, "student_t")
    dim = _check_dim(dim, "student_t", 1)
    df = check_real(df, "student_t", "df", low=0.0, low_open=True)
    gen = check_rng(rng, "student_t")
    g = gen.standard_normal((n, dim)) @ _ar1_cholesky(dim).T
    v = gen.chisquare(df, size=n)
    return g / np.sqrt(v / df)[:, None]


def _student_t_set_log_prob(x, dim=8, df=3.0):
    df = check_real(df, "synthetic_log_prob", "df", low=0.0, low_open=True)
    return _student_t_log_prob(x, df, _ar1_cholesky(dim))


def skew_mixture(n, *, dim=6, rng=None):
    r"""A multimodal mixture of four rotated sinh-arcsinh product densities.

    Component ``c`` (weights 0.4, 0.3, 0.2, 0.1) draws ``y_j = mu_cj + s_c S(z_j; epsilon_c,
    delta_c)`` with ``z ~ N(0, I)`` and ``S(z; e, d) = sinh((asinh z + e) / d)`` (Jones and
    Pewsey's sinh-arcsinh variable: skew ``e``, tails heavier than Gaussian for ``d < 1``);
    then ``x = R y`` with ``R`` a fixed rotation. The means ``mu_c`` are fixed sign patterns times 1.5
    (all +, alternating, first half -, every third -) and ``s_c`` = 0.6, 0.8, 0.5, 0.7.

    Parameters
    ----------
    n : int
    dim : int >= 2, default 6
    rng : int or numpy.random.Generator, optional

    Returns
    -------
    ndarray of shape (n, dim)

    Notes
    -----
    With ``y = R^T x``: ``log p(x) = logsumexp_c [log w_c + sum_j (log p_S((y_j - mu_cj) / s_c;
    epsilon_c, delta_c) - log s_c)]`` where ``log p_S(u; e, d) = log phi(sinh w) + log d +
    log cosh w - log(1 + u^2) / 2``, ``w = d asinh(u) - e``.

    References
    ----------
    Jones, M. C. and Pewsey, A., "Sinh-arcsinh distributions", Biometrika 96(4), 2009.
    """
    n = check_n(n, "skew_mixture")
    dim = _check_dim(dim, "skew_mixture", 2)
    gen = check_rng(rng, "skew_mixture")
    comp = gen.choice(len(_MIX_WEIGHTS), size=n, p=_MIX_WEIGHTS)
    z = gen.standard_normal((n, dim))
    y = np.empty((n, dim))
    for c, mu in enumerate(_mixture_means(dim)):
        rows = comp == c
        y[rows] = mu + _MIX_SCALE[c] * _sas_sample(z[rows], _MIX_EPSILON[c], _MIX_DELTA[c])
    return y @ _rotation(dim, 0.0).T


def _skew_mixture_log_prob(x, dim=6):
    y = x @ _rotation(dim, 0.0)
    terms = []
    for c, mu in enumerate(_mixture_means(dim)):
        u = (y - mu) / _MIX_SCALE[c]
        lp = np.sum(_sas_log_prob(u, _MIX_EPSILON[c], _MIX_DELTA[c]), axis=1)
        terms.append(math.log(_MIX_WEIGHTS[c]) + lp - dim * math.log(_MIX_SCALE[c]))
    return special.logsumexp(np.stack(terms), axis=0)


def scaled_ica(n, *, dim=16, rng=None):
    r"""Independent non-Gaussian sources, rotated, with feature scales from 1e-3 to 1e3.

    ``s_j`` independent, of the kinds logistic, Gumbel, sinh-arcsinh (``epsilon = 0.5``,
    ``delta = 0.7``: skewed, heavy-tailed), bimodal ``0.5 N(-1.2, 0.5^2) + 0.5 N(1.2, 0.5^2)``
    and Student t with 5 degrees of freedom, cycled over ``j``; ``x = D R s`` with ``R`` a
    fixed rotation and ``D = diag(10^(-3 + 6 j / (dim - 1)))``.

    Parameters
    ----------
    n : int
    dim : int >= 2, default 16
    rng : int or numpy.random.Generator, optional

    Returns
    -------
    ndarray of shape (n, dim)

    Notes
    -----
    ``log p(x) = sum_j log p_j((R^T D^{-1} x)_j) - sum_j log D_jj`` (``|det R| = 1``).
    """
    n = check_n(n, "scaled_ica")
    dim = _check_dim(dim, "scaled_ica", 2)
    gen = check_rng(rng, "scaled_ica")
    s = np.empty((n, dim))
    for j in range(dim):
        s[:, j] = _source_sample(_ICA_SOURCES[j % len(_ICA_SOURCES)], n, gen)
    return (s @ _rotation(dim, 0.5).T) * _ica_scales(dim)


def _scaled_ica_log_prob(x, dim=16):
    scales = _ica_scales(dim)
    s = (x / scales) @ _rotation(dim, 0.5)
    lp = -np.sum(np.log(scales)) * np.ones(x.shape[0])
    for j in range(dim):
        lp = lp + _source_log_prob(_ICA_SOURCES[j % len(_ICA_SOURCES)], s[:, j])
    return lp


_SAMPLERS = {"curve": curve, "student_t": student_t, "skew_mixture": skew_mixture,
             "scaled_ica": scaled_ica}
_LOG_PROBS = {"curve": _curve_log_prob, "student_t": _student_t_set_log_prob,
              "skew_mixture": _skew_mixture_log_prob, "scaled_ica": _scaled_ica_log_prob}
#: The names of the synthetic sets.
SYNTHETIC = tuple(_SAMPLERS)


def _name(name, where):
    if not isinstance(name, str):
        raise TypeError(f"{where}: the set's name must be a str, got {type(name).__name__}")
    if name not in _SAMPLERS:
        raise ValueError(f"{where}: unknown synthetic set {name!r}; valid names: "
                         f"{', '.join(SYNTHETIC)}")
    return name


def _params(name, params, where):
    signature = inspect.signature(_SAMPLERS[name]).parameters
    allowed = [p for p in signature if p not in ("n", "rng")]
    for key in params:
        if key not in allowed:
            raise TypeError(f"{where}: unexpected parameter {key!r} for the set {name!r}; its "
                            f"parameters are: {', '.join(allowed)}")
    full = {p: signature[p].default for p in allowed}
    full.update(params)
    return full


def synthetic(name, n, *, rng=None, **params):
    """Draw ``n`` rows from the synthetic set ``name`` (one of ``SYNTHETIC``).

    Parameters
    ----------
    name : str
        ``"curve"``, ``"student_t"``, ``"skew_mixture"`` or ``"scaled_ica"``.
    n : int
    rng : int or numpy.random.Generator, optional
    **params
        The set's own parameters (``dim``, and ``noise`` for ``curve``, ``df`` for
        ``student_t``).

    Returns
    -------
    ndarray of shape (n, dim), float64

    Examples
    --------
    >>> synthetic("scaled_ica", 2, rng=0, dim=4).shape
    (2, 4)
    """
    name = _name(name, "synthetic")
    _params(name, params, "synthetic")
    return _SAMPLERS[name](n, rng=rng, **params)


def synthetic_log_prob(name, x, **params):
    """Exact ``log p(x)`` of the set ``name`` with the sampler's parameters ``params``.

    Parameters
    ----------
    name : str
        One of ``SYNTHETIC``.
    x : array_like of shape (batch, dim) or (dim,)
    **params
        As for :func:`synthetic` (the same defaults); ``dim`` must be the width of ``x``.

    Returns
    -------
    ndarray of shape (batch,) or float

    Examples
    --------
    >>> import numpy as np
    >>> float(np.round(synthetic_log_prob("student_t", np.zeros(1), dim=1, df=1.0), 6))  # Cauchy
    -1.14473
    """
    where = "synthetic_log_prob"
    name = _name(name, where)
    full = _params(name, params, where)
    full["dim"] = _check_dim(full["dim"], where, 1 if name == "student_t" else 2)
    x2, was_1d = as_batch(x, full["dim"], where, "x")
    lp = _LOG_PROBS[name](np.asarray(x2, dtype=np.float64), **full)
    return lp[0] if was_1d else lp
