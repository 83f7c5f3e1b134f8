"""Intervals on the headline numbers: they cover the truth as often as they claim to."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bakeoff_bench import intervals, stats
from bakeoff_bench.intervals import Interval

TRIALS = 400


def coverage(draw: np.random.Generator, sample: int, q: float, truth_ms: float, kind: str) -> float:
    hits = 0
    for _ in range(TRIALS):
        values_s = draw.lognormal(mean=math.log(0.010), sigma=0.5, size=sample)
        summary = stats.summarize_latencies(values_s)
        if kind == "quantile":
            found = intervals.quantile_interval(summary.histogram, q, 0.95)
        else:
            found = intervals.mean_interval(summary.histogram, summary.mean_ms, 0.95)
        assert found is not None
        hits += found.low <= truth_ms <= found.high
    return hits / TRIALS


# Lognormal(log 10 ms, 0.5): median 10 ms, p99 10 x exp(0.5 x 2.326) ms, mean 10 x exp(0.125).
MEDIAN = 10.0
P99 = 10.0 * math.exp(0.5 * 2.3263478740408408)
MEAN = 10.0 * math.exp(0.125)


@pytest.mark.parametrize(
    ("sample", "q", "truth", "kind"),
    [
        (30, 0.5, MEDIAN, "quantile"),
        (200, 0.5, MEDIAN, "quantile"),
        (1000, 0.99, P99, "quantile"),
        (8000, 0.5, MEDIAN, "quantile"),  # the normal approximation of the ranks
        (200, 0.5, MEAN, "mean"),
    ],
    ids=["p50-n30", "p50-n200", "p99-n1000", "p50-n8000", "mean-n200"],
)
def test_95_percent_intervals_cover_the_truth_about_95_percent_of_the_time(
    sample: int, q: float, truth: float, kind: str
) -> None:
    rate = coverage(np.random.default_rng(sample), sample, q, truth, kind)
    # Order-statistic intervals are conservative (discrete ranks) and 1% buckets widen them
    # a little: at least nominal minus sampling noise, not far above it.
    assert 0.92 <= rate <= 0.995, rate


def test_ranks_of_the_median_of_100_match_the_binomial_table() -> None:
    # The textbook 95% interval for the median of 100: the 40th and 61st order statistics.
    assert intervals.quantile_ranks(100, 0.5, 0.95) == (40, 61)


def test_few_samples_cannot_bound_a_far_tail() -> None:
    assert intervals.quantile_ranks(30, 0.99, 0.95) == (28, 30)  # up to the sample's maximum


def test_no_samples_no_interval() -> None:
    assert intervals.quantile_interval(stats.build_histogram([]), 0.5, 0.95) is None
    assert intervals.quantile_interval(None, 0.5, 0.95) is None


def test_a_higher_confidence_gives_a_wider_interval() -> None:
    values = np.random.default_rng(1).lognormal(math.log(0.01), 0.5, 500)
    histogram = stats.build_histogram(values)
    narrow = intervals.quantile_interval(histogram, 0.5, 0.8)
    wide = intervals.quantile_interval(histogram, 0.5, 0.99)
    assert narrow is not None and wide is not None
    assert wide.low < narrow.low and wide.high > narrow.high


def test_t_scores_match_student_tables() -> None:
    assert intervals.t_score(0.95, 1) == pytest.approx(12.706, rel=0.001)
    assert intervals.t_score(0.95, 2) == pytest.approx(4.303, rel=0.001)
    assert intervals.t_score(0.95, 3) == pytest.approx(3.182, rel=0.01)
    assert intervals.t_score(0.95, 9) == pytest.approx(2.262, rel=0.01)
    assert intervals.t_score(0.95, 1000) == pytest.approx(1.962, rel=0.001)


def test_interval_arithmetic() -> None:
    throughput = Interval(90.0, 110.0)
    cost = throughput.inverted(1.0)
    assert cost.low == pytest.approx(1 / 110) and cost.high == pytest.approx(1 / 90)
    assert Interval(1, 2).overlaps(Interval(2, 3)) and not Interval(1, 2).overlaps(Interval(3, 4))
    assert Interval(9, 11).relative_half_width(10) == pytest.approx(0.1)


def test_samples_to_separate_grow_with_the_square_of_the_noise_to_gap_ratio() -> None:
    # Half-widths of 4% cannot separate a 2% gap: they must shrink to 1%, 16x the samples.
    assert intervals.samples_to_separate(100, 0.04, 0.02) == 1600
    assert intervals.samples_to_separate(100, 0.005, 0.02) == 100
    assert intervals.samples_to_separate(100, 0.04, 0.0) is None
