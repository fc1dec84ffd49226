"""Training throughput by process count: `alpaca-train`'s Trainer on 1, 2, ... torchrun processes
(data parallel), the same global batch, side by side in one run.

Usage:
    python -m benchmarks.training_processes                       # default model, 1 and 2, CPU
    python -m benchmarks.training_processes --processes 1,2,4 --lora --json out.json

Each count runs `torchrun --standalone --nproc-per-node N -m benchmarks.training_throughput
--no-bare` with a micro batch of GLOBAL / N per process, so every optimizer step trains the same
number of examples; the figures are its tokens/s over the timed steps (all processes together) and
MFU against one peak for all counts: the machine's best float32 matrix multiply on all its cores,
measured here once (or `--peak-tflops`). torchrun gives each of N > 1 processes one thread
(OMP_NUM_THREADS=1); one process keeps all of them, so every count uses the same cores.

On a machine with as many cores as processes (2 here), N processes do not add compute: the ratio
to one process measures what data parallelism costs (the gradients' all-reduce over gloo, one
thread per matrix multiply), not a speedup. On GPUs, one process per GPU, it is the scaling.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.training_throughput import (
    DEFAULT_DATA,
    DEFAULT_MODEL,
    ensure_model,
    measure_matmul_peak,
)

ROOT = Path(__file__).resolve().parents[1]
PROG = "python -m benchmarks.training_processes"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Training tokens/s and MFU of alpaca-train's Trainer at 1, 2, ... torchrun "
        "processes (data parallel), the same global batch.",
    )
    parser.add_argument(
        "--model",
        type=Path,
        default=DEFAULT_MODEL,
        help="Hugging Face model folder (default: the server's converted default model, "
        "%(default)s; converted from the bundled GGUF if missing)",
    )
    parser.add_argument(
        "--data", type=Path, default=DEFAULT_DATA, help="Alpaca data file (default: %(default)s)"
    )
    parser.add_argument(
        "--processes",
        default="1,2",
        help="comma-separated process counts to measure, one run each (default: %(default)s)",
    )
    parser.add_argument(
        "--global-batch-size",
        type=int,
        default=4,
        help="examples per optimizer step over all processes; a multiple of every count "
        "(default: %(default)s)",
    )
    parser.add_argument("--lora", action="store_true", help="train LoRA adapters")
    parser.add_argument(
        "--steps", type=int, default=8, help="timed optimizer steps (default: %(default)s)"
    )
    parser.add_argument(
        "--warmup-steps",
        type=int,
        default=2,
        help="untimed steps first (default: %(default)s)",
    )
    parser.add_argument(
        "--max-length", type=int, default=256, help="tokens per example (default: %(default)s)"
    )
    parser.add_argument(
        "--peak-tflops",
        type=float,
        default=None,
        help="peak FLOP/s for MFU, in TFLOP/s (default: this machine's float32 matmul, measured)",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    return parser


def parse_counts(text: str, global_batch: int) -> list[int]:
    """The process counts of --processes, each at least 1 and dividing the global batch."""
    try:
        counts = [int(part) for part in text.split(",")]
    except ValueError:
        raise ValueError(f"--processes: not a comma-separated list of numbers: {text!r}") from None
    for count in counts:
        if count < 1:
            raise ValueError(f"--processes: {count} is not a process count")
        if global_batch % count:
            raise ValueError(
                f"--global-batch-size {global_batch} is not a multiple of {count} processes"
            )
    return counts


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        counts = parse_counts(args.processes, args.global_batch_size)
    except ValueError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    model_dir = ensure_model(args.model)
    peak = args.peak_tflops or measure_matmul_peak() / 1e12
    rows = [measure_at(args, model_dir, count, peak) for count in counts]
    base = rows[0]["tokens_per_second"]
    for row in rows:
        row["ratio_to_first"] = row["tokens_per_second"] / base
    print(
        f"model {model_dir.name}, {'LoRA' if args.lora else 'full fine-tuning'}, "
        f"{rows[0]['device']}, global batch {args.global_batch_size}, max length "
        f"{args.max_length}, {args.steps} timed steps; peak {peak * 1e3:.1f} GFLOP/s "
        f"({'given' if args.peak_tflops else 'measured float32 matmul, all cores'})"
    )
    print(f"  {'processes':>9} {'threads':>7} {'tokens/s':>9} {'MFU':>6} {'vs first':>8}")
    for row in rows:
        print(
            f"  {row['processes']:>9} {row['threads']:>7} {row['tokens_per_second']:>9.0f} "
            f"{100 * row['mfu']:>5.1f}% {row['ratio_to_first']:>8.3f}"
        )
    if args.json:
        args.json.write_text(json.dumps({"peak_tflops": peak, "runs": rows}, indent=2) + "\n")
    return 0


def measure_at(args: argparse.Namespace, model_dir: Path, count: int, peak: float) -> dict:
    """One torchrun of the throughput benchmark on `count` processes; its figures."""
    with tempfile.TemporaryDirectory() as folder:
        figures_file = Path(folder) / "figures.json"
        command = [
            *(str(Path(sys.executable).with_name("torchrun")), "--standalone"),
            *("--nproc-per-node", str(count), "-m", "benchmarks.training_throughput"),
            *("--model", str(model_dir), "--data", str(args.data), "--no-bare"),
            *("--micro-batch-size", str(args.global_batch_size // count)),
            *("--steps", str(args.steps), "--warmup-steps", str(args.warmup_steps)),
            *("--max-length", str(args.max_length), "--peak-tflops", str(peak)),
            *("--json", str(figures_file), *(["--lora"] if args.lora else [])),
        ]
        run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
        if run.returncode != 0:
            raise SystemExit(f"{PROG}: error: {count} process(es) failed:\n{run.stderr[-2000:]}")
        return json.loads(figures_file.read_text())


if __name__ == "__main__":
    sys.exit(main())
