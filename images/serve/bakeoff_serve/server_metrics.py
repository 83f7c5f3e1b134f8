"""Triton-compatible Prometheus metrics for the PyTorch server.

The HTTP router and the gRPC servicer record every infer request here; `GET /metrics`
renders it. Names, label sets and help texts are Triton's (2.51), so the bench job's
metric-diff code reads Triton and this server the same way. prometheus_client is not used
for the registry: its Counter always appends `_total`, and Triton's counters have no suffix.
For the same reason a server of several worker processes does not use its multiprocess mode;
`ServerMetrics(shared_dir=...)` is the equivalent: one memory-mapped row per process, summed
at scrape time.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np

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


# The counters of one (model, version), as one int64 row: Triton's counters in `_COUNTERS`'
# order, the failure counter spread over its reasons.
_FIELDS: Final = tuple(
    f"{attribute}:{reason}"
    for _, attribute, _ in _COUNTERS
    for reason in (FAILURE_REASONS if attribute == "request_failure" else ("",))
)
_INDEX: Final = {name: index for index, name in enumerate(_FIELDS)}
_ROW_BYTES: Final = len(_FIELDS) * 8


@dataclass(frozen=True)
class WorkerCounts:
    """The worker processes of a several-worker server (`workers`): what a scrape reports."""

    configured: int
    ready: int
    restarts: int


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(pairs: Iterable[tuple[str, str]]) -> str:
    # Triton sorts label names; so do we, so the text diffs cleanly against Triton's.
    return ",".join(f'{key}="{_escape(value)}"' for key, value in sorted(pairs))


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _shared_row(path: Path) -> np.ndarray[Any, np.dtype[np.int64]]:
    """This process's counter row in `path`, mapped: created at zero, or kept from before.

    A worker that replaces a crashed one maps the same file and counts on from its totals,
    so every summed counter stays monotonic across the restart.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        partial = path.with_name(f".{path.name}.{os.getpid()}")
        partial.write_bytes(bytes(_ROW_BYTES))
        partial.replace(path)
    return np.memmap(path, dtype=np.int64, mode="r+", shape=(len(_FIELDS),))


