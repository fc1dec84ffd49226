"""Excluding a session: one session's 40 stuffed votes turn a leaderboard round; excluded (the
admin route, or `alpaca-export --exclude-session`), they leave the summary, the leaderboard, the
comparison pages, `alpaca-eval report` and `annotations` and the SFT, DPO and KTO exports, each
of which says how many it left out; counted again (`--include-session`), they are back. Votes and
ratings without a session are never left out. On SQLite and PostgreSQL."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from alpaca_serve.evaluation.cli import main as alpaca_eval
from alpaca_serve.evaluation.comparison import save_comparison
from alpaca_serve.feedback import FeedbackStore, open_store
from alpaca_serve.feedback.export import main as alpaca_export
from alpaca_serve.feedback.leaderboard import compute_leaderboard
from alpaca_serve.feedback.records import ComparisonFeedback, GenerationRecord, RatingFeedback
from alpaca_serve.feedback.training_data import dpo_pairs, kto_examples, sft_records
from tests.support import run_command, start_server

ADMIN = "admin-key-for-exclusion"
STUFFER = "ui-stuffer"
READERS = 12  # people who read both answers of pair n (n < 12): "ours" wins 9, "theirs" 3
STUFFED = 40  # the stuffer's votes, one on each of pairs 0..39, all for "theirs"
PAIRS = 41  # pair 40 gets one vote without a session, for "ours"


def generation(name: str, n: int) -> GenerationRecord:
    """The answer of model `name` ("ours" or "theirs") to question n; both answer one prompt."""
    return GenerationRecord(
        id=f"{name}-{n}",
        created_at=1_700_000_000.0 + n,
        model=name,
        params={},
        instruction=f"Question {n}?",
        input="",
        prompt=f"### Instruction:\nQuestion {n}?\n\n### Response:",
        response=f"{name}'s answer {n}.",
        finish_reason="stop",
        prompt_tokens=9,
        completion_tokens=4,
        latency_s=0.1,
        filter_verdicts=[],
    )


def fill(store: FeedbackStore) -> None:
    """Readers vote and rate "ours" up; the stuffer votes "theirs" on 40 pairs and rates each of
    those answers up; one vote and one rating have no session."""
    store.record_generations(
        [generation(name, n) for n in range(PAIRS) for name in ("ours", "theirs")]
    )
    for n in range(READERS):
        winner = f"ours-{n}" if n < 9 else f"theirs-{n}"
        store.save_comparison(ComparisonFeedback((f"ours-{n}", f"theirs-{n}"), winner, f"r{n}"))
        store.save_rating(RatingFeedback(f"ours-{n}", "up", f"r{n}"))
    for n in range(STUFFED):
        store.save_comparison(
            ComparisonFeedback((f"ours-{n}", f"theirs-{n}"), f"theirs-{n}", STUFFER)
        )
        store.save_rating(RatingFeedback(f"theirs-{n}", "up", STUFFER))
    store.save_comparison(ComparisonFeedback(("ours-40", "theirs-40"), "ours-40"))
    store.save_rating(RatingFeedback("ours-40", "up"))


@pytest.fixture
def filled(database_url) -> str:
    with open_store(database_url) as store:
        fill(store)
    return database_url


def human_wins(summary: dict) -> tuple[int, int]:
    """(wins of ours, wins of theirs) in the summary's people's table."""
    (row,) = summary["pairwise"]
    assert (row["model_a"], row["model_b"]) == ("ours", "theirs")
    return row["wins_a"], row["wins_b"]


def board(store: FeedbackStore):
    excluded: Counter = Counter()
    battles = store.battles(excluded=excluded)
    return compute_leaderboard(battles, rounds=0, excluded_votes=excluded["human"])


def test_a_stuffing_session_turns_the_board_until_excluded_and_turns_it_again_once_included(
    filled,
):
    with open_store(filled) as store:
        assert human_wins(store.summary()) == (10, 43)
        assert board(store).rows[0].model == "theirs"

        created, counts = store.exclude_session(STUFFER, "one script", "test")

        assert created and counts == {"ratings": STUFFED, "comparisons": STUFFED}
        summary = store.summary()
        assert human_wins(summary) == (10, 3)  # the anonymous vote for "ours" stays
        assert summary["models"] == {"ours": {"up": READERS + 1, "down": 0, "flags": {}}}
        assert summary["excluded"] == {"sessions": 1, "ratings": 40, "comparisons": 40}
        excluded = board(store)
        assert [row.model for row in excluded.rows] == ["ours", "theirs"]
        assert (excluded.votes, excluded.excluded_votes) == (READERS + 1, STUFFED)
        listed = store.list_comparisons()
        assert len(listed) == READERS + 1 and STUFFER not in {v["session_id"] for v in listed}
        flagged = store.list_comparisons(include_excluded=True)
        assert Counter(vote["excluded"] for vote in flagged) == {True: 40, False: 13}
        assert store.excluded_counts() == summary["excluded"]
        assert store.excluded_sessions()[0]["reason"] == "one script"

        assert store.include_session(STUFFER)

        assert human_wins(store.summary()) == (10, 43)
        assert store.summary()["excluded"] == {"sessions": 0, "ratings": 0, "comparisons": 0}
        assert (board(store).rows[0].model, board(store).excluded_votes) == ("theirs", 0)


def test_training_exports_leave_an_excluded_sessions_ratings_and_votes_out_and_count_them(
    filled,
):
    with open_store(filled) as store:
        assert len(sft_records(store).records) == READERS + 1 + STUFFED
        store.exclude_session(STUFFER)

        sft, dpo, kto = sft_records(store), dpo_pairs(store), kto_examples(store)
        skipped: Counter = Counter()
        rows = list(store.export_rows(skipped=skipped))

    assert {record["output"] for record in sft.records} == {
        f"ours's answer {n}." for n in [*range(READERS), 40]
    }
    assert sft.summary() == "13 answers rated up; dropped: 40 ratings from excluded sessions"
    assert len(dpo.records) == READERS + 1
    assert sum("ours's" in record["chosen"] for record in dpo.records) == 10
    assert dpo.dropped["excluded_vote"] == STUFFED
    assert "40 votes from excluded sessions" in dpo.summary()
    assert len(kto.records) == READERS + 1 and all(record["label"] for record in kto.records)
    assert kto.dropped == {"excluded_rating": STUFFED}
    assert len(rows) == READERS + 1 and skipped == {"excluded_rating": STUFFED}


def test_the_admin_route_excludes_from_every_report_the_server_gives_and_include_restores(
    request, tmp_path, capsys, filled
):
    server = start_server(
        request,
        "scripted",
        {"ALPACA_DATABASE_URL": filled, "ALPACA_ADMIN_KEYS": ADMIN},
        tmp_path,
    )
    admin = {"Authorization": f"Bearer {ADMIN}"}
    comparison = tmp_path / "comparison.json"
    save_comparison(comparison, comparison_of_every_pair(server.url))
    report = ["report", "--comparison", str(comparison), "--api-key", ADMIN]
    annotations = [
        *("annotations", "--comparison", str(comparison), "--api-key", ADMIN),
        *("--out", str(tmp_path / "annotations.json")),
    ]
    try:
        leaderboard = server.client.get("/feedback/leaderboard?rounds=0", headers=admin).json()
        assert leaderboard["rows"][0]["model"] == "theirs"
        assert leaderboard["excluded_votes"] == 0

        excluded = server.client.post(
            f"/admin/sessions/{STUFFER}/exclude", json={"reason": "40 votes"}, headers=admin
        )

        assert excluded.status_code == 200, excluded.text
        assert excluded.json()["votes"] == {"ratings": 40, "comparisons": 40}
        summary = server.client.get("/feedback/summary", headers=admin).json()
        assert human_wins(summary) == (10, 3)
        assert summary["excluded"] == {"sessions": 1, "ratings": 40, "comparisons": 40}
        leaderboard = server.client.get("/feedback/leaderboard?rounds=0", headers=admin).json()
        assert [row["model"] for row in leaderboard["rows"]] == ["ours", "theirs"]
        assert (leaderboard["votes"], leaderboard["excluded_votes"]) == (13, 40)
        pages, after = [], 0
        while after is not None:
            page = server.client.get(
                f"/feedback/comparisons?after={after}&limit=5", headers=admin
            ).json()
            pages.append(page)
            after = page["next_after"]
        assert sum(len(page["comparisons"]) for page in pages) == 13
        assert {(page["excluded_votes"], page["excluded_sessions"]) for page in pages} == {(40, 1)}
        assert all(v["session_id"] != STUFFER for page in pages for v in page["comparisons"])

        printed = run_command(alpaca_eval, report, capsys)
        assert printed.returncode == 0, printed.stderr
        assert "Human votes: 13 votes" in printed.stdout
        assert "ours win rate over decided votes: 76.9% (10 of 13)" in printed.stdout
        assert "(left out 40 votes of 1 excluded session, on any pair" in printed.stdout
        written = run_command(alpaca_eval, annotations, capsys)
        assert written.returncode == 0, written.stderr
        assert written.stdout.startswith("wrote 13 annotations to ")
        assert "left out 40 votes of 1 excluded session" in written.stdout
        assert len(json.loads((tmp_path / "annotations.json").read_text())) == 13

        included = server.client.delete(f"/admin/sessions/{STUFFER}/exclude", headers=admin)

        assert included.json()["changed"] is True
        summary = server.client.get("/feedback/summary", headers=admin).json()
        assert human_wins(summary) == (10, 43) and summary["excluded"]["comparisons"] == 0
        printed = run_command(alpaca_eval, report, capsys)
        assert "Human votes: 53 votes" in printed.stdout and "left out" not in printed.stdout
        written = run_command(alpaca_eval, annotations, capsys)
        assert written.stdout.startswith("wrote 53 annotations to ")
    finally:
        server.stop()


def comparison_of_every_pair(server_url: str) -> dict:
    """A comparison file (as `alpaca-eval compare` writes it) of pairs 0..40, ours as A, left."""
    return {
        "labels": ["ours", "theirs"],
        "seed": 0,
        "server_url": server_url,
        "pairs": [
            {
                "pair_id": f"pair-{n:03d}",
                "instruction": f"Question {n}?",
                "input": "",
                "motivation_app": None,
                "left": {"output": f"ours's answer {n}.", "generation_id": f"ours-{n}"},
                "right": {"output": f"theirs's answer {n}.", "generation_id": f"theirs-{n}"},
                "left_is": "a",
            }
            for n in range(PAIRS)
        ],
        "unmatched": {"a": 0, "b": 0},
    }


def test_alpaca_export_excludes_lists_and_includes_a_session_and_exports_say_so(
    tmp_path, capsys, filled
):
    def export(*args: str):
        return run_command(alpaca_export, ["--database", filled, *args], capsys)

    excluded = export("--exclude-session", STUFFER, "--reason", "one script, 40 votes")
    again = export("--exclude-session", STUFFER)
    listed = export("--list-excluded")
    sft = export("--format", "sft", "--out", str(tmp_path / "sft.jsonl"))
    feedback = export("--out", str(tmp_path / "feedback.jsonl"))
    board = run_command(alpaca_eval, ["leaderboard", "--database", filled, "--rounds", "0"], capsys)

    assert excluded.returncode == 0, excluded.stderr
    assert excluded.stderr.startswith(
        f"alpaca-export: session '{STUFFER}' excluded: 40 ratings, 40 comparisons left out of "
        "every count and export in "
    )
    assert f"session '{STUFFER}' already excluded: 40 ratings" in again.stderr
    (session,) = [json.loads(line) for line in listed.stdout.splitlines()]
    assert session["session_id"] == STUFFER and session["reason"] == "one script, 40 votes"
    assert (session["excluded_by"], session["ratings"], session["comparisons"]) == (
        "alpaca-export",
        40,
        40,
    )
    assert listed.stderr.startswith("alpaca-export: 1 excluded session in ")
    assert sft.stderr.strip().endswith(
        "wrote 13 sft records to "
        f"{tmp_path / 'sft.jsonl'}: 13 answers rated up; dropped: 40 ratings from excluded sessions"
    )
    assert feedback.stderr.strip().endswith("; left out 40 ratings from excluded sessions")
    assert board.returncode == 0, board.stderr
    assert "13 votes between two models; left out 40 votes of excluded sessions" in board.stdout
    assert board.stdout.splitlines()[2].split()[1] == "ours"

    included = export("--include-session", STUFFER)
    not_excluded = export("--include-session", STUFFER)
    sft = export("--format", "sft", "--out", str(tmp_path / "sft.jsonl"))

    assert included.stderr.startswith(
        f"alpaca-export: session '{STUFFER}' counted again: 40 ratings, 40 comparisons in "
    )
    assert f"session '{STUFFER}' was not excluded: nothing changed" in not_excluded.stderr
    assert "wrote 53 sft records" in sft.stderr and "excluded" not in sft.stderr
    assert export("--list-excluded").stdout == ""


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--exclude-session", " "], "a session id is needed: it must not be empty"),
        (["--include-session", ""], "a session id is needed: it must not be empty"),
        (["--reason", "why"], "--reason goes with --exclude-session"),
        (["--include-session", "s", "--reason", "why"], "--reason goes with --exclude-session"),
        (["--exclude-session", "s", "--reason", "x" * 501], "at most 500 characters, got 501"),
        (["--exclude-session", "s", "--format", "sft"], "--format is for exports, not"),
        (["--exclude-session", "s", "--include-session", "s"], "not allowed with argument"),
        (["--list-excluded", "--delete-session", "s"], "not allowed with argument"),
    ],
)
def test_a_bad_exclusion_is_one_error_line_and_exit_status_2(tmp_path, capsys, args, message):
    result = run_command(alpaca_export, ["--data-dir", str(tmp_path), *args], capsys)

    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("alpaca-export: error: ") and message in lines[-1]
    assert sum(": error: " in line for line in lines) == 1


def test_excluding_in_a_data_folder_without_a_store_creates_nothing(tmp_path, capsys):
    folder = tmp_path / "nothing-here"

    result = run_command(alpaca_export, ["--data-dir", str(folder), "--list-excluded"], capsys)

    assert result.returncode == 2
    assert result.stderr.strip() == f"alpaca-export: error: no database at {folder}/alpaca.sqlite3"
    assert not folder.exists()
