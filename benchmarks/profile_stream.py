"""Where a streamed request's time goes in the server's own process, under concurrent clients.

Usage:
    python -m benchmarks.profile_stream                  # 8 clients, filters on, 30 s of samples
    python -m benchmarks.profile_stream --clients 16 --no-filters --seconds 30

It starts `alpaca-serve` as the peer benchmark does (the same engine settings; with `--filters`,
the same 1000-entry blocklist and repetition guard), sends the peer benchmark's streaming
`/v1/completions` requests from N clients, and samples the server's HTTP process (not the engine
core, a process of its own) with py-spy while they run. Each sample of the event loop's thread is
put in the first group, from the innermost frame outwards, whose code it is in, and the report
gives each group's share of the samples:

- waiting: the event loop idle in its selector, waiting for the engine's next output or a client
  (with uvloop, any sample inside the loop's C code, which is mostly that);
- vLLM output processing: the engine client turning engine outputs into text (detokenizing,
  logprobs, request state), in this process;
- vLLM engine client: receiving outputs from the engine core (ZeroMQ, msgspec decoding);
- stop strings, content filters: this server's matching of the template headers and its filters;
- alpaca pipeline: the rest of this server's per-piece work (server/pipeline.py and friends);
- OpenAI responses: building and encoding the SSE events (server/routes, JSON, pydantic);
- HTTP: uvicorn, Starlette and the h11/httptools protocol code;
- asyncio: the event loop's own bookkeeping; other: anything else.

py-spy is not a dependency of the project: `pip install py-spy`, or name it with `--py-spy`.
Sampling another process needs ptrace rights (root, or CAP_SYS_PTRACE in a container).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from benchmarks.options import default_model, positive_int

# (group, substrings of a frame's "function (file:line)" text), tried in order on each frame
# from the innermost outwards; the first frame that matches any group decides.
GROUPS: list[tuple[str, tuple[str, ...]]] = [
    ("waiting", ("select (selectors.py", "poll (selectors.py")),
    ("stop strings", ("server/stop_strings.py",)),
    ("content filters", ("server/filters.py",)),
    ("vLLM output processing", ("vllm/v1/engine/output_processor.py", "detokenizer", "logprobs")),
    ("vLLM engine client", ("vllm/v1/engine/core_client.py", "zmq/", "msgspec")),
    ("OpenAI responses", ("server/routes/", "server/streaming.py", "json/", "pydantic")),
    ("alpaca pipeline", ("server/",)),
    ("vLLM engine client", ("vllm/v1/engine/async_llm.py", "vllm/")),
    ("HTTP", ("uvicorn/", "starlette/", "h11/", "httptools", "fastapi/", "sse_starlette/")),
    ("asyncio", ("asyncio/",)),
]
GROUP_ORDER = [
    "waiting",
    "vLLM output processing",
    "vLLM engine client",
    "stop strings",
    "content filters",
    "alpaca pipeline",
    "OpenAI responses",
    "HTTP",
    "asyncio",
    "other",
]


# The event loop's own run call as the innermost Python frame: the loop is in its C code
# (uvloop, which uvicorn uses when installed): waiting in its selector, or its own bookkeeping.
LOOP_RUN = ("Runner.run (asyncio/runners.py", "run_until_complete (asyncio/base_events.py")


def classify(frames: list[str]) -> str:
    """The group of one sample, its frames listed from the outermost to the innermost."""
    if frames and any(needle in frames[-1] for needle in LOOP_RUN):
        return "waiting"
    for frame in reversed(frames):
        for group, needles in GROUPS:
            if any(needle in frame for needle in needles):
                return group
    return "other"


def tally(raw: str, thread: str | None = None) -> Counter[str]:
    """Samples per group from py-spy's raw (collapsed) output: `frame;frame;... count` lines,
    the first frame naming the thread when py-spy ran with --threads. With `thread`, only the
    samples whose first frame contains it count."""
    counts: Counter[str] = Counter()
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        if thread is not None and thread not in frames[0]:
            continue
        counts[classify(frames)] += int(count)
    return counts


def format_tally(counts: Counter[str]) -> str:
    total = sum(counts.values()) or 1
    busy = total - counts["waiting"]
    lines = [f"{'group':<24} {'share':>7} {'of busy':>8}"]
    for group in GROUP_ORDER:
        if counts[group] or group == "waiting":
            of_busy = "" if group == "waiting" else f"{100 * counts[group] / (busy or 1):7.1f}%"
            lines.append(f"{group:<24} {100 * counts[group] / total:6.1f}% {of_busy:>8}")
    lines.append(f"({total} samples of the event loop's thread)")
    return "\n".join(lines)


def main_thread_name(raw: str) -> str | None:
    """py-spy names each thread `thread (0x...)` or, for the main one, with `MainThread`."""
    for line in raw.splitlines():
        first = line.split(";", 1)[0]
        if "MainThread" in first:
            return "MainThread"
    return None


async def profile(args, model: Path, workdir: Path) -> tuple[str, float]:
    import aiohttp

    from benchmarks.peer import Turn, alpaca_env, run_turn, write_blocklist
    from benchmarks.processes import alpaca_server

    peer_args = argparse.Namespace(
        max_new_tokens=args.max_new_tokens,
        max_model_len=2048,
        max_num_seqs=64,
        clients=[args.clients],
        requests_per_client=1,
    )
    env = alpaca_env(peer_args)
    if args.filters:
        env["ALPACA_BLOCKLIST"] = str(write_blocklist(workdir / "blocklist.txt", 1000))
        env["ALPACA_FILTERS"] = (
            '[{"factory": "alpaca_serve.server.filters:length_repetition_guard"}]'
        )
    server = alpaca_server(model, workdir / "server", env, 1.0)
    raw_path = workdir / "profile.raw"
    try:
        timeout = aiohttp.ClientTimeout(total=900)
        connector = aiohttp.TCPConnector(limit=args.clients + 4)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            await server.wait_until_ready(session, 900)
            await run_turn(session, "ours", server.url, args.clients, 0, peer_args)  # warm-up
            spy = subprocess.Popen(
                [
                    *(args.py_spy, "record", "--pid", str(server.process.pid)),
                    *("--rate", str(args.rate), "--duration", str(args.seconds)),
                    *("--format", "raw", "--output", str(raw_path)),
                    "--threads",
                    "--idle",
                    "--nonblocking",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            # The load runs until the sampling ends, then is cancelled; its tokens/s are the
            # completed requests' tokens over the sampling time.
            turn = Turn("ours", args.clients, 1)
            load = asyncio.ensure_future(steady_load(session, server.url, turn, args))
            started = time.perf_counter()
            while spy.poll() is None:
                await asyncio.sleep(0.2)
            turn.wall_s = time.perf_counter() - started
            load.cancel()
            await asyncio.gather(load, return_exceptions=True)
    finally:
        server.stop()
    if spy.returncode != 0 or not raw_path.is_file():
        raise RuntimeError(f"py-spy failed ({spy.returncode}): {spy.stderr.read()[-1000:]}")
    return raw_path.read_text(), turn.tokens_per_s


async def steady_load(session, url: str, turn, args) -> None:
    """`args.clients` clients streaming the peer benchmark's requests back to back, until
    cancelled."""
    from alpaca_serve.core.prompts import format_prompt
    from benchmarks.peer import INSTRUCTIONS, complete

    async def client(c: int) -> None:
        for k in itertools.count(c):
            prompt = format_prompt(INSTRUCTIONS[k % len(INSTRUCTIONS)])
            await complete(session, url, prompt, args.max_new_tokens, turn)

    await asyncio.gather(*(client(c) for c in range(args.clients)))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.profile_stream",
        description="Sample the server's HTTP process with py-spy while N clients stream "
        "answers, and report the share of the event loop's time per group of code.",
    )
    parser.add_argument(
        "--clients", type=positive_int, default=8, help="concurrent clients (default 8)"
    )
    parser.add_argument(
        "--max-new-tokens",
        type=positive_int,
        default=64,
        help="tokens of every answer (max_tokens = min_tokens; default 64)",
    )
    parser.add_argument(
        "--filters",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the built-in filters on: a 1000-entry blocklist and the repetition guard "
        "(default on; --no-filters for none)",
    )
    parser.add_argument(
        "--seconds", type=positive_int, default=30, help="how long to sample (default 30)"
    )
    parser.add_argument(
        "--rate", type=positive_int, default=250, help="samples per second (default 250)"
    )
    parser.add_argument(
        "--py-spy",
        default="py-spy",
        help="the py-spy executable (default: py-spy on PATH; pip install py-spy)",
    )
    parser.add_argument(
        "--raw", type=Path, metavar="PATH", help="also keep py-spy's raw samples in this file"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if shutil.which(args.py_spy) is None:
        parser.error(f"py-spy not found ({args.py_spy!r}): pip install py-spy, or pass --py-spy")
    workdir = Path(tempfile.mkdtemp(prefix="alpaca-profile-"))
    try:
        raw, tokens_per_s = asyncio.run(profile(args, default_model(), workdir))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if args.raw is not None:
        args.raw.write_text(raw)
    counts = tally(raw, main_thread_name(raw))
    print(
        f"{args.clients} clients x {args.max_new_tokens}-token streamed /v1/completions, filters "
        f"{'on' if args.filters else 'off'}: {tokens_per_s:.1f} tok/s "
        "(answers completed while sampled)"
    )
    print(format_tally(counts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
