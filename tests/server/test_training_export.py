"""`alpaca-export --format sft|dpo|kto`: training data chosen from what people said about
answers the server really gave, on SQLite and on PostgreSQL, and counted by what was kept and
left out; the thumbs' file trains a KTO adapter as it is."""

from __future__ import annotations

import json

import pytest

from alpaca_serve.core.prompts import format_prompt
from alpaca_serve.feedback import default_database_url
from alpaca_serve.feedback.export import main
from alpaca_serve.training.data import AlpacaRecord
from alpaca_serve.training.train import load_training_records
from tests.support import CommandResult, run_command, start_server


@pytest.fixture(params=["sqlite", "postgresql"])
def served(request, tmp_path):
    """A fresh server on the scripted engine, its store empty (a SQLite file in its data folder,
    or a PostgreSQL schema of its own), and the URL of that store."""
    env = {}
    if request.param == "postgresql":
        env["ALPACA_DATABASE_URL"] = request.getfixturevalue("postgres_url")
    server = start_server(request, "scripted", env, tmp_path)
    try:
        yield server, env.get("ALPACA_DATABASE_URL") or default_database_url(server.data_dir)
    finally:
        server.stop()


def answer(server, instruction: str, input: str = "", max_new_tokens: int = 4) -> str:
    """Ask the server; the generation id of its answer (the engine's answer is cut at
    `max_new_tokens` words, so two lengths give two different answers)."""
    response = server.client.post(
        "/generate",
        json={"instruction": instruction, "input": input, "max_new_tokens": max_new_tokens},
    )
    assert response.status_code == 200, response.text
    return response.json()["id"]


def rate(
    server,
    generation_id: str,
    rating: str,
    session: str,
    preferred: str | None = None,
    flag: str | None = None,
):
    body = {"generation_id": generation_id, "rating": rating, "session_id": session}
    if preferred is not None:
        body["preferred_response"] = preferred
    if flag is not None:
        body["flag"] = flag
    response = server.client.post("/feedback", json=body)
    assert response.status_code == 201, response.text


def vote(server, pair: tuple[str, str], winner: str, session: str, voter: str = "human"):
    body = {"generation_ids": list(pair), "winner": winner, "session_id": session, "voter": voter}
    response = server.client.post("/feedback", json=body)
    assert response.status_code == 201, response.text


def two_answers(server, instruction: str, input: str = "") -> tuple[str, str]:
    return answer(server, instruction, input, 3), answer(server, instruction, input, 6)


def stored(server, url: str, generation_id: str) -> dict:
    """The generation as the store has it."""
    from alpaca_serve.feedback import open_store

    with open_store(url) as store:
        return store.generations_by_id([generation_id])[generation_id]


def export(url: str, out, *options: str, capsys) -> tuple[list[dict], str]:
    """Run alpaca-export in this process: the lines written and the summary on stderr."""
    assert main(["--database", url, "--out", str(out), *options]) == 0
    err = capsys.readouterr().err.strip()
    return [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()], err


def test_sft_keeps_answers_rated_up_and_preferred_responses_but_not_answers_rated_down(
    served, tmp_path, capsys
):
    server, url = served
    liked = answer(server, "Name a planet.")
    corrected = answer(server, "Name a colour.", "something warm")
    disliked = answer(server, "Name a river.")
    disputed = answer(server, "Name a mountain.")
    answer(server, "Name a sea.")  # nobody rates it
    rate(server, liked, "up", "alice")
    rate(server, liked, "up", "bob")  # a second up: still one record
    rate(server, corrected, "down", "alice", preferred="Red, like a fire.")
    rate(server, corrected, "down", "bob", preferred="Red, like a fire.")  # the same correction
    for session, rating in [("alice", "up"), ("bob", "down"), ("carol", "down")]:
        rate(server, disliked, rating, session)
    rate(server, disputed, "up", "alice")
    rate(server, disputed, "down", "bob")
    out = tmp_path / "sft.jsonl"

    rows, summary = export(url, out, "--format", "sft", capsys=capsys)

    assert rows == [
        {
            "instruction": "Name a planet.",
            "input": "",
            "output": stored(server, url, liked)["response"],
        },
        {"instruction": "Name a colour.", "input": "something warm", "output": "Red, like a fire."},
    ]
    assert summary == (
        f"alpaca-export: wrote 2 sft records to {out}: 1 answer rated up, 1 preferred response; "
        "dropped: 2 answers rated down, 1 answer rated up and down equally, 1 duplicate"
    )
    # alpaca-train's reader takes the file as it is.
    records, skipped = load_training_records(out, skip_invalid=False)
    assert skipped == 0
    assert records == [AlpacaRecord(**row) for row in rows]


