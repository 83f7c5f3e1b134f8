"""Generate Triton model repositories for the exported ONNX model.

Called by the local runner, the protocol tests and the model-prep image. Config text comes
from pure `build_*_config` functions (unit-tested by parsing them with Triton's own
ModelConfig protobuf); `write_*_repository` only puts files in place.

The Python-backend layout is what the `tritonserver` bundled in the nvidia-pytriton wheel
serves (it has no native ONNX Runtime backend):

    <repo>/<model_name>/config.pbtxt
    <repo>/<model_name>/1/model.py      (a copy of triton_python_model.py)
    <repo>/<model_name>/1/model.onnx
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Final, Literal, get_args

from bakeoff_serve import model as model_lib

ExecutionProvider = Literal["cpu", "cuda", "tensorrt"]
Precision = Literal["fp32", "fp16"]
TorchPrecision = Literal["fp32", "fp16", "bf16"]
EXECUTION_PROVIDERS: Final[tuple[str, ...]] = get_args(ExecutionProvider)
ORT_PROVIDER_NAMES: Final[dict[str, str]] = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}
MODEL_VERSION: Final = "1"
ONNX_FILENAME: Final = "model.onnx"
PYTHON_MODEL_SOURCE: Final = Path(__file__).with_name("triton_python_model.py")
# Triton takes the model name from the directory; keep it to a portable, URL-safe alphabet.
_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


def runtime_description(
    execution_provider: ExecutionProvider, onnxruntime_version: str, precision: Precision = "fp32"
) -> str:
    """What serves the model, as results report it (`parameters.runtime` in the config)."""
    provider = ORT_PROVIDER_NAMES[execution_provider]
    suffix = f" {precision}" if precision != "fp32" else ""
    return f"onnxruntime {onnxruntime_version} {provider}{suffix} via Triton python backend"


def default_warmup_batch_sizes(
    max_batch_size: int, preferred_batch_sizes: Sequence[int]
) -> list[int]:
    """Every batch size the dynamic batcher is likely to form, so "ready" means warm."""
    return sorted({1, *preferred_batch_sizes, max_batch_size})


def _quote(text: str) -> str:
    """A protobuf text-format string literal (our values are plain ASCII; refuse others)."""
    if not text.isascii() or any(ord(c) < 0x20 for c in text):
        raise ValueError(f"config strings must be printable ASCII, got {text!r}")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _dims(dims: Sequence[int]) -> str:
    return "[ " + ", ".join(str(d) for d in dims) + " ]"


def _validate(
    model_name: str,
    max_batch_size: int,
    execution_provider: str,
    image_size: int,
    embed_dim: int,
    preferred_batch_sizes: Sequence[int],
    max_queue_delay_us: int,
    instance_count: int,
    precision: str,
    warmup_batch_sizes: Sequence[int],
    intra_op_threads: int | None,
) -> None:
    if not _MODEL_NAME.match(model_name):
        raise ValueError(
            f"model name {model_name!r} must match {_MODEL_NAME.pattern} (it is a directory "
            "and a URL path segment)"
        )
    if execution_provider not in EXECUTION_PROVIDERS:
        raise ValueError(
            f"execution provider {execution_provider!r} is not one of "
            f"{', '.join(EXECUTION_PROVIDERS)}"
        )
    if precision not in get_args(Precision):
        raise ValueError(f"precision {precision!r} is not one of {', '.join(get_args(Precision))}")
    if precision == "fp16" and execution_provider != "tensorrt":
        raise ValueError(
            f"precision 'fp16' needs executionProvider 'tensorrt' (got {execution_provider!r}): "
            "ONNX Runtime's CPU and CUDA providers run the fp32 graph as exported"
        )
    if max_batch_size < 1:
        raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
    if image_size < 1 or embed_dim < 1:
        raise ValueError(f"image_size and embed_dim must be >= 1, got {image_size}, {embed_dim}")
    for label, sizes in (("preferred", preferred_batch_sizes), ("warm-up", warmup_batch_sizes)):
        bad = [size for size in sizes if not 1 <= size <= max_batch_size]
        if bad:
            raise ValueError(
                f"{label} batch sizes {bad} are outside 1..max_batch_size={max_batch_size}"
            )
    if len(set(preferred_batch_sizes)) != len(preferred_batch_sizes):
        raise ValueError(f"preferred batch sizes repeat: {list(preferred_batch_sizes)}")
    if max_queue_delay_us < 0:
        raise ValueError(f"max_queue_delay_us must be >= 0, got {max_queue_delay_us}")
    if instance_count < 1:
        raise ValueError(f"instance_count must be >= 1, got {instance_count}")
    if intra_op_threads is not None and intra_op_threads < 1:
        raise ValueError(f"intra_op_threads must be >= 1 when set, got {intra_op_threads}")


def build_python_backend_config(
    model_name: str,
    *,
    max_batch_size: int,
    execution_provider: ExecutionProvider,
    image_size: int,
    embed_dim: int,
    preferred_batch_sizes: Sequence[int],
    max_queue_delay_us: int,
    onnxruntime_version: str,
    instance_count: int = 1,
    precision: Precision = "fp32",
    warmup_batch_sizes: Sequence[int] | None = None,
    intra_op_threads: int | None = None,
    onnx_filename: str = ONNX_FILENAME,
    model_provenance: str = "",
) -> str:
    """config.pbtxt text for the Python-backend ONNX Runtime model. Pure.

    `warmup_batch_sizes=None` warms every size in `default_warmup_batch_sizes`; `[]` none.
    Triton runs `model_warmup` before it marks the model ready (the Python backend supports
    it; each entry arrives in `execute` as `batch_size` requests of one image, which the
    model concatenates into one ORT run), so cold start and measurement stay apart. Note that
    Triton counts warm-up inferences in `nv_inference_*`: diff metrics, never read totals.
    """
    warmup = (
        default_warmup_batch_sizes(max_batch_size, preferred_batch_sizes)
        if warmup_batch_sizes is None
        else sorted(set(warmup_batch_sizes))
    )
    _validate(
        model_name,
        max_batch_size,
        execution_provider,
        image_size,
        embed_dim,
        preferred_batch_sizes,
        max_queue_delay_us,
        instance_count,
        precision,
        warmup,
        intra_op_threads,
    )
    parameters = {
        "runtime": runtime_description(execution_provider, onnxruntime_version, precision),
        "model_runtime": "onnxruntime",
        "execution_provider": execution_provider,
        "onnxruntime_version": onnxruntime_version,
        "precision": precision,
        "onnx_model": onnx_filename,
    }
    if intra_op_threads is not None:
        parameters["intra_op_threads"] = str(intra_op_threads)
    if model_provenance:
        parameters["model_provenance"] = model_provenance
    # KIND_CPU even for GPU providers: the instance is a CPU process (the stub); ONNX
    # Runtime inside it owns the GPU, chosen by device_id.
    instance_group = f"instance_group [ {{ kind: KIND_CPU count: {instance_count} }} ]"
    return _python_backend_config_text(
        model_name,
        max_batch_size=max_batch_size,
        image_size=image_size,
        embed_dim=embed_dim,
        preferred_batch_sizes=preferred_batch_sizes,
        max_queue_delay_us=max_queue_delay_us,
        instance_group=instance_group,
        parameters=parameters,
        warmup=warmup,
    )


def build_pytorch_backend_config(
    model_name: str,
    *,
    builtin: str,
    seed: int,
    weights: Path | None,
    max_batch_size: int,
    precision: TorchPrecision,
    gpus: Sequence[int],
    preferred_batch_sizes: Sequence[int],
    max_queue_delay_us: int,
    torch_version: str,
    python_path: Sequence[str] = (),
    warmup_batch_sizes: Sequence[int] | None = None,
) -> str:
    """config.pbtxt text for the Python-backend model running the PyTorch module on GPUs. Pure.

    One instance per GPU (KIND_GPU with `gpus`), like the native configs; the stub imports
    `bakeoff_serve.model` (from `python_path` when it is not installed), so Triton serves the
    very module Bakeoff's PyTorch server runs, eagerly, in `precision`.
    """
    config = model_lib.BUILTIN_MODELS[builtin]
    warmup = (
        default_warmup_batch_sizes(max_batch_size, preferred_batch_sizes)
        if warmup_batch_sizes is None
        else sorted(set(warmup_batch_sizes))
    )
    _validate(
        model_name, max_batch_size, "cuda", config.image_size, config.embed_dim,
        preferred_batch_sizes, max_queue_delay_us, 1, "fp32", warmup, None,
    )  # fmt: skip
    if not gpus:
        raise ValueError("the PyTorch runtime in Triton needs at least one GPU")
    parameters = {
        "runtime": f"pytorch {torch_version} cuda {precision} via Triton python backend",
        "model_runtime": "pytorch",
        "builtin": builtin,
        "seed": str(seed),
        "weights": str(weights or ""),
        "precision": precision,
        "python_path": os.pathsep.join(python_path),
        "model_provenance": (
            f"{builtin}, weights {weights}"
            if weights
            else f"{builtin}, seeded random init (seed={seed}); no pretrained weights"
        ),
    }
    instance_group = f"instance_group [ {{ kind: KIND_GPU count: 1 gpus: {_dims(gpus)} }} ]"
    return _python_backend_config_text(
        model_name,
        max_batch_size=max_batch_size,
        image_size=config.image_size,
        embed_dim=config.embed_dim,
        preferred_batch_sizes=preferred_batch_sizes,
        max_queue_delay_us=max_queue_delay_us,
        instance_group=instance_group,
        parameters=parameters,
        warmup=warmup,
    )


def _python_backend_config_text(
    model_name: str,
    *,
    max_batch_size: int,
    image_size: int,
    embed_dim: int,
    preferred_batch_sizes: Sequence[int],
    max_queue_delay_us: int,
    instance_group: str,
    parameters: dict[str, str],
    warmup: Sequence[int],
) -> str:
    sample_dims = [3, image_size, image_size]
    lines = [
        "# Generated by bakeoff_serve.triton_repo; change the generator, not this file.",
        f"name: {_quote(model_name)}",
        'backend: "python"',
        f"max_batch_size: {max_batch_size}",
        "input [",
        "  {",
        f"    name: {_quote(model_lib.INPUT_NAME)}",
        "    data_type: TYPE_FP32",
        f"    dims: {_dims(sample_dims)}",
        "  }",
        "]",
        "output [",
        "  {",
        f"    name: {_quote(model_lib.OUTPUT_NAME)}",
        "    data_type: TYPE_FP32",
        f"    dims: {_dims([embed_dim])}",
        "  }",
        "]",
        "dynamic_batching {",
    ]
    if preferred_batch_sizes:
        lines.append(f"  preferred_batch_size: {_dims(sorted(preferred_batch_sizes))}")
    lines += [
        f"  max_queue_delay_microseconds: {max_queue_delay_us}",
        "}",
        instance_group,
        "parameters [",
    ]
    entries = [
        f"  {{ key: {_quote(key)} value: {{ string_value: {_quote(value)} }} }}"
        for key, value in parameters.items()
    ]
    lines += [",\n".join(entries), "]"]
    if warmup:
        lines.append("model_warmup [")
        warm_entries = [
            "\n".join(
                [
                    "  {",
                    f'    name: "batch_{size}"',
                    f"    batch_size: {size}",
                    "    inputs {",
                    f"      key: {_quote(model_lib.INPUT_NAME)}",
                    "      value: { data_type: TYPE_FP32 "
                    f"dims: {_dims(sample_dims)} zero_data: true }}",
                    "    }",
                    "  }",
                ]
            )
            for size in warmup
        ]
        lines += [",\n".join(warm_entries), "]"]
    return "\n".join(lines) + "\n"


def export_provenance(onnx_path: Path) -> str:
    """What the exported model is, from the record `onnx_export` writes beside the file
    (e.g. "vit-b32-clip, seeded random init (seed=0); ..., ONNX opset 17"); "" without one."""
    try:
        record = json.loads(onnx_path.with_suffix(".json").read_text())
    except (OSError, ValueError):
        return ""
    provenance = str(record.get("provenance", ""))
    opset = record.get("opset")
    return f"{provenance}, exported to ONNX opset {opset}" if provenance and opset else provenance


def _place_file(source: Path, target: Path) -> None:
    """Hard-link when possible (a ViT-B/32 export is ~350 MB), else copy; replace atomically."""
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(source, tmp)
    except OSError:  # another filesystem, or links not allowed
        shutil.copyfile(source, tmp)
    os.replace(tmp, target)


def write_python_backend_repository(
    repo_dir: Path,
    model_name: str,
    onnx_path: Path,
    *,
    max_batch_size: int,
    execution_provider: ExecutionProvider,
    image_size: int,
    embed_dim: int,
    preferred_batch_sizes: Sequence[int],
    max_queue_delay_us: int,
    instance_count: int = 1,
    precision: Precision = "fp32",
    warmup_batch_sizes: Sequence[int] | None = None,
    intra_op_threads: int | None = None,
    onnxruntime_version: str | None = None,
) -> Path:
    """Write `<repo_dir>/<model_name>/` (config, model.py, model.onnx); returns that dir.

    `onnxruntime_version` defaults to the one importable here, which is the one the
    tritonserver stub uses when it runs on this Python environment (see `tritonserver`);
    the model refuses to load if they differ, so the recorded runtime is always true.
    """
    if onnxruntime_version is None:
        import onnxruntime

        onnxruntime_version = str(onnxruntime.__version__)
    text = build_python_backend_config(
        model_name,
        max_batch_size=max_batch_size,
        execution_provider=execution_provider,
        image_size=image_size,
        embed_dim=embed_dim,
        preferred_batch_sizes=preferred_batch_sizes,
        max_queue_delay_us=max_queue_delay_us,
        onnxruntime_version=onnxruntime_version,
        instance_count=instance_count,
        precision=precision,
        warmup_batch_sizes=warmup_batch_sizes,
        intra_op_threads=intra_op_threads,
        model_provenance=export_provenance(onnx_path),
    )
    if not onnx_path.is_file():
        raise FileNotFoundError(f"ONNX model {onnx_path} does not exist; export it first")
    model_dir = repo_dir / model_name
    version_dir = model_dir / MODEL_VERSION
    version_dir.mkdir(parents=True, exist_ok=True)
    _place_file(onnx_path, version_dir / ONNX_FILENAME)
    shutil.copyfile(PYTHON_MODEL_SOURCE, version_dir / "model.py")
    (model_dir / "config.pbtxt").write_text(text)
    return model_dir


def write_pytorch_backend_repository(
    repo_dir: Path,
    model_name: str,
    *,
    builtin: str,
    seed: int,
    weights: Path | None,
    max_batch_size: int,
    precision: TorchPrecision,
    gpus: Sequence[int],
    preferred_batch_sizes: Sequence[int],
    max_queue_delay_us: int,
    python_path: Sequence[str] = (),
    warmup_batch_sizes: Sequence[int] | None = None,
) -> Path:
    """Write `<repo_dir>/<model_name>/` (config and model.py; no weights file); returns it."""
    import torch

    text = build_pytorch_backend_config(
        model_name,
        builtin=builtin,
        seed=seed,
        weights=weights,
        max_batch_size=max_batch_size,
        precision=precision,
        gpus=gpus,
        preferred_batch_sizes=preferred_batch_sizes,
        max_queue_delay_us=max_queue_delay_us,
        torch_version=torch.__version__.split("+")[0],
        python_path=python_path,
        warmup_batch_sizes=warmup_batch_sizes,
    )
    model_dir = repo_dir / model_name
    version_dir = model_dir / MODEL_VERSION
    version_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(PYTHON_MODEL_SOURCE, version_dir / "model.py")
    (model_dir / "config.pbtxt").write_text(text)
    return model_dir
