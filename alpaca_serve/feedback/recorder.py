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
import logging

from alpaca_serve.feedback.records import GenerationRecord
from alpaca_serve.feedback.store import FeedbackStore

log = logging.getLogger("alpaca.server")

RETRY_DELAY_S = 1.0
MAX_PENDING = 100_000  # beyond this, while the database is down, the oldest records are dropped


class GenerationRecorder:
    def __init__(self, store: FeedbackStore):
        self.store = store
        self._pending: list[GenerationRecord] = []
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    def submit(self, record: GenerationRecord) -> None:
        self._pending.append(record)
        if len(self._pending) > MAX_PENDING:
            dropped = len(self._pending) - MAX_PENDING
            del self._pending[:dropped]
            log.error("generation log: database unavailable, dropped %d records", dropped)
        self._wake.set()

    async def flush(self) -> None:
        """Write every submitted record now; raises if the database refuses them."""
        async with self._lock:
            batch, self._pending = self._pending, []
            if not batch:
                return
            try:
                await asyncio.to_thread(self.store.record_generations, batch)
            except BaseException:
                self._pending[:0] = batch  # keep them for the next try
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
