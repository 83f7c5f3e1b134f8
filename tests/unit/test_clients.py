"""Several clients sharing one run: how load is split (`shares`, `timers`), how their results
merge (`merge`: exact against the pooled raw samples), and the ConfigMap barrier's reading
of who has arrived (`barrier`)."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest
from bench_factories import closed, server
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from bakeoff_bench import __main__ as bench_main
from bakeoff_bench import barrier, merge, publish, shares, stats, timers
from bakeoff_bench.config import Arrival, BenchConfig, RateScenario, SteadyState, Target
from bakeoff_bench.results import CellResult, ClientShareResult, Environment, FlagCode, ServerInfo

# --- splitting the load ---------------------------------------------------------------


@given(total=st.integers(0, 500), clients=st.integers(1, 16))
def test_split_parts_add_up_and_differ_by_one_at_most(total: int, clients: int) -> None:
    parts = [shares.split(total, i, clients) for i in range(clients)]
    assert sum(parts) == total and max(parts) - min(parts) <= 1
    assert parts == sorted(parts, reverse=True)  # client 0 always has the largest part


@given(total=st.integers(0, 10_000), weights=st.lists(st.integers(0, 64), min_size=1, max_size=16))
def test_weighted_parts_add_up_and_follow_the_weights(total: int, weights: list[int]) -> None:
    if sum(weights) == 0:
        return
    parts = [shares.weighted_split(total, weights, i) for i in range(len(weights))]
    assert sum(parts) == total
    for part, weight in zip(parts, weights, strict=True):
        assert abs(part - total * weight / sum(weights)) < 1.0


def test_closed_loop_shares_split_concurrency_and_requests_in_proportion() -> None:
    three = [shares.closed_loop_share(8, 300, 30, i, 3) for i in range(3)]
    assert [s.concurrency for s in three] == [3, 3, 2]
    assert [s.requests for s in three] == [113, 112, 75]  # 300 x 3/8, 3/8, 2/8
    assert sum(s.warmup for s in three) == 30
    # The single-image scenario (concurrency 1) is client 0's alone.
    single = [shares.closed_loop_share(1, 200, 20, i, 3) for i in range(3)]
    assert [(s.concurrency, s.requests) for s in single] == [(1, 200), (0, 0), (0, 0)]


def test_client_rate_shares_are_global_shares_of_every_process() -> None:
    assert [shares.rate_shares(i, 3, 2) for i in range(3)] == [(0, 6), (2, 6), (4, 6)]
    with pytest.raises(ValueError, match="client 3 is not one of 3"):
        shares.rate_shares(3, 3, 1)


def test_merged_poisson_shares_are_the_requested_poisson_process() -> None:
    """The union of 4 clients x 2 processes' schedules: rate and exponential gaps as asked."""
    rate, duration = 400.0, 60.0
    first = [shares.rate_shares(c, 4, 2) for c in range(4)]
    times = np.sort(
        np.concatenate(
            [
                timers.send_times(
                    Arrival.POISSON, rate, duration, seed=7, worker=start + w, workers=total
                )
                for start, total in first
                for w in range(2)
            ]
        )
    )
    assert abs(len(times) / duration - rate) < 4 * np.sqrt(rate / duration)
    gaps = np.sort(np.diff(times))
    # Kolmogorov-Smirnov against Exp(rate): the union is Poisson again (1% level).
    expected = 1 - np.exp(-rate * gaps)
    n = len(gaps)
    distance = max(np.max(np.arange(1, n + 1) / n - expected), np.max(expected - np.arange(n) / n))
    assert distance < 1.63 / np.sqrt(n)
    # And each share is not the same stream shifted: the shares are independent.
    assert len(np.unique(np.round(times, 9))) == len(times)


# --- merging ----------------------------------------------------------------------------


