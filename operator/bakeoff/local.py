"""`bakeoff run SUITE --local`: every cell of a suite on this machine, one backend at a time.

Each backend starts as a child process on free loopback ports, the load generator measures
it in-process, and the backend is stopped before the next one starts (also on failure and
on Ctrl-C), so backends never compete for the cores. A failed cell is recorded with its
reason and the others still run. Results land in `<out>/<suite>/` as they are produced.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import psutil

from bakeoff import analysis, api, plan
from bakeoff.backends import LocalServer, plugin_for
from bakeoff_bench import client as bench_client
from bakeoff_bench import clients as bench_clients
from bakeoff_bench import config as bench_config
from bakeoff_bench import runner as bench_runner
from bakeoff_bench.models import StrictModel
from bakeoff_bench.results import CellResult
from bakeoff_serve import process

Progress = Callable[[str], None]
DeviceChoice = Literal["auto", "cpu", "cuda"]


class CellOutcome(StrictModel):
    """What happened to one cell: its result, or why there is none."""

    backend: str
    pool: str
    phase: api.CellPhase
    message: str = ""
    result_file: str | None = None
    log_file: str | None = None


@dataclass(frozen=True)
class LocalOptions:
    out_dir: Path
    pool: str | None = None
    device: DeviceChoice = "auto"
    cache_dir: Path | None = None
    # Where external endpoints' Secret keys are read: <dir>/<secret>/<key>, as in a bench pod.
    secrets_dir: Path | None = None


class LocalRunError(Exception):
    """The suite cannot run locally as asked; the message says what to change."""


def choose_pool(spec: api.BenchmarkSuiteSpec, requested: str | None) -> api.NodePool:
    if requested is None:
        return spec.node_pools[0]
    for pool in spec.node_pools:
        if pool.name == requested:
            return pool
    names = ", ".join(p.name for p in spec.node_pools)
    raise LocalRunError(f"--pool {requested}: no such pool in this suite; pools: {names}")


def choose_device(pool: api.NodePool, requested: DeviceChoice, cuda_available: bool) -> str:
    """The device this machine uses for `pool`; refuses to fake a GPU pool silently."""
    if requested == "cpu":
        return "cpu"
    if requested == "cuda":
        if not cuda_available:
            raise LocalRunError("--device cuda: PyTorch sees no CUDA device on this machine")
        return "cuda"
    if pool.gpus == 0:
        return "cpu"
    if cuda_available:
        return "cuda"
    raise LocalRunError(
        f"pool '{pool.name}' asks for {pool.gpus} GPU(s) and this machine has none; "
        "pass --device cpu to run its backends on the CPU anyway (numbers will be CPU numbers)"
    )


def _process_tree_rss(pid: int) -> int:
    """Resident memory of a server and its children (Triton's Python-backend stubs)."""
    try:
        parent = psutil.Process(pid)
        members = [parent, *parent.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for member in members:
        try:
            total += member.memory_info().rss
        except psutil.Error:
            continue
    return total


def device_memory_used(gpus: int) -> int | None:
    """Memory in use on GPUs 0..gpus-1, through NVML, the way Bakeoff's server reports its
    own VRAM; a local run serves one cell at a time, so at the end of a cell it is that
    server's. None off a GPU (gpus 0), or without NVML (nvidia-ml-py)."""
    if gpus == 0:
        return None
    try:
        import torch

        return sum(int(torch.cuda.device_memory_used(index)) for index in range(gpus))
    except Exception:  # no NVML here: the caller falls back to host memory
        return None


def local_gpus(pool: api.NodePool, device: str, visible: int) -> int:
    """GPUs a local run serves each backend on: the pool's count, as far as this machine
    has them (at least one on cuda; none on cpu)."""
    if device == "cpu":
        return 0
    return max(1, min(pool.gpus, visible))


def served_on(pool: api.NodePool, gpus: int) -> str:
    """The note a local cell carries about where it ran."""
    if gpus == 0:
        return "served on cpu (local run)"
    where = "served on cuda:0" if gpus == 1 else f"served on {gpus} GPUs"
    if gpus < pool.gpus:
        return (
            f"{where} (local run; pool '{pool.name}' asks for {pool.gpus}, this machine has {gpus})"
        )
    return f"{where} (local run)"


def _bench(config: bench_config.BenchConfig, progress: Progress, run_seconds: float) -> CellResult:
    # The load generator's own event loop (uvloop when installed), as in the benchmark Job,
    # stopped after timeouts.runSeconds as the Job's activeDeadlineSeconds would stop it.
    async def bounded() -> CellResult:
        try:
            # One client runs here; several are processes meeting at a barrier, merged.
            return await asyncio.wait_for(bench_clients.run_clients(config, progress), run_seconds)
        except TimeoutError:
            raise bench_runner.BenchError(
                f"the benchmark did not finish within timeouts.runSeconds={run_seconds:g}"
            ) from None

    with _ctrl_c_raises() as interrupted:
        with asyncio.Runner(loop_factory=bench_client.event_loop_factory()) as runner:
            result = runner.run(bounded())
        if interrupted.is_set():
            raise KeyboardInterrupt  # raised inside a callback that swallowed it: stop now
        return result


def _raise_interrupt() -> None:
    raise KeyboardInterrupt


def _interrupt(interrupted: threading.Event) -> Callable[[int, object], None]:
    def handler(signum: int, frame: object) -> None:
        interrupted.set()
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is not None:
            # Raised inside a transport's callback, uvloop reports the exception as a fatal
            # error of that connection and goes on; raised from a callback of the loop's own,
            # it stops the loop. So both: whichever comes first.
            loop.call_soon_threadsafe(_raise_interrupt)
        raise KeyboardInterrupt

    return handler


@contextlib.contextmanager
def _ctrl_c_raises() -> Iterator[threading.Event]:
    """Ctrl-C raises KeyboardInterrupt at once, inside the measurement too.

    asyncio.Runner would otherwise turn it into a cancellation of the measuring task, and a
    cancellation that lands while that task awaits a helper it has just cancelled itself (a
    progress reporter, a ticker) is absorbed there: the run went on to the end. Raising from
    the handler stops the loop wherever it is; the caller stops the servers and says so.
    Yields an event set on Ctrl-C, for an interrupt a callback swallowed.
    """
    interrupted = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield interrupted
        return
    previous = signal.signal(signal.SIGINT, _interrupt(interrupted))
    try:
        yield interrupted
    finally:
        signal.signal(signal.SIGINT, previous)


def _measure_external(
    suite: api.BenchmarkSuite, cell: plan.Cell, target: bench_config.Target, progress: Progress
) -> CellResult:
    progress(f"measuring the external server at {target.http_url} as it is")
    run_s = float(suite.spec.timeouts.run_seconds)
    result = _bench(plan.build_bench_config(suite, cell, target), progress, run_s)
    result.notes.append("external backend: started and configured outside Bakeoff")
    return result


def _measure_started_backend(
    suite: api.BenchmarkSuite,
    cell: plan.Cell,
    server: LocalServer,
    gpus: int,
    log_path: Path,
    progress: Progress,
) -> CellResult:
    progress(f"starting {plugin_for(cell.backend).describe()} (log: {log_path})")
    ready_s = float(suite.spec.timeouts.ready_seconds)
    with process.running_server(server.command, log_path, ready_s) as running:
        progress(f"ready and warm after {running.time_to_ready_s:.1f} s")
        run_s = float(suite.spec.timeouts.run_seconds)
        result = _bench(plan.build_bench_config(suite, cell, server.target), progress, run_s)
        if result.memory_bytes is None:
            # A server without a GPU-memory metric (Triton's Python backend here).
            vram = device_memory_used(gpus)
            if vram is not None:
                result.memory_bytes, result.memory_kind = vram, "gpu"
            else:
                result.memory_bytes = _process_tree_rss(running.process.pid)
                result.memory_kind = "host-rss"
        result.time_to_ready_s = running.time_to_ready_s
        result.notes.append(served_on(cell.pool, gpus))
        if gpus > 1 and isinstance(cell.backend, api.TritonOnnxBackend):
            result.notes.append("the bundled tritonserver's Python backend runs on cuda:0 only")
    return result


def _measure(
    suite: api.BenchmarkSuite,
    cell: plan.Cell,
    gpus: int,
    work_dir: Path,
    log_path: Path,
    options: LocalOptions,
    progress: Progress,
) -> CellResult:
    plugin = plugin_for(cell.backend)
    remote = plugin.remote_target(suite, options.secrets_dir or Path("secrets"))
    if remote is not None:
        return _measure_external(suite, cell, remote, progress)
    server = plugin.start_locally(suite, gpus, work_dir, options.cache_dir)
    if server is None:
        raise ValueError(f"backend '{cell.backend.name}' has neither an endpoint nor a server")
    return _measure_started_backend(suite, cell, server, gpus, log_path, progress)


def run_cell(
    suite: api.BenchmarkSuite,
    cell: plan.Cell,
    gpus: int,
    options: LocalOptions,
    progress: Progress,
    run: int | None = None,
) -> CellOutcome:
    """Measure one cell; `run` numbers one of several repeats (its files get the number)."""
    suite_dir = options.out_dir / suite.metadata.name
    stem = cell.key if run is None else f"{cell.key}.run{run}"
    work_dir = suite_dir / "work" / cell.key
    log_path = suite_dir / "logs" / f"{stem}.log"
    outcome = CellOutcome(
        backend=cell.backend.name,
        pool=cell.pool.name,
        phase=api.CellPhase.DEPLOYING,
        log_file=str(log_path),
    )
    try:
        result = _measure(suite, cell, gpus, work_dir, log_path, options, progress)
    except (process.ServerStartError, bench_runner.BenchError, OSError, ValueError) as error:
        outcome.phase = api.CellPhase.FAILED
        outcome.message = str(error)
        return outcome
    result_path = suite_dir / ("cells" if run is None else "runs") / f"{stem}.json"
    result_path.parent.mkdir(parents=True, exist_ok=True)
    result_path.write_text(result.model_dump_json(by_alias=True, indent=2))
    outcome.phase = api.CellPhase.SUCCEEDED
    outcome.result_file = str(result_path)
    return outcome


def check_secret_files(backends: list[api.Backend], secrets_dir: Path | None) -> None:
    """Every Secret key an endpoint's auth names is a file under `secrets_dir`, before a
    cell starts; the message lists what is missing and how to lay it out."""
    missing: list[str] = []
    for backend in backends:
        if not isinstance(backend, api.ExternalBackend) or backend.endpoint.auth is None:
            continue
        for path, value in backend.endpoint.auth.secret_values():
            ref = value.secret_ref
            where = (
                f"backend '{backend.name}' endpoint.auth.{path}: Secret {ref.name} key {ref.key}"
            )
            if secrets_dir is None or not (secrets_dir / ref.name / ref.key).is_file():
                missing.append(where)
    if not missing:
        return
    layout = (
        "locally, put each Secret key in a file DIR/<secret>/<key> (the layout a benchmark pod "
        "mounts) and pass --secrets-dir DIR"
    )
    if secrets_dir is not None:
        layout += f"; looked in {secrets_dir}"
    raise LocalRunError(f"{'; '.join(missing)}: no file; {layout}")


def run_local(
    suite: api.BenchmarkSuite, options: LocalOptions, progress: Progress
) -> list[CellOutcome]:
    """Run every backend of the chosen pool; write each outcome as soon as it is known."""
    pool = choose_pool(suite.spec, options.pool)
    visible = 0
    if (options.device != "cpu" and pool.gpus > 0) or options.device == "cuda":
        import torch

        visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    device = choose_device(pool, options.device, visible > 0)
    gpus = local_gpus(pool, device, visible)
    cells = [c for c in plan.plan_cells(suite.spec) if c.pool.name == pool.name]
    check_secret_files([c.backend for c in cells], options.secrets_dir)
    suite_dir = options.out_dir / suite.metadata.name
    suite_dir.mkdir(parents=True, exist_ok=True)
    repeats = suite.spec.scenarios.repeats
    outcomes: list[CellOutcome] = []
    # Repeats interleave (A, B, A, B...): a slow drift of the machine spreads over every cell
    # instead of landing on whichever ran last.
    runs: dict[str, list[CellOutcome]] = {cell.key: [] for cell in cells}
    for round_ in range(1, repeats + 1):
        for index, cell in enumerate(cells, start=1):
            if any(o.phase is api.CellPhase.FAILED for o in runs[cell.key]):
                continue  # failed once: its other runs would not count
            prefix = f"[{index}/{len(cells)}] {cell.backend.name} on {pool.name} ({device})"
            if repeats > 1:
                prefix = f"[run {round_}/{repeats}] {prefix}"

            def cell_progress(message: str, prefix: str = prefix) -> None:
                progress(f"{prefix}: {message}")

            cell_progress("preparing")
            run = round_ if repeats > 1 else None
            outcome = run_cell(suite, cell, gpus, options, cell_progress, run)
            if outcome.phase is api.CellPhase.FAILED:
                cell_progress(f"FAILED: {outcome.message.splitlines()[0]}")
            else:
                cell_progress("done")
            runs[cell.key].append(outcome)
            if repeats == 1:
                outcomes.append(outcome)
                _write_outcomes(suite_dir, outcomes)
    if repeats > 1:
        outcomes = [_combine_runs(suite_dir, cell, runs[cell.key]) for cell in cells]
        _write_outcomes(suite_dir, outcomes)
    return outcomes


def _combine_runs(suite_dir: Path, cell: plan.Cell, runs: list[CellOutcome]) -> CellOutcome:
    """One outcome for a cell's repeated runs: failed if any failed, else the combined
    result written where a single run's would be."""
    failed = next((o for o in runs if o.phase is api.CellPhase.FAILED), None)
    if failed is not None:
        failed.message = f"run {runs.index(failed) + 1} of the repeats: {failed.message}"
        return failed
    results = load_results(runs)
    combined = analysis.combine_repeats(results)
    path = suite_dir / "cells" / f"{cell.key}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(combined.model_dump_json(by_alias=True, indent=2))
    return runs[0].model_copy(update={"result_file": str(path), "log_file": runs[0].log_file})


def _write_outcomes(suite_dir: Path, outcomes: list[CellOutcome]) -> None:
    document = {
        "writtenAt": datetime.now(UTC).isoformat(),
        "cells": [o.model_dump(mode="json", by_alias=True) for o in outcomes],
    }
    (suite_dir / "outcomes.json").write_text(json.dumps(document, indent=2))


def load_results(outcomes: list[CellOutcome]) -> list[CellResult]:
    return [
        CellResult.model_validate_json(Path(o.result_file).read_text())
        for o in outcomes
        if o.result_file is not None
    ]
