"""One result from N clients' results (pure): what several client pods or processes measured
together, as one cell result with a per-client breakdown.

Every client ran the same scenarios in the same windows (`barrier`), each its share
(`shares`). Counts add; latencies merge through their histograms (exact counts, percentiles
within a bucket); a closed loop's throughput is the sum of the clients' (their windows
coincide), an open loop's is every answer over the longest span. The server's numbers, the
cold start, parity, memory and environment are client 0's: it alone measured them. A
client whose p50 is far from the others' gets a `clients-disagree` flag on the scenario.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Final

from bakeoff_bench import flags, overhead, stats
from bakeoff_bench.results import (
    CellResult,
    Flag,
    FlagCode,
    OpenLoopResult,
    ScenarioResult,
    merge_errors,
)

# A client's p50 this far from the clients' median (both ways, and by DISAGREE_MIN_MS at
# least) is not the same measurement: a slow node, a noisy neighbour, a far zone.
DISAGREE_RATIO: Final = 1.5
DISAGREE_MIN_MS: Final = 0.5
_SLO_MISS_FRACTION: Final = 0.01


class MergeError(ValueError):
    """The parts are not one run's clients (missing client, different cells)."""


def _key(result: ScenarioResult) -> tuple[str, int, int, float | None]:
    rate = result.open_loop.requested_requests_per_s if result.open_loop else None
    return result.scenario, result.batch_size, result.concurrency, rate


def _merge_open_loop(parts: Sequence[ScenarioResult], requests_per_s: float) -> OpenLoopResult:
    loops = [p.open_loop for p in parts if p.open_loop is not None]
    first = loops[0]
    scheduled = sum(o.scheduled for o in loops)
    sent = sum(o.sent for o in loops)
    latency = stats.merge_latency_stats([p.latency for p in parts])
    ok = sum(p.requests for p in parts)
    slo_met = None
    if first.slo_p99_ms is not None:
        lost = scheduled - ok
        slo_met = (
            ok > 0 and latency.p99_ms <= first.slo_p99_ms and lost <= _SLO_MISS_FRACTION * scheduled
        )
    return first.model_copy(
        update={
            "scheduled": scheduled,
            "sent": sent,
            "sent_requests_per_s": sent / first.duration_seconds,
            "achieved_requests_per_s": requests_per_s,
            "schedule_lag": stats.merge_latency_stats([o.schedule_lag for o in loops]),
            "late": sum(o.late for o in loops),
            "dropped_max_in_flight": sum(o.dropped_max_in_flight for o in loops),
            "dropped_at_end": sum(o.dropped_at_end for o in loops),
            "service_latency": stats.merge_latency_stats([o.service_latency for o in loops]),
            "slo_met": slo_met,
        }
    )


def disagreement(result: ScenarioResult) -> Flag | None:
    """A `clients-disagree` flag when one client's p50 is far from the others' median."""
    shares = [c for c in result.clients if c.requests > 0]
    if len(shares) < 2:
        return None
    median = statistics.median(c.p50_ms for c in shares)
    worst = max(shares, key=lambda c: abs(c.p50_ms - median))
    ratio = worst.p50_ms / median if median > 0 else 1.0
    far = max(ratio, 1 / ratio if ratio > 0 else 1.0)
    if far < DISAGREE_RATIO or abs(worst.p50_ms - median) < DISAGREE_MIN_MS:
        return None
    where = f" on node {worst.node}" if worst.node else ""
    return Flag(
        code=FlagCode.CLIENTS_DISAGREE,
        severity="warning",
        message=(
            f"client {worst.index}{where} measured p50 {worst.p50_ms:.2f} ms against the "
            f"clients' median {median:.2f} ms ({far:.1f}x): the clients did not see the same "
            "server; check that client's node before trusting the merged numbers"
        ),
    )


def merge_scenarios(parts: Sequence[ScenarioResult], metrics_expected: bool) -> ScenarioResult:
    """One scenario as all its clients measured it (`parts`: client 0's first)."""
    if len(parts) == 1 and not parts[0].clients:
        return parts[0]
    lead = parts[0]
    requests = sum(p.requests for p in parts)
    duration = max(p.duration_s for p in parts)
    if lead.open_loop is not None:
        requests_per_s = requests / duration if duration > 0 else 0.0
    else:
        requests_per_s = sum(p.requests_per_s for p in parts)
    loads = [p.client for p in parts if p.client is not None]
    merged = lead.model_copy(
        update={
            "requests": requests,
            "failed": sum(p.failed for p in parts),
            "errors": merge_errors(*(p.errors for p in parts)),
            "duration_s": duration,
            "requests_per_s": requests_per_s,
            "inferences_per_s": requests_per_s * lead.batch_size,
            "latency": stats.merge_latency_stats([p.latency for p in parts]),
            "warmup_requests": sum(p.warmup_requests for p in parts),
            "open_loop": (
                _merge_open_loop(parts, requests_per_s) if lead.open_loop is not None else None
            ),
            "client": overhead.worst_of(loads),
            "workers": sum(p.workers for p in parts),
            "clients": sorted((c for p in parts for c in p.clients), key=lambda c: c.index),
        }
    )
    found = flags.scenario_flags(merged, metrics_expected=metrics_expected)
    disagree = disagreement(merged)
    return merged.model_copy(update={"flags": found + ([disagree] if disagree else [])})


def _merge_list(
    lists: Sequence[Sequence[ScenarioResult]], metrics_expected: bool
) -> list[ScenarioResult]:
    groups: dict[tuple[str, int, int, float | None], list[ScenarioResult]] = {}
    for results in lists:
        for result in results:
            groups.setdefault(_key(result), []).append(result)
    return [merge_scenarios(group, metrics_expected) for group in groups.values()]


def merge_cells(parts: Sequence[CellResult], metrics_expected: bool) -> CellResult:
    """The cell's result from every client's (in client order: client 0 first)."""
    if not parts:
        raise MergeError("no client results to merge")
    cells = {(p.suite, p.backend, p.pool) for p in parts}
    if len(cells) > 1:
        raise MergeError(f"client results of different cells: {sorted(cells)}")
    lead = parts[0]
    if len(parts) == 1:
        return lead
    single_parts = [p.single for p in parts if p.single is not None]
    merged = lead.model_copy(
        update={
            "started_at": min(p.started_at for p in parts),
            "finished_at": max(p.finished_at for p in parts),
            "single": (merge_scenarios(single_parts, metrics_expected) if single_parts else None),
            "batch_sweep": _merge_list([p.batch_sweep for p in parts], metrics_expected),
            "concurrency_sweep": _merge_list(
                [p.concurrency_sweep for p in parts], metrics_expected
            ),
            "rate": _merge_list([p.rate for p in parts], metrics_expected),
        }
    )
    return merged.model_copy(update={"notes": _notes(parts, merged)})


def _notes(parts: Sequence[CellResult], merged: CellResult) -> list[str]:
    """The lead's own notes, the merged scenarios' flags (each client's flags were about its
    share alone), and the other clients' placement notes (where each pod ran)."""
    labels = tuple(f"{result.label}: " for part in parts for result in part.scenario_results())
    own = [note for note in parts[0].notes if not note.startswith(labels)]
    flagged = [
        f"{result.label}: {flag.message}"
        for result in merged.scenario_results()
        for flag in result.flags
    ]
    placement = [
        f"client {index}: {note}"
        for index, part in enumerate(parts[1:], start=1)
        for note in part.notes
        if note.startswith("placement:")
    ]
    return [*own, *flagged, *placement, f"measured by {len(parts)} clients, merged"]
