"""`python -m benchmarks.adapters`: its options, and its shortest run end to end on the tiny model
(a smoke test: the figures of a random 2-layer model are not checked, only that every case and the
live load ran and were reported)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from benchmarks.adapters import main
from tests.support import ROOT


def test_help_says_what_is_measured(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["--help"])

    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert "--adapter" in out and "--short" in out and "live" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--clients", "1,0"], "expected positive integers such as 1,8, got '1,0'"),
        (["--model", "/no/such/model"], "--model /no/such/model has no config.json"),
        (["--adapter", "/no/such/adapter"], "holds no adapter_config.json"),
    ],
)
def test_bad_options_are_refused_before_anything_starts(argv, message, capsys):
    with pytest.raises(SystemExit) as exited:
        main(argv)

    assert exited.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.slow
def test_the_short_run_trains_an_adapter_and_measures_every_case_and_a_live_load(
    tiny_model_dir, tmp_path
):
    figures_file = tmp_path / "figures.json"
    run = subprocess.run(
        [
            *(sys.executable, "-m", "benchmarks.adapters", "--short"),
            *("--model", str(tiny_model_dir), "--json", str(figures_file)),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1500,
    )

    assert run.returncode == 0, run.stderr[-3000:]
    figures = json.loads(figures_file.read_text())
    cases = figures["cases"]
    assert [(c["case"], c["clients"]) for c in cases] == [(k, n) for k in "abcd" for n in (1, 2)]
    # Every request answered, each with exactly the 8 tokens asked for (min_tokens).
    assert all(c["errors"] == [] and c["tokens"] == 8 * c["requests"] > 0 for c in cases)
    [trial] = figures["live_load"]
    assert trial["reload_s"] > 0 and trial["longest_gap_with_s"] > 0
    for row in ("(a) base, adapters disabled", "(d) mix: base + two adapters"):
        assert row in run.stdout
    assert "longest pause of running streams around a live load" in run.stdout
    assert "trained in" in run.stderr  # the adapter came from alpaca-train, here
