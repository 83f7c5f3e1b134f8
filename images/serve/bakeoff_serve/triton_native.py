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
from typing import Final, Literal, get_args

from bakeoff_serve import model as model_lib
from bakeoff_serve import triton_repo

NativeExecutionProvider = Literal["cuda", "tensorrt"]
NATIVE_EXECUTION_PROVIDERS: Final[tuple[str, ...]] = get_args(NativeExecutionProvider)
PLATFORM: Final = "onnxruntime_onnx"
DEFAULT_TRT_WORKSPACE_BYTES: Final = 1 << 30  # the backend's own default, 1 GiB
TRT_CACHE_DIRNAME: Final = "trt-cache"
# TensorRT precision_mode values the backend accepts ("INT8" needs calibration: not offered).
_PRECISION_MODE: Final[dict[str, str]] = {"fp32": "FP32", "fp16": "FP16"}


def runtime_description(
    execution_provider: NativeExecutionProvider, precision: triton_repo.Precision
) -> str:
    """What serves the model, as results report it (`parameters.runtime` in the config)."""
    provider = triton_repo.ORT_PROVIDER_NAMES[execution_provider]
    suffix = f" {precision}" if precision != "fp32" else ""
    return f"onnxruntime {provider}{suffix} via Triton onnxruntime backend"


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


def _validate_native(
    execution_provider: str,
    precision: str,
    gpus: Sequence[int],
    trt_workspace_bytes: int,
    trt_cache_dir: str,
) -> None:
    if execution_provider not in NATIVE_EXECUTION_PROVIDERS:
        raise ValueError(
            f"execution provider {execution_provider!r} is not one of "
            f"{', '.join(NATIVE_EXECUTION_PROVIDERS)} (the native configs are for GPU pools; "
            "CPU serving uses the python-backend format)"
        )
    if precision not in _PRECISION_MODE:
        raise ValueError(f"precision {precision!r} is not one of {', '.join(_PRECISION_MODE)}")
    if not gpus:
        raise ValueError("gpus must list at least one GPU index")
    if any(gpu < 0 for gpu in gpus) or len(set(gpus)) != len(gpus):
        raise ValueError(f"gpus must be distinct indices >= 0, got {list(gpus)}")
    if trt_workspace_bytes < 1:
        raise ValueError(f"trt_workspace_bytes must be >= 1, got {trt_workspace_bytes}")
    if not PurePosixPath(trt_cache_dir).is_absolute():
        raise ValueError(f"trt_cache_dir must be an absolute path, got {trt_cache_dir!r}")


def _accelerator_params(params: dict[str, str], indent: str) -> list[str]:
    """An accelerator's `parameters { key value }` (a plain string map, unlike the model's)."""
    q = triton_repo._quote
    return [f"{indent}parameters {{ key: {q(k)} value: {q(v)} }}" for k, v in params.items()]


def _model_params(params: dict[str, str]) -> list[str]:
    """The model's `parameters [ { key value { string_value } } ]` entries."""
    q = triton_repo._quote
    return [f"  {{ key: {q(k)} value: {{ string_value: {q(v)} }} }}" for k, v in params.items()]


