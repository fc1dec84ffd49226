"""Whether vLLM's prefix cache reuses the Alpaca template's fixed preamble on CPU: time to first
token at 8 and 16 clients, with the cache on and off, at the CPU's default block size and at 32.

Usage:
    python -m benchmarks.prefix_cache                  # the default model; 8 and 16 clients
    python -m benchmarks.prefix_cache --short          # smoke run: 2 clients, one round

Every Alpaca prompt with an input begins with the same 33 tokens (the preamble, up to and with
"### Instruction:\\n"; 24 without an input). vLLM caches a prompt's KV blocks by the hash of
every token up to the block's end, so a later request reuses only *full* blocks it shares: on CPU
vLLM's default block size is 128 tokens, so the preamble alone fills none. The CPU attention
backend takes multiples of 32 only (16: "No common block size for 16 (CPU_ATTN:
[MultipleOf(32)])"), so 32 is the one size at which the preamble fills a block (32 of its 33
tokens; none of the 24 of the prompt without an input).

Servers run side by side, each vLLM's own OpenAI server (benchmarks/vllm_server.py; the cache is
the engine's, the same under alpaca-serve) on a free port, only one sent requests at a time:
`128 on` (vLLM's CPU defaults), `128 off` (--no-enable-prefix-caching), `32 on` and `32 off`.
A turn is N clients at once, each sending `--requests-per-client` streamed completions of
`--max-new-tokens` tokens (greedy) one after the other; every request's prompt is a different
Alpaca record with an input (the sample files shipped with the project), never sent twice to a
server, so only the preamble is shared. Per concurrency the servers take turns in an order that
alternates from round to round. Reported: TTFT p50/p90 (request start to its first text), output
tokens/s, and the server's prefix cache hit rate (vLLM's prefix_cache_hits / queries, in tokens).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.http_overhead import percentile
from benchmarks.options import count_list, default_model, positive_int
from benchmarks.peer import SERVED_NAME, Turn, complete
from benchmarks.processes import ServerProcess

SAMPLES = Path(__file__).resolve().parents[1] / "alpaca_serve" / "training" / "sample_data"
CONFIGS = {  # name: vllm serve flags
    "128 on": [],
    "128 off": ["--no-enable-prefix-caching"],
    "32 on": ["--block-size", "32"],
    "32 off": ["--block-size", "32", "--no-enable-prefix-caching"],
}


def prompts_with_input() -> list[str]:
    """Alpaca prompts of every distinct record with an input in the shipped samples."""
    from alpaca_serve.core.prompts import format_prompt

    seen: set[tuple[str, str]] = set()
    prompts = []
    for name in ("alpaca_data_first200.json", "llamafactory_alpaca_en_demo.json"):
        for record in json.loads((SAMPLES / name).read_text()):
            key = (record["instruction"], record.get("input") or "")
            if key[1].strip() and key not in seen:
                seen.add(key)
                prompts.append(format_prompt(*key))
    return prompts


def start_servers(args, model: Path, workdir: Path) -> dict[str, ServerProcess]:
    common = [
        *("--dtype", "float32", "--max-model-len", "2048", "--enforce-eager", "--seed", "0"),
        *("--served-model-name", SERVED_NAME, "--host", "127.0.0.1", "--port", "{port}"),
        "--disable-uvicorn-access-log",
    ]
    env = {
        "VLLM_TARGET_DEVICE": "cpu",
        "VLLM_CPU_KVCACHE_SPACE": f"{args.kv_cache_gib:g}",
        "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
    }
    return {
        name: ServerProcess(
            [sys.executable, "-m", "benchmarks.vllm_server", str(model), *common, *flags],
            workdir / name.replace(" ", "-"),
            env,
            "/health",
        )
        for name, flags in CONFIGS.items()
        if name in args.configs
    }


async def cache_counts(session, url: str) -> tuple[float, float]:
    """vLLM's prefix cache hits and queries so far, in tokens."""
    async with session.get(f"{url}/metrics") as response:
        text = await response.text()
    counts = []
    for name in ("vllm:prefix_cache_hits_total", "vllm:prefix_cache_queries_total"):
        found = re.findall(rf"^{name}(?:\{{[^}}]*\}})? (\S+)$", text, re.MULTILINE)
        counts.append(sum(float(value) for value in found))
    return counts[0], counts[1]


async def run_turn(session, name, url, clients, round_no, prompts, args) -> tuple[Turn, float]:
    """One turn; returns it and the hit rate of its requests."""
    warm = Turn(name, clients, round_no)
    await complete(session, url, next(prompts), args.max_new_tokens, warm)
    hits, queries = await cache_counts(session, url)
    turn = Turn(name, clients, round_no, errors=warm.errors)
    batches = [[next(prompts) for _ in range(args.requests_per_client)] for _ in range(clients)]

    async def client(mine: list[str]) -> None:
        for prompt in mine:
            await complete(session, url, prompt, args.max_new_tokens, turn)

    started = time.perf_counter()
    await asyncio.gather(*(client(mine) for mine in batches))
    turn.wall_s = time.perf_counter() - started
    hits_after, queries_after = await cache_counts(session, url)
    rate = (hits_after - hits) / (queries_after - queries) if queries_after > queries else 0.0
    return turn, rate


