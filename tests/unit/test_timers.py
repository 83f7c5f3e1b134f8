"""Open-loop schedules: exact constant slots, seeded Poisson arrivals, exact worker shares."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bakeoff_bench import timers
from bakeoff_bench.config import Arrival


def test_constant_rate_sends_on_exact_slots_inside_the_duration() -> None:
    times = timers.send_times(Arrival.CONSTANT, 4.0, 1.0)
    assert times.tolist() == [0.0, 0.25, 0.5, 0.75]


def test_constant_rate_with_a_fractional_count_keeps_the_last_slot_before_the_end() -> None:
    assert timers.constant_times(2.5, 1.0).tolist() == [0.0, 0.4, 0.8]


@given(
    rate=st.floats(min_value=0.5, max_value=5000),
    duration=st.floats(min_value=0.1, max_value=20),
    workers=st.integers(min_value=1, max_value=8),
)
@settings(max_examples=60, deadline=None)
def test_constant_worker_shares_interleave_into_the_one_client_schedule(
    rate: float, duration: float, workers: int
) -> None:
    whole = timers.constant_times(rate, duration)
    shares = [
        timers.constant_times(rate, duration, worker=i, workers=workers) for i in range(workers)
    ]
    assert np.array_equal(np.sort(np.concatenate(shares)), whole)
    assert whole.size == 0 or whole[-1] < duration


def test_poisson_schedule_is_reproducible_from_the_seed() -> None:
    a = timers.send_times(Arrival.POISSON, 200.0, 5.0, seed=7)
    b = timers.send_times(Arrival.POISSON, 200.0, 5.0, seed=7)
    c = timers.send_times(Arrival.POISSON, 200.0, 5.0, seed=8)
    assert np.array_equal(a, b)
    assert not np.array_equal(a[:50], c[:50])


def test_poisson_schedule_has_the_asked_mean_rate_and_exponential_gaps() -> None:
    rate, duration = 500.0, 200.0  # 100,000 arrivals: the mean is within ~1%
    times = timers.poisson_times(rate, duration, seed=3)
    assert np.all(np.diff(times) > 0)
    assert times[0] > 0 and times[-1] < duration
    assert times.size / duration == pytest.approx(rate, rel=0.01)
    gaps = np.diff(times)
    # Exponential: the standard deviation equals the mean, and P(gap > mean) = e^-1.
    assert gaps.std() == pytest.approx(gaps.mean(), rel=0.02)
    assert np.mean(gaps > 1 / rate) == pytest.approx(np.exp(-1), abs=0.01)


def test_poisson_worker_shares_are_independent_streams_summing_to_the_rate() -> None:
    rate, duration, workers = 400.0, 100.0, 4
    shares = [
        timers.poisson_times(rate, duration, seed=1, worker=i, workers=workers)
        for i in range(workers)
    ]
    for share in shares:
        assert share.size / duration == pytest.approx(rate / workers, rel=0.05)
    assert sum(s.size for s in shares) / duration == pytest.approx(rate, rel=0.02)
    assert not np.array_equal(shares[0][:20], shares[1][:20])


@pytest.mark.parametrize(
    ("rate", "duration", "worker", "workers", "message"),
    [
        (0.0, 1.0, 0, 1, "rate must be a positive"),
        (float("inf"), 1.0, 0, 1, "rate must be a positive"),
        (1.0, 0.0, 0, 1, "duration must be a positive"),
        (1.0, 1.0, 2, 2, "worker 2 is not one of 2 workers"),
    ],
)
def test_nonsense_schedules_are_refused(
    rate: float, duration: float, worker: int, workers: int, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        timers.send_times(Arrival.CONSTANT, rate, duration, worker=worker, workers=workers)
