"""The OpenAI-compatible API, through the official `openai` SDK, on both layers."""

from __future__ import annotations

import json
import re
import uuid

import jsonschema
import openai
import pytest

from alpaca_serve.core.prompts import format_prompt
from alpaca_serve.server.unknown_fields import UnknownFields
from tests.support import start_server, wait_for


@pytest.fixture(scope="module")
def sdks():
    """One SDK client per server for the module: making one (its TLS context) takes ~70 ms."""
    made: dict[str, openai.OpenAI] = {}
    yield made
    for sdk in made.values():
        sdk.close()


@pytest.fixture
def sdk(server, sdks):
    if server.url not in sdks:
        sdks[server.url] = openai.OpenAI(
            base_url=f"{server.url}/v1", api_key="unused", max_retries=0
        )
    return sdks[server.url]


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
    ("kwargs", "error", "param", "code"),
    [
        ({"model": "no-such-model"}, openai.NotFoundError, "model", "model_not_found"),
        ({"max_tokens": 0}, openai.BadRequestError, "max_tokens", "invalid_value"),
        ({"temperature": 5}, openai.BadRequestError, "temperature", "invalid_value"),
        ({"n": 5}, openai.BadRequestError, "n", None),
        (
            {"messages": [{"role": "assistant", "content": "hi"}]},
            openai.BadRequestError,
            "messages",
            None,
        ),
        (
            {"messages": [{"role": "user", "content": "x " * 2000}]},
            openai.BadRequestError,
            "messages",
            "context_length_exceeded",
        ),
    ],
)
def test_errors_surface_as_the_sdks_exceptions_in_openais_shape(
    sdk, model, kwargs, error, param, code
):
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], **kwargs}
    with pytest.raises(error) as raised:
        sdk.chat.completions.create(**body)
    assert raised.value.body["param"] == param
    assert raised.value.body["code"] == code
    assert set(raised.value.body) >= {"message", "type", "param", "code"}
    if error is openai.BadRequestError:
        assert raised.value.body["type"] == "invalid_request_error"


def test_max_tokens_past_the_context_is_context_length_exceeded(sdk, model, server):
    # A prompt that fits, but not with TINY_MAX_NEW_TOKENS_LIMIT (512) new tokens after it.
    content = next(
        "x " * words
        for words in range(50, 2000, 25)
        if 512 < server.count_tokens(format_prompt("x " * words)) < 1000
    )
    with pytest.raises(openai.BadRequestError) as raised:
        sdk.chat.completions.create(
            model=model, messages=[{"role": "user", "content": content}], max_tokens=512
        )
    assert raised.value.body["param"] == "max_tokens"
    assert raised.value.body["code"] == "context_length_exceeded"
    assert "context" in raised.value.body["message"]


def test_generate_keeps_its_422_for_the_same_context_overflow(client):
    response = client.post("/generate", json={"instruction": "x " * 2000})
    assert response.status_code == 422, response.text
    assert response.json()["error"]["param"] == "instruction"


@pytest.mark.parametrize("stop", ["", [""], ["x"] * 9])
def test_bad_stop_values_are_400_not_server_errors(client, model, stop):
    response = client.post("/v1/completions", json={"model": model, "prompt": "hi", "stop": stop})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"].startswith("stop")


# --- What real clients send: content parts, the developer role -----------------------------


def chat_body(model: str, content, **extra) -> dict:
    return {
        "model": model,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": 8,
        "temperature": 0,
        **extra,
    }


def test_text_parts_are_read_as_the_string_they_join_to(sdk, model):
    parts = [{"type": "text", "text": "Name a "}, {"type": "text", "text": "fruit."}]
    from_parts = sdk.chat.completions.create(**chat_body(model, parts))
    from_string = sdk.chat.completions.create(**chat_body(model, "Name a fruit."))
    assert from_parts.usage.prompt_tokens == from_string.usage.prompt_tokens
    assert from_parts.choices[0].message.content == from_string.choices[0].message.content


