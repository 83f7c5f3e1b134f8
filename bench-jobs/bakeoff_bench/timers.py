"""Open-loop send schedules (pure): when each request is due, in seconds from the start.

`dispatch` sleeps until each of these times and sends; nothing here touches a clock or the
network, so a schedule is tested exactly. With N client processes, worker i gets its share
of one rate: for a constant rate, every N-th slot of the full schedule (offset by i), so the
union of the shares is exactly the one-client schedule; for Poisson arrivals, an independent
Poisson stream of rate/N per worker (the superposition of independent Poisson processes is a
Poisson process of the summed rate).
"""

from __future__ import annotations

import math
from typing import Final

import numpy as np
import numpy.typing as npt

from bakeoff_bench.config import Arrival

# Exponential gaps are drawn in chunks: a schedule of a million sends is a handful of draws.
_CHUNK: Final = 4096

SendTimes = npt.NDArray[np.float64]


def _check(rate: float, duration_s: float, worker: int, workers: int) -> None:
    if not (rate > 0 and math.isfinite(rate)):
        raise ValueError(f"rate must be a positive number, got {rate}")
    if not (duration_s > 0 and math.isfinite(duration_s)):
        raise ValueError(f"duration must be a positive number of seconds, got {duration_s}")
    if not 0 <= worker < workers:
        raise ValueError(f"worker {worker} is not one of {workers} workers")


def constant_times(
    rate: float, duration_s: float, *, worker: int = 0, workers: int = 1
) -> SendTimes:
    """Slots k / rate in [0, duration) with k = worker, worker + workers, worker + 2 workers..."""
    _check(rate, duration_s, worker, workers)
    slots = math.ceil(duration_s * rate - 1e-9)  # slot k is due at k / rate < duration
    k = np.arange(worker, slots, workers, dtype=np.float64)
    return k / rate


def poisson_times(
    rate: float, duration_s: float, *, seed: int, worker: int = 0, workers: int = 1
) -> SendTimes:
    """Arrivals of a Poisson process of rate / workers in [0, duration), from (seed, worker).

    The same (seed, worker) gives the same times on every machine, so two backends see the
    same burst pattern.
    """
    _check(rate, duration_s, worker, workers)
    rng = np.random.default_rng(np.random.SeedSequence([seed, worker, workers]))
    share = rate / workers
    chunks: list[SendTimes] = []
    last = 0.0
    while last < duration_s:
        gaps = rng.exponential(1.0 / share, _CHUNK)
        times = last + np.cumsum(gaps)
        chunks.append(times)
        last = float(times[-1])
    times = np.concatenate(chunks) if chunks else np.empty(0)
    result: SendTimes = times[times < duration_s]
    return result


def send_times(
    arrival: Arrival,
    rate: float,
    duration_s: float,
    *,
    seed: int = 0,
    worker: int = 0,
    workers: int = 1,
) -> SendTimes:
    """Worker `worker`'s share of `rate` (total over all workers) for `duration_s` seconds."""
    if arrival is Arrival.CONSTANT:
        return constant_times(rate, duration_s, worker=worker, workers=workers)
    return poisson_times(rate, duration_s, seed=seed, worker=worker, workers=workers)
