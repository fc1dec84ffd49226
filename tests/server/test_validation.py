"""Bad requests get a 4xx with a JSON error naming the parameter, and never reach the engine."""

from __future__ import annotations

import pytest

from tests.support import (
    TINY_CONTEXT,
    TINY_MAX_NEW_TOKENS_LIMIT,
    read_metrics,
)

OK = {"instruction": "Say hello."}

# (body, param named in the error, fragments the message must contain)
INVALID_BODIES = [
    ({}, "instruction", ["instruction is required"]),
    ({"input": "only input"}, "instruction", ["instruction is required"]),
    ({"instruction": 5}, "instruction", ["valid string", "5"]),
    ({"instruction": ["a"]}, "instruction", ["valid string"]),
    ({"instruction": "   "}, "instruction", ["instruction is empty"]),
    ({"instruction": "a", "prompt": "b"}, "prompt", ["not both"]),
    ({"prompt": ""}, "prompt", ["prompt is empty"]),
    ({"prompt": "p", "input": "i"}, "input", ["input goes with instruction"]),
    ({**OK, "max_new_tokens": 0}, "max_new_tokens", ["greater than or equal to 1", "0"]),
    ({**OK, "max_new_tokens": -5}, "max_new_tokens", ["-5"]),
    ({**OK, "max_new_tokens": "5"}, "max_new_tokens", ["valid integer", "'5'"]),
    ({**OK, "max_new_tokens": 2.5}, "max_new_tokens", ["valid integer", "2.5"]),
    (
        {**OK, "max_new_tokens": TINY_MAX_NEW_TOKENS_LIMIT + 1},
        "max_new_tokens",
        [str(TINY_MAX_NEW_TOKENS_LIMIT + 1), f"limit of {TINY_MAX_NEW_TOKENS_LIMIT}"],
    ),
    ({**OK, "temperature": -0.1}, "temperature", ["greater than or equal to 0", "-0.1"]),
    ({**OK, "temperature": 2.5}, "temperature", ["less than or equal to 2", "2.5"]),
    ({**OK, "temperature": "hot"}, "temperature", ["valid number"]),
    ({**OK, "top_p": 0}, "top_p", ["greater than 0"]),
    ({**OK, "top_p": 1.5}, "top_p", ["less than or equal to 1", "1.5"]),
    ({**OK, "top_k": -1}, "top_k", ["greater than or equal to 0", "-1"]),
    ({**OK, "repetition_penalty": 0}, "repetition_penalty", ["greater than 0"]),
    ({**OK, "repetition_penalty": 3}, "repetition_penalty", ["less than or equal to 2", "3"]),
    ({**OK, "stop": "###"}, "stop", ["valid list"]),
    ({**OK, "stop": [""]}, "stop", ["stop[0] is empty"]),
    ({**OK, "stop": [1]}, "stop[0]", ["valid string"]),
    ({**OK, "stop": ["x"] * 9}, "stop", ["at most 8"]),
    ({**OK, "seed": -1}, "seed", ["greater than or equal to 0", "-1"]),
    ({**OK, "seed": 1.5}, "seed", ["valid integer"]),
    ({**OK, "stream": "yes"}, "stream", ["valid boolean"]),
    ({**OK, "inputs": "tgi style"}, "inputs", ["inputs is not a known field"]),
]


def assert_error(response, status: int, type_: str, param: str | None, fragments=()):
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.headers["X-Request-Id"]
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param"}
    assert error["type"] == type_
    assert error["param"] == param
    for fragment in fragments:
        assert fragment in error["message"], error["message"]
    return error


@pytest.mark.parametrize(("body", "param", "fragments"), INVALID_BODIES)
def test_invalid_field_is_a_422_naming_the_parameter(client, body, param, fragments):
    response = client.post("/generate", json=body)
    assert_error(response, 422, "invalid_request_error", param, fragments)


def test_prompt_plus_max_new_tokens_above_the_context_states_the_numbers(client, server):
    # Most of the context, in either engine's tokens (the scripted one counts characters).
    instruction = "word " * (600 if server.layer == "vllm" else 150)
    from alpaca_serve.core.prompts import format_prompt

    prompt_tokens = server.count_tokens(format_prompt(instruction))
    max_new = TINY_CONTEXT - prompt_tokens + 1
    assert 1 <= max_new <= TINY_MAX_NEW_TOKENS_LIMIT
    body = {"instruction": instruction, "max_new_tokens": max_new}
    response = client.post("/generate", json=body)
    error = assert_error(response, 422, "invalid_request_error", "max_new_tokens")
    for number in (prompt_tokens, max_new, prompt_tokens + max_new, TINY_CONTEXT):
        assert str(number) in error["message"], error["message"]
    # One token less fits exactly.
    fits = client.post(
        "/generate", json={"instruction": instruction, "max_new_tokens": max_new - 1}
    )
    assert fits.status_code == 200, fits.text


