"""`alpaca-train --method dpo`: bad pairs stop it in one line, the held-out split is honest, the
output folder is the LoRA one the server loads, and on the default model the preferences learned
show on pairs it never trained on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from alpaca_serve.core.prompts import format_prompt
from alpaca_serve.core.provenance import read_provenance
from alpaca_serve.training.args import parse_args
from alpaca_serve.training.cli import main
from alpaca_serve.training.data import DataFormatError, RawRecord
from alpaca_serve.training.dpo import EVAL_FILE
from alpaca_serve.training.preferences import (
    PreferencePair,
    check_preference_record,
    load_preference_pairs,
    split_pairs,
)

SAMPLE_PAIRS = (
    Path(__file__).resolve().parents[2] / "alpaca_serve/training/sample_data/preference_pairs.jsonl"
)

# Short questions, a helpful answer preferred over a refusal (in English, French or Spanish):
# short enough for a few CPU steps, and the default model starts by preferring the refusal on
# most of them (short responses are likely ones), so there is something to learn.
FACTS = [
    ("What is the capital of France?", "The capital of France is Paris, its largest city."),
    ("What is the capital of Japan?", "The capital of Japan is Tokyo, one of the largest cities."),
    ("What is the capital of Italy?", "The capital of Italy is Rome, famous for its history."),
    ("What is the capital of Spain?", "The capital of Spain is Madrid, in the centre of Spain."),
    ("What is the capital of Germany?", "The capital of Germany is Berlin, its largest city."),
    ("What is the capital of Egypt?", "The capital of Egypt is Cairo, a city on the river Nile."),
    ("How many days are there in a week?", "There are seven days in a week."),
    (
        "How many legs does a spider have?",
        "A spider has eight legs, unlike insects, which have six.",
    ),
    ("What colour is the sky on a clear day?", "On a clear day the sky is blue."),
    ("What do bees make?", "Bees make honey from the nectar of flowers, and they also make wax."),
    ("What is two plus two?", "Two plus two is four."),
    ("What is the opposite of hot?", "The opposite of hot is cold."),
    ("Which planet do we live on?", "We live on Earth, the third planet from the Sun."),
    ("What is frozen water called?", "Frozen water is called ice."),
    ("How many hours are there in a day?", "There are twenty-four hours in a day."),
    ("What animal says moo?", "A cow says moo."),
    ("What is the largest ocean on Earth?", "The Pacific Ocean is the largest ocean on Earth."),
    ("Which season comes after winter?", "Spring comes after winter, and then summer follows."),
    ("What do plants need from the sun?", "Plants need sunlight, which they use to make food."),
    ("How many months are there in a year?", "There are twelve months in a year."),
    ("What is the boiling point of water?", "At sea level, water boils at 100 degrees Celsius."),
    ("Who wrote Romeo and Juliet?", "Romeo and Juliet was written by William Shakespeare."),
    ("What is the chemical symbol for gold?", "The chemical symbol for gold is Au."),
    ("What gas do humans need to breathe?", "Humans need to breathe oxygen."),
]
REFUSALS = ["I don't know.", "Je ne sais pas.", "I cannot help with that.", "No lo sé."]


def fact_pairs() -> list[dict]:
    return [
        {"instruction": question, "chosen": answer, "rejected": REFUSALS[i % len(REFUSALS)]}
        for i, (question, answer) in enumerate(FACTS)
    ]


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


def fake_model(tmp_path: Path) -> Path:
    """A folder that passes the --model check; the data is checked before any model loads."""
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    return folder


GOOD = {"prompt": format_prompt("Say hi."), "chosen": "Hi!", "rejected": "Go away."}


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"prompt": GOOD["prompt"], "rejected": "No."}, "'chosen' is missing"),
        ({**GOOD, "rejected": "  "}, "'rejected' is empty"),
        ({**GOOD, "chosen": 3}, "'chosen' must be a string, got a number"),
        ({**GOOD, "rejected": "Hi!"}, "'chosen' and 'rejected' are the same text"),
        ({**GOOD, "prompt": ["Say hi."]}, "'prompt' must be a string, got a list"),
        ({**GOOD, "prompt": "Say hi."}, "'prompt' is not an Alpaca prompt"),
        ({"chosen": "Hi!", "rejected": "No."}, "needs 'prompt', or 'instruction' (and 'input')"),
        ({"instruction": "", "chosen": "Hi!", "rejected": "No."}, "'instruction' is empty"),
        (
            {**GOOD, "instruction": "Say bye."},
            "'prompt' is not the Alpaca prompt of its 'instruction' and 'input'",
        ),
    ],
)
def test_a_bad_pair_stops_the_run_in_one_line_naming_its_line(tmp_path, capsys, bad, message):
    data = write_jsonl(tmp_path / "prefs.jsonl", [GOOD, GOOD, bad])

    status = main(
        ["--method", "dpo", "--model", str(fake_model(tmp_path)), "--data", str(data)]
        + ["--out", str(tmp_path / "out")]
    )

    assert status == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        f"alpaca-train: error: {data}: record 2 (line 3): {message}"
    ), lines
    assert not (tmp_path / "out").exists()


def test_a_line_that_is_not_json_is_named_too(tmp_path, capsys):
    data = tmp_path / "prefs.jsonl"
    data.write_text(json.dumps(GOOD) + "\n{not json\n")

    status = main(
        ["--method", "dpo", "--model", str(fake_model(tmp_path)), "--data", str(data)]
        + ["--out", str(tmp_path / "out")]
    )

    assert status == 2
    err = capsys.readouterr().err
    assert err.startswith(f"alpaca-train: error: {data}: record 1 (line 2): not valid JSON")
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--no-lora"], "--method dpo trains a LoRA adapter"),
        (["--packing"], "--packing is for --method sft only"),
        (["--beta", "0"], "--beta must be positive, got 0.0"),
        (["--eval-fraction", "1"], "--eval-fraction must be in [0, 1), got 1.0"),
        (["--eval-data", "/no/such/pairs.jsonl"], "--eval-data: file not found"),
    ],
)
def test_dpo_options_that_cannot_work_are_one_line_errors(tmp_path, capsys, extra, message):
    data = write_jsonl(tmp_path / "prefs.jsonl", [GOOD])

    status = main(
        ["--method", "dpo", "--model", str(fake_model(tmp_path)), "--data", str(data)]
        + ["--out", str(tmp_path / "out"), *extra]
    )

    assert status == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"alpaca-train: error: {message}"), lines


def test_eval_data_is_refused_for_supervised_fine_tuning():
    with pytest.raises(ValueError, match="--eval-data is for --method dpo"):
        parse_args(["--model", "m", "--data", "d", "--out", "o", "--eval-data", "e"])


def test_dpo_trains_lora_with_its_own_defaults_and_sft_stays_the_default():
    def resolved(*extra):
        return parse_args(["--model", "m", "--data", "d", "--out", "o", *extra])

    sft = resolved()
    assert (sft.train.method, sft.lora.lora, sft.train.learning_rate) == ("sft", False, 2e-5)
    dpo = resolved("--method", "dpo")
    assert (dpo.lora.lora, dpo.train.learning_rate, dpo.train.epochs) == (True, 5e-5, 1.0)
    assert (dpo.dpo.beta, dpo.dpo.eval_fraction, dpo.dpo.eval_data) == (0.1, 0.1, None)
    assert resolved("--method", "dpo", "--epochs", "2").train.epochs == 2.0
    assert dpo.to_json()["dpo"]["beta"] == 0.1


def test_instruction_records_get_the_alpaca_prompt_and_prompt_records_keep_theirs():
    built = check_preference_record(
        RawRecord(
            "f: record 0", {"instruction": "Add.", "input": "1, 2", "chosen": "3", "rejected": "4"}
        )
    )
    given = check_preference_record(RawRecord("f: record 1", GOOD))

    assert built == PreferencePair(format_prompt("Add.", "1, 2"), "3", "4")
    assert given == PreferencePair(GOOD["prompt"], "Hi!", "Go away.")


def test_the_held_out_split_is_seeded_and_never_shares_a_prompt_with_training():
    pairs = [
        PreferencePair(format_prompt(f"Question {i // 2}"), f"good {i}", f"bad {i}")
        for i in range(40)
    ]  # two pairs per prompt

    train, held = split_pairs(pairs, fraction=0.25, seed=7)

    assert len(held) == 10 and len(train) == 30  # 5 of 20 prompts, both pairs of each
    assert not {p.prompt for p in train} & {p.prompt for p in held}
    assert split_pairs(pairs, 0.25, seed=7) == (train, held)
    assert split_pairs(pairs, 0.25, seed=8) != (train, held)
    assert split_pairs(pairs, 0.0, seed=7) == (pairs, [])
    with pytest.raises(DataFormatError, match="--eval-fraction 0"):
        split_pairs(pairs[:2], 0.5, seed=7)  # one prompt cannot be on both sides


def test_the_shipped_sample_pairs_are_valid():
    pairs = load_preference_pairs(SAMPLE_PAIRS)

    assert len(pairs) == 196
    assert all(pair.prompt.endswith("### Response:") for pair in pairs)


def test_a_dpo_run_writes_the_lora_folder_the_server_loads_and_says_it_is_dpo(
    tmp_path, tiny_model_dir, capsys
):
    from safetensors.torch import load_file

    from alpaca_serve.server.adapters import BaseModel, inspect_adapter

    data = write_jsonl(tmp_path / "prefs.jsonl", fact_pairs()[:12])
    out = tmp_path / "out"

    status = main(
        ["--method", "dpo", "--model", str(tiny_model_dir), "--data", str(data), "--out", str(out)]
        + ["--preset", "tiny", "--model-max-length", "64", "--max-steps", "2"]
        + ["--global-batch-size", "2", "--micro-batch-size", "2", "--logging-steps", "1"]
        + ["--learning-rate", "1e-3", "--eval-fraction", "0.25"]
    )

    stderr = capsys.readouterr().err
    assert status == 0, stderr[-3000:]
    for name in (
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "alpaca_train.json",
        EVAL_FILE,
        "adapter/adapter_model.safetensors",
        "adapter/adapter_config.json",
    ):
        assert (out / name).is_file(), name
    adapter = load_file(out / "adapter" / "adapter_model.safetensors")
    assert all(".lora_A." in name or ".lora_B." in name for name in adapter)
    assert all(w.abs().max() > 0 for n, w in adapter.items() if ".lora_B." in n)  # it trained
    files = inspect_adapter(out, BaseModel.read(tiny_model_dir.name, tiny_model_dir), 16)
    assert files.weights_dir == out / "adapter" and files.rank == 8

    info = json.loads((out / "alpaca_train.json").read_text())
    assert (info["method"], info["objective"], info["merged"]) == ("lora", "dpo", True)
    assert info["arguments"]["dpo"]["beta"] == 0.1
    assert info["data"]["records"] == 12 and info["result"]["global_step"] == 2
    assert info["preference_eval"]["held_out_pairs"] == 3
    provenance = read_provenance(out).as_json()
    assert (provenance["made_by"], provenance["method"], provenance["objective"]) == (
        "alpaca-train",
        "lora",
        "dpo",
    )
    measured = json.loads((out / EVAL_FILE).read_text())
    assert measured["before"]["pairs"] == measured["after"]["pairs"] == 3
    assert "9 to train on, 3 held out" in stderr
    assert "alpaca-train: preferences on 3 held-out pairs:" in stderr
    assert "reward accuracy" in stderr  # the trainer's reward figures in the step lines


@pytest.fixture(scope="module")
def default_model_dir(tmp_path_factory) -> Path:
    """The bundled default model (SmolLM2-135M-Instruct) as a Hugging Face folder."""
    from alpaca_serve.recover.convert import convert_gguf, find_bundled_gguf

    return convert_gguf(find_bundled_gguf(), tmp_path_factory.mktemp("default") / "model")


@pytest.mark.slow
def test_dpo_on_the_default_model_raises_held_out_accuracy_and_margin(
    tmp_path, default_model_dir, capsys
):
    data = write_jsonl(tmp_path / "facts.jsonl", fact_pairs())
    out = tmp_path / "out"

    status = main(
        ["--method", "dpo", "--model", str(default_model_dir), "--data", str(data)]
        + ["--out", str(out), "--preset", "tiny", "--max-steps", "4", "--no-merge"]
        + ["--global-batch-size", "2", "--micro-batch-size", "2", "--logging-steps", "2"]
        + ["--learning-rate", "1e-3", "--eval-fraction", "0.34"]
    )

    stderr = capsys.readouterr().err
    assert status == 0, stderr[-3000:]
    measured = json.loads((out / EVAL_FILE).read_text())
    before, after = measured["before"], measured["after"]
    assert before["pairs"] == after["pairs"] == 8
    assert after["accuracy"] > before["accuracy"], (before, after)
    assert after["mean_margin"] > before["mean_margin"] + 1.0, (before, after)
    assert after["mean_rejected_logprob"] < before["mean_rejected_logprob"]  # refusals less likely
    assert f"{before['accuracy']:.1%}" in stderr and f"{after['accuracy']:.1%}" in stderr
