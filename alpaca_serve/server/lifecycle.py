"""Shutdown and engine death: drain on SIGTERM, exit non-zero when the engine dies.

On SIGTERM (or Ctrl-C) the server first drains: `/ready` answers 503 and new generations get 503
while the open ones finish, for at most ALPACA_DRAIN_TIMEOUT_S; then the remaining ones are cut
(streams get a final error event) and the process stops with exit code 0. A second signal stops at
once. If the engine process dies, `/ready` turns 503 and the process exits non-zero a moment later,
so that a supervisor restarts it.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import uvicorn

from alpaca_serve.server.runtime import Runtime

log = logging.getLogger("alpaca.server")

FINAL_EVENT_GRACE_S = 2.0  # after cutting, time for streams to send their last event
ENGINE_CHECK_INTERVAL_S = 0.5
ENGINE_DEATH_EXIT_DELAY_S = 2.0  # long enough for probes to see /ready go 503


def in_flight(runtime: Runtime) -> int:
    return runtime.admission.active + runtime.admission.waiting


async def drain(runtime: Runtime, timeout_s: float, stop_serving: Callable[[], None]) -> None:
    """Refuse new work, let open generations finish (up to `timeout_s`), cut the rest, stop."""
    runtime.draining = True
    loop = asyncio.get_running_loop()
    log.info("draining: %d requests open, waiting up to %gs", in_flight(runtime), timeout_s)
    deadline = loop.time() + timeout_s
    while in_flight(runtime) and loop.time() < deadline:
        await asyncio.sleep(0.05)
    if in_flight(runtime):
        log.warning("drain timeout: cutting %d open requests", in_flight(runtime))
        runtime.stop_event.set()
        grace = loop.time() + FINAL_EVENT_GRACE_S
        while in_flight(runtime) and loop.time() < grace:
            await asyncio.sleep(0.05)
    stop_serving()


async def watch_engine(runtime: Runtime, on_death: Callable[[str], None]) -> None:
    """Poll the engine once it is ready; when it dies, report it (once) and return."""
    while True:
        await asyncio.sleep(ENGINE_CHECK_INTERVAL_S)
        engine = runtime.engine
        if runtime.ready and engine is not None and not engine.alive:
            log.error("the engine process died; exiting in %gs", ENGINE_DEATH_EXIT_DELAY_S)
            await asyncio.sleep(ENGINE_DEATH_EXIT_DELAY_S)
            on_death("the engine process died")
            return


class DrainingServer(uvicorn.Server):
    """uvicorn's server, with a drain before shutdown and exit code 0 after a drained SIGTERM."""

    def __init__(self, config: uvicorn.Config, runtime: Runtime, drain_timeout_s: float):
        super().__init__(config)
        self.runtime = runtime
        self.drain_timeout_s = drain_timeout_s
        self._loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets=None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame) -> None:
        if self.runtime.draining or self._loop is None or not self.started:
            super().handle_exit(sig, frame)  # a second signal, or before start: stop now
            return
        self.runtime.draining = True

        def start_drain() -> None:
            asyncio.ensure_future(self._drain())

        self._loop.call_soon_threadsafe(start_drain)

    async def _drain(self) -> None:
        await drain(self.runtime, self.drain_timeout_s, self._stop)

    def _stop(self) -> None:
        self.should_exit = True

    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        # uvicorn's own version re-raises the signal after shutdown, which makes the exit code
        # -15; a drained shutdown is a clean one, so this one only routes the signals here.
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        handled = (signal.SIGINT, signal.SIGTERM)
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
