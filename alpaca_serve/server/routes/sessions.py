"""A session's data, for an admin: delete it (a person asked), or leave its votes out of every
count (a script stuffed them). Admin routes (server/route_roles.py), each in the audit trail.

Usage:
    curl -X DELETE localhost:8000/admin/sessions/ui-3f9a2c -H 'Authorization: Bearer ADMIN'
    curl -X POST localhost:8000/admin/sessions/ui-3f9a2c/exclude -H ... -d '{"reason": "..."}'
    curl -X DELETE localhost:8000/admin/sessions/ui-3f9a2c/exclude -H ...   # count it again
    curl localhost:8000/admin/sessions/excluded -H ...

`alpaca-export --delete-session ID` and `--exclude-session ID` do the same on a store directly.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Path, Request
from pydantic import BaseModel, ConfigDict, Field

from alpaca_serve.feedback.store import MAX_REASON_CHARS
from alpaca_serve.server.audit import audit
from alpaca_serve.server.runtime import RuntimeDep
from alpaca_serve.server.schemas import BODY_ERRORS, error_doc

router = APIRouter(prefix="/admin/sessions")

MAX_SESSION_CHARS = 128  # as POST /feedback's session_id
SessionId = Annotated[str, Path(min_length=1, max_length=MAX_SESSION_CHARS)]
ADMIN_ERRORS: dict[int | str, dict[str, Any]] = {
    403: error_doc("not an admin key (an admin route: see the operations docs)"),
    503: error_doc("the feedback store is unavailable"),
}


class VoteCounts(BaseModel):
    ratings: int
    comparisons: int


class DeletedCounts(VoteCounts):
    generations: int = Field(description="answers asked under the session, with their prompts")


class Deleted(BaseModel):
    session_id: str
    deleted: DeletedCounts = Field(description="what was removed")


class ExcludeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    reason: str | None = Field(None, max_length=MAX_REASON_CHARS, description="why, for the log")


class Excluded(BaseModel):
    session_id: str
    excluded: bool = Field(description="whether its votes are now left out")
    changed: bool = Field(description="false when it already was excluded (or was not)")
    votes: VoteCounts = Field(description="its ratings and comparisons, kept but left out")


class ExcludedSession(BaseModel):
    session_id: str
    reason: str | None
    excluded_by: str | None = Field(description="the name of the admin key that excluded it")
    created_at: float
    ratings: int
    comparisons: int


class ExcludedList(BaseModel):
    sessions: list[ExcludedSession]


@router.delete("/{session_id}", response_model=Deleted, responses=ADMIN_ERRORS)
async def delete_session(request: Request, runtime: RuntimeDep, session_id: SessionId) -> Deleted:
    """Remove everything the session stored (its ratings, with their comments, flags and
    better answers, its votes, and the answers asked under it with their prompts), in one
    transaction; how many of each."""
    assert runtime.store is not None  # opened by the lifespan before any request
    removed = await runtime.in_store(runtime.store.delete_session, session_id)
    audit(request, "sessions.delete", session_id=session_id, **removed)
    return Deleted(session_id=session_id, deleted=DeletedCounts(**removed))


@router.post(
    "/{session_id}/exclude",
    response_model=Excluded,
    responses={**BODY_ERRORS, **ADMIN_ERRORS, 422: error_doc("a field is invalid")},
)
async def exclude_session(
    request: Request,
    runtime: RuntimeDep,
    session_id: SessionId,
    body: Annotated[ExcludeRequest | None, Body()] = None,
) -> Excluded:
    """Leave the session's votes and ratings out of every summary, leaderboard, report and
    training export (they stay stored; DELETE on this path counts them again)."""
    assert runtime.store is not None  # opened by the lifespan before any request
    reason = body.reason if body is not None else None
    created, votes = await runtime.in_store(
        runtime.store.exclude_session, session_id, reason, request.state.caller.name
    )
    audit(request, "sessions.exclude", session_id=session_id, reason=reason, **votes)
    return Excluded(
        session_id=session_id, excluded=True, changed=created, votes=VoteCounts(**votes)
    )


@router.delete("/{session_id}/exclude", response_model=Excluded, responses=ADMIN_ERRORS)
async def include_session(request: Request, runtime: RuntimeDep, session_id: SessionId) -> Excluded:
    """Count the session's votes again."""
    assert runtime.store is not None  # opened by the lifespan before any request
    was_excluded = await runtime.in_store(runtime.store.include_session, session_id)
    audit(request, "sessions.include", session_id=session_id, changed=was_excluded)
    votes = await runtime.in_store(runtime.store.session_votes, session_id)
    return Excluded(
        session_id=session_id, excluded=False, changed=was_excluded, votes=VoteCounts(**votes)
    )


@router.get("/excluded", response_model=ExcludedList, responses=ADMIN_ERRORS)
async def excluded_sessions(runtime: RuntimeDep) -> ExcludedList:
    """Every excluded session, with who excluded it, why, and its votes left out."""
    assert runtime.store is not None  # opened by the lifespan before any request
    rows = await runtime.in_store(runtime.store.excluded_sessions)
    return ExcludedList(sessions=[ExcludedSession(**row) for row in rows])
