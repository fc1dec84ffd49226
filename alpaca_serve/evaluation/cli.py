"""`alpaca-eval`: answer an instruction set, compare two answer files blind, vote, report.

Usage:
    alpaca-eval answer --server-url http://127.0.0.1:8000 --limit 20 --out ours.jsonl
    alpaca-eval answer --format alpaca-eval [--generator NAME] --out model_outputs.json
    alpaca-eval compare --a ours.jsonl --label-a ours --seed 7 --out comparison.json
        # side B: text-davinci-003's answers, shipped with the project (--b FILE for others)
    alpaca-eval compare --a ours.jsonl --b model_outputs.json --out comparison.json
        # --a/--b also take AlpacaEval model outputs: labelled by their generator
    alpaca-eval vote --comparison comparison.json --pair-id pair-000 --winner left \
        [--session-id alice]
    alpaca-eval judge --comparison comparison.json --judge-url http://127.0.0.1:8001 \
        [--judge-model NAME] [--concurrency 4] [--rejudge]
    alpaca-eval judge --comparison comparison.json --reference   # token F1 vs text-davinci-003
    alpaca-eval judge --comparison comparison.json --reference --metric rouge-l
    alpaca-eval agreement --comparison comparison.json          # judges against each other
    alpaca-eval report --comparison comparison.json --chart report.png [--include-machine]
    alpaca-eval leaderboard --server-url http://127.0.0.1:8000 [--include-machine] \
        [--chart leaderboard.png] [--json leaderboard.json]  # every model, from all the votes
    alpaca-eval annotations --comparison comparison.json --out annotations.json \
        [--include-machine]                                 # the votes as AlpacaEval annotations

Votes live in the feedback store of the server the comparison was built against (its URL is in
the comparison file; `--server-url` overrides it): `compare` imports the answers that server did
not give, `vote` and `judge` send votes to it, and `report` reads them back. The votes of excluded
sessions (`alpaca-export --exclude-session`) are left out of `report`, `annotations`,
`agreement` and `leaderboard`, each of which says how many.

Every subcommand has `--help`. Errors are one line, `alpaca-eval SUBCOMMAND: error: ...`, with
a non-zero exit status.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
from collections import Counter
from pathlib import Path
from typing import cast

from alpaca_serve.client.api import API_KEY_VARIABLE, JUDGE_API_KEY_VARIABLE, AlpacaClient
from alpaca_serve.client.errors import APIRequestError
from alpaca_serve.evaluation.agreement import format_agreement, judge_agreement
from alpaca_serve.evaluation.alpaca_eval_files import (
    NO_PREFERENCE,
    model_outputs,
    vote_annotations,
    write_json_list,
)
from alpaca_serve.evaluation.answers import (
    MAX_ATTEMPTS,
    EvaluationError,
    generate_answers,
    load_answers,
    load_instructions,
    write_jsonl,
)
from alpaca_serve.evaluation.comparison import (
    Vote,
    attach_generation_ids,
    build_comparison,
    cast_vote,
    excluded_in_store,
    find_pair,
    judge_comparison,
    load_comparison,
    save_comparison,
    votes_in_store,
)
from alpaca_serve.evaluation.datasets import DAVINCI_ANSWERS, EVALUATION_SET
from alpaca_serve.evaluation.leaderboard import format_leaderboard, write_leaderboard_chart
from alpaca_serve.evaluation.reference_judge import (
    METRICS,
    judge_by_reference,
    judge_session,
    reference_answers,
)
from alpaca_serve.evaluation.report import (
    format_exclusions,
    format_report,
    tally_votes,
    write_chart,
)
from alpaca_serve.feedback.leaderboard import DEFAULT_ROUNDS, MAX_ROUNDS

# The Alpaca evaluation set (user-oriented self-instruct instructions) and the reference side of
# Alpaca's comparison, text-davinci-003's answers to it: both shipped with the project.
DEFAULT_INSTRUCTIONS = EVALUATION_SET
DEFAULT_REFERENCE = DAVINCI_ANSWERS
DEFAULT_REFERENCE_LABEL = "text-davinci-003"
DEFAULT_SERVER_URL = "http://127.0.0.1:8000"
ANSWER_FORMATS = ("jsonl", "alpaca-eval")
STORE_TIMEOUT_S = 60.0  # feedback-store calls are quick; answers have their own --timeout


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.run(args)
    except (EvaluationError, APIRequestError) as err:
        print(f"{args.prog}: error: {err}", file=sys.stderr)
        return 2
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="alpaca-eval",
        description="Blind pairwise evaluation: generate answers with a server, pair them with "
        "another model's answers, collect votes (people or an automatic judge), report.",
    )
    commands = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")

    answer = _command(
        commands,
        "answer",
        run_answer,
        "answer an instruction file through a server, writing JSON lines",
    )
    answer.add_argument(
        "--server-url",
        default=DEFAULT_SERVER_URL,
        help=f"the alpaca-serve to ask (default: {DEFAULT_SERVER_URL})",
    )
    answer.add_argument(
        "--instructions",
        type=Path,
        default=DEFAULT_INSTRUCTIONS,
        help="self-instruct user-oriented JSON lines (instruction, "
        "instances[0].input, motivation_app) or an Alpaca JSON list "
        "(instruction, input); default: the shipped Alpaca evaluation set, "
        f"{EVALUATION_SET}",
    )
    answer.add_argument(
        "--model",
        default=None,
        help="the served model to answer: the base's name or a served LoRA adapter's "
        "(default: the base)",
    )
    answer.add_argument(
        "--limit",
        type=int,
        default=None,
        help="answer only the first N instructions (default: all)",
    )
    answer.add_argument(
        "--concurrency", type=int, default=4, help="requests in flight at once (default: 4)"
    )
    answer.add_argument(
        "--max-new-tokens",
        type=int,
        default=None,
        help="most tokens per answer (default: the server's default)",
    )
    answer.add_argument(
        "--temperature",
        type=float,
        default=0.1,
        help="sampling temperature, 0 for greedy (default: 0.1)",
    )
    answer.add_argument(
        "--timeout", type=float, default=600.0, help="seconds to wait for one answer (default: 600)"
    )
    answer.add_argument(
        "--api-key",
        default=os.environ.get(API_KEY_VARIABLE),
        help=f"sent as a bearer token when the server wants one (default: ${API_KEY_VARIABLE}; "
        "the environment keeps it out of the process list and the shell's history)",
    )
    answer.add_argument(
        "--out",
        type=Path,
        required=True,
        help="answers file to write: JSON lines {id, instruction, input, "
        "motivation_app, output, generation_id, model}, or with --format alpaca-eval "
        "AlpacaEval's model outputs",
    )
    answer.add_argument(
        "--format",
        choices=ANSWER_FORMATS,
        default="jsonl",
        help="jsonl: this project's answer records, which keep the generation ids; alpaca-eval: "
        "AlpacaEval's model outputs, a JSON list of {instruction, output, generator}, an "
        "instruction with an input joined to it by a blank line (default: jsonl)",
    )
    answer.add_argument(
        "--generator",
        default=None,
        metavar="NAME",
        help="with --format alpaca-eval: the model's name in the file (default: the served "
        "model that answered, as the server named it)",
    )
    answer.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    compare = _command(
        commands, "compare", run_compare, "pair two answer files into a blind comparison file"
    )
    compare.add_argument(
        "--a",
        type=Path,
        required=True,
        help="answer file of side A (from `answer`, a self-instruct predictions "
        "file such as the text-davinci-003 one, an Alpaca JSON list, or AlpacaEval model "
        "outputs: a JSON list of {instruction, output, generator})",
    )
    compare.add_argument(
        "--b",
        type=Path,
        default=DEFAULT_REFERENCE,
        help="answer file of side B, in any format --a takes (default: text-davinci-003's "
        f"answers to the Alpaca evaluation set, shipped with the project, {DEFAULT_REFERENCE})",
    )
    compare.add_argument(
        "--label-a",
        default=None,
        help="name of side A in reports (default: the model named in the file, an AlpacaEval "
        "file's generator, else the file name)",
    )
    compare.add_argument(
        "--label-b",
        default=None,
        help="name of side B (default: as --label-a; "
        f"{DEFAULT_REFERENCE_LABEL} for the default --b)",
    )
    compare.add_argument(
        "--seed",
        type=int,
        default=None,
        help="seed for the pair order and sides (default: random; recorded in the file either way)",
    )
    compare.add_argument("--out", type=Path, required=True, help="comparison JSON file to write")
    _store_options(
        compare,
        "the alpaca-serve whose feedback store keeps the answers and votes: "
        "answers it did not give (for example the davinci file's) are imported "
        f"into it (default: {DEFAULT_SERVER_URL})",
        default=DEFAULT_SERVER_URL,
    )

    vote = _command(
        commands,
        "vote",
        run_vote,
        "record one person's vote on a pair of a comparison in the feedback store",
    )
    vote.add_argument("--comparison", type=Path, required=True, help="comparison file")
    vote.add_argument("--pair-id", required=True, help="the pair voted on, e.g. pair-000")
    vote.add_argument(
        "--winner",
        required=True,
        choices=["left", "right", "tie", "both_bad"],
        help="which side was better, as shown: left, right, tie or both_bad",
    )
    vote.add_argument(
        "--session-id",
        default="cli",
        help="who votes; a later vote by the same session on the same pair "
        "replaces the earlier one (default: cli)",
    )
    _store_options(vote, STORE_HELP)

    judge = _command(
        commands,
        "judge",
        run_judge,
        "fill machine votes with an OpenAI-compatible chat model as the judge, or with the "
        "reference judge (--reference: the answer closer to a reference answer wins)",
    )
    judge.add_argument("--comparison", type=Path, required=True, help="comparison file")
    judge.add_argument(
        "--judge-url",
        default=None,
        help="base URL of an OpenAI-compatible API (…/v1/chat/completions); "
        "this server's own URL works too (required unless --reference)",
    )
    judge.add_argument(
        "--reference",
        nargs="?",
        type=Path,
        const=DAVINCI_ANSWERS,
        default=None,
        metavar="FILE",
        help="judge by reference instead of by a model: of two answers, the one with the higher "
        "token-overlap F1 against the reference answer wins (equal F1: a tie). FILE: "
        "text-davinci-003's answers to the evaluation set when not given (the side of Alpaca's "
        "comparison), or any file of {instruction, input, output or response} or the "
        "self-instruct format (instances[0].output, the human-written answers)",
    )
    judge.add_argument(
        "--metric",
        choices=METRICS,
        default="token-f1",
        help="with --reference: how closeness to the reference is scored: token-f1 (shared words, "
        "SQuAD's F1) or rouge-l (ROUGE-L's F-measure: shared words in the reference's order); "
        "each metric votes as its own judge (default: token-f1)",
    )
    judge.add_argument(
        "--judge-model",
        default=None,
        help="model name to ask (default: the first one /v1/models lists)",
    )
    judge.add_argument(
        "--judge-api-key",
        default=os.environ.get(JUDGE_API_KEY_VARIABLE),
        help=f"bearer token for the judge (default: ${JUDGE_API_KEY_VARIABLE})",
    )
    judge.add_argument(
        "--one-order",
        action="store_true",
        help="ask once per pair instead of twice with the answers swapped "
        "(half the cost, but position bias goes uncorrected)",
    )
    judge.add_argument(
        "--concurrency",
        type=int,
        default=4,
        help="pairs judged at once; each pair's vote is sent to the store as soon as it is "
        "decided (default: 4)",
    )
    judge.add_argument(
        "--attempts",
        type=int,
        default=MAX_ATTEMPTS,
        help="tries per request while the judge or the store answers 429 (busy) or 503 "
        f"(unavailable), each after the wait its Retry-After asks for (default: {MAX_ATTEMPTS})",
    )
    judge.add_argument(
        "--rejudge",
        action="store_true",
        help="judge every pair again, replacing this judge's earlier votes (default: skip the "
        "pairs it has voted on, so a rerun after a failure judges only the rest)",
    )
    judge.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    _store_options(judge, STORE_HELP)

    agreement = _command(
        commands,
        "agreement",
        run_agreement,
        "how often the judges of a comparison agree: every automatic judge (by its session) "
        "and people (each pair's majority vote), two at a time, with Cohen's kappa",
    )
    agreement.add_argument("--comparison", type=Path, required=True, help="comparison file")
    _store_options(
        agreement,
        "the alpaca-serve whose feedback store holds the votes (default: the one recorded in "
        "the comparison file)",
    )

    report = _command(
        commands,
        "report",
        run_report,
        "print wins / ties / losses with a 95% interval, by category, and a chart",
    )
    report.add_argument("--comparison", type=Path, required=True, help="comparison file")
    report.add_argument(
        "--chart", type=Path, default=None, help="PNG bar chart to write (default: none)"
    )
    report.add_argument(
        "--include-machine",
        action="store_true",
        help="also report the automatic judge's votes, in their own section",
    )
    report.add_argument(
        "--judge",
        default=None,
        metavar="SESSION",
        help="with --include-machine: only this automatic judge's votes, by its session (for "
        "example reference-judge-rouge-l; `agreement` lists them); default: every machine vote",
    )
    report.add_argument(
        "--top-categories",
        type=int,
        default=10,
        help="categories (motivation_app) to list, most voted first (default: 10)",
    )
    report.add_argument(
        "--json",
        type=Path,
        default=None,
        help="also write the counts and intervals as JSON to this file",
    )
    _store_options(
        report,
        "the alpaca-serve whose feedback store holds the votes (default: "
        "the one recorded in the comparison file)",
    )

    annotations = _command(
        commands,
        "annotations",
        run_annotations,
        "write the votes on a comparison as AlpacaEval annotations: a JSON list of {instruction, "
        "output_1, generator_1, output_2, generator_2, annotator, preference}, one per vote, "
        "output_1 being side B and output_2 side A; preference 1.0 (B), 2.0 (A) or 1.5 (a tie, "
        "and both_bad too)",
    )
    annotations.add_argument("--comparison", type=Path, required=True, help="comparison file")
    annotations.add_argument(
        "--out", type=Path, required=True, help="annotations JSON file to write"
    )
    annotations.add_argument(
        "--include-machine",
        action="store_true",
        help="also write the automatic judges' votes, each under its session as the annotator "
        "(judge-MODEL, reference-judge-token-f1, ...); default: people's votes only, annotator "
        "human",
    )
    _store_options(annotations, STORE_HELP)
    leaderboard = _command(
        commands,
        "leaderboard",
        run_leaderboard,
        "rank every model from all the pairwise votes in a server's feedback store: "
        "Bradley-Terry scores on Chatbot Arena's Elo-like scale, with bootstrap 95% intervals "
        "and the vote counts; people's votes, and with --include-machine the automatic judges' "
        "on a board of their own",
    )
    leaderboard.add_argument(
        "--include-machine",
        action="store_true",
        help="also print the board of the automatic judges' votes (machine votes), separately",
    )
    leaderboard.add_argument(
        "--rounds",
        type=int,
        default=DEFAULT_ROUNDS,
        help=f"bootstrap rounds for the 95%% intervals, 0 to {MAX_ROUNDS}; 0: no intervals "
        f"(default: {DEFAULT_ROUNDS})",
    )
    leaderboard.add_argument(
        "--seed", type=int, default=0, help="seed of the bootstrap (default: 0)"
    )
    leaderboard.add_argument(
        "--chart", type=Path, default=None, help="PNG chart to write: score and interval per model"
    )
    leaderboard.add_argument(
        "--json", type=Path, default=None, help="also write the boards as JSON to this file"
    )
    _store_options(
        leaderboard,
        f"the alpaca-serve whose feedback store holds the votes (default: {DEFAULT_SERVER_URL})",
        default=DEFAULT_SERVER_URL,
    )
    leaderboard.add_argument(
        "--database",
        metavar="URL",
        help="read the votes from this store instead of a server (sqlite:///ABSOLUTE/PATH or "
        "postgresql://USER:PASSWORD@HOST:PORT/DATABASE): a stopped server's, a loop run's",
    )
    leaderboard.add_argument(
        "--data-dir",
        type=Path,
        help="read the votes from the SQLite store (alpaca.sqlite3) in this folder instead of a "
        "server (a server's ALPACA_DATA_DIR)",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    return parser


STORE_HELP = (
    "the alpaca-serve whose feedback store keeps the votes (default: the one recorded "
    "in the comparison file)"
)


def _store_options(
    command: argparse.ArgumentParser, help_text: str, default: str | None = None
) -> None:
    command.add_argument("--server-url", default=default, help=help_text)
    command.add_argument(
        "--api-key",
        default=os.environ.get(API_KEY_VARIABLE),
        help=f"sent as a bearer token to that server when it wants one (default: "
        f"${API_KEY_VARIABLE})",
    )


def _store_url(args: argparse.Namespace, comparison: dict) -> str:
    """`--server-url`, or the server the comparison was built with: the one whose feedback store
    keeps the comparison's answers and votes."""
    url = args.server_url or comparison.get("server_url")
    if not url:
        raise EvaluationError(f"{args.comparison} names no server: pass --server-url")
    return url


