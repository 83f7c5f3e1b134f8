"""Latency statistics (pure): exact summaries of one client, mergeable histograms for N clients.

Called by `scenarios` for every measured window, and by whoever merges the results of
several client pods: exact percentiles cannot be merged, histograms can
(docs/architecture.md §8). A histogram bucket i holds samples in [base^i, base^(i+1))
microseconds, so a percentile read back from a histogram is off by at most one bucket width,
(base - 1) x the value.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Final

import numpy as np
import numpy.typing as npt

from bakeoff_bench.results import LOW_SAMPLE_THRESHOLD, LatencyHistogram, LatencyStats

DEFAULT_BASE: Final = 1.01  # 1% resolution: finer than run-to-run noise of any real server
_PERCENTILES: Final = {"p50": 50.0, "p95": 95.0, "p99": 99.0}
# log() of 0 is -inf; nothing real answers in under a nanosecond, so clamp there.
_MIN_US: Final = 1e-3

Samples = Sequence[float] | npt.NDArray[np.float64]


def low_sample_percentiles(count: int) -> list[str]:
    """Percentiles that `count` samples cannot support (p99 needs at least 100)."""
    return [name for name, needed in LOW_SAMPLE_THRESHOLD.items() if count < needed]


def summarize_latencies(samples_s: Samples, *, base: float | None = DEFAULT_BASE) -> LatencyStats:
    """Exact statistics in milliseconds, plus the histogram (unless `base` is None)."""
    values_ms = np.asarray(samples_s, dtype=np.float64) * 1000.0
    count = int(values_ms.size)
    histogram = build_histogram(samples_s, base) if base is not None else None
    if count == 0:
        # Zeros rather than NaN (JSON has no NaN); every percentile is flagged instead.
        return LatencyStats(
            count=0,
            mean_ms=0.0,
            p50_ms=0.0,
            p95_ms=0.0,
            p99_ms=0.0,
            min_ms=0.0,
            max_ms=0.0,
            low_sample_percentiles=low_sample_percentiles(0),
            histogram=histogram,
        )
    p50, p95, p99 = np.percentile(values_ms, list(_PERCENTILES.values()), method="linear")
    return LatencyStats(
        count=count,
        mean_ms=float(values_ms.mean()),
        p50_ms=float(p50),
        p95_ms=float(p95),
        p99_ms=float(p99),
        min_ms=float(values_ms.min()),
        max_ms=float(values_ms.max()),
        low_sample_percentiles=low_sample_percentiles(count),
        histogram=histogram,
    )


def _bucket_indices(values_us: npt.NDArray[np.float64], base: float) -> npt.NDArray[np.int64]:
    values_us = np.maximum(values_us, _MIN_US)
    index = np.floor(np.log(values_us) / math.log(base)).astype(np.int64)
    # log/log rounding can put a value sitting on a bucket edge one bucket off; fix it so
    # that base^i <= value < base^(i+1) holds exactly, which the error bound relies on.
    lower = np.power(base, index.astype(np.float64))
    index -= (lower > values_us).astype(np.int64)
    upper = np.power(base, (index + 1).astype(np.float64))
    index += (upper <= values_us).astype(np.int64)
    return index


def build_histogram(samples_s: Samples, base: float = DEFAULT_BASE) -> LatencyHistogram:
    """Log buckets over microseconds: bucket i counts samples in [base^i, base^(i+1)) us."""
    if base <= 1.0:
        raise ValueError(f"histogram base must be > 1, got {base}")
    values_us = np.asarray(samples_s, dtype=np.float64) * 1e6
    if values_us.size == 0:
        return LatencyHistogram(base=base, counts={})
    keys, counts = np.unique(_bucket_indices(values_us, base), return_counts=True)
    return LatencyHistogram(
        base=base, counts={int(k): int(c) for k, c in zip(keys, counts, strict=True)}
    )


def merge_histograms(a: LatencyHistogram, b: LatencyHistogram) -> LatencyHistogram:
    """Exact merge (bucket counts add); both sides must use the same base."""
    if a.base != b.base:
        raise ValueError(f"cannot merge histograms with bases {a.base} and {b.base}")
    counts = dict(a.counts)
    for key, count in b.counts.items():
        counts[key] = counts.get(key, 0) + count
    return LatencyHistogram(base=a.base, counts=counts)


def histogram_count(h: LatencyHistogram) -> int:
    return sum(h.counts.values())


def _value_at_rank_us(
    keys: npt.NDArray[np.int64], cumulative: npt.NDArray[np.int64], rank: int, base: float
) -> float:
    # Bucket holding the rank-th smallest sample (0-based), represented by its geometric
    # middle: the true sample lies in the bucket, so the error is below one bucket width.
    bucket = int(keys[int(np.searchsorted(cumulative, rank, side="right"))])
    return float(base ** (bucket + 0.5))


def percentile_from_histogram(h: LatencyHistogram, q: float) -> float:
    """The q-th percentile (0..100) in milliseconds, with numpy's 'linear' rank rule.

    Within (base - 1) x the exact value: each of the two ranks interpolated between is
    read back from its bucket, whose width is (base - 1) x its lower edge.
    """
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile must be within [0, 100], got {q}")
    total = histogram_count(h)
    if total == 0:
        raise ValueError("percentile of an empty histogram")
    keys = np.array(sorted(h.counts), dtype=np.int64)
    cumulative = np.cumsum([h.counts[int(k)] for k in keys], dtype=np.int64)
    position = (total - 1) * q / 100.0
    lo, hi = math.floor(position), math.ceil(position)
    low = _value_at_rank_us(keys, cumulative, lo, h.base)
    high = _value_at_rank_us(keys, cumulative, hi, h.base)
    return (low + (position - lo) * (high - low)) / 1000.0


def summarize_histogram(h: LatencyHistogram) -> LatencyStats:
    """Statistics of a merged histogram (N clients): percentiles within one bucket width.

    The mean, min and max are bucket-resolution estimates too (the histogram does not keep
    the samples); exact per-client summaries stay in each client's own result.
    """
    total = histogram_count(h)
    if total == 0:
        return summarize_latencies([], base=None).model_copy(update={"histogram": h})
    keys = sorted(h.counts)
    middles_ms = {k: h.base ** (k + 0.5) / 1000.0 for k in keys}
    mean = sum(middles_ms[k] * h.counts[k] for k in keys) / total
    return LatencyStats(
        count=total,
        mean_ms=mean,
        p50_ms=percentile_from_histogram(h, 50.0),
        p95_ms=percentile_from_histogram(h, 95.0),
        p99_ms=percentile_from_histogram(h, 99.0),
        min_ms=middles_ms[keys[0]],
        max_ms=middles_ms[keys[-1]],
        low_sample_percentiles=low_sample_percentiles(total),
        histogram=h,
    )


def merge_latency_stats(parts: Sequence[LatencyStats]) -> LatencyStats:
    """Statistics of several clients' samples together (N worker processes or pods).

    One part is returned as is (exact). Several merge through their histograms: the
    percentiles are within one bucket width; count, mean, min and max stay exact.
    """
    if not parts:
        raise ValueError("nothing to merge")
    if len(parts) == 1:
        return parts[0]
    histograms = [p.histogram for p in parts]
    if any(h is None for h in histograms):
        raise ValueError("merging latency statistics needs every part's histogram")
    merged = histograms[0]
    assert merged is not None  # for mypy: checked above
    for h in histograms[1:]:
        assert h is not None
        merged = merge_histograms(merged, h)
    summary = summarize_histogram(merged)
    filled = [p for p in parts if p.count > 0]
    if not filled:
        return summary
    count = sum(p.count for p in filled)
    low, high = min(p.min_ms for p in filled), max(p.max_ms for p in filled)

    # A bucket middle can lie just outside the exact range; the true percentile cannot.
    def clamp(value: float) -> float:
        return min(max(value, low), high)

    return summary.model_copy(
        update={
            "count": count,
            "mean_ms": sum(p.mean_ms * p.count for p in filled) / count,
            "min_ms": low,
            "max_ms": high,
            "p50_ms": clamp(summary.p50_ms),
            "p95_ms": clamp(summary.p95_ms),
            "p99_ms": clamp(summary.p99_ms),
        }
    )
