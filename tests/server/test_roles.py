"""Who may call what. Every route has a role (alpaca_serve/server/route_roles.py): open, user or
admin; with keys configured the server holds to it for a caller with no key (401 but on open
routes), a user key (403 on admin routes) and an admin key (everything), the demo's own calls
included. Keys come from the environment and from a keys file, which is read again when it
changes. Admin actions leave an audit line with the key's name, never the key, and a count."""

from __future__ import annotations

import asyncio
from contextlib import ExitStack, contextmanager

import pytest

from alpaca_serve.client.api import AsyncAlpacaClient
from alpaca_serve.server.route_roles import ROUTE_ROLES, route_keys
from tests.server.conftest import postgres_schema_url
from tests.support import ScriptedServer, read_metrics, wait_for

USER, ADMIN, FILE_ADMIN = "student-key-1", "teacher-key-1", "file-admin-key"
SESSION = "s-matrix"
# A body each route accepts (or refuses for its content, never for who sent it).
BODIES = {
    "POST /generate": {"instruction": "hi", "max_new_tokens": 2},
    "POST /v1/completions": {"model": "tiny", "prompt": "hi", "max_tokens": 2},
    "POST /v1/chat/completions": {
        "model": "tiny",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 2,
    },
    "POST /tokenize": {"prompt": "hi"},
    "POST /detokenize": {"tokens": [1, 2]},
    "POST /feedback": {"generation_id": "gen-unknown", "rating": "up"},
    "POST /generations/import": {
        "model": "elsewhere",
        "answers": [{"instruction": "Say hi.", "output": "Hi."}],
    },
    "POST /admin/sessions/{session_id}/exclude": {"reason": "the matrix test"},
}
EXPECTED = {  # role -> the status class for (no key, user key, admin key)
    "open": ("allowed", "allowed", "allowed"),
    "user": (401, "allowed", "allowed"),
    "admin": (401, 403, "allowed"),
}


class CapturedMount:
    """Stands in for the demo's mount (no Gradio here) and keeps the key it is handed."""

    def __call__(self, app, *, path, server_url, api_key, login):
        self.api_key = api_key
        return app


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def keyed(request, tmp_path_factory):
    with ExitStack() as stack:
        if request.param == "postgresql":
            database = stack.enter_context(postgres_schema_url())
        else:
            database = f"sqlite://{tmp_path_factory.mktemp('roles-store') / 'alpaca.sqlite3'}"
        yield stack.enter_context(keyed_server(tmp_path_factory, database))


@contextmanager
def keyed_server(tmp_path_factory, database: str):
    folder = tmp_path_factory.mktemp("roles")
    keys_file = folder / "keys.txt"
    keys_file.write_text(f"# the operators\n{FILE_ADMIN}  role=admin  name=operator\n")
    mount = CapturedMount()
    server = ScriptedServer(
        {
            "ALPACA_DATABASE_URL": database,
            "ALPACA_API_KEYS": USER,
            "ALPACA_ADMIN_KEYS": ADMIN,
            "ALPACA_API_KEYS_FILE": str(keys_file),
            "ALPACA_METRICS_REQUIRE_KEY": "true",
            "ALPACA_UI": "true",
        },
        folder,
        ui=mount,
    )
    server.wait_until_ready()
    server.demo_key = mount.api_key
    server.keys_file = keys_file
    try:
        yield server
    finally:
        server.stop()


