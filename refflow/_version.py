"""The version of refflow (one place, read by the package and by model files)."""

__version__ = "0.1.0"
