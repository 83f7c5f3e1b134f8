"""Closed-loop scenarios: `concurrency` workers, each sending its next request on completion.

Called by `runner` for the single-image scenario (batch 1, one worker) and for each batch
size of the sweep. Phases never mix (DESIGN §2): warm-up requests run first and are thrown
away, then the server's metrics are scraped, then exactly `requests` measured requests run,
then the metrics are scraped again, so the server-side diff covers the measured window only.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Final, Literal

import numpy as np

from bakeoff_bench import client as oip
from bakeoff_bench import payloads, server_metrics, stats
from bakeoff_bench.results import ScenarioResult

Progress = Callable[[str], None]
PROGRESS_INTERVAL_S: Final = 2.0  # a progress line every 2 s: alive, not noisy


class _Window:
    """Shared state of one batch of requests: a ticket counter and what came back.

    The workers share it instead of closing over loop variables; asyncio runs them on one
    thread, so the counter needs no lock.
    """

    def __init__(self, requests: int) -> None:
        self.requests = requests
        self.issued = 0
        self.completed = 0
        self.ok = 0
        # Preallocated: recording a latency is one store, not a list growth.
        self.latencies_s = np.empty(requests, dtype=np.float64)
        self.errors = oip.ErrorTally()
        self.first_send = 0.0
        self.last_completion = 0.0

    def take(self) -> bool:
        if self.issued >= self.requests:
            return False
        if self.issued == 0:
            self.first_send = time.perf_counter()
        self.issued += 1
        return True

    def record(self, outcome: oip.InferOutcome) -> None:
        latency, ok, error = outcome
        self.completed += 1
        self.last_completion = time.perf_counter()
        if ok:
            self.latencies_s[self.ok] = latency
            self.ok += 1
        elif error is not None:
            self.errors.add(error)


async def _worker(client: oip.OipClient, payload: payloads.Payload, window: _Window) -> None:
    while window.take():
        window.record(await client.infer(payload))


async def _report_progress(window: _Window, label: str, progress: Progress) -> None:
    while True:
        await asyncio.sleep(PROGRESS_INTERVAL_S)
        progress(f"{label}: {window.completed}/{window.requests} requests")


async def _run_window(
    client: oip.OipClient,
    payload: payloads.Payload,
    concurrency: int,
    requests: int,
    label: str,
    progress: Progress | None,
) -> _Window:
    window = _Window(requests)
    # No more workers than requests: an idle worker would only add scheduling noise.
    workers = [_worker(client, payload, window) for _ in range(min(concurrency, requests))]
    reporter = asyncio.create_task(_report_progress(window, label, progress)) if progress else None
    try:
        await asyncio.gather(*workers)
    finally:
        if reporter is not None:
            reporter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reporter
    return window


async def run_closed_loop(
    client: oip.OipClient,
    payload: payloads.Payload,
    batch_size: int,
    concurrency: int,
    requests: int,
    warmup: int,
    *,
    scenario: Literal["single", "batch"] = "batch",
    scraper: server_metrics.MetricsScraper | None = None,
    progress: Progress | None = None,
) -> ScenarioResult:
    """Warm up, then measure `requests` requests of `payload` with `concurrency` in flight."""
    if payload.batch_size != batch_size:
        raise ValueError(f"payload holds {payload.batch_size} images, not {batch_size}")
    label = f"{scenario} b={batch_size} c={concurrency}"
    if warmup > 0:
        await _run_window(client, payload, concurrency, warmup, f"{label} warm-up", None)
    before = await scraper.snapshot() if scraper is not None else None
    window = await _run_window(client, payload, concurrency, requests, label, progress)
    after = await scraper.snapshot() if scraper is not None else None

    duration = max(window.last_completion - window.first_send, 0.0)
    requests_per_s = window.ok / duration if duration > 0 else 0.0
    return ScenarioResult(
        scenario=scenario,
        batch_size=batch_size,
        concurrency=concurrency,
        requests=window.ok,
        failed=requests - window.ok,
        errors=window.errors.to_models(),
        duration_s=duration,
        requests_per_s=requests_per_s,
        inferences_per_s=requests_per_s * batch_size,
        latency=stats.summarize_latencies(window.latencies_s[: window.ok]),
        server=server_metrics.diff_server_times(before, after),
    )


def summary_line(result: ScenarioResult) -> str:
    """One human line per scenario, for the progress stream."""
    lat = result.latency
    line = (
        f"{result.scenario} b={result.batch_size} c={result.concurrency}: "
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
    return line
