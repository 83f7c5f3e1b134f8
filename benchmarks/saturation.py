"""`make bench`: how many client processes does one open-loop rate need? A saturation table.

Against a server faster than one client process (nginx with one worker per core, answering
canned Open Inference Protocol responses for model `m`), Bakeoff's load generator runs the
same open-loop rate with 1, 2 and 4 client processes (`clients.run_clients`: the processes
meet at a barrier, each sends 1/N of the schedule, `merge.merge_cells` makes one result of
theirs). Per client count it prints what was asked, sent and answered, how many sends left
late, what was dropped, p50/p99, whether the `client-bottleneck` and `rate-not-sustained`
flags were raised, and the busiest client process's CPU; then the client count at which
`client-bottleneck` disappears.

It asserts nothing: numbers vary by machine; the JSON records which machine. It fails
(exit 1) when nginx is missing, a run raises, or no request of a run succeeded.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import bench_tools
import psutil

from bakeoff_bench import client as oip
from bakeoff_bench import clients as bench_clients
from bakeoff_bench import flags as bench_flags
from bakeoff_bench.config import Arrival, BenchConfig, RateScenario, Target
from bakeoff_bench.results import ClientOverhead, FlagCode, ScenarioResult

MODEL: Final = "m"
# Above what one client process sustains on the 2-core development machine with nginx on the
# same cores (flagged from 16,000-18,000 req/s there); nginx takes about 35 us of CPU a
# request, three quarters of a core at this rate.
DEFAULT_RATE: Final = 20_000.0
# Larger than any backlog of a short stall at DEFAULT_RATE, so that a drop means trouble,
# not the bound: the bound is split among the client processes.
DEFAULT_MAX_IN_FLIGHT: Final = 512
DEFAULT_CLIENTS: Final = (1, 2, 4)
BUSY_LOAD: Final = 0.5  # 1-minute load average above which the machine is not idle

# Canned OIP answers: what `runner.run_bench` reads before it measures (server metadata,
# model metadata and config) and the infer route, whose answer the hot path only counts by
# status. One UINT8 image is 150,528 bytes: the body must be allowed and read (a `return`
# discards it, POST included; a static file would answer a POST with 405).
SERVER_METADATA: Final = {
    "name": "nginx-canned",
    "version": "1",
    "extensions": ["binary_tensor_data"],
}
MODEL_METADATA: Final = {
    "name": MODEL,
    "versions": ["1"],
    "platform": "canned",
    "inputs": [{"name": "pixel_values", "datatype": "UINT8", "shape": [-1, 3, 224, 224]}],
    "outputs": [{"name": "embedding", "datatype": "FP32", "shape": [-1, 512]}],
}
MODEL_CONFIG: Final = {
    "name": MODEL,
    "max_batch_size": 32,
    "parameters": {"runtime": {"string_value": "nginx canned answers"}},
}
INFER_RESPONSE: Final = {"model_name": MODEL, "model_version": "1", "outputs": []}


def _location(path: str, answer: dict[str, Any] | None, status: int = 200) -> str:
    body = "" if answer is None else " '" + json.dumps(answer, separators=(",", ":")) + "'"
    return f"        location = {path} {{ return {status}{body}; }}\n"


def nginx_oip_conf(workdir: Path, port: int, workers: int) -> str:
    """nginx.conf: `workers` worker processes answering OIP for model `m` on 127.0.0.1:port."""
    model = f"/v2/models/{MODEL}"
    locations = "".join(
        [
            _location("/v2/health/ready", None),
            _location("/v2/health/live", None),
            _location("/v2", SERVER_METADATA),
            _location(model, MODEL_METADATA),
            _location(f"{model}/config", MODEL_CONFIG),
            _location(f"{model}/ready", None),
            _location(f"{model}/infer", INFER_RESPONSE),
        ]
    )
    not_found = json.dumps({"error": "not found"})
    common = bench_tools.NGINX_HTTP_COMMON.format(tmp=workdir)
    main = bench_tools.NGINX_MAIN_COMMON.replace("{tmp}", str(workdir))
    return f"""\
