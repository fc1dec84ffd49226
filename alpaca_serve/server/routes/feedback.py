"""Feedback: `POST /feedback` (a rating, or a blind pairwise comparison by a person or an
automatic judge), `GET /feedback/summary`, `GET /feedback/comparisons` and
`GET /feedback/leaderboard` (every model's Bradley-Terry score from the votes). The three
reads leave out the votes and ratings of excluded sessions (routes/sessions.py) and say how
many they left out."""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from alpaca_serve.feedback import (
    COMPARISON_OUTCOMES,
    COMPARISON_PAGE_LIMIT,
    ComparisonFeedback,
    NotShownError,
    RatingFeedback,
    StoreError,
    UnknownGenerationError,
)
from alpaca_serve.feedback.leaderboard import DEFAULT_ROUNDS, MAX_ROUNDS, compute_leaderboard
from alpaca_serve.server.access import caller_of, client_of
from alpaca_serve.server.errors import APIError, invalid
from alpaca_serve.server.runtime import Runtime, RuntimeDep, store_error
from alpaca_serve.server.schemas import BODY_ERRORS, error_doc

router = APIRouter()

# What a person may flag an answer as.
FLAG_CATEGORIES = ("harmful", "offensive", "incorrect", "unhelpful", "privacy", "other")
MAX_COMMENT_CHARS = 2000
MAX_PREFERRED_RESPONSE_CHARS = 8000
MAX_ID_CHARS = 128


class RatingRequest(BaseModel):
    """Thumbs up or down on one answer, with an optional comment, flag and better answer."""

    model_config = ConfigDict(extra="forbid", strict=True)

    generation_id: str = Field(min_length=1, max_length=MAX_ID_CHARS)
    rating: Literal["up", "down"]
    comment: str | None = Field(None, max_length=MAX_COMMENT_CHARS)
    flag: Literal[FLAG_CATEGORIES] | None = None  # type: ignore[valid-type]
    preferred_response: str | None = Field(None, max_length=MAX_PREFERRED_RESPONSE_CHARS)
    session_id: str | None = Field(None, min_length=1, max_length=MAX_ID_CHARS)


class ComparisonRequest(BaseModel):
    """Which of two answers to the same question was better, seen side by side without names."""

    model_config = ConfigDict(extra="forbid", strict=True)

    generation_ids: list[Annotated[str, Field(min_length=1, max_length=MAX_ID_CHARS)]] = Field(
        min_length=2, max_length=2
    )
    winner: str = Field(description="one of the two ids, 'tie' or 'both_bad'")
    session_id: str | None = Field(None, min_length=1, max_length=MAX_ID_CHARS)
    voter: Literal["human", "machine"] = Field(
        "human", description="machine when an automatic judge, not a person, chose"
    )


class FeedbackSaved(BaseModel):
    id: int
    created: bool


class StoredComparison(BaseModel):
    id: int
    generation_ids: list[str] = Field(description="the two generations, sorted")
    winner: str = Field(description="one of the two ids, 'tie' or 'both_bad'")
    voter: Literal["human", "machine"]
    session_id: str | None
    created_at: float
    updated_at: float = Field(description="when the session last changed its vote")


class ComparisonPage(BaseModel):
    comparisons: list[StoredComparison]
    next_after: int | None = Field(
        description="pass as `after` for the next page; null when this page is the last"
    )
    excluded_votes: int = Field(
        description="votes of excluded sessions in the store, left out of every page"
    )
    excluded_sessions: int = Field(description="sessions excluded (GET /admin/sessions/excluded)")


class LeaderboardRow(BaseModel):
    rank: int = Field(description="1 + the models whose interval lies wholly above this one's")
    model: str
    score: float = Field(description="Bradley-Terry score on Chatbot Arena's Elo-like scale")
    lower: float | None = Field(description="95% bootstrap interval; null when rounds is 0")
    upper: float | None
    votes: int = Field(description="votes between this model and another one")
    wins: int
    losses: int
    ties: int = Field(description="ties and 'both bad' votes")


