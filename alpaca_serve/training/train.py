"""Alpaca supervised fine-tuning, full or LoRA, on one process or many (`alpaca-train`'s SFT).

Usage:
    alpaca-train --model ./llama-7b --data alpaca_data.json --out ./alpaca-7b       # paper
    alpaca-train --model ./base --data data.jsonl --out out --lora --preset tiny \
        --max-steps 60                                       # LoRA, a short run
    torchrun --nproc_per_node 8 -m alpaca_serve.training.cli --model ./llama-7b --data
    alpaca_data.json \
        --out ./alpaca-7b --fsdp                      # 8 GPUs, FSDP full shard
    alpaca-train --method dpo --model ./alpaca-7b --data prefs.jsonl --out ./alpaca-7b-dpo
                                                            # preference training (dpo.py)
    alpaca-train --help                                     # every option

Steps, in order: check the arguments and every data record (a bad one stops the run here, before
any model is loaded, naming its index); load the tokenizer and give it EOS/[PAD] if it lacks them;
tokenize with the prompt masked; load the model (embeddings grown with mean rows for added
tokens); wrap it in LoRA adapters if asked; train with the Hugging Face Trainer, checkpointing to
OUTPUT_DIR/checkpoints; save a servable folder: weights (LoRA merged into plain HF weights),
tokenizer, and alpaca_train.json naming the prompt template and the arguments. Progress: a bar
of the optimizer steps and one line per logging step, on stderr; `--report-to` also sends the
logged metrics to experiment trackers (TensorBoard, W&B, MLflow, ...). Exit status 2 and one
`alpaca-train: error: ...` line for bad input, including a tracker that is not installed. A full
disk (stops_on_full_disk): what was half written is removed, and one line names the checkpoint
`--resume` continues from (exit status 74).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from alpaca_serve.core.full_disk import full_disk_cause
from alpaca_serve.core.prompts import TEMPLATE_NAME
from alpaca_serve.core.provenance import MADE_BY_TRAIN, TRAIN_INFO_FILE, made_at
from alpaca_serve.training.args import PROG, AlpacaTrainArgs, ArgsError
from alpaca_serve.training.data import (
    AlpacaRecord,
    DataFormatError,
    check_record,
    load_records,
    read_raw_records,
)
from alpaca_serve.training.tokenization import (
    PackCollator,
    PadCollator,
    add_missing_special_tokens,
    resize_embeddings,
    tokenize_records,
)

CHECKPOINT_DIR = "checkpoints"
BATCHES_DIR = "batches"  # --record-batches
ADAPTER_DIR = "adapter"
CONFIGS = Path(__file__).resolve().parent / "configs"


class TrainError(RuntimeError):
    """The run cannot go on; the message says why (shown as one `alpaca-train: error:` line)."""


@dataclass
class TrainSummary:
    """What a run did, for the last log line and alpaca_train.json."""

    global_step: int
    steps_this_run: int
    examples: int
    tokens: int
    seconds: float
    train_loss: float | None
    # (step, loss) at every logging step of this run: the loss curve alpaca_train.json keeps.
    loss_curve: list[tuple[int, float]] = field(default_factory=list)

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


def check_paths(args: AlpacaTrainArgs) -> None:
    """Fail fast, before any heavy import, on a missing model/data or a clash with old output."""
    # Required options: AlpacaTrainArgs refuses to be built without them.
    assert args.train.model is not None and args.data.data is not None
    assert args.train.output_dir is not None
    if not (args.train.model / "config.json").is_file():
        raise ArgsError(f"--model: no Hugging Face model (config.json) in {args.train.model}")
    for path in args.data.data:
        if not path.is_file():
            raise ArgsError(f"--data: file not found: {path}")
    if args.dpo.eval_data is not None and not args.dpo.eval_data.is_file():
        raise ArgsError(f"--eval-data: file not found: {args.dpo.eval_data}")
    checkpoints = args.train.output_dir / CHECKPOINT_DIR
    has_checkpoints = checkpoints.is_dir() and any(checkpoints.glob("checkpoint-*"))
    if has_checkpoints and args.train.resume is None:
        raise ArgsError(
            f"{checkpoints} already holds checkpoints: pass --resume to continue from the last "
            "one, or choose another --out"
        )
    if args.train.deepspeed is not None and importlib.util.find_spec("deepspeed") is None:
        raise ArgsError("--deepspeed needs the deepspeed package: pip install deepspeed")
    if args.train.resume not in (None, "last") and not Path(args.train.resume).is_dir():
        raise ArgsError(f"--resume: checkpoint folder not found: {args.train.resume}")


# Why sharding needs GPUs here: what running it on CPU over gloo did (docs/training.md has the
# runs). torch's FSDP2 itself trains on a CPU mesh; the Trainer cannot drive it there. DeepSpeed's
# ZeRO up to stage 2 (optimizer states and gradients sharded) trains on CPU, equal to one process;
# stage 3 (parameters sharded too) does not.
SHARDING_ON_CPU = {
    "fsdp": "--fsdp needs GPUs: on CPU the Trainer (accelerate) enables FSDP only for GPU "
    "process groups and would silently train plain data-parallel; on CPU, drop --fsdp "
    "(torchrun alone trains data-parallel over gloo)",
    "zero3": "--deepspeed with ZeRO stage 3 needs GPUs: on CPU its parameter sharding saw one "
    "process where torchrun started several ('train_batch_size is not equal to "
    "micro_batch_per_gpu * gradient_acc_step * world_size'), and once told of them trained a "
    "loss of 0.0 into NaN weights; on CPU, use deepspeed_zero2.json (ZeRO-2 trains here) or "
    "drop --deepspeed",
}


def zero_stage(config: Path) -> int:
    """The ZeRO stage a DeepSpeed config asks for (0 when it names none)."""
    try:
        settings = json.loads(config.read_text())
        stage = settings.get("zero_optimization", {}).get("stage", 0)
    except (OSError, ValueError, AttributeError) as error:
        raise ArgsError(f"--deepspeed: {config} is not a DeepSpeed JSON config: {error}") from None
    if stage not in (0, 1, 2, 3):
        raise ArgsError(f"--deepspeed: {config}: zero_optimization.stage is {stage!r}, not 0-3")
    return stage


def check_sharding(args: AlpacaTrainArgs) -> None:
    """--fsdp, and --deepspeed with ZeRO-3, on a machine without a GPU: one line saying why not,
    before any work. DeepSpeed on CPU is told so (DS_ACCELERATOR=cpu) unless the user chose."""
    if not args.train.fsdp and args.train.deepspeed is None:
        return
    stage = zero_stage(args.train.deepspeed) if args.train.deepspeed is not None else None
    import torch

    if torch.cuda.is_available():
        return
    if args.train.fsdp:
        raise ArgsError(SHARDING_ON_CPU["fsdp"])
    if stage == 3:
        raise ArgsError(SHARDING_ON_CPU["zero3"])
    os.environ.setdefault("DS_ACCELERATOR", "cpu")


# pip package of each tracker whose name is not its package's
TRACKER_PACKAGES = {"azure_ml": "azureml-core", "comet_ml": "comet-ml", "flyte": "flytekit"}


def check_trackers(trackers: list[str]) -> None:
    """Every --report-to tracker is one the Trainer knows and its package is installed."""
    if not trackers or trackers == ["all"]:
        return
    from transformers.integrations import (
        INTEGRATION_TO_CALLBACK,
        get_available_reporting_integrations,
    )

    installed = set(get_available_reporting_integrations())
    if importlib.util.find_spec("flytekit") is not None:  # a tracker the list above leaves out
        installed.add("flyte")
    for name in trackers:
        if name not in INTEGRATION_TO_CALLBACK:
            raise ArgsError(
                f"--report-to: unknown tracker {name!r}; the Trainer knows none, all, "
                f"{', '.join(sorted(INTEGRATION_TO_CALLBACK))}"
            )
    for name in trackers:
        if name not in installed:
            raise ArgsError(
                f"--report-to {name}: its package is not installed "
                f"(pip install {TRACKER_PACKAGES.get(name, name)})"
            )


@dataclass(frozen=True)
class DataFile:
    """One --data file as a run read it: for alpaca_train.json, so a run can be checked later."""

    path: Path
    sha256: str
    records: int  # the records taken from it (valid ones, with --skip-invalid)

    def as_json(self) -> dict[str, Any]:
        return {"path": str(self.path), "sha256": self.sha256, "records": self.records}


def load_training_data(
    paths: list[Path], skip_invalid: bool
) -> tuple[list[AlpacaRecord], int, list[DataFile]]:
    """The records of every file, in order, as one data set; how many invalid ones were dropped
    (with `skip_invalid`); and each file's hash and count."""
    records: list[AlpacaRecord] = []
    skipped = 0
    files = []
    for path in paths:
        taken, dropped = load_training_records(path, skip_invalid)
        records += taken
        skipped += dropped
        files.append(DataFile(path, file_sha256(path), len(taken)))
    return records, skipped, files


