"""Kind `pytorch`: Bakeoff's own PyTorch server (`bakeoff_serve pytorch`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePath

from bakeoff import api, pods
from bakeoff.backends.base import (
    BackendPod,
    Identity,
    LocalServer,
    loopback_target,
    model_args,
    warmup_batch_sizes,
)
from bakeoff.rules import Rule
from bakeoff.settings import OperatorSettings
from bakeoff_bench import config as bench_config
from bakeoff_serve import launch, process

RULES = (
    Rule(
        "preferredBatchSizes is Triton's", ("spec", "backends", "[]"),
        "!has(self.dynamicBatching) || !has(self.dynamicBatching.preferredBatchSizes) || "
        "self.dynamicBatching.preferredBatchSizes.size() == 0",
        lambda backend: backend.dynamic_batching is None
        or not backend.dynamic_batching.preferred_batch_sizes,
        "dynamicBatching.preferredBatchSizes applies to kind triton-onnx only",
        "remove it; the pytorch server batches up to maxBatchSize",
        field=".dynamicBatching.preferredBatchSizes", kind=api.BackendKind.PYTORCH,
        reason="FieldValueForbidden",
        breaks_it=(("spec.backends.0.dynamicBatching", {"preferredBatchSizes": [8]}),),
    ),
)  # fmt: skip


def server_options(backend: api.BakeoffServerBackend, gpus: int) -> list[str]:
    """The server's serving flags for a pool with `gpus` GPUs (0: CPU).

    workersPerGpu server processes per GPU, each with instancesPerGpu model instances; CUDA
    graphs are the server's default on a GPU and do not exist on CPU, so an explicit choice
    is passed on GPUs only.
    """
    options = [f"--input-format={backend.input_format.value}"]
    if gpus > 0:
        options += [
            f"--gpus={gpus}",
            f"--workers-per-device={backend.workers_per_gpu}",
            f"--instances-per-device={backend.instances_per_gpu}",
        ]
        if backend.cuda_graphs is not None:
            options.append("--cuda-graphs" if backend.cuda_graphs else "--no-cuda-graphs")
    if backend.dynamic_batching is not None:
        options.append("--dynamic-batching")
        delay = backend.dynamic_batching.max_queue_delay_microseconds
        options.append(f"--max-queue-delay-us={delay}")
    return options


def server_args(
    command: str,
    suite: api.BenchmarkSuite,
    backend: api.BakeoffServerBackend,
    pool: api.NodePool,
    settings: OperatorSettings,
    options: list[str],
) -> list[str]:
    """The container args of Bakeoff's server (`command`: its engine) in a cell's pod."""
    warm = warmup_batch_sizes(suite.spec, backend.max_batch_size)
    return [
        command, *model_args(suite),
        "--device", pods.cell_device(pool, settings), "--precision", backend.precision.value,
        "--host", "0.0.0.0", "--http-port", str(pods.HTTP_PORT),
        "--grpc-port", str(pods.GRPC_PORT), "--max-batch-size", str(backend.max_batch_size),
        "--warmup-batch-sizes", ",".join(str(b) for b in warm),
        *options,
    ]  # fmt: skip


def local_server(
    engine: str,
    suite: api.BenchmarkSuite,
    backend: api.BakeoffServerBackend,
    gpus: int,
    options: list[str],
) -> LocalServer:
    """Bakeoff's server (`engine`: pytorch or onnxruntime) as a local process on free ports."""
    spec = suite.spec
    http_port, grpc_port = process.free_port(), process.free_port()
    weights = spec.model.source.weights
    command = launch.pytorch_server_command(
        model_name=spec.model.name,
        builtin=spec.model.source.builtin.value,
        device="cuda" if gpus else "cpu",
        precision=backend.precision.value,
        http_port=http_port,
        grpc_port=grpc_port,
        max_batch_size=backend.max_batch_size,
        warmup_batch_sizes=warmup_batch_sizes(spec, backend.max_batch_size),
        seed=spec.model.seed,
        weights=Path(weights) if weights else None,
        options=options,
        engine=engine,
    )
    return LocalServer(command, loopback_target(suite, http_port, metrics_port=None))


@dataclass(frozen=True)
class Pytorch:
    backend: api.PytorchBackend

    def describe(self) -> str:
        return f"pytorch server ({self.backend.precision.value})"

    def identity(self, gpu: bool) -> Identity:
        backend = self.backend
        wire = backend.input_format.value
        return Identity("bakeoff", "pytorch", backend.precision.value, wire)

    def remote_target(
        self, suite: api.BenchmarkSuite, secrets_root: PurePath
    ) -> bench_config.Target | None:
        return None

    def pod(
        self, suite: api.BenchmarkSuite, pool: api.NodePool, settings: OperatorSettings
    ) -> BackendPod:
        backend = self.backend
        gpu = pods.uses_gpu(pool, settings)
        options = server_options(backend, pool.gpus if gpu else 0)
        args = server_args("pytorch", suite, backend, pool, settings, options)
        image = settings.pytorch_image if gpu else settings.cpu_mock_image
        server = pods.server_container(image, args, pool, settings, metrics=False)
        return BackendPod(containers=[server], images={"SERVER": image}, metrics_on_own_port=False)

    def start_locally(
        self, suite: api.BenchmarkSuite, gpus: int, work_dir: Path, cache_dir: Path | None
    ) -> LocalServer:
        options = server_options(self.backend, gpus)
        return local_server("pytorch", suite, self.backend, gpus, options)
