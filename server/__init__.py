"""HTTP serving of Alpaca-style models: settings, app factory, routes, vLLM engine adapter."""

__version__ = "0.1.0"
