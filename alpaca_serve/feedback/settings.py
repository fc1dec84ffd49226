"""Where the feedback store is: ALPACA_DATA_DIR and ALPACA_DATABASE_URL, declared once.

Usage: `StoreSettings().store_url` is where the server keeps generations and feedback. It reads only
those two settings, for `alpaca-export` and the loop, which must find the server's database
without failing on a server-only setting; the server's settings use the same declarations.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import BeforeValidator, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from alpaca_serve.feedback.store import DEFAULT_DATA_DIR, default_database_url


def none_if_blank(value: object) -> object:
    return None if isinstance(value, str) and not value.strip() else value


# Where generations and feedback are kept, declared once for both classes below.
DataDir = Annotated[
    Path, Field(description="folder of the SQLite database of generations and feedback")
]
DatabaseUrl = Annotated[
    str | None,
    BeforeValidator(none_if_blank),
    Field(
        description="postgresql://user:password@host:port/db to keep generations and feedback in "
        "PostgreSQL (several server replicas); empty: SQLite in data_dir",
    ),
]


class StoreSettings(BaseSettings):
    """Where the feedback store is, as the server finds it: ALPACA_DATA_DIR, ALPACA_DATABASE_URL."""

    model_config = SettingsConfigDict(env_prefix="ALPACA_", extra="ignore")

    data_dir: DataDir = DEFAULT_DATA_DIR
    database_url: DatabaseUrl = None

    @property
    def store_url(self) -> str:
        """Where generations and feedback are kept."""
        return self.database_url or default_database_url(self.data_dir)


def database_location(
    database: str | None, data_dir: Path | None, settings: StoreSettings
) -> tuple[str, Path | None]:
    """The URL of the database to read, and the folder when it is the SQLite file of a data
    folder: `database`, else `data_dir`, else the server's store as its settings say."""
    if database:
        return database, None
    if data_dir is None and settings.database_url:
        return settings.database_url, None
    folder = (data_dir if data_dir is not None else settings.data_dir).expanduser()
    return default_database_url(folder), folder
