"""`alpaca-train` on a disk that fills: a small tmpfs holds the output folder, a ballast file leaves
room for half of what the run writes next (sized from a run that never stopped), the run stops
with one line and exit status 74 after removing what it half wrote, and once the ballast is
deleted `--resume` ends with the uninterrupted run's losses and weights. Also: each writer a run
uses (torch.save, safetensors, the tokenizers, json) is recognised when it finds the disk full,
and other errors are not."""

from __future__ import annotations

import errno
import json
import re
from pathlib import Path

import pytest

from alpaca_serve.core.full_disk import FULL_DISK_EXIT, full_disk_cause
from alpaca_serve.training.cli import main
from tests.small_disk import MIB, leave_free, mounted_tmpfs, taken_by
from tests.training.launch import METHODS, SCHEDULE, assert_trained_alike, train_here, weights

# The whole LoRA run (two checkpoints, the adapter, the merged model) takes ~66 MiB.
DISK = 96 * MIB


def lora_run(model: Path, out: Path, *extra: str) -> list[str]:
    """train_here's LoRA run: 4 steps, a checkpoint at steps 2 and 4, merged at the end."""
    return ["--model", str(model), "--out", str(out), *SCHEDULE, *METHODS["lora"]] + [
        "--micro-batch-size",
        "4",
        *extra,
    ]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_model_dir) -> Path:
    """The run that never stopped, on an ordinary disk."""
    return train_here(tiny_model_dir, tmp_path_factory.mktemp("uninterrupted") / "out", "lora")


def error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


def test_a_full_disk_while_saving_a_checkpoint_stops_in_one_line_and_resume_ends_alike(
    tmp_path, tiny_model_dir, reference, capsys
):
    checkpoints = reference / "checkpoints"
    with mounted_tmpfs(tmp_path / "disk", DISK) as disk:
        out = disk / "out"
        # Room for checkpoint-2 and half of checkpoint-4.
        ballast = leave_free(
            disk,
            taken_by(checkpoints / "checkpoint-2") + taken_by(checkpoints / "checkpoint-4") // 2,
        )

        assert main(lora_run(tiny_model_dir, out)) == FULL_DISK_EXIT
        assert error_line(capsys) == (
            f"alpaca-train: error: no space left on device in {out}: removed the half-written "
            f"{out}/checkpoints/checkpoint-4; free space and run the same command with --resume "
            f"to continue from {out}/checkpoints/checkpoint-2"
        )
        assert sorted(path.name for path in out.iterdir()) == ["checkpoints"]
        assert [path.name for path in (out / "checkpoints").iterdir()] == ["checkpoint-2"]

        ballast.unlink()
        assert main(lora_run(tiny_model_dir, out)) == 2  # checkpoints: --resume or another --out
        assert "pass --resume" in capsys.readouterr().err
        assert main(lora_run(tiny_model_dir, out, "--resume")) == 0

        assert f"resuming from {out}/checkpoints/checkpoint-2" in capsys.readouterr().err
        assert_trained_alike(out, reference, tiny_model_dir)
        assert json.loads((out / "alpaca_train.json").read_text())["result"]["global_step"] == 4


def test_a_full_disk_while_saving_the_model_removes_its_half_written_files_and_resume_writes_it(
    tmp_path, tiny_model_dir, reference, capsys
):
    with mounted_tmpfs(tmp_path / "disk", DISK) as disk:
        out = disk / "out"
        # Room for both checkpoints, the adapter, and half of the merged model.
        ballast = leave_free(
            disk,
            taken_by(reference / "checkpoints")
            + taken_by(reference / "adapter")
            + taken_by(reference / "model.safetensors") // 2,
        )

        assert main(lora_run(tiny_model_dir, out)) == FULL_DISK_EXIT
        line = error_line(capsys)
        assert re.fullmatch(
            rf"alpaca-train: error: no space left on device in {out}: removed the half-written "
            rf"output \(\d+ files\); free space and run the same command with --resume to "
            rf"continue from {out}/checkpoints/checkpoint-4",
            line,
        ), line
        # No weights, no provenance: nothing there that looks like a model.
        assert sorted(path.name for path in out.iterdir()) == ["checkpoints"]

        ballast.unlink()
        assert main(lora_run(tiny_model_dir, out, "--resume")) == 0

        assert f"resuming from {out}/checkpoints/checkpoint-4" in capsys.readouterr().err
        # The resumed run trained no step: it merged checkpoint-4, as the reference did.
        ours, theirs = weights(out), weights(reference)
        assert ours.keys() == theirs.keys()
        assert all(ours[name].equal(theirs[name]) for name in ours)
        assert json.loads((out / "alpaca_train.json").read_text())["result"]["global_step"] == 4


def test_each_writer_a_run_uses_is_recognised_on_a_full_disk_and_other_errors_are_not(tmp_path):
    import torch
    from safetensors.torch import save_file
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel

    tensors = {"weight": torch.zeros(2 * MIB)}  # 8 MiB: more than the disk holds
    vocabulary = {f"word{index}": index for index in range(200_000)}  # 3.5 MB of tokenizer.json
    tokenizer = Tokenizer(WordLevel(vocabulary, unk_token="word0"))
    writers = {
        "torch.save": lambda path: torch.save(tensors, path),  # optimizer.pt, rng_state.pth
        "safetensors": lambda path: save_file(tensors, str(path)),  # weights
        "tokenizers": lambda path: tokenizer.save(str(path)),  # tokenizer.json
        "json": lambda path: path.write_text(json.dumps(list(range(MIB)))),  # trainer_state.json
    }
    causes = {}
    with mounted_tmpfs(tmp_path / "disk", 2 * MIB) as disk:
        for name, write in writers.items():
            with pytest.raises(Exception) as raised:
                write(disk / name)
            causes[name] = full_disk_cause(raised.value, disk)
            (disk / name).unlink(missing_ok=True)  # safetensors removes its own
    assert causes == dict.fromkeys(writers, "no space left on device")

    # torch.save's words name no cause: on a disk with room they are some other failure.
    assert full_disk_cause(RuntimeError("unexpected pos 576 vs 534"), tmp_path) is None
    assert full_disk_cause(OSError(errno.EACCES, "Permission denied"), tmp_path) is None
    assert full_disk_cause(OSError(errno.EDQUOT, "quota"), tmp_path) == "disk quota exceeded"
