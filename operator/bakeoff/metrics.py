"""Prometheus metrics of the operator: every suite's numbers as gauges, and reconcile health.

`suite_samples` is pure: a suite's status and its cells' results in, gauge samples out.
The handlers hand each reconcile's outcome to `observe_suite`, which replaces that suite's
samples in a thread-safe store; `SuiteCollector` serves the store at scrape time, so the
series of a deleted suite (`forget_suite`) vanish with it instead of lingering as labelled
children of a `Gauge`. Reconcile counters and the duration histogram are ordinary
prometheus_client metrics, since their label sets are fixed.

Units follow Prometheus conventions: seconds, bytes, per second; counters end in _total.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from bakeoff import api
from bakeoff_bench.results import CellResult, ScenarioResult

log = logging.getLogger(__name__)

PORT_ENV = "BAKEOFF_METRICS_PORT"
DEFAULT_PORT = 8080

SUITE = ("namespace", "suite")
CELL = (*SUITE, "backend", "pool")
SCENARIO = (*CELL, "scenario", "batch_size", "concurrency", "rate")


@dataclass(frozen=True)
class Family:
    name: str
    help: str
    labels: tuple[str, ...]


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family(
            "bakeoff_suite_phase",
            "1 for the suite's current phase, 0 for every other phase",
            (*SUITE, "phase"),
        ),
        Family("bakeoff_suite_cells", "Cells of the suite per cell phase", (*SUITE, "state")),
        Family(
            "bakeoff_cell_phase",
            "1 for the cell's current phase, 0 for every other phase",
            (*CELL, "phase"),
        ),
        Family(
            "bakeoff_latency_seconds",
            "Client-side request latency of a measured scenario, by quantile",
            (*SCENARIO, "quantile"),
        ),
        Family(
            "bakeoff_throughput_inferences_per_second",
            "Inferences (images) per second of a measured scenario",
            SCENARIO,
        ),
        Family(
            "bakeoff_server_queue_seconds",
            "Mean time a request waited in the server's queue",
            SCENARIO,
        ),
        Family(
            "bakeoff_server_compute_seconds",
            "Mean server compute time per request (input + infer + output)",
            SCENARIO,
        ),
        Family(
            "bakeoff_memory_bytes",
            "Server memory at the end of the cell's run (kind: gpu or host-rss)",
            (*CELL, "kind"),
        ),
        Family(
            "bakeoff_time_to_ready_seconds",
            "Backend process start until it answered ready",
            CELL,
        ),
        Family(
            "bakeoff_cost_per_1k_inferences",
            "Pool price per hour / (3600 x best inferences per second) x 1000",
            CELL,
        ),
    )
}

QUANTILES = (("0.5", "p50_ms"), ("0.95", "p95_ms"), ("0.99", "p99_ms"))


@dataclass(frozen=True)
class Sample:
    name: str
    labels: Mapping[str, str] = field(hash=False)
    value: float


def _scenario_labels(scenario: ScenarioResult) -> dict[str, str]:
    rate = ""
    if scenario.open_loop is not None:
        rate = f"{scenario.open_loop.requested_requests_per_s:g}"
    return {
        "scenario": scenario.scenario,
        "batch_size": str(scenario.batch_size),
        "concurrency": str(scenario.concurrency),
        "rate": rate,
    }


def _scenario_samples(cell: Mapping[str, str], scenario: ScenarioResult) -> Iterator[Sample]:
    labels = {**cell, **_scenario_labels(scenario)}
    if scenario.requests > 0:
        for quantile, attribute in QUANTILES:
            value = float(getattr(scenario.latency, attribute)) / 1000.0
            yield Sample("bakeoff_latency_seconds", {**labels, "quantile": quantile}, value)
    yield Sample("bakeoff_throughput_inferences_per_second", labels, scenario.inferences_per_s)
    if scenario.server is not None:
        yield Sample("bakeoff_server_queue_seconds", labels, scenario.server.queue_ms / 1000.0)
        yield Sample("bakeoff_server_compute_seconds", labels, scenario.server.compute_ms / 1000.0)


def _result_samples(suite: Mapping[str, str], result: CellResult) -> Iterator[Sample]:
    cell = {**suite, "backend": result.backend, "pool": result.pool}
    scenarios: list[ScenarioResult] = []
    if result.single is not None:
        scenarios.append(result.single)
    # Max-rate search trials are not reported: they probe, and would collide with `rate`.
    scenarios += [*result.batch_sweep, *result.concurrency_sweep, *result.rate]
    for scenario in scenarios:
        yield from _scenario_samples(cell, scenario)
    if result.memory_bytes is not None:
        kind = result.memory_kind or "unknown"
        yield Sample("bakeoff_memory_bytes", {**cell, "kind": kind}, float(result.memory_bytes))
    if result.time_to_ready_s is not None:
        yield Sample("bakeoff_time_to_ready_seconds", cell, result.time_to_ready_s)


def suite_samples(
    namespace: str, suite: str, status: api.SuiteStatus, results: Iterable[CellResult]
) -> list[Sample]:
    """Every gauge sample of one suite, from its status and its cells' results.

    A label set appears once (the first one wins), as Prometheus requires; non-finite
    values are dropped.
    """
    base = {"namespace": namespace, "suite": suite}
    samples: list[Sample] = [
        Sample("bakeoff_suite_phase", {**base, "phase": p.value}, float(p is status.phase))
        for p in api.SuitePhase
    ]
    samples += [
        Sample(
            "bakeoff_suite_cells",
            {**base, "state": p.value},
            float(sum(c.phase is p for c in status.cells)),
        )
        for p in api.CellPhase
    ]
    for cell in status.cells:
        labels = {**base, "backend": cell.backend, "pool": cell.pool}
        samples += [
            Sample("bakeoff_cell_phase", {**labels, "phase": p.value}, float(p is cell.phase))
            for p in api.CellPhase
        ]
    for result in results:
        samples += _result_samples(base, result)
    if status.summary is not None:
        for key, cost in sorted(status.summary.cost_per_1k.items()):
            backend, _, pool = key.partition("/")
            labels = {**base, "backend": backend, "pool": pool}
            samples.append(Sample("bakeoff_cost_per_1k_inferences", labels, cost))
    seen: set[tuple[str, tuple[tuple[str, str], ...]]] = set()
    unique = []
    for sample in samples:
        identity = (sample.name, tuple(sorted(sample.labels.items())))
        if identity not in seen and math.isfinite(sample.value):
            seen.add(identity)
            unique.append(sample)
    return unique


class SuiteStore:
    """The latest samples of every suite, replaced whole on each reconcile."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._suites: dict[tuple[str, str], list[Sample]] = {}

    def put(self, namespace: str, suite: str, samples: Sequence[Sample]) -> None:
        with self._lock:
            self._suites[(namespace, suite)] = list(samples)

    def forget(self, namespace: str, suite: str) -> None:
        with self._lock:
            self._suites.pop((namespace, suite), None)

    def samples(self) -> list[Sample]:
        with self._lock:
            return [s for key in sorted(self._suites) for s in self._suites[key]]


