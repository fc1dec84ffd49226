"""The one reader of record files: JSON lists and JSON lines of objects, each with where it is.

Usage:
    from alpaca_serve.core.records import DataFormatError, read_raw_records
    for raw in read_raw_records("user_oriented_instructions.jsonl"):   # objects, unchecked
        raw.fields["instances"], raw.where        # where: "PATH: record 3 (line 4)"

It only reads the file format; callers check the fields they need (Alpaca records in
`alpaca_serve.training.data`, the evaluation's instruction and answer files, preference pairs). A
file that breaks the rules raises DataFormatError, one line naming the file, the record's index
(counted from 0) and, for JSON lines, its line (counted from 1).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class DataFormatError(ValueError):
    """A data file or one of its records is not in the Alpaca format; the message says where."""


@dataclass(frozen=True)
class RawRecord:
    """One object of a data file, unchecked, and where it is, for messages."""

    where: str  # "PATH: record INDEX", with " (line LINE)" for JSON lines
    fields: dict[str, Any]


def read_raw_records(
    path: str | Path, on_invalid: Callable[[DataFormatError], None] | None = None
) -> Iterator[RawRecord]:
    """The objects of a JSON list or JSON-lines file, in file order, each with where it is.

    An item that is not an object, or a JSON line that does not parse, raises DataFormatError; or,
    given `on_invalid`, is passed to it and left out. A file that is not UTF-8, a JSON list that
    does not parse, or a file without a single item always raises. Blank lines are skipped."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: tolerate a byte-order mark
    except UnicodeDecodeError as err:
        raise DataFormatError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from err
    items = _json_list(path, text) if text.lstrip().startswith("[") else _json_lines(path, text)
    count = 0
    for where, item in items:
        count += 1
        if isinstance(item, DataFormatError):
            error = item
        elif not isinstance(item, dict):
            error = DataFormatError(f"{where}: expected an object, got {json_type(item)}")
        else:
            yield RawRecord(where, item)
            continue
        if on_invalid is None:
            raise error
        on_invalid(error)
    if count == 0:
        raise DataFormatError(f"{path}: no records")


def _json_list(path: Path, text: str) -> Iterator[tuple[str, Any]]:
    """(where, item) for each item of a JSON list; the whole file must parse."""
    try:
        items = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataFormatError(
            f"{path}: not valid JSON at line {err.lineno}, column {err.colno}: {err.msg}"
        ) from err
    for index, item in enumerate(items):
        yield f"{path}: record {index}", item


def _json_lines(path: Path, text: str) -> Iterator[tuple[str, Any]]:
    """(where, item) for each non-blank line; a line that does not parse gives the error as
    its item, so that a caller skipping invalid records can go on."""
    index = 0
    for line_number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}: record {index} (line {line_number})"
        index += 1
        try:
            yield where, json.loads(line)
        except json.JSONDecodeError as err:
            yield (
                where,
                DataFormatError(
                    f"{where}: not valid JSON at column {err.colno}: {err.msg} (expected a JSON "
                    "list, or JSON lines with one object per line)"
                ),
            )


def json_type(value: Any) -> str:
    """The JSON name of a parsed value's type, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    return "an object"
