"""The demo's view of the server: its HTTP API only (the demo never imports `server`).

Usage:
    client = ServerClient("http://127.0.0.1:8000")
    async for event in client.stream_generate({"instruction": "Name a colour."}): ...
    await client.send_rating(generation_id, "up", session_id="ui-123")
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx


class DemoError(Exception):
    """A failure worded for the person using the demo."""


def explain(status: int, body: Any, server_url: str) -> str:
    """A readable sentence for an error answer of the server."""
    error = body.get("error", {}) if isinstance(body, dict) else {}
    message = error.get("message") or str(body)[:200]
    if error.get("type") == "content_filter":
        return f"This request was refused by the content filter ({error.get('category')})."
    if status == 422:
        return f"The request was not accepted: {message}"
    if status == 401:
        return "The server wants an API key the demo does not have (set ALPACA_DEMO_API_KEY)."
    if status == 429:
        return "The server is busy right now; please try again in a moment."
    if status == 503:
        return f"The model is not available right now ({message}); please try again shortly."
    if status == 404:
        return f"Not found: {message}"
    return f"The server at {server_url} answered {status}: {message}"


class ServerClient:
    def __init__(self, server_url: str, api_key: str | None = None, timeout_s: float = 300.0):
        self.server_url = server_url.rstrip("/")
        self.timeout = httpx.Timeout(timeout_s, connect=10.0)
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    def _client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.server_url, timeout=self.timeout, trust_env=False,
                                 headers=self.headers)

    async def stream_generate(self, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """The server's streamed events for `body`, as dicts; raises DemoError on failure."""
        try:
            async with self._client() as client:
                async with client.stream(
                    "POST", "/generate", json={**body, "stream": True}
                ) as response:
                    if response.status_code != 200:
                        await response.aread()
                        raise DemoError(explain(response.status_code, _json(response),
                                                self.server_url))
                    async for line in response.aiter_lines():
                        if not line.startswith("data: "):
                            continue
                        data = line[len("data: "):]
                        if data == "[DONE]":
                            return
                        event = json.loads(data)
                        if "error" in event:
                            raise DemoError(explain(503, event, self.server_url))
                        yield event
        except httpx.TransportError as err:
            raise DemoError(
                f"The server at {self.server_url} cannot be reached ({type(err).__name__}). "
                "Is it running?"
            ) from err

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        try:
            async with self._client() as client:
                response = await client.post(path, json=body)
        except httpx.TransportError as err:
            raise DemoError(f"The server at {self.server_url} cannot be reached.") from err
        if response.status_code not in (200, 201):
            raise DemoError(explain(response.status_code, _json(response), self.server_url))
        return response.json()

    async def send_rating(
        self, generation_id: str, rating: str, session_id: str, flag: str | None = None
    ) -> dict[str, Any]:
        body = {"generation_id": generation_id, "rating": rating, "session_id": session_id}
        if flag:
            body["flag"] = flag
        return await self._post("/feedback", body)

    async def send_comparison(
        self, generation_ids: list[str], winner: str, session_id: str
    ) -> dict[str, Any]:
        return await self._post(
            "/feedback",
            {"generation_ids": generation_ids, "winner": winner, "session_id": session_id},
        )


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return response.text
