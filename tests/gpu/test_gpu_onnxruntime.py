"""The gpu tier, ONNX Runtime's paths (docs/architecture.md §7): the `onnxruntime` kind's
runner and server, and Triton's Python-backend model, on ONNX Runtime's CUDA provider.

Needs onnxruntime-gpu (hack/gpu-wheels.sh brings it to the lent GPU machine); fails at once,
saying so, where its CUDA provider is missing. Nothing here times anything.
"""

from __future__ import annotations

import json
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from gpu_helpers import BUILTIN, MIN_COSINE, infer, min_cosine, pixels

from bakeoff_serve import launch, model, model_prep, ort_runner, process, tritonserver
from bakeoff_serve.options import ExecutionProvider, Precision

pytestmark = pytest.mark.gpu

CONFIG = model.BUILTIN_MODELS[BUILTIN]


@pytest.fixture(scope="module", autouse=True)
def cuda_provider() -> None:
    assert torch.cuda.is_available(), "the gpu tier needs a CUDA device: run it on the GPU machine"
    ort_runner.check_provider(ExecutionProvider.CUDA)  # says what to install when missing


@pytest.fixture(scope="module")
def cache() -> Path:
    """The machine's model cache: exports are keyed and written atomically, and the study and
    the bench on the same machine reuse them (a ViT-B/32 export and check take seconds)."""
    return tritonserver.default_cache_dir()


@pytest.fixture(scope="module")
def reference() -> np.ndarray[Any, Any]:
    """PyTorch fp32 eager on 8 seeded images: what every ONNX Runtime path is held to."""
    net, _ = model.build_model(BUILTIN, None, 0)
    with torch.inference_mode():
        return net(torch.from_numpy(pixels(8).astype(np.float32) / 255)).numpy()


def runner(cache: Path, precision: str, graphs: bool, fmt: str) -> ort_runner.OrtRunner:
    files = ort_runner.prepare_model_files(
        BUILTIN, None, 0, cache, precision=precision, input_format=fmt, max_batch_size=32,
        execution_provider=ExecutionProvider.CUDA, cuda_graphs=graphs,
    )  # fmt: skip
    made = ort_runner.OrtRunner(
        files, CONFIG, device=torch.device("cuda", 0), precision=precision, input_format=fmt,
        max_batch_size=32, cuda_graphs=graphs, execution_provider=ExecutionProvider.CUDA,
    )  # fmt: skip
    made.warm([])
    return made


# Each precision, wire format and graph mode at least once (every case is an export of its
# own: one file per batch bucket with graphs).
@pytest.mark.parametrize(
    ("precision", "graphs", "fmt"),
    [("fp32", True, "fp32"), ("fp16", True, "uint8"), ("fp16", False, "fp32"),
     ("fp32", False, "uint8")],
)  # fmt: skip
def test_onnxruntime_cuda_passes_the_parity_gate(
    reference: np.ndarray[Any, Any], cache: Path, precision: str, graphs: bool, fmt: str
) -> None:
    made = runner(cache, precision, graphs, fmt)
    # Static-shape files leave ORT no CPU node: the graphs must really be captured.
    assert made.graphs_refused is None
    assert made.cuda_graphs is graphs
    wire = pixels(8) if fmt == "uint8" else pixels(8).astype(np.float32) / 255
    out, phases = made.execute([wire])
    assert min_cosine(reference, out) >= MIN_COSINE
    assert phases.infer_ns > 0


@pytest.mark.parametrize("graphs", [False, True])
def test_iobinding_answers_each_request_with_its_own_rows(
    reference: np.ndarray[Any, Any], cache: Path, graphs: bool
) -> None:
    made = runner(cache, "fp16", graphs, "uint8")
    images = pixels(8)
    # 1 + 2 rows in the 4-row bucket, then 3 + 5 in the 8-row one, then one row alone: each
    # answer must be its own rows, never a previous batch's left in a bound buffer.
    first, _ = made.execute([images[:1], images[1:3]])
    second, _ = made.execute([images[3:6], images[6:8]])
    last, _ = made.execute([images[7:8]])
    assert min_cosine(reference, np.concatenate([first, second])) >= MIN_COSINE
    assert min_cosine(reference[7:8], last) >= MIN_COSINE
    # Launched without waiting (ORT on the runner's stream): collected afterwards.
    launched = made.launch([images[2:4]])
    out, _ = made.collect(launched)
    assert min_cosine(reference[2:4], out) >= MIN_COSINE


def test_the_onnxruntime_server_answers_like_the_reference(
    reference: np.ndarray[Any, Any], cache: Path, tmp_path: Path
) -> None:
    http, grpc = process.free_port(), process.free_port()
    command = launch.pytorch_server_command(
        "vit", BUILTIN, "cuda", "fp16", http, grpc, 32, [1], 0,
        options=["--input-format=uint8", "--dynamic-batching", "--max-queue-delay-us=300",
                 f"--cache-dir={cache}"],
        engine="onnxruntime",
    )  # fmt: skip
    with process.running_server(command, tmp_path / "server.log", ready_timeout_s=600):
        base = f"http://127.0.0.1:{http}"
        images = pixels(8)
        with ThreadPoolExecutor(8) as pool:
            rows = list(pool.map(lambda i: infer(base, images[i : i + 1]), range(8)))
        whole = infer(base, images)
        with urllib.request.urlopen(f"{base}/v2/models/vit", timeout=10) as response:
            metadata = json.loads(response.read())
        with urllib.request.urlopen(f"{base}/v2/models/vit/config", timeout=10) as response:
            config = json.loads(response.read())
    assert min_cosine(reference, np.concatenate(rows)) >= MIN_COSINE
    assert min_cosine(reference, whole) >= MIN_COSINE
    assert metadata["platform"] == "bakeoff_onnxruntime"
    runtime = config["parameters"]["runtime"]["string_value"]
    assert runtime.startswith("onnxruntime ") and "cuda fp16" in runtime
    assert "cuda-graphs" in runtime and "refused" not in runtime


def test_triton_with_onnxruntime_cuda_answers_like_the_reference(
    reference: np.ndarray[Any, Any], cache: Path, tmp_path: Path
) -> None:
    repo = model_prep.prepare_triton_repository(
        tmp_path / "repo", "vit", BUILTIN, None, 0, cache,
        max_batch_size=32, execution_provider=ExecutionProvider.CUDA, precision=Precision.FP32,
        preferred_batch_sizes=(), max_queue_delay_us=0, warmup_batch_sizes=(1, 8),
    )  # fmt: skip
    http, grpc, metrics = (process.free_port() for _ in range(3))
    command = launch.triton_server_command(repo, http, grpc, metrics)
    with process.running_server(command, tmp_path / "tritonserver.log", ready_timeout_s=600):
        base = f"http://127.0.0.1:{http}"
        images = pixels(8).astype(np.float32) / 255
        whole = infer(base, images)
        one = infer(base, images[3:4])
        with urllib.request.urlopen(f"{base}/v2/models/vit/config", timeout=10) as response:
            config = json.loads(response.read())
    assert min_cosine(reference, whole) >= MIN_COSINE
    assert min_cosine(reference[3:4], one) >= MIN_COSINE
    assert config["parameters"]["execution_provider"]["string_value"] == "cuda"
