"""LoRA adapters on the real engine: an adapter trained by `alpaca-train --lora --no-merge` on the
tiny LLaMA is served beside it as it is, answers as the merged model does, loads and leaves live,
and a bad adapter is refused while the engine keeps serving.

The session fixtures of tests/conftest.py train the adapter (`tiny_adapter`: 2 steps on a few
records of the shipped sample, a high learning rate so that greedy answers change) and start one
server that serves it (`tiny_adapter_server`, shared with the demo's browser test). The
merged model's answers come from `transformers` in this process: peft merges the adapter into the
base, greedy generation runs on the same Alpaca prompt, and the decoded new tokens, stripped, must
equal the server's answer (the base's answer is checked the same way, proving the comparison).
"""

from __future__ import annotations

import shutil

import pytest

from alpaca_serve.core.prompts import format_prompt
from tests.support import wait_for

pytestmark = pytest.mark.slow

INSTRUCTIONS = ["Name a primary colour.", "Give one tip for staying healthy."]
NEW_TOKENS = 8


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
    tiny_adapter_server, tiny_adapter, tiny_model_dir, tiny_tokenizer
):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    served = {
        name: [greedy(tiny_adapter_server, i, name) for i in INSTRUCTIONS]
        for name in (None, "alpaca-lora", "direct")
    }
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    expected_base = [transformers_greedy(base, tiny_tokenizer, i) for i in INSTRUCTIONS]
    merged = PeftModel.from_pretrained(base, str(tiny_adapter / "adapter")).merge_and_unload()
    expected_merged = [transformers_greedy(merged, tiny_tokenizer, i) for i in INSTRUCTIONS]

    assert served[None] == expected_base
    assert served["alpaca-lora"] == expected_merged
    assert served["direct"] == expected_merged  # the adapter/ folder itself, named in the setting
    assert served["alpaca-lora"] != served[None]


def test_the_trained_adapter_is_listed_with_its_training(tiny_adapter_server, tiny_model_dir):
    info = tiny_adapter_server.client.get("/info").json()
    models = {m["name"]: m for m in info["models"]}
    listed = [m["id"] for m in tiny_adapter_server.client.get("/v1/models").json()["data"]]

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


def test_a_bad_adapter_is_refused_and_the_engine_keeps_serving(tiny_adapter_server, tiny_tokenizer):
    client = tiny_adapter_server.client
    refused = {r["name"]: r for r in client.get("/info").json()["refused_adapters"]}
    answer = client.post("/generate", json={"instruction": "Hi.", "model": "pad-row"})

    assert "lm_head" in refused["pad-row"]["reason"]
    assert f"{len(tiny_tokenizer) + 1} rows" in refused["pad-row"]["reason"]
    assert answer.status_code == 422 and answer.json()["error"]["type"] == "adapter_refused"
    assert client.get("/ready").status_code == 200
    greedy(tiny_adapter_server, "Hi.")
    greedy(tiny_adapter_server, "Hi.", "alpaca-lora")
    assert tiny_adapter_server.log_text().count("adapter pad-row refused") == 1


def test_an_adapter_copied_in_is_served_live_and_a_removed_one_stops(
    tiny_adapter_server, tiny_adapter
):
    client = tiny_adapter_server.client

    def listed() -> list[str]:
        return [m["id"] for m in client.get("/v1/models").json()["data"]]

    shutil.copytree(tiny_adapter, tiny_adapter_server.adapters_dir / "second")
    assert wait_for(lambda: "second" in listed(), timeout=60)
    assert greedy(tiny_adapter_server, INSTRUCTIONS[0], "second") == greedy(
        tiny_adapter_server, INSTRUCTIONS[0], "alpaca-lora"
    )

    shutil.rmtree(tiny_adapter_server.adapters_dir / "second")
    assert wait_for(lambda: "second" not in listed(), timeout=60)
    gone = client.post("/generate", json={"instruction": "Hi.", "model": "second"})
    assert gone.status_code == 404
    assert client.get("/ready").status_code == 200


def test_adapter_generations_are_counted_under_the_adapters_name(tiny_adapter_server):
    greedy(tiny_adapter_server, "Hi.", "alpaca-lora")
    metrics = tiny_adapter_server.client.get("/metrics").text

    assert 'alpaca_requests_total{model_name="alpaca-lora",outcome="success"}' in metrics
