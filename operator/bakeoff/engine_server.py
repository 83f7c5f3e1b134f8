"""How much of a difference between two backends is the engine's and how much the server's.

Each backend kind says what a backend is made of (`BackendPlugin.identity`: server, engine,
precision, input wire format). On one pool, two trustworthy backends whose identities differ
in exactly one of server and engine, with precision and wire equal, measure that factor's
effect alone: a *pair*. Two backends that differ in both (A and C) are split through a third
(B) that shares one factor with each, so that A -> B changes one factor and B -> C the other:
a *decomposition*, whose two parts add up to the whole A -> C difference because they are the
links of one chain.

Where both orders exist (B1 changes the engine first, B2 the server first: a 2x2 square), the
two chains can disagree: the engine may help more in one server than in the other. The split
then takes each factor's part as the mean of the two orders (each order counts once, however
many backends share its intermediate identity) and keeps every route's own parts, so the
report can show the disagreement instead of hiding it.

A difference is marked *within noise* by the verdict's rule: the two backends' intervals
overlap, or the change is under `spec.verdict.minEffect`.

Pure: `analysis.analyze` calls `split` with the suite and its verdict rows; the report renders
the result. Backends without an identity (kind external) and rows that are not `ok` (failed,
parity failed, unstable, error-flagged) take no part.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from statistics import fmean
from typing import TYPE_CHECKING, Literal

from pydantic import Field

from bakeoff import api
from bakeoff.backends import plugin_for
from bakeoff.backends.base import Identity
from bakeoff_bench import intervals
from bakeoff_bench.models import StrictModel

if TYPE_CHECKING:  # analysis imports this module; the rows are only annotations here
    from bakeoff.analysis import Range, VerdictRow

Factor = Literal["engine", "server"]


class Difference(StrictModel):
    """One number of two backends, and how it changed from the first to the second."""

    before: float
    after: float
    delta: float = Field(description="after - before")
    relative: float | None = Field(description="delta / before; None when before is 0")
    within_noise: bool = Field(
        description="The intervals overlap, or the change is under minEffect"
    )


class FactorEffect(StrictModel):
    """Two backends on one pool that differ in one factor only: its effect, measured alone."""

    pool: str
    factor: Factor
    before: str = Field(description="Backend the change starts from (listed first in the suite)")
    after: str
    changed_from: str = Field(description="The factor's value in `before`, e.g. 'pytorch'")
    changed_to: str
    kept: str = Field(
        description="The other factor, the same in both: the server of an engine effect, the "
        "engine of a server effect"
    )
    precision: str
    wire: str
    p50_ms: Difference | None = Field(description="Single-image p50")
    inferences_per_s: Difference | None = Field(description="Best closed-loop throughput")


class Route(StrictModel):
    """One chain from the start to the end of a decomposition, through `via`."""

    via: str = Field(description="The intermediate backend")
    first: Factor = Field(description="The factor that start -> via changes")
    engine: float
    server: float
    engine_within_noise: bool
    server_within_noise: bool


class Split(StrictModel):
    """One number's whole difference from start to end, as an engine part and a server part
    (engine + server = total: the server part is what the engine part leaves)."""

    before: float
    after: float
    total: float
    relative: float | None = Field(description="total / before; None when before is 0")
    engine: float = Field(description="Mean over the orders of the routes' engine parts")
    server: float
    total_within_noise: bool
    engine_within_noise: bool = Field(description="On every route")
    server_within_noise: bool = Field(description="On every route")
    routes: list[Route] = Field(min_length=1)


class Decomposition(StrictModel):
    """Two backends on one pool that differ in both engine and server, same precision and
    wire, with the difference split through the backends between them."""

    pool: str
    start: str = Field(description="Backend listed first in the suite")
    end: str
    start_engine: str
    start_server: str
    end_engine: str
    end_server: str
    precision: str
    wire: str
    p50_ms: Split | None = Field(description="Single-image p50")
    inferences_per_s: Split | None = Field(description="Best closed-loop throughput")


class EngineVsServer(StrictModel):
    pairs: list[FactorEffect] = Field(default_factory=list)
    decompositions: list[Decomposition] = Field(default_factory=list)


@dataclass(frozen=True)
class _Metric:
    """A headline number of a verdict row and its interval at the verdict's confidence."""

    value: Callable[[VerdictRow], float | None]
    interval: Callable[[VerdictRow], Range | None]


P50 = _Metric(lambda row: row.single_p50_ms, lambda row: row.single_p50_interval_ms)
THROUGHPUT = _Metric(
    lambda row: row.best_inferences_per_s, lambda row: row.best_inferences_per_s_interval
)


@dataclass(frozen=True)
class _Candidate:
    row: VerdictRow
    identity: Identity


def _differing(a: Identity, b: Identity) -> set[Factor]:
    factors: set[Factor] = set()
    if a.engine != b.engine:
        factors.add("engine")
    if a.server != b.server:
        factors.add("server")
    return factors


def _relative(delta: float, before: float) -> float | None:
    return delta / before if before else None


def _within_noise(
    before: VerdictRow, after: VerdictRow, metric: _Metric, min_effect: float
) -> bool:
    """The verdict's rule for a tie (`analysis.decide_category`): a change under minEffect,
    or intervals that overlap, does not separate two backends."""
    a, b = metric.value(before), metric.value(after)
    if a is None or b is None:
        return True
    gap = abs(b - a) / abs(a) if a else math.inf
    if gap < min_effect:
        return True
    a_range, b_range = metric.interval(before), metric.interval(after)
    if a_range is None or b_range is None:
        return False
    return intervals.Interval(*a_range).overlaps(intervals.Interval(*b_range))


