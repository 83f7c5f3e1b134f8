"""The other side of `make bench`: the nginx endpoint, wrk, locust, and bounded child processes.

Used by `loadgen.py` and `saturation.py`. Every child runs in its own session (process
group) so that it and its children can be stopped together, and every wait has a deadline: a
benchmark that hangs or leaves a server behind is worse than one that fails.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, Final

# Small and fixed, like an OIP error-free answer with nothing to decode.
RESPONSE_BODY: Final = '{"model_name":"bench","model_version":"1","outputs":[]}'

# What both benchmark nginx configurations' http blocks share: temp folders in the work
# folder (nginx runs unprivileged there), and no keep-alive request limit: nginx closes a
# keep-alive connection after 1000 requests by default, and a client would then pay for
# reconnects that no inference server makes it pay. A batch-32 UINT8 body is 4.8 MB.
NGINX_HTTP_COMMON: Final = """\
    access_log off;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    client_max_body_size 64m;
    client_body_buffer_size 1m;
"""

# The main context both configurations share: logs and pid in the work folder.
NGINX_MAIN_COMMON: Final = """\
error_log {tmp}/error.log warn;
pid {tmp}/nginx.pid;
events {
    worker_connections 4096;
    multi_accept on;
}
"""

NGINX_CONF: Final = """\
# One process (master_process off, set on the command line) pinned to one core by taskset:
# the endpoint's whole capacity is one core, exactly as much as each client gets.
{main}http {{
{common}    server {{
        listen 127.0.0.1:{port} backlog=4096;
        default_type application/json;
        location / {{
            return 200 '{body}';
        }}
    }}
}}
"""


class ToolError(RuntimeError):
    """A tool is missing, failed, or printed something this module cannot read."""


def _terminate(signum: int, frame: FrameType | None) -> None:
    # SystemExit unwinds through every `finally`: the endpoints and any tool still running
    # are stopped by the context managers that started them.
    raise SystemExit(128 + signum)


def main_writing_report(
    args: argparse.Namespace,
    run: Callable[[argparse.Namespace], dict[str, Any]],
    errors: tuple[type[Exception], ...] = (),
) -> int:
    """A benchmark's main: `run(args)`, then its report as JSON in `args.out`; exit 1 with
    the message on a tool's error (or one of `errors`), 130 when interrupted."""
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    # Even where the parent ignores SIGINT (a background job): Ctrl-C must stop the children.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    failures: tuple[type[Exception], ...] = (ToolError, subprocess.SubprocessError, OSError)
    try:
        report = run(args)
    except failures + errors as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: every process the benchmark started is stopped", file=sys.stderr)
        return 130
    out: Path = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {out}")
    return 0


def require_tools(venv_bin: Path) -> dict[str, str]:
    """Paths of nginx, wrk, taskset and locust; raise with the exact install command if not."""
    found: dict[str, str] = {}
    missing_apt: list[str] = []
    for tool, package in (("nginx", "nginx"), ("wrk", "wrk"), ("taskset", "util-linux")):
        path = shutil.which(tool) or (f"/usr/sbin/{tool}" if tool == "nginx" else None)
        if path and os.access(path, os.X_OK):
            found[tool] = path
        else:
            missing_apt.append(package)
    locust = venv_bin / "locust"
    missing_pip = [] if locust.exists() else ["locust"]
    try:
        import uvloop  # noqa: F401  (the load generator's event loop in production)
    except ImportError:
        missing_pip.append("uvloop")
    commands = []
    if missing_apt:
        commands.append(f"apt-get update && apt-get install -y {' '.join(missing_apt)}")
    if missing_pip:
        commands.append(f"{venv_bin}/pip install {' '.join(missing_pip)}")
    if commands:
        raise ToolError("missing benchmark tools; install them with:\n  " + "\n  ".join(commands))
    found["locust"] = str(locust)
    return found


def tool_version(command: Sequence[str]) -> str:
    done = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
    text = (done.stdout + done.stderr).strip().splitlines()
    return text[0] if text else "unknown"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def stop(process: subprocess.Popen[bytes], grace_s: float = 5.0) -> None:
    """SIGTERM the child's process group, then SIGKILL it if it is still there after grace_s."""
    if process.poll() is not None:
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout=grace_s)
            return
        except subprocess.TimeoutExpired:
            continue


@dataclass(frozen=True)
class Finished:
    returncode: int
    output: str


def run_bounded(
    command: Sequence[str], timeout_s: float, env: Mapping[str, str] | None = None
) -> Finished:
    """Run to completion within timeout_s (then stopped and ToolError); stdout and stderr."""
    process = subprocess.Popen(
        list(command),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env=dict(env) if env is not None else None,
    )
    try:
        output, _ = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired as exc:
        raise ToolError(f"{command[0]} ran past {timeout_s:g} s and was stopped") from exc
    finally:
        stop(process)
    return Finished(process.returncode, output.decode("utf-8", errors="replace"))


def pinned(core: int, command: Sequence[str]) -> list[str]:
    return ["taskset", "-c", str(core), *command]


