"""Acknowledged feedback survives `kill -9`; a normal shutdown writes every generation."""

from __future__ import annotations

import pytest

from alpaca_serve.feedback import default_database_url, open_store
from tests.support import ServerProcess, tiny_server_env

pytestmark = pytest.mark.slow


def test_generations_are_all_written_on_a_normal_shutdown(tiny_model_dir, tmp_path):
    server = ServerProcess(tiny_server_env(tiny_model_dir), tmp_path / "server.log")
    try:
        server.wait_until_ready()
        ids = [
            server.client.post(
                "/generate", json={"instruction": f"Count to {n}.", "max_new_tokens": 2}
            ).json()["id"]
            for n in range(20)
        ]
    finally:
        server.stop()  # SIGTERM: a normal shutdown
    assert "Application shutdown complete" in server.log_text()
    with open_store(default_database_url(server.data_dir)) as store:
        assert store.generation_exists(ids) == set(ids)


def test_feedback_acknowledged_with_201_survives_kill_9(tiny_model_dir, tmp_path):
    server = ServerProcess(tiny_server_env(tiny_model_dir), tmp_path / "server.log")
    try:
        server.wait_until_ready()
        generation_id = server.client.post(
            "/generate", json={"instruction": "Rate me.", "max_new_tokens": 2}
        ).json()["id"]
        response = server.client.post(
            "/feedback",
            json={
                "generation_id": generation_id,
                "rating": "down",
                "comment": "kept",
                "flag": "unhelpful",
            },
        )
        assert response.status_code == 201
        server.kill_hard()  # right after the response: no shutdown code runs
    finally:
        server.stop()
    with open_store(default_database_url(server.data_dir)) as store:
        rows = [row for row in store.export_rows() if row["generation_id"] == generation_id]
    assert [(r["rating"], r["comment"], r["flag"]) for r in rows] == [("down", "kept", "unhelpful")]
    assert rows[0]["instruction"] == "Rate me."
