"""`POST /generate`: one answer from an instruction (Alpaca template) or a raw prompt."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable

from fastapi import APIRouter, Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from server.admission import Ticket
from server.engine import EngineUnavailableError, SamplingOptions
from server.errors import APIError, error_body, invalid
from server.feedback import GenerationRecord
from server.filters import FilterInput
from server.generation import Generation, GenerationInterrupted, run_unless_disconnected
from server.runtime import Runtime, RuntimeDep
from server.schemas import (
    GENERATION_RESPONSES,
    FilterBlock,
    GenerateRequest,
    GenerateResponse,
    Usage,
)
from training.prompts import SECTION_HEADERS, format_prompt

router = APIRouter()

RETRY_AFTER_S = 1  # what a refused client is told to wait before trying again


@router.post(
    "/generate",
    response_model=GenerateResponse,
    responses=GENERATION_RESPONSES,
)
async def generate(body: GenerateRequest, request: Request, runtime: RuntimeDep):
    generation, ticket = await start_generation(body, request, runtime)
    if body.stream:  # the response releases the ticket when the stream ends
        return EventStreamResponse(_events(generation), on_close=ticket.release)
    try:
        if not await run_to_end(generation, request):
            return Response(status_code=499)  # the client is gone; nobody reads this
    finally:
        ticket.release()
    return GenerateResponse(
        id=generation.request_id,
        model=generation.engine.model_name,
        text=generation.text,
        finish_reason=generation.finish_reason,
        usage=Usage(
            prompt_tokens=generation.prompt_tokens,
            completion_tokens=generation.completion_tokens,
        ),
        filter=_block_info(generation),
    )


async def start_generation(
    body: GenerateRequest, request: Request, runtime: Runtime
) -> tuple[Generation, Ticket]:
    """The one request path of every API: admission, validation, input filters, a slot.

    Returns the generation, ready to run, and the ticket holding its slot; the caller releases
    the ticket when the generation is over. Refusals are raised as APIError.
    """
    engine = runtime.require_engine()
    ticket = runtime.admission.admit()
    if ticket is None:
        runtime.metrics.count("rejected")
        raise APIError(
            429,
            f"the server is at capacity ({runtime.admission.max_concurrent} generating, "
            f"{runtime.admission.max_queue} waiting); retry shortly",
            "overloaded",
            headers={"Retry-After": str(RETRY_AFTER_S)},
        )
    try:
        prompt, prompt_ids, options = _prepare(body, runtime)
        input_outcomes = await _check_input(body, prompt, runtime)
        deadline = request.state.arrival + runtime.settings.request_timeout_s
        try:  # wait in the queue for a generation slot
            await asyncio.wait_for(ticket.acquire(), deadline - time.perf_counter())
        except asyncio.TimeoutError:
            runtime.metrics.count("timeout")
            admission = runtime.admission
            raise APIError(
                503, f"no generation slot came free within the server's time limit "
                f"({admission.active} generating, {admission.waiting - 1} others waiting)",
                "overloaded", headers={"Retry-After": str(RETRY_AFTER_S)}) from None
    except BaseException:
        ticket.release()
        raise
    generation = Generation(
        engine,
        runtime.metrics,
        prompt_ids,
        options,
        request.state.request_id,
        request.state.arrival,
        filters=runtime.filters,
        on_finish=lambda done: runtime.recorder.submit(_generation_record(done, body, prompt)),
        deadline=deadline,
        stop_event=runtime.stop_event,
    )
    generation.filter_outcomes.extend(input_outcomes)
    request.state.generation = generation  # for the request's log line
    return generation, ticket


async def run_to_end(generation: Generation, request: Request) -> bool:
    """Generate the whole answer; False if the client left first (the generation is aborted)."""

    async def collect() -> None:
        async for _ in generation.run():
            pass

    try:
        finished, _ = await run_unless_disconnected(collect(), request.receive)
    except EngineUnavailableError as err:
        raise APIError(503, str(err), "engine_unavailable") from err
    except GenerationInterrupted as err:
        status, kind = (504, "timeout") if err.kind == "timeout" else (503, "shutting_down")
        raise APIError(status, str(err), kind) from err
    return finished


async def _check_input(body: GenerateRequest, prompt: str, runtime: Runtime) -> list:
    """Run the input filters; a block is a 400 and the request never reaches the engine."""
    if not runtime.filters:
        return []
    request = FilterInput(instruction=body.instruction, input=body.input, prompt=prompt)
    verdict, outcomes = await runtime.filters.check_input(request)
    if not verdict.allowed:
        runtime.metrics.count("blocked")
        raise APIError(
            400,
            f"the request was refused by the content filter (category: {verdict.category}): "
            f"{verdict.reason}",
            "content_filter",
            "prompt" if body.prompt is not None else "instruction",
            category=verdict.category,
        )
    return outcomes


def _generation_record(generation: Generation, body: GenerateRequest, prompt: str):
    """What the generation log keeps of a finished generation (never the client's address)."""
    options = generation.options
    return GenerationRecord(
        id=generation.request_id,
        created_at=time.time() - generation.latency_s,
        model=generation.engine.model_name,
        params={
            "max_new_tokens": options.max_new_tokens,
            "temperature": options.temperature,
            "top_p": options.top_p,
            "top_k": options.top_k,
            "repetition_penalty": options.repetition_penalty,
            "stop": body.stop,
            "seed": options.seed,
        },
        instruction=body.instruction,
        input=body.input,
        prompt=prompt,
        response=generation.text,
        finish_reason=generation.finish_reason or "unknown",
        prompt_tokens=generation.prompt_tokens,
        completion_tokens=generation.completion_tokens,
        latency_s=generation.latency_s,
        filter_verdicts=[outcome.as_record() for outcome in generation.filter_outcomes],
    )


def _block_info(generation: Generation) -> FilterBlock | None:
    if generation.blocked is None:
        return None
    return FilterBlock(
        category=generation.blocked.category or "unknown",
        reason=generation.blocked.reason or "",
    )


def _prepare(body: GenerateRequest, runtime: Runtime) -> tuple[str, list[int], SamplingOptions]:
    """Check what depends on the settings and the model, and build the prompt tokens."""
    settings = runtime.settings
    engine = runtime.require_engine()
    if body.prompt is not None:
        if body.instruction is not None:
            raise invalid("give either instruction or prompt, not both", "prompt")
        if body.input:
            raise invalid("input goes with instruction; a raw prompt already holds it", "input")
        if not body.prompt.strip():
            raise invalid("prompt is empty", "prompt")
        prompt, prompt_param = body.prompt, "prompt"
    elif body.instruction is None:
        raise invalid("instruction is required (or a raw prompt)", "instruction")
    elif not body.instruction.strip():
        raise invalid("instruction is empty", "instruction")
    else:
        prompt, prompt_param = format_prompt(body.instruction, body.input), "instruction"

    chars = len(prompt) if body.prompt is not None else len(body.instruction) + len(body.input)
    if chars > settings.max_prompt_chars:
        what = "the prompt" if body.prompt is not None else "instruction and input together"
        raise invalid(
            f"{what} is {chars} characters, above this server's limit of "
            f"{settings.max_prompt_chars}",
            prompt_param,
        )
    max_new_tokens = body.max_new_tokens or settings.default_max_new_tokens
    if max_new_tokens > settings.max_new_tokens_limit:
        raise invalid(
            f"max_new_tokens is {max_new_tokens}, above this server's limit of "
            f"{settings.max_new_tokens_limit}",
            "max_new_tokens",
        )
    prompt_ids = engine.tokenize(prompt)
    context = engine.max_model_len
    if len(prompt_ids) >= context:
        raise invalid(
            f"the prompt is {len(prompt_ids)} tokens, which fills the model's context of "
            f"{context} tokens",
            prompt_param,
        )
    if len(prompt_ids) + max_new_tokens > context:
        raise invalid(
            f"the prompt is {len(prompt_ids)} tokens and max_new_tokens is {max_new_tokens}: "
            f"{len(prompt_ids) + max_new_tokens} in all, above the model's context of {context} "
            f"tokens (at most {context - len(prompt_ids)} new tokens fit)",
            "max_new_tokens",
        )
    options = SamplingOptions(
        max_new_tokens=max_new_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        top_k=body.top_k,
        repetition_penalty=body.repetition_penalty,
        stop=tuple(dict.fromkeys([*body.stop, *SECTION_HEADERS])),
        seed=body.seed,
    )
    return prompt, prompt_ids, options


def sse(payload: object) -> bytes:
    """One server-sent event carrying `payload` as JSON."""
    return f"data: {json.dumps(payload)}\n\n".encode()


# Why a stream stopped early, as the final event of `/generate` and `/v1` streams alike.
STREAM_ERRORS = (EngineUnavailableError, GenerationInterrupted)


def stream_error(err: Exception) -> bytes:
    """The error event for one of STREAM_ERRORS (the HTTP status is 200 by then)."""
    if isinstance(err, GenerationInterrupted):
        kind = "timeout" if err.kind == "timeout" else "shutting_down"
    else:
        kind = "engine_unavailable"
    return sse(error_body(str(err), kind))


async def _events(generation: Generation) -> AsyncIterator[bytes]:
    """One event per new piece of text, a final event with the finish reason, then [DONE]."""
    try:
        async for text in generation.run():
            yield sse({"id": generation.request_id, "text": text})
    except STREAM_ERRORS as err:
        yield stream_error(err)
    else:
        final = {
            "id": generation.request_id,
            "text": "",
            "finish_reason": generation.finish_reason,
            "usage": {
                "prompt_tokens": generation.prompt_tokens,
                "completion_tokens": generation.completion_tokens,
            },
        }
        block = _block_info(generation)
        if block is not None:
            final["filter"] = block.model_dump()
        yield sse(final)
    yield b"data: [DONE]\n\n"


class EventStreamResponse(StreamingResponse):
    """Server-sent events that stop, and abort the generation, as soon as the client leaves.

    Starlette's own StreamingResponse notices a disconnect only on some ASGI servers and leaves
    the generator to the garbage collector; this one watches for it and closes the generator.
    """

    def __init__(self, events: AsyncIterator[bytes], on_close: Callable[[], None]):
        super().__init__(
            events,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
        self.events = events
        self.on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def pump() -> None:
            await send({"type": "http.response.start", "status": 200,
                        "headers": self.raw_headers})
            async for chunk in self.events:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})

        try:
            await run_unless_disconnected(pump(), receive)
        finally:
            try:
                await self.events.aclose()
            finally:
                self.on_close()

