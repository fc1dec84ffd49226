"""`python -m benchmarks.smoothness`: the gaps between visible chunks it derives from streamed
chunks, the requests it sends each server, and its client against a small streaming server (the
servers themselves are started as benchmarks/peer.py starts them, tested there)."""

from __future__ import annotations

import asyncio
import json

import pytest

from alpaca_serve.core.prompts import SECTION_HEADERS
from benchmarks.smoothness import (
    Stream,
    build_parser,
    gap_figures,
    p99_ratio,
    request_bodies,
    stream_prompts,
    visible_gaps_ms,
)
from benchmarks.sse import event_text


def test_gaps_are_measured_between_chunks_with_visible_text_only():
    chunks = [(0.0, "\n"), (1.0, "The"), (1.04, " sky"), (1.08, "\n\n"), (1.2, "It"), (1.3, " ")]
    assert visible_gaps_ms(chunks) == pytest.approx([40.0, 160.0])
    assert visible_gaps_ms([(0.0, "\n"), (0.5, "Hi")]) == []


def test_the_percentiles_pool_every_streams_gaps_and_the_ratio_is_ours_over_vllms():
    steady = Stream(0.0, [(k * 0.04, "word") for k in range(101)])  # 100 gaps of 40 ms
    held = Stream(0.0, [(0.0, "a"), (0.2, "b")])  # one gap of 200 ms

    figures = gap_figures([steady, held])

    assert figures["gaps"] == 101
    assert figures["p50_ms"] == pytest.approx(40.0)
    assert figures["p99_ms"] == pytest.approx(40.0)  # one long gap in 101 is not the p99
    assert gap_figures([held])["p99_ms"] == pytest.approx(200.0)
    assert p99_ratio({"p99_ms": 60.0}, {"p99_ms": 40.0}) == pytest.approx(1.5)


def test_in_normal_use_only_vllm_is_told_the_headers_and_neither_gets_min_tokens():
    bodies = request_bodies(128, list(SECTION_HEADERS))

    assert bodies["vllm"]["stop"] == list(SECTION_HEADERS)
    assert "stop" not in bodies["ours"]  # alpaca-serve matches the headers itself
    for body in bodies.values():
        assert body["max_tokens"] == 128 and body["temperature"] == 0.0
        assert "min_tokens" not in body


def test_pinned_length_sends_peers_requests_to_both():
    bodies = request_bodies(64, list(SECTION_HEADERS), pinned=True)

    assert bodies["ours"] == bodies["vllm"]
    assert bodies["ours"]["min_tokens"] == bodies["ours"]["max_tokens"] == 64
    assert "stop" not in bodies["vllm"]


def test_text_is_read_from_both_routes_event_shapes():
    assert event_text({"id": "gen-1", "text": " sky"}) == " sky"
    assert event_text({"choices": [{"index": 0, "text": " sky"}]}) == " sky"
    assert event_text({"choices": [], "usage": {"completion_tokens": 3}}) == ""


def test_the_client_records_each_streamed_chunk_as_it_arrives():
    from aiohttp import ClientSession, web

    async def completions(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for text in ["\n", body["prompt"], "\n", " again"]:
            event = {"choices": [{"index": 0, "text": text}]}
            await response.write(f"data: {json.dumps(event)}\n\n".encode())
            await asyncio.sleep(0.05)
        await response.write(b"data: [DONE]\n\n")
        return response

    async def run() -> list[Stream]:
        app = web.Application()
        app.router.add_post("/v1/completions", completions)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        try:
            async with ClientSession() as session:
                url = f"http://127.0.0.1:{port}"
                return await stream_prompts(
                    session, url, "/v1/completions", ["one", "two", "three"], {}, clients=2
                )
        finally:
            await runner.cleanup()

    streams = asyncio.run(run())

    assert [stream.text for stream in streams] == [
        f"\n{p}\n again" for p in ("one", "two", "three")
    ]
    for stream in streams:
        assert stream.error is None
        (gap,) = visible_gaps_ms(stream.chunks)  # the prompt's echo, then " again"
        assert 80 <= gap < 1000  # two steps of 50 ms: the blank chunk between is not counted


def test_help_says_what_is_compared(capsys):
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["--help"])

    assert exited.value.code == 0
    out = capsys.readouterr().out
    for words in ("vLLM's own server", "--clients", "--pinned-length", "--trace"):
        assert words in out
