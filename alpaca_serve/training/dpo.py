"""Preference training of a LoRA adapter with TRL's DPOTrainer: `alpaca-train --method dpo`.

Usage:
    alpaca-train --method dpo --model ./alpaca-7b --data prefs.jsonl --out ./alpaca-7b-dpo
    alpaca-train --method dpo --model ./base --data training/sample_data/preference_pairs.jsonl \
        --out out --preset tiny --max-steps 20 --no-merge       # a short run, adapter only
    alpaca-train --help                                          # every option

Steps, in order: read and check every pair (a bad record stops the run naming it, before any
model is loaded) and hold out a seeded share of the prompts (or read --eval-data); load the
tokenizer and count what --model-max-length cuts; load the base model; measure the held-out pairs
(preference accuracy: how often the chosen response is the more likely one; margin: the mean of
log p(chosen | prompt) - log p(rejected | prompt), each the sum over the response's tokens and
EOS); train a LoRA adapter with DPO, the reference being the same model with the adapter switched
off (no second copy in memory); measure again; save the folder exactly as `--lora` fine-tuning
does (adapter/, merged weights unless --no-merge, tokenizer, alpaca_train.json with
"objective": "dpo") plus preference_eval.json with both measurements. The two measurements are
also printed as a table. Progress: a bar over the measurement batches and over the optimizer
steps, and one line per logging step with the trainer's reward accuracy and margin.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from alpaca_serve.training.args import AlpacaTrainArgs
from alpaca_serve.training.data import DataFormatError
from alpaca_serve.training.preferences import (
    PreferencePair,
    load_preference_pairs,
    load_valid_preference_pairs,
    split_pairs,
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

EVAL_FILE = "preference_eval.json"


@dataclass
class DpoData:
    """The pairs of a run: those trained on and those held out to measure the preferences."""

    train: list[PreferencePair]
    held_out: list[PreferencePair]
    held_out_source: str  # where the held-out pairs come from, in words
    records: int  # valid records of --data
    skipped: int  # invalid records of --data dropped by --skip-invalid


@dataclass
class PairStats:
    """What --model-max-length does to the training pairs (the names of TokenizeStats, so
    alpaca_train.json records the same figures for both methods)."""

    examples: int = 0  # pairs kept
    truncated: int = 0  # kept, but at least one response cut at max_length
    dropped_no_target: int = 0  # the prompt alone fills max_length: dropped by the trainer
    tokens: int = 0  # prompt + chosen + prompt + rejected tokens over the kept pairs

    def describe(self) -> str:
        return (
            f"{self.examples} pairs, {self.tokens} tokens; {self.truncated} truncated, "
            f"{self.dropped_no_target} dropped with no room left for the responses"
        )


@dataclass
class PreferenceScores:
    """How a model ranks the responses of held-out pairs."""

    pairs: int  # measured (pairs whose prompt alone fills max_length are left out)
    accuracy: float  # share of pairs with log p(chosen) > log p(rejected)
    mean_margin: float  # mean of log p(chosen) - log p(rejected), in nats
    mean_chosen_logprob: float
    mean_rejected_logprob: float
    margins: list[float] = field(default_factory=list, repr=False)


@dataclass
class PreferenceFile:
    """The records of --data (pairs or labelled answers), split into training and held out."""

    records: list[Any]  # every valid record of --data
    train: list[Any]
    held_out: list[Any]
    held_out_source: str  # where the held-out records come from, in words
    skipped: int  # invalid records of --data dropped by --skip-invalid


def read_preference_file(
    args: AlpacaTrainArgs,
    load: Callable[[Path], list[Any]],
    load_valid: Callable[..., list[Any]],
    what: str,
) -> PreferenceFile:
    """--data's one file read with `load` (or, with --skip-invalid, `load_valid`, the bad records
    dropped and counted; `what` names the records when none is valid), and the held-out records:
    --eval-data read with `load`, or a seeded share of --data's prompts."""
    skipped = 0

    def skip(err: DataFormatError) -> None:
        nonlocal skipped
        skipped += 1
        if skipped <= 5:
            log(f"skipping invalid record: {err}")

    assert args.data.data is not None  # required: AlpacaTrainArgs refuses to be built without it
    [path] = args.data.data  # one file: AlpacaTrainArgs checks it for --method dpo and kto
    if args.data.skip_invalid:
        records = load_valid(path, on_invalid=skip)
        if not records:
            raise DataFormatError(f"{path}: no valid {what} ({skipped} invalid)")
    else:
        records = load(path)
    if args.dpo.eval_data is not None:
        train, held_out = records, load(args.dpo.eval_data)
        source = str(args.dpo.eval_data)
    else:
        train, held_out = split_pairs(records, args.dpo.eval_fraction, args.train.seed)
        source = (
            f"{args.dpo.eval_fraction:g} of the prompts of {path} held out (seed {args.train.seed})"
        )
    return PreferenceFile(records, train, held_out, source, skipped)


