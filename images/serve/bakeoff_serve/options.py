"""The serving vocabulary every part shares: the API's fields, the servers' flags and the
Triton model configurations take their values from these enums and nowhere else."""

from __future__ import annotations

from enum import StrEnum


class Precision(StrEnum):
    """Weights and compute dtype."""

    FP32 = "fp32"
    FP16 = "fp16"
    BF16 = "bf16"


class WireInput(StrEnum):
    """How the images travel to a server that takes more than FP32: the same pixels either way."""

    FP32 = "fp32"  # FP32 [B, 3, S, S] in [0, 1], what every backend accepts
    UINT8 = "uint8"  # UINT8 [B, 3, S, S] in [0, 255]: a quarter of the bytes, scaled on the device
    JPEG = "jpeg"  # BYTES [B]: one S x S JPEG file per image (quality 100), decoded by the server


class ExecutionProvider(StrEnum):
    """ONNX Runtime's execution providers a Triton ONNX model can run on."""

    CPU = "cpu"
    CUDA = "cuda"
    TENSORRT = "tensorrt"


class Engine(StrEnum):
    """What runs the model inside Bakeoff's own server."""

    PYTORCH = "pytorch"
    ONNXRUNTIME = "onnxruntime"
