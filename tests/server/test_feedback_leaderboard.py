"""The leaderboard of every model from the stored votes: `FeedbackStore.battles()` and
`GET /feedback/leaderboard`, on SQLite and on PostgreSQL, through a server on the scripted engine
whose store holds only this module's votes."""

from __future__ import annotations

import pytest

from alpaca_serve.client.api import AlpacaClient
from alpaca_serve.feedback import ComparisonFeedback
from tests.server.conftest import postgres_schema_url
from tests.server.test_feedback_store import make_generation
from tests.support import start_server


def test_battles_name_each_votes_models_and_whose_answer_won(store):
    store.record_generations(
        [
            make_generation("g-1", model="alpaca-7b"),
            make_generation("g-2", model="text-davinci-003"),
            make_generation("g-3", model="alpaca-7b"),
        ]
    )
    store.save_comparison(ComparisonFeedback(("g-2", "g-1"), "g-2", "alice"))
    store.save_comparison(ComparisonFeedback(("g-1", "g-2"), "g-1", "bob"))
    store.save_comparison(ComparisonFeedback(("g-1", "g-2"), "tie", "judge", voter="machine"))
    store.save_comparison(ComparisonFeedback(("g-3", "g-1"), "both_bad", "alice"))

    # Stored with the smaller id as generation a: g-1 (alpaca-7b) before g-2 (davinci).
    assert store.battles() == [
        ("alpaca-7b", "text-davinci-003", "b", "human"),
        ("alpaca-7b", "text-davinci-003", "a", "human"),
        ("alpaca-7b", "text-davinci-003", "tie", "machine"),
        ("alpaca-7b", "alpaca-7b", "both_bad", "human"),
    ]
    assert store.battles("machine") == [("alpaca-7b", "text-davinci-003", "tie", "machine")]
    assert len(store.battles("human")) == 3


def test_an_empty_store_has_no_battles(store):
    assert store.battles() == []


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def server(request, tmp_path_factory):
    """A scripted-engine server with a store of its own (a SQLite file, or a PostgreSQL schema)."""
    folder = tmp_path_factory.mktemp(f"leaderboard-{request.param}")
    if request.param == "sqlite":
        process = start_server(request, "scripted", {}, folder)
        try:
            yield process
        finally:
            process.stop()
        return
    with postgres_schema_url() as url:
        process = start_server(request, "scripted", {"ALPACA_DATABASE_URL": url}, folder)
        try:
            yield process
        finally:
            process.stop()


QUESTIONS = [{"instruction": f"Question {n}?", "output": f"Answer {n}."} for n in range(6)]


@pytest.fixture(scope="module")
def voted(server):
    """Before any vote, the boards; then people's votes (each from a session of its own):
    strong beats middle 4-1 and weak 4-0, middle beats weak 3-1 with a tie; an automatic
    judge's votes the other way round (weak beats strong 5-0)."""
    client = server.client
    empty = {voter: board(client, voter=voter) for voter in ("human", "machine")}
    sessions = iter(range(1000))
    with AlpacaClient(server.url) as api:
        ids = {model: api.import_generations(model, QUESTIONS) for model in MODELS}

        def vote(winner: str, loser: str, times: int, voter: str = "human", tie=False) -> None:
            for n in range(times):
                pair = [ids[winner][n], ids[loser][n]]
                winner_id = "tie" if tie else pair[0]
                api.send_comparison(pair, winner_id, f"{voter}-{next(sessions)}", voter)

        vote("strong", "middle", 4)
        vote("middle", "strong", 1)
        vote("strong", "weak", 4)
        vote("middle", "weak", 3)
        vote("weak", "middle", 1)
        vote("middle", "weak", 1, tie=True)
        vote("weak", "strong", 5, voter="machine")
        # One person compares two answers of the same model: it ranks nothing.
        api.send_comparison([ids["weak"][4], ids["weak"][5]], ids["weak"][4], "same", "human")
    return empty


MODELS = ["strong", "middle", "weak"]


def board(client, **params) -> dict:
    response = client.get("/feedback/leaderboard", params=params)
    assert response.status_code == 200, response.text
    return response.json()


def test_a_store_without_votes_answers_an_empty_board_that_says_so(voted):
    for voter, empty in voted.items():
        assert empty["rows"] == [] and empty["votes"] == 0
        assert empty["voter"] == voter
        assert "no votes" in empty["message"]


def test_people_rank_every_model_from_their_votes_with_counts_and_intervals(server, voted):
    people = board(server.client)

    assert (people["voter"], people["rounds"], people["seed"]) == ("human", 200, 0)
    assert people["votes"] == 4 + 1 + 4 + 3 + 1 + 1
    assert people["same_model_votes"] == 1
    assert [row["model"] for row in people["rows"]] == MODELS
    counts = {
        row["model"]: (row["votes"], row["wins"], row["losses"], row["ties"])
        for row in people["rows"]
    }
    assert counts == {
        "strong": (9, 8, 1, 0),
        "middle": (10, 4, 5, 1),
        "weak": (9, 1, 7, 1),
    }
    for row in people["rows"]:
        assert row["lower"] <= row["score"] <= row["upper"]
    assert people["rows"][0]["rank"] == 1
    assert people["groups"] == 1 and people["message"] is None


def test_machine_votes_make_a_board_of_their_own(server, voted):
    machine = board(server.client, voter="machine")

    assert machine["voter"] == "machine" and machine["votes"] == 5
    assert [row["model"] for row in machine["rows"]] == ["weak", "strong"]
    assert [row["wins"] for row in machine["rows"]] == [5, 0]


def test_the_same_seed_gives_the_same_intervals_and_no_rounds_gives_none(server, voted):
    client = server.client
    first = board(client, rounds=50, seed=7)
    assert board(client, rounds=50, seed=7) == first
    assert board(client, rounds=50, seed=8)["rows"] != first["rows"]
    bare = board(client, rounds=0)
    assert all(row["lower"] is None and row["upper"] is None for row in bare["rows"])
    assert [row["score"] for row in bare["rows"]] == [row["score"] for row in first["rows"]]


def test_the_clients_read_the_same_board(server, voted):
    import asyncio

    from alpaca_serve.client.api import AsyncAlpacaClient

    async def read() -> dict:
        async with AsyncAlpacaClient(server.url) as client:
            return await client.leaderboard("machine", rounds=20, seed=3)

    with AlpacaClient(server.url) as client:
        expected = client.leaderboard("machine", rounds=20, seed=3)
    assert (
        asyncio.run(read()) == expected == board(server.client, voter="machine", rounds=20, seed=3)
    )


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"voter": "robot"}, "voter"),
        ({"rounds": -1}, "rounds"),
        ({"rounds": 1001}, "rounds"),
        ({"rounds": "many"}, "rounds"),
        ({"seed": -1}, "seed"),
    ],
)
def test_bad_parameters_are_refused_with_422_naming_the_parameter(server, params, param):
    response = server.client.get("/feedback/leaderboard", params=params)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["param"] == param
