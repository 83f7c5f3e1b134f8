"""From cell results to a verdict: parity, cost, intervals, winners per category, ties,
recommendations.

Pure functions over `CellResult`s; the local runner, the operator and the report all call
`analyze`. A cell that failed, whose outputs disagree with the reference backend, or whose
numbers carry an error or did not settle (unstable), never wins a category: its numbers are
shown, marked, and excluded. Every headline number carries an interval at the suite's
confidence (`bakeoff_bench.intervals`); a category names a winner only when the leader's
interval clears the runner-up's and the gap is at least `spec.verdict.minEffect`, and reads
"no clear winner (within noise)" otherwise, naming the tied backends.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from pydantic import Field

from bakeoff import api, engine_server
from bakeoff_bench import intervals
from bakeoff_bench.models import StrictModel
from bakeoff_bench.results import CellResult, Flag, FlagCode, RunSummary, ScenarioResult

Range = tuple[float, float]


class ParityCheck(StrictModel):
    backend: str
    pool: str
    reference: str
    min_cosine: float | None = Field(description="Worst row's cosine similarity")
    max_abs_error: float | None
    passed: bool
    message: str = ""


class VerdictRow(StrictModel):
    backend: str
    pool: str
    ok: bool = Field(description="Measured, and eligible to win")
    status: str = Field(description="'ok', 'failed: ...' or 'parity failed: ...'")
    server: str = ""
    runtime: str = ""
    single_p50_ms: float | None = None
    single_p50_interval_ms: Range | None = Field(default=None, description="At `confidence`")
    single_p99_ms: float | None = None
    single_p99_interval_ms: Range | None = None
    single_mean_ms: float | None = Field(
        default=None, description="The client's mean: compare it with the server's means"
    )
    single_mean_interval_ms: Range | None = None
    single_samples: int | None = None
    single_low_sample: list[str] = Field(default_factory=list)
    server_compute_ms: float | None = None
    server_queue_ms: float | None = None
    best_inferences_per_s: float | None = None
    best_inferences_per_s_interval: Range | None = None
    best_samples: int | None = Field(default=None, description="Requests behind that rate")
    best_batch_size: int | None = None
    best_batch_p50_ms: float | None = None
    memory_bytes: int | None = None
    memory_kind: str | None = None
    cost_per_1k: float | None = None
    cost_per_1k_interval: Range | None = None
    cost_per_hour: float = 0.0
    max_rate_rps: float | None = Field(
        default=None, description="Highest open-loop rate whose p99 met the SLO"
    )
    slo_p99_ms: float | None = None
    first_request_ms: float | None = Field(
        default=None, description="Slowest first request of any batch size (cold start)"
    )
    flags: list[str] = Field(
        default_factory=list, description="Every flag of the cell: 'code: where: message'"
    )
    parity_cosine: float | None = Field(
        default=None, description="Worst cosine vs the reference; None for the reference itself"
    )
    is_reference: bool = False


class Verdict(StrictModel):
    suite: str
    rows: list[VerdictRow]
    winners: dict[str, api.Winner]
    ties: dict[str, api.Tie] = Field(default_factory=dict)
    confidence: float = 0.95
    min_effect: float = 0.05
    recommendations: list[str]
    parity: list[ParityCheck]
    notes: list[str] = Field(default_factory=list)
    # Defaulted: a summary.json written before the split existed still loads.
    engine_vs_server: engine_server.EngineVsServer = Field(
        default_factory=engine_server.EngineVsServer,
        description="Backends that differ in the engine or the server only, and differences "
        "in both split into the two",
    )

    def summary(self) -> api.Summary:
        return api.Summary(
            winners=self.winners,
            ties=self.ties,
            confidence=self.confidence,
            recommendations=self.recommendations,
            cost_per_1k={
                f"{r.backend}/{r.pool}": round(r.cost_per_1k, 6)
                for r in self.rows
                if r.cost_per_1k is not None and math.isfinite(r.cost_per_1k)
            },
            parity={
                f"{p.backend}/{p.pool}": round(p.min_cosine, 6)
                for p in self.parity
                if p.min_cosine is not None
            },
            excluded=[f"{r.backend}/{r.pool}: {r.status}" for r in self.rows if not r.ok],
        )


def _failure_status(reason: str) -> str:
    """'failed: why', or 'not run: why' for a backend that cannot exist on this machine
    (TensorRT without its libraries), also when a repeat's prefix comes first."""
    if "not run:" in reason:
        return reason[reason.index("not run:") :][:120]
    return f"failed: {reason[:100]}"


