"""The feedback store, probed while it is out of space, so that the end of a full disk is noticed
without waiting for traffic.

Usage:
    task = asyncio.create_task(watch_store(store))   # in the app's lifespan; cancel on shutdown

Every write records its outcome on the store (`FeedbackStore.out_of_space`, logged when it
changes): a write that found no room sets it, one that commits clears it. While it is set,
`/ready` says "degraded", feedback gets 507 and the generation log waits in memory. This task
probes the store every STORE_PROBE_S meanwhile, with a write that leaves nothing
(`check_writable`), so that `/ready` turns "ready" once space is back even if no one writes.
"""

from __future__ import annotations

import asyncio
import contextlib

from alpaca_serve.feedback import FeedbackStore, StoreError

STORE_PROBE_S = 1.0


async def watch_store(store: FeedbackStore, interval_s: float = STORE_PROBE_S) -> None:
    """Every `interval_s`, while the store is out of space, try a write that leaves nothing."""
    while True:
        await asyncio.sleep(interval_s)
        if store.out_of_space is not None:
            # Still full (the store keeps why), or down: the next round tries again.
            with contextlib.suppress(StoreError):
                await asyncio.to_thread(store.check_writable)
