"""`alpaca-generate` against a scripted teacher over real HTTP: what it keeps and drops, how it
treats a busy, refusing, chat-only or useless teacher, and how a stopped run resumes."""

from __future__ import annotations

import json
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from alpaca_serve.generation.cli import build_parser, main
from alpaca_serve.generation.run import GenerationPlan, generate
from alpaca_serve.generation.teacher import TeacherConfig
from alpaca_serve.training.data import load_records
from tests.generation.scripted_teacher import MODEL, ScriptedTeacher, task_instruction
from tests.support import ROOT, free_port, run_command


def run(tmp_path: Path, teacher: ScriptedTeacher, *args: str, capsys=None):
    argv = ["--base-url", teacher.url, "--out", str(tmp_path / "gen.json"), "--no-progress"]
    return run_command(main, [*argv, *args], capsys)


def journal_entries(path: Path) -> list[dict]:
    """The journal's request lines, less a torn last line (as a killed run leaves)."""
    lines = path.read_text().split("\n")[1:-1]  # the header, and what follows the last newline
    return [json.loads(line) for line in lines]


def test_a_run_keeps_its_target_and_writes_records_alpaca_train_reads(tmp_path):
    with ScriptedTeacher() as teacher:
        summary = generate(
            GenerationPlan(out=tmp_path / "gen.json", num_instructions=7, concurrency=1),
            TeacherConfig(teacher.url),
            progress=False,
        )
    assert summary.complete and summary.kept == 7
    assert summary.dropped == {"beyond_target": 2}  # 3 answers of 3 tasks each
    records = json.loads((tmp_path / "gen.json").read_text())
    assert len(records) == 7
    assert [(r.instruction, r.input) for r in load_records(tmp_path / "gen.json")] == [
        (record["instruction"], "") for record in records
    ]
    assert all(0 <= record["max_similarity"] <= 0.7 for record in records)
    assert all(len(record["most_similar_instructions"]) <= 10 for record in records)
    provenance = json.loads((tmp_path / "gen.provenance.json").read_text())
    assert provenance["teachers"] == [
        {"base_url": teacher.url, "model": MODEL, "api": "completions"}
    ]
    assert provenance["records"] == 7 and len(provenance["origins"]) == 7
    assert all(len(origin["seed_ids"]) == 3 for origin in provenance["origins"])
    sent = [body for _, path, body in teacher.requests if path == "/v1/completions"]
    assert provenance["tokens"]["prompt"] == sum(len(body["prompt"].split()) for body in sent)
    assert (sent[0]["temperature"], sent[0]["top_p"], sent[0]["max_tokens"]) == (1.0, 1.0, 3072)
    assert sent[0]["stop"] == ["\n20", "20."] and sent[0]["model"] == MODEL


MIXED_ANSWER = (
    " What is the relation between the given pairs?\n4. Input:\nUp : Down\n4. Output:\nOpposites.\n"
    "###\n5. Instruction: Draw a picture of a friendly dragon.\n5. Input:\n<noinput>\n"
    "5. Output:\nOk.\n###\n6. Instruction: Name colours.\n6. Input:\n<noinput>\n6. Output:\nRed.\n"
    "###\n7. Instruction: Summarise the main idea of the paragraph.\n7. Input:\nA paragraph.\n"
    "7. Output:\nAn idea.\n##\n8. Instruction: Name a planet.\n8. Input:\n\n8. Output:\nMars.\n"
    "###\n9. Instruction: List two prime numbers below ten.\n9. Output:\n2 and 3.\n"
    "###\nnothing numbered here\n"
    "###\n10. Instruction: Explain how a bomb shelter keeps people safe.\n10. Input:\n<noinput>\n"
    "10. Output:\nIt shields them.\n"
    "###\n11. Instruction: Translate the greeting into French.\n11. Input:\nHello\n11. Output:\n"
    "\n###\n12. Instruction: Summarise the page at this address.\n12. Input:\nhttps://x.org\n"
    "12. Output:\nA page.\n###\n13. Instruction: Write a haiku about the sea in"
)


