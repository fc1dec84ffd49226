"""AlpacaEval's files out of this project's answers and votes: model outputs and annotations.

Usage:
    outputs = model_outputs(load_answers(Path("ours.jsonl")), generator="ours")
    write_json_list(Path("model_outputs.json"), outputs)
    annotations = vote_annotations(comparison, votes_in_store(store, comparison))
    write_json_list(Path("annotations.json"), annotations)

The formats are AlpacaEval's (tatsu-lab/alpaca_eval 0.6.6, commit cd543a1): README.md, the
published results/<model>/model_outputs.json and results/<model>/<annotator>/annotations.json,
and src/alpaca_eval/annotators/pairwise_evaluator.py for the preference values.

- Model outputs: a JSON list of `{instruction, output, generator}`. AlpacaEval has no input
  field: an instruction with an input is written joined by a blank line (`join_instruction`),
  as its evaluation set holds self-instruct's 252 instructions. Reading them back is
  `alpaca_serve.evaluation.answers.load_answers`.
- Annotations: a JSON list of `{instruction, output_1, generator_1, output_2, generator_2,
  annotator, preference}`, one per vote. As in AlpacaEval, output_1 is the reference (side B of
  the comparison, text-davinci-003 by default) and output_2 the model evaluated (side A), so the
  share of preference 2 is A's win rate. Preference: 1.0 for output_1, 2.0 for output_2, 1.5
  when neither is preferred: a tie, and "both bad" too (as `agreement` counts it: no side is
  preferred). `annotator` is "human" for people and the judge's session (`judge-MODEL`,
  `reference-judge-token-f1`, ...) for machines.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from alpaca_serve.evaluation.answers import join_instruction
from alpaca_serve.evaluation.comparison import Vote

HUMAN_ANNOTATOR = "human"
NO_PREFERENCE = 1.5  # AlpacaEval's value for a draw


def model_outputs(answers: list[dict[str, Any]], generator: str) -> list[dict[str, str]]:
    """AlpacaEval model outputs of `answers` (as `load_answers` gives them), in their order."""
    return [
        {
            "instruction": join_instruction(answer["instruction"], answer["input"]),
            "output": answer["output"],
            "generator": generator,
        }
        for answer in answers
    ]


def vote_annotations(comparison: dict[str, Any], votes: list[Vote]) -> list[dict[str, Any]]:
    """One AlpacaEval annotation per vote on `comparison`, in the order of its pairs, people's
    votes before machines' (see the module docstring for the fields)."""
    label_a, label_b = comparison["labels"]
    position = {pair["pair_id"]: number for number, pair in enumerate(comparison["pairs"])}
    pairs = {pair["pair_id"]: pair for pair in comparison["pairs"]}
    annotations = []
    for vote in sorted(
        votes, key=lambda v: (position[v.pair_id], v.voter != "human", v.session_id)
    ):
        pair = pairs[vote.pair_id]
        side_a, side_b = _side(pair, "a"), _side(pair, "b")
        annotations.append(
            {
                "instruction": join_instruction(pair["instruction"], pair["input"]),
                "output_1": side_b["output"],
                "generator_1": label_b,
                "output_2": side_a["output"],
                "generator_2": label_a,
                "annotator": HUMAN_ANNOTATOR if vote.voter == "human" else vote.session_id,
                "preference": preference(pair, vote.winner),
            }
        )
    return annotations


def preference(pair: dict[str, Any], winner: str) -> float:
    """AlpacaEval's preference for a vote `winner` (left, right, tie or both_bad) on `pair`:
    1.0 when side B (output_1) won, 2.0 when side A (output_2) won, else 1.5."""
    if winner not in ("left", "right"):
        return NO_PREFERENCE
    winner_is = pair["left_is"] if winner == "left" else {"a": "b", "b": "a"}[pair["left_is"]]
    return 2.0 if winner_is == "a" else 1.0


def write_json_list(path: Path, records: list[dict[str, Any]]) -> None:
    """Write `records` as one JSON list (UTF-8, an item a few lines), as AlpacaEval reads them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(records, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


def _side(pair: dict[str, Any], origin: str) -> dict[str, Any]:
    """The side of `pair` that came from answer file `origin` ("a" or "b")."""
    return pair["left"] if pair["left_is"] == origin else pair["right"]