def describe_data(args: AlpacaTrainArgs, read: PreferenceFile, what: str, split: str) -> str:
    """The log line of the data read: how many `what` from where, and `split` (the training and
    held-out counts)."""
    assert args.data.data is not None
    return (
        f"data: {len(read.records)} {what} from {args.data.data[0]}"
        + (f", {read.skipped} invalid skipped" if args.data.skip_invalid else "")
        + f"; {split}"
        + (f" ({args.dpo.eval_data})" if args.dpo.eval_data is not None else "")
    )


def load_dpo_pairs(args: AlpacaTrainArgs) -> DpoData:
    """The training and held-out pairs; every record checked (or, with --skip-invalid, the bad
    ones dropped and counted)."""
    read = read_preference_file(
        args, load_preference_pairs, load_valid_preference_pairs, "preference pairs"
    )
    split = f"{len(read.train)} to train on, {len(read.held_out)} held out"
    log(describe_data(args, read, "preference pairs", split))
    return DpoData(read.train, read.held_out, read.held_out_source, len(read.records), read.skipped)


def train_dpo(args: AlpacaTrainArgs, data: DpoData) -> TrainSummary:
    """Measure, train the adapter with DPO, measure again and save; the run after the checks."""
    import datasets
    import torch
    from transformers.trainer_callback import PrinterCallback, ProgressCallback
    from trl import DPOConfig, DPOTrainer

    out_dir = args.train.output_dir
    world_size = int(os.environ.get("WORLD_SIZE", "1"))  # set by torchrun / accelerate launch
    accumulation = args.train.gradient_accumulation_steps(world_size)
    max_length = args.data.model_max_length
    # --out is required; the rest are filled from the preset by the argument dataclasses.
    assert out_dir is not None and max_length is not None
    assert args.train.micro_batch_size is not None
    torch.manual_seed(args.train.seed)
    datasets.disable_progress_bars()  # its map/filter bars would print one line per pass

    # Tokenizer and lengths: what --model-max-length cuts, before the model is loaded.
    tokenizer, added_tokens = load_tokenizer(args)
    tokenizer.model_max_length = max_length  # saved with it, as the SFT path does
    stats = count_pair_tokens(data.train, tokenizer, max_length)
    log(f"tokens: {stats.describe()} (max length {max_length})")
    if not stats.examples:
        raise TrainError("no pair has room for its responses: raise --model-max-length")

    # The trainer's arguments come before the model, as the SFT path does.
    training_args = build_training_args(
        args,
        accumulation,
        config_class=DPOConfig,
        beta=args.dpo.beta,
        max_length=max_length,
        truncation_mode="keep_start",
    )
    model = load_model(args, tokenizer, wrap_lora=False)
    check_target_modules(model, args.lora.lora_target_modules)
    model.to(training_args.device)

    # Before: the base model, which is what the reference stays throughout.
    before = measure_preferences(
        model, tokenizer, data.held_out, max_length, args.train.micro_batch_size, "before"
    )

    # DPO: the trainer wraps the model in a fresh LoRA adapter and, given no reference model,
    # computes the reference log-probabilities with that adapter switched off.
    trainer = DPOTrainer(
        model=model,
        ref_model=None,
        args=training_args,
        train_dataset=datasets.Dataset.from_list([asdict(pair) for pair in data.train]),
        processing_class=tokenizer,
        peft_config=lora_config(args),
    )
    for callback in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(callback)
    trainable, total = trainer.model.get_nb_trainable_parameters()
    log(f"LoRA: {trainable:,} trainable of {total:,} parameters ({100 * trainable / total:.2f}%)")
    resume_from = find_resume_checkpoint(args)
    log(
        f"training: DPO (beta {args.dpo.beta:g}) of a LoRA adapter, {world_size} process(es), "
        f"global batch {args.train.global_batch_size} pairs = {args.train.micro_batch_size} x "
        f"{accumulation} accumulation x {world_size}, lr {args.train.learning_rate:g}"
        + (f", resuming from {resume_from}" if resume_from else "")
    )
    summary = run_training(trainer, args, resume_from, len(trainer.train_dataset))

    # After: the trained adapter on, the same pairs.
    policy = trainer.accelerator.unwrap_model(trainer.model)
    after = measure_preferences(
        policy, tokenizer, data.held_out, max_length, args.train.micro_batch_size, "after"
    )

    # The folder of --lora fine-tuning, plus the measurement.
    save_output(args, trainer, tokenizer, added_tokens)  # on every process: shards gather
    if trainer.is_world_process_zero():
        evaluation = preference_report(data, before, after)
        (out_dir / EVAL_FILE).write_text(json.dumps(evaluation, indent=2) + "\n")
        extra = {
            "preference_eval": {
                key: evaluation[key] for key in ("held_out_pairs", "source", "before", "after")
            }
        }
        write_train_info(args, summary, stats, data.skipped, added_tokens, data.records, extra)
        for line in format_table(before, after):
            log(line)
        log(
            f"done: {summary.steps_this_run} steps, {summary.examples} pairs, "
            f"{summary.tokens} tokens in {summary.seconds:.1f} s, final loss "
            f"{_fmt(summary.train_loss)}; measurement in {out_dir / EVAL_FILE}; servable: "
            f"alpaca-serve --model {out_dir}"
        )
    return summary


