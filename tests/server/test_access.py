"""API keys, the per-key rate limit and CORS, on a server that asks for keys."""

from __future__ import annotations

from contextlib import ExitStack

import pytest

from alpaca_serve.server.access import RateLimiter
from tests.support import LAYERS, TINY_SETTINGS, ScriptedServer, start_server, wait_for

ALLOWED_ORIGIN = "https://demo.example.org"
RATE_LIMIT = 20
PROTECTED = [
    ("POST", "/generate", {"instruction": "hi", "max_new_tokens": 2}),
    ("POST", "/feedback", {"generation_id": "gen-x", "rating": "up"}),
    ("GET", "/feedback/summary", None),
    ("GET", "/info", None),
    ("GET", "/docs", None),
    ("GET", "/openapi.json", None),
    ("GET", "/no-such-route", None),
]


@pytest.fixture(scope="module", params=LAYERS)
def keyed_server(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp("keyed")
    keys_file = folder / "keys.txt"
    keys_file.write_text("# the rate-limit test's own key\nkey-three\n")
    env = {
        "ALPACA_API_KEYS": "key-one, key-two",
        "ALPACA_API_KEYS_FILE": str(keys_file),
        "ALPACA_RATE_LIMIT_PER_MINUTE": str(RATE_LIMIT),
        "ALPACA_CORS_ORIGINS": ALLOWED_ORIGIN,
    }
    server = start_server(request, request.param, env, folder)
    try:
        yield server
    finally:
        server.stop()


def call(server, method, path, body, key=None):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return server.client.request(method, path, json=body, headers=headers)


@pytest.mark.parametrize(("method", "path", "body"), PROTECTED)
def test_every_protected_route_wants_a_valid_key(keyed_server, method, path, body):
    for key, message in ((None, "missing API key"), ("wrong-key", "invalid API key")):
        response = call(keyed_server, method, path, body, key)
        assert response.status_code == 401, (path, key)
        assert response.headers["WWW-Authenticate"] == "Bearer"
        assert response.headers["X-Request-Id"]
        assert response.json()["error"]["type"] == "unauthorized"
        assert message in response.json()["error"]["message"]
    assert call(keyed_server, method, path, body, "key-one").status_code != 401


def test_the_key_is_checked_before_the_body_is_read(keyed_server):
    # A client without a key must not make the server read (up to) a megabyte first.
    big = b'{"instruction": "' + b"a" * (2 * 1024 * 1024) + b'"}'
    headers = {"content-type": "application/json"}
    keyless = keyed_server.client.post("/generate", content=big, headers=headers)
    assert keyless.status_code == 401, keyless.text
    keyed = keyed_server.client.post(
        "/generate", content=big, headers={**headers, "Authorization": "Bearer key-one"}
    )
    assert keyed.status_code == 413, keyed.text


def test_one_key_cannot_hold_every_generation_slot(tmp_path):
    server = ScriptedServer(
        {**TINY_SETTINGS, "ALPACA_API_KEYS": "busy,other", "ALPACA_MAX_IN_FLIGHT_PER_KEY": "2"},
        tmp_path,
    )
    server.wait_until_ready()
    server.engine.delay_s = 0.05
    body = {"instruction": "Count.", "max_new_tokens": 40, "stream": True}
    try:
        with ExitStack() as streams:
            for _ in range(2):  # two answers streaming on one key: its limit
                response = streams.enter_context(
                    server.client.stream(
                        "POST", "/generate", json=body, headers={"Authorization": "Bearer busy"}
                    )
                )
                assert response.status_code == 200
            third = call(server, "POST", "/generate", {**body, "stream": False}, "busy")
            assert third.status_code == 429, third.text
            assert "ALPACA_MAX_IN_FLIGHT_PER_KEY" in third.json()["error"]["message"]
            assert third.headers["Retry-After"] == "1"
            assert call(server, "GET", "/info", None, "other").status_code == 200
        # The streams closed: the key has its slots back (once the server sees them gone).
        assert wait_for(lambda: call(server, "GET", "/info", None, "busy").status_code == 200, 10)
    finally:
        server.stop()


def test_keys_from_the_file_and_the_list_all_work(keyed_server):
    for key in ("key-one", "key-two", "key-three"):
        assert call(keyed_server, "GET", "/info", None, key).status_code == 200


def test_probes_metrics_and_the_demo_stay_open(keyed_server):
    demo = ("/ui/",) if keyed_server.layer == "vllm" else ()  # the fast layer mounts no UI
    for path in ("/health", "/ready", "/metrics", *demo):
        assert keyed_server.client.get(path).status_code == 200, path


def test_a_key_past_its_rate_limit_gets_429_with_retry_after(keyed_server):
    statuses = [
        call(keyed_server, "GET", "/info", None, "key-three").status_code
        for _ in range(RATE_LIMIT + 5)
    ]
    assert statuses[: RATE_LIMIT - 1] == [200] * (RATE_LIMIT - 1)
    assert statuses[-1] == 429
    refused = call(keyed_server, "GET", "/info", None, "key-three")
    assert refused.json()["error"]["type"] == "rate_limited"
    assert int(refused.headers["Retry-After"]) >= 1
    # Another key has its own budget.
    assert call(keyed_server, "GET", "/info", None, "key-two").status_code == 200


def test_cors_allows_only_the_listed_origin(keyed_server):
    preflight = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type",
    }
    allowed = keyed_server.client.options(
        "/generate", headers={"Origin": ALLOWED_ORIGIN, **preflight}
    )
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    other = keyed_server.client.options(
        "/generate", headers={"Origin": "https://evil.example", **preflight}
    )
    assert "access-control-allow-origin" not in other.headers


def test_the_rate_limiter_refills_over_time():
    limiter = RateLimiter(per_minute=60)
    assert all(limiter.allow("k", now=0.0)[0] for _ in range(60))
    allowed, wait_s = limiter.allow("k", now=0.0)
    assert not allowed and wait_s == pytest.approx(1.0)
    assert limiter.allow("k", now=1.0)[0]