def file_sha256(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def source_commit() -> str | None:
    """The git commit of the code that runs, when it runs from a checkout ("+changes" when the
    checkout has uncommitted changes); None from an installed package."""
    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        if head.returncode != 0:
            return None
        changes = subprocess.run(
            ["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("+changes" if changes.stdout.strip() else "")


def load_training_records(path: Path, skip_invalid: bool) -> tuple[list[AlpacaRecord], int]:
    """All records of the file; with `skip_invalid`, the valid ones and how many were dropped."""
    if not skip_invalid:
        return load_records(path), 0
    records, skipped = [], 0

    def skip(err: DataFormatError) -> None:
        nonlocal skipped
        skipped += 1
        if skipped <= 5:
            log(f"skipping invalid record: {err}")

    for raw in read_raw_records(path, on_invalid=skip):
        try:
            records.append(check_record(raw))
        except DataFormatError as err:
            skip(err)
    if not records:
        raise DataFormatError(f"{path}: no valid records ({skipped} invalid)")
    return records, skipped


def train(
    args: AlpacaTrainArgs,
    records: list[AlpacaRecord],
    skipped: int,
    files: list[DataFile] | None = None,
) -> TrainSummary:
    """Tokenize, build the model, train and save; the whole run after the checks. `files`, the
    data files the records came from, go into alpaca_train.json with their hashes."""
    import torch

    out_dir = args.train.output_dir
    world_size = int(os.environ.get("WORLD_SIZE", "1"))  # set by torchrun / accelerate launch
    accumulation = args.train.gradient_accumulation_steps(world_size)
    torch.manual_seed(args.train.seed)

    # Tokenizer and tokens: all data problems surface here, before the model is loaded.
    tokenizer, added_tokens = load_tokenizer(args)
    assert args.data.model_max_length is not None  # AlpacaTrainArgs fills it from the preset
    examples, stats = tokenize_records(records, tokenizer, args.data.model_max_length)
    if args.train.record_batches:  # each example's record index, for the batch files
        dropped = set(stats.dropped_indices)
        kept = (index for index in range(len(records)) if index not in dropped)
        for example, index in zip(examples, kept, strict=True):
            cast(dict[str, Any], example)["record"] = index
    tokenizer.model_max_length = args.data.model_max_length  # saved with it, as the original did
    log(f"tokens: {stats.describe()} (max length {args.data.model_max_length})")
    if not examples:
        raise TrainError("no example has room for a response: raise --model-max-length")

    # The Trainer's arguments come before the model, as DeepSpeed ZeRO-3 needs.
    training_args = build_training_args(args, accumulation)
    model = load_model(args, tokenizer)

    trainer = build_trainer(args, model, tokenizer, examples, training_args)
    resume_from = find_resume_checkpoint(args)
    log(
        f"training: {'LoRA' if args.lora.lora else 'full fine-tuning'}, {world_size} process(es), "
        f"global batch {args.train.global_batch_size} = {args.train.micro_batch_size} x "
        f"{accumulation} accumulation x {world_size}, lr {args.train.learning_rate:g}"
        + (f", resuming from {resume_from}" if resume_from else "")
    )
    summary = run_training(trainer, args, resume_from, len(examples))

    # The servable folder: weights, tokenizer, alpaca_train.json.
    save_output(args, trainer, tokenizer, added_tokens)  # on every process: shards gather
    if trainer.is_world_process_zero():
        write_train_info(args, summary, stats, skipped, added_tokens, len(records), files=files)
        log(
            f"done: {summary.steps_this_run} steps, {summary.examples} examples, "
            f"{summary.tokens} tokens in {summary.seconds:.1f} s ({summary.tokens_per_second:.0f} "
            f"tokens/s), final loss {_fmt(summary.train_loss)}; servable: "
            f"alpaca-serve --model {out_dir}"
        )
    return summary


def run_training(
    trainer: Any, args: AlpacaTrainArgs, resume_from: str | None, examples: int
) -> TrainSummary:
    """Train with the progress bar and log lines on; what the run did, from its step clock.
    `examples` is the size of the training set (SFT examples or DPO pairs)."""
    end_check, progress_bar, log_lines, clock = make_callbacks()
    for callback in (end_check, progress_bar, log_lines, clock):
        trainer.add_callback(callback)
    try:
        try:
            with signals_stop_training():
                result = trainer.train(resume_from_checkpoint=resume_from)
        except BaseException:
            if progress_bar.bar is not None:
                progress_bar.bar.close()  # now, so that the bar ends before the line saying why
            raise
    except NothingLeftToTrain:
        # Resumed from the run's last checkpoint (it stopped while saving its output): the
        # Trainer would train one step past the end; the weights it loaded are the result.
        step, last = trainer.state.global_step, trainer.state.max_steps
        log(f"--resume: {resume_from} is step {step} of {last}: nothing left to train")
        return TrainSummary(step, 0, 0, 0, 0.0, None)
    except TrainingStopped as stop:
        stop.where = where_to_resume(args, trainer.state.global_step)
        raise
    except RuntimeError as err:
        if not is_lost_process(err):
            raise
        raise TrainError(
            f"process {os.environ.get('RANK', '0')} lost the other processes at step "
            f"{trainer.state.global_step} ({first_line(err)}): the run stops; "
            + where_to_resume(args, trainer.state.global_step)
        ) from err
    assert args.train.epochs is not None  # TrainArgs fills it from the preset
    return TrainSummary(
        global_step=clock.last_step,
        steps_this_run=clock.steps,
        # The last batch of an epoch may be short: cap at the examples the schedule holds.
        examples=min(
            clock.steps * args.train.global_batch_size, math.ceil(examples * args.train.epochs)
        ),
        tokens=int(clock.tokens),
        seconds=clock.seconds,
        train_loss=result.training_loss,
        loss_curve=[
            (entry["step"], entry["loss"])
            for entry in trainer.state.log_history
            if "loss" in entry and entry.get("step", 0) > clock.first_step
        ],
    )


class NothingLeftToTrain(Exception):
    """Raised by make_callbacks' end check when a resumed run's checkpoint is already at its
    last step: the Trainer has loaded it, and would otherwise train one step more."""


class TrainingStopped(BaseException):
    """SIGTERM or SIGINT during training (torchrun sends SIGTERM to every process when one
    fails). A BaseException, so that no `except Exception` inside the Trainer swallows it."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum
        self.where = ""  # filled by run_training: the checkpoint to resume from

    def __str__(self) -> str:
        return f"stopped by {signal.Signals(self.signum).name}; {self.where}"


@contextlib.contextmanager
def signals_stop_training() -> Iterator[None]:
    """Turn SIGTERM and SIGINT into TrainingStopped while training (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: Any) -> None:
        raise TrainingStopped(signum)

    previous = {signum: signal.signal(signum, stop) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


class DiskFull(TrainError):
    """The disk filled while the run wrote its checkpoints, output folder or provenance (shown as
    one `alpaca-train: error:` line, exit status FULL_DISK_EXIT)."""


@contextlib.contextmanager
def stops_on_full_disk(args: AlpacaTrainArgs) -> Iterator[None]:
    """Turn a full disk during the run into DiskFull, a line naming the cause, the output folder
    and the checkpoint `--resume` continues from. First removes what was half-written, so that
    nothing looks complete that is not: the checkpoint being saved (which --resume would skip
    anyway), and the files of the output folder that this run had (re)written."""
    out_dir = args.train.output_dir
    assert out_dir is not None  # required
    before = output_files(out_dir)
    try:
        yield
    except Exception as err:
        cause = full_disk_cause(err, out_dir)
        if cause is None:
            raise
        removed = [
            f"removed the half-written {path}"
            for path in remove_incomplete_checkpoints(out_dir / CHECKPOINT_DIR)
        ]
        unfinished = remove_unfinished_output(out_dir, before)
        if unfinished:
            removed.append(f"removed the half-written output ({len(unfinished)} files)")
        last = last_complete_checkpoint(out_dir / CHECKPOINT_DIR)
        resume = (
            f"run the same command with --resume to continue from {last}"
            if last is not None
            else "run the same command again (no checkpoint was complete)"
        )
        raise DiskFull(
            f"{cause} in {out_dir}: " + "; ".join([*removed, f"free space and {resume}"])
        ) from err


def output_files(out_dir: Path) -> dict[Path, tuple[int, int]]:
    """The files of the output folder, outside its checkpoints and batch records, with their
    modification time and size."""
    skip = {out_dir / CHECKPOINT_DIR, out_dir / BATCHES_DIR}
    files = {}
    for root, folders, names in os.walk(out_dir):
        folders[:] = [name for name in folders if Path(root, name) not in skip]
        for name in names:
            with contextlib.suppress(OSError):
                stat = Path(root, name).stat()
                files[Path(root, name)] = (stat.st_mtime_ns, stat.st_size)
    return files


def remove_incomplete_checkpoints(folder: Path) -> list[Path]:
    """Remove the checkpoint folders not saved to the end; the ones removed."""
    removed = [path for path in sorted(folder.glob("checkpoint-*")) if path.is_dir()]
    removed = [path for path in removed if not is_complete_checkpoint(path)]
    for path in removed:
        shutil.rmtree(path, ignore_errors=True)
    return removed


def remove_unfinished_output(out_dir: Path, before: dict[Path, tuple[int, int]]) -> list[Path]:
    """Remove the files of the output folder written since `before` (what output_files said when
    the run began) and the folders that leaves empty; the files removed."""
    removed = [path for path, seen in output_files(out_dir).items() if before.get(path) != seen]
    for path in removed:
        path.unlink(missing_ok=True)
    for folder in sorted({path.parent for path in removed}, key=lambda p: -len(p.parts)):
        if folder != out_dir and not any(folder.iterdir()):
            folder.rmdir()
    return removed


def where_to_resume(args: AlpacaTrainArgs, step: int) -> str:
    """What to tell a user whose run stopped at `step`: the checkpoint --resume continues from."""
    assert args.train.output_dir is not None  # required
    last = last_complete_checkpoint(args.train.output_dir / CHECKPOINT_DIR)
    if last is None:
        return f"no checkpoint was saved before step {step} (--save-steps {args.train.save_steps})"
    return f"run the same command with --resume to continue from {last}"


def is_lost_process(err: RuntimeError) -> bool:
    """Whether a collective step failed because another process died or hung (gloo or NCCL),
    rather than a bug in this one."""
    import torch.distributed as dist

    signs = ("Connection closed by peer", "Connection reset by peer", "Timed out")
    return isinstance(err, dist.DistError) or any(sign in str(err) for sign in signs)


def first_line(err: BaseException) -> str:
    """The error's first line, without a leading "[source file:line]" (gloo's), cut short."""
    lines = str(err).strip().splitlines()
    if not lines:
        return type(err).__name__
    text = lines[0]
    if text.startswith("[") and "] " in text:
        text = text.split("] ", 1)[1]
    return text[:160]


def load_tokenizer(args: AlpacaTrainArgs) -> tuple[Any, list[str]]:
    """The base model's tokenizer, right-padding, given EOS/pad if it lacks them; and the tokens
    added to its vocabulary (the model's embeddings must grow by as many rows)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(args.train.model))
    tokenizer.padding_side = "right"
    had_pad = bool(tokenizer.pad_token)
    assert args.lora.lora is not None  # AlpacaTrainArgs decides it by --method
    added_tokens = add_missing_special_tokens(tokenizer, pad_with_existing=args.lora.lora)
    if added_tokens:
        log(f"tokenizer: added {', '.join(added_tokens)} (embeddings grow with mean rows)")
    if not had_pad and tokenizer.pad_token not in added_tokens:
        log(f"tokenizer: pads with {tokenizer.pad_token} (no new row, so the adapter stays small)")
    if args.lora.lora and added_tokens:
        log(
            f"LoRA with new tokens ({', '.join(added_tokens)}): the adapter holds whole "
            "embedding matrices, so it can only be served merged"
        )
    return tokenizer, added_tokens


def build_training_args(
    args: AlpacaTrainArgs, accumulation: int, config_class: Any = None, **extra: Any
) -> Any:
    """The Hugging Face TrainingArguments for this run (or `config_class`, a subclass such as
    TRL's DPOConfig, given its own fields in `extra`; `extra` may also replace one of the
    fields set here, as KTO's sequential sampling does)."""
    import torch
    from transformers import TrainingArguments

    assert args.train.model is not None and args.train.output_dir is not None  # required
    precision = args.train.precision
    if precision == "auto":
        bf16_ok = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        precision = "bf16" if bf16_ok else "fp32"
    fsdp_config = fsdp_settings(args) if args.train.fsdp else None
    fields: dict[str, Any] = dict(
        output_dir=str(args.train.output_dir / CHECKPOINT_DIR),
        per_device_train_batch_size=args.train.micro_batch_size,
        gradient_accumulation_steps=accumulation,
        learning_rate=args.train.learning_rate,
        num_train_epochs=args.train.epochs,
        max_steps=args.train.max_steps or -1,
        warmup_steps=args.train.warmup_ratio,  # a float below 1 is a ratio of the total steps
        lr_scheduler_type=args.train.lr_scheduler,
        weight_decay=args.train.weight_decay,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        gradient_checkpointing=args.train.gradient_checkpointing,
        fsdp=args.train.fsdp,
        fsdp_config=fsdp_config,
        deepspeed=str(args.train.deepspeed) if args.train.deepspeed else None,
        logging_steps=args.train.logging_steps,
        logging_first_step=True,
        save_steps=args.train.save_steps,
        save_total_limit=args.train.save_total_limit,
        seed=args.train.seed,
        train_sampling_strategy="group_by_length" if args.data.group_by_length else "random",
        include_num_input_tokens_seen="non_padding",
        remove_unused_columns=False,
        dataloader_pin_memory=torch.cuda.is_available(),
        # Without a GPU, torchrun's processes train data-parallel on CPU over gloo; without
        # use_cpu the Trainer would see no device to be distributed over and each process would
        # train alone on the whole data.
        use_cpu=not torch.cuda.is_available(),
        ddp_timeout=args.train.ddp_timeout,
        ddp_find_unused_parameters=False,  # every weight gets a gradient (or none, frozen)
        report_to=args.train.trackers or "none",  # names checked by check_trackers
        disable_tqdm=True,  # the Trainer's own bar prints log dicts; make_callbacks has ours
    )
    return (config_class or TrainingArguments)(**{**fields, **extra})


def fsdp_settings(args: AlpacaTrainArgs) -> dict[str, Any]:
    """The Trainer's fsdp_config: the shipped one (FSDP2, full state dict gathered for saving),
    --fsdp's words applied, the layer class to wrap from the model or the flag."""
    assert args.train.model is not None and args.train.fsdp is not None  # checked by the caller
    config = json.loads((CONFIGS / "fsdp_config.json").read_text())
    words = args.train.fsdp.split()
    config["reshard_after_forward"] = "shard_grad_op" not in words
    config["cpu_offload"] = "offload" in words
    layer = args.train.fsdp_transformer_layer_cls_to_wrap
    classes = decoder_layer_classes(args.train.model)
    if layer is not None:
        if layer not in classes and layer not in model_module_classes(args.train.model):
            raise ArgsError(
                f"--fsdp-transformer-layer-cls-to-wrap: {layer} is not a class of this model "
                f"(its decoder layer is {', '.join(classes)})"
            )
        classes = [layer]
    config["transformer_layer_cls_to_wrap"] = classes
    return config


def model_module_classes(model_dir: Path) -> set[str]:
    """The class names of the model's modeling module (no weights loaded)."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    model_class = MODEL_FOR_CAUSAL_LM_MAPPING[type(AutoConfig.from_pretrained(str(model_dir)))]
    module = sys.modules[model_class.__module__]
    return {name for name, value in vars(module).items() if isinstance(value, type)}


def decoder_layer_classes(model_dir: Path) -> list[str]:
    """The decoder layer class names FSDP wraps, read from the model class (no weights loaded)."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    config = AutoConfig.from_pretrained(str(model_dir))
    classes = list(
        getattr(MODEL_FOR_CAUSAL_LM_MAPPING[type(config)], "_no_split_modules", None) or []
    )
    if not classes:
        raise TrainError(f"cannot tell the decoder layer class of {model_dir} for FSDP auto-wrap")
    return classes


def load_model(args: AlpacaTrainArgs, tokenizer: Any, wrap_lora: bool = True) -> Any:
    """The base model in float32, embeddings grown for added tokens, LoRA-wrapped if asked
    (unless `wrap_lora` is False: DPO hands the LoRA config to its trainer instead)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(args.train.model), dtype=torch.float32)
    resize_embeddings(model, len(tokenizer))
    align_special_tokens(model, tokenizer)
    model.config.use_cache = False  # no KV cache while training (and packing needs none)
    if args.lora.lora and wrap_lora:
        model = apply_lora(model, args)
    return model


def align_special_tokens(model: Any, tokenizer: Any) -> None:
    """Make the model's config and generation config name the tokenizer's EOS and pad ids."""
    for config in (model.config, getattr(model, "generation_config", None)):
        if config is not None:
            config.eos_token_id = tokenizer.eos_token_id
            config.pad_token_id = tokenizer.pad_token_id


def apply_lora(model: Any, args: AlpacaTrainArgs) -> Any:
    """Freeze the model and add LoRA adapters to the target modules (peft)."""
    from peft import get_peft_model

    try:
        model = get_peft_model(model, lora_config(args))
    except ValueError as err:
        raise TrainError(f"--lora-target-modules: {err}") from err
    trainable, total = model.get_nb_trainable_parameters()
    log(f"LoRA: {trainable:,} trainable of {total:,} parameters ({100 * trainable / total:.2f}%)")
    return model


def lora_config(args: AlpacaTrainArgs) -> Any:
    """The peft LoraConfig of the LoRA options."""
    from peft import LoraConfig

    return LoraConfig(
        r=args.lora.lora_r,
        lora_alpha=args.lora.lora_alpha,
        lora_dropout=args.lora.lora_dropout,
        target_modules=list(args.lora.lora_target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )


def build_trainer(
    args: AlpacaTrainArgs, model: Any, tokenizer: Any, examples: list, training_args: Any
) -> Any:
    """A Hugging Face Trainer over the tokenized examples, without its own printing (the callbacks
    of make_callbacks show a progress bar and one line per log step instead)."""
    from transformers import Trainer
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    collator: Any = PackCollator() if args.data.packing else PadCollator(tokenizer.pad_token_id)
    trainer_class = Trainer
    if args.train.record_batches:
        assert args.train.output_dir is not None  # required
        collator = RecordIndices(collator)
        trainer_class = batch_recording_trainer(args.train.output_dir / BATCHES_DIR)
        if args.train.resume is None:  # a new run: this process's file starts empty
            own = args.train.output_dir / BATCHES_DIR / f"rank-{training_args.process_index}.jsonl"
            own.unlink(missing_ok=True)
    trainer = trainer_class(
        model=model,
        args=training_args,
        train_dataset=examples,
        data_collator=collator,
        processing_class=tokenizer,
    )
    for callback in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(callback)
    return trainer


class RecordIndices:
    """A collator that also hands on the data-record index of each example in the batch (its
    "record" key, which train() sets for --record-batches)."""

    def __init__(self, inner: Any):
        self.inner = inner

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        batch = self.inner(examples)
        batch["records"] = torch.tensor([example["record"] for example in examples])
        return batch


def batch_recording_trainer(folder: Path) -> Any:
    """A Trainer class that writes the record indices of every micro batch it trains on (not
    those a resumed run skips) to FOLDER/rank-N.jsonl, one line per micro batch, and trains on
    the batch without them."""
    from transformers import Trainer

    class BatchRecordingTrainer(Trainer):
        def training_step(self, model, inputs, num_items_in_batch=None):
            records = inputs.pop("records").tolist()
            folder.mkdir(parents=True, exist_ok=True)
            line = {"step": self.state.global_step + 1, "records": records}
            with (folder / f"rank-{self.args.process_index}.jsonl").open("a") as stream:
                stream.write(json.dumps(line) + "\n")
            return super().training_step(model, inputs, num_items_in_batch)

    return BatchRecordingTrainer


def find_resume_checkpoint(args: AlpacaTrainArgs) -> str | None:
    """The checkpoint to resume from: the one given, the newest for 'last', or none."""
    if args.train.resume is None:
        return None
    if args.train.resume != "last":
        return str(args.train.resume)
    from transformers.trainer_utils import get_last_checkpoint

    assert args.train.output_dir is not None  # required
    folder = args.train.output_dir / CHECKPOINT_DIR
    last = last_complete_checkpoint(folder)
    newest = get_last_checkpoint(str(folder)) if folder.is_dir() else None
    if newest is not None and newest != last:
        log(f"--resume: {newest} is incomplete (the run stopped while saving it): skipped")
    if last is None:
        log(f"--resume: no checkpoint in {folder} yet, starting from the beginning")
    return last


def last_complete_checkpoint(folder: Path) -> str | None:
    """The newest checkpoint-N in `folder` that was saved to the end, or None."""
    complete = [
        (int(path.name.split("-")[1]), path)
        for path in folder.glob("checkpoint-*")
        if path.name.split("-")[1].isdigit() and is_complete_checkpoint(path)
    ]
    return str(max(complete)[1]) if complete else None


def is_complete_checkpoint(path: Path) -> bool:
    """Whether the Trainer saved the checkpoint folder to the end: it writes trainer_state.json
    last, so a folder cut off while saving lacks it, or holds it cut short (a full disk)."""
    try:
        state = json.loads((path / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(state, dict) and "global_step" in state


def save_output(
    args: AlpacaTrainArgs, trainer: Any, tokenizer: Any, added_tokens: list[str]
) -> None:
    """Write the servable folder: plain HF weights (LoRA merged) and the tokenizer."""
    out_dir = args.train.output_dir
    assert out_dir is not None and args.train.model is not None  # required
    if not args.lora.lora:
        trainer.save_model(str(out_dir))  # gathers FSDP / ZeRO-3 shards into one model
        if trainer.is_world_process_zero():
            tokenizer.save_pretrained(str(out_dir))
        return
    trainer.save_model(str(out_dir / ADAPTER_DIR))
    if not trainer.is_world_process_zero():
        return
    tokenizer.save_pretrained(str(out_dir / ADAPTER_DIR))
    if args.lora.merge:
        merge_adapter(args.train.model, out_dir / ADAPTER_DIR, out_dir, tokenizer)
    elif added_tokens:
        log(
            f"adapter only (--no-merge) in {out_dir / ADAPTER_DIR}: it adds tokens, so it is "
            "servable only merged (train again without --no-merge)"
        )
    else:
        log(
            f"adapter only (--no-merge) in {out_dir / ADAPTER_DIR}: servable beside its base "
            f"(ALPACA_ADAPTERS_DIR=<folder holding {out_dir.name}>, "
            f"or ALPACA_ADAPTERS={out_dir.name}={out_dir})"
        )


def merge_adapter(base_dir: Path, adapter_dir: Path, out_dir: Path, tokenizer: Any) -> None:
    """Load the base model fresh, add the saved adapter, fold it in and save plain HF weights.

    Merging from the saved files (rather than the model in memory) works however training was
    sharded, and proves the adapter on disk is complete.
    """
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    resize_embeddings(base, len(tokenizer))
    align_special_tokens(base, tokenizer)
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    merged.config.use_cache = True
    merged.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
    log(f"LoRA merged into plain weights in {out_dir} (adapter kept in {adapter_dir})")


def write_train_info(
    args: AlpacaTrainArgs,
    summary: TrainSummary,
    stats: Any,
    skipped: int,
    added_tokens: list[str],
    records: int,
    extra: dict[str, Any] | None = None,
    files: list[DataFile] | None = None,
) -> None:
    """alpaca_train.json: the checkpoint describes itself (template, arguments, data and its
    hashes, result and loss curve, the code's commit).

    `extra` adds keys (DPO: the held-out pairs and the preference measurement)."""
    import transformers

    info = {
        "prompt_template": TEMPLATE_NAME,
        "made_by": MADE_BY_TRAIN,
        "created_at": made_at(),
        "base_model": str(args.train.model),
        # Which weights were trained ("method") and towards what ("objective", --method): next-
        # token loss on Alpaca outputs (sft) or preferred over rejected responses (dpo).
        "method": "lora" if args.lora.lora else "full",
        "objective": args.train.method,
        "merged": bool(args.lora.lora and args.lora.merge) or not args.lora.lora,
        # Whether OUTPUT_DIR/adapter can be served unmerged, beside its base (LoRA only): not
        # when tokens were added, as the adapter then carries whole embedding matrices.
        "adapter_servable_unmerged": bool(args.lora.lora and not added_tokens),
        "arguments": args.to_json(),
        "data": {
            "path": ", ".join(str(path) for path in args.data.data or []),
            "files": [item.as_json() for item in files or []],
            "records": records,
            "skipped_invalid": skipped,
            "examples": stats.examples,
            "truncated": stats.truncated,
            "dropped_no_target": stats.dropped_no_target,
            "tokens": stats.tokens,
        },
        "added_tokens": added_tokens,
        "result": {
            "global_step": summary.global_step,
            "train_loss": summary.train_loss,
            "seconds": round(summary.seconds, 2),
            "tokens": summary.tokens,
            "tokens_per_second": round(summary.tokens_per_second, 1),
            "loss_curve": [[step, round(loss, 6)] for step, loss in summary.loss_curve],
        },
        "commit": source_commit(),
        "transformers_version": transformers.__version__,
        **(extra or {}),
    }
    assert args.train.output_dir is not None  # required
    path = args.train.output_dir / TRAIN_INFO_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(info, indent=2) + "\n")


def make_callbacks() -> tuple[Any, Any, Any, Any]:
    """(end check, progress bar, progress lines, run clock): Trainer callbacks, defined here so
    transformers loads late."""
    from tqdm import tqdm  # type: ignore[import-untyped]  # no types-tqdm installed
    from transformers import TrainerCallback

    class EndCheck(TrainerCallback):
        """Stops a run resumed from a checkpoint at its last step before the Trainer's loop,
        which checks the step count only after training a step."""

        def on_train_begin(self, args, state, control, **kwargs):
            if state.max_steps > 0 and state.global_step >= state.max_steps:
                raise NothingLeftToTrain

    class ProgressBar(TrainerCallback):
        """A bar of the optimizer steps on stderr, with the last logged loss and learning rate."""

        bar: Any = None  # a tqdm bar from on_train_begin on

        def on_train_begin(self, args, state, control, **kwargs):
            self.bar = tqdm(
                total=state.max_steps,
                initial=state.global_step,
                unit="step",
                desc=f"{PROG}: training",
                file=sys.stderr,
                dynamic_ncols=True,
                disable=not state.is_world_process_zero,
            )

        def on_step_end(self, args, state, control, **kwargs):
            self.bar.update(state.global_step - self.bar.n)
            if state.global_step >= state.max_steps and not control.should_log:
                self.bar.close()  # done: before the last checkpoint's own progress bars

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                self.bar.set_postfix(
                    loss=f"{logs['loss']:.4f}", lr=f"{logs.get('learning_rate', 0.0):.2e}"
                )
            if state.global_step >= state.max_steps:
                self.bar.close()

        def on_train_end(self, args, state, control, **kwargs):
            self.bar.close()  # closing twice is harmless

    class LogLines(TrainerCallback):
        """One line per logging step: step, loss, learning rate, epoch, tokens/s, time left."""

        def on_train_begin(self, args, state, control, **kwargs):
            self.start = time.monotonic()
            self.first_step = state.global_step
            self.first_tokens = state.num_input_tokens_seen

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not state.is_world_process_zero or not logs or "loss" not in logs:
                return
            elapsed = time.monotonic() - self.start
            done = state.global_step - self.first_step
            left = (state.max_steps - state.global_step) * elapsed / done if done else 0.0
            tokens = state.num_input_tokens_seen - self.first_tokens
            # DPO's trainer also logs how often and by how much the adapter's implicit reward
            # (beta x log-ratio to the reference) ranks the chosen response above the rejected.
            rewards = ""
            if "rewards/margins" in logs and "rewards/accuracies" in logs:
                rewards = (
                    f" | reward accuracy {logs['rewards/accuracies']:.2f}, margin "
                    f"{logs['rewards/margins']:.3f}"
                )
            elif "kl" in logs:
                # KTO's: the mean implicit reward of this step's desirable and undesirable
                # answers (absent when the step had none of them) and its KL estimate.
                rewards = (
                    "".join(
                        f" | reward {name} {logs[key]:.3f}"
                        for name, key in (
                            ("desirable", "rewards/chosen"),
                            ("undesirable", "rewards/rejected"),
                        )
                        if key in logs
                    )
                    + f" | KL {logs['kl']:.3f}"
                )
            log(
                f"step {state.global_step}/{state.max_steps} | loss {logs['loss']:.4f}{rewards} | "
                f"lr {logs.get('learning_rate', 0.0):.2e} | epoch {state.epoch or 0:.2f} | "
                f"{tokens / max(elapsed, 1e-9):.0f} tokens/s | {elapsed:.0f} s, ~{left:.0f} s left"
            )

    class RunClock(TrainerCallback):
        """Measures this run (not the resumed part before it) for the summary."""

        def on_train_begin(self, args, state, control, **kwargs):
            self.start = time.monotonic()
            self.first_step = state.global_step
            self.first_tokens = state.num_input_tokens_seen

        def on_train_end(self, args, state, control, **kwargs):
            self.seconds = time.monotonic() - self.start
            self.steps = state.global_step - self.first_step
            self.last_step = state.global_step
            self.tokens = state.num_input_tokens_seen - self.first_tokens

    return EndCheck(), ProgressBar(), LogLines(), RunClock()


def log(message: str) -> None:
    """One progress line on stderr (only from the first process when distributed)."""
    if int(os.environ.get("RANK", "0")) == 0:
        from tqdm import tqdm

        tqdm.write(f"{PROG}: {message}", file=sys.stderr)  # above the progress bar, if one shows


def _fmt(value: float | None) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.4f}"
