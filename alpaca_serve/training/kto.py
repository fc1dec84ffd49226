"""Preference training of a LoRA adapter from single answers labelled good or bad (thumbs up and
down) with TRL's KTOTrainer: `alpaca-train --method kto`.

Usage:
    alpaca-export --format kto --out thumbs.jsonl          # the feedback store's thumbs
    alpaca-train --method kto --model ./alpaca-7b --data thumbs.jsonl --out ./alpaca-7b-kto
    alpaca-train --help                                    # every option

Kahneman-Tversky Optimization needs no pairs: each record is a prompt, one answer and a label
(true: desirable). As for DPO (training/dpo.py, whose steps this follows): every record is
checked before any model loads, a seeded share of the prompts is held out (or --eval-data read),
the reference is the base with the adapter switched off, and the output folder is the one of
`--lora` fine-tuning (adapter/, merged weights unless --no-merge, tokenizer, alpaca_train.json
with "objective": "kto") plus preference_eval.json.

The held-out measurement: log p(answer | prompt) of every held-out answer (the sum over its tokens
and EOS) under the base and under the trained adapter. Printed and saved: the mean over desirable
and over undesirable answers before and after, the gap between the two, and the share of answers
that moved the right way (desirable ones more likely than under the base, undesirable ones less).
The trainer shuffles nothing (KTO estimates its KL term from each micro batch's neighbours, in a
fixed order), so the records are shuffled here, seeded by --seed, before training.
"""

from __future__ import annotations

import json
import math
import os
import random
import sys
from dataclasses import asdict, dataclass, field
from typing import Any

from alpaca_serve.training.args import AlpacaTrainArgs
from alpaca_serve.training.data import DataFormatError
from alpaca_serve.training.dpo import (
    EVAL_FILE,
    PairStats,
    check_target_modules,
    describe_data,
    read_preference_file,
    response_logprobs,
    tokenize_response,
)
from alpaca_serve.training.preferences import (
    UnpairedExample,
    load_unpaired_examples,
    load_valid_unpaired_examples,
)
from alpaca_serve.training.train import (
    PROG,
    TrainError,
    TrainSummary,
    build_training_args,
    find_resume_checkpoint,
    load_model,
    load_tokenizer,
    log,
    lora_config,
    run_training,
    save_output,
    write_train_info,
)

__all__ = ["EVAL_FILE", "KtoData", "load_kto_examples", "train_kto"]


@dataclass
class KtoData:
    """The answers of a run: those trained on and those held out to measure."""

    train: list[UnpairedExample]
    held_out: list[UnpairedExample]
    held_out_source: str  # where the held-out answers come from, in words
    records: int  # valid records of --data
    skipped: int  # invalid records of --data dropped by --skip-invalid


@dataclass
class AnswerStats(PairStats):
    """What --model-max-length does to the training answers (PairStats' figures, so
    alpaca_train.json records the same names for every method)."""

    def describe(self) -> str:
        return (
            f"{self.examples} answers, {self.tokens} tokens; {self.truncated} truncated, "
            f"{self.dropped_no_target} dropped with no room left for the answer"
        )


@dataclass
class AnswerScores:
    """Log-probabilities a model gives held-out answers."""

    answers: int  # measured (answers whose prompt alone fills max_length are left out)
    desirable: int
    undesirable: int
    mean_desirable_logprob: float | None  # None without such answers
    mean_undesirable_logprob: float | None
    gap: float | None  # desirable minus undesirable
    logprobs: list[float] = field(default_factory=list, repr=False)  # per measured answer
    labels: list[bool] = field(default_factory=list, repr=False)  # theirs, in the same order


def load_kto_examples(args: AlpacaTrainArgs) -> KtoData:
    """The training and held-out answers; every record checked (or, with --skip-invalid, the bad
    ones dropped and counted)."""
    read = read_preference_file(
        args, load_unpaired_examples, load_valid_unpaired_examples, "labelled answers"
    )
    desirable = sum(example.label for example in read.train)
    split = (
        f"{len(read.train)} to train on ({desirable} desirable, "
        f"{len(read.train) - desirable} undesirable), {len(read.held_out)} held out"
    )
    log(describe_data(args, read, "labelled answers", split))
    if len(read.train) < 2:
        assert args.data.data is not None  # read above
        raise DataFormatError(
            f"{args.data.data[0]}: KTO needs at least 2 answers to train on (its KL estimate "
            f"pairs each answer with another), got {len(read.train)}"
        )
    return KtoData(read.train, read.held_out, read.held_out_source, len(read.records), read.skipped)


