"""The project's Alpaca model is what the `alpaca` recipe makes: the adapter that ships in
alpaca_serve/models/alpaca records the recipe's arguments, the shipped data's hashes, its loss
curve, its time and its commit, and retraining it is one command. Whether the model is better
is a measured result (docs/results.md, `make eval-alpaca`), not a test."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
from pathlib import Path

import pytest

from alpaca_serve.core.project_model import PROJECT_MODEL_DIR
from alpaca_serve.training.args import parse_args
from alpaca_serve.training.data import load_records
from alpaca_serve.training.recipe import ALPACA_DATA
from tests.support import ROOT

INFO = PROJECT_MODEL_DIR / "alpaca_train.json"


@pytest.fixture(scope="module")
def info() -> dict:
    return json.loads(INFO.read_text())


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_shipped_adapter_was_trained_with_the_recipe_as_it_stands(info):
    recorded = info["arguments"]
    expected = parse_args(
        ["--recipe", "alpaca", "--model", info["base_model"], "--out", "x"]
    ).to_json()
    # Where the checkout was is not part of the recipe: the data files by name, the output
    # folder by what the run was told.
    assert [Path(path).name for path in recorded["data"]["data"]] == [p.name for p in ALPACA_DATA]
    recorded["data"]["data"] = expected["data"]["data"]
    expected["train"]["output_dir"] = recorded["train"]["output_dir"]
    # --fsdp was a switch when the run was made (false), and takes Alpaca's value now (none).
    if recorded["train"].get("fsdp") is False:
        recorded["train"]["fsdp"] = None
    # An option added since the run must leave the recipe as it was: at its default.
    defaults = parse_args(["--model", info["base_model"], "--data", "d", "--out", "x"]).to_json()
    for group, values in expected.items():
        for name in set(values) - set(recorded[group]):
            assert values.pop(name) == defaults[group][name], f"--{name} is not at its default"
    assert recorded == expected
    assert recorded["train"]["recipe"] == "alpaca"
    assert (info["method"], info["objective"], info["merged"]) == ("lora", "sft", False)
    assert Path(info["base_model"]).name == "SmolLM2-135M-Instruct"


def test_the_data_it_was_trained_on_is_the_data_that_ships(info):
    files = info["data"]["files"]
    assert [(Path(item["path"]).name, item["sha256"]) for item in files] == [
        (path.name, sha256(path)) for path in ALPACA_DATA
    ]
    counts = [len(load_records(path)) for path in ALPACA_DATA]
    assert [item["records"] for item in files] == counts
    assert info["data"]["records"] == sum(counts) == 1199


def test_the_run_recorded_its_loss_curve_time_and_commit(info):
    steps = info["arguments"]["train"]["max_steps"]
    curve = info["result"]["loss_curve"]
    logged = [step for step, _ in curve]
    assert logged[0] == 1 and logged[-1] == steps and logged == sorted(set(logged))
    assert all(loss > 0 for _, loss in curve)
    assert info["result"]["global_step"] == steps
    assert info["result"]["seconds"] > 0
    assert re.fullmatch(r"[0-9a-f]{40}", info["commit"]), info["commit"]  # a clean checkout


def test_the_shipped_adapter_has_the_recipes_shape(info):
    config = json.loads((PROJECT_MODEL_DIR / "adapter_config.json").read_text())
    lora = info["arguments"]["lora"]
    assert (config["r"], config["lora_alpha"]) == (lora["lora_r"], lora["lora_alpha"])
    assert sorted(config["target_modules"]) == sorted(lora["lora_target_modules"])
    assert Path(config["base_model_name_or_path"]).name == "SmolLM2-135M-Instruct"
    assert sorted(path.name for path in PROJECT_MODEL_DIR.iterdir()) == [
        "README.md",  # what it is, its licence
        "adapter_config.json",
        "adapter_model.safetensors",
        "alpaca_train.json",
    ]


def test_retraining_is_one_command():
    make = subprocess.run(
        ["make", "-n", "alpaca-model"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert make.returncode == 0, make.stderr
    assert "scripts/alpaca-model" in make.stdout
    script = (ROOT / "scripts" / "alpaca-model").read_text()
    assert '"$bin/alpaca-train" --recipe alpaca --model "$base" --out "$run"' in script


def test_the_loops_fine_tune_is_the_recipe_at_the_loops_sizes(tmp_path):
    # make loop LOOP_ARGS="--sft-steps 80 --seed 42" trains the shipped adapter again (the same
    # weights, bit for bit, in the run recorded in docs/results.md): the arguments are the
    # recipe's but for where the files are and how often the loss is logged.
    from alpaca_serve.loop.settings import LoopSettings
    from alpaca_serve.loop.stages import sft_arguments

    settings = LoopSettings.resolve({"sft_steps": 80, "seed": 42}, {})
    loop = sft_arguments(settings, tmp_path / "base", tmp_path / "out").to_json()
    recipe = parse_args(
        ["--recipe", "alpaca", "--model", str(tmp_path / "base"), "--out", str(tmp_path / "out")]
    ).to_json()
    # auto is float32 on a CPU, where the recipe ran; on a GPU the loop takes bfloat16.
    assert (loop["train"]["precision"], recipe["train"]["precision"]) == ("auto", "fp32")
    for arguments in (loop, recipe):
        for name in ("logging_steps", "save_steps", "preset", "recipe", "epochs", "precision"):
            arguments["train"].pop(name, None)
    assert loop["data"] == recipe["data"] and loop["lora"] == recipe["lora"]
    assert loop["train"] == recipe["train"]