def test_an_answer_someone_flagged_is_never_an_sft_target(served, tmp_path, capsys):
    server, url = served
    flagged = answer(server, "Name a weapon.")
    rate(server, flagged, "up", "alice")
    rate(server, flagged, "up", "bob", flag="harmful")

    rows, summary = export(url, tmp_path / "sft.jsonl", "--format", "sft", capsys=capsys)

    assert rows == []
    assert summary.endswith("nothing; dropped: 1 flagged answer"), summary


def test_kto_labels_each_rated_answer_by_its_thumbs_as_the_model_saw_it(
    served, tmp_path, capsys, tiny_model_dir
):
    from alpaca_serve.training.cli import main as train_main
    from alpaca_serve.training.preferences import UnpairedExample, load_unpaired_examples

    server, url = served
    liked = answer(server, "Name a planet.")
    disliked = answer(server, "Name a river.", "in Europe")
    corrected = answer(server, "Name a colour.")
    disputed = answer(server, "Name a mountain.")
    flagged = answer(server, "Name a poison.")
    answer(server, "Name a sea.")  # nobody rates it
    for session, rating in [("alice", "up"), ("bob", "up"), ("carol", "down")]:
        rate(server, liked, rating, session)  # a majority up: one desirable answer
    rate(server, disliked, "down", "alice")
    rate(server, corrected, "down", "alice", preferred="Red, like a fire.")
    rate(server, disputed, "up", "alice")
    rate(server, disputed, "down", "bob")
    rate(server, flagged, "down", "alice", flag="harmful")
    out = tmp_path / "kto.jsonl"

    rows, summary = export(url, out, "--format", "kto", capsys=capsys)

    def seen(generation_id: str) -> dict:
        generation = stored(server, url, generation_id)
        return {"prompt": generation["prompt"], "completion": generation["response"]}

    assert rows == [
        {**seen(liked), "label": True},
        {**seen(disliked), "label": False},
        {**seen(corrected), "label": False},
        {"prompt": seen(corrected)["prompt"], "completion": "Red, like a fire.", "label": True},
    ]
    assert rows[1]["prompt"] == format_prompt("Name a river.", "in Europe")
    assert summary == (
        f"alpaca-export: wrote 4 kto answers to {out}: 1 preferred response, 1 answer rated up "
        "(desirable), 2 answers rated down (undesirable); dropped: 1 flagged answer, 1 answer "
        "rated up and down equally"
    )
    # alpaca-train --method kto's reader takes the file as it is, and trains on it.
    assert load_unpaired_examples(out) == [UnpairedExample(**row) for row in rows]
    trained = tmp_path / "kto-adapter"
    status = train_main(
        ["--method", "kto", "--model", str(tiny_model_dir), "--data", str(out)]
        + ["--out", str(trained), "--preset", "tiny", "--model-max-length", "64", "--no-merge"]
        + ["--max-steps", "1", "--global-batch-size", "2", "--micro-batch-size", "2"]
        + ["--eval-fraction", "0"]
    )
    assert status == 0, capsys.readouterr().err[-2000:]
    assert (trained / "adapter" / "adapter_model.safetensors").is_file()


def test_dpo_pairs_come_from_votes_by_majority_and_from_preferred_responses(
    served, tmp_path, capsys
):
    server, url = served
    majority = two_answers(server, "Summarise the text.", "Cats sleep a lot.")
    unanimous = two_answers(server, "Name a planet.")
    tied = two_answers(server, "Name a colour.")
    both_bad = two_answers(server, "Name a river.")
    split = two_answers(server, "Name a mountain.")
    for session, winner in [("alice", 0), ("bob", 0), ("carol", 1)]:
        vote(server, majority, majority[winner], session)
    vote(server, unanimous, unanimous[1], "alice")
    vote(server, tied, "tie", "alice")
    vote(server, tied, "tie", "bob")
    vote(server, both_bad, "both_bad", "alice")
    vote(server, split, split[0], "alice")
    vote(server, split, split[1], "bob")
    corrected = answer(server, "Translate to French.", "good morning")
    rate(server, corrected, "down", "alice", preferred="Bonjour.")
    out = tmp_path / "dpo.jsonl"

    rows, summary = export(url, out, "--format", "dpo", capsys=capsys)

    def pair(chosen: str, rejected: str) -> dict:
        first, second = stored(server, url, chosen), stored(server, url, rejected)
        return {
            "prompt": first["prompt"],
            "chosen": first["response"],
            "rejected": second["response"],
        }

    assert rows == [
        pair(majority[0], majority[1]),
        pair(unanimous[1], unanimous[0]),
        {
            "prompt": stored(server, url, corrected)["prompt"],
            "chosen": "Bonjour.",
            "rejected": stored(server, url, corrected)["response"],
        },
    ]
    assert summary == (
        f"alpaca-export: wrote 3 dpo pairs to {out}: 1 unanimous vote, "
        "1 conflict resolved by majority, 1 preferred response; dropped: 1 tie, 1 both bad, "
        "1 conflict unresolved (even split)"
    )
    # The prompt is exactly what the engine was sent: the Alpaca template, with the input.
    sent = {request.request_id: request.prompt for request in server.engine.requests}
    assert rows[0]["prompt"] == sent[majority[0]] == sent[majority[1]]
    assert rows[0]["prompt"] == format_prompt("Summarise the text.", "Cats sleep a lot.")
    assert (
        rows[2]["prompt"]
        == sent[corrected]
        == format_prompt("Translate to French.", "good morning")
    )


