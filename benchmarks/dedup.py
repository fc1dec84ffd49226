"""Alpaca's ROUGE-L deduplication of 52,000 instructions: the Deduplicator against all pairs.

Usage:
    python -m benchmarks.dedup                        # (a) both ways on 2,500, (b) 52,000
    python -m benchmarks.dedup --similar-from 0.7     # decisions only, no list below 0.7
    python -m benchmarks.dedup --short                # a smoke run of a few seconds

The workload is built from the data the project ships, the same for the same `--seed`: the
instructions of the Alpaca sample, LLaMA-Factory's Alpaca demo, the evaluation set and the
preference pairs (1,433 distinct ones), spread at random through variants standing for what a
teacher model generates:
- new instructions (two thirds): the head of one instruction spliced onto the tail of another, or
  an instruction's opening words (its task: "Write a short story about", "Generate a list of")
  followed by a phrase cut from the answers and inputs of the shipped records;
- near-duplicates (a third) of an instruction that came before: words swapped, dropped, replaced
  or inserted, case and punctuation changed, or its head ending as another instruction ends.
Most near-duplicates and some new instructions (those close to an earlier one) are rejected:
about 40% of the 52,000 with the default seed.

(a) On the first `--sample` instructions, against the seeds: the exact all-pairs check
(`exact_decisions`: every pair, the plain LCS table) and the Deduplicator, each timed; the ratio;
kept and rejected counts; whether every decision is the same ("decisions identical: yes"; if not,
the exit status is 1). (b) The Deduplicator on all `--count` instructions against the seeds:
time, instructions per second, kept and rejected, and how the maximum scores spread.

The seeds are self-instruct's 175 seed tasks, as Alpaca used them: the package's copy
(alpaca_serve/generation/data/seed_tasks.jsonl), or `--seeds`.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from alpaca_serve.core.records import read_raw_records
from alpaca_serve.evaluation.datasets import EVALUATION_DATA, SAMPLE_DATA
from alpaca_serve.generation.dedup import (
    SIMILAR_FROM,
    THRESHOLD,
    Decision,
    Deduplicator,
    exact_decisions,
)
from alpaca_serve.generation.recipe import SEED_TASKS as PACKAGED_SEEDS

SHORT_SAMPLE, SHORT_COUNT = 300, 3000


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.dedup",
        description="Alpaca's ROUGE-L deduplication: the Deduplicator's time and decisions "
        "against the exact all-pairs check, and its time on a 52,000-instruction workload.",
    )
    parser.add_argument(
        "--sample",
        type=int,
        default=2500,
        help="instructions decided both ways in (a); at the default the exact all-pairs check "
        "takes about a minute on 2 cores (default: %(default)s)",
    )
    parser.add_argument(
        "--count",
        type=int,
        default=52_000,
        help="instructions the Deduplicator decides in (b) (default: %(default)s, Alpaca's)",
    )
    parser.add_argument(
        "--similar-from",
        type=float,
        default=SIMILAR_FROM,
        help="the Deduplicator's similar_from: every pool instruction scoring at least this is "
        "scored and can be listed among the most similar; 0.7 decides only, lower costs more "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="random seed of the workload: the same seed, the same instructions in the same "
        "order (default: %(default)s)",
    )
    parser.add_argument(
        "--seeds",
        type=Path,
        default=None,
        help="the seed tasks the pool starts with, JSON lines with an 'instruction' field "
        "(default: self-instruct's 175, shipped in alpaca_serve/generation/data)",
    )
    parser.add_argument(
        "--short",
        action="store_true",
        help=f"a smoke run of a few seconds: --sample {SHORT_SAMPLE} --count {SHORT_COUNT}",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.short:
        args.sample, args.count = SHORT_SAMPLE, SHORT_COUNT
    if args.sample < 1 or args.count < 1:
        print("dedup: error: --sample and --count must be at least 1", file=sys.stderr)
        return 2
    if not 0 < args.similar_from <= 1:
        print("dedup: error: --similar-from must be above 0 and at most 1", file=sys.stderr)
        return 2
    seeds = read_seeds(args.seeds)
    workload = build_workload(max(args.sample, args.count), args.seed)
    print(
        f"{len(seeds)} seeds; a workload of {len(workload)} instructions (seed {args.seed}); "
        f"similar_from {args.similar_from:g}; {os.cpu_count()} CPUs"
    )

    # (a) The exact all-pairs check and the Deduplicator on the same sample.
    sample = workload[: args.sample]
    started = time.perf_counter()
    exact = exact_decisions(seeds, sample)
    exact_s = time.perf_counter() - started
    started = time.perf_counter()
    fast = [decision.kept for decision in deduplicate(seeds, sample, args.similar_from)]
    fast_s = time.perf_counter() - started
    identical = fast == exact
    print(
        f"(a) {len(sample)} instructions, decided both ways:\n"
        f"  exact all-pairs check {exact_s:.2f} s, Deduplicator {fast_s:.3f} s: "
        f"{exact_s / fast_s:.0f} times faster\n"
        f"  exact: kept {sum(exact)}, rejected {len(exact) - sum(exact)}; "
        f"Deduplicator: kept {sum(fast)}, rejected {len(fast) - sum(fast)}\n"
        f"  decisions identical: {'yes' if identical else 'NO'}"
    )
    if not identical:
        differ = [i for i, (a, b) in enumerate(zip(exact, fast, strict=True)) if a != b]
        print(
            f"dedup: {len(differ)} decisions differ, the first on {sample[differ[0]]!r} "
            f"(exact: {'kept' if exact[differ[0]] else 'rejected'})",
            file=sys.stderr,
        )

    # (b) The Deduplicator alone on the whole workload.
    started = time.perf_counter()
    decisions = list(deduplicate(seeds, workload[: args.count], args.similar_from))
    seconds = time.perf_counter() - started
    kept = sum(decision.kept for decision in decisions)
    print(
        f"(b) {args.count} instructions against the {len(seeds)} seeds: {seconds:.1f} s, "
        f"{args.count / seconds:.0f} instructions/s\n"
        f"  kept {kept}, rejected {args.count - kept}; "
        f"{spread(decisions, min(args.similar_from, THRESHOLD), THRESHOLD)}"
    )
    return 0 if identical else 1


def deduplicate(
    seeds: list[str], instructions: list[str], similar_from: float
) -> Iterator[Decision]:
    """Each instruction's Decision, offered in order to a Deduplicator holding the seeds."""
    dedup = Deduplicator(similar_from=similar_from)
    for seed in seeds:
        dedup.add(seed)
    for instruction in instructions:
        yield dedup.offer(instruction)