async def measure(args, servers: dict[str, ServerProcess]) -> list[tuple[Turn, float]]:
    import aiohttp

    connector = aiohttp.TCPConnector(limit=max(args.clients) + 4)
    timeout = aiohttp.ClientTimeout(total=args.request_timeout)
    every = prompts_with_input()
    # Each server its own pass through the prompts: no prompt is sent to a server twice.
    prompts = {name: iter(every) for name in servers}
    results = []
    names = list(servers)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        for name, server in servers.items():
            print(f"waiting for {name} ...", file=sys.stderr, flush=True)
            await server.wait_until_ready(session, args.start_timeout)
        for clients in args.clients:
            for round_no in range(1, args.rounds + 1):
                for name in names if round_no % 2 else names[::-1]:
                    turn, rate = await run_turn(
                        session, name, servers[name].url, clients, round_no, prompts[name], args
                    )
                    results.append((turn, rate))
                    print(
                        f"{clients:>3} clients, round {round_no}, {name:<8}: TTFT p50 "
                        f"{percentile(turn.ttft_ms, 50):7.1f} ms, {turn.tokens_per_s:6.1f} tok/s, "
                        f"hits {rate:.0%}"
                        + (f", {len(turn.errors)} error(s)" if turn.errors else ""),
                        file=sys.stderr,
                        flush=True,
                    )
    return results


def format_report(results: list[tuple[Turn, float]], args, model: Path) -> str:
    lines = [
        f"model {model}: {args.requests_per_client} streamed completions per client of "
        f"{args.max_new_tokens} tokens, greedy, every prompt a different Alpaca record with an "
        f"input, {args.rounds} round(s); server = block size and prefix cache",
        "",
        f"{'clients':>7} {'server':<8} {'TTFT p50':>9} {'p90':>8} {'tok/s':>7} {'hit rate':>9}",
    ]
    for clients in args.clients:
        for name in args.configs:
            mine = [(t, r) for t, r in results if t.clients == clients and t.server == name]
            ttft = [x for t, _ in mine for x in t.ttft_ms]
            lines.append(
                f"{clients:>7} {name:<8} {percentile(ttft, 50):>9.1f} {percentile(ttft, 90):>8.1f} "
                f"{statistics.median(t.tokens_per_s for t, _ in mine):>7.1f} "
                f"{statistics.fmean(r for _, r in mine):>9.1%}"
            )
    return "\n".join(lines) + "\n(TTFT in ms, pooled over rounds; tok/s the median turn)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.prefix_cache",
        description="vLLM's prefix cache on the Alpaca preamble: TTFT at several concurrencies, "
        "cache on and off, block sizes 128 and 32.",
    )
    parser.add_argument("--model", type=Path, help="default: the bundled SmolLM2-135M-Instruct")
    parser.add_argument(
        "--configs",
        type=lambda text: [part.strip() for part in text.split(",")],
        default=list(CONFIGS),
        help=f"servers to compare, comma-separated among {', '.join(CONFIGS)} (default all)",
    )
    parser.add_argument(
        "--clients", type=count_list("8,16"), default=[8, 16], help="concurrencies (default 8,16)"
    )
    parser.add_argument("--requests-per-client", type=positive_int, default=2)
    parser.add_argument("--max-new-tokens", type=positive_int, default=16)
    parser.add_argument("--rounds", type=positive_int, default=3)
    parser.add_argument("--kv-cache-gib", type=float, default=1.0)
    parser.add_argument("--short", action="store_true", help="smoke run: 2 clients, one round")
    parser.add_argument("--start-timeout", type=float, default=900.0)
    parser.add_argument("--request-timeout", type=float, default=900.0)
    parser.add_argument("--workdir", type=Path, help="server logs (default: a temporary folder)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    unknown = set(args.configs) - set(CONFIGS)
    if unknown:
        parser.error(f"--configs: unknown {', '.join(sorted(unknown))}")
    if args.short:
        args.clients, args.rounds, args.requests_per_client = [2], 1, 1
    needed = sum(c * args.requests_per_client + 1 for c in args.clients) * args.rounds
    if needed > len(prompts_with_input()):
        parser.error(f"this run needs {needed} distinct prompts; the samples hold fewer")
    import aiohttp  # noqa: F401  (fail now, not after loading the servers)

    model = args.model or default_model()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="alpaca-prefix-bench-"))
    servers = start_servers(args, model, workdir)
    try:
        results = asyncio.run(measure(args, servers))
    finally:
        for server in servers.values():
            server.stop()
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    print(format_report(results, args, model))
    errors = [e for t, _ in results for e in t.errors]
    if errors:
        print(f"prefix_cache: {len(errors)} request(s) failed, first: {errors[0]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
