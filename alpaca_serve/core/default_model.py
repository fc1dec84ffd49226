"""Where the bundled default model lives once converted, for every command that falls back on it.

Usage:
    from alpaca_serve.core.default_model import DEFAULT_MODEL_NAME, default_model_folder
    folder = default_model_folder()    # $ALPACA_CACHE_DIR (or ~/.cache/alpaca-serve)/SmolLM2-...
    convert_command(folder)            # the command that converts the bundled GGUF file there

The server converts it on its first start (server/default_model.py), `alpaca-train` when it is
given no `--model`; both run the conversion as a process of its own (`alpaca-convert`'s module),
so that neither imports the other's layer.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
CACHE_DIR_VARIABLE = "ALPACA_CACHE_DIR"
DEFAULT_CACHE_DIR = Path.home() / ".cache" / "alpaca-serve"


def default_model_folder(cache_dir: Path | None = None) -> Path:
    """The converted default model's folder: in `cache_dir`, else $ALPACA_CACHE_DIR, else
    ~/.cache/alpaca-serve (the server's `cache_dir` setting and its default)."""
    if cache_dir is None:
        cache_dir = Path(os.environ.get(CACHE_DIR_VARIABLE) or DEFAULT_CACHE_DIR)
    return Path(cache_dir) / DEFAULT_MODEL_NAME


def is_converted(folder: Path) -> bool:
    return (folder / "config.json").is_file()


def convert_command(folder: Path) -> list[str]:
    """The command that converts the bundled GGUF file into `folder`."""
    return [sys.executable, "-m", "alpaca_serve.recover.convert", "--out", str(folder)]
