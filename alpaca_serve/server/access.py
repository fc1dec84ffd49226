"""Access control: API keys (`Authorization: Bearer <key>`, as OpenAI clients send them) and an
optional per-key rate limit.

Keys are compared in constant time, against every configured key. `/health` and `/ready` are
always open (probes carry no secrets); `/metrics` is open unless ALPACA_METRICS_REQUIRE_KEY is set;
the demo at /ui is open unless ALPACA_UI_REQUIRE_KEY is set (its own calls to the API carry a key).
"""

from __future__ import annotations

import hmac
import json
import time
from collections.abc import Iterable

from starlette.types import ASGIApp, Receive, Scope, Send

ALWAYS_OPEN = ("/health", "/ready")


class RateLimiter:
    """A token bucket per key: `per_minute` requests a minute, in bursts of up to that many."""

    def __init__(self, per_minute: int):
        self.rate = per_minute / 60.0
        self.capacity = float(per_minute)
        self._buckets: dict[str, tuple[float, float]] = {}

    def allow(self, key: str, now: float | None = None) -> tuple[bool, float]:
        """(allowed, seconds until the next request would be allowed)."""
        now = time.monotonic() if now is None else now
        tokens, last = self._buckets.get(key, (self.capacity, now))
        tokens = min(self.capacity, tokens + (now - last) * self.rate)
        if tokens >= 1:
            self._buckets[key] = (tokens - 1, now)
            return True, 0.0
        self._buckets[key] = (tokens, now)
        return False, (1 - tokens) / self.rate


class AccessMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        keys: Iterable[str],
        open_prefixes: Iterable[str] = (),
        rate_limit_per_minute: int | None = None,
    ):
        self.app = app
        self.keys = [key.encode() for key in keys]
        self.open_prefixes = tuple(open_prefixes)
        self.limiter = RateLimiter(rate_limit_per_minute) if rate_limit_per_minute else None

    def _is_open(self, path: str) -> bool:
        return path in ALWAYS_OPEN or any(
            path == prefix or path.startswith(prefix.rstrip("/") + "/")
            for prefix in self.open_prefixes
        )

    def _key_of(self, scope: Scope) -> bytes | None:
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                if scheme.lower() == b"bearer" and token.strip():
                    return token.strip()
        return None

    def _matches(self, presented: bytes) -> bool:
        # Compare with every key, so the time taken does not tell which (or whether) one matched.
        matched = False
        for key in self.keys:
            matched |= hmac.compare_digest(presented, key)
        return matched

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or self._is_open(scope["path"]):
            await self.app(scope, receive, send)
            return
        presented = self._key_of(scope)
        if presented is None or not self._matches(presented):
            message = (
                "missing API key: send Authorization: Bearer <key>"
                if presented is None
                else "invalid API key"
            )
            await _reject(send, 401, message, "unauthorized", [(b"www-authenticate", b"Bearer")])
            return
        if self.limiter is not None:
            allowed, wait_s = self.limiter.allow(presented.decode(errors="replace"))
            if not allowed:
                retry_after = str(max(1, round(wait_s))).encode()
                await _reject(
                    send,
                    429,
                    "rate limit of this API key reached; retry later",
                    "rate_limited",
                    [(b"retry-after", retry_after)],
                )
                return
        await self.app(scope, receive, send)


async def _reject(
    send: Send, status: int, message: str, type_: str, headers: list[tuple[bytes, bytes]]
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
