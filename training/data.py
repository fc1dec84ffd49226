"""Alpaca-format instruction data: the one reader of JSON-list and JSON-lines record files.

Usage:
    from training.data import load_records, read_raw_records
    records = load_records("alpaca_data.json")    # a JSON list of objects
    records = load_records("feedback.jsonl")      # or JSON lines, one object per line
    for raw in read_raw_records("user_oriented_instructions.jsonl"):   # objects, unchecked
        raw.fields["instances"], raw.where        # where: "PATH: record 3 (line 4)"

`load_records` checks every object: `instruction` (a non-empty string) and `output` (a string);
`input` (a string) defaults to "". Other keys, such as the ratings in an `alpaca-export` file, are
ignored. `read_raw_records` only reads the file format, for callers with fields of their own (the
evaluation's instruction and answer files). A file that breaks the rules raises DataFormatError,
one line naming the file, the record's index (counted from 0) and, for JSON lines, its line
(counted from 1). This module imports no torch.
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
class AlpacaRecord:
    """One instruction-following example, with Alpaca's field names."""

    instruction: str
    input: str
    output: str


@dataclass(frozen=True)
class RawRecord:
    """One object of a data file, unchecked, and where it is, for messages."""

    where: str  # "PATH: record INDEX", with " (line LINE)" for JSON lines
    fields: dict[str, Any]


def load_records(path: str | Path) -> list[AlpacaRecord]:
    """Read a JSON list or JSON lines file of Alpaca records, checking every record."""
    return [check_record(raw) for raw in read_raw_records(path)]


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
            error = DataFormatError(f"{where}: expected an object, got {_json_type(item)}")
        else:
            yield RawRecord(where, item)
            continue
        if on_invalid is None:
            raise error
        on_invalid(error)
    if count == 0:
        raise DataFormatError(f"{path}: no records")


def check_record(raw: RawRecord) -> AlpacaRecord:
    """The record's Alpaca fields, checked; DataFormatError names the record when one is wrong."""
    item, where = raw.fields, raw.where
    instruction = item.get("instruction")
    if not isinstance(instruction, str):
        raise DataFormatError(
            f"{where}: 'instruction' must be a string, got {_json_type(instruction)}"
            if "instruction" in item
            else f"{where}: 'instruction' is missing"
        )
    if not instruction.strip():
        raise DataFormatError(f"{where}: 'instruction' is empty")
    input_text = item.get("input", "")
    if not isinstance(input_text, str):
        raise DataFormatError(f"{where}: 'input' must be a string, got {_json_type(input_text)}")
    if "output" not in item:
        raise DataFormatError(f"{where}: 'output' is missing")
    output = item["output"]
    if not isinstance(output, str):
        raise DataFormatError(f"{where}: 'output' must be a string, got {_json_type(output)}")
    return AlpacaRecord(instruction=instruction, input=input_text, output=output)


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


def _json_type(value: Any) -> str:
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
