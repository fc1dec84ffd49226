"""A real disk that fills: a small tmpfs mounted for a test, a ballast file that leaves just so
many bytes free, and what a folder's files take on it. Mounting needs root, as the tests and CI
run here.

Usage:
    with mounted_tmpfs(tmp_path / "disk", 64 * MIB) as disk:
        ballast = leave_free(disk, taken_by(reference_checkpoint) // 2)
        ...                                      # a command runs out of space half way
        ballast.unlink()                         # space freed: --resume goes on
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

MIB = 1024**2
PAGE = 4096  # tmpfs charges whole pages


@contextlib.contextmanager
def mounted_tmpfs(folder: Path, size: int) -> Iterator[Path]:
    """A tmpfs of `size` bytes on `folder`, unmounted (lazily, if still busy) afterwards."""
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
        check=True,
        capture_output=True,
    )
    try:
        yield folder
    finally:
        if subprocess.run(["umount", str(folder)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(folder)], check=True, capture_output=True)


def free_bytes(disk: Path) -> int:
    stats = os.statvfs(disk)
    return stats.f_bavail * stats.f_frsize


def leave_free(disk: Path, free: int) -> Path:
    """A ballast file on `disk` that leaves `free` bytes (rounded to pages) for what comes next."""
    ballast = disk / "ballast"
    size = free_bytes(disk) - free // PAGE * PAGE
    assert size > 0, f"{disk} has under {free} bytes free"
    with ballast.open("wb") as stream:
        os.posix_fallocate(stream.fileno(), 0, size)
    assert abs(free_bytes(disk) - free) < PAGE
    return ballast


def taken_by(path: Path) -> int:
    """The bytes a file, or a folder's files, take on a tmpfs: each file in whole pages."""
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(-(-file.stat().st_size // PAGE) * PAGE for file in files)
