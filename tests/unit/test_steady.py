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
    # Mean 100: 90 and 110 are exactly 10% off and pass; 89 is not.
    assert decide(windows((90, 5.0), (100, 5.0), (110, 5.0))).stable
    assert not decide(windows((89, 5.0), (100, 5.0), (111, 5.0))).done


def test_giving_up_reports_the_last_windows_as_unstable() -> None:
    drifting = windows(*[(100 + 20 * i, 5.0) for i in range(5)])
    assert decide(drifting, max_windows=5) == Decision(True, False, (2, 3, 4))
    assert not decide(drifting[:4], max_windows=5).done


def test_spread_is_range_over_mean() -> None:
    assert steady.spread([90.0, 100.0, 110.0]) == pytest.approx(0.2)
    assert steady.spread([5.0]) == 0.0
    assert steady.spread([]) == 0.0
    assert steady.spread([0.0, 0.0]) == 0.0
