"""Demo configuration, read from `ALPACA_DEMO_*` environment variables."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from evaluation.datasets import EVALUATION_SET


class CompareArm(BaseModel):
    """One side of the blind comparison: a server, the model (base or adapter) and the sampling
    settings it is asked with."""

    model_config = ConfigDict(extra="forbid")

    label: str = Field(description="shown to the user only after the vote")
    server_url: str | None = Field(None, description="default: the demo's server")
    model: str | None = Field(
        None, description="the model to ask, such as a served LoRA adapter; default: the base"
    )
    temperature: float = Field(0.1, ge=0, le=2)
    top_p: float = Field(0.75, gt=0, le=1)
    max_new_tokens: int = Field(256, ge=1)


DEFAULT_ARMS = [
    CompareArm(label="greedy decoding (temperature 0)", temperature=0.0, top_p=1.0),
    CompareArm(label="sampling (temperature 0.9, top-p 0.95)", temperature=0.9, top_p=0.95),
]


class DemoSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ALPACA_DEMO_", extra="ignore")

    server_url: str = Field("http://127.0.0.1:8000", description="the alpaca-serve to talk to")
    api_key: str | None = Field(None, description="API key the demo sends, if the server wants one")
    host: str = Field("127.0.0.1", description="address the standalone demo listens on")
    port: int = Field(7860, ge=1, le=65535, description="port of the standalone demo")
    examples_file: Path | None = Field(
        None,
        description="JSON lines with `instruction` (and `instances[0].input`) to offer as "
        "examples; default: the Alpaca evaluation set shipped with the project",
    )
    max_examples: int = Field(8, ge=0, description="how many examples to show")
    comparison_file: Path | None = Field(
        None,
        description="a comparison from `alpaca-eval compare` (built against the same "
        "server) whose pairs the Compare tab offers for blind votes, stored as pairwise feedback",
    )
    compare_arms: list[CompareArm] = Field(
        default_factory=lambda: list(DEFAULT_ARMS),
        description="the two sides of the Compare tab, as JSON",
    )

    @field_validator("compare_arms")
    @classmethod
    def _exactly_two(cls, arms: list[CompareArm]) -> list[CompareArm]:
        if len(arms) != 2:
            raise ValueError(f"compare_arms needs exactly two entries (got {len(arms)})")
        return arms

    @field_validator("examples_file")
    @classmethod
    def _examples_exist(cls, path: Path | None) -> Path | None:
        if path is None:
            return None
        if not path.is_file():
            raise ValueError(f"examples file {path} does not exist")
        from evaluation.answers import EvaluationError, load_instructions

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
        from evaluation.answers import EvaluationError
        from evaluation.comparison import load_comparison

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


def describe_errors(err: ValidationError) -> str:
    """The problems of invalid settings (the demo's or the server's) on one line:
    `field: what is wrong; ...`."""
    return "; ".join(
        (f"{'.'.join(str(part) for part in error['loc'])}: " if error["loc"] else "")
        + error["msg"].removeprefix("Value error, ")
        for error in err.errors()
    )
