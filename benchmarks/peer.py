"""This server against vLLM's own OpenAI server, on the same model and engine settings, in one run.

Usage:
    python -m benchmarks.peer                        # the default model; 1, 8 and 16 clients
    python -m benchmarks.peer --model ./alpaca-7b --rounds 5 --json peer.json
    python -m benchmarks.peer --short                # smoke run: 1 and 2 clients, few tokens

Three servers run side by side, each a process of its own on a free port (started one after the
other, then all kept up; only one is sent requests at a time):

- `vllm`: vLLM's OpenAI server (`vllm serve`, through benchmarks/vllm_server.py), no stop strings;
- `ours`: `alpaca-serve`, which matches the Alpaca section headers itself (server/stop_strings.py);
- `ours+filters`: `alpaca-serve` with the built-in content filters on: a blocklist of
  `--blocklist-entries` phrases and the length/repetition guard.

The engine settings are the same for all three: dtype (float32 on CPU), `--max-model-len`,
`--max-num-seqs`, eager mode, the KV cache's size and block size, seed 0, and no core reserved out
of the engine's compute threads (vLLM's own server reserves one by default; alpaca-serve none).
Every request is the same `POST /v1/completions` to each (the Alpaca no-input prompt of one of 16
instructions, greedy, streaming, `min_tokens` = `max_tokens`, so every answer has exactly
`--max-new-tokens` tokens on every server and the header check never ends one early, while it still
holds back text that could begin a header). Per concurrency (`--clients`) and round (`--rounds`),
the servers take turns, in an order that alternates from round to round; each turn is a couple of
uncounted warm-up requests, then N clients each sending `--requests-per-client` requests one after
the other.

Reported per server and concurrency: output tokens/s (completion tokens / the turn's wall time,
the mean over rounds), TTFT p50/p99 (request start to its first text) and inter-token latency
p50/p99 (the gaps between a stream's consecutive text chunks), all rounds' requests pooled; the
same two counting only chunks with visible text (`word`: request start to the first text that is
not white space alone; `gap`: between such chunks), and how many answers began with a chunk of
white space alone. The distinction matters: an Alpaca answer's first token is usually a newline,
which vLLM's server streams as a chunk of its own, while this server strips an answer's leading
white space and holds a trailing one until more text follows (the answer is stripped, streamed
or not), so its first chunk is the first word. Then the ratios to vLLM and the issue's targets:
first visible text (p50) at 1 client within 15 ms of vLLM's, tokens/s at least 0.97 of vLLM's
at 8 and 16 clients, and 0.95 with the filters on.

On a machine with few cores, run it on a quiet machine, and more `--rounds` to even out noise.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import math
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.http_overhead import INSTRUCTIONS, percentile
from benchmarks.options import count_list, default_model, positive_int
from benchmarks.processes import ServerProcess, alpaca_server

SERVERS = ("vllm", "ours", "ours+filters")
SERVED_NAME = "peer-model"
WARMUP_REQUESTS = 2
RESERVED_CORES = 0  # cores kept out of the engines' compute threads, the same for all three
# KV cache block size, the same for all three: alpaca-serve's default on CPU (vLLM's own is 128).
BLOCK_SIZE = 32
TARGETS = {
    "ttft_p50_gap_ms_at_1": 15.0,  # ours - vllm, at 1 client
    "tokens_per_s_ratio": 0.97,  # ours / vllm, at 8 and 16 clients
    "tokens_per_s_ratio_filters": 0.95,  # ours+filters / vllm, at 8 and 16 clients
}


@dataclass
class Turn:
    """One server's share of one round at one concurrency."""

    server: str
    clients: int
    round: int
    requests: int = 0
    tokens: int = 0
    wall_s: float = 0.0
    ttft_ms: list[float] = field(default_factory=list)  # to the first text, white space too
    itl_ms: list[float] = field(default_factory=list)  # between text chunks, white space too
    word_ms: list[float] = field(default_factory=list)  # to the first visible (not blank) text
    word_gap_ms: list[float] = field(default_factory=list)  # between chunks with visible text
    blank_first: int = 0  # requests whose first text was white space only
    errors: list[str] = field(default_factory=list)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.wall_s if self.wall_s else 0.0


