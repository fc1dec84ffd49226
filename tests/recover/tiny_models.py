"""Tiny LLaMA folders for the weight-diff tests, written with torch alone, and `run`, the
`alpaca-recover` command called in this process. Fixtures that build them: conftest.py."""

from __future__ import annotations

import json
from pathlib import Path

import safetensors.torch as safetensors_torch
import torch

from alpaca_serve.recover import cli

VOCAB = 64
TOKENIZER_FILES = {
    "tokenizer.json": '{"model": {"type": "BPE"}, "added_tokens": [{"content": "[PAD]"}]}',
    "tokenizer_config.json": '{"pad_token": "[PAD]", "model_max_length": 512}',
    "special_tokens_map.json": '{"pad_token": "[PAD]"}',
}


# A tiny LLaMA as transformers saves one (config.json + model.safetensors), built with torch
# alone: importing transformers' model classes takes seconds, so only the test that loads a
# recovered model with them (marked slow) pays for it.
HIDDEN, INTERMEDIATE, LAYERS = 32, 64, 2  # two heads: head_dim 16


def tiny_config(vocab_size: int, dtype: str = "float32") -> dict:
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": vocab_size,
        "hidden_size": HIDDEN,
        "intermediate_size": INTERMEDIATE,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "max_position_embeddings": 128,
        "rms_norm_eps": 1e-6,
        "hidden_act": "silu",
        "tie_word_embeddings": False,
        "dtype": dtype,
    }


def tiny_weights(vocab_size: int) -> dict[str, torch.Tensor]:
    """A LLaMA state_dict of the tiny shapes, initialised as transformers does (normal, std 0.02;
    norms at one)."""
    shapes = {"model.embed_tokens.weight": (vocab_size, HIDDEN)}
    for i in range(LAYERS):
        layer = f"model.layers.{i}"
        for projection in ("q", "k", "v", "o"):
            shapes[f"{layer}.self_attn.{projection}_proj.weight"] = (HIDDEN, HIDDEN)
        shapes[f"{layer}.mlp.gate_proj.weight"] = (INTERMEDIATE, HIDDEN)
        shapes[f"{layer}.mlp.up_proj.weight"] = (INTERMEDIATE, HIDDEN)
        shapes[f"{layer}.mlp.down_proj.weight"] = (HIDDEN, INTERMEDIATE)
        shapes[f"{layer}.input_layernorm.weight"] = (HIDDEN,)
        shapes[f"{layer}.post_attention_layernorm.weight"] = (HIDDEN,)
    shapes["model.norm.weight"] = (HIDDEN,)
    shapes["lm_head.weight"] = (vocab_size, HIDDEN)
    return {
        name: torch.ones(shape) if len(shape) == 1 else torch.randn(shape) * 0.02
        for name, shape in shapes.items()
    }


def save_model(folder: Path, tensors: dict[str, torch.Tensor], dtype: str) -> None:
    folder.mkdir(parents=True)
    vocab = tensors["model.embed_tokens.weight"].shape[0]
    (folder / "config.json").write_text(json.dumps(tiny_config(vocab, dtype), indent=2))
    cast = {k: v.to(getattr(torch, dtype)).contiguous() for k, v in tensors.items()}
    safetensors_torch.save_file(cast, str(folder / "model.safetensors"), metadata={"format": "pt"})


def original_pad_resize(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Stanford's smart_tokenizer_and_embedding_resize for one new token, without the tokenizer:
    the input and output embeddings each gain a row, the mean of their others."""
    resized = dict(state)
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        rows = state[name]
        resized[name] = torch.cat([rows, rows.mean(dim=0, keepdim=True)])
    return resized


def load_float32(folder: Path) -> dict[str, torch.Tensor]:
    """A model folder's weights in float32, as loading it in float32 gives them."""
    return {name: tensor.float() for name, tensor in load_tensors(folder).items()}


def load_tensors(folder: Path) -> dict:
    """Every tensor of a safetensors model folder (one file or shards), as saved."""
    tensors = {}
    for file in sorted(folder.glob("*.safetensors")):
        tensors.update(safetensors_torch.load_file(str(file)))
    return tensors


def save_tensors(folder: Path, tensors: dict) -> None:
    """Replace a folder's weights by `tensors` in one model.safetensors (config kept)."""
    for file in folder.glob("model*.safetensors*"):
        file.unlink()
    safetensors_torch.save_file(
        {k: v.contiguous() for k, v in tensors.items()}, str(folder / "model.safetensors")
    )


def run(*argv: str) -> int:
    return cli.main([*map(str, argv), "--no-progress"])
