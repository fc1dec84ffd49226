"""Training called as a library: `fine_tune` takes typed arguments and raises one-line errors
(what the loop catches), where the `alpaca-train` command prints them and exits with 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from alpaca_serve.training.args import (
    AlpacaTrainArgs,
    ArgsError,
    DataArgs,
    DpoArgs,
    LoraArgs,
    TrainArgs,
    parse_args,
)
from alpaca_serve.training.cli import TrainError, fine_tune, main


def typed_args(model: Path, data: Path, out: Path) -> AlpacaTrainArgs:
    return AlpacaTrainArgs(
        train=TrainArgs(model=model, output_dir=out, preset="tiny", max_steps=2),
        data=DataArgs(data=[data]),
        lora=LoraArgs(lora=True),
        dpo=DpoArgs(),
    )


def test_typed_arguments_are_the_command_lines_arguments(tmp_path):
    model, data, out = tmp_path / "model", tmp_path / "data.json", tmp_path / "out"
    parsed = parse_args(
        ["--model", str(model), "--data", str(data), "--out", str(out), "--lora"]
        + ["--preset", "tiny", "--max-steps", "2"]
    )
    assert typed_args(model, data, out) == parsed


def test_a_missing_model_raises_a_one_line_error_instead_of_exiting(tmp_path):
    args = typed_args(tmp_path / "no-model", tmp_path / "data.json", tmp_path / "out")
    with pytest.raises(ArgsError, match=r"^--model: no Hugging Face model \(config.json\) in "):
        fine_tune(args)


def test_the_command_prints_the_same_error_and_exits_with_2(tmp_path, capsys):
    argv = ["--model", str(tmp_path / "no-model"), "--data", "d.json", "--out", str(tmp_path)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("alpaca-train: error: --model: no Hugging Face")


def test_with_no_model_and_no_out_it_trains_the_default_model_into_runs(tmp_path, monkeypatch):
    parsed = parse_args(["--data", "data/gen.json", "--lora"])
    assert parsed.train.model is None  # the default model, resolved when the run starts
    assert parsed.train.output_dir == Path("runs") / "gen-sft"
    assert parse_args(["--data", "p.jsonl", "--method", "dpo"]).train.output_dir == Path(
        "runs/p-dpo"
    )
    with pytest.raises(ArgsError, match=r"^the following arguments are required: --data$"):
        parse_args(["--lora"])
    # The default model comes from the cache the server converts it into; one that cannot be
    # converted there is a one-line error naming the folder.
    monkeypatch.setenv("ALPACA_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr("alpaca_serve.training.cli.convert_command", lambda folder: ["false"])
    with pytest.raises(TrainError, match=r"^no --model, and converting the bundled "):
        fine_tune(parse_args(["--data", str(tmp_path / "d.json"), "--out", str(tmp_path / "o")]))
