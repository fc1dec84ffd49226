"""`python -m benchmarks.training_processes`: the Trainer's throughput on one and on two torchrun
processes, the same global batch, in one run (a smoke test on the tiny model: the figures are not
checked, only that each count was measured, as data parallel, against one peak)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from benchmarks.training_processes import main
from tests.support import ROOT


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--processes", "1,x"], "not a comma-separated list of numbers"),
        (["--processes", "0"], "0 is not a process count"),
        (["--processes", "1,3"], "--global-batch-size 4 is not a multiple of 3 processes"),
    ],
)
def test_bad_process_counts_are_one_line_errors(capsys, argv, message):
    assert main(argv) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert message in line


@pytest.mark.slow
def test_one_and_two_processes_are_measured_side_by_side(tiny_model_dir, tmp_path):
    figures_file = tmp_path / "figures.json"
    run = subprocess.run(
        [
            *(sys.executable, "-m", "benchmarks.training_processes", "--model"),
            *(str(tiny_model_dir), "--steps", "2", "--warmup-steps", "1", "--max-length", "64"),
            *("--json", str(figures_file)),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )

    assert run.returncode == 0, run.stderr[-3000:]
    figures = json.loads(figures_file.read_text())
    one, two = figures["runs"]
    assert (one["processes"], two["processes"]) == (1, 2)
    assert (one["micro_batch_size"], two["micro_batch_size"]) == (4, 2)  # the same global batch
    assert one["tokens"] == two["tokens"] > 0  # the same examples, counted over both processes
    assert one["peak_tflops"] == two["peak_tflops"] == figures["peak_tflops"]
    assert two["ratio_to_first"] == pytest.approx(
        two["tokens_per_second"] / one["tokens_per_second"]
    )
    assert "processes" in run.stdout and "vs first" in run.stdout
