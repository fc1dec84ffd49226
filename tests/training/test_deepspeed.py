"""DeepSpeed on CPU: ZeRO-2 (the optimizer states and gradients sharded across processes) trains
on two torchrun processes as one process without DeepSpeed does, and checkpoints each process's
shard of the optimizer; ZeRO-3 is refused before any work (tests/training/test_train.py), for
what running it did (docs/training.md)."""

from __future__ import annotations

import pytest

from tests.support import ROOT
from tests.training.launch import assert_trained_alike, train_here, train_on_two

pytestmark = pytest.mark.slow

# DeepSpeed reduces the gradients in its own buckets and order, and steps its own flat copy of
# the weights: 1.4e-6 apart after 4 steps measured, against ~2e-8 for torchrun alone.
WEIGHT_ABSOLUTE = 1e-5
ZERO_2 = ROOT / "alpaca_serve" / "training" / "configs" / "deepspeed_zero2.json"


def test_zero_2_on_two_processes_trains_as_one_process_without_deepspeed_does(
    tmp_path, tiny_model_dir
):
    one = train_here(tiny_model_dir, tmp_path / "one", "full")

    two = train_on_two(tiny_model_dir, tmp_path / "two", "full", "--deepspeed", str(ZERO_2))

    assert_trained_alike(two, one, tiny_model_dir, WEIGHT_ABSOLUTE)
    log = (two / "launcher.log").read_text()
    assert "2 process(es)" in log
    checkpoint = two / "checkpoints" / "checkpoint-2"
    [engine_state] = [path for path in checkpoint.iterdir() if path.name.startswith("global_step")]
    shards = sorted(path.name for path in engine_state.glob("*optim_states.pt"))
    assert shards == [
        "bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt",
        "bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt",
    ] or [name.replace("bf16_", "") for name in shards] == [
        "zero_pp_rank_0_mp_rank_00_optim_states.pt",
        "zero_pp_rank_1_mp_rank_00_optim_states.pt",
    ], shards