def _open_store(args: argparse.Namespace, comparison: dict):
    """A client of the comparison's feedback store (`_store_url`)."""
    return AlpacaClient(_store_url(args, comparison), args.api_key, timeout_s=STORE_TIMEOUT_S)


def run_answer(args: argparse.Namespace) -> None:
    if args.limit is not None and args.limit < 1:
        raise EvaluationError(f"--limit must be at least 1, got {args.limit}")
    if args.concurrency < 1:
        raise EvaluationError(f"--concurrency must be at least 1, got {args.concurrency}")
    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        raise EvaluationError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
    if args.generator is not None and args.format != "alpaca-eval":
        raise EvaluationError("--generator is for --format alpaca-eval")
    items = load_instructions(args.instructions, args.limit)
    answers, failures = generate_answers(
        args.server_url,
        items,
        model=args.model,
        concurrency=args.concurrency,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        api_key=args.api_key,
        timeout_s=args.timeout,
        progress=not args.no_progress,
    )
    if not answers:
        first = failures[0].reason if failures else "no instructions"
        raise EvaluationError(f"all {len(items)} instructions failed; the first: {first}")
    if args.format == "alpaca-eval":
        generator = args.generator or _default_label(answers, args.out)
        write_json_list(args.out, model_outputs(answers, generator))
        written = f"AlpacaEval model outputs of {generator}"
    else:
        write_jsonl(args.out, answers)
        written = "answers"
    print(f"wrote {len(answers)} {written} to {args.out} ({len(failures)} failed)")


