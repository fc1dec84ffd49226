"""A full disk loses nothing acknowledged: while the feedback store has no room to write, feedback
is refused with 507 saying so, answers go on (their log entries wait in memory, bounded, the
dropped ones counted), /ready says degraded; once space is back everything works again without a
restart, the waiting log is written, and everything stored before is intact.

On SQLite the disk is really full: the server's data folder is a 4 MiB tmpfs, filled with a
ballast file until a write fails with ENOSPC (the tests run as root, in CI too). A PostgreSQL
server cannot be filled on demand, so triggers on its tables raise its real error, SQLSTATE 53100
disk_full, as PostgreSQL does when it cannot extend a file.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from alpaca_serve.feedback import default_database_url, open_store
from tests.server.conftest import postgres_schema_url
from tests.support import read_metrics, start_server, wait_for


class SmallDisk:
    """The server's data folder on a tmpfs of 4 MiB; `fill` takes its last free byte."""

    def __init__(self, folder: Path):
        self.mount_point = folder / "disk"
        self.mount_point.mkdir()
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(self.mount_point)], check=True
        )
        self.data_dir = self.mount_point / "data"
        self.env = {"ALPACA_DATA_DIR": str(self.data_dir)}
        self.url = default_database_url(self.data_dir)
        # How the server's log names the database and the cause (clients get neither).
        self.named_in_log = f"SQLite database {self.data_dir / 'alpaca.sqlite3'} is out of space: "
        self.cause = "database or disk is full"
        self.ballast = self.mount_point / "ballast"

    def fill(self) -> None:
        fd = os.open(self.ballast, os.O_WRONLY | os.O_CREAT)
        try:
            while True:
                os.write(fd, b"\0" * 4096)
        except OSError as err:
            assert err.errno == errno.ENOSPC
        finally:
            os.close(fd)
        assert os.statvfs(self.mount_point).f_bfree == 0

    def free(self) -> None:
        self.ballast.unlink()

    def check_intact(self) -> None:
        with contextlib.closing(sqlite3.connect(self.url.removeprefix("sqlite://"))) as db:
            assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]

    def close(self) -> None:
        subprocess.run(["umount", str(self.mount_point)], check=True)


# What PostgreSQL says when it cannot extend a table's file, raised before every write.
REFUSE_FOR_LACK_OF_SPACE = """
CREATE FUNCTION refuse_for_lack_of_space() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'could not extend file "base/16384/16402": No space left on device'
        USING ERRCODE = 'disk_full';
END $$
"""
TABLES = ("generations", "ratings", "comparisons")


class FullDatabase:
    """A PostgreSQL schema whose tables refuse every write with disk_full while `fill`ed."""

    def __init__(self, url: str):
        import psycopg

        self.url = url
        self.env = {"ALPACA_DATABASE_URL": url}
        self.named_in_log = "PostgreSQL database postgresql://"
        self.cause = "is out of space: could not extend file"
        self._admin = psycopg.connect(url, autocommit=True)
        self._admin.execute(REFUSE_FOR_LACK_OF_SPACE)

    def fill(self) -> None:
        for table in TABLES:
            self._admin.execute(
                f"CREATE TRIGGER disk_full BEFORE INSERT OR UPDATE ON {table} "
                "FOR EACH ROW EXECUTE FUNCTION refuse_for_lack_of_space()"
            )

    def free(self) -> None:
        for table in TABLES:
            self._admin.execute(f"DROP TRIGGER disk_full ON {table}")

    def check_intact(self) -> None:
        """PostgreSQL has no integrity_check: the rows read back are the check."""

    def close(self) -> None:
        self._admin.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def disk(request, tmp_path) -> Iterator[SmallDisk | FullDatabase]:
    if request.param == "sqlite":
        small = SmallDisk(tmp_path)
        try:
            yield small
        finally:
            small.close()
        return
    with postgres_schema_url() as url:
        database = FullDatabase(url)
        try:
            yield database
        finally:
            database.close()


@pytest.fixture
def server(request, disk, tmp_path):
    served = start_server(
        request, "scripted", {**disk.env, "ALPACA_GENERATION_BACKLOG": "3"}, tmp_path
    )
    yield served
    served.stop()  # before the disk goes: it closes the store


def generate(server, n: int) -> str:
    answer = server.client.post("/generate", json={"instruction": f"Name thing {n}."})
    assert answer.status_code == 200, answer.text
    return answer.json()["id"]


