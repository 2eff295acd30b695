"""Specs: the JSON structure of a saveable object, the allow-list a spec may name, and the
bounds on what a spec may ask for.

A spec is ``{"class": name, "config": obj._config()}``; ``type(obj)._from_config(config)``
builds an object of the same structure. :func:`from_spec` resolves ``name`` against an
allow-list that refflow's own modules fill with :func:`register` (every public bijector,
``StandardNormal``, ``DiagNormal``, ``Flow``, ``FlowDensity``); nothing is ever imported by a
name read from a file. This module imports nothing else of refflow, so every layer may use it.

Declarations
------------
Every registered class also has a classmethod ``_declare(config)`` returning the arrays its
config implies, without building anything: ``{"params": {key: shape}, "buffers": {key:
(dtype, shape)}}`` (shapes tuples of ints, ``dtype`` numpy's little-endian ``dtype.str``, e.g.
``"<i8"``; parameters are always float64). A container declares its children through
:func:`declare` and :func:`combine`. :func:`declare` checks a whole spec against
:class:`Limits` (total array elements, number of objects, nesting, string and list sizes)
before anything is allocated, and :func:`from_spec` builds only a spec that passes; a test
builds every registry case and compares its arrays with its declaration, so the two cannot
drift apart.
"""

import contextvars
import copy
import dataclasses
import functools
import inspect
import json
import math
import sys

__all__ = ["to_spec", "from_spec", "register", "registered_classes", "normalized", "MAX_DEPTH",
           "Limits", "DEFAULT_LIMITS", "UNBOUNDED", "declare", "declaration", "constructor_arguments",
           "combine", "check_json", "check_limits"]

#: Nesting of a JSON value (dicts and lists) beyond which a spec or header is refused.
MAX_DEPTH = 200
_SPEC_KEYS = ("class", "config")
_GROUPS = ("params", "buffers")
_REGISTRY = {}


@dataclasses.dataclass(frozen=True)
class Limits:
    """Bounds on what a spec may ask for, checked by :func:`declare` before anything is built.

    Every bound is a positive int; pass ``Limits(max_params=10**9)`` (or
    ``dataclasses.replace(DEFAULT_LIMITS, ...)``) to :func:`from_spec` or
    :func:`refflow.io.load` for a legitimately larger model.

    Attributes
    ----------
    max_params : int
        Total number of array elements (parameters and buffers) of the whole object:
        ``10**8`` by default, 800 MB of float64.
    max_layers : int
        Number of objects (specs) in the whole spec, containers included: 10,000.
    max_depth : int
        Nesting of specs (a ``Chain`` inside an ``Inverse`` inside a ``Flow`` is 3 deep): 32.
    max_string : int
        Characters of any one string in a config: 10,000.
    max_items : int
        Elements of every list and dict of the spec together: ``10**7``.
    """

    max_params: int = 10**8
    max_layers: int = 10_000
    max_depth: int = 32
    max_string: int = 10_000
    max_items: int = 10**7

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"Limits: {field.name} must be a positive int, got {value!r}")


#: The bounds used when none are given.
DEFAULT_LIMITS = Limits()
#: No bounds, for specs refflow wrote itself in this process (``save``'s own check, unpickling).
UNBOUNDED = Limits(max_params=sys.maxsize, max_layers=sys.maxsize, max_depth=sys.maxsize,
                   max_string=sys.maxsize, max_items=sys.maxsize)


def check_limits(limits, where):
    """``limits`` (None for :data:`DEFAULT_LIMITS`) as a :class:`Limits`, else ``TypeError``."""
    if limits is None:
        return DEFAULT_LIMITS
    if not isinstance(limits, Limits):
        raise TypeError(f"{where}: limits must be a refflow.io.Limits or None, got "
                        f"{type(limits).__name__}")
    return limits


class _SpecError(ValueError):
    """A ``from_spec`` failure, passed up unchanged through nested ``from_spec`` calls (the
    outermost call turns it into a plain ``ValueError``)."""


# True while a from_spec call is running: nested calls (a Chain's layers) let _SpecError through.
_BUILDING = contextvars.ContextVar("refflow_io_building", default=False)
# The running totals of the outermost declare() call (None outside one).
_DECLARING = contextvars.ContextVar("refflow_io_declaring", default=None)


