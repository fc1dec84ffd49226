"""The generation path: one request from its fields to a recorded answer, for every API.

Usage (a route):
    generation = await pipeline.start(body, request_id, arrival)   # a refusal raises Refusal
    # body.model names the base or a served LoRA adapter (server/adapters.py); None: the base
    try:
        async for text in generation.run(): ...                    # the answer as it grows
    finally:
        generation.release()                                       # frees its slot, always

    generations = await pipeline.start_choices(body, [id_0, id_1], arrival)   # n answers

The steps, in the order a request takes them:
    0. model         the base, or a served adapter (Refusal "unknown_model" / "adapter_refused")
    1. admission     a place in the queue, or Refusal("overloaded") at once (before any work);
                     a request for n answers takes n places
    2. prompt        the fields checked against the limits and the model; the Alpaca template
                     (training/prompts.py, the one source) or the raw prompt; its tokens
    3. input filters the content filters' verdict on the request (Refusal("blocked"))
    4. a slot        waiting in the queue until a generation slot is free, within the deadline
    5. engine        `Generation.run()`: the engine's pieces become the answer as the client sees
                     it (stripped, no broken characters, ended before a stop string, which the
                     server matches itself: server/stop_strings.py), checked by the output
                     filters after each piece, cut at the deadline or when the server stops waiting
    6. record        the finished generation goes to the generation log (the feedback store)

`/generate` and the OpenAI-compatible `/v1` routes only translate HTTP to this module and back:
the same request gives the same answer, metrics and record whichever route it came through.
Nothing here knows about HTTP; refusals and interruptions are exceptions the routes map to
statuses (`server/errors.py`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import cast

from alpaca_serve.core.prompts import SECTION_HEADERS, format_prompt
from alpaca_serve.feedback import GenerationRecord
from alpaca_serve.server.adapters import Adapter, AdapterRegistry
from alpaca_serve.server.admission import Admission, Ticket
from alpaca_serve.server.engine import (
    AdapterWeights,
    Engine,
    EngineRequestError,
    EngineUnavailableError,
    Piece,
    SamplingOptions,
    TokenLogprob,
)
from alpaca_serve.server.filters import FilterChain, FilterInput, FilterOutcome, Verdict
from alpaca_serve.server.json_schemas import SchemaBounds, SchemaRefused, check_json_schema
from alpaca_serve.server.metrics import ModelMetrics, ServerMetrics
from alpaca_serve.server.request_context import session_id_var
from alpaca_serve.server.schemas import GenerateRequest
from alpaca_serve.server.settings import ServerSettings
from alpaca_serve.server.stop_strings import StopMatcher

log = logging.getLogger("alpaca.server")

REPLACEMENT_CHAR = "\ufffd"
RETRY_AFTER_S = 1  # what a refused client is told to wait before trying again


class Refusal(Exception):
    """The request was refused before it reached the engine.

    `kind` says why: "invalid" (a field, with `param`), "unknown_model" (no model of that name),
    "adapter_refused" (an adapter that failed its checks), "overloaded" (no place in the queue),
    "queue_timeout" (no slot came free before the deadline), "blocked" (an input filter, with
    `category`), "unavailable" (no engine to use) or "shutting_down". `code` is a
    machine-readable reason where one helps a client (such as "context_length_exceeded").
    """

    def __init__(
        self,
        kind: str,
        message: str,
        param: str | None = None,
        category: str | None = None,
        retry_after_s: int | None = None,
        code: str | None = None,
        counted: bool = False,
    ):
        super().__init__(message)
        self.counted = counted  # already in the request metrics (raised by a running generation)
        self.kind = kind
        self.message = message
        self.param = param
        self.category = category
        self.retry_after_s = retry_after_s
        self.code = code


class GenerationInterrupted(Exception):
    """Generation was aborted: `kind` is "timeout" (the deadline) or "shutdown" (drain over)."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


