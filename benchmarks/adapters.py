"""What serving LoRA adapters costs: output tokens/s with and without them, and the pause a live
adapter load causes to streams already running.

Usage:
    python -m benchmarks.adapters                         # the default model; trains its adapter
    python -m benchmarks.adapters --adapter runs/my-lora  # alpaca-train --lora --no-merge output
    python -m benchmarks.adapters --model ./tiny --short  # smoke run: few tokens, 1 and 2 clients

What runs, in order (servers are `alpaca-serve` processes started here one after the other, each on
a free port with its own data folder; the same engine settings but for the adapters):

1. The adapter: `alpaca-train --lora --no-merge` with rank 8 on q_proj and v_proj, `--train-steps`
   steps on the shipped sample data (training/sample_data), unless `--adapter` names one. The mix's
   second adapter is a copy under another name: vLLM loads it as a LoRA of its own, which is what
   costs (the values of the weights do not).
2. Server A, no adapters configured (vLLM without LoRA): case (a), requests on the base.
3. Server B, ALPACA_ADAPTERS_DIR holding the two adapters (vLLM with LoRA): cases (b) requests on
   the base, (c) requests on the adapter, (d) requests cycling base, adapter, second adapter.
   Each case at each `--clients` count: N clients, each streaming `--requests-per-client` requests
   one after the other (greedy, `min_tokens` = `max_new_tokens`, so every answer has the same
   length); output tokens/s = completion tokens / the case's wall time, and its ratio to (a) at
   the same count. A couple of uncounted requests on every model warm each server up first.
4. Live load, on server B, `--load-trials` times: `--streams` streams on the base run twice. In
   the second run, once every stream has its first token, a new copy of the adapter is copied
   into the adapters folder and `POST /admin/adapters/reload` loads it (the watcher's own poll is
   set to an hour, so only the reload does). Printed per trial: how long the copy and the reload
   took, the longest gap between two tokens of any stream that overlaps them, and the longest
   gap of the whole run with the load and of the run without (the machine's own noise).

On a machine with few cores the engine, the HTTP process and these clients share the CPUs: run it
on a quiet machine, and read single figures as ±10-15%. `--short` is a smoke run (any model; the
tiny test model's figures mean nothing).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.options import count_list, default_model, positive_int
from benchmarks.processes import ServerProcess, alpaca_server
from benchmarks.sse import sse_events

ROOT = Path(__file__).resolve().parents[1]
INSTRUCTIONS = [
    "Give three tips for staying healthy.",
    "Explain why the sky is blue.",
    "Write a short poem about the sea.",
    "Describe the process of photosynthesis in simple terms.",
    "List five countries in South America and their capitals.",
    "How do I make a cup of tea?",
    "What is the difference between weather and climate?",
    "Describe a sunset over the mountains.",
]
ADAPTER, SECOND_ADAPTER, LIVE_ADAPTER = "bench-lora", "bench-lora-2", "bench-lora-live-{}"
CASES = {
    "a": "base, adapters disabled",
    "b": "base, adapter support enabled",
    "c": "requests on the adapter",
    "d": "mix: base + two adapters",
}
WARMUP_REQUESTS = 2  # per model, uncounted
PAUSE_LIMIT_S = 1.0  # a live load must not stop other streams for longer than this


@dataclass
class CaseResult:
    case: str
    clients: int
    requests: int = 0
    tokens: int = 0
    wall_s: float = 0.0
    errors: list[str] = field(default_factory=list)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.wall_s if self.wall_s else 0.0


@dataclass
class Stream:
    """One streamed answer: when each piece of text arrived (perf_counter seconds)."""

    token_times: list[float] = field(default_factory=list)
    tokens: int = 0
    error: str | None = None

    def gaps(self) -> list[tuple[float, float]]:
        """(start, length) of every gap between two consecutive pieces."""
        times = self.token_times
        return [(a, b - a) for a, b in zip(times, times[1:], strict=False)]


@dataclass
class LiveLoad:
    """One trial: the same base streams run without, then with, an adapter loaded live."""

    longest_gap_without_s: float
    longest_gap_with_s: float
    longest_gap_around_load_s: float  # the longest gap overlapping the copy + reload
    copy_s: float
    reload_s: float
    streams_outlived_load: bool  # every stream was still running when the reload returned


# --- the server processes -------------------------------------------------------------------


# --- the requests ---------------------------------------------------------------------------


async def stream_one(
    session,
    url: str,
    instruction: str,
    model: str | None,
    tokens: int,
    stream: Stream | None = None,
) -> Stream:
    """Stream one greedy answer of exactly `tokens` tokens (unless the context ends first) into
    `stream` (a new one by default), which the caller may watch as it fills."""
    body = {
        "instruction": instruction,
        "max_new_tokens": tokens,
        "min_tokens": tokens,
        "temperature": 0.0,
        "stream": True,
    }
    if model is not None:
        body["model"] = model
    stream = stream if stream is not None else Stream()
    async with session.post(f"{url}/generate", json=body) as response:
        if response.status != 200:
            stream.error = f"{response.status} {(await response.text())[:200]}"
            return stream
        async for event in sse_events(response):
            if "error" in event:
                stream.error = str(event["error"])
            if event.get("text"):
                stream.token_times.append(time.perf_counter())
            if "usage" in event:
                stream.tokens = event["usage"]["completion_tokens"]
    return stream


async def run_case(
    session, url: str, case: str, models: list[str | None], clients: int, args
) -> CaseResult:
    """`clients` concurrent clients, each streaming requests one after the other; request k of
    client c asks model `models[(c + k) % len(models)]`."""
    result = CaseResult(case, clients)

    async def client(c: int) -> None:
        for k in range(args.requests_per_client):
            model = models[(c + k) % len(models)]
            instruction = INSTRUCTIONS[(c * args.requests_per_client + k) % len(INSTRUCTIONS)]
            stream = await stream_one(session, url, instruction, model, args.max_new_tokens)
            result.requests += 1
            result.tokens += stream.tokens
            if stream.error:
                result.errors.append(stream.error)

    started = time.perf_counter()
    await asyncio.gather(*(client(c) for c in range(clients)))
    result.wall_s = time.perf_counter() - started
    return result


async def warm_up(session, url: str, models: list[str | None]) -> None:
    for model in models:
        for i in range(WARMUP_REQUESTS):
            stream = await stream_one(session, url, INSTRUCTIONS[i], model, 8)
            if stream.error:
                raise RuntimeError(
                    f"warm-up request on {model or 'the base'} failed: {stream.error}"
                )


async def measure_live_load(
    session, server: ServerProcess, adapters_dir: Path, adapter: Path, args, trial: int
) -> LiveLoad:
    """Base streams without, then with, an adapter (a new copy, named for `trial`) copied in and
    reloaded while they run."""
    name = LIVE_ADAPTER.format(trial)

    async def base_streams(load: bool) -> tuple[list[Stream], tuple[float, float, float]]:
        streams = [Stream() for _ in range(args.streams)]
        tasks = [
            asyncio.create_task(
                stream_one(
                    session, server.url, INSTRUCTIONS[i], None, args.stream_tokens, streams[i]
                )
            )
            for i in range(args.streams)
        ]
        window = (0.0, 0.0, 0.0)
        if load:
            # Once every stream is decoding: the load then falls on running streams.
            while not all(s.token_times or s.error for s in streams):
                await asyncio.sleep(0.005)
            window = await load_adapter()
        await asyncio.gather(*tasks)
        failed = [s.error for s in streams if s.error]
        if failed:
            raise RuntimeError(f"a stream on the base failed: {failed[0]}")
        return streams, window

    async def load_adapter() -> tuple[float, float, float]:
        started = time.perf_counter()
        await asyncio.to_thread(shutil.copytree, adapter, adapters_dir / name)
        copied = time.perf_counter()
        async with session.post(f"{server.url}/admin/adapters/reload") as response:
            body = await response.text()
        reloaded = time.perf_counter()
        if response.status != 200:
            raise RuntimeError(f"the reload answered {response.status}: {body[:300]}")
        if name not in [a["name"] for a in json.loads(body)["adapters"]]:
            raise RuntimeError(f"the reload did not load {name}: {body[:500]}")
        return started, copied, reloaded

    without, _ = await base_streams(load=False)
    loaded, (started, copied, reloaded) = await base_streams(load=True)
    around = [
        length
        for stream in loaded
        for start, length in stream.gaps()
        if start <= reloaded and start + length >= started
    ]
    return LiveLoad(
        longest_gap_without_s=max((g for s in without for _, g in s.gaps()), default=0.0),
        longest_gap_with_s=max((g for s in loaded for _, g in s.gaps()), default=0.0),
        longest_gap_around_load_s=max(around, default=0.0),
        copy_s=copied - started,
        reload_s=reloaded - copied,
        streams_outlived_load=all(s.token_times[-1] > reloaded for s in loaded),
    )


# --- the run --------------------------------------------------------------------------------


async def measure(args, model: Path, adapter: Path, workdir: Path) -> dict:
    """Every case on server A then server B, then the live load on B; the figures."""
    import aiohttp

    results: list[CaseResult] = []
    timeout = aiohttp.ClientTimeout(total=args.request_timeout)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        # (a): the base on a server without adapters.
        server = alpaca_server(model, workdir / "server-a", {}, args.kv_cache_gib)
        try:
            await server.wait_until_ready(session, args.start_timeout)
            await warm_up(session, server.url, [None])
            for clients in args.clients:
                results.append(await run_case(session, server.url, "a", [None], clients, args))
                _progress(results[-1])
        finally:
            server.stop()

        # (b), (c), (d) and the live load: one server with LoRA enabled and two adapters.
        adapters_dir = workdir / "adapters"
        adapters_dir.mkdir()
        shutil.copytree(adapter, adapters_dir / ADAPTER)
        shutil.copytree(adapter, adapters_dir / SECOND_ADAPTER)
        env = {"ALPACA_ADAPTERS_DIR": str(adapters_dir), "ALPACA_ADAPTERS_POLL_S": "3600"}
        server = alpaca_server(model, workdir / "server-b", env, args.kv_cache_gib)
        try:
            await server.wait_until_ready(session, args.start_timeout)
            await warm_up(session, server.url, [None, ADAPTER, SECOND_ADAPTER])
            cases = {"b": [None], "c": [ADAPTER], "d": [None, ADAPTER, SECOND_ADAPTER]}
            for case, models in cases.items():
                for clients in args.clients:
                    results.append(await run_case(session, server.url, case, models, clients, args))
                    _progress(results[-1])
            live = []
            for trial in range(1, args.load_trials + 1):
                live.append(
                    await measure_live_load(session, server, adapters_dir, adapter, args, trial)
                )
                _progress_live(live[-1])
        finally:
            server.stop()
    return {"cases": results, "live": live}


def _progress(result: CaseResult) -> None:
    print(
        f"  ({result.case}) {result.clients} client(s): {result.tokens_per_s:.1f} tok/s",
        file=sys.stderr,
        flush=True,
    )


def _progress_live(trial: LiveLoad) -> None:
    print(
        f"  live load: reload {trial.reload_s:.2f} s, longest gap around it "
        f"{trial.longest_gap_around_load_s * 1000:.0f} ms",
        file=sys.stderr,
        flush=True,
    )


def format_report(figures: dict, args, model: Path, adapter_note: str) -> str:
    """The printed table: tokens/s per case and client count with the ratio to (a), then the
    live load's gaps."""
    cases: list[CaseResult] = figures["cases"]
    live: list[LiveLoad] = figures["live"]
    baseline = {r.clients: r.tokens_per_s for r in cases if r.case == "a"}
    lines = [
        f"model {model.name}; adapter: {adapter_note}",
        f"{args.requests_per_client} request(s) per client, {args.max_new_tokens} new tokens "
        "each (min_tokens = max_new_tokens), greedy, streamed",
        f"{'case':<38} {'clients':>7} {'tok/s':>8} {'vs (a)':>7} {'requests':>8} {'errors':>6}",
    ]
    for r in cases:
        ratio = r.tokens_per_s / baseline[r.clients] if baseline.get(r.clients) else float("nan")
        lines.append(
            f"({r.case}) {CASES[r.case]:<34} {r.clients:>7} {r.tokens_per_s:>8.1f} "
            f"{ratio:>7.3f} {r.requests:>8} {len(r.errors):>6}"
        )
    lines += [
        "",
        f"live adapter load (copy + POST /admin/adapters/reload) while {args.streams} stream(s) "
        f"of {args.stream_tokens} tokens run on the base; longest inter-token gap of any stream:",
        f"{'trial':>5} {'copy s':>7} {'reload s':>8} {'around the load':>16} "
        f"{'whole run, load':>16} {'whole run, no load':>18}",
    ]
    for n, trial in enumerate(live, 1):
        lines.append(
            f"{n:>5} {trial.copy_s:>7.2f} {trial.reload_s:>8.2f} "
            f"{trial.longest_gap_around_load_s * 1000:>13.0f} ms "
            f"{trial.longest_gap_with_s * 1000:>13.0f} ms "
            f"{trial.longest_gap_without_s * 1000:>15.0f} ms"
        )
    worst = max(trial.longest_gap_around_load_s for trial in live)
    verdict = "MORE" if worst > PAUSE_LIMIT_S else "less"
    lines.append(
        f"longest pause of running streams around a live load: {worst * 1000:.0f} ms "
        f"({verdict} than {PAUSE_LIMIT_S:g} s)"
    )
    if not all(trial.streams_outlived_load for trial in live):
        lines.append("(some streams ended before the reload did: use more --stream-tokens)")
    return "\n".join(lines)


