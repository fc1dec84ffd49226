"""What n-gram speculative decoding (ALPACA_SPECULATIVE=ngram, prompt lookup) buys on Alpaca
requests with an input, against the same server without it, in one run.

Usage:
    python -m benchmarks.speculative                        # the default model, 1 client
    python -m benchmarks.speculative --variant 4:4:2 --variant 2:3:1 --clients 1,8
    python -m benchmarks.speculative --short                # smoke run: 2 requests of 16 tokens

Servers run side by side, each an `alpaca-serve` process of its own on a free port (only one is
sent requests at a time): `off`, and one per `--variant K:MAX:MIN` (ALPACA_SPECULATIVE=ngram with
ALPACA_SPECULATIVE_TOKENS=K, ALPACA_PROMPT_LOOKUP_MAX=MAX, ALPACA_PROMPT_LOOKUP_MIN=MIN). The
requests are `--prompts` records of the Alpaca sample shipped with the project
(alpaca_serve/training/sample_data/alpaca_data_first200.json) that have an input and ask to rewrite,
summarise, extract, edit, shorten or convert it: the 40% of Alpaca's data where an answer copies
from its prompt, which is where prompt lookup finds its proposals. Each is a greedy `POST
/generate` with the instruction and input, `--max-new-tokens` at most (answers end where the
model ends them, the same on every server).

Per concurrency (`--clients`) and round (`--rounds`), the servers take turns in an order that
alternates from round to round; a turn is one uncounted warm-up request, then the clients share
the prompts, each sending its share one after the other. Reported per server and concurrency:
output tokens/s (completion tokens / the turn's wall time; the median over rounds), its ratio to
`off`, the share of proposed tokens the model accepted (from /metrics), and whether every answer
was the same, word for word, as `off`'s.
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
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.options import count_list, default_model, positive_int
from benchmarks.processes import ServerProcess, alpaca_server

SAMPLE = (
    Path(__file__).resolve().parents[1]
    / "alpaca_serve"
    / "training"
    / "sample_data"
    / "alpaca_data_first200.json"
)
# Instructions whose answer reuses the input's words: rewrite, summarise, extract, or anything
# done to a given sentence, paragraph or passage.
COPYING = re.compile(
    r"\b(rewrite|summar|extract|edit|paraphrase|shorten|simplify|sentence|paragraph|passage|"
    r"article|text)",
    re.IGNORECASE,
)
OFF = "off"


@dataclass(frozen=True)
class Variant:
    name: str
    env: dict[str, str]


@dataclass
class Turn:
    """One server's share of one round at one concurrency."""

    server: str
    clients: int
    round: int
    tokens: int = 0
    wall_s: float = 0.0
    draft_tokens: float = 0.0
    accepted_tokens: float = 0.0
    answers: dict[int, str] = field(default_factory=dict)  # prompt index -> answer
    errors: list[str] = field(default_factory=list)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.wall_s if self.wall_s else 0.0


def copying_records(count: int) -> list[dict[str, str]]:
    """The first `count` sample records with an input whose instruction asks to reuse it."""
    records = json.loads(SAMPLE.read_text())
    chosen = [r for r in records if r["input"].strip() and COPYING.search(r["instruction"])]
    return chosen[:count]


def parse_variant(text: str) -> Variant:
    try:
        tokens, longest, shortest = (int(part) for part in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected K:MAX:MIN such as 4:4:2, got {text!r}"
        ) from None
    return Variant(
        f"ngram {tokens}:{longest}:{shortest}",
        {
            "ALPACA_SPECULATIVE": "ngram",
            "ALPACA_SPECULATIVE_TOKENS": str(tokens),
            "ALPACA_PROMPT_LOOKUP_MAX": str(longest),
            "ALPACA_PROMPT_LOOKUP_MIN": str(shortest),
        },
    )


def start_servers(args, model: Path, workdir: Path) -> dict[str, ServerProcess]:
    common = {
        "ALPACA_MODEL_NAME": "speculative-bench",
        "ALPACA_DTYPE": "float32",
        "ALPACA_ENFORCE_EAGER": "true",
        "ALPACA_MAX_CONCURRENT": str(max(args.clients) + 2),
        "ALPACA_LOG_LEVEL": "info",
        # The server preloads by default now: only --preload does here.
        "ALPACA_PRELOAD": "false",
        **({"LD_PRELOAD": ":".join(args.preload)} if args.preload else {}),
    }
    servers = {}
    for variant in [Variant(OFF, {}), *args.variant]:
        folder = workdir / re.sub(r"\W+", "-", variant.name)
        servers[variant.name] = alpaca_server(
            model, folder, {**common, **variant.env}, args.kv_cache_gib
        )
    return servers


