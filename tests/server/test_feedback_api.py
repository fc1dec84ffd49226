"""`POST /feedback`, `GET /feedback/summary` and the generation log, through a running server,
once with SQLite and once with PostgreSQL behind it, on both layers (scripted engine and vLLM)."""

from __future__ import annotations

import json

import pytest

from alpaca_serve.feedback import default_database_url, open_store
from alpaca_serve.server.pipeline import schema_digest
from tests.server.conftest import postgres_schema_url
from tests.support import start_server, stream_events, wait_for

BACKENDS = [
    pytest.param(("scripted", "sqlite"), id="scripted-sqlite"),
    pytest.param(("scripted", "postgresql"), id="scripted-postgresql"),
    pytest.param(("vllm", "sqlite"), id="vllm-sqlite", marks=pytest.mark.slow),
    pytest.param(("vllm", "postgresql"), id="vllm-postgresql", marks=pytest.mark.slow),
]


@pytest.fixture(scope="module", params=BACKENDS)
def server(request, tmp_path_factory):
    """A server (the shared one of its layer for SQLite) and the URL of its store."""
    layer, backend = request.param
    if backend == "sqlite":
        shared = request.getfixturevalue("tiny_server" if layer == "vllm" else "scripted_server")
        yield shared, default_database_url(shared.data_dir)
        return
    with postgres_schema_url() as url:
        folder = tmp_path_factory.mktemp(f"{layer}-postgres")
        process = start_server(request, layer, {"ALPACA_DATABASE_URL": url}, folder)
        try:
            yield process, url
        finally:
            process.stop()


@pytest.fixture
def client(server):
    return server[0].client


@pytest.fixture
def store(server):
    with open_store(server[1]) as opened:
        yield opened


def generate(client, **body) -> str:
    response = client.post("/generate", json={"max_new_tokens": 4, **body})
    assert response.status_code == 200, response.text
    return response.json()["id"]


def rating_totals(client) -> dict:
    models = client.get("/feedback/summary").json()["models"]
    totals = {"up": 0, "down": 0}
    for counts in models.values():
        totals["up"] += counts["up"]
        totals["down"] += counts["down"]
    return totals


def test_a_rating_is_saved_with_201_and_counted_in_the_summary(client, store):
    generation_id = generate(client, instruction="Name a planet.")
    before = rating_totals(client)
    response = client.post(
        "/feedback",
        json={
            "generation_id": generation_id,
            "rating": "up",
            "comment": "good",
            "flag": "incorrect",
        },
    )
    assert response.status_code == 201, response.text
    assert response.json()["created"] is True
    assert rating_totals(client) == {**before, "up": before["up"] + 1}
    rows = [row for row in store.export_rows() if row["generation_id"] == generation_id]
    assert [(r["rating"], r["comment"], r["flag"]) for r in rows] == [("up", "good", "incorrect")]


def test_a_second_rating_from_the_same_session_updates_the_first(client, store):
    generation_id = generate(client, instruction="Name a river.")
    before = rating_totals(client)
    first = client.post(
        "/feedback",
        json={"generation_id": generation_id, "rating": "up", "session_id": "session-a"},
    )
    assert first.status_code == 201
    second = client.post(
        "/feedback",
        json={"generation_id": generation_id, "rating": "down"},
        headers={"X-Session-Id": "session-a"},
    )
    assert second.status_code == 200
    assert second.json() == {"id": first.json()["id"], "created": False}
    assert rating_totals(client) == {"up": before["up"], "down": before["down"] + 1}
    rows = [row for row in store.export_rows() if row["generation_id"] == generation_id]
    assert [row["rating"] for row in rows] == ["down"]


def test_ratings_from_different_or_no_sessions_are_kept_apart(client, store):
    generation_id = generate(client, instruction="Name a mountain.")
    for body in ({"session_id": "s1"}, {"session_id": "s2"}, {}, {}):
        response = client.post(
            "/feedback", json={"generation_id": generation_id, "rating": "up", **body}
        )
        assert response.status_code == 201
    rows = [row for row in store.export_rows() if row["generation_id"] == generation_id]
    assert len(rows) == 4


def test_a_blind_comparison_is_saved_and_tabulated(client):
    first = generate(client, instruction="Write a haiku.", seed=1, temperature=1.0)
    second = generate(client, instruction="Write a haiku.", seed=2, temperature=1.0)
    before = client.get("/feedback/summary").json()["pairwise"]
    response = client.post(
        "/feedback",
        json={"generation_ids": [first, second], "winner": second, "session_id": "judge"},
    )
    assert response.status_code == 201, response.text
    again = client.post(
        "/feedback",
        json={"generation_ids": [second, first], "winner": "tie", "session_id": "judge"},
    )
    assert again.status_code == 200
    after = client.get("/feedback/summary").json()["pairwise"]

    def total(table, key):
        return sum(row[key] for row in table)

    assert total(after, "ties") == total(before, "ties") + 1
    assert total(after, "wins_a") + total(after, "wins_b") == (
        total(before, "wins_a") + total(before, "wins_b")
    )


