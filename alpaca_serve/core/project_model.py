"""The project's Alpaca model: the LoRA adapter of the default model that ships in the package.

Usage:
    from alpaca_serve.core.project_model import PROJECT_MODEL_DIR, PROJECT_MODEL_NAME
    PROJECT_MODEL_NAME                     # "alpaca": the name the server serves it by
    PROJECT_MODEL_DIR / "alpaca_train.json"  # how it was made (the recipe's run)

`make alpaca-model` makes it (`alpaca-train --recipe alpaca`, alpaca_serve/training/recipe.py) and
copies it here; the server serves it beside the default model unless told not to
(ALPACA_PROJECT_MODEL=false); the demo's Chat tab picks it first.
"""

from __future__ import annotations

from pathlib import Path

PROJECT_MODEL_NAME = "alpaca"
PROJECT_MODEL_DIR = Path(__file__).resolve().parents[1] / "models" / PROJECT_MODEL_NAME


def project_model_available() -> bool:
    """Whether this installation carries the adapter (a checkout before `make alpaca-model` has
    not made it yet)."""
    return (PROJECT_MODEL_DIR / "adapter_config.json").is_file()
