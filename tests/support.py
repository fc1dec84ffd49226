"""What the tests share besides fixtures: the repository root, the tiny model's limits, server
processes of both layers, and small helpers (waiting on a condition, reading metrics and streams,
running a command in-process). Test modules import from here; tests/conftest.py holds the
fixtures that build these once per session."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

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

    layer = "vllm"
    tokenizer = None  # set for the tiny model's servers: count_tokens needs it

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
            [sys.executable, "-m", "alpaca_serve.serve"],
            env=full_env,
            cwd=ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so kill_hard takes the engine too
        )
        self.client = httpx.Client(base_url=self.url, timeout=120)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text)["input_ids"])

    @contextlib.contextmanager
    def engine_paused(self):
        """The engine's processes (vLLM's engine core, where tokens are made) stopped with
        SIGSTOP, then continued; the HTTP process is not touched. A paused engine makes no
        tokens, so a request in flight stays in flight however fast the machine is."""
        import psutil

        processes = psutil.Process(self.process.pid).children(recursive=True)
        assert processes, "the engine runs in child processes of the server"
        for process in processes:
            process.suspend()
        try:
            yield
        finally:
            for process in processes:
                with contextlib.suppress(psutil.NoSuchProcess):
                    process.resume()

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


class ScriptedServer:
    """The server app in this process, on the scripted engine, over real HTTP on a free port.

    `env` holds `ALPACA_*` settings as for a real server process; `engine` is the ScriptedEngine,
    which a test may script (and must leave as it found it: see the `server` fixture).
    """

    layer = "scripted"

    def __init__(self, env: dict[str, str], folder: Path, ui=None):
        """`ui`: how the UI is mounted when ALPACA_UI is true (default: the demo, as
        alpaca-serve mounts it)."""
        import uvicorn

        from alpaca_serve.server.app import create_app
        from alpaca_serve.server.settings import ServerSettings
        from tests.scripted_engine import ScriptedEngine

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.data_dir = folder / f"data-{self.port}"
        full_env = {
            "ALPACA_DATA_DIR": str(self.data_dir),
            "ALPACA_UI": "false",
            # It stands in for the tiny model's server: the project's Alpaca model (served with
            # the default model) fits neither. A test that wants it sets this itself.
            "ALPACA_PROJECT_MODEL": "false",
            **env,
            "ALPACA_PORT": str(self.port),
            "ALPACA_HOST": "127.0.0.1",
        }
        with mock.patch.dict(os.environ, full_env):
            self.settings = ServerSettings()
        self.engine = ScriptedEngine(
            model_name=self.settings.served_model_name, max_model_len=self.settings.max_model_len
        )
        if self.settings.ui and ui is None:
            from alpaca_serve.demo.mount import mount_demo

            ui = mount_demo
        self.app = create_app(self.settings, engine=self.engine, ui=ui)
        config = uvicorn.Config(
            self.app,
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            access_log=False,
            lifespan="on",
        )
        self._uvicorn = uvicorn.Server(config)
        self._log = io.StringIO()
        self._log_handler = logging.StreamHandler(self._log)
        self._log_handler.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
        logging.getLogger("alpaca").addHandler(self._log_handler)
        logging.getLogger("alpaca").setLevel(logging.INFO)
        self._thread = threading.Thread(target=self._uvicorn.run, daemon=True)
        self._thread.start()
        self.client = httpx.Client(base_url=self.url, timeout=60)

    def log_text(self) -> str:
        """What the server's loggers wrote since it started (in this process, so other
        in-process servers' lines too)."""
        return self._log.getvalue()

    @property
    def runtime(self):
        return self.app.state.runtime

    def count_tokens(self, text: str) -> int:
        return len(self.engine.tokenize(text))

    def wait_until_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.client.get("/ready").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"the in-process server was not ready after {timeout}s")

    def stop(self) -> None:
        self.client.close()
        self._uvicorn.should_exit = True
        self._thread.join(30)
        logging.getLogger("alpaca").removeHandler(self._log_handler)


