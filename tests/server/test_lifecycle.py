"""Deadlines and shutdown: requests past the time limit are cut; SIGTERM drains, then exits 0."""

from __future__ import annotations

import json
import signal
import threading
import time

import httpx
import psutil
import pytest

from tests.conftest import ServerProcess, tiny_server_env, wait_for

pytestmark = pytest.mark.slow

REQUEST_TIMEOUT_S = 2.5  # less than LONG tokens take on this CPU (<= ~300 tokens/s), yet room
# enough for a short request beside a long one on a busy 2-core machine
DRAIN_TIMEOUT_S = 0.3
LONG = 900  # tokens: several seconds on the tiny model (its context is 1024)


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    env = {
        **tiny_server_env(tiny_model_dir),
        "ALPACA_MAX_NEW_TOKENS_LIMIT": str(LONG),
        "ALPACA_REQUEST_TIMEOUT_S": str(REQUEST_TIMEOUT_S),
        "ALPACA_DRAIN_TIMEOUT_S": str(DRAIN_TIMEOUT_S),
    }
    process = ServerProcess(env, tmp_path_factory.mktemp("lifecycle") / "server.log")
    try:
        process.wait_until_ready()
        yield process
    finally:
        process.stop()


def stream_in_background(server, body):
    """Start a streamed request in a thread; returns (events list, thread, first-event flag)."""
    events: list = []
    first = threading.Event()

    def run():
        with httpx.Client(base_url=server.url, timeout=60) as client:
            with client.stream("POST", "/generate", json={**body, "stream": True}) as response:
                if response.status_code != 200:  # kept for the failure message
                    events.append({"status": response.status_code, "body": response.read()})
                for line in response.iter_lines():
                    if line.startswith("data: "):
                        data = line[6:]
                        events.append(data if data == "[DONE]" else json.loads(data))
                        first.set()

    thread = threading.Thread(target=run)
    thread.start()
    return events, thread, first


def test_a_request_past_the_time_limit_is_cut_with_504(server):
    start = time.monotonic()
    response = server.client.post("/generate", json={"instruction": "Go.", "max_new_tokens": LONG})
    assert response.status_code == 504
    assert response.json()["error"]["type"] == "timeout"
    assert time.monotonic() - start < REQUEST_TIMEOUT_S + 2


def test_a_stream_past_the_time_limit_ends_with_an_error_event_then_done(server):
    events, thread, _ = stream_in_background(server, {"instruction": "Go.", "max_new_tokens": LONG})
    thread.join(30)
    assert events[-1] == "[DONE]"
    assert events[-2]["error"]["type"] == "timeout"
    assert all("text" in event for event in events[:-2])
    assert wait_for(lambda: "alpaca_num_requests_running" in server.client.get("/metrics").text)


def test_sigterm_drains_open_streams_then_exits_0_leaving_no_process(server):
    engine_processes = psutil.Process(server.process.pid).children(recursive=True)
    assert engine_processes
    short, short_thread, short_first = stream_in_background(
        server, {"instruction": "Short.", "max_new_tokens": 4}
    )
    long, long_thread, long_first = stream_in_background(
        server, {"instruction": "Long.", "max_new_tokens": LONG}
    )
    assert short_first.wait(30) and long_first.wait(30), (short, long)

    server.process.send_signal(signal.SIGTERM)
    # While draining, the server still answers: not ready, and no new work.
    assert server.client.get("/ready").status_code == 503
    refused = server.client.post("/generate", json={"instruction": "late", "max_new_tokens": 2})
    assert refused.status_code == 503
    assert refused.json()["error"]["type"] == "shutting_down"

    short_thread.join(30)
    long_thread.join(30)
    assert server.process.wait(60) == 0
    # Every open stream ended with a final event, then [DONE]: the short one normally (unless
    # the machine is too slow even for that), the long one cut when the drain ran out (or at
    # its own time limit, if that came first on a slow machine).
    assert short[-1] == "[DONE]"
    assert short[-2].get("finish_reason") in ("length", "eos", "stop") or (
        short[-2]["error"]["type"] == "shutting_down")
    assert long[-1] == "[DONE]"
    assert long[-2]["error"]["type"] in ("shutting_down", "timeout")
    # The engine's processes are gone too (helpers such as multiprocessing's resource tracker
    # notice their parent's exit within moments).
    _, alive = psutil.wait_procs(engine_processes, timeout=15)
    assert not alive
