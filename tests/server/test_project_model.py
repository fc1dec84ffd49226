"""The project's Alpaca model (the `alpaca` adapter shipped in the package) is served beside the
default model with no setting, and only there: not beside a model of the user's, not when turned
off, and a user's own adapter named `alpaca` takes its place. The real engine serving it is
tests/server/test_default_model.py's."""

from __future__ import annotations

from pathlib import Path

from alpaca_serve.core.project_model import (
    PROJECT_MODEL_DIR,
    PROJECT_MODEL_NAME,
    project_model_available,
)
from alpaca_serve.server.adapters import BaseModel, inspect_adapter
from alpaca_serve.server.default_model import DEFAULT_MODEL_NAME
from alpaca_serve.server.settings import ServerSettings

# SmolLM2-135M-Instruct's shapes (its config.json as alpaca-convert writes it).
DEFAULT_MODEL_CONFIG = {
    "hidden_size": 576,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "head_dim": 64,
    "intermediate_size": 1536,
    "num_hidden_layers": 30,
}


def test_the_adapter_ships_with_the_package():
    assert project_model_available()
    assert PROJECT_MODEL_DIR.parent.parent.name == "alpaca_serve"


def test_the_default_model_is_served_with_the_projects_model_and_no_setting():
    settings = ServerSettings()
    assert settings.model is None
    assert settings.serves_project_model
    assert settings.adapter_paths == {PROJECT_MODEL_NAME: PROJECT_MODEL_DIR}
    assert settings.serves_adapters  # the engine is started with LoRA on


def test_turned_off_the_default_model_is_served_alone(monkeypatch):
    monkeypatch.setenv("ALPACA_PROJECT_MODEL", "false")
    settings = ServerSettings()
    assert not settings.serves_project_model
    assert settings.adapter_paths == {}
    assert not settings.serves_adapters


def test_a_model_of_the_users_is_served_without_it(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    settings = ServerSettings(model=tmp_path)
    assert not settings.serves_project_model
    assert PROJECT_MODEL_NAME not in settings.adapter_paths


def test_an_adapter_the_user_names_alpaca_takes_its_place(tmp_path):
    mine = tmp_path / "mine"
    settings = ServerSettings(adapters=f"{PROJECT_MODEL_NAME}={mine},other={tmp_path / 'other'}")
    assert settings.adapter_paths == {PROJECT_MODEL_NAME: mine, "other": tmp_path / "other"}


def test_the_shipped_adapter_fits_the_default_model_within_the_default_rank_limit():
    base = BaseModel(DEFAULT_MODEL_NAME, Path("/models") / DEFAULT_MODEL_NAME, DEFAULT_MODEL_CONFIG)
    files = inspect_adapter(PROJECT_MODEL_DIR, base, ServerSettings().max_lora_rank)
    assert files.weights_dir == PROJECT_MODEL_DIR
    assert base.is_named_by(files.base_model)
