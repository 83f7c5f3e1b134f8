"""`make bench`: Bakeoff's load generator beside Triton's own, perf_analyzer, on one server.

A peer cross-check: both drive the same tritonserver (the one bundled in the nvidia-pytriton
wheel, its Python backend running the ViT-tiny image tower through ONNX Runtime on CPU, with
dynamic batching) in a closed loop at the same concurrency levels, and the table puts their
numbers side by side: throughput, p50, p99, the server's queue and compute time per request,
the executed batch (images per model execution, from Triton's counters scraped around each
run), and the time spent outside the server, the same way for both: the client's mean latency
less the server's request time from Triton's counters (the client, loopback and the HTTP
frontend). perf_analyzer's own "client send" plus "client recv" is shown beside it. Inputs:
Bakeoff sends its seeded images, perf_analyzer its random data of the same shape (the model's
cost does not depend on them).

perf_analyzer comes from the tritonclient 2.51.0 manylinux wheel (`bin/perf_analyzer`; PyPI's
`perf-analyzer` is an empty placeholder); it links libb64 (Debian's libb64-0d) and
libcudart.so.12 (PyPI's nvidia-cuda-runtime-cu12), both fetched here once into
~/.cache/bakeoff/perf-analyzer.

    python benchmarks/peer_check.py [--levels 1,4,8] [--requests 400] [--out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Final

import aiohttp

from bakeoff_bench import runner, server_metrics
from bakeoff_bench.config import BenchConfig
from bakeoff_serve import launch, model, onnx_export, process, triton_repo
from bakeoff_serve.options import ExecutionProvider

TRITONCLIENT: Final = "tritonclient==2.51.0"
CUDA_RUNTIME: Final = "nvidia-cuda-runtime-cu12"
BUILTIN: Final = "vit-tiny-clip"
MODEL_NAME: Final = "clip-tiny"
MAX_QUEUE_DELAY_US: Final = 500
CACHE = Path(os.environ.get("BAKEOFF_CACHE", Path.home() / ".cache" / "bakeoff"))


@dataclass(frozen=True)
class Point:
    tool: str
    concurrency: int
    inferences_per_s: float
    p50_ms: float
    p99_ms: float
    queue_ms: float | None
    compute_ms: float | None
    executed_batch: float | None
    outside_server_ms: float | None  # the client's mean less the server's request time
    tool_client_ms: float | None  # perf_analyzer's own "client send" + "client recv"


def fetch_perf_analyzer() -> tuple[Path, dict[str, str]]:
    """perf_analyzer and the environment it runs in (libraries fetched once)."""
    home = CACHE / "perf-analyzer"
    binary = home / "perf_analyzer"
    libs = home / "lib"
    if not binary.is_file() or not any(libs.glob("libcudart.so.12*")):
        home.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", tmp,
                 TRITONCLIENT, CUDA_RUNTIME],
                check=True,
            )  # fmt: skip
            for wheel in Path(tmp).glob("*.whl"):
                with zipfile.ZipFile(wheel) as archive:
                    for name in archive.namelist():
                        if name.endswith("/bin/perf_analyzer"):
                            binary.write_bytes(archive.read(name))
                            binary.chmod(0o755)
                        elif "/cuda_runtime/lib/libcudart.so" in name:
                            libs.mkdir(exist_ok=True)
                            (libs / Path(name).name).write_bytes(archive.read(name))
    if (
        shutil.which("dpkg")
        and subprocess.run(["dpkg", "-s", "libb64-0d"], capture_output=True, check=False).returncode
    ):
        print("==> installing libb64-0d (Debian) for perf_analyzer", file=sys.stderr)
        subprocess.run(["apt-get", "install", "-y", "-qq", "libb64-0d"], check=True,
                       capture_output=True)  # fmt: skip
    env = {**os.environ, "LD_LIBRARY_PATH": str(libs)}
    return binary, env


def run_perf_analyzer(
    binary: Path, env: dict[str, str], http_port: int, metrics_url: str, level: int,
    requests: int, workdir: Path,
) -> Point:  # fmt: skip
    out = workdir / f"perf-analyzer-c{level}.csv"
    command = [
        str(binary), "-m", MODEL_NAME, "-u", f"127.0.0.1:{http_port}", "-i", "http", "-b", "1",
        f"--concurrency-range={level}:{level}", "--measurement-mode=count_windows",
        f"--measurement-request-count={requests}", "--stability-percentage=10",
        "--max-trials=10", "--percentile=50", "-f", str(out),
    ]  # fmt: skip
    before = asyncio.run(_scrape(metrics_url))
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    after = asyncio.run(_scrape(metrics_url))
    if done.returncode != 0:
        raise RuntimeError(f"perf_analyzer failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    with out.open() as handle:
        row = next(csv.DictReader(handle))
    us = {key: float(value) for key, value in row.items() if value not in ("", None)}
    times = server_metrics.diff_server_times(before, after)
    return Point(
        tool="perf_analyzer",
        concurrency=level,
        inferences_per_s=us["Inferences/Second"],
        p50_ms=us["p50 latency"] / 1000,
        p99_ms=us["p99 latency"] / 1000,
        queue_ms=us["Server Queue"] / 1000,
        compute_ms=sum(us[f"Server Compute {phase}"] for phase in ("Input", "Infer", "Output"))
        / 1000,
        executed_batch=times.executed_batch if times else None,
        outside_server_ms=_mean_latency_us(us) / 1000 - times.request_ms if times else None,
        tool_client_ms=(us["Client Send"] + us["Client Recv"]) / 1000,
    )


def _mean_latency_us(us: dict[str, float]) -> float:
    """perf_analyzer's mean latency, as the sum of the parts its CSV splits it into."""
    parts = ("Client Send", "Network+Server Send/Recv", "Server Queue", "Server Compute Input",
             "Server Compute Infer", "Server Compute Output", "Client Recv")  # fmt: skip
    return sum(us[part] for part in parts)


