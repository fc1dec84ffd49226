"""Calls of alpaca-serve's HTTP API, the same for a synchronous and an asynchronous caller.

Usage:
    with AlpacaClient("http://127.0.0.1:8000", api_key=None) as client:   # one connection pool
        reply = client.generate("Name a colour.", temperature=0)        # {"id", "text", ...}
        client.send_rating(reply["id"], "up", session_id="alice")
        ids = client.import_generations("text-davinci-003", [{"instruction", "input", "output"}])
        for vote in client.comparisons(): ...                            # every page, oldest first
        board = client.leaderboard("human", rounds=200, seed=0)          # {"rows": [...], ...}
    async with AsyncAlpacaClient(url, retries=Retries(attempts=6)) as client:
        async for event in client.stream_generate("Name a colour."): ...  # {"id", "text", ...}

Without `with`, each call opens and closes its own connection: the demo works that way, since its
handlers run on whichever event loop Gradio gives them.

Both clients build the same requests, send the API key as `Authorization: Bearer`, ignore the
environment's proxy settings (`trust_env=False`: the server is usually local) and raise
`alpaca_serve.client.errors.APIRequestError` for every failure. A busy (429) or unavailable (503)
answer is asked again only by a client made with `Retries(attempts=N)`, after waiting at least the
server's `Retry-After`.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Any

import httpx

from alpaca_serve.client.errors import (
    CONNECTION_FAILED,
    INVALID_RESPONSE,
    UNREACHABLE,
    APIRequestError,
)

# Answers worth asking again: the server is busy (429) or loading / draining (503).
RETRY_STATUSES = (429, 503)
IMPORT_BATCH = 200  # answers per import request, well under the server's limit of 1000
CONNECT_TIMEOUT_S = 10.0  # a server that does not accept a connection by then is not there


# Where the command-line tools read a key they are not given (alpaca-eval, alpaca-loop): an
# option's value shows in the process list and the shell's history, the environment's does not.
API_KEY_VARIABLE = "ALPACA_API_KEY"
JUDGE_API_KEY_VARIABLE = "ALPACA_JUDGE_API_KEY"


@dataclass(frozen=True)
class Retries:
    """How patiently to ask again when the server is busy or unavailable."""

    attempts: int = 1  # tries in all; 1 asks once
    first_backoff_s: float = 1.0  # the wait after the first failure, doubled after each
    max_backoff_s: float = 30.0  # no wait is longer, whatever Retry-After says

    def wait_s(self, attempt: int, retry_after: str | None = None) -> float:
        """Seconds to wait after failed attempt number `attempt` (counted from 1)."""
        wait = self.first_backoff_s * 2 ** (attempt - 1)
        if retry_after and retry_after.replace(".", "", 1).isdigit():
            wait = max(wait, float(retry_after))
        return min(wait, self.max_backoff_s)


@dataclass(frozen=True)
class _Call:
    """One request of the API, before it is sent."""

    method: str
    path: str
    json: dict[str, Any] | None = None
    params: dict[str, Any] | None = None
    headers: dict[str, str] | None = None

    def __str__(self) -> str:
        return f"{self.method} {self.path}"


ASK_ONCE = Retries()  # the default: no second try

_DONE = object()  # the `[DONE]` that ends an event stream


# --- the requests, built once for both clients ------------------------------------------------


SESSION_HEADER = "X-Session-Id"  # the feedback session an answer is shown to
VISITOR_HEADER = "X-Forwarded-For"  # whom the demo asks for (the server trusts it from the demo)


def _generate(instruction: str, input: str, options: dict[str, Any], stream: bool) -> _Call:
    options = dict(options)
    session_id = options.pop("session_id", None)
    body = {
        "instruction": instruction,
        "input": input,
        **{name: value for name, value in options.items() if value is not None},
    }
    headers = {SESSION_HEADER: session_id} if session_id is not None else None
    return _Call("POST", "/generate", {**body, "stream": True} if stream else body, None, headers)


def _rating(
    generation_id: str,
    rating: str,
    session_id: str | None,
    flag: str | None,
    comment: str | None,
    visitor: str | None = None,
) -> _Call:
    body = {
        "generation_id": generation_id,
        "rating": rating,
        "session_id": session_id,
        "flag": flag,
        "comment": comment,
    }
    body = {k: v for k, v in body.items() if v is not None}
    return _Call("POST", "/feedback", body, None, _visitor(visitor))


def _comparison(
    generation_ids: list[str],
    winner: str,
    session_id: str | None,
    voter: str,
    visitor: str | None = None,
) -> _Call:
    body = {"generation_ids": list(generation_ids), "winner": winner, "voter": voter}
    if session_id is not None:
        body["session_id"] = session_id
    return _Call("POST", "/feedback", body, None, _visitor(visitor))


def _visitor(visitor: str | None) -> dict[str, str] | None:
    return {VISITOR_HEADER: visitor} if visitor else None


def _import_batches(model: str, answers: list[dict[str, Any]]) -> Iterator[_Call]:
    for start in range(0, len(answers), IMPORT_BATCH):
        yield _Call(
            "POST",
            "/generations/import",
            {"model": model, "answers": answers[start : start + IMPORT_BATCH]},
        )


def _comparisons_page(after: int, limit: int | None) -> _Call:
    params = {"after": after} if limit is None else {"after": after, "limit": limit}
    return _Call("GET", "/feedback/comparisons", params=params)


def _leaderboard(voter: str, rounds: int | None, seed: int | None) -> _Call:
    params = {"voter": voter, "rounds": rounds, "seed": seed}
    return _Call(
        "GET",
        "/feedback/leaderboard",
        params={name: value for name, value in params.items() if value is not None},
    )


def _chat(messages: list[dict[str, str]], model: str, options: dict[str, Any]) -> _Call:
    body = {
        "model": model,
        "messages": messages,
        **{name: value for name, value in options.items() if value is not None},
    }
    return _Call("POST", "/v1/chat/completions", body)


_SUMMARY = _Call("GET", "/feedback/summary")
_MODELS = _Call("GET", "/v1/models")
_INFO = _Call("GET", "/info")
_RELOAD_ADAPTERS = _Call("POST", "/admin/adapters/reload")


class _ClientBase:
    """What both clients share: settings, retry decisions, and reading answers and errors."""

    def __init__(
        self,
        server_url: str,
        api_key: str | None = None,
        *,
        timeout_s: float = 300.0,
        retries: Retries = ASK_ONCE,
        transport: httpx.BaseTransport | httpx.AsyncBaseTransport | None = None,
    ):
        self.server_url = server_url.rstrip("/")
        self.retries = retries
        self._options: dict[str, Any] = {
            "base_url": self.server_url,
            "headers": {"Authorization": f"Bearer {api_key}"} if api_key else {},
            "timeout": httpx.Timeout(timeout_s, connect=min(CONNECT_TIMEOUT_S, timeout_s)),
            "trust_env": False,
        }
        if transport is not None:
            self._options["transport"] = transport

    def _retry_wait(
        self,
        attempt: int,
        response: httpx.Response | None = None,
        error: httpx.TransportError | None = None,
    ) -> float | None:
        """Seconds to wait before asking again, or None when the failure is final."""
        if attempt >= self.retries.attempts:
            return None
        if error is not None:
            # A refused connection means no server there: asking again will not help.
            return None if isinstance(error, httpx.ConnectError) else self.retries.wait_s(attempt)
        if response is not None and response.status_code in RETRY_STATUSES:
            return self.retries.wait_s(attempt, response.headers.get("Retry-After"))
        return None

    def _transport_error(self, err: httpx.TransportError, call: _Call) -> APIRequestError:
        kind = UNREACHABLE if isinstance(err, httpx.ConnectError) else CONNECTION_FAILED
        return APIRequestError(
            type(err).__name__,
            status=None,
            type=kind,
            server_url=self.server_url,
            request=str(call),
        )

    def _response_error(self, response: httpx.Response, call: _Call) -> APIRequestError:
        try:
            body = response.json()
        except ValueError:
            body = None
        error = body.get("error") if isinstance(body, dict) else None
        if not isinstance(error, dict):
            error = {"message": response.text[:200] or response.reason_phrase}
        return self._error_of(error, response.status_code, call)

    def _error_of(self, error: dict[str, Any], status: int, call: _Call) -> APIRequestError:
        details = {k: v for k, v in error.items() if k not in ("message", "type", "param")}
        return APIRequestError(
            str(error.get("message") or "no message"),
            status=status,
            type=error.get("type"),
            param=error.get("param"),
            server_url=self.server_url,
            request=str(call),
            details=details,
        )

    def _invalid(self, what: str, call: _Call) -> APIRequestError:
        return APIRequestError(
            what, status=200, type=INVALID_RESPONSE, server_url=self.server_url, request=str(call)
        )

    def _json(self, response: httpx.Response, call: _Call) -> Any:
        try:
            return response.json()
        except ValueError as err:
            raise self._invalid(f"not JSON: {response.text[:100]!r}", call) from err

    def _event(self, line: str, call: _Call) -> Any:
        """The event a stream line carries: a dict, _DONE, or None for other lines."""
        if not line.startswith("data: "):
            return None
        data = line[len("data: ") :]
        if data == "[DONE]":
            return _DONE
        try:
            event = json.loads(data)
        except ValueError as err:
            raise self._invalid(f"an event that is not JSON: {data[:100]!r}", call) from err
        if isinstance(event.get("error"), dict):
            # The stream had begun (status 200) when the server could not go on.
            status = 504 if event["error"].get("type") == "timeout" else 503
            raise self._error_of(event["error"], status, call)
        return event


class AlpacaClient(_ClientBase):
    """The server's API for synchronous code (`alpaca-eval`, scripts)."""

    def __init__(
        self,
        server_url: str,
        api_key: str | None = None,
        *,
        timeout_s: float = 300.0,
        retries: Retries = ASK_ONCE,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ):
        super().__init__(
            server_url, api_key, timeout_s=timeout_s, retries=retries, transport=transport
        )
        self._sleep = sleep
        self._http: httpx.Client | None = None

    def __enter__(self) -> AlpacaClient:
        self._http = httpx.Client(**self._options)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None

    def generate(self, instruction: str, input: str = "", **options: Any) -> dict[str, Any]:
        """`POST /generate`: one answer, `{"id", "model", "text", "finish_reason", "usage"}`.
        `options` are the sampling fields (temperature, max_new_tokens, ...); None leaves one
        to the server's default. `session_id=` shows the answer to that feedback session
        (X-Session-Id): only that session may then rate it or vote on it."""
        return self._call(_generate(instruction, input, options, stream=False))

    def stream_generate(
        self, instruction: str, input: str = "", **options: Any
    ) -> Iterator[dict[str, Any]]:
        """`POST /generate` streamed: its events (`{"id", "text"}`, then one with
        `finish_reason`), as they come."""
        call = _generate(instruction, input, options, stream=True)
        with self._connection() as http:
            response = self._send(http, call, stream=True)
            try:
                for line in response.iter_lines():
                    event = self._event(line, call)
                    if event is _DONE:
                        return
                    if event is not None:
                        yield event
            except httpx.TransportError as err:
                raise self._transport_error(err, call) from err
            finally:
                response.close()

    def send_rating(
        self,
        generation_id: str,
        rating: str,
        session_id: str | None = None,
        *,
        flag: str | None = None,
        comment: str | None = None,
        visitor: str | None = None,
    ) -> dict[str, Any]:
        """`POST /feedback` with a rating ("up" or "down"): `{"id", "created"}`; created is
        False when it replaced this session's earlier rating. `visitor`: for a front end such
        as the demo, the address of the person it rates for (the server counts its feedback
        limit per visitor when the front end's key is the demo's own)."""
        return self._call(_rating(generation_id, rating, session_id, flag, comment, visitor))

    def send_comparison(
        self,
        generation_ids: list[str],
        winner: str,
        session_id: str | None = None,
        voter: str = "human",
        *,
        visitor: str | None = None,
    ) -> dict[str, Any]:
        """`POST /feedback` with a pairwise vote (`winner`: one of the ids, "tie" or
        "both_bad"): `{"id", "created"}`. `visitor`: as for send_rating."""
        return self._call(_comparison(generation_ids, winner, session_id, voter, visitor))

    def import_generations(self, model: str, answers: list[dict[str, Any]]) -> list[str]:
        """`POST /generations/import` (in batches): store `answers` (instruction, input, output)
        under `model`; their new generation ids, in order."""
        ids: list[str] = []
        for call in _import_batches(model, answers):
            ids += self._call(call)["generation_ids"]
        return ids

    def feedback_summary(self) -> dict[str, Any]:
        """`GET /feedback/summary`: ratings per model and the pairwise tables."""
        return self._call(_SUMMARY)

    def comparisons_page(self, after: int = 0, limit: int | None = None) -> dict[str, Any]:
        """`GET /feedback/comparisons`: `{"comparisons": [...], "next_after", "excluded_votes",
        "excluded_sessions"}` (votes of excluded sessions are not listed, only counted)."""
        return self._call(_comparisons_page(after, limit))

    def leaderboard(
        self, voter: str = "human", rounds: int | None = None, seed: int | None = None
    ) -> dict[str, Any]:
        """`GET /feedback/leaderboard`: every model's Bradley-Terry score from `voter`'s votes
        ("human" or "machine"), best first, with `rounds` bootstrap rounds of `seed` for the
        intervals (default: the server's): `{"rows": [...], "votes", "voter", ...}`."""
        return self._call(_leaderboard(voter, rounds, seed))

    def comparisons(self) -> Iterator[dict[str, Any]]:
        """Every pairwise vote in the store, oldest first, page after page."""
        after: int | None = 0
        while after is not None:
            page = self.comparisons_page(after)
            yield from page["comparisons"]
            after = page["next_after"]

    def models(self) -> list[dict[str, Any]]:
        """`GET /v1/models`: the models served, as OpenAI lists them (`{"id", ...}`)."""
        return self._call(_MODELS).get("data") or []

    def chat_completion(
        self, messages: list[dict[str, str]], model: str, **options: Any
    ) -> dict[str, Any]:
        """`POST /v1/chat/completions` (not streamed): the OpenAI-shaped answer."""
        return self._call(_chat(messages, model, options))

    def info(self) -> dict[str, Any]:
        """`GET /info`: model, version, limits and request defaults."""
        return self._call(_INFO)

    def reload_adapters(self) -> dict[str, Any]:
        """`POST /admin/adapters/reload`: rescan the adapters folder now; the served and refused
        adapters, as /info lists them."""
        return self._call(_RELOAD_ADAPTERS)

    @contextmanager
    def _connection(self) -> Iterator[httpx.Client]:
        if self._http is not None:
            yield self._http
            return
        with httpx.Client(**self._options) as http:
            yield http

    def _call(self, call: _Call) -> Any:
        with self._connection() as http:
            return self._json(self._send(http, call), call)

    def _send(self, http: httpx.Client, call: _Call, stream: bool = False) -> httpx.Response:
        """The successful answer to `call`, after retries; raises APIRequestError."""
        attempt = 0
        while True:
            attempt += 1
            request = http.build_request(
                call.method, call.path, json=call.json, params=call.params, headers=call.headers
            )
            try:
                response = http.send(request, stream=stream)
            except httpx.TransportError as err:
                wait = self._retry_wait(attempt, error=err)
                if wait is None:
                    raise self._transport_error(err, call) from err
            else:
                if response.is_success:
                    return response
                response.read()  # a streamed answer's error body has not been read yet
                wait = self._retry_wait(attempt, response=response)
                if wait is None:
                    raise self._response_error(response, call)
            self._sleep(wait)