def cost_per_1k(cost_per_hour: float, inferences_per_s: float) -> float:
    """Price per hour / (3600 x sustained inferences per second) x 1000
    (docs/architecture.md §2, rule 6)."""
    if inferences_per_s <= 0:
        return math.inf
    return cost_per_hour / (3600.0 * inferences_per_s) * 1000.0


def cosine_rows(a: Sequence[Sequence[float]], b: Sequence[Sequence[float]]) -> list[float]:
    if len(a) != len(b):
        raise ValueError(f"parity outputs differ in rows: {len(a)} vs {len(b)}")
    cosines = []
    for row_a, row_b in zip(a, b, strict=True):
        if len(row_a) != len(row_b):
            raise ValueError(f"parity outputs differ in width: {len(row_a)} vs {len(row_b)}")
        dot = sum(x * y for x, y in zip(row_a, row_b, strict=True))
        norm = math.sqrt(sum(x * x for x in row_a)) * math.sqrt(sum(y * y for y in row_b))
        cosines.append(dot / norm if norm > 0 else 0.0)
    return cosines


def check_parity(reference: CellResult, other: CellResult, min_cosine: float) -> ParityCheck:
    base = {"backend": other.backend, "pool": other.pool, "reference": reference.backend}
    if not reference.parity_outputs or not other.parity_outputs:
        return ParityCheck(
            **base,
            min_cosine=None,
            max_abs_error=None,
            passed=False,
            message="no parity outputs recorded",
        )
    try:
        cosines = cosine_rows(reference.parity_outputs, other.parity_outputs)
    except ValueError as error:
        return ParityCheck(
            **base, min_cosine=None, max_abs_error=None, passed=False, message=str(error)
        )
    max_abs = max(
        abs(x - y)
        for row_a, row_b in zip(reference.parity_outputs, other.parity_outputs, strict=True)
        for x, y in zip(row_a, row_b, strict=True)
    )
    worst = min(cosines)
    passed = worst >= min_cosine
    message = "" if passed else f"cosine {worst:.6f} < minCosine {min_cosine}"
    return ParityCheck(
        **base, min_cosine=worst, max_abs_error=max_abs, passed=passed, message=message
    )


def cell_flags(result: CellResult) -> list[Flag]:
    """Every flag of a cell: its own, then each scenario's (tagged with where it arose)."""
    flags = list(result.flags)
    for scenario in result.scenario_results():
        where = f"{scenario.scenario} b={scenario.batch_size} c={scenario.concurrency}"
        flags += [f.model_copy(update={"message": f"{where}: {f.message}"}) for f in scenario.flags]
    return flags


def answered(scenario: ScenarioResult) -> bool:
    """At least one request succeeded: a scenario without any has no numbers to show."""
    return scenario.latency.count > 0


def best_throughput(result: CellResult) -> ScenarioResult | None:
    """The closed-loop run with the most inferences per second (open-loop rates are capped
    by what was requested, so they do not count)."""
    candidates = [s for s in [*result.batch_sweep, *result.concurrency_sweep] if answered(s)]
    if result.single is not None and answered(result.single):
        candidates.append(result.single)
    return max(candidates, key=lambda s: s.inferences_per_s, default=None)


def _range(interval: intervals.Interval | None) -> Range | None:
    return (interval.low, interval.high) if interval is not None else None


def run_summary(result: CellResult, index: int) -> RunSummary:
    single = result.single if result.single is not None and answered(result.single) else None
    best = best_throughput(result)
    return RunSummary(
        index=index,
        single_p50_ms=single.latency.p50_ms if single else None,
        single_p99_ms=single.latency.p99_ms if single else None,
        single_mean_ms=single.latency.mean_ms if single else None,
        best_inferences_per_s=best.inferences_per_s if best else None,
    )


