"""Which queued requests run together: the pure rule of the PyTorch server's scheduler.

Like Triton's dynamic batcher: with batching on, a batch takes queued requests in arrival
order while their rows fit `max_batch_size` (a request is never split); it is sent when it is
full or when the oldest request has waited `max_queue_delay`, whichever comes first, and only
when a model instance is free. With batching off, each request runs alone.
"""

from __future__ import annotations

from collections.abc import Sequence


def batch_length(queued_rows: Sequence[int], max_batch_size: int, dynamic: bool) -> int:
    """How many requests from the head of the queue form the next batch (>= 1 if any)."""
    if not queued_rows:
        return 0
    if not dynamic:
        return 1
    rows = 0
    taken = 0
    for request_rows in queued_rows:
        if taken and rows + request_rows > max_batch_size:
            break
        rows += request_rows
        taken += 1
    return taken


def batch_is_full(queued_rows: Sequence[int], max_batch_size: int) -> bool:
    """True when waiting longer cannot make the next batch larger."""
    return sum(queued_rows) >= max_batch_size


def split_rows(row_counts: Sequence[int]) -> list[tuple[int, int]]:
    """[start, stop) row ranges of each request inside its batch."""
    ranges = []
    start = 0
    for rows in row_counts:
        ranges.append((start, start + rows))
        start += rows
    return ranges
