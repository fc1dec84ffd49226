"""The bundled default model, converted on first start and served through the real engine."""

from __future__ import annotations

import subprocess
import sys

import pytest

from alpaca_serve.core.project_model import PROJECT_MODEL_DIR, PROJECT_MODEL_NAME
from alpaca_serve.core.prompts import TEMPLATE_NAME, format_prompt
from alpaca_serve.demo.settings import default_arms
from alpaca_serve.recover.convert import BUNDLED_FILE
from tests.support import ROOT, ServerProcess, stream_events

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def default_server(tmp_path_factory):
    """A server with no model configured, and an empty cache: it converts the bundled model."""
    cache = tmp_path_factory.mktemp("model-cache")
    log = tmp_path_factory.mktemp("logs") / "default-server.log"
    server = ServerProcess({"ALPACA_CACHE_DIR": str(cache), "ALPACA_MODEL": ""}, log)
    server.cache = cache
    try:
        server.wait_until_ready()
        yield server
    finally:
        server.stop()


def test_the_default_model_knows_the_capital_of_france(default_server):
    response = default_server.client.post(
        "/generate", json={"instruction": "What is the capital of France?"}
    )
    assert response.status_code == 200, response.text
    assert "Paris" in response.json()["text"]
    assert default_server.client.get("/info").json()["model"] == "SmolLM2-135M-Instruct"


def test_the_projects_alpaca_model_is_served_beside_the_base_with_no_setting(default_server):
    client = default_server.client
    assert [m["id"] for m in client.get("/v1/models").json()["data"]] == [
        "SmolLM2-135M-Instruct",
        PROJECT_MODEL_NAME,
    ]
    info = client.get("/info").json()
    [adapter] = [m for m in info["models"] if m.get("kind") == "adapter"]
    assert (adapter["name"], adapter["path"]) == (PROJECT_MODEL_NAME, str(PROJECT_MODEL_DIR))
    assert adapter["provenance"]["made_by"] == "alpaca-train"
    assert adapter["training_arguments"]["train"]["recipe"] == "alpaca"
    # A request for it is answered by the adapter (the base answers otherwise).
    asked = {"instruction": "Name a colour.", "temperature": 0, "max_new_tokens": 24}
    base = client.post("/generate", json=asked).json()
    ours = client.post("/generate", json={**asked, "model": PROJECT_MODEL_NAME}).json()
    assert (base["model"], ours["model"]) == ("SmolLM2-135M-Instruct", PROJECT_MODEL_NAME)
    assert ours["text"] != base["text"]
    # The demo's Compare tab pairs it with the base.
    assert [arm.model for arm in default_arms(info)] == [None, PROJECT_MODEL_NAME]


def test_info_says_the_default_model_was_converted_from_the_bundled_gguf_file(default_server):
    info = default_server.client.get("/info").json()

    assert info["prompt_template"] == TEMPLATE_NAME
    assert (
        info["provenance"]["made_by"],
        info["provenance"]["gguf"],
        info["provenance"]["prompt_template_source"],
    ) == ("alpaca-convert", BUNDLED_FILE, "marker")


def test_the_converted_model_is_cached_and_reused(default_server):
    folder = default_server.cache / "SmolLM2-135M-Instruct"
    assert (folder / "config.json").is_file()
    assert (folder / "model.safetensors").is_file()
    # Readable by every user, as a model folder must be for a server running as another user
    # (the Docker image converts as root and serves as `alpaca`).
    assert folder.stat().st_mode & 0o777 == 0o755
    files = [path for path in folder.rglob("*") if path.is_file()]
    assert files and all(path.stat().st_mode & 0o777 == 0o644 for path in files)
    result = subprocess.run(
        [sys.executable, "-m", "alpaca_serve.recover.convert", "--out", str(folder)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0
    assert "already converted" in result.stdout


def test_an_answer_never_runs_on_into_a_new_instruction(default_server):
    """Given a few-shot prompt, the model goes on to write another `### Instruction:` block."""
    shots = (
        format_prompt("What is the capital of Italy?") + " The capital of Italy is Rome.\n\n"
        "### Instruction:\nWhat is the capital of Spain?\n\n### Response: The capital of Spain "
        "is Madrid.\n\n### Instruction:\nWhat is the capital of France?\n\n### Response:"
    )
    answer = default_server.client.post(
        "/generate", json={"prompt": shots, "temperature": 0, "max_new_tokens": 100}
    ).json()
    assert answer["finish_reason"] == "stop"
    assert "Paris" in answer["text"]
    assert "###" not in answer["text"]
    assert answer["usage"]["completion_tokens"] < 100


def test_streamed_non_ascii_text_never_splits_a_character(default_server):
    body = {
        "instruction": 'Translate "thank you very much" into Japanese.',
        "temperature": 0,
        "max_new_tokens": 60,
    }
    whole = default_server.client.post("/generate", json=body).json()["text"]
    _, events = stream_events(default_server.client, body)
    pieces = [event["text"] for event in events[:-2]]
    assert any(ord(char) > 0x3000 for char in whole), whole
    assert "\ufffd" not in whole
    assert all("\ufffd" not in piece for piece in pieces), pieces
    assert "".join(pieces) == whole
