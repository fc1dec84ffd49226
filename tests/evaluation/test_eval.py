"""`alpaca-eval` end to end against the session's tiny-model server: answers, a blind comparison
with text-davinci-003 (imported into the feedback store), votes through the API, the report and
its chart, and the automatic judge."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from alpaca_serve.evaluation.answers import load_answers
from alpaca_serve.evaluation.comparison import match_key
from alpaca_serve.evaluation.datasets import DAVINCI_ANSWERS as DAVINCI
from alpaca_serve.evaluation.datasets import EVALUATION_SET
from tests.fake_judge import JudgeScript, running_judge
from tests.support import ROOT, free_port

pytestmark = pytest.mark.slow

Z_95 = 1.959963984540054


def alpaca_eval(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "alpaca_serve.evaluation.cli", *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("evaluation")


@pytest.fixture(scope="module")
def answers(tiny_server, workdir) -> Path:
    """Our model's answers to the first 20 evaluation instructions (the default instruction
    file: the evaluation set shipped with the project)."""
    out = workdir / "tiny.jsonl"
    result = alpaca_eval(
        "answer",
        "--server-url",
        tiny_server.url,
        "--limit",
        "20",
        "--max-new-tokens",
        "12",
        "--temperature",
        "0",
        "--out",
        out,
    )
    assert "wrote 20 answers" in result.stdout and "(0 failed)" in result.stdout
    return out


def compare(
    answers: Path, other: Path, server, out: Path, seed: int, labels=("tiny", "davinci")
) -> dict:
    result = alpaca_eval(
        "compare",
        "--a",
        answers,
        "--b",
        other,
        "--label-a",
        labels[0],
        "--label-b",
        labels[1],
        "--seed",
        seed,
        "--server-url",
        server.url,
        "--out",
        out,
    )
    assert re.search(r"wrote \d+ pairs", result.stdout), result.stdout
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def comparison(answers, workdir, tiny_server) -> Path:
    out = workdir / "vs-davinci.json"
    pairs = compare(answers, DAVINCI, tiny_server, out, seed=7)["pairs"]
    assert len(pairs) == 20
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


def test_the_davinci_answers_are_imported_so_every_side_has_a_generation_id(
    comparison, answers, tiny_server
):
    built = json.loads(comparison.read_text())
    ours = {json.loads(line)["generation_id"] for line in answers.read_text().splitlines()}
    davinci = {match_key(a["instruction"], a["input"]): a["output"] for a in load_answers(DAVINCI)}

    assert built["server_url"] == tiny_server.url
    assert {p["left_is"] for p in built["pairs"]} == {"a", "b"}  # sides really are shuffled
    for pair in built["pairs"]:
        tiny, other = (
            (pair["left"], pair["right"])
            if pair["left_is"] == "a"
            else (pair["right"], pair["left"])
        )
        assert tiny["generation_id"] in ours
        assert other["generation_id"].startswith("gen-") and other["generation_id"] not in ours
        assert other["output"] == davinci[match_key(pair["instruction"], pair["input"])]


def test_votes_cast_through_the_api_are_stored_and_reported_with_their_interval(
    comparison, workdir, tiny_server
):
    pairs = json.loads(comparison.read_text())["pairs"]
    pattern = ["left"] * 9 + ["right"] * 7 + ["tie"] * 4
    tiny_wins = davinci_wins = 0
    for pair, winner in zip(pairs, pattern, strict=True):
        result = alpaca_eval(
            "vote",
            "--comparison",
            comparison,
            "--pair-id",
            pair["pair_id"],
            "--winner",
            winner,
            "--session-id",
            "alice",
        )
        assert f"recorded: {pair['pair_id']} {winner}" in result.stdout
        if winner != "tie":
            if (winner == "left") == (pair["left_is"] == "a"):
                tiny_wins += 1
            else:
                davinci_wins += 1
    # The store has them, under the generations' models, as people's votes.
    summary = tiny_server.client.get("/feedback/summary").json()
    [row] = [r for r in summary["pairwise"] if "davinci" in (r["model_a"], r["model_b"])]
    davinci_key = "wins_a" if row["model_a"] == "davinci" else "wins_b"
    tiny_key = "wins_b" if davinci_key == "wins_a" else "wins_a"
    assert (row[tiny_key], row["ties"], row[davinci_key]) == (tiny_wins, 4, davinci_wins)
    # A second vote of the same session on a pair changes it instead of adding one.
    changed = alpaca_eval(
        "vote",
        "--comparison",
        comparison,
        "--pair-id",
        pairs[0]["pair_id"],
        "--winner",
        "left",
        "--session-id",
        "alice",
    )
    assert changed.stdout.startswith("changed:")
    chart = workdir / "report.png"

    report = alpaca_eval("report", "--comparison", comparison, "--chart", chart).stdout

    assert "Human votes: 20 votes" in report
    assert re.search(rf"^\s+tiny\s+{tiny_wins}\s+4\s+{davinci_wins}\s+0$", report, re.M), report
    assert re.search(rf"^\s+davinci\s+{davinci_wins}\s+4\s+{tiny_wins}\s+0$", report, re.M)
    shown = re.search(
        r"win rate over decided votes: ([\d.]+)% \((\d+) of (\d+)\), "
        r"95% CI ([\d.]+)% to ([\d.]+)% \(Wilson\)",
        report,
    )
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


def test_two_answer_files_of_our_server_are_compared_without_importing_anything(
    tiny_server, answers, workdir
):
    second = workdir / "tiny-sampled.jsonl"
    alpaca_eval(
        "answer",
        "--server-url",
        tiny_server.url,
        "--limit",
        "3",
        "--max-new-tokens",
        "8",
        "--temperature",
        "1.0",
        "--out",
        second,
    )
    both = workdir / "tiny-vs-tiny.json"
    result = alpaca_eval(
        "compare",
        "--a",
        answers,
        "--b",
        second,
        "--label-a",
        "greedy",
        "--label-b",
        "sampled",
        "--seed",
        "1",
        "--server-url",
        tiny_server.url,
        "--out",
        both,
    )
    assert "3 pairs" in result.stdout and "0 answers imported" in result.stdout
    session = f"eval-{uuid.uuid4().hex[:8]}"
    greedy_wins = 0
    for pair, winner in zip(
        json.loads(both.read_text())["pairs"], ["left", "right", "both_bad"], strict=True
    ):
        alpaca_eval(
            "vote",
            "--comparison",
            both,
            "--pair-id",
            pair["pair_id"],
            "--winner",
            winner,
            "--session-id",
            session,
        )
        greedy_wins += winner != "both_bad" and (winner == "left") == (pair["left_is"] == "a")

    report = alpaca_eval("report", "--comparison", both).stdout

    assert "Human votes: 3 votes" in report
    assert re.search(rf"^\s+greedy\s+{greedy_wins}\s+0\s+{2 - greedy_wins}\s+1$", report, re.M)


@pytest.fixture
def fake_judge():
    """The fake judge's URL and its script."""
    script = JudgeScript()
    with running_judge(script) as url:
        yield url, script


