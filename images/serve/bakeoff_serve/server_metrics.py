"""Triton-compatible Prometheus metrics for the PyTorch server.

The HTTP router and the gRPC servicer record every infer request here; `GET /metrics`
renders it. Names, label sets and help texts are Triton's (2.51), so the bench job's
metric-diff code reads Triton and this server the same way. prometheus_client is not used
for the registry: its Counter always appends `_total`, and Triton's counters have no suffix.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"

# Triton labels nv_inference_request_failure with one of these reasons and prints all four.
FAILURE_REASONS: Final = ("REJECTED", "CANCELED", "BACKEND", "OTHER")

# (name, _ModelCounters attribute, help) in Triton's order; labelled {model, version}.
_COUNTERS: Final = (
    (
        "nv_inference_request_success",
        "request_success",
        "Number of successful inference requests, all batch sizes",
    ),
    (
        "nv_inference_request_failure",
        "request_failure",
        "Number of failed inference requests, all batch sizes",
    ),
    (
        "nv_inference_count",
        "inference_count",
        "Number of inferences performed (does not include cached requests)",
    ),
    (
        "nv_inference_exec_count",
        "exec_count",
        "Number of model executions performed (does not include cached requests)",
    ),
    (
        "nv_inference_request_duration_us",
        "request_duration_us",
        "Cumulative inference request duration in microseconds (includes cached requests)",
    ),
    (
        "nv_inference_queue_duration_us",
        "queue_duration_us",
        "Cumulative inference queuing duration in microseconds (includes cached requests)",
    ),
    (
        "nv_inference_compute_input_duration_us",
        "compute_input_duration_us",
        "Cumulative compute input duration in microseconds (does not include cached requests)",
    ),
    (
        "nv_inference_compute_infer_duration_us",
        "compute_infer_duration_us",
        "Cumulative compute inference duration in microseconds (does not include cached requests)",
    ),
    (
        "nv_inference_compute_output_duration_us",
        "compute_output_duration_us",
        "Cumulative inference compute output duration in microseconds "
        "(does not include cached requests)",
    ),
)
_GPU_GAUGES: Final = (
    ("nv_gpu_utilization", "GPU utilization rate [0.0 - 1.0)"),
    ("nv_gpu_memory_total_bytes", "GPU total memory, in bytes"),
    ("nv_gpu_memory_used_bytes", "GPU used memory, in bytes"),
)


@dataclass(frozen=True)
class ExecTimings:
    """One model execution, in nanoseconds, as the engine measured it."""

    queue_ns: int
    compute_input_ns: int
    compute_infer_ns: int
    compute_output_ns: int
    # Requests batched together share one execution: only the first counts it, so that
    # nv_inference_exec_count counts model runs, as Triton's does.
    first_of_execution: bool = True


@dataclass(frozen=True)
class GpuSample:
    uuid: str  # "GPU-xxxxxxxx-...", as Triton labels it
    memory_used_bytes: int
    memory_total_bytes: int
    utilization: float | None  # 0.0-1.0; None when NVML is not available


@dataclass
class _ModelCounters:
    request_success: int = 0
    request_failure: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(FAILURE_REASONS, 0)
    )
    inference_count: int = 0
    exec_count: int = 0
    request_duration_us: int = 0
    queue_duration_us: int = 0
    compute_input_duration_us: int = 0
    compute_infer_duration_us: int = 0
    compute_output_duration_us: int = 0


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(pairs: Iterable[tuple[str, str]]) -> str:
    # Triton sorts label names; so do we, so the text diffs cleanly against Triton's.
    return ",".join(f'{key}="{_escape(value)}"' for key, value in sorted(pairs))


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


class ServerMetrics:
    """Thread-safe cumulative counters per (model, version)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._models: dict[tuple[str, str], _ModelCounters] = {}

    def register_model(self, model: str, version: str) -> None:
        """Make the model's counters appear (at zero) before its first request, as Triton does."""
        with self._lock:
            self._models.setdefault((model, version), _ModelCounters())

    def record_success(
        self,
        model: str,
        version: str,
        *,
        batch_size: int,
        request_duration_ns: int,
        timings: ExecTimings,
    ) -> None:
        """One successful request of `batch_size` images (its execution counted once)."""
        with self._lock:
            counters = self._models.setdefault((model, version), _ModelCounters())
            counters.request_success += 1
            counters.inference_count += batch_size
            counters.exec_count += int(timings.first_of_execution)
            # Triton sums per-request microseconds; converting per request keeps that rounding.
            counters.request_duration_us += request_duration_ns // 1000
            counters.queue_duration_us += timings.queue_ns // 1000
            counters.compute_input_duration_us += timings.compute_input_ns // 1000
            counters.compute_infer_duration_us += timings.compute_infer_ns // 1000
            counters.compute_output_duration_us += timings.compute_output_ns // 1000

    def record_failure(self, model: str, version: str, reason: str = "OTHER") -> None:
        if reason not in FAILURE_REASONS:
            raise ValueError(f"unknown failure reason {reason!r}; known: {FAILURE_REASONS}")
        with self._lock:
            counters = self._models.setdefault((model, version), _ModelCounters())
            counters.request_failure[reason] += 1

    def render(self, gpus: Sequence[GpuSample] = ()) -> str:
        """Prometheus text format 0.0.4; GPU gauges only for the samples given (none on CPU)."""
        with self._lock:
            # Copy under the lock, format outside it: a scrape never stalls a request.
            snapshot = {
                key: dataclasses.replace(c, request_failure=dict(c.request_failure))
                for key, c in self._models.items()
            }
        lines: list[str] = []
        for name, attribute, help_text in _COUNTERS:
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} counter"]
            for (model, version), counters in sorted(snapshot.items()):
                base = [("model", model), ("version", version)]
                value = getattr(counters, attribute)
                if isinstance(value, dict):  # failures: one series per reason
                    for reason, count in value.items():
                        labels = _labels([*base, ("reason", reason)])
                        lines.append(f"{name}{{{labels}}} {count}")
                else:
                    lines.append(f"{name}{{{_labels(base)}}} {value}")
        if gpus:
            for name, help_text in _GPU_GAUGES:
                lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge"]
                for gpu in gpus:
                    sample = _gauge_value(name, gpu)
                    if sample is not None:
                        lines.append(f"{name}{{{_labels([('gpu_uuid', gpu.uuid)])}}} {sample}")
        return "\n".join(lines) + "\n"


def _gauge_value(name: str, gpu: GpuSample) -> str | None:
    if name == "nv_gpu_utilization":
        return None if gpu.utilization is None else _number(gpu.utilization)
    if name == "nv_gpu_memory_total_bytes":
        return _number(gpu.memory_total_bytes)
    return _number(gpu.memory_used_bytes)
