"""Start a server as a child process, wait until it is ready, and never leave it behind.

Used by the local runner and by the protocol tests alike. The child gets its own process
group so that stopping it also stops what it spawned (tritonserver's Python-backend stubs).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path


class ServerStartError(RuntimeError):
    """The server exited or did not become ready in time; the message quotes its log."""


@dataclass(frozen=True)
class Command:
    argv: Sequence[str]
    env: Mapping[str, str] = field(default_factory=dict)  # added to os.environ
    ready_url: str = ""  # GET answers 200 once the server is ready (warm)


def die_with_parent() -> None:
    """Runs in the child (before exec): ask Linux to SIGTERM it when its parent dies.

    A `kill -9` of the runner skips every `finally`; this keeps servers from outliving it.
    """
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


_ERROR_LINE = re.compile(r"^E\d{4} |error|exception|traceback|failed", re.IGNORECASE)


def log_excerpt(log_path: Path, errors: int = 8, tail: int = 8) -> str:
    """The log lines that say why a server died: its error lines first, then its last lines.

    tritonserver prints the reason (e.g. a missing execution provider) early and dozens of
    shutdown lines after it, so the tail alone would hide it.
    """
    try:
        lines = log_path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    flagged = [line for line in lines if _ERROR_LINE.search(line)][:errors]
    last = [line for line in lines[-tail:] if line not in flagged]
    shown = [*flagged, "...", *last] if flagged and last else flagged or last
    return "\n".join(line[:400] for line in shown)


def _is_ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False


def stop_process_group(process: subprocess.Popen[bytes], grace_s: float = 10.0) -> None:
    """SIGTERM the whole group, then SIGKILL what is left after `grace_s`."""
    if process.poll() is not None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)  # reap stragglers of an exited leader
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=grace_s)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=5)


@dataclass
class RunningServer:
    process: subprocess.Popen[bytes]
    log_path: Path
    time_to_ready_s: float


@contextlib.contextmanager
def running_server(
    command: Command, log_path: Path, ready_timeout_s: float = 300.0
) -> Iterator[RunningServer]:
    """Run `command` until the block exits; raise ServerStartError if it never gets ready."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **command.env}
    started = time.monotonic()
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            list(command.argv),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
            preexec_fn=die_with_parent if sys.platform == "linux" else None,
        )
    try:
        deadline = started + ready_timeout_s
        while not _is_ready(command.ready_url):
            if process.poll() is not None:
                raise ServerStartError(
                    f"{command.argv[0]} exited with code {process.returncode} before it was "
                    f"ready; from {log_path}:\n{log_excerpt(log_path)}"
                )
            if time.monotonic() > deadline:
                raise ServerStartError(
                    f"{command.argv[0]} was not ready at {command.ready_url} after "
                    f"{ready_timeout_s:.0f} s; from {log_path}:\n{log_excerpt(log_path)}"
                )
            time.sleep(0.2)
        yield RunningServer(process, log_path, time.monotonic() - started)
    finally:
        stop_process_group(process)


def free_port() -> int:
    """A currently free loopback TCP port (the kernel picks it)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
