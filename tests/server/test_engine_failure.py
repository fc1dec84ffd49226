"""Readiness follows the engine: 503 while it loads, 200 once warm; when the engine dies, 503 and
the process exits non-zero."""

from __future__ import annotations

import httpx
import psutil
import pytest

from tests.support import ServerProcess, tiny_server_env, wait_for

pytestmark = pytest.mark.slow


def test_readiness_tracks_loading_and_engine_death(tiny_model_dir, tmp_path):
    server = ServerProcess(tiny_server_env(tiny_model_dir), tmp_path / "server.log")
    try:
        # While the model loads, the process is alive but not ready, and refuses generation.
        def health_answers():
            try:
                return server.client.get("/health").status_code == 200
            except httpx.TransportError:
                return False

        assert wait_for(health_answers, 120, 0.1)
        loading = server.client.get("/ready")
        assert loading.status_code == 503
        assert loading.json()["error"]["type"] == "engine_unavailable"
        refused = server.client.post("/generate", json={"instruction": "hi"})
        assert refused.status_code == 503
        assert "loading" in refused.json()["error"]["message"]

        server.wait_until_ready()
        assert (
            server.client.post(
                "/generate", json={"instruction": "hi", "max_new_tokens": 2}
            ).status_code
            == 200
        )

        # Kill the engine's processes (not the HTTP server).
        engine_processes = psutil.Process(server.process.pid).children(recursive=True)
        assert engine_processes
        for process in engine_processes:
            process.kill()

        assert wait_for(lambda: server.client.get("/ready").status_code == 503, 30, 0.05)
        dead = server.client.post("/generate", json={"instruction": "hi", "max_new_tokens": 2})
        assert dead.status_code == 503
        assert dead.json()["error"]["type"] == "engine_unavailable"
        # Then the process stops with an error, for a supervisor to restart it.
        assert server.process.wait(30) != 0
        assert "the engine process died" in server.log_text()
    finally:
        server.stop()
