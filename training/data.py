"""Alpaca-format instruction data: load and check `{instruction, input, output}` records.

Usage:
    from training.data import load_records
    records = load_records("alpaca_data.json")    # a JSON list of objects
    records = load_records("feedback.jsonl")      # or JSON lines, one object per line

Each object needs `instruction` (a non-empty string) and `output` (a string); `input` (a string)
defaults to "". Other keys, such as the ratings in an `alpaca-export` file, are ignored. A file
that breaks these rules raises DataFormatError naming the file, the record's index (counted from
0) and, for JSON lines, its line (counted from 1). This module imports no torch.
"""

from __future__ import annotations

import json
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


def load_records(path: str | Path) -> list[AlpacaRecord]:
    """Read a JSON list or JSON lines file of Alpaca records, checking every record."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: tolerate a byte-order mark
    except UnicodeDecodeError as err:
        raise DataFormatError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from err
    if text.lstrip().startswith("["):
        records = _parse_json_list(path, text)
    else:
        records = _parse_json_lines(path, text)
    if not records:
        raise DataFormatError(f"{path}: no records")
    return records


def _parse_json_list(path: Path, text: str) -> list[AlpacaRecord]:
    try:
        items = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataFormatError(
            f"{path}: not valid JSON at line {err.lineno}, column {err.colno}: {err.msg}"
        ) from err
    return [_to_record(item, f"{path}: record {index}") for index, item in enumerate(items)]


def _parse_json_lines(path: Path, text: str) -> list[AlpacaRecord]:
    records = []
    for line_number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}: record {len(records)} (line {line_number})"
        try:
            item = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataFormatError(
                f"{where}: not valid JSON at column {err.colno}: {err.msg} (expected a JSON "
                "list, or JSON lines with one object per line)"
            ) from err
        records.append(_to_record(item, where))
    return records


def _to_record(item: Any, where: str) -> AlpacaRecord:
    """Check one parsed record; `where` names it in the error message."""
    if not isinstance(item, dict):
        raise DataFormatError(f"{where}: expected an object, got {_json_type(item)}")
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
