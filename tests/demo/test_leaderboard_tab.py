"""The Leaderboard tab's handler called directly, as Gradio calls it, against a server on the
scripted engine: the table and the line under it come from `GET /feedback/leaderboard`, which
leaves excluded sessions' votes out and says how many."""

from __future__ import annotations

import asyncio

import pytest

from alpaca_serve.client.api import AlpacaClient, AsyncAlpacaClient
from alpaca_serve.demo.leaderboard import TABLE_HEADERS, LeaderboardHandlers
from alpaca_serve.feedback.records import ComparisonFeedback
from tests.support import free_port, start_server


@pytest.fixture(scope="module")
def server(request, tmp_path_factory):
    server = start_server(request, "scripted", {}, tmp_path_factory.mktemp("leaderboard-tab"))
    try:
        yield server
    finally:
        server.stop()


def refresh(url: str) -> tuple[list[list], str]:
    return asyncio.run(LeaderboardHandlers(AsyncAlpacaClient(url)).refresh())


def test_the_tab_shows_the_models_best_first_and_how_many_votes_it_is_made_from(server):
    assert refresh(server.url) == (
        [],
        "No leaderboard yet: no votes of people yet. Vote in the Compare tab.",
    )
    answers = [{"instruction": f"Question {n}?", "output": f"Answer {n}."} for n in range(3)]
    with AlpacaClient(server.url) as client:
        ours = client.import_generations("ours", answers)
        theirs = client.import_generations("theirs", answers)
        for n in range(3):
            client.send_comparison([ours[n], theirs[n]], ours[n], f"person-{n}")
        client.send_comparison([ours[0], ours[1]], "tie", "person-0")
        client.send_comparison([ours[0], theirs[0]], theirs[0], "judge", "machine")

    table, status = refresh(server.url)

    assert len(TABLE_HEADERS) == len(table[0]) == 5
    assert [(row[0], row[1], row[4]) for row in table] == [(1, "ours", 3), (2, "theirs", 3)]
    assert table[0][2] > 1000 > table[1][2]  # rounded scores
    low, high = map(int, table[0][3].split(" to "))
    assert low <= table[0][2] <= high
    assert status == (
        "Made from 3 votes by people between two different models (1 vote between two answers "
        "of one model left out)."
    )


def test_a_server_that_cannot_be_reached_is_said_so_in_the_status_line():
    table, status = refresh(f"http://127.0.0.1:{free_port()}")
    assert table == []
    assert status.startswith("Could not read the leaderboard: ")


def test_the_status_line_says_how_many_votes_of_excluded_sessions_were_left_out(server):
    answers = [{"instruction": "Stuffed?", "output": "Yes."}]
    with AlpacaClient(server.url) as client:
        (mine,) = client.import_generations("stuffed-mine", answers)
        (other,) = client.import_generations("stuffed-other", answers)
    store = server.runtime.store
    store.save_comparison(ComparisonFeedback((mine, other), other, "reader"))
    store.save_comparison(ComparisonFeedback((mine, other), mine, "stuffer"))
    store.exclude_session("stuffer")

    table, status = refresh(server.url)

    assert "stuffed-other" in {row[1] for row in table}
    assert status.startswith("Made from ") and "; 1 vote of excluded sessions left out." in status
