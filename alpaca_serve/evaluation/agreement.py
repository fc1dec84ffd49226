"""How often the judges of a comparison agree: each automatic judge, and people.

Usage:
    rows = judge_agreement(votes_in_store(store, comparison))
    print(format_agreement(rows))

A judge is an automatic judge's session (its machine votes: `reference-judge-token-f1`,
`reference-judge-rouge-l`, `judge-<model>`) or `people`, whose verdict on a pair is the one most
of its human votes gave (a pair whose human votes split evenly has no verdict from people). For
every two judges, over the pairs both gave a verdict on: how many, how many the same (left, right
and tie are three verdicts; both_bad counts as a tie), and Cohen's kappa, the agreement beyond
what two judges voting at random with their own rates would reach (1: always agree, 0: chance).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from itertools import combinations

from alpaca_serve.evaluation.comparison import Vote

PEOPLE = "people"


@dataclass(frozen=True)
class Agreement:
    """Two judges over the pairs both decided."""

    first: str
    second: str
    pairs: int
    same: int
    kappa: float | None  # None when undefined: no pairs, or both judges always gave one verdict

    @property
    def rate(self) -> float | None:
        return self.same / self.pairs if self.pairs else None


def verdicts_by_judge(votes: list[Vote]) -> dict[str, dict[str, str]]:
    """judge -> pair_id -> verdict (left, right or tie)."""
    judges: dict[str, dict[str, str]] = {}
    human: dict[str, Counter[str]] = {}
    for vote in votes:
        verdict = "tie" if vote.winner == "both_bad" else vote.winner
        if vote.voter == "machine":
            judges.setdefault(vote.session_id, {})[vote.pair_id] = verdict
        else:
            human.setdefault(vote.pair_id, Counter())[verdict] += 1
    people = {}
    for pair_id, counts in human.items():
        (top, n), *rest = counts.most_common()
        if not rest or rest[0][1] < n:
            people[pair_id] = top
    if people:
        judges[PEOPLE] = people
    return judges


def cohen_kappa(first: list[str], second: list[str]) -> float | None:
    """Cohen's kappa of two equally long verdict lists (None when chance agreement is 1)."""
    n = len(first)
    if n == 0:
        return None
    observed = sum(a == b for a, b in zip(first, second, strict=True)) / n
    rates_a, rates_b = Counter(first), Counter(second)
    expected = sum(rates_a[v] * rates_b[v] for v in rates_a) / (n * n)
    if expected == 1:
        return None
    return (observed - expected) / (1 - expected)


def judge_agreement(votes: list[Vote]) -> list[Agreement]:
    """Every two judges of `votes` (in name order, people last), with their agreement."""
    judges = verdicts_by_judge(votes)
    names = sorted(judges, key=lambda name: (name == PEOPLE, name))
    rows = []
    for first, second in combinations(names, 2):
        shared = sorted(set(judges[first]) & set(judges[second]))
        a = [judges[first][pair] for pair in shared]
        b = [judges[second][pair] for pair in shared]
        rows.append(
            Agreement(
                first,
                second,
                len(shared),
                sum(x == y for x, y in zip(a, b, strict=True)),
                cohen_kappa(a, b),
            )
        )
    return rows


def format_agreement(rows: list[Agreement]) -> str:
    if not rows:
        return "Agreement: fewer than two judges have voted on this comparison."
    width = max(len(name) for row in rows for name in (row.first, row.second))
    lines = [
        "Agreement between judges (pairs both decided; kappa: Cohen's, beyond chance)",
        f"  {'judge':<{width}}  {'judge':<{width}}  pairs   same  agreement  kappa",
    ]
    for row in rows:
        rate = f"{row.rate:.1%}" if row.rate is not None else "n/a"
        kappa = f"{row.kappa:.2f}" if row.kappa is not None else "n/a"
        lines.append(
            f"  {row.first:<{width}}  {row.second:<{width}}  {row.pairs:>5}  {row.same:>5}"
            f"  {rate:>9}  {kappa:>5}"
        )
    return "\n".join(lines)
