"""The official tritonclient against the REAL tritonserver serving our Python-backend model.

Proves, on loopback: the bundled Triton answers HTTP (binary and JSON) and gRPC, the model
it serves is the PyTorch reference (cosine per row), its nv_inference_* metrics count what
was sent, dynamic batching really merges concurrent requests, and a GPU provider asked for
on a CPU machine fails the start instead of quietly running on CPU.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from prometheus_client.parser import text_string_to_metric_families
from triton_fixtures import (
    TritonServer,
    free_ports,
    triton_cache_dir,
    triton_install,
    triton_onnx,
    triton_server,
)

from bakeoff_serve import launch, model, process, triton_repo, tritonserver
from bakeoff_serve.options import ExecutionProvider

pytestmark = pytest.mark.protocol

# Re-exported fixtures (pytest finds fixtures by module attribute).
__all__ = ["triton_cache_dir", "triton_install", "triton_onnx", "triton_server"]

IMAGE_SIZE = model.BUILTIN_MODELS["vit-tiny-clip"].image_size
EMBED_DIM = model.BUILTIN_MODELS["vit-tiny-clip"].embed_dim


@pytest.fixture(scope="module")
def http_client(triton_server: TritonServer) -> Iterator[httpclient.InferenceServerClient]:
    client = httpclient.InferenceServerClient(triton_server.http_url, network_timeout=60.0)
    yield client
    client.close()  # an open keep-alive connection would hold the server's shutdown


@pytest.fixture(scope="module")
def grpc_client(triton_server: TritonServer) -> Iterator[grpcclient.InferenceServerClient]:
    client = grpcclient.InferenceServerClient(triton_server.grpc_url)
    yield client
    client.close()


@pytest.fixture(scope="module")
def reference_model(triton_server: TritonServer) -> torch.nn.Module:
    net, _ = model.build_model(triton_server.builtin, None, triton_server.seed)
    return net


def seeded_pixels(batch: int, seed: int = 7) -> np.ndarray:
    return np.random.default_rng(seed).random((batch, 3, IMAGE_SIZE, IMAGE_SIZE), np.float32)


def scrape(server: TritonServer, metric: str) -> float:
    """One nv_inference_* counter for the test model, from the metrics port."""
    import urllib.request

    with urllib.request.urlopen(server.metrics_url, timeout=10) as response:
        text = response.read().decode()
    # Match the family: prometheus_client's parser renames counter samples to `<name>_total`.
    values = [
        sample.value
        for family in text_string_to_metric_families(text)
        if family.name == metric
        for sample in family.samples
        if sample.labels.get("model") == server.model_name
    ]
    assert len(values) == 1, f"{metric} for {server.model_name}: {values}"
    return values[0]


def http_infer(
    client: httpclient.InferenceServerClient, name: str, pixels: np.ndarray, binary: bool
) -> np.ndarray:
    request = httpclient.InferInput(model.INPUT_NAME, list(pixels.shape), "FP32")
    request.set_data_from_numpy(pixels, binary_data=binary)
    output = httpclient.InferRequestedOutput(model.OUTPUT_NAME, binary_data=binary)
    result = client.infer(name, [request], outputs=[output])
    embeddings: np.ndarray | None = result.as_numpy(model.OUTPUT_NAME)
    assert embeddings is not None
    return embeddings


def grpc_infer(
    client: grpcclient.InferenceServerClient, name: str, pixels: np.ndarray
) -> np.ndarray:
    request = grpcclient.InferInput(model.INPUT_NAME, list(pixels.shape), "FP32")
    request.set_data_from_numpy(pixels)
    embeddings: np.ndarray | None = client.infer(name, [request]).as_numpy(model.OUTPUT_NAME)
    assert embeddings is not None
    return embeddings


def test_server_metadata_says_triton_and_the_probed_version(
    triton_server: TritonServer,
    triton_install: tritonserver.TritonInstall,
    http_client: httpclient.InferenceServerClient,
    grpc_client: grpcclient.InferenceServerClient,
) -> None:
    over_http = http_client.get_server_metadata()
    over_grpc = grpc_client.get_server_metadata()
    assert over_http["name"] == over_grpc.name == "triton"
    assert over_http["version"] == over_grpc.version == triton_install.version
    assert "binary_tensor_data" in over_http["extensions"]
    assert http_client.is_server_ready() and grpc_client.is_model_ready(triton_server.model_name)


def test_model_metadata_and_config_describe_the_model_and_its_runtime(
    triton_server: TritonServer,
    http_client: httpclient.InferenceServerClient,
    grpc_client: grpcclient.InferenceServerClient,
) -> None:
    metadata = http_client.get_model_metadata(triton_server.model_name)
    assert metadata["inputs"] == [
        {"name": model.INPUT_NAME, "datatype": "FP32", "shape": [-1, 3, IMAGE_SIZE, IMAGE_SIZE]}
    ]
    assert metadata["outputs"] == [
        {"name": model.OUTPUT_NAME, "datatype": "FP32", "shape": [-1, EMBED_DIM]}
    ]
    grpc_metadata = grpc_client.get_model_metadata(triton_server.model_name)
    assert list(grpc_metadata.inputs[0].shape) == [-1, 3, IMAGE_SIZE, IMAGE_SIZE]

    import onnxruntime

    http_config = http_client.get_model_config(triton_server.model_name)
    grpc_config = grpc_client.get_model_config(triton_server.model_name, as_json=True)["config"]
    for config in (http_config, grpc_config):
        assert config["backend"] == "python"
        assert int(config["max_batch_size"]) == triton_server.max_batch_size
        batching = config["dynamic_batching"]
        assert [int(b) for b in batching["preferred_batch_size"]] == list(
            triton_server.preferred_batch_sizes
        )
        assert int(batching["max_queue_delay_microseconds"]) == triton_server.max_queue_delay_us
        assert config["parameters"]["runtime"]["string_value"] == (
            f"onnxruntime {onnxruntime.__version__} CPUExecutionProvider via Triton python backend"
        )


@pytest.mark.parametrize("transport", ["http-binary", "http-json", "grpc"])
def test_embeddings_agree_with_the_pytorch_model(
    transport: str,
    triton_server: TritonServer,
    http_client: httpclient.InferenceServerClient,
    grpc_client: grpcclient.InferenceServerClient,
    reference_model: torch.nn.Module,
) -> None:
    pixels = seeded_pixels(4)
    if transport == "grpc":
        got = grpc_infer(grpc_client, triton_server.model_name, pixels)
    else:
        binary = transport == "http-binary"
        got = http_infer(http_client, triton_server.model_name, pixels, binary)
    with torch.inference_mode():
        expected = reference_model(torch.from_numpy(pixels)).numpy()

    assert got.shape == (4, EMBED_DIM) and got.dtype == np.float32
    cosine = np.sum(got * expected, axis=1) / (
        np.linalg.norm(got, axis=1) * np.linalg.norm(expected, axis=1)
    )
    assert np.all(cosine >= 0.999), cosine
    # Different rows must differ: a server that answered every row alike would pass above
    # only by luck, and this catches a stub that reads zeros instead of the request data.
    assert not np.allclose(got[0], got[1])


def test_metrics_count_exactly_the_images_sent(
    triton_server: TritonServer, http_client: httpclient.InferenceServerClient
) -> None:
    # Diffs, not totals: Triton counts the model_warmup inferences too.
    images_before = scrape(triton_server, "nv_inference_count")
    requests_before = scrape(triton_server, "nv_inference_request_success")
    for batch in (1, 2, 3):
        http_infer(http_client, triton_server.model_name, seeded_pixels(batch), binary=True)
    assert scrape(triton_server, "nv_inference_count") - images_before == 6
    assert scrape(triton_server, "nv_inference_request_success") - requests_before == 3


def test_dynamic_batching_merges_concurrent_requests(
    triton_server: TritonServer, grpc_client: grpcclient.InferenceServerClient
) -> None:
    # gRPC async_infer, because its sends really overlap; tritonclient.http's gevent pool
    # puts ~10 ms between 600 KB requests here, so they would rarely meet in the queue.
    executions_before = scrape(triton_server, "nv_inference_exec_count")
    requests_before = scrape(triton_server, "nv_inference_request_success")
    pixels = seeded_pixels(1)
    sent = 16
    results: list[tuple[object, object]] = []
    lock = threading.Lock()
    all_done = threading.Event()

    def on_done(result: object, error: object) -> None:
        with lock:
            results.append((result, error))
            if len(results) == sent:
                all_done.set()

    for _ in range(sent):
        request = grpcclient.InferInput(model.INPUT_NAME, list(pixels.shape), "FP32")
        request.set_data_from_numpy(pixels)
        grpc_client.async_infer(triton_server.model_name, [request], on_done)
    assert all_done.wait(timeout=30), f"{len(results)} of {sent} answers after 30 s"

    assert [error for _, error in results if error is not None] == []
    requests = scrape(triton_server, "nv_inference_request_success") - requests_before
    executions = scrape(triton_server, "nv_inference_exec_count") - executions_before
    assert requests == sent
    assert executions < requests, f"{executions} model executions for {requests} requests"


def test_cuda_provider_on_a_cpu_machine_fails_the_start_and_names_the_provider(
    tmp_path: Path, triton_onnx: Path, triton_cache_dir: Path
) -> None:
    repo_dir = tmp_path / "repo"
    options = triton_repo.TritonModelOptions(
        model_name="clip-cuda",
        image_size=IMAGE_SIZE,
        embed_dim=EMBED_DIM,
        max_batch_size=4,
        execution_provider=ExecutionProvider.CUDA,
    )
    triton_repo.write_python_backend_repository(repo_dir, options, triton_onnx)
    command = launch.triton_server_command(repo_dir, *free_ports(3), cache_dir=triton_cache_dir)
    log_path = tmp_path / "tritonserver.log"
    with (
        pytest.raises(process.ServerStartError, match="exited with code"),
        process.running_server(command, log_path, ready_timeout_s=60),
    ):
        pytest.fail("tritonserver became ready with a CUDA model on a machine without CUDA")
    log = log_path.read_text()
    assert "failed to load 'clip-cuda'" in log
    assert "executionProvider 'cuda' needs CUDAExecutionProvider" in log
    assert "available: " in log and "CPUExecutionProvider" in log
