"""`alpaca-demo`: the Gradio demo as its own process, talking to a running server.

Usage:
    alpaca-demo --server-url http://127.0.0.1:8000 --port 7860

Every setting is also an `ALPACA_DEMO_*` environment variable (ALPACA_DEMO_SERVER_URL, ...).
The server also mounts this demo at /ui unless ALPACA_UI=false.
"""

import argparse
import sys

from pydantic import ValidationError
from pydantic_settings import SettingsError

from alpaca_serve.core.errors import describe_errors
from alpaca_serve.demo.settings import DemoSettings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="alpaca-demo",
        description="Serve the Gradio chat and Compare demo for a running alpaca-serve.",
    )
    parser.add_argument(
        "--server-url",
        help="the alpaca-serve to talk to (ALPACA_DEMO_SERVER_URL, default http://127.0.0.1:8000)",
    )
    parser.add_argument("--host", help="address to listen on (ALPACA_DEMO_HOST, default 127.0.0.1)")
    parser.add_argument(
        "--port", type=int, help="port to listen on (ALPACA_DEMO_PORT, default 7860)"
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    overrides = {key: value for key, value in vars(args).items() if value is not None}
    try:
        settings = DemoSettings(**overrides)
    except ValidationError as err:
        print(f"alpaca-demo: error: invalid settings: {describe_errors(err)}", file=sys.stderr)
        return 2
    except SettingsError as err:
        cause = f": {err.__cause__}" if err.__cause__ else ""
        print(f"alpaca-demo: error: invalid settings: {err}{cause}", file=sys.stderr)
        return 2
    from alpaca_serve.demo.app import build_demo

    print(f"demo: http://{settings.host}:{settings.port} (server: {settings.server_url})")
    build_demo(settings).launch(server_name=settings.host, server_port=settings.port)
    return 0


def _version() -> str:
    from importlib.metadata import version

    return version("alpaca-serve")


if __name__ == "__main__":
    sys.exit(main())
