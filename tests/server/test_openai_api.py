"""The OpenAI-compatible API, through the official `openai` SDK, on both layers."""

from __future__ import annotations

import openai
import pytest

from training.prompts import format_prompt


@pytest.fixture
def sdk(server):
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0) as c:
        yield c


@pytest.fixture
def model(sdk):
    return sdk.models.list().data[0].id


def test_models_lists_the_served_model(sdk, client):
    models = sdk.models.list().data
    assert [m.id for m in models] == [client.get("/info").json()["model"]]


def test_a_completion_sends_the_prompt_as_it_is(sdk, model, server):
    answer = sdk.completions.create(
        model=model, prompt="Once upon a time", max_tokens=5, temperature=0
    )
    assert answer.object == "text_completion"
    assert answer.choices[0].finish_reason == "length"
    assert answer.usage.completion_tokens == 5
    assert answer.usage.prompt_tokens == server.count_tokens("Once upon a time")
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + 5


def test_chat_uses_the_alpaca_template_with_earlier_turns_as_input(sdk, model, server):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Name a fruit."},
        {"role": "assistant", "content": "Apple."},
        {"role": "user", "content": "Another one?"},
    ]
    answer = sdk.chat.completions.create(model=model, messages=messages, max_tokens=4)
    context = "System: Be brief.\nUser: Name a fruit.\nAssistant: Apple."
    expected = server.count_tokens(format_prompt("Another one?", context))
    assert answer.usage.prompt_tokens == expected
    assert answer.choices[0].message.role == "assistant"


def test_chat_and_generate_give_the_same_answer(sdk, model, client):
    chat = sdk.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "List two rivers."}],
        max_tokens=16,
        temperature=0,
    )
    generated = client.post(
        "/generate",
        json={"instruction": "List two rivers.", "max_new_tokens": 16, "temperature": 0},
    ).json()
    assert chat.choices[0].message.content == generated["text"]
    assert chat.usage.prompt_tokens == generated["usage"]["prompt_tokens"]


def test_streamed_chat_deltas_add_up_to_the_answer(sdk, model):
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "Tell a story."}],
        "max_tokens": 24,
        "temperature": 0,
    }
    whole = sdk.chat.completions.create(**body).choices[0].message.content
    chunks = list(sdk.chat.completions.create(**body, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason == "length"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == whole
    assert len({c.id for c in chunks}) == 1


def test_streamed_completion_pieces_add_up_to_the_text(sdk, model):
    body = {"model": model, "prompt": "The weather", "max_tokens": 12, "temperature": 0}
    whole = sdk.completions.create(**body).choices[0].text
    chunks = list(sdk.completions.create(**body, stream=True))
    assert "".join(c.choices[0].text for c in chunks) == whole
    assert chunks[-1].choices[0].finish_reason == "length"


def test_a_stop_sequence_stops_and_is_not_returned(sdk, model):
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "Describe dogs."}],
        "max_tokens": 40,
        "temperature": 0,
    }
    full = sdk.chat.completions.create(**body).choices[0].message.content
    words = full.split()
    stop = words[len(words) // 2]
    cut = sdk.chat.completions.create(**body, stop=[stop]).choices[0]
    assert cut.finish_reason == "stop"
    assert cut.message.content == full[: full.index(stop)].strip()


def test_the_response_id_is_the_generation_id_feedback_takes(sdk, model, client):
    answer = sdk.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Rate me."}], max_tokens=2
    )
    feedback = client.post("/feedback", json={"generation_id": answer.id, "rating": "up"})
    assert feedback.status_code == 201, feedback.text


@pytest.mark.parametrize(
    ("kwargs", "error", "param"),
    [
        ({"model": "no-such-model"}, openai.NotFoundError, "model"),
        ({"max_tokens": 0}, openai.UnprocessableEntityError, "max_tokens"),
        ({"temperature": 5}, openai.UnprocessableEntityError, "temperature"),
        ({"n": 2}, openai.UnprocessableEntityError, "n"),
        (
            {"messages": [{"role": "assistant", "content": "hi"}]},
            openai.UnprocessableEntityError,
            "messages",
        ),
        (
            {"messages": [{"role": "user", "content": "x " * 2000}]},
            openai.UnprocessableEntityError,
            "instruction",
        ),
    ],
)
def test_errors_surface_as_the_sdks_exceptions(sdk, model, kwargs, error, param):
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], **kwargs}
    with pytest.raises(error) as raised:
        sdk.chat.completions.create(**body)
    assert raised.value.body["param"] == param


@pytest.mark.parametrize("stop", ["", [""], ["x"] * 9])
def test_bad_stop_values_are_422_not_server_errors(client, model, stop):
    response = client.post("/v1/completions", json={"model": model, "prompt": "hi", "stop": stop})
    assert response.status_code == 422, response.text
    assert response.json()["error"]["param"].startswith("stop")
