"""Steady-state acceptance (pure): which windows agree (docs/architecture.md §2, rule 2).

Called by `scenarios` after every window. The last `consecutive` windows are accepted when
each one's throughput and p50 lie within `tolerance` of their mean over those windows, and
none of the two is drifting: windows that each agree with the next can still all move one
way (a server that slows a few percent per second). Drift is two tests: the accepted windows
strictly rising or falling by more than half the tolerance from first to last, or, over the
last 2 x `consecutive` windows, a significant Mann-Kendall rank trend (at least 4 windows)
that moved more than that. When `maxWindows` pass without acceptance, the last
`consecutive` windows are reported anyway, marked unstable with their spread and drift, so a
drifting server is visible rather than averaged.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

# |z| of the Mann-Kendall statistic above which a trend counts (two-sided 5%).
TREND_Z: Final = 1.96
MIN_TREND_WINDOWS: Final = 4


@dataclass(frozen=True)
class WindowStats:
    requests_per_s: float
    p50_ms: float


@dataclass(frozen=True)
class Decision:
    """`done`: stop measuring; `accepted`: indices of the windows whose numbers count."""

    done: bool
    stable: bool
    accepted: tuple[int, ...]


def spread(values: Sequence[float]) -> float:
    """(max - min) / mean; 0 for a single value or a zero mean."""
    if not values:
        return 0.0
    mean = sum(values) / len(values)
    return (max(values) - min(values)) / mean if mean > 0 else 0.0


def agree(values: Sequence[float], tolerance: float) -> bool:
    """Every value within `tolerance` x their mean of that mean."""
    mean = sum(values) / len(values)
    return all(abs(v - mean) <= tolerance * mean for v in values)


def mann_kendall_z(values: Sequence[float]) -> float:
    """The Mann-Kendall statistic S (sum of signs of later minus earlier values) as a normal
    score, with the continuity correction; 0 for fewer than 3 values. No tie correction: the
    values are measured latencies and rates, ties are rare."""
    n = len(values)
    if n < 3:
        return 0.0
    s = sum(
        (values[j] > values[i]) - (values[j] < values[i])
        for i in range(n - 1)
        for j in range(i + 1, n)
    )
    variance = n * (n - 1) * (2 * n + 5) / 18
    if s == 0:
        return 0.0
    return (s - math.copysign(1, s)) / math.sqrt(variance)


def relative_change(values: Sequence[float]) -> float:
    """(last - first) / mean: how far the values moved across the windows."""
    mean = sum(values) / len(values) if values else 0.0
    return (values[-1] - values[0]) / mean if mean > 0 and len(values) > 1 else 0.0


def drift(values: Sequence[float], tail: int, tolerance: float) -> float | None:
    """The relative change of a drifting series, None when it is not drifting."""
    moved = tolerance / 2
    last = list(values[-tail:])
    monotone = len(last) >= 2 and (
        all(b > a for a, b in itertools.pairwise(last))
        or all(b < a for a, b in itertools.pairwise(last))
    )
    if monotone and abs(relative_change(last)) > moved:
        return relative_change(last)
    # The rank trend over the recent windows only: early windows still warming up (faster
    # and faster, then flat) are not drift.
    recent = list(values[-2 * tail :])
    if len(recent) >= MIN_TREND_WINDOWS and abs(mann_kendall_z(recent)) > TREND_Z:
        change = relative_change(recent)
        if abs(change) > moved:
            return change
    return None


def drifting(windows: Sequence[WindowStats], tail: int, tolerance: float) -> str:
    """What drifts, in words ("" when nothing does): e.g. "p50 +18% over 10 windows"."""
    parts = []
    for name, values in (
        ("p50", [w.p50_ms for w in windows]),
        ("throughput", [w.requests_per_s for w in windows]),
    ):
        change = drift(values, tail, tolerance)
        if change is not None:
            parts.append(f"{name} {change:+.0%} over {len(windows)} windows")
    return ", ".join(parts)


def decide(
    windows: Sequence[WindowStats], *, tolerance: float, consecutive: int, max_windows: int
) -> Decision:
    """Accept the last `consecutive` windows if they agree and nothing drifts; give up after
    `max_windows`."""
    last = tuple(range(max(0, len(windows) - consecutive), len(windows)))
    if len(windows) >= consecutive:
        tail = [windows[i] for i in last]
        if (
            all(w.requests_per_s > 0 for w in tail)
            and agree([w.requests_per_s for w in tail], tolerance)
            and agree([w.p50_ms for w in tail], tolerance)
            and not drifting(windows, consecutive, tolerance)
        ):
            return Decision(done=True, stable=True, accepted=last)
    if len(windows) >= max_windows:
        return Decision(done=True, stable=False, accepted=last)
    return Decision(done=False, stable=False, accepted=())
