"""`POST /generate`: one answer from an instruction (Alpaca template) or a raw prompt.

The route translates HTTP to the generation path (`server/pipeline.py`) and back: a JSON answer,
or server-sent events (`{"id", "text"}` deltas, a final event with the finish reason and usage,
then `[DONE]`). With `logprobs`, the answer (and each event) carries the log-probabilities of
its tokens as `[{"token", "logprob", "top_logprobs": [{"token", "logprob"}]}]`.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any, cast

from fastapi import APIRouter, Request
from starlette.responses import Response

from alpaca_serve.server.engine import TokenLogprob
from alpaca_serve.server.pipeline import GENERATION_ERRORS, Generation
from alpaca_serve.server.runtime import RuntimeDep
from alpaca_serve.server.schemas import (
    GENERATION_RESPONSES,
    FilterBlock,
    FinishReason,
    GenerateRequest,
    GenerateResponse,
    Usage,
)
from alpaca_serve.server.streaming import (
    DONE,
    EventStreamResponse,
    error_event,
    run_unless_disconnected,
    sse,
)

router = APIRouter()


@router.post(
    "/generate",
    response_model=GenerateResponse,
    responses=GENERATION_RESPONSES,
)
async def generate(body: GenerateRequest, request: Request, runtime: RuntimeDep):
    generation = await runtime.pipeline.start(
        body, request.state.generation_id, request.state.arrival
    )
    request.state.generation = generation  # for the request's log line
    if body.stream:  # the response releases the slot when the stream ends
        return EventStreamResponse(_events(generation), on_close=generation.release)
    try:
        if not await run_unless_disconnected(generation.run_to_end(), request.receive):
            return Response(status_code=499)  # the client is gone; nobody reads this
    finally:
        generation.release()
    return GenerateResponse(
        id=generation.request_id,
        model=generation.model_name,
        text=generation.text,
        # Set by a run that ended; the model checks the value.
        finish_reason=cast(FinishReason, generation.finish_reason),
        usage=_usage(generation),
        filter=_block_info(generation),
        # Dicts, which the model validates into TokenLogprobInfo.
        logprobs=cast(Any, _logprobs(generation.logprobs)) if body.logprobs is not None else None,
    )


def _usage(generation: Generation) -> Usage:
    return Usage(
        prompt_tokens=generation.prompt_tokens, completion_tokens=generation.completion_tokens
    )


def _logprobs(tokens: list[TokenLogprob]) -> list[dict]:
    return [
        {
            "token": token.token,
            "logprob": token.logprob,
            "top_logprobs": [{"token": t.token, "logprob": t.logprob} for t in token.top_logprobs],
        }
        for token in tokens
    ]


def _block_info(generation: Generation) -> FilterBlock | None:
    if generation.blocked is None:
        return None
    return FilterBlock(
        category=generation.blocked.category or "unknown",
        reason=generation.blocked.reason or "",
    )


async def _events(generation: Generation) -> AsyncGenerator[bytes, None]:
    """One event per new piece of text, a final event with the finish reason, then [DONE]."""
    with_logprobs = generation.options.logprobs is not None
    sent = 0  # log-probabilities sent so far

    def new_logprobs() -> dict:
        nonlocal sent
        if not with_logprobs:
            return {}
        tokens, sent = generation.logprobs[sent:], len(generation.logprobs)
        return {"logprobs": _logprobs(tokens)}

    try:
        async for text in generation.run():
            yield sse({"id": generation.request_id, "text": text, **new_logprobs()})
    except GENERATION_ERRORS as err:
        yield error_event(err)
    else:
        final = {
            "id": generation.request_id,
            "text": "",
            "finish_reason": generation.finish_reason,
            "usage": _usage(generation).model_dump(),
            **new_logprobs(),
        }
        block = _block_info(generation)
        if block is not None:
            final["filter"] = block.model_dump()
        yield sse(final)
    yield DONE
