"""Retention: generations older than ALPACA_LOG_RETENTION_DAYS lose their prompts and answers
(the server purges at start and hourly; `alpaca-export --purge-older-than DAYS` does it once),
while their ratings and votes stay, so counts and leaderboards do not move; every export and
training file leaves purged generations out and says how many. On SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections import Counter

import pytest
from pydantic import ValidationError

from alpaca_serve.feedback import FeedbackStore, StoreError, open_store
from alpaca_serve.feedback.export import main
from alpaca_serve.feedback.records import ComparisonFeedback, GenerationRecord, RatingFeedback
from alpaca_serve.feedback.training_data import dpo_pairs, kto_examples, sft_records
from alpaca_serve.server.retention import purge_periodically
from alpaca_serve.server.settings import ServerSettings
from tests.support import ROOT, read_metrics, run_command, start_server, wait_for

DAY = 86_400
OLD = ("old-a", "old-b", "old-raw", "old-unrated")  # recorded 40 days ago
NEW = ("new-a", "new-b")  # recorded yesterday


def generation(name: str, age_days: float) -> GenerationRecord:
    """A generation of model "a" or "b" (by its name) recorded `age_days` ago; "a" and "b" of
    one era answer the same prompt."""
    era = name.split("-")[0]
    return GenerationRecord(
        id=name,
        created_at=time.time() - age_days * DAY,
        model="b" if name.endswith("-b") else "a",
        params={"temperature": 0.7},
        instruction=None if name.endswith("raw") else "Name a colour.",
        input=f"input of {era}",
        prompt=f"prompt of {era}",
        response=f"answer of {name}",
        finish_reason="stop",
        prompt_tokens=5,
        completion_tokens=3,
        latency_s=0.25,
        filter_verdicts=[{"filter": "blocklist", "allowed": True}],
        # Asked without a session (as by an API client): any session, and a judge, may vote.
        session_id=None,
    )


def fill(store: FeedbackStore) -> None:
    """Old and new generations, each pair rated and compared the same way: "a" up (an old one
    with a preferred response), "b" down, "a" wins the human vote, the machine calls it a tie."""
    store.record_generations(
        [generation(name, 40) for name in OLD] + [generation(name, 1) for name in NEW]
    )
    for era in ("old", "new"):
        store.save_rating(RatingFeedback(f"{era}-a", "up", "s-1", preferred_response="Blue."))
        store.save_rating(RatingFeedback(f"{era}-b", "down", "s-1", flag=None))
        store.save_comparison(ComparisonFeedback((f"{era}-a", f"{era}-b"), f"{era}-a", "s-1"))
        store.save_comparison(
            ComparisonFeedback((f"{era}-a", f"{era}-b"), "tie", "judge", "machine")
        )


@pytest.fixture
def filled(store) -> FeedbackStore:
    fill(store)
    return store


def test_a_purge_empties_old_text_keeps_new_and_every_count(filled, monkeypatch):
    monkeypatch.setattr("alpaca_serve.feedback.store.PURGE_BATCH_SIZE", 3)  # 4 old: two batches
    summary, battles = filled.summary(), filled.battles()
    before_purge = time.time()

    purged = filled.purge_generations(time.time() - 30 * DAY)

    assert purged == len(OLD)
    found = filled.generations_by_id([*OLD, *NEW])
    for name in OLD:
        row = found[name]
        assert (row["input"], row["prompt"], row["response"], row["filter_verdicts"]) == (
            "",
            "",
            "",
            [],
        )
        assert row["instruction"] == (None if name == "old-raw" else "")
        assert before_purge <= row["purged_at"] <= time.time()
        kept = (row["model"], row["params"], row["prompt_tokens"], row["session_id"])
        assert kept == (generation(name, 40).model, {"temperature": 0.7}, 5, None)
    for name in NEW:
        assert found[name]["response"] == f"answer of {name}"
        assert found[name]["purged_at"] is None
    assert filled.summary() == summary
    assert filled.battles() == battles
    assert summary["models"]["a"]["up"] == 2 and summary["pairwise"][0]["wins_a"] == 2
    # Purging again purges nothing more and leaves the first purge's time.
    assert filled.purge_generations(time.time()) == len(NEW)
    assert filled.generations_by_id(["old-a"])["old-a"]["purged_at"] == found["old-a"]["purged_at"]
    assert filled.purge_generations(time.time()) == 0


def test_exports_and_training_data_leave_purged_generations_out_and_count_them(filled):
    filled.purge_generations(time.time() - 30 * DAY)

    skipped: Counter = Counter()
    rows = list(filled.export_rows(skipped=skipped))
    assert [row["generation_id"] for row in rows] == ["new-a", "new-b"]
    assert skipped == {"purged": 2}  # the two rated ones (the raw prompt is never exported)
    everything: Counter = Counter()
    assert len(list(filled.export_rows(include_unrated=True, skipped=everything))) == 2
    assert everything == {"purged": 3}  # and the unrated one

    sft, dpo, kto = sft_records(filled), dpo_pairs(filled), kto_examples(filled)

    assert sft.records == [
        {"instruction": "Name a colour.", "input": "input of new", "output": "answer of new-a"},
        {"instruction": "Name a colour.", "input": "input of new", "output": "Blue."},
    ]
    assert sft.dropped["purged"] == 2
    assert "2 rated answers purged by retention" in sft.summary()
    assert dpo.records == [
        {"prompt": "prompt of new", "chosen": "answer of new-a", "rejected": "answer of new-b"},
        {"prompt": "prompt of new", "chosen": "Blue.", "rejected": "answer of new-a"},
    ]
    assert dpo.dropped["purged_pair"] == 1 and dpo.dropped["purged"] == 2
    assert "1 pair with an answer purged by retention" in dpo.summary()
    assert [(r["completion"], r["label"]) for r in kto.records] == [
        ("answer of new-a", True),
        ("Blue.", True),
        ("answer of new-b", False),
    ]
    assert kto.dropped["purged"] == 2
    for record in sft.records + dpo.records + kto.records:
        assert all(str(value).strip() for value in record.values()), record


def test_the_server_purges_at_start_and_counts_it(request, tmp_path, database_url):
    with open_store(database_url) as store:
        fill(store)
        summary = store.summary()
    env = {"ALPACA_DATABASE_URL": database_url, "ALPACA_LOG_RETENTION_DAYS": "30"}
    server = start_server(request, "scripted", env, tmp_path)
    try:
        purged = wait_for(lambda: read_metrics(server.client)["alpaca_generations_purged_total"])
        assert purged == len(OLD)
        assert (
            "INFO alpaca.server retention: purged the prompts and answers of 4 generations older "
            "than 30 days" in server.log_text()
        )
        assert server.client.get("/feedback/summary").json() == summary
        generated = server.client.post("/generate", json={"instruction": "Say hi."})
        assert generated.status_code == 200
    finally:
        server.stop()
    with open_store(database_url) as store:
        found = store.generations_by_id([*OLD, *NEW, generated.json()["id"]])
    assert {name for name, row in found.items() if row["purged_at"] is not None} == set(OLD)
    assert len(found) == len(OLD) + len(NEW) + 1


def test_a_failed_purge_is_logged_and_tried_again_next_round(caplog):
    class FlakyStore:
        def __init__(self):
            self.calls = 0

        def purge_generations(self, before: float) -> int:
            self.calls += 1
            if self.calls == 1:
                raise StoreError("cannot purge generations in the test database: locked")
            return 7 if self.calls == 2 else 0

    store, counted = FlakyStore(), []

    async def run() -> None:
        done = asyncio.Event()

        def count(purged: int) -> None:
            counted.append(purged)
            done.set()

        task = asyncio.create_task(purge_periodically(store, 30, count, interval_s=0))
        await asyncio.wait_for(done.wait(), 10)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    with caplog.at_level("INFO", logger="alpaca.server"):
        asyncio.run(run())

    assert counted == [7]
    messages = [record.getMessage() for record in caplog.records]
    assert (
        "retention: the purge failed, tried again in the next round: cannot purge generations "
        "in the test database: locked" in messages
    )
    assert "retention: purged the prompts and answers of 7 generations older than 30 days" in (
        messages
    )


@pytest.mark.parametrize(("value", "days"), [("30", 30.0), ("0.5", 0.5), ("", None), (" ", None)])
def test_the_retention_setting_takes_a_positive_number_of_days(monkeypatch, value, days):
    monkeypatch.setenv("ALPACA_LOG_RETENTION_DAYS", value)
    assert ServerSettings().log_retention_days == days


@pytest.mark.parametrize("value", ["0", "-1", "thirty", "inf", "nan"])
def test_a_retention_that_is_not_a_positive_number_of_days_stops_the_server(monkeypatch, value):
    monkeypatch.setenv("ALPACA_LOG_RETENTION_DAYS", value)
    with pytest.raises(ValidationError, match="log_retention_days"):
        ServerSettings()


def test_alpaca_export_purges_once_and_exports_say_what_they_left_out(
    tmp_path, capsys, database_url
):
    with open_store(database_url) as store:
        fill(store)
    command = [sys.executable, "-m", "alpaca_serve.feedback.export", "--database", database_url]

    purge = subprocess.run(
        [*command, "--purge-older-than", "30"], cwd=ROOT, capture_output=True, text=True
    )

    assert purge.returncode == 0, purge.stderr
    line = purge.stderr.strip()
    assert line.startswith("alpaca-export: purged 4 generations recorded before 20"), line
    assert " (older than 30 days) in " in line and len(line.splitlines()) == 1
    again = run_command(main, ["--database", database_url, "--purge-older-than", "30"], capsys)
    assert again.returncode == 0 and "alpaca-export: purged 0 generations" in again.stderr
    out = tmp_path / "feedback.jsonl"
    exported = run_command(main, ["--database", database_url, "--out", str(out)], capsys)
    assert exported.stderr.strip() == (
        f"alpaca-export: wrote 2 records to {out}; left out 2 generations purged by retention"
    )
    sft = run_command(main, ["--database", database_url, "--format", "sft"], capsys)
    assert sft.stderr.strip().endswith(
        "dropped: 1 answer rated down, 2 rated answers purged by retention"
    )
    assert "answer of old" not in sft.stdout and len(sft.stdout.splitlines()) == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--purge-older-than", "0"], "takes a positive number of days (such as 30), got '0'"),
        (["--purge-older-than", "-3"], "got '-3'"),
        (["--purge-older-than", "a month"], "got 'a month'"),
        (["--purge-older-than", "inf"], "got 'inf'"),
        (["--purge-older-than", "30", "--format", "sft"], "--format is for exports, not"),
        (["--purge-older-than", "30", "--delete-session", "s"], "not allowed with argument"),
    ],
)
def test_a_bad_purge_is_one_error_line_and_exit_status_2(tmp_path, capsys, args, message):
    result = run_command(main, ["--data-dir", str(tmp_path), *args], capsys)

    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("alpaca-export: error: ") and message in lines[-1]
    assert sum(": error: " in line for line in lines) == 1


def test_purging_a_data_folder_without_a_store_creates_nothing(tmp_path, capsys):
    folder = tmp_path / "nothing-here"

    result = run_command(main, ["--data-dir", str(folder), "--purge-older-than", "30"], capsys)

    assert result.returncode == 2
    assert result.stderr.strip() == f"alpaca-export: error: no database at {folder}/alpaca.sqlite3"
    assert not folder.exists()
