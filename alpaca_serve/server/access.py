"""Access control: API keys (`Authorization: Bearer <key>`, as OpenAI clients send them) and an
optional per-key rate limit.

Keys are compared in constant time, against every configured key. `/health` and `/ready` are
always open (probes carry no secrets); `/metrics` is open unless ALPACA_METRICS_REQUIRE_KEY is set;
the demo at /ui does its own login (Gradio's, with an API key as the password) unless
ALPACA_UI_PUBLIC is set, and its calls to the API carry a key of its own, with its own rate limit.
"""

from __future__ import annotations

import hmac
import ipaddress
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from alpaca_serve.core.asgi_errors import send_json_error

if TYPE_CHECKING:
    from alpaca_serve.server.settings import ServerSettings

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
        own_limits: dict[str, int] | None = None,
        max_in_flight_per_key: int | None = None,
    ):
        """`own_limits`: keys (accepted too) with a rate limit of their own, such as the demo's.
        `max_in_flight_per_key`: requests one key may have open at once (streams included)."""
        self.app = app
        self.max_in_flight = max_in_flight_per_key
        self._in_flight: dict[bytes, int] = {}
        own = own_limits or {}
        self.keys = [key.encode() for key in [*keys, *own]]
        self.open_prefixes = tuple(open_prefixes)
        self.limiter = RateLimiter(rate_limit_per_minute) if rate_limit_per_minute else None
        self.own_limiters = {key.encode(): RateLimiter(limit) for key, limit in own.items()}

    def _is_open(self, path: str) -> bool:
        return path in ALWAYS_OPEN or any(
            path == prefix or path.startswith(prefix.rstrip("/") + "/")
            for prefix in self.open_prefixes
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or self._is_open(scope["path"]):
            await self.app(scope, receive, send)
            return
        presented = presented_key(scope)
        if presented is None or not matches_any(presented, self.keys):
            message = (
                "missing API key: send Authorization: Bearer <key>"
                if presented is None
                else "invalid API key"
            )
            await send_json_error(
                send, 401, message, "unauthorized", [(b"www-authenticate", b"Bearer")]
            )
            return
        limiter = self.own_limiters.get(presented, self.limiter)
        if limiter is not None:
            allowed, wait_s = limiter.allow(presented.decode(errors="replace"))
            if not allowed:
                retry_after = str(max(1, round(wait_s))).encode()
                await send_json_error(
                    send,
                    429,
                    "rate limit of this API key reached; retry later",
                    "rate_limited",
                    [(b"retry-after", retry_after)],
                )
                return
        if self.max_in_flight is None:
            await self.app(scope, receive, send)
            return
        if self._in_flight.get(presented, 0) >= self.max_in_flight:
            await send_json_error(
                send,
                429,
                f"this API key already has {self.max_in_flight} requests open, this server's "
                "limit per key (ALPACA_MAX_IN_FLIGHT_PER_KEY); retry when one finishes",
                "rate_limited",
                [(b"retry-after", b"1")],
            )
            return
        self._in_flight[presented] = self._in_flight.get(presented, 0) + 1
        try:
            await self.app(scope, receive, send)
        finally:
            left = self._in_flight[presented] - 1
            if left:
                self._in_flight[presented] = left
            else:
                del self._in_flight[presented]


def presented_key(scope: Scope) -> bytes | None:
    """The key a request presents (`Authorization: Bearer <key>`), if any."""
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            scheme, _, token = value.partition(b" ")
            if scheme.lower() == b"bearer" and token.strip():
                return token.strip()
    return None


def matches_any(presented: bytes, keys: Iterable[bytes]) -> bool:
    """Whether `presented` is one of `keys`, compared with every key, so that the time taken does
    not tell which (or whether) one matched."""
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(presented, key)
    return matched


def is_loopback(request: Request) -> bool:
    host = request.client.host if request.client else ""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def is_admin(request: Request, settings: ServerSettings) -> bool:
    """Whether the caller may see folder paths and training arguments (and reload adapters when
    admin keys are set): an admin key when admin_keys is set; nobody when only api_keys is;
    a caller on this machine when no key is configured at all."""
    admin_keys = settings.admin_key_list
    if admin_keys:
        presented = presented_key(request.scope) or b""
        return matches_any(presented, (key.encode() for key in admin_keys))
    if settings.api_key_list:
        return False
    return is_loopback(request)


# What /info and /v1/models show an admin only: where files are, and how a model was trained.
ADMIN_ONLY_FIELDS = frozenset({"path", "root", "training_arguments"})


def without_admin_details(value: Any) -> Any:
    """`value` (a JSON body) without the admin-only fields, nor any absolute path in it."""
    if isinstance(value, dict):
        return {
            name: without_admin_details(item)
            for name, item in value.items()
            if name not in ADMIN_ONLY_FIELDS and not _is_absolute_path(item)
        }
    if isinstance(value, list):
        return [without_admin_details(item) for item in value if not _is_absolute_path(item)]
    return value


def _is_absolute_path(value: Any) -> bool:
    return isinstance(value, str) and (value.startswith("/") or value[1:3] in (":\\", ":/"))
