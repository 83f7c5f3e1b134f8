"""Shapes and constants of the builtin models, importable without PyTorch.

The planner and the load generator need these numbers; importing torch for them would cost
seconds on every `bakeoff validate`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

CLIP_MEAN: Final = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: Final = (0.26862954, 0.26130258, 0.27577711)

INPUT_NAME: Final = "pixel_values"
OUTPUT_NAME: Final = "embedding"


@dataclass(frozen=True)
class ClipVisionConfig:
    image_size: int
    patch_size: int
    width: int
    layers: int
    heads: int
    embed_dim: int

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size


BUILTIN_MODELS: Final[dict[str, ClipVisionConfig]] = {
    # OpenCLIP ViT-B-32 visual tower: 87.8M parameters, 4.4 GFLOPs per image.
    "vit-b32-clip": ClipVisionConfig(
        image_size=224, patch_size=32, width=768, layers=12, heads=12, embed_dim=512
    ),
    # Same family and interface (224x224 in, 512-d out), about 1/100 of the compute: for tests.
    "vit-tiny-clip": ClipVisionConfig(
        image_size=224, patch_size=32, width=64, layers=2, heads=2, embed_dim=512
    ),
}
