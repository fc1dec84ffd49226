"""Content filters in a running server: input refused before the engine, streams cut mid-answer."""

from __future__ import annotations

import json
import os
import re

import pytest

from tests.support import LAYERS, read_metrics, start_server, stream_events, wait_for

FILTERS = [
    {
        "factory": "tests.server.filter_plugins:keyword",
        "options": {"keyword": "forbidden-topic", "category": "custom"},
    },
    {"factory": "tests.server.filter_plugins:crashing", "options": {"trigger": "crash-me"}},
    {
        "factory": "tests.server.filter_plugins:crashing",
        "options": {"trigger": "crash-open"},
        "fail_open": True,
        "name": "lenient",
    },
    {
        "factory": "tests.server.filter_plugins:slow",
        "options": {"trigger": "hang-me"},
        "timeout_s": 0.3,
    },
]


@pytest.fixture(scope="module", params=LAYERS)
def filtered_server(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp("filtered")
    blocklist = folder / "blocklist.txt"
    blocklist.write_text("# test blocklist\nviolence: smash the window\n")
    env = {
        "ALPACA_BLOCKLIST": str(blocklist),
        "ALPACA_FILTERS": json.dumps(FILTERS),
    }
    server = start_server(request, request.param, env, folder)
    server.blocklist = blocklist
    try:
        yield server
    finally:
        server.stop()


def blocks(metrics, hook, category):
    return metrics.get(f"alpaca_filter_blocks_total{{category={category},hook={hook}}}", 0)


def test_a_blocklisted_instruction_is_refused_with_its_category_and_never_reaches_the_engine(
    filtered_server,
):
    client = filtered_server.client
    before = read_metrics(client)
    response = client.post("/generate", json={"instruction": "How do I SMASH the window?"})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "content_filter"
    assert error["category"] == "violence"
    assert error["param"] == "instruction"
    assert "violence" in error["message"]
    assert "smash" not in error["message"].lower()  # which entry matched stays in the log
    after = read_metrics(client)
    assert blocks(after, "input", "violence") == blocks(before, "input", "violence") + 1
    assert after["alpaca_requests_total{outcome=blocked}"] == (
        before["alpaca_requests_total{outcome=blocked}"] + 1
    )
    # The engine saw nothing: no prompt tokens, no first token.
    assert after["alpaca_prompt_tokens_total"] == before["alpaca_prompt_tokens_total"]
    assert (
        after["alpaca_time_to_first_token_seconds_count"]
        == (before["alpaca_time_to_first_token_seconds_count"])
    )


def test_the_input_field_and_raw_prompts_are_filtered_too(filtered_server):
    client = filtered_server.client
    body = {"instruction": "Repeat.", "input": "smash the window"}
    by_input = client.post("/generate", json=body)
    assert by_input.status_code == 400
    by_prompt = client.post("/generate", json={"prompt": "then smash the window"})
    assert by_prompt.status_code == 400
    assert by_prompt.json()["error"]["param"] == "prompt"


def test_a_custom_filter_loaded_from_an_import_path_blocks(filtered_server):
    response = filtered_server.client.post(
        "/generate", json={"instruction": "Tell me about forbidden-topic."}
    )
    assert response.status_code == 400
    assert response.json()["error"]["category"] == "custom"


def test_a_crashing_filter_blocks_and_is_counted(filtered_server):
    client = filtered_server.client
    before = read_metrics(client)
    response = client.post("/generate", json={"instruction": "please crash-me"})
    assert response.status_code == 400
    assert response.json()["error"]["category"] == "filter_error"
    after = read_metrics(client)
    key = "alpaca_filter_failures_total{filter=crashing,hook=input,kind=error}"
    assert after[key] == before.get(key, 0) + 1
    assert "the classifier crashed" in filtered_server.log_text()


def test_a_filter_that_times_out_blocks(filtered_server):
    response = filtered_server.client.post("/generate", json={"instruction": "hang-me please"})
    assert response.status_code == 400
    assert response.json()["error"]["category"] == "filter_error"
    assert "longer than 0.3s" in response.json()["error"]["message"]


def test_a_fail_open_filter_lets_the_request_through_when_it_crashes(filtered_server):
    client = filtered_server.client
    response = client.post("/generate", json={"instruction": "crash-open", "max_new_tokens": 2})
    assert response.status_code == 200, response.text
    metrics = read_metrics(client)
    assert metrics["alpaca_filter_failures_total{filter=lenient,hook=input,kind=error}"] >= 1


def _word_to_block(text: str) -> str:
    words = [w for w in re.findall(r"[A-Za-z]{4,}", text)]
    assert len(words) >= 4, text
    return words[len(words) // 2]


def test_a_streamed_answer_that_hits_the_blocklist_is_cut_and_ends_with_the_reason(
    filtered_server,
):
    client = filtered_server.client
    body = {"instruction": "Tell me a story.", "max_new_tokens": 120, "temperature": 0}
    full = client.post("/generate", json=body).json()["text"]
    word = _word_to_block(full)
    # The blocklist is a user-editable file: the running server picks up the new entry.
    filtered_server.blocklist.write_text(
        f"violence: smash the window\nspoiler: re:{re.escape(word)}\n"
    )
    os.utime(filtered_server.blocklist, (3, 3))
    before = read_metrics(client)

    response, events = stream_events(client, body)
    assert response.status_code == 200
    assert events[-1] == "[DONE]"
    final = events[-2]
    assert final["finish_reason"] == "content_filter"
    assert final["filter"]["category"] == "spoiler"
    assert word not in final["filter"]["reason"]  # the entry is the operator's to know
    sent = "".join(event["text"] for event in events[:-2])
    # The client got the answer up to the blocked word, at most part of the word itself.
    assert word not in sent
    assert full.startswith(sent)
    assert len(sent) < full.index(word) + len(word)

    after = wait_for(
        lambda: (m := read_metrics(client))["alpaca_num_requests_running"] == 0 and m, 10
    )
    assert blocks(after, "output", "spoiler") == blocks(before, "output", "spoiler") + 1
    # Generation stopped at the block rather than running to max_new_tokens.
    assert after["alpaca_generation_tokens_total"] - before["alpaca_generation_tokens_total"] < 120

    # The same cut without streaming: the answer up to the block, and why.
    answer = client.post("/generate", json=body).json()
    assert answer["finish_reason"] == "content_filter"
    assert answer["filter"]["category"] == "spoiler"
    assert answer["text"] == sent

    # The generation log keeps the cut answer and the verdict that cut it.
    from alpaca_serve.feedback import default_database_url, open_store

    def recorded():
        with open_store(default_database_url(filtered_server.data_dir)) as store:
            return {row["generation_id"]: row for row in store.export_rows(include_unrated=True)}

    row = wait_for(lambda: recorded().get(answer["id"]), 10)
    assert row["finish_reason"] == "content_filter"
    assert row["output"] == sent
    assert {
        "filter": "blocklist",
        "hook": "output",
        "allowed": False,
        "category": "spoiler",
        "reason": answer["filter"]["reason"],
        "detail": f"blocklist entry 're:{re.escape(word)}'",
        "failed": False,
    } in row["filter_verdicts"]


def test_a_blocked_chat_is_the_sdks_bad_request_with_the_filters_category(filtered_server):
    import openai

    client = filtered_server.client
    model = client.get("/v1/models").json()["data"][0]["id"]
    with openai.OpenAI(base_url=f"{filtered_server.url}/v1", api_key="x", max_retries=0) as sdk:
        with pytest.raises(openai.BadRequestError) as raised:
            sdk.chat.completions.create(
                model=model, messages=[{"role": "user", "content": "Smash the window now."}]
            )
    error = raised.value.body
    assert (error["type"], error["code"], error["category"]) == (
        "content_filter",
        "content_filter",
        "violence",
    )
