"""The server's feedback store, seen through its HTTP API: where a comparison's answers and
votes live.

Usage:
    store = FeedbackStoreClient("http://127.0.0.1:8000", api_key=None)
    ids = store.import_answers("text-davinci-003", [{"instruction", "input", "output"}, ...])
    store.vote([left_id, right_id], winner=left_id, session_id="alice", voter="human")
    for row in store.comparisons(): ...   # every pairwise vote, oldest first

Answers from elsewhere (another model's file) are imported with `POST /generations/import`, so
they get generation ids like this server's own; votes go to `POST /feedback` and are read back
from `GET /feedback/comparisons`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from evaluation.answers import EvaluationError, describe_error

IMPORT_BATCH = 200  # answers per import request, well under the server's body limit


class FeedbackStoreClient:
    def __init__(self, server_url: str, api_key: str | None = None, timeout_s: float = 60.0):
        import httpx

        self.server_url = server_url.rstrip("/")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(base_url=self.server_url, headers=headers,
                                    timeout=timeout_s, trust_env=False)

    def import_answers(self, model: str, answers: list[dict[str, Any]]) -> list[str]:
        """Store `answers` (each exactly instruction, input, output) under `model`; their new
        generation ids, in order."""
        ids: list[str] = []
        for start in range(0, len(answers), IMPORT_BATCH):
            batch = answers[start:start + IMPORT_BATCH]
            body = self._request("POST", "/generations/import",
                                 json={"model": model, "answers": batch})
            ids += body["generation_ids"]
        return ids

    def vote(self, generation_ids: list[str], winner: str, session_id: str,
             voter: str = "human") -> bool:
        """Record a pairwise vote (`winner`: one of the ids, "tie" or "both_bad"); True when it
        is new, False when it replaced this session's earlier vote on the pair."""
        body = self._request("POST", "/feedback", json={
            "generation_ids": generation_ids, "winner": winner, "session_id": session_id,
            "voter": voter,
        })
        return bool(body["created"])

    def check(self) -> None:
        """Raise EvaluationError unless the store answers (reachable, key accepted)."""
        self._request("GET", "/feedback/comparisons", params={"limit": 1})

    def comparisons(self) -> Iterator[dict[str, Any]]:
        """Every pairwise vote in the store: id, generation_ids (sorted), winner, voter,
        session_id, created_at, updated_at."""
        after: int | None = 0
        while after is not None:
            page = self._request("GET", "/feedback/comparisons", params={"after": after})
            yield from page["comparisons"]
            after = page["next_after"]

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> FeedbackStoreClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        import httpx

        try:
            response = self._client.request(method, path, **kwargs)
        except httpx.TransportError as err:
            raise EvaluationError(
                f"cannot reach {self.server_url} ({type(err).__name__})"
            ) from err
        if response.status_code not in (200, 201):
            raise EvaluationError(f"{method} {path}: {describe_error(response)}")
        return response.json()
