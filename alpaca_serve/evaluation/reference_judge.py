"""The reference judge: of two answers, the one closer to the evaluation set's reference wins.

Usage:
    references = reference_answers(EVALUATION_SET)          # match_key -> reference answer
    verdict = reference_verdict(pair, references)           # "left", "right", "tie" or None
    token_f1("Paris is the capital.", "The capital is Paris")   # 1.0
    rouge_l("Paris is the capital.", "The capital is Paris")    # 0.5
    with AlpacaClient(url) as store:
        votes = judge_by_reference(comparison, references, store)   # machine votes, cast
        votes = judge_by_reference(comparison, references, store, metric="rouge-l")

The metric is token-overlap F1, SQuAD's answer metric: both texts lower-cased and split into word
tokens (`\\w+`), precision = shared tokens / the answer's tokens, recall = shared tokens / the
reference's tokens, F1 their harmonic mean. The answer with the higher F1 wins; equal F1 (both 0
included) is a tie. It needs no model, so it cannot flip its verdict when the sides are swapped,
as a small model asked to judge does; it rewards answers that say what the reference says, not
style or correctness beyond that.

The other metric, `rouge-l`, is ROUGE-L's F-measure (as self-instruct scored overlap): the longest
common subsequence of the two token lists, over the answer's length (precision) and the
reference's (recall), their harmonic mean. Unlike token F1 it counts words only in the
reference's order.

Its votes go to the server's feedback store as machine votes (voter "machine") of the session
named for the metric (`JUDGE_SESSION` for token F1, `judge_session("rouge-l")`), which every
report names; a second run replaces them rather than adding more.
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


def words(text: str) -> list[str]:
    """The word tokens both metrics compare: lower-cased `\\w+` runs."""
    return TOKEN.findall(text.lower())


def token_f1(answer: str, reference: str) -> float:
    """Token-overlap F1 of `answer` against `reference` (0.0 when either has no tokens)."""
    answer_tokens, reference_tokens = words(answer), words(reference)
    shared = sum((Counter(answer_tokens) & Counter(reference_tokens)).values())
    if shared == 0:
        return 0.0
    precision = shared / len(answer_tokens)
    recall = shared / len(reference_tokens)
    return 2 * precision * recall / (precision + recall)


def rouge_l(answer: str, reference: str) -> float:
    """ROUGE-L F-measure of `answer` against `reference` (0.0 when either has no tokens)."""
    answer_tokens, reference_tokens = words(answer), words(reference)
    if not answer_tokens or not reference_tokens:
        return 0.0
    # The longest common subsequence, one row of the table at a time.
    previous = [0] * (len(reference_tokens) + 1)
    for word in answer_tokens:
        current = [0]
        for j, other in enumerate(reference_tokens, 1):
            current.append(previous[j - 1] + 1 if word == other else max(previous[j], current[-1]))
        previous = current
    common = previous[-1]
    if common == 0:
        return 0.0
    precision = common / len(answer_tokens)
    recall = common / len(reference_tokens)
    return 2 * precision * recall / (precision + recall)


SCORES = {"token-f1": token_f1, "rouge-l": rouge_l}
METRICS = tuple(SCORES)


def judge_session(metric: str) -> str:
    """The feedback-store session of the reference judge by `metric`."""
    return f"reference-judge-{metric}"


def reference_answers(path: Path) -> dict[str, str]:
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


def reference_verdict(
    pair: dict[str, Any], references: dict[str, str], metric: str = "token-f1"
) -> str | None:
    """`left` or `right` for the side of `pair` closer to its reference answer by `metric`, `tie`
    when both are as close, None when the pair's instruction has no reference."""
    reference = references.get(match_key(pair["instruction"], pair["input"]))
    if reference is None:
        return None
    score = SCORES[metric]
    left = round(score(pair["left"]["output"], reference), 9)
    right = round(score(pair["right"]["output"], reference), 9)
    return "tie" if left == right else ("left" if left > right else "right")


def judge_by_reference(
    comparison: dict[str, Any],
    references: dict[str, str],
    store: AlpacaClient,
    progress: bool = True,
    metric: str = "token-f1",
) -> tuple[list[Vote], list[str]]:
    """Judge every pair of `comparison` by `reference_verdict` and cast each verdict in `store`
    as a machine vote of session `judge_session(metric)`. Returns the votes cast and the ids of
    the pairs with no reference answer (not voted on)."""
    from tqdm import tqdm  # type: ignore[import-untyped]  # no types-tqdm installed

    votes, unjudged = [], []
    for pair in tqdm(comparison["pairs"], desc="judging", unit="pair", disable=not progress):
        winner = reference_verdict(pair, references, metric)
        if winner is None:
            unjudged.append(pair["pair_id"])
            continue
        vote = Vote(pair["pair_id"], winner, "machine", judge_session(metric))
        cast_vote(store, pair, vote)
        votes.append(vote)
    return votes, unjudged
