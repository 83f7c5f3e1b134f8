"""Native ONNX Runtime backend configs (NVIDIA's Triton images on GPU pools): every config
parses with Triton's own ModelConfig protobuf and says exactly what was asked. The bundled
tritonserver has no onnxruntime backend, so these are never loaded here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from bakeoff_serve import model_prep, triton_native
from bakeoff_serve.options import ExecutionProvider, Precision
from bakeoff_serve.triton_repo import TritonModelOptions

CACHE = "/models/clip/trt-cache"
OPTION_FIELDS = set(TritonModelOptions.__dataclass_fields__)


def parse(text: str) -> Any:
    return text_format.Parse(text, model_config_pb2.ModelConfig())


def config_text(**overrides: Any) -> str:
    """The config for these overrides, each going to the options or to the builder."""
    kwargs: dict[str, Any] = {
        "model_name": "clip",
        "max_batch_size": 32,
        "execution_provider": ExecutionProvider.TENSORRT,
        "precision": Precision.FP32,
        "warmup_batch_sizes": (1, 8, 32),
        "preferred_batch_sizes": (8, 16),
        "max_queue_delay_us": 100,
        "gpus": [0],
        "image_size": 224,
        "embed_dim": 512,
        "trt_cache_dir": CACHE,
    }
    kwargs.update(overrides)
    options = TritonModelOptions(**{k: v for k, v in kwargs.items() if k in OPTION_FIELDS})
    builder_kwargs = {k: v for k, v in kwargs.items() if k not in OPTION_FIELDS}
    return triton_native.build_onnxruntime_config(options, **builder_kwargs)


def accelerator_params(config: Any) -> dict[str, str]:
    (accelerator,) = config.optimization.execution_accelerators.gpu_execution_accelerator
    assert accelerator.name == "tensorrt"
    return dict(accelerator.parameters)


@pytest.mark.parametrize(
    ("provider", "precision"),
    [
        (ExecutionProvider.CUDA, Precision.FP32),
        (ExecutionProvider.TENSORRT, Precision.FP32),
        (ExecutionProvider.TENSORRT, Precision.FP16),
    ],
)
@pytest.mark.parametrize(
    ("max_batch", "batch_sizes", "preferred", "delay_us", "gpus"),
    [
        (1, (1,), (), 0, [0]),
        (8, (1, 4, 8), (4, 8), 100, [0]),
        (32, (1, 16, 32), (8, 16, 32), 5000, [0, 1]),
        (64, (2, 64), (1,), 250, [0, 1, 2, 3]),
    ],
    ids=["no-batching", "small", "large-2gpu", "4gpu"],
)
def test_config_parses_as_triton_model_config_with_what_was_asked(
    provider: ExecutionProvider,
    precision: Precision,
    max_batch: int,
    batch_sizes: tuple[int, ...],
    preferred: tuple[int, ...],
    delay_us: int,
    gpus: list[int],
) -> None:
    config = parse(
        config_text(
            execution_provider=provider,
            precision=precision,
            max_batch_size=max_batch,
            warmup_batch_sizes=batch_sizes,
            preferred_batch_sizes=preferred,
            max_queue_delay_us=delay_us,
            gpus=gpus,
        )
    )
    assert config.name == "clip"
    assert config.platform == "onnxruntime_onnx"
    assert config.backend == ""
    assert config.default_model_filename == "model.onnx"
    assert config.max_batch_size == max_batch
    assert [(i.name, list(i.dims)) for i in config.input] == [("pixel_values", [3, 224, 224])]
    assert [(o.name, list(o.dims)) for o in config.output] == [("embedding", [512])]
    assert list(config.dynamic_batching.preferred_batch_size) == sorted(preferred)
    assert config.dynamic_batching.max_queue_delay_microseconds == delay_us
    (group,) = config.instance_group
    assert group.kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    assert group.count == 1  # per listed GPU
    assert list(group.gpus) == gpus
    assert [(w.name, w.batch_size) for w in config.model_warmup] == [
        (f"batch_{b}", b) for b in sorted(batch_sizes)
    ]
    for warm in config.model_warmup:
        tensor = warm.inputs["pixel_values"]
        assert list(tensor.dims) == [3, 224, 224]
        assert tensor.zero_data
    assert config.parameters["execution_provider"].string_value == provider
    assert config.parameters["precision"].string_value == precision
    if provider == ExecutionProvider.CUDA:
        # KIND_GPU without an accelerator is the backend's CUDA execution provider.
        assert not config.HasField("optimization")
        assert "CUDAExecutionProvider" in config.parameters["runtime"].string_value
        return
    assert accelerator_params(config) == {
        "precision_mode": precision.upper(),
        "max_workspace_size_bytes": str(1 << 30),
        "trt_engine_cache_enable": "1",
        "trt_engine_cache_path": CACHE,
        "trt_timing_cache_enable": "1",
        "trt_timing_cache_path": CACHE,
        "trt_profile_min_shapes": "pixel_values:1x3x224x224",
        "trt_profile_opt_shapes": f"pixel_values:{max(batch_sizes)}x3x224x224",
        "trt_profile_max_shapes": f"pixel_values:{max_batch}x3x224x224",
    }


def test_tensorrt_workspace_and_cache_dir_are_written_as_given() -> None:
    params = accelerator_params(
        parse(config_text(trt_workspace_bytes=4 << 30, trt_cache_dir="/trt-cache/a100"))
    )
    assert params["max_workspace_size_bytes"] == str(4 << 30)
    assert params["trt_engine_cache_path"] == params["trt_timing_cache_path"] == "/trt-cache/a100"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"execution_provider": ExecutionProvider.CPU}, "not one of cuda, tensorrt"),
        (
            {"execution_provider": ExecutionProvider.CUDA, "precision": Precision.FP16},
            "needs executionProvider",
        ),
        ({"precision": Precision.BF16}, "precision 'bf16'"),
        ({"gpus": []}, "at least one GPU"),
        ({"gpus": [0, 0]}, "distinct"),
        ({"gpus": [-1]}, "distinct"),
        ({"warmup_batch_sizes": (64,)}, "outside 1..max_batch_size=32"),
        ({"preferred_batch_sizes": (0,)}, "outside 1..max_batch_size=32"),
        ({"max_queue_delay_us": -1}, "max_queue_delay_us"),
        ({"trt_workspace_bytes": 0}, "trt_workspace_bytes"),
        ({"trt_cache_dir": "relative/cache"}, "absolute"),
    ],
)
def test_bad_settings_are_refused_with_the_reason(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        config_text(**overrides)


def test_write_native_repository_lays_out_config_model_and_cache(tmp_path: Path) -> None:
    onnx = tmp_path / "export.onnx"
    onnx.write_bytes(b"onnx")
    repo = tmp_path / "models"
    options = TritonModelOptions(
        model_name="clip", image_size=32, embed_dim=16, max_batch_size=8,
        execution_provider=ExecutionProvider.TENSORRT, preferred_batch_sizes=(8,),
        warmup_batch_sizes=(1, 8),
    )  # fmt: skip
    model_dir = triton_native.write_native_repository(repo, options, onnx, gpus=[0])
    assert model_dir == repo / "clip"
    assert sorted(p.relative_to(model_dir).as_posix() for p in model_dir.rglob("*")) == [
        "1",
        "1/model.onnx",
        "config.pbtxt",
        "trt-cache",  # non-numeric: Triton does not take it for a version
    ]
    assert (model_dir / "1" / "model.onnx").read_bytes() == b"onnx"
    params = accelerator_params(parse((model_dir / "config.pbtxt").read_text()))
    assert params["trt_engine_cache_path"] == str(model_dir / "trt-cache")


def test_write_native_repository_needs_the_onnx_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="export it first"):
        triton_native.write_native_repository(
            tmp_path,
            TritonModelOptions(
                model_name="clip", image_size=32, embed_dim=16, max_batch_size=8,
                execution_provider=ExecutionProvider.CUDA, warmup_batch_sizes=(1,),
            ),
            tmp_path / "missing.onnx",
            gpus=[0],
        )  # fmt: skip


def test_prepare_refuses_native_on_cpu_before_exporting(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="needs execution provider cuda or tensorrt"):
        model_prep.prepare_triton_repository(
            tmp_path / "models", "clip", "vit-tiny-clip", None, 0, tmp_path / "cache",
            max_batch_size=8, execution_provider=ExecutionProvider.CPU, precision=Precision.FP32,
            preferred_batch_sizes=[], max_queue_delay_us=0, warmup_batch_sizes=[1],
            runtime="onnxruntime-native",
        )  # fmt: skip
    assert not (tmp_path / "cache").exists()


def test_triton_prep_cli_writes_a_native_repository(tmp_path: Path) -> None:
    from bakeoff_serve import __main__ as cli

    out = tmp_path / "models"
    code = cli.main(
        ["triton-prep", "--model-name", "clip", "--builtin", "vit-tiny-clip",
         "--execution-provider", "tensorrt", "--precision", "fp16", "--max-batch-size", "8",
         "--warmup-batch-sizes", "1,8", "--format", "native", "--gpus", "0,1",
         "--out", str(out), "--cache-dir", str(tmp_path / "cache")]
    )  # fmt: skip
    assert code == 0
    config = parse((out / "clip" / "config.pbtxt").read_text())
    assert config.platform == "onnxruntime_onnx"
    assert list(config.instance_group[0].gpus) == [0, 1]
    assert accelerator_params(config)["precision_mode"] == "FP16"
    assert (out / "clip" / "1" / "model.onnx").stat().st_size > 0


def test_triton_prep_cli_refuses_native_on_cpu(capsys: pytest.CaptureFixture[str]) -> None:
    from bakeoff_serve import __main__ as cli

    with pytest.raises(SystemExit) as exit_info:
        cli.main(
            ["triton-prep", "--model-name", "clip", "--builtin", "vit-tiny-clip",
             "--format", "native", "--out", "/nonexistent"]
        )  # fmt: skip
    assert exit_info.value.code == 2
    assert "--format native needs --execution-provider cuda or tensorrt" in capsys.readouterr().err
