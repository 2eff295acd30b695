r"""``FlowDensity``: a normalizing flow with scikit-learn's density-estimator surface.

Three lines fit a density, score points and draw samples::

    model = FlowDensity(flow="nsf", random_state=0).fit(X)
    log_density = model.score_samples(X_new)     # (n,) log q(x), in the units of X
    X_gen = model.sample(100, random_state=1)

scikit-learn is not needed: the estimator follows its conventions (``__init__`` only stores
arguments, ``fit`` returns ``self``, fitted attributes end in ``_``, ``get_params`` /
``set_params``, ``NotFittedError`` before ``fit``) and passes
``sklearn.utils.estimator_checks.check_estimator``, importing scikit-learn only where its
machinery asks for it (``__sklearn_tags__``, the not-fitted error).
"""

import inspect
import math
import numbers

import numpy as np

from ._validation import check_rng
from .bijectors import Affine, Chain
from .distributions import Flow
from .distributions import _check_batch_size as _flow_batch_size
from .flows import BUILDERS
from . import io
from .io.spec import register
from .nn.mlp import _check_hidden
from .training.loop import History, fit

__all__ = ["FlowDensity"]

#: Coupling layouts cannot split one feature; these autoregressive layouts replace them.
_ONE_FEATURE = {"realnvp": "maf", "glow": "maf", "nsf-coupling": "nsf"}
#: Builder options that FlowDensity sets itself, with where to set them instead.
_RESERVED = {"rng": "random_state", "hidden": "hidden", "n_layers": "n_layers",
             "context_dim": None}


class _NotFittedError(ValueError, AttributeError):
    """Raised before ``fit`` when scikit-learn is not installed (as its ``NotFittedError``)."""


def _not_fitted_error(message):
    try:
        from sklearn.exceptions import NotFittedError
    except ImportError:  # scikit-learn is optional
        NotFittedError = _NotFittedError
    return NotFittedError(message)


