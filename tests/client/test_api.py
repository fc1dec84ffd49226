"""The API client against the session's real tiny-model server: each call a caller makes."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from alpaca_serve.client.api import AlpacaClient, AsyncAlpacaClient
from alpaca_serve.client.errors import APIRequestError

pytestmark = pytest.mark.slow


@pytest.fixture
def api(tiny_server):
    with AlpacaClient(tiny_server.url, timeout_s=120) as client:
        yield client


def session() -> str:
    return f"test-{uuid.uuid4().hex[:8]}"


def test_an_answer_comes_back_whole_or_streamed_with_its_generation_id(api):
    reply = api.generate("Name three colours.", temperature=0, max_new_tokens=8)
    events = list(api.stream_generate("Name three colours.", temperature=0, max_new_tokens=8))

    assert reply["id"].startswith("gen-") and reply["usage"]["completion_tokens"] > 0
    assert {event["id"] for event in events} == {events[0]["id"]}
    assert events[0]["id"].startswith("gen-") and events[0]["id"] != reply["id"]
    assert events[-1]["finish_reason"] in ("eos", "length", "stop")
    assert "".join(event["text"] for event in events).strip()


def test_a_rating_is_saved_and_the_same_sessions_second_rating_replaces_it(api):
    reply = api.generate("Say hello.", max_new_tokens=4)
    model = reply["model"]
    before = api.feedback_summary()["models"].get(model, {"up": 0, "down": 0})
    rater = session()

    first = api.send_rating(reply["id"], "up", rater)
    second = api.send_rating(reply["id"], "down", rater, flag="incorrect", comment="wrong")

    assert (first["created"], second["created"]) == (True, False)
    after = api.feedback_summary()["models"][model]
    assert (after["up"], after["down"]) == (before["up"], before["down"] + 1)


def test_imported_answers_are_voted_on_and_the_votes_read_back_page_by_page(api):
    answers = [
        {
            "instruction": f"Count to {n}.",
            "input": "",
            "output": " ".join(str(i) for i in range(1, n + 1)),
        }
        for n in (2, 3, 4)
    ]
    ids = api.import_generations(f"counter-{uuid.uuid4().hex[:6]}", answers)
    voter = session()

    api.send_comparison(ids[:2], ids[0], voter)
    api.send_comparison(ids[1:], "tie", voter, voter="machine")

    assert len(ids) == 3 and all(i.startswith("gen-") for i in ids)
    first_page = api.comparisons_page(limit=1)
    assert len(first_page["comparisons"]) == 1 and first_page["next_after"] is not None
    mine = [row for row in api.comparisons() if row["session_id"] == voter]
    assert [(row["generation_ids"], row["winner"], row["voter"]) for row in mine] == [
        (sorted(ids[:2]), ids[0], "human"),
        (sorted(ids[1:]), "tie", "machine"),
    ]


def test_the_models_the_info_and_a_chat_completion_are_read(api):
    [model] = api.models()
    info = api.info()
    reply = api.chat_completion(
        [{"role": "user", "content": "Say A or B."}], model["id"], temperature=0, max_tokens=4
    )

    assert info["model"] == model["id"]
    assert reply["id"].startswith("gen-")
    assert isinstance(reply["choices"][0]["message"]["content"], str)


def test_a_refused_request_is_the_one_error_type_naming_the_field(api):
    with pytest.raises(APIRequestError) as caught:
        api.generate("Say hello.", max_new_tokens=100_000)

    assert (caught.value.status, caught.value.param) == (422, "max_new_tokens")
    assert str(caught.value).startswith("The request was not accepted: ")
    with pytest.raises(APIRequestError, match="Not found"):
        api.send_rating("gen-does-not-exist", "up")


def test_the_async_client_makes_the_same_calls(tiny_server):
    async def calls() -> tuple[dict, list[dict], dict]:
        async with AsyncAlpacaClient(tiny_server.url, timeout_s=120) as client:
            reply = await client.generate("Name a fruit.", max_new_tokens=4)
            events = [
                event async for event in client.stream_generate("Name a fruit.", max_new_tokens=4)
            ]
            saved = await client.send_comparison(
                [reply["id"], events[0]["id"]], "both_bad", session()
            )
            return reply, events, saved

    reply, events, saved = asyncio.run(calls())

    assert reply["id"].startswith("gen-") and events[-1].get("finish_reason")
    assert saved["created"] is True
