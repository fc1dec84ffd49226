"""`alpaca-eval` end to end against the session's tiny-model server: answers, a blind comparison
with text-davinci-003, votes, the report and its chart, the feedback store and the judge."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.conftest import ROOT, free_port

pytestmark = pytest.mark.slow

DATA = ROOT.parent / "shared" / "data"
DAVINCI = DATA / "user_oriented_text-davinci-003_predictions.jsonl"
EVALUATION_SET = DATA / "user_oriented_instructions.jsonl"
Z_95 = 1.959963984540054


def alpaca_eval(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "evaluation.cli", *map(str, args)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("evaluation")


@pytest.fixture(scope="module")
def answers(tiny_server, workdir) -> Path:
    """Our model's answers to the first 20 evaluation instructions."""
    if not DAVINCI.exists():
        pytest.skip(f"{DAVINCI} is not in this checkout")
    out = workdir / "tiny.jsonl"
    result = alpaca_eval("answer", "--server-url", tiny_server.url, "--limit", "20",
                         "--max-new-tokens", "12", "--temperature", "0", "--out", out)
    assert "wrote 20 answers" in result.stdout and "(0 failed)" in result.stdout
    return out


@pytest.fixture(scope="module")
def comparison(answers, workdir) -> Path:
    out = workdir / "vs-davinci.json"
    result = alpaca_eval("compare", "--a", answers, "--b", DAVINCI, "--label-a", "tiny",
                         "--label-b", "davinci", "--seed", "7", "--out", out)
    assert "wrote 20 pairs" in result.stdout
    return out


def test_answers_to_twenty_evaluation_instructions_carry_generation_ids(answers):
    records = [json.loads(line) for line in answers.read_text().splitlines()]
    expected = [json.loads(line) for line in EVALUATION_SET.read_text().splitlines()[:20]]
    assert [r["id"] for r in records] == [e["id"] for e in expected]
    assert [r["motivation_app"] for r in records] == [e["motivation_app"] for e in expected]
    assert [r["input"] for r in records] == [e["instances"][0]["input"] for e in expected]
    assert all(r["generation_id"].startswith("gen-") for r in records)
    assert len({r["generation_id"] for r in records}) == 20
    assert all(isinstance(r["output"], str) and r["model"] for r in records)


def test_report_counts_and_interval_match_the_votes_cast(comparison, workdir):
    pairs = json.loads(comparison.read_text())["pairs"]
    assert len(pairs) == 20
    assert {p["left_is"] for p in pairs} == {"a", "b"}  # sides really are shuffled
    assert all(p["left"]["output"] and p["right"]["output"] for p in pairs)
    votes = workdir / "votes.jsonl"
    pattern = ["left"] * 9 + ["right"] * 7 + ["tie"] * 4
    tiny_wins = davinci_wins = 0
    for pair, winner in zip(pairs, pattern, strict=True):
        alpaca_eval("vote", "--comparison", comparison, "--votes", votes,
                    "--pair-id", pair["pair_id"], "--winner", winner)
        if winner != "tie":
            if (winner == "left") == (pair["left_is"] == "a"):
                tiny_wins += 1
            else:
                davinci_wins += 1
    chart = workdir / "report.png"

    report = alpaca_eval("report", "--comparison", comparison, "--votes", votes,
                         "--chart", chart).stdout

    assert "Human votes: 20 votes" in report
    assert re.search(rf"^\s+tiny\s+{tiny_wins}\s+4\s+{davinci_wins}\s+0$", report, re.M), report
    assert re.search(rf"^\s+davinci\s+{davinci_wins}\s+4\s+{tiny_wins}\s+0$", report, re.M)
    shown = re.search(r"win rate over decided votes: ([\d.]+)% \((\d+) of (\d+)\), "
                      r"95% CI ([\d.]+)% to ([\d.]+)% \(Wilson\)", report)
    assert shown, report
    rate, wins, decided, low, high = (float(x) for x in shown.groups())
    assert (wins, decided) == (tiny_wins, 16)
    assert rate == pytest.approx(100 * tiny_wins / 16, abs=0.05)
    # The Wilson bounds are the proportions at which the score test sits exactly at z = 1.96.
    observed = tiny_wins / 16
    for bound in (low / 100, high / 100):
        z = abs(observed - bound) / math.sqrt(bound * (1 - bound) / 16)
        assert z == pytest.approx(Z_95, abs=0.01)
    assert low < 100 * observed < high
    categories = re.findall(r"^    (\S.*?)\s+(\d+)\s+\d+\s+\d+\s+\d+\s+\d+$", report, re.M)
    assert categories[0][0] == "Grammarly" and int(categories[0][1]) == 4
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and chart.stat().st_size > 10_000


def test_votes_on_two_answer_files_of_our_server_reach_the_feedback_store(
    tiny_server, answers, workdir
):
    second = workdir / "tiny-sampled.jsonl"
    alpaca_eval("answer", "--server-url", tiny_server.url, "--limit", "3", "--max-new-tokens",
                "8", "--temperature", "1.0", "--out", second)
    both = workdir / "tiny-vs-tiny.json"
    alpaca_eval("compare", "--a", answers, "--b", second, "--label-a", "greedy",
                "--label-b", "sampled", "--seed", "1", "--out", both)
    pairs = json.loads(both.read_text())["pairs"]
    assert len(pairs) == 3

    def compared() -> int:
        summary = tiny_server.client.get("/feedback/summary").json()
        return sum(e["wins_a"] + e["wins_b"] + e["ties"] + e["both_bad"]
                   for e in summary["pairwise"])

    before = compared()
    session = f"eval-{uuid.uuid4().hex[:8]}"
    for pair, winner in zip(pairs, ["left", "right", "both_bad"], strict=True):
        result = alpaca_eval("vote", "--comparison", both, "--votes", workdir / "tiny.votes",
                             "--pair-id", pair["pair_id"], "--winner", winner,
                             "--session-id", session, "--server-url", tiny_server.url)
        assert "sent to the feedback store" in result.stdout
    assert compared() == before + 3


