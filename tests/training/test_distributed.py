"""Data-parallel training on CPU over gloo: two torchrun processes, each with half the global
batch, train as one process with the whole batch does (the loss at every step and the final
weights, for full fine-tuning, LoRA and DPO), each taking its own half of every batch; so does
`accelerate launch` with the shipped ddp.yaml; and a
checkpoint saved at one world size resumes at the other, continuing the same schedule.

"The same" is within a float32 tolerance (tests/training/launch.py: 1e-6, against ~2e-8
measured), with training having moved the weights by 1e-4 or more."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.training.launch import (
    accelerate_on_two,
    assert_split_between_two,
    assert_trained_alike,
    batches,
    train_here,
    train_on_two,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model_dir):
    """Each method trained once on one process and once on two, on demand."""
    done: dict[tuple[str, int], object] = {}

    def run(method: str, processes: int):
        if (method, processes) not in done:
            out = tmp_path_factory.mktemp(f"{method}-{processes}") / "out"
            record = ["--record-batches"] if method != "dpo" else []
            train = train_here if processes == 1 else train_on_two
            done[method, processes] = train(tiny_model_dir, out, method, *record)
        return done[method, processes]

    return run


@pytest.mark.parametrize("method", ["full", "lora", "dpo"])
def test_two_processes_with_half_the_batch_each_train_as_one_process_does(
    runs, tiny_model_dir, method
):
    one, two = runs(method, 1), runs(method, 2)

    assert_trained_alike(two, one, tiny_model_dir)
    assert "2 process(es)" in (two / "launcher.log").read_text()
    if method != "dpo":  # --record-batches is SFT's
        assert_split_between_two(two, one)


def test_accelerate_launch_with_the_shipped_ddp_config_trains_as_one_process_does(
    runs, tmp_path, tiny_model_dir
):
    one = runs("full", 1)

    two = accelerate_on_two(tiny_model_dir, tmp_path / "out", "full", "--record-batches")

    assert_trained_alike(two, one, tiny_model_dir)
    assert "2 process(es)" in (two / "launcher.log").read_text()
    assert_split_between_two(two, one)


def test_a_checkpoint_of_two_processes_resumes_on_one_and_the_schedule_goes_on(
    runs, tmp_path, tiny_model_dir, capsys
):
    one, two = runs("full", 1), runs("full", 2)
    out = tmp_path / "out"
    shutil.copytree(two / "checkpoints" / "checkpoint-2", out / "checkpoints" / "checkpoint-2")

    train_here(tiny_model_dir, out, "full", "--record-batches", "--resume")

    log = capsys.readouterr().err
    assert "1 process(es)" in log and "resuming from" in log and "checkpoint-2" in log
    assert "step 3/4" in log and "step 2/4" not in log
    assert (
        sorted(json.loads((out / "alpaca_train.json").read_text())["result"]["loss_curve"])[0][0]
        == 3
    )
    assert_trained_alike(out, one, tiny_model_dir)
    assert batches(out, 0) == {
        step: records for step, records in batches(one, 0).items() if step > 2
    }


def test_a_checkpoint_of_one_process_resumes_on_two_and_the_schedule_goes_on(
    runs, tmp_path, tiny_model_dir
):
    one = runs("full", 1)
    out = tmp_path / "out"
    shutil.copytree(one / "checkpoints" / "checkpoint-2", out / "checkpoints" / "checkpoint-2")

    train_on_two(tiny_model_dir, out, "full", "--record-batches", "--resume")

    log = (out / "launcher.log").read_text()
    assert "2 process(es)" in log and "resuming from" in log
    assert "step 3/4" in log and "step 2/4" not in log
    assert_trained_alike(out, one, tiny_model_dir)
    assert_split_between_two(out, one)
    assert sorted(batches(out, 0)) == [3, 4]
