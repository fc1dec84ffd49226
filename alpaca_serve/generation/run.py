"""A self-instruct run: ask the teacher, keep what passes, write as it goes, resume after a stop.

Usage:
    from alpaca_serve.generation.run import GenerationPlan, generate
    from alpaca_serve.generation.teacher import TeacherConfig
    plan = GenerationPlan(out=Path("gen.json"), num_instructions=40, concurrency=4)
    summary = generate(plan, TeacherConfig("http://127.0.0.1:8000/v1"))
    print(summary.kept, summary.dropped)     # Counter of the reasons in rules.REASONS

Each request shows the teacher 3 seed tasks (drawn from its number and `seed`, so a resumed run
asks the same) and parses the numbered tasks of its answer (parsing.py). Each task then passes
the rules (rules.py), the content filters if any (`filters`: the server's hooks), and the
deduplication against the seeds and every task kept so far (dedup.py). Up to `concurrency`
requests are out at once; answers are handled one at a time as they come, and each request's
outcome is one line of the journal (journal.py) before the next is handled. When the target is
reached, or the run stops for any reason, the journal is turned into the outputs:

- `gen.json`: Alpaca's format, a JSON list of `{instruction, input, output}`, each record with
  `most_similar_instructions` (instruction: ROUGE-L) and `max_similarity`; `alpaca-train --data`
  reads it as it is;
- `gen.provenance.json`: the teacher(s), the template's and seed file's SHA-256, the seed ids each
  record came from, the times, tokens, estimated cost and the drops by reason.

Running again with the same `out` continues the journal (`gen.journal.jsonl`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from alpaca_serve.generation.dedup import Deduplicator
from alpaca_serve.generation.journal import Journal, JournalError
from alpaca_serve.generation.parsing import Task, parse_answer
from alpaca_serve.generation.recipe import (
    NUM_PROMPT_INSTRUCTIONS,
    PROMPT_TEMPLATE,
    SEED_TASKS,
    SeedTask,
    digest,
    encode_prompt,
    load_seed_tasks,
    load_template,
    sample_examples,
)
from alpaca_serve.generation.rules import (
    BEYOND_TARGET,
    CONTENT_FILTER,
    SIMILAR,
    check_task,
)
from alpaca_serve.generation.teacher import (
    Answer,
    PromptTooLong,
    Teacher,
    TeacherConfig,
    TeacherError,
)

log = logging.getLogger("alpaca.generate")

MAX_EMPTY_ANSWERS = 30  # answers in a row with no task in them before the run gives up


class GenerationError(RuntimeError):
    """The run cannot go on; one line saying why. What it kept is in the journal and outputs."""


@dataclass
class GenerationPlan:
    """What to make: the options of `alpaca-generate` that are not about the teacher."""

    out: Path
    num_instructions: int
    concurrency: int = 4
    seed: int = 42
    threshold: float = 0.7
    seed_tasks: Path = SEED_TASKS
    template: Path = PROMPT_TEMPLATE
    examples: int = NUM_PROMPT_INSTRUCTIONS
    price_per_1k: tuple[float, float] | None = None  # USD per 1,000 prompt, completion tokens
    max_requests: int | None = None  # stop after this many requests in all (None: no limit)
    max_empty_answers: int = MAX_EMPTY_ANSWERS
    filters: Any = None  # a server FilterChain: tasks it refuses are dropped

    @property
    def journal_path(self) -> Path:
        return output_paths(self.out)[1]

    @property
    def provenance_path(self) -> Path:
        return output_paths(self.out)[2]


def output_paths(out: Path) -> tuple[Path, Path, Path]:
    """(records, journal, provenance): gen.json, gen.journal.jsonl, gen.provenance.json."""
    stem = out.with_suffix("") if out.suffix == ".json" else out
    return out, Path(f"{stem}.journal.jsonl"), Path(f"{stem}.provenance.json")


@dataclass
class GenerationSummary:
    kept: int = 0
    parsed: int = 0
    requests: int = 0
    empty_answers: int = 0
    skipped: int = 0  # requests whose prompt did not fit the teacher's context
    dropped: Counter[str] = field(default_factory=Counter)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0  # how long this run has been going
    completion_tokens_this_run: int = 0
    estimated_cost: float | None = None
    complete: bool = False  # the target was reached

    def add(self, entry: dict[str, Any]) -> None:
        self.requests += 1
        self.kept += len(entry["kept"])
        self.parsed += entry["parsed"]
        if entry.get("skipped"):
            self.skipped += 1
        else:
            self.empty_answers += entry["parsed"] == 0
        self.dropped.update(entry["dropped"])
        self.prompt_tokens += entry["prompt_tokens"]
        self.completion_tokens += entry["completion_tokens"]


def generate(
    plan: GenerationPlan, teacher: TeacherConfig, progress: bool = True
) -> GenerationSummary:
    """Run `plan` against the teacher until `num_instructions` tasks are kept; the summary of
    the whole journal. Raises GenerationError (after writing the outputs) when it cannot."""
    return asyncio.run(generate_async(plan, teacher, progress=progress))


async def generate_async(
    plan: GenerationPlan, config: TeacherConfig, progress: bool = True, transport: Any = None
) -> GenerationSummary:
    seeds = load_seed_tasks(plan.seed_tasks)
    template = load_template(plan.template)
    async with Teacher(config, transport=transport) as teacher:
        try:
            model = await teacher.resolve_model()
        except TeacherError as err:
            raise GenerationError(str(err)) from err
        header = {
            "template_sha256": digest(template),
            "seed_tasks_sha256": digest(Path(plan.seed_tasks).read_text(encoding="utf-8")),
            "seed": plan.seed,
            "threshold": plan.threshold,
            "examples": plan.examples,
            "model": model,
            "base_url": teacher.base_url,
            "started": _now(),
        }
        plan.out.parent.mkdir(parents=True, exist_ok=True)
        try:
            journal = Journal.open(plan.journal_path, header)
        except (JournalError, OSError) as err:
            raise GenerationError(str(err)) from err
        run = _Run(plan, teacher, journal, seeds, template)
        try:
            await run.until_done(progress)
        finally:
            try:
                write_outputs(plan, journal)
            except OSError as err:
                log.warning(
                    "cannot write %s (%s): the journal holds every kept task, and the next run "
                    "writes it",
                    plan.out,
                    err.strerror or err,
                )
        return run.summary


class _Run:
    def __init__(
        self,
        plan: GenerationPlan,
        teacher: Teacher,
        journal: Journal,
        seeds: list[SeedTask],
        template: str,
    ):
        self.plan, self.teacher, self.journal = plan, teacher, journal
        self.seeds, self.template = seeds, template
        self.summary = summarize(journal.entries, plan.price_per_1k)
        self.dedup = Deduplicator(threshold=plan.threshold)
        for seed in seeds:
            self.dedup.add(seed.instruction)
        for entry in journal.entries:
            for record in entry["kept"]:
                self.dedup.add(record["instruction"])
        self.empty_in_a_row = 0
        self.started = time.monotonic()

    async def until_done(self, progress: bool) -> None:
        from tqdm import tqdm  # type: ignore[import-untyped]  # no types-tqdm installed

        target = self.plan.num_instructions
        bar = tqdm(
            total=target,
            initial=min(self.summary.kept, target),
            desc="generate",
            unit="task",
            disable=not progress,
        )
        numbers = self._request_numbers()
        in_flight: dict[asyncio.Task[Answer], tuple[int, list[SeedTask], float]] = {}
        try:
            while self.summary.kept < target:
                while len(in_flight) < self.plan.concurrency and self._may_ask(len(in_flight)):
                    number = next(numbers)
                    examples = sample_examples(
                        self.seeds, number, self.plan.seed, self.plan.examples
                    )
                    prompt = encode_prompt(examples, self.template)
                    task = asyncio.create_task(self.teacher.complete(prompt))
                    in_flight[task] = (number, examples, time.monotonic())
                if not in_flight:
                    break  # max_requests reached
                done, _ = await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
                for task in sorted(done, key=lambda t: in_flight[t][0]):
                    number, examples, sent = in_flight.pop(task)
                    seconds = time.monotonic() - sent
                    try:
                        answer = task.result()
                    except PromptTooLong as err:
                        entry = self._skipped(number, examples, str(err), seconds)
                    except TeacherError as err:
                        raise GenerationError(str(err)) from err
                    else:
                        entry = await self._handle(number, examples, answer, seconds)
                    self._record(entry)
                    bar.update(min(len(entry["kept"]), target - bar.n))
                    bar.set_postfix(self._postfix(), refresh=False)
            self.summary.complete = self.summary.kept >= target
        finally:
            for task in in_flight:
                task.cancel()
            await asyncio.gather(*in_flight, return_exceptions=True)
            bar.close()

    def _may_ask(self, in_flight: int) -> bool:
        limit = self.plan.max_requests
        return limit is None or self.summary.requests + in_flight < limit

    def _request_numbers(self) -> Iterator[int]:
        """Request numbers from 0 not yet in the journal: those a stopped run left unanswered
        first, then new ones."""
        done = {entry["request"] for entry in self.journal.entries}
        number = 0
        while True:
            if number not in done:
                yield number
            number += 1

    async def _handle(
        self, number: int, examples: list[SeedTask], answer: Answer, seconds: float
    ) -> dict[str, Any]:
        parsed = parse_answer(
            answer.text,
            first_number=len(examples) + 1,
            finish_reason=answer.finish_reason,
            continues_prompt=answer.api == "completions",
        )
        dropped = Counter(parsed.dropped)
        kept: list[dict[str, Any]] = []
        for task in parsed.tasks:
            reason = check_task(task) or await self._content_filter(task)
            if reason is None:
                decision = self.dedup.check(task.instruction)
                if not decision.kept:
                    reason = SIMILAR
                elif self.summary.kept + len(kept) >= self.plan.num_instructions:
                    reason = BEYOND_TARGET
                else:
                    self.dedup.add(task.instruction)
                    kept.append(
                        {
                            "instruction": task.instruction,
                            "input": task.input,
                            "output": task.output,
                            "most_similar_instructions": {
                                similar.instruction: round(similar.score, 4)
                                for similar in decision.most_similar
                            },
                            "max_similarity": round(decision.max_score, 4),
                        }
                    )
            if reason is not None:
                dropped[reason] += 1
        return self._entry(
            number,
            examples,
            seconds,
            api=answer.api,
            finish_reason=answer.finish_reason,
            prompt_tokens=answer.prompt_tokens,
            completion_tokens=answer.completion_tokens,
            parsed=len(parsed.tasks),
            dropped=dict(dropped),
            kept=kept,
            # What an answer without a single task looked like, for the error that follows.
            **({"answer_start": answer.text[:80]} if not parsed.tasks else {}),
        )

    def _skipped(
        self, number: int, examples: list[SeedTask], reason: str, seconds: float
    ) -> dict[str, Any]:
        """The journal entry of a request the teacher could not answer at all: its prompt did
        not fit the teacher's context. It is not asked again."""
        log.warning("request %d skipped: %s", number, reason)
        return self._entry(number, examples, seconds, skipped="prompt_too_long", answer_start="")

    def _entry(
        self, number: int, examples: list[SeedTask], seconds: float, **outcome: Any
    ) -> dict[str, Any]:
        """One request's journal line: what was asked, of whom, and `outcome` (a request with
        no answer keeps the defaults: no tokens, nothing parsed, dropped or kept)."""
        return {
            "request": number,
            "time": _now(),
            "model": self.teacher.model,
            "api": self.teacher.api,
            "seed_ids": [example.id for example in examples],
            "finish_reason": None,
            "prompt_tokens": 0,
            "completion_tokens": 0,
            "seconds": round(seconds, 3),
            "parsed": 0,
            "dropped": {},
            "kept": [],
            "base_url": self.teacher.base_url,
            **outcome,
        }

    async def _content_filter(self, task: Task) -> str | None:
        chain = self.plan.filters
        if not chain:
            return None
        from alpaca_serve.core.prompts import format_prompt
        from alpaca_serve.server.filters import FilterInput

        prompt = format_prompt(task.instruction, task.input)
        verdict, _ = await chain.check_input(FilterInput(task.instruction, task.input, prompt))
        if verdict.allowed:
            verdict, _ = await chain.check_output(task.output)
        return None if verdict.allowed else CONTENT_FILTER

    def _record(self, entry: dict[str, Any]) -> None:
        try:
            self.journal.append(entry)
        except OSError as err:
            raise GenerationError(
                f"cannot write the journal {self.journal.path} ({err.strerror or err}); what was "
                "kept before is safe in it: free the space and run the same command again"
            ) from err
        self.summary.add(entry)
        self.summary.completion_tokens_this_run += entry["completion_tokens"]
        self.summary.seconds = time.monotonic() - self.started
        self.summary.estimated_cost = _cost(self.summary, self.plan.price_per_1k)
        self.empty_in_a_row = self.empty_in_a_row + 1 if entry["parsed"] == 0 else 0
        if self.empty_in_a_row >= self.plan.max_empty_answers:
            raise GenerationError(
                f"the teacher's last {self.empty_in_a_row} answers held no numbered task "
                f"(the last began {entry.get('answer_start', '')!r}); is {self.teacher.model!r} "
                "an instruction-following model? What was kept is in the journal "
                f"{self.journal.path}"
            )

    def _postfix(self) -> dict[str, Any]:
        elapsed = max(time.monotonic() - self.started, 1e-6)
        return {
            "requests": self.summary.requests,
            "dropped": sum(self.summary.dropped.values()),
            "tok/s": f"{self.summary.completion_tokens_this_run / elapsed:.0f}",
        }


