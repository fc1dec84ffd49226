"""How long `alpaca-serve` takes to start, eager and compiled, and what compiling and preloaded
runtime libraries buy in tokens/s.

Usage:
    python -m benchmarks.engine_start                 # the default model
    python -m benchmarks.engine_start --preload       # also with tcmalloc and Intel's OpenMP
    python -m benchmarks.engine_start --short         # smoke run: few tokens, 1 client

Each variant is `alpaca-serve` started twice with a compile cache folder of its own
(ALPACA_COMPILE_CACHE_DIR) that is empty before the first start: the first start shows the cost
of compiling, the second whether the caches were reused. Start time is from the process's start
to `/ready` answering 200. After the second start, `--clients` concurrencies are measured as in
`benchmarks.peer` (greedy streams of exactly `--max-new-tokens` tokens, `--rounds` turns each).

Variants: `eager` (ALPACA_ENFORCE_EAGER=true, the default) and `compiled` (false); with
`--preload`, each again with LD_PRELOAD naming tcmalloc and Intel's OpenMP runtime, as vLLM's
CPU guide recommends (the libraries this machine has; the variant is skipped without them).
The server log of every start is searched for vLLM's "Compiling model again due to a load
failure" line, which means its compiled-model cache could not be reused.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from alpaca_serve.server.preload import LIBRARIES, find_library
from benchmarks.options import count_list, default_model
from benchmarks.peer import SERVED_NAME, WARMUP_REQUESTS, Turn, new_tokens_limit, run_turn
from benchmarks.processes import ServerProcess, alpaca_server

RELOAD_FAILURE = "Compiling model again due to a load failure"


@dataclass
class Variant:
    name: str
    env: dict[str, str]
    start_s: list[float] = field(default_factory=list)  # first start, second start
    cache_reload_failed: list[bool] = field(default_factory=list)
    tokens_per_s: dict[int, float] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


def preload_libraries() -> list[str]:
    """tcmalloc and Intel's OpenMP runtime where this machine has them, found as the server
    finds them (alpaca_serve/server/preload.py: the environment's lib/, then the system's)."""
    found = (find_library(filename) for filename in LIBRARIES.values())
    return [str(path) for path in found if path is not None]


def variants(args) -> list[Variant]:
    # The server preloads by default now; each variant says what it has, so none preloads itself.
    plain = {"ALPACA_PRELOAD": "false"}
    compiled = {**plain, "ALPACA_ENFORCE_EAGER": "false", **dict(args.compiled_env)}
    chosen = [
        Variant("eager", {**plain, "ALPACA_ENFORCE_EAGER": "true"}),
        Variant("compiled", compiled),
    ]
    # Other compiled variants, side by side in the same run, each with its settings in its name.
    for settings in args.also_compiled:
        label = ",".join(f"{name}={value}" for name, value in settings)
        chosen.append(Variant(f"compiled[{label}]", {**compiled, **dict(settings)}))
    if args.preload:
        libraries = preload_libraries()
        if len(libraries) < 2:
            print(
                f"engine_start: --preload: found only {libraries or 'none'} of tcmalloc and "
                "libiomp5; skipping the preload variants (apt-get install libtcmalloc-minimal4)",
                file=sys.stderr,
            )
        else:
            preload = {"LD_PRELOAD": ":".join(libraries)}
            chosen += [Variant(f"{v.name}+preload", {**v.env, **preload}) for v in list(chosen)]
    if args.only:
        unknown = set(args.only) - {v.name for v in chosen}
        if unknown:
            raise SystemExit(
                f"engine_start: --only: no variant {', '.join(sorted(unknown))} "
                f"(there are: {', '.join(v.name for v in chosen)})"
            )
        chosen = [v for v in chosen if v.name in args.only]
    return chosen


async def start_and_time(model: Path, folder: Path, env: dict, args) -> tuple[ServerProcess, float]:
    import aiohttp

    started = time.perf_counter()
    server = alpaca_server(model, folder, env, args.kv_cache_gib)
    async with aiohttp.ClientSession() as session:
        try:
            await server.wait_until_ready(session, args.start_timeout)
        except BaseException:
            server.stop()
            raise
    return server, time.perf_counter() - started


async def measure_variant(variant: Variant, model: Path, workdir: Path, args) -> None:
    import aiohttp

    folder = workdir / variant.name
    env = {
        **variant.env,
        "ALPACA_COMPILE_CACHE_DIR": str(folder / "compile-cache"),
        "ALPACA_MODEL_NAME": SERVED_NAME,
        "ALPACA_MAX_CONCURRENT": str(max(args.clients) + WARMUP_REQUESTS),
        "ALPACA_MAX_NEW_TOKENS_LIMIT": str(new_tokens_limit(args.max_new_tokens, 2048)),
    }
    for start in (1, 2):
        server, seconds = await start_and_time(model, folder / f"start-{start}", env, args)
        variant.start_s.append(seconds)
        variant.cache_reload_failed.append(RELOAD_FAILURE in server.log_path.read_text("utf-8"))
        print(f"{variant.name}: start {start} took {seconds:.1f} s", file=sys.stderr, flush=True)
        if start == 1:
            server.stop()
            continue
        try:
            timeout = aiohttp.ClientTimeout(total=args.request_timeout)
            async with aiohttp.ClientSession(timeout=timeout) as session:
                for clients in args.clients:
                    turns: list[Turn] = [
                        await run_turn(session, variant.name, server.url, clients, r, args)
                        for r in range(1, args.rounds + 1)
                    ]
                    variant.errors += [e for t in turns for e in t.errors]
                    variant.tokens_per_s[clients] = statistics.fmean(t.tokens_per_s for t in turns)
                    print(
                        f"{variant.name}: {clients} clients "
                        f"{variant.tokens_per_s[clients]:.1f} tok/s",
                        file=sys.stderr,
                        flush=True,
                    )
        finally:
            server.stop()


def format_report(chosen: list[Variant], args, model: Path) -> str:
    base = chosen[0]
    width = max(18, *(len(v.name) for v in chosen))
    lines = [
        f"model {model}: starts to /ready, then {args.rounds} round(s) of greedy streams of "
        f"{args.max_new_tokens} tokens per concurrency (the ratio is to {base.name})",
        "",
        f"{'variant':<{width}} {'1st start s':>11} {'2nd start s':>11} {'cache reused':>12} "
        + " ".join(f"{f'{c} cl tok/s':>13} {'ratio':>6}" for c in args.clients),
    ]
    for v in chosen:
        reused = "no" if v.cache_reload_failed[-1] else "yes"
        cells = " ".join(
            f"{v.tokens_per_s[c]:>13.1f} {v.tokens_per_s[c] / base.tokens_per_s[c]:>6.3f}"
            for c in args.clients
        )
        lines.append(
            f"{v.name:<{width}} {v.start_s[0]:>11.1f} {v.start_s[1]:>11.1f} {reused:>12} {cells}"
        )
    return "\n".join(lines)


def _assignment(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name, value


def _assignments(text: str) -> list[tuple[str, str]]:
    return [_assignment(part) for part in text.split(",")]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.engine_start",
        description="Start times of alpaca-serve, eager and compiled (first start with an empty "
        "compile cache, then a second one), and tokens/s of each, optionally with tcmalloc and "
        "Intel's OpenMP preloaded.",
    )
    parser.add_argument(
        "--model",
        type=Path,
        help="Hugging Face folder of a LLaMA-family model (default: the bundled "
        "SmolLM2-135M-Instruct, converted once into ALPACA_CACHE_DIR)",
    )
    parser.add_argument(
        "--clients",
        type=count_list("1,16"),
        default=[1, 16],
        help="concurrencies to measure, comma-separated (default 1,16)",
    )
    parser.add_argument(
        "--requests-per-client", type=int, default=4, help="requests per client (default 4)"
    )
    parser.add_argument(
        "--max-new-tokens", type=int, default=128, help="tokens of every answer (default 128)"
    )
    parser.add_argument(
        "--rounds", type=int, default=2, help="turns per concurrency and variant (default 2)"
    )
    parser.add_argument(
        "--preload",
        action="store_true",
        help="also measure each variant with LD_PRELOAD naming tcmalloc and libiomp5",
    )
    parser.add_argument(
        "--compiled-env",
        type=_assignment,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an environment variable for the compiled variant (repeatable), e.g. "
        "VLLM_USE_AOT_COMPILE=1 to try vLLM's AOT compile cache again (the server turns it off)",
    )
    parser.add_argument(
        "--also-compiled",
        type=_assignments,
        action="append",
        default=[],
        metavar="NAME=VALUE[,NAME=VALUE...]",
        help="one more compiled variant with these environment variables besides the "
        "compiled one's (repeatable), e.g. VLLM_USE_MEGA_AOT_ARTIFACT=0, to compare settings "
        "of vLLM's compile cache in one run",
    )
    parser.add_argument(
        "--only",
        type=lambda text: [name for name in text.split(",") if name],
        default=[],
        metavar="NAME[,NAME...]",
        help="measure only these variants, e.g. eager,eager+preload (ratios are to the first)",
    )
    parser.add_argument(
        "--short",
        action="store_true",
        help="a smoke run: 1 client, one round, one request of 8 tokens",
    )
    parser.add_argument(
        "--kv-cache-gib", type=float, default=1.0, help="KV cache on CPU, in GiB (default 1)"
    )
    parser.add_argument(
        "--start-timeout",
        type=float,
        default=1200.0,
        help="seconds a start may take (default 1200: compiling takes minutes)",
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
        help="where the caches and server logs go (default: a temporary folder, removed "
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
        args.clients, args.rounds, args.requests_per_client, args.max_new_tokens = [1], 1, 1, 8
    if args.model is not None and not (args.model / "config.json").is_file():
        parser.error(f"--model {args.model} has no config.json")
    import aiohttp  # noqa: F401  (fail now, not after the first start)

    model = args.model or default_model()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="alpaca-start-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    chosen = variants(args)
    try:
        for variant in chosen:
            asyncio.run(measure_variant(variant, model, workdir, args))
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    print(format_report(chosen, args, model))
    if args.json is not None:
        body = {"model": str(model), "variants": [v.__dict__ for v in chosen]}
        args.json.write_text(json.dumps(body, indent=2) + "\n")
    errors = [e for v in chosen for e in v.errors]
    if errors:
        print(f"engine_start: {len(errors)} request(s) failed, first: {errors[0]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