def register(*classes):
    """Put ``classes`` on the allow-list of :func:`from_spec` / :func:`to_spec` (by ``__name__``).

    Called by refflow's own modules for their public classes; returns the last class, so it
    also works as a class decorator. Each class must define ``_declare(config)`` (see the
    module docstring).
    """
    for cls in classes:
        if not callable(getattr(cls, "_declare", None)):
            raise TypeError(f"register: {cls.__name__} defines no _declare(config), so a spec "
                            f"naming it could not be checked before it is built")
        _REGISTRY[cls.__name__] = cls
    return classes[-1] if classes else None


def registered_classes():
    """``{name: class}`` of every class a spec may name (a copy)."""
    return dict(_REGISTRY)


# ------------------------------------------------------------------------------- JSON
def _render(path):
    """A path built as nested ``(parent, key)`` pairs, as ``config['layers'][0]``."""
    parts = []
    while isinstance(path, tuple):
        path, key = path
        parts.append(f"[{key!r}]" if isinstance(key, str) else f"[{key}]")
    return path + "".join(reversed(parts))


def check_json(value, where, path="config", limits=None):
    """Raise ``ValueError`` unless ``value`` is plain JSON: dicts with str keys, lists (or
    tuples), str, bool, int, finite float, None, nested at most :data:`MAX_DEPTH` deep; with
    ``limits`` (a :class:`Limits`) also no string longer than ``limits.max_string`` and at most
    ``limits.max_items`` list and dict elements in all and no integer outside ``[-2**63,
    2**63)``. Iterative: no recursion, time linear in the size of ``value``."""
    max_string = math.inf if limits is None else limits.max_string
    max_items = math.inf if limits is None else limits.max_items
    items = 0
    stack = [(value, path, 0)]
    while stack:
        value, path, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise ValueError(f"{where}: {_render(path)} is nested more than {MAX_DEPTH} levels "
                             f"deep")
        if value is None or isinstance(value, bool):
            continue
        if isinstance(value, int):
            if limits is not None and not -2**63 <= value < 2**63:
                raise ValueError(f"{where}: {_render(path)} is an integer of "
                                 f"{value.bit_length()} bits; a spec's integers lie within "
                                 f"[-2**63, 2**63)")
            continue
        if isinstance(value, str):
            if len(value) > max_string:
                raise ValueError(f"{where}: {_render(path)} is a string of {len(value)} "
                                 f"characters, more than the limit {max_string} (Limits."
                                 f"max_string)")
            continue
        if isinstance(value, float):
            if not math.isfinite(value):
                raise ValueError(f"{where}: {_render(path)} is {value!r}; only finite numbers "
                                 f"can be saved")
            continue
        if isinstance(value, (dict, list, tuple)):
            items += len(value)
            if items > max_items:
                raise ValueError(f"{where}: the spec holds more than {max_items} list and dict "
                                 f"elements (Limits.max_items)")
            if isinstance(value, dict):
                spec_name = value.get("class") if set(value) == set(_SPEC_KEYS) else None
                for key, item in value.items():
                    if not isinstance(key, str):
                        raise ValueError(f"{where}: {_render(path)} has a key {key!r} that is "
                                         f"not a str")
                    if len(key) > max_string:
                        raise ValueError(f"{where}: {_render(path)} has a key of {len(key)} "
                                         f"characters, more than the limit {max_string} "
                                         f"(Limits.max_string)")
                    if key == "config" and isinstance(spec_name, str):  # "Affine config[...]"
                        stack.append((item, f"{spec_name[:100]} config", depth + 1))
                    else:
                        stack.append((item, (path, key), depth + 1))
            else:
                stack.extend((item, (path, i), depth + 1) for i, item in enumerate(value))
            continue
        raise ValueError(f"{where}: {_render(path)} is a {type(value).__module__}."
                         f"{type(value).__qualname__}, which is not JSON (use str, int, float, "
                         f"bool, None, lists and dicts; arrays via .tolist())")


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


