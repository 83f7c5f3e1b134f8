"""Client worker processes: a failing worker fails the run with its reason, promptly."""

from __future__ import annotations

import time

import pytest

from bakeoff_bench import open_loop, workers
from bakeoff_bench.config import Arrival


def job(url: str) -> workers.WorkerJob:
    run = open_loop.RateRun(
        arrival=Arrival.CONSTANT,
        rate=10.0,
        duration_s=0.1,
        seed=0,
        max_in_flight=2,
        late_threshold_s=0.002,
        drain_s=0.1,
    )
    return workers.WorkerJob(
        http_url=url,
        model_name="m",
        request_timeout_s=1.0,
        body=b"",
        headers={},
        batch_size=1,
        run=run.share(0, 1),
        warmup=None,
    )


async def test_a_worker_that_cannot_start_fails_the_run_with_its_reason() -> None:
    calls: list[str] = []

    async def between(warm_ok: int) -> None:
        calls.append("scrape")

    started = time.monotonic()
    with pytest.raises(workers.WorkerError, match=r"client worker 0 failed: ValueError: .*ftp://"):
        await workers.run_in_processes([job("ftp://nowhere")], between)
    assert calls == []  # no metric window was opened
    assert time.monotonic() - started < 30