class AsyncAlpacaClient(_ClientBase):
    """The server's API for asyncio code (the demo, `alpaca-eval answer`)."""

    def __init__(
        self,
        server_url: str,
        api_key: str | None = None,
        *,
        timeout_s: float = 300.0,
        retries: Retries = ASK_ONCE,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ):
        super().__init__(
            server_url, api_key, timeout_s=timeout_s, retries=retries, transport=transport
        )
        self._sleep = sleep
        self._http: httpx.AsyncClient | None = None

    async def __aenter__(self) -> AsyncAlpacaClient:
        self._http = httpx.AsyncClient(**self._options)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    async def generate(self, instruction: str, input: str = "", **options: Any) -> dict[str, Any]:
        """As `AlpacaClient.generate`."""
        return await self._call(_generate(instruction, input, options, stream=False))

    async def stream_generate(
        self, instruction: str, input: str = "", **options: Any
    ) -> AsyncIterator[dict[str, Any]]:
        """As `AlpacaClient.stream_generate`."""
        call = _generate(instruction, input, options, stream=True)
        async with self._connection() as http:
            response = await self._send(http, call, stream=True)
            try:
                async for line in response.aiter_lines():
                    event = self._event(line, call)
                    if event is _DONE:
                        return
                    if event is not None:
                        yield event
            except httpx.TransportError as err:
                raise self._transport_error(err, call) from err
            finally:
                await response.aclose()

    async def send_rating(
        self,
        generation_id: str,
        rating: str,
        session_id: str | None = None,
        *,
        flag: str | None = None,
        comment: str | None = None,
        visitor: str | None = None,
    ) -> dict[str, Any]:
        """As `AlpacaClient.send_rating`."""
        return await self._call(_rating(generation_id, rating, session_id, flag, comment, visitor))

    async def send_comparison(
        self,
        generation_ids: list[str],
        winner: str,
        session_id: str | None = None,
        voter: str = "human",
        *,
        visitor: str | None = None,
    ) -> dict[str, Any]:
        """As `AlpacaClient.send_comparison`."""
        return await self._call(_comparison(generation_ids, winner, session_id, voter, visitor))

    async def import_generations(self, model: str, answers: list[dict[str, Any]]) -> list[str]:
        """As `AlpacaClient.import_generations`."""
        ids: list[str] = []
        for call in _import_batches(model, answers):
            ids += (await self._call(call))["generation_ids"]
        return ids

    async def feedback_summary(self) -> dict[str, Any]:
        """As `AlpacaClient.feedback_summary`."""
        return await self._call(_SUMMARY)

    async def comparisons_page(self, after: int = 0, limit: int | None = None) -> dict[str, Any]:
        """As `AlpacaClient.comparisons_page`."""
        return await self._call(_comparisons_page(after, limit))

    async def leaderboard(
        self, voter: str = "human", rounds: int | None = None, seed: int | None = None
    ) -> dict[str, Any]:
        """As `AlpacaClient.leaderboard`."""
        return await self._call(_leaderboard(voter, rounds, seed))

    async def comparisons(self) -> AsyncIterator[dict[str, Any]]:
        """As `AlpacaClient.comparisons`."""
        after: int | None = 0
        while after is not None:
            page = await self.comparisons_page(after)
            for row in page["comparisons"]:
                yield row
            after = page["next_after"]

    async def models(self) -> list[dict[str, Any]]:
        """As `AlpacaClient.models`."""
        return (await self._call(_MODELS)).get("data") or []

    async def chat_completion(
        self, messages: list[dict[str, str]], model: str, **options: Any
    ) -> dict[str, Any]:
        """As `AlpacaClient.chat_completion`."""
        return await self._call(_chat(messages, model, options))

    async def info(self) -> dict[str, Any]:
        """As `AlpacaClient.info`."""
        return await self._call(_INFO)

    async def reload_adapters(self) -> dict[str, Any]:
        """As `AlpacaClient.reload_adapters`."""
        return await self._call(_RELOAD_ADAPTERS)

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[httpx.AsyncClient]:
        if self._http is not None:
            yield self._http
            return
        async with httpx.AsyncClient(**self._options) as http:
            yield http

    async def _call(self, call: _Call) -> Any:
        async with self._connection() as http:
            return self._json(await self._send(http, call), call)

    async def _send(
        self, http: httpx.AsyncClient, call: _Call, stream: bool = False
    ) -> httpx.Response:
        """As `AlpacaClient._send`."""
        attempt = 0
        while True:
            attempt += 1
            request = http.build_request(
                call.method, call.path, json=call.json, params=call.params, headers=call.headers
            )
            try:
                response = await http.send(request, stream=stream)
            except httpx.TransportError as err:
                wait = self._retry_wait(attempt, error=err)
                if wait is None:
                    raise self._transport_error(err, call) from err
            else:
                if response.is_success:
                    return response
                await response.aread()  # a streamed answer's error body has not been read yet
                wait = self._retry_wait(attempt, response=response)
                if wait is None:
                    raise self._response_error(response, call)
            await self._sleep(wait)
