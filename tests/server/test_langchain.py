"""LangChain's `ChatOpenAI`, a framework many applications reach models through, against the real
engine: invoke and stream, n choices and logprobs, structured output, refused tools. It is built on
the `openai` SDK, which test_openai_clients.py runs on both layers; importing LangChain takes
seconds, so this module stays out of the fast layer."""

from __future__ import annotations

from typing import Literal

import jsonschema
import openai
import pytest
from langchain_core.messages import HumanMessage, SystemMessage
from langchain_openai import ChatOpenAI
from pydantic import BaseModel, Field

pytestmark = pytest.mark.slow


@pytest.fixture
def server(tiny_server):
    return tiny_server


@pytest.fixture
def model(server):
    return server.client.get("/v1/models").json()["data"][0]["id"]


@pytest.fixture
def chat(server, model):
    def make(**options) -> ChatOpenAI:
        settings = {"temperature": 0, "max_tokens": 8, **options}
        return ChatOpenAI(
            base_url=f"{server.url}/v1", api_key="unused", model=model, max_retries=0, **settings
        )

    return make


def test_langchain_invokes_and_streams_with_system_and_content_parts(chat, server):
    messages = [
        SystemMessage("Be brief."),
        HumanMessage(
            content=[{"type": "text", "text": "Name a "}, {"type": "text", "text": "tree."}]
        ),
    ]
    reply = chat().invoke(messages)
    assert reply.response_metadata["finish_reason"] in ("stop", "length")
    assert reply.usage_metadata["output_tokens"] >= 1
    streamed = "".join(chunk.content for chunk in chat().stream(messages))
    assert streamed == reply.content
    generation_id = reply.response_metadata["id"]  # the response's id, as LangChain keeps it
    rated = server.client.post("/feedback", json={"generation_id": generation_id, "rating": "up"})
    assert rated.status_code == 201, rated.text


def test_langchain_gets_n_choices_and_logprobs(chat):
    result = chat(n=2, temperature=1.0, seed=3).generate([[HumanMessage("Name a fish.")]])
    assert len(result.generations[0]) == 2
    reply = chat(logprobs=True, top_logprobs=2).invoke([HumanMessage("Name a fish.")])
    content = reply.response_metadata["logprobs"]["content"]
    assert len(content) == reply.usage_metadata["output_tokens"]
    assert all(len(entry["top_logprobs"]) == 2 for entry in content)


class Pick(BaseModel):
    colour: Literal["red", "green", "blue"]
    count: int = Field(ge=0, le=9)


def test_langchain_structured_output_returns_a_valid_object(chat):
    picked = (
        chat(max_tokens=64)
        .with_structured_output(Pick, method="json_schema")
        .invoke("Pick a colour and a count.")
    )
    assert isinstance(picked, Pick)
    jsonschema.validate(picked.model_dump(), Pick.model_json_schema())


def test_langchain_sees_refused_tools_as_a_bad_request(chat):
    def weather(city: str) -> str:
        """The weather in a city."""
        return "sunny"

    with pytest.raises(openai.BadRequestError) as raised:
        chat().bind_tools([weather]).invoke("Weather in Paris?")
    assert raised.value.body["param"] == "tools"
