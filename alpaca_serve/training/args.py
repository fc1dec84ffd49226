"""The arguments of `alpaca-train` as dataclasses: help beside each field, checks in __post_init__.

Usage:
    from alpaca_serve.training.args import parse_args
    args = parse_args(["--model", "./base", "--data", "alpaca_data.json", "--out", "out"])
    args.train.learning_rate, args.lora.r, args.data.model_max_length

Every field becomes a command-line option of the same name (`model_max_length` ->
`--model-max-length`). Fields left at None take their value from the `--preset` (the paper's
table for 7B and 13B; a small one for tiny test models), so an explicit option always wins.
This module imports no torch.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alpaca_serve.training.recipe import RECIPES, recipe_argv

PROG = "alpaca-train"


class ArgsError(ValueError):
    """A bad option value or combination; the message is shown as `alpaca-train: error: ...`."""


# Hyperparameters per preset. 7B and 13B are Stanford Alpaca's table (docs/training.md):
# global batch 128, max length 512, warmup ratio 0.03, cosine schedule, no weight decay.
# 4 per device x 8 accumulation x 4 GPUs = 128 in the original; the per-device batch is ours.
PRESETS: dict[str, dict[str, Any]] = {
    "7b": dict(
        global_batch_size=128,
        micro_batch_size=4,
        learning_rate=2e-5,
        epochs=3.0,
        model_max_length=512,
        warmup_ratio=0.03,
        lr_scheduler="cosine",
        weight_decay=0.0,
    ),
    "13b": dict(
        global_batch_size=128,
        micro_batch_size=4,
        learning_rate=1e-5,
        epochs=5.0,
        model_max_length=512,
        warmup_ratio=0.03,
        lr_scheduler="cosine",
        weight_decay=0.0,
    ),
    "tiny": dict(
        global_batch_size=8,
        micro_batch_size=4,
        learning_rate=1e-4,
        epochs=1.0,
        model_max_length=256,
        warmup_ratio=0.03,
        lr_scheduler="cosine",
        weight_decay=0.0,
    ),
}
# alpaca-lora's learning rate, used for --lora when no --learning-rate is given.
LORA_LEARNING_RATE = 3e-4
# --method dpo and kto: the LoRA learning rate when no --learning-rate is given, and the epochs
# that replace the preset's (preference training over-fits quickly; one pass is the common
# recipe).
DPO_LEARNING_RATE = 5e-5
DPO_EPOCHS = 1.0
METHODS = ("sft", "dpo", "kto")
# The methods that train a LoRA adapter against the base with the adapter off as the reference.
PREFERENCE_METHODS = ("dpo", "kto")


def _opt(default: Any = None, help: str = "", **extra: Any) -> Any:
    """A dataclass field with its help text (and argparse extras such as choices)."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help, **extra})
    return field(default=default, metadata={"help": help, **extra})


@dataclass
class DataArgs:
    """Where the examples come from and how they become tokens."""

    data: list[Path] | None = _opt(
        None,
        "Alpaca data: a JSON list or JSON lines of {instruction, input, output} (required); "
        "several files are read in the order given, as one data set; with --method dpo, one "
        "file of preference pairs {prompt, chosen, rejected}, prompt being the Alpaca prompt "
        "text (as alpaca-export --format dpo writes it), or {instruction, input, chosen, "
        "rejected}; with --method kto, one file of {prompt, completion, label} (label true "
        "for a desirable answer; as alpaca-export --format kto writes it), or {instruction, "
        "input, completion, label}",
        type=Path,
        metavar="FILE",
    )
    skip_invalid: bool = _opt(
        False, "drop records that are not valid Alpaca records (and count them) instead of stopping"
    )
    model_max_length: int | None = _opt(
        None,
        "tokens per example (prompt + output + EOS; with --method dpo, prompt + each response "
        "+ EOS); longer ones are truncated and counted (preset: 512)",
    )
    group_by_length: bool = _opt(
        False, "batch examples of similar length together: less padding, faster epochs"
    )
    packing: bool = _opt(
        False, "pack each micro batch into one padding-free row (position ids restart per example)"
    )

    def __post_init__(self) -> None:
        if isinstance(self.data, str | Path):  # one file, as a library caller may pass it
            self.data = [Path(self.data)]
        if self.model_max_length is not None and self.model_max_length < 2:
            raise ArgsError(f"--model-max-length must be at least 2, got {self.model_max_length}")
        if self.packing and self.group_by_length:
            raise ArgsError(
                "--packing and --group-by-length do not go together: packing has no padding to save"
            )


