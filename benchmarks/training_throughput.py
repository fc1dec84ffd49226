"""Training throughput of `alpaca-train`'s own Trainer setup: tokens/s and an MFU estimate.

Usage:
    python -m benchmarks.training_throughput                         # default model, full, CPU
    python -m benchmarks.training_throughput --lora --steps 10
    python -m benchmarks.training_throughput --model ./llama-7b --peak-tflops 989 --json out.json
    torchrun --nproc-per-node 2 -m benchmarks.training_throughput --no-bare   # 2 processes
    python -m benchmarks.training_processes                 # 1 and 2 processes side by side

The run builds the model, the tokenized Alpaca sample and the Hugging Face Trainer exactly as
`alpaca-train` does (alpaca_serve.training.train's functions), trains `--warmup-steps +
--steps` optimizer steps and times the last `--steps` only. Tokens are the non-padding tokens
fed to the model (over all processes when run under torchrun, which trains data-parallel).

Then, in the same run, a bare training loop on a fresh copy of the same model (loaded the same
way) and the same kind of micro batches (the same collator, examples drawn with the same seed):
forward, loss, backward, `torch.optim.AdamW` step, with nothing else around it; timed the same
way. The ratio alpaca-train / bare loop says what the Trainer's setup costs (`--no-bare` skips it).

MFU (model FLOPs utilisation) = achieved model FLOP/s / peak FLOP/s. Model FLOPs per token:
full fine-tuning 6 x N (forward 2N, backward 4N) and LoRA 4 x N (no weight gradients for the
frozen weights), N = weights of all matrix multiplies (lm_head included, input embedding lookup
not), plus attention 12 x layers x hidden x sequence length (PaLM appendix B; full) or 8 x ...
(LoRA). Peak: `--peak-tflops` when given (the accelerator's datasheet figure for the dtype), else
measured here as the best float32 matrix-multiply rate of this machine, so the CPU figure says how
close training gets to what its matmuls could do.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from alpaca_serve.evaluation.datasets import ALPACA_SAMPLE

DEFAULT_DATA = ALPACA_SAMPLE
DEFAULT_MODEL = Path.home() / ".cache" / "alpaca-serve" / "SmolLM2-135M-Instruct"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.training_throughput",
        description="Training tokens/s and an MFU estimate for alpaca-train's Trainer setup.",
    )
    parser.add_argument(
        "--model",
        type=Path,
        default=DEFAULT_MODEL,
        help="Hugging Face model folder (default: the server's converted default "
        "model, %(default)s; converted from the bundled GGUF if missing)",
    )
    parser.add_argument(
        "--data", type=Path, default=DEFAULT_DATA, help="Alpaca data file (default: %(default)s)"
    )
    parser.add_argument("--lora", action="store_true", help="train LoRA adapters (alpaca-lora's)")
    parser.add_argument(
        "--packing",
        action="store_true",
        help="pack each micro batch into one row without padding (alpaca-train --packing)",
    )
    parser.add_argument(
        "--micro-batch-size",
        type=int,
        default=4,
        help="examples per forward pass (default: %(default)s)",
    )
    parser.add_argument(
        "--max-length",
        type=int,
        default=256,
        help="model_max_length, tokens per example (default: %(default)s)",
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=8,
        help="timed optimizer steps, one micro batch each (default: %(default)s)",
    )
    parser.add_argument(
        "--warmup-steps", type=int, default=2, help="untimed steps first (default: %(default)s)"
    )
    parser.add_argument(
        "--peak-tflops",
        type=float,
        default=None,
        help="peak TFLOP/s for MFU (default: measured float32 matmul rate)",
    )
    parser.add_argument(
        "--no-bare",
        action="store_true",
        help="skip the bare training loop measured beside alpaca-train's Trainer",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.steps < 1 or args.warmup_steps < 1:
        print(
            "training_throughput: error: --steps and --warmup-steps must be at least 1",
            file=sys.stderr,
        )
        return 2
    model_dir = ensure_model(args.model)
    processes = int(os.environ.get("WORLD_SIZE", "1"))  # under torchrun: data parallel
    if processes > 1:
        args.no_bare = True  # the bare loop is one process's
    figures = measure(args, model_dir)
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    print(
        f"model {figures['model']} ({figures['matmul_params'] / 1e6:.1f} M matmul weights), "
        f"{'LoRA' if args.lora else 'full fine-tuning'}"
        f"{', packed' if args.packing else ''}, {figures['device']}, "
        f"{figures['processes']} process(es) x {figures['threads']} threads\n"
        f"  {figures['tokens']} tokens in {figures['seconds']:.2f} s over {args.steps} steps "
        f"(micro batch {args.micro_batch_size} per process, max length {args.max_length})\n"
        f"  training throughput: {figures['tokens_per_second']:.0f} tokens/s, "
        f"{figures['examples_per_second']:.2f} examples/s\n"
        f"  model FLOPs: {figures['achieved_tflops'] * 1e3:.1f} GFLOP/s achieved; peak "
        f"{figures['peak_tflops'] * 1e3:.1f} GFLOP/s ({figures['peak_source']}); "
        f"MFU {100 * figures['mfu']:.1f}%"
    )
    if "bare" in figures:
        bare = figures["bare"]
        print(
            f"  bare loop (forward, backward, torch AdamW; same model and batches): "
            f"{bare['tokens']} tokens in {bare['seconds']:.2f} s = "
            f"{bare['tokens_per_second']:.0f} tokens/s, MFU {100 * bare['mfu']:.1f}%\n"
            f"  alpaca-train / bare loop: {figures['ratio_to_bare']:.3f} "
            f"(the Trainer's optimizer: {figures['trainer_optim']})"
        )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


def ensure_model(model_dir: Path) -> Path:
    """The model folder; the default one is converted from the bundled GGUF if missing."""
    if (model_dir / "config.json").is_file():
        return model_dir
    if model_dir != DEFAULT_MODEL:
        raise SystemExit(f"training_throughput: error: no Hugging Face model in {model_dir}")
    from alpaca_serve.recover.convert import convert_gguf, find_bundled_gguf

    return convert_gguf(find_bundled_gguf(), model_dir)


def measure(args: argparse.Namespace, model_dir: Path) -> dict:
    """Train warm-up + timed steps with alpaca-train's Trainer; returns the figures."""
    import torch
    from transformers import AutoTokenizer, TrainerCallback

    from alpaca_serve.training.args import parse_args
    from alpaca_serve.training.tokenization import add_missing_special_tokens, tokenize_records
    from alpaca_serve.training.train import (
        build_trainer,
        build_training_args,
        load_model,
        load_training_records,
    )

    steps = args.warmup_steps + args.steps
    processes = int(os.environ.get("WORLD_SIZE", "1"))
    with tempfile.TemporaryDirectory() as out:
        train_args = parse_args(
            [
                "--model",
                str(model_dir),
                "--data",
                str(args.data),
                "--out",
                out,
                "--preset",
                "tiny",
                "--micro-batch-size",
                str(args.micro_batch_size),
                "--global-batch-size",
                str(args.micro_batch_size),
                "--model-max-length",
                str(args.max_length),
                "--max-steps",
                str(steps),
                "--save-steps",
                str(10 * steps),
                "--logging-steps",
                str(10 * steps),
                "--learning-rate",
                "1e-5",
                *(["--lora"] if args.lora else []),
                *(["--packing"] if args.packing else []),
            ]
        )
        records, _ = load_training_records(args.data, skip_invalid=False)
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        add_missing_special_tokens(tokenizer)
        examples, _ = tokenize_records(records, tokenizer, args.max_length)
        training_args = build_training_args(train_args, accumulation=1)
        training_args.save_strategy = "no"
        model = load_model(train_args, tokenizer)
        trainer = build_trainer(train_args, model, tokenizer, examples, training_args)
        config = model.config
        matmul_params = count_matmul_weights(model)

        marks: dict[int, tuple[float, int]] = {}

        class Marks(TrainerCallback):
            def on_step_end(self, _args, state, control, **kwargs):
                marks[state.global_step] = (time.perf_counter(), state.num_input_tokens_seen)

        trainer.add_callback(Marks())
        trainer.train()

        trainer_optim = str(training_args.optim)
        bare = None
        if not args.no_bare:
            del trainer, model
            bare = bare_loop(args, load_model(train_args, tokenizer), examples, tokenizer)

    (t0, tokens0), (t1, tokens1) = marks[args.warmup_steps], marks[steps]
    seconds, tokens = t1 - t0, int(tokens1 - tokens0)
    mean_length = sum(len(e["input_ids"]) for e in examples) / len(examples)
    per_token = (4 if args.lora else 6) * matmul_params + (8 if args.lora else 12) * (
        config.num_hidden_layers * config.hidden_size * mean_length
    )
    achieved = per_token * tokens / seconds
    if args.peak_tflops:
        peak, source = args.peak_tflops * 1e12, "given"
    else:
        peak, source = measure_matmul_peak(), "measured float32 matmul"
    figures = {
        "model": model_dir.name,
        "method": "lora" if args.lora else "full",
        "packing": args.packing,
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "processes": processes,
        "threads": torch.get_num_threads(),
        "matmul_params": matmul_params,
        "steps": args.steps,
        "micro_batch_size": args.micro_batch_size,
        "max_length": args.max_length,
        "tokens": tokens,
        "seconds": seconds,
        "tokens_per_second": tokens / seconds,
        "examples_per_second": args.steps * args.micro_batch_size * processes / seconds,
        "flops_per_token": per_token,
        "achieved_tflops": achieved / 1e12,
        "peak_tflops": peak / 1e12,
        "peak_source": source,
        "mfu": achieved / peak,
        "trainer_optim": trainer_optim,
    }
    if bare is not None:
        bare_seconds, bare_tokens = bare
        figures["bare"] = {
            "tokens": bare_tokens,
            "seconds": bare_seconds,
            "tokens_per_second": bare_tokens / bare_seconds,
            "mfu": per_token * bare_tokens / bare_seconds / peak,
        }
        ratio = figures["tokens_per_second"] / figures["bare"]["tokens_per_second"]
        figures["ratio_to_bare"] = ratio
    return figures


