"""Generate Triton model repositories for the exported ONNX model.

Called by the local runner, the protocol tests and the model-prep image. Config text comes
from pure `build_*_config` functions (unit-tested by parsing them with Triton's own
ModelConfig protobuf); `write_*_repository` only puts files in place.

`TritonModelOptions`, `validate` and `config_text` are shared with `triton_native`, which
writes the same model for NVIDIA's onnxruntime backend: one set of options, one set of rules
and one layout for every config Bakeoff generates.

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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

# model_configs, not model: the CLI builds its choices from this module without importing torch.
from bakeoff_serve import model_configs
from bakeoff_serve.options import ExecutionProvider, Precision

ORT_PROVIDER_NAMES: Final[Mapping[ExecutionProvider, str]] = {
    ExecutionProvider.CPU: "CPUExecutionProvider",
    ExecutionProvider.CUDA: "CUDAExecutionProvider",
    ExecutionProvider.TENSORRT: "TensorrtExecutionProvider",
}
# ONNX Runtime serves the graph as exported (fp32); only TensorRT builds an fp16 engine from it.
ONNX_RUNTIME_PRECISIONS: Final = frozenset({Precision.FP32, Precision.FP16})
MODEL_VERSION: Final = "1"
ONNX_FILENAME: Final = "model.onnx"
PYTHON_MODEL_SOURCE: Final = Path(__file__).with_name("triton_python_model.py")
# Triton takes the model name from the directory; keep it to a portable, URL-safe alphabet.
_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")

TritonBackend = Literal["python", "onnxruntime"]


@dataclass(frozen=True, kw_only=True)
class TritonModelOptions:
    """What a Triton model Bakeoff generates is asked for, whichever backend serves it.

    Plain data: `validate` says whether ONNX Runtime in Triton can serve it as asked (the
    PyTorch-runtime config keeps only the name and batching rules).
    """

    model_name: str
    image_size: int
    embed_dim: int
    max_batch_size: int
    execution_provider: ExecutionProvider
    precision: Precision = Precision.FP32
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_delay_us: int = 0
    # None: every batch size the dynamic batcher is likely to form, so "ready" means warm;
    # (): no warm-up at all.
    warmup_batch_sizes: tuple[int, ...] | None = None

    @property
    def warmup(self) -> list[int]:
        """The batch sizes Triton runs before it marks the model ready: ascending, once each."""
        if self.warmup_batch_sizes is None:
            return sorted({1, *self.preferred_batch_sizes, self.max_batch_size})
        return sorted(set(self.warmup_batch_sizes))


def validate(options: TritonModelOptions) -> None:
    """Raise ValueError, naming the bad value, unless Triton can serve `options` as asked."""
    # Checked, not left to the type: scripts and tests pass plain strings.
    if options.execution_provider not in ORT_PROVIDER_NAMES:
        raise ValueError(
            f"execution provider '{options.execution_provider}' is not one of "
            f"{', '.join(ORT_PROVIDER_NAMES)}"
        )
    if options.precision not in ONNX_RUNTIME_PRECISIONS:
        allowed = [precision for precision in Precision if precision in ONNX_RUNTIME_PRECISIONS]
        raise ValueError(f"precision '{options.precision}' is not one of {', '.join(allowed)}")
    if (
        options.precision == Precision.FP16
        and options.execution_provider != ExecutionProvider.TENSORRT
    ):
        raise ValueError(
            "precision 'fp16' needs executionProvider 'tensorrt' "
            f"(got '{options.execution_provider}'): "
            "ONNX Runtime's CPU and CUDA providers run the fp32 graph as exported"
        )
    if options.image_size < 1 or options.embed_dim < 1:
        raise ValueError(
            f"image_size and embed_dim must be >= 1, got {options.image_size}, {options.embed_dim}"
        )
    _check_name_and_batching(options)


def _check_name_and_batching(options: TritonModelOptions) -> None:
    """The rules every config keeps, whatever runs the model."""
    if not _MODEL_NAME.match(options.model_name):
        raise ValueError(
            f"model name {options.model_name!r} must match {_MODEL_NAME.pattern} (it is a "
            "directory and a URL path segment)"
        )
    max_batch_size = options.max_batch_size
    if max_batch_size < 1:
        raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
    preferred = options.preferred_batch_sizes
    for label, sizes in (("preferred", preferred), ("warm-up", options.warmup)):
        bad = [size for size in sizes if not 1 <= size <= max_batch_size]
        if bad:
            raise ValueError(
                f"{label} batch sizes {bad} are outside 1..max_batch_size={max_batch_size}"
            )
    if len(set(preferred)) != len(preferred):
        raise ValueError(f"preferred batch sizes repeat: {list(preferred)}")
    if options.max_queue_delay_us < 0:
        raise ValueError(f"max_queue_delay_us must be >= 0, got {options.max_queue_delay_us}")


def runtime_description(
    options: TritonModelOptions,
    triton_backend: TritonBackend,
    onnxruntime_version: str | None = None,
) -> str:
    """What serves the model, as results report it (`parameters.runtime` in the config).

    No `onnxruntime_version` where the serving image, not Bakeoff, picks ONNX Runtime.
    """
    runtime = "onnxruntime" if onnxruntime_version is None else f"onnxruntime {onnxruntime_version}"
    provider = ORT_PROVIDER_NAMES[options.execution_provider]
    suffix = "" if options.precision == Precision.FP32 else f" {options.precision}"
    return f"{runtime} {provider}{suffix} via Triton {triton_backend} backend"


def quote(text: str) -> str:
    """A protobuf text-format string literal (our values are plain ASCII; refuse others)."""
    if not text.isascii() or any(ord(c) < 0x20 for c in text):
        raise ValueError(f"config strings must be printable ASCII, got {text!r}")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def dims(values: Sequence[int]) -> str:
    """A protobuf text-format list of ints."""
    return "[ " + ", ".join(str(value) for value in values) + " ]"


def config_text(
    options: TritonModelOptions,
    *,
    generator: str,
    serving: Sequence[str],
    instance_group: str,
    parameters: Mapping[str, str],
    optimization: Sequence[str] = (),
) -> str:
    """config.pbtxt text in the layout every generator shares. Pure; validates nothing.

    `serving` names what runs the model (`backend` or `platform` lines), `instance_group`
    places the instances, `optimization` is an optional block before the `parameters`.
    Triton counts warm-up inferences in `nv_inference_*`: diff metrics, never read totals.
    """
    sample_dims = [3, options.image_size, options.image_size]
    warmup = options.warmup
    lines = [
        f"# Generated by {generator}; change the generator, not this file.",
        f"name: {quote(options.model_name)}",
        *serving,
        f"max_batch_size: {options.max_batch_size}",
        "input [",
        "  {",
        f"    name: {quote(model_configs.INPUT_NAME)}",
        "    data_type: TYPE_FP32",
        f"    dims: {dims(sample_dims)}",
        "  }",
        "]",
        "output [",
        "  {",
        f"    name: {quote(model_configs.OUTPUT_NAME)}",
        "    data_type: TYPE_FP32",
        f"    dims: {dims([options.embed_dim])}",
        "  }",
        "]",
        "dynamic_batching {",
    ]
    if options.preferred_batch_sizes:
        lines.append(f"  preferred_batch_size: {dims(sorted(options.preferred_batch_sizes))}")
    lines += [
        f"  max_queue_delay_microseconds: {options.max_queue_delay_us}",
        "}",
        instance_group,
        *optimization,
        "parameters [",
    ]
    entries = [
        f"  {{ key: {quote(key)} value: {{ string_value: {quote(value)} }} }}"
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
                    f"      key: {quote(model_configs.INPUT_NAME)}",
                    "      value: { data_type: TYPE_FP32 "
                    f"dims: {dims(sample_dims)} zero_data: true }}",
                    "    }",
                    "  }",
                ]
            )
            for size in warmup
        ]
        lines += [",\n".join(warm_entries), "]"]
    return "\n".join(lines) + "\n"


def build_python_backend_config(
    options: TritonModelOptions,
    *,
    onnxruntime_version: str,
    instance_count: int = 1,
    intra_op_threads: int | None = None,
    onnx_filename: str = ONNX_FILENAME,
    model_provenance: str = "",
    python_path: Sequence[str] = (),
) -> str:
    """config.pbtxt text for the Python-backend ONNX Runtime model. Pure.

    Triton runs `model_warmup` before it marks the model ready (the Python backend supports
    it; each entry arrives in `execute` as `batch_size` requests of one image, which the
    model concatenates into one ORT run), so cold start and measurement stay apart.
    """
    validate(options)
    if instance_count < 1:
        raise ValueError(f"instance_count must be >= 1, got {instance_count}")
    if intra_op_threads is not None and intra_op_threads < 1:
        raise ValueError(f"intra_op_threads must be >= 1 when set, got {intra_op_threads}")
    parameters = {
        "runtime": runtime_description(options, "python", onnxruntime_version),
        "model_runtime": "onnxruntime",
        "execution_provider": str(options.execution_provider),
        "onnxruntime_version": onnxruntime_version,
        "precision": str(options.precision),
        "onnx_model": onnx_filename,
    }
    if intra_op_threads is not None:
        parameters["intra_op_threads"] = str(intra_op_threads)
    if python_path:
        parameters["python_path"] = os.pathsep.join(python_path)
    if model_provenance:
        parameters["model_provenance"] = model_provenance
    return config_text(
        options,
        generator=__name__,
        serving=['backend: "python"'],
        # KIND_CPU even for GPU providers: the instance is a CPU process (the stub); ONNX
        # Runtime inside it owns the GPU, chosen by device_id.
        instance_group=f"instance_group [ {{ kind: KIND_CPU count: {instance_count} }} ]",
        parameters=parameters,
    )


def build_pytorch_backend_config(
    model_name: str,
    *,
    builtin: str,
    seed: int,
    weights: Path | None,
    max_batch_size: int,
    precision: Precision,
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
    config = model_configs.BUILTIN_MODELS[builtin]
    options = TritonModelOptions(
        model_name=model_name,
        image_size=config.image_size,
        embed_dim=config.embed_dim,
        max_batch_size=max_batch_size,
        # The module runs on CUDA in any precision: ONNX Runtime's rules (`validate`) do not
        # apply, only the batching ones.
        execution_provider=ExecutionProvider.CUDA,
        precision=precision,
        preferred_batch_sizes=tuple(preferred_batch_sizes),
        max_queue_delay_us=max_queue_delay_us,
        warmup_batch_sizes=None if warmup_batch_sizes is None else tuple(warmup_batch_sizes),
    )
    _check_name_and_batching(options)
    if not gpus:
        raise ValueError("the PyTorch runtime in Triton needs at least one GPU")
    parameters = {
        "runtime": f"pytorch {torch_version} cuda {precision} via Triton python backend",
        "model_runtime": "pytorch",
        "builtin": builtin,
        "seed": str(seed),
        "weights": str(weights or ""),
        "precision": str(precision),
        "python_path": os.pathsep.join(python_path),
        "model_provenance": (
            f"{builtin}, weights {weights}"
            if weights
            else f"{builtin}, seeded random init (seed={seed}); no pretrained weights"
        ),
    }
    return config_text(
        options,
        generator=__name__,
        serving=['backend: "python"'],
        instance_group=f"instance_group [ {{ kind: KIND_GPU count: 1 gpus: {dims(gpus)} }} ]",
        parameters=parameters,
    )


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


def place_file(source: Path, target: Path) -> None:
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
    options: TritonModelOptions,
    onnx_path: Path,
    *,
    instance_count: int = 1,
    intra_op_threads: int | None = None,
    onnxruntime_version: str | None = None,
) -> Path:
    """Write `<repo_dir>/<model_name>/` (config, model.py, model.onnx); returns that dir.

    `onnxruntime_version` defaults to the one importable here, which is the one the
    tritonserver stub uses when it runs on this Python environment (see `tritonserver`);
    the model refuses to load if they differ, so the recorded runtime is always true.
    """
    python_path: tuple[str, ...] = ()
    if onnxruntime_version is None:
        import onnxruntime

        onnxruntime_version = str(onnxruntime.__version__)
        # The stub ignores PYTHONPATH: an onnxruntime found through it here (onnxruntime-gpu
        # installed beside a system's CPU build) would not be the one the stub imports.
        python_path = (str(Path(onnxruntime.__file__).parent.parent),)
    text = build_python_backend_config(
        options,
        onnxruntime_version=onnxruntime_version,
        instance_count=instance_count,
        intra_op_threads=intra_op_threads,
        model_provenance=export_provenance(onnx_path),
        python_path=python_path,
    )
    if not onnx_path.is_file():
        raise FileNotFoundError(f"ONNX model {onnx_path} does not exist; export it first")
    model_dir = repo_dir / options.model_name
    version_dir = model_dir / MODEL_VERSION
    version_dir.mkdir(parents=True, exist_ok=True)
    place_file(onnx_path, version_dir / ONNX_FILENAME)
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
    precision: Precision,
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
