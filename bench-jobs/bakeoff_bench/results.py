"""The result of one cell (backend x pool): what the Job writes and analysis reads.

Designed for N client pods from the start: latency is kept as a mergeable histogram beside
the summary, so results of several clients of one scenario merge exactly (`stats.merge`).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from enum import StrEnum
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

    @property
    def executed_batch(self) -> float | None:
        """Images per model execution: the batches the server really ran. A dynamic batcher
        merges requests, and how much depends on how they arrive (a closed loop and
        perf_analyzer form different batches at the same concurrency): compare like with
        like."""
        return self.inferences / self.executions if self.executions > 0 else None


class FlagCode(StrEnum):
    """Why a number should not be taken at face value (computed by `flags`)."""

    LOW_SAMPLES = "low-samples"
    UNSTABLE = "unstable"
    QUEUE_DOMINATES = "queue-dominates"
    CLIENT_BOTTLENECK = "client-bottleneck"
    RATE_NOT_SUSTAINED = "rate-not-sustained"
    SLOW_FIRST_REQUEST = "slow-first-request"
    FIRST_REQUEST_FAILED = "first-request-failed"
    FAILED_REQUESTS = "failed-requests"
    NO_SERVER_TIMES = "no-server-times"
    CLIENT_SHARES_NODE = "client-shares-node"
    CLIENTS_DISAGREE = "clients-disagree"


class Flag(StrictModel):
    """One reason for doubt, in plain words; `error` means the number is not usable as is."""

    code: FlagCode
    severity: Literal["warning", "error"]
    message: str


class ColdStart(StrictModel):
    """The first request of every batch size, sent before any warm-up or measurement.

    A lazy engine build (TensorRT execution provider: minutes per shape) lands here and in
    no measured window. `time_to_ready_s` (process start to ready) is the caller's.
    """

    first_request_ms: dict[int, float] = Field(
        default_factory=dict, description="batch size -> latency of its first request"
    )
    first_request_errors: dict[int, str] = Field(
        default_factory=dict, description="batch size -> why its first request failed"
    )
    warmup_requests: int = Field(
        default=0, ge=0, description="Unmeasured requests of the whole run: firsts + warm-ups"
    )
    duration_s: float = Field(default=0.0, ge=0, description="Wall time of the first requests")


class WindowResult(StrictModel):
    """One steady-state window of a closed-loop scenario."""

    index: int = Field(ge=0)
    requests: int = Field(description="Requests that succeeded in the window")
    failed: int = 0
    duration_s: float
    requests_per_s: float
    p50_ms: float
    accepted: bool = Field(description="Part of the reported numbers")


class SteadyStateResult(StrictModel):
    """How the reported windows were chosen; the numbers come from accepted windows only."""

    stable: bool = Field(description="`consecutive` windows agreed within `tolerance`")
    tolerance: float
    consecutive: int
    windows: list[WindowResult]
    throughput_spread: float = Field(
        description="(max - min) / mean of requests/s over the accepted windows"
    )
    p50_spread: float = Field(description="(max - min) / mean of p50 over the accepted windows")
    drift: str = Field(
        default="",
        description="What moved one way across the windows, e.g. 'p50 +18% over 10 windows'",
    )


class OpenLoopResult(StrictModel):
    """A rate run: the schedule asked for, what was sent, and how late.

    Latency (the scenario's `latency`) is timed from each request's *scheduled* send time, so
    a client or server falling behind shows up in it (no coordinated omission);
    `service_latency` is timed from the actual send.
    """

    arrival: str
    requested_requests_per_s: float = Field(description="The configured rate")
    duration_seconds: float = Field(description="Length of the measured schedule")
    scheduled: int = Field(description="Sends in the schedule (Poisson: varies around rate x s)")
    sent: int
    sent_requests_per_s: float = Field(description="sent / durationSeconds")
    achieved_requests_per_s: float = Field(
        description="Successful answers per second, from the schedule start to the last answer"
    )
    schedule_lag: LatencyStats = Field(description="Actual send minus scheduled send")
    late_threshold_ms: float
    late: int = Field(description="Sends more than lateThresholdMs after their schedule")
    max_in_flight: int
    dropped_max_in_flight: int = Field(description="Not sent: maxInFlight already in flight")
    dropped_at_end: int = Field(description="Still unanswered drainSeconds after the schedule")
    service_latency: LatencyStats
    slo_p99_ms: float | None = None
    slo_met: bool | None = Field(
        default=None,
        description="p99 within the SLO and at most 1% of scheduled requests failed or dropped",
    )

    @property
    def dropped(self) -> int:
        return self.dropped_max_in_flight + self.dropped_at_end


class ClientOverhead(StrictModel):
    """The load generator's own load during the reported window(s)."""

    cpu_fraction: float = Field(description="Process CPU seconds / wall seconds (1.0 = a core)")
    loop_cpu_fraction: float = Field(description="The event-loop thread's share of one core")
    loop_lag_p99_ms: float = Field(description="p99 of a 5 ms ticker's sleep overshoot")
    loop_lag_max_ms: float
    loop_lag_samples: int
    client_minus_server_ms: float | None = Field(
        default=None,
        description="Client mean latency minus the server's mean request duration: network, "
        "HTTP and client time",
    )
    workers: int = Field(default=1, description="Client processes (worst one's numbers)")


class RequestError(StrictModel):
    error_type: str
    message: str
    count: int = 1


def merge_errors(*lists: list[RequestError]) -> list[RequestError]:
    """Error tallies of several windows or workers as one, most frequent first."""
    counts: dict[tuple[str, str], int] = {}
    for errors in lists:
        for error in errors:
            key = (error.error_type, error.message)
            counts[key] = counts.get(key, 0) + error.count
    ordered = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return [RequestError(error_type=t, message=m, count=c) for (t, m), c in ordered]


class ClientShareResult(StrictModel):
    """One client's part of a scenario several clients shared (the per-client breakdown)."""

    index: int = Field(ge=0, description="The client (pod completion index, or process)")
    node: str = Field(default="", description="Where it ran (node name), when known")
    concurrency: int = Field(description="Its closed-loop concurrency, or in-flight bound")
    requests: int = Field(description="Its successful measured requests")
    failed: int = 0
    requests_per_s: float
    p50_ms: float
    p99_ms: float


class ScenarioResult(StrictModel):
    scenario: Literal["single", "batch", "concurrency", "rate"]
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
    warmup_requests: int = Field(default=0, description="Unmeasured requests sent first")
    stable: bool | None = Field(default=None, description="None: not measured in windows")
    steady_state: SteadyStateResult | None = None
    open_loop: OpenLoopResult | None = None
    client: ClientOverhead | None = None
    workers: int = Field(default=1, description="Client processes that sent the load")
    clients: list[ClientShareResult] = Field(
        default_factory=list, description="Per client, when several clients shared it"
    )
    flags: list[Flag] = Field(default_factory=list)

    @property
    def label(self) -> str:
        if self.open_loop is not None:
            rate = self.open_loop.requested_requests_per_s
            return f"rate {rate:g}/s {self.open_loop.arrival} b={self.batch_size}"
        return f"{self.scenario} b={self.batch_size} c={self.concurrency}"


class MaxRateResult(StrictModel):
    """The highest open-loop rate whose p99 met the SLO, found by a bounded bisection."""

    slo_p99_ms: float
    requests_per_s: float | None = Field(description="Highest rate that met it; None: none did")
    inferences_per_s: float | None = None
    start_requests_per_s: float = Field(description="Where the search started")
    start_basis: str = Field(description="Why there, e.g. the closed-loop capacity")
    trials: list[ScenarioResult] = Field(default_factory=list, description="Its rate runs")
    message: str = ""


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
    os: str = Field(default="", description="e.g. Linux-6.8.0-x86_64-with-glibc2.39")
    gpu_model: str = Field(
        default="none", description="GPU(s) seen where the load generator ran (nvidia-smi)"
    )
    gpu_count: int = 0
    gpu_driver: str | None = None
    cuda_version: str | None = Field(default=None, description="The driver's CUDA version")
    seed: int | None = Field(default=None, description="Seed of the inputs")
    server_node: str | None = Field(default=None, description="Node of the backend, if given")
    images: dict[str, str] = Field(
        default_factory=dict, description="Container image references, if given (role -> ref)"
    )


class RunSummary(StrictModel):
    """One run of a cell that was measured several times (scenarios.repeats)."""

    index: int = Field(description="1-based, in the order run (interleaved with other cells)")
    single_p50_ms: float | None = None
    single_p99_ms: float | None = None
    single_mean_ms: float | None = None
    best_inferences_per_s: float | None = None


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
    cold_start: ColdStart | None = None
    concurrency_sweep: list[ScenarioResult] = Field(default_factory=list)
    rate: list[ScenarioResult] = Field(default_factory=list)
    max_rate: MaxRateResult | None = None
    repeats: list[RunSummary] = Field(
        default_factory=list,
        description="Every run when the cell was measured several times; the rest of the "
        "result is its median run's (by single-image p50)",
    )
    flags: list[Flag] = Field(
        default_factory=list, description="Cell-wide flags; each scenario carries its own"
    )

    def scenario_results(self) -> Iterator[ScenarioResult]:
        """Every measured scenario, in run order (max-rate trials last)."""
        if self.single is not None:
            yield self.single
        yield from self.batch_sweep
        yield from self.concurrency_sweep
        yield from self.rate
        if self.max_rate is not None:
            yield from self.max_rate.trials