# Several worker processes (one per core): more than one client process can keep busy.
worker_processes {workers};
{main}http {{
{common}    default_type application/json;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
{locations}        location / {{ return 404 '{not_found}'; }}
    }}
}}
"""


def find_nginx() -> str:
    path = shutil.which("nginx") or "/usr/sbin/nginx"
    if not os.access(path, os.X_OK):
        raise bench_tools.ToolError(
            "nginx is missing; install it with:\n  apt-get update && apt-get install -y nginx"
        )
    return path


@dataclass(frozen=True)
class Endpoint:
    url: str
    master: psutil.Process

    def cpu_s(self) -> float:
        """CPU seconds of the master and its workers so far."""
        total = 0.0
        for process in [self.master, *self.master.children(recursive=True)]:
            with contextlib.suppress(psutil.NoSuchProcess):
                times = process.cpu_times()
                total += times.user + times.system
        return total


@contextlib.contextmanager
def nginx_oip_endpoint(nginx: str, workdir: Path, workers: int) -> Iterator[Endpoint]:
    """nginx serving canned OIP answers on a free port (stopped on exit); yields it."""
    port = bench_tools.free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    conf = workdir / "nginx.conf"
    conf.write_text(nginx_oip_conf(workdir, port, workers))
    error_log = workdir / "error.log"
    log = (workdir / "nginx.out").open("wb")
    command = [
        nginx, "-p", str(workdir), "-e", str(error_log), "-c", str(conf), "-g", "daemon off;",
    ]  # fmt: skip
    process = subprocess.Popen(
        command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        try:
            bench_tools.wait_for_port(port, 10.0, process)
        except bench_tools.ToolError as exc:
            errors = error_log.read_text() if error_log.exists() else ""
            output = (workdir / "nginx.out").read_text()
            raise bench_tools.ToolError(f"nginx did not start: {exc}\n{errors}{output}") from exc
        yield Endpoint(f"http://127.0.0.1:{port}", psutil.Process(process.pid))
    finally:
        bench_tools.stop(process)
        log.close()


def bench_config(args: argparse.Namespace, base_url: str, clients: int) -> BenchConfig:
    rate = RateScenario(
        requests_per_second=[args.rate],
        arrival=Arrival(args.arrival),
        duration_seconds=args.seconds,
        warmup_seconds=1,
        drain_seconds=2,
        batch_size=1,
        max_in_flight=args.max_in_flight,
    )
    return BenchConfig(
        suite="saturation",
        backend="nginx",
        pool="local",
        target=Target(http_url=base_url, metrics_url=None, model_name=MODEL),
        single=None,
        batch_sweep=None,
        concurrency_sweep=None,
        rate=rate,
        clients=clients,
        parity_batch=0,
        seed=0,
        ready_timeout_s=10.0,
    )


def _progress(message: str) -> None:
    print(f"    {message}", file=sys.stderr, flush=True)


async def _measure(config: BenchConfig, run_s: float) -> ScenarioResult:
    try:
        cell = await asyncio.wait_for(bench_clients.run_clients(config, _progress), run_s)
    except TimeoutError:
        raise oip.BenchError(f"the run did not finish within {run_s:g} s") from None
    if len(cell.rate) != 1 or cell.rate[0].open_loop is None:
        raise oip.BenchError(f"expected one open-loop result, got {len(cell.rate)}")
    return cell.rate[0]


def bottleneck_kind(load: ClientOverhead | None) -> str:
    """'busy' or 'starved', as `flags.client_bottleneck` words a raised flag."""
    if load is None:
        return ""
    busy = load.loop_cpu_fraction > bench_flags.CLIENT_CPU_LIMIT
    return "busy" if busy or load.loop_cpu_fraction >= bench_flags.STARVED_BELOW else "starved"


def stop_client_processes(grace_s: float = 3.0) -> None:
    """Stop this process's spawned client processes (`multiprocessing.spawn`), if any."""
    clients = []
    for child in psutil.Process().children():
        with contextlib.suppress(psutil.Error):
            if any("spawn_main" in part for part in child.cmdline()):
                clients.append(child)
    for child in clients:
        with contextlib.suppress(psutil.Error):
            child.terminate()
    _, alive = psutil.wait_procs(clients, timeout=grace_s)
    for child in alive:
        with contextlib.suppress(psutil.Error):
            child.kill()


