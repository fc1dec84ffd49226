"""Instruction files in, model answers out: the first step of an evaluation.

Usage:
    from alpaca_serve.evaluation.datasets import DAVINCI_ANSWERS, EVALUATION_SET
    items = load_instructions(EVALUATION_SET, limit=20)
    answers, failures = generate_answers("http://127.0.0.1:8000", items, concurrency=4)
    write_jsonl(Path("ours.jsonl"), answers)
    answers = load_answers(DAVINCI_ANSWERS)

Instruction files: the self-instruct user-oriented JSON lines (`instruction`,
`instances[0].input`, `motivation_app`) or an Alpaca JSON list (`instruction`, `input`).
Answer files: what `generate_answers` writes (JSON lines `{id, instruction, input,
motivation_app, output, generation_id, model}`), self-instruct prediction files such as the
text-davinci-003 one (`{prompt, instruction, input, response, target}`: the answer is `response`),
an Alpaca JSON list with `output`, or AlpacaEval model outputs (a JSON list of `{instruction,
output, generator}`, told apart by `generator`, one model's per file: the generator becomes the
answers' `model`).

AlpacaEval's instructions have no input: an instruction with an input is the two joined by a
blank line (`join_instruction`), as AlpacaEval's own file holds the self-instruct ones.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alpaca_serve.client.api import AsyncAlpacaClient, Retries
from alpaca_serve.client.errors import APIRequestError
from alpaca_serve.core.records import DataFormatError, RawRecord, json_type, read_raw_records

# A busy (429) or loading (503) server is asked again, in all up to six times per answer.
MAX_ATTEMPTS = 6
# Between an instruction and its input in AlpacaEval's files: its evaluation set holds the 252
# self-instruct instructions so (tatsu-lab/alpaca_eval, results/*/model_outputs.json).
INPUT_SEPARATOR = "\n\n"


class EvaluationError(Exception):
    """A problem worded for the person running the command, in one line."""


@dataclass
class AnswerFailure:
    """An instruction the server did not answer, and why."""

    id: str
    reason: str


def load_instructions(path: Path, limit: int | None = None) -> list[dict[str, Any]]:
    """`{id, instruction, input, motivation_app}` items from a self-instruct JSON-lines file or an
    Alpaca JSON list, in file order; at most `limit` of them."""
    items = []
    for number, raw in enumerate(_read_records(path), 1):
        record = raw.fields
        instruction = record.get("instruction")
        if not isinstance(instruction, str) or not instruction.strip():
            raise EvaluationError(f"{raw.where}: no instruction")
        if "instances" in record:
            instances = record.get("instances") or [{}]
            input_text = instances[0].get("input", "") or ""
        else:
            input_text = record.get("input", "") or ""
        items.append(
            {
                "id": str(record.get("id", f"item-{number - 1}")),
                "instruction": instruction,
                "input": input_text,
                "motivation_app": record.get("motivation_app"),
            }
        )
        if limit is not None and len(items) == limit:
            break
    return items


def load_answers(path: Path) -> list[dict[str, Any]]:
    """Answers as `{id, instruction, input, motivation_app, output, generation_id, model}`, from
    any of the answer file formats (see the module docstring)."""
    records = _read_records(path)
    if any("generator" in raw.fields for raw in records):
        return _model_outputs(path, records)
    answers = []
    for number, raw in enumerate(records, 1):
        record = raw.fields
        if "output" in record:
            output = record["output"]
        elif "response" in record:
            output = record["response"]
        else:
            raise EvaluationError(
                f"{raw.where}: neither `output` nor `response`; is this an answer file?"
            )
        instruction = record.get("instruction")
        if not isinstance(instruction, str):
            raise EvaluationError(f"{raw.where}: no instruction")
        answers.append(
            {
                "id": str(record.get("id", f"line-{number}")),
                "instruction": instruction,
                "input": record.get("input", "") or "",
                "motivation_app": record.get("motivation_app"),
                # Stripped: the davinci file's leading blank lines would give its side away.
                "output": (output if isinstance(output, str) else json.dumps(output)).strip(),
                "generation_id": record.get("generation_id"),
                "model": record.get("model"),
            }
        )
    return answers


def join_instruction(instruction: str, input_text: str) -> str:
    """An instruction and its input as one text, as AlpacaEval's files hold them: joined by a
    blank line; an instruction without input stays as it is."""
    return f"{instruction}{INPUT_SEPARATOR}{input_text}" if input_text else instruction


def generate_answers(
    server_url: str,
    items: list[dict[str, Any]],
    *,
    model: str | None = None,
    concurrency: int = 4,
    max_new_tokens: int | None = None,
    temperature: float = 0.1,
    api_key: str | None = None,
    timeout_s: float = 600.0,
    progress: bool = True,
) -> tuple[list[dict[str, Any]], list[AnswerFailure]]:
    """Ask the server (`POST /generate`, not streamed) for an answer to each item, at most
    `concurrency` at a time, asking again while it is busy; `model` names a served adapter (None:
    the base). Returns the answers in the items' order and the failures."""
    return asyncio.run(
        _generate_all(
            server_url,
            items,
            model=model,
            concurrency=concurrency,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            api_key=api_key,
            timeout_s=timeout_s,
            progress=progress,
        )
    )


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    """Write `records` as JSON lines (UTF-8, one object a line)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as out:
        for record in records:
            out.write(json.dumps(record, ensure_ascii=False) + "\n")


async def _generate_all(
    server_url,
    items,
    *,
    model,
    concurrency,
    max_new_tokens,
    temperature,
    api_key,
    timeout_s,
    progress,
):
    from tqdm import tqdm  # type: ignore[import-untyped]  # no types-tqdm installed

    limit = asyncio.Semaphore(max(1, concurrency))
    results: list[dict[str, Any] | None] = [None] * len(items)
    failures: list[AnswerFailure] = []
    bar = tqdm(total=len(items), desc="answers", unit="answer", disable=not progress)

    async def answer(index: int, item: dict[str, Any], client: AsyncAlpacaClient) -> None:
        async with limit:
            try:
                reply = await client.generate(
                    item["instruction"],
                    item["input"],
                    temperature=temperature,
                    max_new_tokens=max_new_tokens,
                    model=model,
                )
                results[index] = {
                    **item,
                    "output": reply["text"],
                    "generation_id": reply["id"],
                    "model": reply.get("model"),
                }
            except APIRequestError as err:
                failures.append(AnswerFailure(item["id"], str(err)))
                bar.write(f"failed: {item['id']}: {err}")
            bar.update(1)

    async with AsyncAlpacaClient(
        server_url, api_key, timeout_s=timeout_s, retries=Retries(attempts=MAX_ATTEMPTS)
    ) as client:
        try:
            await asyncio.gather(*(answer(i, item, client) for i, item in enumerate(items)))
        finally:
            bar.close()
    return [r for r in results if r is not None], failures


def _model_outputs(path: Path, records: list[RawRecord]) -> list[dict[str, Any]]:
    """The answers of an AlpacaEval model-outputs file, every item checked: a non-empty
    `instruction`, an `output` and a `generator`, all text, one generator in the file; other keys
    (`dataset`, `datasplit`, ...) are left alone."""
    answers = []
    for number, raw in enumerate(records, 1):
        for key in ("instruction", "output", "generator"):
            value = raw.fields.get(key)
            if isinstance(value, str) and (key == "output" or value.strip()):
                continue
            if key not in raw.fields:
                problem = f"no `{key}`"
            elif isinstance(value, str):
                problem = f"`{key}` is empty"
            else:
                problem = f"`{key}` is {json_type(value)}, not text"
            raise EvaluationError(
                f"{raw.where}: {problem} (an AlpacaEval model-outputs file is a list of "
                "{instruction, output, generator})"
            )
        answers.append(
            {
                "id": str(raw.fields.get("id", f"item-{number - 1}")),
                "instruction": raw.fields["instruction"],
                "input": raw.fields.get("input", "") or "",
                "motivation_app": raw.fields.get("motivation_app"),
                "output": raw.fields["output"].strip(),
                "generation_id": None,
                "model": raw.fields["generator"],
            }
        )
    generators = sorted({answer["model"] for answer in answers})
    if len(generators) > 1:
        raise EvaluationError(
            f"{path}: outputs of {len(generators)} generators ({', '.join(generators[:5])}"
            f"{', ...' if len(generators) > 5 else ''}); a side of a comparison is one model's "
            "outputs"
        )
    return answers


def _read_records(path: Path) -> list[RawRecord]:
    """The objects of a JSON list file or a JSON-lines file (alpaca_serve.core.records reads)."""
    try:
        return list(read_raw_records(path))
    except OSError as err:
        raise EvaluationError(f"cannot read {path}: {err.strerror or err}") from err
    except DataFormatError as err:
        raise EvaluationError(str(err)) from err