async def _scrape(metrics_url: str) -> server_metrics.MetricsSnapshot:
    async with aiohttp.ClientSession() as session:
        return await server_metrics.scrape(session, metrics_url, MODEL_NAME)


def run_bakeoff(http_port: int, metrics_url: str, levels: list[int], requests: int) -> list[Point]:
    config = BenchConfig.model_validate({
        "suite": "peer-check", "backend": "triton", "pool": "local",
        "target": {"httpUrl": f"http://127.0.0.1:{http_port}", "metricsUrl": metrics_url,
                   "modelName": MODEL_NAME},
        "single": None, "batchSweep": None, "parityBatch": 0,
        "concurrencySweep": {"levels": levels, "batchSizes": [1], "requests": requests,
                             "warmup": max(20, requests // 10)},
    })  # fmt: skip
    result = asyncio.run(runner.run_bench(config, lambda _line: None))
    points = []
    for scenario in result.concurrency_sweep:
        server = scenario.server
        points.append(
            Point(
                tool="bakeoff",
                concurrency=scenario.concurrency,
                inferences_per_s=scenario.inferences_per_s,
                p50_ms=scenario.latency.p50_ms,
                p99_ms=scenario.latency.p99_ms,
                queue_ms=server.queue_ms if server else None,
                compute_ms=server.compute_ms if server else None,
                executed_batch=server.executed_batch if server else None,
                outside_server_ms=scenario.latency.mean_ms - server.request_ms if server else None,
                tool_client_ms=None,
            )
        )
    return points


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def table(points: list[Point]) -> str:
    header = (
        f"{'c':>3} {'tool':<14}{'img/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'queue ms':>10}"
        f"{'compute ms':>12}{'exec batch':>12}{'outside ms':>12}{'PA client ms':>14}"
    )
    lines = [header]
    for p in sorted(points, key=lambda p: (p.concurrency, p.tool)):
        lines.append(
            f"{p.concurrency:>3} {p.tool:<14}{p.inferences_per_s:>9.1f}{p.p50_ms:>9.2f}"
            f"{p.p99_ms:>9.2f}{_num(p.queue_ms, '.3f'):>10}{_num(p.compute_ms, '.3f'):>12}"
            f"{_num(p.executed_batch, '.2f'):>12}{_num(p.outside_server_ms, '.3f'):>12}"
            f"{_num(p.tool_client_ms, '.3f'):>14}"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", default="1,4,8")
    parser.add_argument("--requests", type=int, default=400, help="per level (and per window)")
    parser.add_argument("--out", type=Path, default=Path("results/bench/peer_check.json"))
    args = parser.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    binary, env = fetch_perf_analyzer()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        config = model.BUILTIN_MODELS[BUILTIN]
        onnx = onnx_export.prepare_onnx(BUILTIN, None, 0, CACHE / "onnx")
        repo = work / "repo"
        options = triton_repo.TritonModelOptions(
            model_name=MODEL_NAME, image_size=config.image_size, embed_dim=config.embed_dim,
            max_batch_size=8, execution_provider=ExecutionProvider.CPU,
            preferred_batch_sizes=(4, 8), max_queue_delay_us=MAX_QUEUE_DELAY_US,
            warmup_batch_sizes=(1,),
        )  # fmt: skip
        triton_repo.write_python_backend_repository(repo, options, onnx)
        http_port, grpc_port, metrics_port = (process.free_port() for _ in range(3))
        command = launch.triton_server_command(repo, http_port, grpc_port, metrics_port,
                                               cache_dir=CACHE)  # fmt: skip
        metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        print(
            f"==> tritonserver (bundled, python backend, ONNX Runtime CPU, {BUILTIN}, "
            f"dynamic batching {MAX_QUEUE_DELAY_US} us) on :{http_port}",
            file=sys.stderr,
        )
        with process.running_server(command, work / "tritonserver.log", ready_timeout_s=180):
            points = run_bakeoff(http_port, metrics_url, levels, args.requests)
            for level in levels:
                points.append(run_perf_analyzer(binary, env, http_port, metrics_url, level,
                                                args.requests, work))  # fmt: skip
    print("\nBakeoff vs perf_analyzer, same tritonserver, closed loop, batch 1:")
    print(table(points))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps([asdict(p) for p in points], indent=2) + "\n")
    print(f"\n{args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