def test_a_pair_with_an_empty_answer_is_dropped_and_counted_not_written(served, tmp_path, capsys):
    # A model that answers nothing at once loses the vote, but DPO has no text to push away
    # from: such a pair in the file stopped `alpaca-train --method dpo` (and the loop's prefer).
    server, url = served
    kept = two_answers(server, "Name a planet.")
    scripted, server.engine.reply = server.engine.reply, lambda prompt: ""
    try:
        silent = answer(server, "Name a colour.")
    finally:
        server.engine.reply = scripted
    spoken = answer(server, "Name a colour.")
    vote(server, kept, kept[0], "alice")
    vote(server, (silent, spoken), spoken, "alice")  # a vote writes its generations first
    assert stored(server, url, silent)["response"] == ""

    rows, summary = export(url, tmp_path / "dpo.jsonl", "--format", "dpo", capsys=capsys)

    assert len(rows) == 1 and all(row["chosen"] and row["rejected"] for row in rows)
    assert summary.endswith("dropped: 1 pair with an empty answer"), summary


def test_machine_votes_are_left_out_unless_asked_for(served, tmp_path, capsys):
    server, url = served
    judged_only = two_answers(server, "Name a planet.")
    both = two_answers(server, "Name a colour.")
    vote(server, judged_only, judged_only[0], "judge-fake", voter="machine")
    vote(server, both, both[0], "alice")
    vote(server, both, both[1], "judge-fake", voter="machine")  # disagrees with alice

    people, people_summary = export(
        url, tmp_path / "people.jsonl", "--format", "dpo", capsys=capsys
    )
    everyone, everyone_summary = export(
        url, tmp_path / "all.jsonl", "--format", "dpo", "--include-machine", capsys=capsys
    )

    chosen = stored(server, url, both[0])["response"]
    assert [row["chosen"] for row in people] == [chosen]
    assert people_summary.endswith(": 1 unanimous vote; dropped: 2 machine votes")
    # With the judge's votes: its pair is kept, and the pair it disputes splits evenly.
    assert [row["chosen"] for row in everyone] == [stored(server, url, judged_only[0])["response"]]
    assert everyone_summary.endswith(
        ": 1 unanimous vote; dropped: 1 conflict unresolved (even split)"
    )


def test_the_default_format_is_still_one_line_per_rating_with_its_details(served, tmp_path, capsys):
    server, url = served
    generation_id = answer(server, "Name a planet.")
    rate(server, generation_id, "down", "alice", preferred="Mars.")

    rows, summary = export(url, tmp_path / "feedback.jsonl", capsys=capsys)

    [row] = rows
    assert (row["generation_id"], row["rating"], row["preferred_response"]) == (
        generation_id,
        "down",
        "Mars.",
    )
    assert summary == f"alpaca-export: wrote 1 record to {tmp_path / 'feedback.jsonl'}"


def run_export(capsys, *args: str) -> CommandResult:
    return run_command(main, list(args), capsys)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--format", "csv"], "argument --format: invalid choice: 'csv'"),
        (["--format", "sft", "--include-machine"], "--include-machine goes with --format dpo"),
        (["--format", "dpo", "--include-unrated"], "--include-unrated goes with --format feedback"),
    ],
)
def test_a_format_or_option_that_does_not_fit_is_one_error_line_and_status_2(
    tmp_path, options, message, capsys
):
    result = run_export(capsys, "--data-dir", str(tmp_path), *options)

    assert result.returncode == 2
    assert result.stdout == ""
    errors = [line for line in result.stderr.splitlines() if not line.startswith(("usage:", " "))]
    assert len(errors) == 1 and errors[0].startswith("alpaca-export: error: ")
    assert message in errors[0]
    assert not (tmp_path / "alpaca.sqlite3").exists()


def test_help_explains_the_formats(capsys):
    result = run_export(capsys, "--help")

    for words in ("--format", "feedback", "sft", "dpo", "kto", "--include-machine", "thumbs"):
        assert words in result.stdout