def _share_result(samples_s: np.ndarray, index: int, concurrency: int) -> object:
    summary = stats.summarize_latencies(samples_s)
    duration = 10.0
    return closed(
        "concurrency", 1, 8, rps=len(samples_s) / duration, count=len(samples_s),
        latency=summary, duration_s=duration,
        clients=[ClientShareResult(
            index=index, concurrency=concurrency, requests=len(samples_s),
            requests_per_s=len(samples_s) / duration, p50_ms=summary.p50_ms,
            p99_ms=summary.p99_ms,
        )],
    )  # fmt: skip


def _cell(*results: object, index: int = 0) -> CellResult:
    return CellResult(
        suite="s", backend="b", pool="p",
        started_at=datetime(2026, 12, 3, 12, 0, index, tzinfo=UTC),
        finished_at=datetime(2026, 12, 3, 12, 1, index, tzinfo=UTC),
        server=ServerInfo(name="x", version="1"),
        environment=Environment(hostname="h", client_cpu="cpu", client_cores=2, python="3.11"),
        seed=0,
        concurrency_sweep=list(results),  # type: ignore[arg-type]
    )  # fmt: skip


def test_merged_latency_equals_the_pooled_samples_histogram() -> None:
    rng = np.random.default_rng(3)
    pieces = [rng.lognormal(np.log(0.004 + 0.001 * i), 0.3, 400 + 100 * i) for i in range(3)]
    parts = [_cell(_share_result(p, i, [3, 3, 2][i]), index=i) for i, p in enumerate(pieces)]
    merged = merge.merge_cells(parts, metrics_expected=False)
    [result] = merged.concurrency_sweep
    pooled = stats.summarize_histogram(stats.build_histogram(np.concatenate(pieces)))
    assert result.latency.histogram == pooled.histogram  # exact: bucket counts add
    assert result.latency.count == pooled.count == sum(len(p) for p in pieces)
    for name in ("p50_ms", "p95_ms", "p99_ms"):
        assert getattr(result.latency, name) == pytest.approx(getattr(pooled, name))
    assert result.latency.mean_ms == pytest.approx(np.concatenate(pieces).mean() * 1000)
    assert result.latency.min_ms == pytest.approx(min(p.min() for p in pieces) * 1000)
    assert result.requests == sum(len(p) for p in pieces)
    assert result.requests_per_s == pytest.approx(sum(len(p) / 10.0 for p in pieces))
    assert [c.index for c in result.clients] == [0, 1, 2]
    assert result.concurrency == 8 and merged.started_at == parts[0].started_at
    assert merged.finished_at == parts[2].finished_at
    assert merged.notes[-1] == "measured by 3 clients, merged"


def test_a_slow_client_is_flagged_not_hidden() -> None:
    rng = np.random.default_rng(4)
    fast = [rng.normal(0.010, 0.0005, 300).clip(0.001) for _ in range(2)]
    slow = rng.normal(0.030, 0.001, 300).clip(0.001)
    parts = [
        _cell(_share_result(samples, i, 2), index=i) for i, samples in enumerate([*fast, slow])
    ]
    [result] = merge.merge_cells(parts, metrics_expected=False).concurrency_sweep
    [flag] = [f for f in result.flags if f.code is FlagCode.CLIENTS_DISAGREE]
    assert flag.message.startswith("client 2 measured p50 29.")
    assert "against the clients' median 10.0" in flag.message


def test_agreeing_clients_raise_no_flag() -> None:
    rng = np.random.default_rng(5)
    parts = [
        _cell(_share_result(rng.normal(0.010, 0.0005, 300).clip(0.001), i, 2), index=i)
        for i in range(3)
    ]
    [result] = merge.merge_cells(parts, metrics_expected=False).concurrency_sweep
    assert FlagCode.CLIENTS_DISAGREE not in {f.code for f in result.flags}


def test_server_times_and_lead_only_numbers_come_from_client_0() -> None:
    samples = np.random.default_rng(6).normal(0.012, 0.001, 300).clip(0.001)
    measured = stats.summarize_latencies(samples)
    lead = _cell(closed("concurrency", 1, 4, latency=measured, server=server(request_ms=7.0)))
    other = _cell(closed("concurrency", 1, 4, latency=measured), index=1)
    [result] = merge.merge_cells([lead, other], metrics_expected=True).concurrency_sweep
    assert result.server is not None and result.server.request_ms == 7.0
    assert FlagCode.NO_SERVER_TIMES not in {f.code for f in result.flags}


