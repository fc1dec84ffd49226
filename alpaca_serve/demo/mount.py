"""The demo mounted inside a FastAPI app (what `alpaca-serve` does at /ui).

Usage:
    from alpaca_serve.demo.mount import mount_demo
    app = create_app(settings, ui=mount_demo)    # the server calls it with the path, URL and key

The mounted demo talks to the server over HTTP like any other client. Gradio is imported only
when the demo is mounted.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote

from pydantic import ValidationError

from alpaca_serve.core.asgi_errors import send_json_error
from alpaca_serve.core.errors import describe_errors
from alpaca_serve.demo.settings import DemoSettings


class UIUnavailableError(RuntimeError):
    """The UI is enabled but cannot be built (the demo extra is missing, or its settings are
    invalid)."""


def mount_demo(
    app: Any,
    *,
    path: str,
    server_url: str,
    api_key: str | None,
    login: Callable[[str, str], bool] | None = None,
) -> Any:
    """Mount the Gradio demo on `app` at `path`; it calls the API at `server_url` with `api_key`.
    With `login` (username, password) -> allowed, the demo asks for a login first.
    Raises UIUnavailableError naming what is missing or wrong."""
    try:
        import gradio as gr

        from alpaca_serve.demo.app import build_demo
    except ImportError as err:
        raise UIUnavailableError(
            f"the UI at {path} needs the demo extra ({err.name} is missing): "
            "pip install 'alpaca-serve[demo]', or set ALPACA_UI=false"
        ) from err
    try:
        settings = DemoSettings(server_url=server_url, api_key=api_key)
    except ValidationError as err:
        raise UIUnavailableError(f"invalid ALPACA_DEMO_* settings: {describe_errors(err)}") from err
    app.add_middleware(DemoGuard, path=path)
    return gr.mount_gradio_app(
        app,
        build_demo(settings),
        path=path,
        auth=login,
        auth_message="This demo needs an API key of this server: any name, the key as password."
        if login
        else None,
        max_file_size=1,  # the demo takes no files (DemoGuard refuses uploads before Gradio)
    )


class DemoGuard:
    """What the demo never needs, refused before Gradio sees it: uploads (no count or size
    limit, no cleanup) and fetches of remote URLs through `file=` or `proxy=` (an outbound
    proxy for anyone). A 403 with a JSON body."""

    def __init__(self, app: Any, path: str):
        self.app = app
        self.prefix = path.rstrip("/") + "/"

    def refused(self, path: str) -> str | None:
        if not path.startswith(self.prefix):
            return None
        rest = path[len(self.prefix) :]
        if re.search(r"(^|/)upload(_progress)?/?$", rest):
            return "the demo takes no uploads"
        fetch = re.search(r"(?:^|/)(file|proxy)=(.*)$", rest)
        if fetch and (fetch[1] == "proxy" or "://" in fetch[2] or fetch[2].startswith("//")):
            return "the demo fetches no remote URLs"
        return None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            reason = self.refused(unquote(scope["path"]))
            if reason is not None:
                await send_json_error(send, 403, reason, "forbidden")
                return
        await self.app(scope, receive, send)
