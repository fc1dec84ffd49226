"""The reference judge: of two answers, the one closer to the evaluation set's reference wins.

Usage:
    references = reference_answers(EVALUATION_SET)          # match_key -> reference answer
    verdict = reference_verdict(pair, references)           # "left", "right", "tie" or None
    token_f1("Paris is the capital.", "The capital is Paris")   # 1.0
    with AlpacaClient(url) as store:
        votes = judge_by_reference(comparison, references, store)   # machine votes, cast

The metric is token-overlap F1, SQuAD's answer metric: both texts lower-cased and split into word
tokens (`\\w+`), precision = shared tokens / the answer's tokens, recall = shared tokens / the
reference's tokens, F1 their harmonic mean. The answer with the higher F1 wins; equal F1 (both 0
included) is a tie. It needs no model, so it cannot flip its verdict when the sides are swapped,
as a small model asked to judge does; it rewards answers that say what the reference says, not
style or correctness beyond that.

Its votes go to the server's feedback store as machine votes (voter "machine") of the session
`JUDGE_SESSION`, which every report names; a second run replaces them rather than adding more.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alpaca_serve.core.records import DataFormatError, read_raw_records
from alpaca_serve.evaluation.answers import EvaluationError
from alpaca_serve.evaluation.comparison import Vote, cast_vote, match_key

if TYPE_CHECKING:
    from alpaca_serve.client.api import AlpacaClient

JUDGE_SESSION = "reference-judge-token-f1"
JUDGE_DESCRIPTION = "reference judge: token-overlap F1 against the evaluation set's answer"
TOKEN = re.compile(r"\w+")


def token_f1(answer: str, reference: str) -> float:
    """Token-overlap F1 of `answer` against `reference` (0.0 when either has no tokens)."""
    answer_tokens = TOKEN.findall(answer.lower())
    reference_tokens = TOKEN.findall(reference.lower())
    shared = sum((Counter(answer_tokens) & Counter(reference_tokens)).values())
    if shared == 0:
        return 0.0
    precision = shared / len(answer_tokens)
    recall = shared / len(reference_tokens)
    return 2 * precision * recall / (precision + recall)


def reference_answers(path: Path) -> dict[tuple[str, str], str]:
    """The reference answer of each instruction (+ input) of a self-instruct evaluation file
    (`instances[0].output`), an Alpaca JSON list (`output`) or a predictions file such as
    text-davinci-003's (`response`), by `match_key`."""
    references = {}
    try:
        for raw in read_raw_records(path):
            record = raw.fields
            first = (record.get("instances") or [record])[0]
            output, instruction = (
                first.get("output", first.get("response")),
                record.get("instruction"),
            )
            if isinstance(output, str) and isinstance(instruction, str):
                references[match_key(instruction, first.get("input") or "")] = output
    except OSError as err:
        raise EvaluationError(f"cannot read {path}: {err.strerror or err}") from err
    except DataFormatError as err:
        raise EvaluationError(str(err)) from err
    return references


def reference_verdict(pair: dict[str, Any], references: dict[tuple[str, str], str]) -> str | None:
    """`left` or `right` for the side of `pair` closer to its reference answer, `tie` when both
    are as close, None when the pair's instruction has no reference."""
    reference = references.get(match_key(pair["instruction"], pair["input"]))
    if reference is None:
        return None
    left = round(token_f1(pair["left"]["output"], reference), 9)
    right = round(token_f1(pair["right"]["output"], reference), 9)
    return "tie" if left == right else ("left" if left > right else "right")


def judge_by_reference(
    comparison: dict[str, Any],
    references: dict[tuple[str, str], str],
    store: AlpacaClient,
    progress: bool = True,
) -> tuple[list[Vote], list[str]]:
    """Judge every pair of `comparison` by `reference_verdict` and cast each verdict in `store`
    as a machine vote of session JUDGE_SESSION. Returns the votes cast and the ids of the pairs
    with no reference answer (not voted on)."""
    from tqdm import tqdm  # type: ignore[import-untyped]  # no types-tqdm installed

    votes, unjudged = [], []
    for pair in tqdm(comparison["pairs"], desc="judging", unit="pair", disable=not progress):
        winner = reference_verdict(pair, references)
        if winner is None:
            unjudged.append(pair["pair_id"])
            continue
        vote = Vote(pair["pair_id"], winner, "machine", JUDGE_SESSION)
        cast_vote(store, pair, vote)
        votes.append(vote)
    return votes, unjudged
