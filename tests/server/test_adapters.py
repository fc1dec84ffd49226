"""LoRA adapters served as models beside the base, on the scripted engine (the fast layer).

The adapters here are small safetensors files written with numpy in the shapes of the tiny LLaMA
(hidden 128, 2 layers, 2 heads); the base is a folder holding only that config.json, which is
what the server's checks read. The scripted engine answers an adapter's request with the
adapter's name in front, so a test sees which model answered. tests/server/test_adapters_vllm.py
proves the same on the real engine with adapters trained by `alpaca-train`.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import struct
import threading
from pathlib import Path

import httpx
import numpy as np
import pytest

from alpaca_serve.server.adapters import AdapterRegistry
from alpaca_serve.server.settings import ServerSettings
from tests.scripted_engine import ScriptedEngine
from tests.support import read_metrics, start_server, wait_for

HIDDEN, LAYERS, HEADS, INTERMEDIATE, VOCAB = 128, 2, 2, 256, 49152
TINY_CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": HIDDEN,
    "intermediate_size": INTERMEDIATE,
    "num_hidden_layers": LAYERS,
    "num_attention_heads": HEADS,
    "num_key_value_heads": HEADS,
    "vocab_size": VOCAB,
    "max_position_embeddings": 1024,
}
SHAPES = {  # (in, out) of each projection of the tiny LLaMA
    "q_proj": (HIDDEN, HIDDEN),
    "k_proj": (HIDDEN, HIDDEN),
    "v_proj": (HIDDEN, HIDDEN),
    "o_proj": (HIDDEN, HIDDEN),
    "gate_proj": (HIDDEN, INTERMEDIATE),
    "up_proj": (HIDDEN, INTERMEDIATE),
    "down_proj": (INTERMEDIATE, HIDDEN),
}
BLOCK = {"gate_proj": "mlp", "up_proj": "mlp", "down_proj": "mlp"}


def lora_tensors(r: int = 8, modules=("q_proj", "v_proj"), layers: int = LAYERS, hidden=HIDDEN):
    tensors = {}
    for layer in range(layers):
        for module in modules:
            inputs, outputs = SHAPES[module]
            inputs = hidden if inputs == HIDDEN else inputs
            prefix = f"base_model.model.model.layers.{layer}.{BLOCK.get(module, 'self_attn')}"
            tensors[f"{prefix}.{module}.lora_A.weight"] = np.full((r, inputs), 0.01, np.float32)
            tensors[f"{prefix}.{module}.lora_B.weight"] = np.full((outputs, r), 0.01, np.float32)
    return tensors


def write_adapter(folder: Path, tensors=None, r: int = 8, base: str = "tiny-base", **config):
    """A PEFT adapter folder: adapter_config.json and adapter_model.safetensors."""
    from safetensors.numpy import save_file

    folder.mkdir(parents=True, exist_ok=True)
    adapter_config = {
        "peft_type": "LORA",
        "r": r,
        "lora_alpha": 16,
        "target_modules": ["q_proj", "v_proj"],
        "bias": "none",
        "base_model_name_or_path": base,
        "modules_to_save": None,
        **config,
    }
    (folder / "adapter_config.json").write_text(json.dumps(adapter_config))
    save_file(
        tensors if tensors is not None else lora_tensors(r), folder / "adapter_model.safetensors"
    )
    return folder


def write_trained_adapter(folder: Path) -> Path:
    """alpaca-train's --no-merge layout: alpaca_train.json beside an adapter/ folder."""
    write_adapter(folder / "adapter")
    marker = {
        "prompt_template": "alpaca",
        "made_by": "alpaca-train",
        "created_at": "2024-01-01T00:00:00+00:00",
        "method": "lora",
        "merged": False,
        "base_model": "tiny-base",
        "arguments": {"lora": {"lora_r": 8, "lora_alpha": 16}, "train": {"max_steps": 2}},
        "data": {"path": "alpaca_data_first200.json"},
    }
    (folder / "alpaca_train.json").write_text(json.dumps(marker))
    (folder / "checkpoints").mkdir()
    return folder