def machine_row(report: str, label: str) -> tuple[int, ...]:
    section = report.split("MACHINE VOTES", 1)[1]
    found = re.search(rf"^\s+{label}\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)$", section, re.M)
    assert found, report
    return tuple(int(x) for x in found.groups())


def test_a_judge_is_asked_both_ways_round_and_its_votes_are_kept_apart_from_people(
    answers, workdir, tiny_server, fake_judge
):
    judge_url, script = fake_judge
    path = workdir / "judged.json"
    pairs = compare(answers, DAVINCI, tiny_server, path, seed=11)["pairs"]
    davinci = {" ".join(a["output"].split()) for a in load_answers(DAVINCI)}

    def prefers_davinci(prompt: str) -> str:
        first = prompt.split("### Answer A:\n", 1)[1].split("\n\n### Answer B:", 1)[0]
        return "A" if " ".join(first.split()) in davinci else "B"

    script.respond = lambda prompt, number: prefers_davinci(prompt)
    result = alpaca_eval("judge", "--comparison", path, "--judge-url", judge_url, "--no-progress")

    assert "recorded 20 machine votes" in result.stdout, result.stdout
    assert len(script.prompts) == 40  # each pair twice, the sides swapped
    assert any(pairs[0]["instruction"] in prompt for prompt in script.prompts)
    human_only = alpaca_eval("report", "--comparison", path).stdout
    both = alpaca_eval("report", "--comparison", path, "--include-machine").stdout
    assert "Human votes: 0 votes" in human_only and "MACHINE VOTES" not in human_only
    assert "20 machine votes not shown" in human_only
    assert "MACHINE VOTES (automatic judge, not people): 20 votes" in both
    assert machine_row(both, "tiny") == (0, 0, 20, 0)
    summary = tiny_server.client.get("/feedback/summary").json()
    assert any("davinci" in (r["model_a"], r["model_b"]) for r in summary["pairwise_machine"])

    # Judged again (--rejudge), a judge that always picks the first answer shown is caught out
    # by the swap: all ties.
    script.respond = lambda prompt, number: "A"
    biased = alpaca_eval(
        "judge", "--comparison", path, "--judge-url", judge_url, "--rejudge", "--no-progress"
    ).stdout
    assert "20 pairs were judged differently with the sides swapped" in biased
    assert machine_row(
        alpaca_eval("report", "--comparison", path, "--include-machine").stdout, "tiny"
    ) == (0, 20, 0, 0)
    # Asked once, its position bias goes straight into the votes (they replace the earlier).
    alpaca_eval(
        "judge",
        "--comparison",
        path,
        "--judge-url",
        judge_url,
        "--one-order",
        "--rejudge",
        "--no-progress",
    )
    left_is_tiny = sum(p["left_is"] == "a" for p in pairs)
    assert machine_row(
        alpaca_eval("report", "--comparison", path, "--include-machine").stdout, "tiny"
    ) == (left_is_tiny, 0, 20 - left_is_tiny, 0)


