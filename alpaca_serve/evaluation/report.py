"""Wins, ties and losses from the votes on a comparison, with a 95% interval and a chart.

Usage:
    comparison = load_comparison(Path("comparison.json"))
    tally = tally_votes(comparison, votes_in_store(store, comparison), voter="human")
    print(format_report(comparison, {"human": tally}))
    print(format_exclusions(*excluded_in_store(store)))   # "" when the store excludes nothing
    write_chart(Path("report.png"), comparison, {"human": tally})
    low, high = wilson_interval(9, 16)          # 95% Wilson score interval of 9 wins in 16

Each vote counts once (the feedback store keeps a session's latest vote on a pair). The win
rate of A is taken over decided votes (A or B won); ties and "both bad" are shown beside it.
Human and machine (automatic judge) votes are never mixed. Votes of excluded sessions never
reach a tally (the store does not list them); `format_exclusions` says how many were left out.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alpaca_serve.evaluation.comparison import Vote

Z_95 = 1.959963984540054  # standard normal quantile for a two-sided 95% interval
NO_CATEGORY = "(none)"


@dataclass
class Tally:
    """Votes on a comparison from one kind of voter, from A's side."""

    a_wins: int = 0
    b_wins: int = 0
    ties: int = 0
    both_bad: int = 0
    by_category: dict[str, Counter] = field(default_factory=dict)

    @property
    def votes(self) -> int:
        return self.a_wins + self.b_wins + self.ties + self.both_bad

    @property
    def decided(self) -> int:
        return self.a_wins + self.b_wins

    def as_dict(self) -> dict[str, Any]:
        low, high = wilson_interval(self.a_wins, self.decided)
        return {
            "a_wins": self.a_wins,
            "b_wins": self.b_wins,
            "ties": self.ties,
            "both_bad": self.both_bad,
            "votes": self.votes,
            "a_win_rate": self.a_wins / self.decided if self.decided else None,
            "a_win_rate_ci95": [low, high] if self.decided else None,
            "by_category": {k: dict(v) for k, v in self.by_category.items()},
        }


def wilson_interval(successes: int, trials: int, z: float = Z_95) -> tuple[float, float]:
    """The Wilson score interval for a proportion; (0, 1) when there are no trials."""
    if trials == 0:
        return 0.0, 1.0
    p = successes / trials
    denominator = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def tally_votes(comparison: dict[str, Any], votes: list[Vote], voter: str) -> Tally:
    """Count `voter`'s votes ("human" or "machine") as A wins, B wins, ties and both bad, overall
    and per category (`motivation_app`). Votes on pairs not in the comparison are ignored."""
    pairs = {pair["pair_id"]: pair for pair in comparison["pairs"]}
    tally = Tally()
    for vote in votes:
        pair = pairs.get(vote.pair_id)
        if vote.voter != voter or pair is None:
            continue
        outcome = _outcome_for_a(vote.winner, pair["left_is"])
        setattr(tally, outcome, getattr(tally, outcome) + 1)
        category = pair.get("motivation_app") or NO_CATEGORY
        tally.by_category.setdefault(category, Counter())[outcome] += 1
    return tally


def format_exclusions(votes: int, sessions: int) -> str:
    """The line that says how many votes of excluded sessions the store left out; "" for none."""
    if not votes:
        return ""
    return (
        f"(left out {votes} vote{'' if votes == 1 else 's'} of {sessions} excluded "
        f"session{'' if sessions == 1 else 's'}, on any pair of the feedback store; "
        "GET /admin/sessions/excluded or alpaca-export --list-excluded lists them)"
    )


