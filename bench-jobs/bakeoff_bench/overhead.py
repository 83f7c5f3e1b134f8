"""How busy the load generator itself was while it measured (docs/architecture.md §2, rule 8).

`LoopMonitor` wraps each measured window (closed-loop windows, open-loop runs) and records
the process's CPU time, the event-loop thread's CPU time and a ticker's sleep overshoot;
`summarize_overhead` (pure) turns the samples of the reported windows into the result's
`ClientOverhead`. A client whose loop is saturated adds its own queueing to every latency,
which `flags.client_bottleneck` then reports.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Final

import numpy as np

from bakeoff_bench.results import ClientOverhead, ServerTimes

TICK_S: Final = 0.005  # 200 samples a second: enough for a p99 per window, negligible CPU


@dataclass(frozen=True)
class OverheadSample:
    """One window's raw numbers; several windows (or workers) are summarized together."""

    cpu_s: float
    loop_cpu_s: float
    wall_s: float
    lags_s: tuple[float, ...] = field(repr=False)


class LoopMonitor:
    """`async with LoopMonitor() as monitor: ...`, then `monitor.sample`.

    Enter and exit in the event loop's thread: `thread_time` then measures that thread,
    the one whose saturation delays every request (other threads, e.g. a server in the same
    test process, are in `cpu_s` only).
    """

    def __init__(self, tick_s: float = TICK_S) -> None:
        self.tick_s = tick_s
        self._lags: list[float] = []
        self._task: asyncio.Task[None] | None = None
        self._start = (0.0, 0.0, 0.0)
        self.sample: OverheadSample | None = None

    async def _tick(self) -> None:
        # perf_counter, not loop.time(): uvloop's loop clock counts whole milliseconds.
        while True:
            due = time.perf_counter() + self.tick_s
            await asyncio.sleep(self.tick_s)
            self._lags.append(max(0.0, time.perf_counter() - due))

    async def __aenter__(self) -> LoopMonitor:
        self._start = (time.process_time(), time.thread_time(), time.perf_counter())
        self._task = asyncio.create_task(self._tick())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        cpu0, thread0, wall0 = self._start
        self.sample = OverheadSample(
            cpu_s=time.process_time() - cpu0,
            loop_cpu_s=time.thread_time() - thread0,
            wall_s=time.perf_counter() - wall0,
            lags_s=tuple(self._lags),
        )


def summarize_overhead(
    samples: Sequence[OverheadSample],
    client_mean_ms: float | None,
    server: ServerTimes | None,
    *,
    workers: int = 1,
) -> ClientOverhead | None:
    """CPU shares over the summed wall time, loop lag over all ticks; None without samples."""
    wall = sum(s.wall_s for s in samples)
    if not samples or wall <= 0:
        return None
    lags_ms = np.array([lag for s in samples for lag in s.lags_s], dtype=np.float64) * 1000.0
    p99 = float(np.percentile(lags_ms, 99)) if lags_ms.size else 0.0
    gap = None
    if client_mean_ms is not None and server is not None:
        gap = client_mean_ms - server.request_ms
    return ClientOverhead(
        cpu_fraction=sum(s.cpu_s for s in samples) / wall,
        loop_cpu_fraction=sum(s.loop_cpu_s for s in samples) / wall,
        loop_lag_p99_ms=p99,
        loop_lag_max_ms=float(lags_ms.max()) if lags_ms.size else 0.0,
        loop_lag_samples=int(lags_ms.size),
        client_minus_server_ms=gap,
        workers=workers,
    )


def worst_of(parts: Sequence[ClientOverhead]) -> ClientOverhead | None:
    """N worker processes: each number from the busiest worker (a bottleneck is per process)."""
    if not parts:
        return None
    return ClientOverhead(
        cpu_fraction=max(p.cpu_fraction for p in parts),
        loop_cpu_fraction=max(p.loop_cpu_fraction for p in parts),
        loop_lag_p99_ms=max(p.loop_lag_p99_ms for p in parts),
        loop_lag_max_ms=max(p.loop_lag_max_ms for p in parts),
        loop_lag_samples=sum(p.loop_lag_samples for p in parts),
        client_minus_server_ms=None,
        workers=len(parts),
    )
