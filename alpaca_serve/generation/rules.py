"""The rules a generated task must pass before deduplication, each with the reason it names.

Usage:
    from alpaca_serve.generation.rules import check_task, REASONS
    reason = check_task(task)     # None: it passes; else a key of REASONS, e.g. "blacklisted"

Alpaca's rules, as its `generate_instruction.py` applies them: an instruction of 4 to 150 words
(it drops those of 3 words or fewer); none of the words a text model cannot act on (image(s),
graph(s), picture(s), file(s), map(s), draw, plot, go to, video, audio, music, flowchart, diagram:
whole words, any case); not starting with "Write a program"; not starting with punctuation or a
non-ASCII character. Added from the defects found in Alpaca's published data (the
AlpacaDataCleaned project): no empty or `<nooutput>` output, and no input (or instruction) that
points at something the model cannot see: a URL, or an attachment placeholder such as
`<Picture Attached>`. Items holding two tasks are refused by the parser (`merged`).
"""

from __future__ import annotations

import re
import string

from alpaca_serve.generation.parsing import MERGED, TRUNCATED, UNPARSEABLE, Task

MIN_WORDS = 4  # Alpaca drops instructions of 3 words or fewer
MAX_WORDS = 150
BLACKLIST = (
    "image",
    "images",
    "graph",
    "graphs",
    "picture",
    "pictures",
    "file",
    "files",
    "map",
    "maps",
    "draw",
    "plot",
    "go to",
    "video",
    "audio",
    "music",
    "flowchart",
    "diagram",
)
_BLACKLIST = re.compile(r"\b(" + "|".join(re.escape(w) for w in BLACKLIST) + r")\b", re.I)
_NO_OUTPUT = frozenset({"", "<nooutput>", "<no output>", "<no_output>"})
# What a text-only model cannot see: a web address, or a placeholder for an attachment.
_UNSEEABLE = re.compile(
    r"https?://|\bwww\.\w"
    r"|<[^<>\n]{0,40}\b(attach\w*|picture|image|photo|video|audio|file|link|url)\b[^<>\n]{0,40}>"
    r"|\[(attach\w*|picture|image|photo|video|audio|file|link|url)\b[^\[\]\n]{0,40}\]",
    re.I,
)

SIMILAR = "similar"
CONTENT_FILTER = "content_filter"
BEYOND_TARGET = "beyond_target"

# Every reason a task is left out, in the order the run's summary lists them.
REASONS: dict[str, str] = {
    UNPARSEABLE: "not a numbered instruction / input / output",
    TRUNCATED: "cut off by the teacher's length limit",
    MERGED: "two tasks run together",
    "too_short": f"instruction under {MIN_WORDS} words",
    "too_long": f"instruction over {MAX_WORDS} words",
    "blacklisted": "names something a text model cannot do (image, file, draw, ...)",
    "write_a_program": 'starts with "Write a program"',
    "leading_punctuation": "starts with punctuation",
    "non_ascii_start": "starts with a non-ASCII character",
    "empty_output": "empty or <nooutput> output",
    "unseeable_input": "points at a URL or an attachment",
    CONTENT_FILTER: "refused by a content filter (--filters)",
    SIMILAR: "too similar to a seed or a kept task (ROUGE-L > 0.7)",
    BEYOND_TARGET: "kept after the target was reached (not written)",
}


def check_task(task: Task) -> str | None:
    """None when `task` passes every rule; else the first rule it breaks (a key of REASONS)."""
    instruction = task.instruction
    words = len(instruction.split())
    if words < MIN_WORDS:
        return "too_short"
    if words > MAX_WORDS:
        return "too_long"
    if _BLACKLIST.search(instruction):
        return "blacklisted"
    if instruction.startswith("Write a program"):
        return "write_a_program"
    if instruction[0] in string.punctuation:
        return "leading_punctuation"
    if not instruction[0].isascii():
        return "non_ascii_start"
    if task.output.strip().lower() in _NO_OUTPUT:
        return "empty_output"
    if _UNSEEABLE.search(task.input) or _UNSEEABLE.search(instruction):
        return "unseeable_input"
    return None
