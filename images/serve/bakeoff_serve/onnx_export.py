"""Export the reference model to ONNX, prove the export matches PyTorch, and cache it.

Called by the Triton model-repository preparation (`triton_repo`, the local runner, the
model-prep image): every Triton backend serves the file this module writes, and no file
leaves here unless ONNX Runtime reproduces the PyTorch outputs on seeded inputs.

The batch axis is dynamic on both the input and the output, so one file serves every batch
size that Triton's dynamic batcher forms.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import tempfile
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final

import numpy as np
import torch

from bakeoff_serve import model as model_lib

DEFAULT_OPSET: Final = 17
# Export is refused above this; fp32 ViT-B/32 in ORT vs PyTorch agrees to ~1e-6.
MAX_ABS_ERROR: Final = 1e-4
BATCH_AXIS: Final = "batch"


class OnnxExportError(RuntimeError):
    """The export failed, or its outputs disagree with PyTorch beyond the tolerance."""


def _export_legacy(
    model: torch.nn.Module, path: Path, dummy: torch.Tensor, opset: int, dynamic: bool = True
) -> None:
    """The TorchScript exporter: 0.2 s for the tiny model, versus ~4 s for dynamo.

    `dynamic=False` bakes the dummy's batch size in: every shape is a constant, so ONNX
    Runtime folds the shape arithmetic away and no node is left for the CPU (what its CUDA
    graphs need).
    """
    with warnings.catch_warnings():
        # It warns that it is deprecated on every call (we fall back to dynamo once it is
        # gone), and the tracer warns about MultiheadAttention's shape checks, which are
        # constants for this model; the ORT comparison below is the real check.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message="Converting a tensor to a Python boolean")
        torch.onnx.export(
            model,
            (dummy,),
            str(path),
            input_names=[model_lib.INPUT_NAME],
            output_names=[model_lib.OUTPUT_NAME],
            dynamic_axes={
                model_lib.INPUT_NAME: {0: BATCH_AXIS},
                model_lib.OUTPUT_NAME: {0: BATCH_AXIS},
            }
            if dynamic
            else None,
            opset_version=opset,
            dynamo=False,
        )


def _export_dynamo(model: torch.nn.Module, path: Path, dummy: torch.Tensor, opset: int) -> None:
    """The torch.export-based exporter, used when the legacy one is unavailable."""
    batch = torch.export.Dim(BATCH_AXIS, min=1, max=4096)
    program = torch.onnx.export(
        model,
        # torch.export specialises a size-1 dimension to the constant 1, so trace with 2.
        (dummy.expand(2, -1, -1, -1).contiguous(),),
        input_names=[model_lib.INPUT_NAME],
        output_names=[model_lib.OUTPUT_NAME],
        dynamic_shapes=({0: batch},),
        # dynamo emits opset 18 natively and cannot down-convert this graph to 17.
        opset_version=max(opset, 18),
        dynamo=True,
        verbose=False,
    )
    if program is None:  # pragma: no cover - dynamo always returns a program
        raise OnnxExportError("torch.onnx.export(dynamo=True) returned no program")
    program.save(str(path))


def _random_pixels(batch: int, image_size: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.random((batch, 3, image_size, image_size), dtype=np.float32)


def check_onnx_against_torch(
    model: torch.nn.Module, path: Path, batch_sizes: Sequence[int] = (1, 3), seed: int = 0
) -> float:
    """Max absolute difference between ONNX Runtime (CPU) and PyTorch over seeded batches.

    Several batch sizes, so a batch axis that was baked in as a constant fails here, not
    under Triton's dynamic batcher.
    """
    import onnxruntime as ort  # heavy import, only needed for the check

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (onnx_input,) = session.get_inputs()
    image_size = int(onnx_input.shape[-1])
    worst = 0.0
    for index, batch in enumerate(batch_sizes):
        pixels = _random_pixels(batch, image_size, seed + index)
        with torch.inference_mode():
            expected = model(torch.from_numpy(pixels)).numpy()
        (got,) = session.run([model_lib.OUTPUT_NAME], {model_lib.INPUT_NAME: pixels})
        if got.shape != expected.shape:
            raise OnnxExportError(
                f"{path}: ONNX output shape {got.shape} != PyTorch {expected.shape} "
                f"for batch {batch}"
            )
        worst = max(worst, float(np.max(np.abs(got - expected))))
    return worst


def export_onnx(
    model: torch.nn.Module, path: Path, image_size: int, opset: int = DEFAULT_OPSET
) -> Path:
    """Export `model` to `path` with a dynamic batch axis; refuse a file that disagrees."""
    _export_checked(model, path, image_size, opset)
    return path


def _export_checked(model: torch.nn.Module, path: Path, image_size: int, opset: int) -> float:
    """Export, then compare with PyTorch; returns the max abs error, raises above the limit."""
    path.parent.mkdir(parents=True, exist_ok=True)
    dummy = torch.rand(1, 3, image_size, image_size)
    was_training = model.training
    model.eval()
    try:
        # Autograd on: in eval mode with grad off, nn.MultiheadAttention takes its fused
        # fast path (aten::_native_multi_head_attention), which has no ONNX symbolic.
        with torch.enable_grad():
            try:
                _export_legacy(model, path, dummy, opset)
            except Exception as legacy_error:
                try:
                    _export_dynamo(model, path, dummy, opset)
                except Exception as dynamo_error:
                    raise OnnxExportError(
                        f"ONNX export failed with both exporters: legacy: {legacy_error}; "
                        f"dynamo: {dynamo_error}"
                    ) from dynamo_error
        error = check_onnx_against_torch(model, path)
    finally:
        model.train(was_training)
    if error > MAX_ABS_ERROR:
        path.unlink(missing_ok=True)
        raise OnnxExportError(
            f"ONNX export of {type(model).__name__} disagrees with PyTorch: max abs error "
            f"{error:.3g} > {MAX_ABS_ERROR:g}; the file was removed"
        )
    return error


def export_cache_key(builtin: str, weights_sha256: str | None, seed: int, opset: int) -> str:
    """Everything that changes the exported bytes: model, weights or seed, torch, opset."""
    source = f"weights={weights_sha256}" if weights_sha256 else f"seed={seed}"
    text = f"{builtin}|{source}|torch={torch.__version__}|opset={opset}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def prepare_onnx(
    builtin: str,
    weights: Path | None,
    seed: int,
    cache_dir: Path,
    opset: int = DEFAULT_OPSET,
) -> Path:
    """The checked ONNX file for this model, exported once per cache key and then reused.

    Written atomically, with a sidecar saying what it is (`_cached_export`).
    """
    weights_sha = hashlib.sha256(weights.read_bytes()).hexdigest() if weights else None
    key = export_cache_key(builtin, weights_sha, seed, opset)
    target = cache_dir / f"{builtin}-{key}.onnx"

    def export(tmp: Path) -> dict[str, object]:
        net, provenance = model_lib.build_model(builtin, weights, seed)
        image_size = model_lib.BUILTIN_MODELS[builtin].image_size
        error = _export_checked(net, tmp, image_size, opset)
        return {
            "builtin": builtin,
            "provenance": provenance.describe(),
            "torch": torch.__version__,
            "opset": opset,
            "max_abs_error_vs_torch": error,
        }

    return _cached_export(target, export)


def _cached_export(target: Path, export: Callable[[Path], dict[str, object]]) -> Path:
    """`target`, made once by `export` (which writes the file it is given and returns what
    the sidecar records), then reused.

    The file is written under a temporary name and renamed into place, and the sidecar
    written after it marks the export complete: a concurrent or interrupted export never
    leaves a half-written file that a later run would reuse.
    """
    sidecar = target.with_suffix(".json")
    if target.is_file() and sidecar.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        record = export(tmp)
        os.replace(tmp, target)
        sidecar.write_text(json.dumps(record, indent=2) + "\n")
    finally:
        tmp.unlink(missing_ok=True)
    return target


# The served model's output against PyTorch fp32 eager on the same pixels: the suite's parity
# gate asks 0.999 of every backend; an export must do better than that on its own.
MIN_SERVING_COSINE: Final = 0.9995


def serving_cache_key(
    builtin: str, weights_sha256: str | None, seed: int, precision: str, wire: str,
    batch: int | None, opset: int,
) -> str:  # fmt: skip
    base = export_cache_key(builtin, weights_sha256, seed, opset)
    text = f"{base}|{precision}|{wire}|batch={batch or 'dynamic'}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def prepare_serving_onnx(
    builtin: str,
    weights: Path | None,
    seed: int,
    cache_dir: Path,
    *,
    precision: str,
    wire: str,
    batch: int | None,
    opset: int = DEFAULT_OPSET,
) -> Path:
    """The model as the onnxruntime backend serves it, exported once per cache key.

    Unlike `prepare_onnx` (FP32 in, for Triton), the wire dtype's conversion is part of the
    graph (`wire` "uint8": pixels in [0, 255], scaled inside) and the weights are in
    `precision`; `batch` fixes the batch size (one file per batch bucket, for CUDA graphs and
    TensorRT engines) or None for a dynamic batch axis. Checked against PyTorch fp32 eager
    with ONNX Runtime on the CPU before it is kept.
    """
    from bakeoff_serve import device_runner  # the same wire-to-model wrapper the server runs

    weights_sha = hashlib.sha256(weights.read_bytes()).hexdigest() if weights else None
    key = serving_cache_key(builtin, weights_sha, seed, precision, wire, batch, opset)
    target = cache_dir / f"{builtin}-{precision}-{wire}-b{batch or 'dyn'}-{key}.onnx"

    def export(tmp: Path) -> dict[str, object]:
        net, provenance = model_lib.build_model(builtin, weights, seed)
        image_size = model_lib.BUILTIN_MODELS[builtin].image_size
        scaled = wire == "uint8"
        shape = (batch or 2, 3, image_size, image_size)
        pixels = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
        wire_input = pixels if scaled else (pixels / 255.0).astype(np.float32)
        dtype = device_runner.PRECISIONS[precision]
        _trace(net, tmp, wire_input, dtype, scaled, opset, dynamic=batch is None)
        with torch.inference_mode():
            expected = net(torch.from_numpy(pixels / 255.0).float()).numpy()
        cosine = _min_cosine(_run_on_cpu(tmp, wire_input), expected)
        if cosine < MIN_SERVING_COSINE:
            raise OnnxExportError(
                f"the {precision} ONNX export of {builtin} disagrees with PyTorch fp32: cosine "
                f"{cosine:.6f} < {MIN_SERVING_COSINE}"
            )
        return {
            "builtin": builtin, "provenance": provenance.describe(), "torch": torch.__version__,
            "opset": opset, "precision": precision, "wire": wire, "batch": batch,
            "min_cosine_vs_torch_fp32": cosine,
        }  # fmt: skip

    return _cached_export(target, export)


def _trace(
    net: torch.nn.Module, path: Path, wire_input: np.ndarray, dtype: torch.dtype,
    scaled: bool, opset: int, *, dynamic: bool,
) -> None:  # fmt: skip
    """Export the served module: traced on the CPU, or on the GPU where an older PyTorch
    lacks a CPU kernel in fp16. The CPU first: a local run prepares models in its own
    process, and memory that process left on the GPU would count in every later backend's
    VRAM (read for the whole device)."""
    from bakeoff_serve import device_runner

    devices = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]
    for device in devices:
        served = device_runner.WireToModel(copy.deepcopy(net).to(device, dtype), dtype, scaled)
        try:
            with torch.enable_grad():  # see _export_checked: no fused MultiheadAttention path
                dummy = torch.from_numpy(wire_input).to(device)
                _export_legacy(served.eval(), path, dummy, opset, dynamic=dynamic)
            return
        except RuntimeError:
            if device == devices[-1]:
                raise
        finally:
            del served
            if device == "cuda":
                torch.cuda.empty_cache()


def _run_on_cpu(path: Path, pixels: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # fp16 graphs: "cannot constant fold" warnings on CPU
    # ORT_ENABLE_ALL's CPU layout pass crashes ORT 1.32 on the fp16 graph with a dynamic
    # batch axis (a segfault creating the session); the extended level is what it runs.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    (got,) = session.run([model_lib.OUTPUT_NAME], {model_lib.INPUT_NAME: pixels})
    return np.asarray(got, dtype=np.float32)


def _min_cosine(got: np.ndarray, expected: np.ndarray) -> float:
    if got.shape != expected.shape:
        raise OnnxExportError(f"ONNX output shape {got.shape} != PyTorch {expected.shape}")
    dots = np.sum(got * expected, axis=1)
    norms = np.linalg.norm(got, axis=1) * np.linalg.norm(expected, axis=1)
    return float(np.min(dots / np.maximum(norms, 1e-12)))
