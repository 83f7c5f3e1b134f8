"""`make bench`: is Bakeoff's load generator fast enough not to be what a benchmark measures?

One run on loopback, one core for the endpoint and the other for the client under test:

1. nginx (`return 200`, small fixed body) pinned to the server core. nginx because it is
   a C event loop that answers a keep-alive POST in a few microseconds: it is not what
   limits a Python client, and it is the same endpoint for every tool.
2. At saturation (`--concurrency` connections, `--duration` seconds), each client pinned
   to the client core: Bakeoff's load generator (its real closed-loop path), wrk (one
   thread), locust (FastHttpUser, headless, one process). Same request bytes for all.
3. With one request in flight: the load generator and wrk. wrk is a C client that does
   nothing but write, epoll and read, so the difference of the two p50s is what Bakeoff's
   Python stack adds to every measured latency (nginx's own time is in both and cancels).

It prints a table and the targets with PASS/FAIL, and writes the numbers to --out. It
asserts nothing: numbers vary by machine; the JSON records which machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any, Final

import bench_tools
from bench_tools import Measured

from bakeoff_bench import payloads

HERE: Final = Path(__file__).resolve().parent
MODEL: Final = "bench"
INFER_PATH: Final = f"/v2/models/{MODEL}/infer"
# A batch-1 OIP binary infer of a small image: big enough to be a real request with a JSON
# header and a tensor, small enough that the client's per-request cost, not the loopback
# copy of a 600 KB CLIP input, is what the rate shows.
IMAGE_SHAPE: Final = [1, 3, 16, 16]
SEED: Final = 0
BUSY_LOAD: Final = 0.5  # 1-minute load average above which the machine is not idle
TARGET_VS_LOCUST: Final = 1.5
TARGET_VS_WRK: Final = 1 / 3
TARGET_ADDED_P50_US: Final = 200.0
ADDED_DEFINITION: Final = (
    "added p50 = p50 of Bakeoff's load generator minus p50 of wrk, each with one request "
    "in flight against the same nginx endpoint, same request bytes, same cores; nginx's "
    "own time and the loopback round trip are in both and cancel"
)


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Bakeoff's load generator vs wrk and locust")
    parser.add_argument("--concurrency", type=int, default=64, help="connections / users")
    parser.add_argument("--duration", type=int, default=10, help="seconds per saturation run")
    parser.add_argument("--latency-duration", type=int, default=4, help="seconds per c=1 run")
    parser.add_argument("--out", type=Path, default=Path("results/bench/loadgen.json"))
    return parser.parse_args()


def _cores() -> tuple[int, int]:
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        raise bench_tools.ToolError(
            f"needs two cores (one for the endpoint, one for the client); this process has {cores}"
        )
    return cores[0], cores[1]


def _run_loadgen(
    core: int, url: str, body: Path, headers: dict[str, str], concurrency: int, duration: int
) -> Measured:
    command = [
        sys.executable, str(HERE / "loadgen_client.py"), "--url", url, "--body", str(body),
        "--headers", json.dumps(headers), "--concurrency", str(concurrency),
        "--duration", str(duration),
    ]  # fmt: skip
    done = bench_tools.run_bounded(bench_tools.pinned(core, command), duration + 60)
    if done.returncode != 0:
        raise bench_tools.ToolError(f"the load generator failed:\n{done.output}")
    measured = json.loads(done.output.strip().splitlines()[-1])
    if measured["error_kinds"]:
        print(f"  load generator errors: {measured['error_kinds']}", file=sys.stderr)
    return Measured(
        requests=measured["requests"],
        errors=measured["errors"],
        requests_per_s=measured["requests_per_s"],
        p50_ms=measured["p50_ms"],
        p99_ms=measured["p99_ms"],
    )


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else 0.0


def _table(rows: dict[str, Measured], wrk: Measured, locust: Measured | None) -> str:
    lines = [
        f"{'tool':<16}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'vs locust':>11}{'vs wrk':>8}"
        f"{'errors':>8}"
    ]
    for name, m in rows.items():
        vs_locust = f"{_ratio(m.requests_per_s, locust.requests_per_s):.2f}x" if locust else "-"
        lines.append(
            f"{name:<16}{m.requests_per_s:>10.0f}{m.p50_ms:>10.3f}{m.p99_ms:>10.3f}"
            f"{vs_locust:>11}{_ratio(m.requests_per_s, wrk.requests_per_s):>7.2f}x"
            f"{m.errors:>8}"
        )
    return "\n".join(lines)


def _verdict(passed: bool) -> str:
    return "PASS" if passed else "FAIL"


def run(args: argparse.Namespace) -> dict[str, Any]:
    tools = bench_tools.require_tools(Path(sys.executable).parent)
    server_core, client_core = _cores()
    load_before = os.getloadavg()[0]
    if load_before > BUSY_LOAD:
        print(
            f"warning: load average {load_before:.2f} before the run: other processes share "
            "these cores, so the numbers will be lower and noisier than on an idle machine"
        )
    payload = payloads.build_payload(
        "pixel_values", "embedding", payloads.seeded_images(SEED, IMAGE_SHAPE)
    )
    headers = dict(payload.headers)
    c, duration = args.concurrency, args.duration
    with tempfile.TemporaryDirectory(prefix="bakeoff-bench-") as tmp_name:
        tmp = Path(tmp_name)
        body_path = tmp / "body.bin"
        body_path.write_bytes(payload.body)
        script = bench_tools.wrk_script(tmp / "post.lua", body_path, headers)
        locust_env = {
            "BAKEOFF_BENCH_BODY": str(body_path),
            "BAKEOFF_BENCH_HEADERS": json.dumps(headers),
            "BAKEOFF_BENCH_PATH": INFER_PATH,
        }
        with bench_tools.nginx_endpoint(tools["nginx"], server_core, tmp / "nginx") as base:
            url = f"{base}{INFER_PATH}"
            print(f"endpoint: nginx on core {server_core}, clients on core {client_core}")
            print(f"saturation: {c} connections, {duration} s each")
            print("  bakeoff load generator ...", flush=True)
            ours = _run_loadgen(client_core, base, body_path, headers, c, duration)
            print("  wrk ...", flush=True)
            wrk = bench_tools.run_wrk(tools["wrk"], client_core, url, script, c, duration)
            print("  locust ...", flush=True)
            locust = bench_tools.run_locust(
                tools["locust"], client_core, base, HERE / "locustfile.py", c, duration,
                tmp, locust_env,
            )  # fmt: skip
            latency_s = args.latency_duration
            print(f"one request in flight, {latency_s} s each", flush=True)
            ours_c1 = _run_loadgen(client_core, base, body_path, headers, 1, latency_s)
            wrk_c1 = bench_tools.run_wrk(tools["wrk"], client_core, url, script, 1, latency_s)

    added_us = (ours_c1.p50_ms - wrk_c1.p50_ms) * 1000.0
    vs_locust = _ratio(ours.requests_per_s, locust.requests_per_s)
    vs_wrk = _ratio(ours.requests_per_s, wrk.requests_per_s)
    targets = [
        {"target": f"load generator >= {TARGET_VS_LOCUST:g}x locust's rate",
         "value": round(vs_locust, 3), "pass": vs_locust >= TARGET_VS_LOCUST},
        {"target": "load generator >= 1/3 of wrk's rate",
         "value": round(vs_wrk, 3), "pass": vs_wrk >= TARGET_VS_WRK},
        {"target": f"added p50 < {TARGET_ADDED_P50_US:g} us",
         "value": round(added_us, 1), "pass": added_us < TARGET_ADDED_P50_US},
    ]  # fmt: skip

    print()
    print(f"Saturation: {c} connections, {duration} s, {len(payload.body)} B POST body")
    print(_table({"bakeoff": ours, "wrk": wrk, "locust": locust}, wrk, locust))
    print("\nOne request in flight")
    print(_table({"bakeoff c=1": ours_c1, "wrk c=1": wrk_c1}, wrk_c1, None))
    print(f"\nadded p50: {added_us:.1f} us ({ADDED_DEFINITION})")
    print("locust reports percentiles in whole milliseconds.\n")
    for target in targets:
        print(f"  [{_verdict(bool(target['pass']))}] {target['target']}: {target['value']}")

    return {
        "machine": {
            "cpus": os.cpu_count(),
            "server_core": server_core,
            "client_core": client_core,
            "platform": platform.platform(),
            "python": platform.python_version(),
            "nginx": bench_tools.tool_version([tools["nginx"], "-v"]),
            "wrk": bench_tools.tool_version([tools["wrk"], "-v"]),
            "locust": bench_tools.tool_version([tools["locust"], "--version"]),
            "load_average_before": load_before,
            "load_average_after": os.getloadavg()[0],
        },
        "request": {
            "path": INFER_PATH,
            "shape": IMAGE_SHAPE,
            "body_bytes": len(payload.body),
            "headers": headers,
        },
        "endpoint": "nginx return 200, one process pinned to the server core",
        "concurrency": c,
        "duration_s": duration,
        "saturation": {"bakeoff": asdict(ours), "wrk": asdict(wrk), "locust": asdict(locust)},
        "one_in_flight": {"bakeoff": asdict(ours_c1), "wrk": asdict(wrk_c1)},
        "ratio_vs_locust": vs_locust,
        "ratio_vs_wrk": vs_wrk,
        "added_p50_us": added_us,
        "added_p50_definition": ADDED_DEFINITION,
        "targets": targets,
    }


def main() -> int:
    return bench_tools.main_writing_report(_parse_args(), run)


if __name__ == "__main__":
    sys.exit(main())
