"""What one loop run works with: the server, the folders, the data, the sizes, the judge.

Usage:
    settings = LoopSettings.resolve(vars(args), state.settings)   # given > remembered > default
    state.settings = settings.to_state()                          # remembered for the next run

A work folder remembers the settings its first run was given (in its state file), so a rerun
needs only `--work-dir`; an option given again replaces the remembered value. Secrets (API keys,
a database URL, which may hold a password) are never written to the state file.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alpaca_serve.client.api import API_KEY_VARIABLE, JUDGE_API_KEY_VARIABLE
from alpaca_serve.evaluation.datasets import EVALUATION_SET
from alpaca_serve.training.recipe import ALPACA_DATA

DEFAULT_SERVER_URL = "http://127.0.0.1:8000"
SFT_STEPS = 24
SECRETS = ("api_key", "judge_api_key", "database")
# Secrets read from the environment when not given (never written to the state file).
SECRET_VARIABLES = {
    "api_key": API_KEY_VARIABLE,
    "judge_api_key": JUDGE_API_KEY_VARIABLE,
}


class SettingsError(ValueError):
    """A setting that cannot work; the message (one line) names the option."""


def _help(default: Any, text: str) -> Any:
    if isinstance(default, list):
        return field(
            default_factory=lambda: list(default), metadata={"help": text, "default": default}
        )
    return field(default=default, metadata={"help": text, "default": default})


@dataclass
class LoopSettings:
    """Every option of alpaca-loop, with its default and its help."""

    server_url: str = _help(DEFAULT_SERVER_URL, "the running alpaca-serve the cycle works with")
    api_key: str | None = _help(
        None, f"bearer token for that server, when it wants one (default: ${API_KEY_VARIABLE})"
    )
    adapters_dir: Path | None = _help(
        None,
        "the server's adapters folder (its ALPACA_ADAPTERS_DIR): trained adapters are copied "
        "there and go live by name (needed by sft and prefer)",
    )
    base_model: Path | None = _help(
        None, "the served base model's folder (default: the path the server reports in /info)"
    )
    data: list[Path] = _help(
        ALPACA_DATA,
        "Alpaca record files to fine-tune on, the project's Alpaca model's two by default "
        "(1,199 records)",
    )
    instructions: Path = _help(
        EVALUATION_SET,
        "evaluation instructions, with reference answers for the reference judge (default: the "
        "shipped Alpaca evaluation set)",
    )
    limit: int | None = _help(
        None, "answer only the first N evaluation instructions (default: all)"
    )
    max_new_tokens: int = _help(96, "most tokens per evaluation answer")
    sft_name: str = _help("loop-sft", "name the supervised adapter is served under")
    dpo_name: str = _help(
        "loop-dpo", "name the preference adapter (DPO; KTO when there are thumbs) is served under"
    )
    sft_steps: int = _help(
        SFT_STEPS,
        "optimizer steps of the supervised LoRA fine-tune (the shape of `alpaca-train --recipe "
        "alpaca`: rank 16 on every linear layer, cosine schedule, grouped by length)",
    )
    dpo_steps: int = _help(4, "optimizer steps of the preference (DPO or KTO) fine-tune")
    sft_learning_rate: float | None = _help(
        None, "peak learning rate of the supervised fine-tune (default: alpaca-train's for LoRA)"
    )
    dpo_learning_rate: float | None = _help(
        None, "peak learning rate of the DPO fine-tune (default: alpaca-train's for DPO)"
    )
    batch_size: int = _help(8, "examples per optimizer step, both fine-tunes")
    max_length: int = _help(256, "tokens per training example (longer ones are cut)")
    auto: bool = _help(
        False,
        "unattended: an automatic judge votes (machine votes, named as such in every output) "
        "and prefer trains on them; without it, people vote in the demo's Compare tab",
    )
    judge_url: str | None = _help(
        None,
        "an OpenAI-compatible judge endpoint for --auto (default: the reference judge, no model)",
    )
    judge_model: str | None = _help(None, "the judge endpoint's model (default: its first)")
    judge_api_key: str | None = _help(
        None, f"bearer token for the judge endpoint (default: ${JUDGE_API_KEY_VARIABLE})"
    )
    database: str | None = _help(
        None,
        "the server's feedback store, for prefer's export (default: as alpaca-export finds it: "
        "--data-dir, else ALPACA_DATABASE_URL, else ALPACA_DATA_DIR's alpaca.sqlite3)",
    )
    data_dir: Path | None = _help(None, "folder of the server's SQLite store (its ALPACA_DATA_DIR)")
    seed: int = _help(7, "seed of the training runs and of the blind pairs' order")
    concurrency: int = _help(8, "answers requested at once")

    @classmethod
    def resolve(cls, given: dict[str, Any], remembered: dict[str, Any]) -> LoopSettings:
        """Each option as given (not None), else as remembered in the state file, else its
        default; checked."""
        values = {}
        for f in dataclasses.fields(cls):
            if given.get(f.name) is not None:
                values[f.name] = given[f.name]
            elif f.name in SECRET_VARIABLES and os.environ.get(SECRET_VARIABLES[f.name]):
                values[f.name] = os.environ[SECRET_VARIABLES[f.name]]
            elif remembered.get(f.name) is not None:
                value = remembered[f.name]
                if f.type in ("Path", "Path | None"):
                    value = Path(value)
                elif f.type == "list[Path]":
                    value = [Path(v) for v in value]
                values[f.name] = value
        settings = cls(**values)
        settings.check()
        return settings

    def check(self) -> None:
        for name in ("limit", "max_new_tokens", "sft_steps", "dpo_steps", "batch_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise SettingsError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
        for name in ("sft_learning_rate", "dpo_learning_rate"):
            value = getattr(self, name)
            if value is not None and not 0 < value < 1:
                raise SettingsError(f"--{name.replace('_', '-')} must be in (0, 1), got {value}")
        if self.max_length < 16:
            raise SettingsError(f"--max-length must be at least 16, got {self.max_length}")
        if self.concurrency < 1:
            raise SettingsError(f"--concurrency must be at least 1, got {self.concurrency}")
        if self.sft_name == self.dpo_name:
            raise SettingsError(f"--sft-name and --dpo-name are both {self.sft_name!r}")
        for name in (self.sft_name, self.dpo_name):
            if not name or name.startswith(".") or "/" in name:
                raise SettingsError(f"adapter name {name!r}: a folder name not starting with '.'")
        if not self.data:
            raise SettingsError("--data needs at least one file")
        files = [("--data", path) for path in self.data] + [("--instructions", self.instructions)]
        for option, path in files:
            if not path.is_file():
                raise SettingsError(f"{option}: file not found: {path}")
        if self.judge_url is not None and not self.auto:
            raise SettingsError("--judge-url is the automatic judge: it needs --auto")

    def to_state(self) -> dict[str, Any]:
        """The settings to remember: JSON values, secrets left out."""
        return {
            f.name: _json_value(value)
            for f in dataclasses.fields(self)
            if f.name not in SECRETS and (value := getattr(self, f.name)) is not None
        }


def _json_value(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, list):
        return [_json_value(v) for v in value]
    return value
