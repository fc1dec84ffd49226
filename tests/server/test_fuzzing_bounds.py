"""A fuzz pass at the bounds: seeded random hostile bodies (huge, deep and wide JSON schemas, many
unknown fields, long and many stop strings, long prompts) and random paths under the demo. None
may get a 5xx or a non-JSON error, and the server stays ready throughout.

schemathesis (test_fuzzing.py) explores the documented schema; these bodies are the ones an
attacker writes, mostly outside it.
"""

from __future__ import annotations

import random
import string

import httpx
import pytest

from alpaca_serve.server.schemas import MAX_STOP_CHARS, MAX_STOP_SEQUENCES
from alpaca_serve.server.settings import ServerSettings
from tests.support import ScriptedServer

DEFAULTS = ServerSettings()
CASES = 60


def deep(rng: random.Random) -> object:
    """Objects and arrays nested up to twice the depth bound."""
    value: object = {"type": "string"}
    for _ in range(rng.randint(1, 2 * DEFAULTS.max_schema_depth)):
        value = rng.choice(
            [
                lambda v: {"type": "array", "items": v},
                lambda v: {"type": "object", "properties": {"x": v}},
                lambda v: [v],
                lambda v: {"anyOf": [v, {"type": "null"}]},
            ]
        )(value)
    return value


def wide(rng: random.Random) -> dict:
    count = rng.choice(
        [0, 1, 50, DEFAULTS.max_schema_properties, 2 * DEFAULTS.max_schema_properties]
    )
    return {
        "type": "object",
        "properties": {
            f"p{i}": {"type": rng.choice(["string", "integer", 3])} for i in range(count)
        },
    }


def text(rng: random.Random, longest: int) -> str:
    size = rng.choice([0, 1, rng.randint(0, longest)])
    return "".join(rng.choice(string.printable + "é\u2028\x00") for _ in range(size))


def hostile_body(rng: random.Random) -> tuple[str, dict]:
    """A route and a body with one or more hostile parts."""
    route = rng.choice(["/generate", "/v1/chat/completions", "/v1/completions", "/tokenize"])
    body: dict = {"max_new_tokens" if route == "/generate" else "max_tokens": rng.randint(1, 4)}
    if route == "/generate":
        body["instruction"] = text(rng, 200)
    elif route == "/v1/chat/completions":
        body["messages"] = [{"role": "user", "content": text(rng, 200) or "hi"}]
    elif route == "/v1/completions":
        body["prompt"] = text(rng, 200) or "hi"
    else:
        body = {"prompt": "a" * rng.choice([1, DEFAULTS.max_prompt_chars + 1])}
    parts = rng.sample(["schema", "unknown", "stop", "long"], rng.randint(1, 3))
    if "schema" in parts and route != "/tokenize":
        schema = rng.choice([deep, wide])(rng)
        if route == "/generate":
            body["json_schema"] = schema
        elif route == "/v1/chat/completions":
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "x", "schema": schema},
            }
    if "unknown" in parts:
        for i in range(rng.choice([1, 100, 5_000])):
            body[f"x_{rng.randrange(10**9)}_{i}"] = rng.choice([None, 1, "v", [1], {"a": 1}])
    if "stop" in parts and route != "/tokenize":
        count = rng.choice([1, MAX_STOP_SEQUENCES, MAX_STOP_SEQUENCES + 1])
        body["stop"] = [
            "s" * rng.choice([1, MAX_STOP_CHARS, MAX_STOP_CHARS + 1, 100_000]) for _ in range(count)
        ]
    if "long" in parts and route == "/generate":
        body["instruction"] = "w " * rng.choice([10, DEFAULTS.max_prompt_chars // 2 + 1])
    return route, body


@pytest.fixture(scope="module")
def fuzzed_server(tmp_path_factory):
    server = ScriptedServer({}, tmp_path_factory.mktemp("fuzz"))
    server.wait_until_ready()
    try:
        yield server
    finally:
        server.stop()


def test_hostile_bodies_get_a_json_4xx_or_an_answer_never_a_5xx(fuzzed_server):
    rng = random.Random(20261203)
    client = fuzzed_server.client
    model = client.get("/v1/models").json()["data"][0]["id"]
    statuses: dict[int, int] = {}
    for case in range(CASES):
        route, body = hostile_body(rng)
        if route.startswith("/v1"):
            body["model"] = model
        response = client.post(route, json=body)
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        assert response.status_code < 500, (case, route, response.text[:500])
        if response.status_code >= 400:
            error = response.json()["error"]
            assert error["message"] and len(error["message"]) < 2_000, (case, error)
        assert client.get("/ready").status_code == 200, case
    # The pass reached both sides: refusals and answers.
    assert any(400 <= s < 500 for s in statuses) and 200 in statuses, statuses


@pytest.mark.slow  # mounts the real demo: imports Gradio
def test_random_paths_under_the_demo_never_get_a_5xx(tmp_path):
    server = ScriptedServer({"ALPACA_UI": "true", "ALPACA_API_KEYS": "k"}, tmp_path)
    server.wait_until_ready()
    rng = random.Random(7)
    prefixes = ["", "gradio_api/", "gradio_api/queue/", "gradio_api/call/", "gradio_api/file="]
    tails = [
        "upload",
        "join",
        "data",
        "info",
        "config",
        "login",
        "../../etc/passwd",
        "https://example.org/a",
        "//example.org/a",
        "%2e%2e/x",
        "x" * 3000,
    ]
    try:
        with httpx.Client(base_url=server.url, timeout=30) as browser:
            for _ in range(CASES):
                path = "/ui/" + rng.choice(prefixes) + rng.choice(tails)
                method = rng.choice(["GET", "POST"])
                response = browser.request(method, path, content=text(rng, 2_000).encode())
                assert response.status_code < 500, (method, path, response.text[:300])
            assert server.client.get("/ready").status_code == 200
    finally:
        server.stop()
