"""N client processes sharing one run (`bakeoff run --local` with `clients: N`, `make bench`).

The same code path as N client pods, on one machine: each process runs `runner.run_bench`
with its index (its share of every scenario, `shares`), all meet at a multiprocessing
barrier at every window edge (`barrier.ProcessBarrier`), and `merge.merge_cells` makes one
result of theirs. A client that fails voids the run: it is run once more, and if a client
fails again the run fails with that client's reason. Partial results are never merged.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import threading
from collections.abc import Callable, MutableSequence
from multiprocessing.connection import Connection, wait
from typing import Final

from bakeoff_bench import barrier, merge, runner
from bakeoff_bench import client as oip
from bakeoff_bench.config import BenchConfig
from bakeoff_bench.results import CellResult

BARRIER_TIMEOUT_S: Final = 900.0  # the longest a client waits for the others at one edge
ATTEMPTS: Final = 2  # a void run is run once more


class ClientFailedError(oip.BenchError):
    """A client process failed; the message names it and says why."""


def _client_main(
    conn: Connection,
    config_json: str,
    shared: threading.Barrier,
    counts: MutableSequence[int],
    timeout_s: float,
) -> None:
    config = BenchConfig.model_validate_json(config_json)
    coordination = barrier.ProcessBarrier(
        shared, counts, config.client_index, config.clients, timeout_s
    )

    def progress(message: str) -> None:
        if config.client_index == 0:  # one voice: the lead client's lines
            conn.send(("progress", message))

    try:
        with asyncio.Runner(loop_factory=oip.event_loop_factory()) as loop_runner:
            result = loop_runner.run(runner.run_bench(config, progress, coordination))
        conn.send(("done", result.model_dump_json()))
    except Exception as exc:  # reported to the parent, which fails or retries the run
        shared.abort()  # the others stop waiting for this one at once
        with contextlib.suppress(OSError):
            conn.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        conn.close()


def _run_once(
    config: BenchConfig, progress: Callable[[str], None], timeout_s: float
) -> list[CellResult]:
    context = multiprocessing.get_context("spawn")
    shared = context.Barrier(config.clients)
    counts = context.Array("q", config.clients)
    pipes = [context.Pipe() for _ in range(config.clients)]
    processes = [
        context.Process(
            target=_client_main,
            args=(
                child,
                config.model_copy(update={"client_index": index}).model_dump_json(),
                shared,
                counts,
                timeout_s,
            ),
            daemon=True,
            name=f"bakeoff-client-{index}",
        )
        for index, (_, child) in enumerate(pipes)
    ]
    for process in processes:
        process.start()
    for _, child in pipes:
        child.close()  # the client holds its end: EOF then means it died
    conns = [parent for parent, _ in pipes]
    results: dict[int, str] = {}
    failures: dict[int, str] = {}
    try:
        while len(results) + len(failures) < len(conns):
            waiting = [c for i, c in enumerate(conns) if i not in results and i not in failures]
            for ready in wait(waiting):
                index = next(i for i, c in enumerate(conns) if c is ready)
                try:
                    kind, value = conns[index].recv()
                except EOFError:
                    failures[index] = "the client process exited without a result"
                    shared.abort()
                    continue
                if kind == "progress":
                    progress(value)
                elif kind == "done":
                    results[index] = value
                else:
                    failures[index] = value
    finally:
        for conn in conns:
            conn.close()
        for process in processes:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
    if failures:
        # The first to fail says why; the others only saw the barrier break.
        index, reason = _first_cause(failures)
        raise ClientFailedError(f"client {index} of {config.clients} failed: {reason}")
    return [CellResult.model_validate_json(results[i]) for i in range(config.clients)]


def _first_cause(failures: dict[int, str]) -> tuple[int, str]:
    causes = {i: r for i, r in failures.items() if "BarrierError" not in r}
    index = min(causes or failures)
    return index, (causes or failures)[index]


async def run_clients(
    config: BenchConfig,
    progress: Callable[[str], None] = runner.print_progress,
    timeout_s: float = BARRIER_TIMEOUT_S,
) -> CellResult:
    """`config.clients` client processes sharing `config`'s scenarios; their merged result."""
    if config.clients == 1:
        return await runner.run_bench(config, progress)
    void: list[str] = []
    for attempt in range(1, ATTEMPTS + 1):
        try:
            parts = await asyncio.to_thread(_run_once, config, progress, timeout_s)
        except ClientFailedError as error:
            if attempt == ATTEMPTS:
                raise ClientFailedError(
                    f"{error} (after a first run void because {void[0]})" if void else str(error)
                ) from None
            void.append(str(error))
            progress(f"run void: {error}; running it once more")
            continue
        merged = merge.merge_cells(parts, metrics_expected=config.target.metrics_url is not None)
        notes = [f"a first run was void ({reason}); this is the second" for reason in void]
        return merged.model_copy(update={"notes": [*merged.notes, *notes]})
    raise AssertionError("unreachable")
