"""`bakeoff_serve.server_metrics`: Triton's names and labels, read by Prometheus' own parser."""

from __future__ import annotations

import threading

from prometheus_client.parser import text_string_to_metric_families

from bakeoff_serve import server_metrics

COUNTERS = {
    "nv_inference_request_success",
    "nv_inference_request_failure",
    "nv_inference_count",
    "nv_inference_exec_count",
    "nv_inference_request_duration_us",
    "nv_inference_queue_duration_us",
    "nv_inference_compute_input_duration_us",
    "nv_inference_compute_infer_duration_us",
    "nv_inference_compute_output_duration_us",
}
GPU_GAUGES = {"nv_gpu_memory_used_bytes", "nv_gpu_memory_total_bytes", "nv_gpu_utilization"}
TIMINGS = server_metrics.ExecTimings(
    queue_ns=1_500, compute_input_ns=2_000, compute_infer_ns=10_999, compute_output_ns=500
)


def parse(text: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """family name -> {sorted labels: value}; also checks every family's type."""
    families: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        expected = "gauge" if family.name in GPU_GAUGES else "counter"
        assert family.type == expected, family.name
        families[family.name] = {
            tuple(sorted(sample.labels.items())): sample.value for sample in family.samples
        }
    return families


def test_counters_have_triton_names_without_total_suffix() -> None:
    metrics = server_metrics.ServerMetrics()
    metrics.register_model("clip", "1")
    text = metrics.render()
    assert set(parse(text)) == COUNTERS
    assert "_total" not in text  # Triton writes counters bare; so must we
    assert 'nv_inference_count{model="clip",version="1"} 0\n' in text


def test_counters_add_up_like_triton() -> None:
    metrics = server_metrics.ServerMetrics()
    for batch in (1, 4, 8):
        metrics.record_success(
            "clip", "1", batch_size=batch, request_duration_ns=20_000, timings=TIMINGS
        )
    metrics.record_failure("clip", "1")
    metrics.record_failure("clip", "1", "BACKEND")
    families = parse(metrics.render())
    labels = (("model", "clip"), ("version", "1"))
    assert families["nv_inference_request_success"] == {labels: 3}
    assert families["nv_inference_count"] == {labels: 13}  # images, not requests
    assert families["nv_inference_exec_count"] == {labels: 3}
    assert families["nv_inference_request_duration_us"] == {labels: 60}
    assert families["nv_inference_queue_duration_us"] == {labels: 3}  # 1 us per request
    assert families["nv_inference_compute_input_duration_us"] == {labels: 6}
    assert families["nv_inference_compute_infer_duration_us"] == {labels: 30}
    assert families["nv_inference_compute_output_duration_us"] == {labels: 0}
    assert families["nv_inference_request_failure"] == {
        (("model", "clip"), ("reason", "BACKEND"), ("version", "1")): 1,
        (("model", "clip"), ("reason", "CANCELED"), ("version", "1")): 0,
        (("model", "clip"), ("reason", "OTHER"), ("version", "1")): 1,
        (("model", "clip"), ("reason", "REJECTED"), ("version", "1")): 0,
    }


def test_gpu_gauges_only_when_samples_are_given() -> None:
    metrics = server_metrics.ServerMetrics()
    metrics.register_model("clip", "1")
    assert not GPU_GAUGES & set(parse(metrics.render()))
    gpu = server_metrics.GpuSample("GPU-1234-abcd", 3 * 2**30, 80 * 2**30, 0.25)
    families = parse(metrics.render([gpu]))
    label = (("gpu_uuid", "GPU-1234-abcd"),)
    assert families["nv_gpu_memory_used_bytes"] == {label: 3 * 2**30}
    assert families["nv_gpu_memory_total_bytes"] == {label: 80 * 2**30}
    assert families["nv_gpu_utilization"] == {label: 0.25}


def test_unknown_utilisation_is_left_out_not_zero() -> None:
    gpu = server_metrics.GpuSample("GPU-1", 1, 2, None)
    families = parse(server_metrics.ServerMetrics().render([gpu]))
    assert families["nv_gpu_utilization"] == {}
    assert families["nv_gpu_memory_used_bytes"] == {(("gpu_uuid", "GPU-1"),): 1}


def test_label_values_are_escaped() -> None:
    metrics = server_metrics.ServerMetrics()
    metrics.register_model('we"ird\\name', "1")
    families = parse(metrics.render())
    assert (("model", 'we"ird\\name'), ("version", "1")) in families["nv_inference_count"]


def test_concurrent_recording_loses_nothing() -> None:
    metrics = server_metrics.ServerMetrics()

    def worker() -> None:
        for _ in range(500):
            metrics.record_success(
                "clip", "1", batch_size=2, request_duration_ns=1_000, timings=TIMINGS
            )

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    families = parse(metrics.render())
    assert families["nv_inference_count"] == {(("model", "clip"), ("version", "1")): 4000}
