"""The model in ONNX Runtime on one device: the `onnxruntime` backend's model instance.

`OrtRunner` is a `DeviceRunner` whose forward pass is an ONNX Runtime session instead of the
PyTorch module; buffers, staging (UINT8, JPEG, pinned request bodies), phase timing and the
launch/collect split are the same code. What it adds:

- IOBinding: the session reads the bucket's device input buffer and writes a device output
  buffer in place, so a batch crosses PCIe once each way, like the PyTorch runner's;
- ONNX Runtime runs on the runner's own CUDA stream (`user_compute_stream`) without its own
  synchronisation, so a launch returns at once and the output copy and timing events queue
  behind the model on that stream;
- CUDA graphs where ORT allows them: one session per batch bucket, each from a file with a
  static batch size (a dynamic batch axis leaves shape arithmetic on the CPU, and ORT then
  refuses to capture); if ORT still refuses, the runner says why and runs without;
- TensorRT: one engine per bucket (its optimisation profile is the bucket's shape), fp16
  when asked, engine and timing caches on disk; the engines are built while warming, before
  the server is ready, so the build counts as cold start and never inside a measurement.
"""

from __future__ import annotations

import ctypes
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import torch

from bakeoff_serve import device_runner, model, onnx_export
from bakeoff_serve.options import ExecutionProvider

log = logging.getLogger(__name__)

PROVIDER_NAMES: Final[Mapping[ExecutionProvider, str]] = {
    ExecutionProvider.CPU: "CPUExecutionProvider",
    ExecutionProvider.CUDA: "CUDAExecutionProvider",
    ExecutionProvider.TENSORRT: "TensorrtExecutionProvider",
}
# ORT captures a CUDA graph on a run after its first; a few runs also settle cuDNN/cuBLAS.
_WARM_RUNS: Final = 3
_NUMPY_DTYPES: Final[Mapping[torch.dtype, type[np.generic]]] = {
    torch.uint8: np.uint8,
    torch.float32: np.float32,
}


class ProviderUnavailableError(ValueError):
    """This onnxruntime cannot run the requested execution provider (it never falls back)."""


# The TensorRT libraries onnxruntime-gpu's TensorRT provider loads (TensorRT 10 or later).
_TENSORRT_LIBRARIES: Final = ("libnvinfer.so.10", "libnvinfer.so.11", "libnvinfer.so")


def import_onnxruntime() -> Any:
    """onnxruntime, imported after torch so that its CUDA provider finds the CUDA libraries
    torch's NVIDIA packages bring (cuBLAS, cuDNN) already loaded."""
    import onnxruntime

    # Errors only: onnxruntime-gpu 1.31 warns on every CUDA session that no plugin EP device
    # is registered (it uses its built-in CUDA provider), which buries the server's own log.
    onnxruntime.set_default_logger_severity(3)
    return onnxruntime


def tensorrt_loadable() -> bool:
    """Whether TensorRT's runtime library loads here (the provider itself is in the wheel)."""
    for name in _TENSORRT_LIBRARIES:
        try:
            ctypes.CDLL(name)
        except OSError:
            continue
        return True
    return False


def check_provider(execution_provider: ExecutionProvider) -> str:
    """The ORT provider name, or ProviderUnavailableError saying what to install."""
    ort = import_onnxruntime()
    name = PROVIDER_NAMES[execution_provider]
    available = ort.get_available_providers()
    # onnxruntime-gpu lists TensorRT's provider whether or not TensorRT itself is installed.
    usable = execution_provider is not ExecutionProvider.TENSORRT or tensorrt_loadable()
    if name in available and usable:
        return name
    # The reason first: a verdict table shows the first 120 characters.
    if name in available:  # listed, but TensorRT itself is missing
        raise ProviderUnavailableError(
            f"not run: TensorRT's libraries ({_TENSORRT_LIBRARIES[0]}) are not on this "
            "machine; install them (NVIDIA's Triton and TensorRT images have them; PyPI's "
            "tensorrt packages download them from NVIDIA at install time). onnxruntime "
            f"{ort.__version__} has the {name} but cannot load it"
        )
    raise ProviderUnavailableError(
        f"not run: this onnxruntime ({ort.__version__}) has no {name}; install "
        "onnxruntime-gpu, a CUDA build matching this machine's CUDA and cuDNN (its "
        f"providers here: {', '.join(available)})"
    )


@dataclass(frozen=True)
class ModelFiles:
    """The exported files a runner loads: one per batch bucket, or one for every bucket."""

    by_bucket: Mapping[int, Path]
    static: bool


def static_batches(execution_provider: ExecutionProvider, cuda_graphs: bool) -> bool:
    """One static-shape file per bucket for CUDA graphs and TensorRT engines, else one file."""
    return execution_provider is ExecutionProvider.TENSORRT or cuda_graphs