def wait_for_port(port: int, deadline_s: float, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ToolError(f"the server exited with code {process.returncode}")
        with socket.socket() as sock:
            sock.settimeout(0.2)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise ToolError(f"nothing listened on 127.0.0.1:{port} within {deadline_s:g} s")


@contextlib.contextmanager
def nginx_endpoint(nginx: str, core: int, workdir: Path) -> Iterator[str]:
    """nginx answering `return 200` with RESPONSE_BODY on a free port; yields its base URL."""
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    conf = workdir / "nginx.conf"
    common = NGINX_HTTP_COMMON.format(tmp=workdir)
    main = NGINX_MAIN_COMMON.replace("{tmp}", str(workdir))
    conf.write_text(
        NGINX_CONF.format(tmp=workdir, port=port, body=RESPONSE_BODY, common=common, main=main)
    )
    log = (workdir / "nginx.out").open("wb")
    command = [
        nginx, "-p", str(workdir), "-e", str(workdir / "error.log"), "-c", str(conf),
        "-g", "daemon off; master_process off;",
    ]  # fmt: skip
    process = subprocess.Popen(
        pinned(core, command), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        try:
            wait_for_port(port, 10.0, process)
        except ToolError as exc:
            errors = (workdir / "error.log").read_text() if (workdir / "error.log").exists() else ""
            raise ToolError(f"nginx did not start: {exc}\n{errors}") from exc
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(process)
        log.close()


# wrk


WRK_SCRIPT: Final = """\
-- The load generator's request, byte for byte in body and OIP headers.
wrk.method = "POST"
local file = io.open("{body_path}", "rb")
wrk.body = file:read("*a")
file:close()
{headers}
"""


def wrk_script(path: Path, body_path: Path, headers: Mapping[str, str]) -> Path:
    lines = "\n".join(f'wrk.headers["{name}"] = "{value}"' for name, value in headers.items())
    path.write_text(WRK_SCRIPT.format(body_path=body_path, headers=lines))
    return path


_UNITS_MS: Final = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _duration_ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if match is None:
        raise ToolError(f"unreadable wrk duration {text!r}")
    return float(match.group(1)) * _UNITS_MS[match.group(2)]


@dataclass(frozen=True)
class Measured:
    """One tool's run: rate and latency as the tool itself reports them."""

    requests: int
    errors: int
    requests_per_s: float
    p50_ms: float
    p99_ms: float


def parse_wrk(output: str) -> Measured:
    """Requests/sec, the 50% and 99% lines of --latency, and error counts from wrk's text."""
    rate = re.search(r"Requests/sec:\s+([\d.]+)", output)
    total = re.search(r"(\d+) requests in", output)
    p50 = re.search(r"^\s+50%\s+(\S+)", output, re.MULTILINE)
    p99 = re.search(r"^\s+99%\s+(\S+)", output, re.MULTILINE)
    if not (rate and total and p50 and p99):
        raise ToolError(f"unreadable wrk output:\n{output}")
    errors = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses:\s+(\d+)", output))
    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    if socket_errors:
        errors += sum(int(n) for n in socket_errors.groups())
    return Measured(
        requests=int(total.group(1)),
        errors=errors,
        requests_per_s=float(rate.group(1)),
        p50_ms=_duration_ms(p50.group(1)),
        p99_ms=_duration_ms(p99.group(1)),
    )


def run_wrk(
    wrk: str, core: int, url: str, script: Path, connections: int, duration_s: int
) -> Measured:
    command = [
        wrk, "-t1", f"-c{connections}", f"-d{duration_s}s", "--latency", "--timeout", "10s",
        "-s", str(script), url,
    ]  # fmt: skip
    done = run_bounded(pinned(core, command), duration_s + 30)
    if done.returncode != 0:
        raise ToolError(f"wrk exited with {done.returncode}:\n{done.output}")
    return parse_wrk(done.output)


# locust


def parse_locust_csv(stats_csv: Path) -> Measured:
    """The Aggregated row of locust's --csv stats file (percentiles in whole milliseconds)."""
    with stats_csv.open(newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if row.get("Name") == "Aggregated"]
    if not rows:
        raise ToolError(f"no Aggregated row in {stats_csv}")
    row = rows[0]
    return Measured(
        requests=int(row["Request Count"]),
        errors=int(row["Failure Count"]),
        requests_per_s=float(row["Requests/s"]),
        p50_ms=float(row["50%"]),
        p99_ms=float(row["99%"]),
    )


def run_locust(
    locust: str,
    core: int,
    url: str,
    locustfile: Path,
    users: int,
    duration_s: int,
    workdir: Path,
    env: Mapping[str, str],
) -> Measured:
    prefix = workdir / "locust"
    command = [
        locust, "-f", str(locustfile), "--headless", "--users", str(users),
        "--spawn-rate", str(users), "--run-time", f"{duration_s}s", "--host", url,
        "--csv", str(prefix), "--only-summary", "--loglevel", "WARNING", "--stop-timeout", "5",
    ]  # fmt: skip
    done = run_bounded(pinned(core, command), duration_s + 60, env={**os.environ, **env})
    stats = Path(f"{prefix}_stats.csv")
    if not stats.exists():
        raise ToolError(f"locust exited with {done.returncode} and no stats:\n{done.output}")
    return parse_locust_csv(stats)
