"""Liveness, readiness, server information and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from alpaca_serve.core.provenance import read_provenance, unknown_provenance
from alpaca_serve.server import __version__
from alpaca_serve.server.access import is_admin, without_admin_details
from alpaca_serve.server.engine import EngineUnavailableError
from alpaca_serve.server.errors import error_body
from alpaca_serve.server.runtime import OUT_OF_SPACE, Runtime, RuntimeDep
from alpaca_serve.server.schemas import DEFAULT_TEMPERATURE, DEFAULT_TOP_K, DEFAULT_TOP_P

router = APIRouter()


@router.get("/health")
async def health() -> dict:
    """Liveness: the process is up and serving HTTP, whatever the engine's state."""
    return {"status": "ok"}


@router.get("/ready")
async def ready(runtime: RuntimeDep):
    """Readiness: 200 once the engine has loaded and answered a warm-up; 503 before and after.
    While the feedback store has no room to write, still 200 (answers go on) with
    `"status": "degraded"` and why under `store`."""
    if runtime.draining:
        return JSONResponse(error_body("the server is shutting down", "shutting_down"), 503)
    if runtime.load_error:
        body = error_body(f"the model failed to load: {runtime.load_error}", "engine_unavailable")
        return JSONResponse(body, status_code=503)
    if runtime.engine is None or not runtime.ready:
        return JSONResponse(error_body("the model is loading", "engine_unavailable"), 503)
    try:
        await runtime.engine.check_health()
    except EngineUnavailableError as err:
        return JSONResponse(error_body(str(err), "engine_unavailable"), status_code=503)
    if runtime.store is not None and runtime.store.out_of_space is not None:
        return {"status": "degraded", "model": runtime.engine.model_name, "store": OUT_OF_SPACE}
    return {"status": "ready", "model": runtime.engine.model_name}


@router.get("/info")
async def info(request: Request, runtime: RuntimeDep) -> dict:
    """The model, where it came from and its prompt template, its limits and the request
    defaults. Folder paths and training arguments only for an admin (server/access.py)."""
    body = _info(runtime)
    return body if is_admin(request) else without_admin_details(body)


def _info(runtime: Runtime) -> dict:
    settings, engine = runtime.settings, runtime.engine
    model_dir = runtime.model_dir or settings.model  # None until the default model is converted
    provenance = read_provenance(model_dir) if model_dir is not None else unknown_provenance()
    base = {
        "name": engine.model_name if engine else settings.served_model_name,
        "kind": "base",
        "path": str(model_dir) if model_dir is not None else None,
        "loaded_at": runtime.loaded_at,
        "prompt_template": provenance.prompt_template,
        "provenance": provenance.as_json(),
    }
    adapters = runtime.adapters.describe() if runtime.adapters is not None else {}
    return {
        "model": engine.model_name if engine else settings.served_model_name,
        "version": __version__,
        "ready": runtime.ready and engine is not None and engine.alive,
        "device": engine.device if engine else None,
        "dtype": engine.dtype if engine else None,
        "prompt_template": provenance.prompt_template,
        "provenance": provenance.as_json(),
        "limits": {
            "max_model_len": engine.max_model_len if engine else settings.max_model_len,
            "max_new_tokens_limit": settings.max_new_tokens_limit,
            "max_prompt_chars": settings.max_prompt_chars,
            # choices (OpenAI's n) one request may ask for: each takes a generation slot
            "max_choices": min(settings.max_choices, settings.max_concurrent),
        },
        "defaults": {
            "max_new_tokens": settings.default_max_new_tokens,
            "temperature": DEFAULT_TEMPERATURE,
            "top_p": DEFAULT_TOP_P,
            "top_k": DEFAULT_TOP_K,
            "repetition_penalty": 1.0,
        },
        # Every model a request may name (`model`): the base, then each served LoRA adapter.
        "models": [base, *adapters.get("adapters", [])],
        "refused_adapters": adapters.get("refused_adapters", []),
    }


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {
            "content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}},
            "description": "Prometheus text exposition format",
        }
    },
)
async def metrics(runtime: RuntimeDep) -> Response:
    return Response(runtime.metrics.render(runtime.refresh_gauges), media_type=CONTENT_TYPE_LATEST)
