"""The feedback store: durable generation records and human feedback, over SQLite or PostgreSQL.

Usage:
    store = open_store("sqlite:///home/me/.local/share/alpaca-serve/alpaca.sqlite3")
    store = open_store("postgresql://alpaca:secret@127.0.0.1:5432/alpaca")
    store.record_generations([GenerationRecord(id="gen-1", ...)])
    row_id, created = store.save_rating(RatingFeedback("gen-1", "up", session_id="s-42"))
    store.summary()                     # thumbs and flags per model, pairwise wins
    store.list_comparisons(after=0)     # every pairwise vote, oldest first, a page at a time
    store.battles(voter="human")        # every vote as (model of a, model of b, outcome, voter)
    store.exclude_session("s-42", reason="a script")   # its votes leave every count below
    store.excluded_counts()             # {"sessions", "ratings", "comparisons"} left out
    store.generations_by_id(["gen-1"])  # {"gen-1": {"prompt", "response", ...}}
    store.out_of_space                  # why the last write found no room; None once one works
    store.check_writable()              # a write that leaves nothing: StoreFullError while full
    for row in store.export_rows():     # Alpaca records (instruction, input, output) + feedback
        ...
    store.purge_generations(before=time.time() - 30 * 86400)   # retention: empties old text
    store.close()

Every method is synchronous and thread-safe (one connection behind a lock), so the server calls
them through `asyncio.to_thread`. Each write is one transaction, committed durably before the
method returns: SQLite runs in WAL mode with `synchronous=FULL`; PostgreSQL commits as configured
(durable by default). Opening a store creates the schema and applies any pending migrations.

Retention (`purge_generations`) empties the text of old generations (instruction, input, prompt,
answer, filter verdicts) and marks them `purged_at`; their ratings and votes stay, so counts and
leaderboards do not change. Whatever reads the text (`export_rows`, the training data) leaves
purged generations out and counts them.

An excluded session (`exclude_session`, until `include_session`) keeps its ratings and votes
stored, but every read that counts or exports them leaves them out and says how many:
`summary()` under "excluded", `battles()` and `export_rows()` through the counter they are
handed, `list_comparisons()` unless asked to include them (flagged), `excluded_counts()` for the
totals. A rating or vote without a session is never excluded.

A write that finds no room (a full disk, a size limit) raises StoreFullError and stores nothing
of itself; what was committed before is untouched, reads keep working, and writes work again once
space is freed. `out_of_space` remembers the last such failure until a write commits.

No client address is stored anywhere. NUL characters, which PostgreSQL cannot store in text, are
replaced with U+FFFD on both backends so that the two keep the same data.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from alpaca_serve.feedback.backend import Backend, Transaction, one_line, redact
from alpaca_serve.feedback.postgres import PostgresBackend
from alpaca_serve.feedback.records import (
    ComparisonFeedback,
    GenerationRecord,
    NotShownError,
    RatingFeedback,
    StoreError,
    StoreFullError,
    UnknownGenerationError,
)
from alpaca_serve.feedback.schema import GENERATION_COLUMNS, migrate
from alpaca_serve.feedback.sqlite import SqliteBackend

log = logging.getLogger("alpaca.feedback")

DEFAULT_DATA_DIR = Path.home() / ".local" / "share" / "alpaca-serve"
DATABASE_FILENAME = "alpaca.sqlite3"

EXPORT_PAGE_SIZE = 500  # generations read per transaction while exporting
ID_CHUNK = 500  # ids per `IN (...)` list, well under SQLite's limit on bound parameters
COMPARISON_PAGE_LIMIT = 1000  # most comparisons one `list_comparisons` call returns
SECONDS_PER_DAY = 86_400  # retention is set in days
MAX_REASON_CHARS = 500  # why a session was excluded: the admin route's and alpaca-export's limit
PURGE_BATCH_SIZE = 2000  # generations purged per transaction, so no purge holds a lock for long
# The id of the row `check_writable` writes and removes in one transaction (never committed).
PROBE_GENERATION_ID = "alpaca-store-probe"


def _excluded(row: str) -> str:
    """SQL that is true when the session of `row` (a ratings or comparisons alias) is excluded;
    never for a row without a session (NULL equals nothing)."""
    return f"EXISTS (SELECT 1 FROM excluded_sessions x WHERE x.session_id = {row}.session_id)"


def open_store(url: str) -> FeedbackStore:
    """Open the store at `url` (sqlite:///ABSOLUTE/PATH or postgresql://...), migrating it."""
    return FeedbackStore(backend_for(url))


def default_database_url(data_dir: Path = DEFAULT_DATA_DIR) -> str:
    """The URL of the server's default store: `alpaca.sqlite3` in `data_dir`."""
    return "sqlite://" + quote(str(Path(data_dir).expanduser().resolve() / DATABASE_FILENAME))


def backend_for(url: str) -> Backend:
    """The backend a database URL names; ValueError for a malformed or unsupported one."""
    scheme = url.partition("://")[0].lower() if "://" in url else ""
    if scheme == "sqlite":
        parts = urlsplit(url)
        path = unquote(parts.path)
        if parts.netloc or parts.query or not path.startswith("/") or path.endswith("/"):
            raise ValueError(
                f"a SQLite database URL is sqlite:///ABSOLUTE/PATH/FILE.sqlite3, got {url!r}"
            )
        return SqliteBackend(Path(path))
    if scheme in ("postgresql", "postgres"):
        return PostgresBackend(url)
    raise ValueError(
        f"unsupported database URL {redact(url)!r}: expected sqlite:///ABSOLUTE/PATH or "
        "postgresql://USER:PASSWORD@HOST:PORT/DATABASE"
    )


class FeedbackStore:
    """Generation records and feedback in one database. Build it with `open_store(url)`."""

    def __init__(self, backend: Backend):
        self._backend = backend
        self._lock = threading.Lock()
        # Why the last write found no room (StoreFullError's message); None once a write commits.
        self.out_of_space: str | None = None
        self._conn: Any = backend.connect()
        try:
            with self._transaction() as tx:
                migrate(tx, backend)
        except backend.errors as err:
            self.close()
            raise StoreError(f"cannot open {backend.description}: {one_line(err)}") from err
        except BaseException:
            self.close()
            raise

    def record_generations(self, records: list[GenerationRecord]) -> None:
        """Insert `records` in one transaction; an id already recorded is left as it is."""
        rows = [
            (
                r.id,
                r.created_at,
                _text(r.model),
                json.dumps(_text(r.params)),
                _text(r.instruction),
                _text(r.input),
                _text(r.prompt),
                _text(r.response),
                r.finish_reason,
                r.prompt_tokens,
                r.completion_tokens,
                r.latency_s,
                json.dumps(_text(r.filter_verdicts)),
                r.source,
                _text(r.session_id),
                r.purged_at,
            )
            for r in records
        ]
        if not rows:
            return
        marks = ", ".join("?" * len(GENERATION_COLUMNS))
        with self._transaction() as tx:
            tx.executemany(
                f"INSERT INTO generations ({', '.join(GENERATION_COLUMNS)}) VALUES ({marks}) "
                "ON CONFLICT (id) DO NOTHING",
                rows,
            )

    def generation_exists(self, ids: list[str]) -> set[str]:
        """The subset of `ids` that the store has recorded."""
        with self._transaction(write=False) as tx:
            return _existing_ids(tx, ids)

    def generations_by_id(self, ids: list[str]) -> dict[str, dict]:
        """The recorded generations among `ids`, by id: each a dict of the generations table's
        columns (id, created_at, model, params, instruction, input, prompt, response, ...)."""
        found: dict[str, dict] = {}
        with self._transaction(write=False) as tx:
            for chunk in _chunks(list(dict.fromkeys(ids))):
                for row in tx.rows(
                    f"SELECT {', '.join(GENERATION_COLUMNS)} FROM generations "
                    f"WHERE id IN ({', '.join('?' * len(chunk))})",
                    chunk,
                ):
                    generation = dict(zip(GENERATION_COLUMNS, row, strict=True))
                    generation["params"] = _json_value(generation["params"])
                    generation["filter_verdicts"] = _json_value(generation["filter_verdicts"])
                    found[generation["id"]] = generation
        return found

    def save_rating(self, fb: RatingFeedback) -> tuple[int, bool]:
        """Store a rating; returns (row id, created). With a session id, a later rating of the
        same generation replaces the earlier one (created is False); without, every call adds."""
        now = time.time()
        details = (fb.rating, _text(fb.comment), _text(fb.flag), _text(fb.preferred_response))
        with self._transaction() as tx:
            _require_shown(tx, [fb.generation_id], fb.session_id)
            inserted = tx.one(
                "INSERT INTO ratings (rating, comment, flag, preferred_response, generation_id, "
                "session_id, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (generation_id, session_id) WHERE session_id IS NOT NULL "
                "DO NOTHING RETURNING id",
                (*details, fb.generation_id, _text(fb.session_id), now, now),
            )
            if inserted is not None:
                return inserted[0], True
            updated = tx.one(
                "UPDATE ratings SET rating = ?, comment = ?, flag = ?, preferred_response = ?, "
                "updated_at = ? WHERE generation_id = ? AND session_id = ? RETURNING id",
                (*details, now, fb.generation_id, _text(fb.session_id)),
            )
            assert updated is not None  # the insert met the row it updates
            return updated[0], False

    def save_comparison(self, fb: ComparisonFeedback) -> tuple[int, bool]:
        """Store a comparison; returns (row id, created). With a session id, a later judgement
        of the same pair, in either order, replaces the earlier one."""
        now = time.time()
        first, second = sorted(fb.generation_ids)
        with self._transaction() as tx:
            _require_shown(tx, [first, second], fb.session_id)
            inserted = tx.one(
                "INSERT INTO comparisons (winner, voter, generation_a, generation_b, session_id, "
                "created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (generation_a, generation_b, session_id) "
                "WHERE session_id IS NOT NULL DO NOTHING RETURNING id",
                (fb.winner, fb.voter, first, second, _text(fb.session_id), now, now),
            )
            if inserted is not None:
                return inserted[0], True
            updated = tx.one(
                "UPDATE comparisons SET winner = ?, voter = ?, updated_at = ? "
                "WHERE generation_a = ? AND generation_b = ? AND session_id = ? RETURNING id",
                (fb.winner, fb.voter, now, first, second, _text(fb.session_id)),
            )
            assert updated is not None  # the insert met the row it updates
            return updated[0], False

    def list_comparisons(
        self, after: int = 0, limit: int = COMPARISON_PAGE_LIMIT, include_excluded: bool = False
    ) -> list[dict]:
        """Up to `limit` comparisons with a row id above `after`, by row id: each a dict with
        id, generation_ids (sorted), winner, voter, session_id, created_at, updated_at. A vote
        changed later keeps its id, so paging on with the last id seen reads every vote once.
        Votes of excluded sessions are left out (`excluded_counts()` says how many), unless
        `include_excluded`: then every vote is listed, each with `excluded` true or false."""
        if not 1 <= limit <= COMPARISON_PAGE_LIMIT:
            raise ValueError(f"limit must be 1 to {COMPARISON_PAGE_LIMIT}, got {limit}")
        where = "c.id > ?" if include_excluded else f"c.id > ? AND NOT {_excluded('c')}"
        with self._transaction(write=False) as tx:
            rows = tx.rows(
                "SELECT c.id, c.generation_a, c.generation_b, c.winner, c.voter, c.session_id, "
                f"c.created_at, c.updated_at, CASE WHEN {_excluded('c')} THEN 1 ELSE 0 END "
                f"FROM comparisons c WHERE {where} ORDER BY c.id LIMIT ?",
                (after, limit),
            )
        listed = []
        for row_id, first, second, winner, voter, session_id, created, updated, excluded in rows:
            vote = {
                "id": row_id,
                "generation_ids": [first, second],
                "winner": winner,
                "voter": voter,
                "session_id": session_id,
                "created_at": created,
                "updated_at": updated,
            }
            if include_excluded:
                vote["excluded"] = bool(excluded)
            listed.append(vote)
        return listed

    def summary(self) -> dict:
        """Ratings and flags per model (models with at least one rating), and pairwise results
        per pair of models (model_a < model_b; a model compared with itself counts too): people's
        votes under `pairwise`, an automatic judge's under `pairwise_machine`. Excluded sessions'
        ratings and votes are left out of all of them and counted under `excluded`
        (`excluded_counts()`)."""
        with self._transaction(write=False) as tx:
            rating_counts = tx.rows(
                "SELECT g.model, r.rating, r.flag, COUNT(*) FROM ratings r "
                "JOIN generations g ON g.id = r.generation_id "
                f"WHERE NOT {_excluded('r')} "
                "GROUP BY g.model, r.rating, r.flag"
            )
            comparison_counts = tx.rows(
                "SELECT c.voter, ga.model, gb.model, "
                "SUM(CASE WHEN c.winner = c.generation_a THEN 1 ELSE 0 END), "
                "SUM(CASE WHEN c.winner = c.generation_b THEN 1 ELSE 0 END), "
                "SUM(CASE WHEN c.winner = 'tie' THEN 1 ELSE 0 END), "
                "SUM(CASE WHEN c.winner = 'both_bad' THEN 1 ELSE 0 END) "
                "FROM comparisons c "
                "JOIN generations ga ON ga.id = c.generation_a "
                "JOIN generations gb ON gb.id = c.generation_b "
                f"WHERE NOT {_excluded('c')} "
                "GROUP BY c.voter, ga.model, gb.model"
            )
            excluded = _excluded_counts(tx)
        models: dict[str, dict] = {}
        for model, rating, flag, count in rating_counts:
            entry = models.setdefault(model, {"up": 0, "down": 0, "flags": {}})
            entry[rating] += int(count)
            if flag is not None:
                entry["flags"][flag] = entry["flags"].get(flag, 0) + int(count)
        pairs: dict[tuple[str, str, str], dict] = {}
        for voter, model_1, model_2, wins_1, wins_2, ties, both_bad in comparison_counts:
            model_a, model_b = sorted((model_1, model_2))
            entry = pairs.setdefault(
                (voter, model_a, model_b),
                {
                    "model_a": model_a,
                    "model_b": model_b,
                    "wins_a": 0,
                    "wins_b": 0,
                    "ties": 0,
                    "both_bad": 0,
                },
            )
            if model_1 > model_2:
                wins_1, wins_2 = wins_2, wins_1
            entry["wins_a"] += int(wins_1)
            entry["wins_b"] += int(wins_2)
            entry["ties"] += int(ties)
            entry["both_bad"] += int(both_bad)
        return {
            "models": dict(sorted(models.items())),
            "pairwise": [pairs[key] for key in sorted(pairs) if key[0] == "human"],
            "pairwise_machine": [pairs[key] for key in sorted(pairs) if key[0] == "machine"],
            "excluded": excluded,
        }

    def excluded_counts(self) -> dict[str, int]:
        """What exclusion leaves out, now: {"sessions": excluded sessions, "ratings": their
        ratings, "comparisons": their pairwise votes (people's and machines')}."""
        with self._transaction(write=False) as tx:
            return _excluded_counts(tx)

    def battles(
        self, voter: str | None = None, excluded: Counter | None = None
    ) -> list[tuple[str, str, str, str]]:
        """Every pairwise vote, by row id, as (model of a, model of b, outcome, voter): outcome
        "a" or "b" (whose answer won), "tie" or "both_bad"; only `voter`'s ("human" or
        "machine") when given. What the leaderboard (`compute_leaderboard`) is computed from.
        A vote of an excluded session is left out and adds one to `excluded[its voter]`."""
        where, params = ("WHERE c.voter = ? ", (voter,)) if voter is not None else ("", ())
        with self._transaction(write=False) as tx:
            rows = tx.rows(
                "SELECT ga.model, gb.model, CASE WHEN c.winner = c.generation_a THEN 'a' "
                "WHEN c.winner = c.generation_b THEN 'b' ELSE c.winner END, c.voter, "
                f"CASE WHEN {_excluded('c')} THEN 1 ELSE 0 END "
                "FROM comparisons c "
                "JOIN generations ga ON ga.id = c.generation_a "
                "JOIN generations gb ON gb.id = c.generation_b " + where + "ORDER BY c.id",
                params,
            )
        battles = []
        for model_a, model_b, outcome, who, left_out in rows:
            if left_out:
                if excluded is not None:
                    excluded[who] += 1
                continue
            battles.append((model_a, model_b, outcome, who))
        return battles

    def export_rows(
        self, include_unrated: bool = False, skipped: Counter | None = None
    ) -> Iterator[dict]:
        """Generations joined with their ratings, oldest first: one dict per (generation,
        rating), or per generation with rating None for unrated ones when `include_unrated`.

        Keys: instruction, input, output (the response), then rating, comment, flag,
        preferred_response, generation_id, model, source, created_at, finish_reason, prompt,
        params, filter_verdicts, prompt_tokens, completion_tokens, latency_s. Raw-prompt generations
        (instruction None) are always skipped: they cannot become Alpaca records. Ratings of
        excluded sessions are left out, each adding one to `skipped["excluded_rating"]` (a
        generation left with none is unrated). Generations purged by retention are skipped too
        (their text is gone); each one that would have been written (rated, or any with
        `include_unrated`) adds one to `skipped["purged"]`. Rows are
        read in pages, each in its own transaction, so no lock is held while the caller works;
        generations recorded during an export may or may not be included."""
        after: tuple[float, str] | None = None
        while True:
            with self._transaction(write=False) as tx:
                generations, ratings = _export_page(tx, after)
            for generation in generations:
                rated = ratings.get(generation["id"], [])
                feedback = [tuple(details) for excluded, *details in rated if not excluded]
                if skipped is not None and len(feedback) < len(rated):
                    skipped["excluded_rating"] += len(rated) - len(feedback)
                if generation["purged_at"] is not None:
                    if skipped is not None and (include_unrated or feedback):
                        skipped["purged"] += 1
                    continue
                row = {
                    "instruction": generation["instruction"],
                    "input": generation["input"],
                    "output": generation["response"],
                }
                details = {
                    "generation_id": generation["id"],
                    "model": generation["model"],
                    "source": generation["source"],
                    "created_at": generation["created_at"],
                    "finish_reason": generation["finish_reason"],
                    "prompt": generation["prompt"],
                    "params": _json_value(generation["params"]),
                    "filter_verdicts": _json_value(generation["filter_verdicts"]),
                    "prompt_tokens": generation["prompt_tokens"],
                    "completion_tokens": generation["completion_tokens"],
                    "latency_s": generation["latency_s"],
                }
                if not feedback and include_unrated:
                    feedback = [(None, None, None, None)]
                for rating, comment, flag, preferred_response in feedback:
                    yield {
                        **row,
                        "rating": rating,
                        "comment": comment,
                        "flag": flag,
                        "preferred_response": preferred_response,
                        **details,
                    }
            if len(generations) < EXPORT_PAGE_SIZE:
                return
            after = (generations[-1]["created_at"], generations[-1]["id"])

    def purge_generations(self, before: float) -> int:
        """Empty the text of every generation recorded before `before` (unix seconds) and not
        purged yet: instruction, input, prompt and response become "" (a raw prompt's instruction
        stays None), filter verdicts [], and `purged_at` is set to now; how many were purged.

        Model, sampling parameters, token counts, latency and the generation's ratings and votes
        stay, so `summary()` and `battles()` count what they counted. Purged in batches of
        PURGE_BATCH_SIZE, each its own transaction, so a large log never holds the database
        for long; a purge that fails part-way leaves whole batches done and the rest to the next
        call. Purging again purges nothing more."""
        now = time.time()
        purged = 0
        try:
            while True:
                with self._transaction() as tx:
                    ids = [
                        row[0]
                        for row in tx.rows(
                            "SELECT id FROM generations WHERE created_at < ? AND purged_at IS NULL "
                            "ORDER BY created_at, id LIMIT ?",
                            (before, PURGE_BATCH_SIZE),
                        )
                    ]
                    for chunk in _chunks(ids):
                        # `purged_at IS NULL` again: another process purging at the same time
                        # (a PostgreSQL replica) may have purged some of these already.
                        cursor = tx.execute(
                            "UPDATE generations SET instruction = CASE WHEN instruction IS NULL "
                            "THEN NULL ELSE '' END, input = '', prompt = '', response = '', "
                            "filter_verdicts = '[]', purged_at = ? "
                            f"WHERE id IN ({', '.join('?' * len(chunk))}) AND purged_at IS NULL",
                            (now, *chunk),
                        )
                        purged += cursor.rowcount
                if len(ids) < PURGE_BATCH_SIZE:
                    return purged
        except self._backend.errors as err:
            raise StoreError(
                f"cannot purge generations in {self._backend.description}: {one_line(err)}"
            ) from err

    def delete_session(self, session_id: str) -> dict[str, int]:
        """Remove everything `session_id` stored, in one transaction: its ratings (with their
        comments, flags and better answers), its pairwise votes, and the generations asked under
        it (its prompts and the answers it was shown); how many of each were removed. Answers
        asked without a session are the server's log, not the session's: they stay."""
        if not session_id.strip():
            raise ValueError("a session id is needed: it must not be empty")
        with self._writing() as tx:
            removed = _session_votes(tx, session_id)
            for table in ("ratings", "comparisons"):
                tx.execute(f"DELETE FROM {table} WHERE session_id = ?", (session_id,))
            # Only that session may give feedback on them, so no other row refers to them; the
            # NOT IN guards the rule's past (a store written before it).
            row = tx.one(
                "SELECT COUNT(*) FROM generations WHERE session_id = ?" + _UNREFERENCED,
                (session_id,),
            )
            assert row is not None  # an aggregate query returns one row
            tx.execute(
                "DELETE FROM generations WHERE session_id = ?" + _UNREFERENCED, (session_id,)
            )
            removed["generations"] = int(row[0])
        return removed

    def exclude_session(
        self, session_id: str, reason: str | None = None, by: str | None = None
    ) -> tuple[bool, dict[str, int]]:
        """Leave `session_id`'s votes out of every summary, leaderboard, report and training
        export from now on (they stay stored: `include_session` counts them again). Returns
        (newly excluded, its ratings and comparisons now left out)."""
        if not session_id.strip():
            raise ValueError("a session id is needed: it must not be empty")
        with self._writing() as tx:
            inserted = tx.one(
                "INSERT INTO excluded_sessions (session_id, reason, excluded_by, created_at) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (session_id) DO NOTHING RETURNING id",
                (_text(session_id), _text(reason), _text(by), time.time()),
            )
            return inserted is not None, _session_votes(tx, session_id)

    def include_session(self, session_id: str) -> bool:
        """Count `session_id`'s votes again; whether it was excluded."""
        with self._writing() as tx:
            row = tx.one(
                "DELETE FROM excluded_sessions WHERE session_id = ? RETURNING id", (session_id,)
            )
            return row is not None

    def session_votes(self, session_id: str) -> dict[str, int]:
        """How many ratings and comparisons `session_id` stored."""
        with self._transaction(write=False) as tx:
            return _session_votes(tx, session_id)

    def excluded_sessions(self) -> list[dict]:
        """Every excluded session, oldest exclusion first: session_id, reason, excluded_by,
        created_at, and its ratings and comparisons (left out)."""
        with self._transaction(write=False) as tx:
            rows = tx.rows(
                "SELECT session_id, reason, excluded_by, created_at FROM excluded_sessions "
                "ORDER BY id"
            )
            return [
                {
                    "session_id": session_id,
                    "reason": reason,
                    "excluded_by": by,
                    "created_at": created_at,
                    **_session_votes(tx, session_id),
                }
                for session_id, reason, by, created_at in rows
            ]

    def check_writable(self) -> None:
        """Insert a generation and delete it again, in one transaction: a real write of the
        generations table (SQLite appends it to its journal, PostgreSQL runs the table's
        triggers), which leaves nothing behind. StoreFullError while the database has no room;
        what `watch_store` probes with to notice that space is back."""
        with self._transaction() as tx:
            tx.execute(
                "INSERT INTO generations (id, created_at, model, params, input, prompt, response, "
                "finish_reason, prompt_tokens, completion_tokens, latency_s, filter_verdicts) "
                "VALUES (?, ?, '', '{}', '', '', '', 'probe', 0, 0, 0, '[]')",
                (PROBE_GENERATION_ID, time.time()),
            )
            tx.execute("DELETE FROM generations WHERE id = ?", (PROBE_GENERATION_ID,))

    @property
    def backend(self) -> Backend:
        """The database this store is kept in."""
        return self._backend

    def table_rows(self, tables: dict[str, tuple[str, ...]]) -> dict[str, list[tuple]]:
        """Every row of each table, its columns in the order given, by id: what a backup
        holds (alpaca_serve/feedback/backup.py). Read in one transaction: one moment's rows."""
        try:
            with self._transaction(write=False) as tx:
                return {
                    table: tx.rows(f"SELECT {', '.join(columns)} FROM {table} ORDER BY id")
                    for table, columns in tables.items()
                }
        except self._backend.errors as err:
            raise StoreError(f"cannot read {self._backend.description}: {one_line(err)}") from err

    def insert_table_rows(
        self, tables: dict[str, tuple[str, ...]], rows: dict[str, list[tuple]]
    ) -> dict[str, int]:
        """Write `rows` (as `table_rows` reads them, ids included) into this store, which must
        hold no row of any of the tables, in one transaction; the rows written per table."""
        try:
            self._insert_table_rows(tables, rows)
        except self._backend.errors as err:
            raise StoreError(
                f"cannot write to {self._backend.description}: {one_line(err)}"
            ) from err
        return {table: len(rows[table]) for table in tables}

    def _insert_table_rows(
        self, tables: dict[str, tuple[str, ...]], rows: dict[str, list[tuple]]
    ) -> None:
        with self._transaction() as tx:
            held = {
                table: tx.one(f"SELECT COUNT(*) FROM {table}")[0]  # type: ignore[index]
                for table in tables
            }
            if any(held.values()):
                found = ", ".join(f"{count} {table}" for table, count in held.items() if count)
                raise StoreError(
                    f"{self._backend.description} is not empty ({found}): restore only into an "
                    "empty store, so that nothing already stored is mixed with or lost to the "
                    "backup"
                )
            for table, columns in tables.items():
                if rows[table]:
                    marks = ", ".join("?" * len(columns))
                    tx.executemany(
                        f"INSERT INTO {table} ({', '.join(columns)})"
                        f"{self._backend.explicit_ids} VALUES ({marks})",
                        rows[table],
                    )
                if "id" in columns and table != "generations":
                    self._backend.continue_ids_after_insert(tx, table)

    def close(self) -> None:
        """Close the connection; later calls raise StoreError. Closing twice is harmless."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> FeedbackStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @contextmanager
    def _writing(self) -> Iterator[Transaction]:
        """A write transaction whose database errors become a one-line StoreError."""
        try:
            with self._transaction() as tx:
                yield tx
        except self._backend.errors as err:
            raise StoreError(
                f"cannot write to {self._backend.description}: {one_line(err)}"
            ) from err

    @contextmanager
    def _transaction(self, write: bool = True) -> Iterator[Transaction]:
        with self._lock:
            if self._conn is None:
                raise StoreError("the feedback store is closed")
            if self._backend.is_broken(self._conn):
                # The server restarted or the network dropped: reconnect once, here. If that
                # fails the old connection stays, so the next call tries again.
                fresh = self._backend.connect()
                self._conn.close()
                self._conn = fresh
            # The driver's errors, and the operating system's (a full disk may say ENOSPC).
            errors: tuple[type[BaseException], ...] = (*self._backend.errors, OSError)
            try:
                with self._backend.transaction(self._conn, write) as cursor:
                    yield Transaction(cursor, self._backend.placeholder)
            except errors as err:
                if not self._backend.is_full(err):
                    raise
                full = StoreFullError(
                    f"{self._backend.description} is out of space: {one_line(err)}"
                )
                if self.out_of_space is None:
                    log.warning("feedback store: %s; writes are refused until space is freed", full)
                self.out_of_space = str(full)
                raise full from err
            if write and self.out_of_space is not None:
                log.info("feedback store: writes work again")
                self.out_of_space = None


def _export_page(
    tx: Transaction, after: tuple[float, str] | None
) -> tuple[list[dict], dict[str, list[tuple]]]:
    """One page of instruction generations after `after` (created_at, id), and their ratings:
    (excluded 1 or 0, rating, comment, flag, preferred_response) by generation id."""
    where = "instruction IS NOT NULL"
    params: tuple[float | str, ...] = ()
    if after is not None:
        where += " AND (created_at > ? OR (created_at = ? AND id > ?))"
        params = (after[0], after[0], after[1])
    generations = [
        dict(zip(GENERATION_COLUMNS, row, strict=True))
        for row in tx.rows(
            f"SELECT {', '.join(GENERATION_COLUMNS)} FROM generations WHERE {where} "
            "ORDER BY created_at, id LIMIT ?",
            (*params, EXPORT_PAGE_SIZE),
        )
    ]
    ratings: dict[str, list[tuple]] = defaultdict(list)
    for chunk in _chunks([g["id"] for g in generations]):
        for generation_id, *feedback in tx.rows(
            f"SELECT r.generation_id, CASE WHEN {_excluded('r')} THEN 1 ELSE 0 END, r.rating, "
            "r.comment, r.flag, r.preferred_response FROM ratings r "
            f"WHERE r.generation_id IN ({', '.join('?' * len(chunk))}) ORDER BY r.id",
            chunk,
        ):
            ratings[generation_id].append(tuple(feedback))
    return generations, ratings


# Generations no rating or comparison names.
_UNREFERENCED = (
    " AND id NOT IN (SELECT generation_id FROM ratings)"
    " AND id NOT IN (SELECT generation_a FROM comparisons)"
    " AND id NOT IN (SELECT generation_b FROM comparisons)"
)


def _excluded_counts(tx: Transaction) -> dict[str, int]:
    """How many sessions are excluded, and how many ratings and comparisons they hold."""
    row = tx.one("SELECT COUNT(*) FROM excluded_sessions")
    assert row is not None  # an aggregate query returns one row
    counts = {"sessions": int(row[0]), "ratings": 0, "comparisons": 0}
    if counts["sessions"]:  # none excluded, the usual case: no table to scan
        for table in ("ratings", "comparisons"):
            row = tx.one(f"SELECT COUNT(*) FROM {table} t WHERE {_excluded('t')}")
            assert row is not None  # an aggregate query returns one row
            counts[table] = int(row[0])
    return counts


def _session_votes(tx: Transaction, session_id: str) -> dict[str, int]:
    """How many ratings and comparisons `session_id` stored."""
    counts = {}
    for table in ("ratings", "comparisons"):
        row = tx.one(f"SELECT COUNT(*) FROM {table} WHERE session_id = ?", (session_id,))
        assert row is not None  # an aggregate query returns one row
        counts[table] = int(row[0])
    return counts


def _existing_ids(tx: Transaction, ids: Iterable[str]) -> set[str]:
    found: set[str] = set()
    for chunk in _chunks(list(dict.fromkeys(ids))):
        marks = ", ".join("?" * len(chunk))
        found.update(
            row[0] for row in tx.rows(f"SELECT id FROM generations WHERE id IN ({marks})", chunk)
        )
    return found


def _require_shown(tx: Transaction, ids: list[str], session_id: str | None) -> None:
    """Feedback by `session_id` may name only recorded generations (UnknownGenerationError),
    and of those asked under a session (X-Session-Id) only that session's (NotShownError).
    Answers asked without a session and imported ones take feedback from any session."""
    marks = ", ".join("?" * len(ids))
    shown_to = dict(
        tx.rows(
            f"SELECT id, CASE WHEN source = 'served' THEN session_id END FROM generations "
            f"WHERE id IN ({marks})",
            ids,
        )
    )
    for generation_id in ids:
        if generation_id not in shown_to:
            raise UnknownGenerationError(f"no generation recorded with id {generation_id!r}")
        owner = shown_to[generation_id]
        if owner is not None and owner != _text(session_id):
            raise NotShownError(
                f"generation {generation_id!r} was shown to another feedback session: only the "
                "session it was asked under (X-Session-Id) may rate it or vote on it"
            )


def _chunks(items: list[str]) -> Iterator[list[str]]:
    for start in range(0, len(items), ID_CHUNK):
        yield items[start : start + ID_CHUNK]


def _text(value: Any) -> Any:
    """`value` with NUL characters replaced (PostgreSQL rejects them), through dicts and lists."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, dict):
        return {_text(k): _text(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_text(v) for v in value]
    return value


def _json_value(value: Any) -> Any:
    """A JSON column as Python: SQLite returns the text, PostgreSQL (jsonb) the parsed value."""
    return json.loads(value) if isinstance(value, str) else value