def build_onnxruntime_config(
    model_name: str,
    *,
    max_batch_size: int,
    execution_provider: NativeExecutionProvider,
    precision: triton_repo.Precision = "fp32",
    batch_sizes: Sequence[int],
    preferred_batch_sizes: Sequence[int],
    max_queue_delay_us: int,
    gpus: Sequence[int],
    image_size: int,
    embed_dim: int,
    trt_workspace_bytes: int = DEFAULT_TRT_WORKSPACE_BYTES,
    trt_cache_dir: str,
    onnx_filename: str = triton_repo.ONNX_FILENAME,
    model_provenance: str = "",
) -> str:
    """config.pbtxt text for `platform: "onnxruntime_onnx"` on GPUs. Pure.

    `batch_sizes` are the sizes the suite sends: each gets a `model_warmup` entry (Triton
    runs them before it reports ready, so with TensorRT the engine is built, or loaded from
    the cache, before the readiness probe passes) and they set the TensorRT profile's
    optimum. One instance per listed GPU.
    """
    warmup = sorted(set(batch_sizes))
    # Same rules as the Python-backend generator (names, sizes, fp16 only with TensorRT).
    triton_repo._validate(
        model_name,
        max_batch_size,
        execution_provider,
        image_size,
        embed_dim,
        preferred_batch_sizes,
        max_queue_delay_us,
        1,
        precision,
        warmup,
        None,
    )
    _validate_native(execution_provider, precision, gpus, trt_workspace_bytes, trt_cache_dir)
    sample_dims = [3, image_size, image_size]
    q = triton_repo._quote
    dims = triton_repo._dims
    lines = [
        "# Generated by bakeoff_serve.triton_native; change the generator, not this file.",
        f"name: {q(model_name)}",
        f"platform: {q(PLATFORM)}",
        f"default_model_filename: {q(onnx_filename)}",
        f"max_batch_size: {max_batch_size}",
        "input [",
        "  {",
        f"    name: {q(model_lib.INPUT_NAME)}",
        "    data_type: TYPE_FP32",
        f"    dims: {dims(sample_dims)}",
        "  }",
        "]",
        "output [",
        "  {",
        f"    name: {q(model_lib.OUTPUT_NAME)}",
        "    data_type: TYPE_FP32",
        f"    dims: {dims([embed_dim])}",
        "  }",
        "]",
        "dynamic_batching {",
    ]
    if preferred_batch_sizes:
        lines.append(f"  preferred_batch_size: {dims(sorted(preferred_batch_sizes))}")
    lines += [
        f"  max_queue_delay_microseconds: {max_queue_delay_us}",
        "}",
        # count is per listed GPU: one ORT session (and CUDA stream) on each card.
        f"instance_group [ {{ kind: KIND_GPU count: 1 gpus: {dims(sorted(gpus))} }} ]",
    ]
    if execution_provider == "tensorrt":
        accelerator = {
            "precision_mode": _PRECISION_MODE[precision],
            "max_workspace_size_bytes": str(trt_workspace_bytes),
            # Engines and tactic timings on a volume: a restarted container loads them
            # instead of rebuilding (minutes for a ViT). ORT keys engines by model, profile
            # and GPU, so one directory serves every instance.
            "trt_engine_cache_enable": "1",
            "trt_engine_cache_path": trt_cache_dir,
            "trt_timing_cache_enable": "1",
            "trt_timing_cache_path": trt_cache_dir,
            **profile_shapes(model_lib.INPUT_NAME, image_size, max_batch_size, warmup),
        }
        lines += [
            "optimization {",
            "  execution_accelerators {",
            "    gpu_execution_accelerator [",
            "      {",
            '        name: "tensorrt"',
            *_accelerator_params(accelerator, "        "),
            "      }",
            "    ]",
            "  }",
            "}",
        ]
    # With KIND_GPU and no accelerator the backend runs the CUDA execution provider: the
    # "cuda" config needs no optimization block.
    lines += [
        "parameters [",
        ",\n".join(
            _model_params(
                {
                    "runtime": runtime_description(execution_provider, precision),
                    "execution_provider": execution_provider,
                    "precision": precision,
                    **({"model_provenance": model_provenance} if model_provenance else {}),
                }
            )
        ),
        "]",
    ]
    if warmup:
        entries = [
            "\n".join(
                [
                    "  {",
                    f'    name: "batch_{size}"',
                    f"    batch_size: {size}",
                    "    inputs {",
                    f"      key: {q(model_lib.INPUT_NAME)}",
                    f"      value: {{ data_type: TYPE_FP32 dims: {dims(sample_dims)} "
                    "zero_data: true }",
                    "    }",
                    "  }",
                ]
            )
            for size in warmup
        ]
        lines += ["model_warmup [", ",\n".join(entries), "]"]
    return "\n".join(lines) + "\n"


def write_native_repository(
    repo_dir: Path,
    model_name: str,
    onnx_path: Path,
    *,
    max_batch_size: int,
    execution_provider: NativeExecutionProvider,
    precision: triton_repo.Precision = "fp32",
    batch_sizes: Sequence[int],
    preferred_batch_sizes: Sequence[int],
    max_queue_delay_us: int,
    gpus: Sequence[int],
    image_size: int,
    embed_dim: int,
    trt_workspace_bytes: int = DEFAULT_TRT_WORKSPACE_BYTES,
    trt_cache_dir: Path | None = None,
) -> Path:
    """Write `<repo_dir>/<model_name>/` (config, 1/model.onnx); returns that dir.

    `trt_cache_dir=None` puts the cache in `<repo_dir>/<model_name>/trt-cache` (Triton
    ignores non-numeric subdirectories of a model), which lives as long as the repository
    volume. The path is written as given: the server must see it at the same place.
    """
    model_dir = repo_dir / model_name
    cache_dir = trt_cache_dir if trt_cache_dir is not None else model_dir / TRT_CACHE_DIRNAME
    text = build_onnxruntime_config(
        model_name,
        max_batch_size=max_batch_size,
        execution_provider=execution_provider,
        precision=precision,
        batch_sizes=batch_sizes,
        preferred_batch_sizes=preferred_batch_sizes,
        max_queue_delay_us=max_queue_delay_us,
        gpus=gpus,
        image_size=image_size,
        embed_dim=embed_dim,
        trt_workspace_bytes=trt_workspace_bytes,
        trt_cache_dir=str(cache_dir.absolute()),
        model_provenance=triton_repo.export_provenance(onnx_path),
    )
    if not onnx_path.is_file():
        raise FileNotFoundError(f"ONNX model {onnx_path} does not exist; export it first")
    version_dir = model_dir / triton_repo.MODEL_VERSION
    version_dir.mkdir(parents=True, exist_ok=True)
    triton_repo._place_file(onnx_path, version_dir / triton_repo.ONNX_FILENAME)
    if execution_provider == "tensorrt" and trt_cache_dir is None:
        cache_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "config.pbtxt").write_text(text)
    return model_dir
