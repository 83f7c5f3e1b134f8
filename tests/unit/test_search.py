"""The max-rate search: which rate runs next, and what it reports."""

from __future__ import annotations

import bench_factories as make
import pytest

from bakeoff_bench import search
from bakeoff_bench.search import Trial


@pytest.mark.parametrize(
    ("seeded", "searched", "expected"),
    [
        pytest.param([], [], 200.0, id="start-from-the-capacity"),
        pytest.param([], [Trial(200, True)], 400.0, id="start-met-double"),
        pytest.param([], [Trial(200, False)], 100.0, id="start-missed-bisect-down"),
        pytest.param([], [Trial(200, False), Trial(100, True)], 150.0, id="bisect"),
        pytest.param([Trial(50, True), Trial(150, False)], [], 100.0, id="configured-bracket"),
        pytest.param([Trial(300, True)], [], 600.0, id="configured-above-start-met"),
        pytest.param([Trial(100, True), Trial(101, False)], [], None, id="bracket-narrow"),
        pytest.param(
            [], [Trial(200, False), Trial(100, False), Trial(50, True)], 75.0, id="third-step"
        ),
        pytest.param(
            [], [Trial(200, False), Trial(100, False), Trial(50, True), Trial(75, True)], None,
            id="out-of-steps",
        ),
    ],
)  # fmt: skip
def test_next_rate(seeded: list[Trial], searched: list[Trial], expected: float | None) -> None:
    assert search.next_rate(200.0, seeded, searched, steps=4) == expected


def test_start_is_the_best_closed_loop_throughput_at_the_rate_batch_size() -> None:
    closed = [
        make.closed("single", 1, 1, rps=90.0),
        make.closed("concurrency", 1, 16, rps=310.0),
        make.closed("batch", 4, 1, rps=500.0),  # another batch size: not comparable
    ]
    start, basis = search.start_rate(closed, 1, [50.0])
    assert start == 310.0
    assert basis == "highest closed-loop throughput (concurrency b=1 c=16)"
    assert search.start_rate([], 1, [50.0, 80.0]) == (80.0, "highest configured requestsPerSecond")
    with pytest.raises(ValueError, match="no closed-loop throughput and no configured rate"):
        search.start_rate([], 1, [])


async def test_search_runs_bounded_steps_and_reports_the_bracket() -> None:
    capacity = 130.0  # the fake backend meets the SLO up to this rate
    ran: list[float] = []

    async def run(rate: float) -> object:
        ran.append(rate)
        return make.open_loop(rate, met=rate <= capacity)

    result = await search.search_max_rate(
        run,  # type: ignore[arg-type]
        slo_p99_ms=50.0,
        start=200.0,
        start_basis="b",
        seeded=[make.open_loop(50.0, met=True)],
        steps=4,
    )
    assert ran == [200.0, 125.0, 162.5, 143.75]
    assert result.requests_per_s == 125.0
    assert result.inferences_per_s == 125.0
    assert [t.open_loop.requested_requests_per_s for t in result.trials if t.open_loop] == ran
    assert result.message == "between 125.0 (met) and 143.8 req/s (missed)"


async def test_search_where_nothing_meets_the_slo_says_so() -> None:
    async def run(rate: float) -> object:
        return make.open_loop(rate, met=False)

    result = await search.search_max_rate(
        run,  # type: ignore[arg-type]
        slo_p99_ms=5.0, start=100.0, start_basis="b", seeded=[], steps=3,
    )  # fmt: skip
    assert result.requests_per_s is None and result.inferences_per_s is None
    assert len(result.trials) == 3
    assert "no rate tried met p99 <= 5 ms" in result.message