def train_kto(args: AlpacaTrainArgs, data: KtoData) -> TrainSummary:
    """Measure, train the adapter with KTO, measure again and save; the run after the checks."""
    import datasets
    import torch
    from transformers.trainer_callback import PrinterCallback, ProgressCallback
    from trl import KTOConfig, KTOTrainer

    out_dir = args.train.output_dir
    world_size = int(os.environ.get("WORLD_SIZE", "1"))  # set by torchrun / accelerate launch
    accumulation = args.train.gradient_accumulation_steps(world_size)
    max_length = args.data.model_max_length
    # --out is required; the rest are filled from the preset by the argument dataclasses.
    assert out_dir is not None and max_length is not None
    assert args.train.micro_batch_size is not None
    torch.manual_seed(args.train.seed)
    datasets.disable_progress_bars()  # its map/filter bars would print one line per pass

    tokenizer, added_tokens = load_tokenizer(args)
    tokenizer.model_max_length = max_length  # saved with it, as the SFT path does
    stats = count_answer_tokens(data.train, tokenizer, max_length)
    log(f"tokens: {stats.describe()} (max length {max_length})")
    if not stats.examples:
        raise TrainError("no answer has room after its prompt: raise --model-max-length")

    training_args = build_training_args(
        args,
        accumulation,
        config_class=KTOConfig,
        beta=args.dpo.beta,
        desirable_weight=args.dpo.desirable_weight,
        undesirable_weight=args.dpo.undesirable_weight,
        max_length=max_length,
        # KTO's KL term pairs each answer with its micro batch neighbour's: the trainer reads
        # the data in order, shuffled once below.
        train_sampling_strategy="sequential",
    )
    model = load_model(args, tokenizer, wrap_lora=False)
    check_target_modules(model, args.lora.lora_target_modules)
    model.to(training_args.device)

    before = measure_answers(
        model, tokenizer, data.held_out, max_length, args.train.micro_batch_size, "before"
    )

    shuffled = list(data.train)
    random.Random(args.train.seed).shuffle(shuffled)
    trainer = KTOTrainer(
        model=model,
        ref_model=None,
        args=training_args,
        train_dataset=datasets.Dataset.from_list([asdict(example) for example in shuffled]),
        processing_class=tokenizer,
        peft_config=lora_config(args),
    )
    for callback in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(callback)
    trainable, total = trainer.model.get_nb_trainable_parameters()
    log(f"LoRA: {trainable:,} trainable of {total:,} parameters ({100 * trainable / total:.2f}%)")
    resume_from = find_resume_checkpoint(args)
    log(
        f"training: KTO (beta {args.dpo.beta:g}, weights desirable "
        f"{args.dpo.desirable_weight:g} / undesirable {args.dpo.undesirable_weight:g}) of a LoRA "
        f"adapter, {world_size} process(es), global batch {args.train.global_batch_size} "
        f"answers = {args.train.micro_batch_size} x {accumulation} accumulation x {world_size}, "
        f"lr {args.train.learning_rate:g}"
        + (f", resuming from {resume_from}" if resume_from else "")
    )
    summary = run_training(trainer, args, resume_from, len(trainer.train_dataset))

    policy = trainer.accelerator.unwrap_model(trainer.model)
    after = measure_answers(
        policy, tokenizer, data.held_out, max_length, args.train.micro_batch_size, "after"
    )

    save_output(args, trainer, tokenizer, added_tokens)  # on every process: shards gather
    if trainer.is_world_process_zero():
        evaluation = answers_report(data, before, after)
        (out_dir / EVAL_FILE).write_text(json.dumps(evaluation, indent=2) + "\n")
        extra = {
            "preference_eval": {
                key: evaluation[key]
                for key in ("held_out_answers", "source", "before", "after", "moved_right_way")
            }
        }
        write_train_info(args, summary, stats, data.skipped, added_tokens, data.records, extra)
        for line in format_table(before, after):
            log(line)
        log(
            f"done: {summary.steps_this_run} steps, {summary.examples} answers, "
            f"{summary.tokens} tokens in {summary.seconds:.1f} s, final loss "
            f"{_fmt(summary.train_loss)}; measurement in {out_dir / EVAL_FILE}; servable: "
            f"alpaca-serve --model {out_dir}"
        )
    return summary


def count_answer_tokens(
    examples: list[UnpairedExample], tokenizer: Any, max_length: int
) -> AnswerStats:
    """Tokenize the answers as the trainer will, counting what `max_length` cuts and drops."""
    stats = AnswerStats()
    for example in examples:
        ids, start = tokenize_response(tokenizer, example.prompt, example.completion)
        if start >= max_length:
            stats.dropped_no_target += 1
            continue
        stats.examples += 1
        stats.truncated += len(ids) > max_length
        stats.tokens += min(len(ids), max_length)
    return stats