async def speculation_totals(session, url: str) -> tuple[float, float]:
    """The server's counts of proposed and accepted tokens so far."""
    async with session.get(f"{url}/metrics") as response:
        text = await response.text()
    totals = []
    for name in (
        "alpaca_spec_decode_num_draft_tokens_total",
        "alpaca_spec_decode_num_accepted_tokens_total",
    ):
        match = re.search(rf"^{name}\{{[^}}]*\}} (\S+)$", text, re.MULTILINE)
        totals.append(float(match.group(1)) if match else 0.0)
    return totals[0], totals[1]


async def generate(session, url: str, record: dict, args, turn: Turn, index: int | None) -> None:
    body = {
        "instruction": record["instruction"],
        "input": record["input"],
        "max_new_tokens": args.max_new_tokens,
        "temperature": 0.0,
    }
    async with session.post(f"{url}/generate", json=body) as response:
        if response.status != 200:
            turn.errors.append(f"{response.status} {(await response.text())[:200]}")
            return
        answer = await response.json()
    if index is not None:
        turn.tokens += answer["usage"]["completion_tokens"]
        turn.answers[index] = answer["text"]


async def run_turn(session, name: str, url: str, clients: int, round_no: int, args) -> Turn:
    records = args.records
    turn = Turn(name, clients, round_no)
    await generate(session, url, records[-1], args, turn, None)  # warm-up, not counted
    drafted, accepted = await speculation_totals(session, url)

    async def client(c: int) -> None:
        for index in range(c, len(records), clients):
            await generate(session, url, records[index], args, turn, index)

    started = time.perf_counter()
    await asyncio.gather(*(client(c) for c in range(clients)))
    turn.wall_s = time.perf_counter() - started
    drafted_after, accepted_after = await speculation_totals(session, url)
    turn.draft_tokens = drafted_after - drafted
    turn.accepted_tokens = accepted_after - accepted
    return turn


async def measure(args, servers: dict[str, ServerProcess]) -> list[Turn]:
    import aiohttp

    connector = aiohttp.TCPConnector(limit=max(args.clients) + 4)
    timeout = aiohttp.ClientTimeout(total=args.request_timeout)
    turns: list[Turn] = []
    names = list(servers)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        for name, server in servers.items():
            print(f"waiting for {name} ...", file=sys.stderr, flush=True)
            await server.wait_until_ready(session, args.start_timeout)
        for clients in args.clients:
            for round_no in range(1, args.rounds + 1):
                for name in names if round_no % 2 else names[::-1]:
                    turn = await run_turn(session, name, servers[name].url, clients, round_no, args)
                    turns.append(turn)
                    accepted = (
                        f", {turn.accepted_tokens / turn.draft_tokens:.0%} of "
                        f"{turn.draft_tokens:.0f} proposed accepted"
                        if turn.draft_tokens
                        else ""
                    )
                    print(
                        f"{clients:>3} clients, round {round_no}, {name:<14}: "
                        f"{turn.tokens_per_s:6.1f} tok/s ({turn.tokens} tokens in "
                        f"{turn.wall_s:.1f} s){accepted}"
                        + (f", {len(turn.errors)} error(s)" if turn.errors else ""),
                        file=sys.stderr,
                        flush=True,
                    )
    return turns


def summarize(turns: list[Turn], names: list[str]) -> dict:
    """Per concurrency and server: median tokens/s over rounds, ratio to off, acceptance."""
    rows: dict = {}
    for clients in sorted({t.clients for t in turns}):
        baseline = [t for t in turns if t.clients == clients and t.server == OFF]
        reference = {i: a for t in baseline for i, a in t.answers.items()}
        row = {}
        for name in names:
            mine = [t for t in turns if t.clients == clients and t.server == name]
            drafted = sum(t.draft_tokens for t in mine)
            answers = [(i, a) for t in mine for i, a in t.answers.items()]
            row[name] = {
                "tokens_per_s": statistics.median(t.tokens_per_s for t in mine),
                "rounds": [round(t.tokens_per_s, 2) for t in mine],
                "tokens_per_answer": statistics.fmean(
                    len(t.answers) and t.tokens / len(t.answers) for t in mine
                ),
                "acceptance": sum(t.accepted_tokens for t in mine) / drafted if drafted else None,
                "same_answers": sum(reference.get(i) == a for i, a in answers),
                "answers": len(answers),
            }
        off = row[OFF]["tokens_per_s"]
        for name in names:
            row[name]["ratio"] = row[name]["tokens_per_s"] / off if off else float("nan")
        rows[clients] = row
    return rows


