"""The models the weight-diff tests share: a tiny base, tuned models made from it, and a diff."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.recover.tiny_models import (
    TOKENIZER_FILES,
    VOCAB,
    original_pad_resize,
    run,
    save_model,
    tiny_weights,
)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """A float32 base, and tuned models (float32 and bfloat16): base + noise, plus the [PAD] row."""
    root = tmp_path_factory.mktemp("weight-diff-models")
    torch.manual_seed(0)
    base = tiny_weights(VOCAB)
    save_model(root / "base", base, "float32")

    tuned = original_pad_resize(base)
    for name, tensor in tuned.items():
        # Scaling as well as adding gives every bit of the mantissa a value, as training does.
        tensor = tensor + torch.randn_like(tensor) * 0.01
        tuned[name] = tensor * (1 + torch.randn_like(tensor) * 1e-3)
    folders = {"base": root / "base"}
    for dtype in ("float32", "bfloat16"):
        folder = root / f"tuned-{dtype}"
        save_model(folder, tuned, dtype)
        for name, text in TOKENIZER_FILES.items():
            (folder / name).write_text(text)
        folders[f"tuned-{dtype}"] = folder
    return folders


@pytest.fixture(scope="module")
def diff_dir(models, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("diffs") / "diff"
    assert (
        run(
            "make-diff",
            "--raw",
            models["base"],
            "--tuned",
            models["tuned-float32"],
            "--out",
            out,
            "--max-shard-size",
            "40KB",
        )
        == 0
    )
    return out
