"""The cold-start phase: the first request of every batch size, before any warm-up.

Called by `runner` right after the payloads are encoded (docs/architecture.md §2, rule 1).
A backend that builds engines lazily (TensorRT execution provider: one engine per shape)
spends that time here, where it is reported as cold start, and never inside a measured
window.
The backend counts as warm only once every batch size has been answered.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Final

from bakeoff_bench import client as oip
from bakeoff_bench import payloads
from bakeoff_bench.results import ColdStart

# A first request may time out while the server is still building; keep asking (the
# server keeps building) until this run's ready timeout, and count the whole wait.
_RETRIED: Final = ("Timeout",)


def _retryable(error: oip.ErrorKey | None) -> bool:
    return error is not None and any(word in error[0] for word in _RETRIED)


async def first_request(
    client: oip.OipClient, payload: payloads.Payload, give_up_s: float
) -> tuple[float, oip.ErrorKey | None, int]:
    """(seconds until the first answer, the error if none succeeded, requests sent)."""
    started = time.perf_counter()
    sent = 0
    while True:
        latency, ok, error = await client.infer(payload)
        sent += 1
        waited = time.perf_counter() - started
        if ok:
            # One request: its own latency, the most precise number; retries: the whole wait.
            return (latency if sent == 1 else waited), None, sent
        if not _retryable(error) or waited >= give_up_s:
            return waited, error, sent


async def run_cold_start(
    client: oip.OipClient,
    encoded: Mapping[int, payloads.Payload],
    give_up_s: float,
    progress: Callable[[str], None],
) -> ColdStart:
    """Every batch size once, in the order given; one progress line for the phase."""
    started = time.perf_counter()
    first_ms: dict[int, float] = {}
    errors: dict[int, str] = {}
    sent = 0
    for size, payload in encoded.items():
        seconds, error, attempts = await first_request(client, payload, give_up_s)
        first_ms[size] = seconds * 1000.0
        sent += attempts
        if error is not None:
            errors[size] = f"{error[0]}: {error[1]}"
    shown = ", ".join(
        f"b={size} {ms:.1f} ms" + (" (failed)" if size in errors else "")
        for size, ms in first_ms.items()
    )
    progress(f"cold start: first request {shown}")
    return ColdStart(
        first_request_ms=first_ms,
        first_request_errors=errors,
        warmup_requests=sent,
        duration_s=time.perf_counter() - started,
    )
