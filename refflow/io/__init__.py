"""Model files and specs: save and load models as arrays plus a JSON header, never pickle.

- :mod:`refflow.io.spec`: ``to_spec`` / ``from_spec``, the JSON structure of a saveable object,
  the allow-list of classes a spec may name, the declarations of the arrays a spec implies and
  the :class:`Limits` on what a spec may ask for.
- :mod:`refflow.io.files`: ``save`` / ``load``, the ``.npz`` file format and its checks (see
  that module's documentation for the format and what loading verifies).
"""

from .files import FORMAT_NAME, FORMAT_VERSION, atomic_write, load, save
from .spec import DEFAULT_LIMITS, Limits, declare, from_spec, to_spec

__all__ = ["save", "load", "to_spec", "from_spec", "declare", "Limits", "DEFAULT_LIMITS",
           "atomic_write", "FORMAT_NAME", "FORMAT_VERSION"]
