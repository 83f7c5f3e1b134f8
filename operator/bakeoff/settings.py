"""Operator settings: image references, CPU-mock mode, timings. Read once from the environment.

The Helm chart sets these as environment variables (BAKEOFF_*); tests build them directly.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class OperatorSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="BAKEOFF_", extra="ignore", frozen=True)

    pytorch_image: str = Field(default="ghcr.io/bakeoff-dev/serve:0.1.0")
    triton_image: str = Field(
        default="nvcr.io/nvidia/tritonserver:24.10-py3",
        description="NVIDIA's Triton image, with the native ONNX Runtime backend (GPU pools)",
    )
    cpu_mock_image: str = Field(
        default="ghcr.io/bakeoff-dev/serve:0.1.0-cpu",
        description="PyTorch server on CPU and the bundled tritonserver (CPU-mock mode)",
    )
    model_prep_image: str = Field(default="ghcr.io/bakeoff-dev/serve:0.1.0")
    bench_image: str = Field(default="ghcr.io/bakeoff-dev/bench-job:0.1.0")
    cpu_mock: bool = Field(
        default=False,
        description="Run every cell on CPU with no GPU requests, on nodes labelled like GPU pools",
    )
    backend_cpu_request: str = "1"
    backend_memory_request: str = "2Gi"
    bench_cpu_request: str = "1"
    bench_memory_request: str = "512Mi"
    bench_anti_affinity: Literal["required", "preferred"] = Field(
        default="required",
        description="Keep a benchmark pod off its backend's node (required), or only prefer to: "
        "one-worker clusters must share it (the result is flagged client-shares-node)",
    )
    reconcile_interval_s: float = Field(default=10.0, gt=0)
    result_grace_s: float = Field(
        default=60.0, gt=0, description="Wait for a result after its Job succeeded"
    )


@lru_cache(maxsize=1)
def get_settings() -> OperatorSettings:
    return OperatorSettings()
