"""OpenAI-compatible routes: `/v1/completions`, `/v1/chat/completions`, `/v1/models`.

Usage (any OpenAI client):
    client = openai.OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="<key or anything>")
    client.chat.completions.create(model="SmolLM2-135M-Instruct",
                                   messages=[{"role": "user", "content": "Name a colour."}])

Each request is turned into a `/generate` request and takes the same path: admission, validation,
content filters, the generation log, metrics and limits.

Chat: the last message must come from the user; it is the Alpaca instruction. Earlier messages,
if any (system prompts included), become the Alpaca input (`server/chat.py`). Completions: the
prompt is sent as it is.

Ids: the response's `id` is the generation id of its first choice (`POST /feedback` takes it);
with `n` > 1, choice i (i >= 1) is the generation `<id>-<i>`, its own generation in the log,
rated on its own.

Nothing is silently ignored: a field that would change the answer and that this server does not
support (tools, logit_bias, audio, ...) is a 400 naming it; fields that only tune sampling are
passed to vLLM; a field this server does not know at all is logged once per name (the first 100
names), then ignored.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from alpaca_serve.server.access import is_admin, without_admin_details
from alpaca_serve.server.chat import ChatError, ChatMessage, alpaca_fields
from alpaca_serve.server.engine import TokenLogprob
from alpaca_serve.server.errors import APIError
from alpaca_serve.server.pipeline import GENERATION_ERRORS, Generation, Refusal
from alpaca_serve.server.runtime import Runtime, RuntimeDep
from alpaca_serve.server.schemas import (
    DEFAULT_TEMPERATURE,
    DEFAULT_TOP_K,
    DEFAULT_TOP_P,
    GENERATION_RESPONSES,
    MAX_LOGPROBS,
    MAX_STOP_CHARS,
    MAX_STOP_SEQUENCES,
    GenerateRequest,
    error_doc,
)
from alpaca_serve.server.streaming import (
    DONE,
    EventStreamResponse,
    error_event,
    run_unless_disconnected,
    sse,
)

router = APIRouter(prefix="/v1")
log = logging.getLogger("alpaca.server")

# OpenAI's finish reasons: the end of sequence and a stop string are both "stop".
FINISH_REASONS = {
    "eos": "stop",
    "stop": "stop",
    "length": "length",
    "content_filter": "content_filter",
}
ERRORS: dict[int | str, dict[str, Any]] = {
    **GENERATION_RESPONSES,
    400: error_doc("a parameter is invalid or not supported, or a content filter refused it"),
    404: error_doc("no such model"),
}
ERRORS.pop(422)
MAX_COMPLETION_LOGPROBS = 5  # OpenAI's limit for the completions API

# Fields that change what the caller gets and that this server does not support: a request
# setting one (to anything but null, empty, false or "none") is refused, naming it.
REFUSED_FIELDS = {
    "chat": (
        "tools",
        "tool_choice",
        "functions",
        "function_call",
        "parallel_tool_calls",
        "logit_bias",
        "audio",
        "modalities",
        "prediction",
        "web_search_options",
    ),
    "completion": ("logit_bias", "suffix"),
}
# Known OpenAI fields that change nothing here: accepted without a word.
ACCEPTED_FIELDS = {"user", "metadata", "store", "service_tier", "name", "reasoning_effort"}


StopString = Annotated[str, Field(min_length=1, max_length=MAX_STOP_CHARS)]
StopList = Annotated[list[StopString], Field(max_length=MAX_STOP_SEQUENCES)]


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")

    include_usage: bool | None = Field(
        False, description="send a last chunk with the usage (and no choices)"
    )


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)

    name: str = Field("response", max_length=64)
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class _Sampling(BaseModel):
    """The fields both request kinds share, with OpenAI's names (and vLLM's sampling extras)."""

    model_config = ConfigDict(extra="allow")

    model: str
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    stop: StopString | StopList | None = None
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    n: int | None = Field(1, ge=1, description="answers to generate, up to ALPACA_MAX_CHOICES")
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    response_format: ResponseFormat | None = None
    # vLLM's sampling extras.
    top_k: int | None = Field(None, ge=-1, description="-1 or 0: all tokens")
    min_tokens: int | None = Field(None, ge=0)
    repetition_penalty: float | None = Field(None, gt=0.0, le=2.0)


class CompletionRequest(_Sampling):
    prompt: str | list[str]
    echo: bool | None = Field(False, description="the prompt comes back before the answer")
    logprobs: int | None = Field(None, ge=0, le=MAX_COMPLETION_LOGPROBS)
    best_of: int | None = Field(None, ge=1, description="only equal to n (or absent)")


class ChatRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    logprobs: bool | None = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)


@router.get("/models")
async def list_models(request: Request, runtime: RuntimeDep) -> dict:
    """The base model, then every served LoRA adapter (`parent`: the base, as vLLM says); an
    adapter's folder (`root`) only for an admin."""
    body = {"object": "list", "data": runtime.list_models()}
    return body if is_admin(request) else without_admin_details(body)