def test_the_reference_judge_votes_for_the_answer_closer_to_text_davinci_003s(
    answers, workdir, tiny_server
):
    path = workdir / "by-reference.json"
    compare(answers, DAVINCI, tiny_server, path, seed=13)
    result = alpaca_eval("judge", "--comparison", path, "--reference", "--no-progress")

    assert "recorded 20 machine votes of the reference judge" in result.stdout, result.stdout
    assert "user_oriented_text-davinci-003_predictions.jsonl" in result.stdout
    # Against its own answers as the reference, text-davinci-003 scores F1 1 on every pair.
    report = alpaca_eval("report", "--comparison", path, "--include-machine").stdout
    assert machine_row(report, "tiny") == (0, 0, 20, 0)
    # Another reference file (the evaluation set's human-written answers) replaces those votes.
    again = alpaca_eval(
        "judge", "--comparison", path, "--reference", EVALUATION_SET, "--no-progress"
    )
    assert "recorded 20 machine votes" in again.stdout
    assert sum(machine_row(
        alpaca_eval("report", "--comparison", path, "--include-machine").stdout, "tiny"
    )[:3]) == 20  # fmt: skip
    # ROUGE-L votes as a judge of its own, beside token F1; the two are compared pair by pair.
    rouge = alpaca_eval(
        "judge", "--comparison", path, "--reference", "--metric", "rouge-l", "--no-progress"
    )
    assert "recorded 20 machine votes of the reference judge (reference-judge-rouge-l" in (
        rouge.stdout
    )
    agreement = alpaca_eval("agreement", "--comparison", path).stdout
    [row] = [
        line.split()
        for line in agreement.splitlines()
        if "reference-judge-rouge-l" in line and "reference-judge-token-f1" in line
    ]
    assert row[2] == "20", agreement  # the pairs both decided
    # The report shows one judge's votes when asked, and says when it adds up several.
    together = alpaca_eval("report", "--comparison", path, "--include-machine").stdout
    assert "MACHINE VOTES (automatic judge, not people): 40 votes" in together
    assert "the machine votes of 2 judges together" in together
    one = alpaca_eval(
        "report", "--comparison", path, "--include-machine", "--judge", "reference-judge-rouge-l"
    ).stdout
    assert "MACHINE VOTES (automatic judge, not people): 20 votes" in one
    assert "judges together" not in one
    # A judge is named: a model's URL or the reference.
    missing = alpaca_eval("judge", "--comparison", path, check=False)
    assert missing.returncode != 0
    assert "give --judge-url (a model to judge) or --reference" in missing.stderr


def test_this_server_can_be_the_judge(answers, workdir, tiny_server):
    """A random tiny model rarely answers A, B or tie: this checks the accounting only."""
    path = workdir / "self-judged.json"
    # Without --b, the other side is text-davinci-003's answers, shipped with the project.
    built = alpaca_eval(
        "compare",
        "--a",
        answers,
        "--label-a",
        "tiny",
        "--seed",
        "12",
        "--server-url",
        tiny_server.url,
        "--out",
        path,
    )
    assert "wrote 20 pairs (tiny vs text-davinci-003, seed 12)" in built.stdout
    assert json.loads(path.read_text())["labels"] == ["tiny", "text-davinci-003"]

    result = alpaca_eval(
        "judge", "--comparison", path, "--judge-url", tiny_server.url, "--no-progress"
    )

    recorded = int(re.search(r"recorded (\d+) machine votes", result.stdout).group(1))
    unreadable = re.search(r"(\d+) replies were not A, B or tie", result.stdout)
    assert recorded + (int(unreadable.group(1)) if unreadable else 0) == 20
    report = alpaca_eval("report", "--comparison", path, "--include-machine").stdout
    assert f"MACHINE VOTES (automatic judge, not people): {recorded} votes" in report


