"""`alpaca-generate`: Alpaca's self-instruct data, made by any OpenAI-compatible teacher.

Usage:
    alpaca-generate --base-url http://127.0.0.1:8000/v1 --num-instructions 40 --out gen.json
    alpaca-generate --base-url https://api.openai.com/v1 --model gpt-4o-mini \
        --num-instructions 52000 --concurrency 16 --price-per-1k 0.00015,0.0006 --out gen.json
    alpaca-train --data gen.json --lora --max-steps 2

Stop it at any time (Ctrl-C, a crash, a full disk) and run the same command again: it goes on
from its journal (gen.journal.jsonl) and writes nothing twice. Errors are one line,
`alpaca-generate: error: ...`, with exit status 1; an interrupted run exits with 130.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any

from alpaca_serve import __version__
from alpaca_serve.generation import recipe
from alpaca_serve.generation.recipe import RecipeError
from alpaca_serve.generation.rules import REASONS
from alpaca_serve.generation.run import (
    MAX_EMPTY_ANSWERS,
    GenerationError,
    GenerationPlan,
    GenerationSummary,
    generate,
    output_paths,
)
from alpaca_serve.generation.teacher import TeacherConfig

DEFAULT_BASE_URL = "http://127.0.0.1:8000/v1"  # this project's server, as `make run` starts it
API_KEY_VARIABLES = ("ALPACA_TEACHER_API_KEY", "OPENAI_API_KEY")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="alpaca-generate",
        description="Make Alpaca-format instruction data with Stanford Alpaca's self-instruct "
        "recipe: each request shows a teacher model 3 of the 175 human-written seed tasks and "
        "asks for 20; the answer's numbered tasks are parsed, filtered, and deduplicated by "
        "ROUGE-L against the seeds and everything kept. Writes OUT (a JSON list alpaca-train "
        "reads), OUT's .provenance.json and its .journal.jsonl (the run's state: run the same "
        "command again to continue a stopped run).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    teacher = parser.add_argument_group("the teacher")
    teacher.add_argument(
        "--base-url",
        default=DEFAULT_BASE_URL,
        help="the teacher's OpenAI-compatible API, up to and including /v1",
    )
    teacher.add_argument(
        "--api-key",
        default=None,
        help="the teacher's API key; default: $ALPACA_TEACHER_API_KEY, else $OPENAI_API_KEY "
        "(an option's value shows in the process list, the environment's does not)",
    )
    teacher.add_argument(
        "--model", default=None, help="the teacher model; default: the first of GET /models"
    )
    teacher.add_argument(
        "--api",
        choices=("auto", "completions", "chat"),
        default="auto",
        help="auto: the Completions API (the prompt continued, as Alpaca did), switching to "
        "chat for good when the teacher serves no completions for the model",
    )
    teacher.add_argument("--temperature", type=float, default=recipe.TEMPERATURE, help="sampling")
    teacher.add_argument("--top-p", type=float, default=recipe.TOP_P, help="nucleus sampling")
    teacher.add_argument(
        "--max-tokens",
        type=_positive_int,
        default=recipe.MAX_TOKENS,
        help="longest answer; halved (down to 256) when the teacher refuses it",
    )
    teacher.add_argument(
        "--concurrency", type=_positive_int, default=4, help="requests out at once"
    )
    teacher.add_argument(
        "--retries",
        type=_positive_int,
        default=6,
        help="asks per request when the teacher is busy (429), failing (5xx) or unreachable, "
        "waiting its Retry-After or an exponential backoff in between",
    )
    teacher.add_argument(
        "--timeout", type=float, default=600.0, help="seconds to wait for one answer"
    )
    teacher.add_argument(
        "--price-per-1k",
        type=_price,
        default=None,
        metavar="PRICE[,COMPLETION_PRICE]",
        help="USD per 1,000 tokens (one price, or prompt and completion prices) for the "
        "estimated cost in the summary and the provenance",
    )
    data = parser.add_argument_group("the data")
    data.add_argument("--out", type=Path, required=True, help="the records to write, e.g. gen.json")
    data.add_argument(
        "--num-instructions",
        type=_positive_int,
        default=100,
        help="tasks to keep in all, counting those a stopped run kept",
    )
    data.add_argument(
        "--seed", type=int, default=42, help="which seed tasks each request shows (reproducible)"
    )
    data.add_argument(
        "--seed-tasks",
        type=Path,
        default=recipe.SEED_TASKS,
        help="JSON lines of seed tasks ({id, instruction, instances: [{input, output}]}, or "
        "Alpaca records); default: the 175 of self-instruct, shipped",
    )
    data.add_argument(
        "--template",
        type=Path,
        default=recipe.PROMPT_TEMPLATE,
        help="the request's text before the examples; default: Alpaca's prompt.txt, shipped",
    )
    data.add_argument(
        "--examples",
        type=_positive_int,
        default=recipe.NUM_PROMPT_INSTRUCTIONS,
        help="seed tasks shown per request",
    )
    data.add_argument(
        "--threshold",
        type=float,
        default=0.7,
        help="a task whose ROUGE-L F-measure against a seed or a kept task is above this is "
        "dropped as similar",
    )
    data.add_argument(
        "--filters",
        default=None,
        metavar="JSON|@FILE",
        help="the server's content filters, in ALPACA_FILTERS' format (a JSON list of "
        '{"factory": "pkg.module:factory", "options": {...}}), or @FILE holding it; tasks '
        "a filter refuses are dropped",
    )
    data.add_argument(
        "--blocklist",
        type=Path,
        default=None,
        help="a blocklist file as ALPACA_BLOCKLIST takes it: tasks that match are dropped",
    )
    run = parser.add_argument_group("the run")
    run.add_argument(
        "--max-requests",
        type=_positive_int,
        default=None,
        help="stop after this many requests in all, kept or not (default: no limit)",
    )
    run.add_argument(
        "--max-empty-answers",
        type=_positive_int,
        default=MAX_EMPTY_ANSWERS,
        help="give up after this many answers in a row without a single parseable task (a weak "
        "teacher, such as the 135M default model, gives none in about two answers of three)",
    )
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="alpaca-generate: %(message)s")
    try:
        plan = _plan(args)
    except (RecipeError, ValueError, OSError) as err:
        parser.error(str(err))
    config = TeacherConfig(
        base_url=args.base_url,
        model=args.model,
        api_key=args.api_key or _key_from_environment(),
        api=args.api,
        temperature=args.temperature,
        top_p=args.top_p,
        max_tokens=args.max_tokens,
        retries=args.retries,
        timeout_s=args.timeout,
    )
    try:
        summary = generate(plan, config, progress=not args.no_progress)
    except KeyboardInterrupt:
        print(
            f"alpaca-generate: stopped; what was kept is in {plan.out} and its journal: run the "
            "same command again to continue",
            file=sys.stderr,
        )
        return 130
    except (GenerationError, RecipeError) as err:
        print(f"alpaca-generate: error: {err}", file=sys.stderr)
        return 2
    print(format_summary(summary, plan))
    if not summary.complete:
        print(
            f"alpaca-generate: stopped at --max-requests {args.max_requests} with "
            f"{summary.kept} of {plan.num_instructions} tasks",
            file=sys.stderr,
        )
    return 0


def _plan(args: argparse.Namespace) -> GenerationPlan:
    recipe.load_seed_tasks(args.seed_tasks)  # a bad seed file is an error before any request
    recipe.load_template(args.template)
    if not 0 < args.threshold <= 1:
        raise ValueError(f"--threshold must be in (0, 1], got {args.threshold}")
    return GenerationPlan(
        out=args.out,
        num_instructions=args.num_instructions,
        concurrency=args.concurrency,
        seed=args.seed,
        threshold=args.threshold,
        seed_tasks=args.seed_tasks,
        template=args.template,
        examples=args.examples,
        price_per_1k=args.price_per_1k,
        max_requests=args.max_requests,
        max_empty_answers=args.max_empty_answers,
        filters=_filters(args.filters, args.blocklist),
    )


def _filters(spec: str | None, blocklist: Path | None) -> Any:
    """The server's filter chain for `--filters` and `--blocklist`, or None."""
    if spec is None and blocklist is None:
        return None
    from pydantic import TypeAdapter, ValidationError

    from alpaca_serve.server.filters import FilterConfigError, build_filter_chain
    from alpaca_serve.server.settings import FilterSettings

    specs: list[FilterSettings] = []
    if spec is not None:
        text = Path(spec[1:]).read_text(encoding="utf-8") if spec.startswith("@") else spec
        try:
            specs = TypeAdapter(list[FilterSettings]).validate_json(text)
        except ValidationError as err:
            problem = err.errors()[0]
            where = ".".join(str(part) for part in problem["loc"])
            raise ValueError(f"--filters: {where}: {problem['msg']}") from None
    if blocklist is not None and not blocklist.is_file():
        raise ValueError(f"--blocklist: no file {blocklist}")
    try:
        return build_filter_chain(specs, blocklist)
    except FilterConfigError as err:
        raise ValueError(f"--filters: {err}") from err


