"""The feedback store keeps generations and feedback durably, on SQLite and PostgreSQL alike."""

from __future__ import annotations

import sqlite3
import threading
import uuid
from urllib.parse import urlsplit, urlunsplit

import pytest

from alpaca_serve.feedback import (
    ComparisonFeedback,
    GenerationRecord,
    RatingFeedback,
    StoreError,
    UnknownGenerationError,
    open_store,
)
from alpaca_serve.feedback.schema import MIGRATIONS
from tests.server.conftest import postgres_base_url


def make_generation(
    id: str,
    model: str = "alpaca-7b",
    instruction: str | None = "Name a primary colour.",
    created_at: float = 1_700_000_000.0,
    **fields,
) -> GenerationRecord:
    values = {
        "id": id,
        "created_at": created_at,
        "model": model,
        "params": {"temperature": 0.1, "top_p": 0.75, "max_new_tokens": 256, "stop": []},
        "instruction": instruction,
        "input": "",
        "prompt": f"### Instruction:\n{instruction}\n\n### Response:",
        "response": f"Red ({id}).",
        "finish_reason": "eos",
        "prompt_tokens": 36,
        "completion_tokens": 4,
        "latency_s": 0.25,
        "filter_verdicts": [],
    }
    return GenerationRecord(**{**values, **fields})


def export_by_id(store, include_unrated: bool = True) -> dict[str, list[dict]]:
    rows: dict[str, list[dict]] = {}
    for row in store.export_rows(include_unrated=include_unrated):
        rows.setdefault(row["generation_id"], []).append(row)
    return rows


def test_recorded_generations_come_back_in_the_export_field_for_field(store):
    records = [
        make_generation("gen-1", created_at=1_700_000_000.125),
        make_generation(
            "gen-2",
            model="smollm2",
            instruction="Translate to French.",
            created_at=1_700_000_001.5,
            input="Good morning — ☀️",
            prompt="exact prompt text\n",
            response="Bonjour",
            finish_reason="length",
            prompt_tokens=50,
            completion_tokens=2,
            latency_s=1.75,
            params={"temperature": 0.7, "seed": 3, "stop": ["\n\n"]},
            filter_verdicts=[{"filter": "keywords", "action": "allow", "score": 0.5}],
        ),
    ]
    store.record_generations(records)

    rows = list(store.export_rows(include_unrated=True))

    assert len(rows) == 2
    for row, record in zip(rows, records, strict=True):
        assert row == {
            "instruction": record.instruction,
            "input": record.input,
            "output": record.response,
            "rating": None,
            "comment": None,
            "flag": None,
            "preferred_response": None,
            "generation_id": record.id,
            "model": record.model,
            "source": "served",
            "created_at": record.created_at,
            "finish_reason": record.finish_reason,
            "prompt": record.prompt,
            "params": record.params,
            "filter_verdicts": record.filter_verdicts,
            "prompt_tokens": record.prompt_tokens,
            "completion_tokens": record.completion_tokens,
            "latency_s": record.latency_s,
        }
    assert store.generation_exists(["gen-1", "gen-2", "gen-unknown"]) == {"gen-1", "gen-2"}


def test_recording_an_id_twice_keeps_the_first_record_and_the_rest_of_the_batch(store):
    store.record_generations([make_generation("gen-1", response="first")])

    store.record_generations(
        [make_generation("gen-1", response="second"), make_generation("gen-2")]
    )

    rows = export_by_id(store)
    assert [row["output"] for row in rows["gen-1"]] == ["first"]
    assert "gen-2" in rows


def test_a_second_rating_from_the_same_session_replaces_the_first(store):
    store.record_generations([make_generation("gen-1")])

    first_id, first_created = store.save_rating(
        RatingFeedback("gen-1", "up", session_id="session-a", comment="nice")
    )
    second_id, second_created = store.save_rating(
        RatingFeedback("gen-1", "down", session_id="session-a", flag="incorrect")
    )

    assert (first_created, second_created) == (True, False)
    assert second_id == first_id
    assert store.summary()["models"] == {
        "alpaca-7b": {"up": 0, "down": 1, "flags": {"incorrect": 1}}
    }
    [row] = export_by_id(store)["gen-1"]
    assert (row["rating"], row["comment"], row["flag"]) == ("down", None, "incorrect")


