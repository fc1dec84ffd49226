"""The demo mounted inside a FastAPI app (what `alpaca-serve` does at /ui).

Usage:
    from alpaca_serve.demo.mount import mount_demo
    app = create_app(settings, ui=mount_demo)    # the server calls it with the path, URL and key

The mounted demo talks to the server over HTTP like any other client. Gradio is imported only
when the demo is mounted.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from alpaca_serve.core.errors import describe_errors
from alpaca_serve.demo.settings import DemoSettings


class UIUnavailableError(RuntimeError):
    """The UI is enabled but cannot be built (the demo extra is missing, or its settings are
    invalid)."""


def mount_demo(app: Any, *, path: str, server_url: str, api_key: str | None) -> Any:
    """Mount the Gradio demo on `app` at `path`; it calls the API at `server_url` with `api_key`.
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
    return gr.mount_gradio_app(app, build_demo(settings), path=path)
