"""The teacher: any OpenAI-compatible endpoint, asked through its Completions or Chat API.

Usage:
    async with Teacher(TeacherConfig("http://127.0.0.1:8000/v1", model=None)) as teacher:
        await teacher.resolve_model()           # the first model of GET /models when not named
        answer = await teacher.complete(prompt) # Answer(text, finish_reason, tokens, api)

`api="auto"` asks the Completions API (`POST /completions`, the prompt continued as Alpaca did)
and switches to the Chat API (`POST /chat/completions`, the prompt as one user message) for good
when the teacher does not serve completions for that model (404, 405, or a 400 that says so).
This project's server and vLLM's serve both; OpenAI's current models serve chat only.

Busy or failing answers (429, 500, 502, 503, 504) and broken connections are asked again up to
`retries` times, waiting at least the teacher's `Retry-After` and otherwise an exponential
backoff with jitter. A `max_tokens` the teacher refuses (a 400 that names it, as a server with a
smaller limit or context answers) is halved, down to 256, until the teacher takes it; later
requests start from there. A prompt that still does not fit the teacher's context (seed tasks with
long outputs, on a teacher of small context) raises PromptTooLong: the run skips that request.
Everything else is a TeacherError whose message is one line for people: the teacher is down,
refuses the key, does not know the model, or refused the request, and what it said.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx

log = logging.getLogger("alpaca.generate")

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
MIN_MAX_TOKENS = 256
CONNECT_TIMEOUT_S = 10.0
Api = Literal["auto", "completions", "chat"]


class TeacherError(RuntimeError):
    """The teacher cannot be used (after retries, where retrying made sense); one line."""


class PromptTooLong(TeacherError):
    """This prompt leaves too little room for an answer in the teacher's context (a request
    showing seed tasks with long outputs, on a teacher of small context); the run skips it."""


@dataclass
class TeacherConfig:
    base_url: str
    model: str | None = None
    api_key: str | None = None
    api: Api = "auto"
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 3072
    stop: tuple[str, ...] = ("\n20", "20.")
    retries: int = 6  # asks in all for one request, the first included
    first_backoff_s: float = 1.0
    max_backoff_s: float = 60.0
    timeout_s: float = 600.0  # one answer of up to max_tokens from a slow teacher
    extra: dict[str, Any] = field(default_factory=dict)  # more request fields, e.g. {"seed": 1}


@dataclass(frozen=True)
class Answer:
    text: str
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    api: str  # "completions" or "chat": which one answered


class Teacher:
    """One connection pool to the teacher; safe to call from many tasks at once."""

    def __init__(
        self, config: TeacherConfig, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self.config = config
        self.base_url = config.base_url.rstrip("/")
        self.api: str = "completions" if config.api == "auto" else config.api
        self.max_tokens = config.max_tokens
        headers = {"Authorization": f"Bearer {config.api_key}"} if config.api_key else {}
        options: dict[str, Any] = {
            "base_url": self.base_url,
            "headers": headers,
            "timeout": httpx.Timeout(config.timeout_s, connect=CONNECT_TIMEOUT_S),
            "trust_env": False,
        }
        if transport is not None:
            options["transport"] = transport
        self._http = httpx.AsyncClient(**options)

    async def __aenter__(self) -> Teacher:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._http.aclose()

    @property
    def model(self) -> str:
        if not self.config.model:
            raise TeacherError("no teacher model: pass --model or call resolve_model() first")
        return self.config.model

    async def resolve_model(self) -> str:
        """The model to ask: `config.model`, or else the first the teacher lists."""
        if self.config.model:
            return self.config.model
        response = await self._send("GET", "/models", None)
        if response.status_code in (401, 403):
            raise self._refusal(response, _error_message(response))
        try:
            models = [item["id"] for item in response.json()["data"]]
        except (ValueError, KeyError, TypeError) as err:
            raise TeacherError(
                f"the teacher at {self.base_url} lists no models (GET /models answered "
                f"{response.text[:120]!r}); pass --model"
            ) from err
        if not models:
            raise TeacherError(f"the teacher at {self.base_url} serves no model; pass --model")
        self.config.model = models[0]
        return models[0]

    async def complete(self, prompt: str) -> Answer:
        """The teacher's answer to one prompt, asked again while that may help. Raises
        PromptTooLong when the prompt leaves no room for an answer in the teacher's context."""
        max_tokens = self.max_tokens
        while True:
            api = self.api
            body = self._body(api, prompt, max_tokens)
            path = "/completions" if api == "completions" else "/chat/completions"
            response = await self._send("POST", path, body)
            if response.status_code == 200:
                if max_tokens < self.max_tokens:
                    log.warning(
                        "the teacher refused max_tokens %d: asking with %d from now on",
                        self.max_tokens,
                        max_tokens,
                    )
                    self.max_tokens = max_tokens
                return self._answer(api, response)
            message = _error_message(response)
            if api == "completions" and self.config.api == "auto" and _no_completions(response):
                log.info("the teacher serves no completions for %s: using chat", self.model)
                self.api = "chat"
                continue
            if response.status_code == 400 and _about_length(response, message):
                if max_tokens // 2 >= MIN_MAX_TOKENS:
                    max_tokens = min(max_tokens // 2, self.max_tokens)
                    continue
                if _context_exceeded(response, message):
                    raise PromptTooLong(
                        f"the prompt does not fit the teacher's context with {max_tokens} new "
                        f"tokens: {message}"
                    )
            raise self._refusal(response, message)

    def _body(self, api: str, prompt: str, max_tokens: int) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "temperature": self.config.temperature,
            "top_p": self.config.top_p,
            "max_tokens": max_tokens,
            "stop": list(self.config.stop),
            "n": 1,
            **self.config.extra,
        }
        if api == "completions":
            body["prompt"] = prompt
        else:
            body["messages"] = [{"role": "user", "content": prompt}]
        return body

    def _answer(self, api: str, response: httpx.Response) -> Answer:
        try:
            payload = response.json()
            choice = payload["choices"][0]
            text = choice["text"] if api == "completions" else choice["message"]["content"]
            usage = payload.get("usage") or {}
            return Answer(
                text=text or "",
                finish_reason=choice.get("finish_reason"),
                prompt_tokens=int(usage.get("prompt_tokens") or 0),
                completion_tokens=int(usage.get("completion_tokens") or 0),
                api=api,
            )
        except (ValueError, KeyError, IndexError, TypeError) as err:
            raise TeacherError(
                f"the teacher at {self.base_url} answered {api} with something that is not an "
                f"OpenAI-style completion: {response.text[:120]!r}"
            ) from err

    async def _send(self, method: str, path: str, body: dict[str, Any] | None) -> httpx.Response:
        """The answer to one call, after retrying what is worth retrying."""
        attempt = 0
        while True:
            attempt += 1
            try:
                response = await self._http.request(method, path, json=body)
            except httpx.TransportError as err:
                if attempt >= self.config.retries:
                    raise TeacherError(
                        f"the teacher at {self.base_url} cannot be reached "
                        f"({type(err).__name__}: {err or 'no answer'}) after {attempt} tries; "
                        "is it running?"
                    ) from err
                wait = self._backoff(attempt, None)
                log.warning("teacher %s (%s): trying again in %.1fs", path, err, wait)
                await asyncio.sleep(wait)
                continue
            if response.status_code not in RETRY_STATUSES:
                return response
            if attempt >= self.config.retries:
                raise TeacherError(
                    f"the teacher at {self.base_url} answered {response.status_code} to {path} "
                    f"{attempt} times in a row: {_error_message(response)}"
                )
            wait = self._backoff(attempt, response.headers.get("Retry-After"))
            log.info(
                "teacher %s answered %d: trying again in %.1fs", path, response.status_code, wait
            )
            await asyncio.sleep(wait)

    def _backoff(self, attempt: int, retry_after: str | None) -> float:
        wait = self.config.first_backoff_s * 2 ** (attempt - 1)
        wait *= 1 + random.random() * 0.25  # jitter: concurrent requests do not retry in step
        if retry_after:
            try:
                wait = max(wait, float(retry_after))
            except ValueError:
                pass  # an HTTP date: the backoff stands
        return min(wait, self.config.max_backoff_s)

    def _refusal(self, response: httpx.Response, message: str) -> TeacherError:
        status = response.status_code
        where = f"the teacher at {self.base_url}"
        if status in (401, 403):
            return TeacherError(
                f"{where} refused the API key ({status}: {message}); "
                "pass --api-key or set ALPACA_TEACHER_API_KEY"
            )
        if status == 404:
            return TeacherError(f"{where} answered 404 for model {self.model!r}: {message}")
        return TeacherError(f"{where} refused the request ({status}): {message}")


