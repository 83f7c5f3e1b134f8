"""Operator metrics: a finished suite's numbers on /metrics, parsed back with the parser."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import pytest
from prometheus_client import generate_latest, start_http_server
from prometheus_client.parser import text_string_to_metric_families
from result_factories import cell

from bakeoff import analysis, api, metrics, validation
from bakeoff_bench.results import CellResult

SUITE = validation.load_suite(Path(__file__).parents[2] / "examples" / "cpu-mock.yaml")
POOL = "cpu-mock"

Labels = tuple[tuple[str, str], ...]


def finished_suite() -> tuple[api.SuiteStatus, list[CellResult]]:
    results = [
        cell("pytorch", POOL, p50=20.0, best=100.0, memory=600 * 2**20),
        cell("triton-onnx-cpu", POOL, p50=10.0, best=200.0, memory=400 * 2**20),
    ]
    verdict = analysis.analyze(SUITE, results)
    status = api.SuiteStatus(
        phase=api.SuitePhase.SUCCEEDED,
        progress="2/2",
        cells=[
            api.CellStatus(backend=r.backend, pool=POOL, phase=api.CellPhase.SUCCEEDED)
            for r in results
        ],
        summary=verdict.summary(),
    )
    return status, results


def parse(text: str) -> dict[str, dict[Labels, float]]:
    """sample name -> {sorted labels: value}"""
    out: dict[str, dict[Labels, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = tuple(sorted(sample.labels.items()))
            assert labels not in out.setdefault(sample.name, {}), f"duplicate {sample}"
            out[sample.name][labels] = sample.value
    return out


def render(m: metrics.OperatorMetrics) -> dict[str, dict[Labels, float]]:
    return parse(generate_latest(m.registry).decode())


def key(**labels: str) -> Labels:
    return tuple(sorted(labels.items()))


def scenario_key(backend: str, scenario: str, batch: int, **extra: str) -> Labels:
    return key(
        namespace="lab",
        suite="cpu-mock",
        backend=backend,
        pool=POOL,
        scenario=scenario,
        batch_size=str(batch),
        concurrency="1",
        rate="",
        **extra,
    )


def observed_finished_suite() -> metrics.OperatorMetrics:
    m = metrics.OperatorMetrics()
    status, results = finished_suite()
    m.observe_suite("lab", "cpu-mock", status, results)
    return m


def test_finished_suite_phase_and_cells() -> None:
    series = render(observed_finished_suite())
    phases = series["bakeoff_suite_phase"]
    assert phases == {
        key(namespace="lab", suite="cpu-mock", phase=p.value): float(p is api.SuitePhase.SUCCEEDED)
        for p in api.SuitePhase
    }
    cells = series["bakeoff_suite_cells"]
    assert cells[key(namespace="lab", suite="cpu-mock", state="Succeeded")] == 2
    assert cells[key(namespace="lab", suite="cpu-mock", state="Pending")] == 0
    assert len(cells) == len(api.CellPhase)
    cell_phase = series["bakeoff_cell_phase"]
    one = key(namespace="lab", suite="cpu-mock", backend="pytorch", pool=POOL, phase="Succeeded")
    assert cell_phase[one] == 1
    assert sum(cell_phase.values()) == 2 and len(cell_phase) == 2 * len(api.CellPhase)


def test_finished_suite_latency_throughput_server_times() -> None:
    series = render(observed_finished_suite())
    latency = series["bakeoff_latency_seconds"]
    single = scenario_key("triton-onnx-cpu", "single", 1, quantile="0.5")
    assert latency[single] == pytest.approx(0.010)
    assert latency[scenario_key("triton-onnx-cpu", "single", 1, quantile="0.95")] == (
        pytest.approx(0.013)
    )
    assert latency[scenario_key("triton-onnx-cpu", "single", 1, quantile="0.99")] == (
        pytest.approx(0.016)
    )
    assert latency[scenario_key("pytorch", "batch", 8, quantile="0.5")] == pytest.approx(0.080)
    # 2 backends x (single + 2 batch sizes) x 3 quantiles
    assert len(latency) == 2 * 3 * 3

    throughput = series["bakeoff_throughput_inferences_per_second"]
    assert throughput[scenario_key("pytorch", "batch", 8)] == pytest.approx(100.0)
    assert throughput[scenario_key("triton-onnx-cpu", "batch", 8)] == pytest.approx(200.0)
    assert throughput[scenario_key("triton-onnx-cpu", "batch", 1)] == pytest.approx(100.0)
    assert len(throughput) == 6

    queue = series["bakeoff_server_queue_seconds"]
    assert queue[scenario_key("pytorch", "single", 1)] == pytest.approx(0.05e-3)
    compute = series["bakeoff_server_compute_seconds"]
    # input 0.1 + infer 0.7 x p50 + output 0.05 (ms)
    assert compute[scenario_key("pytorch", "single", 1)] == pytest.approx(14.15e-3)
    assert compute[scenario_key("triton-onnx-cpu", "batch", 8)] == pytest.approx(28.15e-3)


def test_finished_suite_memory_cost_ready() -> None:
    series = render(observed_finished_suite())
    cell_key = {"namespace": "lab", "suite": "cpu-mock", "pool": POOL}
    assert series["bakeoff_memory_bytes"] == {
        key(**cell_key, backend="pytorch", kind="host-rss"): 600 * 2**20,
        key(**cell_key, backend="triton-onnx-cpu", kind="host-rss"): 400 * 2**20,
    }
    # costPerHour 0.10: 0.10 / (3600 x best inferences/s) x 1000
    assert series["bakeoff_cost_per_1k_inferences"] == {
        key(**cell_key, backend="pytorch"): pytest.approx(0.1 / 3600 / 100 * 1000, abs=1e-6),
        key(**cell_key, backend="triton-onnx-cpu"): pytest.approx(
            0.1 / 3600 / 200 * 1000, abs=1e-6
        ),
    }
    assert series["bakeoff_time_to_ready_seconds"][key(**cell_key, backend="pytorch")] == 3.0


def test_every_family_is_typed_and_documented_even_when_empty() -> None:
    text = generate_latest(metrics.OperatorMetrics().registry).decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name in metrics.FAMILIES:
        assert families[name].type == "gauge" and families[name].documentation
        assert families[name].samples == []
    assert families["bakeoff_reconcile"].type == "counter"
    assert families["bakeoff_reconcile_errors"].type == "counter"
    assert families["bakeoff_reconcile_duration_seconds"].type == "histogram"


def test_deleted_suite_series_disappear_and_others_stay() -> None:
    m = observed_finished_suite()
    status, results = finished_suite()
    m.observe_suite("lab", "other", status, results[:1])
    m.forget_suite("lab", "cpu-mock")
    series = render(m)
    for name in metrics.FAMILIES:
        for labels in series.get(name, {}):
            assert dict(labels)["suite"] == "other", (name, labels)
    assert series["bakeoff_suite_phase"]
    m.forget_suite("lab", "other")
    m.forget_suite("lab", "never-existed")
    assert not any(render(m).get(name) for name in metrics.FAMILIES)


def test_a_reconcile_replaces_the_suite_samples() -> None:
    m = metrics.OperatorMetrics()
    running = api.SuiteStatus(
        phase=api.SuitePhase.BENCHMARKING,
        cells=[api.CellStatus(backend="pytorch", pool=POOL, phase=api.CellPhase.BENCHMARKING)],
    )
    m.observe_suite("lab", "cpu-mock", running, [])
    series = render(m)
    assert (
        series["bakeoff_suite_phase"][key(namespace="lab", suite="cpu-mock", phase="Benchmarking")]
        == 1
    )
    assert "bakeoff_latency_seconds" not in series  # no results yet
    status, results = finished_suite()
    m.observe_suite("lab", "cpu-mock", status, results)
    phases = render(m)["bakeoff_suite_phase"]
    assert phases[key(namespace="lab", suite="cpu-mock", phase="Benchmarking")] == 0
    assert phases[key(namespace="lab", suite="cpu-mock", phase="Succeeded")] == 1


def test_duplicate_label_sets_and_non_finite_values_are_dropped() -> None:
    result = cell("pytorch", POOL)
    result = result.model_copy(update={"concurrency_sweep": [result.batch_sweep[0]]})
    status = api.SuiteStatus(
        summary=api.Summary(cost_per_1k={"pytorch/cpu-mock": float("inf")}),
    )
    samples = metrics.suite_samples("lab", "s", status, [result, result])
    identities = [(s.name, tuple(sorted(s.labels.items()))) for s in samples]
    assert len(identities) == len(set(identities))
    assert not [s for s in samples if s.name == "bakeoff_cost_per_1k_inferences"]


def test_reconcile_counters_and_duration() -> None:
    m = metrics.OperatorMetrics()

    class Invalid(Exception):
        pass

    with m.reconciling(invalid=(Invalid,)):
        pass
    with pytest.raises(Invalid), m.reconciling(invalid=(Invalid,)):
        raise Invalid
    for _ in range(2):
        with pytest.raises(RuntimeError), m.reconciling(invalid=(Invalid,)):
            raise RuntimeError("boom")
    series = render(m)
    assert series["bakeoff_reconcile_total"] == {
        key(result="success"): 1,
        key(result="invalid"): 1,
        key(result="error"): 2,
    }
    assert series["bakeoff_reconcile_errors_total"] == {(): 2}
    assert series["bakeoff_reconcile_duration_seconds_count"] == {(): 4}


def test_exporter_port_from_environment() -> None:
    assert metrics.exporter_port({}) == 8080
    assert metrics.exporter_port({"BAKEOFF_METRICS_PORT": "9102"}) == 9102
    assert metrics.exporter_port({"BAKEOFF_METRICS_PORT": "0"}) == 0
    with pytest.raises(ValueError):
        metrics.exporter_port({"BAKEOFF_METRICS_PORT": "70000"})
    assert metrics.start_exporter(0) == 0  # disabled: nothing listens


def test_exporter_on_a_taken_port_logs_instead_of_failing(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def taken(*_: object, **__: object) -> None:
        raise OSError(98, "Address already in use")

    monkeypatch.setattr(metrics, "start_http_server", taken)
    monkeypatch.setattr(metrics, "_server_started", False)
    assert metrics.start_exporter(18080) == 0
    assert "cannot serve metrics on :18080" in caplog.text


def test_http_endpoint_serves_a_finished_suite() -> None:
    m = observed_finished_suite()
    server, thread = start_http_server(0, addr="127.0.0.1", registry=m.registry)
    try:
        url = f"http://127.0.0.1:{server.server_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
    series = parse(text)
    winner = scenario_key("triton-onnx-cpu", "single", 1, quantile="0.5")
    assert series["bakeoff_latency_seconds"][winner] == pytest.approx(0.010)
    assert (
        series["bakeoff_suite_phase"][key(namespace="lab", suite="cpu-mock", phase="Succeeded")]
        == 1
    )