def count_pair_tokens(pairs: list[PreferencePair], tokenizer: Any, max_length: int) -> PairStats:
    """Tokenize the pairs as the trainer will, counting what `max_length` cuts and drops."""
    stats = PairStats()
    for pair in pairs:
        chosen = tokenize_response(tokenizer, pair.prompt, pair.chosen)
        rejected = tokenize_response(tokenizer, pair.prompt, pair.rejected)
        prompt_len = min(chosen[1], rejected[1])
        if prompt_len >= max_length:
            stats.dropped_no_target += 1
            continue
        stats.examples += 1
        stats.truncated += len(chosen[0]) > max_length or len(rejected[0]) > max_length
        stats.tokens += min(len(chosen[0]), max_length) + min(len(rejected[0]), max_length)
    return stats


def tokenize_response(tokenizer: Any, prompt: str, response: str) -> tuple[list[int], int]:
    """(ids of prompt + response + EOS, where the response starts), as TRL's DPOTrainer does:
    EOS is appended as text, and the response starts where the prompt's own tokens and the
    whole's first differ (a token may merge across the boundary)."""
    prompt_ids = tokenizer(prompt)["input_ids"]
    ids = tokenizer(prompt + response + tokenizer.eos_token)["input_ids"]
    start = 0
    while start < min(len(prompt_ids), len(ids)) and prompt_ids[start] == ids[start]:
        start += 1
    return ids, start


def check_target_modules(model: Any, targets: list[str]) -> None:
    """Every --lora-target-modules name is a module of the model (checked here, as the trainer
    would fail on it with a long message)."""
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [target for target in targets if target not in names]
    if missing:
        raise TrainError(
            f"--lora-target-modules: {', '.join(missing)} not found in {type(model).__name__}"
        )


