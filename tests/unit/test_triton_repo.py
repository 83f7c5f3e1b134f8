"""Triton model-repository generation, the Python-backend model's pure parts, and the
tritonserver command line, all without starting a server (tests/protocol does that)."""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import json
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from bakeoff_serve import model, triton_repo, tritonserver
from bakeoff_serve.options import ExecutionProvider, Precision
from bakeoff_serve.triton_repo import TritonModelOptions

ORT_VERSION = "1.32.0"
OPTION_FIELDS = set(TritonModelOptions.__dataclass_fields__)


def parse(text: str) -> Any:
    """Parse with Triton's own ModelConfig message: what tritonserver itself accepts."""
    return text_format.Parse(text, model_config_pb2.ModelConfig())


def config_text(**overrides: Any) -> str:
    """The config for these overrides, each going to the options or to the builder."""
    kwargs: dict[str, Any] = {
        "model_name": "clip",
        "max_batch_size": 8,
        "execution_provider": ExecutionProvider.CPU,
        "image_size": 224,
        "embed_dim": 512,
        "preferred_batch_sizes": (4, 8),
        "max_queue_delay_us": 100,
        "onnxruntime_version": ORT_VERSION,
    }
    kwargs.update(overrides)
    options = TritonModelOptions(**{k: v for k, v in kwargs.items() if k in OPTION_FIELDS})
    builder_kwargs = {k: v for k, v in kwargs.items() if k not in OPTION_FIELDS}
    return triton_repo.build_python_backend_config(options, **builder_kwargs)


# --- config.pbtxt ---------------------------------------------------------------------------


@pytest.mark.parametrize("provider", list(ExecutionProvider))
@pytest.mark.parametrize(
    ("max_batch", "preferred", "delay_us"),
    [(1, (), 0), (8, (4, 8), 100), (32, (8, 16, 32), 5000), (64, (1,), 250)],
    ids=["no-batching", "small", "large", "preferred-one"],
)
def test_config_parses_as_triton_model_config_with_what_was_asked(
    provider: ExecutionProvider, max_batch: int, preferred: tuple[int, ...], delay_us: int
) -> None:
    config = parse(
        config_text(
            execution_provider=provider,
            max_batch_size=max_batch,
            preferred_batch_sizes=preferred,
            max_queue_delay_us=delay_us,
            instance_count=2,
        )
    )
    assert config.name == "clip" and config.backend == "python"
    assert config.max_batch_size == max_batch
    (given,) = config.input
    (returned,) = config.output
    assert (given.name, given.data_type, list(given.dims)) == (
        model.INPUT_NAME,
        model_config_pb2.TYPE_FP32,
        [3, 224, 224],
    )
    assert (returned.name, returned.data_type, list(returned.dims)) == (
        model.OUTPUT_NAME,
        model_config_pb2.TYPE_FP32,
        [512],
    )
    assert list(config.dynamic_batching.preferred_batch_size) == list(preferred)
    assert config.dynamic_batching.max_queue_delay_microseconds == delay_us
    (group,) = config.instance_group
    assert (group.kind, group.count) == (model_config_pb2.ModelInstanceGroup.KIND_CPU, 2)
    parameters = {key: value.string_value for key, value in config.parameters.items()}
    assert parameters["execution_provider"] == provider
    assert parameters["onnxruntime_version"] == ORT_VERSION
    assert parameters["onnx_model"] == triton_repo.ONNX_FILENAME
    assert parameters["runtime"] == (
        f"onnxruntime {ORT_VERSION} {triton_repo.ORT_PROVIDER_NAMES[provider]} "
        "via Triton python backend"
    )
    assert [w.batch_size for w in config.model_warmup] == sorted({1, *preferred, max_batch})


def test_warmup_entries_send_zero_images_of_the_model_input_shape() -> None:
    config = parse(config_text(warmup_batch_sizes=(2, 2, 6)))
    assert [w.batch_size for w in config.model_warmup] == [2, 6]
    for warmup in config.model_warmup:
        tensor = warmup.inputs[model.INPUT_NAME]
        assert tensor.data_type == model_config_pb2.TYPE_FP32
        assert list(tensor.dims) == [3, 224, 224] and tensor.zero_data