def test_bad_input_is_refused_with_one_line_and_a_failing_status(comparison, workdir):
    nobody = f"http://127.0.0.1:{free_port()}"
    no_server = workdir / "no-server.json"
    no_server.write_text(json.dumps({**json.loads(comparison.read_text()), "server_url": None}))
    missing = alpaca_eval(
        "answer",
        "--instructions",
        workdir / "nope.jsonl",
        "--out",
        workdir / "x.jsonl",
        check=False,
    )
    unknown_pair = alpaca_eval(
        "vote", "--comparison", comparison, "--pair-id", "pair-999", "--winner", "left", check=False
    )
    not_answers = alpaca_eval(
        "compare", "--a", EVALUATION_SET, "--b", DAVINCI, "--out", workdir / "x.json", check=False
    )
    unreachable = alpaca_eval(
        "compare",
        "--a",
        DAVINCI,
        "--b",
        DAVINCI,
        "--server-url",
        nobody,
        "--out",
        workdir / "y.json",
        check=False,
    )
    serverless = alpaca_eval("report", "--comparison", no_server, check=False)
    gone = alpaca_eval(
        "vote",
        "--comparison",
        comparison,
        "--pair-id",
        "pair-000",
        "--winner",
        "left",
        "--server-url",
        nobody,
        check=False,
    )

    for result, words in [
        (missing, "cannot read"),
        (unknown_pair, "no pair 'pair-999'"),
        (not_answers, "neither `output` nor `response`"),
        (unreachable, "cannot be reached"),
        (serverless, "pass --server-url"),
        (gone, "cannot be reached"),
    ]:
        assert result.returncode != 0
        assert result.stderr.count("\n") == 1, result.stderr
        assert result.stderr.startswith("alpaca-eval ") and "error:" in result.stderr
        assert words in result.stderr
    assert not (workdir / "x.json").exists() and not (workdir / "y.json").exists()


def test_a_broken_instruction_file_is_refused_in_one_line_naming_its_line(workdir):
    broken = workdir / "broken.jsonl"
    broken.write_text('{"instruction": "Name a colour."}\n\n{"instruction": \n', encoding="utf-8")
    out = workdir / "from-broken.jsonl"

    result = alpaca_eval("answer", "--instructions", broken, "--out", out, check=False)

    assert result.returncode != 0
    [line] = result.stderr.splitlines()
    assert f"{broken}: record 1 (line 3): not valid JSON at column" in line
    assert not out.exists()


def test_unreachable_server_fails_fast_without_writing_answers(workdir):
    port = free_port()  # nobody listens there once the probe socket is closed
    out = workdir / "none.jsonl"
    result = alpaca_eval(
        "answer",
        "--server-url",
        f"http://127.0.0.1:{port}",
        "--limit",
        "2",
        "--no-progress",
        "--out",
        out,
        check=False,
    )
    assert result.returncode != 0
    assert "all 2 instructions failed" in result.stderr.splitlines()[-1]
    assert not out.exists()


@pytest.mark.parametrize(
    ("reply", "winner"),
    [
        ("A", "left"),
        ("b.", "right"),
        ("Tie", "tie"),
        ("**Answer B** is better", "right"),
        ("I prefer A", "left"),
        ("hard to say", None),
        ("", None),
    ],
)
def test_judge_replies_are_read_as_a_b_or_tie(reply, winner):
    from alpaca_serve.evaluation.comparison import parse_judgement

    assert parse_judgement(reply) == winner


def test_every_option_of_every_command_has_help():
    from alpaca_serve.evaluation.cli import build_parser

    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    assert set(commands) == {
        "answer",
        "compare",
        "vote",
        "judge",
        "agreement",
        "report",
        "annotations",
        "leaderboard",
    }
    for name, command in commands.items():
        for action in command._actions:
            assert action.help, f"alpaca-eval {name} {action.option_strings} has no help"
        assert "usage: alpaca-eval " + name in alpaca_eval(name, "--help").stdout


def test_keys_can_come_from_the_environment_instead_of_the_command_line(monkeypatch):
    # A key given as an option shows in the process list and the shell's history.
    from alpaca_serve.evaluation.cli import build_parser

    monkeypatch.setenv("ALPACA_API_KEY", "server-key")
    monkeypatch.setenv("ALPACA_JUDGE_API_KEY", "judge-key")
    parser = build_parser()
    judged = parser.parse_args(["judge", "--comparison", "c.json", "--judge-url", "http://j"])
    assert (judged.api_key, judged.judge_api_key) == ("server-key", "judge-key")
    answered = parser.parse_args(
        ["answer", "--server-url", "http://s", "--out", "a.jsonl", "--api-key", "given"]
    )
    assert answered.api_key == "given"
