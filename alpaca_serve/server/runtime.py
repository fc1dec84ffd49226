"""What the routes share while the app runs: settings, metrics and (once loaded) the engine."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, cast

from fastapi import Depends, Request

from alpaca_serve.feedback import FeedbackStore, GenerationRecorder, StoreError, StoreFullError
from alpaca_serve.server.adapters import AdapterRegistry
from alpaca_serve.server.admission import Admission
from alpaca_serve.server.compile_cache import BackgroundCompile
from alpaca_serve.server.engine import Engine
from alpaca_serve.server.errors import APIError
from alpaca_serve.server.feedback_limits import FeedbackLimits
from alpaca_serve.server.filters import FilterChain
from alpaca_serve.server.metrics import ServerMetrics
from alpaca_serve.server.pipeline import Pipeline
from alpaca_serve.server.settings import ServerSettings
from alpaca_serve.server.unknown_fields import UnknownFields

log = logging.getLogger("alpaca.server")


@dataclass
class Runtime:
    settings: ServerSettings
    metrics: ServerMetrics
    filters: FilterChain = field(default_factory=lambda: FilterChain([]))
    admission: Admission = field(default_factory=lambda: Admission(64, 256))
    feedback_limits: FeedbackLimits = field(default_factory=lambda: FeedbackLimits(0, 0))
    engine: Engine | None = None
    # The served model folder, once known (the default model's after its conversion); /info
    # reads where the model came from and its prompt template from the markers in it.
    model_dir: Path | None = None
    # The LoRA adapters served beside the base, once the engine is up; None when none are
    # configured (ALPACA_ADAPTERS_DIR, ALPACA_ADAPTERS).
    adapters: AdapterRegistry | None = None
    loaded_at: str | None = None  # when the base model became ready (ISO 8601, UTC)
    store: FeedbackStore | None = None
    recorder: GenerationRecorder | None = None
    ready: bool = False
    ui_mounted: bool = False  # a UI (the demo) is mounted at /ui
    # Set when SIGTERM arrives: /ready turns 503 and new requests are refused.
    draining: bool = False
    # Set when the drain timeout is over: generations still running are cut.
    stop_event: asyncio.Event = field(default_factory=asyncio.Event)
    load_error: str | None = None
    fatal_error: str | None = None  # why the process must stop (the engine died)
    unknown_fields: UnknownFields = field(default_factory=UnknownFields)  # /v1's, logged once
    # Called when the engine cannot be loaded, so the process can stop instead of idling unready.
    on_fatal: Callable[[str], None] | None = field(default=None, repr=False)
    # `alpaca-serve` itself (not an in-process caller) may fill a cold compile cache.
    may_compile_in_background: bool = False
    compile_fill: BackgroundCompile | None = field(default=None, repr=False)
    _pipeline: Pipeline | None = field(default=None, init=False, repr=False)

    @property
    def pipeline(self) -> Pipeline:
        """The generation path, seeing this runtime's engine, readiness, drain and log."""
        if self._pipeline is None:
            self._pipeline = Pipeline(
                settings=self.settings,
                metrics=self.metrics,
                admission=self.admission,
                filters=self.filters,
                engine=lambda: self.engine,
                is_ready=lambda: self.ready,
                is_draining=lambda: self.draining,
                # The recorder is started by the lifespan before any request.
                record=lambda record: cast(GenerationRecorder, self.recorder).submit(record),
                stop_event=self.stop_event,
                adapters=self.adapters,
            )
        return self._pipeline

    def serve_adapters(self, registry: AdapterRegistry) -> None:
        """From now on requests may name the adapters of `registry`."""
        self.adapters = registry
        self.pipeline.adapters = registry

    def list_models(self) -> list[dict[str, Any]]:
        """/v1/models' entries: the base, then every served adapter with the base as parent."""
        base = self.engine.model_name if self.engine else self.settings.served_model_name
        now = int(time.time())
        models = [{"id": base, "object": "model", "created": now, "owned_by": "alpaca-serve"}]
        for adapter in self.adapters.served.values() if self.adapters else ():
            models.append(
                {
                    "id": adapter.name,
                    "object": "model",
                    "created": now,
                    "owned_by": "alpaca-serve",
                    "root": str(adapter.folder),
                    "parent": base,
                }
            )
        return models

    async def in_store(self, call: Callable[..., Any], *args: Any) -> Any:
        """`call(*args)`, a method of the feedback store, off the event loop; a store that cannot
        be reached or used is a 503, one out of space a 507 (`store_error`)."""
        try:
            return await asyncio.to_thread(call, *args)
        except StoreError as err:
            raise store_error(err) from err

    def refresh_gauges(self) -> None:
        engine = self.engine
        alive = engine is not None and self.ready and engine.alive
        self.metrics.engine_ready.set(1 if alive else 0)
        self.metrics.admission_queue.set(self.admission.waiting)
        self.metrics.store_full.set(1 if self.store and self.store.out_of_space else 0)
        self.metrics.generation_log_backlog.set(self.recorder.pending if self.recorder else 0)
        if engine is None:
            return
        if engine.num_unfinished_requests() == 0:
            # The scheduler reports only while it works; with nothing in flight it holds nothing.
            running = waiting = 0
        else:
            running, waiting = engine.load.running, engine.load.waiting
        self.metrics.running.set(running)
        self.metrics.waiting.set(waiting)
        self.metrics.kv_cache_usage.set(engine.load.kv_cache_usage if running else 0.0)
        self.metrics.count_speculation(engine.load.draft_tokens, engine.load.accepted_tokens)


def get_runtime(request: Request) -> Runtime:
    return request.app.state.runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]

__all__ = ["Runtime", "RuntimeDep", "get_runtime"]


def store_error(err: StoreError) -> APIError:
    """The HTTP answer to a store that refused a call: 507 when it is out of space, else 503."""
    return store_full() if isinstance(err, StoreFullError) else store_unavailable(err)


# Said to clients (the 507's message, /ready's `store`): the cause, not the database's name or
# host, which go to the log.
OUT_OF_SPACE = "the feedback store is out of space (its disk is full or it reached a size limit)"


def store_full() -> APIError:
    """The 507 for a write the store had no room for. The store logs the cause once, when it
    runs out of space, not here for every refused request."""
    return APIError(
        507, f"{OUT_OF_SPACE}: nothing was saved; send it again once space is freed", "store_full"
    )


def store_unavailable(err: StoreError) -> APIError:
    """The 503 for a store that cannot be reached or used: the cause goes to the log, not to the
    client (it names the database and its host)."""
    log.warning("feedback store unavailable: %s", err)
    return APIError(
        503, "the feedback store is unavailable; retry shortly", "feedback_store_unavailable"
    )