@pytest.fixture
def base_dir(tmp_path) -> Path:
    folder = tmp_path / "tiny-base"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(TINY_CONFIG))
    return folder


@pytest.fixture
def adapters_dir(tmp_path) -> Path:
    folder = tmp_path / "adapters"
    folder.mkdir()
    return folder


@pytest.fixture
def serve(request, tmp_path, base_dir, adapters_dir):
    """Start scripted servers on the tiny base with `adapters_dir` (and more `env`)."""
    servers = []

    def start(**env: str):
        settings = {
            "ALPACA_MODEL": str(base_dir),
            "ALPACA_ADAPTERS_DIR": str(adapters_dir),
            "ALPACA_ADAPTERS_POLL_S": "0.1",
            **env,
        }
        server = start_server(request, "scripted", settings, tmp_path)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def generate(client: httpx.Client, model: str | None = None, **fields) -> httpx.Response:
    body = {"instruction": "Name a colour.", "max_new_tokens": 8, **fields}
    if model is not None:
        body["model"] = model
    return client.post("/generate", json=body)


def served_names(client: httpx.Client) -> list[str]:
    return [m["id"] for m in client.get("/v1/models").json()["data"]]


def test_adapters_in_the_folder_are_served_by_name_beside_the_base(serve, adapters_dir):
    write_adapter(adapters_dir / "pirate")
    write_trained_adapter(adapters_dir / "alpaca-lora")
    server = serve()
    client = server.client

    models = client.get("/v1/models").json()["data"]
    base_answer = generate(client)
    pirate = generate(client, "pirate")
    trained = generate(client, "alpaca-lora")
    chat = client.post(
        "/v1/chat/completions",
        json={"model": "pirate", "messages": [{"role": "user", "content": "Name a colour."}]},
    )

    assert [m["id"] for m in models] == ["tiny-base", "alpaca-lora", "pirate"]
    assert all(m["parent"] == "tiny-base" for m in models[1:]) and "parent" not in models[0]
    assert base_answer.json()["model"] == "tiny-base"
    assert not base_answer.json()["text"].startswith("[")
    assert (pirate.json()["model"], trained.json()["model"]) == ("pirate", "alpaca-lora")
    assert pirate.json()["text"].startswith("[pirate] ")
    assert trained.json()["text"].startswith("[alpaca-lora] ")
    assert chat.status_code == 200 and chat.json()["model"] == "pirate"
    assert chat.json()["choices"][0]["message"]["content"].startswith("[pirate] ")
    assert [r.adapter for r in server.engine.requests[-4:]] == [
        None,
        "pirate",
        "alpaca-lora",
        "pirate",
    ]


def test_info_lists_every_model_with_what_it_is(serve, adapters_dir, base_dir):
    write_trained_adapter(adapters_dir / "alpaca-lora")
    info = serve().client.get("/info").json()

    base, adapter = info["models"]
    assert (base["name"], base["kind"], base["path"]) == ("tiny-base", "base", str(base_dir))
    assert base["prompt_template"] == "alpaca" and base["loaded_at"]
    assert (adapter["name"], adapter["kind"], adapter["base"]) == (
        "alpaca-lora",
        "adapter",
        "tiny-base",
    )
    assert (adapter["rank"], adapter["lora_alpha"], adapter["target_modules"]) == (
        8,
        16,
        ["q_proj", "v_proj"],
    )
    assert adapter["loaded_at"] and adapter["trained_on"] == "tiny-base"
    assert adapter["prompt_template"] == "alpaca"
    assert adapter["provenance"]["made_by"] == "alpaca-train"
    assert adapter["training_arguments"]["train"]["max_steps"] == 2
    assert info["refused_adapters"] == []


def test_adapters_named_in_the_setting_are_served_too(serve, tmp_path):
    folder = write_adapter(tmp_path / "elsewhere" / "whatever")
    client = serve(ALPACA_ADAPTERS=f"named={folder}").client

    assert served_names(client) == ["tiny-base", "named"]
    assert generate(client, "named").json()["text"].startswith("[named] ")