@pytest.mark.parametrize(
    "part",
    [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
        {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
        {"type": "file", "file": {"file_id": "file-1"}},
    ],
)
def test_a_part_other_than_text_is_refused_naming_it(sdk, model, part):
    content = [{"type": "text", "text": "What is this?"}, part]
    with pytest.raises(openai.BadRequestError) as raised:
        sdk.chat.completions.create(**chat_body(model, content))
    assert raised.value.body["param"] == "messages[0].content[1].type"
    assert part["type"] in raised.value.body["message"]


def test_a_developer_message_is_read_as_a_system_message(sdk, model, server):
    def prompt_tokens(role: str) -> int:
        messages = [
            {"role": role, "content": "Answer in French."},
            {"role": "user", "content": "Say hello."},
        ]
        answer = sdk.chat.completions.create(model=model, messages=messages, max_tokens=2)
        return answer.usage.prompt_tokens

    expected = server.count_tokens(format_prompt("Say hello.", "System: Answer in French."))
    assert prompt_tokens("developer") == prompt_tokens("system") == expected


# --- Nothing silently ignored -----------------------------------------------------------------

TOOL = {
    "type": "function",
    "function": {"name": "weather", "parameters": {"type": "object", "properties": {}}},
}


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("tools", [TOOL]),
        ("tool_choice", "required"),
        ("functions", [TOOL["function"]]),
        ("function_call", "auto"),
        ("parallel_tool_calls", True),
        ("logit_bias", {"50": -100}),
        ("audio", {"voice": "alloy", "format": "wav"}),
        ("modalities", ["text", "audio"]),
        ("prediction", {"type": "content", "content": "Paris"}),
    ],
)
def test_a_chat_field_that_would_change_the_answer_is_refused_naming_it(sdk, model, field, value):
    with pytest.raises(openai.BadRequestError) as raised:
        sdk.chat.completions.create(**chat_body(model, "hi"), extra_body={field: value})
    assert raised.value.body["param"] == field
    assert raised.value.body["code"] == "unsupported_parameter"
    assert field in raised.value.body["message"]


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"suffix": "The end."}, "suffix"),
        ({"logit_bias": {"50": 5}}, "logit_bias"),
        ({"best_of": 3}, "best_of"),
        ({"echo": True, "logprobs": 1}, "echo"),
        ({"logprobs": 6}, "logprobs"),
        ({"prompt": ["one", "two"]}, "prompt"),
    ],
)
def test_a_completion_field_that_is_not_supported_is_refused_naming_it(
    client, model, fields, param
):
    body = {"model": model, "prompt": "Once", "max_tokens": 2, **fields}
    response = client.post("/v1/completions", json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


def test_fields_that_ask_for_nothing_are_accepted(sdk, model):
    nothing = {"tools": [], "tool_choice": "none", "logit_bias": {}, "modalities": ["text"]}
    answer = sdk.chat.completions.create(**chat_body(model, "hi"), extra_body=nothing)
    assert answer.choices[0].finish_reason in ("stop", "length")
    same = sdk.completions.create(model=model, prompt="Once", max_tokens=2, best_of=1, n=1)
    assert same.choices[0].text is not None


def test_sampling_extras_reach_the_engine(scripted_server):
    model = scripted_server.settings.served_model_name
    extras = {
        "presence_penalty": 0.5,
        "frequency_penalty": -0.5,
        "min_tokens": 2,
        "top_k": 7,
        "repetition_penalty": 1.3,
    }
    response = scripted_server.client.post(
        "/v1/chat/completions", json=chat_body(model, "Sample me.", **extras)
    )
    assert response.status_code == 200, response.text
    options = scripted_server.engine.requests[-1].options
    assert {name: getattr(options, name) for name in extras} == extras


def test_a_presence_penalty_changes_a_greedy_answer(tiny_server):
    with openai.OpenAI(base_url=f"{tiny_server.url}/v1", api_key="x", max_retries=0) as sdk:
        body = chat_body("tiny", "Repeat yourself.", max_tokens=32)
        body["model"] = sdk.models.list().data[0].id
        plain = sdk.chat.completions.create(**body).choices[0].message.content
        penalised = sdk.chat.completions.create(**body, presence_penalty=2.0, frequency_penalty=2.0)
    assert penalised.choices[0].message.content != plain


def test_an_unknown_field_is_logged_once_and_ignored(client, model, server):
    name = f"x_unknown_{uuid.uuid4().hex[:8]}"
    for _ in range(2):
        response = client.post("/v1/chat/completions", json={**chat_body(model, "hi"), name: 1})
        assert response.status_code == 200, response.text
    log = wait_for(lambda: name in server.log_text() and server.log_text())
    assert log.count(name) == 1


def test_unknown_field_names_are_logged_up_to_a_bound_not_kept_forever(caplog):
    # One 1 MB body can hold 80,000 distinct names: neither the set nor the log may grow with it.
    fields = UnknownFields(limit=5)
    with caplog.at_level("WARNING", logger="alpaca.server"):
        fields.note(f"x_{i}" for i in range(1000))
        fields.note(["y" * 10_000, "x_1", "z"])
    assert fields.logged == {f"x_{i}" for i in range(5)}
    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 6, messages
    assert "later ones are ignored without a word" in messages[-1]


# --- Errors and headers as clients expect --------------------------------------------------------


def test_usage_comes_in_a_last_chunk_only_when_asked_for(sdk, model):
    body = chat_body(model, "Count to three.")
    whole = sdk.chat.completions.create(**body)
    plain = list(sdk.chat.completions.create(**body, stream=True))
    assert all(chunk.usage is None for chunk in plain)
    asked = list(
        sdk.chat.completions.create(**body, stream=True, stream_options={"include_usage": True})
    )
    assert asked[-1].choices == []
    assert asked[-1].usage.model_dump() == whole.usage.model_dump()
    assert all(chunk.usage is None for chunk in asked[:-1])
    completion = list(
        sdk.completions.create(
            model=model,
            prompt="Once",
            max_tokens=4,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert completion[-1].choices == [] and completion[-1].usage.completion_tokens == 4


def test_a_sane_request_id_is_kept_and_the_generation_id_derives_from_it(client, model):
    sent = f"trace-{uuid.uuid4().hex[:12]}:1.a_b"
    response = client.post(
        "/v1/chat/completions", json=chat_body(model, "hi"), headers={"X-Request-Id": sent}
    )
    assert response.headers["X-Request-Id"] == sent
    generation_id = response.json()["id"]
    assert re.fullmatch(re.escape(sent) + r"-[0-9a-f]{8}", generation_id)
    rated = client.post("/feedback", json={"generation_id": generation_id, "rating": "up"})
    assert rated.status_code == 201, rated.text
    again = client.post(
        "/generate", json={"instruction": "hi", "max_new_tokens": 2}, headers={"X-Request-Id": sent}
    )
    assert again.headers["X-Request-Id"] == sent
    assert again.json()["id"].startswith(sent + "-") and again.json()["id"] != generation_id


@pytest.mark.parametrize("sent", ["has space", "x" * 129, "semi;colon", "ünï"])
def test_an_insane_request_id_is_replaced_by_a_fresh_one(client, sent):
    response = client.post(
        "/generate",
        json={"instruction": "hi", "max_new_tokens": 2},
        headers={"X-Request-Id": sent.encode("utf-8")},
    )
    fresh = response.headers["X-Request-Id"]
    assert fresh != sent and re.fullmatch(r"gen-[0-9a-f]{32}", fresh)
    assert response.json()["id"] == fresh


# --- Several choices -------------------------------------------------------------------------


def test_n_choices_are_each_their_own_generation_to_rate(sdk, model, client):
    body = chat_body(model, "Name a colour.", max_tokens=6, temperature=1.0, seed=7)
    answer = sdk.chat.completions.create(**body, n=3)
    assert [choice.index for choice in answer.choices] == [0, 1, 2]
    single = sdk.chat.completions.create(**body)
    assert answer.choices[0].message.content == single.choices[0].message.content
    assert answer.usage.prompt_tokens == single.usage.prompt_tokens
    ids = [answer.id, f"{answer.id}-1", f"{answer.id}-2"]
    for generation_id in ids:
        rated = client.post("/feedback", json={"generation_id": generation_id, "rating": "up"})
        assert rated.status_code == 201, (generation_id, rated.text)


def test_n_completions_count_every_choices_tokens(sdk, model):
    answer = sdk.completions.create(model=model, prompt="Once", max_tokens=5, n=2, temperature=0)
    assert len(answer.choices) == 2
    assert all(choice.finish_reason == "length" for choice in answer.choices)
    assert answer.usage.completion_tokens == 10


def test_streamed_choices_carry_their_index_and_add_up_to_each_answer(sdk, model):
    body = chat_body(model, "Tell a story.", max_tokens=12)
    whole = sdk.chat.completions.create(**body, n=2)
    chunks = list(sdk.chat.completions.create(**body, n=2, stream=True))
    for index in (0, 1):
        mine = [c.choices[0] for c in chunks if c.choices and c.choices[0].index == index]
        assert mine[0].delta.role == "assistant"
        assert "".join(c.delta.content or "" for c in mine) == whole.choices[index].message.content
        assert mine[-1].finish_reason == "length"


def test_n_above_the_servers_limit_is_refused(sdk, model, client):
    assert client.get("/info").json()["limits"]["max_choices"] == 4
    with pytest.raises(openai.BadRequestError) as raised:
        sdk.chat.completions.create(**chat_body(model, "hi"), n=5)
    assert raised.value.body["param"] == "n"
    assert "4" in raised.value.body["message"]


def test_n_choices_take_n_places_in_admission(request, tmp_path):
    own = start_server(
        request,
        "scripted",
        {"ALPACA_MAX_CONCURRENT": "2", "ALPACA_MAX_QUEUE": "1"},
        tmp_path,
    )
    try:
        own.engine.delay_s = 0.05
        model = own.settings.served_model_name
        body = chat_body(model, "Take your time.", max_tokens=40, n=2)
        with own.client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}):
            assert wait_for(lambda: own.runtime.admission.active == 2, 5)
            # One place is left (in the queue): two more choices do not fit, one does.
            refused = own.client.post("/v1/chat/completions", json=body)
            assert refused.status_code == 429, refused.text
            too_many = own.client.post("/v1/chat/completions", json={**body, "n": 3})
            assert too_many.status_code == 400
            assert too_many.json()["error"]["param"] == "n"
        own.engine.delay_s = 0
        # The stream's client has left: its two places come free once the server notices.
        admission = own.runtime.admission
        assert wait_for(lambda: admission.active + admission.waiting == 0, 10)
        fits = own.client.post("/v1/chat/completions", json={**body, "max_tokens": 2})
        assert fits.status_code == 200, fits.text
    finally:
        own.stop()


# --- Log-probabilities -------------------------------------------------------------------------


def test_chat_logprobs_give_each_tokens_logprob_and_its_top_alternatives(sdk, model):
    body = chat_body(model, "Describe the sea.", max_tokens=10, logprobs=True, top_logprobs=3)
    answer = sdk.chat.completions.create(**body)
    content = answer.choices[0].logprobs.content
    assert len(content) == answer.usage.completion_tokens
    for entry in content:
        assert entry.logprob <= 0
        assert entry.bytes == list(entry.token.encode())
        assert len(entry.top_logprobs) == 3
        values = [top.logprob for top in entry.top_logprobs]
        assert values == sorted(values, reverse=True)
        # Greedy decoding picks the likeliest token.
        assert entry.top_logprobs[0].token == entry.token
        assert entry.top_logprobs[0].logprob == pytest.approx(entry.logprob)
    streamed = list(sdk.chat.completions.create(**body, stream=True))
    tokens = [
        t
        for c in streamed
        if c.choices and c.choices[0].logprobs
        for t in c.choices[0].logprobs.content
    ]
    assert [(t.token, round(t.logprob, 4)) for t in tokens] == [
        (t.token, round(t.logprob, 4)) for t in content
    ]


def test_chat_without_logprobs_has_none(sdk, model):
    answer = sdk.chat.completions.create(**chat_body(model, "hi"))
    assert answer.choices[0].logprobs is None
    with pytest.raises(openai.BadRequestError) as raised:
        sdk.chat.completions.create(**chat_body(model, "hi"), top_logprobs=2)
    assert raised.value.body["param"] == "top_logprobs"


def test_completion_logprobs_take_openais_completion_shape(sdk, model):
    answer = sdk.completions.create(
        model=model, prompt="The sky is", max_tokens=6, temperature=0, logprobs=2
    )
    logprobs = answer.choices[0].logprobs
    count = answer.usage.completion_tokens
    assert len(logprobs.tokens) == len(logprobs.token_logprobs) == count
    assert len(logprobs.top_logprobs) == len(logprobs.text_offset) == count
    rows = zip(logprobs.tokens, logprobs.token_logprobs, logprobs.top_logprobs, strict=True)
    for token, value, top in rows:
        assert top[token] == pytest.approx(value)
        assert 2 <= len(top) <= 3  # the top 2 and the sampled token
    assert logprobs.text_offset[0] == 0
    assert logprobs.text_offset == sorted(logprobs.text_offset)


def test_echo_puts_the_prompt_before_the_answer(sdk, model):
    body = {"model": model, "prompt": "Once upon a time", "max_tokens": 4, "temperature": 0}
    plain = sdk.completions.create(**body).choices[0].text
    echoed = sdk.completions.create(**body, echo=True).choices[0].text
    assert echoed == "Once upon a time" + plain
    chunks = list(sdk.completions.create(**body, echo=True, stream=True))
    assert chunks[0].choices[0].text == "Once upon a time"
    assert "".join(c.choices[0].text for c in chunks) == echoed


# --- Structured output -------------------------------------------------------------------------

COLOUR_SCHEMA = {
    "type": "object",
    "properties": {
        "colour": {"enum": ["red", "green", "blue"]},
        "count": {"type": "integer", "minimum": 0, "maximum": 9},
    },
    "required": ["colour", "count"],
    "additionalProperties": False,
}


def test_a_json_schema_answer_parses_and_validates(sdk, model):
    answer = sdk.chat.completions.create(
        **chat_body(model, "Pick a colour and a count.", max_tokens=64),
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "pick", "schema": COLOUR_SCHEMA},
        },
    )
    jsonschema.validate(json.loads(answer.choices[0].message.content), COLOUR_SCHEMA)
    assert answer.choices[0].finish_reason == "stop"


