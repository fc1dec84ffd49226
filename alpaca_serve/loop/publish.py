"""Publishing a fine-tune as Stanford did: merged weights, a weight diff, and a recovery check.

Usage:
    merge_into_base(base_dir, Path("loop-run/sft"), Path("loop-run/publish/merged"))
    check = compare_weights(Path(".../merged"), Path(".../recovered"))
    check.identical, check.bit_identical, check.rounded, check.max_abs_difference

The merge is peft's `merge_and_unload` on the base loaded fresh with the saved adapter
(`alpaca_serve.training.train.merge_adapter`, what `alpaca-train` does without `--no-merge`).
The diff and the recovery are `alpaca_serve.recover.weight_diff`'s (`alpaca-recover make-diff` /
`recover`). The check reads both folders tensor by tensor and compares sha256 hashes of the
saved bytes. The Alpaca format does its arithmetic in float32, so `base + (tuned - base)` may
differ from `tuned` in the last bit of a few values; such a tensor counts as recovered only when
the diff's manifest says it would round (`recovered_sha256` recorded by make-diff) and it is
within float32 rounding of the merged one. Any other difference fails the check.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from alpaca_serve.recover.weight_diff import MANIFEST_FILE, tensor_sha256
from alpaca_serve.training.train import ADAPTER_DIR, merge_adapter

# Float32 rounding of base + (tuned - base): at most a few units in the last place of the
# larger operand; 1e-6 relative to the tensor's largest value is far above that, far below
# any real change of the weights.
ROUNDING_TOLERANCE = 1e-6


@dataclass
class WeightCheck:
    """How a recovered model compares with the model its diff was made from."""

    tensors: int = 0
    bit_identical: int = 0
    rounded: int = 0  # differ in float32 rounding only, as the diff's manifest predicted
    max_abs_difference: float = 0.0
    mismatched: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    @property
    def identical(self) -> bool:
        return not self.mismatched and not self.missing and self.tensors > 0

    def describe(self) -> str:
        if not self.identical:
            bad = (self.mismatched + self.missing)[:3]
            return (
                f"the recovered model differs from the merged one: {len(self.mismatched)} "
                f"tensors differ, {len(self.missing)} are missing (first: {', '.join(bad)})"
            )
        text = f"all {self.tensors} tensors identical to the merged model's"
        if self.rounded:
            text += (
                f" ({self.bit_identical} bit for bit by sha256; {self.rounded} within float32 "
                f"rounding, max |difference| {self.max_abs_difference:.2g}, as the manifest "
                "predicted)"
            )
        else:
            text += " bit for bit (sha256 of every tensor)"
        return text


def merge_into_base(base_dir: Path, train_dir: Path, out_dir: Path) -> None:
    """Fold the adapter of an `alpaca-train --lora --no-merge` output into the base and save
    a full model folder (weights, config, tokenizer) at `out_dir`."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(train_dir / ADAPTER_DIR))
    merge_adapter(base_dir, train_dir / ADAPTER_DIR, out_dir, tokenizer)


def compare_weights(merged_dir: Path, recovered_dir: Path, diff_dir: Path) -> WeightCheck:
    """Compare every tensor of `recovered_dir` with `merged_dir`'s (see the module docstring)."""
    from safetensors import safe_open

    manifest = json.loads((diff_dir / MANIFEST_FILE).read_text(encoding="utf-8"))
    may_round = {
        record["name"] for record in manifest.get("tensors", []) if "recovered_sha256" in record
    }
    merged, recovered = _tensor_files(merged_dir), _tensor_files(recovered_dir)
    check = WeightCheck()
    for name, merged_file in sorted(merged.items()):
        check.tensors += 1
        if name not in recovered:
            check.missing.append(name)
            continue
        with (
            safe_open(str(merged_file), "pt") as a_file,
            safe_open(str(recovered[name]), "pt") as b_file,
        ):
            a, b = a_file.get_tensor(name), b_file.get_tensor(name)
        if a.dtype == b.dtype and tensor_sha256(a) == tensor_sha256(b):
            check.bit_identical += 1
            continue
        difference = (a.float() - b.float()).abs().max().item() if a.shape == b.shape else None
        scale = max(a.float().abs().max().item(), 1e-30)
        if (
            name in may_round
            and difference is not None
            and difference <= ROUNDING_TOLERANCE * scale
        ):
            check.rounded += 1
            check.max_abs_difference = max(check.max_abs_difference, difference)
        else:
            check.mismatched.append(name)
    return check


def _tensor_files(folder: Path) -> dict[str, Path]:
    """Each tensor name of a safetensors model folder, with the file holding it."""
    from safetensors import safe_open

    files = {}
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), "pt") as handle:
            for name in handle.keys():  # noqa: SIM118 (safe_open has keys(), not iteration)
                files[name] = path
    return files
