"""`POST /generate`: on both layers (the scripted engine, then vLLM on the tiny model), and what
only the real engine can show (determinism, seeds, characters split across tokens)."""

from __future__ import annotations

import json

import jsonschema
import pytest

from alpaca_serve.core.prompts import format_prompt
from tests.support import stream_events

GREEDY = {"temperature": 0.0}


def generate(client, **body):
    response = client.post("/generate", json=body)
    assert response.status_code == 200, response.text
    return response.json()


@pytest.fixture
def real_client(tiny_server):
    """The real engine's server only: for what a scripted engine cannot show."""
    return tiny_server.client


def test_answer_carries_the_request_id_and_token_usage(client, server):
    response = client.post("/generate", json={"instruction": "Name a colour.", "max_new_tokens": 8})
    assert response.status_code == 200
    answer = response.json()
    assert answer["id"] == response.headers["X-Request-Id"]
    assert answer["finish_reason"] in ("length", "eos", "stop")
    assert answer["usage"]["prompt_tokens"] == server.count_tokens(format_prompt("Name a colour."))
    assert 1 <= answer["usage"]["completion_tokens"] <= 8


def test_input_field_selects_the_with_input_template(client, server):
    answer = generate(client, instruction="Translate.", input="Bonjour", max_new_tokens=1)
    expected = server.count_tokens(format_prompt("Translate.", "Bonjour"))
    assert answer["usage"]["prompt_tokens"] == expected


def test_raw_prompt_is_sent_as_it_is(client, server):
    prompt = "Once upon a time"
    answer = generate(client, prompt=prompt, max_new_tokens=4, **GREEDY)
    assert answer["usage"]["prompt_tokens"] == server.count_tokens(prompt)


def test_instruction_and_its_formatted_prompt_give_the_same_answer(client):
    by_instruction = generate(client, instruction="List two fruits.", max_new_tokens=16, **GREEDY)
    by_prompt = generate(
        client, prompt=format_prompt("List two fruits."), max_new_tokens=16, **GREEDY
    )
    assert by_instruction["text"] == by_prompt["text"]
    assert by_instruction["usage"] == by_prompt["usage"]


def test_answer_is_stripped_and_never_contains_the_prompt(client):
    answer = generate(client, instruction="Describe the sea.", max_new_tokens=24, **GREEDY)
    assert answer["text"] == answer["text"].strip()
    assert "Below is an instruction" not in answer["text"]
    assert "Describe the sea." not in answer["text"]


def test_max_new_tokens_bounds_the_answer_and_reports_length(client):
    answer = generate(client, instruction="Write a long story.", max_new_tokens=12, **GREEDY)
    assert answer["finish_reason"] == "length"
    assert answer["usage"]["completion_tokens"] == 12


def test_default_max_new_tokens_applies_when_the_request_does_not_say(client):
    from tests.support import TINY_DEFAULT_MAX_NEW_TOKENS

    answer = generate(client, instruction="Write a long story.", **GREEDY)
    assert answer["usage"]["completion_tokens"] == TINY_DEFAULT_MAX_NEW_TOKENS


def test_greedy_decoding_is_deterministic(real_client):
    client = real_client
    first = generate(client, instruction="Count to ten.", max_new_tokens=20, **GREEDY)
    second = generate(client, instruction="Count to ten.", max_new_tokens=20, **GREEDY)
    assert first["text"] == second["text"]


def test_a_seed_makes_sampling_reproducible(real_client):
    client = real_client
    body = {
        "instruction": "Invent a word.",
        "max_new_tokens": 20,
        "temperature": 1.0,
        "top_k": 0,
        "top_p": 1.0,
    }
    first = generate(client, seed=1234, **body)
    again = generate(client, seed=1234, **body)
    others = {generate(client, seed=seed, **body)["text"] for seed in (1, 2, 3)}
    assert first["text"] == again["text"]
    assert len(others | {first["text"]}) > 1