def build_tiny_llama(out_dir: Path) -> Path:
    """A randomly initialised 2-layer LLaMA with the bundled model's tokenizer (head_dim 64)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from alpaca_serve.recover.convert import find_bundled_gguf

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


def tiny_server_env(model_dir: Path) -> dict[str, str]:
    return {
        "ALPACA_MODEL": str(model_dir),
        "ALPACA_MAX_MODEL_LEN": str(TINY_CONTEXT),
        "ALPACA_MAX_NEW_TOKENS_LIMIT": str(TINY_MAX_NEW_TOKENS_LIMIT),
        "ALPACA_DEFAULT_MAX_NEW_TOKENS": str(TINY_DEFAULT_MAX_NEW_TOKENS),
        "ALPACA_MAX_CONCURRENT": str(TINY_MAX_CONCURRENT),
        "ALPACA_MAX_QUEUE": str(TINY_MAX_QUEUE),
        # A random model fills a JSON answer's budget with white space unless this forbids it.
        "ALPACA_STRUCTURED_OUTPUT_DISABLE_WHITESPACE": "true",
    }


# The two layers a test of HTTP behaviour runs on: the scripted engine in-process (fast) and a
# real server process with vLLM on the tiny model (slow).
LAYERS = [
    pytest.param("scripted", id="scripted"),
    pytest.param("vllm", id="vllm", marks=pytest.mark.slow),
]


# The tiny model's limits, which the fast layer's servers get too.
TINY_SETTINGS = {
    "ALPACA_MAX_MODEL_LEN": str(TINY_CONTEXT),
    "ALPACA_MAX_NEW_TOKENS_LIMIT": str(TINY_MAX_NEW_TOKENS_LIMIT),
    "ALPACA_DEFAULT_MAX_NEW_TOKENS": str(TINY_DEFAULT_MAX_NEW_TOKENS),
    "ALPACA_MAX_CONCURRENT": str(TINY_MAX_CONCURRENT),
    "ALPACA_MAX_QUEUE": str(TINY_MAX_QUEUE),
}


def start_server(request, layer: str, env: dict[str, str], folder: Path):
    """A ready server of `layer` with the tiny model's limits plus `env`; the caller stops it."""
    if layer == "scripted":
        server = ScriptedServer({**TINY_SETTINGS, **env}, folder)
    else:
        model_dir = request.getfixturevalue("tiny_model_dir")
        server = ServerProcess({**tiny_server_env(model_dir), **env}, folder / "server.log")
        server.tokenizer = request.getfixturevalue("tiny_tokenizer")
    try:
        server.wait_until_ready()
    except BaseException:
        server.stop()
        raise
    return server


def write_pad_row_adapter(trained: Path, folder: Path, vocab: int) -> None:
    """The adapter a [PAD]-adding LoRA run makes: it also holds a grown lm_head (measured to kill
    vLLM's engine core when handed over unchecked)."""
    import torch
    from safetensors.torch import load_file, save_file

    shutil.copytree(trained / "adapter", folder)
    tensors = load_file(folder / "adapter_model.safetensors")
    tensors["base_model.model.lm_head.weight"] = torch.zeros(vocab + 1, 128)
    save_file(tensors, folder / "adapter_model.safetensors")


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
            data = line[len("data: ") :]
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


@dataclass(frozen=True)
class CommandResult:
    """What a command run in this process returned and wrote (the fields of CompletedProcess)."""

    returncode: int
    stdout: str
    stderr: str


def run_command(main, argv: list[str], capsys) -> CommandResult:
    """Call a command's `main(argv)` in this process, as its console script would: argparse's
    own exits (--help, bad options) count as the status. A subprocess would cost half a second of
    interpreter start per call; the entry points themselves are run in tests/test_commands.py."""
    capsys.readouterr()
    try:
        status = main(argv)
    except SystemExit as exited:
        status = exited.code
    captured = capsys.readouterr()
    return CommandResult(status or 0, captured.out, captured.err)
