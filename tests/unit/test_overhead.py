"""Client overhead: CPU shares and event-loop lag of the load generator itself."""

from __future__ import annotations

import asyncio
import time

import bench_factories as make
import pytest

from bakeoff_bench import overhead
from bakeoff_bench.overhead import OverheadSample


def test_summary_weights_cpu_by_wall_time_and_pools_lag_samples() -> None:
    samples = [
        OverheadSample(cpu_s=0.5, loop_cpu_s=0.4, wall_s=1.0, lags_s=(0.0001,) * 99 + (0.05,)),
        OverheadSample(cpu_s=1.5, loop_cpu_s=1.2, wall_s=1.0, lags_s=(0.0002,) * 100),
    ]
    summary = overhead.summarize_overhead(samples, 12.0, make.server(request_ms=9.5))
    assert summary is not None
    assert summary.cpu_fraction == pytest.approx(1.0)
    assert summary.loop_cpu_fraction == pytest.approx(0.8)
    assert summary.loop_lag_samples == 200
    assert summary.loop_lag_max_ms == pytest.approx(50.0)
    assert summary.loop_lag_p99_ms == pytest.approx(0.2, rel=0.01)
    assert summary.client_minus_server_ms == pytest.approx(2.5)


def test_no_samples_no_summary() -> None:
    assert overhead.summarize_overhead([], 1.0, None) is None


def test_the_worst_worker_speaks_for_all() -> None:
    worst = overhead.worst_of([make.client(0.2, 0.5), make.client(0.9, 0.3)])
    assert worst is not None
    assert (worst.cpu_fraction, worst.loop_lag_p99_ms, worst.workers) == (0.9, 0.5, 2)


async def test_monitor_sees_a_blocked_loop_and_its_cpu() -> None:
    async with overhead.LoopMonitor(tick_s=0.005) as monitor:
        await asyncio.sleep(0.03)
        started = time.perf_counter()
        while time.perf_counter() - started < 0.1:  # hog the loop: no tick can run
            pass
        await asyncio.sleep(0.03)
    sample = monitor.sample
    assert sample is not None
    assert sample.wall_s >= 0.16
    assert max(sample.lags_s) >= 0.09
    # CPU time, unlike wall time, depends on what else the machine runs: only a lower bound.
    assert sample.loop_cpu_s >= 0.02 and sample.cpu_s >= sample.loop_cpu_s - 1e-3
