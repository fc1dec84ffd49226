"""A test double of the engine: deterministic scripted answers, no model, no vLLM.

Usage:
    engine = ScriptedEngine()                        # a long answer that depends on the prompt
    engine.reply = lambda prompt: "Paris."           # any answer, from the prompt text
    engine.reply = lambda prompt: ["Par", "is."]     # ... or its pieces, one token each
    engine.delay_s = 0.05                            # seconds per token (slow generations)
    engine.abort_delay_s = 1.0                       # aborting a request takes a second
    engine.held = True                               # no token comes until it is False again
    engine.die()                                     # the engine process is gone from now on
    engine.adapters                                  # LoRA adapters loaded: name -> AdapterWeights
    engine.refuse_adapters["bad"] = "unsupported"    # add_adapter("bad") raises, as vLLM would
    app = create_app(settings, engine=engine)

It satisfies `alpaca_serve.server.engine.Engine`, the Protocol the server is written against,
and behaves as vLLM does where the server relies on it: one token per character of the prompt;
the answer comes one word (a token) per piece, or in the pieces a scripted `reply` lists; `stop`
strings end it before the string, which is not returned (finish "stop"; the server gives it none,
as it matches them itself); `max_new_tokens` cuts it (finish "length"); otherwise it ends with
"eos".
Closing the stream early aborts the request (its id goes to `aborted`). Every request that
reaches it is kept in `requests`, so a test can tell that a refused request never got here.
A request with a LoRA adapter is answered `adapter_reply(name, answer)`: by default the base's
answer with the adapter's name in front, so a test can tell which model answered. Generating with
an adapter that was never added, or was removed, fails as it would make vLLM fail.

Beyond text: with `logprobs` each token gets a fake log-probability derived from the token (the
sampled token is always the likeliest; its alternatives are `alt1`, `alt2`, ... one nat apart);
with `json_schema` or `json_object` the answer is a JSON value built from the schema (the first
enum value, the minimum, every property), unless a test scripted `reply`; a schema with a
look-behind pattern is refused, as vLLM's backends refuse it; `penalties` and `min_tokens` only
reach `requests`.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from alpaca_serve.server.engine import (
    AdapterWeights,
    EngineLoad,
    EngineRequestError,
    EngineUnavailableError,
    Piece,
    SamplingOptions,
    TokenLogprob,
)

# Pieces of an answer: each word with the white space before it, as a tokenizer would cut it.
TOKEN = re.compile(r"\s*\S+|\s+")


WORDS = ("the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "and", "runs", "away")


def long_answer(prompt: str) -> str:
    """The default answer: a few hundred words, the same for the same prompt, other for another
    (it never repeats the prompt: a real model's answer does not either)."""
    start = sum(map(ord, prompt)) % len(WORDS)
    words = [WORDS[(start + i) % len(WORDS)] for i in range(300)]
    return f"Answer {len(prompt)}: " + " ".join(words) + "."


def cut_at_stop(pieces: list[str], stops: tuple[str, ...]) -> tuple[list[str], str]:
    """The pieces up to the first stop string, which is left out, and the finish reason then."""
    text = "".join(pieces)
    cuts = [text.index(stop) for stop in stops if stop in text]
    if not cuts:
        return pieces, "eos"
    kept, length = [], 0
    for piece in pieces:
        if length >= min(cuts):
            break
        kept.append(piece[: min(cuts) - length])
        length += len(piece)
    return kept, "stop"


def adapter_answer(name: str, answer: str) -> str:
    """The default answer of an adapter: the base's, marked with the adapter's name."""
    return f"[{name}] {answer}"


def fake_logprobs(token: str, top: int) -> TokenLogprob:
    """A deterministic log-probability for `token`, with `top` alternatives, likeliest first."""
    logprob = -round(0.05 * (1 + sum(map(ord, token)) % 7), 2)
    alternatives = [TokenLogprob(token, logprob)]
    alternatives += [TokenLogprob(f"alt{rank}", logprob - rank) for rank in range(1, top)]
    return TokenLogprob(token, logprob, tuple(alternatives[:top]))


def instance_of(schema: dict[str, Any]) -> Any:
    """A small JSON value valid against `schema` (the kinds of schema the tests use)."""
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        return schema["enum"][0]
    kind = schema.get("type", "object")
    if isinstance(kind, list):
        kind = kind[0]
    if kind == "object":
        properties = schema.get("properties", {})
        return {name: instance_of(sub) for name, sub in properties.items()}
    if kind == "array":
        items = schema.get("items", {"type": "null"})
        return [instance_of(items)] * schema.get("minItems", 0)
    if kind in ("integer", "number"):
        return schema.get("minimum", 0)
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    return "x" * schema.get("minLength", 1)


def has_lookbehind(schema: Any) -> bool:
    """Whether a pattern in `schema` uses a look-behind, which vLLM's backends cannot compile."""
    if isinstance(schema, dict):
        pattern = schema.get("pattern")
        if isinstance(pattern, str) and "(?<" in pattern:
            return True
        return any(has_lookbehind(value) for value in schema.values())
    if isinstance(schema, list):
        return any(has_lookbehind(value) for value in schema)
    return False


@dataclass
class ScriptedRequest:
    request_id: str
    prompt: str
    options: SamplingOptions
    adapter: str | None = None  # the LoRA adapter's name, None for the base


@dataclass
class ScriptedEngine:
    model_name: str = "scripted-model"
    max_model_len: int = 4096
    device: str = "scripted"
    dtype: str = "none"
    reply: Callable[[str], str | list[str]] = long_answer
    delay_s: float = 0.0  # per token
    abort_delay_s: float = 0.0  # how long aborting a request takes (a busy engine's is slow)
    held: bool = False  # while True, running requests make no token (a paused engine)
    load: EngineLoad = field(default_factory=EngineLoad)
    requests: list[ScriptedRequest] = field(default_factory=list)
    aborted: list[str] = field(default_factory=list)
    adapter_reply: Callable[[str, str], str] = adapter_answer
    adapters: dict[str, AdapterWeights] = field(default_factory=dict)
    refuse_adapters: dict[str, str] = field(default_factory=dict)  # name -> the error add raises
    _alive: bool = True
    _running: int = 0

    @property
    def alive(self) -> bool:
        return self._alive

    def die(self) -> None:
        """From now on every call fails as a dead vLLM engine's would."""
        self._alive = False

    def tokenize(self, prompt: str, add_special_tokens: bool = True) -> list[int]:
        return [ord(char) for char in prompt]

    async def add_adapter(self, adapter: AdapterWeights) -> None:
        if adapter.name in self.refuse_adapters:
            raise ValueError(self.refuse_adapters[adapter.name])
        self.adapters[adapter.name] = adapter

    async def remove_adapter(self, adapter: AdapterWeights) -> None:
        if self.adapters.get(adapter.name) == adapter:
            del self.adapters[adapter.name]

    def detokenize(self, token_ids: list[int]) -> str:
        for token_id in token_ids:
            if not 0 <= token_id < 0x110000:
                raise ValueError(f"token id {token_id} is outside the vocabulary")
        return "".join(chr(token_id) for token_id in token_ids)

    def check_options(self, options: SamplingOptions) -> None:
        if options.json_schema is not None and has_lookbehind(options.json_schema):
            raise EngineRequestError("Lookbehind is not supported in a JSON schema pattern")

    async def generate(
        self,
        prompt_ids: list[int],
        options: SamplingOptions,
        request_id: str,
        adapter: AdapterWeights | None = None,
    ) -> AsyncIterator[Piece]:
        if not self._alive:
            raise EngineUnavailableError("the engine has stopped")
        if adapter is not None and self.adapters.get(adapter.name) != adapter:
            raise RuntimeError(f"adapter {adapter.name} (id {adapter.id}) was never loaded")
        prompt = "".join(chr(token) for token in prompt_ids)
        name = adapter.name if adapter is not None else None
        self.requests.append(ScriptedRequest(request_id, prompt, options, name))
        self.check_options(options)
        answer = self._answer(prompt, options)
        if adapter is not None:
            answer = self.adapter_reply(adapter.name, "".join(answer))
        tokens = answer if isinstance(answer, list) else TOKEN.findall(answer)
        tokens, finish = cut_at_stop(tokens, options.stop)
        if len(tokens) > options.max_new_tokens:
            tokens, finish = tokens[: options.max_new_tokens], "length"
        if not tokens:
            tokens = [""]  # the end-of-sequence token alone
        finished = False
        self._running += 1
        try:
            for count, token in enumerate(tokens, start=1):
                if self.delay_s:
                    await asyncio.sleep(self.delay_s)
                while self.held and self._alive:
                    await asyncio.sleep(0.005)
                if not self._alive:
                    raise EngineUnavailableError("the engine has stopped")
                last = count == len(tokens)
                logprobs = ()
                if options.logprobs is not None and token:
                    logprobs = (fake_logprobs(token, options.logprobs),)
                yield Piece(token, len(prompt_ids), count, finish if last else None, logprobs)
            finished = True
        finally:
            if not finished:
                if self.abort_delay_s:
                    await asyncio.sleep(self.abort_delay_s)
                self.aborted.append(request_id)
            self._running -= 1

    def _answer(self, prompt: str, options: SamplingOptions) -> str | list[str]:
        structured = options.json_schema is not None or options.json_object
        if structured and self.reply is long_answer:
            return json.dumps(instance_of(options.json_schema or {"type": "object"}))
        return self.reply(prompt)

    async def check_health(self) -> None:
        if not self._alive:
            raise EngineUnavailableError("the engine has stopped")

    def num_unfinished_requests(self) -> int:
        return self._running

    def shutdown(self) -> None:
        self._alive = False
