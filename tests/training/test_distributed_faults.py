"""Two machines in miniature and what goes wrong between processes: two torchrun launchers with
one process each (`--nnodes 2`, c10d rendezvous on 127.0.0.1) train as one process does, on
disjoint halves of every batch; when one machine's process is killed the other stops at once
with one line naming the checkpoint, and --resume continues from it; SIGTERM (what torchrun
sends every process when one fails) stops a run the same way; a launcher that cannot reach the
rendezvous fails in seconds naming the endpoint."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.support import ROOT, free_port
from tests.training.launch import (
    METHODS,
    SCHEDULE,
    assert_split_between_two,
    assert_trained_alike,
    torchrun_command,
    train_here,
)

pytestmark = pytest.mark.slow

# A process that dies is noticed by the others at their next all-reduce; torchrun then stops
# its own processes. Measured: under 2 s on 2 cores. A hang would last --ddp-timeout (600 s).
STOPS_WITHIN = 30
# torchrun's store client waits read_timeout per try, and tries twice: ~12 s measured.
UNREACHABLE_FAILS_WITHIN = 40


def two_node_launcher(port: int, run_id: str) -> list[str]:
    """One machine's torchrun of two, both rendezvousing at 127.0.0.1:PORT."""
    return torchrun_command(
        *("--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d"),
        *("--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", run_id),
        *("--rdzv-conf", "read_timeout=10"),
    )


def start_two_nodes(model: Path, out: Path, *argv: str) -> list[subprocess.Popen]:
    launcher = two_node_launcher(free_port(), out.parent.name)
    command = [*launcher, "--model", str(model), "--out", str(out), *argv]
    return [
        subprocess.Popen(
            command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]


def wait_for(path: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.2)


def process_of_rank(launchers: list[subprocess.Popen], rank: int) -> psutil.Process:
    for launcher in launchers:
        for child in psutil.Process(launcher.pid).children(recursive=True):
            try:
                if child.environ().get("RANK") == str(rank):
                    return child
            except psutil.NoSuchProcess:
                continue
    raise AssertionError(f"no process of rank {rank}")


def test_two_launchers_as_two_machines_train_as_one_process_on_disjoint_halves(
    tmp_path, tiny_model_dir
):
    reference = train_here(tiny_model_dir, tmp_path / "one" / "out", "full", "--record-batches")
    out = tmp_path / "nodes" / "out"

    launchers = start_two_nodes(
        tiny_model_dir,
        out,
        *SCHEDULE,
        *METHODS["full"],
        *("--micro-batch-size", "2", "--record-batches"),
    )
    logs = [launcher.communicate(timeout=600)[1] for launcher in launchers]

    assert [launcher.returncode for launcher in launchers] == [0, 0], "\n".join(logs)[-3000:]
    assert any("2 process(es)" in log for log in logs)
    assert_trained_alike(out, reference, tiny_model_dir)
    assert_split_between_two(out, reference)


def test_a_killed_machine_stops_the_other_at_once_and_resume_continues(tmp_path, tiny_model_dir):
    out = tmp_path / "killed" / "out"
    argv = [*METHODS["full"], "--preset", "tiny", "--global-batch-size", "4"]
    argv += ["--logging-steps", "1", "--save-steps", "4", "--max-steps", "24"]
    launchers = start_two_nodes(tiny_model_dir, out, *argv, "--micro-batch-size", "2")
    wait_for(out / "checkpoints" / "checkpoint-4" / "trainer_state.json")

    process_of_rank(launchers, 1).kill()
    killed_at = time.monotonic()
    logs = [launcher.communicate(timeout=120)[1] for launcher in launchers]
    took = time.monotonic() - killed_at

    assert took < STOPS_WITHIN, f"the run took {took:.0f} s to stop"
    assert all(launcher.returncode != 0 for launcher in launchers)
    # The survivor fails at its next collective step, or, when its own launcher sees the lost
    # machine first (the rendezvous), is stopped by it with SIGTERM: one line either way.
    stops = [
        line
        for log in logs
        for line in log.splitlines()
        if "alpaca-train: error: process 0 lost the other processes at step" in line
        or "alpaca-train: stopped by SIGTERM" in line
    ]
    assert stops, "\n".join(logs)[-3000:]
    line = stops[0]
    assert "run the same command with --resume to continue from" in line
    saved = line.rsplit(" ", 1)[-1]
    assert Path(saved).parent == out / "checkpoints"
    done_before = int(saved.rsplit("-", 1)[-1])

    resumed = subprocess.run(
        [*torchrun_command("--standalone", "--nproc-per-node", "2")]
        + ["--model", str(tiny_model_dir), "--out", str(out), *argv]
        + ["--micro-batch-size", "2", "--resume"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )

    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from {saved}" in resumed.stderr
    assert f"step {done_before + 1}/24" in resumed.stderr
    assert f"step {done_before}/24" not in resumed.stderr
    assert f"done: {24 - done_before} steps" in resumed.stderr
    state = json.loads((out / "checkpoints" / "checkpoint-24" / "trainer_state.json").read_text())
    assert state["global_step"] == 24


def test_sigterm_stops_a_run_with_one_line_naming_the_checkpoint_to_resume_from(
    tmp_path, tiny_model_dir
):
    out = tmp_path / "out"
    run = subprocess.Popen(
        [sys.executable, "-m", "alpaca_serve.training.cli"]
        + ["--model", str(tiny_model_dir), "--out", str(out), *METHODS["full"]]
        + ["--preset", "tiny", "--global-batch-size", "4", "--micro-batch-size", "4"]
        + ["--save-steps", "3", "--max-steps", "1000"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for(out / "checkpoints" / "checkpoint-3" / "trainer_state.json")

    run.send_signal(signal.SIGTERM)
    stderr = run.communicate(timeout=STOPS_WITHIN)[1]

    assert run.returncode == 128 + signal.SIGTERM
    last = stderr.strip().splitlines()[-1].rsplit("\r", 1)[-1]
    assert last.startswith("alpaca-train: stopped by SIGTERM; run the same command with --resume")
    assert "Traceback" not in stderr
    assert Path(last.rsplit(" ", 1)[-1]).parent == out / "checkpoints"


def test_a_launcher_that_cannot_reach_the_rendezvous_fails_in_seconds_naming_it(tmp_path):
    port = free_port()  # nothing listens there
    launcher = torchrun_command(
        *("--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d"),
        *("--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "nobody"),
        *("--rdzv-conf", "is_host=false,read_timeout=5"),
    )
    started = time.monotonic()

    result = subprocess.run(
        [*launcher, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )

    assert time.monotonic() - started < UNREACHABLE_FAILS_WITHIN
    assert result.returncode != 0
    assert f"(127.0.0.1, {port})" in result.stderr
    assert "RendezvousConnectionError" in result.stderr
