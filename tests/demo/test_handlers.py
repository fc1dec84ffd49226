"""The demo's handlers called directly, as Gradio calls them, against the real tiny-model server."""

from __future__ import annotations

import asyncio
import random
import uuid

import gradio as gr
import httpx
import pytest

from alpaca_serve.client.api import AlpacaClient, AsyncAlpacaClient
from alpaca_serve.demo.chat import ChatHandlers
from alpaca_serve.demo.compare import ASK_FOR_VOTE, CompareHandlers
from alpaca_serve.demo.settings import DEFAULT_ARMS, CompareArm
from alpaca_serve.evaluation.comparison import attach_generation_ids
from tests.support import free_port

pytestmark = pytest.mark.slow


def run(awaitable):
    return asyncio.run(awaitable)


def collect(updates) -> list:
    """Every value an async generator handler yields, copied as it was when yielded."""

    async def gather():
        seen = []
        async for value in updates:
            seen.append(_copy(value))
        return seen

    return run(gather())


def _copy(value):
    if isinstance(value, (list, tuple)):
        return type(value)(_copy(item) for item in value)
    if isinstance(value, dict):
        return {key: _copy(item) for key, item in value.items()}
    return value


def browser_tab() -> gr.Request:
    return gr.Request(session_hash=uuid.uuid4().hex[:10])


def liked(index: int, like: bool = True) -> gr.LikeData:
    return gr.LikeData(None, {"index": index, "value": "", "liked": like})


def interactive(updates) -> list:
    return [update.get("interactive") for update in updates]


@pytest.fixture
def chat(tiny_server) -> ChatHandlers:
    return ChatHandlers(AsyncAlpacaClient(tiny_server.url))


@pytest.fixture
def compare(tiny_server) -> CompareHandlers:
    client = AsyncAlpacaClient(tiny_server.url)
    return CompareHandlers(client, DEFAULT_ARMS, [client, AsyncAlpacaClient(tiny_server.url)])


def summary(tiny_server) -> dict:
    return tiny_server.client.get("/feedback/summary").json()


def votes_of(tiny_server, session_id: str) -> list[dict]:
    with AlpacaClient(tiny_server.url) as api:
        return [row for row in api.comparisons() if row["session_id"] == session_id]


def test_respond_streams_a_growing_answer_and_records_its_generation_id(chat):
    seen = collect(chat.respond("Name three colours.", "Answer briefly.", 0, 0.75, 32, [], {}))

    history, ids, instruction_box = seen[-1]
    assert [message["role"] for message in history] == ["user", "assistant"]
    assert history[0]["content"] == "Name three colours.\n\nAnswer briefly."
    assert history[1]["content"].strip()
    assert list(ids) == [1] and ids[1].startswith("gen-")
    assert instruction_box == ""  # the box is emptied for the next instruction
    lengths = [len(history[1]["content"]) for history, _, _ in seen]
    assert lengths == sorted(lengths) and len(set(lengths) - {0}) >= 2, lengths


def test_an_empty_instruction_sends_nothing(chat):
    assert collect(chat.respond("  ", "", 0.1, 0.75, 8, [], {})) == [([], {}, "  ")]


def test_a_like_and_a_flag_are_saved_and_reported(chat, tiny_server):
    tab = browser_tab()
    *_, (history, ids, _) = collect(chat.respond("Say hello.", "", 0.1, 0.75, 8, [], {}, None, tab))
    model = tiny_server.client.get("/info").json()["model"]
    before = summary(tiny_server)["models"].get(model, {"up": 0, "down": 0, "flags": {}})

    liked_status = run(chat.on_like(ids, liked(1), tab))
    stranger_status = run(chat.on_like(ids, liked(1, like=False), browser_tab()))
    flagged_status = run(chat.on_flag("false information", ids, tab))

    assert liked_status == "Thanks: your like was saved."
    # The answer was asked in `tab`: another tab (a script making up sessions) cannot rate it.
    assert stranger_status.startswith("⚠️ Your rating was not saved")
    assert "shown to another feedback session" in stranger_status
    assert flagged_status == "Thanks: the last answer was flagged as false information."
    after = summary(tiny_server)["models"][model]
    # The flag replaced the same tab's like: one rating per browser tab and answer.
    assert (after["up"], after["down"]) == (before["up"], before["down"] + 1)
    assert after["flags"]["incorrect"] == before["flags"].get("incorrect", 0) + 1


def test_rating_or_flagging_without_a_finished_answer_says_so(chat):
    assert run(chat.on_like({}, liked(1), browser_tab())) == (
        "Only answers that finished can be rated."
    )
    assert run(chat.on_flag("harmful", {}, browser_tab())) == "There is no answer to flag yet."
    assert run(chat.on_flag(None, {1: "gen-x"}, browser_tab())) == (
        "Choose what is wrong with the answer first."
    )


