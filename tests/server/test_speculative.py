"""Speculative decoding (ALPACA_SPECULATIVE=ngram): the settings, and greedy answers through the
real engine identical, token for token, to those of the session's server without it."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from alpaca_serve.server.engine import speculative_config
from alpaca_serve.server.settings import ServerSettings
from tests.support import read_metrics, start_server

# Alpaca requests whose answer may copy its input: prompt lookup finds the input's tokens.
REQUESTS = [
    {
        "instruction": "Rewrite the following sentence using active voice.",
        "input": "The news report was read by the captain of the ship.",
    },
    {
        "instruction": "Extract the names of the cities from the text.",
        "input": "We drove from Paris to Lyon, then took the train from Lyon to Marseille.",
    },
    {
        "instruction": "Summarize the given passage.",
        "input": "The cat sat on the mat. The cat sat on the mat all day, and the mat was warm.",
    },
]
GREEDY = {"temperature": 0.0, "max_new_tokens": 32, "logprobs": 0}


@pytest.fixture(scope="module")
def speculative_server(request, tmp_path_factory):
    """A second server on the tiny model, with n-gram speculation proposing 3 tokens."""
    env = {
        "ALPACA_SPECULATIVE": "ngram",
        "ALPACA_SPECULATIVE_TOKENS": "3",
        "ALPACA_PROMPT_LOOKUP_MAX": "3",
        "ALPACA_PROMPT_LOOKUP_MIN": "1",
    }
    server = start_server(request, "vllm", env, tmp_path_factory.mktemp("speculative-server"))
    try:
        yield server
    finally:
        server.stop()


def tokens_of(server, body: dict) -> list[str]:
    response = server.client.post("/generate", json={**body, **GREEDY})
    assert response.status_code == 200, response.text
    return [entry["token"] for entry in response.json()["logprobs"]]


@pytest.mark.slow
def test_greedy_answers_with_ngram_speculation_are_those_without(tiny_server, speculative_server):
    for body in REQUESTS:
        assert tokens_of(speculative_server, body) == tokens_of(tiny_server, body), body
    metrics = read_metrics(speculative_server.client)
    # Proposals were made and some accepted: the answers went through speculation's own path.
    assert metrics["alpaca_spec_decode_num_draft_tokens_total"] > 0
    assert metrics["alpaca_spec_decode_num_accepted_tokens_total"] > 0
    assert read_metrics(tiny_server.client)["alpaca_spec_decode_num_draft_tokens_total"] == 0
    assert (
        "speculative decoding on: ngram, 3 tokens proposed per step, prompt lookup 1 to 3 tokens"
        in speculative_server.log_text()
    )


def test_speculation_is_off_unless_asked_and_blank_means_off():
    assert ServerSettings().speculative == "off"
    assert ServerSettings(speculative=" ").speculative == "off"
    assert speculative_config(ServerSettings()) is None


def test_ngram_settings_become_vllms_speculative_config():
    settings = ServerSettings(
        speculative="ngram", speculative_tokens=5, prompt_lookup_max=4, prompt_lookup_min=2
    )
    assert speculative_config(settings) == {
        "method": "ngram",
        "num_speculative_tokens": 5,
        "prompt_lookup_max": 4,
        "prompt_lookup_min": 2,
    }


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"prompt_lookup_min": 4, "prompt_lookup_max": 2}, r"prompt_lookup_min \(4\) is above"),
        ({"speculative": "draft"}, "speculative"),
        ({"speculative_tokens": 0}, "speculative_tokens"),
    ],
)
def test_inconsistent_speculation_settings_stop_the_server_at_load(values, message):
    with pytest.raises(ValidationError, match=message):
        ServerSettings(**values)
