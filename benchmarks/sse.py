"""The benchmarks' reading of a streamed answer: server-sent events, as /generate and
/v1/completions (this server's, vLLM's, llama.cpp's) send them.

Usage:
    async with session.post(url, json=body) as response:
        async for event in sse_events(response):   # each `data: {json}` event, parsed
            text = event_text(event)
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator


async def sse_events(response) -> AsyncIterator[dict]:
    """The JSON events of an aiohttp response's event stream, until `data: [DONE]` (or its end)."""
    async for raw in response.content:
        line = raw.decode().strip()
        if not line.startswith("data:"):
            continue
        data = line[len("data:") :].strip()
        if data == "[DONE]":
            return
        yield json.loads(data)


def event_text(event: dict) -> str:
    """The text of one streamed event: `/generate`'s `text`, or `/v1/completions`' choices'."""
    if "choices" in event:
        return "".join(choice.get("text") or "" for choice in event["choices"])
    return event.get("text") or ""