@dataclass
class LoraArgs:
    """LoRA adapters (peft); defaults are alpaca-lora's."""

    lora: bool | None = _opt(
        None,
        "train LoRA adapters instead of all weights (default: off for --method sft, on for "
        "--method dpo and kto, which need them)",
    )
    lora_r: int = _opt(8, "LoRA rank")
    lora_alpha: int = _opt(16, "LoRA scaling numerator: updates are scaled by alpha / r")
    lora_dropout: float = _opt(0.05, "dropout on the LoRA branch's input")
    lora_target_modules: list[str] = _opt(
        ["q_proj", "v_proj"], "module names that get adapters (e.g. q_proj k_proj v_proj o_proj)"
    )
    merge: bool = _opt(
        True,
        "with --lora: merge the adapters into the base weights and save plain HF weights "
        "(servable); the adapter alone is kept in OUTPUT_DIR/adapter",
    )

    def __post_init__(self) -> None:
        if self.lora_r < 1:
            raise ArgsError(f"--lora-r must be at least 1, got {self.lora_r}")
        if self.lora_alpha <= 0:
            raise ArgsError(f"--lora-alpha must be positive, got {self.lora_alpha}")
        if not 0 <= self.lora_dropout < 1:
            raise ArgsError(f"--lora-dropout must be in [0, 1), got {self.lora_dropout}")
        if not self.lora_target_modules:
            raise ArgsError("--lora-target-modules needs at least one module name")


# --fsdp's words, as the Trainer (and Alpaca's command line) spell them.
DEFAULT_FSDP = "full_shard auto_wrap"
FSDP_WORDS = ("full_shard", "shard_grad_op", "auto_wrap", "offload")


def check_fsdp_value(value: str) -> str:
    """--fsdp's value, checked: known words, one sharding strategy (full_shard when none)."""
    words = value.split()
    unknown = [word for word in words if word not in FSDP_WORDS]
    if unknown:
        raise ArgsError(
            f"--fsdp: unknown {', '.join(unknown)}; the words are {', '.join(FSDP_WORDS)} "
            f'(e.g. --fsdp "{DEFAULT_FSDP}")'
        )
    if {"full_shard", "shard_grad_op"} <= set(words):
        raise ArgsError("--fsdp: full_shard and shard_grad_op are two strategies: choose one")
    if "shard_grad_op" not in words and "full_shard" not in words:
        words.insert(0, "full_shard")
    return " ".join(dict.fromkeys(words))


