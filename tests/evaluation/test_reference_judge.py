"""The reference judge: the answer closer to the evaluation set's reference answer (token-overlap
F1) wins, equal closeness is a tie, swapping the sides never changes the winner, and its votes
reach the feedback store as machine votes of a named session."""

from __future__ import annotations

import pytest

from alpaca_serve.client.api import AlpacaClient
from alpaca_serve.evaluation.comparison import (
    attach_generation_ids,
    build_comparison,
    match_key,
    votes_in_store,
)
from alpaca_serve.evaluation.datasets import EVALUATION_SET
from alpaca_serve.evaluation.reference_judge import (
    JUDGE_SESSION,
    judge_by_reference,
    judge_session,
    reference_answers,
    reference_verdict,
    rouge_l,
    token_f1,
)


def test_token_f1_counts_shared_words_whatever_their_case_order_and_punctuation():
    assert token_f1("Paris is the capital.", "the CAPITAL is Paris") == 1.0
    assert token_f1("", "Paris") == 0.0
    assert token_f1("London", "Paris") == 0.0
    # 1 shared token: precision 1/2, recall 1/1 -> F1 2/3
    assert token_f1("Paris city", "Paris") == pytest.approx(2 / 3)
    # a repeated word counts only as often as the reference has it
    assert token_f1("yes yes yes", "yes no") == pytest.approx(2 * (1 / 3) * (1 / 2) / (5 / 6))


def test_rouge_l_counts_shared_words_only_in_the_references_order():
    # The longest common subsequence of [the cat sat on the mat] and [the cat is on the mat] is
    # [the cat on the mat]: 5 of 6 words each way (the value rouge-score's rougeL gives).
    assert rouge_l("the cat sat on the mat", "The cat is on the mat.") == pytest.approx(5 / 6)
    # The same words in another order: token F1 sees them all, ROUGE-L a subsequence of two.
    assert token_f1("Paris is the capital", "the capital is Paris") == 1.0
    assert rouge_l("Paris is the capital", "the capital is Paris") == pytest.approx(0.5)
    assert rouge_l("", "Paris") == rouge_l("London", "Paris") == 0.0
    assert rouge_l("a b c", "a b c") == 1.0


def test_each_metric_judges_as_its_own_session_and_they_can_disagree():
    references = {match_key("Name the capital.", ""): "the capital of France is Paris"}
    in_order = "capital of France"  # 3 shared words, in order
    shuffled = "Paris France capital the"  # 4 shared words, out of order
    both = pair(in_order, shuffled)
    assert reference_verdict(both, references, "token-f1") == "right"
    assert reference_verdict(both, references, "rouge-l") == "left"
    assert judge_session("token-f1") == JUDGE_SESSION == "reference-judge-token-f1"
    assert judge_session("rouge-l") == "reference-judge-rouge-l"


def pair(left: str, right: str, instruction: str = "Name the capital.", input: str = "") -> dict:
    return {
        "pair_id": "pair-000",
        "instruction": instruction,
        "input": input,
        "left": {"output": left},
        "right": {"output": right},
    }


REFERENCES = {match_key("Name the capital.", ""): "The capital is Paris."}


def test_the_answer_closer_to_the_reference_wins_on_either_side():
    assert reference_verdict(pair("It is Paris, the capital.", "Berlin"), REFERENCES) == "left"
    assert reference_verdict(pair("Berlin", "It is Paris, the capital."), REFERENCES) == "right"


def test_equally_close_answers_tie_and_a_pair_without_reference_gets_no_verdict():
    assert reference_verdict(pair("Berlin", "Rome"), REFERENCES) == "tie"
    assert reference_verdict(pair("Paris", "Paris"), REFERENCES) == "tie"
    assert reference_verdict(pair("Paris", "Rome", instruction="Other."), REFERENCES) is None


def test_the_shipped_evaluation_set_has_a_reference_for_every_instruction():
    references = reference_answers(EVALUATION_SET)
    assert len(references) == 252
    assert references[
        match_key("Make a list of desirable Skills for software engineers to add to LinkedIn.", "")
    ]


def test_its_votes_are_machine_votes_of_a_named_session_in_the_store(scripted_server):
    instructions = [("Name the capital.", ""), ("Name a colour.", "")]
    good = [
        {"instruction": i, "input": x, "output": o, "generation_id": None, "model": None}
        for (i, x), o in zip(instructions, ["The capital is Paris.", "Red"], strict=True)
    ]
    bad = [{**answer, "output": "no idea"} for answer in good]
    comparison = build_comparison(good, bad, "good", "bad", seed=3)
    references = {**REFERENCES, match_key("Name a colour.", ""): "Red is a colour."}
    with AlpacaClient(scripted_server.url) as store:
        attach_generation_ids(comparison, store)
        votes, unjudged = judge_by_reference(comparison, references, store, progress=False)
        stored = votes_in_store(store, comparison)
    assert unjudged == [] and len(votes) == 2
    assert {(v.voter, v.session_id) for v in stored} == {("machine", JUDGE_SESSION)}
    # "good" won both pairs, whichever side it was shown on
    for vote in stored:
        shown = next(p for p in comparison["pairs"] if p["pair_id"] == vote.pair_id)
        assert vote.winner == ("left" if shown["left_is"] == "a" else "right")