def test_compare_yields_two_answers_enables_the_votes_and_a_vote_reveals_the_sources(
    compare, tiny_server
):
    tab = browser_tab()
    seen = collect(compare.compare("Write a short poem.", tab))

    answer_a, answer_b, *votes, message, state = seen[-1]
    assert answer_a.strip() and answer_b.strip()
    assert interactive(votes) == [True] * 4 and message == ASK_FOR_VOTE
    assert all(interactive(update[2:6]) == [False] * 4 for update in seen[:-1])
    assert sorted(state["labels"]) == sorted(arm.label for arm in DEFAULT_ARMS)

    *votes, reveal, state_after = run(compare.vote("b", state, tab))

    assert reveal == (
        f"Vote saved (B is better). **A** was {state['labels'][0]}; **B** was {state['labels'][1]}."
    )
    assert interactive(votes) == [False] * 4 and state_after == {}
    [vote] = votes_of(tiny_server, f"ui-{tab.session_hash}")
    assert (vote["generation_ids"], vote["winner"]) == (sorted(state["ids"]), state["ids"][1])


def test_a_vote_with_nothing_to_vote_on_says_so(compare):
    *votes, message, state = run(compare.vote("a", {}, browser_tab()))

    assert message == "Get two answers first." and state == {}
    assert interactive(votes) == [None] * 4  # the buttons stay as they are


def test_a_pair_of_the_comparison_file_is_shown_blind_and_the_vote_stored(tiny_server):
    comparison = {
        "labels": ["ours", "text-davinci-003"],
        "seed": 0,
        "pairs": [
            {
                "pair_id": "pair-000",
                "instruction": "Say hello.",
                "input": "Politely.",
                "motivation_app": None,
                "left_is": "b",
                "left": {"output": "Good day to you.", "generation_id": None},
                "right": {"output": "Hi.", "generation_id": None},
            }
        ],
    }
    with AlpacaClient(tiny_server.url) as api:
        attach_generation_ids(comparison, api)
    client = AsyncAlpacaClient(tiny_server.url)
    handlers = CompareHandlers(
        client, DEFAULT_ARMS, [client, client], comparison, rng=random.Random(0)
    )
    tab = browser_tab()

    instruction, answer_a, answer_b, *votes, message, state = handlers.next_pair()
    *_, reveal, _ = run(handlers.vote("tie", state, tab))

    assert (instruction, answer_a, answer_b) == (
        "Say hello.\n\nPolitely.",
        "Good day to you.",
        "Hi.",
    )
    assert interactive(votes) == [True] * 4 and "davinci" not in message
    assert reveal == "Vote saved (Tie). **A** was text-davinci-003; **B** was ours."
    [vote] = votes_of(tiny_server, f"ui-{tab.session_hash}")
    pair = comparison["pairs"][0]
    assert vote["generation_ids"] == sorted(
        [pair["left"]["generation_id"], pair["right"]["generation_id"]]
    )
    assert vote["winner"] == "tie"


def test_server_errors_are_shown_as_sentences(chat, tiny_server):
    *_, (history, ids, _) = collect(chat.respond("Say hello.", "", 0.1, 0.75, 100_000, [], {}))
    assert history[1]["content"].startswith("⚠️ The request was not accepted: max_new_tokens")
    assert ids == {}

    nowhere = f"http://127.0.0.1:{free_port()}"
    status = run(
        ChatHandlers(AsyncAlpacaClient(nowhere)).on_like({1: "gen-x"}, liked(1), browser_tab())
    )
    assert status == (
        f"⚠️ Your rating was not saved: The server at {nowhere} cannot be "
        "reached (ConnectError). Is it running?"
    )

    too_long = CompareArm(label="too long", max_new_tokens=100_000)
    client = AsyncAlpacaClient(tiny_server.url)
    failing = CompareHandlers(client, [DEFAULT_ARMS[0], too_long], [client, client])
    answer_a, answer_b, *votes, message, state = collect(
        failing.compare("Write a short poem.", browser_tab())
    )[-1]
    assert "⚠️ The request was not accepted" in answer_a + answer_b
    assert message == "One answer failed, so there is nothing to vote on."
    assert interactive(votes) == [False] * 4 and state == {}


def test_a_server_that_wants_a_key_says_where_the_demo_takes_it_from():
    refusing = httpx.MockTransport(
        lambda request: httpx.Response(
            401,
            json={
                "error": {
                    "message": "missing API key: send Authorization: Bearer <key>",
                    "type": "unauthorized",
                    "param": None,
                }
            },
        )
    )
    chat = ChatHandlers(AsyncAlpacaClient("http://server", transport=refusing))

    status = run(chat.on_flag("harmful", {1: "gen-x"}, browser_tab()))

    assert status.startswith(
        "⚠️ Your flag was not saved: The server at http://server wants a valid API key"
    )
    assert status.endswith("; set ALPACA_DEMO_API_KEY.")
