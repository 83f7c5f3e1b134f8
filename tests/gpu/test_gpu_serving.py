"""The gpu tier (docs/architecture.md §7): correctness of the GPU serving paths on a real
CUDA device.

Run on the GPU machine with `make test-gpu`; it fails at once, loudly, where there is no
CUDA device (it is not part of `make test`, which CI runs on machines without one). Speed
is `make gpu-bench`'s business: nothing here times anything.
"""

from __future__ import annotations

import asyncio
import json
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from gpu_helpers import BUILTIN, MIN_COSINE, SIZE, infer, min_cosine, pixels

from bakeoff_bench import payloads
from bakeoff_serve import device_runner, engine, launch, model, process

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module", autouse=True)
def cuda() -> None:
    assert torch.cuda.is_available(), "the gpu tier needs a CUDA device: run it on the GPU machine"


def runner(precision: str, graphs: bool, fmt: str = "fp32") -> device_runner.DeviceRunner:
    net, _ = model.build_model(BUILTIN, None, 0)
    made = device_runner.DeviceRunner(
        net, device=torch.device("cuda", 0), precision=precision, input_format=fmt,
        max_batch_size=32, cuda_graphs=graphs,
    )  # fmt: skip
    made.warm([])
    return made


def fp16_server(options: list[str]) -> tuple[process.Command, str]:
    """Model `vit` in fp16 on cuda with these server flags, on free ports; and its URL."""
    http, grpc = process.free_port(), process.free_port()
    command = launch.pytorch_server_command(
        "vit", BUILTIN, "cuda", "fp16", http, grpc, 32, [1], 0, options=options
    )
    return command, f"http://127.0.0.1:{http}"


@pytest.fixture(scope="module")
def reference() -> np.ndarray[Any, Any]:
    """fp32 eager on 8 seeded images: what every other path is held to."""
    out, _ = runner("fp32", False).execute([pixels(8).astype(np.float32) / 255])
    return out


def test_fp32_cuda_graph_replays_equal_eager(reference: np.ndarray[Any, Any]) -> None:
    graphs = runner("fp32", True)
    out, phases = graphs.execute([pixels(8).astype(np.float32) / 255])
    np.testing.assert_allclose(out, reference, atol=2e-4)
    assert phases.infer_ns > 0


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
@pytest.mark.parametrize("graphs", [False, True])
@pytest.mark.parametrize("fmt", ["fp32", "uint8"])
def test_reduced_precision_and_graph_paths_pass_the_parity_gate(
    reference: np.ndarray[Any, Any], precision: str, graphs: bool, fmt: str
) -> None:
    wire = pixels(8) if fmt == "uint8" else pixels(8).astype(np.float32) / 255
    out, _ = runner(precision, graphs, fmt).execute([wire])
    assert min_cosine(reference, out) >= MIN_COSINE


def test_a_padded_bucket_answers_each_request_with_its_own_rows(
    reference: np.ndarray[Any, Any],
) -> None:
    graphs = runner("fp16", True, "uint8")
    images = pixels(8)
    # 1 + 2 rows run in the 4-row graph; then 3 + 5 in the 8-row one.
    first, _ = graphs.execute([images[:1], images[1:3]])
    second, _ = graphs.execute([images[3:6], images[6:8]])
    out = np.concatenate([first, second])
    assert min_cosine(reference[:8], out) >= MIN_COSINE


def test_the_server_on_two_instances_with_dynamic_batching_answers_like_the_reference(
    reference: np.ndarray[Any, Any], tmp_path: Path
) -> None:
    options = ["--input-format=uint8", "--instances-per-device=2", "--dynamic-batching",
               "--max-queue-delay-us=500"]  # fmt: skip
    command, base = fp16_server(options)
    with process.running_server(command, tmp_path / "server.log"):
        images = pixels(8)
        with ThreadPoolExecutor(8) as pool:
            rows = list(pool.map(lambda i: infer(base, images[i : i + 1]), range(8)))
        whole = infer(base, images)
        with urllib.request.urlopen(f"{base}/v2/models/vit/config", timeout=10) as response:
            config = json.loads(response.read())
        with urllib.request.urlopen(f"{base}/metrics", timeout=10) as response:
            metrics = response.read().decode()
    assert min_cosine(reference, np.concatenate(rows)) >= MIN_COSINE
    assert min_cosine(reference, whole) >= MIN_COSINE
    runtime = config["parameters"]["runtime"]["string_value"]
    assert "cuda-graphs" in runtime and "2 instances per device" in runtime
    used = [
        float(line.split()[-1])
        for line in metrics.splitlines()
        if line.startswith("nv_gpu_memory_used_bytes")
    ]
    assert used and used[0] > 0  # VRAM, from NVML or torch's allocator


