"""Lablink's backend: the catalog, the labs and their states, the drivers."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("lablink")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"
