"""The compiled engine when its cache is warm, the eager one otherwise (ALPACA_ENFORCE_EAGER=auto,
the default), and the background compile that warms the cache for the next start
(alpaca_serve/server/compile_cache.py, compile_fill.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from alpaca_serve.server.compile_cache import (
    BackgroundCompile,
    cache_key,
    choose_mode,
    failed_marker,
    mark_warm,
    warm_marker,
)
from alpaca_serve.server.engine import resolve_dtype
from alpaca_serve.server.settings import ServerSettings
from tests.support import tiny_server_env


@pytest.fixture(autouse=True)
def no_cache_folders_of_the_environment(monkeypatch):
    """Torch, once transformers is imported in the process, names its kernel folder in
    TORCHINDUCTOR_CACHE_DIR (the server sets its own before it looks), and tests/conftest.py names
    a compile cache folder for the whole session: each test here has its own."""
    for name in ("TORCHINDUCTOR_CACHE_DIR", "VLLM_CACHE_ROOT", "ALPACA_COMPILE_CACHE_DIR"):
        monkeypatch.delenv(name, raising=False)


def settings(tmp_path: Path, **values) -> ServerSettings:
    # Without the project's adapter, which the default model brings (adapters: eager, below).
    return ServerSettings(cache_dir=tmp_path / "cache", project_model=False, **values)


def a_model(tmp_path: Path) -> Path:
    model = tmp_path / "model"
    model.mkdir(exist_ok=True)
    (model / "config.json").write_text("{}")
    (model / "model.safetensors").write_bytes(b"weights")
    return model


def warm_up(config: ServerSettings, model: Path) -> str:
    """What a compiled start leaves: torch inductor's kernels and the marker."""
    (config.compile_cache_root / "inductor").mkdir(parents=True, exist_ok=True)
    key = cache_key(config, model, "cpu", "float32", 32)
    mark_warm(config, key, model, 12.0)
    return key


def mode(config: ServerSettings, model: Path):
    return choose_mode(config, model, "cpu", "float32", 32)


def test_auto_is_the_default_and_a_cold_cache_means_eager_and_a_fill(tmp_path):
    config = settings(tmp_path)
    assert config.enforce_eager == "auto"

    chosen = mode(config, a_model(tmp_path))

    assert not chosen.compiled and chosen.fill
    assert "cache is cold" in chosen.reason


def test_a_warm_cache_means_the_compiled_engine(tmp_path):
    config, model = settings(tmp_path), a_model(tmp_path)
    warm_up(config, model)

    chosen = mode(config, model)

    assert chosen.compiled and not chosen.fill
    assert chosen.reason == "compiled engine (its cache is warm)"


def test_the_marker_alone_is_not_warm_when_the_kernels_are_gone(tmp_path):
    config, model = settings(tmp_path), a_model(tmp_path)
    warm_up(config, model)
    (config.compile_cache_root / "inductor").rmdir()

    assert not mode(config, model).compiled


@pytest.mark.parametrize(
    "change",
    [
        {"max_model_len": 4096},
        {"max_num_seqs": 8},
        {"speculative": "ngram"},
        {"tensor_parallel_size": 2},
    ],
)
def test_an_engine_setting_that_changes_the_compiled_model_is_another_key(tmp_path, change):
    config, model = settings(tmp_path), a_model(tmp_path)
    warm_up(config, model)

    assert not mode(settings(tmp_path, **change), model).compiled


def test_a_changed_model_is_another_key(tmp_path):
    config, model = settings(tmp_path), a_model(tmp_path)
    warm_up(config, model)
    (model / "model.safetensors").write_bytes(b"other weights")

    assert not mode(config, model).compiled


def test_settings_that_do_not_change_the_compiled_model_keep_the_key(tmp_path):
    config, model = settings(tmp_path), a_model(tmp_path)
    warm_up(config, model)

    assert mode(settings(tmp_path, cpu_kv_cache_gib=3, port=9000), model).compiled


def test_true_is_always_eager_and_false_always_compiled(tmp_path):
    config, model = settings(tmp_path), a_model(tmp_path)
    assert not mode(settings(tmp_path, enforce_eager=True), model).compiled
    cold = mode(settings(tmp_path, enforce_eager=False), model)
    assert cold.compiled and not cold.fill and "compiling first" in cold.reason

    warm_up(config, model)

    assert not mode(settings(tmp_path, enforce_eager=True), model).compiled
    assert "cache is warm" in mode(settings(tmp_path, enforce_eager=False), model).reason


