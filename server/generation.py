"""One generation from the client's point of view: answer text, timings, disconnects.

`Generation.run()` turns the engine's pieces into the answer as the client sees it, and records
metrics and one log line when it ends. Both the JSON and the streaming route use it, so a streamed
answer is exactly the concatenation of its events and equal to the non-streamed answer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

from starlette.types import Receive

from server.engine import EngineUnavailableError, Piece, SamplingOptions, VllmEngine
from server.filters import FilterChain, FilterOutcome, Verdict
from server.metrics import ServerMetrics

log = logging.getLogger("alpaca.server")
T = TypeVar("T")
REPLACEMENT_CHAR = "\ufffd"


class AnswerText:
    """Answer text built from deltas: no leading or trailing white space, no split characters.

    Trailing white space and a trailing U+FFFD (the detokenizer's mark for a character whose
    bytes have not all arrived) are held back until more text follows; at the end the white space
    is dropped, so the streamed pieces always add up to the stripped answer.
    """

    def __init__(self) -> None:
        self.text = ""
        self._held = ""

    def feed(self, delta: str) -> str:
        pending = self._held + delta
        if not self.text:
            pending = pending.lstrip()
        cut = len(pending)
        while cut and (pending[cut - 1].isspace() or pending[cut - 1] == REPLACEMENT_CHAR):
            cut -= 1
        out, self._held = pending[:cut], pending[cut:]
        self.text += out
        return out

    def finish(self) -> str:
        """The last piece: held-back characters that are part of the answer after all."""
        out = self._held.rstrip() if self.text else self._held.strip()
        self._held = ""
        self.text += out
        return out


class Generation:
    """Runs one request through the engine and accounts for it."""

    def __init__(
        self,
        engine: VllmEngine,
        metrics: ServerMetrics,
        prompt_ids: list[int],
        options: SamplingOptions,
        request_id: str,
        arrival: float,
        filters: FilterChain | None = None,
        on_finish: Callable[[Generation], None] | None = None,
        deadline: float | None = None,
        stop_event: asyncio.Event | None = None,
    ):
        self.engine = engine
        self.metrics = metrics
        self.prompt_ids = prompt_ids
        self.options = options
        self.request_id = request_id
        self.arrival = arrival
        self.filters = filters
        self.on_finish = on_finish
        self.deadline = deadline  # time.perf_counter() value past which generation is aborted
        self.stop_event = stop_event  # set when the server stops waiting for generations
        self.answer = AnswerText()
        self.text = ""  # what the client has been given: the answer up to any blocked piece
        self.finish_reason: str | None = None
        self.blocked: Verdict | None = None
        self.filter_outcomes: list[FilterOutcome] = []
        self.completion_tokens = 0
        self.latency_s = 0.0
        self.ttft_ms: float | None = None

    @property
    def prompt_tokens(self) -> int:
        return len(self.prompt_ids)

    async def run(self) -> AsyncIterator[str]:
        """Yield the answer's new text as it is generated (never an empty string)."""
        first_at = last_at = None
        outcome = "error"
        output_outcomes: list[FilterOutcome] = []
        pieces = self.engine.generate(self.prompt_ids, self.options, self.request_id)
        try:
            async for piece in self._until_stopped(pieces):
                now = time.perf_counter()
                new_tokens = piece.completion_tokens - self.completion_tokens
                self.completion_tokens = piece.completion_tokens
                if new_tokens:
                    if first_at is None:
                        first_at = now
                        self.ttft_ms = round((now - self.arrival) * 1000, 1)
                        self.metrics.time_to_first_token.observe(now - self.arrival)
                    else:
                        self.metrics.inter_token_latency.observe((now - last_at) / new_tokens)
                    last_at = now
                    self.metrics.generation_tokens.inc(new_tokens)
                if piece.finish_reason is not None:
                    self.finish_reason = piece.finish_reason
                text = self.answer.feed(piece.text)
                if piece.finish_reason is not None:
                    text += self.answer.finish()
                if text and self.filters:
                    verdict, output_outcomes = await self.filters.check_output(self.answer.text)
                    if not verdict.allowed:
                        # Nothing of the offending piece reaches the client; leaving the loop
                        # closes the engine's stream, which aborts the request.
                        self.blocked, self.finish_reason = verdict, "content_filter"
                        break
                if text:
                    self.text += text
                    yield text
            outcome = "blocked" if self.blocked else "success"
        except (asyncio.CancelledError, GeneratorExit):
            outcome = "client_disconnected"
            raise
        except EngineUnavailableError:
            outcome = "unavailable"
            raise
        except GenerationInterrupted as err:
            outcome = err.kind
            raise
        finally:
            await pieces.aclose()
            self.metrics.prompt_tokens.inc(self.prompt_tokens)
            self.metrics.count(outcome)
            if last_at is not None:
                self.metrics.e2e_latency.observe(last_at - self.arrival)
            self.latency_s = time.perf_counter() - self.arrival
            self.filter_outcomes.extend(output_outcomes)  # the last output check's verdicts
            if outcome in ("success", "blocked") and self.on_finish is not None:
                self.on_finish(self)
            log.info(
                "generation %s: outcome=%s finish_reason=%s prompt_tokens=%d "
                "completion_tokens=%d seconds=%.3f",
                self.request_id, outcome, self.finish_reason, self.prompt_tokens,
                self.completion_tokens, self.latency_s,
            )


    async def _until_stopped(self, pieces: AsyncIterator[Piece]) -> AsyncIterator[Piece]:
        """The engine's pieces, until the deadline passes or the server stops waiting.

        Each step runs as its own task so that it can be cancelled; cancelling it aborts the
        request in the engine.
        """
        if self.deadline is None and self.stop_event is None:
            async for piece in pieces:
                yield piece
            return
        stopping = asyncio.ensure_future(
            self.stop_event.wait() if self.stop_event is not None else asyncio.Event().wait()
        )
        step: asyncio.Future | None = None
        try:
            while True:
                step = asyncio.ensure_future(anext(pieces))
                remaining = None
                if self.deadline is not None:
                    remaining = max(self.deadline - time.perf_counter(), 0.0)
                await asyncio.wait(
                    {step, stopping}, timeout=remaining, return_when=asyncio.FIRST_COMPLETED
                )
                if not step.done():
                    step.cancel()
                    await asyncio.gather(step, return_exceptions=True)
                    if stopping.done():
                        raise GenerationInterrupted("shutdown", "the server is shutting down")
                    raise GenerationInterrupted(
                        "timeout", "the request took longer than the server's time limit"
                    )
                try:
                    piece = step.result()
                except StopAsyncIteration:
                    return
                yield piece
        finally:
            # Also when the consumer is cancelled (a client that left): stop the pending step
            # first, which aborts the request, so that the engine stream can then be closed.
            stopping.cancel()
            if step is not None and not step.done():
                step.cancel()
                await asyncio.gather(step, return_exceptions=True)


class GenerationInterrupted(Exception):
    """Generation was aborted: `kind` is "timeout" (the deadline) or "shutdown" (drain over)."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


async def wait_for_disconnect(receive: Receive) -> None:
    """Return when the client has gone away (the request body must already be read)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


async def run_unless_disconnected(work: Awaitable[T], receive: Receive) -> tuple[bool, T | None]:
    """Await `work`, cancelling it if the client disconnects first.

    Returns (True, result) when the work finished, (False, None) when the client left; cancelling
    the work is what aborts the request in the engine.
    """
    work_task = asyncio.ensure_future(work)
    watch_task = asyncio.ensure_future(wait_for_disconnect(receive))
    try:
        await asyncio.wait({work_task, watch_task}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        # Also reached when this coroutine itself is cancelled (server shutdown).
        for task in (work_task, watch_task):
            if not task.done():
                task.cancel()
        await asyncio.gather(work_task, watch_task, return_exceptions=True)
    if work_task.cancelled():
        return False, None
    return True, work_task.result()
