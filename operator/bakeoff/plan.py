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
    """Every backend on every pool, in the suite's order (pools outer, backends inner)."""
    return [Cell(backend, pool) for pool in spec.node_pools for backend in spec.backends]


def parity_reference(spec: api.BenchmarkSuiteSpec) -> str:
    return spec.parity.reference or spec.backends[0].name


def warmup_batch_sizes(spec: api.BenchmarkSuiteSpec, backend: api.Backend) -> list[int]:
    """Every batch size the suite will send: a backend is 'ready' only once all are warm."""
    sizes = {1}
    if spec.scenarios.batch_sweep is not None:
        sizes.update(spec.scenarios.batch_sweep.batch_sizes)
    return sorted(s for s in sizes if s <= backend.max_batch_size)


def image_size(spec: api.BenchmarkSuiteSpec) -> int:
    return BUILTIN_MODELS[spec.model.source.builtin.value].image_size


def build_bench_config(
    suite: api.BenchmarkSuite, cell: Cell, target: bench_config.Target
) -> bench_config.BenchConfig:
    """The load generator's input for one cell: the same scenarios for every backend."""
    scenarios = suite.spec.scenarios
    single = (
        bench_config.SingleScenario(
            requests=scenarios.single.requests, warmup=scenarios.single.warmup
        )
        if scenarios.single is not None
        else None
    )
    sweep = (
        bench_config.BatchSweepScenario(
            batch_sizes=list(scenarios.batch_sweep.batch_sizes),
            requests=scenarios.batch_sweep.requests,
            warmup=scenarios.batch_sweep.warmup,
        )
        if scenarios.batch_sweep is not None
        else None
    )
    return bench_config.BenchConfig(
        suite=suite.metadata.name,
        backend=cell.backend.name,
        pool=cell.pool.name,
        target=target,
        single=single,
        batch_sweep=sweep,
        seed=suite.spec.model.seed,
    )


def unimplemented_scenarios(spec: api.BenchmarkSuiteSpec) -> list[str]:
    """Scenarios the API accepts that this version does not run yet (said, never hidden)."""
    names = []
    if spec.scenarios.concurrency_sweep is not None:
        names.append("concurrencySweep")
    if spec.scenarios.rate is not None:
        names.append("rate")
    return names
