"""What the demo's Leaderboard tab does: every model ranked from people's votes, read live.

Usage:
    handlers = LeaderboardHandlers(AsyncAlpacaClient("http://127.0.0.1:8000"))
    table, status = await handlers.refresh()    # rows of TABLE_HEADERS, and a line under them

The table is `GET /feedback/leaderboard` of the demo's server (people's votes only, never an
automatic judge's): Bradley-Terry scores on Chatbot Arena's Elo-like scale with 95% intervals.
The page fills it when it opens and again on Refresh.
"""

# No `from __future__ import annotations`, as in the other tabs: Gradio reads hints at run time.

from typing import Any

from alpaca_serve.client.api import AsyncAlpacaClient
from alpaca_serve.client.errors import APIRequestError
from alpaca_serve.demo.chat import sentence

TABLE_HEADERS = ["Rank", "Model", "Score", "95% interval", "Votes"]
ROUNDS = 200  # bootstrap rounds behind the intervals
EXPLANATION = (
    "Every model the people voting in the Compare tab have seen, ranked from all their blind "
    "votes: a Bradley-Terry score on Chatbot Arena's Elo-like scale (1000 is the average model; "
    "400 points more means 10 to 1 odds of winning), with a 95% interval from resampling the "
    "votes. "
    'A tie or "both are bad" counts as half a win each way. Automatic judges\' votes are not '
    "counted here."
)


class LeaderboardHandlers:
    """The Leaderboard tab's event handler."""

    def __init__(self, client: AsyncAlpacaClient):
        self.client = client

    async def refresh(self) -> tuple[list[list[Any]], str]:
        """The table's rows, best first, and the line under it: how many votes it is made from,
        or why it is empty."""
        try:
            board = await self.client.leaderboard("human", rounds=ROUNDS)
        except APIRequestError as err:
            return [], f"Could not read the leaderboard: {sentence(err)}"
        table = [
            [
                row["rank"],
                row["model"],
                round(row["score"]),
                f"{row['lower']:.0f} to {row['upper']:.0f}" if row["lower"] is not None else "",
                row["votes"],
            ]
            for row in board["rows"]
        ]
        if not table:
            return [], f"No leaderboard yet: {board['message']}. Vote in the Compare tab."
        status = f"Made from {_votes(board['votes'])} by people between two different models"
        if board["same_model_votes"]:
            status += (
                f" ({_votes(board['same_model_votes'])} between two answers of one model left out)"
            )
        if board.get("excluded_votes"):  # absent from a server older than exclusion
            status += f"; {_votes(board['excluded_votes'])} of excluded sessions left out"
        status += "."
        if board["message"]:
            status += f" Note: {board['message']}."
        return table, status


def _votes(count: int) -> str:
    return f"{count} vote" if count == 1 else f"{count} votes"
