"""`alpaca-serve`: run the HTTP server, with the demo mounted at /ui.

Usage:
    alpaca-serve                                  # the bundled default model on 127.0.0.1:8000
    alpaca-serve --model ./alpaca-7b --port 8080  # any Hugging Face LLaMA-family folder

Every setting is also an environment variable with the ALPACA_ prefix (ALPACA_PORT=8080, ...);
command-line options win over the environment.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from pydantic import ValidationError
from pydantic_settings import SettingsError

from alpaca_serve import __version__
from alpaca_serve.core.errors import describe_errors
from alpaca_serve.demo.mount import UIUnavailableError, mount_demo
from alpaca_serve.feedback import StoreError, open_store
from alpaca_serve.server.app import create_app
from alpaca_serve.server.filters import FilterConfigError
from alpaca_serve.server.lifecycle import FINAL_EVENT_GRACE_S, DrainingServer
from alpaca_serve.server.preload import preloaded, reexec_with_preload
from alpaca_serve.server.request_context import RequestIdLogFilter
from alpaca_serve.server.settings import ServerSettings

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="alpaca-serve",
        description="Serve an Alpaca-style model over HTTP (POST /generate), backed by vLLM. "
        "Every setting can also be given as an ALPACA_* environment variable (see the "
        "configuration page of the docs).",
    )
    parser.add_argument("--host", help="address to listen on (ALPACA_HOST, default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port to listen on (ALPACA_PORT, default 8000)")
    parser.add_argument(
        "--model",
        type=Path,
        help="Hugging Face folder of a LLaMA-family model (ALPACA_MODEL; default: the bundled "
        "SmolLM2-135M-Instruct, converted once into ALPACA_CACHE_DIR)",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    handler.addFilter(RequestIdLogFilter())
    root = logging.getLogger("alpaca")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
    access = logging.getLogger("alpaca.access")
    json_lines = logging.StreamHandler()
    json_lines.setFormatter(logging.Formatter("%(message)s"))
    access.handlers[:] = [json_lines]
    access.propagate = False


def describe_fast_path(settings: ServerSettings) -> str:
    """Which parts of the fast path this process has: one line for the log."""
    loaded = preloaded()
    parts = [
        f"{name} {'preloaded' if loaded[key] else 'not preloaded'}"
        for key, name in (("tcmalloc", "tcmalloc"), ("intel_openmp", "Intel OpenMP"))
    ]
    if not all(loaded.values()):
        parts[-1] += " (ALPACA_PRELOAD=false, or not installed: make setup installs both)"
    parts.append(
        {
            True: "eager engine",
            False: "compiled engine",
            "auto": "compiled engine once its cache is warm, eager until then",
        }[settings.enforce_eager]
    )
    return ", ".join(parts)


def main(argv: list[str] | None = None) -> int:
    if argv is None:  # the command itself (not a caller in this process): preload, once
        reexec_with_preload(sys.argv[1:])
    args = build_parser().parse_args(argv)
    overrides = {key: value for key, value in vars(args).items() if value is not None}
    try:
        settings = ServerSettings(**overrides)
    except ValidationError as err:
        print(f"alpaca-serve: error: invalid settings: {describe_errors(err)}", file=sys.stderr)
        return 2
    except SettingsError as err:
        cause = f": {err.__cause__}" if err.__cause__ else ""
        print(f"alpaca-serve: error: invalid settings: {err}{cause}", file=sys.stderr)
        return 2

    import uvicorn

    configure_logging(settings.log_level)
    try:
        store = open_store(settings.store_url)
    except (StoreError, ValueError) as err:
        print(f"alpaca-serve: error: feedback store: {err}", file=sys.stderr)
        return 2
    try:
        app = create_app(settings, store=store, ui=mount_demo, compile_in_background=argv is None)
    except (FilterConfigError, UIUnavailableError) as err:
        store.close()
        print(f"alpaca-serve: error: {err}", file=sys.stderr)
        return 2
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        # The drain (alpaca_serve.server.lifecycle) has already let requests finish or cut them by
        # now.
        # uvicorn types this int, but waits on it with asyncio, which takes a float.
        timeout_graceful_shutdown=FINAL_EVENT_GRACE_S + 3,  # type: ignore[arg-type]
        # uvicorn's access log carries client addresses; requests are logged as JSON instead.
        access_log=False,
    )
    server = DrainingServer(config, app.state.runtime, settings.drain_timeout_s)

    def stop(reason: str) -> None:
        server.should_exit = True

    app.state.runtime.on_fatal = stop
    # Once the settings, the store and the app are known good: a bad setting is one line alone.
    logging.getLogger("alpaca.server").info("fast path: %s", describe_fast_path(settings))
    url = settings.local_url
    print(
        f"alpaca-serve: API {url}/generate (docs {url}/docs)"
        + (f", demo {url}/ui" if settings.ui else "")
        + " - ready once the model has loaded (GET /ready)",
        flush=True,
    )
    try:
        server.run()
    finally:
        store.close()
    runtime = app.state.runtime
    if runtime.load_error or runtime.fatal_error:
        print(f"alpaca-serve: error: {runtime.load_error or runtime.fatal_error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