def test_prompt_longer_than_the_context_is_refused_on_its_own_field(client):
    response = client.post("/generate", json={"prompt": "word " * (TINY_CONTEXT + 10)})
    assert_error(response, 422, "invalid_request_error", "prompt", [str(TINY_CONTEXT)])


def test_malformed_json_is_a_400(client):
    response = client.post(
        "/generate", content=b'{"instruction": ', headers={"content-type": "application/json"}
    )
    assert_error(response, 400, "invalid_json", None, ["not valid JSON"])


@pytest.mark.parametrize("raw", [b"[1, 2]", b'"text"', b"42", b"null"])
def test_a_body_that_is_not_an_object_is_a_422(client, raw):
    response = client.post("/generate", content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_a_form_encoded_body_is_a_415_that_says_to_send_json(client):
    response = client.post("/generate", data={"instruction": "hi"})
    assert_error(response, 415, "unsupported_media_type", None, ["application/json"])


def test_unknown_route_and_wrong_method_are_json_errors(client):
    assert_error(client.get("/nope"), 404, "not_found", None)
    assert_error(client.get("/generate"), 405, "method_not_allowed", None)


def test_invalid_requests_never_reach_the_engine(client):
    before = read_metrics(client)
    for body, _, _ in INVALID_BODIES[:10]:
        assert client.post("/generate", json=body).status_code == 422
    after = read_metrics(client)
    assert after["alpaca_requests_total{outcome=invalid}"] == (
        before["alpaca_requests_total{outcome=invalid}"] + 10
    )
    for key in (
        "alpaca_requests_total{outcome=success}",
        "alpaca_prompt_tokens_total",
        "alpaca_time_to_first_token_seconds_count",
    ):
        assert after[key] == before[key], key


def test_a_body_over_the_limit_is_a_413_with_or_without_a_declared_length(client):
    big = b'{"instruction": "' + b"x" * 1_100_000 + b'"}'
    declared = client.post("/generate", content=big, headers={"content-type": "application/json"})
    assert_error(declared, 413, "request_too_large", None, ["1048576"])

    def chunks():
        for start in range(0, len(big), 65536):
            yield big[start : start + 65536]

    chunked = client.post(
        "/generate", content=chunks(), headers={"content-type": "application/json"}
    )
    assert chunked.status_code == 413
    assert (
        client.post(
            "/generate", json={"instruction": "still here", "max_new_tokens": 2}
        ).status_code
        == 200
    )


def test_a_one_megabyte_instruction_is_refused_with_the_numbers(client):
    response = client.post("/generate", json={"instruction": "y" * 1_000_000})
    assert_error(
        response,
        422,
        "invalid_request_error",
        "instruction",
        ["1000000 characters", "limit of 100000"],
    )


def test_a_body_that_is_not_utf8_is_a_400(client):
    response = client.post(
        "/generate",
        content=b'{"instruction": "\xff\xfe"}',
        headers={"content-type": "application/json"},
    )
    assert_error(response, 400, "invalid_json", None, ["UTF-8"])


def test_control_characters_and_emoji_reach_the_model_intact(client, server):
    from alpaca_serve.core.prompts import format_prompt
    from alpaca_serve.feedback import default_database_url, open_store
    from tests.support import wait_for

    instruction = "Echo: a\u0001b\u0007c \u00e9\u00e8 \U0001f389\U0001f1eb\U0001f1f7 \u200b\u202e!"
    response = client.post("/generate", json={"instruction": instruction, "max_new_tokens": 2})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["usage"]["prompt_tokens"] == server.count_tokens(format_prompt(instruction))

    def recorded():
        with open_store(default_database_url(server.data_dir)) as store:
            rows = store.export_rows(include_unrated=True)
            return next((row for row in rows if row["generation_id"] == answer["id"]), None)

    row = wait_for(recorded, 10)
    assert row["instruction"] == instruction
    assert format_prompt(instruction) == row["prompt"]
