"""The loop's report: each model's win rate against each other, by method of judgement.

Usage:
    with AlpacaClient(url) as store:
        rows, details = collect_rows([Path("compare/comparison.json"), ...], store)
    print(format_table(rows))               # one row per pairing and judge, 95% Wilson intervals
    write_reports(details, Path("report"))  # details.txt and one PNG per pairing

The counting is `alpaca_serve.evaluation.report`'s (`alpaca-eval report`): votes from the feedback
store,
a session's latest vote per pair, the win rate over decided votes (ties and "both bad" beside it),
people's and machines' votes never mixed. A machine row names its judge (the voting session).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alpaca_serve.evaluation.comparison import load_comparison, votes_in_store
from alpaca_serve.evaluation.report import format_report, tally_votes, wilson_interval, write_chart

if TYPE_CHECKING:
    from alpaca_serve.client.api import AlpacaClient
    from alpaca_serve.evaluation.report import Tally


@dataclass
class PairingDetail:
    """One comparison file with its tallies, for the detailed text and the chart."""

    path: Path
    comparison: dict[str, Any]
    tallies: dict[str, Tally]


def collect_rows(
    files: list[Path], store: AlpacaClient
) -> tuple[list[dict[str, Any]], list[PairingDetail]]:
    """Rows of the table (one per comparison and kind of voter) and the details behind them."""
    rows, details = [], []
    for path in files:
        comparison = load_comparison(path)
        votes = votes_in_store(store, comparison)
        model, opponent = comparison["labels"]
        tallies = {}
        for voter in ("human", "machine"):
            tally = tally_votes(comparison, votes, voter)
            tallies[voter] = tally
            judges = sorted({v.session_id for v in votes if v.voter == voter})
            low, high = wilson_interval(tally.a_wins, tally.decided)
            rows.append(
                {
                    "model": model,
                    "opponent": opponent,
                    "judged_by": voter,
                    "judges": judges if voter == "machine" else len(judges),
                    "votes": tally.votes,
                    "wins": tally.a_wins,
                    "ties": tally.ties + tally.both_bad,
                    "losses": tally.b_wins,
                    "win_rate": tally.a_wins / tally.decided if tally.decided else None,
                    "ci95": [low, high] if tally.decided else None,
                    "comparison": str(path),
                }
            )
        details.append(PairingDetail(path, comparison, tallies))
    return rows, details


def format_table(rows: list[dict[str, Any]]) -> str:
    """The rows as a plain-text table; machine rows say MACHINE and name the judge."""
    judged = [_judged_by(row) for row in rows]
    model_width = max([len("model")] + [len(row["model"]) for row in rows])
    opponent_width = max([len("against")] + [len(row["opponent"]) for row in rows])
    judge_width = max([len("judged by")] + [len(text) for text in judged])
    lines = [
        "Win rates over decided votes (ties and both-bad not counted), 95% Wilson intervals",
        f"{'model':<{model_width}}  {'against':<{opponent_width}}  {'judged by':<{judge_width}}  "
        f"{'votes':>5}  {'wins':>4}  {'ties':>4}  {'losses':>6}  {'win rate':>8}  95% interval",
    ]
    for row, judge in zip(rows, judged, strict=True):
        rate = f"{row['win_rate']:.1%}" if row["win_rate"] is not None else "-"
        interval = (
            f"{row['ci95'][0]:.1%} - {row['ci95'][1]:.1%}" if row["ci95"] is not None else "-"
        )
        lines.append(
            f"{row['model']:<{model_width}}  {row['opponent']:<{opponent_width}}  "
            f"{judge:<{judge_width}}  {row['votes']:>5}  {row['wins']:>4}  {row['ties']:>4}  "
            f"{row['losses']:>6}  {rate:>8}  {interval}"
        )
    return "\n".join(lines)


def write_reports(details: list[PairingDetail], out_dir: Path) -> list[Path]:
    """`details.txt` (alpaca-eval's report of each comparison, by category) and a PNG chart per
    comparison; returns the charts' paths."""
    texts, charts = [], []
    for detail in details:
        texts.append(f"{detail.path}\n{format_report(detail.comparison, detail.tallies)}")
        chart = out_dir / f"{detail.path.stem}.png"
        write_chart(chart, detail.comparison, detail.tallies)
        charts.append(chart)
    (out_dir / "details.txt").write_text("\n\n".join(texts) + "\n", encoding="utf-8")
    return charts


def _judged_by(row: dict[str, Any]) -> str:
    if row["judged_by"] == "machine":
        return "MACHINE: " + (", ".join(row["judges"]) or "no judge")
    return "human"
