"""What the routers need: the server state (through dependency injection) and responses.

`app.main`'s lifespan builds one `ServerState` and stores it on `app.state`; routers ask for
it with `StateDep`. Tests can swap it through `app.dependency_overrides[get_state]`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

import orjson
from fastapi import Depends, Request, Response

from bakeoff_serve import engine, model_configs, oip, server_metrics, workers
from bakeoff_serve.app.settings import Settings
from bakeoff_serve.options import Engine


def server_name(engine: Engine) -> str:
    """The server's name in its metadata: "bakeoff-pytorch" or "bakeoff-onnxruntime"."""
    return f"bakeoff-{engine.value}"


# Only what this server implements; tritonclient reads this list to pick code paths.
EXTENSIONS = ("binary_tensor_data", "model_configuration")


@dataclass(frozen=True)
class ServerState:
    settings: Settings
    signature: oip.ModelSignature
    engine: engine.InferenceEngine
    metrics: server_metrics.ServerMetrics
    version: str  # the bakeoff package version, reported as the server version
    worker_group: workers.WorkerGroup | None = None  # several worker processes: their group

    def server_ready(self) -> bool:
        """This process is warm, and so is every other worker of the server."""
        return self.engine.ready and (self.worker_group is None or self.worker_group.all_ready())

    def not_ready_reason(self) -> str:
        if not self.engine.ready or self.worker_group is None:
            return "model is loading and warming up"
        waiting = ", ".join(str(slot) for slot in self.worker_group.not_ready())
        return f"model is loading and warming up in worker(s) {waiting} of {self.worker_group.size}"

    def render_metrics(self) -> str:
        """Prometheus text: the counters of every worker, the GPUs of the whole server."""
        gpus = (
            engine.gpu_samples(range(self.settings.gpus))
            if self.engine.device.type == "cuda"
            else []
        )
        counts = self.worker_group.counts() if self.worker_group is not None else None
        return self.metrics.render(gpus, counts)

    def model_config(self) -> dict[str, Any]:
        """Triton-style config, with what runs the model and where its weights came from.

        Shared by HTTP (as JSON) and gRPC (parsed into model_config_pb2.ModelConfig).
        """
        provenance = self.engine.provenance
        parameters = {
            "runtime": self.engine.runtime(),
            "model_provenance": provenance.describe() if provenance else "not loaded",
            # What a client needs to encode an image input (a JPEG's pixel size).
            "image_size": str(model_configs.BUILTIN_MODELS[self.settings.builtin].image_size),
        }
        kind = "KIND_GPU" if self.engine.device.type == "cuda" else "KIND_CPU"
        return oip.model_config(self.signature, kind, parameters)

    def require_ready(self) -> None:
        """503 (gRPC UNAVAILABLE) until the model is loaded and warm."""
        if not self.engine.ready:  # this process: a peer's warm-up does not stop its requests
            raise oip.OipError(503, f"model '{self.signature.name}' is loading and warming up")


def get_state(request: Request) -> ServerState:
    state: ServerState = request.app.state.bakeoff
    return state


StateDep = Annotated[ServerState, Depends(get_state)]


def json_response(content: object, status_code: int = 200) -> Response:
    """orjson-encoded JSON (FastAPI's ORJSONResponse is deprecated)."""
    return Response(orjson.dumps(content), status_code, media_type="application/json")


def error_response(status_code: int, message: str) -> Response:
    """KServe v2 error shape, which tritonclient reads: {"error": message}."""
    return Response(oip.error_body(message), status_code, media_type="application/json")
