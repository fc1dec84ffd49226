"""The generation log: every finished generation is written to the feedback store, off the
request path.

Usage:
    recorder = GenerationRecorder(store); recorder.start()    # in the app's lifespan
    recorder.submit(record)       # from a route, once the answer is complete
    await recorder.flush()        # before feedback on a just-finished generation
    await recorder.close()        # on shutdown

`GenerationRecorder.submit` only appends to a list; a background task writes what has gathered
in one transaction, so answers never wait on the database. `flush()` writes at once (the feedback
route calls it so a just-finished generation can be rated), and `close()` writes the rest on
shutdown, so a normal stop loses nothing.
"""

from __future__ import annotations

import asyncio
import json
import logging

from alpaca_serve.feedback.records import GenerationRecord
from alpaca_serve.feedback.store import FeedbackStore

log = logging.getLogger("alpaca.server")

RETRY_DELAY_S = 1.0
# While the database is down, records wait in memory; past either bound the oldest are dropped.
MAX_PENDING = 100_000
MAX_PENDING_BYTES = 64 * 1024 * 1024


def record_size(record: GenerationRecord) -> int:
    """About how many bytes a record holds: its texts and parameters (characters, as stored)."""
    texts = (record.instruction or "", record.input, record.prompt, record.response)
    return (
        sum(len(text) for text in texts)
        + len(json.dumps(record.params, default=str))
        + len(json.dumps(record.filter_verdicts, default=str))
        + 256  # ids, numbers, the object itself
    )


class GenerationRecorder:
    def __init__(
        self,
        store: FeedbackStore,
        max_pending: int = MAX_PENDING,
        max_pending_bytes: int = MAX_PENDING_BYTES,
    ):
        self.store = store
        self.max_pending = max_pending
        self.max_pending_bytes = max_pending_bytes
        self._pending: list[tuple[GenerationRecord, int]] = []  # (record, its size)
        self._pending_bytes = 0
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._task: asyncio.Task | None = None

    @property
    def pending(self) -> int:
        """Records waiting to be written."""
        return len(self._pending)

    @property
    def pending_bytes(self) -> int:
        """About how many bytes they hold (record_size)."""
        return self._pending_bytes

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    def submit(self, record: GenerationRecord) -> None:
        size = record_size(record)
        self._pending.append((record, size))
        self._pending_bytes += size
        self._trim()
        self._wake.set()

    def _trim(self) -> None:
        """Drop the oldest records past either bound (only while writes fail do they gather)."""
        drop, total, count = 0, self._pending_bytes, len(self._pending)
        while count - drop > 1 and (
            count - drop > self.max_pending or total > self.max_pending_bytes
        ):
            total -= self._pending[drop][1]
            drop += 1
        if drop:
            del self._pending[:drop]
            self._pending_bytes = total
            log.error("generation log: database unavailable, dropped %d records", drop)

    async def flush(self) -> None:
        """Write every submitted record now; raises if the database refuses them."""
        async with self._lock:
            batch, self._pending = self._pending, []
            self._pending_bytes = 0
            if not batch:
                return
            try:
                await asyncio.to_thread(self.store.record_generations, [r for r, _ in batch])
            except BaseException:
                self._pending[:0] = batch  # keep them for the next try
                self._pending_bytes = sum(size for _, size in self._pending)
                self._trim()
                raise

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self.flush()
            except asyncio.CancelledError:
                raise
            except Exception as err:
                log.error("generation log: write failed, retrying: %s", err)
                await asyncio.sleep(RETRY_DELAY_S)
                self._wake.set()

    async def close(self) -> None:
        """Stop the background writer and write what is left."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        try:
            await self.flush()
        except Exception as err:
            log.error(
                "generation log: %d records not written at shutdown: %s", len(self._pending), err
            )
