"""Model folders written here are for every user of the machine to read.

Usage:
    staging = Path(tempfile.mkdtemp(dir=out_dir.parent))   # private to its owner
    ...                                                    # write the model into it
    open_to_all(staging)                                   # then rename it into place

mkdtemp makes a folder only its owner can enter, and some writers (safetensors through a temporary
file) leave files only their owner can read; a model converted or recovered as one user (root in
the Docker image) must still load when served as another.
"""

from __future__ import annotations

from pathlib import Path


def open_to_all(folder: Path) -> None:
    """Folders 0755 and files 0644, from `folder` down."""
    folder.chmod(0o755)
    for path in folder.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
