"""The provenance reader on folders marked by each command that makes models, by older versions
of them, and by nothing: what /info reports as the model's origin and prompt template."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace

from alpaca_serve.core.prompts import TEMPLATE_NAME
from alpaca_serve.core.provenance import MARKER_FILE, TRAIN_INFO_FILE, read_provenance
from alpaca_serve.recover import weight_diff
from alpaca_serve.recover.convert import conversion_marker
from alpaca_serve.training.args import parse_args
from alpaca_serve.training.train import TrainSummary, write_train_info


def write_json(path: Path, value) -> None:
    path.write_text(json.dumps(value))


def train_marker(folder: Path, *extra: str) -> None:
    """alpaca_train.json as alpaca-train writes it at the end of a run into `folder`."""
    args = parse_args(
        [
            "--model",
            "/models/llama-7b",
            "--data",
            "/data/alpaca_data.json",
            "--out",
            str(folder),
            *extra,
        ]
    )
    summary = TrainSummary(
        global_step=3, steps_this_run=3, examples=6, tokens=300, seconds=1.5, train_loss=2.0
    )
    stats = SimpleNamespace(examples=6, truncated=0, dropped_no_target=0, tokens=300)
    write_train_info(args, summary, stats, 0, [], 6)


def assert_recent(timestamp: str) -> None:
    made = datetime.fromisoformat(timestamp)
    assert made.tzinfo is not None
    assert abs((datetime.now(made.tzinfo) - made).total_seconds()) < 600


def test_a_folder_trained_by_alpaca_train_names_its_method_base_model_data_and_time(tmp_path):
    train_marker(tmp_path, "--lora")

    provenance = read_provenance(tmp_path)

    assert (provenance.prompt_template, provenance.template_source) == (TEMPLATE_NAME, "marker")
    body = provenance.as_json()
    assert body["made_by"] == "alpaca-train" and body["marker"] == TRAIN_INFO_FILE
    assert (body["method"], body["base_model"], body["data"]) == (
        "lora",
        "/models/llama-7b",
        "/data/alpaca_data.json",
    )
    assert_recent(body["created_at"])


def test_a_recovered_folder_names_its_diff_and_base(tmp_path):
    weight_diff._write_marker(tmp_path, tmp_path / "alpaca-7b-wdiff", tmp_path / "llama-7b", None)

    body = read_provenance(tmp_path).as_json()

    assert body["made_by"] == "alpaca-recover" and body["marker"] == MARKER_FILE
    assert body["diff"] == str(tmp_path / "alpaca-7b-wdiff")
    assert body["base"] == str(tmp_path / "llama-7b")
    assert body["prompt_template_source"] == "marker"
    assert_recent(body["created_at"])


def test_recovery_keeps_the_prompt_template_the_diff_carries(tmp_path):
    write_json(
        tmp_path / MARKER_FILE,
        {"prompt_template": "alpaca-v2", "made_by": "alpaca-convert", "gguf": "tuned.gguf"},
    )

    weight_diff._write_marker(tmp_path, tmp_path / "diff", tmp_path / "base", "float32")

    provenance = read_provenance(tmp_path)
    assert (provenance.made_by, provenance.prompt_template) == ("alpaca-recover", "alpaca-v2")
    assert "gguf" not in provenance.as_json()  # the diff's own origin is not the folder's


def test_a_folder_converted_from_a_gguf_file_names_the_file(tmp_path):
    gguf = Path("/models/SmolLM2-135M-Instruct.Q4_1.gguf")
    write_json(tmp_path / MARKER_FILE, conversion_marker(gguf))

    body = read_provenance(tmp_path).as_json()

    assert body["made_by"] == "alpaca-convert"
    assert body["gguf"] == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert body["prompt_template_source"] == "marker"


def test_markers_written_before_they_named_their_maker_are_still_understood(tmp_path):
    converted, recovered = tmp_path / "converted", tmp_path / "recovered"
    converted.mkdir(), recovered.mkdir()
    write_json(
        converted / MARKER_FILE,
        {
            "source": "SmolLM2-135M-Instruct.Q4_1.gguf",
            "dtype": "float32",
            "prompt_template": "alpaca",
        },
    )
    write_json(
        recovered / MARKER_FILE,
        {"prompt_template": "alpaca", "dtype": "float32", "source": "weight diff alpaca-7b-wdiff"},
    )

    assert read_provenance(converted).as_json() == {
        "made_by": "alpaca-convert",
        "marker": MARKER_FILE,
        "prompt_template_source": "marker",
        "created_at": None,
        "gguf": "SmolLM2-135M-Instruct.Q4_1.gguf",
    }
    assert read_provenance(recovered).as_json() == {
        "made_by": "alpaca-recover",
        "marker": MARKER_FILE,
        "prompt_template_source": "marker",
        "created_at": None,
        "diff": "alpaca-7b-wdiff",
        "base": None,
    }


def test_a_folder_without_a_marker_is_of_unknown_origin_and_the_alpaca_template_is_assumed(
    tmp_path,
):
    (tmp_path / "config.json").write_text("{}")

    provenance = read_provenance(tmp_path)

    assert (provenance.prompt_template, provenance.template_source) == (TEMPLATE_NAME, "assumed")
    assert provenance.as_json() == {
        "made_by": None,
        "marker": None,
        "prompt_template_source": "assumed",
        "created_at": None,
    }


def test_a_damaged_marker_is_reported_not_raised(tmp_path):
    (tmp_path / TRAIN_INFO_FILE).write_text('{"prompt_template": "alp')

    body = read_provenance(tmp_path).as_json()

    assert (body["made_by"], body["marker"], body["prompt_template_source"]) == (
        None,
        TRAIN_INFO_FILE,
        "assumed",
    )
    assert TRAIN_INFO_FILE in body["error"]


def test_a_recovery_marker_wins_over_a_training_marker_beside_it(tmp_path):
    train_marker(tmp_path)
    weight_diff._write_marker(tmp_path, tmp_path / "diff", tmp_path / "base", "float32")

    assert read_provenance(tmp_path).made_by == "alpaca-recover"