def _error_body(response: httpx.Response) -> dict[str, Any]:
    """The answer's JSON body, or {} when it has none."""
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _error_field(response: httpx.Response, name: str) -> str:
    """A field of the OpenAI-style `{"error": {...}}` body, or "" (`param`, `code`)."""
    error = _error_body(response).get("error")
    return str(error.get(name) or "") if isinstance(error, dict) else ""


def _error_message(response: httpx.Response) -> str:
    body = _error_body(response)
    error = body.get("error")
    if isinstance(error, dict) and error.get("message"):
        return str(error["message"])[:300]
    if isinstance(error, str):
        return error[:300]
    if isinstance(body.get("detail"), str):
        return body["detail"][:300]
    return (response.text or response.reason_phrase or "no message").strip()[:300]


_CONTEXT = re.compile(r"context (length|window)|model's context|maximum context", re.IGNORECASE)


def _context_exceeded(response: httpx.Response, message: str) -> bool:
    return _error_field(response, "code") == "context_length_exceeded" or bool(
        _CONTEXT.search(message)
    )


def _about_length(response: httpx.Response, message: str) -> bool:
    """A refusal of the answer's length: max_tokens above the teacher's limit, or prompt plus
    max_tokens above its context (vLLM and OpenAI say the second for both)."""
    return (
        _error_field(response, "param") in ("max_tokens", "max_completion_tokens")
        or "max_tokens" in message
        or _context_exceeded(response, message)
    )


def _no_completions(response: httpx.Response) -> bool:
    """The teacher does not serve the Completions API (for this model)."""
    if response.status_code in (404, 405):
        return True
    message = _error_message(response).lower()
    return response.status_code == 400 and (
        "chat model" in message or "not supported" in message and "completion" in message
    )