def test_a_streamed_json_schema_answer_parses_and_validates(sdk, model):
    chunks = sdk.chat.completions.create(
        **chat_body(model, "Pick a colour and a count.", max_tokens=64),
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "pick", "schema": COLOUR_SCHEMA},
        },
        stream=True,
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    jsonschema.validate(json.loads(text), COLOUR_SCHEMA)


def test_a_json_object_answer_is_a_json_object(sdk, model):
    answer = sdk.chat.completions.create(
        **chat_body(model, "Describe a cat as JSON.", max_tokens=64),
        response_format={"type": "json_object"},
    )
    text, finish = answer.choices[0].message.content, answer.choices[0].finish_reason
    assert text.startswith("{")
    # A random tiny model may still be inside a string when the budget ends; a finished answer
    # is a whole object.
    if finish == "stop":
        assert isinstance(json.loads(text), dict)


@pytest.mark.parametrize(
    ("schema", "words"),
    [
        ({"type": "colour"}, "not a valid JSON schema"),
        ({"type": "object", "properties": {"a": {"minimum": "zero"}}}, "not a valid JSON schema"),
        ({"type": "string", "pattern": "(?<=a)b"}, "ookbehind"),
    ],
)
def test_a_schema_the_backend_cannot_compile_is_refused_naming_the_problem(
    sdk, model, schema, words
):
    with pytest.raises(openai.BadRequestError) as raised:
        sdk.chat.completions.create(
            **chat_body(model, "hi"),
            response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}},
        )
    assert raised.value.body["param"] == "response_format"
    assert words in raised.value.body["message"]


