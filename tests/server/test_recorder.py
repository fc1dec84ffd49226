"""The generation log's buffer: while the database is down, records wait in memory, bounded."""

from __future__ import annotations

import asyncio

import pytest

from alpaca_serve.feedback import StoreError, open_store
from alpaca_serve.feedback.recorder import GenerationRecorder, record_size
from tests.server.test_feedback_store import make_generation


class StoreThatIsDown:
    """The real SQLite store, with its writes failing while `down` (a fault on demand)."""

    def __init__(self, store):
        self.store = store
        self.down = True

    def record_generations(self, records):
        if self.down:
            raise StoreError("database is down")
        self.store.record_generations(records)


@pytest.fixture
def sqlite_store(tmp_path):
    store = open_store(f"sqlite://{tmp_path / 'alpaca.sqlite3'}")
    yield store
    store.close()


def test_waiting_records_are_bounded_in_bytes_and_the_newest_are_kept(sqlite_store):
    # A cheap request can make a large record (a 100,000-character prompt): a count bound
    # alone would let 100,000 of them fill the memory.
    records = [make_generation(f"gen-{i:02d}", prompt="p" * 100_000) for i in range(40)]
    size = record_size(records[0])
    assert size > 100_000
    flaky = StoreThatIsDown(sqlite_store)
    recorder = GenerationRecorder(flaky, max_pending_bytes=10 * size)

    async def scenario():
        for record in records:
            recorder.submit(record)
            assert recorder.pending_bytes <= 10 * size
        with pytest.raises(StoreError):
            await recorder.flush()
        assert recorder.pending == 10  # kept for the next try, still within the bound
        flaky.down = False
        await recorder.flush()
        assert recorder.pending == 0 and recorder.pending_bytes == 0

    asyncio.run(scenario())
    kept = {row["generation_id"] for row in sqlite_store.export_rows(include_unrated=True)}
    assert kept == {f"gen-{i:02d}" for i in range(30, 40)}


def test_the_count_bound_still_holds_for_small_records(sqlite_store):
    recorder = GenerationRecorder(StoreThatIsDown(sqlite_store), max_pending=5)
    for i in range(12):
        recorder.submit(make_generation(f"gen-{i}"))
    assert recorder.pending == 5
    assert recorder.pending_bytes == sum(
        record_size(make_generation(f"gen-{i}")) for i in range(7, 12)
    )