def _key_from_environment() -> str | None:
    for name in API_KEY_VARIABLES:
        if os.environ.get(name):
            return os.environ[name]
    return None


def format_summary(summary: GenerationSummary, plan: GenerationPlan) -> str:
    """What the whole journal holds: kept, dropped by reason, tokens, cost, the files."""
    records, journal, provenance = output_paths(plan.out)
    dropped = sum(summary.dropped.values())
    lines = [
        f"kept {summary.kept} tasks from {summary.requests} requests ({summary.parsed} tasks "
        f"parsed; {summary.empty_answers} answers held none"
        + (
            f"; {summary.skipped} prompts did not fit the teacher's context"
            if summary.skipped
            else ""
        )
        + f"); dropped {dropped}:"
    ]
    for reason, description in REASONS.items():
        if summary.dropped.get(reason):
            lines.append(f"  {summary.dropped[reason]:>7}  {reason}: {description}")
    tokens = summary.prompt_tokens + summary.completion_tokens
    rate = summary.completion_tokens_this_run / summary.seconds if summary.seconds else 0.0
    lines.append(
        f"tokens: {summary.prompt_tokens:,} prompt + {summary.completion_tokens:,} completion "
        f"= {tokens:,}" + (f" ({rate:.0f} completion tokens/s this run)" if rate else "")
    )
    if summary.estimated_cost is not None:
        lines.append(f"estimated cost: ${summary.estimated_cost:,.4f}")
    lines.append(f"wrote {records} ({summary.kept} records) and {provenance}; journal {journal}")
    return "\n".join(lines)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _price(text: str) -> tuple[float, float]:
    try:
        prices = [float(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a price or two: {text!r}") from None
    if len(prices) not in (1, 2) or any(price < 0 for price in prices):
        raise argparse.ArgumentTypeError(f"one or two prices of at least 0, got {text!r}")
    return (prices[0], prices[-1])


if __name__ == "__main__":
    sys.exit(main())
