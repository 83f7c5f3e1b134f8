"""Kind `onnxruntime`'s server on the CPU provider, as a real subprocess: the official
tritonclient over HTTP and gRPC gets the embeddings PyTorch computes, from FP32 and from
UINT8 input (the wire conversion is part of the exported graph), in every batch bucket."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from bakeoff_serve import launch, model, process

pytestmark = pytest.mark.protocol

BUILTIN = "vit-tiny-clip"
SIZE = model.BUILTIN_MODELS[BUILTIN].image_size


def start(tmp_path: Path, input_format: str, precision: str = "fp32") -> Iterator[tuple[str, str]]:
    http, grpc = process.free_port(), process.free_port()
    command = launch.pytorch_server_command(
        "clip-ort", BUILTIN, "cpu", precision, http, grpc, 8, [1], 0,
        options=[f"--input-format={input_format}", f"--cache-dir={tmp_path / 'cache'}"],
        engine="onnxruntime",
    )  # fmt: skip
    with process.running_server(command, tmp_path / "server.log", ready_timeout_s=180):
        yield f"127.0.0.1:{http}", f"127.0.0.1:{grpc}"


@pytest.fixture(scope="module")
def uint8_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    yield from start(tmp_path_factory.mktemp("ort-uint8"), "uint8")


def reference(pixels: np.ndarray) -> np.ndarray:
    net, _ = model.build_model(BUILTIN, None, 0)
    with torch.inference_mode():
        out: np.ndarray = net(torch.from_numpy(pixels.astype(np.float32) / 255)).numpy()
    return out


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    dots = np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return float(dots.min())


def test_metadata_names_the_engine(uint8_server: tuple[str, str]) -> None:
    http_url, _ = uint8_server
    client = httpclient.InferenceServerClient(http_url)
    try:
        assert client.get_server_metadata()["name"] == "bakeoff-onnxruntime"
        metadata = client.get_model_metadata("clip-ort")
        assert metadata["platform"] == "bakeoff_onnxruntime"
        assert metadata["inputs"][0]["datatype"] == "UINT8"
        runtime = client.get_model_config("clip-ort")["parameters"]["runtime"]["string_value"]
        assert runtime.startswith("onnxruntime ") and " cpu fp32" in runtime
    finally:
        client.close()


@pytest.mark.parametrize("rows", [1, 3, 8])  # buckets 1, 4 (padded) and 8; 4 and 8 not warmed
def test_uint8_over_http_and_grpc_equals_pytorch(uint8_server: tuple[str, str], rows: int) -> None:
    http_url, grpc_url = uint8_server
    pixels = np.random.default_rng(rows).integers(0, 256, (rows, 3, SIZE, SIZE), dtype=np.uint8)
    expected = reference(pixels)
    http = httpclient.InferenceServerClient(http_url)
    grpc = grpcclient.InferenceServerClient(grpc_url)
    try:
        http_in = httpclient.InferInput("pixel_values", list(pixels.shape), "UINT8")
        http_in.set_data_from_numpy(pixels, binary_data=True)
        via_http = http.infer("clip-ort", [http_in]).as_numpy("embedding")
        grpc_in = grpcclient.InferInput("pixel_values", list(pixels.shape), "UINT8")
        grpc_in.set_data_from_numpy(pixels)
        via_grpc = grpc.infer("clip-ort", [grpc_in]).as_numpy("embedding")
    finally:
        http.close()
        grpc.close()
    assert via_http is not None and via_grpc is not None
    np.testing.assert_allclose(via_http, expected, atol=1e-4)
    np.testing.assert_allclose(via_grpc, expected, atol=1e-4)


def test_fp16_on_the_cpu_provider_passes_the_parity_gate(tmp_path: Path) -> None:
    pixels = np.random.default_rng(9).integers(0, 256, (2, 3, SIZE, SIZE), dtype=np.uint8)
    for http_url, _ in start(tmp_path, "fp32", precision="fp16"):
        client = httpclient.InferenceServerClient(http_url)
        try:
            tensor = httpclient.InferInput("pixel_values", list(pixels.shape), "FP32")
            tensor.set_data_from_numpy(pixels.astype(np.float32) / 255, binary_data=True)
            got = client.infer("clip-ort", [tensor]).as_numpy("embedding")
        finally:
            client.close()
    assert got is not None
    assert min_cosine(got, reference(pixels)) >= 0.999
