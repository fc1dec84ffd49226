"""`python -m benchmarks.training_throughput`: alpaca-train's Trainer and a bare training loop on
the same model in one run (a smoke test on the tiny model: the figures are not checked, only that
both were measured and compared)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from benchmarks.training_throughput import main
from tests.support import ROOT


def test_a_step_count_below_one_is_refused(capsys):
    assert main(["--steps", "0"]) == 2
    assert "--steps and --warmup-steps must be at least 1" in capsys.readouterr().err


def test_help_explains_the_bare_loop(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "--no-bare" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.parametrize("method", [[], ["--lora"]], ids=["full", "lora"])
def test_the_trainer_and_the_bare_loop_are_measured_side_by_side(tiny_model_dir, tmp_path, method):
    figures_file = tmp_path / "figures.json"
    run = subprocess.run(
        [
            *(sys.executable, "-m", "benchmarks.training_throughput", "--model"),
            *(str(tiny_model_dir), "--steps", "2", "--warmup-steps", "1", "--max-length", "64"),
            *("--micro-batch-size", "2", "--json", str(figures_file), *method),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )

    assert run.returncode == 0, run.stderr[-3000:]
    figures = json.loads(figures_file.read_text())
    assert figures["method"] == ("lora" if method else "full")
    assert figures["tokens"] > 0 and figures["bare"]["tokens"] > 0
    assert figures["ratio_to_bare"] == pytest.approx(
        figures["tokens_per_second"] / figures["bare"]["tokens_per_second"]
    )
    assert "alpaca-train / bare loop:" in run.stdout