INVALID_FEEDBACK = [
    ({"rating": "up"}, 422, "generation_id"),
    ({"generation_id": "GEN", "rating": "meh"}, 422, "rating"),
    ({"generation_id": "GEN", "rating": "up", "comment": "x" * 2001}, 422, "comment"),
    ({"generation_id": "GEN", "rating": "up", "flag": "boring"}, 422, "flag"),
    ({"generation_id": "GEN", "rating": 1}, 422, "rating"),
    ({"generation_id": "GEN", "rating": "up", "extra": 1}, 422, "extra"),
    ({"generation_ids": ["GEN"], "winner": "tie"}, 422, "generation_ids"),
    ({"generation_ids": ["GEN", "GEN"], "winner": "tie"}, 422, "generation_ids"),
    ({"generation_ids": ["GEN", "OTHER"], "winner": "nobody"}, 422, "winner"),
    ({"generation_id": "gen-does-not-exist", "rating": "up"}, 404, "generation_id"),
    ({"generation_ids": ["GEN", "gen-does-not-exist"], "winner": "tie"}, 404, "generation_ids"),
]


@pytest.mark.parametrize(("body", "status", "param"), INVALID_FEEDBACK)
def test_bad_feedback_is_refused_and_changes_nothing(client, body, status, param):
    generation_id = generate(client, instruction="Say yes.")
    other_id = generate(client, instruction="Say no.")

    def fill(value):
        if isinstance(value, list):
            return [fill(item) for item in value]
        return {"GEN": generation_id, "OTHER": other_id}.get(value, value)

    before = client.get("/feedback/summary").json()
    response = client.post("/feedback", json={key: fill(v) for key, v in body.items()})
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["param"] == param
    assert error["type"] == ("not_found" if status == 404 else "invalid_request_error")
    assert client.get("/feedback/summary").json() == before


def test_comment_length_error_states_the_limit(client):
    generation_id = generate(client, instruction="Say yes.")
    response = client.post(
        "/feedback", json={"generation_id": generation_id, "rating": "up", "comment": "x" * 2001}
    )
    assert "2000" in response.json()["error"]["message"]


