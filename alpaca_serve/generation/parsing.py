"""Reading a teacher's answer: the numbered tasks in it, and why the others were left out.

Usage:
    from alpaca_serve.generation.parsing import parse_answer
    parsed = parse_answer(text, first_number=4, finish_reason="stop", continues_prompt=True)
    parsed.tasks       # [Task(instruction, input, output)], in the answer's order
    parsed.dropped     # Counter({"truncated": 1, "unparseable": 2})

The answer continues the request, which ended with `4. Instruction:` (Completions API), or, from
a chat model, restates it or starts with a sentence of its own before the first numbered task.
Items are separated by `###`, as in the examples. An item is a task when it has exactly one
`N. Instruction:`, one `N. Input:` and one `N. Output:`, in that order and with the same number
N; an item without its `Input:` line has no input (Alpaca's code dropped it). As in Alpaca's
code, the last item is dropped when the answer was cut by its length
(`finish_reason` "length"), since it is likely incomplete. Unlike Alpaca's code, the numbers need
not follow on from the examples (chat models renumber), and an item holding a second task (a
missing `###`, as in `...\\n##\\n18. Instruction: ...`) is counted as `merged`, not parsed into
one task that carries the next.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

# Spellings of "no input" that teachers use (Alpaca's data has several); all mean an empty input.
NO_INPUT_SPELLINGS = frozenset(
    {"<noinput>", "<no input>", "<no_input>", "noinput", "no input", "<none>", "none", "n/a"}
)

_LABEL = re.compile(r"(?m)(\d+)\s*\.\s+(Instruction|Input|Output)\s*:")
_FIRST_INSTRUCTION = re.compile(r"\d+\s*\.\s+Instruction\s*:")

UNPARSEABLE = "unparseable"
TRUNCATED = "truncated"
MERGED = "merged"


@dataclass(frozen=True)
class Task:
    """One generated task, Alpaca's three fields, stripped; `input` is "" for no input."""

    instruction: str
    input: str
    output: str


@dataclass
class ParsedAnswer:
    tasks: list[Task] = field(default_factory=list)
    dropped: Counter[str] = field(default_factory=Counter)


def parse_answer(
    text: str, first_number: int, finish_reason: str | None, continues_prompt: bool = True
) -> ParsedAnswer:
    """The tasks of one answer. `continues_prompt`: the answer is the continuation of a prompt
    that ended with `{first_number}. Instruction:` (Completions API); otherwise (chat) it starts
    at its own first `N. Instruction:`, and anything before that is a preamble, ignored."""
    if continues_prompt:
        text = f"{first_number}. Instruction:" + text
    else:
        start = _FIRST_INSTRUCTION.search(text)
        text = text[start.start() :] if start else f"{first_number}. Instruction:" + text
    items = text.split("###")
    parsed = ParsedAnswer()
    for position, item in enumerate(items):
        if not item.strip():
            continue
        if position == len(items) - 1 and finish_reason == "length":
            parsed.dropped[TRUNCATED] += 1
            continue
        task_or_reason = parse_item(item)
        if isinstance(task_or_reason, Task):
            parsed.tasks.append(task_or_reason)
        else:
            parsed.dropped[task_or_reason] += 1
    return parsed


def parse_item(item: str) -> Task | str:
    """One `###`-separated item: a Task, or the reason it is none (`unparseable`, `merged`)."""
    labels = list(_LABEL.finditer(item))
    kinds = [match.group(2) for match in labels]
    if kinds.count("Instruction") > 1:
        return MERGED
    if kinds == ["Instruction", "Output"]:  # no input line: no input
        labels.insert(1, labels[1])
    elif kinds != ["Instruction", "Input", "Output"]:
        return UNPARSEABLE
    if len({match.group(1) for match in labels}) != 1:
        return UNPARSEABLE
    instruction = item[labels[0].end() : labels[1].start()].strip()
    input_text = item[labels[1].end() : labels[2].start()].strip() if kinds[1] == "Input" else ""
    output = item[labels[2].end() :].strip()
    if input_text.lower() in NO_INPUT_SPELLINGS:
        input_text = ""
    return Task(instruction, input_text, output)
