"""How sure a number is (pure): intervals for the headline numbers at a confidence level.

Called by the verdict (`bakeoff.analysis`) for every row and by `bakeoff compare`. Everything
works from what a result keeps: its latency histogram (1% buckets, exact counts), its mean
and, where the scenario was measured in windows, the windows.

- Quantiles (p50, p99): the distribution-free order-statistic interval. For n samples the
  number of them below the true q-quantile is Binomial(n, q); the ranks l and u that this
  count falls between with the asked probability bound the quantile, whatever the
  distribution. The values at those ranks are read from the histogram (the lower bucket
  edge for l, the upper for u: at most 1% wider than exact).
- The mean: the normal interval, mean +- z x sd / sqrt(n), sd from the histogram.
- Throughput of a closed loop: from its steady-state windows when there are at least
  three (Student's t over the windows' rates: run-to-run drift included), else through
  Little's law (concurrency = throughput x mean latency, so throughput carries the mean
  latency's relative uncertainty).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Final

from bakeoff_bench.results import LatencyHistogram, ScenarioResult

# Above this many samples the binomial ranks come from the normal approximation (with the
# continuity correction); below, from the exact binomial distribution.
EXACT_BINOMIAL_UP_TO: Final = 5000
MIN_WINDOWS: Final = 3


@dataclass(frozen=True)
class Interval:
    low: float
    high: float

    def overlaps(self, other: Interval) -> bool:
        return self.low <= other.high and other.low <= self.high

    def relative_half_width(self, point: float) -> float:
        return (self.high - self.low) / 2 / point if point > 0 else math.inf

    def scaled(self, factor: float) -> Interval:
        return Interval(self.low * factor, self.high * factor)

    def inverted(self, numerator: float) -> Interval:
        """The interval of numerator / x (cost per inference from throughput)."""
        low = numerator / self.high if self.high > 0 else math.inf
        high = numerator / self.low if self.low > 0 else math.inf
        return Interval(low, high)


def z_score(confidence: float) -> float:
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def t_score(confidence: float, dof: int) -> float:
    """Student's t quantile: exact for 1 and 2 degrees of freedom, the Cornish-Fisher
    expansion above (within 1% from 3 on)."""
    p = 0.5 + confidence / 2
    if dof <= 0:
        return math.inf
    if dof == 1:
        return math.tan(math.pi * (p - 0.5))
    if dof == 2:
        return (2 * p - 1) / math.sqrt(2 * p * (1 - p))
    z = z_score(confidence)
    v = float(dof)
    return (
        z
        + (z**3 + z) / (4 * v)
        + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * v**2)
        + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * v**3)
    )


def _binomial_cdf(n: int, p: float) -> list[float]:
    """P(Binomial(n, p) <= k) for k = 0..n, from the pmf's recurrence in log space."""
    log_ratio = math.log(p) - math.log1p(-p)
    log_pmf = n * math.log1p(-p)
    cdf, total = [], 0.0
    for k in range(n + 1):
        total += math.exp(log_pmf)
        cdf.append(min(total, 1.0))
        log_pmf += math.log((n - k) / (k + 1)) + log_ratio if k < n else 0.0
    return cdf


def quantile_ranks(n: int, q: float, confidence: float) -> tuple[int, int]:
    """1-based ranks (l, u) with P(X_(l) <= true q-quantile <= X_(u)) >= confidence, clamped
    to [1, n] (a few samples cannot bound a far tail: the interval is then the whole sample
    range, which says so).

    With B ~ Binomial(n, q) the count of samples below the quantile, the coverage is
    P(l <= B <= u - 1): l - 1 is the largest k with P(B <= k) <= alpha / 2, u - 1 the
    smallest k with P(B <= k) >= 1 - alpha / 2.
    """
    alpha = 1 - confidence
    if n > EXACT_BINOMIAL_UP_TO:
        spread = z_score(confidence) * math.sqrt(n * q * (1 - q))
        return max(1, math.floor(n * q - spread)), min(n, math.ceil(n * q + spread) + 1)
    cdf = _binomial_cdf(n, q)
    below = [k for k, c in enumerate(cdf) if c <= alpha / 2]
    low = below[-1] + 1 if below else 1
    high = next((k + 1 for k, c in enumerate(cdf) if c >= 1 - alpha / 2), n)
    return max(1, min(low, n)), max(1, min(high, n))


