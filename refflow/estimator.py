r"""``FlowDensity``: a normalizing flow with scikit-learn's density-estimator surface.

Three lines fit a density, score points and draw samples::

    model = FlowDensity(flow="nsf", random_state=0).fit(X)
    log_density = model.score_samples(X_new)     # (n,) log q(x), in the units of X
    X_gen = model.sample(100, random_state=1)

scikit-learn is not needed: the estimator follows its conventions (``__init__`` only stores
arguments, ``fit`` returns ``self``, fitted attributes end in ``_``, ``get_params`` /
``set_params``, ``NotFittedError`` before ``fit``, ``feature_names_in_`` from a DataFrame) and
passes ``sklearn.utils.estimator_checks.check_estimator``, importing scikit-learn only where its
machinery asks for it (``__sklearn_tags__``, the not-fitted error).
"""

import copy
import inspect
import math
import numbers
import sys
import warnings

import numpy as np

from ._dask import is_dask_array
from ._exact import CrossMoments, Moments, exact_mean
from ._rows import (Standardized, Whitened, covariance, out_of_core, rotate, rows_of, scan,
                    whiten)
from ._validation import (check_batch_size, check_bool, check_choice, check_hidden, check_int,
                          check_option, check_positive, check_real, check_rng, empty_output)
from .bijectors import Affine, Chain, LULinear
from .bijectors.linear import orthogonal_lu
from ._math import logsumexp_rows, softplus_inverse
from .distributions import (DEFAULT_BATCH_SIZE, DiagGaussianMixture, DiagStudentTMixture, Flow,
                            StandardNormal, StudentT)
from .flows import BUILDERS
from . import io
from .io.spec import UNBOUNDED, combine, declaration, declare, register
from .training import ProgressLine
from .training.loop import History, TrainingDiverged, fit

__all__ = ["FlowDensity", "blend_log_likelihood", "blend_weights"]

#: The families ``flow="auto"`` fits, in order (the first wins a tie); see DEVELOPERS.md,
#: "FlowDensity's defaults", for the evidence.
AUTO_CANDIDATES = ("maf", "nsf")
#: Data of at most this many features, where fits are cheapest, get more by default: weight
#: averaging (``average="auto"``) and up to ``MIXTURE_MAX_COMPONENTS_LOW_DIM`` components in a
#: mixture base's start (DEVELOPERS.md, "FlowDensity's defaults", sixth round).
LOW_DIM_FEATURES = 2
#: ``whiten="auto"``: on at most this many rows (fits of seconds) each candidate is fitted both
#: on the whitened and on the merely standardised rows, and the better validation likelihood
#: is kept; on more rows the whitened fit alone (DEVELOPERS.md, "FlowDensity's defaults",
#: seventh round).
WHITEN_CHOICE_MAX_ROWS = 5000
#: The suffix of an unwhitened candidate's name in ``candidate_scores_``.
_UNWHITENED = " (unwhitened)"
#: ``rotation="auto"``: the whitened rows are rotated to their independent components on at
#: least this many features (and more than ``WHITEN_CHOICE_MAX_ROWS`` rows), and
#: ``flow="auto"`` then also fits the families of ``ROTATED_CANDIDATES`` to the rotated rows
#: (DEVELOPERS.md, "FlowDensity's defaults", eighth round).
ICA_MIN_FEATURES = 5
ROTATED_CANDIDATES = ("gf",)
_ROTATIONS = ("auto", "ica")
#: FastICA on at most this many whitened rows, and this many bytes of them (evenly spaced, no
#: random draw; on 10,000 of scaled_ica's 20,000 the rotation was rougher and the gf fit 0.07
#: nats worse), for at most this many fixed-point steps, to this tolerance on the rows'
#: movement. The bytes bound what a streamed fit gathers (100,000 rows up to 41 features).
_ICA_ROWS = 100000
_ICA_BYTES = 32 << 20
_ICA_MAX_ITER = 200
_ICA_TOL = 1e-8
#: ``epochs="auto"`` and ``patience="auto"``: the training length on data of at most
#: ``LOW_DIM_FEATURES`` features (fits of seconds per epoch that were still improving at the
#: 100th epoch) and above (DEVELOPERS.md, "FlowDensity's defaults", seventh round).
EPOCHS_LOW_DIM, PATIENCE_LOW_DIM = 200, 20
EPOCHS, PATIENCE = 100, 10
#: Learning-rate schedules ``FlowDensity`` accepts besides None (``refflow.training.fit``'s
#: names).
_SCHEDULES = ("plateau", "cosine")
#: Base distributions ``FlowDensity`` accepts (``base=``).
BASES = ("gaussian", "student_t", "mixture", "t_mixture")
#: Rows (at most, evenly spaced) on which a Student t or mixture base is started by maximum
#: likelihood; it is a start (training refines it), so a bounded subsample is enough.
_T_START_ROWS = 10000
#: Bounds of the Student t start: ``df`` in [1, 1000] (1 is the Cauchy; beyond 1000 the t is
#: a normal to within 1e-3 nats per coordinate near the mode, and softplus^-1 = identity there),
#: ``log_scale`` in [-7, 7] (the coordinates are standardised: a scale outside [1e-3, 1e3]
#: would mean a point mass or an empty set, not a tail).
_T_DF_BOUNDS = (1.0, 1000.0)
_T_LOG_SCALE_BOUNDS = (-7.0, 7.0)
#: base="mixture" and "t_mixture": the most components BIC chooses among (on data of at most
#: ``LOW_DIM_FEATURES`` features, and above), the variance added to every component's (in the
#: base space's units, as scikit-learn's ``reg_covar``), and EM's limits.
MIXTURE_MAX_COMPONENTS_LOW_DIM = 40
MIXTURE_MAX_COMPONENTS = 20
_MIX_VAR_FLOOR = 1e-6
_MIX_MAX_ITER = 200
_MIX_TOL = 1e-7
#: The rows (at most, evenly spaced) on which BIC chooses k, and the values of k in a row, after
#: the best so far, at which the scan stops.
_MIX_SCAN_ROWS = 4000
_BIC_PATIENCE = 3
#: blend: the most components of the full-covariance Gaussian mixture beside the flows
#: (the density suite's GaussianMixture baseline scans 1..30), and the weights' EM limits.
BLEND_MAX_COMPONENTS = 30
#: blend: the mixture is fitted to at most this many training rows (evenly spaced), so that a
#: streamed source is never gathered whole.
BLEND_MAX_ROWS = 20000
_BLEND_TOL = 1e-10
_BLEND_SCAN_TOL = 1e-3
_BLEND_BIC_PATIENCE = 5
_BLEND_REFITS = 3
_BLEND_MIN_WEIGHT = 1e-9
#: blend_log_likelihood and a file's blend entry: how far from 1 the weights' sum may be
#: (rounding of a normalisation).
_BLEND_SUM_TOL = 1e-9
_BLEND_MAX_ITER = 10000
#: base="t_mixture": the degrees of freedom its start chooses among (1, the Cauchy, to 1000, a
#: normal near the mode; 25 values evenly spaced in log nu).
_T_MIX_DF_GRID = tuple(float(v) for v in np.geomspace(1.0, 1000.0, 25))
#: base="t_mixture": the most degrees of freedom of its broad component (tails ``|t|^-11``: a
#: row 100 scales out costs it about 50 nats a coordinate, where a normal costs 5,000).
_T_MIX_BROAD_DF = 10.0
_LOG_2PI = math.log(2.0 * math.pi)

#: Coupling layouts cannot split one feature; these autoregressive layouts replace them.
_ONE_FEATURE = {"realnvp": "maf", "glow": "maf", "nsf-coupling": "nsf"}
#: Builder options that FlowDensity sets itself, with where to set them instead.
_RESERVED = {"rng": "random_state", "hidden": "hidden", "n_layers": "n_layers",
             "context_dim": None}
#: Modules of the data-frame libraries whose column names become ``feature_names_in_``.
_FRAME_MODULES = ("pandas", "polars", "modin", "cudf")
#: Seconds between redraws of the progress line without tqdm.
_PROGRESS_INTERVAL = 0.5


class _NotFittedError(ValueError, AttributeError):
    """Raised before ``fit`` when scikit-learn is not installed (as its ``NotFittedError``)."""


def _not_fitted_error(message):
    try:
        from sklearn.exceptions import NotFittedError
    except ImportError:  # scikit-learn is optional
        NotFittedError = _NotFittedError
    return NotFittedError(message)


# ----------------------------------------------------------------------------- validation
def _generator(random_state, where):
    """A Generator from None, an int seed, a Generator or a legacy ``RandomState``."""
    if isinstance(random_state, np.random.RandomState):
        # scikit-learn users pass RandomState objects: draw a seed from it (consuming it).
        return np.random.default_rng(random_state.randint(0, 2 ** 32 - 1, dtype=np.uint64))
    return check_rng(random_state, f"{where}: random_state")


def _is_sparse(X):
    try:
        import scipy.sparse
    except ImportError:  # pragma: no cover - scipy is a dependency
        return False
    return scipy.sparse.issparse(X)


def _feature_names(X):
    """The column names of a data frame as an object array, as scikit-learn reads them
    (``sklearn.utils.validation._get_feature_names``): all-str names are returned, names of
    other types give None, a mix of str and other types raises its ``TypeError``."""
    if type(X).__module__.partition(".")[0] not in _FRAME_MODULES or getattr(X, "ndim", 2) != 2:
        return None
    try:
        names = np.asarray(list(X.columns), dtype=object)
    except (AttributeError, TypeError):
        return None
    if len(names) == 0:
        return None
    types = sorted(t.__qualname__ for t in set(type(v) for v in names))
    if len(types) > 1 and "str" in types:
        raise TypeError(
            "Feature names are only supported if all input features have string names, "
            f"but your input has {types} as feature name / column name types. "
            "If you want feature names to be stored and validated, you must convert "
            "them all to strings, by using X.columns = X.columns.astype(str) for "
            "example. Otherwise you can remove feature / column names from your input "
            "data, or convert them all to a non-string data type.")
    if len(types) == 1 and types[0] == "str":
        return names
    return None


def _names_mismatch(fitted, given, what="feature names"):
    """scikit-learn's message for column names that differ from those seen in ``fit``."""
    message = f"The {what} should match those that were passed during fit.\n"
    unexpected = sorted(set(given) - set(fitted))
    missing = sorted(set(fitted) - set(given))

    def listing(names):
        out = ""
        for i, name in enumerate(names):
            if i >= 5:
                out += "- ...\n"
                break
            out += f"- {name}\n"
        return out

    if unexpected:
        message += f"{what[0].upper()}{what[1:]} unseen at fit time:\n" + listing(unexpected)
    if missing:
        message += f"{what[0].upper()}{what[1:]} seen at fit time, yet now missing:\n" + \
            listing(missing)
    if not missing and not unexpected:
        message += f"{what[0].upper()}{what[1:]} must be in the same order as they were in fit.\n"
    return message


def _check_X(X, where, n_features=None, name="X", expecting="features"):
    """``X`` as a C-contiguous float64 ``(n_samples, n_features)`` array, checked as sklearn
    checks it (and with its messages, which its estimator checks look for)."""
    if _is_sparse(X):
        raise TypeError(f"{where}: sparse input is not supported (a flow models a dense "
                        f"density); convert it with {name}.toarray()")
    try:
        arr = np.asarray(X)
    except Exception as exc:  # ragged nested lists and the like
        raise ValueError(f"{where}: {name} could not be converted to an array ({exc})") from None
    kind = arr.dtype.kind
    if kind == "c":
        raise ValueError(f"{where}: Complex data not supported; {name} must be real, got dtype "
                         f"{arr.dtype}")
    if kind == "O":
        # Python numbers (or numeric strings) in an object array convert as sklearn's
        # check_array converts them; anything else raises float()'s own TypeError/ValueError.
        try:
            arr = arr.astype(np.float64)
        except TypeError as exc:
            raise TypeError(f"{where}: {name} must hold numbers: {exc}") from None
        except ValueError as exc:
            raise ValueError(f"{where}: {name} must hold numbers: {exc}") from None
    elif kind not in "biuf":
        raise ValueError(f"{where}: {name} must be a real numeric array, got dtype {arr.dtype}")
    if arr.ndim != 2:
        hint = ""
        if arr.ndim == 1:
            hint = (" Reshape your data either using array.reshape(-1, 1) if your data has a "
                    "single feature or array.reshape(1, -1) if it contains a single sample.")
        raise ValueError(f"{where}: Expected 2D array, got {arr.ndim}D array instead "
                         f"(shape {arr.shape}).{hint}")
    if arr.shape[0] < 1:
        raise ValueError(f"{where}: Found array with 0 sample(s) (shape={arr.shape}) while a "
                         f"minimum of 1 is required.")
    if arr.shape[1] < 1:
        raise ValueError(f"{where}: Found array with 0 feature(s) (shape={arr.shape}) while a "
                         f"minimum of 1 is required.")
    arr = np.ascontiguousarray(arr, dtype=np.float64)
    finite = np.isfinite(arr)
    if not finite.all():
        row, col = (int(i) for i in np.argwhere(~finite)[0])
        raise ValueError(f"{where}: Input {name} contains NaN or infinity ({int((~finite).sum())} "
                         f"value(s), the first at row {row}, column {col})")
    if n_features is not None and arr.shape[1] != n_features:
        raise ValueError(f"{where}: {name} has {arr.shape[1]} features, but FlowDensity is "
                         f"expecting {n_features} {expecting} as input.")
    return arr


def _standardization(moments):
    """Training mean and standard deviation from the exact column sums of
    :class:`refflow._exact.Moments`; a constant feature gets scale 1.

    Both are correctly rounded (exact sums, one rounding), so they do not depend on the order
    of the rows or on how the data is split into chunks: an out-of-core fit gets the very
    statistics of the in-memory one. A feature counts as constant when its variance is within
    the rounding error of computing it in float64, ``var <= n eps var + (n eps mean)^2``
    (scikit-learn's ``StandardScaler`` test, evaluated exactly), so that a column of identical
    values is not blown up by a spread of a few ulps.
    """
    return moments.mean(), np.where(moments.constant(), 1.0, moments.std())


def _checked_scale(moments, where, name):
    """``(mean, scale)``, refusing what would not survive a save and load."""
    mean, scale = _standardization(moments)
    # A subnormal scale fits, but the saved map's exp(-log(scale)) then overflows, so every
    # later score_samples would fail: refuse it here, as overflowing data is.
    tiny = scale < np.finfo(np.float64).tiny
    if tiny.any():
        j = int(np.argmax(tiny))
        raise ValueError(f"{where}: {'' if name == 'X' else name + ' '}feature {j} has standard "
                         f"deviation {scale[j]:.3g}, below float64's normal range (its reciprocal "
                         f"overflows); rescale {name} (e.g. multiply it by a large constant)")
    # fl((x - mean) / scale) is monotone in x: finite at each column's extremes means finite
    # everywhere (|x - mean| beyond float64 happens for data near 1e308)
    with np.errstate(over="ignore", invalid="ignore"):
        ends = (np.stack([moments.low, moments.high]) - mean) / scale
    if not np.isfinite(ends).all():
        raise ValueError(f"{where}: {name} - mean({name}) overflows float64; rescale {name} "
                         f"(e.g. divide it by a large constant)")
    return mean, scale