def test_every_task_left_out_is_counted_by_its_reason(tmp_path, capsys):
    blocklist = tmp_path / "blocklist.txt"
    blocklist.write_text("violence: bomb\n")
    with ScriptedTeacher(lambda prompt, number: (MIXED_ANSWER, "length")) as teacher:
        result = run(
            tmp_path, teacher, "--num-instructions", "5", "--max-requests", "1",
            "--blocklist", str(blocklist), capsys=capsys,
        )  # fmt: skip
    assert result.returncode == 0, result.stderr
    [entry] = journal_entries(tmp_path / "gen.journal.jsonl")
    assert entry["dropped"] == {
        "similar": 1,  # a seed task's instruction, word for word
        "blacklisted": 1,
        "too_short": 1,
        "merged": 1,
        "unparseable": 1,
        "content_filter": 1,
        "empty_output": 1,
        "unseeable_input": 1,
        "truncated": 1,
    }
    assert [record["instruction"] for record in entry["kept"]] == [
        "List two prime numbers below ten."
    ]
    # The summary prints the same counts, with what each reason means.
    assert "kept 1 tasks from 1 requests" in result.stdout
    assert "      1  similar: too similar to a seed or a kept task (ROUGE-L > 0.7)" in result.stdout
    assert "content_filter: refused by a content filter" in result.stdout
    assert "stopped at --max-requests 1 with 1 of 5 tasks" in result.stderr


def test_a_busy_teacher_is_asked_again_after_its_retry_after(tmp_path):
    with ScriptedTeacher() as teacher:
        teacher.faults.extend([(429, {"Retry-After": "1"}), (503, {})])
        summary = generate(
            GenerationPlan(out=tmp_path / "gen.json", num_instructions=3, concurrency=1),
            TeacherConfig(teacher.url, first_backoff_s=0.1),
            progress=False,
        )
    assert summary.kept == 3
    times = [at for at, path, _ in teacher.requests if path == "/v1/completions"]
    assert len(times) == 3  # 429, 503, then the answer
    assert times[1] - times[0] >= 1.0  # Retry-After: 1 beats the 0.1 s backoff
    assert 0.1 <= times[2] - times[1] < 1.0


def test_a_teacher_that_refuses_the_key_is_a_one_line_error(tmp_path, capsys):
    with ScriptedTeacher(api_key="right") as teacher:
        result = run(tmp_path, teacher, "--api-key", "wrong", capsys=capsys)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"alpaca-generate: error: the teacher at {teacher.url} refused the API key "
        "(401: Incorrect API key provided); pass --api-key or set ALPACA_TEACHER_API_KEY"
    ]


def test_the_key_is_read_from_the_environment(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("ALPACA_TEACHER_API_KEY", "right")
    with ScriptedTeacher(api_key="right") as teacher:
        result = run(tmp_path, teacher, "--num-instructions", "2", capsys=capsys)
    assert result.returncode == 0, result.stderr


def test_a_teacher_that_is_down_is_a_one_line_error_after_its_retries(tmp_path, capsys):
    url = f"http://127.0.0.1:{free_port()}/v1"
    result = run_command(
        main,
        ["--base-url", url, "--out", str(tmp_path / "gen.json"), "--retries", "2", "--model", "m"],
        capsys,
    )
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()[-1:]
    assert line.startswith(f"alpaca-generate: error: the teacher at {url} cannot be reached")
    assert "after 2 tries; is it running?" in line


def test_a_chat_only_teacher_is_asked_through_chat(tmp_path):
    def chat_answer(prompt: str, number: int) -> str:
        return (
            "Here you go!\n\n4. Instruction: Name four kinds of citrus fruit.\n4. Output:\nLemon."
        )

    with ScriptedTeacher(chat_answer, completions=False) as teacher:
        summary = generate(
            GenerationPlan(out=tmp_path / "gen.json", num_instructions=1, concurrency=1),
            TeacherConfig(teacher.url),
            progress=False,
        )
    assert summary.kept == 1
    paths = [path for _, path, _ in teacher.requests]
    assert paths[:3] == ["/v1/models", "/v1/completions", "/v1/chat/completions"]
    provenance = json.loads((tmp_path / "gen.provenance.json").read_text())
    assert provenance["teachers"][0]["api"] == "chat"


def test_a_max_tokens_the_teacher_refuses_is_halved(tmp_path):
    with ScriptedTeacher(max_tokens_limit=1000) as teacher:
        summary = generate(
            GenerationPlan(out=tmp_path / "gen.json", num_instructions=4, concurrency=1),
            TeacherConfig(teacher.url),
            progress=False,
        )
    assert summary.kept == 4
    asked = [body["max_tokens"] for _, path, body in teacher.requests if "completions" in path]
    assert asked == [3072, 1536, 768, 768]  # and it stays lowered for the next request


def test_a_prompt_too_long_for_the_teachers_context_is_skipped_not_fatal(tmp_path, capsys):
    seeds = tmp_path / "seeds.jsonl"
    long_output = " ".join(["word"] * 3000)
    seeds.write_text(
        "".join(
            json.dumps({"id": f"s{i}", "instruction": f"Seed task number {i}.", "instances":
                        [{"input": "", "output": long_output if i == 0 else "Short."}]}) + "\n"
            for i in range(4)
        )
    )  # fmt: skip
    with ScriptedTeacher(context=1000) as teacher:
        result = run(tmp_path, teacher, "--num-instructions", "6", "--concurrency", "1",
                     "--seed-tasks", str(seeds), capsys=capsys)  # fmt: skip
    assert result.returncode == 0, result.stderr
    entries = journal_entries(tmp_path / "gen.journal.jsonl")
    skipped = [entry for entry in entries if entry.get("skipped")]
    assert skipped and all("s0" in entry["seed_ids"] for entry in skipped)
    assert all("s0" not in entry["seed_ids"] for entry in entries if entry["kept"])
    assert f"{len(skipped)} prompts did not fit the teacher's context" in result.stdout
    # The answers that fit lowered max_tokens until they did: later requests start there.
    asked = [body["max_tokens"] for _, path, body in teacher.requests if "completions" in path]
    assert 3072 in asked and asked[-1] == 384
    provenance = json.loads((tmp_path / "gen.provenance.json").read_text())
    assert provenance["skipped_requests"] == len(skipped)


def test_a_teacher_whose_answers_hold_no_task_stops_the_run_keeping_its_state(tmp_path, capsys):
    with ScriptedTeacher(lambda prompt, number: "I am sorry, I cannot help.") as teacher:
        result = run(tmp_path, teacher, "--max-empty-answers", "3", "--concurrency", "1",
                     capsys=capsys)  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "alpaca-generate: error: the teacher's last 3 answers held no numbered task (the last "
        f"began 'I am sorry, I cannot help.'); is {MODEL!r} an instruction-following model? What "
        f"was kept is in the journal {tmp_path / 'gen.journal.jsonl'}"
    )
    assert len(journal_entries(tmp_path / "gen.journal.jsonl")) == 3
    assert json.loads((tmp_path / "gen.json").read_text()) == []


