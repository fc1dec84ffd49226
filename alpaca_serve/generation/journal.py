"""The run's journal: one JSON line per answered request, so a stopped run resumes losing nothing.

Usage:
    journal = Journal.open(Path("gen.journal.jsonl"), header)   # creates, or reads and checks
    journal.entries            # the requests answered so far, in the order they were written
    journal.append(entry)      # one line, flushed to disk before it returns

The first line is the run's header (what must stay the same for a resumed run to ask the same
questions: the template's and the seed file's SHA-256, the sampling seed, the threshold, the
number of examples per request, the teacher's model). Each later line is one request with
everything it produced: its number, the seed tasks it showed, the tokens, what was dropped and
why, and the tasks kept. A line is written with one `write` and `fsync`ed: a run killed at any
moment (Ctrl-C, a crash, a full disk) leaves at most one torn last line, which the next open
cuts off, so that request is asked again; nothing kept is lost and nothing is written twice.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

FORMAT = "alpaca-generate-journal/1"
# Header fields a resumed run must share with the run that started the journal.
MUST_MATCH = ("template_sha256", "seed_tasks_sha256", "seed", "threshold", "examples", "model")


class JournalError(RuntimeError):
    """The journal cannot be used for this run; the message names the file and the problem."""


class Journal:
    def __init__(self, path: Path, header: dict[str, Any], entries: list[dict[str, Any]]):
        self.path = path
        self.header = header
        self.entries = entries

    @classmethod
    def open(cls, path: Path, header: dict[str, Any]) -> Journal:
        """The journal at `path`: read (a torn last line cut off) when it exists and matches
        `header`, else created with `header` as its first line."""
        if not path.exists() or path.stat().st_size == 0:
            journal = cls(path, {"format": FORMAT, **header}, [])
            journal._write(journal.header)
            return journal
        lines, good_bytes = _read_lines(path)
        if not lines:
            raise JournalError(f"{path}: no header line; remove it to start over")
        started, *entries = lines
        if started.get("format") != FORMAT:
            raise JournalError(f"{path} is not an alpaca-generate journal; choose another --out")
        for key in MUST_MATCH:
            if key in header and started.get(key) != header[key]:
                raise JournalError(
                    f"{path} was started with {key} {started.get(key)!r}, this run has "
                    f"{header[key]!r}: run with the same options, or choose another --out"
                )
        if good_bytes < path.stat().st_size:
            with path.open("r+b") as file:  # the torn last line of a run that was killed
                file.truncate(good_bytes)
        return cls(path, started, entries)

    def append(self, entry: dict[str, Any]) -> None:
        self.entries.append(entry)
        self._write(entry)

    def _write(self, item: dict[str, Any]) -> None:
        data = (json.dumps(item, ensure_ascii=False) + "\n").encode("utf-8")
        descriptor = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            view = memoryview(data)
            while view:
                written = os.write(descriptor, view)
                view = view[written:]
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def _read_lines(path: Path) -> tuple[list[dict[str, Any]], int]:
    """The JSON lines of the file, and how many bytes they take. Only the last line may be cut
    short or unreadable (a killed writer leaves that); it is left out. A damaged line before
    the last is not the trace of a stop, and raises JournalError rather than losing what
    follows it."""
    items: list[dict[str, Any]] = []
    good = 0
    lines = path.read_bytes().splitlines(keepends=True)
    for number, line in enumerate(lines, start=1):
        try:
            item = json.loads(line) if line.endswith(b"\n") else None
        except ValueError:
            item = None
        if not isinstance(item, dict):
            if number == len(lines):
                break
            raise JournalError(f"{path}: line {number} is damaged; it is not a JSON object")
        items.append(item)
        good += len(line)
    return items, good
