"""The demo is a client of the server's HTTP API: it never imports the server's code."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.support import ROOT


@pytest.mark.slow  # a fresh interpreter importing Gradio: over ten seconds
def test_the_demo_never_imports_the_server():
    code = (
        "import sys, alpaca_serve.demo.app, alpaca_serve.demo.cli; "
        "print(sorted(m for m in sys.modules if m.startswith(('alpaca_serve.server', "
        "'alpaca_serve.training', 'alpaca_serve.recover'))))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
