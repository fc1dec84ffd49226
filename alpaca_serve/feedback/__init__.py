"""Generations and human feedback: what is kept, where, and how it gets out again.

Usage:
    from alpaca_serve.feedback import GenerationRecord, RatingFeedback, open_store
    with open_store("sqlite:///home/me/.local/share/alpaca-serve/alpaca.sqlite3") as store:
        store.record_generations([GenerationRecord(id="gen-1", ...)])
        store.save_rating(RatingFeedback("gen-1", "up"))
    python -m alpaca_serve.feedback.export --out feedback.jsonl      # or: alpaca-export

Modules, each owning one thing:
    records.py    GenerationRecord, RatingFeedback, ComparisonFeedback, the store's errors
    schema.py     the tables, as migrations, and the code that applies them
    backend.py    what a database backend provides; the transaction SQL is written through
    sqlite.py     the SQLite backend (the default: one file in the data folder)
    postgres.py   the PostgreSQL backend (several server replicas)
    store.py      FeedbackStore and open_store: every read and write, one transaction each
    recorder.py   GenerationRecorder: finished generations written in batches, off the request path
    leaderboard.py  compute_leaderboard: Bradley-Terry scores of every model from the votes
    training_data.py  sft_records, dpo_pairs: training data chosen from the feedback, with counts
    export.py     `alpaca-export`: rated generations as JSON lines (feedback, sft or dpo)
"""

from alpaca_serve.feedback.recorder import GenerationRecorder
from alpaca_serve.feedback.records import (
    COMPARISON_OUTCOMES,
    SOURCES,
    VOTERS,
    ComparisonFeedback,
    GenerationRecord,
    NotShownError,
    RatingFeedback,
    StoreError,
    StoreFullError,
    UnknownGenerationError,
)
from alpaca_serve.feedback.store import (
    COMPARISON_PAGE_LIMIT,
    DATABASE_FILENAME,
    DEFAULT_DATA_DIR,
    FeedbackStore,
    default_database_url,
    open_store,
)

__all__ = [
    "COMPARISON_OUTCOMES",
    "COMPARISON_PAGE_LIMIT",
    "DATABASE_FILENAME",
    "DEFAULT_DATA_DIR",
    "SOURCES",
    "VOTERS",
    "ComparisonFeedback",
    "FeedbackStore",
    "GenerationRecord",
    "GenerationRecorder",
    "RatingFeedback",
    "StoreError",
    "StoreFullError",
    "NotShownError",
    "UnknownGenerationError",
    "default_database_url",
    "open_store",
]
