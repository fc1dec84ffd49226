"""How fast feedback may come: per feedback session and per client, so that one script cannot
stuff the votes (one counted vote per session and pair is the store's rule; this bounds how
many sessions and votes one client makes).

Usage:
    limits = FeedbackLimits(per_session=30, per_client=120)   # a minute each; 0: no limit
    refusal = limits.take(session_id="ui-3f9a", client="key:alice")
    if refusal: ...  # (which limit, seconds to wait): answer 429 with Retry-After

A token bucket each, as the per-key request limit (server/access.py): `per_minute` a minute, in
bursts of up to that many. A feedback is taken only when both its session and its client have a
token left, so a refusal spends neither. Sessions and clients idle long enough to be full again
are forgotten once many are tracked, so the memory stays bounded.
"""

from __future__ import annotations

import threading
import time

MAX_TRACKED = 50_000  # buckets kept before the full ones are forgotten


class Buckets:
    def __init__(self, per_minute: int):
        self.rate = per_minute / 60.0
        self.capacity = float(per_minute)
        self._tokens: dict[str, tuple[float, float]] = {}

    def level(self, key: str, now: float) -> float:
        tokens, last = self._tokens.get(key, (self.capacity, now))
        return min(self.capacity, tokens + (now - last) * self.rate)

    def spend(self, key: str, level: float, now: float) -> None:
        self._tokens[key] = (level - 1, now)
        if len(self._tokens) > MAX_TRACKED:
            self._tokens = {
                k: v for k, v in self._tokens.items() if self.level(k, now) < self.capacity
            }

    def wait_s(self, level: float) -> float:
        return (1 - level) / self.rate


class FeedbackLimits:
    def __init__(self, per_session: int, per_client: int):
        """Feedback a minute per session and per client; 0 for no limit."""
        self.sessions = Buckets(per_session) if per_session else None
        self.clients = Buckets(per_client) if per_client else None
        self._lock = threading.Lock()

    def take(
        self, session_id: str | None, client: str, now: float | None = None
    ) -> tuple[str, float] | None:
        """Count one feedback of `session_id` (None: none named) from `client`; None when
        allowed, else which limit ("session" or "client") refused it and the seconds until it
        would be allowed."""
        now = time.monotonic() if now is None else now
        with self._lock:
            checks = []
            if self.clients is not None:
                checks.append(("client", self.clients, client))
            if self.sessions is not None and session_id is not None:
                checks.append(("session", self.sessions, session_id))
            levels = [
                (name, buckets, key, buckets.level(key, now)) for name, buckets, key in checks
            ]
            for name, buckets, _, level in levels:
                if level < 1:
                    return name, buckets.wait_s(level)
            for _, buckets, key, level in levels:
                buckets.spend(key, level, now)
            return None
