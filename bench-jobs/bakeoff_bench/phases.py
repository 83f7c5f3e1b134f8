"""The measured phases of a run: closed-loop scenarios, rates, the max-rate search, flags.

Called by `runner.run_bench` once the backend is ready, its payloads are encoded and its
cold start is recorded. Scenarios run in a fixed order (single, batch sweep, concurrency
sweep, rates, max-rate search); each prints one summary line. `attach_flags` then runs the
pure `flags` rules over every result.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from bakeoff_bench import client as oip
from bakeoff_bench import flags, payloads, scenarios, search, server_metrics, shares, workers
from bakeoff_bench.config import BenchConfig, SteadyState
from bakeoff_bench.results import (
    ClientShareResult,
    ColdStart,
    Flag,
    MaxRateResult,
    ScenarioResult,
)


@dataclass
class Measured:
    """Every scenario's result, in run order."""

    single: ScenarioResult | None = None
    batch_sweep: list[ScenarioResult] = field(default_factory=list)
    concurrency_sweep: list[ScenarioResult] = field(default_factory=list)
    rate: list[ScenarioResult] = field(default_factory=list)
    max_rate: MaxRateResult | None = None

    def closed_loop(self) -> list[ScenarioResult]:
        return ([self.single] if self.single else []) + self.batch_sweep + self.concurrency_sweep

    def everything(self) -> list[ScenarioResult]:
        trials = self.max_rate.trials if self.max_rate is not None else []
        return self.closed_loop() + self.rate + trials


async def run_closed_loop(
    client: oip.OipClient,
    config: BenchConfig,
    encoded: Mapping[int, payloads.Payload],
    scraper: server_metrics.MetricsScraper,
    progress: Callable[[str], None],
    measured: Measured,
) -> None:
    """The single-image scenario, the batch sweep, then the concurrency sweep."""
    default = config.steady_state

    async def closed(
        kind: scenarios.ClosedLoopKind,
        size: int,
        concurrency: int,
        requests: int,
        warmup: int,
        steady_state: SteadyState | None,
    ) -> ScenarioResult | None:
        share = shares.closed_loop_share(
            concurrency, requests, warmup, config.client_index, config.clients
        )
        if share.concurrency == 0:
            # Nothing to send, but the window edges are barriers the other clients wait at.
            await scraper.settled()
            await scraper.settled()
            return None
        result = await scenarios.run_closed_loop(
            client, encoded[size], size, share.concurrency, share.requests, share.warmup,
            scenario=kind, scraper=scraper, progress=progress,
            steady_state=steady_state or default,
        )  # fmt: skip
        client.raise_if_gone(result.label)
        progress(scenarios.summary_line(result))
        return _as_share(result, config, concurrency)

    def keep(into: list[ScenarioResult], result: ScenarioResult | None) -> None:
        if result is not None:
            into.append(result)

    if config.single is not None:
        spec = config.single
        measured.single = await closed(
            "single", 1, 1, spec.requests, spec.warmup, spec.steady_state
        )
    if config.batch_sweep is not None:
        sweep = config.batch_sweep
        for size in sweep.batch_sizes:
            args = (size, sweep.concurrency, sweep.requests, sweep.warmup, sweep.steady_state)
            keep(measured.batch_sweep, await closed("batch", *args))
    if config.concurrency_sweep is not None:
        curve = config.concurrency_sweep
        for size in curve.batch_sizes:
            for level in curve.levels:
                args = (size, level, curve.requests, curve.warmup, curve.steady_state)
                keep(measured.concurrency_sweep, await closed("concurrency", *args))


def _as_share(result: ScenarioResult, config: BenchConfig, total: int) -> ScenarioResult:
    """One of several clients' results: labelled with the scenario's whole concurrency (so
    the clients' parts line up), its own part in `clients`."""
    if config.clients == 1:
        return result
    mine = ClientShareResult(
        index=config.client_index, node=os.environ.get("BAKEOFF_NODE_NAME", ""),
        concurrency=result.concurrency, requests=result.requests, failed=result.failed,
        requests_per_s=result.requests_per_s, p50_ms=result.latency.p50_ms,
        p99_ms=result.latency.p99_ms,
    )  # fmt: skip
    return result.model_copy(update={"concurrency": total, "clients": [mine]})


async def run_rates(
    client: oip.OipClient,
    config: BenchConfig,
    encoded: Mapping[int, payloads.Payload],
    scraper: server_metrics.MetricsScraper,
    progress: Callable[[str], None],
    measured: Measured,
) -> None:
    """Each configured rate, then the max-rate search (which reuses them as its bracket)."""
    spec = config.rate
    if spec is None:
        return
    payload = encoded[spec.batch_size]

    async def run(rate: float, duration_s: float | None = None) -> ScenarioResult:
        seconds = duration_s or spec.duration_seconds
        progress(
            f"rate {rate:g}/s {spec.arrival.value} b={spec.batch_size}: {seconds:g} s "
            f"after {spec.warmup_seconds:g} s of warm-up, {config.workers} client process(es)"
        )
        first, total = shares.rate_shares(config.client_index, config.clients, config.workers)
        result = await workers.run_rate(
            client, payload, spec, rate, seed=config.seed, workers=config.workers,
            scraper=scraper, duration_s=duration_s, first_share=first, total_shares=total,
        )  # fmt: skip
        client.raise_if_gone(result.label)
        progress(scenarios.summary_line(result))
        return _as_share(result, config, result.concurrency)

    for rate in spec.requests_per_second:
        measured.rate.append(await run(rate))
    search_spec = spec.max_rate_search
    if search_spec is None or spec.slo_p99_ms is None:
        return
    start, basis = search.start_rate(
        measured.closed_loop(), spec.batch_size, spec.requests_per_second
    )
    progress(f"max-rate search: p99 <= {spec.slo_p99_ms:g} ms, from {start:.1f} req/s ({basis})")

    async def trial(rate: float) -> ScenarioResult:
        return await run(rate, search_spec.duration_seconds)

    measured.max_rate = await search.search_max_rate(
        trial,
        slo_p99_ms=spec.slo_p99_ms,
        start=start,
        start_basis=basis,
        seeded=measured.rate,
        steps=search_spec.steps,
    )
    progress(f"max-rate search: {measured.max_rate.message}")


def attach_flags(
    measured: Measured, cold: ColdStart | None, metrics_expected: bool
) -> tuple[list[Flag], list[str]]:
    """Flags on every scenario (in place); the cell's own flags; one note per flag."""
    notes: list[str] = []
    for result in measured.everything():
        result.flags = flags.scenario_flags(result, metrics_expected=metrics_expected)
        notes += [f"{result.label}: {flag.message}" for flag in result.flags]
    cell_flags: list[Flag] = []
    if cold is not None:
        warm = flags.steady_p50_by_batch(measured.closed_loop())
        cell_flags = flags.cold_start_flags(cold, warm)
        notes += [f"cold start: {flag.message}" for flag in cell_flags]
    return cell_flags, notes