def test_an_unknown_model_is_404_on_every_route(serve):
    client = serve().client

    answers = [
        generate(client, "nope"),
        client.post("/v1/completions", json={"model": "nope", "prompt": "Hi"}),
        client.post(
            "/v1/chat/completions",
            json={"model": "nope", "messages": [{"role": "user", "content": "Hi"}]},
        ),
    ]

    for answer in answers:
        assert answer.status_code == 404, answer.text
        error = answer.json()["error"]
        assert (error["type"], error["param"]) == ("not_found", "model")
        assert "'nope' does not exist" in error["message"] and "'tiny-base'" in error["message"]


def test_an_adapter_copied_in_is_served_without_a_restart_and_a_removed_one_stops(
    serve, adapters_dir, tmp_path
):
    server = serve()
    client = server.client
    staged = write_adapter(tmp_path / "staging" / "late")

    shutil.copytree(staged, adapters_dir / "late")
    assert wait_for(lambda: "late" in served_names(client), timeout=10)
    assert generate(client, "late").json()["text"].startswith("[late] ")

    shutil.rmtree(adapters_dir / "late")
    assert wait_for(lambda: "late" not in served_names(client), timeout=10)
    assert generate(client, "late").status_code == 404
    assert wait_for(lambda: "late" not in server.engine.adapters, timeout=10)
    assert generate(client).status_code == 200  # the base never stopped


def test_a_request_running_on_a_removed_adapter_finishes(serve, adapters_dir):
    write_adapter(adapters_dir / "leaving")
    server = serve()
    server.engine.held = True  # the request stays running until the adapter is gone
    answers = []
    worker = threading.Thread(
        target=lambda: answers.append(generate(server.client, "leaving", max_new_tokens=300))
    )
    worker.start()
    try:
        assert wait_for(lambda: server.engine.num_unfinished_requests() == 1, timeout=10)
        shutil.rmtree(adapters_dir / "leaving")
        assert wait_for(lambda: "leaving" not in served_names(server.client), timeout=10)
        assert "leaving" in server.engine.adapters  # still loaded: a request runs on it
    finally:
        server.engine.held = False
        worker.join(60)

    (answer,) = answers
    assert answer.status_code == 200 and answer.json()["finish_reason"] == "length"
    assert answer.json()["text"].startswith("[leaving] ")
    assert wait_for(lambda: "leaving" not in server.engine.adapters, timeout=10)


def test_reload_takes_up_a_copied_adapter_at_once(serve, adapters_dir):
    client = serve(ALPACA_ADAPTERS_POLL_S="3600").client
    write_adapter(adapters_dir / "now")

    answer = client.post("/admin/adapters/reload")

    assert answer.status_code == 200, answer.text
    assert [a["name"] for a in answer.json()["adapters"]] == ["now"]
    assert served_names(client) == ["tiny-base", "now"]


def test_reload_needs_an_admin_key_when_keys_are_set(serve):
    server = serve(ALPACA_API_KEYS="sesame")

    without = server.client.post("/admin/adapters/reload")
    user = server.client.post("/admin/adapters/reload", headers={"Authorization": "Bearer sesame"})

    assert without.status_code == 401
    assert user.status_code == 403
    assert "set ALPACA_ADMIN_KEYS" in user.json()["error"]["message"]


def test_with_admin_keys_only_an_admin_reloads_and_sees_paths_and_training(serve, adapters_dir):
    write_trained_adapter(adapters_dir / "trained")
    server = serve(ALPACA_API_KEYS="student", ALPACA_ADMIN_KEYS="teacher")

    def as_(key):
        return {"Authorization": f"Bearer {key}"}

    assert server.client.post("/admin/adapters/reload", headers=as_("student")).status_code == 403
    assert server.client.post("/admin/adapters/reload", headers=as_("teacher")).status_code == 200
    student = server.client.get("/info", headers=as_("student")).json()
    teacher = server.client.get("/info", headers=as_("teacher")).json()
    assert [m["name"] for m in student["models"]] == [m["name"] for m in teacher["models"]]
    trained = {m["name"]: m for m in teacher["models"]}["trained"]
    assert trained["path"] == str(adapters_dir / "trained") and trained["training_arguments"]
    shown = json.dumps(student)
    assert '"path"' not in shown and "training_arguments" not in shown
    assert str(adapters_dir) not in shown and '"/' not in shown  # no absolute path anywhere
    models = server.client.get("/v1/models", headers=as_("student")).json()["data"]
    assert [m["id"] for m in models] == ["tiny-base", "trained"]
    assert all("root" not in m for m in models)
    admin_models = server.client.get("/v1/models", headers=as_("teacher")).json()["data"]
    assert admin_models[1]["root"] == str(adapters_dir / "trained")