def run_point(args: argparse.Namespace, endpoint: Endpoint, clients: int) -> dict[str, Any]:
    """One client count: the merged rate result and what it cost nginx."""
    config = bench_config(args, endpoint.url, clients)
    cpu_before, wall_before = endpoint.cpu_s(), time.perf_counter()
    # uvloop, as in every client process (clients == 1 runs in this process).
    with asyncio.Runner(loop_factory=oip.event_loop_factory()) as runner:
        try:
            result = runner.run(_measure(config, run_s=args.seconds + 120.0))
        except BaseException:
            # Interrupted (or failed): the runner's close waits for the thread that waits for
            # the client processes, so stop them first instead of letting them finish the run.
            stop_client_processes()
            raise
    nginx_cpu_s = endpoint.cpu_s() - cpu_before
    wall_s = time.perf_counter() - wall_before
    run = result.open_loop
    if run is None:  # checked in _measure; narrows the type
        raise oip.BenchError("the rate result has no open-loop numbers")
    failed = result.failed - run.dropped
    if result.requests == 0:
        errors = "; ".join(f"{e.error_type}: {e.message} x{e.count}" for e in result.errors)
        raise oip.BenchError(f"{clients} client(s): no request succeeded ({errors or 'none'})")
    if failed > 0:
        print(f"  warning: {failed} requests failed: {result.errors}", file=sys.stderr)
    codes = {flag.code for flag in result.flags}
    answered = run.sent + result.warmup_requests
    load = result.client
    return {
        "clients": clients,
        "requested_rps": run.requested_requests_per_s,
        "sent_rps": run.sent_requests_per_s,
        "achieved_rps": run.achieved_requests_per_s,
        "scheduled": run.scheduled,
        "sent": run.sent,
        "late": run.late,
        "late_threshold_ms": run.late_threshold_ms,
        "late_pct": 100.0 * run.late / run.sent if run.sent else 0.0,
        "dropped": run.dropped,
        "failed": failed,
        "p50_ms": result.latency.p50_ms,
        "p99_ms": result.latency.p99_ms,
        "service_p50_ms": run.service_latency.p50_ms,
        "client_bottleneck": FlagCode.CLIENT_BOTTLENECK in codes,
        "client_bottleneck_kind": (
            bottleneck_kind(load) if FlagCode.CLIENT_BOTTLENECK in codes else None
        ),
        "rate_not_sustained": FlagCode.RATE_NOT_SUSTAINED in codes,
        "client_cpu_fraction": load.cpu_fraction if load else None,
        "client_loop_cpu_fraction": load.loop_cpu_fraction if load else None,
        "client_loop_lag_p99_ms": load.loop_lag_p99_ms if load else None,
        "nginx_cpu_s": nginx_cpu_s,
        "nginx_us_per_request": 1e6 * nginx_cpu_s / answered if answered else None,
        "wall_s": wall_s,
        "flags": [flag.model_dump(mode="json") for flag in result.flags],
        "per_client": [share.model_dump(mode="json") for share in result.clients],
    }


def _yes(value: bool, kind: str | None = None) -> str:
    return ("yes" + (f" ({kind})" if kind else "")) if value else "no"


def table(rows: Sequence[dict[str, Any]]) -> str:
    header = (
        f"{'clients':>7}{'requested':>11}{'achieved':>10}{'sent':>10}{'late %':>8}"
        f"{'dropped':>9}{'p50 ms':>9}{'p99 ms':>9}{'client-bottleneck':>19}"
        f"{'rate-not-sustained':>20}{'client CPU':>12}{'nginx us/req':>14}"
    )
    lines = [header]
    for r in rows:
        cpu = r["client_cpu_fraction"]
        nginx_us = r["nginx_us_per_request"]
        bottleneck = _yes(r["client_bottleneck"], r["client_bottleneck_kind"])
        lines.append(
            f"{r['clients']:>7}{r['requested_rps']:>11.0f}{r['achieved_rps']:>10.0f}"
            f"{r['sent_rps']:>10.0f}{r['late_pct']:>8.1f}{r['dropped']:>9}"
            f"{r['p50_ms']:>9.3f}{r['p99_ms']:>9.3f}{bottleneck:>19}"
            f"{_yes(r['rate_not_sustained']):>20}"
            f"{(f'{cpu:.2f}' if cpu is not None else '-'):>12}"
            f"{(f'{nginx_us:.0f}' if nginx_us is not None else '-'):>14}"
        )
    return "\n".join(lines)


def conclusion(rows: Sequence[dict[str, Any]], cores: int) -> str:
    """One sentence: the client count at which client-bottleneck disappears, or that it did not."""
    flagged = [r["clients"] for r in rows if r["client_bottleneck"]]
    clear = [r["clients"] for r in rows if not r["client_bottleneck"]]
    machine = f"on this machine ({cores} cores)"
    if clear:
        first = clear[0]
        back = [c for c in flagged if c > first]
        again = f", but it was raised again at {_counts(back)} clients" if back else ""
        return (
            f"client-bottleneck disappears at {first} client process"
            f"{'es' if first > 1 else ''} {machine}{again}."
        )
    starved = [r["clients"] for r in rows if r["client_bottleneck_kind"] == "starved"]
    why = (
        f": at {_counts(starved)} clients they were starved of CPU (late sends with their "
        "event loops mostly idle), not busy"
        if starved
        else ""
    )
    most = max(r["clients"] for r in rows)
    return f"client-bottleneck did not disappear up to {most} clients {machine}{why}."


