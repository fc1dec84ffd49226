"""`alpaca-train --method kto`: bad records stop it in one line, the options that cannot work are
refused, the output folder is the LoRA one the server loads, and on the default model thumbs up
and down learned show on answers it never trained on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from alpaca_serve.core.prompts import format_prompt
from alpaca_serve.core.provenance import read_provenance
from alpaca_serve.training.cli import main
from alpaca_serve.training.data import DataFormatError, RawRecord
from alpaca_serve.training.kto import EVAL_FILE
from alpaca_serve.training.preferences import UnpairedExample, check_unpaired_record, split_pairs
from tests.training.test_dpo import fact_pairs, fake_model, write_jsonl

GOOD = {"prompt": format_prompt("Say hi."), "completion": "Hi!", "label": True}


def fact_answers() -> list[dict]:
    """The DPO facts unpaired, as thumbs would label them: each helpful answer desirable, each
    refusal undesirable, on the same prompt."""
    answers = []
    for pair in fact_pairs():
        answers.append({"instruction": pair["instruction"], "completion": pair["chosen"]})
        answers[-1]["label"] = True
        answers.append({"instruction": pair["instruction"], "completion": pair["rejected"]})
        answers[-1]["label"] = False
    return answers


def kto(tmp_path: Path, model: Path, data: Path, *extra: str) -> int:
    return main(
        ["--method", "kto", "--model", str(model), "--data", str(data)]
        + ["--out", str(tmp_path / "out"), *extra]
    )


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"prompt": GOOD["prompt"], "label": True}, "'completion' is missing"),
        ({**GOOD, "completion": " "}, "'completion' is empty"),
        ({"prompt": GOOD["prompt"], "completion": "Hi!"}, "'label' is missing"),
        ({**GOOD, "label": "yes"}, "'label' must be true or false, got a string"),
        ({**GOOD, "label": 1}, "'label' must be true or false, got a number"),
        ({**GOOD, "prompt": "Say hi."}, "'prompt' is not an Alpaca prompt"),
    ],
)
def test_a_bad_answer_record_stops_the_run_in_one_line_naming_its_line(
    tmp_path, capsys, bad, message
):
    data = write_jsonl(tmp_path / "thumbs.jsonl", [GOOD, bad])

    status = kto(tmp_path, fake_model(tmp_path), data)

    assert status == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"alpaca-train: error: {data}: record 1 (line 2): {message}")


@pytest.mark.parametrize(
    ("method", "extra", "message"),
    [
        ("kto", ["--micro-batch-size", "1"], "--method kto needs --micro-batch-size 2 or more"),
        ("kto", ["--no-lora"], "--method kto trains a LoRA adapter"),
        ("kto", ["--packing"], "--packing is for --method sft only"),
        ("kto", ["--desirable-weight", "0"], "--desirable-weight must be positive"),
        ("dpo", ["--undesirable-weight", "2"], "--undesirable-weight is for --method kto"),
        ("sft", ["--desirable-weight", "2"], "--desirable-weight is for --method kto"),
    ],
)
def test_kto_options_that_cannot_work_are_one_line_errors(tmp_path, capsys, method, extra, message):
    data = write_jsonl(tmp_path / "thumbs.jsonl", [GOOD, {**GOOD, "label": False}])

    status = main(
        ["--method", method, "--model", str(fake_model(tmp_path)), "--data", str(data)]
        + ["--out", str(tmp_path / "out"), *extra]
    )

    assert status == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"alpaca-train: error: {message}"), lines


def test_instruction_records_get_the_alpaca_prompt_and_the_split_keeps_prompts_apart():
    record = {"instruction": "Name a planet.", "input": "", "completion": "Mars.", "label": False}

    example = check_unpaired_record(RawRecord("d.jsonl: record 1", record))

    assert example == UnpairedExample(format_prompt("Name a planet."), "Mars.", False)
    examples = [check_unpaired_record(RawRecord("x", r)) for r in fact_answers()]
    train, held = split_pairs(examples, 0.25, seed=42)
    assert {e.prompt for e in train}.isdisjoint({e.prompt for e in held})
    assert len(held) == 12 and split_pairs(examples, 0.25, seed=42) == (train, held)
    with pytest.raises(DataFormatError, match="'label' is missing"):
        check_unpaired_record(RawRecord("x", {"prompt": GOOD["prompt"], "completion": "x"}))


def test_a_kto_run_writes_the_lora_folder_the_server_loads_and_says_it_is_kto(
    tmp_path, tiny_model_dir, capsys
):
    from safetensors.torch import load_file

    from alpaca_serve.server.adapters import BaseModel, inspect_adapter

    data = write_jsonl(tmp_path / "thumbs.jsonl", fact_answers()[:16])
    out = tmp_path / "out"

    status = kto(
        tmp_path,
        tiny_model_dir,
        data,
        *("--preset", "tiny", "--model-max-length", "64", "--max-steps", "2"),
        *("--global-batch-size", "4", "--micro-batch-size", "2", "--logging-steps", "1"),
        *("--learning-rate", "1e-3", "--eval-fraction", "0.25"),
    )

    stderr = capsys.readouterr().err
    assert status == 0, stderr[-3000:]
    for name in ("config.json", "model.safetensors", "alpaca_train.json", EVAL_FILE):
        assert (out / name).is_file(), name
    adapter = load_file(out / "adapter" / "adapter_model.safetensors")
    assert all(w.abs().max() > 0 for n, w in adapter.items() if ".lora_B." in n)  # it trained
    files = inspect_adapter(out, BaseModel.read(tiny_model_dir.name, tiny_model_dir), 16)
    assert files.weights_dir == out / "adapter" and files.rank == 8
    info = json.loads((out / "alpaca_train.json").read_text())
    assert (info["method"], info["objective"], info["merged"]) == ("lora", "kto", True)
    assert info["arguments"]["dpo"]["desirable_weight"] == 1.0
    assert info["data"]["records"] == 16 and info["result"]["global_step"] == 2
    assert read_provenance(out).as_json()["objective"] == "kto"
    measured = json.loads((out / EVAL_FILE).read_text())
    assert measured["held_out_answers"] == 4
    assert measured["before"]["answers"] == measured["after"]["answers"] == 4
    assert measured["before"]["desirable"] == measured["before"]["undesirable"] == 2
    assert 0 <= measured["moved_right_way"] <= 1
    assert (
        "16 labelled answers" in stderr and "12 to train on (6 desirable, 6 undesirable)" in stderr
    )
    assert "alpaca-train: answers on 4 held-out answers (2 desirable, 2 undesirable):" in stderr
    assert "| reward desirable" in stderr and "| KL " in stderr  # KTO's figures in step lines


@pytest.fixture(scope="module")
def default_model_dir(tmp_path_factory) -> Path:
    """The bundled default model (SmolLM2-135M-Instruct) as a Hugging Face folder."""
    from alpaca_serve.recover.convert import convert_gguf, find_bundled_gguf

    return convert_gguf(find_bundled_gguf(), tmp_path_factory.mktemp("default") / "model")


@pytest.mark.slow
def test_kto_on_the_default_model_moves_held_out_answers_the_way_their_thumbs_say(
    tmp_path, default_model_dir, capsys
):
    data = write_jsonl(tmp_path / "thumbs.jsonl", fact_answers())

    status = kto(
        tmp_path,
        default_model_dir,
        data,
        *("--preset", "tiny", "--max-steps", "4", "--no-merge"),
        *("--global-batch-size", "4", "--micro-batch-size", "2", "--logging-steps", "2"),
        *("--learning-rate", "1e-3", "--eval-fraction", "0.34"),
    )

    stderr = capsys.readouterr().err
    assert status == 0, stderr[-3000:]
    measured = json.loads((tmp_path / "out" / EVAL_FILE).read_text())
    before, after = measured["before"], measured["after"]
    assert before["answers"] == after["answers"] == 16
    assert after["gap"] > before["gap"] + 1.0, (before, after)
    assert after["mean_undesirable_logprob"] < before["mean_undesirable_logprob"]  # refusals
    assert measured["moved_right_way"] > 0.5, measured["moved_right_way"]
    assert f"{measured['moved_right_way']:.1%} of the answers" in stderr
