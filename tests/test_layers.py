"""Repository rule: the package's layers, as pyproject.toml's import-linter contracts write them
down (core at the bottom; feedback; server, training, recover and client; evaluation; demo and
loop; the alpaca-serve command on top), hold for the code, and a contract does fail when a module
imports upwards or in a circle."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ROOT

LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def lint_imports(package_parent: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(ROOT / "pyproject.toml"), "--no-cache"],
        cwd=package_parent,
        env={"PYTHONPATH": str(package_parent), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_every_layer_contract_is_kept():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "line", "broken"),
    [
        # The server mounting the demo itself, as it once did: an upward import.
        ("server/app.py", "from alpaca_serve.demo.app import build_demo", "Layers"),
        # The bottom layer reaching up for a client.
        ("core/records.py", "from alpaca_serve.client.api import AlpacaClient", "Layers"),
        # train.py and the command module importing each other, as train.py and dpo.py once did.
        ("training/train.py", "from alpaca_serve.training.cli import fine_tune", "No import cycle"),
        # The client reaching into the server's code instead of its HTTP API.
        ("client/api.py", "from alpaca_serve.server.settings import ServerSettings", "importers"),
    ],
)
def test_a_contract_breaks_when_a_module_imports_against_the_layers(tmp_path, module, line, broken):
    copy = tmp_path / "alpaca_serve"
    shutil.copytree(ROOT / "alpaca_serve", copy, ignore=shutil.ignore_patterns("__pycache__"))
    target = copy / module
    target.write_text(target.read_text() + f"\n\ndef _against_the_layers():\n    {line}\n")

    result = lint_imports(tmp_path)

    assert result.returncode != 0
    broken_lines = [text for text in result.stdout.splitlines() if text.endswith("BROKEN")]
    assert any(broken in text for text in broken_lines), result.stdout[-3000:]
