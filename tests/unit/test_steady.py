"""Steady-state acceptance: the last `consecutive` windows must agree on throughput and p50."""

from __future__ import annotations

import pytest

from bakeoff_bench import steady
from bakeoff_bench.steady import Decision, WindowStats


def windows(*pairs: tuple[float, float]) -> list[WindowStats]:
    return [WindowStats(rps, p50) for rps, p50 in pairs]


def decide(ws: list[WindowStats], max_windows: int = 10) -> Decision:
    return steady.decide(ws, tolerance=0.10, consecutive=3, max_windows=max_windows)


@pytest.mark.parametrize(
    ("pairs", "expected"),
    [
        pytest.param([(100, 5.0), (101, 5.0)], Decision(False, False, ()), id="too-few-windows"),
        pytest.param(
            [(100, 5.0), (105, 5.1), (96, 4.9)], Decision(True, True, (0, 1, 2)), id="agree"
        ),
        pytest.param(
            [(50, 9.0), (100, 5.0), (104, 5.0), (98, 5.2)],
            Decision(True, True, (1, 2, 3)),
            id="warming-first-window-left-out",
        ),
        pytest.param(
            [(100, 5.0), (100, 5.0), (125, 5.0)], Decision(False, False, ()), id="throughput-off"
        ),
        pytest.param(
            [(100, 5.0), (100, 5.0), (100, 6.5)], Decision(False, False, ()), id="p50-off"
        ),
        pytest.param([(0, 0.0)] * 3, Decision(False, False, ()), id="nothing-answered"),
    ],
)
def test_acceptance_needs_three_agreeing_windows(
    pairs: list[tuple[float, float]], expected: Decision
) -> None:
    assert decide(windows(*pairs)) == expected


def test_tolerance_is_measured_against_the_mean_of_the_windows() -> None:
    # Mean 100: 90 and 110 are exactly 10% off and pass; 89 is not. (Not in rising order:
    # three windows each higher than the last by 10% would be drift.)
    assert decide(windows((90, 5.0), (110, 5.0), (100, 5.0))).stable
    assert not decide(windows((89, 5.0), (111, 5.0), (100, 5.0))).done


def test_giving_up_reports_the_last_windows_as_unstable() -> None:
    drifting = windows(*[(100 + 20 * i, 5.0) for i in range(5)])
    assert decide(drifting, max_windows=5) == Decision(True, False, (2, 3, 4))
    assert not decide(drifting[:4], max_windows=5).done


def test_spread_is_range_over_mean() -> None:
    assert steady.spread([90.0, 100.0, 110.0]) == pytest.approx(0.2)
    assert steady.spread([5.0]) == 0.0
    assert steady.spread([]) == 0.0
    assert steady.spread([0.0, 0.0]) == 0.0


def test_windows_that_each_agree_with_the_next_but_drift_are_not_steady() -> None:
    """The issue's drift: a server 3% slower every window. Any three windows agree within
    10%, yet the trend goes on: it must never be accepted, and the result says it drifted."""
    ws = [WindowStats(100 / 1.03**i, 5.0 * 1.03**i) for i in range(10)]
    for n in range(3, 10):
        assert not decide(ws[:n]).done
    final = decide(ws)
    assert final == Decision(True, False, (7, 8, 9))
    assert steady.drifting(ws, 3, 0.10) == "p50 +6% over 10 windows, throughput -6% over 10 windows"


def test_a_slow_drift_is_caught_by_the_rank_trend_over_the_recent_windows() -> None:
    # 1.5% a window: the last three move 3% (under half the tolerance), six windows 7.5%.
    ws = [WindowStats(100.0, 5.0 * (1 + 0.015 * i)) for i in range(6)]
    assert steady.mann_kendall_z([w.p50_ms for w in ws]) > steady.TREND_Z
    assert "p50 +7% over 6 windows" in steady.drifting(ws, 3, 0.10)
    assert not decide(ws).done


@pytest.mark.parametrize("seed", range(20))
def test_noise_around_a_steady_level_is_accepted(seed: int) -> None:
    import random

    rng = random.Random(seed)
    ws = [
        WindowStats(100 * rng.uniform(0.97, 1.03), 5.0 * rng.uniform(0.97, 1.03)) for _ in range(10)
    ]
    first = next(n for n in range(3, 11) if decide(ws[:n]).done)
    assert decide(ws[:first]).stable


def test_a_warming_start_is_not_drift() -> None:
    ws = [WindowStats(60.0, 9.0), WindowStats(80, 7.0), WindowStats(100, 5.0)]
    ws += [WindowStats(100, 5.0 + 0.01 * (i % 2)) for i in range(3)]
    assert decide(ws).stable
    assert steady.drifting(ws[-3:], 3, 0.10) == ""


def test_mann_kendall_z_of_known_series() -> None:
    assert steady.mann_kendall_z([1, 2, 3, 4, 5]) == pytest.approx((10 - 1) / (50 / 3) ** 0.5)
    assert steady.mann_kendall_z([5, 4, 3, 2, 1]) == pytest.approx(-(10 - 1) / (50 / 3) ** 0.5)
    assert steady.mann_kendall_z([1, 1]) == 0.0
