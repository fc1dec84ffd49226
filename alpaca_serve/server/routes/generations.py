"""`POST /generations/import`: another model's answers, stored beside this server's own.

A blind comparison pits this server's answers against answers from elsewhere (for example
text-davinci-003's to the Alpaca evaluation set). Imported into the feedback store, those answers
get generation ids like served ones, so people and judges vote on them with `POST /feedback` and
`GET /feedback/summary` counts their wins. They are marked `source: imported`, under the model name
the caller gives, and nothing is generated.
"""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Body, Request
from pydantic import BaseModel, ConfigDict, Field

from alpaca_serve.core.prompts import format_prompt
from alpaca_serve.feedback import GenerationRecord
from alpaca_serve.server.audit import audit
from alpaca_serve.server.errors import invalid
from alpaca_serve.server.request_context import new_request_id
from alpaca_serve.server.runtime import RuntimeDep
from alpaca_serve.server.schemas import BODY_ERRORS, error_doc

router = APIRouter()

MAX_IMPORTED_ANSWERS = 1000  # per request
MAX_MODEL_NAME_CHARS = 128
MAX_IMPORTED_OUTPUT_CHARS = 32_000


class ImportedAnswer(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    instruction: str = Field(min_length=1, description="the instruction that was answered")
    input: str = Field("", description="its optional context")
    output: str = Field(max_length=MAX_IMPORTED_OUTPUT_CHARS, description="the answer")


class ImportRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    model: str = Field(
        min_length=1,
        max_length=MAX_MODEL_NAME_CHARS,
        description="the name the answers are stored and reported under",
    )
    answers: list[ImportedAnswer] = Field(min_length=1, max_length=MAX_IMPORTED_ANSWERS)


class ImportResponse(BaseModel):
    generation_ids: list[str] = Field(description="one per answer, in the order sent")


@router.post(
    "/generations/import",
    response_model=ImportResponse,
    status_code=201,
    responses={
        **BODY_ERRORS,
        403: error_doc("not an admin key (an admin route: see the operations docs)"),
        422: error_doc("a field is invalid"),
        503: error_doc("the feedback store is unavailable"),
        507: error_doc("the feedback store is out of space (a full disk); nothing was stored"),
    },
)
async def import_generations(
    request: Request,
    runtime: RuntimeDep,
    body: Annotated[ImportRequest, Body()],
) -> ImportResponse:
    """Store answers produced elsewhere, so that they can be compared and voted on; 201 only
    once they are durably committed."""
    limit = runtime.settings.max_prompt_chars
    for index, answer in enumerate(body.answers):
        chars = len(answer.instruction) + len(answer.input)
        if chars > limit:
            raise invalid(
                f"answers[{index}]: instruction and input together are {chars} "
                f"characters, above this server's limit of {limit}",
                "answers",
            )
    now = time.time()
    records = [
        GenerationRecord(
            id=new_request_id(),
            created_at=now,
            model=body.model,
            params={},
            instruction=answer.instruction,
            input=answer.input,
            prompt=format_prompt(answer.instruction, answer.input),
            response=answer.output,
            finish_reason="unknown",
            prompt_tokens=0,
            completion_tokens=0,
            latency_s=0.0,
            filter_verdicts=[],
            source="imported",
        )
        for answer in body.answers
    ]
    assert runtime.store is not None  # opened by the lifespan before any request
    await runtime.in_store(runtime.store.record_generations, records)
    audit(request, "generations.import", model=body.model, answers=len(records))
    return ImportResponse(generation_ids=[record.id for record in records])
