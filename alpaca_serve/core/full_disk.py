"""A full disk told apart from other failures, so that a command can stop on it in one line.

Usage:
    from alpaca_serve.core.full_disk import FULL_DISK_EXIT, full_disk_cause
    try:
        save(folder)
    except Exception as err:
        cause = full_disk_cause(err, folder)      # "no space left on device", or None
        if cause is None:
            raise
        print(f"alpaca-x: error: {cause} in {folder}; ...", file=sys.stderr)
        sys.exit(FULL_DISK_EXIT)

Each writer says it its own way: Python's OSError (errno ENOSPC, or EDQUOT for a quota),
safetensors' SafetensorError and the tokenizers' plain Exception ("No space left on device (os
error 28)"), and torch.save's zip writer, whose RuntimeError names no cause at all ("unexpected
pos 576 vs 534", "file write failed"): that one counts as a full disk when the folder's file
system has next to nothing left (as a write that ran out of space leaves it).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path

# The exit status of `alpaca-train` and `alpaca-recover` stopped by a full disk: EX_IOERR of
# sysexits.h, apart from 2 (bad usage) so that a script can tell "free space and --resume".
FULL_DISK_EXIT = 74

# What the errors of each writer say, by cause.
CAUSES = {
    "no space left on device": (
        "no space left on device",
        "os error 28",
        "storagefull",
    ),
    "disk quota exceeded": ("disk quota exceeded", "os error 122", "filesystemquotaexceeded"),
}
# torch.save's zip writer, which loses the errno (torch 2.x): its words, and how little free
# space makes them mean a full disk.
TORCH_WRITER_SIGNS = ("unexpected pos", "file write failed", "iostream error")
NEARLY_FULL_BYTES = 1024**2


def full_disk_cause(err: BaseException, folder: Path) -> str | None:
    """ "no space left on device" (or "disk quota exceeded") when `err`, or an error it was raised
    from or while handling, is a write that found the disk full; None for any other error.
    `folder` is where the failed write went (for the torch.save case, which names no cause)."""
    chain = list(_chain(err))
    for item in chain:
        if isinstance(item, OSError) and item.errno in (errno.ENOSPC, errno.EDQUOT):
            return os.strerror(item.errno).lower()
    texts = [str(item).lower() for item in chain]
    for cause, signs in CAUSES.items():
        if any(sign in text for text in texts for sign in signs):
            return cause
    if any(sign in text for text in texts for sign in TORCH_WRITER_SIGNS) and nearly_full(folder):
        return "no space left on device"
    return None


def nearly_full(folder: Path) -> bool:
    """Whether the file system holding `folder` (or its nearest existing parent) has under
    NEARLY_FULL_BYTES, or no file, left for an unprivileged writer."""
    path = Path(folder).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        stats = os.statvfs(path)
    except OSError:
        return False
    no_inode_left = stats.f_files > 0 and stats.f_favail == 0  # btrfs counts no inodes: 0, 0
    return stats.f_bavail * stats.f_frsize < NEARLY_FULL_BYTES or no_inode_left


def _chain(err: BaseException) -> Iterator[BaseException]:
    """`err`, then the errors it was raised from or while handling, each once."""
    seen: set[int] = set()
    pending: list[BaseException | None] = [err]
    while pending:
        item = pending.pop(0)
        if item is None or id(item) in seen:
            continue
        seen.add(id(item))
        yield item
        pending += [item.__cause__, item.__context__]
