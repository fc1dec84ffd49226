"""The SQLite backend of the feedback store: one file, WAL journal, every commit fsynced.

Usage:
    store = FeedbackStore(SqliteBackend(Path("/home/me/.local/share/alpaca-serve/alpaca.sqlite3")))
    # usually through open_store("sqlite:///home/me/.local/share/alpaca-serve/alpaca.sqlite3")

The folder is created on connect. Several processes may share the file: writers take SQLite's
write lock at the start of their transaction and wait up to 30 s for it.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alpaca_serve.feedback.backend import Backend, one_line
from alpaca_serve.feedback.records import StoreError

SQLITE_FULL = 13  # the primary result code of "database or disk is full" (sqlite3.h)


class SqliteBackend(Backend):
    placeholder = "?"
    types = {"id": "INTEGER PRIMARY KEY AUTOINCREMENT", "real": "REAL", "json": "TEXT"}
    errors = (sqlite3.Error,)

    def __init__(self, path: Path):
        self.path = path
        self.description = f"SQLite database {path}"

    def connect(self) -> sqlite3.Connection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # Owner-only, like the exports: prompts and answers are people's. SQLite gives its
            # -wal and -shm files the database file's permissions.
            if not self.path.exists():
                os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            # isolation_level=None: transactions are begun and ended here, explicitly.
            conn = sqlite3.connect(
                self.path, timeout=30, isolation_level=None, check_same_thread=False
            )
        except (OSError, sqlite3.Error) as err:
            raise StoreError(f"cannot open {self.description}: {one_line(err)}") from err
        try:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode != "wal":
                raise StoreError(f"{self.description} cannot use WAL journal mode (got {mode})")
            conn.execute("PRAGMA synchronous=FULL")  # fsync the WAL on every commit
            conn.execute("PRAGMA foreign_keys=ON")
        except sqlite3.Error as err:
            conn.close()
            raise StoreError(f"cannot open {self.description}: {one_line(err)}") from err
        except BaseException:
            conn.close()
            raise
        return conn

    def is_full(self, err: BaseException) -> bool:
        # A full disk (ENOSPC) and a reached max_page_count both end as SQLITE_FULL. Python
        # gives the code from 3.11 on; before, only the message says it.
        code = getattr(err, "sqlite_errorcode", None)
        if isinstance(err, sqlite3.Error) and code is not None:
            return code & 0xFF == SQLITE_FULL
        return "database or disk is full" in str(err) or super().is_full(err)

    @contextmanager
    def transaction(self, conn: sqlite3.Connection, write: bool) -> Iterator[sqlite3.Cursor]:
        # IMMEDIATE takes the write lock up front, so a read-then-write never has to upgrade.
        conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        cursor = conn.cursor()
        try:
            yield cursor
            # Inside the try: a COMMIT that fails (a full disk) must not leave the transaction
            # open, or every later BEGIN on this connection would fail.
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:  # SQLite ends some failed transactions by itself
                conn.execute("ROLLBACK")
            raise
        finally:
            cursor.close()
