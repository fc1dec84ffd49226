"""Unknown request field names, logged once each, and only so many: one per server.

Usage (the /v1 routes do this; see server/routes/openai_api.py):
    runtime.unknown_fields.note(names)     # logs each new name once, the first `limit` names
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

log = logging.getLogger("alpaca.server")


class UnknownFields:
    """Unknown /v1 field names, each logged once, and at most `limit` of them: a client cannot
    grow this set or the log without bound by sending new names (one 1 MB body holds 80,000)."""

    NAME_CHARS = 64  # of a name, kept and logged

    def __init__(self, limit: int = 100):
        self.limit = limit
        self.logged: set[str] = set()
        self.full = False

    def note(self, names: Iterable[str]) -> None:
        for name in names:
            name = name[: self.NAME_CHARS]
            if self.full or name in self.logged:
                continue
            if len(self.logged) >= self.limit:
                self.full = True
                log.warning(
                    "%d unknown field names of /v1 requests logged: later ones are ignored "
                    "without a word",
                    self.limit,
                )
                return
            self.logged.add(name)
            log.warning("ignoring the unknown field %r of /v1 requests (logged once)", name)
