"""Every command follows the same conventions: `--help` explains it, `--version` names the
release, and bad input is one line `NAME: error: ...` with exit status 2."""

from __future__ import annotations

import importlib
import re
from importlib.metadata import version

import pytest

from tests.support import ROOT

# The console scripts the project declares (pyproject.toml's [project.scripts]), read from the
# checkout rather than the installed metadata, so a command added since the install is tested.
# (Python 3.10 has no tomllib: the section's `name = "module:function"` lines are read as text.)
SCRIPTS = dict(
    re.findall(
        r'^([\w-]+) = "([\w.:]+)"$',
        (ROOT / "pyproject.toml").read_text().split("[project.scripts]")[1].split("\n[")[0],
        re.MULTILINE,
    )
)

# A call of each command with input it must refuse.
BAD_INPUT = {
    "alpaca-serve": ["--port", "0"],
    "alpaca-demo": ["--port", "0"],
    "alpaca-convert": ["--gguf", "/no/such/model.gguf", "--out", "{tmp}/out"],
    "alpaca-recover": [
        "recover",
        "--raw",
        "/no/such/raw",
        "--diff",
        "/no/such/diff",
        "--out",
        "{tmp}/out",
    ],
    "alpaca-export": ["--data-dir", "{tmp}/no-such-folder"],
    "alpaca-train": [
        "--model",
        "/no/such/model",
        "--data",
        "/no/such/data.json",
        "--out",
        "{tmp}/out",
    ],
    "alpaca-eval": ["answer", "--instructions", "/no/such/file.jsonl", "--out", "{tmp}/x"],
    "alpaca-loop": ["run", "--work-dir", "{tmp}/work", "--limit", "0"],
    "alpaca-generate": ["--out", "{tmp}/gen.json", "--seed-tasks", "/no/such/seeds.jsonl"],
}


def entry_point(name: str):
    module, function = SCRIPTS[name].split(":")
    return getattr(importlib.import_module(module), function)


def test_every_command_has_a_bad_input_case_here():
    assert set(BAD_INPUT) == set(SCRIPTS)


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_version_names_the_command_and_the_release(name, capsys):
    with pytest.raises(SystemExit) as exited:
        entry_point(name)(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.strip() == f"{name} {version('alpaca-serve')}"


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_help_describes_the_command(name, capsys):
    with pytest.raises(SystemExit) as exited:
        entry_point(name)(["--help"])
    assert exited.value.code == 0
    assert f"usage: {name}" in capsys.readouterr().out


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_bad_input_is_one_error_line_and_exit_status_2(name, capsys, tmp_path):
    argv = [arg.format(tmp=tmp_path) for arg in BAD_INPUT[name]]
    try:
        status = entry_point(name)(argv)
    except SystemExit as exited:  # argparse's own refusals
        status = exited.code
    assert status == 2
    lines = capsys.readouterr().err.strip().splitlines()
    # One line of ours (argparse puts its usage before it), never a traceback.
    assert lines and lines[-1].startswith(name) and ": error: " in lines[-1], lines
    assert sum(": error: " in line for line in lines) == 1
    assert "Traceback" not in "\n".join(lines)
