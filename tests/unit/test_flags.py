"""Flags: each rule fires exactly past its threshold, with a message that says why."""

from __future__ import annotations

import bench_factories as make
import pytest

from bakeoff_bench import flags
from bakeoff_bench.results import (
    ColdStart,
    Environment,
    FlagCode,
    RequestError,
    ScenarioResult,
    SteadyStateResult,
    WindowResult,
)


def codes(result: ScenarioResult, metrics_expected: bool = True) -> list[str]:
    return [f.code.value for f in flags.scenario_flags(result, metrics_expected=metrics_expected)]


def test_a_clean_result_has_no_flags() -> None:
    clean = make.closed(server=make.server(), client=make.client())
    assert codes(clean) == []


@pytest.mark.parametrize(("count", "flagged"), [(99, True), (100, False)])
def test_p99_from_fewer_than_100_samples_is_flagged(count: int, flagged: bool) -> None:
    flag = flags.low_samples(make.closed(count=count))
    assert (flag is not None) == flagged
    if flag is not None:
        assert flag.severity == "warning"
        assert flag.message == (
            "p99 is based on 99 samples (fewer than 100); treat it as indicative only"
        )


def window(i: int, rps: float, accepted: bool) -> WindowResult:
    return WindowResult(
        index=i, requests=100, duration_s=1.0, requests_per_s=rps, p50_ms=5.0, accepted=accepted
    )


def test_unstable_result_is_flagged_with_its_spread() -> None:
    drifting = SteadyStateResult(
        stable=False,
        tolerance=0.1,
        consecutive=3,
        windows=[window(i, 100 + 30 * i, i >= 2) for i in range(5)],
        throughput_spread=0.4,
        p50_spread=0.05,
    )
    result = make.closed(stable=False, steady_state=drifting)
    flag = flags.unstable(result)
    assert flag is not None and flag.code == FlagCode.UNSTABLE
    assert "did not settle in 5 windows" in flag.message
    assert "last 3 spread 40% in throughput and 5% in p50 (tolerance 10%)" in flag.message
    stable = drifting.model_copy(update={"stable": True})
    assert flags.unstable(make.closed(stable=True, steady_state=stable)) is None


@pytest.mark.parametrize(
    ("batch", "concurrency", "queue_ms", "flagged"),
    [
        (1, 1, 5.1, True),  # 5.1 of 10.0 ms: more than half
        (1, 1, 5.0, False),  # exactly half: not more
        (4, 1, 9.0, False),  # only batch 1 is held to it
        (1, 16, 9.0, True),
    ],
)
def test_queue_time_above_half_of_batch1_request_time_is_flagged(
    batch: int, concurrency: int, queue_ms: float, flagged: bool
) -> None:
    result = make.closed(
        "batch", batch, concurrency, server=make.server(request_ms=10.0, queue_ms=queue_ms)
    )
    flag = flags.queue_dominates(result)
    assert (flag is not None) == flagged


def test_queue_message_names_a_batching_delay_at_concurrency_one() -> None:
    result = make.closed(server=make.server(request_ms=11.0, queue_ms=10.0, infer_ms=0.8))
    flag = flags.queue_dominates(result)
    assert flag is not None
    assert flag.message.startswith("requests spent 10.00 ms of their 11.00 ms in the server")
    assert "dynamic-batching delay" in flag.message and "compute 1.00 ms" in flag.message
    loaded = flags.queue_dominates(result.model_copy(update={"concurrency": 8}))
    assert loaded is not None and "saturated" in loaded.message


@pytest.mark.parametrize(
    ("cpu", "lag_ms", "p50_ms", "reason"),
    [
        (0.86, 0.1, 10.0, "was busy: its event loop used 86% of a core (limit 85%)"),
        (0.60, 2.1, 5.0, "was busy: its timers ran 2.1 ms late at p99 (limit 2.0 ms"),  # floor
        (0.60, 4.1, 20.0, "its timers ran 4.1 ms late at p99 (limit 4.0 ms"),  # 20% of p50
        (0.85, 2.0, 5.0, None),
        (0.60, 3.9, 20.0, None),
    ],
)
def test_client_bottleneck(cpu: float, lag_ms: float, p50_ms: float, reason: str | None) -> None:
    result = make.closed(p50_ms=p50_ms, client=make.client(cpu, lag_ms))
    flag = flags.client_bottleneck(result)
    if reason is None:
        assert flag is None
    else:
        assert flag is not None and reason in flag.message
        assert flag.message.endswith("give it more CPU or more workers")


def test_late_timers_of_an_idle_client_mean_it_was_starved_of_cpu() -> None:
    result = make.closed(p50_ms=5.0, client=make.client(0.03, 3.2))
    flag = flags.client_bottleneck(result)
    assert flag is not None
    assert flag.message.startswith("the load generator was starved of CPU: its timers ran 3.2")
    assert "it used only 3% of a core, so other processes" in flag.message


def test_a_lag_p99_of_few_ticks_is_not_evidence() -> None:
    client = make.client(0.6, 10.0).model_copy(update={"loop_lag_samples": 49})
    assert flags.client_bottleneck(make.closed(client=client)) is None


def test_rate_sustained_is_not_flagged() -> None:
    assert flags.rate_not_sustained(make.open_loop(100.0)) is None