def combine_repeats(runs: Sequence[CellResult]) -> CellResult:
    """Several runs of one cell as one result: the median run (by single-image p50, else by
    throughput) with every run's headline numbers in `repeats`, whose spread the verdict's
    intervals then include."""
    if not runs:
        raise ValueError("no runs to combine")
    summaries = [run_summary(run, i) for i, run in enumerate(runs, start=1)]

    def key(pair: tuple[CellResult, RunSummary]) -> float:
        summary = pair[1]
        if summary.single_p50_ms is not None:
            return summary.single_p50_ms
        return -(summary.best_inferences_per_s or 0.0)

    ordered = sorted(zip(runs, summaries, strict=True), key=key)
    median = ordered[(len(ordered) - 1) // 2][0]
    note = (
        f"median of {len(runs)} interleaved runs (scenarios.repeats); the intervals include "
        "their spread"
    )
    return median.model_copy(update={"repeats": summaries, "notes": [*median.notes, note]})


def _widened(
    interval: intervals.Interval | None,
    values: Sequence[float | None],
    confidence: float,
) -> intervals.Interval | None:
    """The within-run interval, widened to cover the between-run spread of repeated runs
    (Student's t over the runs' values) where there are at least two."""
    known = [v for v in values if v is not None]
    between = intervals.spread_interval(known, confidence) if len(known) >= 2 else None
    if between is None:
        return interval
    if interval is None:
        return between
    return intervals.Interval(min(interval.low, between.low), max(interval.high, between.high))


def _row(
    result: CellResult,
    pool: api.NodePool,
    parity: ParityCheck | None,
    is_reference: bool,
    confidence: float,
) -> VerdictRow:
    single = result.single if result.single is not None and answered(result.single) else None
    best = best_throughput(result)
    single_server = single.server if single is not None else None
    flags = cell_flags(result)
    errors = [f for f in flags if f.severity == "error"]
    unsettled = [f for f in flags if f.code is FlagCode.UNSTABLE]
    silent = not any(answered(s) for s in result.scenario_results())
    ok = (parity is None or parity.passed) and not errors and not silent and not unsettled
    if silent:
        status = "failed: no request succeeded in any scenario"
    elif parity is not None and not parity.passed:
        status = f"parity failed: {parity.message}"
    elif errors:
        status = f"not usable: {errors[0].code.value}: {errors[0].message}"
    elif unsettled:
        status = f"unstable: {unsettled[0].message}"
    else:
        status = "ok"
    latency = single.latency if single is not None else None
    histogram = latency.histogram if latency is not None else None
    runs = result.repeats
    throughput = _widened(
        intervals.throughput_interval(best, confidence) if best is not None else None,
        [r.best_inferences_per_s for r in runs],
        confidence,
    )
    p50 = _widened(
        intervals.quantile_interval(histogram, 0.5, confidence),
        [r.single_p50_ms for r in runs],
        confidence,
    )
    p99 = _widened(
        intervals.quantile_interval(histogram, 0.99, confidence),
        [r.single_p99_ms for r in runs],
        confidence,
    )
    mean = _widened(
        intervals.mean_interval(histogram, latency.mean_ms, confidence) if latency else None,
        [r.single_mean_ms for r in runs],
        confidence,
    )
    cost = cost_per_1k(pool.cost_per_hour, best.inferences_per_s) if best else None
    cost_range = None
    if throughput is not None and cost is not None:
        cost_range = throughput.inverted(pool.cost_per_hour / 3.6)
    firsts = result.cold_start.first_request_ms if result.cold_start else {}
    max_rate = result.max_rate
    return VerdictRow(
        backend=result.backend,
        pool=result.pool,
        ok=ok,
        status=status,
        server=f"{result.server.name} {result.server.version}".strip(),
        runtime=result.server.runtime,
        single_p50_ms=latency.p50_ms if latency else None,
        single_p50_interval_ms=_range(p50),
        single_p99_ms=latency.p99_ms if latency else None,
        single_p99_interval_ms=_range(p99),
        single_mean_ms=latency.mean_ms if latency else None,
        single_mean_interval_ms=_range(mean),
        single_samples=single.latency.count if single else None,
        single_low_sample=list(single.latency.low_sample_percentiles) if single else [],
        server_compute_ms=single_server.compute_ms if single_server else None,
        server_queue_ms=single_server.queue_ms if single_server else None,
        best_inferences_per_s=best.inferences_per_s if best else None,
        best_inferences_per_s_interval=_range(throughput),
        best_samples=best.latency.count if best else None,
        best_batch_size=best.batch_size if best else None,
        best_batch_p50_ms=best.latency.p50_ms if best else None,
        memory_bytes=result.memory_bytes,
        memory_kind=result.memory_kind,
        cost_per_1k=cost,
        cost_per_1k_interval=_range(cost_range),
        cost_per_hour=pool.cost_per_hour,
        max_rate_rps=max_rate.requests_per_s if max_rate else None,
        slo_p99_ms=max_rate.slo_p99_ms if max_rate else None,
        first_request_ms=max(firsts.values()) if firsts else None,
        flags=[f"{f.code.value}: {f.message}" for f in flags],
        parity_cosine=parity.min_cosine if parity else None,
        is_reference=is_reference,
    )


@dataclass(frozen=True)
class Category:
    """A way to win: the row attribute, its interval's, which end is better, the samples."""

    name: str
    attr: str
    unit: str
    basis: str
    lowest: bool
    interval: str | None = None
    samples: str | None = None


CATEGORIES = (
    Category("latency", "single_p50_ms", "ms", "single-image p50 of {row.single_samples} requests",
             lowest=True, interval="single_p50_interval_ms", samples="single_samples"),
    Category("throughput", "best_inferences_per_s", "inferences/s",
             "closed loop at batch {row.best_batch_size}", lowest=False,
             interval="best_inferences_per_s_interval", samples="best_samples"),
    Category("cost", "cost_per_1k", "per 1000 inferences",
             "{row.cost_per_hour}/h at {row.best_inferences_per_s:.1f} inferences/s, "
             "batch {row.best_batch_size}", lowest=True, interval="cost_per_1k_interval",
             samples="best_samples"),
    Category("memory", "memory_bytes", "bytes", "{row.memory_kind} at the end of the run",
             lowest=True),
    Category("max-rate", "max_rate_rps", "requests/s",
             "open loop, p99 within {row.slo_p99_ms} ms", lowest=False),
)  # fmt: skip


def _value(row: VerdictRow, category: Category) -> float:
    return float(getattr(row, category.attr))


def _interval(row: VerdictRow, category: Category) -> Range | None:
    found: Range | None = getattr(row, category.interval) if category.interval else None
    return found


def _gap(leader: VerdictRow, other: VerdictRow, category: Category) -> float:
    """How much worse `other` is than the leader, relative to the leader."""
    a, b = _value(leader, category), _value(other, category)
    return abs(b - a) / abs(a) if a else math.inf


def _separated(
    leader: VerdictRow, other: VerdictRow, category: Category, min_effect: float
) -> bool:
    if _gap(leader, other, category) < min_effect:
        return False
    a, b = _interval(leader, category), _interval(other, category)
    return a is None or b is None or not (a[0] <= b[1] and b[0] <= a[1])


def decide_category(
    rows: Sequence[VerdictRow], category: Category, rules: api.VerdictRules
) -> api.Winner | api.Tie | None:
    """The winner of a category among eligible rows, a tie when the evidence does not
    separate the leaders, or None when no row has the number."""
    eligible = [r for r in rows if r.ok and getattr(r, category.attr) is not None]
    if not eligible:
        return None
    ordered = sorted(eligible, key=lambda r: _value(r, category), reverse=not category.lowest)
    leader = ordered[0]
    tied = [r for r in ordered[1:] if not _separated(leader, r, category, rules.min_effect)]
    interval = _interval(leader, category)
    if not tied:
        return api.Winner(
            backend=leader.backend,
            pool=leader.pool,
            value=_value(leader, category),
            unit=category.unit,
            basis=category.basis.format(row=leader),
            low=interval[0] if interval else None,
            high=interval[1] if interval else None,
        )
    return _tie(leader, tied, category, rules)


def _describe(row: VerdictRow, category: Category) -> str:
    value = _value(row, category)
    text = f"{row.backend}/{row.pool} {value:.4g} {category.unit}"
    interval = _interval(row, category)
    if interval is not None:
        text += f" [{interval[0]:.4g}, {interval[1]:.4g}]"
    return text


def _tie(
    leader: VerdictRow, tied: Sequence[VerdictRow], category: Category, rules: api.VerdictRules
) -> api.Tie:
    closest = tied[0]
    gap = _gap(leader, closest, category)
    shown = " vs ".join(_describe(r, category) for r in (leader, *tied))
    needed = None
    if gap < rules.min_effect:
        why = (
            f"the difference, {gap:.1%}, is below minEffect {rules.min_effect:.0%}: more "
            "samples would not make it matter"
        )
    else:
        count = getattr(leader, category.samples) if category.samples else None
        widths = [
            (iv[1] - iv[0]) / 2 / _value(r, category)
            for r in (leader, closest)
            if (iv := _interval(r, category)) is not None and _value(r, category)
        ]
        if count and widths:
            needed = intervals.samples_to_separate(int(count), max(widths), gap)
        why = f"their {rules.confidence:.0%} intervals overlap at a {gap:.1%} difference"
        if needed is not None:
            why += f"; about {needed:,} samples each would settle it"
    return api.Tie(
        candidates=[f"{r.backend}/{r.pool}" for r in (leader, *tied)],
        message=f"no clear winner (within noise): {shown}; {why}",
        samples_needed=needed,
    )


def analyze(
    suite: api.BenchmarkSuite,
    results: Sequence[CellResult],
    failures: Sequence[tuple[str, str, str]] = (),
) -> Verdict:
    """`failures` lists (backend, pool, reason) for cells that produced no result."""
    spec = suite.spec
    pools = {p.name: p for p in spec.node_pools}
    reference_name = spec.parity.reference or spec.backends[0].name
    rows: list[VerdictRow] = []
    parity_checks: list[ParityCheck] = []
    notes: list[str] = []
    for result in results:
        reference = next(
            (r for r in results if r.backend == reference_name and r.pool == result.pool), None
        )
        parity: ParityCheck | None = None
        if result.backend != reference_name:
            if reference is None:
                notes.append(
                    f"{result.backend}/{result.pool}: reference '{reference_name}' has no "
                    "result on this pool, so parity was not checked"
                )
            else:
                parity = check_parity(reference, result, spec.parity.min_cosine)
                parity_checks.append(parity)
        is_reference = result.backend == reference_name
        rows.append(_row(result, pools[result.pool], parity, is_reference, spec.verdict.confidence))
    for backend, pool, reason in failures:
        # The table shows the first line; the whole reason is in the outcome and the log.
        first_line = reason.strip().splitlines()[0] if reason.strip() else "no reason given"
        rows.append(
            VerdictRow(
                backend=backend,
                pool=pool,
                ok=False,
                # A backend that cannot exist here (TensorRT without its libraries) says
                # "not run: why"; anything else failed.
                status=_failure_status(first_line),
                cost_per_hour=pools[pool].cost_per_hour if pool in pools else 0,
            )
        )
    winners: dict[str, api.Winner] = {}
    ties: dict[str, api.Tie] = {}
    for category in CATEGORIES:
        decided = decide_category(rows, category, spec.verdict)
        if isinstance(decided, api.Winner):
            winners[category.name] = decided
        elif isinstance(decided, api.Tie):
            ties[category.name] = decided
    return Verdict(
        suite=suite.metadata.name,
        rows=rows,
        winners=winners,
        ties=ties,
        confidence=spec.verdict.confidence,
        min_effect=spec.verdict.min_effect,
        recommendations=recommend(rows, spec.node_pools, spec.verdict),
        parity=parity_checks,
        notes=notes,
        engine_vs_server=engine_server.split(suite, rows),
    )


def recommend(
    rows: Sequence[VerdictRow], pools: Sequence[api.NodePool], rules: api.VerdictRules
) -> list[str]:
    """One sentence per pool: the backend to use for latency, and for throughput per cost,
    by the same rule as the winners (a tie is said to be one)."""
    latency, cost = CATEGORIES[0], CATEGORIES[2]
    sentences = []
    for pool in pools:
        eligible = [r for r in rows if r.pool == pool.name and r.ok]
        if not eligible:
            sentences.append(f"{pool.name}: no backend produced trustworthy results")
            continue
        parts = []
        fastest = decide_category(eligible, latency, rules)
        if isinstance(fastest, api.Winner):
            parts.append(f"lowest latency: {fastest.backend} (p50 {fastest.value:.2f} ms)")
        elif isinstance(fastest, api.Tie):
            parts.append(f"lowest latency: no clear winner between {_names(fastest)}")
        cheapest = decide_category(eligible, cost, rules)
        if isinstance(cheapest, api.Winner):
            row = next(r for r in eligible if r.backend == cheapest.backend)
            parts.append(
                f"cheapest at scale: {cheapest.backend} ({cheapest.value:.4f} per 1000 "
                f"inferences at batch {row.best_batch_size}, "
                f"{row.best_inferences_per_s or 0:.1f} inferences/s)"
            )
        elif isinstance(cheapest, api.Tie):
            parts.append(f"cheapest at scale: no clear winner between {_names(cheapest)}")
        sentences.append(f"{pool.name}: " + "; ".join(parts))
    return sentences


def _names(tie: api.Tie) -> str:
    names = [c.split("/")[0] for c in tie.candidates]
    return ", ".join(names[:-1]) + f" and {names[-1]} (within noise)"
