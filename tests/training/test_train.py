"""`alpaca-train` on a tiny LLaMA on CPU: it learns, LoRA touches only adapters, the merge is exact,
resume continues, bad data stops it early, it shows its progress and reports to trackers, and what
it writes is served by the real server, which reports where the model came from."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from alpaca_serve.core.prompts import TEMPLATE_NAME
from alpaca_serve.evaluation.datasets import ALPACA_SAMPLE as SAMPLE
from alpaca_serve.training.args import (
    ArgsError,
    DataArgs,
    DpoArgs,
    LoraArgs,
    TrainArgs,
    parse_args,
)
from alpaca_serve.training.cli import main
from alpaca_serve.training.data import AlpacaRecord
from alpaca_serve.training.train import (
    CONFIGS,
    build_trainer,
    build_training_args,
    load_model,
    load_training_records,
)
from tests.support import ROOT, ServerProcess, tiny_server_env

# Small and quick on two CPU cores: short examples, tiny batches.
FAST = [
    "--preset",
    "tiny",
    "--model-max-length",
    "64",
    "--global-batch-size",
    "2",
    "--micro-batch-size",
    "2",
    "--logging-steps",
    "1",
]


def run_cli(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "alpaca_serve.training.cli", *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )


def short_records(n: int) -> list[AlpacaRecord]:
    from alpaca_serve.training.data import load_records

    return [r for r in load_records(SAMPLE) if len(r.output) < 60][:n]


def write_records(path: Path, records: list) -> Path:
    path.write_text(json.dumps(records))
    return path


def fixed_batch_loss(model, trainer) -> float:
    import torch

    batch = trainer.data_collator(list(trainer.train_dataset))
    model.eval()
    with torch.no_grad():
        loss = model(**batch).loss.item()
    model.train()
    return loss


def in_process_trainer(tmp_path, tiny_model_dir, records, *extra):
    """The pieces `main` builds, kept in reach so a test can look inside the model."""
    from transformers import AutoTokenizer

    from alpaca_serve.training.tokenization import tokenize_records

    args = parse_args(
        [
            "--model",
            str(tiny_model_dir),
            "--data",
            str(SAMPLE),
            "--out",
            str(tmp_path / "out"),
            *FAST,
            *extra,
        ]
    )
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    examples, _ = tokenize_records(records, tokenizer, args.data.model_max_length)
    training_args = build_training_args(args, args.train.gradient_accumulation_steps(1))
    model = load_model(args, tokenizer)
    return model, build_trainer(args, model, tokenizer, examples, training_args)


def test_help_explains_every_option():
    result = run_cli("--help")

    assert result.returncode == 0
    for group in (TrainArgs, DataArgs, LoraArgs, DpoArgs):
        for field in dataclasses.fields(group):
            assert f"--{field.name.replace('_', '-')}" in result.stdout
    assert "torchrun" in result.stdout
    assert "--report-to REPORT_TO" in result.stdout and "tensorboard" in result.stdout


def test_an_invalid_record_stops_the_run_before_training_naming_its_index(tmp_path):
    good = {"instruction": "Say hi.", "output": "Hi!"}
    data = write_records(tmp_path / "bad.json", [good, good, {"instruction": "No answer."}])

    result = run_cli("--model", str(ROOT), "--data", str(data), "--out", str(tmp_path / "out"))

    assert result.returncode == 2
    # --model is checked first; give it a real folder and the data error shows.
    assert "--model" in result.stderr
    config_dir = tmp_path / "model"
    config_dir.mkdir()
    (config_dir / "config.json").write_text("{}")
    result = run_cli(
        "--model", str(config_dir), "--data", str(data), "--out", str(tmp_path / "out")
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"alpaca-train: error: {data}: record 2: 'output' is missing"
    ]
    assert not (tmp_path / "out").exists()


def test_skip_invalid_drops_bad_records_and_counts_them(tmp_path):
    good = {"instruction": "Say hi.", "output": "Hi!"}
    data = write_records(
        tmp_path / "mixed.json", [good, {"instruction": 3, "output": ""}, good, "not an object"]
    )

    records, skipped = load_training_records(data, skip_invalid=True)

    assert (len(records), skipped) == (2, 2)


def test_a_global_batch_that_does_not_divide_is_a_one_line_error(tmp_path, capsys):
    status = main(
        [
            "--model",
            "m",
            "--data",
            "d",
            "--out",
            str(tmp_path),
            "--global-batch-size",
            "10",
            "--micro-batch-size",
            "4",
        ]
    )

    assert status == 2
    assert capsys.readouterr().err == (
        "alpaca-train: error: --global-batch-size 10 is not a multiple of --micro-batch-size 4\n"
    )


def test_presets_follow_the_alpaca_paper_and_accumulation_follows_the_world_size():
    def resolved(*extra):
        return parse_args(["--model", "m", "--data", "d", "--out", "o", *extra])

    seven = resolved()
    assert (
        seven.train.global_batch_size,
        seven.train.learning_rate,
        seven.train.epochs,
        seven.data.model_max_length,
        seven.train.warmup_ratio,
        seven.train.lr_scheduler,
        seven.train.weight_decay,
    ) == (128, 2e-5, 3, 512, 0.03, "cosine", 0.0)
    assert seven.train.gradient_accumulation_steps(world_size=8) == 4  # 4 x 4 x 8 = 128
    assert seven.train.gradient_accumulation_steps(world_size=1) == 32
    thirteen = resolved("--preset", "13b")
    assert (thirteen.train.learning_rate, thirteen.train.epochs) == (1e-5, 5)
    lora = resolved("--lora")
    assert (
        lora.train.learning_rate,
        lora.lora.lora_r,
        lora.lora.lora_alpha,
        lora.lora.lora_dropout,
        lora.lora.lora_target_modules,
    ) == (3e-4, 8, 16, 0.05, ["q_proj", "v_proj"])
    assert resolved("--learning-rate", "1e-4", "--lora").train.learning_rate == 1e-4


def test_fsdp_shards_fully_and_wraps_the_decoder_layer_class_read_from_the_model(
    tiny_model_dir, tmp_path
):
    args = parse_args(
        ["--model", str(tiny_model_dir), "--data", "d", "--out", str(tmp_path), "--fsdp"]
    )

    training_args = build_training_args(args, args.train.gradient_accumulation_steps(8))

    assert args.train.fsdp == "full_shard auto_wrap"
    assert training_args.fsdp
    assert training_args.fsdp_config["transformer_layer_cls_to_wrap"] == ["LlamaDecoderLayer"]
    assert training_args.fsdp_config["reshard_after_forward"] is True  # full shard
    assert training_args.gradient_accumulation_steps == 4


@pytest.mark.parametrize(
    "value, reshard, offload",
    [
        ("full_shard auto_wrap", True, False),
        ("auto_wrap", True, False),
        ("shard_grad_op auto_wrap", False, False),
        ("full_shard auto_wrap offload", True, True),
    ],
)
def test_alpacas_fsdp_flags_are_accepted_as_its_command_line_spelled_them(
    tiny_model_dir, tmp_path, value, reshard, offload
):
    args = parse_args(
        ["--model", str(tiny_model_dir), "--data", "d", "--out", str(tmp_path)]
        + ["--fsdp", value, "--fsdp_transformer_layer_cls_to_wrap", "LlamaDecoderLayer"]
    )

    config = build_training_args(args, 1).fsdp_config

    assert config["transformer_layer_cls_to_wrap"] == ["LlamaDecoderLayer"]
    assert config["reshard_after_forward"] is reshard
    assert config["cpu_offload"] is offload


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--fsdp", "full_shard zero"], "--fsdp: unknown zero"),
        (["--fsdp", "full_shard shard_grad_op"], "two strategies"),
        (["--fsdp-transformer-layer-cls-to-wrap", "LlamaDecoderLayer"], "is for --fsdp"),
        (["--ddp-timeout", "0"], "--ddp-timeout must be at least 1"),
        (["--method", "dpo", "--record-batches"], "--record-batches is for --method sft"),
    ],
)
def test_bad_scale_out_options_are_one_line_errors(tmp_path, capsys, extra, message):
    data = write_records(tmp_path / "d.json", [dataclasses.asdict(r) for r in short_records(2)])

    status = main(["--model", str(tmp_path), "--data", str(data), *extra])

    assert status == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("alpaca-train: error:") and message in line


def test_a_layer_class_the_model_does_not_have_is_refused_naming_its_own(tiny_model_dir, tmp_path):
    args = parse_args(
        ["--model", str(tiny_model_dir), "--data", "d", "--out", str(tmp_path)]
        + ["--fsdp", "--fsdp-transformer-layer-cls-to-wrap", "GPT2Block"]
    )

    with pytest.raises(
        ArgsError, match="GPT2Block is not a class of this model.*LlamaDecoderLayer"
    ):
        build_training_args(args, 1)


@pytest.mark.parametrize(
    "extra, reason",
    [
        (
            [
                "--fsdp",
                "full_shard auto_wrap",
                "--fsdp_transformer_layer_cls_to_wrap",
                "LlamaDecoderLayer",
            ],
            "--fsdp needs GPUs: on CPU the Trainer (accelerate) enables FSDP only for GPU",
        ),
        (
            ["--deepspeed", str(CONFIGS / "deepspeed_zero3.json")],
            "--deepspeed with ZeRO stage 3 needs GPUs",
        ),
        (
            ["--deepspeed", str(CONFIGS / "deepspeed_zero3_offload.json")],
            "--deepspeed with ZeRO stage 3 needs GPUs",
        ),
    ],
)
def test_sharding_on_a_machine_without_a_gpu_is_refused_in_one_line_before_any_work(
    tmp_path, tiny_model_dir, capsys, monkeypatch, extra, reason
):
    import torch

    import alpaca_serve.training.cli as cli

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # as here and in CI
    monkeypatch.setattr(cli, "load_training_data", lambda *a: pytest.fail("data was read"))
    out = tmp_path / "out"
    status = main(
        ["--model", str(tiny_model_dir), "--data", str(SAMPLE), "--out", str(out), *extra]
    )

    assert status == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"alpaca-train: error: {reason}")
    assert not out.exists()


@pytest.mark.parametrize(
    "text, reason",
    [
        ("{not json", "is not a DeepSpeed JSON config"),
        ('{"zero_optimization": {"stage": 4}}', "zero_optimization.stage is 4, not 0-3"),
    ],
)
def test_a_deepspeed_config_that_cannot_be_read_is_refused_in_one_line(
    tmp_path, tiny_model_dir, capsys, text, reason
):
    config = tmp_path / "zero.json"
    config.write_text(text)

    status = main(
        ["--model", str(tiny_model_dir), "--data", str(SAMPLE), "--out", str(tmp_path / "out")]
        + ["--deepspeed", str(config)]
    )

    assert status == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("alpaca-train: error: --deepspeed: ") and reason in line


def test_shipped_scale_out_configs_are_full_shard_fsdp_and_zero_2_and_3_with_offload():
    import yaml

    configs = ROOT / "alpaca_serve" / "training" / "configs"
    launcher = yaml.safe_load((configs / "fsdp.yaml").read_text())
    assert launcher["distributed_type"] == "FSDP"
    assert launcher["fsdp_config"]["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    assert launcher["fsdp_config"]["fsdp_reshard_after_forward"] is True
    stages = {
        "deepspeed_zero2.json": 2,
        "deepspeed_zero3.json": 3,
        "deepspeed_zero3_offload.json": 3,
    }
    for name, stage in stages.items():
        zero = json.loads((configs / name).read_text())
        assert zero["zero_optimization"]["stage"] == stage
        # Batch sizes and accumulation come from alpaca-train's arguments, not the file.
        assert zero["train_batch_size"] == zero["gradient_accumulation_steps"] == "auto"
        if stage == 3:  # a servable model at the end: the shards gathered
            assert zero["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
    offload = json.loads((configs / "deepspeed_zero3_offload.json").read_text())
    for part in ("offload_optimizer", "offload_param"):  # Alpaca's default_offload_opt_param
        assert offload["zero_optimization"][part]["device"] == "cpu"


def test_full_fine_tuning_loss_on_a_fixed_batch_falls_over_a_few_dozen_steps(
    tmp_path, tiny_model_dir
):
    model, trainer = in_process_trainer(
        tmp_path,
        tiny_model_dir,
        short_records(2),
        "--max-steps",
        "30",
        "--learning-rate",
        "1e-3",
        "--save-steps",
        "1000",
    )
    before = fixed_batch_loss(model, trainer)

    trainer.train()

    after = fixed_batch_loss(model, trainer)
    assert after < before - 2.0, (before, after)  # from ~10.8 (random) by more than 2 nats


def test_lora_changes_every_adapter_weight_and_no_frozen_weight(tmp_path, tiny_model_dir):
    import torch

    model, trainer = in_process_trainer(
        tmp_path,
        tiny_model_dir,
        short_records(2),
        "--lora",
        "--max-steps",
        "4",
        "--learning-rate",
        "1e-3",
        "--save-steps",
        "1000",
    )
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    adapters = {name for name, p in model.named_parameters() if p.requires_grad}
    assert adapters and all("lora_" in name for name in adapters)

    trainer.train()

    after = dict(model.named_parameters())
    for name, old in before.items():
        if name in adapters:
            assert not torch.equal(after[name], old), f"adapter weight {name} did not change"
        else:
            assert torch.equal(after[name], old), f"frozen weight {name} changed"


def test_training_resumes_from_the_saved_step(tmp_path, tiny_model_dir, capsys):
    data = write_records(tmp_path / "d.json", [dataclasses.asdict(r) for r in short_records(4)])
    common = [
        "--model",
        str(tiny_model_dir),
        "--data",
        str(data),
        "--out",
        str(tmp_path / "out"),
        *FAST,
        "--save-steps",
        "2",
    ]
    assert main([*common, "--max-steps", "2"]) == 0
    capsys.readouterr()

    assert main([*common, "--max-steps", "4"]) == 2  # refuses to start over on checkpoints
    assert "pass --resume" in capsys.readouterr().err
    assert main([*common, "--max-steps", "4", "--resume"]) == 0

    log = capsys.readouterr().err
    assert "resuming from" in log and "checkpoint-2" in log
    assert "step 3/4" in log and "step 1/4" not in log
    assert "done: 2 steps" in log
    state = json.loads(
        (tmp_path / "out" / "checkpoints" / "checkpoint-4" / "trainer_state.json").read_text()
    )
    assert state["global_step"] == 4
    assert [e["step"] for e in state["log_history"] if "loss" in e] == [1, 2, 3, 4]


@pytest.mark.parametrize("option", ["--packing", "--group-by-length"])
def test_packing_and_length_grouping_train_to_a_servable_folder(
    tmp_path, tiny_model_dir, capsys, option
):
    data = write_records(tmp_path / "d.json", [dataclasses.asdict(r) for r in short_records(8)])

    status = main(
        [
            "--model",
            str(tiny_model_dir),
            "--data",
            str(data),
            "--out",
            str(tmp_path / "out"),
            *FAST,
            "--micro-batch-size",
            "2",
            "--global-batch-size",
            "4",
            "--max-steps",
            "2",
            option,
        ]
    )

    assert status == 0
    assert "done: 2 steps" in capsys.readouterr().err
    assert (tmp_path / "out" / "model.safetensors").is_file()


def test_trackers_reach_the_trainer_and_a_missing_or_unknown_one_is_a_one_line_error(
    tmp_path, tiny_model_dir, capsys
):
    from transformers.integrations import (
        INTEGRATION_TO_CALLBACK,
        get_available_reporting_integrations,
    )

    def args(report_to):
        return parse_args(
            [
                "--model",
                str(tiny_model_dir),
                "--data",
                str(SAMPLE),
                "--out",
                str(tmp_path / "out"),
                *FAST,
                "--report-to",
                report_to,
            ]
        )

    assert build_training_args(args("tensorboard, WandB"), 1).report_to == ["tensorboard", "wandb"]
    assert build_training_args(args("none"), 1).report_to == []
    # A tracker the Trainer knows whose package is not installed here (tensorboard if absent).
    installed = get_available_reporting_integrations()
    missing = next(
        name
        for name in ("tensorboard", *sorted(INTEGRATION_TO_CALLBACK))
        if name not in installed and name != "flyte"
    )
    common = [
        "--model",
        str(tiny_model_dir),
        "--data",
        str(SAMPLE),
        "--out",
        str(tmp_path / "out"),
        *FAST,
        "--max-steps",
        "1",
    ]

    assert main([*common, "--report-to", missing]) == 2
    error = capsys.readouterr().err.splitlines()[-1]
    assert re.fullmatch(
        rf"alpaca-train: error: --report-to {missing}: its package is not installed "
        r"\(pip install \S+\)",
        error,
    ), error
    assert main([*common, "--report-to", "tensorboard,nosuch"]) == 2
    last_line = capsys.readouterr().err.splitlines()[-1]
    assert last_line.startswith(
        "alpaca-train: error: --report-to: unknown tracker 'nosuch'; the Trainer knows none, all, "
    )
    assert main([*common, "--report-to", "none,wandb"]) == 2
    assert capsys.readouterr().err == (
        "alpaca-train: error: --report-to: none and all stand alone, got 'none,wandb'\n"
    )
    assert not (tmp_path / "out").exists()


def test_report_to_tensorboard_writes_its_event_files(tmp_path, tiny_model_dir):
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        pytest.fail(
            "tensorboard is needed (the test extra has it: `make setup` or "
            "`pip install -e '.[test]'` installs it)",
            pytrace=False,
        )
    data = write_records(tmp_path / "d.json", [dataclasses.asdict(r) for r in short_records(2)])

    assert (
        main(
            [
                "--model",
                str(tiny_model_dir),
                "--data",
                str(data),
                "--out",
                str(tmp_path / "out"),
                *FAST,
                "--max-steps",
                "1",
                "--report-to",
                "tensorboard",
            ]
        )
        == 0
    )

    assert list((tmp_path / "out" / "checkpoints" / "runs").glob("*/events.out.tfevents.*"))


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tiny_model_dir) -> tuple[Path, str]:
    """A LoRA run of the real command line, merged: its output folder and its stderr."""
    out = tmp_path_factory.mktemp("lora-run") / "out"
    result = run_cli(
        "--model",
        str(tiny_model_dir),
        "--data",
        str(SAMPLE),
        "--out",
        str(out),
        *FAST,
        "--lora",
        "--max-steps",
        "3",
        "--learning-rate",
        "1e-2",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "done: 3 steps" in result.stderr
    return out, result.stderr


@pytest.fixture(scope="module")
def lora_output(lora_run) -> Path:
    """The folder the server is given."""
    return lora_run[0]


def test_the_command_shows_a_progress_bar_and_a_line_per_logging_step(lora_run):
    _, stderr = lora_run
    # tqdm redraws its bar in place (carriage returns); the last drawing is the finished bar.
    bars = [d for d in re.split(r"[\r\n]", stderr) if d.startswith("alpaca-train: training:")]

    assert bars, stderr[-3000:]
    assert re.search(r"100%\|.*\| 3/3 \[.*loss=\d+\.\d{4}, lr=\S+\]$", bars[-1]), bars[-1]
    for step in (1, 2, 3):
        assert re.search(rf"^alpaca-train: step {step}/3 \| loss \d", stderr, re.M), step


def test_lora_output_folder_describes_itself_and_holds_weights_tokenizer_and_adapter(
    lora_output,
):
    for name in (
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "alpaca_train.json",
        "adapter/adapter_model.safetensors",
        "adapter/adapter_config.json",
    ):
        assert (lora_output / name).is_file(), name
    info = json.loads((lora_output / "alpaca_train.json").read_text())
    assert info["prompt_template"] == TEMPLATE_NAME
    assert (info["method"], info["merged"]) == ("lora", True)
    assert info["arguments"]["lora"]["lora_r"] == 8
    assert info["arguments"]["train"]["max_steps"] == 3
    assert info["result"]["global_step"] == 3 and info["result"]["tokens"] > 0


def test_merged_model_equals_base_plus_adapter(lora_output, tiny_model_dir):
    import torch
    from safetensors.torch import load_file

    base = load_file(tiny_model_dir / "model.safetensors")
    merged = load_file(lora_output / "model.safetensors")
    adapter = load_file(lora_output / "adapter" / "adapter_model.safetensors")
    config = json.loads((lora_output / "adapter" / "adapter_config.json").read_text())
    scale = config["lora_alpha"] / config["r"]

    assert set(merged) == set(base)
    merged_modules = 0
    for name, weight in base.items():
        module = name.removesuffix(".weight")
        a = adapter.get(f"base_model.model.{module}.lora_A.weight")
        if a is None:
            assert torch.equal(merged[name], weight), f"{name} changed without an adapter"
            continue
        b = adapter[f"base_model.model.{module}.lora_B.weight"]
        assert b.abs().max() > 0, f"{module}: adapter did not train"
        torch.testing.assert_close(merged[name], weight + scale * (b @ a), rtol=0, atol=1e-6)
        merged_modules += 1
    assert merged_modules == 4  # q_proj and v_proj in 2 layers


@pytest.mark.slow
def test_a_model_trained_by_the_command_is_served_and_info_reports_its_training(
    lora_output, tiny_model_dir, tmp_path
):
    server = ServerProcess(tiny_server_env(lora_output), tmp_path / "server.log")
    try:
        server.wait_until_ready()
        response = server.client.post(
            "/generate", json={"instruction": "Name a primary colour.", "max_new_tokens": 4}
        )
        info = server.client.get("/info").json()
    finally:
        server.stop()

    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] >= 1
    assert info["prompt_template"] == TEMPLATE_NAME
    provenance = info["provenance"]
    assert (provenance["made_by"], provenance["marker"], provenance["prompt_template_source"]) == (
        "alpaca-train",
        "alpaca_train.json",
        "marker",
    )
    assert (provenance["method"], provenance["base_model"], provenance["data"]) == (
        "lora",
        str(tiny_model_dir),
        str(SAMPLE),
    )
    assert provenance["created_at"]


def test_lora_on_a_tokenizer_without_pad_makes_an_adapter_the_server_accepts(
    tmp_path, tiny_model_dir
):
    from safetensors import safe_open

    from alpaca_serve.server.adapters import BaseModel, inspect_adapter

    base = tmp_path / "no-pad-base"
    shutil.copytree(tiny_model_dir, base)
    config_path = base / "tokenizer_config.json"
    tokenizer_config = json.loads(config_path.read_text())
    tokenizer_config["pad_token"] = None
    config_path.write_text(json.dumps(tokenizer_config))
    out = tmp_path / "out"

    result = run_cli(
        "--model", str(base), "--data", str(SAMPLE), "--out", str(out), *FAST,
        "--lora", "--no-merge", "--max-steps", "1",
    )  # fmt: skip

    assert result.returncode == 0, result.stderr[-3000:]
    assert "pads with <|im_end|> (no new row" in result.stderr
    assert "servable beside its base" in result.stderr
    with safe_open(out / "adapter" / "adapter_model.safetensors", framework="numpy") as weights:
        assert all(".lora_A." in name or ".lora_B." in name for name in weights.keys())
    info = json.loads((out / "alpaca_train.json").read_text())
    assert (info["added_tokens"], info["adapter_servable_unmerged"]) == ([], True)
    files = inspect_adapter(out, BaseModel.read(base.name, base), max_rank=16)
    assert files.weights_dir == out / "adapter" and files.rank == 8


def test_several_data_files_are_one_data_set_and_the_run_records_their_hashes_and_its_loss_curve(
    tmp_path, tiny_model_dir
):
    records = [dataclasses.asdict(record) for record in short_records(6)]
    first = write_records(tmp_path / "first.json", records[:2])
    second = write_records(tmp_path / "second.json", records[2:])
    out = tmp_path / "out"

    result = run_cli(
        "--model", str(tiny_model_dir), "--data", str(first), str(second), "--out", str(out),
        *FAST, "--max-steps", "3",
    )  # fmt: skip

    assert result.returncode == 0, result.stderr[-3000:]
    assert f"data: 6 records from {first} (2), {second} (4)" in result.stderr
    info = json.loads((out / "alpaca_train.json").read_text())
    assert info["data"]["records"] == 6
    assert info["data"]["files"] == [
        {"path": str(path), "sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "records": n}
        for path, n in ((first, 2), (second, 4))
    ]
    assert info["arguments"]["data"]["data"] == [str(first), str(second)]
    # A loss at every logging step (1 here), as the log lines show them.
    curve = info["result"]["loss_curve"]
    assert [step for step, _ in curve] == [1, 2, 3]
    for step, loss in curve:
        assert f"step {step}/3 | loss {loss:.4f}" in result.stderr
    # Run from this checkout: the commit of the code that trained.
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    assert info["commit"].split("+")[0] == head.stdout.strip()


def test_dpo_takes_one_data_file_and_says_so(tmp_path, capsys):
    pairs = ROOT / "alpaca_serve" / "training" / "sample_data" / "preference_pairs.jsonl"
    code = main(
        ["--method", "dpo", "--model", str(tmp_path), "--out", str(tmp_path / "out"),
         "--data", str(pairs), str(pairs)]
    )  # fmt: skip
    assert code == 2
    error = capsys.readouterr().err
    assert "--method dpo reads one --data file of preference data, got 2" in error
