"""Fixtures that serve the exported model from the REAL tritonserver (nvidia-pytriton wheel).

Import them into a test module or conftest (`from triton_fixtures import *` works because
pytest puts tests/protocol on sys.path). A missing wheel fails these fixtures with
"run `make venv`"; nothing here skips.

- `triton_install` (session): the located server, its version probed.
- `triton_onnx` (session): vit-tiny-clip exported to ONNX once, in a temporary cache.
- `triton_server` (module): a Python-backend repository for that file, served on free
  ports until the module's tests are done.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from endpoints import LoopbackServer

from bakeoff_serve import launch, model, onnx_export, process, triton_repo, tritonserver
from bakeoff_serve.options import ExecutionProvider

__all__ = [
    "TRITON_BUILTIN",
    "TRITON_MODEL_NAME",
    "TritonServer",
    "free_ports",
    "triton_cache_dir",
    "triton_install",
    "triton_onnx",
    "triton_server",
]

TRITON_MODEL_NAME = "clip-tiny"
TRITON_BUILTIN = "vit-tiny-clip"
TRITON_SEED = 0


@dataclass(frozen=True)
class TritonServer(LoopbackServer):
    preferred_batch_sizes: tuple[int, ...]
    max_queue_delay_us: int
    metrics_port: int
    repo_dir: Path
    log_path: Path
    time_to_ready_s: float

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"


def free_ports(count: int) -> list[int]:
    """`count` distinct free loopback ports."""
    ports: list[int] = []
    while len(ports) < count:
        port = process.free_port()
        if port not in ports:
            ports.append(port)
    return ports


@pytest.fixture(scope="session")
def triton_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private cache (ONNX exports, backend directory): tests never touch ~/.cache."""
    return tmp_path_factory.mktemp("bakeoff-cache")


@pytest.fixture(scope="session")
def triton_install() -> tritonserver.TritonInstall:
    return tritonserver.find_tritonserver()


@pytest.fixture(scope="session")
def triton_onnx(triton_cache_dir: Path) -> Path:
    return onnx_export.prepare_onnx(TRITON_BUILTIN, None, TRITON_SEED, triton_cache_dir / "onnx")


@pytest.fixture(scope="module")
def triton_server(
    tmp_path_factory: pytest.TempPathFactory,
    triton_install: tritonserver.TritonInstall,
    triton_onnx: Path,
    triton_cache_dir: Path,
) -> Iterator[TritonServer]:
    config = model.BUILTIN_MODELS[TRITON_BUILTIN]
    work = tmp_path_factory.mktemp("tritonserver")
    http_port, grpc_port, metrics_port = free_ports(3)
    max_batch_size, preferred, delay_us = 8, (4, 8), 20_000
    repo_dir = work / "repo"
    options = triton_repo.TritonModelOptions(
        model_name=TRITON_MODEL_NAME,
        image_size=config.image_size,
        embed_dim=config.embed_dim,
        max_batch_size=max_batch_size,
        execution_provider=ExecutionProvider.CPU,
        preferred_batch_sizes=preferred,
        # Long enough that concurrent requests reliably meet in one batch on a busy CI box.
        max_queue_delay_us=delay_us,
    )
    triton_repo.write_python_backend_repository(repo_dir, options, triton_onnx)
    command = launch.triton_server_command(
        repo_dir, http_port, grpc_port, metrics_port, cache_dir=triton_cache_dir
    )
    log_path = work / "tritonserver.log"
    with process.running_server(command, log_path, ready_timeout_s=120) as running:
        yield TritonServer(
            model_name=TRITON_MODEL_NAME,
            builtin=TRITON_BUILTIN,
            seed=TRITON_SEED,
            max_batch_size=max_batch_size,
            preferred_batch_sizes=preferred,
            max_queue_delay_us=delay_us,
            http_port=http_port,
            grpc_port=grpc_port,
            metrics_port=metrics_port,
            repo_dir=repo_dir,
            log_path=log_path,
            time_to_ready_s=running.time_to_ready_s,
        )
