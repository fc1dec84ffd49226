"""What a database backend of the feedback store provides, and the transaction the store writes
SQL through.

Usage:
    class SqliteBackend(Backend): ...          # one subclass per database (sqlite.py, postgres.py)
    with backend.transaction(conn, write=True) as cursor:
        tx = Transaction(cursor, backend.placeholder)
        tx.rows("SELECT id FROM generations WHERE model = ?", ("alpaca-7b",))

SQL is written once, with `?` placeholders; `Transaction` adapts it to the backend's.
"""

from __future__ import annotations

import errno
import re
from collections.abc import Iterable
from contextlib import AbstractContextManager
from typing import Any

# What the operating system says when a write finds no room: the disk, or the user's quota.
NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


class Backend:
    """What differs between databases: connecting, transactions, placeholders, column types."""

    placeholder: str
    types: dict[str, str]  # DDL for the {id}, {real} and {json} placeholders of the schema
    errors: tuple[type[BaseException], ...]  # the driver's exceptions, reported as StoreError
    description: str  # the database, for messages (no password)

    def connect(self) -> Any:
        raise NotImplementedError

    def is_broken(self, conn: Any) -> bool:
        return False

    def is_full(self, err: BaseException) -> bool:
        """Whether `err` says the database has no room for a write (a full disk, a quota, a
        size limit); each backend adds its driver's own way of saying so."""
        return isinstance(err, OSError) and err.errno in NO_SPACE_ERRNOS

    def lock_schema(self, tx: Transaction) -> None:
        """Keep other processes from migrating at the same time, until the transaction ends."""

    def transaction(self, conn: Any, write: bool) -> AbstractContextManager[Any]:
        """A cursor in one transaction: committed when the block ends, rolled back on error."""
        raise NotImplementedError

    # What an INSERT that gives the {id} column its value says after its column list (restoring
    # a backup keeps the ids), and what makes the next id follow the largest one written.
    explicit_ids = ""

    def continue_ids_after_insert(self, tx: Transaction, table: str) -> None:
        """After rows were inserted with their ids, let new rows take ids above them (SQLite's
        AUTOINCREMENT does so by itself)."""


class Transaction:
    """A cursor inside one transaction; SQL is written with `?` and adapted to the backend."""

    def __init__(self, cursor: Any, placeholder: str):
        self._cursor = cursor
        self._placeholder = placeholder

    def _sql(self, sql: str) -> str:
        return sql if self._placeholder == "?" else sql.replace("?", self._placeholder)

    def execute(self, sql: str, params: Iterable[Any] = ()) -> Any:
        self._cursor.execute(self._sql(sql), tuple(params))
        return self._cursor

    def executemany(self, sql: str, rows: list[tuple]) -> None:
        self._cursor.executemany(self._sql(sql), rows)

    def rows(self, sql: str, params: Iterable[Any] = ()) -> list[tuple]:
        return self.execute(sql, params).fetchall()

    def one(self, sql: str, params: Iterable[Any] = ()) -> tuple | None:
        return self.execute(sql, params).fetchone()


def one_line(err: BaseException) -> str:
    """The error's message on one line, or its type's name when it has none."""
    return " ".join(str(err).split()) or type(err).__name__


def redact(url: str) -> str:
    """`url` without its secrets, for messages: the password in it (`user:***@`) and every query
    parameter's value (libpq takes `?password=...` too, and `sslkey=...` paths)."""
    url = re.sub(r"(://[^/@:]*:)[^/@]*@", r"\1***@", url)
    return re.sub(r"([?&][^=&#]+=)[^&#]*", r"\1***", url)