def test_empty_warmup_list_writes_no_model_warmup() -> None:
    assert "model_warmup" not in config_text(warmup_batch_sizes=())
    assert len(parse(config_text(warmup_batch_sizes=())).model_warmup) == 0


def test_optional_parameters_appear_only_when_set() -> None:
    plain = parse(config_text())
    assert "intra_op_threads" not in plain.parameters
    tuned = parse(config_text(intra_op_threads=3))
    assert tuned.parameters["intra_op_threads"].string_value == "3"


def test_tensorrt_fp16_is_recorded_in_the_runtime() -> None:
    config = parse(
        config_text(execution_provider=ExecutionProvider.TENSORRT, precision=Precision.FP16)
    )
    assert config.parameters["precision"].string_value == "fp16"
    assert config.parameters["runtime"].string_value == (
        f"onnxruntime {ORT_VERSION} TensorrtExecutionProvider fp16 via Triton python backend"
    )


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        # A plain string, as an untyped caller would pass it.
        ({"execution_provider": "rocm"}, "execution provider 'rocm' is not one of"),
        (
            {"preferred_batch_sizes": (4, 16)},
            r"preferred batch sizes \[16\] are outside 1..max_batch",
        ),
        ({"preferred_batch_sizes": (4, 4)}, r"preferred batch sizes repeat: \[4, 4\]"),
        ({"warmup_batch_sizes": (0,)}, r"warm-up batch sizes \[0\] are outside"),
        ({"max_batch_size": 0, "preferred_batch_sizes": ()}, "max_batch_size must be >= 1"),
        ({"max_queue_delay_us": -1}, "max_queue_delay_us must be >= 0, got -1"),
        ({"instance_count": 0}, "instance_count must be >= 1, got 0"),
        ({"precision": Precision.FP16}, "precision 'fp16' needs executionProvider 'tensorrt'"),
        ({"precision": Precision.BF16}, "precision 'bf16' is not one of fp32, fp16"),
        ({"model_name": "clip/../x"}, "model name 'clip/../x' must match"),
        ({"intra_op_threads": 0}, "intra_op_threads must be >= 1"),
        ({"onnxruntime_version": 'x"\n'}, "printable ASCII"),
    ],
    ids=lambda value: value if isinstance(value, str) else None,
)
def test_invalid_settings_are_refused_with_the_bad_values(
    overrides: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        config_text(**overrides)


# --- repository layout ----------------------------------------------------------------------


def test_repository_layout_holds_config_model_py_and_the_onnx_file(tmp_path: Path) -> None:
    onnx = tmp_path / "export.onnx"
    onnx.write_bytes(b"not really onnx, but bytes to carry")
    # The record onnx_export writes beside an export: results say what model was served.
    onnx.with_suffix(".json").write_text(
        json.dumps({"provenance": "vit-tiny-clip, seeded random init (seed=7)", "opset": 17})
    )
    options = TritonModelOptions(
        model_name="clip-tiny",
        image_size=224,
        embed_dim=512,
        max_batch_size=4,
        execution_provider=ExecutionProvider.CUDA,
        preferred_batch_sizes=(2, 4),
        max_queue_delay_us=50,
    )
    model_dir = triton_repo.write_python_backend_repository(
        tmp_path / "repo", options, onnx, onnxruntime_version=ORT_VERSION
    )
    assert model_dir == tmp_path / "repo" / "clip-tiny"
    files = sorted(str(p.relative_to(model_dir)) for p in model_dir.rglob("*") if p.is_file())
    assert files == ["1/model.onnx", "1/model.py", "config.pbtxt"]
    assert (model_dir / "1" / "model.onnx").read_bytes() == onnx.read_bytes()
    assert (model_dir / "1" / "model.py").read_text() == triton_repo.PYTHON_MODEL_SOURCE.read_text()
    config = parse((model_dir / "config.pbtxt").read_text())
    assert config.name == "clip-tiny"  # Triton requires it to match the directory
    assert config.parameters["execution_provider"].string_value == "cuda"
    assert config.parameters["model_provenance"].string_value == (
        "vit-tiny-clip, seeded random init (seed=7), exported to ONNX opset 17"
    )


def test_rewriting_a_repository_replaces_its_files(tmp_path: Path) -> None:
    onnx = tmp_path / "a.onnx"
    onnx.write_bytes(b"first")
    options = TritonModelOptions(
        model_name="m",
        image_size=224,
        embed_dim=512,
        max_batch_size=4,
        execution_provider=ExecutionProvider.CPU,
    )
    repo = tmp_path / "repo"
    triton_repo.write_python_backend_repository(
        repo, options, onnx, onnxruntime_version=ORT_VERSION
    )
    second = tmp_path / "b.onnx"
    second.write_bytes(b"second")
    model_dir = triton_repo.write_python_backend_repository(
        repo,
        dataclasses.replace(options, max_batch_size=2),
        second,
        onnxruntime_version=ORT_VERSION,
    )
    assert (model_dir / "1" / "model.onnx").read_bytes() == b"second"
    assert onnx.read_bytes() == b"first"  # a hard link is replaced, never written through
    assert parse((model_dir / "config.pbtxt").read_text()).max_batch_size == 2


def test_missing_onnx_file_is_reported_before_anything_is_written(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="export it first"):
        triton_repo.write_python_backend_repository(
            tmp_path / "repo",
            TritonModelOptions(
                model_name="m",
                image_size=224,
                embed_dim=512,
                max_batch_size=1,
                execution_provider=ExecutionProvider.CPU,
            ),
            tmp_path / "missing.onnx",
            onnxruntime_version=ORT_VERSION,
        )
    assert not (tmp_path / "repo").exists()


# --- the Python-backend model's pure parts --------------------------------------------------


@pytest.fixture
def python_model(monkeypatch: pytest.MonkeyPatch) -> Iterator[types.ModuleType]:
    """triton_python_model, imported with a stand-in for the stub-only pb_utils module."""
    monkeypatch.setitem(
        sys.modules, "triton_python_backend_utils", types.ModuleType("triton_python_backend_utils")
    )
    monkeypatch.delitem(sys.modules, "bakeoff_serve.triton_python_model", raising=False)
    yield importlib.import_module("bakeoff_serve.triton_python_model")
    sys.modules.pop("bakeoff_serve.triton_python_model", None)


def providers(python_model: types.ModuleType, name: str, precision: str = "fp32") -> Any:
    return python_model.session_providers(
        name,
        device_id=1,
        input_name="pixel_values",
        sample_dims=[3, 224, 224],
        max_batch_size=32,
        opt_batch_size=8,
        precision=precision,
    )


def test_model_asks_ort_for_exactly_the_requested_provider(python_model: types.ModuleType) -> None:
    assert providers(python_model, "cpu") == [("CPUExecutionProvider", {})]
    assert providers(python_model, "cuda") == [("CUDAExecutionProvider", {"device_id": "1"})]
    (trt_name, trt), cuda = providers(python_model, "tensorrt", "fp16")
    assert trt_name == "TensorrtExecutionProvider" and cuda[0] == "CUDAExecutionProvider"
    assert trt["trt_fp16_enable"] == "True"
    assert trt["trt_profile_min_shapes"] == "pixel_values:1x3x224x224"
    assert trt["trt_profile_opt_shapes"] == "pixel_values:8x3x224x224"
    assert trt["trt_profile_max_shapes"] == "pixel_values:32x3x224x224"
    with pytest.raises(ValueError, match="unknown execution provider 'rocm'"):
        providers(python_model, "rocm")


def test_model_names_the_missing_provider_and_what_is_available(
    python_model: types.ModuleType,
) -> None:
    available = ["AzureExecutionProvider", "CPUExecutionProvider"]
    message = python_model.missing_providers_message(
        "tensorrt", ["TensorrtExecutionProvider", "CUDAExecutionProvider"], available, "1.2.3"
    )
    assert "needs TensorrtExecutionProvider, CUDAExecutionProvider" in message
    assert "available: AzureExecutionProvider, CPUExecutionProvider" in message
    assert "refusing to fall back to CPU" in message and "onnxruntime 1.2.3" in message
    assert (
        python_model.missing_providers_message("cpu", ["CPUExecutionProvider"], available, "1")
        is None
    )


def test_model_splits_a_merged_batch_back_per_request(python_model: types.ModuleType) -> None:
    assert python_model.split_points([1, 3, 2]) == [(0, 1), (1, 4), (4, 6)]
    assert python_model.split_points([]) == []


def test_model_shares_cpus_between_instances(python_model: types.ModuleType) -> None:
    one = python_model.default_intra_op_threads(1)
    assert one >= 1
    assert python_model.default_intra_op_threads(10_000) == 1


def test_model_reads_string_parameters_from_triton_json(python_model: types.ModuleType) -> None:
    config = {"parameters": {"execution_provider": {"string_value": "cuda"}}}
    assert python_model.config_parameters(config) == {"execution_provider": "cuda"}
    assert python_model.config_parameters({}) == {}


# --- tritonserver: version, backend directory, command line ---------------------------------

OPTION_TABLE = """\
+----------------------------------+------------------------------------------+
| Option                           | Value                                    |
+----------------------------------+------------------------------------------+
| server_id                        | triton                                   |
| server_version                   | 2.51.0                                   |
+----------------------------------+------------------------------------------+
error: creating server: Internal - failed to stat file /nonexistent
"""


def test_server_version_is_read_from_the_startup_option_table() -> None:
    assert tritonserver.parse_server_version(OPTION_TABLE) == "2.51.0"
    assert tritonserver.parse_server_version("tritonserver: unrecognized option") is None


def fake_install(root: Path) -> tritonserver.TritonInstall:
    root.mkdir(parents=True, exist_ok=True)
    for name in ("libtriton_python.so", "triton_python_backend_utils.py", "stub"):
        (root / name).write_text(f"contents of {name}")
    (root / "stub").chmod(0o755)
    return tritonserver.TritonInstall(
        binary=root / "tritonserver",
        libs_dir=root / "libs",
        stub=root / "stub",
        backend_library=root / "libtriton_python.so",
        backend_utils=root / "triton_python_backend_utils.py",
        wheel_version="0.7.0",
        version="2.51.0",
        python_version="3.11",
    )


def test_backend_directory_is_assembled_in_the_cache_and_reused(tmp_path: Path) -> None:
    install = fake_install(tmp_path / "wheel")
    backends = tritonserver.prepare_backend_directory(install, tmp_path / "cache")
    assert backends == tmp_path / "cache" / "tritonserver-2.51.0-py3.11" / "backends"
    python_dir = backends / "python"
    assert sorted(p.name for p in python_dir.iterdir()) == [
        "libtriton_python.so",
        "triton_python_backend_stub",
        "triton_python_backend_utils.py",
    ]
    stub = python_dir / "triton_python_backend_stub"
    assert stub.stat().st_mode & 0o111  # still executable
    stamp = stub.stat().st_mtime_ns
    assert tritonserver.prepare_backend_directory(install, tmp_path / "cache") == backends
    assert stub.stat().st_mtime_ns == stamp  # identical files are not copied again

    install.stub.write_text("a newer stub")
    tritonserver.prepare_backend_directory(install, tmp_path / "cache")
    assert stub.read_text() == "a newer stub"


def test_default_cache_dir_honours_bakeoff_cache_dir(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("BAKEOFF_CACHE_DIR", str(tmp_path))
    assert tritonserver.default_cache_dir() == tmp_path
    monkeypatch.delenv("BAKEOFF_CACHE_DIR")
    assert tritonserver.default_cache_dir() == Path.home() / ".cache" / "bakeoff"


def test_command_serves_the_repo_with_strict_settings_and_the_venv(tmp_path: Path) -> None:
    install = fake_install(tmp_path / "wheel")
    command = tritonserver.tritonserver_command(
        install,
        tmp_path / "repo",
        8000,
        8001,
        8002,
        backend_dir=tmp_path / "backends",
        python_env=Path("/venv"),
        inherit_env={"PATH": "/usr/bin", "LD_LIBRARY_PATH": "/opt/lib"},
    )
    assert command.argv[0] == str(install.binary)
    flags = set(command.argv[1:])
    assert {
        f"--model-repository={tmp_path / 'repo'}",
        f"--backend-directory={tmp_path / 'backends'}",
        "--http-port=8000",
        "--grpc-port=8001",
        "--metrics-port=8002",
        "--allow-metrics=true",
        "--allow-gpu-metrics=false",
        "--disable-auto-complete-config",
        "--model-control-mode=none",
        "--exit-on-error=true",
        "--strict-readiness=true",
        "--http-address=127.0.0.1",
    } <= flags
    assert command.ready_url == "http://127.0.0.1:8000/v2/health/ready"
    # The stub ignores PYTHONPATH (isolated interpreter) and finds the venv through PATH.
    assert command.env["PATH"] == "/venv/bin:/usr/bin"
    assert "PYTHONPATH" not in command.env
    ld_path = command.env["LD_LIBRARY_PATH"].split(":")
    assert ld_path[0] == str(install.libs_dir) and ld_path[-1] == "/opt/lib"


def test_command_for_images_binds_every_interface_but_probes_loopback(tmp_path: Path) -> None:
    command = tritonserver.tritonserver_command(
        fake_install(tmp_path),
        tmp_path / "repo",
        9000,
        9001,
        9002,
        backend_dir=tmp_path,
        bind_address="0.0.0.0",
        gpu_metrics=True,
        inherit_env={},
    )
    assert "--http-address=0.0.0.0" in command.argv
    assert "--allow-gpu-metrics=true" in command.argv
    assert command.ready_url == "http://127.0.0.1:9000/v2/health/ready"


def test_missing_wheel_says_run_make_venv(monkeypatch: pytest.MonkeyPatch) -> None:
    def not_installed(name: str) -> None:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", not_installed)
    with pytest.raises(tritonserver.TritonNotInstalledError, match="run `make venv`"):
        tritonserver.find_tritonserver()


def test_command_makes_a_relative_repository_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # tritonserver resolves a relative repository path against each model's version folder.
    monkeypatch.chdir(tmp_path)
    command = tritonserver.tritonserver_command(
        fake_install(tmp_path / "wheel"), Path("results/repo"), 1, 2, 3, backend_dir=tmp_path
    )
    assert f"--model-repository={tmp_path / 'results' / 'repo'}" in command.argv


def test_pytorch_runtime_config_places_one_instance_on_each_gpu() -> None:
    text = triton_repo.build_pytorch_backend_config(
        "vit", builtin="vit-b32-clip", seed=3, weights=None, max_batch_size=32,
        precision=Precision.FP16, gpus=[0, 1], preferred_batch_sizes=[], max_queue_delay_us=50,
        torch_version="2.11.0", python_path=["/src/images/serve"], warmup_batch_sizes=[1, 32],
    )  # fmt: skip
    config = parse(text)
    (group,) = config.instance_group
    assert group.kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    assert list(group.gpus) == [0, 1] and group.count == 1
    params = {key: value.string_value for key, value in config.parameters.items()}
    assert params["model_runtime"] == "pytorch"
    assert params["runtime"] == "pytorch 2.11.0 cuda fp16 via Triton python backend"
    assert (params["builtin"], params["seed"], params["precision"]) == ("vit-b32-clip", "3", "fp16")
    assert params["python_path"] == "/src/images/serve"
    assert [w.batch_size for w in config.model_warmup] == [1, 32]


def test_pytorch_runtime_needs_a_gpu() -> None:
    with pytest.raises(ValueError, match="at least one GPU"):
        triton_repo.build_pytorch_backend_config(
            "vit", builtin="vit-b32-clip", seed=0, weights=None, max_batch_size=8,
            precision=Precision.FP16, gpus=[], preferred_batch_sizes=[], max_queue_delay_us=0,
            torch_version="2.11.0",
        )  # fmt: skip
