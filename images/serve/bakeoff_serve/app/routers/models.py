"""Model-level KServe v2 endpoints: metadata, readiness and configuration.

Inference is not routed here: `app.infer_path` answers it before FastAPI's router, to keep
the framework's per-request cost out of every measured millisecond.
"""

from __future__ import annotations

from fastapi import APIRouter, Response

from bakeoff_serve import oip
from bakeoff_serve.app.dependencies import StateDep, json_response

router = APIRouter(tags=["models"])

_MODEL = "/v2/models/{model_name}"
_VERSIONED = "/v2/models/{model_name}/versions/{model_version}"


@router.get(_MODEL)
@router.get(_VERSIONED)
async def model_metadata(model_name: str, state: StateDep, model_version: str = "") -> Response:
    oip.resolve_model(state.signature, model_name, model_version)
    return json_response(oip.model_metadata(state.signature))


@router.get(_MODEL + "/ready")
@router.get(_VERSIONED + "/ready")
async def model_ready(model_name: str, state: StateDep, model_version: str = "") -> Response:
    oip.resolve_model(state.signature, model_name, model_version)
    state.require_ready()
    return Response(status_code=200)


@router.get(_MODEL + "/config")
@router.get(_VERSIONED + "/config")
async def model_config(model_name: str, state: StateDep, model_version: str = "") -> Response:
    oip.resolve_model(state.signature, model_name, model_version)
    state.require_ready()  # provenance is only known once the weights are loaded
    return json_response(state.model_config())
