"""Server-side times from two scrapes of Triton's Prometheus text."""

# The fixture keeps Triton's HELP lines verbatim, and some of them are longer than 100.
# ruff: noqa: E501

from __future__ import annotations

from string import Template

import pytest

from bakeoff_bench import server_metrics
from bakeoff_bench.results import ServerTimes

# HELP/TYPE lines exactly as Triton 2.51 writes them (captured from the tritonserver of the
# nvidia-pytriton wheel; the nv_gpu_* and nv_energy_* families as Triton writes them on a
# GPU node). Two versions of the model under test and one other model, so that the parser
# must both sum over versions and ignore other models.
TRITON_METRICS = Template("""\
# HELP nv_inference_request_success Number of successful inference requests, all batch sizes
# TYPE nv_inference_request_success counter
nv_inference_request_success{model="clip",version="1"} $success_v1
nv_inference_request_success{model="clip",version="2"} $success_v2
nv_inference_request_success{model="other",version="1"} 9000
# HELP nv_inference_request_failure Number of failed inference requests, all batch sizes
# TYPE nv_inference_request_failure counter
nv_inference_request_failure{model="clip",reason="OTHER",version="1"} 0
nv_inference_request_failure{model="clip",reason="BACKEND",version="1"} 2
nv_inference_request_failure{model="clip",reason="CANCELED",version="1"} 0
nv_inference_request_failure{model="clip",reason="REJECTED",version="1"} 0
nv_inference_request_failure{model="other",reason="OTHER",version="1"} 0
# HELP nv_inference_count Number of inferences performed (does not include cached requests)
# TYPE nv_inference_count counter
nv_inference_count{model="clip",version="1"} $count_v1
nv_inference_count{model="clip",version="2"} $count_v2
nv_inference_count{model="other",version="1"} 9000
# HELP nv_inference_exec_count Number of model executions performed (does not include cached requests)
# TYPE nv_inference_exec_count counter
nv_inference_exec_count{model="clip",version="1"} $exec_v1
nv_inference_exec_count{model="clip",version="2"} $exec_v2
nv_inference_exec_count{model="other",version="1"} 9000
# HELP nv_inference_request_duration_us Cumulative inference request duration in microseconds (includes cached requests)
# TYPE nv_inference_request_duration_us counter
nv_inference_request_duration_us{model="clip",version="1"} $request_v1
nv_inference_request_duration_us{model="clip",version="2"} $request_v2
nv_inference_request_duration_us{model="other",version="1"} 123456789
# HELP nv_inference_queue_duration_us Cumulative inference queuing duration in microseconds (includes cached requests)
# TYPE nv_inference_queue_duration_us counter
nv_inference_queue_duration_us{model="clip",version="1"} $queue_v1
nv_inference_queue_duration_us{model="clip",version="2"} $queue_v2
nv_inference_queue_duration_us{model="other",version="1"} 123456
# HELP nv_inference_compute_input_duration_us Cumulative compute input duration in microseconds (does not include cached requests)
# TYPE nv_inference_compute_input_duration_us counter
nv_inference_compute_input_duration_us{model="clip",version="1"} $input_v1
nv_inference_compute_input_duration_us{model="clip",version="2"} $input_v2
nv_inference_compute_input_duration_us{model="other",version="1"} 12345
# HELP nv_inference_compute_infer_duration_us Cumulative compute inference duration in microseconds (does not include cached requests)
# TYPE nv_inference_compute_infer_duration_us counter
nv_inference_compute_infer_duration_us{model="clip",version="1"} $infer_v1
nv_inference_compute_infer_duration_us{model="clip",version="2"} $infer_v2
nv_inference_compute_infer_duration_us{model="other",version="1"} 1234567
# HELP nv_inference_compute_output_duration_us Cumulative inference compute output duration in microseconds (does not include cached requests)
# TYPE nv_inference_compute_output_duration_us counter
nv_inference_compute_output_duration_us{model="clip",version="1"} $output_v1
nv_inference_compute_output_duration_us{model="clip",version="2"} $output_v2
nv_inference_compute_output_duration_us{model="other",version="1"} 1234
# HELP nv_inference_pending_request_count Instantaneous number of pending requests awaiting execution per-model.
# TYPE nv_inference_pending_request_count gauge
nv_inference_pending_request_count{model="clip",version="1"} 0
nv_inference_pending_request_count{model="clip",version="2"} 0
nv_inference_pending_request_count{model="other",version="1"} 0
# HELP nv_pinned_memory_pool_total_bytes Pinned memory pool total memory size, in bytes
# TYPE nv_pinned_memory_pool_total_bytes gauge
nv_pinned_memory_pool_total_bytes 268435456
# HELP nv_pinned_memory_pool_used_bytes Pinned memory pool used memory size, in bytes
# TYPE nv_pinned_memory_pool_used_bytes gauge
nv_pinned_memory_pool_used_bytes 0
# HELP nv_gpu_utilization GPU utilization rate [0.0 - 1.0)
# TYPE nv_gpu_utilization gauge
nv_gpu_utilization{gpu_uuid="GPU-9d5a4b3e-1c2f-7a8b-0e6d-5f4c3b2a1908"} 0.41
nv_gpu_utilization{gpu_uuid="GPU-2b7c9e1d-4f3a-8c6b-1d0e-7a9b8c6d5e4f"} 0
# HELP nv_gpu_memory_total_bytes GPU total memory, in bytes
# TYPE nv_gpu_memory_total_bytes gauge
nv_gpu_memory_total_bytes{gpu_uuid="GPU-9d5a4b3e-1c2f-7a8b-0e6d-5f4c3b2a1908"} 85899345920
nv_gpu_memory_total_bytes{gpu_uuid="GPU-2b7c9e1d-4f3a-8c6b-1d0e-7a9b8c6d5e4f"} 85899345920
# HELP nv_gpu_memory_used_bytes GPU used memory, in bytes
# TYPE nv_gpu_memory_used_bytes gauge
nv_gpu_memory_used_bytes{gpu_uuid="GPU-9d5a4b3e-1c2f-7a8b-0e6d-5f4c3b2a1908"} $gpu0_used
nv_gpu_memory_used_bytes{gpu_uuid="GPU-2b7c9e1d-4f3a-8c6b-1d0e-7a9b8c6d5e4f"} 524288000
# HELP nv_gpu_power_usage GPU power usage in watts
# TYPE nv_gpu_power_usage gauge
nv_gpu_power_usage{gpu_uuid="GPU-9d5a4b3e-1c2f-7a8b-0e6d-5f4c3b2a1908"} 182.116
nv_gpu_power_usage{gpu_uuid="GPU-2b7c9e1d-4f3a-8c6b-1d0e-7a9b8c6d5e4f"} 61.507
# HELP nv_gpu_power_limit GPU power management limit in watts
# TYPE nv_gpu_power_limit gauge
nv_gpu_power_limit{gpu_uuid="GPU-9d5a4b3e-1c2f-7a8b-0e6d-5f4c3b2a1908"} 700
nv_gpu_power_limit{gpu_uuid="GPU-2b7c9e1d-4f3a-8c6b-1d0e-7a9b8c6d5e4f"} 700
# HELP nv_energy_consumption GPU energy consumption in joules since the Triton Server started
# TYPE nv_energy_consumption counter
nv_energy_consumption{gpu_uuid="GPU-9d5a4b3e-1c2f-7a8b-0e6d-5f4c3b2a1908"} 52311.27
nv_energy_consumption{gpu_uuid="GPU-2b7c9e1d-4f3a-8c6b-1d0e-7a9b8c6d5e4f"} 18012.9
# HELP nv_cpu_utilization CPU utilization rate [0.0 - 1.0]
# TYPE nv_cpu_utilization gauge
nv_cpu_utilization 0.0625
# HELP nv_cpu_memory_total_bytes CPU total memory (RAM), in bytes
# TYPE nv_cpu_memory_total_bytes gauge
nv_cpu_memory_total_bytes 25325268992
# HELP nv_cpu_memory_used_bytes CPU used memory (RAM), in bytes
# TYPE nv_cpu_memory_used_bytes gauge
nv_cpu_memory_used_bytes 503427072
""")

