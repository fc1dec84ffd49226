"""`alpaca-loop run --auto` end to end on the tiny LLaMA: a real server (vLLM) with an adapters
folder, every stage for real (training, merge, weight diff and recovery, answers, the reference
judge's machine votes, DPO, the report), then a rerun that resumes and finds nothing to do.

A few evaluation instructions, short answers and one- or two-step fine-tunes keep it to a couple
of minutes; the supervised fine-tune's learning rate is high so that the adapter's greedy answers
differ from the base's. The tiny model's answers are random tokens, which share no word with any
reference answer, so the reference judge (tests/loop/test_judge.py) would call every pair a tie
and leave nothing to prefer: the machine votes here come from the other kind of judge --auto
takes, an OpenAI-compatible endpoint (`--judge-url`), a fake one in this process that prefers the
longer answer whichever side it is shown on.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fake_judge import JudgeScript, running_judge
from tests.support import ROOT, ServerProcess, tiny_server_env

pytestmark = pytest.mark.slow

LIMIT = 6
STAGES = ["sft", "publish", "compare", "prefer", "report"]


JUDGE = "judge-longer-answer"
ANSWERS = re.compile(r"### Answer A:\n(.*)\n\n### Answer B:\n(.*)\n\nReply with", re.DOTALL)


def longer_answer(prompt: str, number: int) -> str:
    """A or B for the longer answer, tie for equal lengths."""
    a, b = ANSWERS.search(prompt).groups()
    return "A" if len(a) > len(b) else "B" if len(b) > len(a) else "tie"


@pytest.fixture(scope="module")
def judge_url():
    with running_judge(JudgeScript(longer_answer)) as url:
        yield url


@pytest.fixture(scope="module")
def loop_server(tiny_model_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("loop-server")
    (folder / "adapters").mkdir()
    env = {
        **tiny_server_env(tiny_model_dir),
        "ALPACA_ADAPTERS_DIR": str(folder / "adapters"),
        "ALPACA_DATA_DIR": str(folder / "data"),
        "ALPACA_DEFAULT_MAX_NEW_TOKENS": "8",
    }
    server = ServerProcess(env, folder / "server.log")
    server.folder = folder
    try:
        server.wait_until_ready()
        yield server
    finally:
        server.stop()


def alpaca_loop(server, work_dir: Path, *args: str) -> subprocess.CompletedProcess:
    command = [
        sys.executable,
        "-m",
        "alpaca_serve.loop.cli",
        *args,
        "--work-dir",
        str(work_dir),
        "--no-progress",
    ]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def finished_run(loop_server, judge_url, tmp_path_factory):
    work_dir = tmp_path_factory.mktemp("loop-run") / "work"
    result = alpaca_loop(
        loop_server,
        work_dir,
        "run",
        "--auto",
        "--judge-url",
        judge_url,
        "--judge-model",
        JUDGE.removeprefix("judge-"),
        "--server-url",
        loop_server.url,
        "--adapters-dir",
        str(loop_server.folder / "adapters"),
        "--data-dir",
        str(loop_server.folder / "data"),
        "--limit",
        str(LIMIT),
        "--max-new-tokens",
        "8",
        "--sft-steps",
        "2",
        "--sft-learning-rate",
        "0.05",
        "--dpo-steps",
        "1",
        "--batch-size",
        "2",
        "--max-length",
        "256",  # room for the evaluation prompts the DPO pairs are made of
    )
    assert result.returncode == 0, result.stderr[-4000:] + result.stdout[-4000:]
    return work_dir, result.stdout


def test_every_stage_finishes_and_leaves_its_files(finished_run):
    work_dir, stdout = finished_run
    state = json.loads((work_dir / "loop_state.json").read_text())
    assert list(state["stages"]) == STAGES
    for stage in state["stages"]:
        assert f"{stage}: done in " in stdout
    files = [
        "sft/adapter/adapter_model.safetensors",
        "publish/merged/config.json",
        "publish/diff/weight_diff_manifest.json",
        "publish/recovered/config.json",
        "compare/answers-base.jsonl",
        "compare/answers-sft.jsonl",
        "compare/comparison.json",
        "report/report.txt",
        "report/details.txt",
        "report/comparison.png",
        "prefer/prefs.jsonl",
        "prefer/dpo/adapter/adapter_model.safetensors",
        "prefer/answers-dpo.jsonl",
        "prefer/comparison-dpo-vs-base.json",
        "prefer/comparison-dpo-vs-sft.json",
        "report/comparison-dpo-vs-sft.png",
    ]
    for path in files:
        assert (work_dir / path).is_file(), path
    comparison = json.loads((work_dir / "compare/comparison.json").read_text())
    assert len(comparison["pairs"]) == LIMIT
    assert comparison["labels"][0] == "loop-sft"


def test_the_recovered_model_is_the_merged_one(finished_run, tiny_model_dir):
    import torch
    from safetensors.torch import load_file

    def tensors(folder: Path) -> dict:
        return {k: v for f in sorted(folder.glob("*.safetensors")) for k, v in load_file(f).items()}

    work_dir, _ = finished_run
    merged = tensors(work_dir / "publish/merged")
    recovered = tensors(work_dir / "publish/recovered")
    assert merged and merged.keys() == recovered.keys()
    base = tensors(tiny_model_dir)
    assert any(
        not torch.equal(merged[name], base[name]) for name in base
    )  # the merge did something
    for name, tensor in merged.items():
        assert torch.allclose(tensor, recovered[name], rtol=0, atol=1e-6), name
    outputs = json.loads((work_dir / "loop_state.json").read_text())["stages"]["publish"]["outputs"]
    assert outputs["bit_identical"] + outputs["rounded"] == outputs["tensors"] == len(merged)


def test_both_adapters_are_served_by_name(finished_run, loop_server):
    names = ["loop-sft", "loop-dpo"]
    served = {model["id"] for model in loop_server.client.get("/v1/models").json()["data"]}
    assert set(names) <= served
    for name in names:
        reply = loop_server.client.post(
            "/generate", json={"instruction": "Name a colour.", "model": name}
        )
        assert reply.status_code == 200 and reply.json()["model"] == name


def test_the_report_ends_the_output_with_machine_votes_named_as_such(finished_run):
    work_dir, stdout = finished_run
    table = (work_dir / "report/report.txt").read_text().strip()
    assert stdout.rstrip().endswith(table)
    rows = json.loads((work_dir / "report/report.json").read_text())
    base = rows[0]["opponent"]
    pairings = [("loop-sft", base), ("loop-dpo", base), ("loop-dpo", "loop-sft")]
    assert [(row["model"], row["opponent"], row["judged_by"]) for row in rows] == [
        (model, opponent, judge) for model, opponent in pairings for judge in ("human", "machine")
    ]
    machine = [row for row in rows if row["judged_by"] == "machine"]
    assert all(row["votes"] == LIMIT for row in machine)
    assert all(row["judges"] == [JUDGE] for row in machine)
    assert all(row["votes"] == 0 for row in rows if row["judged_by"] == "human")
    assert table.count(f"MACHINE: {JUDGE}") == len(pairings)
    assert "MACHINE votes" in stdout  # the compare (and prefer) stages say so too
    source = json.loads((work_dir / "loop_state.json").read_text())["stages"]["prefer"]
    assert "from MACHINE votes" in source["outputs"]["preference_source"]


def test_a_rerun_resumes_and_does_nothing_for_finished_stages(finished_run, loop_server):
    work_dir, _ = finished_run
    before = (work_dir / "compare/comparison.json").stat().st_mtime_ns
    votes_before = loop_server.client.get("/feedback/comparisons").json()["comparisons"]
    again = alpaca_loop(loop_server, work_dir, "run")
    for stage in STAGES:
        assert f"{stage}: finished earlier, skipped" in again.stdout
    assert "done in" not in again.stdout
    assert again.returncode == 0, again.stderr
    assert "nothing to do" in again.stdout
    assert (work_dir / "compare/comparison.json").stat().st_mtime_ns == before
    assert loop_server.client.get("/feedback/comparisons").json()["comparisons"] == votes_before
