"""HTTP serving of Alpaca-style models: settings, app factory, routes, vLLM engine adapter."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("alpaca-serve")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"
