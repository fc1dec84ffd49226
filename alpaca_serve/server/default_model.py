"""The bundled default model: SmolLM2-135M-Instruct, converted once into the cache folder.

The conversion runs as its own process (`python -m alpaca_serve.recover.convert`), so its torch and
transformers memory is returned before the engine loads, and `server` never imports `recover`.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from alpaca_serve.core.default_model import (
    DEFAULT_MODEL_NAME,
    convert_command,
    default_model_folder,
    is_converted,
)

__all__ = ["DEFAULT_MODEL_NAME", "DefaultModelError", "ensure_default_model"]

log = logging.getLogger("alpaca.server")


class DefaultModelError(RuntimeError):
    """The bundled model could not be converted."""


async def ensure_default_model(cache_dir: Path) -> Path:
    """The converted folder, converting the bundled GGUF file on the first call."""
    out_dir = default_model_folder(cache_dir)
    if is_converted(out_dir):
        return out_dir
    log.info("converting the bundled %s into %s (once)", DEFAULT_MODEL_NAME, out_dir)
    process = await asyncio.create_subprocess_exec(*convert_command(out_dir))
    code = await process.wait()
    if code != 0 or not is_converted(out_dir):
        raise DefaultModelError(
            f"converting the bundled default model failed (exit code {code}); "
            "run `alpaca-convert` to see why"
        )
    return out_dir
