"""Scenario results for the load generator's pure-logic tests (flags, search, open loop)."""

from __future__ import annotations

from typing import Any

from bakeoff_bench import stats
from bakeoff_bench.results import (
    ClientOverhead,
    LatencyStats,
    OpenLoopResult,
    ScenarioResult,
    ServerTimes,
)


def latency(p50_ms: float = 10.0, count: int = 200, p99_ms: float | None = None) -> LatencyStats:
    return LatencyStats(
        count=count,
        mean_ms=p50_ms,
        p50_ms=p50_ms,
        p95_ms=p50_ms * 1.2,
        p99_ms=p99_ms if p99_ms is not None else p50_ms * 1.5,
        min_ms=p50_ms * 0.8,
        max_ms=p50_ms * 2,
        low_sample_percentiles=stats.low_sample_percentiles(count),
    )


def server(request_ms: float = 5.0, queue_ms: float = 0.1, infer_ms: float = 4.0) -> ServerTimes:
    return ServerTimes(
        requests=200,
        inferences=200,
        executions=200,
        request_ms=request_ms,
        queue_ms=queue_ms,
        compute_input_ms=0.1,
        compute_infer_ms=infer_ms,
        compute_output_ms=0.1,
    )


def client(cpu: float = 0.3, lag_p99_ms: float = 0.5, workers: int = 1) -> ClientOverhead:
    return ClientOverhead(
        cpu_fraction=cpu,
        loop_cpu_fraction=cpu,
        loop_lag_p99_ms=lag_p99_ms,
        loop_lag_max_ms=lag_p99_ms * 2,
        loop_lag_samples=1000,
        workers=workers,
    )


def closed(
    kind: str = "single",
    batch: int = 1,
    concurrency: int = 1,
    *,
    rps: float = 100.0,
    p50_ms: float = 10.0,
    count: int = 200,
    **update: Any,
) -> ScenarioResult:
    result = ScenarioResult(
        scenario=kind,  # type: ignore[arg-type]
        batch_size=batch,
        concurrency=concurrency,
        requests=count,
        duration_s=count / rps,
        requests_per_s=rps,
        inferences_per_s=rps * batch,
        latency=latency(p50_ms, count),
    )
    return result.model_copy(update=update)


def open_loop(
    rate: float,
    *,
    met: bool | None = True,
    scheduled: int | None = None,
    achieved: float | None = None,
    **update: Any,
) -> ScenarioResult:
    duration = 10.0
    planned = scheduled if scheduled is not None else round(rate * duration)
    run = OpenLoopResult(
        arrival="poisson",
        requested_requests_per_s=rate,
        duration_seconds=duration,
        scheduled=planned,
        sent=planned,
        sent_requests_per_s=planned / duration,
        achieved_requests_per_s=achieved if achieved is not None else planned / duration,
        schedule_lag=latency(0.1, planned),
        late_threshold_ms=2.0,
        late=0,
        max_in_flight=64,
        dropped_max_in_flight=0,
        dropped_at_end=0,
        service_latency=latency(10.0, planned),
        slo_p99_ms=50.0 if met is not None else None,
        slo_met=met,
    )
    result = closed("rate", 1, 64, rps=rate, count=planned, open_loop=run)
    return result.model_copy(update=update)


def with_run(result: ScenarioResult, **update: Any) -> ScenarioResult:
    assert result.open_loop is not None
    return result.model_copy(update={"open_loop": result.open_loop.model_copy(update=update)})
