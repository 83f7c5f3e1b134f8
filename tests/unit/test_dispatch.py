"""Open-loop dispatch in virtual time (looptime): every send lands exactly on its schedule.

The fake `send` takes a fixed service time on the loop clock, so each test knows exactly
which sends go out, when, which are dropped and what latency each one has. (The virtual
clock counts whole microseconds; schedules on round times land on it exactly.)
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest

from bakeoff_bench import client as oip
from bakeoff_bench import dispatch, open_loop, timers
from bakeoff_bench.config import Arrival

pytestmark = pytest.mark.looptime


def virtual() -> dict[str, Any]:
    """Schedule on the (virtual) loop clock; send at most one tick (1 us) early."""
    return {"clock": asyncio.get_running_loop().time, "early_s": 1e-6}


def service(seconds: float, log: list[float] | None = None) -> dispatch.Send:
    async def send() -> oip.InferOutcome:
        loop = asyncio.get_running_loop()
        started = loop.time()
        if log is not None:
            log.append(started)
        await asyncio.sleep(seconds)
        return loop.time() - started, True, None

    return send


async def test_sends_leave_exactly_on_schedule_without_waiting_for_answers() -> None:
    loop = asyncio.get_running_loop()
    times = timers.send_times(Arrival.CONSTANT, 100.0, 1.0)
    start = loop.time() + 1.0
    # Each answer takes 0.5 s, 50 sends are in flight at once: the loop is open.
    record = await dispatch.run_schedule(
        times, service(0.5), start=start, end=1.0, max_in_flight=1000, drain_s=1.0, **virtual()
    )
    assert np.allclose(record.sent_at - start, times, rtol=0, atol=1e-9)
    assert record.ok.all()
    assert np.allclose(record.latency_s, 0.5, rtol=0, atol=1e-9)
    assert (record.dropped_max_in_flight, record.dropped_at_end) == (0, 0)
    assert record.last_completion - start == pytest.approx(0.99 + 0.5, abs=1e-9)


async def test_poisson_sends_follow_their_seeded_schedule() -> None:
    loop = asyncio.get_running_loop()
    times = timers.send_times(Arrival.POISSON, 300.0, 2.0, seed=11)
    start = loop.time()
    record = await dispatch.run_schedule(
        times, service(0.002), start=start, end=2.0, max_in_flight=64, drain_s=0.5, **virtual()
    )
    # looptime's clock ticks in whole microseconds: a send is at most one tick off.
    lag = record.sent_at - start - times
    assert np.abs(lag).max() <= 1e-6 + 1e-9
    outcome = open_loop.summarize_record(record, late_threshold_s=0.001)
    assert (outcome.scheduled, outcome.sent, outcome.ok, outcome.late) == (times.size,) * 3 + (0,)
    assert outcome.lag.max_ms <= 0.001 + 1e-9


async def test_a_send_due_while_max_in_flight_are_outstanding_is_dropped_not_queued() -> None:
    loop = asyncio.get_running_loop()
    sent: list[float] = []
    times = timers.send_times(Arrival.CONSTANT, 100.0, 1.0)  # every 10 ms
    start = loop.time()
    # 25 ms answers with 2 slots: send, send, drop, send, send, drop, ...
    record = await dispatch.run_schedule(
        times, service(0.025, sent), start=start, end=1.0, max_in_flight=2, drain_s=1.0, **virtual()
    )
    dropped = [k for k in range(100) if np.isnan(record.sent_at[k])]
    assert dropped == list(range(2, 100, 3))
    assert record.dropped_max_in_flight == 33
    assert len(sent) == 67 and record.ok.sum() == 67


async def test_answers_later_than_the_drain_deadline_are_dropped_at_the_end() -> None:
    loop = asyncio.get_running_loop()
    times = timers.send_times(Arrival.CONSTANT, 10.0, 1.0)  # 0.0, 0.1, ..., 0.9
    # 0.5 s answers, deadline 1.0 + 0.25: the sends at 0.8 and 0.9 are still out then.
    record = await dispatch.run_schedule(
        times,
        service(0.5),
        start=loop.time(),
        end=1.0,
        max_in_flight=100,
        drain_s=0.25,
        **virtual(),
    )
    assert record.dropped_at_end == 2
    assert record.ok.tolist() == [True] * 8 + [False] * 2
    assert np.isnan(record.latency_s[-2:]).all()
    outcome = open_loop.summarize_record(record, late_threshold_s=0.002)
    assert (outcome.sent, outcome.ok, outcome.failed, outcome.dropped_at_end) == (10, 8, 0, 2)


async def test_latency_counts_from_the_scheduled_send_so_a_late_client_shows() -> None:
    loop = asyncio.get_running_loop()
    # The schedule started 0.5 s ago: three sends are overdue by 0.5, 0.4 and 0.3 s.
    times = np.array([0.0, 0.1, 0.2, 1.0])
    record = await dispatch.run_schedule(
        times,
        service(0.01),
        start=loop.time() - 0.5,
        end=1.0,
        max_in_flight=8,
        drain_s=1.0,
        **virtual(),
    )
    outcome = open_loop.summarize_record(record, late_threshold_s=0.35)
    assert outcome.late == 2
    assert outcome.lag.max_ms == pytest.approx(500.0, abs=1e-3)
    assert outcome.lag.min_ms == pytest.approx(0.0, abs=1e-3)
    assert outcome.latency.max_ms == pytest.approx(510.0, abs=1e-3)  # lag + service
    assert outcome.service.max_ms == pytest.approx(10.0, abs=1e-3)


async def test_failed_answers_are_tallied_as_errors() -> None:
    loop = asyncio.get_running_loop()

    async def refuse() -> oip.InferOutcome:
        return 0.001, False, ("HTTP 400", "no")

    times = timers.send_times(Arrival.CONSTANT, 50.0, 0.2)
    record = await dispatch.run_schedule(
        times, refuse, start=loop.time(), end=0.2, max_in_flight=4, drain_s=0.1, **virtual()
    )
    outcome = open_loop.summarize_record(record, late_threshold_s=0.002)
    assert (outcome.sent, outcome.ok, outcome.failed) == (10, 0, 10)
    assert [(e.error_type, e.count) for e in outcome.errors] == [("HTTP 400", 10)]


async def test_zero_slots_is_refused() -> None:
    with pytest.raises(ValueError, match="max_in_flight must be positive"):
        await dispatch.run_schedule(
            np.array([0.0]),
            service(0.0),
            start=0.0,
            end=1.0,
            max_in_flight=0,
            drain_s=0.0,
            **virtual(),
        )
