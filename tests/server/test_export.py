"""`alpaca-export` writes rated generations that the training loader reads back unchanged."""

from __future__ import annotations

import json

from alpaca_serve.feedback import GenerationRecord, RatingFeedback, open_store
from alpaca_serve.feedback.export import main
from alpaca_serve.feedback.settings import StoreSettings
from alpaca_serve.server.settings import ServerSettings
from alpaca_serve.training.data import AlpacaRecord, load_records
from tests.support import CommandResult, run_command


def generation(index: int, model: str = "alpaca-7b", instruction: str | None = None):
    return GenerationRecord(
        id=f"gen-{index:05d}",
        # Three generations share each timestamp, so export pages split ties.
        created_at=1_700_000_000.0 + index // 3,
        model=model,
        params={"temperature": 0.1},
        instruction=instruction if instruction is not None else f"Instruction {index}: count.",
        input="" if index % 2 else f'numbers up to {index}\nand "quotes" ☃',
        prompt="(the formatted prompt)",
        response=f"1, 2, … {index}",
        finish_reason="eos",
        prompt_tokens=30,
        completion_tokens=10,
        latency_s=0.5,
        filter_verdicts=[],
    )


def test_export_of_1000_rated_generations_loads_back_as_the_recorded_records(
    database_url, tmp_path
):
    records = [generation(i) for i in range(1000)]
    raw_prompt = GenerationRecord(**{**generation(1000).__dict__, "instruction": None})
    with open_store(database_url) as store:
        store.record_generations([*records, raw_prompt])
        for i, record in enumerate(records):
            store.save_rating(RatingFeedback(record.id, "up" if i % 3 else "down"))
        store.save_rating(RatingFeedback(raw_prompt.id, "up"))
    out = tmp_path / "exports" / "feedback.jsonl"

    assert main(["--database", database_url, "--out", str(out)]) == 0

    assert load_records(out) == [
        AlpacaRecord(instruction=r.instruction, input=r.input, output=r.response) for r in records
    ]
    ratings = [json.loads(line)["rating"] for line in out.read_text().splitlines()]
    assert ratings == ["up" if i % 3 else "down" for i in range(1000)]


def test_export_writes_to_standard_output_and_adds_unrated_on_request(tmp_path, capsys):
    with open_store(f"sqlite://{tmp_path / 'alpaca.sqlite3'}") as store:
        store.record_generations([generation(1), generation(2)])
        store.save_rating(RatingFeedback("gen-00001", "up"))

    assert main(["--data-dir", str(tmp_path)]) == 0
    rated = capsys.readouterr()
    assert main(["--data-dir", str(tmp_path), "--include-unrated"]) == 0
    everything = capsys.readouterr()

    assert [json.loads(line)["generation_id"] for line in rated.out.splitlines()] == ["gen-00001"]
    assert rated.err.strip() == "alpaca-export: wrote 1 record to standard output"
    assert [
        (row["generation_id"], row["rating"])
        for row in map(json.loads, everything.out.splitlines())
    ] == [("gen-00001", "up"), ("gen-00002", None)]


def test_a_bare_export_reads_the_store_in_ALPACA_DATA_DIR(tmp_path, monkeypatch, capsys):
    data_dir = tmp_path / "container-data"
    with open_store(f"sqlite://{data_dir / 'alpaca.sqlite3'}") as store:
        store.record_generations([generation(1), generation(2)])
        store.save_rating(RatingFeedback("gen-00002", "down", flag="incorrect"))
    monkeypatch.setenv("ALPACA_DATA_DIR", str(data_dir))
    monkeypatch.delenv("ALPACA_DATABASE_URL", raising=False)

    assert main([]) == 0

    [row] = map(json.loads, capsys.readouterr().out.splitlines())
    assert (row["generation_id"], row["rating"], row["flag"]) == ("gen-00002", "down", "incorrect")


def test_a_bare_export_reads_the_store_in_ALPACA_DATABASE_URL(database_url, tmp_path, monkeypatch):
    with open_store(database_url) as store:
        store.record_generations([generation(1)])
        store.save_rating(RatingFeedback("gen-00001", "up"))
    monkeypatch.setenv("ALPACA_DATABASE_URL", database_url)
    monkeypatch.setenv("ALPACA_DATA_DIR", str(tmp_path / "unused"))
    out = tmp_path / "feedback.jsonl"

    assert main(["--out", str(out)]) == 0

    assert load_records(out) == [
        AlpacaRecord(generation(1).instruction, generation(1).input, generation(1).response)
    ]
    assert not (tmp_path / "unused").exists()


def test_an_explicit_data_dir_wins_over_ALPACA_DATABASE_URL(tmp_path, monkeypatch, capsys):
    with open_store(f"sqlite://{tmp_path / 'alpaca.sqlite3'}") as store:
        store.record_generations([generation(1)])
        store.save_rating(RatingFeedback("gen-00001", "up"))
    monkeypatch.setenv("ALPACA_DATABASE_URL", "postgresql://alpaca:s3cret@127.0.0.1:1/none")

    assert main(["--data-dir", str(tmp_path)]) == 0

    assert [json.loads(line)["generation_id"] for line in capsys.readouterr().out.splitlines()] == [
        "gen-00001"
    ]


def test_the_exports_default_store_is_the_servers(tmp_path, monkeypatch):
    monkeypatch.delenv("ALPACA_DATABASE_URL", raising=False)
    monkeypatch.delenv("ALPACA_DATA_DIR", raising=False)
    assert StoreSettings().store_url == ServerSettings().store_url

    monkeypatch.setenv("ALPACA_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("ALPACA_DATABASE_URL", "")  # as docker-compose.yml passes it when unset
    assert (
        StoreSettings().store_url
        == ServerSettings().store_url
        == (f"sqlite://{tmp_path / 'alpaca.sqlite3'}")
    )

    monkeypatch.setenv("ALPACA_DATABASE_URL", "postgresql://alpaca:secret@db:5432/alpaca")
    assert (
        StoreSettings().store_url
        == ServerSettings().store_url
        == ("postgresql://alpaca:secret@db:5432/alpaca")
    )


def run_export(capsys, *args: str) -> CommandResult:
    return run_command(main, list(args), capsys)


def test_export_reports_a_bad_database_url_in_one_line(capsys):
    result = run_export(capsys, "--database", "mysql://alpaca:s3cret@localhost/alpaca")

    assert result.returncode == 2
    assert result.stdout == ""
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("alpaca-export: error: unsupported database URL")
    assert "s3cret" not in line


def test_export_without_a_database_says_so_and_creates_nothing(tmp_path, capsys):
    data_dir = tmp_path / "never-served"

    result = run_export(capsys, "--data-dir", str(data_dir))

    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"alpaca-export: error: no database at {data_dir / 'alpaca.sqlite3'} (give --database "
        "or --data-dir, or let the server record generations first)"
    )
    assert not data_dir.exists()


def test_export_help_explains_every_option(capsys):
    result = run_export(capsys, "--help")

    assert result.returncode == 0
    for option in ("--database", "--data-dir", "--out", "--include-unrated", "postgresql://"):
        assert option in result.stdout
