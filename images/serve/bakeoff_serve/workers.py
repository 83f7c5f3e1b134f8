"""Several server processes behind one port: the plan, their shared folder and the supervisor.

One Python process has one event loop receiving every request body; at batch 32 with FP32
input that is 19 MB a request, and one loop cannot feed a GPU that fast, nor several GPUs.
So `serve` with more than one worker starts N processes (`multiprocessing`, spawned: the
parent may have imported torch). Each binds the HTTP and gRPC ports with `SO_REUSEPORT`, so
the kernel spreads connections over them; each owns its model instances on its own GPU.

The processes share one folder (`WorkerGroup`):
- `ready/<slot>`: written by a worker once it is warm. Every worker's readiness answer
  requires all N, so the server is ready only when every worker is.
- `metrics/`: one memory-mapped counter row per worker (`server_metrics.ServerMetrics`),
  summed by whichever worker answers a scrape.
- `restarts`: how many workers the supervisor restarted.

The supervisor (the parent) restarts a worker that exits after it was ready: the
replacement loads and warms its model before it binds, so no connection reaches a cold
worker, and it counts on from the crashed worker's metric row (counters stay monotonic).
A worker that exits before it was ever ready at start-up, or one that keeps crashing,
stops the whole server with exit code 1: a server that cannot become whole must not pass
for a smaller one.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import product
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Final

from bakeoff_serve import process, server_metrics

if TYPE_CHECKING:
    from bakeoff_serve.app.settings import Settings

log = logging.getLogger(__name__)

MAX_RESTARTS: Final = 5  # per worker within RESTART_WINDOW_S, then the server gives up
RESTART_WINDOW_S: Final = 300.0
STOP_GRACE_S: Final = 10.0  # uvicorn's own graceful shutdown is 5 s


@dataclass(frozen=True)
class WorkerSlot:
    index: int  # 0..N-1: names the worker in logs, its ready marker and its metric row
    gpu: int | None  # its CUDA device, None on CPU

    def describe(self) -> str:
        return f"worker {self.index}" + (f" (cuda:{self.gpu})" if self.gpu is not None else "")


def plan_workers(device: str, gpus: int, workers_per_device: int) -> list[WorkerSlot]:
    """Worker slots: `workers_per_device` per GPU (GPU by GPU), or per CPU server."""
    devices: list[int | None] = [None] if device == "cpu" else list(range(gpus))
    pairs = product(devices, range(workers_per_device))
    return [WorkerSlot(index, gpu) for index, (gpu, _) in enumerate(pairs)]


class WorkerGroup:
    """The folder one server's worker processes share (see the module docstring)."""

    def __init__(self, root: Path, size: int) -> None:
        self.root = root
        self.size = size
        self.metrics_dir = root / "metrics"
        self._ready_dir = root / "ready"
        self._restarts = root / "restarts"

    @classmethod
    def create(cls, size: int) -> WorkerGroup:
        # tmpfs where there is one: the metric rows are mapped memory, not disk writes.
        shm = Path("/dev/shm")
        base = shm if shm.is_dir() and os.access(shm, os.W_OK) else None
        root = Path(tempfile.mkdtemp(prefix="bakeoff-serve-", dir=base))
        group = cls(root, size)
        group._ready_dir.mkdir()
        group.metrics_dir.mkdir()
        group._restarts.write_text("0")
        return group

    def mark_ready(self, slot: int) -> None:
        (self._ready_dir / str(slot)).write_text(str(os.getpid()))

    def clear_ready(self, slot: int) -> None:
        (self._ready_dir / str(slot)).unlink(missing_ok=True)

    def not_ready(self) -> list[int]:
        return [slot for slot in range(self.size) if not (self._ready_dir / str(slot)).exists()]

    def all_ready(self) -> bool:
        return not self.not_ready()

    def add_restart(self) -> None:
        # Only the supervisor writes it; the replace keeps a scrape from reading half a file.
        partial = self._restarts.with_name(".restarts")
        partial.write_text(str(self.restarts() + 1))
        partial.replace(self._restarts)

    def restarts(self) -> int:
        try:
            return int(self._restarts.read_text() or 0)
        except (OSError, ValueError):
            return 0

    def counts(self) -> server_metrics.WorkerCounts:
        return server_metrics.WorkerCounts(
            configured=self.size,
            ready=self.size - len(self.not_ready()),
            restarts=self.restarts(),
        )

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


@dataclass(frozen=True)
class WorkerContext:
    """What a worker process knows of its server: its slot, the group, when to bind."""

    slot: WorkerSlot
    group: WorkerGroup
    # False for a replacement: it loads and warms before it listens, so that the kernel
    # hands no connection to a cold worker while its peers serve.
    bind_before_warm: bool


def reuseport_socket(host: str, port: int) -> socket.socket:
    """A bound, not yet listening TCP socket that N processes share through SO_REUSEPORT.

    The kernel only spreads connections over sockets that listen; uvicorn calls listen()
    once the app's lifespan has started (for a replacement worker: once it is warm).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def _worker_main(settings_json: str, context: WorkerContext) -> None:
    """A worker process's entry point (spawned: it imports torch itself)."""
    process.die_with_parent()  # no orphans, even when the supervisor is SIGKILLed
    logging.basicConfig(
        level=logging.INFO,
        format=f"%(asctime)s %(levelname)s worker-{context.slot.index} %(name)s: %(message)s",
    )
    from bakeoff_serve.app import main as app_main
    from bakeoff_serve.app.settings import Settings

    settings = Settings.model_validate_json(settings_json)
    raise SystemExit(app_main.serve(settings, context))


