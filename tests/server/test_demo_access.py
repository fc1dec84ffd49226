"""With API keys set, the demo is no way around them: it asks for a login (an API key), or, made
public by the operator, calls the API with a key of its own and that key's own rate limit. Either
way Gradio's uploads and remote-file fetches are refused."""

from __future__ import annotations

import httpx
import pytest

from tests.support import ScriptedServer

KEY = "class-key-1"


class CapturedMount:
    """Stands in for the demo's mount and keeps what the server hands it."""

    def __call__(self, app, *, path, server_url, api_key, login):
        self.api_key, self.login = api_key, login
        return app


def start(tmp_path, ui=None, **env) -> ScriptedServer:
    server = ScriptedServer({"ALPACA_API_KEYS": KEY, "ALPACA_UI": "true", **env}, tmp_path, ui=ui)
    server.wait_until_ready()
    return server


def test_the_demo_gets_a_key_of_its_own_never_a_configured_one(tmp_path):
    mount = CapturedMount()
    server = start(tmp_path, ui=mount, ALPACA_UI_RATE_LIMIT_PER_MINUTE="3")
    try:
        assert mount.api_key and mount.api_key != KEY
        assert mount.login("anyone", KEY) and not mount.login("anyone", "guess")
        demo = {"Authorization": f"Bearer {mount.api_key}"}
        statuses = [server.client.get("/info", headers=demo).status_code for _ in range(5)]
        assert statuses[:3] == [200] * 3 and statuses[-1] == 429  # its own limit
        # A configured key has no limit here (none set): the demo's use does not spend it.
        mine = {"Authorization": f"Bearer {KEY}"}
        assert all(server.client.get("/info", headers=mine).status_code == 200 for _ in range(5))
    finally:
        server.stop()


def test_a_public_demo_has_no_login_and_still_its_own_key(tmp_path):
    mount = CapturedMount()
    server = start(tmp_path, ui=mount, ALPACA_UI_PUBLIC="true")
    try:
        assert mount.login is None
        assert mount.api_key and mount.api_key != KEY
    finally:
        server.stop()


@pytest.fixture(scope="module")
def demo_server(tmp_path_factory):
    server = start(tmp_path_factory.mktemp("demo-access"))
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.slow  # mounts the real demo: imports Gradio
def test_without_a_login_no_demo_route_answers_and_a_key_logs_in(demo_server):
    with httpx.Client(base_url=demo_server.url, timeout=30) as browser:
        for path in ("/ui/config", "/ui/gradio_api/info", "/ui/gradio_api/queue/status"):
            assert browser.get(path).status_code in (401, 403), path
        page = browser.get("/ui/")
        assert KEY not in page.text
        refused = browser.post("/ui/login", data={"username": "me", "password": "guess"})
        assert refused.status_code >= 400
        assert browser.post("/ui/login", data={"username": "me", "password": KEY}).is_success
        config = browser.get("/ui/config")
        assert config.status_code == 200 and KEY not in config.text


@pytest.mark.slow  # mounts the real demo: imports Gradio
@pytest.mark.parametrize(
    ("method", "path", "words"),
    [
        ("POST", "/ui/gradio_api/upload", "no uploads"),
        ("POST", "/ui/upload", "no uploads"),
        ("GET", "/ui/gradio_api/upload_progress", "no uploads"),
        ("GET", "/ui/gradio_api/file=https://example.org/x.png", "no remote URLs"),
        ("GET", "/ui/file=http://169.254.169.254/latest/meta-data", "no remote URLs"),
        ("GET", "/ui/gradio_api/proxy=https://example.org/", "no remote URLs"),
    ],
)
def test_uploads_and_remote_fetches_are_refused_even_after_a_login(
    demo_server, method, path, words
):
    with httpx.Client(base_url=demo_server.url, timeout=30) as browser:
        assert browser.post("/ui/login", data={"username": "me", "password": KEY}).is_success
        response = browser.request(
            method, path, files={"files": ("a.txt", b"hi")} if method == "POST" else None
        )
        assert response.status_code == 403, response.text
        assert words in response.json()["error"]["message"]
