"""LoRA adapters on the real engine: an adapter trained by `alpaca-train --lora --no-merge` on the
tiny LLaMA is served beside it as it is, answers as the merged model does, loads and leaves live,
and a bad adapter is refused while the engine keeps serving.

One module fixture trains the adapter (2 steps on a few records of the shipped sample, a high
learning rate so that greedy answers change); one server serves it for every test here. The
merged model's answers come from `transformers` in this process: peft merges the adapter into the
base, greedy generation runs on the same Alpaca prompt, and the decoded new tokens, stripped, must
equal the server's answer (the base's answer is checked the same way, proving the comparison).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.conftest import ServerProcess, tiny_server_env, wait_for
from tests.training.test_train import FAST, SAMPLE, run_cli
from training.prompts import format_prompt

pytestmark = pytest.mark.slow

INSTRUCTIONS = ["Name a primary colour.", "Give one tip for staying healthy."]
NEW_TOKENS = 8


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model_dir) -> Path:
    """alpaca-train's --no-merge output: alpaca_train.json beside adapter/."""
    out = tmp_path_factory.mktemp("adapter-run") / "alpaca-lora"
    result = run_cli(
        "--model",
        str(tiny_model_dir),
        "--data",
        str(SAMPLE),
        "--out",
        str(out),
        *FAST,
        "--lora",
        "--no-merge",
        "--max-steps",
        "2",
        "--learning-rate",
        "5e-2",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "servable beside its base" in result.stderr
    return out


def write_pad_row_adapter(trained: Path, folder: Path, vocab: int) -> None:
    """The adapter a [PAD]-adding LoRA run makes: it also holds a grown lm_head (measured to kill
    vLLM's engine core when handed over unchecked)."""
    import torch
    from safetensors.torch import load_file, save_file

    shutil.copytree(trained / "adapter", folder)
    tensors = load_file(folder / "adapter_model.safetensors")
    tensors["base_model.model.lm_head.weight"] = torch.zeros(vocab + 1, 128)
    save_file(tensors, folder / "adapter_model.safetensors")


@pytest.fixture(scope="module")
def adapter_server(trained, tiny_model_dir, tiny_tokenizer, tmp_path_factory):
    folder = tmp_path_factory.mktemp("adapter-server")
    adapters_dir = folder / "adapters"
    adapters_dir.mkdir()
    shutil.copytree(trained, adapters_dir / "alpaca-lora")
    write_pad_row_adapter(trained, adapters_dir / "pad-row", len(tiny_tokenizer))
    env = {
        **tiny_server_env(tiny_model_dir),
        "ALPACA_ADAPTERS_DIR": str(adapters_dir),
        "ALPACA_ADAPTERS": f"direct={trained / 'adapter'}",
        "ALPACA_ADAPTERS_POLL_S": "0.5",
    }
    server = ServerProcess(env, folder / "server.log")
    server.adapters_dir = adapters_dir
    try:
        server.wait_until_ready()
        yield server
    finally:
        server.stop()


def greedy(server, instruction: str, model: str | None = None) -> str:
    body = {"instruction": instruction, "max_new_tokens": NEW_TOKENS, "temperature": 0.0}
    if model is not None:
        body["model"] = model
    answer = server.client.post("/generate", json=body)
    assert answer.status_code == 200, answer.text
    return answer.json()["text"]


def transformers_greedy(model, tokenizer, instruction: str) -> str:
    import torch

    ids = tokenizer(format_prompt(instruction), return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False)
    return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip()


def test_the_adapter_answers_unlike_the_base_and_as_the_merged_model_does(
    adapter_server, trained, tiny_model_dir, tiny_tokenizer
):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    served = {
        name: [greedy(adapter_server, i, name) for i in INSTRUCTIONS]
        for name in (None, "alpaca-lora", "direct")
    }
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    expected_base = [transformers_greedy(base, tiny_tokenizer, i) for i in INSTRUCTIONS]
    merged = PeftModel.from_pretrained(base, str(trained / "adapter")).merge_and_unload()
    expected_merged = [transformers_greedy(merged, tiny_tokenizer, i) for i in INSTRUCTIONS]

    assert served[None] == expected_base
    assert served["alpaca-lora"] == expected_merged
    assert served["direct"] == expected_merged  # the adapter/ folder itself, named in the setting
    assert served["alpaca-lora"] != served[None]


def test_the_trained_adapter_is_listed_with_its_training(adapter_server, tiny_model_dir):
    info = adapter_server.client.get("/info").json()
    models = {m["name"]: m for m in info["models"]}
    listed = [m["id"] for m in adapter_server.client.get("/v1/models").json()["data"]]

    assert listed == [tiny_model_dir.name, "direct", "alpaca-lora"]
    adapter = models["alpaca-lora"]
    assert (adapter["kind"], adapter["base"], adapter["rank"]) == (
        "adapter",
        tiny_model_dir.name,
        8,
    )
    assert adapter["target_modules"] == ["q_proj", "v_proj"]
    assert adapter["training_arguments"]["lora"]["merge"] is False
    assert adapter["provenance"]["made_by"] == "alpaca-train"
    assert adapter["prompt_template"] == "alpaca"


def test_a_bad_adapter_is_refused_and_the_engine_keeps_serving(adapter_server, tiny_tokenizer):
    client = adapter_server.client
    refused = {r["name"]: r for r in client.get("/info").json()["refused_adapters"]}
    answer = client.post("/generate", json={"instruction": "Hi.", "model": "pad-row"})

    assert "lm_head" in refused["pad-row"]["reason"]
    assert f"{len(tiny_tokenizer) + 1} rows" in refused["pad-row"]["reason"]
    assert answer.status_code == 422 and answer.json()["error"]["type"] == "adapter_refused"
    assert client.get("/ready").status_code == 200
    greedy(adapter_server, "Hi.")
    greedy(adapter_server, "Hi.", "alpaca-lora")
    assert adapter_server.log_text().count("adapter pad-row refused") == 1


def test_an_adapter_copied_in_is_served_live_and_a_removed_one_stops(adapter_server, trained):
    client = adapter_server.client

    def listed() -> list[str]:
        return [m["id"] for m in client.get("/v1/models").json()["data"]]

    shutil.copytree(trained, adapter_server.adapters_dir / "second")
    assert wait_for(lambda: "second" in listed(), timeout=60)
    assert greedy(adapter_server, INSTRUCTIONS[0], "second") == greedy(
        adapter_server, INSTRUCTIONS[0], "alpaca-lora"
    )

    shutil.rmtree(adapter_server.adapters_dir / "second")
    assert wait_for(lambda: "second" not in listed(), timeout=60)
    gone = client.post("/generate", json={"instruction": "Hi.", "model": "second"})
    assert gone.status_code == 404
    assert client.get("/ready").status_code == 200


def test_adapter_generations_are_counted_under_the_adapters_name(adapter_server):
    greedy(adapter_server, "Hi.", "alpaca-lora")
    metrics = adapter_server.client.get("/metrics").text

    assert 'alpaca_requests_total{model_name="alpaca-lora",outcome="success"}' in metrics
