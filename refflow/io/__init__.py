"""Model files and specs: save and load models as arrays plus a JSON header, never pickle.

- :mod:`refflow.io.spec`: ``to_spec`` / ``from_spec``, the JSON structure of a saveable object
  and the allow-list of classes a spec may name.
- :mod:`refflow.io.files`: ``save`` / ``load``, the ``.npz`` file format and its checks (see
  that module's documentation for the format and what loading verifies).
"""

from .files import FORMAT_NAME, FORMAT_VERSION, atomic_write, load, save
from .spec import from_spec, to_spec

__all__ = ["save", "load", "to_spec", "from_spec", "atomic_write", "FORMAT_NAME",
           "FORMAT_VERSION"]
