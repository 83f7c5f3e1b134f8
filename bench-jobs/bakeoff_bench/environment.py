"""Where the client ran: recorded with every result (docs/architecture.md §2, rule 5).

A load generator short of CPU measures itself, not the server; the client's cores and CPU
model let the report flag that. GPUs, driver and CUDA come from `nvidia-smi` where the load
generator runs (the local runner shares the machine with the backend; in a cluster the Job
runs off the GPU node, so the operator may pass the backend's node and images through
BAKEOFF_SERVER_NODE and BAKEOFF_IMAGE_<ROLE> variables). Called once per run by `runner`;
the parsers are pure and tested on captured output.
"""

from __future__ import annotations

import math
import os
import platform
import re
import shutil
import socket
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Final

from bakeoff_bench.results import Environment

PACKAGES: Final = ("bakeoff", "aiohttp", "numpy", "pydantic", "orjson", "prometheus-client")
NVIDIA_SMI_TIMEOUT_S: Final = 10.0
IMAGE_PREFIX: Final = "BAKEOFF_IMAGE_"


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    try:
        for line in cpuinfo.read_text(errors="replace").splitlines():
            # x86 says "model name"; some ARM kernels only give "Hardware" or "CPU part".
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Hardware") and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _cgroup_cpu_limit(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    # A pod's CPU limit is a CFS quota, invisible to os.cpu_count(); read it from the cgroup
    # (v2 first, then v1) so the result states the cores the client could really use.
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        if quota != "max":
            return int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        if quota_us > 0 and period_us > 0:
            return quota_us / period_us
    except (OSError, ValueError):
        pass
    return None


def usable_cores() -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cores = cores or 1
    limit = _cgroup_cpu_limit()
    if limit is not None:
        cores = min(cores, max(1, math.ceil(limit)))
    return cores


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str]:
    versions: dict[str, str] = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue  # e.g. bakeoff_bench copied into an image without the bakeoff dist
    return versions


@dataclass(frozen=True)
class GpuInfo:
    model: str = "none"
    count: int = 0
    driver: str | None = None
    cuda: str | None = None


def parse_gpu_query(text: str) -> GpuInfo:
    """`nvidia-smi --query-gpu=name,driver_version --format=csv,noheader` output."""
    rows = [line.rsplit(",", 1) for line in text.splitlines() if "," in line]
    names = [name.strip() for name, _ in rows]
    drivers = sorted({driver.strip() for _, driver in rows})
    if not names:
        return GpuInfo()
    distinct = list(dict.fromkeys(names))  # keeps order, drops repeats
    model = distinct[0] if len(distinct) == 1 else " + ".join(distinct)
    return GpuInfo(model=model, count=len(names), driver=", ".join(drivers) or None)


def parse_cuda_version(text: str) -> str | None:
    """The 'CUDA Version: 12.4' of plain `nvidia-smi`: the newest CUDA the driver supports."""
    match = re.search(r"CUDA Version:\s*([0-9][0-9.]*)", text)
    return match.group(1) if match else None


def _run(command: list[str]) -> str | None:
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=NVIDIA_SMI_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def gpu_info() -> GpuInfo:
    """GPUs visible here; model "none" where there is no nvidia-smi or it finds no GPU."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return GpuInfo()
    query = _run([smi, "--query-gpu=name,driver_version", "--format=csv,noheader"])
    info = parse_gpu_query(query or "")
    if info.count == 0:
        return info
    plain = _run([smi])
    return GpuInfo(info.model, info.count, info.driver, parse_cuda_version(plain or ""))


def image_refs(environ: Mapping[str, str]) -> dict[str, str]:
    """BAKEOFF_IMAGE_SERVER=ref -> {"server": ref}: images the operator says it ran."""
    return {
        key.removeprefix(IMAGE_PREFIX).lower(): value
        for key, value in sorted(environ.items())
        if key.startswith(IMAGE_PREFIX) and value
    }


def collect_environment(seed: int | None = None) -> Environment:
    gpu = gpu_info()
    return Environment(
        hostname=socket.gethostname(),
        client_cpu=cpu_model(),
        client_cores=usable_cores(),
        python=platform.python_version(),
        packages=package_versions(),
        # Set from the downward API in the benchmark Job: proves the client ran off the
        # backend's node.
        node=os.environ.get("BAKEOFF_NODE_NAME") or None,
        os=platform.platform(),
        gpu_model=gpu.model,
        gpu_count=gpu.count,
        gpu_driver=gpu.driver,
        cuda_version=gpu.cuda,
        seed=seed,
        server_node=os.environ.get("BAKEOFF_SERVER_NODE") or None,
        images=image_refs(os.environ),
    )