def from_spec(spec, limits=None):
    """Build an object from a spec made by :func:`to_spec`.

    The class name is looked up in an allow-list of refflow's public classes only (see the
    module docstring); a nested spec inside the config is built the same way by the class's
    ``_from_config``. Before anything is built, the whole spec is checked as plain JSON within
    ``limits`` and declared (:func:`declare`): a spec asking for more than ``limits`` allow
    fails at once, without allocating its arrays.

    Parameters
    ----------
    spec : dict
        Exactly the keys ``"class"`` (a str) and ``"config"`` (a dict of plain JSON values).
    limits : Limits, optional
        Bounds on the spec (default :data:`DEFAULT_LIMITS`).

    Returns
    -------
    object
        A new object with freshly initialised parameters (:func:`load` then assigns the
        file's values).

    Raises
    ------
    ValueError
        For a spec of the wrong structure, an unknown class name, a spec beyond ``limits``, or
        a config the class refuses (the message names the class; the constructor's error is
        chained as ``__cause__``).
    TypeError
        If ``limits`` is not a :class:`Limits`.

    Examples
    --------
    >>> from refflow.io import from_spec
    >>> from_spec({"class": "LeakyReLU", "config": {"dim": 3, "negative_slope": 0.5}})
    LeakyReLU(dim=3, negative_slope=0.5)
    >>> from_spec({"class": "os.system", "config": {}})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: from_spec: unknown class 'os.system'; a spec may name only refflow's public classes: ...
    >>> from_spec({"class": "Affine", "config": {"dim": 10**12}})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: from_spec: Affine asks for 2000000000000 array elements, more than the limit 100000000 (Limits.max_params; ...)
    """
    if _BUILDING.get():
        return _build(spec)
    declare(spec, limits)
    token = _BUILDING.set(True)
    try:
        return _build(spec)
    except _SpecError as exc:
        raise ValueError(str(exc)) from exc.__cause__
    finally:
        _BUILDING.reset(token)


def _resolve(spec):
    """``(cls, name, config)`` of a spec of the right structure naming a registered class."""
    if not isinstance(spec, dict):
        raise _SpecError(f"from_spec: a spec must be a dict with the keys 'class' and 'config', "
                         f"got a {type(spec).__name__}")
    if set(spec) != set(_SPEC_KEYS):
        raise _SpecError(f"from_spec: a spec must have exactly the keys 'class' and 'config', "
                         f"got {sorted(map(str, spec))}"[:300])
    name, config = spec["class"], spec["config"]
    if not isinstance(name, str):
        raise _SpecError(f"from_spec: 'class' must be a str, got {type(name).__name__}")
    allowed = _REGISTRY
    cls = allowed.get(name)
    if cls is None:
        shown = name if len(name) <= 100 else name[:100] + "..."
        raise _SpecError(f"from_spec: unknown class {shown!r}; a spec may name only refflow's "
                         f"public classes: {sorted(allowed)}")
    if not isinstance(config, dict):
        raise _SpecError(f"from_spec: {name}: 'config' must be a dict, got "
                         f"{type(config).__name__}")
    return cls, name, config


def _build(spec):
    cls, name, config = _resolve(spec)
    try:
        return cls._from_config(copy.deepcopy(config))
    except _SpecError:
        raise
    except RecursionError:
        raise _SpecError(f"from_spec: {name}: the spec is nested too deeply") from None
    except Exception as exc:  # noqa: BLE001 - any constructor failure is a bad config
        raise _SpecError(f"from_spec: cannot build {name} from its config: "
                         f"{type(exc).__name__}: {exc}") from exc


# ------------------------------------------------------------------------ declarations
class _Totals:
    """The running counts of one outermost :func:`declare` call."""

    def __init__(self, limits):
        self.limits = limits
        self.objects = 0
        self.depth = 0


def declare(spec, limits=None):
    """The arrays a spec implies, without building anything, checked against ``limits``.

    Parameters
    ----------
    spec : dict
        A spec (see :func:`from_spec`); a class's ``_declare`` calls this for nested specs.
    limits : Limits, optional
        Bounds (default :data:`DEFAULT_LIMITS`); ignored in a nested call (the outermost
        call's apply).

    Returns
    -------
    dict
        ``{"params": {key: shape}, "buffers": {key: (dtype, shape)}}``, shapes tuples of
        non-negative ints, in the order of the built object's ``params`` and ``buffers``.

    Raises
    ------
    ValueError
        For a spec of the wrong structure, an unknown class, a config its class refuses, or a
        spec beyond ``limits``: one line naming the class and the bound.

    Examples
    --------
    >>> from refflow.io import declare
    >>> declare({"class": "LULinear", "config": {"dim": 3}})
    {'params': {'lower_entries': (3,), 'upper_entries': (3,), 'unconstrained_upper_diag': (3,), 'bias': (3,)}, 'buffers': {'permutation': ('<i8', (3,))}}
    """
    totals = _DECLARING.get()
    if totals is not None:
        return _declare_one(spec, totals)
    limits = check_limits(limits, "declare")
    try:
        check_json(spec, "from_spec", "spec", limits)
    except ValueError as exc:
        raise ValueError(str(exc)) from None
    token = _DECLARING.set(_Totals(limits))
    try:
        return _declare_one(spec, _DECLARING.get())
    except _SpecError as exc:
        raise ValueError(str(exc)) from exc.__cause__
    except RecursionError:
        raise ValueError("from_spec: the spec is nested too deeply") from None
    finally:
        _DECLARING.reset(token)


