"""Backups of the feedback store: `alpaca-export --backup` copies a SQLite store as of one moment
while the server writes to it, `--restore` puts the copy back into an empty store (SQLite or
PostgreSQL) and every record acknowledged before the backup is there, with its id; a store that
is not empty is refused and left as it was; a PostgreSQL store goes through pg_dump and
pg_restore, as docs/operations.md says. And `--delete-session` removes what one session stored,
and only that."""

from __future__ import annotations

import sqlite3
import subprocess
import threading
import time

import pytest

from alpaca_serve.feedback import open_store
from alpaca_serve.feedback.export import main
from alpaca_serve.feedback.records import GenerationRecord, RatingFeedback
from tests.server.conftest import postgres_base_url
from tests.support import start_server


def export(capsys, *args: str) -> tuple[int, str]:
    status = main(list(args))
    return status, capsys.readouterr().err.strip()


class Load:
    """A client that keeps asking and rating until stopped, noting what the server acknowledged
    (each generation id and each rating's, in order)."""

    def __init__(self, server):
        self.server, self.acknowledged, self.errors = server, [], []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            answer = self.server.client.post(
                "/generate", json={"instruction": f"Name thing {n}.", "max_new_tokens": 3}
            )
            if answer.status_code != 200:
                self.errors.append(answer.text)
                continue
            generation_id = answer.json()["id"]
            self.acknowledged.append(("generation", generation_id))
            rating = self.server.client.post(
                "/feedback",
                json={"generation_id": generation_id, "rating": "up", "session_id": f"s{n}"},
            )
            if rating.status_code == 201:
                self.acknowledged.append(("rating", generation_id))
            else:
                self.errors.append(rating.text)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


@pytest.fixture
def served(request, tmp_path):
    server = start_server(request, "scripted", {}, tmp_path / "server")
    try:
        yield server
    finally:
        server.stop()


def test_a_backup_under_load_restores_every_acknowledged_record(
    served, tmp_path, capsys, database_url
):
    backup = tmp_path / "backups" / "alpaca.sqlite3"
    with Load(served) as load:
        while len(load.acknowledged) < 40:
            time.sleep(0.05)
        before = list(load.acknowledged)  # acknowledged before the backup started
        status, line = export(capsys, "--data-dir", str(served.data_dir), "--backup", str(backup))
        during = len(load.acknowledged)
    assert status == 0, line
    assert not load.errors
    assert during > len(before), "the server was not writing while the backup ran"
    assert line.startswith("alpaca-export: backed up ") and line.endswith(f" to {backup}")
    assert backup.stat().st_mode & 0o077 == 0  # owner-only, as the store
    copy = sqlite3.connect(backup)
    assert copy.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    copy.close()

    status, line = export(capsys, "--database", database_url, "--restore", str(backup))

    assert status == 0, line
    assert line.startswith("alpaca-export: restored ") and str(backup) in line
    with open_store(database_url) as restored:
        generation_ids = [i for kind, i in before if kind == "generation"]
        found = restored.generations_by_id(generation_ids)
        assert set(found) == set(generation_ids)
        rated = {row["generation_id"] for row in restored.export_rows() if row["rating"] == "up"}
        assert {i for kind, i in before if kind == "rating"} <= rated
        # New feedback after a restore takes ids above the restored ones.
        new_id, created = restored.save_rating(RatingFeedback(generation_ids[0], "down", "new"))
        assert created
        with open_store(f"sqlite:///{backup}") as original:
            highest = max(row[0] for row in original.table_rows({"ratings": ("id",)})["ratings"])
        assert new_id > highest


def test_a_store_that_is_not_empty_is_refused_and_left_as_it_was(tmp_path, capsys, database_url):
    source, backup = f"sqlite:///{tmp_path / 'a' / 'alpaca.sqlite3'}", tmp_path / "b.sqlite3"
    record = GenerationRecord(
        *("gen-1", 1.0, "m", {}, "Say hi.", "", "prompt", "Hi.", "stop", 3, 1, 0.1, [])
    )
    with open_store(source) as store:
        store.record_generations([record])
    assert export(capsys, "--database", source, "--backup", str(backup))[0] == 0
    with open_store(database_url) as target:
        target.record_generations([GenerationRecord(**{**record.__dict__, "id": "gen-0"})])

    status, line = export(capsys, "--database", database_url, "--restore", str(backup))

    assert status == 2
    assert line.startswith("alpaca-export: error: ") and "is not empty (1 generations)" in line
    with open_store(database_url) as target:
        assert set(target.generations_by_id(["gen-0", "gen-1"])) == {"gen-0"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--restore", "/no/such/backup.sqlite3"], "no backup file at /no/such/backup.sqlite3"),
        (["--backup", "b.sqlite3", "--format", "sft"], "--format is for exports, not --backup"),
    ],
)
def test_a_backup_or_restore_that_cannot_work_is_one_error_line(tmp_path, capsys, args, message):
    status, line = export(capsys, "--data-dir", str(tmp_path), *args)

    assert status == 2 and line.startswith("alpaca-export: error: ") and message in line
    assert len(line.splitlines()) == 1