def _difference(
    before: VerdictRow, after: VerdictRow, metric: _Metric, min_effect: float
) -> Difference | None:
    a, b = metric.value(before), metric.value(after)
    if a is None or b is None:
        return None
    return Difference(
        before=a,
        after=b,
        delta=b - a,
        relative=_relative(b - a, a),
        within_noise=_within_noise(before, after, metric, min_effect),
    )


def _pair(earlier: _Candidate, later: _Candidate, pool: str, min_effect: float) -> FactorEffect:
    (factor,) = _differing(earlier.identity, later.identity)
    kept = earlier.identity.server if factor == "engine" else earlier.identity.engine
    return FactorEffect(
        pool=pool,
        factor=factor,
        before=earlier.row.backend,
        after=later.row.backend,
        changed_from=getattr(earlier.identity, factor),
        changed_to=getattr(later.identity, factor),
        kept=kept,
        precision=earlier.identity.precision,
        wire=earlier.identity.wire,
        p50_ms=_difference(earlier.row, later.row, P50, min_effect),
        inferences_per_s=_difference(earlier.row, later.row, THROUGHPUT, min_effect),
    )


def _route(
    start: VerdictRow,
    via: VerdictRow,
    end: VerdictRow,
    first: Factor,
    metric: _Metric,
    min_effect: float,
) -> Route | None:
    a, b, c = metric.value(start), metric.value(via), metric.value(end)
    if a is None or b is None or c is None:
        return None
    first_part, first_noise = b - a, _within_noise(start, via, metric, min_effect)
    second_part, second_noise = c - b, _within_noise(via, end, metric, min_effect)
    if first == "engine":
        return Route(via=via.backend, first=first, engine=first_part, server=second_part,
                     engine_within_noise=first_noise, server_within_noise=second_noise)  # fmt: skip
    return Route(via=via.backend, first=first, engine=second_part, server=first_part,
                 engine_within_noise=second_noise, server_within_noise=first_noise)  # fmt: skip


def _split(
    start: VerdictRow,
    end: VerdictRow,
    vias: Sequence[tuple[VerdictRow, Factor]],
    metric: _Metric,
    min_effect: float,
) -> Split | None:
    a, c = metric.value(start), metric.value(end)
    if a is None or c is None:
        return None
    routes = [
        route
        for via, first in vias
        if (route := _route(start, via, end, first, metric, min_effect)) is not None
    ]
    if not routes:
        return None
    orders = {route.first for route in routes}
    # Each order counts once: two backends with the same intermediate identity are two
    # measurements of one route, not a reason to weigh that order twice.
    engine = fmean(fmean(r.engine for r in routes if r.first == order) for order in sorted(orders))
    total = c - a
    return Split(
        before=a,
        after=c,
        total=total,
        relative=_relative(total, a),
        engine=engine,
        server=total - engine,
        total_within_noise=_within_noise(start, end, metric, min_effect),
        engine_within_noise=all(r.engine_within_noise for r in routes),
        server_within_noise=all(r.server_within_noise for r in routes),
        routes=routes,
    )


def _decomposition(
    start: _Candidate,
    end: _Candidate,
    candidates: Sequence[_Candidate],
    pool: str,
    min_effect: float,
) -> Decomposition | None:
    # Engine first: start's server with end's engine; server first: the other corner.
    corners: list[tuple[Identity, Factor]] = [
        (replace(start.identity, engine=end.identity.engine), "engine"),
        (replace(start.identity, server=end.identity.server), "server"),
    ]
    vias = [(c.row, first) for corner, first in corners for c in candidates if c.identity == corner]
    if not vias:
        return None
    return Decomposition(
        pool=pool,
        start=start.row.backend,
        end=end.row.backend,
        start_engine=start.identity.engine,
        start_server=start.identity.server,
        end_engine=end.identity.engine,
        end_server=end.identity.server,
        precision=start.identity.precision,
        wire=start.identity.wire,
        p50_ms=_split(start.row, end.row, vias, P50, min_effect),
        inferences_per_s=_split(start.row, end.row, vias, THROUGHPUT, min_effect),
    )


def split(suite: api.BenchmarkSuite, rows: Sequence[VerdictRow]) -> EngineVsServer:
    """Every pair and decomposition among the suite's trustworthy rows, pool by pool, in the
    suite's order of pools and backends."""
    backends = suite.spec.backends
    order = {b.name: i for i, b in enumerate(backends)}
    min_effect = suite.spec.verdict.min_effect
    pairs: list[FactorEffect] = []
    decompositions: list[Decomposition] = []
    for pool in suite.spec.node_pools:
        # Off a GPU every ONNX Runtime backend runs on the CPU provider: its engine says so.
        identities = {b.name: plugin_for(b).identity(pool.gpus > 0) for b in backends}
        candidates = sorted(
            (
                _Candidate(row, identity)
                for row in rows
                if row.pool == pool.name
                and row.ok
                and (identity := identities.get(row.backend)) is not None
            ),
            key=lambda c: order[c.row.backend],
        )
        for i, earlier in enumerate(candidates):
            for later in candidates[i + 1 :]:
                a, b = earlier.identity, later.identity
                if (a.precision, a.wire) != (b.precision, b.wire):
                    continue  # a third factor changes too: neither effect is isolated
                differing = _differing(a, b)
                if len(differing) == 1:
                    pairs.append(_pair(earlier, later, pool.name, min_effect))
                elif len(differing) == 2:
                    found = _decomposition(earlier, later, candidates, pool.name, min_effect)
                    if found is not None:
                        decompositions.append(found)
    return EngineVsServer(pairs=pairs, decompositions=decompositions)
