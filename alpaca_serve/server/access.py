"""Access control: API keys (`Authorization: Bearer <key>`, as OpenAI clients send them), the
role each route asks for (alpaca_serve/server/route_roles.py), and per-key limits.

With keys configured (server/keys.py): an open route answers anyone; a user route wants a valid
key (401 without); an admin route an admin key (403 with a user key). Keys are compared in
constant time, against every configured key. `/metrics` is open unless
ALPACA_METRICS_REQUIRE_KEY is set; the demo at /ui does its own login (Gradio's, with an API key
as the password) unless ALPACA_UI_PUBLIC is set, and its calls to the API carry a user key of its
own, with its own rate limit. Without any key configured the server has no roles: every route
answers everyone, but `/admin/*` (which changes what is served or deletes data) answers callers
on this machine (loopback) only.

Who called is put in the request's state (`request.state.caller`, an ApiKey), for the routes'
own checks (`is_admin`) and the audit trail (server/audit.py).
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Iterable
from typing import Any

from starlette.requests import Request
from starlette.routing import Match
from starlette.types import ASGIApp, Receive, Scope, Send

from alpaca_serve.core.asgi_errors import send_json_error
from alpaca_serve.server.keys import ApiKey, KeyRing
from alpaca_serve.server.route_roles import ROUTE_ROLES, UNMATCHED_ROLE, RouteRole, route_keys

# The caller when no key is configured: on this machine, the operator; elsewhere, anybody.
LOCAL_CALLER = ApiKey("local", "admin")
REMOTE_CALLER = ApiKey("anonymous", "user")
ROLE_RANK = {"open": 0, "user": 1, "admin": 2}


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


def route_role(scope: Scope) -> RouteRole:
    """The role the route that will answer `scope` asks for (server/route_roles.py): the strictest
    of its methods' when the method is not one it takes (a 405 to come)."""
    app = scope.get("app")
    method = "GET" if scope.get("method") == "HEAD" else scope.get("method", "GET")
    for route in getattr(getattr(app, "router", None), "routes", ()):
        match, _ = route.matches(scope)
        if match == Match.NONE:
            continue
        keys = route_keys(route)
        if match == Match.FULL:
            wanted = f"{method} {route.path}" if keys[0].split()[0] != "MOUNT" else keys[0]
            if wanted in ROUTE_ROLES:
                return ROUTE_ROLES[wanted]
        # Unlisted (the route table test fails for it) or the wrong method: the strictest.
        return max((ROUTE_ROLES.get(key, "admin") for key in keys), key=ROLE_RANK.__getitem__)
    return UNMATCHED_ROLE


class AccessMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        keys: KeyRing,
        open_prefixes: Iterable[str] = (),
        rate_limit_per_minute: int | None = None,
        own_limits: dict[str, int] | None = None,
        max_in_flight_per_key: int | None = None,
    ):
        """`open_prefixes`: paths answered as open whatever the table says (unprotected
        /metrics, a demo with its own login). `own_limits`: keys (in `keys` already) with a
        rate limit of their own, such as the demo's. `max_in_flight_per_key`: requests one key
        may have open at once (streams included)."""
        self.app = app
        self.keys = keys
        self.max_in_flight = max_in_flight_per_key
        self._in_flight: dict[bytes, int] = {}
        self.open_prefixes = tuple(open_prefixes)
        self.limiter = RateLimiter(rate_limit_per_minute) if rate_limit_per_minute else None
        self.own_limiters = {
            key.encode(): RateLimiter(limit) for key, limit in (own_limits or {}).items()
        }

    def _role(self, scope: Scope) -> RouteRole:
        path = scope["path"]
        if any(
            path == prefix or path.startswith(prefix.rstrip("/") + "/")
            for prefix in self.open_prefixes
        ):
            return "open"
        return route_role(scope)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        if not self.keys.configured:
            caller = LOCAL_CALLER if _is_loopback_scope(scope) else REMOTE_CALLER
            state["caller"] = caller
            if (
                not caller.is_admin
                and scope["path"].startswith("/admin/")
                and self._role(scope) == "admin"
            ):
                await send_json_error(
                    send,
                    403,
                    "with no API keys configured, /admin routes answer only callers on this "
                    "machine: set ALPACA_ADMIN_KEYS to call them from elsewhere",
                    "forbidden",
                )
                return
            await self.app(scope, receive, send)
            return
        role = self._role(scope)
        if role == "open":
            await self.app(scope, receive, send)
            return
        presented = presented_key(scope)
        found = self.keys.lookup(presented) if presented is not None else None
        if found is None:
            message = (
                "missing API key: send Authorization: Bearer <key>"
                if presented is None
                else "invalid API key"
            )
            await send_json_error(
                send, 401, message, "unauthorized", [(b"www-authenticate", b"Bearer")]
            )
            return
        state["caller"] = found
        if role == "admin" and not found.is_admin:
            hint = "" if self.keys.has_admin else " (none is configured: set ALPACA_ADMIN_KEYS)"
            await send_json_error(
                send,
                403,
                f"{scope.get('method', 'GET')} {scope['path']} needs an admin key{hint}; the key "
                f"{found.name!r} is a user key",
                "forbidden",
            )
            return
        assert presented is not None  # a caller was found for it
        await self._limited(presented, scope, receive, send)

    async def _limited(self, presented: bytes, scope: Scope, receive: Receive, send: Send) -> None:
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


def is_loopback(request: Request) -> bool:
    return _is_loopback_scope(request.scope)


def _is_loopback_scope(scope: Scope) -> bool:
    client = scope.get("client")
    host = client[0] if client else ""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def caller_of(request: Request) -> ApiKey:
    """Who made `request`, as AccessMiddleware found (an ApiKey: name and role)."""
    caller = request.scope.get("state", {}).get("caller")
    if caller is None:  # an open route: no key was looked at
        key = presented_key(request.scope)
        keys: KeyRing | None = getattr(request.app.state, "keys", None)
        found = keys.lookup(key) if keys is not None and key is not None else None
        if found is not None:
            return found
        if keys is not None and not keys.configured and is_loopback(request):
            return LOCAL_CALLER
        return REMOTE_CALLER
    return caller


def client_of(request: Request) -> str:
    """Who a per-client limit counts a request against: the key's name; for the demo's own key,
    the visitor it forwards (X-Forwarded-For); with no key configured, the client's address
    (behind a proxy, the proxy's: set keys there)."""
    caller = caller_of(request)
    if caller.forwards_visitors:
        visitor = request.headers.get("x-forwarded-for", "").split(",")[0].strip()
        if visitor:
            return f"visitor:{visitor[:64]}"
    keys: KeyRing | None = getattr(request.app.state, "keys", None)
    if keys is not None and keys.configured:
        return f"key:{caller.name}"
    return f"address:{request.client.host if request.client else '-'}"


def is_admin(request: Request) -> bool:
    """Whether the caller may see folder paths and training arguments: an admin key; with no
    key configured, a caller on this machine (behind a proxy on the same machine, that is
    everyone: set keys there)."""
    return caller_of(request).is_admin


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