def bare_loop(args: argparse.Namespace, model, examples: list, tokenizer) -> tuple[float, int]:
    """Train `--warmup-steps + --steps` micro batches with a plain loop; (seconds, non-padding
    tokens) of the last `--steps`."""
    import random

    import torch

    from alpaca_serve.training.tokenization import PackCollator, PadCollator

    collator = PackCollator() if args.packing else PadCollator(tokenizer.pad_token_id)
    order = random.Random(42).sample(range(len(examples)), len(examples))
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-5, weight_decay=0.0)
    model.train()
    started, tokens = 0.0, 0
    for step in range(args.warmup_steps + args.steps):
        if step == args.warmup_steps:
            started = time.perf_counter()
        picked = order[step * args.micro_batch_size : (step + 1) * args.micro_batch_size]
        batch = collator([examples[i % len(examples)] for i in picked])
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step >= args.warmup_steps:
            tokens += (
                int(batch["attention_mask"].sum())
                if "attention_mask" in batch
                else int(batch["input_ids"].numel())
            )
    return time.perf_counter() - started, tokens


def count_matmul_weights(model) -> int:
    """Weights of the model's own linear layers (LoRA's small matrices left out), lm_head in."""
    from torch import nn

    return sum(
        module.weight.numel()
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and "lora_" not in name
    )


def measure_matmul_peak(size: int = 2048, repeats: int = 5) -> float:
    """Best float32 FLOP/s of a square matrix multiply on this machine's default device."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    best = float("inf")
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        a @ b
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


if __name__ == "__main__":
    sys.exit(main())
