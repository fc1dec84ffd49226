"""The demo's client: readable errors, and no dependency on the server's code."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest

from demo.client import DemoError, ServerClient, explain
from tests.conftest import ROOT, free_port


def test_the_demo_never_imports_the_server():
    code = ("import sys, demo.app, demo.main; "
            "print(sorted(m for m in sys.modules if m == 'server' or m.startswith('server.')))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (422, {"error": {"message": "max_new_tokens is 5000, above this server's limit of 1024",
                         "type": "invalid_request_error"}},
         "The request was not accepted: max_new_tokens is 5000"),
        (400, {"error": {"message": "refused", "type": "content_filter", "category": "violence"}},
         "refused by the content filter (violence)"),
        (429, {"error": {"message": "busy"}}, "busy right now"),
        (503, {"error": {"message": "the model is still loading"}},
         "not available right now (the model is still loading)"),
    ],
)
def test_server_errors_become_readable_sentences(status, body, expected):
    assert expected in explain(status, body, "http://server")


def test_a_server_that_is_down_is_reported_plainly():
    client = ServerClient(f"http://127.0.0.1:{free_port()}")

    async def first_event():
        async for event in client.stream_generate({"instruction": "hi"}):
            return event

    with pytest.raises(DemoError, match="cannot be reached"):
        asyncio.run(first_event())
