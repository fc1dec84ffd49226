"""Preference data for `alpaca-train --method dpo` (pairs) and `--method kto` (single answers
labelled good or bad): reading, checking and the held-out split.

Usage:
    from alpaca_serve.training.preferences import load_preference_pairs, split_pairs
    pairs = load_preference_pairs("prefs.jsonl")       # JSON lines (or a JSON list) of objects
    train_pairs, eval_pairs = split_pairs(pairs, fraction=0.1, seed=42)
    pairs[0].prompt, pairs[0].chosen, pairs[0].rejected
    examples = load_unpaired_examples("thumbs.jsonl")  # {prompt, completion, label}
    examples[0].prompt, examples[0].completion, examples[0].label   # label: True is desirable

A record is `{prompt, chosen, rejected}`, where `prompt` is the Alpaca prompt text exactly as
`alpaca_serve.core.prompts.format_prompt` builds it (what `alpaca-export --format dpo` writes), or
`{instruction, input, chosen, rejected}`, whose prompt is then built here with the same template
(`input` may be left out). `chosen` and `rejected` are the two responses that follow the prompt,
the first the better one. An unpaired record (KTO, what `alpaca-export --format kto` writes) is
`{prompt, completion, label}` (or `{instruction, input, completion, label}`), `label` true for
a desirable answer (rated up) and false for an undesirable one, as TRL's KTOTrainer reads them.
A record that breaks the rules raises DataFormatError, one line naming
the file, the record's index and, for JSON lines, its line. The files are read by
`alpaca_serve.core.records.read_raw_records`, the one reader of record files. This module imports
no torch.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

from alpaca_serve.core.prompts import PROMPT_NO_INPUT, PROMPT_WITH_INPUT, format_prompt
from alpaca_serve.core.records import DataFormatError, RawRecord, json_type, read_raw_records

# What every Alpaca prompt starts and ends with: the template text around its fields.
_PROMPT_STARTS = (
    PROMPT_NO_INPUT.split("\n\n", 1)[0],
    PROMPT_WITH_INPUT.split("\n\n", 1)[0],
)
_PROMPT_END = PROMPT_NO_INPUT.rsplit("\n\n", 1)[1]  # "### Response:"


@dataclass(frozen=True)
class PreferencePair:
    """One prompt and two responses to it, `chosen` preferred over `rejected`."""

    prompt: str  # the full Alpaca prompt text, ending with "### Response:"
    chosen: str
    rejected: str


@dataclass(frozen=True)
class UnpairedExample:
    """One prompt and one response to it, judged desirable (`label` True) or not."""

    prompt: str  # the full Alpaca prompt text, ending with "### Response:"
    completion: str
    label: bool


class _Prompted(Protocol):
    @property
    def prompt(self) -> str: ...


Example = TypeVar("Example", bound=_Prompted)


def load_preference_pairs(path: str | Path) -> list[PreferencePair]:
    """Read a JSON list or JSON lines file of preference records, checking every record."""
    return [check_preference_record(raw) for raw in read_raw_records(path)]


def load_valid_preference_pairs(
    path: str | Path, on_invalid: Callable[[DataFormatError], None]
) -> list[PreferencePair]:
    """The valid pairs of the file; each invalid record's error goes to `on_invalid`."""
    pairs = []
    for raw in read_raw_records(path, on_invalid=on_invalid):
        try:
            pairs.append(check_preference_record(raw))
        except DataFormatError as err:
            on_invalid(err)
    return pairs


def check_preference_record(raw: RawRecord) -> PreferencePair:
    """The record's prompt and responses, checked; DataFormatError names the record when one is
    wrong."""
    item, where = raw.fields, raw.where
    prompt = _prompt_of(item, where)
    chosen = _response(item, "chosen", where)
    rejected = _response(item, "rejected", where)
    if chosen == rejected:
        raise DataFormatError(f"{where}: 'chosen' and 'rejected' are the same text")
    return PreferencePair(prompt=prompt, chosen=chosen, rejected=rejected)


def load_unpaired_examples(path: str | Path) -> list[UnpairedExample]:
    """Read a JSON list or JSON lines file of unpaired records, checking every record."""
    return [check_unpaired_record(raw) for raw in read_raw_records(path)]


