"""Feedback that one script cannot stuff: an answer asked under a feedback session takes
feedback from that session only; feedback is limited per session and per client (429 with
Retry-After; the demo's visitors counted one by one, admins not limited); a session still has
one counted vote per pair. On SQLite and PostgreSQL."""

from __future__ import annotations

import httpx
import pytest

from alpaca_serve.server.feedback_limits import FeedbackLimits
from tests.support import ScriptedServer, read_metrics

USER, ADMIN = "student-key", "teacher-key"
PER_SESSION, PER_CLIENT = 3, 8


class CapturedMount:
    """Stands in for the demo's mount (no Gradio here) and keeps the key it is handed."""

    def __call__(self, app, *, path, server_url, api_key, login):
        self.api_key = api_key
        return app


@pytest.fixture
def server(database_url, tmp_path):
    mount = CapturedMount()
    started = ScriptedServer(
        {
            "ALPACA_DATABASE_URL": database_url,
            "ALPACA_API_KEYS": USER,
            "ALPACA_ADMIN_KEYS": ADMIN,
            "ALPACA_FEEDBACK_PER_SESSION_PER_MINUTE": str(PER_SESSION),
            "ALPACA_FEEDBACK_PER_CLIENT_PER_MINUTE": str(PER_CLIENT),
            "ALPACA_UI": "true",
        },
        tmp_path,
        ui=mount,
    )
    started.wait_until_ready()
    started.demo_key = mount.api_key
    try:
        yield started
    finally:
        started.stop()


def headers(key: str, session: str | None = None, **more: str) -> dict[str, str]:
    sent = {"Authorization": f"Bearer {key}", **more}
    if session is not None:
        sent["X-Session-Id"] = session
    return sent


def answer(server, key: str = USER, session: str | None = None) -> str:
    response = server.client.post(
        "/generate",
        json={"instruction": "Name a colour.", "max_new_tokens": 2},
        headers=headers(key, session),
    )
    assert response.status_code == 200, response.text
    return response.json()["id"]


def rate(server, generation_id: str, session: str | None, key: str = USER, **more: str):
    body = {"generation_id": generation_id, "rating": "up"}
    if session is not None:
        body["session_id"] = session
    return server.client.post("/feedback", json=body, headers=headers(key, **more))


def test_an_answer_asked_under_a_session_takes_feedback_from_that_session_only(server):
    shown = answer(server, session="ui-alice")
    other = answer(server, session="ui-alice")

    for intruder in ("ui-mallory", None):
        refused = rate(server, shown, intruder)
        assert refused.status_code == 403, refused.text
        assert refused.json()["error"]["param"] == "generation_id"
        assert "shown to another feedback session" in refused.json()["error"]["message"]
    vote = {"generation_ids": [shown, other], "winner": shown, "session_id": "ui-mallory"}
    assert server.client.post("/feedback", json=vote, headers=headers(USER)).status_code == 403

    assert rate(server, shown, "ui-alice").status_code == 201
    vote["session_id"] = "ui-alice"
    assert server.client.post("/feedback", json=vote, headers=headers(USER)).status_code == 201
    # One counted vote per session and pair: a second one replaces the first.
    again = server.client.post("/feedback", json={**vote, "winner": "tie"}, headers=headers(USER))
    assert again.status_code == 200 and again.json()["created"] is False
    summary = server.client.get("/feedback/summary", headers=headers(ADMIN)).json()
    assert summary["models"][server.settings.served_model_name]["up"] == 1
    assert sum(p["ties"] + p["wins_a"] + p["wins_b"] for p in summary["pairwise"]) == 1
    stored = server.runtime.store.generations_by_id([shown])[shown]
    assert stored["session_id"] == "ui-alice"


def test_answers_asked_without_a_session_and_imported_ones_take_any_sessions_feedback(server):
    plain = answer(server)
    imported = server.client.post(
        "/generations/import",
        json={"model": "elsewhere", "answers": [{"instruction": "Say hi.", "output": "Hi."}]},
        headers=headers(ADMIN),
    ).json()["generation_ids"][0]

    assert rate(server, plain, "cli-alice").status_code == 201
    assert rate(server, imported, "cli-bob").status_code == 201
    assert rate(server, imported, None).status_code == 201


def test_one_session_past_its_limit_gets_429_with_retry_after(server):
    ids = [answer(server) for _ in range(PER_SESSION + 1)]

    statuses = [rate(server, gid, "ui-busy").status_code for gid in ids]

    assert statuses == [201] * PER_SESSION + [429]
    refused = rate(server, ids[0], "ui-busy")
    assert refused.status_code == 429
    assert int(refused.headers["Retry-After"]) >= 1
    error = refused.json()["error"]
    assert error["type"] == "rate_limited"
    assert "ALPACA_FEEDBACK_PER_SESSION_PER_MINUTE" in error["message"]
    assert rate(server, ids[0], "ui-calm").status_code == 201  # another session is not held up


def test_one_client_cannot_stuff_by_making_up_sessions(server):
    target = answer(server)

    statuses = [rate(server, target, f"made-up-{n}").status_code for n in range(PER_CLIENT + 2)]

    assert statuses == [201] * PER_CLIENT + [429, 429]
    refused = rate(server, target, "made-up-late")
    assert "ALPACA_FEEDBACK_PER_CLIENT_PER_MINUTE" in refused.json()["error"]["message"]
    with httpx.Client(base_url=server.url, headers=headers(ADMIN)) as admin:
        metrics = read_metrics(admin)
    assert metrics["alpaca_feedback_refused_total{limit=client}"] >= 3
    # The votes that were let in count once each; those refused were never stored.
    summary = server.client.get("/feedback/summary", headers=headers(ADMIN)).json()
    assert summary["models"][server.settings.served_model_name]["up"] == PER_CLIENT


def test_the_demos_visitors_count_one_by_one_and_nobody_else_may_say_who_they_are(server):
    target = answer(server)
    demo = server.demo_key

    def from_visitor(address: str, n: int, key: str = demo) -> int:
        return rate(
            server, target, f"ui-{address}-{n}", key, **{"X-Forwarded-For": address}
        ).status_code

    first = [from_visitor("203.0.113.7", n) for n in range(PER_CLIENT + 1)]
    second = [from_visitor("198.51.100.9", n) for n in range(2)]
    assert first == [201] * PER_CLIENT + [429]
    assert second == [201, 201]  # another visitor of the same demo key
    # A user key's X-Forwarded-For is not believed: it is one client, whatever it claims.
    claimed = [from_visitor(f"192.0.2.{n}", n, key=USER) for n in range(PER_CLIENT + 1)]
    assert claimed == [201] * PER_CLIENT + [429]


def test_admin_keys_are_not_limited(server):
    target = answer(server)

    statuses = [rate(server, target, f"judge-{n}", ADMIN).status_code for n in range(12)]

    assert statuses == [201] * 12


def test_a_refusal_spends_neither_the_sessions_nor_the_clients_allowance():
    limits = FeedbackLimits(per_session=2, per_client=3)
    assert limits.take("s", "c", now=0) is None
    assert limits.take("s", "c", now=0) is None
    assert limits.take("s", "c", now=0)[0] == "session"  # the session is spent, not the client
    assert limits.take("t", "c", now=0) is None  # the client had one left
    which, wait_s = limits.take("u", "c", now=0)
    assert which == "client" and wait_s == pytest.approx(20.0)  # 3 a minute: one every 20 s
    assert limits.take("u", "c", now=20) is None  # refilled
    assert FeedbackLimits(0, 0).take("s", "c") is None  # 0: no limit
