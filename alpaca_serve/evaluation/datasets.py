"""The data files shipped with the project, and where they are once installed.

Usage:
    from alpaca_serve.evaluation.datasets import ALPACA_SAMPLE, DAVINCI_ANSWERS, EVALUATION_SET
    python -m alpaca_serve.evaluation.datasets          # prints the three paths

- EVALUATION_SET: Alpaca's evaluation set, self-instruct's 252 user-oriented instructions
  (Apache-2.0): what `alpaca-eval answer` answers and the demo's examples by default.
- DAVINCI_ANSWERS: text-davinci-003's answers to those instructions (Apache-2.0): the reference
  side of Alpaca's blind comparison, for `alpaca-eval compare --b`.
- ALPACA_SAMPLE: the first 200 records of Stanford Alpaca's data (CC BY-NC 4.0, non-commercial
  use only), for the training recipe, the tests and the training benchmark.

Each file's source and licence is in the README.md beside it (`evaluation/data/`,
`training/sample_data/`). The files are package data, so `pip install` (editable or not) carries
them; nothing here reads a folder outside the installed packages.
"""

from __future__ import annotations

from pathlib import Path

EVALUATION_DATA = Path(__file__).resolve().parent / "data"
EVALUATION_SET = EVALUATION_DATA / "user_oriented_instructions.jsonl"
DAVINCI_ANSWERS = EVALUATION_DATA / "user_oriented_text-davinci-003_predictions.jsonl"

# Training data lives with the training package, in the same installed tree; found by its path,
# not by importing that package (the evaluation sits above the client, beside no trainer).
SAMPLE_DATA = Path(__file__).resolve().parents[1] / "training" / "sample_data"
ALPACA_SAMPLE = SAMPLE_DATA / "alpaca_data_first200.json"


def main() -> None:
    for name, path in (
        ("EVALUATION_SET", EVALUATION_SET),
        ("DAVINCI_ANSWERS", DAVINCI_ANSWERS),
        ("ALPACA_SAMPLE", ALPACA_SAMPLE),
    ):
        print(f"{name}\t{path}")


if __name__ == "__main__":
    main()
