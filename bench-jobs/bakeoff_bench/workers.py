"""Rate runs on 1 or N client processes, all starting on one signal (docs/architecture.md §8).

Called by `runner` for every open-loop rate (and max-rate search step). With `workers: 1`
the share runs in this process. With N, N spawned processes each open their own session
and send 1/N of the rate; this process coordinates them over pipes, k6-operator style:

    worker: "ready" -> wait -> warm-up from the given start time -> "done"
    coordinator: scrapes the server's metrics (the window starts here)
    worker: wait -> measured share from the given start time -> "done" + its outcome
    coordinator: scrapes again; merges the outcomes (histograms: exact across processes)

Start times travel as wall-clock (epoch) seconds, as they would between pods; each worker
turns them into its own monotonic clock, which `dispatch` schedules on.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import Any, Final

from bakeoff_bench import client as oip
from bakeoff_bench import credentials, open_loop, payloads, server_metrics
from bakeoff_bench.config import RateScenario, TargetAuth
from bakeoff_bench.results import ScenarioResult

READY_TIMEOUT_S: Final = 60.0  # spawning imports numpy and aiohttp: seconds, not minutes
START_LEAD_S: Final = 0.2  # every worker has received the start time by then


class WorkerError(oip.BenchError):
    """A client process failed or stopped answering; the message says which and why."""


@dataclass(frozen=True)
class WorkerJob:
    """Everything one client process needs (picklable: it crosses a process boundary)."""

    http_url: str
    model_name: str
    request_timeout_s: float
    body: bytes
    headers: dict[str, str]
    batch_size: int
    run: open_loop.RateRun
    warmup: open_loop.RateRun | None
    auth: TargetAuth | None = None  # files: each client process reads its own credentials


def _monotonic_of(epoch: float) -> float:
    return time.monotonic() + (epoch - time.time())


async def _serve_job(conn: Connection, job: WorkerJob) -> None:
    payload = payloads.Payload(body=job.body, headers=job.headers, batch_size=job.batch_size)
    secrets = credentials.load(job.auth, job.http_url)
    limit, timeout_s = job.run.max_in_flight, job.request_timeout_s
    async with oip.make_session(limit, timeout_s, secrets.ssl_context) as session:
        client = oip.OipClient(session, job.http_url, job.model_name, job.auth)
        conn.send(("ready", None))
        for run in (job.warmup, job.run):
            _, epoch = await asyncio.to_thread(conn.recv)
            outcome = None
            if run is not None:
                outcome = await open_loop.run_share(client, payload, run, _monotonic_of(epoch))
            conn.send(("done", outcome))


def worker_main(conn: Connection, job: WorkerJob) -> None:
    """Entry point of a client process."""
    try:
        with asyncio.Runner(loop_factory=oip.event_loop_factory()) as loop_runner:
            loop_runner.run(_serve_job(conn, job))
    except Exception as exc:  # reported to the coordinator, which fails the run with it
        # The coordinator may be gone already (it closed the pipe): nothing left to tell.
        with contextlib.suppress(OSError):
            conn.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        conn.close()


def _reap(processes: Sequence[BaseProcess], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    for process in processes:
        process.join(timeout=max(0.0, deadline - time.monotonic()))
    for process in processes:
        if process.is_alive():
            process.terminate()
            process.join(timeout=1.0)


def _collect(conns: list[Connection], timeout_s: float, what: str) -> list[Any]:
    """One reply per worker, in worker order; raises on an error reply, a death or a timeout."""
    replies: dict[int, Any] = {}
    deadline = time.monotonic() + timeout_s
    while len(replies) < len(conns):
        left = deadline - time.monotonic()
        waiting = [c for i, c in enumerate(conns) if i not in replies]
        ready = wait(waiting, timeout=max(0.0, left))
        if not ready:
            missing = sorted(set(range(len(conns))) - set(replies))
            raise WorkerError(f"client workers {missing} did not report {what} in {timeout_s:g} s")
        for ready_conn in ready:
            index = next(i for i, c in enumerate(conns) if c is ready_conn)
            try:
                kind, value = conns[index].recv()
            except EOFError as exc:
                raise WorkerError(f"client worker {index} exited before {what}") from exc
            if kind == "error":
                raise WorkerError(f"client worker {index} failed: {value}")
            replies[index] = value
    return [replies[i] for i in range(len(conns))]


async def run_in_processes(
    jobs: list[WorkerJob], between: Callable[[int], Awaitable[None]]
) -> tuple[list[open_loop.ShareOutcome], int]:
    """Run each job in its own spawned process; same shape as `open_loop.run_in_process`."""
    context = multiprocessing.get_context("spawn")  # fork would copy a running event loop
    pipes = [context.Pipe() for _ in jobs]
    processes = [
        context.Process(target=worker_main, args=(child, job), daemon=True, name=f"client-{i}")
        for i, ((_, child), job) in enumerate(zip(pipes, jobs, strict=True))
    ]
    conns = [parent for parent, _ in pipes]
    run = jobs[0].run
    try:
        for process in processes:
            process.start()
        for _, child in pipes:
            child.close()  # the worker holds its end; EOF then means it died
        await asyncio.to_thread(_collect, conns, READY_TIMEOUT_S, "ready")
        results: list[list[Any]] = []
        for phase, phase_run in (("warm-up", jobs[0].warmup), ("measured", run)):
            if phase == "measured":
                await between(sum(o.ok for o in results[0] if o is not None))
            epoch = time.time() + START_LEAD_S
            for conn in conns:
                conn.send(("start", epoch))
            seconds = phase_run.duration_s + phase_run.drain_s if phase_run else 0.0
            limit = START_LEAD_S + seconds + 30.0
            results.append(await asyncio.to_thread(_collect, conns, limit, f"{phase} done"))
    finally:
        for conn in conns:
            conn.close()  # a worker still waiting for a start signal sees EOF and exits
        await asyncio.to_thread(_reap, processes)
    warm_sent = sum(o.sent for o in results[0] if o is not None)
    return [o for o in results[1] if o is not None], warm_sent


async def run_rate(
    client: oip.OipClient,
    payload: payloads.Payload,
    spec: RateScenario,
    rate: float,
    *,
    seed: int,
    workers: int,
    scraper: server_metrics.MetricsScraper | None,
    duration_s: float | None = None,
    first_share: int = 0,
    total_shares: int | None = None,
) -> ScenarioResult:
    """One rate run: warm-up at the same rate, scrape, measured schedule, scrape.

    This client sends the global shares `first_share` .. `first_share + workers - 1` of
    `total_shares` (default: all of them, `workers`): several clients split one schedule.
    """
    total = workers if total_shares is None else total_shares
    whole = open_loop.RateRun.from_config(spec, rate, seed, duration_s)
    whole_warmup = whole.warmup(spec.warmup_seconds) if spec.warmup_seconds > 0 else None
    run, warmup = whole, whole_warmup
    if total > 1 and workers == 1:
        run = whole.share(first_share, total)
        warmup = whole_warmup.share(first_share, total) if whole_warmup is not None else None
    snapshots: list[server_metrics.MetricsSnapshot | None] = []

    async def between(warm_ok: int) -> None:
        if scraper is not None:
            scraper.answered_ok(warm_ok)
        snapshots.append(await scraper.settled() if scraper is not None else None)

    if workers == 1:
        shares, warm_sent = await open_loop.run_in_process(client, payload, run, warmup, between)
    else:
        jobs = [
            WorkerJob(
                http_url=client.base_url,
                model_name=client.model_name,
                auth=client.auth,
                request_timeout_s=_request_timeout(client),
                body=payload.body,
                headers=dict(payload.headers),
                batch_size=payload.batch_size,
                run=whole.share(first_share + i, total),
                warmup=(
                    whole_warmup.share(first_share + i, total) if whole_warmup is not None else None
                ),
            )
            for i in range(workers)
        ]
        shares, warm_sent = await run_in_processes(jobs, between)
    after = None
    if scraper is not None:
        scraper.answered_ok(sum(share.ok for share in shares))
        after = await scraper.settled()
    server = server_metrics.diff_server_times(snapshots[0], after)
    return open_loop.rate_result(shares, run, spec, payload.batch_size, server, warm_sent)


def _request_timeout(client: oip.OipClient) -> float:
    # The coordinator's session carries the configured timeout; workers use the same one.
    total = client.session.timeout.total
    return float(total) if total else 60.0
