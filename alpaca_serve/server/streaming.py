"""Server-sent event streams and client disconnects: the HTTP side of a generation.

Usage (a route):
    if not await run_unless_disconnected(generation.run_to_end(), request.receive):
        ...                                   # the client left; the generation was aborted
    return EventStreamResponse(events, on_close=generation.release)

A stream's framing: `data: {json}` events, then `data: [DONE]`. A generation that ends without
an answer after the stream has begun (status 200 already sent) ends with one error event.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, Awaitable, Callable

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from alpaca_serve.server.errors import error_body, generation_error

DONE = b"data: [DONE]\n\n"


def sse(payload: object) -> bytes:
    """One server-sent event carrying `payload` as JSON."""
    return f"data: {json.dumps(payload)}\n\n".encode()


def error_event(err: Exception) -> bytes:
    """The event that ends a stream whose generation stopped early (one of GENERATION_ERRORS)."""
    error = generation_error(err)
    return sse(error_body(error.message, error.type))


async def wait_for_disconnect(receive: Receive) -> None:
    """Return when the client has gone away (the request body must already be read)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


async def run_unless_disconnected(work: Awaitable[object], receive: Receive) -> bool:
    """Await `work`, cancelling it if the client disconnects first.

    Returns True when the work finished, False when the client left; cancelling the work is what
    aborts the request in the engine. The work's own exceptions propagate.
    """
    work_task = asyncio.ensure_future(work)
    watch_task = asyncio.ensure_future(wait_for_disconnect(receive))
    try:
        await asyncio.wait({work_task, watch_task}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        # Also reached when this coroutine itself is cancelled (server shutdown).
        for task in (work_task, watch_task):
            if not task.done():
                task.cancel()
        await asyncio.gather(work_task, watch_task, return_exceptions=True)
    if work_task.cancelled():
        return False
    work_task.result()  # raises the work's exception, if any
    return True


class EventStreamResponse(StreamingResponse):
    """Server-sent events that stop, and abort the generation, as soon as the client leaves.

    Starlette's own StreamingResponse notices a disconnect only on some ASGI servers and leaves
    the generator to the garbage collector; this one watches for it and closes the generator.
    """

    def __init__(self, events: AsyncGenerator[bytes, None], on_close: Callable[[], None]):
        super().__init__(
            events,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
        self.events = events
        self.on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def pump() -> None:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            async for chunk in self.events:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})

        try:
            await run_unless_disconnected(pump(), receive)
        finally:
            try:
                await self.events.aclose()
            finally:
                self.on_close()