def run_compare(args: argparse.Namespace) -> None:
    answers_a, answers_b = load_answers(args.a), load_answers(args.b)
    label_a = args.label_a or _default_label(answers_a, args.a)
    label_b = args.label_b or (
        DEFAULT_REFERENCE_LABEL
        if args.b == DEFAULT_REFERENCE
        else _default_label(answers_b, args.b)
    )
    if label_a == label_b:
        label_b += " (B)"
    seed = args.seed if args.seed is not None else secrets.randbelow(2**31)
    comparison = build_comparison(answers_a, answers_b, label_a, label_b, seed)
    if not comparison["pairs"]:
        raise EvaluationError(
            f"no instruction of {args.a} is answered in {args.b}: nothing to compare"
        )
    with AlpacaClient(args.server_url, args.api_key, timeout_s=STORE_TIMEOUT_S) as store:
        imported = attach_generation_ids(comparison, store)
    save_comparison(args.out, comparison)
    unmatched = comparison["unmatched"]
    print(
        f"wrote {len(comparison['pairs'])} pairs ({label_a} vs {label_b}, seed {seed}) to "
        f"{args.out}; without a partner: {unmatched['a']} of A, {unmatched['b']} of B; "
        f"{imported} answers imported into the feedback store at {args.server_url}"
    )