def test_a_not_a_backup_file_is_refused_by_name(tmp_path, capsys):
    bogus = tmp_path / "notes.txt"
    bogus.write_text("not a database")

    status, line = export(capsys, "--data-dir", str(tmp_path / "d"), "--restore", str(bogus))

    assert status == 2
    assert line == f"alpaca-export: error: {bogus} is not a SQLite backup of a feedback store"


def test_a_postgresql_store_is_backed_up_with_pg_dump_and_restored_with_pg_restore(
    tmp_path, capsys, postgres_url
):
    status, line = export(capsys, "--database", postgres_url, "--backup", str(tmp_path / "x"))
    assert status == 2 and "backed up with pg_dump" in line
    record = GenerationRecord(
        *("gen-1", 1.0, "m", {"t": 0}, "Say hi.", "", "prompt", "Hi.", "stop", 3, 1, 0.1, [])
    )
    with open_store(postgres_url) as store:
        store.record_generations([record])
        store.save_rating(RatingFeedback("gen-1", "up", "alice"))
    base = postgres_base_url()
    schema = postgres_url.rsplit("search_path%3D", 1)[1]
    dump = tmp_path / "alpaca.pgdump"

    # As docs/operations.md gives them: dump (custom format), lose the data, restore.
    subprocess.run(
        ["pg_dump", "--format=custom", f"--schema={schema}", f"--file={dump}", base], check=True
    )
    import psycopg

    with psycopg.connect(base, autocommit=True) as admin:
        admin.execute(f"DROP SCHEMA {schema} CASCADE")
    subprocess.run(["pg_restore", "--no-owner", f"--dbname={base}", str(dump)], check=True)

    with open_store(postgres_url) as store:
        assert store.generations_by_id(["gen-1"])["gen-1"]["response"] == "Hi."
        assert [row["rating"] for row in store.export_rows()] == ["up"]


def test_deleting_a_session_removes_its_ratings_votes_and_prompts_and_nothing_else(
    tmp_path, capsys, database_url
):
    from alpaca_serve.feedback.records import ComparisonFeedback

    def answer(name: str, session: str | None = None) -> GenerationRecord:
        fields = (name, 1.0, "m", {}, "Say hi.", "", "p", f"Hi {name}.", "stop", 3, 1, 0.1, [])
        return GenerationRecord(*fields, session_id=session)

    records = [answer(f"gen-{n}") for n in range(3)]
    records += [answer("asked-by-alice", "alice"), answer("asked-by-bob", "bob")]
    with open_store(database_url) as store:
        store.record_generations(records)
        for session in ("alice", "bob"):
            store.save_rating(RatingFeedback("gen-0", "up", session, comment=f"{session} here"))
            store.save_rating(RatingFeedback("gen-1", "down", session, flag="incorrect"))
            store.save_comparison(ComparisonFeedback(("gen-0", "gen-1"), "gen-0", session))
            store.save_rating(RatingFeedback(f"asked-by-{session}", "up", session))
        store.save_comparison(ComparisonFeedback(("gen-1", "gen-2"), "tie", "alice", "human"))

    status, line = export(capsys, "--database", database_url, "--delete-session", "alice")

    assert status == 0, line
    assert line.startswith(
        "alpaca-export: deleted 3 ratings, 2 comparisons, 1 generations of session 'alice' "
    )
    with open_store(database_url) as store:
        rows = list(store.export_rows())
        assert {row["comment"] for row in rows if row["comment"]} == {"bob here"}
        assert len(rows) == 3  # bob's three ratings
        assert [vote["session_id"] for vote in store.list_comparisons()] == ["bob"]
        kept = store.generations_by_id([record.id for record in records])
        assert sorted(kept) == ["asked-by-bob", "gen-0", "gen-1", "gen-2"]  # alice's prompt: gone
    status, line = export(capsys, "--database", database_url, "--delete-session", "alice")
    assert status == 0 and "deleted 0 ratings, 0 comparisons, 0 generations" in line
    status, line = export(capsys, "--database", database_url, "--delete-session", " ")
    assert (
        status == 2 and line == "alpaca-export: error: a session id is needed: it must not be empty"
    )
