"""The highest open-loop rate whose p99 meets the SLO: a bounded bisection.

`next_rate` is pure: given where the search starts and the rates tried so far (configured
rates seed the bracket for free), it says which rate to run next, or None when done.
`search_max_rate` is the thin loop that runs them, called by `runner` after the rate runs.

The search starts from the highest closed-loop throughput at the rate's batch size (an
open loop rarely sustains more than the server completes with requests always queued).
While every rate tried meets the SLO it doubles (a closed loop at low concurrency
understates capacity); after the first miss it bisects between the highest rate that met
and the lowest that missed. Every run counts against `steps`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Final

from bakeoff_bench.results import MaxRateResult, ScenarioResult

MIN_BRACKET: Final = 0.02  # stop once the bracket is within 2% of its upper end


@dataclass(frozen=True)
class Trial:
    rate: float
    met: bool


def bracket(trials: Sequence[Trial]) -> tuple[float, float | None]:
    """(highest rate that met the SLO or 0, lowest rate that missed it or None)."""
    low = max((t.rate for t in trials if t.met), default=0.0)
    high = min((t.rate for t in trials if not t.met), default=None)
    return low, high


def next_rate(
    start: float, seeded: Sequence[Trial], searched: Sequence[Trial], steps: int
) -> float | None:
    """The next rate to run, or None: `steps` runs made, bracket narrow, or `start` met."""
    if len(searched) >= steps:
        return None
    low, high = bracket([*seeded, *searched])
    if high is None:
        return start if low < start else 2 * low
    if high - low <= MIN_BRACKET * high:
        return None
    return (low + high) / 2


def start_rate(
    closed_loop: Sequence[ScenarioResult], batch_size: int, configured: Sequence[float]
) -> tuple[float, str]:
    """Where to start, and why (for the result)."""
    same_size = [r for r in closed_loop if r.batch_size == batch_size and r.requests > 0]
    if same_size:
        best = max(same_size, key=lambda r: r.requests_per_s)
        return best.requests_per_s, f"highest closed-loop throughput ({best.label})"
    if not configured:
        raise ValueError("no closed-loop throughput and no configured rate to start from")
    return max(configured), "highest configured requestsPerSecond"


async def search_max_rate(
    run: Callable[[float], Awaitable[ScenarioResult]],
    *,
    slo_p99_ms: float,
    start: float,
    start_basis: str,
    seeded: Sequence[ScenarioResult],
    steps: int,
) -> MaxRateResult:
    """Run rates chosen by `next_rate` until it says stop; report the highest that met."""

    def trial(result: ScenarioResult) -> Trial:
        assert result.open_loop is not None
        return Trial(result.open_loop.requested_requests_per_s, bool(result.open_loop.slo_met))

    seeds = [trial(r) for r in seeded]
    trials: list[ScenarioResult] = []
    while (rate := next_rate(start, seeds, [trial(r) for r in trials], steps)) is not None:
        trials.append(await run(rate))
    low, high = bracket([*seeds, *(trial(r) for r in trials)])
    best = low if low > 0 else None
    batch = trials[0].batch_size if trials else (seeded[0].batch_size if seeded else 1)
    if best is None:
        message = f"no rate tried met p99 <= {slo_p99_ms:g} ms (lowest tried missed it)"
    elif high is None:
        message = f"every rate tried met the SLO, up to {best:.1f} req/s (out of steps)"
    else:
        message = f"between {best:.1f} (met) and {high:.1f} req/s (missed)"
    return MaxRateResult(
        slo_p99_ms=slo_p99_ms,
        requests_per_s=best,
        inferences_per_s=best * batch if best is not None else None,
        start_requests_per_s=start,
        start_basis=start_basis,
        trials=trials,
        message=message,
    )
