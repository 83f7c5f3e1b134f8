"""Model repositories for NVIDIA's Triton images: the native ONNX Runtime backend.

Called by `model_prep.prepare_triton_repository(runtime="onnxruntime-native")`, i.e. the
model-prep init container on GPU pools (`triton-prep --format native`). The config text
comes from the pure `build_onnxruntime_config`, unit-tested by parsing it with Triton's own
ModelConfig protobuf; `write_native_repository` only puts files in place:

    <repo>/<model_name>/config.pbtxt
    <repo>/<model_name>/1/model.onnx
    <repo>/<model_name>/trt-cache/      (default TensorRT engine + timing cache)

The bundled tritonserver of the nvidia-pytriton wheel has no onnxruntime backend, so these
repositories are checked against the schema here and loaded only on real GPU clusters.

Parameter names are the ONNX Runtime backend's (github.com/triton-inference-server/
onnxruntime_backend, README "ONNX Runtime with TensorRT optimization" and its table
"Parameter mapping between ONNX Runtime and Triton ONNXRuntime Backend").
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Final

from bakeoff_serve import model_configs, triton_repo
from bakeoff_serve.options import ExecutionProvider, Precision
from bakeoff_serve.triton_repo import TritonModelOptions

# GPU pools only: CPU serving uses the python-backend format.
NATIVE_EXECUTION_PROVIDERS: Final = frozenset({ExecutionProvider.CUDA, ExecutionProvider.TENSORRT})
PLATFORM: Final = "onnxruntime_onnx"
DEFAULT_TRT_WORKSPACE_BYTES: Final = 1 << 30  # the backend's own default, 1 GiB
TRT_CACHE_DIRNAME: Final = "trt-cache"
# TensorRT precision_mode values the backend accepts ("INT8" needs calibration: not offered).
_PRECISION_MODE: Final[dict[Precision, str]] = {Precision.FP32: "FP32", Precision.FP16: "FP16"}


def profile_shapes(
    input_name: str, image_size: int, max_batch_size: int, batch_sizes: Sequence[int]
) -> dict[str, str]:
    """TensorRT optimisation profile as `trt_profile_{min,opt,max}_shapes` values.

    The dynamic batcher may form any batch from 1 to max_batch_size, so the profile spans
    exactly that; the optimum is the largest batch the suite sends (its throughput point).
    Format documented by the backend: "input:d0xd1x...".
    """
    opt = max(batch_sizes) if batch_sizes else max_batch_size

    def shape(batch: int) -> str:
        return f"{input_name}:{batch}x3x{image_size}x{image_size}"

    return {
        "trt_profile_min_shapes": shape(1),
        "trt_profile_opt_shapes": shape(opt),
        "trt_profile_max_shapes": shape(max_batch_size),
    }


def _check_native(
    execution_provider: ExecutionProvider,
    gpus: Sequence[int],
    trt_workspace_bytes: int,
    trt_cache_dir: str,
) -> None:
    if execution_provider not in NATIVE_EXECUTION_PROVIDERS:
        allowed = [p for p in ExecutionProvider if p in NATIVE_EXECUTION_PROVIDERS]
        raise ValueError(
            f"execution provider '{execution_provider}' is not one of "
            f"{', '.join(allowed)} (the native configs are for GPU pools; "
            "CPU serving uses the python-backend format)"
        )
    if not gpus:
        raise ValueError("gpus must list at least one GPU index")
    if any(gpu < 0 for gpu in gpus) or len(set(gpus)) != len(gpus):
        raise ValueError(f"gpus must be distinct indices >= 0, got {list(gpus)}")
    if trt_workspace_bytes < 1:
        raise ValueError(f"trt_workspace_bytes must be >= 1, got {trt_workspace_bytes}")
    if not PurePosixPath(trt_cache_dir).is_absolute():
        raise ValueError(f"trt_cache_dir must be an absolute path, got {trt_cache_dir!r}")


def _tensorrt_optimization(
    options: TritonModelOptions, trt_workspace_bytes: int, trt_cache_dir: str
) -> list[str]:
    """The `optimization` block that hands the model to TensorRT."""
    accelerator = {
        "precision_mode": _PRECISION_MODE[options.precision],
        "max_workspace_size_bytes": str(trt_workspace_bytes),
        # Engines and tactic timings on a volume: a restarted container loads them instead
        # of rebuilding (minutes for a ViT). ORT keys engines by model, profile and GPU, so
        # one directory serves every instance.
        "trt_engine_cache_enable": "1",
        "trt_engine_cache_path": trt_cache_dir,
        "trt_timing_cache_enable": "1",
        "trt_timing_cache_path": trt_cache_dir,
        **profile_shapes(
            model_configs.INPUT_NAME, options.image_size, options.max_batch_size, options.warmup
        ),
    }
    q = triton_repo.quote
    return [
        "optimization {",
        "  execution_accelerators {",
        "    gpu_execution_accelerator [",
        "      {",
        '        name: "tensorrt"',
        # An accelerator's parameters are a plain string map, unlike the model's.
        *(f"        parameters {{ key: {q(k)} value: {q(v)} }}" for k, v in accelerator.items()),
        "      }",
        "    ]",
        "  }",
        "}",
    ]


def build_onnxruntime_config(
    options: TritonModelOptions,
    *,
    gpus: Sequence[int],
    trt_cache_dir: str,
    trt_workspace_bytes: int = DEFAULT_TRT_WORKSPACE_BYTES,
    onnx_filename: str = triton_repo.ONNX_FILENAME,
    model_provenance: str = "",
) -> str:
    """config.pbtxt text for `platform: "onnxruntime_onnx"` on GPUs. Pure.

    The warm-up batch sizes are the sizes the suite sends: Triton runs them before it
    reports ready, so with TensorRT the engine is built, or loaded from the cache, before
    the readiness probe passes; they also set the TensorRT profile's optimum. One instance
    per listed GPU.
    """
    triton_repo.validate(options)
    _check_native(options.execution_provider, gpus, trt_workspace_bytes, trt_cache_dir)
    # With KIND_GPU and no accelerator the backend runs the CUDA execution provider: the
    # "cuda" config needs no optimization block.
    optimization = (
        _tensorrt_optimization(options, trt_workspace_bytes, trt_cache_dir)
        if options.execution_provider == ExecutionProvider.TENSORRT
        else []
    )
    parameters = {
        "runtime": triton_repo.runtime_description(options, "onnxruntime"),
        "execution_provider": str(options.execution_provider),
        "precision": str(options.precision),
        **({"model_provenance": model_provenance} if model_provenance else {}),
    }
    q, dims = triton_repo.quote, triton_repo.dims
    # count is per listed GPU: one ORT session (and CUDA stream) on each card.
    instance_group = f"instance_group [ {{ kind: KIND_GPU count: 1 gpus: {dims(sorted(gpus))} }} ]"
    return triton_repo.config_text(
        options,
        generator=__name__,
        serving=[f"platform: {q(PLATFORM)}", f"default_model_filename: {q(onnx_filename)}"],
        instance_group=instance_group,
        optimization=optimization,
        parameters=parameters,
    )


def write_native_repository(
    repo_dir: Path,
    options: TritonModelOptions,
    onnx_path: Path,
    *,
    gpus: Sequence[int],
    trt_workspace_bytes: int = DEFAULT_TRT_WORKSPACE_BYTES,
    trt_cache_dir: Path | None = None,
) -> Path:
    """Write `<repo_dir>/<model_name>/` (config, 1/model.onnx); returns that dir.

    `trt_cache_dir=None` puts the cache in `<repo_dir>/<model_name>/trt-cache` (Triton
    ignores non-numeric subdirectories of a model), which lives as long as the repository
    volume. The path is written as given: the server must see it at the same place.
    """
    model_dir = repo_dir / options.model_name
    cache_dir = trt_cache_dir if trt_cache_dir is not None else model_dir / TRT_CACHE_DIRNAME
    text = build_onnxruntime_config(
        options,
        gpus=gpus,
        trt_workspace_bytes=trt_workspace_bytes,
        trt_cache_dir=str(cache_dir.absolute()),
        model_provenance=triton_repo.export_provenance(onnx_path),
    )
    if not onnx_path.is_file():
        raise FileNotFoundError(f"ONNX model {onnx_path} does not exist; export it first")
    version_dir = model_dir / triton_repo.MODEL_VERSION
    version_dir.mkdir(parents=True, exist_ok=True)
    triton_repo.place_file(onnx_path, version_dir / triton_repo.ONNX_FILENAME)
    if options.execution_provider == ExecutionProvider.TENSORRT and trt_cache_dir is None:
        cache_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "config.pbtxt").write_text(text)
    return model_dir