class ServerMetrics:
    """Thread-safe cumulative counters per (model, version).

    With `shared_dir` (a server of several worker processes), each process keeps its row in
    a file there that only it writes, `<shared_dir>/<model>/<version>/<slot>.i64` (names hex-
    encoded), and a scrape, answered by whichever process the connection reached, sums every
    process's row. Without it (one process), the row lives in memory.
    """

    def __init__(self, shared_dir: Path | None = None, slot: int = 0) -> None:
        self._lock = threading.Lock()
        self._shared_dir = shared_dir
        self._slot = slot
        self._rows: dict[tuple[str, str], np.ndarray[Any, np.dtype[np.int64]]] = {}

    def _row(self, model: str, version: str) -> np.ndarray[Any, np.dtype[np.int64]]:
        # Called with the lock held.
        row = self._rows.get((model, version))
        if row is None:
            if self._shared_dir is None:
                row = np.zeros(len(_FIELDS), dtype=np.int64)
            else:
                folder = self._shared_dir / model.encode().hex() / version.encode().hex()
                row = _shared_row(folder / f"{self._slot}.i64")
            self._rows[(model, version)] = row
        return row

    def register_model(self, model: str, version: str) -> None:
        """Make the model's counters appear (at zero) before its first request, as Triton does."""
        with self._lock:
            self._row(model, version)

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
            row = self._row(model, version)
            row[_SUCCESS] += 1
            row[_INFERENCES] += batch_size
            row[_EXECUTIONS] += int(timings.first_of_execution)
            # Triton sums per-request microseconds; converting per request keeps that rounding.
            row[_REQUEST_US] += request_duration_ns // 1000
            row[_QUEUE_US] += timings.queue_ns // 1000
            row[_INPUT_US] += timings.compute_input_ns // 1000
            row[_INFER_US] += timings.compute_infer_ns // 1000
            row[_OUTPUT_US] += timings.compute_output_ns // 1000

    def record_failure(self, model: str, version: str, reason: str = "OTHER") -> None:
        if reason not in FAILURE_REASONS:
            raise ValueError(f"unknown failure reason {reason!r}; known: {FAILURE_REASONS}")
        with self._lock:
            self._row(model, version)[_INDEX[f"request_failure:{reason}"]] += 1

    def totals(self) -> dict[tuple[str, str], list[int]]:
        """(model, version) -> counter row, summed over every worker process."""
        if self._shared_dir is None:
            with self._lock:
                return {key: [int(v) for v in row] for key, row in self._rows.items()}
        summed: dict[tuple[str, str], list[int]] = {}
        for version_dir in self._shared_dir.glob("*/*"):
            key = (bytes.fromhex(version_dir.parent.name).decode(),
                   bytes.fromhex(version_dir.name).decode())  # fmt: skip
            total = np.zeros(len(_FIELDS), dtype=np.int64)
            for path in version_dir.glob("*.i64"):
                # read() sees the page cache the writers' mappings share: current values.
                total += np.fromfile(path, dtype=np.int64, count=len(_FIELDS))
            summed[key] = [int(v) for v in total]
        return summed

    def render(self, gpus: Sequence[GpuSample] = (), workers: WorkerCounts | None = None) -> str:
        """Prometheus text format 0.0.4; GPU gauges only for the samples given (none on CPU),
        and Bakeoff's worker metrics only for a several-worker server."""
        # Sum outside the lock: a scrape never stalls a request for long.
        snapshot = self.totals()
        lines: list[str] = []
        for name, attribute, help_text in _COUNTERS:
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} counter"]
            for (model, version), row in sorted(snapshot.items()):
                base = [("model", model), ("version", version)]
                if attribute == "request_failure":  # one series per reason
                    for reason in FAILURE_REASONS:
                        labels = _labels([*base, ("reason", reason)])
                        lines.append(f"{name}{{{labels}}} {row[_INDEX[f'{attribute}:{reason}']]}")
                else:
                    lines.append(f"{name}{{{_labels(base)}}} {row[_INDEX[f'{attribute}:']]}")
        if gpus:
            for name, help_text in _GPU_GAUGES:
                lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge"]
                for gpu in gpus:
                    sample = _gauge_value(name, gpu)
                    if sample is not None:
                        lines.append(f"{name}{{{_labels([('gpu_uuid', gpu.uuid)])}}} {sample}")
        if workers is not None:
            lines += _worker_lines(workers)
        return "\n".join(lines) + "\n"


_SUCCESS: Final = _INDEX["request_success:"]
_INFERENCES: Final = _INDEX["inference_count:"]
_EXECUTIONS: Final = _INDEX["exec_count:"]
_REQUEST_US: Final = _INDEX["request_duration_us:"]
_QUEUE_US: Final = _INDEX["queue_duration_us:"]
_INPUT_US: Final = _INDEX["compute_input_duration_us:"]
_INFER_US: Final = _INDEX["compute_infer_duration_us:"]
_OUTPUT_US: Final = _INDEX["compute_output_duration_us:"]


def _worker_lines(workers: WorkerCounts) -> list[str]:
    return [
        "# HELP bakeoff_server_workers Worker processes of this server, by state",
        "# TYPE bakeoff_server_workers gauge",
        f'bakeoff_server_workers{{state="configured"}} {workers.configured}',
        f'bakeoff_server_workers{{state="ready"}} {workers.ready}',
        "# HELP bakeoff_server_worker_restarts Worker processes restarted after they exited",
        "# TYPE bakeoff_server_worker_restarts counter",
        f"bakeoff_server_worker_restarts {workers.restarts}",
    ]


def _gauge_value(name: str, gpu: GpuSample) -> str | None:
    if name == "nv_gpu_utilization":
        return None if gpu.utilization is None else _number(gpu.utilization)
    if name == "nv_gpu_memory_total_bytes":
        return _number(gpu.memory_total_bytes)
    return _number(gpu.memory_used_bytes)
