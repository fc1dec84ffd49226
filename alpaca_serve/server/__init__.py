"""HTTP serving of Alpaca-style models: settings, app factory, routes, vLLM engine adapter."""

from alpaca_serve import __version__

__all__ = ["__version__"]
