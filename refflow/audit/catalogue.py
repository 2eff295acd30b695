"""What a peer library exports: every class of its public transform modules, classified.

:func:`catalogue` walks the modules of :data:`MODULES` (their public names, as
``from module import *`` would see them) and sorts every class into

- ``"bijector"``: a subclass of the library's bijector base, defined by the library;
- ``"abstract"``: such a subclass that is an abstract base (``inspect.isabstract``, a name
  ``Abstract*``, or listed in :data:`ABSTRACT`);
- ``"re-export"``: a bijector class of another package that the module re-exports (torch's own
  ``torch.distributions`` transforms in ``zuko.transforms`` and ``pyro.distributions.transforms``);
- ``"not a bijector"``: any other class the library defines there (a distribution, a network, a
  sampler, an exception).

Classes of other packages that are not bijectors (``typing.Any``, ``torch.Tensor``) are import
artefacts of the module, not exports, and are left out.
"""

import importlib
import inspect

#: The library's import name, its public transform modules and the dotted name of its base.
MODULES = {
    "zuko": ("zuko", ("zuko.transforms", "zuko.flows"),
             ("torch.distributions.transforms.Transform", "zuko.lazy.LazyTransform")),
    "nflows": ("nflows", ("nflows.transforms",), ("nflows.transforms.base.Transform",)),
    "normflows": ("normflows", ("normflows.flows",), ("normflows.flows.base.Flow",)),
    "pyro": ("pyro", ("pyro.distributions.transforms",),
             ("torch.distributions.transforms.Transform",)),
    "flowjax": ("flowjax", ("flowjax.bijections",), ("flowjax.bijections.AbstractBijection",)),
    "distrax": ("distrax", ("distrax",), ("distrax.Bijector",)),
    "tfp": ("tensorflow_probability", ("tensorflow_probability.substrates.jax.bijectors",),
            ("tensorflow_probability.substrates.jax.bijectors.Bijector",)),
}

#: Distribution names (for the version when the package has no ``__version__``).
DISTRIBUTIONS = {"pyro": ("pyro-ppl",), "tfp": ("tfp-nightly", "tensorflow-probability")}

#: Bases that are concrete Python classes but are not layers on their own (they take the map as
#: functions or wrap other bijections), with the reason.
ABSTRACT = {
    "zuko": {"LazyTransform": "base class of conditional transforms",
             "AutoregressiveTransform": "generic: takes the meta-function and passes as callables",
             "CouplingTransform": "generic: takes the meta-function as a callable",
             "DependentTransform": "wrapper: reinterprets batch dimensions of another transform",
             "MonotonicTransform": "generic: takes the monotonic function as a callable",
             "UnconstrainedMonotonicTransform": "generic: takes the integrand as a callable",
             "ComposedTransform": "container of other transforms",
             "LazyInverse": "wrapper: the inverse of another lazy transform",
             "UnconditionalTransform": "wrapper: a transform class and its arguments"},
    "nflows": {"Transform": "base class", "CompositeTransform": "container of other transforms",
               "MultiscaleCompositeTransform": "container of other transforms",
               "InverseTransform": "wrapper: the inverse of another transform"},
    "normflows": {"Flow": "base class", "Composite": "container of other flows"},
    "pyro": {"ComposeTransformModule": "container of other transforms"},
    "flowjax": {"Chain": "container of other bijections", "Invert": "wrapper",
                "Stack": "container of other bijections", "Concatenate": "container",
                "Scan": "container of other bijections", "Vmap": "wrapper (checked inside "
                "RationalQuadraticSpline's recipe)", "Sandwich": "wrapper", "Indexed": "wrapper",
                "EmbedCondition": "wrapper", "AdditiveCondition": "wrapper",
                "NumericalInverse": "wrapper"},
    "distrax": {"Bijector": "base class", "Chain": "container of other bijectors",
                "Inverse": "wrapper", "Block": "wrapper", "Lambda": "wrapper of functions"},
    "tfp": {"Bijector": "base class", "AutoCompositeTensorBijector": "base class",
            "Chain": "container of other bijectors", "Invert": "wrapper",
            "Composition": "base class", "Inline": "wrapper of functions"},
}


class LibraryMissing(ImportError):
    """The peer library (or what its modules need) is not installed."""


def _resolve(dotted):
    module, _, name = dotted.rpartition(".")
    return getattr(importlib.import_module(module), name)


def import_library(library):
    """The modules of :data:`MODULES` for ``library`` (imported), and its version."""
    if library not in MODULES:
        raise ValueError(f"audit: unknown library {library!r}; expected one of "
                         f"{', '.join(MODULES)}")
    package, modules, _ = MODULES[library]
    try:
        top = importlib.import_module(package)
        loaded = [importlib.import_module(m) for m in modules]
    except ImportError as exc:
        raise LibraryMissing(f"audit: {library} is not installed ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    version = getattr(top, "__version__", None)
    if version is None:
        from importlib import metadata
        for dist in DISTRIBUTIONS.get(library, (library,)):
            try:
                version = metadata.version(dist)
                break
            except metadata.PackageNotFoundError:
                continue
    return loaded, version or "unknown"


def catalogue(library):
    """``[(name, kind, reason)]`` for every class the library's transform modules export.

    ``kind`` is ``"bijector"``, ``"abstract"``, ``"re-export"`` or ``"not a bijector"`` (see
    the module's docstring); ``reason`` says why a class cannot be built (empty for a
    bijector). Sorted by name; a name exported by two modules is listed once.
    """
    modules, _ = import_library(library)
    package = MODULES[library][0].split(".")[0]
    bases = tuple(_resolve(b) for b in MODULES[library][2])
    abstract = ABSTRACT.get(library, {})
    out = {}
    for module in modules:
        names = getattr(module, "__all__", None)
        if names is None:
            names = [n for n in dir(module) if not n.startswith("_")]
        for name in names:
            cls = getattr(module, name, None)
            if not inspect.isclass(cls) or name in out:
                continue
            own = (cls.__module__ or "").split(".")[0] == package
            is_bijector = issubclass(cls, bases)
            if is_bijector and not own:
                out[name] = ("re-export", f"re-export of {cls.__module__}.{cls.__qualname__}")
            elif not own:
                continue
            elif not is_bijector:
                out[name] = ("not a bijector", f"not a subclass of {bases[0].__qualname__}"
                             + (f" or {bases[1].__qualname__}" if len(bases) > 1 else ""))
            elif cls in bases or name in abstract or name.startswith("Abstract") or \
                    inspect.isabstract(cls):
                out[name] = ("abstract", abstract.get(name, "abstract base"))
            else:
                out[name] = ("bijector", "")
    return [(name, *out[name]) for name in sorted(out)]
