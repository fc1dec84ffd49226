"""The feedback store's tables, as a list of migrations, and the code that applies them.

Usage:
    migrate(tx, backend)    # in one write transaction: creates schema_version, then applies
                            # each migration not yet applied (FeedbackStore does this on open)

Opening a store migrates it (`FeedbackStore.__init__`). To change the schema, append a migration
to MIGRATIONS; never edit or reorder one that has been released.
"""

from __future__ import annotations

import time

from alpaca_serve.feedback.backend import Backend, Transaction
from alpaca_serve.feedback.records import StoreError

# Each entry moves the schema up one version, in order. Append new versions (for example an
# `ALTER TABLE ... ADD COLUMN`); never edit or reorder one that has been released.
# Placeholders: {id} an auto-increment primary key, {real} a double, {json} a JSON document.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (  # 1: generations, ratings, comparisons
        """CREATE TABLE generations (
            id TEXT PRIMARY KEY,
            created_at {real} NOT NULL,
            model TEXT NOT NULL,
            params {json} NOT NULL,
            instruction TEXT,
            input TEXT NOT NULL,
            prompt TEXT NOT NULL,
            response TEXT NOT NULL,
            finish_reason TEXT NOT NULL,
            prompt_tokens INTEGER NOT NULL,
            completion_tokens INTEGER NOT NULL,
            latency_s {real} NOT NULL,
            filter_verdicts {json} NOT NULL
        )""",
        "CREATE INDEX generations_by_time ON generations (created_at, id)",
        """CREATE TABLE ratings (
            id {id},
            generation_id TEXT NOT NULL REFERENCES generations (id),
            session_id TEXT,
            rating TEXT NOT NULL CHECK (rating IN ('up', 'down')),
            comment TEXT,
            flag TEXT,
            preferred_response TEXT,
            created_at {real} NOT NULL,
            updated_at {real} NOT NULL
        )""",
        "CREATE INDEX ratings_by_generation ON ratings (generation_id)",
        """CREATE UNIQUE INDEX ratings_one_per_session ON ratings (generation_id, session_id)
            WHERE session_id IS NOT NULL""",
        """CREATE TABLE comparisons (
            id {id},
            generation_a TEXT NOT NULL REFERENCES generations (id),
            generation_b TEXT NOT NULL REFERENCES generations (id),
            winner TEXT NOT NULL,
            session_id TEXT,
            created_at {real} NOT NULL,
            updated_at {real} NOT NULL,
            CHECK (generation_a < generation_b),
            CHECK (winner IN (generation_a, generation_b, 'tie', 'both_bad'))
        )""",
        """CREATE UNIQUE INDEX comparisons_one_per_session
            ON comparisons (generation_a, generation_b, session_id)
            WHERE session_id IS NOT NULL""",
    ),
    (  # 2: imported answers (another model's, for comparisons) and machine votes
        "ALTER TABLE generations ADD COLUMN source TEXT NOT NULL DEFAULT 'served' "
        "CHECK (source IN ('served', 'imported'))",
        "ALTER TABLE comparisons ADD COLUMN voter TEXT NOT NULL DEFAULT 'human' "
        "CHECK (voter IN ('human', 'machine'))",
    ),
    (  # 3: the session a generation was shown to, purged logs (retention), excluded sessions
        "ALTER TABLE generations ADD COLUMN session_id TEXT",
        "ALTER TABLE generations ADD COLUMN purged_at {real}",
        "CREATE INDEX generations_by_session ON generations (session_id)",
        """CREATE TABLE excluded_sessions (
            id {id},
            session_id TEXT NOT NULL UNIQUE,
            reason TEXT,
            excluded_by TEXT,
            created_at {real} NOT NULL
        )""",
    ),
    (  # 4: feedback by session (exclusions and deletions read it on every count)
        "CREATE INDEX ratings_by_session ON ratings (session_id)",
        "CREATE INDEX comparisons_by_session ON comparisons (session_id)",
    ),
)

# The generations table's columns, in GenerationRecord's field order.
GENERATION_COLUMNS = (
    "id",
    "created_at",
    "model",
    "params",
    "instruction",
    "input",
    "prompt",
    "response",
    "finish_reason",
    "prompt_tokens",
    "completion_tokens",
    "latency_s",
    "filter_verdicts",
    "source",
    "session_id",
    "purged_at",
)


def migrate(tx: Transaction, backend: Backend) -> None:
    """Create the version table, then apply, inside `tx`, each migration not yet applied. A
    database newer than this code is refused rather than guessed at."""
    types = backend.types
    tx.execute(
        "CREATE TABLE IF NOT EXISTS schema_version ("
        f"version INTEGER PRIMARY KEY, applied_at {types['real']} NOT NULL)"
    )
    backend.lock_schema(tx)
    row = tx.one("SELECT MAX(version) FROM schema_version")
    assert row is not None  # an aggregate query returns one row
    current = row[0] or 0
    if current > len(MIGRATIONS):
        raise StoreError(
            f"{backend.description} has schema version {current}, newer than "
            f"this alpaca-serve knows ({len(MIGRATIONS)}): upgrade alpaca-serve"
        )
    for version in range(current + 1, len(MIGRATIONS) + 1):
        for statement in MIGRATIONS[version - 1]:
            tx.execute(statement.format(**types))
        tx.execute(
            "INSERT INTO schema_version (version, applied_at) VALUES (?, ?)",
            (version, time.time()),
        )