def test_a_stop_string_ends_the_answer_before_it(client):
    body = {"instruction": "Tell me about cats.", "max_new_tokens": 40, **GREEDY}
    full = generate(client, **body)["text"]
    words = full.split()
    assert len(words) >= 6, full
    stop = words[len(words) // 2]
    cut = generate(client, stop=[stop], **body)
    assert cut["finish_reason"] == "stop"
    assert stop not in cut["text"]
    assert cut["text"] == full[: full.index(stop)].strip()


def test_streaming_sends_deltas_then_a_final_event_then_done(client):
    body = {"instruction": "Tell me about dogs.", "max_new_tokens": 24, **GREEDY}
    whole = generate(client, **body)
    response, events = stream_events(client, body)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert events[-1] == "[DONE]"
    final = events[-2]
    pieces = events[:-2]
    assert pieces, "no text events before the final one"
    assert all(event["text"] for event in pieces), "an empty delta was sent"
    assert all("finish_reason" not in event for event in pieces)
    assert all(event["id"] == response.headers["X-Request-Id"] for event in events[:-1])
    assert final["text"] == ""
    assert final["finish_reason"] == whole["finish_reason"]
    assert final["usage"] == whole["usage"]
    # Deltas, not cumulative text: joined they are exactly the non-streamed answer.
    assert "".join(event["text"] for event in pieces) == whole["text"]


def test_streamed_pieces_never_hold_a_broken_character(real_client):
    """Random tokens of a byte-level tokenizer often leave characters half-finished."""
    client = real_client
    body = {
        "instruction": "Écris un poème 🎉 日本語",
        "max_new_tokens": 64,
        "temperature": 1.0,
        "top_k": 0,
        "top_p": 1.0,
        "seed": 7,
    }
    whole = generate(client, **body)
    _, events = stream_events(client, body)
    pieces = [event["text"] for event in events[:-2]]
    assert "".join(pieces) == whole["text"]
    for piece in pieces[:-1]:
        assert not piece.endswith("\ufffd"), pieces


def test_logprobs_are_an_opt_in_list_one_entry_per_token(client):
    plain = generate(client, instruction="Describe rain.", max_new_tokens=8, **GREEDY)
    assert plain["logprobs"] is None
    answer = generate(client, instruction="Describe rain.", max_new_tokens=8, logprobs=2, **GREEDY)
    assert answer["text"] == plain["text"]
    assert len(answer["logprobs"]) == answer["usage"]["completion_tokens"]
    for entry in answer["logprobs"]:
        assert set(entry) == {"token", "logprob", "top_logprobs"}
        assert entry["logprob"] <= 0 and len(entry["top_logprobs"]) == 2
        assert entry["top_logprobs"][0]["token"] == entry["token"]
    _, events = stream_events(
        client, {"instruction": "Describe rain.", "max_new_tokens": 8, "logprobs": 2, **GREEDY}
    )
    streamed = [entry for event in events[:-1] for entry in event["logprobs"]]
    assert [e["token"] for e in streamed] == [e["token"] for e in answer["logprobs"]]


def test_a_json_schema_answer_parses_and_validates(client):
    schema = {
        "type": "object",
        "properties": {"ok": {"type": "boolean"}, "n": {"enum": [1, 2, 3]}},
        "required": ["ok", "n"],
        "additionalProperties": False,
    }
    answer = generate(client, instruction="Answer.", max_new_tokens=48, json_schema=schema)
    jsonschema.validate(json.loads(answer["text"]), schema)
    assert answer["finish_reason"] == "eos"
    anything = generate(client, instruction="Answer.", max_new_tokens=48, json_object=True)
    assert anything["text"].startswith("{")
    if anything["finish_reason"] == "eos":  # a random model may still be inside a string
        assert isinstance(json.loads(anything["text"]), dict)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"json_schema": {"type": 3}}, "json_schema"),
        ({"json_schema": {"type": "string", "pattern": "(?<=x)y"}}, "json_schema"),
        ({"json_schema": {"type": "object"}, "json_object": True}, "json_object"),
        ({"logprobs": 21}, "logprobs"),
        ({"min_tokens": 40, "max_new_tokens": 4}, "min_tokens"),
        ({"presence_penalty": 3}, "presence_penalty"),
    ],
)
def test_bad_structured_output_and_sampling_fields_are_422(client, body, param):
    response = client.post("/generate", json={"instruction": "Answer.", **body})
    assert response.status_code == 422, response.text
    assert response.json()["error"]["param"] == param