class SuiteCollector(Collector):
    """Serves the store: every family always (HELP/TYPE), with the samples it holds now."""

    def __init__(self, store: SuiteStore) -> None:
        self.store = store

    def collect(self) -> Iterable[Metric]:
        families = {
            name: GaugeMetricFamily(name, f.help, labels=list(f.labels))
            for name, f in FAMILIES.items()
        }
        for sample in self.store.samples():
            family = FAMILIES[sample.name]
            values = [sample.labels.get(label, "") for label in family.labels]
            families[sample.name].add_metric(values, sample.value)
        return list(families.values())


RESULTS = ("success", "invalid", "error")


class OperatorMetrics:
    """A registry with the suite collector and the reconcile counters."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.store = SuiteStore()
        self.registry.register(SuiteCollector(self.store))
        self.reconciles = Counter(
            "bakeoff_reconcile",
            "Reconciles of BenchmarkSuites by result (success, invalid spec, error)",
            ["result"],
            registry=self.registry,
        )
        for result in RESULTS:
            self.reconciles.labels(result=result)
        self.errors = Counter(
            "bakeoff_reconcile_errors",
            "Reconciles that raised an unexpected error",
            registry=self.registry,
        )
        self.duration = Histogram(
            "bakeoff_reconcile_duration_seconds",
            "Wall time of one reconcile",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )

    def observe_suite(
        self, namespace: str, suite: str, status: api.SuiteStatus, results: Iterable[CellResult]
    ) -> None:
        self.store.put(namespace, suite, suite_samples(namespace, suite, status, results))

    def forget_suite(self, namespace: str, suite: str) -> None:
        self.store.forget(namespace, suite)

    @contextmanager
    def reconciling(self, invalid: tuple[type[BaseException], ...] = ()) -> Iterator[None]:
        """Time the block and count its result; exceptions propagate unchanged."""
        start = time.perf_counter()
        result = "success"
        try:
            yield
        except invalid:
            result = "invalid"
            raise
        except Exception:
            result = "error"
            self.errors.inc()
            raise
        finally:
            self.duration.observe(time.perf_counter() - start)
            self.reconciles.labels(result=result).inc()


METRICS = OperatorMetrics()
_server_started = False
_server_guard = threading.Lock()


def observe_suite(
    namespace: str, suite: str, status: api.SuiteStatus, results: Iterable[CellResult]
) -> None:
    """Record a suite's latest numbers; metrics never break a reconcile."""
    try:
        METRICS.observe_suite(namespace, suite, status, results)
    except Exception:
        log.exception("could not record metrics of suite %s/%s", namespace, suite)


def forget_suite(namespace: str, suite: str) -> None:
    METRICS.forget_suite(namespace, suite)


def reconciling(
    invalid: tuple[type[BaseException], ...] = (),
) -> AbstractContextManager[None]:
    """Time and count one reconcile (see `OperatorMetrics.reconciling`)."""
    return METRICS.reconciling(invalid)


def exporter_port(environ: Mapping[str, str] = os.environ) -> int:
    """BAKEOFF_METRICS_PORT, default 8080; 0 disables the exporter."""
    raw = environ.get(PORT_ENV, "").strip()
    if not raw:
        return DEFAULT_PORT
    port = int(raw)
    if not 0 <= port <= 65535:
        raise ValueError(f"{PORT_ENV}={raw} is not a port (0 disables the exporter)")
    return port


def start_exporter(port: int | None = None) -> int:
    """Serve /metrics on `port` (from the environment if None) once; returns the port.

    0: disabled, or the port could not be bound (logged as an error).
    """
    global _server_started
    port = exporter_port() if port is None else port
    with _server_guard:
        if port == 0 or _server_started:
            return port
        try:
            start_http_server(port, registry=METRICS.registry)
        except OSError as error:  # metrics must not keep the operator from reconciling
            log.error("cannot serve metrics on :%d (%s); set %s", port, error, PORT_ENV)
            return 0
        _server_started = True
    log.info("serving Prometheus metrics on :%d/metrics", port)
    return port
