"""Make and apply Alpaca-style weight diffs, one tensor at a time.

Usage:
    alpaca-recover make-diff --raw llama-7b-hf --tuned alpaca-7b --out alpaca-7b-wdiff
    alpaca-recover recover --raw llama-7b-hf --diff alpaca-7b-wdiff --out alpaca-7b

    from alpaca_serve.recover.weight_diff import make_diff, recover
    recover("llama-7b-hf", "alpaca-7b-wdiff", "alpaca-7b")

The format is the one of Stanford's `weight_diff.py` (and the published `alpaca-7b-wdiff`): every
tensor of the diff is `tuned - raw` in float32, recovery adds `raw` back in float32. When the diff's
vocabulary is one larger than the base's, the base first gets the `[PAD]` row, set (as the original
did) to the mean of the existing rows, in the input and in the output embeddings. The original's
integrity check is kept: the float32 sum of all tensor sums must be within 1e-2 of the expected
value (built in for the published 7B diff).

Beyond the original:
- `make_diff` writes `weight_diff_manifest.json`: each tensor's name, shape, dtype and checksums
  (of the tuned tensor as saved, of the base and diff tensors it came from), so `recover` checks
  every tensor and, on a mismatch, names the first bad one and the likely cause.
- Memory stays near the size of the largest tensor, not the model: tensors are read one at a time
  (safetensors memory-mapped, `.bin` shards with `torch.load(mmap=True)`) and output shards are
  written as a stream, the header first, since every shape is known before any arithmetic.
- The output is written to a hidden folder beside `out` and renamed into place only after every
  check passed, so a failed or interrupted run never leaves something that looks complete.
- A full disk stops a run with DiskFullError, one line; the shards already complete and checked
  stay in the hidden folder with `resume.json` (each one's sha256, and the running sum where it
  ends), and `resume=True` (`--resume`) checks them again and writes the rest. Without it, such a
  folder is refused (`force=True` deletes it and starts over).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, cast

from alpaca_serve.core.full_disk import full_disk_cause
from alpaca_serve.core.prompts import TEMPLATE_NAME
from alpaca_serve.core.provenance import MADE_BY_RECOVER, MARKER_FILE, made_at
from alpaca_serve.recover.folders import open_to_all

if TYPE_CHECKING:
    import torch

MANIFEST_FILE = "weight_diff_manifest.json"
MANIFEST_FORMAT = "alpaca-serve-weight-diff"
MANIFEST_VERSION = 1
# The original's naive integrity check: sum of all tensor sums of the recovered 7B model.
PUBLISHED_7B_SUM = 50637.1836
SUM_TOLERANCE = 1e-2
DEFAULT_MAX_SHARD_BYTES = 2 * 1024**3
# In the hidden folder of a run stopped by a full disk: what --resume keeps (_KeptShards).
KEPT_FILE = "resume.json"

# Files copied along with the weights: configuration, tokenizer, and this project's marker.
COPIED_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
    "vocab.json",
    "merges.txt",
    MARKER_FILE,
)

SAFETENSORS_DTYPES = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U8": "uint8",
    "BOOL": "bool",
}
DTYPE_SIZES = {
    "float64": 8,
    "float32": 4,
    "float16": 2,
    "bfloat16": 2,
    "int64": 8,
    "int32": 4,
    "int16": 2,
    "int8": 1,
    "uint8": 1,
    "bool": 1,
}
OUTPUT_DTYPES = ("auto", "float32", "float16", "bfloat16")


class WeightDiffError(RuntimeError):
    """A diff could not be made or applied; the message (one line) says why."""


class DiskFullError(WeightDiffError):
    """The disk filled while the output was written; the message (one line) names the cause, the
    output folder, and what `--resume` continues from."""


@dataclass(frozen=True)
class TensorEntry:
    """Where one tensor lives in a model folder, and what it is."""

    name: str
    file: Path
    shape: tuple[int, ...]
    dtype: str  # torch dtype name without "torch.", e.g. "float32"

    @property
    def numel(self) -> int:
        count = 1
        for size in self.shape:
            count *= size
        return count


@dataclass
class Pairing:
    """How one tensor of the tuned model (or of the diff) gets its base counterpart."""

    name: str
    shape: tuple[int, ...]
    base_name: str | None  # None: a buffer computed from the config (rotary inv_freq)
    add_pad_row: bool  # the base gets the [PAD] row before the arithmetic


@dataclass
class RecoverResult:
    """What `recover` wrote and checked."""

    out_dir: Path
    tensors: int
    bytes_written: int
    dtype: str
    verified_tensors: int  # checked against the manifest (0 for a diff without one)
    inexact_tensors: int  # not bit-identical to the tuned model (float32 rounding, per manifest)
    total_sum: float
    expected_sum: float | None
    pad_row_added: bool
    resumed_shards: int = 0  # shards kept from a run stopped by a full disk (resume=True)


@dataclass
class MakeDiffResult:
    """What `make_diff` wrote."""

    out_dir: Path
    tensors: int
    bytes_written: int
    inexact_tensors: int  # recovering them gives float32 rounding, not the saved bits
    expected_sum: float
    pad_row_added: bool
    resumed_shards: int = 0  # shards kept from a run stopped by a full disk (resume=True)


@dataclass
class ModelFolder:
    """The weight tensors of a Hugging Face model folder, read one at a time.

    Opening checks that every weight file is there and complete (a safetensors file shorter than
    its header says, or a `.bin` file whose zip directory is missing, is reported by name).
    """

    path: Path
    role: str  # "base model", "tuned model", "diff": used in messages
    entries: dict[str, TensorEntry] = field(default_factory=dict)
    config: dict = field(default_factory=dict)

    @classmethod
    def open(cls, path: Path, role: str) -> ModelFolder:
        path = Path(path)
        if not path.is_dir():
            raise WeightDiffError(f"{role} folder not found: {path}")
        folder = cls(path, role)
        config_path = path / "config.json"
        if config_path.is_file():
            folder.config = _read_json(config_path, role)
        for file in _weight_files(path, role):
            if file.suffix == ".safetensors":
                entries = _safetensors_entries(file, role)
            else:
                entries = _torch_bin_entries(file, role)
            for entry in entries:
                if entry.name in folder.entries:
                    raise WeightDiffError(
                        f"{role}: tensor {entry.name} is in both "
                        f"{folder.entries[entry.name].file.name} and {file.name}"
                    )
                folder.entries[entry.name] = entry
        if not folder.entries:
            raise WeightDiffError(f"{role}: no tensors in the weight files of {path}")
        return folder

    @property
    def names(self) -> list[str]:
        """Tensor names in file order (for `.bin` files: the order of the model's state_dict)."""
        return list(self.entries)

    def read(self, name: str) -> torch.Tensor:
        """The tensor `name` as saved (its own dtype), read from disk on its own."""
        import torch
        from safetensors import safe_open

        entry = self.entries[name]
        try:
            if entry.file.suffix == ".safetensors":
                # A fresh memory map per tensor: pages of tensors already processed are unmapped
                # instead of piling up in the resident set.
                with safe_open(str(entry.file), framework="pt") as handle:
                    tensor = handle.get_tensor(name)
            else:
                state = torch.load(entry.file, mmap=True, weights_only=True, map_location="cpu")
                tensor = state[name]
                del state
        except Exception as err:
            raise WeightDiffError(
                f"{self.role}: cannot read {name} from {entry.file}: {_first_line(err)}"
            ) from err
        if tuple(tensor.shape) != entry.shape:
            raise WeightDiffError(
                f"{self.role}: {entry.file.name} is damaged: {name} has shape "
                f"{list(tensor.shape)}, its header says {list(entry.shape)}"
            )
        return tensor


def make_diff(
    raw_dir: Path,
    tuned_dir: Path,
    out_dir: Path,
    *,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    force: bool = False,
    progress: bool = True,
    resume: bool = False,
) -> MakeDiffResult:
    """Write `tuned - raw` (float32, per tensor) with the tuned model's config and tokenizer.

    Also writes the manifest that `recover` checks every tensor against. `resume`: continue the
    output a run stopped by a full disk left.
    """
    import torch

    out_dir = Path(out_dir)
    _check_output_free(out_dir, force)
    raw = ModelFolder.open(raw_dir, "base model")
    tuned = ModelFolder.open(tuned_dir, "tuned model")
    pairings = _pair_tensors(raw, tuned, "tuned model")
    specs = [(p.name, "float32", p.shape) for p in pairings]
    plan = _plan("make-diff", [raw, tuned], specs, max_shard_bytes)
    kept = _kept_shards(out_dir, plan, force, resume)
    _check_disk_space(out_dir, _output_bytes(specs) - (kept.bytes if kept else 0))
    kept = kept or _KeptShards.new(out_dir, plan)

    with _staging_folder(out_dir, force, kept) as staging:
        manifest_tensors = list(kept.records)  # of the tensors in the kept shards
        total = torch.tensor(kept.total, dtype=torch.float32)
        with _ShardedWriter(
            staging, specs, max_shard_bytes, progress, "make-diff", len(kept.shards)
        ) as writer:
            for index, pairing in enumerate(pairings):
                if index < kept.tensors:
                    continue  # in a kept shard
                # 1. Read both tensors; the base gets the [PAD] row if the tuned vocabulary has it.
                tuned_tensor = tuned.read(pairing.name)
                base_tensor = _read_base(raw, pairing, tuned.config)
                base32 = _with_pad_row(base_tensor, pairing.add_pad_row)
                # 2. The diff, and what recover will compute from it, in float32 as the original.
                diff = tuned_tensor.to(torch.float32) - base32
                recovered = base32.add_(diff)  # base32 is not needed any more
                recovered_saved = recovered.to(tuned_tensor.dtype)
                exact = _same_bits(recovered_saved, tuned_tensor)
                total += recovered.sum()
                # 3. Record checksums so recover can tell a wrong base from a damaged download.
                record: dict[str, Any] = {
                    "name": pairing.name,
                    "shape": list(pairing.shape),
                    "dtype": _dtype_name(tuned_tensor.dtype),
                    "sha256": tensor_sha256(tuned_tensor),
                    "base_dtype": _dtype_name(base_tensor.dtype),
                    "base_sha256": tensor_sha256(base_tensor),
                    "diff_sha256": tensor_sha256(diff),
                }
                if not exact:
                    record["recovered_sha256"] = tensor_sha256(recovered_saved)
                    error = recovered_saved.to(torch.float32) - tuned_tensor.to(torch.float32)
                    record["max_abs_error"] = float(error.abs().max())
                manifest_tensors.append(record)
                writer.write(pairing.name, diff)
                del tuned_tensor, base_tensor, base32, diff, recovered, recovered_saved
                kept.note(writer, index + 1, total, manifest_tensors)

        pad = any(p.add_pad_row for p in pairings)
        manifest = {
            "format": MANIFEST_FORMAT,
            "version": MANIFEST_VERSION,
            "arithmetic": "float32 per tensor: diff = tuned - base; recovered = base + diff",
            "pad_row_added": pad,
            "expected_sum": float(total),
            "tensors": manifest_tensors,
        }
        _write_json(staging / MANIFEST_FILE, manifest)
        _copy_side_files(Path(tuned_dir), staging)
    inexact = sum("recovered_sha256" in record for record in manifest_tensors)
    return MakeDiffResult(
        out_dir,
        len(pairings),
        writer.bytes_written,
        inexact,
        float(total),
        pad,
        resumed_shards=kept.resumed,
    )


def recover(
    raw_dir: Path,
    diff_dir: Path,
    out_dir: Path,
    *,
    dtype: str = "auto",
    expected_sum: float | None = None,
    check_sum: bool = True,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    force: bool = False,
    progress: bool = True,
    resume: bool = False,
) -> RecoverResult:
    """Write `raw + diff` (float32 arithmetic, per tensor) with the diff's config and tokenizer.

    `dtype`: the saved dtype of the output; "auto" is the tuned model's (from the manifest), or
    float32 for a diff without one (the published format). With a manifest every tensor is checked
    against it; the sum check runs when an expected sum is known (given, from the manifest, or the
    published 7B value) unless `check_sum` is false. `resume`: continue the output a run stopped
    by a full disk left (its shards checked again), then check the rest and the sum as always.
    """
    import torch

    if dtype not in OUTPUT_DTYPES:
        raise WeightDiffError(f"dtype must be one of {', '.join(OUTPUT_DTYPES)}, not {dtype!r}")
    out_dir = Path(out_dir)
    _check_output_free(out_dir, force)
    raw = ModelFolder.open(raw_dir, "base model")
    diff = ModelFolder.open(diff_dir, "diff")
    manifest = _read_manifest(Path(diff_dir), diff)
    pairings = _pair_tensors(raw, diff, "diff")
    records = {r["name"]: r for r in manifest["tensors"]} if manifest else {}

    def output_dtype(name: str) -> str:
        if dtype != "auto":
            return dtype
        return records[name]["dtype"] if name in records else "float32"

    # Rotary inv_freq buffers (in diffs saved by older transformers) count in the sum but are not
    # written: loaders compute them from the config.
    written = [p for p in pairings if not _is_computed_buffer(p.name)]
    specs = [(p.name, output_dtype(p.name), p.shape) for p in written]
    if expected_sum is None and check_sum:
        expected_sum = _default_expected_sum(diff, manifest)
    plan = _plan("recover", [raw, diff], specs, max_shard_bytes)
    kept = _kept_shards(out_dir, plan, force, resume)
    _check_disk_space(out_dir, _output_bytes(specs) - (kept.bytes if kept else 0))
    kept = kept or _KeptShards.new(out_dir, plan)

    with _staging_folder(out_dir, force, kept) as staging:
        total = torch.tensor(kept.total, dtype=torch.float32)
        # The kept shards' tensors were checked against the manifest before they were kept.
        done = [records[p.name] for p in pairings[: kept.tensors] if p.name in records]
        verified, inexact = len(done), sum("recovered_sha256" in record for record in done)
        with (
            _ShardedWriter(
                staging, specs, max_shard_bytes, progress, "recover", len(kept.shards)
            ) as writer,
            ThreadPoolExecutor(max_workers=1) as hasher,
        ):
            for index, pairing in enumerate(pairings):
                if index < kept.tensors:
                    continue  # in a kept shard
                # 1. Base (with the [PAD] row if the diff has it) plus diff, in float32. Inputs are
                # dropped as soon as they are used: memory holds about two tensors at a time.
                base_tensor = _read_base(raw, pairing, diff.config)
                recovered = _with_pad_row(base_tensor, pairing.add_pad_row)
                del base_tensor
                recovered += diff.read(pairing.name).to(torch.float32)
                total += recovered.sum()
                # 2. Check against the manifest (hashing in a thread while the tensor is written to
                # the staging folder: a mismatch stops the run before anything is renamed).
                record = records.get(pairing.name)
                check = None
                if record is not None:
                    check = hasher.submit(_verify, record, recovered, raw, diff, pairing)
                    verified += 1
                    inexact += "recovered_sha256" in record
                # 3. Save in the output dtype.
                if not _is_computed_buffer(pairing.name):
                    saved = recovered.to(_torch_dtype(output_dtype(pairing.name)))
                    writer.write(pairing.name, saved)
                    del saved
                if check is not None:
                    check.result()
                del recovered
                kept.note(writer, index + 1, total)

        total_sum = float(total)
        if check_sum and expected_sum is not None:
            _check_sum(total, expected_sum)
        out_dtypes = {s[1] for s in specs}
        config_dtype = out_dtypes.pop() if len(out_dtypes) == 1 else None
        _copy_side_files(Path(diff_dir), staging, config_dtype=config_dtype)
        _write_marker(staging, Path(diff_dir), Path(raw_dir), config_dtype)
    return RecoverResult(
        out_dir=out_dir,
        tensors=len(written),
        bytes_written=writer.bytes_written,
        dtype=config_dtype or "mixed",
        verified_tensors=verified,
        inexact_tensors=inexact,
        total_sum=total_sum,
        expected_sum=expected_sum if check_sum else None,
        pad_row_added=any(p.add_pad_row for p in pairings),
        resumed_shards=kept.resumed,
    )


def tensor_sha256(tensor: torch.Tensor) -> str:
    """sha256 of a tensor's bytes as saved: contiguous, in its own dtype, little-endian."""
    return hashlib.sha256(_tensor_bytes(tensor)).hexdigest()


def parse_size(text: str) -> int:
    """Bytes in "2GB", "500MB", "1.5GiB", "4096" (GB = 10^9, GiB = 2^30)."""
    units = {
        "": 1,
        "B": 1,
        "KB": 10**3,
        "MB": 10**6,
        "GB": 10**9,
        "TB": 10**12,
        "KIB": 2**10,
        "MIB": 2**20,
        "GIB": 2**30,
        "TIB": 2**40,
    }
    stripped = text.strip().upper()
    number = stripped.rstrip("KMGTIB")
    unit = stripped[len(number) :]
    try:
        value = float(number)
    except ValueError:
        value = -1.0
    if unit not in units or value <= 0:
        raise ValueError(f"not a size: {text!r} (examples: 2GB, 500MB, 1GiB)")
    return int(value * units[unit])


# ---------------------------------------------------------------------------------------------
# Pairing the tensors of two models


def _pair_tensors(base: ModelFolder, other: ModelFolder, other_role: str) -> list[Pairing]:
    """Pair each tensor of `other` (tuned model or diff) with its base tensor, or fail naming it."""
    pairings = []
    missing = []
    used_base = set()
    for name in other.names:
        shape = other.entries[name].shape
        if name in base.entries:
            base_name = name
        elif name.endswith("lm_head.weight") and _embedding_name(base) is not None:
            # A base with tied embeddings saves no lm_head: its output embedding is the input one.
            base_name = cast(str, _embedding_name(base))  # not None: the elif checked it
        elif _is_computed_buffer(name):
            pairings.append(Pairing(name, shape, None, False))
            continue
        else:
            missing.append(name)
            continue
        used_base.add(base_name)
        base_shape = base.entries[base_name].shape
        add_pad_row = False
        if base_shape != shape:
            add_pad_row = (
                _is_embedding(name)
                and len(shape) == 2
                and shape[0] == base_shape[0] + 1
                and shape[1:] == base_shape[1:]
            )
            if not add_pad_row:
                raise WeightDiffError(
                    f"shape mismatch for {name}: base model {list(base_shape)}, "
                    f"{other_role} {list(shape)} (wrong base model?)"
                )
        pairings.append(Pairing(name, shape, base_name, add_pad_row))
    if missing:
        raise WeightDiffError(
            f"the base model lacks {_count(missing, 'tensor')} that the {other_role} has: "
            f"{_some(missing)} (wrong base model?)"
        )
    extra = [n for n in base.names if n not in used_base and not _is_computed_buffer(n)]
    if extra:
        raise WeightDiffError(
            f"the base model has {_count(extra, 'tensor')} that the {other_role} lacks: "
            f"{_some(extra)} (wrong base model?)"
        )
    return pairings


def _read_base(base: ModelFolder, pairing: Pairing, config: dict) -> torch.Tensor:
    if pairing.base_name is not None:
        return base.read(pairing.base_name)
    return _rotary_inv_freq(base.config or config, pairing.shape)


def _with_pad_row(tensor: torch.Tensor, add_pad_row: bool) -> torch.Tensor:
    """The tensor as a new float32 one, with the original's mean-initialised [PAD] row if asked."""
    import torch

    if not add_pad_row:
        return tensor.to(torch.float32, copy=True)
    # As smart_tokenizer_and_embedding_resize: the new row is the mean of the existing rows.
    # Filled in place rather than concatenated, so only one float32 copy exists at a time.
    padded = torch.empty((tensor.shape[0] + 1, *tensor.shape[1:]), dtype=torch.float32)
    padded[:-1].copy_(tensor)
    padded[-1:] = padded[:-1].mean(dim=0, keepdim=True)
    return padded


def _rotary_inv_freq(config: dict, shape: tuple[int, ...]) -> torch.Tensor:
    """The rotary `inv_freq` buffer older transformers saved, computed as they computed it."""
    import torch

    heads = config.get("num_attention_heads")
    dim = config.get("head_dim") or (config["hidden_size"] // heads if heads else 0)
    rope = config.get("rope_parameters") or {}
    theta = float(config.get("rope_theta") or rope.get("rope_theta") or 10000.0)
    if not dim or (dim // 2,) != tuple(shape):
        raise WeightDiffError(
            f"the base model has no rotary inv_freq buffer and its config does not give one of "
            f"shape {list(shape)}"
        )
    return 1.0 / (theta ** (torch.arange(0, dim, 2).float() / dim))


def _is_computed_buffer(name: str) -> bool:
    return name.endswith("rotary_emb.inv_freq")


def _is_embedding(name: str) -> bool:
    return name.endswith("embed_tokens.weight") or name.endswith("lm_head.weight")


def _embedding_name(folder: ModelFolder) -> str | None:
    return next((n for n in folder.names if n.endswith("embed_tokens.weight")), None)


# ---------------------------------------------------------------------------------------------
# Checks


def _check_output_free(out_dir: Path, force: bool) -> None:
    if out_dir.exists() and not force:
        raise WeightDiffError(f"output folder exists: {out_dir} (add --force to replace it)")


def _check_disk_space(out_dir: Path, needed: int) -> None:
    parent = out_dir.absolute().parent
    parent.mkdir(parents=True, exist_ok=True)
    needed += 16 * 1024**2  # tokenizer, config, manifest
    free = shutil.disk_usage(parent).free
    if free < needed:
        raise WeightDiffError(
            f"not enough disk space in {parent}: the output needs {_gb(needed)}, {_gb(free)} free"
        )


def _read_manifest(diff_dir: Path, diff: ModelFolder) -> dict | None:
    path = diff_dir / MANIFEST_FILE
    if not path.is_file():
        return None
    manifest = _read_json(path, "diff")
    if manifest.get("format") != MANIFEST_FORMAT or manifest.get("version") != MANIFEST_VERSION:
        raise WeightDiffError(f"{path} is not a version {MANIFEST_VERSION} weight-diff manifest")
    listed = {r["name"]: tuple(r["shape"]) for r in manifest["tensors"]}
    stored = {name: entry.shape for name, entry in diff.entries.items()}
    missing = [n for n in listed if n not in stored]
    if missing:
        raise WeightDiffError(
            f"the diff's weight files lack {_count(missing, 'tensor')} its manifest lists: "
            f"{_some(missing)} (incomplete download?)"
        )
    for name, shape in stored.items():
        if name not in listed:
            raise WeightDiffError(f"the diff has a tensor its manifest does not list: {name}")
        if listed[name] != shape:
            raise WeightDiffError(
                f"shape mismatch for {name}: diff {list(shape)}, its manifest {list(listed[name])}"
            )
    return manifest


def _default_expected_sum(diff: ModelFolder, manifest: dict | None) -> float | None:
    if manifest is not None:
        return manifest["expected_sum"]
    config = diff.config
    is_published_7b = (
        config.get("vocab_size") == 32001
        and config.get("hidden_size") == 4096
        and config.get("num_hidden_layers") == 32
    )
    return PUBLISHED_7B_SUM if is_published_7b else None


def _verify(
    record: dict, recovered: torch.Tensor, raw: ModelFolder, diff: ModelFolder, pairing: Pairing
) -> None:
    """Compare a recovered tensor with the manifest; on a mismatch, find out which input is off."""
    name = record["name"]
    expected = record.get("recovered_sha256", record["sha256"])
    if tensor_sha256(recovered.to(_torch_dtype(record["dtype"]))) == expected:
        return
    # Read both inputs again (they were not kept, to save memory) to compare them with the manifest.
    diff_tensor = diff.read(name)
    base_tensor = _read_base(raw, pairing, diff.config)
    prefix = f"{name} does not match the diff's manifest:"
    if tensor_sha256(diff_tensor) != record["diff_sha256"]:
        raise WeightDiffError(
            f"{prefix} the diff file {diff.entries[name].file.name} is damaged "
            f"(truncated or corrupted download?); download it again"
        )
    base_dtype = _dtype_name(base_tensor.dtype)
    if base_dtype != record["base_dtype"]:
        raise WeightDiffError(
            f"{prefix} the base model stores it as {base_dtype}, the diff was made from a "
            f"{record['base_dtype']} base (base converted with another version or settings?)"
        )
    if tensor_sha256(base_tensor) != record["base_sha256"]:
        raise WeightDiffError(
            f"{prefix} the base model's tensor differs from the one the diff was made from "
            f"(wrong base model, or a base converted with another version?)"
        )
    raise WeightDiffError(f"{prefix} base and diff match it but their sum does not (a bug?)")


def _check_sum(total: torch.Tensor, expected: float) -> None:
    """The original's check: |sum - expected| <= 1e-2, computed in float32 as it did."""
    import torch

    expected32 = torch.tensor(expected, dtype=torch.float32)
    if not torch.allclose(total, expected32, atol=SUM_TOLERANCE, rtol=0):
        raise WeightDiffError(
            f"integrity check failed: the recovered tensors sum to {float(total):.4f}, expected "
            f"{expected:.4f} (within {SUM_TOLERANCE}): wrong base model, a base converted with "
            f"another version, or a damaged file"
        )


# ---------------------------------------------------------------------------------------------
# Reading weight files


def _weight_files(path: Path, role: str) -> list[Path]:
    for index_name, single_name in (
        ("model.safetensors.index.json", "model.safetensors"),
        ("pytorch_model.bin.index.json", "pytorch_model.bin"),
    ):
        index_path = path / index_name
        if index_path.is_file():
            weight_map = _read_json(index_path, role).get("weight_map", {})
            files = sorted(set(weight_map.values()))
            for file in files:
                if not (path / file).is_file():
                    raise WeightDiffError(
                        f"{role}: {file}, listed in {index_name}, is missing (incomplete download?)"
                    )
            return [path / file for file in files]
        if (path / single_name).is_file():
            return [path / single_name]
    raise WeightDiffError(
        f"{role}: no weights in {path} (expected model.safetensors, pytorch_model.bin, "
        f"or a sharded index of either)"
    )


def _safetensors_entries(file: Path, role: str) -> list[TensorEntry]:
    """Entries from a safetensors header, in data order; checks the file holds all the data."""
    size = file.stat().st_size
    try:
        with open(file, "rb") as handle:
            header_len = int.from_bytes(handle.read(8), "little")
            if size < 8 or header_len > min(size - 8, 100 * 1024**2):
                raise ValueError("no complete safetensors header")
            header = json.loads(handle.read(header_len))
    except (OSError, ValueError) as err:
        raise WeightDiffError(
            f"{role}: {file} is not a readable safetensors file "
            f"({_first_line(err)}; truncated or corrupted download?)"
        ) from err
    header.pop("__metadata__", None)
    entries = []
    data_end = 0
    for name, info in sorted(header.items(), key=lambda item: item[1]["data_offsets"][0]):
        dtype = SAFETENSORS_DTYPES.get(info["dtype"])
        if dtype is None:
            raise WeightDiffError(f"{role}: {file.name}: {name} has dtype {info['dtype']}")
        entry = TensorEntry(name, file, tuple(info["shape"]), dtype)
        start, end = info["data_offsets"]
        if end - start != entry.numel * DTYPE_SIZES[dtype]:
            raise WeightDiffError(f"{role}: {file} is damaged: {name} does not fit its shape")
        data_end = max(data_end, end)
        entries.append(entry)
    expected_size = 8 + header_len + data_end
    if size < expected_size:
        raise WeightDiffError(
            f"{role}: {file} is truncated: {size} bytes, its header needs {expected_size} "
            f"(incomplete download? download it again)"
        )
    return entries


def _torch_bin_entries(file: Path, role: str) -> list[TensorEntry]:
    """Entries of a PyTorch `.bin` shard, in saved (state_dict) order; reads no tensor data."""
    import torch

    try:
        state = torch.load(file, mmap=True, weights_only=True, map_location="cpu")
    except Exception as err:  # torch raises several types for a damaged zip
        raise WeightDiffError(
            f"{role}: {file} is not a readable PyTorch file "
            f"({_first_line(err)}; truncated or corrupted download?)"
        ) from err
    if not isinstance(state, dict):
        raise WeightDiffError(f"{role}: {file} does not hold a state dict")
    entries = [
        TensorEntry(name, file, tuple(t.shape), _dtype_name(t.dtype)) for name, t in state.items()
    ]
    del state
    return entries


# ---------------------------------------------------------------------------------------------
# Writing the output


class _ShardedWriter:
    """Streams tensors into safetensors shards whose layout is fixed before the first tensor.

    Each shard's header (names, dtypes, shapes, offsets) is written first, then tensor bytes as
    they come, so no shard is ever held in memory. Writes `model.safetensors.index.json` when
    there is more than one shard. Tensors must come in the planned order, from the first of
    shard `start` (the shards before it are already written: a resumed run). Each shard is
    closed, synced, and its sha256 noted in `done` as soon as its last tensor is written.
    """

    def __init__(
        self, folder: Path, specs, max_shard_bytes: int, progress: bool, desc: str, start: int = 0
    ):
        self.folder = folder
        self.shards = _plan_shards(specs, max_shard_bytes)
        self.file_names = _shard_file_names(len(self.shards))
        self.total = _output_bytes(specs)
        self._order = [(i, spec) for i, shard in enumerate(self.shards) for spec in shard]
        self._next = sum(len(shard) for shard in self.shards[:start])
        self.bytes_written = _output_bytes(spec for _, spec in self._order[: self._next])
        self.done: list[dict[str, Any]] = []  # {"file", "bytes", "sha256"} of the shards closed
        self.shards_done = start
        self._handle: BinaryIO | None = None
        self._hash: Any = None
        self._shard = -1
        self._progress_on = progress
        self._desc = desc

    def __enter__(self) -> _ShardedWriter:
        from tqdm import tqdm  # type: ignore[import-untyped]  # no types-tqdm installed

        self.bar = tqdm(
            total=self.total,
            initial=self.bytes_written,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=self._desc,
            disable=not self._progress_on,
        )
        return self

    def write(self, name: str, tensor: torch.Tensor) -> None:
        shard, (spec_name, spec_dtype, spec_shape) = self._order[self._next]
        if (name, _dtype_name(tensor.dtype), tuple(tensor.shape)) != (
            spec_name,
            spec_dtype,
            tuple(spec_shape),
        ):
            raise RuntimeError(f"writer expected {spec_name} {spec_dtype} {spec_shape}, got {name}")
        if shard != self._shard:
            self._close_shard()
            self._open_shard(shard)
        data = _tensor_bytes(tensor)
        assert self._handle is not None  # the shard of the first tensor was opened above
        self._handle.write(data)
        self._hash.update(data)
        self._next += 1
        self.bytes_written += len(data)
        self.bar.update(len(data))
        if self._next == len(self._order) or self._order[self._next][0] != shard:
            self._close_shard()

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                if self._next != len(self._order):
                    raise RuntimeError("writer closed before every tensor was written")
                self._close_shard()
                if len(self.shards) > 1:
                    weight_map = {
                        name: self.file_names[i]
                        for i, shard in enumerate(self.shards)
                        for name, _, _ in shard
                    }
                    index = {"metadata": {"total_size": self.total}, "weight_map": weight_map}
                    _write_json(self.folder / "model.safetensors.index.json", index)
        finally:
            try:
                if self._handle is not None:
                    self._handle.close()  # after a full disk, this raises it again
            finally:
                self.bar.close()

    def _open_shard(self, shard: int) -> None:
        header: dict[str, dict[str, Any]] = {"__metadata__": {"format": "pt"}}
        offset = 0
        inverse = {v: k for k, v in SAFETENSORS_DTYPES.items()}
        for name, dtype, shape in self.shards[shard]:
            size = _numel(shape) * DTYPE_SIZES[dtype]
            header[name] = {
                "dtype": inverse[dtype],
                "shape": list(shape),
                "data_offsets": [offset, offset + size],
            }
            offset += size
        encoded = json.dumps(header, separators=(",", ":")).encode()
        encoded += b" " * (-len(encoded) % 8)  # the data starts 8-byte aligned
        start = len(encoded).to_bytes(8, "little") + encoded
        self._handle = open(self.folder / self.file_names[shard], "wb")
        self._handle.write(start)
        self._hash = hashlib.sha256(start)
        self._shard = shard

    def _close_shard(self) -> None:
        if self._handle is None:
            return
        self._handle.flush()
        os.fsync(self._handle.fileno())
        size = self._handle.tell()
        self._handle.close()
        self._handle = None
        name = self.file_names[self._shard]
        self.done.append({"file": name, "bytes": size, "sha256": self._hash.hexdigest()})
        self.shards_done = self._shard + 1


def _shard_file_names(count: int) -> list[str]:
    if count == 1:
        return ["model.safetensors"]
    return [f"model-{i + 1:05d}-of-{count:05d}.safetensors" for i in range(count)]


def _plan_shards(specs, max_shard_bytes: int) -> list[list[tuple]]:
    shards: list[list[tuple]] = [[]]
    size = 0
    for spec in specs:
        tensor_bytes = _numel(spec[2]) * DTYPE_SIZES[spec[1]]
        if shards[-1] and size + tensor_bytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(spec)
        size += tensor_bytes
    return shards


@contextmanager
def _staging_folder(out_dir: Path, force: bool, kept: _KeptShards) -> Iterator[Path]:
    """The hidden folder beside `out_dir` that `kept` keeps (new, or one to continue), renamed to
    `out_dir` only if the block completes. On a full disk, DiskFullError, and the shards complete
    in it are kept for `--resume`; on any other failure it is removed."""
    staging = kept.folder
    keep = False
    try:
        yield staging
        (staging / KEPT_FILE).unlink(missing_ok=True)
        open_to_all(staging)
        _fsync_dir(staging)
        old = None
        if out_dir.exists() and force:
            old = out_dir.with_name(f".{out_dir.name}.replaced-{os.getpid()}")
            out_dir.rename(old)
        staging.rename(out_dir)
        _fsync_dir(out_dir.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except Exception as err:
        cause = full_disk_cause(err, staging)
        if cause is None:
            raise
        keep = kept.keep_only_shards()
        where = f"{cause} in {out_dir.absolute().parent} while writing {out_dir}"
        if not keep:
            raise DiskFullError(
                f"{where}: nothing was kept; free space and run the same command again"
            ) from err
        raise DiskFullError(
            f"{where}: {len(kept.shards)} of {len(kept.plan['files'])} shards "
            f"({_gb(kept.bytes)}) are written and checked in {staging}; free space and run the "
            "same command with --resume to continue (or delete that folder)"
        ) from err
    finally:
        if not keep:
            shutil.rmtree(staging, ignore_errors=True)


@dataclass
class _KeptShards:
    """The shards of a hidden output folder that are complete and checked, in its resume.json:
    each one's file, size and sha256, with the number of tensors (of the pairing list) done where
    it ends, the float32 running sum there and (make-diff) how many manifest records were made;
    those records; and the plan (inputs, tensors, shard files) they were written for."""

    folder: Path
    plan: dict[str, Any]
    shards: list[dict[str, Any]] = field(default_factory=list)
    records: list[dict[str, Any]] = field(default_factory=list)  # make-diff's manifest so far
    resumed: int = 0  # of `shards`, those a stopped run left

    @classmethod
    def new(cls, out_dir: Path, plan: dict[str, Any]) -> _KeptShards:
        prefix = f".{out_dir.name}.incomplete-"
        return cls(Path(tempfile.mkdtemp(prefix=prefix, dir=out_dir.absolute().parent)), plan)

    @property
    def tensors(self) -> int:
        return self.shards[-1]["tensors"] if self.shards else 0

    @property
    def total(self) -> float:
        return self.shards[-1]["total"] if self.shards else 0.0

    @property
    def bytes(self) -> int:
        return sum(shard["bytes"] for shard in self.shards)

    def note(
        self,
        writer: _ShardedWriter,
        tensors: int,
        total: torch.Tensor,
        records: list[dict[str, Any]] | None = None,
    ) -> None:
        """After the first `tensors` tensors are written and checked: keep the shard they
        completed, if they did."""
        if writer.shards_done == len(self.shards):
            return
        records = self.records if records is None else list(records)
        shard = {**writer.done[-1], "tensors": tensors, "total": float(total)}
        self.save([*self.shards, {**shard, "records": len(records)}], records)

    def save(self, shards: list[dict[str, Any]], records: list[dict[str, Any]]) -> None:
        """Keep `shards` (and the manifest `records`): resume.json, written whole and then
        renamed, so that a full disk while writing it leaves the last one, as this object."""
        state = {"plan": self.plan, "shards": shards, "records": records}
        _write_json(self.folder / f"{KEPT_FILE}.new", state)
        (self.folder / f"{KEPT_FILE}.new").replace(self.folder / KEPT_FILE)
        self.shards, self.records = shards, records

    def keep_only_shards(self) -> bool:
        """Delete what is not a kept shard (the one cut short, side files); whether any shard is
        kept (otherwise the folder is worth nothing)."""
        if not self.shards:
            return False
        keep = {shard["file"] for shard in self.shards} | {KEPT_FILE}
        for path in self.folder.iterdir():
            if path.name not in keep:
                path.unlink()
        return True


def _plan(command: str, inputs: list[ModelFolder], specs, max_shard_bytes: int) -> dict:
    """What a kept shard was written for: the command, its input files as they were (size and
    time), every output tensor, and the shard files."""
    files = sorted({entry.file for folder in inputs for entry in folder.entries.values()})
    stats = [(str(file.absolute()), file.stat().st_size, file.stat().st_mtime_ns) for file in files]
    plan = {
        "command": command,
        "inputs": stats,
        "tensors": [[name, dtype, list(shape)] for name, dtype, shape in specs],
        "max_shard_bytes": max_shard_bytes,
        "files": _shard_file_names(len(_plan_shards(specs, max_shard_bytes))),
    }
    return json.loads(json.dumps(plan))  # as read back from resume.json


def _kept_shards(out_dir: Path, plan: dict, force: bool, resume: bool) -> _KeptShards | None:
    """The kept shards of a hidden folder a run stopped by a full disk left beside `out_dir`, to
    continue (`resume`), checked again: those up to the first that changed. Without `resume`
    such a folder is refused, or with `force` deleted."""
    hidden = out_dir.absolute().parent.glob(f".{out_dir.name}.incomplete-*")
    partials = sorted(
        (path for path in hidden if (path / KEPT_FILE).is_file()),
        key=lambda path: (path / KEPT_FILE).stat().st_mtime,
    )
    if force:
        for path in partials:
            shutil.rmtree(path, ignore_errors=True)
        return None
    if not partials:
        return None
    folder = partials[-1]
    state = _read_json(folder / KEPT_FILE, "partial output")
    if not resume:
        raise WeightDiffError(
            f"{folder} holds {_count(state.get('shards', []), 'shard')} of {out_dir}, written "
            "before a full disk stopped the run: add --resume to continue it, or --force to "
            "start over"
        )
    if state.get("plan") != plan:
        raise WeightDiffError(
            f"--resume: {folder} was written from other inputs or options (input files changed, "
            "or another --dtype or --max-shard-size): run without --resume and with --force to "
            "start over"
        )
    kept = _KeptShards(folder, plan)
    for shard in state["shards"]:
        path = folder / shard["file"]
        if not path.is_file() or path.stat().st_size != shard["bytes"]:
            break
        if _file_sha256(path) != shard["sha256"]:
            break
        kept.shards.append(shard)
    if not kept.shards:  # none left as it was written: start over
        shutil.rmtree(folder, ignore_errors=True)
        return None
    kept.records = state["records"][: kept.shards[-1]["records"]]
    kept.resumed = len(kept.shards)
    kept.keep_only_shards()
    kept.save(kept.shards, kept.records)
    return kept


def _copy_side_files(source: Path, dest: Path, config_dtype: str | None = None) -> None:
    """Copy config, tokenizer and marker files; set the config's dtype to the saved one."""
    for name in COPIED_FILES:
        if (source / name).is_file():
            shutil.copyfile(source / name, dest / name)
    config_path = dest / "config.json"
    if config_dtype and config_path.is_file():
        config = _read_json(config_path, "diff")
        keys = [k for k in ("torch_dtype", "dtype") if k in config] or ["torch_dtype"]
        for key in keys:
            config[key] = config_dtype
        _write_json(config_path, config)


def _write_marker(folder: Path, diff_dir: Path, raw_dir: Path, dtype: str | None) -> None:
    """The self-description this project's checkpoints carry (read by training/provenance.py):
    the prompt template (the tuned model's, when the diff carries its marker), who made the
    folder, from which diff and base, when, and the saved dtype."""
    path = folder / MARKER_FILE
    tuned = _read_json(path, "diff") if path.is_file() else {}
    marker = {
        "prompt_template": tuned.get("prompt_template") or TEMPLATE_NAME,
        "made_by": MADE_BY_RECOVER,
        "created_at": made_at(),
        "diff": str(diff_dir.resolve()),
        "base": str(raw_dir.resolve()),
        "dtype": dtype or "mixed",
    }
    _write_json(path, marker)


# ---------------------------------------------------------------------------------------------
# Small helpers


def _tensor_bytes(tensor: torch.Tensor):
    """The tensor's bytes as a buffer (no copy when it is already contiguous)."""
    import torch

    return tensor.contiguous().reshape(-1).view(torch.uint8).numpy().data


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    import torch

    return a.dtype == b.dtype and torch.equal(
        a.contiguous().reshape(-1).view(torch.uint8), b.contiguous().reshape(-1).view(torch.uint8)
    )


def _dtype_name(dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _torch_dtype(name: str):
    import torch

    return getattr(torch, name)


def _numel(shape: Iterable[int]) -> int:
    count = 1
    for size in shape:
        count *= size
    return count


def _output_bytes(specs) -> int:
    return sum(_numel(shape) * DTYPE_SIZES[dtype] for _, dtype, shape in specs)


def _read_json(path: Path, role: str) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise WeightDiffError(f"{role}: cannot read {path}: {_first_line(err)}") from err


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 24), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _first_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0]


def _count(items: list, noun: str) -> str:
    return f"{len(items)} {noun}{'s' if len(items) != 1 else ''}"


def _some(names: list[str], limit: int = 3) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _gb(size: int) -> str:
    return f"{size / 1e9:.2f} GB"
