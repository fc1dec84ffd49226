"""Recipes: named `alpaca-train` runs, kept as the exact options they pass.

Usage:
    alpaca-train --recipe alpaca --model ~/.cache/alpaca-serve/SmolLM2-135M-Instruct --out out
    make alpaca-model                      # the same, on the default model, into models/alpaca

    from alpaca_serve.training.recipe import RECIPES, recipe_argv
    recipe_argv("alpaca")                  # ["--data", ..., "--lora", "--lora-r", "16", ...]

`alpaca`: the project's Alpaca model. A LoRA adapter of the default model (SmolLM2-135M-Instruct)
fine-tuned on the Alpaca-format data the project ships (alpaca_data_first200.json and
llamafactory_alpaca_en_demo.json, 1,199 records, CC BY-NC 4.0), in the shape of Stanford
Alpaca's recipe (prompt masking, EOS after each output, a cosine schedule after a short warmup)
scaled to a CPU: a LoRA of rank 16 on every linear layer at alpaca-lora's learning rate, a batch
of 8 and 256 tokens. The adapter the server ships as `alpaca` (alpaca_serve/models/alpaca) is this
recipe's output; its alpaca_train.json records the options, the data files' hashes, the loss
curve, the time and the commit, and tests/training/test_recipe.py checks them against this file.

Options given on the command line after `--recipe` win over the recipe's (argparse keeps the last).
This module imports no torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

SAMPLE_DATA = Path(__file__).resolve().parent / "sample_data"

# The data, in the order it is read.
ALPACA_DATA = [
    SAMPLE_DATA / "alpaca_data_first200.json",
    SAMPLE_DATA / "llamafactory_alpaca_en_demo.json",
]

# The adapter's shape (LoraArgs' fields), shared with alpaca-loop's sft stage.
ALPACA_LORA: dict[str, Any] = {
    "lora_r": 16,
    "lora_alpha": 32,
    "lora_dropout": 0.05,
    "lora_target_modules": [
        *("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    ],
}

RECIPES: dict[str, list[str]] = {
    "alpaca": [
        "--data",
        *(str(path) for path in ALPACA_DATA),
        "--lora",
        "--no-merge",
        *("--lora-r", str(ALPACA_LORA["lora_r"]), "--lora-alpha", str(ALPACA_LORA["lora_alpha"])),
        *("--lora-dropout", str(ALPACA_LORA["lora_dropout"])),
        "--lora-target-modules",
        *ALPACA_LORA["lora_target_modules"],
        *("--learning-rate", "3e-4", "--lr-scheduler", "cosine", "--warmup-ratio", "0.03"),
        *("--global-batch-size", "8", "--micro-batch-size", "4", "--model-max-length", "256"),
        *("--max-steps", "80", "--group-by-length", "--seed", "42", "--logging-steps", "5"),
        *("--save-steps", "1000", "--precision", "fp32"),
    ],
}


def recipe_argv(name: str) -> list[str]:
    """The options recipe `name` stands for (KeyError for an unknown one)."""
    return list(RECIPES[name])