def test_ratings_without_a_session_each_add_a_row_and_other_sessions_count_separately(store):
    store.record_generations([make_generation("gen-1")])

    results = [
        store.save_rating(RatingFeedback("gen-1", "up")),
        store.save_rating(RatingFeedback("gen-1", "up")),
        store.save_rating(RatingFeedback("gen-1", "down", session_id="session-a")),
        store.save_rating(RatingFeedback("gen-1", "down", session_id="session-b")),
    ]

    assert all(created for _, created in results)
    assert len({row_id for row_id, _ in results}) == 4
    assert store.summary()["models"]["alpaca-7b"] == {"up": 2, "down": 2, "flags": {}}


def test_a_second_comparison_from_the_same_session_replaces_the_first_in_either_order(store):
    store.record_generations(
        [make_generation("gen-a", model="m1"), make_generation("gen-b", model="m2")]
    )

    first_id, first_created = store.save_comparison(
        ComparisonFeedback(("gen-a", "gen-b"), winner="gen-a", session_id="session-a")
    )
    second_id, second_created = store.save_comparison(
        ComparisonFeedback(("gen-b", "gen-a"), winner="gen-b", session_id="session-a")
    )
    _, anonymous_created = store.save_comparison(ComparisonFeedback(("gen-a", "gen-b"), "tie"))
    _, again_created = store.save_comparison(ComparisonFeedback(("gen-a", "gen-b"), "tie"))

    assert (first_created, second_created, anonymous_created, again_created) == (
        True,
        False,
        True,
        True,
    )
    assert second_id == first_id
    assert store.summary()["pairwise"] == [
        {"model_a": "m1", "model_b": "m2", "wins_a": 0, "wins_b": 1, "ties": 2, "both_bad": 0}
    ]


def test_summary_counts_ratings_flags_and_pairwise_wins_per_model(store):
    store.record_generations(
        [
            make_generation("zeta-1", model="zeta"),
            make_generation("zeta-2", model="zeta"),
            make_generation("beta-1", model="beta"),
            make_generation("beta-2", model="beta"),
            make_generation("beta-3", model="beta"),
        ]
    )
    for generation_id, rating, flag in [
        ("zeta-1", "up", None),
        ("zeta-2", "up", None),
        ("zeta-2", "down", "incorrect"),
        ("beta-1", "down", "harmful"),
        ("beta-2", "down", "incorrect"),
    ]:
        store.save_rating(RatingFeedback(generation_id, rating, flag=flag))
    # The first id is zeta's, but beta sorts first: zeta's wins must count as model_b's.
    for pair, winner in [
        (("zeta-1", "beta-1"), "zeta-1"),
        (("zeta-1", "beta-2"), "zeta-1"),
        (("zeta-2", "beta-1"), "beta-1"),
        (("zeta-2", "beta-2"), "tie"),
        (("beta-3", "zeta-2"), "both_bad"),
        (("beta-1", "beta-2"), "beta-2"),
    ]:
        store.save_comparison(ComparisonFeedback(pair, winner))

    assert store.summary() == {
        "models": {
            "beta": {"up": 0, "down": 2, "flags": {"harmful": 1, "incorrect": 1}},
            "zeta": {"up": 2, "down": 1, "flags": {"incorrect": 1}},
        },
        "pairwise": [
            {
                "model_a": "beta",
                "model_b": "beta",
                "wins_a": 0,
                "wins_b": 1,
                "ties": 0,
                "both_bad": 0,
            },
            {
                "model_a": "beta",
                "model_b": "zeta",
                "wins_a": 1,
                "wins_b": 2,
                "ties": 1,
                "both_bad": 1,
            },
        ],
        "pairwise_machine": [],
        "excluded": {"sessions": 0, "ratings": 0, "comparisons": 0},
    }


def test_machine_votes_are_kept_apart_from_people_and_listed_with_their_voter(store):
    store.record_generations(
        [
            make_generation("ours-1", model="ours"),
            make_generation("theirs-1", model="davinci", source="imported"),
        ]
    )
    pair = ("ours-1", "theirs-1")
    human_id, _ = store.save_comparison(ComparisonFeedback(pair, "ours-1", "alice"))
    machine_id, _ = store.save_comparison(
        ComparisonFeedback(pair, "theirs-1", "judge-x", voter="machine")
    )

    summary = store.summary()
    listed = store.list_comparisons()

    assert summary["pairwise"] == [
        {
            "model_a": "davinci",
            "model_b": "ours",
            "wins_a": 0,
            "wins_b": 1,
            "ties": 0,
            "both_bad": 0,
        }
    ]
    assert summary["pairwise_machine"] == [
        {
            "model_a": "davinci",
            "model_b": "ours",
            "wins_a": 1,
            "wins_b": 0,
            "ties": 0,
            "both_bad": 0,
        }
    ]
    assert [
        (c["id"], c["generation_ids"], c["winner"], c["voter"], c["session_id"]) for c in listed
    ] == [
        (human_id, ["ours-1", "theirs-1"], "ours-1", "human", "alice"),
        (machine_id, ["ours-1", "theirs-1"], "theirs-1", "machine", "judge-x"),
    ]
    assert [row["source"] for row in store.export_rows(include_unrated=True)] == [
        "served",
        "imported",
    ]
    with pytest.raises(ValueError, match="voter"):
        ComparisonFeedback(pair, "tie", voter="robot")