def as_(key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"} if key else {}


def outcome(status: int) -> int | str:
    return status if status in (401, 403) else "allowed"


def test_every_route_of_the_app_has_a_role_and_every_role_a_route(keyed):
    declared = {key for route in keyed.app.routes for key in route_keys(route)}
    assert declared - ROUTE_ROLES.keys() == set(), "routes with no role in route_roles.py"
    # The demo's mount is the one entry this app (its mount captured) lacks.
    assert ROUTE_ROLES.keys() - declared == {"MOUNT /ui"}, "roles of routes that do not exist"


def test_each_route_answers_no_key_a_user_key_and_an_admin_key_as_its_role_says(keyed):
    seen = {}
    for route in keyed.app.routes:
        for key in route_keys(route):
            method, path = key.split(" ", 1)
            url = path.format(session_id=SESSION)
            statuses = tuple(
                outcome(
                    keyed.client.request(
                        method, url, json=BODIES.get(key), headers=as_(caller)
                    ).status_code
                )
                for caller in (None, USER, ADMIN)
            )
            seen[key] = statuses
    wanted = {key: EXPECTED[ROUTE_ROLES[key]] for key in seen}
    assert seen == wanted
    assert ROUTE_ROLES["GET /metrics"] == "admin"  # protected here (ALPACA_METRICS_REQUIRE_KEY)


def test_a_user_key_is_told_which_route_needs_an_admin_and_which_key_it_is(keyed):
    refused = keyed.client.get("/feedback/summary", headers=as_(USER))
    assert refused.status_code == 403
    error = refused.json()["error"]
    assert error["type"] == "forbidden"
    assert "GET /feedback/summary needs an admin key" in error["message"]
    assert USER not in error["message"]  # named by its fingerprint, never shown
    assert "a user key" in error["message"]


def test_the_demos_own_calls_are_a_users_and_nothing_more(keyed):
    """What the demo calls (server/../demo: chat, rate, compare, leaderboard) with the key the
    server handed it: every call goes through; an admin route is refused to it."""

    async def demo_calls():
        async with AsyncAlpacaClient(keyed.url, keyed.demo_key) as client:
            info = await client.info()
            models = await client.models()
            ids = []
            for instruction in ("Name a colour.", "Name another."):
                events = [
                    event async for event in client.stream_generate(instruction, max_new_tokens=4)
                ]
                ids.append(next(event["id"] for event in events if event.get("id")))
            generation_id, other_id = ids
            await client.send_rating(generation_id, "up", "ui-demo-tab")
            await client.send_comparison([generation_id, other_id], "tie", "ui-demo-tab")
            board = await client.leaderboard("human", rounds=0)
            return info, models, board

    info, models, board = asyncio.run(demo_calls())
    assert info["model"] and models and board["voter"] == "human"
    summary = keyed.client.get("/feedback/summary", headers=as_(keyed.demo_key))
    assert summary.status_code == 403


def test_a_changed_keys_file_takes_effect_without_a_restart(keyed):
    late, gone = "late-user-key", FILE_ADMIN
    assert keyed.client.get("/info", headers=as_(late)).status_code == 401
    keyed.keys_file.write_text(f"{late}  name=late\n")
    wait_for(lambda: keyed.client.get("/info", headers=as_(late)).status_code == 200, 5)
    assert keyed.client.get("/feedback/summary", headers=as_(late)).status_code == 403
    assert keyed.client.get("/info", headers=as_(gone)).status_code == 401  # revoked
    # A malformed file is logged and changes nothing: the keys read before stay.
    keyed.keys_file.write_text(f"{late}  role=root\n")
    wait_for(lambda: "role must be user or admin" in keyed.log_text(), 5)
    assert keyed.client.get("/info", headers=as_(late)).status_code == 200
    keyed.keys_file.write_text(f"{FILE_ADMIN}  role=admin  name=operator\n")
    wait_for(lambda: keyed.client.get("/info", headers=as_(late)).status_code == 401, 5)
    assert keyed.client.get("/feedback/summary", headers=as_(FILE_ADMIN)).status_code == 200


def test_admin_actions_are_audited_by_the_keys_name_never_the_key(keyed):
    imported = keyed.client.post(
        "/generations/import", json=BODIES["POST /generations/import"], headers=as_(FILE_ADMIN)
    )
    assert imported.status_code == 201
    wait_for(lambda: keyed.client.get("/info", headers=as_(FILE_ADMIN)).status_code == 200, 5)
    asked = keyed.client.post(
        "/generate",
        json={"instruction": "Where do I live?", "max_new_tokens": 2},
        headers={**as_(USER), "X-Session-Id": "ui-someone"},
    ).json()["id"]
    rated = {"generation_id": asked, "rating": "down", "session_id": "ui-someone"}
    assert keyed.client.post("/feedback", json=rated, headers=as_(USER)).status_code == 201
    deleted = keyed.client.delete("/admin/sessions/ui-someone", headers=as_(FILE_ADMIN))
    assert deleted.status_code == 200
    assert deleted.json() == {
        "session_id": "ui-someone",
        "deleted": {"ratings": 1, "comparisons": 0, "generations": 1},
    }
    assert keyed.client.post("/feedback", json=rated, headers=as_(USER)).status_code == 404
    log = keyed.log_text()
    assert 'audit: generations.import by operator (admin) model="elsewhere" answers=1' in log
    assert 'audit: sessions.delete by operator (admin) session_id="ui-someone"' in log
    assert FILE_ADMIN not in log and ADMIN not in log
    counts = read_metrics_as(keyed, FILE_ADMIN)
    assert counts["alpaca_admin_actions_total{action=generations.import,key=operator}"] >= 1
    assert counts["alpaca_admin_actions_total{action=sessions.delete,key=operator}"] >= 1


def read_metrics_as(server, key: str) -> dict[str, float]:
    server.client.headers["Authorization"] = f"Bearer {key}"
    try:
        return read_metrics(server.client)
    finally:
        del server.client.headers["Authorization"]


def test_the_operations_page_lists_each_route_under_its_role():
    from pathlib import Path

    page = (Path(__file__).parents[2] / "docs" / "operations.md").read_text()
    rows = {
        line.split("|")[1].strip(): line.split("|")[3]
        for line in page.splitlines()
        if line.startswith("| open ") or line.startswith("| user ") or line.startswith("| admin ")
    }
    for key, role in ROUTE_ROLES.items():
        shown = "the demo at `/ui`" if key == "MOUNT /ui" else f"`{key}`"
        assert shown in rows[role], f"{key} not listed as {role} in docs/operations.md"
