"""The Alpaca cycle in one command, `alpaca-loop`: fine-tune, publish, compare, prefer, report.

Usage:
    alpaca-loop run --auto --adapters-dir ADAPTERS --data-dir DATA     # see loop/cli.py
    make loop                                                          # with a server of its own

`loop` drives the other packages: the server over HTTP (`alpaca_serve.client.api`), training,
recovery and evaluation through their own functions (`alpaca_serve.training.cli.fine_tune` with
typed arguments, not an argument list), the feedback store through its own functions.
"""
