"""The PyTorch OIP server: FastAPI app factory, lifespan, and the uvicorn runner.

`bakeoff_serve.__main__` calls `serve(settings)`, which runs `create_app(settings)` behind
`InferFastPath` (the infer route); tests may call `create_app(settings)` for the others.
The lifespan starts the gRPC server on the same event loop and begins loading the model in
the background, so `/v2/health/live` answers at once and `/v2/health/ready` turns 200 only
when the model is loaded and warm (time-to-ready is a reported cold-start number).

With more than one worker (`Settings.worker_count`), `serve` runs `workers.Supervisor`,
whose processes each call `serve(settings, worker)`: the same app on a shared port, ready
when every worker is, metrics summed over all of them.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import logging
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import uvicorn
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from bakeoff_serve import engine, grpc_service, oip, server_metrics, workers
from bakeoff_serve.app.dependencies import ServerState, error_response
from bakeoff_serve.app.http_protocol import DirectBodyProtocol
from bakeoff_serve.app.infer_path import BODY_ALLOCATOR_KEY, BodyAllocator, InferFastPath
from bakeoff_serve.app.routers import health, metrics, models
from bakeoff_serve.app.settings import Settings

log = logging.getLogger(__name__)

FatalHandler = Callable[[BaseException], None]


def package_version() -> str:
    try:
        return importlib.metadata.version("bakeoff")
    except importlib.metadata.PackageNotFoundError:  # running from a source tree
        return "0.0.0+unknown"


async def _load_model(
    state: ServerState, on_fatal: FatalHandler | None, worker: workers.WorkerContext | None
) -> None:
    settings = state.settings
    try:
        seconds = await state.engine.load(settings.warmup_batch_sizes)
    except Exception as exc:
        # A server that can never get ready must exit, not answer 503 until a probe gives up.
        log.exception("loading model %s failed; the server will stop", settings.model_name)
        if on_fatal is None:
            raise
        on_fatal(exc)
        return
    if worker is not None:
        worker.group.mark_ready(worker.slot.index)
    provenance = state.engine.provenance
    log.info(
        "model %s ready after %.1f s (%s; %s; warm for batch sizes %s)",
        settings.model_name,
        seconds,
        state.engine.runtime(),
        provenance.describe() if provenance else "?",
        ",".join(str(b) for b in settings.warmup_batch_sizes),
    )


def _install_error_handlers(app: FastAPI) -> None:
    # Every error leaves as KServe v2's {"error": message}, which tritonclient surfaces.
    async def oip_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, oip.OipError)
        return error_response(exc.status, exc.message)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        return error_response(exc.status_code, str(exc.detail))

    async def validation_error(request: Request, exc: Exception) -> Response:
        return error_response(400, f"invalid request: {exc}")

    async def internal_error(request: Request, exc: Exception) -> Response:
        return error_response(500, f"internal server error: {type(exc).__name__}: {exc}")

    app.add_exception_handler(oip.OipError, oip_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(Exception, internal_error)


def create_app(
    settings: Settings,
    on_fatal: FatalHandler | None = None,
    worker: workers.WorkerContext | None = None,
) -> FastAPI:
    """The HTTP app; its lifespan also runs the gRPC server and loads the model.

    `on_fatal` is called if the model cannot be loaded (`serve` uses it to exit non-zero).
    `worker`: this process is one of several (its GPU, the group folder, when to bind).
    """
    slot = worker.slot if worker is not None else None
    gpu_indices = (
        (slot.gpu,) if slot is not None and slot.gpu is not None else tuple(range(settings.gpus))
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, BodyAllocator]]:
        signature = engine.build_signature(
            settings.model_name,
            settings.builtin,
            settings.max_batch_size,
            settings.input_format.value,
            settings.engine,
        )
        model_engine = engine.InferenceEngine(
            builtin=settings.builtin,
            device=settings.device.value,
            precision=settings.precision.value,
            seed=settings.seed,
            weights=settings.weights,
            input_format=settings.input_format.value,
            max_batch_size=settings.max_batch_size,
            cuda_graphs=settings.use_cuda_graphs,
            dynamic_batching=settings.dynamic_batching,
            max_queue_delay_us=settings.max_queue_delay_us,
            gpu_indices=gpu_indices,
            instances_per_device=settings.instances_per_device,
            engine=settings.engine,
            execution_provider=settings.execution_provider,
            cache_dir=settings.cache_dir,
        )
        registry = (
            server_metrics.ServerMetrics(worker.group.metrics_dir, worker.slot.index)
            if worker is not None
            else server_metrics.ServerMetrics()
        )
        registry.register_model(signature.name, signature.version)
        group = worker.group if worker is not None else None
        state = ServerState(settings, signature, model_engine, registry, package_version(), group)
        app.state.bakeoff = state
        grpc_server = None
        load_task: asyncio.Task[None] | None = None
        try:
            if worker is not None and not worker.bind_before_warm:
                # A replacement: warm before either port listens (a failure ends startup).
                await _load_model(state, None, worker)
            else:
                load_task = asyncio.create_task(_load_model(state, on_fatal, worker))
            grpc_server = await grpc_service.start_server(state, settings.host, settings.grpc_port)
            # uvicorn hands the lifespan's state to each connection's protocol.
            yield {BODY_ALLOCATOR_KEY: model_engine.allocate_body}
        finally:
            if load_task is not None:
                load_task.cancel()
            if grpc_server is not None:
                await grpc_server.stop(grace=2.0)
            # Waits for a running forward pass (or model load) to finish.
            model_engine.close()

    app = FastAPI(
        title="bakeoff-pytorch",
        version=package_version(),
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    _install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(models.router)
    app.include_router(metrics.router)
    return app


def _place_worker(settings: Settings, slot: workers.WorkerSlot) -> None:
    import torch

    if slot.gpu is not None:
        # Before anything touches CUDA: pinned buffers and streams go to this worker's GPU.
        torch.cuda.set_device(slot.gpu)
    else:
        # CPU workers share the cores instead of each starting a thread per core.
        cores = len(os.sched_getaffinity(0))
        torch.set_num_threads(max(1, cores // settings.worker_count))


def serve(settings: Settings, worker: workers.WorkerContext | None = None) -> int:
    """Run HTTP and gRPC until SIGTERM/SIGINT; returns the process exit code.

    Several workers: this process supervises them (`workers.Supervisor`) and serves nothing
    itself; each worker process calls back here with its `worker` context.
    """
    if worker is None and settings.worker_count > 1:
        slots = workers.plan_workers(
            settings.device.value, settings.gpus, settings.workers_per_device
        )
        return workers.Supervisor(settings, slots).run()
    if worker is not None:
        _place_worker(settings, worker.slot)
    failures: list[BaseException] = []

    def on_fatal(exc: BaseException) -> None:
        failures.append(exc)
        server.should_exit = True

    config = uvicorn.Config(
        InferFastPath(create_app(settings, on_fatal, worker)),
        host=settings.host,
        port=settings.http_port,
        # uvloop: grpc.aio runs on the loop uvicorn runs (checked by the protocol tests), and
        # on a GPU each request is about a millisecond, so the loop's own cost shows.
        loop="uvloop",
        # uvicorn's httptools protocol, receiving large infer bodies into one buffer.
        # (uvicorn's annotation says asyncio.Protocol; it only calls the class.)
        http=DirectBodyProtocol,  # type: ignore[arg-type]
        # Nothing here reads the client address (no access log): one middleware less.
        proxy_headers=False,
        lifespan="on",
        # Per-request access logs would cost CPU inside the measured window.
        access_log=False,
        log_level="info",
        timeout_graceful_shutdown=5,
    )
    server = uvicorn.Server(config)
    if worker is None:
        server.run()
    else:
        # Shared with the other workers; it listens once the lifespan has started.
        server.run(sockets=[workers.reuseport_socket(settings.host, settings.http_port)])
    if failures or not server.started:
        return 1
    return 0