# --- Tokenizer routes --------------------------------------------------------------------------


def test_tokenize_counts_a_prompt_as_the_engine_does(client, server):
    answer = client.post("/tokenize", json={"prompt": "Hello there, world."}).json()
    assert answer["count"] == len(answer["tokens"]) == server.count_tokens("Hello there, world.")
    assert answer["max_model_len"] == client.get("/info").json()["limits"]["max_model_len"]


def test_tokenize_counts_a_chat_as_the_chat_route_sends_it(client, sdk, model):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Name a river."}]},
    ]
    counted = client.post("/tokenize", json={"model": model, "messages": messages}).json()
    answer = sdk.chat.completions.create(model=model, messages=messages, max_tokens=2)
    assert counted["count"] == answer.usage.prompt_tokens


def test_detokenize_gives_back_the_text_of_tokens(client):
    tokens = client.post(
        "/tokenize", json={"prompt": "A small test.", "add_special_tokens": False}
    ).json()["tokens"]
    assert client.post("/detokenize", json={"tokens": tokens}).json() == {"prompt": "A small test."}


@pytest.mark.parametrize(
    ("path", "body", "status", "param"),
    [
        ("/detokenize", {"tokens": [-1]}, 400, "tokens"),
        ("/detokenize", {"tokens": [1], "model": "other"}, 404, "model"),
        (
            "/tokenize",
            {"prompt": "a", "messages": [{"role": "user", "content": "b"}]},
            400,
            "prompt",
        ),
        ("/tokenize", {"prompt": 5}, 400, "prompt"),
    ],
)
def test_tokenizer_routes_refuse_bad_requests_as_vllm_does(client, path, body, status, param):
    response = client.post(path, json=body)
    assert response.status_code == status, response.text
    assert response.json()["error"]["param"] == param


def test_tokenizer_routes_have_the_bounds_generate_has(client):
    limit = client.get("/info").json()["limits"]["max_prompt_chars"]
    context = client.get("/info").json()["limits"]["max_model_len"]
    cases = [
        (
            "/tokenize",
            {"prompt": "a" * (limit + 1)},
            "prompt",
            f"above this server's limit of {limit}",
        ),
        (
            "/tokenize",
            {"messages": [{"role": "user", "content": "a" * (limit + 1)}]},
            "messages",
            f"{limit + 1} characters",
        ),
        ("/detokenize", {"tokens": [1] * (context + 1)}, "tokens", f"context of {context}"),
    ]
    for path, body, param, words in cases:
        response = client.post(path, json=body)
        assert response.status_code == 400, response.text
        assert response.json()["error"]["param"] == param
        assert words in response.json()["error"]["message"]
    assert client.post("/tokenize", json={"prompt": "a" * limit}).status_code == 200