def test_listing_comparisons_in_pages_reads_each_vote_once_even_after_a_change(store):
    store.record_generations([make_generation(f"gen-{n}") for n in range(6)])
    for n in range(5):
        store.save_comparison(ComparisonFeedback((f"gen-{n}", f"gen-{n + 1}"), "tie", "s"))

    first_page = store.list_comparisons(after=0, limit=2)
    store.save_comparison(ComparisonFeedback(("gen-1", "gen-0"), "gen-0", "s"))  # a change
    rest = []
    after = first_page[-1]["id"]
    while page := store.list_comparisons(after=after, limit=2):
        rest += page
        after = page[-1]["id"]

    seen = first_page + rest
    assert len(seen) == 5 and len({c["id"] for c in seen}) == 5
    assert [c["winner"] for c in store.list_comparisons()][0] == "gen-0"
    with pytest.raises(ValueError, match="limit"):
        store.list_comparisons(limit=0)


def test_a_database_of_the_first_schema_is_migrated_keeping_its_rows(tmp_path):
    path = tmp_path / "old.sqlite3"
    with sqlite3.connect(path) as old:  # what the first release created
        old.execute(
            "CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_at REAL NOT NULL)"
        )
        types = {"id": "INTEGER PRIMARY KEY AUTOINCREMENT", "real": "REAL", "json": "TEXT"}
        for statement in MIGRATIONS[0]:
            old.execute(statement.format(**types))
        old.execute("INSERT INTO schema_version VALUES (1, 0)")
        old.execute(
            "INSERT INTO generations VALUES ('gen-a', 1, 'm', '{}', 'Hi', '', 'p', "
            "'Hello', 'eos', 1, 1, 0.1, '[]')"
        )
        old.execute(
            "INSERT INTO generations VALUES ('gen-b', 2, 'm', '{}', 'Hi', '', 'p', "
            "'Hey', 'eos', 1, 1, 0.1, '[]')"
        )
        old.execute(
            "INSERT INTO comparisons (generation_a, generation_b, winner, session_id, "
            "created_at, updated_at) VALUES ('gen-a', 'gen-b', 'gen-a', 's', 1, 1)"
        )

    with open_store(f"sqlite://{path}") as store:
        [vote] = store.list_comparisons()
        rows = list(store.export_rows(include_unrated=True))

    assert (vote["winner"], vote["voter"]) == ("gen-a", "human")
    assert [(r["generation_id"], r["source"]) for r in rows] == [
        ("gen-a", "served"),
        ("gen-b", "served"),
    ]


def test_export_joins_each_rating_and_skips_raw_prompt_generations(store):
    store.record_generations(
        [
            make_generation("gen-rated", created_at=1.0),
            make_generation("gen-unrated", created_at=2.0),
            make_generation("gen-raw", instruction=None, created_at=3.0, prompt="Once upon a time"),
        ]
    )
    store.save_rating(RatingFeedback("gen-rated", "up", comment="clear"))
    store.save_rating(RatingFeedback("gen-rated", "down", preferred_response="Blue."))
    store.save_rating(RatingFeedback("gen-raw", "up"))

    rated = list(store.export_rows())
    everything = list(store.export_rows(include_unrated=True))

    assert [(r["generation_id"], r["rating"]) for r in rated] == [
        ("gen-rated", "up"),
        ("gen-rated", "down"),
    ]
    assert rated[0]["comment"] == "clear"
    assert rated[1]["preferred_response"] == "Blue."
    assert [(r["generation_id"], r["rating"]) for r in everything] == [
        ("gen-rated", "up"),
        ("gen-rated", "down"),
        ("gen-unrated", None),
    ]


