"""Faults and timings the real engine cannot produce on demand, through HTTP, on the scripted
engine: an engine that dies mid-answer, generations past the time limit, a full queue, a client
that leaves. (tests/server/test_engine_failure.py and test_lifecycle.py show the same through
vLLM, as far as a real engine allows.)"""

from __future__ import annotations

import json
import socket
import threading

import httpx
import pytest

from alpaca_serve.core.prompts import SECTION_HEADERS
from tests.scripted_engine import long_answer
from tests.support import start_server, stream_events, wait_for


@pytest.fixture
def own_server(request, tmp_path):
    """A scripted server of this test's own, with the settings in the test's `env` mark."""
    mark = request.node.get_closest_marker("env")
    server = start_server(request, "scripted", mark.args[0] if mark else {}, tmp_path)
    try:
        yield server
    finally:
        server.stop()


def test_an_engine_that_dies_mid_stream_ends_it_with_an_error_event_and_turns_unready(own_server):
    engine = own_server.engine
    engine.delay_s = 0.02
    died = threading.Timer(0.2, engine.die)
    died.start()
    response, events = stream_events(
        own_server.client, {"instruction": "Talk.", "max_new_tokens": 200}
    )
    died.join()
    assert response.status_code == 200
    assert events[-1] == "[DONE]"
    assert events[-2]["error"]["type"] == "engine_unavailable"
    assert all("text" in event for event in events[:-2]) and events[:-2]

    assert own_server.client.get("/ready").status_code == 503
    refused = own_server.client.post("/generate", json={"instruction": "Again."})
    assert refused.status_code == 503
    assert refused.json()["error"]["type"] == "engine_unavailable"


@pytest.mark.env({"ALPACA_REQUEST_TIMEOUT_S": "0.3"})
def test_a_generation_past_the_time_limit_is_cut_with_504_and_a_stream_with_an_event(own_server):
    own_server.engine.delay_s = 0.05  # 100 tokens take 5 s, far past the limit
    body = {"instruction": "Go on.", "max_new_tokens": 100}
    response = own_server.client.post("/generate", json=body)
    assert response.status_code == 504
    assert response.json()["error"]["type"] == "timeout"

    _, events = stream_events(own_server.client, body)
    assert events[-1] == "[DONE]"
    assert events[-2]["error"]["type"] == "timeout"
    assert own_server.engine.aborted[-2:] == [response.headers["X-Request-Id"], events[0]["id"]]


@pytest.mark.env({"ALPACA_REQUEST_TIMEOUT_S": "0.5", "ALPACA_MAX_CONCURRENT": "1"})
def test_a_request_still_waiting_for_a_slot_at_the_time_limit_is_a_503_to_retry(own_server):
    # The request ahead is cut at its own time limit, but the engine takes a second to let it
    # go: the slot comes free after the waiting request's time limit.
    own_server.engine.delay_s = 0.05
    own_server.engine.abort_delay_s = 1.0
    holder = threading.Thread(
        target=own_server.client.post,
        args=("/generate",),
        kwargs={"json": {"instruction": "Hold.", "max_new_tokens": 100}},
    )
    holder.start()
    assert wait_for(lambda: own_server.engine.num_unfinished_requests() == 1, 5)
    with httpx.Client(base_url=own_server.url, timeout=30) as other:
        waited = other.post("/generate", json={"instruction": "Wait.", "max_new_tokens": 2})
    holder.join()
    assert waited.status_code == 503
    assert waited.headers["Retry-After"] == "1"
    error = waited.json()["error"]
    assert error["type"] == "overloaded"
    assert "no generation slot came free" in error["message"]


def test_a_client_that_leaves_mid_stream_has_its_request_aborted_in_the_engine(scripted_server):
    engine = scripted_server.engine
    engine.delay_s = 0.02
    try:
        body = json.dumps({"instruction": "Leave.", "max_new_tokens": 200, "stream": True})
        with socket.create_connection(("127.0.0.1", scripted_server.port)) as sock:
            sock.sendall(
                f"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n{body}".encode()
            )
            head = sock.recv(4096).decode()
        request_id = head.split("x-request-id: ", 1)[1].split("\r\n", 1)[0]
        assert wait_for(lambda: request_id in engine.aborted, 5)
        assert engine.num_unfinished_requests() == 0
    finally:
        engine.delay_s = 0.0


def test_the_answer_stops_before_any_template_header_as_well_matched_by_the_server(
    scripted_server,
):
    engine = scripted_server.engine
    for header in SECTION_HEADERS:
        engine.reply = lambda prompt, header=header: f"Fine. {header} More END"
        try:
            response = scripted_server.client.post(
                "/generate", json={"instruction": "Hi.", "stop": ["END"], "max_new_tokens": 9}
            )
        finally:
            engine.reply = long_answer
        assert (response.json()["text"], response.json()["finish_reason"]) == ("Fine.", "stop")
        [seen] = [r for r in engine.requests if r.request_id == response.headers["X-Request-Id"]]
        # The engine gets no stop strings: vLLM would hold back the end of every piece.
        assert seen.options.stop == ()
        assert seen.options.max_new_tokens == 9
