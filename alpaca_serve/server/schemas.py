"""Request and response bodies of the HTTP API."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

# Sampling defaults for an instruction-following model, as alpaca-lora's demo used them:
# nearly greedy (temperature 0.1, top_p 0.75, top_k 40), no repetition penalty.
DEFAULT_TEMPERATURE = 0.1
DEFAULT_TOP_P = 0.75
DEFAULT_TOP_K = 40
MAX_STOP_SEQUENCES = 8
MAX_STOP_CHARS = 256  # of one stop string: longer ones are refused, not stored
MAX_LOGPROBS = 20  # alternatives per token, as vLLM's default max_logprobs


class GenerateRequest(BaseModel):
    """`POST /generate`. Give `instruction` (and optionally `input`), or a raw `prompt`."""

    model_config = ConfigDict(extra="forbid", strict=True)

    instruction: str | None = Field(
        None, description="what the model should do; formatted with the Alpaca template"
    )
    input: str = Field(
        "", description="optional context; the with-input template is used when it is non-empty"
    )
    prompt: str | None = Field(
        None, description="a prompt the caller formatted itself, sent to the model as it is"
    )
    max_new_tokens: int | None = Field(
        None, ge=1, description="most tokens to generate (default: the server's setting)"
    )
    temperature: float = Field(
        DEFAULT_TEMPERATURE, ge=0.0, le=2.0, description="0 picks the most likely token"
    )
    top_p: float = Field(DEFAULT_TOP_P, gt=0.0, le=1.0, description="nucleus sampling mass")
    top_k: int = Field(DEFAULT_TOP_K, ge=0, description="sample among the k likeliest; 0: all")
    repetition_penalty: float = Field(
        1.0, gt=0.0, le=2.0, description="above 1 discourages repeating tokens"
    )
    stop: list[str] = Field(
        default_factory=list,
        max_length=MAX_STOP_SEQUENCES,
        description=f"generation ends before any of these strings (at most {MAX_STOP_CHARS} "
        "characters each); they are not returned",
    )
    presence_penalty: float = Field(
        0.0, ge=-2.0, le=2.0, description="above 0 discourages any token already in the answer"
    )
    frequency_penalty: float = Field(
        0.0, ge=-2.0, le=2.0, description="above 0 discourages tokens by how often they appeared"
    )
    min_tokens: int = Field(
        0, ge=0, description="the end of sequence and stop strings are ignored before this many"
    )
    seed: int | None = Field(None, ge=0, le=2**63 - 1, description="makes sampling reproducible")
    logprobs: int | None = Field(
        None,
        ge=0,
        le=MAX_LOGPROBS,
        description="return each generated token's log-probability and the k likeliest tokens "
        "at its place (0: the token's own only)",
    )
    json_schema: dict[str, Any] | None = Field(
        None,
        description="the answer is JSON valid against this JSON schema (structured output)",
    )
    json_object: bool = Field(False, description="the answer is a JSON object")
    stream: bool = Field(False, description="send server-sent events as the text is generated")
    model: str | None = Field(
        None,
        description="the model to answer: the base model's name or a served LoRA adapter's "
        "(GET /v1/models lists them); default: the base",
    )

    @field_validator("stop")
    @classmethod
    def _stop_strings_are_not_empty(cls, value: list[str]) -> list[str]:
        for index, item in enumerate(value):
            if not item:
                raise ValueError(f"stop[{index}] is empty; every stop string needs a character")
            if len(item) > MAX_STOP_CHARS:
                raise ValueError(
                    f"stop[{index}] is {len(item)} characters, above the limit of {MAX_STOP_CHARS}"
                )
        return value


class TopLogprob(BaseModel):
    token: str
    logprob: float


class TokenLogprobInfo(BaseModel):
    """One generated token: its text, log-probability and the likeliest tokens at its place."""

    token: str
    logprob: float
    top_logprobs: list[TopLogprob]


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int


FinishReason = Literal["stop", "length", "eos", "content_filter"]


class FilterBlock(BaseModel):
    """Why a content filter cut the answer."""

    category: str
    reason: str


class GenerateResponse(BaseModel):
    id: str
    model: str
    text: str
    finish_reason: FinishReason
    usage: Usage
    filter: FilterBlock | None = Field(
        None, description="set when finish_reason is content_filter: what the filter found"
    )
    logprobs: list[TokenLogprobInfo] | None = Field(
        None, description="with `logprobs` in the request: one entry per generated token"
    )


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = Field(None, description="on /v1 routes: a machine-readable reason")
    category: str | None = Field(None, description="with type content_filter: what was found")


class ErrorResponse(BaseModel):
    error: ErrorDetail


def error_doc(description: str) -> dict[str, Any]:
    """One documented error answer of a route, for FastAPI's `responses`."""
    return {"model": ErrorResponse, "description": description}


# What any route with a JSON body may answer before it looks at the fields.
BODY_ERRORS: dict[int | str, dict[str, Any]] = {
    400: error_doc("the body is not valid JSON"),
    413: error_doc("the body is over the size limit"),
    415: error_doc("the body was not sent as JSON"),
}

# What the generation routes (/generate and the /v1 routes) may answer.
GENERATION_RESPONSES: dict[int | str, dict[str, Any]] = {
    **BODY_ERRORS,
    200: {
        "description": "the answer; with `stream: true`, server-sent events instead",
        # One `data: {json}` event per piece, then `data: [DONE]` (see docs/api.md).
        "content": {"text/event-stream": {}},
    },
    400: error_doc("the body is not valid JSON, or a content filter refused it"),
    404: error_doc("no model of that name is served"),
    422: error_doc("a parameter is invalid, or the adapter named was refused"),
    429: error_doc("at capacity; see Retry-After"),
    503: error_doc("the model is loading or the engine died"),
    504: error_doc("the request ran past the time limit"),
}
