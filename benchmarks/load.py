"""Load steps against a running server: a steady request rate, then steps up past overload.

Usage:
    alpaca-serve &                                          # any model
    python -m benchmarks.load --url http://127.0.0.1:8000 --rates 1,2,4,8,16 --step-seconds 20

Each step sends requests at a fixed rate (open loop, Poisson arrivals: new requests do not wait
for old ones, as real users do not) and prints, per step: requests sent, answered (200), refused
(429, the server's admission control), other errors, latency p50/p99 of answered requests, and
output tokens/s. With admission control a step past capacity shows 429s while the latency of the
answered requests stays bounded, instead of every request slowing down together.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass, field

INSTRUCTIONS = [
    "Give three tips for staying healthy.",
    "Explain why the sky is blue.",
    "Write a haiku about autumn.",
    "What is the capital of France?",
    "Describe a cat in one sentence.",
    "List four prime numbers.",
]


@dataclass
class StepResult:
    rate: float
    sent: int = 0
    statuses: Counter = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    tokens: int = 0
    wall_s: float = 0.0


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


async def one_request(session, url: str, body: dict, result: StepResult) -> None:
    import aiohttp

    start = time.perf_counter()
    try:
        async with session.post(f"{url}/generate", json=body) as response:
            payload = await response.json(content_type=None)
            result.statuses[response.status] += 1
            if response.status == 200:
                result.latencies.append(time.perf_counter() - start)
                result.tokens += payload["usage"]["completion_tokens"]
    except (aiohttp.ClientError, asyncio.TimeoutError) as err:
        result.statuses[type(err).__name__] += 1


async def run_step(
    session, url: str, rate: float, seconds: float, max_new_tokens: int, rng: random.Random
) -> StepResult:
    result = StepResult(rate)
    tasks = []
    start = time.perf_counter()
    next_at = start
    while next_at - start < seconds:
        await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
        body = {
            "instruction": rng.choice(INSTRUCTIONS),
            "max_new_tokens": max_new_tokens,
            "temperature": 0.7,
        }
        tasks.append(asyncio.create_task(one_request(session, url, body, result)))
        result.sent += 1
        next_at += rng.expovariate(rate)
    await asyncio.gather(*tasks)
    result.wall_s = time.perf_counter() - start
    return result


async def run(args: argparse.Namespace) -> list[StepResult]:
    import aiohttp

    rng = random.Random(args.seed)
    results = []
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=args.request_timeout)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        async with session.get(f"{args.server_url}/ready") as response:
            if response.status != 200:
                raise SystemExit(f"load: error: {args.server_url}/ready answered {response.status}")
        for rate in args.rates:
            result = await run_step(
                session, args.server_url, rate, args.step_seconds, args.max_new_tokens, rng
            )
            results.append(result)
            print(format_row(result), flush=True)
    return results


HEADER = (
    f"{'rate/s':>7} {'sent':>6} {'200':>6} {'429':>6} {'other':>6} "
    f"{'p50 s':>7} {'p99 s':>7} {'out tok/s':>10}"
)


def format_row(r: StepResult) -> str:
    other = sum(n for status, n in r.statuses.items() if status not in (200, 429))
    return (
        f"{r.rate:>7g} {r.sent:>6} {r.statuses[200]:>6} {r.statuses[429]:>6} {other:>6} "
        f"{percentile(r.latencies, 50):>7.2f} {percentile(r.latencies, 99):>7.2f} "
        f"{r.tokens / r.wall_s if r.wall_s else 0:>10.1f}"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.load", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--server-url", default="http://127.0.0.1:8000", help="the running server")
    parser.add_argument(
        "--rates",
        default="1,2,4,8,16",
        type=lambda text: [float(x) for x in text.split(",")],
        help="requests a second for each step, comma-separated",
    )
    parser.add_argument(
        "--step-seconds", type=float, default=20.0, help="how long each step sends requests"
    )
    parser.add_argument(
        "--max-new-tokens", type=int, default=32, help="max_new_tokens of every request"
    )
    parser.add_argument(
        "--request-timeout",
        type=float,
        default=120.0,
        help="client-side limit for one request, in seconds",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of arrivals and prompts")
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    print(
        f"load against {args.server_url}: {args.step_seconds:g} s a step, "
        f"max_new_tokens {args.max_new_tokens}"
    )
    print(HEADER)
    results = asyncio.run(run(args))
    if args.json:
        with open(args.json, "w") as out:
            json.dump(
                [
                    {
                        "rate": r.rate,
                        "sent": r.sent,
                        "ok": r.statuses[200],
                        "refused": r.statuses[429],
                        "other": sum(n for s, n in r.statuses.items() if s not in (200, 429)),
                        "p50_s": percentile(r.latencies, 50),
                        "p99_s": percentile(r.latencies, 99),
                        "output_tokens_per_s": r.tokens / r.wall_s,
                    }
                    for r in results
                ],
                out,
                indent=2,
            )
    return 0


def _version() -> str:
    from importlib.metadata import version

    return version("alpaca-serve")


if __name__ == "__main__":
    sys.exit(main())
