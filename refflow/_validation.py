"""Input checks shared by every public entry point.

Every check names the caller (``where``, e.g. ``"fit"`` or ``"Affine.forward"``) and the argument
in a one-line message that says what was expected and what was given. Scalars follow
scikit-learn's convention (``sklearn.utils.check_scalar``): ``TypeError`` for a value of the wrong
type (a str, a float where an integer is needed, a bool where a number is needed), ``ValueError``
for a value of the right type outside its range (or NaN/inf). Arrays (:func:`as_float_array`,
:func:`as_batch`, :func:`check_finite`) raise ``ValueError``, as numpy does for an array it cannot
convert; so does :func:`check_rng`, as scikit-learn's ``check_random_state``. Nothing here mutates
its argument: arrays that need converting are copied.
"""

import contextlib
import contextvars
import math
import numbers

import numpy as np

__all__ = ["as_batch", "as_float_array", "as_cotangent", "check_finite", "check_rng", "check_dim",
           "check_int", "check_n", "check_batch_size", "check_real", "check_positive", "check_bool",
           "check_choice", "check_option", "check_hidden", "check_same_keys", "check_context_given",
           "empty_output", "placeholder_initialisation"]


def _describe(x):
    return f"array of shape {x.shape} and dtype {x.dtype}"


def as_float_array(x, where, name="input"):
    """Convert ``x`` to a float32 or float64 array, refusing non-numeric data.

    float32 and float64 are kept as they are; every other real numeric dtype (integers, bools,
    float16, long double) becomes float64. Complex, object, string and datetime data raise.
    """
    try:
        arr = np.asarray(x)
    except Exception as exc:  # ragged nested lists, objects numpy refuses
        raise ValueError(f"{where}: {name} could not be converted to an array ({exc})") from None
    kind = arr.dtype.kind
    if kind == "f":
        if arr.dtype not in (np.float32, np.float64):
            arr = arr.astype(np.float64)
    elif kind in "biu":
        arr = arr.astype(np.float64)
    elif kind == "O":
        # An object array may hold Python numbers; anything else (strings, which astype would
        # parse, complex numbers, None) is refused, as the same values in a typed array are.
        if not all(isinstance(e, numbers.Real) for e in arr.flat):
            raise ValueError(
                f"{where}: {name} must be a real numeric array, got an object array "
                f"holding non-numeric values"
            )
        arr = arr.astype(np.float64)
    else:
        raise ValueError(
            f"{where}: {name} must be a real numeric array, got dtype {arr.dtype}"
        )
    return arr


def check_finite(arr, where, name="input"):
    """Raise ``ValueError`` if ``arr`` holds NaN or an infinity, naming how many and where."""
    finite = np.isfinite(arr)
    if not finite.all():
        bad = np.argwhere(~finite)
        first = tuple(int(i) for i in bad[0])
        n_nan = int(np.isnan(arr).sum())
        n_inf = bad.shape[0] - n_nan
        raise ValueError(
            f"{where}: {name} must be finite; found {n_nan} NaN and {n_inf} infinite "
            f"value(s), the first at index {first}"
        )
    return arr


def as_batch(x, dim, where, name="input"):
    """Validate a batch of points and return it as a C-contiguous ``(batch, dim)`` array.

    Parameters
    ----------
    x : array_like of shape (batch, dim) or (dim,)
        The points. Lists, integer and bool arrays are accepted (converted to float64).
    dim : int
        The event size the caller expects.
    where : str
        Name of the caller, used in error messages (``"Affine.forward"``).

    Returns
    -------
    x2d : ndarray of shape (batch, dim), float32 or float64
        C-contiguous; a copy whenever ``x`` was converted, reshaped or not contiguous.
    was_1d : bool
        True when ``x`` was a single point of shape ``(dim,)``.
    """
    arr = as_float_array(x, where, name)
    if arr.ndim == 1:
        if arr.shape[0] != dim:
            raise ValueError(
                f"{where}: expected {name} of shape (batch, {dim}) or ({dim},), "
                f"got {_describe(arr)}"
            )
        arr = arr.reshape(1, dim)
        was_1d = True
    elif arr.ndim == 2:
        if arr.shape[1] != dim:
            raise ValueError(
                f"{where}: expected {name} of shape (batch, {dim}), got {_describe(arr)} "
                f"(dimension {arr.shape[1]} does not match {dim})"
            )
        was_1d = False
    else:
        raise ValueError(
            f"{where}: expected {name} of shape (batch, {dim}) or ({dim},), got "
            f"{arr.ndim}-D {_describe(arr)}"
        )
    check_finite(arr, where, name)
    return np.ascontiguousarray(arr), was_1d