def test_feedback_on_an_unknown_generation_is_refused_and_stores_nothing(store):
    store.record_generations([make_generation("gen-1")])

    with pytest.raises(UnknownGenerationError, match="gen-missing"):
        store.save_rating(RatingFeedback("gen-missing", "up"))
    with pytest.raises(UnknownGenerationError, match="gen-missing"):
        store.save_comparison(ComparisonFeedback(("gen-1", "gen-missing"), "tie"))

    assert store.summary() == {
        "models": {},
        "pairwise": [],
        "pairwise_machine": [],
        "excluded": {"sessions": 0, "ratings": 0, "comparisons": 0},
    }


def test_nul_characters_in_user_text_are_stored_on_every_backend(store):
    store.record_generations(
        [make_generation("gen-1", instruction="a\x00b", params={"stop": ["\x00"]}, response="ok")]
    )
    store.save_rating(RatingFeedback("gen-1", "down", comment="bad\x00"))

    [row] = store.export_rows()
    assert (row["instruction"], row["params"]["stop"], row["comment"]) == (
        "a\ufffdb",
        ["\ufffd"],
        "bad\ufffd",
    )


def test_two_stores_open_on_one_database_migrate_once_and_share_data(database_url):
    with open_store(database_url) as first, open_store(database_url) as second:
        first.record_generations([make_generation("gen-1")])
        second.save_rating(RatingFeedback("gen-1", "up", session_id="s"))

        assert second.generation_exists(["gen-1"]) == {"gen-1"}
        assert first.summary()["models"]["alpaca-7b"]["up"] == 1


def test_data_survives_closing_and_reopening_the_store(database_url):
    with open_store(database_url) as store:
        store.record_generations(
            [make_generation("gen-1", model="a"), make_generation("gen-2", model="b")]
        )
        store.save_rating(RatingFeedback("gen-1", "up", session_id="s", flag="great"))
        store.save_comparison(ComparisonFeedback(("gen-1", "gen-2"), "gen-2", session_id="s"))
        before = store.summary()

    with open_store(database_url) as reopened:
        assert reopened.summary() == before
        # The upsert keys survived too: the same session still updates instead of adding.
        assert reopened.save_rating(RatingFeedback("gen-1", "down", session_id="s"))[1] is False


def test_a_closed_store_says_so(store):
    store.close()
    store.close()

    with pytest.raises(StoreError, match="closed"):
        store.generation_exists(["gen-1"])


def test_a_store_that_cannot_be_used_is_a_503_for_the_routes(store):
    import asyncio

    from alpaca_serve.server.errors import APIError
    from alpaca_serve.server.metrics import ServerMetrics
    from alpaca_serve.server.runtime import Runtime
    from alpaca_serve.server.settings import ServerSettings

    runtime = Runtime(ServerSettings(), ServerMetrics("m"), store=store)
    store.close()

    for call, args in [
        (store.summary, ()),
        (store.list_comparisons, (0, 10)),
        (store.record_generations, ([make_generation("gen-1")],)),
    ]:
        with pytest.raises(APIError) as raised:
            asyncio.run(runtime.in_store(call, *args))
        assert (raised.value.status, raised.value.type) == (503, "feedback_store_unavailable")
        # Why goes to the log; the client learns nothing of the database (its name, its host).
        assert str(raised.value) == "the feedback store is unavailable; retry shortly"


def test_ratings_saved_from_eight_threads_at_once_all_land(store):
    store.record_generations([make_generation(f"gen-{i}") for i in range(4)])
    ids: list[int] = []
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def rate(thread: int) -> None:
        try:
            start.wait()
            for n in range(25):
                row_id, created = store.save_rating(
                    RatingFeedback(
                        f"gen-{n % 4}", "up" if n % 2 else "down", session_id=f"t{thread}-{n}"
                    )
                )
                assert created
                ids.append(row_id)
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=rate, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert len(set(ids)) == 200
    assert store.summary()["models"]["alpaca-7b"] == {"up": 96, "down": 104, "flags": {}}


def test_sqlite_store_uses_wal_with_full_synchronous_commits_and_foreign_keys(tmp_path):
    path = tmp_path / "not" / "yet" / "there" / "alpaca.sqlite3"
    with open_store(f"sqlite://{path}") as store:
        store.record_generations([make_generation("gen-1")])
        # synchronous and foreign_keys are per connection: ask the store's own connection.
        connection = store._conn
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert connection.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert connection.execute("PRAGMA foreign_keys").fetchone()[0] == 1

    with sqlite3.connect(path) as other:  # WAL is a property of the file
        assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert other.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] == len(
            MIGRATIONS
        )


