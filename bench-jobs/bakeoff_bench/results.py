"""The result of one cell (backend x pool): what the Job writes and analysis reads.

Designed for N client pods from the start: latency is kept as a mergeable histogram beside
the summary, so results of several clients of one scenario merge exactly (`stats.merge`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field

from bakeoff_bench.models import StrictModel

LOW_SAMPLE_THRESHOLD = {"p50": 10, "p95": 20, "p99": 100}


class LatencyHistogram(StrictModel):
    """Log-linear buckets: bucket i holds values in [base^i, base^(i+1)) microseconds."""

    base: float = Field(description="Bucket growth factor, e.g. 1.01 for 1% resolution")
    counts: dict[int, int] = Field(default_factory=dict, description="bucket index -> samples")


class LatencyStats(StrictModel):
    count: int = Field(ge=0, description="Samples behind every number here")
    mean_ms: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    min_ms: float
    max_ms: float
    low_sample_percentiles: list[str] = Field(
        default_factory=list,
        description="Percentiles with too few samples to trust (p99 needs >= 100)",
    )
    histogram: LatencyHistogram | None = None


class ServerTimes(StrictModel):
    """Server-side time per request, from the metric diff over exactly the measured window."""

    requests: int = Field(description="Delta of nv_inference_request_success")
    inferences: int = Field(description="Delta of nv_inference_count (images)")
    executions: int = Field(description="Delta of nv_inference_exec_count (model runs)")
    request_ms: float = Field(description="Mean request duration inside the server")
    queue_ms: float = Field(description="Mean queue time per request")
    compute_input_ms: float
    compute_infer_ms: float
    compute_output_ms: float

    @property
    def compute_ms(self) -> float:
        return self.compute_input_ms + self.compute_infer_ms + self.compute_output_ms


class RequestError(StrictModel):
    error_type: str
    message: str
    count: int = 1


class ScenarioResult(StrictModel):
    scenario: Literal["single", "batch"]
    batch_size: int
    concurrency: int
    requests: int = Field(description="Measured requests that succeeded")
    failed: int = 0
    errors: list[RequestError] = Field(default_factory=list)
    duration_s: float = Field(description="Wall time of the measured window")
    requests_per_s: float
    inferences_per_s: float = Field(description="Images per second (requests x batch size)")
    latency: LatencyStats
    server: ServerTimes | None = None


class ServerInfo(StrictModel):
    """Which server and runtime produced the numbers (from OIP server/model metadata)."""

    name: str
    version: str
    extensions: list[str] = Field(default_factory=list)
    model_platform: str = ""
    runtime: str = Field(default="", description="e.g. 'pytorch 2.5 cpu fp32'")
    model_provenance: str = ""


class Environment(StrictModel):
    hostname: str
    client_cpu: str
    client_cores: int
    python: str
    packages: dict[str, str] = Field(default_factory=dict)
    node: str | None = Field(default=None, description="Kubernetes node of the load generator")


class CellResult(StrictModel):
    api_version: Literal["bakeoff.dev/v1alpha1"] = "bakeoff.dev/v1alpha1"
    suite: str
    backend: str
    pool: str
    started_at: datetime
    finished_at: datetime
    server: ServerInfo
    environment: Environment
    seed: int
    single: ScenarioResult | None = None
    batch_sweep: list[ScenarioResult] = Field(default_factory=list)
    parity_outputs: list[list[float]] | None = Field(
        default=None, description="Outputs for the seeded parity images, for the parity gate"
    )
    memory_bytes: int | None = Field(default=None, description="Server memory at the end")
    memory_kind: Literal["gpu", "host-rss"] | None = None
    time_to_ready_s: float | None = None
    notes: list[str] = Field(default_factory=list)
