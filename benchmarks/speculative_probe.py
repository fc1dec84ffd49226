"""Which kinds of speculative decoding this machine's vLLM runs, and whether their greedy outputs
are the plain engine's, token for token.

Usage:
    python -m benchmarks.speculative_probe                     # plain, then n-gram
    python -m benchmarks.speculative_probe --draft ./small-model --tokens 3

Each configuration is one vLLM engine (`vllm.LLM`, float32, eager, seed 0) built in a process of
its own, one after the other: `plain`, `ngram` (prompt lookup) and, with `--draft`, `draft` (a
smaller model with the same tokenizer proposes the tokens). Each generates greedy answers of
`--max-new-tokens` to four Alpaca prompts with an input (rewrite, summarise, extract, edit; from
the sample shipped with the project). Printed per configuration: whether the engine loaded and
generated, vLLM's exact error if not, the seconds each took, and whether the token ids equal
`plain`'s.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.options import default_model, positive_int

SAMPLE = (
    Path(__file__).resolve().parents[1]
    / "alpaca_serve"
    / "training"
    / "sample_data"
    / "alpaca_data_first200.json"
)
KINDS = ("rewrite", "summar", "extract", "edit")


def prompts() -> list[str]:
    from alpaca_serve.core.prompts import format_prompt

    records = json.loads(SAMPLE.read_text())
    chosen = [
        r for r in records if r["input"] and any(k in r["instruction"].lower() for k in KINDS)
    ]
    return [format_prompt(r["instruction"], r["input"]) for r in chosen[:4]]


def configurations(args) -> dict[str, dict | None]:
    chosen: dict[str, dict | None] = {
        "plain": None,
        "ngram": {
            "method": "ngram",
            "num_speculative_tokens": args.tokens,
            "prompt_lookup_max": args.tokens,
            "prompt_lookup_min": 2,
        },
    }
    if args.draft is not None:
        chosen["draft"] = {
            "method": "draft_model",
            "model": str(args.draft),
            "num_speculative_tokens": args.tokens,
        }
    return chosen


def run_one(model: str, speculative: str, max_new_tokens: int, out: str) -> None:
    """In the child process: build the engine, generate, write what happened to `out`."""
    import os

    os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from vllm import LLM, SamplingParams

    result: dict = {"loaded": False, "generated": False}
    started = time.perf_counter()
    try:
        llm = LLM(
            model=model,
            dtype="float32",
            enforce_eager=True,
            max_model_len=2048,
            seed=0,
            speculative_config=json.loads(speculative),
        )
        result.update(loaded=True, load_s=time.perf_counter() - started)
        started = time.perf_counter()
        outputs = llm.generate(prompts(), SamplingParams(temperature=0, max_tokens=max_new_tokens))
        result.update(
            generated=True,
            generate_s=time.perf_counter() - started,
            token_ids=[list(o.outputs[0].token_ids) for o in outputs],
        )
    except Exception as err:
        result["error"] = f"{type(err).__name__}: {' '.join(str(err).split())}"
    Path(out).write_text(json.dumps(result))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.speculative_probe",
        description="Build vLLM engines with and without speculative decoding, one at a time, "
        "and compare their greedy outputs token for token.",
    )
    parser.add_argument("--model", type=Path, help="default: the bundled SmolLM2-135M-Instruct")
    parser.add_argument(
        "--draft", type=Path, help="a draft model's folder (same tokenizer as the model)"
    )
    parser.add_argument("--tokens", type=positive_int, default=4, help="tokens proposed per step")
    parser.add_argument("--max-new-tokens", type=positive_int, default=64)
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        model, speculative, out = args.child
        run_one(model, speculative, args.max_new_tokens, out)
        return 0

    model = args.model or default_model()
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        for name, speculative in configurations(args).items():
            out = Path(folder) / f"{name}.json"
            command = [sys.executable, "-m", "benchmarks.speculative_probe"]
            command += ["--max-new-tokens", str(args.max_new_tokens)]
            command += ["--child", str(model), json.dumps(speculative), str(out)]
            log = Path(folder) / f"{name}.log"
            with open(log, "wb") as sink:
                code = subprocess.run(command, stdout=sink, stderr=subprocess.STDOUT).returncode
            if out.is_file():
                results[name] = json.loads(out.read_text())
            else:
                tail = log.read_text(errors="replace").strip().splitlines()[-1:]
                results[name] = {"loaded": False, "error": f"exit {code}: {' '.join(tail)}"}
    plain = results["plain"].get("token_ids")
    for name, result in results.items():
        if not result.get("generated"):
            print(f"{name:<6} does not run: {result.get('error')}")
            continue
        same = "same as plain" if result["token_ids"] == plain else "DIFFERENT from plain"
        tokens = sum(map(len, result["token_ids"]))
        print(
            f"{name:<6} runs: loaded in {result['load_s']:.1f} s, {tokens} tokens in "
            f"{result['generate_s']:.1f} s, token ids {same}"
        )
    return 0 if all(r.get("generated") for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