# --- the adapter and the model --------------------------------------------------------------


def train_adapter(model: Path, out: Path, steps: int) -> Path:
    """An adapter from `alpaca-train --lora --no-merge`: rank 8 on q_proj and v_proj, `steps`
    steps on the shipped sample data; its output folder."""
    from alpaca_serve.evaluation.datasets import ALPACA_SAMPLE

    command = [
        *(sys.executable, "-m", "alpaca_serve.training.cli", "--model", str(model)),
        *("--data", str(ALPACA_SAMPLE), "--out", str(out), "--preset", "tiny"),
        *("--lora", "--no-merge", "--lora-r", "8", "--lora-target-modules", "q_proj", "v_proj"),
        *("--max-steps", str(steps), "--logging-steps", "1"),
    ]
    print(f"training the adapter ({steps} step(s)) into {out} ...", file=sys.stderr, flush=True)
    started = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"alpaca-train failed ({result.returncode}):\n{result.stderr[-3000:]}")
    print(f"trained in {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    return out


# --- the command ----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.adapters",
        description="Measure what serving LoRA adapters costs: output tokens/s of the base "
        "without and with adapter support, on an adapter and on a mix, and the longest pause of "
        "running streams while an adapter is loaded live.",
    )
    parser.add_argument(
        "--model",
        type=Path,
        help="Hugging Face folder of a LLaMA-family model (default: the bundled "
        "SmolLM2-135M-Instruct, converted once into ALPACA_CACHE_DIR)",
    )
    parser.add_argument(
        "--adapter",
        type=Path,
        help="an adapter of that model (alpaca-train --lora --no-merge output, or a PEFT "
        "folder); default: trained here with rank 8 on q_proj and v_proj",
    )
    parser.add_argument(
        "--train-steps",
        type=positive_int,
        default=4,
        help="optimizer steps when training the adapter here (default 4)",
    )
    parser.add_argument(
        "--clients",
        type=count_list("1,8"),
        default=[1, 8],
        help="concurrent client counts each case runs at, comma-separated (default 1,8)",
    )
    parser.add_argument(
        "--requests-per-client",
        type=positive_int,
        default=4,
        help="requests each client streams, one after the other (default 4)",
    )
    parser.add_argument(
        "--max-new-tokens",
        type=positive_int,
        default=64,
        help="tokens of every answer (min_tokens too); greedy (default 64)",
    )
    parser.add_argument(
        "--streams",
        type=positive_int,
        default=4,
        help="base streams running while an adapter is loaded live (default 4)",
    )
    parser.add_argument(
        "--stream-tokens",
        type=positive_int,
        default=192,
        help="tokens of each of those streams: long enough to outlast the load (default 192)",
    )
    parser.add_argument(
        "--load-trials",
        type=positive_int,
        default=3,
        help="live loads measured, each with a run without a load before it (default 3)",
    )
    parser.add_argument(
        "--short",
        action="store_true",
        help="a smoke run: clients 1,2, one request of 8 tokens each, one live load under "
        "2 streams of 32 tokens, 1 training step",
    )
    parser.add_argument(
        "--kv-cache-gib", type=float, default=1.0, help="KV cache on CPU, in GiB (default 1)"
    )
    parser.add_argument(
        "--start-timeout",
        type=float,
        default=900.0,
        help="seconds a server may take to load (default 900)",
    )
    parser.add_argument(
        "--request-timeout",
        type=float,
        default=900.0,
        help="seconds one request may take (default 900)",
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        help="where the adapters, server logs and data go (default: a temporary folder, removed "
        "afterwards)",
    )
    parser.add_argument(
        "--json", type=Path, metavar="PATH", help="also write the figures to this JSON file"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.short:
        args.clients, args.requests_per_client, args.max_new_tokens = [1, 2], 1, 8
        args.streams, args.stream_tokens, args.train_steps, args.load_trials = 2, 32, 1, 1
    if args.model is not None and not (args.model / "config.json").is_file():
        parser.error(f"--model {args.model} has no config.json")
    from alpaca_serve.server.adapters import (
        find_weights_dir,  # the server's own test of an adapter folder
    )

    if args.adapter is not None and find_weights_dir(args.adapter) is None:
        parser.error(
            f"--adapter {args.adapter} holds no adapter_config.json (nor does its adapter/ folder)"
        )
    import aiohttp  # noqa: F401  (fail now, not after training, when the client is missing)

    model = args.model or default_model()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="alpaca-adapter-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        if args.adapter is not None:
            adapter, note = args.adapter, f"{args.adapter}"
        else:
            adapter = train_adapter(model, workdir / "trained", args.train_steps)
            note = f"rank 8 on q_proj, v_proj, {args.train_steps} step(s) of alpaca-train"
        figures = asyncio.run(measure(args, model, adapter, workdir))
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    print(format_report(figures, args, model, note))
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                {
                    "model": str(model),
                    "cases": [
                        {**r.__dict__, "tokens_per_s": r.tokens_per_s} for r in figures["cases"]
                    ],
                    "live_load": [trial.__dict__ for trial in figures["live"]],
                },
                indent=2,
            )
            + "\n"
        )
    errors = [e for r in figures["cases"] for e in r.errors]
    if errors:
        print(f"adapters: {len(errors)} request(s) failed, first: {errors[0]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
