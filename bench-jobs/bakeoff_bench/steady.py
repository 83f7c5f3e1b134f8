"""Steady-state acceptance (pure): which measured windows agree (DESIGN §2, rule 2).

Called by `scenarios` after every window. The last `consecutive` windows are accepted when
each one's throughput and p50 lie within `tolerance` of their mean over those windows.
When `maxWindows` pass without that, the last `consecutive` windows are reported anyway,
marked unstable with their spread, so a drifting server is visible rather than averaged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


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


def decide(
    windows: Sequence[WindowStats], *, tolerance: float, consecutive: int, max_windows: int
) -> Decision:
    """Accept the last `consecutive` windows if they agree; give up after `max_windows`."""
    last = tuple(range(max(0, len(windows) - consecutive), len(windows)))
    if len(windows) >= consecutive:
        tail = [windows[i] for i in last]
        if (
            all(w.requests_per_s > 0 for w in tail)
            and agree([w.requests_per_s for w in tail], tolerance)
            and agree([w.p50_ms for w in tail], tolerance)
        ):
            return Decision(done=True, stable=True, accepted=last)
    if len(windows) >= max_windows:
        return Decision(done=True, stable=False, accepted=last)
    return Decision(done=False, stable=False, accepted=())
