"""Server-side time from Triton-named Prometheus counters, diffed over the measured window.

Every backend exports Triton's metric names (DESIGN §3), so this one module turns two
scrapes into queue and compute time for any of them. `parse_snapshot` and
`diff_server_times` are pure; `MetricsScraper` is the thin network edge that `scenarios`
calls right before the first and right after the last measured request.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from bakeoff_bench.results import ServerTimes

REQUEST_SUCCESS: Final = "nv_inference_request_success"
INFERENCE_COUNT: Final = "nv_inference_count"
EXEC_COUNT: Final = "nv_inference_exec_count"
GPU_MEMORY_USED: Final = "nv_gpu_memory_used_bytes"
# ServerTimes field -> cumulative microsecond counter whose delta it is built from.
DURATIONS_US: Final = {
    "request_ms": "nv_inference_request_duration_us",
    "queue_ms": "nv_inference_queue_duration_us",
    "compute_input_ms": "nv_inference_compute_input_duration_us",
    "compute_infer_ms": "nv_inference_compute_infer_duration_us",
    "compute_output_ms": "nv_inference_compute_output_duration_us",
}


@dataclass(frozen=True)
class MetricsSnapshot:
    """One scrape: the model's per-family sums (over versions) and server-wide gauges."""

    model: Mapping[str, float] = field(default_factory=dict)
    gpu_memory_used_bytes: float | None = None


def parse_snapshot(text: str, model_name: str) -> MetricsSnapshot:
    """Sum every sample labelled `model=model_name` per metric family (all versions together).

    Triton writes counters without the `_total` suffix; prometheus_client's parser (0.2x)
    reports such samples *with* it, and text that spells `_total` while its TYPE line does not
    even lands in a separate untyped family named `..._total`. So every sample is keyed by
    its own name less `_total`; `_created` samples (timestamps, not counts) are skipped.
    """
    model: dict[str, float] = {}
    gpu_memory: float | None = None
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name = str(sample.name).removesuffix("_total")
            if name.endswith("_created"):
                continue
            if name == GPU_MEMORY_USED:
                gpu_memory = (gpu_memory or 0.0) + float(sample.value)
            elif sample.labels.get("model") == model_name:
                model[name] = model.get(name, 0.0) + float(sample.value)
    return MetricsSnapshot(model=model, gpu_memory_used_bytes=gpu_memory)


def _delta(before: MetricsSnapshot, after: MetricsSnapshot, name: str) -> float:
    # A family the backend does not export (e.g. compute_input on a server without that
    # phase) counts as zero time rather than hiding the other numbers.
    return after.model.get(name, 0.0) - before.model.get(name, 0.0)


def diff_server_times(
    before: MetricsSnapshot | None, after: MetricsSnapshot | None
) -> ServerTimes | None:
    """Mean server time per successful request between two scrapes.

    None without metrics, when no request succeeded in between, or when a counter went
    backwards (the server restarted: the window is not one process's work).
    """
    if before is None or after is None:
        return None
    requests = _delta(before, after, REQUEST_SUCCESS)
    if requests <= 0:
        return None
    counted = [REQUEST_SUCCESS, INFERENCE_COUNT, EXEC_COUNT, *DURATIONS_US.values()]
    if any(_delta(before, after, name) < 0 for name in counted):
        return None
    means_ms = {
        field_name: _delta(before, after, metric) / requests / 1000.0
        for field_name, metric in DURATIONS_US.items()
    }
    return ServerTimes(
        requests=round(requests),
        inferences=round(_delta(before, after, INFERENCE_COUNT)),
        executions=round(_delta(before, after, EXEC_COUNT)),
        **means_ms,
    )


def gpu_memory_bytes(snapshot: MetricsSnapshot | None) -> int | None:
    """Used GPU memory summed over the server's GPUs; None where none is reported."""
    if snapshot is None or snapshot.gpu_memory_used_bytes is None:
        return None
    return round(snapshot.gpu_memory_used_bytes)


async def scrape(
    session: aiohttp.ClientSession, metrics_url: str, model_name: str
) -> MetricsSnapshot:
    """GET the Prometheus text and parse it; network and HTTP errors raise."""
    async with session.get(metrics_url) as response:
        response.raise_for_status()
        text = await response.text()
    return parse_snapshot(text, model_name)


class MetricsScraper:
    """Scrapes without ever failing the run: a failed scrape is None plus a kept message."""

    def __init__(
        self, session: aiohttp.ClientSession, metrics_url: str | None, model_name: str
    ) -> None:
        self.session = session
        self.metrics_url = metrics_url
        self.model_name = model_name
        self.problems: list[str] = []
        self.last: MetricsSnapshot | None = None

    async def snapshot(self) -> MetricsSnapshot | None:
        if self.metrics_url is None:
            return None
        try:
            self.last = await scrape(self.session, self.metrics_url, self.model_name)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            self.problems.append(f"metrics scrape of {self.metrics_url} failed: {exc}")
            return None
        return self.last