def rate(server, generation_id: str, session: str):
    return server.client.post(
        "/feedback", json={"generation_id": generation_id, "rating": "up", "session_id": session}
    )


def stored(url: str) -> tuple[set[str], list[str]]:
    """The ids of the generations in the store at `url`, and of the rated ones, once a rating."""
    with open_store(url) as store:
        rows = list(store.export_rows(include_unrated=True))
    return (
        {row["generation_id"] for row in rows},
        sorted(row["generation_id"] for row in rows if row["rating"]),
    )


def test_feedback_on_a_full_store_is_a_507_and_ready_says_degraded_until_space_is_back(
    server, disk
):
    earlier = [generate(server, n) for n in range(3)]
    for n, generation_id in enumerate(earlier):
        assert rate(server, generation_id, f"s{n}").status_code == 201
    assert server.client.get("/ready").json()["status"] == "ready"

    disk.fill()
    refused = rate(server, earlier[0], "later")
    assert refused.status_code == 507
    error = refused.json()["error"]
    assert error["type"] == "store_full"
    assert "out of space" in error["message"] and "nothing was saved" in error["message"]
    assert "database " not in error["message"]  # which one, and where, is for the log

    ready = server.client.get("/ready")
    assert ready.status_code == 200  # answers go on: a load balancer keeps this server
    assert ready.json() == {
        "status": "degraded",
        "model": server.settings.served_model_name,
        "store": "the feedback store is out of space (its disk is full or it reached a size limit)",
    }
    assert read_metrics(server.client)["alpaca_feedback_store_full"] == 1
    summary = server.client.get("/feedback/summary")  # reads go on
    assert summary.status_code == 200
    assert summary.json()["models"][server.settings.served_model_name]["up"] == 3

    disk.free()
    # Nobody writes: the server's own probe notices that space is back.
    assert wait_for(lambda: server.client.get("/ready").json()["status"] == "ready", timeout=10)
    assert read_metrics(server.client)["alpaca_feedback_store_full"] == 0
    assert rate(server, earlier[0], "later").status_code == 201

    log = server.log_text()
    # Once for the episode, not for every refused write (the probes included).
    assert log.count("writes are refused until space is freed") == 1
    assert disk.named_in_log in log and disk.cause in log
    assert log.count("feedback store: writes work again") == 1
    server.stop()
    disk.check_intact()
    generations, ratings = stored(disk.url)
    assert set(earlier) <= generations
    assert ratings == sorted([*earlier, earlier[0]])  # every rating, the one after space is back


def test_answers_go_on_while_the_store_is_full_and_their_log_is_written_once_space_is_back(
    server, disk
):
    earlier = generate(server, 0)
    assert rate(server, earlier, "s0").status_code == 201
    disk.fill()

    # Five answers while full: all given; their log waits in memory, bounded at 3 records
    # (ALPACA_GENERATION_BACKLOG), so the two oldest are dropped and counted.
    during = [generate(server, n) for n in range(1, 6)]
    assert wait_for(lambda: read_metrics(server.client)["alpaca_generation_log_dropped_total"] == 2)
    metrics = read_metrics(server.client)
    assert metrics["alpaca_generation_log_backlog"] == 3
    assert metrics["alpaca_feedback_store_full"] == 1
    assert server.client.get("/ready").json()["status"] == "degraded"
    # Feedback on an answer whose log still waits: the store is full (507), not "no such
    # generation" (404).
    waiting = rate(server, during[-1], "s1")
    assert (waiting.status_code, waiting.json()["error"]["type"]) == (507, "store_full")

    disk.free()
    assert wait_for(lambda: read_metrics(server.client)["alpaca_generation_log_backlog"] == 0)
    assert server.client.get("/ready").json()["status"] == "ready"
    assert rate(server, during[-1], "s1").status_code == 201
    assert read_metrics(server.client)["alpaca_generation_log_dropped_total"] == 2

    log = server.log_text()
    assert log.count("generation log: cannot write") == 1  # not once per record or retry
    assert log.count("the oldest are dropped") == 1
    assert log.count("generation log: writes work again; 3 waiting records written") == 1
    server.stop()
    disk.check_intact()
    generations, ratings = stored(disk.url)
    assert generations == {earlier, *during[2:]}  # the two dropped were never stored
    assert ratings == sorted([earlier, during[-1]])
