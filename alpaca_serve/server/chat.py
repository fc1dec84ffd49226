"""Chat messages as an Alpaca request: the last user message is the instruction, the earlier
turns the input.

Usage (the OpenAI chat route, /tokenize):
    instruction, context = alpaca_fields(messages)   # raises ChatError naming the message

A message's `content` is a string or a list of content parts; `text` parts are joined (without
a separator, as OpenAI's own models see them); any other part (image_url, input_audio, file,
...) is refused, naming it: this model reads text only. `developer` messages are system
messages under OpenAI's newer name. Earlier messages become `Role: content` lines (Developer
turns read as System), so the with-input template carries the conversation so far.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class ChatError(ValueError):
    """A message this server cannot take; `param` says where (`messages[2].content[1]`)."""

    def __init__(self, message: str, param: str):
        super().__init__(message)
        self.message = message
        self.param = param


class ContentPart(BaseModel):
    """One part of a message's content; only `text` parts are read."""

    model_config = ConfigDict(extra="allow")

    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = None
    name: str | None = Field(None, description="accepted and not used")


# Message fields that would change the answer and that this server does not support.
REFUSED_MESSAGE_FIELDS = ("tool_calls", "function_call", "tool_call_id", "audio")


def message_text(message: ChatMessage, index: int) -> str:
    """The text of one message: the string, or its text parts joined."""
    where = f"messages[{index}]"
    for name in REFUSED_MESSAGE_FIELDS:
        if (message.model_extra or {}).get(name):
            raise ChatError(f"{where}.{name}: tool and function calls are not supported", where)
    if message.content is None:
        if message.role == "assistant":
            return ""
        raise ChatError(f"{where}.content is required for a {message.role} message", where)
    if isinstance(message.content, str):
        return message.content
    texts = []
    for position, part in enumerate(message.content):
        if part.type != "text":
            raise ChatError(
                f"{where}.content[{position}] is a {part.type!r} part; this model reads text "
                f"only, so only 'text' parts are supported",
                f"{where}.content[{position}].type",
            )
        if part.text is None:
            raise ChatError(
                f"{where}.content[{position}] is a text part without text",
                f"{where}.content[{position}].text",
            )
        texts.append(part.text)
    return "".join(texts)


def alpaca_fields(messages: list[ChatMessage]) -> tuple[str, str]:
    """(instruction, input) of a conversation: the last (user) message and the turns before."""
    texts = [message_text(message, index) for index, message in enumerate(messages)]
    *history, last = messages
    if last.role != "user":
        raise ChatError("the last message must come from the user", "messages")
    context = "\n".join(
        f"{_speaker(message.role)}: {text}"
        for message, text in zip(history, texts[:-1], strict=True)
    )
    return texts[-1], context


def _speaker(role: str) -> str:
    return "System" if role == "developer" else role.capitalize()