# Why a generation that had started may end without an answer (after the HTTP status is sent,
# for a stream): the engine died, the deadline or shutdown, or the engine refused the request
# when it was added (a Refusal the generation raises itself).
GENERATION_ERRORS = (EngineUnavailableError, GenerationInterrupted, Refusal)


@dataclass
class Pipeline:
    """The generation path of one server: its settings, admission, filters, metrics and log.

    `engine` is looked up on every request (the engine loads after the app starts); `ready` and
    `draining` say whether it may be used.
    """

    settings: ServerSettings
    metrics: ServerMetrics
    admission: Admission
    filters: FilterChain
    engine: Callable[[], Engine | None]
    is_ready: Callable[[], bool]
    is_draining: Callable[[], bool]
    record: Callable[[GenerationRecord], None]
    stop_event: asyncio.Event = field(default_factory=asyncio.Event)
    # The LoRA adapters served beside the base; None when none are configured.
    adapters: AdapterRegistry | None = None

    def model_names(self, engine: Engine) -> list[str]:
        """Every model a request may name: the base first, then the served adapters."""
        served = list(self.adapters.served) if self.adapters is not None else []
        return [engine.model_name, *served]

    def resolve_model(self, name: str | None, engine: Engine) -> Adapter | None:
        """Step 0: the served adapter a request names (held until its generation is released),
        None for the base; a Refusal for a name nothing is served under."""
        if name is None or name == engine.model_name:
            return None
        adapters = self.adapters
        if adapters is not None and name in adapters.served:
            return adapters.resolve(name)
        if adapters is not None and name in adapters.refused:
            raise Refusal(
                "adapter_refused",
                f"the adapter {name!r} is not served: {adapters.refused[name].reason}",
                "model",
            )
        served = ", ".join(repr(n) for n in self.model_names(engine))
        raise Refusal(
            "unknown_model",
            f"the model {name!r} does not exist; this server serves {served}",
            "model",
            code="model_not_found",
        )

    def require_engine(self) -> Engine:
        """The engine, or a Refusal saying why there is none to use."""
        if self.is_draining():
            raise Refusal("shutting_down", "the server is shutting down")
        engine = self.engine()
        if engine is None or not self.is_ready():
            raise Refusal("unavailable", "the model is still loading; retry shortly")
        if not engine.alive:
            raise Refusal("unavailable", "the engine has stopped")
        return engine

    async def start(self, body: GenerateRequest, request_id: str, arrival: float) -> Generation:
        """Steps 0-4: a generation holding a slot, ready to run; the caller releases it."""
        return (await self.start_choices(body, [request_id], arrival))[0]

    async def start_choices(
        self, body: GenerateRequest, request_ids: list[str], arrival: float
    ) -> list[Generation]:
        """Steps 0-4 for several answers to one request (OpenAI's `n`): one generation per id,
        each holding its own slot and recorded under its own id; the caller releases them all.

        With a seed, answer i samples with seed + i, so the first is the answer of n = 1."""
        engine = self.require_engine()
        adapter = self.resolve_model(body.model, engine)  # 0. the model
        model_name = adapter.name if adapter is not None else engine.model_name
        metrics = self.metrics.for_model(model_name)
        try:
            return await self._start(body, request_ids, arrival, engine, adapter, metrics)
        except BaseException:
            if adapter is not None:
                assert self.adapters is not None  # the adapter was resolved from it
                self.adapters.release(adapter)
            raise

    async def _start(
        self,
        body: GenerateRequest,
        request_ids: list[str],
        arrival: float,
        engine: Engine,
        adapter: Adapter | None,
        metrics: ServerMetrics | ModelMetrics,
    ) -> list[Generation]:
        count = len(request_ids)
        if count > self.admission.max_concurrent:
            raise _invalid(
                f"n is {count}, but this server generates at most "
                f"{self.admission.max_concurrent} answers at once",
                "n",
            )
        tickets = self.admission.admit_group(count)  # 1. admission, before any work
        if tickets is None:
            metrics.count("rejected")
            raise Refusal(
                "overloaded",
                f"the server is at capacity ({self.admission.max_concurrent} generating, "
                f"{self.admission.max_queue} waiting); retry shortly",
                retry_after_s=RETRY_AFTER_S,
            )
        try:
            prompt, prompt_ids, options = await self._prepare(body, engine)  # 2. prompt
            input_outcomes = await self._check_input(body, prompt, metrics)  # 3. input filters
            deadline = arrival + self.settings.request_timeout_s
            try:  # 4. wait in the queue for the generation slots
                await asyncio.wait_for(
                    self.admission.acquire_all(tickets), deadline - time.perf_counter()
                )
            except asyncio.TimeoutError:
                metrics.count("timeout")
                raise Refusal(
                    "queue_timeout",
                    f"no generation slot came free within the server's time limit "
                    f"({self.admission.active} generating, "
                    f"{max(self.admission.waiting - count, 0)} others waiting)",
                    retry_after_s=RETRY_AFTER_S,
                ) from None
        except BaseException:
            for ticket in tickets:
                ticket.release()
            raise
        # Used only when there is an adapter, which was resolved from it: then not None.
        registry = cast(AdapterRegistry, self.adapters)
        session = session_id_var.get()  # the request's X-Session-Id: its answers are shown to it
        generations = []
        for index, (request_id, ticket) in enumerate(zip(request_ids, tickets, strict=True)):
            choice_options = options
            if index and options.seed is not None:
                choice_options = dataclasses.replace(options, seed=(options.seed + index) % 2**63)
            if index and adapter is not None:
                registry.resolve(adapter.name)  # each answer holds the adapter until released
            generation = Generation(
                engine,
                metrics,
                prompt_ids,
                choice_options,
                request_id,
                arrival,
                filters=self.filters,
                on_finish=lambda done: self.record(_generation_record(done, body, prompt, session)),
                deadline=deadline,
                stop_event=self.stop_event,
                ticket=ticket,
                adapter=adapter.weights if adapter is not None else None,
                model_name=adapter.name if adapter is not None else None,
                on_release=(lambda: registry.release(adapter)) if adapter is not None else None,
            )
            generation.filter_outcomes.extend(input_outcomes)
            generations.append(generation)
        return generations

    @property
    def schema_bounds(self) -> SchemaBounds:
        settings = self.settings
        return SchemaBounds(
            settings.max_schema_bytes, settings.max_schema_depth, settings.max_schema_properties
        )

    async def _prepare(
        self, body: GenerateRequest, engine: Engine
    ) -> tuple[str, list[int], SamplingOptions]:
        """Step 2, off the event loop when a JSON schema makes it heavy (checked against its
        metaschema, compiled to a grammar: up to seconds for a large one, during which /ready
        and every stream would stall), within prepare_timeout_s."""
        if body.json_schema is None:
            return self.prepare(body, engine)
        future = asyncio.get_running_loop().run_in_executor(
            _prepare_pool(), self.prepare, body, engine
        )
        limit = self.settings.prepare_timeout_s
        try:
            return await asyncio.wait_for(future, limit)
        except asyncio.TimeoutError:
            raise _invalid(
                f"json_schema took longer than this server's limit of {limit:g} s to prepare "
                "(ALPACA_PREPARE_TIMEOUT_S): give a smaller schema",
                "json_schema",
            ) from None

    def prepare(
        self, body: GenerateRequest, engine: Engine
    ) -> tuple[str, list[int], SamplingOptions]:
        """Step 2: check what depends on the settings and the model; build the prompt tokens."""
        settings = self.settings
        if body.prompt is not None:
            if body.instruction is not None:
                raise _invalid("give either instruction or prompt, not both", "prompt")
            if body.input:
                raise _invalid(
                    "input goes with instruction; a raw prompt already holds it", "input"
                )
            if not body.prompt.strip():
                raise _invalid("prompt is empty", "prompt")
            prompt, prompt_param = body.prompt, "prompt"
        elif body.instruction is None:
            raise _invalid("instruction is required (or a raw prompt)", "instruction")
        elif not body.instruction.strip():
            raise _invalid("instruction is empty", "instruction")
        else:
            prompt, prompt_param = format_prompt(body.instruction, body.input), "instruction"

        chars = (
            len(prompt)
            if body.prompt is not None
            else len(cast(str, body.instruction)) + len(body.input)  # not None: checked above
        )
        if chars > settings.max_prompt_chars:
            what = "the prompt" if body.prompt is not None else "instruction and input together"
            raise _invalid(
                f"{what} is {chars} characters, above this server's limit of "
                f"{settings.max_prompt_chars}",
                prompt_param,
            )
        max_new_tokens = body.max_new_tokens or settings.default_max_new_tokens
        if max_new_tokens > settings.max_new_tokens_limit:
            raise _invalid(
                f"max_new_tokens is {max_new_tokens}, above this server's limit of "
                f"{settings.max_new_tokens_limit}",
                "max_new_tokens",
            )
        if body.min_tokens > max_new_tokens:
            raise _invalid(
                f"min_tokens is {body.min_tokens}, above max_new_tokens ({max_new_tokens})",
                "min_tokens",
            )
        if body.json_schema is not None and body.json_object:
            raise _invalid("give json_schema or json_object, not both", "json_object")
        if body.json_schema is not None:
            try:
                check_json_schema(body.json_schema, self.schema_bounds)
            except SchemaRefused as err:
                raise _invalid(str(err), "json_schema") from None
        prompt_ids = engine.tokenize(prompt)
        context = engine.max_model_len
        if len(prompt_ids) >= context:
            raise Refusal(
                "invalid",
                f"the prompt is {len(prompt_ids)} tokens, which fills the model's context of "
                f"{context} tokens",
                prompt_param,
                code=CONTEXT_LENGTH_EXCEEDED,
            )
        if len(prompt_ids) + max_new_tokens > context:
            raise Refusal(
                "invalid",
                f"the prompt is {len(prompt_ids)} tokens and max_new_tokens is {max_new_tokens}: "
                f"{len(prompt_ids) + max_new_tokens} in all, above the model's context of "
                f"{context} tokens (at most {context - len(prompt_ids)} new tokens fit)",
                "max_new_tokens",
                code=CONTEXT_LENGTH_EXCEEDED,
            )
        options = SamplingOptions(
            max_new_tokens=max_new_tokens,
            temperature=body.temperature,
            top_p=body.top_p,
            top_k=body.top_k,
            repetition_penalty=body.repetition_penalty,
            # Also stop before a template header, so an answer never runs on into a new section.
            # Generation.run matches these itself; the engine is given none.
            stop=tuple(dict.fromkeys([*body.stop, *SECTION_HEADERS])),
            seed=body.seed,
            presence_penalty=body.presence_penalty,
            frequency_penalty=body.frequency_penalty,
            min_tokens=body.min_tokens,
            logprobs=body.logprobs,
            json_schema=body.json_schema,
            json_object=body.json_object,
        )
        try:
            engine.check_options(options)
        except EngineRequestError as err:
            raise _invalid(str(err), _structured_param(options)) from None
        return prompt, prompt_ids, options

    async def _check_input(
        self, body: GenerateRequest, prompt: str, metrics: ServerMetrics | ModelMetrics
    ) -> list[FilterOutcome]:
        """Step 3: run the input filters; a block never reaches the engine."""
        if not self.filters:
            return []
        request = FilterInput(instruction=body.instruction, input=body.input, prompt=prompt)
        verdict, outcomes = await self.filters.check_input(request)
        if not verdict.allowed:
            metrics.count("blocked")
            raise Refusal(
                "blocked",
                f"the request was refused by the content filter (category: {verdict.category}): "
                f"{verdict.reason}",
                "prompt" if body.prompt is not None else "instruction",
                category=verdict.category,
            )
        return outcomes