@pytest.mark.parametrize(
    ("update", "reason"),
    [
        ({"achieved_requests_per_s": 94.9}, "answered 94.9 req/s of the 100.0 scheduled"),
        ({"dropped_max_in_flight": 3}, "3 requests were not sent because 64 were already"),
        ({"dropped_at_end": 2}, "2 were still unanswered when the run ended"),
        ({"late": 11}, "11 of 1000 sends left more than 2 ms after their scheduled time"),
    ],
)
def test_rate_not_sustained(update: dict[str, float], reason: str) -> None:
    assert flags.rate_not_sustained(make.with_run(make.open_loop(100.0), late=10)) is None
    flag = flags.rate_not_sustained(make.with_run(make.open_loop(100.0), **update))
    assert flag is not None and flag.code == FlagCode.RATE_NOT_SUSTAINED
    assert flag.message.startswith("the rate of 100 req/s was not sustained: ")
    assert reason in flag.message


def test_sends_that_left_late_are_the_client_falling_behind() -> None:
    """Late sends are the client's delay whatever its timer statistics say: its loop lag is
    under the limit here, yet 2% of the sends left late."""
    on_time = make.open_loop(100.0, client=make.client(0.1, 1.5))
    assert flags.client_bottleneck(make.with_run(on_time, late=10)) is None
    flag = flags.client_bottleneck(make.with_run(on_time, late=20))
    assert flag is not None and flag.code == FlagCode.CLIENT_BOTTLENECK
    assert "20 of 1000 sends left more than 2 ms after their scheduled time" in flag.message


def test_achieved_rate_is_held_to_the_scheduled_not_the_nominal_rate() -> None:
    # A Poisson schedule of nominal 100/s that drew 900 arrivals in 10 s: 90/s answered is fine.
    assert flags.rate_not_sustained(make.open_loop(100.0, scheduled=900, achieved=90.0)) is None


@pytest.mark.parametrize(("failed", "severity"), [(10, "warning"), (11, "error")])
def test_failures_over_5_percent_are_an_error(failed: int, severity: str) -> None:
    errors = [RequestError(error_type="HTTP 400", message="bad", count=failed)]
    result = make.closed(count=200 - failed, failed=failed, errors=errors)
    flag = flags.failed_requests(result)
    assert flag is not None and flag.severity == severity
    assert flag.message == f"{failed} of 200 requests failed (most often HTTP 400: bad)"


def test_dropped_requests_of_an_open_loop_are_not_failures() -> None:
    dropped = make.with_run(make.open_loop(100.0), dropped_max_in_flight=7)
    dropped = dropped.model_copy(update={"requests": 993, "failed": 7})
    assert flags.failed_requests(dropped) is None
    errors = [RequestError(error_type="HTTP 503", message="busy", count=2)]
    both = dropped.model_copy(update={"requests": 991, "failed": 9, "errors": errors})
    flag = flags.failed_requests(both)
    assert flag is not None and flag.message.startswith("2 of 1000 requests failed")


def test_missing_server_times_only_matter_when_metrics_were_configured() -> None:
    assert codes(make.closed(), metrics_expected=True) == ["no-server-times"]
    assert codes(make.closed(), metrics_expected=False) == []


def test_cold_start_flags_a_first_request_far_slower_than_warm() -> None:
    cold = ColdStart(
        first_request_ms={1: 30.0, 8: 95_000.0, 16: 150.0},
        first_request_errors={32: "TimeoutError: timed out"},
    )
    measured = [
        make.closed("batch", 1, p50_ms=5.0),
        make.closed("batch", 8, p50_ms=12.0),
        make.closed("batch", 16, p50_ms=20.0),
        make.open_loop(50.0),  # open-loop latency includes queueing: not a warm p50
    ]
    warm = flags.steady_p50_by_batch(measured)
    assert warm == {1: 5.0, 8: 12.0, 16: 20.0}
    found = flags.cold_start_flags(cold, warm)
    # b=1: 6x (not 10x); b=16: 7.5x; b=8: 7,917x and 95 s; b=32: failed.
    assert [(f.code.value, f.severity) for f in found] == [
        ("first-request-failed", "error"),
        ("slow-first-request", "warning"),
    ]
    assert "first batch-32 request failed (TimeoutError: timed out)" in found[0].message
    assert found[1].message.startswith(
        "the first batch-8 request took 95.0 s, 7,917x the warm p50 of 12.00 ms"
    )


def test_a_first_request_needs_100_ms_more_than_warm_to_be_flagged() -> None:
    warm = {1: 1.0}
    assert flags.cold_start_flags(ColdStart(first_request_ms={1: 100.9}), warm) == []
    assert len(flags.cold_start_flags(ColdStart(first_request_ms={1: 101.0}), warm)) == 1


@pytest.mark.parametrize(
    ("client", "server", "flagged"),
    [("n1", "n1", True), ("n1", "n2", False), (None, None, False), ("n1", None, False)],
    ids=["same-node", "apart", "local-run", "external-backend"],
)
def test_a_load_generator_on_the_backends_own_node_is_flagged(
    client: str | None, server: str | None, flagged: bool
) -> None:
    env = Environment(
        hostname="h", client_cpu="cpu", client_cores=2, python="3.11", node=client,
        server_node=server,
    )  # fmt: skip
    found = flags.placement_flags(env)
    assert [f.code for f in found] == ([FlagCode.CLIENT_SHARES_NODE] if flagged else [])
    assert all(f.severity == "warning" and "lower bounds" in f.message for f in found)