@router.post("/completions", responses=ERRORS)
async def completions(body: CompletionRequest, request: Request, runtime: RuntimeDep):
    _check_fields(body, "completion", runtime)
    prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
    if len(prompts) != 1:
        raise _bad("prompt must be one string (batches are not supported)", "prompt")
    if body.best_of is not None and body.best_of != (body.n or 1):
        raise _bad(
            f"best_of ({body.best_of}) must equal n ({body.n or 1}): this server returns every "
            f"answer it generates",
            "best_of",
        )
    if body.echo and body.logprobs is not None:
        raise _bad(
            "echo with logprobs is not supported: it would score every prompt token over the "
            "whole vocabulary; ask for one or the other",
            "echo",
        )
    internal = _to_generate(body, runtime, logprobs=body.logprobs, prompt=prompts[0])
    echo = prompts[0] if body.echo else ""
    return await _respond(internal, body, request, runtime, "text_completion", echo)


@router.post("/chat/completions", responses=ERRORS)
async def chat_completions(body: ChatRequest, request: Request, runtime: RuntimeDep):
    _check_fields(body, "chat", runtime)
    try:
        instruction, context = alpaca_fields(body.messages)
    except ChatError as err:
        raise _bad(err.message, err.param) from None
    if body.top_logprobs is not None and not body.logprobs:
        raise _bad("top_logprobs needs logprobs: true", "top_logprobs")
    logprobs = (body.top_logprobs or 0) if body.logprobs else None
    internal = _to_generate(
        body, runtime, logprobs=logprobs, instruction=instruction, input=context
    )
    return await _respond(internal, body, request, runtime, "chat.completion")


def _bad(message: str, param: str | None, code: str | None = None) -> APIError:
    """A refused request: 400 invalid_request_error on this API (`server/errors.py`)."""
    return APIError(400, message, "invalid_request_error", param, code=code)


def _check_fields(body: _Sampling, kind: str, runtime: Runtime) -> None:
    """Refuse unsupported fields that would change the answer; log unknown ones once each."""
    extra = body.model_extra or {}
    for name in REFUSED_FIELDS[kind]:
        value = extra.get(name)
        if name == "modalities" and value == ["text"]:
            continue  # text only: what this server does anyway
        if not _asks_nothing(value):
            raise _bad(
                f"{name} is not supported by this server (it serves a text-only model without "
                f"tools); remove it",
                name,
                "unsupported_parameter",
            )
    runtime.unknown_fields.note(name for name in extra if name not in ACCEPTED_FIELDS)


def _asks_nothing(value: Any) -> bool:
    """Whether a field's value asks for nothing: null, empty, false or "none"."""
    return value is None or value is False or value == "none" or value in ([], {}, "")


def _to_generate(body: _Sampling, runtime: Runtime, **fields: Any) -> GenerateRequest:
    # The model (the base or a served adapter) is resolved on the generation path: 404 there.
    if body.stream_options is not None and not body.stream:
        raise _bad("stream_options go with stream: true", "stream_options")
    n = body.n or 1
    if n > runtime.settings.max_choices:
        raise _bad(f"n is {n}, above this server's limit of {runtime.settings.max_choices}", "n")
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    if len(stop) > MAX_STOP_SEQUENCES:
        raise _bad(f"stop takes at most {MAX_STOP_SEQUENCES} strings (got {len(stop)})", "stop")
    temperature = DEFAULT_TEMPERATURE if body.temperature is None else body.temperature
    top_k = body.top_k if body.top_k is not None else (DEFAULT_TOP_K if temperature else 0)
    fields.update(
        max_new_tokens=body.max_completion_tokens or body.max_tokens,
        temperature=temperature,
        top_p=DEFAULT_TOP_P if body.top_p is None else body.top_p,
        top_k=max(top_k, 0),
        stop=stop,
        seed=body.seed,
        stream=bool(body.stream),
        model=body.model,
        presence_penalty=body.presence_penalty or 0.0,
        frequency_penalty=body.frequency_penalty or 0.0,
        min_tokens=body.min_tokens or 0,
        **_structured_output(body.response_format),
    )
    if body.repetition_penalty is not None:
        fields["repetition_penalty"] = body.repetition_penalty
    try:
        return GenerateRequest(**fields)
    except ValidationError as err:  # a rule of /generate the OpenAI fields did not catch
        raise RequestValidationError(
            [{**error, "loc": ("body", *_openai_loc(body, error["loc"]))} for error in err.errors()]
        ) from err


