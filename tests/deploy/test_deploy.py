"""The deployment contract: docker-compose.yml, the Dockerfile and Prometheus agree with the
server's settings and with the install path CI runs (no Docker engine exists here to run them)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import jsonschema
import pytest
import yaml

from alpaca_serve.demo.settings import DemoSettings
from alpaca_serve.server.settings import ServerSettings
from tests.support import ROOT, free_port
from tools.settings_table import main as settings_table_main

HERE = Path(__file__).parent
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
PROMETHEUS = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
SERVER_SETTINGS = {f"ALPACA_{name.upper()}" for name in ServerSettings.model_fields}
DEMO_SETTINGS = {f"ALPACA_DEMO_{name.upper()}" for name in DemoSettings.model_fields}
SERVER_SERVICES = ("server", "server-gpu")


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(
            f"{name} is needed (Debian's prometheus package): install it with "
            "`scripts/test-deps` as root, which `make test` runs",
            pytrace=False,
        )
    return path


def test_the_compose_file_is_valid_against_the_compose_specification():
    schema = json.loads((HERE / "compose_spec.json").read_text())
    validator = jsonschema.Draft7Validator(schema)
    assert [error.message for error in validator.iter_errors(COMPOSE)] == []
    broken = {**COMPOSE, "services": {"server": {"ports": "8000"}}}
    assert list(validator.iter_errors(broken)), "the schema check accepts anything"
    # The override make compose-up adds where public images cannot be pulled.
    local = yaml.safe_load((ROOT / "deploy" / "compose.local.yml").read_text())
    assert [error.message for error in validator.iter_errors(local)] == []
    assert set(local["services"]) <= set(COMPOSE["services"])


def test_every_environment_name_in_compose_is_a_real_setting():
    for name, service in COMPOSE["services"].items():
        known = DEMO_SETTINGS if name == "demo" else SERVER_SETTINGS
        for variable in service.get("environment", {}):
            if variable.startswith("ALPACA_"):
                assert variable in known, f"{name}: {variable} is not a setting"


def test_ports_volumes_and_healthchecks_agree_with_the_settings():
    for name in SERVER_SERVICES:
        service = COMPOSE["services"][name]
        env = service["environment"]
        port = env["ALPACA_PORT"]
        assert any(mapping.endswith(f":{port}") for mapping in service["ports"])
        assert f":{port}/ready" in " ".join(service["healthcheck"]["test"])
        assert any(volume.endswith(f":{env['ALPACA_DATA_DIR']}") for volume in service["volumes"])
        assert env["ALPACA_HOST"] == "0.0.0.0"  # reachable from the other containers
    demo = COMPOSE["services"]["demo"]
    assert any(m.endswith(f":{demo['environment']['ALPACA_DEMO_PORT']}") for m in demo["ports"])
    server_port = COMPOSE["services"]["server"]["environment"]["ALPACA_PORT"]
    assert demo["environment"]["ALPACA_DEMO_SERVER_URL"] == f"http://server:{server_port}"


def test_prometheus_scrapes_the_servers_metrics_route():
    (job,) = PROMETHEUS["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    server_port = COMPOSE["services"]["server"]["environment"]["ALPACA_PORT"]
    assert job["static_configs"][0]["targets"] == [f"server:{server_port}"]
    mount = COMPOSE["services"]["prometheus"]["volumes"][0]
    assert mount.startswith("./deploy/prometheus.yml:")


def dockerfile_stages() -> list[tuple[str, str]]:
    """The Dockerfile's stages in order: each one's name and its text, from its FROM line on."""
    texts = re.split(r"^FROM ", (ROOT / "Dockerfile").read_text(), flags=re.M)[1:]
    return [(re.match(r".* AS ([\w-]+)$", text.splitlines()[0])[1], text) for text in texts]


def test_the_image_installs_the_whole_tree_with_the_script_ci_runs():
    dockerfile = (ROOT / "Dockerfile").read_text()
    stages = dockerfile_stages()
    assert [name for name, _ in stages] == ["cpu-build", "cpu", "gpu-build", "gpu"]
    # Per build stage: the dependencies from pyproject.toml alone (a cached layer), then the
    # project's tree in whole (no hand-kept list of packages that can drift), both installed
    # with the script CI runs.
    build_stages = [text for name, text in stages if name.endswith("-build")]
    assert len(build_stages) == 2
    for stage in build_stages:
        copies = re.findall(r"^COPY (?!--from)(.*)$", stage, re.M)
        assert copies[-1] == ". /src", copies
        assert len(re.findall(r"scripts/install /opt/venv", stage)) == 2
    # What .dockerignore keeps out of the tree is never a package of the project.
    ignored = {
        line.strip("/*")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line and not line.startswith("#")
    }
    pyproject = (ROOT / "pyproject.toml").read_text()
    packages = re.findall(r'"(\w+)\*"', re.search(r"^include = \[(.*)\]$", pyproject, re.M)[1])
    assert packages and not set(packages) & ignored
    assert "HEALTHCHECK" in dockerfile and "/ready" in dockerfile
    assert re.search(r"^USER alpaca$", dockerfile, re.M)
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^\t.*scripts/install \$\(VENV\)", makefile, re.M)
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_a_stopped_server_container_has_time_to_drain_its_answers():
    drain = ServerSettings().drain_timeout_s
    services = {**COMPOSE["services"]}
    draining = [name for name, service in services.items() if "stop_grace_period" in service]
    assert set(SERVER_SERVICES) <= set(draining)
    for name in draining:
        grace = services[name]["stop_grace_period"]
        assert grace.endswith("s") and int(grace[:-1]) >= drain + 5, (name, grace)


def test_the_make_targets_run_folders_stay_out_of_the_image_build_context():
    ignored = set((ROOT / ".dockerignore").read_text().splitlines())
    run_folders = set(re.findall(r"\$\(BIN\) ([\w-]+-run)\b", (ROOT / "Makefile").read_text()))
    assert run_folders == {"loop-run", "alpaca-model-run", "eval-alpaca-run"}
    assert run_folders <= ignored


def test_every_image_stage_is_labelled_with_its_name_so_older_builds_can_be_pruned():
    # scripts/compose up removes the untagged images of older builds by this label.
    for name, text in dockerfile_stages():
        assert re.search(rf"^LABEL alpaca-serve\.stage={name}$", text, re.M), name
    assert "prune_old_builds" in (ROOT / "scripts" / "compose").read_text()


def test_the_readme_settings_table_is_the_generated_one():
    assert settings_table_main(["--check"]) == 0


def test_promtool_accepts_the_prometheus_config():
    result = subprocess.run(
        [tool("promtool"), "check", "config", str(ROOT / "deploy" / "prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
def test_a_real_prometheus_scrapes_a_live_server(tiny_server, tmp_path):
    config = {**PROMETHEUS, "global": {"scrape_interval": "1s", "evaluation_interval": "1s"}}
    config["scrape_configs"] = [
        {
            **PROMETHEUS["scrape_configs"][0],
            "static_configs": [{"targets": [f"127.0.0.1:{tiny_server.port}"]}],
        }
    ]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    process = subprocess.Popen(
        [
            tool("prometheus"),
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    try:
        body = {"instruction": "Scrape me.", "max_new_tokens": 2}
        assert tiny_server.client.post("/generate", json=body).status_code == 200
        deadline = time.monotonic() + 60
        series = []
        while time.monotonic() < deadline and not series:
            time.sleep(1)
            try:
                answer = httpx.get(
                    f"http://127.0.0.1:{port}/api/v1/query",
                    params={"query": 'alpaca_requests_total{outcome="success"}'},
                )
            except httpx.TransportError:
                continue
            if answer.status_code == 200:
                series = answer.json()["data"]["result"]
        assert series, "Prometheus found no alpaca_requests_total series"
        assert series[0]["metric"]["job"] == "alpaca-serve"
        assert float(series[0]["value"][1]) >= 1
    finally:
        process.terminate()
        process.wait(30)
