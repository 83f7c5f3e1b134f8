"""Where the client ran: recorded with every result (DESIGN §2, rule 5).

A load generator short of CPU measures itself, not the server; the client's cores and CPU
model let the report flag that. Called once per run by `runner`.
"""

from __future__ import annotations

import math
import os
import platform
import socket
from importlib import metadata
from pathlib import Path
from typing import Final

from bakeoff_bench.results import Environment

PACKAGES: Final = ("bakeoff", "aiohttp", "numpy", "pydantic", "orjson")


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


def collect_environment() -> Environment:
    return Environment(
        hostname=socket.gethostname(),
        client_cpu=cpu_model(),
        client_cores=usable_cores(),
        python=platform.python_version(),
        packages=package_versions(),
        # Set from the downward API in the benchmark Job: proves the client ran off the
        # backend's node.
        node=os.environ.get("BAKEOFF_NODE_NAME") or None,
    )