CONTEXT_LENGTH_EXCEEDED = "context_length_exceeded"
_PREPARE_POOL: ThreadPoolExecutor | None = None


def _prepare_pool() -> ThreadPoolExecutor:
    """One thread prepares schema requests, one at a time: the grammar compiler is not known to
    be safe to run twice at once, and a queue of large schemas is bounded by their time limit."""
    global _PREPARE_POOL
    if _PREPARE_POOL is None:
        _PREPARE_POOL = ThreadPoolExecutor(max_workers=1, thread_name_prefix="alpaca-prepare")
    return _PREPARE_POOL


def _invalid(message: str, param: str) -> Refusal:
    return Refusal("invalid", message, param)


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
    """Step 5: runs one admitted request through the engine and accounts for it.

    `run()` yields the answer's new text; metrics and one log line are written when it ends, and
    a generation that finished (or was cut by a filter) is handed to `on_finish` (step 6).
    """

    def __init__(
        self,
        engine: Engine,
        metrics: ServerMetrics | ModelMetrics,
        prompt_ids: list[int],
        options: SamplingOptions,
        request_id: str,
        arrival: float,
        filters: FilterChain | None = None,
        on_finish: Callable[[Generation], None] | None = None,
        deadline: float | None = None,
        stop_event: asyncio.Event | None = None,
        ticket: Ticket | None = None,
        adapter: AdapterWeights | None = None,
        model_name: str | None = None,
        on_release: Callable[[], None] | None = None,
    ):
        self.engine = engine
        self.adapter = adapter  # the LoRA adapter answering, None for the base model
        self.model_name = model_name or engine.model_name
        self.on_release = on_release  # called once, when the slot is released
        self.metrics = metrics
        self.prompt_ids = prompt_ids
        self.options = options
        self.request_id = request_id
        self.arrival = arrival
        self.filters = filters
        self.on_finish = on_finish
        self.deadline = deadline  # time.perf_counter() value past which generation is aborted
        self.stop_event = stop_event  # set when the server stops waiting for generations
        self.ticket = ticket  # its generation slot
        self.answer = AnswerText()
        self.text = ""  # what the client has been given: the answer up to any blocked piece
        self.finish_reason: str | None = None
        self.blocked: Verdict | None = None
        self.filter_outcomes: list[FilterOutcome] = []
        self.completion_tokens = 0
        self.latency_s = 0.0
        self.ttft_ms: float | None = None
        # With options.logprobs: the tokens the client has been given, with their
        # log-probabilities (a token whose text is held back comes with the next text).
        self.logprobs: list[TokenLogprob] = []

    @property
    def prompt_tokens(self) -> int:
        return len(self.prompt_ids)

    def release(self) -> None:
        """Free the generation slot (idempotent); call it however the generation ended."""
        if self.ticket is not None:
            self.ticket.release()
        on_release, self.on_release = self.on_release, None
        if on_release is not None:
            on_release()

    async def run_to_end(self) -> None:
        """Generate the whole answer (`text` holds it afterwards)."""
        async for _ in self.run():
            pass

    async def run(self) -> AsyncIterator[str]:
        """Yield the answer's new text as it is generated (never an empty string)."""
        first_at = last_at = None
        outcome = "error"
        output_outcomes: list[FilterOutcome] = []
        # The adapter is passed only when there is one, so an engine without LoRA works as before.
        adapter = {"adapter": self.adapter} if self.adapter is not None else {}
        # The stop strings are matched here, not in the engine: vLLM would hold back the last
        # characters of every piece until it could rule a match out (server/stop_strings.py).
        # They count only after min_tokens tokens, so an answer that may not end before
        # max_new_tokens never ends at one: then no text waits for them.
        can_stop = self.options.min_tokens < self.options.max_new_tokens
        stops = StopMatcher(self.options.stop if can_stop else ())
        options = dataclasses.replace(self.options, stop=())
        pieces = self.engine.generate(self.prompt_ids, options, self.request_id, **adapter)
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
                        assert last_at is not None  # set with first_at
                        self.metrics.inter_token_latency.observe((now - last_at) / new_tokens)
                    last_at = now
                    self.metrics.generation_tokens.inc(new_tokens)
                # Stop strings count once min_tokens tokens are out, as in vLLM.
                matchable = piece.completion_tokens > self.options.min_tokens
                released, stopped = stops.feed(piece.text, matchable)
                if stopped:
                    self.finish_reason = "stop"
                elif piece.finish_reason is not None:
                    self.finish_reason = piece.finish_reason
                    released += stops.finish()
                text = self.answer.feed(released)
                if self.finish_reason is not None:
                    text += self.answer.finish()
                if text and self.filters:
                    verdict, output_outcomes = await self.filters.check_output(self.answer.text)
                    if not verdict.allowed:
                        # Nothing of the offending piece reaches the client; leaving the loop
                        # closes the engine's stream, which aborts the request.
                        self.blocked, self.finish_reason = verdict, "content_filter"
                        break
                self.logprobs.extend(piece.logprobs)
                if text:
                    self.text += text
                    yield text
                if stopped:
                    break  # leaving the loop closes the engine's stream, which aborts the request
            outcome = "blocked" if self.blocked else "success"
        except (asyncio.CancelledError, GeneratorExit):
            outcome = "client_disconnected"
            raise
        except EngineRequestError as err:  # refused when added, though check_options passed
            outcome = "invalid"
            param = _structured_param(self.options)
            raise Refusal("invalid", str(err), param, counted=True) from None
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
                self.request_id,
                outcome,
                self.finish_reason,
                self.prompt_tokens,
                self.completion_tokens,
                self.latency_s,
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