def _exit_reason(code: int | None) -> str:
    if code is not None and code < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-code).name}"
    return f"exited with code {code}"


@dataclass
class _Worker:
    slot: WorkerSlot
    process: BaseProcess
    replacement: bool
    crashes: list[float] = field(default_factory=list)  # monotonic times, for the window


WorkerTarget = Callable[[str, WorkerContext], None]


class Supervisor:
    """Starts the workers, restarts the ones that crash, stops them all on SIGTERM/SIGINT."""

    def __init__(
        self,
        settings: Settings,
        slots: list[WorkerSlot],
        target: WorkerTarget = _worker_main,
        first_restart_delay_s: float = 0.5,
    ) -> None:
        self._first_restart_delay_s = first_restart_delay_s
        self._settings_json = settings.model_dump_json()
        self._slots = slots
        self._target = target
        self._group = WorkerGroup.create(len(slots))
        self._context = multiprocessing.get_context("spawn")
        self._workers: dict[int, _Worker] = {}
        self._pending_restarts: dict[int, float] = {}  # slot -> monotonic time to restart
        self._stopping = False

    def run(self) -> int:
        """Until a signal (exit 0) or a worker that cannot be kept up (exit 1)."""
        previous = {
            signum: signal.signal(signum, self._on_signal)
            for signum in (signal.SIGTERM, signal.SIGINT)
        }
        log.info(
            "starting %d workers on one port: %s (group folder %s)",
            len(self._slots),
            ", ".join(slot.describe() for slot in self._slots),
            self._group.root,
        )
        try:
            for slot in self._slots:
                self._start(slot, replacement=False, crashes=[])
            return self._watch()
        finally:
            self._stop_all()
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            self._group.remove()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._stopping = True

    def _start(self, slot: WorkerSlot, *, replacement: bool, crashes: list[float]) -> None:
        context = WorkerContext(slot, self._group, bind_before_warm=not replacement)
        child = self._context.Process(
            target=self._target,
            args=(self._settings_json, context),
            name=f"bakeoff-worker-{slot.index}",
        )
        child.start()
        self._workers[slot.index] = _Worker(slot, child, replacement, crashes)
        log.info("%s started (pid %s)%s", slot.describe(), child.pid,
                 "; it binds once warm" if replacement else "")  # fmt: skip

    def _watch(self) -> int:
        ever_ready: set[int] = set()
        while not self._stopping:
            now = time.monotonic()
            for index, when in list(self._pending_restarts.items()):
                if when <= now:
                    del self._pending_restarts[index]
                    worker = self._workers[index]
                    self._start(worker.slot, replacement=True, crashes=worker.crashes)
            not_ready = set(self._group.not_ready())
            ever_ready.update(index for index in self._workers if index not in not_ready)
            sentinels = {
                worker.process.sentinel: worker
                for index, worker in self._workers.items()
                if index not in self._pending_restarts
            }
            for sentinel in wait(list(sentinels), timeout=0.2):
                if self._stopping:
                    break
                worker = sentinels[sentinel]  # type: ignore[index]
                worker.process.join()
                # Its marker outlives it until _on_exit clears it: a worker that got ready
                # between two polls still counts as having been ready.
                index = worker.slot.index
                was_ready = index in ever_ready or index not in self._group.not_ready()
                code = self._on_exit(worker, was_ready)
                if code is not None:
                    return code
        return 0

    def _on_exit(self, worker: _Worker, was_ready: bool) -> int | None:
        """Schedule the replacement of an exited worker; an exit code to stop with, or None."""
        slot = worker.slot
        self._group.clear_ready(slot.index)
        reason = (
            f"{slot.describe()} (pid {worker.process.pid}) {_exit_reason(worker.process.exitcode)}"
        )
        if not was_ready and not worker.replacement:
            log.error("%s before it was ready; stopping the server", reason)
            return 1
        now = time.monotonic()
        worker.crashes = [t for t in worker.crashes if now - t < RESTART_WINDOW_S] + [now]
        if len(worker.crashes) > MAX_RESTARTS:
            log.error(
                "%s; it crashed %d times in %.0f s, stopping the server",
                reason, len(worker.crashes), RESTART_WINDOW_S,
            )  # fmt: skip
            return 1
        delay = min(self._first_restart_delay_s * 2 ** (len(worker.crashes) - 1), 8.0)
        log.error("%s; restarting it in %.1f s (restart %d)", reason, delay, len(worker.crashes))
        self._group.add_restart()
        self._pending_restarts[slot.index] = now + delay
        return None

    def _stop_all(self) -> None:
        for worker in self._workers.values():
            self._group.clear_ready(worker.slot.index)  # unready at once while they drain
        children = [w.process for w in self._workers.values() if w.process.is_alive()]
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                child.terminate()
        deadline = time.monotonic() + STOP_GRACE_S
        for child in children:
            child.join(max(0.0, deadline - time.monotonic()))
            if child.is_alive():
                log.warning("%s did not stop in %.0f s; killing it", child.name, STOP_GRACE_S)
                child.kill()
                child.join()
