"""The PostgreSQL backend of the feedback store, for several server replicas sharing one database.

Usage:
    store = FeedbackStore(PostgresBackend("postgresql://alpaca:secret@db:5432/alpaca"))
    # usually through open_store("postgresql://alpaca:secret@db:5432/alpaca")

psycopg is imported on connect, so a SQLite-only install never needs it. A connection that the
server dropped (restart, network) is replaced on the store's next call.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from alpaca_serve.feedback.backend import Backend, Transaction, one_line, redact
from alpaca_serve.feedback.records import StoreError

DISK_FULL = "53100"  # SQLSTATE disk_full: "could not extend file", "could not write"


class PostgresBackend(Backend):
    placeholder = "%s"
    types = {
        "id": "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
        "real": "DOUBLE PRECISION",
        "json": "JSONB",
    }

    def __init__(self, url: str):
        self.url = url
        self.description = f"PostgreSQL database {redact(url)}"
        self.errors = ()  # set on connect, once psycopg is imported

    def connect(self) -> Any:
        try:
            import psycopg
        except ImportError as err:
            raise StoreError(
                "PostgreSQL needs psycopg: pip install 'psycopg[binary]>=3.1'"
            ) from err
        self.errors = (psycopg.Error,)
        try:
            # UTF-8 whatever the database's own encoding: one created as SQL_ASCII (initdb's
            # choice where no UTF-8 locale is set) would otherwise hand back bytes, not text.
            return psycopg.connect(
                self.url, autocommit=True, connect_timeout=10, client_encoding="UTF8"
            )
        except psycopg.Error as err:
            raise StoreError(f"cannot connect to {self.description}: {one_line(err)}") from err

    def is_broken(self, conn: Any) -> bool:
        return conn.closed or conn.broken

    def is_full(self, err: BaseException) -> bool:
        return getattr(err, "sqlstate", None) == DISK_FULL or super().is_full(err)

    def lock_schema(self, tx: Transaction) -> None:
        tx.execute("LOCK TABLE schema_version IN SHARE ROW EXCLUSIVE MODE")

    explicit_ids = " OVERRIDING SYSTEM VALUE"

    def continue_ids_after_insert(self, tx: Transaction, table: str) -> None:
        tx.execute(
            f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
            f"COALESCE(MAX(id), 0) + 1, false) FROM {table}"
        )

    @contextmanager
    def transaction(self, conn: Any, write: bool) -> Iterator[Any]:
        with conn.transaction(), conn.cursor() as cursor:
            yield cursor
