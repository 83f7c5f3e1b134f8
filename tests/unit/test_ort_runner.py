"""The onnxruntime kind's runner without a GPU: which files it exports, which providers it
refuses and how it says so, and the CPU provider answering each request with its own rows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from bakeoff_serve import model, ort_runner
from bakeoff_serve.app.settings import Settings
from bakeoff_serve.options import Engine, ExecutionProvider

BUILTIN = "vit-tiny-clip"
CONFIG = model.BUILTIN_MODELS[BUILTIN]


def test_graphs_and_tensorrt_get_one_static_file_per_bucket_tensorrt_from_fp32() -> None:
    assert ort_runner.static_batches(ExecutionProvider.CUDA, cuda_graphs=True)
    assert ort_runner.static_batches(ExecutionProvider.TENSORRT, cuda_graphs=False)
    assert not ort_runner.static_batches(ExecutionProvider.CUDA, cuda_graphs=False)
    assert not ort_runner.static_batches(ExecutionProvider.CPU, cuda_graphs=False)
    assert ort_runner.export_precision(ExecutionProvider.TENSORRT, "fp16") == "fp32"
    assert ort_runner.export_precision(ExecutionProvider.CUDA, "fp16") == "fp16"


def test_a_provider_this_onnxruntime_lacks_is_not_run_with_what_to_install() -> None:
    with pytest.raises(ort_runner.ProviderUnavailableError, match=r"^not run: .*onnxruntime-gpu"):
        ort_runner.check_provider(ExecutionProvider.CUDA)  # CI's onnxruntime is the CPU build
    assert ort_runner.check_provider(ExecutionProvider.CPU) == "CPUExecutionProvider"


def test_tensorrt_listed_but_without_its_libraries_is_not_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ort = ort_runner.import_onnxruntime()
    listed = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(ort, "get_available_providers", lambda: listed)
    monkeypatch.setattr(ort_runner, "tensorrt_loadable", lambda: False)
    with pytest.raises(ort_runner.ProviderUnavailableError, match="TensorRT's libraries"):
        ort_runner.check_provider(ExecutionProvider.TENSORRT)
    monkeypatch.setattr(ort_runner, "tensorrt_loadable", lambda: True)
    assert ort_runner.check_provider(ExecutionProvider.TENSORRT) == "TensorrtExecutionProvider"


def test_cpu_runner_answers_each_request_with_its_own_rows(tmp_path: Path) -> None:
    files = ort_runner.prepare_model_files(
        BUILTIN, None, 0, tmp_path, precision="fp32", input_format="uint8", max_batch_size=8,
        execution_provider=ExecutionProvider.CPU, cuda_graphs=False,
    )  # fmt: skip
    assert not files.static and len(set(files.by_bucket.values())) == 1
    runner = ort_runner.OrtRunner(
        files, CONFIG, device=torch.device("cpu"), precision="fp32", input_format="uint8",
        max_batch_size=8, cuda_graphs=False, execution_provider=ExecutionProvider.CPU,
    )  # fmt: skip
    runner.warm([1])
    size = CONFIG.image_size
    images = np.random.default_rng(3).integers(0, 256, (8, 3, size, size), dtype=np.uint8)
    net, _ = model.build_model(BUILTIN, None, 0)
    with torch.inference_mode():
        expected = net(torch.from_numpy(images.astype(np.float32) / 255)).numpy()
    # 1 + 2 rows in the 4-row bucket (not warmed: bound on first use), then 5 in the 8-row one.
    first, phases = runner.execute([images[:1], images[1:3]])
    second, _ = runner.execute([images[3:8]])
    np.testing.assert_allclose(np.concatenate([first, second]), expected, atol=1e-4)
    assert phases.infer_ns > 0


def _settings(**changes: Any) -> Settings:
    base: dict[str, Any] = {
        "model_name": "m", "builtin": BUILTIN, "http_port": 1, "grpc_port": 2,
        "engine": Engine.ONNXRUNTIME,
    }  # fmt: skip
    return Settings(**{**base, **changes})


def test_server_settings_hold_the_engine_to_what_it_can_run() -> None:
    assert _settings(precision="fp16").precision.value == "fp16"  # ORT runs fp16 on CPU
    with pytest.raises(ValueError, match="onnxruntime serves fp32 and fp16"):
        _settings(precision="bf16")
    with pytest.raises(ValueError, match="execution provider cuda does not run on --device cpu"):
        _settings(execution_provider="cuda")
    with pytest.raises(ValueError, match="the onnxruntime engine's"):
        _settings(engine=Engine.PYTORCH, execution_provider="cpu")
    with pytest.raises(ValueError, match="fp16 on cpu is not supported"):
        _settings(engine=Engine.PYTORCH, precision="fp16")