def _got(value):
    """``value`` for a TypeError message: its type and a one-line, shortened repr."""
    text = " ".join(repr(value).split())
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{type(value).__name__} {text}"


def _is_int(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def check_int(value, where, name, *, minimum=None):
    """Return ``value`` as a Python int, checking ``value >= minimum``.

    ``TypeError`` unless ``value`` is an integer (Python or numpy; bools are refused),
    ``ValueError`` below ``minimum``.
    """
    if minimum == 1:
        what = "a positive integer"
    elif minimum == 0:
        what = "a non-negative integer"
    else:
        what = "an integer" if minimum is None else f"an integer >= {minimum}"
    if not _is_int(value):
        raise TypeError(f"{where}: {name} must be an integer, got {_got(value)}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{where}: {name} must be {what}, got {value}")
    return value


def check_dim(dim, where, name="dim"):
    """Return ``dim`` as a positive Python int (``TypeError``/``ValueError`` otherwise)."""
    return check_int(dim, where, name, minimum=1)


def check_n(n, where, name="n"):
    """A number of samples: a non-negative Python int (``TypeError``/``ValueError`` otherwise)."""
    return check_int(n, where, f"the number of samples {name}", minimum=0)


def check_batch_size(batch_size, where, default=None, name="batch_size"):
    """``batch_size`` as a positive Python int, or ``default`` when it is None."""
    if batch_size is None:
        return default
    if not _is_int(batch_size):
        raise TypeError(f"{where}: {name} must be an integer or None, got {_got(batch_size)}")
    if batch_size < 1:
        raise ValueError(f"{where}: {name} must be a positive integer or None, got "
                         f"{int(batch_size)}")
    return int(batch_size)


def _interval(low, high, low_open, high_open):
    """The words for an interval: "positive", "non-negative", "in (0, 1)", "in [0.5, inf)"."""
    if high is None and low == 0:
        return "positive" if low_open else "non-negative"
    if low is None and high is None:
        return ""
    lo = "(-inf" if low is None else ("(" if low_open else "[") + f"{low:g}"
    hi = "inf)" if high is None else f"{high:g}" + (")" if high_open else "]")
    return f"in {lo}, {hi}"


def check_real(value, where, name, *, low=None, high=None, low_open=False, high_open=False):
    """Return ``value`` as a finite Python float inside the given interval.

    ``TypeError`` unless ``value`` is a real number (Python or numpy; bools are refused),
    ``ValueError`` for NaN, an infinity or a value outside ``[low, high]`` (the ends excluded
    when ``low_open`` / ``high_open``; None means unbounded).
    """
    words = _interval(low, high, low_open, high_open)
    if words in ("positive", "non-negative"):
        what = f"a finite {words} number"
    else:
        what = "a finite number" + (f" {words}" if words else "")
    if not isinstance(value, numbers.Real) or isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{where}: {name} must be a real number, got {_got(value)}")
    value = float(value)
    bad = not math.isfinite(value)
    if low is not None:
        bad = bad or (value <= low if low_open else value < low)
    if high is not None:
        bad = bad or (value >= high if high_open else value > high)
    if bad:
        raise ValueError(f"{where}: {name} must be {what}, got {value!r}")
    return value


def check_positive(value, where, name):
    """Return ``value`` as a finite float ``> 0`` (``TypeError``/``ValueError`` otherwise)."""
    return check_real(value, where, name, low=0.0, low_open=True)


def check_bool(value, where, name, *, allow_none=False):
    """Return ``value`` as a Python bool (or None when ``allow_none``), else ``TypeError``.

    Only ``True``/``False`` (and numpy bools) are accepted: ``0``, ``1`` and strings are refused
    rather than read as truth values.
    """
    if value is None and allow_none:
        return None
    if not isinstance(value, (bool, np.bool_)):
        what = "True, False or None" if allow_none else "True or False"
        raise TypeError(f"{where}: {name} must be {what}, got {_got(value)}")
    return bool(value)


def check_choice(value, choices, where, name):
    """Return ``value`` if it is one of the strings ``choices``.

    ``TypeError`` for a value that is not a str, ``ValueError`` for a str not in ``choices``.
    """
    if not isinstance(value, str):
        raise TypeError(f"{where}: {name} must be one of {sorted(choices)}, got {_got(value)}")
    if value not in choices:
        raise ValueError(f"{where}: {name} must be one of {sorted(choices)}, got {value!r}")
    return value


def check_option(value, choices, where, name, *, none=False, booleans=False):
    """Return ``value`` if it is one of the strings ``choices``, or None (with ``none``), or a
    bool (with ``booleans``; returned as a Python bool).

    The error lists every accepted value (``whiten must be 'auto', True or False, got 'yes'``):
    ``TypeError`` for a value of another type, ``ValueError`` for a str not in ``choices``.
    """
    accepted = ([repr(c) for c in choices] + (["True", "False"] if booleans else [])
                + (["None"] if none else []))
    listing = accepted[0] if len(accepted) == 1 else \
        f"{', '.join(accepted[:-1])} or {accepted[-1]}"
    if value is None and none:
        return None
    if booleans and isinstance(value, (bool, np.bool_)):
        return bool(value)
    if not isinstance(value, str):
        raise TypeError(f"{where}: {name} must be {listing}, got {_got(value)}")
    if value not in choices:
        raise ValueError(f"{where}: {name} must be {listing}, got {value!r}")
    return value


def check_hidden(hidden, where, name="hidden"):
    """``hidden`` (the widths of a network's hidden layers) as a tuple of positive ints.

    A sequence is required: a bare int (``64``; write ``(64,)``), a str or a non-iterable raises
    ``TypeError``; each width is checked by :func:`check_dim` (``TypeError``/``ValueError``).
    """
    if isinstance(hidden, (numbers.Integral, str, bytes)) or not hasattr(hidden, "__iter__"):
        raise TypeError(f"{where}: {name} must be a sequence of positive integers such as "
                        f"(64, 64), got {_got(hidden)}")
    return tuple(check_dim(h, where, f"{name} width") for h in hidden)


class _Placeholders(np.random.Generator):
    """A generator that draws nothing: each method a constructor initialises with gives a
    deterministic value of the requested shape at the cost of filling an array (zeros for
    ``standard_normal``, ``loc`` for ``normal``, the midpoint for ``uniform``, the low end for
    ``integers``, the identity for ``permutation``). See :func:`placeholder_initialisation`."""

    def uniform(self, low=0.0, high=1.0, size=None):
        return np.full(() if size is None else size, 0.5 * (low + high), dtype=np.float64)

    def normal(self, loc=0.0, scale=1.0, size=None):
        return np.full(() if size is None else size, loc, dtype=np.float64)

    def standard_normal(self, size=None, dtype=np.float64, out=None):
        return np.zeros(() if size is None else size, dtype=dtype)

    def integers(self, low, high=None, size=None, dtype=np.int64, endpoint=False):
        return np.full(() if size is None else size, 0 if high is None else low, dtype=dtype)

    def permutation(self, x):
        return np.arange(x) if isinstance(x, numbers.Integral) else np.array(x, copy=True)


# True while placeholder_initialisation() is active in this context.
_PLACEHOLDERS = contextvars.ContextVar("refflow_placeholder_initialisation", default=False)


@contextlib.contextmanager
def placeholder_initialisation():
    """Within this block, :func:`check_rng` gives a generator that draws nothing (placeholder
    values, see ``_Placeholders``) for every ``rng`` argument: for building an object whose
    every parameter and buffer is then assigned from elsewhere (:func:`refflow.io.load`), so
    that building costs allocation only, no random draws. Thread- and context-local."""
    token = _PLACEHOLDERS.set(True)
    try:
        yield
    finally:
        _PLACEHOLDERS.reset(token)


def check_rng(rng, where="rng"):
    """Turn ``rng`` (None, an int seed or a ``numpy.random.Generator``) into a Generator.

    ``None`` gives a generator seeded from the operating system; no global state is touched.
    Inside :func:`placeholder_initialisation` every valid ``rng`` gives a generator that draws
    nothing.
    """
    if _PLACEHOLDERS.get() and (rng is None or isinstance(rng, np.random.Generator) or (
            isinstance(rng, numbers.Integral) and not isinstance(rng, bool) and rng >= 0)):
        return _Placeholders(np.random.PCG64(0))
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None or (isinstance(rng, numbers.Integral) and not isinstance(rng, bool)):
        if rng is not None and int(rng) < 0:
            raise ValueError(f"{where}: a seed must be non-negative, got {rng}")
        return np.random.default_rng(rng)
    raise ValueError(
        f"{where}: rng must be None, a non-negative int seed or a numpy.random.Generator, "
        f"got {type(rng).__name__}"
    )


def as_cotangent(value, shape, was_1d, dtype, where, name):
    """A pullback's cotangent argument as a C-contiguous array of ``shape`` and ``dtype``.

    ``None`` means zeros. Otherwise ``value`` must be finite and real, of ``shape`` (or of
    ``shape[1:]`` when the pass was called on a single point, ``was_1d``); ``where`` names the
    pullback in the messages (e.g. ``"Affine.forward pullback"``).
    """
    if value is None:
        return np.zeros(shape, dtype=dtype)
    arr = as_float_array(value, where, name)
    expected = shape[1:] if was_1d else shape
    if arr.shape != expected:
        raise ValueError(f"{where}: expected {name} of shape {expected}, got {arr.shape}")
    check_finite(arr, where, name)
    return np.ascontiguousarray(arr.reshape(shape), dtype=dtype)


def check_same_keys(given, expected, where, what="keys"):
    """Refuse a mapping whose keys are not exactly those of ``expected``.

    The ``ValueError`` lists both differences, sorted: ``"{where}: {what} differ (missing
    [...], unexpected [...])"``.
    """
    if set(given) != set(expected):
        missing = sorted(set(expected) - set(given))
        extra = sorted(set(given) - set(expected))
        raise ValueError(f"{where}: {what} differ (missing {missing}, unexpected {extra})")


def check_context_given(context, context_dim, where, owner, name):
    """Whether a context is needed (``context_dim`` not None), refusing a mismatch.

    An unconditional ``owner`` (``"model"``, ``"flow"``) with a context, or a conditional one
    without (``name`` is how the message calls it, e.g. ``"a context"``), raises a
    ``ValueError``; otherwise returns ``True`` for a conditional owner, ``False`` for an
    unconditional one. The context itself is not inspected.
    """
    if context_dim is None:
        if context is not None:
            raise ValueError(f"{where}: the {owner} is unconditional, but {name} was given")
        return False
    if context is None:
        raise ValueError(f"{where}: the {owner} is conditional; pass {name} of shape "
                         f"(n, {context_dim}) or ({context_dim},)")
    return True


def empty_output(shape, where):
    """``np.empty(shape)`` (float64), or a ValueError saying how much memory ``shape`` would
    need."""
    try:
        return np.empty(shape)
    except (MemoryError, ValueError):
        gib = np.prod(np.asarray(shape, dtype=float)) * 8 / 2**30
        raise ValueError(f"{where}: an output of shape {tuple(shape)} needs {gib:.3g} GiB of "
                         f"memory, more than is available; ask for fewer rows") from None
