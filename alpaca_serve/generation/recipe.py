"""Alpaca's self-instruct recipe: the seed tasks, the request, and how a teacher is asked.

Usage:
    from alpaca_serve.generation.recipe import encode_prompt, load_seed_tasks, sample_examples
    seeds = load_seed_tasks()                       # the 175 human-written tasks, shipped
    examples = sample_examples(seeds, request=17, seed=42)   # the same 3 for the same request
    prompt = encode_prompt(examples)                # ends with "4. Instruction:"

The facts are Stanford Alpaca's `generate_instruction.py` as published: each request shows the
teacher 3 seed tasks (sampled from the seeds only, never from generated ones) under `prompt.txt`,
each as `###\\nN. Instruction: ...\\nN. Input:\\n...\\nN. Output:\\n...` with `<noinput>` for an
empty input, and ends with the next number's `Instruction:` for the teacher to continue; sampling
at temperature 1.0 and top_p 1.0, up to 3072 tokens, stopping at `"\\n20"` or `"20."`. Both files
are in `data/` with their licence (Apache-2.0).
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

DATA_DIR = Path(__file__).parent / "data"
SEED_TASKS = DATA_DIR / "seed_tasks.jsonl"
PROMPT_TEMPLATE = DATA_DIR / "prompt.txt"

NUM_PROMPT_INSTRUCTIONS = 3  # seed examples per request
TASKS_PER_REQUEST = 20  # what the request asks for: the examples count among them
TEMPERATURE = 1.0
TOP_P = 1.0
MAX_TOKENS = 3072
STOP = ("\n20", "20.")
NO_INPUT = "<noinput>"


class RecipeError(ValueError):
    """A seed file or template that cannot be used; the message names the file and the problem."""


@dataclass(frozen=True)
class SeedTask:
    """One human-written task: its first instance is what a request shows."""

    id: str
    instruction: str
    input: str
    output: str


def load_seed_tasks(path: str | Path = SEED_TASKS) -> list[SeedTask]:
    """The seed tasks of a JSON-lines file in self-instruct's format (`id`, `instruction`,
    `instances: [{input, output}]`), or of Alpaca records (`instruction`, `input`, `output`)."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as err:
        raise RecipeError(f"cannot read the seed tasks {path}: {err.strerror or err}") from err
    seeds = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            instance = item["instances"][0] if "instances" in item else item
            seed = SeedTask(
                id=str(item.get("id", f"line-{number}")),
                instruction=_text(item["instruction"]),
                input=_text(instance.get("input", "")),
                output=_text(instance["output"]),
            )
        except (ValueError, KeyError, IndexError, TypeError) as err:
            raise RecipeError(
                f"{path}: line {number} is not a seed task "
                "({id, instruction, instances: [{input, output}]}): "
                f"{type(err).__name__}: {err}"
            ) from err
        if not seed.instruction.strip():
            raise RecipeError(f"{path}: line {number} has an empty instruction")
        seeds.append(seed)
    if len(seeds) < NUM_PROMPT_INSTRUCTIONS:
        raise RecipeError(
            f"{path}: {len(seeds)} seed tasks; a request shows {NUM_PROMPT_INSTRUCTIONS}"
        )
    return seeds


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return value


def load_template(path: str | Path = PROMPT_TEMPLATE) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise RecipeError(f"cannot read the prompt template {path}: {err.strerror or err}") from err


def digest(text: str) -> str:
    """SHA-256 of a text, hex: the template's and the seed file's identity in provenance."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def sample_examples(
    seeds: list[SeedTask], request: int, seed: int, count: int = NUM_PROMPT_INSTRUCTIONS
) -> list[SeedTask]:
    """The seed tasks request number `request` shows: drawn by a generator of its own, so that a
    run that resumes, or runs its requests in another order, asks the same questions."""
    return random.Random(f"{seed}:{request}").sample(seeds, count)


def encode_prompt(examples: list[SeedTask], template: str | None = None) -> str:
    """The request for new tasks: the template, the examples numbered from 1, and the next
    number's `Instruction:` for the teacher to continue."""
    prompt = (load_template() if template is None else template) + "\n"
    for number, task in enumerate(examples, start=1):
        instruction = re.sub(r"\s+", " ", task.instruction).strip().rstrip(":")
        input_text = task.input if task.input else NO_INPUT
        prompt += "###\n"
        prompt += f"{number}. Instruction: {instruction}\n"
        prompt += f"{number}. Input:\n{input_text}\n"
        prompt += f"{number}. Output:\n{task.output}\n"
    prompt += "###\n"
    prompt += f"{len(examples) + 1}. Instruction:"
    return prompt
