"""How N clients share one scenario's load (pure).

Closed loop: the concurrency is split as evenly as it goes (8 over 3 clients: 3, 3, 2),
and the requests in proportion to each client's concurrency, so that every client runs
about as long; a client whose share is 0 sends nothing in that scenario (the single-image
scenario, concurrency 1, is client 0's alone). Open loop: client c of C, with W processes
each, sends the global shares c*W .. c*W+W-1 of C*W (`timers`): a Poisson rate becomes C*W
independent Poisson streams of rate/(C*W), whose union is the requested process.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


def split(total: int, index: int, clients: int) -> int:
    """Client `index`'s part of `total`: the first `total % clients` clients take one more."""
    if not 0 <= index < clients:
        raise ValueError(f"client {index} is not one of {clients}")
    return total // clients + (1 if index < total % clients else 0)


def weighted_split(total: int, weights: Sequence[int], index: int) -> int:
    """Part `index` of `total` in proportion to `weights`; the parts add up to `total`
    (largest remainders get the leftover units, ties to the lower index)."""
    weight_sum = sum(weights)
    if weight_sum <= 0:
        raise ValueError("weights must add up to more than 0")
    exact = [total * w / weight_sum for w in weights]
    parts = [int(x) for x in exact]
    order = sorted(range(len(weights)), key=lambda i: (-(exact[i] - parts[i]), i))
    for i in order[: total - sum(parts)]:
        parts[i] += 1
    return parts[index]


@dataclass(frozen=True)
class ClosedLoopShare:
    concurrency: int  # 0: this client sits the scenario out
    requests: int
    warmup: int


def closed_loop_share(
    concurrency: int, requests: int, warmup: int, index: int, clients: int
) -> ClosedLoopShare:
    shares = [split(concurrency, i, clients) for i in range(clients)]
    mine = shares[index]
    if mine == 0:
        return ClosedLoopShare(0, 0, 0)
    return ClosedLoopShare(
        mine, weighted_split(requests, shares, index), weighted_split(warmup, shares, index)
    )


def rate_shares(index: int, clients: int, workers: int) -> tuple[int, int]:
    """(first global share, global share count) of client `index`'s `workers` processes."""
    if not 0 <= index < clients:
        raise ValueError(f"client {index} is not one of {clients}")
    return index * workers, clients * workers
