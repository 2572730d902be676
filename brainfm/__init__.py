"""brainfm: brain age and fluid intelligence from resting-state fMRI, as a BIDS App."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("brainfm")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
