"""Input checks shared by every public entry point.

Each check raises ``ValueError`` with a message that names the caller (``where``), what was
expected and what was given. Nothing here mutates its argument: arrays that need converting
are copied.
"""

import numbers

import numpy as np

__all__ = ["as_batch", "as_float_array", "as_cotangent", "check_rng", "check_dim", "check_finite"]


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


def check_dim(dim, where, name="dim"):
    """Return ``dim`` as a positive Python int or raise ``ValueError``."""
    if isinstance(dim, (bool, np.bool_)) or not isinstance(dim, numbers.Integral):
        raise ValueError(f"{where}: {name} must be a positive integer, got {dim!r}")
    dim = int(dim)
    if dim < 1:
        raise ValueError(f"{where}: {name} must be a positive integer, got {dim}")
    return dim


def check_rng(rng, where="rng"):
    """Turn ``rng`` (None, an int seed or a ``numpy.random.Generator``) into a Generator.

    ``None`` gives a generator seeded from the operating system; no global state is touched.
    """
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
