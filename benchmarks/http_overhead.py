"""How much the HTTP server costs on top of the engine: tokens/s and time to first token.

Usage:
    python -m benchmarks.http_overhead --clients 8          # the bundled default model
    alpaca-bench --model ./alpaca-7b --json figures.json    # any Hugging Face folder
    alpaca-bench --clients 2 --requests-per-client 1 --max-new-tokens 16 --rounds 1  # smoke run

One engine is built in this process and measured two ways, with the same clients, prompts and
sampling settings:

- "engine": N concurrent clients call `engine.generate` directly (tokenizing their prompt first,
  as the server does);
- "http": the same engine is served by `create_app(settings, engine=engine)` under uvicorn, on
  127.0.0.1 in this same event loop, and N concurrent aiohttp clients stream `POST /generate`
  (`"stream": true`) and parse its server-sent events.

Each client sends `--requests-per-client` requests one after the other; prompt k of the phase is
the Alpaca-formatted instruction k of the list (cycling), so both phases generate the same text.
Decoding is greedy (temperature 0) with `--max-new-tokens`; as end-of-sequence cannot be ignored,
completion tokens are counted from what was generated (engine: the pieces; http: the final
event's usage). Both phases stop at the Alpaca section headers, as the server always does: the
engine phase matches them as the server does (server/stop_strings.py), the engine is given none.

Phases run in the order engine, http, engine, http, ... (`--rounds` times each), each after a
couple of uncounted warm-up requests. Reported per phase: output tokens/s (completion tokens of
the phase / its wall time) as the MEAN over rounds (the best round is shown too), and TTFT p50/p99
over all the phase's requests of all rounds pooled. TTFT is the time from a request's start to
its first non-empty text (engine: first piece with text; http: first event with text; the server
strips leading white space, so its first text may come a token later). The http figures include
the aiohttp client, which shares the event loop (and the CPUs) with the server.

On a machine with few cores the engine's worker process and this process compete for the CPUs,
and single rounds vary a lot: run more `--rounds` and compare the best-round column as well.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import math
import os
import socket
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.sse import sse_events

# Fewer vLLM log lines; set before vLLM is first imported (by build_engine).
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")

INSTRUCTIONS = [
    "Give three tips for staying healthy.",
    "Explain why the sky is blue.",
    "Write a short poem about the sea.",
    "Describe the process of photosynthesis in simple terms.",
    "List five countries in South America and their capitals.",
    "Write a Python function that reverses a string.",
    "What are the main differences between a cat and a dog as pets?",
    "Summarize the plot of Romeo and Juliet in a few sentences.",
    "Suggest a name for a coffee shop and explain your choice.",
    "Explain what a black hole is to a ten-year-old.",
    "Write an email asking a colleague to reschedule a meeting.",
    "How do I make a cup of tea?",
    "Give an example of a metaphor and explain it.",
    "What is the difference between weather and climate?",
    "Translate 'Good morning, how are you?' into French and Spanish.",
    "Describe a sunset over the mountains.",
]

PHASES = ("engine", "http")
WARMUP_REQUESTS = 2


@dataclass
class RequestResult:
    ttft_s: float | None  # None: no text at all (e.g. an immediate end of sequence)
    completion_tokens: int
    latency_s: float


@dataclass
class RoundResult:
    phase: str
    round: int
    requests: int
    completion_tokens: int
    wall_s: float
    tokens_per_s: float
    ttft_ms: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class Workload:
    clients: int
    requests_per_client: int
    max_new_tokens: int
    instructions: list[str]

    def instruction(self, client: int, index: int) -> str:
        k = client * self.requests_per_client + index
        return self.instructions[k % len(self.instructions)]


# ---------------------------------------------------------------------------------------------
# The two ways of sending one request


def _sampling_options(max_new_tokens: int):
    from alpaca_serve.server.engine import SamplingOptions

    # What the server gives the engine for the http phase's body (see server/pipeline.py): no
    # stop strings, which it matches itself.
    return SamplingOptions(
        max_new_tokens=max_new_tokens,
        temperature=0.0,
        top_p=1.0,
        top_k=0,
        repetition_penalty=1.0,
        stop=(),
        seed=None,
    )


class EngineClient:
    """Calls the engine directly."""

    def __init__(self, engine, max_new_tokens: int):
        self.engine = engine
        self.options = _sampling_options(max_new_tokens)
        self._count = 0

    async def request(self, instruction: str) -> RequestResult:
        from alpaca_serve.core.prompts import SECTION_HEADERS, format_prompt
        from alpaca_serve.server.stop_strings import StopMatcher

        self._count += 1
        request_id = f"bench-engine-{self._count}-{time.monotonic_ns()}"
        start = time.perf_counter()
        ttft = None
        tokens = 0
        stops = StopMatcher(SECTION_HEADERS)
        prompt_ids = self.engine.tokenize(format_prompt(instruction))
        pieces = self.engine.generate(prompt_ids, self.options, request_id)
        try:
            async for piece in pieces:
                text, stopped = stops.feed(piece.text)
                if ttft is None and text:
                    ttft = time.perf_counter() - start
                tokens = piece.completion_tokens
                if stopped:
                    break
        finally:
            await pieces.aclose()  # after a stop string: aborts the request, as the server does
        return RequestResult(ttft, tokens, time.perf_counter() - start)


class HttpClient:
    """Streams `POST /generate` and reads its server-sent events (aiohttp: a light client, so
    that the figures show the server's cost more than the client's)."""

    def __init__(self, session, base_url: str, max_new_tokens: int):
        self.session = session  # an aiohttp.ClientSession
        self.url = f"{base_url}/generate"
        self.max_new_tokens = max_new_tokens

    async def request(self, instruction: str) -> RequestResult:
        body = {
            "instruction": instruction,
            "max_new_tokens": self.max_new_tokens,
            "temperature": 0.0,
            "top_p": 1.0,
            "top_k": 0,
            "stream": True,
        }
        start = time.perf_counter()
        ttft = None
        tokens = None
        async with self.session.post(self.url, json=body) as response:
            if response.status != 200:
                raise RuntimeError(f"POST /generate: {response.status} {await response.text()}")
            async for event in sse_events(response):
                if "error" in event:
                    raise RuntimeError(f"POST /generate: error event {event['error']}")
                if ttft is None and event.get("text"):
                    ttft = time.perf_counter() - start
                if "usage" in event:
                    tokens = event["usage"]["completion_tokens"]
        if tokens is None:
            raise RuntimeError("POST /generate: the stream ended without a final usage event")
        return RequestResult(ttft, tokens, time.perf_counter() - start)


# ---------------------------------------------------------------------------------------------
# Phases


async def run_phase(client, phase: str, round_no: int, workload: Workload) -> RoundResult:
    """A warm-up, then `clients` concurrent loops of `requests_per_client` requests each."""
    await asyncio.gather(
        *(
            client.request(workload.instructions[i % len(workload.instructions)])
            for i in range(WARMUP_REQUESTS)
        )
    )

    async def one_client(c: int) -> list[RequestResult]:
        return [
            await client.request(workload.instruction(c, i))
            for i in range(workload.requests_per_client)
        ]

    start = time.perf_counter()
    per_client = await asyncio.gather(*(one_client(c) for c in range(workload.clients)))
    wall = time.perf_counter() - start
    results = [r for rs in per_client for r in rs]
    tokens = sum(r.completion_tokens for r in results)
    return RoundResult(
        phase=phase,
        round=round_no,
        requests=len(results),
        completion_tokens=tokens,
        wall_s=wall,
        tokens_per_s=tokens / wall if wall > 0 else 0.0,
        ttft_ms=[r.ttft_s * 1000 for r in results if r.ttft_s is not None],
    )


def _free_socket(host: str = "127.0.0.1") -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    sock.listen(2048)
    sock.setblocking(False)
    return sock


async def _wait_ready(
    session, base_url: str, server_task: asyncio.Task, timeout_s: float = 120.0
) -> None:
    import aiohttp

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server_task.done():
            server_task.result()  # raises what stopped it
            raise RuntimeError("the HTTP server stopped before it was ready")
        try:
            async with session.get(f"{base_url}/ready") as response:
                if response.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.1)
    raise RuntimeError(f"GET /ready did not answer 200 within {timeout_s:g} s")


def make_settings(args: argparse.Namespace):
    from alpaca_serve.server.settings import ServerSettings

    return ServerSettings(
        model=args.model,
        # The engine alone, as the bare engine it is measured against: no LoRA.
        project_model=False,
        # The server's generation log is part of its overhead, but not the user's data.
        data_dir=Path(tempfile.mkdtemp(prefix="alpaca-bench-")),
        enforce_eager=True,
        cpu_kv_cache_gib=args.kv_cache_gib,
        max_new_tokens_limit=max(1024, args.max_new_tokens),
        max_num_seqs=max(64, args.clients + WARMUP_REQUESTS),
    )


def _import_vllm(settings) -> None:
    """Import vLLM from a frame that holds no engine.

    Importing vLLM keeps the importing stack's frames alive for good; an engine referenced from
    one of them is only finalized during interpreter teardown, where its `__del__` fails noisily.
    """
    from alpaca_serve.server.engine import configure_cpu_environment, resolve_device

    if resolve_device(settings) == "cpu":
        configure_cpu_environment(settings)  # what build_engine does before importing vLLM
    import vllm.engine.arg_utils  # noqa: F401
    import vllm.v1.engine.async_llm  # noqa: F401


def load_engine(settings):
    """The model folder (converting the bundled default if needed) and a new engine on it."""
    from alpaca_serve.server.default_model import ensure_default_model
    from alpaca_serve.server.engine import build_engine

    model_path = settings.model or asyncio.run(ensure_default_model(settings.cache_dir))
    print(f"loading {model_path} ...", file=sys.stderr, flush=True)
    started = time.perf_counter()
    # Built outside the event loop, as the app builds it in a worker thread: blocking is fine here.
    engine = build_engine(settings, model_path)
    print(
        f"engine ready in {time.perf_counter() - started:.1f} s ({engine.device}, {engine.dtype})",
        file=sys.stderr,
        flush=True,
    )
    return model_path, engine


async def run_rounds(engine, settings, workload: Workload, rounds: int) -> list[RoundResult]:
    """Serve `engine` over HTTP in this loop, then alternate the engine and http phases."""
    import aiohttp
    import uvicorn

    from alpaca_serve.server.app import create_app

    app = create_app(settings, engine=engine)
    sock = _free_socket()
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app, log_level="warning", access_log=False, lifespan="on", timeout_graceful_shutdown=5
    )
    server = uvicorn.Server(config)
    server_task = asyncio.create_task(server.serve(sockets=[sock]))
    base_url = f"http://127.0.0.1:{port}"
    connector = aiohttp.TCPConnector(limit=workload.clients + WARMUP_REQUESTS + 4)
    results: list[RoundResult] = []
    try:
        async with aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=None)
        ) as http:
            await _wait_ready(http, base_url, server_task)
            clients = {
                "engine": EngineClient(engine, workload.max_new_tokens),
                "http": HttpClient(http, base_url, workload.max_new_tokens),
            }
            for round_no in range(1, rounds + 1):
                for phase in PHASES:
                    result = await run_phase(clients[phase], phase, round_no, workload)
                    results.append(result)
                    print(
                        f"round {round_no} {phase:>6}: {result.requests} requests, "
                        f"{result.completion_tokens} tokens in {result.wall_s:.2f} s = "
                        f"{result.tokens_per_s:.1f} tok/s",
                        file=sys.stderr,
                        flush=True,
                    )
    finally:
        server.should_exit = True
        await asyncio.gather(server_task, return_exceptions=True)
        sock.close()
    return results


# ---------------------------------------------------------------------------------------------
# Figures


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100), interpolated linearly between the closest ranks."""
    if not values:
        return math.nan
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summarize(
    rounds: list[RoundResult], args: argparse.Namespace, model_path: Path, engine
) -> dict[str, Any]:
    phases = {}
    for phase in PHASES:
        mine = [r for r in rounds if r.phase == phase]
        ttfts = [t for r in mine for t in r.ttft_ms]
        phases[phase] = {
            "tokens_per_s_mean": statistics.fmean(r.tokens_per_s for r in mine),
            "tokens_per_s_best": max(r.tokens_per_s for r in mine),
            "ttft_p50_ms": percentile(ttfts, 50),
            "ttft_p99_ms": percentile(ttfts, 99),
            "requests": sum(r.requests for r in mine),
            "completion_tokens": sum(r.completion_tokens for r in mine),
            "wall_s": sum(r.wall_s for r in mine),
        }
    engine_tps, http_tps = (phases[p]["tokens_per_s_mean"] for p in PHASES)
    engine_best, http_best = (phases[p]["tokens_per_s_best"] for p in PHASES)
    return {
        "model": str(model_path),
        "device": engine.device,
        "dtype": engine.dtype,
        "clients": args.clients,
        "requests_per_client": args.requests_per_client,
        "max_new_tokens": args.max_new_tokens,
        "rounds": args.rounds,
        "tokens_per_s": "mean over rounds",
        "ttft": "percentiles over the requests of all rounds",
        "phases": phases,
        "ratio_http_over_engine_tokens_per_s": http_tps / engine_tps if engine_tps else None,
        "ratio_http_over_engine_tokens_per_s_best": (
            http_best / engine_best if engine_best else None
        ),
        "per_round": [
            {k: v for k, v in asdict(r).items() if k != "ttft_ms"}
            | {"ttft_p50_ms": percentile(r.ttft_ms, 50), "ttft_p99_ms": percentile(r.ttft_ms, 99)}
            for r in rounds
        ],
    }


