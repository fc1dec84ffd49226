"""Every error leaves the server as `{"error": {"message", "type", "param"}}`, never a traceback.

The generation path (`server/pipeline.py`) knows nothing of HTTP: its refusals and interruptions
are mapped to statuses here, in `generation_error`, for every route alike.

The OpenAI-compatible routes (`/v1/...`, and vLLM's `/tokenize` and `/detokenize`) answer as
OpenAI does: a bad request is a 400 (not our 422) of type `invalid_request_error`, and the body
always carries `code` (such as `context_length_exceeded`, or our own error type where OpenAI has
no code), so the official SDK raises `BadRequestError`. `/generate` keeps its 422s.
"""

from __future__ import annotations

import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from alpaca_serve.server.engine import EngineUnavailableError
from alpaca_serve.server.pipeline import GenerationInterrupted, Refusal


class APIError(Exception):
    """An error with its HTTP status, raised by route code and rendered by the handler below."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str,
        param: str | None = None,
        headers: dict[str, str] | None = None,
        code: str | None = None,
        **extra: Any,
    ):
        super().__init__(message)
        self.headers = headers
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.extra = extra


def invalid(message: str, param: str | None) -> APIError:
    return APIError(422, message, "invalid_request_error", param)


# A refusal's kind: its HTTP status and error type.
REFUSAL_STATUS = {
    "invalid": (422, "invalid_request_error"),
    "unknown_model": (404, "not_found"),
    "adapter_refused": (422, "adapter_refused"),
    "blocked": (400, "content_filter"),
    "overloaded": (429, "overloaded"),
    "queue_timeout": (503, "overloaded"),
    "unavailable": (503, "engine_unavailable"),
    "shutting_down": (503, "shutting_down"),
}


def generation_error(err: Exception) -> APIError:
    """The HTTP answer to a refused request, or to a generation that ended without an answer."""
    if isinstance(err, Refusal):
        status, kind = REFUSAL_STATUS[err.kind]
        headers = {"Retry-After": str(err.retry_after_s)} if err.retry_after_s else None
        extra = {"category": err.category} if err.category is not None else {}
        return APIError(
            status, err.message, kind, err.param, headers=headers, code=err.code, **extra
        )
    if isinstance(err, GenerationInterrupted):
        if err.kind == "timeout":
            return APIError(504, str(err), "timeout")
        return APIError(503, str(err), "shutting_down")
    if isinstance(err, EngineUnavailableError):
        return APIError(503, str(err), "engine_unavailable")
    raise TypeError(f"not a generation error: {err!r}")


def error_body(message: str, type: str, param: str | None = None, **extra: Any) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, **extra}}


OPENAI_PREFIX = "/v1/"
# vLLM's routes beside /v1, answered the same way.
OPENAI_PATHS = ("/tokenize", "/detokenize")
# Validation error types (pydantic's) and the codes OpenAI gives such errors.
VALIDATION_CODES = {"missing": "missing_required_parameter", "extra_forbidden": "unknown_parameter"}


def _is_openai(request: Request) -> bool:
    path = request.url.path
    return path.startswith(OPENAI_PREFIX) or path in OPENAI_PATHS


def _error_response(
    request: Request,
    status: int,
    message: str,
    type: str,
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
    counted: bool = False,
    **extra: Any,
) -> JSONResponse:
    """The error as the route's API expects it: OpenAI's shape and statuses on /v1."""
    if status == 422 and not counted:
        _count_invalid(request)
    if _is_openai(request):
        if status in (400, 415, 422) and type != "content_filter":
            code = code or (None if type == "invalid_request_error" else type)
            type = "invalid_request_error"
            status = 400 if status == 422 else status
        elif type == "content_filter":
            code = "content_filter"
        extra = {"code": code, **extra}
    body = error_body(message, type, param, **extra)
    return JSONResponse(body, status_code=status, headers=headers)


# Where FastAPI says a bad value was; the name of the parameter follows.
_LOCATIONS = ("body", "query", "path", "header", "cookie")


# The names pydantic gives a union's members in a location ("stop.constrained-str[0]"): which
# member failed is not a parameter, and the client's parameter is the field itself.
_UNION_MEMBER = re.compile(
    r"^(str|int|float|bool|list|dict|constrained-\w+|function-\w+\[.*\]|(list|dict|tuple)\[.*\])$"
)


def _param_name(loc: tuple[Any, ...]) -> str | None:
    parts = list(loc[1:] if loc and loc[0] in _LOCATIONS else loc)
    parts = [part for part in parts if not (isinstance(part, str) and _UNION_MEMBER.match(part))]
    if not parts:
        return None
    name = str(parts[0])
    for part in parts[1:]:
        name += f"[{part}]" if isinstance(part, int) else f".{part}"
    return name


def _describe(error: dict[str, Any]) -> str:
    param = _param_name(tuple(error.get("loc", ())))
    message = error.get("msg", "invalid value")
    if message.startswith("Value error, "):
        message = message[len("Value error, ") :]
    if error.get("type") == "missing":
        return f"{param} is required" if param else "the request body is missing"
    if param is None and error.get("type") in ("model_attributes_type", "model_type", "dict_type"):
        return "the request body must be a JSON object"
    if error.get("type") == "extra_forbidden":
        return f"{param} is not a known field"
    text = f"{param}: {message}" if param else message
    if "input" in error and error.get("type") not in ("model_type", "dict_type"):
        text += f" (got {_shown(error['input'])})"
    return text


SHOWN_CHARS = 120  # of a refused value echoed in an error: a 1 MB value is not sent back
SHOWN_ERRORS = 5  # problems described in one error message; the rest are counted


def _shown(value: Any) -> str:
    text = repr(value)
    if len(text) <= SHOWN_CHARS:
        return text
    return f"{text[:SHOWN_CHARS]}... ({len(text)} characters in all)"


GENERATION_PATHS = ("/generate", "/v1/completions", "/v1/chat/completions")


def _count_invalid(request: Request) -> None:
    runtime = getattr(request.app.state, "runtime", None)
    if runtime is not None and request.url.path in GENERATION_PATHS:
        runtime.metrics.count("invalid")


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = list(exc.errors())
    if any(error.get("type") == "json_invalid" for error in errors):
        _count_invalid(request)
        detail = next(e for e in errors if e.get("type") == "json_invalid")
        reason = (detail.get("ctx") or {}).get("error", "")
        message = "the request body is not valid JSON" + (f": {reason}" if reason else "")
        return _error_response(request, 400, message, "invalid_json")
    if (
        len(errors) == 1
        and tuple(errors[0].get("loc", ())) == ("body",)
        and isinstance(errors[0].get("input"), bytes)
    ):
        _count_invalid(request)
        content_type = request.headers.get("content-type", "none")
        message = f"send the body as JSON with Content-Type: application/json (got {content_type})"
        return _error_response(request, 415, message, "unsupported_media_type")
    message = "; ".join(_describe(error) for error in errors[:SHOWN_ERRORS])
    if len(errors) > SHOWN_ERRORS:
        message += f"; and {len(errors) - SHOWN_ERRORS} more"
    param = _param_name(tuple(errors[0].get("loc", ()))) if errors else None
    code = VALIDATION_CODES.get(errors[0].get("type"), "invalid_value") if errors else None
    return _error_response(request, 422, message, "invalid_request_error", param, code)


async def _api_error(request: Request, exc: APIError, counted: bool = False) -> JSONResponse:
    return _error_response(
        request,
        exc.status,
        exc.message,
        exc.type,
        exc.param,
        exc.code,
        exc.headers,
        counted,
        **exc.extra,
    )


async def _generation_error(request: Request, exc: Exception) -> JSONResponse:
    # A generation refused by the engine once it had started has counted itself already.
    counted = isinstance(exc, Refusal) and exc.counted
    return await _api_error(request, generation_error(exc), counted)


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    if exc.status_code == 400 and exc.detail == "There was an error parsing the body":
        # FastAPI's words for a body it could not decode, such as one that is not UTF-8.
        _count_invalid(request)
        message = "the request body could not be read as JSON text (it must be UTF-8)"
        return _error_response(request, 400, message, "invalid_json")
    kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return JSONResponse(
        error_body(str(exc.detail), kind), status_code=exc.status_code, headers=exc.headers
    )


def install_error_handlers(app: FastAPI) -> None:
    # Starlette types every handler as taking any Exception, not the class it is registered for.
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(APIError, _api_error)  # type: ignore[arg-type]
    for kind in (Refusal, GenerationInterrupted, EngineUnavailableError):
        app.add_exception_handler(kind, _generation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)  # type: ignore[arg-type]
