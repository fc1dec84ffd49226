"""Demo settings are checked when the demo starts, with a readable one-line error."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from pydantic import ValidationError

from alpaca_serve.demo.settings import DemoSettings, load_examples
from tests.support import ROOT


def comparison_file(tmp_path, left_id):
    path = tmp_path / "comparison.json"
    path.write_text(
        json.dumps(
            {
                "labels": ["a", "b"],
                "seed": 0,
                "pairs": [
                    {
                        "pair_id": "pair-000",
                        "instruction": "Hi",
                        "input": "",
                        "left_is": "a",
                        "left": {"output": "x", "generation_id": left_id},
                        "right": {"output": "y", "generation_id": "gen-2"},
                    }
                ],
            }
        )
    )
    return path


def test_a_comparison_with_generation_ids_on_every_side_is_accepted(tmp_path):
    path = comparison_file(tmp_path, "gen-1")
    assert DemoSettings(comparison_file=path).comparison_file == path


def test_a_comparison_whose_answers_have_no_generation_ids_is_refused(tmp_path):
    path = comparison_file(tmp_path, None)

    with pytest.raises(ValidationError, match="without a generation id"):
        DemoSettings(comparison_file=path)
    result = subprocess.run(
        [sys.executable, "-m", "alpaca_serve.demo.cli"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "ALPACA_DEMO_COMPARISON_FILE": str(path)},
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1, result.stderr
    assert "comparison_file" in result.stderr and "generation id" in result.stderr


def test_a_file_that_is_not_a_comparison_is_refused(tmp_path):
    path = tmp_path / "notes.json"
    path.write_text("[1, 2]")

    with pytest.raises(ValidationError, match="not a comparison file"):
        DemoSettings(comparison_file=path)


@pytest.mark.slow  # a server process that imports Gradio before it refuses
def test_the_server_refuses_to_mount_the_demo_on_such_a_comparison_in_one_line(tmp_path):
    path = comparison_file(tmp_path, None)
    result = subprocess.run(
        [sys.executable, "-m", "alpaca_serve.serve"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={
            "PATH": "/usr/bin:/bin",
            "HOME": str(tmp_path),
            "ALPACA_DATA_DIR": str(tmp_path),
            "ALPACA_DEMO_COMPARISON_FILE": str(path),
        },
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.startswith(
        "alpaca-serve: error: invalid ALPACA_DEMO_* settings: comparison_file: "
    ), result.stderr
    assert result.stderr.count("\n") == 1 and "Value error" not in result.stderr


def test_examples_are_read_from_a_json_lines_file_or_an_alpaca_json_list(tmp_path):
    lines = tmp_path / "eval.jsonl"
    lines.write_text(
        '{"instruction": "Say hi.", "instances": [{"input": "to Ann"}]}\n\n'
        '{"instruction": "Count.", "instances": [{"input": ""}]}\n'
    )
    alpaca = tmp_path / "alpaca.json"
    alpaca.write_text(json.dumps([{"instruction": "Add.", "input": "1, 2", "output": "3"}]))
    assert load_examples(DemoSettings(examples_file=lines).examples_file, 8) == [
        ["Say hi.", "to Ann"],
        ["Count.", ""],
    ]
    assert load_examples(alpaca, 1) == [["Add.", "1, 2"]]


def test_an_examples_file_that_does_not_parse_is_refused_naming_the_line(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text('{"instruction": "ok"}\n{"instruction": \n')
    with pytest.raises(ValidationError, match="line 2"):
        DemoSettings(examples_file=path)


def test_the_default_pair_takes_the_adapter_with_the_latest_load_time_whatever_its_place():
    from alpaca_serve.demo.settings import default_arms

    models = [
        {"name": "base", "kind": "base", "loaded_at": "2024-01-01T00:00:00+00:00"},
        {"name": "new", "kind": "adapter", "loaded_at": "2024-01-01T00:05:00+00:00"},
        {"name": "old", "kind": "adapter", "loaded_at": "2024-01-01T00:01:00+00:00"},
    ]

    base, adapter = default_arms({"models": models, "defaults": {"max_new_tokens": 64}})

    assert (base.model, adapter.model) == (None, "new")
    assert (base.label, adapter.label) == ("the base model base", "the LoRA adapter new")
    assert base.max_new_tokens == adapter.max_new_tokens == 64