def format_table(figures: dict[str, Any]) -> str:
    lines = [
        f"model {figures['model']} ({figures['device']}, {figures['dtype']}): "
        f"{figures['clients']} clients x {figures['requests_per_client']} requests, "
        f"max_new_tokens {figures['max_new_tokens']}, greedy, {figures['rounds']} round(s)",
        "tok/s: mean over rounds (best round in brackets); TTFT: all rounds' requests pooled",
        "",
        f"{'phase':<8} {'tok/s (mean)':>12} {'(best)':>9} {'TTFT p50 ms':>12} "
        f"{'TTFT p99 ms':>12} {'requests':>9} {'tokens':>8}",
    ]
    for phase, p in figures["phases"].items():
        best = f"({p['tokens_per_s_best']:.1f})"
        lines.append(
            f"{phase:<8} {p['tokens_per_s_mean']:>12.1f} {best:>9} "
            f"{p['ttft_p50_ms']:>12.1f} {p['ttft_p99_ms']:>12.1f} {p['requests']:>9d} "
            f"{p['completion_tokens']:>8d}"
        )
    ratio, ratio_best = (
        figures["ratio_http_over_engine_tokens_per_s"],
        figures["ratio_http_over_engine_tokens_per_s_best"],
    )
    lines += [
        "",
        f"http/engine tokens/s: {ratio:.3f} (mean)   {ratio_best:.3f} (best)"
        if ratio is not None
        else "http/engine tokens/s: n/a (no engine tokens)",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Command line


def load_instructions(path: Path | None) -> list[str]:
    if path is None:
        return list(INSTRUCTIONS)
    instructions = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            instruction = json.loads(line)["instruction"]
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise SystemExit(
                f"alpaca-bench: error: {path}:{number}: not a JSON object with an "
                f'"instruction" field ({err})'
            ) from err
        if isinstance(instruction, str) and instruction.strip():
            instructions.append(instruction)
    if not instructions:
        raise SystemExit(f"alpaca-bench: error: {path} holds no instructions")
    return instructions


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be above 0, not {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="alpaca-bench",
        description="Measure the HTTP server's overhead: the same engine driven directly and "
        "through POST /generate (streaming), by the same concurrent clients.",
    )
    parser.add_argument(
        "--model",
        type=Path,
        help="Hugging Face folder of a LLaMA-family model (default: the bundled "
        "SmolLM2-135M-Instruct, converted once into ALPACA_CACHE_DIR)",
    )
    parser.add_argument(
        "--clients",
        type=_positive_int,
        default=8,
        help="concurrent clients in each phase (default 8)",
    )
    parser.add_argument(
        "--requests-per-client",
        type=_positive_int,
        default=4,
        help="requests each client sends, one after the other (default 4)",
    )
    parser.add_argument(
        "--max-new-tokens",
        type=_positive_int,
        default=128,
        help="max_new_tokens of every request; greedy decoding (default 128)",
    )
    parser.add_argument(
        "--rounds",
        type=_positive_int,
        default=2,
        help="times each phase runs, alternating engine, http (default 2)",
    )
    parser.add_argument(
        "--instructions",
        type=Path,
        help='JSON-lines file of {"instruction": ...} objects to use as '
        "prompts (default: 16 built-in instructions)",
    )
    parser.add_argument(
        "--kv-cache-gib",
        type=_positive_float,
        default=1.0,
        help="KV cache size on CPU, in GiB (default 1)",
    )
    parser.add_argument(
        "--json", type=Path, metavar="PATH", help="also write the figures to this JSON file"
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.model is not None and not (args.model / "config.json").is_file():
        print(f"alpaca-bench: error: {args.model} has no config.json", file=sys.stderr)
        return 2
    if args.instructions is not None and not args.instructions.is_file():
        print(f"alpaca-bench: error: no such file: {args.instructions}", file=sys.stderr)
        return 2
    workload = Workload(
        args.clients,
        args.requests_per_client,
        args.max_new_tokens,
        load_instructions(args.instructions),
    )
    from pydantic import ValidationError

    try:
        settings = make_settings(args)
    except ValidationError as err:
        problems = "; ".join(e["msg"] for e in err.errors())
        print(f"alpaca-bench: error: invalid settings: {problems}", file=sys.stderr)
        return 2
    # Fail now, not after loading the model, if the server or the HTTP stack cannot be imported.
    import aiohttp  # noqa: F401
    import uvicorn  # noqa: F401
    import uvloop

    import alpaca_serve.server.app  # noqa: F401

    _import_vllm(settings)
    model_path, engine = load_engine(settings)
    try:
        # uvloop, as `alpaca-serve` runs under (uvicorn picks it when installed).
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            rounds = runner.run(run_rounds(engine, settings, workload, args.rounds))
    finally:
        engine.shutdown()
    figures = summarize(rounds, args, model_path, engine)
    del engine
    gc.collect()  # let vLLM's finalizers run now, not during interpreter teardown
    print(format_table(figures))
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
        print(f"figures written to {args.json}", file=sys.stderr)
    return 0


def _version() -> str:
    from importlib.metadata import version

    return version("alpaca-serve")


if __name__ == "__main__":
    sys.exit(main())
