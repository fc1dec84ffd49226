"""Backups of the feedback store: a consistent copy of a SQLite store while the server writes
to it, and a copy put back into an empty store (SQLite or PostgreSQL).

Usage:
    alpaca-export --backup /backups/alpaca-2026-12-04.sqlite3      # the server's store
    alpaca-export --database postgresql://... --restore /backups/alpaca-2026-12-04.sqlite3

    with open_store(url) as store:
        counts = backup_sqlite(store, Path("copy.sqlite3"))         # {"generations": 120, ...}
        counts = restore(target_store, Path("copy.sqlite3"))

`backup_sqlite` uses SQLite's online backup API, which copies the database page by page as of
one moment: everything committed before it started is in the copy, nothing half-written is. The
copy is written beside FILE and moved into place once complete (owner-only permissions, as the
store itself). A PostgreSQL store is backed up with PostgreSQL's own tools (`pg_dump`, see the
operations docs); `restore` reads a SQLite backup and writes it, rows and ids as they were, into
a store that holds no generation, rating or comparison yet (of either kind), so a SQLite store
can also be moved into PostgreSQL this way.
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
from pathlib import Path

from alpaca_serve.feedback.backend import one_line
from alpaca_serve.feedback.records import StoreError
from alpaca_serve.feedback.schema import GENERATION_COLUMNS
from alpaca_serve.feedback.sqlite import SqliteBackend
from alpaca_serve.feedback.store import FeedbackStore, open_store

# The tables a backup holds, parents first, with their columns in a fixed order.
TABLES: dict[str, tuple[str, ...]] = {
    "generations": GENERATION_COLUMNS,
    "ratings": (
        "id",
        "generation_id",
        "session_id",
        "rating",
        "comment",
        "flag",
        "preferred_response",
        "created_at",
        "updated_at",
    ),
    "comparisons": (
        "id",
        "generation_a",
        "generation_b",
        "winner",
        "session_id",
        "created_at",
        "updated_at",
        "voter",
    ),
    "excluded_sessions": ("id", "session_id", "reason", "excluded_by", "created_at"),
}
PAGES_PER_STEP = 256  # the online backup copies this many pages, then lets writers in


def backup_sqlite(store: FeedbackStore, out: Path) -> dict[str, int]:
    """Copy the SQLite store `store` into `out` as of one moment; the rows of each table in the
    copy. StoreError for a store that is not SQLite, or a copy that cannot be written."""
    if not isinstance(store.backend, SqliteBackend):
        raise StoreError(
            f"--backup copies a SQLite store; {store.backend.description} is backed up with "
            "pg_dump (see docs/operations.md)"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    os.close(fd)  # mkstemp makes it owner-only; SQLite writes into it
    try:
        source = sqlite3.connect(store.backend.path, timeout=30)
        try:
            copy = sqlite3.connect(temporary)
            try:
                source.backup(copy, pages=PAGES_PER_STEP)
                counts = _counts(copy)
                check = copy.execute("PRAGMA integrity_check").fetchone()[0]
                if check != "ok":
                    raise StoreError(f"the copy of {store.backend.description} is corrupt: {check}")
            finally:
                copy.close()
        finally:
            source.close()
        os.replace(temporary, out)
    except sqlite3.Error as err:
        Path(temporary).unlink(missing_ok=True)
        raise StoreError(f"cannot back up {store.backend.description}: {one_line(err)}") from err
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return counts


def restore(target: FeedbackStore, backup: Path) -> dict[str, int]:
    """Put the rows of the SQLite backup `backup` into `target`, which must be empty; the rows
    restored per table. Everything is written in one transaction: on any error, nothing is."""
    if not backup.is_file():
        raise StoreError(f"no backup file at {backup}")
    try:
        with open(backup, "rb") as stream:
            header = stream.read(16)
    except OSError as err:
        raise StoreError(f"cannot read {backup}: {err.strerror}") from err
    if header != b"SQLite format 3\x00":
        raise StoreError(f"{backup} is not a SQLite backup of a feedback store")
    # Opening migrates an older backup to this version's schema, as the server would.
    with open_store(f"sqlite:///{backup.resolve()}") as source:
        rows = source.table_rows(TABLES)
    return target.insert_table_rows(TABLES, rows)


def _counts(conn: sqlite3.Connection) -> dict[str, int]:
    try:
        return {
            table: conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0] for table in TABLES
        }
    except sqlite3.Error as err:
        raise StoreError(f"the copy holds no feedback store: {one_line(err)}") from err