def test_a_database_written_by_a_newer_version_is_refused(tmp_path):
    path = tmp_path / "alpaca.sqlite3"
    open_store(f"sqlite://{path}").close()
    with sqlite3.connect(path) as newer:
        newer.execute("INSERT INTO schema_version (version, applied_at) VALUES (999, 0)")

    with pytest.raises(StoreError, match="schema version 999, newer than"):
        open_store(f"sqlite://{path}")


def test_a_file_that_is_not_a_database_is_refused_in_one_line(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("x" * 4096)

    with pytest.raises(StoreError) as raised:
        open_store(f"sqlite://{path}")

    assert str(path) in str(raised.value)
    assert "\n" not in str(raised.value)


def test_postgres_store_reconnects_after_its_connection_is_dropped(postgres_url):
    import psycopg

    with open_store(postgres_url) as store:
        store.record_generations([make_generation("gen-1")])
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (store._conn.info.backend_pid,))

        with pytest.raises(psycopg.OperationalError):
            store.generation_exists(["gen-1"])  # the call that finds the connection gone
        assert store.generation_exists(["gen-1"]) == {"gen-1"}


def test_a_postgres_database_without_an_encoding_stores_and_finds_text_as_text():
    """A database created as SQL_ASCII (what initdb makes where no UTF-8 locale is set, as in a
    bare Debian image) hands psycopg bytes, not text, unless the store asks for UTF-8: then ids
    never matched and every rating of a recorded generation was a 404."""
    import psycopg

    base = postgres_base_url()
    name = f"test_ascii_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(base, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name} ENCODING 'SQL_ASCII' LOCALE 'C' TEMPLATE template0")
    try:
        url = urlunsplit(urlsplit(base)._replace(path=f"/{name}"))
        with open_store(url) as store:
            store.record_generations(
                [make_generation("gen-1", instruction="Où est Tōkyō? 東京", response="Au Japon.")]
            )
            assert store.generation_exists(["gen-1"]) == {"gen-1"}
            store.save_rating(RatingFeedback("gen-1", "up", comment="très bien"))

            [row] = store.export_rows()
        assert (row["generation_id"], row["instruction"], row["comment"]) == (
            "gen-1",
            "Où est Tōkyō? 東京",
            "très bien",
        )
    finally:
        with psycopg.connect(base, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE {name} WITH (FORCE)")


@pytest.mark.parametrize(
    "url",
    [
        "mysql://alpaca:s3cret@localhost/alpaca",
        "alpaca.sqlite3",
        "sqlite://relative/alpaca.sqlite3",
        "sqlite:///data/",
    ],
)
def test_unsupported_database_urls_are_refused_in_one_line_without_the_password(url):
    with pytest.raises(ValueError) as raised:
        open_store(url)

    message = str(raised.value)
    assert "\n" not in message
    assert "sqlite:///" in message
    assert "s3cret" not in message


@pytest.mark.parametrize(
    ("build", "fragment"),
    [
        (lambda: RatingFeedback("gen-1", "meh"), "rating must be 'up' or 'down'"),
        (lambda: ComparisonFeedback(("gen-1", "gen-1"), "tie"), "two different generation ids"),
        (lambda: ComparisonFeedback(("gen-1", "gen-2"), "gen-3"), "winner must be one of"),
    ],
)
def test_feedback_with_impossible_values_is_refused_before_it_reaches_the_store(build, fragment):
    with pytest.raises(ValueError, match=fragment):
        build()


def test_a_database_url_in_a_message_shows_no_password_in_userinfo_or_query():
    from alpaca_serve.feedback.backend import redact

    url = "postgresql://ann:s3cret@db:5432/alpaca?password=s3cret&sslmode=require"
    assert redact(url) == "postgresql://ann:***@db:5432/alpaca?password=***&sslmode=***"
    assert "s3cret" not in redact("postgresql://db/alpaca?user=ann&password=s3cret#x")


def test_a_new_sqlite_store_is_readable_by_its_owner_only(tmp_path):
    path = tmp_path / "data" / "alpaca.sqlite3"
    with open_store(f"sqlite://{path}") as store:
        store.record_generations([make_generation("gen-1")])
        files = [p for p in path.parent.iterdir() if p.name.startswith(path.name)]
        assert {p.name for p in files} >= {"alpaca.sqlite3", "alpaca.sqlite3-wal"}
        for file in files:
            assert file.stat().st_mode & 0o777 == 0o600, file