def export_precision(execution_provider: ExecutionProvider, precision: str) -> str:
    """TensorRT takes the fp32 graph and builds fp16 kernels itself (trt_fp16_enable)."""
    return "fp32" if execution_provider is ExecutionProvider.TENSORRT else precision


def prepare_model_files(
    builtin: str,
    weights: Path | None,
    seed: int,
    cache_dir: Path,
    *,
    precision: str,
    input_format: str,
    max_batch_size: int,
    execution_provider: ExecutionProvider,
    cuda_graphs: bool,
) -> ModelFiles:
    """Export (or find in the cache) what the runners load; checked against PyTorch."""
    wire = "fp32" if input_format == "fp32" else "uint8"  # JPEGs are decoded into UINT8
    buckets = device_runner.batch_buckets(max_batch_size)
    static = static_batches(execution_provider, cuda_graphs)

    def export(batch: int | None) -> Path:
        return onnx_export.prepare_serving_onnx(
            builtin, weights, seed, cache_dir,
            precision=export_precision(execution_provider, precision), wire=wire, batch=batch,
        )  # fmt: skip

    if static:
        return ModelFiles({bucket: export(bucket) for bucket in buckets}, static=True)
    shared = export(None)
    return ModelFiles({bucket: shared for bucket in buckets}, static=False)


