"""The leaderboard of every model, as `alpaca-eval leaderboard` prints and charts it.

Usage:
    with AlpacaClient("http://127.0.0.1:8000") as client:
        boards = {"human": client.leaderboard("human", rounds=200, seed=0)}
    print(format_leaderboard(boards["human"]))
    write_leaderboard_chart(Path("leaderboard.png"), boards)

A board is what `GET /feedback/leaderboard` answers: the server computes it from all the votes in
its feedback store (`alpaca_serve.feedback.leaderboard`: Bradley-Terry scores on Chatbot Arena's
Elo-like scale, bootstrap 95% intervals, vote counts). People's and an automatic judge's votes
make separate boards, never one. Votes of excluded sessions are not on a board; its first line
says how many were left out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

CHART_COLOURS = {"human": "#2b8cbe", "machine": "#e34a33"}


def board_title(board: dict[str, Any]) -> str:
    """Whose votes a board is made from, machine votes marked as such."""
    if board["voter"] == "machine":
        return "MACHINE VOTES (automatic judge, not people)"
    return "Human votes"


def format_leaderboard(board: dict[str, Any]) -> str:
    """The board as a text table, best first: rank, model, score, 95% interval, votes, wins,
    losses, ties (ties and "both bad" together)."""
    lines = [f"{board_title(board)}: {_votes_line(board)}"]
    rows = board["rows"]
    if not rows:
        lines.append(f"  {board['message'] or 'no votes yet'}")
        return "\n".join(lines)
    width = max(len("model"), *(len(row["model"]) for row in rows))
    lines.append(
        f"  {'rank':>4}  {'model':<{width}}  {'score':>6}  {'95% interval':>14}  "
        f"{'votes':>5}  {'wins':>5}  {'losses':>6}  {'ties':>5}"
    )
    for row in rows:
        lines.append(
            f"  {row['rank']:>4}  {row['model']:<{width}}  {row['score']:>6.0f}  "
            f"{_interval(row):>14}  {row['votes']:>5}  {row['wins']:>5}  {row['losses']:>6}  "
            f"{row['ties']:>5}"
        )
    if board["message"]:
        lines.append(f"  Note: {board['message']}.")
    return "\n".join(lines)


def write_leaderboard_chart(path: Path, boards: dict[str, dict[str, Any]]) -> None:
    """A PNG: one panel per board, each model's score with its 95% interval as an error bar,
    best at the top, and a line at 1000 (the average model)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    voters = list(boards)
    tallest = max((len(board["rows"]) for board in boards.values()), default=0)
    figure, axes = plt.subplots(
        1, len(voters), figsize=(7 * len(voters), 1.6 + 0.45 * max(tallest, 2)), squeeze=False
    )
    for panel, voter in zip(axes[0], voters, strict=True):
        board = boards[voter]
        rows = board["rows"]
        title = "machine votes (automatic judge)" if voter == "machine" else "people's votes"
        panel.set_title(f"Leaderboard, {title}: {board['votes']} votes")
        if not rows:
            panel.text(0.5, 0.5, board["message"] or "no votes yet", ha="center", wrap=True)
            panel.set_axis_off()
            continue
        positions = range(len(rows))
        scores = [row["score"] for row in rows]
        with_interval = rows[0]["lower"] is not None
        errors = (
            [
                [row["score"] - row["lower"] for row in rows],
                [row["upper"] - row["score"] for row in rows],
            ]
            if with_interval
            else None
        )
        colour = CHART_COLOURS.get(voter, "#636363")
        panel.errorbar(scores, positions, xerr=errors, fmt="o", color=colour, capsize=4)
        for position, row in zip(positions, rows, strict=True):
            panel.annotate(
                f"{row['score']:.0f}",
                (row["score"], position),
                textcoords="offset points",
                xytext=(0, 7),
                ha="center",
                fontsize=8,
            )
        panel.set_yticks(list(positions), [f"{row['model'][:32]} ({row['votes']})" for row in rows])
        panel.set_ylim(len(rows) - 0.5, -0.8)  # best at the top, room for its label
        panel.axvline(1000, color="#bdbdbd", linestyle="--", linewidth=1)
        panel.set_xlabel(
            "score (Bradley-Terry, Elo scale)" + (", with 95% interval" if with_interval else "")
        )
        panel.set_ylabel("model (votes)")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)


def _votes_line(board: dict[str, Any]) -> str:
    text = f"{board['votes']} votes between two models"
    if board["same_model_votes"]:
        text += f" ({board['same_model_votes']} of a model against itself left out)"
    excluded = board.get("excluded_votes", 0)  # absent from a server older than exclusion
    if excluded:
        text += f"; left out {excluded} vote{'' if excluded == 1 else 's'} of excluded sessions"
    if board["rounds"]:
        text += f"; 95% intervals from {board['rounds']} bootstrap rounds, seed {board['seed']}"
    return text


def _interval(row: dict[str, Any]) -> str:
    if row["lower"] is None:
        return "-"
    return f"{row['lower']:.0f} to {row['upper']:.0f}"
