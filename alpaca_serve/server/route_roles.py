"""Who may call each route: the route table's roles, as data.

    open   anyone, with or without a key (probes carry no secrets)
    user   any API key: ask, and give feedback on what one was shown
    admin  an admin key: change what is served, store answers under any model's name, read
           everyone's feedback, delete or exclude a session's data, protected metrics

Every route of the app must be listed here (a test walks the route table and fails for one that
is not), as "METHOD /path" (the path as declared, with its {parameters}), or "MOUNT /path" for a
mounted application. AccessMiddleware (server/access.py) enforces it. Two routes depend on the
settings: /metrics is open unless ALPACA_METRICS_REQUIRE_KEY is set (then admin), and the demo
at /ui does its own login unless ALPACA_UI_REQUIRE_KEY is set.
"""

from __future__ import annotations

from typing import Literal

RouteRole = Literal["open", "user", "admin"]

ROUTE_ROLES: dict[str, RouteRole] = {
    # Probes.
    "GET /health": "open",
    "GET /ready": "open",
    # Asking, and rating what one was shown.
    "POST /generate": "user",
    "POST /v1/completions": "user",
    "POST /v1/chat/completions": "user",
    "GET /v1/models": "user",
    "GET /info": "user",
    "POST /tokenize": "user",
    "POST /detokenize": "user",
    "POST /feedback": "user",
    "GET /feedback/leaderboard": "user",  # scores only, as the demo shows them
    "GET /openapi.json": "user",
    "GET /docs": "user",
    "GET /docs/oauth2-redirect": "user",
    "GET /redoc": "user",
    "MOUNT /ui": "user",
    # Everyone's data, and what changes the server.
    "GET /feedback/summary": "admin",
    "GET /feedback/comparisons": "admin",  # lists every session's votes
    "POST /generations/import": "admin",  # answers under any model's name
    "POST /admin/adapters/reload": "admin",
    "DELETE /admin/sessions/{session_id}": "admin",
    "POST /admin/sessions/{session_id}/exclude": "admin",
    "DELETE /admin/sessions/{session_id}/exclude": "admin",
    "GET /admin/sessions/excluded": "admin",
    "GET /metrics": "admin",  # when protected (ALPACA_METRICS_REQUIRE_KEY); else open
}

# What a path no route answers (a 404 to come) asks for: a key, so that with keys configured
# nothing is told about the server to a caller without one.
UNMATCHED_ROLE: RouteRole = "user"


def route_keys(route: object) -> list[str]:
    """The table keys of one entry of `app.routes`: "METHOD /path" per method (HEAD counted as
    GET), "MOUNT /path" for a mounted application."""
    path = getattr(route, "path", "")
    methods = getattr(route, "methods", None)
    if methods is None:
        return [f"MOUNT {path}"]
    return sorted({f"{'GET' if method == 'HEAD' else method} {path}" for method in methods})
