"""Closed-loop saturation from several client processes: what a server does at most.

One client process sends a 19 MB request (batch 32, FP32 input) at a few GB/s; a server with
several workers on a GPU can take more than that. `saturate` spawns `clients` processes,
each running the load generator's own `OipClient` with `in_flight` requests outstanding.
Once every process has started and connected (spawning imports for seconds), the parent
sends one wall-clock start (one machine: one clock); each counts the images answered inside
the same measured window after a warm-up. A failed request fails the measurement.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import statistics
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Final, cast

from bakeoff_bench import client as oip
from bakeoff_bench import payloads

START_LEAD_S: Final = 0.2  # every process has received the start time by then
READY_TIMEOUT_S: Final = 120.0


@dataclass(frozen=True)
class Saturation:
    clients: int
    in_flight: int  # per client process
    images_per_s: float
    requests: int
    p50_ms: float


@dataclass(frozen=True)
class _Job:
    http_url: str
    model_name: str
    payload: payloads.Payload
    in_flight: int
    warmup_s: float
    seconds: float


async def _drive(job: _Job, conn: Connection) -> tuple[int, int, list[float]]:
    """(requests, images, latencies in ms) answered inside the window."""
    async with oip.make_session(job.in_flight, 120.0) as session:
        client = oip.OipClient(session, job.http_url, job.model_name)
        conn.send(("ready", None))
        start_epoch = await asyncio.to_thread(conn.recv)
        begin = time.perf_counter() + (start_epoch - time.time())
        window = (begin + job.warmup_s, begin + job.warmup_s + job.seconds)
        await asyncio.sleep(max(0.0, begin - time.perf_counter()))
        latencies: list[float] = []

        async def loop() -> None:
            while time.perf_counter() < window[1]:
                latency, ok, error = await client.infer(job.payload)
                if not ok:
                    raise oip.BenchError(f"request failed: {error}")
                if window[0] <= time.perf_counter() <= window[1]:
                    latencies.append(latency * 1000.0)

        await asyncio.gather(*(loop() for _ in range(job.in_flight)))
        return len(latencies), len(latencies) * job.payload.batch_size, latencies


def _client_main(conn: Connection, job: _Job) -> None:
    try:
        with asyncio.Runner(loop_factory=oip.event_loop_factory()) as runner:
            conn.send(("done", runner.run(_drive(job, conn))))
    except Exception as exc:  # reported to the parent, which raises it
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        conn.close()


def _replies(conns: list[Connection], timeout_s: float) -> list[object]:
    replies = []
    for conn in conns:
        if not conn.poll(timeout_s):
            raise oip.BenchError(f"a client process did not report in {timeout_s:.0f} s")
        kind, value = conn.recv()
        if kind == "error":
            raise oip.BenchError(f"a client process failed: {value}")
        replies.append(value)
    return replies


def saturate(
    http_url: str,
    model_name: str,
    payload: payloads.Payload,
    *,
    clients: int,
    in_flight: int,
    seconds: float = 5.0,
    warmup_s: float = 1.0,
) -> Saturation:
    context = multiprocessing.get_context("spawn")
    job = _Job(http_url, model_name, payload, in_flight, warmup_s, seconds)
    pipes = [context.Pipe() for _ in range(clients)]
    children = [
        context.Process(target=_client_main, args=(child_end, job), daemon=True)
        for _, child_end in pipes
    ]
    for child in children:
        child.start()
    results = []
    try:
        _replies([parent for parent, _ in pipes], READY_TIMEOUT_S)
        start = time.time() + START_LEAD_S
        for parent, _ in pipes:
            parent.send(start)
        results = _replies([parent for parent, _ in pipes], warmup_s + seconds + 120.0)
    finally:
        for child in children:
            child.join(timeout=5)
            if child.is_alive():
                child.kill()
    counted = [cast(tuple[int, int, list[float]], result) for result in results]
    latencies = [ms for _, _, some in counted for ms in some]
    return Saturation(
        clients=clients,
        in_flight=in_flight,
        images_per_s=sum(images for _, images, _ in counted) / seconds,
        requests=sum(requests for requests, _, _ in counted),
        p50_ms=statistics.median(latencies) if latencies else float("nan"),
    )