BEFORE = {
    "success_v1": 100, "success_v2": 20,
    "count_v1": 400, "count_v2": 80,
    "exec_v1": 100, "exec_v2": 20,
    "request_v1": 1_000_000, "request_v2": 300_000,
    "queue_v1": 10_000, "queue_v2": 2_000,
    "input_v1": 5_000, "input_v2": 1_000,
    "infer_v1": 900_000, "infer_v2": 250_000,
    "output_v1": 2_000, "output_v2": 500,
    "gpu0_used": 2_147_483_648,
}  # fmt: skip
# 50 more requests (40 on version 1, 10 on version 2), batch 4, some batched together.
AFTER = {
    "success_v1": 140, "success_v2": 30,
    "count_v1": 560, "count_v2": 120,
    "exec_v1": 130, "exec_v2": 25,
    "request_v1": 1_042_000, "request_v2": 310_500,
    "queue_v1": 10_400, "queue_v2": 2_100,
    "input_v1": 5_800, "input_v2": 1_200,
    "infer_v1": 936_000, "infer_v2": 259_000,
    "output_v1": 2_150, "output_v2": 550,
    "gpu0_used": 2_684_354_560,
}  # fmt: skip


def snapshot(values: dict[str, int]) -> server_metrics.MetricsSnapshot:
    return server_metrics.parse_snapshot(TRITON_METRICS.substitute(values), "clip")