def run_vote(args: argparse.Namespace) -> None:
    comparison = load_comparison(args.comparison)
    pair = find_pair(comparison, args.pair_id)
    with _open_store(args, comparison) as store:
        created = cast_vote(store, pair, Vote(args.pair_id, args.winner, "human", args.session_id))
        where = store.server_url
    print(
        f"{'recorded' if created else 'changed'}: {args.pair_id} {args.winner} "
        f"(session {args.session_id}) in the feedback store at {where}"
    )


def run_judge(args: argparse.Namespace) -> None:
    comparison = load_comparison(args.comparison)
    if args.reference is not None:
        run_reference_judge(args, comparison)
        return
    if args.metric != "token-f1":
        raise EvaluationError("--metric is for --reference")
    if args.judge_url is None:
        raise EvaluationError("give --judge-url (a model to judge) or --reference")
    store_url = _store_url(args, comparison)
    judgement = judge_comparison(
        comparison,
        args.judge_url,
        store_url,
        model=args.judge_model,
        api_key=args.judge_api_key,
        store_api_key=args.api_key,
        both_orders=not args.one_order,
        concurrency=args.concurrency,
        attempts=args.attempts,
        rejudge=args.rejudge,
        progress=not args.no_progress,
    )
    print(
        f"recorded {len(judgement.votes)} machine votes in the feedback store at "
        f"{store_url.rstrip('/')}"
        + (
            f"; {len(judgement.skipped)} pairs judged earlier by judge-{judgement.model} were "
            "skipped (--rejudge asks again)"
            if judgement.skipped
            else ""
        )
        + (
            f"; {len(judgement.inconsistent)} pairs were judged differently with the sides "
            "swapped and count as ties"
            if judgement.inconsistent
            else ""
        )
        + (
            f"; {len(judgement.unreadable)} replies were not A, B or tie: "
            f"{', '.join(judgement.unreadable)}"
            if judgement.unreadable
            else ""
        )
    )


