"""Clients that speak OpenAI, against the server on both layers: the `openai` SDK's async client.
(LangChain, which is built on this SDK, is tested against the real engine in test_langchain.py.)"""

from __future__ import annotations

import asyncio

import openai
import pytest


@pytest.fixture
def model(server):
    return server.client.get("/v1/models").json()["data"][0]["id"]


def test_the_async_sdk_answers_and_streams(server, model):
    async def run() -> tuple[str, str, int]:
        async with openai.AsyncOpenAI(
            base_url=f"{server.url}/v1", api_key="x", max_retries=0
        ) as sdk:
            body = {
                "model": model,
                "messages": [{"role": "user", "content": "Name a bird."}],
                "max_tokens": 8,
                "temperature": 0,
            }
            whole, stream = await asyncio.gather(
                sdk.chat.completions.create(**body),
                sdk.chat.completions.create(
                    **body, stream=True, stream_options={"include_usage": True}
                ),
            )
            pieces, usage = [], None
            async for chunk in stream:
                if chunk.choices:
                    pieces.append(chunk.choices[0].delta.content or "")
                usage = chunk.usage or usage
            return whole.choices[0].message.content, "".join(pieces), usage.completion_tokens

    whole, streamed, tokens = asyncio.run(run())
    assert streamed == whole
    assert tokens >= 1