def _structured_output(response_format: ResponseFormat | None) -> dict[str, Any]:
    if response_format is None or response_format.type == "text":
        return {}
    if response_format.type == "json_object":
        return {"json_object": True}
    spec = response_format.json_schema
    if spec is None or spec.schema_ is None:
        raise _bad(
            "response_format of type json_schema needs json_schema.schema",
            "response_format.json_schema",
        )
    return {"json_schema": spec.schema_}


def _openai_loc(body: _Sampling, loc: tuple) -> tuple:
    return (_openai_param(body, str(loc[0])), *loc[1:]) if loc else loc


def _openai_param(body: _Sampling, param: str | None) -> str | None:
    """The OpenAI field that a /generate field came from."""
    chat = isinstance(body, ChatRequest)
    names = {
        "instruction": "messages",
        "input": "messages",
        "max_new_tokens": (
            "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens"
        ),
        "json_schema": "response_format",
        "json_object": "response_format",
        "logprobs": "top_logprobs" if chat else "logprobs",
    }
    return names.get(param, param) if param is not None else None


async def _respond(
    internal: GenerateRequest,
    body: _Sampling,
    request: Request,
    runtime: Runtime,
    kind: str,
    echo: str = "",
):
    first_id = request.state.generation_id
    ids = [first_id] + [f"{first_id}-{index}" for index in range(1, body.n or 1)]
    try:
        generations = await runtime.pipeline.start_choices(internal, ids, request.state.arrival)
    except Refusal as err:
        err.param = _openai_param(body, err.param)
        raise
    request.state.generation = generations[0]  # for the request's log line
    shape = _Shape(kind, first_id, int(time.time()), generations[0].model_name, echo)

    def release() -> None:
        for generation in generations:
            generation.release()

    if internal.stream:
        options = body.stream_options
        include_usage = bool(options and options.include_usage)
        return EventStreamResponse(_chunks(generations, shape, include_usage), on_close=release)
    try:
        if not await run_unless_disconnected(_run_all(generations), request.receive):
            return JSONResponse({}, status_code=499)
    except Refusal as err:
        err.param = _openai_param(body, err.param)
        raise
    finally:
        release()
    return {
        "id": first_id,
        "object": kind,
        "created": shape.created,
        "model": shape.model,
        "choices": [shape.choice(index, g) for index, g in enumerate(generations)],
        "usage": _usage(generations),
    }


async def _run_all(generations: list[Generation]) -> None:
    """Run every choice to its end; one that fails stops the others."""
    tasks = [asyncio.ensure_future(generation.run_to_end()) for generation in generations]
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _usage(generations: list[Generation]) -> dict:
    """The prompt counted once, the answers' tokens summed (as OpenAI counts n choices)."""
    prompt_tokens = generations[0].prompt_tokens
    completion_tokens = sum(generation.completion_tokens for generation in generations)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