def test_a_journal_started_with_other_options_is_not_continued(tmp_path, capsys):
    with ScriptedTeacher() as teacher:
        assert run(tmp_path, teacher, "--num-instructions", "2", capsys=capsys).returncode == 0
        result = run(tmp_path, teacher, "--num-instructions", "4", "--seed", "7", capsys=capsys)
    assert result.returncode == 2
    assert (
        f"{tmp_path / 'gen.journal.jsonl'} was started with seed 42, this run has 7"
        in result.stderr
    )


def test_a_torn_last_line_is_cut_off_and_its_request_asked_again(tmp_path, capsys):
    with ScriptedTeacher() as teacher:
        assert run(tmp_path, teacher, "--num-instructions", "3", capsys=capsys).returncode == 0
        journal = tmp_path / "gen.journal.jsonl"
        with journal.open("a") as file:
            file.write('{"request": 1, "kept": [{"instruction": "half a li')
        result = run(tmp_path, teacher, "--num-instructions", "6", capsys=capsys)
    assert result.returncode == 0, result.stderr
    numbers = [entry["request"] for entry in journal_entries(journal)]
    assert 1 in numbers and len(numbers) == len(set(numbers))  # request 1 was asked again
    assert "half a li" not in journal.read_text()
    records = json.loads((tmp_path / "gen.json").read_text())
    assert len(records) == 6 == len({record["instruction"] for record in records})


def command(tmp_path: Path, teacher: ScriptedTeacher, *args: str) -> list[str]:
    return [
        sys.executable, "-m", "alpaca_serve.generation.cli", "--base-url", teacher.url,
        "--out", str(tmp_path / "gen.json"), "--no-progress", "--concurrency", "2", *args,
    ]  # fmt: skip


