"""Request ids: one per HTTP request, sent back as `X-Request-Id`, used as the engine request id
and stamped on every log line written while the request is handled.

A client may send its own `X-Request-Id` (at most 128 characters of `A-Z a-z 0-9 . _ : -`): it is
kept, echoed and logged. The generation id (the answer's `id`, the key of the generation log and
of feedback) is then that id followed by `-` and 8 hex digits, so that a client reusing an id
never merges two generations. Without one, or with one that breaks the rule (then replaced and
logged), both are a fresh `gen-<32 hex digits>`."""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from contextvars import ContextVar

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from alpaca_serve.core.asgi_errors import send_json_error

REQUEST_ID_HEADER = "X-Request-Id"
SESSION_HEADER = "X-Session-Id"  # the feedback session a request's answers are shown to
MAX_SESSION_CHARS = 128

request_id_var: ContextVar[str] = ContextVar("request_id", default="-")
# The request's feedback session (X-Session-Id, 1-128 characters), or None: its answers are
# recorded as shown to it, and only it may rate them or vote on them.
session_id_var: ContextVar[str | None] = ContextVar("session_id", default=None)
log = logging.getLogger("alpaca.server")
# One JSON line per request: id, route, status, timings, token counts. Never the prompt, the
# answer or the client's address.
access_log = logging.getLogger("alpaca.access")


SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def new_request_id() -> str:
    return f"gen-{uuid.uuid4().hex}"


def request_ids(scope: Scope) -> tuple[str, str]:
    """The request's id and its generation id, from a sane incoming X-Request-Id or fresh."""
    incoming = dict(scope.get("headers", ())).get(REQUEST_ID_HEADER.lower().encode())
    if incoming is not None:
        supplied = incoming.decode("latin-1")
        if SANE_REQUEST_ID.fullmatch(supplied):
            return supplied, f"{supplied}-{uuid.uuid4().hex[:8]}"
        log.warning("replaced an X-Request-Id that is not 1-128 characters of A-Z a-z 0-9 . _ : -")
    request_id = new_request_id()
    return request_id, request_id


class RequestIdLogFilter(logging.Filter):
    """Adds `request_id` to every log record (`-` outside a request)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        return True


class RequestContextMiddleware:
    """Gives each request an id and arrival time, and turns an unhandled error into a JSON 500."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id, generation_id = request_ids(scope)
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        state["generation_id"] = generation_id  # the id a generation of this request gets
        state["arrival"] = arrival = time.perf_counter()
        token = request_id_var.set(request_id)
        session = dict(scope.get("headers", ())).get(SESSION_HEADER.lower().encode())
        session_id = session.decode("latin-1").strip() if session is not None else ""
        session_token = session_id_var.set(
            session_id if 0 < len(session_id) <= MAX_SESSION_CHARS else None
        )
        started = False
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal started, status
            if message["type"] == "http.response.start":
                started = True
                status = message["status"]
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = request_id
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            log.exception("unhandled error")
            if not started:
                await send_json_error(
                    send,
                    500,
                    "internal server error",
                    "internal_error",
                    [(REQUEST_ID_HEADER.lower().encode(), request_id.encode())],
                )
        finally:
            if access_log.isEnabledFor(logging.INFO):
                access_log.info(
                    json.dumps(
                        _access_record(request_id, scope, status, time.perf_counter() - arrival)
                    )
                )
            request_id_var.reset(token)
            session_id_var.reset(session_token)


def _access_record(request_id: str, scope: Scope, status: int, seconds: float) -> dict:
    record = {
        "request_id": request_id,
        "method": scope.get("method"),
        "path": scope.get("path"),
        "status": status,
        "duration_ms": round(seconds * 1000, 1),
    }
    generation = scope.get("state", {}).get("generation")
    if generation is not None:
        record.update(
            prompt_tokens=generation.prompt_tokens,
            completion_tokens=generation.completion_tokens,
            finish_reason=generation.finish_reason,
            ttft_ms=generation.ttft_ms,
        )
    return record


class BodyLimitMiddleware:
    """Refuses request bodies over `max_bytes` with 413, whether or not they announce a length.

    The body is read here (up to the limit) and handed on as it came, so the app never sees an
    over-long one and memory per request stays bounded.
    """

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", ())).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(send, int(declared))
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break  # the client left; let the app see it
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                await self._refuse(send, size)
                return
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        delivered = False

        async def replay() -> Message:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, send: Send, size: int) -> None:
        over = "over " if size > self.max_bytes else ""
        await send_json_error(
            send,
            413,
            f"the request body is {over}{size} bytes, above the limit of {self.max_bytes}",
            "request_too_large",
            [(b"connection", b"close")],
        )
