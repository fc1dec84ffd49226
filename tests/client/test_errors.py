"""Every failure of a call is one error type, worded as a sentence a person can act on."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from alpaca_serve.client.api import AlpacaClient, AsyncAlpacaClient
from alpaca_serve.client.errors import APIRequestError, describe_error
from tests.support import free_port


def answering(status: int, body: object):
    """A client of a server that answers every request with `status` and `body` (JSON, or
    plain text when a string)."""

    def reply(request: httpx.Request) -> httpx.Response:
        if isinstance(body, str):
            return httpx.Response(status, text=body)
        return httpx.Response(status, json=body)

    transport = httpx.MockTransport(reply)
    return AlpacaClient("http://server", transport=transport)


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (
            422,
            {
                "error": {
                    "message": "max_new_tokens is 5000, above this server's limit of 1024",
                    "type": "invalid_request_error",
                    "param": "max_new_tokens",
                }
            },
            "The request was not accepted: max_new_tokens is 5000",
        ),
        (
            400,
            {
                "error": {
                    "message": "the prompt is 1020 tokens and max_tokens is 5: 1025 in all",
                    "type": "invalid_request_error",
                    "param": "max_tokens",
                    "code": "context_length_exceeded",
                }
            },
            "The request was not accepted: the prompt is 1020 tokens",
        ),
        (
            400,
            {
                "error": {
                    "message": "refused",
                    "type": "content_filter",
                    "param": "instruction",
                    "category": "violence",
                }
            },
            "This request was refused by the content filter (violence).",
        ),
        (429, {"error": {"message": "busy", "type": "overloaded"}}, "busy right now"),
        (
            503,
            {"error": {"message": "the model is still loading", "type": "engine_unavailable"}},
            "not available right now (the model is still loading)",
        ),
        (
            404,
            {"error": {"message": "no generation 'gen-x'", "type": "not_found"}},
            "Not found: no generation 'gen-x'",
        ),
        (
            500,
            "Internal Server Error",
            "The server at http://server answered 500 to POST /feedback: Internal Server Error",
        ),
    ],
)
def test_server_errors_become_readable_sentences(status, body, expected):
    with pytest.raises(APIRequestError) as caught:
        answering(status, body).send_comparison(["gen-a", "gen-b"], "tie")

    assert expected in str(caught.value)
    assert str(caught.value) == describe_error(caught.value)
    assert caught.value.status == status


def test_the_fields_of_the_servers_error_are_kept_for_code():
    body = {
        "error": {
            "message": "refused",
            "type": "content_filter",
            "param": "instruction",
            "category": "violence",
        }
    }
    with pytest.raises(APIRequestError) as caught:
        answering(400, body).generate("Do harm.")

    err = caught.value
    assert (err.status, err.type, err.message, err.param) == (
        400,
        "content_filter",
        "refused",
        "instruction",
    )
    assert err.details == {"category": "violence"}
    assert err.request == "POST /generate"


def test_a_missing_api_key_says_where_to_set_it_when_the_caller_knows():
    body = {
        "error": {
            "message": "missing API key: send Authorization: Bearer <key>",
            "type": "unauthorized",
            "param": None,
        }
    }
    with pytest.raises(APIRequestError) as caught:
        answering(401, body).feedback_summary()

    assert "wants a valid API key (missing API key" in str(caught.value)
    assert describe_error(caught.value, key_hint="set ALPACA_DEMO_API_KEY").endswith(
        "; set ALPACA_DEMO_API_KEY."
    )


def test_an_answer_that_is_not_json_is_reported_not_crashed_on():
    transport = httpx.MockTransport(lambda request: httpx.Response(200, text="<html>proxy</html>"))
    with pytest.raises(APIRequestError, match="cannot read"):
        AlpacaClient("http://server", transport=transport).info()


def test_a_server_that_is_down_is_reported_plainly():
    url = f"http://127.0.0.1:{free_port()}"
    client = AsyncAlpacaClient(url)

    async def first_event():
        async for event in client.stream_generate("hi"):
            return event

    with pytest.raises(APIRequestError) as caught:
        asyncio.run(first_event())

    assert caught.value.status is None
    assert (
        str(caught.value) == f"The server at {url} cannot be reached (ConnectError). Is it running?"
    )