def test_malformed_feedback_json_is_a_400(client):
    response = client.post(
        "/feedback", content=b'{"generation_id": ', headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_json"


def test_the_generation_log_keeps_a_json_schema_by_hash_not_verbatim(client, store):
    # A schema can be 64 KB, and every answer to it would store it again.
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    generation_id = generate(client, instruction="Answer.", json_schema=schema)
    assert wait_for(lambda: store.generation_exists([generation_id]) == {generation_id}, 10)
    rows = {row["generation_id"]: row for row in store.export_rows(include_unrated=True)}
    kept = rows[generation_id]["params"]["json_schema"]
    assert kept == schema_digest(schema)
    assert set(kept) == {"sha256", "bytes"} and kept["bytes"] == len(
        json.dumps(schema, sort_keys=True, separators=(",", ":"))
    )


def test_every_finished_generation_is_recorded_without_the_client_address(client, store):
    generation_id = generate(
        client,
        instruction="Translate.",
        input="Hallo",
        temperature=0.0,
        max_new_tokens=6,
        stop=["zzz"],
    )
    _, events = stream_events(client, {"instruction": "Stream it.", "max_new_tokens": 3})
    streamed_id = events[0]["id"]
    prompt_id = generate(client, prompt="A raw prompt")
    assert wait_for(
        lambda: (
            store.generation_exists([generation_id, streamed_id, prompt_id])
            == {generation_id, streamed_id, prompt_id}
        ),
        10,
    )
    rows = {row["generation_id"]: row for row in store.export_rows(include_unrated=True)}
    row = rows[generation_id]
    assert (row["instruction"], row["input"]) == ("Translate.", "Hallo")
    assert "### Input:\nHallo" in row["prompt"]
    assert row["params"]["max_new_tokens"] == 6
    assert row["params"]["stop"] == ["zzz"]
    assert row["params"]["temperature"] == 0.0
    assert row["finish_reason"] in ("length", "eos", "stop")
    assert row["completion_tokens"] >= 1 and row["prompt_tokens"] > 10
    assert row["latency_s"] > 0
    assert row["rating"] is None
    assert streamed_id in rows
    assert prompt_id not in rows  # raw prompts are recorded but cannot become Alpaca records
    assert "127.0.0.1" not in repr(row)


def test_answers_of_another_model_are_imported_compared_and_counted_under_its_name(client, store):
    ours = generate(client, instruction="Name a planet.")
    response = client.post(
        "/generations/import",
        json={
            "model": "other-model",
            "answers": [
                {"instruction": "Name a planet.", "output": "Mars."},
                {"instruction": "Translate.", "input": "Hallo", "output": "Hello."},
            ],
        },
    )
    assert response.status_code == 201, response.text
    theirs, second = response.json()["generation_ids"]
    rows = {row["generation_id"]: row for row in store.export_rows(include_unrated=True)}
    assert (rows[theirs]["model"], rows[theirs]["source"], rows[theirs]["output"]) == (
        "other-model",
        "imported",
        "Mars.",
    )
    assert "### Input:\nHallo" in rows[second]["prompt"]

    vote = client.post(
        "/feedback",
        json={"generation_ids": [ours, theirs], "winner": theirs, "session_id": "alice"},
    )
    judged = client.post(
        "/feedback",
        json={
            "generation_ids": [theirs, ours],
            "winner": "tie",
            "session_id": "judge-x",
            "voter": "machine",
        },
    )

    assert (vote.status_code, judged.status_code) == (201, 201)
    summary = client.get("/feedback/summary").json()
    [human] = [
        row for row in summary["pairwise"] if "other-model" in (row["model_a"], row["model_b"])
    ]
    [machine] = [
        row
        for row in summary["pairwise_machine"]
        if "other-model" in (row["model_a"], row["model_b"])
    ]
    other_wins = "wins_a" if human["model_a"] == "other-model" else "wins_b"
    assert (human[other_wins], human["ties"]) == (1, 0)
    assert (machine["ties"], machine["wins_a"] + machine["wins_b"]) == (1, 0)
    listed = [c for c in all_comparisons(client) if c["generation_ids"] == sorted([ours, theirs])]
    assert [(c["winner"], c["voter"], c["session_id"]) for c in listed] == [
        (theirs, "human", "alice"),
        ("tie", "machine", "judge-x"),
    ]


def all_comparisons(client) -> list[dict]:
    """Every vote through `GET /feedback/comparisons`, two a page, to exercise the paging."""
    votes, after = [], 0
    while after is not None:
        page = client.get("/feedback/comparisons", params={"after": after, "limit": 2}).json()
        votes += page["comparisons"]
        after = page["next_after"]
    return votes


INVALID_IMPORTS = [
    ({"answers": [{"instruction": "Hi", "output": "Hello"}]}, "model"),
    ({"model": "", "answers": [{"instruction": "Hi", "output": "Hello"}]}, "model"),
    ({"model": "m", "answers": []}, "answers"),
    ({"model": "m", "answers": [{"instruction": "Hi", "output": "x"}] * 1001}, "answers"),
    ({"model": "m", "answers": [{"instruction": "", "output": "Hello"}]}, "answers[0].instruction"),
    ({"model": "m", "answers": [{"instruction": "Hi"}]}, "answers[0].output"),
    ({"model": "m", "answers": [{"instruction": "Hi", "output": 3}]}, "answers[0].output"),
    (
        {"model": "m", "answers": [{"instruction": "Hi", "output": "x", "score": 1}]},
        "answers[0].score",
    ),
]


@pytest.mark.parametrize(("body", "param"), INVALID_IMPORTS)
def test_bad_imports_are_refused_and_store_nothing(client, store, body, param):
    before = sum(1 for _ in store.export_rows(include_unrated=True))
    response = client.post("/generations/import", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["param"] == param
    assert sum(1 for _ in store.export_rows(include_unrated=True)) == before


def test_a_machine_vote_needs_a_known_voter_and_paging_needs_a_sane_limit(client):
    first = generate(client, instruction="Say yes.")
    second = generate(client, instruction="Say no.")
    robot = client.post(
        "/feedback", json={"generation_ids": [first, second], "winner": "tie", "voter": "robot"}
    )
    too_many = client.get("/feedback/comparisons", params={"limit": 5000})
    negative = client.get("/feedback/comparisons", params={"after": -1})
    assert (robot.status_code, robot.json()["error"]["param"]) == (422, "voter")
    assert (too_many.status_code, too_many.json()["error"]["param"]) == (422, "limit")
    assert (negative.status_code, negative.json()["error"]["param"]) == (422, "after")