def test_with_user_keys_and_no_admin_key_no_caller_sees_paths(serve, adapters_dir):
    write_adapter(adapters_dir / "plain")
    server = serve(ALPACA_API_KEYS="sesame")
    info = server.client.get("/info", headers={"Authorization": "Bearer sesame"}).json()
    assert str(adapters_dir) not in json.dumps(info) and '"path"' not in json.dumps(info)


def test_reload_without_keys_answers_only_this_machine(base_dir, adapters_dir):
    from alpaca_serve.server.app import create_app

    settings = ServerSettings(model=base_dir, adapters_dir=adapters_dir, ui=False)
    app = create_app(settings, engine=ScriptedEngine(model_name="tiny-base"))

    async def reload_from(address: str) -> httpx.Response:
        transport = httpx.ASGITransport(app=app, client=(address, 4321))
        async with httpx.AsyncClient(transport=transport, base_url="http://server") as client:
            return await client.post("/admin/adapters/reload")

    answer = asyncio.run(reload_from("203.0.113.9"))

    assert answer.status_code == 403
    assert answer.json()["error"]["type"] == "forbidden"


def test_a_folder_still_being_copied_is_taken_up_only_once_unchanged(base_dir, adapters_dir):
    settings = ServerSettings(model=base_dir, adapters_dir=adapters_dir)
    registry = AdapterRegistry(settings, "tiny-base", base_dir)
    engine = ScriptedEngine(model_name="tiny-base")
    folder = adapters_dir / "copying"
    folder.mkdir()
    (folder / "adapter_config.json").write_text("{")  # the copy has begun

    async def scans():
        seen = []
        await registry.refresh(engine)  # first sight: waits for a second look
        seen.append((set(registry.served), set(registry.refused)))
        write_adapter(folder)  # the copy goes on: the files change
        await registry.refresh(engine)
        seen.append((set(registry.served), set(registry.refused)))
        await registry.refresh(engine)  # unchanged since the last scan: taken up
        seen.append((set(registry.served), set(registry.refused)))
        return seen

    assert asyncio.run(scans()) == [(set(), set()), (set(), set()), ({"copying"}, set())]


def corrupt_truncated(folder: Path) -> None:
    weights = folder / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])


def _header_length(folder: Path) -> int:
    return struct.unpack("<Q", (folder / "adapter_model.safetensors").read_bytes()[:8])[0]


