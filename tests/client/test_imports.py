"""The API client speaks HTTP only: it imports none of the project's other packages."""

from __future__ import annotations

import subprocess
import sys

from tests.support import ROOT


def test_the_client_imports_neither_server_nor_demo_nor_evaluation_nor_training():
    code = (
        "import sys, alpaca_serve.client.api, alpaca_serve.client.errors; "
        "print(sorted(m for m in sys.modules "
        "if m.split('.')[:2] in (['alpaca_serve', p] for p in "
        "('server', 'demo', 'evaluation', 'training', 'feedback', 'loop'))))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
