"""Asking again: a busy (429) or unavailable (503) server is retried only when the caller asks,
waiting at least its Retry-After, and a refused connection is never retried. The server is
scripted with httpx.MockTransport."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from alpaca_serve.client.api import AlpacaClient, AsyncAlpacaClient, Retries
from alpaca_serve.client.errors import APIRequestError

ANSWER = {
    "id": "gen-1",
    "model": "tiny",
    "text": "Blue.",
    "finish_reason": "eos",
    "usage": {"prompt_tokens": 3, "completion_tokens": 2},
}


def scripted(*replies: httpx.Response | Exception):
    """A transport that gives `replies` in order, and the list of requests it received."""
    received: list[httpx.Request] = []
    queue = list(replies)

    def handle(request: httpx.Request) -> httpx.Response:
        received.append(request)
        reply = queue.pop(0)
        if isinstance(reply, Exception):
            raise reply
        return reply

    return httpx.MockTransport(handle), received


def busy(status: int = 429, retry_after: str | None = None) -> httpx.Response:
    headers = {"Retry-After": retry_after} if retry_after is not None else {}
    return httpx.Response(
        status,
        headers=headers,
        json={
            "error": {"message": "the server is at capacity", "type": "overloaded", "param": None}
        },
    )


def test_a_busy_answer_is_asked_again_after_the_servers_retry_after():
    transport, received = scripted(busy(429, "7"), busy(503, "2"), httpx.Response(200, json=ANSWER))
    waits: list[float] = []
    client = AlpacaClient(
        "http://server",
        transport=transport,
        sleep=waits.append,
        retries=Retries(attempts=5, first_backoff_s=1.0),
    )

    reply = client.generate("Name a colour.", temperature=0)

    assert reply["text"] == "Blue."
    assert len(received) == 3
    assert waits == [7.0, 2.0]  # Retry-After when longer than the backoff (1 s, then 2 s)
    assert json.loads(received[-1].content) == {
        "instruction": "Name a colour.",
        "input": "",
        "temperature": 0,
    }


def test_without_retries_a_busy_server_fails_at_once_with_a_sentence():
    transport, received = scripted(busy(429, "1"))
    client = AlpacaClient(
        "http://server", transport=transport, sleep=lambda s: pytest.fail("slept")
    )

    with pytest.raises(APIRequestError) as caught:
        client.send_rating("gen-1", "up")

    assert len(received) == 1
    assert (caught.value.status, caught.value.type) == (429, "overloaded")
    assert str(caught.value) == "The server is busy right now; please try again in a moment."


def test_retries_give_up_after_the_attempts_asked_for_with_waits_doubling_up_to_the_cap():
    transport, received = scripted(*[busy(503) for _ in range(4)])
    waits: list[float] = []
    client = AlpacaClient(
        "http://server",
        transport=transport,
        sleep=waits.append,
        retries=Retries(attempts=4, first_backoff_s=1.0, max_backoff_s=3.0),
    )

    with pytest.raises(APIRequestError) as caught:
        client.generate("Name a colour.")

    assert len(received) == 4 and waits == [1.0, 2.0, 3.0]
    assert caught.value.status == 503 and "not available right now" in str(caught.value)


def test_a_retry_after_longer_than_the_cap_is_capped():
    assert Retries(attempts=3, max_backoff_s=30.0).wait_s(1, "120") == 30.0
    assert Retries(attempts=3).wait_s(1, "soon") == 1.0  # an unreadable Retry-After is ignored


def test_other_errors_are_not_retried():
    transport, received = scripted(
        httpx.Response(
            422,
            json={
                "error": {
                    "message": "max_new_tokens: must be at least 1",
                    "type": "invalid_request_error",
                    "param": "max_new_tokens",
                }
            },
        )
    )
    client = AlpacaClient("http://server", transport=transport, retries=Retries(attempts=6))

    with pytest.raises(APIRequestError) as caught:
        client.generate("Name a colour.", max_new_tokens=0)

    assert len(received) == 1
    assert caught.value.param == "max_new_tokens"
    assert str(caught.value) == "The request was not accepted: max_new_tokens: must be at least 1"


def test_a_refused_connection_is_not_retried_but_a_broken_one_is():
    refused, tries = scripted(httpx.ConnectError("refused"))
    client = AlpacaClient("http://server", transport=refused, retries=Retries(attempts=6))
    with pytest.raises(APIRequestError, match="cannot be reached"):
        client.info()
    assert len(tries) == 1

    waits: list[float] = []
    broken, tries = scripted(httpx.ReadError("reset"), httpx.Response(200, json={"model": "m"}))
    client = AlpacaClient(
        "http://server", transport=broken, sleep=waits.append, retries=Retries(attempts=6)
    )
    assert client.info() == {"model": "m"}
    assert len(tries) == 2 and waits == [1.0]


def test_the_async_client_retries_a_stream_that_was_refused_before_it_began():
    events = (
        b'data: {"id": "gen-2", "text": "Re"}\n\n'
        b'data: {"id": "gen-2", "text": "d."}\n\n'
        b'data: {"id": "gen-2", "text": "", "finish_reason": "eos"}\n\ndata: [DONE]\n\n'
    )
    transport, received = scripted(
        busy(429, "3"),
        httpx.Response(200, headers={"Content-Type": "text/event-stream"}, content=events),
    )
    waits: list[float] = []

    async def record(seconds: float) -> None:
        waits.append(seconds)

    client = AsyncAlpacaClient(
        "http://server", "secret", transport=transport, sleep=record, retries=Retries(attempts=2)
    )

    async def collect() -> list[dict]:
        return [event async for event in client.stream_generate("Name a colour.")]

    got = asyncio.run(collect())

    assert "".join(event["text"] for event in got) == "Red."
    assert got[-1]["finish_reason"] == "eos"
    assert waits == [3.0]
    assert all(r.headers["Authorization"] == "Bearer secret" for r in received)
    assert json.loads(received[-1].content)["stream"] is True


def test_an_error_event_inside_a_stream_is_raised_as_the_one_error_type():
    events = (
        b'data: {"id": "gen-3", "text": "Half"}\n\n'
        b'data: {"error": {"message": "the engine died", "type": "engine_unavailable",'
        b' "param": null}}\n\ndata: [DONE]\n\n'
    )
    transport, _ = scripted(httpx.Response(200, content=events))
    client = AlpacaClient("http://server", transport=transport)
    got = []

    with pytest.raises(APIRequestError) as caught:
        for event in client.stream_generate("Name a colour."):
            got.append(event)

    assert [event["text"] for event in got] == ["Half"]
    assert caught.value.type == "engine_unavailable"
    assert str(caught.value) == (
        "The model is not available right now (the engine died); please try again shortly."
    )
