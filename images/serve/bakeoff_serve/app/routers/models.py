"""Model-level KServe v2 endpoints: metadata, readiness, configuration and inference.

The infer handler is the HTTP edge of the request path: `oip` decodes and validates, the
engine runs the model in its worker thread, `oip` encodes, and `server_metrics` records the
outcome under Triton's names. Client mistakes arrive here as `oip.OipError` and leave as
`{"error": message}` with a 4xx (see the handler in `app.main`).
"""

from __future__ import annotations

import time

from fastapi import APIRouter, Request, Response

from bakeoff_serve import model_configs, oip
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


@router.post(_MODEL + "/infer")
@router.post(_VERSIONED + "/infer")
async def infer(
    model_name: str, request: Request, state: StateDep, model_version: str = ""
) -> Response:
    signature = state.signature
    oip.resolve_model(signature, model_name, model_version)
    state.require_ready()
    body = await request.body()
    # Like Triton, the request clock starts once the body is in: network time is the client's.
    started_ns = time.perf_counter_ns()
    try:
        decoded = oip.decode_http_infer(
            signature,
            body,
            request.headers.get(oip.HEADER_LENGTH),
            request.headers.get("content-encoding"),
        )
        embeddings, timings = await state.engine.infer(decoded.inputs[model_configs.INPUT_NAME])
        content, headers = oip.encode_http_infer(
            signature, decoded, {model_configs.OUTPUT_NAME: embeddings}
        )
    except oip.OipError:
        state.metrics.record_failure(signature.name, signature.version, "OTHER")
        raise
    except Exception:
        state.metrics.record_failure(signature.name, signature.version, "BACKEND")
        raise
    state.metrics.record_success(
        signature.name,
        signature.version,
        batch_size=decoded.batch_size,
        request_duration_ns=time.perf_counter_ns() - started_ns,
        timings=timings,
    )
    return Response(content, headers=headers)
