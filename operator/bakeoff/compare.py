"""`bakeoff compare OLD NEW`: did a cell get faster, slower, or not change? (pure)

Called by the CLI with the results of two runs (folders of `cells/*.json`, a local run's or
`bakeoff report --cluster`'s). Each cell present in both is compared metric by metric with
the same intervals as the verdict (`bakeoff_bench.intervals`): a change counts only when the
two intervals do not overlap and the relative change is at least the threshold; anything
else is "no change" (within noise, or too small to matter). A regression past the threshold
makes the command exit non-zero, so CI can gate on it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from bakeoff import analysis
from bakeoff_bench import intervals
from bakeoff_bench.results import CellResult

Verdict = Literal["faster", "slower", "no change", "not measured"]


@dataclass(frozen=True)
class Metric:
    name: str
    unit: str
    lower_is_better: bool
    measure: Callable[[CellResult, float], tuple[float, intervals.Interval | None] | None]


def _single_quantile(
    q: float, field: str
) -> Callable[..., tuple[float, intervals.Interval | None] | None]:
    def measure(
        result: CellResult, confidence: float
    ) -> tuple[float, intervals.Interval | None] | None:
        single = result.single
        if single is None or not analysis.answered(single):
            return None
        value = float(getattr(single.latency, field))
        return value, intervals.quantile_interval(single.latency.histogram, q, confidence)

    return measure


def _single_mean(
    result: CellResult, confidence: float
) -> tuple[float, intervals.Interval | None] | None:
    single = result.single
    if single is None or not analysis.answered(single):
        return None
    latency = single.latency
    return latency.mean_ms, intervals.mean_interval(latency.histogram, latency.mean_ms, confidence)


def _throughput(
    result: CellResult, confidence: float
) -> tuple[float, intervals.Interval | None] | None:
    best = analysis.best_throughput(result)
    if best is None:
        return None
    return best.inferences_per_s, intervals.throughput_interval(best, confidence)


METRICS = (
    Metric("p50", "ms", True, _single_quantile(0.5, "p50_ms")),
    Metric("p99", "ms", True, _single_quantile(0.99, "p99_ms")),
    Metric("mean", "ms", True, _single_mean),
    Metric("throughput", "inferences/s", False, _throughput),
)


@dataclass(frozen=True)
class Change:
    cell: str  # "backend/pool"
    metric: str
    unit: str
    old: float | None
    new: float | None
    relative: float | None  # (new - old) / old
    verdict: Verdict
    regression: bool  # worse, past the threshold, beyond noise

    def line(self) -> str:
        if self.old is None or self.new is None or self.relative is None:
            return f"{self.cell} {self.metric}: {self.verdict}"
        return (
            f"{self.cell} {self.metric}: {self.old:.4g} -> {self.new:.4g} {self.unit} "
            f"({self.relative:+.1%}): {self.verdict}"
        )


def compare_results(
    old: Sequence[CellResult],
    new: Sequence[CellResult],
    *,
    threshold: float,
    confidence: float,
) -> list[Change]:
    """Every metric of every cell in both runs, in the new run's order."""
    before = {(r.backend, r.pool): r for r in old}
    changes = []
    for result in new:
        previous = before.get((result.backend, result.pool))
        if previous is None:
            continue
        for metric in METRICS:
            changes.append(
                _compare(f"{result.backend}/{result.pool}", metric, previous, result,
                         threshold, confidence)
            )  # fmt: skip
    return changes


def _compare(
    cell: str,
    metric: Metric,
    old: CellResult,
    new: CellResult,
    threshold: float,
    confidence: float,
) -> Change:
    was, now = metric.measure(old, confidence), metric.measure(new, confidence)
    if was is None or now is None or was[0] <= 0:
        return Change(cell, metric.name, metric.unit, was[0] if was else None,
                      now[0] if now else None, None, "not measured", False)  # fmt: skip
    relative = (now[0] - was[0]) / was[0]
    apart = was[1] is None or now[1] is None or not was[1].overlaps(now[1])
    verdict: Verdict = "no change"
    if apart and abs(relative) >= threshold:
        worse = relative > 0 if metric.lower_is_better else relative < 0
        verdict = "slower" if worse else "faster"
    return Change(
        cell, metric.name, metric.unit, was[0], now[0], relative, verdict,
        regression=verdict == "slower",
    )  # fmt: skip
