"""`alpaca-convert` puts the bundled model where the server looks for it."""

from __future__ import annotations

import asyncio

from alpaca_serve.recover.convert import MARKER_FILE, default_out_dir, main
from alpaca_serve.recover.settings import RecoverSettings
from alpaca_serve.server.default_model import ensure_default_model
from alpaca_serve.server.settings import ServerSettings


def converted_folder(cache_dir):
    """A cache folder holding an already converted default model (marker and config only)."""
    folder = default_out_dir(cache_dir)
    folder.mkdir(parents=True)
    (folder / MARKER_FILE).write_text("{}")
    (folder / "config.json").write_text("{}")
    return folder


def test_a_bare_convert_uses_the_cache_folder_in_ALPACA_CACHE_DIR(tmp_path, monkeypatch, capsys):
    from_env = converted_folder(tmp_path / "models")
    from_option = converted_folder(tmp_path / "elsewhere")
    monkeypatch.setenv("ALPACA_CACHE_DIR", str(tmp_path / "models"))
    no_gguf = str(tmp_path / "never-read.gguf")  # an existing conversion is not redone

    assert main(["--gguf", no_gguf]) == 0
    assert main(["--gguf", no_gguf, "--cache-dir", str(tmp_path / "elsewhere")]) == 0

    assert capsys.readouterr().out.splitlines() == [
        f"already converted: {from_env} (use --force to convert again)",
        f"already converted: {from_option} (use --force to convert again)",
    ]


def test_convert_and_the_server_agree_on_the_default_model_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("ALPACA_CACHE_DIR", raising=False)
    assert RecoverSettings().cache_dir == ServerSettings().cache_dir

    monkeypatch.setenv("ALPACA_CACHE_DIR", str(tmp_path))
    cache_dir = ServerSettings().cache_dir
    folder = converted_folder(RecoverSettings().cache_dir)

    # Given a converted folder, the server loads it from there without converting again.
    assert asyncio.run(ensure_default_model(cache_dir)) == folder