class FakeJudge(BaseHTTPRequestHandler):
    """An OpenAI-compatible endpoint that always prefers answer A."""

    prompts: list[str] = []

    def do_GET(self):
        self._reply({"object": "list", "data": [{"id": "fake-judge", "object": "model"}]})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        FakeJudge.prompts.append(body["messages"][0]["content"])
        self._reply({"choices": [{"index": 0, "message": {"role": "assistant",
                                                           "content": "A"}}]})

    def _reply(self, payload):
        data = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def judge_url(tiny_server):
    """The server itself when it speaks the OpenAI chat API, else a fake judge. (A random tiny
    model rarely answers A, B or tie, so with the server the test checks the accounting only.)"""
    if tiny_server.client.get("/v1/models").status_code != 404:
        yield tiny_server.url
        return
    fake = ThreadingHTTPServer(("127.0.0.1", 0), FakeJudge)
    thread = threading.Thread(target=fake.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{fake.server_port}"
    finally:
        fake.shutdown()
        fake.server_close()


def test_judge_votes_are_reported_apart_and_marked_as_machine_votes(
    comparison, workdir, judge_url
):
    votes = workdir / "judged.jsonl"
    result = alpaca_eval("judge", "--comparison", comparison, "--votes", votes,
                         "--judge-url", judge_url, "--no-progress")
    recorded = ([json.loads(line) for line in votes.read_text().splitlines()]
                if votes.exists() else [])
    assert f"recorded {len(recorded)} machine votes" in result.stdout
    unreadable = re.search(r"(\d+) replies were not A, B or tie", result.stdout)
    assert len(recorded) + (int(unreadable.group(1)) if unreadable else 0) == 20
    assert all(v["voter"] == "machine" for v in recorded)
    pairs = json.loads(comparison.read_text())["pairs"]
    tiny_wins = None
    if FakeJudge.prompts:  # the fake always says A, the left answer
        assert len(recorded) == 20
        tiny_wins = sum(p["left_is"] == "a" for p in pairs)
        assert pairs[0]["instruction"] in FakeJudge.prompts[0]

    human_only = alpaca_eval("report", "--comparison", comparison, "--votes", votes).stdout
    both = alpaca_eval("report", "--comparison", comparison, "--votes", votes,
                       "--include-machine").stdout

    n = len(recorded)
    assert "Human votes: 0 votes" in human_only
    assert "MACHINE VOTES" not in human_only
    assert f"MACHINE VOTES (automatic judge, not people): {n} votes" in both
    if n:
        assert f"{n} machine votes not shown" in human_only
    if tiny_wins is not None:
        assert re.search(rf"^\s+tiny\s+{tiny_wins}\s+0\s+{20 - tiny_wins}\s+0$", both, re.M)


def test_bad_input_is_refused_with_one_line_and_a_failing_status(comparison, workdir):
    missing = alpaca_eval("answer", "--instructions", workdir / "nope.jsonl",
                          "--out", workdir / "x.jsonl", check=False)
    unknown_pair = alpaca_eval("vote", "--comparison", comparison, "--votes",
                               workdir / "x.votes", "--pair-id", "pair-999", "--winner", "left",
                               check=False)
    not_answers = alpaca_eval("compare", "--a", EVALUATION_SET, "--b", DAVINCI,
                              "--out", workdir / "x.json", check=False)

    for result, words in [(missing, "cannot read"), (unknown_pair, "no pair 'pair-999'"),
                          (not_answers, "neither `output` nor `response`")]:
        assert result.returncode != 0
        assert result.stderr.count("\n") == 1, result.stderr
        assert result.stderr.startswith("alpaca-eval ") and "error:" in result.stderr
        assert words in result.stderr
    assert not (workdir / "x.votes").exists()


def test_unreachable_server_fails_fast_without_writing_answers(workdir):
    port = free_port()  # nobody listens there once the probe socket is closed
    out = workdir / "none.jsonl"
    result = alpaca_eval("answer", "--server-url", f"http://127.0.0.1:{port}", "--limit", "2",
                         "--no-progress", "--out", out, check=False)
    assert result.returncode != 0
    assert "all 2 instructions failed" in result.stderr.splitlines()[-1]
    assert not out.exists()


@pytest.mark.parametrize(("reply", "winner"), [
    ("A", "left"), ("b.", "right"), ("Tie", "tie"), ("**Answer B** is better", "right"),
    ("I prefer A", "left"), ("hard to say", None), ("", None),
])
def test_judge_replies_are_read_as_a_b_or_tie(reply, winner):
    from evaluation.comparison import parse_judgement

    assert parse_judgement(reply) == winner


def test_every_option_of_every_command_has_help():
    from evaluation.cli import build_parser

    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    assert set(commands) == {"answer", "compare", "vote", "judge", "report"}
    for name, command in commands.items():
        for action in command._actions:
            assert action.help, f"alpaca-eval {name} {action.option_strings} has no help"
        assert "usage: alpaca-eval " + name in alpaca_eval(name, "--help").stdout
