"""Open-loop rate runs: one worker's share (`run_share`), and the merge of N shares.

Called by `runner` (through `run_rate`) for each configured rate and each step of the
max-rate search, and by `workers` inside each client process. Latency is timed from the
*scheduled* send (docs/architecture.md §2, rule 4): lag + service latency, where lag is how
late the client actually sent. Shares carry mergeable histograms, so N processes (or pods)
merge exactly as one client's result would (`stats.merge_latency_stats`).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Final

import numpy as np

from bakeoff_bench import client as oip
from bakeoff_bench import dispatch, overhead, payloads, stats, timers
from bakeoff_bench.config import Arrival, RateScenario
from bakeoff_bench.results import (
    LatencyStats,
    OpenLoopResult,
    RequestError,
    ScenarioResult,
    ServerTimes,
    merge_errors,
)

START_LEAD_S: Final = 0.05  # schedule starts this far ahead, so the first send is not late
SLO_MISS_FRACTION: Final = 0.01  # p99 meaning: at most 1% of scheduled may be slow or lost


@dataclass(frozen=True)
class RateRun:
    """One share of one rate run: what `run_share` needs besides the client (picklable)."""

    arrival: Arrival
    rate: float  # total over all workers
    duration_s: float
    seed: int
    max_in_flight: int  # of this share
    late_threshold_s: float
    drain_s: float
    worker: int = 0
    workers: int = 1

    @classmethod
    def from_config(
        cls, spec: RateScenario, rate: float, seed: int, duration_s: float | None = None
    ) -> RateRun:
        return cls(
            arrival=spec.arrival,
            rate=rate,
            duration_s=spec.duration_seconds if duration_s is None else duration_s,
            seed=seed,
            max_in_flight=spec.max_in_flight,
            late_threshold_s=spec.late_threshold_ms / 1000.0,
            drain_s=spec.drain_seconds,
        )

    def share(self, worker: int, workers: int) -> RateRun:
        """Worker `worker`'s part: 1/N of the rate (by `timers`) and of the in-flight bound."""
        per_worker = -(-self.max_in_flight // workers)  # ceil: N shares never bound below total
        return replace(self, worker=worker, workers=workers, max_in_flight=per_worker)

    def warmup(self, seconds: float) -> RateRun:
        # A different seed: warm-up sends must not pre-play the measured burst pattern.
        return replace(self, duration_s=seconds, seed=self.seed + 1)


@dataclass(frozen=True)
class ShareOutcome:
    """One share's counts and statistics; everything merges across shares."""

    scheduled: int
    sent: int
    ok: int
    failed: int
    late: int
    dropped_max_in_flight: int
    dropped_at_end: int
    span_s: float  # schedule start to last answer
    latency: LatencyStats  # from the scheduled send, successful requests
    service: LatencyStats  # from the actual send
    lag: LatencyStats  # actual minus scheduled send, every sent request
    errors: list[RequestError]
    load: overhead.OverheadSample | None


def summarize_record(
    record: dispatch.DispatchRecord,
    late_threshold_s: float,
    load: overhead.OverheadSample | None = None,
) -> ShareOutcome:
    """Pure: a dispatch record as counts and latency statistics."""
    sent = ~np.isnan(record.sent_at)
    # A send up to dispatch.EARLY_TOLERANCE_S early counts as on time (lag 0).
    lag = np.maximum(record.sent_at - (record.start + record.scheduled), 0.0)
    ok = record.ok
    from_schedule = lag[ok] + record.latency_s[ok]
    lag = lag[sent]
    answered = int(np.count_nonzero(~np.isnan(record.latency_s)))
    span = record.last_completion - record.start
    return ShareOutcome(
        scheduled=int(record.scheduled.size),
        sent=int(np.count_nonzero(sent)),
        ok=int(np.count_nonzero(ok)),
        failed=answered - int(np.count_nonzero(ok)),
        late=int(np.count_nonzero(lag > late_threshold_s)),
        dropped_max_in_flight=record.dropped_max_in_flight,
        dropped_at_end=record.dropped_at_end,
        span_s=float(span) if np.isfinite(span) else 0.0,
        latency=stats.summarize_latencies(from_schedule),
        service=stats.summarize_latencies(record.latency_s[ok]),
        lag=stats.summarize_latencies(lag),
        errors=record.errors.to_models(),
        load=load,
    )


async def run_share(
    client: oip.OipClient, payload: payloads.Payload, run: RateRun, start: float
) -> ShareOutcome:
    """Send this share's schedule from `start` (on `dispatch`'s clock, time.monotonic)."""
    times = timers.send_times(
        run.arrival,
        run.rate,
        run.duration_s,
        seed=run.seed,
        worker=run.worker,
        workers=run.workers,
    )

    def send() -> Awaitable[oip.InferOutcome]:
        return client.infer(payload)

    async with overhead.LoopMonitor() as monitor:
        record = await dispatch.run_schedule(
            times,
            send,
            start=start,
            end=run.duration_s,
            max_in_flight=run.max_in_flight,
            drain_s=run.drain_s,
        )
    return summarize_record(record, run.late_threshold_s, monitor.sample)


def merge_shares(shares: Sequence[ShareOutcome]) -> ShareOutcome:
    """N shares as one: counts add, statistics merge through histograms (exact for one)."""
    if len(shares) == 1:
        return shares[0]
    return ShareOutcome(
        scheduled=sum(s.scheduled for s in shares),
        sent=sum(s.sent for s in shares),
        ok=sum(s.ok for s in shares),
        failed=sum(s.failed for s in shares),
        late=sum(s.late for s in shares),
        dropped_max_in_flight=sum(s.dropped_max_in_flight for s in shares),
        dropped_at_end=sum(s.dropped_at_end for s in shares),
        span_s=max(s.span_s for s in shares),  # every share starts at the same instant
        latency=stats.merge_latency_stats([s.latency for s in shares]),
        service=stats.merge_latency_stats([s.service for s in shares]),
        lag=stats.merge_latency_stats([s.lag for s in shares]),
        errors=merge_errors(*(s.errors for s in shares)),
        load=None,  # per-process; see `rate_result`
    )


def slo_met(merged: ShareOutcome, slo_p99_ms: float | None) -> bool | None:
    """p99 within the SLO, and at most 1% of the schedule failed, dropped or never answered.

    Lost requests have no latency; counting them as slow keeps the p99's meaning ("99% of
    requests were this fast") honest when the server sheds load.
    """
    if slo_p99_ms is None:
        return None
    lost = merged.scheduled - merged.ok
    return (
        merged.ok > 0
        and merged.latency.p99_ms <= slo_p99_ms
        and lost <= SLO_MISS_FRACTION * merged.scheduled
    )


def rate_result(
    shares: Sequence[ShareOutcome],
    run: RateRun,
    spec: RateScenario,
    batch_size: int,
    server: ServerTimes | None,
    warmup_requests: int = 0,
) -> ScenarioResult:
    """Pure: the scenario result of one rate run from its shares."""
    merged = merge_shares(shares)
    requests_per_s = merged.ok / merged.span_s if merged.span_s > 0 else 0.0
    loads = [
        overhead.summarize_overhead([s.load], s.service.mean_ms if s.ok else None, server)
        for s in shares
        if s.load is not None
    ]
    client = overhead.worst_of([c for c in loads if c is not None])
    if client is not None and server is not None and merged.ok:
        gap = merged.service.mean_ms - server.request_ms
        client = client.model_copy(update={"client_minus_server_ms": gap})
    return ScenarioResult(
        scenario="rate",
        batch_size=batch_size,
        concurrency=spec.max_in_flight,
        requests=merged.ok,
        failed=merged.scheduled - merged.ok,
        errors=merged.errors,
        duration_s=merged.span_s,
        requests_per_s=requests_per_s,
        inferences_per_s=requests_per_s * batch_size,
        latency=merged.latency,
        server=server,
        warmup_requests=warmup_requests,
        open_loop=OpenLoopResult(
            arrival=run.arrival.value,
            requested_requests_per_s=run.rate,
            duration_seconds=run.duration_s,
            scheduled=merged.scheduled,
            sent=merged.sent,
            sent_requests_per_s=merged.sent / run.duration_s,
            achieved_requests_per_s=requests_per_s,
            schedule_lag=merged.lag,
            late_threshold_ms=run.late_threshold_s * 1000.0,
            late=merged.late,
            max_in_flight=spec.max_in_flight,
            dropped_max_in_flight=merged.dropped_max_in_flight,
            dropped_at_end=merged.dropped_at_end,
            service_latency=merged.service,
            slo_p99_ms=spec.slo_p99_ms,
            slo_met=slo_met(merged, spec.slo_p99_ms),
        ),
        client=client,
        workers=len(shares),
    )


async def run_in_process(
    client: oip.OipClient,
    payload: payloads.Payload,
    run: RateRun,
    warmup: RateRun | None,
    between: Callable[[int], Awaitable[None]],
) -> tuple[list[ShareOutcome], int]:
    """Warm-up share, then `between(warm-up successes)` (the scrape), then the measured share.

    Returns the measured share and how many warm-up requests were sent.
    """
    warm_sent = warm_ok = 0
    if warmup is not None:
        warm = await run_share(client, payload, warmup, time.monotonic() + START_LEAD_S)
        warm_sent, warm_ok = warm.sent, warm.ok
    await between(warm_ok)
    return [await run_share(client, payload, run, time.monotonic() + START_LEAD_S)], warm_sent
