"""Kind `triton-onnx`: Triton serving the model exported to ONNX, run by ONNX Runtime.

On a GPU pool, NVIDIA's Triton image with its native ONNX Runtime backend (model-prep writes
the repository in an init container); on CPU (the CPU mock, and `bakeoff run --local`), the
`tritonserver` of the nvidia-pytriton wheel with the model in ONNX Runtime on the CPU.
"""

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
from bakeoff_serve.options import ExecutionProvider, Precision

_KIND = api.BackendKind.TRITON_ONNX
_BACKEND = ("spec", "backends", "[]")


def _preferred_sizes_fit(backend: api.TritonOnnxBackend) -> bool:
    batching = backend.dynamic_batching
    return batching is None or all(
        size <= backend.max_batch_size for size in batching.preferred_batch_sizes
    )


# A rule's CEL runs even where another rule already failed: every optional field is `has`-ed.
RULES = (
    Rule(
        "cpu and cuda providers run fp32", _BACKEND,
        "!has(self.executionProvider) || !(self.executionProvider in ['cpu', 'cuda']) || "
        "!has(self.precision) || self.precision == 'fp32'",
        lambda backend: backend.execution_provider
        not in (ExecutionProvider.CPU, ExecutionProvider.CUDA)
        or backend.precision is Precision.FP32,
        "the cpu and cuda execution providers run the exported fp32 graph",
        "use precision: fp32, or executionProvider: tensorrt for fp16",
        field=".precision", kind=_KIND, breaks_it=(("spec.backends.1.precision", "fp16"),),
    ),
    Rule(
        "tensorrt is not bf16", _BACKEND,
        "!has(self.executionProvider) || self.executionProvider != 'tensorrt' || "
        "!has(self.precision) || self.precision != 'bf16'",
        lambda backend: backend.execution_provider is not ExecutionProvider.TENSORRT
        or backend.precision is not Precision.BF16,
        "the TensorRT execution provider supports fp32 and fp16, not bf16", "use precision: fp16",
        field=".precision", kind=_KIND, breaks_it=(("spec.backends.2.precision", "bf16"),),
    ),
    Rule(
        "preferred batch sizes fit maxBatchSize", _BACKEND,
        "!has(self.dynamicBatching) || !has(self.dynamicBatching.preferredBatchSizes) || "
        "self.dynamicBatching.preferredBatchSizes.all(s, s <= self.maxBatchSize)",
        _preferred_sizes_fit,
        "dynamicBatching.preferredBatchSizes must not exceed maxBatchSize",
        "drop the larger sizes or raise maxBatchSize",
        field=".dynamicBatching.preferredBatchSizes", kind=_KIND,
        breaks_it=(("spec.backends.2.dynamicBatching.preferredBatchSizes", [8, 64]),),
    ),
)  # fmt: skip


@dataclass(frozen=True)
class TritonOnnx:
    backend: api.TritonOnnxBackend

    def describe(self) -> str:
        backend = self.backend
        return f"triton-onnx server ({backend.execution_provider.value}, {backend.precision.value})"

    def identity(self, gpu: bool) -> Identity:
        backend = self.backend
        engine = f"onnxruntime-{self._execution_provider(gpu).value}"
        return Identity("triton", engine, backend.precision.value, "fp32")

    def remote_target(
        self, suite: api.BenchmarkSuite, secrets_root: PurePath
    ) -> bench_config.Target | None:
        return None

    def _execution_provider(self, gpu: bool) -> ExecutionProvider:
        # Off a GPU (the CPU mock) every triton-onnx backend runs on the CPU provider.
        return self.backend.execution_provider if gpu else ExecutionProvider.CPU

    def pod(
        self, suite: api.BenchmarkSuite, pool: api.NodePool, settings: OperatorSettings
    ) -> BackendPod:
        backend = self.backend
        gpu = pods.uses_gpu(pool, settings)
        batching = backend.dynamic_batching or api.DynamicBatching()
        warm = warmup_batch_sizes(suite.spec, backend.max_batch_size)
        prep_args = [
            "triton-prep", *model_args(suite),
            "--execution-provider", self._execution_provider(gpu).value,
            "--precision", backend.precision.value,
            "--max-batch-size", str(backend.max_batch_size),
            "--max-queue-delay-us", str(batching.max_queue_delay_microseconds),
            "--preferred-batch-sizes", ",".join(str(b) for b in batching.preferred_batch_sizes),
            "--warmup-batch-sizes", ",".join(str(b) for b in warm),
            "--out", "/models",
        ]  # fmt: skip
        if gpu:
            # NVIDIA's Triton image serves the ONNX model with its native ONNX Runtime backend,
            # one instance per GPU of the pod; tritonserver is its entrypoint's binary.
            prep_args += [
                "--format",
                "native",
                "--gpus",
                ",".join(str(g) for g in range(pool.gpus)),
            ]
            prep_image, server_image = settings.model_prep_image, settings.triton_image
            server_args = [
                "tritonserver", "--model-repository=/models", f"--http-port={pods.HTTP_PORT}",
                f"--grpc-port={pods.GRPC_PORT}", f"--metrics-port={pods.METRICS_PORT}",
                "--disable-auto-complete-config", "--strict-readiness=true",
            ]  # fmt: skip
        else:
            prep_image = server_image = settings.cpu_mock_image
            server_args = [
                "triton", "--repo", "/models", "--host", "0.0.0.0",
                "--http-port", str(pods.HTTP_PORT), "--grpc-port", str(pods.GRPC_PORT),
                "--metrics-port", str(pods.METRICS_PORT),
            ]  # fmt: skip
        prep = pods.container("model-prep", prep_image, prep_args)
        server = pods.server_container(server_image, server_args, pool, settings, metrics=True)
        for container in (prep, server):
            container["volumeMounts"].append(dict(pods.MODELS_MOUNT))
        return BackendPod(
            containers=[server],
            init_containers=[prep],
            images={"SERVER": server_image, "MODEL_PREP": prep_image},
            metrics_on_own_port=True,
        )

    def start_locally(
        self, suite: api.BenchmarkSuite, gpus: int, work_dir: Path, cache_dir: Path | None
    ) -> LocalServer:
        # Imported here: model prep pulls in torch and onnx.
        from bakeoff_serve import model_prep, tritonserver

        spec, backend = suite.spec, self.backend
        batching = backend.dynamic_batching or api.DynamicBatching()
        weights = spec.model.source.weights
        repo = model_prep.prepare_triton_repository(
            work_dir / "model-repository",
            spec.model.name,
            spec.model.source.builtin.value,
            Path(weights) if weights else None,
            spec.model.seed,
            cache_dir or tritonserver.default_cache_dir(),
            max_batch_size=backend.max_batch_size,
            # The bundled tritonserver's Python-backend instance runs ONNX Runtime on cuda:0;
            # a local run with more GPUs says so in the cell's notes.
            execution_provider=self._execution_provider(gpus > 0),
            precision=backend.precision,
            preferred_batch_sizes=batching.preferred_batch_sizes,
            max_queue_delay_us=batching.max_queue_delay_microseconds,
            warmup_batch_sizes=warmup_batch_sizes(spec, backend.max_batch_size),
        )
        http_port, grpc_port, metrics_port = (process.free_port() for _ in range(3))
        command = launch.triton_server_command(repo, http_port, grpc_port, metrics_port)
        return LocalServer(command, loopback_target(suite, http_port, metrics_port))
