"""A test double of the engine: deterministic scripted answers, no model, no vLLM.

Usage:
    engine = ScriptedEngine()                        # a long answer that depends on the prompt
    engine.reply = lambda prompt: "Paris."           # any answer, from the prompt text
    engine.delay_s = 0.05                            # seconds per token (slow generations)
    engine.abort_delay_s = 1.0                       # aborting a request takes a second
    engine.die()                                     # the engine process is gone from now on
    engine.adapters                                  # LoRA adapters loaded: name -> AdapterWeights
    engine.refuse_adapters["bad"] = "unsupported"    # add_adapter("bad") raises, as vLLM would
    app = create_app(settings, engine=engine)

It satisfies `server.engine.Engine`, the Protocol the server is written against, and behaves as
vLLM does where the server relies on it: one token per character of the prompt; the answer comes
one word (a token) per piece; `stop` strings end it before the string, which is not returned
(finish "stop"); `max_new_tokens` cuts it (finish "length"); otherwise it ends with "eos".
Closing the stream early aborts the request (its id goes to `aborted`). Every request that
reaches it is kept in `requests`, so a test can tell that a refused request never got here.
A request with a LoRA adapter is answered `adapter_reply(name, answer)`: by default the base's
answer with the adapter's name in front, so a test can tell which model answered. Generating with
an adapter that was never added, or was removed, fails as it would make vLLM fail.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from server.engine import AdapterWeights, EngineLoad, EngineUnavailableError, Piece, SamplingOptions

# Pieces of an answer: each word with the white space before it, as a tokenizer would cut it.
TOKEN = re.compile(r"\s*\S+|\s+")


WORDS = ("the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "and", "runs", "away")


def long_answer(prompt: str) -> str:
    """The default answer: a few hundred words, the same for the same prompt, other for another
    (it never repeats the prompt: a real model's answer does not either)."""
    start = sum(map(ord, prompt)) % len(WORDS)
    words = [WORDS[(start + i) % len(WORDS)] for i in range(300)]
    return f"Answer {len(prompt)}: " + " ".join(words) + "."


def adapter_answer(name: str, answer: str) -> str:
    """The default answer of an adapter: the base's, marked with the adapter's name."""
    return f"[{name}] {answer}"


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
    reply: Callable[[str], str] = long_answer
    delay_s: float = 0.0  # per token
    abort_delay_s: float = 0.0  # how long aborting a request takes (a busy engine's is slow)
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

    def tokenize(self, prompt: str) -> list[int]:
        return [ord(char) for char in prompt]

    async def add_adapter(self, adapter: AdapterWeights) -> None:
        if adapter.name in self.refuse_adapters:
            raise ValueError(self.refuse_adapters[adapter.name])
        self.adapters[adapter.name] = adapter

    async def remove_adapter(self, adapter: AdapterWeights) -> None:
        if self.adapters.get(adapter.name) == adapter:
            del self.adapters[adapter.name]

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
        text, finish = self.reply(prompt), "eos"
        if adapter is not None:
            text = self.adapter_reply(adapter.name, text)
        cuts = [text.index(stop) for stop in options.stop if stop in text]
        if cuts:
            text, finish = text[: min(cuts)], "stop"
        tokens = TOKEN.findall(text)
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
                if not self._alive:
                    raise EngineUnavailableError("the engine has stopped")
                last = count == len(tokens)
                yield Piece(token, len(prompt_ids), count, finish if last else None)
            finished = True
        finally:
            if not finished:
                if self.abort_delay_s:
                    await asyncio.sleep(self.abort_delay_s)
                self.aborted.append(request_id)
            self._running -= 1

    async def check_health(self) -> None:
        if not self._alive:
            raise EngineUnavailableError("the engine has stopped")

    def num_unfinished_requests(self) -> int:
        return self._running

    def shutdown(self) -> None:
        self._alive = False
