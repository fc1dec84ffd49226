"""Admission control: a flood gets answers and 429s, never a pile-up, and the server recovers."""

from __future__ import annotations

import asyncio
from collections import Counter

import httpx

from tests.support import TINY_MAX_CONCURRENT, TINY_MAX_QUEUE, read_metrics, wait_for

REJECTED = "alpaca_requests_total{outcome=rejected}"


async def _flood(url: str, count: int) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=count, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as client:
        return await asyncio.gather(
            *(
                client.post("/generate", json={"instruction": f"Flood {i}", "max_new_tokens": 16})
                for i in range(count)
            )
        )


def test_a_flood_gets_only_answers_and_429s_and_the_server_recovers(server):
    client = server.client
    if server.layer == "scripted":
        server.engine.delay_s = 0.01  # a generation lasts a while, as a real one does
    before = read_metrics(client)
    responses = asyncio.run(_flood(server.url, 200))

    statuses = Counter(response.status_code for response in responses)
    assert set(statuses) <= {200, 429}, statuses
    assert statuses[429] > 0, "nothing was refused: the cap did not hold"
    assert statuses[200] >= TINY_MAX_CONCURRENT + TINY_MAX_QUEUE
    refused = [response for response in responses if response.status_code == 429]
    assert all(response.headers["Retry-After"] == "1" for response in refused)
    error = refused[0].json()["error"]
    assert error["type"] == "overloaded"
    assert f"{TINY_MAX_CONCURRENT} generating" in error["message"]
    assert read_metrics(client)[REJECTED] == before[REJECTED] + statuses[429]

    # Once the flood is over the server holds nothing, and a new request is admitted at once.
    def idle():
        metrics = read_metrics(client)
        return (
            metrics["alpaca_num_requests_running"],
            metrics["alpaca_num_requests_waiting"],
            metrics["alpaca_admission_queue"],
        ) == (0, 0, 0)

    assert wait_for(idle, 30)
    answer = client.post("/generate", json={"instruction": "After the flood.", "max_new_tokens": 4})
    assert answer.status_code == 200
    assert read_metrics(client)[REJECTED] == before[REJECTED] + statuses[429]
