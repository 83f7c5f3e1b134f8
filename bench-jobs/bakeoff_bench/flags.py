"""Why a number should not be taken at face value (pure: results in, `Flag`s out).

Called by `runner` once every scenario has run: `scenario_flags` per scenario result,
`cold_start_flags` for the cell. Each rule flags a breach of one of the measurement rules of
docs/architecture.md §2; the thresholds are `Final` constants here so that the report can
quote them and tests can pin them.
Messages are plain sentences a platform engineer can act on.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Final

from bakeoff_bench.results import (
    LOW_SAMPLE_THRESHOLD,
    ColdStart,
    Environment,
    Flag,
    FlagCode,
    ScenarioResult,
)

# client-bottleneck: the event-loop thread busier than this share of its one core...
CLIENT_CPU_LIMIT: Final = 0.85
# ...or its timers late, at p99, by more than this share of the p50 latency, and by more than
# the floor (asyncio's epoll timers are only good to 1 ms, so an idle loop shows up to ~1 ms).
LOOP_LAG_SHARE: Final = 0.2
LOOP_LAG_FLOOR_MS: Final = 2.0
MIN_LAG_SAMPLES: Final = 50  # ticks (5 ms each): a p99 of fewer says nothing
# Late timers with the loop thread below this share of a core: starved, not busy.
STARVED_BELOW: Final = 0.5
# queue-dominates: queue time above this share of the server's request time at batch 1.
QUEUE_SHARE: Final = 0.5
# rate-not-sustained: answers below this share of the scheduled rate, any drop, or more than
# LATE_SHARE of the sends later than the scenario's lateThresholdMs.
RATE_SHORTFALL: Final = 0.95
LATE_SHARE: Final = 0.01
# slow-first-request: the first request this many times the measured p50, and this much more.
FIRST_REQUEST_RATIO: Final = 10.0
FIRST_REQUEST_EXCESS_MS: Final = 100.0
# failed-requests: an error (not a warning) above this share of failures.
FAILED_ERROR_SHARE: Final = 0.05


def low_samples(result: ScenarioResult) -> Flag | None:
    needed = LOW_SAMPLE_THRESHOLD["p99"]
    if "p99" not in result.latency.low_sample_percentiles:
        return None
    return Flag(
        code=FlagCode.LOW_SAMPLES,
        severity="warning",
        message=f"p99 is based on {result.latency.count} samples (fewer than {needed}); "
        "treat it as indicative only",
    )


def unstable(result: ScenarioResult) -> Flag | None:
    steady = result.steady_state
    if steady is None or steady.stable:
        return None
    kept = sum(w.accepted for w in steady.windows)
    drifted = f"; drifting: {steady.drift}" if steady.drift else ""
    return Flag(
        code=FlagCode.UNSTABLE,
        severity="warning",
        message=f"throughput and p50 did not settle in {len(steady.windows)} windows: the "
        f"reported last {kept} spread {steady.throughput_spread:.0%} in throughput and "
        f"{steady.p50_spread:.0%} in p50 (tolerance {steady.tolerance:.0%}){drifted}; "
        "expect different numbers on another run",
    )


def queue_dominates(result: ScenarioResult) -> Flag | None:
    server = result.server
    if result.batch_size != 1 or server is None or server.request_ms <= 0:
        return None
    if server.queue_ms <= QUEUE_SHARE * server.request_ms:
        return None
    if result.scenario == "rate" or result.concurrency > 1:
        why = "the server is saturated at this load or delays requests to batch them"
    else:
        why = (
            "with one request at a time nothing waits for a busy model, so this is a server "
            "setting such as a dynamic-batching delay, not the model's speed"
        )
    return Flag(
        code=FlagCode.QUEUE_DOMINATES,
        severity="warning",
        message=f"requests spent {server.queue_ms:.2f} ms of their {server.request_ms:.2f} ms "
        f"in the server waiting in its queue (compute {server.compute_ms:.2f} ms): {why}",
    )


def client_bottleneck(result: ScenarioResult) -> Flag | None:
    client = result.client
    if client is None:
        return None
    reasons = []
    busy = client.loop_cpu_fraction > CLIENT_CPU_LIMIT
    if busy:
        reasons.append(
            f"its event loop used {client.loop_cpu_fraction:.0%} of a core "
            f"(limit {CLIENT_CPU_LIMIT:.0%})"
        )
    lag_limit = max(LOOP_LAG_FLOOR_MS, LOOP_LAG_SHARE * result.latency.p50_ms)
    late = client.loop_lag_samples >= MIN_LAG_SAMPLES and client.loop_lag_p99_ms > lag_limit
    if late:
        reasons.append(
            f"its timers ran {client.loop_lag_p99_ms:.1f} ms late at p99 "
            f"(limit {lag_limit:.1f} ms at a p50 latency of {result.latency.p50_ms:.2f} ms)"
        )
    run = result.open_loop
    # Sends that left late are the client's delay by definition: it did not keep its schedule.
    behind = run is not None and run.late > LATE_SHARE * run.sent
    if behind and run is not None:
        reasons.append(
            f"{run.late} of {run.sent} sends left more than {run.late_threshold_ms:g} ms after "
            "their scheduled time"
        )
    if not reasons:
        return None
    workers = f" ({client.workers} client processes, busiest shown)" if client.workers > 1 else ""
    if busy or client.loop_cpu_fraction >= STARVED_BELOW:
        advice = "give it more CPU or more workers"
        what = "was busy"
    else:
        # Late timers while the loop is mostly idle: the OS did not run the client in time.
        advice = (
            f"it used only {client.loop_cpu_fraction:.0%} of a core, so other processes "
            "(e.g. a backend on the same machine) took its CPU; run it where it has a core"
        )
        what = "was starved of CPU"
    return Flag(
        code=FlagCode.CLIENT_BOTTLENECK,
        severity="warning",
        message=f"the load generator {what}: {' and '.join(reasons)}{workers}; the numbers "
        f"partly measure the client — {advice}",
    )


def rate_not_sustained(result: ScenarioResult) -> Flag | None:
    run = result.open_loop
    if run is None or run.scheduled == 0:
        return None
    scheduled_rate = run.scheduled / run.duration_seconds
    reasons = []
    if run.achieved_requests_per_s < RATE_SHORTFALL * scheduled_rate:
        reasons.append(
            f"answered {run.achieved_requests_per_s:.1f} req/s of the {scheduled_rate:.1f} "
            "scheduled"
        )
    if run.dropped_max_in_flight:
        reasons.append(
            f"{run.dropped_max_in_flight} requests were not sent because "
            f"{run.max_in_flight} were already in flight"
        )
    if run.dropped_at_end:
        reasons.append(f"{run.dropped_at_end} were still unanswered when the run ended")
    if run.late > LATE_SHARE * run.sent:
        reasons.append(
            f"{run.late} of {run.sent} sends left more than {run.late_threshold_ms:g} ms after "
            "their scheduled time (the client fell behind)"
        )
    if not reasons:
        return None
    return Flag(
        code=FlagCode.RATE_NOT_SUSTAINED,
        severity="warning",
        message=f"the rate of {run.requested_requests_per_s:g} req/s was not sustained: "
        f"{'; '.join(reasons)}; latency at this rate includes the backlog",
    )


def failed_requests(result: ScenarioResult) -> Flag | None:
    total = result.requests + result.failed
    # An open loop's `failed` includes the requests it dropped: `rate-not-sustained` says those.
    failed = result.failed - (result.open_loop.dropped if result.open_loop else 0)
    if failed <= 0:
        return None
    first = result.errors[0] if result.errors else None
    reason = f" (most often {first.error_type}: {first.message})" if first else ""
    return Flag(
        code=FlagCode.FAILED_REQUESTS,
        severity="error" if failed > FAILED_ERROR_SHARE * total else "warning",
        message=f"{failed} of {total} requests failed{reason}",
    )


def no_server_times(result: ScenarioResult, metrics_expected: bool) -> Flag | None:
    if not metrics_expected or result.server is not None or not result.requests:
        return None
    return Flag(
        code=FlagCode.NO_SERVER_TIMES,
        severity="warning",
        message="no server-side times: the metrics scrape failed or the server's counters "
        "did not move, so queue and compute time are unknown",
    )


def scenario_flags(result: ScenarioResult, *, metrics_expected: bool) -> list[Flag]:
    """Every flag of one scenario, most serious rules first."""
    found = [
        failed_requests(result),
        unstable(result),
        rate_not_sustained(result),
        client_bottleneck(result),
        queue_dominates(result),
        low_samples(result),
        no_server_times(result, metrics_expected),
    ]
    return [flag for flag in found if flag is not None]


def steady_p50_by_batch(results: Iterable[ScenarioResult]) -> dict[int, float]:
    """The lowest measured p50 per batch size: the 'warm' latency a first request is held to."""
    best: dict[int, float] = {}
    for result in results:
        if result.requests and result.open_loop is None:
            size = result.batch_size
            best[size] = min(best.get(size, result.latency.p50_ms), result.latency.p50_ms)
    return best


def cold_start_flags(cold: ColdStart, warm_p50_ms: Mapping[int, float]) -> list[Flag]:
    """A first request far slower than warm ones (lazy engine builds), or one that failed."""
    flags = [
        Flag(
            code=FlagCode.FIRST_REQUEST_FAILED,
            severity="error",
            message=f"the first batch-{size} request failed ({error}); the backend may not be "
            "ready for that batch size, and its warm-up happened inside later requests",
        )
        for size, error in sorted(cold.first_request_errors.items())
    ]
    for size, first_ms in sorted(cold.first_request_ms.items()):
        p50 = warm_p50_ms.get(size)
        if size in cold.first_request_errors or p50 is None or p50 <= 0:
            continue
        if first_ms >= FIRST_REQUEST_RATIO * p50 and first_ms - p50 >= FIRST_REQUEST_EXCESS_MS:
            flags.append(
                Flag(
                    code=FlagCode.SLOW_FIRST_REQUEST,
                    severity="warning",
                    message=f"the first batch-{size} request took {_duration(first_ms)}, "
                    f"{first_ms / p50:,.0f}x the warm p50 of {p50:.2f} ms: the backend builds "
                    "or loads something on first use (e.g. a TensorRT engine); that time is "
                    "cold start, kept out of every measured window",
                )
            )
    return flags


def placement_flags(env: Environment) -> list[Flag]:
    """The load generator on the very node it measures: they share CPUs and memory bandwidth
    (clusters of one worker schedule it there; see the chart's benchJob.antiAffinity)."""
    if env.node is None or env.node != env.server_node:
        return []
    return [
        Flag(
            code=FlagCode.CLIENT_SHARES_NODE,
            severity="warning",
            message=f"the load generator ran on {env.node}, the backend's own node: they "
            "competed for its CPUs, so latency and throughput are lower bounds",
        )
    ]


def _duration(ms: float) -> str:
    return f"{ms / 1000:.1f} s" if ms >= 1000 else f"{ms:.0f} ms"
