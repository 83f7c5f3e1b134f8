"""Latency statistics: exact summaries, and histograms that merge exactly across clients."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bakeoff_bench import stats
from bakeoff_bench.results import LatencyHistogram

# Latencies from 10 us to 10 s: everything a real inference server can answer in.
latency_s = st.floats(min_value=1e-5, max_value=10.0, allow_nan=False, allow_infinity=False)
latency_lists = st.lists(latency_s, min_size=1, max_size=300)
bases = st.sampled_from([1.001, 1.01, 1.05, 1.2])


def test_summary_matches_numpy_linear_percentiles_in_ms() -> None:
    samples = [0.010, 0.012, 0.011, 0.030, 0.009]
    summary = stats.summarize_latencies(samples)
    ms = np.array(samples) * 1000
    assert summary.count == 5
    assert summary.mean_ms == pytest.approx(ms.mean())
    assert summary.p50_ms == pytest.approx(11.0)
    assert summary.p95_ms == pytest.approx(np.percentile(ms, 95, method="linear"))
    assert summary.p99_ms == pytest.approx(np.percentile(ms, 99, method="linear"))
    assert summary.min_ms == pytest.approx(9.0)
    assert summary.max_ms == pytest.approx(30.0)


def test_linear_interpolation_between_two_samples() -> None:
    summary = stats.summarize_latencies([0.001, 0.002])
    assert summary.p50_ms == pytest.approx(1.5)
    assert summary.p99_ms == pytest.approx(1.99)


@pytest.mark.parametrize(
    ("count", "flagged"),
    [
        (0, ["p50", "p95", "p99"]),
        (9, ["p50", "p95", "p99"]),
        (10, ["p95", "p99"]),
        (19, ["p95", "p99"]),
        (20, ["p99"]),
        (99, ["p99"]),
        (100, []),
    ],
    ids=lambda v: str(v),
)
def test_percentiles_with_too_few_samples_are_flagged(count: int, flagged: list[str]) -> None:
    summary = stats.summarize_latencies([0.001] * count)
    assert summary.count == count
    assert summary.low_sample_percentiles == flagged


def test_empty_summary_is_zeros_not_nan() -> None:
    summary = stats.summarize_latencies([])
    assert summary.count == 0
    assert summary.p99_ms == 0.0
    assert summary.histogram == LatencyHistogram(base=stats.DEFAULT_BASE, counts={})


def test_summary_carries_its_histogram() -> None:
    samples = [0.001, 0.002, 0.004]
    summary = stats.summarize_latencies(samples)
    assert summary.histogram == stats.build_histogram(samples)
    assert stats.summarize_latencies(samples, base=None).histogram is None


def test_bucket_bounds_hold_for_every_sample() -> None:
    # base^i <= us < base^(i+1), also on exact bucket edges where log/log rounds badly.
    base = 1.01
    edges_us = [base**i for i in range(-50, 2000, 37)]
    h = stats.build_histogram([us / 1e6 for us in edges_us], base)
    for us in edges_us:
        index = next(iter(stats.build_histogram([us / 1e6], base).counts))
        assert base**index <= us * (1 + 1e-12)
        assert us < base ** (index + 1) * (1 + 1e-12)
    assert stats.histogram_count(h) == len(edges_us)


def test_histogram_is_in_microseconds() -> None:
    h = stats.build_histogram([0.001], base=10.0)  # 1 ms = 1000 us = 10^3
    assert h.counts == {3: 1}


def test_histogram_round_trips_through_json() -> None:
    h = stats.build_histogram([0.001, 0.0011, 0.5, 2.0])
    assert LatencyHistogram.model_validate_json(h.model_dump_json(by_alias=True)) == h


def test_merging_different_bases_is_refused() -> None:
    with pytest.raises(ValueError, match="bases"):
        stats.merge_histograms(
            stats.build_histogram([0.001], 1.01), stats.build_histogram([0.001], 1.02)
        )


def test_percentile_of_empty_histogram_is_an_error() -> None:
    with pytest.raises(ValueError, match="empty"):
        stats.percentile_from_histogram(LatencyHistogram(base=1.01, counts={}), 50)


def _exact_bounds_ms(samples_s: list[float], q: float) -> tuple[float, float]:
    """numpy's exact 'linear' percentile and the larger of the two samples it interpolates."""
    ordered = np.sort(np.array(samples_s) * 1000.0)
    position = (len(ordered) - 1) * q / 100.0
    exact = float(np.percentile(ordered, q, method="linear"))
    return exact, float(ordered[math.ceil(position)])


