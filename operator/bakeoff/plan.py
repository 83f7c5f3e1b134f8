"""The plan of a suite: which cells (backend x node pool) exist and how each is configured.

Pure: no I/O. The local runner and (later) the operator both start from `plan_cells`.
"""

from __future__ import annotations

from dataclasses import dataclass

from bakeoff import api
from bakeoff_bench import config as bench_config
from bakeoff_serve.model_configs import BUILTIN_MODELS


@dataclass(frozen=True)
class Cell:
    backend: api.Backend
    pool: api.NodePool

    @property
    def key(self) -> str:
        return f"{self.backend.name}-{self.pool.name}"


def plan_cells(spec: api.BenchmarkSuiteSpec) -> list[Cell]:
    """Every backend on each of its pools, in the suite's order (pools outer, backends inner)."""
    return [
        Cell(backend, pool)
        for pool in spec.node_pools
        for backend in spec.backends
        if backend.pools is None or pool.name in backend.pools
    ]


def parity_reference(spec: api.BenchmarkSuiteSpec) -> str:
    return spec.parity.reference or spec.backends[0].name


def image_size(spec: api.BenchmarkSuiteSpec) -> int:
    return BUILTIN_MODELS[spec.model.source.builtin.value].image_size


def build_bench_config(
    suite: api.BenchmarkSuite, cell: Cell, target: bench_config.Target
) -> bench_config.BenchConfig:
    """The load generator's input for one cell: the same scenarios for every backend."""
    scenarios = suite.spec.scenarios
    single = sweep = concurrency = rate = None
    if scenarios.single is not None:
        single = bench_config.SingleScenario(
            requests=scenarios.single.requests, warmup=scenarios.single.warmup
        )
    if scenarios.batch_sweep is not None:
        sweep = bench_config.BatchSweepScenario(
            batch_sizes=list(scenarios.batch_sweep.batch_sizes),
            requests=scenarios.batch_sweep.requests,
            warmup=scenarios.batch_sweep.warmup,
        )
    if scenarios.concurrency_sweep is not None:
        concurrency = bench_config.ConcurrencySweepScenario(
            levels=list(scenarios.concurrency_sweep.levels),
            batch_sizes=list(scenarios.concurrency_sweep.batch_sizes),
            requests=scenarios.concurrency_sweep.requests,
            warmup=scenarios.concurrency_sweep.warmup,
        )
    if scenarios.rate is not None:
        rate = bench_config.RateScenario(
            requests_per_second=list(scenarios.rate.requests_per_second),
            arrival=bench_config.Arrival(scenarios.rate.arrival.value),
            duration_seconds=scenarios.rate.duration_seconds,
            slo_p99_ms=scenarios.rate.slo_p99_ms,
            max_in_flight=scenarios.rate.max_in_flight,
            max_rate_search=(
                bench_config.MaxRateSearch() if scenarios.rate.slo_p99_ms is not None else None
            ),
        )
    return bench_config.BenchConfig(
        suite=suite.metadata.name,
        backend=cell.backend.name,
        pool=cell.pool.name,
        target=target,
        single=single,
        batch_sweep=sweep,
        concurrency_sweep=concurrency,
        rate=rate,
        steady_state=scenarios.steady_state,
        workers=scenarios.workers,
        seed=suite.spec.model.seed,
        # An external backend is waited for here (a deployed one is ready before its Job).
        ready_timeout_s=float(suite.spec.timeouts.ready_seconds),
    )