class _Shape:
    """OpenAI's shapes of one response's choices, chunks and log-probabilities."""

    def __init__(self, kind: str, id: str, created: int, model: str, echo: str):
        self.chat = kind == "chat.completion"
        self.kind = kind
        self.id = id
        self.created = created
        self.model = model
        self.echo = echo

    def choice(self, index: int, generation: Generation) -> dict:
        finish = FINISH_REASONS.get(generation.finish_reason or "", "stop")
        logprobs = self.logprobs(generation, generation.logprobs)
        choice: dict[str, Any] = {"index": index}
        if self.chat:
            choice["message"] = {"role": "assistant", "content": generation.text}
        else:
            choice["text"] = self.echo + generation.text
        return {**choice, "finish_reason": finish, "logprobs": logprobs}

    def chunk(
        self,
        index: int,
        text: str | None,
        finish: str | None = None,
        logprobs: dict | None = None,
        role: bool = False,
    ) -> bytes:
        if self.chat:
            delta: dict[str, Any] = {"role": "assistant"} if role else {}
            if text is not None:
                delta["content"] = text
            choice = {"index": index, "delta": delta, "finish_reason": finish}
        else:
            choice = {"index": index, "text": text or "", "finish_reason": finish}
        choice["logprobs"] = logprobs
        return sse({**self.head(), "choices": [choice]})

    def usage_chunk(self, generations: list[Generation]) -> bytes:
        return sse({**self.head(), "choices": [], "usage": _usage(generations)})

    def head(self) -> dict:
        kind = f"{self.kind}.chunk" if self.chat else self.kind
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}

    def logprobs(self, generation: Generation, tokens: list[TokenLogprob]) -> dict | None:
        """OpenAI's logprobs object for `tokens` of a generation, or None when not asked."""
        if generation.options.logprobs is None:
            return None
        if self.chat:
            return {"content": [_chat_logprob(token) for token in tokens], "refusal": None}
        offsets, offset = [], 0
        for token in tokens:
            offsets.append(offset)
            offset += len(token.token)
        return {
            "tokens": [token.token for token in tokens],
            "token_logprobs": [token.logprob for token in tokens],
            "top_logprobs": [
                {token.token: token.logprob}
                | {top.token: top.logprob for top in token.top_logprobs}
                for token in tokens
            ],
            "text_offset": offsets,
        }


def _chat_logprob(token: TokenLogprob) -> dict:
    return {
        "token": token.token,
        "logprob": token.logprob,
        "bytes": list(token.token.encode("utf-8", errors="replace")),
        "top_logprobs": [
            {
                "token": top.token,
                "logprob": top.logprob,
                "bytes": list(top.token.encode("utf-8", errors="replace")),
            }
            for top in token.top_logprobs
        ],
    }


async def _chunks(
    generations: list[Generation], shape: _Shape, include_usage: bool
) -> AsyncGenerator[bytes, None]:
    """The choices' chunks as they come (each with its index), each choice's last chunk with
    its finish reason, the usage chunk when asked for, then [DONE]."""
    sent = [0] * len(generations)  # log-probabilities sent so far, per choice

    def new_logprobs(index: int) -> dict | None:
        generation = generations[index]
        tokens = generation.logprobs[sent[index] :]
        sent[index] = len(generation.logprobs)
        return shape.logprobs(generation, tokens)

    try:
        for index in range(len(generations)):
            if shape.chat:
                yield shape.chunk(index, "", role=True)
            elif shape.echo:
                yield shape.chunk(index, shape.echo)
        async for index, text in _merged(generations):
            if text is not None:
                yield shape.chunk(index, text, logprobs=new_logprobs(index))
                continue
            finish = FINISH_REASONS.get(generations[index].finish_reason or "", "stop")
            last = None if shape.chat else ""
            yield shape.chunk(index, last, finish, logprobs=new_logprobs(index))
        if include_usage:
            yield shape.usage_chunk(generations)
    except GENERATION_ERRORS as err:
        yield error_event(err)
    yield DONE


async def _merged(generations: list[Generation]) -> AsyncIterator[tuple[int, str | None]]:
    """(choice index, new text) from every choice as it comes; (index, None) when one ends.

    Each choice runs in its own task; closing this iterator (a client that left) cancels them,
    which aborts their requests in the engine. The first choice to fail stops the others."""
    queue: asyncio.Queue[tuple[int, str | None, BaseException | None]] = asyncio.Queue()

    async def pump(index: int, generation: Generation) -> None:
        try:
            async for text in generation.run():
                queue.put_nowait((index, text, None))
            queue.put_nowait((index, None, None))
        except Exception as err:
            queue.put_nowait((index, None, err))

    tasks = [asyncio.ensure_future(pump(i, g)) for i, g in enumerate(generations)]
    try:
        running = len(tasks)
        while running:
            index, text, error = await queue.get()
            if error is not None:
                raise error
            if text is None:
                running -= 1
            yield index, text
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