@settings(max_examples=300, deadline=None)
@given(samples=latency_lists, q=st.floats(min_value=0, max_value=100), base=bases)
def test_histogram_percentile_is_within_one_bucket_of_numpy(
    samples: list[float], q: float, base: float
) -> None:
    h = stats.build_histogram(samples, base)
    estimate = stats.percentile_from_histogram(h, q)
    exact, upper_sample = _exact_bounds_ms(samples, q)
    # Each interpolated rank is read from its own bucket: off by < (base-1) x that sample.
    tolerance = (base - 1.0) * upper_sample + 1e-9 * upper_sample
    assert abs(estimate - exact) <= tolerance


@settings(max_examples=200, deadline=None)
@given(a=latency_lists, b=latency_lists, c=latency_lists)
def test_merge_is_associative_and_commutative(
    a: list[float], b: list[float], c: list[float]
) -> None:
    ha, hb, hc = (stats.build_histogram(x) for x in (a, b, c))
    assert stats.merge_histograms(ha, hb) == stats.merge_histograms(hb, ha)
    assert stats.merge_histograms(stats.merge_histograms(ha, hb), hc) == stats.merge_histograms(
        ha, stats.merge_histograms(hb, hc)
    )


@settings(max_examples=200, deadline=None)
@given(parts=st.lists(latency_lists, min_size=1, max_size=5))
def test_merge_equals_histogram_of_concatenation(parts: list[list[float]]) -> None:
    merged = stats.build_histogram(parts[0])
    for part in parts[1:]:
        merged = stats.merge_histograms(merged, stats.build_histogram(part))
    everything = [x for part in parts for x in part]
    assert merged == stats.build_histogram(everything)
    assert stats.histogram_count(merged) == len(everything)


def test_merging_does_not_mutate_inputs() -> None:
    a = stats.build_histogram([0.001])
    b = stats.build_histogram([0.001, 0.002])
    before = dict(a.counts)
    stats.merge_histograms(a, b)
    assert a.counts == before


def test_summary_of_merged_histograms_of_two_clients() -> None:
    rng = np.random.default_rng(0)
    client_a = rng.lognormal(mean=-4.5, sigma=0.3, size=700)
    client_b = rng.lognormal(mean=-4.0, sigma=0.2, size=500)
    merged = stats.merge_histograms(
        stats.build_histogram(client_a), stats.build_histogram(client_b)
    )
    summary = stats.summarize_histogram(merged)
    exact = stats.summarize_latencies(np.concatenate([client_a, client_b]))
    assert summary.count == 1200
    assert summary.low_sample_percentiles == []
    for name in ("p50_ms", "p95_ms", "p99_ms", "mean_ms", "min_ms", "max_ms"):
        assert getattr(summary, name) == pytest.approx(getattr(exact, name), rel=0.01)


def test_merging_one_part_is_exact_and_several_parts_keep_exact_count_mean_min_max() -> None:
    a = stats.summarize_latencies([0.010, 0.011, 0.012])
    b = stats.summarize_latencies([0.020, 0.030])
    assert stats.merge_latency_stats([a]) is a
    merged = stats.merge_latency_stats([a, b, stats.summarize_latencies([])])
    assert merged.count == 5
    assert merged.mean_ms == pytest.approx((10 + 11 + 12 + 20 + 30) / 5)
    assert (merged.min_ms, merged.max_ms) == pytest.approx((10.0, 30.0))
    assert merged.p50_ms == pytest.approx(12.0, rel=0.01)
    assert merged.low_sample_percentiles == ["p50", "p95", "p99"]
    # A bucket middle above the exact maximum is clamped to it.
    assert merged.p99_ms <= merged.max_ms


def test_merging_needs_histograms() -> None:
    bare = stats.summarize_latencies([0.01], base=None)
    with pytest.raises(ValueError, match="histogram"):
        stats.merge_latency_stats([bare, bare])
    with pytest.raises(ValueError, match="nothing to merge"):
        stats.merge_latency_stats([])