def _ranked_edges(histogram: LatencyHistogram) -> list[tuple[int, int]]:
    return sorted(histogram.counts.items())


def _value_at_rank_ms(histogram: LatencyHistogram, rank: int, upper: bool) -> float:
    seen = 0
    for index, count in _ranked_edges(histogram):
        seen += count
        if seen >= rank:
            edge = index + 1 if upper else index
            return float(histogram.base**edge) / 1000.0
    index = max(histogram.counts)
    return float(histogram.base ** (index + 1)) / 1000.0


def histogram_count(histogram: LatencyHistogram) -> int:
    return sum(histogram.counts.values())


def quantile_interval(
    histogram: LatencyHistogram | None, q: float, confidence: float
) -> Interval | None:
    """The order-statistic interval of the q-quantile, in milliseconds (None: no samples)."""
    if histogram is None:
        return None
    n = histogram_count(histogram)
    if n == 0:
        return None
    low_rank, high_rank = quantile_ranks(n, q, confidence)
    return Interval(
        _value_at_rank_ms(histogram, low_rank, upper=False),
        _value_at_rank_ms(histogram, high_rank, upper=True),
    )


def histogram_sd_ms(histogram: LatencyHistogram) -> float:
    """The standard deviation of the samples, from the buckets' geometric midpoints."""
    n = histogram_count(histogram)
    if n < 2:
        return 0.0
    mids = {i: histogram.base ** (i + 0.5) / 1000.0 for i in histogram.counts}
    mean = sum(mids[i] * c for i, c in histogram.counts.items()) / n
    square = sum(c * (mids[i] - mean) ** 2 for i, c in histogram.counts.items())
    return math.sqrt(square / (n - 1))


def mean_interval(
    histogram: LatencyHistogram | None, mean_ms: float, confidence: float
) -> Interval | None:
    if histogram is None:
        return None
    n = histogram_count(histogram)
    if n < 2:
        return None
    half = z_score(confidence) * histogram_sd_ms(histogram) / math.sqrt(n)
    return Interval(max(0.0, mean_ms - half), mean_ms + half)


def spread_interval(values: Sequence[float], confidence: float) -> Interval | None:
    """Student's t interval of the mean of `values` (None for fewer than two)."""
    if len(values) < 2:
        return None
    mean = sum(values) / len(values)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    half = t_score(confidence, len(values) - 1) * sd / math.sqrt(len(values))
    return Interval(max(0.0, mean - half), mean + half)


def throughput_interval(scenario: ScenarioResult, confidence: float) -> Interval | None:
    """Inferences per second of a closed-loop scenario (see the module's note)."""
    rate = scenario.inferences_per_s
    if rate <= 0:
        return None
    steady = scenario.steady_state
    if steady is not None:
        accepted = [w for w in steady.windows if w.accepted]
        if len(accepted) >= MIN_WINDOWS:
            per_window = [w.requests_per_s * scenario.batch_size for w in accepted]
            interval = spread_interval(per_window, confidence)
            if interval is not None:
                # The windows' mean is not quite the scenario's rate: centre on the latter.
                average = sum(per_window) / len(per_window)
                return interval.scaled(rate / average) if average > 0 else None
    latency = scenario.latency
    around_mean = mean_interval(latency.histogram, latency.mean_ms, confidence)
    if around_mean is None or latency.mean_ms <= 0:
        return None
    relative = around_mean.relative_half_width(latency.mean_ms)
    if relative >= 1:
        return Interval(0.0, math.inf)
    return Interval(rate / (1 + relative), rate / (1 - relative))


def samples_to_separate(count: int, relative_half_width: float, relative_gap: float) -> int | None:
    """About how many samples each would need for intervals of this kind to stop overlapping
    at this gap (half-widths shrink with the square root of the count)."""
    if relative_gap <= 0 or count <= 0:
        return None
    wanted = relative_gap / 2
    if relative_half_width <= wanted:
        return count
    return math.ceil(count * (relative_half_width / wanted) ** 2)
