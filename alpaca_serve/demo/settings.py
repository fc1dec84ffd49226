"""Demo configuration, read from `ALPACA_DEMO_*` environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from alpaca_serve.evaluation.answers import EvaluationError, load_instructions
from alpaca_serve.evaluation.comparison import load_comparison
from alpaca_serve.evaluation.datasets import EVALUATION_SET


class CompareArm(BaseModel):
    """One side of the blind comparison: a server, the model (base or adapter) and the sampling
    settings it is asked with."""

    model_config = ConfigDict(extra="forbid")

    label: str = Field(description="shown to the user only after the vote")
    server_url: str | None = Field(default=None, description="default: the demo's server")
    model: str | None = Field(
        default=None,
        description="the model to ask, such as a served LoRA adapter; default: the base",
    )
    temperature: float = Field(default=0.1, ge=0, le=2)
    top_p: float = Field(default=0.75, gt=0, le=1)
    max_new_tokens: int = Field(default=256, ge=1)


DEFAULT_ARMS = [
    CompareArm(label="greedy decoding (temperature 0)", temperature=0.0, top_p=1.0),
    CompareArm(label="sampling (temperature 0.9, top-p 0.95)", temperature=0.9, top_p=0.95),
]
# Both sides of the base-against-adapter pair sample alike, with the Alpaca demo's settings, so
# that the vote is about the models only.
PAIR_TEMPERATURE, PAIR_TOP_P = 0.1, 0.75


def default_arms(info: dict[str, Any]) -> list[CompareArm]:
    """The Compare tab's two sides when none are configured, for what a server serves now (its
    /info: `models` lists the base, then its adapters in the order they were loaded): the base
    against the newest adapter (latest `loaded_at`; of those loaded in the same second, the one
    loaded last), both sampled alike and as long as the server's default answer; DEFAULT_ARMS
    when no adapter is served."""
    models = info.get("models") or []
    adapters = [
        (m.get("loaded_at") or "", i, m) for i, m in enumerate(models) if m.get("kind") == "adapter"
    ]
    if not adapters:
        return list(DEFAULT_ARMS)
    *_, newest = max(adapters, key=lambda entry: entry[:2])
    base = next((m["name"] for m in models if m.get("kind") == "base"), newest.get("base"))
    length = (info.get("defaults") or {}).get("max_new_tokens")
    same = {
        "temperature": PAIR_TEMPERATURE,
        "top_p": PAIR_TOP_P,
        **({"max_new_tokens": length} if length else {}),
    }
    return [
        CompareArm(label=f"the base model {base}", model=None, **same),
        CompareArm(label=f"the LoRA adapter {newest['name']}", model=newest["name"], **same),
    ]


class DemoSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ALPACA_DEMO_", extra="ignore")

    server_url: str = Field(
        default="http://127.0.0.1:8000", description="the alpaca-serve to talk to"
    )
    api_key: str | None = Field(
        default=None, description="API key the demo sends, if the server wants one"
    )
    host: str = Field(default="127.0.0.1", description="address the standalone demo listens on")
    port: int = Field(default=7860, ge=1, le=65535, description="port of the standalone demo")
    examples_file: Path | None = Field(
        default=None,
        description="JSON lines with `instruction` (and `instances[0].input`) to offer as "
        "examples; default: the Alpaca evaluation set shipped with the project",
    )
    max_examples: int = Field(default=8, ge=0, description="how many examples to show")
    max_queue: int = Field(
        default=64,
        ge=1,
        description="events (a chat turn, a comparison) waiting in the demo's queue; past it, "
        "a new one is refused at once instead of waiting",
    )
    comparison_file: Path | None = Field(
        default=None,
        description="a comparison from `alpaca-eval compare` (built against the same "
        "server) whose pairs the Compare tab offers for blind votes, stored as pairwise feedback",
    )
    compare_arms: list[CompareArm] | None = Field(
        default=None,
        description="the two sides of the Compare tab, as JSON: a list of two "
        "`{label, server_url, model, temperature, top_p, max_new_tokens}`; unset: chosen when "
        "each comparison starts, the base against the newest LoRA adapter the server serves "
        f"(temperature {PAIR_TEMPERATURE}, top-p {PAIR_TOP_P} and the server's default "
        "max_new_tokens on both sides), or, with no "
        "adapter served, greedy decoding against sampling (temperature 0.9, top-p 0.95) of the "
        "base",
    )

    @field_validator("compare_arms")
    @classmethod
    def _exactly_two(cls, arms: list[CompareArm] | None) -> list[CompareArm] | None:
        if arms is not None and len(arms) != 2:
            raise ValueError(f"compare_arms needs exactly two entries (got {len(arms)})")
        return arms

    @field_validator("examples_file")
    @classmethod
    def _examples_exist(cls, path: Path | None) -> Path | None:
        if path is None:
            return None
        if not path.is_file():
            raise ValueError(f"examples file {path} does not exist")

        try:
            load_instructions(path)
        except EvaluationError as err:
            raise ValueError(str(err)) from err
        return path

    @field_validator("comparison_file")
    @classmethod
    def _comparison_is_votable(cls, path: Path | None) -> Path | None:
        if path is None:
            return None
        try:
            comparison = load_comparison(path)
        except EvaluationError as err:
            raise ValueError(str(err)) from err
        if not comparison["pairs"]:
            raise ValueError(f"{path} has no pairs")
        if any(
            pair[side].get("generation_id") is None
            for pair in comparison["pairs"]
            for side in ("left", "right")
        ):
            raise ValueError(
                f"{path} has answers without a generation id, so votes on them "
                "cannot be stored: build it with `alpaca-eval compare "
                "--server-url` against the demo's server"
            )
        return path

    def example_source(self) -> Path:
        """The examples file: the configured one, else the shipped Alpaca evaluation set."""
        return self.examples_file if self.examples_file is not None else EVALUATION_SET


def load_examples(path: Path | None, limit: int) -> list[list[str]]:
    """[instruction, input] pairs from an instruction file as `alpaca-eval answer` reads them
    (the evaluation set's JSON lines, or an Alpaca JSON list)."""
    if path is None or limit == 0:
        return []
    return [[item["instruction"], item["input"]] for item in load_instructions(path, limit)]
