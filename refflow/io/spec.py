"""Specs: the JSON structure of a saveable object, and the allow-list a spec may name.

A spec is ``{"class": name, "config": obj._config()}``; ``type(obj)._from_config(config)``
builds an object of the same structure. :func:`from_spec` resolves ``name`` against an
allow-list that refflow's own modules fill with :func:`register` (every public bijector,
``StandardNormal``, ``DiagNormal``, ``Flow``, ``FlowDensity``); nothing is ever imported by a
name read from a file. This module imports nothing else of refflow, so every layer may use it.
"""

import contextvars
import copy
import json
import math

__all__ = ["to_spec", "from_spec", "register", "registered_classes", "normalized", "MAX_DEPTH"]

#: Nesting of a JSON value (dicts and lists) beyond which a spec or header is refused.
MAX_DEPTH = 200
_SPEC_KEYS = ("class", "config")
_REGISTRY = {}

class _SpecError(ValueError):
    """A ``from_spec`` failure, passed up unchanged through nested ``from_spec`` calls (the
    outermost call turns it into a plain ``ValueError``)."""


# True while a from_spec call is running: nested calls (a Chain's layers) let _SpecError through.
_BUILDING = contextvars.ContextVar("refflow_io_building", default=False)



def register(*classes):
    """Put ``classes`` on the allow-list of :func:`from_spec` / :func:`to_spec` (by ``__name__``).

    Called by refflow's own modules for their public classes; returns the last class, so it
    also works as a class decorator.
    """
    for cls in classes:
        _REGISTRY[cls.__name__] = cls
    return classes[-1] if classes else None


def registered_classes():
    """``{name: class}`` of every class a spec may name (a copy)."""
    return dict(_REGISTRY)


# ------------------------------------------------------------------------------- JSON
# ------------------------------------------------------------------------------- JSON
def check_json(value, where, path="config", depth=0):
    """Raise ``ValueError`` unless ``value`` is plain JSON: dicts with str keys, lists (or
    tuples), str, bool, int, finite float, None."""
    if depth > MAX_DEPTH:
        raise ValueError(f"{where}: {path} is nested more than {MAX_DEPTH} levels deep")
    if value is None or isinstance(value, (str, bool, int)):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{where}: {path} is {value!r}; only finite numbers can be saved")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"{where}: {path} has a key {key!r} that is not a str")
            check_json(item, where, f"{path}[{key!r}]", depth + 1)
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            check_json(item, where, f"{path}[{i}]", depth + 1)
        return
    raise ValueError(f"{where}: {path} is a {type(value).__module__}.{type(value).__qualname__},"
                     f" which is not JSON (use str, int, float, bool, None, lists and dicts; "
                     f"arrays via .tolist())")


def normalized(value):
    """``value`` as JSON would give it back (tuples become lists)."""
    return json.loads(json.dumps(value, allow_nan=False))



# ------------------------------------------------------------------------------ specs
def to_spec(obj):
    """The spec ``{"class": name, "config": obj._config()}`` of a saveable refflow object.

    Parameters
    ----------
    obj : Bijector, StandardNormal, DiagNormal, Flow or FlowDensity
        An instance of a class on the allow-list (see the module docstring), not of a
        subclass defined elsewhere.

    Returns
    -------
    dict
        JSON-serialisable; nested objects appear as specs inside the config.

    Raises
    ------
    ValueError
        If the class is not on the allow-list or its config is not plain JSON.

    Examples
    --------
    >>> from refflow import Affine, Chain, Exp
    >>> from refflow.io import to_spec
    >>> to_spec(Chain([Affine(2), Exp(2)]))
    {'class': 'Chain', 'config': {'layers': [{'class': 'Affine', 'config': {'dim': 2}}, {'class': 'Exp', 'config': {'dim': 2}}]}}
    """
    cls = type(obj)
    name = cls.__name__
    allowed = _REGISTRY
    if allowed.get(name) is not cls:
        raise ValueError(f"to_spec: {cls.__module__}.{cls.__qualname__} is not a refflow class "
                         f"that can be saved; saveable classes: {sorted(allowed)}")
    try:
        config = obj._config()
    except NotImplementedError as exc:
        raise ValueError(f"to_spec: {name} cannot be saved: {exc}") from exc
    if not isinstance(config, dict):
        raise ValueError(f"to_spec: {name}._config() returned a {type(config).__name__}, "
                         f"not a dict")
    check_json(config, f"to_spec: {name}")
    return {"class": name, "config": config}


def from_spec(spec):
    """Build an object from a spec made by :func:`to_spec`.

    The class name is looked up in an allow-list of refflow's public classes only (see the
    module docstring); a nested spec inside the config is built the same way by the class's
    ``_from_config``.

    Parameters
    ----------
    spec : dict
        Exactly the keys ``"class"`` (a str) and ``"config"`` (a dict of plain JSON values).

    Returns
    -------
    object
        A new object with freshly initialised parameters (:func:`load` then assigns the
        file's values).

    Raises
    ------
    ValueError
        For a spec of the wrong structure, an unknown class name, or a config the class's
        constructor refuses (the message names the class; the constructor's error is chained
        as ``__cause__``).

    Examples
    --------
    >>> from refflow.io import from_spec
    >>> from_spec({"class": "LeakyReLU", "config": {"dim": 3, "negative_slope": 0.5}})
    LeakyReLU(dim=3, negative_slope=0.5)
    >>> from_spec({"class": "os.system", "config": {}})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: from_spec: unknown class 'os.system'; a spec may name only refflow's public classes: ...
    """
    if _BUILDING.get():
        return _build(spec)
    token = _BUILDING.set(True)
    try:
        return _build(spec)
    except _SpecError as exc:
        raise ValueError(str(exc)) from exc.__cause__
    finally:
        _BUILDING.reset(token)


def _build(spec):
    if not isinstance(spec, dict):
        raise _SpecError(f"from_spec: a spec must be a dict with the keys 'class' and 'config', "
                         f"got a {type(spec).__name__}")
    if set(spec) != set(_SPEC_KEYS):
        raise _SpecError(f"from_spec: a spec must have exactly the keys 'class' and 'config', "
                         f"got {sorted(map(str, spec))}")
    name, config = spec["class"], spec["config"]
    if not isinstance(name, str):
        raise _SpecError(f"from_spec: 'class' must be a str, got {type(name).__name__}")
    allowed = _REGISTRY
    cls = allowed.get(name)
    if cls is None:
        raise _SpecError(f"from_spec: unknown class {name!r}; a spec may name only refflow's "
                         f"public classes: {sorted(allowed)}")
    if not isinstance(config, dict):
        raise _SpecError(f"from_spec: {name}: 'config' must be a dict, got "
                         f"{type(config).__name__}")
    try:
        check_json(config, f"from_spec: {name}")
    except ValueError as exc:
        raise _SpecError(str(exc)) from None
    try:
        return cls._from_config(copy.deepcopy(config))
    except _SpecError:
        raise
    except RecursionError:
        raise _SpecError(f"from_spec: {name}: the spec is nested too deeply") from None
    except Exception as exc:  # noqa: BLE001 - any constructor failure is a bad config
        raise _SpecError(f"from_spec: cannot build {name} from its config: "
                         f"{type(exc).__name__}: {exc}") from exc