def _checked_standardization(X, where, name):
    """``(mean, scale, X_standardised)`` of an in-memory ``X``."""
    mean, scale = _checked_scale(Moments(X.shape[1]).add(X), where, name)
    with np.errstate(over="ignore", invalid="ignore"):
        standardised = (X - mean) / scale
    return mean, scale, standardised


#: Ridge added to a correlation matrix whose Cholesky factorisation fails (collinear or
#: constant features), as a multiple of its mean diagonal; raised tenfold until it succeeds.
_WHITEN_RIDGE = 1e-10


def _whitening(cov):
    """Lower-triangular ``C`` with ``C C^T = cov``, the population covariance of the
    standardised rows (:func:`refflow._rows.covariance`: exact sums, rounded once, so that the
    same data in memory, memory-mapped or in dask chunks gives the same ``C``).

    A feature of zero variance gets variance 1 and no correlation (it is left as it is);
    when the factorisation fails (collinear features), a ridge of ``1e-10`` times the mean
    variance is added, and raised tenfold until it succeeds.
    """
    cov = np.array(cov, dtype=np.float64)
    zero = np.diag(cov) <= 0
    if zero.any():
        cov[zero, :] = 0.0
        cov[:, zero] = 0.0
        cov[zero, zero] = 1.0
    ridge = _WHITEN_RIDGE * float(np.mean(np.diag(cov)))
    eye = np.eye(cov.shape[0])
    while True:
        try:
            return np.linalg.cholesky(cov)
        except np.linalg.LinAlgError:
            cov = cov + ridge * eye
            ridge *= 10.0


def _whitening_layer(C):
    """``LULinear`` with forward ``x = C z`` for a lower-triangular ``C`` with positive
    diagonal: ``W = L U`` with ``L = C diag(C)^{-1}`` (unit lower) and ``U = diag(C)``."""
    dim = C.shape[0]
    layer = LULinear(dim)
    rows, cols = np.tril_indices(dim, -1)
    diag = np.diag(C)
    layer.params["lower_entries"] = C[rows, cols] / diag[cols]
    layer.params["unconstrained_upper_diag"] = np.log(diag)
    return layer


def _evenly_spaced(n, m):
    """Indices of ``m <= n`` rows evenly spaced over ``n`` (``floor(i n / m)``): a sample of
    the rows with no random draw."""
    return (np.arange(m, dtype=np.int64) * n) // m


def _ica_rotation(w):
    """Orthogonal ``Q`` whose rows are the independent directions of the whitened rows ``w``
    (``u = Q w`` as independent as FastICA makes them): symmetric FastICA with the log-cosh
    contrast, ``g = tanh``, started at the identity (no random draw).

    Hyvarinen's (1999) fixed-point step for every row ``b_i`` of ``B`` at once, then the
    symmetric decorrelation::

        B <- E[g(B w) w^T] - diag(E[g'(B w)]) B,    g'(y) = 1 - tanh(y)^2
        B <- (B B^T)^{-1/2} B                       (eigendecomposition of B B^T)

    until no row turns by more than ``_ICA_TOL`` (``max_i |1 - |<b_i', b_i>|| < tol``) or
    after ``_ICA_MAX_ITER`` steps. A step whose ``B B^T`` is singular or not finite (fewer
    rows than features, a constant feature) ends the iteration at the last orthogonal ``B``.
    The rows of ``Q`` are then negated where needed so that ``Q^T = P L U`` (partial
    pivoting) has ``diag U > 0`` (:func:`refflow.bijectors.linear.orthogonal_lu`'s signs):
    the sign of a component is arbitrary.

    Hyvarinen, A., "Fast and robust fixed-point algorithms for independent component
    analysis", IEEE Transactions on Neural Networks 10(3), 1999.
    """
    n, dim = w.shape
    B = np.eye(dim)
    with np.errstate(all="ignore"):
        for _ in range(_ICA_MAX_ITER):
            g = np.tanh(w @ B.T)
            step = (g.T @ w) / n - np.mean(1.0 - g * g, axis=0)[:, None] * B
            if not np.isfinite(step).all():
                break
            values, vectors = np.linalg.eigh(step @ step.T)
            if not values[0] > 1e-12 * values[-1]:
                break
            new = (vectors / np.sqrt(values)) @ vectors.T @ step
            moved = np.max(np.abs(1.0 - np.abs(np.sum(new * B, axis=1))))
            B = new
            if moved < _ICA_TOL:
                break
    return B * orthogonal_lu(B.T)[2][:, None]


def _rotation_layer(Q):
    """``LULinear`` with forward ``w = Q^T u`` for an orthogonal ``Q`` whose ``Q^T = P L U``
    has ``diag U > 0``, as :func:`_ica_rotation` leaves it (its signs from
    :func:`refflow.bijectors.linear.orthogonal_lu` are then all 1), and its ``log|det| =
    sum_i log U_ii`` (zero up to rounding)."""
    perm, params, _ = orthogonal_lu(Q.T)
    layer = LULinear(Q.shape[0], permutation=perm)
    layer.params.update(params)
    return layer, float(np.sum(params["unconstrained_upper_diag"]))


def _streamed_input(X, where, name, n_features=None):
    """``X`` (a memmap or dask array, or an array beside one) as a checked row source:
    ``(rows, exact column moments)`` from one pass."""
    if not out_of_core(X):
        X = _check_X(X, where, n_features, name=name)
    rows = rows_of(X, where, name, n_features)
    return rows, scan(rows, where, name)


