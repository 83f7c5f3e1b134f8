"""What both gpu-tier modules share: the seeded images, the parity gate's measure, and one
infer request over HTTP with binary tensors."""

from __future__ import annotations

import urllib.request
from typing import Any, Final

import numpy as np

from bakeoff import analysis
from bakeoff_bench import payloads
from bakeoff_serve import model

BUILTIN: Final = "vit-b32-clip"
SIZE: Final = model.BUILTIN_MODELS[BUILTIN].image_size
MIN_COSINE: Final = 0.999  # the parity gate's default


def pixels(rows: int, seed: int = 5) -> np.ndarray[Any, Any]:
    return payloads.seeded_pixels(seed, [rows, 3, SIZE, SIZE])


def min_cosine(a: np.ndarray[Any, Any], b: np.ndarray[Any, Any]) -> float:
    return min(analysis.cosine_rows(a.tolist(), b.tolist()))


def infer(base: str, images: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """Embeddings from model `vit` at `base` (an OIP server's HTTP URL)."""
    body, headers = payloads.encode_binary_infer_request("pixel_values", images, "embedding")
    request = urllib.request.Request(
        f"{base}/v2/models/vit/infer", data=body, headers=headers, method="POST"
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        outputs = payloads.decode_infer_response(response.read(), dict(response.headers))
    return np.asarray(outputs["embedding"], dtype=np.float32)
