"""Deadlines and shutdown: requests past the time limit are cut; SIGTERM drains, then exits 0.

These tests hold however fast the engine is, on 2 busy CPU cores or on a GPU a hundred times
faster, because none of them waits for a generation to be slow. Where a request has to outlast a
limit, the engine's processes are paused (SIGSTOP) while the HTTP process, whose clocks enforce
the time limit and the drain, runs on: a paused engine makes no token, so the request surely
outlasts any limit. The pause is lifted (SIGCONT) before each test ends.
"""

from __future__ import annotations

import json
import signal
import threading
import time

import httpx
import psutil
import pytest

from tests.support import ServerProcess, read_metrics, tiny_server_env, wait_for

pytestmark = pytest.mark.slow

REQUEST_TIMEOUT_S = 8.0  # each time-limit test waits this long once
DRAIN_TIMEOUT_S = 3.0  # ample for the short stream's last 3 tokens, even on a busy 2-core machine
LONG = 900  # tokens: far more than the engine makes between two steps of a test (context 1024)


def lifecycle_server(tiny_model_dir, folder, request_timeout_s: float):
    env = {
        **tiny_server_env(tiny_model_dir),
        "ALPACA_MAX_NEW_TOKENS_LIMIT": str(LONG),
        "ALPACA_REQUEST_TIMEOUT_S": str(request_timeout_s),
        "ALPACA_DRAIN_TIMEOUT_S": str(DRAIN_TIMEOUT_S),
    }
    process = ServerProcess(env, folder / "server.log")
    try:
        process.wait_until_ready()
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    yield from lifecycle_server(
        tiny_model_dir, tmp_path_factory.mktemp("lifecycle"), REQUEST_TIMEOUT_S
    )


@pytest.fixture
def draining_server(tiny_model_dir, tmp_path):
    """A server of its own (the test ends it), whose time limit cannot run out before the drain
    does however long its streams take to start on a busy machine: only the drain cuts them."""
    yield from lifecycle_server(tiny_model_dir, tmp_path, request_timeout_s=3600)


def engine_idle(client: httpx.Client) -> bool:
    metrics = read_metrics(client)
    return metrics["alpaca_num_requests_running"] == metrics["alpaca_num_requests_waiting"] == 0


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
    with server.engine_paused():  # 4 tokens, which take milliseconds, will not come in time
        start = time.monotonic()
        response = server.client.post("/generate", json={"instruction": "Go.", "max_new_tokens": 4})
        elapsed = time.monotonic() - start

    assert response.status_code == 504, response.text
    assert response.json()["error"]["type"] == "timeout"
    # Cut at the limit (counted from the request's arrival), not before and not long after.
    assert REQUEST_TIMEOUT_S - 0.1 <= elapsed < REQUEST_TIMEOUT_S + 5, elapsed
    assert wait_for(lambda: engine_idle(server.client), 10), "the request stayed in the engine"


def test_a_stream_past_the_time_limit_ends_with_an_error_event_then_done(server):
    events, thread, first = stream_in_background(
        server, {"instruction": "Go.", "max_new_tokens": LONG}
    )
    assert first.wait(30), events
    # The stream is under way. Pausing the engine now leaves it far from its LONG tokens: making
    # them in the moment between the first event and the pause would take 900 engine steps.
    with server.engine_paused():
        thread.join(REQUEST_TIMEOUT_S + 10)

    assert not thread.is_alive(), events[-3:]
    assert events[-1] == "[DONE]", events[-3:]
    assert events[-2]["error"]["type"] == "timeout", events[-3:]
    assert events[:-2] and all("text" in event for event in events[:-2])
    # The cut request left the engine. (The running gauge is always exposed, so only its value
    # says anything.)
    assert wait_for(lambda: read_metrics(server.client)["alpaca_num_requests_running"] == 0, 10)
    assert engine_idle(server.client)


def test_sigterm_lets_an_open_stream_finish_cuts_one_past_the_drain_then_exits_0(
    draining_server,
):
    server = draining_server
    engine_processes = psutil.Process(server.process.pid).children(recursive=True)
    assert engine_processes
    long, long_thread, long_first = stream_in_background(
        server, {"instruction": "Long.", "max_new_tokens": LONG}
    )
    assert long_first.wait(30), long
    short, short_thread, short_first = stream_in_background(
        server, {"instruction": "Short.", "max_new_tokens": 4}
    )
    assert short_first.wait(30), short

    server.process.send_signal(signal.SIGTERM)
    # While draining, the server still answers: not ready, and no new work.
    assert server.client.get("/ready").status_code == 503
    refused = server.client.post("/generate", json={"instruction": "late", "max_new_tokens": 2})
    assert refused.status_code == 503
    assert refused.json()["error"]["type"] == "shutting_down"

    # The short stream, open at SIGTERM, finishes normally within the drain.
    short_thread.join(DRAIN_TIMEOUT_S + 10)
    assert short[-1] == "[DONE]", short[-3:]
    assert short[-2].get("finish_reason") in ("length", "eos", "stop"), short[-3:]
    # The long one ran in the same engine steps (vLLM batches them), so it has only a few more
    # tokens than the short one: far from LONG. With the engine paused it stays open, however
    # fast the machine, until the drain runs out and cuts it.
    with server.engine_paused():
        long_thread.join(DRAIN_TIMEOUT_S + 10)
    assert long[-1] == "[DONE]", long[-3:]
    assert long[-2]["error"]["type"] == "shutting_down", long[-3:]
    assert server.process.wait(60) == 0
    # The engine's processes are gone too (helpers such as multiprocessing's resource tracker
    # notice their parent's exit within moments).
    _, alive = psutil.wait_procs(engine_processes, timeout=15)
    assert not alive
