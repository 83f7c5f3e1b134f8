"""Operator settings: image references, CPU-mock mode, timings. Read once from the environment.

The Helm chart sets these as environment variables (BAKEOFF_*); tests build them directly.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any, Final, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# repository[:tag][@sha256:<64 hex>]: a tag, a digest (pinned), or both (the digest wins).
IMAGE_REFERENCE: Final = re.compile(
    r"^[a-z0-9]+(?:(?:[._]|__|-+|:[0-9]+/|/)[a-z0-9]+)*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[a-f0-9]{64})?$"
)
# Who may scrape a backend's metrics where NetworkPolicies are on: Prometheus pods (the
# prometheus-operator's and the community chart's label) in any namespace.
DEFAULT_SCRAPERS: Final[list[dict[str, Any]]] = [
    {"namespaceSelector": {},
     "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}},
]  # fmt: skip


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
    network_policies: bool = Field(
        default=True,
        description="A NetworkPolicy per backend: only its own bench Job and the metrics "
        "scrapers reach it (enforced where the cluster's network plugin enforces policies)",
    )
    metrics_scrapers: list[dict[str, Any]] = Field(
        default_factory=lambda: [dict(peer) for peer in DEFAULT_SCRAPERS],
        description="NetworkPolicy peers (from:) that may scrape a backend's metrics port",
    )
    reconcile_interval_s: float = Field(default=10.0, gt=0)
    result_grace_s: float = Field(
        default=60.0, gt=0, description="Wait for a result after its Job succeeded"
    )

    @field_validator(
        "pytorch_image", "triton_image", "cpu_mock_image", "model_prep_image", "bench_image"
    )
    @classmethod
    def _image_reference(cls, value: str) -> str:
        if not IMAGE_REFERENCE.match(value):
            raise ValueError(
                f"{value!r} is not an image reference: use repository:tag, repository@sha256:"
                "<64 hex digits> (pinned) or repository:tag@sha256:<digest>"
            )
        return value


@lru_cache(maxsize=1)
def get_settings() -> OperatorSettings:
    return OperatorSettings()
