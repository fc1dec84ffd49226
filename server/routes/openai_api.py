"""OpenAI-compatible routes: `/v1/completions`, `/v1/chat/completions`, `/v1/models`.

Usage (any OpenAI client):
    client = openai.OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="<key or anything>")
    client.chat.completions.create(model="SmolLM2-135M-Instruct",
                                   messages=[{"role": "user", "content": "Name a colour."}])

Each request is turned into a `/generate` request and takes the same path: admission, validation,
content filters, the generation log (the response's `id` is the generation id that
`POST /feedback` takes), metrics and limits.

Chat: the last message must come from the user; it is the Alpaca instruction. Earlier messages,
if any (system prompts included), become the Alpaca input, one `Role: content` line each, so the
with-input template carries the conversation so far. Completions: the prompt is sent as it is.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Annotated, Literal

from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from server.errors import invalid
from server.pipeline import GENERATION_ERRORS, Generation
from server.runtime import Runtime, RuntimeDep
from server.schemas import (
    DEFAULT_TEMPERATURE,
    DEFAULT_TOP_K,
    DEFAULT_TOP_P,
    GENERATION_RESPONSES,
    MAX_STOP_SEQUENCES,
    GenerateRequest,
    error_doc,
)
from server.streaming import DONE, EventStreamResponse, error_event, run_unless_disconnected, sse

router = APIRouter(prefix="/v1")

# OpenAI's finish reasons: the end of sequence and a stop string are both "stop".
FINISH_REASONS = {
    "eos": "stop",
    "stop": "stop",
    "length": "length",
    "content_filter": "content_filter",
}
ERRORS = {**GENERATION_RESPONSES, 404: error_doc("no such model")}


StopString = Annotated[str, Field(min_length=1)]
StopList = Annotated[list[StopString], Field(max_length=MAX_STOP_SEQUENCES)]


class _Sampling(BaseModel):
    """The sampling fields both request kinds share, with OpenAI's names."""

    model_config = ConfigDict(extra="ignore")

    model: str
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(DEFAULT_TEMPERATURE, ge=0.0, le=2.0)
    top_p: float = Field(DEFAULT_TOP_P, gt=0.0, le=1.0)
    stop: StopString | StopList | None = None
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    stream: bool = False
    n: int = Field(1, ge=1, le=1, description="only one choice per request")
    user: str | None = None


class CompletionRequest(_Sampling):
    prompt: str | list[str]


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant"]
    content: str


class ChatRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)


@router.get("/models")
async def list_models(runtime: RuntimeDep) -> dict:
    """The base model, then every served LoRA adapter (`parent`: the base, as vLLM says)."""
    return {"object": "list", "data": runtime.list_models()}


@router.post("/completions", responses=ERRORS)
async def completions(body: CompletionRequest, request: Request, runtime: RuntimeDep):
    prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
    if len(prompts) != 1:
        raise invalid("prompt must be one string (batches are not supported)", "prompt")
    internal = _to_generate(body, runtime, prompt=prompts[0])
    return await _respond(internal, request, runtime, "text_completion")


@router.post("/chat/completions", responses=ERRORS)
async def chat_completions(body: ChatRequest, request: Request, runtime: RuntimeDep):
    *history, last = body.messages
    if last.role != "user":
        raise invalid("the last message must come from the user", "messages")
    context = "\n".join(f"{message.role.capitalize()}: {message.content}" for message in history)
    internal = _to_generate(body, runtime, instruction=last.content, input=context)
    return await _respond(internal, request, runtime, "chat.completion")


def _to_generate(body: _Sampling, runtime: Runtime, **text: str) -> GenerateRequest:
    # The model (the base or a served adapter) is resolved on the generation path: 404 there.
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    if len(stop) > MAX_STOP_SEQUENCES:
        raise invalid(f"stop takes at most {MAX_STOP_SEQUENCES} strings (got {len(stop)})", "stop")
    fields = dict(
        **text,
        max_new_tokens=body.max_completion_tokens or body.max_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        top_k=DEFAULT_TOP_K if body.temperature else 0,
        stop=stop,
        seed=body.seed,
        stream=body.stream,
        model=body.model,
    )
    try:
        return GenerateRequest(**fields)
    except ValidationError as err:  # a rule of /generate the OpenAI fields did not catch
        raise RequestValidationError(
            [{**error, "loc": ("body", *error["loc"])} for error in err.errors()]
        ) from err


async def _respond(internal: GenerateRequest, request: Request, runtime: Runtime, kind: str):
    generation = await runtime.pipeline.start(
        internal, request.state.request_id, request.state.arrival
    )
    request.state.generation = generation  # for the request's log line
    created = int(time.time())
    if internal.stream:
        return EventStreamResponse(_chunks(generation, kind, created), on_close=generation.release)
    try:
        if not await run_unless_disconnected(generation.run_to_end(), request.receive):
            return JSONResponse({}, status_code=499)
    finally:
        generation.release()
    finish = FINISH_REASONS.get(generation.finish_reason or "", "stop")
    if kind == "chat.completion":
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": generation.text},
            "finish_reason": finish,
            "logprobs": None,
        }
    else:
        choice = {"index": 0, "text": generation.text, "finish_reason": finish, "logprobs": None}
    return {
        "id": generation.request_id,
        "object": kind,
        "created": created,
        "model": generation.model_name,
        "choices": [choice],
        "usage": _usage(generation),
    }


def _usage(generation: Generation) -> dict:
    return {
        "prompt_tokens": generation.prompt_tokens,
        "completion_tokens": generation.completion_tokens,
        "total_tokens": generation.prompt_tokens + generation.completion_tokens,
    }


async def _chunks(generation: Generation, kind: str, created: int) -> AsyncIterator[bytes]:
    chat = kind == "chat.completion"
    head = {
        "id": generation.request_id,
        "object": f"{kind}.chunk" if chat else kind,
        "created": created,
        "model": generation.model_name,
    }

    def chunk(piece: str | None, finish: str | None, role: bool = False) -> bytes:
        if chat:
            delta = {"role": "assistant"} if role else {}
            if piece is not None:
                delta["content"] = piece
            choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
        else:
            choice = {"index": 0, "text": piece or "", "finish_reason": finish, "logprobs": None}
        body = {**head, "choices": [choice]}
        if finish is not None:
            body["usage"] = _usage(generation)
        return sse(body)

    try:
        if chat:
            yield chunk("", None, role=True)
        async for text in generation.run():
            yield chunk(text, None)
        yield chunk(
            None if chat else "", FINISH_REASONS.get(generation.finish_reason or "", "stop")
        )
    except GENERATION_ERRORS as err:
        yield error_event(err)
    yield DONE