@dataclass
class TrainArgs:
    """The model, the schedule and the hardware."""

    model: Path | None = _opt(
        None,
        "base model: a Hugging Face folder (default: the bundled SmolLM2-135M-Instruct, "
        "converted once into $ALPACA_CACHE_DIR or ~/.cache/alpaca-serve, as the server does)",
    )
    output_dir: Path | None = _opt(
        None,
        "where the servable model, alpaca_train.json and checkpoints/ go (default: "
        "runs/DATA-METHOD, DATA the first data file's name; --output-dir, the Trainer's name, "
        "works too)",
        flags=("--out", "--output-dir"),
    )
    method: str = _opt(
        "sft",
        "sft: supervised fine-tuning on Alpaca records; dpo: preference training (Direct "
        "Preference Optimization, TRL's DPOTrainer) of a LoRA adapter on pairs of a preferred "
        "and a rejected response, the base model (adapter off) being the reference; kto: the "
        "same from single answers labelled desirable or not (thumbs up and down; "
        "Kahneman-Tversky Optimization, TRL's KTOTrainer)",
        choices=METHODS,
    )
    recipe: str | None = _opt(
        None,
        "a named run whose options come first (later options win): alpaca, the project's "
        "Alpaca model (a LoRA of the default model on the shipped Alpaca data; see "
        "alpaca_serve/training/recipe.py and `make alpaca-model`)",
        choices=tuple(RECIPES),
    )
    preset: str = _opt(
        "7b",
        "hyperparameter defaults: 7b and 13b are the Alpaca paper's table, tiny is for "
        "small models and tests",
        choices=tuple(PRESETS),
    )
    global_batch_size: int | None = _opt(
        None,
        "examples per optimizer step over all processes (preset: 128); gradient "
        "accumulation = global / (micro batch x world size)",
    )
    micro_batch_size: int | None = _opt(None, "examples per forward pass per process (preset: 4)")
    learning_rate: float | None = _opt(
        None,
        f"peak learning rate (preset: 2e-5 for 7b; {LORA_LEARNING_RATE:g} with --lora; "
        f"{DPO_LEARNING_RATE:g} with --method dpo or kto)",
    )
    epochs: float | None = _opt(
        None, f"passes over the data (preset: 3; {DPO_EPOCHS:g} with --method dpo or kto)"
    )
    max_steps: int | None = _opt(None, "stop after this many optimizer steps (overrides --epochs)")
    warmup_ratio: float | None = _opt(
        None, "share of the steps spent warming the learning rate up (preset: 0.03)"
    )
    lr_scheduler: str | None = _opt(
        None,
        "learning-rate schedule after warm-up (preset: cosine)",
        choices=("cosine", "linear", "constant_with_warmup"),
    )
    weight_decay: float | None = _opt(None, "AdamW weight decay (preset: 0)")
    precision: str = _opt(
        "auto",
        "auto: bf16 mixed precision on a GPU that supports it, else fp32",
        choices=("auto", "bf16", "fp16", "fp32"),
    )
    gradient_checkpointing: bool = _opt(False, "recompute activations: less memory, ~30%% slower")
    fsdp: str | None = _opt(
        None,
        "shard with FSDP (GPUs; launch with torchrun or accelerate launch): alone, or with "
        'Alpaca\'s value "full_shard auto_wrap": every parameter, gradient and optimizer state '
        'sharded, one FSDP unit per decoder layer; "shard_grad_op auto_wrap" keeps the '
        'parameters gathered between forward and backward; add "offload" to keep them in CPU '
        "memory",
        nargs="?",
        const=DEFAULT_FSDP,
    )
    fsdp_transformer_layer_cls_to_wrap: str | None = _opt(
        None,
        "the layer class FSDP wraps (Alpaca's flag; default: read from the model, e.g. "
        "LlamaDecoderLayer)",
        flags=("--fsdp-transformer-layer-cls-to-wrap", "--fsdp_transformer_layer_cls_to_wrap"),
    )
    deepspeed: Path | None = _opt(
        None,
        "DeepSpeed config file: alpaca_serve/training/configs/deepspeed_zero2.json (GPUs or "
        "CPU), deepspeed_zero3.json, or deepspeed_zero3_offload.json (Alpaca's, optimizer and "
        "parameters in CPU memory; ZeRO-3 needs GPUs)",
    )
    ddp_timeout: int = _opt(
        600,
        "seconds a process waits for the others at a collective step before the run stops "
        "with an error (the process-group timeout; a process that dies is noticed at once)",
    )
    record_batches: bool = _opt(
        False,
        "write, from every process, the data-record indices of each micro batch it trains on "
        "to OUTPUT_DIR/batches/rank-N.jsonl (to audit the data order and its split across "
        "processes)",
    )
    logging_steps: int = _opt(10, "log loss and learning rate every N steps")
    report_to: str = _opt(
        "none",
        "experiment trackers that also get the logged metrics, as the transformers "
        "Trainer names them: none, all (every one installed), or a comma-separated list such as "
        "tensorboard,wandb (also mlflow, comet_ml, clearml, ...; TensorBoard writes to "
        "OUTPUT_DIR/checkpoints/runs)",
    )
    save_steps: int = _opt(200, "save a checkpoint every N steps (and at the end)")
    save_total_limit: int | None = _opt(2, "keep at most N checkpoints")
    resume: str | None = _opt(
        None,
        "continue from a checkpoint: a checkpoint folder, or 'last' for the newest complete "
        "one in OUTPUT_DIR/checkpoints (after a run stopped by a signal, a lost process or a "
        "full disk)",
        nargs="?",
        const="last",
    )
    seed: int = _opt(42, "random seed for initialisation, dropout and data order")

    def __post_init__(self) -> None:
        preset = dict(PRESETS[self.preset])
        if self.method in PREFERENCE_METHODS:
            preset["epochs"] = DPO_EPOCHS
        for name in (
            "global_batch_size",
            "micro_batch_size",
            "epochs",
            "warmup_ratio",
            "lr_scheduler",
            "weight_decay",
        ):
            if getattr(self, name) is None:
                setattr(self, name, preset[name])
        for name in ("global_batch_size", "micro_batch_size", "logging_steps", "save_steps"):
            if getattr(self, name) < 1:
                raise ArgsError(f"--{_flag(name)} must be at least 1, got {getattr(self, name)}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ArgsError(f"--max-steps must be at least 1, got {self.max_steps}")
        # Filled from the preset above.
        assert self.epochs is not None and self.warmup_ratio is not None
        assert self.global_batch_size is not None and self.micro_batch_size is not None
        if self.epochs <= 0:
            raise ArgsError(f"--epochs must be positive, got {self.epochs}")
        if not 0 <= self.warmup_ratio < 1:
            raise ArgsError(f"--warmup-ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.learning_rate is not None and self.learning_rate <= 0:
            raise ArgsError(f"--learning-rate must be positive, got {self.learning_rate}")
        if self.global_batch_size % self.micro_batch_size:
            raise ArgsError(
                f"--global-batch-size {self.global_batch_size} is not a multiple of "
                f"--micro-batch-size {self.micro_batch_size}"
            )
        if self.fsdp is not None:
            self.fsdp = check_fsdp_value(self.fsdp)
        elif self.fsdp_transformer_layer_cls_to_wrap is not None:
            raise ArgsError("--fsdp-transformer-layer-cls-to-wrap is for --fsdp")
        if self.fsdp and self.deepspeed is not None:
            raise ArgsError("--fsdp and --deepspeed are two ways to shard: choose one")
        if self.ddp_timeout < 1:
            raise ArgsError(f"--ddp-timeout must be at least 1 second, got {self.ddp_timeout}")
        self.report_to = ",".join(self.trackers) or "none"
        if self.deepspeed is not None and not self.deepspeed.is_file():
            raise ArgsError(f"--deepspeed: config file not found: {self.deepspeed}")

    @property
    def trackers(self) -> list[str]:
        """The tracker names of --report-to: [] for none, ["all"] for all; checked for form only
        (whether the Trainer knows them and they are installed is checked before training)."""
        names = [name.strip().lower() for name in self.report_to.split(",")]
        if any(not name for name in names):
            raise ArgsError(f"--report-to: empty tracker name in {self.report_to!r}")
        if len(names) > 1 and ({"none", "all"} & set(names)):
            raise ArgsError(f"--report-to: none and all stand alone, got {self.report_to!r}")
        return [] if names == ["none"] else list(dict.fromkeys(names))

    def gradient_accumulation_steps(self, world_size: int) -> int:
        """Micro batches per optimizer step on each process, so all of them add up to the global
        batch."""
        # Filled from the preset by __post_init__.
        assert self.global_batch_size is not None and self.micro_batch_size is not None
        per_step = self.micro_batch_size * world_size
        if self.global_batch_size % per_step:
            raise ArgsError(
                f"--global-batch-size {self.global_batch_size} is not a multiple of "
                f"--micro-batch-size {self.micro_batch_size} x {world_size} processes"
            )
        return self.global_batch_size // per_step


@dataclass
class DpoArgs:
    """Preference training (--method dpo or kto): the loss and the held-out measurement."""

    beta: float = _opt(
        0.1,
        "DPO or KTO beta: how strongly the model is held near the reference (the base, adapter "
        "off); higher stays closer, lower follows the preferences further",
    )
    eval_fraction: float = _opt(
        0.1,
        "share of the --data prompts held out (seeded by --seed; at least one) to measure the "
        "preferences before and after training (dpo: accuracy and log-probability margin; kto: "
        "log-probabilities of desirable and undesirable answers); 0: no held-out measurement",
    )
    eval_data: Path | None = _opt(
        None,
        "held-out records from their own file (same format as --data) instead of a split of --data",
    )
    desirable_weight: float = _opt(
        1.0,
        "--method kto: weight of the desirable answers' loss (raise it when they are few: KTO's "
        "authors keep desirable x weight / (undesirable x weight) between 1 and 4/3)",
    )
    undesirable_weight: float = _opt(1.0, "--method kto: weight of the undesirable answers' loss")

    def __post_init__(self) -> None:
        if self.beta <= 0:
            raise ArgsError(f"--beta must be positive, got {self.beta}")
        if not 0 <= self.eval_fraction < 1:
            raise ArgsError(f"--eval-fraction must be in [0, 1), got {self.eval_fraction}")
        for name in ("desirable_weight", "undesirable_weight"):
            if getattr(self, name) <= 0:
                raise ArgsError(f"--{_flag(name)} must be positive, got {getattr(self, name)}")


@dataclass
class AlpacaTrainArgs:
    """All of `alpaca-train`'s arguments, in their groups."""

    train: TrainArgs
    data: DataArgs
    lora: LoraArgs
    dpo: DpoArgs

    def __post_init__(self) -> None:
        if self.data.data is None:
            raise ArgsError("the following arguments are required: --data")
        if self.train.output_dir is None:
            self.train.output_dir = Path("runs") / f"{self.data.data[0].stem}-{self.train.method}"
        if self.train.method in PREFERENCE_METHODS:
            self._check_preferences()
        elif self.dpo.eval_data is not None:
            raise ArgsError("--eval-data is for --method dpo or kto")
        if self.train.method != "kto":
            for name in ("desirable_weight", "undesirable_weight"):
                if getattr(self.dpo, name) != 1.0:
                    raise ArgsError(f"--{_flag(name)} is for --method kto")
        if self.lora.lora is None:
            self.lora.lora = self.train.method in PREFERENCE_METHODS
        if self.data.model_max_length is None:
            self.data.model_max_length = PRESETS[self.train.preset]["model_max_length"]
        if self.train.learning_rate is None:
            preset_rate = PRESETS[self.train.preset]["learning_rate"]
            if self.train.method in PREFERENCE_METHODS:
                self.train.learning_rate = DPO_LEARNING_RATE
            else:
                self.train.learning_rate = LORA_LEARNING_RATE if self.lora.lora else preset_rate
        if self.lora.lora and self.train.fsdp:
            raise ArgsError(
                "--lora with --fsdp is not supported: use --deepspeed for LoRA on many "
                "GPUs, or train LoRA on one"
            )

    def _check_preferences(self) -> None:
        """--method dpo and kto train a LoRA adapter on unpacked records of one file."""
        method = self.train.method
        if self.lora.lora is False:
            raise ArgsError(
                f"--method {method} trains a LoRA adapter (the base with the adapter off is its "
                "reference model): drop --no-lora"
            )
        if self.data.data is not None and len(self.data.data) > 1:
            raise ArgsError(
                f"--method {method} reads one --data file of preference data, got "
                f"{len(self.data.data)}"
            )
        if method == "kto" and self.train.micro_batch_size == 1:
            raise ArgsError(
                "--method kto needs --micro-batch-size 2 or more: its KL estimate pairs each "
                "answer with another prompt's answer in the same micro batch"
            )
        for name, value in (
            ("packing", self.data.packing),
            ("group_by_length", self.data.group_by_length),
            ("record_batches", self.train.record_batches),
        ):
            if value:
                raise ArgsError(f"--{_flag(name)} is for --method sft only")
        if self.train.deepspeed is not None:
            raise ArgsError(
                f"--method {method} with --deepspeed is not supported yet: train on one GPU, or "
                "several with torchrun (data parallel)"
            )

    def to_json(self) -> dict[str, Any]:
        """The resolved arguments as JSON-ready groups, for alpaca_train.json."""
        return {name: _jsonable(dataclasses.asdict(getattr(self, name))) for name, _ in _KEYS}


GROUPS = (
    ("model and schedule", TrainArgs),
    ("data", DataArgs),
    ("LoRA", LoraArgs),
    ("preference training (--method dpo, kto)", DpoArgs),
)
_KEYS = (("train", TrainArgs), ("data", DataArgs), ("lora", LoraArgs), ("dpo", DpoArgs))


def build_parser() -> argparse.ArgumentParser:
    """The `alpaca-train` parser: one option per dataclass field, grouped as the dataclasses."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Alpaca supervised fine-tuning (full or LoRA) with the Hugging Face Trainer, "
        "or preference training of a LoRA adapter with TRL: --method dpo (pairs, DPOTrainer) "
        "or --method kto (thumbs up and down, KTOTrainer). "
        "The output folder is servable as is: alpaca-serve --model OUTPUT_DIR.",
        epilog="Many processes: torchrun --nproc_per_node 8 -m alpaca_serve.training.cli ... "
        "(data parallel; on CPU too, over gloo), with --fsdp on GPUs, or accelerate launch "
        "--config_file alpaca_serve/training/configs/fsdp.yaml -m alpaca_serve.training.cli "
        "... --fsdp. Two machines: torchrun --nnodes 2 --nproc-per-node N --rdzv-backend c10d "
        "--rdzv-endpoint HOST:PORT --rdzv-id RUN on each (see docs/training.md). Exit status: "
        "0 done; 2 bad input; 74 a full disk (free space, then the same command with --resume); "
        "128 + N stopped by signal N (143: SIGTERM).",
    )
    for title, cls in GROUPS:
        group = parser.add_argument_group(title)
        for f in dataclasses.fields(cls):
            _add_option(group, f)
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    return parser


def _version() -> str:
    from importlib.metadata import version

    return version("alpaca-serve")


def parse_args(argv: list[str] | None = None) -> AlpacaTrainArgs:
    """Parse the command line into the groups; raises ArgsError for a bad value or combination.

    argparse itself exits with status 2 for an unknown option or a malformed value.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    recipe = argparse.ArgumentParser(add_help=False)
    recipe.add_argument("--recipe", choices=tuple(RECIPES))
    known, _ = recipe.parse_known_args(argv)
    if known.recipe is not None:
        argv = recipe_argv(known.recipe) + argv
    namespace = vars(build_parser().parse_args(argv))
    groups: dict[str, Any] = {}
    for key, cls in _KEYS:
        groups[key] = cls(**{f.name: namespace[f.name] for f in dataclasses.fields(cls)})
    return AlpacaTrainArgs(**groups)


def _add_option(group: argparse._ArgumentGroup, f: dataclasses.Field) -> None:
    kind = _base_type(f.type)
    extra = {k: v for k, v in f.metadata.items() if k not in ("help", "flags")}
    default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    kwargs: dict[str, Any] = {"help": f.metadata["help"], "default": default, "dest": f.name}
    if kind is bool:
        kwargs["action"] = argparse.BooleanOptionalAction
    elif kind is list:
        kwargs.update(nargs="+", metavar="NAME")
    else:
        kwargs["type"] = kind
        kwargs["metavar"] = f.name.upper()
    kwargs.update(extra)
    if "choices" in kwargs:
        kwargs.pop("metavar", None)
    group.add_argument(*f.metadata.get("flags", [f"--{_flag(f.name)}"]), **kwargs)


def _base_type(annotation: Any) -> type:
    """The type argparse should call for a field annotated as `X | None` (as a string)."""
    names = {"int": int, "float": float, "str": str, "bool": bool, "Path": Path}
    text = annotation if isinstance(annotation, str) else str(annotation)
    first = text.split("|")[0].strip()
    if first.startswith("list"):
        return list
    return names[first]


def _flag(name: str) -> str:
    return name.replace("_", "-")


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value
