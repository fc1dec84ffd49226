"""Time and peak memory of weight-diff recovery on a synthetic LLaMA-shaped model.

Usage:
    python -m benchmarks.weight_diff_recover                # ~1.5B parameters: 6 GB a model
    python -m benchmarks.weight_diff_recover --scale 0.2    # a quick run, ~0.2B parameters
    python -m benchmarks.weight_diff_recover --dir /data    # temporary files under /data

Writes a random float32 base and a tuned model (base + noise, one more vocabulary row: Alpaca's
[PAD]) in several safetensors shards, runs `alpaca-recover make-diff` and then `alpaca-recover
recover` as child processes, each measured for wall time and peak RSS (the kernel's ru_maxrss of
that child), then times a plain copy of the files recover reads. Prints a table and the memory
Stanford's weight_diff.py would need (both models in float32). Exits 1 if recover's peak RSS
reaches --max-rss-gb. Needs about three model sizes of free disk (18 GB at the default scale);
everything is deleted at the end.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HIDDEN = 2048
INTERMEDIATE = 5632
HEADS = 32
BASE_VOCAB = 32000
LAYER_PARAMS = 4 * HIDDEN * HIDDEN + 3 * HIDDEN * INTERMEDIATE + 2 * HIDDEN
GB = 1e9


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.weight_diff_recover",
        description="Benchmark alpaca-recover on a synthetic LLaMA-shaped float32 model.",
    )
    parser.add_argument(
        "--scale",
        type=float,
        default=1.5,
        help="model size in billions of parameters (default: %(default)s); sets the layer count",
    )
    parser.add_argument(
        "--shards", type=int, default=4, help="safetensors shards per input model (default: 4)"
    )
    parser.add_argument(
        "--dir", type=Path, help="folder for the temporary models (default: the system temp dir)"
    )
    parser.add_argument(
        "--max-rss-gb",
        type=float,
        default=2.5,
        help="fail if recover's peak RSS reaches this many GB (default: %(default)s)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.scale <= 0 or args.shards < 1:
        print("weight_diff_recover: error: --scale must be > 0 and --shards >= 1", file=sys.stderr)
        return 2
    layers = max(1, round((args.scale * 1e9 - 2 * BASE_VOCAB * HIDDEN) / LAYER_PARAMS))
    params = 2 * (BASE_VOCAB + 1) * HIDDEN + HIDDEN + layers * LAYER_PARAMS
    model_bytes = params * 4
    parent = args.dir or Path(tempfile.gettempdir())
    free = shutil.disk_usage(parent).free
    if free < 3.1 * model_bytes:
        print(
            f"weight_diff_recover: error: needs {3.1 * model_bytes / GB:.1f} GB free in {parent}, "
            f"{free / GB:.1f} GB free",
            file=sys.stderr,
        )
        return 1

    root = Path(tempfile.mkdtemp(prefix="weight-diff-bench-", dir=parent))
    try:
        # 1. Synthetic base and tuned models, written in shards.
        # In a child process: this one stays small, so the children's ru_maxrss (which starts from
        # the RSS of the process they were forked from) measures them alone.
        started = time.perf_counter()
        subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys; from benchmarks.weight_diff_recover import "
                "write_models; write_models(sys.argv[1], sys.argv[2], int(sys.argv[3]), "
                "int(sys.argv[4]))",
                root / "base",
                root / "tuned",
                str(layers),
                str(args.shards),
            ],
            check=True,
        )
        print(
            f"synthetic LLaMA: {layers} layers, hidden {HIDDEN}, intermediate {INTERMEDIATE}, "
            f"vocab {BASE_VOCAB} -> {BASE_VOCAB + 1} ([PAD] row), {params / 1e9:.2f}B parameters, "
            f"float32 ({model_bytes / GB:.2f} GB a model), {args.shards} shards a model "
            f"(written in {time.perf_counter() - started:.0f} s)"
        )
        cli = [sys.executable, "-m", "alpaca_serve.recover.cli"]
        baseline_rss = measure([sys.executable, "-c", "import torch, safetensors, tqdm"])[1]

        # 2. make-diff, then recover, each in its own process.
        make_s, make_rss = measure(
            [
                *cli,
                "make-diff",
                "--raw",
                root / "base",
                "--tuned",
                root / "tuned",
                "--out",
                root / "diff",
                "--no-progress",
            ]
        )
        shutil.rmtree(root / "tuned")
        recover_s, recover_rss = measure(
            [
                *cli,
                "recover",
                "--raw",
                root / "base",
                "--diff",
                root / "diff",
                "--out",
                root / "out",
                "--no-progress",
            ]
        )
        out_bytes = sum(f.stat().st_size for f in (root / "out").glob("*.safetensors"))
        shutil.rmtree(root / "out")

        # 3. A plain copy of what recover reads (base and diff), one file at a time.
        inputs = sorted((root / "base").glob("*.safetensors")) + sorted(
            (root / "diff").glob("*.safetensors")
        )
        copy_s = copy_files(inputs, root / "copy")
        input_bytes = sum(f.stat().st_size for f in inputs)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    rows = [
        ("make-diff (base + tuned -> diff)", make_s, 2 * model_bytes, model_bytes, make_rss),
        ("recover (base + diff -> model)", recover_s, input_bytes, out_bytes, recover_rss),
        ("copy of base + diff files", copy_s, input_bytes, input_bytes, None),
    ]
    print(f"{'step':34} {'time s':>8} {'read GB':>8} {'written GB':>11} {'peak RSS GB':>12}")
    for name, seconds, read, written, rss in rows:
        rss_text = f"{rss / GB:12.2f}" if rss is not None else f"{'-':>12}"
        print(f"{name:34} {seconds:8.1f} {read / GB:8.2f} {written / GB:11.2f} {rss_text}")
    print(f"\nrecover time / copy time: {recover_s / copy_s:.2f}")
    print(
        f"recover peak RSS {recover_rss / GB:.2f} GB (python + torch alone: "
        f"{baseline_rss / GB:.2f} GB; largest tensor: {(BASE_VOCAB + 1) * HIDDEN * 4 / GB:.2f} GB)"
    )
    print(
        f"the original weight_diff.py holds both models in float32: {2 * model_bytes / GB:.1f} GB "
        f"here, about 54 GB for LLaMA-7B"
    )
    if recover_rss >= args.max_rss_gb * GB:
        print(f"FAIL: recover's peak RSS is not under {args.max_rss_gb} GB", file=sys.stderr)
        return 1
    return 0


def write_models(base_dir: Path, tuned_dir: Path, layers: int, shards: int) -> None:
    """Random LLaMA-shaped float32 base, and tuned = base + noise with one extra vocabulary row."""
    import json

    import torch
    from safetensors.torch import save_file

    base_dir, tuned_dir = Path(base_dir), Path(tuned_dir)

    specs = [("model.embed_tokens.weight", (BASE_VOCAB, HIDDEN))]
    for i in range(layers):
        p = f"model.layers.{i}."
        specs += [
            (p + "self_attn.q_proj.weight", (HIDDEN, HIDDEN)),
            (p + "self_attn.k_proj.weight", (HIDDEN, HIDDEN)),
            (p + "self_attn.v_proj.weight", (HIDDEN, HIDDEN)),
            (p + "self_attn.o_proj.weight", (HIDDEN, HIDDEN)),
            (p + "mlp.gate_proj.weight", (INTERMEDIATE, HIDDEN)),
            (p + "mlp.up_proj.weight", (INTERMEDIATE, HIDDEN)),
            (p + "mlp.down_proj.weight", (HIDDEN, INTERMEDIATE)),
            (p + "input_layernorm.weight", (HIDDEN,)),
            (p + "post_attention_layernorm.weight", (HIDDEN,)),
        ]
    specs += [("model.norm.weight", (HIDDEN,)), ("lm_head.weight", (BASE_VOCAB, HIDDEN))]
    shard_bytes = sum(4 * _numel(shape) for _, shape in specs) / shards

    generator = torch.Generator().manual_seed(0)
    for folder in (base_dir, tuned_dir):
        folder.mkdir(parents=True)
    pending: dict[str, dict] = {"base": {}, "tuned": {}}
    weight_maps: dict[str, dict] = {"base": {}, "tuned": {}}
    files: list[str] = []

    def flush() -> None:
        name = f"model-{len(files) + 1:05d}.safetensors"  # renamed below, once the count is known
        files.append(name)
        for role, folder in (("base", base_dir), ("tuned", tuned_dir)):
            save_file(pending[role], str(folder / name))
            weight_maps[role].update(dict.fromkeys(pending[role], name))
            pending[role] = {}

    size = 0
    for name, shape in specs:
        base = torch.randn(shape, generator=generator).mul_(0.02)
        tuned = base + torch.randn(shape, generator=generator).mul_(0.002)
        if name.endswith(("embed_tokens.weight", "lm_head.weight")):
            tuned = torch.cat([tuned, tuned.mean(dim=0, keepdim=True)])
        pending["base"][name], pending["tuned"][name] = base, tuned
        size += base.numel() * 4
        if size >= shard_bytes * (len(files) + 1) - 1:
            flush()
    if pending["base"]:
        flush()

    final = {f: f"model-{i + 1:05d}-of-{len(files):05d}.safetensors" for i, f in enumerate(files)}
    vocabs = {"base": BASE_VOCAB, "tuned": BASE_VOCAB + 1}
    for role, folder in (("base", base_dir), ("tuned", tuned_dir)):
        vocab = vocabs[role]
        for old, new in final.items():
            (folder / old).rename(folder / new)
        weight_map = {k: final[v] for k, v in weight_maps[role].items()}
        index = {"metadata": {"total_size": 0}, "weight_map": weight_map}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index))
        config = {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "vocab_size": vocab,
            "hidden_size": HIDDEN,
            "intermediate_size": INTERMEDIATE,
            "num_hidden_layers": layers,
            "num_attention_heads": HEADS,
            "num_key_value_heads": HEADS,
            "torch_dtype": "float32",
            "tie_word_embeddings": False,
        }
        (folder / "config.json").write_text(json.dumps(config, indent=2))


def measure(argv: list) -> tuple[float, int]:
    """Run a child process; its wall time in seconds and peak RSS in bytes. Fails if it fails."""
    with tempfile.TemporaryFile() as log:
        started = time.perf_counter()
        process = subprocess.Popen([str(a) for a in argv], stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        log.seek(0)
        output = log.read().decode(errors="replace")
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, argv))} failed:\n{output}")
    return seconds, usage.ru_maxrss * 1024  # Linux reports kilobytes


def copy_files(files: list[Path], dest: Path) -> float:
    """Seconds to copy `files` into `dest` and fsync each, deleting each copy before the next."""
    dest.mkdir()
    started = time.perf_counter()
    for file in files:
        target = dest / file.name
        shutil.copyfile(file, target)
        with open(target, "rb+") as handle:
            os.fsync(handle.fileno())
        elapsed_before_delete = time.perf_counter()
        target.unlink()
        started += time.perf_counter() - elapsed_before_delete  # deletion is not copying
    return time.perf_counter() - started


def _numel(shape: tuple[int, ...]) -> int:
    count = 1
    for size in shape:
        count *= size
    return count


if __name__ == "__main__":
    sys.exit(main())
