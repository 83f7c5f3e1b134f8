"""Bakeoff's PyTorch server and the real tritonserver, side by side, as the product uses them.

The official tritonclient gets the same embeddings from both (the parity the bake-off relies
on), and Bakeoff's load generator measures both with exact request accounting.
"""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from conftest import PytorchServer
from triton_fixtures import TritonServer

from bakeoff_bench import config as bench_config
from bakeoff_bench import runner

pytestmark = pytest.mark.protocol


def same_model(pytorch: PytorchServer, triton: TritonServer) -> None:
    assert (pytorch.builtin, pytorch.seed) == (triton.builtin, triton.seed)


def embed_http(url: str, model: str, images: np.ndarray) -> np.ndarray:
    client = httpclient.InferenceServerClient(url)
    try:
        tensor = httpclient.InferInput("pixel_values", list(images.shape), "FP32")
        tensor.set_data_from_numpy(images, binary_data=True)
        result = client.infer(
            model,
            [tensor],
            outputs=[httpclient.InferRequestedOutput("embedding", binary_data=True)],
        )
        return np.asarray(result.as_numpy("embedding"))
    finally:
        client.close()


def embed_grpc(url: str, model: str, images: np.ndarray) -> np.ndarray:
    client = grpcclient.InferenceServerClient(url)
    try:
        tensor = grpcclient.InferInput("pixel_values", list(images.shape), "FP32")
        tensor.set_data_from_numpy(images)
        result = client.infer(model, [tensor])
        return np.asarray(result.as_numpy("embedding"))
    finally:
        client.close()


def row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_pytorch_server_and_tritonserver_return_the_same_embeddings(
    pytorch_server: PytorchServer, triton_server: TritonServer
) -> None:
    same_model(pytorch_server, triton_server)
    images = np.random.default_rng(7).random((4, 3, 224, 224), dtype=np.float32)
    from_pytorch = embed_http(pytorch_server.http_url, pytorch_server.model_name, images)
    from_triton = embed_http(triton_server.http_url, triton_server.model_name, images)
    from_triton_grpc = embed_grpc(triton_server.grpc_url, triton_server.model_name, images)
    from_pytorch_grpc = embed_grpc(pytorch_server.grpc_url, pytorch_server.model_name, images)
    assert from_pytorch.shape == from_triton.shape == (4, 512)
    assert np.all(row_cosines(from_pytorch, from_triton) >= 0.999)
    assert np.all(row_cosines(from_pytorch_grpc, from_triton_grpc) >= 0.999)
    assert np.max(np.abs(from_pytorch - from_triton)) < 1e-4


@pytest.mark.parametrize("backend", ["pytorch", "triton"])
async def test_load_generator_measures_each_backend_with_exact_accounting(
    backend: str, pytorch_server: PytorchServer, triton_server: TritonServer
) -> None:
    if backend == "pytorch":
        http = f"http://{pytorch_server.http_url}"
        target = bench_config.Target(
            http_url=http, metrics_url=f"{http}/metrics", model_name=pytorch_server.model_name
        )
    else:
        target = bench_config.Target(
            http_url=f"http://{triton_server.http_url}",
            metrics_url=triton_server.metrics_url,
            model_name=triton_server.model_name,
        )
    config = bench_config.BenchConfig(
        suite="protocol", backend=backend, pool="local", target=target,
        single=bench_config.SingleScenario(requests=25, warmup=5),
        batch_sweep=bench_config.BatchSweepScenario(batch_sizes=[1, 4], requests=6, warmup=2),
    )  # fmt: skip
    messages: list[str] = []
    result = await runner.run_bench(config, messages.append)
    assert result.server.name == ("bakeoff-pytorch" if backend == "pytorch" else "triton")
    assert result.server.runtime, "the runtime that served the numbers must be recorded"
    assert result.single is not None
    assert result.single.requests == 25 and result.single.failed == 0
    assert result.single.server is not None
    assert result.single.server.requests == 25  # warm-up is outside the measured window
    assert result.single.server.inferences == 25
    sweep = {s.batch_size: s for s in result.batch_sweep}
    assert sweep[4].server is not None and sweep[4].server.inferences == 24
    assert sweep[4].inferences_per_s == pytest.approx(sweep[4].requests_per_s * 4)
    assert result.parity_outputs is not None and len(result.parity_outputs) == 2
    assert any(m.startswith("single b=1 c=1: 25 ok") for m in messages)
