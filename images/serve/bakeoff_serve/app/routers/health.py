"""Server-level KServe v2 endpoints: metadata, liveness and readiness.

Readiness is the contract the local runner and Kubernetes probes rely on: 200 only once the
model is loaded and warmed up for every warm-up batch size (in every worker process), 503
before.
"""

from __future__ import annotations

from fastapi import APIRouter, Response

from bakeoff_serve.app.dependencies import (
    EXTENSIONS,
    StateDep,
    error_response,
    json_response,
    server_name,
)

router = APIRouter(tags=["health"])


@router.get("/v2")
async def server_metadata(state: StateDep) -> Response:
    return json_response(
        {
            "name": server_name(state.settings.engine),
            "version": state.version,
            "extensions": list(EXTENSIONS),
        }
    )


@router.get("/v2/health/live")
async def live() -> Response:
    return Response(status_code=200)


@router.get("/v2/health/ready")
async def ready(state: StateDep) -> Response:
    if state.server_ready():
        return Response(status_code=200)
    return error_response(503, state.not_ready_reason())
