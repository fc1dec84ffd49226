"""Recovery configuration: the `ALPACA_*` environment variables that `alpaca-convert` reads.

Usage: `RecoverSettings().cache_dir` is where the bundled default model is converted to,
the server's own `ALPACA_CACHE_DIR` (recover does not import server, so the default is repeated
here; tests/recover/test_convert.py checks that the two agree).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class RecoverSettings(BaseSettings):
    """Every setting is also an environment variable: `cache_dir` is `ALPACA_CACHE_DIR`."""

    model_config = SettingsConfigDict(env_prefix="ALPACA_", extra="ignore")

    cache_dir: Path = Field(
        default=Path.home() / ".cache" / "alpaca-serve",
        description="where the bundled default model is converted to, once",
    )
