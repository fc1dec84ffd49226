"""Retention of the generation log: with ALPACA_LOG_RETENTION_DAYS set, the server empties the
prompts and answers of older generations, at start and then every PURGE_INTERVAL_S.

Usage (the app's lifespan starts it when the setting is set):
    task = asyncio.create_task(purge_periodically(store, days, metrics.generations_purged.inc))

The purge itself is `FeedbackStore.purge_generations`, run off the event loop; ratings and votes
stay. A purge that fails (the database unreachable, locked) is logged and tried again at the next
round: retention never stops the server. `alpaca-export --purge-older-than DAYS` does the same once,
for a stopped server or a cron job.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from alpaca_serve.feedback import FeedbackStore, StoreError
from alpaca_serve.feedback.store import SECONDS_PER_DAY

log = logging.getLogger("alpaca.server")

PURGE_INTERVAL_S = 3600.0  # between two purges (the first runs at start)


async def purge_periodically(
    store: FeedbackStore,
    days: float,
    count_purged: Callable[[int], None],
    interval_s: float = PURGE_INTERVAL_S,
) -> None:
    """Purge generations older than `days` now and then every `interval_s`, until cancelled."""
    while True:
        await purge_once(store, days, count_purged)
        await asyncio.sleep(interval_s)


async def purge_once(
    store: FeedbackStore, days: float, count_purged: Callable[[int], None]
) -> int | None:
    """Purge generations recorded more than `days` ago; how many, or None when the purge failed
    (logged, never raised)."""
    before = time.time() - days * SECONDS_PER_DAY
    try:
        purged = await asyncio.to_thread(store.purge_generations, before)
    except StoreError as err:
        log.warning("retention: the purge failed, tried again in the next round: %s", err)
        return None
    except Exception:
        log.exception("retention: the purge failed, tried again in the next round")
        return None
    if purged:
        count_purged(purged)
        log.info(
            "retention: purged the prompts and answers of %d generations older than %g days",
            purged,
            days,
        )
    return purged