def _show_progress(progress):
    """``progress`` (True, False, None or "auto") resolved: "auto"/None mean a terminal."""
    if progress is True or progress is False:
        return progress
    try:
        return bool(sys.stderr is not None and sys.stderr.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class _RowProgress(ProgressLine):
    """Rows scored, transformed or sampled so far (tqdm, or one stderr line)."""

    def __init__(self, where, total):
        super().__init__(where, total, _PROGRESS_INTERVAL, unit="row")
        self.total, self.done = total, 0

    def update(self, rows):
        self.done += rows
        if self.bar is not None:
            self.bar.update(rows)
        elif self.due():
            self.draw(f"{self.done:,}/{self.total:,} rows")


class _NoProgress:
    def update(self, rows):
        pass

    def close(self):
        pass


def _row_chunks(n, batch_size):
    """The row ranges ``Flow.log_prob`` and ``Flow.sample`` use for ``n`` rows in chunks of at
    most ``batch_size``: one range, or ``k = ceil(n / batch_size)`` balanced ones (so that the
    results here are bit for bit those of the flow's own chunked calls)."""
    if n <= batch_size:
        return [(0, n)]
    k = -(-n // batch_size)
    return [((n * i) // k, (n * (i + 1)) // k) for i in range(k)]


def _out_of_range(exc):
    """True for the flow's "not representable in float64" errors (a row too far out)."""
    return "representable" in str(exc)


def _student_t_start(z):
    r"""Per-coordinate maximum-likelihood Student t of the rows ``z`` (``(n, d)``):
    ``(df, loc, log_scale)``, each ``(d,)``.

    Maximises ``mean_n log p(z_n)`` of :class:`refflow.StudentT` (independent coordinates, so
    one joint problem of ``3 d`` parameters that separates) by L-BFGS-B with the
    distribution's own hand-derived gradient (its ``log_prob_vjp``, the digamma formula of
    ``d log p / d nu``), in its parameters ``(loc, log_scale, raw_df = softplus^-1(df))``, from
    the median and ``1.4826 MAD`` (the normal-consistent scale) and ``df = 10``, within
    ``df in [1, 1000]`` and ``log_scale in [-7, 7]``. Deterministic: no random draws.
    """
    from scipy.optimize import minimize

    n, d = z.shape
    base = StudentT(d, df=10.0)
    loc0 = np.median(z, axis=0)
    mad = 1.4826 * np.median(np.abs(z - loc0), axis=0)
    log_scale0 = np.clip(np.log(np.where(mad > 0, mad, 1.0)), *_T_LOG_SCALE_BOUNDS)
    raw0 = np.asarray(base.params["raw_df"], dtype=np.float64)
    theta0 = np.concatenate([loc0, log_scale0, raw0])
    raw_bounds = [float(softplus_inverse(v)) for v in _T_DF_BOUNDS]
    bounds = [(None, None)] * d + [_T_LOG_SCALE_BOUNDS] * d + [tuple(raw_bounds)] * d
    seed = np.full(n, -1.0 / n)   # d(-mean log p)/d(log p_n)

    def objective(theta):
        base.params.update({"loc": theta[:d], "log_scale": theta[d:2 * d],
                            "raw_df": theta[2 * d:]})
        lp, pullback = base.log_prob_vjp(z)
        _, grads = pullback(seed)
        return -float(np.mean(lp)), np.concatenate([grads["loc"], grads["log_scale"],
                                                    grads["raw_df"]])

    result = minimize(objective, theta0, jac=True, method="L-BFGS-B", bounds=bounds)
    theta = result.x if np.isfinite(result.fun) else theta0
    base.params.update({"loc": theta[:d], "log_scale": theta[d:2 * d], "raw_df": theta[2 * d:]})
    return np.clip(base.df, *_T_DF_BOUNDS), theta[:d].copy(), theta[d:2 * d].copy()


def _kmeans_start(z, k, rng):
    """Hard responsibilities ``(n, k)`` of the rows ``z`` to ``k`` k-means++ seeds (Arthur and
    Vassilvitskii, 2007: each next centre a row drawn with probability proportional to its
    squared distance to the nearest centre so far, from ``rng``): EM's start."""
    n, d = z.shape
    centres = np.empty((k, d))
    centres[0] = z[rng.integers(n)]
    nearest = np.sum((z - centres[0]) ** 2, axis=1)
    for j in range(1, k):
        total = nearest.sum()
        pick = rng.choice(n, p=nearest / total) if total > 0 else rng.integers(n)
        centres[j] = z[pick]
        nearest = np.minimum(nearest, np.sum((z - centres[j]) ** 2, axis=1))
    dist = (np.sum(z * z, axis=1)[:, None] - 2.0 * z @ centres.T
            + np.sum(centres * centres, axis=1))
    resp = np.zeros((n, k))
    resp[np.arange(n), np.argmin(dist, axis=1)] = 1.0
    return resp


def _e_step(a):
    """EM's E step of a mixture from ``a_nj = log w_j + log p_j(z_n)`` (``(n, k)``):
    ``(mean_n log sum_j exp a_nj, r)``, the mean log-likelihood and the responsibilities
    ``r_nj = exp(a_nj - log sum_i exp a_ni)``, by one log-sum-exp."""
    lse = logsumexp_rows(a)
    return float(np.mean(lse)), np.exp(a - lse[:, None])


def _full_mixture_em(z, k, rng, tol=_MIX_TOL):
    r"""Maximum-likelihood mixture of ``k`` Gaussians with full covariances of the rows ``z``
    by EM: ``(log_w, means, chols, mean_log_likelihood)``, ``chols[j]`` the lower Cholesky
    factor of component ``j``'s covariance.

    The start is :func:`_diag_mixture_em`'s, and so is the stopping rule, with ``tol`` for
    ``_MIX_TOL``; the M step is
    ``S_j = sum_n r_nj (z_n - m_j)(z_n - m_j)^T / N_j + floor I`` (the floor as
    scikit-learn's ``reg_covar``), through the second moments, ``S_j = sum_n r_nj z_n z_n^T /
    N_j - m_j m_j^T + floor I`` (the rows are standardised, so the cancellation in the
    difference costs a few digits at most, at the floor's scale), and ``log N(z; m, L L^T) =
    -|L^{-1} z - L^{-1} m|^2 / 2 - sum_i log L_ii - d log(2 pi) / 2``, the ``L_j^{-1} z_n``
    of every component in one product.
    """
    n, d = z.shape
    resp = _kmeans_start(z, k, rng)
    previous = -np.inf
    floor = _MIX_VAR_FLOOR * np.eye(d)
    outer = (z[:, :, None] * z[:, None, :]).reshape(n, d * d)           # z z^T per row
    for _ in range(_MIX_MAX_ITER):
        counts = resp.sum(axis=0) + 10.0 * np.finfo(np.float64).eps
        means = (resp.T @ z) / counts[:, None]
        log_w = np.log(counts / counts.sum())
        cov = ((resp.T @ outer) / counts[:, None]).reshape(k, d, d) \
            - means[:, :, None] * means[:, None, :] + floor
        chols = np.linalg.cholesky(cov)
        inv = np.linalg.inv(chols)                                     # L_j^{-1}, (k, d, d)
        # u_nj = L_j^{-1} z_n - L_j^{-1} m_j: one product for every component
        u = (z @ np.swapaxes(inv, 1, 2).transpose(1, 0, 2).reshape(d, k * d)).reshape(n, k, d) \
            - np.einsum("kij,kj->ki", inv, means)
        a = (log_w - 0.5 * np.einsum("nki,nki->nk", u, u)
             - np.sum(np.log(np.diagonal(chols, axis1=1, axis2=2)), axis=1)
             - 0.5 * d * _LOG_2PI)
        mean_ll, resp = _e_step(a)
        if mean_ll - previous < tol:
            break
        previous = mean_ll
    return log_w, means, chols, mean_ll


def _full_mixture_bic(z, max_components=BLEND_MAX_COMPONENTS):
    """The full-covariance Gaussian mixture of ``z`` with ``k`` chosen by BIC (``-2 n
    mean_log_likelihood + (k (d + d (d + 1) / 2) + k - 1) log n``, the first minimum on a
    tie): ``(log_w, means, chols)``.

    A scan, then a refit: ``k`` runs from 1 to ``max_components`` (held to at most one
    component per two rows per parameter of a component), each fitted to all the rows to
    scikit-learn's tolerance (``_BLEND_SCAN_TOL`` = 1e-3 nats per row), and stops once
    ``_BLEND_BIC_PATIENCE`` = 5 values in a row have not lowered the best BIC; the
    ``_BLEND_REFITS`` = 3 values of ``k`` with the lowest BIC are then fitted again from the
    same starts to ``_MIX_TOL``, and the lowest BIC of those is kept. EM at 1e-3 stops far
    from its optimum, unevenly in ``k``: on the suite's ``curve`` (18,000 training rows) the
    scan's best was ``k = 12``, whose converged mixture is 0.021 nats from the truth, where
    the converged ``k = 13`` has the lower BIC and is 0.011 away; converging every ``k``
    costs six times as long. Deterministic: the seeds come from ``default_rng(k)``."""
    n, d = z.shape
    per_component = d + d * (d + 1) // 2 + 1
    top = max(1, min(max_components, n // (2 * per_component)))

    def bic(mean_ll, k):
        return -2.0 * n * mean_ll + (k * per_component - 1) * math.log(n)

    scanned, lowest, worse = [], math.inf, 0
    for k in range(1, top + 1):
        value = bic(_full_mixture_em(z, k, np.random.default_rng(k), _BLEND_SCAN_TOL)[3], k)
        scanned.append((value, k))
        if value < lowest:
            lowest, worse = value, 0
        else:
            worse += 1
            if worse == _BLEND_BIC_PATIENCE:
                break
    best = None
    for _, k in sorted(scanned)[:_BLEND_REFITS]:
        fitted = _full_mixture_em(z, k, np.random.default_rng(k))
        value = bic(fitted[3], k)
        if best is None or (value, k) < best[:2]:
            best = (value, k, fitted)
    return best[2][:3]


def blend_weights(log_q):
    """Weights ``w`` on the simplex maximising ``mean_n log sum_j w_j q_j(x_n)``: the mixture
    weights of fixed densities (stacking by likelihood), as ``FlowDensity``'s blend chooses
    them on its validation rows.

    ``log_q`` is ``(n, m)``, ``log q_j(x_n)``. EM with the components held fixed (Dempster,
    Laird and Rubin, 1977), from equal weights: responsibilities ``r_nj = w_j q_j(x_n) /
    sum_i w_i q_i(x_n)``, then ``w_j = mean_n r_nj``. The objective is concave in ``w`` and
    EM's fixed points with every ``w_j > 0`` are where ``mean_n q_j / q_w = 1`` for every
    ``j`` (the KKT conditions), so its limit is the maximum; the weight of a useless component
    tends to 0, slowly. Stops when no weight moves by more than ``_BLEND_TOL`` (1e-10) in a
    round or after ``_BLEND_MAX_ITER`` rounds. Rows that no component can score (every
    ``log q_j = -inf``) are left out: no weight helps them.

    >>> import numpy as np
    >>> log_q = np.log([[0.5, 0.1], [0.5, 0.1], [0.1, 0.5]])
    >>> w = blend_weights(log_q)
    >>> bool(abs(w.sum() - 1.0) < 1e-12), bool(w[0] > w[1])
    (True, True)
    """
    log_q = np.asarray(log_q, dtype=np.float64)
    if log_q.ndim != 2 or log_q.shape[1] == 0:
        raise ValueError(f"log_q must be (rows, components), got shape {log_q.shape}")
    if np.isnan(log_q).any() or (log_q == np.inf).any():
        raise ValueError("log_q must not hold NaN or +inf")
    log_q = log_q[np.isfinite(log_q).any(axis=1)]
    w = np.full(log_q.shape[1], 1.0 / log_q.shape[1])
    for _ in range(_BLEND_MAX_ITER):
        with np.errstate(divide="ignore"):      # a weight may underflow to 0: log 0 = -inf
            a = np.log(w) + log_q
        new = np.mean(np.exp(a - logsumexp_rows(a)[:, None]), axis=0)
        moved = float(np.max(np.abs(new - w)))
        w = new / new.sum()
        if moved < _BLEND_TOL:
            break
    return w


def blend_log_likelihood(log_q, weights):
    """Per-row ``log sum_j w_j q_j(x_n)`` of the log-densities ``log_q`` (``(n, m)``) and
    weights ``w`` (``(m,)``): a log-sum-exp shifted by each row's maximum, so no overflow at
    any scale; a zero weight adds nothing (not even to a ``-inf`` log-density), and a row that
    no weighted component can score is ``-inf``. The weights must be non-negative and sum to 1
    (to 1e-9): a blend of densities is a density.

    >>> import numpy as np
    >>> float(blend_log_likelihood(np.array([[-1000.0, -1000.0]]), [0.5, 0.5])[0])
    -1000.0
    """
    log_q = np.asarray(log_q, dtype=np.float64)
    weights = np.asarray(weights, dtype=np.float64)
    if log_q.ndim != 2 or weights.shape != log_q.shape[1:]:
        raise ValueError(f"log_q must be (rows, components) and weights (components,), got "
                         f"shapes {log_q.shape} and {weights.shape}")
    if not (np.all(weights >= 0) and abs(float(np.sum(weights)) - 1.0) <= _BLEND_SUM_TOL):
        raise ValueError(f"weights must be non-negative and sum to 1, got {weights.tolist()}")
    with np.errstate(divide="ignore"):
        return logsumexp_rows(np.log(weights) + log_q)


def _fit_blend(X, Xs, mean, scale, validation, flows):
    """``(_Blend, blend_weights_, blend_score_)`` of a blend (``blend``): the fitted flows
    ``[(label, flow)]`` (in the data's units, the kept one first) and the full-covariance
    Gaussian mixture of the standardised training rows ``Xs`` (``k`` by BIC,
    :func:`_full_mixture_bic`; the validation rows left out, and at most
    ``BLEND_MAX_ROWS`` of the others, evenly spaced), weighted by :func:`blend_weights` on the
    validation rows of ``X``. ``X`` and ``Xs`` are arrays or streamed sources (rows gathered
    by index: the same bits either way).

    A Gaussian ``N(m_j, L_j L_j^T)`` of the standardised rows is, in the data's units,
    ``x = mean + scale (m_j + L_j z)`` with ``z`` standard normal: a flow of a lower-triangular
    layer ``diag(scale) L_j`` and a shift ``mean + scale m_j``. The mixture enters the weights'
    EM as one component (its own weights fixed), and the blend then holds each Gaussian with
    the mixture's weight times its own. Components of weight below ``_BLEND_MIN_WEIGHT``
    (1e-9) are dropped and the rest renormalised (a change of the log-density below 1e-9
    nats), except the kept flow (always the first)."""
    n, dim = X.shape

    def take(rows, index):   # an array, or a streamed source (memmap, dask): the same bits
        return rows[index] if isinstance(rows, np.ndarray) else rows.take(index)

    keep = np.ones(n, dtype=bool)
    keep[validation] = False
    training = np.flatnonzero(keep)
    training = training[_evenly_spaced(len(training), min(len(training), BLEND_MAX_ROWS))]
    log_w, means, chols = _full_mixture_bic(take(Xs, training))
    gaussians = []
    for m, chol in zip(means, chols):
        shift = Affine(dim)
        shift.params["shift"] = mean + scale * m
        shift.params["log_scale"] = np.zeros(dim)
        gaussians.append(Flow(StandardNormal(dim),
                              Chain([_whitening_layer(scale[:, None] * chol), shift])).eval())
    rows = take(X, validation)
    log_q = np.stack([flow.log_prob(rows) for _, flow in flows]
                     + [logsumexp_rows(np.stack([g.log_prob(rows) for g in gaussians], axis=1)
                                       + log_w)], axis=1)
    w = blend_weights(log_q)
    weights = np.concatenate([w[:-1], w[-1] * np.exp(log_w)])
    members = [flow for _, flow in flows] + gaussians
    kept = [0] + [j for j in range(1, len(members)) if weights[j] >= _BLEND_MIN_WEIGHT]
    blend = _Blend([members[j] for j in kept], weights[kept] / weights[kept].sum())
    labels = {label: float(v) for (label, _), v in zip(flows, w[:-1])}
    labels["gmm"] = float(w[-1])
    return blend, labels, float(np.mean(blend.log_prob(rows)))


class _Blend:
    """``q(x) = sum_j w_j q_j(x)`` of unconditional flows of one event size: ``log_prob`` by
    log-sum-exp, ``sample`` by a multinomial draw of each flow's count (then a random order)."""

    def __init__(self, flows, weights):
        self.flows = list(flows)
        self.weights = np.asarray(weights, dtype=np.float64)

    def log_prob(self, x, context=None):
        return blend_log_likelihood(np.stack([flow.log_prob(x) for flow in self.flows], axis=1),
                                    self.weights)

    def sample(self, n, rng, context=None):
        counts = rng.multinomial(n, self.weights)
        rows = np.concatenate([flow.sample(int(c), rng) for flow, c in zip(self.flows, counts)
                               if c > 0], axis=0)
        return rows[rng.permutation(n)]


def _diag_mixture_em(z, k, rng):
    r"""Maximum-likelihood mixture of ``k`` Gaussians with diagonal covariances of the rows
    ``z`` (``(n, d)``) by EM: ``(log_w, means, variances, mean_log_likelihood)``.

    Started from k-means++ seeds (Arthur and Vassilvitskii, 2007: each next centre a row drawn
    with probability proportional to its squared distance to the nearest centre so far, from
    ``rng``) and the hard assignment to them; then EM (Dempster, Laird and Rubin, 1977): with
    ``a_nj = log w_j + log N(z_n; m_j, diag v_j)`` and responsibilities ``r_nj = exp(a_nj -
    logsumexp_j a_nj)``, ``N_j = sum_n r_nj``, ``w_j = N_j / n``, ``m_j = sum_n r_nj z_n /
    N_j``, ``v_j = sum_n r_nj z_n^2 / N_j - m_j^2 + floor``; the quadratic form through
    products, ``sum_i (z_i - m_i)^2 / v_i = (z^2) (1/v)^T - 2 z (m/v)^T + sum_i m_i^2 / v_i``.
    Stops when the mean log-likelihood gains less than ``_MIX_TOL`` (EM never lowers it) or
    after ``_MIX_MAX_ITER`` rounds.
    """
    n, d = z.shape
    resp = _kmeans_start(z, k, rng)
    z2 = z * z
    previous = -np.inf
    for _ in range(_MIX_MAX_ITER):
        counts = resp.sum(axis=0) + 10.0 * np.finfo(np.float64).eps
        means = (resp.T @ z) / counts[:, None]
        variances = np.maximum((resp.T @ z2) / counts[:, None] - means * means, 0.0) \
            + _MIX_VAR_FLOOR
        log_w = np.log(counts / counts.sum())
        inv = 1.0 / variances
        a = (log_w - 0.5 * (z2 @ inv.T - 2.0 * z @ (means * inv).T
                            + np.sum(means * means * inv, axis=1)
                            + np.sum(np.log(variances), axis=1) + d * _LOG_2PI))
        mean_ll, resp = _e_step(a)
        if mean_ll - previous < _MIX_TOL:
            break
        previous = mean_ll
    return log_w, means, variances, mean_ll


def _candidate_family(name):
    """The family of a ``candidate_scores_`` key (``"nsf"`` or ``"nsf (unwhitened)"``)."""
    return name[:-len(_UNWHITENED)] if name.endswith(_UNWHITENED) else name


def _int_or_auto(value, where, name, allow_none=False):
    """A positive int, ``"auto"`` (or None when ``allow_none``), else the error naming both."""
    if value is None and allow_none:
        return None
    alternative = " or None" if allow_none else ""
    if isinstance(value, str):
        return check_choice(value, ("auto",), where, f"{name} (or an int{alternative})")
    return check_int(value, where, f"{name} (or 'auto'{alternative})", minimum=1)


def training_length(epochs, patience, n_features):
    """``fit``'s ``(epochs, patience)`` for ``FlowDensity``'s: ``"auto"`` is
    ``EPOCHS_LOW_DIM`` and ``PATIENCE_LOW_DIM`` on data of at most ``LOW_DIM_FEATURES``
    features, ``EPOCHS`` and ``PATIENCE`` above."""
    low_dim = n_features <= LOW_DIM_FEATURES
    if epochs == "auto":
        epochs = EPOCHS_LOW_DIM if low_dim else EPOCHS
    if patience == "auto":
        patience = PATIENCE_LOW_DIM if low_dim else PATIENCE
    return epochs, patience


def _average(average, n_features):
    """``fit``'s ``average`` for ``FlowDensity``'s: ``"auto"`` is ``"ema"`` on data of at most
    ``LOW_DIM_FEATURES`` features, None above."""
    if average == "auto":
        return "ema" if n_features <= LOW_DIM_FEATURES else None
    return average


def _mixture_start(z, max_components=None):
    """The diagonal Gaussian mixture of ``z`` with ``k`` chosen by BIC (``-2 n
    mean_log_likelihood + (2 d k + k - 1) log n``; the first minimum on a tie):
    ``(log_w, means, variances)``.

    ``k`` runs from 1 to ``max_components`` (default: ``MIXTURE_MAX_COMPONENTS_LOW_DIM`` = 40
    for at most ``LOW_DIM_FEATURES`` = 2 columns, ``MIXTURE_MAX_COMPONENTS`` = 20 above),
    held to at most ``n / (4 d + 2)`` (two rows per parameter of a component), and the scan
    stops once ``_BIC_PATIENCE`` values in a row have not lowered the best BIC. The scan uses
    at most ``_MIX_SCAN_ROWS`` of the rows (evenly spaced); the chosen ``k`` is then fitted to
    all of them. Deterministic: the seeds come from ``default_rng(k)``."""
    n, d = z.shape
    if max_components is None:
        max_components = (MIXTURE_MAX_COMPONENTS_LOW_DIM if d <= LOW_DIM_FEATURES
                          else MIXTURE_MAX_COMPONENTS)
    m = min(n, _MIX_SCAN_ROWS)
    scan = z[_evenly_spaced(n, m)]
    top = max(1, min(max_components, m // (4 * d + 2)))
    best, worse = None, 0
    for k in range(1, top + 1):
        mean_ll = _diag_mixture_em(scan, k, np.random.default_rng(k))[3]
        bic = -2.0 * m * mean_ll + (2 * d * k + k - 1) * math.log(m)
        if best is None or bic < best[0]:
            best, worse = (bic, k), 0
        else:
            worse += 1
            if worse == _BIC_PATIENCE:
                break
    return _diag_mixture_em(z, best[1], np.random.default_rng(best[1]))[:3]


def _t_mixture_start(z):
    r"""The start of ``base="t_mixture"``: ``(log_w, means, log_scales, df)``, each
    ``(k + 1, d)`` but ``log_w`` ``(k + 1,)``; deterministic.

    1. :func:`_mixture_start`'s Gaussian mixture of ``z`` (``k`` components by BIC), each
       component made a product of Student t's with the same locations and scales and one
       degrees of freedom ``nu`` for all: the one of ``_T_MIX_DF_GRID`` that gives the
       highest mean log-likelihood of ``z``;
    2. one broad component more, for the tails: :func:`_student_t_start`'s per-coordinate
       Student t of all the rows, its df held to at most ``_T_MIX_BROAD_DF``. A Gaussian
       mixture fitted by BIC covers the training rows' tails with components of its own,
       which gives a held-out row beyond them Gaussian tails, thousands of nats too low on a
       heavy-tailed set; the broad t's density falls as ``|t|^-(nu+1)`` in every coordinate
       (the cap matters where a coordinate is multimodal: its maximum-likelihood t is then a
       wide normal, ``df = 1000``);
    3. the ``k + 1`` weights by EM with the components held fixed (``w_j = mean_n r_nj``,
       at most ``_MIX_MAX_ITER`` rounds, to ``_MIX_TOL``), from ``k / (k + 1)`` of the
       mixture's weights and ``1 / (k + 1)`` for the broad one. Where it is not needed its
       weight falls towards 0 (about 1e-7 on the density suite's standardised
       ``eight_gaussians`` and ``two_moons``), and training can lower it further.
    """
    d = z.shape[1]
    log_w, means, variances = _mixture_start(z)
    k = len(log_w)
    df, loc, log_scale = _student_t_start(z)
    mixture = DiagStudentTMixture(d, k + 1)
    nu = np.empty((k + 1, d))
    nu[k] = np.minimum(df, _T_MIX_BROAD_DF)
    mixture.params.update({"loc": np.vstack([means, loc]),
                           "log_scale": np.vstack([0.5 * np.log(variances), log_scale])})
    best = None
    for value in _T_MIX_DF_GRID:
        nu[:k] = value
        mixture.params["raw_df"] = softplus_inverse(nu)
        component = mixture.component_log_prob(z)
        mean_ll = float(np.mean(logsumexp_rows(component[:, :k] + log_w)))
        if best is None or mean_ll > best[0]:
            best = (mean_ll, value, component)
    nu[:k] = best[1]
    component = best[2]
    log_w = np.append(log_w + math.log(k / (k + 1)), -math.log(k + 1))
    previous = -np.inf
    for _ in range(_MIX_MAX_ITER):
        a = component + log_w
        lse = logsumexp_rows(a)
        mean_ll = float(np.mean(lse))
        if mean_ll - previous < _MIX_TOL:
            break
        previous = mean_ll
        with np.errstate(divide="ignore"):          # a weight may underflow to 0: log 0 = -inf
            log_w = np.log(np.mean(np.exp(a - lse[:, None]), axis=0))
    log_w = np.maximum(log_w, math.log(np.finfo(np.float64).tiny))
    return log_w, mixture.params["loc"].copy(), mixture.params["log_scale"].copy(), nu


# ------------------------------------------------------------------------------ estimator
class FlowDensity:
    r"""Density estimation with a normalizing flow, scikit-learn style.

    Parameters
    ----------
    flow : str, default "auto"
        A key of :data:`refflow.flows.BUILDERS`, or ``"auto"`` (the default: ``"maf"`` and
        ``"nsf"`` both fitted, and ``"gf"`` too on rows rotated to independent components
        (``rotation``), the best on the validation rows kept; see DEVELOPERS.md,
        "FlowDensity's defaults", for the evidence): ``"nsf"`` (autoregressive neural spline
        flow: flexible, bounded splines), ``"nsf-coupling"``, ``"maf"``, ``"realnvp"``,
        ``"glow"``, ``"planar"``, ``"radial"``, ``"sylvester"``, ``"bnaf"`` (block neural
        autoregressive; its widths are ``flow_kwargs={"hidden_factors": ...}``), ``"gf"``
        (Gaussianization flow), ``"naf"``, ``"unaf"``, ``"sospf"``, ``"bpf"``
        (monotone-transformer flows).
        ``"auto"``: fit each family of ``AUTO_CANDIDATES`` (``"maf"`` and ``"nsf"``; and of
        ``ROTATED_CANDIDATES``, ``"gf"``, on rotated rows) with the
        same options on the same rows and keep the one with the best validation likelihood
        (``flow_name_``, ``candidate_scores_``); the fit costs the sum of the candidates'
        fits, and ``flow_kwargs`` must suit every candidate's builder (name a family to pass
        options of its own, e.g. ``flow="nsf", flow_kwargs={"n_bins": 16}``). With a single
        feature the coupling layouts are impossible, and ``"realnvp"`` and ``"glow"`` fit a
        ``"maf"``, ``"nsf-coupling"`` an ``"nsf"``. A conditional fit (``fit(X, context=C)``)
        needs a family whose builder takes ``context_dim`` (the
        network flows; not the planar family).
    n_layers : int, optional
        Number of steps; None keeps the builder's default (5 for the network flows, 16 for
        the planar family).
    hidden : sequence of int, default (64, 64)
        Conditioner widths (ignored by the planar family, which has no conditioner, and by
        "bnaf" and "gf", whose networks are sized otherwise). MADE's default degree rule needs
        every width ``>= n_features - 1`` (``>= n_features`` for a conditional fit): widen it
        for wider data, or pass ``flow_kwargs={"hidden_degrees": "random"}`` ("maf", "nsf").
    flow_kwargs : dict, optional
        Further builder options, e.g. ``{"n_bins": 16}`` or ``{"scale": "exp"}``; not
        ``rng``, ``hidden``, ``n_layers`` (the parameters above) or ``context_dim`` (set by
        ``fit(X, context=...)``).
    base : {"t_mixture", "student_t", "gaussian", "mixture"}, default "t_mixture"
        The base distribution. ``"t_mixture"`` (the default; see DEVELOPERS.md, "FlowDensity's
        defaults", fifth round, for the evidence): :class:`refflow.DiagStudentTMixture`, a
        mixture of products of Student t's (weights, locations, scales and degrees of freedom
        trained with the flow), started at the diagonal Gaussian mixture of the rows mapped
        to the base space by the untrained flow (``k`` components by BIC, up to
        40 on one or two features, 20 above) and one broad heavy-tailed component more (see
        Notes): for data that are multimodal, heavy-tailed or both. ``"gaussian"``: the
        builder's standard normal. ``"mixture"``: :class:`refflow.DiagGaussianMixture`, the
        same start without the t's and the broad component; its tails are Gaussian.
        ``"student_t"``:
        :class:`refflow.StudentT` with a location, scale and degrees of freedom per coordinate,
        all trained with the flow (``df = softplus(raw_df)``; its gradient is the digamma
        formula in :class:`~refflow.StudentT`), for heavy-tailed data: a Gaussian base with
        maps that are affine or the identity far out (MAF, and the splines beyond their bound)
        can only give Gaussian tails. It is started at the per-coordinate maximum-likelihood t
        of the rows ``fit`` is given (at most 10,000 of them, evenly spaced), mapped to the
        base space by the untrained flow (see Notes). It replaces the builder's standard
        normal base; a family with another base is refused (``ValueError``).
    epochs : int or "auto", default "auto"
        Maximum number of passes over the training data (and the length of the cosine
        schedule, when there is one). ``"auto"``: ``EPOCHS_LOW_DIM`` = 200 on data of at most
        ``LOW_DIM_FEATURES`` = 2 features, ``EPOCHS`` = 100 above (DEVELOPERS.md,
        "FlowDensity's defaults", seventh and ninth rounds).
    batch_size : int, default 256
        Mini-batch size (the usual choice of the peers' examples).
    lr : float, default 1e-3
        Adam's learning rate (its standard default, zuko's and nflows' examples).
    lr_schedule : "plateau", None or "cosine", default "plateau"
        ``"plateau"``: constant ``lr`` until ``patience`` epochs pass without a better
        validation loss; then, once, the best epoch's parameters are put back and training
        goes on at ``lr / 10`` until half of ``patience`` (rounded up) epochs pass without a
        better one (:class:`refflow.optim.ReduceOnPlateau`; ``history_.lr_drops`` is the epoch
        of the drop). With ``patience=None``, a constant ``lr``. Closer to the truth than a
        constant rate, or level, on every set of the density suite (DEVELOPERS.md,
        "FlowDensity's defaults", ninth round), for up to about 30% more CPU time.
        ``"cosine"``: the learning rate falls from ``lr`` to 0 along a half cosine over all
        ``epochs * n_batches`` steps (:class:`refflow.optim.CosineAnnealing`); early stopping
        may end the fit before it reaches 0. None: constant ``lr``.
    weight_decay : float, default 0.0
        Decoupled weight decay (AdamW).
    validation_fraction : float, default 0.1
        Share of the rows (``ceil(fraction * n)``) held out to pick the best epoch and stop
        early; 0 (or too few rows to keep a training row) trains on all of them.
    patience : int, "auto" or None, default "auto"
        Stop after this many epochs without a better validation loss (training loss without
        validation data); with ``lr_schedule="plateau"`` the rate is first lowered once and the
        fit stops at the end of the drop's patience. None never stops early. The parameters
        of the best epoch are kept.
        ``"auto"``: ``PATIENCE_LOW_DIM`` = 20 on data of at most 2 features, ``PATIENCE`` =
        10 above. On one or two features, where an epoch takes a second or two, the longer
        and more patient fits came closer to the truth on the 2-D sets that were still
        improving at the 100th epoch (``rings``, ``checkerboard``) and did as well on the
        others (DEVELOPERS.md, "FlowDensity's defaults", seventh round).
    average : "auto", "ema" or None, default "auto"
        Weight averaging (:func:`refflow.training.fit`'s ``average``): ``"ema"`` keeps an
        exponential moving average of the parameters (bias-corrected), scores it on the
        validation rows after every epoch beside the trained parameters, and keeps the better
        of the two at the best epoch (``history_.best_averaged``). ``"auto"``: ``"ema"`` for
        data of at most ``LOW_DIM_FEATURES`` = 2 features, None above. Averaging brought
        every set measured closer to the truth, but it stops early later (the average keeps
        improving), which on 2-D data costs seconds and on the 4-D 20,000-row fit took it
        past its time budget (see DEVELOPERS.md, "FlowDensity's defaults", third and sixth
        rounds). Without validation rows (``validation_fraction=0``, or too few rows) there
        is nothing to choose by and no averaging is done.
    average_decay : float in (0, 1), default 0.999
        The average's decay: it weighs about the last ``1 / (1 - average_decay)`` steps.
    standardize : bool, default True
        Fit the flow to ``(X - mean) / std`` (per feature, training statistics, scale 1 for
        a constant feature), then fold the standardisation into the model (see Notes). A
        context is standardised the same way.
    whiten : "auto" or bool, default "auto"
        True: after the standardisation, decorrelate the features: the flow is fitted to
        ``w = C^{-1} s`` with ``C`` the lower Cholesky factor of the training covariance of
        ``s``, and ``C`` is folded into the model as a fixed :class:`~refflow.LULinear`
        layer (see Notes). The covariance comes from exact sums of the products of the
        columns, rounded once, and ``C w = s`` is solved row by row by forward substitution,
        so that a streamed fit (``numpy.memmap`` or dask array) whitens bit for bit as the
        in-memory one, without holding the data. With ``base="gaussian"`` an NSF then starts
        as the full-covariance Gaussian fit of the data (with ``"student_t"``, as the
        maximum-likelihood t in each whitened coordinate). False: the standardised rows
        as they are.
        ``"auto"``: on at most ``WHITEN_CHOICE_MAX_ROWS`` = 5,000 rows, with validation rows
        held out, each candidate (each family of ``flow="auto"``, or the one family named)
        is fitted both ways, and the best validation likelihood is kept (``whitened_``; the
        unwhitened candidates appear in ``candidate_scores_`` as ``"nsf (unwhitened)"``):
        such fits take seconds, and which way wins depends on the data: whitening helped on
        a correlated Student t and hurt on the suite's real sets (by 15 nats per row on the
        digits), whose bounded, dequantized columns it shears. On more rows (or with none
        held out) the whitened fit alone, within the fit-time budget. The choice costs twice
        the fits (see DEVELOPERS.md, "FlowDensity's defaults", seventh round).
    rotation : "auto", "ica" or None, default "auto"
        ``"ica"``: after the whitening, rotate the rows to their independent components: the
        flow is fitted to ``u = Q w`` with ``Q`` the orthogonal FastICA rotation of the
        whitened rows (the log-cosh contrast, started at the identity, on at most 100,000
        evenly spaced rows, and at most 32 MiB of them: no random draw), folded into the model
        as a fixed :class:`~refflow.LULinear` layer of log-determinant 0 (see Notes). Data made of
        independent non-Gaussian sources mixed linearly are then a product of their
        marginals, which a Gaussianization flow (``"gf"``: elementwise layers first) fits
        closely. ``"auto"`` (the default): ``"ica"`` on at least ``ICA_MIN_FEATURES`` = 5
        features and more than ``WHITEN_CHOICE_MAX_ROWS`` = 5,000 rows, and there
        ``flow="auto"`` also fits the families of ``ROTATED_CANDIDATES`` (``"gf"``) to the
        rotated rows (with ``rotation="ica"`` and ``whiten="auto"`` on few rows, not to the
        unwhitened ones): a third fit, which on the suite's 16-feature ``scaled_ica`` set
        came closest to the truth, and lost to ``"maf"`` or ``"nsf"`` elsewhere. On fewer
        features no rotation, so the 20,000 x 4 fit stays within its time budget; on fewer
        rows neither, because the rotation, like the whitening, is computed from every row,
        the held-out ones too, and its ``d (d - 1) / 2`` angles made the rotated candidates'
        validation scores optimistic on the suite's small real sets (breast cancer: 1.5
        nats lower test likelihood on average; see DEVELOPERS.md, "FlowDensity's defaults",
        eighth round). None: no rotation. Only the whitened rows are rotated: with
        ``whiten=False``, ``"ica"`` is refused.
    blend : "auto" or bool, default "auto"
        Score and sample with a blend instead of the kept flow alone: ``q(x) = sum_j w_j
        q_j(x)`` over every candidate flow fitted (the kept one, and with ``flow="auto"`` or
        ``whiten="auto"`` the others, which are otherwise discarded) and a Gaussian mixture
        with full covariances (``k`` up to ``BLEND_MAX_COMPONENTS`` = 30 by BIC, fitted to
        the standardised training rows, the validation rows left out), the weights those of
        the highest likelihood of the validation rows (EM; the log-likelihood is concave in
        them). The weights go to one model where it is better everywhere, and are spread
        where fitted models err in different places (DEVELOPERS.md, "FlowDensity's
        defaults", tenth round: on the density suite it took ``curve`` from 0.030 to 0.011
        nats from the truth, ahead of the Gaussian mixture's 0.017). The flows are trained
        exactly as without it: ``flow_``, ``history_`` and :meth:`transform` are the kept
        flow's; :meth:`score_samples`, :meth:`score` and :meth:`sample` are the blend's. Its
        cost is the mixture's fit (seconds on 20,000 rows of a few features). The weights
        are chosen on the rows that also chose the epoch and the candidate, so
        ``blend_score_`` is optimistic by a handful of parameters. The mixture is fitted to
        at most ``BLEND_MAX_ROWS`` = 20,000 training rows (evenly spaced; gathered by index
        from a memmap or dask array, so a streamed fit is still the in-memory one bit for
        bit). ``"auto"``: with ``flow="auto"`` and no context (the mixture is not
        conditional); True: with any ``flow``, and ``ValueError`` before anything is fitted
        with a context; False: never. No blend is made without validation rows.
    random_state : None, int, numpy.random.Generator or numpy.random.RandomState
        Seeds the initialisation, the validation split and the mini-batches: the same int
        gives the same fitted model.
    progress : "auto", bool or None, default "auto"
        A progress bar on stderr (tqdm when installed) while fitting, scoring, transforming
        and sampling: ``"auto"`` (or None) shows it only when stderr is a terminal, never in
        a pipe, a log file or a notebook, as Keras' ``verbose="auto"``; False never, True
        always. Pass False inside a grid search run from a terminal.

    Attributes
    ----------
    flow_ : refflow.Flow
        The fitted model in the units of ``X``:
        ``Flow(base, Chain([inner_bijector, Affine(n_features)]))``, with the whitening
        ``LULinear`` before the ``Affine`` when the kept fit is whitened (and the rotation's
        ``LULinear`` before that when it is rotated). A conditional model
        takes the *standardised* context, ``(context - context_mean_) / context_scale_``;
        the methods here standardise it for you. With a blend (``blend``) the kept flow
        is one component of the density that :meth:`score_samples` and :meth:`sample` use.
    history_ : refflow.training.History
        Training and validation NLL per epoch of the standardised (and whitened) data
        (``train_nll``, ``val_nll``), and the same in the data's units as mean
        log-likelihoods (``train_log_likelihood``, ``val_log_likelihood``; ``nll_shift =
        sum(log scale_) + sum(log diag C)``, the second term only when whitened), which
        agree with :meth:`score` on the same rows:
        ``history_.val_log_likelihood[history_.best_epoch]`` is
        ``score(X[validation_index_])`` to rounding (tested to 1e-12 relative; with a blend,
        that is ``blend_score_``). ``best_epoch`` is 0-based.
    validation_index_ : ndarray of int, shape (n_validation,)
        The rows of the ``X`` given to ``fit`` that were held out (to choose the best epoch,
        stop early and, with ``flow="auto"``, the family, or with ``whiten="auto"``, the
        whitening), in the order they were
        evaluated; empty when none were held out. The standardisation, the whitening and
        the start of a Student t or mixture base are computed from all the rows (held-out
        ones included), so the held-out score is slightly optimistic (a handful of
        parameters per feature, and per component of a mixture's start); the network never
        trains on them. Not saved by :meth:`save` (a loaded
        model does not have it; pickling keeps it).
    flow_name_ : str
        The family fitted: ``flow`` itself, the one chosen by ``flow="auto"``, or its
        one-feature replacement (``"realnvp"`` fits a ``"maf"`` on one feature).
    whitened_ : bool
        Whether the kept fit is whitened (``whiten=True`` on more than one feature, or the
        choice of ``whiten="auto"``).
    rotated_ : bool
        Whether the kept fit is whitened and rotated to independent components
        (``rotation``).
    candidate_scores_ : dict
        Only after a choice (``flow="auto"``, or ``whiten="auto"`` on few rows) with
        validation rows: each candidate's best validation mean log-likelihood in the data's
        units, ``{name: nats per row}``; a family's name, with ``" (unwhitened)"`` appended
        for a candidate fitted without the whitening.
    blend_weights_ : dict
        Only with a blend (``blend``): each candidate's weight by the names of
        ``candidate_scores_`` (the kept one's alone for a single family) and the Gaussian
        mixture's, ``"gmm"``; they sum to 1.
    blend_score_ : float
        Only with a blend: its mean log-likelihood of the validation rows, in the data's units
        (``score(X[validation_index_])`` to rounding).
    n_features_in_ : int
    feature_names_in_ : ndarray of str, shape (n_features_in_,)
        Column names of ``X`` when it was a data frame with string column names (only then
        defined, as in scikit-learn).
    mean_, scale_ : ndarray of shape (n_features_in_,)
        The standardisation (zeros and ones with ``standardize=False``).
    n_context_features_in_ : int
        Columns of the context seen in ``fit`` (0: an unconditional model).
    context_mean_, context_scale_ : ndarray of shape (n_context_features_in_,)
        The context's standardisation.
    context_names_in_ : ndarray of str
        Column names of a data-frame context (only then defined).

    Notes
    -----
    *Standardisation, folded in.* The flow ``q_s`` is fitted to ``s = (x - mean) / scale``;
    then :class:`~refflow.Affine` with ``shift = mean``, ``log_scale = log(scale)`` is
    appended to its bijector (``forward`` applies it last, ``x = s * scale + mean``), so that
    ``flow_`` is a density in the original units::

        log q(x) = log q_s((x - mean) / scale) - sum_j log scale_j

    and ``flow_.sample`` draws ``x`` directly. When the fit is whitened (``whitened_``:
    ``whiten=True`` on more than one feature, or the choice of ``"auto"``) the flow ``q_w`` is
    fitted to ``w = C^{-1} s``, ``C`` the lower Cholesky factor of the training covariance of
    ``s``, and :class:`~refflow.LULinear` with ``W = C``
    (``L = C diag(C)^{-1}``, ``U = diag(C)``, no bias) sits between the two::

        flow_ = Flow(base, Chain([inner_bijector, LULinear(C), Affine(mean, scale)]))
        log q(x) = log q_w(C^{-1} (x - mean) / scale) - sum_j log C_jj - sum_j log scale_j

    When it is also rotated (``rotated_``), the flow ``q_u`` is fitted to ``u = Q w`` and
    :class:`~refflow.LULinear` with ``W = Q^T`` (``Q^T = P L U`` by ``scipy.linalg.lu``, the
    signs of the rows of ``Q`` chosen so that ``diag U > 0``) sits before the whitening; its
    ``log|det| = sum_i log U_ii`` is 0 up to rounding, and is added to the history's shift::

        flow_ = Flow(base, Chain([inner_bijector, LULinear(Q^T), LULinear(C), Affine(...)]))
        log q(x) = log q_u(Q C^{-1} (x - mean) / scale) - sum_j log C_jj - sum_j log scale_j

    The fitted flow is in eval mode (batch-norm layers use their running statistics), so
    every score is a deterministic function of its own row.

    *Student t base.* With ``base="student_t"`` the base density is, per coordinate ``i``
    (``t_i = (z_i - loc_i) / sigma_i``, ``sigma_i = exp(log_scale_i)``, ``nu_i =
    softplus(raw_df_i)``)::

        log p(z) = sum_i [ lgamma((nu_i+1)/2) - lgamma(nu_i/2) - log(nu_i pi)/2 - log sigma_i
                           - (nu_i+1)/2 log1p(t_i^2 / nu_i) ]

    and ``d log p / d nu_i = (psi((nu_i+1)/2) - psi(nu_i/2) - 1/nu_i - log1p(t_i^2/nu_i)) / 2
    + (nu_i+1) t_i^2 / (2 nu_i (nu_i + t_i^2))`` (``psi`` the digamma function; the
    derivation is in :class:`~refflow.StudentT`). Before training, the rows (at most 10,000,
    evenly spaced, no random draw) are mapped to the base space by the untrained flow and the
    three parameters of each coordinate are set to their maximum-likelihood values there
    (L-BFGS-B on that formula and its gradient, ``df`` in [1, 1000]); the untrained model is
    then the best product of independent t densities in those coordinates (for data that
    look normal, a t with a large ``df``). Adam moves ``raw_df`` by about ``lr`` per step, so
    a start far from the answer would take thousands of steps to correct: hence the start.

    *Mixture base.* With ``base="mixture"`` the base is ``log p(z) = logsumexp_j [log w_j +
    sum_i log N(z_i; m_ji, s_ji^2)]`` (its pullback is in :class:`~refflow.DiagGaussianMixture`).
    Before training, the same rows as for the Student t start are mapped to the base space
    and a diagonal mixture is fitted to them by EM for each ``k`` from 1 to 20 (at most one
    component per ``4 d + 2`` rows), seeded by k-means++ with ``default_rng(k)`` (no draw
    from ``random_state``); the ``k`` of the lowest BIC is kept. The untrained model is then
    that mixture in those coordinates. On sets that are mixtures (the density suite's
    ``eight_gaussians``, ``skew_mixture``) this is the start the flow cannot find from one
    mode. Its tails are Gaussian: on heavy-tailed data a row far out can score thousands of
    nats lower than under the Student t base (DEVELOPERS.md, "FlowDensity's defaults",
    fourth round). The BIC scan uses at most 4,000 of those rows (evenly spaced) and stops
    once three values of ``k`` in a row have not lowered the best BIC; the chosen ``k`` is
    then fitted to all of them.

    *Student t mixture base.* With ``base="t_mixture"`` the base is ``log p(z) = logsumexp_j
    [log w_j + sum_i log t_{nu_ji}((z_i - m_ji) / s_ji) - log s_ji]``, every weight,
    location, scale and degrees of freedom trained (the pullback, with the digamma formula
    for ``nu``, is in :class:`~refflow.DiagStudentTMixture`). Its start, on the same mapped
    rows: the BIC Gaussian mixture above, its components made t's with one ``nu`` for all
    (the best of 25 values from 1 to 1000, evenly spaced in ``log nu``, by the rows'
    likelihood); one component more, the per-coordinate maximum-likelihood t of all the rows
    with ``nu <= 10``, whose tails fall as ``|t|^-(nu+1)`` in every coordinate; and the
    weights by EM with those components fixed. The broad component is what keeps a held-out
    row beyond the training rows' tails from a Gaussian mixture's thousands of nats; where
    it is not needed EM gives it a weight near 0.

    *Scores.* :meth:`score_samples` gives ``log q(x)`` per row, in nats, in the units of
    ``X`` (the blend's ``log sum_j w_j q_j(x)`` when there is one; ``blend``); :meth:`score`
    is the **mean** log-likelihood per sample, as ``GaussianMixture.score``
    (``KernelDensity.score`` returns the *sum*). A row so far out that its log-density is
    not representable in float64 scores ``-inf`` (with one ``RuntimeWarning`` per call), as
    ``GaussianMixture`` gives ``-inf``; the other rows are scored exactly as without it.

    *Latent space.* :meth:`transform` maps rows to the base space, ``z = T^{-1}(x)`` (distributed
    as ``flow_.base`` under the model: standard normal with ``base="gaussian"``), and
    :meth:`inverse_transform` maps back, ``x = T(z)``.

    *Conditional densities.* ``fit(X, context=C)`` fits ``q(x | c)``; then
    ``score_samples(X, context=C)``, ``sample(n, context=c)`` and ``transform(X, context=C)``
    take a context too. ``y`` stays ignored, as in scikit-learn's density estimators (its
    pipelines and ``check_estimator`` pass ``y`` positionally to ``fit``): the conditioning
    variables go in the keyword ``context``, which a ``Pipeline`` routes as
    ``pipe.fit(X, flowdensity__context=C)``.

    *Feature names.* As in scikit-learn: fitting on a data frame records
    ``feature_names_in_``; a data frame with other or reordered columns then raises
    scikit-learn's ``ValueError`` ("The feature names should match those that were passed
    during fit."), and a plain array warns ("X does not have valid feature names, ...").

    *Errors.* ``fit`` leaves the estimator as it was when it raises (bad data, bad
    parameters, or :class:`refflow.training.TrainingDiverged` when the loss stops being
    finite). Ctrl-C during ``fit`` stops after the current step and keeps the best epoch's
    parameters, with a warning (``history_.stop_reason == "interrupted"``).

    Examples
    --------
    >>> import numpy as np
    >>> from refflow.datasets import two_moons
    >>> from refflow.estimator import FlowDensity
    >>> X = two_moons(400, rng=0)
    >>> model = FlowDensity("maf", n_layers=2, hidden=(16, 16), epochs=3, random_state=0).fit(X)
    >>> model.score_samples(X[:3]).shape, model.sample(5, random_state=1).shape
    ((3,), (5, 2))
    >>> bool(np.isfinite(model.score(X)))
    True
    >>> Z = model.transform(X[:4])                     # to the latent (standard normal) space
    >>> bool(np.allclose(model.inverse_transform(Z), X[:4], rtol=1e-10, atol=1e-10))
    True
    """

    def __init__(self, flow="auto", *, n_layers=None, hidden=(64, 64), flow_kwargs=None,
                 base="t_mixture", epochs="auto", batch_size=256, lr=1e-3, lr_schedule="plateau",
                 weight_decay=0.0,
                 validation_fraction=0.1, patience="auto", average="auto", average_decay=0.999,
                 standardize=True, whiten="auto", rotation="auto", blend="auto",
                 random_state=None, progress="auto"):
        self.flow = flow
        self.n_layers = n_layers
        self.hidden = hidden
        self.flow_kwargs = flow_kwargs
        self.base = base
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.lr_schedule = lr_schedule
        self.weight_decay = weight_decay
        self.validation_fraction = validation_fraction
        self.patience = patience
        self.average = average
        self.average_decay = average_decay
        self.standardize = standardize
        self.whiten = whiten
        self.rotation = rotation
        self.blend = blend
        self.random_state = random_state
        self.progress = progress

    # ------------------------------------------------------------------ sklearn plumbing
    @classmethod
    def _get_param_names(cls):
        signature = inspect.signature(cls.__init__)
        return sorted(p.name for p in signature.parameters.values() if p.name != "self")

    def get_params(self, deep=True):
        """The constructor parameters, ``{name: value}`` (no nested estimators, so ``deep``
        changes nothing)."""
        return {name: getattr(self, name) for name in self._get_param_names()}

    def set_params(self, **params):
        """Set constructor parameters; returns self. An unknown name raises ``ValueError``."""
        valid = self._get_param_names()
        for name in params:
            if name not in valid:
                raise ValueError(f"Invalid parameter {name!r} for estimator {self!r}. Valid "
                                 f"parameters are: {valid!r}.")
        for name, value in params.items():
            setattr(self, name, value)
        return self

    def __repr__(self):
        defaults = {p.name: p.default for p in
                    inspect.signature(type(self).__init__).parameters.values()}
        changed = []
        for name in self._get_param_names():
            value, default = getattr(self, name), defaults[name]
            try:
                same = bool(value is default or value == default) and type(value) is type(default)
            except Exception:  # arrays and other values without a plain ==
                same = False
            if not same:
                changed.append(f"{name}={value!r}")
        return f"{type(self).__name__}({', '.join(changed)})"

    def __sklearn_is_fitted__(self):
        return hasattr(self, "flow_")

    def __sklearn_tags__(self):
        # only scikit-learn calls this
        from sklearn.utils import InputTags, Tags, TargetTags, TransformerTags

        return Tags(estimator_type="density_estimator", target_tags=TargetTags(required=False),
                    transformer_tags=TransformerTags(),
                    input_tags=InputTags(two_d_array=True, allow_nan=False, sparse=False))

    def _check_fitted(self, where):
        if not self.__sklearn_is_fitted__():
            raise _not_fitted_error(
                f"{where}: This {type(self).__name__} instance is not fitted yet. Call 'fit' "
                f"with appropriate arguments before using this estimator.")

    # --------------------------------------------------------------------- parameters
    def _checked_params(self):
        """Validated copies of the constructor parameters (fit raises before any work)."""
        where = "FlowDensity"
        check_choice(self.flow, ("auto", *BUILDERS), where, "flow")
        n_layers = None if self.n_layers is None else check_int(self.n_layers, where, "n_layers",
                                                                minimum=1)
        hidden = check_hidden(self.hidden, where)
        flow_kwargs = {} if self.flow_kwargs is None else self.flow_kwargs
        if not isinstance(flow_kwargs, dict) or not all(isinstance(k, str) for k in flow_kwargs):
            raise TypeError(f"{where}: flow_kwargs must be None or a dict of builder options "
                            f"by name, got {self.flow_kwargs!r}")
        for key in flow_kwargs:
            if key in _RESERVED:
                instead = _RESERVED[key]
                raise ValueError(
                    f"{where}: flow_kwargs may not set {key!r}; " +
                    (f"use the {instead!r} parameter" if instead else
                     "it is set from the context: pass fit(X, context=C) for a conditional "
                     "density"))
        options = {
            "flow": self.flow, "n_layers": n_layers, "hidden": hidden,
            "flow_kwargs": dict(flow_kwargs),
            "epochs": _int_or_auto(self.epochs, where, "epochs"),
            "batch_size": check_int(self.batch_size, where, "batch_size", minimum=1),
            "lr": check_positive(self.lr, where, "lr"),
            "weight_decay": check_real(self.weight_decay, where, "weight_decay", low=0.0),
            "validation_fraction": check_real(self.validation_fraction, where,
                                              "validation_fraction", low=0.0, high=1.0,
                                              high_open=True),
            "patience": _int_or_auto(self.patience, where, "patience", allow_none=True),
            "lr_schedule": self._checked_schedule(where),
            "average": check_option(self.average, ("auto", "ema"), where, "average", none=True),
            "average_decay": check_real(self.average_decay, where, "average_decay", low=0.0,
                                        high=1.0, low_open=True, high_open=True),
        }
        options["base"] = check_choice(self.base, BASES, where, "base")
        check_bool(self.standardize, where, "standardize")
        options["whiten"] = check_option(self.whiten, ("auto",), where, "whiten", booleans=True)
        options["rotation"] = check_option(self.rotation, _ROTATIONS, where, "rotation",
                                           none=True)
        if options["rotation"] == "ica" and options["whiten"] is False:
            raise ValueError(f"{where}: rotation='ica' rotates the whitened rows; it needs "
                             f"whiten=True or 'auto', got whiten=False")
        options["blend"] = check_option(self.blend, ("auto",), where, "blend", booleans=True)
        if options["blend"] is True and options["validation_fraction"] == 0:
            raise ValueError(f"{where}: blend=True chooses the weights on the validation rows; "
                             f"it needs validation_fraction > 0")
        self._checked_progress(where)
        options["rng"] = _generator(self.random_state, where)
        return options

    def _checked_schedule(self, where):
        return check_option(self.lr_schedule, _SCHEDULES, where, "lr_schedule", none=True)

    def _checked_progress(self, where):
        progress = check_option(self.progress, ("auto",), where, "progress", booleans=True,
                                none=True)
        return _show_progress(progress)

    def _builder_kwargs(self, builder, options):
        kwargs = dict(options["flow_kwargs"])
        accepted = inspect.signature(builder).parameters
        if options["n_layers"] is not None:
            kwargs["n_layers"] = options["n_layers"]
        if "hidden" in accepted:
            kwargs["hidden"] = options["hidden"]
        return kwargs

    def _build(self, name, dim, c_dim, rng, options, where, Xs=None, Cs=None):
        """The builder's flow for ``name`` (its errors re-raised naming ``where``), with the
        base ``options["base"]`` (a Student t or mixture started on the rows ``Xs``,
        ``Cs``)."""
        builder = BUILDERS[name]
        kwargs = self._builder_kwargs(builder, options)
        if c_dim:
            kwargs["context_dim"] = c_dim
        try:
            flow = builder(dim, rng=rng, **kwargs)
        except TypeError as exc:
            if "unexpected keyword argument" in str(exc):  # an unknown name in flow_kwargs
                raise ValueError(f"{where}: flow_kwargs do not fit the {name!r} builder: "
                                 f"{exc}") from None
            raise TypeError(f"{where}: {exc}") from None  # an option of the wrong type
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
        if options["base"] == "gaussian":
            return flow
        if type(flow.base) is not StandardNormal:
            raise ValueError(f"{where}: base={options['base']!r} replaces a standard normal "
                             f"base; the {name!r} flow has a {type(flow.base).__name__} base")
        z = self._start_rows(flow, Xs, Cs, f"{where}: starting the {options['base']} base")
        if options["base"] == "mixture":
            log_w, means, variances = _mixture_start(z)
            base = DiagGaussianMixture(flow.dim, len(log_w))
            base.params.update({"logits": log_w, "loc": means,
                                "log_scale": 0.5 * np.log(variances)})
            return Flow(base, flow.bijector)
        if options["base"] == "t_mixture":
            log_w, means, log_scales, nu = _t_mixture_start(z)
            base = DiagStudentTMixture(flow.dim, len(log_w))
            base.params.update({"logits": log_w, "loc": means, "log_scale": log_scales,
                                "raw_df": softplus_inverse(nu)})
            return Flow(base, flow.bijector)
        df, loc, log_scale = _student_t_start(z)
        base = StudentT(flow.dim, df=df)
        base.params.update({"loc": loc, "log_scale": log_scale})
        return Flow(base, flow.bijector)

    @staticmethod
    def _start_rows(flow, Xs, Cs, where):
        """At most ``_T_START_ROWS`` evenly spaced rows (no random draw) mapped to the base
        space by the untrained ``flow``, ``z = T^{-1}(w)``: what the Student t and mixture
        bases are started on."""
        n = Xs.shape[0]
        m = min(n, _T_START_ROWS)
        index = _evenly_spaced(n, m)
        rows = Xs[index] if isinstance(Xs, np.ndarray) else Xs.take(index)
        context = None if Cs is None else (Cs[index] if isinstance(Cs, np.ndarray)
                                           else Cs.take(index))
        try:
            return flow.bijector.inverse(rows, context)[0]
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None

    def _fit_candidates(self, candidates, Cs, c_dim, rng, options, validation_fraction,
                        train_options, where):
        """``flow="auto"`` (and ``whiten="auto"`` on few rows): fit each candidate ``(name,
        family, rows, shift)`` and keep the one with the best validation likelihood (the
        first on a tie). ``rows`` are the standardised rows, whitened or not, and ``shift``
        their whitening's ``sum_j log C_jj`` (0 when not whitened), so that ``val_nll +
        shift`` is the NLL of the standardised rows for every candidate alike.

        Every candidate is trained by :func:`refflow.training.fit` with its own generator
        ``numpy.random.default_rng(split_seed)``, ``split_seed = rng.integers(2**63)`` drawn
        once before the candidates are built (in order, from ``rng``): so every candidate
        holds out the same rows, ``perm[:ceil(validation_fraction * n)]`` with ``perm =
        default_rng(split_seed).permutation(n)``, and sees the same mini-batches, and a
        streamed source (memmap or dask rows) is split by ``fit`` itself, never gathered
        whole (bit for bit the in-memory fit). Without validation rows only the first
        candidate is fitted. A candidate whose training diverges is passed over (its error is
        raised if every candidate diverges); Ctrl-C keeps the candidates fitted so far.

        Returns ``(name, inner_flow, history, scores, fitted)``, ``scores`` the best
        validation NLL of the standardised rows (``val_nll + shift``) of each candidate that
        finished (None without validation rows), ``fitted`` their ``{name: (inner_flow,
        history)}``.
        """
        first = candidates[0]
        n, dim = first[2].shape
        if math.ceil(validation_fraction * n) == 0:
            name, family, rows, _ = first
            inner = self._build(family, dim, c_dim, rng, options, where, rows, Cs)
            history = fit(inner, rows, context=Cs, validation_fraction=0.0, rng=rng,
                          **train_options)
            return name, inner, history, None, {name: (inner, history)}
        split_seed = int(rng.integers(2 ** 63))
        fitted, scores, failure = {}, {}, None
        for name, family, rows, shift in candidates:
            inner = self._build(family, dim, c_dim, rng, options, where, rows, Cs)
            try:
                history = fit(inner, rows, context=Cs, validation_fraction=validation_fraction,
                              rng=np.random.default_rng(split_seed), **train_options)
            except TrainingDiverged as exc:
                failure = exc
                continue
            fitted[name] = (inner, history)
            scores[name] = history.val_nll[history.best_epoch] + shift
            if history.stop_reason == "interrupted":
                break
        if not fitted:
            raise failure
        order = [c[0] for c in candidates]
        name = min(scores, key=lambda k: (scores[k], order.index(k)))
        inner, history = fitted[name]
        return name, inner, history, scores, fitted

    # ---------------------------------------------------------------------- input checks
    def _check_names(self, X, where, *, reset, context=False):
        """scikit-learn's feature-name rules (``_check_feature_names``) for ``X``, or for the
        context (attribute ``context_names_in_``, messages saying "context")."""
        attr = "context_names_in_" if context else "feature_names_in_"
        names = _feature_names(X)
        if reset:
            return names
        fitted = getattr(self, attr, None)
        label = "context" if context else "X"
        what = "context feature names" if context else "feature names"
        if fitted is None and names is None:
            return None
        if names is not None and fitted is None:
            warnings.warn(f"{label} has feature names, but {type(self).__name__} was fitted "
                          f"without feature names", UserWarning, stacklevel=3)
            return None
        if names is None and fitted is not None:
            warnings.warn(f"{label} does not have valid feature names, but "
                          f"{type(self).__name__} was fitted with feature names", UserWarning,
                          stacklevel=3)
            return None
        if len(fitted) != len(names) or np.any(fitted != names):
            raise ValueError(_names_mismatch(fitted, names, what))
        return names

    def _input(self, X, where):
        """``X`` of a fitted model: feature names, then the array checks (sklearn's order)."""
        self._check_names(X, where, reset=False)
        return _check_X(X, where, self.n_features_in_)

    @property
    def _conditional(self):
        return getattr(self, "n_context_features_in_", 0) > 0

    def _context_rows(self, context, where, n, for_samples=False):
        """The standardised ``(n, n_context_features_in_)`` context (None if unconditional)."""
        if not self._conditional:
            if context is not None:
                raise ValueError(f"{where}: this FlowDensity was fitted without a context; "
                                 f"context must be None")
            return None
        if context is None:
            raise ValueError(f"{where}: this FlowDensity is conditional (fitted with "
                             f"{self.n_context_features_in_} context features); pass context "
                             f"of shape (n_samples, {self.n_context_features_in_})")
        self._check_names(context, where, reset=False, context=True)
        C = _check_X(context, where, self.n_context_features_in_, name="context",
                     expecting="context features")
        if C.shape[0] != n:
            if for_samples:
                raise ValueError(f"{where}: context has {C.shape[0]} rows, but n_samples is {n}; "
                                 f"give one context row per sample, or one row of shape "
                                 f"({self.n_context_features_in_},) for all samples")
            raise ValueError(f"{where}: context has {C.shape[0]} rows, but X has {n}")
        return (C - self.context_mean_) / self.context_scale_

    # ------------------------------------------------------------------------ fitting
    def fit(self, X, y=None, *, context=None):
        """Fit the flow to the rows of ``X`` by maximum likelihood.

        Parameters
        ----------
        X : array_like, data frame, numpy.memmap or dask array of shape (n_samples, n_features)
            Finite numbers, at least 2 samples and 1 feature. A data frame's string column
            names become ``feature_names_in_``. A ``numpy.memmap`` or a dask array (and a
            context of either kind) is streamed, never copied whole: one pass checks the values
            and sums the standardisation statistics exactly, and the mini-batches are gathered
            by index (see :func:`refflow.fit`); when whitening, a second pass sums the
            covariance exactly and the rows are whitened as they are read. The fitted model
            is bit for bit the one fitted on the same data in memory with the same
            ``random_state``, with or without ``standardize`` and ``whiten``.
        y : None
            Ignored (scikit-learn's signature: pipelines pass ``y`` positionally).
        context : array_like or data frame of shape (n_samples, n_context_features), optional
            Conditioning variables, one row per sample: fits ``q(x | context)``.

        Returns
        -------
        self

        Raises
        ------
        ValueError
            Bad ``X``, ``context`` or parameters (the estimator is left unchanged), or
            :class:`refflow.training.TrainingDiverged` if the loss stops being finite.
        TypeError
            Sparse ``X``, non-numeric objects in ``X``, or a parameter of the wrong type (the
            estimator is left unchanged).

        Warns
        -----
        UserWarning
            When Ctrl-C stopped the fit (the best epoch's parameters are kept).
        """
        where = "FlowDensity.fit"
        options = self._checked_params()
        names = self._check_names(X, where, reset=True)
        streamed = out_of_core(X) or out_of_core(context)
        if streamed:   # read in pieces, never copied whole; the fit is the in-memory one
            X, x_moments = _streamed_input(X, where, "X")
        else:
            X = _check_X(X, where)
        n, dim = X.shape
        if n < 2:
            raise ValueError(f"{where}: a density needs at least 2 samples to fit, got "
                             f"n_samples = 1 (1 sample)")
        families = AUTO_CANDIDATES if options["flow"] == "auto" else (options["flow"],)
        if dim == 1:
            families = tuple(dict.fromkeys(_ONE_FEATURE.get(f, f) for f in families))

        context_names, C, c_dim = None, None, 0
        if context is not None:
            context_names = self._check_names(context, where, reset=True, context=True)
            if streamed:
                C, c_moments = _streamed_input(context, where, "context")
            else:
                C = _check_X(context, where, name="context")
            if C.shape[0] != n:
                raise ValueError(f"{where}: context has {C.shape[0]} rows, but X has {n}")
            for name in families:
                if "context_dim" not in inspect.signature(BUILDERS[name]).parameters:
                    conditional = sorted(k for k, b in BUILDERS.items()
                                         if "context_dim" in inspect.signature(b).parameters)
                    raise ValueError(f"{where}: the {name!r} flow cannot be conditional (no "
                                     f"conditioner takes a context); use one of {conditional}")
            c_dim = C.shape[1]
        if options["blend"] is True and C is not None:
            raise ValueError(f"{where}: blend=True needs a fit without context (the Gaussian "
                             f"mixture beside the flows is not conditional)")

        if streamed:
            mean, scale = np.zeros(dim), np.ones(dim)
            if self.standardize:
                mean, scale = _checked_scale(x_moments, where, "X")
            # float64 rows (as _check_X gives), standardised elementwise as in memory
            Xs = Standardized(X, mean, scale) if self.standardize else Standardized(X)
            if C is not None:
                c_mean, c_scale = np.zeros(c_dim), np.ones(c_dim)
                if self.standardize:
                    c_mean, c_scale = _checked_scale(c_moments, where, "context")
                Cs = Standardized(C, c_mean, c_scale) if self.standardize else Standardized(C)
        elif self.standardize:
            mean, scale, Xs = _checked_standardization(X, where, "X")
            if C is not None:
                c_mean, c_scale, Cs = _checked_standardization(C, where, "context")
        else:
            mean, scale, Xs = np.zeros(dim), np.ones(dim), X
            if C is not None:
                c_mean, c_scale, Cs = np.zeros(c_dim), np.ones(c_dim), C
        if C is None:
            c_mean, c_scale, Cs = np.zeros(0), np.ones(0), None
        rng = options["rng"]
        validation_fraction = options["validation_fraction"]
        if n - math.ceil(validation_fraction * n) < 1:  # too few rows to hold any out
            validation_fraction = 0.0
        # whiten="auto": on few rows (and with rows held out to choose by) every candidate is
        # also fitted on the standardised rows without the whitening
        both = (options["whiten"] == "auto" and dim > 1 and n <= WHITEN_CHOICE_MAX_ROWS
                and validation_fraction > 0)
        whitening, standardised = None, (Xs if both else None)
        unwhitened = Xs   # the standardised rows (array or streamed): the blend's mixture's
        if options["whiten"] is not False and dim > 1:
            # one pass of exact sums, then C w = s solved row by row (forward substitution,
            # elementwise): a streamed source is whitened as it is read, bit for bit as here
            if streamed:
                chol = _whitening(covariance(Xs))
                Xs = Whitened(Xs, chol)
            else:
                chol = _whitening(CrossMoments(dim).add(Xs).covariance())
                Xs = whiten(Xs, chol)
            log_det = float(np.sum(np.log(np.diag(chol))))
            rotation = options["rotation"]
            if rotation == "ica" or (rotation == "auto" and dim >= ICA_MIN_FEATURES
                                     and n > WHITEN_CHOICE_MAX_ROWS):
                # FastICA on evenly spaced whitened rows; the rows are then whitened and
                # rotated as they are read (elementwise: the same bits streamed or not)
                m = min(n, _ICA_ROWS, max(1, _ICA_BYTES // (8 * dim)))
                index = _evenly_spaced(n, m)
                Q = _ica_rotation(Xs.take(index) if streamed else Xs[index])
                layer, q_log_det = _rotation_layer(Q)
                Xs = Whitened(Xs.source, chol, Q) if streamed else rotate(Xs, Q)
                whitening = (chol, log_det + q_log_det, layer)
            else:
                whitening = (chol, log_det, None)

        epochs, patience = training_length(options["epochs"], options["patience"], dim)
        train_options = dict(
            epochs=epochs, batch_size=options["batch_size"], lr=options["lr"],
            weight_decay=options["weight_decay"], patience=patience,
            # "plateau" acts where patience would stop: without patience, a constant lr
            lr_schedule=(None if options["lr_schedule"] == "plateau" and patience is None
                         else options["lr_schedule"]), restore_best=True,
            # averaging needs validation rows to choose by: none, no averaging
            average=_average(options["average"], dim) if validation_fraction > 0 else None,
            average_decay=options["average_decay"], progress=self._checked_progress(where))
        # (name, family, rows, log|det| of the rows' whitening): whitened ones first, so that
        # they are built from rng and fitted as without the choice (and win a tie); on rows
        # rotated to independent components, flow="auto" also fits ROTATED_CANDIDATES
        shift = 0.0 if whitening is None else whitening[1]
        rotated = whitening is not None and whitening[2] is not None
        if rotated and options["flow"] == "auto":
            families = families + tuple(f for f in ROTATED_CANDIDATES if f not in families)
        candidates = [(name, name, Xs, shift) for name in families]
        if both:
            candidates += [(name + _UNWHITENED, name, standardised, 0.0) for name in families
                           if not (rotated and name in ROTATED_CANDIDATES)]
        candidate_scores = None
        if len(candidates) == 1:
            name = label = families[0]
            inner = self._build(name, dim, c_dim, rng, options, where, Xs, Cs)
            history = fit(inner, Xs, context=Cs, validation_fraction=validation_fraction,
                          rng=rng, **train_options)
            fitted = {label: (inner, history)}
        else:
            label, inner, history, candidate_scores, fitted = self._fit_candidates(
                candidates, Cs, c_dim, rng, options, validation_fraction, train_options, where)
            name = _candidate_family(label)
        whitened = whitening is not None and not label.endswith(_UNWHITENED)
        # the NLLs are of the standardised (and whitened) data:
        # log q(x) = log q_w(w) - sum_j log C_jj - sum_j log scale_j
        log_scale = float(np.sum(np.log(scale)))
        history.nll_shift = log_scale + (whitening[1] if whitened else 0.0)

        def data_flow(inner, whitened, rotation):
            # the flow of the data's units: inner, [rotation,] [whitening,] standardisation
            inner.eval()
            affine = Affine(dim)
            affine.params["shift"] = mean
            affine.params["log_scale"] = np.log(scale)
            layers = [inner.bijector, affine]
            if whitened:
                layers.insert(1, _whitening_layer(whitening[0]))
                if rotated:
                    layers.insert(1, rotation)
            return Flow(inner.base, Chain(layers)).eval()

        flow = data_flow(inner, whitened, None if whitening is None else whitening[2])
        blend = None
        blending = options["blend"] is True or (options["blend"] == "auto"
                                                 and options["flow"] == "auto" and C is None)
        if blending and history.validation_index is not None \
                and len(history.validation_index) > 0:
            others = [(key, data_flow(other, whitening is not None
                                      and not key.endswith(_UNWHITENED),
                                      copy.deepcopy(None if whitening is None else whitening[2])))
                      for key, (other, _) in fitted.items() if key != label]
            blend = _fit_blend(X, unwhitened, mean, scale, history.validation_index,
                               [(label, flow)] + others)

        # Everything succeeded: only now does the estimator change.
        self.flow_ = flow
        self.history_ = history
        self.flow_name_ = name
        self.whitened_ = whitened
        self.rotated_ = whitened and rotated
        self.validation_index_ = (np.zeros(0, dtype=np.intp) if history.validation_index is None
                                  else history.validation_index)
        if blend is None:
            for attr in ("_blend", "blend_weights_", "blend_score_"):
                self.__dict__.pop(attr, None)
        else:
            self._blend, self.blend_weights_, self.blend_score_ = blend
        if candidate_scores is None:
            self.__dict__.pop("candidate_scores_", None)
        else:
            # validation NLLs of the standardised data -> mean log-likelihoods in data units
            self.candidate_scores_ = {k: -(v + log_scale) for k, v in candidate_scores.items()}
        self.n_features_in_ = dim
        self.mean_ = mean
        self.scale_ = scale
        self.n_context_features_in_ = c_dim
        self.context_mean_, self.context_scale_ = c_mean, c_scale
        for attr, value in (("feature_names_in_", names), ("context_names_in_", context_names)):
            if value is not None:
                setattr(self, attr, value)
            elif hasattr(self, attr):  # fitted again on data without names
                delattr(self, attr)
        if history.stop_reason == "interrupted":
            kept = ("the parameters after the last step" if history.best_epoch is None else
                    f"the parameters of the best epoch ({history.best_epoch + 1}, 1-based)")
            warnings.warn(f"{where}: interrupted (Ctrl-C) after {history.n_epochs} complete "
                          f"epochs and {history.n_steps} steps; {kept} are kept",
                          UserWarning, stacklevel=2)
        return self

    def fit_transform(self, X, y=None, **fit_params):
        """``fit(X, y, **fit_params)``, then :meth:`transform` of the same rows (and context)."""
        return self.fit(X, y, **fit_params).transform(X, context=fit_params.get("context"))

    # ------------------------------------------------------------------- row by row work
    def _progress(self, where, n):
        if n > 1 and _show_progress(self.progress):
            return _RowProgress(where, n)
        return _NoProgress()

    def _density(self):
        """What scores and samples: the blend (``blend``), if there is one, or the kept flow."""
        blend = getattr(self, "_blend", None)
        return self.flow_ if blend is None else blend

    def _log_density(self, X, C, where, batch_size):
        """``(log q, rows out of range)``: chunked as ``Flow.log_prob``; a chunk that fails
        because a row is out of range is split in halves until the rows that fail on their
        own are found, and the others are scored without them."""
        lp = empty_output(X.shape[0], where)
        bad = []
        bar = self._progress(where, X.shape[0])
        try:
            for start, stop in _row_chunks(X.shape[0], batch_size):
                lp[start:stop] = self._chunk_log_density(X, C, start, stop, bad, where)
                bar.update(stop - start)
        finally:
            bar.close()
        return lp, bad

    def _chunk_log_density(self, X, C, start, stop, bad, where):
        rows = slice(start, stop)
        try:
            return self._density().log_prob(X[rows], None if C is None else C[rows])
        except ValueError as exc:
            if not _out_of_range(exc):
                raise ValueError(f"{where}: {exc}") from None
        found = []
        mid = (start + stop) // 2
        self._bisect(X, C, start, mid, found, where)
        self._bisect(X, C, mid, stop, found, where)
        out = np.full(stop - start, -np.inf)
        keep = np.ones(stop - start, dtype=bool)
        keep[np.asarray(found, dtype=np.intp) - start] = False
        if keep.any():
            try:
                out[keep] = self._density().log_prob(
                    X[rows][keep], None if C is None else C[rows][keep])
            except ValueError as exc:
                raise ValueError(f"{where}: {exc}") from None
        bad.extend(found)
        return out

    def _bisect(self, X, C, start, stop, found, where):
        """Append to ``found`` the rows of ``[start, stop)`` that are out of range alone."""
        if start >= stop:
            return
        try:
            self._density().log_prob(X[start:stop], None if C is None else C[start:stop])
            return
        except ValueError as exc:
            if not _out_of_range(exc):
                raise ValueError(f"{where}: {exc}") from None
        if stop - start == 1:
            found.append(start)
            return
        mid = (start + stop) // 2
        self._bisect(X, C, start, mid, found, where)
        self._bisect(X, C, mid, stop, found, where)

    @staticmethod
    def _warn_out_of_range(bad, n, where):
        if bad:
            warnings.warn(
                f"{where}: {len(bad)} of {n} rows lie outside the range where the model's "
                f"log-density is representable in float64 (the first is row {min(bad)}); "
                f"their scores are -inf", RuntimeWarning, stacklevel=3)

    def _map_rows(self, V, C, where, direction, batch_size):
        """``T^{-1}(x)`` (``direction="inverse"``) or ``T(z)`` of every row, chunked."""
        out = empty_output(V.shape, where)
        run = getattr(self.flow_.bijector, direction)
        bar = self._progress(where, V.shape[0])
        try:
            for start, stop in _row_chunks(V.shape[0], batch_size):
                rows = slice(start, stop)
                out[rows] = run(V[rows], None if C is None else C[rows])[0]
                bar.update(stop - start)
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
        finally:
            bar.close()
        return out

    # ------------------------------------------------------------------------ scoring
    def score_samples(self, X, *, context=None, batch_size=None):
        """Log-density of each row, ``log q(x)`` in nats, in the units of ``X``.

        Parameters
        ----------
        X : array_like or data frame of shape (n_samples, n_features_in_)
        context : array_like of shape (n_samples, n_context_features_in_), optional
            Required by (and only by) a conditional model.
        batch_size : int >= 1 or None, default None
            Rows per pass, to bound memory (None: ``refflow.distributions.DEFAULT_BATCH_SIZE``);
            see :meth:`refflow.Flow.log_prob`. The scores do not depend on it.

        Returns
        -------
        ndarray of shape (n_samples,)
            ``-inf`` for a row so far out that its log-density is not representable in
            float64 (a ``RuntimeWarning`` says how many); every other row is scored exactly
            as it would be without those rows.

        Notes
        -----
        A ``dask.array.Array`` ``X`` (rows in chunks of known sizes; ``context`` a dask
        array or an array) gives a lazy dask array: one task per chunk, each calling this
        method on its rows, the model in the graph once (a copy taken now). Computed, it is
        the NumPy result bit for bit; the warning about rows scored ``-inf`` is then given
        by the task (on the worker that ran it), with row numbers within its chunk.
        """
        where = "FlowDensity.score_samples"
        self._check_fitted(where)
        if is_dask_array(X):
            return self._lazy_scores(X, context, where, batch_size)
        X = self._input(X, where)
        C = self._context_rows(context, where, X.shape[0])
        batch_size = check_batch_size(batch_size, where, default=DEFAULT_BATCH_SIZE)
        lp, bad = self._log_density(X, C, where, batch_size)
        self._warn_out_of_range(bad, X.shape[0], where)
        return lp

    def score(self, X, y=None, *, context=None, return_std=False):
        """Mean log-likelihood per sample, ``mean_n log q(x_n)``, in nats.

        As ``GaussianMixture.score``; note that ``KernelDensity.score`` returns the *sum*
        over the samples instead. ``-inf`` when a row is out of range (see
        :meth:`score_samples`). The mean is correctly rounded (exact sums of the scores), so
        it does not depend on their order or on chunking: a dask ``X`` gives a lazy 0-d dask
        array whose computed value is the NumPy result bit for bit.

        Parameters
        ----------
        X : array_like or data frame of shape (n_samples, n_features_in_)
        y : None
            Ignored.
        context : array_like of shape (n_samples, n_context_features_in_), optional
        return_std : bool, default False
            Also return the standard error of the mean, ``std(log q(x_n)) / sqrt(n)`` (the
            sample standard deviation, ``ddof=1``): the uncertainty of the score as an estimate
            of the expected log-likelihood ``E log q(x)`` under the law the rows were drawn
            from, for the fitted model held fixed (it does not include the fit's own
            variability). NaN for a single row or when a row scores ``-inf``.

        Returns
        -------
        float, or (float, float) with ``return_std=True``
            A 0-d dask array for a dask ``X`` (``return_std`` is refused there).

        Examples
        --------
        >>> import numpy as np
        >>> from refflow.estimator import FlowDensity
        >>> X = np.random.default_rng(0).normal(size=(200, 2))
        >>> model = FlowDensity("maf", n_layers=1, hidden=(8,), epochs=2, random_state=0)
        >>> mean, se = model.fit(X).score(X, return_std=True)
        >>> bool(0 < se < 0.2)
        True
        """
        where = "FlowDensity.score"
        self._check_fitted(where)
        check_bool(return_std, where, "return_std")
        if is_dask_array(X):
            if return_std:
                raise ValueError(f"{where}: return_std=True is not available for a dask X")
            from ._dask import lazy_mean

            return lazy_mean(self._lazy_scores(X, context, where, None))
        X = self._input(X, where)
        C = self._context_rows(context, where, X.shape[0])
        lp, bad = self._log_density(X, C, where, DEFAULT_BATCH_SIZE)
        self._warn_out_of_range(bad, X.shape[0], where)
        mean = exact_mean(lp)
        if not return_std:
            return mean
        if X.shape[0] < 2 or not np.isfinite(mean):
            return mean, math.nan
        return mean, float(np.std(lp, ddof=1) / math.sqrt(X.shape[0]))

    def _lazy_scores(self, X, context, where, batch_size):
        """:meth:`score_samples` of each row chunk of the dask array ``X``, lazily."""
        from ._dask import map_rows

        batch_size = check_batch_size(batch_size, where, default=DEFAULT_BATCH_SIZE)
        model = self._quiet_copy()
        return map_rows(model, "score_samples", X, context, where=where,
                        dim=self.n_features_in_, context_dim=self._context_dim,
                        options={"batch_size": batch_size}, allow_shared=False)

    @property
    def _context_dim(self):
        return self.n_context_features_in_ if self._conditional else None

    def _quiet_copy(self):
        """A shallow copy without progress display, to ship to dask workers (the shipping
        copies it again, deeply)."""
        model = object.__new__(type(self))
        model.__dict__.update(self.__dict__)
        model.progress = False
        return model

    def transform(self, X, *, context=None, batch_size=None):
        """Map rows to the latent space: ``z = T^{-1}(x)``, standard normal under the model.

        Parameters
        ----------
        X : array_like or data frame of shape (n_samples, n_features_in_)
        context : array_like of shape (n_samples, n_context_features_in_), optional
        batch_size : int >= 1 or None, default None
            Rows per pass (bounded memory); the result does not depend on it.

        Returns
        -------
        Z : ndarray of shape (n_samples, n_features_in_)

        Raises
        ------
        ValueError
            Bad input, or a row whose latent point is not representable in float64.
        """
        where = "FlowDensity.transform"
        self._check_fitted(where)
        X = self._input(X, where)
        C = self._context_rows(context, where, X.shape[0])
        batch_size = check_batch_size(batch_size, where, default=DEFAULT_BATCH_SIZE)
        return self._map_rows(X, C, where, "inverse", batch_size)

    def inverse_transform(self, Z, *, context=None, batch_size=None):
        """Map latent points back to the data space: ``x = T(z)``.

        Parameters
        ----------
        Z : array_like of shape (n_samples, n_features_in_)
        context : array_like of shape (n_samples, n_context_features_in_), optional
        batch_size : int >= 1 or None, default None

        Returns
        -------
        X : ndarray of shape (n_samples, n_features_in_)
        """
        where = "FlowDensity.inverse_transform"
        self._check_fitted(where)
        Z = _check_X(Z, where, self.n_features_in_, name="Z")
        C = self._context_rows(context, where, Z.shape[0])
        batch_size = check_batch_size(batch_size, where, default=DEFAULT_BATCH_SIZE)
        return self._map_rows(Z, C, where, "forward", batch_size)

    def get_feature_names_out(self, input_features=None):
        """Names of the latent coordinates of :meth:`transform`: ``flowdensity0``, ...

        ``input_features``, when given, must match ``feature_names_in_`` (scikit-learn's rule).
        """
        self._check_fitted("FlowDensity.get_feature_names_out")
        if input_features is not None:
            given = np.asarray(input_features, dtype=object)
            fitted = getattr(self, "feature_names_in_", None)
            if fitted is not None and not np.array_equal(fitted, given):
                raise ValueError("input_features is not equal to feature_names_in_")
            if len(given) != self.n_features_in_:
                raise ValueError(f"input_features should have length equal to number of "
                                 f"features ({self.n_features_in_}), got {len(given)}")
        return np.asarray([f"flowdensity{i}" for i in range(self.n_features_in_)], dtype=object)

    def sample(self, n_samples=1, random_state=None, *, context=None, batch_size=None,
               chunks=None):
        """Draw samples from the fitted density.

        Parameters
        ----------
        n_samples : int, default 1
        random_state : None, int, numpy.random.Generator or numpy.random.RandomState
            None draws fresh randomness (as ``KernelDensity.sample``).
        context : array_like, optional
            Conditional models only: one row ``(n_context_features_in_,)`` for all samples,
            or ``(n_samples, n_context_features_in_)``, one sample per row.
        batch_size : int >= 1 or None, default None
            Rows per pass, to bound memory; see :meth:`refflow.Flow.sample_and_log_prob`. The
            samples do not depend on it.
        chunks : int or tuple of ints, optional
            Draw lazily: a ``dask.array.Array`` of ``n_samples`` rows in chunks of ``chunks``
            rows (or of the given sizes, summing to ``n_samples``), one task per chunk, the
            model in the graph once. Chunk ``i`` is drawn with the generator
            ``numpy.random.default_rng(seeds[i])``, ``seeds =
            SeedSequence(random_state).spawn(n_chunks)`` (a Generator or RandomState
            ``random_state`` gives the root seed from four 32-bit draws), so the computed
            samples depend on ``random_state`` and the chunk sizes only: not on the scheduler,
            the number of workers or the order in which chunks run. They differ from the
            samples drawn without ``chunks`` (one generator for all rows). ``context`` may
            then be a dask array as well. Needs dask.

        Returns
        -------
        X : ndarray of shape (n_samples, n_features_in_)
            A dask array with ``chunks``.
        """
        where = "FlowDensity.sample"
        self._check_fitted(where)
        n_samples = check_int(n_samples, where, "n_samples", minimum=1)
        batch_size = check_batch_size(batch_size, where, default=DEFAULT_BATCH_SIZE)
        if chunks is not None:
            from ._dask import sample_rows

            if is_dask_array(context) or np.ndim(context) != 1:
                # per-row context: each chunk gets its own rows (standardised there)
                c = context
            else:
                c = np.asarray(context)
            return sample_rows(self._quiet_copy(), "sample", n_samples, self.n_features_in_,
                               random_state, chunks, where=where, context=c,
                               context_dim=self._context_dim,
                               options={"batch_size": batch_size})
        shared = None
        rows = None
        if self._conditional and context is not None and np.ndim(context) == 1:
            shared = self._context_rows(np.reshape(np.asarray(context), (1, -1)), where, 1)[0]
        else:
            rows = self._context_rows(context, where, n_samples, for_samples=True)
        gen = _generator(random_state, where)
        out = empty_output((n_samples, self.n_features_in_), where)
        bar = self._progress(where, n_samples)
        try:
            for start, stop in _row_chunks(n_samples, batch_size):
                c = shared if rows is None else rows[start:stop]
                out[start:stop] = self._density().sample(stop - start, gen, context=c)
                bar.update(stop - start)
        except ValueError as exc:  # e.g. a sample beyond float64
            raise ValueError(f"{where}: {exc}") from None
        finally:
            bar.close()
        return out

    # ---------------------------------------------------------------------- save / load
    @property
    def params(self):
        """The fitted flow's parameters (empty before ``fit``), for :mod:`refflow.io`; with a
        blend, also those of its other flows, ``blend.<j>.<key>`` for the ``j``-th (from 1)."""
        return self._arrays("params")

    @property
    def buffers(self):
        """The fitted flow's buffers (empty before ``fit``), for :mod:`refflow.io` (and a
        blend's, keyed as in :attr:`params`)."""
        return self._arrays("buffers")

    def _arrays(self, group):
        if not self.__sklearn_is_fitted__():
            return {}
        out = dict(getattr(self.flow_, group))
        blend = getattr(self, "_blend", None)
        for j, flow in enumerate([] if blend is None else blend.flows[1:], start=1):
            out.update({f"blend.{j}.{k}": v for k, v in getattr(flow, group).items()})
        return out

    def _init_config(self):
        """The constructor parameters as JSON values (a Generator seed is not stored)."""
        params = self.get_params()
        if isinstance(params["hidden"], (tuple, list)):
            params["hidden"] = [int(h) if isinstance(h, numbers.Integral) else h
                                for h in params["hidden"]]
        random_state = params["random_state"]
        if isinstance(random_state, numbers.Integral) and not isinstance(random_state, bool):
            params["random_state"] = int(random_state)
        else:
            params["random_state"] = None  # a Generator's state is never stored
        return params

    def _config(self):
        """Constructor parameters, and for a fitted estimator the flow's spec and scalars."""
        config = {"params": self._init_config(), "fitted": None}
        if self.__sklearn_is_fitted__():
            fitted = {
                "flow": io.to_spec(self.flow_),
                "n_features_in_": int(self.n_features_in_),
                "mean_": self.mean_.tolist(),
                "scale_": self.scale_.tolist(),
                "history_": self.history_.as_dict(),
            }
            if self._conditional:
                fitted["context_mean_"] = self.context_mean_.tolist()
                fitted["context_scale_"] = self.context_scale_.tolist()
            for attr in ("feature_names_in_", "context_names_in_"):
                if hasattr(self, attr):
                    fitted[attr] = [str(v) for v in getattr(self, attr)]
            if hasattr(self, "flow_name_"):
                fitted["flow_name_"] = str(self.flow_name_)
            if hasattr(self, "whitened_"):
                fitted["whitened_"] = bool(self.whitened_)
            if hasattr(self, "rotated_"):
                fitted["rotated_"] = bool(self.rotated_)
            if hasattr(self, "candidate_scores_"):
                fitted["candidate_scores_"] = {str(k): float(v)
                                               for k, v in self.candidate_scores_.items()}
            if getattr(self, "_blend", None) is not None:
                fitted["blend"] = {
                    "weights": [float(v) for v in self._blend.weights],
                    "flows": [io.to_spec(flow) for flow in self._blend.flows[1:]],
                    "blend_weights_": {str(k): float(v) for k, v in self.blend_weights_.items()},
                    "blend_score_": float(self.blend_score_)}
            config["fitted"] = fitted
        return config

    @classmethod
    def _declare(cls, config):
        """The fitted flow's arrays (none before ``fit``), for :mod:`refflow.io`."""
        fitted = config.get("fitted")
        if fitted is None:
            return declaration()
        if not isinstance(fitted, dict) or "flow" not in fitted:
            raise ValueError("FlowDensity (fitted state in the file): expected a dict with the "
                             "key flow")
        blend = fitted.get("blend")
        specs = blend.get("flows") if isinstance(blend, dict) else None
        if blend is not None and not isinstance(specs, list):
            raise ValueError("FlowDensity (fitted state in the file): blend must be a dict with "
                             "a list of flows")
        return combine(("", declare(fitted["flow"])),
                       *((f"blend.{j}", declare(spec)) for j, spec in
                         enumerate(specs or [], start=1)))

    @classmethod
    def _from_config(cls, config):
        """An estimator of the same structure (parameters and buffers come from the file)."""
        params = dict(config["params"])
        if isinstance(params.get("hidden"), list):
            params["hidden"] = tuple(params["hidden"])
        estimator = cls(**params)
        fitted = config.get("fitted")
        if fitted is not None:
            # A damaged file's values reach here: check them (ValueError, which refflow.io.load
            # reports naming the file) rather than fail later with a TypeError or AttributeError.
            where = "FlowDensity (fitted state in the file)"
            required = {"flow", "n_features_in_", "mean_", "scale_", "history_"}
            optional = {"feature_names_in_", "context_mean_", "context_scale_",
                        "context_names_in_", "flow_name_", "whitened_", "rotated_",
                        "candidate_scores_", "blend"}
            if not isinstance(fitted, dict) or not required <= set(fitted) <= required | optional:
                raise ValueError(f"{where}: expected the keys flow, n_features_in_, mean_, "
                                 f"scale_ and history_ (and optionally {sorted(optional)})")
            flow = io.from_spec(fitted["flow"]).eval()
            dim = fitted["n_features_in_"]
            if type(dim) is not int or dim != getattr(flow, "dim", None):
                raise ValueError(f"{where}: n_features_in_ {dim!r} does not match the flow")
            c_dim = getattr(flow, "context_dim", None) or 0
            if ("context_mean_" in fitted) != (c_dim > 0) or (
                    "context_mean_" in fitted) != ("context_scale_" in fitted):
                raise ValueError(f"{where}: context_mean_ and context_scale_ must be present "
                                 f"exactly when the flow is conditional")
            arrays = {}
            for key, size in (("mean_", dim), ("scale_", dim), ("context_mean_", c_dim),
                              ("context_scale_", c_dim)):
                value = fitted.get(key, [])
                if not (isinstance(value, list) and len(value) == size and all(
                        type(v) in (int, float) and math.isfinite(v) for v in value)):
                    raise ValueError(f"{where}: {key} must be a list of {size} finite numbers")
                arrays[key] = np.asarray(value, dtype=np.float64).reshape(size)
            if not ((arrays["scale_"] > 0).all() and (arrays["context_scale_"] > 0).all()):
                raise ValueError(f"{where}: scale_ and context_scale_ must be positive")
            names = {}
            for key, size in (("feature_names_in_", dim), ("context_names_in_", c_dim)):
                if key in fitted:
                    value = fitted[key]
                    if not (isinstance(value, list) and len(value) == size
                            and all(isinstance(v, str) for v in value)):
                        raise ValueError(f"{where}: {key} must be a list of {size} str")
                    names[key] = np.asarray(value, dtype=object)
            estimator.flow_ = flow
            estimator.n_features_in_ = dim
            estimator.mean_, estimator.scale_ = arrays["mean_"], arrays["scale_"]
            estimator.n_context_features_in_ = c_dim
            estimator.context_mean_ = arrays["context_mean_"]
            estimator.context_scale_ = arrays["context_scale_"]
            for key, value in names.items():
                setattr(estimator, key, value)
            # files written before flow_name_ existed: the family asked for
            flow_name = fitted.get("flow_name_", params.get("flow"))
            if not (isinstance(flow_name, str) and flow_name in BUILDERS):
                raise ValueError(f"{where}: flow_name_ must name a family of "
                                 f"refflow.flows.BUILDERS, got {flow_name!r}")
            estimator.flow_name_ = flow_name
            # files written before whitened_ existed: whiten was True or False then
            whitened = fitted.get("whitened_", params.get("whiten") is True and dim > 1)
            if type(whitened) is not bool:
                raise ValueError(f"{where}: whitened_ must be true or false, got {whitened!r}")
            estimator.whitened_ = whitened
            # files written before rotated_ existed: no fit was rotated then
            rotated = fitted.get("rotated_", False)
            if type(rotated) is not bool or (rotated and not whitened):
                raise ValueError(f"{where}: rotated_ must be true or false (false when "
                                 f"whitened_ is), got {rotated!r}")
            estimator.rotated_ = rotated
            if "candidate_scores_" in fitted:
                scores = fitted["candidate_scores_"]
                if not (isinstance(scores, dict) and all(
                        _candidate_family(k) in BUILDERS and type(v) in (int, float)
                        and math.isfinite(v) for k, v in scores.items())):
                    raise ValueError(f"{where}: candidate_scores_ must map family names "
                                     f"(optionally + {_UNWHITENED!r}) to finite numbers")
                estimator.candidate_scores_ = {k: float(v) for k, v in scores.items()}
            estimator.history_ = History.from_dict(fitted["history_"], where)
            if "blend" in fitted:
                estimator._blend, estimator.blend_weights_, estimator.blend_score_ = \
                    _blend_from_config(fitted["blend"], flow, where)
        return estimator

    def save(self, path):
        """Save to ``path`` with :func:`refflow.io.save` (load with :func:`refflow.io.load`).

        The file is an ``.npz`` archive written under exactly the name given; a ``.npy``
        name is refused (``ValueError``: that suffix means one array, which it would not be).
        """
        io.save(path, self)

    def __getstate__(self):
        # A fitted flow travels as its save/load spec and arrays (what refflow.io writes), so
        # pickling and deep copies never depend on how the layers store their parameters.
        state = dict(self.__dict__)
        if "flow_" in state:
            state["_flow_state"] = _flow_state(state.pop("flow_"))
        blend = state.pop("_blend", None)
        if blend is not None:   # the kept flow is the blend's first: not stored twice
            state["_blend_state"] = (blend.weights.copy(),
                                     [_flow_state(flow) for flow in blend.flows[1:]])
        return state

    def __setstate__(self, state):
        state = dict(state)
        flow_state = state.pop("_flow_state", None)
        blend_state = state.pop("_blend_state", None)
        self.__dict__.update(state)
        if flow_state is not None:
            self.flow_ = _flow_from_state(flow_state)
        if blend_state is not None:
            weights, others = blend_state
            self._blend = _Blend([self.flow_] + [_flow_from_state(s) for s in others], weights)


def _flow_state(flow):
    """``(spec, params, buffers)`` of a flow, copies (pickling; see ``__getstate__``)."""
    return (io.to_spec(flow), {k: np.array(v) for k, v in flow.params.items()},
            {k: np.array(v) for k, v in flow.buffers.items()})


def _flow_from_state(state):
    """The flow of :func:`_flow_state`'s triple, in eval mode."""
    spec, params, buffers = state
    flow = io.from_spec(spec, UNBOUNDED)  # our own state (unpickling is trusted)
    flow.params.update(params)
    targets = flow.buffers
    for key, value in buffers.items():
        if targets[key].flags.writeable:  # read-only ones are fixed by the config
            targets[key][...] = value
    return flow.eval()


def _blend_from_config(blend, flow, where):
    """``(_Blend, blend_weights_, blend_score_)`` from a file's ``blend`` entry (checked: a
    damaged file raises ``ValueError``); ``flow`` is the loaded ``flow_``, the blend's first."""
    if not (isinstance(blend, dict) and set(blend) == {"weights", "flows", "blend_weights_",
                                                        "blend_score_"}):
        raise ValueError(f"{where}: blend must have exactly the keys blend_score_, "
                         f"blend_weights_, flows and weights")
    weights, specs = blend["weights"], blend["flows"]
    if not (isinstance(weights, list) and isinstance(specs, list)
            and len(weights) == len(specs) + 1 and all(
            type(v) in (int, float) and math.isfinite(v) and v >= 0 for v in weights)
            and abs(sum(weights) - 1.0) < _BLEND_SUM_TOL):
        raise ValueError(f"{where}: blend weights must be one non-negative number per flow "
                         f"(the kept flow first) summing to 1")
    labels, score = blend["blend_weights_"], blend["blend_score_"]
    if not (isinstance(labels, dict) and all(type(v) in (int, float) and math.isfinite(v)
                                             for v in labels.values())
            and type(score) in (int, float) and math.isfinite(score)):
        raise ValueError(f"{where}: blend_weights_ must map names to numbers and "
                         f"blend_score_ must be a finite number")
    flows = [io.from_spec(spec).eval() for spec in specs]
    if any(getattr(f, "dim", None) != flow.dim or getattr(f, "context_dim", None)
           for f in flows):
        raise ValueError(f"{where}: every flow of the blend must be unconditional, of the "
                         f"model's {flow.dim} features")
    return (_Blend([flow] + flows, weights), {str(k): float(v) for k, v in labels.items()},
            float(score))


register(FlowDensity)
