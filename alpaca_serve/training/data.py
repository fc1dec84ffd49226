"""Alpaca-format instruction data: records checked for Alpaca's fields.

Usage:
    from alpaca_serve.training.data import load_records
    records = load_records("alpaca_data.json")    # a JSON list of objects
    records = load_records("feedback.jsonl")      # or JSON lines, one object per line

`load_records` checks every object: `instruction` (a non-empty string) and `output` (a string);
`input` (a string) defaults to "". Other keys, such as the ratings in an `alpaca-export` file, are
ignored. The file format is read by `alpaca_serve.core.records`. A file that breaks the rules
raises DataFormatError,
one line naming the file, the record's index (counted from 0) and, for JSON lines, its line
(counted from 1). This module imports no torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from alpaca_serve.core.records import DataFormatError, RawRecord, json_type, read_raw_records

__all__ = ["AlpacaRecord", "DataFormatError", "RawRecord", "check_record", "load_records"]


@dataclass(frozen=True)
class AlpacaRecord:
    """One instruction-following example, with Alpaca's field names."""

    instruction: str
    input: str
    output: str


def load_records(path: str | Path) -> list[AlpacaRecord]:
    """Read a JSON list or JSON lines file of Alpaca records, checking every record."""
    return [check_record(raw) for raw in read_raw_records(path)]


def check_record(raw: RawRecord) -> AlpacaRecord:
    """The record's Alpaca fields, checked; DataFormatError names the record when one is wrong."""
    item, where = raw.fields, raw.where
    instruction = item.get("instruction")
    if not isinstance(instruction, str):
        raise DataFormatError(
            f"{where}: 'instruction' must be a string, got {json_type(instruction)}"
            if "instruction" in item
            else f"{where}: 'instruction' is missing"
        )
    if not instruction.strip():
        raise DataFormatError(f"{where}: 'instruction' is empty")
    input_text = item.get("input", "")
    if not isinstance(input_text, str):
        raise DataFormatError(f"{where}: 'input' must be a string, got {json_type(input_text)}")
    if "output" not in item:
        raise DataFormatError(f"{where}: 'output' is missing")
    output = item["output"]
    if not isinstance(output, str):
        raise DataFormatError(f"{where}: 'output' must be a string, got {json_type(output)}")
    return AlpacaRecord(instruction=instruction, input=input_text, output=output)
