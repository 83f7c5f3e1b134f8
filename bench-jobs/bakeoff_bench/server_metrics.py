"""Server-side time from Triton-named Prometheus counters, diffed over the measured window.

Every backend exports Triton's metric names (docs/architecture.md §3), so this one module
turns two scrapes into queue and compute time for any of them. `parse_snapshot` and
`diff_server_times` are pure; `MetricsScraper` is the thin network edge that `scenarios`
calls right before the first and right after the last measured request. It also keeps a
ledger of the answers the client has seen, so that a scrape can wait for the server to
count them (`settled`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from bakeoff_bench import credentials
from bakeoff_bench.results import ServerTimes

REQUEST_SUCCESS: Final = "nv_inference_request_success"
INFERENCE_COUNT: Final = "nv_inference_count"
EXEC_COUNT: Final = "nv_inference_exec_count"
GPU_MEMORY_USED: Final = "nv_gpu_memory_used_bytes"
# How long a closing scrape waits for the server to count the window's last answers.
SETTLE_TIMEOUT_S: Final = 1.0
SETTLE_POLL_S: Final = 0.02
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


def settled_requests(before: MetricsSnapshot, after: MetricsSnapshot) -> float:
    """Successful requests the server has counted between two scrapes."""
    return _delta(before, after, REQUEST_SUCCESS)


def gpu_memory_bytes(snapshot: MetricsSnapshot | None) -> int | None:
    """Used GPU memory summed over the server's GPUs; None where none is reported."""
    if snapshot is None or snapshot.gpu_memory_used_bytes is None:
        return None
    return round(snapshot.gpu_memory_used_bytes)


async def scrape(
    session: aiohttp.ClientSession,
    metrics_url: str,
    model_name: str,
    headers: Mapping[str, str] | None = None,
) -> MetricsSnapshot:
    """GET the Prometheus text and parse it; network and HTTP errors raise."""
    async with session.get(metrics_url, headers=headers) as response:
        response.raise_for_status()
        text = await response.text()
    return parse_snapshot(text, model_name)


class MetricsScraper:
    """Scrapes without ever failing the run: a failed scrape is None plus a kept message."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        metrics_url: str | None,
        model_name: str,
        secrets: credentials.Credentials = credentials.NO_CREDENTIALS,
    ) -> None:
        self.session = session
        self.metrics_url = metrics_url
        # The endpoint's credentials, where the metrics are served on its origin.
        self._headers = secrets.headers_for(metrics_url) if metrics_url else {}
        self.model_name = model_name
        self.problems: list[str] = []
        self.last: MetricsSnapshot | None = None
        self.baseline: MetricsSnapshot | None = None
        self.answered = 0  # successful answers the client has seen since the baseline

    async def snapshot(self) -> MetricsSnapshot | None:
        if self.metrics_url is None:
            return None
        try:
            self.last = await scrape(self.session, self.metrics_url, self.model_name, self._headers)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            self.problems.append(f"metrics scrape of {self.metrics_url} failed: {exc}")
            return None
        return self.last

    async def start(self) -> None:
        """The reference scrape, taken before the run sends its first inference request."""
        self.baseline = await self.snapshot()

    def answered_ok(self, count: int) -> None:
        """The client saw `count` more successful inference answers (any phase)."""
        self.answered += count

    async def settled(self, timeout_s: float = SETTLE_TIMEOUT_S) -> MetricsSnapshot | None:
        """A scrape that includes every success the client has seen so far.

        Triton counts a request only after it has sent the answer, so a scrape right after
        the last answer can miss it, and the next window would count it instead. Scrape
        again, briefly, until the success counter has moved since the baseline by at least
        the client's own count (more is fine: the server also counts requests whose answer
        the client gave up on).
        """
        return await self.settled_at(self.answered, timeout_s)

    async def settled_at(
        self, answered: int, timeout_s: float = SETTLE_TIMEOUT_S
    ) -> MetricsSnapshot | None:
        """`settled`, waiting for `answered` successes (several clients' together)."""
        after = await self.snapshot()
        deadline = time.monotonic() + timeout_s
        while (
            self.baseline is not None
            and after is not None
            and settled_requests(self.baseline, after) < answered
            and time.monotonic() < deadline
        ):
            await asyncio.sleep(SETTLE_POLL_S)
            after = await self.snapshot()
        return after
