"""What the demo's Chat tab does: stream an answer, save a like or dislike, save a flag.

Usage:
    chat = ChatHandlers(AsyncAlpacaClient("http://127.0.0.1:8000"))
    async for history, ids, instruction_box in chat.respond("Name a colour.", "", 0.1, 0.75, 64,
                                                            history=[], ids={}): ...
    status = await chat.on_like(ids, gr.LikeData(None, {"index": 1, "value": "", "liked": True}),
                                request)
    status = await chat.on_flag("harmful", ids, request)

`build_demo` wires these to the page; each handler takes the components' values and returns (or
yields) the new ones, so they can be called without a browser. `ids` maps the chat's message
index to the generation id of the answer shown there: what a rating is about.
"""

# No `from __future__ import annotations`: Gradio reads the `gr.Request` hints at run time.

from collections.abc import AsyncIterator
from typing import Any

import gradio as gr

from alpaca_serve.client.api import AsyncAlpacaClient
from alpaca_serve.client.errors import APIRequestError, describe_error
from alpaca_serve.core.project_model import PROJECT_MODEL_NAME

# What the user may flag an answer as, and the server's category for it.
FLAGS = {"harmful": "harmful", "false information": "incorrect", "other": "other"}
KEY_HINT = "set ALPACA_DEMO_API_KEY"  # where the demo's API key comes from


def session_of(request: gr.Request | None) -> str:
    """The feedback session of the browser tab behind `request`: its answers are asked under it
    (only it may then rate them or vote on them) and its feedback is sent under it."""
    return f"ui-{request.session_hash}" if request is not None and request.session_hash else "ui"


def visitor_of(request: gr.Request | None) -> str | None:
    """The address of the person behind `request`, which the server counts feedback limits by
    (it believes the demo's key only, which the server made)."""
    client = getattr(request, "client", None) if request is not None else None
    return getattr(client, "host", None) or None


def sentence(err: APIRequestError) -> str:
    """`err` as the demo shows it."""
    return describe_error(err, key_hint=KEY_HINT)


class ChatHandlers:
    """The Chat tab's event handlers, talking to one server."""

    def __init__(self, client: AsyncAlpacaClient):
        self.client = client

    async def respond(
        self,
        instruction: str,
        input_text: str,
        temperature: float,
        top_p: float,
        max_new_tokens: float,
        history: list[dict[str, str]] | None,
        ids: dict[int, str] | None,
        model: str | None = None,
        request: gr.Request | None = None,
    ) -> AsyncIterator[tuple[list[dict[str, str]], dict[int, str], str]]:
        """Stream the answer to `instruction` into the chat: yields (history, ids, the
        instruction box's new text) as the answer grows; an error becomes the answer's text.
        `model` is the model picked (the base or a served adapter); None: the server's base."""
        history = list(history or [])
        ids = dict(ids or {})
        if not instruction or not instruction.strip():
            yield history, ids, instruction
            return
        shown = instruction if not input_text else f"{instruction}\n\n{input_text}"
        history += [{"role": "user", "content": shown}, {"role": "assistant", "content": ""}]
        answer = len(history) - 1  # the index of the answer's message
        yield history, ids, ""
        try:
            async for event in self.client.stream_generate(
                instruction,
                input_text or "",
                temperature=float(temperature),
                top_p=float(top_p),
                max_new_tokens=int(max_new_tokens),
                model=model or None,
                session_id=session_of(request),
            ):
                ids[answer] = event["id"]
                if event.get("text"):
                    history[answer]["content"] += event["text"]
                    yield history, ids, ""
                if event.get("finish_reason") == "content_filter":
                    history[answer]["content"] += _withheld_note(event)
        except APIRequestError as err:
            history[answer]["content"] = f"⚠️ {sentence(err)}"
        if not history[answer]["content"]:
            history[answer]["content"] = "*(the model gave an empty answer)*"
        yield history, ids, ""

    async def model_choices(self) -> dict[str, Any]:
        """The model picker's update: every model the server serves (the base first, then its
        LoRA adapters), the project's Alpaca model picked when served, else the base; unchanged
        when the server cannot say."""
        try:
            names = [model["id"] for model in await self.client.models()]
        except APIRequestError:
            return gr.update()
        picked = PROJECT_MODEL_NAME if PROJECT_MODEL_NAME in names else names[0] if names else None
        return gr.update(choices=names, value=picked)

    async def on_like(
        self, ids: dict[int, str] | None, data: gr.LikeData, request: gr.Request
    ) -> str:
        """Save a like or dislike of the answer at `data.index`; the status line to show."""
        generation_id = (ids or {}).get(data.index)
        if generation_id is None:
            return "Only answers that finished can be rated."
        rating = "up" if data.liked is True or data.liked == "Like" else "down"
        try:
            await self.client.send_rating(
                generation_id, rating, session_of(request), visitor=visitor_of(request)
            )
        except APIRequestError as err:
            return f"⚠️ Your rating was not saved: {sentence(err)}"
        return f"Thanks: your {'like' if rating == 'up' else 'dislike'} was saved."

    async def on_flag(
        self, choice: str | None, ids: dict[int, str] | None, request: gr.Request
    ) -> str:
        """Save the last answer as flagged `choice` (a key of FLAGS); the status line to show."""
        if not choice:
            return "Choose what is wrong with the answer first."
        if not ids:
            return "There is no answer to flag yet."
        generation_id = ids[max(ids)]
        try:
            await self.client.send_rating(
                generation_id,
                "down",
                session_of(request),
                flag=FLAGS[choice],
                visitor=visitor_of(request),
            )
        except APIRequestError as err:
            return f"⚠️ Your flag was not saved: {sentence(err)}"
        return f"Thanks: the last answer was flagged as {choice}."


def _withheld_note(event: dict[str, Any]) -> str:
    category = event.get("filter", {}).get("category", "unknown")
    return f"\n\n*[The rest of this answer was withheld by the content filter: {category}.]*"
