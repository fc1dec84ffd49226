"""The Alpaca prompt templates: the one place their text exists.

Usage: `from alpaca_serve.core.prompts import format_prompt; format_prompt("Name a colour.")`

Training, serving and recovery all import from here, so the prompt a model was trained on is
byte-for-byte the prompt it is served with.
"""

from __future__ import annotations

TEMPLATE_NAME = "alpaca"

PROMPT_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:"
)

PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:"
)

# Section headers of the template. A model that keeps writing after its answer starts a new
# section with one of these; generation stops there so the answer never runs on into it.
SECTION_HEADERS = ("### Instruction:", "### Input:", "### Response:")


def format_prompt(instruction: str, input: str = "") -> str:
    """Build the Alpaca prompt: the with-input template only when `input` is non-empty."""
    if input:
        return PROMPT_WITH_INPUT.format(instruction=instruction, input=input)
    return PROMPT_NO_INPUT.format(instruction=instruction)
