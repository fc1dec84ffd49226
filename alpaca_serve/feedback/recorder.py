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

While the database cannot take them (it is down, or out of space), answers go on: their records
wait in memory, retried every RETRY_DELAY_S, up to a bound past which the oldest are dropped and
handed to `on_drop` (the server counts them in a metric). Each such episode is logged once when it
begins, once when records are first dropped, and once when the writes work again.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable

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
        on_drop: Callable[[int], None] | None = None,
    ):
        """`on_drop(count)` is called with the number of records given up on: dropped past the
        bounds, or still unwritten at shutdown."""
        self.store = store
        self.max_pending = max_pending
        self.max_pending_bytes = max_pending_bytes
        self.on_drop = on_drop
        self._pending: list[tuple[GenerationRecord, int]] = []  # (record, its size)
        self._pending_bytes = 0
        self._writing = 0  # records in the write under way
        # An episode of failed writes is under way, and records were dropped in it (each logged
        # once); both reset when a write succeeds.
        self._failing = False
        self._dropping = False
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._task: asyncio.Task | None = None

    @property
    def pending(self) -> int:
        """Records not yet stored: waiting, or being written now."""
        return len(self._pending) + self._writing

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
            if not self._dropping:
                self._dropping = True
                log.error(
                    "generation log: more records wait than the %d (%d MiB) kept in memory; "
                    "the oldest are dropped, never stored, until the database takes writes again",
                    self.max_pending,
                    self.max_pending_bytes // (1024 * 1024),
                )
            self._give_up(drop)

    def _give_up(self, count: int) -> None:
        if self.on_drop is not None:
            self.on_drop(count)

    async def flush(self) -> None:
        """Write every submitted record now; raises if the database refuses them."""
        async with self._lock:
            batch, self._pending = self._pending, []
            self._pending_bytes = 0
            if not batch:
                return
            self._writing = len(batch)
            try:
                await asyncio.to_thread(self.store.record_generations, [r for r, _ in batch])
            except BaseException as err:
                self._pending[:0] = batch  # keep them for the next try
                self._pending_bytes = sum(size for _, size in self._pending)
                if not self._failing and isinstance(err, Exception):
                    self._failing = True
                    log.warning(
                        "generation log: cannot write (%s); answers go on, their records wait "
                        "in memory (at most %d) and are retried every %g s",
                        err,
                        self.max_pending,
                        RETRY_DELAY_S,
                    )
                self._trim()
                raise
            finally:
                self._writing = 0
            if self._failing:
                log.info(
                    "generation log: writes work again; %d waiting records written", len(batch)
                )
                self._failing = self._dropping = False

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self.flush()
            except asyncio.CancelledError:
                raise
            except Exception:
                # Logged by flush, once per episode.
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
            self._give_up(len(self._pending))