def load_valid_unpaired_examples(
    path: str | Path, on_invalid: Callable[[DataFormatError], None]
) -> list[UnpairedExample]:
    """The valid unpaired records of the file; each invalid record's error goes to
    `on_invalid`."""
    examples = []
    for raw in read_raw_records(path, on_invalid=on_invalid):
        try:
            examples.append(check_unpaired_record(raw))
        except DataFormatError as err:
            on_invalid(err)
    return examples


def check_unpaired_record(raw: RawRecord) -> UnpairedExample:
    """The record's prompt, completion and label, checked; DataFormatError names the record when
    one is wrong."""
    item, where = raw.fields, raw.where
    prompt = _prompt_of(item, where)
    completion = _response(item, "completion", where)
    if "label" not in item:
        raise DataFormatError(f"{where}: 'label' is missing (true: desirable, false: undesirable)")
    label = item["label"]
    if not isinstance(label, bool):
        raise DataFormatError(f"{where}: 'label' must be true or false, got {json_type(label)}")
    return UnpairedExample(prompt=prompt, completion=completion, label=label)


def split_pairs(
    pairs: Sequence[Example], fraction: float, seed: int
) -> tuple[list[Example], list[Example]]:
    """(train, held out): a seeded random `fraction` of the pairs (or unpaired examples; at least
    one) held out.

    The pairs of one prompt go to the same side, so no held-out prompt was trained on. With
    `fraction` 0 nothing is held out. Raises DataFormatError when both sides cannot have a pair.
    """
    if fraction <= 0:
        return list(pairs), []
    prompts = list(dict.fromkeys(pair.prompt for pair in pairs))
    if len(prompts) < 2:
        raise DataFormatError(
            f"{len(pairs)} record(s) with {len(prompts)} prompt(s) cannot be split into training "
            "and held-out records: give more, --eval-data, or --eval-fraction 0"
        )
    held_count = min(len(prompts) - 1, max(1, round(len(prompts) * fraction)))
    held = set(random.Random(seed).sample(prompts, held_count))
    return (
        [pair for pair in pairs if pair.prompt not in held],
        [pair for pair in pairs if pair.prompt in held],
    )


def _prompt_of(item: dict, where: str) -> str:
    """The record's prompt: its `prompt`, or the Alpaca prompt of `instruction` and `input`."""
    if "prompt" in item:
        prompt = item["prompt"]
        if not isinstance(prompt, str):
            raise DataFormatError(f"{where}: 'prompt' must be a string, got {json_type(prompt)}")
        if not prompt.strip():
            raise DataFormatError(f"{where}: 'prompt' is empty")
        if not (prompt.startswith(_PROMPT_STARTS) and prompt.endswith(_PROMPT_END)):
            raise DataFormatError(
                f"{where}: 'prompt' is not an Alpaca prompt (it must start as "
                "alpaca_serve.core.prompts.format_prompt builds it and end with "
                f"{_PROMPT_END!r}); give "
                "'instruction' and 'input' instead to have it built"
            )
        if isinstance(item.get("instruction"), str) and isinstance(item.get("input", ""), str):
            if prompt != format_prompt(item["instruction"], item.get("input", "")):
                raise DataFormatError(
                    f"{where}: 'prompt' is not the Alpaca prompt of its 'instruction' and 'input'"
                )
        return prompt
    if "instruction" not in item:
        raise DataFormatError(f"{where}: needs 'prompt', or 'instruction' (and 'input')")
    instruction = item["instruction"]
    if not isinstance(instruction, str):
        raise DataFormatError(
            f"{where}: 'instruction' must be a string, got {json_type(instruction)}"
        )
    if not instruction.strip():
        raise DataFormatError(f"{where}: 'instruction' is empty")
    input_text = item.get("input", "")
    if not isinstance(input_text, str):
        raise DataFormatError(f"{where}: 'input' must be a string, got {json_type(input_text)}")
    return format_prompt(instruction, input_text)


def _response(item: dict, key: str, where: str) -> str:
    if key not in item:
        raise DataFormatError(f"{where}: '{key}' is missing")
    value = item[key]
    if not isinstance(value, str):
        raise DataFormatError(f"{where}: '{key}' must be a string, got {json_type(value)}")
    if not value.strip():
        raise DataFormatError(f"{where}: '{key}' is empty")
    return value