class OrtRunner(device_runner.DeviceRunner):
    """One model instance in ONNX Runtime on one device (see the module docstring)."""

    def __init__(
        self,
        files: ModelFiles,
        config: model.ClipVisionConfig,
        *,
        device: torch.device,
        precision: str,
        input_format: str,
        max_batch_size: int,
        cuda_graphs: bool,
        execution_provider: ExecutionProvider,
        trt_cache_dir: Path | None = None,
        trt_workspace_bytes: int = 1 << 30,
        intra_op_threads: int | None = None,
    ) -> None:
        on_gpu = execution_provider is not ExecutionProvider.CPU
        if on_gpu != (device.type == "cuda"):
            raise ValueError(
                f"execution provider {execution_provider.value} cannot run on {device}"
            )
        if cuda_graphs and not files.static:
            raise ValueError("CUDA graphs need one static-shape model file per batch bucket")
        self._setup_buffers(
            config, device=device, precision=precision, input_format=input_format,
            max_batch_size=max_batch_size, cuda_graphs=cuda_graphs,
        )  # fmt: skip
        self._ort = import_onnxruntime()
        self.execution_provider = execution_provider
        self._provider = check_provider(execution_provider)
        self._files = files
        self._trt_cache_dir = trt_cache_dir
        self._trt_workspace_bytes = trt_workspace_bytes
        self._intra_op_threads = intra_op_threads
        self._embed_dim = config.embed_dim
        # Why ORT would not capture CUDA graphs, when it would not (reported in `runtime`).
        self.graphs_refused: str | None = None
        self._run_options = self._ort.RunOptions()
        if on_gpu:
            # The output copy and the timing events queue behind the model on our stream.
            self._run_options.add_run_config_entry("disable_synchronize_execution_providers", "1")
        self._sessions: dict[Path, Any] = {}
        self._bindings: dict[int, Any] = {}
        self._device_out: dict[int, torch.Tensor] = {}

    @property
    def runtime_version(self) -> str:
        return str(self._ort.__version__)

    def _provider_options(self, bucket: int, graphs: bool) -> list[tuple[str, dict[str, str]]]:
        if self.execution_provider is ExecutionProvider.CPU:
            return [("CPUExecutionProvider", {})]
        assert self._stream is not None
        common = {
            "device_id": str(self.device.index or 0),
            # Ours, not ORT's: launch returns before the GPU is done, and what follows on
            # the stream (the output copy, the events) waits for the model by stream order.
            "has_user_compute_stream": "1",
            "user_compute_stream": str(self._stream.cuda_stream),
        }
        cuda = ("CUDAExecutionProvider", {**common, "enable_cuda_graph": "1" if graphs else "0"})
        if self.execution_provider is ExecutionProvider.CUDA:
            return [cuda]
        shape = f"{model.INPUT_NAME}:{bucket}x3x{self._size}x{self._size}"
        cache = str(self._trt_cache_dir) if self._trt_cache_dir else ""
        tensorrt = {
            **common,
            "trt_fp16_enable": "1" if self.precision == "fp16" else "0",
            "trt_max_workspace_size": str(self._trt_workspace_bytes),
            # This bucket's shape is the engine's only profile: no rebuild for a new shape.
            "trt_profile_min_shapes": shape,
            "trt_profile_opt_shapes": shape,
            "trt_profile_max_shapes": shape,
            "trt_engine_cache_enable": "1" if cache else "0",
            "trt_engine_cache_path": cache,
            "trt_timing_cache_enable": "1" if cache else "0",
            "trt_timing_cache_path": cache,
            "trt_cuda_graph_enable": "1" if graphs else "0",
        }
        # Nodes TensorRT does not take run on CUDA, as ORT's documentation prescribes.
        return [("TensorrtExecutionProvider", tensorrt), ("CUDAExecutionProvider", common)]

    def _session(self, bucket: int, graphs: bool) -> Any:
        path = self._files.by_bucket[bucket]
        if not self._files.static and path in self._sessions:
            return self._sessions[path]
        ort = self._ort
        options = ort.SessionOptions()
        options.log_severity_level = 3  # ORT's warnings about CPU shape nodes are ours to say
        # On the CPU provider, ORT_ENABLE_ALL only adds a layout pass (NCHWc, for convs) that
        # crashes ORT 1.32 on the fp16 graph with a dynamic batch axis: extended there.
        levels = ort.GraphOptimizationLevel
        on_cpu = self.execution_provider is ExecutionProvider.CPU
        options.graph_optimization_level = (
            levels.ORT_ENABLE_EXTENDED if on_cpu else levels.ORT_ENABLE_ALL
        )
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.inter_op_num_threads = 1
        if self._intra_op_threads:
            options.intra_op_num_threads = self._intra_op_threads
        providers = self._provider_options(bucket, graphs)
        session = ort.InferenceSession(str(path), options, providers=providers)
        # ORT falls back to CPU when a GPU provider fails to initialise: refuse to serve so.
        if session.get_providers()[0] != providers[0][0]:
            raise ProviderUnavailableError(
                f"onnxruntime did not enable {providers[0][0]} for {path.name} (session "
                f"providers: {', '.join(session.get_providers())}); refusing a fallback"
            )
        self._sessions[path] = session
        return session

    def _bind(self, bucket: int, session: Any) -> Any:
        """The bucket's buffers bound to the session; a graph replays on these addresses."""
        device_type = "cuda" if self.device.type == "cuda" else "cpu"
        device_id = self.device.index or 0
        inputs = self._device_in[bucket]
        outputs = torch.empty((bucket, self._embed_dim), dtype=torch.float32, device=self.device)
        binding = session.io_binding()
        binding.bind_input(
            model.INPUT_NAME, device_type, device_id,
            _NUMPY_DTYPES[inputs.dtype], list(inputs.shape), inputs.data_ptr(),
        )  # fmt: skip
        binding.bind_output(
            model.OUTPUT_NAME, device_type, device_id,
            np.float32, list(outputs.shape), outputs.data_ptr(),
        )  # fmt: skip
        self._device_out[bucket] = outputs
        return binding

    def warm(self, batch_sizes: Sequence[int]) -> None:
        """Create, bind and run every bucket's session (capturing its graph, building its
        TensorRT engine); on CPU only the buckets of `batch_sizes`, like the PyTorch runner."""
        if self.device.type == "cuda":
            sizes = sorted(self.buckets, reverse=True)
        else:
            sizes = sorted({device_runner.bucket_for(b, self.buckets) for b in batch_sizes})
        for bucket in sizes:
            started = time.perf_counter()
            self._warm_bucket(bucket)
            log.info(
                "warmed batch bucket %d on %s (onnxruntime %s, %s%s) in %.3f s",
                bucket, self.device, self.execution_provider.value, self.precision,
                ", CUDA graph" if self.cuda_graphs else "", time.perf_counter() - started,
            )  # fmt: skip

    def _warm_bucket(self, bucket: int) -> None:
        try:
            self._warm_session(bucket, graphs=self.cuda_graphs)
        except ProviderUnavailableError:
            raise  # not the graphs' fault: no provider to run them
        except Exception as error:
            if not self.cuda_graphs:
                raise
            # ORT refuses a capture when a node would run on the CPU, or an EP lacks support.
            self.graphs_refused = f"{type(error).__name__}: {str(error).splitlines()[0][:300]}"
            log.warning(
                "ONNX Runtime refused CUDA graphs (%s); running without", self.graphs_refused
            )
            self.cuda_graphs = False
            self._sessions.clear()
            self._bindings.clear()
            for done in [b for b in self.buckets if b > bucket]:
                self._warm_session(done, graphs=False)
            self._warm_session(bucket, graphs=False)

    def _warm_session(self, bucket: int, graphs: bool) -> None:
        session = self._session(bucket, graphs)
        self._bindings[bucket] = self._bind(bucket, session)
        for _ in range(_WARM_RUNS):
            with self._on_stream():
                self._forward(bucket)
            self._sync()

    def _forward(self, bucket: int) -> torch.Tensor:
        binding = self._bindings.get(bucket)
        if binding is None:  # on CPU only the asked buckets were warmed: bind this one now
            binding = self._bindings[bucket] = self._bind(bucket, self._session(bucket, False))
        session = self._sessions[self._files.by_bucket[bucket]]
        session.run_with_iobinding(binding, self._run_options)
        return self._device_out[bucket]
