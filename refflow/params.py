"""Flat parameter dictionaries.

A model's parameters are a flat mapping from state-dict names (``"layers.3.log_scale"``) to
float64 arrays. Containers build their mapping from their children's *arrays*, not copies, so
an optimizer that writes ``params[k][...] = new`` (or ``params[k] = new``, which writes in place
here) changes the layer that owns the array.

Examples
--------
>>> import numpy as np
>>> from refflow import Affine, Chain
>>> from refflow.params import ravel
>>> chain = Chain([Affine(2), Affine(2)])
>>> sorted(chain.params)
['layers.0.log_scale', 'layers.0.shift', 'layers.1.log_scale', 'layers.1.shift']
>>> chain.params["layers.1.shift"] = [1.0, 2.0]      # written in place into layer 1
>>> chain.layers[1].params["shift"]
array([1., 2.])
>>> vec, unravel = ravel(chain.params)
>>> vec.shape, sorted(unravel(vec)) == sorted(chain.params)
((8,), True)
"""

import numpy as np

from ._validation import as_float_array, check_same_keys

__all__ = ["ParamDict", "ravel", "copy_params", "assign", "allclose"]


class UnknownParameterError(KeyError, ValueError):
    """Assignment to a key that a ParamDict does not have (a ``KeyError`` and a ``ValueError``)."""

    def __str__(self):
        return str(self.args[0]) if self.args else ""


class ParamDict(dict):
    """A dict of float64 arrays whose set of keys and shapes is fixed after construction.

    Item assignment copies the new values *into* the existing array (after checking shape and
    finiteness), so views held elsewhere (an optimizer, a container's flat dict) stay valid.
    Adding or removing keys is refused.
    """

    def __init__(self, arrays=(), *, copy=True):
        super().__init__()
        for key, value in dict(arrays).items():
            if copy:
                value = np.array(value, dtype=np.float64, order="C", copy=True)
            elif not (isinstance(value, np.ndarray) and value.dtype == np.float64):
                raise TypeError(f"parameter {key!r} must be a float64 ndarray")
            dict.__setitem__(self, key, value)

    def _checked(self, key, value):
        if key not in self:
            raise UnknownParameterError(f"ParamDict: no parameter {key!r}; the parameters are "
                                        f"{sorted(self)}")
        target = dict.__getitem__(self, key)
        value = as_float_array(value, "ParamDict", f"parameter {key!r}").astype(np.float64)
        if value.shape != target.shape:
            raise ValueError(
                f"parameter {key!r}: expected shape {target.shape}, got {value.shape}"
            )
        if not np.isfinite(value).all():
            raise ValueError(f"ParamDict: parameter {key!r}: value holds NaN or inf")
        return target, value

    def __setitem__(self, key, value):
        target, value = self._checked(key, value)
        target[...] = value

    def update(self, other=(), **kwargs):
        # Check everything first, so that a bad entry leaves nothing half-updated.
        pairs = [self._checked(k, v) for k, v in {**dict(other), **kwargs}.items()]
        for target, value in pairs:
            target[...] = value

    def __ior__(self, other):
        self.update(other)
        return self

    def _refuse(self, *args, **kwargs):
        raise TypeError("the set of parameters is fixed; assign values in place instead")

    __delitem__ = pop = popitem = clear = setdefault = _refuse

    def __reduce__(self):
        # dict's default pickling rebuilds an empty instance and then sets items, which a fixed
        # key set refuses; rebuild from the arrays instead (pickle and copy.deepcopy use this).
        return (type(self), (dict(self),))

    def __repr__(self):
        inner = ", ".join(f"{k!r}: array{v.shape}" for k, v in self.items())
        return f"ParamDict({{{inner}}})"


def prefixed(children):
    """Flat ``ParamDict`` view over ``[(prefix, mapping), ...]`` (the arrays are shared)."""
    flat = {}
    for prefix, mapping in children:
        for key, value in mapping.items():
            flat[f"{prefix}.{key}"] = value
    return ParamDict(flat, copy=False)


def ravel(params):
    """Flatten a parameter dict into one vector, keys in sorted order.

    Returns
    -------
    vec : ndarray of shape (n_total,)
        A copy of all parameter values.
    unravel : callable
        ``unravel(vec)`` gives a dict of new arrays with the original keys and shapes.
    """
    keys = sorted(params)
    shapes = [np.shape(params[k]) for k in keys]
    sizes = [int(np.prod(s)) for s in shapes]
    if keys:
        vec = np.concatenate([np.asarray(params[k], dtype=np.float64).ravel() for k in keys])
    else:
        vec = np.zeros(0)
    offsets = np.cumsum([0] + sizes)

    def unravel(v):
        v = np.asarray(v, dtype=np.float64)
        if v.shape != (int(offsets[-1]),):
            raise ValueError(f"unravel: expected a vector of length {offsets[-1]}, got {v.shape}")
        return {
            k: v[offsets[i]:offsets[i + 1]].reshape(shapes[i]).copy() for i, k in enumerate(keys)
        }

    return vec, unravel


def copy_params(params):
    """A plain dict of copies of every parameter array (a snapshot to restore later)."""
    return {k: np.array(v, copy=True) for k, v in params.items()}


def assign(params, values):
    """Write finite ``values`` (same keys and shapes) into ``params`` in place, all or nothing."""
    check_same_keys(values, params, "assign")
    converted = {}
    for key, value in values.items():
        value = as_float_array(value, "assign", f"parameter {key!r}").astype(np.float64)
        if value.shape != np.shape(params[key]):
            raise ValueError(
                f"assign: parameter {key!r} expects shape {np.shape(params[key])}, "
                f"got {value.shape}"
            )
        if not np.isfinite(value).all():
            raise ValueError(f"assign: parameter {key!r} holds NaN or inf")
        converted[key] = value
    for key, value in converted.items():
        params[key][...] = value


def allclose(a, b, rtol=1e-12, atol=0.0):
    """True when two parameter dicts have the same keys and all arrays are close."""
    if set(a) != set(b):
        return False
    return all(
        np.shape(a[k]) == np.shape(b[k]) and np.allclose(a[k], b[k], rtol=rtol, atol=atol)
        for k in a
    )
