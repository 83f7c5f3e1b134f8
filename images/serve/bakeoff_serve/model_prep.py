"""Model prep for Triton: export the builtin model to ONNX (cached) and write a model
repository. One function, called by the local runner and by the `triton-prep` init container
(`python -m bakeoff_serve triton-prep`).

Two repository formats: "python-backend" (what the bundled tritonserver serves: CPU mock,
local runs) and "onnxruntime-native" (NVIDIA's Triton images on GPU pools, see
`triton_native`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Final, Literal, get_args

from bakeoff_serve import onnx_export, triton_native, triton_repo
from bakeoff_serve.model_configs import BUILTIN_MODELS
from bakeoff_serve.options import ExecutionProvider, Precision

Runtime = Literal["python-backend", "onnxruntime-native"]
RUNTIMES: Final[tuple[str, ...]] = get_args(Runtime)


def prepare_triton_repository(
    repo_dir: Path,
    model_name: str,
    builtin: str,
    weights: Path | None,
    seed: int,
    cache_dir: Path,
    *,
    max_batch_size: int,
    execution_provider: ExecutionProvider,
    precision: Precision,
    preferred_batch_sizes: Sequence[int],
    max_queue_delay_us: int,
    warmup_batch_sizes: Sequence[int],
    runtime: Runtime = "python-backend",
    gpus: Sequence[int] = (0,),
    trt_cache_dir: Path | None = None,
    trt_workspace_bytes: int = triton_native.DEFAULT_TRT_WORKSPACE_BYTES,
) -> Path:
    """Write `<repo_dir>/<model_name>/` and return `repo_dir` (what --model-repository takes).

    `gpus`, `trt_cache_dir` and `trt_workspace_bytes` apply to "onnxruntime-native" only.
    """
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime {runtime!r} is not one of {', '.join(RUNTIMES)}")
    config = BUILTIN_MODELS[builtin]
    native = runtime == "onnxruntime-native"
    if native and execution_provider not in triton_native.NATIVE_EXECUTION_PROVIDERS:
        # Checked before the (slow) export: the native format is for NVIDIA's GPU images.
        raise ValueError("the onnxruntime-native format needs execution provider cuda or tensorrt")
    options = triton_repo.TritonModelOptions(
        model_name=model_name,
        image_size=config.image_size,
        embed_dim=config.embed_dim,
        max_batch_size=max_batch_size,
        execution_provider=execution_provider,
        precision=precision,
        preferred_batch_sizes=tuple(preferred_batch_sizes),
        max_queue_delay_us=max_queue_delay_us,
        warmup_batch_sizes=tuple(warmup_batch_sizes),
    )
    onnx_path = onnx_export.prepare_onnx(builtin, weights, seed, cache_dir / "onnx")
    if native:
        triton_native.write_native_repository(
            repo_dir,
            options,
            onnx_path,
            gpus=gpus,
            trt_workspace_bytes=trt_workspace_bytes,
            trt_cache_dir=trt_cache_dir,
        )
    else:
        triton_repo.write_python_backend_repository(repo_dir, options, onnx_path)
    return repo_dir