def format_report(rows: dict, args, model: Path) -> str:
    lines = [
        f"model {model}: {len(args.records)} Alpaca requests with an input (rewrite, summarise, "
        f"extract ...), greedy, at most {args.max_new_tokens} new tokens, {args.rounds} round(s), "
        f"medians over rounds" + (f"; LD_PRELOAD={':'.join(args.preload)}" if args.preload else ""),
        "",
        f"{'clients':>7} {'server':<16} {'tok/s':>7} {'ratio':>6} {'accepted':>9} "
        f"{'tok/answer':>10} {'same as off':>12}  rounds (tok/s)",
    ]
    for clients, row in rows.items():
        for name, f in row.items():
            accepted = "-" if f["acceptance"] is None else f"{f['acceptance']:.0%}"
            lines.append(
                f"{clients:>7} {name:<16} {f['tokens_per_s']:>7.1f} {f['ratio']:>6.3f} "
                f"{accepted:>9} {f['tokens_per_answer']:>10.1f} "
                f"{f['same_answers']:>5}/{f['answers']:<6}  {f['rounds']}"
            )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.speculative",
        description="alpaca-serve with n-gram speculative decoding against itself without, on "
        "Alpaca requests with an input, alternating turns: tokens/s, ratio, acceptance, and "
        "whether the greedy answers stayed the same.",
    )
    parser.add_argument(
        "--model",
        type=Path,
        help="Hugging Face folder of a LLaMA-family model (default: the bundled "
        "SmolLM2-135M-Instruct, converted once into ALPACA_CACHE_DIR)",
    )
    parser.add_argument(
        "--variant",
        type=parse_variant,
        action="append",
        help="a speculative server as K:MAX:MIN (tokens proposed, longest and shortest lookup); "
        "repeat for several (default 4:4:2, the server's defaults)",
    )
    parser.add_argument(
        "--clients",
        type=count_list("1,8"),
        default=[1],
        help="concurrencies to measure, comma-separated (default 1)",
    )
    parser.add_argument(
        "--prompts", type=positive_int, default=20, help="requests per turn (default 20)"
    )
    parser.add_argument(
        "--max-new-tokens", type=positive_int, default=128, help="most tokens an answer may have"
    )
    parser.add_argument(
        "--rounds",
        type=positive_int,
        default=3,
        help="turns of each server per concurrency, in alternating order (default 3)",
    )
    parser.add_argument(
        "--kv-cache-gib", type=float, default=1.0, help="KV cache on CPU, in GiB (default 1)"
    )
    parser.add_argument(
        "--preload",
        action="store_true",
        help="start the servers with tcmalloc and Intel's OpenMP runtime in LD_PRELOAD (those "
        "found), as vLLM recommends for speculative decoding on CPU",
    )
    parser.add_argument(
        "--short", action="store_true", help="a smoke run: 2 requests of 16 tokens, one round"
    )
    parser.add_argument("--start-timeout", type=float, default=900.0)
    parser.add_argument("--request-timeout", type=float, default=900.0)
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
    args.variant = args.variant or [parse_variant("4:4:2")]
    if args.short:
        args.prompts, args.max_new_tokens, args.rounds = 2, 16, 1
    if args.model is not None and not (args.model / "config.json").is_file():
        parser.error(f"--model {args.model} has no config.json")
    if args.preload:
        from benchmarks.engine_start import preload_libraries

        args.preload = preload_libraries()
        if not args.preload:
            parser.error("--preload: neither tcmalloc nor libiomp5 found on this machine")
    args.records = copying_records(args.prompts)
    import aiohttp  # noqa: F401  (fail now, not after loading the servers)

    model = args.model or default_model()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="alpaca-speculative-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    servers = start_servers(args, model, workdir)
    try:
        turns = asyncio.run(measure(args, servers))
    finally:
        for server in servers.values():
            server.stop()
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    rows = summarize(turns, list(servers))
    print(format_report(rows, args, model))
    if args.json is not None:
        settings = {k: v for k, v in vars(args).items() if k not in ("records", "variant")}
        body = {
            "model": str(model),
            "settings": {k: str(v) if isinstance(v, Path) else v for k, v in settings.items()},
            "variants": [v.__dict__ for v in args.variant],
            "per_clients": rows,
            "turns": [
                {
                    **{k: v for k, v in t.__dict__.items() if k != "answers"},
                    "tokens_per_s": t.tokens_per_s,
                }
                for t in turns
            ],
        }
        args.json.write_text(json.dumps(body, indent=2) + "\n")
    errors = [e for t in turns for e in t.errors]
    if errors:
        print(f"speculative: {len(errors)} request(s) failed, first: {errors[0]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