class LeaderboardResponse(BaseModel):
    voter: Literal["human", "machine"]
    rounds: int = Field(description="bootstrap rounds behind the intervals")
    seed: int
    votes: int = Field(description="votes between two different models: what the scores use")
    same_model_votes: int = Field(description="votes between two answers of one model, left out")
    groups: int = Field(description="groups of models connected by votes")
    excluded_votes: int = Field(description="this voter's votes of excluded sessions, left out")
    rows: list[LeaderboardRow] = Field(description="best score first")
    message: str | None = Field(description="why the board is empty, or a caveat")


@router.post(
    "/feedback",
    response_model=FeedbackSaved,
    status_code=201,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "oneOf": [
                            RatingRequest.model_json_schema(),
                            ComparisonRequest.model_json_schema(),
                        ],
                    }
                }
            },
        }
    },
    responses={
        **BODY_ERRORS,
        200: {"model": FeedbackSaved, "description": "an earlier rating by this session updated"},
        403: error_doc("a generation was asked under another feedback session"),
        404: error_doc("no such generation"),
        429: error_doc("past the feedback limit of this session or client (see Retry-After)"),
        422: error_doc("a field is invalid"),
        503: error_doc("the feedback store is unavailable; nothing was saved"),
        507: error_doc("the feedback store is out of space (a full disk); nothing was saved"),
    },
)
async def post_feedback(
    http: Request,
    runtime: RuntimeDep,
    payload: Annotated[dict[str, Any], Body(description="a rating or a comparison")],
    x_session_id: Annotated[str | None, Header(max_length=MAX_ID_CHARS)] = None,
):
    """Record feedback; 201 only once it is durably committed (507 when the store has no room).

    The session (`session_id`, or the `X-Session-Id` header) makes a second rating of the same
    answer update the first instead of adding one. An answer asked under a session (its
    request's X-Session-Id, as the demo asks) takes feedback from that session only (403 from
    another). Feedback is limited per session and per client (429 with Retry-After), but from
    an admin key.
    """
    feedback: ComparisonFeedback | RatingFeedback
    _check_limits(http, runtime, payload.get("session_id") or x_session_id)
    if "generation_ids" in payload:
        request = _parse(ComparisonRequest, payload)
        first, second = request.generation_ids
        if first == second:
            raise invalid("generation_ids must name two different generations", "generation_ids")
        if request.winner not in (first, second, *COMPARISON_OUTCOMES):
            raise invalid(
                f"winner must be one of the two generation ids, 'tie' or 'both_bad' "
                f"(got {request.winner!r})",
                "winner",
            )
        feedback = ComparisonFeedback(
            (first, second), request.winner, request.session_id or x_session_id, request.voter
        )
        assert runtime.store is not None  # opened by the lifespan before any request
        row_id, created = await _save(runtime, runtime.store.save_comparison, feedback)
    else:
        request = _parse(RatingRequest, payload)
        feedback = RatingFeedback(
            request.generation_id,
            request.rating,
            session_id=request.session_id or x_session_id,
            comment=request.comment,
            flag=request.flag,
            preferred_response=request.preferred_response,
        )
        assert runtime.store is not None  # opened by the lifespan before any request
        row_id, created = await _save(runtime, runtime.store.save_rating, feedback)
    runtime.metrics.count_feedback("comparison" if "generation_ids" in payload else "rating")
    body = FeedbackSaved(id=row_id, created=created).model_dump()
    return JSONResponse(body, status_code=201 if created else 200)


@router.get("/feedback/summary")
async def feedback_summary(runtime: RuntimeDep) -> dict:
    """Thumbs up/down and flags per model, and the pairwise win/tie/loss table; `excluded`:
    the excluded sessions, and their ratings and comparisons left out of both."""
    assert runtime.store is not None  # opened by the lifespan before any request
    return await runtime.in_store(runtime.store.summary)


