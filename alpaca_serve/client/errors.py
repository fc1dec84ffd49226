"""The one error of the API client, and the one way of wording it for people.

Usage:
    try:
        client.send_rating(generation_id, "up")
    except APIRequestError as err:
        print(describe_error(err))              # a sentence; str(err) is the same sentence
        print(err.status, err.type, err.param)  # what the server said, for code

Every failure of a call ends as an APIRequestError: an error answer of the server (its
`{"error": {"message", "type", "param"}}` body), an error event inside a stream, a server that
cannot be reached, or an answer that is not the JSON it should be.
"""

from __future__ import annotations

from typing import Any

# `type` of the failures that are not an error body of the server.
UNREACHABLE = "unreachable"  # nothing answered at that address (connection refused, DNS, ...)
CONNECTION_FAILED = "connection_failed"  # the connection broke or timed out after it was made
INVALID_RESPONSE = "invalid_response"  # an answer that is not the JSON the API promises


class APIRequestError(Exception):
    """A call to the server that failed; `str(err)` words it for people (`describe_error`)."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None,
        type: str | None = None,
        param: str | None = None,
        server_url: str = "",
        request: str = "",
        details: dict[str, Any] | None = None,
    ):
        super().__init__(message)
        self.status = status  # the HTTP status; None when no answer came
        self.type = type  # the server's error type (`invalid_request_error`, ...) or ours above
        self.message = message  # the server's message, or what went wrong on the way
        self.param = param  # the request field the server blamed, if any
        self.server_url = server_url
        self.request = request  # "POST /feedback": which call failed
        self.details = details or {}  # other fields of the error body (`category`, ...)

    def __str__(self) -> str:
        return describe_error(self)


def describe_error(err: APIRequestError, key_hint: str | None = None) -> str:
    """A readable sentence for `err`; `key_hint` says where the caller's API key is set
    (e.g. "set ALPACA_DEMO_API_KEY"), added when the server wants one."""
    where = f"The server at {err.server_url}"
    if err.type == UNREACHABLE:
        return f"{where} cannot be reached ({err.message}). Is it running?"
    if err.type == CONNECTION_FAILED:
        return f"The connection to the server at {err.server_url} failed ({err.message})."
    if err.type == INVALID_RESPONSE:
        return f"{where} sent an answer this client cannot read ({err.message})."
    if err.type == "content_filter":
        return f"This request was refused by the content filter ({err.details.get('category')})."
    if err.status == 422 or (err.status == 400 and err.type == "invalid_request_error"):
        # 400 is how the OpenAI-compatible routes refuse a field (/generate uses 422).
        return f"The request was not accepted: {err.message}"
    if err.status == 401:
        return f"{where} wants a valid API key ({err.message})" + (
            f"; {key_hint}." if key_hint else "."
        )
    if err.type == "rate_limited":
        return "This API key has used up its rate limit for now; please try again in a moment."
    if err.status == 429:
        return "The server is busy right now; please try again in a moment."
    if err.status == 503:
        return f"The model is not available right now ({err.message}); please try again shortly."
    if err.status == 404:
        return f"Not found: {err.message}"
    return f"{where} answered {err.status} to {err.request}: {err.message}"
