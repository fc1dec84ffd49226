"""`POST /admin/adapters/reload`: rescan the adapters now, instead of at the watcher's next scan.

Usage:
    curl -X POST localhost:8000/admin/adapters/reload -H 'Authorization: Bearer KEY'

New and changed adapter folders are taken up at once (calling it says the copy is done; the
watcher itself waits until two scans see the same files), removed ones stop being offered. The
answer lists the served and refused adapters, as /info does. An admin route
(server/route_roles.py): with keys configured it needs an admin key; with none it answers only
clients on this machine (loopback), so that an open server cannot be made to load files by
anyone who reaches it (behind a proxy on the same machine, that is everyone: set keys).
"""

from __future__ import annotations

from fastapi import APIRouter, Request

from alpaca_serve.server.audit import audit
from alpaca_serve.server.errors import APIError
from alpaca_serve.server.runtime import RuntimeDep
from alpaca_serve.server.schemas import error_doc

router = APIRouter(prefix="/admin")


@router.post(
    "/adapters/reload",
    responses={
        403: error_doc("not an admin key, or no keys configured and the client is elsewhere"),
        404: error_doc("this server serves no adapters (none configured)"),
        503: error_doc("the model is still loading or the engine died"),
    },
)
async def reload_adapters(request: Request, runtime: RuntimeDep) -> dict:
    audit(request, "adapters.reload")
    if runtime.adapters is None and not runtime.settings.serves_adapters:
        raise APIError(
            404,
            "this server serves no adapters: set ALPACA_ADAPTERS_DIR or ALPACA_ADAPTERS",
            "not_found",
        )
    engine = runtime.engine
    if engine is None or runtime.adapters is None or not runtime.ready or not engine.alive:
        raise APIError(503, "the model is still loading or has stopped", "engine_unavailable")
    await runtime.adapters.refresh(engine, wait_until_stable=False)
    return runtime.adapters.describe()
