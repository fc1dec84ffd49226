"""What the feedback store keeps: generation records, ratings, comparisons, and its errors.

Usage:
    from alpaca_serve.feedback.records import GenerationRecord, RatingFeedback, ComparisonFeedback
    RatingFeedback("gen-1", "up", session_id="s-42", flag="incorrect")
    ComparisonFeedback(("gen-1", "gen-2"), winner="gen-2", voter="machine")

Each class checks its own fields when built (a ValueError says which), so a bad value never
reaches the database.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, cast

# A comparison's winner is one of its two generation ids, or one of these.
COMPARISON_OUTCOMES = ("tie", "both_bad")
# Who judged a comparison: a person, or an automatic judge (a model asked which is better).
VOTERS = ("human", "machine")
# Where a generation came from: answered by this server, or imported (another model's answer,
# stored so that it can be compared and voted on).
SOURCES = ("served", "imported")


class StoreError(RuntimeError):
    """The database cannot be reached, opened or migrated; the message says why, in one line."""


class StoreFullError(StoreError):
    """The database has no room for a write: its disk is full (SQLite's "database or disk is
    full", ENOSPC, PostgreSQL's disk_full) or it reached a size limit. Nothing of that write was
    stored; reads still work, and writes work again once space is freed, without a restart."""


class UnknownGenerationError(LookupError):
    """Feedback names a generation id the store has not recorded."""


class NotShownError(PermissionError):
    """Feedback names a generation that was asked under another feedback session."""


@dataclass
class GenerationRecord:
    """One answered request, as kept for feedback and export."""

    id: str
    created_at: float  # unix seconds
    model: str
    params: dict  # the sampling parameters the request ran with
    instruction: str | None  # None when the request sent a raw prompt
    input: str
    prompt: str  # the exact text the engine received
    response: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    latency_s: float
    filter_verdicts: list[dict]
    source: str = "served"  # or "imported"
    session_id: str | None = None  # the feedback session it was shown to, if the request named one
    purged_at: float | None = None  # when retention emptied its prompt and answer (never, if None)

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}, got {self.source!r}")


@dataclass
class RatingFeedback:
    """A thumbs up or down on one generation, with optional details."""

    generation_id: str
    rating: Literal["up", "down"]
    session_id: str | None = None  # one rating per (generation, session): a later one replaces it
    comment: str | None = None
    flag: str | None = None  # a category such as "harmful" or "incorrect"
    preferred_response: str | None = None  # the answer the user would rather have read

    def __post_init__(self) -> None:
        if self.rating not in ("up", "down"):
            raise ValueError(f"rating must be 'up' or 'down', got {self.rating!r}")


@dataclass
class ComparisonFeedback:
    """A side-by-side judgement of two generations of the same instruction."""

    generation_ids: tuple[str, str]
    winner: str  # one of the two ids, "tie" or "both_bad"
    session_id: str | None = None  # one judgement per (pair, session): a later one replaces it
    voter: str = "human"  # or "machine", for an automatic judge

    def __post_init__(self) -> None:
        if self.voter not in VOTERS:
            raise ValueError(f"voter must be one of {VOTERS}, got {self.voter!r}")
        # Callers may pass a list; the length is checked below.
        self.generation_ids = cast(tuple[str, str], tuple(self.generation_ids))
        if len(self.generation_ids) != 2 or self.generation_ids[0] == self.generation_ids[1]:
            raise ValueError(
                f"a comparison needs two different generation ids, got {self.generation_ids!r}"
            )
        if self.winner not in (*self.generation_ids, *COMPARISON_OUTCOMES):
            raise ValueError(
                f"winner must be one of the two generation ids, 'tie' or 'both_bad', "
                f"got {self.winner!r}"
            )
