"""`alpaca-recover` on a disk that fills: the output goes to a small tmpfs where, once the run has
checked its space, a ballast file (another writer) leaves room for part of it; the run stops with
one line and exit status 74, keeping the shards it completed and checked in its hidden folder
(and nothing that looks like the output); without `--resume` that folder is refused; once the
ballast is deleted, `--resume` keeps those shards (checked again: one that changed is written
anew) and ends with the files an uninterrupted run writes. An output of one shard keeps nothing
and says so."""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from alpaca_serve.core.full_disk import FULL_DISK_EXIT
from alpaca_serve.recover import weight_diff
from tests.recover.tiny_models import run
from tests.small_disk import MIB, leave_free, mounted_tmpfs, taken_by

SHARD = "20KB"  # the tiny models' ~100 KB of float32 weights in six shards
# Room for the output and the 16 MiB the run wants free beyond it before it starts.
DISK = 32 * MIB


@contextlib.contextmanager
def filled_after_the_space_check(disk: Path, free: int) -> Iterator[Path]:
    """While in the block, a run that has checked its space finds `free` bytes left on `disk`
    (another writer filled it); the ballast file, to delete afterwards."""
    check = weight_diff._check_disk_space

    def check_then_fill(out_dir: Path, needed: int) -> None:
        check(out_dir, needed)
        leave_free(disk, free)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(weight_diff, "_check_disk_space", check_then_fill)
        yield disk / "ballast"


def command(name: str, models: dict[str, Path], diff_dir: Path, out: Path) -> list:
    if name == "make-diff":
        return ["make-diff", "--raw", models["base"], "--tuned", models["tuned-float32"]] + [
            "--out",
            out,
            "--max-shard-size",
            SHARD,
        ]
    return ["recover", "--raw", models["base"], "--diff", diff_dir, "--out", out] + [
        "--max-shard-size",
        SHARD,
    ]


def written(folder: Path) -> dict[str, bytes]:
    """The files a run writes that are the same every time (the marker holds the time)."""
    return {
        path.name: path.read_bytes()
        for path in folder.iterdir()
        if path.name.startswith("model") or path.name == "weight_diff_manifest.json"
    }


def one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err.strip()


@pytest.mark.parametrize("name", ["make-diff", "recover"])
def test_a_full_disk_stops_the_run_in_one_line_keeping_checked_shards_and_resume_writes_the_rest(
    name, models, diff_dir, tmp_path, capsys
):
    reference = tmp_path / "reference"
    assert run(*command(name, models, diff_dir, reference)) == 0
    shards = sorted(reference.glob("model-*.safetensors"))
    assert len(shards) == 6
    capsys.readouterr()

    with mounted_tmpfs(tmp_path / "disk", DISK) as disk:
        out = disk / "out"
        with filled_after_the_space_check(disk, taken_by(reference) // 2) as ballast:
            assert run(*command(name, models, diff_dir, out)) == FULL_DISK_EXIT
        line = one_line(capsys)
        found = re.fullmatch(
            rf"alpaca-recover: error: no space left on device in {disk} while writing {out}: "
            rf"(\d) of 6 shards \(0\.00 GB\) are written and checked in ({disk}/\.out\.incomplete-"
            r"\w+); free space and run the same command with --resume to continue \(or delete "
            r"that folder\)",
            line,
        )
        assert found, line
        kept, partial = int(found[1]), Path(found[2])
        assert 0 < kept < 6
        assert not out.exists()
        assert sorted(path.name for path in partial.iterdir()) == [
            *(shard.name for shard in shards[:kept]),
            "resume.json",
        ]

        ballast.unlink()
        assert run(*command(name, models, diff_dir, out)) == 2
        assert one_line(capsys) == (
            f"alpaca-recover: error: {partial} holds {kept} shard{'s' * (kept > 1)} of {out}, "
            "written before a full disk stopped the run: add --resume to continue it, or --force "
            "to start over"
        )
        assert run(*command(name, models, diff_dir, out), "--resume") == 0

        printed = capsys.readouterr().out
        assert f"resumed: kept {kept} shard{'s' * (kept > 1)} of the stopped run" in printed
        if name == "recover":
            assert "verified 21 tensors against the manifest" in printed
        assert written(out) == written(reference)
        assert sorted(path.name for path in disk.iterdir()) == ["out"]  # no hidden folder left


def test_resume_writes_anew_a_kept_shard_that_changed_and_refuses_other_options(
    models, diff_dir, tmp_path, capsys
):
    reference = tmp_path / "reference"
    assert run(*command("recover", models, diff_dir, reference)) == 0
    with mounted_tmpfs(tmp_path / "disk", DISK) as disk:
        out = disk / "out"
        with filled_after_the_space_check(disk, taken_by(reference) * 3 // 4) as ballast:
            assert run(*command("recover", models, diff_dir, out)) == FULL_DISK_EXIT
        ballast.unlink()
        (partial,) = disk.glob(".out.incomplete-*")
        kept = json.loads((partial / "resume.json").read_text())["shards"]
        assert len(kept) >= 2
        second = partial / kept[1]["file"]
        second.write_bytes(second.read_bytes()[:-1] + b"\x01")  # one byte changed on disk
        capsys.readouterr()

        assert run(*command("recover", models, diff_dir, out)[:-1], "30KB", "--resume") == 2
        assert "--resume: " in one_line(capsys)
        assert run(*command("recover", models, diff_dir, out), "--resume") == 0

        assert "resumed: kept 1 shard of the stopped run" in capsys.readouterr().out
        assert written(out) == written(reference)


def test_an_output_of_one_shard_keeps_nothing_and_says_to_run_again(
    models, diff_dir, tmp_path, capsys
):
    reference = tmp_path / "reference"
    argv = ["recover", "--raw", models["base"], "--diff", diff_dir]
    assert run(*argv, "--out", reference) == 0
    capsys.readouterr()
    with mounted_tmpfs(tmp_path / "disk", DISK) as disk:
        out = disk / "out"
        with filled_after_the_space_check(disk, taken_by(reference) // 2) as ballast:
            assert run(*argv, "--out", out) == FULL_DISK_EXIT
        assert one_line(capsys) == (
            f"alpaca-recover: error: no space left on device in {disk} while writing {out}: "
            "nothing was kept; free space and run the same command again"
        )
        assert sorted(path.name for path in disk.iterdir()) == ["ballast"]
        ballast.unlink()
        assert run(*argv, "--out", out) == 0
        assert written(out) == written(reference)
