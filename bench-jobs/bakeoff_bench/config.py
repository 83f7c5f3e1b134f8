"""What one benchmark run measures: the input of `python -m bakeoff_bench`.

The operator (or the local runner) derives a `BenchConfig` from a `BenchmarkSuite` cell.
Every scenario is optional; a config without `steadyState`, `concurrencySweep`, `rate` or
`workers` runs exactly as before those existed (fixed request counts, one client process).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import Field, model_validator

from bakeoff_bench.models import StrictModel


class TargetAuth(StrictModel):
    """Credentials as files, a mounted Secret's keys: paths only, never a value (the config
    travels in the Job's spec). `credentials.load` reads them."""

    bearer_token_file: str | None = Field(default=None, description="Sent as a bearer token")
    basic_username_file: str | None = Field(default=None, description="HTTP basic auth user")
    basic_password_file: str | None = Field(default=None, description="HTTP basic password")
    header_files: dict[str, str] = Field(
        default_factory=dict, description="Header name -> file holding its value"
    )
    ca_file: str | None = Field(default=None, description="PEM CA to trust for https")
    client_certificate_file: str | None = Field(default=None, description="PEM client cert")
    client_key_file: str | None = Field(default=None, description="PEM key of the client cert")


class Target(StrictModel):
    """Where the backend under test answers."""

    http_url: str = Field(
        description="Base URL of the OIP HTTP endpoint, e.g. http://127.0.0.1:8000"
    )
    metrics_url: str | None = Field(
        default=None, description="Prometheus text endpoint with Triton's nv_inference_* names"
    )
    model_name: str = Field(description="Model name in /v2/models/{name}", min_length=1)
    auth: TargetAuth | None = Field(default=None, description="Credentials, as files")


class Arrival(StrEnum):
    """How an open-loop run spaces its sends."""

    CONSTANT = "constant"
    POISSON = "poisson"


class SteadyState(StrictModel):
    """Measure in windows until `consecutive` of them agree (docs/architecture.md §2, rule 2)."""

    window_requests: int | None = Field(
        default=None, gt=0, le=1_000_000, description="Requests per window"
    )
    window_seconds: float | None = Field(
        default=None, gt=0, le=3600, description="Seconds per window (instead of requests)"
    )
    tolerance: float = Field(
        default=0.10,
        gt=0,
        lt=1,
        description="Each accepted window's throughput and p50 lie within this fraction of "
        "their mean over the accepted windows",
    )
    consecutive: int = Field(default=3, ge=2, le=20, description="Windows that must agree")
    max_windows: int = Field(
        default=10, ge=2, le=100, description="Give up (result marked unstable) after these"
    )

    @model_validator(mode="after")
    def _one_window_size(self) -> SteadyState:
        if (self.window_requests is None) == (self.window_seconds is None):
            raise ValueError(
                "steadyState needs exactly one of windowRequests and windowSeconds, got "
                f"windowRequests={self.window_requests}, windowSeconds={self.window_seconds}"
            )
        if self.consecutive > self.max_windows:
            raise ValueError(
                f"steadyState.consecutive ({self.consecutive}) cannot exceed "
                f"maxWindows ({self.max_windows})"
            )
        return self


# Bounds of the values a scenario lists: the same in a suite (the CRD) and here, so that what
# the API accepts the load generator accepts too.
BatchSize = Annotated[int, Field(gt=0, le=1024)]
ConcurrencyLevel = Annotated[int, Field(gt=0, le=4096)]
RequestRate = Annotated[float, Field(gt=0, le=1_000_000)]


def _unique(name: str, values: list[int]) -> None:
    if len(set(values)) != len(values):
        raise ValueError(f"{name} must not repeat, got {values}")


# Each scenario comes in two layers. The `...Spec` model holds what a suite may ask for: the
# API's `spec.scenarios` composes it, so its bounds, defaults and descriptions are the CRD's.
# Its subclass adds the load generator's own knobs, which a suite leaves at their defaults.