# --- the servers ----------------------------------------------------------------------------


def engine_flags(args) -> list[str]:
    """`vllm serve` flags equal to the settings given to alpaca-serve in `alpaca_env`."""
    return [
        *("--dtype", "float32", "--max-model-len", str(args.max_model_len)),
        *("--max-num-seqs", str(args.max_num_seqs), "--enforce-eager", "--seed", "0"),
        *("--block-size", str(BLOCK_SIZE)),
        *("--served-model-name", SERVED_NAME, "--host", "127.0.0.1", "--port", "{port}"),
        "--disable-uvicorn-access-log",
    ]


def alpaca_env(args) -> dict[str, str]:
    limit = new_tokens_limit(args.max_new_tokens, args.max_model_len)
    return {
        "ALPACA_MODEL_NAME": SERVED_NAME,
        "ALPACA_DTYPE": "float32",
        "ALPACA_MAX_MODEL_LEN": str(args.max_model_len),
        "ALPACA_MAX_NUM_SEQS": str(args.max_num_seqs),
        "ALPACA_ENFORCE_EAGER": "true",
        "ALPACA_CPU_RESERVED_CORES": str(RESERVED_CORES),
        "ALPACA_KV_BLOCK_SIZE": str(BLOCK_SIZE),
        # Room for the answers asked for, within the context (and the default answer within it).
        "ALPACA_MAX_NEW_TOKENS_LIMIT": str(limit),
        "ALPACA_DEFAULT_MAX_NEW_TOKENS": str(min(256, limit)),
        # Admission never queues a client of the benchmark.
        "ALPACA_MAX_CONCURRENT": str(max(args.clients) + WARMUP_REQUESTS),
        "ALPACA_LOG_LEVEL": "warning",
    }