def run_reference_judge(args: argparse.Namespace, comparison: dict) -> None:
    references = reference_answers(args.reference)
    with _open_store(args, comparison) as store:
        votes, unjudged = judge_by_reference(
            comparison, references, store, progress=not args.no_progress, metric=args.metric
        )
    print(
        f"recorded {len(votes)} machine votes of the reference judge "
        f"({judge_session(args.metric)}, against "
        f"{args.reference.name}) in the feedback store at {_store_url(args, comparison)}"
        + (f"; {len(unjudged)} pairs have no reference answer" if unjudged else "")
    )


def run_agreement(args: argparse.Namespace) -> None:
    comparison = load_comparison(args.comparison)
    with _open_store(args, comparison) as store:
        votes = votes_in_store(store, comparison)
        excluded = excluded_in_store(store)
    print(format_agreement(judge_agreement(votes)))
    if excluded[0]:
        print(f"\n{format_exclusions(*excluded)}")


def run_report(args: argparse.Namespace) -> None:
    if args.top_categories < 1:
        raise EvaluationError(f"--top-categories must be at least 1, got {args.top_categories}")
    if args.chart is not None and args.chart.suffix.lower() != ".png":
        raise EvaluationError(f"--chart must name a .png file, got {args.chart}")
    comparison = load_comparison(args.comparison)
    with _open_store(args, comparison) as store:
        votes = votes_in_store(store, comparison)
        excluded_votes, excluded_sessions = excluded_in_store(store)
    if args.judge is not None:
        votes = [vote for vote in votes if vote.voter == "human" or vote.session_id == args.judge]
    judges = sorted({vote.session_id for vote in votes if vote.voter == "machine"})
    voters = ["human", "machine"] if args.include_machine else ["human"]
    tallies = {voter: tally_votes(comparison, votes, voter) for voter in voters}
    print(format_report(comparison, tallies, args.top_categories))
    if args.include_machine and len(judges) > 1:
        print(
            f"\n(the machine votes of {len(judges)} judges together: {', '.join(judges)}; "
            "--judge SESSION reports one)"
        )
    machine_left_out = sum(1 for vote in votes if vote.voter == "machine")
    if not args.include_machine and machine_left_out:
        print(f"\n({machine_left_out} machine votes not shown; add --include-machine)")
    if excluded_votes:
        print(f"\n{format_exclusions(excluded_votes, excluded_sessions)}")
    if args.json is not None:
        summary = {
            "labels": comparison["labels"],
            **{voter: tally.as_dict() for voter, tally in tallies.items()},
            "excluded": {"votes": excluded_votes, "sessions": excluded_sessions},
        }
        args.json.write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    if args.chart is not None:
        write_chart(args.chart, comparison, tallies, args.top_categories)
        print(f"chart written to {args.chart}")


