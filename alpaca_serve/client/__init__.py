"""One client of alpaca-serve's HTTP API, for every caller (the demo, `alpaca-eval`).

Usage:
    from alpaca_serve.client.api import AlpacaClient, AsyncAlpacaClient
    from alpaca_serve.client.errors import APIRequestError, describe_error

It speaks HTTP only: it never imports `server`, `demo`, `evaluation` or `training`.
"""
