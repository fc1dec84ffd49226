"""Shared fixtures: a tiny LLaMA built once, and real server processes running it.

Each server is a real `alpaca-serve` process with its own vLLM engine; a test session starts one
for the tiny model and shares it, because loading an engine takes tens of seconds.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY_CONTEXT = 1024
TINY_MAX_NEW_TOKENS_LIMIT = 512
TINY_DEFAULT_MAX_NEW_TOKENS = 32
TINY_MAX_CONCURRENT = 4
TINY_MAX_QUEUE = 8


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    """An `alpaca-serve` child process on a free port, with its log in a file."""

    def __init__(self, env: dict[str, str], log_path: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        full_env = {**os.environ, **env, "ALPACA_PORT": str(self.port), "ALPACA_HOST": "127.0.0.1"}
        full_env.setdefault("ALPACA_CPU_KV_CACHE_GIB", "1")
        # Generations and feedback go to a SQLite file beside the log unless the test says.
        self.data_dir = log_path.parent / f"data-{self.port}"
        full_env.setdefault("ALPACA_DATA_DIR", str(self.data_dir))
        self._log = open(log_path, "wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "server.main"],
            env=full_env, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so kill_hard takes the engine too
        )
        self.client = httpx.Client(base_url=self.url, timeout=120)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_until_ready(self, timeout: float = 600) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"server exited with {self.process.returncode}:\n{self.log_text()[-5000:]}"
                )
            try:
                if self.client.get("/ready").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"server not ready after {timeout}s:\n{self.log_text()[-5000:]}")

    def kill_hard(self) -> None:
        """SIGKILL the server and its engine processes: no shutdown code runs."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        self.client.close()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


def build_tiny_llama(out_dir: Path) -> Path:
    """A randomly initialised 2-layer LLaMA with the bundled model's tokenizer (head_dim 64)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from recover.convert import find_bundled_gguf

    gguf = find_bundled_gguf()
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=TINY_CONTEXT,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(torch.float32)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_model_dir))


def tiny_server_env(model_dir: Path) -> dict[str, str]:
    return {
        "ALPACA_MODEL": str(model_dir),
        "ALPACA_MAX_MODEL_LEN": str(TINY_CONTEXT),
        "ALPACA_MAX_NEW_TOKENS_LIMIT": str(TINY_MAX_NEW_TOKENS_LIMIT),
        "ALPACA_DEFAULT_MAX_NEW_TOKENS": str(TINY_DEFAULT_MAX_NEW_TOKENS),
        "ALPACA_MAX_CONCURRENT": str(TINY_MAX_CONCURRENT),
        "ALPACA_MAX_QUEUE": str(TINY_MAX_QUEUE),
    }


@pytest.fixture(scope="session")
def tiny_server(tiny_model_dir, tmp_path_factory):
    """One server on the tiny model for the whole session."""
    log = tmp_path_factory.mktemp("logs") / "tiny-server.log"
    server = ServerProcess(tiny_server_env(tiny_model_dir), log)
    try:
        server.wait_until_ready()
        yield server
    finally:
        server.stop()


@pytest.fixture
def client(tiny_server) -> httpx.Client:
    return tiny_server.client


def read_metrics(client: httpx.Client) -> dict[str, float]:
    """`/metrics` as {"name{label=value,...}": value}, labels sorted, model_name left out."""
    from prometheus_client.parser import text_string_to_metric_families

    response = client.get("/metrics")
    assert response.status_code == 200
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            labels = {k: v for k, v in sample.labels.items() if k != "model_name"}
            key = sample.name
            if labels:
                key += "{" + ",".join(f"{k}={labels[k]}" for k in sorted(labels)) + "}"
            values[key] = sample.value
    return values


def stream_events(client: httpx.Client, body: dict) -> tuple[httpx.Response, list]:
    """POST a streaming request; returns the response and its events (JSON, or "[DONE]")."""
    events: list = []
    with client.stream("POST", "/generate", json={**body, "stream": True}) as response:
        for line in response.iter_lines():
            if not line:
                continue
            assert line.startswith("data: "), line
            data = line[len("data: "):]
            events.append(data if data == "[DONE]" else json.loads(data))
    return response, events


def wait_for(predicate, timeout: float = 30, interval: float = 0.2):
    """Poll until `predicate()` is truthy; returns its value or fails with the last one."""
    deadline = time.monotonic() + timeout
    value = predicate()
    while not value and time.monotonic() < deadline:
        time.sleep(interval)
        value = predicate()
    return value
