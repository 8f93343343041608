"""Core trading kernel: economic gates, idempotent intents and orders, stream recovery."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("quantum-core-kernel")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
