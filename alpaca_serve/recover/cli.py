"""The `alpaca-recover` command: make a weight diff, or recover a model from one.

Usage:
    alpaca-recover make-diff --raw llama-7b-hf --tuned alpaca-7b --out alpaca-7b-wdiff
    alpaca-recover recover --raw llama-7b-hf --diff alpaca-7b-wdiff --out alpaca-7b
    alpaca-recover recover --raw llama-7b-hf --diff alpaca-7b-wdiff --out alpaca-7b --dtype bfloat16

`recover` accepts the published `alpaca-7b-wdiff` (`.bin` shards, no manifest; the original's sum
check with its built-in expected value) and diffs made by `make-diff` (safetensors and a manifest
every tensor is checked against). See `recover/weight_diff.py` for the format.

Errors are one line, `alpaca-recover: error: ...`, exit status 2. A full disk is one line naming
the output folder and what was kept, exit status 74; once space is freed, the same command with
`--resume` checks the kept shards and writes the rest. Ctrl-C: exit status 130, nothing kept.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from alpaca_serve.core.full_disk import FULL_DISK_EXIT
from alpaca_serve.recover.weight_diff import (
    DEFAULT_MAX_SHARD_BYTES,
    OUTPUT_DTYPES,
    DiskFullError,
    WeightDiffError,
    make_diff,
    parse_size,
    recover,
)

PROG = "alpaca-recover"
EXIT_STATUSES = (
    "Exit status: 0 done; 2 bad input or a failed check; 74 a full disk (free space, then the "
    "same command with --resume); 130 interrupted."
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Make an Alpaca-style weight diff (tuned - raw, float32) or recover a model "
        "from one (raw + diff), one tensor at a time.",
        epilog=EXIT_STATUSES,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    make = commands.add_parser(
        "make-diff",
        help="write TUNED - RAW as a diff folder (weights, manifest, config, tokenizer)",
        description="Write the float32 difference TUNED - RAW per tensor, with the tuned model's "
        "config and tokenizer and a manifest of checksums that `recover` verifies.",
        epilog=EXIT_STATUSES,
    )
    make.add_argument("--raw", type=Path, required=True, help="base model folder (e.g. LLaMA-7B)")
    make.add_argument("--tuned", type=Path, required=True, help="fine-tuned model folder")
    make.add_argument("--out", type=Path, required=True, help="diff folder to write")

    rec = commands.add_parser(
        "recover",
        help="write RAW + DIFF as a Hugging Face model folder the server can load",
        description="Recover the tuned model as RAW + DIFF (float32 per tensor), with the diff's "
        "config and tokenizer; checked against the diff's manifest and/or the original's sum "
        "check before the output folder appears.",
        epilog=EXIT_STATUSES,
    )
    rec.add_argument("--raw", type=Path, required=True, help="base model folder (e.g. LLaMA-7B)")
    rec.add_argument("--diff", type=Path, required=True, help="weight diff folder")
    rec.add_argument("--out", type=Path, required=True, help="model folder to write")
    rec.add_argument(
        "--dtype",
        choices=OUTPUT_DTYPES,
        default="auto",
        help="dtype the weights are saved in, after the float32 arithmetic (default: auto, the "
        "tuned model's dtype per the manifest, float32 without one)",
    )
    rec.add_argument(
        "--expected-sum",
        type=float,
        help="expected sum of all tensor sums for the original's integrity check (default: from "
        "the manifest; 50637.1836 for the published 7B diff; otherwise no sum check)",
    )
    rec.add_argument(
        "--no-sum-check",
        action="store_true",
        help="skip the sum check (the per-tensor manifest check still runs)",
    )

    for sub in (make, rec):
        sub.add_argument(
            "--max-shard-size",
            type=_size,
            default=DEFAULT_MAX_SHARD_BYTES,
            metavar="SIZE",
            help="largest output shard, e.g. 2GB, 500MB, 1GiB (default: 2GiB); memory use does "
            "not depend on it",
        )
        again = sub.add_mutually_exclusive_group()
        again.add_argument(
            "--force",
            action="store_true",
            help="replace the output folder if it exists, and delete the partial output a run "
            "stopped by a full disk left",
        )
        again.add_argument(
            "--resume",
            action="store_true",
            help="continue the partial output a run stopped by a full disk left (a hidden "
            ".OUT.incomplete-* folder beside --out): its shards are checked against their "
            "recorded sha256 and kept, the rest is written and checked as always",
        )
        sub.add_argument("--no-progress", action="store_true", help="do not show the progress bar")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    try:
        if args.command == "make-diff":
            made = make_diff(
                args.raw,
                args.tuned,
                args.out,
                max_shard_bytes=args.max_shard_size,
                force=args.force,
                progress=not args.no_progress,
                resume=args.resume,
            )
            _print_resumed(made.resumed_shards)
            print(
                f"wrote {made.out_dir}: {made.tensors} tensors, "
                f"{made.bytes_written / 1e9:.2f} GB float32"
                + (", [PAD] row added to the base" if made.pad_row_added else "")
            )
            if made.inexact_tensors:
                print(
                    f"note: {made.inexact_tensors} of {made.tensors} tensors recover to within "
                    "float32 rounding of the tuned model, not bit for bit (listed in the manifest)"
                )
            return 0
        result = recover(
            args.raw,
            args.diff,
            args.out,
            dtype=args.dtype,
            expected_sum=args.expected_sum,
            check_sum=not args.no_sum_check,
            max_shard_bytes=args.max_shard_size,
            force=args.force,
            progress=not args.no_progress,
            resume=args.resume,
        )
    except DiskFullError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return FULL_DISK_EXIT
    except WeightDiffError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted: {args.out} was not written", file=sys.stderr)
        return 130

    _print_resumed(result.resumed_shards)
    print(
        f"recovered {result.out_dir}: {result.tensors} tensors, "
        f"{result.bytes_written / 1e9:.2f} GB {result.dtype}"
        + (", [PAD] row added to the base" if result.pad_row_added else "")
    )
    if result.verified_tensors:
        exact = result.verified_tensors - result.inexact_tensors
        print(
            f"verified {result.verified_tensors} tensors against the manifest "
            f"({exact} bit-identical to the tuned model, {result.inexact_tensors} within float32 "
            "rounding)"
        )
    if result.expected_sum is not None:
        print(f"sum check passed: {result.total_sum:.4f} (expected {result.expected_sum:.4f})")
    elif not args.no_sum_check and not result.verified_tensors:
        print("warning: no manifest and no expected sum: nothing checked (give --expected-sum)")
    return 0


def _print_resumed(shards: int) -> None:
    if shards:
        noun = "shard" if shards == 1 else "shards"
        print(f"resumed: kept {shards} {noun} of the stopped run (each matched its sha256)")


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from err


def _version() -> str:
    from importlib.metadata import version

    return version("alpaca-serve")


if __name__ == "__main__":
    sys.exit(main())