def measure_answers(
    model: Any,
    tokenizer: Any,
    examples: list[UnpairedExample],
    max_length: int,
    batch_size: int,
    label: str,
) -> AnswerScores | None:
    """log p(answer | prompt) of every held-out answer under `model`, and their means by label;
    None without answers. An answer whose prompt alone fills `max_length` is left out."""
    import torch
    from tqdm import tqdm  # type: ignore[import-untyped]  # no types-tqdm installed

    measured = []  # (ids, response start, label)
    for example in examples:
        ids, start = tokenize_response(tokenizer, example.prompt, example.completion)
        if start < max_length:
            measured.append((ids[:max_length], start, example.label))
    if not measured:
        return None
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    logprobs: list[float] = []
    bar = tqdm(
        range(0, len(measured), batch_size),
        desc=f"{PROG}: measuring answers ({label})",
        unit="batch",
        file=sys.stderr,
        dynamic_ncols=True,
        disable=int(os.environ.get("RANK", "0")) != 0,
    )
    with torch.inference_mode():
        for first in bar:
            batch = [(ids, start) for ids, start, _ in measured[first : first + batch_size]]
            logprobs += response_logprobs(model, batch, tokenizer.pad_token_id, device)
    bar.close()
    model.train(was_training)
    good = [value for value, (_, _, desirable) in zip(logprobs, measured, strict=True) if desirable]
    bad = [
        value for value, (_, _, desirable) in zip(logprobs, measured, strict=True) if not desirable
    ]
    mean_good = sum(good) / len(good) if good else None
    mean_bad = sum(bad) / len(bad) if bad else None
    return AnswerScores(
        answers=len(measured),
        desirable=len(good),
        undesirable=len(bad),
        mean_desirable_logprob=mean_good,
        mean_undesirable_logprob=mean_bad,
        gap=mean_good - mean_bad if mean_good is not None and mean_bad is not None else None,
        logprobs=logprobs,
        labels=[desirable for _, _, desirable in measured],
    )


def moved_right_way(before: AnswerScores | None, after: AnswerScores | None) -> float | None:
    """Share of the measured held-out answers the training moved the right way: a desirable one
    more likely than under the base, an undesirable one less. (Both measurements leave out the
    same answers, those with no room after their prompt, so the two lists line up.)"""
    if before is None or after is None:
        return None
    right = sum(
        (new > old) == desirable
        for old, new, desirable in zip(before.logprobs, after.logprobs, after.labels, strict=True)
    )
    return right / after.answers


def answers_report(
    data: KtoData, before: AnswerScores | None, after: AnswerScores | None
) -> dict[str, Any]:
    """preference_eval.json: where the held-out answers come from and both measurements."""

    def scores(value: AnswerScores | None) -> dict[str, Any] | None:
        if value is None:
            return None
        body = asdict(value)
        body["logprobs"] = [round(v, 4) for v in value.logprobs]  # per answer, in file order
        return body

    return {
        "held_out_answers": len(data.held_out),
        "source": data.held_out_source,
        "metrics": {
            "mean_desirable_logprob": "mean over the held-out answers labelled desirable of log "
            "p(answer | prompt), the sum over the answer's tokens and EOS (nats)",
            "mean_undesirable_logprob": "the same over the answers labelled undesirable",
            "gap": "mean_desirable_logprob - mean_undesirable_logprob",
            "moved_right_way": "share of held-out answers whose log-probability rose (desirable) "
            "or fell (undesirable) from before to after",
        },
        "before": scores(before),
        "after": scores(after),
        "moved_right_way": moved_right_way(before, after),
    }


def format_table(before: AnswerScores | None, after: AnswerScores | None) -> list[str]:
    """The measurement as a few aligned lines."""
    if before is None or after is None:
        return ["answer measurement: no held-out answers (--eval-fraction 0)"]

    def value(number: float | None, signed: bool = False) -> str:
        if number is None:
            return "n/a"
        return f"{number:+.3f}" if signed else f"{number:.3f}"

    rows = [
        (
            "mean log p(desirable)",
            value(before.mean_desirable_logprob),
            value(after.mean_desirable_logprob),
        ),
        (
            "mean log p(undesirable)",
            value(before.mean_undesirable_logprob),
            value(after.mean_undesirable_logprob),
        ),
        ("gap (nats)", value(before.gap, True), value(after.gap, True)),
    ]
    moved = moved_right_way(before, after)
    assert moved is not None  # both measured
    lines = [
        f"answers on {after.answers} held-out answers ({after.desirable} desirable, "
        f"{after.undesirable} undesirable):",
        f"  {'':23} {'before':>9} {'after':>9}",
    ]
    lines += [f"  {name:23} {b:>9} {a:>9}" for name, b, a in rows]
    lines.append(
        f"  moved the right way: {moved:.1%} of the answers (desirable up, undesirable down)"
    )
    return lines


def _fmt(value: float | None) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.4f}"
