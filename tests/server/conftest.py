"""Feedback-store fixtures: every store test runs on SQLite and on PostgreSQL.

PostgreSQL comes from ALPACA_TEST_DATABASE_URL (`bash .ci/postgres-up` starts one and prints
the URL; `.ci/run` does this before the suite). Each test gets a fresh schema of its own in that
database, dropped afterwards. Without the variable the PostgreSQL cases are skipped, except under
CI (the CI variable set), where they fail: CI must not pass by testing one backend only.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from server.feedback import FeedbackStore, open_store

TEST_DATABASE_VARIABLE = "ALPACA_TEST_DATABASE_URL"


def postgres_base_url() -> str:
    """The test PostgreSQL server's URL; skips (fails under CI) when none is configured."""
    base = os.environ.get(TEST_DATABASE_VARIABLE)
    if not base:
        message = (
            f"set {TEST_DATABASE_VARIABLE} to a PostgreSQL URL to run the PostgreSQL cases "
            f'(export {TEST_DATABASE_VARIABLE}="$(bash .ci/postgres-up | tail -n 1)")'
        )
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
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
