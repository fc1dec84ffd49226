"""A fake judge for the tests of `alpaca-eval judge` and `alpaca-loop`: a small OpenAI-compatible
HTTP server in the test's own process, whose replies, failures and pace a `JudgeScript` decides."""

from __future__ import annotations

import contextlib
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def instruction_of(prompt: str) -> str:
    """The instruction a judge prompt asks about."""
    found = re.search(r"### Instruction:\n(.*)\n", prompt)
    return found.group(1) if found else ""


class JudgeScript:
    """What the fake judge answers, and what it saw. `respond(prompt, number)` gives the reply
    text, or an HTTP status to fail with (sent with `Retry-After: retry_after`); the first
    `gather` requests are each held until that many are in flight at once (or 10 s pass, which
    `gather_timeouts` counts: a test of concurrency expects none)."""

    def __init__(self, respond: Callable[[str, int], str | int] = lambda prompt, number: "A"):
        self.respond = respond
        self.retry_after = "1"
        self.gather = 0
        self.prompts: list[str] = []  # every prompt received, in order of arrival
        self.requests: list[tuple[float, str, int]] = []  # (time, instruction, status)
        self.in_flight = 0
        self.most_in_flight = 0
        self.gather_timeouts = 0  # held requests released by the 10 s limit, not by company
        self._lock = threading.Lock()
        self._started = 0
        self._all_in = threading.Event()

    def answer(self, prompt: str) -> tuple[int, str]:
        with self._lock:
            number = self._started
            self._started += 1
            self.prompts.append(prompt)
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
            if self.in_flight >= self.gather:
                self._all_in.set()
        try:
            if number < self.gather and not self._all_in.wait(10):
                with self._lock:
                    self.gather_timeouts += 1
            reply = self.respond(prompt, number)
            status = reply if isinstance(reply, int) else 200
            with self._lock:
                self.requests.append((time.monotonic(), instruction_of(prompt), status))
            return status, reply if status == 200 else ""
        finally:
            with self._lock:
                self.in_flight -= 1

    def asked(self) -> list[str]:
        """The instructions the judge answered (200), in the order it answered them."""
        return [instruction for _, instruction, status in self.requests if status == 200]


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        self._send(200, {"object": "list", "data": [{"id": "fake-judge", "object": "model"}]})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        status, text = self.server.script.answer(body["messages"][0]["content"])
        if status != 200:
            error = {"error": {"message": "scripted failure", "type": "server_error"}}
            self._send(status, error, {"Retry-After": self.server.script.retry_after})
            return
        message = {"role": "assistant", "content": text}
        self._send(200, {"choices": [{"index": 0, "message": message}]})

    def _send(self, status: int, payload: dict, headers: dict | None = None):
        data = json.dumps(payload).encode()
        self.send_response(status)
        for name, value in {"Content-Type": "application/json", **(headers or {})}.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def running_judge(script: JudgeScript) -> Iterator[str]:
    """Serve `script` on a free local port; yields the judge's base URL (ending in /v1)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    server.script = script
    # A short poll interval: shutdown() waits up to one of them.
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/v1"
    finally:
        server.shutdown()
        server.server_close()
