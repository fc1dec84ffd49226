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
or an Alpaca JSON list with `output`.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alpaca_serve.client.api import AsyncAlpacaClient, Retries
from alpaca_serve.client.errors import APIRequestError
from alpaca_serve.core.records import DataFormatError, RawRecord, read_raw_records

# A busy (429) or loading (503) server is asked again, in all up to six times per answer.
MAX_ATTEMPTS = 6


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
    answers = []
    for number, raw in enumerate(_read_records(path), 1):
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


def _read_records(path: Path) -> list[RawRecord]:
    """The objects of a JSON list file or a JSON-lines file (alpaca_serve.core.records reads)."""
    try:
        return list(read_raw_records(path))
    except OSError as err:
        raise EvaluationError(f"cannot read {path}: {err.strerror or err}") from err
    except DataFormatError as err:
        raise EvaluationError(str(err)) from err