def _structured_param(options: SamplingOptions) -> str:
    return "json_object" if options.json_object else "json_schema"


def _generation_record(
    generation: Generation, body: GenerateRequest, prompt: str, session_id: str | None
) -> GenerationRecord:
    """Step 6: what the generation log keeps of a finished generation (never the client's
    address): the feedback session it was shown to among it."""
    options = generation.options
    return GenerationRecord(
        id=generation.request_id,
        created_at=time.time() - generation.latency_s,
        model=generation.model_name,
        params={
            "max_new_tokens": options.max_new_tokens,
            "temperature": options.temperature,
            "top_p": options.top_p,
            "top_k": options.top_k,
            "repetition_penalty": options.repetition_penalty,
            "stop": body.stop,
            "seed": options.seed,
            **_extra_params(options),
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
        session_id=session_id,
    )


def schema_digest(schema: dict | None) -> dict | None:
    """What the generation log keeps of a JSON schema: its SHA-256 (of its canonical JSON) and
    size, not the schema."""
    if schema is None:
        return None
    canonical = json.dumps(schema, sort_keys=True, separators=(",", ":")).encode()
    return {"sha256": hashlib.sha256(canonical).hexdigest(), "bytes": len(canonical)}


def _extra_params(options: SamplingOptions) -> dict:
    """The sampling parameters a request set beyond the usual ones, for the record."""
    extra = {
        "presence_penalty": options.presence_penalty,
        "frequency_penalty": options.frequency_penalty,
        "min_tokens": options.min_tokens,
        "logprobs": options.logprobs,
        # By hash: the schema is the client's, up to max_schema_bytes, and every answer would
        # store it again.
        "json_schema": schema_digest(options.json_schema),
        "json_object": options.json_object,
    }
    unset = {
        "presence_penalty": 0.0,
        "frequency_penalty": 0.0,
        "min_tokens": 0,
        "logprobs": None,
        "json_schema": None,
        "json_object": False,
    }
    return {name: value for name, value in extra.items() if value != unset[name]}