def format_report(
    comparison: dict[str, Any], tallies: dict[str, Tally], top_categories: int = 10
) -> str:
    """The report as text: one section per kind of voter, machine votes marked as such."""
    label_a, label_b = comparison["labels"]
    lines = [f"Comparison: A = {label_a}, B = {label_b}; {len(comparison['pairs'])} pairs"]
    width = max(len(label_a), len(label_b), len("label"))
    for voter, tally in tallies.items():
        lines.append("")
        if voter == "machine":
            lines.append(f"MACHINE VOTES (automatic judge, not people): {tally.votes} votes")
        else:
            lines.append(f"Human votes: {tally.votes} votes")
        if tally.votes == 0:
            lines.append("  no votes yet")
            continue
        lines.append(
            f"  {'label':<{width}}  {'wins':>5}  {'ties':>5}  {'losses':>6}  {'both bad':>8}"
        )
        lines.append(
            f"  {label_a:<{width}}  {tally.a_wins:>5}  {tally.ties:>5}  "
            f"{tally.b_wins:>6}  {tally.both_bad:>8}"
        )
        lines.append(
            f"  {label_b:<{width}}  {tally.b_wins:>5}  {tally.ties:>5}  "
            f"{tally.a_wins:>6}  {tally.both_bad:>8}"
        )
        if tally.decided:
            low, high = wilson_interval(tally.a_wins, tally.decided)
            lines.append(
                f"  {label_a} win rate over decided votes: {tally.a_wins / tally.decided:.1%} "
                f"({tally.a_wins} of {tally.decided}), 95% CI {low:.1%} to {high:.1%} (Wilson)"
            )
        else:
            lines.append("  no decided votes (all ties or both bad): no win rate")
        lines.append(f"  By category (motivation_app), top {top_categories} by votes:")
        lines.append(
            f"    {'category':<28}  {'votes':>5}  {'A wins':>6}  {'B wins':>6}  "
            f"{'ties':>4}  {'both bad':>8}"
        )
        ranked = sorted(tally.by_category.items(), key=lambda kv: (-sum(kv[1].values()), kv[0]))
        for category, counts in ranked[:top_categories]:
            lines.append(
                f"    {category[:28]:<28}  {sum(counts.values()):>5}  {counts['a_wins']:>6}  "
                f"{counts['b_wins']:>6}  {counts['ties']:>4}  {counts['both_bad']:>8}"
            )
        if len(ranked) > top_categories:
            lines.append(f"    ... and {len(ranked) - top_categories} more categories")
    return "\n".join(lines)


def write_chart(
    path: Path, comparison: dict[str, Any], tallies: dict[str, Tally], top_categories: int = 10
) -> None:
    """A PNG: A wins / ties / both bad / B wins per kind of voter, and per category for the
    first kind of voter that has votes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    label_a, label_b = comparison["labels"]
    outcomes = [
        ("a_wins", f"{label_a} wins", "#2b8cbe"),
        ("ties", "tie", "#bdbdbd"),
        ("both_bad", "both bad", "#636363"),
        ("b_wins", f"{label_b} wins", "#e34a33"),
    ]
    groups = list(tallies)
    detailed = next((v for v in groups if tallies[v].votes), None)
    figure, axes = plt.subplots(
        1, 2 if detailed else 1, figsize=(13 if detailed else 6, 5), squeeze=False
    )
    overall = axes[0][0]
    names = ["machine (judge)" if v == "machine" else v for v in groups]
    for index, (key, text, colour) in enumerate(outcomes):
        counts = [getattr(tallies[v], key) for v in groups]
        positions = [g + (index - 1.5) * 0.2 for g in range(len(groups))]
        bars = overall.bar(positions, counts, width=0.2, label=text, color=colour)
        overall.bar_label(bars, fontsize=8)
    overall.set_xticks(range(len(groups)), names)
    overall.set_ylabel("votes")
    overall.yaxis.set_major_locator(MaxNLocator(integer=True))
    overall.set_title(f"{label_a} (A) vs {label_b} (B)")
    overall.legend(fontsize=8)
    if detailed:
        ranked = sorted(
            tallies[detailed].by_category.items(), key=lambda kv: (-sum(kv[1].values()), kv[0])
        )[:top_categories]
        by_category = axes[0][1]
        left = [0] * len(ranked)
        rows = range(len(ranked))
        for key, text, colour in outcomes:
            counts = [counts[key] for _, counts in ranked]
            by_category.barh(rows, counts, left=left, label=text, color=colour)
            left = [a + b for a, b in zip(left, counts, strict=True)]
        by_category.set_yticks(rows, [name[:28] for name, _ in ranked])
        by_category.invert_yaxis()
        by_category.set_xlabel("votes")
        by_category.xaxis.set_major_locator(MaxNLocator(integer=True))
        title = "machine votes" if detailed == "machine" else f"{detailed} votes"
        by_category.set_title(f"by category ({title}, top {len(ranked)})")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)


def _outcome_for_a(winner: str, left_is: str) -> str:
    if winner in ("tie", "both_bad"):
        return "ties" if winner == "tie" else "both_bad"
    a_won = (winner == "left") == (left_is == "a")
    return "a_wins" if a_won else "b_wins"