def spread(decisions: list[Decision], floor: float, threshold: float) -> str:
    """How many decisions had a maximum score below the floor (none listed), from the floor to
    the threshold, and above it (rejected)."""
    scores = [decision.max_score for decision in decisions]
    below = sum(score < floor for score in scores)
    above = sum(score > threshold for score in scores)
    middle = f"[{floor:g}, {threshold:g}]" if floor < threshold else f"= {threshold:g}"
    return (
        f"max score < {floor:g}: {below}, {middle}: {len(scores) - below - above}, "
        f"> {threshold:g}: {above}"
    )


def read_seeds(path: Path | None) -> list[str]:
    """The seed tasks' instructions."""
    if path is None:
        path = PACKAGED_SEEDS
    return [record.fields["instruction"] for record in read_raw_records(path)]


def read_material() -> tuple[list[str], list[str]]:
    """The shipped data's distinct instructions, and the sentences of its answers and inputs."""
    instructions: list[str] = []
    texts: list[str] = []
    files = sorted(SAMPLE_DATA.glob("*.json*")) + sorted(EVALUATION_DATA.glob("*.jsonl"))
    for path in files:
        for record in read_raw_records(path):
            fields = record.fields
            if isinstance(fields.get("instruction"), str):
                instructions.append(fields["instruction"])
            elif isinstance(fields.get("prompt"), str):  # preference pairs: Alpaca's prompt
                found = re.search(r"### Instruction:\n(.*?)\n\n###", fields["prompt"], re.S)
                if found:
                    instructions.append(found.group(1))
            for name in ("input", "output", "response", "chosen", "rejected"):
                if isinstance(fields.get(name), str):
                    texts.append(fields[name])
            for instance in fields.get("instances") or []:
                texts += [instance.get("input", ""), instance.get("output", "")]
    sentences = {
        sentence.strip()
        for text in texts
        for sentence in re.split(r"(?<=[.!?])\s+|\n+", text)
        if 4 <= len(sentence.split()) <= 30
    }
    distinct = dict.fromkeys(i.strip() for i in instructions if i.strip())
    return list(distinct), sorted(sentences)


def build_workload(count: int, seed: int) -> list[str]:
    """`count` instructions: the shipped ones spread at random through new ones and
    near-duplicates (see the module docstring), the same for the same seed."""
    instructions, sentences = read_material()
    rng = random.Random(seed)
    real = rng.sample(instructions, len(instructions))
    phrases = [sentence.split() for sentence in sentences]
    known = [instruction.split() for instruction in instructions]  # as words
    workload: list[str] = []
    while len(workload) < count:
        left = count - len(workload)
        draw = rng.random()
        if real and rng.random() < len(real) / left:
            workload.append(real.pop())
        elif draw < 0.35 or not workload:
            workload.append(splice(rng.choice(known), rng.choice(known), rng))
        elif draw < 0.67:
            head = rng.choice(known)[: rng.randint(2, 5)]
            phrase = rng.choice(phrases)
            start = rng.randrange(len(phrase))
            workload.append(" ".join(head + phrase[start : start + rng.randint(3, 12)]))
        else:
            workload.append(perturb(rng.choice(workload), known, rng))
    return workload


def splice(a: list[str], b: list[str], rng: random.Random) -> str:
    """The head of one instruction and the tail of another, cut at words near their middles."""
    cut_a = max(1, round(len(a) * rng.uniform(0.3, 0.7)))
    cut_b = min(len(b) - 1, round(len(b) * rng.uniform(0.3, 0.7)))
    return " ".join(a[:cut_a] + b[cut_b:])


def perturb(instruction: str, known: list[list[str]], rng: random.Random) -> str:
    """A near-duplicate: one to three edits of words, or of case and punctuation (words put in
    are taken from the `known` instructions)."""
    words = instruction.split()
    for _ in range(rng.choice((1, 1, 1, 2, 2, 3))):
        edit = rng.randrange(6)
        at = rng.randrange(len(words))
        if edit == 0 and len(words) > 1:  # swap two neighbours
            at = min(at, len(words) - 2)
            words[at], words[at + 1] = words[at + 1], words[at]
        elif edit == 1 and len(words) > 3:  # drop a word
            del words[at]
        elif edit == 2:  # replace a word with one from elsewhere
            words[at] = rng.choice(rng.choice(known))
        elif edit == 3:  # case and punctuation
            words[at] = words[at].upper() if rng.random() < 0.5 else words[at] + ","
        elif edit == 4:  # keep most of it, end as another one does
            other = rng.choice(known)
            keep = max(1, round(len(words) * rng.uniform(0.7, 0.9)))
            words = words[:keep] + other[len(other) - max(1, len(words) - keep) :]
        else:  # a word inserted
            words.insert(at, rng.choice(rng.choice(known)))
    return " ".join(words)


if __name__ == "__main__":
    sys.exit(main())
