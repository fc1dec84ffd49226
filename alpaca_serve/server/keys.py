"""The server's API keys, each with a role and a name: from the environment, and from a keys file
that is read again when it changes, so that a key can be added or revoked without a restart.

Usage:
    ring = KeyRing(user_keys, admin_keys, keys_file)     # as server/app.py builds it
    caller = ring.lookup(b"s3cret")     # an ApiKey (name, role) or None
    ring.configured                     # whether any key is configured (else the server is open)

Roles: `user` keys may generate and give feedback; `admin` keys may also do what changes the
server or reads everyone's data (the route table is alpaca_serve/server/route_roles.py).
ALPACA_API_KEYS are user keys, ALPACA_ADMIN_KEYS admin keys. A keys file (ALPACA_API_KEYS_FILE)
has a key a line, optionally followed by `role=admin` or `role=user` (the default) and
`name=NAME`; `#` starts a comment:

    k3y-for-the-teacher  role=admin  name=teacher
    k3y-for-alice        name=alice
    k3y-for-bob

A key's name is what the logs and the audit trail show, never the key itself: the given name, or
`key-` and the first 8 hex digits of the key's SHA-256. The file is looked at (one `stat`) at
most once a second; a file that cannot be read or holds no valid key is logged, and the keys read
before stay in force.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

log = logging.getLogger("alpaca.server.keys")

Role = Literal["user", "admin"]
ROLES: tuple[Role, ...] = ("user", "admin")
RECHECK_S = 1.0  # how often, at most, the keys file is looked at


class KeysFileError(ValueError):
    """A keys file line that cannot be read; the message names the file and the line."""


@dataclass(frozen=True)
class ApiKey:
    """Who a request's key says the caller is."""

    name: str
    role: Role
    # A front end that asks for its visitors (the demo): its X-Forwarded-For is believed, so that
    # per-client limits count each visitor, not the front end.
    forwards_visitors: bool = False

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


def key_name(secret: str) -> str:
    """The name a key without one is shown under: never the key, and not enough to guess it."""
    return "key-" + hashlib.sha256(secret.encode()).hexdigest()[:8]


def parse_keys_file(path: Path, text: str) -> dict[str, ApiKey]:
    """The keys a keys file's `text` holds, by secret; KeysFileError for a malformed line."""
    keys: dict[str, ApiKey] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        secret, role, name = fields[0], "user", None
        for field in fields[1:]:
            label, equals, value = field.partition("=")
            if not equals or label not in ("role", "name") or not value:
                raise KeysFileError(
                    f"{path} line {number}: expected KEY [role=user|admin] [name=NAME], "
                    f"got a field {label + equals!r}"
                )
            if label == "role":
                if value not in ROLES:
                    raise KeysFileError(
                        f"{path} line {number}: role must be user or admin, got {value!r}"
                    )
                role = value
            else:
                name = value
        keys[secret] = ApiKey(name or key_name(secret), role)  # type: ignore[arg-type]
    return keys


def split_keys(value: str | None) -> list[str]:
    """The keys of a comma-separated setting, blanks left out."""
    return [key.strip() for key in (value or "").split(",") if key.strip()]


class KeyRing:
    """Every configured key with its role and name; the keys file re-read when it changes."""

    def __init__(
        self,
        user_keys: list[str],
        admin_keys: list[str],
        keys_file: Path | None = None,
        extra: dict[str, ApiKey] | None = None,
    ):
        """`extra`: keys of the server's own making (the demo's), never written anywhere."""
        self._fixed: dict[str, ApiKey] = {key: ApiKey(key_name(key), "user") for key in user_keys}
        self._fixed.update({key: ApiKey(key_name(key), "admin") for key in admin_keys})
        self._fixed.update(extra or {})
        self._file = keys_file
        self._file_state: tuple[int, int, int] | None = None
        self._from_file: dict[str, ApiKey] = {}
        self._checked_at = float("-inf")
        self._lock = threading.Lock()
        self._entries: list[tuple[bytes, ApiKey]] = []
        if keys_file is not None:
            # At start, a bad file is an error (settings validation reads it first).
            self._from_file = parse_keys_file(keys_file, keys_file.read_text())
            self._file_state = _state(keys_file)
        self._rebuild()

    @property
    def configured(self) -> bool:
        """Whether any key is configured: without, the server has no roles (see access.py)."""
        self._maybe_reload()
        return bool(self._entries)

    @property
    def has_admin(self) -> bool:
        self._maybe_reload()
        return any(key.is_admin for _, key in self._entries)

    def lookup(self, presented: bytes) -> ApiKey | None:
        """The key `presented` is, compared with every key in constant time, so that the time
        taken does not tell which (or whether) one matched."""
        self._maybe_reload()
        found = None
        for secret, key in self._entries:
            if hmac.compare_digest(presented, secret):
                found = key
        return found

    def _maybe_reload(self, now: float | None = None) -> None:
        if self._file is None:
            return
        now = time.monotonic() if now is None else now
        if now - self._checked_at < RECHECK_S:
            return
        with self._lock:
            self._checked_at = now
            try:
                state = _state(self._file)
                if state == self._file_state:
                    return
                keys = parse_keys_file(self._file, self._file.read_text())
            except (OSError, UnicodeDecodeError, KeysFileError) as err:
                log.error("keys file not read again, the keys read before stay in force: %s", err)
                self._file_state = None  # try again at the next look
                return
            self._file_state = state
            if not keys and not self._fixed:
                log.error(
                    "keys file %s holds no key; the %d keys read before stay in force",
                    self._file,
                    len(self._from_file),
                )
                return
            added = keys.keys() - self._from_file.keys()
            removed = self._from_file.keys() - keys.keys()
            self._from_file = keys
            self._rebuild()
            log.info(
                "keys file %s read again: %d keys (%d added, %d removed)",
                self._file,
                len(keys),
                len(added),
                len(removed),
            )

    def _rebuild(self) -> None:
        merged = {**self._from_file, **self._fixed}
        self._entries = [(secret.encode(), key) for secret, key in merged.items()]


def _state(path: Path) -> tuple[int, int, int]:
    """What tells that a file changed: its inode (a file replaced by a rename), size, mtime."""
    stat = path.stat()
    return stat.st_ino, stat.st_size, stat.st_mtime_ns
