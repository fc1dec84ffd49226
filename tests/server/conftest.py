"""Feedback-store fixtures: every store test runs on SQLite and on PostgreSQL.

PostgreSQL comes from ALPACA_TEST_DATABASE_URL, which `make test` and `make test-fast` set from
scripts/test-deps (it starts a local PostgreSQL when none answers and prints the URL; its role
may create databases, which one test needs). Each test
gets a fresh schema of its own in that database, dropped afterwards. Without the variable the
PostgreSQL cases fail, saying how to get one: a run never passes by testing one backend only.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from alpaca_serve.feedback import FeedbackStore, open_store

TEST_DATABASE_VARIABLE = "ALPACA_TEST_DATABASE_URL"


def postgres_base_url() -> str:
    """The test PostgreSQL server's URL; fails the test, in one line, when none is configured."""
    base = os.environ.get(TEST_DATABASE_VARIABLE)
    if not base:
        pytest.fail(
            f"{TEST_DATABASE_VARIABLE} is not set: the PostgreSQL cases need a PostgreSQL server "
            f'(make test sets one up; or export {TEST_DATABASE_VARIABLE}="$(scripts/test-deps)")',
            pytrace=False,
        )
    return base


@contextmanager
def postgres_schema_url() -> Iterator[str]:
    """A URL whose connections see only a fresh, empty schema (through search_path)."""
    base = postgres_base_url()
    import psycopg

    schema = f"test_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(base, autocommit=True) as admin:
        admin.execute(f"CREATE SCHEMA {schema}")
    separator = "&" if "?" in base else "?"
    try:
        yield f"{base}{separator}options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(base, autocommit=True) as admin:
            admin.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture
def postgres_url() -> Iterator[str]:
    with postgres_schema_url() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path) -> str:
    """An empty database: a SQLite file in a folder not yet created, or a PostgreSQL schema."""
    if request.param == "sqlite":
        return f"sqlite://{tmp_path / 'data' / 'alpaca.sqlite3'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def store(database_url) -> Iterator[FeedbackStore]:
    with open_store(database_url) as opened:
        yield opened
