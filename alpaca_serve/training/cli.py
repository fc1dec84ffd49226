"""`alpaca-train`: the command, and `fine_tune`, the same run called as a library.

Usage:
    alpaca-train --help                                        # every option
    torchrun --nproc_per_node 8 -m alpaca_serve.training.cli --model ./llama-7b --data d.json ...

    from alpaca_serve.training.args import parse_args
    from alpaca_serve.training.cli import fine_tune
    summary = fine_tune(parse_args(["--model", "./base", "--data", "d.json", "--out", "out"]))

`fine_tune` checks the paths and data, then trains SFT (train.py), DPO (dpo.py) or KTO (kto.py)
by `args.train.method`; bad input raises ArgsError, DataFormatError or TrainError, one line each.
`main` turns those into `alpaca-train: error: ...` and exit status 2; SIGTERM or Ctrl-C during
training (torchrun sends SIGTERM to every process when one fails) into one line naming the
checkpoint `--resume` continues from, and exit status 128 + the signal's number; a full disk
(checkpoints, output folder, alpaca_train.json) into one line naming the cause, the output folder
and that checkpoint, after removing what was half-written, and exit status 74 (FULL_DISK_EXIT).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from alpaca_serve.core.default_model import (
    DEFAULT_MODEL_NAME,
    convert_command,
    default_model_folder,
    is_converted,
)
from alpaca_serve.core.full_disk import FULL_DISK_EXIT
from alpaca_serve.training.args import PROG, AlpacaTrainArgs, ArgsError, parse_args
from alpaca_serve.training.data import DataFormatError
from alpaca_serve.training.dpo import load_dpo_pairs, train_dpo
from alpaca_serve.training.kto import load_kto_examples, train_kto
from alpaca_serve.training.train import (
    DiskFull,
    TrainError,
    TrainingStopped,
    TrainSummary,
    check_paths,
    check_sharding,
    check_trackers,
    load_training_data,
    log,
    stops_on_full_disk,
    train,
)

__all__ = ["ArgsError", "DataFormatError", "DiskFull", "TrainError", "fine_tune", "main"]


def fine_tune(args: AlpacaTrainArgs) -> TrainSummary:
    """One `alpaca-train` run from parsed arguments; what it did."""
    if args.train.model is None:
        args.train.model = default_model()
    check_sharding(args)
    check_paths(args)
    with stops_on_full_disk(args):
        return train_by_method(args)


def train_by_method(args: AlpacaTrainArgs) -> TrainSummary:
    """Load the data and train SFT, DPO or KTO, as `args.train.method` says."""
    if args.train.method == "dpo":
        data = load_dpo_pairs(args)
        check_trackers(args.train.trackers)
        return train_dpo(args, data)
    if args.train.method == "kto":
        answers = load_kto_examples(args)
        check_trackers(args.train.trackers)
        return train_kto(args, answers)
    assert args.data.data is not None  # required: AlpacaTrainArgs refuses to be built without it
    records, skipped, files = load_training_data(args.data.data, args.data.skip_invalid)
    log(
        f"data: {len(records)} records from "
        + ", ".join(f"{item.path} ({item.records})" for item in files)
        + (f", {skipped} invalid skipped" if args.data.skip_invalid else "")
    )
    check_trackers(args.train.trackers)
    return train(args, records, skipped, files)


def default_model() -> Path:
    """The bundled default model's folder, converted on first use as the server does it."""
    folder = default_model_folder()
    if not is_converted(folder):
        log(f"no --model: converting the bundled {DEFAULT_MODEL_NAME} into {folder} (once)")
        code = subprocess.run(convert_command(folder), check=False).returncode
        if code != 0 or not is_converted(folder):
            raise TrainError(
                f"no --model, and converting the bundled {DEFAULT_MODEL_NAME} into {folder} "
                f"failed (exit code {code}); run alpaca-convert to see why"
            )
    log(f"no --model: the bundled {DEFAULT_MODEL_NAME} in {folder}")
    return folder


def main(argv: list[str] | None = None) -> int:
    """Run `alpaca-train`; returns the exit status."""
    try:
        fine_tune(parse_args(argv))
    except DiskFull as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return FULL_DISK_EXIT
    except (ArgsError, DataFormatError, TrainError) as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    except TrainingStopped as stop:
        print(f"{PROG}: {stop}", file=sys.stderr)
        return 128 + stop.signum
    return 0


if __name__ == "__main__":
    sys.exit(main())
