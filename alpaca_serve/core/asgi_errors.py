"""An error answered straight from ASGI middleware, in the API's JSON error shape.

Usage:
    await send_json_error(send, 403, "the demo takes no uploads", "forbidden")

Middleware that refuses a request before any route runs (keys, body size, the demo's guard) or
after an unhandled error has no FastAPI response to return: it sends this one. The body is the
routes' own `{"error": {"message", "type", "param"}}`.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

Send = Callable[[dict[str, Any]], Awaitable[None]]


async def send_json_error(
    send: Send,
    status: int,
    message: str,
    type_: str,
    headers: Iterable[tuple[bytes, bytes]] = (),
) -> None:
    body = json.dumps({"error": {"message": message, "type": type_, "param": None}}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
