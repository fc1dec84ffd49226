"""The FastAPI app factory.

Usage:
    app = create_app(ServerSettings())          # loads the configured model in the background
    app = create_app(settings, engine=engine)   # serves an engine built elsewhere (tests, bench)
    app = create_app(settings, ui=mount_demo)   # and a UI at /ui (alpaca-serve hands it the demo)

The server knows nothing of the demo: whoever builds the app hands it the UI to mount, a function
of the app, the path, the URL the UI should call the API at and the key it should carry.

Importing this module imports neither vLLM nor torch: the engine is built in the lifespan.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable
from contextlib import asynccontextmanager
from functools import partial

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from alpaca_serve.core.provenance import made_at
from alpaca_serve.feedback import FeedbackStore, GenerationRecorder, open_store
from alpaca_serve.server import __version__
from alpaca_serve.server.access import AccessMiddleware
from alpaca_serve.server.adapters import AdapterRegistry, watch_adapters
from alpaca_serve.server.admission import Admission
from alpaca_serve.server.compile_cache import BackgroundCompile
from alpaca_serve.server.default_model import ensure_default_model
from alpaca_serve.server.engine import Engine, SamplingOptions, build_engine
from alpaca_serve.server.errors import install_error_handlers
from alpaca_serve.server.feedback_limits import FeedbackLimits
from alpaca_serve.server.filters import build_filter_chain
from alpaca_serve.server.keys import ApiKey, KeyRing, split_keys
from alpaca_serve.server.lifecycle import watch_engine
from alpaca_serve.server.metrics import ServerMetrics
from alpaca_serve.server.request_context import BodyLimitMiddleware, RequestContextMiddleware
from alpaca_serve.server.retention import purge_periodically
from alpaca_serve.server.routes import (
    adapters,
    feedback,
    generate,
    generations,
    openai_api,
    sessions,
    status,
    tokenize,
)
from alpaca_serve.server.runtime import Runtime
from alpaca_serve.server.settings import ServerSettings
from alpaca_serve.server.store_watch import watch_store

log = logging.getLogger("alpaca.server")

WARMUP_PROMPT = "Hello"
UI_PATH = "/ui"

# Mounts a UI on the app at `path`; it calls this server's API at `server_url` with `api_key`,
# and asks its visitors to log in when given `login` ((username, password) -> allowed).
UIMount = Callable[..., FastAPI]  # (app, *, path, server_url, api_key, login)


def create_app(
    settings: ServerSettings | None = None,
    engine: Engine | None = None,
    store: FeedbackStore | None = None,
    ui: UIMount | None = None,
    compile_in_background: bool = False,
) -> FastAPI:
    """Build the app. Without `engine`, the lifespan loads the model and owns the engine; without
    `store`, it opens the configured feedback store and owns it. With `ui` and `settings.ui`, the
    UI is mounted at /ui. With `compile_in_background` (alpaca-serve itself), a cold compile
    cache is filled in the background (server/compile_cache.py).

    Raises FilterConfigError when a configured content filter cannot be built, and what `ui`
    raises when the UI cannot be (the demo's UIUnavailableError).
    """
    settings = settings or ServerSettings()
    metrics = ServerMetrics(settings.served_model_name)
    filters = build_filter_chain(
        settings.filters, settings.blocklist, metrics.count_block, metrics.count_filter_failure
    )
    runtime = Runtime(
        settings=settings,
        metrics=metrics,
        filters=filters,
        admission=Admission(settings.max_concurrent, settings.max_queue),
        feedback_limits=FeedbackLimits(
            settings.feedback_per_session_per_minute, settings.feedback_per_client_per_minute
        ),
        may_compile_in_background=compile_in_background,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        # Locals, as runtime's attributes are Optional: set here, closed by the finally. (Not
        # `store or ...`: mypy would infer the thread's result as Optional from the left side.)
        opened = (
            store if store is not None else await asyncio.to_thread(open_store, settings.store_url)
        )
        recorder = GenerationRecorder(
            opened,
            max_pending=settings.generation_backlog,
            on_drop=metrics.generation_log_dropped.inc,
        )
        runtime.store, runtime.recorder = opened, recorder
        recorder.start()
        loading = asyncio.create_task(_start_engine(runtime, engine))
        watching = asyncio.create_task(watch_engine(runtime, partial(_engine_died, runtime)))
        tasks = [loading, watching, asyncio.create_task(watch_store(opened))]
        if settings.serves_adapters:
            tasks.append(asyncio.create_task(_watch_adapters(runtime)))
        if settings.log_retention_days is not None:
            purging = purge_periodically(
                opened, settings.log_retention_days, metrics.generations_purged.inc
            )
            tasks.append(asyncio.create_task(purging))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await recorder.close()
            if store is None:
                opened.close()
            if runtime.compile_fill is not None:
                runtime.compile_fill.stop()
            if engine is None and runtime.engine is not None:
                runtime.engine.shutdown()

    app = FastAPI(
        title="alpaca-serve",
        version=__version__,
        description="Alpaca-style instruction following over HTTP, backed by vLLM.",
        lifespan=lifespan,
    )
    app.state.runtime = runtime
    install_error_handlers(app)
    # Added innermost first. From the outside in: request ids, CORS (a browser's preflight
    # carries no key), the key check, then the body limit, which reads the body: a request
    # without a valid key is refused before any of its body is read.
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    keys = _key_ring(settings)
    mounts_ui = settings.ui and ui is not None
    # With keys, the demo calls the API with a user key of its own (made for this process, never
    # shown), rate-limited on its own: no configured key is handed to the page's visitors.
    demo_key = secrets.token_urlsafe(32) if keys.configured and mounts_ui else None
    if demo_key is not None:
        keys = _key_ring(settings, extra={demo_key: ApiKey("demo", "user", forwards_visitors=True)})
    app.state.keys = keys
    open_prefixes = [] if settings.metrics_require_key else ["/metrics"]
    if mounts_ui and not settings.ui_require_key:
        open_prefixes.append(UI_PATH)  # the demo's own login guards it (or it is public)
    app.add_middleware(
        AccessMiddleware,
        keys=keys,
        open_prefixes=open_prefixes,
        rate_limit_per_minute=settings.rate_limit_per_minute,
        own_limits={demo_key: settings.ui_rate_limit_per_minute} if demo_key else None,
        max_in_flight_per_key=settings.max_in_flight_per_key
        or max(1, (settings.max_concurrent + settings.max_queue) // 2),
    )
    if settings.cors_origin_list:
        wildcard = "*" in settings.cors_origin_list
        app.add_middleware(
            CORSMiddleware,
            allow_origins=["*"] if wildcard else settings.cors_origin_list,
            allow_credentials=not wildcard,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", "X-Session-Id"],
            expose_headers=["X-Request-Id", "Retry-After"],
        )
    app.add_middleware(RequestContextMiddleware)
    app.include_router(generate.router)
    app.include_router(status.router)
    app.include_router(feedback.router)
    app.include_router(generations.router)
    app.include_router(openai_api.router)
    app.include_router(adapters.router)
    app.include_router(sessions.router)
    app.include_router(tokenize.router)
    if mounts_ui:
        assert ui is not None  # mounts_ui says so
        login = partial(_is_a_key, keys) if keys.configured and not settings.ui_public else None
        app = ui(app, path=UI_PATH, server_url=settings.local_url, api_key=demo_key, login=login)
        runtime.ui_mounted = True
    return app


def _key_ring(settings: ServerSettings, extra: dict[str, ApiKey] | None = None) -> KeyRing:
    return KeyRing(
        split_keys(settings.api_keys),
        split_keys(settings.admin_keys),
        settings.api_keys_file,
        extra,
    )


def _is_a_key(keys: KeyRing, username: str, password: str) -> bool:
    """The demo's login: any name, an API key of this server as the password (the keys file
    as it is now: a key added there logs in at once, a removed one no longer does)."""
    return keys.lookup(password.encode()) is not None


async def _start_engine(runtime: Runtime, engine: Engine | None) -> None:
    """Load the model (unless given), answer one warm-up request, then declare readiness."""
    try:
        if engine is None:
            model_path = runtime.settings.model
            if model_path is None:
                model_path = await ensure_default_model(runtime.settings.cache_dir)
            runtime.model_dir = model_path  # /info reads the model's provenance from it
            engine = await asyncio.to_thread(
                build_engine, runtime.settings, model_path, runtime.metrics.queue_time.observe
            )
        runtime.engine = engine
        await _warm_up(engine)
        if runtime.settings.serves_adapters:
            # Before readiness, so that a client that waits for /ready finds them.
            registry = AdapterRegistry(
                runtime.settings, engine.model_name, runtime.model_dir or runtime.settings.model
            )
            await registry.refresh(engine, wait_until_stable=False)
            runtime.serve_adapters(registry)
        runtime.loaded_at = made_at()
        runtime.ready = True
        _fill_compile_cache(runtime, engine)
        url = runtime.settings.local_url
        log.info(
            "ready: serving %s (context %d tokens) at %s/generate",
            engine.model_name,
            engine.max_model_len,
            url,
        )
        if runtime.ui_mounted:
            log.info("demo UI at %s%s", url, UI_PATH)
    except asyncio.CancelledError:
        raise
    except Exception as err:
        runtime.load_error = f"{type(err).__name__}: {err}"
        log.exception("the model failed to load")
        if runtime.on_fatal is not None:
            runtime.on_fatal(runtime.load_error)


def _fill_compile_cache(runtime: Runtime, engine: Engine) -> None:
    """Start the background compile when the engine is eager only because its cache is cold,
    in `alpaca-serve` itself, with ALPACA_COMPILE_IN_BACKGROUND on."""
    mode = getattr(engine, "mode", None)
    if mode is None or not mode.fill or runtime.model_dir is None:
        return
    if not (runtime.may_compile_in_background and runtime.settings.compile_in_background):
        log.info("fast path: the compiled engine's cache stays cold (no background compile)")
        return
    runtime.compile_fill = BackgroundCompile.start(runtime.settings, runtime.model_dir)
    log.info(
        "fast path: compiling the model in the background at the lowest priority, for the "
        "next start to be compiled (minutes; log %s; ALPACA_COMPILE_IN_BACKGROUND=false "
        "turns it off)",
        runtime.compile_fill.log_path,
    )


async def _watch_adapters(runtime: Runtime) -> None:
    """Rescan the adapters every adapters_poll_s seconds, once they are first loaded."""
    while runtime.adapters is None:
        await asyncio.sleep(runtime.settings.adapters_poll_s)
    await watch_adapters(runtime.adapters, lambda: runtime.engine, lambda: runtime.ready)


def _engine_died(runtime: Runtime, reason: str) -> None:
    runtime.fatal_error = reason
    if runtime.on_fatal is not None:
        runtime.on_fatal(reason)


async def _warm_up(engine: Engine) -> None:
    options = SamplingOptions(
        max_new_tokens=1,
        temperature=0.0,
        top_p=1.0,
        top_k=0,
        repetition_penalty=1.0,
        stop=(),
        seed=None,
    )
    async for _ in engine.generate(engine.tokenize(WARMUP_PROMPT), options, "warmup"):
        pass