def wait_for_entries(journal: Path, count: int, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        if journal.exists() and len(journal.read_text().splitlines()) > count:
            return
        time.sleep(0.05)
    raise AssertionError(f"the run wrote fewer than {count} journal entries")


def test_a_killed_run_started_again_continues_without_duplicates(tmp_path):
    journal = tmp_path / "gen.journal.jsonl"
    with ScriptedTeacher(delay_s=0.2) as teacher:
        process = subprocess.Popen(command(tmp_path, teacher, "--num-instructions", "30"), cwd=ROOT)
        wait_for_entries(journal, 3, process)
        process.send_signal(signal.SIGKILL)
        process.wait()
        before = [r["instruction"] for e in journal_entries(journal) for r in e["kept"]]
        assert 9 <= len(before) < 30
        again = subprocess.run(
            command(tmp_path, teacher, "--num-instructions", "30"),
            cwd=ROOT, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert "kept 30 tasks" in again.stdout
    entries = journal_entries(journal)
    numbers = [entry["request"] for entry in entries]
    assert len(numbers) == len(set(numbers))
    records = [r["instruction"] for r in json.loads((tmp_path / "gen.json").read_text())]
    assert len(records) == 30 == len(set(records))
    assert records[: len(before)] == before  # everything kept before the kill, in its order


def interruptible() -> None:
    """Ctrl-C as at a terminal: a pytest-xdist worker ignores SIGINT, and a child inherits that
    (Python then leaves it ignored), so the child gets the default back before it starts."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_writes_what_was_kept_and_says_how_to_go_on(tmp_path):
    with ScriptedTeacher(delay_s=0.2) as teacher:
        process = subprocess.Popen(
            command(tmp_path, teacher, "--num-instructions", "60"),
            cwd=ROOT, stderr=subprocess.PIPE, text=True, preexec_fn=interruptible,
        )  # fmt: skip
        wait_for_entries(tmp_path / "gen.journal.jsonl", 2, process)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == 130
    assert "stopped; what was kept is in" in stderr and "Traceback" not in stderr
    kept = [r for e in journal_entries(tmp_path / "gen.journal.jsonl") for r in e["kept"]]
    assert json.loads((tmp_path / "gen.json").read_text()) == kept


def limit_file_size(limit: int):
    def preexec() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past it fails (EFBIG) instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return preexec


def test_a_full_disk_stops_the_run_losing_nothing_it_kept(tmp_path):
    journal = tmp_path / "gen.journal.jsonl"
    with ScriptedTeacher() as teacher:
        full = subprocess.run(
            command(tmp_path, teacher, "--num-instructions", "30"), cwd=ROOT,
            capture_output=True, text=True, timeout=120, preexec_fn=limit_file_size(6000),
        )  # fmt: skip
        assert full.returncode == 2, full.stderr
        last = full.stderr.strip().splitlines()[-1]
        assert last.startswith(f"alpaca-generate: error: cannot write the journal {journal}")
        assert "File too large" in last and "run the same command again" in last
        kept_before = [r["instruction"] for e in journal_entries(journal) for r in e["kept"]]
        assert kept_before
        again = subprocess.run(
            command(tmp_path, teacher, "--num-instructions", "30"),
            cwd=ROOT, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    assert again.returncode == 0, again.stderr
    records = [r["instruction"] for r in json.loads((tmp_path / "gen.json").read_text())]
    assert len(records) == 30 == len(set(records))
    assert records[: len(kept_before)] == kept_before


def test_help_explains_every_option():
    parser = build_parser()
    for action in parser._actions:
        assert action.help, f"{action.option_strings} has no help"
    text = parser.format_help()
    for option in ("--base-url", "--api-key", "--model", "--concurrency", "--price-per-1k",
                   "--filters", "--num-instructions", "--out"):  # fmt: skip
        assert option in text


def test_the_estimated_cost_follows_the_tokens(tmp_path, capsys):
    with ScriptedTeacher() as teacher:
        result = run(tmp_path, teacher, "--num-instructions", "3", "--price-per-1k", "1,2",
                     capsys=capsys)  # fmt: skip
    provenance = json.loads((tmp_path / "gen.provenance.json").read_text())
    tokens = provenance["tokens"]
    expected = (tokens["prompt"] * 1 + tokens["completion"] * 2) / 1000
    assert provenance["estimated_cost_usd"] == pytest.approx(expected)
    assert f"estimated cost: ${expected:,.4f}" in result.stdout


def test_the_scripted_teachers_tasks_are_unlike_one_another():
    # The scripted teacher's own promise, which the tests above rely on.
    from alpaca_serve.generation.dedup import Deduplicator

    dedup = Deduplicator()
    assert all(dedup.offer(task_instruction(n, o)).kept for n in range(40) for o in range(3))


def test_the_servers_own_filters_are_taken_in_its_format(tmp_path, capsys):
    guard = '[{"factory": "alpaca_serve.server.filters:length_repetition_guard", "options": {}}]'
    with ScriptedTeacher() as teacher:
        result = run(tmp_path, teacher, "--num-instructions", "2", "--filters", guard,
                     capsys=capsys)  # fmt: skip
        assert result.returncode == 0, result.stderr
        bad = run(tmp_path, teacher, "--filters", '[{"factory": "no.such:thing"}]', capsys=capsys)
    assert bad.returncode == 2
    assert (
        bad.stderr.strip()
        .splitlines()[-1]
        .startswith(
            "alpaca-generate: error: --filters: cannot import filter factory 'no.such:thing'"
        )
    )
