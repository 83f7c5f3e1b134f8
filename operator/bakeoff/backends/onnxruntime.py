"""Kind `onnxruntime`: Bakeoff's own server with the model in ONNX Runtime
(`bakeoff_serve onnxruntime`).

The same server as kind `pytorch` (HTTP and gRPC, batching, UINT8 and JPEG input, pinned
request bodies), so against `pytorch` it isolates the engine, and against `triton-onnx` with
the same provider it isolates the server. On a CPU pool (and the CPU mock) it runs on ONNX
Runtime's CPU provider, like `triton-onnx`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePath

from bakeoff import api, pods
from bakeoff.backends.base import (
    BackendPod,
    Identity,
    LocalServer,
)
from bakeoff.backends.pytorch import local_server, server_args, server_options
from bakeoff.rules import Rule
from bakeoff.settings import OperatorSettings
from bakeoff_bench import config as bench_config
from bakeoff_serve.options import ExecutionProvider, Precision

_KIND = api.BackendKind.ONNXRUNTIME
_BACKEND = ("spec", "backends", "[]")

# A rule's CEL runs even where another rule already failed: every optional field is `has`-ed.
RULES = (
    Rule(
        "onnxruntime is not bf16", _BACKEND,
        "!has(self.precision) || self.precision != 'bf16'",
        lambda backend: backend.precision is not Precision.BF16,
        "kind onnxruntime serves fp32 and fp16, not bf16", "use precision: fp16",
        field=".precision", kind=_KIND, breaks_it=(("spec.backends.3.precision", "bf16"),),
    ),
    Rule(
        "onnxruntime has no preferredBatchSizes", _BACKEND,
        "!has(self.dynamicBatching) || !has(self.dynamicBatching.preferredBatchSizes) || "
        "self.dynamicBatching.preferredBatchSizes.size() == 0",
        lambda backend: backend.dynamic_batching is None
        or not backend.dynamic_batching.preferred_batch_sizes,
        "dynamicBatching.preferredBatchSizes applies to kind triton-onnx only",
        "remove it; Bakeoff's server batches up to maxBatchSize",
        field=".dynamicBatching.preferredBatchSizes", kind=_KIND,
        reason="FieldValueForbidden",
        breaks_it=(("spec.backends.3.dynamicBatching", {"preferredBatchSizes": [8]}),),
    ),
)  # fmt: skip


@dataclass(frozen=True)
class Onnxruntime:
    backend: api.OnnxruntimeBackend

    def describe(self) -> str:
        backend = self.backend
        return f"onnxruntime server ({backend.execution_provider.value}, {backend.precision.value})"

    def identity(self, gpu: bool) -> Identity:
        backend = self.backend
        engine = f"onnxruntime-{self._execution_provider(gpu).value}"
        return Identity("bakeoff", engine, backend.precision.value, backend.input_format.value)

    def remote_target(
        self, suite: api.BenchmarkSuite, secrets_root: PurePath
    ) -> bench_config.Target | None:
        return None

    def _execution_provider(self, gpu: bool) -> ExecutionProvider:
        # Off a GPU (the CPU mock, a CPU pool) the model runs on the CPU provider.
        return self.backend.execution_provider if gpu else ExecutionProvider.CPU

    def _options(self, gpus: int) -> list[str]:
        provider = self._execution_provider(gpus > 0)
        return [*server_options(self.backend, gpus), f"--execution-provider={provider.value}"]

    def pod(
        self, suite: api.BenchmarkSuite, pool: api.NodePool, settings: OperatorSettings
    ) -> BackendPod:
        gpu = pods.uses_gpu(pool, settings)
        # The exported files and TensorRT engines go to the pod's writable models volume.
        options = [
            "--cache-dir",
            pods.MODELS_MOUNT["mountPath"],
            *self._options(pool.gpus if gpu else 0),
        ]
        args = server_args("onnxruntime", suite, self.backend, pool, settings, options)
        image = settings.pytorch_image if gpu else settings.cpu_mock_image
        server = pods.server_container(image, args, pool, settings, metrics=False)
        server["volumeMounts"].append(dict(pods.MODELS_MOUNT))
        return BackendPod(containers=[server], images={"SERVER": image}, metrics_on_own_port=False)

    def start_locally(
        self, suite: api.BenchmarkSuite, gpus: int, work_dir: Path, cache_dir: Path | None
    ) -> LocalServer:
        # Imported here: the export pulls in torch and onnx.
        from bakeoff_serve import ort_runner, tritonserver

        spec, backend = suite.spec, self.backend
        provider = self._execution_provider(gpus > 0)
        # Refused here, before an export: "not run" where the provider cannot exist.
        ort_runner.check_provider(provider)
        weights = Path(spec.model.source.weights) if spec.model.source.weights else None
        cache = cache_dir or tritonserver.default_cache_dir()
        # Exported before the server starts, like triton-onnx's model prep: time-to-ready is
        # the server's own cold start (sessions, graph captures, TensorRT engine builds).
        ort_runner.prepare_model_files(
            spec.model.source.builtin.value, weights, spec.model.seed, cache,
            precision=backend.precision.value, input_format=backend.input_format.value,
            max_batch_size=backend.max_batch_size, execution_provider=provider,
            cuda_graphs=gpus > 0 and backend.cuda_graphs is not False,
        )  # fmt: skip
        options = [*self._options(gpus), f"--cache-dir={cache}"]
        return local_server("onnxruntime", suite, backend, gpus, options)
