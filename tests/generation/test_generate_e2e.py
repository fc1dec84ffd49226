"""End to end, for real: this project's own server (the default model, real vLLM) is the teacher;
`alpaca-generate` makes data with it, `alpaca-train` trains a LoRA on that data as it is, and the
same server serves the result. The default model's data is poor; the path is what is tested."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from alpaca_serve.core.default_model import DEFAULT_MODEL_NAME, default_model_folder
from alpaca_serve.training.data import load_records
from tests.support import ServerProcess

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A server on the default model (converted into a cache of its own) with an adapters
    folder, which it reloads when asked."""
    folder = tmp_path_factory.mktemp("teacher")
    (folder / "adapters").mkdir()
    env = {
        "ALPACA_CACHE_DIR": str(folder / "cache"),
        "ALPACA_MODEL": "",
        "ALPACA_ADAPTERS_DIR": str(folder / "adapters"),
        "ALPACA_ADAPTERS_POLL_S": "3600",
    }
    server = ServerProcess(env, folder / "server.log")
    server.folder = folder
    try:
        server.wait_until_ready()
        yield server
    finally:
        server.stop()


def test_data_our_server_generates_trains_an_adapter_the_server_then_serves(teacher, tmp_path):
    env = {**os.environ, "ALPACA_CACHE_DIR": str(teacher.folder / "cache")}
    generate = [
        sys.executable, "-m", "alpaca_serve.generation.cli", "--base-url", f"{teacher.url}/v1",
        "--num-instructions", "2", "--max-tokens", "320", "--concurrency", "4",
        "--max-requests", "24", "--out", "gen.json", "--no-progress",
    ]  # fmt: skip
    made = subprocess.run(
        generate, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900
    )
    assert made.returncode == 0, made.stderr[-3000:]
    assert "kept 2 tasks from" in made.stdout, made.stdout + made.stderr[-2000:]
    assert "tokens: " in made.stdout and "completion" in made.stdout
    records = load_records(tmp_path / "gen.json")
    assert len(records) == 2 and all(record.instruction for record in records)
    provenance = json.loads((tmp_path / "gen.provenance.json").read_text())
    assert provenance["teachers"][0]["model"] == DEFAULT_MODEL_NAME
    assert provenance["tokens"]["completion"] > 0

    # alpaca-train reads gen.json as it is; with no --model it trains the default model.
    train = [
        sys.executable, "-m", "alpaca_serve.training.cli", "--data", "gen.json", "--lora",
        "--no-merge", "--max-steps", "2", "--global-batch-size", "2", "--micro-batch-size", "2",
        "--model-max-length", "256",
    ]  # fmt: skip
    trained = subprocess.run(
        train, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900
    )
    assert trained.returncode == 0, trained.stderr[-3000:]
    folder = default_model_folder(teacher.folder / "cache")
    assert f"no --model: the bundled {DEFAULT_MODEL_NAME} in {folder}" in trained.stderr
    assert "data: 2 records from gen.json" in trained.stderr
    out = tmp_path / "runs" / "gen-sft"  # the default --out: runs/DATA-METHOD
    assert (out / "adapter" / "adapter_config.json").is_file()

    # The server serves it beside its base once its adapters folder holds it.
    shutil.copytree(out, teacher.folder / "adapters" / "generated")
    reloaded = teacher.client.post("/admin/adapters/reload")
    assert reloaded.status_code == 200, reloaded.text
    models = [model["id"] for model in teacher.client.get("/v1/models").json()["data"]]
    assert "generated" in models
    answer = teacher.client.post(
        "/generate",
        json={"instruction": records[0].instruction, "model": "generated", "max_new_tokens": 16},
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["model"] == "generated" and answer.json()["text"]
