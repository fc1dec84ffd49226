"""How the server starts: light imports, settings checked at load, clear CLI errors."""

from __future__ import annotations

import subprocess
import sys

import pytest

from alpaca_serve.server.settings import ServerSettings
from tests.support import ROOT


def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    import os

    return subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def test_importing_the_app_imports_neither_vllm_nor_torch():
    result = run(
        "-c",
        "import sys, alpaca_serve.server.app; print(sorted(m for m in ('vllm', 'torch', "
        "'transformers') if m in sys.modules))",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_help_explains_every_option():
    result = run("-m", "alpaca_serve.serve", "--help")
    assert result.returncode == 0
    for option in ("--host", "--port", "--model", "ALPACA_"):
        assert option in result.stdout


@pytest.mark.slow  # a server process per case (tests/test_commands.py has a quick one in-process)
@pytest.mark.parametrize(
    ("args", "env", "fragment"),
    [
        (["--port", "0"], {}, "port"),
        (["--model", "/no/such/folder"], {}, "config.json"),
        (
            [],
            {"ALPACA_DEFAULT_MAX_NEW_TOKENS": "900", "ALPACA_MAX_NEW_TOKENS_LIMIT": "500"},
            "default_max_new_tokens (900) is above max_new_tokens_limit (500)",
        ),
        (
            [],
            {"ALPACA_MAX_MODEL_LEN": "256", "ALPACA_MAX_NEW_TOKENS_LIMIT": "256"},
            "leaves no room for a prompt",
        ),
        ([], {"ALPACA_DEVICE": "tpu"}, "device"),
        ([], {"ALPACA_BLOCKLIST": "/no/such/list.txt"}, "blocklist file /no/such/list.txt"),
        (
            [],
            {"ALPACA_FILTERS": '[{"factory": "no_such_module:build"}]'},
            "cannot import filter factory 'no_such_module:build'",
        ),
        ([], {"ALPACA_FILTERS": "not json"}, "filters"),
        ([], {"ALPACA_RATE_LIMIT_PER_MINUTE": "10"}, "set api_keys as well"),
        ([], {"ALPACA_API_KEYS_FILE": "/no/keys.txt"}, "api_keys_file /no/keys.txt"),
        ([], {"ALPACA_API_KEYS": " , "}, "api_keys set but no API key read"),
        ([], {"ALPACA_MAX_QUEUE": "-1"}, "max_queue"),
    ],
)
def test_bad_settings_stop_the_server_with_one_line(args, env, fragment):
    result = run("-m", "alpaca_serve.serve", *args, env=env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("alpaca-serve: error:")
    assert fragment in lines[0]


def test_a_keys_file_with_no_key_in_it_is_refused_not_taken_as_no_keys(tmp_path):
    # Failing open here would serve every route without a key.
    keys = tmp_path / "keys.txt"
    keys.write_text("# keys for the class, one a line\n\n   # (none yet)\n")
    with pytest.raises(ValueError, match=f"api_keys_file {keys} set but no API key read"):
        ServerSettings(api_keys_file=keys)
    with pytest.raises(ValueError, match="api_keys and api_keys_file .* set but no API key read"):
        ServerSettings(api_keys=",", api_keys_file=keys)
    keys.write_text("# one key\nsesame  # the teacher's\n")
    assert ServerSettings(api_keys_file=keys).api_key_list == ["sesame"]


def test_every_setting_reads_its_alpaca_environment_variable(monkeypatch):
    monkeypatch.setenv("ALPACA_PORT", "9123")
    monkeypatch.setenv("ALPACA_MAX_NEW_TOKENS_LIMIT", "300")
    monkeypatch.setenv("ALPACA_ENFORCE_EAGER", "false")
    settings = ServerSettings()
    assert settings.port == 9123
    assert settings.max_new_tokens_limit == 300
    assert settings.enforce_eager is False


def test_convert_reports_a_missing_gguf_file_in_one_line(tmp_path):
    result = run(
        "-m",
        "alpaca_serve.recover.convert",
        "--gguf",
        str(tmp_path / "missing.gguf"),
        "--out",
        str(tmp_path / "out"),
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"alpaca-convert: error: GGUF file not found: {tmp_path / 'missing.gguf'}"
    )
    assert not (tmp_path / "out").exists()
