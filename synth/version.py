"""phosphene's version, read from the installed package's metadata (recorded in every result and manifest)."""
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("phosphene")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"
