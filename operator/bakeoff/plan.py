"""The plan of a suite: which cells (backend x node pool) exist and how each is configured.

Pure: no I/O. The local runner and (later) the operator both start from `plan_cells`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final, TypeVar

from pydantic import BaseModel

from bakeoff import api
from bakeoff_bench import config as bench_config
from bakeoff_serve.model_configs import BUILTIN_MODELS

ScenarioT = TypeVar("ScenarioT", bound=BaseModel)


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
    rate = scenarios.rate
    # A suite's sloP99Ms asks for the highest rate that meets it as well; the load generator
    # searches only when asked to.
    searched = rate is not None and rate.slo_p99_ms is not None
    return bench_config.BenchConfig(
        suite=suite.metadata.name,
        backend=cell.backend.name,
        pool=cell.pool.name,
        target=target,
        single=_as_bench_scenario(bench_config.SingleScenario, scenarios.single),
        batch_sweep=_as_bench_scenario(bench_config.BatchSweepScenario, scenarios.batch_sweep),
        concurrency_sweep=_as_bench_scenario(
            bench_config.ConcurrencySweepScenario, scenarios.concurrency_sweep
        ),
        rate=_as_bench_scenario(
            bench_config.RateScenario,
            rate,
            max_rate_search=bench_config.MaxRateSearch() if searched else None,
        ),
        steady_state=scenarios.steady_state,
        workers=scenarios.workers,
        clients=resolve_clients(scenarios),
        seed=suite.spec.model.seed,
        # An external backend is waited for here (a deployed one is ready before its Job).
        ready_timeout_s=float(suite.spec.timeouts.ready_seconds),
    )


# `clients: auto`: one client per this many requested requests/s. One client process sends a
# few thousand requests/s with real payloads (issue-size images, responses parsed), so a
# share of 2,000 leaves it room; closed-loop suites need one (their concurrency is theirs).
AUTO_REQUESTS_PER_CLIENT: Final = 2000.0


def resolve_clients(scenarios: api.Scenarios) -> int:
    """How many clients share the load: the number given, or `auto`'s from the top rate."""
    if scenarios.clients != "auto":
        return scenarios.clients
    rates = scenarios.rate.requests_per_second if scenarios.rate is not None else []
    if not rates:
        return 1
    wanted = math.ceil(max(rates) / AUTO_REQUESTS_PER_CLIENT)
    return min(bench_config.MAX_CLIENTS, max(1, wanted))


def _as_bench_scenario(
    scenario: type[ScenarioT], spec: BaseModel | None, **knobs: object
) -> ScenarioT | None:
    """A suite's scenario spec as the load generator runs it: the spec's fields as they are,
    the load generator's own knobs at their defaults unless given."""
    return None if spec is None else scenario.model_validate({**dict(spec), **knobs})