class SingleScenarioSpec(StrictModel):
    """Sequential single-image requests: the latency a lone user sees."""

    requests: int = Field(default=200, gt=0, le=1_000_000, description="Measured requests")
    warmup: int = Field(default=20, ge=0, le=100_000, description="Unmeasured requests first")


class SingleScenario(SingleScenarioSpec):
    steady_state: SteadyState | None = Field(
        default=None, description="Windows instead of `requests`; overrides the top-level one"
    )


class BatchSweepScenarioSpec(StrictModel):
    """One request stream per batch size, to draw throughput and latency against batch size."""

    batch_sizes: list[BatchSize] = Field(
        default_factory=lambda: [1, 4, 8, 16, 32],
        min_length=1,
        max_length=32,
        description="Images per request, one stream each",
    )
    requests: int = Field(
        default=50, gt=0, le=1_000_000, description="Measured requests per batch size"
    )
    warmup: int = Field(
        default=5, ge=0, le=100_000, description="Unmeasured requests per batch size, first"
    )


class BatchSweepScenario(BatchSweepScenarioSpec):
    concurrency: int = Field(default=1, gt=0, le=1024, description="Requests in flight")
    steady_state: SteadyState | None = Field(
        default=None, description="Windows instead of `requests`; overrides the top-level one"
    )

    @model_validator(mode="after")
    def _sizes_unique(self) -> BatchSweepScenario:
        _unique("batchSizes", self.batch_sizes)
        return self


class ConcurrencySweepScenarioSpec(StrictModel):
    """Closed loop at each concurrency level and batch size: the capacity curve."""

    levels: list[ConcurrencyLevel] = Field(
        min_length=1, max_length=32, description="Requests in flight, one point each"
    )
    batch_sizes: list[BatchSize] = Field(
        default_factory=lambda: [1],
        min_length=1,
        max_length=32,
        description="Images per request; every level is measured at each",
    )
    requests: int = Field(
        default=200, gt=0, le=1_000_000, description="Measured requests per level and batch size"
    )
    warmup: int = Field(
        default=20,
        ge=0,
        le=100_000,
        description="Unmeasured requests per level and batch size, first",
    )


class ConcurrencySweepScenario(ConcurrencySweepScenarioSpec):
    steady_state: SteadyState | None = Field(
        default=None, description="Windows instead of `requests`; overrides the top-level one"
    )

    @model_validator(mode="after")
    def _points_unique(self) -> ConcurrencySweepScenario:
        _unique("batchSizes", self.batch_sizes)
        _unique("levels", self.levels)
        return self


class RateScenarioSpec(StrictModel):
    """Open loop: requests sent on a schedule, whatever the server's answers do."""

    requests_per_second: list[RequestRate] = Field(
        min_length=1, max_length=32, description="Rates to run, in order"
    )
    arrival: Arrival = Field(
        default=Arrival.POISSON,
        description="Sends evenly spaced (constant) or at random, as independent users send "
        "(poisson)",
    )
    slo_p99_ms: float | None = Field(
        default=None,
        gt=0,
        description="p99 latency objective: each rate reports whether it met it, and a suite "
        "also searches for the highest rate that meets it",
    )
    duration_seconds: float = Field(
        default=30, gt=0, le=3600, description="Seconds of measured schedule per rate"
    )
    max_in_flight: int = Field(
        default=128,
        gt=0,
        le=65_536,
        description="A send due while this many are in flight is dropped (and counted)",
    )


class MaxRateSearch(StrictModel):
    """Bisect for the highest rate whose p99 meets `sloP99Ms` (bounded number of runs)."""

    steps: int = Field(default=4, ge=1, le=12, description="Rate runs the search may make")
    duration_seconds: float | None = Field(
        default=None, gt=0, le=3600, description="Per run; default the rate's durationSeconds"
    )


