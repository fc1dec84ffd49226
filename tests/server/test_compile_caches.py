"""A compiled engine's caches (vLLM's compiled model, torch inductor's kernels) live in one
persistent folder, ALPACA_COMPILE_CACHE_DIR, by default `compile/` in ALPACA_CACHE_DIR; what the
operator set in VLLM_CACHE_ROOT or TORCHINDUCTOR_CACHE_DIR wins. (That a second start reuses them
is measured by `python -m benchmarks.engine_start`.)"""

from __future__ import annotations

import os

import pytest

from alpaca_serve.server.engine import configure_compile_caches
from alpaca_serve.server.settings import ServerSettings


@pytest.fixture
def clean_environment(monkeypatch):
    for name in (
        "VLLM_CACHE_ROOT",
        "TORCHINDUCTOR_CACHE_DIR",
        "ALPACA_COMPILE_CACHE_DIR",
        "VLLM_USE_AOT_COMPILE",
    ):
        monkeypatch.setenv(name, "")  # recorded, so that the test's own values are undone too
        monkeypatch.delenv(name)
    return monkeypatch


def test_by_default_both_caches_go_under_the_model_cache(clean_environment, tmp_path):

    configure_compile_caches(ServerSettings(cache_dir=tmp_path))

    assert os.environ["VLLM_CACHE_ROOT"] == str(tmp_path / "compile" / "vllm")
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "compile" / "inductor")


def test_the_setting_names_another_folder(clean_environment, tmp_path):

    clean_environment.setenv("ALPACA_COMPILE_CACHE_DIR", str(tmp_path / "compiled"))

    configure_compile_caches(ServerSettings())

    assert os.environ["VLLM_CACHE_ROOT"] == str(tmp_path / "compiled" / "vllm")
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "compiled" / "inductor")


def test_what_the_operator_set_wins(clean_environment, tmp_path):

    clean_environment.setenv("TORCHINDUCTOR_CACHE_DIR", "/var/cache/inductor")

    configure_compile_caches(ServerSettings(cache_dir=tmp_path))

    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == "/var/cache/inductor"
    assert os.environ["VLLM_CACHE_ROOT"] == str(tmp_path / "compile" / "vllm")


def test_an_empty_setting_means_the_default(clean_environment, tmp_path):
    clean_environment.setenv("ALPACA_COMPILE_CACHE_DIR", "")

    assert ServerSettings(cache_dir=tmp_path).compile_cache_root == tmp_path / "compile"


def test_vllms_aot_compile_whose_cache_does_not_load_is_off_unless_the_operator_says(
    clean_environment, tmp_path
):
    configure_compile_caches(ServerSettings(cache_dir=tmp_path))
    assert os.environ["VLLM_USE_AOT_COMPILE"] == "0"

    clean_environment.setenv("VLLM_USE_AOT_COMPILE", "1")
    configure_compile_caches(ServerSettings(cache_dir=tmp_path))
    assert os.environ["VLLM_USE_AOT_COMPILE"] == "1"
