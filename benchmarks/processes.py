"""Server processes the benchmarks start: `alpaca-serve`, or vLLM's own OpenAI server, each on a
free port with its log in a file, waited for until it answers its readiness route."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    """A server child process (its own process group) on a free port; its log in `folder`.
    `{port}` in its arguments and environment values stands for the port."""

    def __init__(self, argv: list[str], folder: Path, env: dict[str, str], ready_path: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.ready_path = ready_path
        folder.mkdir(parents=True, exist_ok=True)
        self.log_path = folder / "server.log"
        self._log = open(self.log_path, "wb")
        port = str(self.port)
        self.process = subprocess.Popen(
            [arg.replace("{port}", port) for arg in argv],
            env={
                **os.environ,
                "VLLM_LOGGING_LEVEL": "WARNING",
                **{name: value.replace("{port}", port) for name, value in env.items()},
            },
            cwd=ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    async def wait_until_ready(self, session, timeout_s: float) -> None:
        """Until `GET ready_path` answers 200; an exit or the time limit raises, with the log."""
        import aiohttp

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                tail = self.log_path.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"the server exited with {self.process.returncode}:\n{tail}")
            try:
                async with session.get(f"{self.url}{self.ready_path}") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.5)
        raise RuntimeError(f"the server was not ready after {timeout_s:g} s (log: {self.log_path})")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self._log.close()


def alpaca_server(
    model: Path, folder: Path, env: dict[str, str], kv_cache_gib: float
) -> ServerProcess:
    """`alpaca-serve` on `model`, with a data folder of its own and no UI."""
    return ServerProcess(
        [sys.executable, "-m", "alpaca_serve.serve"],
        folder,
        {
            "ALPACA_MODEL": str(model),
            "ALPACA_HOST": "127.0.0.1",
            "ALPACA_PORT": "{port}",
            "ALPACA_DATA_DIR": str(folder / "data"),
            "ALPACA_UI": "false",
            "ALPACA_CPU_KV_CACHE_GIB": str(kv_cache_gib),
            **env,
        },
        "/ready",
    )
