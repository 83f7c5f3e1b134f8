"""Closed-loop scenarios: `concurrency` workers, each sending its next request on completion.

Called by `runner` for the single-image scenario, each batch size of the batch sweep and
each point of the concurrency sweep. Phases never mix (docs/architecture.md §2, rule 1):
warm-up requests run first and are thrown away; then the server's metrics are scraped
before the first and after every measured window, so the server-side diff covers exactly
the reported windows.

Without steady-state settings one window of `requests` is measured (the original
behaviour). With them, windows of `windowRequests` requests (or `windowSeconds`) run until
`steady.decide` accepts the last `consecutive` ones, or `maxWindows` is reached (unstable).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal

import numpy as np
import numpy.typing as npt

from bakeoff_bench import client as oip
from bakeoff_bench import overhead, payloads, server_metrics, stats, steady
from bakeoff_bench.config import SteadyState
from bakeoff_bench.results import (
    ScenarioResult,
    SteadyStateResult,
    WindowResult,
    merge_errors,
)

Progress = Callable[[str], None]
PROGRESS_INTERVAL_S: Final = 2.0  # a progress line every 2 s: alive, not noisy
ClosedLoopKind = Literal["single", "batch", "concurrency"]


class _Window:
    """Shared state of one batch of requests: a ticket counter and what came back.

    The workers share it instead of closing over loop variables; asyncio runs them on one
    thread, so the counter needs no lock. A window ends after `requests` tickets, or (for
    `seconds`) once that long has passed since its first send.
    """

    def __init__(self, requests: int | None, seconds: float | None = None) -> None:
        self.requests = requests
        self.seconds = seconds
        self.issued = 0
        self.completed = 0
        self.ok = 0
        # Preallocated: recording a latency is one store, not a list growth.
        self.latencies_s = np.empty(requests or 1024, dtype=np.float64)
        self.errors = oip.ErrorTally()
        self.first_send = 0.0
        self.deadline = float("inf")
        self.last_completion = 0.0

    def take(self) -> bool:
        if self.requests is not None and self.issued >= self.requests:
            return False
        now = time.perf_counter()
        if self.issued == 0:
            self.first_send = now
            if self.seconds is not None:
                self.deadline = now + self.seconds
        elif now >= self.deadline:
            return False
        self.issued += 1
        return True

    def record(self, outcome: oip.InferOutcome) -> None:
        latency, ok, error = outcome
        self.completed += 1
        self.last_completion = time.perf_counter()
        if ok:
            if self.ok == self.latencies_s.size:  # a timed window: grow by doubling
                self.latencies_s = np.concatenate([self.latencies_s, np.empty(self.ok)])
            self.latencies_s[self.ok] = latency
            self.ok += 1
        elif error is not None:
            self.errors.add(error)

    @property
    def samples(self) -> npt.NDArray[np.float64]:
        return self.latencies_s[: self.ok]

    @property
    def duration_s(self) -> float:
        return max(self.last_completion - self.first_send, 0.0)


async def _worker(client: oip.OipClient, payload: payloads.Payload, window: _Window) -> None:
    while client.gone is None and window.take():
        window.record(await client.infer(payload))


async def _report_progress(window: _Window, label: str, progress: Progress) -> None:
    while True:
        await asyncio.sleep(PROGRESS_INTERVAL_S)
        progress(f"{label}: {window.completed}/{window.requests} requests")


async def _run_window(
    client: oip.OipClient,
    payload: payloads.Payload,
    concurrency: int,
    window: _Window,
    label: str,
    progress: Progress | None,
) -> _Window:
    # No more workers than requests: an idle worker would only add scheduling noise.
    count = concurrency if window.requests is None else min(concurrency, window.requests)
    workers = [_worker(client, payload, window) for _ in range(count)]
    reporter = asyncio.create_task(_report_progress(window, label, progress)) if progress else None
    try:
        await asyncio.gather(*workers)
    finally:
        if reporter is not None:
            reporter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reporter
    return window


@dataclass(frozen=True)
class _Measured:
    window: _Window
    load: overhead.OverheadSample


async def _measure(
    client: oip.OipClient,
    payload: payloads.Payload,
    concurrency: int,
    window: _Window,
    label: str,
    progress: Progress | None,
) -> _Measured:
    async with overhead.LoopMonitor() as monitor:
        await _run_window(client, payload, concurrency, window, label, progress)
    assert monitor.sample is not None  # set on exit
    return _Measured(window, monitor.sample)


async def _settled(
    scraper: server_metrics.MetricsScraper | None, answered: int = 0
) -> server_metrics.MetricsSnapshot | None:
    """Record `answered` more successes, then scrape once the server has counted them all."""
    if scraper is None:
        return None
    scraper.answered_ok(answered)
    return await scraper.settled()


def _window_stats(window: _Window) -> steady.WindowStats:
    duration = window.duration_s
    p50 = float(np.percentile(window.samples, 50)) * 1000.0 if window.ok else 0.0
    return steady.WindowStats(window.ok / duration if duration > 0 else 0.0, p50)


def window_line(label: str, index: int, spec: SteadyState, stats_: steady.WindowStats) -> str:
    return (
        f"{label} window {index + 1}/{spec.max_windows}: "
        f"{stats_.requests_per_s:.1f} req/s, p50 {stats_.p50_ms:.2f} ms"
    )


async def _measure_windows(
    client: oip.OipClient,
    payload: payloads.Payload,
    concurrency: int,
    spec: SteadyState,
    scraper: server_metrics.MetricsScraper | None,
    label: str,
    progress: Progress | None,
) -> tuple[list[_Measured], list[server_metrics.MetricsSnapshot | None], steady.Decision]:
    """Windows until steady (or maxWindows); a scrape before the first and after each."""
    snapshots = [await _settled(scraper)]
    measured: list[_Measured] = []
    decision = steady.Decision(done=False, stable=False, accepted=())
    while not decision.done:
        window = _Window(spec.window_requests, spec.window_seconds)
        measured.append(await _measure(client, payload, concurrency, window, label, None))
        snapshots.append(await _settled(scraper, window.ok))
        decision = steady.decide(
            [_window_stats(m.window) for m in measured],
            tolerance=spec.tolerance,
            consecutive=spec.consecutive,
            max_windows=spec.max_windows,
        )
        if progress is not None:
            line = window_line(label, len(measured) - 1, spec, _window_stats(window))
            if decision.done:
                line += ", steady" if decision.stable else ", not steady: giving up"
            progress(line)
    return measured, snapshots, decision


def _steady_result(
    measured: list[_Measured], decision: steady.Decision, spec: SteadyState
) -> SteadyStateResult:
    windows = [
        WindowResult(
            index=i,
            requests=m.window.ok,
            failed=m.window.issued - m.window.ok,
            duration_s=m.window.duration_s,
            requests_per_s=s.requests_per_s,
            p50_ms=s.p50_ms,
            accepted=i in decision.accepted,
        )
        for i, m in enumerate(measured)
        for s in [_window_stats(m.window)]
    ]
    kept = [w for w in windows if w.accepted]
    return SteadyStateResult(
        stable=decision.stable,
        tolerance=spec.tolerance,
        consecutive=spec.consecutive,
        windows=windows,
        throughput_spread=steady.spread([w.requests_per_s for w in kept]),
        p50_spread=steady.spread([w.p50_ms for w in kept]),
        drift=steady.drifting(
            [steady.WindowStats(w.requests_per_s, w.p50_ms) for w in windows],
            spec.consecutive,
            spec.tolerance,
        ),
    )


async def run_closed_loop(
    client: oip.OipClient,
    payload: payloads.Payload,
    batch_size: int,
    concurrency: int,
    requests: int,
    warmup: int,
    *,
    scenario: ClosedLoopKind = "batch",
    scraper: server_metrics.MetricsScraper | None = None,
    progress: Progress | None = None,
    steady_state: SteadyState | None = None,
) -> ScenarioResult:
    """Warm up, then measure `requests` requests (or steady-state windows) of `payload`."""
    if payload.batch_size != batch_size:
        raise ValueError(f"payload holds {payload.batch_size} images, not {batch_size}")
    label = f"{scenario} b={batch_size} c={concurrency}"
    warm = _Window(warmup)
    if warmup > 0:
        await _run_window(client, payload, concurrency, warm, f"{label} warm-up", None)
    steady_result = None
    if steady_state is None:
        before = await _settled(scraper, warm.ok)
        one = await _measure(client, payload, concurrency, _Window(requests), label, progress)
        after = await _settled(scraper, one.window.ok)
        kept = [one]
    else:
        if scraper is not None:
            scraper.answered_ok(warm.ok)
        measured, snapshots, decision = await _measure_windows(
            client, payload, concurrency, steady_state, scraper, label, progress
        )
        kept = [measured[i] for i in decision.accepted]
        # Accepted windows are consecutive: the scrapes around them bound exactly them.
        before, after = snapshots[decision.accepted[0]], snapshots[decision.accepted[-1] + 1]
        steady_result = _steady_result(measured, decision, steady_state)

    ok = sum(m.window.ok for m in kept)
    issued = sum(m.window.issued for m in kept)
    duration = sum(m.window.duration_s for m in kept)
    requests_per_s = ok / duration if duration > 0 else 0.0
    latency = stats.summarize_latencies(np.concatenate([m.window.samples for m in kept]))
    server = server_metrics.diff_server_times(before, after)
    return ScenarioResult(
        scenario=scenario,
        batch_size=batch_size,
        concurrency=concurrency,
        requests=ok,
        failed=issued - ok,
        errors=merge_errors(*(m.window.errors.to_models() for m in kept)),
        duration_s=duration,
        requests_per_s=requests_per_s,
        inferences_per_s=requests_per_s * batch_size,
        latency=latency,
        server=server,
        warmup_requests=warmup,
        stable=steady_result.stable if steady_result is not None else None,
        steady_state=steady_result,
        client=overhead.summarize_overhead(
            [m.load for m in kept], latency.mean_ms if ok else None, server
        ),
    )


def summary_line(result: ScenarioResult) -> str:
    """One human line per scenario, for the progress stream."""
    lat = result.latency
    line = (
        f"{result.label}: "
        f"{result.requests} ok, {result.failed} failed, {result.requests_per_s:.1f} req/s, "
        f"{result.inferences_per_s:.1f} inf/s, p50 {lat.p50_ms:.2f} ms, p99 {lat.p99_ms:.2f} ms"
    )
    if lat.low_sample_percentiles:
        line += f" (too few samples for {', '.join(lat.low_sample_percentiles)})"
    if result.server is not None:
        line += (
            f"; server queue {result.server.queue_ms:.2f} ms, "
            f"compute {result.server.compute_ms:.2f} ms"
        )
    if result.open_loop is not None:
        run = result.open_loop
        line += (
            f"; asked {run.requested_requests_per_s:g}/s, sent {run.sent_requests_per_s:.1f}/s, "
            f"lag p99 {run.schedule_lag.p99_ms:.2f} ms, {run.late} late, {run.dropped} dropped"
        )
        if run.slo_met is not None:
            line += f", SLO p99 {run.slo_p99_ms:g} ms {'met' if run.slo_met else 'missed'}"
    if result.stable is False:
        line += " (unstable)"
    return line
