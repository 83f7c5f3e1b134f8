"""Open-loop sending: sleep until each scheduled time, send, never wait for an answer first.

Called by `open_loop` with a schedule from `timers` and a `send` coroutine (in a run: one
`OipClient.infer` of a pre-encoded payload). Times come from `clock`: `time.monotonic` in a
run (uvloop's `loop.time()` only counts whole milliseconds and its timers may fire up to a
millisecond early, so neither is used to stamp sends), the loop's clock in tests, which run
a schedule in virtual time (looptime) and assert it exactly. In-flight requests are
bounded by a semaphore: a send that falls due while `max_in_flight` are outstanding is
dropped and counted, not queued (a queue inside the client would hide the server's real
backlog and turn the open loop into a closed one).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Final

import numpy as np
import numpy.typing as npt

from bakeoff_bench import client as oip

Send = Callable[[], Awaitable[oip.InferOutcome]]
Clock = Callable[[], float]

# A timer that fires this close before a send is due sends it (uvloop rounds timers to
# whole milliseconds; sleeping again for less would spin). Such sends count as on time.
EARLY_TOLERANCE_S: Final = 0.0005


@dataclass
class DispatchRecord:
    """What happened to each scheduled send; times are seconds on the dispatch clock.

    `sent_at` is NaN for sends that never left (dropped at maxInFlight); `latency_s` (the
    service latency `send` reported) is NaN where no answer came before the drain deadline.
    """

    start: float
    scheduled: npt.NDArray[np.float64]  # relative to `start`
    sent_at: npt.NDArray[np.float64]  # absolute loop time
    latency_s: npt.NDArray[np.float64]
    ok: npt.NDArray[np.bool_]
    errors: oip.ErrorTally = field(default_factory=oip.ErrorTally)
    dropped_max_in_flight: int = 0
    dropped_at_end: int = 0
    last_completion: float = math.nan

    @classmethod
    def empty(cls, scheduled: npt.NDArray[np.float64], start: float) -> DispatchRecord:
        n = len(scheduled)
        return cls(
            start=start,
            scheduled=np.asarray(scheduled, dtype=np.float64),
            sent_at=np.full(n, np.nan),
            latency_s=np.full(n, np.nan),
            ok=np.zeros(n, dtype=np.bool_),
        )


async def _send_one(
    index: int, send: Send, record: DispatchRecord, slots: asyncio.Semaphore, clock: Clock
) -> None:
    try:
        # Stamped when the task really runs: the gap to the schedule is the client's lag.
        record.sent_at[index] = clock()
        latency, ok, error = await send()
        record.latency_s[index] = latency
        record.ok[index] = ok
        record.last_completion = clock()
        if error is not None:
            record.errors.add(error)
    finally:
        slots.release()


async def run_schedule(
    scheduled: npt.NDArray[np.float64],
    send: Send,
    *,
    start: float,
    end: float,
    max_in_flight: int,
    drain_s: float,
    clock: Clock = time.monotonic,
    early_s: float = EARLY_TOLERANCE_S,
) -> DispatchRecord:
    """Send at `start + scheduled[i]` (on `clock`); wait for answers until `start + end + drain_s`.

    Answers still outstanding then are cancelled and counted in `dropped_at_end`.
    """
    if max_in_flight <= 0:
        raise ValueError(f"max_in_flight must be positive, got {max_in_flight}")
    loop = asyncio.get_running_loop()
    record = DispatchRecord.empty(scheduled, start)
    slots = asyncio.Semaphore(max_in_flight)
    pending: set[asyncio.Task[None]] = set()
    for index, offset in enumerate(record.scheduled.tolist()):
        while (delay := start + offset - clock()) > early_s:
            await asyncio.sleep(delay)
        if slots.locked():
            record.dropped_max_in_flight += 1
            continue
        await slots.acquire()  # free slot: returns at once
        task = loop.create_task(_send_one(index, send, record, slots, clock))
        pending.add(task)
        task.add_done_callback(pending.discard)
    if pending:
        timeout = max(0.0, start + end + drain_s - clock())
        _, late = await asyncio.wait(set(pending), timeout=timeout)
        for task in late:
            task.cancel()
        await asyncio.gather(*late, return_exceptions=True)
        record.dropped_at_end = len(late)
    return record