def run_annotations(args: argparse.Namespace) -> None:
    comparison = load_comparison(args.comparison)
    with _open_store(args, comparison) as store:
        votes = votes_in_store(store, comparison)
        excluded = excluded_in_store(store)
    machine = [vote for vote in votes if vote.voter == "machine"]
    chosen = votes if args.include_machine else [vote for vote in votes if vote.voter == "human"]
    if not chosen:
        raise EvaluationError(
            f"no votes of people on the pairs of {args.comparison}"
            + (f" ({len(machine)} machine votes: add --include-machine)" if machine else "")
            + (f" {format_exclusions(*excluded)}" if excluded[0] else "")
        )
    annotations = vote_annotations(comparison, chosen)
    write_json_list(args.out, annotations)
    people = sum(1 for vote in chosen if vote.voter == "human")
    judges = Counter(vote.session_id for vote in chosen if vote.voter == "machine")
    both_bad = sum(1 for vote in chosen if vote.winner == "both_bad")
    label_a, label_b = comparison["labels"]
    print(
        f"wrote {len(annotations)} annotations to {args.out} (output_1: {label_b}, output_2: "
        f"{label_a}): {people} by people (annotator human)"
        + (
            "; by machines: " + ", ".join(f"{judge} {n}" for judge, n in sorted(judges.items()))
            if judges
            else ""
        )
        + (
            f"; {both_bad} both_bad votes written as preference {NO_PREFERENCE}, as ties"
            if both_bad
            else ""
        )
    )
    if not args.include_machine and machine:
        print(f"({len(machine)} machine votes left out; add --include-machine)")
    if excluded[0]:
        print(format_exclusions(*excluded))


