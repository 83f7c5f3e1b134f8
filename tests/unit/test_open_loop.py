"""Open-loop results: exact counts, latency from the schedule, N shares merged exactly."""

from __future__ import annotations

import bench_factories as make
import numpy as np
import pytest

from bakeoff_bench import dispatch, open_loop, stats
from bakeoff_bench.config import Arrival, RateScenario
from bakeoff_bench.open_loop import RateRun, ShareOutcome


def record(
    scheduled: list[float],
    lag: list[float],
    latency: list[float],
    ok: list[bool],
    *,
    dropped_max_in_flight: int = 0,
) -> dispatch.DispatchRecord:
    """A record that starts at loop time 100; NaN lag = never sent, NaN latency = no answer."""
    rec = dispatch.DispatchRecord.empty(np.array(scheduled), start=100.0)
    rec.sent_at = 100.0 + np.array(scheduled) + np.array(lag)
    rec.latency_s = np.array(latency)
    rec.ok = np.array(ok)
    rec.dropped_max_in_flight = dropped_max_in_flight
    done = rec.sent_at + np.nan_to_num(rec.latency_s, nan=-np.inf)
    rec.last_completion = float(np.nanmax(done))
    return rec


def test_a_record_becomes_exact_counts_and_latencies_from_the_schedule() -> None:
    nan = float("nan")
    rec = record(
        scheduled=[0.0, 0.1, 0.2, 0.3, 0.4],
        lag=[0.001, 0.004, 0.0, nan, 0.0],
        latency=[0.010, 0.020, 0.005, nan, nan],
        ok=[True, True, False, False, False],
        dropped_max_in_flight=1,
    )
    rec.dropped_at_end = 1
    share = open_loop.summarize_record(rec, late_threshold_s=0.002)
    assert (share.scheduled, share.sent, share.ok, share.failed) == (5, 4, 2, 1)
    assert (share.late, share.dropped_max_in_flight, share.dropped_at_end) == (1, 1, 1)
    assert share.latency.count == 2
    assert share.latency.min_ms == pytest.approx(11.0)  # 1 ms late + 10 ms service
    assert share.latency.max_ms == pytest.approx(24.0)  # 4 ms late + 20 ms service
    assert share.service.max_ms == pytest.approx(20.0)
    assert share.lag.count == 4 and share.lag.max_ms == pytest.approx(4.0)
    assert share.span_s == pytest.approx(0.2 + 0.005)


def share_of(latencies_s: np.ndarray, scheduled: int, sent: int, span: float) -> ShareOutcome:
    summary = stats.summarize_latencies(latencies_s)
    return ShareOutcome(
        scheduled=scheduled,
        sent=sent,
        ok=latencies_s.size,
        failed=0,
        late=1,
        dropped_max_in_flight=scheduled - sent,
        dropped_at_end=0,
        span_s=span,
        latency=summary,
        service=summary,
        lag=stats.summarize_latencies(np.full(sent, 0.0001)),
        errors=[],
        load=None,
    )


def test_shares_merge_exactly_in_counts_and_within_a_bucket_in_percentiles() -> None:
    rng = np.random.default_rng(5)
    a, b = rng.lognormal(-4, 0.5, 3000), rng.lognormal(-3.5, 0.3, 1000)
    merged = open_loop.merge_shares([share_of(a, 3100, 3000, 10.0), share_of(b, 1000, 1000, 10.2)])
    assert (merged.scheduled, merged.sent, merged.ok, merged.late) == (4100, 4000, 4000, 2)
    assert merged.dropped_max_in_flight == 100 and merged.span_s == 10.2
    exact = stats.summarize_latencies(np.concatenate([a, b]))
    assert merged.latency.count == exact.count
    assert merged.latency.mean_ms == pytest.approx(exact.mean_ms)
    assert (merged.latency.min_ms, merged.latency.max_ms) == (exact.min_ms, exact.max_ms)
    for name in ("p50_ms", "p95_ms", "p99_ms"):
        assert getattr(merged.latency, name) == pytest.approx(
            getattr(exact, name), rel=stats.DEFAULT_BASE - 1
        )


def spec(**overrides: object) -> RateScenario:
    data: dict[str, object] = {"requestsPerSecond": [100], "sloP99Ms": 30, "maxInFlight": 64}
    data.update(overrides)
    return RateScenario.model_validate(data)


def test_rate_result_reports_requested_sent_and_achieved_rates() -> None:
    run = RateRun.from_config(spec(durationSeconds=10), 100.0, seed=0)
    one = share_of(np.full(990, 0.010), scheduled=1000, sent=990, span=10.0)
    result = open_loop.rate_result([one], run, spec(), 1, make.server(request_ms=8.0))
    assert (result.scenario, result.requests, result.failed, result.workers) == ("rate", 990, 10, 1)
    assert result.open_loop is not None
    run_result = result.open_loop
    assert run_result.requested_requests_per_s == 100.0
    assert run_result.sent_requests_per_s == 99.0
    assert run_result.achieved_requests_per_s == pytest.approx(99.0)
    assert (run_result.dropped_max_in_flight, run_result.dropped) == (10, 10)
    assert run_result.slo_met is True  # p99 10 ms; 10 of 1000 lost is exactly 1%
    assert result.label == "rate 100/s poisson b=1"


@pytest.mark.parametrize(
    ("ok", "latency_s", "met"),
    [
        (990, 0.010, True),
        (989, 0.010, False),  # 11 of 1000 lost: more than 1%
        (1000, 0.031, False),  # p99 over the 30 ms SLO
        (0, 0.010, False),
    ],
)
def test_slo_needs_the_p99_and_at_most_one_percent_lost(
    ok: int, latency_s: float, met: bool
) -> None:
    merged = share_of(np.full(ok, latency_s), scheduled=1000, sent=1000, span=10.0)
    assert open_loop.slo_met(merged, 30.0) is met
    assert open_loop.slo_met(merged, None) is None


def test_worker_shares_split_the_rate_and_the_in_flight_bound() -> None:
    run = RateRun.from_config(spec(maxInFlight=10, arrival="constant"), 100.0, seed=3)
    shares = [run.share(i, 3) for i in range(3)]
    assert [(s.worker, s.workers, s.max_in_flight) for s in shares] == [
        (0, 3, 4),
        (1, 3, 4),
        (2, 3, 4),
    ]
    assert all(s.rate == 100.0 and s.arrival is Arrival.CONSTANT for s in shares)
    assert run.warmup(2.0).duration_s == 2.0 and run.warmup(2.0).seed != run.seed