class RateScenario(RateScenarioSpec):
    # Unlike a suite, the load generator may be given no rates at all: the search picks them.
    requests_per_second: list[RequestRate] = Field(
        default_factory=list, max_length=32, description="Rates to run, in order"
    )
    warmup_seconds: float = Field(
        default=2, ge=0, le=600, description="Same schedule first, unmeasured (opens connections)"
    )
    batch_size: BatchSize = 1
    late_threshold_ms: float = Field(
        default=2.0,
        gt=0,
        description="A send this much after its scheduled time counts as late (the event "
        "loop's timers are only good to about 1 ms)",
    )
    drain_seconds: float = Field(
        default=5.0,
        ge=0,
        le=600,
        description="After the schedule ends, wait this long for answers; later ones are dropped",
    )
    max_rate_search: MaxRateSearch | None = None

    @model_validator(mode="after")
    def _something_to_run(self) -> RateScenario:
        if not self.requests_per_second and self.max_rate_search is None:
            raise ValueError("rate needs requestsPerSecond, maxRateSearch or both")
        if self.max_rate_search is not None and self.slo_p99_ms is None:
            raise ValueError("maxRateSearch needs sloP99Ms: the rate is searched against it")
        return self


MAX_CLIENTS = 16


class BenchConfig(StrictModel):
    suite: str
    backend: str
    pool: str
    target: Target
    single: SingleScenario | None = None
    batch_sweep: BatchSweepScenario | None = None
    concurrency_sweep: ConcurrencySweepScenario | None = None
    rate: RateScenario | None = None
    steady_state: SteadyState | None = Field(
        default=None, description="Default steady-state windows of every closed-loop scenario"
    )
    workers: int = Field(
        default=1,
        ge=1,
        le=64,
        description="Client processes of open-loop runs, each sending 1/N of the rate",
    )
    clients: int = Field(
        default=1,
        ge=1,
        le=MAX_CLIENTS,
        description="Client pods (or local client processes) sharing every scenario's load",
    )
    client_index: int = Field(default=0, ge=0, description="This client's index, 0..clients-1")
    seed: int = Field(default=0, description="Seed of the input images, the same for every backend")
    parity_batch: int = Field(
        default=2, ge=0, le=64, description="Seeded images whose outputs are kept for parity"
    )
    request_timeout_s: float = Field(default=60.0, gt=0)
    ready_timeout_s: float = Field(default=300.0, gt=0)

    @model_validator(mode="after")
    def _max_rate_search_has_a_start(self) -> BenchConfig:
        closed_loop = self.single or self.batch_sweep or self.concurrency_sweep
        rate = self.rate
        if rate and rate.max_rate_search and not rate.requests_per_second and not closed_loop:
            raise ValueError(
                "rate.maxRateSearch starts from the highest closed-loop throughput or the "
                "highest requestsPerSecond; add a closed-loop scenario or requestsPerSecond"
            )
        return self

    @model_validator(mode="after")
    def _clients_can_share_it(self) -> BenchConfig:
        if self.client_index >= self.clients:
            raise ValueError(f"clientIndex {self.client_index} is not one of {self.clients}")
        if self.clients > 1:
            problem = several_clients_problem(self)
            if problem:
                raise ValueError(problem)
        return self


def several_clients_problem(config: BenchConfig) -> str | None:
    """Why these scenarios cannot be shared by several clients yet, or None.

    Each client decides alone when steady-state windows are stable and which rate a max-rate
    search tries next; shared, those decisions would differ between clients.
    """
    windows = config.steady_state is not None or any(
        scenario is not None and scenario.steady_state is not None
        for scenario in (config.single, config.batch_sweep, config.concurrency_sweep)
    )
    if windows:
        return "steadyState with clients > 1 is not supported yet; use requests, or clients: 1"
    if config.rate is not None and config.rate.max_rate_search is not None:
        return (
            "the max-rate search (sloP99Ms) with clients > 1 is not supported yet; use clients: 1"
        )
    return None
