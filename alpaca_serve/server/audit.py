"""The audit trail: every admin action (adapter reloads, imports, deletions, exclusions) as one
log line on the `alpaca.audit` logger, with the name of the key that did it (never the key), and
counted in `alpaca_admin_actions_total{action, key}`.

Usage:
    audit(request, "sessions.delete", session_id="ui-3f9a", ratings=2, comparisons=1)

logs `audit: sessions.delete by teacher (admin) session_id="ui-3f9a" ratings=2 comparisons=1`,
with the request id as every line of this server carries it. Values are written as JSON, so
that a value sent by a caller cannot forge another field or line.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from starlette.requests import Request

from alpaca_serve.server.access import caller_of

log = logging.getLogger("alpaca.audit")


def audit(request: Request, action: str, **details: Any) -> None:
    """Record that the caller of `request` did `action`, with `details` (counts, names)."""
    caller = caller_of(request)
    request.app.state.runtime.metrics.count_admin_action(action, caller.name)
    fields = "".join(f" {name}={json.dumps(value)}" for name, value in details.items())
    log.info("audit: %s by %s (%s)%s", action, caller.name, caller.role, fields)