# name -> (how to make it bad, words its refusal must say)
BAD_ADAPTERS = {
    "pad-row": (
        lambda f: write_adapter(
            f,
            {
                **lora_tensors(),
                "base_model.model.lm_head.weight": np.zeros((VOCAB + 1, HIDDEN), "float32"),
            },
        ),
        ["base_model.model.lm_head.weight", f"{VOCAB + 1} rows", "merged"],
    ),
    "saves-modules": (
        lambda f: write_adapter(f, modules_to_save=["lm_head", "embed_tokens"]),
        ["modules_to_save", "merged"],
    ),
    "rank-too-big": (lambda f: write_adapter(f, lora_tensors(r=32), r=32), ["rank 32", "16"]),
    "other-base": (
        lambda f: write_adapter(f, base="meta-llama/Llama-2-7b-hf"),
        ["Llama-2-7b-hf", "tiny-base"],
    ),
    "wrong-width": (
        lambda f: write_adapter(f, lora_tensors(hidden=64)),
        ["64 -> 128", "another model"],
    ),
    "too-many-layers": (
        lambda f: write_adapter(f, lora_tensors(layers=3)),
        ["layer 2", "2 layers"],
    ),
    "lm-head-target": (
        lambda f: write_adapter(
            f,
            {"base_model.model.lm_head.lora_A.weight": np.zeros((8, HIDDEN), "float32")},
        ),
        ["lm_head", "merged"],
    ),
    "truncated": (lambda f: (write_adapter(f), corrupt_truncated(f)), ["truncated"]),
    "broken-config": (
        lambda f: (write_adapter(f), (f / "adapter_config.json").write_text('{"r": 8,')),
        ["adapter_config.json cannot be read"],
    ),
    "bin-weights": (
        lambda f: (
            write_adapter(f),
            (f / "adapter_model.safetensors").rename(f / "adapter_model.bin"),
        ),
        ["only safetensors"],
    ),
    "dora": (lambda f: write_adapter(f, use_dora=True), ["DoRA"]),
    "not-an-adapter": (
        lambda f: (f.mkdir(), (f / "notes.txt").write_text("hi")),
        ["adapter_config.json"],
    ),
    "engine-says-no": (write_adapter, ["the engine refused it", "unsupported weight"]),
    # Shapes no check foresaw used to raise AttributeError: the server stopped at start-up.
    "rank-pattern-list": (
        lambda f: write_adapter(f, rank_pattern=["q_proj", 8]),
        ["rank_pattern is a list"],
    ),
    "header-of-lists": (
        lambda f: (write_adapter(f), write_raw_safetensors(f, {"x.lora_A.weight": [8, 128]})),
        ["not a tensor description"],
    ),
    "offsets-of-a-dict": (
        lambda f: (write_adapter(f), write_raw_safetensors(f, {"t": {"data_offsets": {"a": 1}}})),
        ["not a tensor description"],
    ),
}


def write_raw_safetensors(folder: Path, header: dict) -> None:
    """A weights file with exactly this header (and no data)."""
    raw = json.dumps(header).encode()
    (folder / "adapter_model.safetensors").write_bytes(struct.pack("<Q", len(raw)) + raw)


def test_each_bad_adapter_is_refused_with_its_reason_and_everything_else_is_served(
    serve, adapters_dir
):
    for name, (make, _) in BAD_ADAPTERS.items():
        make(adapters_dir / name)
    write_adapter(adapters_dir / "good")
    server = serve()
    client = server.client
    # "engine-says-no" passes our checks; the engine's own refusal (vLLM raising on add_lora)
    # is scripted now, and its files changed, so that a reload looks at it again.
    assert "engine-says-no" in served_names(client)
    server.engine.refuse_adapters["engine-says-no"] = "base_model.model.x is unsupported weight"
    write_adapter(adapters_dir / "engine-says-no", lora_dropout=0.1)
    assert client.post("/admin/adapters/reload").status_code == 200
    refused = {r["name"]: r for r in client.get("/info").json()["refused_adapters"]}

    assert served_names(client) == ["tiny-base", "good"]
    assert set(refused) == set(BAD_ADAPTERS)
    for name, (_, words) in BAD_ADAPTERS.items():
        reason = refused[name]["reason"]
        for word in words:
            assert word in reason, (name, reason)
        answer = generate(client, name)
        assert answer.status_code == 422, (name, answer.text)
        error = answer.json()["error"]
        assert (error["type"], error["param"]) == ("adapter_refused", "model")
        assert reason in error["message"]
        lines = [
            line
            for line in server.log_text().splitlines()
            if f"adapter {name} refused ({adapters_dir / name})" in line
        ]
        assert len(lines) == 1, (name, lines)
    assert generate(client, "good").json()["text"].startswith("[good] ")
    assert generate(client).status_code == 200