# ----------------------------------------------------------------------------- validation
def _check_int(value, where, name, minimum=1):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral) \
            or int(value) < minimum:
        raise ValueError(f"{where}: {name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_real(value, where, name, low, high=math.inf, low_open=False, high_open=True):
    ok = not isinstance(value, (bool, np.bool_)) and isinstance(value, numbers.Real) \
        and math.isfinite(value)
    if ok:
        value = float(value)
        ok = (value > low if low_open else value >= low) and \
             (value < high if high_open else value <= high)
    if not ok:
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise ValueError(f"{where}: {name} must be a number in {interval}, got {value!r}")
    return value


def _check_batch_size(batch_size, where):
    """``batch_size`` unchanged when valid (a positive int or None), else ``ValueError``."""
    if batch_size is not None:
        _flow_batch_size(batch_size, where)
    return batch_size


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


def _check_X(X, where, n_features=None):
    """``X`` as a C-contiguous float64 ``(n_samples, n_features)`` array, checked as sklearn
    checks it (and with its messages, which its estimator checks look for)."""
    if _is_sparse(X):
        raise TypeError(f"{where}: sparse input is not supported (a flow models a dense "
                        f"density); convert it with X.toarray()")
    try:
        arr = np.asarray(X)
    except Exception as exc:  # ragged nested lists and the like
        raise ValueError(f"{where}: X could not be converted to an array ({exc})") from None
    kind = arr.dtype.kind
    if kind == "c":
        raise ValueError(f"{where}: Complex data not supported; X must be real, got dtype "
                         f"{arr.dtype}")
    if kind == "O":
        # Python numbers (or numeric strings) in an object array convert as sklearn's
        # check_array converts them; anything else raises float()'s own TypeError/ValueError.
        try:
            arr = arr.astype(np.float64)
        except TypeError as exc:
            raise TypeError(f"{where}: X must hold numbers: {exc}") from None
        except ValueError as exc:
            raise ValueError(f"{where}: X must hold numbers: {exc}") from None
    elif kind not in "biuf":
        raise ValueError(f"{where}: X must be a real numeric array, got dtype {arr.dtype}")
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
        raise ValueError(f"{where}: Input X contains NaN or infinity ({int((~finite).sum())} "
                         f"value(s), the first at row {row}, column {col})")
    if n_features is not None and arr.shape[1] != n_features:
        raise ValueError(f"{where}: X has {arr.shape[1]} features, but FlowDensity is expecting "
                         f"{n_features} features as input.")
    return arr


def _standardization(X):
    """Training mean and standard deviation; a constant feature gets scale 1.

    Each column is first divided by a power of two ``m`` near its largest magnitude (exactly),
    so that squares cannot overflow: ``mean = m mean(X / m)``, ``std = m std(X / m)``. A
    feature counts as constant when its variance is within the rounding error of computing
    it, ``var <= n eps var + (n eps mean)^2`` (scikit-learn's ``StandardScaler`` test), so that
    a column of identical values is not blown up by a spread of a few ulps.
    """
    n = X.shape[0]
    m = np.abs(X).max(axis=0)
    # 2^(e - 1) <= m < 2^e: u = X / 2^(e - 1) lies in (-2, 2), and 2^(e - 1) never overflows
    m = np.where(m > 0, np.ldexp(1.0, np.frexp(m)[1] - 1), 1.0)
    u = X / m
    mean_u, var_u = u.mean(axis=0), u.var(axis=0)
    eps = np.finfo(np.float64).eps
    constant = var_u <= n * eps * var_u + (n * mean_u * eps) ** 2
    return m * mean_u, np.where(constant, 1.0, m * np.sqrt(var_u))


# ------------------------------------------------------------------------------ estimator
class FlowDensity:
    r"""Density estimation with a normalizing flow, scikit-learn style.

    Parameters
    ----------
    flow : str, default "nsf"
        A key of :data:`refflow.flows.BUILDERS`: ``"nsf"`` (autoregressive neural spline
        flow, the default: flexible, bounded splines that train stably), ``"nsf-coupling"``,
        ``"maf"``, ``"realnvp"``, ``"glow"``, ``"planar"``, ``"radial"``, ``"sylvester"``,
        ``"naf"``, ``"unaf"``, ``"sospf"``, ``"bpf"`` (monotone-transformer flows).
        With a single feature the coupling layouts are impossible, and ``"realnvp"`` and
        ``"glow"`` fit a ``"maf"``, ``"nsf-coupling"`` an ``"nsf"``.
    n_layers : int, optional
        Number of steps; None keeps the builder's default (5 for the network flows, 16 for
        the planar family).
    hidden : sequence of int, default (64, 64)
        Conditioner widths (ignored by the planar family, which has no conditioner). MADE's
        default degree rule needs every width ``>= n_features - 1``: widen it for wider data,
        or pass ``flow_kwargs={"hidden_degrees": "random"}`` ("maf", "nsf").
    flow_kwargs : dict, optional
        Further builder options, e.g. ``{"n_bins": 16}`` or ``{"scale": "exp"}``; not
        ``rng``, ``hidden``, ``n_layers`` (the parameters above) or ``context_dim``.
    epochs : int, default 100
        Maximum number of passes over the training data.
    batch_size : int, default 256
        Mini-batch size (the usual choice of the peers' examples).
    lr : float, default 1e-3
        Adam's learning rate (its standard default, zuko's and nflows' examples).
    weight_decay : float, default 0.0
        Decoupled weight decay (AdamW).
    validation_fraction : float, default 0.1
        Share of the rows (``ceil(fraction * n)``) held out to pick the best epoch and stop
        early; 0 (or too few rows to keep a training row) trains on all of them.
    patience : int or None, default 10
        Stop after this many epochs without a better validation loss (training loss without
        validation data); None never stops early. The parameters of the best epoch are kept.
    standardize : bool, default True
        Fit the flow to ``(X - mean) / std`` (per feature, training statistics, scale 1 for
        a constant feature), then fold the standardisation into the model (see Notes).
    random_state : None, int, numpy.random.Generator or numpy.random.RandomState
        Seeds the initialisation, the validation split and the mini-batches: the same int
        gives the same fitted model.
    progress : bool or None, default False
        Show a progress bar while fitting (None: only when stderr is a terminal).

    Attributes
    ----------
    flow_ : refflow.Flow
        The fitted model in the units of ``X``:
        ``Flow(base, Chain([inner_bijector, Affine(n_features)]))``.
    history_ : refflow.training.History
        Training and validation losses per epoch (of the standardised data).
    n_features_in_ : int
    mean_, scale_ : ndarray of shape (n_features_in_,)
        The standardisation (zeros and ones with ``standardize=False``).

    Notes
    -----
    *Standardisation, folded in.* The flow ``q_s`` is fitted to ``s = (x - mean) / scale``;
    then :class:`~refflow.Affine` with ``shift = mean``, ``log_scale = log(scale)`` is
    appended to its bijector (``forward`` applies it last, ``x = s * scale + mean``), so that
    ``flow_`` is a density in the original units::

        log q(x) = log q_s((x - mean) / scale) - sum_j log scale_j

    and ``flow_.sample`` draws ``x`` directly. The fitted flow is in eval mode (batch-norm
    layers use their running statistics), so every score is a deterministic function of
    its own row.

    *Scores.* :meth:`score_samples` gives ``log q(x)`` per row; :meth:`score` is the **mean**
    log-likelihood per sample, as ``GaussianMixture.score`` (``KernelDensity.score`` returns
    the *sum*).

    *Errors.* ``fit`` leaves the estimator as it was when it raises (bad data, bad
    parameters, or :class:`refflow.training.TrainingDiverged` when the loss stops being finite).

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
    """

    def __init__(self, flow="nsf", *, n_layers=None, hidden=(64, 64), flow_kwargs=None,
                 epochs=100, batch_size=256, lr=1e-3, weight_decay=0.0,
                 validation_fraction=0.1, patience=10, standardize=True, random_state=None,
                 progress=False):
        self.flow = flow
        self.n_layers = n_layers
        self.hidden = hidden
        self.flow_kwargs = flow_kwargs
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.validation_fraction = validation_fraction
        self.patience = patience
        self.standardize = standardize
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
        from sklearn.utils import InputTags, Tags, TargetTags  # only scikit-learn calls this

        return Tags(estimator_type="density_estimator", target_tags=TargetTags(required=False),
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
        if not (isinstance(self.flow, str) and self.flow in BUILDERS):
            raise ValueError(f"{where}: flow must be one of {sorted(BUILDERS)}, got {self.flow!r}")
        n_layers = None if self.n_layers is None else _check_int(self.n_layers, where, "n_layers")
        hidden = _check_hidden(self.hidden, where)
        flow_kwargs = {} if self.flow_kwargs is None else self.flow_kwargs
        if not isinstance(flow_kwargs, dict) or not all(isinstance(k, str) for k in flow_kwargs):
            raise ValueError(f"{where}: flow_kwargs must be None or a dict of builder options "
                             f"by name, got {self.flow_kwargs!r}")
        for key in flow_kwargs:
            if key in _RESERVED:
                instead = _RESERVED[key]
                raise ValueError(
                    f"{where}: flow_kwargs may not set {key!r}; " +
                    (f"use the {instead!r} parameter" if instead else
                     "FlowDensity fits unconditional densities"))
        options = {
            "flow": self.flow, "n_layers": n_layers, "hidden": hidden,
            "flow_kwargs": dict(flow_kwargs),
            "epochs": _check_int(self.epochs, where, "epochs"),
            "batch_size": _check_int(self.batch_size, where, "batch_size"),
            "lr": _check_real(self.lr, where, "lr", 0.0, low_open=True),
            "weight_decay": _check_real(self.weight_decay, where, "weight_decay", 0.0),
            "validation_fraction": _check_real(self.validation_fraction, where,
                                               "validation_fraction", 0.0, 1.0),
            "patience": None if self.patience is None else _check_int(self.patience, where,
                                                                       "patience"),
        }
        if not isinstance(self.standardize, (bool, np.bool_)):
            raise ValueError(f"{where}: standardize must be True or False, got "
                             f"{self.standardize!r}")
        if self.progress is not None and not isinstance(self.progress, (bool, np.bool_)):
            raise ValueError(f"{where}: progress must be True, False or None, got "
                             f"{self.progress!r}")
        options["rng"] = _generator(self.random_state, where)
        return options

    def _builder_kwargs(self, builder, options):
        kwargs = dict(options["flow_kwargs"])
        accepted = inspect.signature(builder).parameters
        if options["n_layers"] is not None:
            kwargs["n_layers"] = options["n_layers"]
        if "hidden" in accepted:
            kwargs["hidden"] = options["hidden"]
        return kwargs

    # ------------------------------------------------------------------------ fitting
    def fit(self, X, y=None):
        """Fit the flow to the rows of ``X`` by maximum likelihood.

        Parameters
        ----------
        X : array_like of shape (n_samples, n_features)
            Finite numbers, at least 2 samples and 1 feature.
        y : None
            Ignored (scikit-learn's signature).

        Returns
        -------
        self

        Raises
        ------
        ValueError
            Bad ``X`` or parameters (the estimator is left unchanged), or
            :class:`refflow.training.TrainingDiverged` if the loss stops being finite.
        TypeError
            Sparse ``X`` or non-numeric objects in ``X``.
        """

        where = "FlowDensity.fit"
        options = self._checked_params()
        X = _check_X(X, where)
        n, dim = X.shape
        if n < 2:
            raise ValueError(f"{where}: a density needs at least 2 samples to fit, got "
                             f"n_samples = 1 (1 sample)")
        if self.standardize:
            mean, scale = _standardization(X)
            # A subnormal scale fits, but the saved map's exp(-log(scale)) then overflows, so
            # every later score_samples would fail: refuse it here, as overflowing data is.
            tiny = scale < np.finfo(np.float64).tiny
            if tiny.any():
                j = int(np.argmax(tiny))
                raise ValueError(f"{where}: feature {j} has standard deviation {scale[j]:.3g}, "
                                 f"below float64's normal range (its reciprocal overflows); "
                                 f"rescale X (e.g. multiply it by a large constant)")
        else:
            mean, scale = np.zeros(dim), np.ones(dim)
        with np.errstate(over="ignore", invalid="ignore"):
            Xs = (X - mean) / scale
        if not np.isfinite(Xs).all():  # |x - mean| beyond float64 (data near 1e308)
            raise ValueError(f"{where}: X - mean(X) overflows float64; rescale X (e.g. divide "
                             f"it by a large constant)")

        name = options["flow"]
        if dim == 1:
            name = _ONE_FEATURE.get(name, name)
        builder = BUILDERS[name]
        rng = options["rng"]
        try:
            inner = builder(dim, rng=rng, **self._builder_kwargs(builder, options))
        except TypeError as exc:  # an unknown name in flow_kwargs
            raise ValueError(f"{where}: flow_kwargs do not fit the {name!r} builder: "
                             f"{exc}") from None
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None

        validation_fraction = options["validation_fraction"]
        if n - math.ceil(validation_fraction * n) < 1:  # too few rows to hold any out
            validation_fraction = 0.0
        history = fit(
            inner, Xs, validation_fraction=validation_fraction, epochs=options["epochs"],
            batch_size=options["batch_size"], lr=options["lr"],
            weight_decay=options["weight_decay"], patience=options["patience"],
            restore_best=True, rng=rng, progress=self.progress)

        inner.eval()
        affine = Affine(dim)
        affine.params["shift"] = mean
        affine.params["log_scale"] = np.log(scale)
        flow = Flow(inner.base, Chain([inner.bijector, affine])).eval()

        # Everything succeeded: only now does the estimator change.
        self.flow_ = flow
        self.history_ = history
        self.n_features_in_ = dim
        self.mean_ = mean
        self.scale_ = scale
        return self

    # ------------------------------------------------------------------------ scoring
    def score_samples(self, X, *, batch_size=None):
        """Log-density of each row, ``log q(x)``, in the units of ``X``.

        Parameters
        ----------
        X : array_like of shape (n_samples, n_features_in_)
        batch_size : int >= 1 or None, default None
            Rows per pass, to bound memory (None: ``refflow.distributions.DEFAULT_BATCH_SIZE``);
            see :meth:`refflow.Flow.log_prob`. The scores do not depend on it.

        Returns
        -------
        ndarray of shape (n_samples,)
        """
        where = "FlowDensity.score_samples"
        self._check_fitted(where)
        X = _check_X(X, where, self.n_features_in_)
        batch_size = _check_batch_size(batch_size, where)
        try:
            return self.flow_.log_prob(X, batch_size=batch_size)
        except ValueError as exc:  # e.g. points so far out that the log-density overflows
            raise ValueError(f"{where}: {exc}") from None

    def score(self, X, y=None):
        """Mean log-likelihood per sample, ``mean_n log q(x_n)``.

        As ``GaussianMixture.score``; note that ``KernelDensity.score`` returns the *sum*
        over the samples instead.

        Parameters
        ----------
        X : array_like of shape (n_samples, n_features_in_)
        y : None
            Ignored.

        Returns
        -------
        float
        """
        where = "FlowDensity.score"
        self._check_fitted(where)
        X = _check_X(X, where, self.n_features_in_)
        try:
            return float(np.mean(self.flow_.log_prob(X)))
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None

    def sample(self, n_samples=1, random_state=None, *, batch_size=None):
        """Draw samples from the fitted density.

        Parameters
        ----------
        n_samples : int, default 1
        random_state : None, int, numpy.random.Generator or numpy.random.RandomState
            None draws fresh randomness (as ``KernelDensity.sample``).
        batch_size : int >= 1 or None, default None
            Rows per pass, to bound memory; see :meth:`refflow.Flow.sample_and_log_prob`. The
            samples do not depend on it.

        Returns
        -------
        X : ndarray of shape (n_samples, n_features_in_)
        """
        where = "FlowDensity.sample"
        self._check_fitted(where)
        n_samples = _check_int(n_samples, where, "n_samples")
        batch_size = _check_batch_size(batch_size, where)
        try:
            return self.flow_.sample(n_samples, _generator(random_state, where),
                                     batch_size=batch_size)
        except ValueError as exc:  # e.g. more samples than memory holds
            raise ValueError(f"{where}: {exc}") from None

    # ---------------------------------------------------------------------- save / load
    @property
    def params(self):
        """The fitted flow's parameters (empty before ``fit``), for :mod:`refflow.io`."""
        return self.flow_.params if self.__sklearn_is_fitted__() else {}

    @property
    def buffers(self):
        """The fitted flow's buffers (empty before ``fit``), for :mod:`refflow.io`."""
        return self.flow_.buffers if self.__sklearn_is_fitted__() else {}

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
            config["fitted"] = {
                "flow": io.to_spec(self.flow_),
                "n_features_in_": int(self.n_features_in_),
                "mean_": self.mean_.tolist(),
                "scale_": self.scale_.tolist(),
                "history_": self.history_.as_dict(),
            }
        return config

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
            if not isinstance(fitted, dict) or set(fitted) != {
                    "flow", "n_features_in_", "mean_", "scale_", "history_"}:
                raise ValueError(f"{where}: expected the keys flow, n_features_in_, mean_, "
                                 f"scale_ and history_")
            flow = io.from_spec(fitted["flow"]).eval()
            dim = fitted["n_features_in_"]
            if type(dim) is not int or dim != getattr(flow, "dim", None):
                raise ValueError(f"{where}: n_features_in_ {dim!r} does not match the flow")
            arrays = {}
            for key in ("mean_", "scale_"):
                value = fitted[key]
                if not (isinstance(value, list) and len(value) == dim and all(
                        type(v) in (int, float) and math.isfinite(v) for v in value)):
                    raise ValueError(f"{where}: {key} must be a list of {dim} finite numbers")
                arrays[key] = np.asarray(value, dtype=np.float64)
            if not (arrays["scale_"] > 0).all():
                raise ValueError(f"{where}: scale_ must be positive")
            estimator.flow_ = flow
            estimator.n_features_in_ = dim
            estimator.mean_, estimator.scale_ = arrays["mean_"], arrays["scale_"]
            estimator.history_ = History.from_dict(fitted["history_"], where)
        return estimator

    def save(self, path):
        """Save to ``path`` with :func:`refflow.io.save` (load with :func:`refflow.io.load`)."""
        io.save(path, self)

    def __getstate__(self):
        # A fitted flow travels as its save/load spec and arrays (what refflow.io writes), so
        # pickling and deep copies never depend on how the layers store their parameters.
        state = dict(self.__dict__)
        if "flow_" in state:
            flow = state.pop("flow_")
            state["_flow_state"] = (io.to_spec(flow),
                                    {k: np.array(v) for k, v in flow.params.items()},
                                    {k: np.array(v) for k, v in flow.buffers.items()})
        return state

    def __setstate__(self, state):
        state = dict(state)
        flow_state = state.pop("_flow_state", None)
        self.__dict__.update(state)
        if flow_state is not None:
            spec, params, buffers = flow_state
            flow = io.from_spec(spec)
            flow.params.update(params)
            targets = flow.buffers
            for key, value in buffers.items():
                if targets[key].flags.writeable:  # read-only ones are fixed by the config
                    targets[key][...] = value
            self.flow_ = flow.eval()


register(FlowDensity)
