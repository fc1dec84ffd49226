"""Weight diffs end to end on tiny LLaMAs: `alpaca-recover make-diff`, then `recover`.

Run: `python -m pytest tests/recover -q` (a few seconds; no server, no GPU).

The tuned model is the base perturbed, with one more vocabulary row (the `[PAD]` path), saved with
tokenizer files of its own. Recovery is bit-exact for a bfloat16 tuned model; for a float32 one,
`(tuned - raw) + raw` in float32 gives back `tuned` except for elements where the subtraction
rounds; those stay within float32 rounding, |recovered - tuned| <= 2^-23 (|tuned| + |tuned - raw|),
asserted below, and the manifest lists the tensors concerned.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from alpaca_serve.core.provenance import read_provenance
from alpaca_serve.recover import weight_diff
from tests.recover.tiny_models import (
    TOKENIZER_FILES,
    VOCAB,
    load_float32,
    load_tensors,
    original_pad_resize,
    run,
    save_tensors,
)


def test_recovering_a_bfloat16_tuned_model_gives_it_back_bit_for_bit(models, tmp_path, capsys):
    diff = tmp_path / "diff"
    out = tmp_path / "recovered"
    assert (
        run(
            "make-diff", "--raw", models["base"], "--tuned", models["tuned-bfloat16"], "--out", diff
        )
        == 0
    )
    assert run("recover", "--raw", models["base"], "--diff", diff, "--out", out) == 0

    tuned = load_tensors(models["tuned-bfloat16"])
    recovered = load_tensors(out)
    assert recovered.keys() == tuned.keys()
    for name, tensor in tuned.items():
        assert recovered[name].dtype == torch.bfloat16
        assert weight_diff.tensor_sha256(recovered[name]) == weight_diff.tensor_sha256(tensor), name
    assert f"verified {len(tuned)} tensors against the manifest ({len(tuned)} bit-identical" in (
        capsys.readouterr().out
    )
    provenance = read_provenance(out).as_json()  # what the server's /info reports
    assert (provenance["made_by"], provenance["diff"], provenance["base"]) == (
        "alpaca-recover",
        str(diff.resolve()),
        str(models["base"].resolve()),
    )


def test_recovered_float32_model_loads_and_matches_the_tuned_one_within_float32_rounding(
    models, diff_dir, tmp_path, capsys
):
    out = tmp_path / "recovered"
    assert (
        run(
            "recover",
            "--raw",
            models["base"],
            "--diff",
            diff_dir,
            "--out",
            out,
            "--max-shard-size",
            "40KB",
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "verified" in printed and "sum check passed" in printed

    # Sharded like the tuned model would be, with an index, and loadable as it is.
    assert (out / "model.safetensors.index.json").is_file()
    assert len(list(out.glob("model-*-of-*.safetensors"))) > 1
    recovered = load_float32(out)
    tuned = load_float32(models["tuned-float32"])
    base = load_tensors(models["base"])
    assert recovered.keys() == tuned.keys()
    inexact = 0
    for name, expected in tuned.items():
        got = recovered[name]
        assert got.shape == expected.shape
        if not torch.equal(got, expected):
            inexact += 1
            raw = base[name]
            if raw.shape != expected.shape:  # the [PAD] row, as the original initialises it
                raw = torch.cat([raw, raw.mean(dim=0, keepdim=True)])
            # (t - r) rounds once and adding r back rounds once: each by at most half an ulp.
            bound = (expected.abs() + (expected - raw).abs()) * 2**-23
            assert ((got - expected).abs() <= bound).all(), name
    manifest = json.loads((diff_dir / weight_diff.MANIFEST_FILE).read_text())
    assert 0 < inexact == sum("recovered_sha256" in t for t in manifest["tensors"])
    # The tokenizer and config come from the diff (i.e. from the tuned model).
    for name, text in TOKENIZER_FILES.items():
        assert (out / name).read_text() == text
    assert json.loads((out / "config.json").read_text())["vocab_size"] == VOCAB + 1


@pytest.mark.slow  # imports transformers' model classes, which takes seconds
def test_a_recovered_model_loads_in_transformers_with_exactly_the_weights_recovered(
    models, diff_dir, tmp_path
):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "recovered"
    assert run("recover", "--raw", models["base"], "--diff", diff_dir, "--out", out) == 0

    model = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32)
    loaded, saved = model.state_dict(), load_tensors(out)
    assert model.config.vocab_size == VOCAB + 1
    assert loaded.keys() == saved.keys()
    assert all(torch.equal(loaded[name], saved[name]) for name in saved)
    tuned = AutoModelForCausalLM.from_pretrained(str(models["tuned-float32"]), dtype=torch.float32)
    expected = tuned.state_dict()
    assert all(torch.allclose(loaded[k], v, rtol=0, atol=1e-6) for k, v in expected.items())


def test_pad_row_and_diff_match_the_original_script(models, diff_dir):
    # The original: base loaded in float32, [PAD] added with mean rows, diff = tuned - base.
    base = original_pad_resize(load_float32(models["base"]))
    tuned = load_float32(models["tuned-float32"])
    expected_diff = {k: tuned[k] - v for k, v in base.items()}

    diff = load_tensors(diff_dir)
    assert diff.keys() == expected_diff.keys()
    for name, expected in expected_diff.items():
        assert diff[name].dtype == torch.float32
        assert torch.equal(diff[name], expected), name
    manifest = json.loads((diff_dir / weight_diff.MANIFEST_FILE).read_text())
    assert manifest["pad_row_added"] is True


def test_base_with_one_perturbed_tensor_fails_verification_naming_it(
    models, diff_dir, tmp_path, capsys
):
    bad_base = tmp_path / "base"
    shutil.copytree(models["base"], bad_base)
    tensors = load_tensors(bad_base)
    tensors["model.layers.1.mlp.up_proj.weight"][0, 0] += 1e-3
    save_tensors(bad_base, tensors)

    out = tmp_path / "recovered"
    assert run("recover", "--raw", bad_base, "--diff", diff_dir, "--out", out) == 2
    error = capsys.readouterr().err
    assert error.startswith("alpaca-recover: error: model.layers.1.mlp.up_proj.weight does not ")
    assert "wrong base model" in error and error.count("\n") == 1
    assert not out.exists() and list(tmp_path.iterdir()) == [bad_base]


def test_base_saved_in_float16_is_named_as_the_cause(models, diff_dir, tmp_path, capsys):
    half_base = tmp_path / "base"
    shutil.copytree(models["base"], half_base)
    save_tensors(half_base, {k: v.half() for k, v in load_tensors(half_base).items()})

    assert run("recover", "--raw", half_base, "--diff", diff_dir, "--out", tmp_path / "out") == 2
    assert "stores it as float16, the diff was made from a float32 base" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            "missing",
            "the base model lacks 1 tensor that the diff has: "
            "model.layers.0.self_attn.k_proj.weight (wrong base model?)",
        ),
        ("extra", "the base model has 1 tensor that the diff lacks: model.extra.weight"),
        (
            "shape",
            "shape mismatch for model.layers.0.self_attn.k_proj.weight: "
            "base model [16, 32], diff [32, 32]",
        ),
    ],
)
def test_missing_extra_or_misshapen_base_tensor_is_named(
    models, diff_dir, tmp_path, capsys, change, message
):
    base = tmp_path / "base"
    shutil.copytree(models["base"], base)
    tensors = load_tensors(base)
    name = "model.layers.0.self_attn.k_proj.weight"
    if change == "missing":
        del tensors[name]
    elif change == "extra":
        tensors["model.extra.weight"] = torch.zeros(3)
    else:
        tensors[name] = tensors[name][:16]
    save_tensors(base, tensors)

    assert run("recover", "--raw", base, "--diff", diff_dir, "--out", tmp_path / "out") == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_truncated_diff_shard_is_reported_before_anything_is_written(
    models, diff_dir, tmp_path, capsys
):
    diff = tmp_path / "diff"
    shutil.copytree(diff_dir, diff)
    shard = sorted(diff.glob("model-*.safetensors"))[-1]
    shard.write_bytes(shard.read_bytes()[:-100])

    assert run("recover", "--raw", models["base"], "--diff", diff, "--out", tmp_path / "out") == 2
    error = capsys.readouterr().err
    assert f"diff: {shard} is truncated" in error and "download it again" in error
    assert not (tmp_path / "out").exists()


def published_format_diff(models, folder: Path) -> float:
    """A diff as Stanford's script saved it (float32 `.bin` shards + index, no manifest).

    Returns the original's integrity-check value for it: the float32 sum of the recovered
    state_dict's tensor sums.
    """
    raw_state = original_pad_resize(load_float32(models["base"]))
    tuned = load_float32(models["tuned-float32"])
    diff = {k: v - raw_state[k] for k, v in tuned.items()}
    recovered = {k: v + raw_state[k] for k, v in diff.items()}
    expected_sum = float(sum(recovered[k].sum() for k in recovered))

    folder.mkdir()
    names = list(diff)
    shards = [names[: len(names) // 2], names[len(names) // 2 :]]
    weight_map = {}
    for i, shard in enumerate(shards):
        file = f"pytorch_model-{i + 1:05d}-of-{len(shards):05d}.bin"
        torch.save({k: diff[k].contiguous() for k in shard}, folder / file)
        weight_map.update(dict.fromkeys(shard, file))
    index = {"metadata": {"total_size": 0}, "weight_map": dict(sorted(weight_map.items()))}
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    shutil.copyfile(models["tuned-float32"] / "config.json", folder / "config.json")
    for name, text in TOKENIZER_FILES.items():
        (folder / name).write_text(text)
    return expected_sum


def test_published_format_diff_recovers_with_the_original_sum_check(models, tmp_path, capsys):
    diff = tmp_path / "diff"
    expected_sum = published_format_diff(models, diff)

    out = tmp_path / "recovered"
    assert (
        run(
            "recover",
            "--raw",
            models["base"],
            "--diff",
            diff,
            "--out",
            out,
            "--expected-sum",
            repr(expected_sum),
        )
        == 0
    )
    assert f"sum check passed: {expected_sum:.4f}" in capsys.readouterr().out
    recovered = load_float32(out)
    tuned = load_float32(models["tuned-float32"])
    assert all(torch.allclose(recovered[k], tuned[k], rtol=0, atol=1e-6) for k in tuned)

    assert (
        run(
            "recover",
            "--raw",
            models["base"],
            "--diff",
            diff,
            "--out",
            tmp_path / "bad",
            "--expected-sum",
            repr(expected_sum + 0.5),
        )
        == 2
    )
    assert "integrity check failed: the recovered tensors sum to" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_diff_saved_with_rotary_buffers_recovers_against_a_base_without_them(
    models, tmp_path, capsys
):
    # transformers 4.28 (the published diff's) saved each layer's rotary inv_freq; today's does not.
    diff = tmp_path / "diff"
    published_format_diff(models, diff)
    shard = diff / "pytorch_model-00001-of-00002.bin"
    old = {}
    for name, tensor in torch.load(shard, weights_only=True).items():
        old[name] = tensor
        if name.endswith("self_attn.o_proj.weight"):  # where the old state_dict had it
            old[name.replace("o_proj.weight", "rotary_emb.inv_freq")] = torch.zeros(8)
    torch.save(old, shard)
    index_path = diff / "pytorch_model.bin.index.json"
    index = json.loads(index_path.read_text())
    index["weight_map"].update(dict.fromkeys(old, shard.name))
    index_path.write_text(json.dumps(index))

    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, 16, 2).float() / 16))  # head_dim 16
    state = {}
    for file in sorted(diff.glob("*.bin")):
        state.update(torch.load(file, weights_only=True))
    raw_state = original_pad_resize(load_float32(models["base"]))
    expected_sum = float(sum((v + raw_state.get(k, inv_freq)).sum() for k, v in state.items()))

    out = tmp_path / "recovered"
    assert (
        run(
            "recover",
            "--raw",
            models["base"],
            "--diff",
            diff,
            "--out",
            out,
            "--expected-sum",
            repr(expected_sum),
        )
        == 0
    )
    assert "sum check passed" in capsys.readouterr().out
    assert not any("inv_freq" in k for k in load_tensors(out))  # loaders compute it


def test_base_with_tied_embeddings_serves_as_its_own_output_embedding(models, tmp_path):
    base = tmp_path / "base"
    shutil.copytree(models["base"], base)
    tensors = load_tensors(base)
    del tensors["lm_head.weight"]  # a tied base saves only the input embedding
    save_tensors(base, tensors)
    tuned = tmp_path / "tuned"
    shutil.copytree(models["tuned-float32"], tuned)
    tuned_tensors = load_tensors(tuned)
    tuned_tensors["lm_head.weight"] = tuned_tensors["model.embed_tokens.weight"] * 1.01
    save_tensors(tuned, tuned_tensors)

    assert run("make-diff", "--raw", base, "--tuned", tuned, "--out", tmp_path / "diff") == 0
    assert (
        run(
            "recover",
            "--raw",
            base,
            "--diff",
            tmp_path / "diff",
            "--out",
            tmp_path / "out",
            "--dtype",
            "float16",
        )
        == 0
    )
    recovered = load_tensors(tmp_path / "out")
    assert recovered.keys() == tuned_tensors.keys()
    for name, tensor in tuned_tensors.items():
        assert recovered[name].dtype == torch.float16
        # Rounding to float16 after the float32 arithmetic: at most one float16 step apart.
        assert torch.allclose(recovered[name].float(), tensor, rtol=2**-10, atol=2**-24), name
    assert json.loads((tmp_path / "out" / "config.json").read_text())["dtype"] == "float16"


def test_truncated_bin_shard_is_reported(models, tmp_path, capsys):
    diff = tmp_path / "diff"
    published_format_diff(models, diff)
    shard = diff / "pytorch_model-00002-of-00002.bin"
    shard.write_bytes(shard.read_bytes()[:-200])

    assert run("recover", "--raw", models["base"], "--diff", diff, "--out", tmp_path / "out") == 2
    error = capsys.readouterr().err
    assert f"diff: {shard} is not a readable PyTorch file" in error
    assert "truncated or corrupted download?" in error


def test_interrupted_run_leaves_no_output_folder(models, diff_dir, tmp_path, monkeypatch, capsys):
    writes = []

    def interrupt_after_two(self, name, tensor):
        writes.append(name)
        if len(writes) == 2:
            raise KeyboardInterrupt
        real_write(self, name, tensor)

    real_write = weight_diff._ShardedWriter.write
    monkeypatch.setattr(weight_diff._ShardedWriter, "write", interrupt_after_two)
    out = tmp_path / "recovered"
    assert run("recover", "--raw", models["base"], "--diff", diff_dir, "--out", out) == 130
    assert "interrupted" in capsys.readouterr().err
    assert len(writes) == 2
    assert list(tmp_path.iterdir()) == []  # neither the output nor its staging folder


def test_not_enough_disk_space_is_refused_before_starting(
    models, diff_dir, tmp_path, monkeypatch, capsys
):
    full_disk = SimpleNamespace(total=10**12, used=10**12 - 1000, free=1000)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: full_disk)
    assert run("recover", "--raw", models["base"], "--diff", diff_dir, "--out", tmp_path / "o") == 2
    assert "not enough disk space in" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_existing_output_is_kept_unless_forced(models, diff_dir, tmp_path, capsys):
    out = tmp_path / "recovered"
    out.mkdir()
    assert run("recover", "--raw", models["base"], "--diff", diff_dir, "--out", out) == 2
    assert "output folder exists" in capsys.readouterr().err
    assert run("recover", "--raw", models["base"], "--diff", diff_dir, "--out", out, "--force") == 0
    assert (out / "model.safetensors").is_file()


def test_command_help_lists_both_subcommands():
    command = shutil.which("alpaca-recover")  # the console script, once the project is installed
    argv = [command] if command else [sys.executable, "-m", "alpaca_serve.recover.cli"]
    result = subprocess.run(
        [*argv, "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "make-diff" in result.stdout and "recover" in result.stdout


def test_model_folders_are_opened_to_every_user(tmp_path):
    """Recovered as one user (root in the image), served as another."""
    from alpaca_serve.recover.folders import open_to_all

    folder = tmp_path / "model"
    (folder / "sub").mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"x")
    (folder / "model.safetensors").chmod(0o600)
    folder.chmod(0o700)
    open_to_all(folder)
    assert folder.stat().st_mode & 0o777 == 0o755
    assert (folder / "sub").stat().st_mode & 0o777 == 0o755
    assert (folder / "model.safetensors").stat().st_mode & 0o777 == 0o644
