"""A scripted OpenAI-compatible teacher over real HTTP, for alpaca-generate's tests.

    with ScriptedTeacher(answer=numbered_tasks) as teacher:     # a thread serving 127.0.0.1
        teacher.url                       # "http://127.0.0.1:PORT/v1"
        teacher.faults.extend([(429, {"Retry-After": "1"})])   # the next answers, then scripted
        teacher.requests                  # [(time, path, body)] of every request received

`answer(prompt, number)` writes the text of the answer to the `number`-th completion request
(counted from 0); it returns the text, or (text, finish_reason). The teacher serves
`GET /v1/models`, `POST /v1/completions` and, unless `chat=False`, `POST /v1/chat/completions`;
`completions=False` makes it a chat-only teacher (404 for completions, as OpenAI's chat models
answer). `api_key` makes it refuse other keys with 401; `delay_s` holds every answer that long;
`context` refuses a prompt whose words plus `max_tokens` exceed it, as vLLM and OpenAI refuse a
context overflow.
"""

from __future__ import annotations

import json
import random
import re
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MODEL = "scripted-teacher"


SYLLABLES = "ba ko mi ru se ta vo ne li pa du ge fo zi ha ju ky wo xe qa".split()
WORDS = [a + b for a in SYLLABLES for b in SYLLABLES]  # 400 made-up words, none in a seed task


def task_instruction(number: int, offset: int) -> str:
    """The instruction of task `offset` of answer `number`: eight made-up words drawn for it
    alone, so that no two tasks (and no seed) come near ROUGE-L 0.7."""
    words = random.Random(f"{number}-{offset}").sample(WORDS, 8)
    return "Explain " + " ".join(words) + "."


def unique_tasks(prompt: str, number: int, count: int = 3) -> str:
    """An answer in Alpaca's format that continues the prompt (it ends with `N. Instruction:`)
    with `count` tasks no other answer has."""
    first = int(re.findall(r"(\d+)\. Instruction:$", prompt)[0])
    items = []
    for offset in range(count):
        n = first + offset
        body = (
            f" {task_instruction(number, offset)}\n{n}. Input:\n<noinput>\n"
            f"{n}. Output:\nAn answer to task {number}-{offset}.\n"
        )
        items.append(body if offset == 0 else f"{n}. Instruction:{body}")
    return "###\n".join(items)


class ScriptedTeacher:
    def __init__(
        self,
        answer: Callable[[str, int], Any] = unique_tasks,
        *,
        chat: bool = True,
        completions: bool = True,
        api_key: str | None = None,
        delay_s: float = 0.0,
        max_tokens_limit: int | None = None,
        context: int | None = None,
    ):
        self.answer = answer
        self.chat, self.completions = chat, completions
        self.api_key = api_key
        self.delay_s = delay_s
        self.max_tokens_limit = max_tokens_limit
        self.context = context  # in words of the prompt plus max_tokens
        self.faults: list[tuple[int, dict[str, str]]] = []
        self.requests: list[tuple[float, str, dict[str, Any]]] = []
        self.answered = 0
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/v1"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> ScriptedTeacher:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _respond(self, path: str, headers: Any, body: dict[str, Any]) -> tuple[int, dict, Any]:
        with self._lock:
            self.requests.append((time.monotonic(), path, body))
            if self.api_key and headers.get("Authorization") != f"Bearer {self.api_key}":
                return 401, {}, _error("Incorrect API key provided", "invalid_api_key")
            if path == "/v1/models":
                return 200, {}, {"object": "list", "data": [{"id": MODEL, "object": "model"}]}
            if self.faults:
                status, fault_headers = self.faults.pop(0)
                return status, fault_headers, _error(f"scripted {status}", "scripted")
            chat = path == "/v1/chat/completions"
            if (chat and not self.chat) or (path == "/v1/completions" and not self.completions):
                return 404, {}, _error("This is a chat model, not supported here", "not_found")
            if path not in ("/v1/completions", "/v1/chat/completions"):
                return 404, {}, _error(f"no route {path}", "not_found")
            limit = self.max_tokens_limit
            if limit is not None and body.get("max_tokens", 0) > limit:
                message = f"max_tokens is {body['max_tokens']}, above this server's limit"
                return 400, {}, _error(message, "invalid_request_error", "max_tokens")
            prompt = body["messages"][0]["content"] if chat else body["prompt"]
            asked = len(prompt.split()) + body.get("max_tokens", 0)
            if self.context is not None and asked > self.context:
                message = (
                    f"This model's maximum context length is {self.context} tokens. However, "
                    f"you requested {asked} tokens."
                )
                return 400, {}, _error(message, "invalid_request_error", "messages",
                                       code="context_length_exceeded")  # fmt: skip
            number = self.answered
            self.answered += 1
        result = self.answer(prompt, number)
        text, finish = result if isinstance(result, tuple) else (result, "stop")
        if self.delay_s:
            time.sleep(self.delay_s)
        choice = (
            {"index": 0, "message": {"role": "assistant", "content": text}}
            if chat
            else {"index": 0, "text": text}
        )
        usage = {"prompt_tokens": len(prompt.split()), "completion_tokens": len(text.split())}
        return 200, {}, {"choices": [{**choice, "finish_reason": finish}], "usage": usage}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        teacher = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                self._reply(*teacher._respond(self.path, self.headers, {}))

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                self._reply(*teacher._respond(self.path, self.headers, body))

            def _reply(self, status: int, headers: dict[str, str], payload: Any) -> None:
                data = (payload if isinstance(payload, str) else json.dumps(payload)).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a killed run)

        return Handler


def _error(
    message: str, type_: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}
