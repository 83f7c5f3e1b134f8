"""`run_bench` phases and scenarios end to end against the misbehaving fake OIP server.

Cold start apart from measurement, steady-state windows, concurrency sweeps, open-loop
rates (one process and several), the max-rate search, and the flags each misbehaviour of
the server must raise. Server-side counts are asserted exactly: they prove which requests
each metric window covered.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import fake_oip
import pytest
from fake_oip import MODEL, FakeOipServer

from bakeoff_bench import runner
from bakeoff_bench.config import BenchConfig
from bakeoff_bench.results import CellResult, FlagCode, ScenarioResult


@pytest.fixture
async def server() -> AsyncIterator[FakeOipServer]:
    async with fake_oip.serving(FakeOipServer()) as fake:
        yield fake


def config(url: str, **scenarios: Any) -> BenchConfig:
    data: dict[str, Any] = {
        "suite": "s",
        "backend": "fake",
        "pool": "loopback",
        "target": {"httpUrl": url, "metricsUrl": f"{url}/metrics", "modelName": MODEL},
        "seed": 1,
        "parityBatch": 0,
        "requestTimeoutS": 10,
        "readyTimeoutS": 5,
    }
    data.update(scenarios)
    return BenchConfig.model_validate(data)


async def run(cfg: BenchConfig) -> tuple[CellResult, list[str]]:
    lines: list[str] = []
    return await runner.run_bench(cfg, lines.append), lines


def codes(result: ScenarioResult) -> set[str]:
    return {flag.code.value for flag in result.flags}


async def test_first_requests_are_cold_start_not_measurement(server: FakeOipServer) -> None:
    server.first_request_delay_s = {4: 0.4}  # a lazy "engine build" for batch 4
    cfg = config(
        server.url,
        single={"requests": 20, "warmup": 5},
        batchSweep={"batchSizes": [1, 4], "requests": 10, "warmup": 3},
    )
    result, lines = await run(cfg)
    cold = result.cold_start
    assert cold is not None
    assert sorted(cold.first_request_ms) == [1, 4]
    assert cold.first_request_ms[4] >= 400.0
    assert cold.first_request_errors == {}
    # 2 firsts + 5 single warm-up + 2 x 3 sweep warm-up: every request nobody measured.
    assert cold.warmup_requests == 2 + 5 + 6
    batch4 = result.batch_sweep[1]
    assert batch4.latency.max_ms < 400.0 and batch4.warmup_requests == 3
    assert batch4.server is not None and batch4.server.requests == 10
    assert server.batch_calls == {1: 1 + 5 + 20 + 3 + 10, 4: 1 + 3 + 10}
    # The slow first request is flagged on the cell, in plain words.
    assert [f.code for f in result.flags] == [FlagCode.SLOW_FIRST_REQUEST]
    assert result.flags[0].message.startswith("the first batch-4 request took")
    assert any(n.startswith("cold start: the first batch-4 request took") for n in result.notes)
    assert any(line.startswith("cold start: first request b=1 ") for line in lines)


async def test_steady_state_reports_only_the_agreeing_windows(server: FakeOipServer) -> None:
    # Calls 1 (cold start) to 21 are slow, later ones fast: windows 1 and 2 (calls 2-11,
    # 12-21) are 40x slower than the rest, so they can never be accepted; the following
    # windows agree (the first three of them, unless the machine is very busy). The metric
    # diff must cover exactly the accepted windows.
    server.delay_s = lambda call, _batch: 0.08 if call <= 21 else 0.002
    steady = {"windowRequests": 10, "tolerance": 0.5, "consecutive": 3, "maxWindows": 10}
    cfg = config(server.url, single={"requests": 1, "warmup": 0, "steadyState": steady})
    result, lines = await run(cfg)
    single = result.single
    assert single is not None and single.steady_state is not None
    assert single.stable is True and single.steady_state.stable is True
    windows = single.steady_state.windows
    accepted = [w.index for w in windows if w.accepted]
    assert len(windows) >= 5 and accepted == [len(windows) - 3 + i for i in range(3)]
    assert [w.requests for w in windows] == [10] * len(windows)
    assert single.requests == 30 and single.latency.count == 30
    assert single.latency.max_ms < 80.0  # no slow window leaked into the numbers
    assert single.server is not None and single.server.requests == 30
    assert single.duration_s == pytest.approx(sum(w.duration_s for w in windows if w.accepted))
    assert FlagCode.UNSTABLE not in {f.code for f in single.flags}
    window_lines = [line for line in lines if " window " in line]
    assert len(window_lines) == len(windows) and window_lines[-1].endswith(", steady")
    assert window_lines[0].startswith("single b=1 c=1 window 1/10: ")


async def test_drifting_latency_is_marked_unstable_with_its_spread(server: FakeOipServer) -> None:
    server.delay_s = lambda call, _batch: 0.001 * (1 + call / 5)  # slower with every call
    steady = {"windowRequests": 10, "tolerance": 0.05, "consecutive": 3, "maxWindows": 4}
    cfg = config(server.url, steadyState=steady, single={"requests": 1, "warmup": 0})
    result, lines = await run(cfg)
    single = result.single
    assert single is not None and single.steady_state is not None
    assert single.stable is False
    assert [w.accepted for w in single.steady_state.windows] == [False, True, True, True]
    assert single.steady_state.p50_spread > 0.05
    assert single.server is not None and single.server.requests == 30
    assert "unstable" in codes(single)
    assert lines[-2].startswith("single b=1 c=1 window 4/4: ")
    assert lines[-2].endswith(", not steady: giving up")
    assert lines[-1].startswith("single b=1 c=1: 30 ok") and lines[-1].endswith("(unstable)")


async def test_timed_windows_run_for_their_seconds(server: FakeOipServer) -> None:
    server.delay_s = lambda _call, _batch: 0.002
    steady = {"windowSeconds": 0.15, "tolerance": 0.9, "consecutive": 2, "maxWindows": 3}
    cfg = config(server.url, single={"requests": 1, "warmup": 0, "steadyState": steady})
    result, _ = await run(cfg)
    single = result.single
    assert single is not None and single.steady_state is not None
    windows = single.steady_state.windows
    assert all(w.duration_s >= 0.15 and w.requests > 0 for w in windows)
    assert single.server is not None
    assert single.server.requests == sum(w.requests for w in windows if w.accepted)


async def test_a_batching_delay_is_flagged_as_queue_time(server: FakeOipServer) -> None:
    server.queue_delay_s = 0.01
    result, _ = await run(config(server.url, single={"requests": 20, "warmup": 2}))
    single = result.single
    assert single is not None and single.server is not None
    assert single.server.queue_ms == pytest.approx(10.1)
    assert single.server.request_ms == pytest.approx(11.0)
    assert {"queue-dominates", "low-samples"} <= codes(single)
    queue = next(f for f in single.flags if f.code is FlagCode.QUEUE_DOMINATES)
    assert "dynamic-batching delay" in queue.message
    assert any("single b=1 c=1: requests spent 10.10 ms" in note for note in result.notes)


async def test_concurrency_sweep_measures_every_level_and_batch_size(
    server: FakeOipServer,
) -> None:
    server.delay_s = lambda _call, _batch: 0.002
    sweep = {"levels": [1, 4], "batchSizes": [1, 2], "requests": 12, "warmup": 2}
    result, lines = await run(config(server.url, concurrencySweep=sweep))
    points = [(r.scenario, r.batch_size, r.concurrency) for r in result.concurrency_sweep]
    assert points == [
        ("concurrency", 1, 1),
        ("concurrency", 1, 4),
        ("concurrency", 2, 1),
        ("concurrency", 2, 4),
    ]
    for point in result.concurrency_sweep:
        assert point.requests == 12 and point.server is not None
        assert point.server.requests == 12
        assert point.client is not None and point.client.loop_lag_samples > 0
    assert result.cold_start is not None and sorted(result.cold_start.first_request_ms) == [1, 2]
    assert any(line.startswith("concurrency b=2 c=4: 12 ok") for line in lines)


async def test_open_loop_rate_sends_its_schedule_and_reports_it(server: FakeOipServer) -> None:
    server.delay_s = lambda _call, _batch: 0.002
    rate = {
        "requestsPerSecond": [200],
        "arrival": "constant",
        "durationSeconds": 1.0,
        "warmupSeconds": 0.2,
        "sloP99Ms": 500,
    }
    result, lines = await run(config(server.url, rate=rate))
    (point,) = result.rate
    run_ = point.open_loop
    assert run_ is not None
    assert (run_.scheduled, run_.sent, point.requests, point.failed) == (200, 200, 200, 0)
    assert point.server is not None and point.server.requests == 200  # warm-up excluded
    assert point.warmup_requests == 40
    assert run_.requested_requests_per_s == 200.0 and run_.sent_requests_per_s == 200.0
    assert run_.achieved_requests_per_s == pytest.approx(200.0, rel=0.05)
    assert run_.schedule_lag.count == 200 and run_.dropped == 0
    assert run_.slo_met is True
    assert point.latency.count == 200
    # Timed from the schedule: never less than the service time measured from the send.
    assert point.latency.min_ms >= run_.service_latency.min_ms - 1e-6
    assert point.client is not None and point.workers == 1
    assert any(line.startswith("rate 200/s constant b=1: 200 ok") for line in lines)


async def test_an_unsustainable_rate_is_flagged_and_misses_the_slo(server: FakeOipServer) -> None:
    server.delay_s = lambda _call, _batch: 0.02
    server.max_concurrent = 1  # capacity: 50 requests per second
    rate = {
        "requestsPerSecond": [200],
        "arrival": "constant",
        "durationSeconds": 0.5,
        "warmupSeconds": 0,
        "sloP99Ms": 100,
        "maxInFlight": 4,
        "drainSeconds": 0.1,
    }
    result, _ = await run(config(server.url, rate=rate))
    (point,) = result.rate
    assert point.open_loop is not None
    assert point.open_loop.dropped_max_in_flight > 50
    assert point.open_loop.slo_met is False
    assert "rate-not-sustained" in codes(point)
    assert point.server is not None and point.server.queue_ms > 0  # waiting for the slot


async def test_two_worker_processes_send_one_schedule_and_merge_exactly(
    server: FakeOipServer,
) -> None:
    server.delay_s = lambda _call, _batch: 0.002
    rate = {
        "requestsPerSecond": [100],
        "arrival": "constant",
        "durationSeconds": 1.0,
        "warmupSeconds": 0.2,
        "maxInFlight": 16,
    }
    result, _ = await run(config(server.url, rate=rate, workers=2))
    (point,) = result.rate
    assert point.workers == 2 and point.open_loop is not None
    assert (point.open_loop.scheduled, point.open_loop.sent, point.requests) == (100, 100, 100)
    assert point.server is not None and point.server.requests == 100
    assert point.warmup_requests == 20
    assert point.latency.count == 100 and point.latency.histogram is not None
    assert sum(point.latency.histogram.counts.values()) == 100
    assert point.client is not None and point.client.workers == 2


async def test_max_rate_search_starts_from_the_closed_loop_capacity(
    server: FakeOipServer,
) -> None:
    server.delay_s = lambda _call, _batch: 0.004
    rate = {
        "arrival": "constant",
        "durationSeconds": 0.3,
        "warmupSeconds": 0,
        "sloP99Ms": 200,
        "maxRateSearch": {"steps": 2},
    }
    result, lines = await run(config(server.url, single={"requests": 30, "warmup": 2}, rate=rate))
    search = result.max_rate
    assert search is not None and result.single is not None
    assert search.start_requests_per_s == result.single.requests_per_s
    assert search.start_basis == "highest closed-loop throughput (single b=1 c=1)"
    assert len(search.trials) == 2
    assert search.trials[0].open_loop is not None
    assert search.trials[0].open_loop.requested_requests_per_s == search.start_requests_per_s
    assert search.requests_per_s is not None  # the capacity itself meets a 200 ms p99
    assert any(line.startswith("max-rate search: ") for line in lines)
    assert list(result.scenario_results())[-2:] == search.trials


async def test_the_closing_scrape_waits_for_answers_the_server_counts_late(
    server: FakeOipServer,
) -> None:
    server.count_late_s = 0.05
    steady = {"windowRequests": 10, "tolerance": 0.9, "consecutive": 2, "maxWindows": 2}
    cfg = config(
        server.url,
        single={"requests": 15, "warmup": 3},
        batchSweep={"batchSizes": [2], "requests": 5, "warmup": 0, "steadyState": steady},
    )
    result, _ = await run(cfg)
    assert result.single is not None and result.single.server is not None
    assert result.single.server.requests == 15
    (sweep,) = result.batch_sweep
    assert sweep.server is not None and sweep.server.requests == 20
    assert sweep.server.inferences == 40


async def test_failed_requests_become_a_flag_and_a_note(server: FakeOipServer) -> None:
    server.fail_every = 4
    result, _ = await run(config(server.url, single={"requests": 40, "warmup": 0}))
    single = result.single
    assert single is not None
    failed = next(f for f in single.flags if f.code is FlagCode.FAILED_REQUESTS)
    assert failed.severity == "error"
    assert failed.message.startswith(f"{single.failed} of 40 requests failed (most often HTTP 400")


async def test_every_new_section_survives_json(server: FakeOipServer) -> None:
    steady = {"windowRequests": 10, "tolerance": 0.9, "consecutive": 2, "maxWindows": 3}
    rate = {"requestsPerSecond": [50], "durationSeconds": 0.2, "warmupSeconds": 0}
    cfg = config(server.url, single={"warmup": 0, "steadyState": steady}, rate=rate)
    result, _ = await run(cfg)
    assert result.cold_start is not None and result.rate and result.single is not None
    assert result.single.steady_state is not None and result.environment.seed == 1
    text = result.model_dump_json(by_alias=True)
    assert '"coldStart"' in text and '"firstRequestMs"' in text and '"openLoop"' in text
    assert '"scheduleLag"' in text and '"steadyState"' in text and '"loopLagP99Ms"' in text
    assert CellResult.model_validate_json(text) == result


def test_batch_sizes_and_connections_cover_every_scenario() -> None:
    cfg = config(
        "http://x",
        single={},
        batchSweep={"batchSizes": [4, 1, 8], "concurrency": 3},
        concurrencySweep={"levels": [1, 32], "batchSizes": [2, 4]},
        rate={"requestsPerSecond": [10], "batchSize": 16, "maxInFlight": 64},
    )
    assert runner.batch_sizes_needed(cfg) == [1, 4, 8, 2, 16]
    assert runner.connection_limit(cfg) == 64
    # With worker processes the rate's connections are theirs, not this process's.
    assert runner.connection_limit(cfg.model_copy(update={"workers": 4})) == 32