def run_leaderboard(args: argparse.Namespace) -> None:
    if not 0 <= args.rounds <= MAX_ROUNDS:
        raise EvaluationError(f"--rounds must be 0 to {MAX_ROUNDS}, got {args.rounds}")
    if not 0 <= args.seed < 2**32:
        raise EvaluationError(f"--seed must be 0 to {2**32 - 1}, got {args.seed}")
    if args.chart is not None and args.chart.suffix.lower() != ".png":
        raise EvaluationError(f"--chart must name a .png file, got {args.chart}")
    voters = ["human", "machine"] if args.include_machine else ["human"]
    if args.database is not None or args.data_dir is not None:
        boards = _boards_from_store(args, voters)
    else:
        with AlpacaClient(args.server_url, args.api_key, timeout_s=STORE_TIMEOUT_S) as store:
            boards = {voter: store.leaderboard(voter, args.rounds, args.seed) for voter in voters}
    print("\n\n".join(format_leaderboard(board) for board in boards.values()))
    target = args.json
    try:
        if args.json is not None:
            args.json.write_text(json.dumps(boards, indent=1) + "\n", encoding="utf-8")
            print(f"boards written to {args.json}")
        target = args.chart
        if args.chart is not None:
            write_leaderboard_chart(args.chart, boards)
            print(f"chart written to {args.chart}")
    except OSError as err:
        raise EvaluationError(f"cannot write {target}: {err.strerror or err}") from err


def _boards_from_store(args: argparse.Namespace, voters: list[str]) -> dict[str, dict]:
    """The boards computed here from the votes of --database or --data-dir's store, as a
    server's GET /feedback/leaderboard would answer them."""
    from alpaca_serve.feedback import open_store
    from alpaca_serve.feedback.leaderboard import compute_leaderboard
    from alpaca_serve.feedback.records import StoreError
    from alpaca_serve.feedback.store import DATABASE_FILENAME

    url = args.database
    if url is None:
        path = args.data_dir / DATABASE_FILENAME
        if not path.is_file():  # opening would create an empty store
            raise EvaluationError(f"no feedback store at {path}")
        url = f"sqlite:///{path.resolve()}"
    excluded: Counter = Counter()  # votes of excluded sessions, by voter
    try:
        with open_store(url) as store:
            battles = store.battles(excluded=excluded)
    except (StoreError, ValueError) as err:
        raise EvaluationError(f"--database: {' '.join(str(err).split())}") from err
    return {
        voter: compute_leaderboard(
            battles, voter, args.rounds, args.seed, excluded[voter]
        ).as_dict()
        for voter in voters
    }


def _command(commands, name: str, run, help_text: str) -> argparse.ArgumentParser:
    command = commands.add_parser(name, help=help_text.replace("%", "%%"), description=help_text)
    command.set_defaults(run=run, prog=command.prog)
    return command


def _default_label(answers: list[dict], path: Path) -> str:
    models = {answer.get("model") for answer in answers} - {None}
    return cast(str, models.pop()) if len(models) == 1 else path.stem  # None taken out above


def _version() -> str:
    from importlib.metadata import version

    return version("alpaca-serve")


if __name__ == "__main__":
    sys.exit(main())