def test_parse_sums_the_models_versions_and_ignores_other_models() -> None:
    snap = snapshot(BEFORE)
    assert snap.model["nv_inference_request_success"] == 120
    assert snap.model["nv_inference_count"] == 480
    assert snap.model["nv_inference_exec_count"] == 120
    assert snap.model["nv_inference_request_duration_us"] == 1_300_000
    assert snap.model["nv_inference_compute_infer_duration_us"] == 1_150_000
    assert snap.model["nv_inference_request_failure"] == 2  # summed over reasons too


def test_parse_sums_gpu_memory_over_gpus() -> None:
    snap = snapshot(BEFORE)
    assert server_metrics.gpu_memory_bytes(snap) == 2_147_483_648 + 524_288_000


def test_diff_is_exact() -> None:
    times = server_metrics.diff_server_times(snapshot(BEFORE), snapshot(AFTER))
    # 50 requests; durations: request 52 500 us, queue 500, input 1000, infer 45 000, output 200.
    assert times == ServerTimes(
        requests=50,
        inferences=200,
        executions=35,
        request_ms=1.05,
        queue_ms=0.01,
        compute_input_ms=0.02,
        compute_infer_ms=0.9,
        compute_output_ms=0.004,
    )
    assert times.compute_ms == pytest.approx(0.924)


def test_counters_with_total_suffix_parse_the_same() -> None:
    # OpenMetrics-style exporters (and some parser versions) spell counter samples *_total.
    text = TRITON_METRICS.substitute(BEFORE)
    suffixed = "\n".join(
        line.replace("{model=", "_total{model=", 1)
        if line.startswith("nv_inference_") and "pending" not in line
        else line
        for line in text.splitlines()
    )
    assert "nv_inference_count_total{" in suffixed
    assert server_metrics.parse_snapshot(suffixed + "\n", "clip") == snapshot(BEFORE)


def test_unknown_model_gives_empty_snapshot() -> None:
    snap = server_metrics.parse_snapshot(TRITON_METRICS.substitute(BEFORE), "absent")
    assert snap.model == {}
    assert server_metrics.diff_server_times(snap, snap) is None


def test_no_requests_in_window_gives_none() -> None:
    assert server_metrics.diff_server_times(snapshot(BEFORE), snapshot(BEFORE)) is None


def test_missing_scrape_gives_none() -> None:
    assert server_metrics.diff_server_times(None, snapshot(AFTER)) is None
    assert server_metrics.diff_server_times(snapshot(BEFORE), None) is None


def test_counter_reset_gives_none() -> None:
    # The server restarted between the scrapes: most counters went down.
    restarted = {key: value // 10 for key, value in AFTER.items()}
    restarted["success_v1"] = 200  # even though the success count happens to be higher
    assert server_metrics.diff_server_times(snapshot(BEFORE), snapshot(restarted)) is None


def test_missing_duration_family_counts_as_zero() -> None:
    def drop_input(values: dict[str, int]) -> server_metrics.MetricsSnapshot:
        text = TRITON_METRICS.substitute(values)
        kept = [line for line in text.splitlines() if "compute_input" not in line]
        return server_metrics.parse_snapshot("\n".join(kept) + "\n", "clip")

    times = server_metrics.diff_server_times(drop_input(BEFORE), drop_input(AFTER))
    assert times is not None
    assert times.compute_input_ms == 0.0
    assert times.compute_infer_ms == 0.9


def test_server_without_gpu_metrics_reports_no_gpu_memory() -> None:
    text = TRITON_METRICS.substitute(BEFORE)
    cpu_only = "\n".join(line for line in text.splitlines() if "nv_gpu_" not in line) + "\n"
    assert server_metrics.gpu_memory_bytes(server_metrics.parse_snapshot(cpu_only, "clip")) is None
    assert server_metrics.gpu_memory_bytes(None) is None