def test_model_names_reach_metrics_the_generation_log_export_and_feedback(
    serve, adapters_dir, tmp_path
):
    from alpaca_serve.feedback.export import main as export

    write_adapter(adapters_dir / "pirate")
    server = serve()
    client = server.client
    ids = [generate(client, model).json()["id"] for model in ("pirate", None)]
    for generation_id in ids:
        rated = client.post("/feedback", json={"generation_id": generation_id, "rating": "up"})
        assert rated.status_code == 201, rated.text
    out = tmp_path / "export.jsonl"

    summary = client.get("/feedback/summary").json()
    metrics = client.get("/metrics").text
    assert export(["--data-dir", str(server.data_dir), "--out", str(out)]) == 0

    assert set(summary["models"]) == {"pirate", "tiny-base"}
    assert 'alpaca_requests_total{model_name="pirate",outcome="success"} 1.0' in metrics
    assert 'alpaca_generation_tokens_total{model_name="pirate"}' in metrics
    assert read_metrics(client)  # still parses
    exported = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(record["model"] for record in exported) == ["pirate", "tiny-base"]


def test_a_malformed_adapter_list_stops_the_server_at_start(tmp_path):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="'oops' is not name=path"):
        ServerSettings(adapters="good=/x,oops")


@pytest.mark.slow  # imports Gradio, which takes a while
def test_the_compare_tab_pits_an_adapter_against_its_base_blind(serve, adapters_dir):
    import gradio as gr

    from alpaca_serve.client.api import AsyncAlpacaClient
    from alpaca_serve.demo.compare import CompareHandlers
    from alpaca_serve.demo.settings import CompareArm

    write_adapter(adapters_dir / "pirate")
    server = serve()
    arms = [CompareArm(label="the base"), CompareArm(label="pirate", model="pirate")]
    clients = [AsyncAlpacaClient(server.url), AsyncAlpacaClient(server.url)]
    handlers = CompareHandlers(clients[0], arms, clients)
    tab = gr.Request(session_hash="compare-test")

    async def compare_and_vote():
        updates = [update async for update in handlers.compare("Name a colour.", tab)]
        return updates[-1], await handlers.vote("a", updates[-1][-1], tab)

    (answer_a, answer_b, *_, state), _ = asyncio.run(compare_and_vote())

    answers = dict(zip(state["labels"], (answer_a, answer_b), strict=True))
    assert answers["pirate"].startswith("[pirate] ")
    assert not answers["the base"].startswith("[")
    (pair,) = server.client.get("/feedback/summary").json()["pairwise"]
    assert {pair["model_a"], pair["model_b"]} == {"pirate", "tiny-base"}


@pytest.mark.slow  # imports Gradio, which takes a while
def test_the_chat_model_picker_offers_every_model_and_the_answer_comes_from_the_one_picked(
    serve, adapters_dir
):
    from alpaca_serve.client.api import AsyncAlpacaClient
    from alpaca_serve.demo.app import build_demo
    from alpaca_serve.demo.chat import ChatHandlers
    from alpaca_serve.demo.settings import DemoSettings

    write_adapter(adapters_dir / "pirate")
    server = serve()
    chat = ChatHandlers(AsyncAlpacaClient(server.url))

    async def pick_and_ask():
        picker = await chat.model_choices()
        updates = [u async for u in chat.respond("Name a colour.", "", 0, 1, 8, [], {}, "pirate")]
        return picker, updates[-1]

    picker, (history, ids, _) = asyncio.run(pick_and_ask())

    assert picker["choices"] == ["tiny-base", "pirate"] and picker["value"] == "tiny-base"
    assert history[-1]["content"].startswith("[pirate] ")
    assert server.engine.requests[-1].adapter == "pirate"
    build_demo(DemoSettings(server_url=server.url))  # the page with the picker still builds


@pytest.mark.slow  # imports Gradio, which takes a while
def test_the_chat_model_picker_picks_the_projects_alpaca_model_when_it_is_served(
    serve, adapters_dir
):
    from alpaca_serve.client.api import AsyncAlpacaClient
    from alpaca_serve.core.project_model import PROJECT_MODEL_NAME
    from alpaca_serve.demo.chat import ChatHandlers

    write_adapter(adapters_dir / "pirate")
    write_adapter(adapters_dir / PROJECT_MODEL_NAME)
    server = serve()
    picker = asyncio.run(ChatHandlers(AsyncAlpacaClient(server.url)).model_choices())

    assert picker["choices"] == ["tiny-base", PROJECT_MODEL_NAME, "pirate"]
    assert picker["value"] == PROJECT_MODEL_NAME


