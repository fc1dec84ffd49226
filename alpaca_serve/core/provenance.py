"""Where a model folder came from, read from the marker files this project writes beside weights.

Usage:
    from alpaca_serve.core.provenance import read_provenance
    provenance = read_provenance(Path("alpaca-7b"))
    provenance.prompt_template, provenance.made_by, provenance.as_json()

Three commands write a marker into the folder they make:
- `alpaca-train` (training/train.py): `alpaca_train.json`, with the prompt template, the method
  (full or LoRA), the objective (sft or dpo), the base model, the data and every argument;
- `alpaca-recover` (recover/weight_diff.py): `alpaca_serve.json` naming the diff and the base;
- `alpaca-convert` (recover/convert.py): `alpaca_serve.json` naming the GGUF file.
A folder with no marker (any Hugging Face model) is of unknown origin; it is served with the
Alpaca template, which is then assumed rather than known.

Server, training and recovery all import this module, so it only reads JSON: no torch, no
transformers, no other module of theirs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from alpaca_serve.core.prompts import TEMPLATE_NAME

TRAIN_INFO_FILE = "alpaca_train.json"  # written by alpaca-train
MARKER_FILE = "alpaca_serve.json"  # written by alpaca-recover and alpaca-convert

MADE_BY_TRAIN = "alpaca-train"
MADE_BY_RECOVER = "alpaca-recover"
MADE_BY_CONVERT = "alpaca-convert"
# Markers written before they named their maker said it in "source" only.
_LEGACY_RECOVER_PREFIX = "weight diff "


@dataclass(frozen=True)
class Provenance:
    """What a model folder says about itself."""

    prompt_template: str
    template_source: str  # "marker": written by the command that made the folder; "assumed"
    made_by: str | None = None  # alpaca-train, alpaca-recover, alpaca-convert; None: unknown
    marker: str | None = None  # the file it was read from
    created_at: str | None = None  # ISO 8601, UTC; None when the marker predates the field
    details: dict[str, Any] = field(default_factory=dict)  # what the maker records (see below)
    error: str | None = None  # why a marker that is there could not be read

    def as_json(self) -> dict[str, Any]:
        """The provenance as /info reports it."""
        body: dict[str, Any] = {
            "made_by": self.made_by,
            "marker": self.marker,
            "prompt_template_source": self.template_source,
            "created_at": self.created_at,
            **self.details,
        }
        if self.error is not None:
            body["error"] = self.error
        return body


def unknown_provenance(error: str | None = None, marker: str | None = None) -> Provenance:
    """A folder that says nothing about itself: the Alpaca template is assumed."""
    return Provenance(TEMPLATE_NAME, "assumed", marker=marker, error=error)


def read_provenance(model_dir: Path) -> Provenance:
    """The provenance of `model_dir` from its marker files; never raises for a bad marker.

    A recovery marker wins over a training one (recovery writes a fresh folder last), a training
    marker over a conversion one.
    """
    model_dir = Path(model_dir)
    try:
        serve_marker = _read_marker(model_dir / MARKER_FILE)
        train_marker = _read_marker(model_dir / TRAIN_INFO_FILE)
    except _MarkerError as err:
        return unknown_provenance(str(err), err.marker)
    serve_made_by = _serve_marker_maker(serve_marker) if serve_marker is not None else None
    if serve_made_by == MADE_BY_RECOVER:
        assert serve_marker is not None  # serve_made_by was read from it
        return _recovered(serve_marker)
    if train_marker is not None:
        return _trained(train_marker)
    if serve_made_by == MADE_BY_CONVERT:
        assert serve_marker is not None  # serve_made_by was read from it
        return _converted(serve_marker)
    if serve_marker is not None:
        return _from_marker(serve_marker, MARKER_FILE, None, {})
    return unknown_provenance()


def made_at() -> str:
    """Now, as the markers record it: ISO 8601 in UTC, to the second."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _trained(marker: dict) -> Provenance:
    data = marker.get("data")
    details = {
        "method": marker.get("method"),
        # what the training optimised: sft, or dpo (preferences); markers before DPO were sft
        "objective": marker.get("objective") or "sft",
        "base_model": marker.get("base_model"),
        "data": data.get("path") if isinstance(data, dict) else data,
    }
    return _from_marker(marker, TRAIN_INFO_FILE, MADE_BY_TRAIN, details)


def _recovered(marker: dict) -> Provenance:
    source = str(marker.get("source") or "")
    legacy_diff = source.removeprefix(_LEGACY_RECOVER_PREFIX) if source else None
    details = {"diff": marker.get("diff") or legacy_diff, "base": marker.get("base")}
    return _from_marker(marker, MARKER_FILE, MADE_BY_RECOVER, details)


def _converted(marker: dict) -> Provenance:
    details = {"gguf": marker.get("gguf") or marker.get("source")}
    return _from_marker(marker, MARKER_FILE, MADE_BY_CONVERT, details)


def _from_marker(marker: dict, name: str, made_by: str | None, details: dict) -> Provenance:
    template = marker.get("prompt_template")
    return Provenance(
        prompt_template=template if isinstance(template, str) and template else TEMPLATE_NAME,
        template_source="marker" if isinstance(template, str) and template else "assumed",
        made_by=made_by,
        marker=name,
        created_at=marker.get("created_at"),
        details=details,
    )


def _serve_marker_maker(marker: dict) -> str | None:
    """Who wrote an alpaca_serve.json: its "made_by", or for older markers, its "source"."""
    made_by = marker.get("made_by")
    if made_by in (MADE_BY_RECOVER, MADE_BY_CONVERT):
        return made_by
    source = str(marker.get("source") or "")
    if source.startswith(_LEGACY_RECOVER_PREFIX):
        return MADE_BY_RECOVER
    if source.endswith(".gguf"):
        return MADE_BY_CONVERT
    return None


class _MarkerError(ValueError):
    def __init__(self, message: str, marker: str):
        super().__init__(message)
        self.marker = marker


def _read_marker(path: Path) -> dict | None:
    """The marker's JSON object, None when the file is absent."""
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise _MarkerError(f"{path.name} could not be read: {err}", path.name) from err
    if not isinstance(value, dict):
        raise _MarkerError(f"{path.name} is not a JSON object", path.name)
    return value