def measure_preferences(
    model: Any,
    tokenizer: Any,
    pairs: list[PreferencePair],
    max_length: int,
    batch_size: int,
    label: str,
) -> PreferenceScores | None:
    """Preference accuracy and mean log-probability margin of `model` on `pairs`; None without
    pairs. Sequences are cut at `max_length` as in training; a pair whose prompt alone fills it
    is left out."""
    import torch
    from tqdm import tqdm  # type: ignore[import-untyped]  # no types-tqdm installed

    if not pairs:
        return None
    sequences = []  # (ids, response start) for chosen, rejected, chosen, ...
    for pair in pairs:
        chosen_seq = tokenize_response(tokenizer, pair.prompt, pair.chosen)
        rejected_seq = tokenize_response(tokenizer, pair.prompt, pair.rejected)
        if min(chosen_seq[1], rejected_seq[1]) >= max_length:
            continue
        sequences += [
            (chosen_seq[0][:max_length], chosen_seq[1]),
            (rejected_seq[0][:max_length], rejected_seq[1]),
        ]
    if not sequences:
        return None
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    logprobs: list[float] = []
    rows = 2 * batch_size  # a batch holds both responses of batch_size pairs
    bar = tqdm(
        range(0, len(sequences), rows),
        desc=f"{PROG}: measuring preferences ({label})",
        unit="batch",
        file=sys.stderr,
        dynamic_ncols=True,
        disable=int(os.environ.get("RANK", "0")) != 0,
    )
    with torch.inference_mode():
        for first in bar:
            batch = sequences[first : first + rows]
            logprobs += response_logprobs(model, batch, tokenizer.pad_token_id, device)
    bar.close()
    model.train(was_training)
    chosen, rejected = logprobs[0::2], logprobs[1::2]
    margins = [c - r for c, r in zip(chosen, rejected, strict=True)]
    return PreferenceScores(
        pairs=len(margins),
        accuracy=sum(m > 0 for m in margins) / len(margins),
        mean_margin=sum(margins) / len(margins),
        mean_chosen_logprob=sum(chosen) / len(chosen),
        mean_rejected_logprob=sum(rejected) / len(rejected),
        margins=margins,
    )


def response_logprobs(
    model: Any, batch: list[tuple[list[int], int]], pad_id: int, device: Any
) -> list[float]:
    """Sum of log p(token | everything before it) over each sequence's response tokens."""
    import torch

    longest = max(len(ids) for ids, _ in batch)
    input_ids = torch.full((len(batch), longest), pad_id, dtype=torch.long)
    attention = torch.zeros((len(batch), longest), dtype=torch.long)
    response = torch.zeros((len(batch), longest), dtype=torch.bool)
    for row, (ids, start) in enumerate(batch):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        attention[row, : len(ids)] = 1
        response[row, start : len(ids)] = True
    input_ids, attention, response = input_ids.to(device), attention.to(device), response.to(device)
    logits = model(input_ids=input_ids, attention_mask=attention).logits.float()
    # Position t predicts token t + 1: logits [batch, length - 1, vocab] against ids shifted by 1.
    token_logprobs = torch.log_softmax(logits[:, :-1], dim=-1)
    token_logprobs = token_logprobs.gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    return (token_logprobs * response[:, 1:]).sum(dim=-1).tolist()


def preference_report(
    data: DpoData, before: PreferenceScores | None, after: PreferenceScores | None
) -> dict[str, Any]:
    """preference_eval.json: where the held-out pairs come from and both measurements."""

    def scores(value: PreferenceScores | None) -> dict[str, Any] | None:
        if value is None:
            return None
        body = asdict(value)
        body["margins"] = [round(m, 4) for m in value.margins]  # per pair, in the file's order
        return body

    return {
        "held_out_pairs": len(data.held_out),
        "source": data.held_out_source,
        "metrics": {
            "accuracy": "share of held-out pairs where the chosen response has the higher "
            "log-probability given the prompt",
            "mean_margin": "mean over pairs of log p(chosen | prompt) - log p(rejected | "
            "prompt), each the sum over the response's tokens and EOS (nats)",
        },
        "before": scores(before),
        "after": scores(after),
    }


def format_table(before: PreferenceScores | None, after: PreferenceScores | None) -> list[str]:
    """The measurement as a few aligned lines."""
    if before is None or after is None:
        return ["preference measurement: no held-out pairs (--eval-fraction 0)"]
    rows = [
        ("accuracy", f"{before.accuracy:.1%}", f"{after.accuracy:.1%}"),
        ("mean margin (nats)", f"{before.mean_margin:+.3f}", f"{after.mean_margin:+.3f}"),
        (
            "mean log p(chosen)",
            f"{before.mean_chosen_logprob:.3f}",
            f"{after.mean_chosen_logprob:.3f}",
        ),
        (
            "mean log p(rejected)",
            f"{before.mean_rejected_logprob:.3f}",
            f"{after.mean_rejected_logprob:.3f}",
        ),
    ]
    lines = [
        f"preferences on {after.pairs} held-out pairs:",
        f"  {'':20} {'before':>9} {'after':>9}",
    ]
    lines += [f"  {name:20} {b:>9} {a:>9}" for name, b, a in rows]
    return lines


def _fmt(value: float | None) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.4f}"
