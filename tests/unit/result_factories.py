"""Build CellResults for pure-logic tests (analysis, report) without running servers."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np

from bakeoff_bench import stats
from bakeoff_bench.results import (
    CellResult,
    Environment,
    Flag,
    FlagCode,
    LatencyStats,
    ScenarioResult,
    ServerInfo,
    ServerTimes,
)


def latency(p50: float, count: int = 200, spread: float | None = None) -> LatencyStats:
    """Stats around `p50`; with `spread`, from `count` lognormal samples of that sigma (seeded
    by the arguments), histogram included, so that intervals can be computed."""
    if spread is not None:
        seed = int(p50 * 1000) + count
        rng = np.random.default_rng(seed)
        samples_s = p50 / 1000 * np.exp(spread * rng.standard_normal(count))
        return stats.summarize_latencies(samples_s)
    return LatencyStats(
        count=count,
        mean_ms=p50 * 1.05,
        p50_ms=p50,
        p95_ms=p50 * 1.3,
        p99_ms=p50 * 1.6,
        min_ms=p50 * 0.9,
        max_ms=p50 * 2,
        low_sample_percentiles=["p99"] if count < 100 else [],
    )


def scenario(
    kind: str,
    batch: int,
    p50: float,
    images_per_s: float,
    count: int = 200,
    spread: float | None = None,
) -> ScenarioResult:
    return ScenarioResult(
        scenario=kind,  # type: ignore[arg-type]
        batch_size=batch,
        concurrency=1,
        requests=count,
        duration_s=count / images_per_s * batch,
        requests_per_s=images_per_s / batch,
        inferences_per_s=images_per_s,
        latency=latency(p50, count, spread),
        flags=[
            Flag(
                code=FlagCode.LOW_SAMPLES,
                severity="warning",
                message=f"p99 is based on {count} samples (fewer than 100)",
            )
        ]
        if count < 100
        else [],
        server=ServerTimes(
            requests=count,
            inferences=count * batch,
            executions=count,
            request_ms=p50 * 0.9,
            queue_ms=0.05,
            compute_input_ms=0.1,
            compute_infer_ms=p50 * 0.7,
            compute_output_ms=0.05,
        ),
    )


def cell(
    backend: str,
    pool: str = "cpu",
    p50: float = 10.0,
    best: float = 200.0,
    parity: list[list[float]] | None = None,
    memory: int = 500 * 2**20,
    single_count: int = 200,
    spread: float | None = None,
) -> CellResult:
    now = datetime(2026, 11, 26, tzinfo=UTC)
    return CellResult(
        suite="s",
        backend=backend,
        pool=pool,
        started_at=now,
        finished_at=now,
        server=ServerInfo(name="triton", version="2.51.0", runtime="onnxruntime cpu"),
        environment=Environment(hostname="h", client_cpu="cpu", client_cores=2, python="3.11"),
        seed=0,
        single=scenario("single", 1, p50, 1000 / p50, single_count, spread),
        batch_sweep=[
            scenario("batch", 1, p50, 1000 / p50, spread=spread),
            scenario("batch", 8, p50 * 4, best, spread=spread),
        ],
        parity_outputs=parity if parity is not None else [[0.6, 0.8], [1.0, 0.0]],
        memory_bytes=memory,
        memory_kind="host-rss",
        time_to_ready_s=3.0,
    )