def test_the_setting_reads_auto_true_and_false_from_the_environment(monkeypatch, tmp_path):
    for text, value in (("auto", "auto"), ("true", True), ("false", False), ("1", True)):
        monkeypatch.setenv("ALPACA_ENFORCE_EAGER", text)
        assert ServerSettings().enforce_eager == value
    monkeypatch.setenv("ALPACA_ENFORCE_EAGER", "sometimes")
    with pytest.raises(ValueError, match="enforce_eager"):
        ServerSettings()


def test_adapters_keep_the_engine_eager_as_vllm_compiles_nothing_with_lora(tmp_path):
    model = a_model(tmp_path)
    warm_up(settings(tmp_path), model)
    (tmp_path / "adapters").mkdir()

    for config in (
        settings(tmp_path, adapters_dir=tmp_path / "adapters"),
        # The default model serves the project's adapter beside it, unless told not to.
        ServerSettings(cache_dir=tmp_path / "cache"),
    ):
        chosen = mode(config, model)
        assert not chosen.compiled and not chosen.fill
        assert "adapters turn compilation off" in chosen.reason
    assert "ALPACA_PROJECT_MODEL=false serves the base model alone" in chosen.reason


def test_a_failed_fill_is_not_tried_again(tmp_path):
    config, model = settings(tmp_path), a_model(tmp_path)
    key = cache_key(config, model, "cpu", "float32", 32)
    failed_marker(config, key).parent.mkdir(parents=True)
    failed_marker(config, key).write_text("RuntimeError: no compiler\n")

    chosen = mode(config, model)

    assert not chosen.compiled and not chosen.fill
    assert "compiling failed before" in chosen.reason


def test_without_a_cpp_compiler_the_cpu_engine_stays_eager_and_says_why(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))

    chosen = mode(settings(tmp_path), a_model(tmp_path))

    assert not chosen.compiled and not chosen.fill
    assert "no C++ compiler" in chosen.reason


def test_a_compiled_start_records_its_load_time_in_the_marker(tmp_path):
    config, model = settings(tmp_path), a_model(tmp_path)

    key = warm_up(config, model)

    body = json.loads(warm_marker(config, key).read_text())
    assert body["model"] == str(model) and body["load_s"] == 12.0


def test_the_background_compile_runs_at_the_lowest_priority_and_stops_with_the_server(tmp_path):
    # Caught while it still imports vLLM: enough to see the process it runs as, and to stop it.
    config = settings(tmp_path, model=a_model(tmp_path))
    fill = BackgroundCompile.start(config, a_model(tmp_path))
    try:
        niceness = int(Path(f"/proc/{fill.process.pid}/stat").read_text().split()[18])
        assert niceness == 19
        assert fill.log_path == config.compile_cache_root / "fill.log"
    finally:
        fill.stop()
    assert not fill.running


@pytest.mark.slow
def test_the_fill_compiles_the_model_and_the_next_start_is_compiled(tiny_model_dir, tmp_path):
    env = {
        **os.environ,
        **tiny_server_env(tiny_model_dir),
        "ALPACA_CACHE_DIR": str(tmp_path / "cache"),
        "ALPACA_CPU_KV_CACHE_GIB": "1",
    }
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "alpaca_serve.server.compile_fill"],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "the next start is compiled" in output
    assert "Traceback" not in output

    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            if name.startswith("ALPACA_"):
                patch.setenv(name, value)
        config = ServerSettings()
    # The compiled engine's dtype on CPU (bfloat16, with ALPACA_DTYPE=auto), as the server asks.
    chosen = choose_mode(
        config, tiny_model_dir, "cpu", resolve_dtype(config, "cpu", compiled=True), 32
    )
    assert chosen.compiled, (chosen.reason, time.monotonic() - started)
    assert (config.compile_cache_root / "inductor").is_dir()  # the kernels, in the cache folder


def test_auto_dtype_on_cpu_is_bfloat16_compiled_and_float32_eager(tmp_path):
    config = settings(tmp_path)
    assert resolve_dtype(config, "cpu", compiled=True) == "bfloat16"
    assert resolve_dtype(config, "cpu", compiled=False) == "float32"
    assert resolve_dtype(config, "cuda") == "bfloat16"
    assert resolve_dtype(settings(tmp_path, dtype="float32"), "cpu", compiled=True) == "float32"
