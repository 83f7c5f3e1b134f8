"""Model prep for Triton: export the builtin model to ONNX (cached) and write the model
repository the bundled tritonserver serves. One function, called by the local runner and by
the `triton-prep` init container (`python -m bakeoff_serve triton-prep`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from bakeoff_serve import onnx_export, triton_repo
from bakeoff_serve.model_configs import BUILTIN_MODELS


def prepare_triton_repository(
    repo_dir: Path,
    model_name: str,
    builtin: str,
    weights: Path | None,
    seed: int,
    cache_dir: Path,
    *,
    max_batch_size: int,
    execution_provider: triton_repo.ExecutionProvider,
    precision: triton_repo.Precision,
    preferred_batch_sizes: Sequence[int],
    max_queue_delay_us: int,
    warmup_batch_sizes: Sequence[int],
) -> Path:
    """Write `<repo_dir>/<model_name>/` and return `repo_dir` (what --model-repository takes)."""
    config = BUILTIN_MODELS[builtin]
    onnx_path = onnx_export.prepare_onnx(builtin, weights, seed, cache_dir / "onnx")
    triton_repo.write_python_backend_repository(
        repo_dir,
        model_name,
        onnx_path,
        max_batch_size=max_batch_size,
        execution_provider=execution_provider,
        image_size=config.image_size,
        embed_dim=config.embed_dim,
        preferred_batch_sizes=list(preferred_batch_sizes),
        max_queue_delay_us=max_queue_delay_us,
        precision=precision,
        warmup_batch_sizes=list(warmup_batch_sizes),
    )
    return repo_dir
