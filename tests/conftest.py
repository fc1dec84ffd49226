"""Shared fixtures: servers of two layers, and the tiny LLaMA the real one runs.

- The real layer: a real `alpaca-serve` process with its own vLLM engine on a tiny LLaMA built
  once per session; a session starts one and shares it (`tiny_server`), because loading an engine
  takes tens of seconds. These tests are marked `slow`.
- The fast layer: the same app in this process, served by uvicorn on a free port, with the
  scripted engine of tests/scripted_engine.py instead of vLLM (`scripted_server`); it starts in
  well under a second.

Tests of the HTTP behaviour take the `server` fixture, which runs them once on each layer (the
real one marked slow), so `pytest -m "not slow"` (`make test-fast`) is the quick loop and
`make test` proves the same behaviour through the real engine.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

import httpx
import pytest

from tests.support import (
    LAYERS,
    ServerProcess,
    build_tiny_llama,
    start_server,
    tiny_server_env,
    write_pad_row_adapter,
)

# The servers the tests start (alpaca-serve processes, the Docker stack through compose) never
# compile a model in the background: each would spend minutes of CPU beside the suite. The test
# of that background compile turns it on for its own server (tests/server/test_compile_mode.py).
os.environ.setdefault("ALPACA_COMPILE_IN_BACKGROUND", "false")
# Nor do they find this machine's warm compile caches (a developer's `make run` fills them): every
# engine the tests start is eager unless a test compiles one itself, on any machine alike.
os.environ.setdefault("ALPACA_COMPILE_CACHE_DIR", tempfile.mkdtemp(prefix="alpaca-test-compile-"))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_model_dir))


@pytest.fixture(scope="session")
def tiny_server(request, tmp_path_factory):
    """One server on the tiny model for the whole session."""
    server = start_server(request, "vllm", {}, tmp_path_factory.mktemp("tiny-server"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def tiny_adapter(tmp_path_factory, tiny_model_dir) -> Path:
    """A LoRA adapter of the tiny LLaMA as `alpaca-train --lora --no-merge` makes it
    (alpaca_train.json beside adapter/): rank 8 on q/v, 2 steps on a few records of the shipped
    sample at a high learning rate, so that its greedy answers differ from the base's."""
    from tests.training.test_train import FAST, SAMPLE, run_cli

    out = tmp_path_factory.mktemp("adapter-run") / "alpaca-lora"
    result = run_cli(
        *("--model", str(tiny_model_dir), "--data", str(SAMPLE), "--out", str(out)),
        *FAST,
        *("--lora", "--no-merge", "--max-steps", "2", "--learning-rate", "5e-2"),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "servable beside its base" in result.stderr
    return out


@pytest.fixture(scope="session")
def tiny_adapter_server(tiny_adapter, tiny_model_dir, tiny_tokenizer, tmp_path_factory):
    """One real server on the tiny model for the session with `tiny_adapter` served three ways:
    copied into its adapters folder as "alpaca-lora", its adapter/ folder named in ALPACA_ADAPTERS
    as "direct", and a copy with lm_head rows ("pad-row", refused). `server.adapters_dir` is that
    folder; a test that adds adapters removes them again."""
    folder = tmp_path_factory.mktemp("adapter-server")
    adapters_dir = folder / "adapters"
    adapters_dir.mkdir()
    shutil.copytree(tiny_adapter, adapters_dir / "alpaca-lora")
    write_pad_row_adapter(tiny_adapter, adapters_dir / "pad-row", len(tiny_tokenizer))
    env = {
        **tiny_server_env(tiny_model_dir),
        "ALPACA_ADAPTERS_DIR": str(adapters_dir),
        "ALPACA_ADAPTERS": f"direct={tiny_adapter / 'adapter'}",
        "ALPACA_ADAPTERS_POLL_S": "0.5",
    }
    server = ServerProcess(env, folder / "server.log")
    server.adapters_dir = adapters_dir
    try:
        server.wait_until_ready()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def scripted_server(request, tmp_path_factory):
    """One in-process server on the scripted engine for the whole session."""
    server = start_server(request, "scripted", {}, tmp_path_factory.mktemp("scripted-server"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=LAYERS)
def server(request):
    """The shared server of each layer in turn; a test that scripts the engine gets it reset."""
    if request.param == "vllm":
        yield request.getfixturevalue("tiny_server")
        return
    server = request.getfixturevalue("scripted_server")
    engine = server.engine
    script = (engine.reply, engine.delay_s, engine.abort_delay_s)
    try:
        yield server
    finally:
        engine.reply, engine.delay_s, engine.abort_delay_s = script


@pytest.fixture
def client(server) -> httpx.Client:
    return server.client


# Fixtures that load the real engine or build the tiny model: a test using one is slow, whatever
# its own marks say, so `pytest -m "not slow"` never waits for vLLM.
REAL_ENGINE_FIXTURES = {
    "tiny_server",
    "tiny_model_dir",
    "tiny_tokenizer",
    "tiny_adapter",
    "tiny_adapter_server",
}


# `make test` runs its files on two processes (pytest-xdist, `--dist loadfile`: a file's tests
# stay on one process, with the servers its fixtures start) in the order collected here: the
# costliest files first, measured (seconds on 2 cores with two processes, 2026-12-03), then the
# other files with a slow test, then the quick ones, which fill in at the end. Longest first
# keeps one process from starting a two-minute file when the other has nothing left to run.
COSTLIEST_FILES = [
    "tests/test_wheel.py",  # 165: builds the wheel, installs it into a new environment
    "tests/benchmarks/test_peer.py",  # 150: three servers
    "tests/server/test_default_model.py",  # 145: the default model's engine
    "tests/generation/test_generate_e2e.py",  # 175 alone: the default model teaches, trains
    "tests/server/test_feedback_api.py",  # 141: one server per store backend
    "tests/server/test_lifecycle.py",  # 136: two servers
    "tests/benchmarks/test_adapter_cost.py",  # 131: trains, then two servers
    "tests/server/test_feedback_durability.py",  # 124: servers stopped and killed
    "tests/training/test_dpo.py",  # 107: DPO on the default model
    "tests/training/test_kto.py",  # ~110: KTO on the default model
    "tests/training/test_distributed.py",  # 100 alone: seven torchrun / accelerate runs
    "tests/training/test_distributed_faults.py",  # 80 alone: two machines, kills, a rendezvous
    "tests/training/test_deepspeed.py",  # 100 on a fresh machine: DeepSpeed builds its CPU ops
    "tests/training/test_train.py",  # 100: trains, then serves
    "tests/server/test_filtered_server.py",  # 94
    "tests/loop/test_loop_e2e.py",  # 90
    "tests/server/test_access.py",  # 80
]


def pytest_collection_modifyitems(config, items):
    for item in items:
        if REAL_ENGINE_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
    # By file (a stable sort: each file's tests keep their order and stay together).
    slow_files = {
        item.nodeid.split("::", 1)[0] for item in items if item.get_closest_marker("slow")
    }
    rank = {}
    for item in items:
        path = item.nodeid.split("::", 1)[0]
        if path not in rank:
            if path in COSTLIEST_FILES:
                rank[path] = (0, COSTLIEST_FILES.index(path))
            else:
                rank[path] = (1 if path in slow_files else 2, 0)
    items.sort(key=lambda item: rank[item.nodeid.split("::", 1)[0]])


# A module whose every test is slow says so at its top (`pytestmark = ... pytest.mark.slow`);
# `pytest -m "not slow"` (`make test-fast`) then does not even import it: some import seconds of
# packages (Gradio, LangChain) that only their slow tests use.
SLOW_MODULE = re.compile(r"^pytestmark = .*\bpytest\.mark\.slow\b", re.MULTILINE)


def pytest_ignore_collect(collection_path, config):
    if config.getoption("markexpr", "").split() != ["not", "slow"]:
        return None
    if collection_path.suffix == ".py" and collection_path.name.startswith("test_"):
        if SLOW_MODULE.search(collection_path.read_text(encoding="utf-8")):
            return True
    return None