def summarize(
    entries: list[dict[str, Any]], price_per_1k: tuple[float, float] | None = None
) -> GenerationSummary:
    summary = GenerationSummary()
    for entry in entries:
        summary.add(entry)
    summary.estimated_cost = _cost(summary, price_per_1k)
    return summary


def _cost(summary: GenerationSummary, price: tuple[float, float] | None) -> float | None:
    if price is None:
        return None
    return (summary.prompt_tokens * price[0] + summary.completion_tokens * price[1]) / 1000


def write_outputs(plan: GenerationPlan, journal: Journal) -> None:
    """gen.json and gen.provenance.json from the journal, each replaced in one step."""
    records = [record for entry in journal.entries for record in entry["kept"]]
    summary = summarize(journal.entries, plan.price_per_1k)
    provenance = {
        "format": "alpaca-generate-provenance/1",
        "records": len(records),
        "recipe": "Stanford Alpaca self-instruct (generate_instruction.py)",
        "teachers": [
            {"base_url": url, "model": model, "api": api}
            for url, model, api in sorted(
                {(entry["base_url"], entry["model"], entry["api"]) for entry in journal.entries}
            )
        ],
        "model": journal.header["model"],
        "prompt_template_sha256": journal.header["template_sha256"],
        "seed_tasks_sha256": journal.header["seed_tasks_sha256"],
        "sampling_seed": journal.header["seed"],
        "similarity_threshold": journal.header["threshold"],
        "started": journal.header["started"],
        "updated": _now(),
        "requests": summary.requests,
        "skipped_requests": summary.skipped,
        "tokens": {"prompt": summary.prompt_tokens, "completion": summary.completion_tokens},
        "estimated_cost_usd": summary.estimated_cost,
        "parsed": summary.parsed,
        "dropped": dict(sorted(summary.dropped.items())),
        # Record i of gen.json came from request `request`, which showed these seed tasks.
        "origins": [
            {"request": entry["request"], "seed_ids": entry["seed_ids"], "time": entry["time"]}
            for entry in journal.entries
            for _ in entry["kept"]
        ],
    }
    _replace(plan.out, records)
    _replace(plan.provenance_path, provenance)


def _replace(path: Path, data: Any) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(temporary, path)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