def _counts(counts: Sequence[int]) -> str:
    words = [str(c) for c in counts]
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


LEGEND: Final = """\
achieved: answers per second; sent: sends per second of the measured schedule; late: sends
more than {late:g} ms after their scheduled time; dropped: not sent (the in-flight bound) or
unanswered at the end; p50/p99: latency from the scheduled send.
client-bottleneck (busy): a client's event loop used over {limit:.0%} of a core, or its sends
were late while it used over {starved:.0%}; (starved): late sends while the loop used under
{starved:.0%} of a core, i.e. other processes had the CPU. client CPU: the busiest client
process's CPU seconds per second (1.0 = a core). nginx us/req: nginx's CPU time per request
it answered (warm-up included)."""


def run(args: argparse.Namespace) -> dict[str, Any]:
    nginx = find_nginx()
    cores = len(os.sched_getaffinity(0))
    workers = args.nginx_workers or cores
    load_before = os.getloadavg()[0]
    if load_before > BUSY_LOAD:
        print(
            f"warning: load average {load_before:.2f} before the run: other processes share "
            "these cores, so the numbers will be lower and noisier than on an idle machine"
        )
    rows: list[dict[str, Any]] = []
    with (
        tempfile.TemporaryDirectory(prefix="bakeoff-saturation-") as tmp,
        nginx_oip_endpoint(nginx, Path(tmp) / "nginx", workers) as endpoint,
    ):
        print(
            f"endpoint: nginx, {workers} worker processes, canned OIP answers for model "
            f"'{MODEL}' (UINT8 [1, 3, 224, 224] requests, 150,528 B of pixels)"
        )
        print(
            f"rate: {args.rate:g} req/s {args.arrival}, {args.seconds:g} s measured after "
            f"1 s of warm-up, at most {args.max_in_flight} in flight; {cores} cores"
        )
        for clients in args.clients:
            print(f"  {clients} client process(es) ...", flush=True)
            rows.append(run_point(args, endpoint, clients))

    print()
    print(table(rows))
    print()
    print(
        LEGEND.format(
            late=rows[0]["late_threshold_ms"],
            limit=bench_flags.CLIENT_CPU_LIMIT,
            starved=bench_flags.STARVED_BELOW,
        )
    )
    sentence = conclusion(rows, cores)
    print()
    print(sentence)
    return {
        "machine": {
            "cpus": cores,
            "platform": platform.platform(),
            "python": platform.python_version(),
            "nginx": bench_tools.tool_version([nginx, "-v"]),
            "load_average_before": load_before,
            "load_average_after": os.getloadavg()[0],
        },
        "endpoint": f"nginx, {workers} worker processes, canned OIP answers (return 200)",
        "request": {"model": MODEL, "datatype": "UINT8", "shape": [1, 3, 224, 224]},
        "rate": {
            "requests_per_second": args.rate,
            "arrival": args.arrival,
            "duration_seconds": args.seconds,
            "warmup_seconds": 1,
            "max_in_flight": args.max_in_flight,
        },
        "points": rows,
        "conclusion": sentence,
    }


def _client_counts(text: str) -> list[int]:
    counts = [int(part) for part in text.split(",") if part.strip()]
    if not counts or any(not 1 <= c <= 16 for c in counts):
        raise argparse.ArgumentTypeError(f"client counts between 1 and 16, got {text!r}")
    return counts


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Open-loop rate vs client processes: when does client-bottleneck go?"
    )
    parser.add_argument("--rate", type=float, default=DEFAULT_RATE, help="requested req/s")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured s per run")
    parser.add_argument(
        "--clients",
        type=_client_counts,
        default=list(DEFAULT_CLIENTS),
        help="client process counts, comma-separated (default 1,2,4)",
    )
    parser.add_argument("--arrival", choices=[a.value for a in Arrival], default="constant")
    parser.add_argument(
        "--max-in-flight",
        type=int,
        default=DEFAULT_MAX_IN_FLIGHT,
        help="sends due while this many are in flight are dropped (split among the clients)",
    )
    parser.add_argument(
        "--nginx-workers", type=int, default=0, help="nginx worker processes (0: one per core)"
    )
    parser.add_argument("--out", type=Path, default=Path("results/bench/saturation.json"))
    return parser.parse_args()


def main() -> int:
    # ValueError: a config pydantic refuses (e.g. --rate above its bound).
    return bench_tools.main_writing_report(_parse_args(), run, (oip.BenchError, ValueError))


if __name__ == "__main__":
    sys.exit(main())
