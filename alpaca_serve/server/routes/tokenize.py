"""`POST /tokenize` and `POST /detokenize`, as vLLM's OpenAI-compatible server names them.

Usage:
    POST /tokenize {"prompt": "Hello"}                   -> {"count", "max_model_len", "tokens"}
    POST /tokenize {"messages": [{"role": "user", ...}]} -> the tokens a chat request's prompt has
    POST /detokenize {"tokens": [9906, 11]}              -> {"prompt": "Hello,"}

A chat's messages are tokenized as `/v1/chat/completions` sends them to the model (the Alpaca
template, `server/chat.py`), so `count` equals that request's `usage.prompt_tokens`. Errors take
OpenAI's shape, as on the /v1 routes. The text has /generate's bound (ALPACA_MAX_PROMPT_CHARS),
the tokens the model's context; both run off the event loop.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from alpaca_serve.core.prompts import format_prompt
from alpaca_serve.server.chat import ChatError, ChatMessage, alpaca_fields
from alpaca_serve.server.errors import APIError
from alpaca_serve.server.runtime import Runtime, RuntimeDep
from alpaca_serve.server.schemas import BODY_ERRORS, error_doc

router = APIRouter()
ERRORS: dict[int | str, dict[str, Any]] = {
    **BODY_ERRORS,
    400: error_doc("a field is invalid"),
    404: error_doc("no such model"),
    503: error_doc("the model is loading or the engine died"),
}


class TokenizeRequest(BaseModel):
    """Give `prompt` (text sent as it is) or `messages` (a chat, as the chat route reads it)."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(None, description="the served model's name, if given")
    prompt: str | None = None
    messages: list[ChatMessage] | None = Field(None, min_length=1)
    add_special_tokens: bool = Field(
        True, description="add the tokenizer's special tokens (such as BOS), as generation does"
    )


class TokenizeResponse(BaseModel):
    count: int
    max_model_len: int
    tokens: list[int]


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    tokens: list[int]


class DetokenizeResponse(BaseModel):
    prompt: str


@router.post("/tokenize", response_model=TokenizeResponse, responses=ERRORS)
async def tokenize(body: TokenizeRequest, runtime: RuntimeDep) -> TokenizeResponse:
    _check_model(body.model, runtime)
    if (body.prompt is None) == (body.messages is None):
        raise APIError(400, "give either prompt or messages", "invalid_request_error", "prompt")
    if body.messages is not None:
        try:
            instruction, context = alpaca_fields(body.messages)
        except ChatError as err:
            raise APIError(400, err.message, "invalid_request_error", err.param) from None
        text, chars = format_prompt(instruction, context), len(instruction) + len(context)
        what, param = "the messages' instruction and input together", "messages"
    else:
        assert body.prompt is not None  # checked above: exactly one of prompt and messages
        text, chars, what, param = body.prompt, len(body.prompt), "the prompt", "prompt"
    limit = runtime.settings.max_prompt_chars
    if chars > limit:  # the bound /generate has: nothing longer could be generated from
        raise APIError(
            400,
            f"{what} is {chars} characters, above this server's limit of {limit}",
            "invalid_request_error",
            param,
        )
    engine = runtime.pipeline.require_engine()
    # Off the event loop: a long prompt takes the tokenizer a while, and /ready must not wait.
    tokens = await asyncio.to_thread(
        engine.tokenize, text, add_special_tokens=body.add_special_tokens
    )
    return TokenizeResponse(count=len(tokens), max_model_len=engine.max_model_len, tokens=tokens)


@router.post("/detokenize", response_model=DetokenizeResponse, responses=ERRORS)
async def detokenize(body: DetokenizeRequest, runtime: RuntimeDep) -> DetokenizeResponse:
    _check_model(body.model, runtime)
    engine = runtime.pipeline.require_engine()
    if len(body.tokens) > engine.max_model_len:
        raise APIError(
            400,
            f"{len(body.tokens)} tokens, above the model's context of {engine.max_model_len}",
            "invalid_request_error",
            "tokens",
        )
    try:
        return DetokenizeResponse(prompt=await asyncio.to_thread(engine.detokenize, body.tokens))
    except ValueError as err:
        raise APIError(400, str(err), "invalid_request_error", "tokens") from None


def _check_model(model: str | None, runtime: Runtime) -> None:
    served = runtime.settings.served_model_name
    if model is not None and model != served:
        raise APIError(
            404,
            f"the model {model!r} does not exist; this server serves {served!r}",
            "not_found",
            "model",
            code="model_not_found",
        )
