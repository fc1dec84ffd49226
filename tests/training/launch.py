"""Running `alpaca-train` on one process (in this one) or several (torchrun, CPU over gloo), and
comparing what two runs did: the helpers of the distributed training tests."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from alpaca_serve.evaluation.datasets import ALPACA_SAMPLE
from alpaca_serve.training.cli import main
from tests.support import ROOT, free_port

TORCHRUN = str(Path(sys.executable).with_name("torchrun"))
PAIRS = ROOT / "alpaca_serve" / "training" / "sample_data" / "preference_pairs.jsonl"

# A global batch of 4 for 4 steps, a checkpoint at step 2. One process takes micro batches of
# 4, two take 2 each: the same examples per step.
SCHEDULE = [
    "--preset",
    "tiny",
    "--global-batch-size",
    "4",
    "--logging-steps",
    "1",
    "--max-steps",
    "4",
    "--save-steps",
    "2",
]
# Each method's options. Dropout is off: its masks are drawn per process, so no run on two
# processes could equal one on one with it on.
METHODS = {
    "full": ["--data", str(ALPACA_SAMPLE), "--model-max-length", "64", "--learning-rate", "1e-3"],
    "lora": [
        *("--data", str(ALPACA_SAMPLE), "--model-max-length", "64"),
        *("--lora", "--lora-dropout", "0", "--learning-rate", "1e-2"),
    ],
    "dpo": [
        *("--method", "dpo", "--data", str(PAIRS), "--model-max-length", "96"),
        *("--lora-dropout", "0", "--learning-rate", "1e-2"),
        *("--eval-fraction", "0"),  # the held-out measurement is tests/training/test_dpo.py's
    ],
}
# Equal means within these: float32 sums in another order (the all-reduce's) differ by ~2e-8.
LOSS_RELATIVE = 1e-6
WEIGHT_ABSOLUTE = 1e-6
# And training must have moved some weight by this much, or equal would prove nothing.
MOVED_AT_LEAST = 1e-4


def train_here(model: Path, out: Path, method: str, *extra: str) -> Path:
    """One process: `alpaca-train` called in this process."""
    argv = ["--model", str(model), "--out", str(out), *SCHEDULE, *METHODS[method]]
    assert main([*argv, "--micro-batch-size", "4", *extra]) == 0
    return out


def torchrun_command(*launcher: str) -> list[str]:
    return [TORCHRUN, *launcher, "-m", "alpaca_serve.training.cli"]


def train_on_two(model: Path, out: Path, method: str, *extra: str) -> Path:
    """Two processes on one machine: `torchrun --standalone --nproc-per-node 2`."""
    return launch(
        torchrun_command("--standalone", "--nproc-per-node", "2"), model, out, method, extra
    )


def accelerate_on_two(model: Path, out: Path, method: str, *extra: str) -> Path:
    """Two processes on one machine: `accelerate launch` with the shipped ddp.yaml."""
    config = ROOT / "alpaca_serve" / "training" / "configs" / "ddp.yaml"
    launcher = [str(Path(sys.executable).with_name("accelerate")), "launch"]
    launcher += ["--config_file", str(config), "--main_process_port", str(free_port())]
    launcher += ["-m", "alpaca_serve.training.cli"]
    return launch(launcher, model, out, method, extra)


def launch(launcher: list[str], model: Path, out: Path, method: str, extra: tuple) -> Path:
    """`launcher` running alpaca-train on two processes, micro batches of 2; its log is kept in
    OUT/launcher.log."""
    argv = ["--model", str(model), "--out", str(out), *SCHEDULE, *METHODS[method]]
    result = subprocess.run(
        [*launcher, *argv, "--micro-batch-size", "2", *extra],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (out / "launcher.log").write_text(result.stderr)
    return out


def loss_curve(run: Path) -> dict[int, float]:
    info = json.loads((run / "alpaca_train.json").read_text())
    return {step: loss for step, loss in info["result"]["loss_curve"]}


def weights(run: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(run / "model.safetensors"))


def assert_trained_alike(
    run: Path, reference: Path, base: Path, weight_absolute: float = WEIGHT_ABSOLUTE
) -> None:
    """`run` logged the reference's loss at each of its steps and ended with its weights (within
    `weight_absolute`), and both moved away from `base`."""
    curve, expected = loss_curve(run), loss_curve(reference)
    assert curve, "no loss was logged"
    for step, loss in curve.items():
        assert loss == pytest.approx(expected[step], rel=LOSS_RELATIVE), f"loss at step {step}"
    ours, theirs, start = weights(run), weights(reference), weights(base)
    assert ours.keys() == theirs.keys()
    worst = max((ours[name] - theirs[name]).abs().max().item() for name in ours)
    assert worst <= weight_absolute, f"weights differ by up to {worst:.3g}"
    moved = max(
        (ours[name] - start[name]).abs().max().item()
        for name in ours
        if name in start and start[name].shape == ours[name].shape
    )
    assert moved >= MOVED_AT_LEAST, f"training moved no weight by more than {moved:.3g}"


def batches(run: Path, rank: int) -> dict[int, list[int]]:
    """The record indices each step's micro batch held on `rank` (--record-batches)."""
    lines = (run / "batches" / f"rank-{rank}.jsonl").read_text().splitlines()
    return {entry["step"]: entry["records"] for entry in map(json.loads, lines)}


def assert_split_between_two(run: Path, reference: Path) -> None:
    """Each step, the two ranks of `run` took disjoint halves of the reference's batch, rank 0
    the first."""
    first, second, whole = batches(run, 0), batches(run, 1), batches(reference, 0)
    assert first.keys() == second.keys() and set(first) <= set(whole)
    for step in first:
        assert not set(first[step]) & set(second[step]), f"step {step}: a record on both ranks"
        assert first[step] + second[step] == whole[step], f"step {step}"
