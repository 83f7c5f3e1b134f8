"""KServe v2 gRPC endpoint of the PyTorch server, with Triton's own service definition.

`app.main`'s lifespan calls `start_server`, so gRPC runs in the same process and event loop
as the HTTP app and shares its `ServerState`: the same engine (one worker thread), the same
metrics and the same `oip` validation rules. Messages come from `tritonclient.grpc`'s
generated modules, which is exactly what `tritonclient.grpc` and perf_analyzer speak.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Final, NoReturn

import grpc
import numpy as np
from google.protobuf import json_format  # type: ignore[import-untyped]  # no stubs in the venv
from tritonclient.grpc import model_config_pb2, service_pb2, service_pb2_grpc

from bakeoff_serve import model_configs, oip
from bakeoff_serve.app.dependencies import EXTENSIONS, ServerState, server_name

log = logging.getLogger(__name__)

# A batch of 32 images is 19 MB of raw FP32; gRPC's default 4 MiB receive limit is too small.
MAX_MESSAGE_BYTES: Final = 256 * 1024 * 1024

_STATUS: Final[dict[int, grpc.StatusCode]] = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    503: grpc.StatusCode.UNAVAILABLE,
}


async def _abort(context: Any, error: oip.OipError) -> NoReturn:
    code = _STATUS.get(error.status, grpc.StatusCode.INVALID_ARGUMENT)
    await context.abort(code, error.message)
    raise AssertionError("context.abort returned")  # it raises; this satisfies NoReturn


def _raw_inputs(request: Any) -> list[oip.RawInput]:
    """Inputs from raw_input_contents (tritonclient's way) or typed fp32 contents."""
    raw_contents = request.raw_input_contents
    if raw_contents and len(raw_contents) != len(request.inputs):
        raise oip.OipError(
            400,
            f"request has {len(raw_contents)} raw_input_contents for {len(request.inputs)} inputs",
        )
    inputs: list[oip.RawInput] = []
    for index, tensor in enumerate(request.inputs):
        data: bytes | np.ndarray[Any, Any]
        if raw_contents:
            data = bytes(raw_contents[index])
        else:
            # Typed contents: only FP32 is served, and a datatype mismatch is reported first.
            data = np.asarray(tensor.contents.fp32_contents, dtype=np.float32)
        inputs.append(oip.RawInput(tensor.name, tensor.datatype, list(tensor.shape), data))
    return inputs


class InferenceServicer(service_pb2_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    """The KServe v2 subset tritonclient.grpc uses; the rest answers UNIMPLEMENTED."""

    def __init__(self, state: ServerState) -> None:
        self._state = state

    async def ServerLive(self, request: Any, context: Any) -> Any:
        return service_pb2.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: Any) -> Any:
        return service_pb2.ServerReadyResponse(ready=self._state.server_ready())

    async def ServerMetadata(self, request: Any, context: Any) -> Any:
        return service_pb2.ServerMetadataResponse(
            name=server_name(self._state.settings.engine),
            version=self._state.version,
            extensions=list(EXTENSIONS),
        )

    async def ModelReady(self, request: Any, context: Any) -> Any:
        try:
            oip.resolve_model(self._state.signature, request.name, request.version)
        except oip.OipError as error:
            await _abort(context, error)
        return service_pb2.ModelReadyResponse(ready=self._state.server_ready())

    async def ModelMetadata(self, request: Any, context: Any) -> Any:
        try:
            oip.resolve_model(self._state.signature, request.name, request.version)
        except oip.OipError as error:
            await _abort(context, error)
        document = oip.model_metadata(self._state.signature)
        return json_format.ParseDict(document, service_pb2.ModelMetadataResponse())

    async def ModelConfig(self, request: Any, context: Any) -> Any:
        try:
            oip.resolve_model(self._state.signature, request.name, request.version)
            self._state.require_ready()
        except oip.OipError as error:
            await _abort(context, error)
        config = json_format.ParseDict(self._state.model_config(), model_config_pb2.ModelConfig())
        return service_pb2.ModelConfigResponse(config=config)

    async def ModelInfer(self, request: Any, context: Any) -> Any:
        state = self._state
        signature = state.signature
        try:
            oip.resolve_model(signature, request.model_name, request.model_version)
            state.require_ready()
        except oip.OipError as error:
            await _abort(context, error)
        started_ns = time.perf_counter_ns()
        try:
            inputs, batch_size = oip.validate_inputs(signature, _raw_inputs(request))
            if any("classification" in output.parameters for output in request.outputs):
                raise oip.OipError(400, "classification outputs are not supported by this server")
            # gRPC always answers in raw_output_contents, so "binary" is moot here.
            requested = [(output.name, True) for output in request.outputs]
            outputs = oip.resolve_outputs(signature, requested, default_binary=True)
            embeddings, timings = await state.engine.infer(inputs[model_configs.INPUT_NAME])
        except oip.OipError as error:
            state.metrics.record_failure(signature.name, signature.version, "OTHER")
            await _abort(context, error)
        except Exception:
            state.metrics.record_failure(signature.name, signature.version, "BACKEND")
            raise
        results = {model_configs.OUTPUT_NAME: embeddings}
        datatypes = {spec.name: spec.datatype for spec in signature.outputs}
        response = service_pb2.ModelInferResponse(
            model_name=signature.name, model_version=signature.version, id=request.id
        )
        for wanted in outputs:
            array = np.ascontiguousarray(results[wanted.name], dtype=np.dtype("<f4"))
            response.outputs.add(
                name=wanted.name, datatype=datatypes[wanted.name], shape=list(array.shape)
            )
            response.raw_output_contents.append(array.tobytes())
        state.metrics.record_success(
            signature.name,
            signature.version,
            batch_size=batch_size,
            request_duration_ns=time.perf_counter_ns() - started_ns,
            timings=timings,
        )
        return response


async def start_server(state: ServerState, host: str, port: int) -> Any:
    """Start a grpc.aio server on the running event loop; the caller stops it."""
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ]
    )
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(state), server)
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    # Older grpcio returns 0 on a failed bind, newer raises RuntimeError; handle both.
    if server.add_insecure_port(address) == 0:
        raise RuntimeError(f"could not bind the gRPC port at {address}")
    await server.start()
    log.info("gRPC listening on %s", address)
    return server