def test_the_default_compare_pair_is_the_base_against_the_adapter_loaded_last(
    serve, adapters_dir, tmp_path
):
    from alpaca_serve.demo.settings import DEFAULT_ARMS, default_arms

    write_adapter(adapters_dir / "zebra")
    client = serve().client
    alone = default_arms(client.get("/info").json())
    write_adapter(adapters_dir / "aardvark")  # loaded after zebra, though first by name
    assert client.post("/admin/adapters/reload").status_code == 200
    later = default_arms(client.get("/info").json())
    shutil.rmtree(adapters_dir / "zebra")
    shutil.rmtree(adapters_dir / "aardvark")
    assert client.post("/admin/adapters/reload").status_code == 200
    none = default_arms(client.get("/info").json())

    assert [arm.model for arm in alone] == [None, "zebra"]
    assert [arm.model for arm in later] == [None, "aardvark"]
    assert [arm.label for arm in later] == [
        "the base model tiny-base",
        "the LoRA adapter aardvark",
    ]
    # Sampled alike, as long as the server's default answer (the tiny model's 32 tokens).
    assert {(arm.temperature, arm.top_p, arm.max_new_tokens) for arm in later} == {(0.1, 0.75, 32)}
    assert none == DEFAULT_ARMS  # no adapter: greedy against sampling of the base, as before


@pytest.mark.slow  # imports Gradio, which takes a while
def test_without_configured_arms_each_comparison_pits_the_base_against_the_newest_adapter(
    serve, adapters_dir
):
    import gradio as gr

    from alpaca_serve.demo.app import build_handlers
    from alpaca_serve.demo.settings import DEFAULT_ARMS, DemoSettings

    server = serve()
    _, handlers = build_handlers(DemoSettings(server_url=server.url))  # arms unset
    tab = gr.Request(session_hash="default-pair")

    async def compare_and_vote(choice: str):
        updates = [update async for update in handlers.compare("Name a colour.", tab)]
        answer_a, answer_b, *_, state = updates[-1]
        *_, reveal, _ = await handlers.vote(choice, state, tab)
        return dict(zip(state["labels"], (answer_a, answer_b), strict=True)), state, reveal

    before, _, _ = asyncio.run(compare_and_vote("tie"))
    write_adapter(adapters_dir / "pirate")  # copied in while the demo runs
    assert wait_for(lambda: "pirate" in served_names(server.client), timeout=10)
    answers, state, reveal = asyncio.run(compare_and_vote("a"))
    asked = server.engine.requests[-2:]

    assert set(before) == {arm.label for arm in DEFAULT_ARMS}  # no adapter yet: as before
    assert set(answers) == {"the base model tiny-base", "the LoRA adapter pirate"}
    assert answers["the LoRA adapter pirate"].startswith("[pirate] ")
    assert not answers["the base model tiny-base"].startswith("[")
    assert sorted(r.adapter or "" for r in asked) == ["", "pirate"]
    assert {(r.options.temperature, r.options.top_p) for r in asked} == {(0.1, 0.75)}
    assert {r.options.max_new_tokens for r in asked} == {32}
    assert f"**A** was {state['labels'][0]}; **B** was {state['labels'][1]}" in reveal
    votes = [
        row
        for row in server.client.get("/feedback/comparisons").json()["comparisons"]
        if row["generation_ids"] == sorted(state["ids"])
    ]
    assert [vote["winner"] for vote in votes] == [state["ids"][0]]
    pairs = server.client.get("/feedback/summary").json()["pairwise"]
    [pair] = [p for p in pairs if "pirate" in (p["model_a"], p["model_b"])]
    assert {pair["model_a"], pair["model_b"]} == {"pirate", "tiny-base"}
    assert pair["wins_a"] + pair["wins_b"] == 1
