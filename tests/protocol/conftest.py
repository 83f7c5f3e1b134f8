"""Fixtures that start Bakeoff's PyTorch OIP server as a real subprocess on free ports.

One server per test session (starting it imports torch and warms the model: seconds), shared
by every protocol test that asks for `pytorch_server`. Tests must leave it serving: each
bad-input test ends with a good infer.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from endpoints import LoopbackServer

from bakeoff_serve import launch, process


@dataclass(frozen=True)
class PytorchServer(LoopbackServer):
    log_path: Path


@pytest.fixture(scope="session")
def pytorch_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PytorchServer]:
    http_port = process.free_port()
    grpc_port = process.free_port()
    while grpc_port == http_port:
        grpc_port = process.free_port()
    server = PytorchServer(
        model_name="clip-tiny",
        builtin="vit-tiny-clip",
        seed=0,
        max_batch_size=8,
        http_port=http_port,
        grpc_port=grpc_port,
        log_path=tmp_path_factory.mktemp("pytorch-server") / "server.log",
    )
    command = launch.pytorch_server_command(
        model_name=server.model_name,
        builtin=server.builtin,
        device="cpu",
        precision="fp32",
        http_port=http_port,
        grpc_port=grpc_port,
        max_batch_size=server.max_batch_size,
        warmup_batch_sizes=[1, 4],
        seed=server.seed,
    )
    with process.running_server(command, server.log_path, ready_timeout_s=120):
        yield server


@pytest.fixture(scope="session")
def pytorch_http_client(
    pytorch_server: PytorchServer,
) -> Iterator[httpclient.InferenceServerClient]:
    client = httpclient.InferenceServerClient(pytorch_server.http_url, network_timeout=60.0)
    yield client
    client.close()


@pytest.fixture(scope="session")
def pytorch_grpc_client(
    pytorch_server: PytorchServer,
) -> Iterator[grpcclient.InferenceServerClient]:
    client = grpcclient.InferenceServerClient(pytorch_server.grpc_url)
    yield client
    client.close()


# The tritonserver fixtures live in their own module; importing them here shares them with
# every protocol test (and lets one test use both servers).
from triton_fixtures import (  # noqa: E402, F401
    TritonServer,
    triton_cache_dir,
    triton_install,
    triton_onnx,
    triton_server,
)