def new_tokens_limit(max_new_tokens: int, max_model_len: int) -> int:
    """A max_new_tokens_limit that allows `max_new_tokens` and leaves room for a prompt."""
    return max(max_new_tokens, min(1024, max_model_len // 2))


def write_blocklist(path: Path, entries: int) -> Path:
    """`entries` phrases no answer contains, in the blocklist format (half plain, half
    categorised), so every check runs to the end of the list."""
    lines = [
        f"bench-category-{i % 7}: zqx phrase {i:04d} vrk" if i % 2 else f"zqx blocked {i:04d} vrk"
        for i in range(entries)
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def start_servers(args, model: Path, workdir: Path) -> dict[str, ServerProcess]:
    kv = f"{args.kv_cache_gib:g}"
    filters = json.dumps([{"factory": "alpaca_serve.server.filters:length_repetition_guard"}])
    blocklist = write_blocklist(workdir / "blocklist.txt", args.blocklist_entries)
    return {
        "vllm": ServerProcess(
            [sys.executable, "-m", "benchmarks.vllm_server", str(model), *engine_flags(args)],
            workdir / "vllm",
            {
                "VLLM_TARGET_DEVICE": "cpu",
                "VLLM_CPU_KVCACHE_SPACE": kv,
                # vLLM's own default reserves a core for its API server; alpaca-serve's engine
                # gets every core (ALPACA_CPU_RESERVED_CORES, set alike in alpaca_env).
                "VLLM_CPU_NUM_OF_RESERVED_CPU": str(RESERVED_CORES),
            },
            "/health",
        ),
        "ours": alpaca_server(model, workdir / "ours", alpaca_env(args), args.kv_cache_gib),
        "ours+filters": alpaca_server(
            model,
            workdir / "ours-filters",
            {**alpaca_env(args), "ALPACA_BLOCKLIST": str(blocklist), "ALPACA_FILTERS": filters},
            args.kv_cache_gib,
        ),
    }


# --- the requests ---------------------------------------------------------------------------


async def complete(session, url: str, prompt: str, tokens: int, turn: Turn) -> None:
    """One streamed completion of exactly `tokens` tokens, its figures added to `turn`."""
    body = {
        "model": SERVED_NAME,
        "prompt": prompt,
        "max_tokens": tokens,
        "min_tokens": tokens,
        "temperature": 0.0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    started = time.perf_counter()
    chunk_times: list[float] = []
    visible_times: list[float] = []
    completion_tokens = 0
    async with session.post(f"{url}/v1/completions", json=body) as response:
        if response.status != 200:
            turn.errors.append(f"{response.status} {(await response.text())[:200]}")
            return
        async for raw in response.content:
            line = raw.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[len("data: ") :])
            if "error" in event:
                turn.errors.append(str(event["error"])[:200])
            text = "".join(choice.get("text") or "" for choice in event.get("choices", []))
            if text:
                now = time.perf_counter()
                chunk_times.append(now)
                if not text.isspace():
                    visible_times.append(now)
            if event.get("usage"):
                completion_tokens = event["usage"]["completion_tokens"]
    turn.requests += 1
    turn.tokens += completion_tokens
    if chunk_times:
        turn.ttft_ms.append((chunk_times[0] - started) * 1000)
        turn.itl_ms.extend((b - a) * 1000 for a, b in itertools.pairwise(chunk_times))
        # The first chunk was blank unless it is also the first visible one.
        turn.blank_first += visible_times[:1] != chunk_times[:1]
    if visible_times:
        turn.word_ms.append((visible_times[0] - started) * 1000)
        turn.word_gap_ms.extend((b - a) * 1000 for a, b in itertools.pairwise(visible_times))


async def run_turn(session, server: str, url: str, clients: int, round_no: int, args) -> Turn:
    from alpaca_serve.core.prompts import format_prompt

    def prompt(k: int) -> str:
        return format_prompt(INSTRUCTIONS[k % len(INSTRUCTIONS)])

    warm = Turn(server, clients, round_no)
    await asyncio.gather(
        *(complete(session, url, prompt(k), args.max_new_tokens, warm) for k in range(2))
    )
    turn = Turn(server, clients, round_no, errors=warm.errors)

    async def client(c: int) -> None:
        for k in range(args.requests_per_client):
            await complete(
                session, url, prompt(c * args.requests_per_client + k), args.max_new_tokens, turn
            )

    started = time.perf_counter()
    await asyncio.gather(*(client(c) for c in range(clients)))
    turn.wall_s = time.perf_counter() - started
    return turn


async def measure(args, servers: dict[str, ServerProcess]) -> list[Turn]:
    import aiohttp

    connector = aiohttp.TCPConnector(limit=max(args.clients) + WARMUP_REQUESTS + 4)
    timeout = aiohttp.ClientTimeout(total=args.request_timeout)
    turns: list[Turn] = []
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        for name, server in servers.items():
            print(f"waiting for {name} ...", file=sys.stderr, flush=True)
            await server.wait_until_ready(session, args.start_timeout)
        for clients in args.clients:
            for round_no in range(1, args.rounds + 1):
                order = SERVERS if round_no % 2 else SERVERS[::-1]
                for name in order:
                    turn = await run_turn(session, name, servers[name].url, clients, round_no, args)
                    turns.append(turn)
                    print(
                        f"{clients:>3} clients, round {round_no}, {name:<12}: "
                        f"{turn.tokens_per_s:7.1f} tok/s, TTFT p50 "
                        f"{percentile(turn.ttft_ms, 50):6.1f} ms, word p50 "
                        f"{percentile(turn.word_ms, 50):6.1f} ms"
                        + (f", {len(turn.errors)} error(s)" if turn.errors else ""),
                        file=sys.stderr,
                        flush=True,
                    )
    return turns


# --- the figures ----------------------------------------------------------------------------


def summarize(turns: list[Turn]) -> dict:
    """Per concurrency and server: the figures over its rounds; then ratios and targets."""
    figures: dict = {"per_clients": {}, "targets": []}
    for clients in sorted({t.clients for t in turns}):
        row = {}
        for server in SERVERS:
            mine = [t for t in turns if t.clients == clients and t.server == server]
            pooled = {
                name: [x for t in mine for x in getattr(t, name)]
                for name in ("ttft_ms", "itl_ms", "word_ms", "word_gap_ms")
            }
            row[server] = {
                "tokens_per_s": statistics.fmean(t.tokens_per_s for t in mine),
                **{
                    f"{name.removesuffix('_ms')}_p{q}_ms": percentile(values, q)
                    for name, values in pooled.items()
                    for q in (50, 99)
                },
                "requests": sum(t.requests for t in mine),
                "blank_first": sum(t.blank_first for t in mine),
                "tokens": sum(t.tokens for t in mine),
            }
        vllm = row["vllm"]["tokens_per_s"]
        row["ratio_ours"] = row["ours"]["tokens_per_s"] / vllm if vllm else math.nan
        row["ratio_filters"] = row["ours+filters"]["tokens_per_s"] / vllm if vllm else math.nan
        row["ttft_p50_gap_ms"] = row["ours"]["ttft_p50_ms"] - row["vllm"]["ttft_p50_ms"]
        row["word_p50_gap_ms"] = row["ours"]["word_p50_ms"] - row["vllm"]["word_p50_ms"]
        figures["per_clients"][clients] = row
    rows = figures["per_clients"]
    if 1 in rows:
        # Judged on the first visible text: this server strips the answer's leading white space
        # (vLLM's server sends it as a chunk of its own), so its first text is a word.
        gap = rows[1]["word_p50_gap_ms"]
        limit = TARGETS["ttft_p50_gap_ms_at_1"]
        figures["targets"].append(
            (
                f"TTFT p50 (first visible text) at 1 client within {limit:g} ms of vLLM's",
                f"{gap:+.1f} ms",
                gap <= limit,
            )
        )
    for clients in (8, 16):
        if clients in rows:
            for key, label in (("ratio_ours", "ours"), ("ratio_filters", "ours+filters")):
                limit = TARGETS["tokens_per_s_ratio" + ("_filters" if "filters" in key else "")]
                value = rows[clients][key]
                figures["targets"].append(
                    (
                        f"tokens/s of {label} at {clients} clients at least {limit:g} of vLLM's",
                        f"{value:.3f}",
                        value >= limit,
                    )
                )
    return figures


def format_report(figures: dict, args, model: Path) -> str:
    lines = [
        f"model {model}: {args.requests_per_client} requests per client x {args.max_new_tokens} "
        f"tokens (min_tokens = max_tokens), greedy, streaming /v1/completions, "
        f"{args.rounds} round(s); ours+filters: {args.blocklist_entries}-entry blocklist + "
        "length/repetition guard",
        "",
        "TTFT and ITL count every text chunk; `word` and `gap` only chunks with visible text (not",
        "white space alone); `blank 1st`: requests whose first chunk was white space only.",
        "",
        f"{'':<21} {'':>7} {'':>6} {'TTFT':>15} {'word':>15} {'ITL':>15} {'gap':>15}",
        f"{'clients':>7} {'server':<13} {'tok/s':>7} {'ratio':>6} "
        + " ".join(f"{'p50':>7} {'p99':>7}" for _ in range(4))
        + f" {'blank 1st':>9}   (ms)",
    ]
    for clients, row in figures["per_clients"].items():
        for server in SERVERS:
            f = row[server]
            ratio = {"vllm": 1.0, "ours": row["ratio_ours"], "ours+filters": row["ratio_filters"]}
            lines.append(
                f"{clients:>7} {server:<13} {f['tokens_per_s']:>7.1f} {ratio[server]:>6.3f} "
                + " ".join(
                    f"{f[f'{name}_p50_ms']:>7.1f} {f[f'{name}_p99_ms']:>7.1f}"
                    for name in ("ttft", "word", "itl", "word_gap")
                )
                + f" {f['blank_first']:>4}/{f['requests']:<4}"
            )
    lines += ["", "targets:"]
    for label, value, met in figures["targets"]:
        lines.append(f"  {'met ' if met else 'MISS'}  {label}: {value}")
    return "\n".join(lines)


# --- the command ----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.peer",
        description="alpaca-serve against vLLM's own OpenAI server (and alpaca-serve with its "
        "built-in filters on), same model and engine settings, alternating turns: tokens/s, "
        "TTFT and inter-token latency per concurrency, with ratios to vLLM.",
    )
    parser.add_argument(
        "--model",
        type=Path,
        help="Hugging Face folder of a LLaMA-family model (default: the bundled "
        "SmolLM2-135M-Instruct, converted once into ALPACA_CACHE_DIR)",
    )
    parser.add_argument(
        "--clients",
        type=count_list("1,8,16"),
        default=[1, 8, 16],
        help="concurrencies to measure, comma-separated (default 1,8,16)",
    )
    parser.add_argument(
        "--requests-per-client",
        type=positive_int,
        default=4,
        help="requests each client sends one after the other, per turn (default 4)",
    )
    parser.add_argument(
        "--max-new-tokens",
        type=positive_int,
        default=128,
        help="tokens of every answer (max_tokens = min_tokens; default 128)",
    )
    parser.add_argument(
        "--rounds",
        type=positive_int,
        default=3,
        help="turns of each server per concurrency, in alternating order (default 3)",
    )
    parser.add_argument(
        "--max-model-len", type=positive_int, default=2048, help="context length (default 2048)"
    )
    parser.add_argument(
        "--max-num-seqs",
        type=positive_int,
        default=64,
        help="requests the engines batch together (default 64)",
    )
    parser.add_argument(
        "--kv-cache-gib", type=float, default=1.0, help="KV cache on CPU, in GiB (default 1)"
    )
    parser.add_argument(
        "--blocklist-entries",
        type=positive_int,
        default=1000,
        help="phrases in the filtered server's blocklist (default 1000)",
    )
    parser.add_argument(
        "--short",
        action="store_true",
        help="a smoke run: clients 1,2, one round, one request of 8 tokens per client",
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
        help="where the server logs, data and blocklist go (default: a temporary folder, "
        "removed afterwards)",
    )
    parser.add_argument(
        "--json", type=Path, metavar="PATH", help="also write the figures to this JSON file"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.short:
        args.clients, args.rounds, args.requests_per_client, args.max_new_tokens = [1, 2], 1, 1, 8
    if args.model is not None and not (args.model / "config.json").is_file():
        parser.error(f"--model {args.model} has no config.json")
    if args.max_new_tokens >= args.max_model_len:
        parser.error(f"--max-new-tokens {args.max_new_tokens} leaves no room for a prompt")
    import aiohttp  # noqa: F401  (fail now, not after loading three servers)

    model = args.model or default_model()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="alpaca-peer-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    servers = start_servers(args, model, workdir)
    try:
        turns = asyncio.run(measure(args, servers))
    finally:
        for server in servers.values():
            server.stop()
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    figures = summarize(turns)
    print(format_report(figures, args, model))
    if args.json is not None:
        body = {
            "model": str(model),
            "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "per_clients": figures["per_clients"],
            "targets": [{"target": t, "value": v, "met": m} for t, v, m in figures["targets"]],
            "turns": [{**t.__dict__, "tokens_per_s": t.tokens_per_s} for t in turns],
        }
        args.json.write_text(json.dumps(body, indent=2) + "\n")
    errors = [e for t in turns for e in t.errors]
    if errors:
        print(f"peer: {len(errors)} request(s) failed, first: {errors[0]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
