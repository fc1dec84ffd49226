"""How often the judges agree: every automatic judge by its session and people by each pair's
majority, two at a time, over the pairs both decided, with Cohen's kappa."""

from __future__ import annotations

import pytest

from alpaca_serve.evaluation.agreement import (
    PEOPLE,
    cohen_kappa,
    format_agreement,
    judge_agreement,
)
from alpaca_serve.evaluation.comparison import Vote

A, B = "judge-a", "reference-judge-token-f1"
VOTES = [
    *(Vote(p, w, "machine", A) for p, w in [("p1", "left"), ("p2", "left"), ("p3", "right")]),
    Vote("p4", "tie", "machine", A),
    *(Vote(p, w, "machine", B) for p, w in [("p1", "left"), ("p2", "right"), ("p3", "right")]),
    *(Vote(p, w, "machine", B) for p, w in [("p4", "tie"), ("p5", "left")]),  # p5: B alone
    # People: p1 two to one for left; p2 split evenly (no verdict); p3 both bad (a tie).
    *(Vote("p1", w, "human", who) for w, who in [("left", "al"), ("left", "bo"), ("right", "cy")]),
    *(Vote("p2", w, "human", who) for w, who in [("left", "al"), ("right", "bo")]),
    Vote("p3", "both_bad", "human", "al"),
]


def test_every_two_judges_are_compared_on_the_pairs_both_decided():
    rows = {(row.first, row.second): row for row in judge_agreement(VOTES)}
    assert list(rows) == [(A, B), (A, PEOPLE), (B, PEOPLE)]
    # A and B: p1 to p4, the same on p1, p3 and p4. Their rates (A: left 2, right 1, tie 1;
    # B: left 1, right 2, tie 1) make chance agreement 5/16, so kappa = (3/4 - 5/16) / (11/16).
    assert (rows[A, B].pairs, rows[A, B].same, rows[A, B].rate) == (4, 3, 0.75)
    assert rows[A, B].kappa == pytest.approx(7 / 11)
    # People decided p1 (left) and p3 (tie); each judge agrees on p1 only.
    for judge in (A, B):
        row = rows[judge, PEOPLE]
        assert (row.pairs, row.same) == (2, 1)
        assert row.kappa == pytest.approx(1 / 3)


def test_kappa_is_one_for_full_agreement_and_undefined_when_chance_explains_everything():
    assert cohen_kappa(["left", "right", "tie"], ["left", "right", "tie"]) == 1.0
    assert cohen_kappa(["left", "left"], ["left", "left"]) is None
    assert cohen_kappa([], []) is None
    assert cohen_kappa(["left", "right"], ["right", "left"]) == pytest.approx(-1.0)


def test_the_table_names_each_pair_of_judges_and_says_when_there_is_nothing_to_compare():
    table = format_agreement(judge_agreement(VOTES))
    assert "Agreement between judges" in table
    line = next(line for line in table.splitlines() if A in line and B in line)
    assert line.split()[-4:] == ["4", "3", "75.0%", "0.64"]
    only_one = [vote for vote in VOTES if vote.session_id == A]
    assert "fewer than two judges" in format_agreement(judge_agreement(only_one))
