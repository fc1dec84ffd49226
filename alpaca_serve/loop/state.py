"""The work folder's memory: which stages finished, what they wrote, and the run's settings.

Usage:
    state = LoopState.load(Path("loop-run"))        # a fresh state when there is no file yet
    state.is_done("sft")                            # finished in an earlier run?
    state.finish("sft", {"adapter": "loop-run/sft/adapter"}, "adapter loop-sft served")
    state.forget_from("publish")                    # a stage run again makes the later ones stale
    state.settings["server_url"]                    # what the first run was told, for the rest

The file is `WORK_DIR/loop_state.json`, rewritten whole (a temporary file renamed into place), so
a run killed at any moment leaves the previous state or the new one, never half of one. A stage is
recorded only once everything it does has succeeded: a rerun starts again at the first stage that
is not recorded.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

STATE_FILE = "loop_state.json"
STATE_FORMAT = "alpaca-loop-state"
STATE_VERSION = 1
# The stages of the cycle, in the order they run.
STAGES = ("sft", "publish", "compare", "prefer", "report")
# The stages whose outputs each stage reads. The report covers the comparisons there are, so it
# can run (`alpaca-loop report`) when prefer could not.
NEEDS = {
    "sft": (),
    "publish": ("sft",),
    "compare": ("sft",),
    "prefer": ("sft", "compare"),
    "report": ("compare",),
}


class StateError(ValueError):
    """The state file cannot be used; the message (one line) says why."""


@dataclass
class StageRecord:
    """A finished stage: when, what it wrote (name -> path or value), what it did in a line."""

    finished_at: str
    seconds: float
    outputs: dict[str, Any]
    summary: str


@dataclass
class LoopState:
    """The state of one work folder (see the module docstring)."""

    work_dir: Path
    settings: dict[str, Any] = field(default_factory=dict)
    stages: dict[str, StageRecord] = field(default_factory=dict)

    @property
    def path(self) -> Path:
        return self.work_dir / STATE_FILE

    @classmethod
    def load(cls, work_dir: Path) -> LoopState:
        """The state saved in `work_dir`, or an empty one when it has none."""
        state = cls(work_dir)
        if not state.path.is_file():
            return state
        try:
            data = json.loads(state.path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise StateError(f"cannot read {state.path}: {err}") from err
        if not isinstance(data, dict) or data.get("format") != STATE_FORMAT:
            raise StateError(f"{state.path} is not an alpaca-loop state file")
        if data.get("version") != STATE_VERSION:
            raise StateError(
                f"{state.path} has version {data.get('version')}, this alpaca-loop reads "
                f"version {STATE_VERSION}: use another --work-dir"
            )
        state.settings = dict(data.get("settings") or {})
        for name, record in (data.get("stages") or {}).items():
            if name not in STAGES:
                raise StateError(f"{state.path} records an unknown stage {name!r}")
            state.stages[name] = StageRecord(**record)
        return state

    def is_done(self, stage: str) -> bool:
        """Whether `stage` finished in an earlier run (and was not made stale since)."""
        return stage in self.stages

    def remaining(self) -> list[str]:
        """The stages not finished yet, in running order."""
        return [stage for stage in STAGES if not self.is_done(stage)]

    def missing_before(self, stage: str) -> list[str]:
        """The stages `stage` reads the outputs of that have not finished."""
        return [s for s in NEEDS[stage] if not self.is_done(s)]

    def finish(
        self, stage: str, outputs: dict[str, Any], summary: str, seconds: float = 0.0
    ) -> None:
        """Record `stage` as finished and save the state."""
        self.stages[stage] = StageRecord(
            time.strftime("%Y-%m-%dT%H:%M:%S%z"), round(seconds, 1), outputs, summary
        )
        self.save()

    def forget_from(self, stage: str) -> list[str]:
        """Drop the records of `stage` and every later stage (saved); returns the dropped ones."""
        dropped = [s for s in STAGES[STAGES.index(stage) :] if s in self.stages]
        for name in dropped:
            del self.stages[name]
        if dropped:
            self.save()
        return dropped

    def save(self) -> None:
        """Write the state file atomically."""
        self.work_dir.mkdir(parents=True, exist_ok=True)
        data = {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            "settings": self.settings,
            "stages": {name: vars(self.stages[name]) for name in STAGES if name in self.stages},
        }
        staging = self.path.with_name(f".{STATE_FILE}.tmp")
        staging.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
        os.replace(staging, self.path)
