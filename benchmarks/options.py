"""What the server benchmarks (adapters, peer, engine_start) share on their command lines: the
parsers of their count options and the default model they measure."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable
from pathlib import Path


def count_list(example: str) -> Callable[[str], list[int]]:
    """An argparse type for comma-separated positive integers (`example` shows one in errors)."""

    def parse(text: str) -> list[int]:
        try:
            counts = [int(part) for part in text.split(",")]
        except ValueError:
            counts = []
        if not counts or min(counts) < 1:
            raise argparse.ArgumentTypeError(
                f"expected positive integers such as {example}, got {text!r}"
            )
        return counts

    return parse


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def default_model() -> Path:
    """The bundled SmolLM2-135M-Instruct, converted once into ALPACA_CACHE_DIR (as the server
    and alpaca-bench find it)."""
    from alpaca_serve.server.default_model import ensure_default_model
    from alpaca_serve.server.settings import ServerSettings

    return asyncio.run(ensure_default_model(ServerSettings().cache_dir))