@router.get(
    "/feedback/comparisons",
    response_model=ComparisonPage,
    responses={422: error_doc("a parameter is invalid")},
)
async def list_comparisons(
    runtime: RuntimeDep,
    after: Annotated[int, Query(ge=0, le=2**63 - 1, description="only votes with a larger id")] = 0,
    limit: Annotated[
        int, Query(ge=1, le=COMPARISON_PAGE_LIMIT, description="most votes to return")
    ] = COMPARISON_PAGE_LIMIT,
) -> ComparisonPage:
    """Every pairwise vote, by id, a page at a time (as `alpaca-eval report` reads them), but
    those of excluded sessions, which each page counts."""
    assert runtime.store is not None  # opened by the lifespan before any request
    rows = await runtime.in_store(runtime.store.list_comparisons, after, limit)
    excluded = await runtime.in_store(runtime.store.excluded_counts)
    return ComparisonPage(
        comparisons=rows,
        next_after=rows[-1]["id"] if len(rows) == limit else None,
        excluded_votes=excluded["comparisons"],
        excluded_sessions=excluded["sessions"],
    )


@router.get(
    "/feedback/leaderboard",
    response_model=LeaderboardResponse,
    responses={422: error_doc("a parameter is invalid")},
)
async def feedback_leaderboard(
    runtime: RuntimeDep,
    voter: Annotated[
        Literal["human", "machine"],
        Query(description="whose votes: people's or an automatic judge's (never mixed)"),
    ] = "human",
    rounds: Annotated[
        int, Query(ge=0, le=MAX_ROUNDS, description="bootstrap rounds for the 95% intervals")
    ] = DEFAULT_ROUNDS,
    seed: Annotated[int, Query(ge=0, le=2**32 - 1, description="seed of the bootstrap")] = 0,
) -> LeaderboardResponse:
    """Every model ranked by its Bradley-Terry score from one kind of voter's pairwise votes,
    with bootstrap 95% intervals and the vote counts (as Chatbot Arena's leaderboard); votes of
    excluded sessions are left out and counted."""
    assert runtime.store is not None  # opened by the lifespan before any request
    excluded: Counter = Counter()
    battles = await runtime.in_store(runtime.store.battles, voter, excluded)
    board = await asyncio.to_thread(
        compute_leaderboard, battles, voter, rounds, seed, excluded[voter]
    )
    return LeaderboardResponse.model_validate(board.as_dict())


def _check_limits(request: Request, runtime: Runtime, session_id: Any) -> None:
    """429 with Retry-After for a session or a client past its feedback limit (not an admin)."""
    if caller_of(request).is_admin:
        return
    session = session_id if isinstance(session_id, str) else None
    refused = runtime.feedback_limits.take(session, client_of(request))
    if refused is None:
        return
    which, wait_s = refused
    runtime.metrics.count_feedback_refused(which)
    settings = runtime.settings
    limit = (
        settings.feedback_per_session_per_minute
        if which == "session"
        else settings.feedback_per_client_per_minute
    )
    raise APIError(
        429,
        f"this {which} has given {limit} feedbacks in the last minute, this server's limit "
        f"(ALPACA_FEEDBACK_PER_{which.upper()}_PER_MINUTE); retry later",
        "rate_limited",
        headers={"Retry-After": str(max(1, math.ceil(wait_s)))},
    )


def _parse(model: type[BaseModel], payload: dict[str, Any]):
    try:
        return model.model_validate(payload)
    except ValidationError as err:
        raise RequestValidationError(
            [{**error, "loc": ("body", *error["loc"])} for error in err.errors()]
        ) from err


async def _save(runtime: Runtime, save, feedback) -> tuple[int, bool]:
    try:
        # A generation that finished a moment ago may still be waiting to be written; while the
        # store is full it stays waiting, and this raises StoreFullError (507, not 404).
        assert runtime.recorder is not None  # started by the lifespan before any request
        await runtime.recorder.flush()
        return await asyncio.to_thread(save, feedback)
    except UnknownGenerationError as err:
        param = "generation_ids" if isinstance(feedback, ComparisonFeedback) else "generation_id"
        raise APIError(404, str(err), "not_found", param) from err
    except NotShownError as err:
        param = "generation_ids" if isinstance(feedback, ComparisonFeedback) else "generation_id"
        raise APIError(403, str(err), "forbidden", param) from err
    except StoreError as err:
        raise store_error(err) from err