def test_results_of_different_cells_do_not_merge() -> None:
    other = _cell().model_copy(update={"backend": "c"})
    with pytest.raises(merge.MergeError, match="different cells"):
        merge.merge_cells([_cell(), other], metrics_expected=False)


# --- the configuration ------------------------------------------------------------------


def _config(**changes: object) -> BenchConfig:
    return BenchConfig.model_validate(
        {"suite": "s", "backend": "b", "pool": "p",
         "target": Target(http_url="http://x:8000", model_name="m")} | changes
    )  # fmt: skip


def test_clients_refuse_what_each_client_would_decide_alone() -> None:
    assert _config(clients=3, client_index=2).clients == 3
    with pytest.raises(ValidationError, match="clientIndex 3 is not one of 3"):
        _config(clients=3, client_index=3)
    with pytest.raises(ValidationError, match="steadyState with clients > 1"):
        _config(clients=2, steady_state=SteadyState(window_requests=100))
    search = RateScenario(slo_p99_ms=50, max_rate_search={}, requests_per_second=[10])
    with pytest.raises(ValidationError, match="max-rate search"):
        _config(clients=2, rate=search)


# --- the ConfigMap barrier's reading ----------------------------------------------------


def test_barrier_opens_when_every_client_reached_the_step() -> None:
    data = {"0": "3 window edge 2", "1": "3 window edge 2", "2": "2 window edge 1"}
    assert barrier.arrived(data, 3, 3) == (False, None)
    assert barrier.missing(data, 3, 3) == [2]
    data["2"] = "3 window edge 2"
    assert barrier.arrived(data, 3, 3) == (True, None)
    assert barrier.arrived({}, 2, 1) == (False, None)


def test_the_barrier_sums_every_clients_answers_for_the_lead_scrape() -> None:
    data = {
        "0": "4 window edge 3 #1210",
        "1": "4 window edge 3 #1200",
        "2": "4 window edge 3 #1190",
    }
    assert barrier.arrived(data, 3, 4) == (True, None)
    assert barrier.answered_total(data, 3) == 3600
    assert barrier.answered_total({"0": "1 set up #0", "1": "1 set up"}, 2) == 0


def test_a_failed_client_stops_the_others_with_its_reason() -> None:
    data = {"0": "2 set up", "1": "failed: ConnectionError: refused"}
    done, failure = barrier.arrived(data, 2, 2)
    assert not done and failure == "client pod 1 failed: ConnectionError: refused"


# --- one pod of an Indexed Job ----------------------------------------------------------


def test_a_single_client_needs_no_job_index_and_no_barrier() -> None:
    config, coordination = bench_main._client_of_a_job(_config(), env={})
    assert config.client_index == 0 and isinstance(coordination, barrier.Solo)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "JOB_COMPLETION_INDEX and BAKEOFF_BARRIER_CONFIGMAP must be set"),
        ({"JOB_COMPLETION_INDEX": "1"}, "BAKEOFF_BARRIER_CONFIGMAP must be set"),
        ({"JOB_COMPLETION_INDEX": "x", "BAKEOFF_BARRIER_CONFIGMAP": "b"}, "must be set"),
        ({"JOB_COMPLETION_INDEX": "3", "BAKEOFF_BARRIER_CONFIGMAP": "b"}, "clientIndex 3"),
    ],
)
def test_a_client_pod_without_its_index_or_barrier_is_refused(
    env: dict[str, str], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        bench_main._client_of_a_job(_config(clients=3), env=env)


def test_a_client_pod_outside_a_pod_says_where_it_must_run() -> None:
    env = {"JOB_COMPLETION_INDEX": "2", "BAKEOFF_BARRIER_CONFIGMAP": "b"}
    with pytest.raises(publish.PublishError, match="works inside the benchmark Job only"):
        bench_main._client_of_a_job(_config(clients=3), env=env)