def test_jpegs_decoded_on_the_gpu_pass_the_parity_gate(reference: np.ndarray[Any, Any]) -> None:
    assert device_runner.gpu_jpeg_decoder() is not None, "torchvision (nvJPEG) is missing"
    graphs = runner("fp16", True, "jpeg")
    files = payloads.seeded_input(5, [8, 3, SIZE, SIZE], "BYTES")
    out, _ = graphs.execute([files[:3], files[3:]])
    assert min_cosine(reference, out) >= MIN_COSINE


@pytest.mark.parametrize("fmt", ["fp32", "uint8"])
def test_a_request_received_into_pinned_memory_goes_to_the_gpu_from_there(fmt: str) -> None:
    graphs = runner("fp16", True, fmt)
    images = pixels(7)  # the 8-row bucket, one row of it stale; past PINNED_BODY_MIN_BYTES
    wire = images if fmt == "uint8" else images.astype(np.float32) / 255
    # Where the HTTP server puts a body: pinned memory; the tensor after the JSON header
    # starts at any offset, here an odd one (unaligned for FP32).
    body = device_runner.pinned_host_buffer(wire.nbytes + 3)
    received = np.frombuffer(body, dtype=wire.dtype, count=wire.size, offset=3)
    received = received.reshape(wire.shape)
    received[...] = wire
    assert graphs._pinned_source([received]) is not None  # DMA from the body itself
    assert graphs._pinned_source([wire]) is None  # ordinary memory: staged first
    # No staging copy: launched from the event loop like a small batch; the other is not.
    assert graphs.runs_inline([received]) and not graphs.runs_inline([wire])
    from_body, _ = graphs.execute([received])
    staged, _ = graphs.execute([wire])
    np.testing.assert_array_equal(from_body, staged)


def test_the_engine_gives_pinned_body_buffers_only_when_it_can_use_them() -> None:
    def loaded(fmt: str) -> engine.InferenceEngine:
        made = engine.InferenceEngine(
            builtin=BUILTIN, device="cuda", precision="fp16", seed=0, input_format=fmt,
            max_batch_size=8, cuda_graphs=True,
        )  # fmt: skip
        assert made.allocate_body(1 << 20) is None  # not loaded yet: no CUDA context to use
        asyncio.run(made.load([1]))
        return made

    smallest = device_runner.PINNED_BODY_MIN_BYTES
    uint8 = loaded("uint8")
    buffer = uint8.allocate_body(smallest)
    assert buffer is not None and len(buffer) == smallest
    assert torch.from_numpy(np.frombuffer(buffer, dtype=np.uint8)).is_pinned()
    assert uint8.allocate_body(smallest - 1) is None  # cheaper to copy than to pin
    assert uint8.allocate_body(32 * 3 * SIZE * SIZE) is None  # past any valid body
    uint8.close()
    jpeg = loaded("jpeg")
    assert jpeg.allocate_body(smallest) is None  # JPEGs are decoded, not copied to the GPU
    jpeg.close()


def _counters(base: str) -> dict[str, float]:
    # A connection of its own (urlopen closes it): the kernel may hand it to either worker.
    with urllib.request.urlopen(f"{base}/metrics", timeout=10) as response:
        text = response.read().decode()
    totals: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(("nv_inference_count{", "nv_inference_request_success{")):
            name = line.split("{")[0]
            totals[name] = totals.get(name, 0.0) + float(line.split()[-1])
        if line.startswith('bakeoff_server_workers{state="ready"}'):
            totals["workers_ready"] = float(line.split()[-1])
    return totals


def test_two_workers_on_one_gpu_answer_like_the_reference_and_their_metrics_add_up(
    reference: np.ndarray[Any, Any], tmp_path: Path
) -> None:
    command, base = fp16_server(["--input-format=uint8", "--workers-per-device=2"])
    with process.running_server(command, tmp_path / "server.log"):
        before = _counters(base)
        images = pixels(8)
        requests = [images[i % 8 : i % 8 + 1 + i % 3] for i in range(48)]
        # 16 threads, a connection per request: both workers take some.
        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(lambda batch: infer(base, batch), requests))
        after = _counters(base)
        log = (tmp_path / "server.log").read_text()
    for index, answer in enumerate(answers):
        start = index % 8
        assert min_cosine(reference[start : start + answer.shape[0]], answer) >= MIN_COSINE
    sent_images = sum(batch.shape[0] for batch in requests)
    assert after["nv_inference_count"] - before["nv_inference_count"] == sent_images
    assert after["nv_inference_request_success"] - before["nv_inference_request_success"] == 48
    assert after["workers_ready"] == 2
    served_by = {line.split()[3] for line in log.splitlines() if "model vit ready after" in line}
    assert served_by == {"worker-0", "worker-1"}  # both loaded the model on cuda:0
