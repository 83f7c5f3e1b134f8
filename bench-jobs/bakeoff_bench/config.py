"""What one benchmark run measures: the input of `python -m bakeoff_bench`.

The operator (or the local runner) derives a `BenchConfig` from a `BenchmarkSuite` cell.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from bakeoff_bench.models import StrictModel


class Target(StrictModel):
    """Where the backend under test answers."""

    http_url: str = Field(
        description="Base URL of the OIP HTTP endpoint, e.g. http://127.0.0.1:8000"
    )
    metrics_url: str | None = Field(
        default=None, description="Prometheus text endpoint with Triton's nv_inference_* names"
    )
    model_name: str = Field(description="Model name in /v2/models/{name}", min_length=1)


class SingleScenario(StrictModel):
    """Sequential single-image requests: the latency a lone user sees."""

    requests: int = Field(default=200, gt=0, le=1_000_000, description="Measured requests")
    warmup: int = Field(default=20, ge=0, le=100_000, description="Unmeasured requests first")


class BatchSweepScenario(StrictModel):
    """One request stream per batch size, to draw throughput and latency against batch size."""

    batch_sizes: list[int] = Field(default=[1, 4, 8, 16, 32], min_length=1)
    requests: int = Field(default=50, gt=0, le=1_000_000, description="Measured requests per size")
    warmup: int = Field(default=5, ge=0, le=100_000, description="Unmeasured requests per size")
    concurrency: int = Field(default=1, gt=0, le=1024, description="Requests in flight")

    @model_validator(mode="after")
    def _sizes_positive_and_unique(self) -> BatchSweepScenario:
        bad = [b for b in self.batch_sizes if b <= 0]
        if bad:
            raise ValueError(f"batchSizes must be positive, got {bad}")
        if len(set(self.batch_sizes)) != len(self.batch_sizes):
            raise ValueError(f"batchSizes must not repeat, got {self.batch_sizes}")
        return self


class BenchConfig(StrictModel):
    suite: str
    backend: str
    pool: str
    target: Target
    single: SingleScenario | None = None
    batch_sweep: BatchSweepScenario | None = None
    seed: int = Field(default=0, description="Seed of the input images, the same for every backend")
    parity_batch: int = Field(
        default=2, ge=0, le=64, description="Seeded images whose outputs are kept for parity"
    )
    request_timeout_s: float = Field(default=60.0, gt=0)
    ready_timeout_s: float = Field(default=300.0, gt=0)