def _declare_one(spec, totals):
    cls, name, config = _resolve(spec)
    limits = totals.limits
    totals.objects += 1
    if totals.objects > limits.max_layers:
        raise _SpecError(f"from_spec: the spec names more than {limits.max_layers} objects "
                         f"(Limits.max_layers; pass larger limits for a legitimately larger "
                         f"model)")
    if totals.depth >= limits.max_depth:
        raise _SpecError(f"from_spec: {name} is nested more than {limits.max_depth} specs deep "
                         f"(Limits.max_depth)")
    totals.depth += 1
    try:
        declared = cls._declare(config)
    except _SpecError:
        raise
    except RecursionError:
        raise _SpecError(f"from_spec: {name}: the spec is nested too deeply") from None
    except Exception as exc:  # noqa: BLE001 - any failure to declare is a bad config
        raise _SpecError(f"from_spec: cannot build {name} from its config: "
                         f"{type(exc).__name__}: {exc}") from exc
    finally:
        totals.depth -= 1
    declared = _checked_declaration(name, declared)
    elements = sum(math.prod(shape) for shape in declared["params"].values()) + sum(
        math.prod(shape) for _, shape in declared["buffers"].values())
    if elements > limits.max_params:
        raise _SpecError(f"from_spec: {name} asks for {elements} array elements, more than the "
                         f"limit {limits.max_params} (Limits.max_params; pass larger limits "
                         f"for a legitimately larger model)")
    return declared


def _checked_declaration(name, declared):
    """``declared`` with shapes as tuples of ints; ``_SpecError`` for a malformed one."""
    if not (isinstance(declared, dict) and set(declared) == set(_GROUPS)):
        raise _SpecError(f"from_spec: {name}._declare returned no params/buffers declaration")
    out = {"params": {}, "buffers": {}}
    for key, shape in declared["params"].items():
        out["params"][key] = _shape(name, key, shape)
    for key, value in declared["buffers"].items():
        dtype, shape = value
        if not isinstance(dtype, str):
            raise _SpecError(f"from_spec: {name}._declare gives buffer {key!r} no dtype")
        out["buffers"][key] = (dtype, _shape(name, key, shape))
    return out


def _shape(name, key, shape):
    shape = tuple(shape)
    if not all(isinstance(n, int) and not isinstance(n, bool) for n in shape):
        raise _SpecError(f"from_spec: {name}: the config gives {key!r} a shape of non-integers")
    if any(n < 0 for n in shape):
        raise _SpecError(f"from_spec: cannot build {name} from its config: it gives {key!r} "
                         f"the negative shape {shape}")
    return shape


def declaration(params=None, buffers=None):
    """A declaration ``{"params": params, "buffers": buffers}`` (empty dicts for None)."""
    return {"params": dict(params or {}), "buffers": dict(buffers or {})}


def combine(*items):
    """One declaration from ``(prefix, declaration)`` pairs: every key becomes
    ``prefix.key`` (the key itself for an empty prefix), in the order given."""
    out = declaration()
    for prefix, declared in items:
        for group in _GROUPS:
            for key, value in declared[group].items():
                out[group][f"{prefix}.{key}" if prefix else key] = value
    return out


def constructor_arguments(cls, config):
    """Every argument of ``cls(**config)`` by name, defaults filled in (``TypeError`` for an
    unknown or missing one, as the call itself would raise)."""
    bound = _signature(cls).bind(**config)
    bound.apply_defaults()
    return dict(bound.arguments)


@functools.lru_cache(maxsize=256)
def _signature(cls):
    # inspect.signature costs ~0.5 ms; a spec of 10,000 layers would spend seconds in it
    return inspect.signature(cls)
