"""The Docker Compose stack, running: built and started by `make compose-up`, checked from
outside the containers through the ports published on 127.0.0.1, stopped by `make compose-down`.

Run with `make test-stack` (`.ci/run` does); it needs a Docker engine and builds the CPU image
(minutes the first time). Without a Docker engine the tests fail, naming what is missing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time

import httpx
import pytest

from tests.support import ROOT, wait_for

# Building the image and loading engines take many minutes on a busy machine: far past the
# suite's per-test limit, which the fixture's first test pays for.
pytestmark = [pytest.mark.stack, pytest.mark.slow, pytest.mark.timeout(3600)]

API = "http://127.0.0.1:8000"
DEMO = "http://127.0.0.1:7860"
PROMETHEUS = "http://127.0.0.1:9090"
PROJECT = "alpaca"  # the compose project name scripts/compose uses


def compose(*args: str, check: bool = True, timeout: float = 3600, env: dict | None = None) -> str:
    result = subprocess.run(
        [str(ROOT / "scripts" / "compose"), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
    if check and result.returncode != 0:
        pytest.fail(f"scripts/compose {' '.join(args)} failed:\n{result.stderr[-3000:]}")
    return result.stdout


def docker(*args: str) -> str:
    result = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def container_of(service: str) -> str:
    container = compose("ps", "-q", service).strip()
    assert container, f"no container for {service}"
    return container


def wait_until_ready(timeout: float = 300) -> None:
    def ready() -> bool:
        try:
            return httpx.get(f"{API}/ready", timeout=5).status_code == 200
        except httpx.TransportError:
            return False

    assert wait_for(ready, timeout, 2), "the server did not come back ready"


@pytest.fixture(scope="module")
def stack():
    if (
        shutil.which("docker") is None
        or subprocess.run(["docker", "info"], capture_output=True).returncode
    ):
        pytest.fail(
            "the stack tests need a running Docker engine "
            "(apt-get install docker.io docker-compose debootstrap, then dockerd &)"
        )
    subprocess.run(["make", "compose-up"], cwd=ROOT, check=True, timeout=3600)
    try:
        yield
    finally:
        subprocess.run(["make", "compose-down"], cwd=ROOT, timeout=600)


def generate(instruction: str) -> dict:
    response = httpx.post(
        f"{API}/generate",
        json={"instruction": instruction, "max_new_tokens": 8, "temperature": 0},
        timeout=120,
    )
    assert response.status_code == 200, response.text
    return response.json()


def test_the_server_is_ready_healthy_and_answers(stack):
    assert httpx.get(f"{API}/ready", timeout=10).status_code == 200
    health = docker("inspect", "-f", "{{.State.Health.Status}}", container_of("server"))
    assert health == "healthy"
    answer = generate("What is the capital of France?")
    assert answer["text"] and answer["model"] == "SmolLM2-135M-Instruct"


def test_the_server_process_runs_as_a_user_other_than_root(stack):
    uid = docker("exec", container_of("server"), "id", "-u")
    assert uid != "0"
    # The server is the container's first process, run by that user.
    assert docker("exec", container_of("server"), "sh", "-c", "stat -c %u /proc/1") == uid


def test_the_server_runs_with_tcmalloc_and_intels_openmp_preloaded(stack):
    # vLLM's CPU guide recommends both; the engine decoded 1.16-1.21x as fast with them here.
    maps = docker("exec", container_of("server"), "cat", "/proc/1/maps")
    assert "libtcmalloc_minimal.so" in maps
    assert "libiomp5.so" in maps


def test_the_ui_and_the_standalone_demo_are_served(stack):
    page = httpx.get(f"{API}/ui/", timeout=30, follow_redirects=True)
    assert page.status_code == 200 and "gradio" in page.text.lower()
    demo = httpx.get(f"{DEMO}/", timeout=30)
    assert demo.status_code == 200 and "gradio" in demo.text.lower()


def test_the_standalone_demo_gets_an_answer_in_a_browser(stack):
    from tests.demo.test_browser import CHROMIUM, CHROMIUM_ARGS

    if not shutil.which(CHROMIUM):
        pytest.fail("Debian's chromium is needed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
        )
        try:
            page = browser.new_page()
            page.goto(f"{DEMO}/")
            page.locator("#instruction textarea").fill("Name a colour.")
            page.locator("#send").click()
            answer = page.locator('#chatbot [aria-label^="bot\'s message"]').last
            answer.wait_for(timeout=60_000)
            assert wait_for(lambda: answer.inner_text().strip(), 60), "no answer in the demo"
        finally:
            browser.close()


def test_prometheus_scrapes_the_server(stack):
    def query(expression: str) -> list:
        response = httpx.get(f"{PROMETHEUS}/api/v1/query", params={"query": expression}, timeout=10)
        assert response.status_code == 200, response.text
        return response.json()["data"]["result"]

    up = wait_for(lambda: query('up{job="alpaca-serve"} == 1'), 90, 3)
    assert up, "Prometheus does not see the server up"
    assert wait_for(lambda: query("alpaca_requests_total"), 90, 3), "no alpaca_ series"


def test_feedback_survives_a_restart_of_the_server(stack):
    answer = generate("Say something kind.")
    saved = httpx.post(
        f"{API}/feedback", json={"generation_id": answer["id"], "rating": "up"}, timeout=30
    )
    assert saved.status_code == 201, saved.text
    compose("restart", "server")
    wait_until_ready()
    summary = httpx.get(f"{API}/feedback/summary", timeout=30).json()
    assert summary["models"]["SmolLM2-135M-Instruct"]["up"] >= 1


# The server's database in the postgres profile (and from there on: the replicas test keeps the
# server as the postgres test leaves it, instead of paying for one more engine load).
ON_POSTGRES = {"ALPACA_DATABASE_URL": "postgresql://alpaca:alpaca@postgres:5432/alpaca"}


def test_the_postgres_profile_keeps_feedback_in_postgresql_across_restarts(stack):
    compose("up", "postgres", env=ON_POSTGRES)
    wait_until_ready()
    answer = generate("Name a planet.")
    saved = httpx.post(
        f"{API}/feedback",
        json={"generation_id": answer["id"], "rating": "down"},
        timeout=30,
    )
    assert saved.status_code == 201, saved.text
    rows = docker(
        "exec",
        container_of("postgres"),
        "psql",
        "-U",
        "alpaca",
        "-d",
        "alpaca",
        "-tA",
        "-c",
        f"SELECT count(*) FROM ratings WHERE generation_id = '{answer['id']}'",
    )
    assert rows == "1"
    compose("restart", "postgres", "server")
    wait_until_ready()
    summary = httpx.get(f"{API}/feedback/summary", timeout=30).json()
    assert summary["models"]["SmolLM2-135M-Instruct"]["down"] >= 1


BALANCER = "http://127.0.0.1:8080"  # the replicas profile's HAProxy


class SteadyLoad:
    """`clients` threads sending short `POST /generate` through the balancer, each `pause_s` after
    its last answer (0: back to back), until stopped. A 502 or 503 is retried once, as a client of
    a load-balanced service would; every first answer and every retried one is kept."""

    def __init__(self, clients: int = 4, pause_s: float = 0.0):
        self.pause_s = pause_s
        self.first: list[int] = []  # the first answer's status of each request
        self.final: list[int] = []  # the status the client ends with, after at most one retry
        self.replicas: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,)) for i in range(clients)]

    def _send(self, client: httpx.Client, i: int) -> int:
        try:
            response = client.post(
                f"{BALANCER}/generate",
                json={"instruction": f"Count to {i}.", "max_new_tokens": 16, "temperature": 0},
            )
        except httpx.TransportError:
            return 0
        if response.status_code == 200:
            self.replicas.append(response.headers.get("x-replica", "?"))
        return response.status_code

    def _run(self, i: int) -> None:
        with httpx.Client(timeout=120) as client:
            while not self._stop.is_set():
                status = self._send(client, i)
                self.first.append(status)
                if status in (0, 502, 503):
                    status = self._send(client, i)
                self.final.append(status)
                self._stop.wait(self.pause_s)

    def __enter__(self) -> SteadyLoad:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(180)

    def figures(self) -> str:
        failed = sum(1 for status in self.first if status != 200)
        return (
            f"{len(self.first)} requests, {failed} failed at first "
            f"({sorted(set(self.first) - {200})}), "
            f"{sum(1 for status in self.final if status != 200)} failed after one retry"
        )


def wait_until_healthy(service: str, timeout: float = 900) -> None:
    def healthy() -> bool:
        status = docker("inspect", "-f", "{{.State.Health.Status}}", container_of(service))
        return status == "healthy"

    assert wait_for(healthy, timeout, 2), f"{service} did not come back healthy"


def through_replica(service: str, method: str, path: str, body: dict | None = None) -> dict:
    """A request to one replica from inside its container (the replicas publish no port)."""
    script = (
        "import json, sys, urllib.request\n"
        f"request = urllib.request.Request('http://127.0.0.1:8000{path}', method={method!r},\n"
        "    data=sys.argv[1].encode() or None, headers={'Content-Type': 'application/json'})\n"
        "print(urllib.request.urlopen(request, timeout=120).read().decode())\n"
    )
    body_text = json.dumps(body) if body is not None else ""
    return json.loads(docker("exec", container_of(service), "python", "-c", script, body_text))


LOAD_CLIENTS = 2  # concurrent clients of the steady load: on 2 cores, enough to keep both busy
# During the rolling restart each client pauses between requests: traffic never stops, and the
# restarting replica is not starved of CPU by the other's decoding (back-to-back load made each
# restart take about three times as long as on an idle machine).
RESTART_LOAD_PAUSE_S = 1.5


def test_replicas_behind_the_balancer_share_feedback_survive_a_rolling_restart_and_a_kill(
    stack, capsys
):
    # The server keeps the database the postgres test gave it, so `up` does not recreate it.
    compose("up", "replicas", env=ON_POSTGRES)
    report = []
    try:
        # Both replicas answer through the balancer.
        with SteadyLoad(LOAD_CLIENTS) as load:
            assert wait_for(lambda: {"replica-a", "replica-b"} <= set(load.replicas), 120, 1)
        assert set(load.final) == {200}, load.figures()
        report.append(f"warm-up: {load.figures()}")

        # (c) One database: feedback written through one replica is read through the other.
        answer = through_replica(
            "replica-a", "POST", "/generate", {"instruction": "Name a fruit.", "max_new_tokens": 4}
        )
        saved = through_replica(
            "replica-b", "POST", "/feedback", {"generation_id": answer["id"], "rating": "up"}
        )
        assert saved["id"]
        summary = through_replica("replica-a", "GET", "/feedback/summary")
        assert summary["models"]["SmolLM2-135M-Instruct"]["up"] >= 1

        # (b) A rolling restart: each replica drains on SIGTERM, the balancer stops sending it
        # work once it is not ready, and no request is lost. "Back" means back in the
        # balancer's rotation (answering through it), not only healthy to Docker: HAProxy
        # needs two good checks in a row, and restarting the next replica before that leaves
        # it none to route to (503).
        with SteadyLoad(LOAD_CLIENTS, pause_s=RESTART_LOAD_PAUSE_S) as load:
            for service in ("replica-a", "replica-b"):
                restarted = time.monotonic()
                compose("restart", service)
                wait_until_healthy(service)
                answered = len(load.replicas)
                assert wait_for(lambda s=service, n=answered: s in load.replicas[n:], 120, 0.5), (
                    f"the balancer sent {service} nothing after it was back"
                )
                report.append(f"{service} back after {time.monotonic() - restarted:.0f} s")
        assert set(load.first) == {200}, load.figures()
        report.append(f"rolling restart: {load.figures()}")

        # (a) One replica killed under load: only requests in flight on it may fail, and each
        # of those gets its answer when retried once. Last, so that nothing waits for it to
        # come back.
        with SteadyLoad(LOAD_CLIENTS) as load:
            assert wait_for(lambda: len(load.final) >= 4, 120, 0.5)
            docker("kill", container_of("replica-a"))
            served = len(load.final)
            assert wait_for(lambda: len(load.final) >= served + 8, 180, 0.5)
        assert set(load.final) == {200}, load.figures()
        assert sum(1 for status in load.first if status != 200) <= LOAD_CLIENTS, load.figures()
        report.append(f"kill one replica: {load.figures()}")
    finally:
        with capsys.disabled():
            print(f"\nreplicas behind HAProxy, {LOAD_CLIENTS} clients of short /generate requests:")
            print("\n".join(f"  {line}" for line in report))
        compose("rm", "-sf", "replica-a", "replica-b", "balancer")


def test_compose_down_leaves_no_container(stack):
    subprocess.run(["make", "compose-down"], cwd=ROOT, check=True, timeout=600)
    left = docker("ps", "-a", "--filter", f"label=com.docker.compose.project={PROJECT}", "-q")
    assert left == ""


def test_a_build_removes_the_untagged_images_older_builds_left_but_the_newest_build_stage(
    tmp_path,
):
    # Each build of a changed tree leaves the previous one's images untagged (about 10 GB for the
    # CPU image): `up` prunes them after building. Images of a label of this test's own stand in
    # for the Dockerfile's stages, so the stack's real build cache is not touched.
    label = "alpaca-serve-test.stage"

    def image(stage: str | None, n: int) -> str:
        lines = ["FROM scratch", f"LABEL alpaca-serve-test.n={n}-{time.time_ns()}"]
        if stage:
            lines.append(f"LABEL {label}={stage}")
        (tmp_path / "Dockerfile").write_text("\n".join(lines) + "\n")
        return docker("build", "-q", str(tmp_path)).splitlines()[-1]

    old_build, old_final, new_build = image("cpu-build", 1), image("cpu", 2), image("cpu-build", 3)
    other_stage_build, foreign = image("gpu-build", 4), image(None, 5)
    try:
        compose("prune-builds", label)

        def exists(image_id: str) -> bool:
            return (
                subprocess.run(
                    ["docker", "image", "inspect", image_id], capture_output=True
                ).returncode
                == 0
            )

        assert not exists(old_build) and not exists(old_final)
        assert exists(new_build) and exists(other_stage_build)
        assert exists(foreign)  # not a stage of a build: none of the script's business
    finally:
        subprocess.run(
            ["docker", "rmi", old_build, old_final, new_build, other_stage_build, foreign],
            capture_output=True,
        )
