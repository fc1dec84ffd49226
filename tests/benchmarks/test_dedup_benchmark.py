"""`python -m benchmarks.dedup`: its options, its workload, and its short run end to end (the
decisions of the Deduplicator and of the exact all-pairs check must be identical; the timings
are not checked)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from benchmarks.dedup import build_workload, main
from tests.support import ROOT


def test_help_explains_every_option(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["--help"])

    assert exited.value.code == 0
    out = capsys.readouterr().out
    for option in ("--sample", "--count", "--similar-from", "--seed ", "--seeds", "--short"):
        assert option in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--sample", "0"], "--sample and --count must be at least 1"),
        (["--similar-from", "0"], "--similar-from must be above 0 and at most 1"),
    ],
)
def test_bad_options_are_refused_before_anything_runs(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_the_workload_is_the_same_for_the_same_seed_and_mixes_shipped_and_new_instructions():
    workload = build_workload(2000, seed=0)

    assert workload == build_workload(2000, seed=0)
    assert workload != build_workload(2000, seed=1)
    assert len(workload) == 2000
    assert "Give three tips for staying healthy." in workload  # Alpaca's first record
    assert len(set(workload)) > 1800


def test_the_short_run_decides_both_ways_identically_in_seconds():
    run = subprocess.run(
        [sys.executable, "-m", "benchmarks.dedup", "--short"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=20,
    )

    assert run.returncode == 0, run.stdout + run.stderr[-3000:]
    assert "decisions identical: yes" in run.stdout
    kept = re.search(r"\(b\) 3000 instructions .*\n  kept (\d+), rejected (\d+)", run.stdout)
    assert kept and int(kept[1]) + int(kept[2]) == 3000 and int(kept[2]) > 0
